//! The op protocol's vocabulary: one parameter struct per op, the tensors each op
//! reads and writes ([`TensorSpec`]), and parameter validation shared by all backends.
//!
//! Semantics are stated in `docs/ops.md`; the CPU reference in `ingot-cpu` is the oracle.
//! Every dimension is a parameter, so an op's tensor shapes follow from its parameters
//! alone: a backend can size buffers before it sees data, and a golden artifact's
//! `meta.json` says everything about its files.

use crate::{ensure, DType, Error, Result, Tensor, Tensors};
use serde::{Deserialize, Serialize};

/// Name, dtype and shape of one input or output tensor of an op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: &'static str,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

fn spec(name: &'static str, dtype: DType, shape: &[usize]) -> TensorSpec {
    TensorSpec { name, dtype, shape: shape.to_vec() }
}

/// What every parameter struct provides.
trait Params {
    /// Check the parameters on their own (sizes, ranges, dtypes).
    fn validate(&self, op: &'static str) -> Result<()>;
    /// Inputs and outputs, in the order the op documents them.
    fn io(&self, kind: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>);
    /// The dtype that selects a kernel: activations, or the weight format for weight ops.
    fn dtype(&self) -> DType;
}

macro_rules! ops {
    ($( $(#[doc = $doc:literal])* $variant:ident => $name:literal ($params:ty); )*) => {
        /// One op call's parameters. Serialized as `{"op": NAME, "params": {...}}`.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "op", content = "params")]
        pub enum Op {
            $( $(#[doc = $doc])* #[serde(rename = $name)] $variant($params), )*
        }

        /// The ops, without parameters: names, counts and support tables derive from this list.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum OpKind { $( $variant, )* }

        impl OpKind {
            /// Every op, in registry order.
            pub const ALL: &'static [OpKind] = &[ $(OpKind::$variant,)* ];
            /// The op's protocol name (`gemm`, `rms_norm`, ...).
            pub fn name(self) -> &'static str {
                match self { $(OpKind::$variant => $name,)* }
            }
        }

        impl Op {
            /// Which op this is.
            pub fn kind(&self) -> OpKind {
                match self { $(Op::$variant(_) => OpKind::$variant,)* }
            }
            fn params(&self) -> &dyn Params {
                match self { $(Op::$variant(p) => p,)* }
            }
        }
    };
}

ops! {
    /// C = op(A)·op(B) (+ bias).
    Gemm => "gemm" (GemmParams);
    /// out[i] = table[ids[i]].
    EmbeddingLookup => "embedding_lookup" (EmbeddingParams);
    /// RMSNorm, optionally with Gemma's (1 + w).
    RmsNorm => "rms_norm" (RmsNormParams);
    /// residual += x; out = rms_norm(residual).
    FusedAddRmsNorm => "fused_add_rms_norm" (RmsNormParams);
    /// LayerNorm with gamma and beta.
    LayerNorm => "layer_norm" (LayerNormParams);
    /// out = x + residual.
    AddResidual => "add_residual" (RowsParams);
    /// out = x + bias, the bias added to every row.
    AddBias => "add_bias" (RowsParams);
    /// out = x · scale.
    Scale => "scale" (ScaleParams);
    /// silu(gate) * up.
    SiluAndMul => "silu_and_mul" (GatedParams);
    /// gelu_tanh(gate) * up.
    GeluAndMul => "gelu_and_mul" (GatedParams);
    /// Exact (erf) GELU.
    Gelu => "gelu" (UnaryParams);
    /// GELU, tanh approximation.
    GeluTanh => "gelu_tanh" (UnaryParams);
    /// x * sigmoid(x).
    Silu => "silu" (UnaryParams);
    /// max(x, 0).
    Relu => "relu" (UnaryParams);
    /// 1 / (1 + exp(-x)).
    Sigmoid => "sigmoid" (UnaryParams);
    /// Row-wise softmax of logits / temperature.
    Softmax => "softmax" (SoftmaxParams);
    /// Keep the k largest logits per row, the rest to -inf.
    TopkMaskLogits => "topk_mask_logits" (TopKParams);
    /// Per row the k largest values and their indices, sorted.
    ExtractKValues => "extract_k_values" (ExtractKParams);
    /// Per row the index of the largest value.
    Argmax => "argmax" (LogitsParams);
    /// cap * tanh(x / cap).
    Softcap => "softcap" (SoftcapParams);
    /// x / temperature.
    TemperatureScale => "temperature_scale" (TemperatureParams);
    /// Keep the smallest top set whose probability reaches top_p.
    TopPMask => "top_p_mask" (TopPParams);
    /// Keep tokens whose probability is at least min_p times the largest.
    MinPMask => "min_p_mask" (MinPParams);
    /// Inverse-CDF sampling with a given uniform number per row.
    SampleFromProbs => "sample_from_probs" (SampleParams);
    /// Rotary position embedding on q and k.
    Rope => "rope" (RopeParams);
    /// Rotary position embedding with a caller-given inverse-frequency table.
    RopeFreqs => "rope_freqs" (RopeFreqsParams);
    /// Write new K/V rows into a paged cache.
    AppendPagedKvCache => "append_paged_kv_cache" (AppendKvParams);
    /// Copy whole pages of a paged cache onto other pages.
    CopyPages => "copy_pages" (CopyPagesParams);
    /// Ragged-batch attention over a paged KV cache (prefill).
    BatchPrefillWithPagedKvCache => "batch_prefill_with_paged_kv_cache" (PrefillParams);
    /// One query per sequence over a paged KV cache (decode).
    BatchDecodeWithPagedKvCache => "batch_decode_with_paged_kv_cache" (DecodeParams);
    /// Convert between f32, f16 and bf16.
    Cast => "cast" (CastParams);
    /// Write a [rows, w] block into columns offset..offset+w of a wider matrix.
    WriteColumns => "write_columns" (WriteColumnsParams);
    /// Affine int4/int8 quantization of one KV-cache position.
    QuantizeKv => "quantize_kv" (KvQuantParams);
    /// Read a window of an affine-quantized KV cache back.
    DequantizeKv => "dequantize_kv" (KvDequantParams);
    /// Expand GGUF blocks to f32.
    Dequantize => "dequantize" (DequantizeParams);
    /// y = x · Wᵀ with W in a GGUF format.
    QuantizedMatmul => "quantized_matmul" (QuantizedMatmulParams);
}

impl OpKind {
    /// Look an op up by name. Accepts the seed protocol's aliases
    /// `cast_type` (= `cast`) and `batch_prefill_attention` (= `batch_prefill_with_paged_kv_cache`).
    pub fn from_name(name: &str) -> Option<OpKind> {
        let name = match name {
            "cast_type" => "cast",
            "batch_prefill_attention" => "batch_prefill_with_paged_kv_cache",
            "batch_decode_attention" => "batch_decode_with_paged_kv_cache",
            n => n,
        };
        OpKind::ALL.iter().copied().find(|k| k.name() == name)
    }
}

impl Op {
    /// The op's protocol name.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The dtype that selects a kernel (activations; the weight format for
    /// `dequantize`/`quantized_matmul`/`embedding_lookup`; the input dtype for `cast`).
    pub fn dtype(&self) -> DType {
        self.params().dtype()
    }

    /// Check the parameters on their own.
    pub fn validate(&self) -> Result<()> {
        self.params().validate(self.name())
    }

    /// Input tensor specs (validate first: shapes of invalid params are meaningless).
    pub fn inputs(&self) -> Vec<TensorSpec> {
        self.params().io(self.kind()).0
    }

    /// Output tensor specs.
    pub fn outputs(&self) -> Vec<TensorSpec> {
        self.params().io(self.kind()).1
    }

    /// Validate the parameters and check that `inputs` holds exactly the op's
    /// inputs with the right dtypes, shapes and byte counts.
    pub fn check_inputs(&self, inputs: &Tensors) -> Result<()> {
        self.validate()?;
        let op = self.name();
        let specs = self.inputs();
        for s in &specs {
            let t = inputs.get(s.name).ok_or_else(|| Error::invalid(op, format!("missing input '{}'", s.name)))?;
            check_tensor(op, s, t)?;
        }
        if let Some(extra) = inputs.keys().find(|k| !specs.iter().any(|s| s.name == k.as_str())) {
            let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
            return Err(Error::invalid(op, format!("unexpected input '{extra}' (inputs are {names:?})")));
        }
        Ok(())
    }
}

/// Check one tensor against its spec.
pub fn check_tensor(op: &'static str, s: &TensorSpec, t: &Tensor) -> Result<()> {
    ensure!(t.dtype == s.dtype, op, "'{}' has dtype {}, expected {}", s.name, t.dtype, s.dtype);
    ensure!(t.shape == s.shape, op, "'{}' has shape {:?}, expected {:?}", s.name, t.shape, s.shape);
    let want = s.dtype.bytes_for(s.shape.iter().product());
    ensure!(
        want == Some(t.data.len()),
        op,
        "'{}' holds {} bytes, a {} tensor of shape {:?} needs {:?}",
        s.name,
        t.data.len(),
        s.dtype,
        s.shape,
        want
    );
    Ok(())
}

fn positive(op: &'static str, fields: &[(&str, usize)]) -> Result<()> {
    for (name, v) in fields {
        ensure!(*v > 0, op, "{name} must be at least 1, got {v}");
    }
    // Bound every single dimension so products in specs cannot overflow.
    for (name, v) in fields {
        ensure!(*v <= (1 << 31), op, "{name} = {v} is too large (limit 2^31)");
    }
    Ok(())
}

fn float_dtype(op: &'static str, what: &str, d: DType) -> Result<()> {
    ensure!(d.is_float(), op, "{what} must be f32, f16 or bf16, got {d}");
    Ok(())
}

fn finite(op: &'static str, what: &str, v: f64) -> Result<()> {
    ensure!(v.is_finite(), op, "{what} must be finite, got {v}");
    Ok(())
}

fn total(op: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= (1usize << 40))
        .ok_or_else(|| Error::invalid(op, format!("shape {dims:?} is too large")))
}

// ---------------------------------------------------------------- gemm

/// `gemm`: C[m,n] = op(A)·op(B) (+ bias[n]). A is [m,k] (or [k,m] when `transa`),
/// B is [k,n] (or [n,k] when `transb`); accumulation in f32 or wider; C in `dtype`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GemmParams {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub transa: bool,
    pub transb: bool,
    pub use_bias: bool,
    pub dtype: DType,
}

impl Params for GemmParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        positive(op, &[("m", self.m), ("n", self.n), ("k", self.k)])?;
        total(op, &[self.m, self.n])?;
        total(op, &[self.m, self.k])?;
        total(op, &[self.n, self.k])?;
        float_dtype(op, "dtype", self.dtype)
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let (m, n, k, d) = (self.m, self.n, self.k, self.dtype);
        let mut i =
            vec![spec("a", d, &if self.transa { [k, m] } else { [m, k] }), spec("b", d, &if self.transb { [n, k] } else { [k, n] })];
        if self.use_bias {
            i.push(spec("bias", d, &[n]));
        }
        (i, vec![spec("c", d, &[m, n])])
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

// ---------------------------------------------------------------- embedding

/// `embedding_lookup`: out[i] = table[ids[i]]. The table is f32/f16/bf16 (out in the
/// same dtype) or a GGUF block format (out in f32); ids are i32 and must be in range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingParams {
    pub num_tokens: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub dtype: DType,
}

impl Params for EmbeddingParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        positive(op, &[("num_tokens", self.num_tokens), ("hidden_size", self.hidden_size), ("vocab_size", self.vocab_size)])?;
        ensure!(self.vocab_size <= i32::MAX as usize, op, "vocab_size {} does not fit i32 ids", self.vocab_size);
        ensure!(DType::WEIGHTS.contains(&self.dtype), op, "table dtype must be f32, f16, bf16 or a GGUF block format, got {}", self.dtype);
        let bs = self.dtype.block_size();
        ensure!(self.hidden_size % bs == 0, op, "hidden_size {} is not a multiple of the {} block size {bs}", self.hidden_size, self.dtype);
        total(op, &[self.vocab_size, self.hidden_size])?;
        total(op, &[self.num_tokens, self.hidden_size]).map(|_| ())
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let out = if self.dtype.is_float() { self.dtype } else { DType::F32 };
        (
            vec![spec("table", self.dtype, &[self.vocab_size, self.hidden_size]), spec("ids", DType::I32, &[self.num_tokens])],
            vec![spec("output", out, &[self.num_tokens, self.hidden_size])],
        )
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

// ---------------------------------------------------------------- norms

/// `rms_norm` and `fused_add_rms_norm`: y = x / sqrt(mean(x²) + eps) · w, with
/// w replaced by (1 + w) when `gemma`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmsNormParams {
    pub num_tokens: usize,
    pub hidden_size: usize,
    pub eps: f64,
    #[serde(default)]
    pub gemma: bool,
    pub dtype: DType,
}

