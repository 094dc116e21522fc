//! Transform-invariant clustering (TIC): fitting, decoding, and the layer with transforms.

use crate::common::{in_pool, paper_transform, random4, rng, worst_violation};
use clustered_conv::{
    BackwardRoute, ClusteredConv2d, Conv2d, ConvGeometry, ForwardStrategy, KernelCodebook,
    ScaleScheme, Symmetry,
};
use ndarray::{Array1, Array4};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// `(cout, cin, 3, 3)` kernels, each a random transform (of the symmetry's `S`) of one of
/// `patterns` random 3×3 patterns, times a random positive scale, plus relative noise.
fn transformed_copies(
    r: &mut ChaCha8Rng,
    cout: usize,
    cin: usize,
    patterns: usize,
    s: usize,
    noise: f64,
) -> Array4<f64> {
    let base: Vec<Vec<f64>> = (0..patterns)
        .map(|_| {
            let mut p: Vec<f64> = (0..9).map(|_| r.random_range(-1.0..1.0)).collect();
            p[4] = r.random_range(0.5..1.5); // a clear positive centre
            p
        })
        .collect();
    let mut w = Array4::<f64>::zeros((cout, cin, 3, 3));
    for o in 0..cout {
        for i in 0..cin {
            let p = &base[r.random_range(0..patterns)];
            let t = r.random_range(0..s);
            let scale = r.random_range(0.2..2.0);
            for (j, v) in paper_transform(t, 3, 3, p).into_iter().enumerate() {
                w[[o, i, j / 3, j % 3]] = scale * (v + noise * r.random_range(-1.0..1.0));
            }
        }
    }
    w
}

fn rel_err(a: &Array4<f64>, b: &Array4<f64>) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

#[test]
fn every_stored_index_decodes_to_the_kernel_it_was_built_from() {
    let mut r = rng(61);
    for (symmetry, s) in [
        (Symmetry::Flip, 2),
        (Symmetry::Flips, 4),
        (Symmetry::Dihedral, 8),
    ] {
        let w = transformed_copies(&mut r, 24, 20, 3, s, 0.0);
        let fit = KernelCodebook::params(3)
            .symmetry(symmetry)
            .n_init(4)
            .fit(&[w.view()])
            .unwrap();
        let a = &fit.assignments[0];
        assert!(a.indices.iter().all(|&i| (i as usize) < 3 * s));
        // Exact copies: reconstruction is exact up to rounding.
        let back = a.reconstruct(&fit.codebook).unwrap();
        assert!(
            rel_err(&back, &w) < 1e-12,
            "{symmetry:?}: {}",
            rel_err(&back, &w)
        );
        // Decode by hand: scale · Φ_t(μ_c) with the paper's table.
        let k = fit.codebook.len();
        for ((o, i), &index) in a.indices.indexed_iter() {
            let (c, t) = (index as usize % k, index as usize / k);
            let mu: Vec<f64> = fit
                .codebook
                .centroids()
                .index_axis(ndarray::Axis(0), c)
                .iter()
                .copied()
                .collect();
            let kernel = paper_transform(t, 3, 3, &mu);
            let sc = a.scales.as_ref().unwrap()[[o, i]];
            for (j, v) in kernel.iter().enumerate() {
                assert!((sc * v - w[[o, i, j / 3, j % 3]]).abs() < 1e-12);
            }
        }
        // The assignment of a fitted codebook is reproduced by `assign`.
        assert_eq!(&fit.codebook.assign(w.view()).unwrap(), a);
    }
}

#[test]
fn tic_beats_plain_kmeans_at_equal_k_and_matches_it_at_equal_index_bits() {
    let mut r = rng(62);
    // 4 patterns in all 8 orientations, 5 % noise.
    let w = transformed_copies(&mut r, 64, 64, 4, 8, 0.05);
    let err = |k: usize, symmetry| {
        let fit = KernelCodebook::params(k)
            .symmetry(symmetry)
            .seed(3)
            .n_init(3)
            .fit(&[w.view()])
            .unwrap();
        rel_err(&fit.assignments[0].reconstruct(&fit.codebook).unwrap(), &w)
    };
    let plain4 = err(4, Symmetry::Identity);
    let tic4 = err(4, Symmetry::Dihedral);
    let plain32 = err(32, Symmetry::Identity); // 5 bits, like 4 centroids × 8 transforms
    eprintln!("relative error: K=4 plain {plain4:.4}, K=4 TIC8 {tic4:.4}, K=32 plain {plain32:.4}");
    assert!(tic4 < 0.5 * plain4);
    assert!(tic4 <= plain32 * 1.02);
}

