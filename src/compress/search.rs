//! [`CompressionConfig::max_error`](super::CompressionConfig::max_error): the smallest K of
//! the ladder that meets a layer's error budget.

use super::keep::k_ladder;
use super::network::relative_error;
use super::{CodebookPlan, CompressProgress, Compressor};
use crate::clustered::ClusteredConv2d;
use crate::codebook::{bits_for, KernelCodebook, ScaleScheme};
use crate::error::Result;
use crate::linalg::Real;

/// A fitted codebook and its layers.
type Fitted<F> = (KernelCodebook<F>, Vec<ClusteredConv2d<F>>);

/// The fit that met the budget (if any) and every (K, error) tried.
type Searched<F> = (Option<Fitted<F>>, Vec<(usize, f64)>);

impl<F: Real, P: FnMut(&CompressProgress<'_>)> Compressor<'_, F, P> {
    /// Fits the one-layer codebook `c` of `plans` with K = 16, 32, …, 1024 (capped at the
    /// layer's kernels, and stopping where the codebook, indices and scales would take as many
    /// bytes as the dense weight) until the layer's relative error (scales rounded to
    /// `scheme`) is at most `max_error`: that fit, or `None` when no K meets it, and every
    /// (K, error) tried.
    pub(super) fn search(
        &mut self,
        c: usize,
        plans: &[CodebookPlan],
        max_error: f64,
        scheme: ScaleScheme,
    ) -> Result<Searched<F>> {
        let l = plans[c].layers[0];
        let (cout, cin, _, _) = self.layers[l].weight.dim();
        let kernels = self.layers[l]
            .mask
            .as_ref()
            .map_or(cout * cin, |m| m.iter().filter(|&&kept| kept).count());
        let (_, _, kh, kw) = self.layers[l].weight.dim();
        let dense_bytes = (kernels * kh * kw * 4) as f64;
        let mut tried = Vec::new();
        for k in k_ladder(kernels) {
            // A codebook that with its indices and scales takes as many bytes as the dense
            // weight compresses nothing: larger K are not tried.
            let index_and_scale_bits = f64::from(bits_for(k) + scheme.bits());
            let stored = (k * kh * kw * 4) as f64 + kernels as f64 * index_and_scale_bits / 8.0;
            if stored >= dense_bytes {
                break;
            }
            let (codebook, built) = self.fit_layers(c, plans, k, scheme)?;
            let error = relative_error(
                built[0].to_conv(&codebook)?.weight(),
                &self.layers[l].weight,
            );
            tried.push((k, error));
            if error <= max_error {
                return Ok((Some((codebook, built)), tried));
            }
        }
        Ok((None, tried))
    }
}
