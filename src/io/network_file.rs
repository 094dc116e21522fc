//! A runnable network in a compressed-model file: format version 2 stores the graph of an
//! [`nn::Network`](crate::nn::Network) beside its layers.
//!
//! The file stays a version-1 file in every other respect, so `inspect` and `decompress`
//! read it as a [`CompressedModel`]:
//! - every convolution (dense or clustered) is a layer of the model, named as its node;
//! - a batch norm's `γ, β`, running mean and running variance are the pass-through tensors
//!   `<node>.weight`, `<node>.bias`, `<node>.running_mean`, `<node>.running_var` (PyTorch's
//!   names), a linear layer's the tensors `<node>.weight` and `<node>.bias`, all `F32`;
//! - `__metadata__.model` gains `graph`: the input shape, if known, and one node per layer
//!   in order, with its name, operator, parameters and the values it reads (value 0 is the
//!   network's input, value `j + 1` the output of node `j`).
//!
//! ```json
//! "graph": { "input_shape": [1, 28, 28],
//!            "nodes": [ { "name": "conv1", "inputs": [0], "op": "conv", "layer": 0 },
//!                       { "name": "bn1", "inputs": [1], "op": "batch_norm", "eps": 1e-5, "momentum": 0.1 },
//!                       { "name": "pool", "inputs": [2], "op": "max_pool", "kernel": 2, "stride": 2, "padding": 0 }, … ] }
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;

use ndarray::{Array1, Array2, Ix1, Ix2};
use serde::{Deserialize, Serialize};

use super::format::{check_limit, file_error, invalid_file};
use super::{CompressedModel, NamedTensor, TensorDtype, MAX_GEOMETRY_VALUE, MAX_LAYERS};
use crate::codebook::ScaleScheme;
use crate::compress::{CompressedLayer, CompressedNetwork};
use crate::error::{Error, Result};
use crate::nn::{AvgPool2d, BatchNorm2d, Layer, Linear, MaxPool2d, Network};

/// The graph of a network, as format version 2 stores it in `__metadata__.model` (see
/// [`SavedNetwork`]); opaque: made and read only through [`SavedNetwork`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkGraph {
    input_shape: Option<[u64; 3]>,
    nodes: Vec<NodeMeta>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct NodeMeta {
    name: String,
    inputs: Vec<u64>,
    #[serde(flatten)]
    op: OpMeta,
}

/// A node's operator and parameters; weights are tensors named after the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum OpMeta {
    /// Layer `layer` of the model's compressed network (clustered or dense).
    Conv {
        layer: u64,
    },
    BatchNorm {
        eps: f64,
        momentum: f64,
    },
    Relu,
    MaxPool {
        kernel: u64,
        stride: u64,
        padding: u64,
    },
    AvgPool {
        kernel: u64,
        stride: u64,
        padding: u64,
        count_include_pad: bool,
    },
    GlobalAvgPool,
    Flatten,
    Linear,
    Add,
}

/// A runnable network with the names of its layers and, if known, the `(C, H, W)` of its
/// input: what [`Network::save`] writes and [`Network::load`] reads, as a compressed-model
/// file of format version 2 (a valid safetensors file).
///
/// ```
/// use clustered_conv::io::SavedNetwork;
/// use clustered_conv::nn::{Layer, Linear, Network};
/// use clustered_conv::{CompressionConfig, Conv2d, ConvGeometry, KernelCodebook};
/// use ndarray::{Array1, Array2, Array4};
///
/// let conv = Conv2d::new(
///     Array4::from_shape_fn((8, 4, 3, 3), |(o, i, r, c)| ((o * 7 + i * 3 + r * 2 + c) % 5) as f32 - 2.0),
///     None,
///     ConvGeometry::default().padding(1, 1),
/// )?;
/// let fc = Linear { weight: Array2::from_elem((3, 8 * 4 * 4), 0.01f32), bias: Array1::zeros(3) };
/// let dense = Network::new(vec![Layer::Conv(conv), Layer::Relu, Layer::Flatten, Layer::Linear(fc)]);
/// let net = dense.compress(&CompressionConfig::new(KernelCodebook::params(4)))?;
///
/// let saved = SavedNetwork { network: net, layer_names: vec!["conv".into(), "relu".into(), "flat".into(), "fc".into()], input_shape: Some([4, 4, 4]) };
/// let back = SavedNetwork::from_bytes(&saved.to_bytes()?)?;
/// assert_eq!(back, saved);
/// let x = Array4::from_elem((2, 4, 4, 4), 0.5f32);
/// assert_eq!(back.network.forward(x.view())?, saved.network.forward(x.view())?);
/// # Ok::<(), clustered_conv::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SavedNetwork {
    /// The network.
    pub network: Network<f32>,
    /// One distinct name per layer (e.g. the ONNX node names); tensors are named after them.
    pub layer_names: Vec<String>,
    /// `(C, H, W)` of the input, when known (needed to export ONNX).
    pub input_shape: Option<[usize; 3]>,
}

