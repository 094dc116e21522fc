//! ONNX import and export (feature `onnx`): a trained CNN from PyTorch, Keras or a model zoo
//! becomes a [`Network`] that runs, compresses and fine-tunes, and a network goes back to
//! ONNX with dense weights for onnxruntime, tract or PyTorch.
//!
//! The files are read and written with `prost`, from ONNX's own schema (IR version 10):
//! `proto.rs` is generated from `scripts/onnx/onnx.proto` by `scripts/onnx/generate_proto.sh`
//! and committed, so no protobuf compiler is needed to build. Two crates were tried first:
//! `onnx-protobuf` 0.2.3 declares `protobuf ^3.4` but its generated code compiles only against
//! exactly 3.4.0 (rust-protobuf checks its runtime version), and burn's `onnx-ir` rewrites the
//! graph into its own IR (simplification passes, burn-tensor types), which hides the node
//! names this importer reports, and pulls a pre-release of burn.
//!
//! Supported operators (opset 7 and later; a node outside this list, or an attribute an
//! operator does not define here, is refused with an [`Error::OnnxNode`] that names the node):
//! Conv (groups = 1; any stride, padding and dilation), BatchNormalization (inference),
//! Relu, MaxPool and AveragePool (square windows), GlobalAveragePool, Add and Sum of
//! activations (residual connections), Flatten (axis 1), Reshape to `(N, -1)`, Gemm, MatMul
//! followed by an Add of a bias, and Dropout, Identity and Constant, which only rename.

mod export;
mod import;
mod node;
#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod proto;
mod tensor;

use std::path::Path;

use ndarray::Array4;
use prost::Message;

use self::proto::ModelProto;

use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::nn::Network;

/// Largest ONNX file [`read_onnx`] reads (2 GiB, protobuf's own limit for one message).
pub const MAX_ONNX_BYTES: u64 = 2 << 30;

/// A network read from ONNX.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    /// The network, in `f32`, as a graph of its layers.
    pub network: Network<f32>,
    /// Per layer of [`OnnxModel::network`]: the name of the ONNX node it came from.
    pub layer_names: Vec<String>,
    /// The graph input's name.
    pub input_name: String,
    /// `(C, H, W)` of the input where the file fixes them.
    pub input_shape: [Option<usize>; 3],
    /// The opset of the default domain.
    pub opset: i64,
    /// Who wrote the file (e.g. `pytorch 2.5`).
    pub producer: String,
}

/// Reads an ONNX model from `bytes`.
///
/// Nodes that the graph's output does not depend on are dropped. When the file fixes the
/// input's `C, H, W`, one zero image runs through the network, so that a shape mismatch
/// (an add of two shapes, a weight for other channels) is refused here, with the node's name,
/// rather than at the first real forward pass.
///
/// # Errors
/// [`Error::InvalidOnnx`] for bytes that are not an ONNX model, a graph with other than one
/// image input and one output, a cycle, or a node input that nothing produces;
/// [`Error::OnnxNode`] for an unsupported operator or attribute, or a node whose weights or
/// shapes do not fit.
pub fn import_onnx(bytes: &[u8]) -> Result<OnnxModel> {
    let model = ModelProto::decode(bytes).map_err(|e| Error::InvalidOnnx {
        what: format!("not a readable ONNX (protobuf) file: {e}"),
    })?;
    let opset = default_opset(&model)?;
    let graph = model.graph.as_ref().ok_or_else(|| Error::InvalidOnnx {
        what: "the model has no graph".into(),
    })?;
    let (input_name, input_shape) = import::graph_input(graph)?;
    let nodes = import::ordered_nodes(graph)?;
    let mut builder = import::Builder::new(graph, &input_name, &nodes);
    for node in &nodes {
        builder.add(node)?;
    }
    let output = &graph.output[0].name;
    let import::Built {
        network,
        layer_names,
        widths,
    } = builder.finish(output)?;
    if let [Some(c), Some(h), Some(w)] = input_shape {
        check_shapes(&network, &layer_names, (c, h, w), &widths)?;
    }
    Ok(OnnxModel {
        network,
        layer_names,
        input_name,
        input_shape,
        opset,
        producer: format!("{} {}", model.producer_name, model.producer_version)
            .trim()
            .to_string(),
    })
}

