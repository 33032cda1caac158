//! End-to-end tests of `ingot info`: a synthetic model from the GGUF writer (text and JSON),
//! bad files (garbage, missing, truncated, a directory) giving a one-line error and a
//! non-zero exit, and the real SmolLM2 file when present.

use ingot_gguf::{GgmlType, GgufWriter};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ingot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ingot")).args(args).output().expect("run ingot")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A two-layer llama-shaped model: 64 wide, 4 heads, 2 KV heads, three tokens.
fn synthetic(path: &Path) {
    let mut w = GgufWriter::new();
    w.set("general.architecture", "llama")
        .set("general.name", "tiny test model")
        .set("llama.block_count", 2u32)
        .set("llama.embedding_length", 64u32)
        .set("llama.attention.head_count", 4u32)
        .set("llama.attention.head_count_kv", 2u32)
        .set("llama.context_length", 128u32)
        .set("llama.rope.freq_base", 10000.0f32)
        .set("tokenizer.ggml.tokens", vec!["<s>", "a", "b"])
        .set("tokenizer.ggml.scores", vec![0.0f32; 100])
        .set("test.neg", -5i64);
    w.add_tensor("token_embd.weight", GgmlType::F32, &[64, 3], vec![0u8; 64 * 3 * 4]).unwrap();
    w.add_tensor("blk.0.attn_q.weight", GgmlType::Q4_0, &[64, 64], vec![0u8; 64 * 2 * 18]).unwrap();
    w.add_tensor("blk.0.odd.weight", GgmlType::IQ2_XXS, &[256], vec![0u8; 66]).unwrap();
    w.write_file(path).unwrap();
}

