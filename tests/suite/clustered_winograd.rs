//! `ForwardStrategy::Winograd` on `ClusteredConv2d` (operand blocks built from indices, scales
//! and the transformed codebook) and the dense backward route's Winograd input gradient,
//! against the direct definition of the correlation of the reconstructed dense weight.

use crate::common::{
    in_pool, naive_conv, paper_transform, random4, random_padding_0_to_2, rng, worst_violation,
};
use clustered_conv::{
    BackwardRoute, ClusteredConv2d, ConvGeometry, Error, ForwardStrategy, KernelCodebook, Symmetry,
};
use ndarray::{Array1, Array2, Array3, Array4};
use ndarray_rand::rand_distr::Normal;
use ndarray_rand::RandomExt;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

const SYMMETRIES: [Symmetry; 4] = [
    Symmetry::Identity,
    Symmetry::Flip,
    Symmetry::Flips,
    Symmetry::Dihedral,
];

/// How the scales of a random case are held.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ScaleKind {
    None,
    Full,
    Half,
}

/// One random clustered layer and its input.
struct Case {
    x: Array4<f64>,
    codebook: KernelCodebook<f64>,
    layer: ClusteredConv2d<f64>,
    g: ConvGeometry,
    scales: ScaleKind,
    masked: bool,
}

/// A random 3×3, stride-1 clustered layer: 1–9 channels each way, K = 1–6 random centroids
/// under symmetry `seed mod 4`, random stored indices, scales absent / `F` / `f16` (by
/// `seed / 4 mod 3`), a mask on every fifth case, padding 0–2 per side (asymmetric), an input
/// of 1–13 per side, batch 1–3, with or without a bias.
fn random_case(seed: u64) -> Case {
    random_case_sized(seed, 1..=3, 1..=13)
}

/// [`random_case`] with the batch and input side drawn from the given ranges.
fn random_case_sized(
    seed: u64,
    batch: std::ops::RangeInclusive<usize>,
    side: std::ops::RangeInclusive<usize>,
) -> Case {
    random_case_wide(seed, batch, side, 1..=9)
}

/// [`random_case_sized`] with the input and output channels drawn from `channels`.
fn random_case_wide(
    seed: u64,
    batch: std::ops::RangeInclusive<usize>,
    side: std::ops::RangeInclusive<usize>,
    channels: std::ops::RangeInclusive<usize>,
) -> Case {
    let mut r = rng(seed);
    let symmetry = SYMMETRIES[(seed % 4) as usize];
    let scales = [ScaleKind::None, ScaleKind::Full, ScaleKind::Half][(seed / 4 % 3) as usize];
    let masked = seed % 5 == 2;
    loop {
        let (n, cin, cout) = (
            r.random_range(batch.clone()),
            r.random_range(channels.clone()),
            r.random_range(channels.clone()),
        );
        let (h, w) = (r.random_range(side.clone()), r.random_range(side.clone()));
        let g = random_padding_0_to_2(&mut r);
        if g.output_size((h, w), (3, 3)).is_err() {
            continue;
        }
        let layer_and_codebook = random_layer(&mut r, (cout, cin), symmetry, scales, masked, g);
        let (codebook, layer) = layer_and_codebook;
        let x = random4(&mut r, (n, cin, h, w));
        return Case {
            x,
            codebook,
            layer,
            g,
            scales,
            masked,
        };
    }
}

/// A random codebook (K = 1–6) and layer with the given options.
fn random_layer(
    r: &mut ChaCha8Rng,
    (cout, cin): (usize, usize),
    symmetry: Symmetry,
    scales: ScaleKind,
    masked: bool,
    g: ConvGeometry,
) -> (KernelCodebook<f64>, ClusteredConv2d<f64>) {
    let k = r.random_range(1..=6);
    let centroids = Array3::from_shape_simple_fn((k, 3, 3), || r.random_range(-1.0..1.0));
    let codebook = KernelCodebook::from_centroids(centroids, symmetry).unwrap();
    let limit = (k * symmetry.transforms()) as u32;
    let indices = Array2::from_shape_simple_fn((cout, cin), || r.random_range(0..limit));
    let scale_values = (scales != ScaleKind::None).then(|| {
        Array2::from_shape_simple_fn((cout, cin), || {
            let sign = if r.random_bool(0.5) { 1.0 } else { -1.0 };
            sign * r.random_range(0.5..1.5)
        })
    });
    let bias = r
        .random_bool(0.5)
        .then(|| Array1::from_shape_fn(cout, |_| r.random_range(-1.0..1.0)));
    let mut layer = ClusteredConv2d::new(indices, scale_values, bias, g).unwrap();
    if scales == ScaleKind::Half {
        layer = layer.with_half_scales().unwrap();
    }
    if masked {
        let mask = Array2::from_shape_simple_fn((cout, cin), || r.random_bool(0.7));
        layer = layer.with_mask(mask).unwrap();
    }
    (codebook, layer)
}

