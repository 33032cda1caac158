//! `ingot bench ops`: single ops at LLM shapes on a GPU backend, with time, GB/s and
//! TFLOP/s, and each as a fraction of a ceiling measured in the same run by
//! `scripts/torch_ceilings.py` (PyTorch on the same device: copy bandwidth, cuBLAS GEMM,
//! SDPA flash attention), passed in with `--ceilings`.

use anyhow::{bail, Context, Result};
use ingot_core::{Op, OpKind, Tensors};
use ingot_golden::{generate_inputs, Flags};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct OpsArgs {
    /// GPU backend: gpu:cuda, gpu:wgpu, gpu:metal (as built in).
    #[arg(long, default_value = "gpu:cuda")]
    backend: String,
    /// Only cases whose label contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    filter: Vec<String>,
    /// Timed launches per case (after warm-up).
    #[arg(long, default_value_t = 50)]
    iters: usize,
    /// Activation dtype of the float cases: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// JSON written by scripts/torch_ceilings.py on the same device in the same run.
    #[arg(long)]
    ceilings: Option<PathBuf>,
    /// Print JSON instead of a Markdown table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON to this file (the Markdown table still goes to stdout).
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
}

/// What a case is measured against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Ceiling {
    /// Bytes moved over the device's copy bandwidth (`copy_gbps`).
    Bandwidth,
    /// FLOP/s over cuBLAS's at the same shape (key `gemm_<dtype>_<m>_<n>_<k>_tflops`).
    Gemm,
    /// Time of PyTorch SDPA at the same shape over ours (key `sdpa_causal_<tokens>_s`).
    Sdpa,
}

struct Case {
    label: String,
    kind: OpKind,
    flags: Vec<(String, String)>,
    ceiling: Ceiling,
    key: Option<String>,
}

fn case(label: String, kind: OpKind, flags: &[(&str, String)], ceiling: Ceiling, key: Option<String>) -> Case {
    Case { label, kind, flags: flags.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(), ceiling, key }
}

fn cases(dt: &str) -> Vec<Case> {
    use OpKind::*;
    let s = |v: usize| v.to_string();
    let mut v = Vec::new();
    // Decode GEMV: one activation row against the weight matrix.
    for w in [dt, "q8_0", "q4_k"] {
        for (n, k) in [(4096, 4096), (14336, 4096), (4096, 14336)] {
            let f = [("m", s(1)), ("n", s(n)), ("k", s(k)), ("weight_dtype", w.to_string()), ("dtype", dt.to_string())];
            v.push(case(format!("gemv {w} {n}x{k}"), QuantizedMatmul, &f, Ceiling::Bandwidth, None));
        }
    }
    // Prefill over quantized weights.
    for w in ["q8_0", "q4_k"] {
        let f = [("m", s(512)), ("n", s(14336)), ("k", s(4096)), ("weight_dtype", w.to_string()), ("dtype", dt.to_string())];
        v.push(case(
            format!("qgemm {w} 512x14336x4096"),
            QuantizedMatmul,
            &f,
            Ceiling::Gemm,
            Some(format!("gemm_{dt}_512_14336_4096_tflops")),
        ));
    }
    // Dense GEMM.
    for n in [4096, 8192] {
        let f = [("m", s(n)), ("n", s(n)), ("k", s(n)), ("dtype", dt.to_string())];
        v.push(case(format!("gemm {dt} {n}^3"), Gemm, &f, Ceiling::Gemm, Some(format!("gemm_{dt}_{n}_{n}_{n}_tflops"))));
    }
    // Paged decode attention, one sequence, Llama-3-8B heads.
    for ctx in [4096, 8192, 16384, 32768] {
        let f = [
            ("batch_size", s(1)),
            ("num_qo_heads", s(32)),
            ("num_kv_heads", s(8)),
            ("head_dim", s(128)),
            ("page_size", s(16)),
            ("kv_len", s(ctx)),
            ("dtype", dt.to_string()),
        ];
        v.push(case(format!("decode attn 32/8x128 ctx {ctx}"), BatchDecodeWithPagedKvCache, &f, Ceiling::Bandwidth, None));
    }
    // Causal prefill attention of a whole prompt.
    for t in [4096, 16384] {
        let f = [
            ("batch_size", s(1)),
            ("num_qo_heads", s(32)),
            ("num_kv_heads", s(8)),
            ("head_dim", s(128)),
            ("page_size", s(16)),
            ("kv_len", s(t)),
            ("num_tokens", s(t)),
            ("causal", "true".to_string()),
            ("dtype", dt.to_string()),
        ];
        v.push(case(
            format!("prefill attn 32/8x128 {t} causal"),
            BatchPrefillWithPagedKvCache,
            &f,
            Ceiling::Sdpa,
            Some(format!("sdpa_causal_{t}_s")),
        ));
    }
    // Memory-bound layer ops at a 512-token prefill of a 4096-wide model, and logits ops.
    let f = [("num_tokens", s(512)), ("hidden_size", s(4096)), ("dtype", dt.to_string())];
    v.push(case("rms_norm 512x4096".into(), RmsNorm, &f, Ceiling::Bandwidth, None));
    let f = [("num_tokens", s(512)), ("intermediate_size", s(14336)), ("dtype", dt.to_string())];
    v.push(case("silu_and_mul 512x14336".into(), SiluAndMul, &f, Ceiling::Bandwidth, None));
    let f = [("num_tokens", s(512)), ("num_heads", s(32)), ("num_kv_heads", s(8)), ("head_size", s(128)), ("dtype", dt.to_string())];
    v.push(case("rope 512 tok 32/8x128".into(), Rope, &f, Ceiling::Bandwidth, None));
    for kind in [Softmax, Argmax, TopkMaskLogits, TopPMask] {
        let mut f = vec![("num_tokens", s(32)), ("vocab_size", s(152064)), ("dtype", dt.to_string())];
        if kind == TopkMaskLogits {
            f.push(("k", s(40)));
        }
        v.push(case(format!("{} 32x152064", kind.name()), kind, &f, Ceiling::Bandwidth, None));
    }
    v
}

