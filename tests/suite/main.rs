//! Every integration test in one binary: each file here was its own test crate, and each
//! re-compiled the library's generic code (GEMM, Winograd, k-means) in release mode, which
//! made CI spend most of its time linking near-identical binaries. Run one group with a
//! filter, e.g. `cargo test --release --all-features --test suite -- onnx::`. The hostile-input
//! tests stay a binary of their own (`tests/hostile.rs`): CI also builds them with overflow
//! checks, and building the whole suite for that took minutes.

mod cli;
mod cli_network;
mod clustered;
mod clustered_winograd;
mod codebook;
mod common;
mod compress;
mod conv;
mod data;
mod direct;
mod distill;
mod format;
mod graph;
mod image_data;
mod io;
mod kmeans;
mod layering;
mod network_file;
mod nn;
mod nn_fused;
mod onnx;
mod pooling;
mod tic;
mod training;
mod weighted_kmeans;
mod winograd;
