//! GGUF files: reading (mmap, zero copy) and writing, versions 2 and 3, little-endian.
//!
//! ```no_run
//! use ingot_gguf::{GgufFile, OptionalKey};
//! let f = GgufFile::open("model.gguf")?;
//! let arch = f.architecture()?;
//! let layers = f.get_u32(&format!("{arch}.block_count"))?;
//! let rope_base = f.get_f32(&format!("{arch}.rope.freq_base")).optional()?;
//! let tokens: &[String] = f.get_str_array("tokenizer.ggml.tokens")?;
//! let embd: &[u8] = f.tensor_data("token_embd.weight")?; // borrowed from the map
//! # Ok::<(), ingot_gguf::Error>(())
//! ```
//!
//! A GGUF file is a header (magic `GGUF`, version, tensor count, metadata count), the
//! metadata (key, type, value), the tensor infos (name, dims, ggml type, data offset),
//! padding to the alignment, and the tensor data. The reader checks all of it when the file
//! opens, and never panics or over-allocates on a corrupted or hostile file: every problem is
//! an [`Error`] naming the file, the byte offset and the reason.

mod error;
mod ggml_type;
mod reader;
mod value;
mod writer;

pub use error::{Error, OptionalKey, Result};
pub use ggml_type::GgmlType;
pub use reader::{GgufFile, TensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS, MEMORY_NAME};
pub use value::{Array, Value, ValueType};
pub use writer::{GgufStream, GgufWriter};
