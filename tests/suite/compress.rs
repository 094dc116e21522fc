//! Whole-network compression: the paper's arithmetic from layer shapes, group parsing, and
//! compression of small real networks.

use crate::common::{random4, rng};
use clustered_conv::{
    compress, CodebookScope, CompressedLayer, CompressionConfig, ConvGeometry, ConvLayer, Error,
    FixedBits, KernelCodebook, LayerGroup, LayerShape, ScaleScheme, ScaleStorage, Symmetry,
};
use ndarray::Array1;
use rand::Rng;

fn shape(name: &str, cout: usize, cin: usize, k: usize, stride: usize, input: usize) -> LayerShape {
    LayerShape {
        name: name.to_string(),
        weight: (cout, cin, k, k),
        geometry: ConvGeometry::default()
            .stride(stride, stride)
            .padding(k / 2, k / 2),
        input_hw: Some((input, input)),
    }
}

/// The 13 3×3 convolutions of VGG-16 on CIFAR-10 (32×32 input).
fn vgg16_cifar() -> Vec<LayerShape> {
    let cfg = [
        (64, 3, 32),
        (64, 64, 32),
        (128, 64, 16),
        (128, 128, 16),
        (256, 128, 8),
        (256, 256, 8),
        (256, 256, 8),
        (512, 256, 4),
        (512, 512, 4),
        (512, 512, 4),
        (512, 512, 2),
        (512, 512, 2),
        (512, 512, 2),
    ];
    cfg.iter()
        .enumerate()
        .map(|(i, &(o, c, hw))| shape(&format!("features.{i}"), o, c, 3, 1, hw))
        .collect()
}

/// ResNet-18 on ImageNet: the 7×7 stem, 16 3×3 convolutions, 3 1×1 downsamples.
fn resnet18() -> Vec<LayerShape> {
    let mut v = vec![shape("conv1", 64, 3, 7, 2, 224)];
    for b in 0..4 {
        v.push(shape(&format!("layer1.{b}"), 64, 64, 3, 1, 56));
    }
    for (stage, (c, hw)) in [(128, 28), (256, 14), (512, 7)].into_iter().enumerate() {
        let name = |s: &str| format!("layer{}.{s}", stage + 2);
        v.push(shape(&name("0.conv1"), c, c / 2, 3, 2, hw * 2));
        v.push(shape(&name("0.downsample"), c, c / 2, 1, 2, hw * 2));
        for b in 0..3 {
            v.push(shape(&name(&format!("{b}")), c, c, 3, 1, hw));
        }
    }
    v
}

#[test]
fn vgg16_cifar_arithmetic_matches_the_paper() {
    let config = CompressionConfig::new(KernelCodebook::params(256));
    let r = config.plan(&vgg16_cifar()).unwrap();
    assert_eq!(r.clustered_kernels(), 1_634_496);
    assert_eq!(r.clustered_bytes_before(), 58_841_856); // 58.84 MB
    assert_eq!(r.dense_macs(), 313_196_544); // 313.2 M
    assert_eq!(r.codebooks.len(), 1);
    // C256 with f16 scales: 24 bits per kernel + a 9.2 kB codebook → 4.91 MB, 12.0×.
    assert_eq!(r.clustered_bytes_after(), 4_903_488 + 9_216);
    assert_eq!(format!("{:.1}", r.ratio()), "12.0");
    // C128-TIC2 and C32-TIC8 cost the same index bits as C256.
    for (k, symmetry) in [(128, Symmetry::Flip), (32, Symmetry::Dihedral)] {
        let r = CompressionConfig::new(KernelCodebook::params(k).symmetry(symmetry))
            .plan(&vgg16_cifar())
            .unwrap();
        assert!(r.layers.iter().all(|l| l.index_bits == 8));
        assert_eq!(format!("{:.1}", r.ratio()), "12.0");
    }
    // C512: 5.11–5.13 MB, 11.5×.
    let r = CompressionConfig::new(KernelCodebook::params(512))
        .plan(&vgg16_cifar())
        .unwrap();
    assert_eq!(format!("{:.1}", r.ratio()), "11.5");
    assert!((5.11e6..5.14e6).contains(&(r.clustered_bytes_after() as f64)));
}

