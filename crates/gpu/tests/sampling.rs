//! Ranking and sampling kernels (`argmax`, `topk_mask_logits`, `extract_k_values`,
//! `top_p_mask`, `min_p_mask`, `sample_from_probs`) against the CPU reference, on the
//! default wgpu adapter (lavapipe in CI).
//!
//! Golden-generated cases (ties at the k-th value, repeated maxima, inputs well clear of
//! top-p/min-p/sampling decision boundaries) plus hand-made rows: vocabulary sizes around
//! the 256-thread cube and the 8-bit radix digits up to Gemma's 262144, rows of only −Inf,
//! NaN and ±Inf, ±0, long runs of equal values, every f16/bf16 bit class. Masks and
//! gathered values must match the reference bit for bit (NaN payloads aside). Without an
//! adapter the tests print why and pass, unless INGOT_REQUIRE_GPU=1.
#![cfg(feature = "wgpu")]

use ingot_core::{
    Backend, DType, Error, ExtractKParams, LogitsParams, MinPParams, Op, OpKind, SampleParams, Tensor, Tensors, TopKParams, TopPParams,
};
use ingot_golden::{compare, generate, Flags};
use ingot_gpu::WgpuBackend;
use std::sync::OnceLock;

fn gpu() -> Option<&'static WgpuBackend> {
    static B: OnceLock<Option<WgpuBackend>> = OnceLock::new();
    let b = B.get_or_init(|| WgpuBackend::wgpu("gpu:wgpu")).as_ref();
    if b.is_none() {
        let required = std::env::var("INGOT_REQUIRE_GPU").is_ok_and(|v| v == "1");
        assert!(!required, "INGOT_REQUIRE_GPU=1 but no wgpu adapter was found (install mesa-vulkan-drivers for lavapipe)");
        eprintln!("skipped: no wgpu adapter (install mesa-vulkan-drivers for lavapipe, or set INGOT_REQUIRE_GPU=1 to fail)");
    }
    b
}

