//! Small helpers shared by the reference ops: reading inputs as f64/i32 and
//! building outputs rounded once to their dtype.

use ingot_core::{DType, Error, Result, Tensor, Tensors};

/// A float input as f64 values (exact).
pub fn f64_in(op: &'static str, inputs: &Tensors, name: &str) -> Result<Vec<f64>> {
    get(op, inputs, name)?.to_f64()
}

/// An i32 input.
pub fn i32_in(op: &'static str, inputs: &Tensors, name: &str) -> Result<Vec<i32>> {
    get(op, inputs, name)?.to_i32()
}

/// A u32 input.
pub fn u32_in(op: &'static str, inputs: &Tensors, name: &str) -> Result<Vec<u32>> {
    get(op, inputs, name)?.to_u32()
}

/// An input tensor by name.
pub fn get<'a>(op: &'static str, inputs: &'a Tensors, name: &str) -> Result<&'a Tensor> {
    inputs.get(name).ok_or_else(|| Error::invalid(op, format!("missing input '{name}'")))
}

/// A float output from f64 values, each rounded once to `dtype`.
pub fn float_out(dtype: DType, shape: &[usize], values: &[f64]) -> Tensor {
    Tensor::from_f64(dtype, shape.to_vec(), values)
}

/// Build the output map from (name, tensor) pairs.
pub fn outputs<const N: usize>(items: [(&str, Tensor); N]) -> Tensors {
    items.into_iter().map(|(n, t)| (n.to_string(), t)).collect()
}
