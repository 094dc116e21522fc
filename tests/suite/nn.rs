//! The training stack: every backward pass against central finite differences (f64), the loss
//! and SGD against hand-computed values.

use crate::common::{numeric_grad, random4, rng};
use clustered_conv::nn::{
    relu, relu_backward, softmax_cross_entropy, BatchNorm2d, Linear, LrSchedule, MaxPool2d, Sgd,
    SgdState,
};
use clustered_conv::Error;
use ndarray::{array, Array1, Array2, Array4, ArrayD, IxDyn};
use rand::Rng;

fn close(numeric: f64, analytic: f64) -> bool {
    (numeric - analytic).abs() <= 1e-6 + 1e-6 * numeric.abs()
}

fn assert_close<D: ndarray::Dimension>(
    numeric: &ndarray::Array<f64, D>,
    analytic: &ndarray::Array<f64, D>,
    what: &str,
) {
    for (n, a) in numeric.iter().zip(analytic.iter()) {
        assert!(close(*n, *a), "{what}: {n} vs {a}");
    }
}

#[test]
fn relu_and_its_gradient() {
    let x = array![[-1.0, 0.0, 2.0], [3.0, -0.5, 0.25]];
    assert_eq!(relu(x.view()), array![[0.0, 0.0, 2.0], [3.0, 0.0, 0.25]]);
    let g = array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]];
    assert_eq!(
        relu_backward(x.view(), g.view()),
        array![[0.0, 0.0, 3.0], [4.0, 0.0, 6.0]]
    );
}

#[test]
fn max_pool_forward_and_gradient() {
    let pool = MaxPool2d {
        kernel: 2,
        stride: 2,
        padding: 0,
    };
    let x =
        Array4::from_shape_vec((1, 1, 2, 4), vec![1.0, 5.0, 2.0, 0.0, 3.0, 4.0, 7.0, 6.0]).unwrap();
    assert_eq!(
        pool.forward(x.view()).unwrap(),
        Array4::from_shape_vec((1, 1, 1, 2), vec![5.0, 7.0]).unwrap()
    );
    let mut r = rng(91);
    // Distinct values so the maximum is unique and the loss is differentiable.
    let x = random4(&mut r, (2, 3, 7, 6));
    let go = random4(&mut r, (2, 3, 3, 3));
    let analytic = pool.backward(x.view(), go.view()).unwrap();
    let numeric = numeric_grad(&x, |x| (&pool.forward(x.view()).unwrap() * &go).sum());
    assert_close(&numeric, &analytic, "max-pool dx");
    let overlapping = MaxPool2d {
        kernel: 3,
        stride: 2,
        padding: 0,
    };
    let go = random4(&mut r, (2, 3, 3, 2));
    let analytic = overlapping.backward(x.view(), go.view()).unwrap();
    let numeric = numeric_grad(&x, |x| {
        (&overlapping.forward(x.view()).unwrap() * &go).sum()
    });
    assert_close(&numeric, &analytic, "overlapping max-pool dx");
    assert!(matches!(
        MaxPool2d {
            kernel: 8,
            stride: 1,
            padding: 0,
        }
        .forward(x.view()),
        Err(Error::KernelTooLarge { .. })
    ));
    assert!(MaxPool2d {
        kernel: 2,
        stride: 0,
        padding: 0,
    }
    .forward(x.view())
    .is_err());
}

