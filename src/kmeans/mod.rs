//! k-means on the rows of an `(n, d)` matrix: greedy k-means++ seeding, Lloyd iterations,
//! restarts.
//!
//! Semantics follow scikit-learn's `KMeans(algorithm="lloyd")`:
//! - **Seeding**: greedy k-means++ with `2 + ⌊ln k⌋` local trials per centre (the candidate
//!   that lowers the potential most wins), or `k` distinct uniformly drawn rows.
//! - **Stopping**: labels unchanged between two iterations (*strict*), or the squared centre
//!   shift summed over clusters `≤ tol · mean_j Var(X[:, j])` (*tolerance*), or `max_iter`.
//!   When not strictly converged, a final assignment makes labels match the centroids.
//! - **Restarts**: `n_init` runs; the lowest inertia wins (ties: the earliest run), and its
//!   labels, iteration count and history are returned with it.
//! - **Empty clusters** are re-seeded with the points farthest from their assigned centroid
//!   (ties: the lower row index), skipping points that are alone in their cluster; a
//!   centroid is never NaN. Only data with fewer distinct rows than `k` can end with empty
//!   (duplicate) clusters.
//!
//! # Row weights
//! [`ValidKMeansParams::fit_weighted`] minimises `Σ_i w_i·‖x_i − c(i)‖²` (scikit-learn's
//! `sample_weight`): k-means++ draws the first centre ∝ `w` and the others ∝ `w·D²`,
//! potentials and inertia are weighted sums, a centroid is the weighted mean of its rows,
//! and a cluster is empty when none of its rows has a positive weight. Rows of weight 0
//! take no part (they still get labels, but their changes are not counted): the fit is
//! that of the data without them, and a
//! row of integer weight `w` counts as `w` copies of it (the same bits whenever the sums are
//! exact, e.g. small integer data). [`Init::Random`] draws uniformly among the rows of
//! positive weight. A weighted fit never takes the unweighted path, so even unit weights
//! draw different seeds than [`ValidKMeansParams::fit`].
//!
//! # Speed
//! - Distances are computed in `f64` by vectorised kernels (AVX-512/AVX2 when the CPU has
//!   them) with the arithmetic of a plain loop — `Σ_j (x_j − c_j)²` in coordinate order,
//!   no fused multiply-adds — so every instruction set gives the same bits.
//! - k-means++ measures all `2 + ⌊ln k⌋` candidates of a step in one pass over the data,
//!   block by block, and recomputes only the winner's distances.
//! - Lloyd's assignment skips rows with Hamerly's bounds (the distance to the own centroid
//!   is below a lower bound on every other), then tries the own centroid's 32 nearest
//!   centroids (enough when the nearest of them is closer than any centroid outside the
//!   list can be), and scans all centroids only for the rest. Labels are always the exact
//!   `f64` nearest centroid (lowest index on ties): the bounds carry a rounding margin and
//!   only skip work they prove unnecessary.
//!
//! # Determinism
//! Run `r` draws from ChaCha8 seeded with `seed` on stream `r`. All parallel work is split
//! into fixed-size row chunks whose partial results are combined in chunk order (cluster
//! sums too), and ties go to the lowest index: the same seed gives
//! bit-identical results for any number of rayon threads.

mod blocked;
mod init;
mod lloyd;
mod neighbours;

use ndarray::{Array2, ArrayView1, ArrayView2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::linalg::simd::Kernels;
use crate::linalg::Real;

/// How the initial centroids are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Init {
    /// Greedy k-means++ (scikit-learn): `2 + ⌊ln k⌋` candidates per step, best one kept.
    #[default]
    KMeansPlusPlus,
    /// `k` distinct rows drawn uniformly (what the paper's reference code does).
    Random,
}

/// Why Lloyd's iterations stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convergence {
    /// No label changed between two consecutive iterations and no cluster was re-seeded.
    Strict,
    /// The total squared centre shift fell to the tolerance.
    Tolerance,
    /// `max_iter` iterations ran.
    MaxIter,
}

/// Statistics of one Lloyd iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IterationStats {
    /// 1-based iteration number.
    pub iteration: usize,
    /// Sum of squared distances of the points to the centroids they were assigned to in this
    /// iteration (before the centroids were updated), accumulated in `f64`; weighted by the
    /// row weights of a weighted fit.
    pub inertia: f64,
    /// Points whose label changed in this iteration (all points on the first); in a weighted
    /// fit, rows of positive weight (each once, whatever its weight).
    pub label_changes: usize,
    /// Σ over clusters of the squared distance each centroid moved in the update.
    pub center_shift: f64,
    /// Empty clusters re-seeded in the update.
    pub reseeded: usize,
}

