//! Direct convolution of 3×3, stride-1, dilation-1 layers on zero-padded planes: the forward
//! pass and the weight gradient without a patch matrix.
//!
//! Each plane is copied once into a zero-padded plane with rows of
//! `wp = w + pad_left + pad_right` values. Output `(oy, ox)` is then position
//! `q = oy·wp + ox` of a grid with rows of that same width, and tap `(ki, kj)` reads the padded
//! plane at `q + ki·wp + kj`: one constant offset per tap, at every position. The convolution
//! is a matrix product whose patch matrix is never built (row `(c, tap)` of it is padded
//! plane `c` shifted by the tap's offset): the kernels load those rows straight into vector
//! registers. im2col writes and re-reads nine copies of the input per call, and the GEMM packs
//! them once more; here the input is copied once.
//!
//! The last two positions of every grid row straddle two image rows. Their sums are computed
//! and dropped (forward) or multiplied by a zero gradient (weight gradient): `2/wp` of the
//! work, 7 % at 28×28, 13 % at 14×14, 22 % at 7×7.
//!
//! # Determinism
//! Tasks depend only on the shapes; every output element and every partial weight-gradient
//! sum is produced by one task in a fixed order, so results are bit-identical on any number
//! of threads.

use ndarray::{Array4, ArrayView1, ArrayView4, ArrayViewMut2, Axis};
use pulp::Simd;
use rayon::prelude::*;

use super::im2col::MIN_FORWARD_TASKS;
use super::simd::{Kernel, Kernels};
use super::{image, par_zeros, Real};
use crate::geometry::ConvShape;

/// Taps of a 3×3 kernel.
const TAPS: usize = 9;
/// The most lanes of any vector the kernels run with (`f32` on AVX-512). Output rows of the
/// grid are rounded up to a multiple of it, and every padded plane has this much slack, so
/// that whole-vector loads and stores never leave their buffers.
const MAX_LANES: usize = 16;
/// Output channels per forward register tile (and per block of the packed weight).
const OUT_BLOCK: usize = 8;
/// Vectors of grid positions per forward register tile: with [`OUT_BLOCK`] channels, 24
/// accumulators, three input vectors and a broadcast weight fill AVX-512's 32 registers.
const POSITION_VECTORS: usize = 3;
/// Output channels per weight-gradient register tile: 3 × 9 taps = 27 accumulators, with the
/// three gradient vectors and one input vector 31 of AVX-512's 32 registers. Measured against
/// two (18 accumulators) on the flagship's training step: 0.93 against 0.96–0.97 of the
/// im2col step's time. (Before the stacked layout of [`Stack`], three spilled to the stack in
/// one build.)
const GRAD_BLOCK: usize = 3;
/// Target size of one weight-gradient sub-batch's padded input and gradient planes, in
/// bytes: they are re-read once per block of output channels and should stay in the L2.
const GRAD_SCRATCH_BYTES: usize = 1 << 20;
/// Most partial weight gradients kept at once (as the im2col weight gradient: bounds memory,
/// and fixes the reduction order whatever the thread count).
const MAX_GRAD_GROUPS: usize = 8;

/// Whether a call can run the direct kernels: a 3×3 kernel, stride 1 and dilation 1.
pub(crate) fn direct_fits(s: &ConvShape) -> bool {
    (s.kh, s.kw) == (3, 3) && s.stride == (1, 1) && s.dilation == (1, 1)
}

/// The padded grid of one call.
#[derive(Debug, Clone, Copy)]
struct Grid {
    /// Padded row width (`ow + 2`).
    wp: usize,
    /// Distance between consecutive planes in a buffer: the `(oh + 2)·wp` values of a padded
    /// plane plus [`MAX_LANES`] of slack.
    stride: usize,
    /// Grid positions of the output rows, rounded up to whole vectors (`oh·wp` and up).
    positions: usize,
}

