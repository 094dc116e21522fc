//! Dense 2-D convolution (the baseline and the oracle): tiled im2col + GEMM, forward and
//! backward.
//!
//! # Algorithm
//! For every image and every tile of output positions, the patch matrix of the tile
//! (`cin·kh·kw × tile`) is built and multiplied by the weight viewed as `cout × cin·kh·kw`.
//! Tiles are sized so one patch matrix takes at most 4 MiB (at least 64 positions), so the
//! scratch memory is bounded by `threads × max(4 MiB, 64·cin·kh·kw·size_of::<F>())` whatever
//! the input size. A 1×1, stride-1, unpadded convolution skips im2col entirely.
//!
//! 3×3, stride-1, dilation-1 layers can instead run Winograd F(4×4, 3×3) (see
//! [`ConvAlgorithm`]): the transformed weight is computed on first use, cached in the layer
//! and dropped by [`Conv2d::params_mut`]. When the forward runs Winograd, the input gradient
//! does too (for padding ≤ 2): it is the Winograd forward of the output gradient with the
//! rotated, transposed kernels and padding `2 − p`, and the weight gradient is computed in the
//! Winograd domain (36 GEMMs per block of tiles, then `Gᵀ dU G`).
//!
//! 3×3, stride-1, dilation-1 layers can also run the direct kernels on zero-padded planes
//! ([`ConvAlgorithm::Direct`]): no patch matrix, each tap reads the padded input at a
//! constant offset. Their input gradient is the same kernel on the output gradient with the
//! rotated, transposed weight, and their weight gradient sums `grad_out · shifted input` in
//! registers over a sub-batch of images.
//!
//! # Determinism
//! Every output element is produced by exactly one task with a fixed summation order, and
//! weight gradients are reduced over a fixed number of fixed-size groups in group order, so
//! results are bit-identical for any number of rayon threads.

use std::sync::OnceLock;

use ndarray::{Array1, Array2, Array3, Array4, ArrayView1, ArrayView2, ArrayView4, Axis, Slice};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::geometry::{ConvGeometry, ConvShape};
use crate::linalg::{
    backward_weight_direct, backward_weight_winograd, direct_fits, forward_direct, par_zeros, Real,
};

use crate::linalg::{
    add_bias, adjoint_fits, adjoint_weight, backward_input_winograd, channel_sums, col2im_tile,
    dims4, forward_tile_positions, forward_winograd, gemm, image, matrix_mut, output_tiles,
    patch_matrix, tile_positions, winograd_pays, WinogradWeight,
};

/// Most partial weight-gradient buffers kept at once (bounds memory; fixed, so the reduction
/// order does not depend on the thread count).
const MAX_WEIGHT_GRAD_GROUPS: usize = 8;

/// A dense 2-D convolution layer (cross-correlation, PyTorch semantics), NCHW / OIHW.
///
/// ```
/// use clustered_conv::{Conv2d, ConvGeometry};
/// use ndarray::{Array1, Array4};
///
/// // 2 input channels, 4 output channels, 3×3 kernels, "same" padding.
/// let weight = Array4::<f32>::from_elem((4, 2, 3, 3), 0.1);
/// let conv = Conv2d::new(weight, Some(Array1::zeros(4)), ConvGeometry::default().padding(1, 1))?;
/// let x = Array4::<f32>::ones((1, 2, 8, 8));
/// let y = conv.forward(x.view())?;
/// assert_eq!(y.shape(), &[1, 4, 8, 8]);
/// // An interior pixel sees 2·9 ones times 0.1.
/// assert!((y[[0, 0, 4, 4]] - 1.8).abs() < 1e-6);
/// # Ok::<(), clustered_conv::Error>(())
/// ```
#[derive(Clone)]
pub struct Conv2d<F> {
    weight: Array4<F>,
    bias: Option<Array1<F>>,
    geometry: ConvGeometry,
    /// Boxed, so the layer stays small (e.g. inside `CompressedLayer`).
    plan: Box<ForwardPlan<F>>,
}

/// How a [`Conv2d`] runs its forward pass, and what it caches for it.
#[derive(Clone)]
struct ForwardPlan<F> {
    algorithm: ConvAlgorithm,
    /// `U = G g Gᵀ` of the current weight, built on the first Winograd forward; emptied by
    /// every mutable access to the parameters, so it is never stale.
    winograd: OnceLock<WinogradWeight<F>>,
    /// The same for the input gradient's convolution (rotated, transposed kernels), built on
    /// the first Winograd backward.
    winograd_adjoint: OnceLock<WinogradWeight<F>>,
}

