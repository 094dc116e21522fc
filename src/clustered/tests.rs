//! The portable (scalar lanes, no FMA) kernels, which no public call selects on a CPU with
//! SIMD: every sharing strategy run with them equals the dense im2col oracle (itself checked
//! against the naive convolution in `tests/suite/clustered.rs`), and f16 scales compute bit for bit
//! what the same values held as `f32` compute.

use ndarray::{Array1, Array2, Array3, Array4};
use ndarray_rand::rand::{Rng, SeedableRng};
use ndarray_rand::rand_distr::Uniform;
use ndarray_rand::RandomExt;
use rand_chacha::ChaCha8Rng;

use super::{ClusteredConv2d, ForwardStrategy};
use crate::codebook::{KernelCodebook, Symmetry};
use crate::geometry::ConvGeometry;
use crate::linalg::simd::Kernels;
use crate::linalg::Real;

const SHARING: [ForwardStrategy; 2] = [ForwardStrategy::InputSide, ForwardStrategy::OutputSide];

struct Case {
    layer: ClusteredConv2d<f64>,
    codebook: KernelCodebook<f64>,
    x: Array4<f64>,
}

fn random_case(r: &mut ChaCha8Rng) -> Case {
    let (cin, cout) = (r.random_range(1..5), r.random_range(1..7));
    let (kh, kw) = (r.random_range(1..4), r.random_range(1..4));
    let g = ConvGeometry::default()
        .stride(r.random_range(1..3), r.random_range(1..3))
        .padding(r.random_range(0..3), r.random_range(0..3))
        .dilation(r.random_range(1..3), 1);
    let k = r.random_range(1..=cin * cout);
    let unit = Uniform::new(-1.0, 1.0).unwrap();
    let symmetry = if kh == kw {
        Symmetry::Dihedral
    } else {
        Symmetry::Flips
    };
    let codebook =
        KernelCodebook::from_centroids(Array3::random_using((k, kh, kw), unit, r), symmetry)
            .unwrap();
    let limit = codebook.index_limit() as u32;
    let indices = Array2::random_using((cout, cin), Uniform::new(0, limit).unwrap(), r);
    let scales = Array2::random_using((cout, cin), Uniform::new(-2.0, 2.0).unwrap(), r);
    let bias = r
        .random_bool(0.5)
        .then(|| Array1::random_using(cout, unit, r));
    let layer = ClusteredConv2d::new(indices, Some(scales), bias, g).unwrap();
    let x = Array4::random_using((2, cin, 5 + 2 * kh, 6 + kw), unit, r);
    Case { layer, codebook, x }
}

fn forward<F: Real>(
    layer: &ClusteredConv2d<F>,
    codebook: &KernelCodebook<F>,
    x: &Array4<F>,
    strategy: ForwardStrategy,
    kernels: Kernels,
) -> Array4<F> {
    layer
        .forward_impl(codebook, x.view(), strategy, kernels)
        .unwrap()
}

#[test]
fn portable_kernels_equal_the_dense_oracle() {
    let mut r = ChaCha8Rng::seed_from_u64(7);
    for case in 0..200 {
        let c = random_case(&mut r);
        let oracle = forward(
            &c.layer,
            &c.codebook,
            &c.x,
            ForwardStrategy::Dense,
            Kernels::detect(),
        );
        for strategy in SHARING {
            let got = forward(&c.layer, &c.codebook, &c.x, strategy, Kernels::portable());
            let worst = got
                .iter()
                .zip(&oracle)
                .map(|(a, b)| (a - b).abs() / (1e-12 + 1e-12 * b.abs()))
                .fold(0.0, f64::max);
            assert!(worst <= 1.0, "case {case} {strategy:?}: {worst}");
        }
    }
}

#[test]
fn portable_kernels_read_f16_scales_exactly() {
    let mut r = ChaCha8Rng::seed_from_u64(8);
    for case in 0..50 {
        let c = random_case(&mut r);
        let codebook = KernelCodebook::from_centroids(
            c.codebook.centroids().mapv(|v| v as f32),
            c.codebook.symmetry(),
        )
        .unwrap();
        // Scales that are exactly f16 values, held once as f32 and once as f16.
        let scales = c
            .layer
            .scales()
            .unwrap()
            .to_array()
            .mapv(|v| half::f16::from_f64(v).to_f32());
        let full = ClusteredConv2d::new(
            c.layer.indices().to_array(),
            Some(scales),
            None,
            c.layer.geometry(),
        )
        .unwrap();
        let half = full.clone().with_half_scales().unwrap();
        let x = c.x.mapv(|v| v as f32);
        for strategy in SHARING {
            let a = forward(&full, &codebook, &x, strategy, Kernels::portable());
            let b = forward(&half, &codebook, &x, strategy, Kernels::portable());
            let bits = |y: &Array4<f32>| y.mapv(f32::to_bits);
            assert_eq!(bits(&a), bits(&b), "case {case} {strategy:?}");
        }
    }
}
