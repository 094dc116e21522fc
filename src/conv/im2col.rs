//! Tiled im2col / col2im: the patch matrix of a range of output positions of one image.
//!
//! The patch matrix has `cin·kh·kw` rows (channel-major, then kernel row, then kernel column,
//! matching a row-major OIHW weight flattened to `(cout, cin·kh·kw)`) and one column per
//! output position in the tile. Only a tile is ever materialised, which bounds scratch memory.

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::geometry::ConvShape;
use crate::scalar::Real;

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
    /// The positions `j0..j1` of the run whose input column `(first_out_col + j)·sw + dx`
    /// lies inside the image (the others read the zero padding), and the input column of
    /// `j0`. Consecutive valid positions are `sw` input columns apart.
    #[inline]
    fn valid(&self, stride_w: usize, width: usize) -> (usize, usize, usize) {
        let sw = stride_w as isize;
        let a = (self.first_out_col as isize) * sw + self.dx;
        let ceil_div = |n: isize| (n + sw - 1).div_euclid(sw);
        let j0 = if a >= 0 { 0 } else { ceil_div(-a) };
        let j1 = ceil_div(width as isize - a).clamp(0, self.len as isize);
        let j0 = (j0 as usize).min(j1 as usize);
        (j0, j1 as usize, (a + j0 as isize * sw).max(0) as usize)
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
    let plane = s.h * s.w;
    walk_segments(s, p0, width, |seg| {
        let dst = &mut col[seg.row * width + seg.col..][..seg.len];
        match seg.input_row {
            None => dst.fill(F::zero()),
            Some(iy) => {
                let src = &img[seg.channel * plane + iy * s.w..][..s.w];
                let (j0, j1, ix0) = seg.valid(s.stride.1, s.w);
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
    let plane = s.h * s.w;
    walk_segments(s, p0, width, |seg| {
        let Some(iy) = seg.input_row else { return };
        let src = &col[seg.row * width + seg.col..][..seg.len];
        let dst = &mut img[seg.channel * plane + iy * s.w..][..s.w];
        let (j0, j1, ix0) = seg.valid(s.stride.1, s.w);
        if j0 == j1 {
            return;
        }
        let taps = dst[ix0..].iter_mut().step_by(s.stride.1);
        for (d, &v) in taps.zip(&src[j0..j1]) {
            *d += v;
        }
    });
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

/// `c = alpha·a·b + beta·c` through ndarray's GEMM (matrixmultiply).
#[inline]
pub(crate) fn gemm<F: Real>(
    alpha: F,
    a: &ArrayView2<F>,
    b: &ArrayView2<F>,
    beta: F,
    c: &mut ArrayViewMut2<F>,
) {
    ndarray::linalg::general_mat_mul(alpha, a, b, beta, c);
}
