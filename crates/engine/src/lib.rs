//! Ingot's engine: turning logits into tokens ([`Sampler`]), stop strings over streamed
//! text ([`StopChecker`]) and the generation loop of one sequence ([`generate`]).

mod generate;
mod sampler;
mod stop;

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
    /// Writing streamed text failed.
    #[error("streaming output: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
