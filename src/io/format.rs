//! The compressed-model file: a valid safetensors file, so every safetensors tool opens it.
//!
//! ```text
//! ┌────────────┬──────────────────────────────────────────┬─────────────────────────────┐
//! │ u64 LE: n  │ JSON header (n bytes)                    │ payload: tensor bytes       │
//! └────────────┴──────────────────────────────────────────┴─────────────────────────────┘
//!   header = { "__metadata__": {
//!                 "format": "clustered-conv",          ← the magic
//!                 "format_version": "1" or "2",
//!                 "model": "<JSON: codebooks, layers, pass-through names>",
//!                 "payload_sha256": "<hex>" },
//!              "<tensor name>": { "dtype", "shape", "data_offsets" }, … }
//!
//!   tensors, for a network with codebooks c = 0, 1, … and a layer named L:
//!     clustered_conv.codebook.<c>   F32  [K, kh, kw]        centroids
//!     L.weight.indices              U8   [⌈Cout·Cin·b / 8⌉]  bit-packed indices
//!     L.weight.scales               F16 / F32 [Cout, Cin]    (U8 bit-packed for fixed<bits>)
//!     L.weight.mask                 U8   [⌈Cout·Cin / 8⌉]    1 = kept (pruned layers only)
//!     L.bias                        F32  [Cout]
//!     L.weight                      F32  [Cout, Cin, kh, kw] (layers kept dense)
//!     <pass-through names>          as imported (BatchNorm, Linear, 1×1, …), bytes untouched
//! ```
//!
//! - **Indices** are `centroid + K·transform` in row-major `(o, i)` order, each
//!   `b = max(1, ⌈log2(K·S)⌉)` bits wide, packed least significant bit first: value `j` fills
//!   stream bits `j·b … j·b + b − 1`, stream bit `n` is bit `n mod 8` of byte `⌊n/8⌋`, and the
//!   unused high bits of the last byte are zero. The mask uses the same packing with `b = 1`.
//!   Fixed-point scales (`fixed<f>`) store `round(s·2^f)` as `f`-bit two's complement.
//! - **`model`** records, per codebook, K, kernel size, symmetry letters (`i`, `ih`, `ihvo`,
//!   `ihvoIHVO`) and scale mode; per layer, name, kind (`clustered` / `dense`), codebook, weight
//!   shape, index bits, geometry (stride, padding top/bottom/left/right, dilation), which of
//!   scales / bias / mask are present, and the element types the weight and bias had when
//!   imported (used by decompression); the scale precision; the pass-through names in order.
//! - **`payload_sha256`** is the SHA-256 of: the `model` string, then for every tensor in
//!   byte-wise name order its name, a zero byte, its safetensors dtype name (`F32`, `U8`, …), a
//!   zero byte, each dimension as u64 LE, the byte length as u64 LE, and the bytes. A flipped
//!   bit anywhere in the metadata or the tensors is reported as [`Error::ChecksumMismatch`].
//!
//! - **Version 2** adds `graph` to `model`: the layers of a runnable network and how they
//!   connect (see [`SavedNetwork`](super::SavedNetwork)). A file without a graph is written as
//!   version 1, the lowest version that holds it, so that older readers still read it.
//!
//! Readers keep reading every older version; `tests/data/golden_v1.safetensors` pins
//! version 1 and `tests/data/golden_v2.safetensors` version 2. A file from a newer version is
//! refused with [`Error::UnsupportedVersion`].
//!
//! Reading never trusts a size it has not checked: the file size, the number of layers and
//! codebooks, kernels per layer, codebook entries and kernel area are bounded by the public
//! `MAX_*` constants before anything of that size is allocated, and every packed tensor's byte
//! length is checked against its claimed shape before it is unpacked.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use ndarray::{Array1, Array2, Array3, Array4};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::bitpack::{pack, packed_len, unpack};
use super::network_file::NetworkGraph;
use super::{read_safetensors_header, write_atomic, ImportedModel, NamedTensor, TensorDtype};
use crate::clustered::{ClusteredConv2d, Scales};
use crate::codebook::{Codebooks, KernelCodebook, ScaleScheme, ScaleStorage, Symmetry};
use crate::compress::{CompressedLayer, CompressedNetwork};
use crate::conv::Conv2d;
use crate::error::{Error, Result};
use crate::geometry::{ConvGeometry, Padding};

/// The `format` value of `__metadata__`.
pub const FORMAT_NAME: &str = "clustered-conv";
/// The format version this build writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 2;
/// Largest file read, in bytes (64 GiB).
pub const MAX_FILE_BYTES: u64 = 1 << 36;
/// Most layers in a file.
pub const MAX_LAYERS: usize = 100_000;
/// Most codebooks in a file.
pub const MAX_CODEBOOKS: usize = 100_000;
/// Most kernels (`Cout·Cin`) in one layer.
pub const MAX_LAYER_KERNELS: u64 = 1 << 28;
/// Most entries (`K·S`) in one codebook.
pub const MAX_CODEBOOK_ENTRIES: u64 = 1 << 24;
/// Largest kernel area `kh·kw`.
pub const MAX_KERNEL_AREA: u64 = 1 << 12;
/// Largest stride, padding or dilation.
pub use crate::geometry::MAX_GEOMETRY_VALUE;

