//! Models: tokenizers and chat templates from GGUF metadata, the architectures
//! (llama, qwen2, gemma3), and weight loading.

pub mod chat;
pub mod config;
mod error;
pub mod llm;
pub mod tokenizer;

pub use config::{Arch, Config};
pub use error::{Error, Result};
pub use llm::{KvCache, Linear, Logits, Model};
