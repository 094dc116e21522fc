//! Every integration test in one binary: each file here was its own test crate, and each
//! re-compiled the library's generic code (GEMM, Winograd, k-means) in release mode, which
//! made CI spend most of its time linking near-identical binaries. Run one group with a
//! filter, e.g. `cargo test --release --all-features --test suite -- hostile::`.

mod cli;
mod clustered;
mod clustered_winograd;
mod codebook;
mod common;
mod compress;
mod conv;
mod data;
mod distill;
mod format;
mod graph;
mod hostile;
mod image_data;
mod io;
mod kmeans;
mod layering;
mod nn;
mod nn_fused;
mod onnx;
mod pooling;
mod tic;
mod training;
mod weighted_kmeans;
mod winograd;