#[test]
fn linear_gradients() {
    let mut r = rng(92);
    let mut rand2 =
        |rows, cols| Array2::from_shape_simple_fn((rows, cols), || r.random_range(-1.0..1.0));
    let layer = Linear {
        weight: rand2(4, 6),
        bias: Array1::from_vec(vec![0.1, -0.2, 0.3, 0.0]),
    };
    let x = rand2(5, 6);
    let go = rand2(5, 4);
    let grads = layer.backward(x.view(), go.view()).unwrap();
    assert_close(
        &numeric_grad(&x, |x| (&layer.forward(x.view()).unwrap() * &go).sum()),
        &grads.input,
        "dx",
    );
    let dw = numeric_grad(&layer.weight, |w| {
        let l = Linear {
            weight: w.clone(),
            bias: layer.bias.clone(),
        };
        (&l.forward(x.view()).unwrap() * &go).sum()
    });
    assert_close(&dw, &grads.weight, "dW");
    let db = numeric_grad(&layer.bias, |b| {
        let l = Linear {
            weight: layer.weight.clone(),
            bias: b.clone(),
        };
        (&l.forward(x.view()).unwrap() * &go).sum()
    });
    assert_close(&db, &grads.bias, "db");
    assert!(matches!(
        layer.forward(rand2(2, 5).view()),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn softmax_cross_entropy_values_and_gradient() {
    // Hand case: logits (0, ln 3) → p = (1/4, 3/4); label 1 → loss = −ln(3/4).
    let logits = array![[0.0, 3f64.ln()]];
    let (loss, grad) = softmax_cross_entropy(logits.view(), &[1]).unwrap();
    assert!((loss + (0.75f64).ln()).abs() < 1e-15);
    assert!((grad[[0, 0]] - 0.25).abs() < 1e-15 && (grad[[0, 1]] + 0.25).abs() < 1e-15);
    // Large logits do not overflow.
    let (loss, _) = softmax_cross_entropy(array![[1000.0, 0.0]].view(), &[0]).unwrap();
    assert!(loss.is_finite() && loss < 1e-12);
    let mut r = rng(93);
    let x = Array2::from_shape_simple_fn((6, 10), || r.random_range(-3.0..3.0));
    let labels = [0, 9, 3, 3, 7, 1];
    let (_, grad) = softmax_cross_entropy(x.view(), &labels).unwrap();
    let numeric = numeric_grad(&x, |x| softmax_cross_entropy(x.view(), &labels).unwrap().0);
    assert_close(&numeric, &grad, "dlogits");
    assert!(softmax_cross_entropy(x.view(), &[0, 1]).is_err());
    assert!(softmax_cross_entropy(x.view(), &[0, 1, 2, 3, 4, 10]).is_err());
}

#[test]
fn batch_norm_statistics_and_gradients() {
    let mut r = rng(94);
    let x = random4(&mut r, (4, 3, 5, 2));
    let mut bn = BatchNorm2d::<f64>::new(3);
    bn.gamma = Array1::from_vec(vec![1.5, -0.5, 2.0]);
    bn.beta = Array1::from_vec(vec![0.1, 0.2, -0.3]);
    let (y, cache) = bn.clone().forward_train(x.view()).unwrap();
    // Per channel the normalised output has mean β and standard deviation |γ| (up to ε).
    for c in 0..3 {
        let ch = y.index_axis(ndarray::Axis(1), c);
        let mean = ch.mean().unwrap();
        let sd = (ch.mapv(|v| (v - mean).powi(2)).mean().unwrap()).sqrt();
        assert!((mean - bn.beta[c]).abs() < 1e-12);
        assert!((sd - bn.gamma[c].abs()).abs() < 1e-4);
    }
    // Running statistics: 0.9·old + 0.1·batch (unbiased variance).
    let mut bn2 = bn.clone();
    bn2.forward_train(x.view()).unwrap();
    let ch0 = x.index_axis(ndarray::Axis(1), 0);
    let m = ch0.mean().unwrap();
    let var_unbiased = ch0.mapv(|v| (v - m).powi(2)).sum() / (ch0.len() - 1) as f64;
    assert!((bn2.running_mean[0] - 0.1 * m).abs() < 1e-12);
    assert!((bn2.running_var[0] - (0.9 + 0.1 * var_unbiased)).abs() < 1e-12);
    // Gradients.
    let go = random4(&mut r, x.dim());
    let grads = bn.backward(&cache, go.view()).unwrap();
    let loss_x = |x: &Array4<f64>| (&bn.clone().forward_train(x.view()).unwrap().0 * &go).sum();
    assert_close(&numeric_grad(&x, loss_x), &grads.input, "dx");
    let dg = numeric_grad(&bn.gamma, |g| {
        let mut b = bn.clone();
        b.gamma = g.clone();
        (&b.forward_train(x.view()).unwrap().0 * &go).sum()
    });
    assert_close(&dg, &grads.gamma, "dγ");
    let db = numeric_grad(&bn.beta, |bt| {
        let mut b = bn.clone();
        b.beta = bt.clone();
        (&b.forward_train(x.view()).unwrap().0 * &go).sum()
    });
    assert_close(&db, &grads.beta, "dβ");
    // Evaluation uses the running statistics.
    let eval = bn2.forward_eval(x.view()).unwrap();
    let expected =
        (x[[0, 0, 0, 0]] - bn2.running_mean[0]) / (bn2.running_var[0] + 1e-5).sqrt() * 1.5 + 0.1;
    assert!((eval[[0, 0, 0, 0]] - expected).abs() < 1e-12);
    assert!(BatchNorm2d::<f64>::new(2).forward_eval(x.view()).is_err());
}

#[test]
fn sgd_matches_pytorch_update_rule() {
    let sgd = Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.01,
        schedule: LrSchedule::Constant,
    };
    let mut p = ArrayD::from_shape_vec(IxDyn(&[2]), vec![1.0f64, -2.0]).unwrap();
    let g = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.5, 0.5]).unwrap();
    let mut state = SgdState::default();
    // Step 1: d = g + λp = (0.51, 0.48); v = d; p −= 0.1·v.
    sgd.step(0.0, p.view_mut(), g.view(), &mut state).unwrap();
    assert!((p[0] - (1.0 - 0.051)).abs() < 1e-15 && (p[1] - (-2.0 - 0.048)).abs() < 1e-15);
    // Step 2: d = g + λp; v = 0.9·v + d.
    let d0 = 0.5 + 0.01 * p[0];
    let v0 = 0.9 * 0.51 + d0;
    let before = p[0];
    sgd.step(0.0, p.view_mut(), g.view(), &mut state).unwrap();
    assert!((p[0] - (before - 0.1 * v0)).abs() < 1e-15);
    let wrong = ArrayD::from_shape_vec(IxDyn(&[3]), vec![0.0; 3]).unwrap();
    assert!(sgd
        .step(0.0, p.view_mut(), wrong.view(), &mut state)
        .is_err());
}

