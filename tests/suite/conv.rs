//! Dense `Conv2d` against the naive direct convolution and finite differences.

use crate::common::{in_pool, naive_conv, random4, random_problem, rng, worst_violation};
use clustered_conv::{Conv2d, ConvGeometry, Error};
use ndarray::{Array1, Array4, Axis, Slice};
use rand::Rng;

/// A random geometry that is valid for the drawn input and kernel sizes.
struct Case {
    x: Array4<f64>,
    w: Array4<f64>,
    bias: Option<Array1<f64>>,
    g: ConvGeometry,
}

fn random_case(r: &mut rand_chacha::ChaCha8Rng) -> Case {
    let p = random_problem(r, (4, 5), 5, 11, (3, 3));
    let x = random4(r, (p.n, p.cin, p.input.0, p.input.1));
    let w = random4(r, (p.cout, p.cin, p.kernel.0, p.kernel.1));
    let bias = r
        .random_bool(0.5)
        .then(|| Array1::from_shape_fn(p.cout, |_| r.random_range(-1.0..1.0)));
    Case { x, w, bias, g: p.g }
}

#[test]
fn forward_equals_naive_over_600_random_geometries() {
    let mut r = rng(1);
    let mut worst = 0.0f64;
    for case in 0..600 {
        let c = random_case(&mut r);
        let conv = Conv2d::new(c.w.clone(), c.bias.clone(), c.g).unwrap();
        let expected = naive_conv(c.x.view(), c.w.view(), c.bias.as_ref(), &c.g);
        let got = conv.forward(c.x.view()).unwrap();
        let v = worst_violation(&got, &expected, 1e-12, 1e-12);
        assert!(v <= 1.0, "case {case}: {:?} violation {v}", c.g);
        worst = worst.max(v);
    }
    eprintln!("worst tolerance use: {worst:.3}");
}

#[test]
fn forward_f32_tracks_f64() {
    let mut r = rng(2);
    for _ in 0..50 {
        let c = random_case(&mut r);
        let conv32 = Conv2d::new(
            c.w.mapv(|v| v as f32),
            c.bias.as_ref().map(|b| b.mapv(|v| v as f32)),
            c.g,
        )
        .unwrap();
        let got = conv32
            .forward(c.x.mapv(|v| v as f32).view())
            .unwrap()
            .mapv(f64::from);
        let expected = naive_conv(c.x.view(), c.w.view(), c.bias.as_ref(), &c.g);
        assert!(worst_violation(&got, &expected, 1e-5, 1e-5) <= 1.0);
    }
}

#[test]
fn non_contiguous_views_give_the_same_result() {
    let mut r = rng(3);
    for _ in 0..40 {
        let c = random_case(&mut r);
        let conv = Conv2d::new(c.w.clone(), c.bias.clone(), c.g).unwrap();
        let expected = conv.forward(c.x.view()).unwrap();
        // Same data in a width-strided view: interleave with junk columns and take every 2nd.
        let (n, ch, h, w) = c.x.dim();
        let mut wide = Array4::<f64>::from_elem((n, ch, h, 2 * w), f64::NAN);
        wide.slice_axis_mut(Axis(3), Slice::new(0, None, 2))
            .assign(&c.x);
        let strided = wide.slice_axis(Axis(3), Slice::new(0, None, 2));
        assert!(!strided.is_standard_layout());
        assert_eq!(conv.forward(strided).unwrap(), expected);
        // And a channel-last (transposed) memory layout.
        let nhwc = c.x.view().permuted_axes([0, 2, 3, 1]).to_owned();
        let nchw_view = nhwc.view().permuted_axes([0, 3, 1, 2]);
        assert_eq!(conv.forward(nchw_view).unwrap(), expected);
    }
}

#[test]
fn pointwise_fast_path_matches_naive() {
    let mut r = rng(4);
    let x = random4(&mut r, (2, 7, 9, 6));
    let w = random4(&mut r, (5, 7, 1, 1));
    let g = ConvGeometry::default();
    let conv = Conv2d::new(w.clone(), None, g).unwrap();
    let got = conv.forward(x.view()).unwrap();
    let expected = naive_conv(x.view(), w.view(), None, &g);
    assert!(worst_violation(&got, &expected, 1e-12, 1e-12) <= 1.0);
}

