//! ONNX graph → [`Network`]: node order, constants, and one mapping per operator.

use std::collections::{HashMap, HashSet};

use super::proto::tensor_shape_proto::dimension::Value as DimValue;
use super::proto::type_proto::Value as TypeValue;
use super::proto::{GraphProto, NodeProto, TensorProto, ValueInfoProto};
use ndarray::{Array1, Array2, ArrayD, Ix1, Ix2, Ix4};

use super::node::Node;
use super::tensor::{to_f32, to_i64};
use crate::conv::Conv2d;
use crate::error::{Error, Result};
use crate::geometry::{ConvGeometry, Padding};
use crate::nn::{BatchNorm2d, Layer, Linear, MaxPool2d, Network};

/// The operators the importer maps, for error messages.
pub(super) const SUPPORTED: &str = "Conv, BatchNormalization, Relu, MaxPool, AveragePool, \
    GlobalAveragePool, Add, Sum, Flatten, Reshape (to (N, -1)), Gemm, MatMul (+ Add), Dropout, \
    Identity, Constant";

/// The graph's nodes that the output depends on, in an order where each node comes after the
/// nodes it reads from.
///
/// # Errors
/// A tensor produced twice, a node input that nothing produces (named with its node), or a
/// cycle (named by one of its nodes).
pub(super) fn ordered_nodes(graph: &GraphProto) -> Result<Vec<&NodeProto>> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for out in node.output.iter().filter(|o| !o.is_empty()) {
            if producer.insert(out, i).is_some() {
                return Err(Error::InvalidOnnx {
                    what: format!("tensor {out:?} is produced by two nodes"),
                });
            }
        }
    }
    let given: HashSet<&str> = graph
        .input
        .iter()
        .map(|v| v.name.as_str())
        .chain(graph.initializer.iter().map(|t| t.name.as_str()))
        .collect();
    for node in &graph.node {
        if let Some(missing) = node.input.iter().find(|i| {
            !i.is_empty() && !given.contains(i.as_str()) && !producer.contains_key(i.as_str())
        }) {
            return Err(Node { proto: node }.error(format!(
                "input {missing:?} is not produced by any node, initializer or graph input"
            )));
        }
    }
    let output = graph_output(graph)?;
    let needed = ancestors(graph, &producer, &output.name);
    topological(graph, &producer, &needed)
}

/// Indices of the nodes that `output` depends on.
fn ancestors(graph: &GraphProto, producer: &HashMap<&str, usize>, output: &str) -> HashSet<usize> {
    let mut needed = HashSet::new();
    let mut stack: Vec<usize> = producer.get(output).copied().into_iter().collect();
    while let Some(i) = stack.pop() {
        if needed.insert(i) {
            stack.extend(
                graph.node[i]
                    .input
                    .iter()
                    .filter_map(|name| producer.get(name.as_str()).copied()),
            );
        }
    }
    needed
}

/// Kahn's algorithm over the `needed` nodes, keeping the file's order among ready nodes.
fn topological<'g>(
    graph: &'g GraphProto,
    producer: &HashMap<&str, usize>,
    needed: &HashSet<usize>,
) -> Result<Vec<&'g NodeProto>> {
    let deps = |i: usize| -> HashSet<usize> {
        graph.node[i]
            .input
            .iter()
            .filter_map(|name| producer.get(name.as_str()).copied())
            .collect()
    };
    let mut pending: Vec<usize> = (0..graph.node.len())
        .filter(|i| needed.contains(i))
        .collect();
    let mut done: HashSet<usize> = HashSet::new();
    let mut order = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let ready = pending.iter().position(|&i| deps(i).is_subset(&done));
        match ready {
            Some(p) => {
                let i = pending.remove(p);
                done.insert(i);
                order.push(&graph.node[i]);
            }
            None => {
                return Err(Node {
                    proto: &graph.node[pending[0]],
                }
                .error("the graph has a cycle through this node"))
            }
        }
    }
    Ok(order)
}

