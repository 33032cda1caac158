//! Golden cases of `dequantize`: how inputs are drawn from the seed, and the standard suite's
//! entries.

use super::prelude::*;

/// `dequantize`: parameters from the flags, inputs from the seed.
pub(crate) fn dequantize(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let (op, inputs) = {
        let p = DequantizeParams {
            rows: f.usize(&["rows"], 4)?,
            cols: f.usize(&["cols"], 256)?,
            dtype: f.dtype(&["dtype", "weight_dtype"], DType::Q4_0)?,
        };
        let op = Op::Dequantize(p.clone());
        op.validate()?;
        limit(&op)?;
        let w = g.normals(p.rows * p.cols, 1.0);
        (op, ins([("input", weight_tensor(p.dtype, &[p.rows, p.cols], &w)?)]))
    };
    Ok((op, inputs))
}

/// This family's entries of the standard suite.
pub(crate) fn standard(v: &mut Vec<Entry>) {
    use OpKind::*;
    for w in DType::WEIGHTS {
        let n = w.name();
        let cols = if w.block_size() == 256 { "512" } else { "96" };
        e(v, format!("std_{n}"), Dequantize, &[("rows", "3"), ("cols", cols)], &[("dtype", n.to_string())]);
    }
}
