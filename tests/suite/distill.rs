//! The fine-tuning recipe's training pieces: the knowledge-distillation loss (against a naive
//! reference, central finite differences in f64, and cross-entropy, its special cases),
//! training with it, and per-kernel importance (against finite differences).

use crate::common::{numeric_grad, random4, rng};
use clustered_conv::nn::{
    distillation_loss, softmax_cross_entropy, Distillation, Layer, Linear, LrSchedule, Network,
    Sgd, SgdState,
};
use clustered_conv::{Conv2d, ConvGeometry, Error, KernelCodebook, ScaleScheme};
use ndarray::{array, Array1, Array2, Array4};
use rand::Rng;

fn close(numeric: f64, analytic: f64) -> bool {
    (numeric - analytic).abs() <= 1e-6 + 1e-6 * numeric.abs()
}

/// Softmax of a row, the plain way (no max subtraction: the test logits are small).
fn naive_softmax(row: &[f64], t: f64) -> Vec<f64> {
    let e: Vec<f64> = row.iter().map(|v| (v / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Hinton et al.'s loss written out from its definition.
fn naive_distillation(s: &Array2<f64>, t: &Array2<f64>, labels: &[usize], d: Distillation) -> f64 {
    let (temp, alpha) = (d.temperature, d.alpha);
    let mut total = 0.0;
    for (r, &label) in labels.iter().enumerate() {
        let (sr, tr) = (s.row(r).to_vec(), t.row(r).to_vec());
        let p = naive_softmax(&tr, temp);
        let q = naive_softmax(&sr, temp);
        let kl: f64 = p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum();
        let ce = -naive_softmax(&sr, 1.0)[label].ln();
        total += alpha * temp * temp * kl + (1.0 - alpha) * ce;
    }
    total / labels.len() as f64
}

fn random_logits(seed: u64, n: usize, c: usize, scale: f64) -> Array2<f64> {
    let mut r = rng(seed);
    Array2::from_shape_simple_fn((n, c), || r.random_range(-scale..scale))
}

#[test]
fn loss_matches_the_definition_and_its_gradient_finite_differences() {
    let s = random_logits(1, 6, 10, 3.0);
    let t = random_logits(2, 6, 10, 5.0);
    let labels = [0, 9, 3, 3, 7, 1];
    for d in [
        Distillation::new(1.0, 0.5),
        Distillation::default(),
        Distillation::new(2.5, 1.0),
        Distillation::new(7.0, 0.3),
    ] {
        let (loss, grad) = distillation_loss(s.view(), t.view(), &labels, &d).unwrap();
        let reference = naive_distillation(&s, &t, &labels, d);
        assert!(
            (loss - reference).abs() <= 1e-12 * reference.abs(),
            "{d:?}: {loss} vs {reference}"
        );
        let numeric = numeric_grad(&s, |s| {
            distillation_loss(s.view(), t.view(), &labels, &d)
                .unwrap()
                .0
        });
        for (n, a) in numeric.iter().zip(grad.iter()) {
            assert!(close(*n, *a), "{d:?}: d/dstudent {n} vs {a}");
        }
    }
}

#[test]
fn defaults_are_temperature_4_and_alpha_0_9() {
    assert_eq!(Distillation::default(), Distillation::new(4.0, 0.9));
}

#[test]
fn alpha_zero_is_exactly_cross_entropy() {
    let s = random_logits(3, 5, 7, 4.0);
    let t = random_logits(4, 5, 7, 4.0);
    let labels = [6, 0, 2, 2, 5];
    let (ce, ce_grad) = softmax_cross_entropy(s.view(), &labels).unwrap();
    for temperature in [1.0, 3.0, 20.0] {
        let d = Distillation::new(temperature, 0.0);
        let (loss, grad) = distillation_loss(s.view(), t.view(), &labels, &d).unwrap();
        assert_eq!(loss.to_bits(), ce.to_bits());
        assert_eq!(grad, ce_grad);
    }
    // f32 logits too.
    let s32 = s.mapv(|v| v as f32);
    let t32 = t.mapv(|v| v as f32);
    let d = Distillation::new(2.0, 0.0);
    assert_eq!(
        distillation_loss(s32.view(), t32.view(), &labels, &d).unwrap(),
        softmax_cross_entropy(s32.view(), &labels).unwrap()
    );
}

#[test]
fn a_one_hot_teacher_at_temperature_1_gives_cross_entropy_minus_its_entropy() {
    let s = random_logits(5, 4, 6, 2.0);
    let labels = [2, 5, 0, 3];
    // The teacher puts 40 nats on the label: its probabilities are one-hot to ~1e-17.
    let t = Array2::from_shape_fn((4, 6), |(r, j)| if j == labels[r] { 40.0 } else { 0.0 });
    let entropy: f64 = (0..4)
        .map(|r| {
            let p = naive_softmax(&t.row(r).to_vec(), 1.0);
            -p.iter().map(|&p| p * p.ln()).sum::<f64>()
        })
        .sum::<f64>()
        / 4.0;
    assert!(entropy > 0.0 && entropy < 1e-14);
    let (ce, ce_grad) = softmax_cross_entropy(s.view(), &labels).unwrap();
    let d = Distillation::new(1.0, 1.0);
    let (loss, grad) = distillation_loss(s.view(), t.view(), &labels, &d).unwrap();
    assert!(
        (loss - (ce - entropy)).abs() < 1e-13,
        "{loss} vs {ce} − {entropy}"
    );
    for (g, c) in grad.iter().zip(&ce_grad) {
        assert!((g - c).abs() < 1e-15, "{g} vs {c}");
    }
    // Any α mixes two equal terms.
    let (mixed, _) =
        distillation_loss(s.view(), t.view(), &labels, &Distillation::new(1.0, 0.4)).unwrap();
    assert!((mixed - ce).abs() < 1e-13);
}

#[test]
fn hand_computed_value_with_the_temperature_squared_factor() {
    // Two classes, T = 2, α = 1: teacher (0, 2 ln 3) → p = (1/4, 3/4); student 0 → q = ½.
    // KL = ¼ ln(½) + ¾ ln(3/2); loss = T²·KL; gradient T·(q − p) = 2·(¼, −¼).
    let s = array![[0.0, 0.0]];
    let t = array![[0.0, 2.0 * 3f64.ln()]];
    let d = Distillation::new(2.0, 1.0);
    let (loss, grad) = distillation_loss(s.view(), t.view(), &[0], &d).unwrap();
    let kl = 0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln();
    assert!((loss - 4.0 * kl).abs() < 1e-15, "{loss} vs {}", 4.0 * kl);
    assert!((grad[[0, 0]] - 0.5).abs() < 1e-15 && (grad[[0, 1]] + 0.5).abs() < 1e-15);
}

#[test]
fn a_student_equal_to_its_teacher_has_no_soft_loss_and_large_logits_stay_finite() {
    let t = random_logits(6, 3, 5, 3.0);
    let d = Distillation::new(3.0, 1.0);
    let (loss, grad) = distillation_loss(t.view(), t.view(), &[0, 1, 2], &d).unwrap();
    assert!(loss.abs() < 1e-15);
    assert!(grad.iter().all(|g| g.abs() < 1e-16));
    let s = array![[1000.0, -1000.0, 0.0]];
    let t = array![[-900.0, 1200.0, 0.0]];
    let (loss, grad) =
        distillation_loss(s.view(), t.view(), &[1], &Distillation::new(1.0, 0.5)).unwrap();
    assert!(loss.is_finite() && loss > 100.0);
    assert!(grad.iter().all(|g: &f64| g.is_finite()));
}

#[test]
fn rejects_bad_settings_shapes_labels_and_logits() {
    let s = random_logits(7, 3, 4, 1.0);
    let t = random_logits(8, 3, 4, 1.0);
    let labels = [0, 1, 3];
    let bad_setting = |d: Distillation, name: &str| {
        let e = distillation_loss(s.view(), t.view(), &labels, &d).unwrap_err();
        assert!(
            matches!(e, Error::InvalidParameter { name: n, .. } if n == name),
            "{d:?}: {e}"
        );
    };
    for temperature in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        bad_setting(Distillation::new(temperature, 0.5), "temperature");
    }
    for alpha in [-0.1, 1.1, f64::NAN] {
        bad_setting(Distillation::new(2.0, alpha), "alpha");
    }
    let d = Distillation::default();
    let t_wide = random_logits(9, 3, 5, 1.0);
    let e = distillation_loss(s.view(), t_wide.view(), &labels, &d).unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { ref expected, ref got, .. }
        if *expected == vec![3, 4] && *got == vec![3, 5])
    );
    let e = distillation_loss(s.view(), t.view(), &labels[..2], &d).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }));
    let e = distillation_loss(s.view(), t.view(), &[0, 1, 4], &d).unwrap_err();
    assert!(matches!(e, Error::InvalidParameter { name: "label", value, .. } if value == 4.0));
    let empty = Array2::<f64>::zeros((0, 4));
    let e = distillation_loss(empty.view(), empty.view(), &[], &d).unwrap_err();
    assert!(matches!(e, Error::ZeroSize { .. }));
    let mut t_nan = t.clone();
    t_nan[[2, 1]] = f64::NAN;
    let e = distillation_loss(s.view(), t_nan.view(), &labels, &d).unwrap_err();
    assert!(matches!(
        e,
        Error::NonFinite {
            what: "teacher logits",
            index: 2
        }
    ));
    let mut s_inf = s.clone();
    s_inf[[1, 0]] = f64::INFINITY;
    let e = distillation_loss(s_inf.view(), t.view(), &labels, &d).unwrap_err();
    assert!(matches!(
        e,
        Error::NonFinite {
            what: "student logits",
            index: 1
        }
    ));
}

