//! `eval` (top-1 / top-5 accuracy and the confusion matrix) and `run` (predictions as CSV).

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use clustered_conv::io::write_atomic;
use ndarray::{Array2, ArrayView1};

use crate::dataset_args::{usage, CliResult, DataArgs, Images};
use crate::network::{check_size, input_channels, load, logits};

/// `eval`'s arguments.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A compressed-network file (from `compress model.onnx` or `finetune`), or an ONNX file.
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print the result as JSON, with the confusion matrix (rows: true class, columns:
    /// predicted class).
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `run`'s arguments.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// A compressed-network file, or an ONNX file.
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Write the predictions here (CSV, written atomically) instead of to standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Top-1 and top-5 accuracy and the confusion matrix of logits against labels.
pub struct Evaluation {
    /// Images evaluated.
    pub images: usize,
    /// Fraction whose highest logit is the label's.
    pub top1: f64,
    /// Fraction whose label is among the five highest logits.
    pub top5: f64,
    /// `confusion[[label, predicted]]`.
    pub confusion: Array2<u64>,
}

/// Classes ordered from highest to lowest logit (ties: lower class first).
fn ranking(row: ArrayView1<f32>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    order
}

/// Scores `logits` against `labels`.
pub fn evaluate(logits: &Array2<f32>, labels: &[usize]) -> CliResult<Evaluation> {
    let classes = logits.ncols();
    if let Some(&bad) = labels.iter().find(|&&l| l >= classes) {
        return Err(usage(format!(
            "label {bad} is beyond the model's {classes} outputs"
        )));
    }
    let mut confusion = Array2::zeros((classes, classes));
    let (mut top1, mut top5) = (0, 0);
    for (row, &label) in logits.outer_iter().zip(labels) {
        let order = ranking(row);
        confusion[[label, order[0]]] += 1;
        top1 += usize::from(order[0] == label);
        top5 += usize::from(order.iter().take(5).any(|&c| c == label));
    }
    let n = labels.len().max(1) as f64;
    Ok(Evaluation {
        images: labels.len(),
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
        confusion,
    })
}

/// `eval`.
pub fn eval(args: &EvalArgs) -> CliResult<()> {
    let saved = load(&args.model)?;
    let data = args.data.load(input_channels(&saved)?, true)?;
    check_size(&saved, &data, &args.data.data)?;
    let logits = logits(&saved.network, data.images.view(), args.quiet)?;
    let labels = data.labels.as_deref().unwrap_or_default();
    let result = evaluate(&logits, labels)?;
    if args.json {
        let json = serde_json::json!({
            "model": args.model.display().to_string(),
            "images": result.images,
            "top1": result.top1,
            "top5": result.top5,
            "classes": data.classes,
            "confusion": result.confusion.outer_iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
        });
        println!("{json}");
    } else {
        println!(
            "{}: top-1 {:.2} %, top-5 {:.2} % on {} images",
            args.model.display(),
            100.0 * result.top1,
            100.0 * result.top5,
            result.images
        );
    }
    Ok(())
}

/// `run`: one CSV line per image: index, file (image folders), predicted class, its name,
/// and its softmax probability.
pub fn run(args: &RunArgs) -> CliResult<()> {
    let saved = load(&args.model)?;
    let data = args.data.load(input_channels(&saved)?, false)?;
    check_size(&saved, &data, &args.data.data)?;
    let logits = logits(&saved.network, data.images.view(), args.quiet)?;
    let csv = predictions_csv(&logits, &data);
    match &args.output {
        Some(path) => {
            write_atomic(path, csv.as_bytes())?;
            eprintln!("wrote {} ({} predictions)", path.display(), logits.nrows());
        }
        None => print!("{csv}"),
    }
    Ok(())
}

/// The CSV text of `run`.
fn predictions_csv(logits: &Array2<f32>, data: &Images) -> String {
    let mut csv = String::from("index,file,predicted,class,probability\n");
    for (i, row) in logits.outer_iter().enumerate() {
        let best = ranking(row)[0];
        let max = row[best];
        let total: f32 = row.iter().map(|&v| (v - max).exp()).sum();
        let file = data
            .files
            .as_ref()
            .map_or(String::new(), |f| csv_field(&f[i].display().to_string()));
        let class = data
            .classes
            .get(best)
            .map_or(String::new(), |c| csv_field(c));
        let _ = writeln!(csv, "{i},{file},{best},{class},{:.6}", 1.0 / total);
    }
    csv
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}