/// What a progress callback receives after every Lloyd iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KMeansProgress {
    /// 0-based restart index.
    pub run: usize,
    /// Total number of restarts.
    pub n_init: usize,
    /// The iteration limit.
    pub max_iter: usize,
    /// This iteration's statistics.
    pub stats: IterationStats,
}

/// The outcome of [`KMeansParams::fit`]: the best of `n_init` runs.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansFit<F> {
    /// Centroids, `(k, d)`.
    pub centroids: Array2<F>,
    /// Label of every row, each `< k`; every label is the nearest centroid. (Crate-internal
    /// transform-invariant clustering uses labels `t·k + c < S·k`.)
    pub labels: Vec<usize>,
    /// Sum of squared distances of the rows to their centroids (`f64`, exact per point);
    /// weighted by the row weights of a weighted fit.
    pub inertia: f64,
    /// Lloyd iterations run by the best run.
    pub n_iter: usize,
    /// Why the best run stopped.
    pub convergence: Convergence,
    /// Per-iteration statistics of the best run.
    pub history: Vec<IterationStats>,
    /// Index of the best run.
    pub best_run: usize,
    /// Final inertia of every run, in run order.
    pub run_inertias: Vec<f64>,
}

/// Entry point: `KMeans::params(k)` starts a builder.
#[derive(Debug, Clone, Copy)]
pub struct KMeans;

impl KMeans {
    /// A parameter builder for `k` clusters with the defaults of [`KMeansParams`].
    pub fn params(k: usize) -> KMeansParams {
        KMeansParams::new(k)
    }
}

/// Unchecked k-means settings (builder). [`KMeansParams::check`] validates them.
///
/// Defaults: seed 0, `n_init` 1, `max_iter` 300, `tol` 1e-4, greedy k-means++.
///
/// ```
/// use clustered_conv::KMeans;
/// use ndarray::array;
///
/// let x = array![[0.0f32, 0.0], [0.1, 0.0], [10.0, 10.0], [10.1, 10.0]];
/// let fit = KMeans::params(2).seed(3).fit(x.view())?;
/// assert_eq!(fit.labels[0], fit.labels[1]);
/// assert_ne!(fit.labels[0], fit.labels[2]);
/// assert!(fit.inertia < 0.02);
/// # Ok::<(), clustered_conv::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KMeansParams {
    k: usize,
    seed: u64,
    n_init: usize,
    max_iter: usize,
    tol: f64,
    init: Init,
}

/// Validated k-means settings: only [`KMeansParams::check`] makes one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValidKMeansParams(KMeansParams);

impl KMeansParams {
    /// Defaults for `k` clusters.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            seed: 0,
            n_init: 1,
            max_iter: 300,
            tol: 1e-4,
            init: Init::KMeansPlusPlus,
        }
    }

    /// Seed of the random number generator.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Number of restarts (≥ 1); the lowest inertia wins.
    #[must_use]
    pub fn n_init(mut self, n_init: usize) -> Self {
        self.n_init = n_init;
        self
    }

    /// Maximum Lloyd iterations per run (≥ 1).
    #[must_use]
    pub fn max_iter(mut self, max_iter: usize) -> Self {
        self.max_iter = max_iter;
        self
    }

    /// Relative tolerance (≥ 0, finite), scaled by the mean per-feature variance of the data.
    /// `0` stops only on unchanged labels or `max_iter`.
    #[must_use]
    pub fn tol(mut self, tol: f64) -> Self {
        self.tol = tol;
        self
    }

    /// Seeding method.
    #[must_use]
    pub fn init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }

    /// Number of clusters.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The same settings with `k` clusters.
    #[must_use]
    pub(crate) fn with_k(mut self, k: usize) -> Self {
        self.k = k;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for `k = 0`, `n_init = 0`, `max_iter = 0`, or a negative or
    /// non-finite `tol`.
    pub fn check(&self) -> Result<ValidKMeansParams> {
        let positive = |name, v: usize| {
            if v == 0 {
                Err(Error::InvalidParameter {
                    name,
                    value: 0.0,
                    expected: "an integer >= 1",
                })
            } else {
                Ok(())
            }
        };
        positive("k", self.k)?;
        positive("n_init", self.n_init)?;
        positive("max_iter", self.max_iter)?;
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            return Err(Error::InvalidParameter {
                name: "tol",
                value: self.tol,
                expected: "a finite value >= 0",
            });
        }
        Ok(ValidKMeansParams(*self))
    }

    /// Validates the settings, then clusters the rows of `data`.
    ///
    /// # Errors
    /// See [`KMeansParams::check`] and [`ValidKMeansParams::fit`].
    pub fn fit<F: Real>(&self, data: ArrayView2<F>) -> Result<KMeansFit<F>> {
        self.check()?.fit(data)
    }

    /// Validates the settings, then clusters the rows of `data` with row `weights`.
    ///
    /// # Errors
    /// See [`KMeansParams::check`] and [`ValidKMeansParams::fit_weighted`].
    pub fn fit_weighted<F: Real>(
        &self,
        data: ArrayView2<F>,
        weights: ArrayView1<f64>,
    ) -> Result<KMeansFit<F>> {
        self.check()?.fit_weighted(data, weights)
    }
}

