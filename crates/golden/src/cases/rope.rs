//! Golden cases of `rope`, `rope_freqs` and `rope_qkv`: how inputs are drawn from the seed, and the standard suite's
//! entries.

use super::prelude::*;

/// `rope`: parameters from the flags, inputs from the seed.
pub(crate) fn rope(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let (op, inputs) = {
        let num_heads = f.usize(&["num_heads"], 8)?;
        let head_size = f.usize(&["head_size", "head_dim"], 64)?;
        let p = RopeParams {
            num_tokens: f.usize(&["num_tokens"], 4)?,
            num_heads,
            num_kv_heads: f.usize(&["num_kv_heads"], num_heads)?,
            head_size,
            rotary_dim: f.usize(&["rotary_dim"], head_size)?,
            rope_theta: f.f64(&["rope_theta"], 1e4)?,
            interleave: f.bool(&["interleave"], false)?,
            rope_factor: f.f64(&["rope_factor"], 1.0)?,
            low_freq_factor: f.f64(&["low_freq_factor"], 1.0)?,
            high_freq_factor: f.f64(&["high_freq_factor"], 4.0)?,
            original_max_position: f.usize(&["original_max_position"], 8192)?,
            dtype: dt(f, DType::F32)?,
        };
        let max_pos = f.usize(&["max_position"], 4096)?;
        if max_pos == 0 || max_pos > i32::MAX as usize {
            return Err(Error::Usage(format!("--max_position must be in 1..=2^31-1, got {max_pos}")));
        }
        let op = Op::Rope(p.clone());
        op.validate()?;
        limit(&op)?;
        let t = p.num_tokens;
        let mut pos: Vec<i32> = (0..t).map(|_| g.below(max_pos) as i32).collect();
        pos[0] = 0;
        let m = ins([
            ("q", float(p.dtype, &[t, p.num_heads, head_size], &g.normals(t * p.num_heads * head_size, 1.0))),
            ("k", float(p.dtype, &[t, p.num_kv_heads, head_size], &g.normals(t * p.num_kv_heads * head_size, 1.0))),
            ("pos_ids", Tensor::from_i32(vec![t], &pos)),
        ]);
        (op, m)
    };
    Ok((op, inputs))
}

/// `rope_freqs`: parameters from the flags, inputs from the seed.
pub(crate) fn rope_freqs(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let (op, inputs) = {
        let num_heads = f.usize(&["num_heads"], 8)?;
        let head_size = f.usize(&["head_size", "head_dim"], 64)?;
        let p = RopeFreqsParams {
            num_tokens: f.usize(&["num_tokens"], 4)?,
            num_heads,
            head_size,
            rotary_dim: f.usize(&["rotary_dim"], head_size)?,
            interleave: f.bool(&["interleave"], false)?,
            dtype: dt(f, DType::F32)?,
        };
        // The table: `rope`'s frequencies for these flags (Llama 3's divisors when
        // rope_factor > 1, any base), rounded to f32 as a model stores them.
        let table = RopeParams {
            num_tokens: 1,
            num_heads: 1,
            num_kv_heads: 1,
            head_size,
            rotary_dim: p.rotary_dim,
            rope_theta: f.f64(&["rope_theta"], 1e4)?,
            interleave: p.interleave,
            rope_factor: f.f64(&["rope_factor"], 1.0)?,
            low_freq_factor: f.f64(&["low_freq_factor"], 1.0)?,
            high_freq_factor: f.f64(&["high_freq_factor"], 4.0)?,
            original_max_position: f.usize(&["original_max_position"], 8192)?,
            dtype: p.dtype,
        };
        let max_pos = f.usize(&["max_position"], 4096)?;
        if max_pos == 0 || max_pos > i32::MAX as usize {
            return Err(Error::Usage(format!("--max_position must be in 1..=2^31-1, got {max_pos}")));
        }
        let op = Op::RopeFreqs(p.clone());
        op.validate()?;
        Op::Rope(table.clone()).validate().map_err(|e| Error::Usage(format!("the inv_freq table's flags: {e}")))?;
        limit(&op)?;
        let inv: Vec<f64> = ingot_cpu::rope::inv_freqs(&table).iter().map(|&v| v as f32 as f64).collect();
        let t = p.num_tokens;
        let mut pos: Vec<i32> = (0..t).map(|_| g.below(max_pos) as i32).collect();
        if t > 1 {
            pos[0] = 0;
        }
        let n = t * p.num_heads * head_size;
        let m = ins([
            ("input", float(p.dtype, &[t, p.num_heads, head_size], &g.normals(n, 1.0))),
            ("pos_ids", Tensor::from_i32(vec![t], &pos)),
            ("inv_freq", float(DType::F32, &[p.rotary_dim / 2], &inv)),
        ]);
        (op, m)
    };
    Ok((op, inputs))
}

