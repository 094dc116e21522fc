//! Dense Winograd F(4×4, 3×3) forward (`ConvAlgorithm::Winograd`) against the direct
//! definition of the correlation, in f64 and f32, on any thread count.

use crate::common::{
    assert_gradient_by_finite_differences, assert_weight_gradient_by_finite_differences, in_pool,
    naive_conv, random4, random_3x3_case, rng, worst_violation,
};
use clustered_conv::{Conv2d, ConvAlgorithm, ConvGeometry, Error, Padding};
use ndarray::{Array1, Array4};
use ndarray_rand::rand_distr::Normal;
use ndarray_rand::RandomExt;

fn winograd(weight: Array4<f64>, bias: Option<Array1<f64>>, g: ConvGeometry) -> Conv2d<f64> {
    Conv2d::new(weight, bias, g)
        .unwrap()
        .with_algorithm(ConvAlgorithm::Winograd)
        .unwrap()
}

#[test]
fn f64_winograd_matches_naive_on_random_geometry() {
    let mut shapes_with_partial_tiles = 0;
    for seed in 0..300 {
        let (x, weight, bias, g) = random_3x3_case(seed);
        let want = naive_conv(x.view(), weight.view(), bias.as_ref(), &g);
        let conv = winograd(weight, bias, g);
        let got = conv.forward(x.view()).unwrap();
        assert_eq!(got.shape(), want.shape(), "seed {seed}");
        if !got.shape()[2].is_multiple_of(4) || !got.shape()[3].is_multiple_of(4) {
            shapes_with_partial_tiles += 1;
        }
        let worst = worst_violation(&got, &want, 1e-12, 1e-12);
        assert!(worst <= 1.0, "seed {seed}: {worst} × tolerance, {g:?}");
    }
    assert!(shapes_with_partial_tiles > 100);
}