impl Params for RmsNormParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        positive(op, &[("num_tokens", self.num_tokens), ("hidden_size", self.hidden_size)])?;
        total(op, &[self.num_tokens, self.hidden_size])?;
        ensure!(self.eps.is_finite() && self.eps >= 0.0, op, "eps must be finite and >= 0, got {}", self.eps);
        float_dtype(op, "dtype", self.dtype)
    }
    fn io(&self, kind: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let (t, h, d) = (self.num_tokens, self.hidden_size, self.dtype);
        if kind == OpKind::FusedAddRmsNorm {
            (
                vec![spec("input", d, &[t, h]), spec("residual", d, &[t, h]), spec("weight", d, &[h])],
                vec![spec("output", d, &[t, h]), spec("residual_out", d, &[t, h])],
            )
        } else {
            (vec![spec("input", d, &[t, h]), spec("weight", d, &[h])], vec![spec("output", d, &[t, h])])
        }
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// `layer_norm`: y = (x − mean) / sqrt(var + eps) · gamma + beta (biased variance).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerNormParams {
    pub num_tokens: usize,
    pub hidden_size: usize,
    pub eps: f64,
    pub dtype: DType,
}

impl Params for LayerNormParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        positive(op, &[("num_tokens", self.num_tokens), ("hidden_size", self.hidden_size)])?;
        total(op, &[self.num_tokens, self.hidden_size])?;
        ensure!(self.eps.is_finite() && self.eps >= 0.0, op, "eps must be finite and >= 0, got {}", self.eps);
        float_dtype(op, "dtype", self.dtype)
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let (t, h, d) = (self.num_tokens, self.hidden_size, self.dtype);
        (vec![spec("input", d, &[t, h]), spec("gamma", d, &[h]), spec("beta", d, &[h])], vec![spec("output", d, &[t, h])])
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// `add_residual`: out = input + residual, [num_tokens, hidden_size]; `add_bias`: out =
/// input + bias, `bias` [hidden_size] added to every row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowsParams {
    pub num_tokens: usize,
    pub hidden_size: usize,
    pub dtype: DType,
}