#[test]
fn learning_rate_schedules() {
    let step = Sgd {
        lr: 5e-3,
        momentum: 0.9,
        weight_decay: 0.0,
        schedule: LrSchedule::Step {
            milestones: vec![150, 225],
            gamma: 0.1,
        },
    };
    assert_eq!(step.lr_at(0.0), 5e-3);
    assert_eq!(step.lr_at(149.99), 5e-3);
    assert!((step.lr_at(150.0) - 5e-4).abs() < 1e-18);
    assert!((step.lr_at(299.0) - 5e-5).abs() < 1e-18);
    let cosine = Sgd {
        schedule: LrSchedule::Cosine { epochs: 10 },
        ..step
    };
    assert_eq!(cosine.lr_at(0.0), 5e-3);
    assert!((cosine.lr_at(5.0) - 2.5e-3).abs() < 1e-15);
    assert!(cosine.lr_at(10.0).abs() < 1e-18);
    // Within an epoch (per-step annealing): 0.5·(1 + cos(π·t)) by hand at t = 0.25 and 0.95.
    let quarter = 5e-3 * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2);
    assert!((cosine.lr_at(2.5) - quarter).abs() < 1e-15);
    let late = 5e-3 * 0.5 * (1.0 + (0.95 * std::f64::consts::PI).cos());
    assert!((cosine.lr_at(9.5) - late).abs() < 1e-15);
    assert!(cosine.lr_at(9.5) < cosine.lr_at(9.0) && cosine.lr_at(9.5) > 0.0);
}

#[test]
fn sgd_refuses_a_negative_or_non_finite_position_and_changes_nothing() {
    let sgd = Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
        schedule: LrSchedule::Cosine { epochs: 3 },
    };
    let mut p = ArrayD::from_shape_vec(IxDyn(&[2]), vec![1.0f64, -2.0]).unwrap();
    let g = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.5, 0.5]).unwrap();
    let mut state = SgdState::default();
    for bad in [-0.5, f64::NAN, f64::INFINITY] {
        let err = sgd.step(bad, p.view_mut(), g.view(), &mut state);
        assert!(
            matches!(
                err,
                Err(clustered_conv::Error::InvalidParameter { name: "epoch", .. })
            ),
            "{bad}: {err:?}"
        );
    }
    assert_eq!(p.as_slice().unwrap(), &[1.0, -2.0]);
    sgd.step(0.5, p.view_mut(), g.view(), &mut state).unwrap();
    assert!(p[0] < 1.0);
}

