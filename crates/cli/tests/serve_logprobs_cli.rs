//! Log-probabilities from `ingot serve` (OpenAI's `logprobs` / `top_logprobs`): against the
//! real binary over SmolLM2 (skipped with a printed reason when the model is absent, unless
//! INGOT_REQUIRE_MODELS=1). At temperature 0 the chosen token is the most likely one; the
//! values match what `ingot run --json --top-logprobs K` prints for the same prompt, whole
//! and streamed replies agree, and bad values are 400s.

mod common;
#[path = "common/server.rs"]
mod server;
use common::{ingot, smollm2, text};
use server::{chunks, Server};

use serde_json::{json, Value};
use std::path::Path;

const TOL: f64 = 1e-4;
const N: usize = 8;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// `ingot run --json --temperature 0 --top-logprobs K` (with `--chat` when `chat`): per
/// generated token, its log-probability and the K most likely (token, log-probability).
fn run_logprobs(model: &Path, prompt: &str, k: usize, chat: bool) -> Vec<(f64, Vec<(String, f64)>)> {
    let (n, k) = (N.to_string(), k.to_string());
    let mut a = vec!["run", "--model", model.to_str().unwrap(), "--json", "--temperature", "0", "-n", &n, "--top-logprobs", &k];
    if chat {
        a.push("--chat");
    }
    a.extend(["--prompt", prompt]);
    let o = ingot(&a);
    assert!(o.status.success(), "{}", text(&o));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let lps = j["logprobs"].as_array().unwrap();
    let tops = j["top_logprobs"].as_array().unwrap();
    assert_eq!(lps.len(), j["generated_ids"].as_array().unwrap().len());
    lps.iter()
        .zip(tops)
        .map(|(lp, top)| {
            let top = top.as_array().unwrap().iter().map(|t| (t["token"].as_str().unwrap().to_string(), f(&t["logprob"]))).collect();
            (f(lp), top)
        })
        .collect()
}

/// One entry of chat's `logprobs.content`: (token, logprob, bytes, [(token, logprob)]).
type ChatEntry = (String, f64, Vec<u8>, Vec<(String, f64)>);

/// Chat `logprobs.content` entries, checking each entry's shape.
fn chat_entries(content: &Value) -> Vec<ChatEntry> {
    content
        .as_array()
        .unwrap_or_else(|| panic!("logprobs.content is not an array: {content}"))
        .iter()
        .map(|e| {
            let bytes: Vec<u8> = e["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
            let token = e["token"].as_str().unwrap().to_string();
            assert_eq!(String::from_utf8_lossy(&bytes), token, "{e}");
            let top = e["top_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    assert!(t["bytes"].is_array(), "{t}");
                    (t["token"].as_str().unwrap().to_string(), f(&t["logprob"]))
                })
                .collect();
            (token, f(&e["logprob"]), bytes, top)
        })
        .collect()
}