#[test]
fn asymptotic_ratios_of_section_2_1() {
    // A network large enough for the codebook to be negligible: 64 layers of 2048×2048 3×3.
    let big: Vec<LayerShape> = (0..64)
        .map(|i| shape(&format!("c{i}"), 2048, 2048, 3, 1, 4))
        .collect();
    let ratio = |k, scales| {
        CompressionConfig::new(KernelCodebook::params(k).scale_scheme(scales))
            .plan(&big)
            .unwrap()
            .ratio()
    };
    assert_eq!(format!("{:.1}", ratio(1024, ScaleScheme::None)), "28.8");
    assert_eq!(format!("{:.1}", ratio(128, ScaleScheme::None)), "41.1");
    assert_eq!(
        format!("{:.1}", ratio(64, ScaleScheme::L2(ScaleStorage::F16))),
        "13.1"
    );
    assert_eq!(
        format!("{:.1}", ratio(1024, ScaleScheme::L2(ScaleStorage::F16))),
        "11.1"
    );
}

#[test]
fn resnet18_has_1_220_608_kernels_and_a_separate_stem_codebook() {
    let shared = CompressionConfig::new(KernelCodebook::params(256))
        .plan(&resnet18())
        .unwrap();
    // One 7×7 codebook (K capped at the stem's 192 kernels), one 3×3; 1×1 downsamples dense.
    assert_eq!(shared.codebooks.len(), 2);
    assert_eq!(shared.codebooks[0].kernel_size, (7, 7));
    assert_eq!(shared.codebooks[0].k, 192);
    assert_eq!(shared.codebooks[1].kernel_size, (3, 3));
    assert_eq!(shared.codebooks[1].layers.len(), 16);
    let three: u64 = shared
        .layers
        .iter()
        .filter(|l| l.kernel_size == (3, 3))
        .map(|l| l.kernels)
        .sum();
    assert_eq!(three, 1_220_608);
    assert!(shared
        .layers
        .iter()
        .filter(|l| l.kernel_size == (1, 1))
        .all(|l| l.codebook.is_none()));
    // The reference code's demo: `--multi 0-0=64,1-16=256`.
    let groups = CompressionConfig {
        scope: CodebookScope::parse_groups("0-0=64,1-16=256").unwrap(),
        ..Default::default()
    }
    .plan(&resnet18())
    .unwrap();
    assert_eq!(groups.codebooks[0].k, 64);
    assert_eq!(groups.codebooks[1].k, 256);
    assert_eq!(groups.codebooks[1].layers.len(), 16);
    // 3×3 only, 16-bit scales, C256: 12.0×.
    let per_layer_3x3: u64 = groups
        .layers
        .iter()
        .filter(|l| l.kernel_size == (3, 3))
        .map(|l| l.bytes_after)
        .sum();
    assert_eq!(per_layer_3x3, 1_220_608 * 3);
}

#[test]
fn group_specs_are_validated() {
    assert_eq!(
        CodebookScope::parse_groups("0-1=8, 2=4").unwrap(),
        CodebookScope::Groups(vec![
            LayerGroup {
                layers: 0..=1,
                k: 8
            },
            LayerGroup {
                layers: 2..=2,
                k: 4
            }
        ])
    );
    for (spec, fragment) in [
        ("0-1", "0-1"),
        ("a-1=3", "a-1=3"),
        ("0-1=x", "0-1=x"),
        ("3-1=4", "3-1=4"),
        ("0-1=0", "0-1=0"),
    ] {
        match CodebookScope::parse_groups(spec) {
            Err(Error::InvalidGroupSpec { fragment: f, .. }) => assert_eq!(f, fragment),
            other => panic!("{spec}: {other:?}"),
        }
    }
    let shapes = vgg16_cifar();
    let plan = |spec| {
        CompressionConfig {
            scope: CodebookScope::parse_groups(spec).unwrap(),
            ..Default::default()
        }
        .plan(&shapes)
    };
    assert!(plan("0-12=64").is_ok());
    assert!(matches!(
        plan("0-5=64,5-12=64").unwrap_err(),
        Error::GroupCoverage {
            problem: "cover twice",
            layer: 5,
            layers: 13
        }
    ));
    assert!(matches!(
        plan("0-5=64,7-12=64").unwrap_err(),
        Error::GroupCoverage {
            problem: "do not cover",
            layer: 6,
            layers: 13
        }
    ));
    assert!(matches!(
        plan("0-13=64").unwrap_err(),
        Error::GroupCoverage {
            problem: "name a non-existent",
            layer: 13,
            layers: 13
        }
    ));
    // Kernel sizes must agree within a group.
    let mixed = vec![shape("a", 8, 3, 3, 1, 8), shape("b", 8, 8, 5, 1, 8)];
    let err = CompressionConfig {
        scope: CodebookScope::parse_groups("0-1=4").unwrap(),
        ..Default::default()
    }
    .plan(&mixed)
    .unwrap_err();
    assert!(matches!(err, Error::KernelSizeMismatch { tensor: 1, .. }));
}

