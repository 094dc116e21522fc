//! Side-by-side forward timing of `ConvAlgorithm::Im2col` and `ConvAlgorithm::Winograd` on
//! 3×3, pad-1, Cin = Cout layers (f32, batch 8 by default): the two run alternately in one
//! process and the median of the runs is printed, with the ratio im2col / Winograd.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release --example winograd_vs_im2col [runs] [batch]
//! ```

use std::time::Instant;

use clustered_conv::{Conv2d, ConvAlgorithm, ConvGeometry};
use ndarray::Array4;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

fn normal(rng: &mut ChaCha8Rng, shape: (usize, usize, usize, usize), scale: f32) -> Array4<f32> {
    Array4::from_shape_simple_fn(shape, || scale * rng.sample::<f32, _>(StandardNormal))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> clustered_conv::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let runs = args.first().copied().unwrap_or(9);
    let batch = args.get(1).copied().unwrap_or(8);
    println!(
        "threads {}, batch {batch}, median of {runs} alternating runs (ms)",
        rayon::current_num_threads()
    );
    println!("layer      im2col  winograd  im2col/winograd");
    for (c, hw) in [(64, 56), (128, 28), (256, 14), (512, 7)] {
        let mut rng = ChaCha8Rng::seed_from_u64(c as u64);
        let w = normal(&mut rng, (c, c, 3, 3), (2.0 / (9 * c) as f32).sqrt());
        let x = normal(&mut rng, (batch, c, hw, hw), 1.0);
        let same = ConvGeometry::default().padding(1, 1);
        let im2col = Conv2d::new(w.clone(), None, same)?.with_algorithm(ConvAlgorithm::Im2col)?;
        let wino = Conv2d::new(w, None, same)?.with_algorithm(ConvAlgorithm::Winograd)?;
        // Warm up (and build the cached transformed weight).
        im2col.forward(x.view())?;
        wino.forward(x.view())?;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let t = Instant::now();
            std::hint::black_box(im2col.forward(x.view())?);
            a.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            std::hint::black_box(wino.forward(x.view())?);
            b.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (a, b) = (median(a), median(b));
        println!("{c:>3}@{hw:<3}  {a:>8.2}  {b:>8.2}  {:>6.2}", a / b);
    }
    Ok(())
}
