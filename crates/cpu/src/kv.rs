//! KV-cache references: `append_paged_kv_cache` (rows written into a paged cache, the
//! layout of [`crate::attention`]), and the affine quantization ops (`quantize_kv`,
//! `dequantize_kv`), after the
//! seed's `quantize_kv_int4/int8` + `bulk_dequant_kv_int4/int8`.
//!
//! Cache layout for n_kv_heads H, max_seq S, head_dim D, group size G, bits b:
//! `cache_w` u32 [H, S, D·b/32] (value d of a slot sits in word d / (32/b) at bit
//! (d mod (32/b))·b), `cache_s` and `cache_b` [H, S, D/G] in the cache dtype.
//! Quantization, in f32 arithmetic: per group lo = min, hi = max; scale = (hi − lo)/(2^b − 1);
//! s̃, b̃ = scale, lo rounded to the dtype (stored); q = clamp(round_half_even((x − b̃)/s̃),
//! 0, 2^b − 1), q = 0 when s̃ = 0. Dequantization: x̂ = q·s̃ + b̃.

use crate::attention::PagedLayout;
use crate::device::CpuTensor;
use crate::device_ops::{input, outs, Alloc, Kernel, Tens};
use crate::util::i32_in;
use crate::util::{f64_in, float_out, get, outputs, u32_in};
use ingot_core::DeviceTensor;
use ingot_core::{ensure, round_to, AppendKvParams, Error, KvDequantParams, KvQuantParams, Op, Result, Tensor, Tensors};
use std::collections::HashMap;

const APPEND: &str = "append_paged_kv_cache";

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

// ---------------------------------------------------------------- append

/// `append_paged_kv_cache`: row i of append_k/append_v goes to sequence batch_indices[i]
/// at position positions[i] (which must lie inside the sequence's length, i.e. the page
/// table already counts the new tokens). Everything else is copied through bit for bit;
/// the written rows are copied bit for bit too (a copy needs no arithmetic). Two rows
/// that land on the same physical (page, slot) are an error, whichever sequences they
/// belong to.
pub fn append_paged_kv_cache(p: &AppendKvParams, inputs: &Tensors) -> Result<Tensors> {
    // CpuBackend::run checked already; checking again keeps direct callers from panicking.
    Op::AppendPagedKvCache(p.clone()).check_inputs(inputs)?;
    let targets = append_targets(p, inputs)?;
    let copy_rows = |cache: &str, rows: &str| -> Result<Tensor> {
        let src = get(APPEND, inputs, rows)?;
        let mut out = get(APPEND, inputs, cache)?.clone();
        // One row is [num_kv_heads, head_size], contiguous both in `src` and in a cache slot.
        let row_bytes = src.data.len() / p.num_tokens;
        for (row, &(page, slot)) in src.data.chunks_exact(row_bytes).zip(&targets) {
            let at = (page * p.page_size + slot) * row_bytes;
            out.data[at..at + row_bytes].copy_from_slice(row);
        }
        Ok(out)
    };
    let k_out = copy_rows("k_cache", "append_k")?;
    let v_out = copy_rows("v_cache", "append_v")?;
    Ok(outputs([("k_cache_out", k_out), ("v_cache_out", v_out)]))
}

