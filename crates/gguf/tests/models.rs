//! The real test models (scripts/fetch_models.sh puts them in `$INGOT_MODELS`, default
//! `~/.cache/ingot/models`): each opens, its known facts hold, and every tensor's bytes lie
//! inside the file. A missing model is reported loudly and skipped, unless
//! `INGOT_REQUIRE_MODELS=1`, where it fails the test.

use ingot_gguf::{GgmlType, GgufFile};
use std::path::PathBuf;

fn models_dir() -> PathBuf {
    match std::env::var_os("INGOT_MODELS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ingot/models"),
    }
}

/// The model, or `None` (after saying why) when it is absent and not required.
fn model(file: &str) -> Option<GgufFile> {
    let path = models_dir().join(file);
    if !path.is_file() {
        let msg = format!("model {} is missing (run scripts/fetch_models.sh)", path.display());
        if std::env::var("INGOT_REQUIRE_MODELS").as_deref() == Ok("1") {
            panic!("{msg}, and INGOT_REQUIRE_MODELS=1");
        }
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    Some(GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}")))
}

struct Facts {
    file: &'static str,
    arch: &'static str,
    layers: u32,
    embedding: u32,
    heads: u32,
    kv_heads: u32,
    vocab: usize,
    tensors: usize,
    types: &'static [GgmlType],
}

fn check(facts: &Facts) {
    let Some(f) = model(facts.file) else { return };
    let a = facts.arch;
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture().unwrap(), a);
    assert_eq!(f.get_u32(&format!("{a}.block_count")).unwrap(), facts.layers);
    assert_eq!(f.get_u32(&format!("{a}.embedding_length")).unwrap(), facts.embedding);
    assert_eq!(f.get_u32(&format!("{a}.attention.head_count")).unwrap(), facts.heads);
    assert_eq!(f.get_u32(&format!("{a}.attention.head_count_kv")).unwrap(), facts.kv_heads);
    assert_eq!(f.get_str_array("tokenizer.ggml.tokens").unwrap().len(), facts.vocab);
    assert_eq!(f.get_i32_array("tokenizer.ggml.token_type").unwrap().len(), facts.vocab);
    assert!(f.get_f32(&format!("{a}.rope.freq_base")).unwrap() > 0.0);
    assert_eq!(f.tensors().len(), facts.tensors);

    let size = f.file_size();
    let mut end = 0;
    for (t, data) in f.tensors_with_data() {
        assert!(t.file_offset >= f.data_offset() && t.file_offset + t.size <= size, "{}", t.name);
        assert_eq!(data.len() as u64, t.size, "{}", t.name);
        assert_eq!(Some(t.size), t.ggml_type.bytes_for(t.numel()), "{}", t.name);
        assert!(facts.types.contains(&t.ggml_type), "{}: {}", t.name, t.ggml_type);
        end = end.max(t.file_offset + t.size);
    }
    assert_eq!(f.tensors_with_data().count(), facts.tensors);
    // The data section is packed: the last tensor ends at the end of the file, less padding.
    assert!(size - end < f.alignment(), "{} bytes after the last tensor", size - end);
    // The embedding table is [embedding, vocab] in ggml order.
    let embd = f.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.dims, [facts.embedding as u64, facts.vocab as u64]);
    for l in 0..facts.layers {
        assert!(f.find_tensor(&format!("blk.{l}.attn_q.weight")).is_some(), "layer {l}");
    }
}

#[test]
fn smollm2_135m() {
    check(&Facts {
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        arch: "llama",
        layers: 30,
        embedding: 576,
        heads: 9,
        kv_heads: 3,
        vocab: 49152,
        tensors: 272,
        types: &[GgmlType::F32, GgmlType::Q4_1, GgmlType::Q8_0],
    });
}

#[test]
fn gemma3_270m() {
    check(&Facts {
        file: "gemma-3-270m-q4_k_m.gguf",
        arch: "gemma3",
        layers: 18,
        embedding: 640,
        heads: 4,
        kv_heads: 1,
        vocab: 262144,
        tensors: 236,
        types: &[GgmlType::F32, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::Q6_K],
    });
    if let Some(f) = model("gemma-3-270m-q4_k_m.gguf") {
        assert_eq!(f.get_u32("gemma3.attention.key_length").unwrap(), 256);
        assert_eq!(f.get_u32("gemma3.attention.sliding_window").unwrap(), 512);
        assert_eq!(f.get_f32_array("tokenizer.ggml.scores").unwrap().len(), 262144);
    }
}

#[test]
fn qwen2_5_coder_0_5b() {
    check(&Facts {
        file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        arch: "qwen2",
        layers: 24,
        embedding: 896,
        heads: 14,
        kv_heads: 2,
        vocab: 151936,
        tensors: 291,
        types: &[GgmlType::F32, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::Q6_K],
    });
    if let Some(f) = model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") {
        assert_eq!(f.get_str_array("tokenizer.ggml.merges").unwrap().len(), 151387);
        assert_eq!(f.get_u32("qwen2.context_length").unwrap(), 32768);
    }
}
