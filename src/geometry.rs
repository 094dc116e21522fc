//! Convolution geometry: stride, padding, dilation and the output-shape arithmetic.

use crate::error::{Error, Result};

/// Largest stride, padding (per side) or dilation a geometry accepts (65 536).
///
/// Far beyond any real network, and small enough that no size computed from a geometry can
/// overflow; the compressed-model file format applies the same limit.
pub const MAX_GEOMETRY_VALUE: usize = 1 << 16;

/// Zero padding added around the input, in pixels, per side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Padding {
    /// Rows added above the input.
    pub top: usize,
    /// Rows added below the input.
    pub bottom: usize,
    /// Columns added left of the input.
    pub left: usize,
    /// Columns added right of the input.
    pub right: usize,
}

/// Stride, padding and dilation of a 2-D convolution (cross-correlation, as in PyTorch).
///
/// `ConvGeometry::default()` is stride 1, padding 0, dilation 1. The builder methods never
/// fail; every value is checked when the geometry is used (layer construction or forward),
/// and a bad one is reported as an [`Error`]. The fields are read directly (`g.stride`); the
/// builder methods of the same names set them.
///
/// ```
/// use clustered_conv::ConvGeometry;
/// let g = ConvGeometry::default().stride(2, 2).padding(1, 1);
/// assert_eq!(g.stride, (2, 2));
/// assert_eq!((g.padding.top, g.padding.left), (1, 1));
/// // A 3×3 kernel over a 32×32 input with stride 2 and padding 1 gives 16×16.
/// assert_eq!(g.output_size((32, 32), (3, 3)).unwrap(), (16, 16));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ConvGeometry {
    /// Stride `(sh, sw)`.
    pub stride: (usize, usize),
    /// Zero padding per side.
    pub padding: Padding,
    /// Dilation `(dh, dw)`.
    pub dilation: (usize, usize),
}

impl Default for ConvGeometry {
    fn default() -> Self {
        Self {
            stride: (1, 1),
            padding: Padding::default(),
            dilation: (1, 1),
        }
    }
}

impl ConvGeometry {
    /// Sets the stride along height and width.
    #[must_use]
    pub fn stride(mut self, sh: usize, sw: usize) -> Self {
        self.stride = (sh, sw);
        self
    }

    /// Sets symmetric zero padding: `ph` rows above and below, `pw` columns left and right.
    #[must_use]
    pub fn padding(mut self, ph: usize, pw: usize) -> Self {
        self.padding = Padding {
            top: ph,
            bottom: ph,
            left: pw,
            right: pw,
        };
        self
    }

