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
    let (mut a_copy, mut b_copy) = (None, None);
    let a = faer_operand(a, &mut a_copy);
    let b = faer_operand(b, &mut b_copy);
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

/// `x` as a faer matrix: in place when it is row- or column-major, else through a
/// standard-layout copy kept in `copy`.
fn faer_operand<'a, F: Real>(
    x: &'a ArrayView2<'a, F>,
    copy: &'a mut Option<ndarray::Array2<F>>,
) -> faer::MatRef<'a, F> {
    if let Some(r) = faer_ref(x.view()) {
        return r;
    }
    let owned = copy.insert(x.as_standard_layout().into_owned());
    faer_ref(owned.view()).expect("standard layout")
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
