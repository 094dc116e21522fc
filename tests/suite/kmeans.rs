//! k-means engine: known answers, invariants, determinism and rejected inputs.

use crate::common::{in_pool, rng};
use clustered_conv::{Convergence, Error, Init, KMeans, KMeansFit};
use ndarray::{Array2, ArrayView2};
use rand::Rng;
use rand_distr::{Distribution, Normal};

/// `sizes[i]` points around centre i (centres on a line, `spacing` apart), std `sigma`.
fn blobs(
    sizes: &[usize],
    dim: usize,
    spacing: f64,
    sigma: f64,
    seed: u64,
) -> (Array2<f64>, Vec<usize>) {
    let mut r = rng(seed);
    let noise = Normal::new(0.0, sigma).unwrap();
    let n: usize = sizes.iter().sum();
    let mut x = Array2::<f64>::zeros((n, dim));
    let mut truth = Vec::with_capacity(n);
    let mut row = 0;
    for (b, &size) in sizes.iter().enumerate() {
        for _ in 0..size {
            for j in 0..dim {
                let centre = if j == b % dim {
                    spacing * (b / dim + 1) as f64
                } else {
                    0.0
                };
                x[[row, j]] = centre + noise.sample(&mut r);
            }
            truth.push(b);
            row += 1;
        }
    }
    (x, truth)
}

/// Σ ‖x − c_label‖², computed directly.
fn inertia_of(x: &ArrayView2<f64>, c: &Array2<f64>, labels: &[usize]) -> f64 {
    x.outer_iter()
        .zip(labels)
        .map(|(row, &l)| {
            row.iter()
                .zip(c.row(l))
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
        })
        .sum()
}

fn assert_nearest(x: &ArrayView2<f64>, fit: &KMeansFit<f64>) {
    for (i, row) in x.outer_iter().enumerate() {
        let d = |c: usize| {
            row.iter()
                .zip(fit.centroids.row(c))
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
        };
        let own = d(fit.labels[i]);
        for c in 0..fit.centroids.nrows() {
            assert!(
                own <= d(c) + 1e-9,
                "row {i}: label {} is not nearest ({c} closer)",
                fit.labels[i]
            );
        }
    }
}

#[test]
fn recovers_well_separated_blobs_exactly() {
    let (x, truth) = blobs(&[50, 10, 80, 25, 40, 5], 3, 100.0, 0.5, 11);
    for seed in 0..10 {
        let fit = KMeans::params(6).seed(seed).fit(x.view()).unwrap();
        // Same partition: every true blob maps to one label, and labels are distinct.
        let mut label_of = vec![usize::MAX; 6];
        for (&t, &l) in truth.iter().zip(&fit.labels) {
            if label_of[t] == usize::MAX {
                label_of[t] = l;
            }
            assert_eq!(label_of[t], l, "seed {seed}: blob {t} split");
        }
        let mut sorted = label_of.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 6, "seed {seed}: blobs merged");
        assert_eq!(fit.convergence, Convergence::Strict);
    }
}

#[test]
fn inertia_never_increases_and_reported_values_are_consistent() {
    let mut r = rng(12);
    let x = Array2::from_shape_simple_fn((3000, 4), || r.random_range(-1.0..1.0));
    for seed in 0..5 {
        let fit = KMeans::params(25)
            .seed(seed)
            .tol(0.0)
            .fit(x.view())
            .unwrap();
        for pair in fit.history.windows(2) {
            assert!(
                pair[1].inertia <= pair[0].inertia * (1.0 + 1e-12),
                "seed {seed}: {:?} -> {:?}",
                pair[0],
                pair[1]
            );
        }
        assert!(
            fit.history.len() > 3,
            "hard data should take several iterations"
        );
        assert_eq!(fit.n_iter, fit.history.len());
        let direct = inertia_of(&x.view(), &fit.centroids, &fit.labels);
        assert!((direct - fit.inertia).abs() <= 1e-9 * direct);
        assert_nearest(&x.view(), &fit);
        if fit.convergence == Convergence::Strict {
            // Centroids are the means of their members.
            for c in 0..25 {
                let members: Vec<usize> = (0..x.nrows()).filter(|&i| fit.labels[i] == c).collect();
                for j in 0..4 {
                    let mean =
                        members.iter().map(|&i| x[[i, j]]).sum::<f64>() / members.len() as f64;
                    assert!((mean - fit.centroids[[c, j]]).abs() < 1e-12);
                }
            }
        }
    }
}

