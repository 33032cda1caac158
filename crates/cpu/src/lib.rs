//! The CPU backend. Every op has a reference here written for clarity: inputs are
//! read exactly as f64, arithmetic is done in f64, and each output is rounded once to
//! its dtype. This is the oracle of the golden protocol and of every other backend.
//!
//! Semantics are those of `docs/ops.md`; parameter structs live in `ingot-core`.

pub mod activation;
pub mod attention;
pub mod cast;
pub mod embedding;
pub mod fast;
pub mod gemm;
pub mod kv_quant;
pub mod norm;
pub mod quant;
pub mod rope;
pub mod sampling;
pub mod simd;
pub mod util;
pub mod weights;

use ingot_core::{Backend, Error, Op, Result, Tensors};

/// The CPU reference backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn supports(&self, _op: &Op) -> bool {
        true
    }

    fn run(&self, op: &Op, inputs: &Tensors) -> Result<Tensors> {
        op.check_inputs(inputs)?;
        use activation::Act;
        match op {
            Op::Gemm(p) => gemm::gemm(p, inputs),
            Op::EmbeddingLookup(p) => embedding::embedding_lookup(p, inputs),
            Op::RmsNorm(p) => norm::rms_norm(p, inputs),
            Op::FusedAddRmsNorm(p) => norm::fused_add_rms_norm(p, inputs),
            Op::LayerNorm(p) => norm::layer_norm(p, inputs),
            Op::AddResidual(p) => norm::add_residual(p, inputs),
            Op::SiluAndMul(p) => activation::gated(Act::Silu, p, inputs),
            Op::GeluAndMul(p) => activation::gated(Act::GeluTanh, p, inputs),
            Op::Gelu(p) => activation::unary(Act::Gelu, p, inputs),
            Op::GeluTanh(p) => activation::unary(Act::GeluTanh, p, inputs),
            Op::Silu(p) => activation::unary(Act::Silu, p, inputs),
            Op::Relu(p) => activation::unary(Act::Relu, p, inputs),
            Op::Sigmoid(p) => activation::unary(Act::Sigmoid, p, inputs),
            Op::Softmax(p) => sampling::softmax(p, inputs),
            Op::TopkMaskLogits(p) => sampling::topk_mask_logits(p, inputs),
            Op::ExtractKValues(p) => sampling::extract_k_values(p, inputs),
            Op::Argmax(p) => sampling::argmax(p, inputs),
            Op::Softcap(p) => sampling::softcap(p, inputs),
            Op::TemperatureScale(p) => sampling::temperature_scale(p, inputs),
            Op::TopPMask(p) => sampling::top_p_mask(p, inputs),
            Op::MinPMask(p) => sampling::min_p_mask(p, inputs),
            Op::SampleFromProbs(p) => sampling::sample_from_probs(p, inputs),
            Op::Rope(p) => rope::rope(p, inputs),
            Op::AppendPagedKvCache(p) => attention::append_paged_kv_cache(p, inputs),
            Op::BatchPrefillWithPagedKvCache(p) => attention::batch_prefill(p, inputs),
            Op::BatchDecodeWithPagedKvCache(p) => attention::batch_decode(p, inputs),
            Op::Cast(p) => cast::cast(p, inputs),
            Op::QuantizeKv(p) => kv_quant::quantize_kv(p, inputs),
            Op::DequantizeKv(p) => kv_quant::dequantize_kv(p, inputs),
            Op::Dequantize(p) => weights::dequantize(p, inputs),
            Op::QuantizedMatmul(p) => weights::quantized_matmul(p, inputs),
        }
    }
}

/// Use `n` worker threads for the CPU fast path (rayon's global pool, built once and
/// kept: no thread is spawned per op). Call it before any parallel work; calling it
/// again with the same count is fine. Errors for 0, or when the pool already runs with
/// another count (it was started by an earlier call or by the first parallel op).
pub fn set_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid("threads", "the thread count must be at least 1"));
    }
    match rayon::ThreadPoolBuilder::new().num_threads(n).build_global() {
        Ok(()) => Ok(()),
        Err(_) if rayon::current_num_threads() == n => Ok(()),
        Err(e) => Err(Error::invalid(
            "threads",
            format!("cannot use {n} threads: the thread pool already runs with {} ({e})", rayon::current_num_threads()),
        )),
    }
}
