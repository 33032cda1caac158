//! Paged KV cache, attention and KV quantization kernels against the CPU reference, on the
//! default wgpu adapter (lavapipe in CI).
//!
//! Cases come from the golden generator (page tables with permuted physical pages, a
//! partial last page, sequences of different lengths; outputs from the CPU reference) and
//! are compared with the protocol's tolerances. Attention cases also run with launch
//! choices forced (decode split counts, the plane path at the adapter's fixed subgroup
//! width even where it does not advertise plane operations), each against the same
//! reference. Without an adapter the tests print why and pass, unless INGOT_REQUIRE_GPU=1.
#![cfg(feature = "wgpu")]

use ingot_core::{Backend, DType, Op, OpKind, Tensor, Tensors};
use ingot_golden::{compare, generate, Case, Flags};
use ingot_gpu::attention::{batch_decode_tuned, batch_prefill_tuned, AttnTuning, Reduce};
use ingot_gpu::bench::{time_paged_attention, PagedAttnShape};
use ingot_gpu::{GpuTensors, WgpuBackend};
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

fn case(kind: OpKind, flags: &[(&str, &str)]) -> Case {
    let flags = Flags::new(flags.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
    generate(kind, &flags, 11, "gpu_attention").unwrap()
}

/// Compare every output of `got` with the case's reference outputs.
fn expect_match(what: &str, case: &Case, got: &Tensors) {
    assert_eq!(got.len(), case.outputs.len(), "{what}: every output is returned");
    for (name, want) in &case.outputs {
        let v = compare(&case.tolerances[name], want, &got[name]);
        assert!(v.pass, "{what} ({}) output {name}: {}", case.op.dtype(), v.detail);
    }
}

/// Run a case through `Backend::run` and compare; false when the device does not support
/// it (which must then be an `Unsupported` error).
fn check(b: &WgpuBackend, what: &str, case: &Case) -> bool {
    if !b.supports(&case.op) {
        assert!(
            matches!(b.run(&case.op, &case.inputs), Err(ingot_core::Error::Unsupported { .. })),
            "{what}: unsupported cases must say so"
        );
        return false;
    }
    let got = b.run(&case.op, &case.inputs).unwrap_or_else(|e| panic!("{what} failed: {e}"));
    expect_match(what, case, &got);
    true
}

/// Run an attention case on the device with forced launch choices and compare.
fn check_tuned(b: &WgpuBackend, what: &str, case: &Case, tuning: AttnTuning) {
    let d = b.device();
    let dev: GpuTensors = case.inputs.iter().map(|(k, t)| (k.clone(), d.to_device(t))).collect();
    let out = match &case.op {
        Op::BatchDecodeWithPagedKvCache(p) => batch_decode_tuned(d, p, &dev, tuning),
        Op::BatchPrefillWithPagedKvCache(p) => batch_prefill_tuned(d, p, &dev, tuning),
        other => panic!("{} is not an attention op", other.name()),
    }
    .unwrap_or_else(|e| panic!("{what} {tuning:?} failed: {e}"));
    let got: Tensors = out.iter().map(|(k, t)| (k.clone(), d.to_host("test", t).unwrap())).collect();
    expect_match(&format!("{what} {tuning:?}"), case, &got);
}

/// The adapter's subgroup width when it is fixed (lavapipe: 8, without advertising plane
/// operations), to run the plane path there too.
fn fixed_plane_width(b: &WgpuBackend) -> Option<u32> {
    let hw = &b.device().client().properties().hardware;
    (hw.plane_size_min == hw.plane_size_max && hw.plane_size_max.is_power_of_two()).then_some(hw.plane_size_max)
}

/// The reduction path that the default launch does not take here: shared memory where the
/// device uses planes, planes at the adapter's fixed subgroup width where it does not.
fn other_path(b: &WgpuBackend) -> Option<Reduce> {
    match (b.device().plane_dim(), fixed_plane_width(b)) {
        (Some(_), _) => Some(Reduce::SharedMemory),
        (None, Some(w)) => Some(Reduce::PlaneWidth(w)),
        (None, None) => {
            eprintln!("note: no fixed plane width; only the shared-memory path runs here");
            None
        }
    }
}

#[test]
fn append_matches_cpu_in_every_dtype() {
    let Some(b) = gpu() else { return };
    let shapes: [&[(&str, &str)]; 4] = [
        // Partial last pages, three sequences, rows at their ends.
        &[("batch_size", "3"), ("num_kv_heads", "3"), ("head_size", "64"), ("page_size", "16"), ("kv_len", "37"), ("num_tokens", "5")],
        // Page size 1: every row on its own page.
        &[("batch_size", "2"), ("num_kv_heads", "2"), ("head_size", "32"), ("page_size", "1"), ("kv_len", "9"), ("num_tokens", "9")],
        // Rows of odd length: 16-bit rows start mid-word (the atomic path).
        &[("batch_size", "2"), ("num_kv_heads", "1"), ("head_size", "33"), ("page_size", "3"), ("kv_len", "8"), ("num_tokens", "6")],
        &[("batch_size", "1"), ("num_kv_heads", "3"), ("head_size", "5"), ("page_size", "2"), ("kv_len", "1"), ("num_tokens", "1")],
    ];
    for dt in ["f32", "f16", "bf16"] {
        for s in shapes {
            let mut f = s.to_vec();
            f.push(("dtype", dt));
            let c = case(OpKind::AppendPagedKvCache, &f);
            assert!(check(b, &format!("append {f:?}"), &c), "append moves bits: it runs in {dt} on every device");
        }
    }
}

// The standard suite's shapes (`ingot golden check --backend gpu:wgpu`, run by CI) are not
// repeated here; these are the awkward ones around them, plus launch choices the default
// rule does not make on this adapter.

/// Prefill shapes: non-causal with more queries than keys and a window, page size 1 with a
/// whole-prompt prefill, length-1 sequences, 12 query heads per KV head at head size 256
/// (on lavapipe two head chunks per KV head, the second partial), GQA with queries that
/// straddle cubes and sequences.
const PREFILL: [&[(&str, &str)]; 5] = [
    &[
        ("batch_size", "2"),
        ("num_qo_heads", "2"),
        ("num_kv_heads", "1"),
        ("head_size", "16"),
        ("page_size", "2"),
        ("kv_len", "3"),
        ("num_tokens", "7"),
        ("causal", "false"),
        ("window_left", "2"),
    ],
    &[
        ("batch_size", "2"),
        ("num_qo_heads", "3"),
        ("num_kv_heads", "1"),
        ("head_size", "64"),
        ("page_size", "1"),
        ("kv_len", "9"),
        ("num_tokens", "9"),
    ],
    &[("batch_size", "3"), ("num_qo_heads", "2"), ("num_kv_heads", "2"), ("head_size", "64"), ("kv_len", "1"), ("num_tokens", "1")],
    &[
        ("batch_size", "2"),
        ("num_qo_heads", "12"),
        ("num_kv_heads", "1"),
        ("head_size", "256"),
        ("page_size", "4"),
        ("kv_len", "9"),
        ("num_tokens", "3"),
    ],
    &[
        ("batch_size", "3"),
        ("num_qo_heads", "6"),
        ("num_kv_heads", "2"),
        ("head_size", "64"),
        ("page_size", "16"),
        ("kv_len", "37"),
        ("num_tokens", "11"),
        ("window_left", "5"),
    ],
];

#[test]
fn prefill_matches_cpu() {
    let Some(b) = gpu() else { return };
    let other = other_path(b);
    for dt in ["f32", "f16"] {
        for s in PREFILL {
            let mut f = s.to_vec();
            f.push(("dtype", dt));
            let c = case(OpKind::BatchPrefillWithPagedKvCache, &f);
            let what = format!("prefill {f:?}");
            assert!(check(b, &what, &c));
            if let (Some(reduce), "f32") = (other, dt) {
                check_tuned(b, &what, &c, AttnTuning { reduce, ..Default::default() });
            }
        }
    }
}

/// Decode shapes, and whether to force split counts on them: MHA with 7 heads at head 64
/// and window + soft cap at head 256 (the window shorter than the context; the suite runs
/// both with the default single split), one-key sequences on pages of 1, 12 query heads per
/// KV head (two head chunks, the second partial), and a long context that the default
/// rule splits.
const DECODE: [(&[(&str, &str)], bool); 5] = [
    (
        &[("batch_size", "3"), ("num_qo_heads", "7"), ("num_kv_heads", "7"), ("head_size", "64"), ("page_size", "16"), ("kv_len", "33")],
        true,
    ),
    (
        &[
            ("batch_size", "2"),
            ("num_qo_heads", "4"),
            ("num_kv_heads", "1"),
            ("head_size", "256"),
            ("page_size", "16"),
            ("kv_len", "50"),
            ("window_left", "16"),
            ("logits_soft_cap", "30"),
        ],
        true,
    ),
    (&[("batch_size", "3"), ("num_qo_heads", "4"), ("num_kv_heads", "2"), ("head_size", "64"), ("page_size", "1"), ("kv_len", "1")], true),
    (
        &[("batch_size", "2"), ("num_qo_heads", "12"), ("num_kv_heads", "1"), ("head_size", "64"), ("page_size", "8"), ("kv_len", "45")],
        true,
    ),
    (
        &[("batch_size", "1"), ("num_qo_heads", "8"), ("num_kv_heads", "2"), ("head_size", "64"), ("page_size", "16"), ("kv_len", "2500")],
        false,
    ),
];

#[test]
fn decode_matches_cpu_with_any_split_count() {
    let Some(b) = gpu() else { return };
    let other = other_path(b);
    for dt in ["f32", "f16"] {
        for (i, &(s, force)) in DECODE.iter().enumerate() {
            let mut f = s.to_vec();
            f.push(("dtype", dt));
            let c = case(OpKind::BatchDecodeWithPagedKvCache, &f);
            let what = format!("decode {f:?}");
            // The default rule gives contexts under 256 keys one split (the direct output).
            if i > 1 || dt == "f32" {
                assert!(check(b, &what, &c));
            }
            if dt != "f32" {
                continue;
            }
            // Uneven chunks, and more splits than tiles (with the window most are empty).
            if force {
                for splits in [3, 40] {
                    check_tuned(b, &what, &c, AttnTuning { splits: Some(splits), ..Default::default() });
                }
            }
            if let Some(reduce) = other {
                check_tuned(b, &what, &c, AttnTuning { splits: Some(3), reduce });
            }
        }
    }
}

/// A sequence with no query rows in the middle of a batch: the other rows are unchanged.
#[test]
fn prefill_with_an_empty_sequence() {
    let Some(b) = gpu() else { return };
    let f = [("batch_size", "3"), ("num_qo_heads", "4"), ("num_kv_heads", "2"), ("head_size", "32"), ("kv_len", "21"), ("num_tokens", "5")];
    let c = case(OpKind::BatchPrefillWithPagedKvCache, &f);
    let Op::BatchPrefillWithPagedKvCache(p) = &c.op else { unreachable!() };
    let qo = c.inputs["qo_indptr"].to_i32().unwrap();
    let (s1, e1) = (qo[1] as usize, qo[2] as usize);
    assert!(e1 > s1);
    let keep = |t: &Tensor, row: usize| -> Tensor {
        let rb = t.data.len() / t.shape[0];
        let mut data = t.data[..s1 * rb].to_vec();
        data.extend_from_slice(&t.data[e1 * rb..]);
        let mut shape = t.shape.clone();
        shape[0] = t.shape[0] - (e1 - s1);
        assert_eq!(rb, row * t.dtype.type_size());
        Tensor::from_bytes(t.dtype, shape, data).unwrap()
    };
    let mut p2 = p.clone();
    p2.num_tokens -= e1 - s1;
    let mut inputs = c.inputs.clone();
    inputs.insert("q".into(), keep(&c.inputs["q"], p.num_qo_heads * p.head_size));
    let qo2: Vec<i32> = qo.iter().map(|&x| if x as usize >= e1 { x - (e1 - s1) as i32 } else { x }).collect();
    assert_eq!(qo2[1], qo2[2]);
    inputs.insert("qo_indptr".into(), Tensor::from_i32(vec![qo2.len()], &qo2));
    let got = b.run(&Op::BatchPrefillWithPagedKvCache(p2), &inputs).unwrap();
    let want_out = keep(&c.outputs["output"], p.num_qo_heads * p.head_size);
    let want_lse = keep(&c.outputs["lse"], p.num_qo_heads);
    for (name, want) in [("output", want_out), ("lse", want_lse)] {
        let v = compare(&c.tolerances[name], &want, &got[name]);
        assert!(v.pass, "{name}: {}", v.detail);
    }
}

#[test]
fn kv_quantization_matches_cpu() {
    let Some(b) = gpu() else { return };
    for dt in ["f32", "f16"] {
        for bits in ["4", "8"] {
            let q = [
                &[("num_kv_heads", "8"), ("head_size", "128"), ("max_seq", "64"), ("group_size", "32"), ("position", "7")][..],
                &[("num_kv_heads", "3"), ("head_size", "64"), ("max_seq", "5"), ("group_size", "16"), ("position", "4")][..],
                &[("num_kv_heads", "1"), ("head_size", "8"), ("max_seq", "1"), ("group_size", "8"), ("position", "0")][..],
            ];
            for s in q {
                let mut f = s.to_vec();
                f.extend([("bits", bits), ("dtype", dt)]);
                assert!(check(b, &format!("quantize_kv {f:?}"), &case(OpKind::QuantizeKv, &f)));
            }
            let dq = [
                &[("num_kv_heads", "8"), ("head_size", "128"), ("max_seq", "64"), ("group_size", "32"), ("n_positions", "16")][..],
                &[("num_kv_heads", "3"), ("head_size", "64"), ("max_seq", "9"), ("group_size", "16"), ("start", "3"), ("n_positions", "5")]
                    [..],
                &[("num_kv_heads", "2"), ("head_size", "8"), ("max_seq", "3"), ("group_size", "8"), ("start", "2"), ("n_positions", "1")][..],
            ];
            for s in dq {
                let mut f = s.to_vec();
                f.extend([("bits", bits), ("dtype", dt)]);
                assert!(check(b, &format!("dequantize_kv {f:?}"), &case(OpKind::DequantizeKv, &f)));
            }
        }
    }
}

/// Float compute kernels in bf16 where the device has no bf16: `Unsupported`, not a wrong answer.
#[test]
fn bf16_compute_needs_device_support() {
    let Some(b) = gpu() else { return };
    let c = case(OpKind::BatchDecodeWithPagedKvCache, &[("dtype", "bf16")]);
    let ran = check(b, "decode bf16", &c);
    assert_eq!(ran, b.device().has_float(DType::BF16));
}

fn err_of(b: &WgpuBackend, op: &Op, inputs: &Tensors) -> String {
    match b.run(op, inputs) {
        Ok(_) => panic!("{}: expected an error", op.name()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_page_tables_and_rows_are_errors() {
    let Some(b) = gpu() else { return };
    let flags =
        [("batch_size", "2"), ("num_qo_heads", "2"), ("num_kv_heads", "1"), ("head_size", "8"), ("page_size", "4"), ("kv_len", "8")];
    let dec = case(OpKind::BatchDecodeWithPagedKvCache, &flags);
    let mut pre_flags = flags.to_vec();
    pre_flags.push(("num_tokens", "2"));
    let pre = case(OpKind::BatchPrefillWithPagedKvCache, &pre_flags);
    let app = case(
        OpKind::AppendPagedKvCache,
        &[("batch_size", "2"), ("num_kv_heads", "1"), ("head_size", "8"), ("page_size", "4"), ("kv_len", "8")],
    );
    let edits: [(&str, fn(&mut Vec<i32>, &mut Vec<i32>, &mut Vec<i32>), &str); 6] = [
        ("indptr[0]", |p, _, _| p[0] = 1, "kv_indptr[0] = 1 must be 0"),
        (
            "decreasing",
            |p, _, _| {
                p[1] = p[2];
                p[2] -= 1;
            },
            "kv_indptr decreases",
        ),
        ("no page", |p, _, _| p[1] = 0, "sequence 0 has no page"),
        ("page id", |_, i, _| i[0] = 1000, "kv_indices[0] = 1000 is outside"),
        ("negative id", |_, i, _| i[1] = -1, "kv_indices[1] = -1 is outside"),
        ("last len", |_, _, l| l[1] = 5, "kv_last_page_len[1] = 5 is outside 1..=4"),
    ];
    for c in [&dec, &pre, &app] {
        for (what, edit, msg) in &edits {
            let mut t = c.inputs.clone();
            let (mut p, mut i, mut l) =
                (t["kv_indptr"].to_i32().unwrap(), t["kv_indices"].to_i32().unwrap(), t["kv_last_page_len"].to_i32().unwrap());
            edit(&mut p, &mut i, &mut l);
            t.insert("kv_indptr".into(), Tensor::from_i32(vec![p.len()], &p));
            t.insert("kv_indices".into(), Tensor::from_i32(vec![i.len()], &i));
            t.insert("kv_last_page_len".into(), Tensor::from_i32(vec![l.len()], &l));
            let e = err_of(b, &c.op, &t);
            assert!(e.contains(msg), "{} {what}: {e}", c.op.name());
        }
    }

    // Appended rows: out-of-range sequence or position, and two rows on one slot.
    let pos = app.inputs["positions"].to_i32().unwrap();
    let bi = app.inputs["batch_indices"].to_i32().unwrap();
    let n = pos.len();
    let with = |bi: &[i32], pos: &[i32]| {
        let mut t = app.inputs.clone();
        t.insert("batch_indices".into(), Tensor::from_i32(vec![n], bi));
        t.insert("positions".into(), Tensor::from_i32(vec![n], pos));
        err_of(b, &app.op, &t)
    };
    let mut bad = bi.clone();
    bad[0] = 2;
    assert!(with(&bad, &pos).contains("batch_indices[0] = 2 is outside 0..2 sequences"));
    let mut bad = pos.clone();
    bad[0] = -1;
    assert!(with(&bi, &bad).contains("positions[0] = -1 is outside"));
    let (mut b2, mut p2) = (bi.clone(), pos.clone());
    b2[n - 1] = b2[0];
    p2[n - 1] = p2[0];
    assert!(with(&b2, &p2).contains(&format!("rows 0 and {} both write sequence {} position {}", n - 1, bi[0], pos[0])));

    // qo_indptr: causal with more queries than keys, and not ending at num_tokens.
    let Op::BatchPrefillWithPagedKvCache(p) = &pre.op else { unreachable!() };
    let mut t = pre.inputs.clone();
    let kv0 = (t["kv_indptr"].to_i32().unwrap()[1] - 1) * 4 + t["kv_last_page_len"].to_i32().unwrap()[0];
    let total = p.num_tokens as i32;
    let mut p3 = p.clone();
    p3.num_tokens = (kv0 + 1 + (total - 2)) as usize;
    let q = Tensor::from_f32(DType::F32, vec![p3.num_tokens, 2, 8], &vec![0.5; p3.num_tokens * 16]);
    t.insert("q".into(), q);
    t.insert("qo_indptr".into(), Tensor::from_i32(vec![3], &[0, kv0 + 1, p3.num_tokens as i32]));
    let e = err_of(b, &Op::BatchPrefillWithPagedKvCache(p3), &t);
    assert!(e.contains(&format!("causal sequence 0 has {} queries but only {kv0} keys", kv0 + 1)), "{e}");
    let mut t = pre.inputs.clone();
    t.insert("qo_indptr".into(), Tensor::from_i32(vec![3], &[0, 1, 1]));
    assert!(err_of(b, &pre.op, &t).contains(&format!("qo_indptr[2] = 1 must equal num_tokens {total}")));

    // quantize_kv: non-finite source values.
    let qc =
        case(OpKind::QuantizeKv, &[("num_kv_heads", "2"), ("head_size", "8"), ("max_seq", "2"), ("group_size", "8"), ("position", "1")]);
    let mut t = qc.inputs.clone();
    let mut src = t["src"].to_f32().unwrap();
    src[9] = f32::NAN;
    t.insert("src".into(), Tensor::from_f32(DType::F32, vec![2, 8], &src));
    assert!(err_of(b, &qc.op, &t).contains("src[1][1] = NaN is not finite"));
}

/// The benchmark entry point builds valid inputs and runs (a smoke test; speed is measured
/// by benchmarks, not here).
#[test]
fn attention_benchmark_runs() {
    let Some(b) = gpu() else { return };
    let mut shape = PagedAttnShape {
        batch: 2,
        num_qo_heads: 4,
        num_kv_heads: 2,
        head_size: 64,
        page_size: 16,
        kv_len: 300,
        qo_len: 0,
        causal: true,
        dtype: DType::F32,
    };
    for qo_len in [0, 20] {
        shape.qo_len = qo_len;
        let t = time_paged_attention(b, &shape, AttnTuning::default(), 2).unwrap();
        assert!(t.mean_s > 0.0 && t.iters == 2, "{t:?}");
    }
    shape.qo_len = 400;
    assert!(time_paged_attention(b, &shape, AttnTuning::default(), 1).is_err(), "causal qo_len > kv_len is refused");
}
