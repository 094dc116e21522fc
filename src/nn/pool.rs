//! Max pooling, and the pooling geometry shared with [`super::AvgPool2d`].

use ndarray::{Array4, ArrayView4};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::linalg::simd::vectorised;
use crate::linalg::{par_zeros, Real};

/// Largest window side whose offsets fit the compact argmax: `kernel²` offsets must fit in
/// a `u16` (one byte per output up to 16×16, two bytes above).
pub const MAX_POOL_TRAIN_KERNEL: usize = 256;

/// 2-D max pooling with a square window (PyTorch's `nn.MaxPool2d(k, s, padding=p)`, no
/// dilation, `ceil_mode=False`).
///
/// Padding is implicit: padded positions never win a window (as if they held −∞), and
/// PyTorch's limit `padding ≤ kernel / 2` guarantees that every window holds at least one
/// input value. The output is `⌊(H + 2p − k) / s⌋ + 1` by `⌊(W + 2p − k) / s⌋ + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Implicit padding on each of the four sides, at most `kernel / 2`.
    pub padding: usize,
}

/// Output height and width of a square pooling window `kernel` moved by `stride` over an
/// `h × w` input padded by `padding` on every side (`ceil_mode=False`), with PyTorch's checks.
///
/// # Errors
/// A zero `kernel` or `stride` ([`Error::InvalidParameter`]), `padding > kernel / 2`
/// ([`Error::GeometryTooLarge`] with `max = kernel / 2`), a window larger than the padded
/// input ([`Error::KernelTooLarge`]), or, with padding, an input of zero height or width (whose
/// windows would hold only padding: [`Error::ZeroSize`]).
pub(super) fn pooled_size(
    what: &'static str,
    (kernel, stride, padding): (usize, usize, usize),
    (h, w): (usize, usize),
) -> Result<(usize, usize)> {
    if kernel == 0 || stride == 0 {
        return Err(Error::InvalidParameter {
            name: "pooling kernel/stride",
            value: 0.0,
            expected: ">= 1",
        });
    }
    if padding > kernel / 2 {
        return Err(Error::GeometryTooLarge {
            what: "pooling padding",
            axis: "every side (PyTorch's limit is kernel / 2)",
            value: padding,
            max: kernel / 2,
        });
    }
    let mut out = [0; 2];
    for (o, (len, axis)) in out.iter_mut().zip([(h, "height"), (w, "width")]) {
        // padding ≤ kernel / 2 ≤ usize::MAX / 2, but `len` is arbitrary.
        let padded = (2 * padding)
            .checked_add(len)
            .ok_or(Error::Overflow { what })?;
        if padded < kernel {
            return Err(Error::KernelTooLarge {
                axis,
                kernel_extent: kernel,
                padded_input: padded,
            });
        }
        *o = (padded - kernel) / stride + 1;
    }
    if h == 0 || w == 0 {
        return Err(Error::ZeroSize {
            what,
            shape: vec![h, w],
        }); // `what` names the (height, width) pair
    }
    Ok((out[0], out[1]))
}

/// Where each window's maximum is, recorded by [`MaxPool2d::forward_train`] for
/// [`MaxPool2d::backward_argmax`]: per output, the offset `row · kernel + column` of the
/// maximum within its window (the full window, padding included; ties to the first in
/// row-major order), as one byte for windows
/// up to 16×16 and two bytes up to 256×256.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolArgmax {
    offsets: Offsets,
    /// `(N, C, H, W)` of the pooled input.
    input: (usize, usize, usize, usize),
    pool: MaxPool2d,
}

/// The offsets, in the narrowest type that holds `kernel²` values.
#[derive(Debug, Clone, PartialEq)]
enum Offsets {
    Narrow(Array4<u8>),
    Wide(Array4<u16>),
}

impl PoolArgmax {
    /// `(N, C, H, W)` of the input this was recorded on.
    pub fn input_dim(&self) -> (usize, usize, usize, usize) {
        self.input
    }

    /// Bytes held by the offsets (one or two per output).
    pub fn memory(&self) -> usize {
        match &self.offsets {
            Offsets::Narrow(a) => a.len(),
            Offsets::Wide(a) => 2 * a.len(),
        }
    }
}

