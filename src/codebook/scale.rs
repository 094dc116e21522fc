//! Per-kernel scales (paper §3.1): `s = sign(w*)·‖w‖₂`, `w*` the centre element.

use crate::linalg::Real;

/// How kernels are normalised before clustering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ScaleMode {
    /// Raw kernels are clustered and no scales are stored (the paper's "N" variants).
    None,
    /// Each kernel `w` is divided by `s = sign(w*)·‖w‖₂` before clustering, where `w*` is the
    /// centre element (flat index `⌊kh·kw / 2⌋`); the layer stores `s` and reconstructs
    /// `s·μ`. Clustered kernels thus have unit norm and a non-negative centre.
    ///
    /// Rules that avoid any division by zero:
    /// - a centre of exactly `0` counts as positive (`sign(0) = +1`);
    /// - an all-zero kernel gets `s = 0`, is left out of clustering, and is stored with
    ///   index 0, so its reconstruction is exactly zero.
    #[default]
    L2Norm,
}

impl std::fmt::Display for ScaleMode {
    /// `l2norm` or `none` (what [`str::parse`] accepts back).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScaleMode::L2Norm => "l2norm",
            ScaleMode::None => "none",
        })
    }
}

impl std::str::FromStr for ScaleMode {
    type Err = crate::Error;

    /// Parses `l2norm` or `none` (what [`Display`](std::fmt::Display) writes).
    ///
    /// ```
    /// use clustered_conv::ScaleMode;
    /// assert_eq!("l2norm".parse::<ScaleMode>()?, ScaleMode::L2Norm);
    /// assert_eq!(ScaleMode::None.to_string(), "none");
    /// let err = "L2".parse::<ScaleMode>().unwrap_err();
    /// assert_eq!(err.to_string(), r#"invalid scale mode "L2": expected l2norm or none"#);
    /// # Ok::<(), clustered_conv::Error>(())
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "l2norm" => Ok(ScaleMode::L2Norm),
            "none" => Ok(ScaleMode::None),
            _ => Err(crate::Error::Parse {
                what: "scale mode",
                input: s.to_string(),
                expected: "l2norm or none",
            }),
        }
    }
}

/// The scale of one flattened kernel under `L2Norm`, or `0` for an all-zero kernel.
pub(crate) fn l2_scale<F: Real>(kernel: &[F]) -> F {
    let norm = kernel.iter().fold(F::zero(), |a, &v| a + v * v).sqrt();
    let centre = kernel[kernel.len() / 2];
    if centre < F::zero() {
        -norm
    } else {
        norm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (text, mode) in [("l2norm", ScaleMode::L2Norm), ("none", ScaleMode::None)] {
            assert_eq!(text.parse::<ScaleMode>().unwrap(), mode);
            assert_eq!(mode.to_string(), text);
        }
        for bad in ["", "L2Norm", "l2", "None"] {
            assert!(bad.parse::<ScaleMode>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sign_follows_the_centre() {
        let k = [0.0f64, 3.0, 0.0, 0.0, -4.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(l2_scale(&k), -5.0);
        let k = [0.0f64, 3.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(l2_scale(&k), 5.0);
    }

    #[test]
    fn zero_centre_counts_as_positive() {
        let k = [3.0f64, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -4.0];
        assert_eq!(l2_scale(&k), 5.0);
    }

    #[test]
    fn zero_kernel_has_zero_scale() {
        assert_eq!(l2_scale(&[0.0f32; 9]), 0.0);
    }

    #[test]
    fn even_kernel_uses_flat_index_half() {
        // 2×2: flat index 2 is the "centre" of the reference code.
        let k = [1.0f64, 1.0, -1.0, 1.0];
        assert_eq!(l2_scale(&k), -2.0);
    }
}
