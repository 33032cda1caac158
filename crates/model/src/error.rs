//! The error type of the model layer.

/// Errors of loading and running models, tokenizers and chat templates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The GGUF file could not be read, or lacks a key or tensor.
    #[error(transparent)]
    Gguf(#[from] ingot_gguf::Error),
    /// An op rejected its inputs.
    #[error(transparent)]
    Op(#[from] ingot_core::Error),
    /// The model's metadata or tensors do not make a model Ingot can run.
    #[error("[{arch}] {msg}")]
    Model { arch: String, msg: String },
    /// The tokenizer data is unusable, or text/ids cannot be converted.
    #[error("[tokenizer] {0}")]
    Tokenizer(String),
    /// The chat template failed to parse or render.
    #[error("[chat template] {0}")]
    Template(String),
}

/// Result alias of the model layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