impl Grid {
    fn new(s: &ConvShape) -> Self {
        let wp = s.ow + 2;
        Grid {
            wp,
            stride: (s.oh + 2) * wp + MAX_LANES,
            positions: (s.oh * wp).next_multiple_of(MAX_LANES),
        }
    }

    /// Length of a buffer of `planes` planes: their strides, and the reach of the last taps
    /// of the last whole vectors.
    fn buffer_len(&self, planes: usize) -> usize {
        planes * self.stride + 2 * self.wp + 2 * MAX_LANES
    }

    /// The offset of tap `t` (row-major over the 3×3 kernel) from a position.
    fn tap_offset(&self, t: usize) -> usize {
        (t / 3) * self.wp + t % 3
    }
}

/// Copies a `rows × cols` plane into `dst` (rows of `wp`) with its top-left value at
/// `(top, left)`, and zeros everywhere else. Only the border is zeroed: the rows are written
/// once.
fn place_plane<F: Real>(
    src: &[F],
    (rows, cols): (usize, usize),
    (top, left): (usize, usize),
    wp: usize,
    dst: &mut [F],
) {
    let first = top * wp + left;
    dst[..first].fill(F::zero());
    for (r, src_row) in src.chunks_exact(cols).take(rows).enumerate() {
        let start = first + r * wp;
        dst[start..start + cols].copy_from_slice(src_row);
        // This row's right padding and the next row's left padding: a few values, zeroed
        // one by one (a `fill` call per row costs more than the copy on narrow planes).
        let gap_end = (start + wp).min(dst.len());
        for v in &mut dst[start + cols..gap_end] {
            *v = F::zero();
        }
    }
    let end = (first + rows * wp).min(dst.len());
    dst[end..].fill(F::zero());
}

/// The number of lanes of `F`'s vectors under instruction set `S`.
#[inline(always)]
fn lanes<F: Real, S: Simd>() -> usize {
    std::mem::size_of::<F::Lanes<S>>() / std::mem::size_of::<F>()
}

/// Whether `S` has wide registers (32 of 64 bytes) for the larger register tiles.
#[inline(always)]
fn wide_registers<F: Real, S: Simd>() -> bool {
    std::mem::size_of::<F::Lanes<S>>() >= 64
}

/// The weight in blocks of [`OUT_BLOCK`] output channels: block `b`, row `k = c·9 + tap`,
/// column `j` holds `W[b·OUT_BLOCK + j, c, tap]` (zero past `Cout`).
fn pack_forward<F: Real>(weight: ArrayView4<F>) -> Vec<F> {
    let (cout, cin, _, _) = weight.dim();
    let rows = cin * TAPS;
    let mut packed = vec![F::zero(); cout.div_ceil(OUT_BLOCK) * rows * OUT_BLOCK];
    for ((o, c, ki, kj), &w) in weight.indexed_iter() {
        let (b, j) = (o / OUT_BLOCK, o % OUT_BLOCK);
        packed[(b * rows + c * TAPS + ki * 3 + kj) * OUT_BLOCK + j] = w;
    }
    packed
}

/// Direct forward: `weight` is OIHW, `s` a call that [`direct_fits`].
pub(crate) fn forward_direct<F: Real>(
    x: ArrayView4<F>,
    weight: ArrayView4<F>,
    bias: Option<ArrayView1<F>>,
    s: &ConvShape,
) -> Array4<F> {
    forward_with(x, weight, bias, s, Kernels::detect())
}