/// The largest of `values` and its index, the first one on ties (as
/// [`MaxPool2d::window_max`] has it), as selects rather than branches.
#[inline(always)]
fn first_max<F: Real>(values: [F; 4]) -> (usize, F) {
    let (mut best, mut value) = (0, values[0]);
    for (q, &v) in values.iter().enumerate().skip(1) {
        let better = v > value;
        best = if better { q } else { best };
        value = if better { v } else { value };
    }
    (best, value)
}

impl MaxPool2d {
    /// Output height and width for an `h × w` input: `⌊(h + 2p − k) / s⌋ + 1` and
    /// `⌊(w + 2p − k) / s⌋ + 1`.
    ///
    /// # Errors
    /// A zero window or stride, `padding > kernel / 2` ([`Error::GeometryTooLarge`]), a window
    /// larger than the padded input, or a padded input of zero height or width.
    pub fn output_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        pooled_size(
            "max-pool input (height, width)",
            (self.kernel, self.stride, self.padding),
            (h, w),
        )
    }

    /// The maximum of output `(oy, ox)` of a row-major input plane of width `w`, and its
    /// offset `row · kernel + column` in the window; ties go to the first in row-major order.
    /// Unpadded geometry only: the fast path.
    #[inline]
    fn window_max<F: Real>(&self, plane: &[F], w: usize, oy: usize, ox: usize) -> (usize, F) {
        let top = oy * self.stride * w + ox * self.stride;
        let (mut best, mut value) = (0, plane[top]);
        for r in 0..self.kernel {
            let row = &plane[top + r * w..][..self.kernel];
            for (q, &v) in row.iter().enumerate() {
                if v > value {
                    best = r * self.kernel + q;
                    value = v;
                }
            }
        }
        (best, value)
    }

    /// [`MaxPool2d::window_max`] for any padding: the window is clipped to the `h × w` plane
    /// (padded positions never win) and the offset is still `row · kernel + column` in the
    /// full, padded window. The clipped window is never empty (see [`pooled_size`]).
    #[inline]
    fn window_max_padded<F: Real>(
        &self,
        plane: &[F],
        (h, w): (usize, usize),
        oy: usize,
        ox: usize,
    ) -> (usize, F) {
        let (k, p) = (self.kernel, self.padding);
        let (y, x) = (oy * self.stride, ox * self.stride); // padded coordinates
        let rows = p.saturating_sub(y)..k.min(h + p - y);
        let cols = p.saturating_sub(x)..k.min(w + p - x);
        let (mut best, mut value) = (
            rows.start * k + cols.start,
            plane[(y + rows.start - p) * w + x + cols.start - p],
        );
        let width = cols.end - cols.start;
        for r in rows {
            let row = &plane[(y + r - p) * w + x + cols.start - p..][..width];
            for (j, &v) in row.iter().enumerate() {
                if v > value {
                    best = r * k + cols.start + j;
                    value = v;
                }
            }
        }
        (best, value)
    }

    /// The maximum of every window of one plane, with its offset in the window, to `emit`
    /// in output order; the unpadded fast path or the clipped one.
    #[inline]
    fn plane_max<F: Real>(
        &self,
        plane: &[F],
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
        mut emit: impl FnMut(usize, usize, F),
    ) {
        let mut i = 0;
        if (self.kernel, self.stride, self.padding) == (2, 2, 0) {
            // The common 2×2 / 2 pool: two rows at a time, the four candidates compared
            // without branches (a maximum's position is unpredictable), vectorised.
            vectorised(
                #[inline(always)]
                || {
                    for oy in 0..oh {
                        let top = &plane[2 * oy * w..][..2 * ow];
                        let bottom = &plane[(2 * oy + 1) * w..][..2 * ow];
                        for (t, b) in top.chunks_exact(2).zip(bottom.chunks_exact(2)) {
                            let (best, v) = first_max([t[0], t[1], b[0], b[1]]);
                            emit(i, best, v);
                            i += 1;
                        }
                    }
                },
            );
        } else if self.padding == 0 {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (best, v) = self.window_max(plane, w, oy, ox);
                    emit(i, best, v);
                    i += 1;
                }
            }
        } else {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (best, v) = self.window_max_padded(plane, (h, w), oy, ox);
                    emit(i, best, v);
                    i += 1;
                }
            }
        }
    }

    /// Forward pass, `(N, C, H, W)` → `(N, C, OH, OW)`.
    ///
    /// # Errors
    /// As [`MaxPool2d::output_size`].
    pub fn forward<F: Real>(&self, x: ArrayView4<F>) -> Result<Array4<F>> {
        let (n, c, h, w) = x.dim();
        let (oh, ow) = self.output_size(h, w)?;
        let x = x.as_standard_layout();
        let input = x.as_slice().expect("standard layout");
        let mut y: Array4<F> = par_zeros((n, c, oh, ow));
        if let Some(out) = y.as_slice_mut().filter(|o| !o.is_empty()) {
            out.par_chunks_mut(oh * ow)
                .zip(input.par_chunks(h * w))
                .for_each(|(dst, plane)| {
                    self.plane_max(plane, (h, w), (oh, ow), |i, _, v| dst[i] = v);
                });
        }
        Ok(y)
    }

    /// Training forward pass: the output of [`MaxPool2d::forward`] and where each maximum
    /// is, for [`MaxPool2d::backward_argmax`] (the input itself is not needed any more).
    ///
    /// # Errors
    /// As [`MaxPool2d::forward`], and a window wider than [`MAX_POOL_TRAIN_KERNEL`].
    pub fn forward_train<F: Real>(&self, x: ArrayView4<F>) -> Result<(Array4<F>, PoolArgmax)> {
        let (n, c, h, w) = x.dim();
        let (oh, ow) = self.output_size(h, w)?;
        if self.kernel > MAX_POOL_TRAIN_KERNEL {
            return Err(Error::InvalidParameter {
                name: "MaxPool2d kernel in training",
                value: self.kernel as f64,
                expected: "<= 256 (MAX_POOL_TRAIN_KERNEL)",
            });
        }
        let x = x.as_standard_layout();
        let input = x.as_slice().expect("standard layout");
        let mut y: Array4<F> = par_zeros((n, c, oh, ow));
        let offsets = if self.kernel * self.kernel <= 1 << 8 {
            let mut at: Array4<u8> = par_zeros((n, c, oh, ow));
            self.record(input, (h, w), &mut y, &mut at, |o| o as u8); // o < kernel² ≤ 256
            Offsets::Narrow(at)
        } else {
            let mut at: Array4<u16> = par_zeros((n, c, oh, ow));
            self.record(input, (h, w), &mut y, &mut at, |o| o as u16); // o < kernel² ≤ 65,536
            Offsets::Wide(at)
        };
        let argmax = PoolArgmax {
            offsets,
            input: (n, c, h, w),
            pool: *self,
        };
        Ok((y, argmax))
    }

    /// Every window's maximum into `y` and its offset in the window (narrowed by `narrow`)
    /// into `at`; planes in parallel.
    fn record<F: Real, I: Send>(
        &self,
        input: &[F],
        (h, w): (usize, usize),
        y: &mut Array4<F>,
        at: &mut Array4<I>,
        narrow: impl Fn(usize) -> I + Sync,
    ) {
        let (_, _, oh, ow) = y.dim();
        let (Some(out), Some(at)) = (y.as_slice_mut(), at.as_slice_mut()) else {
            return; // both are fresh arrays in standard layout
        };
        if out.is_empty() {
            return;
        }
        out.par_chunks_mut(oh * ow)
            .zip(at.par_chunks_mut(oh * ow))
            .zip(input.par_chunks(h * w))
            .for_each(|((dst, offsets), plane)| {
                self.plane_max(plane, (h, w), (oh, ow), |i, best, v| {
                    dst[i] = v;
                    offsets[i] = narrow(best);
                });
            });
    }

    /// Backward pass: each output gradient goes to the position of its window's maximum
    /// (found again in `x`; [`MaxPool2d::backward_argmax`] uses the recorded one).
    ///
    /// # Errors
    /// As [`MaxPool2d::forward`], or a `grad_out` of the wrong shape.
    pub fn backward<F: Real>(
        &self,
        x: ArrayView4<F>,
        grad_out: ArrayView4<F>,
    ) -> Result<Array4<F>> {
        let (n, c, h, w) = x.dim();
        let (oh, ow) = self.output_size(h, w)?;
        let go = self.check_grad(grad_out, (n, c, oh, ow))?;
        let x = x.as_standard_layout();
        let input = x.as_slice().expect("standard layout");
        let k = self.kernel;
        Ok(self.scatter(&go, (n, c, h, w), (oh, ow), |p, oy, ox| {
            let plane = &input[p * h * w..][..h * w];
            let best = if self.padding == 0 {
                self.window_max(plane, w, oy, ox).0
            } else {
                self.window_max_padded(plane, (h, w), oy, ox).0
            };
            (best / k) * w + best % k
        }))
    }

    /// Backward pass from the recorded argmax: each output gradient goes to the position of
    /// its window's maximum (summed where overlapping windows share one).
    ///
    /// # Errors
    /// An argmax recorded by another pooling geometry, or a `grad_out` of the wrong shape.
    pub fn backward_argmax<F: Real>(
        &self,
        argmax: &PoolArgmax,
        grad_out: ArrayView4<F>,
    ) -> Result<Array4<F>> {
        if argmax.pool != *self {
            return Err(Error::InvalidParameter {
                name: "max-pool argmax recorded with kernel",
                value: argmax.pool.kernel as f64,
                expected: "the kernel, stride and padding of the layer that runs the backward pass",
            });
        }
        let (n, c, h, w) = argmax.input;
        let (oh, ow) = self.output_size(h, w)?;
        let go = self.check_grad(grad_out, (n, c, oh, ow))?;
        // Offset in the window → offset in the plane from the window's top-left corner.
        let k = self.kernel;
        let delta: Vec<usize> = (0..k * k).map(|o| (o / k) * w + o % k).collect();
        let per_plane = oh * ow;
        Ok(match &argmax.offsets {
            Offsets::Narrow(a) => {
                let a = a.as_slice().expect("a fresh array");
                self.scatter(&go, argmax.input, (oh, ow), |p, oy, ox| {
                    delta[usize::from(a[p * per_plane + oy * ow + ox])]
                })
            }
            Offsets::Wide(a) => {
                let a = a.as_slice().expect("a fresh array");
                self.scatter(&go, argmax.input, (oh, ow), |p, oy, ox| {
                    delta[usize::from(a[p * per_plane + oy * ow + ox])]
                })
            }
        })
    }

    /// `grad_out` in standard layout, if it has the output's shape.
    fn check_grad<'a, F: Real>(
        &self,
        grad_out: ArrayView4<'a, F>,
        (n, c, oh, ow): (usize, usize, usize, usize),
    ) -> Result<ndarray::CowArray<'a, F, ndarray::Ix4>> {
        if grad_out.dim() != (n, c, oh, ow) {
            return Err(Error::ShapeMismatch {
                what: "max-pool grad_out",
                expected: vec![n, c, oh, ow],
                got: grad_out.shape().to_vec(),
            });
        }
        Ok(if grad_out.is_standard_layout() {
            ndarray::CowArray::from(grad_out)
        } else {
            ndarray::CowArray::from(grad_out.as_standard_layout().into_owned())
        })
    }

    /// `∂x`: zeros, plus each output gradient added at its window's maximum, which `at`
    /// gives for (plane, oy, ox) relative to the top-left corner of the padded window (as
    /// `row · w + column`); planes in parallel, each in output order (deterministic).
    fn scatter<F: Real>(
        &self,
        grad_out: &ndarray::CowArray<'_, F, ndarray::Ix4>,
        (n, c, h, w): (usize, usize, usize, usize),
        (oh, ow): (usize, usize),
        at: impl Fn(usize, usize, usize) -> usize + Sync,
    ) -> Array4<F> {
        let mut gx: Array4<F> = par_zeros((n, c, h, w));
        let g = grad_out.as_slice().expect("standard layout");
        // The padded window's corner is `padding` rows and columns before the unpadded one;
        // the maximum is an input position, so `corner + at − shift` does not underflow.
        let shift = self.padding * (w + 1);
        if let Some(dst) = gx.as_slice_mut().filter(|d| !d.is_empty()) {
            dst.par_chunks_mut(h * w)
                .zip(g.par_chunks(oh * ow))
                .enumerate()
                .for_each(|(p, (plane, gp))| {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let corner = oy * self.stride * w + ox * self.stride;
                            plane[corner + at(p, oy, ox) - shift] += gp[oy * ow + ox];
                        }
                    }
                });
        }
        gx
    }
}
