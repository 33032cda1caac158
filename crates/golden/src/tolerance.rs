//! Comparing a backend's output with the reference: the metrics, the per-op and
//! per-dtype defaults, and the rule that NaN and ±Inf must match exactly.

use ingot_core::{DType, Op, OpKind, Precision, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How one output tensor is compared. Written into `meta.json` per output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "metric", rename_all = "snake_case")]
pub enum Tolerance {
    /// Every element equal (floats by value, NaN matching NaN; integers bit for bit).
    Exact,
    /// Per element |got − want| ≤ atol + rtol·|want|.
    AllClose { atol: f64, rtol: f64 },
    /// Σ(got − want)² / max(Σ want², tiny) ≤ max over the finite elements.
    Nmse { max: f64 },
    /// u32 words packing `bits`-bit codes: each code within `max_diff` of the reference,
    /// and at most `max_frac` of the codes differing at all.
    Codes { bits: u32, max_diff: u32, max_frac: f64 },
}

/// Outcome of one comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub pass: bool,
    /// The metric's worst value (max error, NMSE, ...), for the report.
    pub worst: f64,
    /// What failed, with the first offending index.
    pub detail: String,
}

fn rtol_of(d: DType) -> f64 {
    match d {
        DType::F16 => 2e-3,
        DType::BF16 => 1.6e-2,
        _ => 1e-5,
    }
}

fn nmse_of(d: DType, f32_: f64, f16_: f64, bf16_: f64) -> Tolerance {
    Tolerance::Nmse {
        max: match d {
            DType::F16 => f16_,
            DType::BF16 => bf16_,
            _ => f32_,
        },
    }
}

/// The default tolerance for output `name` (of dtype `out`) of `op`.
pub fn default_tolerance(op: &Op, name: &str, out: DType) -> Tolerance {
    use OpKind::*;
    // The activation dtype: what the arithmetic runs in.
    let act = match op {
        Op::QuantizedMatmul(p) => p.dtype,
        other => other.dtype(),
    };
    let op_kind = op.kind();
    if let Op::QuantizeKv(p) = op {
        if name == "cache_w_out" {
            return Tolerance::Codes { bits: p.bits as u32, max_diff: 1, max_frac: 0.01 };
        }
    }
    let close = |atol: f64| Tolerance::AllClose { atol, rtol: rtol_of(out) };
    match op_kind {
        Gemm => nmse_of(act, 1e-6, 1e-5, 1e-4),
        BatchPrefillWithPagedKvCache | BatchDecodeWithPagedKvCache if name == "output" => nmse_of(act, 1e-8, 1e-5, 1e-4),
        BatchPrefillWithPagedKvCache | BatchDecodeWithPagedKvCache => Tolerance::AllClose { atol: 1e-3, rtol: 1e-4 },
        QuantizedMatmul => nmse_of(act, 1e-5, 3e-5, 1e-4),
        Dequantize => Tolerance::AllClose { atol: 1e-5, rtol: 1e-6 },
        EmbeddingLookup if !act.is_float() => Tolerance::AllClose { atol: 1e-5, rtol: 1e-6 },
        EmbeddingLookup | TopkMaskLogits | ExtractKValues | Argmax | TopPMask | MinPMask | SampleFromProbs | Cast | AppendPagedKvCache
        | CopyPages | WriteColumns => Tolerance::Exact,
        Softmax => Tolerance::AllClose { atol: 1e-7, rtol: 1e-4 },
        // f32 angles: pos·inv_freq carries a relative error of ~6e-8, so ~5e-4 rad at position 8192.
        Rope | RopeFreqs | RopeQkv => Tolerance::AllClose { atol: 2e-3, rtol: rtol_of(out) },
        Softcap | TemperatureScale => close(1e-5),
        _ => close(1e-6),
    }
}

/// NMSE bound of `quantized_matmul` with block-format weights on the 8-bit activation path
/// ([`Precision::Q8Activations`]). Rounding x to levels of d = max|x|/127 per block of 32
/// moves each value by at most d/2, uniformly: an error of variance d²/12 per element
/// against a signal of variance mean(x²), so NMSE ≈ E[d²/12] / E[x²]. For normal
/// activations (max of 32 ≈ 2.1σ–2.5σ) that is about 3e-5, and heavier tails raise it
/// (the standard suite measures 1.6e-5 to 4.2e-5); 2e-4 leaves room for outlier blocks while
/// every wrong scale, sign or nibble order gives 1e-2 or more.
pub const Q8_ACTIVATIONS_NMSE: f64 = 2e-4;

