//! A fully connected layer.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use crate::error::{Error, Result};
use crate::linalg::Real;

/// `y = x·Wᵀ + b` with `W` `(out, in)`, like PyTorch's `nn.Linear`.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear<F> {
    /// `(out, in)` weight.
    pub weight: Array2<F>,
    /// `(out)` bias.
    pub bias: Array1<F>,
}

/// Gradients of a [`Linear`] layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearGrads<F> {
    /// ∂L/∂x `(N, in)`.
    pub input: Array2<F>,
    /// ∂L/∂W `(out, in)`.
    pub weight: Array2<F>,
    /// ∂L/∂b `(out)`.
    pub bias: Array1<F>,
}

impl<F: Real> Linear<F> {
    fn check(&self, x: &ArrayView2<F>) -> Result<()> {
        if x.ncols() != self.weight.ncols() || self.bias.len() != self.weight.nrows() {
            return Err(Error::ShapeMismatch {
                what: "linear input features vs weight columns (and bias vs rows)",
                expected: vec![self.weight.ncols(), self.weight.nrows()],
                got: vec![x.ncols(), self.bias.len()],
            });
        }
        Ok(())
    }

    /// Forward pass, `(N, in)` → `(N, out)`.
    ///
    /// # Errors
    /// Mismatched feature counts.
    pub fn forward(&self, x: ArrayView2<F>) -> Result<Array2<F>> {
        self.check(&x)?;
        Ok(x.dot(&self.weight.t()) + &self.bias)
    }

    /// Backward pass from the forward input and ∂L/∂y.
    ///
    /// # Errors
    /// Mismatched shapes.
    pub fn backward(&self, x: ArrayView2<F>, grad_out: ArrayView2<F>) -> Result<LinearGrads<F>> {
        self.check(&x)?;
        if grad_out.dim() != (x.nrows(), self.weight.nrows()) {
            return Err(Error::ShapeMismatch {
                what: "linear grad_out",
                expected: vec![x.nrows(), self.weight.nrows()],
                got: grad_out.shape().to_vec(),
            });
        }
        Ok(LinearGrads {
            input: grad_out.dot(&self.weight),
            weight: grad_out.t().dot(&x),
            bias: grad_out.sum_axis(Axis(0)),
        })
    }
}