impl ValidKMeansParams {
    /// The validated settings.
    pub fn params(&self) -> &KMeansParams {
        &self.0
    }

    /// Clusters the rows of `data`.
    ///
    /// # Errors
    /// Empty data or zero columns, a non-finite value ([`Error::NonFinite`] with its row), or
    /// `k > n` ([`Error::TooManyClusters`]).
    pub fn fit<F: Real>(&self, data: ArrayView2<F>) -> Result<KMeansFit<F>> {
        self.fit_with_progress(data, |_| {})
    }

    /// As [`ValidKMeansParams::fit`], calling `progress` after every Lloyd iteration of every
    /// run (from the calling thread).
    ///
    /// # Errors
    /// As [`ValidKMeansParams::fit`].
    pub fn fit_with_progress<F: Real>(
        &self,
        data: ArrayView2<F>,
        progress: impl FnMut(&KMeansProgress),
    ) -> Result<KMeansFit<F>> {
        self.fit_invariant(data, None, &Transforms::identity(data.ncols()), progress)
    }

    /// Weighted k-means: clusters the rows of `data`, row `i` weighing `weights[i]` (see
    /// the module's *Row weights*: the objective is `Σ_i w_i·‖x_i − c(i)‖²`, centroids are
    /// weighted means, rows of weight 0 take no part).
    ///
    /// ```
    /// use clustered_conv::KMeans;
    /// use ndarray::array;
    ///
    /// let x = array![[0.0f64], [1.0], [10.0], [11.0]];
    /// let fit = KMeans::params(2).fit_weighted(x.view(), array![3.0, 1.0, 0.0, 2.0].view())?;
    /// let (low, high) = (fit.labels[0], fit.labels[3]);
    /// assert_eq!(fit.centroids[[low, 0]], 0.25); // (3·0 + 1·1) / 4
    /// assert_eq!(fit.centroids[[high, 0]], 11.0); // the row of weight 0 is left out
    /// assert_eq!(fit.inertia, 3.0 * 0.0625 + 0.5625);
    /// # Ok::<(), clustered_conv::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`ValidKMeansParams::fit`], plus: a weight count other than the number of rows
    /// ([`Error::ShapeMismatch`]); a NaN or infinite weight ([`Error::NonFinite`] with its
    /// row); a negative weight, all weights 0, or weights whose sum overflows
    /// ([`Error::InvalidParameter`]); fewer rows of positive weight than `k`
    /// ([`Error::TooManyClusters`]).
    ///
    /// # Determinism
    /// As [`ValidKMeansParams::fit`]: bit-identical on any number of threads.
    pub fn fit_weighted<F: Real>(
        &self,
        data: ArrayView2<F>,
        weights: ArrayView1<f64>,
    ) -> Result<KMeansFit<F>> {
        self.fit_weighted_with_progress(data, weights, |_| {})
    }

    /// As [`ValidKMeansParams::fit_weighted`], calling `progress` after every Lloyd
    /// iteration of every run (from the calling thread).
    ///
    /// # Errors
    /// As [`ValidKMeansParams::fit_weighted`].
    pub fn fit_weighted_with_progress<F: Real>(
        &self,
        data: ArrayView2<F>,
        weights: ArrayView1<f64>,
        progress: impl FnMut(&KMeansProgress),
    ) -> Result<KMeansFit<F>> {
        let weights = weights.to_vec();
        let transforms = Transforms::identity(data.ncols());
        self.fit_invariant(data, Some(&weights), &transforms, progress)
    }

