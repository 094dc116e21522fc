//! Average pooling: windowed ([`AvgPool2d`]) and global ([`GlobalAvgPool`]).

use ndarray::{Array4, ArrayView4, CowArray, Ix4};
use rayon::prelude::*;

use super::pool::pooled_size;
use crate::error::{Error, Result};
use crate::linalg::Real;

/// 2-D average pooling with a square window (PyTorch's
/// `nn.AvgPool2d(k, s, padding=p, count_include_pad=...)`, `ceil_mode=False`, no
/// `divisor_override`; ONNX `AveragePool` with symmetric pads).
///
/// Each output is the sum of its window's input values (padded positions count as zeros)
/// divided by `kernel²` when `count_include_pad` is true, or by the number of input positions
/// in the window when it is false. The output is `⌊(H + 2p − k) / s⌋ + 1` by
/// `⌊(W + 2p − k) / s⌋ + 1`, and `padding ≤ kernel / 2` (PyTorch's limit, which keeps at least
/// one input position in every window).
///
/// Nothing is saved for the backward pass: the gradient depends only on the input's shape.
///
/// ```
/// use clustered_conv::nn::AvgPool2d;
/// use ndarray::Array4;
///
/// // A 3×3 input, 2×2 windows moved by 2, one row and column of padding on every side.
/// let x = Array4::from_shape_vec((1, 1, 3, 3), (1..=9).map(f64::from).collect()).unwrap();
/// let mut pool = AvgPool2d { kernel: 2, stride: 2, padding: 1, count_include_pad: false };
/// let y = pool.forward(x.view()).unwrap();
/// // Windows {1}, {2, 3}, {4, 7}, {5, 6, 8, 9}: the mean of their input values.
/// assert_eq!(y.into_raw_vec_and_offset().0, vec![1.0, 2.5, 5.5, 7.0]);
///
/// pool.count_include_pad = true; // every window is divided by 4
/// let y = pool.forward(x.view()).unwrap();
/// assert_eq!(y.into_raw_vec_and_offset().0, vec![0.25, 1.25, 2.75, 7.0]);
///
/// // The backward pass needs only the input's shape.
/// let dx = pool.backward(x.dim(), Array4::<f64>::ones((1, 1, 2, 2)).view()).unwrap();
/// assert_eq!(dx[[0, 0, 1, 1]], 0.25);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool2d {
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Implicit zero padding on each of the four sides, at most `kernel / 2`.
    pub padding: usize,
    /// Whether padded positions count in the divisor (`kernel²` always) or not (the number
    /// of input positions in the window). PyTorch's default is `true`; ONNX's is `false`.
    pub count_include_pad: bool,
}

/// One window of one plane, clipped to the input: rows and columns of the input, and the
/// divisor of its sum.
struct Window {
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    divisor: usize,
}

impl AvgPool2d {
    /// Output height and width for an `h × w` input: `⌊(h + 2p − k) / s⌋ + 1` and
    /// `⌊(w + 2p − k) / s⌋ + 1`.
    ///
    /// # Errors
    /// A zero window or stride ([`Error::InvalidParameter`]), `padding > kernel / 2`
    /// ([`Error::GeometryTooLarge`] with `max = kernel / 2`), a window larger than the padded
    /// input ([`Error::KernelTooLarge`]), or a padded input of zero height or width
    /// ([`Error::ZeroSize`]).
    pub fn output_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        pooled_size(
            "avg-pool input (height, width)",
            (self.kernel, self.stride, self.padding),
            (h, w),
        )
    }

    /// The input positions of output `(oy, ox)` over an `h × w` plane, and its divisor.
    #[inline]
    fn window(&self, (h, w): (usize, usize), oy: usize, ox: usize) -> Window {
        let (k, p) = (self.kernel, self.padding);
        // Padded coordinates of the window's corner; `y ≤ h + 2p − k`, so `h + p − y ≥ k − p`.
        let (y, x) = (oy * self.stride, ox * self.stride);
        let rows = y.saturating_sub(p)..(y + k - p).min(h);
        let cols = x.saturating_sub(p)..(x + k - p).min(w);
        let divisor = if self.count_include_pad {
            k * k
        } else {
            rows.len() * cols.len()
        };
        Window {
            rows,
            cols,
            divisor,
        }
    }

    /// Forward pass, `(N, C, H, W)` → `(N, C, OH, OW)`; planes in parallel.
    ///
    /// # Errors
    /// As [`AvgPool2d::output_size`].
    pub fn forward<F: Real>(&self, x: ArrayView4<F>) -> Result<Array4<F>> {
        let (n, c, h, w) = x.dim();
        let (oh, ow) = self.output_size(h, w)?;
        let x = x.as_standard_layout();
        let input = x.as_slice().expect("standard layout");
        let mut y = Array4::<F>::zeros((n, c, oh, ow));
        if let Some(out) = y.as_slice_mut().filter(|o| !o.is_empty()) {
            out.par_chunks_mut(oh * ow)
                .zip(input.par_chunks(h * w))
                .for_each(|(dst, plane)| {
                    for (i, d) in dst.iter_mut().enumerate() {
                        let win = self.window((h, w), i / ow, i % ow);
                        let mut sum = F::zero();
                        for r in win.rows {
                            for &v in &plane[r * w..][win.cols.clone()] {
                                sum += v;
                            }
                        }
                        *d = sum / F::from_usize(win.divisor).expect("a window size");
                    }
                });
        }
        Ok(y)
    }

    /// Backward pass: `∂x` for an input of shape `input_dim` `(N, C, H, W)`; each output
    /// gradient is spread evenly (divided by its window's divisor) over its window's input
    /// positions. Planes in parallel, each in output order (deterministic).
    ///
    /// # Errors
    /// As [`AvgPool2d::output_size`], or a `grad_out` of a shape other than the output's.
    pub fn backward<F: Real>(
        &self,
        input_dim: (usize, usize, usize, usize),
        grad_out: ArrayView4<F>,
    ) -> Result<Array4<F>> {
        let (n, c, h, w) = input_dim;
        let (oh, ow) = self.output_size(h, w)?;
        let go = standard_grad("avg-pool grad_out", grad_out, (n, c, oh, ow))?;
        let g = go.as_slice().expect("standard layout");
        let mut gx = Array4::<F>::zeros(input_dim);
        if let Some(dst) = gx.as_slice_mut().filter(|d| !d.is_empty()) {
            dst.par_chunks_mut(h * w)
                .zip(g.par_chunks(oh * ow))
                .for_each(|(plane, gp)| {
                    for (i, &gi) in gp.iter().enumerate() {
                        let win = self.window((h, w), i / ow, i % ow);
                        let share = gi / F::from_usize(win.divisor).expect("a window size");
                        for r in win.rows {
                            for v in &mut plane[r * w..][win.cols.clone()] {
                                *v += share;
                            }
                        }
                    }
                });
        }
        Ok(gx)
    }
}

