//! Winograd minimal filtering F(4×4, 3×3) for dense 3×3, stride-1, dilation-1 correlations
//! (Lavin & Gray, 2016), forward only.
//!
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` per 6×6 input tile `d` and 4×4 output tile `Y`, with the
//! matrices of the interpolation points `[0, 1, −1, 2, −2, ∞]`. Summed over input channels,
//! the element-wise product becomes 36 independent GEMMs `M_ξ = U_ξ · V_ξ` of
//! `(Cout × Cin) · (Cin × tiles)`.
//!
//! # Blocking
//! The output is cut into bands of one tile row (4 output rows of one image); consecutive
//! bands form a block whose transformed input `V` (36 × Cin × tiles) takes about
//! [`BLOCK_BYTES`]. Per block, the input transform, the 36 GEMMs and the output transform
//! (bias fused, written straight into the output) run back to back on one worker, so the
//! transformed tensors never exist for the whole input. Scratch per worker is `V` plus `M`
//! (36 × Cout × tiles). A call with a single block runs its 36 GEMMs as parallel tasks
//! instead.
//!
//! # Determinism
//! Blocks depend only on the shapes, and every output element is produced by one block with a
//! fixed summation order, so results are bit-identical on any number of threads.

use std::ops::Range;

use ndarray::{Array4, ArrayView1, ArrayView2, ArrayView4, ArrayViewMut3, Axis};
use rayon::prelude::*;

use super::{adjoint_weight, gemm, matrix_mut, par_zeros, Real};
use crate::geometry::ConvShape;

mod grad;
mod transform;

pub(crate) use grad::backward_weight_winograd;

#[cfg(test)]
use transform::{input_1d, output_1d};
use transform::{inverse_block, transform_block, TransformScratch};

/// Output tile side `m` of F(m×m, 3×3).
const M: usize = 4;
/// Input tile side `n = m + 2`.
const N: usize = 6;
/// Positions ξ of the transformed tile.
const XI: usize = N * N;
/// Target size of one block's transformed input `V`, in bytes. With `M` and the hot part of
/// `U` it must share the 2 MiB L2: 1 MiB blocks measured up to 1.6× slower than 256 KiB ones
/// on 64@56 (one thread, batch 8).
const BLOCK_BYTES: usize = 1 << 18;
/// Fewest tiles per block: narrower GEMMs re-read `U` too often and run faer's masked
/// micro-kernels (64 measured up to 1.4× faster than 16 on 512@7, no slower elsewhere).
const MIN_BLOCK_TILES: usize = 64;

/// Whether a call that can run Winograd has enough 4×4 output tiles per image for its channel
/// count: (tiles per image) × min(Cin, Cout) ≥ 2048, with at least 16 channels each way. The
/// transforms cost work linear in the channels and the GEMMs save work quadratic in them, so
/// narrow layers on small maps lose. Measured by a sweep of dense forward passes (f32, batch 8,
/// pad 1, Cin = Cout from 8 to 512, maps 4–56, 1 thread): Winograd was 1.25–3.2× faster than
/// im2col above the line and 0.57–1.0× below it. The first line of [`winograd_pays`].
fn winograd_has_enough_tiles(s: &ConvShape) -> bool {
    let tiles = s.oh.div_ceil(M) * s.ow.div_ceil(M);
    let channels = s.cin.min(s.cout);
    channels >= MIN_WINOGRAD_CHANNELS && tiles * channels >= MIN_WINOGRAD_TILE_CHANNELS
}

/// Fewest input and output channels for which `Auto` runs Winograd.
const MIN_WINOGRAD_CHANNELS: usize = 16;
/// Least (tiles per image) × min(Cin, Cout) for which `Auto` runs Winograd.
const MIN_WINOGRAD_TILE_CHANNELS: usize = 2048;
/// Channels (each way) from which `Auto` runs Winograd on small maps too.
const WIDE_WINOGRAD_CHANNELS: usize = 128;
/// Fewest 4×4 tiles in a whole call (batch × tiles per image) for which `Auto` runs
/// Winograd: below it each of the 36 GEMMs has a handful of columns.
const MIN_WINOGRAD_CALL_TILES: usize = 8;

/// Whether `Auto` may run Winograd on this call: [`winograd_has_enough_tiles`], or at least
/// [`WIDE_WINOGRAD_CHANNELS`] channels each way on a map of any size, and in both cases at
/// least [`MIN_WINOGRAD_CALL_TILES`] tiles in the call. The dense `Conv2d`'s rule, and the
/// clustered layer's precondition for its cost model (`LayerCost::winograd_tiles_pay`).
/// Measured with the faster transforms (f32, pad 1, Cin = Cout from 16 to 512, maps 4–28,
/// batch 1, 8 and 64, 1 and 2 threads, best of 2, this 2-vCPU Xeon): with ≥ 128 channels
/// and ≥ 8 tiles Winograd ran at 0.92–3.0× im2col's speed (256@7–8 and 512@4 at batch 8:
/// 1.42–1.88× and 1.44–1.53×); with 4 tiles or fewer (512@7, 256@8 and 512@4 at batch 1) at
/// 0.31–1.01×.
pub(crate) fn winograd_pays(s: &ConvShape) -> bool {
    let tiles = s.oh.div_ceil(M) * s.ow.div_ceil(M);
    let wide = s.cin.min(s.cout) >= WIDE_WINOGRAD_CHANNELS;
    (wide || winograd_has_enough_tiles(s)) && s.batch * tiles >= MIN_WINOGRAD_CALL_TILES
}

/// The Winograd variant F(m×m, 3×3) a call runs: the output tile side `m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum WinogradTile {
    /// F(4×4, 3×3): 6×6 input tiles, 36 positions, 4× fewer multiplies than direct.
    F4,
}

