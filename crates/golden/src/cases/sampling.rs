//! Golden cases of the logits and sampling ops: how inputs are drawn from the seed, and the standard suite's
//! entries.

use super::prelude::*;

/// `softmax`: parameters from the flags, inputs from the seed.
pub(crate) fn softmax(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let (op, inputs) = {
        let p = SoftmaxParams {
            num_tokens: f.usize(&["num_tokens"], 4)?,
            vocab_size: f.usize(&["vocab_size"], 1000)?,
            temperature: f.f64(&["temperature"], 1.0)?,
            dtype: dt(f, DType::F32)?,
        };
        let op = Op::Softmax(p.clone());
        op.validate()?;
        limit(&op)?;
        let (t, v) = (p.num_tokens, p.vocab_size);
        let mut x = g.normals(t * v, 3.0);
        if v > 1 {
            // One masked logit per row, as after a top-k mask.
            for r in 0..t {
                x[r * v + 1] = f64::NEG_INFINITY;
            }
        }
        (op, ins([("logits", float(p.dtype, &[t, v], &x))]))
    };
    Ok((op, inputs))
}

/// `topk_mask_logits`: parameters from the flags, inputs from the seed.
pub(crate) fn topk_mask_logits(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    topk_mask_logits_like(OpKind::TopkMaskLogits, f, g)
}

/// `extract_k_values`: parameters from the flags, inputs from the seed.
pub(crate) fn extract_k_values(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    topk_mask_logits_like(OpKind::ExtractKValues, f, g)
}

/// The shared builder of `topk_mask_logits`, `extract_k_values`.
fn topk_mask_logits_like(kind: OpKind, f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    use OpKind::*;
    let (op, inputs) = {
        let (op, rows, cols, d) = if kind == TopkMaskLogits {
            let p = TopKParams {
                num_tokens: f.usize(&["num_tokens"], 4)?,
                vocab_size: f.usize(&["vocab_size"], 1000)?,
                k: f.usize(&["k"], 10)?,
                dtype: dt(f, DType::F32)?,
            };
            (Op::TopkMaskLogits(p.clone()), p.num_tokens, p.vocab_size, p.dtype)
        } else {
            let p = ExtractKParams {
                m: f.usize(&["M", "m"], 4)?,
                n: f.usize(&["N", "n"], 1000)?,
                k: f.usize(&["k"], 10)?,
                dtype: dt(f, DType::F32)?,
            };
            (Op::ExtractKValues(p.clone()), p.m, p.n, p.dtype)
        };
        op.validate()?;
        limit(&op)?;
        let k = match &op {
            Op::TopkMaskLogits(p) => p.k,
            Op::ExtractKValues(p) => p.k,
            _ => unreachable!(),
        };
        let mut x = rounded(d, &g.normals(rows * cols, 2.0));
        // Ties at the k-th value: the rule (lower index first) decides what is kept.
        for r in 0..rows {
            let row = &mut x[r * cols..(r + 1) * cols];
            let kth = row[ranked(row)[k - 1]];
            for _ in 0..2.min(cols) {
                let j = g.below(cols);
                row[j] = kth;
            }
        }
        let name = if kind == TopkMaskLogits { "logits" } else { "input" };
        (op, ins([(name, float(d, &[rows, cols], &x))]))
    };
    Ok((op, inputs))
}

/// `argmax`: parameters from the flags, inputs from the seed.
pub(crate) fn argmax(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let (op, inputs) = {
        let p = LogitsParams {
            num_tokens: f.usize(&["num_tokens"], 4)?,
            vocab_size: f.usize(&["vocab_size"], 1000)?,
            dtype: dt(f, DType::F32)?,
        };
        let op = Op::Argmax(p.clone());
        op.validate()?;
        limit(&op)?;
        let (t, v) = (p.num_tokens, p.vocab_size);
        let mut x = rounded(p.dtype, &g.normals(t * v, 2.0));
        for r in (1..t).step_by(2) {
            // Odd rows: the maximum appears twice; the first index wins.
            let row = &mut x[r * v..(r + 1) * v];
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let j = g.below(v);
            row[j] = m;
        }
        (op, ins([("logits", float(p.dtype, &[t, v], &x))]))
    };
    Ok((op, inputs))
}

