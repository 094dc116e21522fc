//! [`ForwardStrategy::Winograd`](super::ForwardStrategy::Winograd): Winograd F(4×4, 3×3) on a
//! clustered layer, with every GEMM operand block built from the layer's indices and scales
//! and the *transformed codebook*.
//!
//! The transformed kernel of kernel `(o, i)` is `G (s_oi · Φ_t(μ_c)) Gᵀ = s_oi · Û_v`, with
//! `v = c + K·t` its stored index and `Û_v = G Φ_t(μ_c) Gᵀ` (36 values). [`TransformedCodebook`]
//! holds `Û` for every stored index, position by position (`[ξ][v]`: one position's table is
//! `K·S` values, a few KiB that stay in L1 while a block is filled). The operand
//! ([`ClusteredOperand`]) fills `U_ξ` with `s_oi · Û_ξ[l(o, i)]`: whole, once per call, when
//! all 36 positions fit 4 MiB (layers up to about 170 × 170 channels in `f32`; filled block by
//! block, every block of tiles refilled it, which cost 7–30 % over a dense layer's stored
//! transformed weight), else in `rows × Cin` blocks as the GEMMs ask for them. The dense
//! weight never exists, and the transformed weight (4× the dense one) only within a call and
//! within 4 MiB.
//!
//! `Û` is cached with the codebook (`KernelCodebook::winograd_table`): computed on the first
//! Winograd call in `f64` and rounded once to `F`, shared by every layer of the codebook, and
//! emptied by `set_centroids`, so it is never stale when fine-tuning moves the centroids.
//! Computing it took (f32, 2-core EPYC) about 0.12 µs per stored index at K·S ≤ 256 and
//! 0.28 µs at K·S = 2048: 0.5–3 % of a batch-8 forward with TIC8 at K = 256, when it was
//! computed per call.
//!
//! The input gradient (stride 1, padding ≤ 2) is the Winograd forward of the output gradient
//! with the adjoint operand: kernel `(i, o)` is kernel `(o, i)` rotated by 180°, so the
//! adjoint reads `Û` of the rotated decoded kernels with transposed `(i, o)` indexing.

use std::ops::Range;

use ndarray::{Array4, ArrayView1, ArrayView2, ArrayView4};

use super::indices::{IndexStore, NarrowIter};
use super::scales::ScaleStore;
use crate::codebook::KernelCodebook;
use crate::geometry::ConvShape;
use crate::linalg::simd::vectorised;
use crate::linalg::{
    backward_input_winograd, forward_winograd, par_zeros_vec, Real, WinogradOperand, WinogradTile,
    WinogradWeight,
};
use rayon::prelude::*;

/// The Winograd variant the clustered strategy runs: the one of the codebook's cached tables.
const TILE: WinogradTile = crate::codebook::WINOGRAD_TILE;
/// Budget of one operand block (`rows × Cin` values), in bytes.
const OPERAND_BYTES: usize = 64 << 10;
/// Fewest and most rows of an operand block.
const OPERAND_ROWS: (usize, usize) = (32, 64);
/// Largest whole operand (`36·Cout·Cin` values) a call builds once for all its blocks of
/// tiles. Built block by block instead, every block of at least 64 tiles refills all of it:
/// one gather per 64 multiply-adds, and the GEMMs run on 32–64-row slices. Up to 4 MiB (about
/// 170 × 170 channels in `f32`) the call holds it whole, like a dense layer's stored
/// transformed weight, and frees it on return.
const WHOLE_OPERAND_BYTES: usize = 4 << 20;

/// Why a call of this shape cannot run Winograd F(4×4, 3×3), or `None` when it can.
pub(crate) fn obstacle(kernel: (usize, usize), s: &ConvShape) -> Option<&'static str> {
    if kernel != (3, 3) {
        Some("Winograd F(4×4, 3×3) needs a 3×3 codebook; use InputSide, OutputSide, Dense or Auto")
    } else if s.stride != (1, 1) {
        Some("Winograd F(4×4, 3×3) needs stride 1; use InputSide, OutputSide, Dense or Auto")
    } else if s.dilation != (1, 1) {
        Some("Winograd F(4×4, 3×3) needs dilation 1; use InputSide, OutputSide, Dense or Auto")
    } else {
        None
    }
}

/// Rows per operand block for `cols` columns: about [`OPERAND_BYTES`], 32 to 64 rows.
pub(crate) fn operand_rows<F>(cols: usize) -> usize {
    (OPERAND_BYTES / (cols.max(1) * std::mem::size_of::<F>())).clamp(OPERAND_ROWS.0, OPERAND_ROWS.1)
}

/// Bytes of the whole operand of a `cout × cin` operand: 36 positions of `cout × cin` values.
fn whole_operand_bytes<F>(cout: usize, cin: usize) -> usize {
    TILE.positions() * cout * cin * std::mem::size_of::<F>()
}

/// Whether a call builds the whole `cout × cin` operand once ([`WHOLE_OPERAND_BYTES`]).
pub(crate) fn builds_whole_operand<F>(cout: usize, cin: usize) -> bool {
    whole_operand_bytes::<F>(cout, cin) <= WHOLE_OPERAND_BYTES
}

