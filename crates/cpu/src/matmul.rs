//! `quantized_matmul` reference over GGUF weights: dequantized as in `dequantize`
//! ([`crate::quant`], ggml's `dequantize_row_*` exactly, f32); the matmul accumulates
//! x·w in f64 over those exact values and rounds y once to f32.

use crate::device_ops::{floats, input, outs, Alloc, Kernel, Tens};
use crate::fast::{self, WeightView};
use crate::quant::dequantize_matrix;
use crate::util::{f64_in, float_out, get, outputs};
use ingot_core::Op;
use ingot_core::{DType, QuantizedMatmulParams, Result, Tensors};

pub fn quantized_matmul(p: &QuantizedMatmulParams, inputs: &Tensors) -> Result<Tensors> {
    const OP: &str = "quantized_matmul";
    let x = f64_in(OP, inputs, "x")?;
    let w = dequantize_matrix(get(OP, inputs, "w")?, p.n, p.k)?;
    let mut y = vec![0f64; p.m * p.n];
    for i in 0..p.m {
        let xr = &x[i * p.k..(i + 1) * p.k];
        for j in 0..p.n {
            let wr = &w[j * p.k..(j + 1) * p.k];
            y[i * p.n + j] = xr.iter().zip(wr).map(|(a, b)| a * *b as f64).sum();
        }
    }
    Ok(outputs([("y", float_out(DType::F32, &[p.m, p.n], &y))]))
}

// ---------------------------------------------------------------- fast kernels (`cpu`)

/// The fast kernel of this family's ops on the [`crate::CpuDevice`] ([`crate::device_ops`]).
pub(crate) fn fast(op: &Op) -> Option<Kernel<'_>> {
    Some(match op {
        Op::QuantizedMatmul(p) => Box::new(move |i, a| quantized_matmul_fast(p, i, a)),
        _ => return None,
    })
}

/// y = x·Wᵀ by [`fast::matmul_xwt`] over the weight's bytes where they are (a mapped file:
/// no copy); f16/bf16 activations are widened to f32 first.
fn quantized_matmul_fast(p: &ingot_core::QuantizedMatmulParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "quantized_matmul";
    let x = floats(input(op, ins, "x")?)?;
    let w = input(op, ins, "w")?.bytes()?;
    let w = WeightView::new(p.weight_dtype, p.n, p.k, &w)?;
    let y = alloc.zeros(DType::F32, &[p.m, p.n])?;
    fast::matmul_xwt(&x, p.m, &w, y.write()?.f32());
    Ok(outs([("y", y)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_row;
    use crate::CpuBackend;
    use ingot_core::Tensor;
    use ingot_core::{Backend, Op};

    #[test]
    fn matmul_equals_dense_gemm_of_dequantized_weights() {
        let (m, n, k) = (3, 4, 64);
        let wv: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 113) as f32 / 56.0) - 1.0).collect();
        let xv: Vec<f32> = (0..m * k).map(|i| ((i * 31 % 17) as f32 / 8.0) - 1.0).collect();
        for wt in [DType::Q8_0, DType::Q4_1, DType::F16] {
            let wq = quantize_row(wt, &wv).unwrap();
            let w = Tensor::from_bytes(wt, vec![n, k], wq).unwrap();
            let deq = dequantize_matrix(&w, n, k).unwrap();
            let mut t = Tensors::new();
            t.insert("x".into(), Tensor::from_f32(DType::F32, vec![m, k], &xv));
            t.insert("w".into(), w);
            let p = QuantizedMatmulParams { m, n, k, weight_dtype: wt, dtype: DType::F32 };
            let y = CpuBackend.run(&Op::QuantizedMatmul(p), &t).unwrap()["y"].to_f32().unwrap();
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|l| xv[i * k + l] as f64 * deq[j * k + l] as f64).sum();
                    assert!((y[i * n + j] as f64 - want).abs() < 1e-5, "{wt} ({i},{j})");
                }
            }
        }
    }
}