/// Global average pooling, `(N, C, H, W)` → `(N, C, 1, 1)`: the mean of each plane (PyTorch's
/// `nn.AdaptiveAvgPool2d(1)`, ONNX `GlobalAveragePool`).
///
/// A unit struct rather than two free functions so that it reads like the other layers:
/// `GlobalAvgPool.forward(x)` and `GlobalAvgPool.backward(x.dim(), grad)`; like
/// [`AvgPool2d`], the backward pass needs only the input's shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlobalAvgPool;

impl GlobalAvgPool {
    /// Forward pass: the mean of every `H × W` plane, as an `(N, C, 1, 1)` array.
    ///
    /// # Errors
    /// An input of zero height or width ([`Error::ZeroSize`]: its mean is undefined).
    pub fn forward<F: Real>(&self, x: ArrayView4<F>) -> Result<Array4<F>> {
        let (n, c, h, w) = x.dim();
        let count = plane_size(x.dim())?;
        let x = x.as_standard_layout();
        let input = x.as_slice().expect("standard layout");
        let mut y = Array4::<F>::zeros((n, c, 1, 1));
        if let Some(out) = y.as_slice_mut().filter(|o| !o.is_empty()) {
            out.par_iter_mut()
                .zip(input.par_chunks(h * w))
                .for_each(|(d, plane)| {
                    *d = plane.iter().fold(F::zero(), |s, &v| s + v) / count;
                });
        }
        Ok(y)
    }

    /// Backward pass: `∂x` for an input of shape `input_dim` `(N, C, H, W)`, each plane filled
    /// with its output gradient divided by `H·W`.
    ///
    /// # Errors
    /// An input of zero height or width, or a `grad_out` other than `(N, C, 1, 1)`.
    pub fn backward<F: Real>(
        &self,
        input_dim: (usize, usize, usize, usize),
        grad_out: ArrayView4<F>,
    ) -> Result<Array4<F>> {
        let (n, c, h, w) = input_dim;
        let count = plane_size(input_dim)?;
        let go = standard_grad("global-avg-pool grad_out", grad_out, (n, c, 1, 1))?;
        let g = go.as_slice().expect("standard layout");
        let mut gx = Array4::<F>::zeros(input_dim);
        if let Some(dst) = gx.as_slice_mut().filter(|d| !d.is_empty()) {
            dst.par_chunks_mut(h * w)
                .zip(g.par_iter())
                .for_each(|(plane, &gi)| plane.fill(gi / count));
        }
        Ok(gx)
    }
}

/// `H·W` as `F`, if neither is zero.
fn plane_size<F: Real>((n, c, h, w): (usize, usize, usize, usize)) -> Result<F> {
    if h == 0 || w == 0 {
        return Err(Error::ZeroSize {
            what: "global-avg-pool input",
            shape: vec![n, c, h, w],
        });
    }
    let count = h.checked_mul(w).ok_or(Error::Overflow {
        what: "global-avg-pool plane size",
    })?;
    Ok(F::from_usize(count).expect("a float represents every usize, if inexactly"))
}

/// `grad_out` in standard layout, if it has shape `want`.
fn standard_grad<'a, F: Real>(
    what: &'static str,
    grad_out: ArrayView4<'a, F>,
    want: (usize, usize, usize, usize),
) -> Result<CowArray<'a, F, Ix4>> {
    if grad_out.dim() != want {
        let (n, c, oh, ow) = want;
        return Err(Error::ShapeMismatch {
            what,
            expected: vec![n, c, oh, ow],
            got: grad_out.shape().to_vec(),
        });
    }
    Ok(if grad_out.is_standard_layout() {
        CowArray::from(grad_out)
    } else {
        CowArray::from(grad_out.as_standard_layout().into_owned())
    })
}
