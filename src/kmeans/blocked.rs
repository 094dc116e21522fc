//! Rows in `f64` blocks, coordinate-major inside a block, and the vectorised squared-distance
//! kernels of seeding and assignment.
//!
//! Every kernel computes a row's squared distance as `Σ_j (x_j − c_j)²` in `f64`, in
//! coordinate order, with separate multiplies and adds — the arithmetic of
//! [`super::sq_dist`] — so scalar and vector instruction sets give the same bits, and a
//! distance from a kernel equals one computed row by row.

use ndarray::ArrayView2;
use pulp::Simd;
use rayon::prelude::*;

use super::row;
use crate::linalg::simd::Kernel;
use crate::linalg::Real;

/// Rows per block: a multiple of [`GROUP`] vectors of every width (8 `f64` with AVX-512), so
/// a block is a whole number of vector groups.
pub(crate) const BLOCK: usize = 64;

/// Partial sums are kept in this many interleaved accumulators (row `r` goes to `r mod 8`),
/// whatever the vector width, so sums are the same on every instruction set.
const SUM_LANES: usize = 8;

/// The rows of a matrix in `f64`, in blocks of [`BLOCK`] rows; inside a block, coordinate
/// `j` of row `r` is at `j·BLOCK + r`. The last block is padded with zero rows.
pub(crate) struct Blocked {
    d: usize,
    values: Vec<f64>,
}

impl Blocked {
    /// Copies `data` (standard layout) into blocks.
    pub fn new<F: Real>(data: &ArrayView2<F>) -> Self {
        let (n, d) = data.dim();
        let mut values = vec![0.0; n.div_ceil(BLOCK) * BLOCK * d];
        values
            .par_chunks_mut(BLOCK * d)
            .enumerate()
            .for_each(|(b, block)| {
                for r in 0..BLOCK.min(n - b * BLOCK) {
                    for (j, &v) in row(data, b * BLOCK + r).iter().enumerate() {
                        block[j * BLOCK + r] = v.to_f64_exact();
                    }
                }
            });
        Blocked { d, values }
    }

    /// Number of blocks.
    pub fn blocks(&self) -> usize {
        self.values.len() / (BLOCK * self.d)
    }

    /// Block `b`: `d × BLOCK` values.
    pub fn block(&self, b: usize) -> &[f64] {
        &self.values[b * BLOCK * self.d..][..BLOCK * self.d]
    }
}

/// Vectors computed together: independent accumulators hide the add latency.
const GROUP: usize = 4;

/// Squared distances of the rows of vectors `v..v + GROUP` of a block (`columns`: the
/// block's `d × BLOCK` values as vectors) to `center`.
#[inline(always)]
fn sq_dists<S: Simd>(simd: S, columns: &[S::f64s], v: usize, center: &[f64]) -> [S::f64s; GROUP] {
    let mut acc = [simd.splat_f64s(0.0); GROUP];
    for (j, &c) in center.iter().enumerate() {
        let c = simd.splat_f64s(c);
        let x = &columns[j * vectors::<S>() + v..][..GROUP];
        for (a, &x) in acc.iter_mut().zip(x) {
            let t = simd.sub_f64s(x, c);
            *a = simd.add_f64s(*a, simd.mul_f64s(t, t));
        }
    }
    acc
}

/// Vectors per block for the instruction set `S`.
#[inline(always)]
fn vectors<S: Simd>() -> usize {
    BLOCK / S::F64_LANES
}

/// k-means++ candidate evaluation over a run of blocks. For every candidate `t` and row
/// `i`, the row's new distance is `min(closest[i], min over the candidate's copies of
/// ‖x_i − copy‖²)`; returns each candidate's Σ of those (times the row's weight, when there
/// are weights) over the rows (per [`SUM_LANES`] accumulators, combined in accumulator
/// order). With `update`, the (single) candidate's new distances are written into
/// `closest`.
pub(crate) struct CandidateDistances<'a> {
    pub data: &'a Blocked,
    /// The blocks this call covers.
    pub blocks: std::ops::Range<usize>,
    /// Every copy of every candidate, `candidates · copies_per` rows of `d` values.
    pub copies: &'a [f64],
    pub copies_per: usize,
    /// Current nearest-centre distances of the covered rows (padding rows 0).
    pub closest: &'a mut [f64],
    /// Row weights of the covered rows (padding rows 0), or `None` for unit weights.
    pub weights: Option<&'a [f64]>,
    pub update: bool,
}