impl SavedNetwork {
    /// `network` with its layers named `layers.<index>` and no input shape.
    pub fn new(network: Network<f32>) -> Self {
        let layer_names = (0..network.layers.len())
            .map(|l| format!("layers.{l}"))
            .collect();
        SavedNetwork {
            network,
            layer_names,
            input_shape: None,
        }
    }

    /// The network as a [`CompressedModel`] with a graph.
    ///
    /// # Errors
    /// [`Error::InvalidModel`] for names that are not one distinct name per layer;
    /// [`Error::ScaleSchemeMismatch`] for codebooks with different scale schemes.
    pub fn to_model(&self) -> Result<CompressedModel> {
        check_names(&self.layer_names, self.network.layers.len())?;
        let mut convs = Vec::new();
        let mut passthrough = Vec::new();
        let mut nodes = Vec::with_capacity(self.layer_names.len());
        for (l, (layer, name)) in self
            .network
            .layers
            .iter()
            .zip(&self.layer_names)
            .enumerate()
        {
            let op = describe_layer(layer, name, &mut convs, &mut passthrough)?;
            let inputs = self.network.inputs_of(l)?;
            nodes.push(NodeMeta {
                name: name.clone(),
                inputs: inputs.into_iter().map(|v| v as u64).collect(),
                op,
            });
        }
        let codebooks = self.network.codebooks.clone();
        let scheme = codebooks
            .iter()
            .next()
            .map_or_else(ScaleScheme::default, |cb| cb.scale_scheme());
        let mut model = CompressedModel::new(CompressedNetwork::new(codebooks, convs, scheme)?);
        model.passthrough = passthrough;
        model.graph = Some(NetworkGraph {
            input_shape: self.input_shape.map(|s| s.map(|d| d as u64)),
            nodes,
        });
        Ok(model)
    }

    /// The network stored in `model`'s graph.
    ///
    /// # Errors
    /// [`Error::InvalidModelFile`] for a model without a graph (a format-1 file, or one
    /// compressed from a bare `state_dict`), or a graph that does not describe a valid network
    /// of the model's layers and tensors, each used once.
    pub fn from_model(model: CompressedModel) -> Result<Self> {
        let graph = model.graph.ok_or_else(|| {
            file_error(
                "the file holds no network graph (it was compressed from a state_dict, or \
                 written by format version 1); read it with CompressedModel::load"
                    .into(),
            )
        })?;
        check_limit(
            "number of graph nodes",
            graph.nodes.len() as u64,
            MAX_LAYERS as u64,
        )?;
        let (codebooks, convs, _) = model.network.into_parts();
        let mut parts = Parts::new(convs, model.passthrough);
        let mut layers = Vec::with_capacity(graph.nodes.len());
        let mut inputs = Vec::with_capacity(graph.nodes.len());
        for node in &graph.nodes {
            layers.push(parts.layer(node)?);
            inputs.push(to_usizes(&node.inputs, &node.name)?);
        }
        parts.finish()?;
        let names: Vec<String> = graph.nodes.into_iter().map(|n| n.name).collect();
        check_names(&names, layers.len()).map_err(|e| file_error(e.to_string()))?;
        let chain = inputs.iter().enumerate().all(|(l, i)| i.as_slice() == [l]);
        // Checked as a graph (an add needs two inputs), kept as a chain where it is one.
        let mut network = Network::graph(layers, inputs)?;
        if chain {
            network = Network::new(network.layers);
        }
        network.codebooks = codebooks;
        Ok(SavedNetwork {
            network,
            layer_names: names,
            input_shape: graph.input_shape.map(input_shape).transpose()?,
        })
    }

