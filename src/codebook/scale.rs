//! Per-kernel scales (paper §3.1): whether a codebook normalises its kernels by
//! `s = sign(w*)·‖w‖₂` (`w*` the centre element), and how the scales are stored.
//!
//! One decision, [`ScaleScheme`]: no scales, or L2-norm scales stored as `f32`, `f16` or
//! fixed point. The fixed-point format (`round(s·2^f)` as `f`-bit two's complement) is
//! defined here once: [`FixedBits`] quantises, encodes and decodes, and the file format
//! calls it.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::linalg::Real;

/// Whether kernels are normalised by a per-kernel scale, and how the scales are stored.
///
/// Under [`ScaleScheme::L2`] each kernel `w` is divided by `s = sign(w*)·‖w‖₂` before
/// clustering, where `w*` is the centre element (flat index `⌊kh·kw / 2⌋`); the layer stores
/// `s` and reconstructs `s·μ`. Clustered kernels thus have unit norm and a non-negative
/// centre. Rules that avoid any division by zero:
/// - a centre of exactly `0` counts as positive (`sign(0) = +1`);
/// - an all-zero kernel gets `s = 0`, is left out of clustering, and is stored with index 0,
///   so its reconstruction is exactly zero.
///
/// Fitting and assigning compute exact scales (in `F`); the [`ScaleStorage`] is applied
/// once, when a network is compressed ([`compress`](crate::compress)) or its scales are
/// rounded after fine-tuning.
///
/// The string forms are `none`, `f16`, `f32` and `fixed<bits>` ([`Display`](fmt::Display)
/// and [`FromStr`] agree):
///
/// ```
/// use clustered_conv::{FixedBits, ScaleScheme, ScaleStorage};
/// assert_eq!("f16".parse::<ScaleScheme>()?, ScaleScheme::L2(ScaleStorage::F16));
/// assert_eq!("none".parse::<ScaleScheme>()?, ScaleScheme::None);
/// let fixed = ScaleScheme::L2(ScaleStorage::Fixed(FixedBits::new(8)?));
/// assert_eq!("fixed8".parse::<ScaleScheme>()?, fixed);
/// assert_eq!(fixed.to_string(), "fixed8");
/// assert!("fixed0".parse::<ScaleScheme>().is_err());
/// assert_eq!(ScaleScheme::default(), ScaleScheme::L2(ScaleStorage::F16));
/// # Ok::<(), clustered_conv::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScaleScheme {
    /// Raw kernels are clustered and no scales are stored (the paper's "N" variants).
    None,
    /// L2-norm scales, stored at the given precision (the paper: 16 bits).
    L2(ScaleStorage),
}

/// How L2-norm scales are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ScaleStorage {
    /// IEEE half precision, round to nearest even (the paper's default). Layers hold such
    /// scales as `f16` in memory.
    #[default]
    F16,
    /// Single precision.
    F32,
    /// Signed fixed point, as the reference code's `--n_bits`; see [`FixedBits`].
    Fixed(FixedBits),
}

/// Fractional bits `f` of fixed-point scales, `1 ≤ f ≤ 32`: a scale is stored as
/// `round(s·2^f)` clamped to `[-2^(f−1), 2^(f−1) − 1]`, in `f`-bit two's complement, and
/// read back divided by `2^f` (step `2^-f`, range `[-0.5, 0.5)`).
///
/// ```
/// use clustered_conv::FixedBits;
/// let four = FixedBits::new(4)?;
/// assert_eq!(four.round(0.26f64), 0.25);
/// assert_eq!(four.round(0.9f64), 0.4375); // clamped to 7/16
/// assert!(FixedBits::new(0).is_err());
/// assert!(FixedBits::new(33).is_err());
/// # Ok::<(), clustered_conv::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FixedBits(u8);

impl FixedBits {
    /// `bits` fractional bits.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] unless `1 ≤ bits ≤ 32`.
    pub fn new(bits: u8) -> Result<Self> {
        if (1..=32).contains(&bits) {
            Ok(FixedBits(bits))
        } else {
            Err(Error::InvalidParameter {
                name: "fixed-point scale bits",
                value: f64::from(bits),
                expected: "1 to 32 fractional bits",
            })
        }
    }

