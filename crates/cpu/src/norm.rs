//! Normalization references: `rms_norm` (with Gemma's (1 + w)), `fused_add_rms_norm`,
//! `layer_norm`, `add_residual` and `add_bias`. Statistics in f64 over the row; each output is
//! rounded once to the dtype. `fused_add_rms_norm` normalizes the *stored* residual
//! (residual_out, already rounded to the dtype), which is what the next layer reads.

use crate::device_ops::{input, outs, Alloc, Kernel, Tens};
use crate::fast;
use crate::util::{f64_in, float_out, outputs};
use ingot_core::{round_to, LayerNormParams, Result, RmsNormParams, RowsParams, Tensors};
use ingot_core::{DType, Op};

fn rms_rows(x: &[f64], w: &[f64], h: usize, eps: f64, gemma: bool) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(h) {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / h as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(v, wi)| v * inv * if gemma { 1.0 + wi } else { *wi }));
    }
    out
}

pub fn rms_norm(p: &RmsNormParams, inputs: &Tensors) -> Result<Tensors> {
    const OP: &str = "rms_norm";
    let x = f64_in(OP, inputs, "input")?;
    let w = f64_in(OP, inputs, "weight")?;
    let y = rms_rows(&x, &w, p.hidden_size, p.eps, p.gemma);
    Ok(outputs([("output", float_out(p.dtype, &[p.num_tokens, p.hidden_size], &y))]))
}

pub fn fused_add_rms_norm(p: &RmsNormParams, inputs: &Tensors) -> Result<Tensors> {
    const OP: &str = "fused_add_rms_norm";
    let x = f64_in(OP, inputs, "input")?;
    let r = f64_in(OP, inputs, "residual")?;
    let w = f64_in(OP, inputs, "weight")?;
    let sum: Vec<f64> = x.iter().zip(&r).map(|(a, b)| round_to(p.dtype, a + b)).collect();
    let y = rms_rows(&sum, &w, p.hidden_size, p.eps, p.gemma);
    let shape = [p.num_tokens, p.hidden_size];
    Ok(outputs([("output", float_out(p.dtype, &shape, &y)), ("residual_out", float_out(p.dtype, &shape, &sum))]))
}

pub fn layer_norm(p: &LayerNormParams, inputs: &Tensors) -> Result<Tensors> {
    const OP: &str = "layer_norm";
    let x = f64_in(OP, inputs, "input")?;
    let g = f64_in(OP, inputs, "gamma")?;
    let b = f64_in(OP, inputs, "beta")?;
    let h = p.hidden_size;
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks_exact(h) {
        let mean = row.iter().sum::<f64>() / h as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / h as f64;
        let inv = 1.0 / (var + p.eps).sqrt();
        y.extend(row.iter().enumerate().map(|(i, v)| (v - mean) * inv * g[i] + b[i]));
    }
    Ok(outputs([("output", float_out(p.dtype, &[p.num_tokens, h], &y))]))
}

pub fn add_residual(p: &RowsParams, inputs: &Tensors) -> Result<Tensors> {
    const OP: &str = "add_residual";
    let x = f64_in(OP, inputs, "input")?;
    let r = f64_in(OP, inputs, "residual")?;
    let y: Vec<f64> = x.iter().zip(&r).map(|(a, b)| a + b).collect();
    Ok(outputs([("output", float_out(p.dtype, &[p.num_tokens, p.hidden_size], &y))]))
}

/// `add_bias`: input + bias, the bias [hidden_size] added to every row.
pub fn add_bias(p: &RowsParams, inputs: &Tensors) -> Result<Tensors> {
    const OP: &str = "add_bias";
    let x = f64_in(OP, inputs, "input")?;
    let b = f64_in(OP, inputs, "bias")?;
    let y: Vec<f64> = x.chunks_exact(p.hidden_size).flat_map(|row| row.iter().zip(&b).map(|(a, c)| a + c)).collect();
    Ok(outputs([("output", float_out(p.dtype, &[p.num_tokens, p.hidden_size], &y))]))
}

// ---------------------------------------------------------------- fast kernels (`cpu`)

