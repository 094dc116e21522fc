//! `ClusteredConv2d` forward strategies against the dense `Conv2d`, on real VGG-16 (CIFAR) and
//! ResNet-18 3×3 layer shapes, batch 1 and 8, K ∈ {16, 64, 256}.
//!
//! Indices come from k-means (20 Lloyd iterations) of a weight tensor: random-normal weights
//! (`normal`) or Zipf-distributed patterns with noise (`skewed`, a frequency-sorted usage like
//! trained networks'). Throughput is in dense-equivalent MACs (`N·Cout·Cin·9·OH·OW`), so the
//! strategies' element rates compare directly with the dense baseline in the same group. The
//! relative error of each strategy against `Dense` is printed before it is timed.
//!
//! Ids: `clustered/<layer>/b<N>/dense` and `clustered/<layer>/b<N>/<weights>_K<k>/<strategy>`;
//! filter with e.g. `cargo bench --bench clustered_conv -- 'vgg_256.*b8.*K64'`. The
//! `clustered_winograd/<layer>/b8/K64/<strategy>` group times `ForwardStrategy::Winograd`
//! against the dense fallback and `Auto` on the ResNet-18 shapes.

use std::time::Duration;

use clustered_conv::{ClusteredConv2d, Conv2d, ConvGeometry, ForwardStrategy, KernelCodebook};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::Array4;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[path = "../examples/common/layers.rs"]
mod layers;

const KS: [usize; 3] = [16, 64, 256];
const WEIGHTS: [&str; 2] = ["normal", "skewed"];
const STRATEGIES: [(&str, ForwardStrategy); 3] = [
    ("input_side", ForwardStrategy::InputSide),
    ("output_side", ForwardStrategy::OutputSide),
    ("auto", ForwardStrategy::Auto),
];

fn rel_err(a: &Array4<f32>, b: &Array4<f32>) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(2018);
    let g = ConvGeometry::default().padding(1, 1);
    for (name, ch, hw) in layers::SHAPES {
        let label = name.replace(' ', "_").replace('@', &format!("_{ch}x{ch}@"));
        let label = label.replacen(&format!("_{ch}_"), "_", 1);
        let kernels: Vec<(String, KernelCodebook<f32>, ClusteredConv2d<f32>)> = WEIGHTS
            .iter()
            .flat_map(|&kind| {
                let w = layers::weights(kind, ch, &mut rng);
                let dense = Conv2d::new(w.clone(), None, g).expect("valid layer");
                KS.map(|k| {
                    let codebook = KernelCodebook::params(k)
                        .seed(1)
                        .max_iter(20)
                        .fit(&[w.view()])
                        .expect("enough kernels")
                        .codebook;
                    let layer =
                        ClusteredConv2d::from_conv(&dense, &codebook).expect("codebook fits");
                    (format!("{kind}_K{k}"), codebook, layer)
                })
            })
            .collect();
        for batch in [1usize, 8] {
            let x = Array4::from_shape_simple_fn((batch, ch, hw, hw), || {
                rng.random_range(-1.0f32..1.0)
            });
            let mut group = c.benchmark_group(format!("clustered/{label}/b{batch}"));
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs(1))
                .throughput(Throughput::Elements((batch * ch * ch * 9 * hw * hw) as u64));
            let (_, codebook0, layer0) = &kernels[0];
            let dense = layer0.to_conv(codebook0).expect("valid layer");
            group.bench_function("dense", |b| {
                b.iter(|| dense.forward(x.view()).expect("shapes agree"))
            });
            for (id, codebook, layer) in &kernels {
                let oracle = layer
                    .forward_with(codebook, x.view(), ForwardStrategy::Dense)
                    .expect("shapes agree");
                for (sname, strategy) in STRATEGIES {
                    let y = layer
                        .forward_with(codebook, x.view(), strategy)
                        .expect("shapes agree");
                    eprintln!(
                        "clustered/{label}/b{batch}/{id}/{sname}: relative error vs Dense {:.2e}, ΣV/(Cout·Cin) {:.3}",
                        rel_err(&y, &oracle),
                        layer.sum_distinct_per_input() as f64 / (ch * ch) as f64
                    );
                    group.bench_with_input(
                        BenchmarkId::new(id.as_str(), sname),
                        &strategy,
                        |b, &s| {
                            b.iter(|| {
                                layer
                                    .forward_with(codebook, x.view(), s)
                                    .expect("shapes agree")
                            })
                        },
                    );
                }
            }
            group.finish();
        }
    }
}

/// `clustered_winograd/<layer>/b8/K64/<strategy>`: `ForwardStrategy::Winograd` against the
/// dense fallback and `Auto` on the ResNet-18 shapes (normal weights, K = 64, batch 8).
fn bench_winograd(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let g = ConvGeometry::default().padding(1, 1);
    for (name, ch, hw) in layers::SHAPES
        .into_iter()
        .filter(|s| s.0.starts_with("resnet"))
    {
        let w = layers::weights("normal", ch, &mut rng);
        let dense = Conv2d::new(w.clone(), None, g).expect("valid layer");
        let codebook = KernelCodebook::params(64)
            .seed(1)
            .max_iter(20)
            .fit(&[w.view()])
            .expect("enough kernels")
            .codebook;
        let layer = ClusteredConv2d::from_conv(&dense, &codebook).expect("codebook fits");
        let batch = 8;
        let x =
            Array4::from_shape_simple_fn((batch, ch, hw, hw), || rng.random_range(-1.0f32..1.0));
        let oracle = layer
            .forward_with(&codebook, x.view(), ForwardStrategy::Dense)
            .expect("shapes agree");
        let wino = layer
            .forward_with(&codebook, x.view(), ForwardStrategy::Winograd)
            .expect("3×3, stride 1");
        let label = name.replace(' ', "_");
        eprintln!(
            "clustered_winograd/{label}/b{batch}/K64: relative error vs Dense {:.2e}",
            rel_err(&wino, &oracle)
        );
        let mut group = c.benchmark_group(format!("clustered_winograd/{label}/b{batch}/K64"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .throughput(Throughput::Elements((batch * ch * ch * 9 * hw * hw) as u64));
        for (sname, strategy) in [
            ("dense", ForwardStrategy::Dense),
            ("winograd", ForwardStrategy::Winograd),
            ("auto", ForwardStrategy::Auto),
        ] {
            group.bench_function(sname, |b| {
                b.iter(|| {
                    layer
                        .forward_with(&codebook, x.view(), strategy)
                        .expect("shapes agree")
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench, bench_winograd);
criterion_main!(benches);
