//! `ClusteredConv2d`: a convolution whose kernels are indices into a shared codebook, with
//! the paper's redundancy-removing forward passes and a weight-sharing backward pass.
//!
//! # Forward strategies
//! Write `l(j, i)` for the stored index of kernel `(j, i)`, `s_ji` for its scale and
//! `K_v = Φ_t(μ_c)` for the kernel that index `v = c + K·t` decodes to. Then
//! `y_j = b_j + Σ_i s_ji · (K_{l(j,i)} ⋆ x_i)`, and:
//!
//! - [`ForwardStrategy::InputSide`] (*conv-then-add*): for every input channel `i`, convolve
//!   `x_i` once with each of the `V_i` distinct kernels of column `i` (one small GEMM over a
//!   tile of output positions), then add each response, scaled, to every output channel that
//!   uses it. Work: `ΣV_i·kh·kw` MACs and `Cout·Cin` scaled adds per output position.
//! - [`ForwardStrategy::OutputSide`] (*add-then-conv*): for every output channel `j`, sum the
//!   scaled input channels that share a kernel, then convolve each of the `U_j` sums once.
//!   Work: `Cout·Cin` scaled adds per *input* position and `ΣU_j·kh·kw` MACs per output
//!   position (a group with a single member skips the sum and convolves `x_i` directly).
//! - [`ForwardStrategy::Dense`]: reconstruct the dense weight and run the dense convolution —
//!   the oracle the other two are tested against, and the fallback when sharing cannot win.
//! - [`ForwardStrategy::Winograd`]: Winograd F(4×4, 3×3) (3×3 codebooks, stride 1, dilation
//!   1, any padding): the transformed codebook `Û_v = G K_v Gᵀ` (36 values per stored index)
//!   is computed on the codebook's first Winograd call and cached with it, and the 36 GEMMs'
//!   left operand is filled with `s_ji · Û_{l(j,i)}`: whole, once per call, up to 4 MiB, else
//!   block by block as the GEMMs need it. 2.25 multiplies per output per kernel instead of 9;
//!   the dense weight is never built.
//! - [`ForwardStrategy::Auto`]: the cheapest of these under the cost model of
//!   [`ClusteredConv2d::cost`] (see [`LayerCost::cheapest`]).
//!
//! With a transform-invariant codebook a (centroid, transform) pair counts as one distinct
//! kernel: two kernels share work only when both their centroid and transform agree.
//!
//! # Memory
//! A layer stores its indices in the narrowest of `u8`, `u16`, `u32` that holds them, its
//! scales as `F` or, after [`ClusteredConv2d::with_half_scales`] (and in layers compressed or
//! loaded with [`ScaleStorage::F16`](crate::ScaleStorage::F16) scales), as `f16`, its bias
//! as given, and a mask as one `bool` per kernel; [`ClusteredConv2d::memory`] counts the bytes:
//! a 3×3 kernel of `f32` weights (36 bytes) is held in 1 + 4 bytes with `u8` indices and `f32`
//! scales (7.2×), in 1 + 2 with `f16` scales (12×). The plan of the sharing strategies (`O(Cout·Cin)`, a few bytes per kernel)
//! is built the first time a forward or backward pass runs `InputSide` or `OutputSide` (asked
//! for, or picked by `Auto`), and kept: a layer that is only built, stored, loaded, saved or
//! run densely holds no plan. Per worker,
//! `InputSide` needs a `Cout × T` accumulator, a `V_i × T` response block and a `kh·kw × T`
//! patch block, with `T` chosen so the accumulator is at most 128 KiB (at least 64 positions);
//! `OutputSide` needs one input plane and one output plane; with `f16` scales a sharing pass
//! also widens the scales into a `Cout × Cin` table of `F` for the duration of the call.
//! `Winograd` computes the transformed codebook (`36·K·S` values) per call and fills one
//! operand block of about 64 KiB per worker, beside the transformed input and products of a
//! block of tiles (about 256 KiB of input per block; [`LayerMemory`] reports the first two). No
//! strategy but `Dense` builds the dense weight, and the dense backward route only when the
//! call cannot run its input gradient through Winograd.
//!
//! # Determinism
//! Every output element is computed by one task in a fixed order, and the backward reductions
//! run in channel order: results are bit-identical for any number of rayon threads.

mod backward;
mod cost;
mod forward;
mod indices;
mod plan;
mod scales;
#[cfg(test)]
mod tests;
mod views;
mod winograd;

use std::sync::OnceLock;

use ndarray::{Array1, Array2, Array3, Array4, ArrayView4};

use crate::codebook::{KernelCodebook, ScaleScheme, ScaleStorage};
use crate::conv::backward_weight;
use crate::conv::Conv2d;
use crate::error::{Error, Result};
use crate::geometry::{ConvGeometry, ConvShape};
use crate::linalg::simd::Kernels;
use crate::linalg::Real;
use crate::linalg::{adjoint_fits, channel_sums, dims4};

