//! `KernelCodebook`: the centroids shared by every kernel of one or many layers, and the
//! mapping between kernels and stored (index, scale) pairs.
//!
//! A *kernel* is one `kh×kw` slice `W[o, i]` of an OIHW weight. Fitting a codebook
//! ([`KernelCodebook::params`]) flattens every kernel of every given tensor (output-major,
//! input-minor, tensors in the order given), optionally divides it by its scale
//! ([`ScaleScheme`]), runs k-means, and re-orders the centroids by usage, most used first
//! (paper §1.5). A layer then stores one index per kernel, and a scale when the scale scheme
//! asks for one; [`KernelCodebook::reconstruct`] turns them back into a dense weight.
//! [`Codebooks`] owns the codebooks of a network and hands them to layers by id.

mod params;
mod scale;
mod set;
mod stats;
mod symmetry;
mod winograd_table;

use ndarray::{Array2, Array3, Array4, ArrayView2, ArrayView4};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kmeans::nearest_exact;
use crate::linalg::Real;

pub use params::{CodebookFit, CodebookFitter, CodebookParams, ValidCodebookParams};
pub use scale::{FixedBits, ScaleScheme, ScaleStorage};
pub use set::Codebooks;
pub use stats::{compression_ratio, Usage};
pub use symmetry::Symmetry;
pub(crate) use winograd_table::TABLE_TILE as WINOGRAD_TILE;

pub(crate) use scale::l2_scale;
pub(crate) use stats::bits_for;

/// `K` centroid kernels of size `kh×kw`, a symmetry and a scale scheme.
///
/// ```
/// use clustered_conv::{KernelCodebook, ScaleScheme};
/// use ndarray::Array4;
///
/// // 16 output × 8 input channels of 3×3 kernels: 128 kernels.
/// let w = Array4::<f32>::from_shape_fn((16, 8, 3, 3), |(o, i, r, c)| {
///     ((o * 7 + i * 3 + r * 5 + c) % 11) as f32 - 5.0
/// });
/// let fit = KernelCodebook::params(8).seed(1).fit(&[w.view()])?;
/// let codebook = &fit.codebook;
/// assert_eq!(codebook.len(), 8);
/// assert_eq!(codebook.scale_scheme(), ScaleScheme::default()); // L2 norms, stored as f16
///
/// // Every kernel is one index (3 bits) and one scale.
/// let a = &fit.assignments[0];
/// assert_eq!(a.indices.dim(), (16, 8));
/// let approx = codebook.reconstruct(a.indices.view(), a.scales.as_ref().map(|s| s.view()))?;
/// assert_eq!(approx.dim(), w.dim());
/// # Ok::<(), clustered_conv::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct KernelCodebook<F> {
    centroids: Array3<F>,
    symmetry: Symmetry,
    scale_scheme: ScaleScheme,
    /// The Winograd transform of the decoded kernels, computed on first use and emptied by
    /// [`KernelCodebook::set_centroids`].
    winograd: winograd_table::WinogradTables<F>,
}

/// The stored form of one weight tensor: an index per kernel and, with
/// [`ScaleScheme::L2`], a scale per kernel (exact, not yet rounded to its storage).
#[derive(Debug, Clone, PartialEq)]
pub struct KernelAssignment<F> {
    /// `(Cout, Cin)` indices, each `centroid + K·transform < K·S`.
    pub indices: Array2<u32>,
    /// `(Cout, Cin)` scales, or `None` for [`ScaleScheme::None`].
    pub scales: Option<Array2<F>>,
}

impl<F: Real> KernelAssignment<F> {
    /// The dense OIHW weight these indices and scales stand for.
    ///
    /// # Errors
    /// As [`KernelCodebook::reconstruct`].
    pub fn reconstruct(&self, codebook: &KernelCodebook<F>) -> Result<Array4<F>> {
        codebook.reconstruct(self.indices.view(), self.scales.as_ref().map(|s| s.view()))
    }
}

