//! The flagship job: train a small VGG-style CNN on Fashion-MNIST, compress its 3×3 kernels
//! into one shared codebook at several settings, fine-tune each (assignments frozen; centroids,
//! scales, batch norm and classifier trained, distilled from the dense network), and report
//! accuracy, compression and inference time in one table — printed, and written as CSV and
//! JSON (and, with the `safetensors` feature, the trained and compressed models) under `--out`.
//!
//! Data: `--data DIR`, else `$FASHION_MNIST_DIR`, else the Debian package
//! `dataset-fashion-mnist`, else the 6,000 / 1,000-image slice vendored in this repository.
//!
//! Run: `cargo run --release --features safetensors,data --example fashion_mnist -- [--quick]
//! [--data DIR] [--epochs N] [--batch N] [--lr LR] [--configs C64,C64N-TIC4] [--seeds N]
//! [--finetune-epochs N] [--finetune-images N] [--finetune-lr LR] [--no-distill]
//! [--no-weighted] [--ablation] [--cluster-first] [--diagnostics] [--train-limit N]
//! [--load-dense FILE] [--out DIR] [--seed N]`.
//!
//! `--diagnostics` adds test-set evaluations that the default run leaves out to stay within
//! 15 minutes: after every training epoch, right after clustering, and after batch-norm
//! recalibration (the table's two middle columns, otherwise "–").
//!
//! Settings: `C<K>` = shared codebook of K centroids with f16 scales; `C<K>N` = no scales
//! (raw kernels clustered); a `-TIC2`/`-TIC4`/`-TIC8` suffix adds flip/rotation invariance;
//! a final `-L` gives each clustered layer its own codebook (e.g. `C32-L`, `C32N-TIC4-L`).
//!
//! The compression stage (clustering, batch-norm recalibration, fine-tuning) runs `--seeds`
//! times per setting on the same dense network, with different k-means and shuffling seeds,
//! and the summary gives the mean and the range. `--ablation` runs every setting four times
//! more: distillation on/off × importance-weighted k-means on/off.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clustered_conv::data::{FashionMnist, LabelledImages, FASHION_MNIST_MEAN_STD};
use clustered_conv::nn::{
    random_crop_flip, Distillation, Layer, LrSchedule, Network, Sgd, SgdState,
};
use clustered_conv::{CodebookScope, CompressionConfig, KernelCodebook, ScaleScheme, Symmetry};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array2, Array4};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// mimalloc, not glibc's allocator: it keeps the training step's large freed buffers for
/// reuse instead of returning them to the system and page-faulting them back (README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "common/flagship.rs"]
mod flagship;

use flagship::build_network;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// One compression setting of the table.
#[derive(Clone, Debug)]
struct Setting {
    name: String,
    config: CompressionConfig,
}

/// A setting's name: `C<K>`, `N` for no scales, `-TIC<2|4|8>` for transform-invariant
/// clustering, `-L` for one codebook per layer instead of one for the network.
fn parse_setting(spec: &str, seed: u64) -> Res<Setting> {
    let (spec_base, scope) = match spec.strip_suffix("-L") {
        Some(b) => (b, CodebookScope::PerLayer),
        None => (spec, CodebookScope::Shared),
    };
    let (base, symmetry) = match spec_base.split_once("-TIC") {
        Some((b, "2")) => (b, Symmetry::Flip),
        Some((b, "4")) => (b, Symmetry::Flips),
        Some((b, "8")) => (b, Symmetry::Dihedral),
        Some(_) => return Err(format!("unknown TIC suffix in {spec:?}").into()),
        None => (spec_base, Symmetry::Identity),
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
            scope,
            ..CompressionConfig::default()
        },
    })
}

