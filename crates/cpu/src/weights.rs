//! `dequantize` and `quantized_matmul` references over GGUF weights.
//! Dequantized values follow ggml's `dequantize_row_*` exactly (f32); the matmul
//! accumulates x·w in f64 over those exact values and rounds y once to f32.

use crate::quant::dequantize_row;
use crate::util::{f64_in, float_out, get, outputs};
use ingot_core::{DType, DequantizeParams, QuantizedMatmulParams, Result, Tensor, Tensors};

/// Dequantize a [rows, cols] weight tensor to f32 values, row by row.
pub fn dequantize_matrix(t: &Tensor, rows: usize, cols: usize) -> Result<Vec<f32>> {
    let row_bytes = t.dtype.bytes_for(cols).unwrap_or(0);
    let mut out = vec![0f32; rows * cols];
    for (src, dst) in t.data.chunks_exact(row_bytes.max(1)).zip(out.chunks_exact_mut(cols)) {
        dequantize_row(t.dtype, src, dst)?;
    }
    Ok(out)
}

pub fn dequantize(p: &DequantizeParams, inputs: &Tensors) -> Result<Tensors> {
    let t = get("dequantize", inputs, "input")?;
    let v = dequantize_matrix(t, p.rows, p.cols)?;
    Ok(outputs([("output", Tensor::from_f32(DType::F32, vec![p.rows, p.cols], &v))]))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_row;
    use crate::CpuBackend;
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
