//! Golden cases of `quantized_matmul`: how inputs are drawn from the seed, and the standard suite's
//! entries.

use super::prelude::*;

/// `quantized_matmul`: parameters from the flags, inputs from the seed.
pub(crate) fn quantized_matmul(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let (op, inputs) = {
        let p = QuantizedMatmulParams {
            m: f.usize(&["m"], 1)?,
            n: f.usize(&["n"], 64)?,
            k: f.usize(&["k"], 256)?,
            weight_dtype: f.dtype(&["weight_dtype"], DType::Q4_0)?,
            dtype: dt(f, DType::F32)?,
        };
        let op = Op::QuantizedMatmul(p.clone());
        op.validate()?;
        limit(&op)?;
        let w = g.normals(p.n * p.k, 1.0);
        let m =
            ins([("x", float(p.dtype, &[p.m, p.k], &g.normals(p.m * p.k, 1.0))), ("w", weight_tensor(p.weight_dtype, &[p.n, p.k], &w)?)]);
        (op, m)
    };
    Ok((op, inputs))
}

/// This family's entries of the standard suite.
pub(crate) fn standard(v: &mut Vec<Entry>) {
    use OpKind::*;
    for w in DType::WEIGHTS {
        let n = w.name();
        e(v, format!("gemv_{n}"), QuantizedMatmul, &[("m", "1"), ("n", "33"), ("k", "512")], &[("weight_dtype", n.to_string())]);
        e(v, format!("batch_{n}"), QuantizedMatmul, &[("m", "7"), ("n", "31"), ("k", "256")], &[("weight_dtype", n.to_string())]);
    }

    for x in [DType::F16, DType::BF16] {
        e(
            v,
            format!("x{}_q4_k", x.name()),
            QuantizedMatmul,
            &[("m", "3"), ("n", "16"), ("k", "256"), ("weight_dtype", "q4_k")],
            &[("dtype", x.name().to_string())],
        );
        e(
            v,
            format!("x{}_q8_0", x.name()),
            QuantizedMatmul,
            &[("m", "3"), ("n", "16"), ("k", "256"), ("weight_dtype", "q8_0")],
            &[("dtype", x.name().to_string())],
        );
    }

    e(v, "llm_qwen_mlp_q4_0", QuantizedMatmul, &[("m", "1"), ("n", "4864"), ("k", "896"), ("weight_dtype", "q4_0")], &[]);

    e(v, "llm_q6_k", QuantizedMatmul, &[("m", "2"), ("n", "1024"), ("k", "2048"), ("weight_dtype", "q6_k")], &[]);

    e(v, "llm_q4_k", QuantizedMatmul, &[("m", "1"), ("n", "2048"), ("k", "1024"), ("weight_dtype", "q4_k")], &[]);
}