#[test]
fn sgd_refuses_bad_settings_and_changes_nothing() {
    let good = Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-4,
        schedule: LrSchedule::Step {
            milestones: vec![1],
            gamma: 0.1,
        },
    };
    let mut bad_settings = Vec::new();
    for bad in [-0.1, f64::NAN, f64::INFINITY] {
        bad_settings.push((
            "lr",
            Sgd {
                lr: bad,
                ..good.clone()
            },
        ));
        bad_settings.push((
            "momentum",
            Sgd {
                momentum: bad,
                ..good.clone()
            },
        ));
        bad_settings.push((
            "weight_decay",
            Sgd {
                weight_decay: bad,
                ..good.clone()
            },
        ));
        let schedule = LrSchedule::Step {
            milestones: vec![1],
            gamma: bad,
        };
        bad_settings.push((
            "gamma",
            Sgd {
                schedule,
                ..good.clone()
            },
        ));
    }
    let mut r = rng(95);
    let mut net = small_network(&mut r);
    let x = random4(&mut r, (3, 2, 4, 4));
    let (logits, tape) = net.forward_train(x.view()).unwrap();
    let (_, grad) = softmax_cross_entropy(logits.view(), &[0, 3, 4]).unwrap();
    let grads = net.backward(&tape, grad).unwrap();
    let before = net.clone();
    let mut states = Vec::new();
    for (name, sgd) in &bad_settings {
        let err = net.sgd_step(&grads, sgd, 0.0, &mut states);
        assert!(
            matches!(&err, Err(clustered_conv::Error::InvalidParameter { name: n, .. }) if n == name),
            "{name}: {err:?}"
        );
        let mut p = ArrayD::from_elem(IxDyn(&[2]), 1.0f64);
        let g = ArrayD::from_elem(IxDyn(&[2]), 0.5f64);
        assert!(sgd
            .step(0.0, p.view_mut(), g.view(), &mut SgdState::default())
            .is_err());
        assert_eq!(p, ArrayD::from_elem(IxDyn(&[2]), 1.0));
    }
    assert!(net == before && states.is_empty());
    // A zero rate is valid (PyTorch allows it) and leaves the weights as they were.
    let frozen = Sgd {
        lr: 0.0,
        weight_decay: 0.0,
        ..good.clone()
    };
    net.sgd_step(&grads, &frozen, 0.0, &mut states).unwrap();
    assert!(net == before && !states.is_empty());
    net.sgd_step(&grads, &good, 0.0, &mut states).unwrap();
    assert!(net != before);
}

// ---------------------------------------------------------------------------------------
// The network container

use clustered_conv::nn::{Layer, Network};
use clustered_conv::{
    ClusteredConv2d, Codebooks, CompressionConfig, Conv2d, ConvGeometry, KernelCodebook,
    ScaleScheme, ScaleStorage,
};

/// conv(bias) → BN → ReLU → pool → clustered(scales, bias) → ReLU → flatten → linear, in f64,
/// with the clustered layer on a codebook shared with a second clustered layer.
pub(crate) fn small_network(r: &mut rand_chacha::ChaCha8Rng) -> Network<f64> {
    let conv = Conv2d::new(
        random4(r, (3, 2, 3, 3)),
        Some(Array1::from_shape_fn(3, |o| o as f64 * 0.1)),
        ConvGeometry::default().padding(1, 1),
    )
    .unwrap();
    let mut bn = BatchNorm2d::new(3);
    bn.gamma = Array1::from_shape_fn(3, |c| 1.0 + 0.2 * c as f64);
    bn.beta = Array1::from_shape_fn(3, |c| 0.1 * c as f64);
    let codebook = KernelCodebook::from_centroids(
        random4(r, (1, 3, 3, 3))
            .into_shape_with_order((3, 3, 3))
            .unwrap(),
        clustered_conv::Symmetry::Flip,
    )
    .unwrap();
    let clustered = |r: &mut rand_chacha::ChaCha8Rng, cout: usize, cin: usize| {
        let idx = Array2::from_shape_fn((cout, cin), |_| r.random_range(0..6u32));
        let scales = Array2::from_shape_fn((cout, cin), |_| r.random_range(0.5..1.5));
        let bias = Array1::from_shape_fn(cout, |o| 0.05 * o as f64);
        Layer::Clustered {
            layer: Box::new(
                ClusteredConv2d::new(
                    idx,
                    Some(scales),
                    Some(bias),
                    ConvGeometry::default().padding(1, 1),
                )
                .unwrap(),
            ),
            codebook: 0,
        }
    };
    let c1 = clustered(r, 4, 3);
    let c2 = clustered(r, 4, 4);
    let fc = Linear {
        weight: Array2::from_shape_fn((5, 4 * 2 * 2), |_| r.random_range(-0.5..0.5)),
        bias: Array1::from_shape_fn(5, |j| 0.01 * j as f64),
    };
    let mut net = Network::new(vec![
        Layer::Conv(conv),
        Layer::BatchNorm(bn),
        Layer::Relu,
        Layer::MaxPool(MaxPool2d {
            kernel: 2,
            stride: 2,
            padding: 0,
        }),
        c1,
        Layer::Relu,
        c2,
        Layer::Flatten,
        Layer::Linear(fc),
    ]);
    net.codebooks = Codebooks::from(vec![codebook]);
    net
}