/// The dense weight of a layer, rebuilt independently of the library's decoding: kernel
/// `(o, i)` is `s_oi · Φ_t(μ_c)` with the transform written from PAPER.md's table.
fn dense_weight(layer: &ClusteredConv2d<f64>, codebook: &KernelCodebook<f64>) -> Array4<f64> {
    let (cout, cin) = (layer.out_channels(), layer.in_channels());
    let k = codebook.len();
    let mut w = Array4::<f64>::zeros((cout, cin, 3, 3));
    for o in 0..cout {
        for i in 0..cin {
            let index = layer.indices().get(o, i).unwrap() as usize;
            let centroid: Vec<f64> = codebook
                .centroids()
                .index_axis(ndarray::Axis(0), index % k)
                .iter()
                .copied()
                .collect();
            let scale = layer.scales().map_or(1.0, |s| s.get(o, i).unwrap());
            for (j, v) in paper_transform(index / k, 3, 3, &centroid)
                .into_iter()
                .enumerate()
            {
                w[[o, i, j / 3, j % 3]] = scale * v;
            }
        }
    }
    w
}

#[test]
fn f64_winograd_matches_naive_on_random_geometry() {
    let mut seen = std::collections::HashSet::new();
    let mut partial_tiles = 0;
    for seed in 0..240 {
        let case = random_case(seed);
        let w = dense_weight(&case.layer, &case.codebook);
        let want = naive_conv(case.x.view(), w.view(), case.layer.bias(), &case.g);
        let got = case
            .layer
            .forward_with(&case.codebook, case.x.view(), ForwardStrategy::Winograd)
            .unwrap();
        assert_eq!(got.shape(), want.shape(), "seed {seed}");
        if !got.shape()[2].is_multiple_of(4) || !got.shape()[3].is_multiple_of(4) {
            partial_tiles += 1;
        }
        let worst = worst_violation(&got, &want, 1e-12, 1e-12);
        assert!(
            worst <= 1.0,
            "seed {seed}: {worst} × tolerance, {:?}",
            case.g
        );
        seen.insert((
            case.codebook.symmetry().transforms(),
            case.scales as u8,
            case.masked,
        ));
    }
    // Every symmetry with every scale kind, with and without a mask.
    assert_eq!(seen.len(), 4 * 3 * 2, "{seen:?}");
    assert!(partial_tiles > 80);
}

/// f32 Winograd on N(0, 1) data of a real layer shape (64 → 64 at 28×28, K = 64 centroids of
/// He scale under TIC8, f16 scales, pad 1), against the f64 direct correlation of the same
/// (f32-representable) weight: relative L2 error and the worst element. A wrong transform
/// entry gives errors of order 1.
#[test]
fn f32_error_against_f64_naive_on_a_real_layer() {
    let (c, hw, k) = (64, 28, 64);
    let mut r = rng(7);
    let x = Array4::<f64>::random_using((2, c, hw, hw), Normal::new(0.0, 1.0).unwrap(), &mut r)
        .mapv(|v| f64::from(v as f32));
    let std = (2.0 / (9.0 * c as f64)).sqrt();
    let centroids = Array3::<f64>::random_using((k, 3, 3), Normal::new(0.0, std).unwrap(), &mut r)
        .mapv(|v| v as f32);
    let codebook = KernelCodebook::from_centroids(centroids, Symmetry::Dihedral).unwrap();
    let indices = Array2::from_shape_simple_fn((c, c), || r.random_range(0..(k * 8) as u32));
    let scales = Array2::from_shape_simple_fn((c, c), || r.random_range(0.5f32..2.0));
    let bias = Array1::from_shape_simple_fn(c, || r.random_range(-0.1f32..0.1));
    let g = ConvGeometry::default().padding(1, 1);
    let layer = ClusteredConv2d::new(indices, Some(scales), Some(bias), g)
        .unwrap()
        .with_half_scales()
        .unwrap();
    let w = layer.to_conv(&codebook).unwrap().weight().mapv(f64::from);
    let b = layer.bias().unwrap().mapv(f64::from);
    let want = naive_conv(x.view(), w.view(), Some(&b), &g);
    let x32 = x.mapv(|v| v as f32);
    let measure = |strategy: ForwardStrategy| {
        let got = layer.forward_with(&codebook, x32.view(), strategy).unwrap();
        let (mut err2, mut ref2, mut worst, mut max_abs) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for (&a, &e) in got.iter().zip(want.iter()) {
            let d = f64::from(a) - e;
            err2 += d * d;
            ref2 += e * e;
            worst = worst.max(d.abs());
            max_abs = max_abs.max(e.abs());
        }
        ((err2 / ref2).sqrt(), worst / max_abs)
    };
    let (wino_l2, wino_worst) = measure(ForwardStrategy::Winograd);
    let (dense_l2, dense_worst) = measure(ForwardStrategy::Dense);
    println!("f32 clustered 64→64@28: Winograd rel. L2 {wino_l2:.3e}, worst/max {wino_worst:.3e}");
    println!(
        "f32 clustered 64→64@28: Dense    rel. L2 {dense_l2:.3e}, worst/max {dense_worst:.3e}"
    );
    assert!(
        wino_l2 <= 1e-5,
        "Winograd f32 relative L2 error {wino_l2:e}"
    );
    assert!(
        wino_worst <= 1e-4,
        "Winograd f32 worst error {wino_worst:e}"
    );
    assert!(dense_l2 <= 1e-6, "Dense f32 relative L2 error {dense_l2:e}");
}