/// `rope_qkv`: parameters from the flags, inputs from the seed (the table as `rope_freqs`
/// makes it; norm weights around 1).
pub(crate) fn rope_qkv(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let num_heads = f.usize(&["num_heads"], 8)?;
    let head_size = f.usize(&["head_size", "head_dim"], 64)?;
    let p = RopeQkvParams {
        num_tokens: f.usize(&["num_tokens"], 4)?,
        num_heads,
        num_kv_heads: f.usize(&["num_kv_heads"], num_heads)?,
        with_v: f.bool(&["with_v"], true)?,
        head_size,
        rotary_dim: f.usize(&["rotary_dim"], head_size)?,
        interleave: f.bool(&["interleave"], false)?,
        qk_norm: f.bool(&["qk_norm"], false)?,
        eps: f.f64(&["eps"], 1e-6)?,
        dtype: dt(f, DType::F32)?,
    };
    let table = RopeParams {
        num_tokens: 1,
        num_heads: 1,
        num_kv_heads: 1,
        head_size,
        rotary_dim: p.rotary_dim,
        rope_theta: f.f64(&["rope_theta"], 1e4)?,
        interleave: p.interleave,
        rope_factor: f.f64(&["rope_factor"], 1.0)?,
        low_freq_factor: f.f64(&["low_freq_factor"], 1.0)?,
        high_freq_factor: f.f64(&["high_freq_factor"], 4.0)?,
        original_max_position: f.usize(&["original_max_position"], 8192)?,
        dtype: p.dtype,
    };
    let max_pos = f.usize(&["max_position"], 4096)?;
    if max_pos == 0 || max_pos > i32::MAX as usize {
        return Err(Error::Usage(format!("--max_position must be in 1..=2^31-1, got {max_pos}")));
    }
    let op = Op::RopeQkv(p.clone());
    op.validate()?;
    Op::Rope(table.clone()).validate().map_err(|e| Error::Usage(format!("the inv_freq table's flags: {e}")))?;
    limit(&op)?;
    let inv: Vec<f64> = ingot_cpu::rope::inv_freqs(&table).iter().map(|&v| v as f32 as f64).collect();
    let t = p.num_tokens;
    let mut pos: Vec<i32> = (0..t).map(|_| g.below(max_pos) as i32).collect();
    if t > 1 {
        pos[0] = 0;
    }
    let width = p.row_heads() * head_size;
    let mut m = ins([
        ("qkv", float(p.dtype, &[t, width], &g.normals(t * width, 1.0))),
        ("pos_ids", Tensor::from_i32(vec![t], &pos)),
        ("inv_freq", float(DType::F32, &[p.rotary_dim / 2], &inv)),
    ]);
    if p.qk_norm {
        for name in ["q_norm", "k_norm"] {
            let w: Vec<f64> = g.normals(head_size, 0.5).iter().map(|x| 1.0 + x).collect();
            m.insert(name.to_string(), float(DType::F32, &[head_size], &w));
        }
    }
    Ok((op, m))
}

