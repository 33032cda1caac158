//! Hyperparameters of a model, read from GGUF metadata (`{arch}.*` keys).

use crate::{Error, Result};
use ingot_gguf::{GgufFile, OptionalKey};

/// The architectures Ingot runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama family (SmolLM2, Llama 2/3): RMSNorm, GQA, SwiGLU, rotary on adjacent pairs.
    Llama,
    /// Qwen2: Llama with Q/K/V biases and NeoX rotary.
    Qwen2,
    /// Gemma 3: scaled embeddings, QK norm, post-attention/FFN norms, GeGLU, sliding-window layers.
    Gemma3,
    /// GPT-2: learned position embeddings, LayerNorm with bias, fused QKV with bias, a plain
    /// (ungated) GELU MLP with biases, no rotary.
    Gpt2,
}

impl Arch {
    /// The `general.architecture` name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3",
            Arch::Gpt2 => "gpt2",
        }
    }
}

/// Everything the forward pass needs besides the weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub vocab: usize,
    pub context: usize,
    pub eps: f32,
    /// Rotary base of global layers.
    pub rope_base: f32,
    /// Rotary base of sliding-window layers (Gemma 3: 10 000).
    pub rope_base_swa: f32,
    pub rope_dim: usize,
    /// NeoX pairs (i, i + d/2) instead of adjacent pairs.
    pub rope_neox: bool,
    /// Sliding window of local layers, in tokens (keys with pos − j < window are visible).
    pub sliding_window: Option<usize>,
    /// Every `swa_period`-th layer is global, the others use the sliding window.
    pub swa_period: usize,
    pub attn_scale: f32,
    /// Embeddings are multiplied by this (Gemma: √n_embd).
    pub embd_scale: f32,
    /// LayerNorm with a bias (GPT-2) instead of RMSNorm.
    pub layer_norm: bool,
    /// Rotary position encoding on Q and K (every architecture but GPT-2).
    pub rope: bool,
    /// Learned absolute position embeddings added to the token embeddings (GPT-2).
    pub pos_embd: bool,
    /// A gated feed-forward (SwiGLU / GeGLU) rather than up → GELU → down (GPT-2).
    pub gated_ffn: bool,
    /// How embeddings pool the hidden states of a text: the file's `{arch}.pooling_type`
    /// (llama.cpp's numbering), `None` where the file does not say.
    pub pooling: Option<Pooling>,
}

/// How an embedding pools the final hidden states of a text's positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over every position.
    Mean,
    /// The first position's (BERT's CLS token).
    Cls,
    /// The last position's (the only one a causal model lets see the whole text).
    Last,
}

impl Pooling {
    /// `mean`, `cls` or `last`.
    pub fn parse(s: &str) -> Option<Pooling> {
        match s {
            "mean" => Some(Pooling::Mean),
            "cls" => Some(Pooling::Cls),
            "last" => Some(Pooling::Last),
            _ => None,
        }
    }

    /// The name [`Pooling::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Last => "last",
        }
    }
}

impl Config {
    /// Read the config of `file`, checking it for consistency.
    pub fn from_gguf(file: &GgufFile) -> Result<Config> {
        let arch_name = file.architecture()?.to_string();
        let arch = match arch_name.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gemma3" => Arch::Gemma3,
            "gpt2" => Arch::Gpt2,
            other => {
                return Err(Error::Model {
                    arch: other.to_string(),
                    msg: "unsupported architecture (Ingot runs llama, qwen2, gemma3, gpt2)".into(),
                })
            }
        };
        let k = |s: &str| format!("{arch_name}.{s}");
        let n_embd = file.get_usize(&k("embedding_length"))?;
        let n_head = file.get_usize(&k("attention.head_count"))?;
        let n_kv_head = file.get_usize(&k("attention.head_count_kv")).optional()?.unwrap_or(n_head);
        let bad = |msg: String| Error::Model { arch: arch_name.clone(), msg };
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 {
            return Err(bad(format!("head_count {n_head} is not a positive multiple of head_count_kv {n_kv_head}")));
        }
        let head_dim = match file.get_usize(&k("attention.key_length")).optional()? {
            Some(d) => d,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => return Err(bad(format!("embedding_length {n_embd} is not a multiple of head_count {n_head}"))),
        };
        let vocab = match file.get_usize(&k("vocab_size")).optional()? {
            Some(v) => v,
            None => file.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let gpt2 = arch == Arch::Gpt2;
        let rope_dim = file.get_usize(&k("rope.dimension_count")).optional()?.unwrap_or(head_dim);
        if !gpt2 && (rope_dim == 0 || rope_dim % 2 != 0 || rope_dim > head_dim) {
            return Err(bad(format!("rope dimension {rope_dim} must be even and at most head size {head_dim}")));
        }
        let rope_base = file.get_f32(&k("rope.freq_base")).optional()?.unwrap_or(10_000.0);
        let gemma = arch == Arch::Gemma3;
        let cfg = Config {
            arch,
            n_layer: file.get_usize(&k("block_count"))?,
            n_embd,
            n_head,
            n_kv_head,
            head_dim,
            n_ff: file.get_usize(&k("feed_forward_length"))?,
            vocab,
            context: file.get_usize(&k("context_length")).optional()?.unwrap_or(2048),
            eps: if gpt2 {
                file.get_f32(&k("attention.layer_norm_epsilon"))?
            } else {
                file.get_f32(&k("attention.layer_norm_rms_epsilon"))?
            },
            rope_base,
            rope_base_swa: if gemma { 10_000.0 } else { rope_base },
            rope_dim: if gpt2 { head_dim } else { rope_dim },
            rope_neox: arch != Arch::Llama,
            sliding_window: if gemma { file.get_usize(&k("attention.sliding_window")).optional()? } else { None },
            swa_period: if gemma { 6 } else { 1 },
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            embd_scale: if gemma { (n_embd as f32).sqrt() } else { 1.0 },
            layer_norm: gpt2,
            rope: !gpt2,
            pos_embd: gpt2,
            gated_ffn: !gpt2,
            pooling: match file.get_u32(&k("pooling_type")).optional()? {
                // llama.cpp: 0 none, 1 mean, 2 cls, 3 last, 4 rank (a reranker's head).
                None | Some(0) => None,
                Some(1) => Some(Pooling::Mean),
                Some(2) => Some(Pooling::Cls),
                Some(3) => Some(Pooling::Last),
                Some(p) => return Err(bad(format!("pooling_type {p} is not supported (Ingot pools by mean, cls or last)"))),
            },
        };
        if cfg.n_layer == 0 || cfg.n_embd == 0 || cfg.n_ff == 0 || cfg.vocab == 0 {
            return Err(bad("block_count, embedding_length, feed_forward_length and vocabulary must be positive".into()));
        }
        Ok(cfg)
    }

    /// Whether layer `il` attends through the sliding window (Gemma 3: five local layers, then one global).
    pub fn is_swa(&self, il: usize) -> bool {
        self.sliding_window.is_some() && self.swa_period > 1 && (il + 1) % self.swa_period != 0
    }
}