impl WinogradTile {
    /// Positions ξ of a transformed tile (`n²`): the number of GEMMs and of values per
    /// transformed kernel.
    pub(crate) fn positions(self) -> usize {
        match self {
            WinogradTile::F4 => XI,
        }
    }

    /// `G g Gᵀ` of one row-major 3×3 kernel, as `positions()` row-major values (exact in f64
    /// up to rounding; callers round once to their element type).
    pub(crate) fn kernel_transform(self, g: &[f64; 9]) -> Vec<f64> {
        match self {
            WinogradTile::F4 => kernel_transform(g).to_vec(),
        }
    }
}

/// The transformed weight `U = G g Gᵀ` of every (o, i), as 36 row-major `Cout × Cin`
/// matrices (`u[(ξ·Cout + o)·Cin + i]`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WinogradWeight<F> {
    u: Vec<F>,
    cout: usize,
    cin: usize,
}

impl<F: Real> WinogradWeight<F> {
    /// Transforms an OIHW 3×3 weight (computed in f64, rounded once to `F`).
    pub(crate) fn new(weight: ArrayView4<F>) -> Self {
        let (cout, cin, kh, kw) = weight.dim();
        debug_assert_eq!((kh, kw), (3, 3), "Winograd F(4,3) needs 3×3 kernels");
        let mut u = vec![F::zero(); XI * cout * cin];
        for o in 0..cout {
            for i in 0..cin {
                let g: [f64; 9] =
                    std::array::from_fn(|k| weight[[o, i, k / 3, k % 3]].to_f64_exact());
                for (xi, v) in kernel_transform(&g).into_iter().enumerate() {
                    u[(xi * cout + o) * cin + i] = F::from_f64_lossy(v);
                }
            }
        }
        Self { u, cout, cin }
    }

    /// A transformed weight already laid out as 36 row-major `Cout × Cin` matrices
    /// (`u[(ξ·Cout + o)·Cin + i]`).
    pub(crate) fn from_positions(u: Vec<F>, cout: usize, cin: usize) -> Self {
        debug_assert_eq!(u.len(), XI * cout * cin);
        Self { u, cout, cin }
    }

    /// The transformed weight of the input-gradient convolution: kernel `(i, o)` is kernel
    /// `(o, i)` of the OIHW `weight` rotated by 180° (so `Cin` outputs and `Cout` inputs).
    pub(crate) fn adjoint(weight: ArrayView4<F>) -> Self {
        Self::new(adjoint_weight(weight).view())
    }
}

