//! `ingot synth`: a GGUF file of a real model's shape (architecture, hyper-parameters, tensor
//! names and dims as llama.cpp writes them) with seeded random weights and the tokenizer of
//! another GGUF file, for speed work on shapes whose real weights are not at hand.
//!
//! The file is written as a stream: the header with every tensor's info and offset first,
//! then each tensor generated, quantized (in parallel over rows, Ingot's own quantizers) and
//! written in slices of rows, so that memory stays at a few slices whatever the model size.

use anyhow::{anyhow, bail, Context, Result};
use ingot_core::DType;
use ingot_cpu::quant::quantize_row;
use ingot_gguf::{Array, GgmlType, GgufFile, GgufStream, GgufWriter, Value};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct SynthArgs {
    /// The GGUF file whose tokenizer (every `tokenizer.*` key) the new file gets: padded with
    /// unused tokens to the shape's vocabulary, or cut to it when no special or
    /// single-character token lies past the cut.
    #[arg(long, value_name = "FILE.gguf", required_unless_present = "list_shapes")]
    like: Option<PathBuf>,
    /// The model shape (see --list-shapes).
    #[arg(long, value_name = "NAME", required_unless_present = "list_shapes")]
    shape: Option<String>,
    /// Weight format: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, or
    /// llama.cpp's mixes q4_k_m and q5_k_m.
    #[arg(long = "type", value_name = "T", required_unless_present = "list_shapes")]
    ty: Option<String>,
    /// Number of layers (default: the shape's), 1 to 1000.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    layers: Option<u32>,
    /// Seed of the random weights: the same seed, shape and type give the same file.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the model.
    #[arg(long, value_name = "OUT.gguf", required_unless_present = "list_shapes")]
    out: Option<PathBuf>,
    /// Print the table of shapes and exit.
    #[arg(long)]
    list_shapes: bool,
}

/// The llama 3 rotary scaling (frequency factors in a `rope_freqs.weight` tensor, as
/// llama.cpp's converter writes them for Llama 3.1 and 3.2).
#[derive(Clone, Copy, PartialEq, Debug)]
struct Llama3Rope {
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    original_context: f32,
}