#[test]
fn rectangular_kernels_use_flips() {
    let mut r = rng(63);
    let base = random4(&mut r, (2, 1, 1, 3));
    // Each kernel is pattern 0 or 1, possibly mirrored.
    let w = Array4::from_shape_fn((10, 6, 1, 3), |(o, i, _, c)| {
        let p = (o + i) % 2;
        let c = if (o * 3 + i) % 4 < 2 { c } else { 2 - c };
        (1.0 + o as f64) * base[[p, 0, 0, c]]
    });
    let fit = KernelCodebook::params(2)
        .symmetry(Symmetry::Flip)
        .scale_scheme(ScaleScheme::default())
        .fit(&[w.view()])
        .unwrap();
    let back = fit.assignments[0].reconstruct(&fit.codebook).unwrap();
    assert!(rel_err(&back, &w) < 1e-12);
}

#[test]
fn layer_with_tic_indices_matches_dense_and_its_gradients() {
    let mut r = rng(64);
    let w = transformed_copies(&mut r, 12, 10, 3, 8, 0.1);
    let fit = KernelCodebook::params(3)
        .symmetry(Symmetry::Dihedral)
        .fit(&[w.view()])
        .unwrap();
    let cb = &fit.codebook;
    let conv = Conv2d::new(
        w.clone(),
        Some(Array1::from_elem(12, 0.1)),
        ConvGeometry::default().padding(1, 1).stride(2, 1),
    )
    .unwrap();
    let layer = ClusteredConv2d::from_conv(&conv, cb).unwrap();
    let x = random4(&mut r, (2, 10, 9, 8));
    let dense = layer.to_conv(cb).unwrap();
    let expected = dense.forward(x.view()).unwrap();
    for strategy in [
        ForwardStrategy::Dense,
        ForwardStrategy::InputSide,
        ForwardStrategy::OutputSide,
        ForwardStrategy::Auto,
    ] {
        let got = layer.forward_with(cb, x.view(), strategy).unwrap();
        assert!(
            worst_violation(&got, &expected, 1e-12, 1e-12) <= 1.0,
            "{strategy:?}"
        );
    }
    // Centroid gradient = Σ s·Φ_t⁻¹(∂L/∂W) over the kernels using the centroid.
    let go = random4(&mut r, expected.dim());
    let dw = dense.backward(x.view(), go.view()).unwrap().weight;
    for route in [BackwardRoute::Dense, BackwardRoute::Sharing] {
        let grads = layer.backward_with(cb, x.view(), go.view(), route).unwrap();
        let k = cb.len();
        let mut want = vec![0.0f64; k * 9];
        for ((o, i), &index) in layer.indices().to_array().indexed_iter() {
            let (c, t) = (index as usize % k, index as usize / k);
            let s = layer.scales().map_or(1.0, |sc| sc.get(o, i).unwrap());
            // Φ_t is a permutation P; ∂L/∂μ[P(j)] += s·∂L/∂w[j].
            let ids: Vec<f64> = (0..9).map(|v| v as f64).collect();
            let perm = paper_transform(t, 3, 3, &ids);
            for (j, &src) in perm.iter().enumerate() {
                want[c * 9 + src as usize] += s * dw[[o, i, j / 3, j % 3]];
            }
        }
        for (a, b) in grads.centroids.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-10 * (1.0 + b.abs()), "{a} vs {b}");
        }
        assert!(
            worst_violation(
                &grads.input,
                &dense.backward(x.view(), go.view()).unwrap().input,
                1e-10,
                1e-10
            ) <= 1.0
        );
    }
}

#[test]
fn tic_fit_is_bit_identical_on_1_and_2_threads() {
    let mut r = rng(65);
    let w = transformed_copies(&mut r, 40, 32, 5, 8, 0.1).mapv(|v| v as f32);
    let run = |threads| {
        in_pool(threads, || {
            KernelCodebook::params(8)
                .symmetry(Symmetry::Dihedral)
                .seed(2)
                .fit(&[w.view()])
                .unwrap()
        })
    };
    assert_eq!(run(1), run(2));
}