/// The fast kernels of this family's ops on the [`crate::CpuDevice`] ([`crate::device_ops`]): f32 only.
pub(crate) fn fast(op: &Op) -> Option<Kernel<'_>> {
    use DType::F32;
    Some(match op {
        Op::RmsNorm(p) if p.dtype == F32 => Box::new(move |i, a| rms_norm_fast(p, i, a)),
        Op::FusedAddRmsNorm(p) if p.dtype == F32 => Box::new(move |i, a| fused_add_rms_norm_fast(p, i, a)),
        Op::AddResidual(p) if p.dtype == F32 => Box::new(move |i, a| add_residual_fast(p, i, a)),
        Op::AddBias(p) if p.dtype == F32 => Box::new(move |i, a| add_bias_fast(p, i, a)),
        Op::LayerNorm(p) if p.dtype == F32 => Box::new(move |i, a| layer_norm_fast(p, i, a)),
        _ => return None,
    })
}

fn rms_norm_fast(p: &ingot_core::RmsNormParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "rms_norm";
    let x = input(op, ins, "input")?.view::<f32>()?;
    let w = input(op, ins, "weight")?.view::<f32>()?;
    let out = alloc.zeros(DType::F32, &[p.num_tokens, p.hidden_size])?;
    fast::rms_norm_into(&x, &w, p.eps, p.gemma, out.write()?.f32());
    Ok(outs([("output", out)]))
}

fn layer_norm_fast(p: &LayerNormParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "layer_norm";
    let x = input(op, ins, "input")?.view::<f32>()?;
    let g = input(op, ins, "gamma")?.view::<f32>()?;
    let b = input(op, ins, "beta")?.view::<f32>()?;
    let out = alloc.zeros(DType::F32, &[p.num_tokens, p.hidden_size])?;
    fast::layer_norm_into(&x, &g, &b, p.eps, out.write()?.f32());
    Ok(outs([("output", out)]))
}

/// residual_out = input + residual (rounded to f32, as stored), output = rms_norm(residual_out).
fn fused_add_rms_norm_fast(p: &ingot_core::RmsNormParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "fused_add_rms_norm";
    let x = input(op, ins, "input")?.view::<f32>()?;
    let r = input(op, ins, "residual")?.view::<f32>()?;
    let w = input(op, ins, "weight")?.view::<f32>()?;
    let shape = [p.num_tokens, p.hidden_size];
    let (sum, out) = (alloc.zeros(DType::F32, &shape)?, alloc.zeros(DType::F32, &shape)?);
    {
        let mut s = sum.write()?;
        let s = s.f32();
        fast::zip_into(&x, &r, s, |a, b| a + b);
        fast::rms_norm_into(s, &w, p.eps, p.gemma, out.write()?.f32());
    }
    Ok(outs([("output", out), ("residual_out", sum)]))
}

fn add_residual_fast(p: &ingot_core::RowsParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "add_residual";
    let x = input(op, ins, "input")?.view::<f32>()?;
    let r = input(op, ins, "residual")?.view::<f32>()?;
    let out = alloc.zeros(DType::F32, &[p.num_tokens, p.hidden_size])?;
    fast::zip_into(&x, &r, out.write()?.f32(), |a, b| a + b);
    Ok(outs([("output", out)]))
}