/// Conv (2 → 3, 3×3, padding 1) → ReLU → flatten → linear (3·4·4 → 4).
fn tiny_network(seed: u64) -> Network<f64> {
    let mut r = rng(seed);
    let conv = Conv2d::new(
        random4(&mut r, (3, 2, 3, 3)).mapv(|v| v * 0.5),
        Some(Array1::from_vec(vec![0.1, -0.1, 0.05])),
        ConvGeometry::default().padding(1, 1),
    )
    .unwrap();
    let fc = Linear {
        weight: Array2::from_shape_simple_fn((4, 3 * 4 * 4), || r.random_range(-0.3..0.3)),
        bias: Array1::zeros(4),
    };
    Network::new(vec![
        Layer::Conv(conv),
        Layer::Relu,
        Layer::Flatten,
        Layer::Linear(fc),
    ])
}

fn sgd() -> Sgd {
    Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 1e-4,
        schedule: LrSchedule::Constant,
    }
}

#[test]
fn train_step_distill_with_alpha_zero_is_train_step() {
    let mut r = rng(11);
    let x = random4(&mut r, (5, 2, 4, 4));
    let labels = [0, 3, 1, 2, 3];
    let teacher = tiny_network(12).forward(x.view()).unwrap();
    let (mut a, mut b) = (tiny_network(13), tiny_network(13));
    let (mut sa, mut sb): (Vec<SgdState<f64>>, Vec<SgdState<f64>>) = (Vec::new(), Vec::new());
    let hard = Distillation::new(4.0, 0.0);
    for _ in 0..3 {
        let la = a
            .train_step(x.view(), &labels, &sgd(), 0.0, &mut sa)
            .unwrap();
        let lb = b
            .train_step_distill(
                x.view(),
                &labels,
                teacher.view(),
                &hard,
                &sgd(),
                0.0,
                &mut sb,
            )
            .unwrap();
        assert_eq!(la.to_bits(), lb.to_bits());
    }
    assert_eq!(a, b);
}