/// How the compression stage runs: the choices the ablation switches.
#[derive(Clone, Debug)]
struct Recipe {
    /// Mini-batch size of training and fine-tuning.
    batch: usize,
    finetune_epochs: usize,
    /// Training images per fine-tuning epoch. 15,000 by default: on the 5-epoch dense network
    /// (2 seeds) 10,000 / 15,000 / 20,000 images lost 0.78 / 0.72 / 0.60 points with C64 and
    /// 1.53 / 0.94 / 1.24 with C64N-TIC4; 20,000 would push the default run near 15 minutes.
    finetune_images: usize,
    /// Peak fine-tuning lr (cosine). 0.003 by default: on the 5-epoch network 0.001 / 0.003 /
    /// 0.01 measured within the seed spread of each other, 0.02 diverged without scales; on
    /// the 10-epoch one 0.0015 lost 0.19 points more with C64, 0.006 within the spread.
    finetune_lr: f64,
    /// Soft targets from the dense network during fine-tuning (`None`: labels only).
    distill: Option<Distillation>,
    /// k-means weighted by each kernel's gradient-squared importance.
    weighted: bool,
    /// The first layer (1 input channel, 32 kernels) stays dense: its kernels are few (1.2 KB)
    /// and unlike all the others, and clustering them costs accuracy.
    keep_first_dense: bool,
    /// Extra test-set evaluations (`--diagnostics`): after every training epoch, right after
    /// clustering and after batch-norm recalibration. Off by default: each costs 7–9 s.
    diagnostics: bool,
}

