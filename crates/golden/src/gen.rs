//! Case generation: op flags (the seed protocol's command-line vocabulary) to op
//! parameters, inputs drawn from a seeded ChaCha8 stream, outputs from the CPU reference.
//!
//! Inputs are chosen to exercise the op and to keep comparisons well-posed: ties in
//! top-k inputs, NaN/Inf among element-wise inputs, and for ops whose result is a
//! discrete choice (top-p, min-p, sampling) no value within a small margin of a
//! decision boundary, so a correct backend in f32 cannot land on the other side.

use crate::artifact::{check_case_name, Case};
use crate::tolerance::{default_tolerance, path_tolerances};
use crate::{Error, Result};
use ingot_core::*;
use ingot_cpu::quant::quantize_row;
use ingot_cpu::sampling::{ranked, softmax_row};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

/// Every op flag `golden gen` accepts, with its help text. Ops read the ones they use;
/// a flag an op does not use is an error.
pub const FLAGS: &[(&str, &str)] = &[
    ("m", "rows of A / x (gemm, quantized_matmul)"),
    ("n", "columns of C / rows of W (gemm, quantized_matmul)"),
    ("k", "inner dimension (gemm, quantized_matmul); kept values (topk_mask_logits, extract_k_values)"),
    ("M", "rows (extract_k_values)"),
    ("N", "columns (extract_k_values)"),
    ("transa", "A stored transposed, [k, m] (gemm)"),
    ("transb", "B stored transposed, [n, k] (gemm)"),
    ("use_bias", "add bias[n] (gemm)"),
    ("num_tokens", "rows / tokens; queries or appended rows per sequence for paged ops"),
    ("hidden_size", "row length (norms, embedding_lookup, add_residual, add_bias)"),
    ("vocab_size", "vocabulary / logits row length"),
    ("intermediate_size", "row length (silu_and_mul, gelu_and_mul)"),
    ("num_elements", "element count (unary activations, cast, scale)"),
    ("scale", "the factor (scale)"),
    ("eps", "norm epsilon"),
    ("gemma", "RMSNorm with (1 + w) (rms_norm, fused_add_rms_norm)"),
    ("temperature", "softmax / temperature_scale temperature"),
    ("cap", "softcap cap"),
    ("top_p", "top_p_mask threshold"),
    ("min_p", "min_p_mask threshold"),
    ("num_heads", "query heads (rope, rope_freqs; attention alias)"),
    ("num_query_heads", "query heads (attention)"),
    ("num_qo_heads", "query heads (attention)"),
    ("num_kv_heads", "KV heads (rope, paged ops, copy_pages, KV quantization)"),
    ("n_kv_heads", "alias of num_kv_heads (KV quantization)"),
    ("head_size", "head dimension"),
    ("head_dim", "alias of head_size"),
    ("rotary_dim", "rotated dims (rope, rope_freqs; default head_size)"),
    ("rope_theta", "RoPE base (rope; rope_freqs: the base of the generated inv_freq table)"),
    ("interleave", "GPT-J interleaved pairs instead of NeoX halves (rope, rope_freqs)"),
    ("rope_factor", "Llama 3.1 scaling factor (rope; rope_freqs: of the generated table; 1 = none)"),
    ("low_freq_factor", "Llama 3.1 low frequency factor (rope, rope_freqs table)"),
    ("high_freq_factor", "Llama 3.1 high frequency factor (rope, rope_freqs table)"),
    ("original_max_position", "Llama 3.1 original max positions (rope, rope_freqs table)"),
    ("max_position", "largest generated position id + 1 (rope, rope_freqs)"),
    ("batch_size", "sequences (paged ops)"),
    ("kv_len", "KV length of the first sequence; others draw in [kv_len/2, kv_len] (paged ops)"),
    ("page_size", "tokens per page (paged ops, copy_pages)"),
    ("num_pages", "pages in the cache (copy_pages)"),
    ("num_copies", "pages copied (copy_pages)"),
    ("num_rows", "rows (write_columns)"),
    ("src_width", "columns written (write_columns)"),
    ("dst_width", "columns of the target (write_columns)"),
    ("offset", "first column written (write_columns; default: the last src_width columns)"),
    ("causal", "causal mask (prefill)"),
    ("sm_scale", "softmax scale (attention; default 1/sqrt(head_size))"),
    ("window_left", "sliding window, -1 = none (attention)"),
    ("logits_soft_cap", "attention logits soft cap, 0 = none"),
    ("dtype", "activation dtype (f32, f16, bf16), table/weight format, or copied dtype (copy_pages, write_columns: also i32, u32)"),
    ("input_dtype", "input dtype (cast; alias of dtype elsewhere)"),
    ("output_dtype", "output dtype (cast)"),
    ("weight_dtype", "weight format (quantized_matmul)"),
    ("rows", "rows (dequantize)"),
    ("cols", "columns (dequantize)"),
    ("max_seq", "cache positions (KV quantization)"),
    ("group_size", "values per scale/bias (KV quantization)"),
    ("bits", "4 or 8 (KV quantization)"),
    ("position", "position written (quantize_kv)"),
    ("start", "first position read (dequantize_kv)"),
    ("n_positions", "positions read (dequantize_kv)"),
];

/// Largest tensor the generator makes, in elements.
pub const MAX_ELEMENTS: usize = 1 << 27;

/// Op flags as given, with typed getters that remember which flags were read.
#[derive(Debug, Default)]
pub struct Flags {
    vals: BTreeMap<String, String>,
    used: RefCell<BTreeSet<String>>,
}

impl Flags {
    /// Flags from (name, value) pairs; unknown names are an error.
    pub fn new<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Result<Self> {
        let mut vals = BTreeMap::new();
        for (k, v) in pairs {
            if !FLAGS.iter().any(|(n, _)| *n == k) {
                return Err(Error::Usage(format!("unknown flag --{k}")));
            }
            if vals.insert(k.clone(), v).is_some() {
                return Err(Error::Usage(format!("flag --{k} given twice")));
            }
        }
        Ok(Flags { vals, used: RefCell::new(BTreeSet::new()) })
    }