/// One model shape: what llama.cpp's converter writes for it.
struct Shape {
    name: &'static str,
    arch: &'static str,
    layers: u32,
    hidden: u32,
    ffn: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    vocab: u32,
    context: u32,
    rope_theta: f32,
    eps: f32,
    /// No `output.weight`: the output projection is `token_embd.weight`.
    tied: bool,
    /// Gemma 3: the sliding window of the local layers (every 6th layer is global).
    sliding_window: Option<u32>,
    /// Gemma 3 4B: linear rotary scaling of the global layers (`rope.scaling.*` keys).
    linear_rope_scaling: Option<f32>,
    llama3_rope: Option<Llama3Rope>,
    /// Where the values are from.
    source: &'static str,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "smollm2-135m",
        arch: "llama",
        layers: 30,
        hidden: 576,
        ffn: 1536,
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        vocab: 49152,
        context: 8192,
        rope_theta: 100_000.0,
        eps: 1e-5,
        tied: true,
        sliding_window: None,
        linear_rope_scaling: None,
        llama3_rope: None,
        source: "SmolLM2-135M-Instruct.Q4_1.gguf (the real file)",
    },
    Shape {
        name: "llama3.2-1b",
        arch: "llama",
        layers: 16,
        hidden: 2048,
        ffn: 8192,
        heads: 32,
        kv_heads: 8,
        head_dim: 64,
        vocab: 128256,
        context: 131072,
        rope_theta: 500_000.0,
        eps: 1e-5,
        tied: true,
        sliding_window: None,
        linear_rope_scaling: None,
        llama3_rope: Some(Llama3Rope { factor: 32.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_context: 8192.0 }),
        source: "meta-llama/Llama-3.2-1B config.json (from memory)",
    },
    Shape {
        name: "llama3-8b",
        arch: "llama",
        layers: 32,
        hidden: 4096,
        ffn: 14336,
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        vocab: 128256,
        context: 8192,
        rope_theta: 500_000.0,
        eps: 1e-5,
        tied: false,
        sliding_window: None,
        linear_rope_scaling: None,
        llama3_rope: None,
        source: "meta-llama/Meta-Llama-3-8B config.json (from memory; Llama 3, not 3.1: no rope scaling)",
    },
    Shape {
        name: "mistral-7b",
        arch: "llama",
        layers: 32,
        hidden: 4096,
        ffn: 14336,
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        vocab: 32768,
        context: 32768,
        rope_theta: 1_000_000.0,
        eps: 1e-5,
        tied: false,
        sliding_window: None,
        linear_rope_scaling: None,
        llama3_rope: None,
        source: "mistralai/Mistral-7B-v0.3 config.json (from memory)",
    },
    Shape {
        name: "qwen2.5-0.5b",
        arch: "qwen2",
        layers: 24,
        hidden: 896,
        ffn: 4864,
        heads: 14,
        kv_heads: 2,
        head_dim: 64,
        vocab: 151936,
        context: 32768,
        rope_theta: 1_000_000.0,
        eps: 1e-6,
        tied: true,
        sliding_window: None,
        linear_rope_scaling: None,
        llama3_rope: None,
        source: "Qwen/Qwen2.5-0.5B config.json (from memory); sizes as in qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    },
    Shape {
        name: "qwen2.5-7b",
        arch: "qwen2",
        layers: 28,
        hidden: 3584,
        ffn: 18944,
        heads: 28,
        kv_heads: 4,
        head_dim: 128,
        vocab: 152064,
        context: 32768,
        rope_theta: 1_000_000.0,
        eps: 1e-6,
        tied: false,
        sliding_window: None,
        linear_rope_scaling: None,
        llama3_rope: None,
        source: "Qwen/Qwen2.5-7B-Instruct config.json (from memory)",
    },
    Shape {
        name: "gemma3-270m",
        arch: "gemma3",
        layers: 18,
        hidden: 640,
        ffn: 2048,
        heads: 4,
        kv_heads: 1,
        head_dim: 256,
        vocab: 262144,
        context: 32768,
        rope_theta: 1_000_000.0,
        eps: 1e-6,
        tied: true,
        sliding_window: Some(512),
        linear_rope_scaling: None,
        llama3_rope: None,
        source: "gemma-3-270m-q4_k_m.gguf (the real file)",
    },
    Shape {
        name: "gemma3-4b",
        arch: "gemma3",
        layers: 34,
        hidden: 2560,
        ffn: 10240,
        heads: 8,
        kv_heads: 4,
        head_dim: 256,
        vocab: 262144,
        context: 131072,
        rope_theta: 1_000_000.0,
        eps: 1e-6,
        tied: true,
        sliding_window: Some(1024),
        linear_rope_scaling: Some(8.0),
        llama3_rope: None,
        source:
            "google/gemma-3-4b-it text_config (from memory); vocab: the tokenizer's 262144, as llama.cpp's converter cuts the embedding",
    },
];

/// What `--type` asks for.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Target {
    /// Every matrix in this format (K-quants fall back as llama.cpp does on rows that are not
    /// whole 256-blocks).
    Uniform(DType),
    /// llama.cpp's Q4_K_M (`Q4_K`) or Q5_K_M (`Q5_K`) mix.
    Mix(DType),
}

const TYPES: &[(&str, Target, u32)] = &[
    // (name, target, llama.cpp's general.file_type)
    ("f32", Target::Uniform(DType::F32), 0),
    ("f16", Target::Uniform(DType::F16), 1),
    ("bf16", Target::Uniform(DType::BF16), 32),
    ("q8_0", Target::Uniform(DType::Q8_0), 7),
    ("q4_0", Target::Uniform(DType::Q4_0), 2),
    ("q4_1", Target::Uniform(DType::Q4_1), 3),
    ("q5_0", Target::Uniform(DType::Q5_0), 8),
    ("q5_1", Target::Uniform(DType::Q5_1), 9),
    ("q4_k", Target::Uniform(DType::Q4_K), 14),
    ("q5_k", Target::Uniform(DType::Q5_K), 16),
    ("q6_k", Target::Uniform(DType::Q6_K), 18),
    ("q4_k_m", Target::Mix(DType::Q4_K), 15),
    ("q5_k_m", Target::Mix(DType::Q5_K), 17),
];

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third one
/// in between.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as isize - (n / 8) as isize).rem_euclid(3) == 2
}