/// The (page, slot) each appended row of `append_paged_kv_cache` writes, every value
/// checked; `inputs` needs only the index tensors (`batch_indices`, `positions` and the
/// page table).
pub fn append_targets(p: &AppendKvParams, inputs: &Tensors) -> Result<Vec<(usize, usize)>> {
    let layout = PagedLayout::read(APPEND, inputs, p.batch_size, p.page_size, p.num_pages)?;
    let batch_indices = i32_in(APPEND, inputs, "batch_indices")?;
    let positions = i32_in(APPEND, inputs, "positions")?;

    // Resolve every row to its physical slot before writing anything.
    let mut targets = Vec::with_capacity(p.num_tokens);
    let mut written: HashMap<(usize, usize), usize> = HashMap::new();
    for (i, (&b, &pos)) in batch_indices.iter().zip(&positions).enumerate() {
        if b < 0 || b as usize >= p.batch_size {
            return Err(Error::invalid(APPEND, format!("batch_indices[{i}] = {b} is outside 0..{} sequences", p.batch_size)));
        }
        let kv_len = layout.seqs[b as usize].kv_len;
        if pos < 0 || pos as usize >= kv_len {
            return Err(Error::invalid(APPEND, format!("positions[{i}] = {pos} is outside 0..{kv_len} (the length of sequence {b})")));
        }
        let (page, slot) = layout.locate(b as usize, pos as usize);
        if let Some(prev) = written.insert((page, slot), i) {
            let (pb, ppos) = (batch_indices[prev], positions[prev]);
            let msg = if (pb, ppos) == (b, pos) {
                format!("rows {prev} and {i} both write sequence {b} position {pos}")
            } else {
                format!(
                    "rows {prev} and {i} both write page {page} slot {slot} \
                     (sequence {pb} position {ppos} and sequence {b} position {pos})"
                )
            };
            return Err(Error::invalid(APPEND, msg));
        }
        targets.push((page, slot));
    }
    Ok(targets)
}

// ---------------------------------------------------------------- fast kernels (`cpu`)

/// The fast kernel of this family's ops on the [`crate::CpuDevice`] ([`crate::device_ops`]).
pub(crate) fn fast(op: &Op) -> Option<Kernel<'_>> {
    Some(match op {
        Op::AppendPagedKvCache(p) => Box::new(move |i, a| append_paged_kv_cache_fast(p, i, a)),
        _ => return None,
    })
}

/// The in-place form of `append_paged_kv_cache` for [`crate::device_ops::run_into`]:
/// the rows written into `k_cache_out` and `v_cache_out`.
pub(crate) fn run_into(op: &Op, inputs: &Tens, outputs: &Tens) -> Option<Result<Tens>> {
    match op {
        Op::AppendPagedKvCache(p) if outputs.contains_key("k_cache_out") && outputs.contains_key("v_cache_out") => {
            Some(append_paged_kv_cache_in_place(p, inputs, &outputs["k_cache_out"], &outputs["v_cache_out"]).map(|()| Tens::new()))
        }
        _ => None,
    }
}

/// New caches: copies of the inputs with the rows appended.
fn append_paged_kv_cache_fast(p: &ingot_core::AppendKvParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "append_paged_kv_cache";
    let copy = |name: &str| -> Result<CpuTensor> {
        let src = input(op, ins, name)?;
        let dst = alloc.zeros(src.dtype(), src.shape())?;
        dst.write()?.bytes().copy_from_slice(&src.bytes()?);
        Ok(dst)
    };
    let (k, v) = (copy("k_cache")?, copy("v_cache")?);
    append_paged_kv_cache_in_place(p, ins, &k, &v)?;
    Ok(outs([("k_cache_out", k), ("v_cache_out", v)]))
}

/// `append_paged_kv_cache` writing into the caches `k` and `v` (the `k_cache`/`v_cache`
/// inputs are not read: they may be the same tensors).
fn append_paged_kv_cache_in_place(p: &ingot_core::AppendKvParams, inputs: &Tens, k: &CpuTensor, v: &CpuTensor) -> Result<()> {
    let op = "append_paged_kv_cache";
    let tables: Tensors = ["batch_indices", "positions", "kv_indices", "kv_indptr", "kv_last_page_len"]
        .into_iter()
        .map(|n| Ok((n.to_string(), input(op, inputs, n)?.to_host()?)))
        .collect::<Result<_>>()?;
    let targets = append_targets(p, &tables)?;
    for (cache, rows) in [(k, "append_k"), (v, "append_v")] {
        let src = input(op, inputs, rows)?.bytes()?;
        let row_bytes = src.len() / p.num_tokens;
        let mut dst = cache.write()?;
        let dst = dst.bytes();
        for (row, &(page, slot)) in src.chunks_exact(row_bytes).zip(&targets) {
            let at = (page * p.page_size + slot) * row_bytes;
            dst[at..at + row_bytes].copy_from_slice(row);
        }
    }
    Ok(())
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