    /// The flags as given.
    pub fn raw(&self) -> &BTreeMap<String, String> {
        &self.vals
    }

    fn get<'a>(&'a self, names: &[&'a str]) -> Result<Option<(&'a str, &'a str)>> {
        let present: Vec<&str> = names.iter().copied().filter(|n| self.vals.contains_key(*n)).collect();
        if present.len() > 1 {
            return Err(Error::Usage(format!(
                "flags {} mean the same thing: give one",
                present.iter().map(|n| format!("--{n}")).collect::<Vec<_>>().join(" and ")
            )));
        }
        for n in names {
            self.used.borrow_mut().insert(n.to_string());
        }
        Ok(present.first().map(|n| (*n, self.vals[*n].as_str())))
    }

    fn parse<T: std::str::FromStr>(&self, names: &[&str], default: T, what: &str) -> Result<T> {
        match self.get(names)? {
            None => Ok(default),
            Some((n, v)) => v.trim().parse::<T>().map_err(|_| Error::Usage(format!("--{n} '{v}' is not {what}"))),
        }
    }

    pub fn usize(&self, names: &[&str], default: usize) -> Result<usize> {
        self.parse(names, default, "a non-negative integer")
    }

    pub fn i64(&self, names: &[&str], default: i64) -> Result<i64> {
        self.parse(names, default, "an integer")
    }

    pub fn f64(&self, names: &[&str], default: f64) -> Result<f64> {
        let v: f64 = self.parse(names, default, "a number")?;
        if !v.is_finite() {
            return Err(Error::Usage(format!("--{} must be finite, got {v}", names[0])));
        }
        Ok(v)
    }

    pub fn bool(&self, names: &[&str], default: bool) -> Result<bool> {
        match self.get(names)? {
            None => Ok(default),
            Some((n, v)) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(Error::Usage(format!("--{n} '{v}' is not true or false"))),
            },
        }
    }

    pub fn dtype(&self, names: &[&str], default: DType) -> Result<DType> {
        match self.get(names)? {
            None => Ok(default),
            Some((n, v)) => v.parse::<DType>().map_err(|e| Error::Usage(format!("--{n}: {e}"))),
        }
    }

    /// Error if a flag was given that the op did not read.
    pub fn finish(&self, op: &str) -> Result<()> {
        let used = self.used.borrow();
        let unused: Vec<String> = self.vals.keys().filter(|k| !used.contains(*k)).map(|k| format!("--{k}")).collect();
        if unused.is_empty() {
            Ok(())
        } else {
            let mut accepted: Vec<String> = used.iter().map(|k| format!("--{k}")).collect();
            accepted.sort();
            Err(Error::Usage(format!("op {op} does not use {} (it takes {})", unused.join(", "), accepted.join(", "))))
        }
    }
}

/// Stable 64-bit FNV-1a, to give each op its own random stream for a seed.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

struct Gen {
    rng: ChaCha8Rng,
}

impl Gen {
    fn normal(&mut self) -> f64 {
        self.rng.sample::<f64, _>(StandardNormal)
    }
    fn normals(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
    fn uniform(&mut self) -> f64 {
        self.rng.gen::<f64>()
    }
    fn below(&mut self, n: usize) -> usize {
        self.rng.gen_range(0..n)
    }
}

fn float(dtype: DType, shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::from_f64(dtype, shape.to_vec(), v)
}

fn rounded(dtype: DType, v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| round_to(dtype, x)).collect()
}

fn ins<const N: usize>(items: [(&str, Tensor); N]) -> Tensors {
    items.into_iter().map(|(n, t)| (n.to_string(), t)).collect()
}

/// Weights in `dtype` from f32 values: quantized with Ingot's quantizer for GGUF formats.
fn weight_tensor(dtype: DType, shape: &[usize], v: &[f64]) -> Result<Tensor> {
    if dtype.is_float() {
        return Ok(float(dtype, shape, v));
    }
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    let bytes = quantize_row(dtype, &f)?;
    Ok(Tensor::from_bytes(dtype, shape.to_vec(), bytes)?)
}

fn limit(op: &Op) -> Result<()> {
    for s in op.inputs().iter().chain(op.outputs().iter()) {
        let n: usize = s.shape.iter().product();
        if n > MAX_ELEMENTS {
            return Err(Error::Usage(format!(
                "[{}] tensor '{}' of shape {:?} has {n} elements; the generator makes at most {MAX_ELEMENTS}",
                op.name(),
                s.name,
                s.shape
            )));
        }
    }
    Ok(())
}

/// Generate one case: parameters from `flags`, inputs from `seed`, outputs and
/// tolerances from the CPU reference.
pub fn generate(kind: OpKind, flags: &Flags, seed: u64, name: &str) -> Result<Case> {
    let (op, inputs) = generate_inputs(kind, flags, seed, name)?;
    let outputs = ingot_cpu::CpuBackend.run(&op, &inputs)?;
    let tolerances = op.outputs().iter().map(|s| (s.name.to_string(), default_tolerance(&op, s.name, s.dtype))).collect();
    let path_tolerances =
        op.outputs().iter().map(|s| (s.name.to_string(), path_tolerances(&op, s.name))).filter(|(_, m)| !m.is_empty()).collect();
    Ok(Case { name: name.to_string(), seed, op, flags: flags.raw().clone(), inputs, outputs, tolerances, path_tolerances })
}