const CODEBOOK_PREFIX: &str = "clustered_conv.codebook.";
/// `kind` of a clustered layer in the metadata.
const KIND_CLUSTERED: &str = "clustered";
/// `kind` of a layer kept dense in the metadata.
const KIND_DENSE: &str = "dense";
/// A codebook's `scale_mode` in the model JSON: its kernels were L2-normalised …
const SCALE_MODE_L2: &str = "l2norm";
/// … or clustered raw.
const SCALE_MODE_NONE: &str = "none";

/// The `scale_mode` a codebook of this scheme records.
fn scale_mode_name(scheme: ScaleScheme) -> &'static str {
    if scheme.has_scales() {
        SCALE_MODE_L2
    } else {
        SCALE_MODE_NONE
    }
}

/// The element types a layer's weight and bias had when imported; decompression writes them
/// back in these types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerDtypes {
    /// The weight's type.
    pub weight: TensorDtype,
    /// The bias's type (ignored when the layer has no bias).
    pub bias: TensorDtype,
}

impl Default for LayerDtypes {
    fn default() -> Self {
        LayerDtypes {
            weight: TensorDtype::F32,
            bias: TensorDtype::F32,
        }
    }
}

/// What a compressed-model file holds: the network, the original element types of its
/// layers, and the tensors passed through untouched.
///
/// ```
/// use clustered_conv::io::CompressedModel;
/// use clustered_conv::{compress, CompressionConfig, ConvGeometry, ConvLayer, KernelCodebook};
/// use ndarray::Array4;
///
/// let layer = ConvLayer {
///     name: "conv1".to_string(),
///     weight: Array4::<f32>::from_shape_fn((8, 4, 3, 3), |(o, i, r, c)| ((o * 7 + i * 3 + r * 2 + c) % 5) as f32 - 2.0),
///     bias: None,
///     geometry: ConvGeometry::default().padding(1, 1),
///     mask: None,
/// };
/// let config = CompressionConfig::new(KernelCodebook::params(4));
/// let model = CompressedModel::new(compress(&[layer], &config)?);
/// let bytes = model.to_bytes()?;
/// assert_eq!(CompressedModel::from_bytes(&bytes)?, model);
/// # Ok::<(), clustered_conv::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CompressedModel {
    /// The compressed network.
    pub network: CompressedNetwork<f32>,
    /// One entry per layer of `network`.
    pub dtypes: Vec<LayerDtypes>,
    /// Tensors stored as they were imported (BatchNorm, Linear, 1×1 convolutions, …).
    pub passthrough: Vec<NamedTensor>,
    /// The network graph (format version 2), when the model was saved from a runnable
    /// network ([`SavedNetwork`](super::SavedNetwork)); `None` for a compressed `state_dict`.
    pub graph: Option<NetworkGraph>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ModelMeta {
    scales: String,
    codebooks: Vec<CodebookMeta>,
    layers: Vec<LayerMeta>,
    passthrough: Vec<String>,
    /// Only in version 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    graph: Option<NetworkGraph>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CodebookMeta {
    k: u64,
    kernel: [u64; 2],
    symmetry: String,
    scale_mode: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct LayerMeta {
    name: String,
    kind: String,
    codebook: Option<usize>,
    shape: [u64; 4],
    index_bits: u32,
    stride: [u64; 2],
    padding: [u64; 4],
    dilation: [u64; 2],
    scales: bool,
    bias: bool,
    mask: bool,
    weight_dtype: String,
    bias_dtype: String,
}

impl CompressedModel {
    /// A model of `network` alone: every layer was `f32`, nothing passes through.
    pub fn new(network: CompressedNetwork<f32>) -> Self {
        let dtypes = vec![LayerDtypes::default(); network.layers().len()];
        CompressedModel {
            network,
            dtypes,
            passthrough: Vec::new(),
            graph: None,
        }
    }

    /// A model of `network`, compressed from `imported`: keeps the imported element types and
    /// pass-through tensors.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the network does not have one layer per imported layer.
    pub fn from_import(network: CompressedNetwork<f32>, imported: &ImportedModel) -> Result<Self> {
        if network.layers().len() != imported.layer_tensors.len() {
            return Err(Error::ShapeMismatch {
                what: "compressed layers vs imported layers",
                expected: vec![imported.layer_tensors.len()],
                got: vec![network.layers().len()],
            });
        }
        let dtypes = imported
            .layer_tensors
            .iter()
            .map(|(w, b)| {
                let weight = w.dtype.unwrap_or(TensorDtype::F32);
                LayerDtypes {
                    weight,
                    bias: b.as_ref().and_then(|b| b.dtype).unwrap_or(weight),
                }
            })
            .collect();
        Ok(CompressedModel {
            network,
            dtypes,
            passthrough: imported.passthrough.clone(),
            graph: None,
        })
    }

    /// The file's bytes.
    ///
    /// # Errors
    /// [`Error::UnroundedScale`] for a scale that is not representable at the network's scale
    /// precision (round the scales after fine-tuning with
    /// [`CompressedNetwork::round_scales`]), [`Error::DuplicateTensorName`] for two tensors
    /// with the same name, and [`Error::InvalidModel`] when the model cannot be stored
    /// otherwise: a layer without scales in a network with scales, a codebook index out of
    /// range, a non-finite bias, or a `dtypes` list of the wrong length.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let net = &self.network;
        if self.dtypes.len() != net.layers().len() {
            return invalid_model(format!(
                "{} dtype entries for {} layers",
                self.dtypes.len(),
                net.layers().len()
            ));
        }
        let mut tensors: Vec<NamedTensor> = Vec::new();
        let mut codebooks = Vec::with_capacity(net.codebooks().len());
        for (c, cb) in net.codebooks().iter().enumerate() {
            let (k, kh, kw) = cb.centroids().dim();
            tensors.push(NamedTensor::from_raw(
                format!("{CODEBOOK_PREFIX}{c}"),
                Dtype::F32,
                vec![k, kh, kw],
                f32_bytes(cb.centroids().iter()),
            ));
            codebooks.push(CodebookMeta {
                k: k as u64,
                kernel: [kh as u64, kw as u64],
                symmetry: cb.symmetry().to_string(),
                scale_mode: scale_mode_name(cb.scale_scheme()).to_string(),
            });
        }
        let mut layers = Vec::with_capacity(net.layers().len());
        for (layer, dtypes) in net.layers().iter().zip(&self.dtypes) {
            layers.push(write_layer(layer, *dtypes, net, &mut tensors)?);
        }
        tensors.extend(self.passthrough.iter().cloned());
        let mut seen = HashSet::new();
        if let Some(dup) = tensors.iter().find(|t| !seen.insert(t.name.as_str())) {
            return Err(Error::DuplicateTensorName {
                name: dup.name.clone(),
            });
        }
        let meta = ModelMeta {
            scales: net.scale_scheme().to_string(),
            codebooks,
            layers,
            passthrough: self.passthrough.iter().map(|t| t.name.clone()).collect(),
            graph: self.graph.clone(),
        };
        // The lowest version that holds the content, so that older readers read what they can.
        let version = if meta.graph.is_some() { 2 } else { 1 };
        let model_json = serde_json::to_string(&meta).map_err(|e| Error::InvalidModel {
            what: format!("metadata: {e}"),
        })?;
        let checksum = payload_sha256(
            &model_json,
            tensors.iter().map(|t| {
                (
                    t.name.as_str(),
                    t.raw_dtype,
                    t.shape.as_slice(),
                    t.bytes.as_slice(),
                )
            }),
        );
        let metadata: BTreeMap<String, String> = [
            ("format", FORMAT_NAME.to_string()),
            ("format_version", version.to_string()),
            ("model", model_json),
            ("payload_sha256", checksum),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        super::serialize_sorted(&tensors, Some(&metadata))
    }

    /// Parses a file's bytes, checking everything listed in the module docs. Clustered layers
    /// of a file with `f16` scales hold them as `f16`, as stored
    /// ([`Scales::are_half`](crate::Scales::are_half)).
    ///
    /// # Errors
    /// [`Error::LimitExceeded`], [`Error::InvalidSafetensors`] (not a safetensors file),
    /// [`Error::NotCompressedModel`] (a safetensors file of another kind, e.g. a plain
    /// `state_dict`), [`Error::InvalidModelFile`] (a compressed-model file whose metadata or
    /// tensors are not valid), [`Error::UnsupportedVersion`], [`Error::ChecksumMismatch`], or
    /// [`Error::IndexOutOfRange`] for an index beyond its codebook.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        check_limit("file size in bytes", bytes.len() as u64, MAX_FILE_BYTES)?;
        let header = Header::read(bytes)?;
        let mut payload = Payload::verified(bytes, &header)?;
        let meta = ModelMeta::parse(&header.model)?;
        if meta.graph.is_some() && header.version < 2 {
            return invalid_file("a version 1 file holds a network graph".into());
        }
        let scales: ScaleScheme = parse_field("__metadata__.model.scales", &meta.scales)?;
        let codebooks = meta
            .codebooks
            .iter()
            .enumerate()
            .map(|(c, m)| read_codebook(c, m, scales, &mut payload))
            .collect::<Result<Vec<_>>>()?;
        let mut layers = Vec::with_capacity(meta.layers.len());
        let mut dtypes = Vec::with_capacity(meta.layers.len());
        for m in &meta.layers {
            layers.push(read_layer(m, &codebooks, scales, &mut payload)?);
            dtypes.push(m.dtypes()?);
        }
        let passthrough = meta
            .passthrough
            .iter()
            .map(|name| payload.take_passthrough(name))
            .collect::<Result<Vec<_>>>()?;
        payload.finish()?;
        Ok(CompressedModel {
            network: CompressedNetwork::new(Codebooks::from(codebooks), layers, scales)?,
            dtypes,
            passthrough,
            graph: meta.graph,
        })
    }

    /// Writes the file atomically (a temporary file in the same directory, then a rename):
    /// on any failure the destination is left as it was.
    ///
    /// # Errors
    /// As [`CompressedModel::to_bytes`], or [`Error::Write`].
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// Reads a file written by [`CompressedModel::save`], refusing files larger than
    /// [`MAX_FILE_BYTES`] before reading them.
    ///
    /// # Errors
    /// [`Error::Io`], or as [`CompressedModel::from_bytes`].
    pub fn load(path: &Path) -> Result<Self> {
        let io_error = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io_error)?.len();
        check_limit("file size in bytes", size, MAX_FILE_BYTES)?;
        Self::from_bytes(&std::fs::read(path).map_err(io_error)?)
    }

    /// A dense safetensors file: every layer's reconstructed weight (and bias) under its
    /// original name (`<layer>.weight`, `<layer>.bias`) and element type, then the
    /// pass-through tensors unchanged; what PyTorch's `load_state_dict` expects.
    ///
    /// # Errors
    /// A `dtypes` list of the wrong length, or a layer that cannot be reconstructed.
    pub fn to_dense_safetensors(&self) -> Result<Vec<u8>> {
        if self.dtypes.len() != self.network.layers().len() {
            return invalid_model(format!(
                "{} dtype entries for {} layers",
                self.dtypes.len(),
                self.network.layers().len()
            ));
        }
        let mut out: Vec<NamedTensor> = Vec::new();
        for (l, (layer, dtypes)) in self.network.layers().iter().zip(&self.dtypes).enumerate() {
            let dense = self.network.dense_layer(l)?;
            let name = layer.name();
            out.push(NamedTensor::from_f32(
                format!("{name}.weight"),
                dtypes.weight,
                &dense.weight().view().into_dyn(),
            ));
            if let Some(bias) = dense.bias() {
                out.push(NamedTensor::from_f32(
                    format!("{name}.bias"),
                    dtypes.bias,
                    &bias.view().into_dyn(),
                ));
            }
        }
        out.extend(self.passthrough.iter().cloned());
        super::serialize_sorted(&out, None)
    }
}

