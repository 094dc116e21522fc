//! Every centre's nearest centres, for assignment scans that look at a few centres instead
//! of all of them.
//!
//! A row settled near centre `a` is, by the triangle inequality, at least
//! `outside(a) − ‖x − c_a‖` from every centre outside `a`'s list, where `outside(a)` is the
//! distance from `c_a` to the nearest centre not in the list. When the nearest listed centre
//! is closer than that, it is the nearest of all centres.

use pulp::Simd;
use rayon::prelude::*;

use super::sq_dist;
use crate::linalg::simd::Kernel;

/// Centres per list (rounded up to whole vectors by padding with far-away centres).
const LIST: usize = 32;
/// Lanes the list is padded to: the widest `f64` vector (AVX-512).
const PAD: usize = 8;

/// The nearest centres of every centre.
pub(crate) struct Neighbours {
    d: usize,
    /// Entries per list (a multiple of [`PAD`]).
    len: usize,
    /// Per centre, the centre indices of its list, ascending (`u32::MAX` for padding).
    index: Vec<u32>,
    /// Per centre, its list's coordinates, coordinate-major (`d × len`); padding is `+∞`.
    coords: Vec<f64>,
    /// Per centre, the distance to the nearest centre not in its list (`+∞` if none).
    pub outside: Vec<f64>,
    /// Per centre, half the distance to its nearest other centre (Hamerly's `s`).
    pub half_gap: Vec<f64>,
}

impl Neighbours {
    /// Lists for the `m × d` centres `flat` (row-major): the `min(m, 32)` nearest of each
    /// (itself included; ties to the lower index).
    pub fn new(flat: &[f64], d: usize) -> Self {
        let m = flat.len() / d;
        let listed = LIST.min(m);
        let len = listed.next_multiple_of(PAD);
        let per_centre: Vec<(Vec<u32>, Vec<f64>, f64, f64)> = (0..m)
            .into_par_iter()
            .map(|a| {
                let ca = &flat[a * d..][..d];
                let mut by_distance: Vec<(f64, u32)> = flat
                    .chunks_exact(d)
                    .enumerate()
                    .map(|(e, ce)| (sq_dist(ca, ce), e as u32))
                    .collect();
                let order =
                    |x: &(f64, u32), y: &(f64, u32)| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1));
                if listed < m {
                    by_distance.select_nth_unstable_by(listed, order);
                }
                let outside = by_distance
                    .get(listed)
                    .map_or(f64::INFINITY, |o| o.0.sqrt());
                by_distance.truncate(listed);
                let nearest_other = by_distance
                    .iter()
                    .filter(|&&(_, e)| e as usize != a)
                    .map(|o| o.0)
                    .fold(outside * outside, f64::min);
                by_distance.sort_unstable_by_key(|o| o.1);
                let mut index: Vec<u32> = by_distance.iter().map(|o| o.1).collect();
                index.resize(len, u32::MAX);
                let mut coords = vec![f64::INFINITY; d * len];
                for (slot, &(_, e)) in by_distance.iter().enumerate() {
                    for j in 0..d {
                        coords[j * len + slot] = flat[e as usize * d + j];
                    }
                }
                (index, coords, outside, 0.5 * nearest_other.sqrt())
            })
            .collect();
        let mut n = Neighbours {
            d,
            len,
            index: Vec::with_capacity(m * len),
            coords: Vec::with_capacity(m * d * len),
            outside: Vec::with_capacity(m),
            half_gap: Vec::with_capacity(m),
        };
        for (index, coords, outside, half_gap) in per_centre {
            n.index.extend(index);
            n.coords.extend(coords);
            n.outside.push(outside);
            n.half_gap.push(half_gap);
        }
        n
    }

    /// The nearest listed centre of `x` in centre `a`'s list: (squared distance, centre,
    /// squared distance to the second-nearest listed centre).
    pub fn scan(
        &self,
        kernels: crate::linalg::simd::Kernels,
        x: &[f64],
        a: usize,
    ) -> (f64, usize, f64) {
        let mut dists = [0.0; LIST.next_multiple_of(PAD)];
        let dists = &mut dists[..self.len];
        kernels.dispatch(ListDistances {
            x,
            coords: &self.coords[a * self.d * self.len..][..self.d * self.len],
            out: dists,
        });
        let index = &self.index[a * self.len..][..self.len];
        let (mut best, mut second, mut label) = (f64::INFINITY, f64::INFINITY, usize::MAX);
        // The list is in ascending centre order, so strict comparisons keep the lowest index.
        for (&dist, &e) in dists.iter().zip(index) {
            if dist < best {
                second = best;
                best = dist;
                label = e as usize;
            } else if dist < second {
                second = dist;
            }
        }
        (best, label, second)
    }
}

/// Squared distances of `x` to every listed centre (`coords`: `d × len`, coordinate-major),
/// in coordinate order without fused multiply-adds (the arithmetic of every k-means distance).
struct ListDistances<'a> {
    x: &'a [f64],
    coords: &'a [f64],
    out: &'a mut [f64],
}

impl Kernel for ListDistances<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, simd: S) {
        let len = self.out.len();
        let (out, out_tail) = S::as_mut_simd_f64s(self.out);
        for v in out.iter_mut() {
            *v = simd.splat_f64s(0.0);
        }
        out_tail.fill(0.0);
        for (j, &xj) in self.x.iter().enumerate() {
            let (cs, c_tail) = S::as_simd_f64s(&self.coords[j * len..][..len]);
            let xv = simd.splat_f64s(xj);
            for (o, &c) in out.iter_mut().zip(cs) {
                let t = simd.sub_f64s(xv, c);
                *o = simd.add_f64s(*o, simd.mul_f64s(t, t));
            }
            for (o, &c) in out_tail.iter_mut().zip(c_tail) {
                let t = xj - c;
                *o += t * t;
            }
        }
    }
}
