//! Work counts of a clustered layer and the cost model behind `ForwardStrategy::Auto`.

use super::ForwardStrategy;
use crate::geometry::ConvShape;
use crate::linalg::winograd_pays;

/// The arithmetic of one strategy, per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrategyWork {
    /// Multiply-accumulates of the centroid convolutions.
    pub conv_macs: u64,
    /// Scaled additions (gathers for `InputSide`, input sums for `OutputSide`).
    pub adds: u64,
}

/// The work of one clustered layer per image of a given size, and the cost model that picks
/// the strategy of `ForwardStrategy::Auto`.
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
    /// Elements of the dense weight, `Cout·Cin·kh·kw` (rebuilt once per call by the dense
    /// fallback).
    pub weight_elements: u64,
    /// Images per call assumed by [`LayerCost::estimated_seconds`] (1 from
    /// `ClusteredConv2d::cost`; the batch size inside `forward`).
    pub batch: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output positions per image, `OH·OW`.
    pub out_positions: u64,
    /// Work factor of the input side's tiles padded to whole vectors (≥ 1).
    pub padding: f64,
    /// Winograd F(4×4, 3×3), when the call allows it (3×3, stride 1, dilation 1):
    /// `36·T·Cout·Cin` GEMM MACs over the `T = ⌈OH/4⌉·⌈OW/4⌉` tiles, and `36·T·(Cin + Cout)`
    /// transformed values (input and output transforms) as adds.
    pub winograd: Option<StrategyWork>,
    /// Whether the call has enough 4×4 tiles for its channel count for Winograd to pay at
    /// all: the dense `Conv2d`'s `ConvAlgorithm::Auto` rule, (tiles per image) × min(Cin, Cout)
    /// ≥ 2048 with at least 16 channels each way, or at least 128 channels each way on a map
    /// of any size, and in both cases at least 8 tiles in the call (batch × tiles per image).
    /// `Auto` runs Winograd only where it holds.
    pub winograd_tiles_pay: bool,
    /// Whether the Winograd strategy builds its whole operand (`36·Cout·Cin` values) once per
    /// call, which it does up to 4 MiB in `f32` (about 170 × 170 channels); wider layers
    /// rebuild 32–64-row operand blocks for every block of at most 64 tiles.
    pub winograd_whole_operand: bool,
}

/// Single-thread costs in nanoseconds per operation, fitted by least squares to the
/// `strategy_table` example's measurements (VGG-16 and ResNet-18 3×3 shapes, K = 16, 64, 256,
/// random-normal and skewed weights, batch 8, f32, one thread; x86-64 with AVX-512, the dense
/// GEMM on AVX2 + FMA). Only their ratios matter.
mod ns_per_op {
    /// Dense GEMM multiply-accumulate (fit: 0.036 on the former matrixmultiply GEMM; divided
    /// by 1.75, the measured speed-up of faer's GEMM on the same shapes; efficiency varies
    /// ±30 % with shape).
    pub const DENSE_MAC: f64 = 0.036 / 1.75;
    /// Rebuilding one dense weight element for the dense fallback (gather and scale into a
    /// reused, cache-sized buffer).
    pub const DENSE_RECONSTRUCT: f64 = 0.3;
    /// Input side: one multiply-accumulate of a centroid response (fit: 0.037).
    pub const INPUT_CONV_MAC: f64 = 0.037;
    /// Input side: one scaled gather-add (fit: 0.10).
    pub const INPUT_ADD: f64 = 0.10;
    /// Input side: one patch element copied (not separable from the adds in the fit).
    pub const PATCH_COPY: f64 = 0.02;
    /// Output side: one multiply-accumulate of the direct stencil (fit: 0.22).
    pub const OUTPUT_CONV_MAC: f64 = 0.22;
    /// Output side: one scaled add of the input sums (fit: 0.52).
    pub const OUTPUT_ADD: f64 = 0.52;
}

