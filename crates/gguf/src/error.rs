//! The one error type of the GGUF layer. Every message starts with the file
//! (`<memory>` for a byte buffer) and gives the facts.

use crate::GgmlType;

/// Errors of reading and writing GGUF files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened, read or mapped.
    #[error("{file}: {error}")]
    Io { file: String, error: std::io::Error },
    /// The bytes are not a well-formed GGUF file: truncated, corrupted or inconsistent.
    #[error("{file}: at byte {offset}: {reason}")]
    Format { file: String, offset: u64, reason: String },
    /// A GGUF version other than 2 or 3.
    #[error("{file}: at byte 4: unsupported GGUF version {version} (Ingot reads versions 2 and 3)")]
    UnsupportedVersion { file: String, version: u32 },
    /// A metadata key that the file does not have.
    #[error("{file}: no metadata key '{key}'")]
    MissingKey { file: String, key: String },
    /// A metadata value of another type than the getter reads.
    #[error("{file}: metadata key '{key}' is {found}, expected {expected}")]
    WrongType { file: String, key: String, expected: &'static str, found: String },
    /// An integer or float metadata value that does not fit the type asked for.
    #[error("{file}: metadata key '{key}' = {value} does not fit in {target}")]
    OutOfRange { file: String, key: String, value: String, target: &'static str },
    /// A tensor name that the file does not have.
    #[error("{file}: no tensor named '{name}'")]
    MissingTensor { file: String, name: String },
    /// A tensor whose ggml type has no Ingot dtype, used as one.
    #[error("{file}: tensor '{name}' has ggml type {ggml_type}, which Ingot cannot compute with")]
    UnsupportedType { file: String, name: String, ggml_type: GgmlType },
    /// [`crate::GgufWriter`] was given something it cannot write.
    #[error("[gguf writer] {0}")]
    Writer(String),
}

impl Error {
    /// True for [`Error::MissingKey`]: lets callers treat an absent optional key apart from a bad one.
    pub fn is_missing_key(&self) -> bool {
        matches!(self, Error::MissingKey { .. })
    }
}

/// Result alias of the GGUF layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Turns a getter's [`Error::MissingKey`] into `Ok(None)`, for optional metadata:
/// `gguf.get_f32("llama.rope.freq_base").optional()?`.
pub trait OptionalKey<T> {
    /// `Ok(Some(v))` for a value, `Ok(None)` for a missing key, `Err` for anything else.
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalKey<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_missing_key() => Ok(None),
            Err(e) => Err(e),
        }
    }
}