#[test]
fn large_input_spans_several_tiles() {
    // 3·9 = 27 patch rows → a 4 MiB tile holds ~19k positions; 160×160 = 25,600 positions.
    let mut r = rng(5);
    let x = random4(&mut r, (1, 3, 160, 160));
    let w = random4(&mut r, (2, 3, 3, 3));
    let g = ConvGeometry::default().padding(1, 1);
    let conv = Conv2d::new(w.clone(), None, g).unwrap();
    let got = conv.forward(x.view()).unwrap();
    let expected = naive_conv(x.view(), w.view(), None, &g);
    assert!(worst_violation(&got, &expected, 1e-12, 1e-12) <= 1.0);
}

/// L = Σ y ⊙ G, so ∂L/∂y = G.
fn loss(conv: &Conv2d<f64>, x: &Array4<f64>, g: &Array4<f64>) -> f64 {
    (&conv.forward(x.view()).unwrap() * g).sum()
}

#[test]
fn gradients_match_central_finite_differences() {
    let mut r = rng(6);
    let eps = 1e-6;
    for case in 0..40 {
        let c = random_case(&mut r);
        let conv = Conv2d::new(c.w.clone(), c.bias.clone(), c.g).unwrap();
        let out_shape = conv.output_shape(dims(&c.x)).unwrap();
        let go = random4(
            &mut r,
            (out_shape[0], out_shape[1], out_shape[2], out_shape[3]),
        );
        let grads = conv.backward(c.x.view(), go.view()).unwrap();
        // Input gradient.
        for (idx, &analytic) in grads.input.indexed_iter() {
            let idx = [idx.0, idx.1, idx.2, idx.3];
            let mut xp = c.x.clone();
            xp[idx] += eps;
            let mut xm = c.x.clone();
            xm[idx] -= eps;
            let numeric = (loss(&conv, &xp, &go) - loss(&conv, &xm, &go)) / (2.0 * eps);
            assert!(
                (numeric - analytic).abs() <= 1e-6 + 1e-6 * numeric.abs(),
                "case {case} dx{idx:?}: {numeric} vs {analytic}"
            );
        }
        // Weight gradient.
        for (idx, &analytic) in grads.weight.indexed_iter() {
            let idx = [idx.0, idx.1, idx.2, idx.3];
            let mut wp = c.w.clone();
            wp[idx] += eps;
            let mut wm = c.w.clone();
            wm[idx] -= eps;
            let lp = loss(&Conv2d::new(wp, c.bias.clone(), c.g).unwrap(), &c.x, &go);
            let lm = loss(&Conv2d::new(wm, c.bias.clone(), c.g).unwrap(), &c.x, &go);
            let numeric = (lp - lm) / (2.0 * eps);
            assert!(
                (numeric - analytic).abs() <= 1e-6 + 1e-6 * numeric.abs(),
                "case {case} dW{idx:?}: {numeric} vs {analytic}"
            );
        }
        // Bias gradient.
        match (&c.bias, &grads.bias) {
            (None, None) => {}
            (Some(b), Some(gb)) => {
                for o in 0..b.len() {
                    let mut bp = b.clone();
                    bp[o] += eps;
                    let mut bm = b.clone();
                    bm[o] -= eps;
                    let lp = loss(&Conv2d::new(c.w.clone(), Some(bp), c.g).unwrap(), &c.x, &go);
                    let lm = loss(&Conv2d::new(c.w.clone(), Some(bm), c.g).unwrap(), &c.x, &go);
                    let numeric = (lp - lm) / (2.0 * eps);
                    assert!((numeric - gb[o]).abs() <= 1e-6 + 1e-6 * numeric.abs());
                }
            }
            _ => panic!("bias gradient present iff the layer has a bias"),
        }
    }
}

#[test]
fn backward_handles_strided_grad_and_input_views() {
    let mut r = rng(7);
    let c = random_case(&mut r);
    let conv = Conv2d::new(c.w.clone(), c.bias.clone(), c.g).unwrap();
    let s = conv.output_shape(dims(&c.x)).unwrap();
    let go = random4(&mut r, (s[0], s[1], s[2], s[3]));
    let expected = conv.backward(c.x.view(), go.view()).unwrap();
    let go_t = go.view().permuted_axes([0, 2, 3, 1]).to_owned();
    let x_t = c.x.view().permuted_axes([0, 2, 3, 1]).to_owned();
    let got = conv
        .backward(
            x_t.view().permuted_axes([0, 3, 1, 2]),
            go_t.view().permuted_axes([0, 3, 1, 2]),
        )
        .unwrap();
    assert_eq!(got, expected);
}

fn dims(x: &Array4<f64>) -> [usize; 4] {
    let d = x.shape();
    [d[0], d[1], d[2], d[3]]
}

