//! The compressed-model file format (feature `safetensors`): round trips, the golden v1 file,
//! hostile input, atomic writes, and a bounded mutation test.
#![cfg(feature = "safetensors")]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::common::{random4, rng};
use clustered_conv::io::{
    import_conv_layers, read_safetensors, CompressedModel, NamedTensor, TensorDtype,
    FORMAT_VERSION, MAX_LAYER_KERNELS,
};
use clustered_conv::{
    compress, CodebookScope, CompressedLayer, CompressedNetwork, CompressionConfig, ConvGeometry,
    ConvLayer, Error, FixedBits, KernelCodebook, ScaleScheme, ScaleStorage, Symmetry,
};
use ndarray::{Array1, Array2, Array4};
use proptest::prelude::*;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use sha2::{Digest, Sha256};

fn f32_layer(name: &str, shape: (usize, usize, usize, usize), seed: u64) -> ConvLayer<f32> {
    let mut r = rng(seed);
    ConvLayer {
        name: name.to_string(),
        weight: random4(&mut r, shape).mapv(|v| v as f32),
        bias: Some(Array1::from_shape_fn(shape.0, |o| o as f32 * 0.25 - 1.0)),
        geometry: ConvGeometry::default().padding(1, 1),
        mask: None,
    }
}

/// Three 3×3 layers (one pruned, one strided without bias) and a 1×1 layer kept dense.
fn layers() -> Vec<ConvLayer<f32>> {
    let a = f32_layer("features.0", (8, 3, 3, 3), 1);
    let mut b = f32_layer("features.3", (12, 8, 3, 3), 2);
    b.mask = Some(Array2::from_shape_fn((12, 8), |(o, i)| {
        (o * 5 + i) % 7 != 0
    }));
    let mut c = f32_layer("features.6", (16, 12, 3, 3), 3);
    c.bias = None;
    c.geometry = ConvGeometry::default().stride(2, 1).padding(1, 0);
    let d = f32_layer("head.0", (5, 16, 1, 1), 4);
    vec![a, b, c, d]
}

fn model(symmetry: Symmetry, scales: ScaleScheme, scope: CodebookScope) -> CompressedModel {
    let config = CompressionConfig {
        codebook: KernelCodebook::params(7)
            .symmetry(symmetry)
            .scale_scheme(scales)
            .seed(3),
        scope,
        ..Default::default()
    };
    CompressedModel::new(compress(&layers(), &config).unwrap())
}

/// `m` with its layers edited by `edit` (a network checks its layers when made).
fn edit_layers(m: &mut CompressedModel, edit: impl FnOnce(&mut [CompressedLayer<f32>])) {
    let (codebooks, mut layers, scheme) = m.network.clone().into_parts();
    edit(&mut layers);
    m.network = CompressedNetwork::new(codebooks, layers, scheme).unwrap();
}

fn input(c: usize) -> Array4<f32> {
    let mut r = rng(99);
    random4(&mut r, (2, c, 9, 9)).mapv(|v| v as f32)
}

/// Every layer's forward output on a fixed input.
fn outputs(m: &CompressedModel) -> Vec<Array4<f32>> {
    m.network
        .layers()
        .iter()
        .map(|layer| match layer {
            CompressedLayer::Clustered {
                codebook, layer, ..
            } => {
                let x = input(layer.in_channels());
                layer
                    .forward(m.network.codebooks().get(*codebook).unwrap(), x.view())
                    .unwrap()
            }
            CompressedLayer::Dense { layer, .. } => {
                layer.forward(input(layer.in_channels()).view()).unwrap()
            }
        })
        .collect()
}

