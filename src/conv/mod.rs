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
//! # Determinism
//! Every output element is produced by exactly one task with a fixed summation order, and
//! weight gradients are reduced over a fixed number of fixed-size groups in group order, so
//! results are bit-identical for any number of rayon threads.

use ndarray::{Array1, Array2, Array3, Array4, ArrayView1, ArrayView2, ArrayView4, Axis, Slice};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::geometry::{ConvGeometry, ConvShape};
use crate::linalg::Real;

use crate::linalg::{
    add_bias, channel_sums, col2im_tile, dims4, forward_tile_positions, gemm, image, matrix_mut,
    output_tiles, patch_matrix, tile_positions,
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
#[derive(Debug, Clone, PartialEq)]
pub struct Conv2d<F> {
    weight: Array4<F>,
    bias: Option<Array1<F>>,
    geometry: ConvGeometry,
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
        })
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
        Ok(forward_im2col(
            x,
            self.weight_matrix(),
            self.bias.as_ref().map(|b| b.view()),
            &s,
        ))
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
        let input = backward_input(w2, go.view(), &s);
        let weight = backward_weight(x.view(), go.view(), &s)
            .into_shape_with_order(self.weight.raw_dim())
            .expect("gradient has the weight's element count");
        let bias = self.bias.as_ref().map(|_| channel_sums(go.view()));
        Ok(Conv2dGrads {
            input,
            weight,
            bias,
        })
    }
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
    let mut out = Array3::<F>::zeros((s.batch, s.cout, positions));
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

/// ∂L/∂x: per image, `W2ᵀ · grad_out` tile by tile, scattered back by col2im.
pub(crate) fn backward_input<F: Real>(
    w2: ArrayView2<F>,
    go: ArrayView4<F>,
    s: &ConvShape,
) -> Array4<F> {
    let positions = s.out_positions();
    let tile = tile_positions::<F>(s);
    let mut gx = Array4::<F>::zeros((s.batch, s.cin, s.h, s.w));
    gx.outer_iter_mut()
        .into_par_iter()
        .enumerate()
        .for_each(|(n, mut gx_n)| {
            let go_n = go
                .index_axis(Axis(0), n)
                .into_shape_with_order((s.cout, positions))
                .expect("standard layout");
            let gx_slice = gx_n.as_slice_mut().expect("fresh array is contiguous");
            let mut col = Vec::new();
            for p0 in (0..positions).step_by(tile) {
                let width = tile.min(positions - p0);
                let go_tile = go_n.slice_axis(Axis(1), Slice::from(p0..p0 + width));
                if s.is_pointwise_identity() {
                    let mut gx_mat = matrix_mut(gx_slice, s.cin, positions);
                    let mut dst = gx_mat.slice_axis_mut(Axis(1), Slice::from(p0..p0 + width));
                    gemm(F::one(), &w2.t(), &go_tile, F::zero(), &mut dst);
                    continue;
                }
                col.resize(s.patch_len() * width, F::zero());
                let mut col_mat = matrix_mut(&mut col, s.patch_len(), width);
                gemm(F::one(), &w2.t(), &go_tile, F::zero(), &mut col_mat);
                col2im_tile(&col, s, p0, width, gx_slice);
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
