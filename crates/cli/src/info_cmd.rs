//! `ingot info FILE [--json]`: what a GGUF model file holds, and what it needs in memory.

use anyhow::Result;
use ingot_gguf::{Array, GgmlType, GgufFile, OptionalKey, Value};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arrays longer than this are summarized (length and element type) in `--json`.
const ELIDE_ABOVE: usize = 64;

/// The dtype of the engine's K/V pages (crates/model/src/kv.rs), and its bytes per element.
const KV_DTYPE: &str = "f32";
const KV_BYTES: u64 = 4;

#[derive(clap::Args)]
pub struct InfoArgs {
    /// The GGUF file.
    file: PathBuf,
    /// Print JSON: the summary, every metadata entry (arrays longer than 64 summarized by
    /// length and element type) and every tensor (shape in ggml order, innermost first).
    #[arg(long)]
    json: bool,
    /// With --json: print arrays in full, however long (tokenizer vocabularies included).
    #[arg(long, requires = "json")]
    full_arrays: bool,
}

/// The facts `info` prints, taken from the metadata and the tensor table.
struct Summary {
    architecture: Option<String>,
    name: Option<String>,
    parameters: u64,
    layers: Option<u32>,
    embedding: Option<u32>,
    heads: Option<Vec<u32>>,
    kv_heads: Option<Vec<u32>>,
    key_size: Option<u32>,
    value_size: Option<u32>,
    context: Option<u32>,
    vocab: Option<usize>,
    rope_base: Option<f32>,
    sliding_window: Option<u32>,
    weight_bytes: u64,
    /// (type, tensors, bytes), most bytes first.
    mix: Vec<(GgmlType, usize, u64)>,
}

impl Summary {
    fn of(f: &GgufFile) -> Summary {
        let arch = f.architecture().ok().map(str::to_string);
        let key = |k: &str| format!("{}.{k}", arch.as_deref().unwrap_or("?"));
        // A display tool: a key that is absent or of an unexpected type shows as unknown.
        let u32_of = |k: &str| f.get_u32(&key(k)).optional().ok().flatten();
        let layers = u32_of("block_count");
        // Head counts may be one number or one per layer.
        let per_layer = |k: &str| -> Option<Vec<u32>> {
            match f.get_u32(&key(k)) {
                Ok(n) => Some(vec![n; layers.unwrap_or(1).max(1) as usize]),
                Err(_) => f.get_u32_array(&key(k)).ok().filter(|v| !v.is_empty()),
            }
        };
        let embedding = u32_of("embedding_length");
        let heads = per_layer("attention.head_count");
        let kv_heads = per_layer("attention.head_count_kv").or_else(|| heads.clone());
        let max_heads = heads.as_ref().and_then(|h| h.iter().copied().max()).filter(|&h| h > 0);
        let key_size = u32_of("attention.key_length").or_else(|| Some(embedding? / max_heads?));
        let value_size = u32_of("attention.value_length").or(key_size);

        let mut by_type: BTreeMap<GgmlType, (usize, u64)> = BTreeMap::new();
        for t in f.tensors() {
            let e = by_type.entry(t.ggml_type).or_default();
            e.0 += 1;
            e.1 += t.size;
        }
        let mut mix: Vec<(GgmlType, usize, u64)> = by_type.into_iter().map(|(t, (n, b))| (t, n, b)).collect();
        mix.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));

        Summary {
            name: f.get_str("general.name").ok().map(str::to_string),
            parameters: f.tensors().iter().map(|t| t.numel()).sum(),
            layers,
            embedding,
            heads,
            kv_heads,
            key_size,
            value_size,
            context: u32_of("context_length"),
            vocab: f.get_array("tokenizer.ggml.tokens").ok().map(Array::len),
            rope_base: f.get_f32(&key("rope.freq_base")).ok(),
            sliding_window: u32_of("attention.sliding_window"),
            weight_bytes: f.tensors().iter().map(|t| t.size).sum(),
            mix,
            architecture: arch,
        }
    }

    /// K and V elements for one token over all layers: Σ_layers kv_heads · (key + value size).
    /// Ingot's engine stores them as f32 ([`KV_DTYPE`]); llama.cpp's default is f16.
    fn kv_elements_per_token(&self) -> Option<u64> {
        let kv = self.kv_heads.as_ref()?;
        let per_head = u64::from(self.key_size?) + u64::from(self.value_size?);
        let layers = self.layers? as usize;
        // A per-layer list shorter than the layer count is not trusted.
        if kv.len() < layers {
            return None;
        }
        Some(kv[..layers].iter().map(|&h| u64::from(h) * per_head).sum())
    }

    /// Bytes of K and V for one token in the engine's cache ([`KV_DTYPE`]).
    fn kv_bytes_per_token(&self) -> Option<u64> {
        self.kv_elements_per_token().map(|n| n * KV_BYTES)
    }

    fn kv_note(&self) -> Option<String> {
        self.sliding_window.map(|w| {
            format!(
                "{} has sliding-window layers (window {w}); the full-context figure assumes every layer keeps the whole context",
                self.architecture.as_deref().unwrap_or("this model")
            )
        })
    }
}

