//! Logit and sampling references: `softmax`, `topk_mask_logits`, `extract_k_values`,
//! `argmax`, `softcap`, `temperature_scale`, `top_p_mask`, `min_p_mask`,
//! `sample_from_probs`.
//!
//! Ranking rule shared by every op that orders values: larger value first, NaN above
//! everything, equal values by lower index first. So top-k keeps exactly k entries.
//! Masks copy kept logits unchanged and set the others to −Inf.

use crate::device_ops::{floats, input, outs, Alloc, Kernel, Tens};
use crate::fast;
use crate::util::{f64_in, float_out, get, outputs};
use ingot_core::Op;
use ingot_core::{
    ensure, DType, ExtractKParams, LogitsParams, MinPParams, Result, SampleParams, SoftcapParams, SoftmaxParams, TemperatureParams, Tensor,
    Tensors, TopKParams, TopPParams,
};
use std::cmp::Ordering;

/// Ranking order: `Less` means `a` ranks before `b`.
fn rank(a: (usize, f64), b: (usize, f64)) -> Ordering {
    let key = |v: f64| if v.is_nan() { f64::INFINITY } else { v };
    match (a.1.is_nan(), b.1.is_nan()) {
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => key(b.1).partial_cmp(&key(a.1)).unwrap_or(Ordering::Equal).then(a.0.cmp(&b.0)),
    }
}

/// Indices of a row sorted by the ranking rule.
pub fn ranked(row: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| rank((a, row[a]), (b, row[b])));
    idx
}

