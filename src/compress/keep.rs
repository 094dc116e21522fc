//! Which layers stay dense, and why: 1×1 convolutions, layers named by a pattern, and the
//! default rule ([`CompressionConfig::default_keep_dense`]).

use std::fmt;

use super::{CodebookScope, CompressionConfig};
use crate::error::{Error, Result};

/// Why a layer of a compressed network was left dense.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DenseReason {
    /// A 1×1 convolution (without [`CompressionConfig::cluster_pointwise`]).
    Pointwise,
    /// Its name matched this [`CompressionConfig::keep_dense`] pattern.
    Pattern(String),
    /// The default rule: at most [`CompressionConfig::keep_dense_image_channels`] input
    /// channels, i.e. the layer reads the image.
    ImageInput {
        /// The layer's input channels.
        in_channels: usize,
    },
    /// The default rule: fewer kernels than
    /// [`CompressionConfig::keep_dense_kernels_per_k`]`·K`.
    FewKernels {
        /// The layer's kernels, `Cout·Cin`.
        kernels: usize,
        /// `kernels_per_k`.
        per_k: usize,
        /// The K the rule compared against.
        k: usize,
    },
    /// No codebook size of the [`CompressionConfig::max_error`] ladder met the error budget.
    MaxError {
        /// The budget.
        max_error: f64,
        /// The largest K tried (0: none, as every K would store more than the dense
        /// weight).
        largest_k: usize,
    },
}

impl fmt::Display for DenseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenseReason::Pointwise => write!(f, "pointwise (1×1)"),
            DenseReason::Pattern(p) => write!(f, "matched pattern `{p}`"),
            DenseReason::ImageInput { in_channels } => {
                write!(f, "default rule: image input (Cin = {in_channels})")
            }
            DenseReason::FewKernels { kernels, per_k, k } => write!(
                f,
                "default rule: only {kernels} kernels < {per_k}·K = {}",
                per_k * k
            ),
            DenseReason::MaxError { largest_k: 0, .. } => {
                write!(f, "no K of the ladder stores less than the dense weight")
            }
            DenseReason::MaxError {
                max_error,
                largest_k,
            } => write!(f, "no K ≤ {largest_k} meets max error {max_error}"),
        }
    }
}

/// The smallest K of the [`CompressionConfig::max_error`] ladder.
pub(crate) const LADDER_FIRST: usize = 16;
/// The largest K of the [`CompressionConfig::max_error`] ladder.
pub(crate) const LADDER_LAST: usize = 1024;

/// The codebook sizes tried for a layer of `kernels` kernels: 16, 32, …, 1024, capped at
/// `kernels` (ascending, without repeats).
pub(crate) fn k_ladder(kernels: usize) -> Vec<usize> {
    let mut ladder = Vec::new();
    let mut k = LADDER_FIRST;
    while k <= LADDER_LAST {
        ladder.push(k.min(kernels));
        if k >= kernels {
            break;
        }
        k *= 2;
    }
    ladder
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters (also empty)
/// and every other character itself.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && p[i] != '*' && p[i] == n[j] {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// `(Cout, Cin, kh, kw)`.
type Dims = (usize, usize, usize, usize);

impl CompressionConfig {
    /// Why each layer (name, `(Cout, Cin, kh, kw)`) stays dense, `None` for the layers that
    /// are clustered.
    ///
    /// # Errors
    /// [`Error::KeepDenseUnmatched`] for a pattern that matches no layer.
    pub(crate) fn dense_reasons(
        &self,
        layers: &[(&str, Dims)],
    ) -> Result<Vec<Option<DenseReason>>> {
        if let Some(p) = self
            .keep_dense
            .iter()
            .find(|p| !layers.iter().any(|(name, _)| glob_match(p, name)))
        {
            return Err(Error::KeepDenseUnmatched {
                pattern: p.clone(),
                layers: layers.iter().map(|(n, _)| (*n).to_string()).collect(),
            });
        }
        let k = match self.max_error {
            Some(_) => LADDER_FIRST,
            None => self.codebook.k(),
        };
        let rule = self.default_keep_dense && !matches!(self.scope, CodebookScope::Groups(_));
        let per_k = self.keep_dense_kernels_per_k;
        let reasons = layers
            .iter()
            .map(|&(name, (cout, cin, kh, kw))| {
                if kh * kw <= 1 && !self.cluster_pointwise {
                    return Some(DenseReason::Pointwise);
                }
                if let Some(p) = self.keep_dense.iter().find(|p| glob_match(p, name)) {
                    return Some(DenseReason::Pattern(p.clone()));
                }
                if !rule {
                    None
                } else if cin <= self.keep_dense_image_channels {
                    Some(DenseReason::ImageInput { in_channels: cin })
                } else if cout * cin < per_k * k {
                    Some(DenseReason::FewKernels {
                        kernels: cout * cin,
                        per_k,
                        k,
                    })
                } else {
                    None
                }
            })
            .collect();
        Ok(reasons)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("layers.0", "layers.0"));
        assert!(!glob_match("layers.0", "layers.01"));
        assert!(glob_match("layers.*", "layers.12"));
        assert!(glob_match("*conv*", "features.conv1"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("", "a"));
    }

    #[test]
    fn ladders() {
        assert_eq!(k_ladder(8), vec![8]);
        assert_eq!(k_ladder(16), vec![16]);
        assert_eq!(k_ladder(40), vec![16, 32, 40]);
        assert_eq!(k_ladder(5000).last(), Some(&1024));
        assert_eq!(k_ladder(5000).len(), 7);
    }
}