/// Bytes an op must move at least once: every input and output.
fn bytes_moved(op: &Op, inputs: &Tensors) -> f64 {
    let out: usize = op.outputs().iter().map(|s| s.dtype.bytes_for(s.shape.iter().product()).unwrap_or(0)).sum();
    let inp: usize = match op {
        // Only the pages a sequence owns are read, not the whole pool.
        Op::BatchDecodeWithPagedKvCache(p) => {
            let tokens = kv_tokens(inputs, p.page_size);
            p.dtype.bytes_for(2 * tokens * p.num_kv_heads * p.head_size).unwrap_or(0) + inputs["q"].data.len()
        }
        Op::BatchPrefillWithPagedKvCache(p) => {
            let tokens = kv_tokens(inputs, p.page_size);
            p.dtype.bytes_for(2 * tokens * p.num_kv_heads * p.head_size).unwrap_or(0) + inputs["q"].data.len()
        }
        _ => inputs.values().map(|t| t.data.len()).sum(),
    };
    (inp + out) as f64
}

/// Tokens held by the sequences' pages: full pages plus each last page's length.
fn kv_tokens(inputs: &Tensors, page_size: usize) -> usize {
    let indptr = inputs["kv_indptr"].to_i32().unwrap_or_default();
    let last = inputs["kv_last_page_len"].to_i32().unwrap_or_default();
    indptr.windows(2).zip(&last).map(|(w, l)| (w[1] - w[0] - 1).max(0) as usize * page_size + *l as usize).sum()
}

/// Floating-point operations of the op's math (multiply-add = 2).
fn flops(op: &Op) -> f64 {
    match op {
        Op::Gemm(p) => 2.0 * (p.m * p.n * p.k) as f64,
        Op::QuantizedMatmul(p) => 2.0 * (p.m * p.n * p.k) as f64,
        // Per query head and key: q·k and p·v, d multiply-adds each.
        Op::BatchDecodeWithPagedKvCache(_) | Op::BatchPrefillWithPagedKvCache(_) => 0.0,
        _ => 0.0,
    }
}

fn attention_flops(op: &Op, inputs: &Tensors) -> f64 {
    match op {
        Op::BatchDecodeWithPagedKvCache(p) => 4.0 * (p.num_qo_heads * p.head_size * kv_tokens(inputs, p.page_size)) as f64,
        // Causal: query i sees i + 1 keys (prompt of t tokens after an empty cache).
        Op::BatchPrefillWithPagedKvCache(p) => {
            let t = p.num_tokens as f64;
            4.0 * (p.num_qo_heads * p.head_size) as f64 * t * (t + 1.0) / 2.0
        }
        _ => 0.0,
    }
}

#[derive(serde::Serialize)]
struct Row {
    label: String,
    op: &'static str,
    us: f64,
    first_ms: f64,
    gbps: f64,
    tflops: f64,
    ceiling: Ceiling,
    ceiling_value: Option<f64>,
    fraction: Option<f64>,
    note: Option<String>,
}

