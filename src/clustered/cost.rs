//! Work counts of a clustered layer and the cost model behind `ForwardStrategy::Auto`.

use super::ForwardStrategy;
use crate::geometry::ConvShape;

/// The arithmetic of one strategy, per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrategyWork {
    /// Multiply-accumulates of the centroid convolutions.
    pub conv_macs: u64,
    /// Scaled additions (gathers for `InputSide`, input sums for `OutputSide`).
    pub adds: u64,
}

/// The work of one clustered layer for one image of a given size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerCost {
    /// Dense convolution MACs at output resolution: `OH·OW·Cout·Cin·kh·kw`.
    pub dense_macs: u64,
    /// The paper's count (PAPER.md §4.2): `H·W·kh·kw·min(ΣU_j, ΣV_i)` at **input**
    /// resolution, additions ignored.
    pub paper_flops: u64,
    /// `ΣU_j`: distinct kernels per output channel, summed.
    pub sum_u: usize,
    /// `ΣV_i`: distinct kernels per input channel, summed.
    pub sum_v: usize,
    /// Conv-then-add: `ΣV_i·kh·kw·OH·OW` MACs, `Cout·Cin·OH·OW` adds.
    pub input_side: StrategyWork,
    /// Add-then-conv: `ΣU_j·kh·kw·OH·OW` MACs, `Cout·Cin·H·W` adds.
    pub output_side: StrategyWork,
    /// Patch elements copied by the input side's per-channel im2col: `Cin·kh·kw·OH·OW`.
    pub patch_copies: u64,
}

/// Calibrated single-thread costs, in nanoseconds per operation, measured with the
/// `clustered_conv` benchmark on the VGG-16 and ResNet-18 shapes (x86-64, f32):
/// the dense GEMM path, the input side's small GEMMs (inner dimension `kh·kw`) and its
/// scaled gather-adds, and the output side's direct stencil and input sums.
mod ns_per_op {
    pub const DENSE_MAC: f64 = 0.040;
    pub const INPUT_CONV_MAC: f64 = 0.100;
    pub const INPUT_ADD: f64 = 0.250;
    pub const PATCH_COPY: f64 = 0.500;
    pub const OUTPUT_CONV_MAC: f64 = 0.250;
    pub const OUTPUT_ADD: f64 = 0.250;
}

impl LayerCost {
    pub(crate) fn new(s: &ConvShape, sum_u: usize, sum_v: usize) -> Self {
        let area = (s.kh * s.kw) as u64;
        let out_pos = (s.oh * s.ow) as u64;
        let in_pos = (s.h * s.w) as u64;
        let pairs = (s.cout * s.cin) as u64;
        LayerCost {
            dense_macs: out_pos * pairs * area,
            paper_flops: in_pos * area * sum_u.min(sum_v) as u64,
            sum_u,
            sum_v,
            input_side: StrategyWork {
                conv_macs: sum_v as u64 * area * out_pos,
                adds: pairs * out_pos,
            },
            output_side: StrategyWork {
                conv_macs: sum_u as u64 * area * out_pos,
                adds: pairs * in_pos,
            },
            patch_copies: s.cin as u64 * area * out_pos,
        }
    }

    /// Estimated single-thread time of a strategy, from the calibrated per-operation costs
    /// (dense MAC 0.04 ns; input side: 0.10 ns per MAC, 0.25 ns per add, 0.5 ns per patch
    /// copy; output side: 0.25 ns per MAC and per add). `Auto` is the cheapest of the others.
    pub fn estimated_seconds(&self, strategy: ForwardStrategy) -> f64 {
        use ns_per_op::*;
        let ns = match strategy {
            ForwardStrategy::Dense => self.dense_macs as f64 * DENSE_MAC,
            ForwardStrategy::InputSide => {
                self.input_side.conv_macs as f64 * INPUT_CONV_MAC
                    + self.input_side.adds as f64 * INPUT_ADD
                    + self.patch_copies as f64 * PATCH_COPY
            }
            ForwardStrategy::OutputSide => {
                self.output_side.conv_macs as f64 * OUTPUT_CONV_MAC
                    + self.output_side.adds as f64 * OUTPUT_ADD
            }
            ForwardStrategy::Auto => return self.estimated_seconds(self.cheapest()),
        };
        ns * 1e-9
    }

    /// The strategy with the lowest estimated time (ties: Dense, then InputSide).
    pub fn cheapest(&self) -> ForwardStrategy {
        [
            ForwardStrategy::Dense,
            ForwardStrategy::InputSide,
            ForwardStrategy::OutputSide,
        ]
        .into_iter()
        .fold((ForwardStrategy::Dense, f64::INFINITY), |(best, t), s| {
            let ts = self.estimated_seconds(s);
            if ts < t {
                (s, ts)
            } else {
                (best, t)
            }
        })
        .0
    }
}