/// llama.cpp's fallback for a K-quant whose rows are not whole 256-blocks
/// (`llama_tensor_get_type`: Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0).
fn fit_rows(t: DType, cols: u64) -> DType {
    if cols % t.block_size() as u64 == 0 {
        return t;
    }
    match t {
        DType::Q4_K => DType::Q5_0,
        DType::Q5_K => DType::Q5_1,
        DType::Q6_K => DType::Q8_0,
        other => other,
    }
}

/// How a tensor's values are made.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Fill {
    /// Seeded random values, normal-ish with standard deviation 0.02.
    Random,
    /// All equal (norm weights 1, biases 0).
    Const(f32),
    /// `rope_freqs.weight`: llama 3 frequency factors.
    RopeFreqs(Llama3Rope),
}

struct Planned {
    name: String,
    dims: Vec<u64>,
    fill: Fill,
    dtype: DType,
}

/// The tensors of `shape` with `layers` layers, in file order, with their formats.
fn plan(shape: &Shape, layers: usize, target: Target) -> Result<Vec<Planned>> {
    let (h, hd) = (u64::from(shape.hidden), u64::from(shape.head_dim));
    let (q, kv, ff, vocab) = (u64::from(shape.heads) * hd, u64::from(shape.kv_heads) * hd, u64::from(shape.ffn), u64::from(shape.vocab));
    let mut t: Vec<(String, Vec<u64>, Fill)> = Vec::new();
    let mut add = |name: String, dims: &[u64], fill: Fill| t.push((name, dims.to_vec(), fill));
    add("token_embd.weight".into(), &[h, vocab], Fill::Random);
    if let Some(r) = shape.llama3_rope {
        add("rope_freqs.weight".into(), &[hd / 2], Fill::RopeFreqs(r));
    }
    for i in 0..layers {
        let b = |s: &str| format!("blk.{i}.{s}");
        add(b("attn_norm.weight"), &[h], Fill::Const(1.0));
        add(b("attn_q.weight"), &[h, q], Fill::Random);
        add(b("attn_k.weight"), &[h, kv], Fill::Random);
        add(b("attn_v.weight"), &[h, kv], Fill::Random);
        if shape.arch == "qwen2" {
            add(b("attn_q.bias"), &[q], Fill::Const(0.0));
            add(b("attn_k.bias"), &[kv], Fill::Const(0.0));
            add(b("attn_v.bias"), &[kv], Fill::Const(0.0));
        }
        if shape.arch == "gemma3" {
            // Gemma's norms compute x * (1 + w); llama.cpp's converter stores 1 + w, so 1 is
            // the identity here too (the real gemma-3-270m file's norms average about 1 to 26).
            add(b("attn_q_norm.weight"), &[hd], Fill::Const(1.0));
            add(b("attn_k_norm.weight"), &[hd], Fill::Const(1.0));
        }
        add(b("attn_output.weight"), &[q, h], Fill::Random);
        if shape.arch == "gemma3" {
            add(b("post_attention_norm.weight"), &[h], Fill::Const(1.0));
        }
        add(b("ffn_norm.weight"), &[h], Fill::Const(1.0));
        add(b("ffn_gate.weight"), &[h, ff], Fill::Random);
        add(b("ffn_up.weight"), &[h, ff], Fill::Random);
        add(b("ffn_down.weight"), &[ff, h], Fill::Random);
        if shape.arch == "gemma3" {
            add(b("post_ffw_norm.weight"), &[h], Fill::Const(1.0));
        }
    }
    add("output_norm.weight".into(), &[h], Fill::Const(1.0));
    if !shape.tied {
        add("output.weight".into(), &[h, vocab], Fill::Random);
    }
    t.into_iter()
        .map(|(name, dims, fill)| {
            let dtype = tensor_type(&name, &dims, target, layers, shape.tied);
            if dims[0] % dtype.block_size() as u64 != 0 {
                bail!("tensor {name} with rows of {} values cannot be stored as {dtype} (blocks of {})", dims[0], dtype.block_size());
            }
            Ok(Planned { name, dims, fill, dtype })
        })
        .collect()
}

