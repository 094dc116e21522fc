//! Shared test helpers: an obviously-correct direct convolution and seeded random data.
#![allow(dead_code)]

use clustered_conv::{Conv2d, ConvGeometry, Padding};
use ndarray::{Array1, Array4, ArrayView4};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A seeded RNG for tests (never OS-seeded).
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform values in [-1, 1).
pub fn random4(rng: &mut ChaCha8Rng, shape: (usize, usize, usize, usize)) -> Array4<f64> {
    Array4::from_shape_simple_fn(shape, || rng.random_range(-1.0..1.0))
}

/// The direct definition of a 2-D cross-correlation, written for clarity: seven nested
/// loops, zero padding by bounds checks.
pub fn naive_conv(
    x: ArrayView4<f64>,
    w: ArrayView4<f64>,
    bias: Option<&Array1<f64>>,
    g: &ConvGeometry,
) -> Array4<f64> {
    let (n, cin, h, wd) = x.dim();
    let (cout, _, kh, kw) = w.dim();
    let (sh, sw) = g.stride;
    let (dh, dw) = g.dilation;
    let Padding { top, left, .. } = g.padding;
    let (oh, ow) = g.output_size((h, wd), (kh, kw)).unwrap();
    let mut y = Array4::<f64>::zeros((n, cout, oh, ow));
    for b in 0..n {
        for o in 0..cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |b| b[o]);
                    for i in 0..cin {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let iy = (oy * sh + ki * dh) as isize - top as isize;
                                let ix = (ox * sw + kj * dw) as isize - left as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    acc += w[[o, i, ki, kj]] * x[[b, i, iy as usize, ix as usize]];
                                }
                            }
                        }
                    }
                    y[[b, o, oy, ox]] = acc;
                }
            }
        }
    }
    y
}

/// Largest |a − b| / (atol + rtol·|b|) over all elements (≤ 1 means within tolerance).
pub fn worst_violation(a: &Array4<f64>, b: &Array4<f64>, rtol: f64, atol: f64) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(&x, &y)| (x - y).abs() / (atol + rtol * y.abs()))
        .fold(0.0, f64::max)
}

/// Sizes of one random convolution problem: batch, channels, kernel, input, and a geometry
/// that is valid for them.
pub struct Problem {
    pub n: usize,
    pub cin: usize,
    pub cout: usize,
    pub kernel: (usize, usize),
    pub input: (usize, usize),
    pub g: ConvGeometry,
}

/// A random problem: batch 1–3, channels and kernel sides up to the given maxima, inputs up to
/// `max_hw`, strides up to `max_stride`, dilation 1–2, padding 0–2 per side (asymmetric).
pub fn random_problem(
    r: &mut ChaCha8Rng,
    max_channels: (usize, usize),
    max_kernel: usize,
    max_hw: usize,
    max_stride: (usize, usize),
) -> Problem {
    loop {
        let p = Problem {
            n: r.random_range(1..=3),
            cin: r.random_range(1..=max_channels.0),
            cout: r.random_range(1..=max_channels.1),
            kernel: (
                r.random_range(1..=max_kernel),
                r.random_range(1..=max_kernel),
            ),
            input: (r.random_range(1..=max_hw), r.random_range(1..=max_hw)),
            g: ConvGeometry::default()
                .stride(
                    r.random_range(1..=max_stride.0),
                    r.random_range(1..=max_stride.1),
                )
                .dilation(r.random_range(1..=2), r.random_range(1..=2))
                .padding_asymmetric(Padding {
                    top: r.random_range(0..=2),
                    bottom: r.random_range(0..=2),
                    left: r.random_range(0..=2),
                    right: r.random_range(0..=2),
                }),
        };
        if p.g.output_size(p.input, p.kernel).is_ok() {
            return p;
        }
    }
}

