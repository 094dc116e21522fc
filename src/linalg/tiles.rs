//! How NCHW activations are cut into per-task pieces: images as flat slices, output tiles of
//! positions, per-channel reductions.

use ndarray::{Array1, Array4, ArrayView1, ArrayView4, ArrayViewMut2, ArrayViewMut3, Axis};
use rayon::prelude::*;

use super::Real;

/// The shape of a 4-D view as an array.
pub(crate) fn dims4<F>(x: &ArrayView4<F>) -> [usize; 4] {
    let d = x.shape();
    [d[0], d[1], d[2], d[3]]
}

/// Image `n` of a standard-layout NCHW array as a flat slice.
pub(crate) fn image<'a, F>(x: &'a ArrayView4<'a, F>, n: usize) -> &'a [F] {
    let per_image = x.len() / x.shape()[0];
    &x.as_slice().expect("standard layout")[n * per_image..(n + 1) * per_image]
}

/// Splits an `(N, C, P)` output into disjoint `(C, tile)` views, one task per image and tile
/// of positions: `(image, first position, view)`.
pub(crate) fn output_tiles<'a, F>(
    out: ArrayViewMut3<'a, F>,
    tile: usize,
) -> Vec<(usize, usize, ArrayViewMut2<'a, F>)> {
    let (batch, _, positions) = out.dim();
    let mut tasks = Vec::new();
    let mut images = out;
    for n in 0..batch {
        let (head, tail) = images.split_at(Axis(0), 1);
        images = tail;
        let mut rest = head.index_axis_move(Axis(0), 0);
        let mut p0 = 0;
        while p0 < positions {
            let width = tile.min(positions - p0);
            let (out_tile, tail) = rest.split_at(Axis(1), width);
            tasks.push((n, p0, out_tile));
            rest = tail;
            p0 += width;
        }
    }
    tasks
}

/// Per channel, the sum of an NCHW tensor over batch and positions (the bias gradient).
pub(crate) fn channel_sums<F: Real>(go: ArrayView4<F>) -> Array1<F> {
    let cout = go.shape()[1];
    (0..cout)
        .into_par_iter()
        .map(|o| {
            go.index_axis(Axis(1), o)
                .iter()
                .fold(F::zero(), |a, &v| a + v)
        })
        .collect::<Vec<F>>()
        .into()
}

/// `out[c, ·] += bias[c]` on a `(C, positions)` block of an output, when there is a bias.
pub(crate) fn add_bias<F: Real>(mut out: ArrayViewMut2<'_, F>, bias: Option<&ArrayView1<'_, F>>) {
    if let Some(b) = bias {
        for (mut row, &bo) in out.outer_iter_mut().zip(b.iter()) {
            row += bo;
        }
    }
}

/// The weight of the input-gradient correlation of an OIHW `weight`: kernel `(i, o)` is
/// kernel `(o, i)` rotated by 180°, `W'[i, o, r, c] = W[o, i, kh−1−r, kw−1−c]` (`Cin` outputs,
/// `Cout` inputs; run with [`ConvShape::adjoint`](crate::geometry::ConvShape::adjoint)).
pub(crate) fn adjoint_weight<F: Copy>(weight: ArrayView4<F>) -> Array4<F> {
    let (cout, cin, kh, kw) = weight.dim();
    Array4::from_shape_fn((cin, cout, kh, kw), |(i, o, r, c)| {
        weight[[o, i, kh - 1 - r, kw - 1 - c]]
    })
}
