//! GGUF weight kernels (`dequantize`, block-table `embedding_lookup`, `quantized_matmul`)
//! against the CPU reference, on the default wgpu adapter (lavapipe in CI), for every weight
//! format and awkward shapes: odd block counts (blocks that start mid-word), one row, 7 rows,
//! 65 rows (the tiled GEMM path), k of one super-block, n not a multiple of the tile.
//! Without an adapter the tests print why and pass, unless INGOT_REQUIRE_GPU=1.
#![cfg(feature = "wgpu")]

use ingot_core::{Backend, DType, DequantizeParams, Op, OpKind, Tensor, Tensors};
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

/// Generate one case, run it on the GPU, and compare every output with the protocol's
/// tolerance. Returns false (after checking the error says so) when the device does not
/// support the case.
fn check(b: &WgpuBackend, kind: OpKind, flags: &[(&str, String)]) -> bool {
    let flags = Flags::new(flags.iter().map(|(k, v)| (k.to_string(), v.clone()))).unwrap();
    let case = generate(kind, &flags, 11, "gpu_quant").unwrap();
    if !b.supports(&case.op) {
        assert!(
            matches!(b.run(&case.op, &case.inputs), Err(ingot_core::Error::Unsupported { .. })),
            "{} {:?}: unsupported cases must say so",
            kind.name(),
            flags.raw()
        );
        return false;
    }
    let got = b.run(&case.op, &case.inputs).unwrap_or_else(|e| panic!("{} {:?} failed: {e}", kind.name(), flags.raw()));
    assert_eq!(got.len(), case.outputs.len());
    for (name, want) in &case.outputs {
        let v = compare(&case.tolerances[name], want, &got[name]);
        assert!(v.pass, "{} {:?} output {name}: {}", kind.name(), flags.raw(), v.detail);
    }
    true
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

/// A row length of `blocks` blocks of `w` (elements).
fn cols(w: DType, blocks: usize) -> usize {
    w.block_size() * blocks
}

#[test]
fn dequantize_every_format() {
    let Some(b) = gpu() else { return };
    for w in DType::WEIGHTS {
        // Three blocks per row and three rows: blocks of the 2-byte-aligned formats
        // alternate between word-aligned and mid-word starts.
        let c = if w.is_float() { 33 } else { cols(w, 3) };
        assert!(check(b, OpKind::Dequantize, &[("rows", s(3)), ("cols", s(c)), ("dtype", s(w.name()))]), "{w}");
    }
}

#[test]
fn block_embedding_every_format() {
    let Some(b) = gpu() else { return };
    for w in DType::QUANTIZED {
        // The generator looks up the last and the first row of the table.
        let f = [("num_tokens", s(5)), ("hidden_size", s(cols(w, 3))), ("vocab_size", s(7)), ("dtype", s(w.name()))];
        assert!(check(b, OpKind::EmbeddingLookup, &f), "{w}");
    }
    let p = ingot_core::EmbeddingParams { num_tokens: 2, hidden_size: 32, vocab_size: 3, dtype: DType::Q8_0 };
    let mut t = Tensors::new();
    t.insert("table".into(), Tensor::from_bytes(DType::Q8_0, vec![3, 32], vec![0; 3 * 34]).unwrap());
    t.insert("ids".into(), Tensor::from_i32(vec![2], &[0, -1]));
    let e = b.run(&Op::EmbeddingLookup(p), &t).unwrap_err().to_string();
    assert!(e.contains("ids[1] = -1"), "{e}");
}

/// A deterministic byte stream (xorshift64*).
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

#[test]
fn random_bytes_decode_as_the_cpu() {
    // Any bytes are a valid block: random scales include subnormal, huge, Inf and NaN f16
    // values, and every bit of every level field is exercised. The GPU must give the CPU's
    // values: the same bits, NaN for NaN, or (where a device fuses mul·q − off into one FMA)
    // a difference within a few f32 roundings of the block's largest magnitude.
    let Some(b) = gpu() else { return };
    for (i, w) in DType::QUANTIZED.into_iter().enumerate() {
        let (rows, c) = (3, cols(w, 3));
        let bytes = random_bytes(w.bytes_for(rows * c).unwrap(), 0x9e37_79b9 + i as u64);
        let op = Op::Dequantize(DequantizeParams { rows, cols: c, dtype: w });
        let mut t = Tensors::new();
        t.insert("input".into(), Tensor::from_bytes(w, vec![rows, c], bytes).unwrap());
        let want = ingot_cpu::CpuBackend.run(&op, &t).unwrap()["output"].to_f32().unwrap();
        let got = b.run(&op, &t).unwrap()["output"].to_f32().unwrap();
        let bs = w.block_size();
        for (blk, (wb, gb)) in want.chunks(bs).zip(got.chunks(bs)).enumerate() {
            let scale = wb.iter().filter(|v| v.is_finite()).fold(0f32, |a, v| a.max(v.abs()));
            for (e, (&x, &y)) in wb.iter().zip(gb).enumerate() {
                let same = x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()) || (x - y).abs() <= 4.0 * f32::EPSILON * scale;
                assert!(same, "{w} block {blk} element {e}: cpu {x:e} gpu {y:e}");
            }
        }
    }
}

#[test]
fn gemv_and_gemm_every_format() {
    let Some(b) = gpu() else { return };
    for w in DType::WEIGHTS {
        // k: one super-block for the K-quants, 3 blocks (a partial 64-column GEMM slice) for
        // the 32-element formats, 33 (rows that start mid-word: element-wise path) and 64
        // (16-byte vectors) for float weights. n = 70: a full and a partial GEMM tile.
        let ks: Vec<usize> = if w.is_float() {
            vec![33, 64]
        } else if w.block_size() == 256 {
            vec![256]
        } else {
            vec![96]
        };
        for k in ks {
            for m in [1, 7, 65] {
                let f = [("m", s(m)), ("n", s(70)), ("k", s(k)), ("weight_dtype", s(w.name())), ("dtype", s("f32"))];
                assert!(check(b, OpKind::QuantizedMatmul, &f), "{w} m={m} k={k}");
            }
        }
    }
}

#[test]
fn matmul_awkward_shapes_and_f16_activations() {
    let Some(b) = gpu() else { return };
    // Two super-blocks per row; m = 3 (GEMV) and 9 (just past it); f16 activations; n = 1.
    for (w, m, n, k, dt) in [
        (DType::Q4_K, 3, 17, 512, "f16"),
        // Long rows: the GEMV kernels' unrolled steps and their tails (Q4_K/Q5_K take two
        // super-blocks per step and thread; Q8_0 rows of many parts per thread).
        (DType::Q4_K, 1, 9, 1792, "f32"),
        (DType::Q5_K, 2, 9, 1280, "f16"),
        (DType::Q8_0, 1, 9, 1056, "f32"),
        (DType::Q8_0, 3, 9, 2080, "f16"),
        (DType::Q6_K, 9, 65, 512, "f16"),
        (DType::Q8_0, 2, 1, 64, "f16"),
        (DType::Q5_0, 9, 3, 32, "f32"),
        (DType::Q3_K, 1, 130, 768, "f32"),
        (DType::BF16, 4, 9, 40, "f16"),
        (DType::F16, 33, 5, 7, "f32"),
    ] {
        let f = [("m", s(m)), ("n", s(n)), ("k", s(k)), ("weight_dtype", s(w.name())), ("dtype", s(dt))];
        assert!(check(b, OpKind::QuantizedMatmul, &f), "{w} m={m} n={n} k={k} {dt}");
    }
}
