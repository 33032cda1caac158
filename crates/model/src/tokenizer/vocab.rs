//! The tokenizer data as GGUF stores it (`tokenizer.ggml.*`, `tokenizer.chat_template`).

use crate::{Error, Result};

/// Tokenizer data as GGUF stores it under `tokenizer.ggml.*` (+ `tokenizer.chat_template`).
///
/// Nothing here is checked: [`Tokenizer::new`](super::Tokenizer::new) checks it all.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Vocab {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece-style).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer of a `gpt2` model (`"smollm"`, `"qwen2"`,
    /// `"llama-bpe"`, `"gpt-2"`, `"default"`, ...).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: the text of each token id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores`: merge priority of each token (`llama` models).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: `"a b"` pairs, highest priority first (`gpt2` models).
    pub merges: Option<Vec<String>>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`.
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// One metadata value, as [`Vocab::from_metadata`] reads it: a view of a GGUF value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetaValue<'a> {
    /// A bool.
    Bool(bool),
    /// An integer of any width.
    Int(i128),
    /// An f32 or f64.
    Float(f64),
    /// A string.
    Str(&'a str),
    /// An array of strings.
    StrArray(&'a [String]),
    /// An array of f32.
    F32Array(&'a [f32]),
    /// An array of i32.
    I32Array(&'a [i32]),
    /// Any other type, described for error messages (`"an array of 3 u8"`).
    Other(&'a str),
}

impl MetaValue<'_> {
    fn describe(&self) -> String {
        match self {
            MetaValue::Bool(_) => "a bool".into(),
            MetaValue::Int(_) => "an integer".into(),
            MetaValue::Float(_) => "a float".into(),
            MetaValue::Str(_) => "a string".into(),
            MetaValue::StrArray(a) => format!("an array of {} strings", a.len()),
            MetaValue::F32Array(a) => format!("an array of {} f32", a.len()),
            MetaValue::I32Array(a) => format!("an array of {} i32", a.len()),
            MetaValue::Other(d) => (*d).to_string(),
        }
    }
}

fn wrong_type(key: &str, want: &str, got: &MetaValue<'_>) -> Error {
    Error::Tokenizer(format!("metadata key {key} should be {want}, it is {}", got.describe()))
}

impl Vocab {
    /// Reads the `tokenizer.*` keys through `get`, which returns the value stored under a
    /// key (or `None` when the key is absent). Only `tokenizer.ggml.model` and
    /// `tokenizer.ggml.tokens` are required; a key of the wrong type is an error.
    pub fn from_metadata<'a>(get: impl Fn(&str) -> Option<MetaValue<'a>>) -> Result<Vocab> {
        let string = |key: &str| -> Result<Option<String>> {
            match get(key) {
                None => Ok(None),
                Some(MetaValue::Str(s)) => Ok(Some(s.to_string())),
                Some(v) => Err(wrong_type(key, "a string", &v)),
            }
        };
        let id = |key: &str| -> Result<Option<u32>> {
            match get(key) {
                None => Ok(None),
                Some(MetaValue::Int(i)) => {
                    u32::try_from(i).map(Some).map_err(|_| Error::Tokenizer(format!("metadata key {key} = {i} is not a token id")))
                }
                Some(v) => Err(wrong_type(key, "an integer", &v)),
            }
        };
        let flag = |key: &str| -> Result<Option<bool>> {
            match get(key) {
                None => Ok(None),
                Some(MetaValue::Bool(b)) => Ok(Some(b)),
                Some(v) => Err(wrong_type(key, "a bool", &v)),
            }
        };
        let strings = |key: &str| -> Result<Option<Vec<String>>> {
            match get(key) {
                None => Ok(None),
                Some(MetaValue::StrArray(a)) => Ok(Some(a.to_vec())),
                Some(v) => Err(wrong_type(key, "an array of strings", &v)),
            }
        };

        let model = string("tokenizer.ggml.model")?.ok_or_else(|| Error::Tokenizer("metadata lacks tokenizer.ggml.model".into()))?;
        let tokens = strings("tokenizer.ggml.tokens")?.ok_or_else(|| Error::Tokenizer("metadata lacks tokenizer.ggml.tokens".into()))?;
        let scores = match get("tokenizer.ggml.scores") {
            None => None,
            Some(MetaValue::F32Array(a)) => Some(a.to_vec()),
            // llama.cpp also accepts integer scores
            Some(MetaValue::I32Array(a)) => Some(a.iter().map(|&s| s as f32).collect()),
            Some(v) => return Err(wrong_type("tokenizer.ggml.scores", "an array of f32", &v)),
        };
        let token_types = match get("tokenizer.ggml.token_type") {
            None => None,
            Some(MetaValue::I32Array(a)) => Some(a.to_vec()),
            Some(v) => return Err(wrong_type("tokenizer.ggml.token_type", "an array of i32", &v)),
        };
        Ok(Vocab {
            model,
            pre: string("tokenizer.ggml.pre")?,
            tokens,
            scores,
            token_types,
            merges: strings("tokenizer.ggml.merges")?,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            eot: id("tokenizer.ggml.eot_token_id")?,
            add_bos: flag("tokenizer.ggml.add_bos_token")?,
            add_eos: flag("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix")?,
            chat_template: string("tokenizer.chat_template")?,
        })
    }

    /// Reads the tokenizer of a GGUF file (see [`Vocab::from_metadata`]).
    pub fn from_gguf(file: &ingot_gguf::GgufFile) -> Result<Vocab> {
        use ingot_gguf::{Array, Value};
        Vocab::from_metadata(|key| {
            let v = file.get(key)?;
            Some(match v {
                Value::Bool(b) => MetaValue::Bool(*b),
                Value::String(s) => MetaValue::Str(s),
                Value::F32(x) => MetaValue::Float(f64::from(*x)),
                Value::F64(x) => MetaValue::Float(*x),
                Value::Array(Array::String(a)) => MetaValue::StrArray(a),
                Value::Array(Array::F32(a)) => MetaValue::F32Array(a),
                Value::Array(Array::I32(a)) => MetaValue::I32Array(a),
                Value::Array(_) => MetaValue::Other("an array of another type"),
                other => match other.as_integer() {
                    Some(i) => MetaValue::Int(i),
                    None => MetaValue::Other("a value of another type"),
                },
            })
        })
        .map_err(|e| match e {
            Error::Tokenizer(msg) => Error::Tokenizer(format!("{}: {msg}", file.name())),
            e => e,
        })
    }
}