pub(crate) fn network_loss(net: &Network<f64>, x: &Array4<f64>, labels: &[usize]) -> f64 {
    let mut net = net.clone();
    let (logits, _) = net.forward_train(x.view()).unwrap();
    softmax_cross_entropy(logits.view(), labels).unwrap().0
}

#[test]
fn whole_network_gradients_match_finite_differences() {
    let mut r = rng(91);
    let net = small_network(&mut r);
    let x = random4(&mut r, (3, 2, 4, 4));
    assert_network_gradients(&net, &x, &[0, 3, 4]);
}

/// Every gradient of `net` (input, shared centroids, each layer's parameters) against
/// central finite differences of the softmax cross-entropy of its training-mode logits.
pub(crate) fn assert_network_gradients(net: &Network<f64>, x: &Array4<f64>, labels: &[usize]) {
    use clustered_conv::nn::LayerGrads;
    let net = net.clone();
    let mut trained = net.clone();
    let (logits, tape) = trained.forward_train(x.view()).unwrap();
    let (_, grad) = softmax_cross_entropy(logits.view(), labels).unwrap();
    let grads = net.backward(&tape, grad).unwrap();
    // Input.
    assert_close(
        &numeric_grad(x, |x| network_loss(&net, x, labels)),
        &grads.input,
        "&grads.input (1)",
    );
    // Shared centroids: the sum over both clustered layers.
    let numeric = numeric_grad(net.codebooks.get(0).unwrap().centroids(), |c| {
        let mut n = net.clone();
        n.codebooks.set_centroids(0, c.clone()).unwrap();
        network_loss(&n, x, labels)
    });
    assert_close(&numeric, &grads.codebooks[0], "&grads.codebooks[0] (2)");
    // Every layer's own parameters.
    for (l, g) in grads.layers.iter().enumerate() {
        match (&net.layers[l], g) {
            (Layer::Conv(c), LayerGrads::Conv(gw, gb)) => {
                let numeric = numeric_grad(c.weight(), |w| {
                    let mut n = net.clone();
                    n.layers[l] = Layer::Conv(
                        Conv2d::new(w.clone(), c.bias().cloned(), c.geometry()).unwrap(),
                    );
                    network_loss(&n, x, labels)
                });
                assert_close(&numeric, gw, "gw (3)");
                let numeric = numeric_grad(c.bias().unwrap(), |b| {
                    let mut n = net.clone();
                    n.layers[l] = Layer::Conv(
                        Conv2d::new(c.weight().clone(), Some(b.clone()), c.geometry()).unwrap(),
                    );
                    network_loss(&n, x, labels)
                });
                // Batch norm right after cancels the conv bias: the gradient is ~0 both ways.
                assert_close(&numeric, gb.as_ref().unwrap(), "gb.as_ref().unwrap() (4)");
            }
            (Layer::BatchNorm(bn), LayerGrads::BatchNorm(gg, gb)) => {
                let numeric = numeric_grad(&bn.gamma, |v| {
                    let mut n = net.clone();
                    if let Layer::BatchNorm(b) = &mut n.layers[l] {
                        b.gamma = v.clone();
                    }
                    network_loss(&n, x, labels)
                });
                assert_close(&numeric, gg, "gg (5)");
                let numeric = numeric_grad(&bn.beta, |v| {
                    let mut n = net.clone();
                    if let Layer::BatchNorm(b) = &mut n.layers[l] {
                        b.beta = v.clone();
                    }
                    network_loss(&n, x, labels)
                });
                assert_close(&numeric, gb, "gb (6)");
            }
            (Layer::Clustered { layer, .. }, LayerGrads::Clustered(gs, gb)) => {
                let numeric = numeric_grad(&layer.scales().map(|s| s.to_array()).unwrap(), |s| {
                    let mut n = net.clone();
                    if let Layer::Clustered { layer, .. } = &mut n.layers[l] {
                        layer
                            .set_params(Some(s.clone()), layer.bias().cloned())
                            .unwrap();
                    }
                    network_loss(&n, x, labels)
                });
                assert_close(&numeric, gs.as_ref().unwrap(), "gs.as_ref().unwrap() (7)");
                let numeric = numeric_grad(layer.bias().unwrap(), |b| {
                    let mut n = net.clone();
                    if let Layer::Clustered { layer, .. } = &mut n.layers[l] {
                        layer
                            .set_params(layer.scales().map(|s| s.to_array()), Some(b.clone()))
                            .unwrap();
                    }
                    network_loss(&n, x, labels)
                });
                assert_close(&numeric, gb.as_ref().unwrap(), "gb.as_ref().unwrap() (8)");
            }
            (Layer::Linear(lin), LayerGrads::Linear(gw, gb)) => {
                let numeric = numeric_grad(&lin.weight, |w| {
                    let mut n = net.clone();
                    if let Layer::Linear(f) = &mut n.layers[l] {
                        f.weight = w.clone();
                    }
                    network_loss(&n, x, labels)
                });
                assert_close(&numeric, gw, "gw (9)");
                let numeric = numeric_grad(&lin.bias, |b| {
                    let mut n = net.clone();
                    if let Layer::Linear(f) = &mut n.layers[l] {
                        f.bias = b.clone();
                    }
                    network_loss(&n, x, labels)
                });
                assert_close(&numeric, gb, "gb (10)");
            }
            (
                Layer::Relu
                | Layer::MaxPool(_)
                | Layer::AvgPool(_)
                | Layer::GlobalAvgPool
                | Layer::Flatten
                | Layer::Add,
                LayerGrads::None,
            ) => {}
            (layer, g) => panic!("layer {l}: {layer:?} got {g:?}"),
        }
    }
}

