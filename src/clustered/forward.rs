//! The two redundancy-removing forward passes.

use ndarray::{Array3, Array4, ArrayView1, ArrayView2, ArrayView4, Axis};
use rayon::prelude::*;

use super::indices::IndexStore;
use super::plan::{KernelScales, Plan};
use super::scales::ScaleStore;
use crate::geometry::ConvShape;
use crate::linalg::simd::{Kernel, Kernels};
use crate::linalg::Real;
use crate::linalg::{
    add_bias, correlate_add, extract_patches, forward_tile_positions, gemm, image, output_tiles,
    patch_matrix,
};
use pulp::Simd;

/// Most output positions per input-side tile (whole output rows, at least one): the
/// accumulator row of one output channel.
const INPUT_SIDE_TILE: usize = 128;
/// Budget of the response block of one channel block (`groups × tile` values), in bytes:
/// small enough to stay in cache while every output channel gathers from it.
const INPUT_SIDE_RESPONSE_BYTES: usize = 256 << 10;
/// Buffers are padded to a multiple of this many elements: the widest vector of any
/// instruction set the kernels run with (16 `f32` with AVX-512), so rows split into whole
/// vectors with no tail.
const LANES: usize = 16;

/// Output rows per input-side tile: the count whose tiles, padded to whole vectors, waste the
/// least work over the image (ties: more rows), among tiles of at most [`INPUT_SIDE_TILE`]
/// positions (or one row when a row is longer).
fn input_side_rows(oh: usize, ow: usize) -> usize {
    (1..=oh)
        .filter(|&r| r == 1 || r * ow <= INPUT_SIDE_TILE)
        .min_by_key(|&r| (padded_positions(oh, ow, r), std::cmp::Reverse(r)))
        .unwrap_or(1)
}

/// Positions the input side computes per image with tiles of `rows` output rows, each tile
/// padded to whole vectors.
fn padded_positions(oh: usize, ow: usize, rows: usize) -> usize {
    (oh / rows) * (rows * ow).next_multiple_of(LANES) + ((oh % rows) * ow).next_multiple_of(LANES)
}

/// Work factor of the input side's padding: positions computed ÷ positions needed (≥ 1).
pub(crate) fn input_side_padding(oh: usize, ow: usize) -> f64 {
    padded_positions(oh, ow, input_side_rows(oh, ow)) as f64 / (oh * ow) as f64
}

/// Conv-then-add. `table` holds every decoded kernel, `(K·S) × (kh·kw)` row-major.
///
/// Per band of output rows and per block of input channels: each channel's patch rows are
/// extracted once and combined into the responses of its distinct kernels, then every output
/// channel gathers and sums its scaled responses over the block.
pub(crate) fn input_side<F: Real>(
    x: ArrayView4<F>,
    plan: &Plan,
    scales: KernelScales<'_, F>,
    table: &[F],
    bias: Option<ArrayView1<F>>,
    s: &ConvShape,
    kernels: Kernels,
) -> Array4<F> {
    let x = x.as_standard_layout();
    let x = x.view();
    let area = s.kh * s.kw;
    let groups = &plan.by_input;
    // The distinct kernels of every input channel, stacked: row g is group g's kernel.
    let mut stacked = vec![F::zero(); groups.len() * area];
    for (g, index) in groups.group_index.iter().enumerate() {
        stacked[g * area..][..area].copy_from_slice(&table[index as usize * area..][..area]);
    }
    let tile = input_side_rows(s.oh, s.ow) * s.ow;
    let stride = tile.next_multiple_of(LANES);
    let blocks = plan.input_blocks(INPUT_SIDE_RESPONSE_BYTES / (stride * std::mem::size_of::<F>()));
    // Per block, the gather table relative to the block's first group.
    let local_groups: Vec<Vec<u32>> = blocks
        .iter()
        .map(|b| plan.block_gather(b.clone()))
        .collect();
    let layer = InputSideLayer {
        s,
        plan,
        scales,
        stacked: &stacked,
        blocks: &blocks,
        local_groups: &local_groups,
        stride,
    };
    let mut out = Array3::<F>::zeros((s.batch, s.cout, s.out_positions()));
    output_tiles(out.view_mut(), tile)
        .into_par_iter()
        .for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(patches, responses, acc), (n, p0, mut out_tile)| {
                kernels.dispatch(InputSideTile {
                    layer: &layer,
                    image: image(&x, n),
                    rows: p0 / s.ow..(p0 + out_tile.ncols()) / s.ow,
                    patches,
                    responses,
                    acc,
                });
                for (o, mut row) in out_tile.outer_iter_mut().enumerate() {
                    let b = bias.as_ref().map_or(F::zero(), |b| b[o]);
                    for (d, &v) in row.iter_mut().zip(&acc[o * stride..]) {
                        *d = v + b;
                    }
                }
            },
        );
    out.into_shape_with_order((s.batch, s.cout, s.oh, s.ow))
        .expect("N·Cout·OH·OW outputs")
}

