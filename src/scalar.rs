//! The floating-point element types the crate computes with.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, MulAssign, SubAssign};

use ndarray::{LinalgScalar, ScalarOperand};
use num_traits::{Float, FromPrimitive};
use pulp::Simd;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A floating-point element type: implemented for `f32` (the tuned path) and `f64`
/// (used by the gradient checks).
///
/// The trait is sealed: the kernels rely on the GEMM back-end, which only exists for these two.
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
    + sealed::Sealed
{
    /// `c ← alpha·a·b` (`accumulate = false`) or `c ← c + alpha·a·b`, single-threaded, on
    /// faer's packed GEMM kernels (AVX2/AVX-512 chosen at run time).
    #[doc(hidden)]
    fn faer_matmul(
        c: faer::MatMut<'_, Self>,
        accumulate: bool,
        a: faer::MatRef<'_, Self>,
        b: faer::MatRef<'_, Self>,
        alpha: Self,
    );
    /// Converts from `f64`, rounding to the nearest representable value.
    fn from_f64_lossy(v: f64) -> Self;
    /// Widens to `f64` exactly.
    fn to_f64_exact(self) -> f64;

    /// A vector of this type for instruction set `S` (crate-internal kernels).
    #[doc(hidden)]
    type Lanes<S: Simd>: Copy;
    /// All lanes set to `v`.
    #[doc(hidden)]
    fn splat<S: Simd>(simd: S, v: Self) -> Self::Lanes<S>;
    /// `a·b + c`, fused where the instruction set has FMA.
    #[doc(hidden)]
    fn mul_add_lanes<S: Simd>(
        simd: S,
        a: Self::Lanes<S>,
        b: Self::Lanes<S>,
        c: Self::Lanes<S>,
    ) -> Self::Lanes<S>;
    /// `a + b`.
    #[doc(hidden)]
    fn add_lanes<S: Simd>(simd: S, a: Self::Lanes<S>, b: Self::Lanes<S>) -> Self::Lanes<S>;
    /// The whole vectors of a slice, and the remaining head-aligned tail.
    #[doc(hidden)]
    fn as_lanes<S: Simd>(x: &[Self]) -> (&[Self::Lanes<S>], &[Self]);
    /// Mutable [`Real::as_lanes`].
    #[doc(hidden)]
    fn as_lanes_mut<S: Simd>(x: &mut [Self]) -> (&mut [Self::Lanes<S>], &mut [Self]);
}

macro_rules! lanes_impl {
    ($ty:ty, $v:ident, $splat:ident, $madd:ident, $add:ident, $as:ident, $as_mut:ident) => {
        type Lanes<S: Simd> = S::$v;
        #[inline(always)]
        fn splat<S: Simd>(simd: S, v: Self) -> S::$v {
            simd.$splat(v)
        }
        #[inline(always)]
        fn mul_add_lanes<S: Simd>(simd: S, a: S::$v, b: S::$v, c: S::$v) -> S::$v {
            simd.$madd(a, b, c)
        }
        #[inline(always)]
        fn add_lanes<S: Simd>(simd: S, a: S::$v, b: S::$v) -> S::$v {
            simd.$add(a, b)
        }
        #[inline(always)]
        fn as_lanes<S: Simd>(x: &[Self]) -> (&[S::$v], &[Self]) {
            S::$as(x)
        }
        #[inline(always)]
        fn as_lanes_mut<S: Simd>(x: &mut [Self]) -> (&mut [S::$v], &mut [Self]) {
            S::$as_mut(x)
        }
    };
}

/// The GEMM entry point, the same for both types.
macro_rules! faer_impl {
    () => {
        fn faer_matmul(
            c: faer::MatMut<'_, Self>,
            accumulate: bool,
            a: faer::MatRef<'_, Self>,
            b: faer::MatRef<'_, Self>,
            alpha: Self,
        ) {
            let accum = if accumulate {
                faer::Accum::Add
            } else {
                faer::Accum::Replace
            };
            faer::linalg::matmul::matmul(c, accum, a, b, alpha, faer::Par::Seq);
        }
    };
}

impl Real for f32 {
    faer_impl!();
    fn from_f64_lossy(v: f64) -> Self {
        v as f32
    }
    fn to_f64_exact(self) -> f64 {
        f64::from(self)
    }
    lanes_impl!(
        f32,
        f32s,
        splat_f32s,
        mul_add_e_f32s,
        add_f32s,
        as_simd_f32s,
        as_mut_simd_f32s
    );
}

impl Real for f64 {
    faer_impl!();
    fn from_f64_lossy(v: f64) -> Self {
        v
    }
    fn to_f64_exact(self) -> f64 {
        self
    }
    lanes_impl!(
        f64,
        f64s,
        splat_f64s,
        mul_add_e_f64s,
        add_f64s,
        as_simd_f64s,
        as_mut_simd_f64s
    );
}
