//! Side-by-side timing of `ConvAlgorithm::Im2col` and `ConvAlgorithm::Winograd` on the real
//! VGG-16 (CIFAR) and ResNet-18 3×3 layer shapes (pad 1, Cin = Cout, f32, batch 8 by
//! default), forward and backward, plus Winograd's f32 error.
//!
//! The two algorithms run alternately in one process; the median of the runs is printed with
//! the ratio im2col / Winograd (> 1: Winograd is faster), and the algorithm `Auto` picks. The
//! error columns compare each f32 forward on N(0, 1) inputs and He-normal weights with the
//! f64 computation of the same data (im2col in f64 equals the direct definition to ~1e-12 in
//! the tests): relative L2 error, and the worst element relative to the largest output.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release --example winograd_vs_im2col [runs] [batch]
//! ```

use std::time::Instant;

use clustered_conv::{Conv2d, ConvAlgorithm, ConvGeometry};
use ndarray::{Array4, ArrayView4};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// mimalloc, as in training: glibc's allocator returns the Winograd weight gradient's large
/// `36·Cout·Cin` buffer to the system and page-faults it back on every backward (README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "common/layers.rs"]
mod layers;

fn normal(rng: &mut ChaCha8Rng, shape: (usize, usize, usize, usize), scale: f64) -> Array4<f64> {
    Array4::from_shape_simple_fn(shape, || scale * rng.sample::<f64, _>(StandardNormal))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Relative L2 error and worst element (relative to the largest |exact| value) of `got`.
fn errors(got: ArrayView4<f32>, exact: ArrayView4<f64>) -> (f64, f64) {
    let (mut diff2, mut norm2, mut worst, mut max) = (0.0, 0.0, 0.0f64, 0.0f64);
    for (&g, &e) in got.iter().zip(exact.iter()) {
        let d = g as f64 - e;
        diff2 += d * d;
        norm2 += e * e;
        worst = worst.max(d.abs());
        max = max.max(e.abs());
    }
    ((diff2 / norm2).sqrt(), worst / max)
}

/// Milliseconds of one forward (`backward = false`) or one backward pass, median of `runs`,
/// for each layer, alternating between them.
fn time(layers: [&Conv2d<f32>; 2], x: &Array4<f32>, runs: usize, backward: bool) -> [f64; 2] {
    let y = layers[0].forward(x.view()).expect("valid layer");
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (layer, t) in layers.iter().zip(times.iter_mut()) {
            let start = Instant::now();
            if backward {
                std::hint::black_box(layer.backward(x.view(), y.view()).expect("valid"));
            } else {
                std::hint::black_box(layer.forward(x.view()).expect("valid"));
            }
            t.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.map(median)
}

fn main() -> clustered_conv::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let runs = args.first().copied().unwrap_or(9);
    let batch = args.get(1).copied().unwrap_or(8);
    println!(
        "threads {}, batch {batch}, f32, median of {runs} alternating runs (ms)",
        rayon::current_num_threads()
    );
    println!("| layer | fwd im2col | fwd Winograd | ratio | fwd+bwd im2col | fwd+bwd Winograd | ratio | Auto | Winograd rel. L2 | worst | im2col rel. L2 |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, c, hw) in layers::SHAPES {
        let mut rng = ChaCha8Rng::seed_from_u64(c as u64 + hw as u64);
        let w = normal(&mut rng, (c, c, 3, 3), (2.0 / (9 * c) as f64).sqrt());
        let x = normal(&mut rng, (batch, c, hw, hw), 1.0);
        let same = ConvGeometry::default().padding(1, 1);
        let exact = Conv2d::new(w.clone(), None, same)?.forward(x.view())?;
        let (w, x) = (w.mapv(|v| v as f32), x.mapv(|v| v as f32));
        let make = |a| Conv2d::new(w.clone(), None, same)?.with_algorithm(a);
        let (im2col, wino) = (make(ConvAlgorithm::Im2col)?, make(ConvAlgorithm::Winograd)?);
        let auto = make(ConvAlgorithm::Auto)?;
        let (wino_y, auto_y) = (wino.forward(x.view())?, auto.forward(x.view())?);
        let picked = if auto_y == wino_y {
            "Winograd"
        } else {
            "im2col"
        };
        let (wino_l2, wino_worst) = errors(wino_y.view(), exact.view());
        let (im2col_l2, _) = errors(im2col.forward(x.view())?.view(), exact.view());
        let [f_a, f_b] = time([&im2col, &wino], &x, runs, false);
        let [b_a, b_b] = time([&im2col, &wino], &x, runs, true);
        let (t_a, t_b) = (f_a + b_a, f_b + b_b);
        println!(
            "| {name} | {f_a:.2} | {f_b:.2} | {:.2}× | {t_a:.2} | {t_b:.2} | {:.2}× | {picked} | {wino_l2:.1e} | {wino_worst:.1e} | {im2col_l2:.1e} |",
            f_a / f_b,
            t_a / t_b
        );
    }
    Ok(())
}