/// Generate one golden case, run it on the GPU and compare every output with the case's
/// tolerances (exact for these ops).
fn check_golden(b: &WgpuBackend, kind: OpKind, flags: &[(&str, &str)]) {
    let flags = Flags::new(flags.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
    let case = generate(kind, &flags, 11, "gpu_sampling").unwrap();
    assert!(b.supports(&case.op), "{} {} should run on every device (bit-level kernel)", kind.name(), case.op.dtype());
    let got = b.run(&case.op, &case.inputs).unwrap_or_else(|e| panic!("{} failed: {e}", kind.name()));
    assert_eq!(got.len(), case.outputs.len());
    for (name, want) in &case.outputs {
        let v = compare(&case.tolerances[name], want, &got[name]);
        assert!(v.pass, "{} {} {:?} output {name}: {}", kind.name(), case.op.dtype(), flags.raw(), v.detail);
        assert_same_bits(&format!("{} {name}", kind.name()), want, &got[name]);
    }
}

/// The same bits, except that any NaN matches any NaN (the reference's f32 round trip may
/// change a payload).
fn assert_same_bits(what: &str, want: &Tensor, got: &Tensor) {
    assert_eq!((want.dtype, &want.shape), (got.dtype, &got.shape), "{what}");
    if !want.dtype.is_float() {
        assert_eq!(want.data, got.data, "{what}");
        return;
    }
    let (w, g) = (want.to_f32().unwrap(), got.to_f32().unwrap());
    let width = if want.dtype == DType::F32 { 4 } else { 2 };
    for i in 0..w.len() {
        let (wb, gb) = (&want.data[i * width..(i + 1) * width], &got.data[i * width..(i + 1) * width]);
        assert!(wb == gb || (w[i].is_nan() && g[i].is_nan()), "{what}: element {i}: want {} ({wb:?}), got {} ({gb:?})", w[i], g[i]);
    }
}

/// Run `op` on the GPU and the CPU reference with the same inputs; every output must agree
/// bit for bit.
fn check_inputs(b: &WgpuBackend, op: Op, inputs: Tensors) {
    let want = ingot_cpu::CpuBackend.run(&op, &inputs).unwrap();
    let got = b.run(&op, &inputs).unwrap_or_else(|e| panic!("{} failed: {e}", op.name()));
    for (name, w) in &want {
        assert_same_bits(&format!("{} {} {name}", op.name(), op.dtype()), w, &got[name]);
    }
}

fn one(name: &str, t: Tensor) -> Tensors {
    Tensors::from([(name.to_string(), t)])
}

/// Every logits op on one [rows, v] tensor of `dtype` holding `vals`, against the CPU.
fn check_all_logit_ops(b: &WgpuBackend, dtype: DType, rows: usize, v: usize, vals: &[f32], ks: &[usize]) {
    let t = Tensor::from_f32(dtype, vec![rows, v], vals);
    check_inputs(b, Op::Argmax(LogitsParams { num_tokens: rows, vocab_size: v, dtype }), one("logits", t.clone()));
    for &k in ks {
        check_inputs(b, Op::TopkMaskLogits(TopKParams { num_tokens: rows, vocab_size: v, k, dtype }), one("logits", t.clone()));
        check_inputs(b, Op::ExtractKValues(ExtractKParams { m: rows, n: v, k, dtype }), one("input", t.clone()));
    }
    for top_p in [0.5, 0.9] {
        check_inputs(b, Op::TopPMask(TopPParams { num_tokens: rows, vocab_size: v, top_p, dtype }), one("logits", t.clone()));
    }
    // top_p = 1 keeps every token (docs/ops.md). Not compared with the reference: it stops
    // keeping once its f64 running sum rounds to exactly 1, which rows with a long tail of
    // tiny probabilities reach before their end.
    let op = Op::TopPMask(TopPParams { num_tokens: rows, vocab_size: v, top_p: 1.0, dtype });
    let got = b.run(&op, &one("logits", t.clone())).unwrap();
    assert_same_bits("top_p_mask top_p = 1", &t, &got["masked"]);
    for min_p in [0.1, 1.0] {
        check_inputs(b, Op::MinPMask(MinPParams { num_tokens: rows, vocab_size: v, min_p, dtype }), one("logits", t.clone()));
    }
}

#[test]
fn golden_cases_match_cpu() {
    let Some(b) = gpu() else { return };
    for dt in ["f32", "f16", "bf16"] {
        let d = ("dtype", dt);
        for (v, k) in [("33", "1"), ("33", "33"), ("33", "7"), ("1000", "10"), ("4099", "300")] {
            check_golden(b, OpKind::TopkMaskLogits, &[("num_tokens", "3"), ("vocab_size", v), ("k", k), d]);
            check_golden(b, OpKind::ExtractKValues, &[("M", "3"), ("N", v), ("k", k), d]);
        }
        check_golden(b, OpKind::Argmax, &[("num_tokens", "5"), ("vocab_size", "33"), d]);
        check_golden(b, OpKind::Argmax, &[("num_tokens", "4"), ("vocab_size", "3001"), d]);
        for (v, p) in [("33", "0.9"), ("33", "1.0"), ("1000", "0.95"), ("5000", "0.5")] {
            check_golden(b, OpKind::TopPMask, &[("num_tokens", "3"), ("vocab_size", v), ("top_p", p), d]);
        }
        for (v, p) in [("33", "0.05"), ("2000", "0.1")] {
            check_golden(b, OpKind::MinPMask, &[("num_tokens", "3"), ("vocab_size", v), ("min_p", p), d]);
        }
    }
    for v in ["1", "33", "1000", "32000"] {
        check_golden(b, OpKind::SampleFromProbs, &[("num_tokens", "5"), ("vocab_size", v)]);
    }
}

#[test]
fn extract_with_k_past_the_shared_memory_sort() {
    // k > 2048 sorts in global memory, one launch per bitonic step.
    let Some(b) = gpu() else { return };
    check_golden(b, OpKind::ExtractKValues, &[("M", "2"), ("N", "4000"), ("k", "3000"), ("dtype", "f16")]);
    check_golden(b, OpKind::ExtractKValues, &[("M", "1"), ("N", "2049"), ("k", "2049"), ("dtype", "f32")]);
}

#[test]
fn awkward_vocab_sizes_one_row() {
    let Some(b) = gpu() else { return };
    for v in [1usize, 255, 257, 152064, 262144] {
        let v_s = v.to_string();
        let k = v.min(50).to_string();
        check_golden(b, OpKind::Argmax, &[("num_tokens", "1"), ("vocab_size", &v_s)]);
        check_golden(b, OpKind::TopkMaskLogits, &[("num_tokens", "1"), ("vocab_size", &v_s), ("k", &k)]);
        check_golden(b, OpKind::ExtractKValues, &[("M", "1"), ("N", &v_s), ("k", &k), ("dtype", "bf16")]);
        check_golden(b, OpKind::MinPMask, &[("num_tokens", "1"), ("vocab_size", &v_s), ("min_p", "0.1"), ("dtype", "f16")]);
        check_golden(b, OpKind::SampleFromProbs, &[("num_tokens", "1"), ("vocab_size", &v_s)]);
        if v > 1 {
            // (Top-p on one token keeps it at any top_p; the generator wants a boundary.)
            check_golden(b, OpKind::TopPMask, &[("num_tokens", "1"), ("vocab_size", &v_s), ("top_p", "0.9")]);
        }
    }
}

#[test]
fn special_values_rows() {
    let Some(b) = gpu() else { return };
    let (ninf, inf, nan) = (f32::NEG_INFINITY, f32::INFINITY, f32::NAN);
    let v = 9;
    #[rustfmt::skip]
    let rows: Vec<f32> = [
        [ninf; 9],                                          // only −Inf
        [1.0, nan, 3.0, nan, -2.0, 3.0, ninf, 0.5, 3.0],   // NaN ranks first, ties by index
        [0.0, -0.0, 0.0, -0.0, -1.0, ninf, -0.0, 0.0, -3.0], // ±0 are equal
        [2.0, inf, 5.0, ninf, inf, 1.0, -1.0, 0.0, 7.0],   // +Inf twice
        [4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0],     // all equal
        [ninf, ninf, -1e30, ninf, ninf, ninf, ninf, ninf, ninf], // one finite
    ]
    .concat();
    let rows_n = rows.len() / v;
    for dtype in DType::FLOATS {
        check_all_logit_ops(b, dtype, rows_n, v, &rows, &[1, 2, 3, 5, 9]);
    }
}

#[test]
fn long_ties_need_the_index_passes() {
    // Values in {−1, 0, 1, 2} over 70000 entries: the k-th value is shared by ~17500
    // entries, so the kept ones are chosen among them by index (three radix passes).
    let Some(b) = gpu() else { return };
    let v = 70_000;
    let vals: Vec<f32> = (0..v).map(|i| ((i * 7919 + 13) % 4) as f32 - 1.0).collect();
    for dtype in [DType::F32, DType::BF16] {
        check_all_logit_ops(b, dtype, 1, v, &vals, &[1, 17_499, 17_500, 17_501, 40_000]);
    }
}

#[test]
fn every_half_bit_class_decodes() {
    // All 65536 f16 and bf16 bit patterns (NaNs, infinities, subnormals, ±0) in 4 rows.
    let Some(b) = gpu() else { return };
    for dtype in [DType::F16, DType::BF16] {
        let data: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.wrapping_mul(40503).to_le_bytes()).collect();
        let t = Tensor::from_bytes(dtype, vec![4, 16384], data).unwrap();
        let (rows, v) = (4, 16384);
        check_inputs(b, Op::Argmax(LogitsParams { num_tokens: rows, vocab_size: v, dtype }), one("logits", t.clone()));
        for k in [1, 100, 8191] {
            check_inputs(b, Op::TopkMaskLogits(TopKParams { num_tokens: rows, vocab_size: v, k, dtype }), one("logits", t.clone()));
        }
        check_inputs(b, Op::ExtractKValues(ExtractKParams { m: rows, n: v, k: 700, dtype }), one("input", t.clone()));
        check_inputs(b, Op::TopPMask(TopPParams { num_tokens: rows, vocab_size: v, top_p: 0.5, dtype }), one("logits", t.clone()));
        check_inputs(b, Op::MinPMask(MinPParams { num_tokens: rows, vocab_size: v, min_p: 0.5, dtype }), one("logits", t));
    }
    // Finite f16 values only (min-p and top-p then decide on real probabilities), with
    // subnormals and zeros among them.
    let vals: Vec<f32> =
        (0..=u16::MAX).map(half::f16::from_bits).filter(|h| h.is_finite()).map(|h| h.to_f32() / 64.0).take(61440).collect();
    check_all_logit_ops(b, DType::F16, 4, 15360, &vals, &[1, 333]);
}

