//! The one error type of the op layer.

use crate::DType;

/// Errors of ops and backends. Messages start with the op name in brackets and
/// give the numbers: `[rms_norm] weight has 4095 elements, hidden_size is 4096`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A shape, dtype, parameter or index that the op cannot accept.
    #[error("[{op}] {msg}")]
    Invalid { op: &'static str, msg: String },
    /// The backend does not implement this op for this dtype; the caller may fall back.
    #[error("[{op}] unsupported on backend {backend} for dtype {dtype}")]
    Unsupported { op: &'static str, backend: String, dtype: DType },
    /// A kernel wrote outside its output (into the sentinel bytes around it, or into an
    /// input): found by a guarded run ([`crate::Device::run_guarded`]).
    #[error("[{op}] {msg}")]
    OutOfBounds { op: &'static str, msg: String },
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Invalid { op, msg: msg.into() }
    }
}

/// Result alias of the op layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Return `Err(Error::Invalid)` with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $op:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::Error::invalid($op, format!($($fmt)+)));
        }
    };
}
