//! Golden cases of the norms and the residual and bias adds: how inputs are drawn from the seed, and the standard suite's
//! entries.

use super::prelude::*;

/// `rms_norm`: parameters from the flags, inputs from the seed.
pub(crate) fn rms_norm(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    rms_norm_like(OpKind::RmsNorm, f, g)
}

/// `fused_add_rms_norm`: parameters from the flags, inputs from the seed.
pub(crate) fn fused_add_rms_norm(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    rms_norm_like(OpKind::FusedAddRmsNorm, f, g)
}

/// The shared builder of `rms_norm`, `fused_add_rms_norm`.
fn rms_norm_like(kind: OpKind, f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    use OpKind::*;
    let (op, inputs) = {
        let p = RmsNormParams {
            num_tokens: f.usize(&["num_tokens"], 8)?,
            hidden_size: f.usize(&["hidden_size"], 128)?,
            eps: f.f64(&["eps"], 1e-5)?,
            gemma: f.bool(&["gemma"], false)?,
            dtype: dt(f, DType::F32)?,
        };
        let op = if kind == RmsNorm { Op::RmsNorm(p.clone()) } else { Op::FusedAddRmsNorm(p.clone()) };
        op.validate()?;
        limit(&op)?;
        let (t, h) = (p.num_tokens, p.hidden_size);
        // Rows of different scale: the norm must not depend on it.
        let x: Vec<f64> = (0..t * h).map(|i| g.normal() * (1.0 + (i / h) as f64 * 0.7)).collect();
        let w: Vec<f64> = (0..h).map(|_| if p.gemma { 0.1 * g.normal() } else { 1.0 + 0.1 * g.normal() }).collect();
        let mut m = ins([("input", float(p.dtype, &[t, h], &x)), ("weight", float(p.dtype, &[h], &w))]);
        if kind == FusedAddRmsNorm {
            m.insert("residual".into(), float(p.dtype, &[t, h], &g.normals(t * h, 1.0)));
        }
        (op, m)
    };
    Ok((op, inputs))
}

/// `layer_norm`: parameters from the flags, inputs from the seed.
pub(crate) fn layer_norm(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let (op, inputs) = {
        let p = LayerNormParams {
            num_tokens: f.usize(&["num_tokens"], 8)?,
            hidden_size: f.usize(&["hidden_size"], 128)?,
            eps: f.f64(&["eps"], 1e-5)?,
            dtype: dt(f, DType::F32)?,
        };
        let op = Op::LayerNorm(p.clone());
        op.validate()?;
        limit(&op)?;
        let (t, h) = (p.num_tokens, p.hidden_size);
        let x: Vec<f64> = g.normals(t * h, 2.0).into_iter().map(|v| v + 0.5).collect();
        let gamma: Vec<f64> = g.normals(h, 0.1).into_iter().map(|v| v + 1.0).collect();
        let m = ins([
            ("input", float(p.dtype, &[t, h], &x)),
            ("gamma", float(p.dtype, &[h], &gamma)),
            ("beta", float(p.dtype, &[h], &g.normals(h, 0.1))),
        ]);
        (op, m)
    };
    Ok((op, inputs))
}

/// `add_residual`: parameters from the flags, inputs from the seed.
pub(crate) fn add_residual(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let (op, inputs) = {
        let p = RowsParams {
            num_tokens: f.usize(&["num_tokens"], 8)?,
            hidden_size: f.usize(&["hidden_size"], 128)?,
            dtype: dt(f, DType::F32)?,
        };
        let op = Op::AddResidual(p.clone());
        op.validate()?;
        limit(&op)?;
        let n = p.num_tokens * p.hidden_size;
        let s = [p.num_tokens, p.hidden_size];
        let m = ins([("input", float(p.dtype, &s, &g.normals(n, 1.0))), ("residual", float(p.dtype, &s, &g.normals(n, 1.0)))]);
        (op, m)
    };
    Ok((op, inputs))
}

/// `add_bias`: parameters from the flags, inputs from the seed.
pub(crate) fn add_bias(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let (op, inputs) = {
        let p = RowsParams {
            num_tokens: f.usize(&["num_tokens"], 8)?,
            hidden_size: f.usize(&["hidden_size"], 128)?,
            dtype: dt(f, DType::F32)?,
        };
        let op = Op::AddBias(p.clone());
        op.validate()?;
        limit(&op)?;
        let (t, h) = (p.num_tokens, p.hidden_size);
        let mut x = g.normals(t * h, 1.0);
        with_specials(&mut x);
        (op, ins([("input", float(p.dtype, &[t, h], &x)), ("bias", float(p.dtype, &[h], &g.normals(h, 0.5)))]))
    };
    Ok((op, inputs))
}

/// This family's entries of the standard suite.
pub(crate) fn standard(v: &mut Vec<Entry>) {
    use OpKind::*;
    for d in DType::FLOATS {
        let dt = || ("dtype", d.name().to_string());
        let n = d.name();
        for op in [RmsNorm, FusedAddRmsNorm] {
            e(v, format!("awk_{n}"), op, &[("num_tokens", "3"), ("hidden_size", "33")], &[dt()]);
            e(v, format!("llm_{n}"), op, &[("num_tokens", "7"), ("hidden_size", "4096"), ("eps", "1e-5")], &[dt()]);
            e(v, format!("gemma_{n}"), op, &[("num_tokens", "5"), ("hidden_size", "640"), ("eps", "1e-6"), ("gemma", "true")], &[dt()]);
        }
        e(v, format!("awk_{n}"), LayerNorm, &[("num_tokens", "3"), ("hidden_size", "33")], &[dt()]);
        e(v, format!("llm_{n}"), LayerNorm, &[("num_tokens", "5"), ("hidden_size", "768")], &[dt()]);
        e(v, format!("awk_{n}"), AddResidual, &[("num_tokens", "3"), ("hidden_size", "33")], &[dt()]);
        e(v, format!("llm_{n}"), AddResidual, &[("num_tokens", "4"), ("hidden_size", "4096")], &[dt()]);
        e(v, format!("awk_{n}"), AddBias, &[("num_tokens", "3"), ("hidden_size", "33")], &[dt()]);
        e(v, format!("one_token_{n}"), AddBias, &[("num_tokens", "1"), ("hidden_size", "31")], &[dt()]);
        e(v, format!("qwen2_qkv_{n}"), AddBias, &[("num_tokens", "7"), ("hidden_size", "896")], &[dt()]);
    }
}
