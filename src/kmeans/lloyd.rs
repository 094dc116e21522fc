//! Lloyd iterations: nearest-centroid assignment with Hamerly's bounds and the mean update
//! with deterministic empty-cluster re-seeding.

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use super::blocked::{NearestTwo, BLOCK};
use super::neighbours::Neighbours;
use super::{row, sq_dist, Convergence, IterationStats, Transforms, CHUNK_ROWS};
use crate::linalg::simd::Kernels;
use crate::linalg::Real;

/// One finished Lloyd run.
pub(crate) struct Outcome<F> {
    pub centroids: Array2<F>,
    pub labels: Vec<usize>,
    pub inertia: f64,
    pub convergence: Convergence,
    pub history: Vec<IterationStats>,
}

/// When a run stops.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_iter: usize,
    /// Stop when the summed squared centre shift is at most this.
    pub tol_abs: f64,
}

/// Runs Lloyd's algorithm from `centers` (see the module docs of `kmeans` for the rules),
/// with row `weights` (`None`: every row weighs 1).
pub(crate) fn run<F: Real>(
    data: &ArrayView2<F>,
    weights: Option<&[f64]>,
    mut centers: Array2<F>,
    transforms: &Transforms,
    limits: Limits,
    kernels: Kernels,
    mut on_iteration: impl FnMut(&IterationStats),
) -> Outcome<F> {
    let mut state = Assignment::new(data, weights, kernels);
    let mut history = Vec::new();
    let mut convergence = Convergence::MaxIter;
    for iteration in 1..=limits.max_iter {
        let (inertia, label_changes) = state.assign(data, &transforms.expand(&centers));
        let (new_centers, reseeded) = update(data, weights, &state, &centers, transforms);
        let shifts: Vec<f64> = centers
            .outer_iter()
            .zip(new_centers.outer_iter())
            .map(|(a, b)| {
                sq_dist(
                    a.as_slice().expect("owned row"),
                    b.as_slice().expect("owned row"),
                )
            })
            .collect();
        state.centres_moved(&shifts);
        let stats = IterationStats {
            iteration,
            inertia,
            label_changes,
            center_shift: shifts.iter().sum(),
            reseeded,
        };
        history.push(stats);
        on_iteration(&stats);
        centers = new_centers;
        // A re-seeded cluster moved a centroid, so unchanged labels do not mean convergence.
        if iteration > 1 && label_changes == 0 && reseeded == 0 {
            convergence = Convergence::Strict;
            break;
        }
        if stats.center_shift <= limits.tol_abs {
            convergence = Convergence::Tolerance;
            break;
        }
    }
    // Strict convergence means the centroids are the means of the current labels, which were
    // assigned against these same centroids; otherwise re-assign so labels match centroids.
    let inertia = if convergence == Convergence::Strict {
        history.last().map_or(0.0, |h| h.inertia)
    } else {
        state.assign(data, &transforms.expand(&centers)).0
    };
    Outcome {
        centroids: centers,
        labels: state.labels,
        inertia,
        convergence,
        history,
    }
}

/// Labels with Hamerly's bounds (Hamerly 2010, "Making k-means even faster"): a row whose
/// distance to its own centre is below a lower bound on its distance to every other centre
/// keeps its label without a scan. Labels are always the exact `f64` nearest centre (lowest
/// index on ties): the bounds only skip scans they prove unnecessary, with a safety margin
/// for rounding.
struct Assignment<'w> {
    labels: Vec<usize>,
    /// Row weights (`None`: 1 each): the inertia is the weighted sum of the distances.
    weights: Option<&'w [f64]>,
    /// Exact squared distance of every row to its centre.
    dist: Vec<f64>,
    /// Lower bound on every row's distance (not squared) to every centre but its own.
    lower: Vec<f64>,
    /// False until the first assignment, which scans every row.
    bounded: bool,
    /// Rounding allowance of the bound tests: 1e-9 × the largest row norm.
    margin: f64,
    kernels: Kernels,
}

impl<'w> Assignment<'w> {
    fn new<F: Real>(data: &ArrayView2<F>, weights: Option<&'w [f64]>, kernels: Kernels) -> Self {
        let n = data.nrows();
        let largest_norm = (0..n)
            .map(|i| {
                row(data, i)
                    .iter()
                    .map(|v| v.to_f64_exact().powi(2))
                    .sum::<f64>()
            })
            .fold(0.0, f64::max)
            .sqrt();
        Assignment {
            labels: vec![usize::MAX; n],
            weights,
            dist: vec![0.0; n],
            lower: vec![0.0; n],
            bounded: false,
            margin: 1e-9 * largest_norm,
            kernels,
        }
    }

