//! `rope` reference: rotary position embedding of q and k, FlashInfer semantics, with
//! Llama 3.1 frequency scaling when `rope_factor` > 1.
//!
//! With r = rotary_dim, pair i (0 <= i < r/2) of a head rotates by angle pos · inv_freq_i,
//! inv_freq_i = rope_theta^(−2i/r): (a, b) → (a·cos − b·sin, b·cos + a·sin). NeoX layout
//! (interleave = false) pairs (x[i], x[i + r/2]); GPT-J layout (interleave = true) pairs
//! (x[2i], x[2i+1]). Dims from r on are copied. q and k get the same rotation.
//!
//! `rope_freqs` is the same rotation of one tensor with the inverse frequencies given as an
//! f32 table (read exactly; the angle pos · inv_freq_i is an f64 product).

use crate::device::CpuTensor;
use crate::device_ops::{input, outs, Alloc, Kernel, Tens};
use crate::fast;
use crate::util::{f64_in, float_out, i32_in, outputs};
use ingot_core::DType;
use ingot_core::{Error, Op, Result, RopeFreqsParams, RopeParams, RopeQkvParams, Tensors};
use rayon::prelude::*;
use std::f64::consts::PI;

const OP: &str = "rope";

/// Llama 3.1 scaling of one inverse frequency: long wavelengths (beyond
/// original_max_position / low_freq_factor) are divided by `factor`, short ones (below
/// original_max_position / high_freq_factor) kept, and the band between interpolated.
fn llama31_scale(inv_freq: f64, factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position: f64) -> f64 {
    let low_freq_wavelen = original_max_position / low_freq_factor;
    let high_freq_wavelen = original_max_position / high_freq_factor;
    let wavelen = 2.0 * PI / inv_freq;
    if wavelen < high_freq_wavelen {
        inv_freq
    } else if wavelen > low_freq_wavelen {
        inv_freq / factor
    } else {
        let smooth = (original_max_position / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
        (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
    }
}

/// The r/2 inverse frequencies of `rope`, scaled when rope_factor > 1.
pub fn inv_freqs(p: &RopeParams) -> Vec<f64> {
    let r = p.rotary_dim;
    (0..r / 2)
        .map(|i| {
            let f = p.rope_theta.powf(-((2 * i) as f64) / r as f64);
            if p.rope_factor > 1.0 {
                llama31_scale(f, p.rope_factor, p.low_freq_factor, p.high_freq_factor, p.original_max_position as f64)
            } else {
                f
            }
        })
        .collect()
}

/// Rotate `x` [num_tokens, heads, head_size] in place; token t at position pos[t], pair i
/// by pos · inv_freq[i] (rotary_dim = 2 · inv_freq.len()).
fn rotate(x: &mut [f64], head_size: usize, interleave: bool, pos: &[i32], inv_freq: &[f64]) {
    let half = inv_freq.len();
    let heads = x.len() / (pos.len() * head_size);
    for (row_index, row) in x.chunks_exact_mut(head_size).enumerate() {
        let position = f64::from(pos[row_index / heads]);
        for (i, f) in inv_freq.iter().enumerate() {
            let (ia, ib) = if interleave { (2 * i, 2 * i + 1) } else { (i, i + half) };
            let (sin, cos) = (position * f).sin_cos();
            let (a, b) = (row[ia], row[ib]);
            row[ia] = a * cos - b * sin;
            row[ib] = b * cos + a * sin;
        }
    }
}

/// `rope`: outputs q_out and k_out. Negative position ids are an error.
pub fn rope(p: &RopeParams, inputs: &Tensors) -> Result<Tensors> {
    // CpuBackend::run checked already; checking again keeps direct callers from panicking.
    Op::Rope(p.clone()).check_inputs(inputs)?;
    let pos = positions(OP, inputs)?;
    let inv_freq = inv_freqs(p);
    let mut q = f64_in(OP, inputs, "q")?;
    let mut k = f64_in(OP, inputs, "k")?;
    rotate(&mut q, p.head_size, p.interleave, &pos, &inv_freq);
    rotate(&mut k, p.head_size, p.interleave, &pos, &inv_freq);
    let (t, d) = (p.num_tokens, p.head_size);
    Ok(outputs([("q_out", float_out(p.dtype, &[t, p.num_heads, d], &q)), ("k_out", float_out(p.dtype, &[t, p.num_kv_heads, d], &k))]))
}

/// The `pos_ids` input; a negative id is an error.
fn positions(op: &'static str, inputs: &Tensors) -> Result<Vec<i32>> {
    let pos = i32_in(op, inputs, "pos_ids")?;
    if let Some((t, id)) = pos.iter().enumerate().find(|(_, &id)| id < 0) {
        return Err(Error::invalid(op, format!("pos_ids[{t}] = {id} is negative")));
    }
    Ok(pos)
}

/// `rope_freqs`: output = `input` rotated with the given inverse frequencies. Negative
/// position ids and non-finite frequencies are errors.
pub fn rope_freqs(p: &RopeFreqsParams, inputs: &Tensors) -> Result<Tensors> {
    const OP: &str = "rope_freqs";
    Op::RopeFreqs(p.clone()).check_inputs(inputs)?;
    let pos = positions(OP, inputs)?;
    let inv_freq = f64_in(OP, inputs, "inv_freq")?;
    if let Some((i, f)) = inv_freq.iter().enumerate().find(|(_, f)| !f.is_finite()) {
        return Err(Error::invalid(OP, format!("inv_freq[{i}] = {f} is not finite")));
    }
    let mut x = f64_in(OP, inputs, "input")?;
    rotate(&mut x, p.head_size, p.interleave, &pos, &inv_freq);
    Ok(outputs([("output", float_out(p.dtype, &[p.num_tokens, p.num_heads, p.head_size], &x))]))
}

/// `rope_qkv`: the packed rows split into Q, K (and V) heads; Q and K RMS-normalised per
/// head (`qk_norm`) and rotated with the table, in f64, rounded once; V copied.
pub fn rope_qkv(p: &RopeQkvParams, inputs: &Tensors) -> Result<Tensors> {
    const OP: &str = "rope_qkv";
    Op::RopeQkv(p.clone()).check_inputs(inputs)?;
    let pos = positions(OP, inputs)?;
    let inv_freq = f64_in(OP, inputs, "inv_freq")?;
    if let Some((i, f)) = inv_freq.iter().enumerate().find(|(_, f)| !f.is_finite()) {
        return Err(Error::invalid(OP, format!("inv_freq[{i}] = {f} is not finite")));
    }
    let x = f64_in(OP, inputs, "qkv")?;
    let (t, d, hq, hk) = (p.num_tokens, p.head_size, p.num_heads, p.num_kv_heads);
    let (mut q, mut k, mut v) = (Vec::with_capacity(t * hq * d), Vec::with_capacity(t * hk * d), Vec::new());
    for row in x.chunks_exact(p.row_heads() * d) {
        q.extend_from_slice(&row[..hq * d]);
        k.extend_from_slice(&row[hq * d..(hq + hk) * d]);
        v.extend_from_slice(&row[(hq + hk) * d..]);
    }
    if p.qk_norm {
        for (x, name) in [(&mut q, "q_norm"), (&mut k, "k_norm")] {
            let w = f64_in(OP, inputs, name)?;
            for head in x.chunks_exact_mut(d) {
                let inv = 1.0 / (head.iter().map(|v| v * v).sum::<f64>() / d as f64 + p.eps).sqrt();
                head.iter_mut().zip(&w).for_each(|(v, w)| *v *= inv * w);
            }
        }
    }
    rotate(&mut q, d, p.interleave, &pos, &inv_freq);
    rotate(&mut k, d, p.interleave, &pos, &inv_freq);
    let mut out = outputs([("q", float_out(p.dtype, &[t, hq, d], &q)), ("k", float_out(p.dtype, &[t, hk, d], &k))]);
    if p.with_v {
        out.insert("v".into(), float_out(p.dtype, &[t, hk, d], &v));
    }
    Ok(out)
}

// ---------------------------------------------------------------- fast kernels (`cpu`)

/// The fast kernels of this family's ops on the [`crate::CpuDevice`] ([`crate::device_ops`]): f32 only.
pub(crate) fn fast(op: &Op) -> Option<Kernel<'_>> {
    use DType::F32;
    Some(match op {
        Op::Rope(p) if p.dtype == F32 => Box::new(move |i, a| rope_fast(p, i, a)),
        Op::RopeFreqs(p) if p.dtype == F32 => Box::new(move |i, a| rope_freqs_fast(p, i, a)),
        Op::RopeQkv(p) if p.dtype == F32 => Box::new(move |i, a| rope_qkv_fast(p, i, a)),
        _ => return None,
    })
}

/// Rotary embedding with the caller's inverse frequencies: each angle pos·f in f64, its cos
/// and sin rounded to f32, the rotation in f32 (as [`rope_fast`]).
fn rope_freqs_fast(p: &ingot_core::RopeFreqsParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "rope_freqs";
    let pos = input(op, ins, "pos_ids")?.view::<i32>()?;
    if let Some((t, id)) = pos.iter().enumerate().find(|(_, &id)| id < 0) {
        return Err(Error::invalid(op, format!("pos_ids[{t}] = {id} is negative")));
    }
    let inv = input(op, ins, "inv_freq")?.view::<f32>()?;
    if let Some((i, f)) = inv.iter().enumerate().find(|(_, f)| !f.is_finite()) {
        return Err(Error::invalid(op, format!("inv_freq[{i}] = {f} is not finite")));
    }
    let (heads, d) = (p.num_heads, p.head_size);
    let x = input(op, ins, "input")?.view::<f32>()?;
    let out = alloc.zeros(DType::F32, &[p.num_tokens, heads, d])?;
    let mut w = out.write()?;
    let o = w.f32();
    o.copy_from_slice(&x);
    let token = |cs: &mut Vec<(f32, f32)>, (row, &pos): (&mut [f32], &i32)| {
        fast::rope_angles(pos as usize, inv.iter().map(|&f| f as f64), cs);
        fast::rope_rotate(row, d, cs, !p.interleave);
    };
    if o.len() >= 1 << 15 {
        o.par_chunks_mut(heads * d).zip(pos.par_iter()).for_each_init(Vec::new, token);
    } else {
        let mut cs = Vec::with_capacity(inv.len());
        o.chunks_mut(heads * d).zip(pos.iter()).for_each(|r| token(&mut cs, r));
    }
    drop(w);
    Ok(outs([("output", out)]))
}

/// `rope_qkv` in f32: per token, the angles once (as [`rope_freqs_fast`]), each Q and K head
/// copied out, RMS-normalised as the fast `rms_norm` does (mean of squares in f64, the
/// scale rounded to f32) and rotated; V heads copied.
fn rope_qkv_fast(p: &RopeQkvParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "rope_qkv";
    let pos = input(op, ins, "pos_ids")?.view::<i32>()?;
    if let Some((t, id)) = pos.iter().enumerate().find(|(_, &id)| id < 0) {
        return Err(Error::invalid(op, format!("pos_ids[{t}] = {id} is negative")));
    }
    let inv = input(op, ins, "inv_freq")?.view::<f32>()?;
    if let Some((i, f)) = inv.iter().enumerate().find(|(_, f)| !f.is_finite()) {
        return Err(Error::invalid(op, format!("inv_freq[{i}] = {f} is not finite")));
    }
    let norms = if p.qk_norm { Some((input(op, ins, "q_norm")?.view::<f32>()?, input(op, ins, "k_norm")?.view::<f32>()?)) } else { None };
    let (t, d, hq, hk) = (p.num_tokens, p.head_size, p.num_heads, p.num_kv_heads);
    let width = p.row_heads() * d;
    let x = input(op, ins, "qkv")?.view::<f32>()?;
    let (q, k) = (alloc.zeros(DType::F32, &[t, hq, d])?, alloc.zeros(DType::F32, &[t, hk, d])?);
    {
        let (mut qw, mut kw) = (q.write()?, k.write()?);
        let token = |cs: &mut Vec<(f32, f32)>, (((qo, ko), row), &pos): (((&mut [f32], &mut [f32]), &[f32]), &i32)| {
            fast::rope_angles(pos as usize, inv.iter().map(|&f| f as f64), cs);
            qo.copy_from_slice(&row[..hq * d]);
            ko.copy_from_slice(&row[hq * d..(hq + hk) * d]);
            for (o, w) in [(&mut *qo, norms.as_ref().map(|n| &n.0)), (&mut *ko, norms.as_ref().map(|n| &n.1))] {
                if let Some(w) = w {
                    o.chunks_exact_mut(d).for_each(|head| fast::rms_norm_row(head, w, p.eps, false));
                }
                fast::rope_rotate(o, d, cs, !p.interleave);
            }
        };
        let (qs, ks) = (qw.f32(), kw.f32());
        if t * width >= 1 << 15 && t > 1 {
            qs.par_chunks_mut(hq * d)
                .zip(ks.par_chunks_mut(hk * d))
                .zip(x.par_chunks(width))
                .zip(pos.par_iter())
                .for_each_init(Vec::new, token);
        } else {
            let mut cs = Vec::with_capacity(inv.len());
            qs.chunks_mut(hq * d).zip(ks.chunks_mut(hk * d)).zip(x.chunks(width)).zip(pos.iter()).for_each(|r| token(&mut cs, r));
        }
    }
    let mut out = outs([("q", q), ("k", k)]);
    if p.with_v {
        let v = alloc.zeros(DType::F32, &[t, hk, d])?;
        let mut w = v.write()?;
        for (o, row) in w.f32().chunks_exact_mut(hk * d).zip(x.chunks_exact(width)) {
            o.copy_from_slice(&row[(hq + hk) * d..]);
        }
        drop(w);
        out.insert("v".into(), v);
    }
    Ok(out)
}

/// Rotary embedding with the op's inverse frequencies (in f64, Llama 3.1 scaling
/// included); each angle pos·f in f64, its cos and sin rounded to f32, the rotation in f32.
fn rope_fast(p: &ingot_core::RopeParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "rope";
    let pos = input(op, ins, "pos_ids")?.view::<i32>()?;
    if let Some((t, id)) = pos.iter().enumerate().find(|(_, &id)| id < 0) {
        return Err(Error::invalid("rope", format!("pos_ids[{t}] = {id} is negative")));
    }
    let inv = crate::rope::inv_freqs(p);
    let (t, d) = (p.num_tokens, p.head_size);
    let rotate = |name: &str, heads: usize| -> Result<CpuTensor> {
        let x = input(op, ins, name)?.view::<f32>()?;
        let out = alloc.zeros(DType::F32, &[t, heads, d])?;
        let mut w = out.write()?;
        let o = w.f32();
        o.copy_from_slice(&x);
        let token = |cs: &mut Vec<(f32, f32)>, (row, &pos): (&mut [f32], &i32)| {
            fast::rope_angles(pos as usize, inv.iter().copied(), cs);
            fast::rope_rotate(row, d, cs, !p.interleave);
        };
        if o.len() >= 1 << 15 {
            o.par_chunks_mut(heads * d).zip(pos.par_iter()).for_each_init(Vec::new, token);
        } else {
            let mut cs = Vec::with_capacity(inv.len());
            o.chunks_mut(heads * d).zip(pos.iter()).for_each(|r| token(&mut cs, r));
        }
        drop(w);
        Ok(out)
    };
    Ok(outs([("q_out", rotate("q", p.num_heads)?), ("k_out", rotate("k", p.num_kv_heads)?)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingot_core::{DType, Tensor};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn params(t: usize, hq: usize, hk: usize, d: usize, r: usize, interleave: bool) -> RopeParams {
        RopeParams {
            num_tokens: t,
            num_heads: hq,
            num_kv_heads: hk,
            head_size: d,
            rotary_dim: r,
            rope_theta: 10000.0,
            interleave,
            rope_factor: 1.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 8192,
            dtype: DType::F32,
        }
    }

    fn inputs(p: &RopeParams, q: &[f32], k: &[f32], pos: &[i32]) -> Tensors {
        let (t, d) = (p.num_tokens, p.head_size);
        let mut m = Tensors::new();
        m.insert("q".into(), Tensor::from_f32(p.dtype, vec![t, p.num_heads, d], q));
        m.insert("k".into(), Tensor::from_f32(p.dtype, vec![t, p.num_kv_heads, d], k));
        m.insert("pos_ids".into(), Tensor::from_i32(vec![t], pos));
        m
    }

    fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect()
    }

    /// Run rope; returns (q_out, k_out) as f32.
    fn run(p: &RopeParams, q: &[f32], k: &[f32], pos: &[i32]) -> (Vec<f32>, Vec<f32>) {
        let out = rope(p, &inputs(p, q, k, pos)).unwrap();
        (out["q_out"].to_f32().unwrap(), out["k_out"].to_f32().unwrap())
    }

    #[test]
    fn position_zero_is_identity() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for interleave in [false, true] {
            let p = params(2, 3, 1, 8, 8, interleave);
            let (q, k) = (random(&mut rng, 48), random(&mut rng, 16));
            assert_eq!(run(&p, &q, &k, &[0, 0]), (q, k));
        }
    }

    /// Position 1, theta 10000: pair 0 has inv_freq 1, so it turns by 1 radian.
    #[test]
    fn one_pair_at_position_one_by_hand() {
        // cos 1 = 0.5403023058681398, sin 1 = 0.8414709848078965; (a, b) = (1, 2):
        // a·cos − b·sin = −1.1426396637476532, b·cos + a·sin = 1.922075596544176.
        let (a, b) = (-1.142_639_663_747_653_2, 1.922_075_596_544_176);
        // NeoX: pair 0 is (x[0], x[2]); the other pair has inv_freq 10000^(−1/2) = 0.01.
        let p = params(1, 1, 1, 4, 4, false);
        let (q, k) = run(&p, &[1.0, 0.0, 2.0, 0.0], &[1.0, 0.0, 2.0, 0.0], &[1]);
        assert_eq!(q, vec![a as f32, 0.0, b as f32, 0.0]);
        assert_eq!(k, q);
        // Second pair: (x[1], x[3]) = (1, 0) turns by 0.01 rad.
        let (q, _) = run(&p, &[0.0, 1.0, 0.0, 0.0], &[0.0; 4], &[1]);
        assert_eq!(q, vec![0.0, 0.01f64.cos() as f32, 0.0, 0.01f64.sin() as f32]);
        // Interleaved: pair 0 is (x[0], x[1]).
        let p = params(1, 1, 1, 4, 4, true);
        let (q, _) = run(&p, &[1.0, 2.0, 0.0, 0.0], &[0.0; 4], &[1]);
        assert_eq!(q, vec![a as f32, b as f32, 0.0, 0.0]);
    }

    /// The same data in the two layouts: rotating then permuting equals permuting then
    /// rotating, where NeoX dim i ↔ GPT-J dim 2i and NeoX dim i + r/2 ↔ GPT-J dim 2i + 1.
    #[test]
    fn interleaved_is_a_permutation_of_neox() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (t, hq, hk, d, r) = (3, 2, 1, 10, 8);
        let to_gptj = |x: &[f32]| -> Vec<f32> {
            let mut y = x.to_vec();
            for (row_in, row_out) in x.chunks(d).zip(y.chunks_mut(d)) {
                for i in 0..r / 2 {
                    row_out[2 * i] = row_in[i];
                    row_out[2 * i + 1] = row_in[i + r / 2];
                }
            }
            y
        };
        let (q, k) = (random(&mut rng, t * hq * d), random(&mut rng, t * hk * d));
        let pos = [0, 7, 300];
        let (qn, kn) = run(&params(t, hq, hk, d, r, false), &q, &k, &pos);
        let (qi, ki) = run(&params(t, hq, hk, d, r, true), &to_gptj(&q), &to_gptj(&k), &pos);
        assert_eq!(to_gptj(&qn), qi);
        assert_eq!(to_gptj(&kn), ki);
        assert_ne!(qn, q);
    }

    /// Output element e of a head, written per element: its partner dim, the sign, and
    /// the frequency as exp(−ln θ · 2i / r).
    fn elementwise(x: &[f32], d: usize, heads: usize, r: usize, theta: f64, interleave: bool, pos: &[i32]) -> Vec<f64> {
        let mut out = Vec::with_capacity(x.len());
        for (n, &v) in x.iter().enumerate() {
            let (row, e) = (n / d, n % d);
            let head = &x[row * d..(row + 1) * d];
            if e >= r {
                out.push(v as f64);
                continue;
            }
            let (i, partner, first) = if interleave {
                (e / 2, e ^ 1, e % 2 == 0)
            } else if e < r / 2 {
                (e, e + r / 2, true)
            } else {
                (e - r / 2, e - r / 2, false)
            };
            let angle = pos[row / heads] as f64 * (-(theta.ln()) * (2 * i) as f64 / r as f64).exp();
            let (x0, x1) = (v as f64, head[partner] as f64);
            out.push(if first { x0 * angle.cos() - x1 * angle.sin() } else { x0 * angle.cos() + x1 * angle.sin() });
        }
        out
    }

    #[test]
    fn matches_elementwise_formula() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        for (interleave, r, theta) in [(false, 16, 10000.0), (true, 16, 500000.0), (false, 6, 10000.0), (true, 10, 1e6)] {
            let (t, hq, hk, d) = (4, 3, 2, 16);
            let p = RopeParams { rope_theta: theta, ..params(t, hq, hk, d, r, interleave) };
            let (q, k) = (random(&mut rng, t * hq * d), random(&mut rng, t * hk * d));
            let pos = [0, 1, 17, 4999];
            let (qo, ko) = run(&p, &q, &k, &pos);
            for (got, want) in
                [(qo, elementwise(&q, d, hq, r, theta, interleave, &pos)), (ko, elementwise(&k, d, hk, r, theta, interleave, &pos))]
            {
                for (n, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!((*g as f64 - w).abs() <= 1e-6, "r {r} interleave {interleave} element {n}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn partial_rotary_leaves_tail_dims_unchanged() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for interleave in [false, true] {
            let (t, hq, hk, d, r) = (2, 2, 2, 12, 4);
            let (q, k) = (random(&mut rng, t * hq * d), random(&mut rng, t * hk * d));
            let (qo, ko) = run(&params(t, hq, hk, d, r, interleave), &q, &k, &[5, 9]);
            for (x, y) in [(&q, &qo), (&k, &ko)] {
                for (a, b) in x.chunks(d).zip(y.chunks(d)) {
                    assert_eq!(a[r..], b[r..]);
                    assert_ne!(a[..r], b[..r]);
                }
            }
        }
    }

    #[test]
    fn llama31_factor_one_is_no_scaling() {
        // With factor 1 every band of the formula gives the frequency back.
        for (i, f) in (0..64).map(|i| 500000f64.powf(-(2.0 * i as f64) / 128.0)).enumerate() {
            let s = llama31_scale(f, 1.0, 1.0, 4.0, 8192.0);
            assert!((s - f).abs() <= 1e-15 * f, "pair {i}: {s} vs {f}");
        }
        // And the op with rope_factor 1 ignores the (here nonsensical) band factors.
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (q, k) = (random(&mut rng, 32), random(&mut rng, 32));
        let p = params(2, 1, 1, 16, 16, false);
        let mut odd = p.clone();
        (odd.low_freq_factor, odd.high_freq_factor, odd.original_max_position) = (7.0, 7.0, 3);
        assert_eq!(run(&p, &q, &k, &[3, 4000]), run(&odd, &q, &k, &[3, 4000]));
    }

    #[test]
    fn llama31_factor_8_scales_low_frequencies_only() {
        let mut p = params(1, 1, 1, 128, 128, false);
        (p.rope_theta, p.rope_factor, p.low_freq_factor, p.high_freq_factor, p.original_max_position) = (500000.0, 8.0, 1.0, 4.0, 8192);
        let plain = inv_freqs(&RopeParams { rope_factor: 1.0, ..p.clone() });
        let scaled = inv_freqs(&p);
        // Highest frequency (wavelength 2π) unchanged, lowest divided by 8.
        assert_eq!(scaled[0], plain[0]);
        assert_eq!(scaled[63], plain[63] / 8.0);
        // Pairs in the band between wavelengths 2048 and 8192 are interpolated: one by hand.
        let i = (0..64).find(|&i| (2048.0..=8192.0).contains(&(2.0 * PI / plain[i]))).unwrap();
        let wl = 2.0 * PI / plain[i];
        let smooth = (8192.0 / wl - 1.0) / 3.0;
        assert!(smooth > 0.0 && smooth < 1.0);
        let want = (1.0 - smooth) * plain[i] / 8.0 + smooth * plain[i];
        assert!((scaled[i] - want).abs() <= 1e-15 * want);
        assert!(scaled[i] < plain[i] && scaled[i] > plain[i] / 8.0);
        // Through the op: a low-frequency pair at position 8 turns like position 1 unscaled.
        let mut x = vec![0.0f32; 128];
        x[63] = 1.0;
        let (q8, _) = run(&p, &x, &x, &[8]);
        let angle = plain[63];
        assert_eq!((q8[63], q8[127]), (angle.cos() as f32, angle.sin() as f32));
    }

    #[test]
    fn negative_position_is_an_error() {
        let p = params(2, 1, 1, 4, 4, false);
        let e = rope(&p, &inputs(&p, &[0.0; 8], &[0.0; 8], &[3, -2])).unwrap_err().to_string();
        assert_eq!(e, "[rope] pos_ids[1] = -2 is negative");
        let bad = inputs(&params(3, 1, 1, 4, 4, false), &[0.0; 12], &[0.0; 12], &[0, 1, 2]);
        assert!(rope(&p, &bad).is_err());
    }

    #[test]
    fn half_types_round_once() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (q, k) = (random(&mut rng, 16), random(&mut rng, 16));
        for dtype in [DType::F16, DType::BF16] {
            let p = RopeParams { dtype, ..params(2, 1, 1, 8, 8, true) };
            let (q32, k32) = run(&params(2, 1, 1, 8, 8, true), &rounded(dtype, &q), &rounded(dtype, &k), &[2, 11]);
            let (qh, kh) = run(&p, &q, &k, &[2, 11]);
            assert_eq!(qh, rounded(dtype, &q32));
            assert_eq!(kh, rounded(dtype, &k32));
        }
    }

    fn rounded(dtype: DType, x: &[f32]) -> Vec<f32> {
        Tensor::from_f32(dtype, vec![x.len()], x).to_f32().unwrap()
    }

    /// `rope_freqs` given `rope`'s own table (rounded to f32) rotates as `rope` does with
    /// that table, in both layouts and with a partial rotary dim.
    #[test]
    fn rope_freqs_matches_rope_with_the_same_table() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (interleave, d, r) in [(false, 16, 16), (true, 16, 16), (false, 12, 6), (true, 11, 8)] {
            let (t, h) = (3, 2);
            let p = params(t, h, 1, d, r, interleave);
            let table: Vec<f32> = inv_freqs(&p).iter().map(|&f| f as f32).collect();
            let x = random(&mut rng, t * h * d);
            let pos = [0, 5, 4000];
            let fp = RopeFreqsParams { num_tokens: t, num_heads: h, head_size: d, rotary_dim: r, interleave, dtype: DType::F32 };
            let mut m = Tensors::new();
            m.insert("input".into(), Tensor::from_f32(DType::F32, vec![t, h, d], &x));
            m.insert("pos_ids".into(), Tensor::from_i32(vec![t], &pos));
            m.insert("inv_freq".into(), Tensor::from_f32(DType::F32, vec![r / 2], &table));
            let got = rope_freqs(&fp, &m).unwrap()["output"].to_f32().unwrap();
            let mut want: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let table64: Vec<f64> = table.iter().map(|&f| f as f64).collect();
            rotate(&mut want, d, interleave, &pos, &table64);
            let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            assert_eq!(got, want);
            // Dims past rotary_dim pass through, the rest moved.
            for (a, b) in x.chunks(d).zip(got.chunks(d)).skip(h) {
                assert_eq!(a[r..], b[r..]);
                assert_ne!(a[..r], b[..r]);
            }
            // And it agrees with `rope` itself up to the table's f32 rounding.
            let (q, _) = run(&p, &x, &random(&mut rng, t * d), &pos);
            for (g, w) in got.iter().zip(&q) {
                assert!((g - w).abs() <= 2e-3, "{g} vs {w}");
            }
            // Errors: a negative position, a non-finite frequency.
            let mut bad = m.clone();
            bad.insert("pos_ids".into(), Tensor::from_i32(vec![t], &[0, -1, 2]));
            assert_eq!(rope_freqs(&fp, &bad).unwrap_err().to_string(), "[rope_freqs] pos_ids[1] = -1 is negative");
            let mut bad = m.clone();
            let mut inf = table.clone();
            inf[0] = f32::INFINITY;
            bad.insert("inv_freq".into(), Tensor::from_f32(DType::F32, vec![r / 2], &inf));
            assert_eq!(rope_freqs(&fp, &bad).unwrap_err().to_string(), "[rope_freqs] inv_freq[0] = inf is not finite");
        }
    }

    /// `rope_qkv` against `rms_norm` then `rope_freqs` on the split heads (the unfused path
    /// a model took before): equal up to the one rounding between them, and V bit for bit.
    #[test]
    fn rope_qkv_is_the_split_norm_and_rope() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for (with_v, qk_norm, interleave, d, r) in [(true, false, false, 16, 16), (false, true, true, 12, 8), (true, true, false, 10, 6)] {
            let (t, hq, hk) = (3, 4, 2);
            let p = RopeQkvParams {
                num_tokens: t,
                num_heads: hq,
                num_kv_heads: hk,
                with_v,
                head_size: d,
                rotary_dim: r,
                interleave,
                qk_norm,
                eps: 1e-5,
                dtype: DType::F32,
            };
            let width = p.row_heads() * d;
            let x = random(&mut rng, t * width);
            let pos = [0, 9, 1234];
            let table: Vec<f32> = inv_freqs(&params(1, 1, 1, d, r, interleave)).iter().map(|&f| f as f32).collect();
            let (wq, wk) = (random(&mut rng, d), random(&mut rng, d));
            let mut m = Tensors::new();
            m.insert("qkv".into(), Tensor::from_f32(DType::F32, vec![t, width], &x));
            m.insert("pos_ids".into(), Tensor::from_i32(vec![t], &pos));
            m.insert("inv_freq".into(), Tensor::from_f32(DType::F32, vec![r / 2], &table));
            if qk_norm {
                m.insert("q_norm".into(), Tensor::from_f32(DType::F32, vec![d], &wq));
                m.insert("k_norm".into(), Tensor::from_f32(DType::F32, vec![d], &wk));
            }
            let got = rope_qkv(&p, &m).unwrap();
            assert_eq!(got.contains_key("v"), with_v);
            let split = |from: usize, heads: usize| -> Vec<f32> {
                x.chunks(width).flat_map(|row| row[from * d..(from + heads) * d].to_vec()).collect()
            };
            for (name, from, heads, w) in [("q", 0, hq, &wq), ("k", hq, hk, &wk)] {
                let mut part = split(from, heads);
                if qk_norm {
                    let np =
                        ingot_core::RmsNormParams { num_tokens: t * heads, hidden_size: d, eps: 1e-5, gemma: false, dtype: DType::F32 };
                    let mut n = Tensors::new();
                    n.insert("input".into(), Tensor::from_f32(DType::F32, vec![t * heads, d], &part));
                    n.insert("weight".into(), Tensor::from_f32(DType::F32, vec![d], w));
                    part = crate::norm::rms_norm(&np, &n).unwrap()["output"].to_f32().unwrap();
                }
                let fp = RopeFreqsParams { num_tokens: t, num_heads: heads, head_size: d, rotary_dim: r, interleave, dtype: DType::F32 };
                let mut f = Tensors::new();
                f.insert("input".into(), Tensor::from_f32(DType::F32, vec![t, heads, d], &part));
                f.insert("pos_ids".into(), Tensor::from_i32(vec![t], &pos));
                f.insert("inv_freq".into(), Tensor::from_f32(DType::F32, vec![r / 2], &table));
                let want = rope_freqs(&fp, &f).unwrap()["output"].to_f32().unwrap();
                let have = got[name].to_f32().unwrap();
                assert_eq!(got[name].shape, vec![t, heads, d]);
                for (i, (a, b)) in have.iter().zip(&want).enumerate() {
                    assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{name}[{i}]: {a} vs {b}");
                }
            }
            if with_v {
                assert_eq!(got["v"].to_f32().unwrap(), split(hq + hk, hk));
            }
            // The wrong width is refused.
            let mut bad = m.clone();
            bad.insert("qkv".into(), Tensor::from_f32(DType::F32, vec![t, width + d], &vec![0.0; t * (width + d)]));
            assert!(rope_qkv(&p, &bad).is_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every rotated pair keeps its L2 norm (up to f32 rounding).
        #[test]
        fn rotation_keeps_pair_norms(
            seed in any::<u64>(),
            pos in proptest::collection::vec(0i32..=i32::MAX, 3),
            interleave in any::<bool>(),
            half in 1usize..6,
            theta in 2.0f64..1e6,
        ) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let (d, r) = (12, 2 * half);
            let p = RopeParams { rope_theta: theta, ..params(3, 2, 1, d, r, interleave) };
            let (q, k) = (random(&mut rng, 3 * 2 * d), random(&mut rng, 3 * d));
            let (qo, ko) = run(&p, &q, &k, &pos);
            for (x, y) in [(&q, &qo), (&k, &ko)] {
                for (a, b) in x.chunks(d).zip(y.chunks(d)) {
                    for i in 0..half {
                        let (ia, ib) = if interleave { (2 * i, 2 * i + 1) } else { (i, i + half) };
                        let n0 = (a[ia] as f64).hypot(a[ib] as f64);
                        let n1 = (b[ia] as f64).hypot(b[ib] as f64);
                        prop_assert!((n0 - n1).abs() <= 1e-6 * n0.max(1.0), "pair {i}: {n0} vs {n1}");
                    }
                }
            }
        }
    }
}