impl Params for RowsParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        positive(op, &[("num_tokens", self.num_tokens), ("hidden_size", self.hidden_size)])?;
        total(op, &[self.num_tokens, self.hidden_size])?;
        float_dtype(op, "dtype", self.dtype)
    }
    fn io(&self, kind: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let (t, h, d) = (self.num_tokens, self.hidden_size, self.dtype);
        let other = if kind == OpKind::AddBias { spec("bias", d, &[h]) } else { spec("residual", d, &[t, h]) };
        (vec![spec("input", d, &[t, h]), other], vec![spec("output", d, &[t, h])])
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// `scale`: output = input · scale over `num_elements`. Kernels multiply by the scale
/// rounded to f32 (so it must be finite as an f32); see docs/ops.md.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleParams {
    pub num_elements: usize,
    pub scale: f64,
    pub dtype: DType,
}

impl Params for ScaleParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        positive(op, &[("num_elements", self.num_elements)])?;
        ensure!(
            self.scale.is_finite() && (self.scale as f32).is_finite(),
            op,
            "scale must be finite as an f32 (|scale| <= {:e}), got {}",
            f32::MAX,
            self.scale
        );
        float_dtype(op, "dtype", self.dtype)
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        (vec![spec("input", self.dtype, &[self.num_elements])], vec![spec("output", self.dtype, &[self.num_elements])])
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

// ---------------------------------------------------------------- activations

/// `silu_and_mul` / `gelu_and_mul`: out = act(gate) · up, all [num_tokens, intermediate_size].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatedParams {
    pub num_tokens: usize,
    pub intermediate_size: usize,
    pub dtype: DType,
}

impl Params for GatedParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        positive(op, &[("num_tokens", self.num_tokens), ("intermediate_size", self.intermediate_size)])?;
        total(op, &[self.num_tokens, self.intermediate_size])?;
        float_dtype(op, "dtype", self.dtype)
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let (t, i, d) = (self.num_tokens, self.intermediate_size, self.dtype);
        (vec![spec("gate", d, &[t, i]), spec("up", d, &[t, i])], vec![spec("output", d, &[t, i])])
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// Element-wise unary ops (`gelu`, `gelu_tanh`, `silu`, `relu`, `sigmoid`) over `num_elements`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnaryParams {
    pub num_elements: usize,
    pub dtype: DType,
}

impl Params for UnaryParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        positive(op, &[("num_elements", self.num_elements)])?;
        float_dtype(op, "dtype", self.dtype)
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        (vec![spec("input", self.dtype, &[self.num_elements])], vec![spec("output", self.dtype, &[self.num_elements])])
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

// ---------------------------------------------------------------- logits and sampling

fn logits_io(t: usize, v: usize, d: DType, out_dtype: DType, out: &'static str) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    (vec![spec("logits", d, &[t, v])], vec![spec(out, out_dtype, &[t, v])])
}

fn logits_validate(op: &'static str, t: usize, v: usize, d: DType) -> Result<()> {
    positive(op, &[("num_tokens", t), ("vocab_size", v)])?;
    ensure!(v <= i32::MAX as usize, op, "vocab_size {v} does not fit i32 indices");
    total(op, &[t, v])?;
    float_dtype(op, "dtype", d)
}

/// `softmax`: probs = softmax(logits / temperature) per row; probs in f32.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftmaxParams {
    pub num_tokens: usize,
    pub vocab_size: usize,
    pub temperature: f64,
    pub dtype: DType,
}

impl Params for SoftmaxParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        logits_validate(op, self.num_tokens, self.vocab_size, self.dtype)?;
        ensure!(self.temperature.is_finite() && self.temperature > 0.0, op, "temperature must be > 0, got {}", self.temperature);
        Ok(())
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        logits_io(self.num_tokens, self.vocab_size, self.dtype, DType::F32, "probs")
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// `topk_mask_logits`: per row keep exactly the k largest logits (ties: lower index
/// first), set the rest to -inf.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopKParams {
    pub num_tokens: usize,
    pub vocab_size: usize,
    pub k: usize,
    pub dtype: DType,
}

