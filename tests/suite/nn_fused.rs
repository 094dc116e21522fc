//! The fused and in-place paths of the training stack against the plain layers they replace:
//! batch norm + ReLU (forward, backward, finite differences), max pooling from its compact
//! argmax against a naive reference with ties, and whole networks (fused vs the public
//! unfused layers chained by hand; 1 vs 2 threads bit for bit).

use crate::common::{in_pool, random4, rng};
use clustered_conv::nn::{
    relu, relu_backward, softmax_cross_entropy, BatchNorm2d, Layer, Linear, LrSchedule, MaxPool2d,
    Network, Sgd, SgdState,
};
use clustered_conv::{Conv2d, ConvGeometry, Error};
use ndarray::{Array1, Array2, Array4};
use rand::Rng;

/// A batch norm with γ of both signs and β ≠ 0, so the ReLU after it cuts on both sides.
fn batch_norm(r: &mut rand_chacha::ChaCha8Rng, channels: usize) -> BatchNorm2d<f64> {
    let mut bn = BatchNorm2d::new(channels);
    bn.gamma = Array1::from_shape_fn(channels, |c| {
        if c % 3 == 2 {
            -0.7
        } else {
            0.5 + r.random_range(0.0..1.0)
        }
    });
    bn.beta = Array1::from_shape_fn(channels, |_| r.random_range(-0.5..0.5));
    bn
}

#[test]
fn fused_batch_norm_relu_equals_batch_norm_then_relu_bit_for_bit() {
    let mut r = rng(140);
    for (shape, relu_after) in [
        ((3, 4, 5, 6), true),
        ((2, 3, 7, 1), true),
        ((4, 2, 3, 3), false),
    ] {
        let bn = batch_norm(&mut r, shape.1);
        let x = random4(&mut r, shape);
        let dz = random4(&mut r, shape);
        // Unfused: the public layer, then the public ReLU and its gradient.
        let mut plain = bn.clone();
        let (y, cache) = plain.forward_train(x.view()).unwrap();
        let (z, dy) = if relu_after {
            (relu(y.view()), relu_backward(y.view(), dz.view()))
        } else {
            (y.clone(), dz.clone())
        };
        let want = plain.backward(&cache, dy.view()).unwrap();
        // Fused.
        let mut fused = bn.clone();
        let (z2, tape) = fused.forward_train_fused(x.clone(), relu_after).unwrap();
        let got = fused.backward_fused(&tape, dz.clone()).unwrap();
        assert_eq!(z2, z, "forward {shape:?}");
        assert_eq!(fused, plain, "running statistics {shape:?}");
        assert_eq!(got, want, "gradients {shape:?}");
        // Evaluation mode too.
        let eval = fused.forward_eval_fused(x.view(), relu_after).unwrap();
        let plain_eval = fused.forward_eval(x.view()).unwrap();
        let plain_eval = if relu_after {
            relu(plain_eval.view())
        } else {
            plain_eval
        };
        assert_eq!(eval, plain_eval, "evaluation {shape:?}");
    }
}

#[test]
fn fused_batch_norm_relu_equals_the_unfused_layers_in_f32() {
    let mut r = rng(141);
    let shape = (8, 5, 6, 7);
    let bn64 = batch_norm(&mut r, shape.1);
    let bn = BatchNorm2d::<f32> {
        gamma: bn64.gamma.mapv(|v| v as f32),
        beta: bn64.beta.mapv(|v| v as f32),
        ..BatchNorm2d::new(shape.1)
    };
    let x = random4(&mut r, shape).mapv(|v| v as f32 * 3.0 + 1.0);
    let dz = random4(&mut r, shape).mapv(|v| v as f32);
    let mut plain = bn.clone();
    let (y, cache) = plain.forward_train(x.view()).unwrap();
    let want = plain
        .backward(&cache, relu_backward(y.view(), dz.view()).view())
        .unwrap();
    let mut fused = bn.clone();
    let (z, tape) = fused.forward_train_fused(x.clone(), true).unwrap();
    let got = fused.backward_fused(&tape, dz).unwrap();
    assert_eq!(z, relu(y.view()));
    assert_eq!(got, want);
}

/// `Σ dz ⊙ relu(bn(x))` in training mode.
fn bn_relu_loss(bn: &BatchNorm2d<f64>, x: &Array4<f64>, dz: &Array4<f64>) -> f64 {
    let mut bn = bn.clone();
    let (z, _) = bn.forward_train_fused(x.clone(), true).unwrap();
    (&z * dz).sum()
}

