//! A host tensor: dtype, shape and little-endian bytes. It is the unit of the
//! golden protocol (one raw file per tensor) and the input/output of [`crate::Backend::run`].

use crate::{DType, Error, Result};
use half::{bf16, f16};
use std::collections::BTreeMap;

/// Named tensors, sorted by name: the inputs or outputs of one op call.
pub type Tensors = BTreeMap<String, Tensor>;

/// A tensor in host memory. `data` holds the elements as little-endian bytes;
/// for GGUF block formats it holds the blocks exactly as GGUF stores them, and
/// `shape` is the logical shape (the last dimension a multiple of the block size).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Tensor {
    /// Number of logical elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Build a tensor from raw bytes, checking that the byte count fits dtype and shape.
    pub fn from_bytes(dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> Result<Self> {
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let want = numel.and_then(|n| dtype.bytes_for(n));
        match want {
            Some(w) if w == data.len() => Ok(Tensor { dtype, shape, data }),
            Some(w) => Err(Error::invalid("tensor", format!("{dtype} tensor of shape {shape:?} needs {w} bytes, got {}", data.len()))),
            None => {
                Err(Error::invalid("tensor", format!("shape {shape:?} is not a whole number of {dtype} blocks of {}", dtype.block_size())))
            }
        }
    }

    /// A float tensor from f32 values, rounded to nearest even for f16/bf16.
    ///
    /// # Panics
    /// If `dtype` is not a float type or `values.len()` differs from the shape's product
    /// (both are programming errors of the caller, never user input).
    pub fn from_f32(dtype: DType, shape: Vec<usize>, values: &[f32]) -> Self {
        assert_eq!(values.len(), shape.iter().product::<usize>(), "from_f32: length/shape mismatch");
        let data = match dtype {
            DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::F16 => values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
            DType::BF16 => values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect(),
            other => panic!("from_f32: {other} is not a float dtype"),
        };
        Tensor { dtype, shape, data }
    }

    /// A float tensor from f64 values: each rounded once (f64 to f32, then
    /// round-to-nearest-even to f16/bf16 from f32).
    pub fn from_f64(dtype: DType, shape: Vec<usize>, values: &[f64]) -> Self {
        let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
        Tensor::from_f32(dtype, shape, &v)
    }

    /// An i32 tensor.
    pub fn from_i32(shape: Vec<usize>, values: &[i32]) -> Self {
        assert_eq!(values.len(), shape.iter().product::<usize>(), "from_i32: length/shape mismatch");
        Tensor { dtype: DType::I32, shape, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    /// A u32 tensor.
    pub fn from_u32(shape: Vec<usize>, values: &[u32]) -> Self {
        assert_eq!(values.len(), shape.iter().product::<usize>(), "from_u32: length/shape mismatch");
        Tensor { dtype: DType::U32, shape, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    /// The elements as f32 (exact for f16/bf16). Errors for non-float dtypes.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let d = &self.data;
        Ok(match self.dtype {
            DType::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::F16 => d.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::BF16 => d.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => return Err(Error::invalid("tensor", format!("to_f32 on a {other} tensor"))),
        })
    }

    /// The elements as f64 (exact for every float dtype).
    pub fn to_f64(&self) -> Result<Vec<f64>> {
        Ok(self.to_f32()?.into_iter().map(f64::from).collect())
    }

    /// The elements of an i32 tensor.
    pub fn to_i32(&self) -> Result<Vec<i32>> {
        if self.dtype != DType::I32 {
            return Err(Error::invalid("tensor", format!("to_i32 on a {} tensor", self.dtype)));
        }
        Ok(self.data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// The elements of a u32 tensor.
    pub fn to_u32(&self) -> Result<Vec<u32>> {
        if self.dtype != DType::U32 {
            return Err(Error::invalid("tensor", format!("to_u32 on a {} tensor", self.dtype)));
        }
        Ok(self.data.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

/// Round an f64 to the nearest value representable in `dtype` (f32, f16 or bf16),
/// returned as f64. Used by references that compute in f64 and store in a narrower type.
pub fn round_to(dtype: DType, x: f64) -> f64 {
    let f = x as f32;
    match dtype {
        DType::F16 => f16::from_f32(f).to_f64(),
        DType::BF16 => bf16::from_f32(f).to_f64(),
        _ => f as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_count_checked() {
        assert!(Tensor::from_bytes(DType::F32, vec![2, 3], vec![0; 24]).is_ok());
        assert!(Tensor::from_bytes(DType::F32, vec![2, 3], vec![0; 23]).is_err());
        assert!(Tensor::from_bytes(DType::Q4_0, vec![2, 32], vec![0; 36]).is_ok());
        assert!(Tensor::from_bytes(DType::Q4_0, vec![2, 33], vec![0; 36]).is_err());
        assert!(Tensor::from_bytes(DType::F32, vec![usize::MAX, 2], vec![]).is_err());
    }

    #[test]
    fn f16_round_trip_is_exact() {
        let t = Tensor::from_f32(DType::F16, vec![3], &[1.0, -2.5, 65504.0]);
        assert_eq!(t.to_f32().unwrap(), vec![1.0, -2.5, 65504.0]);
        assert_eq!(round_to(DType::BF16, 1.0 + 1.0 / 512.0), 1.0);
    }
}
