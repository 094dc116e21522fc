//! The two redundancy-removing forward passes.

use ndarray::{Array3, Array4, ArrayView1, ArrayView4, Axis};
use rayon::prelude::*;

use super::plan::Plan;
use super::stencil::{correlate_add, extract_patches};
use crate::conv::{image, output_tiles};
use crate::geometry::ConvShape;
use crate::scalar::Real;

/// Output positions per input-side tile (whole output rows, at least one): the accumulator
/// row of one output channel.
const INPUT_SIDE_TILE: usize = 64;
/// Budget of the response block of one channel block (`groups × tile` values), in bytes:
/// small enough to stay in L2 while every output channel gathers from it.
const INPUT_SIDE_RESPONSE_BYTES: usize = 32 << 10;
/// Positions accumulated in registers at once by the gather-sum.
const GATHER_LANES: usize = 32;

/// `dst += scale · src`.
#[inline]
fn axpy<F: Real>(scale: F, src: &[F], dst: &mut [F]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d += scale * v;
    }
}

/// `y += Σ_k scales[k] · rows[groups[k]]`, with `rows` a row-major matrix of rows of
/// `y.len()` values. Blocks of [`GATHER_LANES`] (then 8) outputs are accumulated in registers
/// across all terms, so `y` is read and written once per block.
#[inline]
fn gather_sum<F: Real>(y: &mut [F], rows: &[F], groups: &[u32], scales: &[F]) {
    let width = y.len();
    let mut start = 0;
    start = gather_lanes::<F, GATHER_LANES>(y, rows, groups, scales, width, start);
    start = gather_lanes::<F, 8>(y, rows, groups, scales, width, start);
    for (&g, &s) in groups.iter().zip(scales) {
        axpy(
            s,
            &rows[g as usize * width + start..][..width - start],
            &mut y[start..],
        );
    }
}

/// The register-blocked part of [`gather_sum`] for blocks of `L` outputs from `start`;
/// returns where it stopped.
#[inline(always)]
fn gather_lanes<F: Real, const L: usize>(
    y: &mut [F],
    rows: &[F],
    groups: &[u32],
    scales: &[F],
    width: usize,
    mut start: usize,
) -> usize {
    while start + L <= width {
        let mut acc: [F; L] = y[start..start + L].try_into().expect("lane block");
        for (&g, &s) in groups.iter().zip(scales) {
            let row: &[F; L] = rows[g as usize * width + start..][..L]
                .try_into()
                .expect("lane block");
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += s * v;
            }
        }
        y[start..start + L].copy_from_slice(&acc);
        start += L;
    }
    start
}

/// Conv-then-add. `table` holds every decoded kernel, `(K·S) × (kh·kw)` row-major.
///
/// Per band of output rows and per block of input channels: each channel's patch rows are
/// extracted once and combined into the responses of its distinct kernels, then every output
/// channel gathers and sums its scaled responses over the block.
pub(crate) fn input_side<F: Real>(
    x: ArrayView4<F>,
    plan: &Plan<F>,
    table: &[F],
    bias: Option<ArrayView1<F>>,
    s: &ConvShape,
) -> Array4<F> {
    let x = x.as_standard_layout();
    let x = x.view();
    let area = s.kh * s.kw;
    let groups = &plan.by_input;
    // The distinct kernels of every input channel, stacked: row g is group g's kernel.
    let mut kernels = vec![F::zero(); groups.len() * area];
    for (g, &index) in groups.group_index.iter().enumerate() {
        kernels[g * area..][..area].copy_from_slice(&table[index as usize * area..][..area]);
    }
    let plane = s.h * s.w;
    let tile = INPUT_SIDE_TILE.div_ceil(s.ow).min(s.oh) * s.ow;
    let taps: Vec<u32> = (0..area as u32).collect();
    let blocks = plan.input_blocks(INPUT_SIDE_RESPONSE_BYTES / (tile * std::mem::size_of::<F>()));
    // Per block, the gather table relative to the block's first group.
    let local_groups: Vec<Vec<u32>> = blocks
        .iter()
        .map(|b| {
            let first = groups.channel_start[b.start] as u32;
            (0..s.cout)
                .flat_map(|o| {
                    plan.gather_group[o * s.cin + b.start..o * s.cin + b.end]
                        .iter()
                        .map(move |&g| g - first)
                })
                .collect()
        })
        .collect();
    let mut out = Array3::<F>::zeros((s.batch, s.cout, s.out_positions()));
    output_tiles(&mut out, tile).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new()),
        |(patches, responses, acc), (n, p0, mut out_tile)| {
            let width = out_tile.ncols();
            let rows = p0 / s.ow..(p0 + width) / s.ow;
            acc.clear();
            acc.resize(s.cout * width, F::zero());
            patches.resize(area * width, F::zero());
            let img = image(&x, n);
            for (block, local) in blocks.iter().zip(&local_groups) {
                let first = groups.channel_start[block.start];
                let count = groups.channel_start[block.end] - first;
                responses.clear();
                responses.resize(count * width, F::zero());
                for i in block.clone() {
                    extract_patches(s, rows.clone(), &img[i * plane..][..plane], patches);
                    for g in groups.of_channel(i) {
                        let z = &mut responses[(g - first) * width..][..width];
                        gather_sum(z, patches, &taps, &kernels[g * area..][..area]);
                    }
                }
                let bw = block.len();
                for o in 0..s.cout {
                    let scales = &plan.gather_scale[o * s.cin + block.start..o * s.cin + block.end];
                    gather_sum(
                        &mut acc[o * width..][..width],
                        responses,
                        &local[o * bw..][..bw],
                        scales,
                    );
                }
            }
            for (o, mut row) in out_tile.outer_iter_mut().enumerate() {
                let b = bias.as_ref().map_or(F::zero(), |b| b[o]);
                for (d, &v) in row.iter_mut().zip(&acc[o * width..][..width]) {
                    *d = v + b;
                }
            }
        },
    );
    out.into_shape_with_order((s.batch, s.cout, s.oh, s.ow))
        .expect("N·Cout·OH·OW outputs")
}

/// Add-then-conv. `table` holds every decoded kernel, `(K·S) × (kh·kw)` row-major.
pub(crate) fn output_side<F: Real>(
    x: ArrayView4<F>,
    plan: &Plan<F>,
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
                        let kernel = &table[groups.group_index[g] as usize * area..][..area];
                        let mut members = groups.members(g);
                        let (first, first_scale) = members.next().expect("a group has a member");
                        if groups.member_start[g + 1] - groups.member_start[g] == 1 {
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