/// Central differences of `loss` with respect to every element of `v`.
fn numeric<D: ndarray::Dimension>(
    v: &ndarray::Array<f64, D>,
    loss: impl Fn(&ndarray::Array<f64, D>) -> f64,
) -> ndarray::Array<f64, D> {
    const EPS: f64 = 1e-6;
    let mut g = v.clone();
    for (i, gi) in g.iter_mut().enumerate() {
        let (mut plus, mut minus) = (v.clone(), v.clone());
        plus.as_slice_mut().unwrap()[i] += EPS;
        minus.as_slice_mut().unwrap()[i] -= EPS;
        *gi = (loss(&plus) - loss(&minus)) / (2.0 * EPS);
    }
    g
}

fn assert_close<D: ndarray::Dimension>(
    numeric: &ndarray::Array<f64, D>,
    analytic: &ndarray::Array<f64, D>,
    what: &str,
) {
    assert_eq!(numeric.shape(), analytic.shape(), "{what}");
    for (n, a) in numeric.iter().zip(analytic) {
        assert!((n - a).abs() <= 1e-6 + 1e-6 * n.abs(), "{what}: {n} vs {a}");
    }
}

#[test]
fn fused_batch_norm_relu_backward_matches_finite_differences() {
    let mut r = rng(142);
    let shape = (3, 3, 3, 4);
    let bn = batch_norm(&mut r, shape.1);
    let x = random4(&mut r, shape);
    let dz = random4(&mut r, shape);
    let (y, _) = bn.clone().forward_train_fused(x.clone(), false).unwrap();
    // The loss is smooth here only if no pre-activation sits at the ReLU's kink.
    let cut = y.iter().filter(|v| **v <= 0.0).count();
    assert!(
        y.iter().all(|v| v.abs() > 1e-4),
        "a pre-activation at the kink"
    );
    assert!(
        cut > 5 && cut < y.len() - 5,
        "the ReLU must cut some values: {cut}"
    );
    let fused_tape = bn.clone().forward_train_fused(x.clone(), true).unwrap().1;
    let grads = bn.backward_fused(&fused_tape, dz.clone()).unwrap();
    assert_close(
        &numeric(&x, |x| bn_relu_loss(&bn, x, &dz)),
        &grads.input,
        "∂x",
    );
    let with = |gamma: Option<&Array1<f64>>, beta: Option<&Array1<f64>>| {
        let mut b = bn.clone();
        b.gamma = gamma.unwrap_or(&bn.gamma).clone();
        b.beta = beta.unwrap_or(&bn.beta).clone();
        b
    };
    assert_close(
        &numeric(&bn.gamma, |g| bn_relu_loss(&with(Some(g), None), &x, &dz)),
        &grads.gamma,
        "∂γ",
    );
    assert_close(
        &numeric(&bn.beta, |b| bn_relu_loss(&with(None, Some(b)), &x, &dz)),
        &grads.beta,
        "∂β",
    );
}

#[test]
fn fused_batch_norm_rejects_foreign_shapes() {
    let mut r = rng(143);
    let mut bn = batch_norm(&mut r, 3);
    let (_, tape) = bn
        .forward_train_fused(random4(&mut r, (2, 3, 4, 4)), true)
        .unwrap();
    assert!(matches!(
        bn.backward_fused(&tape, Array4::zeros((2, 3, 4, 5))),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        batch_norm(&mut r, 4).backward_fused(&tape, Array4::zeros((2, 3, 4, 4))),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(bn
        .forward_train_fused(random4(&mut r, (2, 4, 4, 4)), true)
        .is_err());
    assert!(bn
        .forward_train_fused(random4(&mut r, (1, 3, 1, 1)), true)
        .is_err());
}

/// Max pooling written for clarity: the first maximum of each window in row-major order,
/// and the gradient added there, in output order.
fn naive_pool(x: &Array4<f64>, g: &Array4<f64>, k: usize, s: usize) -> (Array4<f64>, Array4<f64>) {
    let (n, c, h, w) = x.dim();
    let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
    let mut y = Array4::zeros((n, c, oh, ow));
    let mut dx = Array4::zeros((n, c, h, w));
    for b in 0..n {
        for ch in 0..c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut best = (oy * s, ox * s);
                    for i in oy * s..oy * s + k {
                        for j in ox * s..ox * s + k {
                            if x[[b, ch, i, j]] > x[[b, ch, best.0, best.1]] {
                                best = (i, j);
                            }
                        }
                    }
                    y[[b, ch, oy, ox]] = x[[b, ch, best.0, best.1]];
                    dx[[b, ch, best.0, best.1]] += g[[b, ch, oy, ox]];
                }
            }
        }
    }
    (y, dx)
}