/// Softmax of one row in f64 (max-subtracted). A row of all −Inf gives NaN, as in PyTorch.
pub fn softmax_row(row: &[f64]) -> Vec<f64> {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = row.iter().map(|&v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

pub fn softmax(p: &SoftmaxParams, inputs: &Tensors) -> Result<Tensors> {
    let x = f64_in("softmax", inputs, "logits")?;
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks_exact(p.vocab_size) {
        let scaled: Vec<f64> = row.iter().map(|v| v / p.temperature).collect();
        y.extend(softmax_row(&scaled));
    }
    Ok(outputs([("probs", float_out(DType::F32, &[p.num_tokens, p.vocab_size], &y))]))
}

/// Copy `logits` (raw dtype bytes) keeping only entries where `keep` is true; the rest −Inf.
fn masked(t: &Tensor, keep: &[bool]) -> Result<Tensor> {
    let mut v = t.to_f32()?;
    for (x, &k) in v.iter_mut().zip(keep) {
        if !k {
            *x = f32::NEG_INFINITY;
        }
    }
    // Kept values round-trip exactly through f32 for every float dtype.
    Ok(Tensor::from_f32(t.dtype, t.shape.clone(), &v))
}

pub fn topk_mask_logits(p: &TopKParams, inputs: &Tensors) -> Result<Tensors> {
    const OP: &str = "topk_mask_logits";
    let t = get(OP, inputs, "logits")?;
    let x = t.to_f64()?;
    let mut keep = vec![false; x.len()];
    for (r, row) in x.chunks_exact(p.vocab_size).enumerate() {
        for &i in ranked(row).iter().take(p.k) {
            keep[r * p.vocab_size + i] = true;
        }
    }
    Ok(outputs([("masked", masked(t, &keep)?)]))
}

pub fn extract_k_values(p: &ExtractKParams, inputs: &Tensors) -> Result<Tensors> {
    let x = f64_in("extract_k_values", inputs, "input")?;
    let mut vals = Vec::with_capacity(p.m * p.k);
    let mut idx = Vec::with_capacity(p.m * p.k);
    for row in x.chunks_exact(p.n) {
        for &i in ranked(row).iter().take(p.k) {
            vals.push(row[i]);
            idx.push(i as i32);
        }
    }
    Ok(outputs([("values", float_out(p.dtype, &[p.m, p.k], &vals)), ("indices", Tensor::from_i32(vec![p.m, p.k], &idx))]))
}

pub fn argmax(p: &LogitsParams, inputs: &Tensors) -> Result<Tensors> {
    let x = f64_in("argmax", inputs, "logits")?;
    let idx: Vec<i32> = x
        .chunks_exact(p.vocab_size)
        .map(|row| (0..row.len()).min_by(|&a, &b| rank((a, row[a]), (b, row[b]))).unwrap_or(0) as i32)
        .collect();
    Ok(outputs([("indices", Tensor::from_i32(vec![p.num_tokens], &idx))]))
}

pub fn softcap(p: &SoftcapParams, inputs: &Tensors) -> Result<Tensors> {
    let x = f64_in("softcap", inputs, "logits")?;
    let y: Vec<f64> = x.iter().map(|v| p.cap * (v / p.cap).tanh()).collect();
    Ok(outputs([("output", float_out(p.dtype, &[p.num_tokens, p.vocab_size], &y))]))
}

pub fn temperature_scale(p: &TemperatureParams, inputs: &Tensors) -> Result<Tensors> {
    let x = f64_in("temperature_scale", inputs, "logits")?;
    let y: Vec<f64> = x.iter().map(|v| v / p.temperature).collect();
    Ok(outputs([("output", float_out(p.dtype, &[p.num_tokens, p.vocab_size], &y))]))
}

pub fn top_p_mask(p: &TopPParams, inputs: &Tensors) -> Result<Tensors> {
    const OP: &str = "top_p_mask";
    let t = get(OP, inputs, "logits")?;
    let x = t.to_f64()?;
    let mut keep = vec![false; x.len()];
    for (r, row) in x.chunks_exact(p.vocab_size).enumerate() {
        let probs = softmax_row(row);
        let mut cum = 0.0;
        for i in ranked(row) {
            // Keep tokens until the kept mass reaches top_p (the crossing token is kept).
            // top_p = 1 keeps every token: the f64 running sum can round to 1 before the
            // tail, and that tail must not be masked.
            if p.top_p < 1.0 && cum >= p.top_p {
                break;
            }
            keep[r * p.vocab_size + i] = true;
            cum += probs[i];
        }
    }
    Ok(outputs([("masked", masked(t, &keep)?)]))
}

pub fn min_p_mask(p: &MinPParams, inputs: &Tensors) -> Result<Tensors> {
    const OP: &str = "min_p_mask";
    let t = get(OP, inputs, "logits")?;
    let x = t.to_f64()?;
    let mut keep = vec![false; x.len()];
    for (r, row) in x.chunks_exact(p.vocab_size).enumerate() {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        for (i, &v) in row.iter().enumerate() {
            // p_i / p_max = exp(l_i - l_max)
            keep[r * p.vocab_size + i] = (v - m).exp() >= p.min_p;
        }
    }
    Ok(outputs([("masked", masked(t, &keep)?)]))
}

pub fn sample_from_probs(p: &SampleParams, inputs: &Tensors) -> Result<Tensors> {
    const OP: &str = "sample_from_probs";
    let probs = f64_in(OP, inputs, "probs")?;
    let u = f64_in(OP, inputs, "uniform")?;
    let mut out = Vec::with_capacity(p.num_tokens);
    for (r, row) in probs.chunks_exact(p.vocab_size).enumerate() {
        ensure!((0.0..1.0).contains(&u[r]), OP, "uniform[{r}] = {} is outside [0, 1)", u[r]);
        if let Some(i) = row.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(ingot_core::Error::invalid(OP, format!("probs[{r}][{i}] = {} is not a finite non-negative weight", row[i])));
        }
        let total: f64 = row.iter().sum();
        ensure!(total > 0.0, OP, "row {r} has no probability mass (all zeros)");
        let threshold = u[r] * total;
        let mut cum = 0.0;
        let mut pick = None;
        for (i, &v) in row.iter().enumerate() {
            cum += v;
            if cum > threshold {
                pick = Some(i);
                break;
            }
        }
        // Rounding can leave the threshold at the very end: take the last non-zero entry.
        let pick = pick.or_else(|| row.iter().rposition(|&v| v > 0.0)).unwrap_or(0);
        out.push(pick as i32);
    }
    Ok(outputs([("samples", Tensor::from_i32(vec![p.num_tokens], &out))]))
}

// ---------------------------------------------------------------- fast kernels (`cpu`)

/// The fast kernels of this family's ops on the [`crate::CpuDevice`] ([`crate::device_ops`]).
pub(crate) fn fast(op: &Op) -> Option<Kernel<'_>> {
    Some(match op {
        Op::Softmax(p) => Box::new(move |i, a| softmax_fast(p, i, a)),
        Op::Argmax(p) => Box::new(move |i, a| argmax_fast(p, i, a)),
        _ => return None,
    })
}

