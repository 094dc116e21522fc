//! Seeding: greedy k-means++ and uniform random rows.

use ndarray::{Array2, ArrayView2};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::blocked::{Blocked, CandidateDistances, BLOCK};
use super::{row, Transforms, CHUNK_ROWS};
use crate::linalg::simd::Kernels;
use crate::linalg::Real;

/// Greedy k-means++ (Arthur & Vassilvitskii 2007, with scikit-learn's greedy variant):
/// the first centre is a uniform row; each next one is the best of `2 + ⌊ln k⌋` candidates
/// drawn with probability ∝ squared distance to the nearest chosen centre, "best" meaning the
/// lowest resulting potential (lowest candidate position on ties).
///
/// With row `weights`, the first centre is drawn ∝ weight and the others ∝ weight × squared
/// distance, and potentials are weighted sums: a row of integer weight `w` is drawn and
/// counted like `w` adjacent copies of it (the same bits when the sums are exact).
///
/// All candidates of a step are measured in one pass over the data, in parallel chunks of
/// [`CHUNK_ROWS`] rows, with the vectorised kernel of [`blocked`](super::blocked); a draw
/// finds its chunk from the per-chunk potentials, then its row inside the chunk. Scratch: an
/// `f64` copy of the data and `n` distances (and `n` padded weights).
pub(crate) fn kmeans_plus_plus<F: Real>(
    data: &ArrayView2<F>,
    k: usize,
    weights: Option<&[f64]>,
    transforms: &Transforms,
    rng: &mut ChaCha8Rng,
    kernels: Kernels,
) -> Array2<F> {
    let (n, d) = data.dim();
    let trials = 2 + (k as f64).ln().floor() as usize;
    let blocked = Blocked::new(data);
    let padded = blocked.blocks() * BLOCK;
    let weights = weights.map(|w| {
        let mut w = w.to_vec();
        w.resize(padded, 0.0);
        w
    });
    let weights = weights.as_deref();
    let mut centers = Array2::<F>::zeros((k, d));
    let first = match weights {
        None => rng.random_range(0..n),
        Some(w) => {
            let pots = chunk_sums(&w[..n]);
            draw(
                rng.random::<f64>() * pots.iter().sum::<f64>(),
                &pots,
                &w[..n],
            )
        }
    };
    centers.row_mut(0).assign(&data.row(first));
    let mut closest = distances_to(data, &copies(data, first, transforms));
    closest.resize(padded, 0.0);
    let mut chunk_pots = chunk_sums(&weighted(&closest, weights));
    let mut potential: f64 = chunk_pots.iter().sum();
    let step = Step {
        blocked: &blocked,
        weights,
        copies_per: transforms.len(),
        kernels,
    };
    for c in 1..k {
        let targets = weighted(&closest[..n], weights);
        let candidates: Vec<usize> = (0..trials)
            .map(|_| draw(rng.random::<f64>() * potential, &chunk_pots, &targets))
            .collect();
        let all: Vec<f64> = candidates
            .iter()
            .flat_map(|&i| copies(data, i, transforms))
            .collect();
        // Every candidate's potential, per chunk; the distances are not kept (writing
        // `trials` arrays of n distances per step would cost more than recomputing the
        // winner's).
        let partials = step.potentials(&all, &mut closest, false);
        let pots: Vec<f64> = (0..trials)
            .map(|t| partials.iter().map(|p| p[t]).sum())
            .collect();
        // Lowest potential wins; ties go to the earliest candidate.
        let best = (1..trials).fold(0, |b, t| if pots[t] < pots[b] { t } else { b });
        let winner = &all[best * transforms.len() * d..][..transforms.len() * d];
        let partials = step.potentials(winner, &mut closest, true);
        chunk_pots = partials.iter().map(|p| p[0]).collect();
        potential = chunk_pots.iter().sum();
        centers.row_mut(c).assign(&data.row(candidates[best]));
    }
    centers
}

/// Sums of `values` per chunk of [`CHUNK_ROWS`], each in row order.
fn chunk_sums(values: &[f64]) -> Vec<f64> {
    values.chunks(CHUNK_ROWS).map(|c| c.iter().sum()).collect()
}

/// `distances` times the row weights (borrowed as they are without weights).
fn weighted<'a>(distances: &'a [f64], weights: Option<&[f64]>) -> std::borrow::Cow<'a, [f64]> {
    match weights {
        None => std::borrow::Cow::Borrowed(distances),
        Some(w) => distances.iter().zip(w).map(|(d, w)| d * w).collect(),
    }
}

