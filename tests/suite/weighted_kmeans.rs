//! Weighted k-means (per-row weights) and sensitivity-weighted codebooks: integer weights
//! equal duplicated rows, zero weights equal removed rows, the same bits on any number of
//! threads, and the codebook's row weights (importance × scale²).
//!
//! How the equalities can be exact: a weighted fit draws k-means++ seeds with one uniform
//! number per draw, scaled by the total (weighted) potential and located by a prefix search
//! over `w·D²`. A row of weight `w` then covers the same interval of that search as `w`
//! adjacent copies of weight 1, so with exact sums (small integer data: every seeding
//! distance, weight, potential and cluster sum is an integer, and the final centroids are
//! dyadic) the two fits make the same draws and give the same centroids, labels and final
//! inertia, to the bit (only the inertia of intermediate iterations, against non-dyadic
//! centroids, rounds differently). With general floating-point data the
//! sums round differently (the potentials are added in 8 interleaved lanes), so the
//! duplicated-rows comparison there is to 1e-12. Zero weights add exact zeros at the same
//! positions, so removing rows at the end, or drawing `Init::Random` seeds (uniform among
//! the rows of positive weight), gives the same bits on any data.

use crate::common::{in_pool, rng};
use clustered_conv::{
    CompressionConfig, Error, Init, KMeans, KMeansFit, KernelCodebook, ScaleScheme, Symmetry,
};
use ndarray::{array, Array1, Array2, Array4, ArrayView2, Axis};
use rand::Rng;

/// Rows `i` repeated `weights[i]` times (adjacent), and the original row of every copy.
fn duplicated(x: &Array2<f64>, weights: &[usize]) -> (Array2<f64>, Vec<usize>) {
    let origin: Vec<usize> = (0..x.nrows())
        .flat_map(|i| std::iter::repeat_n(i, weights[i]))
        .collect();
    (x.select(Axis(0), &origin), origin)
}

/// Three clusters of integer points in 2-D, far apart; each cluster's weights sum to 8.
fn integer_clusters() -> (Array2<f64>, Vec<usize>) {
    let offsets = [[0.0, 0.0], [60.0, 0.0], [0.0, 60.0]];
    let members: [&[([f64; 2], usize)]; 3] = [
        &[
            ([0.0, 0.0], 3),
            ([1.0, 2.0], 1),
            ([2.0, 1.0], 2),
            ([3.0, 3.0], 2),
        ],
        &[
            ([0.0, 1.0], 1),
            ([1.0, 0.0], 1),
            ([2.0, 2.0], 1),
            ([4.0, 1.0], 1),
            ([1.0, 5.0], 4),
        ],
        &[
            ([0.0, 0.0], 2),
            ([2.0, 0.0], 2),
            ([0.0, 2.0], 2),
            ([6.0, 6.0], 2),
        ],
    ];
    let mut rows = Vec::new();
    let mut weights = Vec::new();
    // Interleave the clusters, so duplicates of one cluster are not all in one place.
    for m in 0..5 {
        for (c, cluster) in members.iter().enumerate() {
            if let Some(&(p, w)) = cluster.get(m) {
                rows.extend([p[0] + offsets[c][0], p[1] + offsets[c][1]]);
                weights.push(w);
            }
        }
    }
    (
        Array2::from_shape_vec((weights.len(), 2), rows).unwrap(),
        weights,
    )
}

fn as_f64(w: &[usize]) -> Array1<f64> {
    w.iter().map(|&w| w as f64).collect()
}

/// `a` and `b` are the same fit; `b`'s row `j` is `a`'s row `labels_of_b[j]`. With
/// `duplicates`, the per-iteration inertia is compared to 1e-12 (the intermediate centroids
/// are not dyadic, so its sums round differently) and `label_changes`, which counts rows,
/// not weight, is not compared.
fn assert_same_fit(
    a: &KMeansFit<f64>,
    b: &KMeansFit<f64>,
    labels_of_b: &[usize],
    duplicates: bool,
) {
    assert_eq!(a.centroids, b.centroids);
    assert_eq!(a.inertia.to_bits(), b.inertia.to_bits());
    assert_eq!(
        (a.n_iter, a.convergence, a.best_run),
        (b.n_iter, b.convergence, b.best_run)
    );
    if duplicates {
        for (s, t) in a.history.iter().zip(&b.history) {
            assert!((s.inertia - t.inertia).abs() <= 1e-12 * s.inertia);
            assert_eq!((s.center_shift, s.reseeded), (t.center_shift, t.reseeded));
        }
    } else {
        assert_eq!(a.history, b.history);
        assert_eq!(a.run_inertias, b.run_inertias);
    }
    let mapped: Vec<usize> = labels_of_b.iter().map(|&i| a.labels[i]).collect();
    assert_eq!(mapped, b.labels);
}