/// Where the 36 GEMMs take their left operand `U_ξ` (`Cout × Cin`) from: a stored transformed
/// weight ([`WinogradWeight`]), or blocks built on the fly (a clustered layer too wide to hold
/// its whole operand builds them from its indices, scales and transformed codebook).
pub(crate) trait WinogradOperand<F>: Sync {
    /// The variant the operand was transformed for.
    fn tile(&self) -> WinogradTile;
    /// `Cout`.
    fn out_channels(&self) -> usize;
    /// `Cin`.
    fn in_channels(&self) -> usize;
    /// Output channels per operand block: the GEMM of position ξ runs block by block.
    fn block_rows(&self) -> usize {
        self.out_channels()
    }
    /// Rows `rows` of `U_ξ` as a `rows.len() × Cin` matrix, borrowed from `self` or built
    /// into `scratch`.
    fn block<'a>(
        &'a self,
        xi: usize,
        rows: Range<usize>,
        scratch: &'a mut Vec<F>,
    ) -> ArrayView2<'a, F>;
}

impl<F: Real> WinogradOperand<F> for WinogradWeight<F> {
    fn tile(&self) -> WinogradTile {
        WinogradTile::F4
    }

    fn out_channels(&self) -> usize {
        self.cout
    }

    fn in_channels(&self) -> usize {
        self.cin
    }

    fn block<'a>(&'a self, xi: usize, rows: Range<usize>, _: &'a mut Vec<F>) -> ArrayView2<'a, F> {
        let start = (xi * self.cout + rows.start) * self.cin;
        let end = (xi * self.cout + rows.end) * self.cin;
        ArrayView2::from_shape((rows.len(), self.cin), &self.u[start..end])
            .expect("U holds 36 Cout×Cin matrices")
    }
}

/// `G g Gᵀ` for one row-major 3×3 kernel, as 36 row-major values.
fn kernel_transform(g: &[f64; 9]) -> [f64; XI] {
    let g6 = |a: f64, b: f64, c: f64| -> [f64; N] {
        [
            a / 4.0,
            -(a + b + c) / 6.0,
            -(a - b + c) / 6.0,
            a / 24.0 + b / 12.0 + c / 6.0,
            a / 24.0 - b / 12.0 + c / 6.0,
            c,
        ]
    };
    // Columns first: t = G g (6×3), then U = t Gᵀ (6×6), row by row.
    let cols: [[f64; N]; 3] = std::array::from_fn(|c| g6(g[c], g[3 + c], g[6 + c]));
    let mut u = [0.0; XI];
    for r in 0..N {
        let row = g6(cols[0][r], cols[1][r], cols[2][r]);
        u[r * N..(r + 1) * N].copy_from_slice(&row);
    }
    u
}

/// One band of the output: image `n`, tile row `ty`, and its `(Cout, ≤4, OW)` view.
type Band<'a, F> = (usize, usize, ArrayViewMut3<'a, F>);

/// A row of tiles: image `n`, tile row `ty` (output rows `4·ty …`).
type TileRow = (usize, usize);

/// Per-worker scratch: the block's transformed input `V` and products `M`.
#[derive(Default)]
struct Scratch<F> {
    v: Vec<F>,
    m: Vec<F>,
    /// An operand block of `U_ξ`, for operands built on the fly.
    u: Vec<F>,
    /// Buffers of the input and output transforms.
    transform: TransformScratch<F>,
}

