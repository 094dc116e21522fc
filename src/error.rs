//! The crate's single error type.

use thiserror::Error;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything a caller can get wrong, with the offending values.
///
/// Every variant names what was wrong and what was expected, so a message such as
/// `stride must be >= 1, got 0 (height)` can be acted on without reading the source.
///
/// Not `Clone` nor `PartialEq`: the I/O variants keep the [`std::io::Error`] that caused them
/// (see [`std::error::Error::source`]). Match on variants with [`matches!`] instead.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A geometry parameter (stride, dilation) is out of its valid range.
    #[error("{what} must be >= 1, got {value} ({axis})")]
    InvalidGeometry {
        /// Which parameter (`"stride"`, `"dilation"`).
        what: &'static str,
        /// Which axis (`"height"` or `"width"`).
        axis: &'static str,
        /// The rejected value.
        value: usize,
    },
    /// A stride, padding or dilation above [`crate::MAX_GEOMETRY_VALUE`].
    #[error("{what} ({axis}) is {value}, above the largest accepted value {max}")]
    GeometryTooLarge {
        /// Which parameter (`"stride"`, `"padding"`, `"dilation"`).
        what: &'static str,
        /// Which axis or side (`"height"`, `"width"`, `"top"`, …).
        axis: &'static str,
        /// The rejected value.
        value: usize,
        /// The limit.
        max: usize,
    },
    /// A tensor has a zero-sized dimension where data is required.
    #[error("{what} has a zero-sized dimension: shape {shape:?}")]
    ZeroSize {
        /// Which tensor.
        what: &'static str,
        /// Its full shape.
        shape: Vec<usize>,
    },
    /// The (dilated) kernel does not fit in the padded input.
    #[error(
        "kernel extent {kernel_extent} is larger than the padded input {padded_input} ({axis})"
    )]
    KernelTooLarge {
        /// Which axis (`"height"` or `"width"`).
        axis: &'static str,
        /// `dilation·(k − 1) + 1`.
        kernel_extent: usize,
        /// `input + padding`.
        padded_input: usize,
    },
    /// Shape arithmetic overflowed `usize`.
    #[error("shape arithmetic overflowed while computing {what}")]
    Overflow {
        /// What was being computed.
        what: &'static str,
    },
    /// Two shapes that must agree do not.
    #[error("{what}: expected shape {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// What was being checked.
        what: &'static str,
        /// The expected shape (or the expected leading dimensions).
        expected: Vec<usize>,
        /// The shape that was passed.
        got: Vec<usize>,
    },
    /// A NaN or infinite value where finite data is required.
    #[error("{what} contains a non-finite value at row {index}")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Row (or flat element) index of the first non-finite value.
        index: usize,
    },
    /// More clusters were requested than there are points to cluster.
    #[error("cannot form k = {k} clusters from {n} points")]
    TooManyClusters {
        /// Requested number of clusters.
        k: usize,
        /// Number of points available.
        n: usize,
    },
    /// A numeric parameter is outside its valid range.
    #[error("invalid parameter {name} = {value}: expected {expected}")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// The rejected value (as a float, for display).
        value: f64,
        /// The valid range, in words.
        expected: &'static str,
    },
    /// A stored kernel index is not below the number of codebook entries.
    #[error("index {index} at (out {out_channel}, in {in_channel}) is out of range: the codebook has {limit} entries")]
    IndexOutOfRange {
        /// Output channel of the offending kernel.
        out_channel: usize,
        /// Input channel of the offending kernel.
        in_channel: usize,
        /// The stored index.
        index: u32,
        /// Number of valid indices (`K·S`).
        limit: usize,
    },
    /// A weight tensor's kernel size differs from the codebook's.
    #[error("kernel size mismatch in tensor {tensor}: expected {expected:?}, got {got:?}")]
    KernelSizeMismatch {
        /// Position of the tensor in the list passed.
        tensor: usize,
        /// Codebook kernel size `(kh, kw)`.
        expected: (usize, usize),
        /// The tensor's kernel size.
        got: (usize, usize),
    },
    /// The requested feature is not available yet.
    #[error("{what} is not supported: {reason}")]
    Unsupported {
        /// The feature.
        what: &'static str,
        /// Why, and what to use instead.
        reason: &'static str,
    },
    /// A codebook group specification (`"0-0=64,1-16=256"`) could not be parsed.
    #[error("invalid codebook group {fragment:?}: expected {expected}")]
    InvalidGroupSpec {
        /// The offending part of the specification.
        fragment: String,
        /// What was expected there.
        expected: &'static str,
    },
    /// Codebook groups do not cover every clustered layer exactly once.
    #[error("codebook groups {problem} clustered layer {layer} (there are {layers})")]
    GroupCoverage {
        /// `"do not cover"`, `"cover twice"` or `"name a non-existent"`.
        problem: &'static str,
        /// Ordinal of the layer among the clustered layers.
        layer: usize,
        /// Number of clustered layers.
        layers: usize,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong, as the operating system reported it.
        #[source]
        source: std::io::Error,
    },
    /// A safetensors file is malformed or holds something other than what was asked.
    #[error("invalid safetensors data: {what}")]
    InvalidSafetensors {
        /// What is wrong, with the tensor name where there is one.
        what: String,
    },
    /// An IDX file (the MNIST format) is malformed.
    #[error("invalid IDX data: {what}: expected {expected}, got {got}")]
    InvalidIdx {
        /// Which part is wrong.
        what: &'static str,
        /// The expected value (or bound).
        expected: u64,
        /// The value found.
        got: u64,
    },
    /// A row (image) index beyond a data set.
    #[error("row {row} is beyond the data set's {len} rows")]
    RowOutOfRange {
        /// The index asked for.
        row: usize,
        /// Number of rows.
        len: usize,
    },
    /// A gzipped file whose stream is corrupt or truncated.
    #[error("corrupt or truncated gzip stream: {source}")]
    CorruptGzip {
        /// What the decoder reported.
        #[source]
        source: std::io::Error,
    },
    /// An image file could not be decoded (corrupt, truncated, or not the format its name or
    /// its first bytes announce).
    #[error("cannot decode image {path}: {reason}")]
    ImageDecode {
        /// The file.
        path: std::path::PathBuf,
        /// What the decoder reported.
        reason: String,
    },
    /// An image whose size differs from the data set's (the first image's): images are never
    /// resized silently.
    #[error("image {path} is {got_width}x{got_height} pixels (width x height) but {reference} is {width}x{height}: all images of a data set must have one size; resize them beforehand")]
    ImageSizeMismatch {
        /// The offending file.
        path: std::path::PathBuf,
        /// The file that set the size (the first one, in the data set's order).
        reference: std::path::PathBuf,
        /// The data set's width.
        width: u32,
        /// The data set's height.
        height: u32,
        /// The offending image's width.
        got_width: u32,
        /// The offending image's height.
        got_height: u32,
    },
    /// An image-folder data set (`root/<class>/<image>`) that cannot be read as one.
    #[error("invalid image folder {root}: {what}")]
    InvalidImageFolder {
        /// The folder passed.
        root: std::path::PathBuf,
        /// What is wrong, naming the directory or file.
        what: String,
    },
    /// A `.npy` file that is malformed or does not hold what was asked for.
    #[error("invalid .npy file {path}: {what}")]
    InvalidNpy {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, with the shape or data type found and the one expected.
        what: String,
    },
    /// A normalisation (per-channel mean and standard deviation) that cannot be applied.
    #[error("invalid normalisation: {what}")]
    InvalidNormalization {
        /// What is wrong, naming the channel and the value.
        what: String,
    },
    /// A class label that is not below the number of classes.
    #[error("label {label} of row {row} is out of range: there are {classes} classes")]
    LabelOutOfRange {
        /// Row (image) index.
        row: usize,
        /// The label.
        label: usize,
        /// Number of classes.
        classes: usize,
    },
    /// No data set was found in any of the places searched.
    #[error("Fashion-MNIST not found; looked in {tried:?}")]
    DataNotFound {
        /// Every directory tried, in order.
        tried: Vec<std::path::PathBuf>,
    },
    /// An input collection is empty.
    #[error("{what} is empty")]
    Empty {
        /// Which input.
        what: &'static str,
    },
    /// A textual option (e.g. a scale precision or a symmetry name) could not be parsed.
    #[error("invalid {what} {input:?}: expected {expected}")]
    Parse {
        /// What was being parsed.
        what: &'static str,
        /// The text given.
        input: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// A file could not be written (nothing was left at the destination).
    #[error("cannot write {path}: {source}")]
    Write {
        /// The destination.
        path: std::path::PathBuf,
        /// What went wrong, as the operating system (or the encoder) reported it.
        #[source]
        source: std::io::Error,
    },
    /// A compressed-model file is malformed: it parses as safetensors but its metadata or
    /// tensors are not a valid compressed model.
    #[error("invalid compressed model file: {what}")]
    InvalidModelFile {
        /// What is wrong, with the layer or tensor name where there is one.
        what: String,
    },
    /// A safetensors file that is not a compressed-model file (its `__metadata__.format` is
    /// not `clustered-conv`): typically a plain `state_dict`, which
    /// [`crate::io::read_safetensors`] reads and `compress` turns into a compressed model.
    #[error("not a compressed model file: __metadata__.format is {found:?}, expected \"clustered-conv\" (a plain safetensors state_dict must be compressed first)")]
    NotCompressedModel {
        /// The `format` entry found, if any.
        found: Option<String>,
    },
    /// A compressed-model file's payload does not match its recorded checksum (the file was
    /// damaged after it was written).
    #[error(
        "compressed model file is corrupt: payload SHA-256 is {got}, the header records {expected}"
    )]
    ChecksumMismatch {
        /// The checksum recorded in the file.
        expected: String,
        /// The checksum of the payload as read.
        got: String,
    },
    /// A compressed-model file written by a newer format version.
    #[error("compressed model format version {found} is not supported (this build reads versions 1 to {supported}); upgrade clustered-conv")]
    UnsupportedVersion {
        /// The version found in the file.
        found: String,
        /// The newest version this build reads.
        supported: u32,
    },
    /// A size limit was exceeded; checked before anything of that size is allocated.
    #[error("{what} is {got}, above the limit of {limit}")]
    LimitExceeded {
        /// What was measured.
        what: String,
        /// The limit.
        limit: u64,
        /// The value found.
        got: u64,
    },
    /// A scale of a clustered layer is not representable at the network's scale precision, so
    /// the model cannot be saved exactly; round the scales first
    /// ([`crate::CompressedNetwork::round_scales`], typically after fine-tuning).
    #[error("cannot save the model: layer {layer:?}: scale [{out_channel}, {in_channel}] = {value} is not representable as {precision}; call CompressedNetwork::round_scales after fine-tuning")]
    UnroundedScale {
        /// The layer's name.
        layer: String,
        /// Output channel of the scale.
        out_channel: usize,
        /// Input channel of the scale.
        in_channel: usize,
        /// The scale.
        value: f32,
        /// The network's scale precision, as written in the file (`f16`, `fixed8`, …).
        precision: String,
    },
    /// Two tensors of a model to be saved have the same name (a layer name collides with a
    /// pass-through tensor or another layer); rename one of them.
    #[error("cannot save the model: two tensors are named {name:?} (a layer name collides with a pass-through tensor or another layer)")]
    DuplicateTensorName {
        /// The name used twice.
        name: String,
    },
    /// A model cannot be saved as it is.
    #[error("cannot save the model: {what}")]
    InvalidModel {
        /// What is wrong and how to fix it.
        what: String,
    },
    /// A layer refers to a codebook the network does not have.
    #[error("codebook {codebook} does not exist: there are {codebooks} codebooks")]
    CodebookOutOfRange {
        /// The codebook id.
        codebook: usize,
        /// Number of codebooks.
        codebooks: usize,
    },
    /// A network graph that cannot run: a layer reading a value computed after it, the wrong
    /// number of inputs, a layer whose output nothing reads, a wiring for other layers.
    #[error("invalid network graph: {what}")]
    InvalidGraph {
        /// What is wrong.
        what: String,
    },
    /// A file that is not a usable ONNX model: unreadable protobuf, no graph, other than one
    /// input and one output, a cycle, a tensor produced twice.
    #[error("invalid ONNX model: {what}")]
    InvalidOnnx {
        /// What is wrong.
        what: String,
    },
    /// An ONNX node that cannot be imported: an unsupported operator or attribute, or weights
    /// and shapes that do not fit.
    #[error("ONNX node {node:?} ({op}): {what}")]
    OnnxNode {
        /// The node's name.
        node: String,
        /// Its operator.
        op: String,
        /// What is wrong.
        what: String,
    },
    /// A layer index beyond the network's layers.
    #[error("layer {layer} does not exist: there are {layers} layers")]
    LayerOutOfRange {
        /// The layer index.
        layer: usize,
        /// Number of layers.
        layers: usize,
    },
    /// Gradients, a tape or other per-layer data made for a different network.
    #[error("{what} does not match layer {layer}: the layer is {expected}, got {got}")]
    LayerMismatch {
        /// What was given (e.g. "gradients").
        what: &'static str,
        /// The layer index.
        layer: usize,
        /// The kind of the network's layer.
        expected: &'static str,
        /// What was found for it.
        got: &'static str,
    },
    /// Layers that share one network store their scales differently.
    #[error("codebook {codebook} has scale scheme {got}, the network stores {expected} scales")]
    ScaleSchemeMismatch {
        /// The codebook id.
        codebook: usize,
        /// The network's scheme (string form).
        expected: String,
        /// The codebook's scheme (string form).
        got: String,
    },
    /// A keep-dense pattern ([`CompressionConfig::keep_dense`](crate::CompressionConfig::keep_dense))
    /// matches none of the layers.
    #[error("keep-dense pattern {pattern:?} matches no layer; the layers are {layers:?}")]
    KeepDenseUnmatched {
        /// The pattern.
        pattern: String,
        /// The layers' names.
        layers: Vec<String>,
    },
}