#[test]
fn round_trip_is_exact_for_every_symmetry_and_scale_precision() {
    let symmetries = [
        Symmetry::Identity,
        Symmetry::Flip,
        Symmetry::Flips,
        Symmetry::Dihedral,
    ];
    let precisions = [
        ScaleScheme::L2(ScaleStorage::F16),
        ScaleScheme::L2(ScaleStorage::F32),
        ScaleScheme::None,
        ScaleScheme::L2(ScaleStorage::Fixed(FixedBits::new(6).unwrap())),
        // The extremes of the fixed-point format.
        ScaleScheme::L2(ScaleStorage::Fixed(FixedBits::new(1).unwrap())),
        ScaleScheme::L2(ScaleStorage::Fixed(FixedBits::new(32).unwrap())),
    ];
    for symmetry in symmetries {
        for scales in precisions {
            for scope in [CodebookScope::Shared, CodebookScope::PerLayer] {
                let original = model(symmetry, scales, scope.clone());
                let bytes = original.to_bytes().unwrap();
                let loaded = CompressedModel::from_bytes(&bytes).unwrap();
                assert_eq!(loaded, original, "{symmetry:?} {scales:?} {scope:?}");
                let (a, b) = (outputs(&original), outputs(&loaded));
                for (x, y) in a.iter().zip(&b) {
                    // Bit for bit, not within a tolerance.
                    assert!(
                        x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()),
                        "{symmetry:?} {scales:?}"
                    );
                }
                // Writing is deterministic.
                assert_eq!(loaded.to_bytes().unwrap(), bytes);
            }
        }
    }
}

#[test]
fn indices_take_the_documented_number_of_bits() {
    // K = 7 with TIC4 → K·S = 28 → 5 bits; 12·8 kernels → 60 bytes.
    let m = model(
        Symmetry::Flips,
        ScaleScheme::L2(ScaleStorage::F16),
        CodebookScope::Shared,
    );
    let bytes = m.to_bytes().unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let idx = file.tensor("features.3.weight.indices").unwrap();
    assert_eq!(idx.dtype(), Dtype::U8);
    assert_eq!(idx.shape(), &[60]);
    // Unpack by hand (LSB first) and compare with the layer's indices.
    let CompressedLayer::Clustered { layer, .. } = &m.network.layers()[1] else {
        panic!("clustered")
    };
    let data = idx.data();
    let bit = |n: usize| (data[n / 8] >> (n % 8)) & 1;
    for (j, &want) in layer.indices().to_array().iter().enumerate() {
        let got: u32 = (0..5).map(|t| u32::from(bit(j * 5 + t)) << t).sum();
        assert_eq!(got, want, "kernel {j}");
    }
    let scales = file.tensor("features.3.weight.scales").unwrap();
    assert_eq!(scales.dtype(), Dtype::F16);
    let mask = file.tensor("features.3.weight.mask").unwrap();
    assert_eq!(mask.shape(), &[12]);
}

#[test]
fn unrepresentable_scales_are_refused_until_rounded() {
    let mut m = model(
        Symmetry::Identity,
        ScaleScheme::L2(ScaleStorage::F16),
        CodebookScope::Shared,
    );
    let mut first = f32::NAN;
    edit_layers(&mut m, |layers| {
        let CompressedLayer::Clustered { layer, .. } = &mut layers[0] else {
            panic!("clustered")
        };
        let scales = layer
            .scales()
            .map(|s| s.to_array())
            .unwrap()
            .mapv(|s| s * 1.000_01);
        let bias = layer.bias().cloned();
        layer.set_params(Some(scales), bias).unwrap();
        // Fine-tuned scales are held as f32 until rounded.
        assert!(!layer.scales().is_some_and(|s| s.are_half()));
        first = layer.scales().map(|s| s.to_array()).unwrap()[[0, 0]];
    });
    // The error names the first scale that is off (every scale is: none is 0) and the fix.
    let err = m.to_bytes().unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnroundedScale { ref layer, out_channel: 0, in_channel: 0, value, ref precision }
                if layer == "features.0" && value == first && precision == "f16"
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("round_scales"), "{err}");
    m.network.round_scales().unwrap();
    let CompressedLayer::Clustered { layer, .. } = &m.network.layers()[0] else {
        panic!("clustered")
    };
    assert!(layer.scales().is_some_and(|s| s.are_half()));
    let loaded = CompressedModel::from_bytes(&m.to_bytes().unwrap()).unwrap();
    assert_eq!(loaded, m);
}

