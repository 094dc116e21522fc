//! Hostile inputs through the public API: zero sizes, huge geometry values, NaN/Inf, indices
//! beyond the codebook and mismatched shapes. Every call must return (an error where the input
//! is invalid), never panic.
//!
//! The release run of every test (the README's test command, which CI runs) includes this
//! file. After changing size arithmetic, run it with overflow checks on as well, where a
//! wrapped size panics instead of passing silently: `cargo test --test hostile` (the test
//! profile; CI leaves it out, since its debug build of every dependency took 162 s).

use clustered_conv::{
    compress, ClusteredConv2d, CodebookScope, CompressedLayer, CompressedNetwork,
    CompressionConfig, Conv2d, ConvAlgorithm, ConvGeometry, ConvLayer, Error, ForwardStrategy,
    KernelCodebook, Padding, ScaleScheme, Symmetry, MAX_GEOMETRY_VALUE,
};
use ndarray::{Array1, Array2, Array3, Array4};
use proptest::prelude::*;

/// Strides and dilations: mostly ordinary, then zero, the limit, just above it, and values near
/// `usize::MAX`.
fn step_value() -> impl Strategy<Value = usize> {
    prop_oneof![
        30 => 1usize..4,
        2 => Just(0usize),
        1 => Just(MAX_GEOMETRY_VALUE),
        1 => Just(MAX_GEOMETRY_VALUE + 1),
        1 => Just(usize::MAX / 2),
        1 => Just(usize::MAX),
    ]
}

/// Paddings: mostly ordinary, then just above the limit and near `usize::MAX`. (A padding at
/// the limit is valid and asks for an output of 2^34 elements: an allocation the caller asked
/// for, not a hostile input.)
fn padding_value() -> impl Strategy<Value = usize> {
    prop_oneof![
        30 => 0usize..3,
        1 => Just(MAX_GEOMETRY_VALUE + 1),
        1 => Just(usize::MAX / 2),
        1 => Just(usize::MAX),
    ]
}

/// Floats: ordinary values, and the non-finite ones.
fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -2.0f32..2.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
    ]
}

fn dims4(max: usize) -> impl Strategy<Value = (usize, usize, usize, usize)> {
    (0..max, 0..max, 0..max, 0..max)
}

/// Weight shapes of a network's layers: mostly ordinary, sometimes with a zero size.
fn layer_dims() -> impl Strategy<Value = (usize, usize, usize, usize)> {
    let side = prop_oneof![6 => Just(3usize), 1 => 0usize..4];
    (
        prop_oneof![6 => 1usize..4, 1 => Just(0usize)],
        1usize..4,
        side.clone(),
        side,
    )
}

fn geometry() -> impl Strategy<Value = ConvGeometry> {
    (
        [step_value(), step_value()],
        [step_value(), step_value()],
        [
            padding_value(),
            padding_value(),
            padding_value(),
            padding_value(),
        ],
    )
        .prop_map(|(stride, dilation, [top, bottom, left, right])| {
            ConvGeometry::default()
                .stride(stride[0], stride[1])
                .dilation(dilation[0], dilation[1])
                .padding_asymmetric(Padding {
                    top,
                    bottom,
                    left,
                    right,
                })
        })
}

