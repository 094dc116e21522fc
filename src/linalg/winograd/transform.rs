//! The input and output transforms of F(4×4, 3×3), vectorised across the tiles of a block.
//!
//! Both work on *streams*: one value per tile of the block, contiguous, so every 1-D
//! transform is an element-wise combination of six streams that the compiler vectorises
//! (a band of a 28-wide map has only 7 tiles; a block of bands has at least 64). Only the
//! gathers between the image layout and the streams are strided.

use std::ops::Range;

use ndarray::{ArrayView1, ArrayView4, ArrayViewMut3, Axis};

use super::{Band, TileRow, M, N};
use crate::geometry::ConvShape;
use crate::linalg::simd::vectorised;
use crate::linalg::Real;

/// `Bᵀ d` for one column (or row) `d` of six values.
#[inline(always)]
pub(super) fn input_1d<F: Real>(d: [F; N]) -> [F; N] {
    let c = |v: f64| F::from_f64_lossy(v);
    let (two, four, five) = (c(2.0), c(4.0), c(5.0));
    [
        four * d[0] - five * d[2] + d[4],
        d[3] + d[4] - four * (d[1] + d[2]),
        four * (d[1] - d[2]) - d[3] + d[4],
        two * (d[3] - d[1]) - d[2] + d[4],
        two * (d[1] - d[3]) - d[2] + d[4],
        four * d[1] - five * d[3] + d[5],
    ]
}

/// `Aᵀ m` for one column (or row) `m` of six values.
#[inline(always)]
pub(super) fn output_1d<F: Real>(m: [F; N]) -> [F; M] {
    let c = |v: f64| F::from_f64_lossy(v);
    let (two, four, eight) = (c(2.0), c(4.0), c(8.0));
    let (p1, m1) = (m[1] + m[2], m[1] - m[2]);
    let (p3, m3) = (m[3] + m[4], m[3] - m[4]);
    [
        m[0] + p1 + p3,
        m1 + two * m3,
        p1 + four * p3,
        m1 + eight * m3 + m[5],
    ]
}

/// `dst[k][t] = (Bᵀ (src[0][t], …, src[5][t]))[k]` for every `t < dst[0].len()`.
#[inline(always)]
fn input_streams<F: Real>(src: [&[F]; N], dst: [&mut [F]; N]) {
    let len = dst[0].len();
    let src = narrow(src, 0..len);
    let [d0, d1, d2, d3, d4, d5] = dst;
    let (d1, d2, d3, d4, d5) = (
        &mut d1[..len],
        &mut d2[..len],
        &mut d3[..len],
        &mut d4[..len],
        &mut d5[..len],
    );
    for t in 0..len {
        let y = input_1d([
            src[0][t], src[1][t], src[2][t], src[3][t], src[4][t], src[5][t],
        ]);
        (d0[t], d1[t], d2[t], d3[t], d4[t], d5[t]) = (y[0], y[1], y[2], y[3], y[4], y[5]);
    }
}

/// `dst[k][t] = (Aᵀ (src[0][t], …, src[5][t]))[k]` for every `t < dst[0].len()`.
#[inline(always)]
fn output_streams<F: Real>(src: [&[F]; N], dst: [&mut [F]; M]) {
    let len = dst[0].len();
    let src = narrow(src, 0..len);
    let [d0, d1, d2, d3] = dst;
    let (d1, d2, d3) = (&mut d1[..len], &mut d2[..len], &mut d3[..len]);
    for t in 0..len {
        let y = output_1d([
            src[0][t], src[1][t], src[2][t], src[3][t], src[4][t], src[5][t],
        ]);
        (d0[t], d1[t], d2[t], d3[t]) = (y[0], y[1], y[2], y[3]);
    }
}

/// The first `K` streams of length `len` of `buf`, `stride` streams apart, from stream `first`.
#[inline(always)]
fn streams_mut<F, const K: usize>(
    buf: &mut [F],
    first: usize,
    stride: usize,
    len: usize,
) -> [&mut [F]; K] {
    let mut it = buf[first * len..].chunks_exact_mut(len).step_by(stride);
    std::array::from_fn(|_| it.next().expect("the buffer holds every stream"))
}

