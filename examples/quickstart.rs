//! Quickstart: compress one 3×3 conv layer by clustering its kernels, and measure what it
//! costs in accuracy.
//!
//! 1. Build a 256→256 3×3 weight (65,536 kernels) that looks like a trained one: each kernel
//!    is a random signed combination of a few smooth 3×3 patterns (Gaussian blob,
//!    horizontal/vertical/diagonal edges, ± centre, Laplacian) plus noise, with a log-normal
//!    magnitude around the He scale.
//! 2. For K in {16, 64, 256}, fit a kernel codebook (k-means++ on L2-normalised kernels,
//!    one scale per kernel), and report the fit time, Lloyd iterations, the relative
//!    reconstruction error ‖W − Ŵ‖/‖W‖, the entropy of the stored indices and the paper's
//!    compression ratio (fixed-width indices + 16-bit scales + a 32-bit codebook).
//! 3. Run the layer on a batch of 8 post-ReLU-like inputs (256×16×16): the dense convolution
//!    with W, and the clustered layer (indices + scales + shared codebook, redundancy-removing
//!    forward chosen by `ForwardStrategy::Auto`); report the relative output error
//!    ‖y − ŷ‖/‖y‖, both times and the speed-up.
//!
//! Run with `cargo run --release --example quickstart`.

use std::error::Error;
use std::time::{Duration, Instant};

use clustered_conv::{compression_ratio, ClusteredConv2d, Conv2d, ConvGeometry, KernelCodebook};
use ndarray::{Array, Array4, Dimension};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

const CIN: usize = 256;
const COUT: usize = 256;
const BATCH: usize = 8;
const HW: usize = 16;
const KS: [usize; 3] = [16, 64, 256];
/// Bits per stored kernel scale (the paper stores them as 16-bit floats).
const SCALE_BITS: u32 = 16;

fn main() -> Result<(), Box<dyn Error>> {
    let mut rng = ChaCha8Rng::seed_from_u64(2018);
    let weight = trained_like_weight(&mut rng)?;
    let n_kernels = (COUT * CIN) as u64;
    let input = Array4::<f32>::from_shape_simple_fn((BATCH, CIN, HW, HW), || {
        let z: f32 = rng.sample(StandardNormal);
        z.max(0.0)
    });
    let geometry = ConvGeometry::default().padding(1, 1);

    println!(
        "layer: {COUT}×{CIN}×3×3 ({n_kernels} kernels), input: {BATCH}×{CIN}×{HW}×{HW}, \
         {:.2} GMAC per forward",
        (BATCH * COUT * CIN * 9 * HW * HW) as f64 * 1e-9
    );

    let dense = Conv2d::new(weight.clone(), None, geometry)?;
    let (y_ref, t_ref) = timed(|| dense.forward(input.view()))?;

    println!(
        "\n{:>5} {:>9} {:>6} {:>11} {:>9} {:>9} {:>8} {:>11} {:>10} {:>9} {:>10}",
        "K",
        "fit (ms)",
        "iters",
        "‖W−Ŵ‖/‖W‖",
        "idx bits",
        "entropy",
        "ratio",
        "‖y−ŷ‖/‖y‖",
        "fwd (ms)",
        "speed-up",
        "strategy"
    );
    println!(
        "{:>5} {:>9} {:>6} {:>11} {:>9} {:>9} {:>8} {:>11} {:>10.1} {:>9} {:>10}",
        "dense",
        "-",
        "-",
        "0",
        "-",
        "-",
        "1.0×",
        "0",
        ms(t_ref),
        "1.00×",
        "Dense"
    );
    for &k in &KS {
        let start = Instant::now();
        let fit = KernelCodebook::<f32>::params(k)
            .seed(7)
            .fit(&[weight.view()])?;
        let fit_time = start.elapsed();
        let codebook = &fit.codebook;
        let assignment = &fit.assignments[0];

        let w_hat = assignment.reconstruct(codebook)?;
        let weight_err = rel_err(&weight, &w_hat);
        let entropy = codebook.usage(&[assignment.indices.view()])?.entropy_bits();
        let ratio = compression_ratio(n_kernels, 9, codebook.packed_index_bits(), SCALE_BITS, k);

        let layer = ClusteredConv2d::from_conv(&dense, codebook)?;
        let (y_hat, t_hat) = timed(|| layer.forward(codebook, input.view()))?;
        let out_err = rel_err(&y_ref, &y_hat);
        let strategy = layer.auto_strategy(codebook, [BATCH, CIN, HW, HW])?;

        println!(
            "{:>5} {:>9.0} {:>6} {:>11.4} {:>9} {:>9.2} {:>7.1}× {:>11.4} {:>10.1} {:>8.2}× {:>10}",
            k,
            ms(fit_time),
            fit.n_iter,
            weight_err,
            codebook.packed_index_bits(),
            entropy,
            ratio,
            out_err,
            ms(t_hat),
            t_ref.as_secs_f64() / t_hat.as_secs_f64(),
            format!("{strategy:?}")
        );
    }
    println!(
        "\nratio: 32-bit weights vs. fixed-width indices + {SCALE_BITS}-bit scales + a 32-bit \
         codebook;\nentropy: bits per index an ideal entropy coder would need;\nfwd: best of 3 \
         forwards: dense with W, or the clustered layer with the strategy Auto picks\n\
         (InputSide convolves each shared kernel once per input channel; Dense rebuilds Ŵ);\n\
         {} rayon threads.",
        rayon::current_num_threads()
    );
    Ok(())
}