impl Params for TopKParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        logits_validate(op, self.num_tokens, self.vocab_size, self.dtype)?;
        ensure!(self.k >= 1 && self.k <= self.vocab_size, op, "k must be in 1..={}, got {}", self.vocab_size, self.k);
        Ok(())
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        logits_io(self.num_tokens, self.vocab_size, self.dtype, self.dtype, "masked")
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// `extract_k_values`: per row of an [m, n] input, the k largest values (descending;
/// ties: lower index first) and their i32 indices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractKParams {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub dtype: DType,
}

impl Params for ExtractKParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        positive(op, &[("M", self.m), ("N", self.n)])?;
        ensure!(self.n <= i32::MAX as usize, op, "N {} does not fit i32 indices", self.n);
        total(op, &[self.m, self.n])?;
        ensure!(self.k >= 1 && self.k <= self.n, op, "k must be in 1..={}, got {}", self.n, self.k);
        float_dtype(op, "dtype", self.dtype)
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        (
            vec![spec("input", self.dtype, &[self.m, self.n])],
            vec![spec("values", self.dtype, &[self.m, self.k]), spec("indices", DType::I32, &[self.m, self.k])],
        )
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// `argmax`: per row the index of the largest logit (first one on ties; NaN counts as largest).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogitsParams {
    pub num_tokens: usize,
    pub vocab_size: usize,
    pub dtype: DType,
}

impl Params for LogitsParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        logits_validate(op, self.num_tokens, self.vocab_size, self.dtype)
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        (vec![spec("logits", self.dtype, &[self.num_tokens, self.vocab_size])], vec![spec("indices", DType::I32, &[self.num_tokens])])
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// `softcap`: cap · tanh(x / cap).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftcapParams {
    pub num_tokens: usize,
    pub vocab_size: usize,
    pub cap: f64,
    pub dtype: DType,
}

impl Params for SoftcapParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        logits_validate(op, self.num_tokens, self.vocab_size, self.dtype)?;
        ensure!(self.cap.is_finite() && self.cap > 0.0, op, "cap must be > 0, got {}", self.cap);
        Ok(())
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        logits_io(self.num_tokens, self.vocab_size, self.dtype, self.dtype, "output")
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// `temperature_scale`: x / temperature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemperatureParams {
    pub num_tokens: usize,
    pub vocab_size: usize,
    pub temperature: f64,
    pub dtype: DType,
}

impl Params for TemperatureParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        logits_validate(op, self.num_tokens, self.vocab_size, self.dtype)?;
        ensure!(self.temperature.is_finite() && self.temperature > 0.0, op, "temperature must be > 0, got {}", self.temperature);
        Ok(())
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        logits_io(self.num_tokens, self.vocab_size, self.dtype, self.dtype, "output")
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// `top_p_mask`: on logits; keep the smallest set of most probable tokens whose
/// probability sum reaches `top_p`, set the rest to -inf.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopPParams {
    pub num_tokens: usize,
    pub vocab_size: usize,
    pub top_p: f64,
    pub dtype: DType,
}

impl Params for TopPParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        logits_validate(op, self.num_tokens, self.vocab_size, self.dtype)?;
        ensure!(self.top_p > 0.0 && self.top_p <= 1.0, op, "top_p must be in (0, 1], got {}", self.top_p);
        Ok(())
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        logits_io(self.num_tokens, self.vocab_size, self.dtype, self.dtype, "masked")
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// `min_p_mask`: on logits; keep tokens with p ≥ min_p · p_max, set the rest to -inf.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinPParams {
    pub num_tokens: usize,
    pub vocab_size: usize,
    pub min_p: f64,
    pub dtype: DType,
}

impl Params for MinPParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        logits_validate(op, self.num_tokens, self.vocab_size, self.dtype)?;
        ensure!(self.min_p > 0.0 && self.min_p <= 1.0, op, "min_p must be in (0, 1], got {}", self.min_p);
        Ok(())
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        logits_io(self.num_tokens, self.vocab_size, self.dtype, self.dtype, "masked")
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// `sample_from_probs`: given f32 probabilities [num_tokens, vocab_size] (any
/// non-negative weights) and one uniform number u in [0, 1) per row, the first index
/// whose inclusive cumulative sum exceeds u · total.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleParams {
    pub num_tokens: usize,
    pub vocab_size: usize,
}

impl Params for SampleParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        logits_validate(op, self.num_tokens, self.vocab_size, DType::F32)
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        (
            vec![spec("probs", DType::F32, &[self.num_tokens, self.vocab_size]), spec("uniform", DType::F32, &[self.num_tokens])],
            vec![spec("samples", DType::I32, &[self.num_tokens])],
        )
    }
    fn dtype(&self) -> DType {
        DType::F32
    }
}

// ---------------------------------------------------------------- rope

/// `rope`: rotate q [num_tokens, num_heads, head_size] and k [num_tokens,
/// num_kv_heads, head_size] by position ids. NeoX layout pairs (i, i + rotary_dim/2);
/// interleaved (GPT-J) pairs (2i, 2i+1); dims from `rotary_dim` on are untouched.
/// `rope_factor` > 1 applies Llama 3.1 frequency scaling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeParams {
    pub num_tokens: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_size: usize,
    pub rotary_dim: usize,
    pub rope_theta: f64,
    pub interleave: bool,
    pub rope_factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position: usize,
    pub dtype: DType,
}

impl Params for RopeParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        positive(
            op,
            &[
                ("num_tokens", self.num_tokens),
                ("num_heads", self.num_heads),
                ("num_kv_heads", self.num_kv_heads),
                ("head_size", self.head_size),
                ("rotary_dim", self.rotary_dim),
                ("original_max_position", self.original_max_position),
            ],
        )?;
        total(op, &[self.num_tokens, self.num_heads, self.head_size])?;
        total(op, &[self.num_tokens, self.num_kv_heads, self.head_size])?;
        ensure!(
            self.rotary_dim % 2 == 0 && self.rotary_dim <= self.head_size,
            op,
            "rotary_dim must be even and <= head_size {}, got {}",
            self.head_size,
            self.rotary_dim
        );
        ensure!(self.rope_theta.is_finite() && self.rope_theta > 1.0, op, "rope_theta must be > 1, got {}", self.rope_theta);
        ensure!(self.rope_factor.is_finite() && self.rope_factor >= 1.0, op, "rope_factor must be >= 1, got {}", self.rope_factor);
        finite(op, "low_freq_factor", self.low_freq_factor)?;
        finite(op, "high_freq_factor", self.high_freq_factor)?;
        if self.rope_factor > 1.0 {
            ensure!(
                self.low_freq_factor > 0.0 && self.high_freq_factor > self.low_freq_factor,
                op,
                "Llama 3.1 scaling needs 0 < low_freq_factor < high_freq_factor, got {} and {}",
                self.low_freq_factor,
                self.high_freq_factor
            );
        }
        float_dtype(op, "dtype", self.dtype)
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let (t, d, dt) = (self.num_tokens, self.head_size, self.dtype);
        (
            vec![spec("q", dt, &[t, self.num_heads, d]), spec("k", dt, &[t, self.num_kv_heads, d]), spec("pos_ids", DType::I32, &[t])],
            vec![spec("q_out", dt, &[t, self.num_heads, d]), spec("k_out", dt, &[t, self.num_kv_heads, d])],
        )
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// `rope_freqs`: rotate input [num_tokens, num_heads, head_size] by position ids as `rope`
/// does, with the r/2 inverse frequencies given as an f32 tensor `inv_freq` [rotary_dim/2]
/// (Llama 3's stored `rope_freqs` divisors, Gemma 3's local and global bases).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeFreqsParams {
    pub num_tokens: usize,
    pub num_heads: usize,
    pub head_size: usize,
    pub rotary_dim: usize,
    pub interleave: bool,
    pub dtype: DType,
}