impl Recipe {
    /// The row label's suffix in the ablation: which of the two choices are on.
    fn label(&self) -> String {
        let on = |b: bool| if b { '+' } else { '-' };
        format!(" {}KD {}W", on(self.distill.is_some()), on(self.weighted))
    }
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

/// SGD over shuffled, augmented mini-batches of `batch` images; with a teacher, each step's
/// loss is distilled from the teacher's logits on the same augmented images. Prints the
/// test accuracy after every epoch but the last.
fn train(
    net: &mut Network<f32>,
    data: &FashionMnist,
    (epochs, images_per_epoch, batch): (usize, usize, usize),
    sgd: &Sgd,
    teacher: Option<(&Network<f32>, &Distillation)>,
    (seed, label, diagnostics): (u64, &str, bool),
) -> Res<()> {
    let (mean, std) = FASHION_MNIST_MEAN_STD;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..data.train.len()).collect();
    let mut states: Vec<SgdState<f32>> = Vec::new();
    let batches = images_per_epoch.min(data.train.len()) / batch;
    for epoch in 0..epochs {
        order.shuffle(&mut rng);
        let start = Instant::now();
        let bar = batch_bar(batches, &format!("{label} epoch {}/{epochs}", epoch + 1));
        let mut total = 0.0;
        for (b, rows) in order.chunks_exact(batch).take(batches).enumerate() {
            let (x, labels) = data.train.batch(rows, mean, std)?;
            let x = random_crop_flip(x.view(), 2, -mean / std, &mut rng);
            total += match teacher {
                Some((teacher, kd)) => {
                    let soft = teacher.forward(x.view())?;
                    net.train_step_distill(
                        x.view(),
                        &labels,
                        soft.view(),
                        kd,
                        sgd,
                        epoch as f64,
                        &mut states,
                    )?
                }
                None => net.train_step(x.view(), &labels, sgd, epoch as f64, &mut states)?,
            };
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
        // The last epoch's accuracy is the table's (measured by the caller): not twice.
        let acc = if diagnostics && epoch + 1 < epochs {
            format!(
                ", test accuracy {:.2} %",
                100.0 * accuracy(net, &data.test)?
            )
        } else {
            String::new()
        };
        eprintln!(
            "{label} epoch {}/{epochs}: loss {:.3}{acc} ({:.0} s)",
            epoch + 1,
            total / batches.max(1) as f64,
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

/// `count` batches of 64 shuffled training images (no augmentation) with their labels.
fn sample_batches(
    train: &LabelledImages,
    count: usize,
    seed: u64,
) -> Res<Vec<(Array4<f32>, Vec<usize>)>> {
    let (mean, std) = FASHION_MNIST_MEAN_STD;
    let mut rows: Vec<usize> = (0..train.len()).collect();
    rows.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    Ok(rows
        .chunks_exact(64)
        .take(count)
        .map(|r| train.batch(r, mean, std))
        .collect::<Result<_, _>>()?)
}

/// Batch-norm statistics re-estimated on 32 batches of training images (no augmentation).
fn recalibrate(net: &mut Network<f32>, train: &LabelledImages, seed: u64) -> Res<()> {
    let batches = sample_batches(train, 32, seed)?;
    net.recalibrate_batch_norm(batches.iter().map(|(x, _)| x.view()))?;
    Ok(())
}

/// Each kernel's gradient-squared importance on 32 batches of 64 training images, per layer
/// (what the weighted k-means weighs the kernels by).
fn importance(net: &Network<f32>, train: &LabelledImages, seed: u64) -> Res<KernelWeights> {
    let batches = sample_batches(train, 32, seed)?;
    Ok(net.kernel_importance(batches.iter().map(|(x, l)| (x.view(), l.as_slice())))?)
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
    seed: u64,
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

/// Everything `main` reads from the command line.
struct Options {
    quick: bool,
    seed: u64,
    seeds: u64,
    epochs: usize,
    /// Peak lr of the dense training (cosine), as given: `--lr` is not scaled by the batch
    /// (unlike `--finetune-lr`, which is stated for batch 64). Default 0.05 · batch/64.
    lr: f64,
    settings: Vec<Setting>,
    recipe: Recipe,
    ablation: bool,
    load_dense: Option<PathBuf>,
    out_dir: PathBuf,
}

/// The value after `name` on the command line, if any.
fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn parse_options(args: &[String]) -> Res<Options> {
    let flag = |name: &str| args.iter().any(|a| a == name);
    let arg = |name: &str| arg_value(args, name);
    let quick = flag("--quick");
    let seed: u64 = arg("--seed").map_or(Ok(2018), |v| v.parse())?;
    let recipe = Recipe {
        batch: arg("--batch").map_or(Ok(64), |v| v.parse())?,
        finetune_epochs: arg("--finetune-epochs").map_or(Ok(1), |v| v.parse())?,
        finetune_images: arg("--finetune-images").map_or(Ok(15_000), |v| v.parse())?,
        finetune_lr: arg("--finetune-lr").map_or(Ok(0.003), |v| v.parse())?,
        distill: (!flag("--no-distill")).then(Distillation::default),
        weighted: !flag("--no-weighted"),
        keep_first_dense: !flag("--cluster-first"),
        diagnostics: flag("--diagnostics"),
    };
    if recipe.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let lr: f64 = arg("--lr").map_or(Ok(0.05 * recipe.batch as f64 / 64.0), |v| v.parse())?;
    for (name, value) in [("--lr", lr), ("--finetune-lr", recipe.finetune_lr)] {
        if !(value.is_finite() && value > 0.0) {
            return Err(format!("{name} must be a positive number, got {value}").into());
        }
    }
    Ok(Options {
        quick,
        seed,
        seeds: arg("--seeds").map_or(Ok(if quick { 1 } else { 2 }), |v| v.parse())?,
        // 15 dense epochs: 93.44 % (issue 16 asks ≥ 93.2 %) in a 708 s default run on the
        // 2-vCPU Zen 5 machine with the direct 3×3 kernel (README); 10 gave 93.04 % in 813 s
        // on the slower Xeon of earlier sessions, where 15 would pass 15 minutes.
        epochs: arg("--epochs").map_or(Ok(if quick { 3 } else { 15 }), |v| v.parse())?,
        lr,
        settings: arg("--configs")
            .unwrap_or_else(|| "C64,C64N-TIC4".to_string())
            .split(',')
            .map(|s| parse_setting(s.trim(), seed))
            .collect::<Res<_>>()?,
        recipe,
        ablation: flag("--ablation"),
        load_dense: arg("--load-dense").map(PathBuf::from),
        out_dir: PathBuf::from(arg("--out").unwrap_or_else(|| "target/fashion_mnist".into())),
    })
}

/// The data the options ask for: `--data`, the environment or the vendored slice, cut to
/// `--train-limit` (and, with `--quick`, to 6,000 / 2,000 images).
fn load_data(args: &[String], quick: bool) -> Res<FashionMnist> {
    let arg = |name: &str| arg_value(args, name);
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
    Ok(data)
}

/// The dense baseline: trained (SGD, momentum 0.9, peak lr `--lr`, cosine, weight decay
/// 5e-4, random crop + flip), or loaded with `--load-dense`. Returns it with its row.
fn dense_stage(opts: &Options, data: &FashionMnist) -> Res<(Network<f32>, Row)> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut net = build_network(&mut rng)?;
    let sgd = Sgd {
        lr: opts.lr,
        momentum: 0.9,
        weight_decay: 5e-4,
        schedule: LrSchedule::Cosine {
            epochs: opts.epochs,
        },
    };
    let t = Instant::now();
    match &opts.load_dense {
        #[cfg(feature = "safetensors")]
        Some(path) => save::load_into(&mut net, path)?,
        #[cfg(not(feature = "safetensors"))]
        Some(_) => return Err("--load-dense needs the `safetensors` feature".into()),
        None => {
            let shape = (opts.epochs, usize::MAX, opts.recipe.batch);
            let run = (opts.seed + 1, "train", opts.recipe.diagnostics);
            train(&mut net, data, shape, &sgd, None, run)?
        }
    }
    let train_s = t.elapsed().as_secs_f64();
    let (accuracy, inference_s) = timed_accuracy(&net, &data.test)?;
    #[cfg(feature = "safetensors")]
    save::save(&net, &opts.out_dir.join("dense.safetensors"), None)?;
    let row = Row {
        model: "dense".into(),
        seed: opts.seed,
        accuracy,
        after_clustering: None,
        after_recalibration: None,
        ratio_3x3: 1.0,
        ratio_model: 1.0,
        inference_s,
        speedup: 1.0,
        train_s,
    };
    Ok((net, row))
}

/// Each layer's kernel importance ([`Network::kernel_importance`]; `None` for layers without
/// 3×3 kernels), the weights of weighted k-means.
type KernelWeights = Vec<Option<Array2<f64>>>;

/// Clusters `dense` at `setting` (k-means seeded with `seed`, weighted by `importance` when
/// the recipe says so), recalibrates batch norm, fine-tunes with `recipe`, rounds the scales
/// to f16 and measures the result.
fn compression_stage(
    dense: &Network<f32>,
    dense_inference_s: f64,
    data: &FashionMnist,
    (setting, recipe, name): (&Setting, &Recipe, &str),
    (seed, importance): (u64, &KernelWeights),
    out_dir: &Path,
) -> Res<Row> {
    let t = Instant::now();
    let mut config = setting.config.clone();
    config.codebook = config.codebook.seed(seed);
    let select =
        |_: usize, c: &clustered_conv::Conv2d<f32>| !recipe.keep_first_dense || c.in_channels() > 1;
    let mut compressed = if recipe.weighted {
        dense.compress_where_weighted(&config, select, importance)?
    } else {
        dense.compress_where(&config, select)?
    };
    let diagnostic = |net: &Network<f32>| {
        recipe
            .diagnostics
            .then(|| accuracy(net, &data.test))
            .transpose()
    };
    let after = diagnostic(&compressed)?;
    recalibrate(&mut compressed, &data.train, seed + 3)?;
    let recalibrated = diagnostic(&compressed)?;
    let ft = Sgd {
        lr: recipe.finetune_lr * recipe.batch as f64 / 64.0,
        momentum: 0.9,
        weight_decay: 5e-4,
        schedule: LrSchedule::Cosine {
            epochs: recipe.finetune_epochs,
        },
    };
    let shape = (recipe.finetune_epochs, recipe.finetune_images, recipe.batch);
    let teacher = recipe.distill.as_ref().map(|kd| (dense, kd));
    let label = format!("fine-tune {name} (seed {seed})");
    let run = (seed + 2, label.as_str(), recipe.diagnostics);
    train(&mut compressed, data, shape, &ft, teacher, run)?;
    let train_s = t.elapsed().as_secs_f64();
    compressed.round_scales()?;
    let (acc, time) = timed_accuracy(&compressed, &data.test)?;
    let (ratio_3x3, ratio_model) = ratios(&compressed, setting);
    #[cfg(feature = "safetensors")]
    save::save(
        &compressed,
        &out_dir.join(format!("{}-seed{seed}.safetensors", name.replace(' ', ""))),
        Some(config.codebook.check()?.scale_scheme()),
    )?;
    #[cfg(not(feature = "safetensors"))]
    let _ = out_dir;
    Ok(Row {
        model: name.to_string(),
        seed,
        accuracy: acc,
        after_clustering: after,
        after_recalibration: recalibrated,
        ratio_3x3,
        ratio_model,
        inference_s: time,
        speedup: dense_inference_s / time,
        train_s,
    })
}

/// The recipes each setting runs with: the chosen one, or with `--ablation` all four
/// combinations of distillation and weighted k-means (labelled `±KD ±W`).
fn recipes(opts: &Options) -> Vec<(Recipe, String)> {
    if !opts.ablation {
        return vec![(opts.recipe.clone(), String::new())];
    }
    let mut out = Vec::new();
    for distill in [false, true] {
        for weighted in [false, true] {
            let recipe = Recipe {
                distill: distill.then(Distillation::default),
                weighted,
                ..opts.recipe.clone()
            };
            let label = recipe.label();
            out.push((recipe, label));
        }
    }
    out
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let opts = parse_options(&args)?;
    let data = load_data(&args, opts.quick)?;
    std::fs::create_dir_all(&opts.out_dir)?;
    let r = &opts.recipe;
    println!(
        "data: {} ({} train / {} test images); {} epochs of batch {}, then per setting and \
         seed {} fine-tuning epoch(s) of {} images (distillation {}, weighted k-means {}); \
         {} seed(s); {} rayon threads",
        data.source.dir().display(),
        data.train.len(),
        data.test.len(),
        opts.epochs,
        r.batch,
        r.finetune_epochs,
        r.finetune_images.min(data.train.len()),
        if r.distill.is_some() { "on" } else { "off" },
        if r.weighted { "on" } else { "off" },
        opts.seeds,
        rayon::current_num_threads()
    );
    let total = Instant::now();
    let (net, dense_row) = dense_stage(&opts, &data)?;
    let dense_time = dense_row.inference_s;
    let mut rows = vec![dense_row];
    let seeds: Vec<u64> = (0..opts.seeds).map(|s| opts.seed + 100 * s).collect();
    // The importance depends on the dense network and the seed only: computed once per seed
    // and shared by every setting and ablation variant (each computation takes about 5 s).
    let weighted = opts.recipe.weighted || opts.ablation;
    let importances = seeds
        .iter()
        .map(|&seed| {
            if weighted {
                importance(&net, &data.train, seed + 4)
            } else {
                Ok(KernelWeights::new())
            }
        })
        .collect::<Res<Vec<_>>>()?;
    for setting in &opts.settings {
        for (recipe, label) in recipes(&opts) {
            let name = format!("{}{label}", setting.name);
            for (&seed, weights) in seeds.iter().zip(&importances) {
                let stage = (setting, &recipe, name.as_str());
                let seeded = (seed, weights);
                let row = compression_stage(&net, dense_time, &data, stage, seeded, &opts.out_dir)?;
                rows.push(row);
            }
        }
    }
    print_and_write(&rows, &opts.out_dir)?;
    print_spread(&rows);
    println!(
        "total wall time {:.0} s; results in {}",
        total.elapsed().as_secs_f64(),
        opts.out_dir.display()
    );
    Ok(())
}

/// Per model: the mean test accuracy over its seeds, its range, and the mean loss against
/// the dense row.
fn print_spread(rows: &[Row]) {
    let dense = rows[0].accuracy;
    println!("\n| model | seeds | mean accuracy | range | mean loss vs dense |");
    println!("|---|---|---|---|---|");
    let mut names: Vec<&str> = Vec::new();
    for r in &rows[1..] {
        if !names.contains(&r.model.as_str()) {
            names.push(&r.model);
        }
    }
    for name in names {
        let acc: Vec<f64> = rows[1..]
            .iter()
            .filter(|r| r.model == name)
            .map(|r| 100.0 * r.accuracy)
            .collect();
        let mean = acc.iter().sum::<f64>() / acc.len() as f64;
        let (lo, hi) = acc
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &a| (l.min(a), h.max(a)));
        println!(
            "| {name} | {} | {mean:.2} % | {lo:.2}–{hi:.2} % | {:.2} points |",
            acc.len(),
            100.0 * dense - mean
        );
    }
}

fn print_and_write(rows: &[Row], out_dir: &std::path::Path) -> Res<()> {
    let pct = |v: f64| format!("{:.2} %", 100.0 * v);
    println!(
        "\n| model | seed | test accuracy | right after clustering | + BN recalibration | 3×3 ratio \
         (§2.1) | model ratio | test-set inference | speed-up | train / fine-tune time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {:.1}× | {:.1}× | {:.2} s | {:.2}× | {:.0} s |",
            r.model,
            r.seed,
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
        "model,seed,accuracy,after_clustering,after_recalibration,ratio_3x3,ratio_model,inference_s,\
         speedup,train_s"
    )?;
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
    for r in rows {
        writeln!(
            csv,
            "{},{},{:.4},{},{},{:.3},{:.3},{:.4},{:.3},{:.1}",
            r.model,
            r.seed,
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
