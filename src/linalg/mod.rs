//! The private compute layer every convolution and k-means kernel sits on: GEMM, tiling of
//! activations, the tap-run and padding arithmetic, im2col, SIMD dispatch, and the element
//! types ([`Real`]) with their engine hooks.
//!
//! Nothing here knows about layers, codebooks or networks: `conv`, `clustered` and `kmeans`
//! import from this module and never from each other's internals (checked by
//! `tests/suite/layering.rs`).

mod direct;
mod engine;
mod gemm;
mod im2col;
mod scalar;
pub(crate) mod simd;
mod stencil;
mod taps;
mod tiles;
mod winograd;
mod zeros;

pub(crate) use direct::{backward_weight_direct, direct_fits, forward_direct};
pub use engine::Engine;
pub(crate) use gemm::{gemm, matrix_mut};
pub(crate) use im2col::{col2im_tile, forward_tile_positions, patch_matrix, tile_positions};
pub use scalar::Real;
pub(crate) use stencil::{
    correlate_add, correlate_kernel_grad, correlate_transpose_add, extract_patches,
};
pub(crate) use tiles::{add_bias, adjoint_weight, channel_sums, dims4, image, output_tiles};
pub(crate) use winograd::{
    adjoint_fits, backward_input_winograd, backward_weight_winograd, forward_winograd,
    winograd_pays, WinogradOperand, WinogradTile, WinogradWeight,
};
pub(crate) use zeros::{par_zeros, par_zeros_vec};
