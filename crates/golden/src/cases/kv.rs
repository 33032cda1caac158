//! Golden cases of `append_paged_kv_cache`, `quantize_kv`, `dequantize_kv`: how inputs are drawn from the seed, and the standard suite's
//! entries.

use super::prelude::*;

/// `quantize_kv`: parameters from the flags, inputs from the seed.
pub(crate) fn quantize_kv(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    kv_quant(OpKind::QuantizeKv, f, g)
}

/// `dequantize_kv`: parameters from the flags, inputs from the seed.
pub(crate) fn dequantize_kv(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    kv_quant(OpKind::DequantizeKv, f, g)
}

/// `append_paged_kv_cache`: parameters from the flags, inputs from the seed.
pub(crate) fn append_paged_kv_cache(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    super::attention::paged(OpKind::AppendPagedKvCache, f, g)
}

fn kv_quant(kind: OpKind, f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let hk = f.usize(&["num_kv_heads", "n_kv_heads"], 8)?;
    let d = f.usize(&["head_size", "head_dim"], 128)?;
    let max_seq = f.usize(&["max_seq"], 64)?;
    let gs = f.usize(&["group_size"], 32)?;
    let bits = f.usize(&["bits"], 4)?;
    let dtype = dt(f, DType::F32)?;
    let op = if kind == OpKind::QuantizeKv {
        Op::QuantizeKv(KvQuantParams {
            n_kv_heads: hk,
            head_dim: d,
            max_seq,
            group_size: gs,
            bits,
            position: f.usize(&["position"], 7)?,
            dtype,
        })
    } else {
        Op::DequantizeKv(KvDequantParams {
            n_kv_heads: hk,
            head_dim: d,
            max_seq,
            group_size: gs,
            bits,
            start: f.usize(&["start"], 0)?,
            n_positions: f.usize(&["n_positions"], 16)?,
            dtype,
        })
    };
    op.validate()?;
    limit(&op)?;
    let specs = op.inputs();
    let mut t = Tensors::new();
    for s in &specs {
        let n: usize = s.shape.iter().product();
        let tensor = match s.name {
            "src" => {
                // Group means vary, so groups do not share scales.
                let v: Vec<f64> = (0..n).map(|i| g.normal() + ((i / gs) as f64 * 0.7).sin()).collect();
                float(dtype, &s.shape, &v)
            }
            "cache_w" => Tensor::from_u32(s.shape.clone(), &(0..n).map(|_| g.rng.gen::<u32>()).collect::<Vec<_>>()),
            "cache_s" => float(dtype, &s.shape, &(0..n).map(|_| g.normal().abs() * 0.1).collect::<Vec<_>>()),
            _ => float(dtype, &s.shape, &g.normals(n, 1.0)),
        };
        t.insert(s.name.to_string(), tensor);
    }
    Ok((op, t))
}

/// This family's entries of the standard suite.
pub(crate) fn standard(v: &mut Vec<Entry>) {
    use OpKind::*;
    for d in DType::FLOATS {
        let dt = || ("dtype", d.name().to_string());
        let n = d.name();
        e(
            v,
            format!("awk_{n}"),
            AppendPagedKvCache,
            &[("batch_size", "3"), ("num_kv_heads", "3"), ("head_size", "64"), ("page_size", "16"), ("kv_len", "37"), ("num_tokens", "5")],
            &[dt()],
        );
        e(
            v,
            format!("decode_{n}"),
            AppendPagedKvCache,
            &[
                ("batch_size", "4"),
                ("num_kv_heads", "8"),
                ("head_size", "128"),
                ("page_size", "16"),
                ("kv_len", "100"),
                ("num_tokens", "1"),
            ],
            &[dt()],
        );
        e(
            v,
            format!("ps1_{n}"),
            AppendPagedKvCache,
            &[("batch_size", "2"), ("num_kv_heads", "2"), ("head_size", "32"), ("page_size", "1"), ("kv_len", "9"), ("num_tokens", "9")],
            &[dt()],
        );
        for bits in ["4", "8"] {
            e(
                v,
                format!("qwen_int{bits}_{n}"),
                QuantizeKv,
                &[("num_kv_heads", "8"), ("head_size", "128"), ("max_seq", "64"), ("group_size", "32"), ("position", "7")],
                &[("bits", bits.to_string()), dt()],
            );
            e(
                v,
                format!("awk_int{bits}_{n}"),
                QuantizeKv,
                &[("num_kv_heads", "3"), ("head_size", "64"), ("max_seq", "5"), ("group_size", "16"), ("position", "4")],
                &[("bits", bits.to_string()), dt()],
            );
            e(
                v,
                format!("qwen_int{bits}_{n}"),
                DequantizeKv,
                &[("num_kv_heads", "8"), ("head_size", "128"), ("max_seq", "64"), ("group_size", "32"), ("n_positions", "16")],
                &[("bits", bits.to_string()), dt()],
            );
            e(
                v,
                format!("awk_int{bits}_{n}"),
                DequantizeKv,
                &[("num_kv_heads", "3"), ("head_size", "64"), ("max_seq", "9"), ("group_size", "16"), ("start", "3"), ("n_positions", "5")],
                &[("bits", bits.to_string()), dt()],
            );
        }
    }
}
