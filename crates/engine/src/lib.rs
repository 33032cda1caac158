//! Ingot's engine: turning logits into tokens ([`Sampler`]), stop strings over streamed
//! text ([`StopChecker`]), the generation loop of one sequence ([`generate`]), and the
//! [`Engine`]: many requests at once through continuous batching over a paged KV cache
//! ([`kv::BlockManager`], [`scheduler`]).

mod engine;
mod generate;
pub mod kv;
mod sampler;
pub mod scheduler;
mod stop;

pub use engine::{Engine, EngineConfig, Event, GenRequest, Metrics, RequestHandle, Usage};
pub use generate::{generate, FinishReason, Generation};
pub use sampler::{Sampler, SamplingParams};
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
    /// An engine configuration that cannot work.
    #[error("[engine config] {0}")]
    Config(String),
    /// The engine was shut down (or stopped after an internal error).
    #[error("the engine has stopped")]
    Stopped,
}

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
