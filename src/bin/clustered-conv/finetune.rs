//! `finetune`: batch-norm recalibration, then SGD with the cluster assignments frozen (the
//! codebooks, scales, biases and every other layer learn), then the scales rounded to their
//! storage and the network saved.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use clustered_conv::nn::{LrSchedule, Network, Sgd, SgdState};
use ndarray::{Array4, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::dataset_args::{usage, CliResult, DataArgs, Images};
use crate::evaluate::evaluate;
use crate::network::{bar, check_size, input_channels, load, logits};
use crate::pictures;

/// `finetune`'s arguments.
#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// A compressed-network file (from `compress model.onnx`), or an ONNX file (fine-tuned
    /// dense).
    pub model: PathBuf,
    /// Training images and labels.
    #[command(flatten)]
    pub data: DataArgs,
    /// Test images (same formats and normalisation as `--data`): accuracy is measured before
    /// fine-tuning and after every epoch.
    #[arg(long)]
    pub test_data: Option<PathBuf>,
    /// Labels of `--test-data` (`.npy` or IDX).
    #[arg(long)]
    pub test_labels: Option<PathBuf>,
    /// Output compressed-network file (written atomically).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Passes over the training images.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Base learning rate (cosine-annealed to 0 over the epochs).
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// Images per SGD step.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// L2 weight decay.
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// Training batches whose statistics replace the batch-norm running statistics before
    /// fine-tuning (0: none). Clustering shifts every convolution's output; this restores
    /// most of the accuracy before any SGD step.
    #[arg(long, default_value_t = 20)]
    pub recalibrate: usize,
    /// Draw the test accuracy over the epochs (epoch 0: before fine-tuning) as
    /// `accuracy.png` and `accuracy.svg` into this directory; needs `--test-data`.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Seed of the shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// No progress bars.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `finetune`.
pub fn finetune(args: &FinetuneArgs) -> CliResult<()> {
    if args.epochs == 0 || args.batch == 0 || !(args.lr > 0.0 && args.lr.is_finite()) {
        return Err(usage(
            "--epochs and --batch must be ≥ 1 and --lr positive".into(),
        ));
    }
    if args.plot.is_some() && args.test_data.is_none() {
        return Err(usage(
            "--plot draws the test accuracy: give --test-data".into(),
        ));
    }
    let started = Instant::now();
    let mut saved = load(&args.model)?;
    let channels = input_channels(&saved)?;
    let train = args.data.load(channels, true)?;
    check_size(&saved, &train, &args.data.data)?;
    let test = test_set(args, channels)?;
    if let (Some(t), Some(path)) = (&test, &args.test_data) {
        check_size(&saved, t, path)?;
    }
    let mut history = Vec::new();
    record(
        &mut history,
        "loaded",
        &saved.network,
        test.as_ref(),
        args.quiet,
    )?;
    if args.recalibrate > 0 && has_batch_norm(&saved.network) {
        recalibrate(&mut saved.network, &train.images, args)?;
        record(
            &mut history,
            "batch norm recalibrated",
            &saved.network,
            test.as_ref(),
            args.quiet,
        )?;
    }
    train_epochs(
        &mut saved.network,
        &train,
        test.as_ref(),
        args,
        &mut history,
    )?;
    saved.network.round_scales()?;
    saved.save(&args.output)?;
    print_history(&history);
    if let Some(dir) = &args.plot {
        plot_history(&history, dir, args.epochs)?;
    }
    println!(
        "wrote {} in {:.1} s",
        args.output.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `args.epochs` epochs of SGD (cosine schedule), the test accuracy recorded after each.
fn train_epochs(
    network: &mut Network<f32>,
    train: &Images,
    test: Option<&Images>,
    args: &FinetuneArgs,
    history: &mut Vec<Stage>,
) -> CliResult<()> {
    let sgd = Sgd {
        lr: args.lr,
        momentum: args.momentum,
        weight_decay: args.weight_decay,
        schedule: LrSchedule::Cosine {
            epochs: args.epochs,
        },
    };
    let mut states: Vec<SgdState<f32>> = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    for epoch in 0..args.epochs {
        let loss = train_epoch(network, train, &sgd, epoch, &mut states, &mut rng, args)?;
        eprintln!("epoch {}: mean loss {loss:.4}", epoch + 1);
        let stage = format!("epoch {}", epoch + 1);
        record(history, &stage, network, test, args.quiet)?;
    }
    Ok(())
}

fn test_set(args: &FinetuneArgs, channels: usize) -> CliResult<Option<Images>> {
    let Some(data) = &args.test_data else {
        return Ok(None);
    };
    let spec = DataArgs {
        data: data.clone(),
        labels: args.test_labels.clone(),
        normalization: args.data.normalization.clone(),
    };
    Ok(Some(spec.load(channels, true)?))
}

fn has_batch_norm(net: &Network<f32>) -> bool {
    net.layers
        .iter()
        .any(|l| matches!(l, clustered_conv::nn::Layer::BatchNorm(_)))
}

/// Batch-norm statistics from the first `args.recalibrate` training batches.
fn recalibrate(net: &mut Network<f32>, images: &Array4<f32>, args: &FinetuneArgs) -> CliResult<()> {
    let n = images.len_of(Axis(0));
    let batches: Vec<_> = (0..args.recalibrate)
        .map(|b| b * args.batch)
        .take_while(|&start| start < n)
        .map(|start| images.slice_axis(Axis(0), (start..(start + args.batch).min(n)).into()))
        .collect();
    net.recalibrate_batch_norm(batches)?;
    Ok(())
}

/// One epoch of SGD in a seeded random order; the mean loss.
fn train_epoch(
    net: &mut Network<f32>,
    train: &Images,
    sgd: &Sgd,
    epoch: usize,
    states: &mut Vec<SgdState<f32>>,
    rng: &mut ChaCha8Rng,
    args: &FinetuneArgs,
) -> CliResult<f64> {
    let labels = train.labels.as_deref().unwrap_or_default();
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.shuffle(rng);
    let progress = bar(order.len() as u64, "images", args.quiet);
    progress.set_message(format!("epoch {}/{}", epoch + 1, args.epochs));
    let mut total = 0.0;
    for rows in order.chunks(args.batch) {
        let x = train.images.select(Axis(0), rows);
        let y: Vec<usize> = rows.iter().map(|&r| labels[r]).collect();
        total += net.train_step(x.view(), &y, sgd, epoch as f64, states)? * rows.len() as f64;
        progress.inc(rows.len() as u64);
    }
    progress.finish_and_clear();
    Ok(total / order.len().max(1) as f64)
}

/// One stage of fine-tuning and its test accuracy (top-1, top-5), when measured.
type Stage = (String, Option<(f64, f64)>);

fn record(
    history: &mut Vec<Stage>,
    stage: &str,
    net: &Network<f32>,
    test: Option<&Images>,
    quiet: bool,
) -> CliResult<()> {
    let accuracy = match test {
        Some(t) => {
            let result = evaluate(
                &logits(net, t.images.view(), quiet)?,
                t.labels.as_deref().unwrap_or_default(),
            )?;
            eprintln!("{stage}: top-1 {:.2} %", 100.0 * result.top1);
            Some((result.top1, result.top5))
        }
        None => None,
    };
    history.push((stage.to_string(), accuracy));
    Ok(())
}

/// The test accuracy before fine-tuning (after recalibration, if any) and after each epoch.
fn plot_history(history: &[Stage], dir: &std::path::Path, epochs: usize) -> CliResult<()> {
    let measured: Vec<f64> = history.iter().filter_map(|(_, a)| a.map(|a| a.0)).collect();
    let start = measured.len().saturating_sub(epochs + 1);
    let points: Vec<(usize, f64)> = measured[start..]
        .iter()
        .enumerate()
        .map(|(epoch, &top1)| (epoch, 100.0 * top1))
        .collect();
    let title = "test accuracy (top-1) while fine-tuning";
    for path in pictures::accuracy_curve(&points, &dir.join("accuracy"), title)? {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn print_history(history: &[Stage]) {
    if history.iter().all(|(_, a)| a.is_none()) {
        return;
    }
    println!("| stage | top-1 | top-5 |\n|---|---|---|");
    for (stage, accuracy) in history {
        if let Some((top1, top5)) = accuracy {
            println!(
                "| {stage} | {:.2} % | {:.2} % |",
                100.0 * top1,
                100.0 * top5
            );
        }
    }
}