#[test]
fn max_pool_from_its_compact_argmax_matches_a_naive_reference_with_ties() {
    let mut r = rng(144);
    // (input shape, kernel, stride, argmax bytes per output): odd sizes leave rows and
    // columns uncovered; kernel > stride overlaps; stride > kernel leaves gaps; 17×17 takes
    // the two-byte offsets.
    let cases = [
        ((2, 3, 7, 7), 2, 2, 1),
        ((2, 2, 8, 6), 2, 2, 1),
        ((1, 3, 9, 8), 3, 2, 1),
        ((2, 2, 6, 7), 3, 1, 1),
        ((1, 2, 9, 10), 2, 3, 1),
        ((1, 2, 18, 19), 17, 1, 2),
    ];
    for (shape, k, s, bytes) in cases {
        // Values from {0, 1, 2}: most windows hold ties, which go to the first maximum.
        let x = Array4::from_shape_simple_fn(shape, || r.random_range(0..3) as f64);
        let pool = MaxPool2d {
            kernel: k,
            stride: s,
            padding: 0,
        };
        let (y, argmax) = pool.forward_train(x.view()).unwrap();
        let g = random4(&mut r, y.dim());
        let (want_y, want_dx) = naive_pool(&x, &g, k, s);
        assert_eq!(y, want_y, "forward {shape:?} k{k} s{s}");
        assert_eq!(pool.forward(x.view()).unwrap(), want_y);
        assert_eq!(argmax.memory(), bytes * y.len(), "argmax bytes per output");
        assert_eq!(argmax.input_dim(), shape);
        let dx = pool.backward_argmax(&argmax, g.view()).unwrap();
        assert_eq!(dx, want_dx, "backward from the argmax {shape:?} k{k} s{s}");
        assert_eq!(pool.backward(x.view(), g.view()).unwrap(), want_dx);
    }
}

#[test]
fn max_pool_argmax_errors() {
    let mut r = rng(145);
    let x = random4(&mut r, (1, 2, 6, 6));
    let pool = MaxPool2d {
        kernel: 2,
        stride: 2,
        padding: 0,
    };
    let (_, argmax) = pool.forward_train(x.view()).unwrap();
    let other = MaxPool2d {
        kernel: 3,
        stride: 3,
        padding: 0,
    };
    assert!(other
        .backward_argmax(&argmax, Array4::<f64>::zeros((1, 2, 2, 2)).view())
        .is_err());
    assert!(matches!(
        pool.backward_argmax(&argmax, Array4::<f64>::zeros((1, 2, 3, 2)).view()),
        Err(Error::ShapeMismatch { .. })
    ));
    let huge = MaxPool2d {
        kernel: 257,
        stride: 1,
        padding: 0,
    };
    let big = Array4::<f32>::zeros((1, 1, 257, 257));
    assert!(huge.forward(big.view()).is_ok());
    assert!(huge.forward_train(big.view()).is_err());
}

/// conv → BN → ReLU → pool → conv → BN (no ReLU) → ReLU-free flatten → linear, in f64.
fn network(r: &mut rand_chacha::ChaCha8Rng) -> Network<f64> {
    let conv = |r: &mut rand_chacha::ChaCha8Rng, cout, cin| {
        Conv2d::new(
            random4(r, (cout, cin, 3, 3)),
            None,
            ConvGeometry::default().padding(1, 1),
        )
        .unwrap()
    };
    let fc = Linear {
        weight: Array2::from_shape_fn((4, 3 * 3 * 3), |_| r.random_range(-0.5..0.5)),
        bias: Array1::from_shape_fn(4, |j| 0.01 * j as f64),
    };
    Network::new(vec![
        Layer::Conv(conv(r, 4, 2)),
        Layer::BatchNorm(batch_norm(r, 4)),
        Layer::Relu,
        Layer::MaxPool(MaxPool2d {
            kernel: 2,
            stride: 2,
            padding: 0,
        }),
        Layer::Conv(conv(r, 3, 4)),
        Layer::BatchNorm(batch_norm(r, 3)),
        Layer::Flatten,
        Layer::Linear(fc),
    ])
}