    /// The number of fractional (and stored) bits.
    pub fn get(self) -> u8 {
        self.0
    }

    /// `2^f`.
    fn step(self) -> f64 {
        2f64.powi(i32::from(self.0))
    }

    /// The stored integer of `v`: `round(v·2^f)` clamped to the `f`-bit signed range.
    fn quantise(self, v: f64) -> i64 {
        let half = 2f64.powi(i32::from(self.0) - 1);
        (v * self.step()).round().clamp(-half, half - 1.0) as i64
    }

    /// `v` as stored and read back.
    pub fn round<F: Real>(self, v: F) -> F {
        F::from_f64_lossy(self.quantise(v.to_f64_exact()) as f64 / self.step())
    }

    /// The `f` low bits of `v`'s stored integer (two's complement), as written to a file.
    #[cfg_attr(not(feature = "safetensors"), allow(dead_code))] // Only the file format calls it.
    pub(crate) fn encode(self, v: f64) -> u32 {
        let mask = if self.0 == 32 {
            u32::MAX
        } else {
            (1u32 << self.0) - 1
        };
        (self.quantise(v) as u32) & mask
    }

    /// The scale of `f` stored bits (the inverse of [`FixedBits::encode`] on the grid).
    #[cfg_attr(not(feature = "safetensors"), allow(dead_code))] // Only the file format calls it.
    pub(crate) fn decode(self, q: u32) -> f64 {
        let shift = 32 - u32::from(self.0);
        let signed = ((q << shift) as i32) >> shift;
        f64::from(signed) / self.step()
    }
}

impl ScaleStorage {
    /// Bits stored per scale.
    pub fn bits(self) -> u32 {
        match self {
            ScaleStorage::F16 => 16,
            ScaleStorage::F32 => 32,
            ScaleStorage::Fixed(b) => u32::from(b.get()),
        }
    }

    /// `v` as stored at this precision (and read back).
    pub fn round<F: Real>(self, v: F) -> F {
        match self {
            ScaleStorage::F16 => F::from_f64_lossy(round_to_f16(v.to_f64_exact())),
            ScaleStorage::F32 => F::from_f64_lossy(f64::from(v.to_f64_exact() as f32)),
            ScaleStorage::Fixed(bits) => bits.round(v),
        }
    }
}

impl Default for ScaleScheme {
    /// L2-norm scales stored as `f16` (the paper's default).
    fn default() -> Self {
        ScaleScheme::L2(ScaleStorage::F16)
    }
}

impl ScaleScheme {
    /// Bits stored per scale (0 for [`ScaleScheme::None`]).
    pub fn bits(self) -> u32 {
        self.storage().map_or(0, ScaleStorage::bits)
    }

    /// The storage of L2 scales, `None` without scales.
    pub fn storage(self) -> Option<ScaleStorage> {
        match self {
            ScaleScheme::None => None,
            ScaleScheme::L2(storage) => Some(storage),
        }
    }

    /// Whether kernels are normalised and scales stored.
    pub fn has_scales(self) -> bool {
        self != ScaleScheme::None
    }

    /// `v` as stored under this scheme (unchanged without scales).
    pub fn round<F: Real>(self, v: F) -> F {
        self.storage().map_or(v, |s| s.round(v))
    }
}

impl fmt::Display for ScaleStorage {
    /// `f16`, `f32` or `fixed<bits>` (what [`str::parse`] accepts back).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScaleStorage::F16 => f.write_str("f16"),
            ScaleStorage::F32 => f.write_str("f32"),
            ScaleStorage::Fixed(bits) => write!(f, "fixed{}", bits.get()),
        }
    }
}

impl fmt::Display for ScaleScheme {
    /// `none`, or the storage's form (`f16`, `f32`, `fixed<bits>`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScaleScheme::None => f.write_str("none"),
            ScaleScheme::L2(storage) => storage.fmt(f),
        }
    }
}

impl FromStr for ScaleStorage {
    type Err = Error;

