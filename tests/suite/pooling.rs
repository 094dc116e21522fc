//! Pooling layers for ONNX import: `MaxPool2d` with padding, `AvgPool2d` (both
//! `count_include_pad` values) and `GlobalAvgPool`, each forward against a naive reference
//! written from PyTorch's definition and each backward against central finite differences.

use crate::common::{in_pool, numeric_grad, random4, rng};
use clustered_conv::nn::{AvgPool2d, GlobalAvgPool, MaxPool2d};
use clustered_conv::Error;
use ndarray::Array4;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// One pooling problem: input shape `(N, C, H, W)`, and `(kernel, stride, padding)`.
struct Case {
    shape: (usize, usize, usize, usize),
    k: usize,
    s: usize,
    p: usize,
}

/// Kernel 1–4, stride 1–3, padding `0..=k/2`, batch 1–2, channels 1–3, and sides from the
/// smallest valid one (`k − 2p`, at least 1) to 9, so odd and even sizes both occur.
fn random_case(r: &mut ChaCha8Rng) -> Case {
    let k = r.random_range(1..=4);
    let s = r.random_range(1..=3);
    let p = r.random_range(0..=k / 2);
    let least = (k - 2 * p).max(1);
    let shape = (
        r.random_range(1..=2),
        r.random_range(1..=3),
        r.random_range(least..=9),
        r.random_range(least..=9),
    );
    Case { shape, k, s, p }
}

/// `⌊(len + 2p − k) / s⌋ + 1`, PyTorch's output size with `ceil_mode=False`.
fn out_len(len: usize, c: &Case) -> usize {
    (len + 2 * c.p - c.k) / c.s + 1
}

/// The input positions `(iy, ix)` of window `(oy, ox)`: the `k × k` window whose padded
/// corner is `(oy·s − p, ox·s − p)`, minus the positions outside the input.
fn window_positions(c: &Case, (h, w): (usize, usize), oy: usize, ox: usize) -> Vec<(usize, usize)> {
    let mut at = Vec::new();
    for ky in 0..c.k {
        for kx in 0..c.k {
            let iy = (oy * c.s + ky) as isize - c.p as isize;
            let ix = (ox * c.s + kx) as isize - c.p as isize;
            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                at.push((iy as usize, ix as usize));
            }
        }
    }
    at
}

/// Applies `reduce` to the input values of every window (given as their positions), one output
/// per window.
fn naive_pool(x: &Array4<f64>, c: &Case, reduce: impl Fn(&[f64]) -> f64) -> Array4<f64> {
    let (n, ch, h, w) = x.dim();
    let (oh, ow) = (out_len(h, c), out_len(w, c));
    Array4::from_shape_fn((n, ch, oh, ow), |(b, q, oy, ox)| {
        let values: Vec<f64> = window_positions(c, (h, w), oy, ox)
            .into_iter()
            .map(|(iy, ix)| x[[b, q, iy, ix]])
            .collect();
        reduce(&values)
    })
}

/// Max pooling from the definition: padded positions are absent (never selected).
fn naive_max(x: &Array4<f64>, c: &Case) -> Array4<f64> {
    naive_pool(x, c, |v| {
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    })
}

/// Average pooling from the definition: the sum of the window's input values over `k²`
/// (`count_include_pad`) or over how many input values the window holds.
fn naive_avg(x: &Array4<f64>, c: &Case, count_include_pad: bool) -> Array4<f64> {
    naive_pool(x, c, |v| {
        let divisor = if count_include_pad {
            c.k * c.k
        } else {
            v.len()
        };
        v.iter().sum::<f64>() / divisor as f64
    })
}

fn max_pool(c: &Case) -> MaxPool2d {
    MaxPool2d {
        kernel: c.k,
        stride: c.s,
        padding: c.p,
    }
}

fn avg_pool(c: &Case, count_include_pad: bool) -> AvgPool2d {
    AvgPool2d {
        kernel: c.k,
        stride: c.s,
        padding: c.p,
        count_include_pad,
    }
}