/// `softcap`: parameters from the flags, inputs from the seed.
pub(crate) fn softcap(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    softcap_like(OpKind::Softcap, f, g)
}

/// `temperature_scale`: parameters from the flags, inputs from the seed.
pub(crate) fn temperature_scale(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    softcap_like(OpKind::TemperatureScale, f, g)
}

/// The shared builder of `softcap`, `temperature_scale`.
fn softcap_like(kind: OpKind, f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    use OpKind::*;
    let (op, inputs) = {
        let (t, v, d) = (f.usize(&["num_tokens"], 4)?, f.usize(&["vocab_size"], 1000)?, dt(f, DType::F32)?);
        let op = if kind == Softcap {
            Op::Softcap(SoftcapParams { num_tokens: t, vocab_size: v, cap: f.f64(&["cap"], 30.0)?, dtype: d })
        } else {
            Op::TemperatureScale(TemperatureParams { num_tokens: t, vocab_size: v, temperature: f.f64(&["temperature"], 0.7)?, dtype: d })
        };
        op.validate()?;
        limit(&op)?;
        (op, ins([("logits", float(d, &[t, v], &g.normals(t * v, 30.0)))]))
    };
    Ok((op, inputs))
}

/// `top_p_mask`: parameters from the flags, inputs from the seed.
pub(crate) fn top_p_mask(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    top_p_mask_like(OpKind::TopPMask, f, g)
}

/// `min_p_mask`: parameters from the flags, inputs from the seed.
pub(crate) fn min_p_mask(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    top_p_mask_like(OpKind::MinPMask, f, g)
}

/// The shared builder of `top_p_mask`, `min_p_mask`.
fn top_p_mask_like(kind: OpKind, f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    use OpKind::*;
    let (op, inputs) = {
        let (t, v, d) = (f.usize(&["num_tokens"], 4)?, f.usize(&["vocab_size"], 1000)?, dt(f, DType::F32)?);
        let op = if kind == TopPMask {
            Op::TopPMask(TopPParams { num_tokens: t, vocab_size: v, top_p: f.f64(&["top_p"], 0.9)?, dtype: d })
        } else {
            Op::MinPMask(MinPParams { num_tokens: t, vocab_size: v, min_p: f.f64(&["min_p"], 0.05)?, dtype: d })
        };
        op.validate()?;
        limit(&op)?;
        let mut x = Vec::with_capacity(t * v);
        for r in 0..t {
            // Peaked logits put the top-p boundary among tokens of real probability,
            // where a margin from the boundary can exist at all.
            let row = (0..1000).map(|_| rounded(d, &g.normals(v, 5.0))).find(|row| well_posed(&op, row)).ok_or_else(|| {
                Error::Usage(format!(
                    "[{}] found no row {r} without a value near the decision boundary in 1000 draws; change top_p/min_p or vocab_size",
                    op.name()
                ))
            })?;
            x.extend(row);
        }
        (op, ins([("logits", float(d, &[t, v], &x))]))
    };
    Ok((op, inputs))
}

/// `sample_from_probs`: parameters from the flags, inputs from the seed.
pub(crate) fn sample_from_probs(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let (op, inputs) = {
        let p = SampleParams { num_tokens: f.usize(&["num_tokens"], 4)?, vocab_size: f.usize(&["vocab_size"], 1000)? };
        let op = Op::SampleFromProbs(p.clone());
        op.validate()?;
        limit(&op)?;
        let (t, v) = (p.num_tokens, p.vocab_size);
        let mut probs = Vec::with_capacity(t * v);
        let mut us = Vec::with_capacity(t);
        for _ in 0..t {
            let mut row = softmax_row(&g.normals(v, 2.0));
            // Some zero-probability entries, as after a mask; keep at least one non-zero.
            for j in 0..v {
                if j + 1 < v && g.uniform() < 0.1 {
                    row[j] = 0.0;
                }
            }
            let row = rounded(DType::F32, &row);
            let total: f64 = row.iter().sum();
            let mut u = g.uniform();
            for _ in 0..1000 {
                let thr = u * total;
                let mut cum = 0.0;
                let near = row.iter().any(|p| {
                    cum += p;
                    (cum - thr).abs() <= 1e-5 * total
                });
                if !near {
                    break;
                }
                u = g.uniform();
            }
            probs.extend(row);
            us.push(u);
        }
        (op, ins([("probs", float(DType::F32, &[t, v], &probs)), ("uniform", float(DType::F32, &[t], &us))]))
    };
    Ok((op, inputs))
}

