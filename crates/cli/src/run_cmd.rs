//! `ingot run`: generate text from a prompt, streaming it to stdout.

use crate::models;
use crate::sampling_defaults::{describe, SamplingDefaults};
use anyhow::{bail, Context, Result};
use ingot_engine::{Engine, EngineConfig, GenRequest, SamplingParams};
use ingot_model::chat::{default_template, ChatTemplate, Message};
use ingot_model::tokenizer::{Tokenizer, Vocab};
use ingot_model::{BackendKind, Model};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

/// The sampling flags shared by `run` and `chat`. Those left out take the model's
/// recommended settings (`general.sampling.*` in its file), else llama.cpp's defaults
/// ([`SamplingDefaults`]).
#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Most tokens to generate (0: none, the prompt is only checked).
    #[arg(long = "max-tokens", short = 'n', default_value_t = 128, allow_negative_numbers = true, value_parser = non_negative)]
    max_tokens: usize,
    /// 0: greedy; above 0: sample from softmax(logits / temperature) [default: the model's
    /// general.sampling.temp, else 0.8].
    #[arg(long, allow_hyphen_values = true)]
    temperature: Option<f32>,
    /// Keep only the k most likely tokens (0: off) [default: the model's, else 40].
    #[arg(long = "top-k", allow_negative_numbers = true, value_parser = non_negative)]
    top_k: Option<usize>,
    /// Keep the most likely tokens up to this probability mass, in (0, 1] (1: off) [default:
    /// the model's, else 0.95].
    #[arg(long = "top-p", allow_hyphen_values = true)]
    top_p: Option<f32>,
    /// Drop tokens less likely than min-p times the most likely one, in [0, 1] (0: off)
    /// [default: the model's, else 0.05].
    #[arg(long = "min-p", allow_hyphen_values = true)]
    min_p: Option<f32>,
    /// Repetition penalty on tokens already generated, llama.cpp's (1: off) [default: the
    /// model's general.sampling.penalty_repeat, else 1].
    #[arg(long = "repeat-penalty", allow_hyphen_values = true)]
    repeat_penalty: Option<f32>,
    /// Subtracted per earlier occurrence of a token, OpenAI's (0: off).
    #[arg(long = "frequency-penalty", default_value_t = 0.0, allow_hyphen_values = true)]
    frequency_penalty: f32,
    /// Subtracted once from every token already generated, OpenAI's (0: off).
    #[arg(long = "presence-penalty", default_value_t = 0.0, allow_hyphen_values = true)]
    presence_penalty: f32,
    /// Seed of the sampler: the same seed (and settings) gives the same output [default: a
    /// random one, printed on stderr].
    #[arg(long, allow_negative_numbers = true, value_parser = seed_value)]
    seed: Option<u64>,
    /// Stop when the output contains this text (not printed); repeatable.
    #[arg(long, value_name = "STR")]
    stop: Vec<String>,
}

impl SamplingArgs {
    /// The engine's parameters, checked (errors name the flag): the flags given, `defaults`
    /// for the sampling settings left out, and a random seed when `--seed` is.
    pub fn params(&self, defaults: &SamplingDefaults) -> Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_k: self.top_k.unwrap_or(defaults.top_k),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            min_p: self.min_p.unwrap_or(defaults.min_p),
            repetition_penalty: self.repeat_penalty.unwrap_or(defaults.repetition_penalty),
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            logit_bias: Vec::new(),
            seed: self.seed.unwrap_or_else(rand::random),
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            logprobs: None,
        };
        p.validate().map_err(flag_error)?;
        Ok(p)
    }

    /// Whether any of the settings that the model's defaults fill was left out.
    fn uses_defaults(&self) -> bool {
        self.temperature.is_none() || self.top_k.is_none() || self.top_p.is_none() || self.min_p.is_none() || self.repeat_penalty.is_none()
    }

    /// The model's sampling defaults, with a line on stderr for each unusable key of its
    /// file (only when a setting is left to them), then the engine's parameters and a
    /// line that says how this run samples (when it is not greedy): the settings, where
    /// the ones left out came from, and the seed that repeats it.
    pub fn params_for(&self, m: &Loaded) -> Result<SamplingParams> {
        let defaults = SamplingDefaults::from_gguf(m.model.file());
        if self.uses_defaults() {
            for why in &defaults.ignored {
                eprintln!("ingot: the model's {why}; not used");
            }
        }
        let p = self.params(&defaults)?;
        if p.temperature > 0.0 {
            let from = if self.uses_defaults() { format!(" (settings not given: {})", defaults.source()) } else { String::new() };
            eprintln!("ingot: sampling with {}, seed {}{from}", describe(&p), p.seed);
        }
        Ok(p)
    }
}

/// A count flag's value: negative numbers reach this parser (`allow_negative_numbers`) so
/// that `-n -1` is refused as out of range instead of being taken for a flag.
pub(crate) fn non_negative(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<i128>() {
        Ok(v) if v < 0 => Err(format!("must be at least 0, got {v}")),
        Ok(v) => usize::try_from(v).map_err(|_| format!("must be at most {}, got {v}", usize::MAX)),
        Err(_) => Err(format!("must be a whole number, got {s:?}")),
    }
}

