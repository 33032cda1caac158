//! `POST /v1/embeddings` of `ingot serve`, against the real binary over SmolLM2 (skipped with
//! a printed reason when the model is absent, unless INGOT_REQUIRE_MODELS=1): unit vectors
//! of the model's width, the same whatever a text is batched with and from one request to
//! the next, base64 the same floats as the array, `--pooling` honoured, and bad requests
//! are 400s that name the field.

mod common;
#[path = "common/server.rs"]
mod server;
use common::smollm2;
use server::Server;

use base64::Engine as _;
use serde_json::{json, Value};

fn vectors(v: &Value) -> Vec<Vec<f32>> {
    let data = v["data"].as_array().unwrap_or_else(|| panic!("no data: {v}"));
    data.iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["object"], "embedding");
            assert_eq!(d["index"], i);
            match &d["embedding"] {
                Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
                Value::String(s) => {
                    let b = base64::engine::general_purpose::STANDARD.decode(s).expect("base64");
                    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
                }
                other => panic!("embedding is {other}"),
            }
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

#[test]
fn embeddings_are_unit_vectors_independent_of_their_batch() {
    let Some(model) = smollm2() else { return };
    let s = Server::start(&model, &[]);
    let texts = ["The cat sat on the mat.", "Quantum chromodynamics describes the strong force.", "cat"];
    let (st, all) = s.post("/v1/embeddings", &json!({"input": texts, "model": "x"}).to_string());
    assert_eq!(st, 200, "{all}");
    assert_eq!(all["object"], "list");
    let all_v = vectors(&all);
    assert_eq!(all_v.len(), 3);
    for v in &all_v {
        assert_eq!(v.len(), 576, "SmolLM2's width");
        let n = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((n - 1.0).abs() < 1e-4, "length {n}");
    }
    let tokens = all["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(tokens >= 3, "{}", all["usage"]);
    assert_eq!(all["usage"]["total_tokens"], all["usage"]["prompt_tokens"]);
    // One text alone (a string), and again: the same vector.
    for _ in 0..2 {
        let (_, one) = s.post("/v1/embeddings", &json!({"input": texts[1]}).to_string());
        let d = max_diff(&vectors(&one)[0], &all_v[1]);
        assert!(d < 1e-5, "the vector changed with its batch by {d}");
    }
    // base64: the same floats.
    let (_, b64) = s.post("/v1/embeddings", &json!({"input": texts, "encoding_format": "base64"}).to_string());
    assert!(b64["data"][0]["embedding"].is_string());
    for (a, b) in vectors(&b64).iter().zip(&all_v) {
        assert!(max_diff(a, b) < 1e-5);
    }
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!(cos(&all_v[0], &all_v[1]) < 0.9999, "different texts gave the same vector");
    // Token ids: an array of ids is one input, an array of arrays one vector each.
    let (st, ids) = s.post("/v1/embeddings", &json!({"input": [[1, 504, 2365], [9880]]}).to_string());
    assert_eq!(st, 200, "{ids}");
    assert_eq!(vectors(&ids).len(), 2);
    assert_eq!(ids["usage"]["prompt_tokens"], 4);
}

#[test]
fn pooling_flag_changes_the_vectors() {
    let Some(model) = smollm2() else { return };
    let body = json!({"input": ["A few words of text to pool.", "Another sentence here."]}).to_string();
    let mean = Server::start(&model, &[]).post("/v1/embeddings", &body).1;
    let last = Server::start(&model, &["--pooling", "last"]).post("/v1/embeddings", &body).1;
    let (m, l) = (vectors(&mean), vectors(&last));
    assert!(max_diff(&m[0], &l[0]) > 1e-3, "--pooling last gave the mean's vector");
    let o = common::ingot(&["serve", "--model", model.to_str().unwrap(), "--pooling", "max"]);
    assert!(!o.status.success() && common::text(&o).contains("--pooling"), "{}", common::text(&o));
}

#[test]
fn bad_embedding_requests_are_400s_naming_the_field() {
    let Some(model) = smollm2() else { return };
    let s = Server::start(&model, &[]);
    let long = "word ".repeat(20_000);
    let cases = [
        (json!({}), "input"),
        (json!({"input": ""}), "input[0]"),
        (json!({"input": []}), "input"),
        (json!({"input": ["a", 3]}), "input[1]"),
        (json!({"input": [[1, 2], "b"]}), "input[1]"),
        (json!({"input": [1, 99999999]}), "input[1]"),
        (json!({"input": [[1], []]}), "input[1]"),
        (json!({"input": 5}), "input"),
        (json!({"input": "a", "encoding_format": "int8"}), "encoding_format"),
        (json!({"input": "a", "dimensions": 64}), "dimensions"),
        (json!({"input": ["ok", long]}), "input[1]"),
        (json!({"input": vec!["x"; 2049]}), "input"),
    ];
    for (body, param) in cases {
        let (st, v) = s.post("/v1/embeddings", &body.to_string());
        assert_eq!(st, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }
}
