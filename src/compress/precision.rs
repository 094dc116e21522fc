//! How per-kernel scales are stored: rounded once, when a model is compressed.

use crate::linalg::Real;

/// Storage precision of the per-kernel scales (paper §2.1: 16-bit scales).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ScalePrecision {
    /// IEEE half precision, round to nearest even (the paper's default).
    #[default]
    F16,
    /// Single precision.
    F32,
    /// No scales: raw kernels are clustered (the paper's "N" variants).
    None,
    /// Signed fixed point with `bits` fractional bits, as the reference code's `--n_bits`:
    /// `round(s·2^bits)` clamped to `[-2^(bits−1), 2^(bits−1) − 1]`, divided by `2^bits`
    /// (step `2^-bits`, range `[-0.5, 0.5)`).
    Fixed(u8),
}

impl ScalePrecision {
    /// Bits stored per scale.
    pub fn bits(self) -> u32 {
        match self {
            ScalePrecision::F16 => 16,
            ScalePrecision::F32 => 32,
            ScalePrecision::None => 0,
            ScalePrecision::Fixed(b) => u32::from(b),
        }
    }

    /// `v` as stored at this precision (and read back).
    pub fn round<F: Real>(self, v: F) -> F {
        match self {
            ScalePrecision::F16 => F::from_f64_lossy(round_to_f16(v.to_f64_exact())),
            ScalePrecision::F32 => F::from_f64_lossy(f64::from(v.to_f64_exact() as f32)),
            ScalePrecision::None => v,
            ScalePrecision::Fixed(bits) => {
                let step = 2f64.powi(i32::from(bits));
                let half = 2f64.powi(i32::from(bits) - 1);
                F::from_f64_lossy((v.to_f64_exact() * step).round().clamp(-half, half - 1.0) / step)
            }
        }
    }
}

impl std::fmt::Display for ScalePrecision {
    /// `f16`, `f32`, `none` or `fixed<bits>` (what [`str::parse`] accepts back).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScalePrecision::F16 => f.write_str("f16"),
            ScalePrecision::F32 => f.write_str("f32"),
            ScalePrecision::None => f.write_str("none"),
            ScalePrecision::Fixed(bits) => write!(f, "fixed{bits}"),
        }
    }
}

impl std::str::FromStr for ScalePrecision {
    type Err = crate::Error;

    /// Parses `f16`, `f32`, `none` or `fixed<bits>` with 1 ≤ bits ≤ 32.
    ///
    /// ```
    /// use clustered_conv::ScalePrecision;
    /// assert_eq!("f16".parse::<ScalePrecision>()?, ScalePrecision::F16);
    /// assert_eq!("fixed8".parse::<ScalePrecision>()?, ScalePrecision::Fixed(8));
    /// assert!("f8".parse::<ScalePrecision>().is_err());
    /// # Ok::<(), clustered_conv::Error>(())
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || crate::Error::Parse {
            what: "scale precision",
            input: s.to_string(),
            expected: "f16, f32, none or fixed<bits> with bits 1 to 32",
        };
        match s {
            "f16" => Ok(ScalePrecision::F16),
            "f32" => Ok(ScalePrecision::F32),
            "none" => Ok(ScalePrecision::None),
            _ => {
                let bits: u8 = s
                    .strip_prefix("fixed")
                    .filter(|b| b.bytes().all(|c| c.is_ascii_digit()))
                    .and_then(|b| b.parse().ok())
                    .ok_or_else(invalid)?;
                if (1..=32).contains(&bits) {
                    Ok(ScalePrecision::Fixed(bits))
                } else {
                    Err(invalid())
                }
            }
        }
    }
}

/// The nearest IEEE binary16 value (ties to even), as `f64`; ±∞ beyond the f16 range.
fn round_to_f16(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let a = x.abs();
    // f16: 10 stored significand bits, normal exponents −14..=15, subnormal step 2^-24.
    let exponent = a.log2().floor().max(-14.0) as i32;
    let ulp = 2f64.powi(exponent - 10);
    let rounded = (a / ulp).round_ties_even() * ulp;
    let rounded = if rounded > 65504.0 {
        f64::INFINITY
    } else {
        rounded
    };
    rounded.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_rounding_hand_cases() {
        assert_eq!(round_to_f16(1.0), 1.0);
        // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even → 1.
        assert_eq!(round_to_f16(1.0 + 2f64.powi(-11)), 1.0);
        // 1 + 3·2^-11 is halfway between 1 + 2^-10 and 1 + 2^-9: ties to even → 1 + 2^-9.
        assert_eq!(
            round_to_f16(1.0 + 3.0 * 2f64.powi(-11)),
            1.0 + 2f64.powi(-9)
        );
        assert_eq!(round_to_f16(65504.0), 65504.0);
        assert_eq!(round_to_f16(65520.0), f64::INFINITY);
        assert_eq!(round_to_f16(-2f64.powi(-24)), -2f64.powi(-24));
        assert_eq!(round_to_f16(2f64.powi(-26)), 0.0);
        assert_eq!(round_to_f16(0.1), 0.0999755859375);
    }

    #[test]
    fn names_round_trip() {
        let cases = [
            ("f16", ScalePrecision::F16),
            ("f32", ScalePrecision::F32),
            ("none", ScalePrecision::None),
            ("fixed1", ScalePrecision::Fixed(1)),
            ("fixed8", ScalePrecision::Fixed(8)),
            ("fixed32", ScalePrecision::Fixed(32)),
        ];
        for (text, precision) in cases {
            assert_eq!(text.parse::<ScalePrecision>().unwrap(), precision);
            assert_eq!(precision.to_string(), text);
        }
        for bad in [
            "", "F16", "fixed", "fixed0", "fixed33", "fixed+8", "fixed 8", "fixed-1",
        ] {
            let err = bad.parse::<ScalePrecision>().unwrap_err();
            assert!(
                err.to_string().contains("f16, f32, none or fixed<bits>"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn fixed_point_follows_the_reference_quantiser() {
        let p = ScalePrecision::Fixed(4);
        assert_eq!(p.round(0.26f64), 0.25);
        assert_eq!(p.round(0.9f64), 0.4375);
        assert_eq!(p.round(-0.9f64), -0.5);
        assert_eq!(p.bits(), 4);
    }
}
