//! Narrow storage of unsigned values: a layer's stored indices, and the channel and index
//! lists of its plan, each in the narrowest of `u8`, `u16` and `u32` that holds its largest
//! value.

use ndarray::Array2;

/// Bits of the narrowest of `u8`, `u16`, `u32` that holds `max`.
pub(crate) fn bits_for_max(max: u32) -> u32 {
    if max <= u32::from(u8::MAX) {
        8
    } else if max <= u32::from(u16::MAX) {
        16
    } else {
        32
    }
}

/// A vector of unsigned values, stored as `u8`, `u16` or `u32`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NarrowVec {
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
}

impl NarrowVec {
    /// Collects `values`, all at most `max`, in the narrowest type that holds `max`.
    pub fn with_max(max: u32, values: impl IntoIterator<Item = u32>) -> Self {
        let values = values.into_iter();
        // The casts cannot truncate: every value is at most `max`.
        match bits_for_max(max) {
            8 => NarrowVec::U8(values.map(|v| v as u8).collect()),
            16 => NarrowVec::U16(values.map(|v| v as u16).collect()),
            _ => NarrowVec::U32(values.collect()),
        }
    }

    /// Collects `values` in the narrowest type that holds their maximum.
    pub fn from_values(values: &[u32]) -> Self {
        let max = values.iter().copied().max().unwrap_or(0);
        Self::with_max(max, values.iter().copied())
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            NarrowVec::U8(v) => v.len(),
            NarrowVec::U16(v) => v.len(),
            NarrowVec::U32(v) => v.len(),
        }
    }

    /// Value `k`.
    #[inline]
    pub fn get(&self, k: usize) -> u32 {
        match self {
            NarrowVec::U8(v) => u32::from(v[k]),
            NarrowVec::U16(v) => u32::from(v[k]),
            NarrowVec::U32(v) => v[k],
        }
    }

    /// The values of `range`, in order.
    pub fn range(&self, range: std::ops::Range<usize>) -> NarrowIter<'_> {
        match self {
            NarrowVec::U8(v) => NarrowIter::U8(v[range].iter()),
            NarrowVec::U16(v) => NarrowIter::U16(v[range].iter()),
            NarrowVec::U32(v) => NarrowIter::U32(v[range].iter()),
        }
    }

    /// Every value, in order.
    pub fn iter(&self) -> NarrowIter<'_> {
        self.range(0..self.len())
    }

    /// Writes the `out.len()` values from `start` on into `out`, widened.
    pub fn copy_to(&self, start: usize, out: &mut [u32]) {
        let end = start + out.len();
        match self {
            NarrowVec::U8(v) => out
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(d, &s)| *d = u32::from(s)),
            NarrowVec::U16(v) => out
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(d, &s)| *d = u32::from(s)),
            NarrowVec::U32(v) => out.copy_from_slice(&v[start..end]),
        }
    }

    /// Bits per value: 8, 16 or 32.
    pub fn bits(&self) -> u32 {
        match self {
            NarrowVec::U8(_) => 8,
            NarrowVec::U16(_) => 16,
            NarrowVec::U32(_) => 32,
        }
    }

    /// Bytes of the values.
    pub fn bytes(&self) -> usize {
        self.len() * self.bits() as usize / 8
    }
}

/// The values of a [`NarrowVec`] range, widened to `u32`.
#[derive(Debug, Clone)]
pub(crate) enum NarrowIter<'a> {
    U8(std::slice::Iter<'a, u8>),
    U16(std::slice::Iter<'a, u16>),
    U32(std::slice::Iter<'a, u32>),
}

impl Iterator for NarrowIter<'_> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        match self {
            NarrowIter::U8(it) => it.next().map(|&v| u32::from(v)),
            NarrowIter::U16(it) => it.next().map(|&v| u32::from(v)),
            NarrowIter::U32(it) => it.next().copied(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.len();
        (n, Some(n))
    }
}

impl ExactSizeIterator for NarrowIter<'_> {
    fn len(&self) -> usize {
        match self {
            NarrowIter::U8(it) => it.len(),
            NarrowIter::U16(it) => it.len(),
            NarrowIter::U32(it) => it.len(),
        }
    }
}

