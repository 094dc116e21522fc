//! The direct 3×3 convolution on padded planes (`ConvAlgorithm::Direct`): forward and both
//! gradients against the definition and im2col, in f64; bit-identical on
//! any thread count in f32. The geometry it needs and `Auto`'s choice of it are tested with
//! Winograd's (`winograd.rs`), and so is its weight gradient against finite differences.

use crate::common::{in_pool, naive_conv, random4, random_3x3_case, rng, worst_violation};
use clustered_conv::{Conv2d, ConvAlgorithm, ConvGeometry};
use ndarray::{Array1, Array4};

fn with(
    algorithm: ConvAlgorithm,
    weight: Array4<f64>,
    bias: Option<Array1<f64>>,
    g: ConvGeometry,
) -> Conv2d<f64> {
    Conv2d::new(weight, bias, g)
        .unwrap()
        .with_algorithm(algorithm)
        .unwrap()
}

fn output_gradient(conv: &Conv2d<f64>, x: &Array4<f64>, seed: u64) -> Array4<f64> {
    let (n, c, h, w) = x.dim();
    let [n, c, h, w] = conv.output_shape([n, c, h, w]).unwrap();
    random4(&mut rng(seed), (n, c, h, w))
}

#[test]
fn f64_direct_forward_matches_naive_on_random_geometry() {
    for seed in 0..300 {
        let (x, weight, bias, g) = random_3x3_case(seed);
        let want = naive_conv(x.view(), weight.view(), bias.as_ref(), &g);
        let got = with(ConvAlgorithm::Direct, weight, bias, g)
            .forward(x.view())
            .unwrap();
        let worst = worst_violation(&got, &want, 1e-12, 1e-12);
        assert!(worst <= 1.0, "seed {seed}: {worst} × tolerance, {g:?}");
    }
}

/// Both gradients against im2col's over the random geometries (asymmetric padding 0–2, maps
/// down to 1×1), and on a layer large enough for several weight-gradient sub-batches and
/// groups, with channel counts off every register block.
#[test]
fn f64_direct_gradients_match_im2col() {
    let mut cases: Vec<_> = (0..200).map(random_3x3_case).collect();
    let mut r = rng(5);
    let big = ConvGeometry::default().padding(1, 1);
    let (x, w) = (
        random4(&mut r, (20, 13, 30, 29)),
        random4(&mut r, (19, 13, 3, 3)),
    );
    cases.push((x, w, Some(Array1::from_elem(19, 0.5)), big));
    for (seed, (x, weight, bias, g)) in cases.into_iter().enumerate() {
        let im2col = with(ConvAlgorithm::Im2col, weight.clone(), bias.clone(), g);
        let direct = with(ConvAlgorithm::Direct, weight, bias, g);
        let go = output_gradient(&direct, &x, 1000 + seed as u64);
        let want = im2col.backward(x.view(), go.view()).unwrap();
        let got = direct.backward(x.view(), go.view()).unwrap();
        let worst = worst_violation(&got.input, &want.input, 1e-12, 1e-12);
        assert!(
            worst <= 1.0,
            "case {seed}: input {worst} × tolerance, {g:?}"
        );
        let worst = worst_violation(&got.weight, &want.weight, 1e-12, 1e-12);
        assert!(
            worst <= 1.0,
            "case {seed}: weight {worst} × tolerance, {g:?}"
        );
        assert_eq!(got.bias, want.bias);
    }
}

/// Forward and both gradients are bit-identical on 1, 2 and 3 threads: many images (several
/// weight-gradient groups), and one image (its channel blocks split into tasks).
#[test]
fn direct_is_bit_identical_on_any_thread_count() {
    let mut r = rng(81);
    for (n, cin, cout, h, w) in [(11, 6, 21, 23, 17), (1, 40, 33, 9, 12)] {
        let x = random4(&mut r, (n, cin, h, w)).mapv(|v| v as f32);
        let weight = random4(&mut r, (cout, cin, 3, 3)).mapv(|v| v as f32);
        let conv = Conv2d::new(weight, None, ConvGeometry::default().padding(1, 1))
            .unwrap()
            .with_algorithm(ConvAlgorithm::Direct)
            .unwrap();
        let go = random4(&mut r, (n, cout, h, w)).mapv(|v| v as f32);
        let run = |t| {
            in_pool(t, || {
                let y = conv.forward(x.view()).unwrap();
                (y, conv.backward(x.view(), go.view()).unwrap())
            })
        };
        let bits = |a: &Array4<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let one = run(1);
        for other in [run(2), run(3)] {
            assert_eq!(bits(&one.0), bits(&other.0));
            assert_eq!(bits(&one.1.input), bits(&other.1.input));
            assert_eq!(bits(&one.1.weight), bits(&other.1.weight));
        }
    }
}
