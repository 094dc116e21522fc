//! The flagship job: train a small VGG-style CNN on Fashion-MNIST, compress its 3×3 kernels
//! into one shared codebook at several settings, fine-tune each (assignments frozen; centroids,
//! scales, batch norm and classifier trained), and report accuracy, compression and inference
//! time in one table — printed, and written as CSV and JSON (and, with the `safetensors`
//! feature, the trained and compressed models) under `--out`.
//!
//! Data: `--data DIR`, else `$FASHION_MNIST_DIR`, else the Debian package
//! `dataset-fashion-mnist`, else the 6,000 / 1,000-image slice vendored in this repository.
//!
//! Run: `cargo run --release --features safetensors --example fashion_mnist -- [--quick]
//! [--data DIR] [--epochs N] [--finetune-epochs N] [--configs C256,C64,C16,C16N]
//! [--train-limit N] [--out DIR] [--seed N]`.
//!
//! Settings: `C<K>` = shared codebook of K centroids with f16 scales; `C<K>N` = no scales
//! (raw kernels clustered); a `-TIC2`/`-TIC4`/`-TIC8` suffix adds flip/rotation invariance.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clustered_conv::nn::{
    random_crop_flip, BatchNorm2d, Layer, Linear, LrSchedule, MaxPool2d, Network, Sgd, SgdState,
};
use clustered_conv::{
    compression_ratio, CompressionConfig, Conv2d, ConvGeometry, FashionMnist, LabelledImages,
    ScalePrecision, Symmetry, FASHION_MNIST_MEAN_STD,
};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array1, Array2, Array4};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// `(in, out, pool after)` of the five 3×3 convolutions: 32-32-pool-64-64-pool-128-pool.
const BLOCKS: [(usize, usize, bool); 5] = [
    (1, 32, false),
    (32, 32, true),
    (32, 64, false),
    (64, 64, true),
    (64, 128, true),
];
const FEATURES: usize = 128 * 3 * 3;
const BATCH: usize = 64;

/// conv-BN-ReLU blocks, max-pools, one linear layer; He-normal convolutions.
fn build_network(rng: &mut ChaCha8Rng) -> Res<Network<f32>> {
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
            }));
        }
    }
    let bound = (1.0 / FEATURES as f32).sqrt();
    layers.push(Layer::Flatten);
    layers.push(Layer::Linear(Linear {
        weight: Array2::from_shape_simple_fn((10, FEATURES), || rng.random_range(-bound..bound)),
        bias: Array1::zeros(10),
    }));
    Ok(Network::new(layers))
}

/// One compression setting of the table.
#[derive(Clone, Debug)]
struct Setting {
    name: String,
    config: CompressionConfig,
}

fn parse_setting(spec: &str, seed: u64) -> Res<Setting> {
    let (base, symmetry) = match spec.split_once("-TIC") {
        Some((b, "2")) => (b, Symmetry::Flip),
        Some((b, "4")) => (b, Symmetry::Flips),
        Some((b, "8")) => (b, Symmetry::Dihedral),
        Some(_) => return Err(format!("unknown TIC suffix in {spec:?}").into()),
        None => (spec, Symmetry::Identity),
    };
    let body = base
        .strip_prefix('C')
        .ok_or_else(|| format!("setting {spec:?} must look like C256, C16N or C64-TIC2"))?;
    let (k, scales) = match body.strip_suffix('N') {
        Some(k) => (k, ScalePrecision::None),
        None => (body, ScalePrecision::F16),
    };
    Ok(Setting {
        name: spec.to_string(),
        config: CompressionConfig {
            k: k.parse()?,
            symmetry,
            scales,
            seed,
            n_init: 2,
            max_iter: 100,
            ..CompressionConfig::default()
        },
    })
}

/// A progress bar over one epoch's batches (hidden when stderr is not a terminal).
fn batch_bar(len: usize, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:32} [{bar:30}] {pos}/{len} batches {elapsed} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

