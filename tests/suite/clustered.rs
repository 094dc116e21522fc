//! ClusteredConv2d: every strategy against the dense oracle and the naive convolution,
//! gradients against finite differences, the plan against brute-force counts.

use std::collections::HashSet;

use crate::common::{
    in_pool, naive_conv, paper_transform, random4, random_problem, rng, worst_violation,
};
use clustered_conv::{
    BackwardRoute, ClusteredConv2d, Conv2d, ConvGeometry, Error, ForwardStrategy, KernelCodebook,
    ScaleScheme, Symmetry,
};
use ndarray::{Array1, Array2, Array3, Array4};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

struct Case {
    layer: ClusteredConv2d<f64>,
    codebook: KernelCodebook<f64>,
    x: Array4<f64>,
}

fn random_case(r: &mut ChaCha8Rng) -> Case {
    let p = random_problem(r, (6, 6), 4, 10, (2, 3));
    let (n, cin, cout, (kh, kw), (h, w), g) = (p.n, p.cin, p.cout, p.kernel, p.input, p.g);
    // K from 1 to Cin·Cout (every kernel its own centroid).
    let k = match r.random_range(0..4) {
        0 => 1,
        1 => cin * cout,
        _ => r.random_range(1..=cin * cout),
    };
    let centroids = Array3::from_shape_simple_fn((k, kh, kw), || r.random_range(-1.0..1.0));
    // Transform-invariant codebooks too (rotations only for square kernels).
    let symmetries: &[Symmetry] = if kh == kw {
        &[
            Symmetry::Identity,
            Symmetry::Flip,
            Symmetry::Flips,
            Symmetry::Dihedral,
        ]
    } else {
        &[Symmetry::Identity, Symmetry::Flip, Symmetry::Flips]
    };
    let symmetry = symmetries[r.random_range(0..symmetries.len())];
    let codebook = KernelCodebook::from_centroids(centroids, symmetry).unwrap();
    let limit = codebook.index_limit() as u32;
    let indices = Array2::from_shape_simple_fn((cout, cin), || r.random_range(0..limit));
    let scales = r
        .random_bool(0.7)
        .then(|| Array2::from_shape_simple_fn((cout, cin), || r.random_range(-2.0..2.0)));
    let bias = r
        .random_bool(0.5)
        .then(|| Array1::from_shape_simple_fn(cout, || r.random_range(-1.0..1.0)));
    let layer = ClusteredConv2d::new(indices, scales, bias, g).unwrap();
    let x = random4(r, (n, cin, h, w));
    Case { layer, codebook, x }
}

const STRATEGIES: [ForwardStrategy; 3] = [
    ForwardStrategy::InputSide,
    ForwardStrategy::OutputSide,
    ForwardStrategy::Auto,
];

const ROUTES: [BackwardRoute; 3] = [
    BackwardRoute::Dense,
    BackwardRoute::Sharing,
    BackwardRoute::Auto,
];

#[test]
fn every_strategy_equals_dense_over_600_random_geometries() {
    let mut r = rng(41);
    let mut worst = 0.0f64;
    for case in 0..600 {
        let c = random_case(&mut r);
        let dense = c
            .layer
            .forward_with(&c.codebook, c.x.view(), ForwardStrategy::Dense)
            .unwrap();
        // The dense oracle itself equals the naive convolution of the reconstructed weight.
        let w = c.layer.to_conv(&c.codebook).unwrap();
        let naive = naive_conv(c.x.view(), w.weight().view(), w.bias(), &c.layer.geometry());
        assert!(worst_violation(&dense, &naive, 1e-12, 1e-12) <= 1.0);
        for strategy in STRATEGIES {
            let got = c
                .layer
                .forward_with(&c.codebook, c.x.view(), strategy)
                .unwrap();
            let v = worst_violation(&got, &naive, 1e-12, 1e-12);
            worst = worst.max(v);
            assert!(v <= 1.0, "case {case} {strategy:?}: violation {v}");
        }
    }
    eprintln!("worst tolerance use: {worst:.3}");
}

#[test]
fn f32_strategies_track_the_f64_oracle() {
    let mut r = rng(42);
    let mut worst_rel = 0.0f64;
    for _ in 0..100 {
        let c = random_case(&mut r);
        let oracle = c
            .layer
            .forward_with(&c.codebook, c.x.view(), ForwardStrategy::Dense)
            .unwrap();
        let cb32 = KernelCodebook::from_centroids(
            c.codebook.centroids().mapv(|v| v as f32),
            c.codebook.symmetry(),
        )
        .unwrap();
        let l32 = ClusteredConv2d::new(
            c.layer.indices().to_array(),
            c.layer
                .scales()
                .map(|s| s.to_array())
                .map(|s| s.mapv(|v| v as f32)),
            c.layer.bias().map(|b| b.mapv(|v| v as f32)),
            c.layer.geometry(),
        )
        .unwrap();
        let x32 = c.x.mapv(|v| v as f32);
        for strategy in STRATEGIES {
            let got = l32
                .forward_with(&cb32, x32.view(), strategy)
                .unwrap()
                .mapv(f64::from);
            let v = worst_violation(&got, &oracle, 1e-5, 1e-5);
            worst_rel = worst_rel.max(v);
            assert!(v <= 1.0, "{strategy:?}");
        }
    }
    eprintln!("f32 worst tolerance use: {worst_rel:.3}");
}

/// Every strategy equals `Dense` within 1e-4 (relative + absolute) on an `f32` layer (the
/// portable kernels are checked by the crate's unit tests).
fn assert_strategies_match_dense(
    layer: &ClusteredConv2d<f32>,
    codebook: &KernelCodebook<f32>,
    x: &Array4<f32>,
    label: &str,
) {
    let oracle = layer
        .forward_with(codebook, x.view(), ForwardStrategy::Dense)
        .unwrap()
        .mapv(f64::from);
    let max_abs = oracle.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for strategy in STRATEGIES {
        let got = layer
            .forward_with(codebook, x.view(), strategy)
            .unwrap()
            .mapv(f64::from);
        let ran = match strategy {
            ForwardStrategy::Auto => layer.auto_strategy(codebook, dims(x)).unwrap(),
            other => other,
        };
        if ran == ForwardStrategy::Winograd {
            // Winograd F(4×4, 3×3) in f32: errors of a few 1e-6 of the largest output
            // (tests/clustered_winograd.rs measures them against an f64 reference).
            let worst = got
                .iter()
                .zip(oracle.iter())
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst <= 3e-5 * max_abs,
                "{label} {strategy:?}: {worst} of {max_abs}"
            );
        } else {
            assert!(
                worst_violation(&got, &oracle, 1e-4, 1e-4) <= 1.0,
                "{label} {strategy:?}"
            );
        }
    }
}

fn dims(x: &Array4<f32>) -> [usize; 4] {
    let (n, c, h, w) = x.dim();
    [n, c, h, w]
}