/// input + bias on every row, in f32.
fn add_bias_fast(p: &ingot_core::RowsParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "add_bias";
    let x = input(op, ins, "input")?.view::<f32>()?;
    let b = input(op, ins, "bias")?.view::<f32>()?;
    let out = alloc.zeros(DType::F32, &[p.num_tokens, p.hidden_size])?;
    let mut w = out.write()?;
    for (o, x) in w.f32().chunks_exact_mut(p.hidden_size).zip(x.chunks_exact(p.hidden_size)) {
        for ((o, &x), &b) in o.iter_mut().zip(x).zip(b.iter()) {
            *o = x + b;
        }
    }
    drop(w);
    Ok(outs([("output", out)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use ingot_core::{Backend, DType, Op, Tensor};

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_f32(DType::F32, shape.to_vec(), v)
    }

    #[test]
    fn rms_norm_by_hand() {
        // row [3, 4]: mean square 12.5, 1/sqrt(12.5) = 0.28284271
        let p = RmsNormParams { num_tokens: 1, hidden_size: 2, eps: 0.0, gemma: false, dtype: DType::F32 };
        let mut i = Tensors::new();
        i.insert("input".into(), t(&[3., 4.], &[1, 2]));
        i.insert("weight".into(), t(&[1., 2.], &[2]));
        let y = CpuBackend.run(&Op::RmsNorm(p.clone()), &i).unwrap()["output"].to_f32().unwrap();
        assert!((y[0] - 0.848_528_1).abs() < 1e-6 && (y[1] - 2.262_741_7).abs() < 1e-6, "{y:?}");
        // Gemma: weight 1 + w
        let pg = RmsNormParams { gemma: true, ..p };
        let yg = CpuBackend.run(&Op::RmsNorm(pg), &i).unwrap()["output"].to_f32().unwrap();
        assert!((yg[0] - 2.0 * 0.848_528_1).abs() < 1e-6 && (yg[1] - 3.0 * 1.131_370_8).abs() < 1e-5, "{yg:?}");
    }

    #[test]
    fn fused_add_equals_add_then_norm() {
        let p = RmsNormParams { num_tokens: 2, hidden_size: 3, eps: 1e-6, gemma: false, dtype: DType::F32 };
        let x = [0.5, -1.0, 2.0, 0.0, 1.0, 1.0];
        let r = [1.0, 1.0, -1.0, 3.0, 0.0, -2.0];
        let w = [1.0, 0.5, 2.0];
        let mut i = Tensors::new();
        i.insert("input".into(), t(&x, &[2, 3]));
        i.insert("residual".into(), t(&r, &[2, 3]));
        i.insert("weight".into(), t(&w, &[3]));
        let out = CpuBackend.run(&Op::FusedAddRmsNorm(p.clone()), &i).unwrap();
        let sum: Vec<f32> = x.iter().zip(&r).map(|(a, b)| a + b).collect();
        assert_eq!(out["residual_out"].to_f32().unwrap(), sum);
        let mut j = Tensors::new();
        j.insert("input".into(), t(&sum, &[2, 3]));
        j.insert("weight".into(), t(&w, &[3]));
        let plain = CpuBackend.run(&Op::RmsNorm(p), &j).unwrap();
        assert_eq!(out["output"], plain["output"]);
    }

    #[test]
    fn layer_norm_by_hand() {
        // row [1, 3]: mean 2, var 1 -> [-1, 1] * gamma + beta
        let p = LayerNormParams { num_tokens: 1, hidden_size: 2, eps: 0.0, dtype: DType::F32 };
        let mut i = Tensors::new();
        i.insert("input".into(), t(&[1., 3.], &[1, 2]));
        i.insert("gamma".into(), t(&[2., 3.], &[2]));
        i.insert("beta".into(), t(&[0.5, 0.0], &[2]));
        let y = CpuBackend.run(&Op::LayerNorm(p), &i).unwrap()["output"].to_f32().unwrap();
        assert_eq!(y, vec![-1.5, 3.0]);
    }

    #[test]
    fn add_bias_adds_the_bias_to_every_row_and_rounds_once() {
        let p = RowsParams { num_tokens: 2, hidden_size: 3, dtype: DType::F32 };
        let mut i = Tensors::new();
        i.insert("input".into(), t(&[1., 2., 3., 1e8, f32::INFINITY, f32::NAN], &[2, 3]));
        i.insert("bias".into(), t(&[0.5, -2., 1.], &[3]));
        let y = CpuBackend.run(&Op::AddBias(p), &i).unwrap()["output"].to_f32().unwrap();
        assert_eq!(y[..5], [1.5, 0., 4., 1e8 + 0.5, f32::INFINITY]);
        assert!(y[5].is_nan());
        // bf16: 1 + 2^-8 + 2^-9 is one rounding (to 1 + 2^-7), not two.
        let p = RowsParams { num_tokens: 1, hidden_size: 1, dtype: DType::BF16 };
        let mut i = Tensors::new();
        i.insert("input".into(), Tensor::from_f32(DType::BF16, vec![1, 1], &[1.0 + 2f32.powi(-7)]));
        i.insert("bias".into(), Tensor::from_f32(DType::BF16, vec![1], &[2f32.powi(-9)]));
        let y = CpuBackend.run(&Op::AddBias(p), &i).unwrap()["output"].to_f32().unwrap();
        assert_eq!(y, vec![1.0 + 2f32.powi(-7)]);
        // Wrong bias length: an error naming the op.
        let p = RowsParams { num_tokens: 1, hidden_size: 2, dtype: DType::F32 };
        let mut i = Tensors::new();
        i.insert("input".into(), t(&[1., 2.], &[1, 2]));
        i.insert("bias".into(), t(&[1., 2., 3.], &[3]));
        assert!(CpuBackend.run(&Op::AddBias(p), &i).unwrap_err().to_string().starts_with("[add_bias] 'bias' has shape [3]"));
    }
}