#[test]
fn integer_weights_equal_duplicated_rows_bit_for_bit() {
    let (x, w) = integer_clusters();
    let (dup, origin) = duplicated(&x, &w);
    let ones = Array1::from_elem(dup.nrows(), 1.0);
    for seed in 0..6 {
        for k in [2, 3, 5] {
            let params = KMeans::params(k).seed(seed).n_init(3).tol(0.0);
            let weighted = params.fit_weighted(x.view(), as_f64(&w).view()).unwrap();
            let copies = params.fit_weighted(dup.view(), ones.view()).unwrap();
            assert_same_fit(&weighted, &copies, &origin, true);
        }
    }
    // The right answer, too: each cluster's weighted mean, inertia Σ w·d².
    let fit = KMeans::params(3)
        .fit_weighted(x.view(), as_f64(&w).view())
        .unwrap();
    let c = &fit.centroids;
    let mut means: Vec<[f64; 2]> = c.outer_iter().map(|r| [r[0], r[1]]).collect();
    means.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(means, [[1.375, 1.25], [2.0, 62.0], [61.375, 3.0]]);
}

#[test]
fn integer_weights_match_duplicated_rows_on_real_data() {
    let mut r = rng(3);
    let centres = Array2::from_shape_simple_fn((6, 4), || r.random_range(-5.0..5.0));
    let x = Array2::from_shape_fn((300, 4), |(i, j)| {
        centres[[i % 6, j]] + r.random_range(-1.0..1.0)
    });
    let w: Vec<usize> = (0..300).map(|i| 1 + (i * 7919) % 4).collect();
    let (dup, origin) = duplicated(&x, &w);
    let ones = Array1::from_elem(dup.nrows(), 1.0);
    for seed in 0..3 {
        let params = KMeans::params(6).seed(seed).tol(0.0);
        let a = params.fit_weighted(x.view(), as_f64(&w).view()).unwrap();
        let b = params.fit_weighted(dup.view(), ones.view()).unwrap();
        for (p, q) in a.centroids.iter().zip(&b.centroids) {
            assert!((p - q).abs() <= 1e-12 * (1.0 + p.abs()), "{p} vs {q}");
        }
        assert!((a.inertia - b.inertia).abs() <= 1e-12 * a.inertia);
        let mapped: Vec<usize> = origin.iter().map(|&i| a.labels[i]).collect();
        assert_eq!(mapped, b.labels);
    }
}

#[test]
fn zero_weights_equal_removed_rows() {
    let mut r = rng(4);
    let n = 2_000;
    let real = Array2::from_shape_simple_fn((n, 5), || r.random_range(-1.0..1.0));
    let integer = Array2::from_shape_simple_fn((n, 3), || r.random_range(-20..20) as f64);
    let weights: Vec<f64> = (0..n)
        .map(|i| {
            if i % 3 == 1 {
                0.0
            } else {
                r.random_range(0.5..2.0)
            }
        })
        .collect();
    let kept: Vec<usize> = (0..n).filter(|&i| weights[i] > 0.0).collect();
    let kept_weights: Array1<f64> = kept.iter().map(|&i| weights[i]).collect();
    let weights = Array1::from_vec(weights);
    let cases = [
        (
            &real,
            KMeans::params(20).seed(1).n_init(2).init(Init::Random),
        ),
        (&integer, KMeans::params(20).seed(2).n_init(2)),
        // k-means++ on real data: the potentials' sums round differently once rows are
        // gone, which could move a draw that lands exactly on a boundary; here none does.
        (&real, KMeans::params(20).seed(3).n_init(2)),
    ];
    for (x, params) in cases {
        let all = params.fit_weighted(x.view(), weights.view()).unwrap();
        let removed = params
            .fit_weighted(x.select(Axis(0), &kept).view(), kept_weights.view())
            .unwrap();
        assert_same_fit(&all, &removed, &kept, false);
    }
}