/// A layer's `(Cout, Cin)` stored indices, row-major, in the narrowest type that holds the
/// largest one: `u8` when every index is below 256 (any codebook with `K·S ≤ 256`), `u16`
/// below 65 536, else `u32`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct IndexStore {
    dim: (usize, usize),
    max: u32,
    values: NarrowVec,
}

impl IndexStore {
    /// Narrows `indices` (any memory layout).
    pub fn new(indices: &Array2<u32>) -> Self {
        let max = indices.iter().copied().max().unwrap_or(0);
        IndexStore {
            dim: indices.dim(),
            max,
            values: NarrowVec::with_max(max, indices.iter().copied()),
        }
    }

    /// `(Cout, Cin)`.
    pub fn dim(&self) -> (usize, usize) {
        self.dim
    }

    /// The largest stored index.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The index of kernel `(o, i)`.
    #[inline]
    pub fn get(&self, o: usize, i: usize) -> u32 {
        debug_assert!(o < self.dim.0 && i < self.dim.1);
        self.values.get(o * self.dim.1 + i)
    }

    /// Every index, row-major.
    pub fn iter(&self) -> NarrowIter<'_> {
        self.values.iter()
    }

    /// The indices of kernels `(o, i)` for `i` in `cols`, in order (each variant of the
    /// iterator exposes its narrow slice).
    pub fn row(&self, o: usize, cols: std::ops::Range<usize>) -> NarrowIter<'_> {
        debug_assert!(o < self.dim.0 && cols.end <= self.dim.1);
        let start = o * self.dim.1;
        self.values.range(start + cols.start..start + cols.end)
    }

    /// The indices widened to `u32`.
    pub fn to_array(&self) -> Array2<u32> {
        Array2::from_shape_vec(self.dim, self.iter().collect()).expect("Cout·Cin indices")
    }

    /// Bits per stored index: 8, 16 or 32.
    pub fn bits(&self) -> u32 {
        self.values.bits()
    }

    /// Bytes of the stored indices.
    pub fn bytes(&self) -> usize {
        self.values.bytes()
    }
}

impl std::fmt::Debug for IndexStore {
    /// The width, then the values as an array (ndarray elides the middle of large ones).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexStore")
            .field("bits", &self.bits())
            .field("values", &self.to_array())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn width_follows_the_largest_value() {
        for (max, bits) in [
            (0, 8),
            (255, 8),
            (256, 16),
            (65_535, 16),
            (65_536, 32),
            (u32::MAX, 32),
        ] {
            assert_eq!(bits_for_max(max), bits, "max {max}");
            let v = NarrowVec::from_values(&[0, max / 2, max, 1]);
            assert_eq!(v.bits(), bits);
            assert_eq!(v.bytes(), 4 * bits as usize / 8);
            assert_eq!(v.iter().collect::<Vec<_>>(), vec![0, max / 2, max, 1]);
            assert_eq!(v.range(1..3).collect::<Vec<_>>(), vec![max / 2, max]);
            assert_eq!(v.range(1..3).len(), 2);
            let mut out = [7u32; 2];
            v.copy_to(2, &mut out);
            assert_eq!(out, [max, 1]);
        }
    }

    #[test]
    fn store_round_trips_any_layout() {
        let wide = Array2::from_shape_fn((3, 5), |(o, i)| (o * 5 + i) as u32 * 20);
        let narrow = IndexStore::new(&wide);
        assert_eq!((narrow.bits(), narrow.bytes(), narrow.max()), (16, 30, 280));
        assert_eq!(narrow.to_array(), wide);
        // A column-major array is stored row-major.
        let t = wide.t().to_owned();
        let narrow_t = IndexStore::new(&t);
        assert_eq!(narrow_t.to_array(), t);
        assert_eq!(narrow_t.get(4, 2), wide[[2, 4]]);
    }
}
