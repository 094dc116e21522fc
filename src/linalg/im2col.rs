//! Tiled im2col / col2im: the patch matrix of a range of output positions of one image.
//!
//! The patch matrix has `cin·kh·kw` rows (channel-major, then kernel row, then kernel column,
//! matching a row-major OIHW weight flattened to `(cout, cin·kh·kw)`) and one column per
//! output position in the tile. Only a tile is ever materialised, which bounds scratch memory.

use ndarray::ArrayView2;

use super::taps::Span;
use super::Real;
use crate::geometry::ConvShape;

/// Scratch budget for one patch-matrix tile, in bytes (per worker thread).
pub(crate) const TILE_SCRATCH_BYTES: usize = 4 << 20;
/// Fewest output positions per tile, so GEMMs stay efficient for very deep inputs.
pub(crate) const MIN_TILE_POSITIONS: usize = 64;

/// Output positions per tile for this shape: as many as fit the scratch budget, at least
/// [`MIN_TILE_POSITIONS`], at most all of them.
pub(crate) fn tile_positions<F>(s: &ConvShape) -> usize {
    let per_position = s.patch_len().max(1) * std::mem::size_of::<F>();
    (TILE_SCRATCH_BYTES / per_position)
        .max(MIN_TILE_POSITIONS)
        .min(s.out_positions())
        .max(1)
}

/// Fewest output tiles a forward pass is split into, so that small batches (one image is one
/// tile otherwise) still keep several threads busy. A fixed number, not the thread count: the
/// split must not depend on the pool for results to be thread-count independent.
pub(crate) const MIN_FORWARD_TASKS: usize = 4;

/// [`tile_positions`], further split for batches smaller than [`MIN_FORWARD_TASKS`].
pub(crate) fn forward_tile_positions<F>(s: &ConvShape) -> usize {
    let per_image = MIN_FORWARD_TASKS.div_ceil(s.batch.max(1));
    let split = s
        .out_positions()
        .div_ceil(per_image)
        .max(MIN_TILE_POSITIONS);
    tile_positions::<F>(s).min(split).max(1)
}

/// One run of consecutive output positions on the same output row, for one patch row.
struct Segment {
    /// Patch-matrix row `(c·kh + ki)·kw + kj`.
    row: usize,
    /// Column offset inside the tile.
    col: usize,
    /// Number of positions in the run.
    len: usize,
    /// Input channel.
    channel: usize,
    /// Input row, or `None` when the whole run lies in the vertical padding.
    input_row: Option<usize>,
    /// Output column of the first position.
    first_out_col: usize,
    /// Horizontal kernel offset minus the left padding: `ix = ox·sw + dx`.
    dx: isize,
}

impl Segment {
    /// The positions of the run whose input column `(first_out_col + j)·sw + dx` lies inside
    /// the image (the others read the zero padding). Consecutive valid positions are `sw`
    /// input columns apart.
    #[inline]
    fn valid(&self, stride_w: usize, width: usize) -> Span {
        let offset = (self.first_out_col * stride_w) as isize + self.dx;
        Span::valid(offset, stride_w, width, self.len)
    }
}

/// Calls `visit` for every (patch row, output-row run) of the tile `[p0, p0 + width)`.
fn walk_segments(s: &ConvShape, p0: usize, width: usize, mut visit: impl FnMut(&Segment)) {
    let (sh, _) = s.stride;
    let (dh, dw) = s.dilation;
    for channel in 0..s.cin {
        for ki in 0..s.kh {
            for kj in 0..s.kw {
                let row = (channel * s.kh + ki) * s.kw + kj;
                let dx = (kj * dw) as isize - s.pad_left as isize;
                let mut col = 0;
                while col < width {
                    let p = p0 + col;
                    let (oy, first_out_col) = (p / s.ow, p % s.ow);
                    let len = (s.ow - first_out_col).min(width - col);
                    let iy = (oy * sh + ki * dh) as isize - s.pad_top as isize;
                    let input_row = (iy >= 0 && (iy as usize) < s.h).then_some(iy as usize);
                    visit(&Segment {
                        row,
                        col,
                        len,
                        channel,
                        input_row,
                        first_out_col,
                        dx,
                    });
                    col += len;
                }
            }
        }
    }
}