/// The graph's one output.
fn graph_output(graph: &GraphProto) -> Result<&ValueInfoProto> {
    match graph.output.as_slice() {
        [one] => Ok(one),
        outputs => Err(Error::InvalidOnnx {
            what: format!(
                "the graph has {} outputs; exactly one (the logits) is supported",
                outputs.len()
            ),
        }),
    }
}

/// The graph's one non-initializer input and its `(C, H, W)` where the file fixes them.
pub(super) fn graph_input(graph: &GraphProto) -> Result<(String, [Option<usize>; 3])> {
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&ValueInfoProto> = graph
        .input
        .iter()
        .filter(|v| !initializers.contains(v.name.as_str()))
        .collect();
    let [input] = inputs.as_slice() else {
        return Err(Error::InvalidOnnx {
            what: format!(
                "the graph has {} inputs besides its weights; exactly one (images N×C×H×W) is supported",
                inputs.len()
            ),
        });
    };
    let dims = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(t)) => {
            if t.elem_type != 1 {
                return Err(Error::InvalidOnnx {
                    what: format!(
                        "input {:?} has element type {}; FLOAT (1) is supported",
                        input.name, t.elem_type
                    ),
                });
            }
            t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(DimValue::DimValue(v)) if v > 0 => usize::try_from(v).ok(),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            })
        }
        _ => None,
    };
    let chw = match dims.as_deref() {
        None => [None; 3],
        Some([_, c, h, w]) => [*c, *h, *w],
        Some(other) => {
            return Err(Error::InvalidOnnx {
                what: format!(
                    "input {:?} has rank {}; images N×C×H×W (rank 4) are supported",
                    input.name,
                    other.len()
                ),
            })
        }
    };
    Ok((input.name.clone(), chw))
}

/// What a tensor name stands for during import.
#[derive(Clone)]
enum Value<'g> {
    /// An activation: value id of the network (0 = input, `l + 1` = layer `l`'s output).
    Activation(usize),
    /// A constant: an initializer or a `Constant` node's tensor.
    Constant(&'g TensorProto),
}

/// What the importer made of a graph.
pub(super) struct Built {
    /// The network.
    pub(super) network: Network<f32>,
    /// Per layer, its node's name.
    pub(super) layer_names: Vec<String>,
    /// Reshapes to `(N, k)`: the flatten layer and `k`, checked once shapes are known.
    pub(super) widths: Vec<(usize, usize)>,
}

/// Builds the network node by node.
pub(super) struct Builder<'g> {
    names: HashMap<String, Value<'g>>,
    /// How many nodes (and the graph output) read each tensor.
    readers: HashMap<&'g str, usize>,
    layers: Vec<Layer<f32>>,
    inputs: Vec<Vec<usize>>,
    layer_names: Vec<String>,
    /// Reshapes to `(N, k)`: the flatten layer and `k`, checked once shapes are known.
    widths: Vec<(usize, usize)>,
}