#[test]
fn realistic_layer_from_kmeans_matches_dense() {
    // A 64→96 layer on a 20×20 input, indices from clustering: several input-side tiles.
    let mut r = rng(43);
    let w = random4(&mut r, (96, 64, 3, 3)).mapv(|v| v as f32);
    let x = random4(&mut r, (2, 64, 20, 20)).mapv(|v| v as f32);
    let conv = Conv2d::new(
        w.clone(),
        Some(Array1::from_elem(96, 0.5)),
        ConvGeometry::default().padding(1, 1),
    )
    .unwrap();
    for k in [1, 16, 64] {
        let codebook = KernelCodebook::params(k)
            .seed(3)
            .fit(&[w.view()])
            .unwrap()
            .codebook;
        let layer = ClusteredConv2d::from_conv(&conv, &codebook).unwrap();
        assert_strategies_match_dense(&layer, &codebook, &x, &format!("K={k}"));
    }
}

#[test]
fn real_layer_shapes_match_dense() {
    // Spatial sizes whose tiles need padding to whole vectors (7, 14, 28) and a 4×4 layer.
    let mut r = rng(50);
    for (c, hw, batch) in [(32, 7, 3), (24, 14, 2), (16, 28, 1), (40, 4, 5), (8, 56, 1)] {
        let w = random4(&mut r, (c, c, 3, 3)).mapv(|v| v as f32);
        let x = random4(&mut r, (batch, c, hw, hw)).mapv(|v| v as f32);
        let conv = Conv2d::new(w.clone(), None, ConvGeometry::default().padding(1, 1)).unwrap();
        let codebook = KernelCodebook::params(8).fit(&[w.view()]).unwrap().codebook;
        let layer = ClusteredConv2d::from_conv(&conv, &codebook).unwrap();
        assert_strategies_match_dense(&layer, &codebook, &x, &format!("{c}@{hw}"));
    }
}

#[test]
fn dense_fallback_over_several_channel_blocks_equals_the_dense_layer() {
    // 150 input channels × 9 taps = 1350 GEMM rows: the fallback rebuilds the weight in blocks.
    let mut r = rng(51);
    for (cin, k, stride) in [(150, 3, 1), (70, 5, 2)] {
        let w = random4(&mut r, (20, cin, k, k));
        let conv = Conv2d::new(
            w.clone(),
            Some(Array1::from_elem(20, 0.25)),
            ConvGeometry::default().padding(1, 1).stride(stride, stride),
        )
        .unwrap();
        let codebook = KernelCodebook::params(12)
            .fit(&[w.view()])
            .unwrap()
            .codebook;
        let layer = ClusteredConv2d::from_conv(&conv, &codebook).unwrap();
        let x = random4(&mut r, (2, cin, 9, 11));
        let expected = layer.to_conv(&codebook).unwrap().forward(x.view()).unwrap();
        let got = layer
            .forward_with(&codebook, x.view(), ForwardStrategy::Dense)
            .unwrap();
        assert!(
            worst_violation(&got, &expected, 1e-12, 1e-12) <= 1.0,
            "cin {cin} k {k}"
        );
    }
}

#[test]
fn plan_counts_match_brute_force() {
    let mut r = rng(44);
    for _ in 0..50 {
        let c = random_case(&mut r);
        let idx = c.layer.indices().to_array();
        let sum_u: usize = idx
            .outer_iter()
            .map(|row| row.iter().collect::<HashSet<_>>().len())
            .sum();
        let sum_v: usize = idx
            .columns()
            .into_iter()
            .map(|col| col.iter().collect::<HashSet<_>>().len())
            .sum();
        assert_eq!(c.layer.sum_distinct_per_output(), sum_u);
        assert_eq!(c.layer.sum_distinct_per_input(), sum_v);
        assert!(sum_u <= idx.nrows() * idx.ncols().min(c.codebook.index_limit()));
    }
}

#[test]
fn paper_flop_count_on_a_hand_case() {
    // 2 outputs × 3 inputs; rows {0,0,1} and {1,1,1}: U = 2 + 1 = 3; columns {0,1},{0,1},{1}: V = 5.
    let idx = ndarray::array![[0u32, 0, 1], [1, 1, 1]];
    let layer = ClusteredConv2d::<f32>::new(
        idx,
        None,
        None,
        ConvGeometry::default().padding(1, 1).stride(2, 2),
    )
    .unwrap();
    let codebook =
        KernelCodebook::from_centroids(Array3::<f32>::zeros((2, 3, 3)), Symmetry::Identity)
            .unwrap();
    let cost = layer.cost(&codebook, (8, 8)).unwrap();
    assert_eq!((cost.sum_u, cost.sum_v), (3, 5));
    // Input resolution 8·8, 9 taps, min(3, 5) = 3.
    assert_eq!(cost.paper_flops, 64 * 9 * 3);
    // Output 4×4 with stride 2.
    assert_eq!(cost.dense_macs, 16 * 2 * 3 * 9);
    assert_eq!(cost.input_side.conv_macs, 5 * 9 * 16);
    assert_eq!(cost.input_side.adds, 6 * 16);
    assert_eq!(cost.output_side.conv_macs, 3 * 9 * 16);
    assert_eq!(cost.output_side.adds, 6 * 64);
}

#[test]
fn auto_picks_sharing_when_it_is_cheap_and_dense_when_it_is_not() {
    let g = ConvGeometry::default().padding(1, 1);
    let codebook =
        KernelCodebook::from_centroids(Array3::<f32>::ones((64 * 64, 3, 3)), Symmetry::Identity)
            .unwrap();
    // One centroid for every kernel: the input side does ~1/9 of the dense work.
    let shared = ClusteredConv2d::<f32>::new(Array2::zeros((64, 64)), None, None, g).unwrap();
    assert_eq!(
        shared.auto_strategy(&codebook, [8, 64, 16, 16]).unwrap(),
        ForwardStrategy::InputSide
    );
    // Every kernel its own centroid: nothing is shared, Winograd wins where the call allows
    // it (3×3, stride 1) and the map has enough tiles (64 tiles of 4×4 · 64 channels ≥ 2048),
    // dense elsewhere.
    let unique_indices = Array2::from_shape_fn((64, 64), |(o, i)| (o * 64 + i) as u32);
    let unique = ClusteredConv2d::<f32>::new(unique_indices.clone(), None, None, g).unwrap();
    assert_eq!(
        unique.auto_strategy(&codebook, [8, 64, 32, 32]).unwrap(),
        ForwardStrategy::Winograd
    );
    // 16 tiles · 64 channels = 1024: too few tiles for the transforms to pay, at any batch
    // (the flagship's 64@14 layer ran Winograd at 1.6× dense's time at batch 500).
    for batch in [8, 500] {
        assert_eq!(
            unique
                .auto_strategy(&codebook, [batch, 64, 16, 16])
                .unwrap(),
            ForwardStrategy::Dense
        );
    }
    let strided = ClusteredConv2d::<f32>::new(unique_indices, None, None, g.stride(2, 2)).unwrap();
    assert_eq!(
        strided.auto_strategy(&codebook, [8, 64, 16, 16]).unwrap(),
        ForwardStrategy::Dense
    );
    let cost = unique.cost(&codebook, (16, 16)).unwrap();
    assert!(
        cost.estimated_seconds(ForwardStrategy::Dense)
            < cost.estimated_seconds(ForwardStrategy::InputSide)
    );
    assert_eq!(cost.batch, 1);
    assert!(cost.winograd_whole_operand);
}