/// Fills `col` (row-major, `patch_len × width`) with the patches of positions `[p0, p0+width)`
/// of one image `img` (contiguous `cin·h·w`).
pub(crate) fn im2col_tile<F: Real>(
    img: &[F],
    s: &ConvShape,
    p0: usize,
    width: usize,
    col: &mut [F],
) {
    debug_assert_eq!(col.len(), s.patch_len() * width);
    if whole_rows_stride_1(s, p0, width) {
        return im2col_shifted_planes(img, s, col);
    }
    let plane = s.h * s.w;
    walk_segments(s, p0, width, |seg| {
        let dst = &mut col[seg.row * width + seg.col..][..seg.len];
        match seg.input_row {
            None => dst.fill(F::zero()),
            Some(iy) => {
                let src = &img[seg.channel * plane + iy * s.w..][..s.w];
                let Span {
                    lo: j0,
                    hi: j1,
                    first_in: ix0,
                } = seg.valid(s.stride.1, s.w);
                dst[..j0].fill(F::zero());
                dst[j1..].fill(F::zero());
                if j0 == j1 {
                    return;
                }
                if s.stride.1 == 1 {
                    dst[j0..j1].copy_from_slice(&src[ix0..ix0 + (j1 - j0)]);
                } else {
                    let taps = src[ix0..].iter().step_by(s.stride.1);
                    for (d, &v) in dst[j0..j1].iter_mut().zip(taps) {
                        *d = v;
                    }
                }
            }
        }
    });
}

/// Adds the patch-matrix tile `col` back into the image gradient `img` (the adjoint of
/// [`im2col_tile`]).
pub(crate) fn col2im_tile<F: Real>(
    col: &[F],
    s: &ConvShape,
    p0: usize,
    width: usize,
    img: &mut [F],
) {
    debug_assert_eq!(col.len(), s.patch_len() * width);
    if whole_rows_stride_1(s, p0, width) {
        return col2im_shifted_planes(col, s, img);
    }
    let plane = s.h * s.w;
    walk_segments(s, p0, width, |seg| {
        let Some(iy) = seg.input_row else { return };
        let src = &col[seg.row * width + seg.col..][..seg.len];
        let dst = &mut img[seg.channel * plane + iy * s.w..][..s.w];
        let span = seg.valid(s.stride.1, s.w);
        if span.is_empty() {
            return;
        }
        let taps = dst[span.first_in..].iter_mut().step_by(s.stride.1);
        for (d, &v) in taps.zip(&src[span.lo..span.hi]) {
            *d += v;
        }
    });
}

/// Whether the tile is the whole output of a stride-1 convolution whose output rows are as
/// wide as the input rows: then every patch row is the input plane shifted by a constant
/// offset, with the wrapped-around border columns zeroed (the fast path of the common
/// "same" 3×3 layer).
fn whole_rows_stride_1(s: &ConvShape, p0: usize, width: usize) -> bool {
    s.stride == (1, 1) && s.ow == s.w && p0 == 0 && width == s.out_positions()
}

/// Shift of patch row `(ki, kj)`: `(dy, dx)` with input `(oy + dy, ox + dx)` for output
/// `(oy, ox)`, and the output rows `oy0..oy1` whose input row is inside the image.
fn shift(s: &ConvShape, ki: usize, kj: usize) -> (isize, isize, usize, usize) {
    let dy = (ki * s.dilation.0) as isize - s.pad_top as isize;
    let dx = (kj * s.dilation.1) as isize - s.pad_left as isize;
    let rows = Span::valid(dy, 1, s.h, s.oh);
    (dy, dx, rows.lo, rows.hi)
}

/// Output columns `ox0..ox1` whose input column `ox + dx` is inside the image.
fn valid_columns(w: usize, dx: isize) -> (usize, usize) {
    let cols = Span::valid(dx, 1, w, w);
    (cols.lo, cols.hi)
}

/// [`im2col_tile`] for [`whole_rows_stride_1`]: one bulk copy per patch row, then the
/// wrapped border columns zeroed. The shifts are worked out once per tap, not per patch row:
/// with rows of 49–784 values, the divisions and span arithmetic per row were as costly as
/// the copies (6 % of a training step, in a profile).
fn im2col_shifted_planes<F: Real>(img: &[F], s: &ConvShape, col: &mut [F]) {
    let (plane, positions) = (s.h * s.w, s.out_positions());
    let shifts: Vec<PlaneShift> = (0..s.kh * s.kw)
        .map(|tap| PlaneShift::new(s, tap / s.kw, tap % s.kw))
        .collect();
    for (c, rows) in col.chunks_exact_mut(positions * shifts.len()).enumerate() {
        let src = &img[c * plane..][..plane];
        for (dst, shift) in rows.chunks_exact_mut(positions).zip(&shifts) {
            shift.fill_row(src, dst, s.w);
        }
    }
}