impl<'g> Builder<'g> {
    /// A builder whose value 0 is `input`, with the graph's initializers as constants.
    pub(super) fn new(graph: &'g GraphProto, input: &str, nodes: &[&'g NodeProto]) -> Self {
        let mut names: HashMap<String, Value<'g>> = graph
            .initializer
            .iter()
            .map(|t| (t.name.clone(), Value::Constant(t)))
            .collect();
        names.insert(input.to_string(), Value::Activation(0));
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for name in nodes.iter().flat_map(|n| &n.input) {
            *readers.entry(name.as_str()).or_default() += 1;
        }
        for out in &graph.output {
            *readers.entry(out.name.as_str()).or_default() += 1;
        }
        Builder {
            names,
            readers,
            layers: Vec::new(),
            inputs: Vec::new(),
            layer_names: Vec::new(),
            widths: Vec::new(),
        }
    }

    /// Maps one node.
    pub(super) fn add(&mut self, proto: &'g NodeProto) -> Result<()> {
        let node = Node { proto };
        if !matches!(proto.domain.as_str(), "" | "ai.onnx") {
            return Err(node.error(format!(
                "operator domain {:?} is not supported",
                proto.domain
            )));
        }
        match proto.op_type.as_str() {
            "Conv" => self.conv(&node),
            "BatchNormalization" => self.batch_norm(&node),
            "Relu" => self.simple(&node, &[], Layer::Relu),
            "MaxPool" => self.max_pool(&node),
            "AveragePool" => self.average_pool(&node),
            "GlobalAveragePool" => self.simple(&node, &[], Layer::GlobalAvgPool),
            "Add" | "Sum" => self.add_node(&node),
            "Flatten" => self.flatten(&node),
            "Reshape" => self.reshape(&node),
            "Gemm" => self.gemm(&node),
            "MatMul" => self.matmul(&node),
            "Dropout" | "Identity" => self.alias(&node),
            "Constant" => self.constant(&node),
            op => Err(node.error(format!(
                "operator {op} is not supported; supported: {SUPPORTED}"
            ))),
        }
    }

    /// The network, its layer names and the `(N, k)` reshapes to check.
    pub(super) fn finish(self, output: &str) -> Result<Built> {
        match self.names.get(output) {
            Some(Value::Activation(v)) if *v == self.layers.len() && *v > 0 => {}
            _ => {
                return Err(Error::InvalidOnnx {
                    what: format!(
                        "the graph output {output:?} is not computed by the last mapped node"
                    ),
                })
            }
        }
        let chain = self.inputs.iter().enumerate().all(|(l, i)| *i == [l]);
        let network = if chain {
            Network::new(self.layers)
        } else {
            Network::graph(self.layers, self.inputs).map_err(|e| Error::InvalidOnnx {
                what: e.to_string(),
            })?
        };
        Ok(Built {
            network,
            layer_names: self.layer_names,
            widths: self.widths,
        })
    }

    /// Appends a layer reading `inputs`; the node's first output names its result.
    fn push(&mut self, node: &Node<'g>, layer: Layer<f32>, inputs: Vec<usize>) -> Result<()> {
        self.check_single_output(node)?;
        self.layers.push(layer);
        self.inputs.push(inputs);
        self.layer_names.push(node.proto.name.clone());
        let id = self.layers.len();
        self.names
            .insert(node.proto.output[0].clone(), Value::Activation(id));
        Ok(())
    }

    /// Refuses a node whose extra outputs (a mask, indices, batch statistics) are read.
    fn check_single_output(&self, node: &Node<'g>) -> Result<()> {
        if node.proto.output.first().is_none_or(|o| o.is_empty()) {
            return Err(node.error("the node has no output"));
        }
        if let Some(extra) = node.proto.output[1..]
            .iter()
            .find(|o| !o.is_empty() && self.readers.get(o.as_str()).copied().unwrap_or(0) > 0)
        {
            return Err(node.error(format!(
                "its second output {extra:?} is used; only the first output is supported"
            )));
        }
        Ok(())
    }

    /// The value id of input `i`, which must be an activation.
    fn activation(&self, node: &Node<'g>, i: usize) -> Result<usize> {
        let name = node.required_input(i)?;
        match self.names.get(name) {
            Some(Value::Activation(v)) => Ok(*v),
            Some(Value::Constant(_)) => Err(node.error(format!(
                "input {name:?} is a constant where an activation was expected"
            ))),
            None => Err(node.error(format!("input {name:?} is not computed before this node"))),
        }
    }

    /// Input `i` as a constant tensor, if it is one.
    fn constant_input(&self, node: &Node<'g>, i: usize) -> Option<&TensorProto> {
        match self.names.get(node.input(i)?) {
            Some(Value::Constant(t)) => Some(t),
            _ => None,
        }
    }

    /// Input `i` as a constant `f32` array (weights), required.
    fn weights(&self, node: &Node<'g>, i: usize, what: &str) -> Result<ArrayD<f32>> {
        let name = node.required_input(i)?;
        let t = self.constant_input(node, i).ok_or_else(|| {
            node.error(format!("{what} {name:?} must be a constant (initializer)"))
        })?;
        to_f32(t).map_err(|e| node.error(format!("{what}: {e}")))
    }

    /// Input `i` as a constant vector of length `len`, or `None` when absent.
    fn vector(
        &self,
        node: &Node<'g>,
        i: usize,
        len: usize,
        what: &str,
    ) -> Result<Option<Array1<f32>>> {
        if node.input(i).is_none() {
            return Ok(None);
        }
        let v = self.weights(node, i, what)?;
        let got = v.shape().to_vec();
        let v = v
            .into_shape_with_order(len)
            .map_err(|_| node.error(format!("{what} has shape {got:?}, expected [{len}]")))?;
        Ok(Some(
            v.into_dimensionality::<Ix1>().expect("reshaped to 1-D"),
        ))
    }

    /// A layer without weights or attributes, reading input 0.
    fn simple(&mut self, node: &Node<'g>, attrs: &[&str], layer: Layer<f32>) -> Result<()> {
        node.only_attributes(attrs)?;
        self.simple_checked(node, layer)
    }

    fn conv(&mut self, node: &Node<'g>) -> Result<()> {
        node.only_attributes(&[
            "auto_pad",
            "dilations",
            "group",
            "kernel_shape",
            "pads",
            "strides",
        ])?;
        let x = self.activation(node, 0)?;
        let w = self.weights(node, 1, "weight")?;
        let w = w
            .into_dimensionality::<Ix4>()
            .map_err(|e| node.error(format!("weight is not 4-D (O, I, kh, kw): {e}")))?;
        let group = node.int("group", 1)?;
        if group != 1 {
            return Err(node.error(format!(
                "grouped or depthwise convolution (group = {group}) is not supported"
            )));
        }
        let (o, _, kh, kw) = w.dim();
        if let Some(k) = node.ints("kernel_shape")? {
            if k != [kh as i64, kw as i64] {
                return Err(node.error(format!(
                    "kernel_shape {k:?} differs from the weight's {kh}×{kw}"
                )));
            }
        }
        let bias = self.vector(node, 2, o, "bias")?;
        let stride = node.pair("strides", 1)?;
        let dilation = node.pair("dilations", 1)?;
        let window = (dilation.0 * (kh - 1) + 1, dilation.1 * (kw - 1) + 1);
        let [top, left, bottom, right] = node.pads(window, stride)?;
        let geometry = ConvGeometry::default()
            .stride(stride.0, stride.1)
            .dilation(dilation.0, dilation.1)
            .padding_asymmetric(Padding {
                top,
                bottom,
                left,
                right,
            });
        let conv = Conv2d::new(w, bias, geometry).map_err(|e| node.error(e.to_string()))?;
        self.push(node, Layer::Conv(conv), vec![x])
    }

    fn batch_norm(&mut self, node: &Node<'g>) -> Result<()> {
        node.only_attributes(&["epsilon", "momentum", "training_mode", "spatial"])?;
        if node.int("training_mode", 0)? != 0 || node.int("spatial", 1)? != 1 {
            return Err(node.error("training_mode = 1 or spatial = 0 is not supported"));
        }
        let x = self.activation(node, 0)?;
        let c = self.weights(node, 1, "scale")?.len();
        let required = |i: usize, what: &str| {
            self.vector(node, i, c, what)?
                .ok_or_else(|| node.error(format!("{what} is missing")))
        };
        let gamma = required(1, "scale")?;
        let beta = required(2, "bias")?;
        let mean = required(3, "mean")?;
        let var = required(4, "variance")?;
        if var.iter().any(|&v| v.is_nan() || v < 0.0) {
            return Err(node.error("the running variance has a negative or NaN value"));
        }
        let bn = BatchNorm2d {
            gamma,
            beta,
            running_mean: mean,
            running_var: var,
            eps: node.float("epsilon", 1e-5)?,
            // ONNX keeps `momentum` of the old running value; this crate, like PyTorch, gives
            // `momentum` to the new batch value.
            momentum: 1.0 - node.float("momentum", 0.9)?,
        };
        self.push(node, Layer::BatchNorm(bn), vec![x])
    }
}

