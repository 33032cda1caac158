//! KV-cache affine quantization references (`quantize_kv`, `dequantize_kv`), after the
//! seed's `quantize_kv_int4/int8` + `bulk_dequant_kv_int4/int8`.
//!
//! Cache layout for n_kv_heads H, max_seq S, head_dim D, group size G, bits b:
//! `cache_w` u32 [H, S, D·b/32] (value d of a slot sits in word d / (32/b) at bit
//! (d mod (32/b))·b), `cache_s` and `cache_b` [H, S, D/G] in the cache dtype.
//! Quantization, in f32 arithmetic: per group lo = min, hi = max; scale = (hi − lo)/(2^b − 1);
//! s̃, b̃ = scale, lo rounded to the dtype (stored); q = clamp(round_half_even((x − b̃)/s̃),
//! 0, 2^b − 1), q = 0 when s̃ = 0. Dequantization: x̂ = q·s̃ + b̃.

use crate::util::{f64_in, float_out, get, outputs, u32_in};
use ingot_core::{ensure, round_to, KvDequantParams, KvQuantParams, Result, Tensor, Tensors};

pub fn quantize_kv(p: &KvQuantParams, inputs: &Tensors) -> Result<Tensors> {
    const OP: &str = "quantize_kv";
    let src = get(OP, inputs, "src")?.to_f32()?;
    let mut w = u32_in(OP, inputs, "cache_w")?;
    let mut s = f64_in(OP, inputs, "cache_s")?;
    let mut b = f64_in(OP, inputs, "cache_b")?;
    let (d, g, bits) = (p.head_dim, p.group_size, p.bits);
    let per_word = 32 / bits;
    let words = d / per_word;
    let groups = d / g;
    let levels = ((1u32 << bits) - 1) as f32;
    if let Some(i) = src.iter().position(|v| !v.is_finite()) {
        return Err(ingot_core::Error::invalid(OP, format!("src[{}][{}] = {} is not finite", i / d, i % d, src[i])));
    }
    for h in 0..p.n_kv_heads {
        let slot = h * p.max_seq + p.position;
        for gi in 0..groups {
            let x = &src[h * d + gi * g..h * d + (gi + 1) * g];
            let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let scale = round_to(p.dtype, ((hi - lo) / levels) as f64) as f32;
            let bias = round_to(p.dtype, lo as f64) as f32;
            s[slot * groups + gi] = scale as f64;
            b[slot * groups + gi] = bias as f64;
            for (j, &v) in x.iter().enumerate() {
                let q = if scale == 0.0 { 0.0 } else { ((v - bias) / scale).round_ties_even().clamp(0.0, levels) };
                let dd = gi * g + j;
                let word = &mut w[slot * words + dd / per_word];
                let shift = (dd % per_word) * bits;
                let mask = ((1u64 << bits) - 1) as u32;
                *word = (*word & !(mask << shift)) | ((q as u32) << shift);
            }
        }
    }
    let gs = [p.n_kv_heads, p.max_seq, groups];
    Ok(outputs([
        ("cache_w_out", Tensor::from_u32(vec![p.n_kv_heads, p.max_seq, words], &w)),
        ("cache_s_out", float_out(p.dtype, &gs, &s)),
        ("cache_b_out", float_out(p.dtype, &gs, &b)),
    ]))
}