/// Runs `f` inside a rayon pool of `threads` threads.
pub fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// Transform `t` of PAPER.md §1.6 applied to a `kh×kw` kernel (row-major), written from the
/// table (`out[r][c] = in[...]`), independently of the library; ids 4–7 need `kh = kw`.
pub fn paper_transform(t: usize, kh: usize, kw: usize, k: &[f64]) -> Vec<f64> {
    let (mr, mc) = (kh - 1, kw - 1);
    let mut out = vec![0.0; kh * kw];
    for r in 0..kh {
        for c in 0..kw {
            let (sr, sc) = match t {
                0 => (r, c),
                1 => (r, mc - c),
                2 => (mr - r, c),
                3 => (mr - r, mc - c),
                4 => (mc - c, r),
                5 => (mc - c, mr - r),
                6 => (c, r),
                7 => (c, mr - r),
                _ => panic!("transform ids are 0..8"),
            };
            out[r * kw + c] = k[sr * kw + sc];
        }
    }
    out
}

/// Central differences (step 1e-6, f64) of `loss` with respect to every element of `x`: the
/// reference every backward pass is checked against.
pub fn numeric_grad<D: ndarray::Dimension>(
    x: &ndarray::Array<f64, D>,
    loss: impl Fn(&ndarray::Array<f64, D>) -> f64,
) -> ndarray::Array<f64, D> {
    const EPS: f64 = 1e-6;
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

/// A random 3×3, stride-1 layer with 1–9 channels each way, padding 0–2 per side
/// (asymmetric), an input of 1–13 per side, batch 1–3, with or without a bias.
pub fn random_3x3_case(seed: u64) -> (Array4<f64>, Array4<f64>, Option<Array1<f64>>, ConvGeometry) {
    let mut r = rng(seed);
    loop {
        let (n, cin, cout) = (
            r.random_range(1..=3),
            r.random_range(1..=9),
            r.random_range(1..=9),
        );
        let (h, w) = (r.random_range(1..=13), r.random_range(1..=13));
        let g = random_padding_0_to_2(&mut r);
        if g.output_size((h, w), (3, 3)).is_err() {
            continue;
        }
        let x = random4(&mut r, (n, cin, h, w));
        let weight = random4(&mut r, (cout, cin, 3, 3));
        let bias = r
            .random_bool(0.5)
            .then(|| Array1::from_shape_fn(cout, |_| r.random_range(-1.0..1.0)));
        return (x, weight, bias, g);
    }
}

/// A geometry with a random padding of 0–2 on each side (asymmetric), stride and dilation 1.
pub fn random_padding_0_to_2(r: &mut ChaCha8Rng) -> ConvGeometry {
    ConvGeometry::default().padding_asymmetric(Padding {
        top: r.random_range(0..=2),
        bottom: r.random_range(0..=2),
        left: r.random_range(0..=2),
        right: r.random_range(0..=2),
    })
}

/// Checks `analytic`, the gradient of `loss` at `at`, against central finite differences
/// (step 1e-5, tolerance 1e-7 relative).
pub fn assert_gradient_by_finite_differences(
    analytic: &Array4<f64>,
    at: &Array4<f64>,
    loss: impl Fn(&Array4<f64>) -> f64,
) {
    let h = 1e-5;
    for (idx, &a) in analytic.indexed_iter() {
        let (mut plus, mut minus) = (at.clone(), at.clone());
        plus[idx] += h;
        minus[idx] -= h;
        let numeric = (loss(&plus) - loss(&minus)) / (2.0 * h);
        assert!(
            (numeric - a).abs() < 1e-7 * (1.0 + a.abs()),
            "{idx:?}: {numeric} vs {a}"
        );
    }
}

/// Checks the weight gradient of the layer `make` builds against central finite differences
/// of `L = Σ y ⊙ go`.
pub fn assert_weight_gradient_by_finite_differences(
    make: impl Fn(Array4<f64>) -> Conv2d<f64>,
    x: &Array4<f64>,
    weight: &Array4<f64>,
    go: &Array4<f64>,
) {
    let analytic = make(weight.clone())
        .backward(x.view(), go.view())
        .unwrap()
        .weight;
    let loss = |w: &Array4<f64>| (&make(w.clone()).forward(x.view()).unwrap() * go).sum();
    assert_gradient_by_finite_differences(&analytic, weight, loss);
}
