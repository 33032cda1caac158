//! Golden cases of the activations and `scale`: how inputs are drawn from the seed, and the standard suite's
//! entries.

use super::prelude::*;

/// `silu_and_mul`: parameters from the flags, inputs from the seed.
pub(crate) fn silu_and_mul(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    silu_and_mul_like(OpKind::SiluAndMul, f, g)
}

/// `gelu_and_mul`: parameters from the flags, inputs from the seed.
pub(crate) fn gelu_and_mul(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    silu_and_mul_like(OpKind::GeluAndMul, f, g)
}

/// The shared builder of `silu_and_mul`, `gelu_and_mul`.
fn silu_and_mul_like(kind: OpKind, f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    use OpKind::*;
    let (op, inputs) = {
        let p = GatedParams {
            num_tokens: f.usize(&["num_tokens"], 8)?,
            intermediate_size: f.usize(&["intermediate_size"], 256)?,
            dtype: dt(f, DType::F32)?,
            packed: f.bool(&["packed"], false)?,
        };
        let op = if kind == SiluAndMul { Op::SiluAndMul(p.clone()) } else { Op::GeluAndMul(p.clone()) };
        op.validate()?;
        limit(&op)?;
        let (t, i) = (p.num_tokens, p.intermediate_size);
        let (gate, up) = (g.normals(t * i, 2.0), g.normals(t * i, 1.0));
        let m = if p.packed {
            // Row r: gate row r, then up row r.
            let x: Vec<f64> = gate.chunks(i).zip(up.chunks(i)).flat_map(|(a, b)| a.iter().chain(b).copied()).collect();
            ins([("input", float(p.dtype, &[t, 2 * i], &x))])
        } else {
            ins([("gate", float(p.dtype, &[t, i], &gate)), ("up", float(p.dtype, &[t, i], &up))])
        };
        (op, m)
    };
    Ok((op, inputs))
}

/// `gelu`: parameters from the flags, inputs from the seed.
pub(crate) fn gelu(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    gelu_like(OpKind::Gelu, f, g)
}

/// `gelu_tanh`: parameters from the flags, inputs from the seed.
pub(crate) fn gelu_tanh(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    gelu_like(OpKind::GeluTanh, f, g)
}

/// `silu`: parameters from the flags, inputs from the seed.
pub(crate) fn silu(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    gelu_like(OpKind::Silu, f, g)
}

/// `relu`: parameters from the flags, inputs from the seed.
pub(crate) fn relu(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    gelu_like(OpKind::Relu, f, g)
}

/// `sigmoid`: parameters from the flags, inputs from the seed.
pub(crate) fn sigmoid(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    gelu_like(OpKind::Sigmoid, f, g)
}

/// The shared builder of `gelu`, `gelu_tanh`, `silu`, `relu`, `sigmoid`.
fn gelu_like(kind: OpKind, f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    use OpKind::*;
    let (op, inputs) = {
        let p = UnaryParams { num_elements: f.usize(&["num_elements"], 1024)?, dtype: dt(f, DType::F32)? };
        let op = match kind {
            Gelu => Op::Gelu(p.clone()),
            GeluTanh => Op::GeluTanh(p.clone()),
            Silu => Op::Silu(p.clone()),
            Relu => Op::Relu(p.clone()),
            _ => Op::Sigmoid(p.clone()),
        };
        op.validate()?;
        limit(&op)?;
        let mut x = g.normals(p.num_elements, 3.0);
        let specials = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, 20.0, -20.0, 100.0, -100.0, 1e-3, -1e-3, 5.0];
        for (xi, s) in x.iter_mut().zip(specials) {
            *xi = s;
        }
        (op, ins([("input", float(p.dtype, &[p.num_elements], &x))]))
    };
    Ok((op, inputs))
}

/// `scale`: parameters from the flags, inputs from the seed.
pub(crate) fn scale(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let (op, inputs) = {
        let p = ScaleParams { num_elements: f.usize(&["num_elements"], 1024)?, scale: f.f64(&["scale"], 0.1)?, dtype: dt(f, DType::F32)? };
        let op = Op::Scale(p.clone());
        op.validate()?;
        limit(&op)?;
        let mut x = g.normals(p.num_elements, 3.0);
        with_specials(&mut x);
        (op, ins([("input", float(p.dtype, &[p.num_elements], &x))]))
    };
    Ok((op, inputs))
}

/// This family's entries of the standard suite.
pub(crate) fn standard(v: &mut Vec<Entry>) {
    use OpKind::*;
    for d in DType::FLOATS {
        let dt = || ("dtype", d.name().to_string());
        let n = d.name();
        e(v, format!("awk_{n}"), Scale, &[("num_elements", "33"), ("scale", "0.1")], &[dt()]);
        e(v, format!("one_{n}"), Scale, &[("num_elements", "1"), ("scale", "-3")], &[dt()]);
        e(v, format!("gemma_embd_{n}"), Scale, &[("num_elements", "65537"), ("scale", "25.298221281347036")], &[dt()]);
        e(v, format!("awk_{n}"), SiluAndMul, &[("num_tokens", "3"), ("intermediate_size", "33")], &[dt()]);
        e(v, format!("llm_{n}"), SiluAndMul, &[("num_tokens", "4"), ("intermediate_size", "4864")], &[dt()]);
        e(v, format!("awk_{n}"), GeluAndMul, &[("num_tokens", "3"), ("intermediate_size", "31")], &[dt()]);
        e(v, format!("llm_{n}"), GeluAndMul, &[("num_tokens", "4"), ("intermediate_size", "2048")], &[dt()]);
        e(v, format!("packed_awk_{n}"), SiluAndMul, &[("num_tokens", "3"), ("intermediate_size", "33"), ("packed", "true")], &[dt()]);
        e(v, format!("packed_one_{n}"), SiluAndMul, &[("num_tokens", "1"), ("intermediate_size", "1536"), ("packed", "true")], &[dt()]);
        e(v, format!("packed_awk_{n}"), GeluAndMul, &[("num_tokens", "5"), ("intermediate_size", "31"), ("packed", "true")], &[dt()]);
        e(v, format!("packed_llm_{n}"), GeluAndMul, &[("num_tokens", "4"), ("intermediate_size", "2048"), ("packed", "true")], &[dt()]);
        for op in [Gelu, GeluTanh, Silu, Relu, Sigmoid] {
            e(v, format!("awk_{n}"), op, &[("num_elements", "33")], &[dt()]);
            e(v, format!("big_{n}"), op, &[("num_elements", "65537")], &[dt()]);
        }
    }
}