pub fn dequantize_kv(p: &KvDequantParams, inputs: &Tensors) -> Result<Tensors> {
    const OP: &str = "dequantize_kv";
    let w = u32_in(OP, inputs, "cache_w")?;
    let s = f64_in(OP, inputs, "cache_s")?;
    let b = f64_in(OP, inputs, "cache_b")?;
    let (d, g, bits) = (p.head_dim, p.group_size, p.bits);
    ensure!(p.start + p.n_positions <= p.max_seq, OP, "window outside the cache");
    let per_word = 32 / bits;
    let words = d / per_word;
    let groups = d / g;
    let mask = ((1u64 << bits) - 1) as u32;
    let mut out = Vec::with_capacity(p.n_kv_heads * p.n_positions * d);
    for h in 0..p.n_kv_heads {
        for pos in p.start..p.start + p.n_positions {
            let slot = h * p.max_seq + pos;
            for dd in 0..d {
                let q = (w[slot * words + dd / per_word] >> ((dd % per_word) * bits)) & mask;
                let gi = slot * groups + dd / g;
                out.push(q as f64 * s[gi] + b[gi]);
            }
        }
    }
    Ok(outputs([("output", float_out(p.dtype, &[p.n_kv_heads, p.n_positions, d], &out))]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use ingot_core::{Backend, DType, Op};
    use proptest::prelude::*;

    fn round_trip(dtype: DType, bits: usize, src: &[f32], hk: usize, d: usize, g: usize) -> (Vec<f32>, Tensors) {
        let max_seq = 5;
        let position = 3;
        let qp = KvQuantParams { n_kv_heads: hk, head_dim: d, max_seq, group_size: g, bits, position, dtype };
        let op = Op::QuantizeKv(qp);
        let mut t = Tensors::new();
        t.insert("src".into(), Tensor::from_f32(dtype, vec![hk, d], src));
        // Sentinel contents elsewhere in the cache must survive.
        for spec in op.inputs().into_iter().skip(1) {
            let n: usize = spec.shape.iter().product();
            let tt = if spec.dtype == DType::U32 {
                Tensor::from_u32(spec.shape.clone(), &vec![0xA5A5_A5A5; n])
            } else {
                Tensor::from_f32(dtype, spec.shape.clone(), &vec![0.25; n])
            };
            t.insert(spec.name.into(), tt);
        }
        let q = CpuBackend.run(&op, &t).unwrap();
        let dp = KvDequantParams { n_kv_heads: hk, head_dim: d, max_seq, group_size: g, bits, start: position, n_positions: 1, dtype };
        let mut di = Tensors::new();
        di.insert("cache_w".into(), q["cache_w_out"].clone());
        di.insert("cache_s".into(), q["cache_s_out"].clone());
        di.insert("cache_b".into(), q["cache_b_out"].clone());
        let out = CpuBackend.run(&Op::DequantizeKv(dp), &di).unwrap();
        (out["output"].to_f32().unwrap(), q)
    }

    #[test]
    fn other_positions_untouched() {
        let src: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let (_, q) = round_trip(DType::F32, 4, &src, 2, 32, 16);
        let w = q["cache_w_out"].to_u32().unwrap();
        let words = 32 / 8;
        for h in 0..2 {
            for pos in 0..5 {
                let slot = &w[(h * 5 + pos) * words..(h * 5 + pos + 1) * words];
                assert_eq!(slot.iter().all(|&x| x == 0xA5A5_A5A5), pos != 3, "head {h} pos {pos}");
            }
        }
    }

    #[test]
    fn constant_group_is_exact() {
        let src = vec![1.5f32; 32];
        let (r, _) = round_trip(DType::F16, 8, &src, 1, 32, 32);
        assert_eq!(r, src);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn round_trip_within_one_step(v in prop::collection::vec(-4.0f32..4.0, 64), bits in prop::sample::select(vec![4usize, 8]), dt in prop::sample::select(vec![DType::F32, DType::F16, DType::BF16])) {
            let src: Vec<f32> = v.iter().map(|&x| round_to(dt, x as f64) as f32).collect();
            let (r, q) = round_trip(dt, bits, &src, 2, 32, 16);
            let s = q["cache_s_out"].to_f32().unwrap();
            let groups = 2;
            for (i, (a, b)) in src.iter().zip(&r).enumerate() {
                let (h, d) = (i / 32, i % 32);
                let step = s[(h * 5 + 3) * groups + d / 16];
                // Half a step from rounding, plus the rounding of scale, bias and output to the dtype.
                let slack = match dt { DType::F32 => 1e-5, DType::F16 => 4e-3, _ => 4e-2 };
                prop_assert!((a - b).abs() <= 0.5 * step * 1.01 + slack, "{a} vs {b}, step {step}");
            }
        }
    }
}