/// Every clustered layer: (scales held as f16, index bytes, scale bytes, kernels).
fn scale_storage(m: &CompressedModel) -> Vec<(bool, usize, usize, usize)> {
    m.network
        .layers()
        .iter()
        .filter_map(|layer| match layer {
            CompressedLayer::Clustered {
                codebook, layer, ..
            } => {
                let mem = layer.memory(m.network.codebooks().get(*codebook).unwrap());
                let kernels = layer.out_channels() * layer.in_channels();
                Some((
                    layer.scales().is_some_and(|s| s.are_half()),
                    mem.index_bytes,
                    mem.scale_bytes,
                    kernels,
                ))
            }
            CompressedLayer::Dense { .. } => None,
        })
        .collect()
}

#[test]
fn f16_scales_are_held_as_f16_after_compression_and_loading() {
    for scope in [CodebookScope::Shared, CodebookScope::PerLayer] {
        let original = model(Symmetry::Flip, ScaleScheme::L2(ScaleStorage::F16), scope);
        let bytes = original.to_bytes().unwrap();
        let loaded = CompressedModel::from_bytes(&bytes).unwrap();
        let storage = scale_storage(&loaded);
        assert_eq!(storage.len(), 3);
        for &(half, index_bytes, scale_bytes, kernels) in &storage {
            assert!(half);
            // A u8 index and an f16 scale per kernel.
            assert_eq!((index_bytes, scale_bytes), (kernels, 2 * kernels));
        }
        assert_eq!(scale_storage(&original), storage);
        assert_eq!(loaded, original);
        // The f16 store writes the same bytes back.
        assert_eq!(loaded.to_bytes().unwrap(), bytes);
        // The values are the file's f16 values.
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let CompressedLayer::Clustered { layer, .. } = &loaded.network.layers()[1] else {
            panic!("clustered")
        };
        let stored: Vec<f32> = file
            .tensor("features.3.weight.scales")
            .unwrap()
            .data()
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        assert_eq!(
            layer
                .scales()
                .map(|s| s.to_array())
                .unwrap()
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            stored
        );
    }
    // Other precisions are held as f32.
    for precision in [
        ScaleScheme::L2(ScaleStorage::F32),
        ScaleScheme::L2(ScaleStorage::Fixed(FixedBits::new(6).unwrap())),
    ] {
        let original = model(Symmetry::Identity, precision, CodebookScope::Shared);
        let loaded = CompressedModel::from_bytes(&original.to_bytes().unwrap()).unwrap();
        for m in [&original, &loaded] {
            for (half, _, scale_bytes, kernels) in scale_storage(m) {
                assert!(!half, "{precision:?}");
                assert_eq!(scale_bytes, 4 * kernels);
            }
        }
    }
}

#[test]
fn name_collisions_are_refused() {
    let mut m = model(
        Symmetry::Identity,
        ScaleScheme::L2(ScaleStorage::F16),
        CodebookScope::Shared,
    );
    edit_layers(&mut m, |layers| {
        if let CompressedLayer::Clustered { name, .. } = &mut layers[1] {
            *name = "features.0".to_string();
        }
    });
    // The first tensor of the renamed layer is the first collision.
    let err = m.to_bytes().unwrap_err();
    assert!(
        matches!(err, Error::DuplicateTensorName { ref name } if name == "features.0.weight.indices"),
        "{err:?}"
    );
    // A pass-through tensor named like a layer's tensor collides too.
    let mut m = golden_model();
    m.passthrough.push(NamedTensor::from_f32(
        "features.6.weight.scales".to_string(),
        TensorDtype::F32,
        &ndarray::ArrayD::zeros(ndarray::IxDyn(&[2])).view(),
    ));
    assert!(matches!(
        m.to_bytes(),
        Err(Error::DuplicateTensorName { ref name }) if name == "features.6.weight.scales"
    ));
}