    /// Transform-invariant k-means: labels are `t·K + c` over `transforms` (see
    /// [`Transforms`]); plain k-means with [`Transforms::identity`]. `weights`: row weights
    /// (validated here), or `None` for the unweighted fit.
    pub(crate) fn fit_invariant<F: Real>(
        &self,
        data: ArrayView2<F>,
        weights: Option<&[f64]>,
        transforms: &Transforms,
        progress: impl FnMut(&KMeansProgress),
    ) -> Result<KMeansFit<F>> {
        self.fit_impl(data, weights, transforms, progress, Kernels::detect())
    }

    /// As [`ValidKMeansParams::fit`], with the portable (non-SIMD) distance kernels whatever
    /// the CPU: for testing that the fallback gives the same bits.
    #[cfg(test)]
    pub(crate) fn fit_with_portable_kernels<F: Real>(
        &self,
        data: ArrayView2<F>,
    ) -> Result<KMeansFit<F>> {
        let transforms = Transforms::identity(data.ncols());
        self.fit_impl(data, None, &transforms, |_| {}, Kernels::portable())
    }

    fn fit_impl<F: Real>(
        &self,
        data: ArrayView2<F>,
        weights: Option<&[f64]>,
        transforms: &Transforms,
        mut progress: impl FnMut(&KMeansProgress),
        kernels: Kernels,
    ) -> Result<KMeansFit<F>> {
        let p = &self.0;
        validate_data(&data, p.k)?;
        if let Some(w) = weights {
            validate_weights(w, data.nrows(), p.k)?;
        }
        let data = data.as_standard_layout();
        let data = data.view();
        let tol_abs = p.tol * mean_variance(&data, weights);
        let mut best: Option<KMeansFit<F>> = None;
        let mut run_inertias = Vec::with_capacity(p.n_init);
        for run in 0..p.n_init {
            let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
            rng.set_stream(run as u64);
            let seeds = match p.init {
                Init::KMeansPlusPlus => {
                    init::kmeans_plus_plus(&data, p.k, weights, transforms, &mut rng, kernels)
                }
                Init::Random => init::random_rows(&data, p.k, weights, &mut rng),
            };
            let limits = lloyd::Limits {
                max_iter: p.max_iter,
                tol_abs,
            };
            let outcome = lloyd::run(
                &data,
                weights,
                seeds,
                transforms,
                limits,
                kernels,
                |stats| {
                    progress(&KMeansProgress {
                        run,
                        n_init: p.n_init,
                        max_iter: p.max_iter,
                        stats: *stats,
                    })
                },
            );
            run_inertias.push(outcome.inertia);
            // Strictly lower wins, so ties keep the earliest run.
            if best.as_ref().is_none_or(|b| outcome.inertia < b.inertia) {
                best = Some(KMeansFit {
                    centroids: outcome.centroids,
                    labels: outcome.labels,
                    inertia: outcome.inertia,
                    n_iter: outcome.history.len(),
                    convergence: outcome.convergence,
                    history: outcome.history,
                    best_run: run,
                    run_inertias: Vec::new(),
                });
            }
        }
        let mut best = best.expect("n_init >= 1 was validated");
        best.run_inertias = run_inertias;
        Ok(best)
    }
}

/// Rejects empty data, `k > n` and non-finite values (naming the first bad row).
fn validate_data<F: Real>(data: &ArrayView2<F>, k: usize) -> Result<()> {
    let (n, d) = data.dim();
    if n == 0 || d == 0 {
        return Err(Error::ZeroSize {
            what: "k-means data",
            shape: vec![n, d],
        });
    }
    if k > n {
        return Err(Error::TooManyClusters { k, n });
    }
    if let Some(index) = data
        .outer_iter()
        .position(|row| row.iter().any(|v| !v.is_finite()))
    {
        return Err(Error::NonFinite {
            what: "k-means data",
            index,
        });
    }
    Ok(())
}

