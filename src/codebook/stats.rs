//! Usage statistics of stored indices and the paper's compression-ratio formula.

/// How often each codebook entry is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// Kernels per centroid (transforms folded), length `K`.
    pub per_centroid: Vec<u64>,
    /// Kernels per stored index value `centroid + K·transform`, length `K·S`.
    pub per_index: Vec<u64>,
}

impl Usage {
    /// Number of kernels counted.
    pub fn total(&self) -> u64 {
        self.per_index.iter().sum()
    }

    /// Shannon entropy of the stored-index distribution, in bits per kernel: the size an
    /// ideal entropy coder would reach (versus `⌈log2(K·S)⌉` bits for fixed-width indices).
    ///
    /// ```
    /// use clustered_conv::Usage;
    /// let u = Usage { per_centroid: vec![2, 1, 1], per_index: vec![2, 1, 1] };
    /// assert!((u.entropy_bits() - 1.5).abs() < 1e-12);
    /// ```
    pub fn entropy_bits(&self) -> f64 {
        let total = self.total() as f64;
        if total == 0.0 {
            return 0.0;
        }
        self.per_index
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / total;
                -p * p.log2()
            })
            .sum()
    }
}

/// The paper's compression ratio of clustered kernels (§2.1), with 32-bit original weights
/// and a 32-bit codebook:
///
/// `r = N·32·A / (N·(b_index + b_scale) + K·32·A)`
///
/// for `N` kernels of area `A = kh·kw`, `b_index` bits per stored index, `b_scale` bits per
/// scale (0 without scales) and `K` codebook entries.
///
/// ```
/// use clustered_conv::compression_ratio;
/// // VGG-16 on CIFAR-10: 1,634,496 3×3 kernels, C256 with 16-bit scales → 12.0×.
/// let r = compression_ratio(1_634_496, 9, 8, 16, 256);
/// assert_eq!(format!("{r:.1}"), "12.0");
/// ```
pub fn compression_ratio(
    kernels: u64,
    kernel_area: usize,
    index_bits: u32,
    scale_bits: u32,
    codebook_entries: usize,
) -> f64 {
    let original = kernels as f64 * 32.0 * kernel_area as f64;
    let compressed = kernels as f64 * f64::from(index_bits + scale_bits)
        + codebook_entries as f64 * 32.0 * kernel_area as f64;
    original / compressed
}

/// Bits of a fixed-width index able to hold `limit` values: `⌈log2 limit⌉`.
pub(crate) fn bits_for(limit: usize) -> u32 {
    if limit <= 1 {
        0
    } else {
        usize::BITS - (limit - 1).leading_zeros()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_for_powers_and_between() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(256), 8);
        assert_eq!(bits_for(257), 9);
        assert_eq!(bits_for(1024), 10);
    }

    #[test]
    fn paper_asymptotic_ratios() {
        // PAPER.md §2.1: C64 13.1×, C1024 11.1×, C1024N 28.8×, C128N 41.1× (codebook negligible).
        let n = 1u64 << 40;
        let r = |bits, scale| compression_ratio(n, 9, bits, scale, 1024);
        assert_eq!(format!("{:.1}", r(6, 16)), "13.1");
        assert_eq!(format!("{:.1}", r(10, 16)), "11.1");
        assert_eq!(format!("{:.1}", r(10, 0)), "28.8");
        assert_eq!(format!("{:.1}", r(7, 0)), "41.1");
    }

    #[test]
    fn uniform_entropy_is_log2() {
        let u = Usage {
            per_centroid: vec![5; 8],
            per_index: vec![5; 8],
        };
        assert!((u.entropy_bits() - 3.0).abs() < 1e-12);
    }
}