    /// Assigns every row to its nearest row of `centers`; returns (inertia, number of labels
    /// that changed). Parallel over fixed chunks of [`CHUNK_ROWS`] rows, combined in order.
    fn assign<F: Real>(&mut self, data: &ArrayView2<F>, centers: &Array2<F>) -> (f64, usize) {
        let (m, d) = centers.dim();
        let flat: Vec<f64> = centers.iter().map(|v| v.to_f64_exact()).collect();
        // The centres' neighbour lists (and Hamerly's half gaps), unless the m² distances
        // would cost more than a few passes over the data.
        let neighbours =
            (self.bounded && m * m <= 8 * data.nrows()).then(|| Neighbours::new(&flat, d));
        let ctx = ChunkContext {
            data,
            centers: &flat,
            d,
            neighbours: neighbours.as_ref(),
            bounded: self.bounded,
            margin: self.margin,
            weights: self.weights,
            kernels: self.kernels,
        };
        let partials: Vec<(f64, usize)> = self
            .labels
            .par_chunks_mut(CHUNK_ROWS)
            .zip(self.dist.par_chunks_mut(CHUNK_ROWS))
            .zip(self.lower.par_chunks_mut(CHUNK_ROWS))
            .enumerate()
            .map(|(c, ((labels, dist), lower))| {
                ctx.assign_chunk(c * CHUNK_ROWS, labels, dist, lower)
            })
            .collect();
        self.bounded = true;
        partials
            .iter()
            .fold((0.0, 0), |(i, c), &(pi, pc)| (i + pi, c + pc))
    }

    /// The centroids moved by `sq_shifts` (squared, per centroid; every transformed copy
    /// moved as far): every lower bound drops by the largest move.
    fn centres_moved(&mut self, sq_shifts: &[f64]) {
        let largest = sq_shifts.iter().copied().fold(0.0, f64::max).sqrt();
        self.lower.par_iter_mut().for_each(|l| *l -= largest);
    }
}

/// What every chunk of an assignment reads.
struct ChunkContext<'a, F> {
    data: &'a ArrayView2<'a, F>,
    /// `m × d` centres, row-major.
    centers: &'a [f64],
    d: usize,
    neighbours: Option<&'a Neighbours>,
    bounded: bool,
    margin: f64,
    weights: Option<&'a [f64]>,
    kernels: Kernels,
}

impl<F: Real> ChunkContext<'_, F> {
    /// 1 if row `r`'s label changing counts as a change: rows of weight 0 take no part in
    /// the fit, so their labels do not hold up convergence.
    fn counted(&self, r: usize) -> usize {
        self.weights.map_or(1, |w| usize::from(w[r] > 0.0))
    }

    /// Assigns the rows `r0..r0 + labels.len()`; returns (inertia, label changes).
    fn assign_chunk(
        &self,
        r0: usize,
        labels: &mut [usize],
        dist: &mut [f64],
        lower: &mut [f64],
    ) -> (f64, usize) {
        let d = self.d;
        let mut changes = 0;
        let mut x = vec![0.0; d];
        // Rows neither the bounds nor the neighbour lists settle: scanned against every
        // centre, in blocks.
        let mut scan = Vec::new();
        for i in 0..labels.len() {
            if self.bounded {
                let label = labels[i];
                for (xj, &v) in x.iter_mut().zip(row(self.data, r0 + i)) {
                    *xj = v.to_f64_exact();
                }
                let own = sq_dist(&x, &self.centers[label * d..][..d]);
                let u = own.sqrt();
                let gap = self.neighbours.map_or(0.0, |nb| nb.half_gap[label]);
                if u + self.margin < lower[i].max(gap) {
                    dist[i] = own;
                    continue;
                }
                if let Some(nb) = self.neighbours {
                    let (best, nearest, second) = nb.scan(self.kernels, &x, label);
                    // Every centre outside the list is at least this far from the row.
                    let beyond = nb.outside[label] - u;
                    if best.sqrt() + self.margin < beyond {
                        if nearest != label {
                            changes += self.counted(r0 + i);
                            labels[i] = nearest;
                        }
                        dist[i] = best;
                        lower[i] = second.sqrt().min(beyond);
                        continue;
                    }
                }
            }
            scan.push(i);
        }
        let mut block = vec![0.0; d * BLOCK];
        let (mut best, mut second, mut label) = ([0.0; BLOCK], [0.0; BLOCK], [0.0; BLOCK]);
        for rows in scan.chunks(BLOCK) {
            for (r, &i) in rows.iter().enumerate() {
                for (j, &v) in row(self.data, r0 + i).iter().enumerate() {
                    block[j * BLOCK + r] = v.to_f64_exact();
                }
            }
            self.kernels.dispatch(NearestTwo {
                block: &block,
                centers: self.centers,
                best: &mut best,
                second: &mut second,
                label: &mut label,
            });
            for (r, &i) in rows.iter().enumerate() {
                let new = label[r] as usize;
                if labels[i] != new {
                    changes += self.counted(r0 + i);
                    labels[i] = new;
                }
                dist[i] = best[r];
                lower[i] = second[r].sqrt();
            }
        }
        let inertia = match self.weights {
            None => dist.iter().sum(),
            Some(w) => dist.iter().zip(&w[r0..]).map(|(d, w)| d * w).sum(),
        };
        (inertia, changes)
    }
}