/// Adds one layer's tensors and returns its metadata.
fn write_layer(
    layer: &CompressedLayer<f32>,
    dtypes: LayerDtypes,
    net: &CompressedNetwork<f32>,
    tensors: &mut Vec<NamedTensor>,
) -> Result<LayerMeta> {
    let name = layer.name();
    let (mut meta, bias) = match layer {
        CompressedLayer::Clustered {
            codebook, layer, ..
        } => (
            write_clustered(name, *codebook, layer, net, tensors)?,
            layer.bias(),
        ),
        CompressedLayer::Dense { layer, .. } => {
            let (o, i, kh, kw) = layer.weight().dim();
            tensors.push(NamedTensor::from_raw(
                format!("{name}.weight"),
                Dtype::F32,
                vec![o, i, kh, kw],
                f32_bytes(layer.weight().iter()),
            ));
            let meta = LayerMeta::new(name, KIND_DENSE, [o, i, kh, kw], layer.geometry());
            (meta, layer.bias())
        }
    };
    if let Some(b) = bias {
        if let Some(i) = b.iter().position(|v| !v.is_finite()) {
            return invalid_model(format!("layer {name:?} has a non-finite bias at {i}"));
        }
        tensors.push(NamedTensor::from_raw(
            format!("{name}.bias"),
            Dtype::F32,
            vec![b.len()],
            f32_bytes(b.iter()),
        ));
    }
    meta.bias = bias.is_some();
    meta.weight_dtype = dtypes.weight.to_string();
    meta.bias_dtype = dtypes.bias.to_string();
    Ok(meta)
}

