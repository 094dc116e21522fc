//! Measures every forward strategy of `ClusteredConv2d` against the dense `Conv2d` on real
//! VGG-16 (CIFAR) and ResNet-18 3×3 layer shapes, and prints one table of time ratios.
//!
//! Indices come from k-means of a weight tensor (random-normal weights, or "skewed" weights
//! made of Zipf-distributed patterns plus noise, like trained networks' frequency-sorted
//! usage). Run: `cargo run --release --example strategy_table -- [--batch N] [--k K,K,..]
//! [--weights normal|skewed] [--threads N] [--reps N] [--only NAME]
//! [--strategies dense,input,output,auto]`.

use std::time::Instant;

use clustered_conv::{ClusteredConv2d, Conv2d, ConvGeometry, ForwardStrategy, KernelCodebook};
use ndarray::Array4;
use rand::{Rng, SeedableRng};

#[path = "common/layers.rs"]
mod layers;
use layers::{weights, SHAPES};
use rand_chacha::ChaCha8Rng;

fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

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
    let which = arg("--strategies", "dense,input,output,auto");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    println!(
        "batch {batch}, {} rayon threads, weights {kind}, median of {reps}; times in ms, speed-up = dense / strategy",
        pool.current_num_threads()
    );
    println!(
        "{:<15} {:>4} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>10} {:>9}",
        "layer",
        "K",
        "ΣV/CC",
        "pad",
        "dense",
        "input",
        "output",
        "auto",
        "in×",
        "out×",
        "auto×",
        "auto pick",
        "rel.err"
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
            let time = |s: Option<ForwardStrategy>| {
                pool.install(|| {
                    median_ms(reps, || {
                        match s {
                            None => drop(dense.forward(x.view())),
                            Some(s) => drop(layer.forward_with(&codebook, x.view(), s)),
                        };
                    })
                })
            };
            let skip = |name: &str| !which.contains(name);
            let td = if skip("dense") { f64::NAN } else { time(None) };
            let ti = if skip("input") {
                f64::NAN
            } else {
                time(Some(ForwardStrategy::InputSide))
            };
            let to = if skip("output") {
                f64::NAN
            } else {
                time(Some(ForwardStrategy::OutputSide))
            };
            let ta = if skip("auto") {
                f64::NAN
            } else {
                time(Some(ForwardStrategy::Auto))
            };
            let oracle = layer.forward_with(&codebook, x.view(), ForwardStrategy::Dense)?;
            let auto = layer.forward(&codebook, x.view())?;
            let num: f64 = auto
                .iter()
                .zip(oracle.iter())
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            let den: f64 = oracle.iter().map(|b| f64::from(*b).powi(2)).sum();
            println!(
                "{:<15} {:>4} {:>8.3} {:>6.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>7.2} {:>7.2} {:>7.2} {:>10} {:>9.1e}",
                name,
                k,
                cost.sum_v as f64 / (c * c) as f64,
                cost.padding,
                td,
                ti,
                to,
                ta,
                td / ti,
                td / to,
                td / ta,
                format!("{:?}", layer.auto_strategy(&codebook, [batch, c, hw, hw])?),
                (num / den).sqrt()
            );
        }
    }
    Ok(())
}