/// The op and inputs of a case without running the reference: for benchmarks at sizes
/// where the f64 reference would take too long. Same inputs as [`generate`] would make.
pub fn generate_inputs(kind: OpKind, flags: &Flags, seed: u64, name: &str) -> Result<(Op, Tensors)> {
    check_case_name(name)?;
    let mut g = Gen { rng: ChaCha8Rng::seed_from_u64(seed ^ fnv1a(kind.name()) ^ fnv1a(name).rotate_left(17)) };
    let (op, inputs) = build(kind, flags, &mut g)?;
    flags.finish(kind.name())?;
    op.check_inputs(&inputs)?;
    Ok((op, inputs))
}

fn dt(f: &Flags, default: DType) -> Result<DType> {
    f.dtype(&["dtype", "input_dtype"], default)
}

fn build(kind: OpKind, f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    use OpKind::*;
    let (op, inputs) = match kind {
        Gemm => {
            let p = GemmParams {
                m: f.usize(&["m"], 8)?,
                n: f.usize(&["n"], 16)?,
                k: f.usize(&["k"], 12)?,
                transa: f.bool(&["transa"], false)?,
                transb: f.bool(&["transb"], false)?,
                use_bias: f.bool(&["use_bias"], false)?,
                dtype: dt(f, DType::F32)?,
            };
            let op = Op::Gemm(p.clone());
            op.validate()?;
            limit(&op)?;
            let mut t = Tensors::new();
            for s in op.inputs() {
                let n = s.shape.iter().product();
                t.insert(s.name.to_string(), float(p.dtype, &s.shape, &g.normals(n, 1.0)));
            }
            (op, t)
        }
        EmbeddingLookup => {
            let p = EmbeddingParams {
                num_tokens: f.usize(&["num_tokens"], 8)?,
                hidden_size: f.usize(&["hidden_size"], 128)?,
                vocab_size: f.usize(&["vocab_size"], 1000)?,
                dtype: dt(f, DType::F32)?,
            };
            let op = Op::EmbeddingLookup(p.clone());
            op.validate()?;
            limit(&op)?;
            let table = g.normals(p.vocab_size * p.hidden_size, 0.5);
            let mut ids: Vec<i32> = (0..p.num_tokens).map(|_| g.below(p.vocab_size) as i32).collect();
            // The first and last rows of the table are the easiest to get wrong.
            ids[0] = p.vocab_size as i32 - 1;
            if p.num_tokens > 1 {
                ids[p.num_tokens - 1] = 0;
            }
            let t = ins([
                ("table", weight_tensor(p.dtype, &[p.vocab_size, p.hidden_size], &table)?),
                ("ids", Tensor::from_i32(vec![p.num_tokens], &ids)),
            ]);
            (op, t)
        }
        RmsNorm | FusedAddRmsNorm => {
            let p = RmsNormParams {
                num_tokens: f.usize(&["num_tokens"], 8)?,
                hidden_size: f.usize(&["hidden_size"], 128)?,
                eps: f.f64(&["eps"], 1e-5)?,
                gemma: f.bool(&["gemma"], false)?,
                dtype: dt(f, DType::F32)?,
            };
            let op = if kind == RmsNorm { Op::RmsNorm(p.clone()) } else { Op::FusedAddRmsNorm(p.clone()) };
            op.validate()?;
            limit(&op)?;
            let (t, h) = (p.num_tokens, p.hidden_size);
            // Rows of different scale: the norm must not depend on it.
            let x: Vec<f64> = (0..t * h).map(|i| g.normal() * (1.0 + (i / h) as f64 * 0.7)).collect();
            let w: Vec<f64> = (0..h).map(|_| if p.gemma { 0.1 * g.normal() } else { 1.0 + 0.1 * g.normal() }).collect();
            let mut m = ins([("input", float(p.dtype, &[t, h], &x)), ("weight", float(p.dtype, &[h], &w))]);
            if kind == FusedAddRmsNorm {
                m.insert("residual".into(), float(p.dtype, &[t, h], &g.normals(t * h, 1.0)));
            }
            (op, m)
        }
        LayerNorm => {
            let p = LayerNormParams {
                num_tokens: f.usize(&["num_tokens"], 8)?,
                hidden_size: f.usize(&["hidden_size"], 128)?,
                eps: f.f64(&["eps"], 1e-5)?,
                dtype: dt(f, DType::F32)?,
            };
            let op = Op::LayerNorm(p.clone());
            op.validate()?;
            limit(&op)?;
            let (t, h) = (p.num_tokens, p.hidden_size);
            let x: Vec<f64> = g.normals(t * h, 2.0).into_iter().map(|v| v + 0.5).collect();
            let gamma: Vec<f64> = g.normals(h, 0.1).into_iter().map(|v| v + 1.0).collect();
            let m = ins([
                ("input", float(p.dtype, &[t, h], &x)),
                ("gamma", float(p.dtype, &[h], &gamma)),
                ("beta", float(p.dtype, &[h], &g.normals(h, 0.1))),
            ]);
            (op, m)
        }
        AddResidual => {
            let p = RowsParams {
                num_tokens: f.usize(&["num_tokens"], 8)?,
                hidden_size: f.usize(&["hidden_size"], 128)?,
                dtype: dt(f, DType::F32)?,
            };
            let op = Op::AddResidual(p.clone());
            op.validate()?;
            limit(&op)?;
            let n = p.num_tokens * p.hidden_size;
            let s = [p.num_tokens, p.hidden_size];
            let m = ins([("input", float(p.dtype, &s, &g.normals(n, 1.0))), ("residual", float(p.dtype, &s, &g.normals(n, 1.0)))]);
            (op, m)
        }
        SiluAndMul | GeluAndMul => {
            let p = GatedParams {
                num_tokens: f.usize(&["num_tokens"], 8)?,
                intermediate_size: f.usize(&["intermediate_size"], 256)?,
                dtype: dt(f, DType::F32)?,
            };
            let op = if kind == SiluAndMul { Op::SiluAndMul(p.clone()) } else { Op::GeluAndMul(p.clone()) };
            op.validate()?;
            limit(&op)?;
            let n = p.num_tokens * p.intermediate_size;
            let s = [p.num_tokens, p.intermediate_size];
            let m = ins([("gate", float(p.dtype, &s, &g.normals(n, 2.0))), ("up", float(p.dtype, &s, &g.normals(n, 1.0)))]);
            (op, m)
        }
        Gelu | GeluTanh | Silu | Relu | Sigmoid => {
            let p = UnaryParams { num_elements: f.usize(&["num_elements"], 1024)?, dtype: dt(f, DType::F32)? };
            let op = match kind {
                Gelu => Op::Gelu(p.clone()),
                GeluTanh => Op::GeluTanh(p.clone()),
                Silu => Op::Silu(p.clone()),
                Relu => Op::Relu(p.clone()),
                _ => Op::Sigmoid(p.clone()),
            };
            op.validate()?;
            limit(&op)?;
            let mut x = g.normals(p.num_elements, 3.0);
            let specials = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, 20.0, -20.0, 100.0, -100.0, 1e-3, -1e-3, 5.0];
            for (xi, s) in x.iter_mut().zip(specials) {
                *xi = s;
            }
            (op, ins([("input", float(p.dtype, &[p.num_elements], &x))]))
        }
        Softmax => {
            let p = SoftmaxParams {
                num_tokens: f.usize(&["num_tokens"], 4)?,
                vocab_size: f.usize(&["vocab_size"], 1000)?,
                temperature: f.f64(&["temperature"], 1.0)?,
                dtype: dt(f, DType::F32)?,
            };
            let op = Op::Softmax(p.clone());
            op.validate()?;
            limit(&op)?;
            let (t, v) = (p.num_tokens, p.vocab_size);
            let mut x = g.normals(t * v, 3.0);
            if v > 1 {
                // One masked logit per row, as after a top-k mask.
                for r in 0..t {
                    x[r * v + 1] = f64::NEG_INFINITY;
                }
            }
            (op, ins([("logits", float(p.dtype, &[t, v], &x))]))
        }
        TopkMaskLogits | ExtractKValues => {
            let (op, rows, cols, d) = if kind == TopkMaskLogits {
                let p = TopKParams {
                    num_tokens: f.usize(&["num_tokens"], 4)?,
                    vocab_size: f.usize(&["vocab_size"], 1000)?,
                    k: f.usize(&["k"], 10)?,
                    dtype: dt(f, DType::F32)?,
                };
                (Op::TopkMaskLogits(p.clone()), p.num_tokens, p.vocab_size, p.dtype)
            } else {
                let p = ExtractKParams {
                    m: f.usize(&["M", "m"], 4)?,
                    n: f.usize(&["N", "n"], 1000)?,
                    k: f.usize(&["k"], 10)?,
                    dtype: dt(f, DType::F32)?,
                };
                (Op::ExtractKValues(p.clone()), p.m, p.n, p.dtype)
            };
            op.validate()?;
            limit(&op)?;
            let k = match &op {
                Op::TopkMaskLogits(p) => p.k,
                Op::ExtractKValues(p) => p.k,
                _ => unreachable!(),
            };
            let mut x = rounded(d, &g.normals(rows * cols, 2.0));
            // Ties at the k-th value: the rule (lower index first) decides what is kept.
            for r in 0..rows {
                let row = &mut x[r * cols..(r + 1) * cols];
                let kth = row[ranked(row)[k - 1]];
                for _ in 0..2.min(cols) {
                    let j = g.below(cols);
                    row[j] = kth;
                }
            }
            let name = if kind == TopkMaskLogits { "logits" } else { "input" };
            (op, ins([(name, float(d, &[rows, cols], &x))]))
        }
        Argmax => {
            let p = LogitsParams {
                num_tokens: f.usize(&["num_tokens"], 4)?,
                vocab_size: f.usize(&["vocab_size"], 1000)?,
                dtype: dt(f, DType::F32)?,
            };
            let op = Op::Argmax(p.clone());
            op.validate()?;
            limit(&op)?;
            let (t, v) = (p.num_tokens, p.vocab_size);
            let mut x = rounded(p.dtype, &g.normals(t * v, 2.0));
            for r in (1..t).step_by(2) {
                // Odd rows: the maximum appears twice; the first index wins.
                let row = &mut x[r * v..(r + 1) * v];
                let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let j = g.below(v);
                row[j] = m;
            }
            (op, ins([("logits", float(p.dtype, &[t, v], &x))]))
        }
        Softcap | TemperatureScale => {
            let (t, v, d) = (f.usize(&["num_tokens"], 4)?, f.usize(&["vocab_size"], 1000)?, dt(f, DType::F32)?);
            let op = if kind == Softcap {
                Op::Softcap(SoftcapParams { num_tokens: t, vocab_size: v, cap: f.f64(&["cap"], 30.0)?, dtype: d })
            } else {
                Op::TemperatureScale(TemperatureParams {
                    num_tokens: t,
                    vocab_size: v,
                    temperature: f.f64(&["temperature"], 0.7)?,
                    dtype: d,
                })
            };
            op.validate()?;
            limit(&op)?;
            (op, ins([("logits", float(d, &[t, v], &g.normals(t * v, 30.0)))]))
        }
        TopPMask | MinPMask => {
            let (t, v, d) = (f.usize(&["num_tokens"], 4)?, f.usize(&["vocab_size"], 1000)?, dt(f, DType::F32)?);
            let op = if kind == TopPMask {
                Op::TopPMask(TopPParams { num_tokens: t, vocab_size: v, top_p: f.f64(&["top_p"], 0.9)?, dtype: d })
            } else {
                Op::MinPMask(MinPParams { num_tokens: t, vocab_size: v, min_p: f.f64(&["min_p"], 0.05)?, dtype: d })
            };
            op.validate()?;
            limit(&op)?;
            let mut x = Vec::with_capacity(t * v);
            for r in 0..t {
                // Peaked logits put the top-p boundary among tokens of real probability,
                // where a margin from the boundary can exist at all.
                let row = (0..1000).map(|_| rounded(d, &g.normals(v, 5.0))).find(|row| well_posed(&op, row)).ok_or_else(|| {
                    Error::Usage(format!(
                        "[{}] found no row {r} without a value near the decision boundary in 1000 draws; change top_p/min_p or vocab_size",
                        op.name()
                    ))
                })?;
                x.extend(row);
            }
            (op, ins([("logits", float(d, &[t, v], &x))]))
        }
        SampleFromProbs => {
            let p = SampleParams { num_tokens: f.usize(&["num_tokens"], 4)?, vocab_size: f.usize(&["vocab_size"], 1000)? };
            let op = Op::SampleFromProbs(p.clone());
            op.validate()?;
            limit(&op)?;
            let (t, v) = (p.num_tokens, p.vocab_size);
            let mut probs = Vec::with_capacity(t * v);
            let mut us = Vec::with_capacity(t);
            for _ in 0..t {
                let mut row = softmax_row(&g.normals(v, 2.0));
                // Some zero-probability entries, as after a mask; keep at least one non-zero.
                for j in 0..v {
                    if j + 1 < v && g.uniform() < 0.1 {
                        row[j] = 0.0;
                    }
                }
                let row = rounded(DType::F32, &row);
                let total: f64 = row.iter().sum();
                let mut u = g.uniform();
                for _ in 0..1000 {
                    let thr = u * total;
                    let mut cum = 0.0;
                    let near = row.iter().any(|p| {
                        cum += p;
                        (cum - thr).abs() <= 1e-5 * total
                    });
                    if !near {
                        break;
                    }
                    u = g.uniform();
                }
                probs.extend(row);
                us.push(u);
            }
            (op, ins([("probs", float(DType::F32, &[t, v], &probs)), ("uniform", float(DType::F32, &[t], &us))]))
        }
        Rope => {
            let num_heads = f.usize(&["num_heads"], 8)?;
            let head_size = f.usize(&["head_size", "head_dim"], 64)?;
            let p = RopeParams {
                num_tokens: f.usize(&["num_tokens"], 4)?,
                num_heads,
                num_kv_heads: f.usize(&["num_kv_heads"], num_heads)?,
                head_size,
                rotary_dim: f.usize(&["rotary_dim"], head_size)?,
                rope_theta: f.f64(&["rope_theta"], 1e4)?,
                interleave: f.bool(&["interleave"], false)?,
                rope_factor: f.f64(&["rope_factor"], 1.0)?,
                low_freq_factor: f.f64(&["low_freq_factor"], 1.0)?,
                high_freq_factor: f.f64(&["high_freq_factor"], 4.0)?,
                original_max_position: f.usize(&["original_max_position"], 8192)?,
                dtype: dt(f, DType::F32)?,
            };
            let max_pos = f.usize(&["max_position"], 4096)?;
            if max_pos == 0 || max_pos > i32::MAX as usize {
                return Err(Error::Usage(format!("--max_position must be in 1..=2^31-1, got {max_pos}")));
            }
            let op = Op::Rope(p.clone());
            op.validate()?;
            limit(&op)?;
            let t = p.num_tokens;
            let mut pos: Vec<i32> = (0..t).map(|_| g.below(max_pos) as i32).collect();
            pos[0] = 0;
            let m = ins([
                ("q", float(p.dtype, &[t, p.num_heads, head_size], &g.normals(t * p.num_heads * head_size, 1.0))),
                ("k", float(p.dtype, &[t, p.num_kv_heads, head_size], &g.normals(t * p.num_kv_heads * head_size, 1.0))),
                ("pos_ids", Tensor::from_i32(vec![t], &pos)),
            ]);
            (op, m)
        }
        AppendPagedKvCache | BatchPrefillWithPagedKvCache | BatchDecodeWithPagedKvCache => paged(kind, f, g)?,
        AddBias => {
            let p = RowsParams {
                num_tokens: f.usize(&["num_tokens"], 8)?,
                hidden_size: f.usize(&["hidden_size"], 128)?,
                dtype: dt(f, DType::F32)?,
            };
            let op = Op::AddBias(p.clone());
            op.validate()?;
            limit(&op)?;
            let (t, h) = (p.num_tokens, p.hidden_size);
            let mut x = g.normals(t * h, 1.0);
            with_specials(&mut x);
            (op, ins([("input", float(p.dtype, &[t, h], &x)), ("bias", float(p.dtype, &[h], &g.normals(h, 0.5)))]))
        }
        Scale => {
            let p =
                ScaleParams { num_elements: f.usize(&["num_elements"], 1024)?, scale: f.f64(&["scale"], 0.1)?, dtype: dt(f, DType::F32)? };
            let op = Op::Scale(p.clone());
            op.validate()?;
            limit(&op)?;
            let mut x = g.normals(p.num_elements, 3.0);
            with_specials(&mut x);
            (op, ins([("input", float(p.dtype, &[p.num_elements], &x))]))
        }
        RopeFreqs => {
            let num_heads = f.usize(&["num_heads"], 8)?;
            let head_size = f.usize(&["head_size", "head_dim"], 64)?;
            let p = RopeFreqsParams {
                num_tokens: f.usize(&["num_tokens"], 4)?,
                num_heads,
                head_size,
                rotary_dim: f.usize(&["rotary_dim"], head_size)?,
                interleave: f.bool(&["interleave"], false)?,
                dtype: dt(f, DType::F32)?,
            };
            // The table: `rope`'s frequencies for these flags (Llama 3's divisors when
            // rope_factor > 1, any base), rounded to f32 as a model stores them.
            let table = RopeParams {
                num_tokens: 1,
                num_heads: 1,
                num_kv_heads: 1,
                head_size,
                rotary_dim: p.rotary_dim,
                rope_theta: f.f64(&["rope_theta"], 1e4)?,
                interleave: p.interleave,
                rope_factor: f.f64(&["rope_factor"], 1.0)?,
                low_freq_factor: f.f64(&["low_freq_factor"], 1.0)?,
                high_freq_factor: f.f64(&["high_freq_factor"], 4.0)?,
                original_max_position: f.usize(&["original_max_position"], 8192)?,
                dtype: p.dtype,
            };
            let max_pos = f.usize(&["max_position"], 4096)?;
            if max_pos == 0 || max_pos > i32::MAX as usize {
                return Err(Error::Usage(format!("--max_position must be in 1..=2^31-1, got {max_pos}")));
            }
            let op = Op::RopeFreqs(p.clone());
            op.validate()?;
            Op::Rope(table.clone()).validate().map_err(|e| Error::Usage(format!("the inv_freq table's flags: {e}")))?;
            limit(&op)?;
            let inv: Vec<f64> = ingot_cpu::rope::inv_freqs(&table).iter().map(|&v| v as f32 as f64).collect();
            let t = p.num_tokens;
            let mut pos: Vec<i32> = (0..t).map(|_| g.below(max_pos) as i32).collect();
            if t > 1 {
                pos[0] = 0;
            }
            let n = t * p.num_heads * head_size;
            let m = ins([
                ("input", float(p.dtype, &[t, p.num_heads, head_size], &g.normals(n, 1.0))),
                ("pos_ids", Tensor::from_i32(vec![t], &pos)),
                ("inv_freq", float(DType::F32, &[p.rotary_dim / 2], &inv)),
            ]);
            (op, m)
        }
        CopyPages => {
            let p = CopyPagesParams {
                num_pages: f.usize(&["num_pages"], 8)?,
                page_size: f.usize(&["page_size"], 16)?,
                num_kv_heads: f.usize(&["num_kv_heads"], 2)?,
                head_size: f.usize(&["head_size", "head_dim"], 64)?,
                num_copies: f.usize(&["num_copies"], 2)?,
                dtype: dt(f, DType::F32)?,
            };
            let op = Op::CopyPages(p.clone());
            op.validate()?;
            limit(&op)?;
            // Distinct targets, sources drawn from the other pages (one source may feed two
            // targets, as a shared prefix page copied for two sequences).
            let mut perm: Vec<usize> = (0..p.num_pages).collect();
            for i in (1..perm.len()).rev() {
                let j = g.below(i + 1);
                perm.swap(i, j);
            }
            let (dst, rest) = perm.split_at(p.num_copies);
            let src: Vec<i32> = (0..p.num_copies).map(|i| rest[if i < 2 { 0 } else { g.below(rest.len()) }] as i32).collect();
            let dst: Vec<i32> = dst.iter().map(|&d| d as i32).collect();
            let shape = [p.num_pages, p.page_size, p.num_kv_heads, p.head_size];
            let n: usize = shape.iter().product();
            let m = ins([
                ("cache", copy_tensor(g, p.dtype, &shape, n)),
                ("src_pages", Tensor::from_i32(vec![p.num_copies], &src)),
                ("dst_pages", Tensor::from_i32(vec![p.num_copies], &dst)),
            ]);
            (op, m)
        }
        WriteColumns => {
            let src_width = f.usize(&["src_width"], 32)?;
            let dst_width = f.usize(&["dst_width"], 96)?;
            let p = WriteColumnsParams {
                num_rows: f.usize(&["num_rows"], 4)?,
                src_width,
                dst_width,
                offset: f.usize(&["offset"], dst_width.saturating_sub(src_width))?,
                dtype: dt(f, DType::F32)?,
            };
            let op = Op::WriteColumns(p.clone());
            op.validate()?;
            limit(&op)?;
            let (r, d) = (p.num_rows, p.dtype);
            let m = ins([
                ("src", copy_tensor(g, d, &[r, p.src_width], r * p.src_width)),
                ("dst", copy_tensor(g, d, &[r, p.dst_width], r * p.dst_width)),
            ]);
            (op, m)
        }
        Cast => {
            let p = CastParams {
                num_elements: f.usize(&["num_elements"], 1024)?,
                input_dtype: f.dtype(&["input_dtype", "dtype"], DType::F32)?,
                output_dtype: f.dtype(&["output_dtype"], DType::F16)?,
            };
            let op = Op::Cast(p.clone());
            op.validate()?;
            limit(&op)?;
            let mut x: Vec<f64> = (0..p.num_elements)
                .map(|i| {
                    let scale = [1.0, 1e4, 1e-5, 1e-40, 3e38, 0.5][i % 6];
                    g.normal() * scale
                })
                .collect();
            // Specials, range ends and exact rounding ties of f16 and bf16.
            let specials = [
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                0.0,
                -0.0,
                65504.0,
                65520.0,
                -65536.0,
                1.0 + 2f64.powi(-11),
                1.0 + 3.0 * 2f64.powi(-11),
                1.0 + 2f64.powi(-8),
                1.0 + 3.0 * 2f64.powi(-8),
                5.96e-8,
                2.98e-8,
                1e-45,
                3.4e38,
            ];
            for (xi, s) in x.iter_mut().zip(specials) {
                *xi = s;
            }
            (op, ins([("input", float(p.input_dtype, &[p.num_elements], &x))]))
        }
        QuantizeKv | DequantizeKv => kv_quant(kind, f, g)?,
        Dequantize => {
            let p = DequantizeParams {
                rows: f.usize(&["rows"], 4)?,
                cols: f.usize(&["cols"], 256)?,
                dtype: f.dtype(&["dtype", "weight_dtype"], DType::Q4_0)?,
            };
            let op = Op::Dequantize(p.clone());
            op.validate()?;
            limit(&op)?;
            let w = g.normals(p.rows * p.cols, 1.0);
            (op, ins([("input", weight_tensor(p.dtype, &[p.rows, p.cols], &w)?)]))
        }
        QuantizedMatmul => {
            let p = QuantizedMatmulParams {
                m: f.usize(&["m"], 1)?,
                n: f.usize(&["n"], 64)?,
                k: f.usize(&["k"], 256)?,
                weight_dtype: f.dtype(&["weight_dtype"], DType::Q4_0)?,
                dtype: dt(f, DType::F32)?,
            };
            let op = Op::QuantizedMatmul(p.clone());
            op.validate()?;
            limit(&op)?;
            let w = g.normals(p.n * p.k, 1.0);
            let m = ins([
                ("x", float(p.dtype, &[p.m, p.k], &g.normals(p.m * p.k, 1.0))),
                ("w", weight_tensor(p.weight_dtype, &[p.n, p.k], &w)?),
            ]);
            (op, m)
        }
    };
    Ok((op, inputs))
}

