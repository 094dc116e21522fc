//! Batch normalisation over the channels of NCHW activations.

use ndarray::{Array1, Array4, ArrayView4};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::linalg::Real;

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
        let x = x.as_standard_layout();
        let (_, channels, h, w) = x.dim();
        let hw = (h * w).max(1);
        let xs = x.as_slice().expect("standard layout");
        let mut normalized = Array4::<F>::zeros(x.dim());
        let mut y = Array4::<F>::zeros(x.dim());
        // One task per (image, channel) plane.
        normalized
            .as_slice_mut()
            .expect("fresh array")
            .par_chunks_mut(hw)
            .zip(y.as_slice_mut().expect("fresh array").par_chunks_mut(hw))
            .zip(xs.par_chunks(hw))
            .enumerate()
            .for_each(|(plane, ((xn, yp), xp))| {
                let c = plane % channels;
                let (m, s, g, b) = (mean[c], inv_std[c], self.gamma[c], self.beta[c]);
                for ((d, o), &v) in xn.iter_mut().zip(yp.iter_mut()).zip(xp) {
                    *d = (v - m) * s;
                    *o = *d * g + b;
                }
            });
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
        let x = x.as_standard_layout();
        let hw = h * w;
        let xs = x.as_slice().expect("standard layout");
        let plane = |b: usize, c: usize| &xs[(b * channels + c) * hw..][..hw];
        // Channels in parallel; each sums its planes in image order (deterministic).
        let stats: Vec<(f64, f64)> = (0..channels)
            .into_par_iter()
            .map(|c| {
                let m = (0..n)
                    .map(|b| plane(b, c).iter().map(|v| v.to_f64_exact()).sum::<f64>())
                    .sum::<f64>()
                    / count as f64;
                let v = (0..n)
                    .map(|b| {
                        plane(b, c)
                            .iter()
                            .map(|v| (v.to_f64_exact() - m).powi(2))
                            .sum::<f64>()
                    })
                    .sum::<f64>()
                    / count as f64;
                (m, v)
            })
            .collect();
        let mut mean = Array1::<F>::zeros(channels);
        let mut var = Array1::<F>::zeros(channels);
        for (c, &(m, v)) in stats.iter().enumerate() {
            mean[c] = F::from_f64_lossy(m);
            var[c] = F::from_f64_lossy(v);
            let unbiased = F::from_f64_lossy(v * count as f64 / (count - 1) as f64);
            self.running_mean[c] =
                (F::one() - self.momentum) * self.running_mean[c] + self.momentum * mean[c];
            self.running_var[c] =
                (F::one() - self.momentum) * self.running_var[c] + self.momentum * unbiased;
        }
        let x = x.view();
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
        let hw = h * w;
        let count = (n * hw) as f64;
        let go = grad_out.as_standard_layout();
        let gs = go.as_slice().expect("standard layout");
        let xs = cache
            .normalized
            .as_slice()
            .expect("the cache is a fresh array");
        let at = |b: usize, c: usize| (b * channels + c) * hw;
        let sums: Vec<(f64, f64)> = (0..channels)
            .into_par_iter()
            .map(|c| {
                let (mut sum_g, mut sum_gx) = (0.0f64, 0.0f64);
                for b in 0..n {
                    let (g, xh) = (&gs[at(b, c)..][..hw], &xs[at(b, c)..][..hw]);
                    sum_g += g.iter().map(|v| v.to_f64_exact()).sum::<f64>();
                    sum_gx += g
                        .iter()
                        .zip(xh)
                        .map(|(a, b)| a.to_f64_exact() * b.to_f64_exact())
                        .sum::<f64>();
                }
                (sum_g, sum_gx)
            })
            .collect();
        let gamma = Array1::from_iter(sums.iter().map(|&(_, gx)| F::from_f64_lossy(gx)));
        let beta = Array1::from_iter(sums.iter().map(|&(g, _)| F::from_f64_lossy(g)));
        let mut input = Array4::<F>::zeros(grad_out.dim());
        input
            .as_slice_mut()
            .expect("fresh array")
            .par_chunks_mut(hw.max(1))
            .zip(gs.par_chunks(hw.max(1)))
            .zip(xs.par_chunks(hw.max(1)))
            .enumerate()
            .for_each(|(plane, ((dst, g), xh))| {
                let c = plane % channels;
                let k = self.gamma[c].to_f64_exact() * cache.inv_std[c].to_f64_exact();
                let (mg, mgx) = (sums[c].0 / count, sums[c].1 / count);
                for ((d, &gv), &xv) in dst.iter_mut().zip(g).zip(xh) {
                    *d = F::from_f64_lossy(k * (gv.to_f64_exact() - mg - xv.to_f64_exact() * mgx));
                }
            });
        Ok(BatchNormGrads { input, gamma, beta })
    }
}
