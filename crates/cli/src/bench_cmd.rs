//! `ingot bench`: prompt processing (pp) and token generation (tg) speed, like
//! llama-bench: random token ids from a fixed seed, repetitions, mean ± stdev; with
//! `--vs-llama-cpp`, llama.cpp (llama-cpp-python) on the same file, alternating runs.
//! With `--concurrent N`, each tg test also runs N sequences at once through the engine
//! (continuous batching): total generated tokens/s and the mean per-sequence tokens/s.
//! With `--plot FILE.svg`, also a bar chart of the same numbers (`bench_plot.rs`).

use crate::models;
use anyhow::{bail, Context, Result};
use ingot_engine::{Engine, EngineConfig, Event, GenRequest, SamplingParams};
use ingot_model::tokenizer::{Tokenizer, Vocab};
use ingot_model::{Logits, Model};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    sub: Option<BenchSub>,
    /// GGUF model (a path, a known model's name or hf:OWNER/REPO/FILE.gguf); default: the default model.
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// Prompt lengths to test (comma-separated); 0 skips.
    #[arg(short = 'p', long = "n-prompt", value_delimiter = ',', default_value = "512")]
    pp: Vec<usize>,
    /// Generation lengths to test (comma-separated); 0 skips.
    #[arg(short = 'n', long = "n-gen", value_delimiter = ',', default_value = "128")]
    tg: Vec<usize>,
    /// Repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
    #[command(flatten)]
    exec: crate::run_cmd::ExecArgs,
    /// Also time llama.cpp through llama-cpp-python on the same file (needs it installed).
    #[arg(long)]
    vs_llama_cpp: bool,
    /// Also run each generation test as N sequences at once through the engine
    /// (comma-separated N values); each has its own 16-token random prompt and never stops
    /// early (end-of-generation tokens are banned).
    #[arg(long, value_delimiter = ',', value_name = "N")]
    concurrent: Vec<usize>,
    /// Print JSON instead of a Markdown table.
    #[arg(long)]
    json: bool,
    /// Also write the results as an SVG bar chart to this file: tokens/s per test, ingot
    /// beside llama.cpp with their ratio where it was measured (the table or JSON still
    /// goes to stdout).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

/// Prompt tokens of each sequence of a `--concurrent` test.
const CONCURRENT_PROMPT: usize = 16;

#[derive(clap::Subcommand)]
enum BenchSub {
    /// Time single ops at LLM shapes on a GPU backend (time, GB/s, TFLOP/s, fraction of
    /// the ceilings scripts/torch_ceilings.py measured on the same device).
    Ops(crate::bench_ops::OpsArgs),
}

#[derive(serde::Serialize)]
struct Row {
    model: String,
    test: String,
    ingot_tps: Vec<f64>,
    llama_cpp_tps: Vec<f64>,
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = if v.len() > 1 { v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64 } else { 0.0 };
    (m, var.sqrt())
}

fn ingot_once(model: &Model, pp: usize, tg: usize, seed: u64) -> Result<f64> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let vocab = model.config.vocab as u32;
    let mut cache = model.new_cache()?;
    if pp > 0 {
        let toks: Vec<u32> = (0..pp).map(|_| rng.gen_range(0..vocab)).collect();
        let t = Instant::now();
        model.forward(&toks, &mut cache, Logits::Last, None)?;
        return Ok(pp as f64 / t.elapsed().as_secs_f64());
    }
    let tok = rng.gen_range(0..vocab);
    let t = Instant::now();
    for _ in 0..tg {
        model.forward(&[tok], &mut cache, Logits::Last, None)?;
    }
    Ok(tg as f64 / t.elapsed().as_secs_f64())
}

/// `n` sequences of `tg` tokens at once through `engine`: (total generated tokens/s from
/// the first submit to the last token, mean over sequences of tokens/s from its submit to
/// its last token).
fn engine_once(engine: &Engine, ban: &[(u32, f32)], n: usize, tg: usize, seed: u64) -> Result<(f64, f64)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let vocab = engine.model().config.vocab as u32;
    let params = SamplingParams { max_tokens: tg, logit_bias: ban.to_vec(), ..Default::default() };
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let prompt: Vec<u32> = (0..CONCURRENT_PROMPT).map(|_| rng.gen_range(0..vocab)).collect();
        handles.push(engine.submit(GenRequest { prompt, params: params.clone() })?);
    }
    let mut total = 0;
    let mut per_seq = 0.0;
    let mut end = t0;
    for h in &mut handles {
        let count = loop {
            match h.events.blocking_recv() {
                Some(Event::Text { .. }) => {}
                Some(Event::Done { usage, .. }) => break usage.completion_tokens,
                Some(Event::Error(e)) => bail!("engine request failed: {e}"),
                None => bail!("the engine stopped"),
            }
        };
        let t = Instant::now();
        // Handles are read in submission order: a later one may have finished earlier.
        end = end.max(t);
        total += count;
        per_seq += count as f64 / (t - t0).as_secs_f64();
    }
    Ok((total as f64 / (end - t0).as_secs_f64(), per_seq / n as f64))
}

