#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod clustered;
mod codebook;
mod compress;
mod conv;
mod data;
mod error;
mod geometry;
#[cfg(feature = "safetensors")]
pub mod io;
mod kmeans;
pub mod nn;
mod scalar;
mod simd;

pub use clustered::{
    ClusteredConv2d, ClusteredGrads, ForwardStrategy, LayerCost, LayerMemory, StrategyWork,
};
pub use codebook::{
    compression_ratio, CodebookFit, CodebookFitter, CodebookParams, Codebooks, FixedBits,
    KernelAssignment, KernelCodebook, ScaleScheme, ScaleStorage, Symmetry, Usage,
    ValidCodebookParams,
};
pub use compress::{
    compress, CodebookReport, CodebookScope, CompressProgress, CompressedLayer, CompressedNetwork,
    CompressionConfig, CompressionReport, Compressor, ConvLayer, LayerGroup, LayerReport,
    LayerShape, ReportBuilder,
};
pub use conv::{Conv2d, Conv2dGrads};
pub use data::{
    read_idx, read_idx_file, DataSource, FashionMnist, Idx, LabelledImages, FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN_STD, MAX_IDX_BYTES,
};
pub use error::{Error, Result};
pub use geometry::{ConvGeometry, Padding};
pub use kmeans::{
    Convergence, Init, IterationStats, KMeans, KMeansFit, KMeansParams, KMeansProgress,
    ValidKMeansParams,
};
pub use scalar::Real;