impl KernelCodebook<f32> {
    /// A fitting builder for `k` centroids; see [`CodebookParams`]. The builder is not
    /// generic: its `fit` clusters `f32` or `f64` weights alike. (It is defined on
    /// `KernelCodebook<f32>` only so that `KernelCodebook::params(k)` needs no type
    /// annotation.)
    pub fn params(k: usize) -> CodebookParams {
        CodebookParams::new(k)
    }
}

impl<F: Real> KernelCodebook<F> {
    /// A codebook from given centroids `(K, kh, kw)`, with the default [`ScaleScheme`]
    /// (L2-norm scales stored as f16; change it with [`KernelCodebook::with_scale_scheme`]).
    ///
    /// # Errors
    /// Zero-sized centroids, non-finite values, or [`Symmetry::Dihedral`] with non-square
    /// kernels (rotations need `kh = kw`).
    pub fn from_centroids(centroids: Array3<F>, symmetry: Symmetry) -> Result<Self> {
        let (k, kh, kw) = centroids.dim();
        if k == 0 || kh == 0 || kw == 0 {
            return Err(Error::ZeroSize {
                what: "centroids",
                shape: vec![k, kh, kw],
            });
        }
        check_finite(&centroids)?;
        symmetry.permutations(kh, kw)?;
        Ok(Self {
            centroids: centroids.as_standard_layout().into_owned(),
            symmetry,
            scale_scheme: ScaleScheme::default(),
            winograd: Default::default(),
        })
    }

    /// Replaces the centroids (for fine-tuning: same `K` and kernel size).
    ///
    /// # Errors
    /// A different shape, or non-finite values.
    pub fn set_centroids(&mut self, centroids: Array3<F>) -> Result<()> {
        if centroids.dim() != self.centroids.dim() {
            return Err(Error::ShapeMismatch {
                what: "new centroids vs the codebook's",
                expected: self.centroids.shape().to_vec(),
                got: centroids.shape().to_vec(),
            });
        }
        check_finite(&centroids)?;
        self.centroids = centroids.as_standard_layout().into_owned();
        self.winograd = Default::default();
        Ok(())
    }

    /// Sets whether [`KernelCodebook::assign`] normalises kernels, and how the layers that
    /// use this codebook store their scales.
    #[must_use]
    pub fn with_scale_scheme(mut self, scale_scheme: ScaleScheme) -> Self {
        self.scale_scheme = scale_scheme;
        self
    }

    /// The centroids `(K, kh, kw)`, most used first when fitted.
    pub fn centroids(&self) -> &Array3<F> {
        &self.centroids
    }

    /// Number of centroids `K`.
    pub fn len(&self) -> usize {
        self.centroids.dim().0
    }

    /// Always `false`: a codebook has at least one centroid.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Kernel size `(kh, kw)`.
    pub fn kernel_size(&self) -> (usize, usize) {
        let (_, kh, kw) = self.centroids.dim();
        (kh, kw)
    }

    /// The symmetry.
    pub fn symmetry(&self) -> Symmetry {
        self.symmetry
    }

    /// The scale scheme.
    pub fn scale_scheme(&self) -> ScaleScheme {
        self.scale_scheme
    }

    /// Number of valid stored indices, `K·S`.
    pub fn index_limit(&self) -> usize {
        self.len() * self.symmetry.transforms()
    }

    /// Bits of a bit-packed stored index, `⌈log2(K·S)⌉` (the paper's size formula; the
    /// compressed-model file stores at least 1 bit). A layer's in-memory index width is
    /// [`Indices::bits_in_memory`](crate::Indices::bits_in_memory).
    pub fn packed_index_bits(&self) -> u32 {
        bits_for(self.index_limit())
    }

    /// `Û_v = G Φ_t(μ_c) Gᵀ` (Winograd F(4×4, 3×3)) of every stored index `v` of a 3×3
    /// codebook, or of the kernels rotated by 180° when `rotated`: 36 tables of `K·S` values,
    /// `[ξ·K·S + v]`. Computed on first use and kept until the centroids change.
    pub(crate) fn winograd_table(&self, rotated: bool) -> &[F] {
        debug_assert_eq!(self.kernel_size(), (3, 3));
        self.winograd.get(rotated, || self.decoded_kernels())
    }

