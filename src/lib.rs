#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod clustered;
mod codebook;
mod compress;
mod conv;
#[cfg(feature = "data")]
pub mod data;
mod error;
mod geometry;
#[cfg(feature = "safetensors")]
pub mod io;
mod kmeans;
mod linalg;
pub mod nn;

pub use clustered::{
    BackwardRoute, ClusteredConv2d, ClusteredGrads, ForwardStrategy, Indices, LayerCost,
    LayerMemory, Scales, StrategyWork,
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
pub use conv::{Conv2d, Conv2dGrads, ConvAlgorithm};
pub use error::{Error, Result};
pub use geometry::{ConvGeometry, Padding, MAX_GEOMETRY_VALUE};
pub use kmeans::{
    Convergence, Init, IterationStats, KMeans, KMeansFit, KMeansParams, KMeansProgress,
    ValidKMeansParams,
};
pub use linalg::Real;