impl Kernel for CandidateDistances<'_> {
    type Output = Vec<f64>;

    #[inline(always)]
    fn run<S: Simd>(self, simd: S) -> Vec<f64> {
        let d = self.data.d;
        let groups = SUM_LANES / S::F64_LANES;
        let closest = S::as_mut_simd_f64s(self.closest).0;
        let weights = self.weights.map(|w| S::as_simd_f64s(w).0);
        let candidates = self.copies.len() / (self.copies_per * d);
        let mut acc = vec![[simd.splat_f64s(0.0); SUM_LANES]; candidates];
        // Blocks outside, candidates inside: a block stays in L1 while every candidate is
        // measured against it. Loops, not closures: closures do not inherit the instruction
        // set of `run`.
        for (local, b) in self.blocks.clone().enumerate() {
            let block = S::as_simd_f64s(self.data.block(b)).0;
            for v0 in (0..vectors::<S>()).step_by(GROUP) {
                let at = local * vectors::<S>() + v0;
                for (t, copies) in self.copies.chunks_exact(self.copies_per * d).enumerate() {
                    let mut nearest = [simd.splat_f64s(f64::INFINITY); GROUP];
                    for copy in copies.chunks_exact(d) {
                        let dists = sq_dists(simd, block, v0, copy);
                        for (n, dist) in nearest.iter_mut().zip(dists) {
                            *n = simd.min_f64s(*n, dist);
                        }
                    }
                    for (u, n) in nearest.into_iter().enumerate() {
                        let dist = simd.min_f64s(closest[at + u], n);
                        if self.update {
                            closest[at + u] = dist;
                        }
                        let lane = (v0 + u) % groups;
                        let term = match weights {
                            Some(w) => simd.mul_f64s(dist, w[at + u]),
                            None => dist,
                        };
                        acc[t][lane] = simd.add_f64s(acc[t][lane], term);
                    }
                }
            }
        }
        let mut pots = Vec::with_capacity(candidates);
        for a in &acc {
            pots.push(sum_lanes(&a[..groups]));
        }
        pots
    }
}

/// Σ of the [`SUM_LANES`] accumulators held in `acc` (lane `l` of vector `g` is
/// accumulator `g·lanes + l`), in accumulator order.
fn sum_lanes<V: pulp::bytemuck::Pod>(acc: &[V]) -> f64 {
    let values: &[f64] = pulp::bytemuck::cast_slice(acc);
    values.iter().fold(0.0, |s, &v| s + v)
}

/// Nearest and second-nearest centre of each row of a block, over all `centers`
/// (`m` rows of `d` values, row-major). Ties go to the lower centre index.
pub(crate) struct NearestTwo<'a> {
    /// `d × BLOCK` values.
    pub block: &'a [f64],
    pub centers: &'a [f64],
    /// Squared distance to the nearest centre, per row.
    pub best: &'a mut [f64; BLOCK],
    /// Squared distance to the second-nearest centre (∞ with one centre), per row.
    pub second: &'a mut [f64; BLOCK],
    /// Index of the nearest centre, per row (as `f64`, exact below 2⁵³).
    pub label: &'a mut [f64; BLOCK],
}

impl Kernel for NearestTwo<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, simd: S) {
        let d = self.block.len() / BLOCK;
        let best = S::as_mut_simd_f64s(self.best).0;
        let second = S::as_mut_simd_f64s(self.second).0;
        let label = S::as_mut_simd_f64s(self.label).0;
        let block = S::as_simd_f64s(self.block).0;
        for v0 in (0..vectors::<S>()).step_by(GROUP) {
            let mut b = [simd.splat_f64s(f64::INFINITY); GROUP];
            let mut s = b;
            let mut l = [simd.splat_f64s(0.0); GROUP];
            for (e, center) in self.centers.chunks_exact(d).enumerate() {
                let e = simd.splat_f64s(e as f64);
                let dists = sq_dists(simd, block, v0, center);
                for u in 0..GROUP {
                    let dist = dists[u];
                    let closer = simd.less_than_f64s(dist, b[u]);
                    let second_closer = simd.less_than_f64s(dist, s[u]);
                    s[u] =
                        simd.select_f64s(closer, b[u], simd.select_f64s(second_closer, dist, s[u]));
                    b[u] = simd.select_f64s(closer, dist, b[u]);
                    l[u] = simd.select_f64s(closer, e, l[u]);
                }
            }
            best[v0..v0 + GROUP].copy_from_slice(&b);
            second[v0..v0 + GROUP].copy_from_slice(&s);
            label[v0..v0 + GROUP].copy_from_slice(&l);
        }
    }
}
