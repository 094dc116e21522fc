//! `bench`: every layer's forward time, clustered (automatic strategy) against the dense
//! convolution of its reconstructed weight, on the same random input.

use std::path::Path;
use std::time::Instant;

use clustered_conv::io::CompressedModel;
use clustered_conv::{CompressedLayer, Error};
use ndarray::Array4;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Parses `HxW`.
fn parse_hw(text: &str) -> Result<(usize, usize), Error> {
    let invalid = || Error::Parse {
        what: "input size",
        input: text.to_string(),
        expected: "HxW with positive integers, e.g. 32x32",
    };
    let (h, w) = text.split_once(['x', 'X']).ok_or_else(invalid)?;
    match (h.trim().parse(), w.trim().parse()) {
        (Ok(h), Ok(w)) if h > 0 && w > 0 => Ok((h, w)),
        _ => Err(invalid()),
    }
}

/// Median wall time of `repeats` runs of `f`, in milliseconds, after one warm-up run.
fn median_ms<T>(repeats: usize, mut f: impl FnMut() -> Result<T, Error>) -> Result<f64, Error> {
    f()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

pub fn run(file: &Path, input: &str, batch: usize, repeats: usize) -> Result<(), Error> {
    let (h, w) = parse_hw(input)?;
    if batch == 0 || repeats == 0 {
        return Err(Error::Parse {
            what: "batch or repeats",
            input: format!("batch {batch}, repeats {repeats}"),
            expected: "positive integers",
        });
    }
    let model = CompressedModel::load(file)?;
    let net = &model.network;
    println!(
        "input {batch}×C×{h}×{w}, median of {repeats} runs, {} rayon threads",
        rayon::current_num_threads()
    );
    println!(
        "{:<24} {:>16} {:>11} {:>10} {:>13} {:>8} {:>9}",
        "layer", "shape", "strategy", "dense ms", "clustered ms", "speed-up", "max err"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (mut total_dense, mut total_clustered) = (0.0, 0.0);
    for (l, layer) in net.layers().iter().enumerate() {
        let CompressedLayer::Clustered {
            name,
            codebook,
            layer,
        } = layer
        else {
            continue;
        };
        let codebook = net.codebooks().get(*codebook)?;
        let dense = net.dense_layer(l)?;
        let x = Array4::from_shape_simple_fn((batch, layer.in_channels(), h, w), || {
            rng.random_range(-1.0f32..1.0)
        });
        let strategy = layer.auto_strategy(codebook, [batch, layer.in_channels(), h, w])?;
        let want = dense.forward(x.view())?;
        let got = layer.forward(codebook, x.view())?;
        let scale = want
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(f32::MIN_POSITIVE);
        let err = want
            .iter()
            .zip(&got)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        let t_dense = median_ms(repeats, || dense.forward(x.view()))?;
        let t_clustered = median_ms(repeats, || layer.forward(codebook, x.view()))?;
        total_dense += t_dense;
        total_clustered += t_clustered;
        let (kh, kw) = codebook.kernel_size();
        println!(
            "{:<24} {:>16} {:>11} {:>10.3} {:>13.3} {:>7.2}× {:>9.1e}",
            name,
            format!("{}×{}×{kh}×{kw}", layer.out_channels(), layer.in_channels()),
            format!("{strategy:?}"),
            t_dense,
            t_clustered,
            t_dense / t_clustered,
            err
        );
    }
    println!(
        "{:<24} {:>16} {:>11} {:>10.3} {:>13.3} {:>7.2}×",
        "total",
        "",
        "",
        total_dense,
        total_clustered,
        total_dense / total_clustered
    );
    Ok(())
}
