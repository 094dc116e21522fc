//! KernelCodebook: scales, zero kernels, usage order, exact reconstruction, errors.

use crate::common::{in_pool, random4, rng};
use clustered_conv::{Error, KernelCodebook, ScaleScheme, Symmetry};
use ndarray::{concatenate, Array2, Array3, Array4, Axis};

fn rel_err(a: &Array4<f64>, b: &Array4<f64>) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

#[test]
fn l2norm_scales_follow_the_paper_definition() {
    let mut r = rng(21);
    let w = random4(&mut r, (6, 5, 3, 3));
    let fit = KernelCodebook::params(4).fit(&[w.view()]).unwrap();
    let scales = fit.assignments[0].scales.as_ref().unwrap();
    for o in 0..6 {
        for i in 0..5 {
            let k = w.slice(ndarray::s![o, i, .., ..]);
            let norm = k.iter().map(|v| v * v).sum::<f64>().sqrt();
            let expected = if k[[1, 1]] < 0.0 { -norm } else { norm };
            assert!((scales[[o, i]] - expected).abs() < 1e-12);
        }
    }
    // Normalised centroids are means of unit vectors with non-negative centres.
    for c in fit.codebook.centroids().outer_iter() {
        assert!(c[[1, 1]] >= 0.0);
        assert!(c.iter().map(|v| v * v).sum::<f64>() <= 1.0 + 1e-12);
    }
}

#[test]
fn k_equal_to_kernel_count_reconstructs_exactly() {
    let mut r = rng(22);
    let w = random4(&mut r, (4, 3, 3, 3));
    // Raw kernels: every centroid is its single member, so reconstruction is exact.
    let fit = KernelCodebook::params(12)
        .scale_scheme(ScaleScheme::None)
        .fit(&[w.view()])
        .unwrap();
    assert_eq!(fit.assignments[0].reconstruct(&fit.codebook).unwrap(), w);
    // With scales, s·(w/s) equals w up to one rounding per element.
    let fit = KernelCodebook::params(12).fit(&[w.view()]).unwrap();
    let back = fit.assignments[0].reconstruct(&fit.codebook).unwrap();
    assert!(rel_err(&back, &w) < 1e-15);
    assert!(fit.inertia < 1e-25);
}

#[test]
fn zero_kernels_get_scale_zero_index_zero_and_stay_zero() {
    let mut r = rng(23);
    let mut w = random4(&mut r, (3, 3, 3, 3));
    for (o, i) in [(0, 1), (2, 2), (1, 0)] {
        w.slice_mut(ndarray::s![o, i, .., ..]).fill(0.0);
    }
    let fit = KernelCodebook::params(3).fit(&[w.view()]).unwrap();
    let a = &fit.assignments[0];
    for (o, i) in [(0, 1), (2, 2), (1, 0)] {
        assert_eq!(a.indices[[o, i]], 0);
        assert_eq!(a.scales.as_ref().unwrap()[[o, i]], 0.0);
    }
    let back = a.reconstruct(&fit.codebook).unwrap();
    for (o, i) in [(0, 1), (2, 2), (1, 0)] {
        assert!(back
            .slice(ndarray::s![o, i, .., ..])
            .iter()
            .all(|&v| v == 0.0));
    }
    assert!(fit.codebook.centroids().iter().all(|v| v.is_finite()));
    // Zero kernels do not count as points: 6 non-zero kernels cannot make 7 clusters.
    assert!(matches!(
        KernelCodebook::params(7).fit(&[w.view()]).unwrap_err(),
        Error::TooManyClusters { k: 7, n: 6 }
    ));
}

#[test]
fn zero_centre_kernels_count_as_positive() {
    let w = Array4::from_shape_fn((2, 2, 3, 3), |(o, i, r, c)| {
        if r == 1 && c == 1 {
            0.0
        } else {
            (o as f64 + 1.0) * if (i + r + c) % 2 == 0 { -1.0 } else { 2.0 }
        }
    });
    let fit = KernelCodebook::params(4).fit(&[w.view()]).unwrap();
    let s = fit.assignments[0].scales.as_ref().unwrap();
    assert!(s.iter().all(|&v| v > 0.0));
    let back = fit.assignments[0].reconstruct(&fit.codebook).unwrap();
    assert!(rel_err(&back, &w) < 1e-15);
}

#[test]
fn centroids_are_sorted_by_usage() {
    let mut r = rng(24);
    let w = random4(&mut r, (32, 32, 3, 3));
    let fit = KernelCodebook::params(16).seed(2).fit(&[w.view()]).unwrap();
    let usage = fit
        .codebook
        .usage(&[fit.assignments[0].indices.view()])
        .unwrap();
    assert_eq!(usage.total(), 32 * 32);
    assert!(
        usage.per_centroid.windows(2).all(|p| p[0] >= p[1]),
        "{:?}",
        usage.per_centroid
    );
    assert!(usage.per_centroid[15] > 0);
    // Entropy from an independent count.
    let mut counts = [0f64; 16];
    for &i in fit.assignments[0].indices.iter() {
        counts[i as usize] += 1.0;
    }
    let h: f64 = counts
        .iter()
        .filter(|&&c| c > 0.0)
        .map(|&c| -(c / 1024.0) * (c / 1024.0).log2())
        .sum();
    assert!((usage.entropy_bits() - h).abs() < 1e-12);
    assert!(h <= 4.0);
}

