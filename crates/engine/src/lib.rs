//! Ingot's engine: turning logits into tokens ([`Sampler`]), stop strings over streamed
//! text ([`StopChecker`]), and the [`Engine`], the one generation loop of `run`, `chat`
//! and `serve`: requests through continuous batching over a paged KV cache with prefix
//! sharing ([`kv::BlockManager`], [`scheduler`]); a single request is a batch of one.

mod engine;
pub mod kv;
mod sampler;
pub mod scheduler;
mod stop;

pub use engine::{Completion, Engine, EngineConfig, Event, FinishReason, GenRequest, Metrics, RequestHandle, Usage};
pub use sampler::{Sampler, SamplingParams, TokenLogprob, MAX_TOP_LOGPROBS};
pub use stop::{StopChecker, StopOutput};

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A sampling parameter is out of range; `param` is its field name in [`SamplingParams`].
    #[error("[sampling] {param} {msg}")]
    Param { param: &'static str, msg: String },
    /// The sampler got logits it cannot sample from.
    #[error("[sampling] {0}")]
    Logits(String),
    /// The model or tokenizer failed.
    #[error(transparent)]
    Model(#[from] ingot_model::Error),
    /// Writing streamed text failed, or the engine thread could not start.
    #[error("streaming output: {0}")]
    Io(#[from] std::io::Error),
    /// A request the engine cannot run (empty prompt, too long for the context or the KV
    /// page budget, a token id outside the vocabulary).
    #[error("[request] {0}")]
    Request(String),
    /// A request failed while it ran (the message of its `Event::Error`).
    #[error("{0}")]
    Failed(String),
    /// An engine configuration that cannot work.
    #[error("[engine config] {0}")]
    Config(String),
    /// The engine was shut down (or stopped after an internal error).
    #[error("the engine has stopped")]
    Stopped,
}

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
