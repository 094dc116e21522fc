//! The small training stack used to fine-tune compressed networks: layers with forward and
//! backward passes, the loss, and SGD.
//!
//! Layers are explicit about state: a forward pass returns what its backward pass needs, and
//! parameters and their gradients are plain arrays the caller owns, so one codebook can be a
//! parameter of many clustered layers (their centroid gradients are summed, paper §3) without
//! any layer holding a copy. This is deliberately not a general framework.

mod avgpool;
mod batchnorm;
mod distill;
mod graph;
mod importance;
mod linear;
mod loss;
mod network;
mod optim;
mod pool;

pub use avgpool::{AvgPool2d, GlobalAvgPool};
pub use batchnorm::{BatchNorm2d, BatchNormCache, BatchNormGrads, BatchNormTape};
pub use linear::{Linear, LinearGrads};
pub use loss::{distillation_loss, softmax_cross_entropy, Distillation};
pub use network::{Gradients, Layer, LayerGrads, Network, Tape};
pub use optim::{LrSchedule, Sgd, SgdState};
pub use pool::{MaxPool2d, PoolArgmax, MAX_POOL_TRAIN_KERNEL};

use ndarray::{Array, Array4, ArrayView, ArrayView4, Dimension};
use rand::Rng;

use crate::linalg::Real;

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

/// Data augmentation: every image of `x` `(N, C, H, W)` shifted by a random offset in
/// `−pad..=pad` on each axis (the uncovered border filled with `fill`, like a random crop of a
/// zero-padded image) and flipped horizontally with probability ½.
pub fn random_crop_flip<F: Real, R: Rng>(
    x: ArrayView4<F>,
    pad: usize,
    fill: F,
    rng: &mut R,
) -> Array4<F> {
    let (n, c, h, w) = x.dim();
    let mut out = Array4::from_elem((n, c, h, w), fill);
    let pad = pad as i64;
    for b in 0..n {
        let dy = rng.random_range(-pad..=pad) as isize;
        let dx = rng.random_range(-pad..=pad) as isize;
        let flip = rng.random_bool(0.5);
        for ch in 0..c {
            for y in 0..h {
                let sy = y as isize + dy;
                if sy < 0 || sy >= h as isize {
                    continue;
                }
                for xx in 0..w {
                    let shifted = xx as isize + dx;
                    let sx = if flip {
                        w as isize - 1 - shifted
                    } else {
                        shifted
                    };
                    if (0..w as isize).contains(&sx) {
                        out[[b, ch, y, xx]] = x[[b, ch, sy as usize, sx as usize]];
                    }
                }
            }
        }
    }
    out
}