impl Params for RopeFreqsParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        positive(
            op,
            &[
                ("num_tokens", self.num_tokens),
                ("num_heads", self.num_heads),
                ("head_size", self.head_size),
                ("rotary_dim", self.rotary_dim),
            ],
        )?;
        total(op, &[self.num_tokens, self.num_heads, self.head_size])?;
        ensure!(
            self.rotary_dim % 2 == 0 && self.rotary_dim <= self.head_size,
            op,
            "rotary_dim must be even and <= head_size {}, got {}",
            self.head_size,
            self.rotary_dim
        );
        float_dtype(op, "dtype", self.dtype)
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let s = [self.num_tokens, self.num_heads, self.head_size];
        (
            vec![
                spec("input", self.dtype, &s),
                spec("pos_ids", DType::I32, &[self.num_tokens]),
                spec("inv_freq", DType::F32, &[self.rotary_dim / 2]),
            ],
            vec![spec("output", self.dtype, &s)],
        )
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

// ---------------------------------------------------------------- paged KV cache and attention

fn paged_validate(op: &'static str, batch: usize, hk: usize, d: usize, ps: usize, pages: usize, ids: usize, dt: DType) -> Result<()> {
    positive(
        op,
        &[("batch_size", batch), ("num_kv_heads", hk), ("head_size", d), ("page_size", ps), ("num_pages", pages), ("num_page_ids", ids)],
    )?;
    ensure!(ids >= batch, op, "num_page_ids {ids} is smaller than batch_size {batch} (every sequence needs a page)");
    ensure!(pages <= i32::MAX as usize, op, "num_pages {pages} does not fit i32 page ids");
    total(op, &[pages, ps, hk, d])?;
    float_dtype(op, "dtype", dt)
}

fn paged_specs(batch: usize, hk: usize, d: usize, ps: usize, pages: usize, ids: usize, dt: DType) -> Vec<TensorSpec> {
    vec![
        spec("k_cache", dt, &[pages, ps, hk, d]),
        spec("v_cache", dt, &[pages, ps, hk, d]),
        spec("kv_indices", DType::I32, &[ids]),
        spec("kv_indptr", DType::I32, &[batch + 1]),
        spec("kv_last_page_len", DType::I32, &[batch]),
    ]
}

/// `append_paged_kv_cache`: write `num_tokens` new K/V rows into the paged cache
/// (FlashInfer layout: pages [num_pages, page_size, num_kv_heads, head_size]).
/// Row i goes to sequence batch_indices[i] at position positions[i].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendKvParams {
    pub batch_size: usize,
    pub num_tokens: usize,
    pub num_kv_heads: usize,
    pub head_size: usize,
    pub page_size: usize,
    pub num_pages: usize,
    pub num_page_ids: usize,
    pub dtype: DType,
}

impl Params for AppendKvParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        positive(op, &[("num_tokens", self.num_tokens)])?;
        total(op, &[self.num_tokens, self.num_kv_heads, self.head_size])?;
        paged_validate(
            op,
            self.batch_size,
            self.num_kv_heads,
            self.head_size,
            self.page_size,
            self.num_pages,
            self.num_page_ids,
            self.dtype,
        )
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let (n, hk, d, dt) = (self.num_tokens, self.num_kv_heads, self.head_size, self.dtype);
        let mut i = vec![
            spec("append_k", dt, &[n, hk, d]),
            spec("append_v", dt, &[n, hk, d]),
            spec("batch_indices", DType::I32, &[n]),
            spec("positions", DType::I32, &[n]),
        ];
        i.extend(paged_specs(self.batch_size, hk, d, self.page_size, self.num_pages, self.num_page_ids, dt));
        let cache = [self.num_pages, self.page_size, hk, d];
        (i, vec![spec("k_cache_out", dt, &cache), spec("v_cache_out", dt, &cache)])
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// `batch_prefill_with_paged_kv_cache`: ragged queries q [num_tokens, num_qo_heads,
/// head_size] split by `qo_indptr`, attending over each sequence's paged K/V.
/// Query i of a sequence with qo_len queries and kv_len keys sits at position
/// kv_len − qo_len + i. Outputs: `output` [num_tokens, num_qo_heads, head_size] and
/// `lse` [num_tokens, num_qo_heads] (natural log of the softmax denominator).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefillParams {
    pub batch_size: usize,
    pub num_tokens: usize,
    pub num_qo_heads: usize,
    pub num_kv_heads: usize,
    pub head_size: usize,
    pub page_size: usize,
    pub num_pages: usize,
    pub num_page_ids: usize,
    pub causal: bool,
    pub sm_scale: f64,
    /// Keys at positions < query position − window_left are masked; −1: no window.
    pub window_left: i64,
    /// When > 0, logits become cap·tanh(logit / cap) (after sm_scale).
    pub logits_soft_cap: f64,
    pub dtype: DType,
}

fn attn_validate(op: &'static str, hq: usize, hk: usize, sm: f64, window: i64, cap: f64) -> Result<()> {
    positive(op, &[("num_qo_heads", hq)])?;
    ensure!(hq % hk == 0, op, "num_qo_heads {hq} is not a multiple of num_kv_heads {hk}");
    ensure!(sm.is_finite() && sm > 0.0, op, "sm_scale must be > 0, got {sm}");
    ensure!(window >= -1, op, "window_left must be -1 (none) or >= 0, got {window}");
    ensure!(cap.is_finite() && cap >= 0.0, op, "logits_soft_cap must be >= 0 (0: off), got {cap}");
    Ok(())
}

