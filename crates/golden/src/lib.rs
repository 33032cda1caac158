//! The golden-reference op protocol: generate cases from fixed seeds (inputs, the CPU
//! reference's outputs, tolerances), write and read the artifact format of
//! `docs/protocol.md`, and check any [`ingot_core::Backend`] against them.

pub mod artifact;
mod cases;
pub mod check;
pub mod gen;
pub mod suite;
pub mod tolerance;

use std::path::PathBuf;

/// Errors of the golden protocol.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags, names or suite.
    #[error("{0}")]
    Usage(String),
    /// An op rejected its parameters or inputs.
    #[error(transparent)]
    Op(#[from] ingot_core::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// An artifact is malformed.
    #[error("{path}: {msg}")]
    Artifact { path: PathBuf, msg: String },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub use artifact::{load, Case, Loaded, Meta};
pub use check::{check_case, check_dir, CaseReport, Status};
pub use gen::{generate, generate_inputs, Flags, FLAGS};
pub use tolerance::{compare, default_tolerance, Tolerance, Verdict};