/// Adds a clustered layer's indices, scales and mask; returns its metadata without bias
/// and element types.
fn write_clustered(
    name: &str,
    codebook: usize,
    layer: &ClusteredConv2d<f32>,
    net: &CompressedNetwork<f32>,
    tensors: &mut Vec<NamedTensor>,
) -> Result<LayerMeta> {
    let cb = net.codebooks().get(codebook)?;
    let bits = cb.packed_index_bits().max(1);
    let (cout, cin) = layer.indices().dim();
    let (kh, kw) = cb.kernel_size();
    let limit = cb.index_limit();
    if let Some(bad) = layer.indices().iter().find(|&v| v as usize >= limit) {
        return invalid_model(format!(
            "layer {name:?} has index {bad}, its codebook has {limit} entries"
        ));
    }
    tensors.push(NamedTensor::from_raw(
        format!("{name}.weight.indices"),
        Dtype::U8,
        vec![packed_len(cout * cin, bits).unwrap_or(0)],
        pack(layer.indices().iter(), bits),
    ));
    let mut meta = LayerMeta::new(name, KIND_CLUSTERED, [cout, cin, kh, kw], layer.geometry());
    meta.codebook = Some(codebook);
    meta.index_bits = bits;
    meta.scales = write_scales(name, layer, net.scale_scheme(), tensors)?;
    if let Some(mask) = layer.mask() {
        tensors.push(NamedTensor::from_raw(
            format!("{name}.weight.mask"),
            Dtype::U8,
            vec![packed_len(cout * cin, 1).unwrap_or(0)],
            pack(mask.iter().map(|&keep| u32::from(keep)), 1),
        ));
        meta.mask = true;
    }
    Ok(meta)
}