#[test]
fn bit_identical_on_one_and_two_threads() {
    // Enough tiles for several blocks (56 tile rows of 4 tiles at 24 channels, batch 4), and
    // more output channels than one operand block holds.
    let mut r = rng(11);
    let g = ConvGeometry::default().padding(1, 2);
    let (codebook, layer) =
        random_layer(&mut r, (80, 24), Symmetry::Flips, ScaleKind::Half, true, g);
    let codebook =
        KernelCodebook::from_centroids(codebook.centroids().mapv(|v| v as f32), Symmetry::Flips)
            .unwrap();
    let scales = layer.scales().unwrap().to_array().mapv(|v| v as f32);
    let layer32 = ClusteredConv2d::new(layer.indices().to_array(), Some(scales), None, g)
        .unwrap()
        .with_half_scales()
        .unwrap();
    let x = random4(&mut r, (4, 24, 221, 15)).mapv(|v| v as f32);
    let run = || {
        let y = layer32
            .forward_with(&codebook, x.view(), ForwardStrategy::Winograd)
            .unwrap();
        let grads = layer32
            .backward_with(&codebook, x.view(), y.view(), BackwardRoute::Dense)
            .unwrap();
        (y, grads)
    };
    let (one, two) = (in_pool(1, run), in_pool(2, run));
    assert_eq!(one.0, two.0);
    assert_eq!(one.1, two.1);
}

/// `Σ y ⊙ r` of the forward through `strategy`.
fn loss(
    layer: &ClusteredConv2d<f64>,
    codebook: &KernelCodebook<f64>,
    x: &Array4<f64>,
    r: &Array4<f64>,
) -> f64 {
    let y = layer
        .forward_with(codebook, x.view(), ForwardStrategy::Dense)
        .unwrap();
    y.iter().zip(r).map(|(a, b)| a * b).sum()
}

/// The dense route runs the input gradient through Winograd when the cost model predicts it
/// faster: inputs of 12–20 per side at batch 2–3 give enough tiles for that (every fourth
/// case takes the smaller shapes of `random_case`, which mostly run the dense adjoint).
#[test]
fn dense_route_input_gradient_matches_finite_differences_and_the_sharing_route() {
    for seed in 0..40 {
        let case = if seed % 4 == 0 {
            random_case(1000 + seed)
        } else {
            random_case_sized(1000 + seed, 2..=3, 12..=20)
        };
        let mut r = rng(seed);
        let y = case
            .layer
            .forward_with(&case.codebook, case.x.view(), ForwardStrategy::Dense)
            .unwrap();
        let go = random4(&mut r, y.dim());
        let dense = case
            .layer
            .backward_with(
                &case.codebook,
                case.x.view(),
                go.view(),
                BackwardRoute::Dense,
            )
            .unwrap();
        let sharing = case
            .layer
            .backward_with(
                &case.codebook,
                case.x.view(),
                go.view(),
                BackwardRoute::Sharing,
            )
            .unwrap();
        let worst = worst_violation(&dense.input, &sharing.input, 1e-12, 1e-12);
        assert!(
            worst <= 1.0,
            "seed {seed}: input gradient {worst} × tolerance"
        );
        let c = |a: &Array3<f64>| a.clone().into_shape_with_order((a.len(), 1, 1, 1)).unwrap();
        let worst = worst_violation(&c(&dense.centroids), &c(&sharing.centroids), 1e-10, 1e-10);
        assert!(
            worst <= 1.0,
            "seed {seed}: centroid gradient {worst} × tolerance"
        );
        // The loss is linear in x: central differences are exact up to rounding.
        let h = 1e-3;
        for _ in 0..6 {
            let j = [
                r.random_range(0..case.x.dim().0),
                r.random_range(0..case.x.dim().1),
                r.random_range(0..case.x.dim().2),
                r.random_range(0..case.x.dim().3),
            ];
            let (mut plus, mut minus) = (case.x.clone(), case.x.clone());
            plus[j] += h;
            minus[j] -= h;
            let fd = (loss(&case.layer, &case.codebook, &plus, &go)
                - loss(&case.layer, &case.codebook, &minus, &go))
                / (2.0 * h);
            let got = dense.input[j];
            assert!(
                (fd - got).abs() <= 1e-8 * (1.0 + fd.abs()),
                "seed {seed} at {j:?}: finite difference {fd} vs {got}"
            );
        }
    }
}

