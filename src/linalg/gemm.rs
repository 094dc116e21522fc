//! Matrix products on faer's packed GEMM kernels, on `ndarray` views.

use ndarray::{ArrayView2, ArrayViewMut2};

use super::Real;

/// `c = alpha·a·b + beta·c` on faer's GEMM (single-threaded: callers parallelise over tiles,
/// which keeps results independent of the thread count). Operands in row- or column-major
/// layout are used in place; anything else (and a strided `c`) goes through a contiguous copy.
pub(crate) fn gemm<F: Real>(
    alpha: F,
    a: &ArrayView2<F>,
    b: &ArrayView2<F>,
    beta: F,
    c: &mut ArrayViewMut2<F>,
) {
    let a_owned;
    let a = match faer_ref(a.view()) {
        Some(r) => r,
        None => {
            a_owned = a.as_standard_layout().into_owned();
            faer_ref(a_owned.view()).expect("standard layout")
        }
    };
    let b_owned;
    let b = match faer_ref(b.view()) {
        Some(r) => r,
        None => {
            b_owned = b.as_standard_layout().into_owned();
            faer_ref(b_owned.view()).expect("standard layout")
        }
    };
    let accumulate = beta != F::zero();
    if accumulate && beta != F::one() {
        c.map_inplace(|v| *v *= beta);
    }
    let (m, n) = c.dim();
    match c.as_slice_mut() {
        Some(slice) => F::faer_matmul(
            faer::MatMut::from_row_major_slice_mut(slice, m, n),
            accumulate,
            a,
            b,
            alpha,
        ),
        None => {
            let mut tmp = if accumulate {
                c.to_owned()
            } else {
                ndarray::Array2::zeros((m, n))
            };
            let slice = tmp.as_slice_mut().expect("fresh array");
            F::faer_matmul(
                faer::MatMut::from_row_major_slice_mut(slice, m, n),
                accumulate,
                a,
                b,
                alpha,
            );
            c.assign(&tmp);
        }
    }
}

/// `x` as a faer matrix without copying, when it is row- or column-major contiguous.
fn faer_ref<'a, F: Real>(x: ArrayView2<'a, F>) -> Option<faer::MatRef<'a, F>> {
    let (m, n) = x.dim();
    if let Some(slice) = x.to_slice() {
        return Some(faer::MatRef::from_row_major_slice(slice, m, n));
    }
    if x.t().is_standard_layout() {
        let slice = x.to_slice_memory_order()?;
        return Some(faer::MatRef::from_column_major_slice(slice, m, n));
    }
    None
}

/// A mutable row-major matrix view over the first `rows·cols` elements of a scratch slice.
pub(crate) fn matrix_mut<F>(
    data: &mut [F],
    rows: usize,
    cols: usize,
) -> ndarray::ArrayViewMut2<'_, F> {
    ndarray::ArrayViewMut2::from_shape((rows, cols), &mut data[..rows * cols])
        .expect("slice holds rows·cols elements")
}