/// NaN, ±Inf and ±0 among the first values (element-wise ops must carry them through).
fn with_specials(x: &mut [f64]) {
    for (xi, s) in x.iter_mut().zip([f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0]) {
        *xi = s;
    }
}

/// Values for the copy ops: random words for i32/u32, normals for floats with a NaN, an
/// infinity and −0 among them (copies keep their bits).
fn copy_tensor(g: &mut Gen, dtype: DType, shape: &[usize], n: usize) -> Tensor {
    match dtype {
        DType::U32 => Tensor::from_u32(shape.to_vec(), &(0..n).map(|_| g.rng.gen::<u32>()).collect::<Vec<_>>()),
        DType::I32 => Tensor::from_i32(shape.to_vec(), &(0..n).map(|_| g.rng.gen::<i32>()).collect::<Vec<_>>()),
        _ => {
            let mut x = g.normals(n, 1.0);
            for (xi, s) in x.iter_mut().zip([f64::NAN, f64::NEG_INFINITY, -0.0]) {
                *xi = s;
            }
            float(dtype, shape, &x)
        }
    }
}

/// True when no value of the row sits within a margin of top-p's or min-p's decision
/// boundary, so f32 arithmetic cannot flip a decision.
fn well_posed(op: &Op, row: &[f64]) -> bool {
    match op {
        Op::TopPMask(p) => {
            if p.top_p >= 1.0 {
                return true;
            }
            let probs = softmax_row(row);
            let mut cum = 0.0;
            ranked(row).iter().all(|&i| {
                cum += probs[i];
                (cum - p.top_p).abs() > 1e-5
            })
        }
        Op::MinPMask(p) => {
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            row.iter().all(|&v| ((v - m).exp() - p.min_p).abs() > 1e-4 * p.min_p)
        }
        _ => true,
    }
}

