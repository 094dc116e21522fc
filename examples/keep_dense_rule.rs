//! Measures the default keep-dense rule of `CompressionConfig`: top-1 accuracy on the 10,000
//! Fashion-MNIST test images of the trained ONNX models in `tests/data/onnx/` after
//! clustering (no fine-tuning), with the rule on, off, and at other thresholds, for a shared
//! codebook at K = 16, 64, 256 and per-layer codebooks; plus an error budget. The bytes are
//! the conv layers' after compression (dense layers at fp32, codebooks included).
//!
//! Run: `cargo run --release --features onnx,data --example keep_dense_rule`.
//!
//! Data: `$FASHION_MNIST_DIR`, else the Debian package `dataset-fashion-mnist`, else the
//! 6,000 / 1,000-image slice vendored in this repository (the printed source says which).

use std::path::PathBuf;

use clustered_conv::data::{FashionMnist, LabelledImages, FASHION_MNIST_MEAN_STD};
use clustered_conv::io::read_onnx;
use clustered_conv::nn::Network;
use clustered_conv::{compress, CodebookScope, CompressionConfig, ConvLayer, KernelCodebook};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Top-1 accuracy on a whole split, in batches of 500.
fn accuracy(net: &Network<f32>, set: &LabelledImages) -> Res<f64> {
    let rows: Vec<usize> = (0..set.len()).collect();
    let (mean, std) = FASHION_MNIST_MEAN_STD;
    let (x, labels) = set.batch(&rows, mean, std)?;
    Ok(net.accuracy(x.view(), &labels, 500)?)
}

/// The k×k convolutions as `Network::compress` names them (`layers.<index>`).
fn convolutions(net: &Network<f32>) -> Res<Vec<ConvLayer<f32>>> {
    let names: Vec<String> = (0..net.layers.len())
        .map(|l| format!("layers.{l}"))
        .collect();
    Ok(net.named_convolutions(&names)?.1)
}

/// One table row: accuracy, conv bytes after compression, and the dense layers.
fn row(
    net: &Network<f32>,
    test: &LabelledImages,
    name: &str,
    config: &CompressionConfig,
) -> Res<()> {
    let convs = convolutions(net)?;
    let report = compress(&convs, config)?.report().against(&convs).build()?;
    let acc = accuracy(&net.compress(config)?, test)?;
    let dense: Vec<&str> = report
        .layers
        .iter()
        .filter(|l| l.codebook.is_none())
        .map(|l| l.name.as_str())
        .collect();
    println!(
        "| {name} | {:.2} % | {} | {} |",
        100.0 * acc,
        report.model_bytes_after(),
        dense.join(", ")
    );
    Ok(())
}

/// A config at K with the rule's thresholds (`None`: rule off).
fn config(k: usize, scope: CodebookScope, rule: Option<(usize, usize)>) -> CompressionConfig {
    let mut c = CompressionConfig {
        codebook: KernelCodebook::params(k),
        scope,
        default_keep_dense: rule.is_some(),
        ..CompressionConfig::default()
    };
    if let Some((channels, per_k)) = rule {
        c.keep_dense_image_channels = channels;
        c.keep_dense_kernels_per_k = per_k;
    }
    c
}

fn model_table(path: &std::path::Path, test: &LabelledImages) -> Res<()> {
    let net = read_onnx(path)?.network;
    let convs = convolutions(&net)?;
    let shapes: Vec<String> = convs
        .iter()
        .map(|c| {
            let (o, i, _, _) = c.weight.dim();
            format!("{}: {o}×{i}", c.name)
        })
        .collect();
    println!(
        "\n### {} ({})\n",
        path.file_name().unwrap_or_default().to_string_lossy(),
        shapes.join(", ")
    );
    println!("| config | accuracy | conv bytes after | dense layers |\n|---|---|---|---|");
    let dense_bytes: usize = convs.iter().map(|c| c.weight.len() * 4).sum();
    println!(
        "| dense | {:.2} % | {dense_bytes} | all |",
        100.0 * accuracy(&net, test)?
    );
    let rules = [
        ("rule off", None),
        ("rule: Cin ≤ 3 only", Some((3, 0))),
        ("rule: Cin ≤ 3, kernels < 2K", Some((3, 2))),
        ("rule: Cin ≤ 3, kernels < 4K (default)", Some((3, 4))),
        ("rule: Cin ≤ 3, kernels < 8K", Some((3, 8))),
    ];
    for k in [16, 64, 256] {
        for (name, rule) in rules {
            row(
                &net,
                test,
                &format!("shared K={k}, {name}"),
                &config(k, CodebookScope::Shared, rule),
            )?;
        }
        for (name, rule) in [rules[0], rules[3]] {
            row(
                &net,
                test,
                &format!("per-layer K={k}, {name}"),
                &config(k, CodebookScope::PerLayer, rule),
            )?;
        }
    }
    for e in [0.2, 0.3] {
        let c = CompressionConfig {
            max_error: Some(e),
            default_keep_dense: true,
            ..CompressionConfig::default()
        };
        row(&net, test, &format!("max error {e}, default rule"), &c)?;
    }
    Ok(())
}

fn main() -> Res<()> {
    let vendored = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/fashion-mnist-slice"
    ));
    let data = FashionMnist::load(None, Some(&vendored))?;
    println!(
        "data: {} ({} test images); threads: {}",
        data.source.dir().display(),
        data.test.len(),
        rayon::current_num_threads()
    );
    for model in [
        "vgg_small.onnx",
        "resnet_small.onnx",
        "vgg_small_bn.onnx",
        "resnet_small_bn.onnx",
    ] {
        let path =
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/onnx")).join(model);
        model_table(&path, &data.test)?;
    }
    Ok(())
}
