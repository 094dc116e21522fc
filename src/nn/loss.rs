//! Softmax cross-entropy, and knowledge distillation (soft targets from a teacher's logits).

use ndarray::{Array2, ArrayView1, ArrayView2};

use crate::error::{Error, Result};
use crate::linalg::Real;

/// Mean softmax cross-entropy of `logits` `(N, C)` against class `labels`, and its gradient
/// with respect to the logits (`(softmax − one_hot) / N`). Computed with the max-subtraction
/// trick, so large logits do not overflow.
///
/// # Errors
/// A label count different from `N`, a label ≥ `C`, or an empty batch.
pub fn softmax_cross_entropy<F: Real>(
    logits: ArrayView2<F>,
    labels: &[usize],
) -> Result<(f64, Array2<F>)> {
    check_logits_and_labels(&logits, labels)?;
    let n = logits.nrows();
    let mut grad = Array2::<F>::zeros(logits.dim());
    let mut loss = 0.0;
    for ((row, mut g), &label) in logits.outer_iter().zip(grad.outer_iter_mut()).zip(labels) {
        let soft = Softmax::of(row, 1.0);
        loss += soft.cross_entropy(row, label);
        for (j, (gj, e)) in g.iter_mut().zip(&soft.exps).enumerate() {
            let p = e / soft.sum - if j == label { 1.0 } else { 0.0 };
            *gj = F::from_f64_lossy(p / n as f64);
        }
    }
    Ok((loss / n as f64, grad))
}

/// Settings of the knowledge-distillation loss ([`distillation_loss`]): the softmax
/// temperature `T` of the soft targets and the weight `α` of the soft term.
///
/// Defaults `T = 4`, `α = 0.9`: at `T = 4` a 10-class teacher's runner-up classes carry a
/// visible share of the probability (its "dark knowledge"), where at `T = 1` a confident
/// teacher is nearly one-hot and adds little to the labels; `α = 0.9` lets the teacher,
/// which saw the same images, dominate while the labels correct its mistakes. These are the
/// common choices for small image classifiers (Hinton et al. 2015 use `T` in 2–20; the
/// CIFAR literature mostly `T = 4`, `α = 0.9`). Measure them for a given recipe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Distillation {
    /// Softmax temperature `T` (finite, > 0) applied to both the teacher's and the
    /// student's logits in the soft term.
    pub temperature: f64,
    /// Weight `α ∈ [0, 1]` of the soft term; the labels' cross-entropy gets `1 − α`.
    pub alpha: f64,
}

impl Default for Distillation {
    fn default() -> Self {
        Distillation {
            temperature: 4.0,
            alpha: 0.9,
        }
    }
}

impl Distillation {
    /// Temperature `temperature`, soft-term weight `alpha` (checked when the loss is
    /// computed, or by [`Distillation::check`]).
    pub fn new(temperature: f64, alpha: f64) -> Self {
        Distillation { temperature, alpha }
    }

    /// Validates the settings.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a temperature that is not finite and > 0, or an
    /// `alpha` outside `[0, 1]` (NaN included).
    pub fn check(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::InvalidParameter {
                name: "temperature",
                value: self.temperature,
                expected: "a finite value > 0",
            });
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(Error::InvalidParameter {
                name: "alpha",
                value: self.alpha,
                expected: "a value in [0, 1]",
            });
        }
        Ok(())
    }
}

