//! Seeding: greedy k-means++ and uniform random rows.

use ndarray::{Array2, ArrayView2};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{chunked_sum, row, sq_dist, Transforms, CHUNK_ROWS};
use crate::scalar::Real;

/// Greedy k-means++ (Arthur & Vassilvitskii 2007, with scikit-learn's greedy variant):
/// the first centre is a uniform row; each next one is the best of `2 + ⌊ln k⌋` candidates
/// drawn with probability ∝ squared distance to the nearest chosen centre, "best" meaning the
/// lowest resulting potential (lowest candidate position on ties).
pub(crate) fn kmeans_plus_plus<F: Real>(
    data: &ArrayView2<F>,
    k: usize,
    transforms: &Transforms,
    rng: &mut ChaCha8Rng,
) -> Array2<F> {
    let (n, d) = data.dim();
    let trials = 2 + (k as f64).ln().floor() as usize;
    let mut centers = Array2::<F>::zeros((k, d));
    let first = rng.random_range(0..n);
    centers.row_mut(0).assign(&data.row(first));
    let mut closest = distances_to(data, &copies(data, first, transforms));
    let mut potential = chunked_sum(n, |i| closest[i]);
    let mut cumulative = vec![0.0f64; n];
    for c in 1..k {
        prefix_sums(&closest, &mut cumulative);
        let mut best: Option<(f64, usize)> = None;
        for _ in 0..trials {
            let target = rng.random::<f64>() * potential;
            // First row whose cumulative weight exceeds the target: a zero-distance row is
            // never drawn while any row has positive distance.
            let candidate = cumulative.partition_point(|&v| v <= target).min(n - 1);
            let cand = copies(data, candidate, transforms);
            let pot = chunked_sum(n, |i| closest[i].min(nearest_copy(row(data, i), &cand)));
            if best.is_none_or(|(p, _)| pot < p) {
                best = Some((pot, candidate));
            }
        }
        let (pot, chosen) = best.expect("at least two trials");
        potential = pot;
        let chosen_copies = copies(data, chosen, transforms);
        centers.row_mut(c).assign(&data.row(chosen));
        closest
            .par_chunks_mut(CHUNK_ROWS)
            .enumerate()
            .for_each(|(ci, chunk)| {
                for (j, v) in chunk.iter_mut().enumerate() {
                    *v = v.min(nearest_copy(row(data, ci * CHUNK_ROWS + j), &chosen_copies));
                }
            });
    }
    centers
}

/// Every transformed copy of row `i` (as a centre candidate).
fn copies<F: Real>(data: &ArrayView2<F>, i: usize, transforms: &Transforms) -> Array2<F> {
    transforms.expand(
        &data
            .slice_axis(ndarray::Axis(0), ndarray::Slice::from(i..i + 1))
            .to_owned(),
    )
}

/// Squared distance from `x` to the nearest of `copies`' rows.
fn nearest_copy<F: Real>(x: &[F], copies: &Array2<F>) -> f64 {
    let copies = copies.view();
    (0..copies.nrows())
        .map(|t| sq_dist(x, row(&copies, t)))
        .fold(f64::INFINITY, f64::min)
}

/// `k` distinct rows drawn uniformly.
pub(crate) fn random_rows<F: Real>(
    data: &ArrayView2<F>,
    k: usize,
    rng: &mut ChaCha8Rng,
) -> Array2<F> {
    let picks = rand::seq::index::sample(rng, data.nrows(), k);
    let mut centers = Array2::<F>::zeros((k, data.ncols()));
    for (c, i) in picks.iter().enumerate() {
        centers.row_mut(c).assign(&data.row(i));
    }
    centers
}

/// Squared distance of every row to the nearest of `copies`' rows, in parallel fixed chunks.
fn distances_to<F: Real>(data: &ArrayView2<F>, copies: &Array2<F>) -> Vec<f64> {
    let mut out = vec![0.0; data.nrows()];
    out.par_chunks_mut(CHUNK_ROWS)
        .enumerate()
        .for_each(|(ci, chunk)| {
            for (j, v) in chunk.iter_mut().enumerate() {
                *v = nearest_copy(row(data, ci * CHUNK_ROWS + j), copies);
            }
        });
    out
}

/// Running sums of `values` into `out` (sequential: the order is fixed by construction).
fn prefix_sums(values: &[f64], out: &mut [f64]) {
    let mut acc = 0.0;
    for (o, &v) in out.iter_mut().zip(values) {
        acc += v;
        *o = acc;
    }
}