fn llama_cpp_once(path: &Path, pp: usize, tg: usize, threads: usize, seed: u64) -> Result<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/llama_cpp_bench.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(path)
        .args(["--pp", &pp.to_string(), "--tg", &tg.to_string(), "--threads", &threads.to_string(), "--seed", &seed.to_string()])
        .output()
        .context("running python3 scripts/llama_cpp_bench.py")?;
    if !out.status.success() {
        bail!(
            "llama.cpp bench failed (is llama-cpp-python installed?): {}",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        );
    }
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).context("llama.cpp bench output")?;
    let key = if pp > 0 { "pp_tps" } else { "tg_tps" };
    j[key].as_f64().context("llama.cpp bench printed no rate")
}

pub fn run(a: BenchArgs) -> Result<ExitCode> {
    if let Some(BenchSub::Ops(o)) = a.sub {
        return crate::bench_ops::run(o);
    }
    if a.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    if a.concurrent.contains(&0) {
        bail!("--concurrent values must be at least 1");
    }
    // Created now so that a bad path fails before the benchmark runs.
    let plot = a.plot.as_deref().map(crate::bench_plot::PlotFile::create).transpose()?;
    let threads = a.exec.apply()?;
    let path = models::resolve(a.model.as_deref())?;
    let model = Arc::new(a.exec.load_model(&path)?);
    let name = path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let mut tests: Vec<(usize, usize)> = a.pp.iter().filter(|&&p| p > 0).map(|&p| (p, 0)).collect();
    tests.extend(a.tg.iter().filter(|&&n| n > 0).map(|&n| (0, n)));
    if tests.is_empty() {
        bail!("nothing to run: give -p and/or -n above 0");
    }
    for &(p, n) in &tests {
        if p.max(n) + 1 > model.config.context {
            bail!("a test of {} tokens exceeds the model's context of {}", p.max(n), model.config.context);
        }
    }
    // Warm up: page the weights in.
    ingot_once(&model, 0, 2, 0)?;
    ingot_model::profile::reset();
    let mut rows = Vec::new();
    for &(p, n) in &tests {
        let mut row = Row {
            model: name.clone(),
            test: if p > 0 { format!("pp{p}") } else { format!("tg{n}") },
            ingot_tps: vec![],
            llama_cpp_tps: vec![],
        };
        for r in 0..a.repetitions {
            row.ingot_tps.push(ingot_once(&model, p, n, r as u64)?);
            if a.vs_llama_cpp {
                row.llama_cpp_tps.push(llama_cpp_once(&path, p, n, threads, r as u64)?);
            }
        }
        rows.push(row);
    }
    if !a.concurrent.is_empty() {
        let tok = Arc::new(Tokenizer::new(&Vocab::from_gguf(model.file())?)?);
        let ban: Vec<(u32, f32)> = (0..tok.n_tokens() as u32).filter(|&t| tok.is_eog(t)).map(|t| (t, f32::NEG_INFINITY)).collect();
        let most = a.concurrent.iter().copied().max().unwrap_or(1);
        let cfg = EngineConfig { max_seqs: most.max(64), max_batch_tokens: (most * CONCURRENT_PROMPT).max(512), ..Default::default() };
        let engine = Engine::start(model.clone(), tok, cfg)?;
        for &n in a.tg.iter().filter(|&&n| n > 0) {
            if CONCURRENT_PROMPT + n > model.config.context {
                bail!("a test of {} tokens exceeds the model's context of {}", CONCURRENT_PROMPT + n, model.config.context);
            }
            for &c in &a.concurrent {
                let mut total = Row { model: name.clone(), test: format!("tg{n} x{c} total"), ingot_tps: vec![], llama_cpp_tps: vec![] };
                let mut each = Row { model: name.clone(), test: format!("tg{n} x{c} per seq"), ingot_tps: vec![], llama_cpp_tps: vec![] };
                for r in 0..a.repetitions {
                    let (t, e) = engine_once(&engine, &ban, c, n, (c * 1000 + r) as u64)?;
                    total.ingot_tps.push(t);
                    each.ingot_tps.push(e);
                }
                rows.push(total);
                rows.push(each);
            }
        }
        engine.shutdown();
    }
    if let Some(table) = ingot_model::profile::report() {
        eprint!("{table}");
    }
    if let Some(file) = plot {
        let backend = model.backend();
        let info = crate::bench_plot::PlotInfo { model: &name, backend: &backend, threads, repetitions: a.repetitions };
        let plot_rows: Vec<_> = rows
            .iter()
            .map(|r| crate::bench_plot::PlotRow { test: &r.test, ingot_tps: &r.ingot_tps, llama_cpp_tps: &r.llama_cpp_tps })
            .collect();
        file.write(&crate::bench_plot::render(&info, &crate::bench_plot::machine(), &plot_rows)?)?;
    }
    if a.json {
        println!("{}", serde_json::json!({"threads": threads, "backend": model.backend(), "rows": rows}));
        return Ok(ExitCode::SUCCESS);
    }
    println!("| model | backend | threads | test | ingot t/s | llama.cpp t/s | ratio |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let (m, s) = mean_sd(&r.ingot_tps);
        let (lm, ls) = mean_sd(&r.llama_cpp_tps);
        let (l, ratio) = if r.llama_cpp_tps.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            (format!("{lm:.2} ± {ls:.2}"), format!("{:.2}", m / lm))
        };
        println!("| {} | {} | {threads} | {} | {m:.2} ± {s:.2} | {l} | {ratio} |", r.model, model.backend(), r.test);
    }
    Ok(ExitCode::SUCCESS)
}
