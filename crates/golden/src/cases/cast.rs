//! Golden cases of `cast`: how inputs are drawn from the seed, and the standard suite's
//! entries.

use super::prelude::*;

/// `cast`: parameters from the flags, inputs from the seed.
pub(crate) fn cast(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let (op, inputs) = {
        let p = CastParams {
            num_elements: f.usize(&["num_elements"], 1024)?,
            input_dtype: f.dtype(&["input_dtype", "dtype"], DType::F32)?,
            output_dtype: f.dtype(&["output_dtype"], DType::F16)?,
        };
        let op = Op::Cast(p.clone());
        op.validate()?;
        limit(&op)?;
        let mut x: Vec<f64> = (0..p.num_elements)
            .map(|i| {
                let scale = [1.0, 1e4, 1e-5, 1e-40, 3e38, 0.5][i % 6];
                g.normal() * scale
            })
            .collect();
        // Specials, range ends and exact rounding ties of f16 and bf16.
        let specials = [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            65504.0,
            65520.0,
            -65536.0,
            1.0 + 2f64.powi(-11),
            1.0 + 3.0 * 2f64.powi(-11),
            1.0 + 2f64.powi(-8),
            1.0 + 3.0 * 2f64.powi(-8),
            5.96e-8,
            2.98e-8,
            1e-45,
            3.4e38,
        ];
        for (xi, s) in x.iter_mut().zip(specials) {
            *xi = s;
        }
        (op, ins([("input", float(p.input_dtype, &[p.num_elements], &x))]))
    };
    Ok((op, inputs))
}

/// This family's entries of the standard suite.
pub(crate) fn standard(v: &mut Vec<Entry>) {
    use OpKind::*;
    for d in DType::FLOATS {
        let n = d.name();
        for out in DType::FLOATS {
            e(
                v,
                format!("{n}_to_{}", out.name()),
                Cast,
                &[("num_elements", "1031")],
                &[("input_dtype", n.to_string()), ("output_dtype", out.name().to_string())],
            );
        }
    }
}
