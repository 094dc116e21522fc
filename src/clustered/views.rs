//! Borrowed views of a layer's stored indices and scales: the getters read the narrow stores
//! in place, and say so in their name when they copy (`to_array`).

use ndarray::Array2;

use super::indices::IndexStore;
use super::scales::ScaleStore;
use crate::linalg::Real;

/// The `(Cout, Cin)` indices a [`ClusteredConv2d`](super::ClusteredConv2d) stores, borrowed.
///
/// ```
/// use clustered_conv::{ClusteredConv2d, ConvGeometry};
/// use ndarray::array;
///
/// let layer = ClusteredConv2d::<f32>::new(array![[3, 0], [300, 3]], None, None, ConvGeometry::default())?;
/// let indices = layer.indices();
/// assert_eq!(indices.dim(), (2, 2));
/// assert_eq!(indices.get(1, 0), Some(300));
/// assert_eq!(indices.get(2, 0), None);
/// assert_eq!(indices.bits_in_memory(), 16); // 300 does not fit in a u8
/// assert_eq!(indices.iter().collect::<Vec<_>>(), vec![3, 0, 300, 3]);
/// assert_eq!(indices.to_array(), array![[3, 0], [300, 3]]);
/// # Ok::<(), clustered_conv::Error>(())
/// ```
#[derive(Clone, Copy)]
pub struct Indices<'a>(pub(super) &'a IndexStore);

impl<'a> Indices<'a> {
    /// `(Cout, Cin)`.
    pub fn dim(&self) -> (usize, usize) {
        self.0.dim()
    }

    /// The index of kernel `(o, i)`, `None` outside `(Cout, Cin)`.
    pub fn get(&self, o: usize, i: usize) -> Option<u32> {
        let (cout, cin) = self.dim();
        (o < cout && i < cin).then(|| self.0.get(o, i))
    }

    /// Every index in row-major order (`(o, i)` is item `o·Cin + i`), widened to `u32`.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        self.0.iter()
    }

    /// A copy, widened to `u32`.
    pub fn to_array(&self) -> Array2<u32> {
        self.0.to_array()
    }

    /// Bits per index as held in memory: 8 when every index is below 256 (always the case
    /// when `K·S ≤ 256`), 16 below 65 536, else 32. Files pack indices tighter
    /// ([`KernelCodebook::packed_index_bits`](crate::KernelCodebook::packed_index_bits)).
    pub fn bits_in_memory(&self) -> u32 {
        self.0.bits()
    }
}

impl std::fmt::Debug for Indices<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl PartialEq for Indices<'_> {
    /// Same shape and values (whatever the width they are held in).
    fn eq(&self, other: &Self) -> bool {
        self.dim() == other.dim() && self.iter().eq(other.iter())
    }
}

/// The `(Cout, Cin)` scales a [`ClusteredConv2d`](super::ClusteredConv2d) stores, borrowed:
/// as `F`, or as the `f16` values they were rounded to
/// ([`ClusteredConv2d::with_half_scales`](super::ClusteredConv2d::with_half_scales)), read
/// widened (exactly) to `F`.
#[derive(Clone, Copy)]
pub struct Scales<'a, F>(pub(super) &'a ScaleStore<F>);

impl<'a, F: Real> Scales<'a, F> {
    /// `(Cout, Cin)`.
    pub fn dim(&self) -> (usize, usize) {
        self.0.dim()
    }

    /// The scale of kernel `(o, i)` as `F`, `None` outside `(Cout, Cin)`.
    pub fn get(&self, o: usize, i: usize) -> Option<F> {
        let (cout, cin) = self.dim();
        (o < cout && i < cin).then(|| self.0.get(o, i))
    }

    /// Every scale in row-major order, as `F`.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = F> + 'a {
        let store = self.0;
        let (cout, cin) = store.dim();
        (0..cout * cin).map(move |k| store.get(k / cin.max(1), k % cin.max(1)))
    }

    /// Whether they are held as `f16`.
    pub fn are_half(&self) -> bool {
        self.0.is_half()
    }

    /// A copy as `F` (widened from `f16` when held so).
    pub fn to_array(&self) -> Array2<F> {
        self.0.as_full().into_owned()
    }
}

impl<F: Real> std::fmt::Debug for Scales<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scales")
            .field("half", &self.are_half())
            .field("values", &self.to_array())
            .finish()
    }
}

impl<F: Real> PartialEq for Scales<'_, F> {
    /// Same shape and values as `F` (an `f16` store equals an `F` store of the same values).
    fn eq(&self, other: &Self) -> bool {
        self.dim() == other.dim() && self.iter().eq(other.iter())
    }
}
