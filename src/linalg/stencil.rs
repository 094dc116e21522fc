//! Single-plane convolution primitives as "tap runs": for every kernel tap and output row,
//! the contiguous run of output columns whose input pixel lies inside the image.
//!
//! One iterator, three uses: forward accumulation (`out += w·in`), its transpose
//! (`in_grad += w·out_grad`, for the input gradient) and the tap correlation
//! (`Σ in·out_grad`, for the kernel gradient). Padding never needs a branch in the inner loop.

use std::ops::Range;

use super::taps::Span;
use super::Real;
use crate::geometry::ConvShape;

/// Output columns `out_start..out_start+len` of one output row read input elements
/// `in_start, in_start + sw, …` for kernel tap `tap`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TapRun {
    pub tap: usize,
    pub out_start: usize,
    pub in_start: usize,
    pub len: usize,
}

/// Visits every tap run of output rows `rows`; output offsets are relative to the first row
/// of `rows`, input offsets relative to input row `in_row0` (rows above it are never read:
/// callers pass the first input row the band can touch).
#[inline(always)]
pub(crate) fn for_each_run(
    s: &ConvShape,
    rows: Range<usize>,
    in_row0: usize,
    mut f: impl FnMut(TapRun),
) {
    let (sh, sw) = s.stride;
    let (dh, dw) = s.dilation;
    // For each horizontal tap: the valid output columns and the input column of the first.
    let cols: Vec<Span> = (0..s.kw)
        .map(|kj| Span::valid((kj * dw) as isize - s.pad_left as isize, sw, s.w, s.ow))
        .collect();
    for (r, oy) in rows.enumerate() {
        for ki in 0..s.kh {
            let iy = (oy * sh + ki * dh) as isize - s.pad_top as isize;
            if iy < 0 || iy as usize >= s.h {
                continue;
            }
            let in_row = (iy as usize - in_row0) * s.w;
            for (kj, span) in cols.iter().enumerate() {
                if !span.is_empty() {
                    f(TapRun {
                        tap: ki * s.kw + kj,
                        out_start: r * s.ow + span.lo,
                        in_start: in_row + span.first_in,
                        len: span.len(),
                    });
                }
            }
        }
    }
}

/// `out[rows] += scale · (kernel ⋆ input)`: the cross-correlation of one input plane (starting
/// at input row `in_row0`) with one kernel, accumulated into the output rows `rows`.
pub(crate) fn correlate_add<F: Real>(
    s: &ConvShape,
    rows: Range<usize>,
    in_row0: usize,
    input: &[F],
    kernel: &[F],
    out: &mut [F],
) {
    let sw = s.stride.1;
    for_each_run(s, rows, in_row0, |run| {
        let w = kernel[run.tap];
        let dst = &mut out[run.out_start..run.out_start + run.len];
        if sw == 1 {
            let src = &input[run.in_start..run.in_start + run.len];
            for (d, &x) in dst.iter_mut().zip(src) {
                *d += w * x;
            }
        } else {
            let src = input[run.in_start..].iter().step_by(sw);
            for (d, &x) in dst.iter_mut().zip(src) {
                *d += w * x;
            }
        }
    });
}

/// The patch rows of output rows `rows`: `patches[tap·stride + q] = input pixel read by tap
/// `tap` at output position `q` of the band, zero in the padding and for `q ≥ rows·OW`.
#[inline(always)]
pub(crate) fn extract_patches<F: Real>(
    s: &ConvShape,
    rows: Range<usize>,
    input: &[F],
    stride: usize,
    patches: &mut [F],
) {
    patches.fill(F::zero());
    let sw = s.stride.1;
    for_each_run(s, rows, 0, |run| {
        let dst = &mut patches[run.tap * stride + run.out_start..][..run.len];
        if sw == 1 {
            dst.copy_from_slice(&input[run.in_start..run.in_start + run.len]);
        } else {
            for (d, &v) in dst.iter_mut().zip(input[run.in_start..].iter().step_by(sw)) {
                *d = v;
            }
        }
    });
}

/// The adjoint of [`correlate_add`] in the input: `in_grad += kernel ⋆ᵀ out_grad`.
pub(crate) fn correlate_transpose_add<F: Real>(
    s: &ConvShape,
    rows: Range<usize>,
    out_grad: &[F],
    kernel: &[F],
    in_grad: &mut [F],
) {
    let sw = s.stride.1;
    for_each_run(s, rows, 0, |run| {
        let w = kernel[run.tap];
        let src = &out_grad[run.out_start..run.out_start + run.len];
        for (j, &g) in src.iter().enumerate() {
            in_grad[run.in_start + j * sw] += w * g;
        }
    });
}