impl<F: std::fmt::Debug> std::fmt::Debug for Conv2d<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conv2d")
            .field("weight", &self.weight)
            .field("bias", &self.bias)
            .field("geometry", &self.geometry)
            .field("algorithm", &self.plan.algorithm)
            .finish_non_exhaustive()
    }
}

/// Equal weight, bias, geometry and algorithm (the Winograd cache is not compared).
impl<F: PartialEq> PartialEq for Conv2d<F> {
    fn eq(&self, other: &Self) -> bool {
        self.weight == other.weight
            && self.bias == other.bias
            && self.geometry == other.geometry
            && self.plan.algorithm == other.plan.algorithm
    }
}

/// How [`Conv2d::forward`] computes the convolution.
///
/// ```
/// use clustered_conv::{Conv2d, ConvAlgorithm, ConvGeometry};
/// use ndarray::{Array1, Array4};
///
/// let weight = Array4::<f64>::from_elem((4, 2, 3, 3), 0.1);
/// let same = ConvGeometry::default().padding(1, 1);
/// let im2col = Conv2d::new(weight.clone(), Some(Array1::zeros(4)), same)?
///     .with_algorithm(ConvAlgorithm::Im2col)?;
/// let winograd = Conv2d::new(weight, Some(Array1::zeros(4)), same)?
///     .with_algorithm(ConvAlgorithm::Winograd)?;
/// let direct = winograd.clone().with_algorithm(ConvAlgorithm::Direct)?;
/// let x = Array4::<f64>::ones((1, 2, 9, 7));
/// let (a, b, c) = (im2col.forward(x.view())?, winograd.forward(x.view())?, direct.forward(x.view())?);
/// assert!(a.iter().zip(b.iter()).all(|(p, q)| (p - q).abs() < 1e-12));
/// assert!(a.iter().zip(c.iter()).all(|(p, q)| (p - q).abs() < 1e-12));
///
/// // Winograd and the direct kernels need a 3×3 kernel, stride 1 and dilation 1.
/// let strided = Conv2d::new(Array4::<f64>::zeros((4, 2, 3, 3)), None, same.stride(2, 2))?;
/// assert!(strided.clone().with_algorithm(ConvAlgorithm::Winograd).is_err());
/// assert!(strided.with_algorithm(ConvAlgorithm::Direct).is_err());
/// # Ok::<(), clustered_conv::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ConvAlgorithm {
    /// The layer chooses, per call: Winograd where the geometry allows it and the call has
    /// enough tiles for its channel count; else, on other 3×3, stride-1, dilation-1 layers of
    /// at most 64 channels each way and at least 128 output positions per image, the direct
    /// kernels ([`ConvAlgorithm::Direct`]); else im2col. The same choice drives the backward
    /// pass.
    ///
    /// Winograd runs when the call has at least 8 output tiles of 4×4 (batch × tiles per
    /// image) and either both channel counts are at least 128, or (4×4 tiles per image) ×
    /// min(Cin, Cout) ≥ 2048 with at least 16 channels each way. Measured by a sweep of
    /// forward passes (f32, pad 1, Cin = Cout from 16 to 512, maps 4–28, batch 1, 8 and 64, 1
    /// and 2 threads; `examples/winograd_vs_im2col.rs` for the side-by-side check): above the
    /// line Winograd ran at 0.92–3.0× im2col's speed (e.g. 64@28 1.1–1.9×, 128@28 1.4–2.3×,
    /// 256@8 1.5–1.8× and 512@4 1.4–1.5× at batch 8); with 4 tiles or fewer (512@7, 256@8 and
    /// 512@4 at batch 1) at 0.31–1.01×, and on narrow layers with small maps (16–64 channels
    /// at 4–8) mostly below 1×. At the flagship example's layers (32–128 channels at 28–7,
    /// batch 64–128) it does not run: its backward there measured 0.68–0.99× of im2col's.
    /// Their 32–64-channel layers at 28×28 and 14×14 run the direct kernels instead: the
    /// flagship's training step (batch 64, 2 threads, interleaved) took 0.93–0.95× the time it
    /// takes with every layer on im2col.
    #[default]
    Auto,
    /// Tiled im2col + GEMM (any geometry).
    Im2col,
    /// Winograd F(4×4, 3×3): 3×3 kernels, stride 1, dilation 1, any padding. About 4× fewer
    /// multiplies than im2col; in `f32` the relative L2 error against an exact convolution is
    /// a few 1e-6 (im2col's: a few 1e-7).
    Winograd,
    /// Direct convolution on zero-padded planes: 3×3 kernels, stride 1, dilation 1, any
    /// padding. The same multiplies as im2col, with no patch matrix: each tap reads the padded
    /// input at a constant offset, straight into vector registers.
    Direct,
}

