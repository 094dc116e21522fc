//! Softmax cross-entropy.

use ndarray::{Array2, ArrayView2};

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
    let mut grad = Array2::<F>::zeros((n, c));
    let mut loss = 0.0;
    for ((row, mut g), &label) in logits.outer_iter().zip(grad.outer_iter_mut()).zip(labels) {
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, v| m.max(v.to_f64_exact()));
        let exps: Vec<f64> = row.iter().map(|v| (v.to_f64_exact() - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        loss += sum.ln() + max - row[label].to_f64_exact();
        for (j, (gj, e)) in g.iter_mut().zip(&exps).enumerate() {
            let p = e / sum - if j == label { 1.0 } else { 0.0 };
            *gj = F::from_f64_lossy(p / n as f64);
        }
    }
    Ok((loss / n as f64, grad))
}
