//! The flagship job: train a small VGG-style CNN on Fashion-MNIST, compress its 3×3 kernels
//! into one shared codebook at several settings, fine-tune each (assignments frozen; centroids,
//! scales, batch norm and classifier trained), and report accuracy, compression and inference
//! time in one table — printed, and written as CSV and JSON (and, with the `safetensors`
//! feature, the trained and compressed models) under `--out`.
//!
//! Data: `--data DIR`, else `$FASHION_MNIST_DIR`, else the Debian package
//! `dataset-fashion-mnist`, else the 6,000 / 1,000-image slice vendored in this repository.
//!
//! Run: `cargo run --release --features safetensors,data --example fashion_mnist -- [--quick]
//! [--data DIR] [--epochs N] [--finetune-epochs N] [--configs C256,C64,C16,C16N]
//! [--train-limit N] [--out DIR] [--seed N]`.
//!
//! Settings: `C<K>` = shared codebook of K centroids with f16 scales; `C<K>N` = no scales
//! (raw kernels clustered); a `-TIC2`/`-TIC4`/`-TIC8` suffix adds flip/rotation invariance.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clustered_conv::data::{FashionMnist, LabelledImages, FASHION_MNIST_MEAN_STD};
use clustered_conv::nn::{random_crop_flip, Layer, LrSchedule, Network, Sgd, SgdState};
use clustered_conv::{CompressionConfig, KernelCodebook, ScaleScheme, Symmetry};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array4;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[path = "common/flagship.rs"]
mod flagship;

