//! Helpers of the engine tests: the SmolLM2 model (skipping with a printed reason when it
//! is absent, failing when INGOT_REQUIRE_MODELS=1), reference generations without the
//! engine (one sequence, a plain loop over the model), and draining a request's events.
#![allow(dead_code)]

use ingot_engine::{Event, FinishReason, RequestHandle, Sampler, SamplingParams, StopChecker, Usage};
use ingot_model::tokenizer::{StreamDecoder, Tokenizer, Vocab};
use ingot_model::{Logits, Model, SeqChunk};
use std::path::PathBuf;
use std::sync::Arc;

/// The model and tokenizer, or None (with a SKIP line) when the file is absent. The model
/// runs on INGOT_TEST_BACKEND (default cpu; `gpu:wgpu` etc. in a build with
/// `--features ingot-model/wgpu`).
pub fn smollm2() -> Option<(Arc<Model>, Arc<Tokenizer>)> {
    let dir = std::env::var_os("INGOT_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ingot/models"));
    let p = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !p.is_file() {
        if std::env::var("INGOT_REQUIRE_MODELS").as_deref() == Ok("1") {
            panic!("{} is missing and INGOT_REQUIRE_MODELS=1 (run scripts/fetch_models.sh)", p.display());
        }
        eprintln!("SKIP: {} not found (run scripts/fetch_models.sh); this test checks nothing", p.display());
        return None;
    }
    let backend = std::env::var("INGOT_TEST_BACKEND").unwrap_or_else(|_| "cpu".into());
    let model = Model::load_on(&p, backend.parse().expect("INGOT_TEST_BACKEND")).expect("load model");
    eprintln!("engine tests on {}", model.backend());
    let tok = Tokenizer::new(&Vocab::from_gguf(model.file()).expect("vocab")).expect("tokenizer");
    Some((Arc::new(model), Arc::new(tok)))
}

/// `text` encoded with BOS, as `ingot run` does.
pub fn encode(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, true, false).expect("encode")
}

/// What one request produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
}

/// The reference generation of one request without the engine: its own pool with pages
/// 0, 1, 2, … in order, the whole prompt in one forward pass, then one token a pass;
/// sampling, streamed decoding and stop strings as the engine documents them.
pub fn alone(model: &Model, tok: &Tokenizer, prompt: &[u32], params: &SamplingParams) -> Outcome {
    let mut sampler = Sampler::new(params.clone(), model.config.vocab).expect("params");
    let mut stop = StopChecker::new(&params.stop);
    let mut dec = StreamDecoder::new(true);
    let ps = 16;
    let mut pool = model.new_pool(ps, (prompt.len() + params.max_tokens).div_ceil(ps)).expect("pool");
    let pages: Vec<u32> = (0..pool.num_pages() as u32).collect();
    let (mut input, mut start) = (prompt.to_vec(), 0);
    let (mut tokens, mut text) = (Vec::new(), String::new());
    let mut finish = loop {
        let chunk = SeqChunk { tokens: &input, start, pages: &pages, logits: Logits::Last };
        let logits = model.forward_batch(&mut pool, &[chunk], None).expect("forward");
        start += input.len();
        let next = sampler.sample(&logits, &tokens).expect("sample");
        if tok.is_eog(next) {
            break FinishReason::Eog;
        }
        tokens.push(next);
        let out = stop.push(&dec.push(tok, next).expect("decode"));
        text.push_str(&out.text);
        if out.stopped {
            break FinishReason::Stop;
        }
        if tokens.len() >= params.max_tokens {
            break FinishReason::MaxTokens;
        }
        input = vec![next];
    };
    if finish != FinishReason::Stop {
        let mut out = stop.push(&dec.finish());
        if !out.stopped {
            let end = stop.finish();
            out.text.push_str(&end.text);
            out.stopped = end.stopped;
        }
        if out.stopped {
            finish = FinishReason::Stop;
        }
        text.push_str(&out.text);
    }
    Outcome { tokens, text, finish }
}

/// Reads a request's events to the end; panics on an Error event or a channel closed early.
pub fn drain(h: &mut RequestHandle) -> (Outcome, Usage) {
    let mut tokens = Vec::new();
    let mut text = String::new();
    loop {
        match h.events.blocking_recv() {
            Some(Event::Text { text: t, token_ids, .. }) => {
                tokens.extend(token_ids);
                text.push_str(&t);
            }
            Some(Event::Done { finish, usage }) => {
                // Done is the last event: the engine drops the sender with the sequence.
                assert_eq!(h.events.blocking_recv(), None, "request {}: an event after Done", h.id);
                return (Outcome { tokens, text, finish }, usage);
            }
            Some(Event::Error(e)) => panic!("request {} failed: {e}", h.id),
            None => panic!("request {}: events ended without Done", h.id),
        }
    }
}

/// Greedy sampling of `n` tokens.
pub fn greedy(n: usize) -> SamplingParams {
    SamplingParams { max_tokens: n, ..Default::default() }
}
