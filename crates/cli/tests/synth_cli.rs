//! End-to-end tests of `ingot synth`: models of the smollm2-135m and qwen2.5-0.5b shapes cut
//! to 2 layers, with the SmolLM2 tokenizer, in q8_0 and q4_k_m: `ingot info --json` shows the
//! shape and llama.cpp's tensor formats, `ingot run` generates from them (its sampler refuses
//! NaN and +Inf logits), the seed decides the bytes, and bad input is a clear error.

mod common;

use common::{ingot, smollm2, text};
use ingot_gguf::GgufWriter;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

fn synth(like: &Path, shape: &str, ty: &str, seed: &str, out: &Path) {
    let o = ingot(&[
        "synth",
        "--like",
        like.to_str().unwrap(),
        "--shape",
        shape,
        "--type",
        ty,
        "--layers",
        "2",
        "--seed",
        seed,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "synth {shape} {ty}: {}", text(&o));
}

fn info(path: &Path) -> Json {
    let o = ingot(&["info", "--json", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn tensor_type(info: &Json, name: &str) -> String {
    let t = info["tensors"].as_array().unwrap().iter().find(|t| t["name"] == name);
    t.unwrap_or_else(|| panic!("no tensor {name}"))["type"].as_str().unwrap().to_string()
}

/// (shape, hidden, heads, kv heads, vocab, tied output)
const SHAPES: [(&str, u64, u64, u64, u64, bool); 2] =
    [("smollm2-135m", 576, 9, 3, 49152, true), ("qwen2.5-0.5b", 896, 14, 2, 151936, true)];

#[test]
fn shapes_and_types_load_and_run() {
    let Some(like) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (shape, hidden, heads, kv, vocab, tied) in SHAPES {
        for ty in ["q8_0", "q4_k_m"] {
            let out = dir.path().join(format!("{shape}-{ty}.gguf"));
            synth(&like, shape, ty, "0", &out);
            let j = info(&out);
            let what = format!("{shape} {ty}");
            assert_eq!(j["layers"], 2, "{what}");
            assert_eq!(j["embedding_length"], hidden, "{what}");
            assert_eq!(j["heads"], heads, "{what}");
            assert_eq!(j["kv_heads"], kv, "{what}");
            assert_eq!(j["vocab_size"], vocab, "{what}");
            assert_eq!(j["tensors"].as_array().unwrap().iter().any(|t| t["name"] == "output.weight"), !tied, "{what}");
            let t = |name: &str| tensor_type(&j, name);
            assert_eq!(t("blk.0.attn_norm.weight"), "F32", "{what}");
            assert_eq!(t("output_norm.weight"), "F32", "{what}");
            if shape.starts_with("qwen") {
                assert_eq!(t("blk.1.attn_q.bias"), "F32", "{what}");
            }
            if ty == "q8_0" {
                for name in ["token_embd.weight", "blk.0.attn_q.weight", "blk.1.attn_v.weight", "blk.1.ffn_down.weight"] {
                    assert_eq!(t(name), "Q8_0", "{what} {name}");
                }
            } else {
                // llama.cpp's Q4_K_M on these shapes, whose hidden size is not a multiple of 256:
                // the (tied) output projection Q6_K -> Q8_0, attn_v Q6_K -> Q8_0 in the "more
                // bits" layer (of 2 layers: layer 1 only), Q4_K -> Q5_0 elsewhere; ffn_down has
                // rows of 1536 / 4864 values, whole 256-blocks: Q6_K in layer 1, Q4_K in layer 0.
                assert_eq!(t("token_embd.weight"), "Q8_0", "{what}");
                assert_eq!(t("blk.0.attn_v.weight"), "Q5_0", "{what}");
                assert_eq!(t("blk.1.attn_v.weight"), "Q8_0", "{what}");
                assert_eq!(t("blk.0.attn_q.weight"), "Q5_0", "{what}");
                assert_eq!(t("blk.0.ffn_down.weight"), "Q4_K", "{what}");
                assert_eq!(t("blk.1.ffn_down.weight"), "Q6_K", "{what}");
            }
            let o = ingot(&[
                "run",
                "--model",
                out.to_str().unwrap(),
                "--backend",
                "cpu",
                "-n",
                "4",
                "--temperature",
                "0",
                "--json",
                "Hello world",
            ]);
            assert!(o.status.success(), "run {what}: {}", text(&o));
            let r: Json = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(r["generated_ids"].as_array().unwrap().len(), 4, "{what}: {r}");
        }
    }
}

#[test]
fn the_seed_decides_the_bytes() {
    let Some(like) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    synth(&like, "smollm2-135m", "q4_k_m", "7", &path("a.gguf"));
    synth(&like, "smollm2-135m", "q4_k_m", "7", &path("b.gguf"));
    synth(&like, "smollm2-135m", "q4_k_m", "8", &path("c.gguf"));
    let read = |n: &str| std::fs::read(path(n)).unwrap();
    assert!(read("a.gguf") == read("b.gguf"), "same seed, different files");
    assert!(read("a.gguf") != read("c.gguf"), "different seeds, same file");
    assert!(!path("a.gguf.partial").exists());
}

/// A GGUF file with `n` tokens `t0`, `t1`, ... (no tokenizer when 0), these replaced, these
/// merges and this end-of-sequence id, and no tensors.
fn tokenizer_file(path: &Path, n: usize, replace: &[(usize, &str)], merges: &[&str], eos: u32) {
    let mut w = GgufWriter::new();
    w.set("general.architecture", "llama");
    if n > 0 {
        let mut tokens: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
        for &(i, t) in replace {
            tokens[i] = t.to_string();
        }
        w.set("tokenizer.ggml.model", "gpt2")
            .set("tokenizer.ggml.tokens", tokens)
            .set("tokenizer.ggml.merges", merges.iter().map(|m| m.to_string()).collect::<Vec<_>>())
            .set("tokenizer.ggml.eos_token_id", eos);
    }
    w.write_file(path).unwrap();
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    tokenizer_file(&p("small.gguf"), 100, &[], &[], 0);
    tokenizer_file(&p("big_eos.gguf"), 50_000, &[], &[], 49_999);
    tokenizer_file(&p("big_char.gguf"), 50_000, &[(49_990, "z")], &[], 0);
    tokenizer_file(&p("none.gguf"), 0, &[], &[], 0);
    std::fs::write(p("text.gguf"), "not a gguf file at all, just some text").unwrap();
    let s = |p: PathBuf| p.to_str().unwrap().to_string();
    let base = |like: &str, shape: &str, ty: &str, layers: &str, out: &str| -> Vec<String> {
        ["synth", "--like", like, "--shape", shape, "--type", ty, "--layers", layers, "--out", out].map(String::from).to_vec()
    };
    let small = s(p("small.gguf"));
    let out = s(p("out.gguf"));
    let cases: Vec<(Vec<String>, &str)> = vec![
        (base(&small, "llama-9000", "q8_0", "2", &out), "not a known shape; known: smollm2-135m, llama3.2-1b"),
        (base(&small, "smollm2-135m", "q3_k_xl", "2", &out), "--type \"q3_k_xl\" is not one of f32, f16"),
        (base(&small, "smollm2-135m", "q8_0", "0", &out), "'--layers"),
        (base(&small, "smollm2-135m", "q8_0", "1001", &out), "'--layers"),
        (base(&small, "smollm2-135m", "q8_0", "2", &small), "is the --like file"),
        (base(&small, "smollm2-135m", "q8_0", "2", &s(p("no/such/dir/out.gguf"))), "cannot write"),
        (base(&small, "smollm2-135m", "q8_0", "2", &s(dir.path().to_path_buf())), "is a directory"),
        (base(&s(p("text.gguf")), "smollm2-135m", "q8_0", "2", &out), "--like"),
        (base(&s(p("missing.gguf")), "smollm2-135m", "q8_0", "2", &out), "--like"),
        (base(&s(p("none.gguf")), "smollm2-135m", "q8_0", "2", &out), "no tokenizer"),
        (
            base(&s(p("big_eos.gguf")), "smollm2-135m", "q8_0", "2", &out),
            "has 50000 tokens, more than the 49152 of shape smollm2-135m, and cutting it would lose tokenizer.ggml.eos_token_id 49999",
        ),
        (base(&s(p("big_char.gguf")), "smollm2-135m", "q8_0", "2", &out), "would lose the single-character token 49990 \"z\""),
        (vec!["synth".into(), "--shape".into(), "smollm2-135m".into()], "required"),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = ingot(&args);
        let t = text(&o);
        assert!(!o.status.success(), "{args:?} succeeded: {t}");
        assert!(t.contains(want), "{args:?}: wanted {want:?} in {t}");
        assert!(!t.contains("panicked"), "{args:?}: {t}");
    }
    assert!(!p("out.gguf").exists() && !p("out.gguf.partial").exists());
    // A tokenizer smaller than the shape's vocabulary is padded with unused tokens.
    let o = ingot(&base(&small, "smollm2-135m", "q8_0", "1", &out).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    let f = ingot_gguf::GgufFile::open(p("out.gguf")).unwrap();
    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(tokens[99], "t99");
    assert_eq!(tokens[100], "<synth_pad_100>");

    // A larger tokenizer with nothing special past the shape's vocabulary is cut; merges that
    // need a cut token go.
    tokenizer_file(&p("big.gguf"), 50_000, &[(0, "a"), (1, "b"), (2, "ab"), (49_999, "ba")], &["a b", "b a"], 1);
    let o = ingot(&base(&s(p("big.gguf")), "smollm2-135m", "q8_0", "1", &out).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("cut from 50000 to the 49152 tokens of smollm2-135m"), "{}", text(&o));
    let f = ingot_gguf::GgufFile::open(p("out.gguf")).unwrap();
    assert_eq!(f.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
    assert_eq!(f.get_str_array("tokenizer.ggml.merges").unwrap(), ["a b"]);
}

#[test]
fn list_shapes_prints_the_table() {
    let o = ingot(&["synth", "--list-shapes"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = String::from_utf8_lossy(&o.stdout);
    for shape in ["llama3-8b", "llama3.2-1b", "qwen2.5-7b", "qwen2.5-0.5b", "gemma3-4b", "gemma3-270m", "smollm2-135m", "mistral-7b"] {
        assert!(t.lines().any(|l| l.starts_with(shape)), "{shape} missing from\n{t}");
    }
}
