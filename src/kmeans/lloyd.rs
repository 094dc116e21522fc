//! Lloyd iterations: blocked nearest-centroid assignment and the mean update with
//! deterministic empty-cluster re-seeding.

use ndarray::{Array1, Array2, ArrayView2};
use rayon::prelude::*;

use super::{row, sq_dist, Convergence, IterationStats, Transforms};
use crate::conv::gemm;
use crate::scalar::Real;

/// Rows per assignment block: the block's distance matrix is `ASSIGN_ROWS × k`.
const ASSIGN_ROWS: usize = 1024;

/// One finished Lloyd run.
pub(crate) struct Outcome<F> {
    pub centroids: Array2<F>,
    pub labels: Vec<usize>,
    pub inertia: f64,
    pub convergence: Convergence,
    pub history: Vec<IterationStats>,
}

/// Runs Lloyd's algorithm from `centers` (see the module docs of `kmeans` for the rules).
pub(crate) fn run<F: Real>(
    data: &ArrayView2<F>,
    mut centers: Array2<F>,
    transforms: &Transforms,
    max_iter: usize,
    tol_abs: f64,
    mut on_iteration: impl FnMut(&IterationStats),
) -> Outcome<F> {
    let n = data.nrows();
    let mut labels = vec![usize::MAX; n];
    let mut dist = vec![0.0f64; n];
    let mut history = Vec::new();
    let mut convergence = Convergence::MaxIter;
    for iteration in 1..=max_iter {
        let expanded = transforms.expand(&centers);
        let (inertia, label_changes) = assign(data, &expanded.view(), &mut labels, &mut dist);
        let (new_centers, reseeded) = update(data, &labels, &dist, &centers, transforms);
        let center_shift = centers
            .outer_iter()
            .zip(new_centers.outer_iter())
            .map(|(a, b)| {
                sq_dist(
                    a.as_slice().expect("owned row"),
                    b.as_slice().expect("owned row"),
                )
            })
            .sum::<f64>();
        let stats = IterationStats {
            iteration,
            inertia,
            label_changes,
            center_shift,
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
        if center_shift <= tol_abs {
            convergence = Convergence::Tolerance;
            break;
        }
    }
    // Strict convergence means the centroids are the means of the current labels, which were
    // assigned against these same centroids; otherwise re-assign so labels match centroids.
    let inertia = if convergence == Convergence::Strict {
        history.last().map_or(0.0, |h| h.inertia)
    } else {
        assign(
            data,
            &transforms.expand(&centers).view(),
            &mut labels,
            &mut dist,
        )
        .0
    };
    Outcome {
        centroids: centers,
        labels,
        inertia,
        convergence,
        history,
    }
}

/// Nearest centroid of every row (lowest index on ties) and the exact squared distance.
pub(crate) fn nearest<F: Real>(
    data: &ArrayView2<F>,
    centers: &ArrayView2<F>,
) -> (Vec<usize>, Vec<f64>) {
    let n = data.nrows();
    let mut labels = vec![usize::MAX; n];
    let mut dist = vec![0.0; n];
    let data = data.as_standard_layout();
    assign(&data.view(), centers, &mut labels, &mut dist);
    (labels, dist)
}

/// Assigns every row to its nearest centroid, writing `labels` and exact squared distances
/// `dist`; returns (inertia, number of labels that changed).
///
/// Scores `‖c‖² − 2·x·c` come from one GEMM per block of [`ASSIGN_ROWS`] rows; the reported
/// distance to the chosen centroid is recomputed exactly in `f64`.
fn assign<F: Real>(
    data: &ArrayView2<F>,
    centers: &ArrayView2<F>,
    labels: &mut [usize],
    dist: &mut [f64],
) -> (f64, usize) {
    let centers = centers.as_standard_layout();
    let centers = centers.view();
    let center_norms: Array1<F> = centers
        .outer_iter()
        .map(|c| c.iter().fold(F::zero(), |a, &v| a + v * v))
        .collect();
    let k = centers.nrows();
    let partials: Vec<(f64, usize)> = labels
        .par_chunks_mut(ASSIGN_ROWS)
        .zip(dist.par_chunks_mut(ASSIGN_ROWS))
        .enumerate()
        .map(|(b, (labels, dist))| {
            let r0 = b * ASSIGN_ROWS;
            let rows = data.slice_axis(
                ndarray::Axis(0),
                ndarray::Slice::from(r0..r0 + labels.len()),
            );
            let mut scores = Array2::<F>::zeros((labels.len(), k));
            gemm(
                F::one(),
                &rows,
                &centers.t(),
                F::zero(),
                &mut scores.view_mut(),
            );
            let mut inertia = 0.0;
            let mut changes = 0;
            for (i, score_row) in scores.outer_iter().enumerate() {
                let mut best = 0;
                let mut best_score = F::infinity();
                for (j, (&g, &cn)) in score_row.iter().zip(center_norms.iter()).enumerate() {
                    let s = cn - (g + g);
                    if s < best_score {
                        best_score = s;
                        best = j;
                    }
                }
                if labels[i] != best {
                    changes += 1;
                    labels[i] = best;
                }
                dist[i] = sq_dist(row(data, r0 + i), row(&centers, best));
                inertia += dist[i];
            }
            (inertia, changes)
        })
        .collect();
    partials
        .iter()
        .fold((0.0, 0), |(i, c), &(pi, pc)| (i + pi, c + pc))
}

/// New centroids = means of their rows with their transforms undone (summed in `f64`, in row
/// order). Empty clusters are re-seeded with the farthest rows (distance descending, then row
/// index ascending) that are not alone in their cluster; a cluster left empty keeps its
/// previous centroid. Returns the centroids and the number of re-seeded clusters.
fn update<F: Real>(
    data: &ArrayView2<F>,
    labels: &[usize],
    dist: &[f64],
    old: &Array2<F>,
    transforms: &Transforms,
) -> (Array2<F>, usize) {
    let (k, d) = old.dim();
    let members = group_by_label(labels, k);
    let mut sums = Array2::<f64>::zeros((k, d));
    sums.outer_iter_mut()
        .into_par_iter()
        .zip(members.par_iter())
        .for_each(|(mut sum, rows)| {
            let sum = sum.as_slice_mut().expect("fresh array is contiguous");
            for &i in rows {
                transforms.add_untransformed(labels[i] / k, row(data, i), 1.0, sum);
            }
        });
    let mut counts: Vec<usize> = members.iter().map(Vec::len).collect();
    let reseeded = reseed_empty(data, labels, dist, transforms, &mut sums, &mut counts);
    let mut centers = old.clone();
    for (c, mut center) in centers.outer_iter_mut().enumerate() {
        if counts[c] > 0 {
            let inv = 1.0 / counts[c] as f64;
            for (v, &s) in center.iter_mut().zip(sums.row(c)) {
                *v = F::from_f64_lossy(s * inv);
            }
        }
    }
    (centers, reseeded)
}

/// Row indices of every cluster (label mod `k`), ascending (a counting sort).
fn group_by_label(labels: &[usize], k: usize) -> Vec<Vec<usize>> {
    let mut counts = vec![0usize; k];
    for &l in labels {
        counts[l % k] += 1;
    }
    let mut members: Vec<Vec<usize>> = counts.iter().map(|&c| Vec::with_capacity(c)).collect();
    for (i, &l) in labels.iter().enumerate() {
        members[l % k].push(i);
    }
    members
}

/// Moves the farthest eligible rows into the empty clusters (see [`update`]); returns how many
/// clusters were re-seeded.
fn reseed_empty<F: Real>(
    data: &ArrayView2<F>,
    labels: &[usize],
    dist: &[f64],
    transforms: &Transforms,
    sums: &mut Array2<f64>,
    counts: &mut [usize],
) -> usize {
    let k = counts.len();
    let empty: Vec<usize> = (0..k).filter(|&c| counts[c] == 0).collect();
    if empty.is_empty() {
        return 0;
    }
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_unstable_by(|&a, &b| dist[b].total_cmp(&dist[a]).then(a.cmp(&b)));
    let mut candidates = order.into_iter();
    let mut reseeded = 0;
    for target in empty {
        let Some(i) = candidates.by_ref().find(|&i| counts[labels[i] % k] > 1) else {
            break;
        };
        let source = labels[i] % k;
        let x = row(data, i);
        let mut source_sum = sums.row_mut(source);
        let source_sum = source_sum
            .as_slice_mut()
            .expect("fresh array is contiguous");
        transforms.add_untransformed(labels[i] / k, x, -1.0, source_sum);
        for (s, &v) in sums.row_mut(target).iter_mut().zip(x) {
            *s = v.to_f64_exact();
        }
        counts[source] -= 1;
        counts[target] = 1;
        reseeded += 1;
    }
    reseeded
}