/// [`forward_direct`] with the given instruction set.
fn forward_with<F: Real>(
    x: ArrayView4<F>,
    weight: ArrayView4<F>,
    bias: Option<ArrayView1<F>>,
    s: &ConvShape,
    kernels: Kernels,
) -> Array4<F> {
    let x = x.as_standard_layout();
    let x = x.view();
    let grid = Grid::new(s);
    let packed = pack_forward(weight);
    let offsets: Vec<usize> = (0..s.cin * TAPS)
        .map(|k| (k / TAPS) * grid.stride + grid.tap_offset(k % TAPS))
        .collect();
    // Images, each split into groups of channel blocks so that small batches still give
    // several tasks.
    let blocks = s.cout.div_ceil(OUT_BLOCK);
    let splits = MIN_FORWARD_TASKS.div_ceil(s.batch).min(blocks);
    let group = blocks.div_ceil(splits) * OUT_BLOCK;
    let mut out: Array4<F> = par_zeros((s.batch, s.cout, s.oh, s.ow));
    let mut tasks = Vec::new();
    for (n, mut rest) in out.outer_iter_mut().enumerate() {
        let mut o0 = 0;
        while o0 < s.cout {
            let (part, tail) = rest.split_at(Axis(0), group.min(s.cout - o0));
            tasks.push((n, o0, part));
            rest = tail;
            o0 += group;
        }
    }
    tasks.into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(planes, sums), (n, o0, mut part)| {
            pad_image(image(&x, n), s, &grid, planes);
            sums.resize(OUT_BLOCK * grid.positions, F::zero());
            let rows = s.cin * TAPS * OUT_BLOCK;
            for (b, mut chunk) in part.axis_chunks_iter_mut(Axis(0), OUT_BLOCK).enumerate() {
                let block = o0 / OUT_BLOCK + b;
                kernels.dispatch(ForwardBlock {
                    planes,
                    offsets: &offsets,
                    weights: &packed[block * rows..][..rows],
                    sums,
                    row: grid.positions,
                });
                let o = block * OUT_BLOCK;
                let bias = bias
                    .as_ref()
                    .map(|b| &b.as_slice().expect("contiguous bias")[o..]);
                let channels = chunk.len_of(Axis(0));
                let mut flat = chunk
                    .view_mut()
                    .into_shape_with_order((channels, s.oh * s.ow))
                    .expect("a contiguous output block");
                write_block(sums, &grid, s, bias, &mut flat);
            }
        },
    );
    out
}

/// The `cin` planes of one image, padded, [`Grid::stride`] apart.
fn pad_image<F: Real>(img: &[F], s: &ConvShape, grid: &Grid, planes: &mut Vec<F>) {
    planes.resize(grid.buffer_len(s.cin), F::zero());
    let plane = s.h * s.w;
    for (c, dst) in planes.chunks_mut(grid.stride).take(s.cin).enumerate() {
        let src = &img[c * plane..][..plane];
        place_plane(src, (s.h, s.w), (s.pad_top, s.pad_left), grid.wp, dst);
    }
}

/// Copies the valid positions of a block's grid sums into its output rows (`OH·OW` values per
/// channel), adding the bias.
fn write_block<F: Real>(
    sums: &[F],
    grid: &Grid,
    s: &ConvShape,
    bias: Option<&[F]>,
    out: &mut ArrayViewMut2<F>,
) {
    for (j, mut row) in out.outer_iter_mut().enumerate() {
        let b = bias.map_or(F::zero(), |b| b[j]);
        let dst = row.as_slice_mut().expect("contiguous output rows");
        let src = &sums[j * grid.positions..];
        for (oy, d) in dst.chunks_exact_mut(s.ow).enumerate() {
            for (d, &v) in d.iter_mut().zip(&src[oy * grid.wp..][..s.ow]) {
                *d = v + b;
            }
        }
    }
}

/// The grid sums of one block of [`OUT_BLOCK`] output channels of one image.
struct ForwardBlock<'a, F> {
    /// The image's padded planes.
    planes: &'a [F],
    /// Per patch row `(c, tap)`: where its shifted plane starts in `planes`.
    offsets: &'a [usize],
    /// The block's packed weight: one row of [`OUT_BLOCK`] values per patch row.
    weights: &'a [F],
    /// [`OUT_BLOCK`] rows of `row` grid sums.
    sums: &'a mut [F],
    /// Grid positions per channel (a multiple of every vector width).
    row: usize,
}

