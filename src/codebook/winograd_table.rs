//! The Winograd F(4×4, 3×3) transform of a 3×3 codebook's decoded kernels, `Û_v = G k_v Gᵀ`
//! for every stored index `v`, cached with the codebook: a clustered layer's Winograd GEMM
//! operands are built from it (`clustered/winograd.rs`). It is computed on first use (in
//! `f64`, rounded once to `F`), shared by every layer and call that uses the codebook, and
//! emptied when the centroids change, so it is never stale while fine-tuning.

use std::sync::OnceLock;

use crate::linalg::{Real, WinogradTile};

/// The variant of the cached tables.
pub(crate) const TABLE_TILE: WinogradTile = WinogradTile::F4;

/// The two tables: the kernels as they are, and rotated by 180° (the input gradient's
/// adjoint operand). Each is `positions` blocks of `K·S` values: `values[ξ·K·S + v]`.
#[derive(Clone, Default)]
pub(crate) struct WinogradTables<F> {
    tables: [OnceLock<Vec<F>>; 2],
}

impl<F: Real> WinogradTables<F> {
    /// The table for `rotated`, computed from `decoded` (row-major `(K·S) × 9`, as
    /// `KernelCodebook::decoded_kernels`) on first use.
    pub(crate) fn get(&self, rotated: bool, decoded: impl FnOnce() -> Vec<F>) -> &[F] {
        self.tables[usize::from(rotated)].get_or_init(|| transform(&decoded(), rotated))
    }

    /// Bytes currently held.
    pub(crate) fn bytes(&self) -> usize {
        let held: usize = self
            .tables
            .iter()
            .filter_map(OnceLock::get)
            .map(Vec::len)
            .sum();
        held * std::mem::size_of::<F>()
    }
}

/// `Û_v` of every decoded 3×3 kernel (rotated by 180° when `rotated`), position-major.
fn transform<F: Real>(decoded: &[F], rotated: bool) -> Vec<F> {
    let limit = decoded.len() / 9;
    let mut values = vec![F::zero(); TABLE_TILE.positions() * limit];
    for (v, kernel) in decoded.chunks_exact(9).enumerate() {
        // Rotation by 180° of a row-major 3×3 kernel reverses its nine values.
        let g: [f64; 9] =
            std::array::from_fn(|k| kernel[if rotated { 8 - k } else { k }].to_f64_exact());
        for (xi, u) in TABLE_TILE.kernel_transform(&g).into_iter().enumerate() {
            values[xi * limit + v] = F::from_f64_lossy(u);
        }
    }
    values
}

/// A derived cache: equal whenever the codebooks' data are.
impl<F> PartialEq for WinogradTables<F> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<F> std::fmt::Debug for WinogradTables<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.tables.each_ref().map(|t| t.get().is_some());
        f.debug_struct("WinogradTables")
            .field("held", &held)
            .finish()
    }
}