/// Sequence lengths and page tables for the paged ops.
struct Pages {
    kv_lens: Vec<usize>,
    indptr: Vec<i32>,
    indices: Vec<i32>,
    last: Vec<i32>,
    num_pages: usize,
}

fn make_pages(g: &mut Gen, batch: usize, kv_len: usize, ps: usize) -> Result<Pages> {
    if kv_len == 0 {
        return Err(Error::Usage("--kv_len must be at least 1".into()));
    }
    if ps == 0 {
        return Err(Error::Usage("--page_size must be at least 1".into()));
    }
    let kv_lens: Vec<usize> =
        (0..batch).map(|b| if b == 0 { kv_len } else { (kv_len / 2).max(1) + g.below(kv_len - (kv_len / 2).max(1) + 1) }).collect();
    let counts: Vec<usize> = kv_lens.iter().map(|l| l.div_ceil(ps)).collect();
    let used: usize = counts.iter().sum();
    // Spare pages the sequences do not own: they must stay untouched.
    let num_pages = used + 3;
    if num_pages > i32::MAX as usize {
        return Err(Error::Usage(format!("{num_pages} pages do not fit i32 page ids")));
    }
    let mut perm: Vec<i32> = (0..num_pages as i32).collect();
    for i in (1..perm.len()).rev() {
        let j = g.below(i + 1);
        perm.swap(i, j);
    }
    let mut indptr = vec![0i32];
    for c in &counts {
        indptr.push(indptr.last().copied().unwrap_or(0) + *c as i32);
    }
    let last = kv_lens.iter().zip(&counts).map(|(l, c)| (l - (c - 1) * ps) as i32).collect();
    Ok(Pages { kv_lens, indptr, indices: perm[..used].to_vec(), last, num_pages })
}

