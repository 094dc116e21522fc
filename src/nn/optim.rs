//! Stochastic gradient descent with momentum and weight decay, and learning-rate schedules.

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Zip};

use crate::error::{Error, Result};
use crate::linalg::Real;

/// How the learning rate changes over epochs.
#[derive(Debug, Clone, PartialEq)]
pub enum LrSchedule {
    /// Constant.
    Constant,
    /// Multiplied by `gamma` at each listed epoch (the paper: ×0.1 at 150 and 225 of 300).
    Step {
        /// Epochs at which the rate drops.
        milestones: Vec<usize>,
        /// Factor applied at each milestone.
        gamma: f64,
    },
    /// Cosine annealing from the base rate to 0 over `epochs`.
    Cosine {
        /// Total epochs.
        epochs: usize,
    },
}

/// SGD as PyTorch's `torch.optim.SGD` (no Nesterov, no dampening):
/// `g ← ∇ + λ·p`, `v ← μ·v + g`, `p ← p − lr·v`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sgd {
    /// Base learning rate.
    pub lr: f64,
    /// Momentum μ.
    pub momentum: f64,
    /// Weight decay λ (L2).
    pub weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: LrSchedule,
}

/// The momentum buffer of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct SgdState<F> {
    velocity: Option<ArrayD<F>>,
}

impl<F> Default for SgdState<F> {
    fn default() -> Self {
        SgdState { velocity: None }
    }
}

impl Sgd {
    /// The learning rate during `epoch` (0-based).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        match &self.schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Step { milestones, gamma } => {
                self.lr * gamma.powi(milestones.iter().filter(|&&m| epoch >= m).count() as i32)
            }
            LrSchedule::Cosine { epochs } => {
                let t = (epoch as f64 / (*epochs).max(1) as f64).min(1.0);
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }

    /// Updates `param` in place from `grad` during `epoch`.
    ///
    /// # Errors
    /// A gradient whose shape differs from the parameter's, or a momentum buffer (in `state`)
    /// from a parameter of another shape.
    pub fn step<F: Real>(
        &self,
        epoch: usize,
        param: ArrayViewMutD<F>,
        grad: ArrayViewD<F>,
        state: &mut SgdState<F>,
    ) -> Result<()> {
        let mut param = param;
        if param.shape() != grad.shape() {
            return Err(Error::ShapeMismatch {
                what: "gradient vs parameter",
                expected: param.shape().to_vec(),
                got: grad.shape().to_vec(),
            });
        }
        let (lr, mu, wd) = (
            F::from_f64_lossy(self.lr_at(epoch)),
            F::from_f64_lossy(self.momentum),
            F::from_f64_lossy(self.weight_decay),
        );
        // One pass over parameter, gradient and momentum buffer (the buffer is made on the
        // first step): `g + λ·p`, then `v ← μ·v + g` (or `v ← g` without momentum or history),
        // then `p ← p − lr·v`; the same operations, in the same order, as three passes.
        let mut velocity = state.velocity.take().filter(|_| mu != F::zero());
        if let Some(v) = velocity.as_ref().filter(|v| v.shape() != param.shape()) {
            return Err(Error::ShapeMismatch {
                what: "momentum buffer vs parameter",
                expected: param.shape().to_vec(),
                got: v.shape().to_vec(),
            });
        }
        match velocity.as_mut() {
            Some(v) => Zip::from(&mut param)
                .and(&grad)
                .and(v)
                .for_each(|p, &g, v| {
                    *v = mu * *v + (g + wd * *p);
                    *p -= lr * *v;
                }),
            None => {
                let v = Zip::from(&mut param).and(&grad).map_collect(|p, &g| {
                    let v = g + wd * *p;
                    *p -= lr * v;
                    v
                });
                velocity = Some(v.into_dyn());
            }
        }
        state.velocity = velocity;
        Ok(())
    }
}