/// Everything an input-side tile needs from the layer.
struct InputSideLayer<'a, F> {
    s: &'a ConvShape,
    plan: &'a Plan,
    scales: KernelScales<'a, F>,
    /// Row g: the kernel of `by_input` group g.
    stacked: &'a [F],
    blocks: &'a [std::ops::Range<usize>],
    /// Per block, `(Cout, block channels)` group ids relative to the block's first group.
    local_groups: &'a [Vec<u32>],
    /// Padded tile width (a multiple of [`LANES`]).
    stride: usize,
}

/// One band of output rows of one image; leaves the sums (without bias) in `acc`
/// (`Cout × stride`).
struct InputSideTile<'a, 'b, F> {
    layer: &'b InputSideLayer<'a, F>,
    image: &'b [F],
    rows: std::ops::Range<usize>,
    patches: &'b mut Vec<F>,
    responses: &'b mut Vec<F>,
    acc: &'b mut Vec<F>,
}

impl<F: Real> Kernel for InputSideTile<'_, '_, F> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, simd: S) {
        let InputSideLayer {
            s,
            plan,
            scales,
            stacked,
            blocks,
            local_groups,
            stride,
        } = *self.layer;
        let groups = &plan.by_input;
        let area = s.kh * s.kw;
        let plane = s.h * s.w;
        self.acc.clear();
        self.acc.resize(s.cout * stride, F::zero());
        self.patches.resize(area * stride, F::zero());
        for (block, local) in blocks.iter().zip(local_groups) {
            let first = groups.channel_start[block.start];
            let count = groups.channel_start[block.end] - first;
            self.responses.resize(count * stride, F::zero());
            for i in block.clone() {
                extract_patches(
                    s,
                    self.rows.clone(),
                    &self.image[i * plane..][..plane],
                    stride,
                    self.patches,
                );
                let range = groups.of_channel(i);
                respond(
                    simd,
                    self.patches,
                    stride,
                    area,
                    &stacked[range.start * area..range.end * area],
                    &mut self.responses
                        [(range.start - first) * stride..(range.end - first) * stride],
                );
            }
            let bw = block.len();
            for o in 0..s.cout {
                let scales = scales.row(o, block.clone());
                gather_sum(
                    simd,
                    &mut self.acc[o * stride..][..stride],
                    self.responses,
                    stride,
                    &local[o * bw..][..bw],
                    scales,
                );
            }
        }
    }
}

