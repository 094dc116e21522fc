//! Measures every forward strategy of `ClusteredConv2d` (and the dense `Conv2d`) on real
//! VGG-16 (CIFAR) and ResNet-18 3×3 layer shapes, and prints one table of times with what
//! `Auto` ran, the fastest strategy, and Auto's time relative to it.
//!
//! Indices come from k-means of a weight tensor (random-normal weights, or "skewed" weights
//! made of Zipf-distributed patterns plus noise, like trained networks' frequency-sorted
//! usage). Run: `cargo run --release --example strategy_table -- [--batch N] [--k K,K,..]
//! [--weights normal|skewed] [--threads N] [--reps N] [--only NAME]
//! [--strategies conv,dense,input,output,winograd,auto]`.

use std::time::Instant;

use clustered_conv::{ClusteredConv2d, Conv2d, ConvGeometry, ForwardStrategy, KernelCodebook};
use ndarray::Array4;
use rand::{Rng, SeedableRng};

#[path = "common/layers.rs"]
mod layers;
use layers::{weights, SHAPES};
use rand_chacha::ChaCha8Rng;

/// The strategies timed, as (column, strategy); `None` is the dense `Conv2d` (im2col).
const COLUMNS: [(&str, Option<ForwardStrategy>); 6] = [
    ("conv", None),
    ("dense", Some(ForwardStrategy::Dense)),
    ("input", Some(ForwardStrategy::InputSide)),
    ("output", Some(ForwardStrategy::OutputSide)),
    ("winograd", Some(ForwardStrategy::Winograd)),
    ("auto", Some(ForwardStrategy::Auto)),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let batch: usize = arg("--batch", "8").parse()?;
    let reps: usize = arg("--reps", "5").parse()?;
    let kind = arg("--weights", "normal");
    let ks: Vec<usize> = arg("--k", "16,64,256")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let threads: usize = arg("--threads", "0").parse()?;
    let only = arg("--only", "");
    let which: Vec<String> = arg("--strategies", "conv,dense,input,output,winograd,auto")
        .split(',')
        .map(str::to_string)
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    println!(
        "batch {batch}, {} rayon threads, weights {kind}, median of {reps} (strategies of a \
         layer timed in alternation); times in ms; conv = dense Conv2d (im2col), dense = \
         ForwardStrategy::Dense; best = fastest of dense/input/output/winograd; auto/best = \
         Auto's time ÷ best's",
        pool.current_num_threads()
    );
    print!("{:<15} {:>4} {:>8} {:>6}", "layer", "K", "ΣV/CC", "pad");
    for (name, _) in COLUMNS {
        print!(" {name:>8}");
    }
    println!(
        " {:>10} {:>10} {:>9} {:>9}",
        "auto_pick", "best", "auto/best", "rel.err"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (name, c, hw) in SHAPES {
        if !only.is_empty() && !name.contains(&only) {
            continue;
        }
        let w = weights(&kind, c, &mut rng);
        let x = Array4::from_shape_simple_fn((batch, c, hw, hw), || rng.random_range(-1.0f32..1.0));
        let g = ConvGeometry::default().padding(1, 1);
        let dense = Conv2d::new(w.clone(), None, g)?;
        for &k in &ks {
            let codebook = KernelCodebook::params(k)
                .seed(1)
                .max_iter(20)
                .fit(&[w.view()])?
                .codebook;
            let layer = ClusteredConv2d::from_conv(&dense, &codebook)?;
            let cost = layer.cost(&codebook, (hw, hw))?;
            let run = |s: Option<ForwardStrategy>| match s {
                None => drop(dense.forward(x.view())),
                Some(s) => drop(layer.forward_with(&codebook, x.view(), s)),
            };
            let active: Vec<bool> = COLUMNS
                .iter()
                .map(|(n, _)| which.iter().any(|w| w == n))
                .collect();
            let times = pool.install(|| alternating_medians(reps, &COLUMNS, &active, run));
            let time = |n: &str| times[COLUMNS.iter().position(|c| c.0 == n).expect("a column")];
            let (best_name, best) = ["dense", "input", "output", "winograd"]
                .into_iter()
                .map(|n| (n, time(n)))
                .filter(|(_, t)| !t.is_nan())
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap_or(("-", f64::NAN));
            let oracle = layer.forward_with(&codebook, x.view(), ForwardStrategy::Dense)?;
            let auto = layer.forward(&codebook, x.view())?;
            let num: f64 = auto
                .iter()
                .zip(oracle.iter())
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            let den: f64 = oracle.iter().map(|b| f64::from(*b).powi(2)).sum();
            print!(
                "{:<15} {:>4} {:>8.3} {:>6.3}",
                name,
                k,
                cost.sum_v as f64 / (c * c) as f64,
                cost.padding
            );
            for t in &times {
                print!(" {t:>8.3}");
            }
            println!(
                " {:>10} {:>10} {:>9.2} {:>9.1e}",
                format!("{:?}", layer.auto_strategy(&codebook, [batch, c, hw, hw])?),
                best_name,
                time("auto") / best,
                (num / den).sqrt()
            );
        }
    }
    Ok(())
}

/// Median time in ms of every active column, the columns run in turn (one warm-up round),
/// so that load from other processes falls on all of them alike.
fn alternating_medians(
    reps: usize,
    columns: &[(&str, Option<ForwardStrategy>)],
    active: &[bool],
    run: impl Fn(Option<ForwardStrategy>),
) -> Vec<f64> {
    let mut samples = vec![Vec::new(); columns.len()];
    for round in 0..=reps {
        for (c, (_, s)) in columns.iter().enumerate() {
            if !active[c] {
                continue;
            }
            let start = Instant::now();
            run(*s);
            if round > 0 {
                samples[c].push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    samples
        .into_iter()
        .map(|mut t| {
            if t.is_empty() {
                return f64::NAN;
            }
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}