/// A state dict with an f16 layer, a bias, BatchNorm and a step counter.
fn imported_model() -> (CompressedModel, Vec<u8>) {
    let mut r = rng(7);
    let w0: Vec<u8> = random4(&mut r, (8, 3, 3, 3))
        .iter()
        .flat_map(|&v| half::f16::from_f32(v as f32).to_le_bytes())
        .collect();
    let b0: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let w1: Vec<u8> = random4(&mut r, (8, 8, 3, 3))
        .iter()
        .flat_map(|&v| (v as f32).to_le_bytes())
        .collect();
    let bn: Vec<u8> = (0..8)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let steps = 11i64.to_le_bytes().to_vec();
    let state = safetensors::serialize(
        vec![
            (
                "f.0.weight",
                TensorView::new(Dtype::F16, vec![8, 3, 3, 3], &w0).unwrap(),
            ),
            (
                "f.0.bias",
                TensorView::new(Dtype::F32, vec![8], &b0).unwrap(),
            ),
            (
                "f.2.weight",
                TensorView::new(Dtype::F32, vec![8, 8, 3, 3], &w1).unwrap(),
            ),
            (
                "f.1.weight",
                TensorView::new(Dtype::F32, vec![8], &bn).unwrap(),
            ),
            (
                "f.1.num_batches_tracked",
                TensorView::new(Dtype::I64, vec![], &steps).unwrap(),
            ),
        ],
        None,
    )
    .unwrap();
    let imported = import_conv_layers(&read_safetensors(&state).unwrap(), &HashMap::new()).unwrap();
    let config = CompressionConfig::new(KernelCodebook::params(5));
    let net = compress(&imported.layers, &config).unwrap();
    (CompressedModel::from_import(net, &imported).unwrap(), state)
}

#[test]
fn decompress_gives_the_reconstructed_weights_under_the_original_names_and_types() {
    let (m, state) = imported_model();
    let loaded = CompressedModel::from_bytes(&m.to_bytes().unwrap()).unwrap();
    assert_eq!(loaded, m);
    assert_eq!(loaded.dtypes[0].weight, TensorDtype::F16);
    let dense = read_safetensors(&loaded.to_dense_safetensors().unwrap()).unwrap();
    let original = read_safetensors(&state).unwrap();
    let names: Vec<_> = dense.tensors.iter().map(|t| t.name.as_str()).collect();
    let want: Vec<_> = original.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, want);
    for t in &dense.tensors {
        let o = original.tensors.iter().find(|o| o.name == t.name).unwrap();
        assert_eq!((t.dtype, &t.shape), (o.dtype, &o.shape), "{}", t.name);
    }
    // Pass-through bytes are untouched.
    for name in ["f.1.weight", "f.1.num_batches_tracked", "f.0.bias"] {
        let a = dense.tensors.iter().find(|t| t.name == name).unwrap();
        let b = original.tensors.iter().find(|t| t.name == name).unwrap();
        assert_eq!(a.bytes, b.bytes, "{name}");
    }
    // Weights: the codebook reconstruction, rounded to the stored type.
    for (l, name) in ["f.0.weight", "f.2.weight"].iter().enumerate() {
        let t = dense.tensors.iter().find(|t| &t.name == name).unwrap();
        let got = t.to_f32().unwrap();
        let want = m.network.dense_layer(l).unwrap();
        for (g, w) in got.iter().zip(want.weight()) {
            let w = if l == 0 {
                half::f16::from_f32(*w).to_f32()
            } else {
                *w
            };
            assert_eq!(g.to_bits(), w.to_bits(), "{name}");
        }
    }
}

#[test]
fn decompressed_file_opens_in_python_safetensors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/pyenv/bin/python");
    if !python.exists() {
        eprintln!(
            "SKIPPED: {} not found; run `bash scripts/setup_python.sh` for the Python check",
            python.display()
        );
        return;
    }
    let (m, _) = imported_model();
    let dir = std::env::temp_dir().join(format!("clustered-conv-py-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dense = dir.join("dense.safetensors");
    std::fs::write(&dense, m.to_dense_safetensors().unwrap()).unwrap();
    let mut expected = serde_json::Map::new();
    let mut entry = |name: &str, dtype: &str, shape: &[usize], values: Vec<f64>| {
        expected.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "values": values}),
        );
    };
    for (l, (name, dtype)) in [("f.0", "float16"), ("f.2", "float32")].iter().enumerate() {
        let conv = m.network.dense_layer(l).unwrap();
        let w = conv.weight();
        entry(
            &format!("{name}.weight"),
            dtype,
            w.shape(),
            w.iter().map(|&v| f64::from(v)).collect(),
        );
        if let Some(b) = conv.bias() {
            entry(
                &format!("{name}.bias"),
                "float32",
                b.shape(),
                b.iter().map(|&v| f64::from(v)).collect(),
            );
        }
    }
    entry(
        "f.1.weight",
        "float32",
        &[8],
        (0..8).map(|i| f64::from(i) * 0.5).collect(),
    );
    entry("f.1.num_batches_tracked", "int64", &[], vec![11.0]);
    let expected_path = dir.join("expected.json");
    std::fs::write(
        &expected_path,
        serde_json::Value::Object(expected).to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(&python)
        .arg(root.join("scripts/check_decompressed.py"))
        .arg(&dense)
        .arg(&expected_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------
// Golden file

fn golden_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden_v1.safetensors")
}

fn golden_output_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden_v1_output.txt")
}