/// f32 Winograd on N(0, 1) data of a real layer (64 → 64 at 28×28, He weights, pad 1),
/// against the f64 direct result: relative L2 error and the worst element.
#[test]
fn f32_error_against_f64_naive_on_a_real_layer() {
    let (c, hw) = (64, 28);
    let mut r = rng(7);
    let x = Array4::<f64>::random_using((2, c, hw, hw), Normal::new(0.0, 1.0).unwrap(), &mut r);
    let std = (2.0 / (9.0 * c as f64)).sqrt();
    let w = Array4::<f64>::random_using((c, c, 3, 3), Normal::new(0.0, std).unwrap(), &mut r);
    let b = Array1::<f64>::random_using(c, Normal::new(0.0, 0.1).unwrap(), &mut r);
    let g = ConvGeometry::default().padding(1, 1);
    let want = naive_conv(x.view(), w.view(), Some(&b), &g);
    let measure = |alg: ConvAlgorithm| {
        let conv = Conv2d::new(w.mapv(|v| v as f32), Some(b.mapv(|v| v as f32)), g)
            .unwrap()
            .with_algorithm(alg)
            .unwrap();
        let got = conv.forward(x.mapv(|v| v as f32).view()).unwrap();
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
    let (wino_l2, wino_worst) = measure(ConvAlgorithm::Winograd);
    let (im2col_l2, im2col_worst) = measure(ConvAlgorithm::Im2col);
    println!("f32 64→64@28: Winograd rel. L2 {wino_l2:.3e}, worst/max {wino_worst:.3e}");
    println!("f32 64→64@28: im2col   rel. L2 {im2col_l2:.3e}, worst/max {im2col_worst:.3e}");
    assert!(
        wino_l2 <= 1e-5,
        "Winograd f32 relative L2 error {wino_l2:e}"
    );
    assert!(
        im2col_l2 <= 1e-6,
        "im2col f32 relative L2 error {im2col_l2:e}"
    );
}

#[test]
fn bit_identical_on_one_and_two_threads() {
    // Enough tiles for several blocks (224 tile rows of 4 tiles at 8 channels).
    let mut r = rng(11);
    let x = random4(&mut r, (4, 8, 221, 15)).mapv(|v| v as f32);
    let w = random4(&mut r, (5, 8, 3, 3)).mapv(|v| v as f32);
    let b = Array1::from_elem(5, 0.25f32);
    let conv = Conv2d::new(w, Some(b), ConvGeometry::default().padding(1, 2))
        .unwrap()
        .with_algorithm(ConvAlgorithm::Winograd)
        .unwrap();
    let one = in_pool(1, || conv.forward(x.view()).unwrap());
    let two = in_pool(2, || conv.forward(x.view()).unwrap());
    let three = in_pool(3, || conv.forward(x.view()).unwrap());
    assert!(one
        .iter()
        .zip(two.iter())
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(one
        .iter()
        .zip(three.iter())
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    // A single block (7×7 maps): its 36 GEMMs run as parallel tasks.
    let x = random4(&mut r, (2, 48, 7, 7)).mapv(|v| v as f32);
    let w = random4(&mut r, (40, 48, 3, 3)).mapv(|v| v as f32);
    let conv = Conv2d::new(w, None, ConvGeometry::default().padding(1, 1))
        .unwrap()
        .with_algorithm(ConvAlgorithm::Winograd)
        .unwrap();
    let one = in_pool(1, || conv.forward(x.view()).unwrap());
    let two = in_pool(2, || conv.forward(x.view()).unwrap());
    assert!(one
        .iter()
        .zip(two.iter())
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn params_mut_invalidates_the_transformed_weight() {
    let (x, weight, bias, g) = random_3x3_case(5);
    let mut conv = winograd(weight, bias, g);
    let _ = conv.forward(x.view()).unwrap();
    let shape = conv.output_shape(dims(&x)).unwrap();
    let go = random4(&mut rng(6), (shape[0], shape[1], shape[2], shape[3]));
    let _ = conv.backward(x.view(), go.view()).unwrap();
    {
        let (mut w, _) = conv.params_mut();
        w.mapv_inplace(|v| 2.0 * v - 0.5);
        w[[0, 0, 1, 1]] += 3.0;
    }
    let want = naive_conv(x.view(), conv.weight().view(), conv.bias(), &g);
    let got = conv.forward(x.view()).unwrap();
    assert!(worst_violation(&got, &want, 1e-12, 1e-12) <= 1.0);
    // The input gradient's transformed weight is rebuilt too.
    let dense = conv.clone().with_algorithm(ConvAlgorithm::Im2col).unwrap();
    let want_gx = dense.backward(x.view(), go.view()).unwrap().input;
    let got_gx = conv.backward(x.view(), go.view()).unwrap().input;
    assert!(worst_violation(&got_gx, &want_gx, 1e-12, 1e-12) <= 1.0);
    // A clone carries the cache of the same weight and stays correct.
    let copy = conv.clone();
    assert!(worst_violation(&copy.forward(x.view()).unwrap(), &want, 1e-12, 1e-12) <= 1.0);
}

/// Winograd and the direct kernels need a 3×3 kernel, stride 1 and dilation 1: anything else
/// is an error naming the algorithm and the requirement, and the layer keeps its algorithm.
#[test]
fn unsupported_geometry_is_an_error() {
    let same = ConvGeometry::default().padding(1, 1);
    let cases = [
        ((2, 3, 5, 5), same, "3×3 kernel"),
        ((2, 3, 3, 1), same, "3×3 kernel"),
        ((2, 3, 1, 3), same, "3×3 kernel"),
        ((2, 3, 3, 3), same.stride(1, 2), "stride 1"),
        ((2, 3, 3, 3), same.stride(2, 1), "stride 1"),
        ((2, 3, 3, 3), same.dilation(2, 1), "dilation 1"),
        ((2, 3, 3, 3), same.dilation(1, 2), "dilation 1"),
    ];
    for (shape, g, why) in cases {
        let conv = Conv2d::new(Array4::<f32>::zeros(shape), None, g).unwrap();
        for (algorithm, name) in [
            (ConvAlgorithm::Winograd, "Winograd"),
            (ConvAlgorithm::Direct, "Direct"),
        ] {
            match conv.clone().with_algorithm(algorithm) {
                Err(e @ Error::Unsupported { .. }) => {
                    let message = e.to_string();
                    assert!(message.contains(why) && message.contains(name), "{e}");
                }
                other => panic!("{shape:?} {g:?} {name}: expected Unsupported, got {other:?}"),
            }
        }
        assert_eq!(conv.algorithm(), ConvAlgorithm::Auto);
        // The other algorithms stay available.
        let conv = conv.with_algorithm(ConvAlgorithm::Im2col).unwrap();
        assert_eq!(conv.algorithm(), ConvAlgorithm::Im2col);
    }
}

#[test]
fn winograd_and_im2col_agree_in_f64_on_a_larger_layer() {
    let mut r = rng(3);
    let x = random4(&mut r, (2, 40, 17, 23));
    let w = random4(&mut r, (33, 40, 3, 3));
    let g = ConvGeometry::default().padding(1, 1);
    let im2col = Conv2d::new(w.clone(), None, g)
        .unwrap()
        .with_algorithm(ConvAlgorithm::Im2col)
        .unwrap();
    let wino = winograd(w, None, g);
    let (a, b) = (
        im2col.forward(x.view()).unwrap(),
        wino.forward(x.view()).unwrap(),
    );
    assert!(worst_violation(&b, &a, 1e-11, 1e-11) <= 1.0);
}

/// The input gradient through Winograd (the forward of the output gradient with the rotated,
/// transposed kernels) and the weight gradient in the Winograd domain against im2col's, in
/// f64, over the random geometries (any padding 0–2 per side, partial tiles).
#[test]
fn f64_winograd_gradients_match_im2col() {
    for seed in 0..200 {
        let (x, weight, bias, g) = random_3x3_case(seed);
        let dense = Conv2d::new(weight.clone(), bias.clone(), g)
            .unwrap()
            .with_algorithm(ConvAlgorithm::Im2col)
            .unwrap();
        let conv = winograd(weight, bias, g);
        let shape = conv.output_shape(dims(&x)).unwrap();
        let go = random4(
            &mut rng(1000 + seed),
            (shape[0], shape[1], shape[2], shape[3]),
        );
        let want = dense.backward(x.view(), go.view()).unwrap();
        let got = conv.backward(x.view(), go.view()).unwrap();
        let worst = worst_violation(&got.input, &want.input, 1e-12, 1e-12);
        assert!(worst <= 1.0, "seed {seed}: {worst} × tolerance, {g:?}");
        assert!(worst_violation(&got.weight, &want.weight, 1e-12, 1e-12) <= 1.0);
    }
}

/// The Winograd input gradient against central finite differences of `L = Σ y ⊙ go`.
#[test]
fn winograd_input_gradient_matches_finite_differences() {
    let mut r = rng(77);
    let g = ConvGeometry::default().padding_asymmetric(Padding {
        top: 2,
        bottom: 0,
        left: 1,
        right: 2,
    });
    let x = random4(&mut r, (2, 3, 9, 6));
    let conv = winograd(random4(&mut r, (4, 3, 3, 3)), None, g);
    let shape = conv.output_shape(dims(&x)).unwrap();
    let go = random4(&mut r, (shape[0], shape[1], shape[2], shape[3]));
    let loss = |x: &Array4<f64>| (&conv.forward(x.view()).unwrap() * &go).sum();
    let analytic = conv.backward(x.view(), go.view()).unwrap().input;
    assert_gradient_by_finite_differences(&analytic, &x, loss);
}

/// With padding above 2 the adjoint would need negative padding: the input gradient falls
/// back to im2col and stays right.
#[test]
fn input_gradient_with_padding_three_falls_back_to_im2col() {
    let mut r = rng(78);
    let g = ConvGeometry::default().padding(3, 1);
    let x = random4(&mut r, (1, 2, 5, 5));
    let weight = random4(&mut r, (3, 2, 3, 3));
    let dense = Conv2d::new(weight.clone(), None, g).unwrap();
    let conv = winograd(weight, None, g);
    let shape = conv.output_shape(dims(&x)).unwrap();
    let go = random4(&mut r, (shape[0], shape[1], shape[2], shape[3]));
    let want = dense.backward(x.view(), go.view()).unwrap().input;
    let got = conv.backward(x.view(), go.view()).unwrap().input;
    assert!(worst_violation(&got, &want, 1e-12, 1e-12) <= 1.0);
}

fn dims(x: &Array4<f64>) -> [usize; 4] {
    let (n, c, h, w) = x.dim();
    [n, c, h, w]
}

/// The Winograd-domain and the direct weight gradients against central finite differences of
/// `L = Σ y ⊙ go` (partial tiles on both axes, a map narrower than a vector, asymmetric
/// padding).
#[test]
fn winograd_and_direct_weight_gradients_match_finite_differences() {
    let mut r = rng(79);
    let g = ConvGeometry::default().padding_asymmetric(Padding {
        top: 0,
        bottom: 2,
        left: 2,
        right: 1,
    });
    let x = random4(&mut r, (2, 3, 7, 10));
    let weight = random4(&mut r, (2, 3, 3, 3));
    let shape = winograd(weight.clone(), None, g)
        .output_shape(dims(&x))
        .unwrap();
    let go = random4(&mut r, (shape[0], shape[1], shape[2], shape[3]));
    for algorithm in [ConvAlgorithm::Winograd, ConvAlgorithm::Direct] {
        let make = |w| {
            Conv2d::new(w, None, g)
                .unwrap()
                .with_algorithm(algorithm)
                .unwrap()
        };
        assert_weight_gradient_by_finite_differences(make, &x, &weight, &go);
    }
}

/// Both Winograd gradients are bit-identical on 1, 2 and 3 threads, with many blocks (the
/// weight gradient's fixed groups) and with a single block (parallel GEMMs).
#[test]
fn winograd_backward_is_bit_identical_on_any_thread_count() {
    let mut r = rng(80);
    // 303 tile rows of 4 tiles at 6 channels: 5 blocks; then one block of 7×7 maps.
    for (n, c, h, w) in [(3, 6, 401, 13), (2, 24, 7, 7)] {
        let x = random4(&mut r, (n, c, h, w)).mapv(|v| v as f32);
        let weight = random4(&mut r, (5, c, 3, 3)).mapv(|v| v as f32);
        let conv = Conv2d::new(weight, None, ConvGeometry::default().padding(1, 1))
            .unwrap()
            .with_algorithm(ConvAlgorithm::Winograd)
            .unwrap();
        let go = random4(&mut r, (n, 5, h, w)).mapv(|v| v as f32);
        let run = |t| in_pool(t, || conv.backward(x.view(), go.view()).unwrap());
        let (one, two, three) = (run(1), run(2), run(3));
        for other in [&two, &three] {
            assert!(one
                .input
                .iter()
                .zip(other.input.iter())
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            assert!(one
                .weight
                .iter()
                .zip(other.weight.iter())
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}

/// `Auto` runs Winograd where tiles × channels pass the measured threshold, the direct
/// kernels on the other 3×3 layers of at most 64 channels and 128 positions or more, and
/// im2col elsewhere (f32 outputs
/// of the three differ in the last bits, so the choice is visible).
#[test]
fn auto_follows_the_measured_rule() {
    let mut r = rng(81);
    // (Cin = Cout, map, batch, expected algorithm): 64@28 has 49 tiles × 64 = 3136; 64@14 has
    // 16 × 64 = 1024; 24@56 has 196 tiles but 24 channels (and 196 × 24 = 4704 tiles ×
    // channels: Winograd); 128@8 and 256@4 at batch 8 have 128 or more channels and 32 and 8
    // tiles in the call, 128@4 at batch 4 only 4; 512@7 at batch 1 passes the tiles × channels
    // line (4 × 512) but has only 4 tiles in the call; 96@16 has 16 × 96 = 1536 and more than
    // 64 channels; 64@7 has 4 × 64 = 256 and only 49 positions.
    for (c, hw, batch, want) in [
        (64, 28, 1, ConvAlgorithm::Winograd),
        (64, 14, 1, ConvAlgorithm::Direct),
        (24, 56, 1, ConvAlgorithm::Winograd),
        (128, 8, 8, ConvAlgorithm::Winograd),
        (256, 4, 8, ConvAlgorithm::Winograd),
        (128, 4, 4, ConvAlgorithm::Im2col),
        (96, 16, 1, ConvAlgorithm::Im2col),
        (64, 7, 2, ConvAlgorithm::Im2col),
        (512, 7, 1, ConvAlgorithm::Im2col),
    ] {
        let x = random4(&mut r, (batch, c, hw, hw)).mapv(|v| v as f32);
        let weight = random4(&mut r, (c, c, 3, 3)).mapv(|v| v as f32 * 0.1);
        let g = ConvGeometry::default().padding(1, 1);
        let run = |a| {
            let conv = Conv2d::new(weight.clone(), None, g)
                .unwrap()
                .with_algorithm(a)
                .unwrap();
            conv.forward(x.view()).unwrap()
        };
        let algorithms = [
            ConvAlgorithm::Winograd,
            ConvAlgorithm::Direct,
            ConvAlgorithm::Im2col,
        ];
        let outputs: Vec<_> = algorithms.iter().map(|&a| run(a)).collect();
        let same = |a: &Array4<f32>, b: &Array4<f32>| {
            a.iter()
                .zip(b.iter())
                .all(|(p, q)| p.to_bits() == q.to_bits())
        };
        let expected = algorithms.iter().position(|&a| a == want).unwrap();
        for (i, other) in outputs.iter().enumerate() {
            assert!(
                i == expected || !same(other, &outputs[expected]),
                "{c}@{hw}: {want:?} and {:?} must be distinguishable",
                algorithms[i]
            );
        }
        let auto = run(ConvAlgorithm::Auto);
        assert!(
            same(&auto, &outputs[expected]),
            "{c}@{hw}: Auto should run {want:?}"
        );
    }
}