    /// The file's bytes ([`CompressedModel::to_bytes`] of [`SavedNetwork::to_model`]).
    ///
    /// # Errors
    /// As [`SavedNetwork::to_model`] and [`CompressedModel::to_bytes`] (e.g.
    /// [`Error::UnroundedScale`] after fine-tuning: call [`Network::round_scales`] first).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.to_model()?.to_bytes()
    }

    /// Parses a file's bytes.
    ///
    /// # Errors
    /// As [`CompressedModel::from_bytes`] and [`SavedNetwork::from_model`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_model(CompressedModel::from_bytes(bytes)?)
    }

    /// Writes the file atomically: on any failure the destination is left as it was.
    ///
    /// # Errors
    /// As [`SavedNetwork::to_bytes`], or [`Error::Write`].
    pub fn save(&self, path: &Path) -> Result<()> {
        self.to_model()?.save(path)
    }

    /// Reads a file written by [`SavedNetwork::save`] or [`Network::save`].
    ///
    /// # Errors
    /// As [`CompressedModel::load`] and [`SavedNetwork::from_model`].
    pub fn load(path: &Path) -> Result<Self> {
        Self::from_model(CompressedModel::load(path)?)
    }
}

impl Network<f32> {
    /// Writes the network (graph, clustered layers, codebooks and every other weight) as a
    /// compressed-model file, layers named `layers.<index>`; [`SavedNetwork`] keeps names and
    /// the input shape too.
    ///
    /// # Errors
    /// As [`SavedNetwork::save`].
    pub fn save(&self, path: &Path) -> Result<()> {
        SavedNetwork::new(self.clone()).save(path)
    }

    /// Reads a network written by [`Network::save`], [`SavedNetwork::save`] or the CLI's
    /// `compress model.onnx`, ready to run, fine-tune or export.
    ///
    /// # Errors
    /// As [`SavedNetwork::load`].
    pub fn load(path: &Path) -> Result<Network<f32>> {
        Ok(SavedNetwork::load(path)?.network)
    }
}

/// `Ok` when `names` has one distinct name per layer (ONNX export checks the same).
pub(super) fn check_names(names: &[String], layers: usize) -> Result<()> {
    if names.len() != layers {
        return Err(Error::InvalidModel {
            what: format!("{} layer names for {layers} layers", names.len()),
        });
    }
    let mut seen = HashSet::new();
    match names.iter().find(|n| !seen.insert(n.as_str())) {
        Some(dup) => Err(Error::InvalidModel {
            what: format!("layer name {dup:?} is used twice"),
        }),
        None => Ok(()),
    }
}

/// The node operator of `layer`, moving its weights into `convs` or `passthrough`.
fn describe_layer(
    layer: &Layer<f32>,
    name: &str,
    convs: &mut Vec<CompressedLayer<f32>>,
    passthrough: &mut Vec<NamedTensor>,
) -> Result<OpMeta> {
    let tensor = |suffix: &str, values: ndarray::ArrayViewD<'_, f32>| {
        NamedTensor::from_f32(format!("{name}.{suffix}"), TensorDtype::F32, &values)
    };
    let name = name.to_string();
    Ok(match layer {
        Layer::Conv(conv) => {
            convs.push(CompressedLayer::Dense {
                name,
                layer: conv.clone(),
            });
            OpMeta::Conv {
                layer: convs.len() as u64 - 1,
            }
        }
        Layer::Clustered { layer, codebook } => {
            convs.push(CompressedLayer::Clustered {
                name,
                codebook: *codebook,
                layer: layer.clone(),
            });
            OpMeta::Conv {
                layer: convs.len() as u64 - 1,
            }
        }
        Layer::BatchNorm(bn) => {
            passthrough.push(tensor("weight", bn.gamma.view().into_dyn()));
            passthrough.push(tensor("bias", bn.beta.view().into_dyn()));
            passthrough.push(tensor("running_mean", bn.running_mean.view().into_dyn()));
            passthrough.push(tensor("running_var", bn.running_var.view().into_dyn()));
            OpMeta::BatchNorm {
                eps: f64::from(bn.eps),
                momentum: f64::from(bn.momentum),
            }
        }
        Layer::Linear(fc) => {
            passthrough.push(tensor("weight", fc.weight.view().into_dyn()));
            passthrough.push(tensor("bias", fc.bias.view().into_dyn()));
            OpMeta::Linear
        }
        other => describe_parameterless(other)?,
    })
}