/// SGD over shuffled, augmented mini-batches; prints the test accuracy after every epoch.
fn train(
    net: &mut Network<f32>,
    data: &FashionMnist,
    epochs: usize,
    sgd: &Sgd,
    seed: u64,
    label: &str,
) -> Res<()> {
    let (mean, std) = FASHION_MNIST_MEAN_STD;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..data.train.len()).collect();
    let mut states: Vec<SgdState<f32>> = Vec::new();
    let batches = data.train.len() / BATCH;
    for epoch in 0..epochs {
        order.shuffle(&mut rng);
        let start = Instant::now();
        let bar = batch_bar(batches, &format!("{label} epoch {}/{epochs}", epoch + 1));
        let mut total = 0.0;
        for (b, rows) in order.chunks_exact(BATCH).enumerate() {
            let (x, labels) = data.train.batch(rows, mean, std);
            let x = random_crop_flip(x.view(), 2, -mean / std, &mut rng);
            total += net.train_step(x.view(), &labels, sgd, epoch, &mut states)?;
            bar.inc(1);
            if b % 10 == 0 {
                bar.set_message(format!(
                    "{label} epoch {}/{epochs} loss {:.3}",
                    epoch + 1,
                    total / (b + 1) as f64
                ));
            }
        }
        bar.finish_and_clear();
        let acc = accuracy(net, &data.test)?;
        eprintln!(
            "{label} epoch {}/{epochs}: loss {:.3}, test accuracy {:.2} % ({:.0} s)",
            epoch + 1,
            total / batches.max(1) as f64,
            100.0 * acc,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn accuracy(net: &Network<f32>, data: &LabelledImages) -> Res<f64> {
    let (mean, std) = FASHION_MNIST_MEAN_STD;
    let rows: Vec<usize> = (0..data.len()).collect();
    let (x, labels) = data.batch(&rows, mean, std);
    Ok(net.accuracy(x.view(), &labels, 500)?)
}

/// Median wall time of three evaluations of the test set.
fn inference_seconds(net: &Network<f32>, data: &LabelledImages) -> Res<f64> {
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        accuracy(net, data)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[1])
}

/// One row of the results table.
#[derive(Debug, serde::Serialize)]
struct Row {
    model: String,
    accuracy: f64,
    after_clustering: Option<f64>,
    ratio_3x3: f64,
    ratio_model: f64,
    inference_s: f64,
    speedup: f64,
    train_s: f64,
}

/// Bits of the 3×3 weights and of the whole model (other parameters at 32 bits).
fn ratios(net: &Network<f32>, setting: Option<&Setting>) -> (f64, f64) {
    let kernels: u64 = BLOCKS.iter().map(|&(i, o, _)| (i * o) as u64).sum();
    let other: u64 = net
        .layers
        .iter()
        .map(|l| match l {
            Layer::BatchNorm(bn) => 2 * bn.gamma.len() as u64,
            Layer::Linear(lin) => (lin.weight.len() + lin.bias.len()) as u64,
            _ => 0,
        })
        .sum();
    let dense_bits = (kernels * 9 + other) as f64 * 32.0;
    let Some(s) = setting else {
        return (1.0, 1.0);
    };
    let k = s.config.k;
    let index_bits = ((k * s.config.symmetry.transforms()) as f64).log2().ceil() as u32;
    let scale_bits = s.config.scales.bits();
    let ratio = compression_ratio(kernels, 9, index_bits, scale_bits, k);
    let conv_bits = (kernels * 9 * 32) as f64 / ratio;
    (ratio, dense_bits / (conv_bits + other as f64 * 32.0))
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = flag("--quick");
    let seed: u64 = arg("--seed").map_or(Ok(2018), |v| v.parse())?;
    let mut data = FashionMnist::load(arg("--data").map(PathBuf::from).as_deref())?;
    let limit = arg("--train-limit")
        .map(|v| v.parse::<usize>())
        .transpose()?
        .or(quick.then_some(6000));
    if let Some(limit) = limit {
        data.train = data.train.truncated(limit);
    }
    if quick {
        data.test = data.test.truncated(2000);
    }
    let epochs: usize = arg("--epochs").map_or(Ok(if quick { 3 } else { 8 }), |v| v.parse())?;
    let finetune: usize = arg("--finetune-epochs").map_or(Ok(1), |v| v.parse())?;
    let default_configs = if quick { "C64,C16N" } else { "C256,C64,C16N" };
    let settings: Vec<Setting> = arg("--configs")
        .unwrap_or_else(|| default_configs.to_string())
        .split(',')
        .map(|s| parse_setting(s.trim(), seed))
        .collect::<Res<_>>()?;
    let out_dir = PathBuf::from(arg("--out").unwrap_or_else(|| "target/fashion_mnist".into()));
    std::fs::create_dir_all(&out_dir)?;
    println!(
        "data: {} ({} train / {} test images); {epochs} epochs, {finetune} fine-tuning epoch(s) \
         per setting; {} rayon threads",
        data.source.dir().display(),
        data.train.len(),
        data.test.len(),
        rayon::current_num_threads()
    );

    let total = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut net = build_network(&mut rng)?;
    let sgd = Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        schedule: LrSchedule::Cosine { epochs },
    };
    let t = Instant::now();
    train(&mut net, &data, epochs, &sgd, seed + 1, "train")?;
    let train_s = t.elapsed().as_secs_f64();
    let dense_acc = accuracy(&net, &data.test)?;
    let dense_time = inference_seconds(&net, &data.test)?;
    #[cfg(feature = "safetensors")]
    save::save(&net, &out_dir.join("dense.safetensors"), None)?;
    let mut rows = vec![Row {
        model: "dense".into(),
        accuracy: dense_acc,
        after_clustering: None,
        ratio_3x3: 1.0,
        ratio_model: 1.0,
        inference_s: dense_time,
        speedup: 1.0,
        train_s,
    }];
    for setting in &settings {
        let t = Instant::now();
        let mut compressed = net.compress(&setting.config)?;
        let after = accuracy(&compressed, &data.test)?;
        let ft = Sgd {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: LrSchedule::Cosine { epochs: finetune },
        };
        let label = format!("fine-tune {}", setting.name);
        train(&mut compressed, &data, finetune, &ft, seed + 2, &label)?;
        let train_s = t.elapsed().as_secs_f64();
        compressed.round_scales(setting.config.scales)?;
        let acc = accuracy(&compressed, &data.test)?;
        let time = inference_seconds(&compressed, &data.test)?;
        let (ratio_3x3, ratio_model) = ratios(&compressed, Some(setting));
        #[cfg(feature = "safetensors")]
        save::save(
            &compressed,
            &out_dir.join(format!("{}.safetensors", setting.name)),
            Some(setting.config.scales),
        )?;
        rows.push(Row {
            model: setting.name.clone(),
            accuracy: acc,
            after_clustering: Some(after),
            ratio_3x3,
            ratio_model,
            inference_s: time,
            speedup: dense_time / time,
            train_s,
        });
    }
    print_and_write(&rows, &out_dir)?;
    println!(
        "total wall time {:.0} s; results in {}",
        total.elapsed().as_secs_f64(),
        out_dir.display()
    );
    Ok(())
}

