//! Stochastic gradient descent with momentum and weight decay, and learning-rate schedules.

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Zip};

use crate::error::{Error, Result};
use crate::linalg::Real;

/// How the learning rate changes over training, as a function of the position in epochs
/// (see [`Sgd::lr_at`]).
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
    /// Cosine annealing from the base rate to 0 over `epochs`. Given whole epochs it changes
    /// once per epoch (PyTorch's `CosineAnnealingLR` stepped per epoch, which never reaches
    /// 0); given the fraction of the epoch done, it anneals every step and ends at 0.
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
    /// The learning rate at `epoch`, the position in training counted in epochs from 0: a
    /// whole number for a rate that changes once per epoch, or the epoch's index plus the
    /// fraction of it done (`e + b / batches` before batch `b`) for a rate that changes every
    /// step.
    ///
    /// ```
    /// use clustered_conv::nn::{LrSchedule, Sgd};
    ///
    /// let sgd = Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0, schedule: LrSchedule::Cosine { epochs: 2 } };
    /// assert_eq!(sgd.lr_at(0.0), 0.1);
    /// assert!((sgd.lr_at(1.0) - 0.05).abs() < 1e-15); // half way
    /// assert!(sgd.lr_at(1.5) < sgd.lr_at(1.0)); // within the second epoch
    /// assert!(sgd.lr_at(2.0).abs() < 1e-15);
    /// ```
    pub fn lr_at(&self, epoch: f64) -> f64 {
        match &self.schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Step { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| epoch >= m as f64).count();
                self.lr * gamma.powi(passed as i32)
            }
            LrSchedule::Cosine { epochs } => {
                let t = (epoch / (*epochs).max(1) as f64).min(1.0);
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }

    /// Checks the settings as PyTorch's `SGD` does, and also refuses what is not finite: the
    /// learning rate, momentum and weight decay must be finite and ≥ 0, as must a step
    /// schedule's `gamma`. A negative or NaN rate would otherwise train into NaN weights that
    /// fail only later, far from the cause.
    ///
    /// ```
    /// use clustered_conv::nn::{LrSchedule, Sgd};
    ///
    /// let mut sgd = Sgd { lr: 0.05, momentum: 0.9, weight_decay: 5e-4, schedule: LrSchedule::Constant };
    /// assert!(sgd.check().is_ok());
    /// sgd.lr = -0.05;
    /// assert!(sgd.check().is_err());
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the first setting out of range.
    pub fn check(&self) -> Result<()> {
        let gamma = match &self.schedule {
            LrSchedule::Step { gamma, .. } => *gamma,
            LrSchedule::Constant | LrSchedule::Cosine { .. } => 1.0,
        };
        let settings = [
            ("lr", self.lr),
            ("momentum", self.momentum),
            ("weight_decay", self.weight_decay),
            ("gamma", gamma),
        ];
        match settings.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            Some(&(name, value)) => Err(Error::InvalidParameter {
                name,
                value,
                expected: "a finite value ≥ 0",
            }),
            None => Ok(()),
        }
    }

    /// Updates `param` in place from `grad` at position `epoch` (see [`Sgd::lr_at`]).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for an `epoch` that is negative or not finite, or for
    /// settings [`Sgd::check`] refuses; a gradient whose shape differs from the parameter's,
    /// or a momentum buffer (in `state`) from a parameter of another shape. Nothing changes
    /// on error.
    pub fn step<F: Real>(
        &self,
        epoch: f64,
        param: ArrayViewMutD<F>,
        grad: ArrayViewD<F>,
        state: &mut SgdState<F>,
    ) -> Result<()> {
        let mut param = param;
        check_epoch(epoch)?;
        self.check()?;
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

/// Refuses a training position (in epochs) that is negative or not finite.
pub(crate) fn check_epoch(epoch: f64) -> Result<()> {
    if epoch.is_finite() && epoch >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name: "epoch",
            value: epoch,
            expected: "a finite position in epochs ≥ 0",
        })
    }
}