pub use cost::{LayerCost, StrategyWork};
use indices::IndexStore;
use plan::{KernelScales, Plan};
use scales::ScaleStore;
pub use views::{Indices, Scales};

/// How [`ClusteredConv2d::forward_with`] computes its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ForwardStrategy {
    /// Reconstruct the dense weight, then dense convolution (the oracle).
    Dense,
    /// Conv-then-add: each (input channel, distinct kernel) convolution computed once.
    InputSide,
    /// Add-then-conv: each (output channel, distinct kernel) convolution computed once.
    OutputSide,
    /// Winograd F(4×4, 3×3) with operand blocks built from the indices, the scales and the
    /// transformed codebook (3×3 codebooks, stride 1, dilation 1, any padding); asking for it
    /// on another geometry is an [`Error::Unsupported`].
    Winograd,
    /// The cheapest strategy by the layer's cost model.
    #[default]
    Auto,
}

/// How [`ClusteredConv2d::backward_with`] computes its gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackwardRoute {
    /// The dense weight gradient (im2col GEMM), folded into centroid and scale gradients;
    /// the input gradient through Winograd with an operand built from the indices, scales
    /// and rotated transformed codebook when the call allows it (3×3, stride 1, dilation 1,
    /// padding ≤ 2 at the top and left) and the cost model predicts it faster than dense,
    /// else through the rebuilt dense weight.
    Dense,
    /// The weight-sharing stencil: each (input channel, distinct kernel) pair's transposed
    /// convolution and kernel correlation done once.
    Sharing,
    /// [`BackwardRoute::Sharing`] when its work is below 1/16 of the dense work (the stencil
    /// is scalar code, the dense route runs on the tuned GEMM), else [`BackwardRoute::Dense`].
    #[default]
    Auto,
}

/// Gradients of a loss with respect to a [`ClusteredConv2d`]'s input and parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusteredGrads<F> {
    /// ∂L/∂x, same shape as the input.
    pub input: Array4<F>,
    /// ∂L/∂μ, `(K, kh, kw)`: for every centroid, the sum over the kernels that use it of
    /// `s_ji · Φ_t⁻¹(∂L/∂w_ji)`.
    pub centroids: Array3<F>,
    /// ∂L/∂s, `(Cout, Cin)`: `⟨∂L/∂w_ji, Φ_t(μ_c)⟩`, when the layer has scales.
    pub scales: Option<Array2<F>>,
    /// ∂L/∂b, when the layer has a bias.
    pub bias: Option<Array1<F>>,
}

impl<F: Real> ClusteredGrads<F> {
    /// Adds this layer's centroid gradient into `buffer`, the gradient of a codebook shared by
    /// several layers (paper §3: gradients of shared weights are summed).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `buffer` is not `(K, kh, kw)` of this gradient.
    pub fn accumulate_centroids_into(&self, buffer: &mut Array3<F>) -> Result<()> {
        if buffer.dim() != self.centroids.dim() {
            return Err(Error::ShapeMismatch {
                what: "centroid gradient buffer",
                expected: self.centroids.shape().to_vec(),
                got: buffer.shape().to_vec(),
            });
        }
        *buffer += &self.centroids;
        Ok(())
    }
}

/// A 2-D convolution whose kernels are stored as codebook indices (and optional scales).
///
/// The layer holds no copy of the codebook: every call takes it as an argument, so one
/// codebook serves many layers.
///
/// ```
/// use clustered_conv::{ClusteredConv2d, Conv2d, ConvGeometry, ForwardStrategy, KernelCodebook};
/// use ndarray::Array4;
///
/// let w = Array4::<f32>::from_shape_fn((16, 8, 3, 3), |(o, i, r, c)| ((o * 5 + i * 3 + r + 2 * c) % 7) as f32 - 3.0);
/// let dense = Conv2d::new(w.clone(), None, ConvGeometry::default().padding(1, 1))?;
/// let codebook = KernelCodebook::params(4).seed(1).fit(&[w.view()])?.codebook;
///
/// let layer = ClusteredConv2d::from_conv(&dense, &codebook)?;
/// let x = Array4::<f32>::from_shape_fn((2, 8, 10, 10), |(n, c, h, w)| ((n + c * h + w) % 5) as f32);
/// let fast = layer.forward_with(&codebook, x.view(), ForwardStrategy::InputSide)?;
/// let oracle = layer.forward_with(&codebook, x.view(), ForwardStrategy::Dense)?;
/// assert!(fast.iter().zip(oracle.iter()).all(|(a, b)| (a - b).abs() <= 1e-3 * (1.0 + b.abs())));
/// # Ok::<(), clustered_conv::Error>(())
/// ```
#[derive(Clone)]
pub struct ClusteredConv2d<F> {
    indices: IndexStore,
    /// Standard (row-major) layout, as `F` or `f16`.
    scales: Option<ScaleStore<F>>,
    bias: Option<Array1<F>>,
    geometry: ConvGeometry,
    mask: Option<Array2<bool>>,
    /// `(ΣU_j, ΣV_i)`.
    distinct: (usize, usize),
    /// Derived from the indices on first use; ignored by `==`.
    plan: OnceLock<Plan>,
}