/// The tolerance of output `name` of `op` on arithmetic path `path` where it differs from
/// [`default_tolerance`]: `None` where the default holds.
pub fn path_tolerance(op: &Op, name: &str, path: Precision) -> Option<Tolerance> {
    match (path, op) {
        (Precision::Q8Activations, Op::QuantizedMatmul(p)) if p.weight_dtype.is_quantized() && name == "y" => {
            Some(Tolerance::Nmse { max: Q8_ACTIVATIONS_NMSE })
        }
        _ => None,
    }
}

/// Every path's own tolerance for output `name` of `op`, by path name (what `meta.json`
/// stores as `path_tolerances`).
pub fn path_tolerances(op: &Op, name: &str) -> BTreeMap<String, Tolerance> {
    Precision::ALL.iter().filter_map(|&p| Some((p.name().to_string(), path_tolerance(op, name, p)?))).collect()
}

fn is_float(d: DType) -> bool {
    d.is_float()
}

/// Compare `got` with `want` under `tol`. Shapes and dtypes must agree.
pub fn compare(tol: &Tolerance, want: &Tensor, got: &Tensor) -> Verdict {
    let fail = |detail: String| Verdict { pass: false, worst: f64::INFINITY, detail };
    if want.dtype != got.dtype || want.shape != got.shape || want.data.len() != got.data.len() {
        return fail(format!(
            "got {} {:?} ({} bytes), expected {} {:?} ({} bytes)",
            got.dtype,
            got.shape,
            got.data.len(),
            want.dtype,
            want.shape,
            want.data.len()
        ));
    }
    if let Tolerance::Codes { bits, max_diff, max_frac } = tol {
        return compare_codes(*bits, *max_diff, *max_frac, want, got);
    }
    if !is_float(want.dtype) {
        return match want.data.iter().zip(&got.data).position(|(a, b)| a != b) {
            None => Verdict { pass: true, worst: 0.0, detail: String::new() },
            Some(i) => {
                let es = want.dtype.type_size();
                let idx = i / es;
                let read = |t: &Tensor| {
                    let mut b = [0u8; 4];
                    b[..es.min(4)].copy_from_slice(&t.data[idx * es..idx * es + es.min(4)]);
                    i32::from_le_bytes(b)
                };
                let n_bad = want.data.chunks(es).zip(got.data.chunks(es)).filter(|(a, b)| a != b).count();
                fail(format!("{n_bad} elements differ; first at {idx}: got {}, expected {}", read(got), read(want)))
            }
        };
    }
    let (w, g) = match (want.to_f64(), got.to_f64()) {
        (Ok(w), Ok(g)) => (w, g),
        _ => return fail("not a float tensor".into()),
    };
    // NaN and ±Inf must match exactly, whatever the metric.
    for (i, (a, b)) in w.iter().zip(&g).enumerate() {
        let ok = if a.is_nan() {
            b.is_nan()
        } else if a.is_infinite() {
            a == b
        } else {
            b.is_finite()
        };
        if !ok {
            return fail(format!("element {i}: got {b}, expected {a} (NaN/Inf must match)"));
        }
    }
    let finite = w.iter().zip(&g).filter(|(a, _)| a.is_finite());
    match tol {
        Tolerance::Exact => {
            let bad: Vec<usize> =
                w.iter().zip(&g).enumerate().filter(|(_, (a, b))| !(a == b || (a.is_nan() && b.is_nan()))).map(|(i, _)| i).collect();
            match bad.first() {
                None => Verdict { pass: true, worst: 0.0, detail: String::new() },
                Some(&i) => fail(format!("{} elements differ; first at {i}: got {}, expected {}", bad.len(), g[i], w[i])),
            }
        }
        Tolerance::AllClose { atol, rtol } => {
            let mut worst = 0.0f64;
            let mut first_bad = None;
            let mut n_bad = 0usize;
            for (i, (a, b)) in w.iter().zip(&g).enumerate() {
                if !a.is_finite() {
                    continue;
                }
                let err = (a - b).abs();
                let allowed = atol + rtol * a.abs();
                worst = worst.max(err / allowed.max(f64::MIN_POSITIVE));
                if err > allowed {
                    n_bad += 1;
                    first_bad.get_or_insert(i);
                }
            }
            match first_bad {
                None => Verdict { pass: true, worst, detail: String::new() },
                Some(i) => Verdict {
                    pass: false,
                    worst,
                    detail: format!(
                        "{n_bad} elements outside atol {atol:e} + rtol {rtol:e}; first at {i}: got {}, expected {} (error {:e})",
                        g[i],
                        w[i],
                        (g[i] - w[i]).abs()
                    ),
                },
            }
        }
        Tolerance::Nmse { max } => {
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for (a, b) in finite {
                num += (a - b) * (a - b);
                den += a * a;
            }
            // An all-zero reference passes only an exact match.
            let nmse = if den == 0.0 {
                if num == 0.0 {
                    0.0
                } else {
                    f64::INFINITY
                }
            } else {
                num / den
            };
            if nmse <= *max {
                Verdict { pass: true, worst: nmse, detail: String::new() }
            } else {
                Verdict { pass: false, worst: nmse, detail: format!("NMSE {nmse:e} > {max:e}") }
            }
        }
        Tolerance::Codes { .. } => unreachable!("handled above"),
    }
}