impl<F: Real> Kernel for ForwardBlock<'_, F> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(mut self, simd: S) {
        if wide_registers::<F, S>() {
            self.sweep::<S, OUT_BLOCK>(simd, 0);
        } else {
            // 16 registers: two half blocks of 12 accumulators each.
            self.sweep::<S, { OUT_BLOCK / 2 }>(simd, 0);
            self.sweep::<S, { OUT_BLOCK / 2 }>(simd, OUT_BLOCK / 2);
        }
    }
}

impl<F: Real> ForwardBlock<'_, F> {
    /// Channels `first..first + M` of the block over all positions.
    #[inline(always)]
    fn sweep<S: Simd, const M: usize>(&mut self, simd: S, first: usize) {
        let lanes = lanes::<F, S>();
        let vectors = self.row / lanes;
        let mut v = 0;
        while v + POSITION_VECTORS <= vectors {
            self.tile::<S, M, POSITION_VECTORS>(simd, first, v * lanes);
            v += POSITION_VECTORS;
        }
        while v < vectors {
            self.tile::<S, M, 1>(simd, first, v * lanes);
            v += 1;
        }
    }

    /// `M` channels × `N` vectors of positions from `q`: `M·N` accumulators in registers, each
    /// one chain over the patch rows in order.
    #[inline(always)]
    fn tile<S: Simd, const M: usize, const N: usize>(&mut self, simd: S, first: usize, q: usize) {
        let lanes = lanes::<F, S>();
        let zero = F::splat(simd, F::zero());
        let mut acc = [[zero; N]; M];
        for (k, &offset) in self.offsets.iter().enumerate() {
            let x = F::as_lanes::<S>(&self.planes[offset + q..][..N * lanes]).0;
            let x: &[F::Lanes<S>; N] = x.try_into().expect("N whole vectors");
            let w: &[F; M] = self.weights[k * OUT_BLOCK + first..][..M]
                .try_into()
                .expect("M weights");
            for m in 0..M {
                let wv = F::splat(simd, w[m]);
                for u in 0..N {
                    acc[m][u] = F::mul_add_lanes(simd, wv, x[u], acc[m][u]);
                }
            }
        }
        for (m, acc) in acc.iter().enumerate() {
            let dst = &mut self.sums[(first + m) * self.row + q..][..N * lanes];
            F::as_lanes_mut::<S>(dst).0.copy_from_slice(acc);
        }
    }
}

/// Direct ∂L/∂W (OIHW) of a call that [`direct_fits`]: Σ over images and positions of
/// `grad_out[o, q] · padded_x[c, q + offset(tap)]`. The batch is cut into at most
/// [`MAX_GRAD_GROUPS`] fixed groups of images, each run in sub-batches whose planes take about
/// [`GRAD_SCRATCH_BYTES`] ([`Stack`]); the groups' sums are added in group order.
pub(crate) fn backward_weight_direct<F: Real>(
    x: ArrayView4<F>,
    go: ArrayView4<F>,
    s: &ConvShape,
) -> Array4<F> {
    backward_weight_with(x, go, s, Kernels::detect())
}