pub fn run(a: OpsArgs) -> Result<ExitCode> {
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    if !["bf16", "f16", "f32"].contains(&a.dtype.as_str()) {
        bail!("--dtype must be bf16, f16 or f32, got '{}'", a.dtype);
    }
    let ceilings: serde_json::Value = match &a.ceilings {
        Some(p) => serde_json::from_str(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
            .with_context(|| format!("{} is not JSON", p.display()))?,
        None => serde_json::Value::Null,
    };
    let Some(timer) = ingot_gpu::bench::timer(&a.backend) else {
        bail!("backend '{}' is not available here (built in: {}; a device must open)", a.backend, built_in());
    };
    let mut rows = Vec::new();
    let selected: Vec<Case> =
        cases(&a.dtype).into_iter().filter(|c| a.filter.is_empty() || a.filter.iter().any(|f| c.label.contains(f.as_str()))).collect();
    if selected.is_empty() {
        bail!("no case matches --filter {:?}", a.filter);
    }
    for c in selected {
        let flags = Flags::new(c.flags.clone())?;
        let (op, inputs) = generate_inputs(c.kind, &flags, 0, "bench").with_context(|| format!("making inputs for '{}'", c.label))?;
        let mut row = Row {
            label: c.label.clone(),
            op: c.kind.name(),
            us: f64::NAN,
            first_ms: f64::NAN,
            gbps: f64::NAN,
            tflops: f64::NAN,
            ceiling: c.ceiling,
            ceiling_value: None,
            fraction: None,
            note: None,
        };
        if !timer.supports(&op) {
            row.note = Some("unsupported on this backend".into());
            eprintln!("{}: unsupported on {}", c.label, timer.name());
            rows.push(row);
            continue;
        }
        match timer.time(&op, &inputs, a.iters) {
            Ok(t) => {
                row.us = t.mean_s * 1e6;
                row.first_ms = t.first_s * 1e3;
                row.gbps = bytes_moved(&op, &inputs) / t.mean_s / 1e9;
                row.tflops = (flops(&op) + attention_flops(&op, &inputs)) / t.mean_s / 1e12;
                let get = |k: &str| ceilings.get(k).and_then(|v| v.as_f64());
                match c.ceiling {
                    Ceiling::Bandwidth => {
                        row.ceiling_value = get("copy_gbps");
                        row.fraction = row.ceiling_value.map(|cap| row.gbps / cap);
                    }
                    Ceiling::Gemm => {
                        row.ceiling_value = c.key.as_deref().and_then(get);
                        row.fraction = row.ceiling_value.map(|cap| row.tflops / cap);
                    }
                    Ceiling::Sdpa => {
                        row.ceiling_value = c.key.as_deref().and_then(get);
                        row.fraction = row.ceiling_value.map(|s| s / t.mean_s);
                    }
                }
            }
            Err(e) => row.note = Some(format!("error: {e}")),
        }
        eprintln!("{}: {:.1} us", row.label, row.us);
        rows.push(row);
    }
    let json =
        serde_json::to_string_pretty(&serde_json::json!({"backend": timer.name(), "dtype": a.dtype, "ceilings": ceilings, "rows": rows}))?;
    if let Some(p) = &a.json_out {
        std::fs::write(p, &json).with_context(|| format!("writing {}", p.display()))?;
    }
    if a.json {
        println!("{json}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("| case | op | µs | GB/s | TFLOP/s | vs | ceiling | fraction |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        if let Some(n) = &r.note {
            println!("| {} | `{}` | - | - | - | - | - | {n} |", r.label, r.op);
            continue;
        }
        let (vs, unit) = match r.ceiling {
            Ceiling::Bandwidth => ("copy bandwidth", "GB/s"),
            Ceiling::Gemm => ("cuBLAS (PyTorch)", "TFLOP/s"),
            Ceiling::Sdpa => ("SDPA flash (PyTorch)", "s"),
        };
        let cap =
            r.ceiling_value.map_or("-".to_string(), |v| if unit == "s" { format!("{:.0} µs", v * 1e6) } else { format!("{v:.1} {unit}") });
        let frac = r.fraction.map_or("-".to_string(), |f| format!("{f:.2}"));
        let tf = if r.tflops > 0.0 { format!("{:.1}", r.tflops) } else { "-".to_string() };
        println!("| {} | `{}` | {:.1} | {:.0} | {tf} | {vs} | {cap} | {frac} |", r.label, r.op, r.us, r.gbps);
    }
    Ok(ExitCode::SUCCESS)
}

fn built_in() -> String {
    let mut v = Vec::new();
    if cfg!(feature = "cuda") {
        v.push("gpu:cuda");
    }
    if cfg!(feature = "wgpu") {
        v.push("gpu:wgpu");
    }
    if cfg!(feature = "metal") {
        v.push("gpu:metal");
    }
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}
