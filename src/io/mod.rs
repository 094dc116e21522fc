//! Import of PyTorch-style `state_dict`s stored as safetensors, and dense export (feature
//! `safetensors`).
//!
//! A `state_dict` does not record convolution geometry: every imported convolution gets stride
//! 1, dilation 1 and "same" padding `⌊k/2⌋` unless a [`GeometryMap`] entry overrides it. Layers
//! are ordered by their names compared part by part, numbers numerically (`features.2` before
//! `features.10`): safetensors files store tensors sorted, not in module order.

use std::cmp::Ordering;
use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors};

use crate::compress::{CompressedNetwork, ConvLayer};
use crate::error::{Error, Result};
use crate::geometry::ConvGeometry;

/// Per-layer geometry overrides, by layer name (the weight's name without `.weight`).
pub type GeometryMap = HashMap<String, ConvGeometry>;

/// Element types read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorDtype {
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single.
    F32,
    /// IEEE double.
    F64,
}

/// One tensor of a safetensors file, kept as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Name.
    pub name: String,
    /// Stored element type (`None`: a type this crate does not convert, passed through).
    pub dtype: Option<TensorDtype>,
    /// safetensors' own dtype, for writing the tensor back unchanged.
    raw_dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian bytes as stored.
    pub bytes: Vec<u8>,
}

impl NamedTensor {
    /// The values as `f32` (exact for f16/bf16, rounded for f64).
    ///
    /// # Errors
    /// [`Error::InvalidSafetensors`] for a non-float tensor.
    pub fn to_f32(&self) -> Result<ArrayD<f32>> {
        let values: Vec<f32> = match self.dtype {
            Some(TensorDtype::F32) => self
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Some(TensorDtype::F64) => self
                .bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            Some(TensorDtype::F16) => self
                .bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Some(TensorDtype::BF16) => self
                .bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            None => {
                return Err(Error::InvalidSafetensors {
                    what: format!("tensor {:?} is not a floating-point tensor", self.name),
                })
            }
        };
        ArrayD::from_shape_vec(IxDyn(&self.shape), values).map_err(|_| Error::InvalidSafetensors {
            what: format!(
                "tensor {:?}: byte length does not match its shape",
                self.name
            ),
        })
    }

    /// `values` stored in this tensor's element type (same name and shape).
    fn with_values(&self, values: &ArrayD<f32>) -> NamedTensor {
        let bytes: Vec<u8> = match self.dtype {
            Some(TensorDtype::F64) => values
                .iter()
                .flat_map(|&v| f64::from(v).to_le_bytes())
                .collect(),
            Some(TensorDtype::F16) => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            Some(TensorDtype::BF16) => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
            _ => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        };
        NamedTensor {
            bytes,
            shape: values.shape().to_vec(),
            ..self.clone()
        }
    }
}

/// Every tensor of a safetensors file, in name order (see the module docs), and its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct StateDict {
    /// The tensors.
    pub tensors: Vec<NamedTensor>,
    /// The `__metadata__` map, if any.
    pub metadata: HashMap<String, String>,
}

/// Parses a safetensors file (the `safetensors` crate validates the header, offsets and sizes).
///
/// # Errors
/// [`Error::InvalidSafetensors`] for anything the `safetensors` crate rejects.
pub fn read_safetensors(bytes: &[u8]) -> Result<StateDict> {
    let invalid = |e: safetensors::SafeTensorError| Error::InvalidSafetensors {
        what: e.to_string(),
    };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(invalid)?;
    let file = SafeTensors::deserialize(bytes).map_err(invalid)?;
    let mut tensors: Vec<NamedTensor> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| NamedTensor {
            dtype: match view.dtype() {
                Dtype::F16 => Some(TensorDtype::F16),
                Dtype::BF16 => Some(TensorDtype::BF16),
                Dtype::F32 => Some(TensorDtype::F32),
                Dtype::F64 => Some(TensorDtype::F64),
                _ => None,
            },
            raw_dtype: view.dtype(),
            shape: view.shape().to_vec(),
            bytes: view.data().to_vec(),
            name,
        })
        .collect();
    tensors.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    Ok(StateDict {
        tensors,
        metadata: header.metadata().clone().unwrap_or_default(),
    })
}