/// The format of one tensor: F32 for vectors; the target for matrices, with llama.cpp's
/// Q4_K_M / Q5_K_M rules for the mixes (`llama_tensor_get_type`).
fn tensor_type(name: &str, dims: &[u64], target: Target, layers: usize, tied: bool) -> DType {
    if dims.len() < 2 {
        return DType::F32;
    }
    let layer = name.strip_prefix("blk.").and_then(|s| s.split('.').next()).and_then(|s| s.parse::<usize>().ok());
    let t = match target {
        Target::Uniform(t) => t,
        Target::Mix(base) => {
            // The output projection (token_embd when it is tied) gets Q6_K.
            let output = name == "output.weight" || (tied && name == "token_embd.weight");
            let more_bits =
                (name.ends_with(".attn_v.weight") || name.ends_with(".ffn_down.weight")) && layer.is_some_and(|i| use_more_bits(i, layers));
            if output || more_bits {
                DType::Q6_K
            } else {
                base
            }
        }
    };
    fit_rows(t, dims[0])
}

/// The llama 3 frequency factors, as llama.cpp's converter computes them (`rope_freqs.weight`).
fn llama3_rope_factors(r: Llama3Rope, theta: f32, head_dim: u64) -> Vec<f32> {
    let low_wavelen = r.original_context / r.low_freq_factor;
    let high_wavelen = r.original_context / r.high_freq_factor;
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f32 / head_dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                r.factor
            } else {
                let smooth = (r.original_context / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
                1.0 / ((1.0 - smooth) / r.factor + smooth)
            }
        })
        .collect()
}

/// Values per random chunk: each chunk of rows has its own generator (seeded from the seed,
/// the tensor's index and the chunk's index), so that the values do not depend on the number
/// of threads or on the format.
const CHUNK_VALUES: u64 = 1 << 18;
/// Chunks generated and quantized in parallel before they are written.
const CHUNKS_PER_WRITE: u64 = 64;

/// Standard deviation of the random matrices (the usual initialiser's 0.02).
const STD: f32 = 0.02;

/// `n` normal-ish values (the sum of four uniforms, scaled to std 0.02; bounded by ±0.07).
fn random_values(seed: u64, tensor: u64, chunk: u64, n: usize) -> Vec<f32> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&tensor.to_le_bytes());
    key[16..24].copy_from_slice(&chunk.to_le_bytes());
    key[24..].copy_from_slice(b"ingsynth");
    let mut rng = ChaCha8Rng::from_seed(key);
    // Sum of four U(0, 1): mean 2, variance 1/3.
    let scale = STD * 3f32.sqrt() / 65536.0;
    (0..n)
        .map(|_| {
            let r = rng.next_u64();
            let s = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
            (s as f32 - 2.0 * 65536.0) * scale
        })
        .collect()
}

/// Generates, quantizes and writes tensor `index` in slices of rows.
fn write_tensor<W: Write>(s: &mut GgufStream<W>, t: &Planned, index: u64, seed: u64, shape: &Shape, progress: &mut Progress) -> Result<()> {
    let cols = t.dims[0];
    let numel: u64 = t.dims.iter().product();
    match t.fill {
        Fill::Const(v) => s.write_data(&quantize_row(t.dtype, &vec![v; numel as usize])?)?,
        Fill::RopeFreqs(r) => s.write_data(&quantize_row(t.dtype, &llama3_rope_factors(r, shape.rope_theta, cols * 2))?)?,
        Fill::Random => {
            let rows_per_chunk = (CHUNK_VALUES / cols).max(1);
            let chunk_values = rows_per_chunk * cols;
            let chunks = numel.div_ceil(chunk_values);
            let mut c = 0;
            while c < chunks {
                let end = (c + CHUNKS_PER_WRITE).min(chunks);
                let parts: Vec<Vec<u8>> = (c..end)
                    .into_par_iter()
                    .map(|k| {
                        let n = chunk_values.min(numel - k * chunk_values) as usize;
                        quantize_row(t.dtype, &random_values(seed, index, k, n)).with_context(|| format!("quantizing {}", t.name))
                    })
                    .collect::<Result<_>>()?;
                for p in &parts {
                    s.write_data(p)?;
                }
                progress.tick(s);
                c = end;
            }
        }
    }
    Ok(())
}

