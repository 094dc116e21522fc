//! Bring your own model: import a CNN that PyTorch trained and exported to ONNX, cluster its
//! 3×3 kernels into one shared codebook, recalibrate batch norm, fine-tune with the
//! assignments frozen, measure top-1 accuracy on the 10,000 Fashion-MNIST test images after
//! each stage, and export the result back to ONNX (dense weights, for onnxruntime or PyTorch).
//!
//! Run: `cargo run --release --features onnx,data --example onnx_finetune -- [--model
//! tests/data/onnx/resnet_small_bn.onnx] [--k 16] [--epochs 1] [--lr 0.01]
//! [--out target/onnx_finetune] [--seed 0]`.
//!
//! Data: `$FASHION_MNIST_DIR`, else the Debian package `dataset-fashion-mnist`, else the
//! 6,000 / 1,000-image slice vendored in this repository.

use std::path::PathBuf;
use std::time::Instant;

use clustered_conv::data::{FashionMnist, LabelledImages, FASHION_MNIST_MEAN_STD};
use clustered_conv::io::{read_onnx, write_onnx};
use clustered_conv::nn::{Layer, LrSchedule, Network, Sgd, SgdState};
use clustered_conv::{CompressionConfig, KernelCodebook};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// mimalloc, not glibc's allocator: it keeps the training step's large freed buffers for
/// reuse instead of returning them to the system and page-faulting them back (README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const BATCH: usize = 128;

/// Command-line settings.
struct Args {
    model: PathBuf,
    k: usize,
    epochs: usize,
    lr: f64,
    out: PathBuf,
    seed: u64,
}

fn parse_args() -> Res<Args> {
    let mut args = Args {
        model: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/onnx/resnet_small_bn.onnx"
        )),
        k: 16,
        epochs: 1,
        lr: 0.01,
        out: PathBuf::from("target/onnx_finetune"),
        seed: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => args.model = value()?.into(),
            "--k" => args.k = value()?.parse()?,
            "--epochs" => args.epochs = value()?.parse()?,
            "--lr" => args.lr = value()?.parse()?,
            "--out" => args.out = value()?.into(),
            "--seed" => args.seed = value()?.parse()?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(args)
}

/// Top-1 accuracy on a whole split, in batches.
fn accuracy(net: &Network<f32>, set: &LabelledImages) -> Res<f64> {
    let rows: Vec<usize> = (0..set.len()).collect();
    let (mean, std) = FASHION_MNIST_MEAN_STD;
    let (x, labels) = set.batch(&rows, mean, std)?;
    Ok(net.accuracy(x.view(), &labels, 500)?)
}

/// One epoch of SGD over the training split in a seeded random order.
fn train_epoch(
    net: &mut Network<f32>,
    train: &LabelledImages,
    sgd: &Sgd,
    epoch: usize,
    states: &mut Vec<SgdState<f32>>,
    rng: &mut ChaCha8Rng,
) -> Res<()> {
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(rng);
    let batches: Vec<&[usize]> = order.chunks(BATCH).collect();
    let bar = ProgressBar::new(batches.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "fine-tune epoch {msg} [{bar:30}] {pos}/{len} batches {elapsed} ETA {eta}",
    )?);
    bar.set_message(format!("{}", epoch + 1));
    let (mean, std) = FASHION_MNIST_MEAN_STD;
    for rows in batches {
        let (x, labels) = train.batch(rows, mean, std)?;
        net.train_step(x.view(), &labels, sgd, epoch as f64, states)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Bytes of the clustered layers' 3×3 weights as f32, and as stored (paper §2.1: indices of
/// ⌈log2 K⌉ bits, f16 scales, and the f32 codebook).
fn clustered_bytes(net: &Network<f32>, k: usize) -> (f64, f64) {
    let index_bits = (k as f64).log2().ceil();
    let (mut dense, mut stored) = (0.0, 0.0);
    for layer in &net.layers {
        if let Layer::Clustered { layer, .. } = layer {
            let kernels = (layer.out_channels() * layer.in_channels()) as f64;
            dense += kernels * 9.0 * 4.0;
            stored += kernels * (index_bits + 16.0) / 8.0;
        }
    }
    let codebooks: f64 = net
        .codebooks
        .iter()
        .map(|c| c.centroids().len() as f64 * 4.0)
        .sum();
    (dense, stored + codebooks)
}

fn main() -> Res<()> {
    let args = parse_args()?;
    let vendored = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/fashion-mnist-slice"
    ));
    let data = FashionMnist::load(None, Some(&vendored))?;
    println!(
        "data: {} ({} train, {} test images)",
        data.source.dir().display(),
        data.train.len(),
        data.test.len()
    );
    let model = read_onnx(&args.model)?;
    println!(
        "model: {} ({}, opset {}): {} layers",
        args.model.display(),
        model.producer,
        model.opset,
        model.network.layers.len()
    );
    let started = Instant::now();
    let before = accuracy(&model.network, &data.test)?;
    let config = CompressionConfig {
        codebook: KernelCodebook::params(args.k).seed(args.seed).n_init(2),
        ..CompressionConfig::default()
    };
    let mut net = model.network.compress(&config)?;
    net.round_scales()?;
    let compressed = accuracy(&net, &data.test)?;
    let (mean, std) = FASHION_MNIST_MEAN_STD;
    let calibration: Vec<_> = (0..20)
        .map(|b| {
            data.train.batch(
                &((b * BATCH..(b + 1) * BATCH)
                    .map(|i| i % data.train.len())
                    .collect::<Vec<_>>()),
                mean,
                std,
            )
        })
        .collect::<Result<_, _>>()?;
    net.recalibrate_batch_norm(calibration.iter().map(|(x, _)| x.view()))?;
    let recalibrated = accuracy(&net, &data.test)?;
    let sgd = Sgd {
        lr: args.lr,
        momentum: 0.9,
        weight_decay: 5e-4,
        schedule: LrSchedule::Cosine {
            epochs: args.epochs,
        },
    };
    let mut states = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    for epoch in 0..args.epochs {
        train_epoch(&mut net, &data.train, &sgd, epoch, &mut states, &mut rng)?;
    }
    net.round_scales()?;
    let finetuned = accuracy(&net, &data.test)?;
    let seconds = started.elapsed().as_secs_f64();
    std::fs::create_dir_all(&args.out)?;
    let exported = args.out.join("compressed_dense.onnx");
    let [c, h, w] = model.input_shape;
    let chw = [c.unwrap_or(1), h.unwrap_or(28), w.unwrap_or(28)];
    write_onnx(&exported, &net, Some(&model.layer_names), chw)?;
    let (dense, stored) = clustered_bytes(&net, args.k);
    println!("\n| stage | top-1 accuracy |\n|---|---|");
    println!("| imported (dense) | {:.2} % |", 100.0 * before);
    println!(
        "| clustered, K = {} shared, f16 scales | {:.2} % |",
        args.k,
        100.0 * compressed
    );
    println!(
        "| + batch-norm recalibration (20×{BATCH} images) | {:.2} % |",
        100.0 * recalibrated
    );
    println!(
        "| + {} fine-tuning epoch(s), lr {} | {:.2} % |",
        args.epochs,
        args.lr,
        100.0 * finetuned
    );
    println!(
        "\n3×3 weights: {:.0} bytes as f32 → {:.0} bytes clustered ({:.1}×); total time {:.0} s; \
         ONNX export (dense weights) written to {}",
        dense,
        stored,
        dense / stored,
        seconds,
        exported.display()
    );
    Ok(())
}