#[test]
fn chat_logprobs_match_ingot_run_whole_and_streamed() {
    let Some(model) = smollm2() else { return };
    let server = Server::start(&model, &[]);
    let prompt = "What is the capital of France?";
    let k = 5;
    let want = run_logprobs(&model, prompt, k, true);
    let body = json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": N, "temperature": 0,
                      "logprobs": true, "top_logprobs": k});
    let (status, v) = server.post("/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200, "{v}");
    let whole = chat_entries(&v["choices"][0]["logprobs"]["content"]);
    assert_eq!(whole.len(), want.len(), "{v}");
    assert_eq!(whole.len(), v["usage"]["completion_tokens"].as_u64().unwrap() as usize);
    // The tokens' bytes are the reply's text.
    let all: Vec<u8> = whole.iter().flat_map(|e| e.2.clone()).collect();
    assert_eq!(String::from_utf8(all).unwrap(), v["choices"][0]["message"]["content"].as_str().unwrap());
    for (i, ((token, lp, _, top), (run_lp, run_top))) in whole.iter().zip(&want).enumerate() {
        assert!(*lp <= 0.0, "step {i}: {lp}");
        assert_eq!(top.len(), k, "step {i}");
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1), "step {i}: not sorted: {top:?}");
        // Greedy: the chosen token is the most likely one.
        assert_eq!((token, *lp), (&top[0].0, top[0].1), "step {i}");
        // As `ingot run` computed them.
        assert!((lp - run_lp).abs() < TOL, "step {i}: {lp} vs run's {run_lp}");
        for ((t, l), (rt, rl)) in top.iter().zip(run_top) {
            assert!(t == rt && (l - rl).abs() < TOL, "step {i}: {top:?} vs run's {run_top:?}");
        }
    }
    // Streamed: each chunk carries its tokens' entries; all together the same as the whole reply.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let cs = chunks(&server.stream("/v1/chat/completions", &sbody));
    assert!(cs[0]["choices"][0]["logprobs"].is_null(), "the role chunk has no tokens: {}", cs[0]);
    let mut streamed = Vec::new();
    for c in &cs[1..] {
        let ch = &c["choices"][0];
        if ch["finish_reason"].is_string() {
            assert!(ch["logprobs"].is_null(), "{c}");
            continue;
        }
        let entries = chat_entries(&ch["logprobs"]["content"]);
        let text: Vec<u8> = entries.iter().flat_map(|e| e.2.clone()).collect();
        assert_eq!(String::from_utf8_lossy(&text), ch["delta"]["content"].as_str().unwrap(), "{c}");
        streamed.extend(entries);
    }
    assert_eq!(streamed.len(), whole.len());
    for (s, w) in streamed.iter().zip(&whole) {
        assert_eq!((&s.0, &s.2), (&w.0, &w.2));
        assert!((s.1 - w.1).abs() < TOL, "{s:?} vs {w:?}");
        assert!(s.3.iter().zip(&w.3).all(|(a, b)| a.0 == b.0 && (a.1 - b.1).abs() < TOL), "{s:?} vs {w:?}");
    }
    // `logprobs: true` alone: the chosen tokens' values, no alternatives.
    let (_, v) = server.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": N, "temperature": 0, "logprobs": true}).to_string(),
    );
    let plain = chat_entries(&v["choices"][0]["logprobs"]["content"]);
    assert_eq!(plain.len(), whole.len());
    for (p, w) in plain.iter().zip(&whole) {
        assert!(p.0 == w.0 && (p.1 - w.1).abs() < TOL && p.3.is_empty(), "{p:?} vs {w:?}");
    }
    // Sampled: a token's log-probability is at most the step's largest.
    let (_, v) = server.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 16, "temperature": 1.5,
                "seed": 3, "logprobs": true, "top_logprobs": 2})
        .to_string(),
    );
    for (token, lp, _, top) in chat_entries(&v["choices"][0]["logprobs"]["content"]) {
        assert!(lp <= top[0].1 + 1e-6 && top[0].1 <= 0.0, "{token:?}: {lp} vs {top:?}");
    }
    // Without logprobs: null.
    let (_, v) =
        server.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": 2}).to_string());
    assert!(v["choices"][0]["logprobs"].is_null(), "{v}");
}

/// The legacy `logprobs` object of `/v1/completions`: (tokens, token_logprobs,
/// top_logprobs, text_offset).
type Legacy = (Vec<String>, Vec<f64>, Vec<serde_json::Map<String, Value>>, Vec<u64>);

fn legacy(lp: &Value) -> Legacy {
    let strs = |k: &str| lp[k].as_array().unwrap_or_else(|| panic!("{k}: {lp}")).clone();
    (
        strs("tokens").iter().map(|t| t.as_str().unwrap().to_string()).collect(),
        strs("token_logprobs").iter().map(f).collect(),
        strs("top_logprobs").iter().map(|t| t.as_object().unwrap().clone()).collect(),
        strs("text_offset").iter().map(|t| t.as_u64().unwrap()).collect(),
    )
}