fn small_network(seed: u64) -> Vec<ConvLayer<f32>> {
    let mut r = rng(seed);
    let mut layer = |name: &str, o, i, k| ConvLayer {
        name: name.to_string(),
        weight: random4(&mut r, (o, i, k, k)).mapv(|v| v as f32),
        bias: Some(Array1::from_elem(o, 0.1f32)),
        geometry: ConvGeometry::default().padding(k / 2, k / 2),
        mask: None,
    };
    vec![
        layer("stem", 16, 3, 5),
        layer("a", 16, 16, 3),
        layer("pw", 24, 16, 1),
        layer("b", 24, 24, 3),
    ]
}

#[test]
fn compressed_network_matches_its_dense_export_and_stores_f16_scales() {
    let layers = small_network(71);
    let config = CompressionConfig::new(KernelCodebook::params(16).seed(3));
    let net = compress(&layers, &config).unwrap();
    // Codebooks per kernel size: 5×5 and 3×3; the 1×1 layer stays dense.
    assert_eq!(net.codebooks().len(), 2);
    assert!(matches!(net.layers()[2], CompressedLayer::Dense { .. }));
    assert_eq!(
        net.layers().iter().map(|l| l.name()).collect::<Vec<_>>(),
        ["stem", "a", "pw", "b"]
    );
    let x = random4(&mut rng(72), (2, 3, 9, 9)).mapv(|v| v as f32);
    for (i, l) in net.layers().iter().enumerate() {
        if let CompressedLayer::Clustered {
            codebook, layer, ..
        } = l
        {
            // Scales are exactly representable in f16.
            for &s in layer.scales().map(|s| s.to_array()).unwrap().iter() {
                assert_eq!(half::f16::from_f32(s).to_f32(), s);
            }
            let dense = net.dense_layer(i).unwrap();
            assert_eq!(
                dense.weight(),
                &layer
                    .to_conv(net.codebooks().get(*codebook).unwrap())
                    .unwrap()
                    .weight()
                    .clone()
            );
            if i == 0 {
                let y = layer
                    .forward(net.codebooks().get(*codebook).unwrap(), x.view())
                    .unwrap();
                let y_dense = dense.forward(x.view()).unwrap();
                for (a, b) in y.iter().zip(y_dense.iter()) {
                    assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()));
                }
            }
        }
    }
    let report = net.report().against(&layers).build().unwrap();
    assert_eq!(report.layers[2].codebook, None);
    assert_eq!(report.layers[2].bytes_after, 24 * 16 * 4);
    // Independent check of one layer's reported error.
    let w_hat = net.dense_layer(1).unwrap();
    let num: f64 = w_hat
        .weight()
        .iter()
        .zip(layers[1].weight.iter())
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum();
    let den: f64 = layers[1].weight.iter().map(|b| f64::from(*b).powi(2)).sum();
    assert!((report.layers[1].relative_error.unwrap() - (num / den).sqrt()).abs() < 1e-9);
    assert!(report.layers[1].entropy_bits.unwrap() <= 4.0);
    // Entropy coding can only shrink the fixed-width indices (4 bits for K = 16).
    let coded = report.entropy_coded_bytes().unwrap();
    assert!(coded <= report.clustered_bytes_after());
    let expected: f64 = report
        .layers
        .iter()
        .filter(|l| l.codebook.is_some())
        .map(|l| l.kernels as f64 * (l.entropy_bits.unwrap() + 16.0) / 8.0)
        .sum();
    assert_eq!(
        coded,
        expected.ceil() as u64 + report.codebooks.iter().map(|c| c.bytes).sum::<u64>()
    );
    assert_eq!(
        CompressionConfig::default()
            .plan(&vgg16_cifar())
            .unwrap()
            .entropy_coded_bytes(),
        None
    );
    let text = report.to_string();
    assert!(text.contains("stem") && text.contains("dense") && text.contains("ratio"));
    assert!(net.dense_layer(9).is_err());
}

