//! `ingot serve`: an OpenAI-compatible HTTP server (axum on a multi-thread tokio runtime)
//! over one model and its [`Engine`]; concurrent requests share the engine's batches. The
//! routes and shapes are in serve_http.rs and serve_api.rs; this file loads the model,
//! starts the engine, binds and shuts down on Ctrl-C / SIGTERM.

use crate::run_cmd::load;
use crate::sampling_defaults::{describe, SamplingDefaults};
use crate::serve_api::{TokenLogprobs, Usage};
use crate::serve_http::{
    self, Access, AppState, ConnLimits, EncodeError, EventStream, GenEvent, Generator, Limits, Metric, MetricKind, SubmitError,
};
use anyhow::{bail, Context, Result};
use futures_util::stream::{self, StreamExt};
use ingot_engine::{Engine, EngineConfig, Event, GenRequest, RequestHandle, SamplingParams};
use ingot_model::chat::{ChatTemplate, Message};
use ingot_model::tokenizer::Tokenizer;
use ingot_model::Pooling;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    exec: crate::run_cmd::ExecArgs,
    /// A GGUF model file, a known model's name or hf:OWNER/REPO/FILE.gguf[@REVISION]; default:
    /// SmolLM2-135M-Instruct Q4_1, fetched into the cache on first use.
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port to listen on; 0 picks a free one (the address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The model's id in responses and /v1/models (default: the file name without .gguf).
    #[arg(long)]
    alias: Option<String>,
    /// Most tokens of one request, prompt and reply together (default: the model's context).
    #[arg(long = "ctx-size", short = 'c')]
    ctx_size: Option<usize>,
    /// Tokens per KV page.
    #[arg(long = "page-size", default_value_t = EngineConfig::default().page_size)]
    page_size: usize,
    /// KV pages in the pool, shared by all requests (default: 1 GiB of pages, at least one
    /// full context).
    #[arg(long = "kv-pages")]
    kv_pages: Option<usize>,
    /// Most tokens in one forward pass, prefill chunks included.
    #[arg(long = "max-batch-tokens", default_value_t = EngineConfig::default().max_batch_tokens)]
    max_batch_tokens: usize,
    /// Most requests running at once (more wait in a queue).
    #[arg(long = "max-seqs", default_value_t = EngineConfig::default().max_seqs)]
    max_seqs: usize,
    /// Seconds a client has to send a request's headers; after that the connection is closed
    /// (idle keep-alive connections too).
    #[arg(long = "header-timeout", value_name = "SECS", default_value_t = 10.0)]
    header_timeout: f64,
    /// Seconds a client has to send a request's body once its headers have arrived; after
    /// that the request is answered with a 408 and the connection is closed.
    #[arg(long = "body-timeout", value_name = "SECS", default_value_t = 20.0)]
    body_timeout: f64,
    /// Most connections open at once; more wait in the listen queue until one closes. Keep
    /// it below the open-file limit (`ulimit -n`).
    #[arg(long = "max-connections", value_name = "N", default_value_t = 512)]
    max_connections: usize,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health and the chat page (401 otherwise).
    #[arg(long = "api-key", value_name = "KEY", env = "INGOT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Let web pages from ORIGIN (scheme://host[:port], or * for any) call the server: CORS
    /// preflights are answered and CORS headers added for it. Repeatable; default: none.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// How /v1/embeddings pools a text's final hidden states: mean, cls or last (default:
    /// the model file's pooling_type, else mean).
    #[arg(long, value_name = "HOW", value_parser = ["mean", "cls", "last"])]
    pooling: Option<String>,
}

/// Most seconds a timeout flag may be (a day).
const MAX_TIMEOUT_SECS: f64 = 86_400.0;

/// What the flags ask for, checked before anything is loaded.
struct Checked {
    cfg: EngineConfig,
    access: Access,
    conn: ConnLimits,
    body_timeout: Duration,
}