/// The input side's time relative to dense, fitted by least squares to 192 measured pairs
/// (`scripts/fit_auto_model.py`: the `strategy_table` example on VGG-16/ResNet-18 shapes,
/// K = 16/64/256, normal and skewed weights, batch 1 and 8, 1 and 2 threads):
/// `ratio ≈ A·(ΣV/(Cout·Cin))·w + B·w + C/Cout`, `w` the input side's padding factor and
/// `Cout` clamped to the fitted 64–512. The fit's r.m.s. relative error is 20 %, much of it
/// run-to-run noise of the measurements.
mod ratio_fit {
    pub const A: f64 = 1.199;
    pub const B: f64 = 0.506;
    pub const C: f64 = -12.52;
    pub const COUT_RANGE: (f64, f64) = (64.0, 512.0);
}

/// Winograd's time relative to the clustered dense route (weight rebuild and depth-blocked
/// im2col, what `Auto` weighs it against): `ratio ≈ φ·(D + E·16·b + F·Cin/512)`, with `T` the
/// 4×4 tiles per image, `N` the batch, `φ = 16·T/(OH·OW)` the tiles' waste factor and `b` the
/// operand builds per tile: `1/(N·T)` when the whole operand fits 4 MiB and is built once per
/// call, else `max(1/(N·T), 1/64)`, once per block of at most 64 tiles. The terms stand for
/// the 36 GEMMs with the transforms, the operand builds, and the channel depth.
///
/// The coefficients minimise the time of `Auto`'s own picks, not the ratio's squared error
/// (`scripts/fit_auto_model.py --from A,B`: a grid search that replays `Auto` on measured
/// rows of the `strategy_table` example; VGG-16/ResNet-18 shapes, skewed and normal weights,
/// K = 16, 64 and 256, batch 8 and 1, 1 and 2 threads, 192 rows per set). Least squares on
/// the ratio fits it to 31 % r.m.s. at best, and its errors fell where they flip picks. Two
/// measurement sets of this 2-vCPU Xeon, each searched and then replayed on the other: the
/// same coefficients won on both; on the other set `Auto` averaged 1.033–1.038× the fastest
/// strategy's time and ran one more than 1.10× on 21–22 of 192 rows, where the previous
/// least-squares coefficients (0.710, 0.091, −0.173, with the narrower tile rule) averaged
/// 1.083–1.085× with 44–46 such rows.
mod winograd_fit {
    pub const D: f64 = 0.55;
    pub const E: f64 = 0.5;
    pub const F: f64 = -0.2;
}