#[test]
fn fine_tuning_keeps_assignments_and_at_most_k_distinct_kernels() {
    let mut r = rng(92);
    // A dense network, compressed with one shared codebook (K = 5, f16 scales).
    let conv = |r: &mut rand_chacha::ChaCha8Rng, o, i| {
        Layer::Conv(
            Conv2d::new(
                random4(r, (o, i, 3, 3)),
                None,
                ConvGeometry::default().padding(1, 1),
            )
            .unwrap(),
        )
    };
    let dense = Network::new(vec![
        conv(&mut r, 6, 2),
        Layer::Relu,
        conv(&mut r, 6, 6),
        Layer::Flatten,
        Layer::Linear(Linear {
            weight: Array2::from_shape_fn((3, 6 * 16), |_| r.random_range(-0.1..0.1)),
            bias: Array1::zeros(3),
        }),
    ]);
    let config = CompressionConfig::new(
        KernelCodebook::params(5).scale_scheme(ScaleScheme::L2(ScaleStorage::F16)),
    );
    let mut net = dense.compress(&config).unwrap();
    assert_eq!(net.codebooks.len(), 1);
    let clustered_layers = |net: &Network<f64>| -> Vec<ClusteredConv2d<f64>> {
        net.layers
            .iter()
            .filter_map(|l| match l {
                Layer::Clustered { layer, .. } => Some((**layer).clone()),
                _ => None,
            })
            .collect()
    };
    // f16 scales are held as f16 until training writes new ones.
    assert!(clustered_layers(&net)
        .iter()
        .all(|l| l.scales().is_some_and(|s| s.are_half())));
    let indices_before: Vec<Array2<u32>> = net
        .layers
        .iter()
        .filter_map(|l| match l {
            Layer::Clustered { layer, .. } => Some(layer.indices().to_array()),
            _ => None,
        })
        .collect();
    assert_eq!(indices_before.len(), 2);
    let x = random4(&mut r, (4, 2, 4, 4));
    let labels = [0, 1, 2, 1];
    let sgd = Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 1e-4,
        schedule: LrSchedule::Constant,
    };
    let mut states = Vec::new();
    let first = net
        .train_step(x.view(), &labels, &sgd, 0.0, &mut states)
        .unwrap();
    let mut last = first;
    for _ in 0..30 {
        last = net
            .train_step(x.view(), &labels, &sgd, 0.0, &mut states)
            .unwrap();
    }
    assert!(last < first * 0.5, "loss {first} → {last}");
    let cb = net.codebooks.get(0).unwrap();
    let mut clustered = 0;
    for layer in &net.layers {
        if let Layer::Clustered { layer, .. } = layer {
            assert_eq!(layer.indices().to_array(), indices_before[clustered]);
            clustered += 1;
            // Every kernel divided by its scale is one of the K centroids.
            let w = layer.to_conv(cb).unwrap().weight().clone();
            let mut distinct: Vec<Vec<i64>> = Vec::new();
            for ((o, i), &s) in layer.scales().map(|s| s.to_array()).unwrap().indexed_iter() {
                let k: Vec<i64> = w
                    .slice(ndarray::s![o, i, .., ..])
                    .iter()
                    .map(|v| (v / s * 1e9).round() as i64)
                    .collect();
                if !distinct.contains(&k) {
                    distinct.push(k);
                }
            }
            assert!(distinct.len() <= 5, "{} distinct kernels", distinct.len());
        }
    }
    // The centroids did move.
    let original = dense.compress(&config).unwrap();
    assert_ne!(
        original.codebooks.get(0).unwrap().centroids(),
        cb.centroids()
    );
    // Trained scales are held as f64; rounding to f16 holds them as f16 again.
    let trained = clustered_layers(&net);
    assert!(trained
        .iter()
        .all(|l| !l.scales().is_some_and(|s| s.are_half())));
    net.round_scales().unwrap();
    for (layer, before) in clustered_layers(&net).iter().zip(&trained) {
        assert!(layer.scales().is_some_and(|s| s.are_half()));
        let want = before
            .scales()
            .map(|s| s.to_array())
            .unwrap()
            .mapv(|s| ScaleScheme::L2(ScaleStorage::F16).round(s));
        assert_eq!(layer.scales().map(|s| s.to_array()).unwrap(), want);
    }
}