/// The golden model: TIC4, f16 scales, shared codebook, a pruned layer and a dense 1×1.
fn golden_model() -> CompressedModel {
    model(
        Symmetry::Flips,
        ScaleScheme::L2(ScaleStorage::F16),
        CodebookScope::Shared,
    )
}

/// Every layer's output on the fixed input, as text (one value per line, bits in hex).
fn output_text(m: &CompressedModel) -> String {
    outputs(m)
        .iter()
        .flat_map(|y| y.iter().map(|v| format!("{:08x}\n", v.to_bits())))
        .collect()
}

/// Rewrites the golden file and its recorded output. Run only when the format version is
/// bumped: `cargo test --release --features safetensors --test format -- --ignored`.
#[test]
#[ignore]
fn write_golden_v1() {
    let m = golden_model();
    m.save(&golden_path()).unwrap();
    std::fs::write(golden_output_path(), output_text(&m)).unwrap();
}

#[test]
fn todays_writer_writes_the_golden_v1_bytes() {
    // The writer is deterministic and unchanged since version 1 was pinned: byte for byte.
    let golden = std::fs::read(golden_path()).unwrap();
    let written = golden_model().to_bytes().unwrap();
    assert_eq!(written.len(), golden.len());
    assert!(
        written == golden,
        "the writer no longer writes the golden v1 file"
    );
    // Reading and writing again is the identity on the bytes.
    let reread = CompressedModel::from_bytes(&golden).unwrap();
    assert!(reread.to_bytes().unwrap() == golden);
}

#[test]
fn golden_v1_file_loads_and_gives_the_recorded_output() {
    let loaded = CompressedModel::load(&golden_path()).unwrap();
    let recorded = std::fs::read_to_string(golden_output_path()).unwrap();
    assert_eq!(output_text(&loaded), recorded);
    // And it is the same model as today's writer makes from the same seed.
    assert_eq!(loaded, golden_model());
    // A file without a graph is still written as version 1 (golden v2 pins version 2).
    assert_eq!(Edit::of(&valid_file()).metadata["format_version"], "1");
    const { assert!(FORMAT_VERSION >= 2) };
}

// ---------------------------------------------------------------------------------------
// Hostile input

/// A parsed file whose tensors and metadata a test can edit, then re-serialise with the
/// checksum recomputed from the module docs' definition (so only the edit is wrong).
pub(crate) struct Edit {
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
}

impl Edit {
    pub(crate) fn of(bytes: &[u8]) -> Edit {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
        let file = safetensors::SafeTensors::deserialize(bytes).unwrap();
        Edit {
            metadata: header.metadata().clone().unwrap().into_iter().collect(),
            tensors: file
                .tensors()
                .into_iter()
                .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
                .collect(),
        }
    }

    pub(crate) fn model_json(&mut self, edit: impl FnOnce(&mut serde_json::Value)) -> &mut Self {
        let mut v: serde_json::Value = serde_json::from_str(&self.metadata["model"]).unwrap();
        edit(&mut v);
        self.metadata.insert("model".into(), v.to_string());
        self
    }