/// This family's entries of the standard suite.
pub(crate) fn standard(v: &mut Vec<Entry>) {
    use OpKind::*;
    for d in DType::FLOATS {
        let dt = || ("dtype", d.name().to_string());
        let n = d.name();
        e(v, format!("awk_{n}"), Rope, &[("num_tokens", "5"), ("num_heads", "7"), ("num_kv_heads", "1"), ("head_size", "64")], &[dt()]);
        e(
            v,
            format!("llama31_{n}"),
            Rope,
            &[
                ("num_tokens", "9"),
                ("num_heads", "32"),
                ("num_kv_heads", "8"),
                ("head_size", "128"),
                ("rope_theta", "500000"),
                ("rope_factor", "8"),
                ("low_freq_factor", "1"),
                ("high_freq_factor", "4"),
                ("original_max_position", "8192"),
                ("max_position", "8192"),
            ],
            &[dt()],
        );
        e(v, format!("gptj_{n}"), Rope, &[("num_tokens", "4"), ("num_heads", "3"), ("head_size", "64"), ("interleave", "true")], &[dt()]);
        e(v, format!("partial_{n}"), Rope, &[("num_tokens", "4"), ("num_heads", "3"), ("head_size", "64"), ("rotary_dim", "32")], &[dt()]);
        e(
            v,
            format!("qwen2_{n}"),
            Rope,
            &[("num_tokens", "6"), ("num_heads", "14"), ("num_kv_heads", "2"), ("head_size", "64"), ("rope_theta", "1000000")],
            &[dt()],
        );
        e(v, format!("awk_{n}"), RopeFreqs, &[("num_tokens", "5"), ("num_heads", "7"), ("head_size", "64")], &[dt()]);
        e(
            v,
            format!("one_token_gptj_{n}"),
            RopeFreqs,
            &[("num_tokens", "1"), ("num_heads", "3"), ("head_size", "32"), ("interleave", "true"), ("max_position", "8192")],
            &[dt()],
        );
        e(
            v,
            format!("partial_odd_head_{n}"),
            RopeFreqs,
            &[("num_tokens", "4"), ("num_heads", "3"), ("head_size", "33"), ("rotary_dim", "16")],
            &[dt()],
        );
        e(
            v,
            format!("partial_gptj_{n}"),
            RopeFreqs,
            &[("num_tokens", "3"), ("num_heads", "2"), ("head_size", "31"), ("rotary_dim", "30"), ("interleave", "true")],
            &[dt()],
        );
        e(
            v,
            format!("llama3_freqs_{n}"),
            RopeFreqs,
            &[
                ("num_tokens", "9"),
                ("num_heads", "32"),
                ("head_size", "128"),
                ("rope_theta", "500000"),
                ("rope_factor", "8"),
                ("max_position", "8192"),
            ],
            &[dt()],
        );
        e(v, format!("awk_{n}"), RopeQkv, &[("num_tokens", "5"), ("num_heads", "7"), ("num_kv_heads", "3"), ("head_size", "64")], &[dt()]);
        e(
            v,
            format!("no_v_one_token_{n}"),
            RopeQkv,
            &[
                ("num_tokens", "1"),
                ("num_heads", "9"),
                ("num_kv_heads", "3"),
                ("head_size", "64"),
                ("with_v", "false"),
                ("max_position", "8192"),
            ],
            &[dt()],
        );
        e(
            v,
            format!("partial_gptj_odd_{n}"),
            RopeQkv,
            &[
                ("num_tokens", "3"),
                ("num_heads", "2"),
                ("num_kv_heads", "1"),
                ("head_size", "31"),
                ("rotary_dim", "30"),
                ("interleave", "true"),
            ],
            &[dt()],
        );
        e(
            v,
            format!("gemma3_qk_norm_{n}"),
            RopeQkv,
            &[
                ("num_tokens", "4"),
                ("num_heads", "4"),
                ("num_kv_heads", "1"),
                ("head_size", "256"),
                ("qk_norm", "true"),
                ("rope_theta", "1000000"),
            ],
            &[dt()],
        );
        e(
            v,
            format!("qk_norm_no_v_awk_{n}"),
            RopeQkv,
            &[
                ("num_tokens", "33"),
                ("num_heads", "3"),
                ("num_kv_heads", "3"),
                ("head_size", "33"),
                ("rotary_dim", "16"),
                ("qk_norm", "true"),
                ("with_v", "false"),
            ],
            &[dt()],
        );
        e(
            v,
            format!("llama3_{n}"),
            RopeQkv,
            &[
                ("num_tokens", "9"),
                ("num_heads", "32"),
                ("num_kv_heads", "8"),
                ("head_size", "128"),
                ("rope_theta", "500000"),
                ("rope_factor", "8"),
                ("max_position", "8192"),
            ],
            &[dt()],
        );
        e(
            v,
            format!("gemma3_global_{n}"),
            RopeFreqs,
            &[("num_tokens", "6"), ("num_heads", "4"), ("head_size", "256"), ("rope_theta", "1000000")],
            &[dt()],
        );
    }
}