/// The opset of the default (`ai.onnx`) domain.
fn default_opset(model: &ModelProto) -> Result<i64> {
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| Error::InvalidOnnx {
            what: "the model imports no opset of the default domain".into(),
        })?;
    if opset < 7 {
        return Err(Error::InvalidOnnx {
            what: format!("opset {opset} is older than 7, the oldest supported"),
        });
    }
    Ok(opset)
}

/// Runs one zero image of `(C, H, W)` through the network and checks each `(N, k)`
/// reshape's width.
fn check_shapes(
    network: &Network<f32>,
    names: &[String],
    (c, h, w): (usize, usize, usize),
    widths: &[(usize, usize)],
) -> Result<()> {
    let shapes = network
        .output_shapes(Array4::zeros((1, c, h, w)).view())
        .map_err(|(l, e)| Error::OnnxNode {
            node: names[l].clone(),
            op: "(shape check)".into(),
            what: e.to_string(),
        })?;
    for &(l, k) in widths {
        if shapes[l][1] != k {
            return Err(Error::OnnxNode {
                node: names[l].clone(),
                op: "Reshape".into(),
                what: format!("reshapes {} features per image to width {k}", shapes[l][1]),
            });
        }
    }
    Ok(())
}

/// Reads an ONNX model from a file; see [`import_onnx`].
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, [`Error::LimitExceeded`] above
/// [`MAX_ONNX_BYTES`], and as [`import_onnx`].
pub fn read_onnx(path: &Path) -> Result<OnnxModel> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_ONNX_BYTES {
        return Err(Error::LimitExceeded {
            what: format!("size of ONNX file {} (bytes)", path.display()),
            limit: MAX_ONNX_BYTES,
            got: len,
        });
    }
    import_onnx(&std::fs::read(path).map_err(io)?)
}

/// The ONNX file of `network` (opset 17) for images `(N, C, H, W)` with `input_shape =
/// [C, H, W]` and any `N`: one node per layer named by `layer_names` (or `layers.<index>`),
/// clustered layers written as dense convolutions, input `images`, output `logits`.
///
/// ```
/// # #[cfg(feature = "onnx")] {
/// use clustered_conv::io::{export_onnx, import_onnx};
/// use clustered_conv::nn::{Layer, Linear, Network};
/// use clustered_conv::{Conv2d, ConvGeometry};
/// use ndarray::{Array1, Array2, Array4};
///
/// let conv = Conv2d::new(Array4::from_elem((2, 1, 3, 3), 0.1f32), None, ConvGeometry::default().padding(1, 1))?;
/// let fc = Linear { weight: Array2::from_elem((3, 2 * 4 * 4), 0.01f32), bias: Array1::zeros(3) };
/// let net = Network::new(vec![Layer::Conv(conv), Layer::Relu, Layer::Flatten, Layer::Linear(fc)]);
/// let bytes = export_onnx(&net, None, [1, 4, 4])?;
/// let back = import_onnx(&bytes)?;
/// let x = Array4::from_elem((2, 1, 4, 4), 1.0f32);
/// assert_eq!(back.network.forward(x.view())?, net.forward(x.view())?);
/// assert_eq!(back.layer_names[0], "layers.0");
/// # }
/// # Ok::<(), clustered_conv::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidModel`] for names that are not one distinct name per layer; a network
/// that does not run on such images (as [`Network::forward`]).
pub fn export_onnx(
    network: &Network<f32>,
    layer_names: Option<&[String]>,
    input_shape: [usize; 3],
) -> Result<Vec<u8>> {
    let n = network.layers.len();
    let default: Vec<String> = (0..n).map(|l| format!("layers.{l}")).collect();
    let names = layer_names.unwrap_or(&default);
    export::check_names(names, n)?;
    let [c, h, w] = input_shape;
    let shapes = network
        .output_shapes(Array4::zeros((1, c, h, w)).view())
        .map_err(|(_, e)| e)?;
    let classes = shapes.last().map_or(0, |s| s.iter().skip(1).product());
    Ok(export::model(network, names, input_shape, classes)?.encode_to_vec())
}

/// Writes [`export_onnx`]'s file to `path` atomically (a failed write leaves any existing file
/// untouched).
///
/// # Errors
/// As [`export_onnx`] and [`write_atomic`].
pub fn write_onnx(
    path: &Path,
    network: &Network<f32>,
    layer_names: Option<&[String]>,
    input_shape: [usize; 3],
) -> Result<()> {
    write_atomic(path, &export_onnx(network, layer_names, input_shape)?)
}