/// This family's entries of the standard suite.
pub(crate) fn standard(v: &mut Vec<Entry>) {
    use OpKind::*;
    for d in DType::FLOATS {
        let dt = || ("dtype", d.name().to_string());
        let n = d.name();
        e(v, format!("awk_{n}"), Softmax, &[("num_tokens", "3"), ("vocab_size", "33")], &[dt()]);
        e(v, format!("llm_temp_{n}"), Softmax, &[("num_tokens", "2"), ("vocab_size", "49152"), ("temperature", "0.7")], &[dt()]);
        e(v, format!("k1_{n}"), TopkMaskLogits, &[("num_tokens", "3"), ("vocab_size", "33"), ("k", "1")], &[dt()]);
        e(v, format!("kvocab_{n}"), TopkMaskLogits, &[("num_tokens", "3"), ("vocab_size", "33"), ("k", "33")], &[dt()]);
        e(v, format!("llm_{n}"), TopkMaskLogits, &[("num_tokens", "2"), ("vocab_size", "49152"), ("k", "50")], &[dt()]);
        e(v, format!("k1_{n}"), ExtractKValues, &[("M", "3"), ("N", "33"), ("k", "1")], &[dt()]);
        e(v, format!("kall_{n}"), ExtractKValues, &[("M", "3"), ("N", "33"), ("k", "33")], &[dt()]);
        e(v, format!("llm_{n}"), ExtractKValues, &[("M", "2"), ("N", "32000"), ("k", "40")], &[dt()]);
        e(v, format!("awk_{n}"), Argmax, &[("num_tokens", "5"), ("vocab_size", "33")], &[dt()]);
        e(v, format!("llm_{n}"), Argmax, &[("num_tokens", "2"), ("vocab_size", "151936")], &[dt()]);
        e(v, format!("awk_{n}"), Softcap, &[("num_tokens", "3"), ("vocab_size", "33"), ("cap", "30")], &[dt()]);
        e(v, format!("llm_{n}"), Softcap, &[("num_tokens", "2"), ("vocab_size", "32000"), ("cap", "30")], &[dt()]);
        e(v, format!("awk_{n}"), TemperatureScale, &[("num_tokens", "3"), ("vocab_size", "33"), ("temperature", "0.7")], &[dt()]);
        e(v, format!("llm_{n}"), TemperatureScale, &[("num_tokens", "2"), ("vocab_size", "32000"), ("temperature", "1.3")], &[dt()]);
        e(v, format!("awk_{n}"), TopPMask, &[("num_tokens", "3"), ("vocab_size", "33"), ("top_p", "0.9")], &[dt()]);
        e(v, format!("p1_{n}"), TopPMask, &[("num_tokens", "2"), ("vocab_size", "33"), ("top_p", "1.0")], &[dt()]);
        e(v, format!("llm_{n}"), TopPMask, &[("num_tokens", "2"), ("vocab_size", "32000"), ("top_p", "0.95")], &[dt()]);
        e(v, format!("awk_{n}"), MinPMask, &[("num_tokens", "3"), ("vocab_size", "33"), ("min_p", "0.05")], &[dt()]);
        e(v, format!("llm_{n}"), MinPMask, &[("num_tokens", "2"), ("vocab_size", "32000"), ("min_p", "0.1")], &[dt()]);
    }

    e(v, "awk", SampleFromProbs, &[("num_tokens", "5"), ("vocab_size", "33")], &[]);

    e(v, "llm", SampleFromProbs, &[("num_tokens", "2"), ("vocab_size", "32000")], &[]);
}