impl<F: std::fmt::Debug> std::fmt::Debug for ClusteredConv2d<F> {
    /// The parameters, and the plan's size in bytes (0 while not built) instead of its lists.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusteredConv2d")
            .field("indices", &self.indices)
            .field("scales", &self.scales)
            .field("bias", &self.bias)
            .field("geometry", &self.geometry)
            .field("mask", &self.mask)
            .field("plan_bytes", &self.plan.get().map_or(0, Plan::bytes))
            .finish()
    }
}

impl<F: PartialEq> PartialEq for ClusteredConv2d<F> {
    /// Compares the parameters (indices, scales, bias, geometry, mask), not whether the
    /// execution plan has been built. Scales compare as held: a layer with `f16` scales
    /// ([`Scales::are_half`]) differs from one holding the same values as `F`
    /// (compare [`ClusteredConv2d::scales`] for the values alone).
    fn eq(&self, other: &Self) -> bool {
        self.indices == other.indices
            && self.scales == other.scales
            && self.bias == other.bias
            && self.geometry == other.geometry
            && self.mask == other.mask
    }
}

/// The bytes a [`ClusteredConv2d`] holds, from [`ClusteredConv2d::memory`]: the element
/// buffers of its parameters and plan (container headers and allocator slack not counted).
///
/// ```
/// use clustered_conv::{ClusteredConv2d, ConvGeometry, KernelCodebook, Symmetry};
/// use ndarray::{Array2, Array3};
///
/// // 64 × 64 kernels of 3 × 3 over K = 64 centroids, with f32 scales.
/// let codebook = KernelCodebook::from_centroids(Array3::<f32>::ones((64, 3, 3)), Symmetry::Identity)?;
/// let indices = Array2::from_shape_fn((64, 64), |(o, i)| ((o * 7 + i) % 64) as u32);
/// let layer = ClusteredConv2d::new(indices, Some(Array2::ones((64, 64))), None, ConvGeometry::default())?;
/// let m = layer.memory(&codebook);
/// assert_eq!(m.index_bytes, 4096); // one u8 per kernel
/// assert_eq!(m.scale_bytes, 16384); // one f32 per kernel
/// assert_eq!(m.dense_weight_bytes, 147456); // 64·64·9 f32
/// assert_eq!(m.plan_bytes, 0); // no forward pass yet
/// assert!((m.ratio() - 7.2).abs() < 1e-12); // 36 bytes per dense kernel, 5 stored
/// # Ok::<(), clustered_conv::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct LayerMemory {
    /// Stored indices: one `u8`, `u16` or `u32` per kernel
    /// ([`Indices::bits_in_memory`]).
    pub index_bytes: usize,
    /// Scales, one `F` per kernel, or 2 bytes per kernel when they are held as `f16`
    /// ([`Scales::are_half`]); 0 without scales.
    pub scale_bytes: usize,
    /// Bias, one `F` per output channel (0 without bias).
    pub bias_bytes: usize,
    /// Pruning mask, one `bool` per kernel (0 without mask).
    pub mask_bytes: usize,
    /// The execution plan of the sharing strategies: 0 until a pass builds it.
    pub plan_bytes: usize,
    /// The dense weight the layer stands for, `Cout·Cin·kh·kw` values of `F` (not held).
    pub dense_weight_bytes: usize,
    /// [`ForwardStrategy::Winograd`] (0 when the layer cannot run it: a kernel other than
    /// 3×3, stride or dilation other than 1): the transformed codebook it reads, `36·K·S`
    /// values of `F` (the Winograd input gradient reads as much again for the rotated
    /// kernels). The codebook holds it, once for every layer that shares it, from the first
    /// Winograd call until its centroids change
    /// ([`KernelCodebook::winograd_cache_bytes`]), so it is not in
    /// [`LayerMemory::total_bytes`].
    pub winograd_codebook_bytes: usize,
    /// [`ForwardStrategy::Winograd`]: the GEMM operand a call builds from the indices,
    /// scales and transformed codebook. Up to 4 MiB it is the whole operand (`36·Cout·Cin`
    /// values of `F`, about 170 × 170 channels in `f32`), built once per call; above, one
    /// block of 32 to 64 rows of `Cin` values (about 64 KiB) per worker. Freed when the call
    /// returns, beside the transformed input and products of a block of tiles that every
    /// Winograd convolution uses; 0 when the layer cannot run Winograd.
    pub winograd_operand_bytes: usize,
}

impl LayerMemory {
    /// Bytes of the stored parameters that replace the dense weight: indices plus scales.
    pub fn parameter_bytes(&self) -> usize {
        self.index_bytes + self.scale_bytes
    }

    /// Every byte the layer holds: indices, scales, bias, mask and plan. The codebook is
    /// shared between layers and not counted.
    pub fn total_bytes(&self) -> usize {
        self.parameter_bytes() + self.bias_bytes + self.mask_bytes + self.plan_bytes
    }