/// The operator of a layer without weights.
fn describe_parameterless(layer: &Layer<f32>) -> Result<OpMeta> {
    let u = |v: usize| v as u64;
    Ok(match layer {
        Layer::Relu => OpMeta::Relu,
        Layer::MaxPool(p) => OpMeta::MaxPool {
            kernel: u(p.kernel),
            stride: u(p.stride),
            padding: u(p.padding),
        },
        Layer::AvgPool(p) => OpMeta::AvgPool {
            kernel: u(p.kernel),
            stride: u(p.stride),
            padding: u(p.padding),
            count_include_pad: p.count_include_pad,
        },
        Layer::GlobalAvgPool => OpMeta::GlobalAvgPool,
        Layer::Flatten => OpMeta::Flatten,
        Layer::Add => OpMeta::Add,
        other => {
            return Err(Error::InvalidModel {
                what: format!("{other:?} cannot be stored in a network file"),
            })
        }
    })
}

/// What a graph's nodes take from the model, each once.
struct Parts {
    convs: Vec<Option<CompressedLayer<f32>>>,
    tensors: HashMap<String, NamedTensor>,
}

impl Parts {
    fn new(convs: Vec<CompressedLayer<f32>>, passthrough: Vec<NamedTensor>) -> Self {
        Parts {
            convs: convs.into_iter().map(Some).collect(),
            tensors: passthrough
                .into_iter()
                .map(|t| (t.name.clone(), t))
                .collect(),
        }
    }

    /// The layer that `node` describes.
    fn layer(&mut self, node: &NodeMeta) -> Result<Layer<f32>> {
        let bad = |what: String| file_error(format!("graph node {:?}: {what}", node.name));
        Ok(match &node.op {
            OpMeta::Conv { layer } => self.conv(*layer, &node.name).map_err(bad)?,
            OpMeta::BatchNorm { eps, momentum } => {
                Layer::BatchNorm(self.batch_norm(&node.name, *eps, *momentum).map_err(bad)?)
            }
            OpMeta::Linear => Layer::Linear(self.linear(&node.name).map_err(bad)?),
            OpMeta::Relu => Layer::Relu,
            OpMeta::MaxPool {
                kernel,
                stride,
                padding,
            } => {
                let (kernel, stride, padding) =
                    pool_window(*kernel, *stride, *padding).map_err(bad)?;
                Layer::MaxPool(MaxPool2d {
                    kernel,
                    stride,
                    padding,
                })
            }
            OpMeta::AvgPool {
                kernel,
                stride,
                padding,
                count_include_pad,
            } => {
                let (kernel, stride, padding) =
                    pool_window(*kernel, *stride, *padding).map_err(bad)?;
                Layer::AvgPool(AvgPool2d {
                    kernel,
                    stride,
                    padding,
                    count_include_pad: *count_include_pad,
                })
            }
            OpMeta::GlobalAvgPool => Layer::GlobalAvgPool,
            OpMeta::Flatten => Layer::Flatten,
            OpMeta::Add => Layer::Add,
        })
    }

