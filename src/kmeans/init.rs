//! Seeding: greedy k-means++ and uniform random rows.

use ndarray::{Array2, ArrayView2};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{chunked_sum, row, Transforms, CHUNK_ROWS};
use crate::scalar::Real;

/// Greedy k-means++ (Arthur & Vassilvitskii 2007, with scikit-learn's greedy variant):
/// the first centre is a uniform row; each next one is the best of `2 + ⌊ln k⌋` candidates
/// drawn with probability ∝ squared distance to the nearest chosen centre, "best" meaning the
/// lowest resulting potential (lowest candidate position on ties). Scratch: `n·(2 + ⌊ln k⌋)`
/// distances in `f64`.
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
    // Row i's candidate distances, `trials` per row: every candidate is measured in one pass
    // over the data, and the winner's distances are reused for the update.
    let mut candidate_dist = vec![0.0f64; n * trials];
    for c in 1..k {
        prefix_sums(&closest, &mut cumulative);
        // First row whose cumulative weight exceeds the target: a zero-distance row is never
        // drawn while any row has positive distance.
        let candidates: Vec<usize> = (0..trials)
            .map(|_| {
                let target = rng.random::<f64>() * potential;
                cumulative.partition_point(|&v| v <= target).min(n - 1)
            })
            .collect();
        // All copies of all candidates, coordinate-major (`d × trials·S`), so one pass over a
        // row advances every distance at once (each still summed in coordinate order).
        let copies_per = transforms.len();
        let all: Vec<Vec<f64>> = candidates
            .iter()
            .map(|&i| copies(data, i, transforms))
            .collect();
        let m = trials * copies_per;
        let d = data.ncols();
        let by_coord: Vec<f64> = (0..d)
            .flat_map(|j| {
                all.iter()
                    .flat_map(move |c| c.chunks_exact(d).map(move |row| row[j]))
            })
            .collect();
        // Potential of each candidate, summed per fixed chunk then in chunk order.
        let partials: Vec<Vec<f64>> = candidate_dist
            .par_chunks_mut(CHUNK_ROWS * trials)
            .enumerate()
            .map(|(ci, chunk)| {
                let mut pots = vec![0.0; trials];
                let mut acc = vec![0.0; m];
                for (j, dists) in chunk.chunks_exact_mut(trials).enumerate() {
                    let i = ci * CHUNK_ROWS + j;
                    acc.fill(0.0);
                    for (&xv, coord) in row(data, i).iter().zip(by_coord.chunks_exact(m)) {
                        let xv = xv.to_f64_exact();
                        for (a, &cv) in acc.iter_mut().zip(coord) {
                            let t = xv - cv;
                            *a += t * t;
                        }
                    }
                    for ((d, pot), copies) in dists
                        .iter_mut()
                        .zip(&mut pots)
                        .zip(acc.chunks_exact(copies_per))
                    {
                        let nearest = copies.iter().copied().fold(f64::INFINITY, f64::min);
                        *d = closest[i].min(nearest);
                        *pot += *d;
                    }
                }
                pots
            })
            .collect();
        let pots: Vec<f64> = (0..trials)
            .map(|t| partials.iter().map(|p| p[t]).sum())
            .collect();
        // Lowest potential wins; ties go to the earliest candidate.
        let best = (1..trials).fold(0, |b, t| if pots[t] < pots[b] { t } else { b });
        potential = pots[best];
        centers.row_mut(c).assign(&data.row(candidates[best]));
        closest
            .par_iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = candidate_dist[i * trials + best]);
    }
    centers
}

/// Every transformed copy of row `i` (as a centre candidate), flattened, in `f64`.
fn copies<F: Real>(data: &ArrayView2<F>, i: usize, transforms: &Transforms) -> Vec<f64> {
    let one = data
        .slice_axis(ndarray::Axis(0), ndarray::Slice::from(i..i + 1))
        .to_owned();
    transforms
        .expand(&one)
        .iter()
        .map(|v| v.to_f64_exact())
        .collect()
}

/// Squared distance from `x` to the nearest of the rows of `copies` (flattened, `x.len()`
/// values each), accumulated in `f64` in coordinate order.
#[inline]
fn nearest_copy<F: Real>(x: &[F], copies: &[f64]) -> f64 {
    copies
        .chunks_exact(x.len())
        .map(|c| {
            x.iter().zip(c).fold(0.0, |acc, (&a, &b)| {
                let t = a.to_f64_exact() - b;
                acc + t * t
            })
        })
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
fn distances_to<F: Real>(data: &ArrayView2<F>, copies: &[f64]) -> Vec<f64> {
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
