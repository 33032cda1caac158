//! `ingot run` end to end: greedy output with --json on the real default model (its
//! prompt ids must be llama.cpp's, from the committed references), and clear errors for
//! bad input.

mod common;
use common::{ingot, smollm2, text};

use std::path::PathBuf;

#[test]
fn json_output_has_llama_cpp_prompt_ids_and_greedy_is_deterministic() {
    let Some(model) = smollm2() else { return };
    let m = model.to_str().unwrap();
    let refs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/data/refs_SmolLM2-135M-Instruct.Q4_1.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let p = &refs["prompts"][0];
    let prompt = p["text"].as_str().unwrap();
    let args = ["run", "--model", m, "--prompt", prompt, "--max-tokens", "8", "--temperature", "0", "--json"];
    let o = ingot(&args);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is one JSON object");
    assert_eq!(j["prompt_ids"], p["ids"], "prompt ids differ from llama.cpp's");
    let gen = j["generated_ids"].as_array().unwrap();
    assert!(!gen.is_empty() && gen.len() <= 8);
    // 8 tokens: the budget ran out ("length"); fewer: an end-of-generation token ("stop").
    let want = if gen.len() == 8 { "length" } else { "stop" };
    assert_eq!(j["finish_reason"], want, "{j}");
    // llama.cpp's first greedy token for this prompt has no near-tie (gap > 1), so ours must equal it.
    let top = &p["llama_cpp"][0]["top5"];
    assert!(top[0][1].as_f64().unwrap() - top[1][1].as_f64().unwrap() > 1.0);
    assert_eq!(gen[0], top[0][0]);
    assert!(j["text"].as_str().unwrap().contains("Paris"), "{}", j["text"]);
    // --top-logprobs: per generated step the 3 most likely tokens, the greedy choice first.
    let mut with_lp = args.to_vec();
    with_lp.extend(["--top-logprobs", "3"]);
    let o3 = ingot(&with_lp);
    assert!(o3.status.success(), "{}", text(&o3));
    let j3: serde_json::Value = serde_json::from_slice(&o3.stdout).unwrap();
    assert_eq!(j3["generated_ids"], j["generated_ids"], "asking for logprobs changed the output");
    let (lps, tops) = (j3["logprobs"].as_array().unwrap(), j3["top_logprobs"].as_array().unwrap());
    assert_eq!((lps.len(), tops.len()), (gen.len(), gen.len()), "{j3}");
    for ((lp, top), id) in lps.iter().zip(tops).zip(gen) {
        let top = top.as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(&top[0]["id"], id, "greedy picks the most likely token");
        assert_eq!(top[0]["logprob"], *lp);
        let lp = lp.as_f64().unwrap();
        assert!(lp <= 0.0 && top.iter().all(|t| t["token"].is_string()), "{top:?}");
        let p: f64 = top.iter().map(|t| t["logprob"].as_f64().unwrap().exp()).sum();
        assert!(p <= 1.0 + 1e-6, "{top:?}");
    }
    for (extra, want) in [(vec!["--top-logprobs", "21"], "--top-logprobs must be at most 20, got 21")] {
        let mut a = args.to_vec();
        a.extend(extra);
        let o = ingot(&a);
        assert!(!o.status.success() && text(&o).contains(want), "{}", text(&o));
    }
    let o = ingot(&["run", "--model", m, "--top-logprobs", "2", "Hi"]);
    assert!(!o.status.success() && text(&o).contains("--json"), "{}", text(&o));
    // Plain mode: only the text on stdout, the same text as --json gave.
    let o2 = ingot(&args[..args.len() - 1]);
    assert!(o2.status.success());
    assert_eq!(String::from_utf8_lossy(&o2.stdout).trim_end(), j["text"].as_str().unwrap().trim_end());
    assert!(String::from_utf8_lossy(&o2.stderr).contains("tok/s"));
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"not a gguf file at all").unwrap();
    let g = garbage.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--model", "/nonexistent/x.gguf", "hi"], "no such model file"),
        (&["run", "--model", g, "hi"], "garbage.gguf"),
        (&["run", "--model", g], "no prompt"),
        (&["run", "--model", g, "--temperature", "-1", "hi"], "--temperature must be"),
        (&["run", "--model", g, "--backend", "gpu:cuda", "hi"], "unsupported: backend 'gpu:cuda' is not built into this ingot"),
        (&["chat", "--model", g, "--backend", "tpu"], "unknown --backend 'tpu'"),
        (&["serve", "--model", g, "--threads", "0"], "--threads must be at least 1"),
        (&["bench", "--model", g, "--backend", "gpu:metal"], "unsupported: backend 'gpu:metal' runs on macOS only"),
        (&["run", "--model", g, "--backend", "gpu", "hi"], "garbage.gguf"),
    ];
    for (args, want) in cases {
        let o = ingot(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let t = text(&o);
        assert!(t.contains(want), "{args:?}: expected '{want}' in: {t}");
        assert!(!t.contains("panicked"), "{args:?}: {t}");
    }
    if let Some(model) = smollm2() {
        let o = ingot(&["run", "--model", model.to_str().unwrap(), "--max-tokens", "100000", "hi"]);
        assert!(!o.status.success() && text(&o).contains("exceed the model's context"), "{}", text(&o));
    }
}