fn paged(kind: OpKind, f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let decode = kind == OpKind::BatchDecodeWithPagedKvCache;
    let append = kind == OpKind::AppendPagedKvCache;
    let batch = f.usize(
        &["batch_size"],
        if decode {
            4
        } else if append {
            2
        } else {
            1
        },
    )?;
    let hq = if append { 0 } else { f.usize(&["num_qo_heads", "num_query_heads", "num_heads"], 8)? };
    let hk = f.usize(&["num_kv_heads"], 8)?;
    let d = f.usize(&["head_size", "head_dim"], 64)?;
    let ps = f.usize(&["page_size"], 16)?;
    let kv_len = f.usize(&["kv_len"], 16)?;
    let per_seq = if decode { 1 } else { f.usize(&["num_tokens"], 4)? };
    let dtype = dt(f, DType::F32)?;
    if batch == 0 || batch > 4096 || kv_len > (1 << 24) {
        return Err(Error::Usage(format!("--batch_size must be in 1..=4096 and --kv_len at most 2^24 (got {batch}, {kv_len})")));
    }
    let pg = make_pages(g, batch, kv_len, ps)?;
    let ids = pg.indices.len();
    let cache_n = pg.num_pages.saturating_mul(ps).saturating_mul(hk).saturating_mul(d);
    if cache_n > MAX_ELEMENTS {
        return Err(Error::Usage(format!("the KV cache would hold {cache_n} elements; the generator makes at most {MAX_ELEMENTS}")));
    }
    let cache_shape = [pg.num_pages, ps, hk, d];
    let mut t = ins([
        ("k_cache", float(dtype, &cache_shape, &g.normals(cache_n, 1.0))),
        ("v_cache", float(dtype, &cache_shape, &g.normals(cache_n, 1.0))),
        ("kv_indices", Tensor::from_i32(vec![ids], &pg.indices)),
        ("kv_indptr", Tensor::from_i32(vec![batch + 1], &pg.indptr)),
        ("kv_last_page_len", Tensor::from_i32(vec![batch], &pg.last)),
    ]);
    let sm_default = 1.0 / (d.max(1) as f64).sqrt();
    let op = if append {
        let mut bi = Vec::new();
        let mut pos = Vec::new();
        for (b, &l) in pg.kv_lens.iter().enumerate() {
            let a = per_seq.min(l);
            for p in l - a..l {
                bi.push(b as i32);
                pos.push(p as i32);
            }
        }
        let n = bi.len();
        let p = AppendKvParams {
            batch_size: batch,
            num_tokens: n,
            num_kv_heads: hk,
            head_size: d,
            page_size: ps,
            num_pages: pg.num_pages,
            num_page_ids: ids,
            dtype,
        };
        let op = Op::AppendPagedKvCache(p);
        op.validate()?;
        limit(&op)?;
        t.insert("append_k".into(), float(dtype, &[n, hk, d], &g.normals(n * hk * d, 1.0)));
        t.insert("append_v".into(), float(dtype, &[n, hk, d], &g.normals(n * hk * d, 1.0)));
        t.insert("batch_indices".into(), Tensor::from_i32(vec![n], &bi));
        t.insert("positions".into(), Tensor::from_i32(vec![n], &pos));
        op
    } else if decode {
        let p = DecodeParams {
            batch_size: batch,
            num_qo_heads: hq,
            num_kv_heads: hk,
            head_size: d,
            page_size: ps,
            num_pages: pg.num_pages,
            num_page_ids: ids,
            sm_scale: f.f64(&["sm_scale"], sm_default)?,
            window_left: f.i64(&["window_left"], -1)?,
            logits_soft_cap: f.f64(&["logits_soft_cap"], 0.0)?,
            dtype,
        };
        let op = Op::BatchDecodeWithPagedKvCache(p);
        op.validate()?;
        limit(&op)?;
        t.insert("q".into(), float(dtype, &[batch, hq, d], &g.normals(batch * hq * d, 1.0)));
        op
    } else {
        let causal = f.bool(&["causal"], true)?;
        let mut qo_indptr = vec![0i32];
        for &l in &pg.kv_lens {
            let q = if causal { per_seq.min(l) } else { per_seq };
            qo_indptr.push(qo_indptr.last().copied().unwrap_or(0) + q as i32);
        }
        let n = *qo_indptr.last().unwrap_or(&0) as usize;
        let p = PrefillParams {
            batch_size: batch,
            num_tokens: n,
            num_qo_heads: hq,
            num_kv_heads: hk,
            head_size: d,
            page_size: ps,
            num_pages: pg.num_pages,
            num_page_ids: ids,
            causal,
            sm_scale: f.f64(&["sm_scale"], sm_default)?,
            window_left: f.i64(&["window_left"], -1)?,
            logits_soft_cap: f.f64(&["logits_soft_cap"], 0.0)?,
            dtype,
        };
        let op = Op::BatchPrefillWithPagedKvCache(p);
        op.validate()?;
        limit(&op)?;
        t.insert("q".into(), float(dtype, &[n, hq, d], &g.normals(n * hq * d, 1.0)));
        t.insert("qo_indptr".into(), Tensor::from_i32(vec![batch + 1], &qo_indptr));
        op
    };
    Ok((op, t))
}