/// A 256-channel 3×3 layer (pad 1) over a codebook of 256 centroids in which every input
/// channel meets all 256 indices (o·7 + i mod 256: 7 is odd), so no work is shared.
fn wide_layer_sharing_nothing() -> (KernelCodebook<f32>, ClusteredConv2d<f32>) {
    let g = ConvGeometry::default().padding(1, 1);
    let codebook =
        KernelCodebook::from_centroids(Array3::<f32>::ones((256, 3, 3)), Symmetry::Identity)
            .unwrap();
    let indices = Array2::from_shape_fn((256, 256), |(o, i)| ((o * 7 + i) % 256) as u32);
    let layer = ClusteredConv2d::<f32>::new(indices, None, None, g).unwrap();
    (codebook, layer)
}

#[test]
fn auto_runs_winograd_on_wide_layers_that_share_nothing() {
    // ResNet 256@14 at K = 256 with every input channel seeing all 256 centroids: the
    // `Dense` route (weight rebuild, depth-blocked im2col) measured 1.95× Winograd's time
    // (batch 8, 2 threads), where the model fitted against the dense `Conv2d` picked it.
    let (codebook, layer) = wide_layer_sharing_nothing();
    let cost = layer.cost(&codebook, (14, 14)).unwrap();
    assert_eq!(cost.sum_v, 256 * 256);
    // 36·256·256 f32 values are 9 MiB: built block by block, not once per call.
    assert!(!cost.winograd_whole_operand);
    assert_eq!(
        layer.auto_strategy(&codebook, [8, 256, 14, 14]).unwrap(),
        ForwardStrategy::Winograd
    );
}

#[test]
fn auto_runs_winograd_on_wide_layers_with_small_maps_only_with_enough_tiles() {
    // VGG 256@8 at K = 256: 4 tiles per image · 256 channels is below the old 2048 line, but
    // at batch 8 (32 tiles in the call) the `Dense` route this model picked before took
    // 1.13–1.29× Winograd's time on 1 thread (strategy_table; on 2 threads the two were
    // within 10 %). At batch 1 the call has 4 tiles: each of the 36 GEMMs would have 4
    // columns.
    let (codebook, layer) = wide_layer_sharing_nothing();
    assert_eq!(
        layer.auto_strategy(&codebook, [8, 256, 8, 8]).unwrap(),
        ForwardStrategy::Winograd
    );
    assert_ne!(
        layer.auto_strategy(&codebook, [1, 256, 8, 8]).unwrap(),
        ForwardStrategy::Winograd
    );
}

/// L = Σ y ⊙ G.
fn loss(
    layer: &ClusteredConv2d<f64>,
    cb: &KernelCodebook<f64>,
    x: &Array4<f64>,
    g: &Array4<f64>,
) -> f64 {
    (&layer
        .forward_with(cb, x.view(), ForwardStrategy::Dense)
        .unwrap()
        * g)
        .sum()
}

fn close(numeric: f64, analytic: f64) -> bool {
    (numeric - analytic).abs() <= 1e-6 + 1e-6 * numeric.abs()
}

#[test]
fn gradients_match_central_finite_differences() {
    let mut r = rng(45);
    let eps = 1e-6;
    // Even cases take the dense-GEMM route, odd ones the weight-sharing stencil.
    for case in 0..60 {
        let route = [BackwardRoute::Dense, BackwardRoute::Sharing][case % 2];
        let c = random_case(&mut r);
        let y = c.layer.forward(&c.codebook, c.x.view()).unwrap();
        let go = random4(&mut r, y.dim());
        let grads = c
            .layer
            .backward_with(&c.codebook, c.x.view(), go.view(), route)
            .unwrap();
        for (idx, &analytic) in grads.input.indexed_iter() {
            let idx = [idx.0, idx.1, idx.2, idx.3];
            let (mut xp, mut xm) = (c.x.clone(), c.x.clone());
            xp[idx] += eps;
            xm[idx] -= eps;
            let numeric = (loss(&c.layer, &c.codebook, &xp, &go)
                - loss(&c.layer, &c.codebook, &xm, &go))
                / (2.0 * eps);
            assert!(
                close(numeric, analytic),
                "case {case} dx{idx:?}: {numeric} vs {analytic}"
            );
        }
        for (idx, &analytic) in grads.centroids.indexed_iter() {
            let bump = |d: f64| {
                let mut cen = c.codebook.centroids().clone();
                cen[[idx.0, idx.1, idx.2]] += d;
                KernelCodebook::from_centroids(cen, c.codebook.symmetry()).unwrap()
            };
            let numeric = (loss(&c.layer, &bump(eps), &c.x, &go)
                - loss(&c.layer, &bump(-eps), &c.x, &go))
                / (2.0 * eps);
            assert!(
                close(numeric, analytic),
                "case {case} dμ{idx:?}: {numeric} vs {analytic}"
            );
        }
        match (c.layer.scales().map(|s| s.to_array()), &grads.scales) {
            (None, None) => {}
            (Some(s), Some(gs)) => {
                for ((o, i), &analytic) in gs.indexed_iter() {
                    let bump = |d: f64| {
                        let mut s2 = s.clone();
                        s2[[o, i]] += d;
                        ClusteredConv2d::new(
                            c.layer.indices().to_array(),
                            Some(s2),
                            c.layer.bias().cloned(),
                            c.layer.geometry(),
                        )
                        .unwrap()
                    };
                    let numeric = (loss(&bump(eps), &c.codebook, &c.x, &go)
                        - loss(&bump(-eps), &c.codebook, &c.x, &go))
                        / (2.0 * eps);
                    assert!(
                        close(numeric, analytic),
                        "case {case} ds[{o},{i}]: {numeric} vs {analytic}"
                    );
                }
            }
            _ => panic!("scale gradient present iff the layer has scales"),
        }
        match (c.layer.bias(), &grads.bias) {
            (None, None) => {}
            (Some(b), Some(gb)) => {
                for o in 0..b.len() {
                    let bump = |d: f64| {
                        let mut b2 = b.clone();
                        b2[o] += d;
                        ClusteredConv2d::new(
                            c.layer.indices().to_array(),
                            c.layer.scales().map(|s| s.to_array()),
                            Some(b2),
                            c.layer.geometry(),
                        )
                        .unwrap()
                    };
                    let numeric = (loss(&bump(eps), &c.codebook, &c.x, &go)
                        - loss(&bump(-eps), &c.codebook, &c.x, &go))
                        / (2.0 * eps);
                    assert!(close(numeric, gb[o]));
                }
            }
            _ => panic!("bias gradient present iff the layer has a bias"),
        }
    }
}