impl Params for PrefillParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        paged_validate(
            op,
            self.batch_size,
            self.num_kv_heads,
            self.head_size,
            self.page_size,
            self.num_pages,
            self.num_page_ids,
            self.dtype,
        )?;
        positive(op, &[("num_tokens", self.num_tokens)])?;
        total(op, &[self.num_tokens, self.num_qo_heads, self.head_size])?;
        attn_validate(op, self.num_qo_heads, self.num_kv_heads, self.sm_scale, self.window_left, self.logits_soft_cap)
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let (n, hq, d, dt) = (self.num_tokens, self.num_qo_heads, self.head_size, self.dtype);
        let mut i = vec![spec("q", dt, &[n, hq, d]), spec("qo_indptr", DType::I32, &[self.batch_size + 1])];
        i.extend(paged_specs(self.batch_size, self.num_kv_heads, d, self.page_size, self.num_pages, self.num_page_ids, dt));
        (i, vec![spec("output", dt, &[n, hq, d]), spec("lse", DType::F32, &[n, hq])])
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// `batch_decode_with_paged_kv_cache`: one query per sequence (q [batch_size,
/// num_qo_heads, head_size]) at the sequence's last position, over its whole paged K/V
/// (within the window). Outputs as for prefill.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeParams {
    pub batch_size: usize,
    pub num_qo_heads: usize,
    pub num_kv_heads: usize,
    pub head_size: usize,
    pub page_size: usize,
    pub num_pages: usize,
    pub num_page_ids: usize,
    pub sm_scale: f64,
    pub window_left: i64,
    pub logits_soft_cap: f64,
    pub dtype: DType,
}

impl Params for DecodeParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        paged_validate(
            op,
            self.batch_size,
            self.num_kv_heads,
            self.head_size,
            self.page_size,
            self.num_pages,
            self.num_page_ids,
            self.dtype,
        )?;
        total(op, &[self.batch_size, self.num_qo_heads, self.head_size])?;
        attn_validate(op, self.num_qo_heads, self.num_kv_heads, self.sm_scale, self.window_left, self.logits_soft_cap)
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let (b, hq, d, dt) = (self.batch_size, self.num_qo_heads, self.head_size, self.dtype);
        let mut i = vec![spec("q", dt, &[b, hq, d])];
        i.extend(paged_specs(b, self.num_kv_heads, d, self.page_size, self.num_pages, self.num_page_ids, dt));
        (i, vec![spec("output", dt, &[b, hq, d]), spec("lse", DType::F32, &[b, hq])])
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

// ---------------------------------------------------------------- cast

/// `cast`: convert `num_elements` values between f32, f16 and bf16 (round to nearest
/// even; NaN stays NaN, ±Inf stays ±Inf, overflow becomes ±Inf).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CastParams {
    pub num_elements: usize,
    pub input_dtype: DType,
    pub output_dtype: DType,
}

impl Params for CastParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        positive(op, &[("num_elements", self.num_elements)])?;
        float_dtype(op, "input_dtype", self.input_dtype)?;
        float_dtype(op, "output_dtype", self.output_dtype)
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        (vec![spec("input", self.input_dtype, &[self.num_elements])], vec![spec("output", self.output_dtype, &[self.num_elements])])
    }
    fn dtype(&self) -> DType {
        self.input_dtype
    }
}

/// Dtypes the copy ops (`copy_pages`, `write_columns`) move: they copy bits, never values.
pub const COPY_DTYPES: [DType; 5] = [DType::F32, DType::F16, DType::BF16, DType::I32, DType::U32];

fn copy_dtype(op: &'static str, d: DType) -> Result<()> {
    ensure!(COPY_DTYPES.contains(&d), op, "dtype must be f32, f16, bf16, i32 or u32, got {d}");
    Ok(())
}

/// `copy_pages`: cache_out = cache with page `dst_pages[i]` replaced by page
/// `src_pages[i]` for every i (the copy-on-write of a shared prefix page). A cache is
/// [num_pages, page_size, num_kv_heads, head_size]; page ids are i32. Values must satisfy
/// [`CopyPagesParams::check_pages`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyPagesParams {
    pub num_pages: usize,
    pub page_size: usize,
    pub num_kv_heads: usize,
    pub head_size: usize,
    pub num_copies: usize,
    pub dtype: DType,
}

impl CopyPagesParams {
    /// The value rules of the page lists: every id in 0..num_pages, no page written twice,
    /// no page both read and written. `op` names the caller in the message.
    pub fn check_pages(&self, op: &'static str, src: &[i32], dst: &[i32]) -> Result<()> {
        ensure!(
            src.len() == self.num_copies && dst.len() == self.num_copies,
            op,
            "src_pages has {} ids and dst_pages {}, num_copies is {}",
            src.len(),
            dst.len(),
            self.num_copies
        );
        let n = self.num_pages;
        for (name, ids) in [("src_pages", src), ("dst_pages", dst)] {
            if let Some((i, id)) = ids.iter().enumerate().find(|(_, &id)| id < 0 || id as usize >= n) {
                return Err(Error::invalid(op, format!("{name}[{i}] = {id} is outside 0..{n} pages")));
            }
        }
        let mut written = std::collections::HashMap::with_capacity(dst.len());
        for (i, &d) in dst.iter().enumerate() {
            if let Some(prev) = written.insert(d, i) {
                return Err(Error::invalid(op, format!("dst_pages[{prev}] and dst_pages[{i}] are both page {d}")));
            }
        }
        for (i, s) in src.iter().enumerate() {
            if let Some(j) = written.get(s) {
                return Err(Error::invalid(op, format!("page {s} is both a source (src_pages[{i}]) and a target (dst_pages[{j}])")));
            }
        }
        Ok(())
    }
}