    /// Dense weight bytes ÷ stored parameter bytes ([`LayerMemory::parameter_bytes`]).
    pub fn ratio(&self) -> f64 {
        self.dense_weight_bytes as f64 / self.parameter_bytes() as f64
    }
}

impl<F: Real> ClusteredConv2d<F> {
    /// Creates a layer from `(Cout, Cin)` indices (`centroid + K·transform`), optional
    /// `(Cout, Cin)` scales, an optional bias of length `Cout` and a geometry. The indices are
    /// stored in the narrowest of `u8`, `u16`, `u32` that holds the largest
    /// ([`Indices::bits_in_memory`]); they are checked against a codebook when one is
    /// used. The execution plan is built on first use.
    ///
    /// # Errors
    /// Zero-sized indices, scales or bias of the wrong shape, non-finite scales (the error's
    /// `index` is the flat position `o·Cin + i`), an invalid geometry, or 2³² kernels or more
    /// ([`Error::Unsupported`]).
    pub fn new(
        indices: Array2<u32>,
        scales: Option<Array2<F>>,
        bias: Option<Array1<F>>,
        geometry: ConvGeometry,
    ) -> Result<Self> {
        geometry.validate()?;
        let (cout, cin) = indices.dim();
        if cout == 0 || cin == 0 {
            return Err(Error::ZeroSize {
                what: "indices",
                shape: vec![cout, cin],
            });
        }
        if u32::try_from(cout * cin).is_err() {
            return Err(Error::Unsupported {
                what: "a clustered layer of 2^32 kernels or more",
                reason: "the execution plan counts kernels in u32; split the layer",
            });
        }
        if let Some(s) = &scales {
            if s.dim() != (cout, cin) {
                return Err(Error::ShapeMismatch {
                    what: "scales vs indices",
                    expected: vec![cout, cin],
                    got: s.shape().to_vec(),
                });
            }
            check_finite_scales(s)?;
        }
        let scales = scales.map(|s| ScaleStore::Full(standard_layout(s)));
        if let Some(b) = &bias {
            if b.len() != cout {
                return Err(Error::ShapeMismatch {
                    what: "bias length vs out_channels",
                    expected: vec![cout],
                    got: vec![b.len()],
                });
            }
        }
        let indices = IndexStore::new(&indices);
        Ok(Self {
            distinct: plan::distinct_counts(&indices),
            indices,
            scales,
            bias,
            geometry,
            mask: None,
            plan: OnceLock::new(),
        })
    }

    /// Prunes kernels: `mask[o, i] = false` makes kernel `(o, i)` exactly zero in every
    /// forward pass and gives it no gradient, so it stays zero through fine-tuning. Pruned
    /// kernels are carried as scale 0 (a layer without scales gets scales of 1 for the kept
    /// kernels).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the mask is not `(Cout, Cin)`.
    pub fn with_mask(self, mask: Array2<bool>) -> Result<Self> {
        if mask.dim() != self.indices.dim() {
            let (cout, cin) = self.indices.dim();
            return Err(Error::ShapeMismatch {
                what: "kernel mask vs (out_channels, in_channels)",
                expected: vec![cout, cin],
                got: mask.shape().to_vec(),
            });
        }
        let mut scales = self
            .scales
            .unwrap_or_else(|| ScaleStore::Full(Array2::from_elem(self.indices.dim(), F::one())));
        scales.zero_where_not(&mask);
        // The plan depends on the indices only: it stays valid.
        Ok(Self {
            scales: Some(scales),
            mask: Some(mask),
            ..self
        })
    }

    /// Replaces the scales and the bias (for training: assignments stay frozen, and so does
    /// the execution plan). Pruned kernels keep scale 0. New scales are held as `F`, whatever
    /// the layer held before (call [`ClusteredConv2d::with_half_scales`], or
    /// [`CompressedNetwork::round_scales`](crate::CompressedNetwork::round_scales), to hold
    /// them as `f16` again).
    ///
    /// # Errors
    /// Shapes that differ from the current ones (scales and bias must be present exactly when
    /// they were), or non-finite scales.
    pub fn set_params(&mut self, scales: Option<Array2<F>>, bias: Option<Array1<F>>) -> Result<()> {
        let (cout, cin) = self.indices.dim();
        let held_scales = self.scales.as_ref().map(|_| vec![cout, cin]);
        check_same_shape(
            "new scales vs the layer's (Cout, Cin)",
            held_scales,
            scales.as_ref().map(|s| s.shape()),
        )?;
        let held_bias = self.bias.as_ref().map(|b| b.shape().to_vec());
        check_same_shape(
            "new bias vs the layer's (Cout)",
            held_bias,
            bias.as_ref().map(|b| b.shape()),
        )?;
        let mut scales = scales.map(standard_layout);
        if let Some(s) = scales.as_mut() {
            check_finite_scales(s)?;
            if let Some(mask) = &self.mask {
                s.zip_mut_with(mask, |v, &keep| {
                    if !keep {
                        *v = F::zero();
                    }
                });
            }
        }
        self.scales = scales.map(ScaleStore::Full);
        self.bias = bias;
        Ok(())
    }

