//! How a clustered layer keeps its per-kernel scales in memory: as `F`, or as the IEEE half
//! precision values they were rounded to for storage.

use std::borrow::Cow;

use half::f16;
use ndarray::Array2;

use crate::codebook::ScaleStorage;
use crate::error::{Error, Result};
use crate::linalg::Real;

/// The `(Cout, Cin)` scales of a layer, row-major (standard layout) in either variant.
///
/// Two stores compare equal only when both the variant and the values agree: a `Half` store
/// differs from a `Full` one holding the same values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ScaleStore<F> {
    /// One `F` per kernel.
    Full(Array2<F>),
    /// One `f16` per kernel, widened to `F` (exactly) when read.
    Half(Array2<f16>),
}

impl<F: Real> ScaleStore<F> {
    /// `(Cout, Cin)`.
    pub fn dim(&self) -> (usize, usize) {
        match self {
            ScaleStore::Full(s) => s.dim(),
            ScaleStore::Half(s) => s.dim(),
        }
    }

    /// Whether the scales are held as `f16`.
    pub fn is_half(&self) -> bool {
        matches!(self, ScaleStore::Half(_))
    }

    /// The scale of kernel `(o, i)`, as `F`.
    #[inline]
    pub fn get(&self, o: usize, i: usize) -> F {
        match self {
            ScaleStore::Full(s) => s[[o, i]],
            ScaleStore::Half(s) => widen(s[[o, i]]),
        }
    }

    /// The scales as `F`: borrowed from a `Full` store, widened from a `Half` one.
    pub fn as_full(&self) -> Cow<'_, Array2<F>> {
        match self {
            ScaleStore::Full(s) => Cow::Borrowed(s),
            ScaleStore::Half(s) => Cow::Owned(s.mapv(widen)),
        }
    }

    /// The scales as a row-major slice of `F`: borrowed from a `Full` store, widened into
    /// `scratch` from a `Half` one.
    pub fn as_slice_in<'a>(&'a self, scratch: &'a mut Vec<F>) -> &'a [F] {
        match self {
            ScaleStore::Full(s) => s.as_slice().expect("scales are kept in standard layout"),
            ScaleStore::Half(s) => {
                scratch.clear();
                scratch.extend(s.iter().map(|&h| widen::<F>(h)));
                scratch
            }
        }
    }

    /// Bytes of the element buffer: `size_of::<F>()` or 2 per kernel.
    pub fn bytes(&self) -> usize {
        match self {
            ScaleStore::Full(s) => s.len() * std::mem::size_of::<F>(),
            ScaleStore::Half(s) => s.len() * std::mem::size_of::<f16>(),
        }
    }

    /// Sets every scale where `keep` is `false` to zero (exact in both variants).
    pub fn zero_where_not(&mut self, keep: &Array2<bool>) {
        match self {
            ScaleStore::Full(s) => s.zip_mut_with(keep, |v, &k| {
                if !k {
                    *v = F::zero();
                }
            }),
            ScaleStore::Half(s) => s.zip_mut_with(keep, |v, &k| {
                if !k {
                    *v = f16::ZERO;
                }
            }),
        }
    }

    /// The store at half precision: every scale rounded to the nearest `f16` (ties to even,
    /// [`ScaleStorage::F16`]'s rounding). A `Half` store is copied as is.
    ///
    /// # Errors
    /// [`Error::NonFinite`] for a scale that rounds to infinity (beyond ±65 504), naming its
    /// flat position `o·Cin + i`.
    pub fn to_half(&self) -> Result<Self> {
        let s = match self {
            ScaleStore::Half(h) => return Ok(ScaleStore::Half(h.clone())),
            ScaleStore::Full(s) => s,
        };
        let mut overflow = None;
        let half = Array2::from_shape_fn(s.dim(), |(o, i)| {
            // `round` lands on an f16 value (or ±∞), so the conversion below is exact.
            let rounded = ScaleStorage::F16.round(s[[o, i]]);
            if !rounded.is_finite() && overflow.is_none() {
                overflow = Some(o * s.ncols() + i);
            }
            f16::from_f64(rounded.to_f64_exact())
        });
        match overflow {
            Some(index) => Err(Error::NonFinite {
                what: "scales rounded to f16 (row = o·Cin + i)",
                index,
            }),
            None => Ok(ScaleStore::Half(half)),
        }
    }
}

/// An `f16` as `F`, exactly (every `f16` is representable in `f32` and `f64`).
#[inline]
fn widen<F: Real>(h: f16) -> F {
    F::from_f64_lossy(h.to_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn half_store_rounds_like_the_file_format_and_widens_exactly() {
        let values = array![[0.1f32, -1.0 / 3.0], [65504.0, 2.0f32.powi(-24)]];
        let store = ScaleStore::Full(values.clone()).to_half().unwrap();
        assert!(store.is_half());
        assert_eq!(store.bytes(), 8);
        let expected = values.mapv(|v| f16::from_f32(v).to_f32());
        assert_eq!(store.as_full().into_owned(), expected);
        assert_eq!(store.get(0, 1), expected[[0, 1]]);
        let mut scratch = Vec::new();
        assert_eq!(
            store.as_slice_in(&mut scratch),
            expected.as_slice().unwrap()
        );
        // f64 widening is exact too.
        let wide = ScaleStore::<f64>::Full(values.mapv(f64::from))
            .to_half()
            .unwrap();
        assert_eq!(wide.as_full().into_owned(), expected.mapv(f64::from));
    }

    #[test]
    fn overflow_is_rejected_with_its_position() {
        let err = ScaleStore::Full(array![[1.0f32, 70000.0]])
            .to_half()
            .unwrap_err();
        assert!(matches!(err, Error::NonFinite { index: 1, .. }));
    }
}