/// New centroids = (weighted) means of their rows with their transforms undone (summed in
/// `f64`: per chunk of `max(CHUNK_ROWS, 16·k)` rows in row order, then chunk by chunk); rows
/// of weight 0 take no part. Empty clusters (no row of positive weight) are re-seeded with
/// the farthest rows of positive weight (distance descending, then row index ascending) that
/// are not alone in their cluster; a cluster left empty keeps its previous centroid. Returns
/// the centroids and the number of re-seeded clusters.
fn update<F: Real>(
    data: &ArrayView2<F>,
    weights: Option<&[f64]>,
    state: &Assignment,
    old: &Array2<F>,
    transforms: &Transforms,
) -> (Array2<F>, usize) {
    let (k, d) = old.dim();
    let labels = &state.labels;
    // Enough rows per chunk that the chunks' partial sums take at most half the data's size.
    let rows = CHUNK_ROWS.max(16 * k);
    let partials: Vec<Sums> = labels
        .par_chunks(rows)
        .enumerate()
        .map(|(c, labels)| {
            let mut part = Sums::zeros(k, d);
            for (i, &label) in labels.iter().enumerate() {
                let r = c * rows + i;
                let w = weights.map_or(1.0, |w| w[r]);
                if w > 0.0 {
                    part.add(label, row(data, r), w, transforms);
                }
            }
            part
        })
        .collect();
    let mut sums = Sums::zeros(k, d);
    for part in &partials {
        sums.merge(part);
    }
    let reseeded = reseed_empty(data, weights, labels, &state.dist, transforms, &mut sums);
    let mut centers = old.clone();
    for (c, mut center) in centers.outer_iter_mut().enumerate() {
        // A total that rounded to 0 (a re-seeded row outweighing the rest) keeps the centroid.
        if sums.counts[c] > 0 && sums.totals[c] > 0.0 {
            // Unit weights: the total is the count, exactly.
            let inv = 1.0 / sums.totals[c];
            for (v, &s) in center.iter_mut().zip(sums.sums.row(c)) {
                *v = F::from_f64_lossy(s * inv);
            }
        }
    }
    (centers, reseeded)
}

/// Per cluster: the weighted sum of its rows (transforms undone), its total weight, and its
/// number of rows of positive weight.
struct Sums {
    sums: Array2<f64>,
    totals: Vec<f64>,
    counts: Vec<usize>,
}

impl Sums {
    fn zeros(k: usize, d: usize) -> Self {
        Sums {
            sums: Array2::zeros((k, d)),
            totals: vec![0.0; k],
            counts: vec![0; k],
        }
    }

    /// Adds row `x` of weight `w > 0` with k-means label `label` (`t·k + cluster`).
    fn add<F: Real>(&mut self, label: usize, x: &[F], w: f64, transforms: &Transforms) {
        let k = self.counts.len();
        let cluster = label % k;
        self.counts[cluster] += 1;
        self.totals[cluster] += w;
        let mut sum = self.sums.row_mut(cluster);
        let sum = sum.as_slice_mut().expect("fresh array is contiguous");
        transforms.add_untransformed(label / k, x, w, sum);
    }

    /// Adds another chunk's sums.
    fn merge(&mut self, other: &Sums) {
        let sums = self.sums.as_slice_mut().expect("fresh array is contiguous");
        for (s, &v) in sums.iter_mut().zip(other.sums.iter()) {
            *s += v;
        }
        for (t, &v) in self.totals.iter_mut().zip(&other.totals) {
            *t += v;
        }
        for (c, &v) in self.counts.iter_mut().zip(&other.counts) {
            *c += v;
        }
    }
}

/// Moves the farthest eligible rows into the empty clusters (see [`update`]); returns how many
/// clusters were re-seeded. A re-seeded centroid is its row exactly.
fn reseed_empty<F: Real>(
    data: &ArrayView2<F>,
    weights: Option<&[f64]>,
    labels: &[usize],
    dist: &[f64],
    transforms: &Transforms,
    sums: &mut Sums,
) -> usize {
    let k = sums.counts.len();
    let empty: Vec<usize> = (0..k).filter(|&c| sums.counts[c] == 0).collect();
    if empty.is_empty() {
        return 0;
    }
    let weight = |i: usize| weights.map_or(1.0, |w| w[i]);
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_unstable_by(|&a, &b| dist[b].total_cmp(&dist[a]).then(a.cmp(&b)));
    let mut candidates = order.into_iter();
    let mut reseeded = 0;
    for target in empty {
        let Some(i) = candidates
            .by_ref()
            .find(|&i| weight(i) > 0.0 && sums.counts[labels[i] % k] > 1)
        else {
            break;
        };
        let (source, w) = (labels[i] % k, weight(i));
        let x = row(data, i);
        let mut source_sum = sums.sums.row_mut(source);
        let source_sum = source_sum
            .as_slice_mut()
            .expect("fresh array is contiguous");
        transforms.add_untransformed(labels[i] / k, x, -w, source_sum);
        sums.totals[source] -= w;
        sums.counts[source] -= 1;
        // The row itself (sum = row, total 1), not `w·x / w`, which can round.
        for (s, &v) in sums.sums.row_mut(target).iter_mut().zip(x) {
            *s = v.to_f64_exact();
        }
        sums.totals[target] = 1.0;
        sums.counts[target] = 1;
        reseeded += 1;
    }
    reseeded
}
