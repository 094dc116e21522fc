//! Our side of the PyTorch / scikit-learn comparison harness in `scripts/compare/` (a manual
//! tool; `scripts/compare/run.sh` drives it, see `scripts/compare/README.md`).
//!
//! Two subcommands:
//! - `gen --data DIR [--weights skewed|normal]` writes the shared data once, as `.npy` files
//!   both sides read: per layer shape the weight `w.npy` (bit-identical to the
//!   `clustered_conv` criterion bench's weight of that kind: ChaCha8 seed 2018, same draw
//!   order), inputs `x_b1.npy` and `x_b8.npy`, and for the agreement check our batch-1 dense
//!   output `y_b1.npy`, the codebook-reconstructed weights `w_k{K}.npy` and our clustered
//!   batch-1 outputs `y_k{K}_b1.npy`; plus the k-means data `kmeans_x.npy` (the
//!   `benches/kmeans.rs` mixture, ChaCha8 seed 42), the training-step data under `train/`
//!   (the flagship network's initial parameters, one batch of 128 images and labels) and a
//!   `manifest.json`.
//! - `bench --data DIR --out FILE [--only SLUG,..] [--min-runs N] [--min-secs S]
//!   [--max-secs S] [--warmup-secs S] [--kmeans-runs N] [--no-kmeans] [--no-train]
//!   [--train-only]` reads those files, times `Conv2d::forward`, `ClusteredConv2d::forward`
//!   (automatic strategy), `KMeans::fit` and one training step of the flagship network
//!   (`Network::train_step`, batch 128, SGD with momentum 0.9 and weight decay 5e-4), and
//!   writes the results as JSON. Threads: set `RAYON_NUM_THREADS`.
//!
//! Run: `cargo run --release --example compare -- gen --data target/compare-data`.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clustered_conv::nn::{Layer, LrSchedule, Network, Sgd, SgdState};
use clustered_conv::{ClusteredConv2d, Conv2d, ConvGeometry, KMeans, KernelCodebook};
use ndarray::{Array, Array2, Array4, ArrayD, Dimension, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde_json::{json, Value};

/// mimalloc, not glibc's allocator: it keeps the training step's large freed buffers for
/// reuse instead of returning them to the system and page-faulting them back (README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "common/flagship.rs"]
mod flagship;
#[path = "common/layers.rs"]
mod layers;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Codebook sizes of the clustered layers.
const KS: [usize; 2] = [64, 256];
/// Batch sizes of the conv cases.
const BATCHES: [usize; 2] = [1, 8];
/// Seed of the conv data: the `clustered_conv` criterion bench's.
const CONV_SEED: u64 = 2018;

// k-means data and parameters, as in `benches/kmeans.rs`.
const KM_N: usize = 100_000;
const KM_D: usize = 9;
const KM_K: usize = 256;
const KM_COMPONENTS: usize = 256;
const KM_WITHIN_STD: f32 = 0.1;
const KM_DATA_SEED: u64 = 42;
const KM_FIT_SEED: u64 = 0;

// Training step of the flagship network (`examples/common/flagship.rs`).
const TRAIN_BATCH: usize = 128;
const TRAIN_SEED: u64 = 14;
/// Losses recorded from the shared initial parameters, for the agreement check.
const TRAIN_CHECK_STEPS: usize = 3;
/// Below the flagship's 0.05, which on this one batch of noise diverges for a few steps and
/// then collapses (loss stuck at 2.24, in PyTorch too); at 0.01 both sides train steadily.
const TRAIN_LR: f64 = 0.01;
const TRAIN_MOMENTUM: f64 = 0.9;
const TRAIN_WEIGHT_DECAY: f64 = 5e-4;

// ---------------------------------------------------------------------------------------------
// Minimal .npy (format 1.0, little-endian f32, C order) writer and reader.

fn write_npy<D: Dimension>(path: &Path, a: &Array<f32, D>) -> Res<()> {
    let shape = match a.shape() {
        [n] => format!("({n},)"),
        s => format!(
            "({})",
            s.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' is a multiple of 64 bytes.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = BufWriter::new(File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&u16::try_from(header.len())?.to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    for v in a.iter() {
        f.write_all(&v.to_le_bytes())?;
    }
    f.flush()?;
    Ok(())
}

fn read_npy(path: &Path) -> Res<ArrayD<f32>> {
    let mut bytes = Vec::new();
    BufReader::new(File::open(path)?).read_to_end(&mut bytes)?;
    if bytes.len() < 10 || &bytes[..8] != b"\x93NUMPY\x01\x00" {
        return Err(format!("{}: not a version 1.0 .npy file", path.display()).into());
    }
    let len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    let header = std::str::from_utf8(bytes.get(10..10 + len).ok_or("truncated header")?)?;
    if !header.contains("'descr': '<f4'") || !header.contains("'fortran_order': False") {
        return Err(format!("{}: expected '<f4' in C order: {header}", path.display()).into());
    }
    let dims = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or("no shape in header")?;
    let shape: Vec<usize> = dims
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let data: Vec<f32> = bytes[10 + len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), data)?)
}