/// Central differences (step 1e-6) of `loss` with respect to every element of `x`.
fn assert_grad_close(numeric: &Array4<f64>, analytic: &Array4<f64>, what: &str) {
    assert_eq!(numeric.dim(), analytic.dim(), "{what}");
    for (n, a) in numeric.iter().zip(analytic.iter()) {
        assert!((n - a).abs() <= 1e-6 + 1e-6 * n.abs(), "{what}: {n} vs {a}");
    }
}

fn assert_all_close(got: &Array4<f64>, want: &Array4<f64>, what: &str) {
    assert_eq!(got.dim(), want.dim(), "{what}");
    for (g, w) in got.iter().zip(want.iter()) {
        assert!(
            (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
            "{what}: {g} vs {w}"
        );
    }
}

#[test]
fn max_pool_forward_matches_naive_over_random_geometries() {
    let mut r = rng(301);
    for case in 0..150 {
        let c = random_case(&mut r);
        let x = random4(&mut r, c.shape);
        let pool = max_pool(&c);
        let want = naive_max(&x, &c);
        let what = format!("case {case}: {:?} k{} s{} p{}", c.shape, c.k, c.s, c.p);
        assert_eq!(pool.forward(x.view()).unwrap(), want, "forward {what}");
        let (y, argmax) = pool.forward_train(x.view()).unwrap();
        assert_eq!(y, want, "forward_train {what}");
        assert_eq!(
            pool.output_size(c.shape.2, c.shape.3).unwrap(),
            (want.dim().2, want.dim().3)
        );
        // The two backward passes (argmax recorded or found again) agree exactly.
        let g = random4(&mut r, y.dim());
        assert_eq!(
            pool.backward_argmax(&argmax, g.view()).unwrap(),
            pool.backward(x.view(), g.view()).unwrap(),
            "backward {what}"
        );
        // f32 picks the same maxima.
        let y32 = pool.forward(x.mapv(|v| v as f32).view()).unwrap();
        assert_eq!(y32, want.mapv(|v| v as f32), "f32 forward {what}");
    }
}

#[test]
fn avg_pool_forward_matches_naive_over_random_geometries() {
    let mut r = rng(302);
    for case in 0..150 {
        let c = random_case(&mut r);
        let x = random4(&mut r, c.shape);
        for include in [false, true] {
            let pool = avg_pool(&c, include);
            let want = naive_avg(&x, &c, include);
            let what = format!(
                "case {case}: {:?} k{} s{} p{} count_include_pad {include}",
                c.shape, c.k, c.s, c.p
            );
            assert_all_close(&pool.forward(x.view()).unwrap(), &want, &what);
            let y32 = pool.forward(x.mapv(|v| v as f32).view()).unwrap();
            for (a, b) in y32.iter().zip(want.iter()) {
                assert!((f64::from(*a) - b).abs() <= 1e-6, "f32 {what}");
            }
        }
    }
}

#[test]
fn pooling_hand_computed_3x3_kernel2_stride2_padding1() {
    // 1 2 3
    // 4 5 6   padded by one on every side, 2×2 windows moved by 2:
    // 7 8 9   windows {1}, {2, 3}, {4, 7}, {5, 6, 8, 9}.
    let x = Array4::from_shape_vec((1, 1, 3, 3), (1..=9).map(f64::from).collect()).unwrap();
    let out = |v: [f64; 4]| Array4::from_shape_vec((1, 1, 2, 2), v.to_vec()).unwrap();
    let c = Case {
        shape: (1, 1, 3, 3),
        k: 2,
        s: 2,
        p: 1,
    };
    let exclude = avg_pool(&c, false).forward(x.view()).unwrap();
    assert_eq!(exclude, out([1.0, 2.5, 5.5, 7.0]));
    let include = avg_pool(&c, true).forward(x.view()).unwrap();
    assert_eq!(include, out([0.25, 1.25, 2.75, 7.0]));
    assert_eq!(
        max_pool(&c).forward(x.view()).unwrap(),
        out([1.0, 3.0, 7.0, 9.0])
    );
    let negative = x.mapv(|v| -v);
    assert_eq!(
        max_pool(&c).forward(negative.view()).unwrap(),
        out([-1.0, -2.0, -4.0, -5.0])
    );
    // Backward of count_include_pad=false: each gradient over its window's input count.
    let g = out([1.0, 2.0, 4.0, 8.0]);
    let dx = avg_pool(&c, false).backward(x.dim(), g.view()).unwrap();
    let want = [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0];
    assert_eq!(dx.into_raw_vec_and_offset().0, want);
    let dx = avg_pool(&c, true).backward(x.dim(), g.view()).unwrap();
    let want = [0.25, 0.5, 0.5, 1.0, 2.0, 2.0, 1.0, 2.0, 2.0];
    assert_eq!(dx.into_raw_vec_and_offset().0, want);
    // 3×3 windows moved by 1 with padding 1 on a 3×3 input: same-size output.
    let same = Case { k: 3, s: 1, ..c };
    let y = avg_pool(&same, false).forward(x.view()).unwrap();
    assert_eq!(y.dim(), (1, 1, 3, 3));
    assert_eq!(y[[0, 0, 0, 0]], (1.0 + 2.0 + 4.0 + 5.0) / 4.0);
    assert_eq!(y[[0, 0, 1, 1]], 5.0);
    let y = avg_pool(&same, true).forward(x.view()).unwrap();
    assert_eq!(y[[0, 0, 0, 0]], (1.0 + 2.0 + 4.0 + 5.0) / 9.0);
}

#[test]
fn max_pool_padding_never_selected_even_when_all_inputs_are_negative() {
    let mut r = rng(303);
    for case in 0..60 {
        let mut c = random_case(&mut r);
        if c.k < 2 {
            c.k = 2 + case % 3;
        }
        c.p = 1 + case % (c.k / 2); // padding 1..=k/2
        c.shape.2 = c.shape.2.max(c.k);
        c.shape.3 = c.shape.3.max(c.k);
        // Values in [−2, −1): a padded zero would beat every one of them.
        let x = random4(&mut r, c.shape).mapv(|v| v / 2.0 - 1.5);
        let pool = max_pool(&c);
        let (y, argmax) = pool.forward_train(x.view()).unwrap();
        assert!(y.iter().all(|&v| v < -1.0 + 1e-12), "a padded zero won");
        assert_eq!(y, naive_max(&x, &c));
        // Each output's gradient lands on an input position that holds the output's value.
        let ones = Array4::<f64>::ones(y.dim());
        let dx = pool.backward_argmax(&argmax, ones.view()).unwrap();
        assert_eq!(
            dx.sum(),
            y.len() as f64,
            "every gradient lands in the input"
        );
        let (_, _, oh, ow) = y.dim();
        let (n, ch, h, w) = c.shape;
        for b in 0..n {
            for q in 0..ch {
                for (oy, ox) in (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy, ox))) {
                    let mut g = Array4::<f64>::zeros(y.dim());
                    g[[b, q, oy, ox]] = 1.0;
                    let dx = pool.backward_argmax(&argmax, g.view()).unwrap();
                    let hit = dx.indexed_iter().find(|(_, &v)| v == 1.0).unwrap().0;
                    assert!(window_positions(&c, (h, w), oy, ox).contains(&(hit.2, hit.3)));
                    assert_eq!(x[hit], y[[b, q, oy, ox]]);
                }
            }
        }
    }
}