    fn checksum(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.metadata["model"].as_bytes());
        for (name, (dtype, shape, bytes)) in &self.tensors {
            h.update(name.as_bytes());
            h.update([0]);
            h.update(format!("{dtype:?}").as_bytes());
            h.update([0]);
            for &d in shape {
                h.update((d as u64).to_le_bytes());
            }
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn bytes(&mut self) -> Vec<u8> {
        let sum = self.checksum();
        self.metadata.insert("payload_sha256".into(), sum);
        let views: Vec<_> = self
            .tensors
            .iter()
            .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, Some(self.metadata.clone().into_iter().collect())).unwrap()
    }
}

fn valid_file() -> Vec<u8> {
    golden_model().to_bytes().unwrap()
}

#[test]
fn the_checksum_follows_the_documented_definition() {
    let bytes = valid_file();
    let edit = Edit::of(&bytes);
    assert_eq!(edit.checksum(), edit.metadata["payload_sha256"]);
    // Re-serialising with the recomputed checksum reads back.
    assert!(CompressedModel::from_bytes(&Edit::of(&bytes).bytes()).is_ok());
}

#[test]
fn truncated_files_are_rejected() {
    let bytes = valid_file();
    for cut in [0, 4, 8, 9, 100, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            matches!(
                CompressedModel::from_bytes(&bytes[..cut]),
                Err(Error::InvalidSafetensors { .. })
            ),
            "cut at {cut}"
        );
    }
}

#[test]
fn a_plain_state_dict_or_another_format_is_rejected_by_its_magic() {
    let (_, state) = imported_model();
    let err = CompressedModel::from_bytes(&state).unwrap_err();
    assert!(
        matches!(err, Error::NotCompressedModel { found: None }),
        "{err}"
    );
    assert!(err.to_string().contains("compressed first"), "{err}");
    let mut edit = Edit::of(&valid_file());
    edit.metadata.insert("format".into(), "gguf".into());
    assert!(matches!(
        CompressedModel::from_bytes(&edit.bytes()),
        Err(Error::NotCompressedModel { found: Some(ref f) }) if f == "gguf"
    ));
    // The magic is checked before anything else of the metadata.
    edit.metadata.remove("format_version");
    assert!(matches!(
        CompressedModel::from_bytes(&edit.bytes()),
        Err(Error::NotCompressedModel { .. })
    ));
}

#[test]
fn a_flipped_bit_fails_the_checksum() {
    let bytes = valid_file();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    // Every bit of the last 64 payload bytes, and bits of the first payload bytes.
    for pos in (8 + n..8 + n + 16).chain(bytes.len() - 64..bytes.len()) {
        for bit in 0..8 {
            let mut bad = bytes.clone();
            bad[pos] ^= 1 << bit;
            assert!(
                matches!(
                    CompressedModel::from_bytes(&bad),
                    Err(Error::ChecksumMismatch { .. })
                ),
                "byte {pos} bit {bit}"
            );
        }
    }
    // A digit of the stride inside the model metadata: still parses, the checksum catches it.
    let text = String::from_utf8_lossy(&bytes[8..8 + n]).to_string();
    let pos = 8 + text.find(r#"\"stride\":[2"#).unwrap() + r#"\"stride\":["#.len();
    let mut bad = bytes.clone();
    bad[pos] ^= 0b10; // '2' → '0'
    assert!(matches!(
        CompressedModel::from_bytes(&bad),
        Err(Error::ChecksumMismatch { .. })
    ));
}

#[test]
fn lying_lengths_are_rejected() {
    // The header length prefix claims more bytes than the file has.
    let mut bad = valid_file();
    let n = u64::from_le_bytes(bad[..8].try_into().unwrap());
    bad[..8].copy_from_slice(&(n + 4096).to_le_bytes());
    assert!(matches!(
        CompressedModel::from_bytes(&bad),
        Err(Error::InvalidSafetensors { .. })
    ));
    // The metadata claims a layer larger than its packed indices (checksum recomputed).
    let mut edit = Edit::of(&valid_file());
    edit.model_json(|v| v["layers"][1]["shape"][0] = 13.into());
    let err = CompressedModel::from_bytes(&edit.bytes()).unwrap_err();
    assert!(matches!(err, Error::InvalidModelFile { .. }), "{err}");
    // Packed indices one byte short of their shape.
    let mut edit = Edit::of(&valid_file());
    let t = edit.tensors.get_mut("features.3.weight.indices").unwrap();
    t.2.pop();
    t.1 = vec![t.2.len()];
    let err = CompressedModel::from_bytes(&edit.bytes()).unwrap_err();
    assert!(matches!(err, Error::InvalidModelFile { .. }), "{err}");
}

#[test]
fn an_index_beyond_the_codebook_is_rejected() {
    // K = 7, TIC4: 28 entries in 5 bits, so 31 is encodable but out of range.
    let mut edit = Edit::of(&valid_file());
    let t = edit.tensors.get_mut("features.0.weight.indices").unwrap();
    t.2[0] |= 0b1_1111;
    let err = CompressedModel::from_bytes(&edit.bytes()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::IndexOutOfRange {
                index: 31,
                out_channel: 0,
                in_channel: 0,
                limit: 28
            }
        ),
        "{err}"
    );
}