/// Square pooling parameters `(kernel, stride, padding)` of a MaxPool or AveragePool node:
/// this crate's pooling layers take one value per parameter for both axes.
fn square_pool(node: &Node<'_>) -> Result<(usize, usize, usize)> {
    if node.int("ceil_mode", 0)? != 0 {
        return Err(node.error("ceil_mode = 1 is not supported"));
    }
    if node.pair("dilations", 1)? != (1, 1) {
        return Err(node.error("dilated pooling is not supported"));
    }
    let (kh, kw) = match node.ints("kernel_shape")? {
        Some(&[h, w]) if h > 0 && w > 0 => (h as usize, w as usize),
        other => {
            return Err(node.error(format!(
                "kernel_shape {other:?}: expected two positive values"
            )))
        }
    };
    let (sh, sw) = node.pair("strides", 1)?;
    let pads = node.pads((kh, kw), (sh, sw))?;
    if kh != kw || sh != sw || pads.iter().any(|&p| p != pads[0]) {
        return Err(node.error(format!(
            "only square windows with one stride and equal padding on every side are supported \
             (kernel {kh}×{kw}, strides {sh}×{sw}, pads {pads:?})"
        )));
    }
    Ok((kh, sh, pads[0]))
}

impl<'g> Builder<'g> {
    fn max_pool(&mut self, node: &Node<'g>) -> Result<()> {
        node.only_attributes(&[
            "auto_pad",
            "ceil_mode",
            "dilations",
            "kernel_shape",
            "pads",
            "storage_order",
            "strides",
        ])?;
        let (kernel, stride, padding) = square_pool(node)?;
        let pool = MaxPool2d {
            kernel,
            stride,
            padding,
        };
        self.simple_checked(node, Layer::MaxPool(pool))
    }

