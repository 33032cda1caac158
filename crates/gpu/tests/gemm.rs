//! Dense `gemm` against the CPU reference on the default wgpu adapter (lavapipe in CI:
//! the tiled kernel; the cmma kernel needs a device that reports cmma, see
//! `gemm::gemm_kernel_name`). Every transposition, with and without bias, on shapes that
//! are not multiples of the 64×64 tile or the 16-deep k slice, one tile and many.
//! Compared with the protocol's tolerances (nmse by dtype). Without an adapter the tests
//! print why and pass, unless INGOT_REQUIRE_GPU=1.
#![cfg(feature = "wgpu")]

use ingot_core::{Backend, DType, OpKind};
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

/// Generate a gemm case, run it and compare; false when the device lacks the dtype (the
/// run must then say Unsupported).
fn check(b: &WgpuBackend, flags: &[(&str, &str)]) -> bool {
    let flags = Flags::new(flags.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
    let case = generate(OpKind::Gemm, &flags, 5, "gpu_gemm").unwrap();
    if !b.supports(&case.op) {
        assert!(matches!(b.run(&case.op, &case.inputs), Err(ingot_core::Error::Unsupported { .. })), "{:?}", flags.raw());
        return false;
    }
    let got = b.run(&case.op, &case.inputs).unwrap_or_else(|e| panic!("gemm {:?} failed: {e}", flags.raw()));
    let v = compare(&case.tolerances["c"], &case.outputs["c"], &got["c"]);
    assert!(v.pass, "gemm {:?}: {}", flags.raw(), v.detail);
    true
}

#[test]
fn every_layout_and_awkward_shapes() {
    let Some(b) = gpu() else { return };
    let kernel = |d| ingot_gpu::gemm::gemm_kernel_name(b.device(), 64, d);
    eprintln!("gemm kernels on this device: f32 {}, f16 {}, bf16 {}", kernel(DType::F32), kernel(DType::F16), kernel(DType::BF16));
    for dt in ["f32", "f16", "bf16"] {
        let mut ran = false;
        for (m, n, k) in [("1", "1", "1"), ("31", "33", "32"), ("65", "130", "17"), ("3", "200", "100")] {
            for ta in ["false", "true"] {
                for tb in ["false", "true"] {
                    for bias in ["false", "true"] {
                        let f = [("m", m), ("n", n), ("k", k), ("transa", ta), ("transb", tb), ("use_bias", bias), ("dtype", dt)];
                        ran |= check(b, &f);
                    }
                }
            }
        }
        if ran {
            // Shapes of real layers: x·Wᵀ for a few tokens and for one.
            assert!(check(b, &[("m", "4"), ("n", "1536"), ("k", "576"), ("transb", "true"), ("dtype", dt)]));
            assert!(check(b, &[("m", "1"), ("n", "896"), ("k", "896"), ("transb", "true"), ("dtype", dt)]));
            assert!(check(b, &[("m", "128"), ("n", "192"), ("k", "256"), ("use_bias", "true"), ("dtype", dt)]));
        } else {
            eprintln!("gemm {dt}: the device lacks the dtype; checked that it says Unsupported");
        }
    }
}