/// How one call computes its convolution and its gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Im2col,
    Direct,
    Winograd,
}

/// Gradients of a loss with respect to a [`Conv2d`]'s input and parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv2dGrads<F> {
    /// ∂L/∂x, same shape as the input (N, Cin, H, W).
    pub input: Array4<F>,
    /// ∂L/∂W, same shape as the weight (Cout, Cin, kh, kw).
    pub weight: Array4<F>,
    /// ∂L/∂b (Cout), present when the layer has a bias.
    pub bias: Option<Array1<F>>,
}

impl<F: Real> Conv2d<F> {
    /// Creates a layer from an OIHW weight, an optional bias of length `Cout`, and a geometry.
    ///
    /// # Errors
    /// A zero-sized weight, a bias whose length is not `Cout`, or an invalid geometry.
    pub fn new(weight: Array4<F>, bias: Option<Array1<F>>, geometry: ConvGeometry) -> Result<Self> {
        geometry.validate()?;
        if weight.is_empty() {
            return Err(Error::ZeroSize {
                what: "weight",
                shape: weight.shape().to_vec(),
            });
        }
        if let Some(b) = &bias {
            if b.len() != weight.shape()[0] {
                return Err(Error::ShapeMismatch {
                    what: "bias length vs out_channels",
                    expected: vec![weight.shape()[0]],
                    got: vec![b.len()],
                });
            }
        }
        let weight = if weight.is_standard_layout() {
            weight
        } else {
            weight.as_standard_layout().into_owned()
        };
        Ok(Self {
            weight,
            bias,
            geometry,
            plan: Box::new(ForwardPlan {
                algorithm: ConvAlgorithm::Auto,
                winograd: OnceLock::new(),
                winograd_adjoint: OnceLock::new(),
            }),
        })
    }

    /// The same layer computing its forward pass with `algorithm` (the default is
    /// [`ConvAlgorithm::Auto`]). See [`ConvAlgorithm`] for an example.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for [`ConvAlgorithm::Winograd`] or [`ConvAlgorithm::Direct`] on
    /// a layer whose kernel is not 3×3 or whose stride or dilation is not 1.
    pub fn with_algorithm(mut self, algorithm: ConvAlgorithm) -> Result<Self> {
        let what = match algorithm {
            ConvAlgorithm::Winograd => Some("ConvAlgorithm::Winograd (F(4×4, 3×3)) on this layer"),
            ConvAlgorithm::Direct => Some("ConvAlgorithm::Direct on this layer"),
            _ => None,
        };
        if let (Some(what), Some(reason)) = (what, self.three_by_three_obstacle()) {
            return Err(Error::Unsupported { what, reason });
        }
        self.plan.algorithm = algorithm;
        Ok(self)
    }

    /// The algorithm chosen with [`Conv2d::with_algorithm`].
    pub fn algorithm(&self) -> ConvAlgorithm {
        self.plan.algorithm
    }

