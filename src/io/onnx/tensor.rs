//! ONNX tensors (`TensorProto`) to and from `ndarray` arrays.

use super::proto::tensor_proto::{DataLocation, DataType};
use super::proto::TensorProto;
use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};

/// Largest element count of one tensor read from a file (2³¹, 8 GiB of `f32`): a hostile
/// `dims` cannot make the reader allocate more than that.
const MAX_ELEMENTS: usize = 1 << 31;

/// The shape of `t`, checked: no negative dimension, and at most [`MAX_ELEMENTS`] elements.
fn shape(t: &TensorProto) -> Result<Vec<usize>> {
    let mut len = 1usize;
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| invalid(t, format!("negative dimension {d}")))?;
        len = len
            .checked_mul(d)
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| invalid(t, format!("dims {:?} hold too many elements", t.dims)))?;
        shape.push(d);
    }
    Ok(shape)
}

fn invalid(t: &TensorProto, what: String) -> Error {
    Error::InvalidOnnx {
        what: format!("tensor {:?}: {what}", t.name),
    }
}

/// The element type of `t`, by name for messages.
fn data_type(t: &TensorProto) -> Result<DataType> {
    DataType::try_from(t.data_type)
        .map_err(|_| invalid(t, format!("unknown data type {}", t.data_type)))
}

/// `t`'s values as `f32` (from FLOAT or DOUBLE data, typed fields or little-endian raw
/// bytes), in its shape.
///
/// # Errors
/// [`Error::InvalidOnnx`] for data stored outside the file, another element type, or a value
/// count that differs from the shape's.
pub(super) fn to_f32(t: &TensorProto) -> Result<ArrayD<f32>> {
    if t.data_location == DataLocation::External as i32 || !t.external_data.is_empty() {
        return Err(invalid(
            t,
            "its data is stored in an external file, which is not supported; save the model \
             with its weights inside (onnx.save(model, path, save_as_external_data=False))"
                .into(),
        ));
    }
    let shape = shape(t)?;
    let values: Vec<f32> = match data_type(t)? {
        DataType::Float if !t.raw_data.is_empty() => raw::<4, _>(t, f32::from_le_bytes)?,
        DataType::Float => t.float_data.clone(),
        DataType::Double if !t.raw_data.is_empty() => {
            raw::<8, _>(t, |b| f64::from_le_bytes(b) as f32)?
        }
        DataType::Double => t.double_data.iter().map(|&v| v as f32).collect(),
        other => {
            return Err(invalid(
                t,
                format!("element type {other:?} where FLOAT or DOUBLE was expected"),
            ))
        }
    };
    let got = values.len();
    ArrayD::from_shape_vec(IxDyn(&shape), values)
        .map_err(|_| invalid(t, format!("{got} values for shape {shape:?}")))
}

/// `t`'s values as `i64` (INT64 or INT32 data), flattened: shapes, axes, pads.
///
/// # Errors
/// As [`to_f32`].
pub(super) fn to_i64(t: &TensorProto) -> Result<Vec<i64>> {
    let len: usize = shape(t)?.iter().product();
    let values = match data_type(t)? {
        DataType::Int64 if !t.raw_data.is_empty() => raw::<8, _>(t, i64::from_le_bytes)?,
        DataType::Int64 => t.int64_data.clone(),
        DataType::Int32 if !t.raw_data.is_empty() => {
            raw::<4, _>(t, |b| i32::from_le_bytes(b).into())?
        }
        DataType::Int32 => t.int32_data.iter().map(|&v| v.into()).collect(),
        other => {
            return Err(invalid(
                t,
                format!("element type {other:?} where INT64 was expected"),
            ))
        }
    };
    if values.len() != len {
        return Err(invalid(
            t,
            format!("{} values for {len} elements", values.len()),
        ));
    }
    Ok(values)
}

/// Decodes little-endian values of `N` bytes from `t.raw_data`.
fn raw<const N: usize, T>(t: &TensorProto, decode: impl Fn([u8; N]) -> T) -> Result<Vec<T>> {
    if !t.raw_data.len().is_multiple_of(N) {
        return Err(invalid(
            t,
            format!("{} raw bytes, not a multiple of {N}", t.raw_data.len()),
        ));
    }
    Ok(t.raw_data
        .chunks_exact(N)
        .map(|c| decode(c.try_into().expect("chunks_exact gives N bytes")))
        .collect())
}

/// A FLOAT tensor named `name` holding `values` (raw little-endian bytes, as PyTorch writes).
pub(super) fn from_f32(name: &str, values: &ArrayD<f32>) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        data_type: DataType::Float as i32,
        dims: values.shape().iter().map(|&d| d as i64).collect(),
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..TensorProto::default()
    }
}