#[test]
fn results_are_identical_on_1_2_and_7_threads() {
    let mut r = rng(8);
    let x = random4(&mut r, (3, 16, 40, 40)).mapv(|v| v as f32);
    let w = random4(&mut r, (24, 16, 3, 3)).mapv(|v| v as f32);
    let conv = Conv2d::new(w, None, ConvGeometry::default().padding(1, 1)).unwrap();
    let go = random4(&mut r, (3, 24, 40, 40)).mapv(|v| v as f32);
    let run = |threads| {
        in_pool(threads, || {
            (
                conv.forward(x.view()).unwrap(),
                conv.backward(x.view(), go.view()).unwrap(),
            )
        })
    };
    let one = run(1);
    assert_eq!(run(2), one);
    assert_eq!(run(7), one);
}

#[test]
fn rejects_bad_inputs_with_named_values() {
    let w = Array4::<f32>::zeros((4, 3, 3, 3));
    // Bias of the wrong length.
    let err = Conv2d::new(w.clone(), Some(Array1::zeros(5)), ConvGeometry::default()).unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { ref expected, ref got, .. } if expected == &vec![4] && got == &vec![5])
    );
    // Zero-sized weight.
    let err = Conv2d::new(
        Array4::<f32>::zeros((0, 3, 3, 3)),
        None,
        ConvGeometry::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::ZeroSize { .. }));
    // Stride 0.
    let err = Conv2d::new(w.clone(), None, ConvGeometry::default().stride(0, 1)).unwrap_err();
    assert!(matches!(err, Error::InvalidGeometry { what: "stride", .. }));
    let conv = Conv2d::new(w, None, ConvGeometry::default()).unwrap();
    // Channel mismatch.
    let err = conv
        .forward(Array4::<f32>::zeros((1, 2, 8, 8)).view())
        .unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { ref expected, ref got, .. } if expected == &vec![3] && got == &vec![2])
    );
    // Kernel larger than the input.
    let err = conv
        .forward(Array4::<f32>::zeros((1, 3, 2, 8)).view())
        .unwrap_err();
    assert!(matches!(
        err,
        Error::KernelTooLarge {
            axis: "height",
            kernel_extent: 3,
            padded_input: 2
        }
    ));
    // Empty batch.
    let err = conv
        .forward(Array4::<f32>::zeros((0, 3, 8, 8)).view())
        .unwrap_err();
    assert!(matches!(err, Error::ZeroSize { .. }));
    // grad_out of the wrong shape.
    let x = Array4::<f32>::zeros((1, 3, 8, 8));
    let err = conv
        .backward(x.view(), Array4::<f32>::zeros((1, 4, 8, 8)).view())
        .unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { ref expected, .. } if expected == &vec![1, 4, 6, 6])
    );
    // The message names the values.
    assert_eq!(
        Error::KernelTooLarge {
            axis: "height",
            kernel_extent: 3,
            padded_input: 2
        }
        .to_string(),
        "kernel extent 3 is larger than the padded input 2 (height)"
    );
}

#[test]
fn conv2d_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Conv2d<f32>>();
    assert_send_sync::<Conv2d<f64>>();
    assert_send_sync::<Error>();
}

#[test]
fn adjoint_identities_hold_across_many_tiles_and_groups() {
    // y = conv(x; W) is bilinear: Σ y·G = Σ x·(∂L/∂x) = Σ W·(∂L/∂W) without bias.
    // 9 images × 2 tiles = 18 tasks > 8 weight-gradient groups.
    let mut r = rng(9);
    let x = random4(&mut r, (9, 3, 150, 150));
    let w = random4(&mut r, (4, 3, 3, 3));
    let conv = Conv2d::new(
        w.clone(),
        None,
        ConvGeometry::default().padding(1, 1).stride(1, 1),
    )
    .unwrap();
    let y = conv.forward(x.view()).unwrap();
    let go = random4(&mut r, y.dim());
    let grads = conv.backward(x.view(), go.view()).unwrap();
    let yg = (&y * &go).sum();
    let xg = (&x * &grads.input).sum();
    let wg = (&w * &grads.weight).sum();
    assert!((yg - xg).abs() <= 1e-9 * yg.abs().max(1.0), "{yg} vs {xg}");
    assert!((yg - wg).abs() <= 1e-9 * yg.abs().max(1.0), "{yg} vs {wg}");
}

