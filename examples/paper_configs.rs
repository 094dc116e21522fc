//! The paper's configurations, built from seeded random weights of the real layer shapes:
//! VGG-16 on CIFAR-10 (C256, C128-TIC2, C32-TIC8, per-layer C64) and ResNet-18 on ImageNet
//! (C256, C1024, C1024N with a separate 64-centroid 7×7 stem codebook, as the reference code's
//! `--multi 0-0=64,1-16=K`). Prints each `CompressionReport` summary and a table of ratios.
//!
//! Random weights have no shared structure, so the reconstruction errors here are far above
//! those of trained networks; the sizes and ratios are exactly what the method stores. k-means
//! runs 20 Lloyd iterations per codebook to keep the run short.
//!
//! Run: `cargo run --release --example paper_configs [-- --only vgg|resnet]`.

use std::time::Instant;

use clustered_conv::{
    compress, CodebookScope, CompressionConfig, ConvGeometry, ConvLayer, KernelCodebook,
    ScaleScheme, Symmetry,
};
use ndarray::Array4;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn layer(
    rng: &mut ChaCha8Rng,
    name: String,
    cout: usize,
    cin: usize,
    k: usize,
    stride: usize,
) -> ConvLayer<f32> {
    let std = (2.0 / (cin * k * k) as f32).sqrt();
    ConvLayer {
        name,
        weight: Array4::from_shape_simple_fn((cout, cin, k, k), || {
            let v: f32 = StandardNormal.sample(rng);
            v * std
        }),
        bias: None,
        geometry: ConvGeometry::default()
            .stride(stride, stride)
            .padding(k / 2, k / 2),
        mask: None,
    }
}

fn vgg16(rng: &mut ChaCha8Rng) -> Vec<ConvLayer<f32>> {
    let cfg = [
        (64, 3),
        (64, 64),
        (128, 64),
        (128, 128),
        (256, 128),
        (256, 256),
        (256, 256),
        (512, 256),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
    ];
    cfg.iter()
        .enumerate()
        .map(|(i, &(o, c))| layer(rng, format!("features.{i}"), o, c, 3, 1))
        .collect()
}

fn resnet18(rng: &mut ChaCha8Rng) -> Vec<ConvLayer<f32>> {
    let mut v = vec![layer(rng, "conv1".into(), 64, 3, 7, 2)];
    for b in 0..2 {
        for c in 1..=2 {
            v.push(layer(rng, format!("layer1.{b}.conv{c}"), 64, 64, 3, 1));
        }
    }
    for (stage, ch) in [(2, 128), (3, 256), (4, 512)] {
        v.push(layer(
            rng,
            format!("layer{stage}.0.conv1"),
            ch,
            ch / 2,
            3,
            2,
        ));
        v.push(layer(rng, format!("layer{stage}.0.conv2"), ch, ch, 3, 1));
        v.push(layer(
            rng,
            format!("layer{stage}.0.downsample"),
            ch,
            ch / 2,
            1,
            2,
        ));
        for c in 1..=2 {
            v.push(layer(rng, format!("layer{stage}.1.conv{c}"), ch, ch, 3, 1));
        }
    }
    v
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let only = std::env::args()
        .skip_while(|a| a != "--only")
        .nth(1)
        .unwrap_or_default();
    let mut rng = ChaCha8Rng::seed_from_u64(2018);
    let params = |k: usize| KernelCodebook::params(k).max_iter(20).seed(1);
    let base = CompressionConfig::default();
    let mut rows = Vec::new();
    let mut run = |name: &str,
                   layers: &[ConvLayer<f32>],
                   config: CompressionConfig|
     -> Result<(), Box<dyn std::error::Error>> {
        let start = Instant::now();
        let net = compress(layers, &config)?;
        let report = net.report().against(layers).build()?;
        let seconds = start.elapsed().as_secs_f64();
        println!("== {name} ({seconds:.1} s)\n{report}\n");
        let kernels3: u64 = report
            .layers
            .iter()
            .filter(|l| l.kernel_size == (3, 3))
            .map(|l| l.kernels)
            .sum();
        let errors: Vec<f64> = report
            .layers
            .iter()
            .filter_map(|l| l.relative_error)
            .collect();
        rows.push(format!(
            "| {name} | {kernels3} | {:.2} MB | {:.2} MB | {:.1}× | {:.2} MB → {:.2} MB | {:.3} |",
            report.clustered_bytes_before() as f64 / 1e6,
            report.clustered_bytes_after() as f64 / 1e6,
            report.ratio(),
            report.model_bytes_before() as f64 / 1e6,
            report.model_bytes_after() as f64 / 1e6,
            errors.iter().sum::<f64>() / errors.len() as f64,
        ));
        Ok(())
    };
    if only.is_empty() || only == "vgg" {
        let vgg = vgg16(&mut rng);
        run(
            "VGG-16-C256",
            &vgg,
            CompressionConfig {
                codebook: params(256),
                ..base.clone()
            },
        )?;
        run(
            "VGG-16-C128-TIC2",
            &vgg,
            CompressionConfig {
                codebook: params(128).symmetry(Symmetry::Flip),
                ..base.clone()
            },
        )?;
        run(
            "VGG-16-C32-TIC8",
            &vgg,
            CompressionConfig {
                codebook: params(32).symmetry(Symmetry::Dihedral),
                ..base.clone()
            },
        )?;
        run(
            "VGG-16-C64-M13 (per layer)",
            &vgg,
            CompressionConfig {
                codebook: params(64),
                scope: CodebookScope::PerLayer,
                ..base.clone()
            },
        )?;
    }
    if only.is_empty() || only == "resnet" {
        let resnet = resnet18(&mut rng);
        for (name, k, scales) in [
            ("ResNet-18-C256", 256, ScaleScheme::default()),
            ("ResNet-18-C1024", 1024, ScaleScheme::default()),
            ("ResNet-18-C1024N", 1024, ScaleScheme::None),
        ] {
            let scope = CodebookScope::parse_groups(&format!("0-0=64,1-16={k}"))?;
            run(
                name,
                &resnet,
                CompressionConfig {
                    codebook: params(k).scale_scheme(scales),
                    scope,
                    ..base.clone()
                },
            )?;
        }
    }
    println!("| model | clustered kernels (3×3) | clustered fp32 | after | ratio (§2.1) | all conv layers | mean rel. error |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