#[test]
fn completion_logprobs_legacy_format_match_ingot_run() {
    let Some(model) = smollm2() else { return };
    let server = Server::start(&model, &[]);
    let prompt = "The capital of France is";
    let k = 3;
    let want = run_logprobs(&model, prompt, k, false);
    let body = json!({"prompt": prompt, "max_tokens": N, "temperature": 0, "logprobs": k});
    let (status, v) = server.post("/v1/completions", &body.to_string());
    assert_eq!(status, 200, "{v}");
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    let (tokens, lps, tops, offsets) = legacy(&v["choices"][0]["logprobs"]);
    assert_eq!(tokens.len(), want.len());
    assert_eq!((lps.len(), tops.len(), offsets.len()), (tokens.len(), tokens.len(), tokens.len()));
    assert_eq!(tokens.concat(), text);
    let chars: Vec<char> = text.chars().collect();
    for (i, (((token, lp), top), (run_lp, run_top))) in tokens.iter().zip(&lps).zip(&tops).zip(&want).enumerate() {
        assert!(*lp <= 0.0 && (lp - run_lp).abs() < TOL, "step {i}: {lp} vs run's {run_lp}");
        // The K most likely, as `ingot run` has them; greedy chose the first of them.
        assert_eq!(top.len(), k, "step {i}: {top:?}");
        for (t, l) in run_top {
            assert!((f(&top[t]) - l).abs() < TOL, "step {i}: {top:?} vs run's {run_top:?}");
        }
        assert_eq!(token, &run_top[0].0, "step {i}");
        // Where the token starts in the text, in characters.
        let at: String = chars[offsets[i] as usize..].iter().collect();
        assert!(at.starts_with(token.as_str()), "step {i}: offset {} of {text:?} is not {token:?}", offsets[i]);
    }
    assert_eq!(offsets[0], 0);
    // Streamed: the same values, the offsets counted on across chunks.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let cs = chunks(&server.stream("/v1/completions", &sbody));
    let mut parts: Vec<Value> = Vec::new();
    for c in &cs {
        let ch = &c["choices"][0];
        if ch["finish_reason"].is_string() {
            assert!(ch["logprobs"].is_null(), "{c}");
        } else {
            parts.push(ch["logprobs"].clone());
        }
    }
    let join = |key: &str| Value::Array(parts.iter().flat_map(|p| p[key].as_array().unwrap().clone()).collect());
    let joined = json!({"tokens": join("tokens"), "token_logprobs": join("token_logprobs"),
                        "top_logprobs": join("top_logprobs"), "text_offset": join("text_offset")});
    let (st, slps, stops, soffsets) = legacy(&joined);
    assert_eq!((&st, &soffsets), (&tokens, &offsets));
    assert!(slps.iter().zip(&lps).all(|(a, b)| (a - b).abs() < TOL), "{slps:?} vs {lps:?}");
    for (a, b) in stops.iter().zip(&tops) {
        assert!(a.len() == b.len() && a.iter().all(|(t, l)| (f(l) - f(&b[t])).abs() < TOL), "{a:?} vs {b:?}");
    }
    // logprobs 0: only the chosen token, in each top_logprobs too.
    let (_, v) = server.post("/v1/completions", &json!({"prompt": prompt, "max_tokens": N, "temperature": 0, "logprobs": 0}).to_string());
    let (t0, l0, top0, _) = legacy(&v["choices"][0]["logprobs"]);
    assert_eq!(t0, tokens);
    for ((t, l), top) in t0.iter().zip(&l0).zip(&top0) {
        assert!(top.len() == 1 && (f(&top[t]) - l).abs() < TOL, "{top:?}");
    }
}

#[test]
fn bad_logprobs_values_are_400s() {
    let Some(model) = smollm2() else { return };
    let server = Server::start(&model, &[]);
    let user = json!([{"role": "user", "content": "Hi"}]);
    let chat = "/v1/chat/completions";
    let comp = "/v1/completions";
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (chat, json!({"messages": user, "top_logprobs": 2}), "top_logprobs", "'top_logprobs' requires 'logprobs' to be true"),
        (chat, json!({"messages": user, "logprobs": false, "top_logprobs": 1}), "top_logprobs", "requires 'logprobs' to be true"),
        (chat, json!({"messages": user, "logprobs": true, "top_logprobs": 21}), "top_logprobs", "must be in [0, 20], got 21"),
        (chat, json!({"messages": user, "logprobs": true, "top_logprobs": -1}), "top_logprobs", "must be in [0, 20], got -1"),
        (chat, json!({"messages": user, "logprobs": true, "top_logprobs": 2.5}), "top_logprobs", "must be an integer"),
        (chat, json!({"messages": user, "logprobs": true, "top_logprobs": "3"}), "top_logprobs", "must be an integer"),
        (chat, json!({"messages": user, "logprobs": true, "top_logprobs": 1e300}), "top_logprobs", "must be an integer"),
        (chat, json!({"messages": user, "logprobs": 1}), "logprobs", "must be a boolean"),
        (comp, json!({"prompt": "Hi", "logprobs": 21}), "logprobs", "must be in [0, 20]"),
        (comp, json!({"prompt": "Hi", "logprobs": -5}), "logprobs", "got -5"),
        (comp, serde_json::from_str(r#"{"prompt": "Hi", "logprobs": 99999999999999999999}"#).unwrap(), "logprobs", "must be"),
        (comp, json!({"prompt": "Hi", "logprobs": 0.5}), "logprobs", "must be an integer"),
        (comp, json!({"prompt": "Hi", "logprobs": true}), "logprobs", "must be an integer"),
        (comp, json!({"prompt": "Hi", "logprobs": 2, "echo": true}), "echo", "not supported"),
    ];
    for (path, body, param, want) in &cases {
        let (s, v) = server.post(path, &body.to_string());
        assert_eq!(s, 400, "{path} {body}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_eq!(v["error"]["param"].as_str(), Some(*param), "{path} {body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(want), "{path} {body}: {v}");
    }
    // Nothing reached the engine, and the server still answers.
    assert_eq!(server.metrics()["ingot_prompt_tokens_total"], 0.0);
    let (s, v) = server.post(comp, &json!({"prompt": "Hi", "max_tokens": 1, "logprobs": 20}).to_string());
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["logprobs"]["top_logprobs"][0].as_object().unwrap().len(), 20, "{v}");
}
