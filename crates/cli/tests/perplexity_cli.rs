//! `ingot perplexity` on SmolLM2 against llama.cpp's perplexity of the same text and
//! settings (tests/data/perplexity.txt, --ctx 128, every whole chunk), computed by
//! `scripts/perplexity_llama_cpp.py` (llama-cpp-python 0.3.36 on the CPU, the same
//! chunking and scoring), and bad inputs.

mod common;
use common::{ingot, smollm2, text};

/// llama.cpp's perplexity of tests/data/perplexity.txt with SmolLM2-135M-Instruct Q4_1,
/// --ctx 128: `python3 scripts/perplexity_llama_cpp.py --model SmolLM2-135M-Instruct.Q4_1.gguf
/// --file crates/cli/tests/data/perplexity.txt --ctx 128` (LLAMA_CPP_CHUNKS chunks).
const LLAMA_CPP_PPL: f64 = 17.806197541373727;
const LLAMA_CPP_CHUNKS: u64 = 4;

fn data() -> String {
    format!("{}/tests/data/perplexity.txt", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn agrees_with_llama_cpp_within_one_percent() {
    let Some(model) = smollm2() else { return };
    let o = ingot(&["perplexity", "--model", model.to_str().unwrap(), "-f", &data(), "--ctx", "128", "--backend", "cpu", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(v["chunks"].as_u64(), Some(LLAMA_CPP_CHUNKS), "{v}");
    assert_eq!(v["scored_tokens"].as_u64(), Some(LLAMA_CPP_CHUNKS * 63), "{v}");
    let ppl = v["perplexity"].as_f64().unwrap();
    let rel = (ppl - LLAMA_CPP_PPL).abs() / LLAMA_CPP_PPL;
    eprintln!("perplexity {ppl:.4}, llama.cpp {LLAMA_CPP_PPL:.4}: {:.3}% apart", 100.0 * rel);
    assert!(rel < 0.01, "perplexity {ppl} vs llama.cpp {LLAMA_CPP_PPL}: {:.2}% apart", 100.0 * rel);
    assert!(v["perplexity_stderr"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad_utf8 = dir.path().join("latin1.txt");
    std::fs::write(&bad_utf8, b"caf\xe9 au lait").unwrap();
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Too short to score.").unwrap();
    let missing = dir.path().join("missing.txt");
    // Checked before a model is needed.
    for (args, want) in [
        (vec!["--ctx", "4"], "--ctx must be at least 8"),
        (vec!["--ctx", "-1"], "must be at least 0"),
        (vec!["--chunks", "0"], "--chunks must be at least 1"),
    ] {
        let mut a = vec!["perplexity", "-m", "/nonexistent.gguf", "-f", short.to_str().unwrap()];
        a.extend(args);
        let o = ingot(&a);
        assert!(!o.status.success() && text(&o).contains(want), "{a:?}: {}", text(&o));
        assert!(!text(&o).contains("panicked"), "{}", text(&o));
    }
    let o = ingot(&["perplexity", "-m", "/nonexistent.gguf", "-f", missing.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("missing.txt"), "{}", text(&o));
    let o = ingot(&["perplexity", "-m", "/nonexistent.gguf", "-f", bad_utf8.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("is not UTF-8 text (invalid byte at offset 3)"), "{}", text(&o));
    let Some(model) = smollm2() else { return };
    let m = model.to_str().unwrap();
    let o = ingot(&["perplexity", "-m", m, "-f", short.to_str().unwrap(), "--backend", "cpu"]);
    assert!(!o.status.success() && text(&o).contains("needs at least 1024 (two chunks)"), "{}", text(&o));
    let o = ingot(&["perplexity", "-m", m, "-f", &data(), "--ctx", "100000", "--backend", "cpu"]);
    assert!(!o.status.success() && text(&o).contains("more than the model's context"), "{}", text(&o));
    for o in [&o] {
        assert!(!text(o).contains("panicked"), "{}", text(o));
    }
}