/// Six unit-norm 3×3 patterns (row-major) of the kind trained kernels are mostly made of.
fn patterns() -> Vec<[f32; 9]> {
    let blob: [f32; 9] = std::array::from_fn(|i| {
        let (r, c) = ((i / 3) as f32 - 1.0, (i % 3) as f32 - 1.0);
        (-(r * r + c * c) / 2.0).exp()
    });
    let raw = [
        blob,
        [1.0, 2.0, 1.0, 0.0, 0.0, 0.0, -1.0, -2.0, -1.0], // horizontal edge
        [1.0, 0.0, -1.0, 2.0, 0.0, -2.0, 1.0, 0.0, -1.0], // vertical edge
        [0.0, 1.0, 2.0, -1.0, 0.0, 1.0, -2.0, -1.0, 0.0], // diagonal edge
        [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0],    // centre
        [0.0, 1.0, 0.0, 1.0, -4.0, 1.0, 0.0, 1.0, 0.0],   // Laplacian
    ];
    raw.iter()
        .map(|p| {
            let norm = p.iter().map(|v| v * v).sum::<f32>().sqrt();
            p.map(|v| v / norm)
        })
        .collect()
}

/// A `COUT × CIN × 3 × 3` weight whose kernels are sparse random combinations of
/// [`patterns`] plus noise of 15% of their norm, with log-normal magnitudes around the He scale.
fn trained_like_weight(rng: &mut ChaCha8Rng) -> Result<Array4<f32>, Box<dyn Error>> {
    let patterns = patterns();
    // A He-initialised 3×3 kernel (std `sqrt(2 / (Cin·9))` per tap) has norm ≈ 3·std.
    let he_norm = 3.0 * (2.0 / (CIN * 9) as f32).sqrt();
    let mut data = Vec::with_capacity(COUT * CIN * 9);
    for _ in 0..COUT * CIN {
        let mut k = [0.0f32; 9];
        // One to three active patterns with signed, unequal weights.
        let active = rng.random_range(1..=3);
        for _ in 0..active {
            let p = &patterns[rng.random_range(0..patterns.len())];
            let a: f32 = rng.sample(StandardNormal);
            for (kv, pv) in k.iter_mut().zip(p) {
                *kv += a * pv;
            }
        }
        let norm = k.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
        let z: f32 = rng.sample(StandardNormal);
        let magnitude = he_norm * (0.5 * z).exp();
        for v in k {
            // Per-tap noise std 0.05 → noise norm ≈ 0.15 against a unit-norm signal.
            let noise: f32 = rng.sample(StandardNormal);
            data.push(magnitude * (v / norm + 0.05 * noise));
        }
    }
    Ok(Array4::from_shape_vec((COUT, CIN, 3, 3), data)?)
}

/// Best-of-3 wall time of a forward pass (after one untimed warm-up run), and its output.
fn timed(
    forward: impl Fn() -> clustered_conv::Result<Array4<f32>>,
) -> Result<(Array4<f32>, Duration), Box<dyn Error>> {
    let mut y = forward()?;
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        y = forward()?;
        best = best.min(start.elapsed());
    }
    Ok((y, best))
}

/// ‖a − b‖ / ‖a‖ over all elements, accumulated in f64.
fn rel_err<D: Dimension>(a: &Array<f32, D>, b: &Array<f32, D>) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b.iter()) {
        num += f64::from(x - y).powi(2);
        den += f64::from(x).powi(2);
    }
    (num / den).sqrt()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
