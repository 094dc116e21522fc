//! The small training stack used to fine-tune compressed networks: layers with forward and
//! backward passes, the loss, and SGD.
//!
//! Layers are explicit about state: a forward pass returns what its backward pass needs, and
//! parameters and their gradients are plain arrays the caller owns, so one codebook can be a
//! parameter of many clustered layers (their centroid gradients are summed, paper §3) without
//! any layer holding a copy. This is deliberately not a general framework.

mod batchnorm;
mod linear;
mod loss;
mod network;
mod optim;
mod pool;

pub use batchnorm::{BatchNorm2d, BatchNormCache, BatchNormGrads};
pub use linear::{Linear, LinearGrads};
pub use loss::softmax_cross_entropy;
pub use network::{Gradients, Layer, LayerGrads, Network, Tape};
pub use optim::{LrSchedule, Sgd, SgdState};
pub use pool::MaxPool2d;

use ndarray::{Array, ArrayView, Dimension};

use crate::scalar::Real;

/// `max(x, 0)`, element-wise.
pub fn relu<F: Real, D: Dimension>(x: ArrayView<F, D>) -> Array<F, D> {
    x.mapv(|v| if v > F::zero() { v } else { F::zero() })
}

/// The gradient of [`relu`]: `grad` where `x > 0`, else 0 (0 at `x = 0`, like PyTorch).
pub fn relu_backward<F: Real, D: Dimension>(
    x: ArrayView<F, D>,
    grad: ArrayView<F, D>,
) -> Array<F, D> {
    let mut out = grad.to_owned();
    out.zip_mut_with(&x, |g, &v| {
        if v <= F::zero() {
            *g = F::zero();
        }
    });
    out
}
