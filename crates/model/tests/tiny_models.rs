//! Tiny random-weight models of the architectures that have no small real model here
//! (tests/data/tiny, made by scripts/make_tiny_models.py: F32 weights, a byte-level BPE
//! tokenizer), against two references stored beside them: llama.cpp's logits
//! (llama-cpp-python 0.3.36, F32 weights and KV cache, CPU) at every prompt position and
//! for greedy steps after it, and an independent float64 numpy forward pass at every
//! position. Checked on the CPU device and on the GPU backend (lavapipe in CI), over the
//! whole sequence at once and token by token.

use ingot_model::tokenizer::{Tokenizer, Vocab};
use ingot_model::{BackendKind, Logits, Model};
use serde_json::Value;
use std::path::PathBuf;

/// Largest |ours − exact| for any logit: the bound. F32 weights keep f32
/// activations on every path (no 8-bit activation blocks), so only the summation order
/// differs from exact math. Against llama.cpp the bound is widened by llama.cpp's own
/// distance from exact math at that position: its CPU GELU rounds input and output to f16
/// (a table lookup, GGML_GELU_FP16), which alone moves its logits by up to ~1e-3 here.
const TOL: f64 = 1e-3;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny").join(name)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn rows(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().expect("rows").iter().map(|r| r.as_array().expect("row").iter().map(|x| x.as_f64().expect("f64")).collect()).collect()
}

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "logit counts differ");
    a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - y).abs()).fold(0.0, f64::max)
}

/// The model on `kind`, or `None` (with the reason printed) when that backend has no
/// device here and it is not required.
fn load(path: &PathBuf, kind: BackendKind) -> Option<Model> {
    match Model::load_on(path, kind) {
        Ok(m) => Some(m),
        Err(e)
            if kind != BackendKind::Cpu
                && std::env::var("INGOT_REQUIRE_GPU").as_deref() != Ok("1")
                && e.to_string().contains("no device") =>
        {
            eprintln!("SKIP (GPU part): no GPU adapter ({e})");
            None
        }
        Err(e) => panic!("loading {} on {kind:?}: {e}", path.display()),
    }
}

/// Every case of `arch`'s reference on `kind`: the prompt's tokenization, logits at every
/// position of prompt + greedy tokens in one pass (against exact math, and against
/// llama.cpp at the prompt positions and greedy steps), the greedy choices, and the same
/// logits fed token by token.
fn check(arch: &str, kind: BackendKind) {
    let r: Value = serde_json::from_str(&std::fs::read_to_string(data(&format!("tiny-{arch}.json"))).expect("refs")).expect("json");
    let path = data(&format!("tiny-{arch}.gguf"));
    let Some(model) = load(&path, kind) else { return };
    let tok = Tokenizer::new(&Vocab::from_gguf(model.file()).unwrap()).unwrap();
    let vocab = model.config.vocab;
    let mut worst = (0f64, 0f64, 0f64, 0f64);
    for case in r["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let want_ids = ids(&case["ids"]);
        assert_eq!(tok.encode(prompt, true, false).unwrap(), want_ids, "{arch}: tokens of {prompt:?}");
        let greedy = ids(&case["greedy"]);
        let all: Vec<u32> = want_ids.iter().chain(&greedy).copied().collect();
        let exact = rows(&case["exact_logits"]);
        let lp = rows(&case["llama_cpp_prompt_logits"]);
        let ls = rows(&case["llama_cpp_step_logits"]);
        assert_eq!(exact.len(), all.len());

        let mut cache = model.new_cache().unwrap();
        let got = model.forward(&all, &mut cache, Logits::All, None).unwrap();
        assert_eq!(got.len(), all.len() * vocab);
        for (i, row) in got.chunks(vocab).enumerate() {
            let d = max_diff(row, &exact[i]);
            worst.0 = worst.0.max(d);
            assert!(d <= TOL, "{arch} on {kind:?}, {prompt:?} position {i}: max |ours − exact| = {d:.2e}");
            // llama.cpp: the prompt positions, then the logits after feeding each greedy token.
            let lc = if i < want_ids.len() { Some(&lp[i]) } else { ls.get(i - want_ids.len()) };
            if let Some(lc) = lc {
                // llama.cpp's own distance from exact math at this position (its f16 GELU
                // table alone reaches ~1e-3 here) widens the bound by as much.
                let own = lc.iter().zip(&exact[i]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                let d = max_diff(row, lc);
                worst.1 = worst.1.max(d);
                worst.3 = worst.3.max(own);
                assert!(
                    d <= TOL + own,
                    "{arch} on {kind:?}, {prompt:?} position {i}: max |ours − llama.cpp| = {d:.2e} (llama.cpp − exact: {own:.2e})"
                );
            }
            // Greedy: the next token is the argmax (where the reference's top two are apart).
            if i + 1 >= want_ids.len() && i + 1 < all.len() {
                let best = row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (j, &x)| if x > b.1 { (j, x) } else { b }).0;
                assert_eq!(best as u32, all[i + 1], "{arch} on {kind:?}, {prompt:?}: greedy step at position {i}");
            }
        }

        // Token by token through the cache.
        let mut cache = model.new_cache().unwrap();
        for (i, &t) in all.iter().enumerate() {
            let row = model.forward(&[t], &mut cache, Logits::Last, None).unwrap();
            let d = max_diff(&row, &exact[i]);
            worst.2 = worst.2.max(d);
            assert!(d <= TOL, "{arch} on {kind:?}, {prompt:?} token-by-token position {i}: max |ours − exact| = {d:.2e}");
        }
    }
    eprintln!(
        "{arch} on {}: worst |ours − exact| {:.2e} (one pass), {:.2e} (token by token); |ours − llama.cpp| {:.2e}, |llama.cpp − exact| {:.2e}",
        model.backend(),
        worst.0,
        worst.2,
        worst.1,
        worst.3
    );
}

#[test]
fn gpt2_on_cpu() {
    check("gpt2", BackendKind::Cpu);
}

#[cfg(feature = "gpu")]
#[test]
fn gpt2_on_gpu() {
    let kind: BackendKind = std::env::var("INGOT_TEST_GPU").unwrap_or_else(|_| "gpu".into()).parse().expect("INGOT_TEST_GPU");
    check("gpt2", kind);
}