    /// Why this layer cannot run Winograd F(4×4, 3×3) or the direct kernels, which need the
    /// same geometry, or `None` when it can.
    fn three_by_three_obstacle(&self) -> Option<&'static str> {
        if self.kernel_size() != (3, 3) {
            Some("it needs a 3×3 kernel; use Im2col or Auto")
        } else if self.geometry.stride != (1, 1) {
            Some("it needs stride 1; use Im2col or Auto")
        } else if self.geometry.dilation != (1, 1) {
            Some("it needs dilation 1; use Im2col or Auto")
        } else {
            None
        }
    }

    /// How this call runs: as asked for (the builder checked the geometry), and under `Auto`
    /// by the measured rule documented on [`ConvAlgorithm::Auto`].
    fn route(&self, s: &ConvShape) -> Route {
        match self.plan.algorithm {
            ConvAlgorithm::Winograd => Route::Winograd,
            ConvAlgorithm::Direct => Route::Direct,
            ConvAlgorithm::Auto if self.three_by_three_obstacle().is_none() && winograd_pays(s) => {
                Route::Winograd
            }
            ConvAlgorithm::Auto if direct_fits(s) && direct_pays(s) => Route::Direct,
            _ => Route::Im2col,
        }
    }

    /// The OIHW weight.
    pub fn weight(&self) -> &Array4<F> {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Array1<F>> {
        self.bias.as_ref()
    }

    /// Mutable weight and bias, for training (the shapes cannot change).
    pub fn params_mut(
        &mut self,
    ) -> (
        ndarray::ArrayViewMut4<'_, F>,
        Option<ndarray::ArrayViewMut1<'_, F>>,
    ) {
        // The caller may change the weight: drop the transformed copy.
        self.plan.winograd = OnceLock::new();
        self.plan.winograd_adjoint = OnceLock::new();
        (
            self.weight.view_mut(),
            self.bias.as_mut().map(|b| b.view_mut()),
        )
    }

    /// The geometry.
    pub fn geometry(&self) -> ConvGeometry {
        self.geometry
    }

    /// Number of output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.shape()[0]
    }

    /// Number of input channels.
    pub fn in_channels(&self) -> usize {
        self.weight.shape()[1]
    }

    /// Kernel size `(kh, kw)`.
    pub fn kernel_size(&self) -> (usize, usize) {
        (self.weight.shape()[2], self.weight.shape()[3])
    }

    /// Output shape `[N, Cout, OH, OW]` for an input of shape `[N, Cin, H, W]`.
    ///
    /// # Errors
    /// Channel mismatch, zero sizes, or a kernel larger than the padded input.
    pub fn output_shape(&self, input: [usize; 4]) -> Result<[usize; 4]> {
        let s = self.resolve(input)?;
        Ok([s.batch, s.cout, s.oh, s.ow])
    }

    fn resolve(&self, input: [usize; 4]) -> Result<ConvShape> {
        let w = self.weight.shape();
        self.geometry.resolve(input, [w[0], w[1], w[2], w[3]])
    }

    fn weight_matrix(&self) -> ArrayView2<'_, F> {
        let cout = self.out_channels();
        let len = self.weight.len() / cout;
        self.weight
            .view()
            .into_shape_with_order((cout, len))
            .expect("weight is kept in standard layout")
    }

    /// Forward pass. `x` may be any view (non-contiguous views are copied once).
    ///
    /// # Shapes
    /// `x`: (N, Cin, H, W) → (N, Cout, OH, OW).
    ///
    /// # Errors
    /// Channel mismatch, zero sizes, or a kernel larger than the padded input.
    pub fn forward(&self, x: ArrayView4<F>) -> Result<Array4<F>> {
        let s = self.resolve(dims4(&x))?;
        let bias = self.bias.as_ref().map(|b| b.view());
        Ok(match self.route(&s) {
            Route::Winograd => {
                let u = self
                    .plan
                    .winograd
                    .get_or_init(|| WinogradWeight::new(self.weight.view()));
                forward_winograd(x, u, bias, &s)
            }
            Route::Direct => forward_direct(x, self.weight.view(), bias, &s),
            Route::Im2col => forward_im2col(x, self.weight_matrix(), bias, &s),
        })
    }

    /// Backward pass: gradients of the loss with respect to the input, weight and bias given
    /// the input `x` of the forward pass and `grad_out` = ∂L/∂y.
    ///
    /// # Shapes
    /// `x`: (N, Cin, H, W); `grad_out`: (N, Cout, OH, OW).
    ///
    /// # Errors
    /// As [`Conv2d::forward`], plus a `grad_out` whose shape is not the output shape.
    pub fn backward(&self, x: ArrayView4<F>, grad_out: ArrayView4<F>) -> Result<Conv2dGrads<F>> {
        let s = self.resolve(dims4(&x))?;
        s.check_grad_out(grad_out.shape())?;
        let w2 = self.weight_matrix();
        let x = x.as_standard_layout();
        let go = grad_out.as_standard_layout();
        let route = self.route(&s);
        let input = if route == Route::Winograd && adjoint_fits(&s) {
            let u = self
                .plan
                .winograd_adjoint
                .get_or_init(|| WinogradWeight::adjoint(self.weight.view()));
            backward_input_winograd(go.view(), u, &s)
        } else if im2col_adjoint_fits(&s) {
            backward_input_adjoint(self.weight.view(), go.view(), &s, route == Route::Direct)
        } else {
            backward_input(w2, go.view(), &s)
        };
        let weight = match route {
            Route::Winograd => backward_weight_winograd(x.view(), go.view(), &s),
            Route::Direct => backward_weight_direct(x.view(), go.view(), &s),
            Route::Im2col => backward_weight(x.view(), go.view(), &s)
                .into_shape_with_order(self.weight.raw_dim())
                .expect("gradient has the weight's element count"),
        };
        let bias = self.bias.as_ref().map(|_| channel_sums(go.view()));
        Ok(Conv2dGrads {
            input,
            weight,
            bias,
        })
    }
}