struct Progress {
    start: Instant,
    last: Instant,
    total_tensors: usize,
    total_bytes: u64,
    tty: bool,
}

impl Progress {
    fn tick<W: Write>(&mut self, s: &GgufStream<W>) {
        if self.last.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last = Instant::now();
        let end = if self.tty { "\r" } else { "\n" };
        eprint!(
            "ingot synth: {}/{} tensors, {:.0}/{:.0} MB, {:.0} s{end}",
            s.tensors_done(),
            self.total_tensors,
            s.bytes_written() as f64 / 1e6,
            self.total_bytes as f64 / 1e6,
            self.start.elapsed().as_secs_f64()
        );
    }
}

fn list_shapes() -> String {
    let mut o =
        String::from("shape          arch    layers hidden   ffn    heads kv  head  vocab   context  rope theta  rms eps  tied  notes\n");
    for s in SHAPES {
        let mut notes = Vec::new();
        if s.arch == "qwen2" {
            notes.push("q/k/v biases".to_string());
        }
        if let Some(w) = s.sliding_window {
            notes.push(format!("sliding window {w}, every 6th layer global, q/k norms, post norms"));
        }
        if let Some(f) = s.linear_rope_scaling {
            notes.push(format!("linear rope scaling {f}"));
        }
        if let Some(r) = s.llama3_rope {
            notes.push(format!("llama3 rope scaling {} (rope_freqs.weight)", r.factor));
        }
        notes.push(format!("from {}", s.source));
        o += &format!(
            "{:<14} {:<7} {:>6} {:>6} {:>6} {:>5} {:>3} {:>5} {:>7} {:>8}  {:>10}  {:>7}  {:<4}  {}\n",
            s.name,
            s.arch,
            s.layers,
            s.hidden,
            s.ffn,
            s.heads,
            s.kv_heads,
            s.head_dim,
            s.vocab,
            s.context,
            s.rope_theta,
            format!("{:e}", s.eps),
            if s.tied { "yes" } else { "no" },
            notes.join("; ")
        );
    }
    o
}

fn shape_names() -> String {
    SHAPES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
}

/// Why cutting the tokenizer to its first `vocab` tokens would break it, if it would: a
/// special token id (`tokenizer.ggml.*_token_id`) past the end, a control or user-defined
/// token past the end, or a single-character token or SentencePiece byte token (`<0xNN>`)
/// past the end (the alphabet that any text falls back to).
fn cut_problem(like: &GgufFile, tokens: &[String], vocab: usize) -> Option<String> {
    for (k, v) in like.metadata() {
        if k.starts_with("tokenizer.ggml.") && k.ends_with("_token_id") {
            if let Some(id) = v.as_integer().filter(|&id| id >= vocab as i128) {
                return Some(format!("{k} {id}"));
            }
        }
    }
    if let Ok(types) = like.get_i32_array("tokenizer.ggml.token_type") {
        if let Some(i) = (vocab..types.len()).find(|&i| types[i] == 3 || types[i] == 4) {
            return Some(format!("special token {i} {:?}", tokens.get(i).map_or("", |t| t.as_str())));
        }
    }
    let alphabet = |t: &str| t.chars().count() == 1 || (t.len() == 6 && t.starts_with("<0x") && t.ends_with('>'));
    (vocab..tokens.len()).find(|&i| alphabet(&tokens[i])).map(|i| format!("the single-character token {i} {:?}", tokens[i]))
}

/// Whether merge "a b" (split as llama.cpp does: at the first space after the first byte)
/// has both parts and their concatenation among the kept tokens.
fn merge_fits(m: &str, kept: &std::collections::HashSet<&str>) -> bool {
    let at = m.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(i, _)| i);
    at.is_some_and(|i| {
        let (a, b) = (&m[..i], &m[i + 1..]);
        kept.contains(a) && kept.contains(b) && kept.contains(format!("{a}{b}").as_str())
    })
}