#[test]
fn train_step_distill_pulls_the_student_towards_the_teacher() {
    let mut r = rng(14);
    let x = random4(&mut r, (8, 2, 4, 4));
    let labels = [0, 3, 1, 2, 3, 0, 1, 2];
    let teacher = tiny_network(15).forward(x.view()).unwrap();
    let mut student = tiny_network(16);
    let soft = Distillation::new(2.0, 1.0);
    let mut states = Vec::new();
    let first = student
        .train_step_distill(
            x.view(),
            &labels,
            teacher.view(),
            &soft,
            &sgd(),
            0.0,
            &mut states,
        )
        .unwrap();
    let mut last = first;
    for _ in 0..40 {
        last = student
            .train_step_distill(
                x.view(),
                &labels,
                teacher.view(),
                &soft,
                &sgd(),
                0.0,
                &mut states,
            )
            .unwrap();
    }
    assert!(last < 0.3 * first, "{first} → {last}");
    // Bad input is rejected before anything changes.
    let before = student.clone();
    let e = student
        .train_step_distill(
            x.view(),
            &labels[..7],
            teacher.view(),
            &soft,
            &sgd(),
            0.0,
            &mut states,
        )
        .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }));
    let e = student
        .train_step_distill(
            x.view(),
            &labels,
            teacher.view(),
            &Distillation::new(0.0, 1.0),
            &sgd(),
            0.0,
            &mut states,
        )
        .unwrap_err();
    assert!(matches!(e, Error::InvalidParameter { .. }));
    let kd = Distillation::default();
    let e = student
        .train_step_distill(
            x.view(),
            &labels,
            teacher.view(),
            &kd,
            &sgd(),
            -1.0,
            &mut states,
        )
        .unwrap_err();
    assert!(matches!(e, Error::InvalidParameter { name: "epoch", .. }));
    let e = student
        .train_step(x.view(), &labels, &sgd(), f64::NAN, &mut states)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidParameter { name: "epoch", .. }));
    assert_eq!(student, before);
}

/// The network's mean cross-entropy on one batch with the first layer's weight replaced.
fn loss_with_conv_weight(net: &Network<f64>, w: &Array4<f64>, x: &Array4<f64>, y: &[usize]) -> f64 {
    let mut net = net.clone();
    let Layer::Conv(c) = &net.layers[0] else {
        unreachable!()
    };
    net.layers[0] = Layer::Conv(Conv2d::new(w.clone(), c.bias().cloned(), c.geometry()).unwrap());
    let logits = net.forward(x.view()).unwrap();
    softmax_cross_entropy(logits.view(), y).unwrap().0
}

