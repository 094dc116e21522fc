//! The training stack: every backward pass against central finite differences (f64), the loss
//! and SGD against hand-computed values.

mod common;

use clustered_conv::nn::{
    relu, relu_backward, softmax_cross_entropy, BatchNorm2d, Linear, LrSchedule, MaxPool2d, Sgd,
    SgdState,
};
use clustered_conv::Error;
use common::{random4, rng};
use ndarray::{array, Array1, Array2, Array4, ArrayD, IxDyn};
use rand::Rng;

const EPS: f64 = 1e-6;

fn close(numeric: f64, analytic: f64) -> bool {
    (numeric - analytic).abs() <= 1e-6 + 1e-6 * numeric.abs()
}

/// Central differences of `loss` with respect to every element of `x`.
fn numeric_grad<D: ndarray::Dimension>(
    x: &ndarray::Array<f64, D>,
    loss: impl Fn(&ndarray::Array<f64, D>) -> f64,
) -> ndarray::Array<f64, D> {
    let mut g = x.clone();
    for (i, gi) in g.iter_mut().enumerate() {
        let mut xp = x.clone();
        xp.as_slice_mut().unwrap()[i] += EPS;
        let mut xm = x.clone();
        xm.as_slice_mut().unwrap()[i] -= EPS;
        *gi = (loss(&xp) - loss(&xm)) / (2.0 * EPS);
    }
    g
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
            stride: 1
        }
        .forward(x.view()),
        Err(Error::KernelTooLarge { .. })
    ));
    assert!(MaxPool2d {
        kernel: 2,
        stride: 0
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
    sgd.step(0, p.view_mut(), g.view(), &mut state).unwrap();
    assert!((p[0] - (1.0 - 0.051)).abs() < 1e-15 && (p[1] - (-2.0 - 0.048)).abs() < 1e-15);
    // Step 2: d = g + λp; v = 0.9·v + d.
    let d0 = 0.5 + 0.01 * p[0];
    let v0 = 0.9 * 0.51 + d0;
    let before = p[0];
    sgd.step(0, p.view_mut(), g.view(), &mut state).unwrap();
    assert!((p[0] - (before - 0.1 * v0)).abs() < 1e-15);
    let wrong = ArrayD::from_shape_vec(IxDyn(&[3]), vec![0.0; 3]).unwrap();
    assert!(sgd.step(0, p.view_mut(), wrong.view(), &mut state).is_err());
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
    assert_eq!(step.lr_at(0), 5e-3);
    assert!((step.lr_at(150) - 5e-4).abs() < 1e-18);
    assert!((step.lr_at(299) - 5e-5).abs() < 1e-18);
    let cosine = Sgd {
        schedule: LrSchedule::Cosine { epochs: 10 },
        ..step
    };
    assert_eq!(cosine.lr_at(0), 5e-3);
    assert!((cosine.lr_at(5) - 2.5e-3).abs() < 1e-15);
    assert!(cosine.lr_at(10).abs() < 1e-18);
}
