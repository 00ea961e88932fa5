//! The one reader of reference tensors and model outputs: values as `f64` with their shape, and
//! the comparisons built on it.

use automodel_core::Backend;
use automodel_core::weights::{Dtype, SafeTensorsFiles};
use burn::prelude::*;
use burn::tensor::{DType, TensorData};

use crate::ParityError;
use crate::compare::{Check, Tolerance, compare};

/// Values (row-major) and shape.
pub(crate) type Values = (Vec<f64>, Vec<usize>);

/// A tensor's values.
pub(crate) fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Values {
    data_values(t.into_data())
}

/// Materialised data's values.
pub(crate) fn data_values(d: TensorData) -> Values {
    let shape = d.shape.to_vec();
    let v = d
        .convert_dtype(DType::F64)
        .to_vec::<f64>()
        .expect("converted to f64");
    (v, shape)
}

/// A stored tensor of any dtype (floats, integers, bools, bytes) as `f64` values; float64 is
/// read without rounding through float32.
pub(crate) fn reference(files: &SafeTensorsFiles, name: &str) -> Result<Values, ParityError> {
    let raw = files.raw(name)?;
    let shape = raw.shape.to_vec();
    let v = match raw.dtype {
        Dtype::I64 | Dtype::I32 | Dtype::I8 | Dtype::BOOL => files
            .to_i64_vec(name)?
            .into_iter()
            .map(|x| x as f64)
            .collect(),
        Dtype::U8 => raw.bytes.iter().map(|&b| b as f64).collect(),
        _ => data_values(files.float_data(name)?).0,
    };
    Ok((v, shape))
}

/// A stored 2-D integer tensor as rows.
pub(crate) fn rows(files: &SafeTensorsFiles, name: &str) -> Result<Vec<Vec<i64>>, ParityError> {
    let shape = files.shape(name).map(|s| s.to_vec()).unwrap_or_default();
    if shape.len() != 2 {
        return Err(ParityError::Case {
            path: name.into(),
            message: format!("`{name}` must be 2-D, is {shape:?}"),
        });
    }
    let v = files.to_i64_vec(name)?;
    Ok(v.chunks(shape[1].max(1)).map(|c| c.to_vec()).collect())
}

/// A stored integer tensor, flat.
pub(crate) fn ids(files: &SafeTensorsFiles, name: &str) -> Result<Vec<i64>, ParityError> {
    Ok(files.to_i64_vec(name)?)
}

/// A stored float tensor on `device`, as float32.
pub(crate) fn float_tensor<B: Backend, const D: usize>(
    files: &SafeTensorsFiles,
    name: &str,
    device: &B::Device,
) -> Result<Tensor<B, D>, ParityError> {
    let data = files.float_data(name)?.convert_dtype(DType::F32);
    Ok(Tensor::from_data(data, (device, DType::F32)))
}

/// Compare `got` with the reference tensor `name`.
pub(crate) fn check(
    name: &str,
    got: Values,
    files: &SafeTensorsFiles,
    tol: Tolerance,
) -> Result<Check, ParityError> {
    let (want, want_shape) = reference(files, name)?;
    Ok(compare(name, &got.0, &got.1, &want, &want_shape, tol))
}

/// [`check`] for an output the model may not have produced (a failed check then).
pub(crate) fn output_check(
    name: &str,
    got: Option<Values>,
    files: &SafeTensorsFiles,
    tol: Tolerance,
) -> Result<Check, ParityError> {
    match got {
        Some(g) => check(name, g, files, tol),
        None => Ok(Check::failed(
            name,
            tol,
            "the model produced no such tensor",
        )),
    }
}

/// Rows of ids as values `[B, T]`.
pub(crate) fn id_values(r: &[Vec<i64>]) -> Values {
    (
        r.iter().flatten().map(|&x| x as f64).collect(),
        vec![r.len(), r.first().map_or(0, |x| x.len())],
    )
}