/// Dense F(4×4, 3×3) forward of a stride-1, dilation-1, 3×3 correlation: `u` is the
/// transformed weight of the layer, `s` the resolved call (any padding).
pub(crate) fn forward_winograd<F: Real, W: WinogradOperand<F>>(
    x: ArrayView4<F>,
    u: &W,
    bias: Option<ArrayView1<F>>,
    s: &ConvShape,
) -> Array4<F> {
    debug_assert!(s.kh == 3 && s.kw == 3 && s.stride == (1, 1) && s.dilation == (1, 1));
    debug_assert_eq!((u.out_channels(), u.in_channels()), (s.cout, s.cin));
    debug_assert_eq!(u.tile(), WinogradTile::F4);
    let x = x.as_standard_layout();
    let x = x.view();
    let mut out: Array4<F> = par_zeros((s.batch, s.cout, s.oh, s.ow));
    let rows = block_tile_rows::<F>(s);
    let mut bands: Vec<Band<'_, F>> = Vec::new();
    for (n, image) in out.outer_iter_mut().enumerate() {
        let mut rest = image;
        let mut ty = 0;
        while rest.len_of(Axis(1)) > 0 {
            let h = M.min(rest.len_of(Axis(1)));
            let (band, tail) = rest.split_at(Axis(1), h);
            bands.push((n, ty, band));
            rest = tail;
            ty += 1;
        }
    }
    let mut blocks: Vec<Vec<Band<'_, F>>> = Vec::new();
    let mut iter = bands.into_iter().peekable();
    while iter.peek().is_some() {
        blocks.push(iter.by_ref().take(rows).collect());
    }
    // One block (few tiles, many channels): its 36 GEMMs run as parallel tasks instead. Never
    // both, so a waiting worker cannot pick up a second block and its scratch.
    let gemms_in_parallel = blocks.len() == 1;
    // Contiguous runs of blocks, two per worker, each allocating its scratch once: a fresh
    // scratch is zero-filled, which took 7 % of a 128@28 call when rayon split per block.
    let runs = (2 * rayon::current_num_threads()).clamp(1, blocks.len());
    let per_run = blocks.len().div_ceil(runs);
    blocks.par_chunks_mut(per_run).for_each(|run| {
        let mut scratch = Scratch::default();
        for block in run {
            run_block(
                &x,
                u,
                bias.as_ref(),
                s,
                block,
                &mut scratch,
                gemms_in_parallel,
            );
        }
    });
    out
}

/// True when [`backward_input_winograd`] can run the input gradient of this stride-1 3×3 call:
/// the adjoint's padding `2 − p` must not be negative ([`ConvShape::adjoint`]).
pub(crate) fn adjoint_fits(s: &ConvShape) -> bool {
    s.adjoint().is_some()
}

/// ∂L/∂x of a stride-1, dilation-1 3×3 correlation (padding ≤ 2, see [`adjoint_fits`]): the
/// Winograd forward of `grad_out` with the adjoint operand `u_adj` (see
/// [`WinogradWeight::adjoint`]) and padding `2 − p`, which is the transposed convolution.
pub(crate) fn backward_input_winograd<F: Real, W: WinogradOperand<F>>(
    grad_out: ArrayView4<F>,
    u_adj: &W,
    s: &ConvShape,
) -> Array4<F> {
    let adjoint = s.adjoint().expect("callers check adjoint_fits");
    forward_winograd(grad_out, u_adj, None, &adjoint)
}

/// Tile rows per block: `V` of about [`BLOCK_BYTES`], at least [`MIN_BLOCK_TILES`] tiles.
fn block_tile_rows<F>(s: &ConvShape) -> usize {
    let tiles_per_row = s.ow.div_ceil(M);
    let per_tile = XI * s.cin * std::mem::size_of::<F>();
    let tiles = (BLOCK_BYTES / per_tile).max(MIN_BLOCK_TILES);
    (tiles / tiles_per_row).max(1)
}