impl LayerMeta {
    /// The metadata of a layer without codebook, scales, bias or mask, of `f32` weights.
    fn new(name: &str, kind: &str, shape: [usize; 4], geometry: ConvGeometry) -> LayerMeta {
        let p = geometry.padding;
        let (sh, sw) = geometry.stride;
        let (dh, dw) = geometry.dilation;
        LayerMeta {
            name: name.to_string(),
            kind: kind.to_string(),
            codebook: None,
            shape: shape.map(|d| d as u64),
            index_bits: 0,
            stride: [sh as u64, sw as u64],
            padding: [p.top, p.bottom, p.left, p.right].map(|v| v as u64),
            dilation: [dh as u64, dw as u64],
            scales: false,
            bias: false,
            mask: false,
            weight_dtype: TensorDtype::F32.to_string(),
            bias_dtype: TensorDtype::F32.to_string(),
        }
    }
}

/// Adds a clustered layer's scales at the network's precision; `false` when none are stored.
fn write_scales(
    name: &str,
    layer: &ClusteredConv2d<f32>,
    precision: ScaleScheme,
    tensors: &mut Vec<NamedTensor>,
) -> Result<bool> {
    let Some(scales) = layer.scales() else {
        if precision == ScaleScheme::None {
            return Ok(false);
        }
        return invalid_model(format!(
            "layer {name:?} has no scales but the network stores {precision} scales"
        ));
    };
    let Some(storage) = precision.storage() else {
        // A pruned layer without scales carries its mask as scales of 1 and 0: the mask
        // tensor restores them.
        let from_mask = layer.mask().is_some_and(|mask| {
            scales
                .iter()
                .zip(mask)
                .all(|(s, &keep)| s == if keep { 1.0 } else { 0.0 })
        });
        if from_mask {
            return Ok(false);
        }
        return invalid_model(format!(
            "layer {name:?} has scales but the network's scale precision is none"
        ));
    };
    if let Some(j) = scales.iter().position(|s| storage.round(s) != s) {
        let cin = layer.in_channels();
        return Err(Error::UnroundedScale {
            layer: name.to_string(),
            out_channel: j / cin,
            in_channel: j % cin,
            value: scales.iter().nth(j).unwrap_or(f32::NAN),
            precision: precision.to_string(),
        });
    }
    let (dtype, shape, bytes) = encode_scales(scales, storage);
    tensors.push(NamedTensor::from_raw(
        format!("{name}.weight.scales"),
        dtype,
        shape,
        bytes,
    ));
    Ok(true)
}

/// The stored form of `scales` at `storage`: dtype, shape and bytes.
fn encode_scales(scales: Scales<'_, f32>, storage: ScaleStorage) -> (Dtype, Vec<usize>, Vec<u8>) {
    let (cout, cin) = scales.dim();
    let shape = vec![cout, cin];
    match storage {
        ScaleStorage::F16 => (
            Dtype::F16,
            shape,
            scales
                .iter()
                .flat_map(|s| half::f16::from_f32(s).to_le_bytes())
                .collect(),
        ),
        ScaleStorage::Fixed(bits) => {
            let packed = pack(
                scales.iter().map(|s| bits.encode(f64::from(s))),
                u32::from(bits.get()),
            );
            (Dtype::U8, vec![packed.len()], packed)
        }
        ScaleStorage::F32 => (Dtype::F32, shape, f32_bytes(scales.iter())),
    }
}

/// The `__metadata__` entries of a compressed-model file, after the checks every version
/// shares: the magic and the version.
struct Header {
    /// `__metadata__.format_version`.
    version: u32,
    /// `__metadata__.model`, the JSON of a [`ModelMeta`].
    model: String,
    /// `__metadata__.payload_sha256`, as recorded.
    checksum: String,
}

impl Header {
    /// Checks, in order: a safetensors header, the magic, a known version, then that `model`
    /// and `payload_sha256` are present.
    fn read(bytes: &[u8]) -> Result<Header> {
        let mut metadata = read_safetensors_header(bytes)?;
        if metadata.get("format").map(String::as_str) != Some(FORMAT_NAME) {
            return Err(Error::NotCompressedModel {
                found: metadata.remove("format"),
            });
        }
        let mut entry = |key: &str| {
            metadata
                .remove(key)
                .ok_or_else(|| file_error(format!("__metadata__ has no {key}")))
        };
        let version = check_version(&entry("format_version")?)?;
        Ok(Header {
            version,
            model: entry("model")?,
            checksum: entry("payload_sha256")?,
        })
    }
}

