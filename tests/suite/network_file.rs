//! Runnable networks in compressed-model files (format version 2): save → load gives the same
//! network and bit-identical outputs, the golden v2 file pins the writer, and every way a
//! graph can be wrong is refused with the node named.
#![cfg(feature = "safetensors")]

use std::path::{Path, PathBuf};

use crate::common::{random4, rng};
use crate::format::Edit;
use clustered_conv::io::{CompressedModel, SavedNetwork, FORMAT_VERSION};
use clustered_conv::nn::{AvgPool2d, BatchNorm2d, Layer, Linear, MaxPool2d, Network};
use clustered_conv::{CompressionConfig, Conv2d, ConvGeometry, Error, KernelCodebook, Symmetry};
use ndarray::{Array1, Array2, Array4};
use proptest::prelude::*;
use serde_json::json;

fn conv(seed: u64, cout: usize, cin: usize) -> Conv2d<f32> {
    let w = random4(&mut rng(seed), (cout, cin, 3, 3)).mapv(|v| v as f32);
    let bias = Array1::from_shape_fn(cout, |o| o as f32 * 0.125 - 0.25);
    Conv2d::new(w, Some(bias), ConvGeometry::default().padding(1, 1)).unwrap()
}

fn batch_norm(c: usize) -> BatchNorm2d<f32> {
    BatchNorm2d {
        gamma: Array1::from_shape_fn(c, |i| 1.0 + i as f32 * 0.1),
        beta: Array1::from_shape_fn(c, |i| i as f32 * 0.05 - 0.1),
        running_mean: Array1::from_shape_fn(c, |i| i as f32 * 0.02),
        running_var: Array1::from_shape_fn(c, |i| 0.5 + i as f32 * 0.3),
        eps: 1e-5,
        momentum: 0.1,
    }
}

/// A residual network of every kind of layer a file stores, its middle convolutions
/// clustered (TIC2, f16 scales, one shared codebook), the first kept dense.
fn residual_network() -> SavedNetwork {
    let layers = vec![
        Layer::Conv(conv(1, 6, 2)),      // 0 ← input
        Layer::BatchNorm(batch_norm(6)), // 1
        Layer::Relu,                     // 2
        Layer::Conv(conv(2, 6, 6)),      // 3
        Layer::Relu,                     // 4
        Layer::Conv(conv(3, 6, 6)),      // 5
        Layer::Add,                      // 6 ← 3 (relu) + 6 (conv)
        Layer::MaxPool(MaxPool2d {
            kernel: 2,
            stride: 2,
            padding: 0,
        }), // 7
        Layer::AvgPool(AvgPool2d {
            kernel: 3,
            stride: 1,
            padding: 1,
            count_include_pad: false,
        }), // 8
        Layer::GlobalAvgPool,            // 9
        Layer::Flatten,                  // 10
        Layer::Linear(Linear {
            weight: Array2::from_shape_fn((3, 6), |(o, i)| (o * 6 + i) as f32 * 0.05 - 0.4),
            bias: Array1::from_vec(vec![0.1, -0.2, 0.3]),
        }), // 11
    ];
    let inputs = vec![
        vec![0],
        vec![1],
        vec![2],
        vec![3],
        vec![4],
        vec![5],
        vec![3, 6],
        vec![7],
        vec![8],
        vec![9],
        vec![10],
        vec![11],
    ];
    let dense = Network::graph(layers, inputs).unwrap();
    let config = CompressionConfig::new(KernelCodebook::params(8).symmetry(Symmetry::Flip).seed(3));
    let network = dense.compress_where(&config, |l, _| l > 0).unwrap();
    let layer_names = [
        "stem",
        "stem_bn",
        "stem_relu",
        "block.conv1",
        "block.relu",
        "block.conv2",
        "block.add",
        "pool",
        "smooth",
        "gap",
        "flatten",
        "fc",
    ]
    .map(String::from)
    .to_vec();
    SavedNetwork {
        network,
        layer_names,
        input_shape: Some([2, 8, 8]),
    }
}

fn temp_file(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "clustered-conv-network-{test}-{}.safetensors",
        std::process::id()
    ))
}

fn input() -> Array4<f32> {
    random4(&mut rng(9), (3, 2, 8, 8)).mapv(|v| v as f32)
}