    /// Sets zero padding independently for each side (e.g. TensorFlow's `"same"` with an
    /// even kernel pads one pixel more at the bottom/right).
    #[must_use]
    pub fn padding_asymmetric(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// Sets the dilation along height and width.
    #[must_use]
    pub fn dilation(mut self, dh: usize, dw: usize) -> Self {
        self.dilation = (dh, dw);
        self
    }

    /// Checks `1 ≤ stride, dilation ≤ MAX_GEOMETRY_VALUE` and `padding ≤ MAX_GEOMETRY_VALUE`.
    ///
    /// ```
    /// use clustered_conv::{ConvGeometry, Error, MAX_GEOMETRY_VALUE};
    /// assert!(ConvGeometry::default().stride(2, 2).validate().is_ok());
    /// let huge = ConvGeometry::default().dilation(1, usize::MAX / 2);
    /// assert!(matches!(huge.validate(), Err(Error::GeometryTooLarge { .. })));
    /// # let _ = MAX_GEOMETRY_VALUE;
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidGeometry`] for a zero stride or dilation, [`Error::GeometryTooLarge`]
    /// for a value above [`MAX_GEOMETRY_VALUE`]; both name the parameter, axis and value.
    pub fn validate(&self) -> Result<()> {
        let p = self.padding;
        let checks = [
            ("stride", "height", self.stride.0, 1),
            ("stride", "width", self.stride.1, 1),
            ("dilation", "height", self.dilation.0, 1),
            ("dilation", "width", self.dilation.1, 1),
            ("padding", "top", p.top, 0),
            ("padding", "bottom", p.bottom, 0),
            ("padding", "left", p.left, 0),
            ("padding", "right", p.right, 0),
        ];
        for (what, axis, value, min) in checks {
            if value < min {
                return Err(Error::InvalidGeometry { what, axis, value });
            }
            if value > MAX_GEOMETRY_VALUE {
                return Err(Error::GeometryTooLarge {
                    what,
                    axis,
                    value,
                    max: MAX_GEOMETRY_VALUE,
                });
            }
        }
        Ok(())
    }

    /// Output spatial size for an input of `(h, w)` and a kernel of `(kh, kw)`:
    /// `⌊(h + pad − dilation·(k − 1) − 1) / stride⌋ + 1` per axis.
    ///
    /// # Errors
    /// Invalid stride/dilation, a zero input or kernel size, a dilated kernel larger than the
    /// padded input, or arithmetic overflow.
    pub fn output_size(
        &self,
        input: (usize, usize),
        kernel: (usize, usize),
    ) -> Result<(usize, usize)> {
        self.validate()?;
        if input.0 == 0 || input.1 == 0 {
            return Err(Error::ZeroSize {
                what: "input spatial size",
                shape: vec![input.0, input.1],
            });
        }
        if kernel.0 == 0 || kernel.1 == 0 {
            return Err(Error::ZeroSize {
                what: "kernel",
                shape: vec![kernel.0, kernel.1],
            });
        }
        let p = self.padding;
        let oh = axis_output(
            "height",
            input.0,
            p.top,
            p.bottom,
            kernel.0,
            self.stride.0,
            self.dilation.0,
        )?;
        let ow = axis_output(
            "width",
            input.1,
            p.left,
            p.right,
            kernel.1,
            self.stride.1,
            self.dilation.1,
        )?;
        Ok((oh, ow))
    }

    /// Resolves every size of one convolution call and checks that they agree.
    pub(crate) fn resolve(&self, input: [usize; 4], weight: [usize; 4]) -> Result<ConvShape> {
        let [n, c, h, w] = input;
        let [cout, cin, kh, kw] = weight;
        if input.contains(&0) {
            return Err(Error::ZeroSize {
                what: "input",
                shape: input.to_vec(),
            });
        }
        if c != cin {
            return Err(Error::ShapeMismatch {
                what: "input channels (dim 1 of the NCHW input) vs the layer's in_channels",
                expected: vec![cin],
                got: vec![c],
            });
        }
        let (oh, ow) = self.output_size((h, w), (kh, kw))?;
        Ok(ConvShape {
            batch: n,
            cin,
            cout,
            h,
            w,
            kh,
            kw,
            oh,
            ow,
            stride: self.stride,
            pad_top: self.padding.top,
            pad_left: self.padding.left,
            dilation: self.dilation,
        })
    }
}

fn axis_output(
    axis: &'static str,
    input: usize,
    pad_a: usize,
    pad_b: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> Result<usize> {
    let overflow = || Error::Overflow {
        what: "the padded input or the dilated kernel extent",
    };
    let padded = input
        .checked_add(pad_a)
        .and_then(|v| v.checked_add(pad_b))
        .ok_or_else(overflow)?;
    let extent = dilation
        .checked_mul(kernel - 1)
        .and_then(|v| v.checked_add(1))
        .ok_or_else(overflow)?;
    if extent > padded {
        return Err(Error::KernelTooLarge {
            axis,
            kernel_extent: extent,
            padded_input: padded,
        });
    }
    Ok((padded - extent) / stride + 1)
}

/// Every size of one convolution call, resolved and validated (crate-internal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvShape {
    pub batch: usize,
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub stride: (usize, usize),
    pub pad_top: usize,
    pub pad_left: usize,
    pub dilation: (usize, usize),
}

impl ConvShape {
    /// The call of the adjoint (transposed) convolution: `grad_out`'s sizes in, the input's
    /// out, channels swapped; kernel, stride, padding and dilation as they are
    /// ([`ConvShape::adjoint`] sets the padding of the stride-1 input gradient).
    pub fn transposed(&self) -> ConvShape {
        ConvShape {
            cin: self.cout,
            cout: self.cin,
            h: self.oh,
            w: self.ow,
            oh: self.h,
            ow: self.w,
            ..*self
        }
    }

    /// The input gradient of a stride-1, dilation-1 call as a correlation of `grad_out` with
    /// the rotated, transposed kernel: the [`ConvShape::transposed`] call with padding
    /// `k − 1 − p`. `None` for other strides or dilations, and for padding of at least the
    /// kernel size (the adjoint's padding would be negative).
    pub fn adjoint(&self) -> Option<ConvShape> {
        let fits = self.stride == (1, 1)
            && self.dilation == (1, 1)
            && self.pad_top < self.kh
            && self.pad_left < self.kw;
        fits.then(|| ConvShape {
            pad_top: self.kh - 1 - self.pad_top,
            pad_left: self.kw - 1 - self.pad_left,
            ..self.transposed()
        })
    }

    /// Output positions per image.
    pub fn out_positions(&self) -> usize {
        self.oh * self.ow
    }

    /// Rows of the im2col matrix: `cin·kh·kw`.
    pub fn patch_len(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// True when im2col would be the identity (1×1 kernel, stride 1, no padding).
    pub fn is_pointwise_identity(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == (1, 1)
            && self.pad_top == 0
            && self.pad_left == 0
            && self.oh == self.h
            && self.ow == self.w
    }

    /// Checks that an output gradient has this call's output shape `(N, Cout, OH, OW)`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] with both shapes.
    pub fn check_grad_out(&self, grad_out: &[usize]) -> Result<()> {
        let expected = [self.batch, self.cout, self.oh, self.ow];
        if grad_out != expected {
            return Err(Error::ShapeMismatch {
                what: "grad_out vs the forward output shape",
                expected: expected.to_vec(),
                got: grad_out.to_vec(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_size_matches_pytorch_formula() {
        // PyTorch: floor((H + 2p - d(k-1) - 1)/s) + 1
        let g = ConvGeometry::default()
            .stride(2, 3)
            .padding(1, 2)
            .dilation(2, 1);
        // H: (10 + 2 - 2*2 - 1)/2 + 1 = 7/2+1 = 4 ; W: (11 + 4 - 4 - 1)/3 + 1 = 10/3+1 = 4
        assert_eq!(g.output_size((10, 11), (3, 5)).unwrap(), (4, 4));
    }

    #[test]
    fn stride_zero_is_rejected() {
        let err = ConvGeometry::default().stride(1, 0).validate().unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidGeometry {
                    what: "stride",
                    axis: "width",
                    value: 0
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn values_above_the_limit_are_rejected_and_the_limit_is_accepted() {
        let at = MAX_GEOMETRY_VALUE;
        let ok = ConvGeometry::default()
            .stride(at, at)
            .dilation(at, at)
            .padding(at, at);
        assert!(ok.validate().is_ok());
        let err = ConvGeometry::default()
            .padding_asymmetric(Padding {
                right: at + 1,
                ..Padding::default()
            })
            .validate()
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::GeometryTooLarge {
                    what: "padding",
                    axis: "right",
                    value,
                    max,
                } if value == at + 1 && max == at
            ),
            "{err:?}"
        );
        // Values that used to overflow the tap arithmetic (usize::MAX / 2 as a dilation).
        let err = ConvGeometry::default()
            .dilation(usize::MAX / 2, 1)
            .output_size((8, 8), (3, 3))
            .unwrap_err();
        assert!(matches!(
            err,
            Error::GeometryTooLarge {
                what: "dilation",
                axis: "height",
                ..
            }
        ));
    }

    #[test]
    fn dilation_zero_is_rejected() {
        let err = ConvGeometry::default()
            .dilation(0, 1)
            .output_size((4, 4), (3, 3));
        assert!(matches!(
            err,
            Err(Error::InvalidGeometry {
                what: "dilation",
                ..
            })
        ));
    }

    #[test]
    fn kernel_larger_than_padded_input_is_rejected() {
        let err = ConvGeometry::default()
            .padding(1, 0)
            .output_size((2, 5), (5, 3))
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::KernelTooLarge {
                    axis: "height",
                    kernel_extent: 5,
                    padded_input: 4
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn zero_sizes_are_rejected() {
        let g = ConvGeometry::default();
        assert!(matches!(
            g.output_size((0, 4), (1, 1)),
            Err(Error::ZeroSize { .. })
        ));
        assert!(matches!(
            g.output_size((4, 4), (0, 1)),
            Err(Error::ZeroSize { .. })
        ));
    }

    #[test]
    fn huge_dilation_overflows_cleanly() {
        // A dilation this large is refused by the limit; a huge kernel extent still overflows
        // cleanly.
        let g = ConvGeometry::default().dilation(usize::MAX, 1);
        assert!(matches!(
            g.output_size((4, 4), (3, 1)),
            Err(Error::GeometryTooLarge { .. })
        ));
        let g = ConvGeometry::default().dilation(2, 1);
        assert!(matches!(
            g.output_size((4, 4), (usize::MAX, 1)),
            Err(Error::Overflow { .. })
        ));
    }

    #[test]
    fn asymmetric_padding() {
        let g = ConvGeometry::default().padding_asymmetric(Padding {
            top: 0,
            bottom: 1,
            left: 1,
            right: 0,
        });
        assert_eq!(g.output_size((4, 4), (2, 2)).unwrap(), (4, 4));
    }

    #[test]
    fn channel_mismatch_is_named() {
        let err = ConvGeometry::default()
            .resolve([1, 3, 5, 5], [8, 4, 3, 3])
            .unwrap_err();
        assert!(
            matches!(err, Error::ShapeMismatch { expected, got, .. } if expected == vec![4] && got == vec![3])
        );
    }
}