#[test]
fn sample_checks_values_on_the_host_and_stays_in_range_on_the_device() {
    let Some(b) = gpu() else { return };
    let run = |probs: &[f32], u: f32| {
        let p = SampleParams { num_tokens: 1, vocab_size: probs.len() };
        let mut t = Tensors::new();
        t.insert("probs".into(), Tensor::from_f32(DType::F32, vec![1, probs.len()], probs));
        t.insert("uniform".into(), Tensor::from_f32(DType::F32, vec![1], &[u]));
        (Op::SampleFromProbs(p), t)
    };
    let err = |probs: &[f32], u: f32| {
        let (op, t) = run(probs, u);
        match b.run(&op, &t) {
            Err(Error::Invalid { .. }) => b.run(&op, &t).unwrap_err().to_string(),
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    };
    assert!(err(&[0.0, 0.0], 0.5).contains("row 0 has no probability mass"));
    assert!(err(&[0.5, -0.1], 0.5).contains("probs[0][1] = -0.1"));
    assert!(err(&[0.5, f32::NAN], 0.5).contains("probs[0][1] = NaN"));
    assert!(err(&[0.5, 0.5], 1.0).contains("uniform[0] = 1"));
    assert!(err(&[0.5, 0.5], -0.5).contains("uniform[0] = -0.5"));
    // Hand-checked picks: first index whose inclusive prefix exceeds u·S, zeros skipped.
    for (probs, u, want) in
        [(&[0.0, 0.25, 0.75][..], 0.0, 1), (&[0.0, 0.25, 0.75], 0.3, 2), (&[2.0, 2.0], 0.5, 1), (&[0.0, 3.0, 0.0], 0.99, 1)]
    {
        let (op, t) = run(probs, u);
        assert_eq!(b.run(&op, &t).unwrap()["samples"].to_i32().unwrap(), vec![want], "{probs:?} u={u}");
    }
    // The device path does not check values: any weights give an index inside the row.
    for (probs, u) in [(vec![f32::NAN; 300], 0.5), (vec![-1.0; 300], 0.5), (vec![0.0; 300], 0.5), (vec![1.0; 300], 7.0)] {
        let (op, t) = run(&probs, u);
        let dev: ingot_gpu::GpuTensors = t.iter().map(|(k, x)| (k.clone(), b.device().to_device(x))).collect();
        let out = b.run_device(&op, &dev).unwrap();
        let i = b.device().to_host("sample_from_probs", &out["samples"]).unwrap().to_i32().unwrap()[0];
        assert!((0..300).contains(&i), "{i}");
    }
}