/// `Auto` runs a clustered strategy only when its predicted time is below this fraction of
/// dense. On the 192 measured pairs of the fit, `Auto` with this threshold averaged 0.844 of
/// the dense time against 0.826 for an oracle that always picks the faster strategy; its worst
/// pick was 1.34× the faster one's time (0.8 gave 0.857 and 1.83×).
const CLUSTERED_THRESHOLD: f64 = 0.9;

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
            weight_elements: pairs * area,
            batch: s.batch,
            in_channels: s.cin,
            out_positions: out_pos,
            padding: super::forward::input_side_padding(s.oh, s.ow),
            winograd: super::winograd::obstacle((s.kh, s.kw), s)
                .is_none()
                .then(|| {
                    let tiles = (s.oh.div_ceil(4) * s.ow.div_ceil(4)) as u64;
                    StrategyWork {
                        conv_macs: 36 * tiles * pairs,
                        adds: 36 * tiles * (s.cin + s.cout) as u64,
                    }
                }),
            winograd_tiles_pay: winograd_pays(s),
            winograd_whole_operand: super::winograd::builds_whole_operand::<f32>(s.cout, s.cin),
        }
    }

    /// Estimated single-thread time of a strategy for `batch` images, from the calibrated
    /// per-operation costs: dense 0.036/1.75 ns per MAC plus 0.3 ns per rebuilt weight element;
    /// input side 0.037 ns per response MAC, 0.10 ns per gather-add, 0.02 ns per patch copy;
    /// output side 0.22 ns per MAC and 0.52 ns per add; Winograd as dense times
    /// [`LayerCost::predicted_winograd_ratio`] (infinite when the call cannot run it).
    pub fn estimated_seconds(&self, strategy: ForwardStrategy) -> f64 {
        use ns_per_op::*;
        let images = self.batch as f64;
        let ns = match strategy {
            ForwardStrategy::Dense => {
                images * self.dense_macs as f64 * DENSE_MAC
                    + self.weight_elements as f64 * DENSE_RECONSTRUCT
            }
            ForwardStrategy::InputSide => {
                images
                    * (self.input_side.conv_macs as f64 * INPUT_CONV_MAC
                        + self.input_side.adds as f64 * INPUT_ADD
                        + self.patch_copies as f64 * PATCH_COPY)
            }
            ForwardStrategy::OutputSide => {
                images
                    * (self.output_side.conv_macs as f64 * OUTPUT_CONV_MAC
                        + self.output_side.adds as f64 * OUTPUT_ADD)
            }
            // The ratio is fitted against the dense route, weight rebuild included.
            ForwardStrategy::Winograd => match self.predicted_winograd_ratio() {
                Some(ratio) => ratio * self.estimated_seconds(ForwardStrategy::Dense) * 1e9,
                None => return f64::INFINITY,
            },
            ForwardStrategy::Auto => return self.estimated_seconds(self.cheapest()),
        };
        ns * 1e-9
    }

    /// Predicted time of the input side relative to dense (the fitted model above).
    pub fn predicted_input_side_ratio(&self) -> f64 {
        use ratio_fit::*;
        // Cout·Cin kernels: the input side does one gather-add per kernel and position.
        let kernels = self.input_side.adds as f64 / self.out_positions as f64;
        let sharing = self.sum_v as f64 / kernels;
        let cout = (kernels / self.in_channels as f64).clamp(COUT_RANGE.0, COUT_RANGE.1);
        A * sharing * self.padding + B * self.padding + C / cout
    }

    /// Predicted time of [`ForwardStrategy::Winograd`] relative to dense (the fitted model
    /// above), or `None` when the call cannot run Winograd.
    pub fn predicted_winograd_ratio(&self) -> Option<f64> {
        use winograd_fit::*;
        let w = self.winograd?;
        let pairs = self.input_side.adds / self.out_positions;
        let tiles = (w.conv_macs / (36 * pairs)) as f64;
        let waste = 16.0 * tiles / self.out_positions as f64;
        // The operand is built once per call (whole), or once per block of at most 64 tiles.
        let per_call = 1.0 / (self.batch as f64 * tiles);
        let per_tile = if self.winograd_whole_operand {
            per_call
        } else {
            per_call.max(1.0 / 64.0)
        };
        let cin = self.in_channels as f64;
        Some(waste * (D + E * 16.0 * per_tile + F * cin / 512.0))
    }

    /// The strategy `Auto` runs, by predicted time relative to dense (dense including the
    /// rebuild of its weight). A sharing strategy is eligible when the input side's
    /// prediction is below 90 % of dense (the output side instead of the input side when its
    /// operation-count estimate is lower: layers with many more input than output channels).
    /// Winograd runs when the call can run it, the map has enough tiles
    /// ([`LayerCost::winograd_tiles_pay`]), its prediction is below dense and, if a sharing
    /// strategy is eligible, below that strategy's prediction; else the eligible sharing
    /// strategy, else dense.
    pub fn cheapest(&self) -> ForwardStrategy {
        let input = self.estimated_seconds(ForwardStrategy::InputSide);
        let output = self.estimated_seconds(ForwardStrategy::OutputSide);
        let sharing = self.predicted_input_side_ratio() * (output / input).min(1.0);
        // The dense fallback first rebuilds the weight, once per call.
        let rebuild = self.weight_elements as f64 * ns_per_op::DENSE_RECONSTRUCT
            / (self.batch as f64 * self.dense_macs as f64 * ns_per_op::DENSE_MAC);
        let dense = 1.0 + rebuild;
        let sharing_eligible = sharing < CLUSTERED_THRESHOLD * dense;
        let winograd = self
            .predicted_winograd_ratio()
            .filter(|_| self.winograd_tiles_pay)
            .map_or(f64::INFINITY, |ratio| ratio * dense);
        if winograd < dense && !(sharing_eligible && sharing <= winograd) {
            ForwardStrategy::Winograd
        } else if !sharing_eligible {
            ForwardStrategy::Dense
        } else if output < input {
            ForwardStrategy::OutputSide
        } else {
            ForwardStrategy::InputSide
        }
    }
}