fn read_npy4(path: &Path) -> Res<Array4<f32>> {
    Ok(read_npy(path)?.into_dimensionality()?)
}

// ---------------------------------------------------------------------------------------------
// Shared helpers.

/// `"vgg 64@32"` → `"vgg_64_32"`: a file-system and command-line friendly name.
fn slug(name: &str) -> String {
    name.replace([' ', '@'], "_")
}

/// The clustered layer and its codebook, fitted exactly as the `clustered_conv` bench does.
fn clustered(dense: &Conv2d<f32>, k: usize) -> Res<(KernelCodebook<f32>, ClusteredConv2d<f32>)> {
    let codebook = KernelCodebook::params(k)
        .seed(1)
        .max_iter(20)
        .fit(&[dense.weight().view()])?
        .codebook;
    let layer = ClusteredConv2d::from_conv(dense, &codebook)?;
    Ok((codebook, layer))
}

/// `N × D` rows of the Gaussian mixture of `benches/kmeans.rs` (same generator, same seed).
fn mixture() -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(KM_DATA_SEED);
    let centres =
        Array2::<f32>::from_shape_simple_fn((KM_COMPONENTS, KM_D), || rng.sample(StandardNormal));
    let mut data = Array2::<f32>::zeros((KM_N, KM_D));
    for mut row in data.rows_mut() {
        let c = rng.random_range(0..KM_COMPONENTS);
        for (v, &mu) in row.iter_mut().zip(centres.row(c)) {
            let z: f32 = rng.sample(StandardNormal);
            *v = mu + KM_WITHIN_STD * z;
        }
    }
    data
}

/// Timing protocol (the same as `bench_python.py`'s): warm up for at least one call and
/// `warmup_secs`, then time single calls until there are `min_runs` of them and `min_secs` have
/// passed, or (with at least 3 calls) `max_secs` have passed. Returns the median in ms and
/// the number of timed calls.
#[derive(Clone, Copy)]
struct Protocol {
    min_runs: usize,
    min_secs: f64,
    max_secs: f64,
    warmup_secs: f64,
}

impl Protocol {
    fn median_ms(&self, mut f: impl FnMut()) -> (f64, usize) {
        let start = Instant::now();
        f();
        while start.elapsed().as_secs_f64() < self.warmup_secs {
            f();
        }
        let start = Instant::now();
        let mut times = Vec::new();
        loop {
            let t = Instant::now();
            f();
            times.push(t.elapsed().as_secs_f64() * 1e3);
            let elapsed = start.elapsed().as_secs_f64();
            if (times.len() >= self.min_runs && elapsed >= self.min_secs)
                || (times.len() >= 3 && elapsed >= self.max_secs)
            {
                break;
            }
        }
        times.sort_by(f64::total_cmp);
        (times[times.len() / 2], times.len())
    }
}

// ---------------------------------------------------------------------------------------------
// Subcommands.

