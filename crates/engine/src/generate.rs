//! The generation loop of one sequence: run the new input tokens after what the cache
//! holds, then sample, decode and stream token by token until an end-of-generation token,
//! a stop string, the token budget or a cancel request.

use crate::{Result, Sampler, StopChecker};
use ingot_model::tokenizer::{StreamDecoder, Tokenizer};
use ingot_model::{KvCache, Logits, Model};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-generation token (not part of the output).
    Eog,
    /// The text reached a stop string (not part of the text).
    Stop,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The cancel flag was raised.
    Cancelled,
}

/// What [`generate`] produced.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The sampled tokens, the one that completed a stop string included; never an
    /// end-of-generation token.
    pub tokens: Vec<u32>,
    /// The streamed text, without any stop string.
    pub text: String,
    /// Why it ended.
    pub finish: FinishReason,
    /// How many of `tokens` were run through the model (and so sit in the cache).
    pub cached_tokens: usize,
    /// Time spent on the input tokens.
    pub prompt_time: Duration,
    /// Time spent generating.
    pub gen_time: Duration,
}

/// Runs `input` (the tokens after the `cache.len()` already cached; at least one) and
/// generates up to the sampler's `max_tokens`, passing each piece of text to `on_text` as
/// soon as it is settled. `cancel`, when raised, ends generation after the current token.
pub fn generate(
    model: &Model,
    tok: &Tokenizer,
    cache: &mut KvCache,
    input: &[u32],
    sampler: &mut Sampler,
    cancel: Option<&AtomicBool>,
    mut on_text: impl FnMut(&str) -> std::io::Result<()>,
) -> Result<Generation> {
    let max_tokens = sampler.params().max_tokens;
    let mut stop = StopChecker::new(&sampler.params().stop);
    let mut dec = StreamDecoder::new(true);
    let t0 = Instant::now();
    let mut logits = model.forward(input, cache, Logits::Last, None)?;
    let prompt_time = t0.elapsed();
    let t1 = Instant::now();
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut cached_tokens = 0;
    let cancelled = || cancel.is_some_and(|c| c.load(Ordering::Relaxed));
    let mut finish = loop {
        if tokens.len() >= max_tokens {
            break FinishReason::MaxTokens;
        }
        if cancelled() {
            break FinishReason::Cancelled;
        }
        let next = sampler.sample(&logits, &tokens)?;
        if tok.is_eog(next) {
            break FinishReason::Eog;
        }
        tokens.push(next);
        let out = stop.push(&dec.push(tok, next)?);
        if !out.text.is_empty() {
            on_text(&out.text)?;
            text.push_str(&out.text);
        }
        if out.stopped {
            break FinishReason::Stop;
        }
        if tokens.len() < max_tokens && !cancelled() {
            logits = model.forward(&[next], cache, Logits::Last, None)?;
            cached_tokens += 1;
        }
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
        let rest = out.text;
        if !rest.is_empty() {
            on_text(&rest)?;
            text.push_str(&rest);
        }
    }
    Ok(Generation { tokens, text, finish, cached_tokens, prompt_time, gen_time: t1.elapsed() })
}