pub fn run(args: InfoArgs) -> Result<ExitCode> {
    let f = GgufFile::open(&args.file)?;
    let s = Summary::of(&f);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&f, &s, args.full_arrays))?);
    } else {
        print_text(&f, &s);
    }
    Ok(ExitCode::SUCCESS)
}

fn bytes_human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

fn count_human(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.2}B", n as f64 / 1e9),
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), T::to_string)
}

/// One number when every layer has the same, else `min-max (per layer)`.
fn per_layer_text(v: &Option<Vec<u32>>) -> String {
    let Some(v) = v else { return "-".to_string() };
    let (min, max) = (v.iter().min().copied().unwrap_or(0), v.iter().max().copied().unwrap_or(0));
    if min == max {
        min.to_string()
    } else {
        format!("{min}-{max} (per layer)")
    }
}

fn print_text(f: &GgufFile, s: &Summary) {
    let row = |k: &str, v: String| println!("{k:<16}{v}");
    row("file", format!("{} ({}, {} bytes)", f.name(), bytes_human(f.file_size()), f.file_size()));
    row(
        "GGUF version",
        format!("{} (alignment {}, {} metadata keys, {} tensors)", f.version(), f.alignment(), f.metadata().len(), f.tensors().len()),
    );
    row("architecture", opt(&s.architecture));
    row("name", opt(&s.name));
    row("parameters", format!("{} ({})", count_human(s.parameters), s.parameters));
    row("layers", opt(&s.layers));
    row("embedding", opt(&s.embedding));
    row("heads", per_layer_text(&s.heads));
    row("KV heads", per_layer_text(&s.kv_heads));
    let head = match (s.key_size, s.value_size) {
        (Some(k), Some(v)) if k != v => format!("{k} (key), {v} (value)"),
        (k, _) => opt(&k),
    };
    row("head size", head);
    row("context", opt(&s.context));
    row("vocabulary", opt(&s.vocab));
    row("RoPE base", opt(&s.rope_base));
    row("weights", format!("{} ({} bytes)", bytes_human(s.weight_bytes), s.weight_bytes));
    row("quantization", format!("{} types, most bytes first", s.mix.len()));
    for (t, n, b) in &s.mix {
        let share = if s.weight_bytes > 0 { 100.0 * *b as f64 / s.weight_bytes as f64 } else { 0.0 };
        let plural = if *n == 1 { "tensor " } else { "tensors" };
        println!("  {:<8}{n:>5} {plural}  {:>12}  {share:5.1}%", t.name(), bytes_human(*b));
    }
    match s.kv_bytes_per_token() {
        Some(per_token) => {
            let full = s.context.map(|c| format!("; {} for the full {c}-token context", bytes_human(per_token * u64::from(c))));
            row(&format!("KV cache ({KV_DTYPE})"), format!("{} per token{}", bytes_human(per_token), full.unwrap_or_default()));
            row("", format!("(f16 and bf16, as llama.cpp stores it by default: {} per token)", bytes_human(per_token / 2)));
            if let Some(note) = s.kv_note() {
                row("", format!("({note})"));
            }
        }
        None => row(&format!("KV cache ({KV_DTYPE})"), "-".to_string()),
    }
}

