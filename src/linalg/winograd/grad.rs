//! ∂L/∂W of a stride-1, dilation-1 3×3 correlation in the Winograd domain.
//!
//! With `U = G g Gᵀ` and `Y_τ = Aᵀ [Σ_i U_i ⊙ V_{i,τ}] A`, the gradient of the transformed
//! kernel is `dU_ξ = Σ_τ dM_ξ[·, τ] V_ξ[·, τ]ᵀ` with `dM_τ = A dY_τ Aᵀ`: 36 GEMMs of
//! `(Cout × tiles) · (tiles × Cin)` per block of tiles, 4× fewer multiplies than im2col's
//! `(Cout × positions) · (positions × 9·Cin)`. Then `dg = Gᵀ dU G` per kernel.
//!
//! # Determinism
//! Blocks are summed in a fixed number of fixed groups (independent of the thread count), each
//! group in block order, and the groups' kernel gradients in group order.

use ndarray::{Array4, ArrayView2, ArrayView4};
use rayon::prelude::*;

use super::transform::{
    grad_output_block, kernel_gradient_planes, transform_block, TransformScratch,
};
use super::{block_tile_rows, TileRow, M, XI};
use crate::geometry::ConvShape;
use crate::linalg::{gemm, matrix_mut, Real};

/// Most partial gradients kept at once (fixed, so the reduction order does not depend on the
/// thread count).
const MAX_GROUPS: usize = 8;

/// ∂L/∂W (`Cout × Cin × 3 × 3`) of a stride-1, dilation-1 3×3 correlation, from its input `x`
/// and the output gradient `go`.
pub(crate) fn backward_weight_winograd<F: Real>(
    x: ArrayView4<F>,
    go: ArrayView4<F>,
    s: &ConvShape,
) -> Array4<F> {
    debug_assert!(s.kh == 3 && s.kw == 3 && s.stride == (1, 1) && s.dilation == (1, 1));
    let x = x.as_standard_layout();
    let go = go.as_standard_layout();
    let (x, go) = (x.view(), go.view());
    let tile_rows: Vec<TileRow> = (0..s.batch)
        .flat_map(|n| (0..s.oh.div_ceil(M)).map(move |ty| (n, ty)))
        .collect();
    let blocks: Vec<&[TileRow]> = tile_rows.chunks(block_tile_rows::<F>(s)).collect();
    let groups = blocks.len().min(MAX_GROUPS);
    let per_group = blocks.len().div_ceil(groups);
    let partials: Vec<Vec<F>> = blocks
        .par_chunks(per_group)
        .map(|group| group_gradient(&x, &go, s, group, groups == 1))
        .collect();
    let mut parts = partials.into_iter();
    let mut total = parts.next().expect("at least one block");
    for p in parts {
        total.iter_mut().zip(&p).for_each(|(t, v)| *t += *v);
    }
    let plane = s.cout * s.cin;
    Array4::from_shape_fn((s.cout, s.cin, 3, 3), |(o, i, a, b)| {
        total[(3 * a + b) * plane + o * s.cin + i]
    })
}
/// The kernel gradients of one group of blocks, as nine planes of `Cout·Cin` values (tap
/// `3·a + b` of kernel `(o, i)` at `(3·a + b)·Cout·Cin + o·Cin + i`): `dU` accumulated over
/// its blocks, then `Gᵀ dU G`. A lone group runs its 36 GEMMs as parallel tasks (each `dU_ξ`
/// is its own).
fn group_gradient<F: Real>(
    x: &ArrayView4<F>,
    go: &ArrayView4<F>,
    s: &ConvShape,
    group: &[&[TileRow]],
    gemms_in_parallel: bool,
) -> Vec<F> {
    let (cout, cin) = (s.cout, s.cin);
    let mut du = vec![F::zero(); XI * cout * cin];
    let (mut v, mut dm) = (Vec::new(), Vec::new());
    let mut scratch = TransformScratch::default();
    for block in group {
        let tiles = block.len() * s.ow.div_ceil(M);
        v.resize(XI * cin * tiles, F::zero());
        dm.resize(XI * cout * tiles, F::zero());
        transform_block(x, s, block, &mut v, &mut scratch);
        grad_output_block(go, s, block, &mut dm, &mut scratch);
        let (v, dm) = (&v, &dm);
        let product = |(xi, du_xi): (usize, &mut [F])| {
            let dm_xi = ArrayView2::from_shape(
                (cout, tiles),
                &dm[xi * cout * tiles..(xi + 1) * cout * tiles],
            )
            .expect("dM holds 36 Cout×tiles matrices");
            let v_xi =
                ArrayView2::from_shape((cin, tiles), &v[xi * cin * tiles..(xi + 1) * cin * tiles])
                    .expect("V holds 36 Cin×tiles matrices");
            let mut du_xi = matrix_mut(du_xi, cout, cin);
            gemm(F::one(), &dm_xi, &v_xi.t(), F::one(), &mut du_xi);
        };
        if gemms_in_parallel {
            du.par_chunks_mut(cout * cin).enumerate().for_each(product);
        } else {
            du.chunks_mut(cout * cin).enumerate().for_each(product);
        }
    }
    let mut dg = vec![F::zero(); 9 * cout * cin];
    kernel_gradient_planes(&du, cout * cin, &mut v, &mut dg);
    dg
}