/// `out[v] = Σ_t kernels[v][t] · patches[t]` for every kernel `v` (rows of `stride` values):
/// the taps of one kernel are broadcast once and swept over the patch rows.
#[inline(always)]
fn respond<F: Real, S: Simd>(
    simd: S,
    patches: &[F],
    stride: usize,
    area: usize,
    kernels: &[F],
    out: &mut [F],
) {
    match area {
        9 => respond_taps::<F, S, 9>(simd, patches, stride, kernels, out),
        1 => respond_taps::<F, S, 1>(simd, patches, stride, kernels, out),
        _ => {
            for (k, z) in kernels.chunks_exact(area).zip(out.chunks_exact_mut(stride)) {
                let (zv, _) = F::as_lanes_mut::<S>(z);
                zv.fill(F::splat(simd, F::zero()));
                for (t, &w) in k.iter().enumerate() {
                    let wv = F::splat(simd, w);
                    let (pv, _) = F::as_lanes::<S>(&patches[t * stride..][..stride]);
                    for (d, &p) in zv.iter_mut().zip(pv) {
                        *d = F::mul_add_lanes(simd, wv, p, *d);
                    }
                }
            }
        }
    }
}

/// [`respond`] for kernels of `A` taps, as a small matrix product (kernels × taps times
/// taps × positions): blocks of [`RESPOND_KERNELS`] kernels × 2 vectors keep 8 independent
/// multiply-add chains in registers, and each loaded patch vector serves every kernel of the
/// block. Every response is one chain over the taps in order.
#[inline(always)]
fn respond_taps<F: Real, S: Simd, const A: usize>(
    simd: S,
    patches: &[F],
    stride: usize,
    kernels: &[F],
    out: &mut [F],
) {
    let rows: [&[F::Lanes<S>]; A] =
        std::array::from_fn(|t| F::as_lanes::<S>(&patches[t * stride..][..stride]).0);
    let vectors = rows[0].len();
    let mut kernel_blocks = kernels.chunks_exact(RESPOND_KERNELS * A);
    let mut out_blocks = out.chunks_exact_mut(RESPOND_KERNELS * stride);
    for (k, z) in kernel_blocks.by_ref().zip(out_blocks.by_ref()) {
        respond_block::<F, S, A, RESPOND_KERNELS>(simd, &rows, vectors, k, stride, z);
    }
    for (k, z) in kernel_blocks
        .remainder()
        .chunks_exact(A)
        .zip(out_blocks.into_remainder().chunks_exact_mut(stride))
    {
        respond_block::<F, S, A, 1>(simd, &rows, vectors, k, stride, z);
    }
}

/// Kernels per block of [`respond_taps`].
const RESPOND_KERNELS: usize = 4;

/// The responses of `M` kernels (`kernels`: `M × A` taps) over all `vectors` of the patch
/// rows, into `out` (`M` rows of `stride` values): two vectors at a time, then one.
#[inline(always)]
fn respond_block<F: Real, S: Simd, const A: usize, const M: usize>(
    simd: S,
    rows: &[&[F::Lanes<S>]; A],
    vectors: usize,
    kernels: &[F],
    stride: usize,
    out: &mut [F],
) {
    let mut v = 0;
    while v + 2 <= vectors {
        respond_tile::<F, S, A, M, 2>(simd, rows, v, kernels, stride, out);
        v += 2;
    }
    if v < vectors {
        respond_tile::<F, S, A, M, 1>(simd, rows, v, kernels, stride, out);
    }
}

/// Vectors `v..v + N` of the responses of `M` kernels: `M·N` accumulators in registers.
#[inline(always)]
fn respond_tile<F: Real, S: Simd, const A: usize, const M: usize, const N: usize>(
    simd: S,
    rows: &[&[F::Lanes<S>]; A],
    v: usize,
    kernels: &[F],
    stride: usize,
    out: &mut [F],
) {
    let zero = F::splat(simd, F::zero());
    let mut acc = [[zero; N]; M];
    for t in 0..A {
        let p = &rows[t][v..v + N];
        for m in 0..M {
            let w = F::splat(simd, kernels[m * A + t]);
            for u in 0..N {
                acc[m][u] = F::mul_add_lanes(simd, w, p[u], acc[m][u]);
            }
        }
    }
    for (m, acc) in acc.iter().enumerate() {
        let z = F::as_lanes_mut::<S>(&mut out[m * stride..][..stride]).0;
        z[v..v + N].copy_from_slice(acc);
    }
}

