//! Sampling in `ingot run`, `chat` and `serve`: a seed fixes the output, --stop ends it
//! before the stop string, top-k 1 is greedy, and out-of-range values are clear errors
//! before any load. By default they sample (the model's `general.sampling.*` settings, else
//! llama.cpp's), seeded: a given seed repeats, different seeds differ.

mod common;
#[path = "common/server.rs"]
mod server;
use common::{ingot, smollm2, text};
use server::Server;

use ingot_gguf::{GgufFile, GgufWriter, Value as Meta};
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn json(args: &[&str]) -> serde_json::Value {
    let o = ingot(args);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).expect("stdout is one JSON object")
}

#[test]
fn seed_fixes_the_output_and_top_k_1_is_greedy() {
    let Some(model) = smollm2() else { return };
    let m = model.to_str().unwrap();
    let p = "Once upon a time";
    let sampled = |seed: &str| {
        json(&[
            "run",
            "--model",
            m,
            "-n",
            "12",
            "--temperature",
            "1.0",
            "--top-p",
            "0.95",
            "--repeat-penalty",
            "1.1",
            "--seed",
            seed,
            "--json",
            p,
        ])["generated_ids"]
            .clone()
    };
    let a = sampled("42");
    assert_eq!(a, sampled("42"), "same seed, different output");
    let others: Vec<_> = ["1", "2", "3"].iter().map(|s| sampled(s)).collect();
    assert!(others.iter().any(|o| *o != a), "three other seeds all gave the seed-42 output");
    let greedy = json(&["run", "--model", m, "-n", "12", "--temperature", "0", "--json", p])["generated_ids"].clone();
    let k1 = json(&["run", "--model", m, "-n", "12", "--temperature", "1.5", "--top-k", "1", "--seed", "9", "--json", p])["generated_ids"]
        .clone();
    assert_eq!(greedy, k1);
}