    fn average_pool(&mut self, node: &Node<'g>) -> Result<()> {
        node.only_attributes(&[
            "auto_pad",
            "ceil_mode",
            "count_include_pad",
            "dilations",
            "kernel_shape",
            "pads",
            "strides",
        ])?;
        let (kernel, stride, padding) = square_pool(node)?;
        let pool = crate::nn::AvgPool2d {
            kernel,
            stride,
            padding,
            count_include_pad: node.int("count_include_pad", 0)? != 0,
        };
        self.simple_checked(node, Layer::AvgPool(pool))
    }

    /// A layer reading input 0, attributes already checked.
    fn simple_checked(&mut self, node: &Node<'g>, layer: Layer<f32>) -> Result<()> {
        let x = self.activation(node, 0)?;
        self.push(node, layer, vec![x])
    }

    fn add_node(&mut self, node: &Node<'g>) -> Result<()> {
        node.only_attributes(&[])?;
        let constants: Vec<usize> = (0..node.proto.input.len())
            .filter(|&i| self.constant_input(node, i).is_some())
            .collect();
        match (constants.as_slice(), node.proto.input.len()) {
            ([], 1) => self.alias(node),
            ([], _) => {
                let inputs = (0..node.proto.input.len())
                    .map(|i| self.activation(node, i))
                    .collect::<Result<Vec<_>>>()?;
                self.push(node, Layer::Add, inputs)
            }
            (&[c], 2) => self.fold_bias(node, c),
            _ => Err(node
                .error("an add of constants is supported only as the bias right after a MatMul")),
        }
    }

    /// `MatMul` + `Add(constant)`: the constant becomes the bias of the linear layer the
    /// MatMul made, when nothing else reads the MatMul's output.
    fn fold_bias(&mut self, node: &Node<'g>, constant: usize) -> Result<()> {
        let x = self.activation(node, 1 - constant)?;
        let source = node.required_input(1 - constant)?;
        let alone = self.readers.get(source).copied() == Some(1);
        let last = x == self.layers.len() && x > 0;
        let Some(Layer::Linear(lin)) = last.then(|| self.layers.last_mut()).flatten() else {
            return Err(node.error(
                "an add of a constant is supported only as the bias right after a MatMul or Gemm",
            ));
        };
        if !alone {
            return Err(node.error("the MatMul output it adds a bias to is also read elsewhere"));
        }
        let out = lin.bias.len();
        let bias = self
            .vector(node, constant, out, "bias")?
            .expect("input exists");
        if let Some(Layer::Linear(lin)) = self.layers.last_mut() {
            lin.bias += &bias;
        }
        self.names
            .insert(node.proto.output[0].clone(), Value::Activation(x));
        Ok(())
    }