    /// Bytes of the Winograd tables this codebook holds now (0 until a clustered layer runs
    /// [`ForwardStrategy::Winograd`](crate::ForwardStrategy::Winograd) with it; 36 values of
    /// `F` per stored index and per direction after).
    pub fn winograd_cache_bytes(&self) -> usize {
        self.winograd.bytes()
    }

    /// Every stored index decoded to its kernel `Φ_t(μ_c)` (without scale): a row-major
    /// `(K·S) × (kh·kw)` table.
    pub(crate) fn decoded_kernels(&self) -> Vec<F> {
        let k = self.len();
        let (kh, kw) = self.kernel_size();
        let area = kh * kw;
        let flat = self.centroids.as_slice().expect("standard layout");
        let mut out = vec![F::zero(); self.index_limit() * area];
        for (index, dst) in out.chunks_exact_mut(area).enumerate() {
            let centroid = &flat[(index % k) * area..][..area];
            symmetry::apply_rect(index / k, kh, kw, centroid, dst);
        }
        out
    }

    /// Adds the gradient `grad` of a decoded kernel (stored index `index`) to its centroid's
    /// gradient row in `centroid_grads` (`K × kh·kw`): the transform is undone, `Φ_t⁻¹`.
    pub(crate) fn add_to_centroid_grad(&self, index: usize, grad: &[F], centroid_grads: &mut [F]) {
        let k = self.len();
        let (kh, kw) = self.kernel_size();
        let area = kh * kw;
        let dst = &mut centroid_grads[(index % k) * area..][..area];
        if index < k {
            // The identity transform (every index of a plain codebook): no scratch copy.
            for (d, &v) in dst.iter_mut().zip(grad) {
                *d += v;
            }
            return;
        }
        let mut back = vec![F::zero(); area];
        symmetry::apply_rect(symmetry::inverse(index / k), kh, kw, grad, &mut back);
        for (d, v) in dst.iter_mut().zip(back) {
            *d += v;
        }
    }

    /// Assigns every kernel of an OIHW weight to its nearest centroid (after normalising it
    /// by the codebook's scale scheme), by the rule of fitting: the exact `f64` squared
    /// distance, lowest stored index on ties. Assigning the weights a codebook was fitted to
    /// gives the fit's indices and scales (up to exact distance ties between two distinct
    /// centroids, which fitting breaks in k-means order, before centroids are sorted by use).
    ///
    /// With a transform-invariant codebook, the nearest of all `K·S` transformed centroids is
    /// chosen and the stored index is `centroid + K·transform`.
    ///
    /// # Errors
    /// A kernel size different from the codebook's, zero sizes, or non-finite weights.
    pub fn assign(&self, weight: ArrayView4<F>) -> Result<KernelAssignment<F>> {
        let prepared = prepare_kernels(&[weight], &[], self.kernel_size(), self.scale_scheme)?;
        // Every stored index decodes to one kernel; the nearest decoded kernel is the index.
        let (kh, kw) = self.kernel_size();
        let decoded = Array2::from_shape_vec((self.index_limit(), kh * kw), self.decoded_kernels())
            .expect("K·S decoded kernels");
        let labels = nearest_exact(&prepared.rows.view(), &decoded.view());
        let identity: Vec<usize> = (0..self.index_limit()).collect();
        Ok(prepared.assignments(&labels, &identity).remove(0))
    }