#[test]
fn weighted_means_and_inertia_by_hand() {
    let x = array![[0.0], [4.0], [100.0], [104.0], [50.0]];
    let w = array![1.0, 3.0, 0.5, 1.5, 0.0];
    let fit = KMeans::params(2)
        .init(Init::Random)
        .fit_weighted(x.view(), w.view())
        .unwrap();
    let (lo, hi) = (fit.labels[0], fit.labels[2]);
    assert_ne!(lo, hi);
    assert_eq!(fit.centroids[[lo, 0]], 3.0); // (0 + 3·4) / 4
    assert_eq!(fit.centroids[[hi, 0]], 103.0); // (0.5·100 + 1.5·104) / 2
    assert_eq!(fit.inertia, 9.0 + 3.0 + 0.5 * 9.0 + 1.5);
    // The unweighted fit of the same rows differs.
    let plain = KMeans::params(2).fit(x.view()).unwrap();
    assert_ne!(plain.inertia, fit.inertia);
}

/// f64 rows (so a change in the order of the f64 sums is not hidden by rounding to f32).
fn noisy_rows(n: usize, seed: u64) -> (Array2<f64>, Array1<f64>) {
    let mut r = rng(seed);
    let x = Array2::from_shape_simple_fn((n, 9), || r.random_range(-1.0..1.0));
    let w = (0..n)
        .map(|i| {
            if i % 11 == 0 {
                0.0
            } else {
                r.random_range(0.0..3.0)
            }
        })
        .collect();
    (x, w)
}

#[test]
fn bit_identical_on_1_and_2_threads() {
    let (x, w) = noisy_rows(20_000, 5);
    for init in [Init::KMeansPlusPlus, Init::Random] {
        let fit = |threads| {
            in_pool(threads, || {
                KMeans::params(64)
                    .seed(3)
                    .n_init(2)
                    .max_iter(30)
                    .init(init)
                    .fit_weighted(x.view(), w.view())
                    .unwrap()
            })
        };
        assert_eq!(fit(1), fit(2));
    }
    // A sensitivity-weighted, flip-invariant codebook.
    let mut r = rng(6);
    let weight = Array4::from_shape_simple_fn((64, 48, 3, 3), || r.random_range(-1.0f32..1.0));
    let importance = Array2::from_shape_simple_fn((64, 48), || r.random_range(0.0..2.0));
    let fit = |threads| {
        in_pool(threads, || {
            KernelCodebook::params(32)
                .seed(1)
                .symmetry(Symmetry::Flip)
                .fitter(&[weight.view()])
                .importance(&[importance.view()])
                .run()
                .unwrap()
        })
    };
    assert_eq!(fit(1), fit(2));
}

#[test]
fn rejects_bad_weights() {
    let x = array![[0.0], [1.0], [2.0], [3.0]];
    let fit = |w: Array1<f64>, k| KMeans::params(k).fit_weighted(x.view(), w.view());
    let e = fit(array![1.0, 1.0, 1.0], 2).unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { ref expected, ref got, .. }
        if *expected == vec![4] && *got == vec![3])
    );
    let e = fit(array![1.0, f64::NAN, 1.0, 1.0], 2).unwrap_err();
    assert!(matches!(e, Error::NonFinite { index: 1, .. }));
    let e = fit(array![1.0, 1.0, f64::INFINITY, 1.0], 2).unwrap_err();
    assert!(matches!(e, Error::NonFinite { index: 2, .. }));
    let e = fit(array![1.0, -0.5, 1.0, 1.0], 2).unwrap_err();
    assert!(matches!(e, Error::InvalidParameter { value, .. } if value == -0.5));
    let e = fit(array![0.0, 0.0, 0.0, 0.0], 1).unwrap_err();
    assert!(matches!(e, Error::InvalidParameter { value, .. } if value == 0.0));
    let e = fit(array![f64::MAX, f64::MAX, 0.0, 0.0], 1).unwrap_err();
    assert!(matches!(e, Error::InvalidParameter { value, .. } if value.is_infinite()));
    let e = fit(array![1.0, 0.0, 2.0, 0.0], 3).unwrap_err();
    assert!(matches!(e, Error::TooManyClusters { k: 3, n: 2 }));
    // Settings are still checked first, and the data as for `fit`.
    let e = KMeans::params(0)
        .fit_weighted(x.view(), array![1.0, 1.0, 1.0, 1.0].view())
        .unwrap_err();
    assert!(matches!(e, Error::InvalidParameter { name: "k", .. }));
    let bad = array![[0.0], [f64::NAN]];
    let e = KMeans::params(1)
        .fit_weighted(bad.view(), array![1.0, 1.0].view())
        .unwrap_err();
    assert!(matches!(e, Error::NonFinite { index: 1, .. }));
}