/// The adjoint of [`correlate_add`] in the kernel: `kernel_grad[tap] += Σ input·out_grad`.
pub(crate) fn correlate_kernel_grad<F: Real>(
    s: &ConvShape,
    rows: Range<usize>,
    input: &[F],
    out_grad: &[F],
    kernel_grad: &mut [F],
) {
    let sw = s.stride.1;
    for_each_run(s, rows, 0, |run| {
        let g = &out_grad[run.out_start..run.out_start + run.len];
        let acc = g
            .iter()
            .enumerate()
            .fold(F::zero(), |a, (j, &v)| a + v * input[run.in_start + j * sw]);
        kernel_grad[run.tap] += acc;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::ConvGeometry;

    /// Direct definition for one plane and one kernel.
    fn naive(s: &ConvShape, input: &[f64], kernel: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; s.oh * s.ow];
        for oy in 0..s.oh {
            for ox in 0..s.ow {
                for ki in 0..s.kh {
                    for kj in 0..s.kw {
                        let iy =
                            (oy * s.stride.0 + ki * s.dilation.0) as isize - s.pad_top as isize;
                        let ix =
                            (ox * s.stride.1 + kj * s.dilation.1) as isize - s.pad_left as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < s.h && (ix as usize) < s.w {
                            out[oy * s.ow + ox] +=
                                kernel[ki * s.kw + kj] * input[iy as usize * s.w + ix as usize];
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn correlate_and_adjoints_match_the_definition() {
        let mut seed = 1u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        for (h, w, kh, kw, st, pad, dil) in [
            (7, 9, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
            (8, 5, 3, 2, (2, 3), (0, 2, 2, 0), (1, 2)),
            (5, 5, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
            (6, 11, 5, 3, (3, 2), (2, 1, 0, 2), (2, 1)),
            (3, 3, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2)),
        ] {
            let g = ConvGeometry::default()
                .stride(st.0, st.1)
                .dilation(dil.0, dil.1)
                .padding_asymmetric(crate::geometry::Padding {
                    top: pad.0,
                    bottom: pad.1,
                    left: pad.2,
                    right: pad.3,
                });
            let s = g.resolve([1, 1, h, w], [1, 1, kh, kw]).unwrap();
            let input: Vec<f64> = (0..h * w).map(|_| next()).collect();
            let kernel: Vec<f64> = (0..kh * kw).map(|_| next()).collect();
            let mut out = vec![0.0; s.oh * s.ow];
            correlate_add(&s, 0..s.oh, 0, &input, &kernel, &mut out);
            let expected = naive(&s, &input, &kernel);
            for (a, b) in out.iter().zip(&expected) {
                assert!((a - b).abs() < 1e-12);
            }
            // Adjoint identities: <K⋆x, g> = <x, K⋆ᵀg> = <K, corr(x, g)>.
            let og: Vec<f64> = (0..s.oh * s.ow).map(|_| next()).collect();
            let lhs: f64 = out.iter().zip(&og).map(|(a, b)| a * b).sum();
            let mut ig = vec![0.0; h * w];
            correlate_transpose_add(&s, 0..s.oh, &og, &kernel, &mut ig);
            let mid: f64 = ig.iter().zip(&input).map(|(a, b)| a * b).sum();
            let mut kg = vec![0.0; kh * kw];
            correlate_kernel_grad(&s, 0..s.oh, &input, &og, &mut kg);
            let rhs: f64 = kg.iter().zip(&kernel).map(|(a, b)| a * b).sum();
            assert!((lhs - mid).abs() < 1e-12 && (lhs - rhs).abs() < 1e-12);
            // A band of rows with an input offset gives the same rows.
            if s.oh > 1 {
                let first = 1;
                let in0 = (first * s.stride.0).saturating_sub(s.pad_top);
                let mut band = vec![0.0; (s.oh - first) * s.ow];
                correlate_add(&s, first..s.oh, in0, &input[in0 * w..], &kernel, &mut band);
                for (a, b) in band.iter().zip(&expected[first * s.ow..]) {
                    assert!((a - b).abs() < 1e-12);
                }
            }
        }
    }
}
