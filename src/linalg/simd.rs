//! Runtime selection of the instruction set for the hand-written kernels.
//!
//! Kernels are written once against `pulp`'s portable vector API ([`Kernel::run`] is generic
//! over the vector type). [`Kernels::dispatch`] runs them with the best instruction set the
//! CPU has — AVX2 + FMA on x86-64 when available, with fused multiply-adds — or with scalar
//! lanes and separate multiply and add. Both paths are tested against the same oracles. The
//! choice is made once per call, so a result never depends on the number of threads; it may
//! differ in the last bits between CPUs with and without FMA.

use pulp::{Simd, WithSimd};

/// Work that runs with the selected instruction set.
pub(crate) trait Kernel {
    type Output;
    fn run<S: Simd>(self, simd: S) -> Self::Output;
}

/// The instruction set kernels run with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kernels(pulp::Arch);

impl Kernels {
    /// The best instruction set of this CPU.
    pub fn detect() -> Self {
        Kernels(pulp::Arch::new())
    }

    /// Scalar lanes, no fused multiply-add: the portable fallback, tested explicitly (unit
    /// tests select it; no public call does).
    #[cfg(test)]
    pub fn portable() -> Self {
        Kernels(pulp::Arch::Scalar)
    }

    /// Runs `kernel` with this instruction set.
    #[inline(always)]
    pub fn dispatch<K: Kernel>(self, kernel: K) -> K::Output {
        self.0.dispatch(Dispatch(kernel))
    }
}

struct Dispatch<K>(K);

impl<K: Kernel> WithSimd for Dispatch<K> {
    type Output = K::Output;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        self.0.run(simd)
    }
}

/// Runs `work` compiled for the CPU's vector instruction set: plain Rust loops that the
/// compiler vectorises once they are inlined (hence `#[inline(always)]` on every closure
/// passed here and on the helpers they call) into the dispatched function. No fused
/// multiply-adds are formed, so every instruction set gives the same bits.
#[inline(always)]
pub(crate) fn vectorised<R>(work: impl FnOnce() -> R) -> R {
    Kernels::detect().dispatch(Vectorised(work))
}

/// The [`Kernel`] of [`vectorised`].
struct Vectorised<W>(W);

impl<R, W: FnOnce() -> R> Kernel for Vectorised<W> {
    type Output = R;

    #[inline(always)]
    fn run<S: Simd>(self, _: S) -> R {
        (self.0)()
    }
}