#[test]
fn masked_kernels_stay_zero_through_forward_and_backward() {
    let mut r = rng(52);
    let eps = 1e-6;
    for case in 0..20 {
        let c = random_case(&mut r);
        let mask =
            Array2::from_shape_fn(c.layer.indices().to_array().dim(), |_| r.random_bool(0.6));
        let layer = c.layer.clone().with_mask(mask.clone()).unwrap();
        // Forward: the dense export has zero kernels where pruned, and every strategy agrees.
        let dense = layer.to_conv(&c.codebook).unwrap();
        for ((o, i), &keep) in mask.indexed_iter() {
            if !keep {
                assert!(dense
                    .weight()
                    .slice(ndarray::s![o, i, .., ..])
                    .iter()
                    .all(|&v| v == 0.0));
            }
        }
        let expected = naive_conv(
            c.x.view(),
            dense.weight().view(),
            dense.bias(),
            &layer.geometry(),
        );
        for strategy in STRATEGIES {
            let got = layer
                .forward_with(&c.codebook, c.x.view(), strategy)
                .unwrap();
            assert!(
                worst_violation(&got, &expected, 1e-12, 1e-12) <= 1.0,
                "case {case} {strategy:?}"
            );
        }
        // Backward: pruned scales get no gradient; the others match finite differences.
        let go = random4(&mut r, expected.dim());
        let route = [BackwardRoute::Dense, BackwardRoute::Sharing][case % 2];
        let grads = layer
            .backward_with(&c.codebook, c.x.view(), go.view(), route)
            .unwrap();
        let gs = grads.scales.as_ref().unwrap();
        let scales = layer.scales().map(|s| s.to_array()).unwrap();
        for ((o, i), &g) in gs.indexed_iter() {
            if !mask[[o, i]] {
                assert_eq!(g, 0.0);
                continue;
            }
            let bump = |d: f64| {
                let mut s2 = scales.clone();
                s2[[o, i]] += d;
                ClusteredConv2d::new(
                    layer.indices().to_array(),
                    Some(s2),
                    layer.bias().cloned(),
                    layer.geometry(),
                )
                .unwrap()
                .with_mask(mask.clone())
                .unwrap()
            };
            let numeric = (loss(&bump(eps), &c.codebook, &c.x, &go)
                - loss(&bump(-eps), &c.codebook, &c.x, &go))
                / (2.0 * eps);
            assert!(
                close(numeric, g),
                "case {case} ds[{o},{i}]: {numeric} vs {g}"
            );
        }
        for (idx, &analytic) in grads.centroids.indexed_iter() {
            let bump = |d: f64| {
                let mut cen = c.codebook.centroids().clone();
                cen[[idx.0, idx.1, idx.2]] += d;
                KernelCodebook::from_centroids(cen, c.codebook.symmetry()).unwrap()
            };
            let numeric = (loss(&layer, &bump(eps), &c.x, &go)
                - loss(&layer, &bump(-eps), &c.x, &go))
                / (2.0 * eps);
            assert!(
                close(numeric, analytic),
                "case {case} dμ{idx:?}: {numeric} vs {analytic}"
            );
        }
    }
    let c = random_case(&mut r);
    assert!(matches!(
        c.layer.with_mask(Array2::from_elem((99, 1), true)),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn centroid_gradient_is_the_scaled_sum_of_dense_weight_gradients() {
    let mut r = rng(46);
    for case in 0..60 {
        let route = [BackwardRoute::Dense, BackwardRoute::Sharing][case % 2];
        let c = random_case(&mut r);
        let dense = c.layer.to_conv(&c.codebook).unwrap();
        let y = dense.forward(c.x.view()).unwrap();
        let go = random4(&mut r, y.dim());
        let dw = dense.backward(c.x.view(), go.view()).unwrap().weight;
        let grads = c
            .layer
            .backward_with(&c.codebook, c.x.view(), go.view(), route)
            .unwrap();
        // Kernel (o, i) is s·Φ_t(μ_c), Φ_t a permutation P of the taps (PAPER.md §1.6), so
        // ∂L/∂μ_c[P(j)] += s·∂L/∂w[j].
        let (k, kh, kw) = c.codebook.centroids().dim();
        let ids: Vec<f64> = (0..kh * kw).map(|v| v as f64).collect();
        let mut expected = Array3::<f64>::zeros((k, kh, kw));
        for ((o, i), &index) in c.layer.indices().to_array().indexed_iter() {
            let s = c.layer.scales().map_or(1.0, |sc| sc.get(o, i).unwrap());
            let (centroid, t) = (index as usize % k, index as usize / k);
            let perm = paper_transform(t, kh, kw, &ids);
            for (j, &src) in perm.iter().enumerate() {
                let src = src as usize;
                expected[[centroid, src / kw, src % kw]] += s * dw[[o, i, j / kw, j % kw]];
            }
        }
        for (a, b) in grads.centroids.iter().zip(expected.iter()) {
            assert!((a - b).abs() <= 1e-10 * (1.0 + b.abs()));
        }
        // The input gradient equals the dense layer's.
        let dx = dense.backward(c.x.view(), go.view()).unwrap().input;
        assert!(worst_violation(&grads.input, &dx, 1e-10, 1e-10) <= 1.0);
    }
}

#[test]
fn shared_codebook_gradients_accumulate_across_layers() {
    let mut r = rng(47);
    let c = random_case(&mut r);
    let y = c.layer.forward(&c.codebook, c.x.view()).unwrap();
    let go = random4(&mut r, y.dim());
    let g = c
        .layer
        .backward(&c.codebook, c.x.view(), go.view())
        .unwrap();
    let mut buffer = Array3::<f64>::zeros(c.codebook.centroids().dim());
    g.accumulate_centroids_into(&mut buffer).unwrap();
    g.accumulate_centroids_into(&mut buffer).unwrap();
    assert_eq!(buffer, &g.centroids * 2.0);
    let mut wrong = Array3::<f64>::zeros((1, 1, 1));
    assert!(matches!(
        g.accumulate_centroids_into(&mut wrong),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn identical_results_on_1_and_2_threads() {
    let mut r = rng(48);
    let w = random4(&mut r, (48, 40, 3, 3)).mapv(|v| v as f32);
    let x = random4(&mut r, (3, 40, 17, 13)).mapv(|v| v as f32);
    let conv = Conv2d::new(w.clone(), None, ConvGeometry::default().padding(1, 1)).unwrap();
    let codebook = KernelCodebook::params(16)
        .fit(&[w.view()])
        .unwrap()
        .codebook;
    let layer = ClusteredConv2d::from_conv(&conv, &codebook).unwrap();
    let go = random4(&mut r, (3, 48, 17, 13)).mapv(|v| v as f32);
    let run = |threads| {
        in_pool(threads, || {
            let outs: Vec<_> = [
                ForwardStrategy::Dense,
                ForwardStrategy::InputSide,
                ForwardStrategy::OutputSide,
            ]
            .into_iter()
            .map(|s| layer.forward_with(&codebook, x.view(), s).unwrap())
            .collect();
            let grads: Vec<_> = [BackwardRoute::Dense, BackwardRoute::Sharing]
                .into_iter()
                .map(|s| {
                    layer
                        .backward_with(&codebook, x.view(), go.view(), s)
                        .unwrap()
                })
                .collect();
            (outs, grads)
        })
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn from_conv_and_to_conv_round_trip() {
    let mut r = rng(49);
    let w = random4(&mut r, (6, 5, 3, 3));
    let conv = Conv2d::new(
        w.clone(),
        Some(Array1::ones(6)),
        ConvGeometry::default().stride(2, 1),
    )
    .unwrap();
    for mode in [ScaleScheme::default(), ScaleScheme::None] {
        let fit = KernelCodebook::params(30)
            .scale_scheme(mode)
            .fit(&[w.view()])
            .unwrap();
        let layer = ClusteredConv2d::from_conv(&conv, &fit.codebook).unwrap();
        assert_eq!(layer.indices().to_array(), fit.assignments[0].indices);
        assert_eq!(
            layer.scales().map(|s| s.to_array()).is_some(),
            mode == ScaleScheme::default()
        );
        let back = layer.to_conv(&fit.codebook).unwrap();
        assert_eq!(
            back.weight(),
            &fit.assignments[0].reconstruct(&fit.codebook).unwrap()
        );
        assert_eq!(back.bias(), conv.bias());
        assert_eq!(back.geometry(), conv.geometry());
        // K = number of kernels: the round trip is (nearly) exact.
        assert!(worst_violation(back.weight(), &w, 1e-12, 1e-12) <= 1.0);
    }
}

#[test]
fn rejects_bad_inputs() {
    let g = ConvGeometry::default();
    let idx = Array2::<u32>::from_elem((2, 3), 1);
    assert!(matches!(
        ClusteredConv2d::<f32>::new(Array2::zeros((0, 3)), None, None, g),
        Err(Error::ZeroSize { .. })
    ));
    assert!(matches!(
        ClusteredConv2d::new(idx.clone(), Some(Array2::<f32>::ones((3, 2))), None, g),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut bad = Array2::<f32>::ones((2, 3));
    bad[[1, 1]] = f32::NAN;
    assert!(matches!(
        ClusteredConv2d::new(idx.clone(), Some(bad), None, g),
        Err(Error::NonFinite { index: 4, .. })
    ));
    assert!(matches!(
        ClusteredConv2d::<f32>::new(idx.clone(), None, Some(Array1::zeros(3)), g),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        ClusteredConv2d::<f32>::new(idx.clone(), None, None, g.dilation(0, 1)),
        Err(Error::InvalidGeometry { .. })
    ));
    let mut idx2 = idx.clone();
    idx2[[1, 2]] = 5;
    let layer = ClusteredConv2d::<f32>::new(idx2, None, None, g).unwrap();
    let cb = KernelCodebook::from_centroids(Array3::<f32>::zeros((4, 3, 3)), Symmetry::Identity)
        .unwrap();
    let x = Array4::<f32>::zeros((1, 3, 5, 5));
    for strategy in [
        ForwardStrategy::Dense,
        ForwardStrategy::InputSide,
        ForwardStrategy::OutputSide,
        ForwardStrategy::Auto,
    ] {
        assert!(matches!(
            layer.forward_with(&cb, x.view(), strategy).unwrap_err(),
            Error::IndexOutOfRange {
                out_channel: 1,
                in_channel: 2,
                index: 5,
                limit: 4
            }
        ));
    }
    let layer = ClusteredConv2d::<f32>::new(idx, None, None, g).unwrap();
    assert!(matches!(
        layer.forward(&cb, Array4::<f32>::zeros((1, 2, 5, 5)).view()),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        layer.backward(&cb, x.view(), Array4::<f32>::zeros((1, 2, 5, 5)).view()),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn layer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ClusteredConv2d<f32>>();
}

#[test]
fn training_setters_equal_a_rebuilt_layer() {
    let mut r = rng(53);
    let c = random_case(&mut r);
    let (cout, cin) = c.layer.indices().to_array().dim();
    let new_scales = Array2::from_shape_simple_fn((cout, cin), || r.random_range(-1.0..1.0));
    let new_bias = Array1::from_shape_simple_fn(cout, || r.random_range(-1.0..1.0));
    let mut layer = c
        .layer
        .clone()
        .with_mask(Array2::from_shape_fn((cout, cin), |(o, i)| {
            (o + i) % 3 != 0
        }))
        .unwrap();
    let mask = layer.mask().unwrap().clone();
    let bias = layer.bias().map(|_| new_bias.clone());
    layer
        .set_params(Some(new_scales.clone()), bias.clone())
        .unwrap();
    let rebuilt = ClusteredConv2d::new(
        c.layer.indices().to_array(),
        Some(new_scales),
        bias,
        c.layer.geometry(),
    )
    .unwrap()
    .with_mask(mask)
    .unwrap();
    assert_eq!(layer, rebuilt);
    assert!(layer.set_params(None, layer.bias().cloned()).is_err());
    // A wrong bias is reported with the bias's shapes, not the scales'.
    let scales = layer.scales().map(|s| s.to_array());
    let wrong_bias = Some(Array1::zeros(cout + 1));
    match layer.set_params(scales, wrong_bias) {
        Err(Error::ShapeMismatch {
            what,
            expected,
            got,
        }) => {
            assert!(what.contains("bias"), "{what}");
            let held = layer.bias().map_or(vec![], |b| vec![b.len()]);
            assert_eq!((expected, got), (held, vec![cout + 1]));
        }
        other => panic!("expected a bias shape mismatch, got {other:?}"),
    }
    let mut cb = c.codebook.clone();
    let doubled = cb.centroids() * 2.0;
    cb.set_centroids(doubled.clone()).unwrap();
    assert_eq!(cb.centroids(), &doubled);
    assert!(cb.set_centroids(Array3::zeros((1, 1, 1))).is_err());
    let mut conv =
        Conv2d::new(random4(&mut r, (2, 2, 3, 3)), None, ConvGeometry::default()).unwrap();
    conv.params_mut().0.fill(1.0);
    assert!(conv.weight().iter().all(|&v| v == 1.0));
}

/// A layer whose indices run over `0..limit` (the largest, `limit − 1`, included), with
/// `cout × cin` kernels, f64 scales and its `limit`-centroid codebook.
fn layer_with_index_limit(
    limit: usize,
    (cout, cin): (usize, usize),
    r: &mut ChaCha8Rng,
) -> (ClusteredConv2d<f64>, KernelCodebook<f64>) {
    let centroids = Array3::from_shape_simple_fn((limit, 3, 3), || r.random_range(-1.0..1.0));
    let codebook = KernelCodebook::from_centroids(centroids, Symmetry::Identity).unwrap();
    let mut indices = Array2::from_shape_simple_fn((cout, cin), || r.random_range(0..limit as u32));
    indices[[cout / 2, cin / 3]] = limit as u32 - 1;
    let scales = Array2::from_shape_simple_fn((cout, cin), || r.random_range(-2.0..2.0));
    let layer = ClusteredConv2d::new(
        indices,
        Some(scales),
        None,
        ConvGeometry::default().padding(1, 1),
    )
    .unwrap();
    (layer, codebook)
}

#[test]
fn indices_are_stored_as_u8_u16_or_u32_and_round_trip() {
    let mut r = rng(60);
    // (K·S, bits per stored index): the largest index K·S − 1 decides.
    for (limit, bits) in [
        (1, 8),
        (200, 8),
        (256, 8),
        (257, 16),
        (4096, 16),
        (65_536, 16),
        (65_537, 32),
    ] {
        let (layer, codebook) = layer_with_index_limit(limit, (6, 7), &mut r);
        let wide = Array2::from_shape_vec((6, 7), layer.indices().iter().collect()).unwrap();
        assert_eq!(layer.indices().bits_in_memory(), bits, "K·S = {limit}");
        assert_eq!(layer.indices().to_array(), wide);
        assert_eq!(layer.indices().to_array()[[3, 2]], limit as u32 - 1);
        // Values survive exactly: a rebuilt layer is equal, and so is its dense weight.
        let again = ClusteredConv2d::new(
            layer.indices().to_array(),
            layer.scales().map(|s| s.to_array()),
            None,
            layer.geometry(),
        )
        .unwrap();
        assert_eq!(again, layer);
        let m = layer.memory(&codebook);
        assert_eq!(m.index_bytes, 42 * bits as usize / 8, "K·S = {limit}");
        // Every strategy reads the narrow indices like the dense oracle.
        let x = random4(&mut r, (2, 7, 5, 6));
        let w = layer.to_conv(&codebook).unwrap();
        let naive = naive_conv(x.view(), w.weight().view(), w.bias(), &layer.geometry());
        for strategy in [
            ForwardStrategy::Dense,
            ForwardStrategy::InputSide,
            ForwardStrategy::OutputSide,
        ] {
            let got = layer.forward_with(&codebook, x.view(), strategy).unwrap();
            assert!(
                worst_violation(&got, &naive, 1e-12, 1e-12) <= 1.0,
                "K·S = {limit} {strategy:?}"
            );
        }
    }
    // A transform-invariant codebook: K·S = 32·8 = 256 fits a u8, 33·8 = 264 does not.
    for (k, bits) in [(32, 8), (33, 16)] {
        let codebook =
            KernelCodebook::from_centroids(Array3::<f32>::ones((k, 3, 3)), Symmetry::Dihedral)
                .unwrap();
        let limit = codebook.index_limit() as u32;
        let indices = Array2::from_shape_fn((4, 4), |(o, i)| (o as u32 * 97 + i as u32) % limit);
        let mut indices = indices;
        indices[[0, 0]] = limit - 1;
        let layer = ClusteredConv2d::new(indices, None, None, ConvGeometry::default()).unwrap();
        assert_eq!(layer.indices().bits_in_memory(), bits, "K = {k}");
        assert_eq!(layer.memory(&codebook).index_bytes, 16 * bits as usize / 8);
    }
}

/// A 64-centroid 3×3 codebook and indices of a 64 × 64 layer that use every centroid: the
/// layer the memory tests count bytes of.
fn memory_fixture() -> (KernelCodebook<f32>, Array2<u32>) {
    let codebook =
        KernelCodebook::from_centroids(Array3::<f32>::ones((64, 3, 3)), Symmetry::Identity)
            .unwrap();
    let indices = Array2::from_shape_fn((64, 64), |(o, i)| ((o * 7 + i) % 64) as u32);
    (codebook, indices)
}

#[test]
fn memory_counts_every_parameter_by_hand() {
    // 64 × 64 kernels of 3 × 3, K = 64: a u8 per index, f32 scales, bias and mask.
    let (codebook, indices) = memory_fixture();
    let g = ConvGeometry::default().padding(1, 1);
    let plain = ClusteredConv2d::<f32>::new(indices.clone(), None, None, g).unwrap();
    let m = plain.memory(&codebook);
    assert_eq!(
        (
            m.index_bytes,
            m.scale_bytes,
            m.bias_bytes,
            m.mask_bytes,
            m.plan_bytes
        ),
        (4096, 0, 0, 0, 0)
    );
    assert_eq!(m.dense_weight_bytes, 147_456);
    assert_eq!(m.parameter_bytes(), 4096);
    assert_eq!(m.ratio(), 36.0);

    let full = ClusteredConv2d::<f32>::new(
        indices.clone(),
        Some(Array2::ones((64, 64))),
        Some(Array1::zeros(64)),
        g,
    )
    .unwrap()
    .with_mask(Array2::from_elem((64, 64), true))
    .unwrap();
    let m = full.memory(&codebook);
    assert_eq!(
        (
            m.index_bytes,
            m.scale_bytes,
            m.bias_bytes,
            m.mask_bytes,
            m.plan_bytes
        ),
        (4096, 16_384, 256, 4096, 0)
    );
    assert_eq!(m.parameter_bytes(), 20_480);
    assert_eq!(m.total_bytes(), 24_832);
    assert!((m.ratio() - 7.2).abs() < 1e-12);

    // f64 scales double the scale and dense bytes; index 299 needs a u16.
    let codebook64 =
        KernelCodebook::from_centroids(Array3::<f64>::ones((300, 3, 3)), Symmetry::Identity)
            .unwrap();
    let wide = ClusteredConv2d::<f64>::new(
        indices.mapv(|v| v + 236),
        Some(Array2::ones((64, 64))),
        None,
        g,
    )
    .unwrap();
    let m = wide.memory(&codebook64);
    assert_eq!((m.index_bytes, m.scale_bytes), (8192, 32_768));
    assert_eq!(m.dense_weight_bytes, 294_912);
}

#[test]
fn the_plan_is_built_on_first_use_and_ignored_by_eq() {
    let mut r = rng(61);
    // 128 × 128 kernels over 16 centroids: much sharing.
    let (layer, codebook) = layer_with_index_limit(16, (128, 128), &mut r);
    let x = random4(&mut r, (1, 128, 6, 6));
    let fresh = layer.clone();
    assert_eq!(layer.memory(&codebook).plan_bytes, 0);
    // Building, storing, cost queries and dense passes build no plan.
    let _ = layer.cost(&codebook, (6, 6)).unwrap();
    let _ = layer.auto_strategy(&codebook, [1, 128, 6, 6]).unwrap();
    let dense = layer
        .forward_with(&codebook, x.view(), ForwardStrategy::Dense)
        .unwrap();
    let go = random4(&mut r, dense.dim());
    let _ = layer
        .backward_with(&codebook, x.view(), go.view(), BackwardRoute::Dense)
        .unwrap();
    assert_eq!(layer.memory(&codebook).plan_bytes, 0);
    let (sum_u, sum_v) = (
        layer.sum_distinct_per_output(),
        layer.sum_distinct_per_input(),
    );

    let first = layer
        .forward_with(&codebook, x.view(), ForwardStrategy::InputSide)
        .unwrap();
    let plan = layer.memory(&codebook).plan_bytes;
    assert!(plan > 0);
    // A few bytes per kernel (it was ~27 with u32 lists and three copies of the scales).
    assert!(plan <= 6 * 128 * 128, "plan {plan} bytes");
    assert_eq!(
        (
            layer.sum_distinct_per_output(),
            layer.sum_distinct_per_input()
        ),
        (sum_u, sum_v)
    );
    // The cached plan gives the same output, bit for bit, and the dense oracle's.
    let second = layer
        .forward_with(&codebook, x.view(), ForwardStrategy::InputSide)
        .unwrap();
    assert_eq!(first, second);
    assert!(worst_violation(&first, &dense, 1e-12, 1e-12) <= 1.0);
    let out = layer
        .forward_with(&codebook, x.view(), ForwardStrategy::OutputSide)
        .unwrap();
    assert!(worst_violation(&out, &dense, 1e-12, 1e-12) <= 1.0);
    assert_eq!(layer.memory(&codebook).plan_bytes, plan);

    // `==` ignores the plan; a clone carries it and computes the same.
    assert_eq!(layer, fresh);
    assert_eq!(fresh.memory(&codebook).plan_bytes, 0);
    let copy = layer.clone();
    assert_eq!(copy, layer);
    assert_eq!(copy.memory(&codebook).plan_bytes, plan);
    assert_eq!(
        copy.forward_with(&codebook, x.view(), ForwardStrategy::InputSide)
            .unwrap(),
        first
    );
    assert_eq!(
        fresh
            .forward_with(&codebook, x.view(), ForwardStrategy::InputSide)
            .unwrap(),
        first
    );

    // New scales keep the plan (it holds none) and are used at once.
    let mut trained = layer.clone();
    let scales = layer
        .scales()
        .map(|s| s.to_array())
        .unwrap()
        .mapv(|s| s * 0.5 - 0.25);
    trained.set_params(Some(scales.clone()), None).unwrap();
    assert_eq!(trained.memory(&codebook).plan_bytes, plan);
    let rebuilt = ClusteredConv2d::new(
        layer.indices().to_array(),
        Some(scales),
        None,
        layer.geometry(),
    )
    .unwrap();
    assert_eq!(trained, rebuilt);
    for strategy in [ForwardStrategy::InputSide, ForwardStrategy::OutputSide] {
        assert_eq!(
            trained.forward_with(&codebook, x.view(), strategy).unwrap(),
            rebuilt.forward_with(&codebook, x.view(), strategy).unwrap(),
        );
    }
    let grads = trained
        .backward_with(&codebook, x.view(), go.view(), BackwardRoute::Sharing)
        .unwrap();
    let want = rebuilt
        .backward_with(&codebook, x.view(), go.view(), BackwardRoute::Sharing)
        .unwrap();
    assert_eq!(grads, want);
}

#[test]
fn column_major_scales_are_read_as_given() {
    let mut r = rng(62);
    let (layer, codebook) = layer_with_index_limit(9, (5, 4), &mut r);
    // The same scales, stored transposed (column-major).
    let scales = layer
        .scales()
        .map(|s| s.to_array())
        .unwrap()
        .t()
        .as_standard_layout()
        .into_owned()
        .reversed_axes();
    assert!(!scales.is_standard_layout());
    let other = ClusteredConv2d::new(
        layer.indices().to_array(),
        Some(scales),
        None,
        layer.geometry(),
    )
    .unwrap();
    assert_eq!(other, layer);
    let x = random4(&mut r, (1, 4, 5, 5));
    for strategy in [ForwardStrategy::InputSide, ForwardStrategy::OutputSide] {
        assert_eq!(
            other.forward_with(&codebook, x.view(), strategy).unwrap(),
            layer.forward_with(&codebook, x.view(), strategy).unwrap(),
        );
    }
}

/// A layer's scales as `f16` values, rounded independently of the crate.
fn f16_rounded(scales: &Array2<f32>) -> Array2<f32> {
    scales.mapv(|v| half::f16::from_f32(v).to_f32())
}

fn bits<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>) -> Vec<u32> {
    a.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn half_scales_hold_exactly_the_f16_rounded_values() {
    let mut r = rng(71);
    let g = ConvGeometry::default().padding(1, 1);
    let indices = Array2::from_shape_simple_fn((24, 17), || r.random_range(0..50u32));
    // Magnitudes over the whole f16 range, subnormals included, and hand-picked edges.
    let mut scales = Array2::from_shape_simple_fn((24, 17), || {
        r.random_range(-1.0f32..1.0) * 2f32.powi(r.random_range(-26..16))
    });
    scales[[0, 0]] = 65504.0; // the largest f16
    scales[[0, 1]] = -65519.0; // below the halfway point to 2^16: rounds to −65504
    scales[[0, 2]] = 1.0 + 2f32.powi(-11); // a tie: to even, 1
    scales[[0, 3]] = 2f32.powi(-25); // half the smallest subnormal: to even, 0
    scales[[0, 4]] = 0.1;
    let full = ClusteredConv2d::new(indices.clone(), Some(scales.clone()), None, g).unwrap();
    assert!(!full.scales().is_some_and(|s| s.are_half()));
    let half = full.clone().with_half_scales().unwrap();
    assert!(half.scales().is_some_and(|s| s.are_half()));

    let expected = f16_rounded(&scales);
    assert_eq!(expected[[0, 1]], -65504.0);
    assert_eq!(expected[[0, 2]], 1.0);
    assert_eq!(expected[[0, 3]], 0.0);
    assert_eq!(expected[[0, 4]], 0.099_975_586);
    assert_eq!(
        bits(&half.scales().map(|s| s.to_array()).unwrap()),
        bits(&expected)
    );
    for ((o, i), &e) in expected.indexed_iter() {
        let held = half.scales().unwrap();
        assert_eq!(
            held.get(o, i).map(f32::to_bits),
            Some(e.to_bits()),
            "({o}, {i})"
        );
    }
    assert_ne!(expected, scales, "some values must actually round");

    // Equality compares scales as held: the same values as f32 are a different layer, and
    // halving them gives the same one; halving twice changes nothing.
    let as_f32 = ClusteredConv2d::new(indices.clone(), Some(expected.clone()), None, g).unwrap();
    assert_ne!(as_f32, half);
    assert_eq!(
        as_f32.scales().map(|s| s.to_array()),
        half.scales().map(|s| s.to_array())
    );
    assert_eq!(as_f32.with_half_scales().unwrap(), half);
    assert_eq!(half.clone().with_half_scales().unwrap(), half);

    // f64 layers round to the same values (once, from f64: 1 + 2^-11 + 2^-40 lies above
    // the tie, so it rounds up, where a detour through f32 would round to 1).
    let mut wide_scales = scales.mapv(f64::from);
    wide_scales[[1, 0]] = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
    let wide = ClusteredConv2d::<f64>::new(indices.clone(), Some(wide_scales), None, g)
        .unwrap()
        .with_half_scales()
        .unwrap();
    let mut wide_expected = expected.mapv(f64::from);
    wide_expected[[1, 0]] = 1.0 + 2f64.powi(-10);
    assert_eq!(wide.scales().map(|s| s.to_array()).unwrap(), wide_expected);

    // Without scales there is nothing to hold.
    let plain = ClusteredConv2d::<f32>::new(indices.clone(), None, None, g).unwrap();
    let plain_half = plain.clone().with_half_scales().unwrap();
    assert!(!plain_half.scales().is_some_and(|s| s.are_half()));
    assert_eq!(plain_half, plain);
    assert!(plain.scales().is_none());
    // Reads outside the layer are refused, not a panic.
    assert_eq!(half.scales().unwrap().get(99, 0), None);
    assert_eq!(half.indices().get(0, 99), None);

    // Beyond the f16 range: refused, naming the kernel.
    scales[[2, 5]] = 65520.0;
    let err = ClusteredConv2d::new(indices, Some(scales), None, g)
        .unwrap()
        .with_half_scales()
        .unwrap_err();
    assert!(
        matches!(err, Error::NonFinite { index, .. } if index == 2 * 17 + 5),
        "{err:?}"
    );
}

#[test]
fn half_scales_compute_bit_for_bit_what_the_same_values_as_f32_compute() {
    let mut r = rng(73);
    let mut sharing = 0;
    for case in 0..80 {
        let c = random_case(&mut r);
        let codebook = KernelCodebook::from_centroids(
            c.codebook.centroids().mapv(|v| v as f32),
            c.codebook.symmetry(),
        )
        .unwrap();
        let (cout, cin) = c.layer.indices().to_array().dim();
        let scales = f16_rounded(
            &c.layer
                .scales()
                .map(|s| s.to_array())
                .unwrap_or_else(|| Array2::from_elem((cout, cin), 0.75))
                .mapv(|v| v as f32),
        );
        let mut full = ClusteredConv2d::new(
            c.layer.indices().to_array(),
            Some(scales),
            c.layer.bias().map(|b| b.mapv(|v| v as f32)),
            c.layer.geometry(),
        )
        .unwrap();
        if case % 3 == 0 {
            full = full
                .with_mask(Array2::from_shape_fn((cout, cin), |(o, i)| {
                    (o + 2 * i) % 3 != 0
                }))
                .unwrap();
        }
        let half = full.clone().with_half_scales().unwrap();
        assert!(
            half.scales().is_some_and(|s| s.are_half())
                && !full.scales().is_some_and(|s| s.are_half())
        );
        assert_eq!(
            half.scales().map(|s| s.to_array()),
            full.scales().map(|s| s.to_array()),
            "case {case}"
        );
        assert_eq!(half.mask(), full.mask());
        let x = c.x.mapv(|v| v as f32);
        for strategy in STRATEGIES {
            let a = full.forward_with(&codebook, x.view(), strategy).unwrap();
            let b = half.forward_with(&codebook, x.view(), strategy).unwrap();
            assert_eq!(bits(&a), bits(&b), "case {case} forward {strategy:?}");
        }
        let y = full.forward(&codebook, x.view()).unwrap();
        let go = y.mapv(|v| v * 0.5 - 0.25);
        for route in ROUTES {
            let a = full
                .backward_with(&codebook, x.view(), go.view(), route)
                .unwrap();
            let b = half
                .backward_with(&codebook, x.view(), go.view(), route)
                .unwrap();
            assert_eq!(bits(&a.input), bits(&b.input), "case {case} {route:?}");
            assert_eq!(bits(&a.centroids), bits(&b.centroids), "case {case}");
            assert_eq!(
                bits(a.scales.as_ref().unwrap()),
                bits(b.scales.as_ref().unwrap()),
                "case {case} {route:?}"
            );
            assert_eq!(a.bias, b.bias);
        }
        assert_eq!(
            bits(full.to_conv(&codebook).unwrap().weight()),
            bits(half.to_conv(&codebook).unwrap().weight())
        );
        sharing += usize::from(half.memory(&codebook).plan_bytes > 0);
    }
    assert!(sharing > 40, "the sharing passes ran in {sharing} cases");
}

#[test]
fn half_scales_take_two_bytes_per_kernel() {
    // 64 × 64 kernels of 3 × 3, K = 64: a u8 index and an f16 scale per kernel.
    let (codebook, indices) = memory_fixture();
    let scales = Array2::from_shape_fn((64, 64), |(o, i)| 0.01 * (1 + o + i) as f32);
    let full = ClusteredConv2d::new(
        indices,
        Some(scales),
        Some(Array1::zeros(64)),
        ConvGeometry::default(),
    )
    .unwrap()
    .with_mask(Array2::from_elem((64, 64), true))
    .unwrap();
    let half = full.clone().with_half_scales().unwrap();
    let m = half.memory(&codebook);
    assert_eq!(
        (m.index_bytes, m.scale_bytes, m.bias_bytes, m.mask_bytes),
        (4096, 8192, 256, 4096)
    );
    assert_eq!(m.dense_weight_bytes, 147_456);
    assert_eq!(m.parameter_bytes(), 12_288);
    assert_eq!(m.ratio(), 12.0);
    assert!(
        m.ratio() >= 8.0,
        "the issue's target: at most 1/8 of the dense weight"
    );
    assert_eq!(full.memory(&codebook).scale_bytes, 16_384);

    // 512 × 512, K = 64: 7.2× with f32 scales, 12× with f16.
    let indices = Array2::from_shape_fn((512, 512), |(o, i)| ((o * 7 + i) % 64) as u32);
    let big = ClusteredConv2d::new(
        indices,
        Some(Array2::ones((512, 512))),
        None,
        ConvGeometry::default(),
    )
    .unwrap();
    let m = big.memory(&codebook);
    assert_eq!(
        (m.index_bytes, m.scale_bytes, m.dense_weight_bytes),
        (262_144, 1_048_576, 9_437_184)
    );
    assert!((m.ratio() - 7.2).abs() < 1e-12);
    let m = big.with_half_scales().unwrap().memory(&codebook);
    assert_eq!(
        (m.index_bytes, m.scale_bytes, m.dense_weight_bytes),
        (262_144, 524_288, 9_437_184)
    );
    assert_eq!(m.ratio(), 12.0);

    // f64 layers hold f16 scales in 2 bytes too (against 8-byte dense values: 24×).
    let codebook64 =
        KernelCodebook::from_centroids(Array3::<f64>::ones((64, 3, 3)), Symmetry::Identity)
            .unwrap();
    let wide = ClusteredConv2d::<f64>::new(
        Array2::zeros((64, 64)),
        Some(Array2::ones((64, 64))),
        None,
        ConvGeometry::default(),
    )
    .unwrap()
    .with_half_scales()
    .unwrap();
    let m = wide.memory(&codebook64);
    assert_eq!((m.scale_bytes, m.dense_weight_bytes), (8192, 294_912));
    assert_eq!(m.ratio(), 24.0);
}

#[test]
fn new_scales_from_training_are_held_as_f32_and_masks_keep_f16() {
    let mut r = rng(79);
    let (cout, cin) = (6, 5);
    let indices = Array2::from_shape_simple_fn((cout, cin), || r.random_range(0..4u32));
    let scales = Array2::from_shape_simple_fn((cout, cin), || r.random_range(-2.0f32..2.0));
    let mask = Array2::from_shape_fn((cout, cin), |(o, i)| (o + i) % 4 != 0);
    let mut layer =
        ClusteredConv2d::new(indices, Some(scales.clone()), None, ConvGeometry::default())
            .unwrap()
            .with_half_scales()
            .unwrap()
            .with_mask(mask.clone())
            .unwrap();
    // Pruning keeps the f16 store and zeroes the pruned kernels.
    assert!(layer.scales().is_some_and(|s| s.are_half()));
    let mut expected = f16_rounded(&scales);
    expected.zip_mut_with(&mask, |s, &keep| {
        if !keep {
            *s = 0.0;
        }
    });
    assert_eq!(layer.scales().map(|s| s.to_array()).unwrap(), expected);

    // A training step writes f32 scales: held as given (pruned ones still 0).
    let stepped = scales.mapv(|s| s * 1.000_01);
    layer.set_params(Some(stepped.clone()), None).unwrap();
    assert!(!layer.scales().is_some_and(|s| s.are_half()));
    let codebook =
        KernelCodebook::from_centroids(Array3::<f32>::ones((4, 3, 3)), Symmetry::Identity).unwrap();
    assert_eq!(layer.memory(&codebook).scale_bytes, cout * cin * 4);
    let held = layer.scales().map(|s| s.to_array()).unwrap();
    for ((o, i), &s) in held.indexed_iter() {
        let want = if mask[[o, i]] { stepped[[o, i]] } else { 0.0 };
        assert_eq!(s.to_bits(), want.to_bits());
    }
    // Halving again rounds the new values.
    let layer = layer.with_half_scales().unwrap();
    assert_eq!(layer.memory(&codebook).scale_bytes, cout * cin * 2);
    assert_eq!(
        bits(&layer.scales().map(|s| s.to_array()).unwrap()),
        bits(&f16_rounded(&held))
    );
}