#[test]
fn huge_claimed_shapes_are_refused_before_allocating() {
    let mut edit = Edit::of(&valid_file());
    edit.model_json(|v| {
        v["layers"][0]["shape"][0] = (1u64 << 40).into();
        v["layers"][0]["shape"][1] = (1u64 << 40).into();
    });
    let err = CompressedModel::from_bytes(&edit.bytes()).unwrap_err();
    assert!(
        matches!(err, Error::LimitExceeded { limit, .. } if limit == MAX_LAYER_KERNELS),
        "{err}"
    );
    let mut edit = Edit::of(&valid_file());
    edit.model_json(|v| v["codebooks"][0]["k"] = u64::MAX.into());
    let err = CompressedModel::from_bytes(&edit.bytes()).unwrap_err();
    assert!(matches!(err, Error::LimitExceeded { .. }), "{err}");
    let mut edit = Edit::of(&valid_file());
    edit.model_json(|v| v["layers"][0]["padding"][0] = (1u64 << 50).into());
    let err = CompressedModel::from_bytes(&edit.bytes()).unwrap_err();
    assert!(matches!(err, Error::LimitExceeded { .. }), "{err}");
}

#[test]
fn nan_weights_are_rejected() {
    for name in [
        "clustered_conv.codebook.0",
        "features.0.bias",
        "head.0.weight",
    ] {
        let mut edit = Edit::of(&valid_file());
        let t = edit.tensors.get_mut(name).unwrap();
        t.2[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        let err = CompressedModel::from_bytes(&edit.bytes()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidModelFile { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains("non-finite"), "{err}");
    }
    let mut edit = Edit::of(&valid_file());
    let t = edit.tensors.get_mut("features.3.weight.scales").unwrap();
    t.2[0..2].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
    let err = CompressedModel::from_bytes(&edit.bytes()).unwrap_err();
    assert!(matches!(err, Error::InvalidModelFile { .. }), "{err}");
}

#[test]
fn a_future_version_is_refused_and_garbage_versions_too() {
    let mut edit = Edit::of(&valid_file());
    edit.metadata.insert("format_version".into(), "3".into());
    let err = CompressedModel::from_bytes(&edit.bytes()).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedVersion { ref found, supported: 2 } if found == "3"),
        "{err}"
    );
    for garbage in ["0", "", "1.0", "-1"] {
        edit.metadata
            .insert("format_version".into(), garbage.into());
        assert!(matches!(
            CompressedModel::from_bytes(&edit.bytes()),
            Err(Error::InvalidModelFile { .. })
        ));
    }
}

type JsonEdit = fn(&mut serde_json::Value);