/// `Ok` for the versions this build reads; [`Error::UnsupportedVersion`] for a newer one.
fn check_version(version: &str) -> Result<u32> {
    match version.parse::<u32>() {
        Ok(v) if (1..=FORMAT_VERSION).contains(&v) => Ok(v),
        Ok(v) if v > FORMAT_VERSION => Err(Error::UnsupportedVersion {
            found: version.to_string(),
            supported: FORMAT_VERSION,
        }),
        _ => invalid_file(format!("format_version {version:?} is not a version")),
    }
}

impl ModelMeta {
    /// Parses `__metadata__.model` and bounds its numbers of layers and codebooks.
    fn parse(json: &str) -> Result<ModelMeta> {
        let meta: ModelMeta = serde_json::from_str(json)
            .map_err(|e| file_error(format!("__metadata__.model: {e}")))?;
        check_limit(
            "number of layers",
            meta.layers.len() as u64,
            MAX_LAYERS as u64,
        )?;
        check_limit(
            "number of codebooks",
            meta.codebooks.len() as u64,
            MAX_CODEBOOKS as u64,
        )?;
        Ok(meta)
    }
}

impl LayerMeta {
    /// The element types recorded for the layer.
    fn dtypes(&self) -> Result<LayerDtypes> {
        let field = format!("layer {:?}", self.name);
        Ok(LayerDtypes {
            weight: parse_field(&field, &self.weight_dtype)?,
            bias: parse_field(&field, &self.bias_dtype)?,
        })
    }
}

/// The tensors of a file whose checksum matched, taken one by one as the metadata names them;
/// [`Payload::finish`] refuses any left over.
struct Payload<'a> {
    tensors: BTreeMap<String, TensorView<'a>>,
}

impl<'a> Payload<'a> {
    /// Parses the tensors of `bytes` and checks them against the header's checksum.
    fn verified(bytes: &'a [u8], header: &Header) -> Result<Self> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| Error::InvalidSafetensors {
            what: e.to_string(),
        })?;
        let tensors: BTreeMap<String, TensorView<'a>> = file.tensors().into_iter().collect();
        let actual = payload_sha256(
            &header.model,
            tensors
                .iter()
                .map(|(name, v)| (name.as_str(), v.dtype(), v.shape(), v.data())),
        );
        if actual != header.checksum {
            return Err(Error::ChecksumMismatch {
                expected: header.checksum.clone(),
                got: actual,
            });
        }
        Ok(Payload { tensors })
    }

    /// The bytes of tensor `name`, which must have type `dtype` and shape `shape`.
    fn take(&mut self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&'a [u8]> {
        let view = self
            .tensors
            .remove(name)
            .ok_or_else(|| file_error(format!("tensor {name:?} is missing")))?;
        if view.dtype() != dtype || view.shape() != shape {
            return invalid_file(format!(
                "tensor {name:?} is {:?} {:?}, expected {dtype:?} {shape:?}",
                view.dtype(),
                view.shape()
            ));
        }
        Ok(view.data())
    }

    /// The finite `f32` values of tensor `name` of shape `shape`; errors name `what`.
    fn take_f32s(&mut self, name: &str, shape: &[usize], what: &str) -> Result<Vec<f32>> {
        finite_f32s(self.take(name, Dtype::F32, shape)?, what)
    }

    /// The `count` values of `bits` bits bit-packed in the `U8` tensor `name`.
    fn take_packed(&mut self, name: &str, bits: u32, count: usize) -> Result<Vec<u32>> {
        let len = packed_len(count, bits).unwrap_or(usize::MAX);
        unpack(self.take(name, Dtype::U8, &[len])?, bits, count, name)
    }

    /// Pass-through tensor `name`, as stored.
    fn take_passthrough(&mut self, name: &str) -> Result<NamedTensor> {
        let view = self
            .tensors
            .remove(name)
            .ok_or_else(|| file_error(format!("pass-through tensor {name:?} is missing")))?;
        Ok(NamedTensor::from_raw(
            name.to_string(),
            view.dtype(),
            view.shape().to_vec(),
            view.data().to_vec(),
        ))
    }

    /// Refuses a tensor the metadata did not describe.
    fn finish(self) -> Result<()> {
        match self.tensors.keys().next() {
            Some(extra) => {
                invalid_file(format!("tensor {extra:?} is not described by the metadata"))
            }
            None => Ok(()),
        }
    }
}