#[test]
fn assign_reproduces_the_fitted_assignments() {
    let mut r = rng(25);
    let w1 = random4(&mut r, (16, 8, 3, 3));
    let w2 = random4(&mut r, (8, 16, 3, 3));
    for mode in [ScaleScheme::default(), ScaleScheme::None] {
        let fit = KernelCodebook::params(10)
            .scale_scheme(mode)
            .fit(&[w1.view(), w2.view()])
            .unwrap();
        assert_eq!(fit.codebook.assign(w1.view()).unwrap(), fit.assignments[0]);
        assert_eq!(fit.codebook.assign(w2.view()).unwrap(), fit.assignments[1]);
    }
}

#[test]
fn network_wide_fit_equals_fit_of_the_concatenated_kernels() {
    let mut r = rng(26);
    let w1 = random4(&mut r, (5, 4, 3, 3));
    let w2 = random4(&mut r, (7, 4, 3, 3));
    let joint = KernelCodebook::params(6)
        .seed(9)
        .fit(&[w1.view(), w2.view()])
        .unwrap();
    let cat = concatenate(Axis(0), &[w1.view(), w2.view()]).unwrap();
    let single = KernelCodebook::params(6)
        .seed(9)
        .fit(&[cat.view()])
        .unwrap();
    assert_eq!(joint.codebook, single.codebook);
    let cat_idx = concatenate(
        Axis(0),
        &[
            joint.assignments[0].indices.view(),
            joint.assignments[1].indices.view(),
        ],
    )
    .unwrap();
    assert_eq!(cat_idx, single.assignments[0].indices);
}

#[test]
fn more_centroids_reconstruct_better() {
    // Kernels made of 8 patterns with noise: 8 centroids capture most of the energy.
    let mut r = rng(27);
    let patterns = random4(&mut r, (8, 1, 3, 3));
    let noise = random4(&mut r, (64, 64, 3, 3));
    let w = Array4::from_shape_fn((64, 64, 3, 3), |(o, i, a, b)| {
        let p = (o * 3 + i * 5) % 8;
        let s = 1.0 + ((o + i) % 4) as f64;
        s * (patterns[[p, 0, a, b]] + 0.05 * noise[[o, i, a, b]])
    });
    let err = |k| {
        let fit = KernelCodebook::params(k).fit(&[w.view()]).unwrap();
        rel_err(&fit.assignments[0].reconstruct(&fit.codebook).unwrap(), &w)
    };
    let (e2, e8, e64) = (err(2), err(8), err(64));
    eprintln!("relative error K=2 {e2:.4}, K=8 {e8:.4}, K=64 {e64:.4}");
    assert!(e8 < 0.1 && e8 < e2 && e64 < e8);
}