    fn flatten(&mut self, node: &Node<'g>) -> Result<()> {
        node.only_attributes(&["axis"])?;
        let axis = node.int("axis", 1)?;
        if axis != 1 {
            return Err(node.error(format!(
                "axis = {axis} is not supported (only 1: (N, C·H·W))"
            )));
        }
        self.simple_checked(node, Layer::Flatten)
    }

    fn reshape(&mut self, node: &Node<'g>) -> Result<()> {
        node.only_attributes(&["allowzero"])?;
        let shape = self
            .constant_input(node, 1)
            .ok_or_else(|| node.error("the target shape must be a constant"))
            .and_then(|t| to_i64(t).map_err(|e| node.error(e.to_string())))?;
        let width = match shape.as_slice() {
            [0 | -1, -1] | [0, 0] => None,
            [-1 | 0, k] if *k > 0 => Some(*k as usize),
            _ => {
                return Err(node.error(format!(
                    "reshape to {shape:?} is not supported; only flattening to (N, -1) is"
                )))
            }
        };
        self.simple_checked(node, Layer::Flatten)?;
        if let Some(k) = width {
            self.widths.push((self.layers.len() - 1, k));
        }
        Ok(())
    }

    fn gemm(&mut self, node: &Node<'g>) -> Result<()> {
        node.only_attributes(&["alpha", "beta", "transA", "transB"])?;
        if node.int("transA", 0)? != 0 {
            return Err(node.error("transA = 1 is not supported"));
        }
        let x = self.activation(node, 0)?;
        let b = self.matrix(node, 1)?;
        let weight = if node.int("transB", 0)? != 0 {
            b
        } else {
            b.reversed_axes()
        };
        let weight = weight * node.float("alpha", 1.0)?;
        let out = weight.dim().0;
        let beta = node.float("beta", 1.0)?;
        let bias = self
            .vector(node, 2, out, "C")?
            .map_or_else(|| Array1::zeros(out), |c| c * beta);
        let weight = weight.as_standard_layout().into_owned();
        self.push(node, Layer::Linear(Linear { weight, bias }), vec![x])
    }

    fn matmul(&mut self, node: &Node<'g>) -> Result<()> {
        node.only_attributes(&[])?;
        let x = self.activation(node, 0)?;
        let weight = self
            .matrix(node, 1)?
            .reversed_axes()
            .as_standard_layout()
            .into_owned();
        let bias = Array1::zeros(weight.dim().0);
        self.push(node, Layer::Linear(Linear { weight, bias }), vec![x])
    }

    /// Input `i` as a constant matrix.
    fn matrix(&self, node: &Node<'g>, i: usize) -> Result<Array2<f32>> {
        self.weights(node, i, "weight")?
            .into_dimensionality::<Ix2>()
            .map_err(|_| node.error("the weight is not a matrix"))
    }

    /// Dropout and Identity: the output names the input (inference only).
    fn alias(&mut self, node: &Node<'g>) -> Result<()> {
        node.only_attributes(&["ratio", "seed"])?;
        self.check_single_output(node)?;
        let name = node.required_input(0)?;
        let value = self.names.get(name).cloned().ok_or_else(|| {
            node.error(format!("input {name:?} is not computed before this node"))
        })?;
        self.names.insert(node.proto.output[0].clone(), value);
        Ok(())
    }

    fn constant(&mut self, node: &Node<'g>) -> Result<()> {
        node.only_attributes(&["value"])?;
        let t = node
            .tensor("value")?
            .ok_or_else(|| node.error("only the tensor form (attribute \"value\") is supported"))?;
        self.check_single_output(node)?;
        self.names
            .insert(node.proto.output[0].clone(), Value::Constant(t));
        Ok(())
    }
}
