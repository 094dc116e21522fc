//! Training a [`Network`] against a teacher's logits (knowledge distillation).

use ndarray::{ArrayView2, ArrayView4};

use super::optim::check_epoch;
use super::{distillation_loss, Distillation, Network, Sgd, SgdState};
use crate::error::{Error, Result};
use crate::linalg::Real;

impl<F: Real> Network<F> {
    /// As [`Network::train_step`], with the [`distillation_loss`] against `teacher_logits`
    /// (the teacher's evaluation-mode logits for the same images `x`, e.g. from
    /// [`Network::forward`] of the dense network the student was compressed from) instead
    /// of the plain cross-entropy; returns the batch loss. With `alpha = 0` it is exactly
    /// [`Network::train_step`].
    ///
    /// # Shapes
    /// `x` `(N, C, H, W)`, `labels` `N`, `teacher_logits` `(N, classes)`.
    ///
    /// # Errors
    /// As [`distillation_loss`] and the steps of [`Network::train_step`].
    ///
    /// ```
    /// use clustered_conv::nn::{Distillation, Layer, Linear, LrSchedule, Network, Sgd, SgdState};
    /// use clustered_conv::{Conv2d, ConvGeometry};
    /// use ndarray::{Array1, Array2, Array4};
    ///
    /// let conv = Conv2d::new(Array4::from_elem((2, 1, 3, 3), 0.1), None, ConvGeometry::default().padding(1, 1))?;
    /// let fc = Linear { weight: Array2::from_elem((3, 2 * 4 * 4), 0.01), bias: Array1::zeros(3) };
    /// let teacher = Network::new(vec![Layer::Conv(conv.clone()), Layer::Relu, Layer::Flatten, Layer::Linear(fc.clone())]);
    /// let mut student = teacher.clone();
    /// let x = Array4::from_shape_fn((4, 1, 4, 4), |(n, _, y, x)| (n + y * x) as f64 * 0.1);
    /// let labels = [0, 1, 2, 0];
    /// let teacher_logits = teacher.forward(x.view())?;
    /// let sgd = Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0, schedule: LrSchedule::Constant };
    /// let mut states: Vec<SgdState<f64>> = Vec::new();
    /// let kd = Distillation::default();
    /// let first = student.train_step_distill(x.view(), &labels, teacher_logits.view(), &kd, &sgd, 0.0, &mut states)?;
    /// let second = student.train_step_distill(x.view(), &labels, teacher_logits.view(), &kd, &sgd, 0.0, &mut states)?;
    /// assert!(second < first);
    /// # Ok::<(), clustered_conv::Error>(())
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn train_step_distill(
        &mut self,
        x: ArrayView4<F>,
        labels: &[usize],
        teacher_logits: ArrayView2<F>,
        distillation: &Distillation,
        sgd: &Sgd,
        epoch: f64,
        states: &mut Vec<SgdState<F>>,
    ) -> Result<f64> {
        // Checked before the forward pass, so bad settings leave batch-norm statistics alone.
        distillation.check()?;
        check_epoch(epoch)?;
        let n = x.dim().0;
        if teacher_logits.nrows() != n || labels.len() != n {
            return Err(Error::ShapeMismatch {
                what: "(teacher logits rows, labels) vs images",
                expected: vec![n, n],
                got: vec![teacher_logits.nrows(), labels.len()],
            });
        }
        let (logits, tape) = self.forward_train(x)?;
        let (loss, grad) = distillation_loss(logits.view(), teacher_logits, labels, distillation)?;
        let grads = self.backward(&tape, grad)?;
        self.sgd_step(&grads, sgd, epoch, states)?;
        Ok(loss)
    }
}