/// Input transform, 36 GEMMs and output transform of one block of bands.
fn run_block<F: Real, W: WinogradOperand<F>>(
    x: &ArrayView4<F>,
    u: &W,
    bias: Option<&ArrayView1<F>>,
    s: &ConvShape,
    block: &mut [Band<'_, F>],
    scratch: &mut Scratch<F>,
    gemms_in_parallel: bool,
) {
    let tw = s.ow.div_ceil(M);
    let tiles = block.len() * tw;
    scratch.v.resize(XI * s.cin * tiles, F::zero());
    scratch.m.resize(XI * s.cout * tiles, F::zero());
    let tile_rows: Vec<TileRow> = block.iter().map(|(n, ty, _)| (*n, *ty)).collect();
    transform_block(x, s, &tile_rows, &mut scratch.v, &mut scratch.transform);
    // The 36 products are independent, each one single-threaded GEMM, so running them as
    // parallel tasks does not change the result.
    let (v_len, m_len) = (s.cin * tiles, s.cout * tiles);
    let v_all = &scratch.v;
    let product = |xi: usize, m: &mut [F], u_buf: &mut Vec<F>| {
        let v = ArrayView2::from_shape((s.cin, tiles), &v_all[xi * v_len..(xi + 1) * v_len])
            .expect("V holds 36 Cin×tiles matrices");
        product_xi(u, xi, &v, m, u_buf);
    };
    let products = &mut scratch.m[..XI * m_len];
    if gemms_in_parallel {
        products
            .par_chunks_mut(m_len)
            .enumerate()
            .for_each_init(Vec::new, |u_buf, (xi, m)| product(xi, m, u_buf));
    } else {
        for (xi, m) in products.chunks_mut(m_len).enumerate() {
            product(xi, m, &mut scratch.u);
        }
    }
    inverse_block(
        &scratch.m,
        s.cout,
        tiles,
        bias,
        block,
        &mut scratch.transform,
    );
}

/// `M_ξ = U_ξ · V_ξ` into `m` (row-major `Cout × tiles`), one operand block of rows at a time.
fn product_xi<F: Real, W: WinogradOperand<F>>(
    u: &W,
    xi: usize,
    v: &ArrayView2<'_, F>,
    m: &mut [F],
    u_buf: &mut Vec<F>,
) {
    let (cout, tiles) = (u.out_channels(), v.ncols());
    let step = u.block_rows().max(1);
    for o0 in (0..cout).step_by(step) {
        let rows = o0..(o0 + step).min(cout);
        let mut m_rows = matrix_mut(&mut m[o0 * tiles..rows.end * tiles], rows.len(), tiles);
        let u_rows = u.block(xi, rows, u_buf);
        gemm(F::one(), &u_rows, v, F::zero(), &mut m_rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Bᵀ d B` of a row-major 6×6 tile.
    fn input_tile<F: Real>(d: &[F; XI]) -> [F; XI] {
        let mut t = [F::zero(); XI];
        for c in 0..N {
            let col = input_1d(std::array::from_fn(|r| d[r * N + c]));
            for r in 0..N {
                t[r * N + c] = col[r];
            }
        }
        let mut v = [F::zero(); XI];
        for r in 0..N {
            let row = input_1d(std::array::from_fn(|c| t[r * N + c]));
            v[r * N..(r + 1) * N].copy_from_slice(&row);
        }
        v
    }

    /// `Aᵀ m A` of a row-major 6×6 tile, as a row-major 4×4 tile.
    fn output_tile<F: Real>(m: &[F; XI]) -> [F; M * M] {
        let mut t = [F::zero(); M * N];
        for c in 0..N {
            let col = output_1d(std::array::from_fn(|r| m[r * N + c]));
            for r in 0..M {
                t[r * N + c] = col[r];
            }
        }
        let mut y = [F::zero(); M * M];
        for r in 0..M {
            let row = output_1d(std::array::from_fn(|c| t[r * N + c]));
            y[r * M..(r + 1) * M].copy_from_slice(&row);
        }
        y
    }

    /// Direct 3×3 correlation of a 6×6 tile (valid part, 4×4).
    fn direct(d: &[f64; XI], g: &[f64; 9]) -> [f64; 16] {
        std::array::from_fn(|k| {
            let (r, c) = (k / 4, k % 4);
            (0..9).map(|t| g[t] * d[(r + t / 3) * N + c + t % 3]).sum()
        })
    }

    #[test]
    fn one_tile_matches_direct_correlation() {
        let d: [f64; XI] = std::array::from_fn(|k| ((k * 7919) % 23) as f64 / 7.0 - 1.5);
        let g: [f64; 9] = std::array::from_fn(|k| ((k * 31) % 11) as f64 / 5.0 - 1.0);
        let u = kernel_transform(&g);
        let v = input_tile(&d);
        let prod: [f64; XI] = std::array::from_fn(|k| u[k] * v[k]);
        let y = output_tile(&prod);
        for (a, b) in y.iter().zip(direct(&d, &g).iter()) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }
}