#[test]
fn max_pool_backward_matches_finite_differences() {
    let mut r = rng(304);
    for case in 0..40 {
        let c = random_case(&mut r);
        // Continuous random values: ties within a window (where the loss is not
        // differentiable) have probability zero, and gaps below 1e-6 are vanishingly rare.
        let x = random4(&mut r, c.shape);
        let pool = max_pool(&c);
        let (y, argmax) = pool.forward_train(x.view()).unwrap();
        let g = random4(&mut r, y.dim());
        let numeric = numeric_grad(&x, |x| (&pool.forward(x.view()).unwrap() * &g).sum());
        let what = format!("case {case}: {:?} k{} s{} p{}", c.shape, c.k, c.s, c.p);
        let analytic = pool.backward_argmax(&argmax, g.view()).unwrap();
        assert_grad_close(&numeric, &analytic, &what);
        assert_grad_close(&numeric, &pool.backward(x.view(), g.view()).unwrap(), &what);
    }
}

#[test]
fn avg_pool_backward_matches_finite_differences() {
    let mut r = rng(305);
    for case in 0..40 {
        let c = random_case(&mut r);
        let x = random4(&mut r, c.shape);
        for include in [false, true] {
            let pool = avg_pool(&c, include);
            let y = pool.forward(x.view()).unwrap();
            let g = random4(&mut r, y.dim());
            let numeric = numeric_grad(&x, |x| (&pool.forward(x.view()).unwrap() * &g).sum());
            let analytic = pool.backward(x.dim(), g.view()).unwrap();
            let what = format!(
                "case {case}: {:?} k{} s{} p{} count_include_pad {include}",
                c.shape, c.k, c.s, c.p
            );
            assert_grad_close(&numeric, &analytic, &what);
        }
    }
}