/// `y += Σ_k scales[k] · rows[groups[k]]` (rows of `stride` values, `y.len() = stride`), in
/// blocks of vectors held in registers across all terms.
#[inline(always)]
fn gather_sum<F: Real, S: Simd>(
    simd: S,
    y: &mut [F],
    rows: &[F],
    stride: usize,
    groups: &[u32],
    scales: &[F],
) {
    let (yv, tail) = F::as_lanes_mut::<S>(y);
    assert!(tail.is_empty(), "rows are padded to whole vectors");
    let mut v = 0;
    while v + 4 <= yv.len() {
        gather_block::<F, S, 4, 2>(simd, &mut yv[v..v + 4], rows, stride, v, groups, scales);
        v += 4;
    }
    while v + 2 <= yv.len() {
        gather_block::<F, S, 2, 4>(simd, &mut yv[v..v + 2], rows, stride, v, groups, scales);
        v += 2;
    }
    while v < yv.len() {
        gather_block::<F, S, 1, 8>(simd, &mut yv[v..v + 1], rows, stride, v, groups, scales);
        v += 1;
    }
}

/// Vectors `v0..v0+B` of [`gather_sum`], accumulated in `SETS` independent register sets
/// (term `k` goes to set `k mod SETS`, so consecutive additions do not wait on each other),
/// then added to `y` in set order.
#[inline(always)]
fn gather_block<F: Real, S: Simd, const B: usize, const SETS: usize>(
    simd: S,
    y: &mut [F::Lanes<S>],
    rows: &[F],
    stride: usize,
    v0: usize,
    groups: &[u32],
    scales: &[F],
) {
    let zero = F::splat(simd, F::zero());
    let mut acc = [[zero; B]; SETS];
    let row = |g: u32| &F::as_lanes::<S>(&rows[g as usize * stride..][..stride]).0[v0..v0 + B];
    let mut gs = groups.chunks_exact(SETS);
    let mut ss = scales.chunks_exact(SETS);
    for (g, sc) in gs.by_ref().zip(ss.by_ref()) {
        for j in 0..SETS {
            let r = row(g[j]);
            let s = F::splat(simd, sc[j]);
            for b in 0..B {
                acc[j][b] = F::mul_add_lanes(simd, s, r[b], acc[j][b]);
            }
        }
    }
    for (j, (&g, &sc)) in gs.remainder().iter().zip(ss.remainder()).enumerate() {
        let r = row(g);
        let s = F::splat(simd, sc);
        for b in 0..B {
            acc[j][b] = F::mul_add_lanes(simd, s, r[b], acc[j][b]);
        }
    }
    for (b, d) in y.iter_mut().enumerate() {
        let mut sum = *d;
        for a in &acc {
            sum = F::add_lanes(simd, sum, a[b]);
        }
        *d = sum;
    }
}

/// Rows of the GEMM's inner dimension (input channel × tap) rebuilt at a time by the dense
/// fallback.
const DENSE_BLOCK_DEPTH: usize = 576;