use flagship::build_network;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const BATCH: usize = 64;

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
        Some(k) => (k, ScaleScheme::None),
        None => (body, ScaleScheme::default()),
    };
    Ok(Setting {
        name: spec.to_string(),
        config: CompressionConfig {
            codebook: KernelCodebook::params(k.parse()?)
                .symmetry(symmetry)
                .scale_scheme(scales)
                .seed(seed)
                .n_init(2)
                .max_iter(100),
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
    images_per_epoch: usize,
    sgd: &Sgd,
    seed: u64,
    label: &str,
) -> Res<()> {
    let (mean, std) = FASHION_MNIST_MEAN_STD;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..data.train.len()).collect();
    let mut states: Vec<SgdState<f32>> = Vec::new();
    let batches = images_per_epoch.min(data.train.len()) / BATCH;
    for epoch in 0..epochs {
        order.shuffle(&mut rng);
        let start = Instant::now();
        let bar = batch_bar(batches, &format!("{label} epoch {}/{epochs}", epoch + 1));
        let mut total = 0.0;
        for (b, rows) in order.chunks_exact(BATCH).take(batches).enumerate() {
            let (x, labels) = data.train.batch(rows, mean, std)?;
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
    let (x, labels) = data.batch(&rows, mean, std)?;
    Ok(net.accuracy(x.view(), &labels, 500)?)
}

/// Batch-norm statistics re-estimated on 32 batches of training images (no augmentation).
fn recalibrate(net: &mut Network<f32>, train: &LabelledImages, seed: u64) -> Res<()> {
    let (mean, std) = FASHION_MNIST_MEAN_STD;
    let mut rows: Vec<usize> = (0..train.len()).collect();
    rows.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let batches: Vec<Array4<f32>> = rows
        .chunks_exact(BATCH)
        .take(32)
        .map(|r| train.batch(r, mean, std).map(|(x, _)| x))
        .collect::<Result<_, _>>()?;
    net.recalibrate_batch_norm(batches.iter().map(|b| b.view()))?;
    Ok(())
}

/// Test accuracy and the wall time of that evaluation (batches of 500 images).
fn timed_accuracy(net: &Network<f32>, data: &LabelledImages) -> Res<(f64, f64)> {
    let t = Instant::now();
    let acc = accuracy(net, data)?;
    Ok((acc, t.elapsed().as_secs_f64()))
}

/// One row of the results table.
#[derive(Debug, serde::Serialize)]
struct Row {
    model: String,
    accuracy: f64,
    after_clustering: Option<f64>,
    after_recalibration: Option<f64>,
    ratio_3x3: f64,
    ratio_model: f64,
    inference_s: f64,
    speedup: f64,
    train_s: f64,
}

/// Compression of the 3×3 weights (paper §2.1: 32-bit originals; indices, scales and the
/// 32-bit codebooks after, plus any convolution left dense) and of the whole model (batch norm
/// and the classifier at 32 bits on both sides).
fn ratios(net: &Network<f32>, setting: &Setting) -> (f64, f64) {
    let codebook = setting.config.codebook.check().expect("valid settings");
    let index_bits = ((codebook.k() * codebook.symmetry().transforms()) as f64)
        .log2()
        .ceil();
    let scale_bits = f64::from(codebook.scale_scheme().bits());
    let (mut conv_before, mut conv_after, mut other) = (0.0, 0.0, 0.0);
    for layer in &net.layers {
        match layer {
            Layer::Conv(c) => {
                conv_before += c.weight().len() as f64 * 32.0;
                conv_after += c.weight().len() as f64 * 32.0;
            }
            Layer::Clustered { layer, .. } => {
                let kernels = (layer.out_channels() * layer.in_channels()) as f64;
                conv_before += kernels * 9.0 * 32.0;
                conv_after += kernels * (index_bits + scale_bits);
            }
            Layer::BatchNorm(bn) => other += 2.0 * bn.gamma.len() as f64 * 32.0,
            Layer::Linear(lin) => other += (lin.weight.len() + lin.bias.len()) as f64 * 32.0,
            _ => {}
        }
    }
    conv_after += net
        .codebooks
        .iter()
        .map(|c| c.centroids().len() as f64 * 32.0)
        .sum::<f64>();
    (
        conv_before / conv_after,
        (conv_before + other) / (conv_after + other),
    )
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
    // The slice vendored in this repository: used when the real data is not installed.
    let vendored = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist-slice");
    let explicit = arg("--data").map(PathBuf::from);
    let mut data = FashionMnist::load(explicit.as_deref(), Some(&vendored))?;
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
    let epochs: usize = arg("--epochs").map_or(Ok(if quick { 3 } else { 5 }), |v| v.parse())?;
    let finetune: usize = arg("--finetune-epochs").map_or(Ok(1), |v| v.parse())?;
    // The first layer (1 input channel, 32 kernels) stays dense unless asked: its kernels are
    // few (1.2 KB) and unlike all the others, and clustering them costs accuracy.
    let keep_first_dense = !flag("--cluster-first");
    let finetune_lr: f64 = arg("--finetune-lr").map_or(Ok(0.003), |v| v.parse())?;
    let finetune_images: usize =
        arg("--finetune-images").map_or(Ok(if quick { 6000 } else { 20_000 }), |v| v.parse())?;
    let default_configs = if quick {
        "C64,C64N-TIC4"
    } else {
        "C256,C64-TIC4,C64N-TIC4"
    };
    let settings: Vec<Setting> = arg("--configs")
        .unwrap_or_else(|| default_configs.to_string())
        .split(',')
        .map(|s| parse_setting(s.trim(), seed))
        .collect::<Res<_>>()?;
    let out_dir = PathBuf::from(arg("--out").unwrap_or_else(|| "target/fashion_mnist".into()));
    std::fs::create_dir_all(&out_dir)?;
    println!(
        "data: {} ({} train / {} test images); {epochs} epochs, then per setting {finetune} \
         fine-tuning epoch(s) of {} images; {} rayon threads",
        data.source.dir().display(),
        data.train.len(),
        data.test.len(),
        finetune_images.min(data.train.len()),
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
    match arg("--load-dense") {
        #[cfg(feature = "safetensors")]
        Some(path) => save::load_into(&mut net, std::path::Path::new(&path))?,
        #[cfg(not(feature = "safetensors"))]
        Some(_) => return Err("--load-dense needs the `safetensors` feature".into()),
        None => train(&mut net, &data, epochs, usize::MAX, &sgd, seed + 1, "train")?,
    }
    let train_s = t.elapsed().as_secs_f64();
    let (dense_acc, dense_time) = timed_accuracy(&net, &data.test)?;
    #[cfg(feature = "safetensors")]
    save::save(&net, &out_dir.join("dense.safetensors"), None)?;
    let mut rows = vec![Row {
        model: "dense".into(),
        accuracy: dense_acc,
        after_clustering: None,
        after_recalibration: None,
        ratio_3x3: 1.0,
        ratio_model: 1.0,
        inference_s: dense_time,
        speedup: 1.0,
        train_s,
    }];
    for setting in &settings {
        let t = Instant::now();
        let mut compressed = if keep_first_dense {
            net.compress_where(&setting.config, |_, c| c.in_channels() > 1)?
        } else {
            net.compress(&setting.config)?
        };
        let after = accuracy(&compressed, &data.test)?;
        recalibrate(&mut compressed, &data.train, seed + 3)?;
        let recalibrated = accuracy(&compressed, &data.test)?;
        let ft = Sgd {
            lr: finetune_lr,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: LrSchedule::Cosine { epochs: finetune },
        };
        let label = format!("fine-tune {}", setting.name);
        train(
            &mut compressed,
            &data,
            finetune,
            finetune_images,
            &ft,
            seed + 2,
            &label,
        )?;
        let train_s = t.elapsed().as_secs_f64();
        compressed.round_scales()?;
        let (acc, time) = timed_accuracy(&compressed, &data.test)?;
        let (ratio_3x3, ratio_model) = ratios(&compressed, setting);
        #[cfg(feature = "safetensors")]
        save::save(
            &compressed,
            &out_dir.join(format!("{}.safetensors", setting.name)),
            Some(setting.config.codebook.check()?.scale_scheme()),
        )?;
        rows.push(Row {
            model: setting.name.clone(),
            accuracy: acc,
            after_clustering: Some(after),
            after_recalibration: Some(recalibrated),
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
        "\n| model | test accuracy | right after clustering | + BN recalibration | 3×3 ratio \
         (§2.1) | model ratio | test-set inference | speed-up | train / fine-tune time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {:.1}× | {:.1}× | {:.2} s | {:.2}× | {:.0} s |",
            r.model,
            pct(r.accuracy),
            r.after_clustering.map_or("–".into(), pct),
            r.after_recalibration.map_or("–".into(), pct),
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
        "model,accuracy,after_clustering,after_recalibration,ratio_3x3,ratio_model,inference_s,\
         speedup,train_s"
    )?;
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
    for r in rows {
        writeln!(
            csv,
            "{},{:.4},{},{},{:.3},{:.3},{:.4},{:.3},{:.1}",
            r.model,
            r.accuracy,
            opt(r.after_clustering),
            opt(r.after_recalibration),
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
    use clustered_conv::{CompressedLayer, CompressedNetwork, ScaleScheme, ScaleStorage};

    pub fn save(
        net: &Network<f32>,
        path: &std::path::Path,
        scales: Option<ScaleScheme>,
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
                // Layers without parameters.
                _ => {}
            }
        }
        let mut network = CompressedNetwork::new(
            net.codebooks.clone(),
            layers,
            scales.unwrap_or(ScaleScheme::L2(ScaleStorage::F32)),
        )?;
        // Fine-tuning moved the scales off the f16 grid: store them rounded.
        network.round_scales()?;
        let mut model = CompressedModel::new(network);
        model.passthrough = passthrough;
        model.save(path)
    }

    /// Overwrites the parameters of `net` (built by `build_network`) with those of a dense
    /// model written by [`save`].
    pub fn load_into(
        net: &mut Network<f32>,
        path: &std::path::Path,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let model = CompressedModel::load(path)?;
        let tensor = |name: String| -> Result<ndarray::ArrayD<f32>, Box<dyn std::error::Error>> {
            let t = model
                .passthrough
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| format!("{} has no tensor {name}", path.display()))?;
            Ok(t.to_f32()?)
        };
        let vector = |name: String| -> Result<ndarray::Array1<f32>, Box<dyn std::error::Error>> {
            Ok(tensor(name)?.into_dimensionality()?)
        };
        for (l, layer) in net.layers.iter_mut().enumerate() {
            let name = format!("layers.{l}");
            match layer {
                Layer::Conv(c) => {
                    let stored = model
                        .network
                        .layers()
                        .iter()
                        .position(|s| s.name() == name)
                        .ok_or_else(|| format!("{} has no layer {name}", path.display()))?;
                    *c = model.network.dense_layer(stored)?;
                }
                Layer::BatchNorm(bn) => {
                    bn.gamma = vector(format!("{name}.weight"))?;
                    bn.beta = vector(format!("{name}.bias"))?;
                    bn.running_mean = vector(format!("{name}.running_mean"))?;
                    bn.running_var = vector(format!("{name}.running_var"))?;
                }
                Layer::Linear(lin) => {
                    lin.weight = tensor(format!("{name}.weight"))?.into_dimensionality()?;
                    lin.bias = vector(format!("{name}.bias"))?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}