#[test]
fn duplicate_points_give_no_nan_and_no_empty_cluster() {
    // 10 distinct points, each three times; random seeding often picks duplicates.
    let mut r = rng(13);
    let distinct: Array2<f64> = Array2::from_shape_simple_fn((10, 2), || r.random_range(-5.0..5.0));
    let x = Array2::from_shape_fn((30, 2), |(i, j)| distinct[[i % 10, j]]);
    let mut reseeded_somewhere = false;
    for seed in 0..30 {
        for init in [Init::Random, Init::KMeansPlusPlus] {
            let fit = KMeans::params(10)
                .seed(seed)
                .init(init)
                .fit(x.view())
                .unwrap();
            assert!(fit.centroids.iter().all(|v| v.is_finite()));
            let mut used = fit.labels.clone();
            used.sort_unstable();
            used.dedup();
            assert_eq!(used.len(), 10, "seed {seed} {init:?}: empty cluster left");
            assert!(fit.inertia < 1e-20);
            reseeded_somewhere |= fit.history.iter().any(|h| h.reseeded > 0);
        }
    }
    assert!(
        reseeded_somewhere,
        "the test data never exercised empty-cluster re-seeding"
    );
}

#[test]
fn k_equal_to_n_with_duplicates_keeps_centroids_finite() {
    // Fewer distinct points (4) than clusters (8): empty clusters cannot be avoided, but no
    // centroid may become NaN.
    let x = Array2::from_shape_fn((8, 3), |(i, j)| ((i % 4) * 10 + j) as f64);
    let fit = KMeans::params(8).seed(1).fit(x.view()).unwrap();
    assert!(fit.centroids.iter().all(|v| v.is_finite()));
    assert!(fit.inertia < 1e-20);
}

#[test]
fn greedy_kmeans_plus_plus_beats_random_init_on_average() {
    // Many small blobs of unequal size: random seeding often puts two centres in one blob.
    let sizes: Vec<usize> = (0..40).map(|i| 5 + (i * 7) % 40).collect();
    let (x, _) = blobs(&sizes, 2, 10.0, 1.0, 14);
    let mean_inertia = |init| {
        (0..30)
            .map(|seed| {
                KMeans::params(40)
                    .seed(seed)
                    .init(init)
                    .fit(x.view())
                    .unwrap()
                    .inertia
            })
            .sum::<f64>()
            / 30.0
    };
    let pp = mean_inertia(Init::KMeansPlusPlus);
    let random = mean_inertia(Init::Random);
    eprintln!("mean inertia: k-means++ {pp:.1}, random {random:.1}");
    assert!(pp < random, "k-means++ {pp} vs random {random}");
}

#[test]
fn restarts_keep_the_lowest_inertia_run() {
    let sizes: Vec<usize> = (0..20).map(|i| 3 + i % 9).collect();
    let (x, _) = blobs(&sizes, 2, 4.0, 1.0, 15);
    let fit = KMeans::params(20).seed(5).n_init(6).fit(x.view()).unwrap();
    assert_eq!(fit.run_inertias.len(), 6);
    let best = fit
        .run_inertias
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min);
    assert_eq!(fit.inertia, best);
    assert_eq!(fit.run_inertias[fit.best_run], best);
    // The statistics belong to that run: its final history entry matches its inertia.
    let direct = inertia_of(&x.view(), &fit.centroids, &fit.labels);
    assert!((direct - fit.inertia).abs() <= 1e-9 * direct);
    assert!(
        fit.run_inertias.iter().any(|&v| v > best),
        "restarts should differ on this data"
    );
}

#[test]
fn huge_tolerance_stops_after_one_iteration() {
    let mut r = rng(16);
    let x = Array2::from_shape_simple_fn((500, 3), || r.random_range(-1.0..1.0));
    let fit = KMeans::params(8).tol(1e9).fit(x.view()).unwrap();
    assert_eq!(fit.n_iter, 1);
    assert_eq!(fit.convergence, Convergence::Tolerance);
    // Labels are re-assigned after a non-strict stop, so they are nearest.
    assert_nearest(&x.view(), &fit);
    let fit = KMeans::params(8)
        .tol(0.0)
        .max_iter(2)
        .fit(x.view())
        .unwrap();
    assert_eq!(fit.n_iter, 2);
    assert_eq!(fit.convergence, Convergence::MaxIter);
}

#[test]
fn progress_reports_every_iteration_of_every_run() {
    let mut r = rng(17);
    let x = Array2::from_shape_simple_fn((400, 2), || r.random_range(-1.0..1.0));
    let mut seen = Vec::new();
    let fit = KMeans::params(5)
        .n_init(3)
        .check()
        .unwrap()
        .fit_with_progress(x.view(), |p| seen.push((p.run, p.stats)))
        .unwrap();
    for run in 0..3 {
        let iters: Vec<usize> = seen
            .iter()
            .filter(|(r, _)| *r == run)
            .map(|(_, s)| s.iteration)
            .collect();
        assert_eq!(iters, (1..=iters.len()).collect::<Vec<_>>());
    }
    let best: Vec<_> = seen
        .iter()
        .filter(|(r, _)| *r == fit.best_run)
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(best, fit.history);
}