/// Most channels (each way) for which `Auto` runs the direct kernels: wider layers re-read a
/// block's packed weight (`Cin·9·8` values) from the L2 cache at every register tile.
/// Measured side by side with im2col (batch 64, 2 threads, best of 9, f32, pad 1): at 128@16
/// the direct forward took 1.03–1.06× im2col's time and its weight gradient 1.12–1.19×; at
/// 256@8 1.37× and 1.34–1.47×.
const MAX_DIRECT_CHANNELS: usize = 64;

/// Fewest output positions per image for which `Auto` runs the direct kernels: on smaller maps
/// the two garbage columns of each padded row are a large share of the work (22 % at 7×7).
/// On the flagship's 64→128 layer at 7×7 (same measurements) the direct forward took 1.09×
/// im2col's time and its weight gradient 1.30×.
const MIN_DIRECT_POSITIONS: usize = 128;

/// Whether `Auto` runs a call that [`direct_fits`] through the direct kernels (when it does
/// not run Winograd): at most [`MAX_DIRECT_CHANNELS`] channels each way and at least
/// [`MIN_DIRECT_POSITIONS`] output positions per image.
fn direct_pays(s: &ConvShape) -> bool {
    s.cin.max(s.cout) <= MAX_DIRECT_CHANNELS && s.out_positions() >= MIN_DIRECT_POSITIONS
}

/// Dense forward: `w2` is the weight as (Cout, Cin·kh·kw).
pub(crate) fn forward_im2col<F: Real>(
    x: ArrayView4<F>,
    w2: ArrayView2<F>,
    bias: Option<ArrayView1<F>>,
    s: &ConvShape,
) -> Array4<F> {
    let x = x.as_standard_layout();
    let x = x.view();
    let positions = s.out_positions();
    let tile = forward_tile_positions::<F>(s);
    let mut out: Array3<F> = par_zeros((s.batch, s.cout, positions));
    output_tiles(out.view_mut(), tile)
        .into_par_iter()
        .for_each_init(Vec::new, |buf, (n, p0, mut out_tile)| {
            let width = out_tile.ncols();
            let patches = patch_matrix(image(&x, n), s, p0, width, buf);
            gemm(F::one(), &w2, &patches, F::zero(), &mut out_tile);
            add_bias(out_tile, bias.as_ref());
        });
    out.into_shape_with_order((s.batch, s.cout, s.oh, s.ow))
        .expect("output has N·Cout·OH·OW elements")
}

/// Whether ∂L/∂x runs as [`backward_input_adjoint`]: stride 1 and dilation 1 (the adjoint
/// is then itself a correlation), padding below the kernel size (so the adjoint's padding
/// `k − 1 − p` is not negative), a kernel larger than 1×1 (a pointwise layer's
/// [`backward_input`] is one GEMM already), and at least [`MIN_ADJOINT_IN_CHANNELS`] input
/// channels (the adjoint's GEMM has `Cin` rows).
fn im2col_adjoint_fits(s: &ConvShape) -> bool {
    s.cin >= MIN_ADJOINT_IN_CHANNELS && !s.is_pointwise_identity() && s.adjoint().is_some()
}

/// Fewest input channels for [`backward_input_adjoint`]. Measured on the flagship's layers
/// (batch 128, 2 threads, best of 9): with one input channel its GEMM is a matrix-vector
/// product and it took 2.6× [`backward_input`]'s time; with 32 and 64 it took 0.85–1.0×.
const MIN_ADJOINT_IN_CHANNELS: usize = 16;

