//! The size report of PAPER.md §2.1 (and the FLOP count of §4.2 where input sizes are known).

use std::fmt;

use super::{CodebookPlan, LayerShape};
use crate::codebook::{bits_for, CodebookParams, Symmetry};
use crate::error::Result;

/// One layer's line of a [`CompressionReport`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "json", derive(serde::Serialize))]
pub struct LayerReport {
    /// Layer name.
    pub name: String,
    /// Kernels, `Cout·Cin`.
    pub kernels: u64,
    /// Kernel size `(kh, kw)`.
    pub kernel_size: (usize, usize),
    /// Codebook index, or `None` for a layer left dense.
    pub codebook: Option<usize>,
    /// Bits per stored index, `⌈log2(K·S)⌉` (0 for dense layers).
    pub index_bits: u32,
    /// Bits per stored scale (0 for dense layers and for no scales).
    pub scale_bits: u32,
    /// Bits per kernel of a pruning mask (1 when the layer has one, else 0).
    pub mask_bits: u32,
    /// Weight bytes at fp32.
    pub bytes_before: u64,
    /// Bytes of the bit-packed indices plus scales (fp32 weights for a dense layer); codebooks
    /// are counted once, in [`CompressionReport::codebooks`].
    pub bytes_after: u64,
    /// Centroids of the layer's codebook (`None` for dense layers).
    pub k: Option<usize>,
    /// Why the layer is dense (`pointwise (1×1)`, ``matched pattern `X` ``, `default rule:
    /// …`, `no K ≤ 1024 meets max error E`), when known; `None` for clustered layers.
    pub dense_reason: Option<String>,
    /// `‖W − Ŵ‖ / ‖W‖` of a clustered layer, when the report was made from weights.
    pub relative_error: Option<f64>,
    /// Signal-to-quantisation-noise ratio in dB, `10·log10(‖W‖² / ‖W − Ŵ‖²)`
    /// (`= −20·log10(relative_error)`; infinite for an exact reconstruction), when the
    /// relative error is known.
    pub sqnr_db: Option<f64>,
    /// The (K, relative error) points tried by an error budget
    /// ([`CompressionConfig::max_error`](crate::CompressionConfig::max_error)), ascending in
    /// K; the last one is the K used, unless the layer stayed dense. Empty otherwise.
    pub error_by_k: Vec<(usize, f64)>,
    /// Entropy of the stored indices in bits per kernel, when made from weights.
    pub entropy_bits: Option<f64>,
    /// Dense MACs per image, when the input size is known.
    pub dense_macs: Option<u64>,
    /// The paper's FLOP count (PAPER.md §4.2: input resolution, `min(ΣU_j, ΣV_i)`, additions
    /// ignored), when made from weights with input sizes.
    pub paper_flops: Option<u64>,
    /// The input side's real work per image: response MACs plus gather-adds at output
    /// resolution, when made from weights with input sizes.
    pub input_side_work: Option<u64>,
}

/// One codebook's line of a [`CompressionReport`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "json", derive(serde::Serialize))]
pub struct CodebookReport {
    /// Centroids.
    pub k: usize,
    /// Transforms of its symmetry.
    pub transforms: usize,
    /// Kernel size.
    pub kernel_size: (usize, usize),
    /// Layers that use it (indices into [`CompressionReport::layers`]).
    pub layers: Vec<usize>,
    /// Bytes at fp32: `K·kh·kw·4`.
    pub bytes: u64,
}

/// Sizes before and after compression, per layer and in total.
///
/// The compression ratio is the paper's (§2.1): fp32 weights of the clustered layers over
/// their indices, scales and fp32 codebooks.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "json", derive(serde::Serialize))]
pub struct CompressionReport {
    /// Every layer, in network order.
    pub layers: Vec<LayerReport>,
    /// Every codebook.
    pub codebooks: Vec<CodebookReport>,
}

impl CompressionReport {
    fn clustered(&self) -> impl Iterator<Item = &LayerReport> {
        self.layers.iter().filter(|l| l.codebook.is_some())
    }

    /// Kernels of the clustered layers.
    pub fn clustered_kernels(&self) -> u64 {
        self.clustered().map(|l| l.kernels).sum()
    }

    /// fp32 bytes of the clustered layers' weights.
    pub fn clustered_bytes_before(&self) -> u64 {
        self.clustered().map(|l| l.bytes_before).sum()
    }

    /// Bytes of the clustered layers after compression: packed indices, scales and codebooks.
    pub fn clustered_bytes_after(&self) -> u64 {
        self.clustered().map(|l| l.bytes_after).sum::<u64>()
            + self.codebooks.iter().map(|c| c.bytes).sum::<u64>()
    }

    /// The paper's compression ratio of the clustered layers (bit-exact, before rounding to
    /// bytes): `Σ N·32·A / (Σ N·(b_index + b_scale) + Σ K·32·A)`.
    pub fn ratio(&self) -> f64 {
        let before: f64 = self
            .clustered()
            .map(|l| l.kernels as f64 * area(l.kernel_size) * 32.0)
            .sum();
        let after: f64 = self
            .clustered()
            .map(|l| l.kernels as f64 * f64::from(l.index_bits + l.scale_bits + l.mask_bits))
            .sum::<f64>()
            + self
                .codebooks
                .iter()
                .map(|c| c.k as f64 * area(c.kernel_size) * 32.0)
                .sum::<f64>();
        before / after
    }

