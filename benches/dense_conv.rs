//! Dense `Conv2d<f32>` (im2col + GEMM) on the 3×3, stride-1, padding-1 layers of VGG-16
//! (CIFAR-10, 32×32 input) and ResNet-18 (ImageNet, 224×224 input), batch 1 and 8.
//!
//! Bench ids: `dense_forward/{family}_{cin}x{cout}@{hw}/b{batch}` (the default algorithm),
//! `winograd_forward/{family}_{cin}x{cout}@{hw}/b{batch}` (`ConvAlgorithm::Winograd`, same
//! layers and data) and `dense_backward/{family}_{cin}x{cout}@{hw}/b8`. Throughput is reported in elements =
//! multiply-accumulates (`N·Cout·Cin·9·OH·OW`), so criterion's "Melem/s" is MMAC/s;
//! multiply by 2 for FLOP/s. A backward pass does two such products (∂x and ∂W), so its
//! throughput is counted as `2·MACs`.
//!
//! Run a subset with e.g. `cargo bench --bench dense_conv -- 'vgg_256'`.

use std::time::Duration;

use clustered_conv::{Conv2d, ConvAlgorithm, ConvGeometry};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::Array4;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// One 3×3 layer: `cin → cout` on an `hw×hw` feature map (padding 1 keeps `hw`).
#[derive(Clone, Copy)]
struct Layer {
    family: &'static str,
    cin: usize,
    cout: usize,
    hw: usize,
}

impl Layer {
    const fn new(family: &'static str, c: usize, hw: usize) -> Self {
        Self {
            family,
            cin: c,
            cout: c,
            hw,
        }
    }

    fn name(&self) -> String {
        format!("{}_{}x{}@{}", self.family, self.cin, self.cout, self.hw)
    }

    /// Multiply-accumulates of one forward pass at batch `n`.
    fn macs(&self, n: usize) -> u64 {
        (n * self.cout * self.cin * 9 * self.hw * self.hw) as u64
    }
}

/// VGG-16 on CIFAR-10 (32×32 input) and ResNet-18 on ImageNet (56×56 after the stem).
const LAYERS: [Layer; 8] = [
    Layer::new("vgg", 64, 32),
    Layer::new("vgg", 128, 16),
    Layer::new("vgg", 256, 8),
    Layer::new("vgg", 512, 4),
    Layer::new("resnet18", 64, 56),
    Layer::new("resnet18", 128, 28),
    Layer::new("resnet18", 256, 14),
    Layer::new("resnet18", 512, 7),
];

/// One backward case per family, at batch 8.
const BACKWARD_LAYERS: [Layer; 2] = [Layer::new("vgg", 128, 16), Layer::new("resnet18", 128, 28)];

const BATCHES: [usize; 2] = [1, 8];

fn normal(rng: &mut ChaCha8Rng, shape: (usize, usize, usize, usize), scale: f32) -> Array4<f32> {
    Array4::from_shape_simple_fn(shape, || {
        let z: f32 = rng.sample(StandardNormal);
        scale * z
    })
}

/// He-initialised layer (std `sqrt(2 / (Cin·9))`), seeded by its shape.
fn make_layer(layer: &Layer, rng: &mut ChaCha8Rng) -> Conv2d<f32> {
    let std = (2.0 / (layer.cin * 9) as f32).sqrt();
    let weight = normal(rng, (layer.cout, layer.cin, 3, 3), std);
    Conv2d::new(weight, None, ConvGeometry::default().padding(1, 1)).expect("valid layer")
}

/// The forward pass of every layer and batch size with one algorithm, in group `name`.
/// Throughput is counted in the direct convolution's MACs, so the groups compare directly.
fn bench_forward_with(c: &mut Criterion, name: &str, algorithm: ConvAlgorithm) {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (i, layer) in LAYERS.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(i as u64);
        let conv = make_layer(layer, &mut rng)
            .with_algorithm(algorithm)
            .expect("every benchmarked layer is 3×3, stride 1");
        for &n in &BATCHES {
            let x = normal(&mut rng, (n, layer.cin, layer.hw, layer.hw), 1.0);
            group.throughput(Throughput::Elements(layer.macs(n)));
            group.bench_function(BenchmarkId::new(layer.name(), format!("b{n}")), |b| {
                b.iter(|| conv.forward(x.view()).expect("forward"))
            });
        }
    }
    group.finish();
}

fn bench_forward(c: &mut Criterion) {
    bench_forward_with(c, "dense_forward", ConvAlgorithm::Im2col);
}

/// The same layers through Winograd F(4×4, 3×3).
fn bench_winograd_forward(c: &mut Criterion) {
    bench_forward_with(c, "winograd_forward", ConvAlgorithm::Winograd);
}

fn bench_backward(c: &mut Criterion) {
    let mut group = c.benchmark_group("dense_backward");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let n = 8;
    for (i, layer) in BACKWARD_LAYERS.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(100 + i as u64);
        let conv = make_layer(layer, &mut rng);
        let x = normal(&mut rng, (n, layer.cin, layer.hw, layer.hw), 1.0);
        let grad_out = normal(&mut rng, (n, layer.cout, layer.hw, layer.hw), 1.0);
        // ∂x and ∂W are each one product of the forward's size.
        group.throughput(Throughput::Elements(2 * layer.macs(n)));
        group.bench_function(BenchmarkId::new(layer.name(), format!("b{n}")), |b| {
            b.iter(|| conv.backward(x.view(), grad_out.view()).expect("backward"))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_forward,
    bench_winograd_forward,
    bench_backward
);
criterion_main!(benches);