#[test]
fn bit_identical_on_1_2_and_7_threads() {
    let mut r = rng(18);
    let x = Array2::from_shape_simple_fn((20_000, 9), || r.random_range(-1.0f32..1.0));
    let run = |threads| {
        in_pool(threads, || {
            KMeans::params(64)
                .seed(3)
                .n_init(2)
                .max_iter(30)
                .fit(x.view())
                .unwrap()
        })
    };
    let one = run(1);
    assert_eq!(run(2), one);
    assert_eq!(run(7), one);
    // And the seed matters.
    let other = KMeans::params(64)
        .seed(4)
        .n_init(2)
        .max_iter(30)
        .fit(x.view())
        .unwrap();
    assert_ne!(other.centroids, one.centroids);
}

#[test]
fn f32_data_clusters_like_f64() {
    let (x, truth) = blobs(&[30, 30, 30], 2, 50.0, 0.5, 19);
    let fit = KMeans::params(3).fit(x.mapv(|v| v as f32).view()).unwrap();
    for i in 1..truth.len() {
        assert_eq!(truth[i] == truth[i - 1], fit.labels[i] == fit.labels[i - 1]);
    }
}

#[test]
fn rejects_invalid_settings_and_data() {
    let x = Array2::<f64>::zeros((10, 3));
    let bad =
        |name| move |e: Error| matches!(e, Error::InvalidParameter { name: n, .. } if n == name);
    assert!(bad("k")(KMeans::params(0).fit(x.view()).unwrap_err()));
    assert!(bad("n_init")(
        KMeans::params(2).n_init(0).fit(x.view()).unwrap_err()
    ));
    assert!(bad("max_iter")(
        KMeans::params(2).max_iter(0).fit(x.view()).unwrap_err()
    ));
    assert!(bad("tol")(
        KMeans::params(2).tol(-1.0).fit(x.view()).unwrap_err()
    ));
    assert!(bad("tol")(
        KMeans::params(2).tol(f64::NAN).fit(x.view()).unwrap_err()
    ));
    assert!(matches!(
        KMeans::params(11).fit(x.view()).unwrap_err(),
        Error::TooManyClusters { k: 11, n: 10 }
    ));
    let mut y = x.clone();
    y[[7, 2]] = f64::NAN;
    assert!(matches!(
        KMeans::params(2).fit(y.view()).unwrap_err(),
        Error::NonFinite {
            what: "k-means data",
            index: 7
        }
    ));
    y[[7, 2]] = 0.0;
    y[[4, 0]] = f64::NEG_INFINITY;
    assert!(matches!(
        KMeans::params(2).fit(y.view()),
        Err(Error::NonFinite { index: 4, .. })
    ));
    assert!(matches!(
        KMeans::params(1).fit(Array2::<f32>::zeros((0, 3)).view()),
        Err(Error::ZeroSize { .. })
    ));
    assert!(matches!(
        KMeans::params(1).fit(Array2::<f32>::zeros((5, 0)).view()),
        Err(Error::ZeroSize { .. })
    ));
}

/// The exact nearest row of `centroids` to `x` (squared distances in `f64`, lowest index on
/// ties) and that squared distance.
fn exact_nearest(x: &[f32], centroids: &Array2<f32>) -> (usize, f64) {
    let mut best = (usize::MAX, f64::INFINITY);
    for (c, centre) in centroids.outer_iter().enumerate() {
        let d: f64 = x
            .iter()
            .zip(centre)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum();
        if d < best.1 {
            best = (c, d);
        }
    }
    best
}

/// 9-D rows from 48 overlapping Gaussians: labels keep changing for dozens of iterations, so
/// the pruned assignment meets every case (bounds hold, a neighbour list settles the row, a
/// full scan is needed).
fn overlapping(n: usize, seed: u64) -> Array2<f32> {
    let mut r = rng(seed);
    let centres = Array2::from_shape_simple_fn((48, 9), || r.random_range(-1.0f32..1.0));
    let noise = Normal::new(0.0f32, 0.35).unwrap();
    Array2::from_shape_fn((n, 9), |(i, j)| {
        centres[[(i * 7919) % 48, j]] + noise.sample(&mut r)
    })
}

#[test]
fn pruned_assignment_gives_the_exact_nearest_centroid_at_every_stop() {
    let x = overlapping(12_000, 40);
    for max_iter in [1, 2, 3, 7, 20, 60] {
        let fit = KMeans::params(64)
            .seed(5)
            .tol(0.0)
            .max_iter(max_iter)
            .fit(x.view())
            .unwrap();
        if max_iter == 60 {
            assert!(fit.n_iter > 20, "the data should need many iterations");
        }
        let mut inertia = 0.0;
        for (i, row) in x.outer_iter().enumerate() {
            let (nearest, d) = exact_nearest(row.as_slice().unwrap(), &fit.centroids);
            assert_eq!(fit.labels[i], nearest, "max_iter {max_iter}, row {i}");
            inertia += d;
        }
        assert!(
            (fit.inertia - inertia).abs() <= 1e-9 * inertia,
            "max_iter {max_iter}: inertia {} vs {inertia}",
            fit.inertia
        );
    }
}
