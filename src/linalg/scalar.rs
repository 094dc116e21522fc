//! The floating-point element types the crate computes with.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, MulAssign, SubAssign};

use ndarray::{LinalgScalar, ScalarOperand};
use num_traits::{Float, FromPrimitive};

use super::Engine;

/// A floating-point element type: implemented for `f32` (the tuned path) and `f64`
/// (used by the gradient checks).
///
/// The trait is sealed: its supertrait holds the compute kernels' per-type hooks (the GEMM
/// back-end and SIMD lanes), which exist only for these two types and are not public.
pub trait Real:
    Float
    + FromPrimitive
    + LinalgScalar
    + ScalarOperand
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + 'static
    + Engine
{
    /// Converts from `f64`, rounding to the nearest representable value.
    fn from_f64_lossy(v: f64) -> Self;
    /// Widens to `f64` exactly.
    fn to_f64_exact(self) -> f64;
}

impl Real for f32 {
    fn from_f64_lossy(v: f64) -> Self {
        v as f32
    }
    fn to_f64_exact(self) -> f64 {
        f64::from(self)
    }
}

impl Real for f64 {
    fn from_f64_lossy(v: f64) -> Self {
        v
    }
    fn to_f64_exact(self) -> f64 {
        self
    }
}