impl Params for CopyPagesParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        positive(
            op,
            &[
                ("num_pages", self.num_pages),
                ("page_size", self.page_size),
                ("num_kv_heads", self.num_kv_heads),
                ("head_size", self.head_size),
                ("num_copies", self.num_copies),
            ],
        )?;
        ensure!(self.num_pages <= i32::MAX as usize, op, "num_pages {} does not fit i32 page ids", self.num_pages);
        ensure!(
            self.num_copies < self.num_pages,
            op,
            "num_copies {} must be below num_pages {} (targets are distinct pages and none is a source)",
            self.num_copies,
            self.num_pages
        );
        total(op, &[self.num_pages, self.page_size, self.num_kv_heads, self.head_size])?;
        copy_dtype(op, self.dtype)
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let c = [self.num_pages, self.page_size, self.num_kv_heads, self.head_size];
        (
            vec![
                spec("cache", self.dtype, &c),
                spec("src_pages", DType::I32, &[self.num_copies]),
                spec("dst_pages", DType::I32, &[self.num_copies]),
            ],
            vec![spec("cache_out", self.dtype, &c)],
        )
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// `write_columns`: output = dst [num_rows, dst_width] with columns offset..offset +
/// src_width replaced by src [num_rows, src_width] (a matrix product computed in row
/// blocks of the weight, each block's result written into its columns).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteColumnsParams {
    pub num_rows: usize,
    pub src_width: usize,
    pub dst_width: usize,
    pub offset: usize,
    pub dtype: DType,
}

impl Params for WriteColumnsParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        positive(op, &[("num_rows", self.num_rows), ("src_width", self.src_width), ("dst_width", self.dst_width)])?;
        ensure!(
            self.offset.checked_add(self.src_width).is_some_and(|e| e <= self.dst_width),
            op,
            "columns {}..{} are outside dst_width {}",
            self.offset,
            self.offset.saturating_add(self.src_width),
            self.dst_width
        );
        total(op, &[self.num_rows, self.dst_width])?;
        copy_dtype(op, self.dtype)
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let (r, d) = (self.num_rows, self.dtype);
        (vec![spec("src", d, &[r, self.src_width]), spec("dst", d, &[r, self.dst_width])], vec![spec("output", d, &[r, self.dst_width])])
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

// ---------------------------------------------------------------- KV-cache affine quantization

/// `quantize_kv`: quantize src [n_kv_heads, head_dim] into position `position` of an
/// affine-quantized cache: `cache_w` u32 [n_kv_heads, max_seq, head_dim·bits/32]
/// (value j of a word in bits j·bits..), `cache_s`/`cache_b` (scale, bias = group min)
/// [n_kv_heads, max_seq, head_dim/group_size] in `dtype`. Other positions are copied
/// through unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvQuantParams {
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub max_seq: usize,
    pub group_size: usize,
    pub bits: usize,
    pub position: usize,
    pub dtype: DType,
}

fn kvq_validate(op: &'static str, hk: usize, d: usize, max_seq: usize, g: usize, bits: usize, dt: DType) -> Result<()> {
    positive(op, &[("n_kv_heads", hk), ("head_dim", d), ("max_seq", max_seq), ("group_size", g)])?;
    ensure!(bits == 4 || bits == 8, op, "bits must be 4 or 8, got {bits}");
    let per_word = 32 / bits;
    ensure!(d % g == 0, op, "head_dim {d} is not a multiple of group_size {g}");
    ensure!(g % per_word == 0, op, "group_size {g} is not a multiple of {per_word} (values per u32 at {bits} bits)");
    total(op, &[hk, max_seq, d])?;
    float_dtype(op, "dtype", dt)
}

fn kvq_cache_specs(hk: usize, d: usize, max_seq: usize, g: usize, bits: usize, dt: DType, suffix: bool) -> Vec<TensorSpec> {
    let words = d * bits / 32;
    let groups = d / g;
    let (w, s, b) = if suffix { ("cache_w_out", "cache_s_out", "cache_b_out") } else { ("cache_w", "cache_s", "cache_b") };
    vec![spec(w, DType::U32, &[hk, max_seq, words]), spec(s, dt, &[hk, max_seq, groups]), spec(b, dt, &[hk, max_seq, groups])]
}

impl Params for KvQuantParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        kvq_validate(op, self.n_kv_heads, self.head_dim, self.max_seq, self.group_size, self.bits, self.dtype)?;
        ensure!(self.position < self.max_seq, op, "position {} is outside the cache (max_seq {})", self.position, self.max_seq);
        Ok(())
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let (hk, d, s, g, b, dt) = (self.n_kv_heads, self.head_dim, self.max_seq, self.group_size, self.bits, self.dtype);
        let mut i = vec![spec("src", dt, &[hk, d])];
        i.extend(kvq_cache_specs(hk, d, s, g, b, dt, false));
        (i, kvq_cache_specs(hk, d, s, g, b, dt, true))
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// `dequantize_kv`: read positions start..start+n_positions of an affine-quantized
/// cache back: output [n_kv_heads, n_positions, head_dim] in `dtype`, x = q·scale + bias.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvDequantParams {
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub max_seq: usize,
    pub group_size: usize,
    pub bits: usize,
    pub start: usize,
    pub n_positions: usize,
    pub dtype: DType,
}

impl Params for KvDequantParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        kvq_validate(op, self.n_kv_heads, self.head_dim, self.max_seq, self.group_size, self.bits, self.dtype)?;
        positive(op, &[("n_positions", self.n_positions)])?;
        ensure!(
            self.start.checked_add(self.n_positions).is_some_and(|e| e <= self.max_seq),
            op,
            "window {}..{} is outside the cache (max_seq {})",
            self.start,
            self.start.saturating_add(self.n_positions),
            self.max_seq
        );
        Ok(())
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        let (hk, d, dt) = (self.n_kv_heads, self.head_dim, self.dtype);
        (kvq_cache_specs(hk, d, self.max_seq, self.group_size, self.bits, dt, false), vec![spec("output", dt, &[hk, self.n_positions, d])])
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

// ---------------------------------------------------------------- GGUF weights

fn weight_validate(op: &'static str, rows: usize, cols: usize, w: DType) -> Result<()> {
    ensure!(DType::WEIGHTS.contains(&w), op, "weight dtype must be f32, f16, bf16 or a GGUF block format, got {w}");
    let bs = w.block_size();
    ensure!(cols % bs == 0, op, "row length {cols} is not a multiple of the {w} block size {bs}");
    total(op, &[rows, cols]).map(|_| ())
}

/// `dequantize`: a [rows, cols] weight in a GGUF format (or f32/f16/bf16) to f32.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DequantizeParams {
    pub rows: usize,
    pub cols: usize,
    pub dtype: DType,
}

impl Params for DequantizeParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        positive(op, &[("rows", self.rows), ("cols", self.cols)])?;
        weight_validate(op, self.rows, self.cols, self.dtype)
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        (vec![spec("input", self.dtype, &[self.rows, self.cols])], vec![spec("output", DType::F32, &[self.rows, self.cols])])
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

