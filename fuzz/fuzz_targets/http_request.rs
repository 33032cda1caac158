//! Feeds arbitrary bytes to `ingot serve`'s reading of request bodies: the code of
//! crates/cli/src/serve_api.rs (compiled here from its source; the cli crate is a binary)
//! parses the body as JSON and reads it as a `/v1/completions` and as a
//! `/v1/chat/completions` request. Every body must give a request or a 400 with a message,
//! never a panic. An accepted request must hold what the engine accepts (sampling
//! parameters in range for the vocabulary, token ids inside it, messages of known roles),
//! and fitting it to a context must keep prompt + max_tokens within that context.

#![no_main]

#[allow(dead_code)]
#[path = "../../crates/cli/src/serve_api.rs"]
mod serve_api;

use ingot_engine::SamplingParams;
use libfuzzer_sys::fuzz_target;
use serve_api::{ApiError, GenOptions, MaxTokens, Prompt};

const VOCAB: usize = 1000;

/// The server's sampling defaults for fields a request leaves out (llama.cpp's).
fn defaults() -> SamplingParams {
    SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, ..SamplingParams::default() }
}

/// An error must be a 400 with a message, and its JSON body must serialize.
fn check_error(e: &ApiError) {
    assert_eq!(e.status.as_u16(), 400, "{e:?}");
    assert!(!e.message.is_empty());
    let body = e.body();
    assert_eq!(body["error"]["message"].as_str(), Some(e.message.as_str()));
    assert!(serde_json::to_string(&body).is_ok());
}

/// What every accepted request must satisfy, and fitting it to a few contexts.
fn check_options(opts: &GenOptions, prompt_len: usize) {
    assert!(opts.params.validate_for_vocab(VOCAB).is_ok(), "{opts:?}");
    assert!(opts.stream || !opts.include_usage);
    for context in [1, 64, prompt_len.max(1), prompt_len + 1, 1 << 20] {
        for len in [0, 1, prompt_len, context.saturating_sub(1), context, context + 1] {
            let mut o = opts.clone();
            match o.fit(len, context) {
                Ok(()) => {
                    assert!(len >= 1 && len + o.params.max_tokens <= context, "{len} + {} > {context}", o.params.max_tokens);
                    match opts.max_tokens {
                        MaxTokens::Given(m) => assert_eq!(o.params.max_tokens, m),
                        MaxTokens::UpTo(_) | MaxTokens::Rest => assert!(o.params.max_tokens >= 1),
                    }
                }
                Err(e) => check_error(&e),
            }
        }
        if let Err(e) = serve_api::check_prompt_bytes("prompt", prompt_len, context, 4) {
            check_error(&e);
            assert!(prompt_len > context * 4);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let body = match serve_api::parse_body(data) {
        Ok(b) => b,
        Err(e) => return check_error(&e),
    };
    match serve_api::completion_request(&body, VOCAB, &defaults()) {
        Ok(r) => {
            let len = match &r.prompt {
                Prompt::Text(t) => {
                    assert!(!t.is_empty());
                    t.len()
                }
                Prompt::Tokens(ids) => {
                    assert!(!ids.is_empty() && ids.iter().all(|&id| (id as usize) < VOCAB), "{ids:?}");
                    ids.len()
                }
            };
            check_options(&r.opts, len);
        }
        Err(e) => check_error(&e),
    }
    match serve_api::chat_request(&body, VOCAB, &defaults()) {
        Ok(r) => {
            assert!(!r.messages.is_empty());
            assert!(r.messages.iter().all(|m| ["system", "user", "assistant"].contains(&m.role.as_str())), "{:?}", r.messages);
            check_options(&r.opts, r.messages.iter().map(|m| m.content.len()).sum());
        }
        Err(e) => check_error(&e),
    }
});