#[test]
fn global_avg_pool_forward_and_backward() {
    let mut r = rng(306);
    for shape in [(1, 1, 1, 1), (2, 3, 5, 7), (1, 4, 6, 6), (3, 2, 1, 9)] {
        let x = random4(&mut r, shape);
        let (n, c, h, w) = shape;
        let y = GlobalAvgPool.forward(x.view()).unwrap();
        let want = Array4::from_shape_fn((n, c, 1, 1), |(b, q, _, _)| {
            let mut sum = 0.0;
            for iy in 0..h {
                for ix in 0..w {
                    sum += x[[b, q, iy, ix]];
                }
            }
            sum / (h * w) as f64
        });
        assert_all_close(&y, &want, &format!("global forward {shape:?}"));
        // The same as an average pool whose window is the whole plane, when square.
        if h == w {
            let whole = AvgPool2d {
                kernel: h,
                stride: 1,
                padding: 0,
                count_include_pad: true,
            };
            assert_all_close(&whole.forward(x.view()).unwrap(), &want, "whole-plane pool");
        }
        let g = random4(&mut r, (n, c, 1, 1));
        let numeric = numeric_grad(&x, |x| {
            (&GlobalAvgPool.forward(x.view()).unwrap() * &g).sum()
        });
        let analytic = GlobalAvgPool.backward(shape, g.view()).unwrap();
        assert_grad_close(&numeric, &analytic, &format!("global backward {shape:?}"));
    }
}

#[test]
fn pooling_is_deterministic_and_layout_independent() {
    let mut r = rng(307);
    let x = random4(&mut r, (3, 5, 11, 9));
    let pool = AvgPool2d {
        kernel: 3,
        stride: 2,
        padding: 1,
        count_include_pad: false,
    };
    let g = random4(&mut r, (3, 5, 6, 5));
    let one = in_pool(1, || pool.backward(x.dim(), g.view()).unwrap());
    let two = in_pool(2, || pool.backward(x.dim(), g.view()).unwrap());
    assert_eq!(one, two, "bit-identical on 1 and 2 threads");
    // A non-standard-layout view (channels and batch swapped, then swapped back).
    let permuted = x.clone().permuted_axes([1, 0, 2, 3]);
    let back = permuted.view().permuted_axes([1, 0, 2, 3]);
    assert_eq!(pool.forward(back).unwrap(), pool.forward(x.view()).unwrap());
    let max = MaxPool2d {
        kernel: 3,
        stride: 2,
        padding: 1,
    };
    assert_eq!(max.forward(back).unwrap(), max.forward(x.view()).unwrap());
    let gt = g.clone().permuted_axes([1, 0, 2, 3]);
    let gt = gt.view().permuted_axes([1, 0, 2, 3]);
    assert_eq!(pool.backward(x.dim(), gt).unwrap(), one);
}

fn max(kernel: usize, stride: usize, padding: usize) -> MaxPool2d {
    MaxPool2d {
        kernel,
        stride,
        padding,
    }
}

fn avg(kernel: usize, stride: usize, padding: usize) -> AvgPool2d {
    AvgPool2d {
        kernel,
        stride,
        padding,
        count_include_pad: false,
    }
}