/// What every candidate evaluation of a seeding reads.
struct Step<'a> {
    blocked: &'a Blocked,
    /// Padded row weights.
    weights: Option<&'a [f64]>,
    /// Copies (transforms) per candidate.
    copies_per: usize,
    kernels: Kernels,
}

impl Step<'_> {
    /// Per chunk of [`CHUNK_ROWS`] rows, the (weighted) potential of every candidate in
    /// `copies`; with `update` (one candidate), `closest` becomes its distances.
    fn potentials(&self, copies: &[f64], closest: &mut [f64], update: bool) -> Vec<Vec<f64>> {
        closest
            .par_chunks_mut(CHUNK_ROWS)
            .enumerate()
            .map(|(ci, closest)| {
                let first = ci * CHUNK_ROWS / BLOCK;
                let weights = self.weights.map(|w| &w[ci * CHUNK_ROWS..][..closest.len()]);
                self.kernels.dispatch(CandidateDistances {
                    data: self.blocked,
                    blocks: first..first + closest.len() / BLOCK,
                    copies,
                    copies_per: self.copies_per,
                    closest,
                    weights,
                    update,
                })
            })
            .collect()
    }
}

/// The row a k-means++ draw picks: the first whose running weight exceeds `target`, found
/// chunk by chunk (`chunk_pots` are the weights' sums per [`CHUNK_ROWS`] rows). A row of
/// weight 0 is never picked while any row has positive weight; `target` at or beyond the
/// total (rounding) picks the last positive row of the chosen chunk, or the last row.
fn draw(target: f64, chunk_pots: &[f64], weights: &[f64]) -> usize {
    let mut before = 0.0;
    for (ci, &pot) in chunk_pots.iter().enumerate() {
        if before + pot > target {
            let rows = ci * CHUNK_ROWS..(ci * CHUNK_ROWS + CHUNK_ROWS).min(weights.len());
            let mut running = before;
            let mut last_positive = None;
            for i in rows {
                if weights[i] > 0.0 {
                    last_positive = Some(i);
                }
                running += weights[i];
                if running > target {
                    return i;
                }
            }
            if let Some(i) = last_positive {
                return i;
            }
        }
        before += pot;
    }
    weights.len() - 1
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

/// `k` distinct rows drawn uniformly; with `weights`, `k` distinct rows drawn uniformly
/// among those of positive weight (as if the others were not there).
pub(crate) fn random_rows<F: Real>(
    data: &ArrayView2<F>,
    k: usize,
    weights: Option<&[f64]>,
    rng: &mut ChaCha8Rng,
) -> Array2<F> {
    let rows: Vec<usize> = match weights {
        None => (0..data.nrows()).collect(),
        Some(w) => (0..data.nrows()).filter(|&i| w[i] > 0.0).collect(),
    };
    let picks = rand::seq::index::sample(rng, rows.len(), k);
    let mut centers = Array2::<F>::zeros((k, data.ncols()));
    for (c, i) in picks.iter().enumerate() {
        centers.row_mut(c).assign(&data.row(rows[i]));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The first row whose running weight exceeds `target`, by a plain prefix sum.
    fn naive(target: f64, weights: &[f64]) -> usize {
        let mut running = 0.0;
        for (i, &w) in weights.iter().enumerate() {
            running += w;
            if running > target {
                return i;
            }
        }
        weights.len() - 1
    }

    #[test]
    fn draws_match_a_plain_prefix_search_and_skip_zero_weights() {
        // Integer weights (exact sums), runs of zeros across chunk boundaries.
        let n = 3 * CHUNK_ROWS + 123;
        let weights: Vec<f64> = (0..n)
            .map(|i| {
                if (i / 1000) % 2 == 1 {
                    0.0
                } else {
                    (i % 7) as f64
                }
            })
            .collect();
        let chunk_pots: Vec<f64> = weights.chunks(CHUNK_ROWS).map(|c| c.iter().sum()).collect();
        let total: f64 = weights.iter().sum();
        for step in 0..2000 {
            let target = total * step as f64 / 2000.0;
            let picked = draw(target, &chunk_pots, &weights);
            assert_eq!(picked, naive(target, &weights), "target {target}");
            assert!(weights[picked] > 0.0);
        }
        // At or past the total: the last positive row of the last non-empty chunk.
        let last_positive = weights.iter().rposition(|&w| w > 0.0).unwrap();
        assert_eq!(draw(total, &chunk_pots, &weights), n - 1);
        assert!(last_positive < n);
        // All weights zero: the last row.
        let zeros = vec![0.0; 10];
        assert_eq!(draw(0.0, &[0.0], &zeros), 9);
    }
}