/// Whether a geometry is valid by the documented rule.
fn geometry_is_valid(g: &ConvGeometry) -> bool {
    let (s, d, p) = (g.stride, g.dilation, g.padding);
    let in_range = |v: usize, min: usize| (min..=MAX_GEOMETRY_VALUE).contains(&v);
    [s.0, s.1, d.0, d.1].iter().all(|&v| in_range(v, 1))
        && [p.top, p.bottom, p.left, p.right]
            .iter()
            .all(|&v| in_range(v, 0))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn dense_conv_never_panics(
        wd in dims4(4),
        xd in dims4(7),
        g in geometry(),
        seed in any::<u64>(),
        poison in value(),
    ) {
        let w = Array4::from_shape_fn(wd, |(o, i, r, c)| ((seed as usize + o + 2 * i + 3 * r + c) % 7) as f32 - 3.0);
        let mut x = Array4::from_shape_fn(xd, |(n, c, y, z)| ((n + c + y * z) % 5) as f32);
        if let Some(first) = x.iter_mut().next() {
            *first = poison;
        }
        let conv = Conv2d::new(w.clone(), None, g);
        if !geometry_is_valid(&g) || w.is_empty() {
            prop_assert!(conv.is_err());
            return Ok(());
        }
        let conv = conv.unwrap();
        // Winograd where the geometry allows it (3×3, stride 1, dilation 1), an error
        // elsewhere; it computes what im2col computes.
        if let Ok(wino) = conv.clone().with_algorithm(ConvAlgorithm::Winograd) {
            prop_assert!(wd.2 == 3 && wd.3 == 3 && g.stride == (1, 1) && g.dilation == (1, 1));
            let (a, b) = (wino.forward(x.view()), conv.forward(x.view()));
            prop_assert_eq!(a.is_ok(), b.is_ok());
        }
        // The direct kernels likewise, forward and backward.
        if let Ok(direct) = conv.clone().with_algorithm(ConvAlgorithm::Direct) {
            prop_assert!(wd.2 == 3 && wd.3 == 3 && g.stride == (1, 1) && g.dilation == (1, 1));
            let (a, b) = (direct.forward(x.view()), conv.forward(x.view()));
            prop_assert_eq!(a.is_ok(), b.is_ok());
            if let Ok(y) = a {
                let go = Array4::<f32>::ones(y.raw_dim());
                prop_assert!(direct.backward(x.view(), go.view()).is_ok());
            }
        }
        match conv.forward(x.view()) {
            Ok(y) => {
                prop_assert_eq!(&y.shape()[..2], &[xd.0, wd.0]);
                let go = Array4::<f32>::ones(y.raw_dim());
                prop_assert!(conv.backward(x.view(), go.view()).is_ok());
                // A grad_out of another shape is an error.
                let bad = Array4::<f32>::ones((y.shape()[0], y.shape()[1] + 1, 1, 1));
                prop_assert!(conv.backward(x.view(), bad.view()).is_err());
            }
            Err(_) => prop_assert!(xd.0 * xd.1 * xd.2 * xd.3 == 0 || xd.1 != wd.1 || conv.output_shape([xd.0, xd.1, xd.2, xd.3]).is_err()),
        }
    }

    #[test]
    fn clustered_layer_never_panics(
        k in 0usize..5,
        kernel in (0usize..4, 0usize..4),
        channels in (0usize..4, 0usize..4),
        index_offset in 0u32..3,
        scales in proptest::option::of(proptest::collection::vec(value(), 0..12)),
        bias_len in proptest::option::of(0usize..5),
        xd in dims4(7),
        g in geometry(),
    ) {
        let (kh, kw) = kernel;
        let (cout, cin) = channels;
        let centroids = Array3::from_shape_fn((k, kh, kw), |(c, r, s)| (c + r + s) as f32 - 1.5);
        let Ok(codebook) = KernelCodebook::from_centroids(centroids, Symmetry::Identity) else {
            prop_assert!(k * kh * kw == 0);
            return Ok(());
        };
        // Indices up to 2 beyond the codebook.
        let limit = codebook.index_limit() as u32;
        let indices = Array2::from_shape_fn((cout, cin), |(o, i)| ((o + i) as u32 % limit) + index_offset);
        let scales = scales.and_then(|v| Array2::from_shape_vec((cout, cin), v).ok());
        let bias = bias_len.map(Array1::<f32>::ones);
        let Ok(layer) = ClusteredConv2d::new(indices.clone(), scales.clone(), bias.clone(), g) else {
            return Ok(());
        };
        // A layer that was accepted has finite scales, a bias of length Cout and a valid geometry.
        prop_assert!(geometry_is_valid(&g));
        prop_assert!(scales.iter().flatten().all(|v| v.is_finite()));
        prop_assert!(bias.as_ref().is_none_or(|b| b.len() == cout));
        let x = Array4::from_shape_fn(xd, |(n, c, y, z)| ((n + c + y + z) % 3) as f32);
        let beyond = indices.iter().any(|&i| i >= limit);
        for strategy in [ForwardStrategy::Dense, ForwardStrategy::InputSide, ForwardStrategy::OutputSide, ForwardStrategy::Auto] {
            let y = layer.forward_with(&codebook, x.view(), strategy);
            if beyond {
                prop_assert!(matches!(y, Err(Error::IndexOutOfRange { .. })), "{:?}", y);
                continue;
            }
            if let Ok(y) = y {
                let go = Array4::<f32>::ones(y.raw_dim());
                prop_assert!(layer.backward(&codebook, x.view(), go.view()).is_ok());
            }
        }
        prop_assert!(layer.cost(&codebook, (xd.2, xd.3)).is_ok() || beyond || xd.2 * xd.3 == 0 || layer.to_conv(&codebook).map(|c| c.output_shape([1, cin, xd.2, xd.3]).is_err()).unwrap_or(true));
    }

    #[test]
    fn codebook_fit_never_panics(
        wd in dims4(4),
        k in 0usize..6,
        seed in any::<u64>(),
        poison in proptest::option::of(prop_oneof![Just(f32::NAN), Just(f32::INFINITY)]),
    ) {
        let mut w = Array4::from_shape_fn(wd, |(o, i, r, c)| ((seed as usize ^ (o * 31 + i * 7 + r * 3 + c)) % 11) as f32 - 5.0);
        if let (Some(p), Some(first)) = (poison, w.iter_mut().next()) {
            *first = p;
        }
        let fit = KernelCodebook::params(k).seed(seed).fit(&[w.view()]);
        let kernels = wd.0 * wd.1;
        if w.is_empty() || k == 0 || poison.is_some() || k > kernels {
            prop_assert!(fit.is_err(), "{:?}", wd);
        }
        if let Ok(fit) = fit {
            prop_assert!(fit.codebook.len() <= k);
            prop_assert!(fit.codebook.assign(w.view()).is_ok());
        }
    }

    #[test]
    fn network_compression_never_panics(
        shapes in proptest::collection::vec(layer_dims(), 1..4),
        k in 0usize..6,
        scheme in prop_oneof![3 => "none|f16|f32", 1 => "fixed[0-9]{1,2}"],
        scope in prop_oneof![3 => "shared|per-layer", 1 => "[0-9]-[0-9]=[0-9]{1,2}(,[0-9]-[0-9]=[0-9])?"],
        mask_at in proptest::option::of(0usize..4),
        poison in proptest::option::of(value()),
        bad_id in 0usize..4,
    ) {
        let layers: Vec<ConvLayer<f32>> = shapes
            .iter()
            .enumerate()
            .map(|(l, &d)| {
                let mut weight = Array4::from_shape_fn(d, |(o, i, r, c)| ((l + o * 5 + i * 3 + r + c) % 9) as f32 - 4.0);
                if let (Some(p), Some(first)) = (poison, weight.iter_mut().next()) {
                    *first = p;
                }
                // A mask that fits some layers and not others.
                let mask = (mask_at == Some(l)).then(|| Array2::from_elem((d.0, d.1 + l % 2), true));
                ConvLayer { name: format!("conv{l}"), weight, bias: None, geometry: ConvGeometry::default().padding(1, 1), mask }
            })
            .collect();
        // Scale schemes and scopes from text, as the CLI reads them: bad text is an error.
        let Ok(scheme) = scheme.parse::<ScaleScheme>() else { return Ok(()) };
        let Ok(scope) = scope.parse::<CodebookScope>() else { return Ok(()) };
        let mut config = CompressionConfig::new(KernelCodebook::params(k).scale_scheme(scheme).max_iter(5));
        config.scope = scope;
        let Ok(net) = compress(&layers, &config) else { return Ok(()) };
        // A network that was made answers every query without panicking, and refuses a
        // codebook id it does not have.
        let _ = net.report().against(&layers).build();
        for l in 0..net.layers().len() + 1 {
            let _ = net.dense_layer(l);
        }
        let (codebooks, mut parts, scheme) = net.into_parts();
        let ids = codebooks.len();
        prop_assert!(codebooks.get(ids + bad_id).is_err());
        if let Some(CompressedLayer::Clustered { codebook, .. }) = parts.iter_mut().find(|l| matches!(l, CompressedLayer::Clustered { .. })) {
            *codebook = ids + bad_id;
            let made = CompressedNetwork::new(codebooks, parts, scheme);
            prop_assert!(
                matches!(made, Err(Error::CodebookOutOfRange { .. })),
                "a codebook id beyond the network was accepted"
            );
        }
    }
}