#[test]
fn converted_copies_hold_the_values_and_run() {
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let gen = |m: &str| {
        let o = ingot(&["run", "--model", m, "--prompt", "The capital of France is", "-n", "12", "--temperature", "0", "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        j["generated_ids"].as_array().unwrap().clone()
    };
    let original = gen(model.to_str().unwrap());
    for (ty, exact) in [("f32", true), ("q8_0", false)] {
        let out = dir.path().join(format!("smollm2-{ty}.gguf"));
        let o = ingot(&["convert", model.to_str().unwrap(), out.to_str().unwrap(), "--type", ty]);
        assert!(o.status.success(), "{}", text(&o));
        let info = ingot(&["info", out.to_str().unwrap()]);
        assert!(info.status.success() && text(&info).to_lowercase().contains(ty), "{}", text(&info));
        if exact {
            // F32 holds the decoded Q4_1 values exactly: every tensor decodes to the same
            // numbers. (Not the same tokens: Q4_1 weights meet 8-bit activations in the
            // matmuls, F32 weights f32 activations.)
            let (a, b) = (ingot_gguf::GgufFile::open(&model).unwrap(), ingot_gguf::GgufFile::open(&out).unwrap());
            let decode = |f: &ingot_gguf::GgufFile, name: &str| {
                let t = f.tensor(name).unwrap();
                let mut v = vec![0f32; t.numel() as usize];
                ingot_cpu::quant::dequantize_row(f.tensor_dtype(name).unwrap(), f.data_of(t).unwrap(), &mut v).unwrap();
                v
            };
            assert_eq!(a.tensors().len(), b.tensors().len());
            for t in a.tensors() {
                assert!(decode(&a, &t.name) == decode(&b, &t.name), "{}: the F32 copy holds other values", t.name);
            }
        }
        let got = gen(out.to_str().unwrap());
        assert_eq!(got[0], original[0], "{ty} copy: first greedy token differs");
    }
    let bad = ingot(&["convert", model.to_str().unwrap(), dir.path().join("x.gguf").to_str().unwrap(), "--type", "i32"]);
    assert!(!bad.status.success() && text(&bad).contains("not a weight format"), "{}", text(&bad));
}

#[test]
fn bench_reports_pp_and_tg() {
    let Some(model) = smollm2() else { return };
    let m = model.to_str().unwrap();
    let o = ingot(&["bench", "--model", m, "-p", "8", "-n", "4", "-r", "2", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["test"], "pp8");
    assert_eq!(rows[1]["test"], "tg4");
    for r in rows {
        let v = r["ingot_tps"].as_array().unwrap();
        assert_eq!(v.len(), 2);
        assert!(v.iter().all(|x| x.as_f64().unwrap() > 0.0));
    }
    let o = ingot(&["bench", "--model", m, "-p", "0", "-n", "0"]);
    assert!(!o.status.success() && text(&o).contains("nothing to run"), "{}", text(&o));
    let o = ingot(&["bench", "--model", m, "-p", "100000", "-n", "0"]);
    assert!(!o.status.success() && text(&o).contains("exceeds the model's context"), "{}", text(&o));
}

#[test]
fn bench_concurrent_runs_sequences_through_the_engine() {
    let Some(model) = smollm2() else { return };
    let m = model.to_str().unwrap();
    let o = ingot(&["bench", "--model", m, "-p", "0", "-n", "4", "-r", "1", "--concurrent", "1,3", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tests: Vec<&str> = j["rows"].as_array().unwrap().iter().map(|r| r["test"].as_str().unwrap()).collect();
    assert_eq!(tests, ["tg4", "tg4 x1 total", "tg4 x1 per seq", "tg4 x3 total", "tg4 x3 per seq"]);
    for r in j["rows"].as_array().unwrap() {
        assert!(r["ingot_tps"][0].as_f64().unwrap() > 0.0, "{r}");
    }
    let o = ingot(&["bench", "--model", m, "-p", "0", "-n", "4", "--concurrent", "0"]);
    assert!(!o.status.success() && text(&o).contains("--concurrent values must be at least 1"), "{}", text(&o));
}