#[test]
fn scale_precision_none_stores_no_scales_and_per_layer_caps_k() {
    let layers = small_network(73);
    let config = CompressionConfig {
        codebook: KernelCodebook::params(200).scale_scheme(ScaleScheme::None),
        scope: CodebookScope::PerLayer,
        ..Default::default()
    };
    let net = compress(&layers, &config).unwrap();
    // Per layer: the stem has 48 kernels, so K = 48 (and reconstruction is exact).
    assert_eq!(net.codebooks().get(0).unwrap().len(), 48);
    assert_eq!(net.codebooks().len(), 3);
    for l in net.layers() {
        if let CompressedLayer::Clustered { layer, .. } = l {
            assert!(layer.scales().map(|s| s.to_array()).is_none());
        }
    }
    let report = net.report().against(&layers).build().unwrap();
    assert!(report.layers[0].relative_error.unwrap() < 1e-6);
    assert!(report.layers.iter().all(|l| l.scale_bits == 0));
}

#[test]
fn f16_rounding_of_f32_matches_the_half_crate() {
    // f32 → f16, round to nearest even, as PyTorch's `.half()` on the reference code's scales.
    let mut r = rng(74);
    for _ in 0..20_000 {
        let e = r.random_range(-30..17);
        let v = (r.random_range(-1.0f64..1.0) * 2f64.powi(e)) as f32;
        let ours = ScaleScheme::L2(ScaleStorage::F16).round(v);
        let reference = half::f16::from_f32(v).to_f32();
        assert!(ours == reference, "{v}: {ours} vs {reference}");
    }
}

#[test]
fn pruned_kernels_are_left_out_of_clustering_and_stay_zero() {
    let mut layers = small_network(75);
    let (cout, cin, _, _) = layers[1].weight.dim();
    let mask = ndarray::Array2::from_shape_fn((cout, cin), |(o, i)| (o * 7 + i * 3) % 5 != 0);
    // Pruned kernels are huge outliers: they must not pull any centroid.
    let mut outliers = layers[1].weight.clone();
    let mut zeroed = layers[1].weight.clone();
    for ((o, i), &keep) in mask.indexed_iter() {
        if !keep {
            outliers.slice_mut(ndarray::s![o, i, .., ..]).fill(1e6);
            zeroed.slice_mut(ndarray::s![o, i, .., ..]).fill(0.0);
        }
    }
    let params = KernelCodebook::params(6).seed(4).check().unwrap();
    let masked = params
        .fitter(&[outliers.view()])
        .masks(&[mask.view()])
        .run()
        .unwrap();
    // Zero kernels are left out under L2Norm too, so fitting the zeroed tensor is the truth.
    let truth = params.fit(&[zeroed.view()]).unwrap();
    assert_eq!(masked.codebook, truth.codebook);
    assert_eq!(masked.assignments, truth.assignments);

    layers[1].weight = outliers;
    layers[1].mask = Some(mask.clone());
    let net = compress(
        &layers,
        &CompressionConfig::new(KernelCodebook::params(6).seed(4)),
    )
    .unwrap();
    let dense = net.dense_layer(1).unwrap();
    for ((o, i), &keep) in mask.indexed_iter() {
        let kernel = dense.weight().slice(ndarray::s![o, i, .., ..]);
        assert_eq!(kernel.iter().all(|&v| v == 0.0), !keep, "kernel ({o}, {i})");
    }
    let report = net.report().against(&layers).build().unwrap();
    assert_eq!(report.layers[1].mask_bits, 1);
    assert_eq!(report.layers[3].mask_bits, 0);
}