/// Rejects a weight count other than `n`, a non-finite or negative weight, all weights 0 (or
/// a sum that overflows), and fewer than `k` rows of positive weight.
fn validate_weights(weights: &[f64], n: usize, k: usize) -> Result<()> {
    if weights.len() != n {
        return Err(Error::ShapeMismatch {
            what: "k-means weights vs rows",
            expected: vec![n],
            got: vec![weights.len()],
        });
    }
    if let Some(index) = weights.iter().position(|w| !w.is_finite()) {
        return Err(Error::NonFinite {
            what: "k-means weights",
            index,
        });
    }
    if let Some(&bad) = weights.iter().find(|&&w| w < 0.0) {
        return Err(Error::InvalidParameter {
            name: "k-means weight",
            value: bad,
            expected: "a finite value >= 0",
        });
    }
    let total: f64 = weights.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        return Err(Error::InvalidParameter {
            name: "sum of the k-means weights",
            value: total,
            expected: "a finite value > 0 (at least one positive weight)",
        });
    }
    let positive = weights.iter().filter(|&&w| w > 0.0).count();
    if k > positive {
        return Err(Error::TooManyClusters { k, n: positive });
    }
    Ok(())
}

/// Mean over features of the population variance (scikit-learn's tolerance scale); with
/// weights, of the weighted variance (what duplicating rows by their weights would give).
fn mean_variance<F: Real>(data: &ArrayView2<F>, weights: Option<&[f64]>) -> f64 {
    if let Some(w) = weights {
        return weighted_mean_variance(data, w);
    }
    let (n, d) = data.dim();
    let mut total = 0.0;
    for col in data.columns() {
        let mean = col.iter().map(|v| v.to_f64_exact()).sum::<f64>() / n as f64;
        total += col
            .iter()
            .map(|v| (v.to_f64_exact() - mean).powi(2))
            .sum::<f64>()
            / n as f64;
    }
    total / d as f64
}

/// [`mean_variance`] with row weights (their sum validated positive and finite).
fn weighted_mean_variance<F: Real>(data: &ArrayView2<F>, weights: &[f64]) -> f64 {
    let sum_w: f64 = weights.iter().sum();
    let mut total = 0.0;
    for col in data.columns() {
        let weighted = |f: &dyn Fn(f64) -> f64| -> f64 {
            col.iter()
                .zip(weights)
                .map(|(v, w)| w * f(v.to_f64_exact()))
                .sum::<f64>()
        };
        let mean = weighted(&|v| v) / sum_w;
        total += weighted(&|v| (v - mean).powi(2)) / sum_w;
    }
    total / data.ncols() as f64
}

/// Coordinate permutations the clustering is invariant to (transform-invariant clustering,
/// crate-internal). `perms[t][j]` is the coordinate that transform `t` reads for output `j`:
/// `Φ_t(v)[j] = v[perms[t][j]]`; transform 0 is the identity. A point is compared with every
/// transformed centroid, its label is `t·K + c`, and a centroid is the mean of its members
/// with their transforms undone.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Transforms {
    perms: Vec<Vec<usize>>,
}

impl Transforms {
    /// Plain k-means on `d` coordinates.
    pub fn identity(d: usize) -> Self {
        Transforms {
            perms: vec![(0..d).collect()],
        }
    }

    /// The given permutations (the first must be the identity).
    pub fn new(perms: Vec<Vec<usize>>) -> Self {
        debug_assert!(perms[0].iter().enumerate().all(|(j, &p)| p == j));
        Transforms { perms }
    }

    /// Number of transforms `S`.
    pub fn len(&self) -> usize {
        self.perms.len()
    }

    /// Every transformed copy of every centroid: row `t·K + c` is `Φ_t(centers[c])`.
    pub fn expand<F: Real>(&self, centers: &Array2<F>) -> Array2<F> {
        let (k, d) = centers.dim();
        Array2::from_shape_fn((self.len() * k, d), |(r, j)| {
            centers[[r % k, self.perms[r / k][j]]]
        })
    }

    /// `acc += sign · Φ_t⁻¹(x)`, in `f64`.
    pub fn add_untransformed<F: Real>(&self, t: usize, x: &[F], sign: f64, acc: &mut [f64]) {
        for (&p, &v) in self.perms[t].iter().zip(x) {
            acc[p] += sign * v.to_f64_exact();
        }
    }
}

/// Fixed number of rows per parallel chunk for element-wise passes.
pub(crate) const CHUNK_ROWS: usize = 4096;

/// Squared Euclidean distance in `f64`: `Σ_j (a_j − b_j)²` in coordinate order, separate
/// multiplies and adds — the arithmetic of the vectorised kernels of [`blocked`] and
/// [`neighbours`], so every distance of a fit agrees to the bit.
#[inline]
pub(crate) fn sq_dist<F: Real>(a: &[F], b: &[F]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let t = x.to_f64_exact() - y.to_f64_exact();
            t * t
        })
        .sum()
}