fn read_codebook(
    c: usize,
    m: &CodebookMeta,
    scales: ScaleScheme,
    payload: &mut Payload<'_>,
) -> Result<KernelCodebook<f32>> {
    let what = format!("codebook {c}");
    let symmetry: Symmetry = parse_field(&what, &m.symmetry)?;
    // The codebook records whether its kernels were normalised; that must agree with the
    // network's scales.
    let scale_scheme = match (m.scale_mode.as_str(), scales) {
        (SCALE_MODE_L2, ScaleScheme::L2(_)) | (SCALE_MODE_NONE, ScaleScheme::None) => scales,
        (SCALE_MODE_L2 | SCALE_MODE_NONE, _) => {
            return invalid_file(format!(
                "{what}: scale mode {:?} with {scales} scales",
                m.scale_mode
            ))
        }
        (other, _) => {
            let parse = Error::Parse {
                what: "scale mode",
                input: other.to_string(),
                expected: "l2norm or none",
            };
            return Err(file_error(format!("{what}: {parse}")));
        }
    };
    let area = m.kernel[0].saturating_mul(m.kernel[1]);
    check_limit(&format!("{what}: kernel area"), area, MAX_KERNEL_AREA)?;
    let entries = m.k.saturating_mul(symmetry.transforms() as u64);
    check_limit(
        &format!("{what}: entries K·S"),
        entries,
        MAX_CODEBOOK_ENTRIES,
    )?;
    let shape = [m.k as usize, m.kernel[0] as usize, m.kernel[1] as usize];
    let values = payload.take_f32s(&format!("{CODEBOOK_PREFIX}{c}"), &shape, &what)?;
    let centroids = Array3::from_shape_vec(shape, values).map_err(|e| file_error(e.to_string()))?;
    Ok(KernelCodebook::from_centroids(centroids, symmetry)?.with_scale_scheme(scale_scheme))
}

fn read_layer(
    m: &LayerMeta,
    codebooks: &[KernelCodebook<f32>],
    precision: ScaleScheme,
    payload: &mut Payload<'_>,
) -> Result<CompressedLayer<f32>> {
    let name = &m.name;
    let [o, i, kh, kw] = m.shape;
    let kernels = o.saturating_mul(i);
    check_limit(
        &format!("layer {name:?}: kernels"),
        kernels,
        MAX_LAYER_KERNELS,
    )?;
    let area = kh.saturating_mul(kw);
    check_limit(
        &format!("layer {name:?}: kernel area"),
        area,
        MAX_KERNEL_AREA,
    )?;
    let geometry = read_geometry(m)?;
    let (o, i, kh, kw) = (o as usize, i as usize, kh as usize, kw as usize);
    let bias = if m.bias {
        let what = format!("{name}.bias");
        Some(Array1::from(payload.take_f32s(&what, &[o], &what)?))
    } else {
        None
    };
    match (m.kind.as_str(), m.codebook) {
        (KIND_DENSE, None) => {
            let what = format!("{name}.weight");
            let values = payload.take_f32s(&what, &[o, i, kh, kw], &what)?;
            let weight = Array4::from_shape_vec((o, i, kh, kw), values)
                .map_err(|e| file_error(e.to_string()))?;
            Ok(CompressedLayer::Dense {
                name: name.clone(),
                layer: Conv2d::new(weight, bias, geometry)?,
            })
        }
        (KIND_CLUSTERED, Some(c)) => {
            let cb = layer_codebook(m, c, codebooks, (kh, kw))?;
            let indices = read_indices(m, cb, (o, i), payload)?;
            let scales = read_scales(m, precision, (o, i), payload)?;
            let mut layer = ClusteredConv2d::new(indices, scales, bias, geometry)?;
            if let Some(mask) = read_mask(m, (o, i), payload)? {
                layer = layer.with_mask(mask)?;
            }
            if precision == ScaleScheme::L2(ScaleStorage::F16) {
                // Held as stored: the values are f16 already, so nothing is rounded.
                layer = layer.with_half_scales()?;
            }
            Ok(CompressedLayer::Clustered {
                name: name.clone(),
                codebook: c,
                layer: Box::new(layer),
            })
        }
        (kind, _) => invalid_file(format!(
            "layer {name:?}: kind {kind:?} with codebook {:?}",
            m.codebook
        )),
    }
}

/// Codebook `c` of a clustered layer, checked against the layer's kernel size and recorded
/// index width.
fn layer_codebook<'c>(
    m: &LayerMeta,
    c: usize,
    codebooks: &'c [KernelCodebook<f32>],
    (kh, kw): (usize, usize),
) -> Result<&'c KernelCodebook<f32>> {
    let name = &m.name;
    let cb = codebooks.get(c).ok_or_else(|| {
        file_error(format!(
            "layer {name:?} uses codebook {c}, the file has {}",
            codebooks.len()
        ))
    })?;
    if cb.kernel_size() != (kh, kw) {
        return invalid_file(format!(
            "layer {name:?} has {kh}×{kw} kernels, codebook {c} has {:?}",
            cb.kernel_size()
        ));
    }
    let bits = cb.packed_index_bits().max(1);
    if m.index_bits != bits {
        return invalid_file(format!(
            "layer {name:?} records {} index bits, codebook {c} needs {bits}",
            m.index_bits
        ));
    }
    Ok(cb)
}