/// The dense fallback: the dense convolution with the rebuilt weight, computed over blocks of
/// input channels (`DENSE_BLOCK_DEPTH / (kh·kw)` at a time): for each block, the weight columns
/// `s_ji·K_{l(j,i)}` of its channels are rebuilt into one reused buffer and multiplied with
/// those channels' patch rows, accumulating into the output. The full dense weight never
/// exists: a fresh weight-sized buffer costs more in page faults than the arithmetic the
/// fallback is there to save.
pub(crate) fn dense_fallback<F: Real>(
    x: ArrayView4<F>,
    indices: &IndexStore,
    scales: Option<&ScaleStore<F>>,
    table: &[F],
    bias: Option<ArrayView1<F>>,
    s: &ConvShape,
) -> Array4<F> {
    let x = x.as_standard_layout();
    let x = x.view();
    let area = s.kh * s.kw;
    let plane = s.h * s.w;
    let channels = (DENSE_BLOCK_DEPTH / area).clamp(1, s.cin);
    let tile = forward_tile_positions::<F>(&ConvShape {
        cin: channels,
        ..*s
    });
    let mut out = Array3::<F>::zeros((s.batch, s.cout, s.out_positions()));
    let mut weight = vec![F::zero(); s.cout * channels * area];
    for first in (0..s.cin).step_by(channels) {
        let count = channels.min(s.cin - first);
        let depth = count * area;
        let block = ConvShape { cin: count, ..*s };
        weight[..s.cout * depth]
            .par_chunks_mut(depth)
            .enumerate()
            .for_each(|(o, row)| {
                for (i, kernel) in (first..first + count).zip(row.chunks_exact_mut(area)) {
                    let decoded = &table[indices.get(o, i) as usize * area..][..area];
                    let scale = scales.map_or(F::one(), |sc| sc.get(o, i));
                    for (d, &v) in kernel.iter_mut().zip(decoded) {
                        *d = scale * v;
                    }
                }
            });
        let w = ArrayView2::from_shape((s.cout, depth), &weight[..s.cout * depth])
            .expect("weight block");
        let beta = if first == 0 { F::zero() } else { F::one() };
        output_tiles(out.view_mut(), tile)
            .into_par_iter()
            .for_each_init(Vec::new, |buf, (n, p0, mut out_tile)| {
                let img = &image(&x, n)[first * plane..(first + count) * plane];
                let patches = patch_matrix(img, &block, p0, out_tile.ncols(), buf);
                gemm(F::one(), &w, &patches, beta, &mut out_tile);
            });
    }
    for image in out.outer_iter_mut() {
        add_bias(image, bias.as_ref());
    }
    out.into_shape_with_order((s.batch, s.cout, s.oh, s.ow))
        .expect("N·Cout·OH·OW outputs")
}

/// `dst += scale · src`.
fn axpy<F: Real>(scale: F, src: &[F], dst: &mut [F]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d += scale * v;
    }
}

/// Add-then-conv. `table` holds every decoded kernel, `(K·S) × (kh·kw)` row-major.
pub(crate) fn output_side<F: Real>(
    x: ArrayView4<F>,
    plan: &Plan,
    scales: KernelScales<'_, F>,
    table: &[F],
    bias: Option<ArrayView1<F>>,
    s: &ConvShape,
) -> Array4<F> {
    let x = x.as_standard_layout();
    let x = x.view();
    let area = s.kh * s.kw;
    let plane = s.h * s.w;
    let groups = &plan.by_output;
    let mut out = Array4::<F>::zeros((s.batch, s.cout, s.oh, s.ow));
    out.outer_iter_mut()
        .into_par_iter()
        .enumerate()
        .for_each(|(n, mut out_n)| {
            let img = image(&x, n);
            out_n
                .axis_iter_mut(Axis(0))
                .into_par_iter()
                .enumerate()
                .for_each_init(Vec::new, |sum, (o, mut out_o)| {
                    let y = out_o.as_slice_mut().expect("fresh array is contiguous");
                    y.fill(bias.as_ref().map_or(F::zero(), |b| b[o]));
                    for g in groups.of_channel(o) {
                        let kernel = &table[groups.index(g) * area..][..area];
                        let mut members = plan.output_members(o, g, scales);
                        let (first, first_scale) = members.next().expect("a group has a member");
                        if groups.member_range(g).len() == 1 {
                            // One member: convolve x_i with the scaled kernel, no sum needed.
                            let scaled: Vec<F> = kernel.iter().map(|&k| k * first_scale).collect();
                            correlate_add(
                                s,
                                0..s.oh,
                                0,
                                &img[first * plane..][..plane],
                                &scaled,
                                y,
                            );
                            continue;
                        }
                        sum.clear();
                        sum.extend(
                            img[first * plane..][..plane]
                                .iter()
                                .map(|&v| v * first_scale),
                        );
                        for (i, scale) in members {
                            axpy(scale, &img[i * plane..][..plane], sum);
                        }
                        correlate_add(s, 0..s.oh, 0, sum, kernel, y);
                    }
                });
        });
    out
}