fn gen(data: &Path, kind: &str) -> Res<()> {
    std::fs::create_dir_all(data)?;
    let g = ConvGeometry::default().padding(1, 1);
    // Same draw order as `benches/clustered_conv.rs`: per shape, the normal then the skewed
    // weight, then the batch-1 and batch-8 inputs. Codebook fits consume no draws.
    let mut rng = ChaCha8Rng::seed_from_u64(CONV_SEED);
    let mut shapes = Vec::new();
    for (name, c, hw) in layers::SHAPES {
        let normal = layers::weights("normal", c, &mut rng);
        let skewed = layers::weights("skewed", c, &mut rng);
        let w = if kind == "normal" { normal } else { skewed };
        let xs: Vec<Array4<f32>> = BATCHES
            .iter()
            .map(|&n| {
                Array4::from_shape_simple_fn((n, c, hw, hw), || rng.random_range(-1.0f32..1.0))
            })
            .collect();
        let dir = data.join(slug(name));
        std::fs::create_dir_all(&dir)?;
        write_npy(&dir.join("w.npy"), &w)?;
        for (&n, x) in BATCHES.iter().zip(&xs) {
            write_npy(&dir.join(format!("x_b{n}.npy")), x)?;
        }
        // Reference outputs for the agreement check (batch 1).
        let dense = Conv2d::new(w, None, g)?;
        write_npy(&dir.join("y_b1.npy"), &dense.forward(xs[0].view())?)?;
        for k in KS {
            let (codebook, layer) = clustered(&dense, k)?;
            let rebuilt = layer.to_conv(&codebook)?;
            write_npy(&dir.join(format!("w_k{k}.npy")), rebuilt.weight())?;
            let y = layer.forward(&codebook, xs[0].view())?;
            write_npy(&dir.join(format!("y_k{k}_b1.npy")), &y)?;
        }
        eprintln!("gen: {name} ({kind} weights) -> {}", dir.display());
        shapes.push(json!({"name": name, "slug": slug(name), "c": c, "hw": hw}));
    }
    write_npy(&data.join("kmeans_x.npy"), &mixture())?;
    let train = gen_train(data)?;
    let manifest = json!({
        "weights": kind,
        "conv_seed": CONV_SEED,
        "batches": BATCHES,
        "ks": KS,
        "shapes": shapes,
        "kmeans": {"file": "kmeans_x.npy", "n": KM_N, "d": KM_D, "k": KM_K,
                   "data_seed": KM_DATA_SEED, "fit_seed": KM_FIT_SEED},
        "train": train,
    });
    std::fs::write(
        data.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    eprintln!("gen: wrote {}", data.join("manifest.json").display());
    Ok(())
}

/// The training-step data in `DIR/train/`: the flagship network's initial parameters
/// (`conv{i}.npy` per convolution in order, `fc_w.npy`, `fc_b.npy`; batch norm starts at
/// γ = 1, β = 0 on both sides), one batch `x.npy` `(128, 1, 28, 28)` of N(0, 1) pixels and its
/// `labels.npy` (class indices stored as `f32`).
fn gen_train(data: &Path) -> Res<Value> {
    let dir = data.join("train");
    std::fs::create_dir_all(&dir)?;
    let mut rng = ChaCha8Rng::seed_from_u64(TRAIN_SEED);
    let net = flagship::build_network(&mut rng)?;
    let mut convs = 0;
    for layer in &net.layers {
        match layer {
            Layer::Conv(c) => {
                write_npy(&dir.join(format!("conv{convs}.npy")), c.weight())?;
                convs += 1;
            }
            Layer::Linear(lin) => {
                write_npy(&dir.join("fc_w.npy"), &lin.weight)?;
                write_npy(&dir.join("fc_b.npy"), &lin.bias)?;
            }
            _ => {}
        }
    }
    let x = Array4::from_shape_simple_fn((TRAIN_BATCH, 1, 28, 28), || {
        rng.sample::<f32, _>(StandardNormal)
    });
    let labels = ndarray::Array1::from_shape_simple_fn(TRAIN_BATCH, || {
        rng.random_range(0..flagship::CLASSES) as f32
    });
    write_npy(&dir.join("x.npy"), &x)?;
    write_npy(&dir.join("labels.npy"), &labels)?;
    eprintln!("gen: flagship training step -> {}", dir.display());
    Ok(json!({
        "batch": TRAIN_BATCH, "blocks": flagship::BLOCKS, "classes": flagship::CLASSES,
        "seed": TRAIN_SEED, "lr": TRAIN_LR, "momentum": TRAIN_MOMENTUM,
        "weight_decay": TRAIN_WEIGHT_DECAY, "check_steps": TRAIN_CHECK_STEPS,
    }))
}

/// The flagship network with the parameters `gen_train` wrote.
fn load_flagship(dir: &Path) -> Res<Network<f32>> {
    let mut net = flagship::build_network(&mut ChaCha8Rng::seed_from_u64(0))?;
    let mut convs = 0;
    for layer in &mut net.layers {
        match layer {
            Layer::Conv(c) => {
                let w = read_npy4(&dir.join(format!("conv{convs}.npy")))?;
                *c = Conv2d::new(w, None, c.geometry())?.with_algorithm(c.algorithm())?;
                convs += 1;
            }
            Layer::Linear(lin) => {
                lin.weight = read_npy(&dir.join("fc_w.npy"))?.into_dimensionality()?;
                lin.bias = read_npy(&dir.join("fc_b.npy"))?.into_dimensionality()?;
            }
            _ => {}
        }
    }
    Ok(net)
}

/// One training step of the flagship network (forward, softmax cross-entropy, backward, SGD
/// with momentum and weight decay) on the batch `gen_train` wrote: the losses of the first
/// steps from the shared initial parameters (agreement check), then the median step time.
fn bench_train(data: &Path, p: Protocol) -> Res<Value> {
    let dir = data.join("train");
    let mut net = load_flagship(&dir)?;
    let x = read_npy4(&dir.join("x.npy"))?;
    let labels: Vec<usize> = read_npy(&dir.join("labels.npy"))?
        .iter()
        .map(|&l| l as usize)
        .collect();
    let sgd = Sgd {
        lr: TRAIN_LR,
        momentum: TRAIN_MOMENTUM,
        weight_decay: TRAIN_WEIGHT_DECAY,
        schedule: LrSchedule::Constant,
    };
    let mut states: Vec<SgdState<f32>> = Vec::new();
    let losses = (0..TRAIN_CHECK_STEPS)
        .map(|_| net.train_step(x.view(), &labels, &sgd, 0.0, &mut states))
        .collect::<Result<Vec<f64>, _>>()?;
    let mut failed = None;
    let (ms, runs) = p.median_ms(|| {
        if let Err(e) = net.train_step(x.view(), &labels, &sgd, 0.0, &mut states) {
            failed = Some(e);
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    eprintln!(
        "ours: flagship training step, batch {}: {ms:.1} ms; losses {losses:?}",
        x.dim().0
    );
    Ok(json!({"batch": x.dim().0, "ms": ms, "runs": runs, "losses": losses}))
}

fn bench_conv(data: &Path, only: &[String], p: Protocol) -> Res<Vec<Value>> {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("manifest.json"))?)?;
    let g = ConvGeometry::default().padding(1, 1);
    let mut rows = Vec::new();
    for shape in manifest["shapes"].as_array().ok_or("manifest: no shapes")? {
        let name = shape["name"].as_str().ok_or("manifest: shape name")?;
        let s = slug(name);
        if !only.is_empty() && !only.contains(&s) {
            continue;
        }
        let dir = data.join(&s);
        let dense = Conv2d::new(read_npy4(&dir.join("w.npy"))?, None, g)?;
        // Refit the codebooks (deterministic for any thread count) and check that they rebuild
        // the weights `gen` wrote, so PyTorch's agreement check saw the same layers.
        let mut layers = Vec::new();
        for k in KS {
            let (codebook, layer) = clustered(&dense, k)?;
            if layer.to_conv(&codebook)?.weight() != read_npy4(&dir.join(format!("w_k{k}.npy")))? {
                return Err(
                    format!("{name}: K={k} codebook differs from the generated one").into(),
                );
            }
            layers.push((k, codebook, layer));
        }
        for n in BATCHES {
            let x = read_npy4(&dir.join(format!("x_b{n}.npy")))?;
            let [_, c, h, w] = [x.dim().0, x.dim().1, x.dim().2, x.dim().3];
            let flop = 2.0 * (n * c * dense.out_channels() * 9 * h * w) as f64;
            let (dense_ms, dense_runs) = p.median_ms(|| drop(dense.forward(x.view())));
            let mut clustered_rows = Vec::new();
            for (k, codebook, layer) in &layers {
                let (ms, runs) = p.median_ms(|| drop(layer.forward(codebook, x.view())));
                clustered_rows.push(json!({
                    "k": k,
                    "ms": ms,
                    "runs": runs,
                    "auto": format!("{:?}", layer.auto_strategy(codebook, [n, c, h, w])?),
                    "sum_v_ratio": layer.sum_distinct_per_input() as f64 / (c * c) as f64,
                }));
            }
            eprintln!(
                "ours: {name} b{n}: dense {dense_ms:.3} ms ({:.1} GFLOP/s), clustered {}",
                flop / dense_ms * 1e-6,
                clustered_rows
                    .iter()
                    .map(|r| format!(
                        "K={} {:.3} ms",
                        r["k"],
                        r["ms"].as_f64().unwrap_or(f64::NAN)
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            rows.push(json!({
                "name": name, "slug": s, "c": c, "hw": h, "batch": n, "flop": flop,
                "dense_ms": dense_ms, "dense_runs": dense_runs, "clustered": clustered_rows,
            }));
        }
    }
    Ok(rows)
}

fn bench_kmeans(data: &Path, runs: usize) -> Res<Value> {
    let x: Array2<f32> = read_npy(&data.join("kmeans_x.npy"))?.into_dimensionality()?;
    let params = |seed: u64| KMeans::params(KM_K).seed(seed).n_init(1).tol(1e-4);
    // One untimed warm-up fit, then `runs` timed fits with seeds KM_FIT_SEED + r (as
    // `bench_python.py` does): medians over seeds compare time and quality fairly.
    params(KM_FIT_SEED).fit(x.view())?;
    let (mut times, mut inertias, mut iters) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..runs as u64 {
        let t = Instant::now();
        let fit = params(KM_FIT_SEED + r).fit(x.view())?;
        times.push(t.elapsed().as_secs_f64());
        inertias.push(fit.inertia);
        iters.push(fit.n_iter);
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (time, inertia) = (median(&times), median(&inertias));
    let mut sorted_iters = iters.clone();
    sorted_iters.sort_unstable();
    let n_iter = sorted_iters[sorted_iters.len() / 2];
    eprintln!(
        "ours: k-means {}x{} K={KM_K}: {time:.3} s, median inertia {inertia:.1} over {runs} \
         seed(s), {n_iter} iterations",
        x.nrows(),
        x.ncols(),
    );
    Ok(json!({
        "n": x.nrows(), "d": x.ncols(), "k": KM_K,
        "times_s": times, "median_s": time,
        "inertia": inertia, "inertias": inertias, "n_iter": n_iter, "n_iters": iters,
    }))
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let data = PathBuf::from(arg("--data").unwrap_or_else(|| "target/compare-data".into()));
    match args.first().map(String::as_str) {
        Some("gen") => gen(&data, &arg("--weights").unwrap_or_else(|| "skewed".into())),
        Some("bench") => {
            let out = PathBuf::from(arg("--out").ok_or("bench: --out FILE is required")?);
            let num = |name: &str, default: f64| -> Res<f64> {
                Ok(arg(name).map(|s| s.parse()).transpose()?.unwrap_or(default))
            };
            let p = Protocol {
                min_runs: num("--min-runs", 20.0)? as usize,
                min_secs: num("--min-secs", 1.0)?,
                max_secs: num("--max-secs", 5.0)?,
                warmup_secs: num("--warmup-secs", 0.2)?,
            };
            let only: Vec<String> = arg("--only")
                .map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            let threads = rayon::current_num_threads();
            eprintln!("ours: {threads} rayon threads");
            let conv = if args.iter().any(|a| a == "--train-only") {
                Vec::new()
            } else {
                bench_conv(&data, &only, p)?
            };
            let train = if args.iter().any(|a| a == "--no-train") {
                Value::Null
            } else {
                bench_train(&data, p)?
            };
            let kmeans = if args
                .iter()
                .any(|a| a == "--no-kmeans" || a == "--train-only")
            {
                Value::Null
            } else {
                bench_kmeans(&data, num("--kmeans-runs", 3.0)? as usize)?
            };
            let report = json!({
                "side": "ours",
                "threads": threads,
                "protocol": {"min_runs": p.min_runs, "min_secs": p.min_secs,
                             "max_secs": p.max_secs, "warmup_secs": p.warmup_secs},
                "conv": conv,
                "kmeans": kmeans,
                "train": train,
            });
            std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
            eprintln!("ours: wrote {}", out.display());
            Ok(())
        }
        _ => Err("usage: compare gen --data DIR [--weights skewed|normal] | \
                  compare bench --data DIR --out FILE [--only SLUG,..] [--min-runs N] \
                  [--min-secs S] [--max-secs S] [--warmup-secs S] [--kmeans-runs N] \
                  [--no-kmeans] [--no-train] [--train-only]"
            .into()),
    }
}