/// The `K` streams of length `len` of `buf`, `stride` streams apart, from stream `first`.
///
/// This and [`narrow`] fill their arrays in a loop: `std::array::from_fn` and `map` were
/// not inlined here, and their calls took about 8 % of a transform's instructions.
#[inline(always)]
fn streams<F, const K: usize>(buf: &[F], first: usize, stride: usize, len: usize) -> [&[F]; K] {
    let mut out: [&[F]; K] = [&[]; K];
    for (k, slot) in out.iter_mut().enumerate() {
        let start = (first + k * stride) * len;
        *slot = &buf[start..start + len];
    }
    out
}

/// The values `range` of each of `K` slices.
#[inline(always)]
fn narrow<F, const K: usize>(src: [&[F]; K], range: Range<usize>) -> [&[F]; K] {
    let mut out = src;
    for slot in out.iter_mut() {
        *slot = &slot[range.clone()];
    }
    out
}

/// The values `range` of each of `K` mutable slices.
#[inline(always)]
fn narrow_mut<F, const K: usize>(mut dst: [&mut [F]; K], range: Range<usize>) -> [&mut [F]; K] {
    for slot in dst.iter_mut() {
        *slot = &mut std::mem::take(slot)[range.clone()];
    }
    dst
}

/// Scratch of the transforms, reused across the blocks a worker runs.
#[derive(Default)]
pub(super) struct TransformScratch<F> {
    /// Input: one zero image row, then the column transform of a band's six rows. Gradient:
    /// four zero-padded gradient rows, then their transform.
    rows: Vec<F>,
    /// 36 streams over the block's tiles (input: column-transformed values per tile
    /// position; output: the row transform, then the 16 output positions).
    streams: Vec<F>,
}

/// Input transform of a block of bands, every input channel, into `V`
/// (`v[(ξ·Cin + i)·tiles + t]`, tiles in band order); zeros outside the image.
///
/// Per channel and band, `Bᵀ` runs down the columns of the six input rows, read in place
/// (vectorised over the band's width), and each transformed row is split into the six column
/// streams of its tiles. Then `B` runs along the streams, vectorised over the block.
pub(super) fn transform_block<F: Real>(
    x: &ArrayView4<F>,
    s: &ConvShape,
    block: &[TileRow],
    v: &mut [F],
    scratch: &mut TransformScratch<F>,
) {
    vectorised(
        #[inline(always)]
        || input_transform(x, s, block, v, scratch),
    );
}

#[inline(always)]
fn input_transform<F: Real>(
    x: &ArrayView4<F>,
    s: &ConvShape,
    block: &[TileRow],
    v: &mut [F],
    scratch: &mut TransformScratch<F>,
) {
    let tw = s.ow.div_ceil(M);
    let tiles = block.len() * tw;
    let wp = M * tw + 2;
    // One zero image row (the rows above and below the map), then the six transformed rows.
    scratch.rows.clear();
    scratch.rows.resize(s.w + N * wp, F::zero());
    scratch.streams.resize(N * N * tiles, F::zero());
    let x = x.as_slice().expect("standard layout");
    for i in 0..s.cin {
        for (b, &(n, ty)) in block.iter().enumerate() {
            let plane = &x[(n * s.cin + i) * s.h * s.w..(n * s.cin + i + 1) * s.h * s.w];
            let (zero, t) = scratch.rows.split_at_mut(s.w);
            column_transform(plane, s, ty, zero, &mut t[..N * wp], wp);
            split_into_tile_streams(t, wp, tw, b * tw, tiles, &mut scratch.streams);
        }
        for r in 0..N {
            let src = streams(&scratch.streams, r * N, 1, tiles);
            input_streams(src, streams_mut(v, r * N * s.cin + i, s.cin, tiles));
        }
    }
}