fn json_array(a: &Array, full: bool) -> Json {
    let elided = !full && a.len() > ELIDE_ABOVE;
    let mut o = json!({ "type": "array", "element_type": a.element_type().name(), "length": a.len() });
    if elided {
        o["elided"] = json!(true);
    } else {
        o["value"] = json_array_values(a);
    }
    o
}

/// The elements of an array as a JSON list (nested arrays as nested lists).
fn json_array_values(a: &Array) -> Json {
    match a {
        Array::Array(inner) => Json::Array(inner.iter().map(json_array_values).collect()),
        _ => Json::Array(a.iter().map(|v| json_scalar(&v)).collect()),
    }
}

/// A scalar value as JSON; floats that are not finite become null.
fn json_scalar(v: &Value) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(f64::from(*x)),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(x) => json!(x),
        Value::Array(a) => json_array_values(a),
    }
}

/// True when a per-layer list is not one number repeated.
fn varies(v: &&Vec<u32>) -> bool {
    v.windows(2).any(|w| w[0] != w[1])
}

fn to_json(f: &GgufFile, s: &Summary, full: bool) -> Json {
    let metadata: Vec<Json> = f
        .metadata()
        .iter()
        .map(|(k, v)| match v {
            Value::Array(a) => {
                let mut o = json_array(a, full);
                o["key"] = json!(k);
                o
            }
            v => json!({ "key": k, "type": v.value_type().name(), "value": json_scalar(v) }),
        })
        .collect();
    let tensors: Vec<Json> = f
        .tensors()
        .iter()
        .map(|t| {
            json!({
                "name": t.name, "type": t.ggml_type.name(), "shape": t.dims, "elements": t.numel(),
                "offset": t.offset, "file_offset": t.file_offset, "bytes": t.size,
            })
        })
        .collect();
    let mix: Vec<Json> = s.mix.iter().map(|(t, n, b)| json!({ "type": t.name(), "tensors": n, "bytes": b })).collect();
    let per_token = s.kv_bytes_per_token();
    json!({
        "file": f.name(),
        "file_size": f.file_size(),
        "version": f.version(),
        "alignment": f.alignment(),
        "data_offset": f.data_offset(),
        "architecture": s.architecture,
        "name": s.name,
        "parameters": s.parameters,
        "layers": s.layers,
        "embedding_length": s.embedding,
        "heads": s.heads.as_ref().and_then(|h| h.iter().copied().max()),
        "kv_heads": s.kv_heads.as_ref().and_then(|h| h.iter().copied().max()),
        "heads_per_layer": s.heads.as_ref().filter(varies),
        "kv_heads_per_layer": s.kv_heads.as_ref().filter(varies),
        "head_size": s.key_size,
        "value_head_size": s.value_size,
        "context_length": s.context,
        "vocab_size": s.vocab,
        "rope_freq_base": s.rope_base.map(f64::from),
        "weights_bytes": s.weight_bytes,
        "quantization": mix,
        "kv_cache": {
            "dtype": KV_DTYPE,
            "bytes_per_token": per_token,
            "bytes_per_token_by_dtype": s.kv_elements_per_token().map(|n| json!({"f32": n * 4, "f16": n * 2, "bf16": n * 2})),
            "context_length": s.context,
            "bytes_full_context": per_token.zip(s.context).map(|(p, c)| p * u64::from(c)),
            "sliding_window": s.sliding_window,
            "note": s.kv_note(),
        },
        "metadata": metadata,
        "tensors": tensors,
    })
}
