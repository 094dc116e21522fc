//! Max pooling.

use ndarray::{Array4, ArrayView4, Axis};

use crate::error::{Error, Result};
use crate::scalar::Real;

/// 2-D max pooling with a square window, no padding (PyTorch's `nn.MaxPool2d(k, s)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
}

impl MaxPool2d {
    fn output(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        if self.kernel == 0 || self.stride == 0 {
            return Err(Error::InvalidParameter {
                name: "MaxPool2d kernel/stride",
                value: 0.0,
                expected: ">= 1",
            });
        }
        if h < self.kernel || w < self.kernel {
            return Err(Error::KernelTooLarge {
                axis: "pooling window",
                kernel_extent: self.kernel,
                padded_input: h.min(w),
            });
        }
        Ok((
            (h - self.kernel) / self.stride + 1,
            (w - self.kernel) / self.stride + 1,
        ))
    }

    /// Position (within the input plane) of the maximum of output `(oy, ox)`; ties go to the
    /// first in row-major order.
    fn argmax<F: Real>(
        &self,
        plane: &ndarray::ArrayView2<F>,
        oy: usize,
        ox: usize,
    ) -> (usize, usize) {
        let mut best = (oy * self.stride, ox * self.stride);
        for r in 0..self.kernel {
            for c in 0..self.kernel {
                let p = (oy * self.stride + r, ox * self.stride + c);
                if plane[p] > plane[best] {
                    best = p;
                }
            }
        }
        best
    }

    /// Forward pass, `(N, C, H, W)` → `(N, C, OH, OW)`.
    ///
    /// # Errors
    /// A zero window or stride, or a window larger than the input.
    pub fn forward<F: Real>(&self, x: ArrayView4<F>) -> Result<Array4<F>> {
        let (n, c, h, w) = x.dim();
        let (oh, ow) = self.output(h, w)?;
        Ok(Array4::from_shape_fn((n, c, oh, ow), |(b, ch, oy, ox)| {
            let plane = x.index_axis(Axis(0), b).index_axis_move(Axis(0), ch);
            plane[self.argmax(&plane, oy, ox)]
        }))
    }

    /// Backward pass: each output gradient goes to the position of its window's maximum.
    ///
    /// # Errors
    /// As [`MaxPool2d::forward`], or a `grad_out` of the wrong shape.
    pub fn backward<F: Real>(
        &self,
        x: ArrayView4<F>,
        grad_out: ArrayView4<F>,
    ) -> Result<Array4<F>> {
        let (n, c, h, w) = x.dim();
        let (oh, ow) = self.output(h, w)?;
        if grad_out.dim() != (n, c, oh, ow) {
            return Err(Error::ShapeMismatch {
                what: "max-pool grad_out",
                expected: vec![n, c, oh, ow],
                got: grad_out.shape().to_vec(),
            });
        }
        let mut gx = Array4::<F>::zeros((n, c, h, w));
        for b in 0..n {
            for ch in 0..c {
                let plane = x.index_axis(Axis(0), b).index_axis_move(Axis(0), ch);
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (r, col) = self.argmax(&plane, oy, ox);
                        gx[[b, ch, r, col]] += grad_out[[b, ch, oy, ox]];
                    }
                }
            }
        }
        Ok(gx)
    }
}