fn compare_codes(bits: u32, max_diff: u32, max_frac: f64, want: &Tensor, got: &Tensor) -> Verdict {
    let (Ok(w), Ok(g)) = (want.to_u32(), got.to_u32()) else {
        return Verdict { pass: false, worst: f64::INFINITY, detail: "codes must be u32 words".into() };
    };
    if !(bits == 4 || bits == 8) {
        return Verdict { pass: false, worst: f64::INFINITY, detail: format!("code width {bits} is not 4 or 8") };
    }
    let per = 32 / bits;
    let mask = ((1u64 << bits) - 1) as u32;
    let (mut worst, mut n_diff, mut first) = (0u32, 0usize, None);
    for (i, (a, b)) in w.iter().zip(&g).enumerate() {
        for j in 0..per {
            let (ca, cb) = ((a >> (j * bits)) & mask, (b >> (j * bits)) & mask);
            let d = ca.abs_diff(cb);
            if d > 0 {
                n_diff += 1;
                worst = worst.max(d);
                first.get_or_insert((i, j, ca, cb));
            }
        }
    }
    let total = w.len() * per as usize;
    let frac = n_diff as f64 / total.max(1) as f64;
    let pass = worst <= max_diff && frac <= max_frac;
    let detail = match (pass, first) {
        (true, _) | (_, None) => String::new(),
        (false, Some((i, j, ca, cb))) => format!(
            "{n_diff} of {total} codes differ (max diff {worst}, allowed {max_diff} for at most {:.1}%); first word {i} code {j}: got {cb}, expected {ca}",
            max_frac * 100.0
        ),
    };
    Verdict { pass, worst: worst as f64, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: &[f32]) -> Tensor {
        Tensor::from_f32(DType::F32, vec![v.len()], v)
    }

    #[test]
    fn nan_and_inf_must_match() {
        let tol = Tolerance::AllClose { atol: 1.0, rtol: 1.0 };
        assert!(compare(&tol, &f(&[f32::NAN, 1.0]), &f(&[f32::NAN, 1.5])).pass);
        assert!(!compare(&tol, &f(&[f32::NAN]), &f(&[0.0])).pass);
        assert!(!compare(&tol, &f(&[f32::INFINITY]), &f(&[f32::NEG_INFINITY])).pass);
        assert!(!compare(&tol, &f(&[1.0]), &f(&[f32::INFINITY])).pass);
        assert!(!compare(&Tolerance::Nmse { max: 1.0 }, &f(&[1.0, 2.0]), &f(&[1.0, f32::NAN])).pass);
    }

    #[test]
    fn allclose_and_nmse_limits() {
        let tol = Tolerance::AllClose { atol: 0.0, rtol: 0.1 };
        assert!(compare(&tol, &f(&[10.0]), &f(&[10.9])).pass);
        assert!(!compare(&tol, &f(&[10.0]), &f(&[11.1])).pass);
        let n = Tolerance::Nmse { max: 0.01 };
        assert!(compare(&n, &f(&[3.0, 4.0]), &f(&[3.0, 4.4])).pass); // 0.16/25
        assert!(!compare(&n, &f(&[3.0, 4.0]), &f(&[3.0, 5.0])).pass); // 1/25
    }

    #[test]
    fn exact_ints_and_shape_mismatch() {
        let a = Tensor::from_i32(vec![3], &[1, 2, 3]);
        assert!(compare(&Tolerance::Exact, &a, &a).pass);
        let v = compare(&Tolerance::Exact, &a, &Tensor::from_i32(vec![3], &[1, 2, 4]));
        assert!(!v.pass && v.detail.contains("first at 2"), "{}", v.detail);
        assert!(!compare(&Tolerance::Exact, &a, &Tensor::from_i32(vec![2], &[1, 2])).pass);
    }

    #[test]
    fn codes_allow_one_step() {
        let tol = Tolerance::Codes { bits: 4, max_diff: 1, max_frac: 0.5 };
        let a = Tensor::from_u32(vec![1], &[0x7654_3210]);
        assert!(compare(&tol, &a, &Tensor::from_u32(vec![1], &[0x7654_3211])).pass);
        assert!(!compare(&tol, &a, &Tensor::from_u32(vec![1], &[0x7654_3212])).pass);
    }
}