/// ∂L/∂x of a layer that [`im2col_adjoint_fits`]: the im2col forward of `grad_out` with the
/// rotated, transposed weight `W'[i, o, r, c] = W[o, i, kh−1−r, kw−1−c]` and padding
/// `k − 1 − p`. Same multiplies as [`backward_input`], but its GEMM sums over `Cout·kh·kw`
/// instead of `Cout` (fewer, fuller micro-kernel passes), and the im2col copy replaces
/// col2im's scattered additions.
fn backward_input_adjoint<F: Real>(
    weight: ArrayView4<F>,
    go: ArrayView4<F>,
    s: &ConvShape,
    direct: bool,
) -> Array4<F> {
    let rotated = adjoint_weight(weight);
    let adjoint = s.adjoint().expect("callers check im2col_adjoint_fits");
    if direct && direct_fits(&adjoint) {
        return forward_direct(go, rotated.view(), None, &adjoint);
    }
    let w2 = rotated
        .view()
        .into_shape_with_order((s.cin, rotated.len() / s.cin.max(1)))
        .expect("a fresh array is in standard layout");
    forward_im2col(go, w2, None, &adjoint)
}

/// ∂L/∂x: per image, `W2ᵀ · grad_out` tile by tile, scattered back by col2im.
pub(crate) fn backward_input<F: Real>(
    w2: ArrayView2<F>,
    go: ArrayView4<F>,
    s: &ConvShape,
) -> Array4<F> {
    let positions = s.out_positions();
    let tile = tile_positions::<F>(s);
    let mut gx: Array4<F> = par_zeros((s.batch, s.cin, s.h, s.w));
    gx.outer_iter_mut()
        .into_par_iter()
        .enumerate()
        // One column buffer per worker, not per image: a fresh buffer per image was
        // zero-filled (`resize`) only to be overwritten by the GEMM.
        .for_each_init(Vec::new, |col, (n, mut gx_n)| {
            let go_n = go
                .index_axis(Axis(0), n)
                .into_shape_with_order((s.cout, positions))
                .expect("standard layout");
            let gx_slice = gx_n.as_slice_mut().expect("fresh array is contiguous");
            for p0 in (0..positions).step_by(tile) {
                let width = tile.min(positions - p0);
                let go_tile = go_n.slice_axis(Axis(1), Slice::from(p0..p0 + width));
                if s.is_pointwise_identity() {
                    let mut gx_mat = matrix_mut(gx_slice, s.cin, positions);
                    let mut dst = gx_mat.slice_axis_mut(Axis(1), Slice::from(p0..p0 + width));
                    gemm(F::one(), &w2.t(), &go_tile, F::zero(), &mut dst);
                    continue;
                }
                if col.len() < s.patch_len() * width {
                    col.resize(s.patch_len() * width, F::zero());
                }
                let mut col_mat = matrix_mut(col, s.patch_len(), width);
                gemm(F::one(), &w2.t(), &go_tile, F::zero(), &mut col_mat);
                col2im_tile(&col[..s.patch_len() * width], s, p0, width, gx_slice);
            }
        });
    gx
}

/// ∂L/∂W as (Cout, Cin·kh·kw): Σ over images and tiles of `grad_out_tile · patchesᵀ`,
/// accumulated in at most [`MAX_WEIGHT_GRAD_GROUPS`] fixed groups, reduced in group order.
pub(crate) fn backward_weight<F: Real>(
    x: ArrayView4<F>,
    go: ArrayView4<F>,
    s: &ConvShape,
) -> Array2<F> {
    let positions = s.out_positions();
    let tile = tile_positions::<F>(s);
    let tasks: Vec<(usize, usize)> = (0..s.batch)
        .flat_map(|n| (0..positions).step_by(tile).map(move |p0| (n, p0)))
        .collect();
    let groups = tasks.len().min(MAX_WEIGHT_GRAD_GROUPS);
    let per_group = tasks.len().div_ceil(groups);
    let partials: Vec<Array2<F>> = tasks
        .par_chunks(per_group)
        .map(|group| {
            let mut acc = Array2::<F>::zeros((s.cout, s.patch_len()));
            let mut buf = Vec::new();
            for &(n, p0) in group {
                let width = tile.min(positions - p0);
                let patches = patch_matrix(image(&x, n), s, p0, width, &mut buf);
                let go_tile = go
                    .index_axis(Axis(0), n)
                    .into_shape_with_order((s.cout, positions))
                    .expect("standard layout")
                    .slice_axis_move(Axis(1), Slice::from(p0..p0 + width));
                gemm(
                    F::one(),
                    &go_tile,
                    &patches.t(),
                    F::one(),
                    &mut acc.view_mut(),
                );
            }
            acc
        })
        .collect();
    let mut total = Array2::<F>::zeros((s.cout, s.patch_len()));
    for p in &partials {
        total += p;
    }
    total
}
