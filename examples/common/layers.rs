//! Layer shapes and synthetic weights shared by the `strategy_table` example and the
//! `clustered_conv` benchmark.
#![allow(dead_code)]

use ndarray::Array4;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Real 3×3 layer shapes (padding 1, stride 1): VGG-16 on CIFAR-10 and ResNet-18 on ImageNet,
/// as (name, channels in = out, spatial size).
pub const SHAPES: [(&str, usize, usize); 8] = [
    ("vgg 64@32", 64, 32),
    ("vgg 128@16", 128, 16),
    ("vgg 256@8", 256, 8),
    ("vgg 512@4", 512, 4),
    ("resnet 64@56", 64, 56),
    ("resnet 128@28", 128, 28),
    ("resnet 256@14", 256, 14),
    ("resnet 512@7", 512, 7),
];

/// A `(c, c, 3, 3)` weight: `"normal"` draws He-scaled normal values; anything else draws
/// "skewed" kernels like trained networks': 512 random patterns used with probability
/// ∝ 1/(rank + 1) (Zipf), random sign and magnitude, 10 % noise.
pub fn weights(kind: &str, c: usize, rng: &mut ChaCha8Rng) -> Array4<f32> {
    let std = (2.0 / (c as f32 * 9.0)).sqrt();
    match kind {
        "normal" => Array4::from_shape_simple_fn((c, c, 3, 3), || {
            let v: f32 = StandardNormal.sample(rng);
            v * std
        }),
        _ => {
            // 512 patterns, drawn with probability ∝ 1/(rank+1), random sign and magnitude.
            let patterns: Vec<[f32; 9]> = (0..512)
                .map(|_| std::array::from_fn(|_| StandardNormal.sample(rng)))
                .collect();
            let harmonic: f64 = (1..=512).map(|r| 1.0 / r as f64).sum();
            let mut w = Array4::<f32>::zeros((c, c, 3, 3));
            for o in 0..c {
                for i in 0..c {
                    let mut u = rng.random::<f64>() * harmonic;
                    let mut p = 0;
                    while p < 511 && u > 1.0 / (p + 1) as f64 {
                        u -= 1.0 / (p + 1) as f64;
                        p += 1;
                    }
                    let scale = std
                        * rng.random_range(0.2f32..1.5)
                        * if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                    for t in 0..9 {
                        let noise: f32 = StandardNormal.sample(rng);
                        w[[o, i, t / 3, t % 3]] = scale * (patterns[p][t] + 0.1 * noise);
                    }
                }
            }
            w
        }
    }
}
