//! [`Network`] → ONNX: one node per layer, dense weights as initializers.

use super::proto::attribute_proto::AttributeType;
use super::proto::tensor_shape_proto::dimension::Value as DimValue;
use super::proto::tensor_shape_proto::Dimension;
use super::proto::type_proto::{Tensor, Value as TypeValue};
use super::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};
use ndarray::ArrayD;

use super::tensor::from_f32;
use crate::error::{Error, Result};
use crate::geometry::ConvGeometry;
use crate::nn::{Layer, Network};

/// The opset the exporter writes (every operator it uses is unchanged from opset 13 to 21).
pub(super) const OPSET: i64 = 17;

/// Name of the exported graph's input.
pub(super) const INPUT: &str = "images";
/// Name of the exported graph's output.
pub(super) const OUTPUT: &str = "logits";

/// The graph of `network` for inputs `(N, C, H, W)` with `chw = [C, H, W]` (N left open),
/// nodes named by `names` (one per layer).
pub(super) fn model(
    network: &Network<f32>,
    names: &[String],
    chw: [usize; 3],
    classes: usize,
) -> Result<ModelProto> {
    let n = network.layers.len();
    let value = |v: usize| match v {
        0 => INPUT.to_string(),
        v if v == n => OUTPUT.to_string(),
        v => format!("{}.out", names[v - 1]),
    };
    let mut graph = GraphProto {
        name: "clustered-conv".into(),
        ..GraphProto::default()
    };
    for (l, layer) in network.layers.iter().enumerate() {
        let inputs: Vec<String> = network.inputs_of(l)?.into_iter().map(value).collect();
        let node = layer_node(network, layer, &names[l], inputs, &mut graph)?;
        graph.node.push(NodeProto {
            output: vec![value(l + 1)],
            name: names[l].clone(),
            ..node
        });
    }
    let batch = Dimension {
        value: Some(DimValue::DimParam("N".into())),
        ..Dimension::default()
    };
    graph.input.push(value_info(INPUT, batch.clone(), &chw));
    graph.output.push(value_info(OUTPUT, batch, &[classes]));
    Ok(ModelProto {
        ir_version: 8,
        producer_name: "clustered-conv".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        graph: Some(graph),
        ..ModelProto::default()
    })
}

/// A FLOAT tensor description with a symbolic batch dimension.
fn value_info(name: &str, batch: Dimension, rest: &[usize]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::default();
    shape.dim.push(batch);
    shape.dim.extend(rest.iter().map(|&d| Dimension {
        value: Some(DimValue::DimValue(d as i64)),
        ..Dimension::default()
    }));
    let tensor = Tensor {
        elem_type: 1,
        shape: Some(shape),
    };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(tensor)),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}

/// The node of one layer (without its output and name); its weights are added to `graph`.
fn layer_node(
    network: &Network<f32>,
    layer: &Layer<f32>,
    name: &str,
    mut inputs: Vec<String>,
    graph: &mut GraphProto,
) -> Result<NodeProto> {
    let mut weight = |suffix: &str, values: ArrayD<f32>| {
        let full = format!("{name}.{suffix}");
        graph.initializer.push(from_f32(&full, &values));
        full
    };
    let (op, attributes) = match layer {
        Layer::Conv(c) => {
            inputs.push(weight("weight", c.weight().clone().into_dyn()));
            if let Some(b) = c.bias() {
                inputs.push(weight("bias", b.clone().into_dyn()));
            }
            ("Conv", conv_attributes(c.geometry(), c.kernel_size()))
        }
        Layer::Clustered { layer, codebook } => {
            let c = layer.to_conv(network.codebooks.get(*codebook)?)?;
            inputs.push(weight("weight", c.weight().clone().into_dyn()));
            if let Some(b) = c.bias() {
                inputs.push(weight("bias", b.clone().into_dyn()));
            }
            ("Conv", conv_attributes(c.geometry(), c.kernel_size()))
        }
        Layer::BatchNorm(bn) => {
            for (suffix, v) in [
                ("weight", &bn.gamma),
                ("bias", &bn.beta),
                ("running_mean", &bn.running_mean),
                ("running_var", &bn.running_var),
            ] {
                inputs.push(weight(suffix, v.clone().into_dyn()));
            }
            let attrs = vec![
                float("epsilon", bn.eps),
                float("momentum", 1.0 - bn.momentum),
            ];
            ("BatchNormalization", attrs)
        }
        Layer::Relu => ("Relu", vec![]),
        Layer::MaxPool(p) => ("MaxPool", pool_attributes(p.kernel, p.stride, p.padding)),
        Layer::AvgPool(p) => {
            let mut attrs = pool_attributes(p.kernel, p.stride, p.padding);
            attrs.push(int("count_include_pad", i64::from(p.count_include_pad)));
            ("AveragePool", attrs)
        }
        Layer::GlobalAvgPool => ("GlobalAveragePool", vec![]),
        Layer::Flatten => ("Flatten", vec![int("axis", 1)]),
        Layer::Linear(lin) => {
            inputs.push(weight("weight", lin.weight.clone().into_dyn()));
            inputs.push(weight("bias", lin.bias.clone().into_dyn()));
            ("Gemm", vec![int("transB", 1)])
        }
        Layer::Add if inputs.len() == 2 => ("Add", vec![]),
        Layer::Add => ("Sum", vec![]),
    };
    Ok(NodeProto {
        input: inputs,
        op_type: op.into(),
        attribute: attributes,
        ..NodeProto::default()
    })
}

/// `kernel_shape`, `strides`, `pads` and `dilations` of a convolution.
fn conv_attributes(g: ConvGeometry, (kh, kw): (usize, usize)) -> Vec<AttributeProto> {
    let p = g.padding;
    vec![
        ints("kernel_shape", &[kh, kw]),
        ints("strides", &[g.stride.0, g.stride.1]),
        ints("pads", &[p.top, p.left, p.bottom, p.right]),
        ints("dilations", &[g.dilation.0, g.dilation.1]),
    ]
}

/// `kernel_shape`, `strides` and `pads` of a square pooling window.
fn pool_attributes(kernel: usize, stride: usize, padding: usize) -> Vec<AttributeProto> {
    vec![
        ints("kernel_shape", &[kernel, kernel]),
        ints("strides", &[stride, stride]),
        ints("pads", &[padding; 4]),
    ]
}

fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.iter().map(|&v| v as i64).collect(),
        ..AttributeProto::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..AttributeProto::default()
    }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: value,
        ..AttributeProto::default()
    }
}

/// Checks that `names` has one entry per layer, all distinct and non-empty (they name the
/// nodes and their weights).
pub(super) fn check_names(names: &[String], layers: usize) -> Result<()> {
    super::super::network_file::check_names(names, layers)?;
    if names.iter().any(String::is_empty) {
        return Err(Error::InvalidModel {
            what: "ONNX export needs a non-empty name for every layer".into(),
        });
    }
    Ok(())
}