#[test]
fn text_summary_of_a_synthetic_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    synthetic(&path);
    let o = ingot(&["info", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "GGUF version    3 (alignment 32, 11 metadata keys, 3 tensors)",
        "architecture    llama",
        "name            tiny test model",
        "parameters      4544 (4544)",
        "layers          2",
        "embedding       64",
        "heads           4",
        "KV heads        2",
        "head size       16",
        "context         128",
        "vocabulary      3",
        "RoPE base       10000",
        "weights         3.06 KiB (3138 bytes)",
        "  Q4_0        1 tensor       2.25 KiB   73.4%",
        "  IQ2_XXS     1 tensor ",
        // 2 layers · 2 KV heads · (16 + 16) · 4 bytes (f32, as the engine stores K/V) = 512 B
        // per token, · 128 tokens
        "KV cache (f32)  512 B per token; 64.00 KiB for the full 128-token context",
        "(f16 and bf16, as llama.cpp stores it by default: 256 B per token)",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    // Sorted by bytes: Q4_0 (2304) before F32 (768) before IQ2_XXS (66).
    let pos = |s: &str| out.find(s).unwrap();
    assert!(pos("  Q4_0") < pos("  F32") && pos("  F32") < pos("  IQ2_XXS"), "{out}");
}

#[test]
fn json_summary_metadata_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    synthetic(&path);
    let o = ingot(&["info", path.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: Json = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["architecture"], "llama");
    assert_eq!(j["version"], 3);
    assert_eq!(j["parameters"], 4544);
    assert_eq!(j["layers"], 2);
    assert_eq!(j["heads"], 4);
    assert_eq!(j["kv_heads"], 2);
    assert_eq!(j["head_size"], 16);
    assert_eq!(j["vocab_size"], 3);
    assert_eq!(j["rope_freq_base"], 10000.0);
    assert_eq!(j["weights_bytes"], 3138);
    assert_eq!(j["kv_cache"]["dtype"], "f32");
    assert_eq!(j["kv_cache"]["bytes_per_token"], 512);
    assert_eq!(j["kv_cache"]["bytes_full_context"], 512 * 128);
    assert_eq!(j["kv_cache"]["bytes_per_token_by_dtype"], serde_json::json!({"f32": 512, "f16": 256, "bf16": 256}));
    assert_eq!(j["kv_cache"]["note"], Json::Null);
    let mix: Vec<&str> = j["quantization"].as_array().unwrap().iter().map(|q| q["type"].as_str().unwrap()).collect();
    assert_eq!(mix, ["Q4_0", "F32", "IQ2_XXS"]);

    let md = j["metadata"].as_array().unwrap();
    assert_eq!(md.len(), 11);
    assert_eq!(md[0], serde_json::json!({"key": "general.architecture", "type": "string", "value": "llama"}));
    let by_key = |k: &str| md.iter().find(|m| m["key"] == k).unwrap().clone();
    assert_eq!(by_key("test.neg"), serde_json::json!({"key": "test.neg", "type": "i64", "value": -5}));
    assert_eq!(by_key("tokenizer.ggml.tokens")["value"], serde_json::json!(["<s>", "a", "b"]));
    // A long array is summarized: its length and element type, not its elements.
    let scores = by_key("tokenizer.ggml.scores");
    assert_eq!(
        scores,
        serde_json::json!({"key": "tokenizer.ggml.scores", "type": "array", "element_type": "f32", "length": 100, "elided": true})
    );

    let t = &j["tensors"].as_array().unwrap()[1];
    assert_eq!(t["name"], "blk.0.attn_q.weight");
    assert_eq!(t["type"], "Q4_0");
    assert_eq!(t["shape"], serde_json::json!([64, 64]));
    assert_eq!(t["bytes"], 2304);
    assert_eq!(t["offset"], 768);
    assert_eq!(t["file_offset"].as_u64().unwrap(), j["data_offset"].as_u64().unwrap() + 768);

    // --full-arrays prints them all.
    let o = ingot(&["info", path.to_str().unwrap(), "--json", "--full-arrays"]);
    let j: Json = serde_json::from_str(&stdout(&o)).unwrap();
    let scores = j["metadata"].as_array().unwrap().iter().find(|m| m["key"] == "tokenizer.ggml.scores").unwrap().clone();
    assert_eq!(scores["value"].as_array().unwrap().len(), 100);
    // ...and only with --json.
    let o = ingot(&["info", path.to_str().unwrap(), "--full-arrays"]);
    assert!(!o.status.success());
}

/// Runs `info` on a bad file: non-zero exit, one line on stderr that names the file and
/// contains `reason`, no panic, nothing on stdout.
fn expect_error(path: &Path, reason: &str) {
    for extra in [&[][..], &["--json"][..]] {
        let mut args = vec!["info", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = ingot(&args);
        let err = stderr(&o);
        assert!(!o.status.success(), "{path:?} {extra:?} succeeded");
        assert_ne!(o.status.code(), Some(101), "panicked: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        assert!(err.starts_with(&format!("error: {}", path.display())), "{err}");
        assert!(err.contains(reason), "{err} lacks {reason:?}");
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn bad_files_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a model, just text\n").unwrap();
    expect_error(&garbage, "at byte 0: not a GGUF file");

    expect_error(&dir.path().join("missing.gguf"), "No such file");

    let good = dir.path().join("good.gguf");
    synthetic(&good);
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    for cut in [0, 3, 20, 100, bytes.len() / 2, bytes.len() - 100] {
        std::fs::write(&truncated, &bytes[..cut]).unwrap();
        let reason = match cut {
            0..=20 => "unexpected end of file",
            21..=300 => "cannot fit",
            _ => "lies past the end of the file",
        };
        expect_error(&truncated, reason);
    }

    let v1 = dir.path().join("v1.gguf");
    let mut b = bytes.clone();
    b[4] = 1;
    std::fs::write(&v1, b).unwrap();
    expect_error(&v1, "unsupported GGUF version 1");

    expect_error(dir.path(), "not a regular file");
}

fn models_dir() -> PathBuf {
    match std::env::var_os("INGOT_MODELS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ingot/models"),
    }
}

#[test]
fn real_smollm2_when_present() {
    let path = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.is_file() {
        let msg = format!("model {} is missing (run scripts/fetch_models.sh)", path.display());
        assert_ne!(std::env::var("INGOT_REQUIRE_MODELS").as_deref(), Ok("1"), "{msg}, and INGOT_REQUIRE_MODELS=1");
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let o = ingot(&["info", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "architecture    llama",
        "layers          30",
        "embedding       576",
        "KV heads        3",
        "head size       64",
        "vocabulary      49152",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    let o = ingot(&["info", path.to_str().unwrap(), "--json"]);
    let j: Json = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["tensors"].as_array().unwrap().len(), 272);
    assert_eq!(j["parameters"], 134515008u64);
    // 2 · 30 layers · 3 KV heads · 64 · 4 bytes (f32)
    assert_eq!(j["kv_cache"]["bytes_per_token"], 2 * 30 * 3 * 64 * 4);
    let tokens = j["metadata"].as_array().unwrap().iter().find(|m| m["key"] == "tokenizer.ggml.tokens").unwrap().clone();
    assert_eq!(tokens["length"], 49152);
    assert_eq!(tokens["elided"], true);
}