fn print_and_write(rows: &[Row], out_dir: &std::path::Path) -> Res<()> {
    let pct = |v: f64| format!("{:.2} %", 100.0 * v);
    println!(
        "\n| model | test accuracy | right after clustering | 3×3 ratio (§2.1) | model ratio | \
         test-set inference | speed-up | train / fine-tune time |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.1}× | {:.1}× | {:.2} s | {:.2}× | {:.0} s |",
            r.model,
            pct(r.accuracy),
            r.after_clustering.map_or("–".into(), pct),
            r.ratio_3x3,
            r.ratio_model,
            r.inference_s,
            r.speedup,
            r.train_s
        );
    }
    let mut csv = std::fs::File::create(out_dir.join("results.csv"))?;
    writeln!(
        csv,
        "model,accuracy,after_clustering,ratio_3x3,ratio_model,inference_s,speedup,train_s"
    )?;
    for r in rows {
        writeln!(
            csv,
            "{},{:.4},{},{:.3},{:.3},{:.4},{:.3},{:.1}",
            r.model,
            r.accuracy,
            r.after_clustering
                .map_or(String::new(), |v| format!("{v:.4}")),
            r.ratio_3x3,
            r.ratio_model,
            r.inference_s,
            r.speedup,
            r.train_s
        )?;
    }
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(rows)?,
    )?;
    Ok(())
}

/// Models as files: the convolutions as a compressed-model file (dense ones stay dense), batch
/// norm and the classifier as pass-through tensors, all named `layers.<index>.*`.
#[cfg(feature = "safetensors")]
mod save {
    use clustered_conv::io::{CompressedModel, NamedTensor, TensorDtype};
    use clustered_conv::nn::{Layer, Network};
    use clustered_conv::{CompressedLayer, CompressedNetwork, ScalePrecision};

    pub fn save(
        net: &Network<f32>,
        path: &std::path::Path,
        scales: Option<ScalePrecision>,
    ) -> Result<(), clustered_conv::Error> {
        let mut layers = Vec::new();
        let mut passthrough = Vec::new();
        let mut tensor = |name: String, values: ndarray::ArrayViewD<'_, f32>| {
            passthrough.push(NamedTensor::from_f32(name, TensorDtype::F32, &values));
        };
        for (l, layer) in net.layers.iter().enumerate() {
            let name = format!("layers.{l}");
            match layer {
                Layer::Conv(c) => layers.push(CompressedLayer::Dense {
                    name,
                    layer: c.clone(),
                }),
                Layer::Clustered { layer, codebook } => layers.push(CompressedLayer::Clustered {
                    name,
                    codebook: *codebook,
                    layer: layer.clone(),
                }),
                Layer::BatchNorm(bn) => {
                    tensor(format!("{name}.weight"), bn.gamma.view().into_dyn());
                    tensor(format!("{name}.bias"), bn.beta.view().into_dyn());
                    tensor(
                        format!("{name}.running_mean"),
                        bn.running_mean.view().into_dyn(),
                    );
                    tensor(
                        format!("{name}.running_var"),
                        bn.running_var.view().into_dyn(),
                    );
                }
                Layer::Linear(lin) => {
                    tensor(format!("{name}.weight"), lin.weight.view().into_dyn());
                    tensor(format!("{name}.bias"), lin.bias.view().into_dyn());
                }
                Layer::Relu | Layer::MaxPool(_) | Layer::Flatten => {}
            }
        }
        let mut network = CompressedNetwork {
            codebooks: net.codebooks.clone(),
            layers,
            scales: scales.unwrap_or(ScalePrecision::F32),
        };
        // Fine-tuning moved the scales off the f16 grid: store them rounded.
        network.round_scales()?;
        let mut model = CompressedModel::new(network);
        model.passthrough = passthrough;
        model.save(path)
    }
}