#[test]
fn report_with_inputs_counts_the_paper_flops() {
    use std::collections::HashSet;
    let layers = small_network(76);
    let net = compress(&layers, &CompressionConfig::new(KernelCodebook::params(8))).unwrap();
    let report = net
        .report()
        .against(&layers)
        .input_sizes(&[(9, 9); 4])
        .build()
        .unwrap();
    let CompressedLayer::Clustered { layer, .. } = &net.layers()[3] else {
        panic!("layer 3 is clustered")
    };
    let idx = layer.indices().to_array();
    let sum_u: usize = idx
        .outer_iter()
        .map(|r| r.iter().collect::<HashSet<_>>().len())
        .sum();
    let sum_v: usize = idx
        .columns()
        .into_iter()
        .map(|c| c.iter().collect::<HashSet<_>>().len())
        .sum();
    assert_eq!(
        report.layers[3].paper_flops,
        Some((81 * 9 * sum_u.min(sum_v)) as u64)
    );
    assert_eq!(report.layers[3].dense_macs, Some(81 * 24 * 24 * 9));
    assert_eq!(report.layers[2].paper_flops, None); // the dense 1×1 layer
    let (dense, paper): (u64, u64) = report
        .layers
        .iter()
        .filter_map(|l| Some((l.dense_macs?, l.paper_flops?)))
        .fold((0, 0), |(d, p), (a, b)| (d + a, p + b));
    assert!((report.paper_speedup().unwrap() - dense as f64 / paper as f64).abs() < 1e-12);
    assert!(report.to_string().contains("paper FLOPs"));
    assert!(net
        .report()
        .against(&layers)
        .input_sizes(&[(9, 9); 3])
        .build()
        .is_err());
}

