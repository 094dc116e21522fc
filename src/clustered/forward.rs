//! The two redundancy-removing forward passes.

use ndarray::{Array3, Array4, ArrayView1, ArrayView2, ArrayView4, Axis};
use rayon::prelude::*;

use super::plan::Plan;
use super::stencil::correlate_add;
use crate::conv::{gemm, image, output_tiles, patch_matrix};
use crate::geometry::ConvShape;
use crate::scalar::Real;

/// Accumulator budget of one input-side tile (`Cout × T` values), in bytes.
const INPUT_SIDE_ACC_BYTES: usize = 128 << 10;
/// Fewest output positions per input-side tile.
const INPUT_SIDE_MIN_TILE: usize = 64;

/// Output positions per input-side tile.
fn input_side_tile<F>(s: &ConvShape) -> usize {
    (INPUT_SIDE_ACC_BYTES / (s.cout * std::mem::size_of::<F>()).max(1))
        .max(INPUT_SIDE_MIN_TILE)
        .min(s.out_positions())
        .max(1)
}

/// The shape of one input channel convolved on its own.
fn single_channel(s: &ConvShape) -> ConvShape {
    ConvShape { cin: 1, ..*s }
}

/// `dst += scale · src`.
#[inline]
fn axpy<F: Real>(scale: F, src: &[F], dst: &mut [F]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d += scale * v;
    }
}

/// Conv-then-add. `table` holds every decoded kernel, `(K·S) × (kh·kw)` row-major.
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
    let one = single_channel(s);
    let plane = s.h * s.w;
    let tile = input_side_tile::<F>(s);
    let mut out = Array3::<F>::zeros((s.batch, s.cout, s.out_positions()));
    output_tiles(&mut out, tile).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new()),
        |(patch_buf, responses, acc), (n, p0, mut out_tile)| {
            let width = out_tile.ncols();
            acc.clear();
            acc.resize(s.cout * width, F::zero());
            let img = image(&x, n);
            for i in 0..s.cin {
                let range = groups.of_channel(i);
                let count = range.len();
                if count == 0 {
                    continue;
                }
                let patches = patch_matrix(&img[i * plane..][..plane], &one, p0, width, patch_buf);
                let k_i = ArrayView2::from_shape(
                    (count, area),
                    &kernels[range.start * area..][..count * area],
                )
                .expect("count·area kernel values");
                responses.resize(count * width, F::zero());
                let mut z = ndarray::ArrayViewMut2::from_shape(
                    (count, width),
                    &mut responses[..count * width],
                )
                .expect("count·width responses");
                gemm(F::one(), &k_i, &patches, F::zero(), &mut z);
                for (local, g) in range.enumerate() {
                    let z_g = &responses[local * width..][..width];
                    for (o, scale) in groups.members(g) {
                        axpy(scale, z_g, &mut acc[o * width..][..width]);
                    }
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
