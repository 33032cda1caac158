//! Models: tokenizers and chat templates from GGUF metadata, the architectures
//! (llama, qwen2, gemma3), and weight loading.

mod arena;
pub mod backend;
mod batch;
pub mod chat;
pub mod config;
mod error;
pub mod kv;
pub mod llm;
mod net;
pub mod profile;
pub mod tokenizer;

pub use backend::BackendKind;
pub use config::{Arch, Config, Pooling};
pub use error::{Error, Result};
pub use kv::{KvCache, KvPool};
pub use llm::{Logits, Model, SeqChunk};