/// `--seed`: an unsigned 64-bit number.
fn seed_value(s: &str) -> std::result::Result<u64, String> {
    match s.trim().parse::<i128>() {
        Ok(v) if (0..=u64::MAX as i128).contains(&v) => Ok(v as u64),
        Ok(v) => Err(format!("must be in [0, {}], got {v}", u64::MAX)),
        Err(_) => Err(format!("must be a whole number, got {s:?}")),
    }
}

/// An engine error, with a sampling parameter named by its flag.
pub fn flag_error(e: ingot_engine::Error) -> anyhow::Error {
    match e {
        ingot_engine::Error::Param { param, msg } => {
            let flag = match param {
                "repetition_penalty" => "repeat-penalty".to_string(),
                other => other.replace('_', "-"),
            };
            anyhow::anyhow!("--{flag} {msg}")
        }
        e => e.into(),
    }
}

/// `--threads` is refused above this many threads per available core.
const MAX_THREADS_PER_CORE: usize = 8;

/// Where the model runs: shared by `run`, `chat`, `serve` and `bench`.
#[derive(clap::Args, Clone, Debug)]
pub struct ExecArgs {
    /// Backend that runs the model: auto (CUDA, else a hardware GPU through wgpu, else the
    /// CPU, with a notice), cpu, gpu, gpu:cuda, gpu:wgpu or gpu:metal.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// CPU worker threads (default: every core; at most 8 per core).
    #[arg(long, short = 't', allow_negative_numbers = true, value_parser = non_negative)]
    threads: Option<usize>,
}

impl ExecArgs {
    /// Check the flags and set up the CPU thread pool; returns the thread count.
    pub fn apply(&self) -> Result<usize> {
        ingot_model::backend::check_built(self.kind()?).map_err(|e| anyhow::anyhow!("--backend {}: {e}", self.backend))?;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let threads = self.threads.unwrap_or(cores);
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        // More workers than cores only adds switching (10000 threads took minutes of CPU
        // time for a few tokens) and can exhaust memory for their stacks.
        let most = cores.saturating_mul(MAX_THREADS_PER_CORE);
        if threads > most {
            bail!("--threads {threads} is too many: at most {most} ({MAX_THREADS_PER_CORE} per core, {cores} cores)");
        }
        // The global pool is built once per process; rayon keeps its threads for every op.
        ingot_cpu::set_threads(threads)?;
        Ok(threads)
    }

    /// The backend named by `--backend`.
    pub fn kind(&self) -> Result<BackendKind> {
        self.backend
            .parse::<BackendKind>()
            .map_err(|_| anyhow::anyhow!("unknown --backend '{}' (expected auto, cpu, gpu, gpu:cuda, gpu:wgpu or gpu:metal)", self.backend))
    }

    /// Loads `path` onto the chosen backend (weights uploaded and kernels warmed up on a
    /// GPU); says on stderr when `auto` found no GPU and stays on the CPU.
    pub fn load_model(&self, path: &Path) -> Result<Model> {
        let kind = self.kind()?;
        let model = Model::load_on(path, kind).with_context(|| format!("loading {} on --backend {}", path.display(), self.backend))?;
        if kind == BackendKind::Auto && model.backend() == "cpu" {
            eprintln!("ingot: no GPU found, running on the CPU (--backend cpu says so and silences this)");
        }
        Ok(model)
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The prompt (or give it with --prompt).
    #[arg(conflicts_with = "prompt_flag")]
    prompt: Option<String>,
    /// The prompt.
    #[arg(long = "prompt", value_name = "TEXT")]
    prompt_flag: Option<String>,
    /// A GGUF model file, a known model's name (smollm2, gemma3, qwen2.5-coder) or a file on the
    /// Hugging Face Hub (hf:OWNER/REPO/FILE.gguf[@REVISION]); default: SmolLM2-135M-Instruct
    /// Q4_1. Models not in the cache are fetched on first use.
    #[arg(long, short)]
    model: Option<PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    exec: ExecArgs,
    /// Wrap the prompt in the model's chat template as one user message.
    #[arg(long)]
    chat: bool,
    /// Encode the texts of control tokens in the prompt (`<|im_start|>`, `<end_of_turn>`)
    /// as those tokens; by default the prompt, and chat message content, is plain text.
    #[arg(long)]
    parse_special: bool,
    /// Print one JSON object {prompt_ids, generated_ids, text, finish_reason} instead of
    /// streaming text (finish_reason as OpenAI's: "stop" for an end-of-generation token or a
    /// stop string, "length" for --max-tokens).
    #[arg(long)]
    json: bool,
    /// With --json: add `logprobs` (each generated token's log-probability) and
    /// `top_logprobs` (per step, the K most likely tokens as {id, token, logprob}), from
    /// the model's logits before penalties, temperature and filters; K at most 20.
    #[arg(long, value_name = "K", requires = "json", allow_negative_numbers = true, value_parser = non_negative)]
    top_logprobs: Option<usize>,
}

/// A model with its tokenizer, loaded from `--model` (or the default model).
pub struct Loaded {
    pub path: PathBuf,
    pub model: Arc<Model>,
    pub tok: Arc<Tokenizer>,
}

/// Loads the model and its tokenizer, reporting the load on stderr.
pub fn load(model: Option<&Path>, exec: &ExecArgs) -> Result<Loaded> {
    let path = models::resolve(model)?;
    let t_load = Instant::now();
    let model = exec.load_model(&path)?;
    let tok = Tokenizer::new(&Vocab::from_gguf(model.file())?)?;
    eprintln!(
        "ingot: {} ({}, {} layers) loaded on {} in {:.2}s",
        path.display(),
        model.config.arch.name(),
        model.config.n_layer,
        model.backend(),
        t_load.elapsed().as_secs_f64()
    );
    Ok(Loaded { path, model: Arc::new(model), tok: Arc::new(tok) })
}

impl Loaded {
    /// The model's chat template (the file's, else Ingot's built-in one for its architecture).
    pub fn chat_template(&self) -> Result<ChatTemplate> {
        let arch = self.model.config.arch.name();
        let src = match self.model.file().get_str("tokenizer.chat_template") {
            Ok(s) => s.to_string(),
            Err(_) => default_template(arch)
                .with_context(|| format!("{} has no chat template and Ingot knows none for {arch}", self.path.display()))?
                .to_string(),
        };
        Ok(ChatTemplate::new(&src)?)
    }