fn logit_bits(net: &Network<f32>) -> Vec<u32> {
    net.forward(input().view())
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn save_then_load_gives_the_same_network_and_bit_identical_outputs() {
    let saved = residual_network();
    assert!(saved
        .network
        .layers
        .iter()
        .any(|l| matches!(l, Layer::Clustered { .. })));
    let bytes = saved.to_bytes().unwrap();
    let back = SavedNetwork::from_bytes(&bytes).unwrap();
    assert_eq!(back, saved);
    assert_eq!(logit_bits(&back.network), logit_bits(&saved.network));
    // Through a file too, and the loaded network writes the same bytes again.
    let path = temp_file("net");
    saved.save(&path).unwrap();
    let loaded = Network::load(&path).unwrap();
    assert_eq!(loaded, saved.network);
    assert!(back.to_bytes().unwrap() == bytes);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_chain_loads_as_a_chain_and_network_save_names_its_layers() {
    let net = Network::new(vec![
        Layer::Conv(conv(4, 3, 1)),
        Layer::Relu,
        Layer::Flatten,
        Layer::Linear(Linear {
            weight: Array2::from_elem((2, 3 * 4 * 4), 0.01),
            bias: Array1::zeros(2),
        }),
    ]);
    let path = temp_file("chain");
    net.save(&path).unwrap();
    let back = SavedNetwork::load(&path).unwrap();
    assert!(back.network.is_chain());
    assert_eq!(back.network, net);
    assert_eq!(back.layer_names[3], "layers.3");
    assert_eq!(back.input_shape, None);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn the_file_is_still_a_compressed_model_for_inspect_and_decompress() {
    let saved = residual_network();
    let model = CompressedModel::from_bytes(&saved.to_bytes().unwrap()).unwrap();
    let names: Vec<&str> = model.network.layers().iter().map(|l| l.name()).collect();
    assert_eq!(names, ["stem", "block.conv1", "block.conv2"]);
    let mut passthrough: Vec<&str> = model.passthrough.iter().map(|t| t.name.as_str()).collect();
    passthrough.sort_unstable();
    assert_eq!(
        passthrough,
        [
            "fc.bias",
            "fc.weight",
            "stem_bn.bias",
            "stem_bn.running_mean",
            "stem_bn.running_var",
            "stem_bn.weight"
        ]
    );
    // The dense export carries every weight, under PyTorch's names.
    let dense =
        clustered_conv::io::read_safetensors(&model.to_dense_safetensors().unwrap()).unwrap();
    let has = |name: &str| dense.tensors.iter().any(|t| t.name == name);
    assert!(has("block.conv2.weight") && has("stem_bn.running_var"));
}

#[test]
fn a_state_dict_model_has_no_graph_and_says_so() {
    let mut saved = residual_network();
    let mut model = saved.to_model().unwrap();
    model.graph = None;
    let bytes = model.to_bytes().unwrap();
    let err = SavedNetwork::from_bytes(&bytes).unwrap_err();
    assert!(
        matches!(err, Error::InvalidModelFile { .. })
            && err.to_string().contains("no network graph"),
        "{err}"
    );
    // Without a graph the writer still writes version 1, which older readers read.
    assert_eq!(Edit::of(&bytes).metadata["format_version"], "1");
    // Unrounded scales (after fine-tuning) are refused until rounded.
    if let Some(Layer::Clustered { layer, .. }) = saved.network.layers.get_mut(3) {
        let mut s = layer.scales().unwrap().to_array();
        s[[0, 0]] += 1e-4;
        let bias = layer.bias().cloned();
        layer.set_params(Some(s), bias).unwrap();
    } else {
        panic!("layer 3 is clustered");
    }
    assert!(matches!(
        saved.to_bytes(),
        Err(Error::UnroundedScale { .. })
    ));
    saved.network.round_scales().unwrap();
    assert!(saved.to_bytes().is_ok());
}

#[test]
fn names_must_be_one_distinct_name_per_layer() {
    let mut saved = residual_network();
    saved.layer_names[4] = "stem".into();
    assert!(matches!(saved.to_bytes(), Err(Error::InvalidModel { .. })));
    saved.layer_names.pop();
    assert!(matches!(saved.to_bytes(), Err(Error::InvalidModel { .. })));
}

// ---------------------------------------------------------------------------------------
// Golden file

fn golden_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden_v2.safetensors")
}

fn golden_output_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden_v2_output.txt")
}

fn output_text(net: &Network<f32>) -> String {
    logit_bits(net)
        .iter()
        .map(|b| format!("{b:08x}\n"))
        .collect()
}

/// Rewrites the golden v2 file and its recorded output. Run only when the format version is
/// bumped: `cargo test --release --all-features --test suite -- --ignored write_golden_v2`.
#[test]
#[ignore]
fn write_golden_v2() {
    let saved = residual_network();
    saved.save(&golden_path()).unwrap();
    std::fs::write(golden_output_path(), output_text(&saved.network)).unwrap();
}

#[test]
fn todays_writer_writes_the_golden_v2_bytes() {
    let golden = std::fs::read(golden_path()).unwrap();
    let written = residual_network().to_bytes().unwrap();
    assert!(
        written == golden,
        "the writer no longer writes the golden v2 file"
    );
    assert_eq!(Edit::of(&golden).metadata["format_version"], "2");
}

#[test]
fn golden_v2_file_loads_and_gives_the_recorded_output() {
    let loaded = SavedNetwork::load(&golden_path()).unwrap();
    let recorded = std::fs::read_to_string(golden_output_path()).unwrap();
    assert_eq!(output_text(&loaded.network), recorded);
    assert_eq!(loaded, residual_network());
    assert_eq!(
        FORMAT_VERSION, 2,
        "bump: add a golden file for the new version"
    );
}

// ---------------------------------------------------------------------------------------
// Hostile graphs: each edit keeps the checksum right, so only the graph is wrong.

fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> Error {
    let bytes = residual_network().to_bytes().unwrap();
    let mut e = Edit::of(&bytes);
    e.model_json(|m| edit(&mut m["graph"]));
    match SavedNetwork::from_bytes(&e.bytes()) {
        Ok(_) => panic!("the edited file loaded"),
        Err(e) => e,
    }
}

fn assert_refused(err: &Error, needle: &str) {
    assert!(
        matches!(
            err,
            Error::InvalidModelFile { .. } | Error::InvalidGraph { .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
}

#[test]
fn a_cycle_or_a_dangling_input_is_refused() {
    // Node 2 (value 3) reading value 5, a later node's output: a cycle.
    let err = edited(|g| g["nodes"][2]["inputs"] = json!([5]));
    assert!(matches!(err, Error::InvalidGraph { .. }), "cycle: {err}");
    let err = edited(|g| g["nodes"][2]["inputs"] = json!([99]));
    assert!(matches!(err, Error::InvalidGraph { .. }), "dangling: {err}");
    let err = edited(|g| g["nodes"][2]["inputs"] = json!([u64::MAX]));
    assert_refused(&err, "stem_relu");
    // An add with one input, a ReLU with two.
    let err = edited(|g| g["nodes"][6]["inputs"] = json!([6]));
    assert!(
        matches!(err, Error::InvalidGraph { .. }),
        "add of one: {err}"
    );
    let err = edited(|g| g["nodes"][2]["inputs"] = json!([1, 2]));
    assert!(
        matches!(err, Error::InvalidGraph { .. }),
        "relu of two: {err}"
    );
}

#[test]
fn layers_and_tensors_must_be_used_exactly_once() {
    assert_refused(
        &edited(|g| g["nodes"][3]["layer"] = json!(2)),
        "named \"block.conv2\"",
    );
    assert_refused(
        &edited(|g| g["nodes"][3]["layer"] = json!(7)),
        "does not exist",
    );
    let err = edited(|g| {
        g["nodes"][5]["layer"] = json!(1);
        g["nodes"][5]["name"] = json!("block.conv1");
    });
    assert_refused(&err, "used by two nodes");
    // A ReLU where the last convolution was: its layer is left over.
    let err =
        edited(|g| g["nodes"][5] = json!({"name": "block.conv2", "inputs": [5], "op": "relu"}));
    assert_refused(&err, "not in the graph");
    // A ReLU where the batch norm was: its tensors are left over.
    let err = edited(|g| g["nodes"][1] = json!({"name": "stem_bn", "inputs": [1], "op": "relu"}));
    assert_refused(&err, "not used by the graph");
    // A batch norm whose tensors are missing.
    let err = edited(|g| {
        g["nodes"][9] =
            json!({"name": "gap", "inputs": [9], "op": "batch_norm", "eps": 1e-5, "momentum": 0.1})
    });
    assert_refused(&err, "\"gap.weight\" is missing");
}

#[test]
fn bad_parameters_and_unknown_operators_are_refused() {
    let err = edited(|g| g["nodes"][7]["kernel"] = json!(0));
    assert_refused(&err, "pool");
    let err = edited(|g| g["nodes"][8]["padding"] = json!(2));
    assert_refused(&err, "padding 2");
    let err = edited(|g| g["nodes"][7]["stride"] = json!(1u64 << 40));
    assert_refused(&err, "stride");
    let err = edited(|g| g["nodes"][1]["eps"] = json!(-1.0));
    assert_refused(&err, "eps");
    let err = edited(|g| g["nodes"][4]["op"] = json!("softmax"));
    assert_refused(&err, "softmax");
    let err = edited(|g| g["input_shape"] = json!([0, 8, 8]));
    assert_refused(&err, "input shape");
    let err = edited(|g| g["nodes"][4]["name"] = json!("stem"));
    assert_refused(&err, "used twice");
}

#[test]
fn wrong_tensor_shapes_are_refused_with_the_node_named() {
    let bytes = residual_network().to_bytes().unwrap();
    let mut e = Edit::of(&bytes);
    let (_, shape, data) = e.tensors.get_mut("stem_bn.running_var").unwrap();
    shape[0] = 5;
    data.truncate(20);
    let err = SavedNetwork::from_bytes(&e.bytes()).unwrap_err();
    assert_refused(&err, "stem_bn");
    let mut e = Edit::of(&bytes);
    let (_, shape, _) = e.tensors.get_mut("fc.weight").unwrap();
    *shape = vec![18];
    assert_refused(
        &SavedNetwork::from_bytes(&e.bytes()).unwrap_err(),
        "fc.weight is not 2-D",
    );
    // A graph in a file that claims version 1.
    let mut e = Edit::of(&bytes);
    e.metadata.insert("format_version".into(), "1".into());
    assert_refused(
        &SavedNetwork::from_bytes(&e.bytes()).unwrap_err(),
        "version 1",
    );
}

#[test]
fn truncated_files_are_errors() {
    let bytes = residual_network().to_bytes().unwrap();
    for cut in [0, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            SavedNetwork::from_bytes(&bytes[..cut]).is_err(),
            "cut at {cut}"
        );
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        (0u64..16).prop_map(|v| json!(v)),
        any::<u64>().prop_map(|v| json!(v)),
        any::<i64>().prop_map(|v| json!(v)),
        (-2.0f64..2.0).prop_map(|v| json!(v)),
        proptest::collection::vec(0u64..14, 0..4).prop_map(|v| json!(v)),
        prop_oneof![
            Just("relu"),
            Just("add"),
            Just("conv"),
            Just("linear"),
            Just("batch_norm"),
            Just("max_pool"),
            Just("stem"),
            Just("")
        ]
        .prop_map(|s| json!(s)),
        Just(serde_json::Value::Null),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Random edits of the graph (checksum kept right): loading returns `Ok` or `Err`, never
    /// panics; what loads runs or errs, and saves to bytes that load back to the same network.
    #[test]
    fn edited_graphs_never_panic(
        node in 0usize..13,
        field in prop_oneof![
            Just("inputs"), Just("layer"), Just("op"), Just("name"), Just("kernel"),
            Just("stride"), Just("padding"), Just("eps"), Just("momentum"),
            Just("count_include_pad")
        ],
        value in json_value(),
    ) {
        let bytes = residual_network().to_bytes().unwrap();
        let mut e = Edit::of(&bytes);
        e.model_json(|m| {
            let nodes = &mut m["graph"]["nodes"];
            if node < 12 {
                nodes[node][field] = value;
            } else {
                m["graph"]["input_shape"] = value;
            }
        });
        if let Ok(saved) = SavedNetwork::from_bytes(&e.bytes()) {
            let _ = saved.network.forward(input().view());
            let again = SavedNetwork::from_bytes(&saved.to_bytes().unwrap()).unwrap();
            prop_assert_eq!(again, saved);
        }
    }
}