#[test]
fn random_crop_flip_shifts_and_mirrors_every_image() {
    use clustered_conv::nn::random_crop_flip;
    let x = Array4::from_shape_fn((40, 2, 5, 6), |(n, c, y, x)| {
        (n * 1000 + c * 100 + y * 10 + x) as f64
    });
    let out = random_crop_flip(x.view(), 2, -1.0, &mut rng(93));
    let mut flipped = 0;
    for n in 0..40 {
        // Find the offset and flip that explain image n: exactly one must.
        let mut matches = 0;
        for flip in [false, true] {
            for dy in -2i32..=2 {
                for dx in -2i32..=2 {
                    let ok = ndarray::Zip::indexed(out.slice(ndarray::s![n, .., .., ..])).all(
                        |(c, y, xx), &v| {
                            let sy = y as i32 + dy;
                            let shifted = xx as i32 + dx;
                            let sx = if flip { 5 - shifted } else { shifted };
                            if (0..5).contains(&sy) && (0..6).contains(&sx) {
                                v == x[[n, c, sy as usize, sx as usize]]
                            } else {
                                v == -1.0
                            }
                        },
                    );
                    if ok {
                        matches += 1;
                        flipped += usize::from(flip);
                    }
                }
            }
        }
        assert_eq!(matches, 1, "image {n}");
    }
    assert!((10..=30).contains(&flipped), "{flipped} of 40 flipped");
}

#[test]
fn batch_norm_recalibration_averages_the_batch_statistics() {
    let mut r = rng(94);
    let conv = Conv2d::new(
        random4(&mut r, (3, 2, 3, 3)),
        None,
        ConvGeometry::default().padding(1, 1),
    )
    .unwrap();
    let mut net = Network::new(vec![
        Layer::Conv(conv.clone()),
        Layer::BatchNorm(BatchNorm2d::new(3)),
        Layer::Flatten,
    ]);
    let batches: Vec<Array4<f64>> = (0..4).map(|_| random4(&mut r, (5, 2, 4, 4))).collect();
    net.recalibrate_batch_norm(batches.iter().map(|b| b.view()))
        .unwrap();
    let Layer::BatchNorm(bn) = &net.layers[1] else {
        panic!()
    };
    assert_eq!(bn.momentum, 0.1, "momentum restored");
    for c in 0..3 {
        let (mut mean, mut var) = (0.0, 0.0);
        for b in &batches {
            let y = conv.forward(b.view()).unwrap();
            let plane = y.index_axis(ndarray::Axis(1), c);
            let n = plane.len() as f64;
            let m = plane.sum() / n;
            mean += m / 4.0;
            var += plane.mapv(|v| (v - m).powi(2)).sum() / (n - 1.0) / 4.0;
        }
        assert!((bn.running_mean[c] - mean).abs() < 1e-12, "mean {c}");
        assert!((bn.running_var[c] - var).abs() < 1e-12, "var {c}");
    }
    // Failures leave the statistics untouched: no batches, or a batch of the wrong shape.
    let before = net.clone();
    assert!(matches!(
        net.recalibrate_batch_norm(std::iter::empty()),
        Err(Error::Empty { .. })
    ));
    let wrong = random4(&mut r, (5, 7, 4, 4));
    assert!(net
        .recalibrate_batch_norm([batches[0].view(), wrong.view()])
        .is_err());
    assert_eq!(net, before);
}