/// [`backward_weight_direct`] with the given instruction set.
fn backward_weight_with<F: Real>(
    x: ArrayView4<F>,
    go: ArrayView4<F>,
    s: &ConvShape,
    kernels: Kernels,
) -> Array4<F> {
    let x = x.as_standard_layout();
    let go = go.as_standard_layout();
    let (x, go) = (x.view(), go.view());
    let grid = Grid::new(s);
    let per_image = (s.cin + s.cout) * Stack::image_rows(s) * grid.wp * std::mem::size_of::<F>();
    let sub = (GRAD_SCRATCH_BYTES / per_image).clamp(1, s.batch);
    let groups = s.batch.div_ceil(sub).min(MAX_GRAD_GROUPS);
    let per_group = s.batch.div_ceil(groups);
    let partials: Vec<Vec<F>> = (0..s.batch)
        .step_by(per_group)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map_init(
            || (Vec::new(), Vec::new()),
            |(xs, gs), start| {
                let mut sums = vec![F::zero(); s.cout * s.cin * TAPS];
                let end = (start + per_group).min(s.batch);
                for first in (start..end).step_by(sub) {
                    let images = first..(first + sub).min(end);
                    let stack = Stack::new(s, &grid, images.len());
                    stack.fill((&x, &go), s, &grid, images, (xs, gs));
                    kernels.dispatch(GradSubBatch {
                        x: xs,
                        go: gs,
                        s,
                        grid: &grid,
                        stack: &stack,
                        sums: &mut sums,
                    });
                }
                sums
            },
        )
        .collect();
    let mut total = Array4::zeros((s.cout, s.cin, 3, 3));
    let flat = total.as_slice_mut().expect("fresh array");
    for p in &partials {
        flat.iter_mut().zip(p).for_each(|(t, &v)| *t += v);
    }
    total
}

/// The layout of one weight-gradient sub-batch: per channel, the images' padded planes one
/// below the other, consecutive images sharing up to two of their zero padding rows, and the
/// output gradients on the same rows (zero off the valid positions). One run of vectors then
/// covers every image of a channel: no per-image loop, and one sum across lanes per
/// sub-batch. An output row of image `b` reads input rows of image `b` only; the rows between
/// two images' outputs have a zero gradient.
#[derive(Debug, Clone, Copy)]
struct Stack {
    /// Rows from one image's first padded row to the next image's.
    rows: usize,
    /// Positions of one channel's gradients, rounded up to whole vectors.
    positions: usize,
    /// Distance between channels of the input stack: the positions plus the taps' reach.
    x_stride: usize,
    /// Images in the sub-batch.
    images: usize,
}

impl Stack {
    /// Rows per image: the padded height less the zero rows shared with the next image
    /// (at most 2, so that the `oh` output rows and the zero gradient rows below them fit).
    fn image_rows(s: &ConvShape) -> usize {
        let pad_bottom = s.oh + 2 - s.h - s.pad_top;
        let shared = s.pad_top.min(pad_bottom).min(2);
        s.h + s.pad_top + pad_bottom - shared
    }

    fn new(s: &ConvShape, grid: &Grid, images: usize) -> Self {
        let rows = Self::image_rows(s);
        let positions = (images * rows * grid.wp).next_multiple_of(MAX_LANES);
        Stack {
            rows,
            positions,
            x_stride: positions + 2 * grid.wp + MAX_LANES,
            images,
        }
    }

    /// Writes the padded inputs and the gradients of `images` into `xs` and `gs`.
    fn fill<F: Real>(
        &self,
        (x, go): (&ArrayView4<F>, &ArrayView4<F>),
        s: &ConvShape,
        grid: &Grid,
        images: std::ops::Range<usize>,
        (xs, gs): (&mut Vec<F>, &mut Vec<F>),
    ) {
        xs.resize(s.cin * self.x_stride, F::zero());
        gs.resize(s.cout * self.positions, F::zero());
        let (in_plane, out_plane, step) = (s.h * s.w, s.oh * s.ow, self.rows * grid.wp);
        let padded = (s.oh + 2) * grid.wp;
        for (c, dst) in xs.chunks_exact_mut(self.x_stride).enumerate() {
            for (b, n) in images.clone().enumerate() {
                let src = &image(x, n)[c * in_plane..][..in_plane];
                let plane = &mut dst[b * step..][..padded];
                place_plane(src, (s.h, s.w), (s.pad_top, s.pad_left), grid.wp, plane);
            }
            dst[(self.images - 1) * step + padded..].fill(F::zero());
        }
        for (o, dst) in gs.chunks_exact_mut(self.positions).enumerate() {
            for (b, n) in images.clone().enumerate() {
                let src = &image(go, n)[o * out_plane..][..out_plane];
                place_plane(
                    src,
                    (s.oh, s.ow),
                    (0, 0),
                    grid.wp,
                    &mut dst[b * step..][..step],
                );
            }
            dst[self.images * step..].fill(F::zero());
        }
    }
}