/// Bytes of the operand a call of a `cout × cin` operand builds: the whole operand when it
/// fits [`WHOLE_OPERAND_BYTES`] (once per call), else one block per worker.
pub(crate) fn operand_bytes<F>(cout: usize, cin: usize) -> usize {
    if builds_whole_operand::<F>(cout, cin) {
        whole_operand_bytes::<F>(cout, cin)
    } else {
        operand_rows::<F>(cin) * cin * std::mem::size_of::<F>()
    }
}

/// Bytes of a transformed codebook of `limit` stored indices (`K·S`) of `F`.
pub(crate) fn codebook_bytes<F>(limit: usize) -> usize {
    TILE.positions() * limit * std::mem::size_of::<F>()
}

/// `Û_v = G k_v Gᵀ` of every decoded kernel `k_v` of a 3×3 codebook (or of its 180° rotation,
/// for the adjoint), as `positions` tables of `K·S` values: `values[ξ·K·S + v]`, borrowed
/// from the codebook's cache.
pub(crate) struct TransformedCodebook<'a, F> {
    values: &'a [F],
    limit: usize,
}

impl<'a, F: Real> TransformedCodebook<'a, F> {
    /// The cached table of `codebook` (3×3), rotated by 180° when `rotated`.
    pub(crate) fn new(codebook: &'a KernelCodebook<F>, rotated: bool) -> Self {
        Self {
            values: codebook.winograd_table(rotated),
            limit: codebook.index_limit(),
        }
    }

    /// `Û_ξ[v]` for every stored index `v`.
    fn position(&self, xi: usize) -> &[F] {
        &self.values[xi * self.limit..][..self.limit]
    }
}

/// The left operand `U_ξ` of a clustered layer's Winograd GEMMs, built block by block.
pub(crate) struct ClusteredOperand<'a, F> {
    table: &'a TransformedCodebook<'a, F>,
    indices: &'a IndexStore,
    /// Row-major `(Cout, Cin)`; `None` for a layer without scales (every scale 1).
    scales: Option<&'a [F]>,
    /// The input-gradient operand: `Cin` rows, `Cout` columns, entry `(i, o)` from kernel
    /// `(o, i)` (and `table` holds the rotated kernels).
    adjoint: bool,
}

impl<F: Real> WinogradOperand<F> for ClusteredOperand<'_, F> {
    fn tile(&self) -> WinogradTile {
        TILE
    }

    fn out_channels(&self) -> usize {
        let (cout, cin) = self.indices.dim();
        if self.adjoint {
            cin
        } else {
            cout
        }
    }

    fn in_channels(&self) -> usize {
        let (cout, cin) = self.indices.dim();
        if self.adjoint {
            cout
        } else {
            cin
        }
    }

    fn block_rows(&self) -> usize {
        operand_rows::<F>(self.in_channels())
    }

    fn block<'b>(
        &'b self,
        xi: usize,
        rows: Range<usize>,
        scratch: &'b mut Vec<F>,
    ) -> ArrayView2<'b, F> {
        let cols = self.in_channels();
        let len = rows.len() * cols;
        if scratch.len() < len {
            scratch.resize(len, F::zero());
        }
        self.fill_rows(xi, rows.clone(), &mut scratch[..len]);
        ArrayView2::from_shape((rows.len(), cols), &scratch[..len]).expect("rows × Cin values")
    }
}

impl<F: Real> ClusteredOperand<'_, F> {
    /// Rows `rows` of `U_ξ` into `out` (`rows × in_channels()`, row-major).
    fn fill_rows(&self, xi: usize, rows: Range<usize>, out: &mut [F]) {
        let cols = self.in_channels();
        let table = PositionTable::new(self.table.position(xi));
        vectorised(|| {
            if self.adjoint {
                self.fill_adjoint(&table, rows.clone(), out);
            } else {
                for (o, dst) in rows.clone().zip(out.chunks_exact_mut(cols)) {
                    let scales = self.scales.map(|s| &s[o * cols..][..cols]);
                    fill(self.indices.row(o, 0..cols), scales, &table, dst, 1);
                }
            }
        });
    }

    /// The whole operand, all 36 positions, when it fits [`WHOLE_OPERAND_BYTES`]: the same
    /// values as the blocks, built once per call (positions in parallel).
    fn whole(&self) -> Option<WinogradWeight<F>> {
        let (rows, cols) = (self.out_channels(), self.in_channels());
        if !builds_whole_operand::<F>(rows, cols) {
            return None;
        }
        let mut u = par_zeros_vec(TILE.positions() * rows * cols);
        u.par_chunks_mut((rows * cols).max(1))
            .enumerate()
            .for_each(|(xi, position)| self.fill_rows(xi, 0..rows, position));
        Some(WinogradWeight::from_positions(u, rows, cols))
    }

    /// Rows `rows` (input channels `i`) of the adjoint operand into `out` (`rows × Cout`):
    /// one output channel `o` at a time, its kernels `(o, i)` read in order and written down
    /// column `o`.
    #[inline(always)]
    fn fill_adjoint(&self, table: &PositionTable<'_, F>, rows: Range<usize>, out: &mut [F]) {
        let (cout, cin) = self.indices.dim();
        for o in 0..cout {
            let scales = self.scales.map(|s| &s[o * cin..][..cin][rows.clone()]);
            fill(
                self.indices.row(o, rows.clone()),
                scales,
                table,
                &mut out[o..],
                cout,
            );
        }
    }
}