#[test]
fn sgd_updates_half_scales_in_place_and_holds_them_as_f_until_rounded() {
    use clustered_conv::nn::LayerGrads;
    let mut r = rng(94);
    let mut net = small_network(&mut r);
    // Layer 4 holds its scales as f16, with one kernel pruned.
    let Layer::Clustered { layer, .. } = &mut net.layers[4] else {
        panic!("clustered")
    };
    let mask = Array2::from_shape_fn((4, 3), |(o, i)| (o, i) != (1, 2));
    **layer = (**layer)
        .clone()
        .with_mask(mask)
        .unwrap()
        .with_half_scales()
        .unwrap();
    let before = layer.scales().map(|s| s.to_array()).unwrap();
    let bias_before = layer.bias().unwrap().clone();
    let x = random4(&mut r, (3, 2, 4, 4));
    let (logits, tape) = net.forward_train(x.view()).unwrap();
    let (_, grad) = softmax_cross_entropy(logits.view(), &[0, 3, 4]).unwrap();
    let grads = net.backward(&tape, grad).unwrap();
    let LayerGrads::Clustered(Some(gs), Some(gb)) = &grads.layers[4] else {
        panic!("clustered gradients")
    };
    let sgd = Sgd {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.0,
        schedule: LrSchedule::Constant,
    };
    net.sgd_step(&grads, &sgd, 0.0, &mut Vec::new()).unwrap();
    let Layer::Clustered { layer, .. } = &net.layers[4] else {
        panic!("clustered")
    };
    // p − lr·g from the (exactly widened) f16 values; the pruned kernel stays 0.
    let want = &before - &(gs * 0.1);
    assert_eq!(want[[1, 2]], 0.0);
    assert_eq!(layer.scales().map(|s| s.to_array()).unwrap(), want);
    assert_eq!(layer.bias().unwrap(), &(&bias_before - &(gb * 0.1)));
    assert!(!layer.scales().is_some_and(|s| s.are_half()));
    // Rounding brings them back to f16 (the codebook's default storage).
    net.round_scales().unwrap();
    let Layer::Clustered { layer, .. } = &net.layers[4] else {
        panic!("clustered")
    };
    assert!(layer.scales().is_some_and(|s| s.are_half()));
    assert_eq!(
        layer.scales().map(|s| s.to_array()).unwrap(),
        want.mapv(|s| f64::from(half::f16::from_f64(s)))
    );
}

#[test]
fn a_missing_codebook_or_foreign_gradients_are_errors_not_panics() {
    let mut r = rng(95);
    let net = small_network(&mut r);
    let x = random4(&mut r, (3, 2, 4, 4));
    let mut trained = net.clone();
    let (logits, tape) = trained.forward_train(x.view()).unwrap();
    let (_, grad) = softmax_cross_entropy(logits.view(), &[0, 3, 4]).unwrap();
    let grads = net.backward(&tape, grad.clone()).unwrap();

    let mut broken = net.clone();
    if let Layer::Clustered { codebook, .. } = &mut broken.layers[6] {
        *codebook = 3;
    }
    let missing = |e: Error| {
        matches!(
            e,
            Error::CodebookOutOfRange {
                codebook: 3,
                codebooks: 1
            }
        )
    };
    assert!(missing(broken.forward(x.view()).unwrap_err()));
    assert!(missing(broken.clone().forward_train(x.view()).unwrap_err()));
    assert!(missing(broken.backward(&tape, grad).unwrap_err()));
    assert!(missing(broken.clone().round_scales().unwrap_err()));
    assert!(matches!(
        broken
            .codebooks
            .set_centroids(1, ndarray::Array3::zeros((3, 3, 3))),
        Err(Error::CodebookOutOfRange {
            codebook: 1,
            codebooks: 1
        })
    ));

    // Gradients of a network whose layer 0 is a convolution, not a batch norm.
    let sgd = Sgd {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.0,
        schedule: LrSchedule::Constant,
    };
    let mut other = net.clone();
    other.layers.swap(0, 1);
    assert!(matches!(
        other
            .sgd_step(&grads, &sgd, 0.0, &mut Vec::new())
            .unwrap_err(),
        Error::LayerMismatch {
            what: "the gradients",
            layer: 0,
            expected: "a batch norm",
            got: "convolution gradients",
        }
    ));
    let mut fewer = grads.clone();
    fewer.layers.pop();
    assert!(matches!(
        net.clone().sgd_step(&fewer, &sgd, 0.0, &mut Vec::new()),
        Err(Error::ShapeMismatch { .. })
    ));
}
