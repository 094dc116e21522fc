//! Zero-filled arrays written by every worker.

use ndarray::{Array, Dimension, IntoDimension};
use num_traits::Zero;
use rayon::prelude::*;

/// Below this many elements a zero-fill stays on the calling thread (splitting it would cost
/// more than it saves).
const PARALLEL_FILL_ELEMENTS: usize = 1 << 16;

/// An array of zeros, filled by all rayon workers when it is large. `Array::zeros` writes
/// its megabytes (a `memset`, or page faults on fresh memory) on the calling thread while
/// the other workers wait: in a 2-thread profile of the flagship's training step the main
/// thread's `memset` was 4.2 % of all samples, the largest serial part of the step.
pub(crate) fn par_zeros<A, Sh>(shape: Sh) -> Array<A, Sh::Dim>
where
    A: Zero + Clone + Send + Sync,
    Sh: IntoDimension,
{
    let dim = shape.into_dimension();
    let values = par_zeros_vec(dim.size());
    Array::from_shape_vec(dim, values).expect("one value per element of the shape")
}

/// `len` zeros, filled by all rayon workers when they are many (see [`par_zeros`]).
pub(crate) fn par_zeros_vec<A: Zero + Clone + Send + Sync>(len: usize) -> Vec<A> {
    if len < PARALLEL_FILL_ELEMENTS {
        return vec![A::zero(); len];
    }
    let mut values = Vec::with_capacity(len);
    values.par_extend((0..len).into_par_iter().map(|_| A::zero()));
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_arrays_are_all_zeros_of_the_asked_shape() {
        for shape in [(1, 2, 3, 4), (8, 32, 28, 28)] {
            let a = par_zeros::<f32, _>(shape);
            assert_eq!(a.dim(), shape);
            assert!(a.iter().all(|&v| v == 0.0));
            assert!(a.is_standard_layout());
        }
        let a = par_zeros::<u8, _>((4, 100, 200));
        assert_eq!(a.len(), 80_000);
        assert!(a.iter().all(|&v| v == 0));
        for len in [0, 5, 1 << 17] {
            let v = par_zeros_vec::<f64>(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.0));
        }
    }
}