    /// Model layer `index`, which must be named `name` and not taken before.
    fn conv(&mut self, index: u64, name: &str) -> std::result::Result<Layer<f32>, String> {
        let count = self.convs.len();
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| self.convs.get_mut(i))
            .ok_or_else(|| format!("layer {index} does not exist (the model has {count})"))?;
        match slot.take() {
            None => Err(format!("layer {index} is used by two nodes")),
            Some(layer) if layer.name() != name => {
                Err(format!("layer {index} is named {:?}", layer.name()))
            }
            Some(CompressedLayer::Dense { layer, .. }) => Ok(Layer::Conv(layer)),
            Some(CompressedLayer::Clustered {
                layer, codebook, ..
            }) => Ok(Layer::Clustered { layer, codebook }),
        }
    }

    fn batch_norm(
        &mut self,
        name: &str,
        eps: f64,
        momentum: f64,
    ) -> std::result::Result<BatchNorm2d<f32>, String> {
        let gamma = self.vector(name, "weight")?;
        let channels = gamma.len();
        let beta = self.vector_of(name, "bias", channels)?;
        let running_mean = self.vector_of(name, "running_mean", channels)?;
        let running_var = self.vector_of(name, "running_var", channels)?;
        if running_var.iter().any(|&v| v < 0.0) {
            return Err("a running variance is negative".into());
        }
        // Checked in f32, the precision the layer keeps.
        let (eps, momentum) = (eps as f32, momentum as f32);
        if !(eps > 0.0 && eps.is_finite() && (0.0..=1.0).contains(&momentum)) {
            return Err(format!(
                "eps {eps} must be positive and momentum {momentum} in [0, 1]"
            ));
        }
        Ok(BatchNorm2d {
            gamma,
            beta,
            running_mean,
            running_var,
            eps,
            momentum,
        })
    }

    fn linear(&mut self, name: &str) -> std::result::Result<Linear<f32>, String> {
        let weight: Array2<f32> = self
            .tensor(name, "weight")?
            .into_dimensionality::<Ix2>()
            .map_err(|_| format!("{name}.weight is not 2-D"))?;
        let bias = self.vector_of(name, "bias", weight.nrows())?;
        Ok(Linear { weight, bias })
    }

    /// Tensor `<name>.<suffix>` as finite `f32` values, taken.
    fn tensor(
        &mut self,
        name: &str,
        suffix: &str,
    ) -> std::result::Result<ndarray::ArrayD<f32>, String> {
        let full = format!("{name}.{suffix}");
        let t = self
            .tensors
            .remove(&full)
            .ok_or_else(|| format!("tensor {full:?} is missing"))?;
        let values = t.to_f32().map_err(|e| e.to_string())?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(format!("tensor {full:?} holds a non-finite value"));
        }
        Ok(values)
    }

    fn vector(&mut self, name: &str, suffix: &str) -> std::result::Result<Array1<f32>, String> {
        self.tensor(name, suffix)?
            .into_dimensionality::<Ix1>()
            .map_err(|_| format!("{name}.{suffix} is not 1-D"))
    }

    /// As [`Parts::vector`], of length `len`.
    fn vector_of(
        &mut self,
        name: &str,
        suffix: &str,
        len: usize,
    ) -> std::result::Result<Array1<f32>, String> {
        let v = self.vector(name, suffix)?;
        if v.len() != len {
            return Err(format!(
                "{name}.{suffix} has {} values, expected {len}",
                v.len()
            ));
        }
        Ok(v)
    }

    /// Refuses a layer or tensor that no node used.
    fn finish(self) -> Result<()> {
        if let Some(layer) = self.convs.iter().flatten().next() {
            return invalid_file(format!("layer {:?} is not in the graph", layer.name()));
        }
        match self.tensors.keys().min() {
            Some(name) => invalid_file(format!("tensor {name:?} is not used by the graph")),
            None => Ok(()),
        }
    }
}

/// A pooling window's `(kernel, stride, padding)`, checked as the pooling layers require.
fn pool_window(
    kernel: u64,
    stride: u64,
    padding: u64,
) -> std::result::Result<(usize, usize, usize), String> {
    let max = MAX_GEOMETRY_VALUE as u64;
    if !(1..=max).contains(&kernel) || !(1..=max).contains(&stride) || padding > kernel / 2 {
        return Err(format!(
            "pooling window {kernel}, stride {stride}, padding {padding}: need 1 ≤ kernel, \
             stride ≤ {max} and padding ≤ kernel / 2"
        ));
    }
    Ok((kernel as usize, stride as usize, padding as usize))
}

/// A node's input values as indices.
fn to_usizes(values: &[u64], node: &str) -> Result<Vec<usize>> {
    values
        .iter()
        .map(|&v| {
            usize::try_from(v)
                .ok()
                .filter(|&v| v <= MAX_LAYERS)
                .ok_or_else(|| file_error(format!("graph node {node:?} reads value {v}")))
        })
        .collect()
}

/// A stored input shape, each side in `1 ..= MAX_GEOMETRY_VALUE`.
fn input_shape(shape: [u64; 3]) -> Result<[usize; 3]> {
    if shape
        .iter()
        .any(|&d| d == 0 || d > MAX_GEOMETRY_VALUE as u64)
    {
        return invalid_file(format!(
            "graph input shape {shape:?}: each side must be in 1..={MAX_GEOMETRY_VALUE}"
        ));
    }
    Ok(shape.map(|d| d as usize))
}