    /// fp32 bytes of every layer's weights.
    pub fn model_bytes_before(&self) -> u64 {
        self.layers.iter().map(|l| l.bytes_before).sum()
    }

    /// Bytes of every layer after compression (dense layers at fp32), codebooks included.
    pub fn model_bytes_after(&self) -> u64 {
        self.layers.iter().map(|l| l.bytes_after).sum::<u64>()
            + self.codebooks.iter().map(|c| c.bytes).sum::<u64>()
    }

    /// The report as JSON (feature `json`), for scripts: every field of every layer and
    /// codebook, plus the totals.
    #[cfg(feature = "json")]
    pub fn to_json(&self) -> String {
        #[derive(serde::Serialize)]
        struct Totals {
            clustered_kernels: u64,
            clustered_bytes_before: u64,
            clustered_bytes_after: u64,
            ratio: f64,
            model_bytes_before: u64,
            model_bytes_after: u64,
            paper_speedup: Option<f64>,
        }
        #[derive(serde::Serialize)]
        struct Json<'a> {
            report: &'a CompressionReport,
            totals: Totals,
        }
        let json = Json {
            report: self,
            totals: Totals {
                clustered_kernels: self.clustered_kernels(),
                clustered_bytes_before: self.clustered_bytes_before(),
                clustered_bytes_after: self.clustered_bytes_after(),
                ratio: self.ratio(),
                model_bytes_before: self.model_bytes_before(),
                model_bytes_after: self.model_bytes_after(),
                paper_speedup: self.paper_speedup(),
            },
        };
        serde_json::to_string_pretty(&json).expect("plain data serialises")
    }

    /// Bytes of the clustered layers if their indices were entropy coded at their measured
    /// entropy (scales, masks and codebooks unchanged), when made from weights.
    pub fn entropy_coded_bytes(&self) -> Option<u64> {
        let layers: Option<f64> = self
            .clustered()
            .map(|l| {
                Some(
                    l.kernels as f64 * (l.entropy_bits? + f64::from(l.scale_bits + l.mask_bits))
                        / 8.0,
                )
            })
            .sum();
        Some(layers?.ceil() as u64 + self.codebooks.iter().map(|c| c.bytes).sum::<u64>())
    }

    /// Dense MACs per image over the layers whose input size is known.
    pub fn dense_macs(&self) -> u64 {
        self.layers.iter().filter_map(|l| l.dense_macs).sum()
    }

    /// The paper's theoretical speed-up over the clustered layers with a FLOP count:
    /// `Σ dense MACs / Σ paper FLOPs` (PAPER.md §4.2), if any layer has one.
    pub fn paper_speedup(&self) -> Option<f64> {
        let (dense, paper) = self
            .layers
            .iter()
            .filter_map(|l| Some((l.dense_macs? as f64, l.paper_flops? as f64)))
            .fold((0.0, 0.0), |(d, p), (a, b)| (d + a, p + b));
        (paper > 0.0).then(|| dense / paper)
    }
}

fn area((kh, kw): (usize, usize)) -> f64 {
    (kh * kw) as f64
}

/// What a report needs of the codebook settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub symmetry: Symmetry,
    pub scale_bits: u32,
}

impl Settings {
    pub fn of(params: &CodebookParams) -> Self {
        Settings {
            symmetry: params.symmetry_setting(),
            scale_bits: params.scheme().bits(),
        }
    }
}

/// What was measured of one clustered layer of a network.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured {
    /// Relative reconstruction error, when measured against the original weights.
    pub relative_error: Option<f64>,
    /// Entropy of the stored indices, bits per kernel.
    pub entropy_bits: f64,
}

/// Per layer: mask bits per kernel, and why it is dense (when it is and that is known).
pub(crate) struct Dense<'a> {
    pub mask_bits: &'a [u32],
    pub reasons: &'a [Option<String>],
}

/// `10·log10(‖W‖² / ‖W − Ŵ‖²)` from the relative error `‖W − Ŵ‖ / ‖W‖`.
pub(crate) fn sqnr_db(relative_error: f64) -> f64 {
    -20.0 * relative_error.log10()
}

