//! GPU kernels against the CPU reference, on the default wgpu adapter (lavapipe in CI).
//!
//! Cases come from the golden generator (inputs with NaN, ±Inf, ties; outputs from the
//! CPU reference) and are compared with the protocol's tolerances. Without an adapter
//! the tests print why and pass, unless INGOT_REQUIRE_GPU=1 (set by scripts/test.sh,
//! since CI installs lavapipe), where a missing adapter is a failure.
#![cfg(feature = "wgpu")]

use ingot_core::{Backend, DType, Op, OpKind, Tensor, Tensors};
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

/// Generate one case, run it on the GPU when supported, and compare every output.
/// Returns false when the device does not support the case (e.g. bf16 on lavapipe).
fn check(b: &WgpuBackend, kind: OpKind, flags: &[(&str, &str)]) -> bool {
    let flags = Flags::new(flags.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
    let case = generate(kind, &flags, 7, "gpu_unit").unwrap();
    if !b.supports(&case.op) {
        assert!(
            matches!(b.run(&case.op, &case.inputs), Err(ingot_core::Error::Unsupported { .. })),
            "{} {}: unsupported cases must say so",
            kind.name(),
            case.op.dtype()
        );
        return false;
    }
    let got = b.run(&case.op, &case.inputs).unwrap_or_else(|e| panic!("{} failed: {e}", kind.name()));
    assert_eq!(got.len(), case.outputs.len(), "{}: every output is returned", kind.name());
    for (name, want) in &case.outputs {
        let v = compare(&case.tolerances[name], want, &got[name]);
        assert!(v.pass, "{} {} output {name}: {}", kind.name(), case.op.dtype(), v.detail);
    }
    true
}

#[test]
fn elementwise_match_cpu() {
    let Some(b) = gpu() else { return };
    for dt in ["f32", "f16"] {
        for kind in [OpKind::Silu, OpKind::Gelu, OpKind::GeluTanh, OpKind::Relu, OpKind::Sigmoid] {
            assert!(check(b, kind, &[("num_elements", "1000"), ("dtype", dt)]));
        }
        assert!(check(b, OpKind::SiluAndMul, &[("num_tokens", "3"), ("intermediate_size", "77"), ("dtype", dt)]));
        assert!(check(b, OpKind::AddResidual, &[("num_tokens", "3"), ("hidden_size", "65"), ("dtype", dt)]));
    }
}

#[test]
fn row_ops_match_cpu() {
    let Some(b) = gpu() else { return };
    for dt in ["f32", "f16"] {
        assert!(check(b, OpKind::RmsNorm, &[("num_tokens", "4"), ("hidden_size", "1000"), ("gemma", "true"), ("dtype", dt)]));
        assert!(check(b, OpKind::FusedAddRmsNorm, &[("num_tokens", "2"), ("hidden_size", "257"), ("dtype", dt)]));
        assert!(check(b, OpKind::LayerNorm, &[("num_tokens", "2"), ("hidden_size", "300"), ("dtype", dt)]));
        assert!(check(b, OpKind::Softmax, &[("num_tokens", "2"), ("vocab_size", "3001"), ("temperature", "0.5"), ("dtype", dt)]));
    }
}

#[test]
fn bit_exact_ops_run_in_every_dtype() {
    let Some(b) = gpu() else { return };
    for from in ["f32", "f16", "bf16"] {
        for to in ["f32", "f16", "bf16"] {
            assert!(check(b, OpKind::Cast, &[("num_elements", "333"), ("input_dtype", from), ("output_dtype", to)]));
        }
        assert!(check(b, OpKind::EmbeddingLookup, &[("num_tokens", "5"), ("hidden_size", "33"), ("vocab_size", "9"), ("dtype", from)]));
    }
}

#[test]
fn rope_matches_cpu() {
    let Some(b) = gpu() else { return };
    for interleave in ["false", "true"] {
        assert!(check(
            b,
            OpKind::Rope,
            &[("num_tokens", "3"), ("num_heads", "3"), ("num_kv_heads", "1"), ("head_size", "64"), ("interleave", interleave)]
        ));
    }
}

#[test]
fn bad_ids_are_errors() {
    let Some(b) = gpu() else { return };
    let p = ingot_core::EmbeddingParams { num_tokens: 2, hidden_size: 4, vocab_size: 3, dtype: DType::F32 };
    let mut t = Tensors::new();
    t.insert("table".into(), Tensor::from_f32(DType::F32, vec![3, 4], &[0.0; 12]));
    t.insert("ids".into(), Tensor::from_i32(vec![2], &[1, 3]));
    let e = b.run(&Op::EmbeddingLookup(p), &t).unwrap_err().to_string();
    assert!(e.contains("ids[1] = 3") && e.contains("0..3"), "{e}");
}

#[test]
fn ops_chain_on_the_device() {
    // rms_norm then silu with the intermediate left on the device (a reshape is a new
    // shape over the same buffer), against the same chain on the CPU reference.
    let Some(b) = gpu() else { return };
    let (t, h) = (3, 70);
    let x: Vec<f32> = (0..t * h).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
    let w: Vec<f32> = (0..h).map(|i| 0.5 + (i % 7) as f32 / 10.0).collect();
    let norm = Op::RmsNorm(ingot_core::RmsNormParams { num_tokens: t, hidden_size: h, eps: 1e-6, gemma: false, dtype: DType::F32 });
    let silu = Op::Silu(ingot_core::UnaryParams { num_elements: t * h, dtype: DType::F32 });
    let mut host = Tensors::new();
    host.insert("input".into(), Tensor::from_f32(DType::F32, vec![t, h], &x));
    host.insert("weight".into(), Tensor::from_f32(DType::F32, vec![h], &w));

    let d = b.device();
    let dev: ingot_gpu::GpuTensors = host.iter().map(|(k, v)| (k.clone(), d.to_device(v))).collect();
    let normed = b.run_device(&norm, &dev).unwrap();
    let mut flat = normed["output"].clone();
    flat.shape = vec![t * h];
    let out = b.run_device(&silu, &ingot_gpu::GpuTensors::from([("input".to_string(), flat)])).unwrap();
    let got = d.to_host("silu", &out["output"]).unwrap().to_f32().unwrap();

    let cpu = ingot_cpu::CpuBackend;
    let mid = cpu.run(&norm, &host).unwrap()["output"].to_f32().unwrap();
    let mid = Tensors::from([("input".to_string(), Tensor::from_f32(DType::F32, vec![t * h], &mid))]);
    let want = cpu.run(&silu, &mid).unwrap()["output"].to_f32().unwrap();
    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
        assert!((g - e).abs() <= 1e-5 * e.abs().max(1.0), "element {i}: device chain {g}, CPU chain {e}");
    }
    // A mismatched shape is an error, not a silent reinterpretation.
    let e = b.run_device(&silu, &ingot_gpu::GpuTensors::from([("input".to_string(), normed["output"].clone())])).unwrap_err();
    assert!(e.to_string().contains("shape"), "{e}");
}