/// A clustered layer's `(o, i)` indices, each below its codebook's number of entries.
fn read_indices(
    m: &LayerMeta,
    cb: &KernelCodebook<f32>,
    (o, i): (usize, usize),
    payload: &mut Payload<'_>,
) -> Result<Array2<u32>> {
    let bits = cb.packed_index_bits().max(1);
    let flat = payload.take_packed(&format!("{}.weight.indices", m.name), bits, o * i)?;
    let limit = cb.index_limit();
    if let Some(j) = flat.iter().position(|&v| v as usize >= limit) {
        return Err(Error::IndexOutOfRange {
            index: flat[j],
            out_channel: j / i,
            in_channel: j % i,
            limit,
        });
    }
    Array2::from_shape_vec((o, i), flat).map_err(|e| file_error(e.to_string()))
}

/// A clustered layer's `(o, i)` keep-mask, when the metadata records one.
fn read_mask(
    m: &LayerMeta,
    (o, i): (usize, usize),
    payload: &mut Payload<'_>,
) -> Result<Option<Array2<bool>>> {
    if !m.mask {
        return Ok(None);
    }
    let keep = payload.take_packed(&format!("{}.weight.mask", m.name), 1, o * i)?;
    let mask = Array2::from_shape_vec((o, i), keep.into_iter().map(|b| b == 1).collect())
        .map_err(|e| file_error(e.to_string()))?;
    Ok(Some(mask))
}

fn read_scales(
    m: &LayerMeta,
    precision: ScaleScheme,
    (o, i): (usize, usize),
    payload: &mut Payload<'_>,
) -> Result<Option<Array2<f32>>> {
    let name = &m.name;
    if m.scales != precision.has_scales() {
        return invalid_file(format!(
            "layer {name:?}: scales present = {}, but the scale precision is {precision}",
            m.scales
        ));
    }
    let what = format!("{name}.weight.scales");
    let Some(storage) = precision.storage() else {
        return Ok(None);
    };
    let values: Vec<f32> = match storage {
        ScaleStorage::F16 => payload
            .take(&what, Dtype::F16, &[o, i])?
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        ScaleStorage::F32 => payload
            .take(&what, Dtype::F32, &[o, i])?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        ScaleStorage::Fixed(fixed) => {
            let raw = payload.take_packed(&what, u32::from(fixed.get()), o * i)?;
            raw.into_iter().map(|q| fixed.decode(q) as f32).collect()
        }
    };
    let values = check_finite(values, &what)?;
    Ok(Some(
        Array2::from_shape_vec((o, i), values).map_err(|e| file_error(e.to_string()))?,
    ))
}

fn read_geometry(m: &LayerMeta) -> Result<ConvGeometry> {
    for v in m.stride.iter().chain(&m.padding).chain(&m.dilation) {
        check_limit(
            &format!("layer {:?}: stride, padding or dilation", m.name),
            *v,
            MAX_GEOMETRY_VALUE as u64,
        )?;
    }
    let [top, bottom, left, right] = m.padding.map(|v| v as usize);
    let geometry = ConvGeometry::default()
        .stride(m.stride[0] as usize, m.stride[1] as usize)
        .dilation(m.dilation[0] as usize, m.dilation[1] as usize)
        .padding_asymmetric(Padding {
            top,
            bottom,
            left,
            right,
        });
    geometry.validate()?;
    Ok(geometry)
}

/// See the module docs.
fn payload_sha256<'a>(
    model_json: &str,
    tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
) -> String {
    let mut sorted: Vec<_> = tensors.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    h.update(model_json.as_bytes());
    for (name, dtype, shape, bytes) in sorted {
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

fn f32_bytes<V: Borrow<f32>>(values: impl Iterator<Item = V>) -> Vec<u8> {
    values.flat_map(|v| v.borrow().to_le_bytes()).collect()
}

fn finite_f32s(bytes: &[u8], what: &str) -> Result<Vec<f32>> {
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    check_finite(values, what)
}

/// `values`, or an error naming the first NaN or infinity.
fn check_finite(values: Vec<f32>, what: &str) -> Result<Vec<f32>> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(j) => invalid_file(format!("{what}: element {j} is {} (non-finite)", values[j])),
        None => Ok(values),
    }
}

/// `text`, a field of the metadata, parsed by its type's `FromStr` (the one string form of
/// every enum the file records); a failure is an [`Error::InvalidModelFile`] naming `field`.
fn parse_field<T: FromStr<Err = Error>>(field: &str, text: &str) -> Result<T> {
    text.parse()
        .map_err(|e: Error| file_error(format!("{field}: {e}")))
}

pub(super) fn check_limit(what: &str, got: u64, limit: u64) -> Result<()> {
    if got > limit {
        return Err(Error::LimitExceeded {
            what: what.to_string(),
            limit,
            got,
        });
    }
    Ok(())
}

pub(super) fn file_error(what: String) -> Error {
    Error::InvalidModelFile { what }
}

pub(super) fn invalid_file<T>(what: String) -> Result<T> {
    Err(file_error(what))
}

fn invalid_model<T>(what: String) -> Result<T> {
    Err(Error::InvalidModel { what })
}
