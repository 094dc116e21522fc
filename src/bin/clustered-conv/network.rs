//! Whole networks: read from ONNX or a compressed-network file, compressed, run in batches
//! with a progress bar, exported back to ONNX or dense safetensors.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use clustered_conv::io::{export_onnx, read_onnx, write_atomic, SavedNetwork};
use clustered_conv::nn::{Layer, Network};
use clustered_conv::CompressionConfig;
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{s, Array2, ArrayView4, Axis};

use crate::dataset_args::{has_extension, usage, CliResult, Images};

/// Images per forward pass when evaluating.
pub const EVAL_BATCH: usize = 256;

/// Whether `path` names an ONNX file (by its extension).
pub fn is_onnx(path: &Path) -> bool {
    has_extension(path, "onnx")
}

/// A runnable network from an ONNX file or a compressed-network file.
pub fn load(path: &Path) -> CliResult<SavedNetwork> {
    if is_onnx(path) {
        let model = read_onnx(path)?;
        let [c, h, w] = model.input_shape;
        let input_shape = match (c, h, w) {
            (Some(c), Some(h), Some(w)) => Some([c, h, w]),
            _ => None,
        };
        return Ok(SavedNetwork {
            network: model.network,
            layer_names: model.layer_names,
            input_shape,
        });
    }
    Ok(SavedNetwork::load(path)?)
}

/// The input channels the network takes: from the stored input shape, else from its first
/// convolution.
pub fn input_channels(saved: &SavedNetwork) -> CliResult<usize> {
    if let Some([c, _, _]) = saved.input_shape {
        return Ok(c);
    }
    saved
        .network
        .layers
        .iter()
        .find_map(|l| match l {
            Layer::Conv(c) => Some(c.weight().dim().1),
            Layer::Clustered { layer, .. } => Some(layer.in_channels()),
            _ => None,
        })
        .ok_or_else(|| usage("the network's input channels are unknown".into()))
}

/// Refuses images of another size than the model records (the network itself would fail
/// later, with a less helpful message); images are never resized.
pub fn check_size(saved: &SavedNetwork, images: &Images, source: &Path) -> CliResult<()> {
    let Some([c, h, w]) = saved.input_shape else {
        return Ok(());
    };
    let (_, ic, ih, iw) = images.images.dim();
    if (ic, ih, iw) != (c, h, w) {
        return Err(usage(format!(
            "the model takes {c}×{h}×{w} images but {} holds {ic}×{ih}×{iw}; resize them \
             beforehand (they are never resized here)",
            source.display()
        )));
    }
    Ok(())
}

/// One line: the graph's layers by kind and its input, e.g. `network: 23 layers (input
/// 1×28×28): 6 conv, 5 batch norm, …`.
pub fn graph_summary(saved: &SavedNetwork) -> String {
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for layer in &saved.network.layers {
        let kind = match layer {
            Layer::Conv(_) => "dense conv",
            Layer::Clustered { .. } => "clustered conv",
            Layer::BatchNorm(_) => "batch norm",
            Layer::Relu => "relu",
            Layer::MaxPool(_) => "max pool",
            Layer::AvgPool(_) => "avg pool",
            Layer::GlobalAvgPool => "global avg pool",
            Layer::Flatten => "flatten",
            Layer::Linear(_) => "linear",
            Layer::Add => "add",
            _ => "other",
        };
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((kind, 1)),
        }
    }
    let input = saved
        .input_shape
        .map_or("input size not recorded".to_string(), |[c, h, w]| {
            format!("input {c}×{h}×{w}")
        });
    let counts: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!(
        "network: {} layers ({input}{}): {}",
        saved.network.layers.len(),
        if saved.network.is_chain() {
            ", a chain"
        } else {
            ", a graph"
        },
        counts.join(", ")
    )
}

/// `compress model.onnx`: clusters the ONNX network's convolutions (named by their nodes) and
/// writes a compressed-network file; returns the report.
pub fn compress_onnx(
    input: &Path,
    output: &Path,
    config: &CompressionConfig,
    quiet: bool,
) -> CliResult<clustered_conv::CompressionReport> {
    let started = Instant::now();
    let saved = load(input)?;
    let (chosen, convs) = saved.network.named_convolutions(&saved.layer_names)?;
    if convs.is_empty() {
        return Err(usage(format!(
            "{} has no k×k convolution (k > 1) to compress",
            input.display()
        )));
    }
    eprintln!(
        "{}: {} layers, {} convolutions to compress",
        input.display(),
        saved.network.layers.len(),
        convs.len()
    );
    let compressed = crate::compress_with_bar(&convs, config, quiet)?;
    let report = compressed.report().against(&convs).build()?;
    let network = saved.network.with_clustered(&chosen, compressed);
    let out = SavedNetwork { network, ..saved };
    out.save(output)?;
    println!("{report}");
    let (before, after) = file_sizes(input, output);
    println!(
        "wrote {} ({after} bytes; input {before} bytes, {:.2}× smaller) in {:.1} s",
        output.display(),
        before as f64 / after.max(1) as f64,
        started.elapsed().as_secs_f64()
    );
    Ok(report)
}

fn file_sizes(a: &Path, b: &Path) -> (u64, u64) {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    (size(a), size(b))
}

/// Logits of `images`, in batches, with a progress bar over images.
pub fn logits(net: &Network<f32>, images: ArrayView4<f32>, quiet: bool) -> CliResult<Array2<f32>> {
    let n = images.len_of(Axis(0));
    let bar = bar(n as u64, "images", quiet);
    let mut rows = Vec::with_capacity(n.div_ceil(EVAL_BATCH));
    for start in (0..n).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(n);
        rows.push(net.forward(images.slice(s![start..end, .., .., ..]))?);
        bar.set_position(end as u64);
    }
    bar.finish_and_clear();
    let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
    if views.is_empty() {
        return Err(usage("the data holds no image".into()));
    }
    Ok(ndarray::concatenate(Axis(0), &views)?)
}

/// A progress bar over `len` units, hidden with `quiet` (and by indicatif when stderr is not
/// a terminal).
pub fn bar(len: u64, unit: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{elapsed}} ETA {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// `export`'s arguments.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A compressed-network file (from `compress model.onnx` or `finetune`), or an ONNX file.
    pub model: PathBuf,
    /// Output: `.onnx` (the same graph with dense weights, for onnxruntime, PyTorch or tract)
    /// or `.safetensors` (a dense state_dict). Written atomically.
    #[arg(short, long)]
    pub output: PathBuf,
    /// `C,H,W` of the input, when the model file does not record it.
    #[arg(long, value_delimiter = ',')]
    pub input_shape: Option<Vec<usize>>,
}

/// `export`: the network back to ONNX, or its dense weights as safetensors.
pub fn export(args: &ExportArgs) -> CliResult<()> {
    let saved = load(&args.model)?;
    let bytes = if is_onnx(&args.output) {
        let shape = match (&args.input_shape, saved.input_shape) {
            (Some(s), _) => match s[..] {
                [c, h, w] if c * h * w > 0 => [c, h, w],
                _ => return Err(usage(format!("--input-shape takes C,H,W, got {s:?}"))),
            },
            (None, Some(s)) => s,
            (None, None) => {
                return Err(usage(format!(
                    "{} does not record its input shape: give --input-shape C,H,W",
                    args.model.display()
                )))
            }
        };
        export_onnx(&saved.network, Some(&saved.layer_names), shape)?
    } else {
        saved.to_model()?.to_dense_safetensors()?
    };
    write_atomic(&args.output, &bytes)?;
    println!("wrote {} ({} bytes)", args.output.display(), bytes.len());
    Ok(())
}
