//! `clustered-conv`: compress a PyTorch `state_dict` saved as safetensors by clustering its
//! convolution kernels, inspect the result, turn it back into a dense file, and time it.
//!
//! Exit status: 0 on success, 1 when the operation failed (unreadable or invalid input,
//! impossible settings), 2 for command-line usage errors.

mod bench;
mod dataset_args;
mod evaluate;
mod finetune;
mod network;
mod pictures;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use clustered_conv::io::{
    import_conv_layers, parse_geometry_map, read_safetensors, write_atomic, CompressedModel,
    GeometryMap, ImportedModel, SavedNetwork,
};
use clustered_conv::{
    CodebookScope, CompressedLayer, CompressedNetwork, CompressionConfig, CompressionReport,
    ConvLayer, Error, KernelCodebook, ScaleScheme, Symmetry,
};
use dataset_args::{usage, CliResult};
use indicatif::{ProgressBar, ProgressStyle};

/// mimalloc keeps freed memory for reuse, where glibc's allocator hands the large per-step
/// buffers of fine-tuning back to the system and takes page faults on every step (measured on
/// the flagship's training step: 476,798 → 15,299 page faults, 2.09 → 0.30 s of system time
/// per benchmark run; README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "clustered-conv",
    version,
    about = "Compress CNNs by clustering their convolution kernels (Son, Nah & Lee, ECCV 2018)",
    long_about = "Compress CNNs by clustering their convolution kernels (Son, Nah & Lee, ECCV \
                  2018).\n\nTypical use: export a PyTorch model's state_dict with \
                  `safetensors.torch.save_file(model.state_dict(), \"model.safetensors\")`, then \
                  `clustered-conv compress model.safetensors -o model.ccv.safetensors`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Cluster the kernels of every k×k convolution (k > 1) of a safetensors state_dict and
    /// write a compressed model file; other tensors pass through untouched.
    Compress {
        /// Input safetensors file (F32, F16, BF16 or F64 tensors).
        input: PathBuf,
        /// Output compressed model file (written atomically).
        #[arg(short, long)]
        output: PathBuf,
        /// Centroids per codebook.
        #[arg(long, default_value_t = 256, conflicts_with = "max_error")]
        k: usize,
        /// Which layers share a codebook: `shared` (one per kernel size, the paper's default),
        /// `per-layer`, or groups of clustered-layer ordinals like `0-0=64,1-12=256` (counted
        /// among the layers that are clustered, after the keep-dense rules).
        #[arg(long, default_value = "shared", conflicts_with = "max_error")]
        scope: String,
        /// Keep the layers whose name matches PATTERN dense (repeatable). PATTERN is a layer
        /// name (without `.weight`) where `*` matches any run of characters, e.g.
        /// `features.0` or `layer1.*`; a pattern that matches no layer is an error.
        #[arg(long = "keep-dense", value_name = "PATTERN")]
        keep_dense: Vec<String>,
        /// Do not apply the default keep-dense rule (by default, layers with at most 3 input
        /// channels, i.e. reading the image, or fewer than 4·K kernels stay dense).
        #[arg(long)]
        no_default_keep_dense: bool,
        /// Error budget: give every clustered layer its own codebook with the smallest K of
        /// 16, 32, …, 1024 (capped at its kernels) whose relative error ‖W−Ŵ‖/‖W‖ is at most
        /// E (only K that store fewer bytes than the dense weight are tried); a layer that no
        /// K meets stays dense. Replaces `--k` and `--scope`.
        #[arg(long, value_name = "E")]
        max_error: Option<f64>,
        /// With `--max-error`: draw each layer's relative error against K, the chosen K
        /// marked, as `<layer>_error_vs_k.png` and `.svg` into this directory.
        #[arg(long, value_name = "DIR", requires = "max_error")]
        plot: Option<PathBuf>,
        /// Transform invariance: `i` (none), `ih` (TIC2), `ihvo` (TIC4) or `ihvoIHVO` (TIC8).
        #[arg(long, default_value = "i")]
        symmetry: String,
        /// Storage of the per-kernel scales: `f16`, `f32`, `none` (cluster raw kernels) or
        /// `fixed<bits>`.
        #[arg(long, default_value = "f16")]
        scales: String,
        /// k-means seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// k-means restarts (the best is kept).
        #[arg(long, default_value_t = 1)]
        n_init: usize,
        /// k-means iteration limit.
        #[arg(long, default_value_t = 300)]
        max_iter: usize,
        /// JSON sidecar with conv geometry per layer (a state_dict does not record it):
        /// `{"features.0": {"padding": [1], "stride": [2]}}`. Default for every layer:
        /// stride 1, dilation 1, padding ⌊k/2⌋.
        #[arg(long)]
        geometry: Option<PathBuf>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        report_json: Option<PathBuf>,
        /// No progress bars.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print a compressed model's layers, codebooks, sizes and index entropy.
    Inspect {
        /// Compressed model file.
        file: PathBuf,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Draw each codebook's centroids (most to least used, with a colour bar and usage
        /// counts) and a chart of how many kernels use each centroid into this directory,
        /// each as PNG and SVG (`codebook<c>_centroids.{png,svg}`, `codebook<c>_usage.{png,svg}`).
        #[arg(long)]
        png: Option<PathBuf>,
    },
    /// Write a dense safetensors state_dict (original names and element types), loadable by
    /// PyTorch's `load_state_dict`.
    Decompress {
        /// Compressed model file.
        input: PathBuf,
        /// Output safetensors file (written atomically).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Top-1 and top-5 accuracy of a network (compressed-network file or ONNX) on labelled
    /// images; `--json` adds the confusion matrix.
    Eval(evaluate::EvalArgs),
    /// Fine-tune a compressed network with its cluster assignments frozen: batch-norm
    /// recalibration, then SGD (cosine schedule); the result is a compressed-network file.
    Finetune(finetune::FinetuneArgs),
    /// Export a network back to ONNX (same graph, dense weights) or to a dense safetensors
    /// state_dict.
    Export(network::ExportArgs),
    /// Predict the class of every image; CSV on standard output or to `-o`.
    Run(evaluate::RunArgs),
    /// Time every layer's forward pass, clustered against its dense reconstruction.
    Bench {
        /// Compressed model file.
        file: PathBuf,
        /// Input spatial size `HxW` given to every layer.
        #[arg(long, default_value = "32x32")]
        input: String,
        /// Batch size.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Timed repetitions per layer (the median is reported).
        #[arg(long, default_value_t = 10)]
        repeats: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: CliResult<()> = match cli.command {
        Command::Compress {
            input,
            output,
            k,
            scope,
            keep_dense,
            no_default_keep_dense,
            max_error,
            plot,
            symmetry,
            scales,
            seed,
            n_init,
            max_iter,
            geometry,
            report_json,
            quiet,
        } => parse_config(&scope, &symmetry, &scales)
            .map_err(Into::into)
            .and_then(|(scope, symmetry, scales)| {
                let config = CompressionConfig {
                    codebook: KernelCodebook::params(k)
                        .symmetry(symmetry)
                        .scale_scheme(scales)
                        .seed(seed)
                        .n_init(n_init)
                        .max_iter(max_iter),
                    scope,
                    keep_dense,
                    default_keep_dense: !no_default_keep_dense,
                    max_error,
                    ..CompressionConfig::default()
                };
                let outputs = Outputs {
                    model: output,
                    report_json,
                    plot,
                };
                run_compress(&input, &outputs, &config, geometry.as_deref(), quiet)
            }),
        Command::Inspect { file, json, png } => {
            run_inspect(&file, json, png.as_deref()).map_err(Into::into)
        }
        Command::Decompress { input, output } => {
            run_decompress(&input, &output).map_err(Into::into)
        }
        Command::Bench {
            file,
            input,
            batch,
            repeats,
        } => bench::run(&file, &input, batch, repeats).map_err(Into::into),
        Command::Eval(args) => evaluate::eval(&args),
        Command::Finetune(args) => finetune::finetune(&args),
        Command::Export(args) => network::export(&args),
        Command::Run(args) => evaluate::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_config(
    scope: &str,
    symmetry: &str,
    scales: &str,
) -> Result<(CodebookScope, Symmetry, ScaleScheme), Error> {
    Ok((scope.parse()?, symmetry.parse()?, scales.parse()?))
}

fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// What `compress` writes.
struct Outputs {
    /// The compressed model.
    model: PathBuf,
    /// The report as JSON.
    report_json: Option<PathBuf>,
    /// Directory of the error-against-K charts.
    plot: Option<PathBuf>,
}

fn run_compress(
    input: &Path,
    outputs: &Outputs,
    config: &CompressionConfig,
    geometry: Option<&Path>,
    quiet: bool,
) -> CliResult<()> {
    let output = outputs.model.as_path();
    if network::is_onnx(input) {
        if geometry.is_some() {
            return Err(usage(
                "--geometry is for state_dicts; an ONNX file records its geometry".into(),
            ));
        }
        let report = network::compress_onnx(input, output, config, quiet)?;
        return write_report_extras(&report, outputs);
    }
    let imported = import_layers(input, geometry)?;
    let start = Instant::now();
    let net = compress_with_bar(&imported.layers, config, quiet)?;
    let report = net.report().against(&imported.layers).build()?;
    let model = CompressedModel::from_import(net, &imported)?;
    let bytes = model.to_bytes()?;
    write_atomic(output, &bytes)?;
    write_report_extras(&report, outputs)?;
    println!("{report}");
    let input_bytes = std::fs::metadata(input).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({} bytes; input {} bytes, {:.2}× smaller) in {:.1} s",
        output.display(),
        bytes.len(),
        input_bytes,
        input_bytes as f64 / bytes.len() as f64,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The report as JSON and the error-against-K charts, where asked for.
fn write_report_extras(report: &CompressionReport, outputs: &Outputs) -> CliResult<()> {
    if let Some(path) = &outputs.report_json {
        write_atomic(path, report.to_json().as_bytes())?;
    }
    let Some(dir) = &outputs.plot else {
        return Ok(());
    };
    for layer in report.layers.iter().filter(|l| !l.error_by_k.is_empty()) {
        // Layer names such as ONNX's `/block1/conv1/Conv` become file names.
        let file: String = layer
            .name
            .trim_start_matches('/')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let stem = dir.join(format!("{file}_error_vs_k"));
        for path in pictures::error_vs_k(&layer.name, &layer.error_by_k, layer.k, &stem)? {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// The convolution layers of a `state_dict`, with the geometry sidecar applied; every name in
/// the sidecar must be one of them.
fn import_layers(input: &Path, geometry: Option<&Path>) -> Result<ImportedModel, Error> {
    let geometry: GeometryMap = match geometry {
        Some(path) => {
            let text = String::from_utf8_lossy(&read_file(path)?).into_owned();
            parse_geometry_map(&text)?
        }
        None => GeometryMap::new(),
    };
    let state = read_safetensors(&read_file(input)?)?;
    let imported = import_conv_layers(&state, &geometry)?;
    if imported.layers.is_empty() {
        return Err(Error::Empty {
            what: "the set of k×k convolution weights (k > 1) in the input",
        });
    }
    let unknown: Vec<&String> = geometry
        .keys()
        .filter(|name| !imported.layers.iter().any(|l| &l.name == *name))
        .collect();
    if !unknown.is_empty() {
        return Err(Error::Parse {
            what: "geometry sidecar",
            input: format!("{unknown:?}"),
            expected: "names of convolution layers in the input (without `.weight`)",
        });
    }
    eprintln!(
        "{}: {} convolution layers to compress, {} tensors passed through",
        input.display(),
        imported.layers.len(),
        imported.passthrough.len()
    );
    Ok(imported)
}

/// Compression with a progress bar per codebook over its k-means iterations.
fn compress_with_bar(
    layers: &[ConvLayer<f32>],
    config: &CompressionConfig,
    quiet: bool,
) -> Result<CompressedNetwork<f32>, Error> {
    let bar = progress_bar(quiet);
    let mut current = usize::MAX;
    let net = config
        .compressor(layers)
        .progress(|p| {
            if p.codebook != current {
                current = p.codebook;
                bar.set_length((p.kmeans.n_init * p.kmeans.max_iter) as u64);
                let names: Vec<&str> = p.layers.iter().map(|&l| layers[l].name.as_str()).collect();
                bar.reset();
                bar.set_message(format!(
                    "codebook {}/{} ({})",
                    p.codebook + 1,
                    p.codebooks,
                    abbreviate(&names)
                ));
            }
            bar.set_position((p.kmeans.run * p.kmeans.max_iter + p.kmeans.stats.iteration) as u64);
        })
        .run()?;
    bar.finish_and_clear();
    Ok(net)
}

/// A bar over k-means iterations, hidden with `--quiet` or when stderr is not a terminal.
fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:40} [{bar:30}] k-means iteration {pos}/{len} {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// `a, b, c` or `a … z (n layers)`.
fn abbreviate(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [a] => (*a).to_string(),
        [a, b] => format!("{a}, {b}"),
        [first, .., last] => format!("{first} … {last}, {} layers", names.len()),
    }
}

fn run_inspect(file: &Path, json: bool, png: Option<&Path>) -> Result<(), Error> {
    let model = CompressedModel::load(file)?;
    let report = model.network.report().build()?;
    if json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
        print_memory(&model.network);
        println!(
            "scales: {}; pass-through tensors: {}; file: {} bytes",
            model.network.scale_scheme(),
            model.passthrough.len(),
            std::fs::metadata(file).map(|m| m.len()).unwrap_or(0)
        );
        if model.graph.is_some() {
            println!(
                "{}",
                network::graph_summary(&SavedNetwork::from_model(model.clone())?)
            );
        }
    }
    if let Some(dir) = png {
        for path in pictures::write_all(&model, dir)? {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// The clustered layers' in-memory bytes (`ClusteredConv2d::memory`) against their dense
/// weights.
fn print_memory(network: &CompressedNetwork<f32>) {
    let (mut index, mut scale, mut dense) = (0, 0, 0);
    for layer in network.layers() {
        if let CompressedLayer::Clustered {
            codebook, layer, ..
        } = layer
        {
            let Ok(codebook) = network.codebooks().get(*codebook) else {
                continue;
            };
            let m = layer.memory(codebook);
            index += m.index_bytes;
            scale += m.scale_bytes;
            dense += m.dense_weight_bytes;
        }
    }
    if index > 0 {
        println!(
            "in memory: clustered layers hold {index} index + {scale} scale bytes for {dense} \
             dense weight bytes ({:.2}×)",
            dense as f64 / (index + scale) as f64
        );
    }
}

fn run_decompress(input: &Path, output: &Path) -> Result<(), Error> {
    let model = CompressedModel::load(input)?;
    let bytes = model.to_dense_safetensors()?;
    write_atomic(output, &bytes)?;
    println!(
        "wrote {} ({} layers reconstructed, {} tensors passed through, {} bytes)",
        output.display(),
        model.network.layers().len(),
        model.passthrough.len(),
        bytes.len()
    );
    Ok(())
}