/// The rows the codebook clusters under L2 scales (each kernel over its signed L2 norm, the
/// sign of its centre tap), and their k-means weights `importance · s²`, written here from
/// the documented rule.
fn l2_rows_and_weights(w: &Array4<f64>, importance: &Array2<f64>) -> (Array2<f64>, Array1<f64>) {
    let (o, i, kh, kw) = w.dim();
    let mut rows = Array2::zeros((o * i, kh * kw));
    let mut weights = Array1::zeros(o * i);
    for (pos, (kernel, &h)) in w
        .to_shape((o * i, kh * kw))
        .unwrap()
        .outer_iter()
        .zip(importance.iter())
        .enumerate()
    {
        let norm = kernel.iter().fold(0.0, |a, &v| a + v * v).sqrt();
        let s = if kernel[kh * kw / 2] < 0.0 {
            -norm
        } else {
            norm
        };
        rows.row_mut(pos).assign(&kernel.mapv(|v| v / s));
        weights[pos] = h * s * s;
    }
    (rows, weights)
}

/// Centroid rows in lexicographic order (codebooks sort theirs by usage).
fn sorted_rows(c: ArrayView2<f64>) -> Vec<Vec<f64>> {
    let mut rows: Vec<Vec<f64>> = c.outer_iter().map(|r| r.to_vec()).collect();
    rows.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rows
}

#[test]
fn codebook_importance_weights_each_kernel_by_importance_times_scale_squared() {
    let mut r = rng(7);
    let w = Array4::from_shape_simple_fn((16, 8, 3, 3), || r.random_range(-1.0..1.0));
    let importance = Array2::from_shape_simple_fn((16, 8), || r.random_range(0.0..2.0));
    let fit = KernelCodebook::params(10)
        .seed(4)
        .fitter(&[w.view()])
        .importance(&[importance.view()])
        .run()
        .unwrap();
    let (rows, weights) = l2_rows_and_weights(&w, &importance);
    let km = KMeans::params(10)
        .seed(4)
        .fit_weighted(rows.view(), weights.view())
        .unwrap();
    assert_eq!(fit.inertia.to_bits(), km.inertia.to_bits());
    let centroids = fit
        .codebook
        .centroids()
        .to_shape((10, 9))
        .unwrap()
        .to_owned();
    assert_eq!(
        sorted_rows(centroids.view()),
        sorted_rows(km.centroids.view())
    );
    // Without importance: the unweighted fit, unchanged.
    let plain = KernelCodebook::params(10).seed(4).fit(&[w.view()]).unwrap();
    let empty = KernelCodebook::params(10)
        .seed(4)
        .fitter(&[w.view()])
        .importance(&[])
        .run()
        .unwrap();
    assert_eq!(plain, empty);
    assert_ne!(plain.inertia, fit.inertia);
}

