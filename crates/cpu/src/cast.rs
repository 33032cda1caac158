//! `cast` reference: f32/f16/bf16 to f32/f16/bf16, round to nearest even, NaN stays
//! NaN, ±Inf stays ±Inf, finite values beyond the target range become ±Inf.
//! Every f16 and bf16 value is exact in f32, so going through f32 rounds only once.

use crate::device_ops::{floats, input, outs, Alloc, Kernel, Tens};
use crate::util::{get, outputs};
use ingot_core::{CastParams, Result, Tensor, Tensors};
use ingot_core::{DType, Op};

pub fn cast(p: &CastParams, inputs: &Tensors) -> Result<Tensors> {
    let x = get("cast", inputs, "input")?.to_f32()?;
    Ok(outputs([("output", Tensor::from_f32(p.output_dtype, vec![p.num_elements], &x))]))
}

// ---------------------------------------------------------------- fast kernels (`cpu`)

/// The fast kernel of this family's ops on the [`crate::CpuDevice`] ([`crate::device_ops`]).
pub(crate) fn fast(op: &Op) -> Option<Kernel<'_>> {
    Some(match op {
        Op::Cast(p) => Box::new(move |i, a| cast_fast(p, i, a)),
        _ => return None,
    })
}

/// f32/f16/bf16 to f32/f16/bf16, round to nearest even (every f16 and bf16 value is exact
/// in f32, so going through f32 rounds once); the same dtype is a copy.
fn cast_fast(p: &ingot_core::CastParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "cast";
    let src = input(op, ins, "input")?;
    let out = alloc.zeros(p.output_dtype, &[p.num_elements])?;
    {
        let mut w = out.write()?;
        if p.input_dtype == p.output_dtype {
            w.bytes().copy_from_slice(&src.bytes()?);
        } else {
            let x = floats(src)?;
            match p.output_dtype {
                DType::F32 => w.f32().copy_from_slice(&x),
                DType::F16 => w.elems::<u16>().iter_mut().zip(x.iter()).for_each(|(o, &v)| *o = half::f16::from_f32(v).to_bits()),
                _ => w.elems::<u16>().iter_mut().zip(x.iter()).for_each(|(o, &v)| *o = half::bf16::from_f32(v).to_bits()),
            }
        }
    }
    Ok(outs([("output", out)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use ingot_core::{Backend, DType, Op};

    fn cast_vals(from: DType, to: DType, v: &[f32]) -> Tensor {
        let p = CastParams { num_elements: v.len(), input_dtype: from, output_dtype: to };
        let mut t = Tensors::new();
        t.insert("input".into(), Tensor::from_f32(from, vec![v.len()], v));
        CpuBackend.run(&Op::Cast(p), &t).unwrap().remove("output").unwrap()
    }

    #[test]
    fn specials_and_rounding() {
        let v = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 70000.0, -0.0, 1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0];
        let h = cast_vals(DType::F32, DType::F16, &v);
        let raw: Vec<u16> = h.data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        assert_eq!(raw[0] & 0x7c00, 0x7c00);
        assert_ne!(raw[0] & 0x03ff, 0); // NaN
        assert_eq!(raw[1], 0x7c00); // +Inf
        assert_eq!(raw[2], 0xfc00); // -Inf
        assert_eq!(raw[3], 0x7c00); // overflow -> +Inf
        assert_eq!(raw[4], 0x8000); // -0 kept
        assert_eq!(raw[5], 0x3c00); // tie rounds to even (1.0)
        assert_eq!(raw[6], 0x3c02); // tie rounds to even (1 + 2^-9)
        let b = cast_vals(DType::F16, DType::BF16, &[1.0 + 1.0 / 256.0 + 1.0 / 1024.0]);
        assert_eq!(b.to_f32().unwrap(), vec![1.0 + 1.0 / 128.0]);
    }
}