#[test]
fn network_with_fusion_equals_the_public_layers_chained_by_hand() {
    use clustered_conv::nn::LayerGrads;
    let mut r = rng(146);
    let net = network(&mut r);
    let x = random4(&mut r, (3, 2, 7, 6));
    let labels = [0, 3, 1];
    let mut trained = net.clone();
    let (logits, tape) = trained.forward_train(x.view()).unwrap();
    let (_, grad) = softmax_cross_entropy(logits.view(), &labels).unwrap();
    let grads = net.backward(&tape, grad.clone()).unwrap();

    // By hand, with the plain public layers.
    let [Layer::Conv(c1), Layer::BatchNorm(b1), _, Layer::MaxPool(p), Layer::Conv(c2), Layer::BatchNorm(b2), _, Layer::Linear(fc)] =
        &net.layers[..]
    else {
        panic!("layout")
    };
    let (mut b1, mut b2) = (b1.clone(), b2.clone());
    let h1 = c1.forward(x.view()).unwrap();
    let (h2, cache1) = b1.forward_train(h1.view()).unwrap();
    let h3 = relu(h2.view());
    let h4 = p.forward(h3.view()).unwrap();
    let h5 = c2.forward(h4.view()).unwrap();
    let (h6, cache2) = b2.forward_train(h5.view()).unwrap();
    let h7 = h6.to_shape((3, 27)).unwrap().to_owned();
    let want_logits = fc.forward(h7.view()).unwrap();
    assert_eq!(logits, want_logits);
    let g_fc = fc.backward(h7.view(), grad.view()).unwrap();
    let g6 = g_fc.input.into_shape_with_order(h6.dim()).unwrap();
    let g_b2 = b2.backward(&cache2, g6.view()).unwrap();
    let g_c2 = c2.backward(h4.view(), g_b2.input.view()).unwrap();
    let g3 = p.backward(h3.view(), g_c2.input.view()).unwrap();
    let g2 = relu_backward(h2.view(), g3.view());
    let g_b1 = b1.backward(&cache1, g2.view()).unwrap();
    let g_c1 = c1.backward(x.view(), g_b1.input.view()).unwrap();

    assert_eq!(grads.input, g_c1.input);
    assert_eq!(grads.layers[0], LayerGrads::Conv(g_c1.weight, None));
    assert_eq!(
        grads.layers[1],
        LayerGrads::BatchNorm(g_b1.gamma, g_b1.beta)
    );
    assert_eq!(grads.layers[4], LayerGrads::Conv(g_c2.weight, None));
    assert_eq!(
        grads.layers[5],
        LayerGrads::BatchNorm(g_b2.gamma, g_b2.beta)
    );
    assert_eq!(grads.layers[7], LayerGrads::Linear(g_fc.weight, g_fc.bias));
    // Running statistics as the plain layers left them; evaluation equal too.
    assert_eq!(trained.layers[1], Layer::BatchNorm(b1.clone()));
    assert_eq!(trained.layers[5], Layer::BatchNorm(b2.clone()));
    let e1 = relu(
        b1.forward_eval(c1.forward(x.view()).unwrap().view())
            .unwrap()
            .view(),
    );
    let e2 = b2
        .forward_eval(
            c2.forward(p.forward(e1.view()).unwrap().view())
                .unwrap()
                .view(),
        )
        .unwrap();
    let want_eval = fc.forward(e2.to_shape((3, 27)).unwrap().view()).unwrap();
    assert_eq!(trained.forward(x.view()).unwrap(), want_eval);
}

#[test]
fn training_steps_are_bit_identical_on_one_and_two_threads() {
    let mut r = rng(147);
    let net = network(&mut r);
    let x = random4(&mut r, (6, 2, 7, 6)).mapv(|v| v as f32);
    let labels = [0, 3, 1, 2, 2, 1];
    let net = Network::<f32>::new(
        net.layers
            .iter()
            .map(|l| match l {
                Layer::Conv(c) => Layer::Conv(
                    Conv2d::new(c.weight().mapv(|v| v as f32), None, c.geometry()).unwrap(),
                ),
                Layer::BatchNorm(b) => Layer::BatchNorm(BatchNorm2d {
                    gamma: b.gamma.mapv(|v| v as f32),
                    beta: b.beta.mapv(|v| v as f32),
                    ..BatchNorm2d::new(b.gamma.len())
                }),
                Layer::Linear(f) => Layer::Linear(Linear {
                    weight: f.weight.mapv(|v| v as f32),
                    bias: f.bias.mapv(|v| v as f32),
                }),
                Layer::MaxPool(p) => Layer::MaxPool(*p),
                Layer::Relu => Layer::Relu,
                Layer::Flatten => Layer::Flatten,
                other => panic!("unexpected {other:?}"),
            })
            .collect(),
    );
    let sgd = Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        schedule: LrSchedule::Constant,
    };
    let run = |threads| {
        in_pool(threads, || {
            let mut n = net.clone();
            let mut states: Vec<SgdState<f32>> = Vec::new();
            let losses: Vec<f64> = (0..3)
                .map(|_| {
                    n.train_step(x.view(), &labels, &sgd, 0.0, &mut states)
                        .unwrap()
                })
                .collect();
            (n, losses)
        })
    };
    let (one, two) = (run(1), run(2));
    assert_eq!(one.1, two.1);
    assert_eq!(one.0, two.0);
    assert!(one.1[2] < one.1[0], "the network learns: {:?}", one.1);
    // A tape whose fused ReLU meets a layer that is no batch norm is refused.
    let (logits, tape) = one.0.clone().forward_train(x.view()).unwrap();
    let mut swapped = one.0.clone();
    swapped.layers.swap(0, 1);
    let grad = softmax_cross_entropy(logits.view(), &labels).unwrap().1;
    assert!(matches!(
        swapped.backward(&tape, grad),
        Err(Error::LayerMismatch { .. })
    ));
}
