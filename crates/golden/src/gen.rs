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
    ("packed", "gate and up as the halves of one input row (silu_and_mul, gelu_and_mul)"),
    ("with_v", "the packed row holds V heads too, output v (rope_qkv)"),
    ("qk_norm", "RMS-normalise each Q and K head first, with q_norm/k_norm weights (rope_qkv)"),
    ("num_elements", "element count (unary activations, cast, scale)"),
    ("scale", "the factor (scale)"),
    ("eps", "norm epsilon"),
    ("gemma", "RMSNorm with (1 + w) (rms_norm, fused_add_rms_norm)"),
    ("temperature", "softmax / temperature_scale temperature"),
    ("cap", "softcap cap"),
    ("top_p", "top_p_mask threshold"),
    ("min_p", "min_p_mask threshold"),
    ("num_heads", "query heads (rope, rope_freqs, rope_qkv; attention alias)"),
    ("num_query_heads", "query heads (attention)"),
    ("num_qo_heads", "query heads (attention)"),
    ("num_kv_heads", "KV heads (rope, paged ops, copy_pages, KV quantization)"),
    ("n_kv_heads", "alias of num_kv_heads (KV quantization)"),
    ("head_size", "head dimension"),
    ("head_dim", "alias of head_size"),
    ("rotary_dim", "rotated dims (rope, rope_freqs, rope_qkv; default head_size)"),
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

pub(crate) struct Gen {
    pub(crate) rng: ChaCha8Rng,
}

impl Gen {
    pub(crate) fn normal(&mut self) -> f64 {
        self.rng.sample::<f64, _>(StandardNormal)
    }
    pub(crate) fn normals(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
    pub(crate) fn uniform(&mut self) -> f64 {
        self.rng.gen::<f64>()
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.rng.gen_range(0..n)
    }
}

pub(crate) fn float(dtype: DType, shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::from_f64(dtype, shape.to_vec(), v)
}

pub(crate) fn rounded(dtype: DType, v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| round_to(dtype, x)).collect()
}

pub(crate) fn ins<const N: usize>(items: [(&str, Tensor); N]) -> Tensors {
    items.into_iter().map(|(n, t)| (n.to_string(), t)).collect()
}

/// Weights in `dtype` from f32 values: quantized with Ingot's quantizer for GGUF formats.
pub(crate) fn weight_tensor(dtype: DType, shape: &[usize], v: &[f64]) -> Result<Tensor> {
    if dtype.is_float() {
        return Ok(float(dtype, shape, v));
    }
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    let bytes = quantize_row(dtype, &f)?;
    Ok(Tensor::from_bytes(dtype, shape.to_vec(), bytes)?)
}

pub(crate) fn limit(op: &Op) -> Result<()> {
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

pub(crate) fn dt(f: &Flags, default: DType) -> Result<DType> {
    f.dtype(&["dtype", "input_dtype"], default)
}

/// Generates [`build`] from the op list ([`ingot_core::for_each_op`]): `family::function`
/// of each op is its builder in `cases/family.rs`.
macro_rules! builders {
    ($( $(#[doc = $doc:literal])* $variant:ident $name:literal ($params:ty) $family:ident :: $func:ident in $section:ident $spec:literal; )*) => {
        /// The op and its inputs: parameters from the flags, inputs drawn from `g`.
        fn build(kind: OpKind, f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
            match kind {
                $( OpKind::$variant => crate::cases::$family::$func(f, g), )*
            }
        }
    };
}
ingot_core::for_each_op!(builders);

/// NaN, ±Inf and ±0 among the first values (element-wise ops must carry them through).
pub(crate) fn with_specials(x: &mut [f64]) {
    for (xi, s) in x.iter_mut().zip([f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0]) {
        *xi = s;
    }
}

/// Values for the copy ops: random words for i32/u32, normals for floats with a NaN, an
/// infinity and −0 among them (copies keep their bits).
pub(crate) fn copy_tensor(g: &mut Gen, dtype: DType, shape: &[usize], n: usize) -> Tensor {
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
pub(crate) fn well_posed(op: &Op, row: &[f64]) -> bool {
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