#[test]
fn unsupported_geometry_is_an_error_not_a_panic() {
    let mut r = rng(3);
    let x = random4(&mut r, (1, 2, 9, 9));
    let indices = Array2::from_elem((3, 2), 0u32);
    let c3 =
        KernelCodebook::from_centroids(Array3::<f64>::ones((2, 3, 3)), Symmetry::Identity).unwrap();
    let c5 =
        KernelCodebook::from_centroids(Array3::<f64>::ones((2, 5, 5)), Symmetry::Identity).unwrap();
    let c13 =
        KernelCodebook::from_centroids(Array3::<f64>::ones((2, 1, 3)), Symmetry::Flip).unwrap();
    let cases = [
        (&c5, ConvGeometry::default(), "3×3"),
        (&c13, ConvGeometry::default(), "3×3"),
        (&c3, ConvGeometry::default().stride(2, 1), "stride 1"),
        (&c3, ConvGeometry::default().dilation(1, 2), "dilation 1"),
    ];
    for (codebook, g, words) in cases {
        let layer = ClusteredConv2d::new(indices.clone(), None, None, g).unwrap();
        let err = layer
            .forward_with(codebook, x.view(), ForwardStrategy::Winograd)
            .unwrap_err();
        assert!(
            matches!(err, Error::Unsupported { reason, .. } if reason.contains(words)),
            "{g:?}: {err}"
        );
        // Auto and the other strategies still run.
        let auto = layer.forward(codebook, x.view()).unwrap();
        let dense = layer
            .forward_with(codebook, x.view(), ForwardStrategy::Dense)
            .unwrap();
        assert!(worst_violation(&auto, &dense, 1e-12, 1e-12) <= 1.0);
        let y = dense.clone();
        layer
            .backward_with(codebook, x.view(), y.view(), BackwardRoute::Dense)
            .unwrap();
    }
}

#[test]
fn memory_reports_the_winograd_working_set() {
    let codebook =
        KernelCodebook::from_centroids(Array3::<f32>::ones((64, 3, 3)), Symmetry::Flips).unwrap();
    let indices = Array2::from_shape_fn((512, 512), |(o, i)| ((o * 7 + i) % 256) as u32);
    let layer = ClusteredConv2d::new(indices, None, None, ConvGeometry::default()).unwrap();
    let m = layer.memory(&codebook);
    // 36 positions × K·S = 256 stored indices × 4 bytes.
    assert_eq!(m.winograd_codebook_bytes, 36 * 256 * 4);
    // One 32-row operand block of 512 columns per worker.
    assert_eq!(m.winograd_operand_bytes, 32 * 512 * 4);
    assert!(m.winograd_codebook_bytes + m.winograd_operand_bytes < m.dense_weight_bytes / 50);
    // A non-3×3 codebook cannot run Winograd.
    let c5 =
        KernelCodebook::from_centroids(Array3::<f32>::ones((4, 5, 5)), Symmetry::Identity).unwrap();
    let small =
        ClusteredConv2d::new(Array2::zeros((2, 2)), None, None, ConvGeometry::default()).unwrap();
    let m = small.memory(&c5);
    assert_eq!(
        (m.winograd_codebook_bytes, m.winograd_operand_bytes),
        (0, 0)
    );
}