/// The nearest row of `centers` to every row of `data` by the rule of Lloyd's assignment:
/// the exact `f64` squared distance of [`sq_dist`], computed by the same vectorised kernel,
/// lowest index on ties.
pub(crate) fn nearest_exact<F: Real>(data: &ArrayView2<F>, centers: &ArrayView2<F>) -> Vec<usize> {
    nearest_exact_with(data, centers, Kernels::detect())
}

fn nearest_exact_with<F: Real>(
    data: &ArrayView2<F>,
    centers: &ArrayView2<F>,
    kernels: Kernels,
) -> Vec<usize> {
    let n = data.nrows();
    if n == 0 {
        return Vec::new();
    }
    let data = data.as_standard_layout();
    let blocked = blocked::Blocked::new(&data.view());
    let flat: Vec<f64> = centers.iter().map(|v| v.to_f64_exact()).collect();
    let mut labels = vec![0usize; n];
    labels
        .par_chunks_mut(blocked::BLOCK)
        .enumerate()
        .for_each(|(b, out)| {
            let (mut best, mut second, mut label) = (
                [0.0; blocked::BLOCK],
                [0.0; blocked::BLOCK],
                [0.0; blocked::BLOCK],
            );
            kernels.dispatch(blocked::NearestTwo {
                block: blocked.block(b),
                centers: &flat,
                best: &mut best,
                second: &mut second,
                label: &mut label,
            });
            for (o, &l) in out.iter_mut().zip(&label) {
                *o = l as usize;
            }
        });
    labels
}

/// Row `i` of a standard-layout matrix as a slice.
#[inline]
pub(crate) fn row<'a, F>(data: &'a ArrayView2<'a, F>, i: usize) -> &'a [F] {
    let d = data.ncols();
    &data.as_slice().expect("standard layout")[i * d..(i + 1) * d]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// Rows around 48 random centres (noisy, overlapping): many near-ties.
    fn overlapping(n: usize, seed: u64) -> Array2<f32> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let centres = Array2::from_shape_simple_fn((48, 9), || r.random_range(-1.0f32..1.0));
        Array2::from_shape_fn((n, 9), |(i, j)| {
            centres[[(i * 7919) % 48, j]] + r.random_range(-0.6f32..0.6)
        })
    }

    #[test]
    fn portable_kernels_give_the_same_bits() {
        let x = overlapping(9_000, 41);
        let params = KMeans::params(40).seed(2).max_iter(25).check().unwrap();
        let fast = params.fit(x.view()).unwrap();
        let portable = params.fit_with_portable_kernels(x.view()).unwrap();
        assert_eq!(fast, portable);
        // f64 data too.
        let x = x.mapv(f64::from);
        assert_eq!(
            params.fit(x.view()).unwrap(),
            params.fit_with_portable_kernels(x.view()).unwrap()
        );
    }

    /// The naive rule: smallest `sq_dist`, first index on ties.
    fn naive_nearest(x: &Array2<f32>, c: &Array2<f32>) -> Vec<usize> {
        x.outer_iter()
            .map(|row| {
                let row = row.to_vec();
                let mut best = (f64::INFINITY, 0);
                for (j, centre) in c.outer_iter().enumerate() {
                    let d = sq_dist(&row, &centre.to_vec());
                    if d < best.0 {
                        best = (d, j);
                    }
                }
                best.1
            })
            .collect()
    }

    #[test]
    fn nearest_exact_is_the_naive_rule_with_lowest_index_on_ties() {
        let x = overlapping(1_000, 7);
        // Centres: 20 data rows, each twice (exact ties), plus a copy of row 0 at the end.
        let mut c = Array2::zeros((41, 9));
        for j in 0..20 {
            c.row_mut(2 * j).assign(&x.row(j * 13));
            c.row_mut(2 * j + 1).assign(&x.row(j * 13));
        }
        c.row_mut(40).assign(&x.row(0));
        let expected = naive_nearest(&x, &c);
        assert!(expected.iter().all(|&l| l % 2 == 0 && l < 40));
        assert_eq!(nearest_exact(&x.view(), &c.view()), expected);
        assert_eq!(
            nearest_exact_with(&x.view(), &c.view(), Kernels::portable()),
            expected
        );
        // Fewer rows than a block, and a column-major input.
        let small = x.slice_axis(ndarray::Axis(0), (0..5).into()).to_owned();
        let fortran = small.t().as_standard_layout().t().to_owned();
        assert_eq!(
            nearest_exact(&fortran.view(), &c.view()),
            naive_nearest(&small, &c)
        );
    }
}
