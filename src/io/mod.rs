//! Import of PyTorch-style `state_dict`s stored as safetensors, and dense export (feature
//! `safetensors`).
//!
//! A `state_dict` does not record convolution geometry: every imported convolution gets stride
//! 1, dilation 1 and "same" padding `⌊k/2⌋` unless a [`GeometryMap`] entry overrides it. Layers
//! are ordered by their names compared part by part, numbers numerically (`features.2` before
//! `features.10`): safetensors files store tensors sorted, not in module order.

mod atomic;
mod bitpack;
mod format;
mod network_file;
#[cfg(feature = "onnx")]
mod onnx;

pub use atomic::write_atomic;
pub use format::{
    CompressedModel, LayerDtypes, FORMAT_NAME, FORMAT_VERSION, MAX_CODEBOOKS, MAX_CODEBOOK_ENTRIES,
    MAX_FILE_BYTES, MAX_GEOMETRY_VALUE, MAX_KERNEL_AREA, MAX_LAYERS, MAX_LAYER_KERNELS,
};
pub use network_file::{NetworkGraph, SavedNetwork};
#[cfg(feature = "onnx")]
pub use onnx::{export_onnx, import_onnx, read_onnx, write_onnx, OnnxModel, MAX_ONNX_BYTES};

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use ndarray::{ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors};

use crate::compress::{CompressedNetwork, ConvLayer};
use crate::error::{Error, Result};
use crate::geometry::ConvGeometry;

/// Per-layer geometry overrides, by layer name (the weight's name without `.weight`).
pub type GeometryMap = HashMap<String, ConvGeometry>;

/// Parses a geometry sidecar: a JSON object from layer name to
/// `{"padding": [p] | [ph, pw] | [top, bottom, left, right], "stride": [s] | [sh, sw],
/// "dilation": [d] | [dh, dw]}`. `padding` is required (it is what a `state_dict` most often
/// gets wrong); stride and dilation default to 1.
///
/// ```
/// use clustered_conv::io::parse_geometry_map;
/// use clustered_conv::ConvGeometry;
/// let map = parse_geometry_map(r#"{"features.0": {"padding": [0], "stride": [2, 2]}}"#)?;
/// assert_eq!(map["features.0"], ConvGeometry::default().stride(2, 2));
/// # Ok::<(), clustered_conv::Error>(())
/// ```
///
/// # Errors
/// [`Error::Parse`] for malformed JSON, a missing padding, or a list of the wrong length;
/// [`Error::InvalidGeometry`] for a zero stride or dilation.
pub fn parse_geometry_map(json: &str) -> Result<GeometryMap> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        padding: Vec<usize>,
        #[serde(default)]
        stride: Option<Vec<usize>>,
        #[serde(default)]
        dilation: Option<Vec<usize>>,
    }
    const EXPECTED: &str = "a JSON object of layer name → {\"padding\": [p] | [ph, pw] | \
                            [top, bottom, left, right], \"stride\": [s] | [sh, sw], \
                            \"dilation\": [d] | [dh, dw]}";
    let parse_error = |input: String| Error::Parse {
        what: "geometry sidecar",
        input,
        expected: EXPECTED,
    };
    let entries: std::collections::BTreeMap<String, Entry> =
        serde_json::from_str(json).map_err(|e| parse_error(e.to_string()))?;
    let pair = |name: &str, what: &str, v: Option<&Vec<usize>>| match v.map(Vec::as_slice) {
        None => Ok((1, 1)),
        Some([a]) => Ok((*a, *a)),
        Some([a, b]) => Ok((*a, *b)),
        Some(other) => Err(parse_error(format!("{name}: {what} {other:?}"))),
    };
    let mut map = GeometryMap::new();
    for (name, e) in entries {
        let padding = match e.padding.as_slice() {
            [p] => crate::Padding {
                top: *p,
                bottom: *p,
                left: *p,
                right: *p,
            },
            [ph, pw] => crate::Padding {
                top: *ph,
                bottom: *ph,
                left: *pw,
                right: *pw,
            },
            [top, bottom, left, right] => crate::Padding {
                top: *top,
                bottom: *bottom,
                left: *left,
                right: *right,
            },
            other => return Err(parse_error(format!("{name}: padding {other:?}"))),
        };
        let (sh, sw) = pair(&name, "stride", e.stride.as_ref())?;
        let (dh, dw) = pair(&name, "dilation", e.dilation.as_ref())?;
        let geometry = ConvGeometry::default()
            .stride(sh, sw)
            .dilation(dh, dw)
            .padding_asymmetric(padding);
        geometry.validate()?;
        map.insert(name, geometry);
    }
    Ok(map)
}

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

impl TensorDtype {
    const ALL: [TensorDtype; 4] = [
        TensorDtype::F16,
        TensorDtype::BF16,
        TensorDtype::F32,
        TensorDtype::F64,
    ];

