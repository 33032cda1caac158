//! Embeddings (`Logits::Hidden`, `Model::embed`) on the real SmolLM2 file (skipped with a
//! printed reason when it is absent, unless INGOT_REQUIRE_MODELS=1):
//! - the hidden states a pass returns are the output norm of the residual stream after the
//!   last layer, recomputed here in f64 from the pass's trace and the file's norm weights;
//! - `embed` pools them (mean, first, last) and scales to unit length, as recomputed here;
//! - a text's embedding does not depend on the texts batched with it;
//! - bad inputs are errors.

mod common;
use common::model_path;
use ingot_model::{Logits, Model, Pooling};

fn smollm2() -> Option<Model> {
    Some(Model::load(model_path("SmolLM2-135M-Instruct.Q4_1.gguf")?).expect("load SmolLM2"))
}

/// Token ids of a few texts (any ids in the vocabulary serve; these vary in length).
fn texts() -> Vec<Vec<u32>> {
    vec![vec![1, 504, 2365, 3278, 335, 260, 1683, 30], vec![1, 9880, 2], (0..37).map(|i| 100 + 7 * i).collect()]
}

/// The final hidden states of `tokens` run alone: [tokens × n_embd].
fn hidden(m: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut cache = m.new_cache().unwrap();
    m.forward(tokens, &mut cache, Logits::Hidden, None).unwrap()
}

#[test]
fn hidden_states_are_the_output_norm_of_the_last_residual() {
    let Some(m) = smollm2() else { return };
    let c = &m.config;
    let e = c.n_embd;
    let tokens = &texts()[0];
    // The residual stream after every layer, from an ordinary (logits) pass.
    let mut trace = Vec::new();
    let mut cache = m.new_cache().unwrap();
    m.forward(tokens, &mut cache, Logits::All, Some(&mut trace)).unwrap();
    let last = trace.last().expect("a trace per layer");
    assert_eq!(trace.len(), c.n_layer);
    let file = m.file();
    let w: Vec<f32> = bytes_f32(file.tensor_data("output_norm.weight").unwrap());
    assert_eq!(w.len(), e);
    let got = hidden(&m, tokens);
    assert_eq!(got.len(), tokens.len() * e);
    let mut worst = 0f64;
    for (row, x) in got.chunks_exact(e).zip(last.chunks_exact(e)) {
        // RMSNorm in f64: x / sqrt(mean(x²) + eps) · w.
        let ms = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / e as f64;
        let r = 1.0 / (ms + c.eps as f64).sqrt();
        for j in 0..e {
            let want = x[j] as f64 * r * w[j] as f64;
            worst = worst.max((row[j] as f64 - want).abs() / want.abs().max(1.0));
        }
    }
    assert!(worst < 1e-4, "hidden states differ from the output norm of the last residual by {worst:e}");
}

fn bytes_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn embed_pools_and_normalizes_and_ignores_its_batch() {
    let Some(m) = smollm2() else { return };
    let e = m.config.n_embd;
    let ts = texts();
    for pooling in [Pooling::Mean, Pooling::Cls, Pooling::Last] {
        let refs: Vec<&[u32]> = ts.iter().map(Vec::as_slice).collect();
        let together = m.embed(&refs, pooling).unwrap();
        assert_eq!(together.len(), ts.len());
        for (t, v) in ts.iter().zip(&together) {
            // Pooled and normalized here, in f64, from the pass's hidden states.
            let h = hidden(&m, t);
            let rows: Vec<&[f32]> = h.chunks_exact(e).collect();
            let pooled: Vec<f64> = (0..e)
                .map(|j| match pooling {
                    Pooling::Mean => rows.iter().map(|r| r[j] as f64).sum::<f64>() / rows.len() as f64,
                    Pooling::Cls => rows[0][j] as f64,
                    Pooling::Last => rows[rows.len() - 1][j] as f64,
                })
                .collect();
            let norm = pooled.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert_eq!(v.len(), e);
            let unit = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            assert!((unit - 1.0).abs() < 1e-5, "{pooling:?}: length {unit}");
            let worst = v.iter().zip(&pooled).map(|(&a, b)| (a as f64 - b / norm).abs()).fold(0f64, f64::max);
            assert!(worst < 1e-5, "{pooling:?}: {worst:e} from the pooled hidden states");
        }
        // Alone, or in another order with other company: the same vector.
        let alone = m.embed(&[&ts[2]], pooling).unwrap();
        let other = m.embed(&[&ts[1], &ts[2], &[5, 6, 7]], pooling).unwrap();
        for (a, b) in [(&alone[0], &together[2]), (&other[1], &together[2])] {
            let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "{pooling:?}: a text's embedding changed with its batch by {worst:e}");
        }
    }
    // Different texts, different directions.
    let v = m.embed(&[&ts[0], &ts[1]], Pooling::Mean).unwrap();
    let cos: f32 = v[0].iter().zip(&v[1]).map(|(a, b)| a * b).sum();
    assert!(cos < 0.999, "two different texts embed to the same vector (cosine {cos})");
}

#[test]
fn bad_embedding_inputs_are_errors() {
    let Some(m) = smollm2() else { return };
    let ctx = m.config.context;
    let long = vec![1u32; ctx + 1];
    let cases: Vec<(Vec<&[u32]>, &str)> =
        vec![(vec![&[1, 2], &[]], "no tokens"), (vec![&long], "context"), (vec![&[1, u32::MAX]], "vocabulary")];
    for (inputs, want) in cases {
        let e = m.embed(&inputs, Pooling::Mean).expect_err("a bad input must be refused").to_string();
        assert!(e.contains(want), "{e:?} does not say {want:?}");
    }
    // Hidden states and logits in one batch are refused.
    let mut pool = m.new_pool(16, 2).unwrap();
    let seqs = [
        ingot_model::SeqChunk { tokens: &[1, 2], start: 0, pages: &[0], logits: Logits::Hidden },
        ingot_model::SeqChunk { tokens: &[3], start: 0, pages: &[1], logits: Logits::Last },
    ];
    let e = m.forward_batch(&mut pool, &seqs, None).expect_err("mixed outputs must be refused").to_string();
    assert!(e.contains("not both"), "{e}");
}