/// The stride-1 "same-width" fast path of im2col/col2im (whole image in one tile): forward
/// against the naive convolution, input gradient against the adjoint identity
/// `⟨conv(x), g⟩ = ⟨x, ∂/∂x⟩` and the weight gradient against `⟨conv_w(x), g⟩ = ⟨w, ∂/∂w⟩`.
#[test]
fn same_width_stride_1_fast_path_forward_and_adjoints() {
    use clustered_conv::Padding;
    let mut r = rng(77);
    let geometries = [
        ((3, 3), ConvGeometry::default().padding(1, 1)),
        ((5, 5), ConvGeometry::default().padding(2, 2)),
        ((3, 3), ConvGeometry::default().padding(2, 2).dilation(2, 2)),
        ((3, 3), ConvGeometry::default().padding(0, 1)),
        (
            (2, 2),
            ConvGeometry::default().padding_asymmetric(Padding {
                top: 1,
                bottom: 0,
                left: 1,
                right: 0,
            }),
        ),
        ((1, 3), ConvGeometry::default().padding(0, 1)),
    ];
    for ((kh, kw), g) in geometries {
        for (h, w) in [(7, 9), (3, 3), (1, 5)] {
            let x = random4(&mut r, (2, 3, h, w));
            let weight = random4(&mut r, (4, 3, kh, kw));
            let conv = Conv2d::new(weight.clone(), None, g).unwrap();
            let Ok(y) = conv.forward(x.view()) else {
                continue;
            };
            let naive = naive_conv(x.view(), weight.view(), None, &g);
            assert!(
                worst_violation(&y, &naive, 1e-12, 1e-12) <= 1.0,
                "{kh}x{kw} {h}x{w}"
            );
            let go = random4(&mut r, y.dim());
            let grads = conv.backward(x.view(), go.view()).unwrap();
            let lhs = (&y * &go).sum();
            let via_input = (&x * &grads.input).sum();
            let via_weight = (&weight * &grads.weight).sum();
            assert!(
                (lhs - via_input).abs() <= 1e-10 * (1.0 + lhs.abs()),
                "{kh}x{kw} {h}x{w}"
            );
            assert!(
                (lhs - via_weight).abs() <= 1e-10 * (1.0 + lhs.abs()),
                "{kh}x{kw} {h}x{w}"
            );
        }
    }
}

/// ∂L/∂x of `L = ⟨conv(x), go⟩` by its definition: every output gradient scattered back onto
/// the inputs its window read, seven nested loops (the transpose of `naive_conv`).
fn naive_input_grad(
    x_dim: [usize; 4],
    w: &Array4<f64>,
    go: &Array4<f64>,
    g: &ConvGeometry,
) -> Array4<f64> {
    let [n, cin, h, wd] = x_dim;
    let (cout, _, kh, kw) = w.dim();
    let (_, _, oh, ow) = go.dim();
    let clustered_conv::Padding { top, left, .. } = g.padding;
    let mut gx = Array4::<f64>::zeros((n, cin, h, wd));
    for b in 0..n {
        for o in 0..cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    for i in 0..cin {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let iy =
                                    (oy * g.stride.0 + ki * g.dilation.0) as isize - top as isize;
                                let ix =
                                    (ox * g.stride.1 + kj * g.dilation.1) as isize - left as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    gx[[b, i, iy as usize, ix as usize]] +=
                                        go[[b, o, oy, ox]] * w[[o, i, ki, kj]];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    gx
}

/// Layers with 16 or more input channels take their input gradient as the im2col forward of
/// `grad_out` with the rotated, transposed weight (stride 1, dilation 1); the others through
/// col2im. Both against the definition, over random kernels, paddings (asymmetric, up to and
/// beyond the kernel size) and map sizes.
#[test]
fn input_gradient_equals_the_definition_on_wide_layers() {
    let mut r = rng(31);
    for case in 0..60 {
        let mut p = random_problem(
            &mut r,
            (4, 5),
            5,
            11,
            (if case % 4 == 0 { 2 } else { 1 }, 1),
        );
        p.cin = r.random_range(16..=19);
        let x = random4(&mut r, (p.n, p.cin, p.input.0, p.input.1));
        let w = random4(&mut r, (p.cout, p.cin, p.kernel.0, p.kernel.1));
        let conv = Conv2d::new(w.clone(), None, p.g).unwrap();
        let y = conv.forward(x.view()).unwrap();
        let go = random4(&mut r, y.dim());
        let grads = conv.backward(x.view(), go.view()).unwrap();
        let reference = naive_input_grad(dims(&x), &w, &go, &p.g);
        assert!(
            worst_violation(&grads.input, &reference, 1e-12, 1e-12) <= 1.0,
            "case {case}: kernel {:?}, input {:?}, {:?}",
            p.kernel,
            p.input,
            p.g
        );
    }
}
