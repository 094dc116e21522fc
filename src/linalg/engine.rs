//! The per-type hooks of the compute kernels: the GEMM back-end and the SIMD lanes.
//!
//! [`Engine`] is a supertrait of the public [`Real`](crate::Real) that lives in a private
//! module: users can name `Real` and use it as a bound, but cannot name or implement `Engine`,
//! so faer's and pulp's types stay out of the public API (and `Real` stays sealed).

use pulp::Simd;

/// The engine hooks of an element type (crate-internal; unnameable outside the crate).
pub trait Engine: faer::traits::ComplexField + Copy + Send + Sync + 'static {
    /// `c ← alpha·a·b` (`accumulate = false`) or `c ← c + alpha·a·b`, single-threaded, on
    /// faer's packed GEMM kernels (AVX2/AVX-512 chosen at run time).
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
    /// A vector of this type for instruction set `S` (crate-internal kernels).
    type Lanes<S: Simd>: Copy;
    /// All lanes set to `v`.
    fn splat<S: Simd>(simd: S, v: Self) -> Self::Lanes<S>;
    /// `a·b + c`, fused where the instruction set has FMA.
    fn mul_add_lanes<S: Simd>(
        simd: S,
        a: Self::Lanes<S>,
        b: Self::Lanes<S>,
        c: Self::Lanes<S>,
    ) -> Self::Lanes<S>;
    /// `a + b`.
    fn add_lanes<S: Simd>(simd: S, a: Self::Lanes<S>, b: Self::Lanes<S>) -> Self::Lanes<S>;
    /// The sum of the lanes of `a` (in the instruction set's fixed order).
    fn reduce_lanes<S: Simd>(simd: S, a: Self::Lanes<S>) -> Self;
    /// The whole vectors of a slice, and the remaining head-aligned tail.
    fn as_lanes<S: Simd>(x: &[Self]) -> (&[Self::Lanes<S>], &[Self]);
    /// Mutable [`Real::as_lanes`].
    fn as_lanes_mut<S: Simd>(x: &mut [Self]) -> (&mut [Self::Lanes<S>], &mut [Self]);
}

macro_rules! lanes_impl {
    (
        $ty:ty,
        $v:ident,
        $splat:ident,
        $madd:ident,
        $add:ident,
        $reduce:ident,
        $as:ident,
        $as_mut:ident
    ) => {
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
        fn reduce_lanes<S: Simd>(simd: S, a: S::$v) -> Self {
            simd.$reduce(a)
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

impl Engine for f32 {
    lanes_impl!(
        f32,
        f32s,
        splat_f32s,
        mul_add_e_f32s,
        add_f32s,
        reduce_sum_f32s,
        as_simd_f32s,
        as_mut_simd_f32s
    );
}

impl Engine for f64 {
    lanes_impl!(
        f64,
        f64s,
        splat_f64s,
        mul_add_e_f64s,
        add_f64s,
        reduce_sum_f64s,
        as_simd_f64s,
        as_mut_simd_f64s
    );
}