    /// Rebuilds a dense OIHW weight: kernel `(o, i)` = `scale[o, i] · Φ_t(μ_c)` with
    /// `c = index mod K`, `t = index div K` (no scale factor when `scales` is `None`).
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`] for an index `≥ K·S`; [`Error::ShapeMismatch`] when the
    /// scales' shape differs from the indices'.
    pub fn reconstruct(
        &self,
        indices: ArrayView2<u32>,
        scales: Option<ArrayView2<F>>,
    ) -> Result<Array4<F>> {
        self.check_indices(&indices)?;
        if let Some(s) = &scales {
            if s.dim() != indices.dim() {
                return Err(Error::ShapeMismatch {
                    what: "scales vs indices",
                    expected: indices.shape().to_vec(),
                    got: s.shape().to_vec(),
                });
            }
        }
        let (cout, cin) = indices.dim();
        let (kh, kw) = self.kernel_size();
        let area = kh * kw;
        let decoded = self.decoded_kernels();
        let indices = indices.as_standard_layout();
        let scales = scales.map(|s| s.as_standard_layout().into_owned());
        let mut out = vec![F::zero(); cout * cin * area];
        out.par_chunks_mut(cin * area)
            .zip(indices.as_slice().expect("standard layout").par_chunks(cin))
            .enumerate()
            .for_each(|(o, (out_o, idx_o))| {
                let scale_o = scales
                    .as_ref()
                    .map(|s| &s.as_slice().expect("standard layout")[o * cin..][..cin]);
                for (i, (kernel, &index)) in out_o.chunks_exact_mut(area).zip(idx_o).enumerate() {
                    let base = &decoded[index as usize * area..][..area];
                    let s = scale_o.map_or(F::one(), |s| s[i]);
                    for (dst, &v) in kernel.iter_mut().zip(base) {
                        *dst = s * v;
                    }
                }
            });
        Ok(Array4::from_shape_vec((cout, cin, kh, kw), out).expect("cout·cin·kh·kw values"))
    }

    /// Counts how often each centroid and each stored index is used across index matrices.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`] for an index `≥ K·S`.
    pub fn usage(&self, indices: &[ArrayView2<u32>]) -> Result<Usage> {
        let mut per_index = vec![0u64; self.index_limit()];
        for m in indices {
            self.check_indices(m)?;
            for &i in m.iter() {
                per_index[i as usize] += 1;
            }
        }
        let k = self.len();
        let mut per_centroid = vec![0u64; k];
        for (i, &c) in per_index.iter().enumerate() {
            per_centroid[i % k] += c;
        }
        Ok(Usage {
            per_centroid,
            per_index,
        })
    }

    /// Rejects the first index `≥ K·S`, naming its position.
    pub(crate) fn check_indices(&self, indices: &ArrayView2<u32>) -> Result<()> {
        let limit = self.index_limit();
        for ((o, i), &index) in indices.indexed_iter() {
            if index as usize >= limit {
                return Err(Error::IndexOutOfRange {
                    out_channel: o,
                    in_channel: i,
                    index,
                    limit,
                });
            }
        }
        Ok(())
    }
}

/// Rejects the first centroid holding a NaN or infinity, naming it.
fn check_finite<F: Real>(centroids: &Array3<F>) -> Result<()> {
    match centroids
        .outer_iter()
        .position(|c| c.iter().any(|v| !v.is_finite()))
    {
        Some(index) => Err(Error::NonFinite {
            what: "centroids",
            index,
        }),
        None => Ok(()),
    }
}

/// The kernels of one or many tensors, ready to cluster.
pub(crate) struct PreparedKernels<F> {
    /// Normalised rows of the kernels that take part in clustering.
    pub rows: Array2<F>,
    /// For each row, the global kernel position it came from.
    pub source: Vec<usize>,
    /// Scale of every kernel (all kernels, global order), when the mode stores scales.
    pub scales: Option<Vec<F>>,
    /// `(Cout, Cin)` of every tensor.
    pub tensor_dims: Vec<(usize, usize)>,
}

impl<F: Real> PreparedKernels<F> {
    /// Builds per-tensor assignments from row labels mapped through `remap`
    /// (label → stored index); kernels left out of clustering get index 0.
    pub fn assignments(&self, labels: &[usize], remap: &[usize]) -> Vec<KernelAssignment<F>> {
        let total: usize = self.tensor_dims.iter().map(|&(o, i)| o * i).sum();
        let mut flat = vec![0u32; total];
        for (&pos, &label) in self.source.iter().zip(labels) {
            flat[pos] = remap[label] as u32;
        }
        let mut out = Vec::with_capacity(self.tensor_dims.len());
        let mut offset = 0;
        for &(cout, cin) in &self.tensor_dims {
            let range = offset..offset + cout * cin;
            let indices = Array2::from_shape_vec((cout, cin), flat[range.clone()].to_vec())
                .expect("cout·cin indices");
            let scales = self.scales.as_ref().map(|s| {
                Array2::from_shape_vec((cout, cin), s[range.clone()].to_vec())
                    .expect("cout·cin scales")
            });
            out.push(KernelAssignment { indices, scales });
            offset += cout * cin;
        }
        out
    }
}