#[test]
fn stop_string_ends_the_text_before_it() {
    let Some(model) = smollm2() else { return };
    let m = model.to_str().unwrap();
    let full = json(&["run", "--model", m, "-n", "24", "--temperature", "0", "--json", "The capital of France is"]);
    let full_text = full["text"].as_str().unwrap();
    let cut = full_text.find(',').or_else(|| full_text.find('.')).expect("a comma or full stop in the greedy text");
    let stop = &full_text[cut..cut + 1];
    let j = json(&[
        "run",
        "--model",
        m,
        "-n",
        "24",
        "--temperature",
        "0",
        "--stop",
        stop,
        "--stop",
        "never-seen",
        "--json",
        "The capital of France is",
    ]);
    assert_eq!(j["text"].as_str().unwrap(), &full_text[..cut]);
    let o = ingot(&["run", "--model", m, "-n", "24", "--temperature", "0", "--stop", stop, "The capital of France is"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim_end(), full_text[..cut].trim_end());
}

#[test]
fn out_of_range_flags_are_clear_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["--top-p", "0"], "--top-p must be in (0, 1]"),
        (&["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (&["--min-p", "-0.1"], "--min-p must be in [0, 1]"),
        (&["--repeat-penalty", "0"], "--repeat-penalty must be"),
        (&["--frequency-penalty", "nan"], "--frequency-penalty must be finite"),
        (&["--presence-penalty", "inf"], "--presence-penalty must be finite"),
        (&["--temperature", "nan"], "--temperature must be"),
        (&["--stop", ""], "--stop strings must not be empty"),
        (&["--max-tokens", "-1"], "must be at least 0, got -1"),
    ];
    for (flags, want) in cases {
        let mut args = vec!["run", "--model", "/nonexistent/x.gguf"];
        args.extend_from_slice(flags);
        args.push("hi");
        let o = ingot(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(text(&o).contains(want), "{args:?}: expected '{want}' in {}", text(&o));
    }
}

const STORY: &str = "Once upon a time";

/// `ingot run --json -n 24 STORY` with `extra` flags: the generated ids and stderr.
fn story(model: &str, extra: &[&str]) -> (serde_json::Value, String) {
    let mut a = vec!["run", "--model", model, "-n", "24", "--json"];
    a.extend_from_slice(extra);
    a.push(STORY);
    let o = ingot(&a);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is one JSON object");
    (j["generated_ids"].clone(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// The seed a run printed (`ingot: sampling with ..., seed N ...`).
fn printed_seed(stderr: &str) -> String {
    let line = stderr.lines().find(|l| l.starts_with("ingot: sampling with ")).unwrap_or_else(|| panic!("no sampling line: {stderr}"));
    line.split(", seed ").nth(1).and_then(|r| r.split([' ', ',']).next()).unwrap_or_else(|| panic!("{line}")).to_string()
}

#[test]
fn run_samples_by_default_and_a_seed_repeats() {
    let Some(model) = smollm2() else { return };
    let m = model.to_str().unwrap();
    let (greedy, err) = story(m, &["--temperature", "0"]);
    assert!(!err.contains("sampling with"), "greedy runs print no sampling line: {err}");
    // llama.cpp's defaults (SmolLM2's file has no general.sampling.* keys), seeded.
    let (a, err) = story(m, &["--seed", "1"]);
    assert!(
        err.contains(
            "ingot: sampling with temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, seed 1 (settings not given: llama.cpp's defaults)"
        ),
        "{err}"
    );
    assert_eq!(story(m, &["--seed", "1"]).0, a, "the same seed gave another story");
    let (b, _) = story(m, &["--seed", "2"]);
    assert_ne!(a, b, "seeds 1 and 2 told the same 24-token story: the default is not sampling");
    assert!(a != greedy || b != greedy, "the default gave the greedy story twice");
    // Without --seed: a fresh seed, printed; giving it back repeats the story.
    let (c, err) = story(m, &[]);
    let seed = printed_seed(&err);
    assert_eq!(story(m, &["--seed", &seed]).0, c, "--seed {seed} (printed) did not repeat the run");
    // A flag replaces only its own default: --top-k 1 is greedy whatever the temperature.
    assert_eq!(story(m, &["--top-k", "1", "--seed", "5"]).0, greedy);
}

/// `ingot chat` with `input` on stdin; its output.
fn chat(args: &[&str], input: &str) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ingot"))
        .args(["chat"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ingot chat");
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    o
}

#[test]
fn chat_samples_by_default_and_a_seed_repeats() {
    let Some(model) = smollm2() else { return };
    let m = model.to_str().unwrap();
    let say = "Tell me a story about a dragon.\n";
    let reply = |seed: &str| String::from_utf8_lossy(&chat(&["--model", m, "-n", "24", "--seed", seed], say).stdout).into_owned();
    let a = reply("1");
    assert!(!a.trim().is_empty());
    assert_eq!(reply("1"), a, "the same seed gave another reply");
    assert_ne!(reply("2"), a, "seeds 1 and 2 gave the same 24-token reply: the default is not sampling");
    let o = chat(&["--model", m, "-n", "4", "--temperature", "0"], say);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("sampling with"), "{}", text(&o));
}

/// A copy of `model` at `out` with these metadata keys added.
fn copy_with(model: &Path, out: &Path, keys: &[(&str, Meta)]) {
    let file = GgufFile::open(model).unwrap();
    let mut w = GgufWriter::new();
    w.alignment(file.alignment() as u32).unwrap();
    for (k, v) in file.metadata() {
        if k != ingot_gguf::ALIGNMENT_KEY {
            w.set(k, v.clone());
        }
    }
    for (k, v) in keys {
        w.set(k, v.clone());
    }
    for t in file.tensors() {
        w.add_tensor(&t.name, t.ggml_type, &t.dims, file.data_of(t).unwrap().to_vec()).unwrap();
    }
    w.write_file(out).unwrap();
}

#[test]
fn the_models_general_sampling_keys_are_honored() {
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("smollm2-sampling.gguf");
    // Hot, but top-k 1: whatever the seed, the model's settings decode greedily.
    copy_with(
        &model,
        &copy,
        &[
            ("general.sampling.temp", Meta::F32(1.5)),
            ("general.sampling.top_k", Meta::I32(1)),
            ("general.sampling.top_p", Meta::F32(0.9)),
            ("general.sampling.min_p", Meta::F32(0.01)),
            ("general.sampling.penalty_repeat", Meta::String("abc".into())),
        ],
    );
    let (m, c) = (model.to_str().unwrap(), copy.to_str().unwrap());
    let (greedy, _) = story(m, &["--temperature", "0"]);
    for seed in ["1", "2"] {
        let (ids, err) = story(c, &["--seed", seed]);
        assert_eq!(ids, greedy, "seed {seed}: the file's top_k 1 was not used");
        assert!(
            err.contains(&format!(
                "ingot: sampling with temperature 1.5, top-k 1, top-p 0.9, min-p 0.01, seed {seed} (settings not given: the model's \
                 general.sampling.{{temp, top_k, top_p, min_p}}, llama.cpp's defaults for the rest)"
            )),
            "{err}"
        );
        assert!(err.contains("ingot: the model's general.sampling.penalty_repeat = \"abc\" is not a number; not used"), "{err}");
    }
    // Flags replace the file's settings: without top-k 1 the hot temperature samples.
    let sampled: Vec<_> = ["1", "2", "3"].iter().map(|s| story(c, &["--top-k", "0", "--seed", s]).0).collect();
    assert!(sampled.iter().any(|s| *s != greedy), "temperature 1.5 without top-k gave the greedy story three times");
    // Every setting given: the file is not consulted, nor reported.
    let all = ["--temperature", "0", "--top-k", "0", "--top-p", "1", "--min-p", "0", "--repeat-penalty", "1"];
    let (ids, err) = story(c, &all);
    assert!(ids == greedy && !err.contains("penalty_repeat"), "{err}");

    // The server: requests that leave the settings out get the file's, fields given replace them.
    let server = Server::start(&copy, &[]);
    assert!(
        server.stderr.lock().unwrap().iter().any(|l| {
            l.starts_with(
                "ingot: sampling defaults of requests: temperature 1.5, top-k 1, top-p 0.9, min-p 0.01 (the model's general.sampling.",
            )
        }),
        "{:?}",
        server.stderr.lock().unwrap()
    );
    let complete = |body: serde_json::Value| {
        let (status, v) = server.post("/v1/completions", &body.to_string());
        assert_eq!(status, 200, "{v}");
        v["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let greedy_text = complete(json!({"prompt": STORY, "max_tokens": 24, "temperature": 0}));
    for seed in [1, 2] {
        assert_eq!(complete(json!({"prompt": STORY, "max_tokens": 24, "seed": seed})), greedy_text, "seed {seed}");
    }
    let sampled: Vec<String> = (1..=3).map(|seed| complete(json!({"prompt": STORY, "max_tokens": 24, "seed": seed, "top_k": 0}))).collect();
    assert!(sampled.iter().any(|s| *s != greedy_text), "top_k 0 at the file's temperature 1.5 gave the greedy text three times");
}

#[test]
fn serve_samples_by_default_as_run_does() {
    let Some(model) = smollm2() else { return };
    let m = model.to_str().unwrap();
    let server = Server::start(&model, &[]);
    let complete = |seed: u64| {
        let (status, v) = server.post("/v1/completions", &json!({"prompt": STORY, "max_tokens": 24, "seed": seed}).to_string());
        assert_eq!(status, 200, "{v}");
        v["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let a = complete(7);
    assert_eq!(complete(7), a, "the same seed gave another completion");
    assert_ne!(complete(8), a, "seeds 7 and 8 gave the same 24-token completion: the default is not sampling");
    // The same defaults as `ingot run`: the same seed gives the same text.
    let o = ingot(&["run", "--model", m, "-n", "24", "--seed", "7", "--json", STORY]);
    assert!(o.status.success(), "{}", text(&o));
    let run: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(run["text"].as_str().unwrap(), a, "the server's default sampling differs from `ingot run`'s");
    // Chat too, against `ingot run --chat`.
    let say = "Tell me a story about a dragon.";
    let (status, v) = server
        .post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": say}], "max_tokens": 24, "seed": 11}).to_string());
    assert_eq!(status, 200, "{v}");
    let o = ingot(&["run", "--model", m, "--chat", "-n", "24", "--seed", "11", "--json", say]);
    assert!(o.status.success(), "{}", text(&o));
    let run: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], run["text"]);
}