/// The transformed codebook is cached with the codebook and emptied by `set_centroids`: after
/// new centroids, the Winograd forward and the input gradient follow them (against the
/// definition with the new reconstructed weight), never the stale table.
#[test]
fn the_cached_transformed_codebook_follows_new_centroids() {
    let mut both_tables = 0;
    for seed in 0..24 {
        // 32–36 channels and inputs of 32–36 per side (at least 64 output tiles): enough tiles
        // for the dense route to run the input gradient through Winograd too, which fills the
        // rotated table.
        let mut c = random_case_wide(2000 + seed, 2..=2, 32..=36, 32..=36);
        let k_s = c.codebook.index_limit();
        assert_eq!(c.codebook.winograd_cache_bytes(), 0, "seed {seed}");
        let run = |c: &Case| {
            let y = c
                .layer
                .forward_with(&c.codebook, c.x.view(), ForwardStrategy::Winograd)
                .unwrap();
            let w = dense_weight(&c.layer, &c.codebook);
            let naive = naive_conv(c.x.view(), w.view(), c.layer.bias(), &c.g);
            assert!(
                worst_violation(&y, &naive, 1e-12, 1e-12) <= 1.0,
                "seed {seed}"
            );
            let grads = c
                .layer
                .backward_with(&c.codebook, c.x.view(), y.view(), BackwardRoute::Dense)
                .unwrap();
            // ⟨conv(x), y⟩ = ⟨x, ∂/∂x⟩ for L = ⟨conv(x) − bias, y⟩.
            let no_bias = naive_conv(c.x.view(), w.view(), None, &c.g);
            let (lhs, rhs) = ((&no_bias * &y).sum(), (&c.x * &grads.input).sum());
            assert!(
                (lhs - rhs).abs() <= 1e-10 * (1.0 + lhs.abs()),
                "seed {seed}"
            );
        };
        run(&c);
        let held = c.codebook.winograd_cache_bytes();
        assert!(
            held == 36 * k_s * 8 || held == 2 * 36 * k_s * 8,
            "seed {seed}"
        );
        both_tables += usize::from(held == 2 * 36 * k_s * 8);
        let mut r = rng(1000 + seed);
        let moved = c
            .codebook
            .centroids()
            .mapv(|v| v + r.random_range(-0.5..0.5));
        c.codebook.set_centroids(moved).unwrap();
        assert_eq!(c.codebook.winograd_cache_bytes(), 0, "seed {seed}");
        run(&c);
    }
    assert!(
        both_tables >= 6,
        "the rotated table was used in {both_tables} of 24 cases"
    );
}

/// A layer whose whole Winograd operand (36·Cout·Cin values) passes the 4 MiB a call builds at
/// once runs block by block: forward and input gradient still equal the definition.
#[test]
fn wide_layers_build_the_operand_block_by_block() {
    let mut r = rng(77);
    let g = ConvGeometry::default().padding(1, 1);
    // 36 · 128 · 130 · 8 bytes = 4.8 MB in f64.
    let (codebook, layer) = random_layer(
        &mut r,
        (130, 128),
        Symmetry::Dihedral,
        ScaleKind::Full,
        false,
        g,
    );
    let m = layer.memory(&codebook);
    assert_eq!(m.winograd_operand_bytes, 64 * 128 * 8, "one 64-row block");
    // 16×16 maps at batch 2: enough tiles that the dense route's input gradient runs
    // Winograd with the adjoint operand too.
    let x = random4(&mut r, (2, 128, 16, 16));
    let w = dense_weight(&layer, &codebook);
    let y = layer
        .forward_with(&codebook, x.view(), ForwardStrategy::Winograd)
        .unwrap();
    let naive = naive_conv(x.view(), w.view(), layer.bias(), &g);
    assert!(worst_violation(&y, &naive, 1e-12, 1e-12) <= 1.0);
    let before = codebook.winograd_cache_bytes();
    let grads = layer
        .backward_with(&codebook, x.view(), y.view(), BackwardRoute::Dense)
        .unwrap();
    assert!(
        codebook.winograd_cache_bytes() > before,
        "the input gradient ran through Winograd (it filled the rotated table)"
    );
    // ⟨conv(x), y⟩ = ⟨x, ∂/∂x⟩ for L = ⟨conv(x) − bias, y⟩.
    let no_bias = naive_conv(x.view(), w.view(), None, &g);
    let (lhs, rhs) = ((&no_bias * &y).sum(), (&x * &grads.input).sum());
    assert!(
        (lhs - rhs).abs() <= 1e-10 * (1.0 + lhs.abs()),
        "{lhs} vs {rhs}"
    );
}