#[test]
fn a_tensor_of_zero_importance_takes_no_part_in_the_centroids() {
    let mut r = rng(8);
    let a = Array4::from_shape_simple_fn((12, 6, 3, 3), || r.random_range(-1.0..1.0));
    let b = Array4::from_shape_simple_fn((8, 12, 3, 3), || r.random_range(-1.0..1.0));
    let ha = Array2::from_shape_simple_fn((12, 6), || r.random_range(0.1..1.0));
    let hb = Array2::zeros((8, 12));
    let params = KernelCodebook::params(8)
        .seed(2)
        .scale_scheme(ScaleScheme::None);
    let both = params
        .fitter(&[a.view(), b.view()])
        .importance(&[ha.view(), hb.view()])
        .run()
        .unwrap();
    let only_a = params
        .fitter(&[a.view()])
        .importance(&[ha.view()])
        .run()
        .unwrap();
    assert_eq!(both.inertia.to_bits(), only_a.inertia.to_bits());
    let flat = |f: &clustered_conv::CodebookFit<f64>| {
        f.codebook.centroids().to_shape((8, 9)).unwrap().to_owned()
    };
    assert_eq!(
        sorted_rows(flat(&both).view()),
        sorted_rows(flat(&only_a).view())
    );
    let rebuilt =
        |f: &clustered_conv::CodebookFit<f64>| f.assignments[0].reconstruct(&f.codebook).unwrap();
    assert_eq!(rebuilt(&both), rebuilt(&only_a));
}

#[test]
fn codebook_importance_rejects_bad_arrays() {
    let mut r = rng(9);
    let w = Array4::from_shape_simple_fn((4, 3, 3, 3), || r.random_range(-1.0..1.0));
    let run = |h: &[ndarray::ArrayView2<f64>], k| {
        KernelCodebook::params(k)
            .fitter(&[w.view()])
            .importance(h)
            .run()
    };
    let ok = Array2::from_elem((4, 3), 1.0);
    let e = run(&[ok.view(), ok.view()], 2).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }));
    let wrong = Array2::from_elem((3, 4), 1.0);
    let e = run(&[wrong.view()], 2).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { ref expected, .. } if *expected == vec![4, 3]));
    let mut nan = ok.clone();
    nan[[2, 1]] = f64::NAN;
    let e = run(&[nan.view()], 2).unwrap_err();
    assert!(matches!(e, Error::NonFinite { index: 7, .. }));
    let mut negative = ok.clone();
    negative[[0, 2]] = -1.0;
    let e = run(&[negative.view()], 2).unwrap_err();
    assert!(matches!(e, Error::InvalidParameter { value, .. } if value == -1.0));
    let zero = Array2::zeros((4, 3));
    let e = run(&[zero.view()], 2).unwrap_err();
    assert!(matches!(e, Error::InvalidParameter { .. }));
    let mut two = Array2::zeros((4, 3));
    two[[0, 0]] = 1.0;
    two[[3, 2]] = 1.0;
    let e = run(&[two.view()], 3).unwrap_err();
    assert!(matches!(e, Error::TooManyClusters { k: 3, n: 2 }));
}

#[test]
fn compressor_importance_fits_each_codebook_with_its_layers_importance() {
    let mut r = rng(10);
    let layer = |name: &str, o, i, k, r: &mut rand_chacha::ChaCha8Rng| clustered_conv::ConvLayer {
        name: name.to_string(),
        weight: Array4::from_shape_simple_fn((o, i, k, k), || r.random_range(-1.0..1.0)),
        bias: None,
        geometry: clustered_conv::ConvGeometry::default().padding(k / 2, k / 2),
        mask: None,
    };
    let layers = vec![
        layer("a", 8, 4, 3, &mut r),
        layer("pointwise", 8, 8, 1, &mut r),
        layer("b", 12, 8, 3, &mut r),
    ];
    let importance: Vec<Array2<f64>> = layers
        .iter()
        .map(|l| {
            Array2::from_shape_simple_fn((l.weight.dim().0, l.weight.dim().1), || {
                r.random_range(0.0..1.0)
            })
        })
        .collect();
    let views: Vec<_> = importance.iter().map(|h| h.view()).collect();
    let params = KernelCodebook::params(6)
        .seed(3)
        .scale_scheme(ScaleScheme::None);
    let config = CompressionConfig::new(params);
    let net = config.compressor(&layers).importance(&views).run().unwrap();
    let direct = params
        .fitter(&[layers[0].weight.view(), layers[2].weight.view()])
        .importance(&[views[0], views[2]])
        .run()
        .unwrap();
    assert_eq!(net.codebooks().len(), 1);
    assert_eq!(net.codebooks().get(0).unwrap(), &direct.codebook);
    let plain = config.compressor(&layers).run().unwrap();
    assert_ne!(plain.codebooks().get(0).unwrap(), &direct.codebook);
    let e = config
        .compressor(&layers)
        .importance(&views[..2])
        .run()
        .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }));
}
