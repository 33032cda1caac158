//! Golden cases of `gemm`: how inputs are drawn from the seed, and the standard suite's
//! entries.

use super::prelude::*;

/// `gemm`: parameters from the flags, inputs from the seed.
pub(crate) fn gemm(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let (op, inputs) = {
        let p = GemmParams {
            m: f.usize(&["m"], 8)?,
            n: f.usize(&["n"], 16)?,
            k: f.usize(&["k"], 12)?,
            transa: f.bool(&["transa"], false)?,
            transb: f.bool(&["transb"], false)?,
            use_bias: f.bool(&["use_bias"], false)?,
            dtype: dt(f, DType::F32)?,
        };
        let op = Op::Gemm(p.clone());
        op.validate()?;
        limit(&op)?;
        let mut t = Tensors::new();
        for s in op.inputs() {
            let n = s.shape.iter().product();
            t.insert(s.name.to_string(), float(p.dtype, &s.shape, &g.normals(n, 1.0)));
        }
        (op, t)
    };
    Ok((op, inputs))
}

/// This family's entries of the standard suite.
pub(crate) fn standard(v: &mut Vec<Entry>) {
    use OpKind::*;
    for d in DType::FLOATS {
        let dt = || ("dtype", d.name().to_string());
        let n = d.name();
        e(v, format!("awk_{n}"), Gemm, &[("m", "31"), ("n", "33"), ("k", "32")], &[dt()]);
        e(
            v,
            format!("awk_trans_bias_{n}"),
            Gemm,
            &[("m", "33"), ("n", "31"), ("k", "65"), ("transa", "true"), ("transb", "true"), ("use_bias", "true")],
            &[dt()],
        );
        e(v, format!("llm_mlp_up_{n}"), Gemm, &[("m", "4"), ("n", "1536"), ("k", "576"), ("transb", "true")], &[dt()]);
        e(v, format!("llm_gemv_{n}"), Gemm, &[("m", "1"), ("n", "896"), ("k", "896"), ("transb", "true")], &[dt()]);
    }
}