#[test]
fn fit_is_bit_identical_on_1_and_2_threads() {
    let mut r = rng(28);
    let w = random4(&mut r, (64, 48, 3, 3)).mapv(|v| v as f32);
    let run = |threads| {
        in_pool(threads, || {
            KernelCodebook::params(32)
                .seed(1)
                .n_init(2)
                .fit(&[w.view()])
                .unwrap()
        })
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn other_kernel_sizes_work() {
    let mut r = rng(29);
    for (kh, kw) in [(5, 5), (1, 3), (2, 2), (7, 7)] {
        let w = random4(&mut r, (6, 4, kh, kw));
        let fit = KernelCodebook::params(24)
            .scale_scheme(ScaleScheme::None)
            .fit(&[w.view()])
            .unwrap();
        assert_eq!(fit.codebook.kernel_size(), (kh, kw));
        assert_eq!(fit.assignments[0].reconstruct(&fit.codebook).unwrap(), w);
    }
}

#[test]
fn rejects_bad_inputs() {
    let mut r = rng(30);
    let w3 = random4(&mut r, (4, 4, 3, 3));
    let w5 = random4(&mut r, (4, 4, 5, 5));
    assert!(matches!(
        KernelCodebook::params(2)
            .fit(&[w3.view(), w5.view()])
            .unwrap_err(),
        Error::KernelSizeMismatch {
            tensor: 1,
            expected: (3, 3),
            got: (5, 5)
        }
    ));
    assert!(matches!(
        KernelCodebook::params(2).fit::<f64>(&[]),
        Err(Error::Empty { .. })
    ));
    let mut bad = w3.clone();
    bad[[2, 1, 0, 2]] = f64::NAN;
    // Kernel (2, 1) is row 2·4 + 1 = 9.
    assert!(matches!(
        KernelCodebook::params(2).fit(&[bad.view()]),
        Err(Error::NonFinite { index: 9, .. })
    ));
    // Rotations need square kernels.
    let w_rect = random4(&mut r, (4, 4, 1, 3));
    assert!(matches!(
        KernelCodebook::params(2)
            .symmetry(Symmetry::Dihedral)
            .fit(&[w_rect.view()]),
        Err(Error::Unsupported { .. })
    ));
    assert!(KernelCodebook::params(2)
        .symmetry(Symmetry::Flips)
        .fit(&[w_rect.view()])
        .is_ok());
    assert!(matches!(
        KernelCodebook::params(0).fit(&[w3.view()]),
        Err(Error::InvalidParameter { name: "k", .. })
    ));

    let cb = KernelCodebook::from_centroids(Array3::<f64>::zeros((4, 3, 3)), Symmetry::Identity)
        .unwrap();
    let mut idx = Array2::<u32>::zeros((2, 3));
    idx[[1, 2]] = 4;
    assert!(matches!(
        cb.reconstruct(idx.view(), None).unwrap_err(),
        Error::IndexOutOfRange {
            out_channel: 1,
            in_channel: 2,
            index: 4,
            limit: 4
        }
    ));
    assert!(matches!(
        cb.usage(&[idx.view()]),
        Err(Error::IndexOutOfRange { .. })
    ));
    idx[[1, 2]] = 3;
    let scales = Array2::<f64>::ones((3, 2));
    assert!(matches!(
        cb.reconstruct(idx.view(), Some(scales.view())),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        cb.assign(w5.view()),
        Err(Error::KernelSizeMismatch { .. })
    ));
    let mut nan = Array3::<f64>::zeros((2, 3, 3));
    nan[[1, 0, 0]] = f64::INFINITY;
    assert!(matches!(
        KernelCodebook::from_centroids(nan, Symmetry::Identity),
        Err(Error::NonFinite { index: 1, .. })
    ));
    assert!(matches!(
        KernelCodebook::from_centroids(Array3::<f64>::zeros((2, 1, 3)), Symmetry::Dihedral),
        Err(Error::Unsupported { .. })
    ));
}

#[test]
fn codebook_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<KernelCodebook<f32>>();
}

/// 64 kernels (8×8) of f32: 20 copies of a kernel `p`, 20 copies of `p` moved by 3e-4 in one
/// element (two clusters that nearly tie for every one of their members), 8 all-zero
/// (pruned) kernels and 16 random ones.
fn near_ties() -> Array4<f32> {
    let mut r = rng(31);
    let random = random4(&mut r, (16, 1, 3, 3)).mapv(|v| v as f32);
    let p: Vec<f32> = (0..9).map(|j| 0.9 - 0.13 * j as f32).collect();
    Array4::from_shape_fn((8, 8, 3, 3), |(o, i, y, x)| {
        let n = o * 8 + i;
        let j = y * 3 + x;
        match n % 4 {
            0 if n < 40 => p[j],
            1 if n < 40 => p[j] + if j == 4 { 3e-4 } else { 0.0 },
            2 if n < 40 => 0.0,
            _ => random[[n % 16, 0, y, x]],
        }
    })
}

#[test]
fn assign_gives_the_fit_indices_and_scales_on_near_ties() {
    let w = near_ties();
    // Distinct clusterable kernels: p, p + ε and the random ones (the zero kernel too
    // without scales); K equal to that count makes every centroid one distinct kernel, so
    // every copy of p is at distance 0 from its centroid and ~3e-4 from the next.
    let distinct_random: std::collections::HashSet<Vec<u32>> = w
        .outer_iter()
        .flat_map(|o| {
            o.outer_iter()
                .map(|k| k.iter().map(|v| v.to_bits()).collect())
                .collect::<Vec<_>>()
        })
        .collect();
    let nonzero = distinct_random.len() - 1;
    for symmetry in [Symmetry::Identity, Symmetry::Flip] {
        for (scheme, k) in [
            (ScaleScheme::default(), nonzero),
            (ScaleScheme::None, nonzero + 1),
        ] {
            let fit = KernelCodebook::params(k)
                .seed(5)
                .symmetry(symmetry)
                .scale_scheme(scheme)
                .fit(&[w.view()])
                .unwrap();
            let assigned = fit.codebook.assign(w.view()).unwrap();
            assert_eq!(assigned, fit.assignments[0], "{symmetry:?} {scheme}");
            // Copies of p and of p + ε sit in two different clusters.
            let idx = &assigned.indices;
            assert_ne!(idx[[0, 0]], idx[[0, 1]], "{symmetry:?} {scheme}");
            // f64 weights too.
            let w64 = w.mapv(f64::from);
            let fit = KernelCodebook::params(k)
                .seed(5)
                .symmetry(symmetry)
                .scale_scheme(scheme)
                .fit(&[w64.view()])
                .unwrap();
            assert_eq!(fit.codebook.assign(w64.view()).unwrap(), fit.assignments[0]);
        }
    }
}

#[test]
fn zero_kernel_height_or_width_is_an_error() {
    for shape in [(2, 2, 0, 3), (2, 2, 3, 0), (1, 1, 0, 0)] {
        let w = Array4::<f32>::zeros(shape);
        let err = KernelCodebook::params(1).fit(&[w.view()]).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::ZeroSize { what: "kernel (kh, kw)", shape: s } if s == &vec![shape.2, shape.3]
            ),
            "{shape:?}: {err:?}"
        );
    }
}