#[test]
fn unknown_names_in_the_metadata_are_rejected_naming_what_is_accepted() {
    let cases: [(JsonEdit, &str, &str); 5] = [
        (
            |v| v["codebooks"][0]["symmetry"] = "ihv".into(),
            "codebook 0: invalid symmetry \"ihv\"",
            "expected i, ih, ihvo or ihvoIHVO",
        ),
        (
            |v| v["codebooks"][0]["scale_mode"] = "L2Norm".into(),
            "codebook 0: invalid scale mode \"L2Norm\"",
            "expected l2norm or none",
        ),
        (
            |v| v["scales"] = "fixed0".into(),
            "__metadata__.model.scales: invalid scale scheme \"fixed0\"",
            "expected f16, f32, none or fixed<bits>",
        ),
        (
            |v| v["layers"][2]["bias_dtype"] = "f32".into(),
            "layer \"features.6\": invalid element type \"f32\"",
            "expected F16, BF16, F32 or F64",
        ),
        (
            |v| v["layers"][0]["weight_dtype"] = "I64".into(),
            "layer \"features.0\": invalid element type \"I64\"",
            "expected F16, BF16, F32 or F64",
        ),
    ];
    for (edit_json, context, accepted) in cases {
        let mut edit = Edit::of(&valid_file());
        edit.model_json(edit_json);
        let err = CompressedModel::from_bytes(&edit.bytes()).unwrap_err();
        assert!(matches!(err, Error::InvalidModelFile { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(context) && text.contains(accepted), "{text}");
    }
    // The names as written: the golden file's metadata holds the Display forms.
    let edit = Edit::of(&valid_file());
    let v: serde_json::Value = serde_json::from_str(&edit.metadata["model"]).unwrap();
    assert_eq!(v["scales"], "f16");
    assert_eq!(v["codebooks"][0]["symmetry"], "ihvo");
    assert_eq!(v["codebooks"][0]["scale_mode"], "l2norm");
    assert_eq!(v["layers"][3]["kind"], "dense");
    assert_eq!(v["layers"][3]["weight_dtype"], "F32");
}

#[test]
fn unknown_and_missing_tensors_are_rejected() {
    let mut edit = Edit::of(&valid_file());
    edit.tensors
        .insert("stowaway".into(), (Dtype::U8, vec![1], vec![0]));
    assert!(matches!(
        CompressedModel::from_bytes(&edit.bytes()),
        Err(Error::InvalidModelFile { .. })
    ));
    let mut edit = Edit::of(&valid_file());
    edit.tensors.remove("features.6.weight.scales");
    assert!(matches!(
        CompressedModel::from_bytes(&edit.bytes()),
        Err(Error::InvalidModelFile { .. })
    ));
}

// ---------------------------------------------------------------------------------------
// Atomic writes

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("clustered-conv-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_failed_save_leaves_the_destination_untouched() {
    let dir = scratch_dir("atomic");
    let path = dir.join("model.safetensors");
    let good = golden_model();
    good.save(&path).unwrap();
    let before = std::fs::read(&path).unwrap();
    // A model that cannot be stored: nothing is written.
    let mut bad = good.clone();
    bad.dtypes.pop();
    assert!(matches!(bad.save(&path), Err(Error::InvalidModel { .. })));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // A destination in a missing directory: a write error, nothing created; the error keeps
    // the operating system's error as its source.
    let missing = dir.join("no/such/dir/model.safetensors");
    let err = good.save(&missing).unwrap_err();
    assert!(
        matches!(err, Error::Write { ref path, ref source }
            if path == &missing && source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    let source = std::error::Error::source(&err).expect("a source");
    assert_eq!(
        err.to_string(),
        format!("cannot write {}: {source}", missing.display())
    );
    assert!(!missing.exists());
    // A destination that is a directory: the rename fails, the temporary file is removed.
    assert!(matches!(good.save(&dir), Err(Error::Write { .. })));
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("model.safetensors")]
    );
    assert_eq!(CompressedModel::load(&path).unwrap(), good);
    let absent = dir.join("absent");
    let err = CompressedModel::load(&absent).unwrap_err();
    assert!(
        matches!(err, Error::Io { ref path, ref source }
            if path == &absent && source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    let source = std::error::Error::source(&err).expect("a source");
    assert!(source.downcast_ref::<std::io::Error>().is_some());
    assert_eq!(
        err.to_string(),
        format!("cannot read {}: {source}", absent.display())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------
// Mutation test: random truncations and byte flips never panic and never load a different
// model.

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_never_panic_nor_load_a_different_model(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let original = golden_model();
        let mut bytes = original.to_bytes().unwrap();
        for (at, mask) in &flips {
            let i = at.index(bytes.len());
            bytes[i] ^= mask;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        match CompressedModel::from_bytes(&bytes) {
            Ok(loaded) => prop_assert_eq!(loaded, original),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