/// Knowledge-distillation loss (Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a
/// neural network"), averaged over the batch, and its gradient with respect to the student's
/// logits:
///
/// ```text
/// loss = α·T²·KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − α)·CE(student, labels)
/// ∂loss/∂student = [α·T·(softmax(student/T) − softmax(teacher/T))
///                   + (1 − α)·(softmax(student) − one_hot(labels))] / N
/// ```
///
/// The `T²` factor keeps the soft term's gradient on the scale of the hard term's as `T`
/// changes (the soft gradient is `1/T` times the probability gap, which itself shrinks like
/// `1/T` for large `T`), so `α` means the same at every temperature. The KL divergence
/// (not the soft cross-entropy) is used, so a student that matches the teacher has a soft
/// loss of 0. With `α = 0` the result is exactly [`softmax_cross_entropy`] (same bits).
///
/// Everything is accumulated in `f64` with the max-subtraction trick, so large logits do
/// not overflow; the teacher's log-probabilities are computed directly (not as `ln` of an
/// underflowed probability), so a near-one-hot teacher gives a finite loss.
///
/// # Shapes
/// `student` and `teacher` `(N, C)`, `labels` `N` class indices.
///
/// # Errors
/// [`Error::InvalidParameter`] for bad settings ([`Distillation::check`]) or a label ≥ `C`;
/// [`Error::ZeroSize`] for an empty batch or no classes; [`Error::ShapeMismatch`] for a
/// teacher shape or label count that differs from the student's; [`Error::NonFinite`] (with
/// the row) for a NaN or infinite logit.
///
/// ```
/// use clustered_conv::nn::{distillation_loss, softmax_cross_entropy, Distillation};
/// use ndarray::array;
///
/// let student = array![[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]];
/// let teacher = array![[3.0, 1.0, -2.0], [0.5, 2.5, 0.0]];
/// let labels = [0, 1];
/// let (loss, grad) = distillation_loss(student.view(), teacher.view(), &labels, &Distillation::default())?;
/// assert!(loss > 0.0 && grad.dim() == (2, 3));
/// // α = 0: plain cross-entropy with the labels.
/// let hard = Distillation { temperature: 4.0, alpha: 0.0 };
/// let (ce, _) = softmax_cross_entropy(student.view(), &labels)?;
/// assert_eq!(distillation_loss(student.view(), teacher.view(), &labels, &hard)?.0, ce);
/// // A student equal to its teacher has no soft loss.
/// let soft = Distillation { temperature: 4.0, alpha: 1.0 };
/// assert!(distillation_loss(teacher.view(), teacher.view(), &labels, &soft)?.0.abs() < 1e-12);
/// # Ok::<(), clustered_conv::Error>(())
/// ```
pub fn distillation_loss<F: Real>(
    student: ArrayView2<F>,
    teacher: ArrayView2<F>,
    labels: &[usize],
    settings: &Distillation,
) -> Result<(f64, Array2<F>)> {
    settings.check()?;
    check_logits_and_labels(&student, labels)?;
    if teacher.dim() != student.dim() {
        return Err(Error::ShapeMismatch {
            what: "teacher logits vs student logits",
            expected: student.shape().to_vec(),
            got: teacher.shape().to_vec(),
        });
    }
    check_finite(&student, "student logits")?;
    check_finite(&teacher, "teacher logits")?;
    let (t, alpha) = (settings.temperature, settings.alpha);
    let n = student.nrows() as f64;
    let mut grad = Array2::<F>::zeros(student.dim());
    let mut loss = 0.0;
    for (((s, tc), mut g), &label) in student
        .outer_iter()
        .zip(teacher.outer_iter())
        .zip(grad.outer_iter_mut())
        .zip(labels)
    {
        let hard = Softmax::of(s, 1.0);
        let q = Softmax::of(s, t);
        let p = Softmax::of(tc, t);
        // KL(p ‖ q) = Σ p·(log p − log q), with log-probabilities from the shifted logits.
        let mut kl = 0.0;
        for j in 0..s.len() {
            kl += p.prob(j) * (p.log_prob(j) - q.log_prob(j));
        }
        loss += alpha * t * t * kl + (1.0 - alpha) * hard.cross_entropy(s, label);
        for (j, gj) in g.iter_mut().enumerate() {
            let soft = alpha * t * (q.prob(j) - p.prob(j));
            let ce = hard.exps[j] / hard.sum - if j == label { 1.0 } else { 0.0 };
            *gj = F::from_f64_lossy((soft + (1.0 - alpha) * ce) / n);
        }
    }
    Ok((loss / n, grad))
}

/// The softmax of one row of logits divided by a temperature, kept as the shifted
/// exponentials: `exps[j] = exp(x_j/T − max)`, `sum = Σ exps`.
struct Softmax {
    /// The largest `x_j / T`.
    max: f64,
    /// The shifted logits `x_j / T − max`.
    shifted: Vec<f64>,
    exps: Vec<f64>,
    sum: f64,
}

impl Softmax {
    /// The softmax of `row / temperature` (`temperature = 1` divides by nothing, so the
    /// arithmetic is that of the plain softmax).
    fn of<F: Real>(row: ArrayView1<F>, temperature: f64) -> Self {
        let scaled: Vec<f64> = if temperature == 1.0 {
            row.iter().map(|v| v.to_f64_exact()).collect()
        } else {
            row.iter().map(|v| v.to_f64_exact() / temperature).collect()
        };
        let max = scaled.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        let shifted: Vec<f64> = scaled.iter().map(|&v| v - max).collect();
        let exps: Vec<f64> = scaled.iter().map(|&v| (v - max).exp()).collect();
        let sum = exps.iter().sum();
        Softmax {
            max,
            shifted,
            exps,
            sum,
        }
    }

    /// Probability of class `j`.
    fn prob(&self, j: usize) -> f64 {
        self.exps[j] / self.sum
    }

    /// Log-probability of class `j`, from the shifted logit (finite even where the
    /// probability underflows to 0).
    fn log_prob(&self, j: usize) -> f64 {
        self.shifted[j] - self.sum.ln()
    }

    /// `−log p(label)` of the unscaled row (temperature 1): `ln Σ + max − x_label`.
    fn cross_entropy<F: Real>(&self, row: ArrayView1<F>, label: usize) -> f64 {
        self.sum.ln() + self.max - row[label].to_f64_exact()
    }
}

/// Rejects an empty batch, a label count other than `N` and labels ≥ `C`.
fn check_logits_and_labels<F>(logits: &ArrayView2<F>, labels: &[usize]) -> Result<()> {
    let (n, c) = logits.dim();
    if n == 0 || c == 0 {
        return Err(Error::ZeroSize {
            what: "logits",
            shape: vec![n, c],
        });
    }
    if labels.len() != n {
        return Err(Error::ShapeMismatch {
            what: "labels vs logits rows",
            expected: vec![n],
            got: vec![labels.len()],
        });
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= c) {
        return Err(Error::InvalidParameter {
            name: "label",
            value: bad as f64,
            expected: "a class index below the number of logits",
        });
    }
    Ok(())
}

/// Rejects a NaN or infinite logit, naming its row.
fn check_finite<F: Real>(logits: &ArrayView2<F>, what: &'static str) -> Result<()> {
    match logits
        .outer_iter()
        .position(|row| row.iter().any(|v| !v.is_finite()))
    {
        Some(index) => Err(Error::NonFinite { what, index }),
        None => Ok(()),
    }
}
