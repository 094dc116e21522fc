//! Batch normalisation over the channels of NCHW activations.

use ndarray::{Array1, Array4, ArrayView4, Axis};

use crate::error::{Error, Result};
use crate::scalar::Real;

/// `y = γ·(x − μ)/√(σ² + ε) + β` per channel (PyTorch's `nn.BatchNorm2d`): batch statistics
/// in training (the running averages updated with `momentum`, the variance unbiased), running
/// statistics in evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm2d<F> {
    /// Scale γ per channel.
    pub gamma: Array1<F>,
    /// Shift β per channel.
    pub beta: Array1<F>,
    /// Running mean.
    pub running_mean: Array1<F>,
    /// Running (unbiased) variance.
    pub running_var: Array1<F>,
    /// ε added to the variance.
    pub eps: F,
    /// Weight of the new batch in the running averages (PyTorch: 0.1).
    pub momentum: F,
}

/// What the training forward pass keeps for the backward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormCache<F> {
    /// Normalised input `x̂`.
    pub normalized: Array4<F>,
    /// `1/√(σ² + ε)` per channel (batch variance, biased).
    pub inv_std: Array1<F>,
}

/// Gradients of a [`BatchNorm2d`].
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormGrads<F> {
    /// ∂L/∂x.
    pub input: Array4<F>,
    /// ∂L/∂γ.
    pub gamma: Array1<F>,
    /// ∂L/∂β.
    pub beta: Array1<F>,
}

impl<F: Real> BatchNorm2d<F> {
    /// A layer for `channels` channels: γ = 1, β = 0, running mean 0 and variance 1,
    /// ε = 1e-5, momentum 0.1.
    pub fn new(channels: usize) -> Self {
        BatchNorm2d {
            gamma: Array1::ones(channels),
            beta: Array1::zeros(channels),
            running_mean: Array1::zeros(channels),
            running_var: Array1::ones(channels),
            eps: F::from_f64_lossy(1e-5),
            momentum: F::from_f64_lossy(0.1),
        }
    }

    fn check(&self, x: &ArrayView4<F>) -> Result<()> {
        if x.dim().1 != self.gamma.len() {
            return Err(Error::ShapeMismatch {
                what: "batch-norm channels",
                expected: vec![self.gamma.len()],
                got: vec![x.dim().1],
            });
        }
        Ok(())
    }

    fn apply(
        &self,
        x: &ArrayView4<F>,
        mean: &Array1<F>,
        inv_std: &Array1<F>,
    ) -> (Array4<F>, Array4<F>) {
        let mut normalized = x.to_owned();
        let mut y = x.to_owned();
        for c in 0..self.gamma.len() {
            let (m, s, g, b) = (mean[c], inv_std[c], self.gamma[c], self.beta[c]);
            normalized
                .index_axis_mut(Axis(1), c)
                .mapv_inplace(|v| (v - m) * s);
            y.index_axis_mut(Axis(1), c)
                .mapv_inplace(|v| (v - m) * s * g + b);
        }
        (y, normalized)
    }

    /// Training forward pass: normalises with the batch statistics, updates the running ones,
    /// and returns the cache for [`BatchNorm2d::backward`].
    ///
    /// # Errors
    /// A channel count other than the layer's, or a batch with a single value per channel.
    pub fn forward_train(&mut self, x: ArrayView4<F>) -> Result<(Array4<F>, BatchNormCache<F>)> {
        self.check(&x)?;
        let (n, _, h, w) = x.dim();
        let count = n * h * w;
        if count < 2 {
            return Err(Error::InvalidParameter {
                name: "values per channel in a training batch",
                value: count as f64,
                expected: ">= 2",
            });
        }
        let channels = self.gamma.len();
        let mut mean = Array1::<F>::zeros(channels);
        let mut var = Array1::<F>::zeros(channels);
        for c in 0..channels {
            let plane = x.index_axis(Axis(1), c);
            let m = plane.iter().map(|v| v.to_f64_exact()).sum::<f64>() / count as f64;
            let v = plane
                .iter()
                .map(|v| (v.to_f64_exact() - m).powi(2))
                .sum::<f64>()
                / count as f64;
            mean[c] = F::from_f64_lossy(m);
            var[c] = F::from_f64_lossy(v);
            let unbiased = F::from_f64_lossy(v * count as f64 / (count - 1) as f64);
            self.running_mean[c] =
                (F::one() - self.momentum) * self.running_mean[c] + self.momentum * mean[c];
            self.running_var[c] =
                (F::one() - self.momentum) * self.running_var[c] + self.momentum * unbiased;
        }
        let inv_std = var.mapv(|v| F::one() / (v + self.eps).sqrt());
        let (y, normalized) = self.apply(&x, &mean, &inv_std);
        Ok((
            y,
            BatchNormCache {
                normalized,
                inv_std,
            },
        ))
    }

    /// Evaluation forward pass with the running statistics.
    ///
    /// # Errors
    /// A channel count other than the layer's.
    pub fn forward_eval(&self, x: ArrayView4<F>) -> Result<Array4<F>> {
        self.check(&x)?;
        let inv_std = self.running_var.mapv(|v| F::one() / (v + self.eps).sqrt());
        Ok(self.apply(&x, &self.running_mean, &inv_std).0)
    }

    /// Backward pass of [`BatchNorm2d::forward_train`]:
    /// `∂x = γ·inv_std·(g − mean(g) − x̂·mean(g·x̂))` per channel.
    ///
    /// # Errors
    /// A `grad_out` whose shape differs from the cached activations'.
    pub fn backward(
        &self,
        cache: &BatchNormCache<F>,
        grad_out: ArrayView4<F>,
    ) -> Result<BatchNormGrads<F>> {
        if grad_out.dim() != cache.normalized.dim() {
            return Err(Error::ShapeMismatch {
                what: "batch-norm grad_out",
                expected: cache.normalized.shape().to_vec(),
                got: grad_out.shape().to_vec(),
            });
        }
        let channels = self.gamma.len();
        let (n, _, h, w) = grad_out.dim();
        let count = (n * h * w) as f64;
        let mut input = Array4::<F>::zeros(grad_out.dim());
        let mut gamma = Array1::<F>::zeros(channels);
        let mut beta = Array1::<F>::zeros(channels);
        for c in 0..channels {
            let g = grad_out.index_axis(Axis(1), c);
            let xh = cache.normalized.index_axis(Axis(1), c);
            let sum_g: f64 = g.iter().map(|v| v.to_f64_exact()).sum();
            let sum_gx: f64 = g
                .iter()
                .zip(xh.iter())
                .map(|(a, b)| a.to_f64_exact() * b.to_f64_exact())
                .sum();
            gamma[c] = F::from_f64_lossy(sum_gx);
            beta[c] = F::from_f64_lossy(sum_g);
            let k = self.gamma[c].to_f64_exact() * cache.inv_std[c].to_f64_exact();
            let (mg, mgx) = (sum_g / count, sum_gx / count);
            let mut dst = input.index_axis_mut(Axis(1), c);
            for ((d, &gv), &xv) in dst.iter_mut().zip(g.iter()).zip(xh.iter()) {
                *d = F::from_f64_lossy(k * (gv.to_f64_exact() - mg - xv.to_f64_exact() * mgx));
            }
        }
        Ok(BatchNormGrads { input, gamma, beta })
    }
}