    /// Parses `f16`, `f32` or `fixed<bits>` with 1 ≤ bits ≤ 32.
    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::Parse {
            what: "scale storage",
            input: s.to_string(),
            expected: "f16, f32 or fixed<bits> with bits 1 to 32",
        };
        match s {
            "f16" => Ok(ScaleStorage::F16),
            "f32" => Ok(ScaleStorage::F32),
            _ => {
                let bits: u8 = s
                    .strip_prefix("fixed")
                    .and_then(|b| b.parse().ok())
                    .ok_or_else(invalid)?;
                FixedBits::new(bits)
                    .map(ScaleStorage::Fixed)
                    .map_err(|_| invalid())
            }
        }
    }
}

impl FromStr for ScaleScheme {
    type Err = Error;

    /// Parses `none`, `f16`, `f32` or `fixed<bits>` with 1 ≤ bits ≤ 32.
    fn from_str(s: &str) -> Result<Self> {
        if s == "none" {
            return Ok(ScaleScheme::None);
        }
        s.parse().map(ScaleScheme::L2).map_err(|_| Error::Parse {
            what: "scale scheme",
            input: s.to_string(),
            expected: "f16, f32, none or fixed<bits> with bits 1 to 32",
        })
    }
}

/// The scale of one flattened kernel under [`ScaleScheme::L2`], or `0` for an all-zero
/// kernel.
pub(crate) fn l2_scale<F: Real>(kernel: &[F]) -> F {
    let norm = kernel.iter().fold(F::zero(), |a, &v| a + v * v).sqrt();
    let centre = kernel[kernel.len() / 2];
    if centre < F::zero() {
        -norm
    } else {
        norm
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
    fn fixed_point_follows_the_reference_quantiser() {
        let p = ScaleStorage::Fixed(FixedBits::new(4).unwrap());
        assert_eq!(p.round(0.26f64), 0.25);
        assert_eq!(p.round(0.9f64), 0.4375);
        assert_eq!(p.round(-0.9f64), -0.5);
        assert_eq!(p.bits(), 4);
    }

    #[test]
    fn fixed_bits_outside_1_to_32_are_errors() {
        for bad in [0u8, 33, 255] {
            assert!(matches!(
                FixedBits::new(bad),
                Err(Error::InvalidParameter { .. })
            ));
        }
        assert_eq!(FixedBits::new(1).unwrap().get(), 1);
        assert_eq!(FixedBits::new(32).unwrap().get(), 32);
    }

    #[test]
    fn fixed_encoding_is_twos_complement_of_f_bits() {
        // Hand-computed: 4 bits, -0.25·16 = -4 → 0b1100; 0.4375·16 = 7 → 0b0111;
        // -0.5·16 = -8 → 0b1000.
        let four = FixedBits::new(4).unwrap();
        assert_eq!(four.encode(-0.25), 0b1100);
        assert_eq!(four.encode(0.4375), 0b0111);
        assert_eq!(four.encode(-0.5), 0b1000);
        assert_eq!(four.decode(0b1100), -0.25);
        assert_eq!(four.decode(0b0111), 0.4375);
        assert_eq!(four.decode(0b1000), -0.5);
        // The widest and narrowest formats round-trip their extremes.
        let wide = FixedBits::new(32).unwrap();
        let low = -0.5;
        let high = 0.5 - 2f64.powi(-32);
        assert_eq!(wide.encode(low), 1 << 31);
        assert_eq!(wide.decode(wide.encode(low)), low);
        assert_eq!(wide.decode(wide.encode(high)), high);
        let one = FixedBits::new(1).unwrap();
        assert_eq!((one.encode(-0.5), one.decode(1)), (1, -0.5));
        assert_eq!((one.encode(0.3), one.decode(0)), (0, 0.0));
    }

    #[test]
    fn strings_round_trip() {
        for s in ["none", "f16", "f32", "fixed1", "fixed8", "fixed32"] {
            assert_eq!(s.parse::<ScaleScheme>().unwrap().to_string(), s);
        }
        for bad in ["fixed0", "fixed33", "f8", "L2", ""] {
            assert!(bad.parse::<ScaleScheme>().is_err(), "{bad}");
        }
    }
}