    /// The pruning mask, if any (`false` = pruned).
    pub fn mask(&self) -> Option<&Array2<bool>> {
        self.mask.as_ref()
    }

    /// Clusters a dense layer: every kernel is assigned to its nearest codebook entry (after
    /// the codebook's scale normalisation); the bias and geometry are kept.
    ///
    /// # Errors
    /// As [`KernelCodebook::assign`].
    pub fn from_conv(conv: &Conv2d<F>, codebook: &KernelCodebook<F>) -> Result<Self> {
        let a = codebook.assign(conv.weight().view())?;
        Self::new(a.indices, a.scales, conv.bias().cloned(), conv.geometry())
    }

    /// The equivalent dense layer.
    ///
    /// # Errors
    /// An index out of the codebook's range.
    pub fn to_conv(&self, codebook: &KernelCodebook<F>) -> Result<Conv2d<F>> {
        Conv2d::new(
            self.dense_weight(codebook)?,
            self.bias.clone(),
            self.geometry,
        )
    }

    /// The dense OIHW weight these indices and scales stand for.
    fn dense_weight(&self, codebook: &KernelCodebook<F>) -> Result<Array4<F>> {
        let scales = self.scales.as_ref().map(ScaleStore::as_full);
        codebook.reconstruct(
            self.indices.to_array().view(),
            scales.as_ref().map(|s| s.view()),
        )
    }