/// `Bᵀ` down the columns of the six input rows `4·ty − pad_top …` of one channel's `plane`,
/// into six rows `t` of `wp` columns starting at image column `−pad_left`. The rows are read
/// in place (`zero`, one zero image row, stands for rows outside the map) and the padding
/// columns are set to zero, the transform of zeros: no padded copy of the input is made.
#[inline(always)]
fn column_transform<F: Real>(
    plane: &[F],
    s: &ConvShape,
    ty: usize,
    zero: &[F],
    t: &mut [F],
    wp: usize,
) {
    let (c_lo, c_hi) = (s.pad_left.min(wp), (s.pad_left + s.w).min(wp));
    let c_hi = c_hi.max(c_lo);
    let mut rows: [&[F]; N] = [zero; N];
    for (r, slot) in rows.iter_mut().enumerate() {
        let iy = (ty * M + r).checked_sub(s.pad_top).filter(|&iy| iy < s.h);
        let row = iy.map_or(zero, |iy| &plane[iy * s.w..(iy + 1) * s.w]);
        // Column c_lo of `t` is image column 0 whenever the range is not empty.
        *slot = &row[..c_hi - c_lo];
    }
    for row in t.chunks_exact_mut(wp) {
        row[..c_lo].fill(F::zero());
        row[c_hi..].fill(F::zero());
    }
    let dst: [&mut [F]; N] = narrow_mut(streams_mut(t, 0, 1, wp), c_lo..c_hi);
    input_streams(rows, dst);
}

/// Splits six transformed rows `t` (width `wp`) of one band into the 36 streams
/// `streams[(r·6 + c)·tiles + t0 + tx] = t[r][4·tx + c]`.
#[inline(always)]
fn split_into_tile_streams<F: Real>(
    t: &[F],
    wp: usize,
    tw: usize,
    t0: usize,
    tiles: usize,
    out: &mut [F],
) {
    for (r, trow) in t.chunks_exact(wp).enumerate() {
        let trow = &trow[..M * tw + 2];
        let [d0, d1, d2, d3, d4, d5] =
            narrow_mut(streams_mut::<F, N>(out, r * N, 1, tiles), t0..t0 + tw);
        // One pass over the row reads every column of its tiles (an interleaved access the
        // compiler vectorises with shuffles; six strided passes stay scalar).
        for tx in 0..tw {
            let seg = &trow[M * tx..M * tx + N];
            (d0[tx], d1[tx], d2[tx], d3[tx], d4[tx], d5[tx]) =
                (seg[0], seg[1], seg[2], seg[3], seg[4], seg[5]);
        }
    }
}