/// One position's table `Û_ξ[v]`, also copied into 256 entries when it has at most 256: a
/// `u8` index then needs no bounds check, and the fill loop runs without a branch per value.
struct PositionTable<'a, F> {
    values: &'a [F],
    padded: Option<[F; 256]>,
}

impl<'a, F: Real> PositionTable<'a, F> {
    fn new(values: &'a [F]) -> Self {
        let padded = (values.len() <= 256).then(|| {
            let mut padded = [F::zero(); 256];
            padded[..values.len()].copy_from_slice(values);
            padded
        });
        Self { values, padded }
    }
}

/// `dst[k·step] = scales[k] · table[indices[k]]` (scale 1 without scales), for the narrow
/// index type of the layer (indices are below the table's length: the layer checked them
/// against the codebook).
#[inline(always)]
fn fill<F: Real>(
    indices: NarrowIter<'_>,
    scales: Option<&[F]>,
    table: &PositionTable<'_, F>,
    dst: &mut [F],
    step: usize,
) {
    let values = table.values;
    match (indices, &table.padded) {
        (NarrowIter::U8(it), Some(padded)) => {
            fill_typed(it.as_slice(), scales, |v| padded[usize::from(v)], dst, step)
        }
        (NarrowIter::U8(it), None) => {
            fill_typed(it.as_slice(), scales, |v| values[usize::from(v)], dst, step)
        }
        (NarrowIter::U16(it), _) => {
            fill_typed(it.as_slice(), scales, |v| values[usize::from(v)], dst, step)
        }
        (NarrowIter::U32(it), _) => {
            fill_typed(it.as_slice(), scales, |v| values[v as usize], dst, step)
        }
    }
}

#[inline(always)]
fn fill_typed<F: Real, I: Copy>(
    indices: &[I],
    scales: Option<&[F]>,
    at: impl Fn(I) -> F,
    dst: &mut [F],
    step: usize,
) {
    if step == 1 {
        // Contiguous rows (the forward operand): a plain slice iterator the compiler can
        // vectorise.
        assign(dst.iter_mut(), indices, scales, at);
    } else {
        assign(dst.iter_mut().step_by(step), indices, scales, at);
    }
}

/// `d = scale · at(index)` along `dst`, `indices` and `scales` (scale 1 without scales).
#[inline(always)]
fn assign<'a, F: Real + 'a, I: Copy>(
    dst: impl Iterator<Item = &'a mut F>,
    indices: &[I],
    scales: Option<&[F]>,
    at: impl Fn(I) -> F,
) {
    match scales {
        Some(scales) => {
            for ((d, &v), &s) in dst.zip(indices).zip(scales) {
                *d = s * at(v);
            }
        }
        None => {
            for (d, &v) in dst.zip(indices) {
                *d = at(v);
            }
        }
    }
}

/// The forward pass of a 3×3, stride-1, dilation-1 call (any padding) through Winograd.
pub(crate) fn forward<F: Real>(
    x: ArrayView4<F>,
    codebook: &KernelCodebook<F>,
    indices: &IndexStore,
    scales: Option<&ScaleStore<F>>,
    bias: Option<ArrayView1<F>>,
    s: &ConvShape,
) -> Array4<F> {
    let table = TransformedCodebook::new(codebook, false);
    let mut wide = Vec::new();
    let operand = ClusteredOperand {
        table: &table,
        indices,
        scales: scales.map(|sc| sc.as_slice_in(&mut wide)),
        adjoint: false,
    };
    match operand.whole() {
        Some(whole) => forward_winograd(x, &whole, bias, s),
        None => forward_winograd(x, &operand, bias, s),
    }
}

/// ∂L/∂x of a 3×3, stride-1, dilation-1 call with padding ≤ 2 (`linalg::adjoint_fits`),
/// through Winograd with the adjoint operand.
pub(crate) fn backward_input<F: Real>(
    grad_out: ArrayView4<F>,
    codebook: &KernelCodebook<F>,
    indices: &IndexStore,
    scales: Option<&ScaleStore<F>>,
    s: &ConvShape,
) -> Array4<F> {
    let table = TransformedCodebook::new(codebook, true);
    let mut wide = Vec::new();
    let operand = ClusteredOperand {
        table: &table,
        indices,
        scales: scales.map(|sc| sc.as_slice_in(&mut wide)),
        adjoint: true,
    };
    match operand.whole() {
        Some(whole) => backward_input_winograd(grad_out, &whole, s),
        None => backward_input_winograd(grad_out, &operand, s),
    }
}