/// The `--like` file's tokenizer keys with `vocab` tokens: padded with unused tokens when it
/// has fewer, cut when it has more and [`cut_problem`] finds nothing against it (merges that
/// need a cut token are dropped), refused otherwise.
fn tokenizer_keys(like: &GgufFile, path: &Path, vocab: usize, shape: &str) -> Result<Vec<(String, Value)>> {
    let tokens = like.get_str_array("tokenizer.ggml.tokens").map_err(|e| anyhow!("--like {}: no tokenizer ({e})", path.display()))?;
    let n = tokens.len();
    let mut kept: Option<std::collections::HashSet<&str>> = None;
    if n > vocab {
        if let Some(problem) = cut_problem(like, tokens, vocab) {
            bail!(
                "--like {}: its tokenizer has {n} tokens, more than the {vocab} of shape {shape}, and cutting it would lose \
                 {problem}; use a tokenizer with at most {vocab} tokens",
                path.display()
            );
        }
        kept = Some(tokens[..vocab].iter().map(String::as_str).collect());
    }
    let mut keys = Vec::new();
    for (k, v) in like.metadata() {
        if !k.starts_with("tokenizer.") {
            continue;
        }
        let v = match (k.as_str(), v) {
            ("tokenizer.ggml.tokens", Value::Array(Array::String(t))) => {
                let mut t = t.clone();
                t.truncate(vocab);
                t.extend((n..vocab).map(|i| format!("<synth_pad_{i}>")));
                Value::Array(Array::String(t))
            }
            ("tokenizer.ggml.scores", Value::Array(Array::F32(s))) if s.len() == n => {
                let mut s = s.clone();
                s.resize(vocab, 0.0);
                Value::Array(Array::F32(s))
            }
            ("tokenizer.ggml.token_type", Value::Array(Array::I32(s))) if s.len() == n => {
                let mut s = s.clone();
                // llama.cpp's LLAMA_TOKEN_TYPE_UNUSED.
                s.resize(vocab, 5);
                Value::Array(Array::I32(s))
            }
            ("tokenizer.ggml.scores" | "tokenizer.ggml.token_type", v) => {
                bail!("--like {}: {k} is {} with another length than the {n} tokens", path.display(), v.describe())
            }
            ("tokenizer.ggml.merges", Value::Array(Array::String(m))) => match &kept {
                Some(kept) => Value::Array(Array::String(m.iter().filter(|m| merge_fits(m, kept)).cloned().collect())),
                None => v.clone(),
            },
            _ => v.clone(),
        };
        keys.push((k.clone(), v));
    }
    if n > vocab {
        let merges = |keys: &[(String, Value)]| match keys.iter().find(|(k, _)| k == "tokenizer.ggml.merges") {
            Some((_, Value::Array(a))) => a.len(),
            _ => 0,
        };
        let before = like.get_str_array("tokenizer.ggml.merges").map_or(0, <[String]>::len);
        eprintln!(
            "ingot synth: note: the tokenizer of {} cut from {n} to the {vocab} tokens of {shape} (no special or \
             single-character token past the end; {} of {before} merges kept)",
            path.display(),
            merges(&keys)
        );
    }
    Ok(keys)
}