/// Output transform of a block (`m[(ξ·Cout + o)·tiles + t]`), bias added, valid outputs
/// stored into the bands' `(Cout, rows, OW)` views.
///
/// Per output channel, `A` runs along the six rows of every tile, then `Aᵀ` down the
/// columns, both vectorised over the block's tiles; the 16 output streams are then
/// interleaved into the bands' output rows.
pub(super) fn inverse_block<F: Real>(
    m: &[F],
    cout: usize,
    tiles: usize,
    bias: Option<&ArrayView1<F>>,
    block: &mut [Band<'_, F>],
    scratch: &mut TransformScratch<F>,
) {
    vectorised(
        #[inline(always)]
        || output_transform(m, cout, tiles, bias, block, scratch),
    );
}

#[inline(always)]
fn output_transform<F: Real>(
    m: &[F],
    cout: usize,
    tiles: usize,
    bias: Option<&ArrayView1<F>>,
    block: &mut [Band<'_, F>],
    scratch: &mut TransformScratch<F>,
) {
    scratch.streams.resize((N * M + M * M) * tiles, F::zero());
    let (rows_t, out_t) = scratch.streams.split_at_mut(N * M * tiles);
    for o in 0..cout {
        let b = bias.map_or(F::zero(), |b| b[o]);
        for r in 0..N {
            let src = streams(m, r * N * cout + o, cout, tiles);
            output_streams(src, streams_mut(rows_t, r * M, 1, tiles));
        }
        for k in 0..M {
            let src = streams(rows_t, k, M, tiles);
            output_streams(src, streams_mut(out_t, k, M, tiles));
        }
        for (band_no, (_, _, band)) in block.iter_mut().enumerate() {
            let t0 = band_no * band.len_of(Axis(2)).div_ceil(M);
            store_band_rows(out_t, tiles, t0, b, o, band);
        }
    }
}

/// Interleaves the 16 output streams (`out_t[(4·k2 + k)·tiles + t]`: row `k2`, column `k` of
/// tile `t`) of one band, channel `o`, into its output rows, adding the bias. Writes straight
/// into the output (no row buffer and copy): whole tiles four values at a time, then the
/// columns of a last tile that overhangs the map.
#[inline(always)]
fn store_band_rows<F: Real>(
    out_t: &[F],
    tiles: usize,
    t0: usize,
    bias: F,
    o: usize,
    band: &mut ArrayViewMut3<'_, F>,
) {
    let (_, rows, ow) = band.dim();
    let tw = ow.div_ceil(M);
    let mut plane = band.index_axis_mut(Axis(0), o);
    let out = plane
        .as_slice_mut()
        .expect("a band of a fresh output is contiguous");
    for (k2, out_row) in out.chunks_exact_mut(ow).enumerate().take(rows) {
        let [c0, c1, c2, c3]: [&[F]; M] = narrow(streams(out_t, M * k2, 1, tiles), t0..t0 + tw);
        let mut quads = out_row.chunks_exact_mut(M);
        for ((((quad, &a), &b), &c), &d) in quads.by_ref().zip(c0).zip(c1).zip(c2).zip(c3) {
            quad.copy_from_slice(&[a + bias, b + bias, c + bias, d + bias]);
        }
        let last = tw - (ow % M != 0) as usize;
        for (k, q) in quads.into_remainder().iter_mut().enumerate() {
            *q = [c0, c1, c2, c3][k][last] + bias;
        }
    }
}

/// `A y` for four values `y` (the adjoint of [`output_1d`]): six values.
#[inline(always)]
pub(super) fn grad_1d<F: Real>(y: [F; M]) -> [F; N] {
    let c = |v: f64| F::from_f64_lossy(v);
    let (two, four, eight) = (c(2.0), c(4.0), c(8.0));
    let (even, odd) = (y[0] + y[2], y[1] + y[3]);
    let (even2, odd2) = (y[0] + four * y[2], two * y[1] + eight * y[3]);
    [
        y[0],
        even + odd,
        even - odd,
        even2 + odd2,
        even2 - odd2,
        y[3],
    ]
}

/// `dst[k][t] = (A (src[0][t], …, src[3][t]))[k]` for every `t < dst[0].len()`.
#[inline(always)]
fn grad_streams<F: Real>(src: [&[F]; M], dst: [&mut [F]; N]) {
    let len = dst[0].len();
    let src = narrow(src, 0..len);
    let [d0, d1, d2, d3, d4, d5] = dst;
    let (d1, d2, d3, d4, d5) = (
        &mut d1[..len],
        &mut d2[..len],
        &mut d3[..len],
        &mut d4[..len],
        &mut d5[..len],
    );
    for t in 0..len {
        let y = grad_1d([src[0][t], src[1][t], src[2][t], src[3][t]]);
        (d0[t], d1[t], d2[t], d3[t], d4[t], d5[t]) = (y[0], y[1], y[2], y[3], y[4], y[5]);
    }
}

/// The output gradient of a block in the Winograd domain, `dM_τ = A dY_τ Aᵀ` per tile, into
/// `dm[(ξ·Cout + o)·tiles + t]`; gradients of outputs past the map's edge are zero.
pub(super) fn grad_output_block<F: Real>(
    go: &ArrayView4<F>,
    s: &ConvShape,
    block: &[TileRow],
    dm: &mut [F],
    scratch: &mut TransformScratch<F>,
) {
    vectorised(
        #[inline(always)]
        || grad_transform(go, s, block, dm, scratch),
    );
}

/// Per output channel and band: the four gradient rows (zero-padded to whole tiles), `A` down
/// their columns into six rows, split into the four column streams of every tile; then `A`
/// along the streams, vectorised over the block.
#[inline(always)]
fn grad_transform<F: Real>(
    go: &ArrayView4<F>,
    s: &ConvShape,
    block: &[TileRow],
    dm: &mut [F],
    scratch: &mut TransformScratch<F>,
) {
    let tw = s.ow.div_ceil(M);
    let tiles = block.len() * tw;
    let wq = M * tw;
    scratch.rows.resize((M + N) * wq, F::zero());
    scratch.streams.resize(N * M * tiles, F::zero());
    let go = go.as_slice().expect("standard layout");
    let plane_len = s.oh * s.ow;
    for o in 0..s.cout {
        for (b, &(n, ty)) in block.iter().enumerate() {
            let plane = &go[(n * s.cout + o) * plane_len..(n * s.cout + o + 1) * plane_len];
            let (y, t) = scratch.rows.split_at_mut(M * wq);
            for (k, row) in y.chunks_exact_mut(wq).enumerate() {
                let oy = ty * M + k;
                row.fill(F::zero());
                if oy < s.oh {
                    row[..s.ow].copy_from_slice(&plane[oy * s.ow..(oy + 1) * s.ow]);
                }
            }
            grad_streams(streams(y, 0, 1, wq), streams_mut(t, 0, 1, wq));
            for (r, trow) in t.chunks_exact(wq).enumerate() {
                let [d0, d1, d2, d3] = narrow_mut(
                    streams_mut::<F, M>(&mut scratch.streams, r * M, 1, tiles),
                    b * tw..(b + 1) * tw,
                );
                for (tx, quad) in trow.chunks_exact(M).enumerate() {
                    (d0[tx], d1[tx], d2[tx], d3[tx]) = (quad[0], quad[1], quad[2], quad[3]);
                }
            }
        }
        for r in 0..N {
            let src = streams(&scratch.streams, r * M, 1, tiles);
            grad_streams(src, streams_mut(dm, r * N * s.cout + o, s.cout, tiles));
        }
    }
}

/// `Gᵀ u` for six values `u` (the adjoint of the kernel transform's `G`): three values.
#[inline(always)]
fn gt_1d<F: Real>(u: [F; N]) -> [F; 3] {
    let c = |v: f64| F::from_f64_lossy(v);
    let (quarter, sixth, twelfth, twenty_fourth) =
        (c(0.25), c(1.0 / 6.0), c(1.0 / 12.0), c(1.0 / 24.0));
    let (p12, m12) = (u[1] + u[2], u[2] - u[1]);
    let (p34, m34) = (u[3] + u[4], u[3] - u[4]);
    [
        quarter * u[0] - sixth * p12 + twenty_fourth * p34,
        sixth * m12 + twelfth * m34,
        sixth * (p34 - p12) + u[5],
    ]
}

/// `dst[k][t] = (Gᵀ (src[0][t], …, src[5][t]))[k]` for every `t < dst[0].len()`.
#[inline(always)]
fn gt_streams<F: Real>(src: [&[F]; N], dst: [&mut [F]; 3]) {
    let len = dst[0].len();
    let src = narrow(src, 0..len);
    let [d0, d1, d2] = dst;
    let (d1, d2) = (&mut d1[..len], &mut d2[..len]);
    for t in 0..len {
        let y = gt_1d([
            src[0][t], src[1][t], src[2][t], src[3][t], src[4][t], src[5][t],
        ]);
        (d0[t], d1[t], d2[t]) = (y[0], y[1], y[2]);
    }
}

/// `dg = Gᵀ dU G` for every kernel at once: `du` holds 36 planes of `plane` kernels
/// (`du[ξ·plane + k]`), `dg` receives 9 planes (`dg[(3·a + b)·plane + k]`); `rows` is scratch.
pub(super) fn kernel_gradient_planes<F: Real>(
    du: &[F],
    plane: usize,
    rows: &mut Vec<F>,
    dg: &mut [F],
) {
    vectorised(
        #[inline(always)]
        || {
            rows.resize(N * 3 * plane, F::zero());
            // Gᵀ along each row r of the 6×6 gradient (6 → 3 columns), then down each column.
            for r in 0..N {
                gt_streams(
                    streams(du, r * N, 1, plane),
                    streams_mut(rows, r * 3, 1, plane),
                );
            }
            for b in 0..3 {
                gt_streams(streams(rows, b, 3, plane), streams_mut(dg, b, 3, plane));
            }
        },
    );
}
