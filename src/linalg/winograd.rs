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
//! (36 × Cout × tiles).
//!
//! # Determinism
//! Blocks depend only on the shapes, and every output element is produced by one block with a
//! fixed summation order, so results are bit-identical on any number of threads.

use ndarray::{Array4, ArrayView1, ArrayView2, ArrayView4, ArrayViewMut3, Axis};
use rayon::prelude::*;

use super::{gemm, matrix_mut, Real};
use crate::geometry::ConvShape;

/// Output tile side `m` of F(m×m, 3×3).
const M: usize = 4;
/// Input tile side `n = m + 2`.
const N: usize = 6;
/// Positions ξ of the transformed tile.
const XI: usize = N * N;
/// Target size of one block's transformed input `V`, in bytes (fits the 2 MiB L2 with `M`).
const BLOCK_BYTES: usize = 1 << 20;
/// Fewest tiles per block (a smaller GEMM width re-reads `U` too often).
const MIN_BLOCK_TILES: usize = 16;

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

    /// `U_ξ` as a `Cout × Cin` matrix.
    fn matrix(&self, xi: usize) -> ArrayView2<'_, F> {
        let len = self.cout * self.cin;
        ArrayView2::from_shape((self.cout, self.cin), &self.u[xi * len..(xi + 1) * len])
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

/// `Bᵀ d` for one column (or row) `d` of six values.
#[inline(always)]
fn input_1d<F: Real>(d: [F; N]) -> [F; N] {
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
fn output_1d<F: Real>(m: [F; N]) -> [F; M] {
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

/// One band of the output: image `n`, tile row `ty`, and its `(Cout, ≤4, OW)` view.
type Band<'a, F> = (usize, usize, ArrayViewMut3<'a, F>);

/// Per-worker scratch: the block's transformed input `V` and products `M`.
#[derive(Default)]
struct Scratch<F> {
    v: Vec<F>,
    m: Vec<F>,
}

/// Dense F(4×4, 3×3) forward of a stride-1, dilation-1, 3×3 correlation: `u` is the
/// transformed weight of the layer, `s` the resolved call (any padding).
pub(crate) fn forward_winograd<F: Real>(
    x: ArrayView4<F>,
    u: &WinogradWeight<F>,
    bias: Option<ArrayView1<F>>,
    s: &ConvShape,
) -> Array4<F> {
    debug_assert!(s.kh == 3 && s.kw == 3 && s.stride == (1, 1) && s.dilation == (1, 1));
    debug_assert_eq!((u.cout, u.cin), (s.cout, s.cin));
    let x = x.as_standard_layout();
    let x = x.view();
    let mut out = Array4::<F>::zeros((s.batch, s.cout, s.oh, s.ow));
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
    blocks
        .into_par_iter()
        .for_each_init(Scratch::default, |scratch, block| {
            run_block(&x, u, bias.as_ref(), s, block, scratch);
        });
    out
}

/// Tile rows per block: `V` of about [`BLOCK_BYTES`], at least [`MIN_BLOCK_TILES`] tiles.
fn block_tile_rows<F>(s: &ConvShape) -> usize {
    let tiles_per_row = s.ow.div_ceil(M);
    let per_tile = XI * s.cin * std::mem::size_of::<F>();
    let tiles = (BLOCK_BYTES / per_tile).max(MIN_BLOCK_TILES);
    (tiles / tiles_per_row).max(1)
}

/// Input transform, 36 GEMMs and output transform of one block of bands.
fn run_block<F: Real>(
    x: &ArrayView4<F>,
    u: &WinogradWeight<F>,
    bias: Option<&ArrayView1<F>>,
    s: &ConvShape,
    mut block: Vec<Band<'_, F>>,
    scratch: &mut Scratch<F>,
) {
    let tw = s.ow.div_ceil(M);
    let tiles = block.len() * tw;
    scratch.v.resize(XI * s.cin * tiles, F::zero());
    scratch.m.resize(XI * s.cout * tiles, F::zero());
    for (b, &(n, ty, _)) in block.iter().enumerate() {
        transform_band(x, s, n, ty, b * tw, tiles, &mut scratch.v);
    }
    for xi in 0..XI {
        let v_len = s.cin * tiles;
        let v = ArrayView2::from_shape((s.cin, tiles), &scratch.v[xi * v_len..(xi + 1) * v_len])
            .expect("V holds 36 Cin×tiles matrices");
        let m_len = s.cout * tiles;
        let mut m = matrix_mut(&mut scratch.m[xi * m_len..(xi + 1) * m_len], s.cout, tiles);
        gemm(F::one(), &u.matrix(xi), &v, F::zero(), &mut m);
    }
    for (b, (_, _, band)) in block.iter_mut().enumerate() {
        inverse_band(&scratch.m, s.cout, b * tw, tiles, bias, band);
    }
}

/// Input transform of the `tw` tiles of tile row `ty` of image `n`, every input channel, into
/// columns `t0..t0 + tw` of `V` (`v[(ξ·Cin + i)·tiles + t]`); zeros outside the image.
fn transform_band<F: Real>(
    x: &ArrayView4<F>,
    s: &ConvShape,
    n: usize,
    ty: usize,
    t0: usize,
    tiles: usize,
    v: &mut [F],
) {
    let tw = s.ow.div_ceil(M);
    let plane = s.h * s.w;
    let image = &x.as_slice().expect("standard layout")[n * s.cin * plane..(n + 1) * s.cin * plane];
    let y0 = (ty * M) as isize - s.pad_top as isize;
    for i in 0..s.cin {
        let chan = &image[i * plane..(i + 1) * plane];
        for tx in 0..tw {
            let x0 = (tx * M) as isize - s.pad_left as isize;
            let mut d = [F::zero(); XI];
            for r in 0..N {
                let iy = y0 + r as isize;
                if iy < 0 || iy >= s.h as isize {
                    continue;
                }
                let row = &chan[iy as usize * s.w..(iy as usize + 1) * s.w];
                for c in 0..N {
                    let ix = x0 + c as isize;
                    if ix >= 0 && ix < s.w as isize {
                        d[r * N + c] = row[ix as usize];
                    }
                }
            }
            let t = t0 + tx;
            for (xi, &val) in input_tile(&d).iter().enumerate() {
                v[(xi * s.cin + i) * tiles + t] = val;
            }
        }
    }
}

/// Output transform of one band's tiles (columns `t0..` of `M`), bias added, valid outputs
/// stored into the band's `(Cout, rows, OW)` view.
fn inverse_band<F: Real>(
    m: &[F],
    cout: usize,
    t0: usize,
    tiles: usize,
    bias: Option<&ArrayView1<F>>,
    band: &mut ArrayViewMut3<'_, F>,
) {
    let (_, rows, ow) = band.dim();
    for o in 0..cout {
        let b = bias.map_or(F::zero(), |b| b[o]);
        let mut plane = band.index_axis_mut(Axis(0), o);
        for tx in 0..ow.div_ceil(M) {
            let t = t0 + tx;
            let mt: [F; XI] = std::array::from_fn(|xi| m[(xi * cout + o) * tiles + t]);
            let y = output_tile(&mt);
            let cols = M.min(ow - tx * M);
            for r in 0..rows {
                for c in 0..cols {
                    plane[[r, tx * M + c]] = y[r * M + c] + b;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