fn kv_quant(kind: OpKind, f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let hk = f.usize(&["num_kv_heads", "n_kv_heads"], 8)?;
    let d = f.usize(&["head_size", "head_dim"], 128)?;
    let max_seq = f.usize(&["max_seq"], 64)?;
    let gs = f.usize(&["group_size"], 32)?;
    let bits = f.usize(&["bits"], 4)?;
    let dtype = dt(f, DType::F32)?;
    let op = if kind == OpKind::QuantizeKv {
        Op::QuantizeKv(KvQuantParams {
            n_kv_heads: hk,
            head_dim: d,
            max_seq,
            group_size: gs,
            bits,
            position: f.usize(&["position"], 7)?,
            dtype,
        })
    } else {
        Op::DequantizeKv(KvDequantParams {
            n_kv_heads: hk,
            head_dim: d,
            max_seq,
            group_size: gs,
            bits,
            start: f.usize(&["start"], 0)?,
            n_positions: f.usize(&["n_positions"], 16)?,
            dtype,
        })
    };
    op.validate()?;
    limit(&op)?;
    let specs = op.inputs();
    let mut t = Tensors::new();
    for s in &specs {
        let n: usize = s.shape.iter().product();
        let tensor = match s.name {
            "src" => {
                // Group means vary, so groups do not share scales.
                let v: Vec<f64> = (0..n).map(|i| g.normal() + ((i / gs) as f64 * 0.7).sin()).collect();
                float(dtype, &s.shape, &v)
            }
            "cache_w" => Tensor::from_u32(s.shape.clone(), &(0..n).map(|_| g.rng.gen::<u32>()).collect::<Vec<_>>()),
            "cache_s" => float(dtype, &s.shape, &(0..n).map(|_| g.normal().abs() * 0.1).collect::<Vec<_>>()),
            _ => float(dtype, &s.shape, &g.normals(n, 1.0)),
        };
        t.insert(s.name.to_string(), tensor);
    }
    Ok((op, t))
}