#[cfg(feature = "json")]
#[test]
fn report_serialises_to_json() {
    let r = CompressionConfig::default().plan(&vgg16_cifar()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(v["totals"]["clustered_kernels"], 1_634_496);
    assert_eq!(v["report"]["layers"][0]["name"], "features.0");
    assert_eq!(v["report"]["layers"].as_array().unwrap().len(), 13);
    assert!((v["totals"]["ratio"].as_f64().unwrap() - r.ratio()).abs() < 1e-12);
}

#[test]
fn rejects_bad_settings_and_mismatched_originals() {
    let layers = small_network(77);
    for bits in [0, 33] {
        assert!(matches!(
            FixedBits::new(bits),
            Err(Error::InvalidParameter { .. })
        ));
        assert!(format!("fixed{bits}").parse::<ScaleScheme>().is_err());
    }
    assert!(matches!(
        compress::<f32>(&[], &CompressionConfig::default()),
        Err(Error::Empty { .. })
    ));
    let net = compress(&layers, &CompressionConfig::new(KernelCodebook::params(4))).unwrap();
    let mut other = layers.clone();
    other.swap(1, 3);
    assert!(matches!(
        net.report().against(&other).build(),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        net.report().against(&layers[..2]).build(),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn a_network_checks_its_codebook_ids_indices_and_scale_scheme_when_made() {
    let layers = small_network(78);
    let net = compress(&layers, &CompressionConfig::new(KernelCodebook::params(4))).unwrap();
    assert!(matches!(
        net.dense_layer(4).unwrap_err(),
        Error::LayerOutOfRange {
            layer: 4,
            layers: 4
        }
    ));
    let (codebooks, layers_c, scheme) = net.clone().into_parts();
    assert_eq!(scheme, ScaleScheme::L2(ScaleStorage::F16));
    // A layer pointing at codebook 2 of 2.
    let mut bad = layers_c.clone();
    if let CompressedLayer::Clustered { codebook, .. } = &mut bad[1] {
        *codebook = 2;
    }
    assert!(matches!(
        clustered_conv::CompressedNetwork::new(codebooks.clone(), bad, scheme).unwrap_err(),
        Error::CodebookOutOfRange {
            codebook: 2,
            codebooks: 2
        }
    ));
    // Layer 1 uses the 3×3 codebook of K = 4 entries: index 4 is out of range.
    let mut bad = layers_c.clone();
    if let CompressedLayer::Clustered { layer, .. } = &mut bad[1] {
        let mut idx = layer.indices().to_array();
        idx[[2, 3]] = 4;
        **layer = clustered_conv::ClusteredConv2d::new(
            idx,
            layer.scales().map(|s| s.to_array()),
            layer.bias().cloned(),
            layer.geometry(),
        )
        .unwrap();
    }
    assert!(matches!(
        clustered_conv::CompressedNetwork::new(codebooks.clone(), bad, scheme),
        Err(Error::IndexOutOfRange {
            out_channel: 2,
            in_channel: 3,
            index: 4,
            limit: 4
        })
    ));
    assert!(matches!(
        clustered_conv::CompressedNetwork::new(codebooks, layers_c, ScaleScheme::None),
        Err(Error::ScaleSchemeMismatch { codebook: 0, .. })
    ));
}

#[test]
fn a_report_without_originals_has_everything_but_the_errors() {
    let layers = small_network(79);
    let net = compress(&layers, &CompressionConfig::new(KernelCodebook::params(8))).unwrap();
    let alone = net.report().build().unwrap();
    let mut against = net.report().against(&layers).build().unwrap();
    assert!(against.layers[1].relative_error.unwrap() > 0.0);
    assert!(alone.layers.iter().all(|l| l.relative_error.is_none()));
    for l in &mut against.layers {
        l.relative_error = None;
        l.sqnr_db = None;
    }
    assert_eq!(alone, against);
    // Entropy of layer 1's indices, counted by hand.
    let CompressedLayer::Clustered { layer, .. } = &net.layers()[1] else {
        panic!("clustered")
    };
    let mut counts = std::collections::HashMap::new();
    for &i in layer.indices().to_array().iter() {
        *counts.entry(i).or_insert(0usize) += 1;
    }
    let n = layer.indices().to_array().len() as f64;
    let h: f64 = counts
        .values()
        .map(|&c| -(c as f64 / n) * (c as f64 / n).log2())
        .sum();
    assert!((alone.layers[1].entropy_bits.unwrap() - h).abs() < 1e-12);
}

/// The bit patterns of a weight, for byte-identity checks.
fn bits(w: &ndarray::Array4<f32>) -> Vec<u32> {
    w.iter().map(|v| v.to_bits()).collect()
}

/// `‖a − b‖ / ‖b‖`, computed here independently of the library.
fn rel_err(a: &ndarray::Array4<f32>, b: &ndarray::Array4<f32>) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}

/// A first layer reading a 1-channel image, then two wider 3×3 layers.
fn image_network(seed: u64) -> Vec<ConvLayer<f32>> {
    let mut r = rng(seed);
    let mut layer = |name: &str, o, i| ConvLayer {
        name: name.to_string(),
        weight: random4(&mut r, (o, i, 3, 3)).mapv(|v| v as f32),
        bias: None,
        geometry: ConvGeometry::default().padding(1, 1),
        mask: None,
    };
    vec![
        layer("conv1", 16, 1),
        layer("conv2", 32, 16),
        layer("conv3", 32, 32),
    ]
}

#[test]
fn keep_dense_patterns_keep_the_input_weights_bit_for_bit() {
    let layers = small_network(81);
    let config = CompressionConfig {
        codebook: KernelCodebook::params(16).seed(1),
        keep_dense: vec!["a".to_string(), "*b".to_string()],
        default_keep_dense: false,
        ..Default::default()
    };
    let net = compress(&layers, &config).unwrap();
    let report = net.report().against(&layers).build().unwrap();
    for (l, reason) in [(1, "matched pattern `a`"), (3, "matched pattern `*b`")] {
        let CompressedLayer::Dense { layer, .. } = &net.layers()[l] else {
            panic!("layer {l} should be dense");
        };
        assert_eq!(bits(layer.weight()), bits(&layers[l].weight));
        assert_eq!(layer.bias(), layers[l].bias.as_ref());
        assert_eq!(report.layers[l].dense_reason.as_deref(), Some(reason));
        assert_eq!(net.dense_reason(l).as_deref(), Some(reason));
    }
    assert_eq!(
        report.layers[2].dense_reason.as_deref(),
        Some("pointwise (1×1)")
    );
    assert!(matches!(net.layers()[0], CompressedLayer::Clustered { .. }));
    assert_eq!(report.layers[0].dense_reason, None);
    let text = report.to_string();
    assert!(text.contains("matched pattern `*b`"), "{text}");
}

#[cfg(feature = "onnx")]
#[test]
fn network_compress_keeps_a_matched_layer_dense_and_bit_identical() {
    use clustered_conv::nn::Layer;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/onnx/vgg_small.onnx"
    );
    let net = clustered_conv::io::read_onnx(std::path::Path::new(path))
        .unwrap()
        .network;
    let convs: Vec<usize> = (0..net.layers.len())
        .filter(|&l| matches!(net.layers[l], Layer::Conv(_)))
        .collect();
    let kept = convs[2];
    let config = CompressionConfig {
        codebook: KernelCodebook::params(16),
        keep_dense: vec![format!("layers.{kept}")],
        default_keep_dense: true,
        ..Default::default()
    };
    let out = net.compress(&config).unwrap();
    let (Layer::Conv(before), Layer::Conv(after)) = (&net.layers[kept], &out.layers[kept]) else {
        panic!("layer {kept} should stay a dense convolution");
    };
    assert_eq!(bits(after.weight()), bits(before.weight()));
    // The default rule keeps the 1-channel first layer dense too; the others are clustered.
    assert!(matches!(out.layers[convs[0]], Layer::Conv(_)));
    assert!(matches!(out.layers[convs[1]], Layer::Clustered { .. }));
    assert!(matches!(out.layers[convs[3]], Layer::Clustered { .. }));
}

#[test]
fn sqnr_matches_an_independent_computation() {
    let layers = image_network(82);
    let config = CompressionConfig {
        codebook: KernelCodebook::params(16).seed(2),
        default_keep_dense: false,
        ..Default::default()
    };
    let net = compress(&layers, &config).unwrap();
    let report = net.report().against(&layers).build().unwrap();
    for (l, line) in report.layers.iter().enumerate() {
        let w_hat = net.dense_layer(l).unwrap();
        let w = &layers[l].weight;
        let signal: f64 = w.iter().map(|v| f64::from(*v).powi(2)).sum();
        let noise: f64 = w_hat
            .weight()
            .iter()
            .zip(w.iter())
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
            .sum();
        let sqnr = 10.0 * (signal / noise).log10();
        assert!((line.sqnr_db.unwrap() - sqnr).abs() < 1e-6, "layer {l}");
        assert_eq!(line.k, Some(16));
    }
    // Without the originals the error is unknown.
    let bare = net.report().build().unwrap();
    assert!(bare.layers.iter().all(|l| l.sqnr_db.is_none()));
    assert!(report.to_string().contains("SQNR dB"));
}

#[test]
fn the_default_rule_keeps_an_image_input_layer_dense_and_can_be_switched_off() {
    let layers = image_network(83);
    let on = CompressionConfig {
        default_keep_dense: true,
        ..CompressionConfig::new(KernelCodebook::params(16).seed(4))
    };
    assert!(!CompressionConfig::default().default_keep_dense);
    let net = compress(&layers, &on).unwrap();
    let CompressedLayer::Dense { layer, .. } = &net.layers()[0] else {
        panic!("the 1-channel first layer should stay dense");
    };
    assert_eq!(bits(layer.weight()), bits(&layers[0].weight));
    let report = net.report().against(&layers).build().unwrap();
    assert_eq!(
        report.layers[0].dense_reason.as_deref(),
        Some("default rule: image input (Cin = 1)")
    );
    assert!(report.to_string().contains("default rule: image input"));
    assert!(report.layers[1..].iter().all(|l| l.codebook.is_some()));
    // Fewer than 4·K kernels: 512 < 4·256.
    let big_k = CompressionConfig {
        default_keep_dense: true,
        ..CompressionConfig::new(KernelCodebook::params(256))
    };
    let plan = big_k
        .plan(&[shape("c", 32, 16, 3, 1, 8), shape("d", 64, 64, 3, 1, 8)])
        .unwrap();
    assert_eq!(
        plan.layers[0].dense_reason.as_deref(),
        Some("default rule: only 512 kernels < 4·K = 1024")
    );
    assert_eq!(plan.layers[1].codebook, Some(0));
    let off = CompressionConfig {
        default_keep_dense: false,
        ..on
    };
    let net = compress(&layers, &off).unwrap();
    assert!(matches!(net.layers()[0], CompressedLayer::Clustered { .. }));
    assert_eq!(net.report().build().unwrap().layers[0].dense_reason, None);
}

#[test]
fn max_error_picks_the_smallest_k_of_the_ladder_that_meets_it_per_layer() {
    let layers = image_network(84);
    let max_error = 0.45;
    let config = CompressionConfig {
        codebook: KernelCodebook::params(256).seed(5),
        default_keep_dense: false,
        max_error: Some(max_error),
        ..Default::default()
    };
    let mut calls = 0;
    let net = config
        .compressor(&layers)
        .progress(|_| calls += 1)
        .run()
        .unwrap();
    assert!(calls > 0);
    let report = net.report().against(&layers).build().unwrap();
    let ladder = [16, 32, 64, 128, 256, 512, 1024];
    let mut ks = Vec::new();
    // conv1's 16 kernels take 576 bytes, as many as a 16-centroid codebook alone: dense.
    assert!(matches!(net.layers()[0], CompressedLayer::Dense { .. }));
    assert_eq!(
        report.layers[0].dense_reason.as_deref(),
        Some("no K of the ladder stores less than the dense weight")
    );
    for (l, layer) in layers.iter().enumerate().skip(1) {
        let CompressedLayer::Clustered { codebook, .. } = &net.layers()[l] else {
            panic!("layer {l} should be clustered");
        };
        assert_eq!(*codebook, l - 1, "one codebook per layer");
        let k = net.codebooks().get(l - 1).unwrap().len();
        let error = rel_err(net.dense_layer(l).unwrap().weight(), &layer.weight);
        assert!(error <= max_error, "layer {l}: K = {k}, error {error}");
        assert_eq!(report.layers[l].k, Some(k));
        assert_eq!(report.layers[l].error_by_k.last().unwrap().0, k);
        // The next smaller K of the ladder, fitted alone, misses the budget.
        let kernels = layer.weight.dim().0 * layer.weight.dim().1;
        let tried: Vec<usize> = ladder.iter().map(|&k| k.min(kernels)).collect();
        let pos = tried.iter().position(|&t| t == k).unwrap();
        if pos > 0 {
            let smaller = CompressionConfig {
                codebook: KernelCodebook::params(tried[pos - 1]).seed(5),
                scope: CodebookScope::PerLayer,
                default_keep_dense: false,
                ..Default::default()
            };
            let alone = compress(std::slice::from_ref(layer), &smaller).unwrap();
            let e = rel_err(alone.dense_layer(0).unwrap().weight(), &layer.weight);
            assert!(
                e > max_error,
                "layer {l}: K = {} already meets it",
                tried[pos - 1]
            );
        }
        ks.push(k);
    }
    // The budget is not met at K = 16 everywhere: the search went up the ladder.
    assert!(ks.iter().any(|&k| k > 16), "{ks:?}");
    assert!(report.to_string().contains("max-error search"));
}

#[test]
fn max_error_that_no_k_meets_keeps_the_layer_dense() {
    let layers = image_network(85);
    let config = CompressionConfig {
        codebook: KernelCodebook::params(16),
        default_keep_dense: false,
        max_error: Some(1e-9),
        ..Default::default()
    };
    let net = compress(&layers[..2], &config).unwrap();
    for (l, layer) in net.layers().iter().enumerate() {
        let CompressedLayer::Dense { layer, .. } = layer else {
            panic!("no K meets 1e-9 with f16 scales");
        };
        assert_eq!(bits(layer.weight()), bits(&layers[l].weight));
    }
    // conv2 (512 kernels of 3×3, 18,432 bytes dense): K = 512 would take 18,432 bytes for the
    // codebook alone, so the search stops at 256.
    assert_eq!(
        net.error_by_k(1).iter().map(|p| p.0).collect::<Vec<_>>(),
        [16, 32, 64, 128, 256]
    );
    assert_eq!(
        net.dense_reason(1).as_deref(),
        Some("no K ≤ 256 meets max error 0.000000001")
    );
    // conv1 (16 kernels): a 16-centroid codebook is as large as the layer.
    assert!(net.error_by_k(0).is_empty());
    assert_eq!(
        net.dense_reason(0).as_deref(),
        Some("no K of the ladder stores less than the dense weight")
    );
}

#[test]
fn bad_keep_dense_and_max_error_settings_are_errors() {
    let layers = image_network(86);
    for e in [-0.1, 0.0, f64::NAN, f64::INFINITY] {
        let config = CompressionConfig {
            max_error: Some(e),
            ..Default::default()
        };
        let err = compress(&layers, &config).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidParameter {
                    name: "max_error",
                    ..
                }
            ),
            "{e}: {err}"
        );
        assert!(config.plan(&[shape("c", 32, 16, 3, 1, 8)]).is_err());
    }
    let config = CompressionConfig {
        keep_dense: vec!["conv*".to_string(), "fc*".to_string()],
        ..Default::default()
    };
    let err = compress(&layers, &config).unwrap_err();
    assert!(matches!(&err, Error::KeepDenseUnmatched { pattern, .. } if pattern == "fc*"));
    assert!(err.to_string().contains("\"fc*\""), "{err}");
    let config = CompressionConfig {
        max_error: Some(0.1),
        scope: CodebookScope::parse_groups("0-2=16").unwrap(),
        ..Default::default()
    };
    assert!(matches!(
        compress(&layers, &config).unwrap_err(),
        Error::Unsupported { .. }
    ));
}