/// Compares dotted names part by part, numeric parts as numbers.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let mut pa = a.split('.');
    let mut pb = b.split('.');
    loop {
        match (pa.next(), pb.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(nx), Ok(ny)) => nx.cmp(&ny),
                    _ => x.cmp(y),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

/// The convolutions of a state dict and everything else.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedModel {
    /// Every 4-D `*.weight` with a kernel larger than 1×1, with its `*.bias`, in name order.
    pub layers: Vec<ConvLayer<f32>>,
    /// The stored tensors of each layer (weight, then bias if any), for writing back with the
    /// original element types.
    pub layer_tensors: Vec<(NamedTensor, Option<NamedTensor>)>,
    /// Every other tensor (BatchNorm, Linear, 1×1 convolutions, …), untouched.
    pub passthrough: Vec<NamedTensor>,
}

/// Splits a state dict into clusterable convolutions and pass-through tensors.
///
/// # Errors
/// A convolution weight or bias that is not floating point, or a bias whose length is not the
/// weight's `Cout`.
pub fn import_conv_layers(state: &StateDict, geometry: &GeometryMap) -> Result<ImportedModel> {
    let by_name: HashMap<&str, &NamedTensor> =
        state.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut layers = Vec::new();
    let mut layer_tensors = Vec::new();
    let mut taken: Vec<&str> = Vec::new();
    for t in &state.tensors {
        let Some(base) = t.name.strip_suffix(".weight") else {
            continue;
        };
        if t.shape.len() != 4 || t.shape[2] * t.shape[3] <= 1 || t.dtype.is_none() {
            continue;
        }
        let weight = t
            .to_f32()?
            .into_dimensionality::<ndarray::Ix4>()
            .expect("4-D shape");
        let bias_name = format!("{base}.bias");
        let bias_tensor = by_name.get(bias_name.as_str()).copied();
        let bias = match bias_tensor {
            Some(b) => {
                let values = b.to_f32()?;
                if values.shape() != [weight.dim().0] {
                    return Err(Error::InvalidSafetensors {
                        what: format!(
                            "bias {bias_name:?} has shape {:?}, expected [{}]",
                            values.shape(),
                            weight.dim().0
                        ),
                    });
                }
                taken.push(b.name.as_str());
                Some(
                    values
                        .into_dimensionality::<ndarray::Ix1>()
                        .expect("1-D shape"),
                )
            }
            None => None,
        };
        taken.push(t.name.as_str());
        let (kh, kw) = (t.shape[2], t.shape[3]);
        let g = geometry
            .get(base)
            .copied()
            .unwrap_or_else(|| ConvGeometry::default().padding(kh / 2, kw / 2));
        layers.push(ConvLayer {
            name: base.to_string(),
            weight,
            bias,
            geometry: g,
            mask: None,
        });
        layer_tensors.push((t.clone(), bias_tensor.cloned()));
    }
    let passthrough = state
        .tensors
        .iter()
        .filter(|t| !taken.contains(&t.name.as_str()))
        .cloned()
        .collect();
    Ok(ImportedModel {
        layers,
        layer_tensors,
        passthrough,
    })
}

/// A safetensors file with every layer of `net` as a dense weight (and bias) under its
/// original name and element type, plus the pass-through tensors: what PyTorch's
/// `load_state_dict` expects back.
///
/// # Errors
/// A network whose layers do not match the imported model's.
pub fn write_dense_safetensors(
    net: &CompressedNetwork<f32>,
    imported: &ImportedModel,
) -> Result<Vec<u8>> {
    if net.layers.len() != imported.layer_tensors.len() {
        return Err(Error::ShapeMismatch {
            what: "compressed layers vs imported layers",
            expected: vec![imported.layer_tensors.len()],
            got: vec![net.layers.len()],
        });
    }
    let mut out: Vec<NamedTensor> = Vec::new();
    for (i, (weight, bias)) in imported.layer_tensors.iter().enumerate() {
        let dense = net.dense_layer(i)?;
        out.push(weight.with_values(&dense.weight().clone().into_dyn()));
        if let (Some(b), Some(values)) = (bias, dense.bias()) {
            out.push(b.with_values(&values.clone().into_dyn()));
        }
    }
    out.extend(imported.passthrough.iter().cloned());
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = out
        .iter()
        .map(|t| {
            let view = safetensors::tensor::TensorView::new(t.raw_dtype, t.shape.clone(), &t.bytes)
                .map_err(|e| Error::InvalidSafetensors {
                    what: format!("{}: {e}", t.name),
                })?;
            Ok((t.name.clone(), view))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, None).map_err(|e| Error::InvalidSafetensors {
        what: e.to_string(),
    })
}