/// A timeout flag as a duration: more than 0 s, at most a day.
fn timeout(flag: &str, secs: f64) -> Result<Duration> {
    if !(secs > 0.0 && secs <= MAX_TIMEOUT_SECS) {
        bail!("--{flag} must be more than 0 and at most {MAX_TIMEOUT_SECS} seconds, got {secs}");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Checks every flag that does not need the model, so a wrong value fails at once with a
/// message that names the flag (not after loading or downloading a model).
fn check_flags(a: &ServeArgs) -> Result<Checked> {
    let at_least_1 = |flag: &str, v: Option<usize>| match v {
        Some(0) => bail!("--{flag} must be at least 1"),
        _ => Ok(()),
    };
    at_least_1("ctx-size", a.ctx_size)?;
    at_least_1("page-size", Some(a.page_size))?;
    at_least_1("kv-pages", a.kv_pages)?;
    at_least_1("max-seqs", Some(a.max_seqs))?;
    at_least_1("max-batch-tokens", Some(a.max_batch_tokens))?;
    at_least_1("max-connections", Some(a.max_connections))?;
    if a.max_batch_tokens < a.max_seqs {
        bail!("--max-batch-tokens ({}) must be at least --max-seqs ({})", a.max_batch_tokens, a.max_seqs);
    }
    if a.alias.as_deref() == Some("") {
        bail!("--alias must not be empty");
    }
    let conn = ConnLimits { max_connections: a.max_connections, header_timeout: timeout("header-timeout", a.header_timeout)? };
    let body_timeout = timeout("body-timeout", a.body_timeout)?;
    let access = Access::new(a.api_key.clone(), a.cors_origins.clone()).map_err(anyhow::Error::msg)?;
    let cfg = EngineConfig {
        page_size: a.page_size,
        num_pages: a.kv_pages.unwrap_or(0),
        max_batch_tokens: a.max_batch_tokens,
        max_seqs: a.max_seqs,
    };
    Ok(Checked { cfg, access, conn, body_timeout })
}

/// A warning line when the server would listen on an address other machines can reach
/// (any that `--host` resolves to is not loopback) with no API key.
fn exposure_warning(host: &str, port: u16, access: &Access) -> Option<String> {
    if access.api_key.is_some() {
        return None;
    }
    let ip = (host, port).to_socket_addrs().ok()?.find(|a| !a.ip().is_loopback())?.ip();
    let shown = if ip.to_string() == host { host.to_string() } else { format!("{host} ({ip})") };
    Some(format!(
        "ingot: warning: --host {shown} is not a loopback address and there is no --api-key: anyone who can reach it can use this server"
    ))
}

/// The model and its engine, as the router sees them.
struct EngineGenerator {
    engine: Engine,
    tok: Arc<Tokenizer>,
    /// The chat template, or why there is none.
    template: Result<ChatTemplate, String>,
    context: usize,
    vocab: usize,
    /// The longest token's bytes ([`Generator::max_token_bytes`]).
    max_token_bytes: usize,
    /// The sampling settings of requests that leave them out.
    defaults: SamplingParams,
    /// How embeddings pool a text's hidden states.
    pooling: Pooling,
}

/// A request handle that cancels its request when dropped before the last event (the
/// engine would also notice the closed channel; cancelling wakes it at once).
struct Cancelling {
    handle: RequestHandle,
    ended: bool,
}

impl Drop for Cancelling {
    fn drop(&mut self) {
        if !self.ended {
            self.handle.cancel();
        }
    }
}

impl Generator for EngineGenerator {
    fn context(&self) -> usize {
        self.context
    }

    fn healthy(&self) -> bool {
        self.engine.is_running()
    }

    fn vocab(&self) -> usize {
        self.vocab
    }

    fn embed(&self, texts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, SubmitError> {
        let refs: Vec<&[u32]> = texts.iter().map(Vec::as_slice).collect();
        self.engine.model().embed(&refs, self.pooling).map_err(|e| SubmitError::Invalid(e.to_string()))
    }

    fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    fn default_params(&self) -> SamplingParams {
        self.defaults.clone()
    }

    fn encode_text(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, String> {
        // BOS as the model wants it; control-token texts only when the request asks.
        self.tok.encode(text, true, parse_special).map_err(|e| e.to_string())
    }

    fn encode_chat(&self, messages: &[Message], max_bytes: usize, parse_special: bool) -> Result<Vec<u32>, EncodeError> {
        // As `ingot run --chat` and `ingot chat` (run_cmd.rs, Loaded::encode_chat): the
        // template writes any BOS itself; its markup is special, the content plain text.
        let template = self.template.as_ref().map_err(|e| EncodeError::Invalid(e.clone()))?;
        let r = template.render_marked(&self.tok, messages, true, parse_special).map_err(|e| EncodeError::Invalid(e.to_string()))?;
        if r.text.len() > max_bytes {
            return Err(EncodeError::TooLong(r.text.len()));
        }
        r.encode(&self.tok).map_err(|e| EncodeError::Invalid(e.to_string()))
    }

    fn submit(&self, prompt: Vec<u32>, params: SamplingParams) -> Result<EventStream, SubmitError> {
        let handle = self.engine.submit(GenRequest { prompt, params }).map_err(|e| match e {
            ingot_engine::Error::Request(_) | ingot_engine::Error::Param { .. } => SubmitError::Invalid(e.to_string()),
            e => SubmitError::Unavailable(e.to_string()),
        })?;
        let tok = self.tok.clone();
        let events = stream::unfold((Cancelling { handle, ended: false }, tok), |(mut c, tok)| async move {
            if c.ended {
                return None;
            }
            let ev = match c.handle.events.recv().await? {
                Event::Text { text, logprobs, .. } => {
                    let bytes = |id: u32| tok.token_piece(id).unwrap_or_default();
                    let logprobs = logprobs
                        .into_iter()
                        .map(|t| TokenLogprobs {
                            bytes: bytes(t.id),
                            logprob: t.logprob,
                            top: t.top.iter().map(|&(id, lp)| (bytes(id), lp)).collect(),
                        })
                        .collect();
                    GenEvent::Text { text, logprobs }
                }
                Event::Done { finish, usage } => {
                    c.ended = true;
                    let u = Usage {
                        prompt_tokens: usage.prompt_tokens,
                        completion_tokens: usage.completion_tokens,
                        cached_tokens: usage.cached_prompt_tokens,
                    };
                    GenEvent::Done { finish, usage: u }
                }
                Event::Error(e) => {
                    c.ended = true;
                    GenEvent::Error(e)
                }
            };
            Some((ev, (c, tok)))
        });
        Ok(events.boxed())
    }

    fn metrics(&self) -> Vec<Metric> {
        let m = self.engine.metrics();
        let c = |name, help, value: u64| Metric { name, help, kind: MetricKind::Counter, value: value as f64 };
        let g = |name, help, value: usize| Metric { name, help, kind: MetricKind::Gauge, value: value as f64 };
        vec![
            c("ingot_steps_total", "Forward passes run.", m.steps),
            c("ingot_batched_steps_total", "Forward passes shared by two sequences or more.", m.batched_steps),
            g("ingot_max_seqs_in_step", "The most sequences that shared one forward pass.", m.max_seqs_in_step),
            c("ingot_prompt_tokens_total", "Prompt tokens of the requests accepted.", m.prompt_tokens),
            c(
                "ingot_prefill_tokens_total",
                "Prompt rows run through the model (recomputation after preemption included).",
                m.prefill_tokens,
            ),
            c("ingot_generation_tokens_total", "Tokens generated.", m.generated_tokens),
            c("ingot_prefix_cached_tokens_total", "Prompt tokens served from cached KV pages.", m.prefix_cached_tokens),
            c("ingot_preemptions_total", "Times a running sequence gave up its KV pages to make room.", m.preemptions),
            c("ingot_requests_finished_total", "Requests that ended normally (any finish reason).", m.finished),
            g("ingot_requests_running", "Requests running.", m.running),
            g("ingot_requests_waiting", "Requests waiting for room.", m.waiting),
            g("ingot_kv_pages_free", "KV pages that can be handed out now.", m.free_pages),
            g("ingot_kv_pages_total", "KV pages in the pool.", m.total_pages),
        ]
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

pub fn run(a: ServeArgs) -> Result<ExitCode> {
    let Checked { cfg, access, conn, body_timeout } = check_flags(&a)?;
    if let Some(w) = exposure_warning(&a.host, a.port, &access) {
        eprintln!("{w}");
    }
    a.exec.apply()?;
    let m = load(a.model.as_deref(), &a.exec)?;
    let model_context = m.model.config.context;
    let context = match a.ctx_size {
        None => model_context,
        Some(c) if c > model_context => bail!("--ctx-size {c} exceeds the model's context of {model_context}"),
        Some(c) => c,
    };
    let model_id = match a.alias {
        Some(s) => s,
        None => m.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into()),
    };
    let template = m.chat_template().map_err(|e| format!("{e:#}"));
    if let Err(e) = &template {
        eprintln!("ingot: /v1/chat/completions is unavailable: {e}");
    }
    let vocab = m.model.config.vocab;
    // Each token of an encoding stands for at most its piece's bytes of the text (a byte
    // token for one byte, a special token for its text), so the longest piece bounds them.
    let max_token_bytes = (0..m.tok.n_tokens()).filter_map(|i| m.tok.token_piece(i as u32).ok()).map(|p| p.len()).max().unwrap_or(1).max(1);
    let sampling = SamplingDefaults::from_gguf(m.model.file());
    for why in &sampling.ignored {
        eprintln!("ingot: the model's {why}; not used");
    }
    let defaults = sampling.params(SamplingParams::default());
    eprintln!("ingot: sampling defaults of requests: {} ({})", describe(&defaults), sampling.source());
    let pooling = match a.pooling.as_deref() {
        Some(p) => Pooling::parse(p).with_context(|| format!("--pooling {p}"))?,
        None => m.model.config.pooling.unwrap_or(Pooling::Mean),
    };
    let tok = m.tok;
    let engine = Engine::start(m.model, tok.clone(), cfg).context("starting the engine")?;
    let c = engine.config();
    eprintln!(
        "ingot: engine: {} KV pages of {} tokens, {} sequences and {} tokens per step at most; {context} tokens per request",
        c.num_pages, c.page_size, c.max_seqs, c.max_batch_tokens
    );
    // A request must fit the page budget too (the last generated token needs no page).
    let context = match (c.num_pages * c.page_size).saturating_add(1) {
        room if room < context => {
            eprintln!("ingot: the KV pages hold {room} tokens: requests are limited to that (instead of {context})");
            room
        }
        _ => context,
    };
    let gen = EngineGenerator { engine: engine.clone(), tok, template, context, vocab, max_token_bytes, defaults, pooling };
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let limits = Limits { body_timeout, ..Limits::default() };
    let state = Arc::new(AppState::new(Arc::new(gen), model_id, created, limits));
    let app = serve_http::router(state, &access);

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the tokio runtime")?;
    let result = rt.block_on(async {
        let listener =
            tokio::net::TcpListener::bind((a.host.as_str(), a.port)).await.with_context(|| format!("binding {}:{}", a.host, a.port))?;
        let addr: SocketAddr = listener.local_addr()?;
        eprintln!("listening on http://{addr}");
        let engine = engine.clone();
        let shutdown = async move {
            shutdown_signal().await;
            eprintln!("ingot: shutting down");
            // Outstanding requests end with an error event, so their streams close and
            // the server can finish.
            let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        };
        serve_http::serve(listener, app, conn, shutdown).await;
        anyhow::Ok(())
    });
    engine.shutdown();
    result?;
    Ok(ExitCode::SUCCESS)
}
