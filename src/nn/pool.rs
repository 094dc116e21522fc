//! Max pooling.

use ndarray::{Array4, ArrayView4};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::linalg::Real;

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

    /// Flat position (within a row-major input plane of width `w`) of the maximum of output
    /// `(oy, ox)`; ties go to the first in row-major order.
    #[inline]
    fn argmax<F: Real>(&self, plane: &[F], w: usize, oy: usize, ox: usize) -> usize {
        let mut best = oy * self.stride * w + ox * self.stride;
        for r in 0..self.kernel {
            let row = (oy * self.stride + r) * w + ox * self.stride;
            for p in row..row + self.kernel {
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
        let x = x.as_standard_layout();
        let input = x.as_slice().expect("standard layout");
        let mut out = Array4::<F>::zeros((n, c, oh, ow));
        let planes = out.as_slice_mut().expect("fresh array");
        planes
            .par_chunks_mut(oh * ow)
            .zip(input.par_chunks(h * w))
            .for_each(|(dst, plane)| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        dst[oy * ow + ox] = plane[self.argmax(plane, w, oy, ox)];
                    }
                }
            });
        Ok(out)
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
        let x = x.as_standard_layout();
        let go = grad_out.as_standard_layout();
        let mut gx = Array4::<F>::zeros((n, c, h, w));
        let grads = gx.as_slice_mut().expect("fresh array");
        grads
            .par_chunks_mut(h * w)
            .zip(x.as_slice().expect("standard layout").par_chunks(h * w))
            .zip(go.as_slice().expect("standard layout").par_chunks(oh * ow))
            .for_each(|((dst, plane), g)| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        dst[self.argmax(plane, w, oy, ox)] += g[oy * ow + ox];
                    }
                }
            });
        Ok(gx)
    }
}