/// Flattens, validates and (per `scheme`) normalises the kernels of `weights`.
///
/// `masks` is empty or has one `(Cout, Cin)` mask per tensor (`false` = pruned): pruned
/// kernels are left out of clustering like all-zero ones (scale 0 under L2 scales).
pub(crate) fn prepare_kernels<F: Real>(
    weights: &[ArrayView4<F>],
    masks: &[ArrayView2<bool>],
    kernel: (usize, usize),
    scheme: ScaleScheme,
) -> Result<PreparedKernels<F>> {
    let area = kernel.0 * kernel.1;
    if area == 0 {
        return Err(Error::ZeroSize {
            what: "kernel (kh, kw)",
            shape: vec![kernel.0, kernel.1],
        });
    }
    let mut kernels: Vec<F> = Vec::new();
    let mut kept: Vec<bool> = Vec::new();
    let mut tensor_dims = Vec::with_capacity(weights.len());
    if !masks.is_empty() && masks.len() != weights.len() {
        return Err(Error::ShapeMismatch {
            what: "number of masks vs number of weight tensors",
            expected: vec![weights.len()],
            got: vec![masks.len()],
        });
    }
    for (t, w) in weights.iter().enumerate() {
        if let Some(m) = masks.get(t) {
            if m.dim() != (w.dim().0, w.dim().1) {
                return Err(Error::ShapeMismatch {
                    what: "kernel mask vs (out_channels, in_channels)",
                    expected: vec![w.dim().0, w.dim().1],
                    got: m.shape().to_vec(),
                });
            }
            kept.extend(m.iter().copied());
        } else {
            kept.extend(std::iter::repeat_n(true, w.dim().0 * w.dim().1));
        }
        let (cout, cin, kh, kw) = w.dim();
        if (kh, kw) != kernel {
            return Err(Error::KernelSizeMismatch {
                tensor: t,
                expected: kernel,
                got: (kh, kw),
            });
        }
        if cout == 0 || cin == 0 {
            return Err(Error::ZeroSize {
                what: "weight tensor",
                shape: w.shape().to_vec(),
            });
        }
        kernels.extend(w.iter().copied());
        tensor_dims.push((cout, cin));
    }
    if let Some(bad) = kernels.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            what: "weights (row = kernel position across the tensors, in order)",
            index: bad / area,
        });
    }
    Ok(normalise(&kernels, &kept, area, scheme, tensor_dims))
}

/// Divides every kept kernel by its scale (when `scheme` has scales); all-zero and pruned
/// kernels are left out of the rows.
fn normalise<F: Real>(
    kernels: &[F],
    kept: &[bool],
    area: usize,
    scheme: ScaleScheme,
    tensor_dims: Vec<(usize, usize)>,
) -> PreparedKernels<F> {
    let scales: Option<Vec<F>> = scheme.has_scales().then(|| {
        kernels
            .chunks_exact(area)
            .zip(kept)
            .map(|(k, &keep)| if keep { l2_scale(k) } else { F::zero() })
            .collect()
    });
    let mut rows = Vec::with_capacity(kernels.len());
    let mut source = Vec::with_capacity(kernels.len() / area);
    for (pos, kernel) in kernels.chunks_exact(area).enumerate() {
        let s = scales.as_ref().map_or(F::one(), |s| s[pos]);
        if kept[pos] && s != F::zero() {
            rows.extend(kernel.iter().map(|&v| v / s));
            source.push(pos);
        }
    }
    let rows = Array2::from_shape_vec((source.len(), area), rows).expect("rows of kernel area");
    PreparedKernels {
        rows,
        source,
        scales,
        tensor_dims,
    }
}