    /// The stored indices `(Cout, Cin)`, borrowed (see [`Indices`] for reading them; the
    /// layer keeps them as narrow as `u8`).
    pub fn indices(&self) -> Indices<'_> {
        Indices(&self.indices)
    }

    /// The bytes the layer holds, parameter by parameter, with its plan (0 until a pass
    /// builds it) and the size of the dense weight it stands for (the codebook gives the
    /// kernel size). See [`LayerMemory`] for an example.
    pub fn memory(&self, codebook: &KernelCodebook<F>) -> LayerMemory {
        let (cout, cin) = self.indices.dim();
        let (kh, kw) = codebook.kernel_size();
        let size = std::mem::size_of::<F>();
        let g = self.geometry;
        let winograd = (kh, kw) == (3, 3) && g.stride == (1, 1) && g.dilation == (1, 1);
        LayerMemory {
            index_bytes: self.indices.bytes(),
            scale_bytes: self.scales.as_ref().map_or(0, ScaleStore::bytes),
            bias_bytes: self.bias.as_ref().map_or(0, |b| b.len() * size),
            mask_bytes: self
                .mask
                .as_ref()
                .map_or(0, |m| m.len() * std::mem::size_of::<bool>()),
            plan_bytes: self.plan.get().map_or(0, Plan::bytes),
            dense_weight_bytes: cout * cin * kh * kw * size,
            winograd_codebook_bytes: if winograd {
                winograd::codebook_bytes::<F>(codebook.index_limit())
            } else {
                0
            },
            winograd_operand_bytes: if winograd {
                winograd::operand_bytes::<F>(cout, cin)
            } else {
                0
            },
        }
    }

    /// The stored scales `(Cout, Cin)`, if any, borrowed (see [`Scales`]: read as `F`,
    /// widened exactly when held as `f16`).
    pub fn scales(&self) -> Option<Scales<'_, F>> {
        self.scales.as_ref().map(Scales)
    }

    /// The layer with its scales held at half precision: every scale is rounded to the
    /// nearest IEEE `f16` (ties to even — the rounding of
    /// [`ScaleStorage::F16`](crate::ScaleStorage::F16), so the values are those a
    /// compressed file stores) and kept as `f16`, 2 bytes per kernel instead of
    /// `size_of::<F>()`. Every pass reads them widened (exactly) to `F`: the layer computes
    /// what a layer holding the rounded values as `F` computes, bit for bit. A layer without
    /// scales, or whose scales are already `f16`, is returned unchanged;
    /// [`ClusteredConv2d::set_params`] stores new scales as `F` again.
    ///
    /// ```
    /// use clustered_conv::{ClusteredConv2d, ConvGeometry, KernelCodebook, Symmetry};
    /// use ndarray::{Array2, Array3};
    ///
    /// // 64 × 64 kernels of 3 × 3 over K = 64 centroids.
    /// let codebook = KernelCodebook::from_centroids(Array3::<f32>::ones((64, 3, 3)), Symmetry::Identity)?;
    /// let indices = Array2::from_shape_fn((64, 64), |(o, i)| ((o * 7 + i) % 64) as u32);
    /// let scales = Array2::from_shape_fn((64, 64), |(o, i)| 0.1 + (o + i) as f32 / 128.0);
    /// let layer = ClusteredConv2d::new(indices, Some(scales.clone()), None, ConvGeometry::default())?
    ///     .with_half_scales()?;
    /// assert!(layer.scales().unwrap().are_half());
    /// assert_eq!(layer.scales().unwrap().get(0, 0), Some(half::f16::from_f32(0.1).to_f32())); // 0.0999755859375
    ///
    /// let m = layer.memory(&codebook);
    /// assert_eq!((m.index_bytes, m.scale_bytes), (4096, 8192)); // a u8 and an f16 per kernel
    /// assert_eq!(m.dense_weight_bytes, 147456); // 64·64·9 f32
    /// assert_eq!(m.ratio(), 12.0); // 36 bytes per dense kernel, 3 stored
    /// # Ok::<(), clustered_conv::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NonFinite`] when a scale rounds to infinity (beyond ±65 504, the f16 range);
    /// its `index` is the flat position `o·Cin + i`.
    pub fn with_half_scales(mut self) -> Result<Self> {
        self.make_scales_half()?;
        Ok(self)
    }

    /// [`ClusteredConv2d::with_half_scales`] in place; on error the layer is unchanged.
    pub(crate) fn make_scales_half(&mut self) -> Result<()> {
        if let Some(s) = &self.scales {
            if !s.is_half() {
                let half = s.to_half()?;
                self.scales = Some(half);
            }
        }
        Ok(())
    }

    /// Rounds the scales to `scheme`'s storage, as a compressed network stores them: held as
    /// `f16` for [`ScaleStorage::F16`], as `F` on the storage grid otherwise (unchanged
    /// without scales). On error the layer is unchanged.
    pub(crate) fn round_scales_to(&mut self, scheme: ScaleScheme) -> Result<()> {
        match (scheme.storage(), &self.scales) {
            (Some(ScaleStorage::F16), _) => self.make_scales_half(),
            (Some(storage), Some(s)) => {
                let rounded = s.as_full().mapv(|v| storage.round(v));
                check_finite_scales(&rounded)?;
                self.scales = Some(ScaleStore::Full(rounded));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The scales and bias for an in-place training update. Scales held as `f16` are first
    /// widened (exactly) to `F`: updated scales are off the f16 grid, so they stay `F` until
    /// rounded again. Call [`ClusteredConv2d::check_updated_scales`] after the update.
    pub(crate) fn params_mut(&mut self) -> (Option<&mut Array2<F>>, Option<&mut Array1<F>>) {
        if let Some(ScaleStore::Half(_)) = &self.scales {
            self.scales = self
                .scales
                .as_ref()
                .map(|s| ScaleStore::Full(s.as_full().into_owned()));
        }
        let scales = match &mut self.scales {
            Some(ScaleStore::Full(s)) => Some(s),
            _ => None,
        };
        (scales, self.bias.as_mut())
    }

    /// After [`ClusteredConv2d::params_mut`]: pruned kernels back to scale 0, and an error
    /// for a non-finite scale.
    pub(crate) fn check_updated_scales(&mut self) -> Result<()> {
        if let Some(s) = &mut self.scales {
            if let Some(mask) = &self.mask {
                s.zero_where_not(mask);
            }
            check_finite_scales(&s.as_full())?;
        }
        Ok(())
    }

    /// Bias, if any.
    pub fn bias(&self) -> Option<&Array1<F>> {
        self.bias.as_ref()
    }

    /// Geometry.
    pub fn geometry(&self) -> ConvGeometry {
        self.geometry
    }

    /// Number of output channels.
    pub fn out_channels(&self) -> usize {
        self.indices.dim().0
    }

    /// Number of input channels.
    pub fn in_channels(&self) -> usize {
        self.indices.dim().1
    }

    /// `ΣU_j`: distinct stored indices per output channel, summed over output channels.
    pub fn sum_distinct_per_output(&self) -> usize {
        self.distinct.0
    }

    /// `ΣV_i`: distinct stored indices per input channel, summed over input channels.
    pub fn sum_distinct_per_input(&self) -> usize {
        self.distinct.1
    }

    /// The execution plan, built on first use.
    fn plan(&self) -> &Plan {
        self.plan.get_or_init(|| Plan::new(&self.indices))
    }

    /// The scales as the sharing passes read them; `scratch` holds them widened from `f16`,
    /// or a row of ones for a layer without scales.
    fn kernel_scales<'a>(&'a self, scratch: &'a mut Vec<F>) -> KernelScales<'a, F> {
        match &self.scales {
            Some(s) => KernelScales::new(s.as_slice_in(scratch), self.in_channels()),
            None => {
                *scratch = vec![F::one(); self.in_channels()];
                KernelScales::ones(scratch)
            }
        }
    }

    /// Checks that every stored index is an entry of `codebook` (below `K·S`).
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`] naming the first index beyond the codebook.
    pub fn check_codebook(&self, codebook: &KernelCodebook<F>) -> Result<()> {
        if self.indices.max() as usize >= codebook.index_limit() {
            // Only on failure: widen to find and name the first offending kernel.
            codebook.check_indices(&self.indices.to_array().view())?;
        }
        Ok(())
    }

    /// Checks the codebook against the layer and resolves the call's shapes.
    fn resolve(&self, codebook: &KernelCodebook<F>, input: [usize; 4]) -> Result<ConvShape> {
        self.check_codebook(codebook)?;
        let (kh, kw) = codebook.kernel_size();
        self.geometry
            .resolve(input, [self.out_channels(), self.in_channels(), kh, kw])
    }

    /// Forward pass with [`ForwardStrategy::Auto`].
    ///
    /// # Errors
    /// As [`ClusteredConv2d::forward_with`].
    pub fn forward(&self, codebook: &KernelCodebook<F>, x: ArrayView4<F>) -> Result<Array4<F>> {
        self.forward_with(codebook, x, ForwardStrategy::Auto)
    }

    /// Forward pass with an explicit strategy. All strategies compute the same function (up to
    /// floating-point summation order).
    ///
    /// # Shapes
    /// `x`: (N, Cin, H, W) → (N, Cout, OH, OW).
    ///
    /// # Errors
    /// An index beyond the codebook ([`Error::IndexOutOfRange`]), a channel mismatch, zero
    /// sizes, or a kernel larger than the padded input.
    pub fn forward_with(
        &self,
        codebook: &KernelCodebook<F>,
        x: ArrayView4<F>,
        strategy: ForwardStrategy,
    ) -> Result<Array4<F>> {
        self.forward_impl(codebook, x, strategy, Kernels::detect())
    }

    fn forward_impl(
        &self,
        codebook: &KernelCodebook<F>,
        x: ArrayView4<F>,
        strategy: ForwardStrategy,
        kernels: Kernels,
    ) -> Result<Array4<F>> {
        let s = self.resolve(codebook, dims4(&x))?;
        let strategy = match strategy {
            ForwardStrategy::Auto => self.cost_for_shape(&s).cheapest(),
            ForwardStrategy::Winograd => {
                if let Some(reason) = winograd::obstacle(codebook.kernel_size(), &s) {
                    return Err(Error::Unsupported {
                        what: "ForwardStrategy::Winograd on this layer",
                        reason,
                    });
                }
                ForwardStrategy::Winograd
            }
            other => other,
        };
        let bias = self.bias.as_ref().map(|b| b.view());
        let mut ones = Vec::new();
        Ok(match strategy {
            ForwardStrategy::Dense | ForwardStrategy::Auto => forward::dense_fallback(
                x,
                &self.indices,
                self.scales.as_ref(),
                &codebook.decoded_kernels(),
                bias,
                &s,
            ),
            ForwardStrategy::InputSide => forward::input_side(
                x,
                self.plan(),
                self.kernel_scales(&mut ones),
                &codebook.decoded_kernels(),
                bias,
                &s,
                kernels,
            ),
            ForwardStrategy::OutputSide => forward::output_side(
                x,
                self.plan(),
                self.kernel_scales(&mut ones),
                &codebook.decoded_kernels(),
                bias,
                &s,
            ),
            ForwardStrategy::Winograd => {
                winograd::forward(x, codebook, &self.indices, self.scales.as_ref(), bias, &s)
            }
        })
    }

    /// Backward pass: gradients with respect to the input, the codebook's centroids, the scales
    /// and the bias, given the forward input `x` and `grad_out` = ∂L/∂y. Assignments are frozen
    /// (indices have no gradient). Work is grouped like the forward input side: for every input
    /// channel and distinct kernel, the scaled output gradients that share it are summed once,
    /// then used for both the input gradient and the centroid gradient.
    ///
    /// # Errors
    /// As [`ClusteredConv2d::forward_with`], plus a `grad_out` whose shape is not the output
    /// shape.
    pub fn backward(
        &self,
        codebook: &KernelCodebook<F>,
        x: ArrayView4<F>,
        grad_out: ArrayView4<F>,
    ) -> Result<ClusteredGrads<F>> {
        self.backward_with(codebook, x, grad_out, BackwardRoute::Auto)
    }

    /// As [`ClusteredConv2d::backward`] with a chosen [`BackwardRoute`]. The dense route
    /// folds the dense weight gradient into `∂L/∂μ_c = Σ s·Φ_t⁻¹(∂L/∂w)` and
    /// `∂L/∂s = ⟨∂L/∂w, Φ_t(μ_c)⟩`. Both routes compute the same gradients up to float
    /// rounding.
    ///
    /// # Errors
    /// As [`ClusteredConv2d::backward`].
    pub fn backward_with(
        &self,
        codebook: &KernelCodebook<F>,
        x: ArrayView4<F>,
        grad_out: ArrayView4<F>,
        route: BackwardRoute,
    ) -> Result<ClusteredGrads<F>> {
        let s = self.resolve(codebook, dims4(&x))?;
        s.check_grad_out(grad_out.shape())?;
        let dense_route = match route {
            BackwardRoute::Dense => true,
            BackwardRoute::Sharing => false,
            BackwardRoute::Auto => {
                let cost = self.cost_for_shape(&s);
                cost.input_side.conv_macs.saturating_mul(16) >= cost.dense_macs
            }
        };
        let mut grads = if dense_route {
            self.backward_dense(codebook, x, grad_out, &s)?
        } else {
            let mut ones = Vec::new();
            backward::backward(
                codebook,
                self.plan(),
                self.kernel_scales(&mut ones),
                self.bias.is_some(),
                x,
                grad_out,
                &s,
            )
        };
        // Pruned kernels are constant zeros: their scales must not move.
        if let (Some(mask), Some(gs)) = (&self.mask, grads.scales.as_mut()) {
            gs.zip_mut_with(mask, |g, &keep| {
                if !keep {
                    *g = F::zero();
                }
            });
        }
        Ok(grads)
    }

    /// The dense route of [`ClusteredConv2d::backward_with`]: the dense weight gradient
    /// (im2col), folded into centroid and scale gradients. The input gradient runs through
    /// Winograd with the clustered adjoint operand when the call allows it (3×3, stride 1,
    /// dilation 1, padding ≤ 2), the map has enough tiles ([`LayerCost::winograd_tiles_pay`])
    /// and the cost model predicts that adjoint convolution faster than dense, else through the
    /// rebuilt dense weight.
    fn backward_dense(
        &self,
        codebook: &KernelCodebook<F>,
        x: ArrayView4<F>,
        grad_out: ArrayView4<F>,
        s: &ConvShape,
    ) -> Result<ClusteredGrads<F>> {
        let adjoint = adjoint_cost(s);
        let (input, weight, bias) = if winograd::obstacle(codebook.kernel_size(), s).is_none()
            && adjoint_fits(s)
            && adjoint.winograd_tiles_pay
            && adjoint.predicted_winograd_ratio().is_some_and(|r| r < 1.0)
        {
            let x = x.as_standard_layout();
            let go = grad_out.as_standard_layout();
            let input = winograd::backward_input(
                go.view(),
                codebook,
                &self.indices,
                self.scales.as_ref(),
                s,
            );
            let weight = backward_weight(x.view(), go.view(), s)
                .into_shape_with_order((s.cout, s.cin, s.kh, s.kw))
                .expect("Cout·Cin·kh·kw weight gradients");
            let bias = self.bias.as_ref().map(|_| channel_sums(go.view()));
            (input, weight, bias)
        } else {
            let dense = self.to_conv(codebook)?.backward(x, grad_out)?;
            (dense.input, dense.weight, dense.bias)
        };
        let (centroids, scales) =
            backward::fold_weight_grad(codebook, &self.indices, self.scales.as_ref(), &weight);
        Ok(ClusteredGrads {
            input,
            centroids,
            scales,
            bias,
        })
    }

    /// The layer's work for an input of spatial size `(h, w)` (per image): dense MACs, the
    /// paper's FLOP count, and the real work of each strategy.
    ///
    /// # Errors
    /// As [`ClusteredConv2d::forward_with`] for the shapes.
    pub fn cost(
        &self,
        codebook: &KernelCodebook<F>,
        input_hw: (usize, usize),
    ) -> Result<LayerCost> {
        let s = self.resolve(codebook, [1, self.in_channels(), input_hw.0, input_hw.1])?;
        Ok(self.cost_for_shape(&s))
    }

    /// The strategy [`ForwardStrategy::Auto`] runs for an input of shape `[N, Cin, H, W]`.
    ///
    /// # Errors
    /// As [`ClusteredConv2d::forward_with`] for the shapes.
    pub fn auto_strategy(
        &self,
        codebook: &KernelCodebook<F>,
        input_shape: [usize; 4],
    ) -> Result<ForwardStrategy> {
        let s = self.resolve(codebook, input_shape)?;
        Ok(self.cost_for_shape(&s).cheapest())
    }

    fn cost_for_shape(&self, s: &ConvShape) -> LayerCost {
        LayerCost::new(
            s,
            self.sum_distinct_per_output(),
            self.sum_distinct_per_input(),
        )
    }
}

/// The cost of the input gradient's convolution of a stride-1 call: `grad_out` correlated
/// into the input's shape, channels swapped (sharing counts left at 0: only the dense and
/// Winograd predictions are read).
fn adjoint_cost(s: &ConvShape) -> LayerCost {
    LayerCost::new(&s.transposed(), 0, 0)
}

/// `a` in standard (row-major) layout, copied only when it is not.
fn standard_layout<F: Clone>(a: Array2<F>) -> Array2<F> {
    if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    }
}

/// Checks that a replacement parameter has the shape of the one held (and is present exactly
/// when one is held; an absent parameter has the empty shape in the error).
fn check_same_shape(
    what: &'static str,
    held: Option<Vec<usize>>,
    new: Option<&[usize]>,
) -> Result<()> {
    if held.as_deref() == new {
        return Ok(());
    }
    Err(Error::ShapeMismatch {
        what,
        expected: held.unwrap_or_default(),
        got: new.map(<[usize]>::to_vec).unwrap_or_default(),
    })
}

/// Rejects the first non-finite scale, naming its flat position `o·Cin + i`.
fn check_finite_scales<F: Real>(scales: &Array2<F>) -> Result<()> {
    match scales.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFinite {
            what: "scales (row = o·Cin + i)",
            index,
        }),
        None => Ok(()),
    }
}