    /// Renders `messages` with the generation prompt and encodes them (the template writes
    /// any BOS itself): the template's markup gives control tokens, message content only
    /// plain text unless `parse_special`.
    pub fn encode_chat(&self, template: &ChatTemplate, messages: &[Message], parse_special: bool) -> Result<Vec<u32>> {
        Ok(template.encode(&self.tok, messages, true, parse_special)?)
    }
}

pub fn run(a: RunArgs) -> Result<ExitCode> {
    let prompt = a.prompt.or(a.prompt_flag).context("no prompt: give it as an argument or with --prompt")?;
    // Every flag is checked before the model is loaded (with llama.cpp's defaults for the
    // settings left out), then the parameters are made with the model's defaults.
    let checked = SamplingParams { logprobs: a.top_logprobs, ..a.sampling.params(&SamplingDefaults::default())? };
    checked.validate().map_err(flag_error)?;
    a.exec.apply()?;
    let m = load(a.model.as_deref(), &a.exec)?;
    let params = SamplingParams { logprobs: a.top_logprobs, ..a.sampling.params_for(&m)? };
    let prompt_ids = if a.chat {
        m.encode_chat(&m.chat_template()?, &[Message::new("user", prompt)], a.parse_special)?
    } else {
        m.tok.encode(&prompt, true, a.parse_special)?
    };
    if prompt_ids.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let context = m.model.config.context;
    if prompt_ids.len() + params.max_tokens > context {
        bail!("{} prompt tokens + {} new tokens exceed the model's context of {context}", prompt_ids.len(), params.max_tokens);
    }
    // The engine `serve` runs, sized for this one sequence: a request is a batch of one.
    let engine = Engine::start(m.model.clone(), m.tok.clone(), EngineConfig::for_one_sequence(prompt_ids.len() + params.max_tokens))?;
    let stdout = std::io::stdout();
    let g = engine.submit(GenRequest { prompt: prompt_ids.clone(), params }).map_err(flag_error).and_then(|mut h| {
        Ok(h.wait(|piece| {
            if !a.json {
                let mut o = stdout.lock();
                o.write_all(piece.as_bytes())?;
                o.flush()?;
            }
            Ok(())
        })?)
    });
    engine.shutdown();
    let g = g?;
    if a.json {
        let finish = crate::serve_api::finish_reason(g.finish);
        let mut j = serde_json::json!({"prompt_ids": prompt_ids, "generated_ids": g.tokens, "text": g.text, "finish_reason": finish});
        if a.top_logprobs.is_some() {
            // A token's own bytes (as the server's logprobs give them), as text.
            let token = |id: u32| String::from_utf8_lossy(&m.tok.token_piece(id).unwrap_or_default()).into_owned();
            let entry = |id: u32, lp: f32| serde_json::json!({"id": id, "token": token(id), "logprob": lp});
            j["logprobs"] = g.logprobs.iter().map(|t| serde_json::json!(t.logprob)).collect();
            j["top_logprobs"] =
                g.logprobs.iter().map(|t| t.top.iter().map(|&(id, lp)| entry(id, lp)).collect::<serde_json::Value>()).collect();
        }
        println!("{j}");
    } else if !g.text.is_empty() {
        println!();
    }
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let (tp, tg) = (g.usage.prompt_time.as_secs_f64(), g.usage.gen_time.as_secs_f64());
    eprintln!(
        "ingot: prompt {} tokens in {tp:.2}s ({:.1} tok/s); generated {} tokens in {tg:.2}s ({:.1} tok/s)",
        prompt_ids.len(),
        rate(prompt_ids.len(), tp),
        g.tokens.len(),
        rate(g.tokens.len(), tg)
    );
    Ok(ExitCode::SUCCESS)
}