/// One sub-batch of the weight gradient, added to `sums` (`Cout × Cin × 9`).
struct GradSubBatch<'a, F> {
    x: &'a [F],
    go: &'a [F],
    s: &'a ConvShape,
    grid: &'a Grid,
    stack: &'a Stack,
    sums: &'a mut [F],
}

impl<F: Real> Kernel for GradSubBatch<'_, F> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(mut self, simd: S) {
        let block = if wide_registers::<F, S>() {
            GRAD_BLOCK
        } else {
            1
        };
        for c in 0..self.s.cin {
            let mut o = 0;
            while o + block <= self.s.cout {
                if block == GRAD_BLOCK {
                    self.tile::<S, GRAD_BLOCK>(simd, c, o);
                } else {
                    self.tile::<S, 1>(simd, c, o);
                }
                o += block;
            }
            while o < self.s.cout {
                self.tile::<S, 1>(simd, c, o);
                o += 1;
            }
        }
    }
}

impl<F: Real> GradSubBatch<'_, F> {
    /// `∂L/∂W[o..o + M, c, ·]` over the sub-batch: `M × 9` accumulators, each one chain over
    /// the stacked positions in order, then summed across lanes.
    #[inline(always)]
    fn tile<S: Simd, const M: usize>(&mut self, simd: S, c: usize, o: usize) {
        let Stack {
            positions,
            x_stride,
            ..
        } = *self.stack;
        let grid = self.grid;
        let x = &self.x[c * x_stride..][..x_stride];
        let x: [&[F::Lanes<S>]; TAPS] =
            std::array::from_fn(|t| F::as_lanes::<S>(&x[grid.tap_offset(t)..][..positions]).0);
        let g: [&[F::Lanes<S>]; M] = std::array::from_fn(|m| {
            F::as_lanes::<S>(&self.go[(o + m) * positions..][..positions]).0
        });
        let zero = F::splat(simd, F::zero());
        let mut acc = [[zero; TAPS]; M];
        for v in 0..positions / lanes::<F, S>() {
            let gv: [F::Lanes<S>; M] = std::array::from_fn(|m| g[m][v]);
            for t in 0..TAPS {
                let xv = x[t][v];
                for m in 0..M {
                    acc[m][t] = F::mul_add_lanes(simd, gv[m], xv, acc[m][t]);
                }
            }
        }
        for (m, acc) in acc.iter().enumerate() {
            let dst = &mut self.sums[((o + m) * self.s.cin + c) * TAPS..][..TAPS];
            for (d, &a) in dst.iter_mut().zip(acc) {
                *d += F::reduce_lanes(simd, a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::ConvGeometry;
    use ndarray::Array1;
    use ndarray_rand::rand_distr::Uniform;
    use ndarray_rand::RandomExt;

    fn random(shape: (usize, usize, usize, usize), seed: u64) -> Array4<f64> {
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
        Array4::random_using(shape, Uniform::new(-1.0, 1.0).unwrap(), &mut rng)
    }

    /// The input value read by output `(oy, ox)` through tap `(ki, kj)`, or zero in the
    /// padding: the definition of a padded correlation.
    fn read(x: &Array4<f64>, s: &ConvShape, n: usize, c: usize, y: usize, x0: usize) -> f64 {
        let iy = y as isize - s.pad_top as isize;
        let ix = x0 as isize - s.pad_left as isize;
        let inside = iy >= 0 && ix >= 0 && (iy as usize) < s.h && (ix as usize) < s.w;
        if inside {
            x[[n, c, iy as usize, ix as usize]]
        } else {
            0.0
        }
    }

    fn naive_forward(
        x: &Array4<f64>,
        w: &Array4<f64>,
        b: &Array1<f64>,
        s: &ConvShape,
    ) -> Array4<f64> {
        Array4::from_shape_fn((s.batch, s.cout, s.oh, s.ow), |(n, o, oy, ox)| {
            let mut sum = b[o];
            for ((c, ki, kj), &wv) in w.index_axis(Axis(0), o).indexed_iter() {
                sum += wv * read(x, s, n, c, oy + ki, ox + kj);
            }
            sum
        })
    }

    fn naive_weight_grad(x: &Array4<f64>, go: &Array4<f64>, s: &ConvShape) -> Array4<f64> {
        Array4::from_shape_fn((s.cout, s.cin, 3, 3), |(o, c, ki, kj)| {
            let mut sum = 0.0;
            for ((n, oy, ox), &g) in go.index_axis(Axis(1), o).indexed_iter() {
                sum += g * read(x, s, n, c, oy + ki, ox + kj);
            }
            sum
        })
    }

    /// Shapes `(batch, cin, cout, h, w, pad)`: channel counts off every block size, maps
    /// narrower than a vector, padding 0–4 (above 2, stacked images share only two of their
    /// zero rows), one image and several.
    const SHAPES: [(usize, usize, usize, usize, usize, usize); 9] = [
        (3, 2, 4, 5, 4, 3),
        (2, 3, 7, 3, 6, 4),
        (1, 1, 1, 3, 3, 0),
        (2, 3, 5, 7, 6, 1),
        (1, 4, 9, 4, 11, 1),
        (3, 2, 17, 9, 9, 2),
        (5, 7, 3, 5, 8, 0),
        (2, 16, 8, 14, 14, 1),
        (1, 5, 25, 2, 3, 2),
    ];

    fn shape(&(n, cin, cout, h, w, p): &(usize, usize, usize, usize, usize, usize)) -> ConvShape {
        ConvGeometry::default()
            .padding(p, p)
            .resolve([n, cin, h, w], [cout, cin, 3, 3])
            .expect("valid test shape")
    }

    fn max_diff(a: &Array4<f64>, b: &Array4<f64>) -> f64 {
        assert_eq!(a.dim(), b.dim());
        a.iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn forward_and_weight_gradient_equal_the_definition_on_every_instruction_set() {
        for (i, dims) in SHAPES.iter().enumerate() {
            let s = shape(dims);
            let x = random((s.batch, s.cin, s.h, s.w), i as u64);
            let w = random((s.cout, s.cin, 3, 3), 100 + i as u64);
            let go = random((s.batch, s.cout, s.oh, s.ow), 200 + i as u64);
            let b = Array1::from_shape_fn(s.cout, |o| o as f64 - 2.5);
            let want = naive_forward(&x, &w, &b, &s);
            let want_grad = naive_weight_grad(&x, &go, &s);
            for kernels in [Kernels::detect(), Kernels::portable()] {
                let got = forward_with(x.view(), w.view(), Some(b.view()), &s, kernels);
                assert!(max_diff(&got, &want) < 1e-12, "forward {dims:?}");
                let grad = backward_weight_with(x.view(), go.view(), &s, kernels);
                assert!(
                    max_diff(&grad, &want_grad) < 1e-12,
                    "weight gradient {dims:?}"
                );
            }
        }
    }

    #[test]
    fn results_are_bit_identical_on_one_and_two_threads() {
        let s = shape(&(9, 6, 19, 10, 12, 1));
        let x = random((s.batch, s.cin, s.h, s.w), 7).mapv(|v| v as f32);
        let w = random((s.cout, s.cin, 3, 3), 8).mapv(|v| v as f32);
        let go = random((s.batch, s.cout, s.oh, s.ow), 9).mapv(|v| v as f32);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let y = forward_direct(x.view(), w.view(), None, &s);
                let g = backward_weight_direct(x.view(), go.view(), &s);
                (y, g)
            })
        };
        let (one, two) = (run(1), run(2));
        assert_eq!(one.0, two.0);
        assert_eq!(one.1, two.1);
    }
}