#[test]
fn pooling_geometry_errors() {
    let x = Array4::<f64>::zeros((1, 2, 5, 4));
    // Zero window or stride.
    for (k, s) in [(0, 1), (2, 0)] {
        assert!(matches!(
            max(k, s, 0).forward(x.view()),
            Err(Error::InvalidParameter { .. })
        ));
        assert!(matches!(
            avg(k, s, 0).forward(x.view()),
            Err(Error::InvalidParameter { .. })
        ));
    }
    // Padding above kernel / 2 (PyTorch's limit): the error carries the limit.
    for (k, p) in [(1, 1), (2, 2), (3, 2), (4, 3)] {
        let limit = |e| {
            matches!(e, Err(Error::GeometryTooLarge { value, max: m, .. })
                if value == p && m == k / 2)
        };
        assert!(limit(max(k, 1, p).forward(x.view())), "max k{k} p{p}");
        assert!(limit(max(k, 1, p).forward_train(x.view()).map(|(y, _)| y)));
        assert!(limit(avg(k, 1, p).forward(x.view())), "avg k{k} p{p}");
        assert!(limit(avg(k, 1, p).backward(x.dim(), x.view())));
    }
    // A window larger than the padded input: 4 + 2·1 < 7 on the width.
    let too_large = |e| {
        matches!(
            e,
            Err(Error::KernelTooLarge {
                axis: "width",
                kernel_extent: 7,
                padded_input: 6
            })
        )
    };
    assert!(too_large(max(7, 1, 1).forward(x.view())));
    assert!(too_large(avg(7, 1, 1).forward(x.view())));
    assert!(too_large(avg(7, 1, 1).backward(x.dim(), x.view())));
    // Padding lets a window wider than the input fit: 5 > 4, but 4 + 2·2 ≥ 5.
    assert_eq!(avg(5, 1, 2).forward(x.view()).unwrap().dim(), (1, 2, 5, 4));
}

#[test]
fn pooling_empty_input_and_gradient_shape_errors() {
    let x = Array4::<f64>::zeros((1, 2, 5, 4));
    // Padding around an empty plane would make windows of padding only.
    let empty = Array4::<f64>::zeros((1, 1, 0, 3));
    assert!(matches!(
        max(2, 1, 1).forward(empty.view()),
        Err(Error::ZeroSize { .. })
    ));
    assert!(matches!(
        avg(2, 1, 1).forward(empty.view()),
        Err(Error::ZeroSize { .. })
    ));
    assert!(matches!(
        GlobalAvgPool.forward(empty.view()),
        Err(Error::ZeroSize { .. })
    ));
    // Empty batches are fine.
    let none = Array4::<f64>::zeros((0, 2, 5, 4));
    assert_eq!(
        avg(2, 2, 1).forward(none.view()).unwrap().dim(),
        (0, 2, 3, 3)
    );
    assert_eq!(
        max(2, 2, 1).forward(none.view()).unwrap().dim(),
        (0, 2, 3, 3)
    );
    // Gradients of the wrong shape.
    let wrong = Array4::<f64>::zeros((1, 2, 3, 2));
    let mismatch = |e| matches!(e, Err(Error::ShapeMismatch { .. }));
    assert!(mismatch(avg(2, 2, 1).backward(x.dim(), wrong.view())));
    assert!(mismatch(max(2, 2, 1).backward(x.view(), wrong.view())));
    assert!(mismatch(GlobalAvgPool.backward(x.dim(), wrong.view())));
    let (_, argmax) = max(2, 2, 1).forward_train(x.view()).unwrap();
    assert!(mismatch(
        max(2, 2, 1).backward_argmax(&argmax, wrong.view())
    ));
    // An argmax recorded with other padding.
    let right = Array4::<f64>::zeros((1, 2, 3, 3));
    assert!(max(2, 2, 1).backward_argmax(&argmax, right.view()).is_ok());
    assert!(matches!(
        max(2, 2, 0).backward_argmax(&argmax, right.view()),
        Err(Error::InvalidParameter { .. })
    ));
}