    /// safetensors' name of the type: `F16`, `BF16`, `F32` or `F64`.
    fn name(self) -> &'static str {
        match self {
            TensorDtype::F16 => "F16",
            TensorDtype::BF16 => "BF16",
            TensorDtype::F32 => "F32",
            TensorDtype::F64 => "F64",
        }
    }
}

impl std::fmt::Display for TensorDtype {
    /// safetensors' name of the type: `F16`, `BF16`, `F32` or `F64`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for TensorDtype {
    type Err = Error;

    /// Parses safetensors' name of the type, `F16`, `BF16`, `F32` or `F64` (what
    /// [`Display`](std::fmt::Display) writes).
    ///
    /// ```
    /// use clustered_conv::io::TensorDtype;
    /// assert_eq!("BF16".parse::<TensorDtype>()?, TensorDtype::BF16);
    /// assert_eq!(TensorDtype::F64.to_string(), "F64");
    /// let err = "f32".parse::<TensorDtype>().unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     r#"invalid element type "f32": expected F16, BF16, F32 or F64"#
    /// );
    /// # Ok::<(), clustered_conv::Error>(())
    /// ```
    fn from_str(s: &str) -> Result<Self> {
        TensorDtype::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| Error::Parse {
                what: "element type",
                input: s.to_string(),
                expected: "F16, BF16, F32 or F64",
            })
    }
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

    /// A tensor from safetensors' own dtype and little-endian bytes.
    pub(crate) fn from_raw(
        name: String,
        raw_dtype: Dtype,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    ) -> Self {
        NamedTensor {
            name,
            dtype: match raw_dtype {
                Dtype::F16 => Some(TensorDtype::F16),
                Dtype::BF16 => Some(TensorDtype::BF16),
                Dtype::F32 => Some(TensorDtype::F32),
                Dtype::F64 => Some(TensorDtype::F64),
                _ => None,
            },
            raw_dtype,
            shape,
            bytes,
        }
    }

    /// A tensor named `name` holding `values` stored as `dtype` (rounded to nearest for
    /// f16/bf16), e.g. for pass-through tensors of a [`CompressedModel`].
    pub fn from_f32(
        name: String,
        dtype: TensorDtype,
        values: &ndarray::ArrayViewD<'_, f32>,
    ) -> Self {
        let raw_dtype = match dtype {
            TensorDtype::F16 => Dtype::F16,
            TensorDtype::BF16 => Dtype::BF16,
            TensorDtype::F32 => Dtype::F32,
            TensorDtype::F64 => Dtype::F64,
        };
        let bytes: Vec<u8> = match dtype {
            TensorDtype::F64 => values
                .iter()
                .flat_map(|&v| f64::from(v).to_le_bytes())
                .collect(),
            TensorDtype::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            TensorDtype::BF16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
            TensorDtype::F32 => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        };
        NamedTensor::from_raw(name, raw_dtype, values.shape().to_vec(), bytes)
    }

    /// A safetensors view of the bytes.
    pub(crate) fn view(&self) -> Result<safetensors::tensor::TensorView<'_>> {
        safetensors::tensor::TensorView::new(self.raw_dtype, self.shape.clone(), &self.bytes)
            .map_err(|e| Error::InvalidSafetensors {
                what: format!("{}: {e}", self.name),
            })
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
    let metadata = read_safetensors_header(bytes)?;
    let file = SafeTensors::deserialize(bytes).map_err(|e| Error::InvalidSafetensors {
        what: e.to_string(),
    })?;
    let mut tensors: Vec<NamedTensor> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            NamedTensor::from_raw(
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect();
    tensors.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    Ok(StateDict { tensors, metadata })
}

/// A safetensors file of `tensors`, written deterministically: header keys and tensor data
/// in byte-wise name order (the `safetensors` crate's own writer orders `__metadata__` by
/// hash, so two writes of one model would differ).
pub(crate) fn serialize_sorted(
    tensors: &[NamedTensor],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut sorted: Vec<&NamedTensor> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut header = serde_json::Map::new();
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), serde_json::json!(m));
    }
    let mut offset = 0usize;
    for t in &sorted {
        t.view()?; // checks that the bytes match the shape and dtype
        let end = offset + t.bytes.len();
        header.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": format!("{:?}", t.raw_dtype),
                "shape": t.shape,
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for t in &sorted {
        out.extend_from_slice(&t.bytes);
    }
    Ok(out)
}

/// The `__metadata__` map of a safetensors file (empty when absent), after the `safetensors`
/// crate's checks of the header.
fn read_safetensors_header(bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| Error::InvalidSafetensors {
        what: e.to_string(),
    })?;
    Ok(header.metadata().clone().unwrap_or_default())
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
    CompressedModel::from_import(net.clone(), imported)?.to_dense_safetensors()
}