#[test]
fn kernel_importance_is_the_mean_squared_gradient_by_finite_differences() {
    let net = tiny_network(21);
    let mut r = rng(22);
    let batches = [
        (random4(&mut r, (3, 2, 4, 4)), vec![0, 1, 3]),
        (random4(&mut r, (2, 2, 4, 4)), vec![2, 2]),
    ];
    let importance = net
        .kernel_importance(batches.iter().map(|(x, y)| (x.view(), &y[..])))
        .unwrap();
    assert_eq!(importance.len(), 4);
    assert!(importance[1..].iter().all(Option::is_none));
    let got = importance[0].as_ref().unwrap();
    let Layer::Conv(c) = &net.layers[0] else {
        unreachable!()
    };
    let w = c.weight().clone();
    let mut expected = Array2::<f64>::zeros((3, 2));
    for (x, y) in &batches {
        let g = numeric_grad(&w, |w| loss_with_conv_weight(&net, w, x, y));
        for ((o, i, _, _), v) in g.indexed_iter() {
            expected[[o, i]] += v * v / batches.len() as f64;
        }
    }
    for (e, g) in expected.iter().zip(got) {
        assert!(close(*e, *g), "{e} vs {g}");
        assert!(*g > 0.0);
    }
    let e = net
        .kernel_importance(std::iter::empty::<(ndarray::ArrayView4<f64>, &[usize])>())
        .unwrap_err();
    assert!(matches!(e, Error::Empty { .. }));
    let e = net
        .kernel_importance([(batches[0].0.view(), &[0usize, 1][..])])
        .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }));
}

#[test]
fn kernel_importance_of_a_clustered_layer_is_that_of_its_dense_equivalent() {
    let net = tiny_network(31);
    let config = clustered_conv::CompressionConfig::new(
        KernelCodebook::params(3).scale_scheme(ScaleScheme::None),
    );
    let compressed = net.compress(&config).unwrap();
    assert!(matches!(compressed.layers[0], Layer::Clustered { .. }));
    let mut dense = compressed.clone();
    if let Layer::Clustered { layer, codebook } = &compressed.layers[0] {
        let conv = layer.to_conv(compressed.codebooks.get(*codebook).unwrap());
        dense.layers[0] = Layer::Conv(conv.unwrap());
    }
    let mut r = rng(32);
    let x = random4(&mut r, (4, 2, 4, 4));
    let y = [1, 0, 3, 2];
    let a = compressed.kernel_importance([(x.view(), &y[..])]).unwrap();
    let b = dense.kernel_importance([(x.view(), &y[..])]).unwrap();
    assert_eq!(a, b);
    assert_eq!(a[0].as_ref().unwrap().dim(), (3, 2));
}

#[test]
fn compress_where_weighted_fits_the_codebooks_with_the_importance() {
    let net = tiny_network(41);
    let mut r = rng(42);
    let x = random4(&mut r, (6, 2, 4, 4));
    let y = [0, 1, 2, 3, 0, 1];
    let importance = net.kernel_importance([(x.view(), &y[..])]).unwrap();
    let config = clustered_conv::CompressionConfig::new(
        KernelCodebook::params(3)
            .seed(5)
            .scale_scheme(ScaleScheme::None),
    );
    let weighted = net
        .compress_where_weighted(&config, |_, _| true, &importance)
        .unwrap();
    let Layer::Conv(c) = &net.layers[0] else {
        unreachable!()
    };
    let h = importance[0].as_ref().unwrap();
    let direct = KernelCodebook::params(3)
        .seed(5)
        .scale_scheme(ScaleScheme::None)
        .fitter(&[c.weight().view()])
        .importance(&[h.view()])
        .run()
        .unwrap();
    assert_eq!(weighted.codebooks.get(0).unwrap(), &direct.codebook);
    let Layer::Clustered { layer, .. } = &weighted.layers[0] else {
        panic!("layer 0 is not clustered")
    };
    assert_eq!(layer.indices().to_array(), direct.assignments[0].indices);
    // Unweighted compression gives another codebook; selecting nothing is an error.
    let plain = net.compress(&config).unwrap();
    assert_ne!(plain.codebooks.get(0).unwrap(), &direct.codebook);
    let e = net
        .compress_where_weighted(&config, |_, _| false, &importance)
        .unwrap_err();
    assert!(matches!(e, Error::Empty { .. }));
    let e = net
        .compress_where_weighted(&config, |_, _| true, &importance[..3])
        .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }));
    let e = net
        .compress_where_weighted(&config, |_, _| true, &[None, None, None, None])
        .unwrap_err();
    assert!(matches!(e, Error::LayerMismatch { layer: 0, .. }));
}