/// `quantized_matmul`: y[m,n] = x[m,k] · W[n,k]ᵀ, W stored in `weight_dtype`
/// (GGUF block layout, rows of k), x in `dtype`, y in f32.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizedMatmulParams {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub weight_dtype: DType,
    pub dtype: DType,
}

impl Params for QuantizedMatmulParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        positive(op, &[("m", self.m), ("n", self.n), ("k", self.k)])?;
        weight_validate(op, self.n, self.k, self.weight_dtype)?;
        total(op, &[self.m, self.k])?;
        total(op, &[self.m, self.n])?;
        float_dtype(op, "dtype", self.dtype)
    }
    fn io(&self, _: OpKind) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
        (
            vec![spec("x", self.dtype, &[self.m, self.k]), spec("w", self.weight_dtype, &[self.n, self.k])],
            vec![spec("y", DType::F32, &[self.m, self.n])],
        )
    }
    fn dtype(&self) -> DType {
        self.weight_dtype
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_parse() {
        let mut names: Vec<&str> = OpKind::ALL.iter().map(|k| k.name()).collect();
        for k in OpKind::ALL {
            assert_eq!(OpKind::from_name(k.name()), Some(*k));
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), OpKind::ALL.len());
        assert_eq!(OpKind::from_name("cast_type"), Some(OpKind::Cast));
        assert_eq!(OpKind::from_name("nope"), None);
    }

    #[test]
    fn serde_shape_is_op_and_params() {
        let op = Op::Gemm(GemmParams { m: 2, n: 3, k: 4, transa: false, transb: true, use_bias: false, dtype: DType::F16 });
        let j = serde_json::to_value(&op).unwrap();
        assert_eq!(j["op"], "gemm");
        assert_eq!(j["params"]["dtype"], "f16");
        let back: Op = serde_json::from_value(j).unwrap();
        assert_eq!(back, op);
        let bad = serde_json::json!({"op": "gemm", "params": {"m": 1, "n": 1, "k": 1, "transa": false, "transb": false, "use_bias": false, "dtype": "f32", "extra": 1}});
        assert!(serde_json::from_value::<Op>(bad).is_err());
    }

    #[test]
    fn bad_params_name_the_op_and_numbers() {
        let op = Op::Gemm(GemmParams { m: 0, n: 3, k: 4, transa: false, transb: false, use_bias: false, dtype: DType::F32 });
        let e = op.validate().unwrap_err().to_string();
        assert!(e.starts_with("[gemm]") && e.contains("m must be at least 1, got 0"), "{e}");
        let op = Op::Dequantize(DequantizeParams { rows: 2, cols: 100, dtype: DType::Q4_K });
        let e = op.validate().unwrap_err().to_string();
        assert!(e.contains("100") && e.contains("256"), "{e}");
    }

    #[test]
    fn check_inputs_reports_shape_and_missing() {
        let op = Op::Relu(UnaryParams { num_elements: 4, dtype: DType::F32 });
        let mut t = Tensors::new();
        assert!(op.check_inputs(&t).unwrap_err().to_string().contains("missing input 'input'"));
        t.insert("input".into(), Tensor::from_f32(DType::F32, vec![5], &[0.0; 5]));
        assert!(op.check_inputs(&t).unwrap_err().to_string().contains("[5]"));
        t.insert("input".into(), Tensor::from_f32(DType::F32, vec![4], &[0.0; 4]));
        assert!(op.check_inputs(&t).is_ok());
        t.insert("bogus".into(), Tensor::from_f32(DType::F32, vec![4], &[0.0; 4]));
        assert!(op.check_inputs(&t).unwrap_err().to_string().contains("unexpected input 'bogus'"));
    }

    #[test]
    fn model_op_specs_and_checks() {
        let op = Op::AddBias(RowsParams { num_tokens: 3, hidden_size: 5, dtype: DType::F16 });
        let names: Vec<(&str, Vec<usize>)> = op.inputs().into_iter().map(|s| (s.name, s.shape)).collect();
        assert_eq!(names, vec![("input", vec![3, 5]), ("bias", vec![5])]);
        let e = Op::Scale(ScaleParams { num_elements: 4, scale: 1e39, dtype: DType::F32 }).validate().unwrap_err().to_string();
        assert!(e.starts_with("[scale]") && e.contains("1000000000000000000000000000000000000000"), "{e}");
        let rf = RopeFreqsParams { num_tokens: 2, num_heads: 3, head_size: 33, rotary_dim: 32, interleave: false, dtype: DType::F32 };
        assert_eq!(Op::RopeFreqs(rf.clone()).inputs()[2].shape, vec![16]);
        let e = Op::RopeFreqs(RopeFreqsParams { rotary_dim: 34, ..rf }).validate().unwrap_err().to_string();
        assert!(e.starts_with("[rope_freqs]") && e.contains("34"), "{e}");
        let e = Op::WriteColumns(WriteColumnsParams { num_rows: 2, src_width: 5, dst_width: 9, offset: 5, dtype: DType::F32 })
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("[write_columns]") && e.contains("5..10") && e.contains('9'), "{e}");
        let cp = CopyPagesParams { num_pages: 4, page_size: 2, num_kv_heads: 1, head_size: 3, num_copies: 2, dtype: DType::U32 };
        assert!(Op::CopyPages(cp.clone()).validate().is_ok());
        let e = Op::CopyPages(CopyPagesParams { dtype: DType::Q4_0, ..cp.clone() }).validate().unwrap_err().to_string();
        assert!(e.starts_with("[copy_pages]") && e.contains("q4_0"), "{e}");
        assert!(Op::CopyPages(CopyPagesParams { num_copies: 4, ..cp.clone() }).validate().is_err());
        assert!(cp.check_pages("copy_pages", &[0, 0], &[1, 2]).is_ok(), "one source may feed two targets");
        let err = |s: &[i32], d: &[i32]| cp.check_pages("copy_pages", s, d).unwrap_err().to_string();
        assert!(err(&[0, 4], &[1, 2]).contains("src_pages[1] = 4 is outside 0..4"));
        assert!(err(&[0, 1], &[-1, 2]).contains("dst_pages[0] = -1"));
        assert!(err(&[0, 3], &[2, 2]).contains("dst_pages[0] and dst_pages[1] are both page 2"));
        assert!(err(&[0, 1], &[1, 2]).contains("page 1 is both a source (src_pages[1]) and a target (dst_pages[0])"));
    }
}