/// Where patch row `(ki, kj)` of a [`whole_rows_stride_1`] tile reads: destination `j` in
/// `copy` takes source `j + offset`, the rest is zero, and so are the wrapped border columns
/// `(0..ox0) ∪ (ox1..w)` of the destination range `rows`.
struct PlaneShift {
    copy: std::ops::Range<usize>,
    offset: isize,
    rows: std::ops::Range<usize>,
    columns: (usize, usize),
}

impl PlaneShift {
    fn new(s: &ConvShape, ki: usize, kj: usize) -> Self {
        let (w, plane) = (s.w, s.h * s.w);
        let (dy, dx, oy0, oy1) = shift(s, ki, kj);
        let (start, end) = (oy0 * w, oy1 * w);
        let offset = dy * w as isize + dx;
        // Destination indices whose source index j + offset lies in the plane.
        let js = start.max((-offset).max(0) as usize).min(end);
        let je = end.min((plane as isize - offset).max(0) as usize).max(js);
        Self {
            copy: js..je,
            offset,
            rows: start..end,
            columns: valid_columns(w, dx),
        }
    }

    /// Fills one patch row `dst` from the channel plane `src` (rows of `w`).
    fn fill_row<F: Real>(&self, src: &[F], dst: &mut [F], w: usize) {
        let (js, je) = (self.copy.start, self.copy.end);
        dst[..js].fill(F::zero());
        dst[je..].fill(F::zero());
        if je > js {
            let from = (js as isize + self.offset) as usize;
            dst[js..je].copy_from_slice(&src[from..from + (je - js)]);
        }
        // The wrapped border columns (as many as the padding) are zeroed column by column:
        // a `fill` per output row was a libc `memset` call per row, 3 % of a training step.
        let (ox0, ox1) = self.columns;
        for j in (0..ox0).chain(ox1..w) {
            dst[self.rows.clone()]
                .iter_mut()
                .skip(j)
                .step_by(w)
                .for_each(|v| *v = F::zero());
        }
    }
}

/// [`col2im_tile`] for [`whole_rows_stride_1`]: row-by-row shifted additions.
fn col2im_shifted_planes<F: Real>(col: &[F], s: &ConvShape, img: &mut [F]) {
    let (w, plane, positions) = (s.w, s.h * s.w, s.out_positions());
    for (row, src) in col.chunks_exact(positions).enumerate() {
        let (c, ki, kj) = (row / (s.kh * s.kw), (row / s.kw) % s.kh, row % s.kw);
        let dst = &mut img[c * plane..][..plane];
        let (dy, dx, oy0, oy1) = shift(s, ki, kj);
        let (ox0, ox1) = valid_columns(w, dx);
        if ox0 == ox1 {
            continue;
        }
        for oy in oy0..oy1 {
            let iy = (oy as isize + dy) as usize;
            let ix0 = (ox0 as isize + dx) as usize;
            let d = &mut dst[iy * w + ix0..][..ox1 - ox0];
            for (d, &v) in d.iter_mut().zip(&src[oy * w + ox0..oy * w + ox1]) {
                *d += v;
            }
        }
    }
}

/// The patch matrix of a tile: a direct view of the image when im2col is the identity
/// (1×1, stride 1, no padding), otherwise `buf` filled by [`im2col_tile`].
pub(crate) fn patch_matrix<'a, F: Real>(
    img: &'a [F],
    s: &ConvShape,
    p0: usize,
    width: usize,
    buf: &'a mut Vec<F>,
) -> ArrayView2<'a, F> {
    if s.is_pointwise_identity() {
        let full = ArrayView2::from_shape((s.cin, s.out_positions()), img)
            .expect("a contiguous image has cin·h·w elements");
        return full.slice_axis_move(ndarray::Axis(1), ndarray::Slice::from(p0..p0 + width));
    }
    buf.resize(s.patch_len() * width, F::zero());
    im2col_tile(img, s, p0, width, buf);
    ArrayView2::from_shape((s.patch_len(), width), &buf[..]).expect("buffer sized to the tile")
}