/// Builds the report from the codebook plan; `measured` carries each clustered layer's
/// (relative error, when measured against weights, and entropy) when the report is made
/// from a network.
pub(crate) fn from_plan(
    settings: Settings,
    shapes: &[LayerShape],
    plans: &[CodebookPlan],
    codebook_of: &[Option<usize>],
    measured: Option<&[Option<Measured>]>,
    dense: &Dense<'_>,
) -> Result<CompressionReport> {
    let mask_bits = dense.mask_bits;
    let transforms = settings.symmetry.transforms();
    let mut layers = Vec::with_capacity(shapes.len());
    for (l, shape) in shapes.iter().enumerate() {
        let (cout, cin, kh, kw) = shape.weight;
        let kernels = (cout * cin) as u64;
        let bytes_before = kernels * (kh * kw) as u64 * 4;
        let dense_macs = match shape.input_hw {
            Some(hw) => {
                let (oh, ow) = shape.geometry.output_size(hw, (kh, kw))?;
                Some((oh * ow) as u64 * kernels * (kh * kw) as u64)
            }
            None => None,
        };
        let (index_bits, scale_bits, bytes_after) = match codebook_of[l] {
            Some(c) => {
                let index_bits = bits_for(plans[c].k * transforms);
                let scale_bits = settings.scale_bits;
                let bits = u64::from(index_bits + scale_bits + mask_bits[l]);
                (index_bits, scale_bits, (kernels * bits).div_ceil(8))
            }
            None => (0, 0, bytes_before),
        };
        let (relative_error, entropy_bits) = match measured.and_then(|m| m[l]) {
            Some(m) => (m.relative_error, Some(m.entropy_bits)),
            None => (None, None),
        };
        layers.push(LayerReport {
            name: shape.name.clone(),
            kernels,
            kernel_size: (kh, kw),
            codebook: codebook_of[l],
            index_bits,
            scale_bits,
            mask_bits: mask_bits[l],
            bytes_before,
            bytes_after,
            k: codebook_of[l].map(|c| plans[c].k),
            dense_reason: dense.reasons[l].clone(),
            relative_error,
            sqnr_db: relative_error.map(sqnr_db),
            error_by_k: Vec::new(),
            entropy_bits,
            dense_macs,
            paper_flops: None,
            input_side_work: None,
        });
    }
    let codebooks = plans
        .iter()
        .map(|p| CodebookReport {
            k: p.k,
            transforms,
            kernel_size: p.kernel,
            layers: p.layers.clone(),
            bytes: (p.k * p.kernel.0 * p.kernel.1 * 4) as u64,
        })
        .collect();
    Ok(CompressionReport { layers, codebooks })
}

impl fmt::Display for CompressionReport {
    /// An aligned table: one line per layer, one per codebook, then totals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_layers(f)?;
        self.write_totals(f)
    }
}

impl CompressionReport {
    /// The table's header, one line per layer, and the K searched per layer.
    fn write_layers(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
        };
        writeln!(
            f,
            "{:<24} {:>9} {:>5} {:>8} {:>5} {:>5} {:>5} {:>12} {:>12} {:>9} {:>8} {:>8}  why dense",
            "layer",
            "kernels",
            "size",
            "codebook",
            "K",
            "idx",
            "scale",
            "bytes fp32",
            "bytes after",
            "rel.err",
            "SQNR dB",
            "entropy"
        )?;
        for l in &self.layers {
            writeln!(
                f,
                "{:<24} {:>9} {:>5} {:>8} {:>5} {:>5} {:>5} {:>12} {:>12} {:>9} {:>8} {:>8}  {}",
                l.name,
                l.kernels,
                format!("{}×{}", l.kernel_size.0, l.kernel_size.1),
                l.codebook
                    .map_or_else(|| "dense".to_string(), |c| c.to_string()),
                l.k.map_or_else(|| "-".to_string(), |k| k.to_string()),
                l.index_bits,
                l.scale_bits,
                l.bytes_before,
                l.bytes_after,
                opt(l.relative_error, 4),
                opt(l.sqnr_db, 1),
                opt(l.entropy_bits, 2),
                l.dense_reason.as_deref().unwrap_or(""),
            )?;
        }
        for l in self.layers.iter().filter(|l| !l.error_by_k.is_empty()) {
            let points: Vec<String> = l
                .error_by_k
                .iter()
                .map(|(k, e)| format!("K={k}: {e:.4}"))
                .collect();
            writeln!(f, "max-error search {}: {}", l.name, points.join(", "))?;
        }
        Ok(())
    }

    /// One line per codebook, then the totals.
    fn write_totals(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.codebooks.iter().enumerate() {
            writeln!(
                f,
                "codebook {i}: K = {} × {} transforms, {}×{}, {} bytes, {} layers",
                c.k,
                c.transforms,
                c.kernel_size.0,
                c.kernel_size.1,
                c.bytes,
                c.layers.len()
            )?;
        }
        writeln!(
            f,
            "clustered layers: {} kernels, {} → {} bytes, ratio {:.2}× (paper §2.1)",
            self.clustered_kernels(),
            self.clustered_bytes_before(),
            self.clustered_bytes_after(),
            self.ratio()
        )?;
        if let Some(bytes) = self.entropy_coded_bytes() {
            writeln!(
                f,
                "with entropy-coded indices: {bytes} bytes ({:.2}×)",
                self.clustered_bytes_before() as f64 / bytes as f64
            )?;
        }
        if let Some(speedup) = self.paper_speedup() {
            writeln!(
                f,
                "paper FLOPs (§4.2): {speedup:.2}× fewer than dense over the clustered layers"
            )?;
        }
        write!(
            f,
            "all conv layers: {} → {} bytes ({:.2}×)",
            self.model_bytes_before(),
            self.model_bytes_after(),
            self.model_bytes_before() as f64 / self.model_bytes_after() as f64
        )
    }
}