fn softmax_fast(p: &ingot_core::SoftmaxParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "softmax";
    let x = floats(input(op, ins, "logits")?)?;
    let out = alloc.zeros(DType::F32, &[p.num_tokens, p.vocab_size])?;
    fast::softmax_rows(&x, p.vocab_size, p.temperature as f32, out.write()?.f32());
    Ok(outs([("probs", out)]))
}

fn argmax_fast(p: &ingot_core::LogitsParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "argmax";
    let x = floats(input(op, ins, "logits")?)?;
    let out = alloc.zeros(DType::I32, &[p.num_tokens])?;
    fast::argmax_rows(&x, p.vocab_size, out.write()?.elems::<i32>());
    Ok(outs([("indices", out)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use ingot_core::{Backend, Op};
    use proptest::prelude::*;

    fn logits(dtype: DType, rows: usize, v: &[f32]) -> Tensors {
        let mut t = Tensors::new();
        t.insert("logits".into(), Tensor::from_f32(dtype, vec![rows, v.len() / rows], v));
        t
    }

    #[test]
    fn topk_ties_keep_lower_index_and_exactly_k() {
        let p = TopKParams { num_tokens: 1, vocab_size: 5, k: 2, dtype: DType::F32 };
        let out = CpuBackend.run(&Op::TopkMaskLogits(p), &logits(DType::F32, 1, &[1., 3., 3., 3., 0.])).unwrap();
        let ninf = f32::NEG_INFINITY;
        assert_eq!(out["masked"].to_f32().unwrap(), vec![ninf, 3., 3., ninf, ninf]);
    }

    #[test]
    fn extract_sorted_with_indices() {
        let p = ExtractKParams { m: 2, n: 3, k: 2, dtype: DType::F16 };
        let mut t = Tensors::new();
        t.insert("input".into(), Tensor::from_f32(DType::F16, vec![2, 3], &[0.5, 2., -1., 7., 7., 8.]));
        let out = CpuBackend.run(&Op::ExtractKValues(p), &t).unwrap();
        assert_eq!(out["values"].to_f32().unwrap(), vec![2., 0.5, 8., 7.]);
        assert_eq!(out["indices"].to_i32().unwrap(), vec![1, 0, 2, 0]);
    }

    #[test]
    fn argmax_first_max_and_nan() {
        let p = LogitsParams { num_tokens: 2, vocab_size: 3, dtype: DType::F32 };
        let out = CpuBackend.run(&Op::Argmax(p), &logits(DType::F32, 2, &[1., 5., 5., 0., f32::NAN, 9.])).unwrap();
        assert_eq!(out["indices"].to_i32().unwrap(), vec![1, 1]);
    }

    #[test]
    fn top_p_and_min_p_by_hand() {
        // probs of [ln 0.5, ln 0.3, ln 0.2] are [0.5, 0.3, 0.2]
        let l = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let ninf = f32::NEG_INFINITY;
        let tp = |top_p| {
            let p = TopPParams { num_tokens: 1, vocab_size: 3, top_p, dtype: DType::F32 };
            CpuBackend.run(&Op::TopPMask(p), &logits(DType::F32, 1, &l)).unwrap()["masked"].to_f32().unwrap()
        };
        assert_eq!(tp(0.4), vec![l[0], ninf, ninf]);
        assert_eq!(tp(0.7), vec![l[0], l[1], ninf]);
        assert_eq!(tp(1.0), l.to_vec());
        let mp = |min_p| {
            let p = MinPParams { num_tokens: 1, vocab_size: 3, min_p, dtype: DType::F32 };
            CpuBackend.run(&Op::MinPMask(p), &logits(DType::F32, 1, &l)).unwrap()["masked"].to_f32().unwrap()
        };
        assert_eq!(mp(0.5), vec![l[0], l[1], ninf]); // 0.3/0.5 = 0.6 >= 0.5, 0.2/0.5 = 0.4 < 0.5
        assert_eq!(mp(0.3), l.to_vec());
    }

    #[test]
    fn top_p_one_keeps_a_long_tail() {
        // One dominant logit and 4000 tokens 60 below it: their mass (~4e-23 in all) is
        // lost when added to a running sum near 1, yet top_p = 1 must keep them.
        let mut l = vec![-60.0f32; 4001];
        l[0] = 0.0;
        let p = TopPParams { num_tokens: 1, vocab_size: l.len(), top_p: 1.0, dtype: DType::F32 };
        let out = CpuBackend.run(&Op::TopPMask(p), &logits(DType::F32, 1, &l)).unwrap()["masked"].to_f32().unwrap();
        assert_eq!(out, l);
    }

    #[test]
    fn sampling_inverse_cdf_and_errors() {
        let run = |probs: &[f32], u: f32| {
            let p = SampleParams { num_tokens: 1, vocab_size: probs.len() };
            let mut t = Tensors::new();
            t.insert("probs".into(), Tensor::from_f32(DType::F32, vec![1, probs.len()], probs));
            t.insert("uniform".into(), Tensor::from_f32(DType::F32, vec![1], &[u]));
            CpuBackend.run(&Op::SampleFromProbs(p), &t).map(|o| o["samples"].to_i32().unwrap()[0])
        };
        assert_eq!(run(&[0.0, 0.25, 0.75], 0.0).unwrap(), 1);
        assert_eq!(run(&[0.0, 0.25, 0.75], 0.2).unwrap(), 1);
        assert_eq!(run(&[0.0, 0.25, 0.75], 0.3).unwrap(), 2);
        assert_eq!(run(&[2.0, 2.0], 0.5).unwrap(), 1); // unnormalized weights
        assert!(run(&[0.0, 0.0], 0.5).unwrap_err().to_string().contains("no probability mass"));
        assert!(run(&[0.5, -0.1], 0.5).unwrap_err().to_string().contains("probs[0][1]"));
        assert!(run(&[0.5, 0.5], 1.0).unwrap_err().to_string().contains("uniform[0]"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn softmax_sums_to_one(v in prop::collection::vec(-30.0f32..30.0, 1..200), t in 0.1f64..4.0) {
            let p = SoftmaxParams { num_tokens: 1, vocab_size: v.len(), temperature: t, dtype: DType::F32 };
            let out = CpuBackend.run(&Op::Softmax(p), &logits(DType::F32, 1, &v)).unwrap();
            let probs = out["probs"].to_f64().unwrap();
            let s: f64 = probs.iter().sum();
            prop_assert!((s - 1.0).abs() < 1e-5, "sum {}", s);
            prop_assert!(probs.iter().all(|p| *p >= 0.0));
        }

        #[test]
        fn topk_keeps_exactly_k(v in prop::collection::vec(-3i32..3, 1..100), kf in 0.0f64..1.0) {
            // small integer values make many ties
            let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
            let k = 1 + ((v.len() - 1) as f64 * kf) as usize;
            let p = TopKParams { num_tokens: 1, vocab_size: v.len(), k, dtype: DType::BF16 };
            let out = CpuBackend.run(&Op::TopkMaskLogits(p), &logits(DType::BF16, 1, &v)).unwrap();
            let m = out["masked"].to_f32().unwrap();
            prop_assert_eq!(m.iter().filter(|x| x.is_finite()).count(), k);
            let min_kept = m.iter().copied().filter(|x| x.is_finite()).fold(f32::INFINITY, f32::min);
            let max_dropped = v.iter().zip(&m).filter(|(_, o)| !o.is_finite()).map(|(x, _)| *x).fold(f32::NEG_INFINITY, f32::max);
            prop_assert!(min_kept >= max_dropped);
        }

        #[test]
        fn argmax_is_a_maximum(v in prop::collection::vec(-100.0f32..100.0, 1..300)) {
            let p = LogitsParams { num_tokens: 1, vocab_size: v.len(), dtype: DType::F32 };
            let i = CpuBackend.run(&Op::Argmax(p), &logits(DType::F32, 1, &v)).unwrap()["indices"].to_i32().unwrap()[0] as usize;
            prop_assert!(v.iter().all(|x| *x <= v[i]));
            prop_assert!(v[..i].iter().all(|x| *x < v[i]));
        }

        #[test]
        fn softcap_is_bounded_and_odd(v in prop::collection::vec(-1000.0f32..1000.0, 1..50), cap in 1.0f64..50.0) {
            let p = SoftcapParams { num_tokens: 1, vocab_size: v.len(), cap, dtype: DType::F32 };
            let y = CpuBackend.run(&Op::Softcap(p), &logits(DType::F32, 1, &v)).unwrap()["output"].to_f64().unwrap();
            for (x, y) in v.iter().zip(&y) {
                prop_assert!(y.abs() <= cap * (1.0 + 1e-6));
                prop_assert!(*x == 0.0 || x.signum() as f64 == y.signum());
            }
        }
    }
}
