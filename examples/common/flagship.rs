//! The flagship network: the small VGG-style CNN that `examples/fashion_mnist.rs` trains on
//! Fashion-MNIST, shared with the training-step benchmark of `examples/compare.rs` (so the
//! harness always times the network the flagship trains).
#![allow(dead_code)]

use clustered_conv::nn::{BatchNorm2d, Layer, Linear, MaxPool2d, Network};
use clustered_conv::{Conv2d, ConvGeometry};
use ndarray::{Array1, Array2, Array4};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// `(in, out, pool after)` of the five 3×3 convolutions: 32-32-pool-64-64-pool-128-pool.
pub const BLOCKS: [(usize, usize, bool); 5] = [
    (1, 32, false),
    (32, 32, true),
    (32, 64, false),
    (64, 64, true),
    (64, 128, true),
];
/// Inputs of the classifier: 128 channels of 3×3 after three 2×2 pools of 28×28.
pub const FEATURES: usize = 128 * 3 * 3;
/// Classes of Fashion-MNIST.
pub const CLASSES: usize = 10;

/// conv(no bias)-BN-ReLU blocks, max-pools, one linear layer; He-normal convolutions and a
/// PyTorch-style uniform classifier.
pub fn build_network(rng: &mut ChaCha8Rng) -> Result<Network<f32>, Box<dyn std::error::Error>> {
    let mut layers = Vec::new();
    for &(cin, cout, pool) in &BLOCKS {
        let normal = Normal::new(0.0, (2.0 / (cin * 9) as f32).sqrt())?;
        let w = Array4::from_shape_simple_fn((cout, cin, 3, 3), || normal.sample(rng));
        layers.push(Layer::Conv(Conv2d::new(
            w,
            None,
            ConvGeometry::default().padding(1, 1),
        )?));
        layers.push(Layer::BatchNorm(BatchNorm2d::new(cout)));
        layers.push(Layer::Relu);
        if pool {
            layers.push(Layer::MaxPool(MaxPool2d {
                kernel: 2,
                stride: 2,
                padding: 0,
            }));
        }
    }
    let bound = (1.0 / FEATURES as f32).sqrt();
    layers.push(Layer::Flatten);
    layers.push(Layer::Linear(Linear {
        weight: Array2::from_shape_simple_fn((CLASSES, FEATURES), || {
            rng.random_range(-bound..bound)
        }),
        bias: Array1::zeros(CLASSES),
    }));
    Ok(Network::new(layers))
}
