//! The standard suite: every op × dtype, on awkward shapes (31/32/33, odd head counts,
//! a partly full last page, k = 1 and k = vocab) and on shapes of real LLMs
//! (SmolLM2, Qwen2.5, Llama 3, Gemma 3).

use ingot_core::{DType, OpKind};

/// One case of a suite: a name, an op and its generator flags.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub op: OpKind,
    pub flags: Vec<(String, String)>,
}

fn e(out: &mut Vec<Entry>, name: impl Into<String>, op: OpKind, flags: &[(&str, &str)], extra: &[(&str, String)]) {
    let mut f: Vec<(String, String)> = flags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    f.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    out.push(Entry { name: name.into(), op, flags: f });
}

/// Names of the suites `golden gen --suite` knows.
pub const SUITES: &[&str] = &["standard", "quick"];

/// The entries of a named suite, or None.
pub fn suite(name: &str) -> Option<Vec<Entry>> {
    match name {
        "standard" => Some(standard()),
        "quick" => Some(quick()),
        _ => None,
    }
}

/// One small case per op (a smoke test).
pub fn quick() -> Vec<Entry> {
    OpKind::ALL.iter().map(|&op| Entry { name: "quick".into(), op, flags: vec![] }).collect()
}

/// The standard suite.
pub fn standard() -> Vec<Entry> {
    use OpKind::*;
    let mut v = Vec::new();
    for d in DType::FLOATS {
        let dt = || ("dtype", d.name().to_string());
        let n = d.name();
        e(&mut v, format!("awk_{n}"), Gemm, &[("m", "31"), ("n", "33"), ("k", "32")], &[dt()]);
        e(
            &mut v,
            format!("awk_trans_bias_{n}"),
            Gemm,
            &[("m", "33"), ("n", "31"), ("k", "65"), ("transa", "true"), ("transb", "true"), ("use_bias", "true")],
            &[dt()],
        );
        e(&mut v, format!("llm_mlp_up_{n}"), Gemm, &[("m", "4"), ("n", "1536"), ("k", "576"), ("transb", "true")], &[dt()]);
        e(&mut v, format!("llm_gemv_{n}"), Gemm, &[("m", "1"), ("n", "896"), ("k", "896"), ("transb", "true")], &[dt()]);

        e(&mut v, format!("awk_{n}"), EmbeddingLookup, &[("num_tokens", "33"), ("hidden_size", "33"), ("vocab_size", "31")], &[dt()]);
        e(&mut v, format!("llm_{n}"), EmbeddingLookup, &[("num_tokens", "7"), ("hidden_size", "576"), ("vocab_size", "4096")], &[dt()]);

        for op in [RmsNorm, FusedAddRmsNorm] {
            e(&mut v, format!("awk_{n}"), op, &[("num_tokens", "3"), ("hidden_size", "33")], &[dt()]);
            e(&mut v, format!("llm_{n}"), op, &[("num_tokens", "7"), ("hidden_size", "4096"), ("eps", "1e-5")], &[dt()]);
            e(
                &mut v,
                format!("gemma_{n}"),
                op,
                &[("num_tokens", "5"), ("hidden_size", "640"), ("eps", "1e-6"), ("gemma", "true")],
                &[dt()],
            );
        }
        e(&mut v, format!("awk_{n}"), LayerNorm, &[("num_tokens", "3"), ("hidden_size", "33")], &[dt()]);
        e(&mut v, format!("llm_{n}"), LayerNorm, &[("num_tokens", "5"), ("hidden_size", "768")], &[dt()]);
        e(&mut v, format!("awk_{n}"), AddResidual, &[("num_tokens", "3"), ("hidden_size", "33")], &[dt()]);
        e(&mut v, format!("llm_{n}"), AddResidual, &[("num_tokens", "4"), ("hidden_size", "4096")], &[dt()]);
        e(&mut v, format!("awk_{n}"), AddBias, &[("num_tokens", "3"), ("hidden_size", "33")], &[dt()]);
        e(&mut v, format!("one_token_{n}"), AddBias, &[("num_tokens", "1"), ("hidden_size", "31")], &[dt()]);
        e(&mut v, format!("qwen2_qkv_{n}"), AddBias, &[("num_tokens", "7"), ("hidden_size", "896")], &[dt()]);
        e(&mut v, format!("awk_{n}"), Scale, &[("num_elements", "33"), ("scale", "0.1")], &[dt()]);
        e(&mut v, format!("one_{n}"), Scale, &[("num_elements", "1"), ("scale", "-3")], &[dt()]);
        e(&mut v, format!("gemma_embd_{n}"), Scale, &[("num_elements", "65537"), ("scale", "25.298221281347036")], &[dt()]);
        e(&mut v, format!("awk_{n}"), SiluAndMul, &[("num_tokens", "3"), ("intermediate_size", "33")], &[dt()]);
        e(&mut v, format!("llm_{n}"), SiluAndMul, &[("num_tokens", "4"), ("intermediate_size", "4864")], &[dt()]);
        e(&mut v, format!("awk_{n}"), GeluAndMul, &[("num_tokens", "3"), ("intermediate_size", "31")], &[dt()]);
        e(&mut v, format!("llm_{n}"), GeluAndMul, &[("num_tokens", "4"), ("intermediate_size", "2048")], &[dt()]);
        for op in [Gelu, GeluTanh, Silu, Relu, Sigmoid] {
            e(&mut v, format!("awk_{n}"), op, &[("num_elements", "33")], &[dt()]);
            e(&mut v, format!("big_{n}"), op, &[("num_elements", "65537")], &[dt()]);
        }

        e(&mut v, format!("awk_{n}"), Softmax, &[("num_tokens", "3"), ("vocab_size", "33")], &[dt()]);
        e(&mut v, format!("llm_temp_{n}"), Softmax, &[("num_tokens", "2"), ("vocab_size", "49152"), ("temperature", "0.7")], &[dt()]);
        e(&mut v, format!("k1_{n}"), TopkMaskLogits, &[("num_tokens", "3"), ("vocab_size", "33"), ("k", "1")], &[dt()]);
        e(&mut v, format!("kvocab_{n}"), TopkMaskLogits, &[("num_tokens", "3"), ("vocab_size", "33"), ("k", "33")], &[dt()]);
        e(&mut v, format!("llm_{n}"), TopkMaskLogits, &[("num_tokens", "2"), ("vocab_size", "49152"), ("k", "50")], &[dt()]);
        e(&mut v, format!("k1_{n}"), ExtractKValues, &[("M", "3"), ("N", "33"), ("k", "1")], &[dt()]);
        e(&mut v, format!("kall_{n}"), ExtractKValues, &[("M", "3"), ("N", "33"), ("k", "33")], &[dt()]);
        e(&mut v, format!("llm_{n}"), ExtractKValues, &[("M", "2"), ("N", "32000"), ("k", "40")], &[dt()]);
        e(&mut v, format!("awk_{n}"), Argmax, &[("num_tokens", "5"), ("vocab_size", "33")], &[dt()]);
        e(&mut v, format!("llm_{n}"), Argmax, &[("num_tokens", "2"), ("vocab_size", "151936")], &[dt()]);
        e(&mut v, format!("awk_{n}"), Softcap, &[("num_tokens", "3"), ("vocab_size", "33"), ("cap", "30")], &[dt()]);
        e(&mut v, format!("llm_{n}"), Softcap, &[("num_tokens", "2"), ("vocab_size", "32000"), ("cap", "30")], &[dt()]);
        e(&mut v, format!("awk_{n}"), TemperatureScale, &[("num_tokens", "3"), ("vocab_size", "33"), ("temperature", "0.7")], &[dt()]);
        e(&mut v, format!("llm_{n}"), TemperatureScale, &[("num_tokens", "2"), ("vocab_size", "32000"), ("temperature", "1.3")], &[dt()]);
        e(&mut v, format!("awk_{n}"), TopPMask, &[("num_tokens", "3"), ("vocab_size", "33"), ("top_p", "0.9")], &[dt()]);
        e(&mut v, format!("p1_{n}"), TopPMask, &[("num_tokens", "2"), ("vocab_size", "33"), ("top_p", "1.0")], &[dt()]);
        e(&mut v, format!("llm_{n}"), TopPMask, &[("num_tokens", "2"), ("vocab_size", "32000"), ("top_p", "0.95")], &[dt()]);
        e(&mut v, format!("awk_{n}"), MinPMask, &[("num_tokens", "3"), ("vocab_size", "33"), ("min_p", "0.05")], &[dt()]);
        e(&mut v, format!("llm_{n}"), MinPMask, &[("num_tokens", "2"), ("vocab_size", "32000"), ("min_p", "0.1")], &[dt()]);

        e(
            &mut v,
            format!("awk_{n}"),
            Rope,
            &[("num_tokens", "5"), ("num_heads", "7"), ("num_kv_heads", "1"), ("head_size", "64")],
            &[dt()],
        );
        e(
            &mut v,
            format!("llama31_{n}"),
            Rope,
            &[
                ("num_tokens", "9"),
                ("num_heads", "32"),
                ("num_kv_heads", "8"),
                ("head_size", "128"),
                ("rope_theta", "500000"),
                ("rope_factor", "8"),
                ("low_freq_factor", "1"),
                ("high_freq_factor", "4"),
                ("original_max_position", "8192"),
                ("max_position", "8192"),
            ],
            &[dt()],
        );
        e(
            &mut v,
            format!("gptj_{n}"),
            Rope,
            &[("num_tokens", "4"), ("num_heads", "3"), ("head_size", "64"), ("interleave", "true")],
            &[dt()],
        );
        e(
            &mut v,
            format!("partial_{n}"),
            Rope,
            &[("num_tokens", "4"), ("num_heads", "3"), ("head_size", "64"), ("rotary_dim", "32")],
            &[dt()],
        );
        e(
            &mut v,
            format!("qwen2_{n}"),
            Rope,
            &[("num_tokens", "6"), ("num_heads", "14"), ("num_kv_heads", "2"), ("head_size", "64"), ("rope_theta", "1000000")],
            &[dt()],
        );

        e(&mut v, format!("awk_{n}"), RopeFreqs, &[("num_tokens", "5"), ("num_heads", "7"), ("head_size", "64")], &[dt()]);
        e(
            &mut v,
            format!("one_token_gptj_{n}"),
            RopeFreqs,
            &[("num_tokens", "1"), ("num_heads", "3"), ("head_size", "32"), ("interleave", "true"), ("max_position", "8192")],
            &[dt()],
        );
        e(
            &mut v,
            format!("partial_odd_head_{n}"),
            RopeFreqs,
            &[("num_tokens", "4"), ("num_heads", "3"), ("head_size", "33"), ("rotary_dim", "16")],
            &[dt()],
        );
        e(
            &mut v,
            format!("partial_gptj_{n}"),
            RopeFreqs,
            &[("num_tokens", "3"), ("num_heads", "2"), ("head_size", "31"), ("rotary_dim", "30"), ("interleave", "true")],
            &[dt()],
        );
        e(
            &mut v,
            format!("llama3_freqs_{n}"),
            RopeFreqs,
            &[
                ("num_tokens", "9"),
                ("num_heads", "32"),
                ("head_size", "128"),
                ("rope_theta", "500000"),
                ("rope_factor", "8"),
                ("max_position", "8192"),
            ],
            &[dt()],
        );
        e(
            &mut v,
            format!("gemma3_global_{n}"),
            RopeFreqs,
            &[("num_tokens", "6"), ("num_heads", "4"), ("head_size", "256"), ("rope_theta", "1000000")],
            &[dt()],
        );

        e(
            &mut v,
            format!("awk_{n}"),
            CopyPages,
            &[("num_pages", "7"), ("page_size", "3"), ("num_kv_heads", "1"), ("head_size", "33"), ("num_copies", "3")],
            &[dt()],
        );
        e(
            &mut v,
            format!("one_{n}"),
            CopyPages,
            &[("num_pages", "2"), ("page_size", "1"), ("num_kv_heads", "3"), ("head_size", "31"), ("num_copies", "1")],
            &[dt()],
        );
        e(
            &mut v,
            format!("llm_{n}"),
            CopyPages,
            &[("num_pages", "12"), ("page_size", "16"), ("num_kv_heads", "2"), ("head_size", "64"), ("num_copies", "4")],
            &[dt()],
        );
        e(
            &mut v,
            format!("awk_{n}"),
            WriteColumns,
            &[("num_rows", "3"), ("src_width", "31"), ("dst_width", "97"), ("offset", "33")],
            &[dt()],
        );
        e(
            &mut v,
            format!("even_{n}"),
            WriteColumns,
            &[("num_rows", "4"), ("src_width", "32"), ("dst_width", "96"), ("offset", "32")],
            &[dt()],
        );
        e(&mut v, format!("last_part_{n}"), WriteColumns, &[("num_rows", "5"), ("src_width", "33"), ("dst_width", "100")], &[dt()]);
        e(
            &mut v,
            format!("one_row_whole_{n}"),
            WriteColumns,
            &[("num_rows", "1"), ("src_width", "31"), ("dst_width", "31"), ("offset", "0")],
            &[dt()],
        );
        e(
            &mut v,
            format!("awk_{n}"),
            AppendPagedKvCache,
            &[("batch_size", "3"), ("num_kv_heads", "3"), ("head_size", "64"), ("page_size", "16"), ("kv_len", "37"), ("num_tokens", "5")],
            &[dt()],
        );
        e(
            &mut v,
            format!("decode_{n}"),
            AppendPagedKvCache,
            &[
                ("batch_size", "4"),
                ("num_kv_heads", "8"),
                ("head_size", "128"),
                ("page_size", "16"),
                ("kv_len", "100"),
                ("num_tokens", "1"),
            ],
            &[dt()],
        );
        e(
            &mut v,
            format!("ps1_{n}"),
            AppendPagedKvCache,
            &[("batch_size", "2"), ("num_kv_heads", "2"), ("head_size", "32"), ("page_size", "1"), ("kv_len", "9"), ("num_tokens", "9")],
            &[dt()],
        );

        e(
            &mut v,
            format!("awk_gqa_{n}"),
            BatchPrefillWithPagedKvCache,
            &[
                ("batch_size", "3"),
                ("num_qo_heads", "6"),
                ("num_kv_heads", "2"),
                ("head_size", "64"),
                ("page_size", "16"),
                ("kv_len", "37"),
                ("num_tokens", "7"),
            ],
            &[dt()],
        );
        e(
            &mut v,
            format!("noncausal_{n}"),
            BatchPrefillWithPagedKvCache,
            &[
                ("batch_size", "2"),
                ("num_qo_heads", "4"),
                ("num_kv_heads", "4"),
                ("head_size", "32"),
                ("page_size", "8"),
                ("kv_len", "20"),
                ("num_tokens", "5"),
                ("causal", "false"),
            ],
            &[dt()],
        );
        e(
            &mut v,
            format!("window_cap_{n}"),
            BatchPrefillWithPagedKvCache,
            &[
                ("batch_size", "2"),
                ("num_qo_heads", "4"),
                ("num_kv_heads", "1"),
                ("head_size", "256"),
                ("page_size", "16"),
                ("kv_len", "40"),
                ("num_tokens", "12"),
                ("window_left", "8"),
                ("logits_soft_cap", "50"),
            ],
            &[dt()],
        );
        e(
            &mut v,
            format!("llm_prompt_{n}"),
            BatchPrefillWithPagedKvCache,
            &[
                ("batch_size", "1"),
                ("num_qo_heads", "32"),
                ("num_kv_heads", "8"),
                ("head_size", "128"),
                ("page_size", "16"),
                ("kv_len", "128"),
                ("num_tokens", "128"),
            ],
            &[dt()],
        );

        e(
            &mut v,
            format!("awk_{n}"),
            BatchDecodeWithPagedKvCache,
            &[
                ("batch_size", "3"),
                ("num_qo_heads", "7"),
                ("num_kv_heads", "7"),
                ("head_size", "64"),
                ("page_size", "16"),
                ("kv_len", "33"),
            ],
            &[dt()],
        );
        e(
            &mut v,
            format!("llm_gqa_{n}"),
            BatchDecodeWithPagedKvCache,
            &[
                ("batch_size", "4"),
                ("num_qo_heads", "32"),
                ("num_kv_heads", "8"),
                ("head_size", "128"),
                ("page_size", "16"),
                ("kv_len", "300"),
            ],
            &[dt()],
        );
        e(
            &mut v,
            format!("gemma_window_{n}"),
            BatchDecodeWithPagedKvCache,
            &[
                ("batch_size", "2"),
                ("num_qo_heads", "4"),
                ("num_kv_heads", "1"),
                ("head_size", "256"),
                ("page_size", "16"),
                ("kv_len", "50"),
                ("window_left", "16"),
                ("logits_soft_cap", "30"),
            ],
            &[dt()],
        );

        for out in DType::FLOATS {
            e(
                &mut v,
                format!("{n}_to_{}", out.name()),
                Cast,
                &[("num_elements", "1031")],
                &[("input_dtype", n.to_string()), ("output_dtype", out.name().to_string())],
            );
        }
        for bits in ["4", "8"] {
            e(
                &mut v,
                format!("qwen_int{bits}_{n}"),
                QuantizeKv,
                &[("num_kv_heads", "8"), ("head_size", "128"), ("max_seq", "64"), ("group_size", "32"), ("position", "7")],
                &[("bits", bits.to_string()), dt()],
            );
            e(
                &mut v,
                format!("awk_int{bits}_{n}"),
                QuantizeKv,
                &[("num_kv_heads", "3"), ("head_size", "64"), ("max_seq", "5"), ("group_size", "16"), ("position", "4")],
                &[("bits", bits.to_string()), dt()],
            );
            e(
                &mut v,
                format!("qwen_int{bits}_{n}"),
                DequantizeKv,
                &[("num_kv_heads", "8"), ("head_size", "128"), ("max_seq", "64"), ("group_size", "32"), ("n_positions", "16")],
                &[("bits", bits.to_string()), dt()],
            );
            e(
                &mut v,
                format!("awk_int{bits}_{n}"),
                DequantizeKv,
                &[("num_kv_heads", "3"), ("head_size", "64"), ("max_seq", "9"), ("group_size", "16"), ("start", "3"), ("n_positions", "5")],
                &[("bits", bits.to_string()), dt()],
            );
        }
    }
    for d in [DType::I32, DType::U32] {
        let dt = || ("dtype", d.name().to_string());
        let n = d.name();
        e(
            &mut v,
            format!("awk_{n}"),
            CopyPages,
            &[("num_pages", "5"), ("page_size", "3"), ("num_kv_heads", "1"), ("head_size", "5"), ("num_copies", "2")],
            &[dt()],
        );
        e(
            &mut v,
            format!("awk_{n}"),
            WriteColumns,
            &[("num_rows", "3"), ("src_width", "5"), ("dst_width", "17"), ("offset", "7")],
            &[dt()],
        );
    }
    e(&mut v, "awk", SampleFromProbs, &[("num_tokens", "5"), ("vocab_size", "33")], &[]);
    e(&mut v, "llm", SampleFromProbs, &[("num_tokens", "2"), ("vocab_size", "32000")], &[]);

    for w in DType::WEIGHTS {
        let n = w.name();
        let cols = if w.block_size() == 256 { "512" } else { "96" };
        e(&mut v, format!("std_{n}"), Dequantize, &[("rows", "3"), ("cols", cols)], &[("dtype", n.to_string())]);
        e(&mut v, format!("gemv_{n}"), QuantizedMatmul, &[("m", "1"), ("n", "33"), ("k", "512")], &[("weight_dtype", n.to_string())]);
        e(&mut v, format!("batch_{n}"), QuantizedMatmul, &[("m", "7"), ("n", "31"), ("k", "256")], &[("weight_dtype", n.to_string())]);
        if w.is_quantized() {
            e(
                &mut v,
                format!("std_{n}"),
                EmbeddingLookup,
                &[("num_tokens", "9"), ("hidden_size", "512"), ("vocab_size", "100")],
                &[("dtype", n.to_string())],
            );
        }
    }
    for x in [DType::F16, DType::BF16] {
        e(
            &mut v,
            format!("x{}_q4_k", x.name()),
            QuantizedMatmul,
            &[("m", "3"), ("n", "16"), ("k", "256"), ("weight_dtype", "q4_k")],
            &[("dtype", x.name().to_string())],
        );
        e(
            &mut v,
            format!("x{}_q8_0", x.name()),
            QuantizedMatmul,
            &[("m", "3"), ("n", "16"), ("k", "256"), ("weight_dtype", "q8_0")],
            &[("dtype", x.name().to_string())],
        );
    }
    e(&mut v, "llm_qwen_mlp_q4_0", QuantizedMatmul, &[("m", "1"), ("n", "4864"), ("k", "896"), ("weight_dtype", "q4_0")], &[]);
    e(&mut v, "llm_q6_k", QuantizedMatmul, &[("m", "2"), ("n", "1024"), ("k", "2048"), ("weight_dtype", "q6_k")], &[]);
    e(&mut v, "llm_q4_k", QuantizedMatmul, &[("m", "1"), ("n", "2048"), ("k", "1024"), ("weight_dtype", "q4_k")], &[]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn standard_covers_every_op_and_names_are_unique() {
        let s = standard();
        let ops: BTreeSet<OpKind> = s.iter().map(|e| e.op).collect();
        assert_eq!(ops.len(), OpKind::ALL.len(), "an op has no standard case");
        let mut seen = BTreeSet::new();
        for e in &s {
            assert!(seen.insert((e.name.clone(), e.op)), "duplicate {} {}", e.name, e.op.name());
        }
    }
}