pub fn run(a: SynthArgs) -> Result<ExitCode> {
    if a.list_shapes {
        print!("{}", list_shapes());
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(like_path), Some(shape_name), Some(ty), Some(out)) = (a.like, a.shape, a.ty, a.out) else {
        bail!("--like, --shape, --type and --out are required");
    };
    let shape = SHAPES
        .iter()
        .find(|s| s.name.eq_ignore_ascii_case(shape_name.trim()))
        .ok_or_else(|| anyhow!("--shape {shape_name:?} is not a known shape; known: {}", shape_names()))?;
    let &(ty_name, target, file_type) = TYPES
        .iter()
        .find(|(n, ..)| n.eq_ignore_ascii_case(ty.trim()))
        .ok_or_else(|| anyhow!("--type {ty:?} is not one of {}", TYPES.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")))?;
    let layers = a.layers.unwrap_or(shape.layers) as usize;
    if out.is_dir() {
        bail!("--out {} is a directory", out.display());
    }
    if out == like_path || (out.exists() && out.canonicalize().ok() == like_path.canonicalize().ok()) {
        bail!("--out {} is the --like file", out.display());
    }
    let like = GgufFile::open(&like_path).with_context(|| format!("--like {}", like_path.display()))?;
    let tokenizer = tokenizer_keys(&like, &like_path, shape.vocab as usize, shape.name)?;

    let arch = shape.arch;
    let mut w = GgufWriter::new();
    w.set("general.architecture", arch)
        .set("general.type", "model")
        .set("general.name", format!("synth {} ({} layers, random weights)", shape.name, layers))
        .set("general.file_type", file_type)
        .set("general.quantization_version", 2u32)
        .set("ingot.synth.shape", shape.name)
        .set("ingot.synth.seed", a.seed)
        .set("ingot.synth.type", ty_name);
    let k = |s: &str| format!("{arch}.{s}");
    w.set(&k("block_count"), layers as u32)
        .set(&k("context_length"), shape.context)
        .set(&k("embedding_length"), shape.hidden)
        .set(&k("feed_forward_length"), shape.ffn)
        .set(&k("attention.head_count"), shape.heads)
        .set(&k("attention.head_count_kv"), shape.kv_heads)
        .set(&k("rope.freq_base"), shape.rope_theta)
        .set(&k("attention.layer_norm_rms_epsilon"), shape.eps);
    match arch {
        "llama" => {
            w.set(&k("vocab_size"), shape.vocab).set(&k("rope.dimension_count"), shape.head_dim);
        }
        "gemma3" => {
            w.set(&k("attention.key_length"), shape.head_dim).set(&k("attention.value_length"), shape.head_dim);
            if let Some(sw) = shape.sliding_window {
                w.set(&k("attention.sliding_window"), sw);
            }
            if let Some(f) = shape.linear_rope_scaling {
                w.set(&k("rope.scaling.type"), "linear").set(&k("rope.scaling.factor"), f);
            }
        }
        _ => {}
    }
    for (key, v) in tokenizer {
        w.set(&key, v);
    }
    let tensors = plan(shape, layers, target)?;
    for t in &tensors {
        w.declare_tensor(&t.name, GgmlType::from_dtype(t.dtype).context("no ggml type")?, &t.dims)?;
    }
    let total_bytes = w.data_size()?;

    // Written beside the output and renamed at the end: a failed run leaves no partial model.
    let mut partial = out.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let result = (|| -> Result<()> {
        let mut s = w.stream_file(&partial).with_context(|| format!("--out {}: cannot write", out.display()))?;
        let start = Instant::now();
        let mut progress = Progress {
            start,
            last: start,
            total_tensors: tensors.len(),
            total_bytes: total_bytes + s.bytes_written(),
            tty: std::io::stderr().is_terminal(),
        };
        for (i, t) in tensors.iter().enumerate() {
            write_tensor(&mut s, t, i as u64, a.seed, shape, &mut progress).with_context(|| format!("writing {}", t.name))?;
        }
        let written = s.bytes_written();
        s.finish().with_context(|| format!("--out {}", out.display()))?;
        std::fs::rename(&partial, &out).with_context(|| format!("--out {}: cannot rename {} to it", out.display(), partial.display()))?;
        let mut mix: Vec<(DType, usize)> = Vec::new();
        for t in &tensors {
            match mix.iter_mut().find(|(d, _)| *d == t.dtype) {
                Some(m) => m.1 += 1,
                None => mix.push((t.dtype, 1)),
            }
        }
        let mix = mix.iter().map(|(d, n)| format!("{n} {d}")).collect::<Vec<_>>().join(", ");
        eprintln!(
            "ingot synth: wrote {} ({} {ty_name}, {layers} layers, {} tensors: {mix}; {:.1} MB in {:.1} s)",
            out.display(),
            shape.name,
            tensors.len(),
            written as f64 / 1e6,
            start.elapsed().as_secs_f64()
        );
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(shape: &str, target: Target) -> Vec<(String, DType)> {
        let s = SHAPES.iter().find(|s| s.name == shape).unwrap();
        plan(s, s.layers as usize, target).unwrap().into_iter().map(|t| (t.name, t.dtype)).collect()
    }

    fn ty(t: &[(String, DType)], name: &str) -> DType {
        t.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1
    }

    #[test]
    fn q4_k_m_follows_llama_cpp_on_llama3_8b() {
        let t = types("llama3-8b", Target::Mix(DType::Q4_K));
        assert_eq!(t.len(), 2 + 32 * 9 + 1);
        assert_eq!(ty(&t, "output.weight"), DType::Q6_K);
        assert_eq!(ty(&t, "token_embd.weight"), DType::Q4_K);
        assert_eq!(ty(&t, "output_norm.weight"), DType::F32);
        // 32 layers: 0-3 and 28-31, and 4 + 3k + 2 (6, 9, ..., 27).
        let more: Vec<usize> = (0..32).filter(|&i| ty(&t, &format!("blk.{i}.attn_v.weight")) == DType::Q6_K).collect();
        assert_eq!(more, [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
        for i in 0..32 {
            assert_eq!(ty(&t, &format!("blk.{i}.ffn_down.weight")), ty(&t, &format!("blk.{i}.attn_v.weight")));
            assert_eq!(ty(&t, &format!("blk.{i}.attn_q.weight")), DType::Q4_K);
            assert_eq!(ty(&t, &format!("blk.{i}.ffn_up.weight")), DType::Q4_K);
        }
        let t = types("llama3-8b", Target::Mix(DType::Q5_K));
        assert_eq!(ty(&t, "token_embd.weight"), DType::Q5_K);
        assert_eq!(ty(&t, "blk.5.attn_v.weight"), DType::Q5_K);
        assert_eq!(ty(&t, "blk.6.attn_v.weight"), DType::Q6_K);
    }

    #[test]
    fn k_quants_fall_back_on_rows_of_partial_blocks() {
        // gemma3-270m (640 wide, 18 layers) as the real q4_k_m file has it: tied token_embd
        // Q6_K -> Q8_0, attn_v of layer 0 Q6_K -> Q8_0, attn_q Q4_K -> Q5_0, ffn_down (2048
        // wide rows) Q6_K in layers 0, 1 and Q4_K in layer 2.
        let t = types("gemma3-270m", Target::Mix(DType::Q4_K));
        assert_eq!(ty(&t, "token_embd.weight"), DType::Q8_0);
        assert_eq!(ty(&t, "blk.0.attn_v.weight"), DType::Q8_0);
        assert_eq!(ty(&t, "blk.2.attn_v.weight"), DType::Q5_0);
        assert_eq!(ty(&t, "blk.0.attn_q.weight"), DType::Q5_0);
        assert_eq!(ty(&t, "blk.0.attn_output.weight"), DType::Q4_K);
        assert_eq!(ty(&t, "blk.1.ffn_down.weight"), DType::Q6_K);
        assert_eq!(ty(&t, "blk.2.ffn_down.weight"), DType::Q4_K);
        assert_eq!(ty(&t, "blk.0.attn_q_norm.weight"), DType::F32);
        let t = types("smollm2-135m", Target::Uniform(DType::Q5_K));
        assert_eq!(ty(&t, "blk.0.attn_q.weight"), DType::Q5_1);
        assert_eq!(ty(&t, "blk.0.ffn_down.weight"), DType::Q5_K);
    }

    #[test]
    fn every_shape_plans_in_every_type() {
        for s in SHAPES {
            for &(_, target, _) in TYPES {
                let p = plan(s, s.layers as usize, target).unwrap();
                assert!(p.iter().all(|t| t.dims[0] % t.dtype.block_size() as u64 == 0), "{} {target:?}", s.name);
            }
            assert_eq!(s.heads % s.kv_heads, 0, "{}", s.name);
        }
    }

    #[test]
    fn llama3_rope_factors_match_the_converter() {
        let r = SHAPES.iter().find(|s| s.name == "llama3.2-1b").unwrap();
        let f = llama3_rope_factors(r.llama3_rope.unwrap(), r.rope_theta, 64);
        assert_eq!(f.len(), 32);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[31], 32.0);
        assert!(f.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn random_values_are_normal_ish_and_seeded() {
        let v = random_values(1, 2, 3, 100_000);
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let std = (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32).sqrt();
        assert!(mean.abs() < 1e-3 && (std - 0.02).abs() < 1e-3, "mean {mean} std {std}");
        assert_eq!(v, random_values(1, 2, 3, 100_000));
        assert_ne!(v, random_values(2, 2, 3, 100_000));
    }
}
