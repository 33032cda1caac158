//! The HTTP side of `ingot serve`: the connection loop, the axum router, its handlers,
//! Server-Sent Events streams and the Prometheus text of `/metrics`. A [`Generator`] stands
//! between the router and the engine; `ingot serve` gives it the real engine (serve_cmd.rs),
//! the tests here a scripted one.
//!
//! What a client can cost the server is bounded before a request reaches the engine: the
//! connection loop ([`serve`]) holds at most [`ConnLimits::max_connections`] connections and
//! closes one whose request head does not arrive within [`ConnLimits::header_timeout`]; a
//! body must arrive within [`Limits::body_timeout`] (408) and be at most
//! [`Limits::body_bytes`] (413). Parsing, checking and tokenizing a body run on blocking
//! threads, [`Limits::workers`] at a time with at most [`Limits::queue`] more waiting (503
//! beyond), never on the threads that serve connections, so `/health` and streams stay
//! responsive while large bodies are handled; a prompt text longer than the context could
//! hold is refused without being tokenized.
//!
//! A request's events arrive on an [`EventStream`] that owns the engine's request handle:
//! when a client disconnects, hyper drops the handler's future (non-streaming) or the
//! response body (streaming), the stream is dropped with it and the engine cancels the
//! sequence and frees its pages. hyper learns that a client left when a write fails, so
//! streams send an SSE comment each second while they have nothing else to say (a queued
//! request, a long prefill).

use crate::serve_api::{self, ApiError, Endpoint, GenOptions, Prompt, ResponseMeta, TokenLogprobs, Usage};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, BoxStream, StreamExt};
use ingot_engine::{FinishReason, SamplingParams};
use ingot_model::chat::Message;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// One event of a running request.
#[derive(Clone, Debug, PartialEq)]
pub enum GenEvent {
    /// Settled text (stop strings already removed), and when the request asked for them
    /// the log-probabilities of the tokens generated since the last Text event (a last Text
    /// event may have tokens and no text: those of a stop string).
    Text { text: String, logprobs: Vec<TokenLogprobs> },
    /// The last event of a request that ended normally.
    Done { finish: FinishReason, usage: Usage },
    /// The last event of a request that failed (the engine stopped, a kernel failed).
    Error(String),
}

/// The events of one request; dropping it cancels the request.
pub type EventStream = BoxStream<'static, GenEvent>;

/// Why a request was not queued.
#[derive(Clone, Debug, PartialEq)]
pub enum SubmitError {
    /// The request's fault (400).
    Invalid(String),
    /// The engine cannot take requests (503).
    Unavailable(String),
}

/// Why chat messages were not encoded.
#[derive(Clone, Debug, PartialEq)]
pub enum EncodeError {
    /// The rendered text has this many bytes, more than the limit: it was not tokenized.
    TooLong(usize),
    /// The request's fault, such as a template that refuses the conversation (400).
    Invalid(String),
}

/// Prometheus metric kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// One metric of `/metrics`.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricKind,
    pub value: f64,
}

/// What the router needs from a model and its engine.
pub trait Generator: Send + Sync + 'static {
    /// Most tokens one request may hold, prompt and generated together.
    fn context(&self) -> usize;
    /// Token ids are below this.
    fn vocab(&self) -> usize;
    /// The most bytes of text one token of an encoding stands for (the longest token): a
    /// text of more than `context() * max_token_bytes()` bytes cannot fit the context.
    fn max_token_bytes(&self) -> usize;
    /// A completion prompt as tokens (BOS as the model wants it); the texts of control
    /// tokens in it are those tokens only with `parse_special`, else plain text.
    fn encode_text(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, String>;
    /// Chat messages rendered with the model's chat template and the generation prompt, as
    /// tokens: the template's markup gives control tokens, message content only text unless
    /// `parse_special`; a rendered text of more than `max_bytes` bytes is not tokenized.
    fn encode_chat(&self, messages: &[Message], max_bytes: usize, parse_special: bool) -> Result<Vec<u32>, EncodeError>;
    /// The sampling settings of a request that leaves them out (temperature, top-k, top-p,
    /// min-p, repetition penalty; the rest of it is ignored).
    fn default_params(&self) -> SamplingParams;
    /// Queues a request.
    fn submit(&self, prompt: Vec<u32>, params: SamplingParams) -> Result<EventStream, SubmitError>;
    /// The engine's counters and gauges now.
    fn metrics(&self) -> Vec<Metric>;
    /// Whether the engine still serves requests (`/health` answers 503 once it stopped).
    fn healthy(&self) -> bool;
    /// Embeddings of `texts` (token ids each, none empty, none over the context), one unit
    /// vector each, in order (runs on a blocking thread).
    fn embed(&self, texts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, SubmitError> {
        let _ = texts;
        Err(SubmitError::Unavailable("this server computes no embeddings".into()))
    }
}

/// What a request may cost before it reaches the engine.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bodies over this many bytes are refused (413).
    pub body_bytes: usize,
    /// A body must have arrived whole this long after its request's headers (else 408 and
    /// the connection is closed).
    pub body_timeout: Duration,
    /// Bodies parsed, checked and tokenized at once, each on a blocking thread (by default
    /// half the cores, so that this work leaves the threads serving connections room).
    pub workers: usize,
    /// Requests that may wait for one of the workers; more are refused at once (503).
    pub queue: usize,
}

impl Default for Limits {
    /// 8 MiB bodies within 20 s; a worker per two cores (at least one), 64 requests waiting.
    fn default() -> Limits {
        Limits {
            body_bytes: 8 << 20,
            body_timeout: Duration::from_secs(20),
            workers: (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) / 2).max(1),
            queue: 64,
        }
    }
}

/// Who may call the API: an API key, and the origins of web pages allowed to (CORS).
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// When set, every endpoint but `/health` and the chat page's files requires
    /// `Authorization: Bearer KEY` (401).
    pub api_key: Option<String>,
    /// Origins whose pages may call the API, as browsers send them in `Origin`; `*` for any.
    /// None: no CORS headers, and preflight requests get a 405.
    pub cors_origins: Vec<String>,
}

impl Access {
    /// Checks the key (not empty) and the origins (`*`, or `scheme://host[:port]` with no
    /// path); the message names the flag.
    pub fn new(api_key: Option<String>, cors_origins: Vec<String>) -> Result<Access, String> {
        if api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err("--api-key must not be empty".into());
        }
        for o in &cors_origins {
            let ok = o == "*"
                || o.split_once("://").is_some_and(|(scheme, rest)| {
                    !scheme.is_empty()
                        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                        && !rest.is_empty()
                        && !rest.contains(['/', '?', '#', ' '])
                }) && HeaderValue::from_str(o).is_ok();
            if !ok {
                return Err(format!(
                    "--cors-origin {o:?} is not an origin: give scheme://host[:port] as browsers send it (no path, no trailing /), or *"
                ));
            }
        }
        Ok(Access { api_key, cors_origins })
    }

    /// The CORS layer for the origins, if any: preflights answered, `Access-Control-Allow-Origin`
    /// on responses to those origins only, for GET and POST with `Content-Type` and
    /// `Authorization` headers.
    fn cors(&self) -> Option<CorsLayer> {
        if self.cors_origins.is_empty() {
            return None;
        }
        let origins = if self.cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(self.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        };
        Some(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
                .max_age(Duration::from_secs(600)),
        )
    }
}

/// Runs the CPU-heavy part of requests (JSON parsing, checking, chat templates,
/// tokenization) on tokio's blocking threads, `workers` at a time, with at most `queue`
/// requests waiting; past that a request is refused with a 503 at once.
struct WorkQueue {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
}

/// Counts one waiting request while alive.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl WorkQueue {
    fn new(limits: &Limits) -> WorkQueue {
        WorkQueue { slots: Arc::new(Semaphore::new(limits.workers.max(1))), waiting: AtomicUsize::new(0), queue: limits.queue }
    }

    async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        let busy = || {
            ApiError::server(StatusCode::SERVICE_UNAVAILABLE, "the server is busy: too many requests are waiting to be read; retry later")
        };
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let _waiting = Waiting(&self.waiting);
                if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.queue {
                    return Err(busy());
                }
                self.slots.clone().acquire_owned().await.map_err(|_| busy())?
            }
        };
        // A client that leaves does not stop its job (it is bounded: one body), but the
        // permit goes with the job, so the bound on jobs running at once holds.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        })
        .await
        .map_err(|e| ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, format!("the request could not be processed: {e}")))
    }
}

/// What the handlers share.
pub struct AppState {
    pub gen: Arc<dyn Generator>,
    /// The model's id in responses and `/v1/models`.
    pub model_id: String,
    /// When the model was loaded (Unix seconds).
    pub created: u64,
    pub limits: Limits,
    work: WorkQueue,
}

impl AppState {
    pub fn new(gen: Arc<dyn Generator>, model_id: String, created: u64, limits: Limits) -> AppState {
        let work = WorkQueue::new(&limits);
        AppState { gen, model_id, created, limits, work }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let close = matches!(self.status, StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE);
        let mut r = (self.status, Json(self.body())).into_response();
        if close {
            // The rest of the body is not read: the connection cannot carry another request.
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// The router: the OpenAI-compatible endpoints, `/health`, `/metrics` and the chat page at
/// `/` (serve_page.rs); JSON errors for unknown routes (404), wrong methods (405), bodies
/// that are not sent as JSON (415), too large (413) or too slow (408); with `access`, the
/// API key (401) and CORS.
pub fn router(state: Arc<AppState>, access: &Access) -> Router {
    let mut r = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .merge(crate::serve_page::routes())
        .fallback(|method: Method, uri: Uri| async move {
            ApiError::status(StatusCode::NOT_FOUND, format!("no such endpoint: {method} {}", uri.path()))
        })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            ApiError::status(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {}", uri.path()))
        })
        .with_state(state);
    if let Some(key) = &access.api_key {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        r = r.layer(middleware::from_fn_with_state(Arc::new(digest), require_api_key));
    }
    // Outside the key check: preflights carry no Authorization header, and a 401 needs the
    // CORS headers for the page to read it.
    if let Some(cors) = access.cors() {
        r = r.layer(cors);
    }
    // Outermost: whatever answered, a request body left unread closes the connection.
    r.layer(middleware::from_fn(close_if_body_unread))
}

/// A request body that records when it has been read to its end.
struct TrackedBody {
    inner: Body,
    read_whole: Arc<std::sync::atomic::AtomicBool>,
}

impl axum::body::HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read_whole.store(true, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Answers that did not read the whole request body (unknown routes, wrong methods, 401,
/// 415, 413, 408) carry `Connection: close`: the unread rest would otherwise be taken for
/// the next request, or the server closes the connection after the reply and a client that
/// pooled it finds it dead on its next request.
async fn close_if_body_unread(req: Request, next: Next) -> Response {
    use axum::body::HttpBody as _;
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let read_whole = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tracked = TrackedBody { inner: body, read_whole: read_whole.clone() };
    let mut r = next.run(Request::from_parts(parts, Body::new(tracked))).await;
    if !read_whole.load(Ordering::Relaxed) {
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// Lets requests with the right `Authorization: Bearer KEY` through (and any to `/health` or
/// the chat page's files, whose API calls send the key); the key's digest is compared, in
/// time that does not depend on where they differ.
async fn require_api_key(State(key): State<Arc<[u8; 32]>>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/health" || crate::serve_page::is_page(req.uri().path()) {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let Some(token) = token else {
        return unauthorized("an API key is required: send 'Authorization: Bearer KEY'");
    };
    let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if given.iter().zip(key.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
        return unauthorized("the API key is not valid");
    }
    next.run(req).await
}

fn unauthorized(msg: &str) -> Response {
    ApiError { code: Some("invalid_api_key"), ..ApiError::status(StatusCode::UNAUTHORIZED, msg) }.into_response()
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    if st.gen.healthy() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "error", "message": "the engine has stopped"}))).into_response()
    }
}

async fn models(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": st.model_id, "object": "model", "created": st.created, "owned_by": "ingot", "max_model_len": st.gen.context()}],
    }))
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], prometheus_text(&st.gen.metrics())).into_response()
}

/// Prometheus' text exposition format.
pub fn prometheus_text(metrics: &[Metric]) -> String {
    let mut s = String::new();
    for m in metrics {
        let kind = match m.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        };
        let _ = writeln!(s, "# HELP {} {}\n# TYPE {} {kind}\n{} {}", m.name, m.help, m.name, m.name, m.value);
    }
    s
}

/// A 415 unless the body is declared JSON (`application/json`, parameters allowed). Web
/// pages can send `text/plain` and form bodies to any address without asking (no CORS
/// preflight), so refusing them keeps other sites from driving a local server.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers.get(header::CONTENT_TYPE);
    let essence = ct.and_then(|v| v.to_str().ok()).and_then(|s| s.split(';').next()).map(str::trim);
    if essence.is_some_and(|m| m.eq_ignore_ascii_case("application/json")) {
        return Ok(());
    }
    let got = match ct {
        Some(v) => format!("{:?}", String::from_utf8_lossy(v.as_bytes())),
        None => "none".into(),
    };
    Err(ApiError::status(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("the request body must be JSON sent with 'Content-Type: application/json' (the Content-Type was {got})"),
    ))
}

/// The body of a JSON request: 415 for another content type, 413 over the size limit, 408
/// when it has not arrived whole within the body timeout.
async fn json_body(limits: &Limits, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    require_json(headers)?;
    match tokio::time::timeout(limits.body_timeout, axum::body::to_bytes(body, limits.body_bytes)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let inner = e.into_inner();
            if inner.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Err(ApiError::status(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is too large (over {} bytes)", limits.body_bytes),
                ))
            } else {
                Err(ApiError::status(StatusCode::BAD_REQUEST, format!("the request body could not be read: {inner}")))
            }
        }
        Err(_) => Err(ApiError::status(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {} s", limits.body_timeout.as_secs_f64()),
        )),
    }
}

/// A completion request's prompt tokens and options, checked against the context (runs
/// on a blocking thread).
fn prepare_completion(st: &AppState, body: &[u8]) -> Result<(Vec<u32>, GenOptions), ApiError> {
    let req = serve_api::completion_request(&serve_api::parse_body(body)?, st.gen.vocab(), &st.gen.default_params())?;
    let context = st.gen.context();
    let prompt = match req.prompt {
        Prompt::Text(t) => {
            serve_api::check_prompt_bytes("prompt", t.len(), context, st.gen.max_token_bytes())?;
            st.gen.encode_text(&t, req.parse_special).map_err(|e| ApiError::invalid(Some("prompt"), e))?
        }
        Prompt::Tokens(t) => t,
    };
    let mut opts = req.opts;
    opts.fit(prompt.len(), context)?;
    Ok((prompt, opts))
}

/// A chat request's prompt tokens and options (runs on a blocking thread).
fn prepare_chat(st: &AppState, body: &[u8]) -> Result<(Vec<u32>, GenOptions), ApiError> {
    let req = serve_api::chat_request(&serve_api::parse_body(body)?, st.gen.vocab(), &st.gen.default_params())?;
    let (context, token_bytes) = (st.gen.context(), st.gen.max_token_bytes());
    let max_bytes = context.saturating_mul(token_bytes.max(1));
    let prompt = st.gen.encode_chat(&req.messages, max_bytes, req.parse_special).map_err(|e| match e {
        EncodeError::TooLong(bytes) => match serve_api::check_prompt_bytes("messages", bytes, context, token_bytes) {
            Err(e) => e,
            // The generator's bound was tighter than this one: the same refusal.
            Ok(()) => {
                ApiError { code: Some("context_length_exceeded"), ..ApiError::invalid(Some("messages"), "the messages are too long") }
            }
        },
        EncodeError::Invalid(m) => ApiError::invalid(Some("messages"), m),
    })?;
    let mut opts = req.opts;
    opts.fit(prompt.len(), context)?;
    Ok((prompt, opts))
}

async fn completions(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let run = async {
        let body = json_body(&st.limits, &headers, body).await?;
        let job = st.clone();
        let (prompt, opts) = st.work.run(move || prepare_completion(&job, &body)).await??;
        generate(&st, Endpoint::Completions, prompt, opts).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let run = async {
        let body = json_body(&st.limits, &headers, body).await?;
        let job = st.clone();
        let (prompt, opts) = st.work.run(move || prepare_chat(&job, &body)).await??;
        generate(&st, Endpoint::Chat, prompt, opts).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn embeddings(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let run = async {
        let body = json_body(&st.limits, &headers, body).await?;
        let job = st.clone();
        let out = st.work.run(move || embed_request(&job, &body)).await??;
        Ok::<_, ApiError>(Json(out).into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// An embeddings request answered whole (runs on a blocking thread): its inputs tokenized
/// as completion prompts are (BOS as the model wants it, control-token texts as plain
/// text), each within the context, then embedded together.
fn embed_request(st: &AppState, body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let req = serve_api::embedding_request(&serve_api::parse_body(body)?, st.gen.vocab())?;
    let context = st.gen.context();
    let mut texts = Vec::with_capacity(req.inputs.len());
    for (i, p) in req.inputs.into_iter().enumerate() {
        let param = format!("input[{i}]");
        let tokens = match p {
            Prompt::Text(t) => {
                serve_api::check_prompt_bytes(&param, t.len(), context, st.gen.max_token_bytes())?;
                st.gen.encode_text(&t, false).map_err(|e| ApiError::invalid(Some(&param), e))?
            }
            Prompt::Tokens(t) => t,
        };
        if tokens.is_empty() {
            return Err(ApiError::invalid(Some(&param), format!("'{param}' encodes to no tokens")));
        }
        if tokens.len() > context {
            return Err(ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid(
                    Some(&param),
                    format!("'{param}' is {} tokens, more than the context of {context} tokens", tokens.len()),
                )
            });
        }
        texts.push(tokens);
    }
    let tokens = texts.iter().map(Vec::len).sum();
    let vectors = st.gen.embed(&texts).map_err(|e| match e {
        SubmitError::Invalid(m) => ApiError::invalid(Some("input"), m),
        SubmitError::Unavailable(m) => ApiError::server(StatusCode::SERVICE_UNAVAILABLE, m),
    })?;
    Ok(serve_api::embedding_response(&st.model_id, &vectors, req.base64, tokens))
}

/// Queues the request (its budget already fitted to the context) and answers it whole or
/// as a stream. `max_tokens: 0` is answered without the engine: no text, finish "length".
async fn generate(st: &AppState, endpoint: Endpoint, prompt: Vec<u32>, opts: GenOptions) -> Result<Response, ApiError> {
    let events = if opts.params.max_tokens == 0 {
        let usage = Usage { prompt_tokens: prompt.len(), completion_tokens: 0, cached_tokens: 0 };
        stream::iter([GenEvent::Done { finish: FinishReason::MaxTokens, usage }]).boxed()
    } else {
        st.gen.submit(prompt, opts.params.clone()).map_err(|e| match e {
            SubmitError::Invalid(m) => ApiError::invalid(None, m),
            SubmitError::Unavailable(m) => ApiError::server(StatusCode::SERVICE_UNAVAILABLE, m),
        })?
    };
    let meta = ResponseMeta::new(endpoint, &st.model_id);
    let logprobs = opts.params.logprobs.is_some();
    if opts.stream {
        // Comment lines while nothing else is sent (a request still queued, a long prefill):
        // writing to a closed connection is how hyper learns that the client left, so a
        // client that leaves before its first token is noticed within about two intervals.
        let keep_alive = KeepAlive::new().interval(SSE_KEEP_ALIVE).text("");
        return Ok(Sse::new(sse_stream(events, meta, opts.include_usage, logprobs)).keep_alive(keep_alive).into_response());
    }
    let (text, finish, usage, entries) = collect(events).await?;
    let lp = meta.logprobs(logprobs.then_some(entries.as_slice()), &mut 0);
    Ok(Json(meta.response(&text, finish, &usage, lp)).into_response())
}

/// Limits on connections, for [`serve`].
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Connections served at once; more wait in the listen queue until one closes.
    pub max_connections: usize,
    /// A request's head (request line and headers) must arrive within this from when the
    /// server starts reading it; otherwise the connection is closed. An idle keep-alive
    /// connection is closed after it too.
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` (HTTP/1.1, hyper) until `shutdown` resolves, then stops
/// accepting and waits for the open connections to finish their requests.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, limits: ConnLimits, shutdown: impl Future<Output = ()>) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // Reads of at most 64 KiB: hyper yields after a fixed number of reads, so a connection
    // pouring in a large body gives the others (and /health) a turn every 1 MiB or so.
    // Request heads over 64 KiB get a 431.
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).max_buf_size(64 << 10).max_header_size(64 << 10);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // A connection that failed before it was accepted: the next one. Out of
                    // file descriptors or memory: wait a little for some to be freed.
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused
                    ) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(TokioIo::new(stream), hyper_util::service::TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // Errors are the client's (a malformed request, a header timeout, a reset).
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

fn engine_error(msg: &str) -> ApiError {
    ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, format!("generation failed: {msg}"))
}

/// How long an SSE stream stays silent before a keep-alive comment is sent.
const SSE_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);

const ENDED_EARLY: &str = "the engine stopped before the request finished";

/// Waits for a whole reply: its text, finish reason, usage and the log-probabilities of
/// its tokens (empty unless asked for).
async fn collect(mut events: EventStream) -> Result<(String, &'static str, Usage, Vec<TokenLogprobs>), ApiError> {
    let mut text = String::new();
    let mut entries = Vec::new();
    while let Some(ev) = events.next().await {
        match ev {
            GenEvent::Text { text: t, logprobs } => {
                text.push_str(&t);
                entries.extend(logprobs);
            }
            GenEvent::Done { finish, usage } => {
                let finish = serve_api::finish_reason(finish).ok_or_else(|| engine_error("the request was cancelled"))?;
                return Ok((text, finish, usage, entries));
            }
            GenEvent::Error(e) => return Err(engine_error(&e)),
        }
    }
    Err(engine_error(ENDED_EARLY))
}

/// The SSE events of a streamed reply: (chat) a first chunk with the role, a chunk per text
/// event (with `logprobs`: the log-probabilities of its tokens; an event with tokens but no
/// text gets a chunk too), a last chunk with the finish reason, (include_usage) a chunk with
/// the usage, and `[DONE]`. A failure mid-stream sends `{"error": …}` and `[DONE]`.
fn sse_stream(
    events: EventStream,
    meta: ResponseMeta,
    include_usage: bool,
    logprobs: bool,
) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> {
    struct St {
        events: EventStream,
        meta: ResponseMeta,
        include_usage: bool,
        logprobs: bool,
        /// Characters of text sent so far (the legacy `text_offset`).
        offset: usize,
        /// Data lines ready to send.
        out: VecDeque<String>,
        ended: bool,
    }
    let mut out = VecDeque::new();
    if meta.endpoint == Endpoint::Chat {
        out.push_back(meta.chunk("", true, None, include_usage, Value::Null).to_string());
    }
    let st = St { events, meta, include_usage, logprobs, offset: 0, out, ended: false };
    stream::unfold(st, |mut st| async move {
        loop {
            if let Some(data) = st.out.pop_front() {
                return Some((Ok(SseEvent::default().data(data)), st));
            }
            if st.ended {
                return None;
            }
            let fail = |msg: &str| engine_error(msg).body().to_string();
            match st.events.next().await {
                Some(GenEvent::Text { text, logprobs }) if text.is_empty() && (!st.logprobs || logprobs.is_empty()) => {}
                Some(GenEvent::Text { text, logprobs }) => {
                    let lp = st.meta.logprobs(st.logprobs.then_some(logprobs.as_slice()), &mut st.offset);
                    st.out.push_back(st.meta.chunk(&text, false, None, st.include_usage, lp).to_string());
                }
                Some(GenEvent::Done { finish, usage }) => {
                    st.ended = true;
                    match serve_api::finish_reason(finish) {
                        Some(f) => {
                            st.out.push_back(st.meta.chunk("", false, Some(f), st.include_usage, Value::Null).to_string());
                            if st.include_usage {
                                st.out.push_back(st.meta.usage_chunk(&usage).to_string());
                            }
                        }
                        None => st.out.push_back(fail("the request was cancelled")),
                    }
                    st.out.push_back("[DONE]".into());
                }
                Some(GenEvent::Error(e)) => {
                    st.ended = true;
                    st.out.extend([fail(&e), "[DONE]".into()]);
                }
                None => {
                    st.ended = true;
                    st.out.extend([fail(ENDED_EARLY), "[DONE]".into()]);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use tower::ServiceExt;

    /// A scripted generator: bytes are tokens; a request "generates" the words of `reply`
    /// (one Text event each), stopping at max_tokens or at a stop string found in a word.
    /// `live` counts requests whose event stream has not been dropped.
    struct Script {
        reply: Vec<&'static str>,
        live: Arc<AtomicUsize>,
        /// Event streams wait for this many permits per event (0 = no wait) so tests can
        /// hold a stream mid-way.
        gate: Option<Arc<tokio::sync::Semaphore>>,
        submitted: Mutex<Vec<(Vec<u32>, SamplingParams)>>,
        fail_with: Option<GenEvent>,
        /// Bytes of text tokenized.
        encoded: AtomicUsize,
        /// Calls of encode_chat.
        chat_calls: AtomicUsize,
        /// encode_chat waits for a message on this (blocking its worker) when set.
        encode_gate: Option<Mutex<std::sync::mpsc::Receiver<()>>>,
        /// The `parse_special` of each encoding, in order.
        parse_special: Mutex<Vec<bool>>,
    }

    struct Live(Arc<AtomicUsize>);
    impl Drop for Live {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Script {
        fn new(reply: &[&'static str]) -> Script {
            Script {
                reply: reply.to_vec(),
                live: Arc::default(),
                gate: None,
                submitted: Mutex::default(),
                fail_with: None,
                encoded: AtomicUsize::new(0),
                chat_calls: AtomicUsize::new(0),
                encode_gate: None,
                parse_special: Mutex::default(),
            }
        }
    }

    impl Generator for Script {
        fn context(&self) -> usize {
            64
        }
        fn healthy(&self) -> bool {
            self.fail_with.is_none()
        }
        fn vocab(&self) -> usize {
            256
        }
        fn max_token_bytes(&self) -> usize {
            1
        }
        fn default_params(&self) -> SamplingParams {
            SamplingParams { temperature: 0.7, top_k: 12, ..SamplingParams::default() }
        }
        fn encode_text(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, String> {
            self.parse_special.lock().unwrap().push(parse_special);
            self.encoded.fetch_add(text.len(), Ordering::SeqCst);
            Ok(text.bytes().map(u32::from).collect())
        }
        fn encode_chat(&self, messages: &[Message], max_bytes: usize, parse_special: bool) -> Result<Vec<u32>, EncodeError> {
            self.chat_calls.fetch_add(1, Ordering::SeqCst);
            if let Some(rx) = &self.encode_gate {
                let _ = rx.lock().unwrap().recv();
            }
            if messages.iter().any(|m| m.content == "bad template") {
                return Err(EncodeError::Invalid("the template raised: roles must alternate".into()));
            }
            let s: String = messages.iter().map(|m| format!("<{}>{}", m.role, m.content)).collect();
            if s.len() > max_bytes {
                return Err(EncodeError::TooLong(s.len()));
            }
            self.encode_text(&s, parse_special).map_err(EncodeError::Invalid)
        }
        fn submit(&self, prompt: Vec<u32>, params: SamplingParams) -> Result<EventStream, SubmitError> {
            if prompt.starts_with(b"##".map(u32::from).as_slice()) {
                return Err(SubmitError::Invalid("prompts starting with ## are refused".into()));
            }
            self.submitted.lock().unwrap().push((prompt.clone(), params.clone()));
            let mut evs = Vec::new();
            let mut finish = FinishReason::Eog;
            // With logprobs each word is one token of log-probability -(i + 1) / 4, its
            // alternatives `w`, `w1`, `w2`, ... each 1 less likely than the one before.
            let lp = |i: usize, w: &str| match params.logprobs {
                None => Vec::new(),
                Some(k) => {
                    let l = -(i as f32 + 1.0) / 4.0;
                    let alt = |j: usize| if j == 0 { w.to_string() } else { format!("{w}{j}") };
                    let top = (0..k).map(|j| (alt(j).into_bytes(), l - j as f32)).collect();
                    vec![TokenLogprobs { bytes: w.as_bytes().to_vec(), logprob: l, top }]
                }
            };
            for (i, w) in self.reply.iter().enumerate() {
                if i == params.max_tokens {
                    finish = FinishReason::MaxTokens;
                    break;
                }
                if let Some(s) = params.stop.iter().find(|s| w.contains(s.as_str())) {
                    evs.push(GenEvent::Text { text: w[..w.find(s.as_str()).unwrap()].to_string(), logprobs: lp(i, w) });
                    finish = FinishReason::Stop;
                    break;
                }
                evs.push(GenEvent::Text { text: w.to_string(), logprobs: lp(i, w) });
            }
            let n = evs.len();
            match &self.fail_with {
                Some(e) => evs.push(e.clone()),
                None => evs
                    .push(GenEvent::Done { finish, usage: Usage { prompt_tokens: prompt.len(), completion_tokens: n, cached_tokens: 1 } }),
            }
            self.live.fetch_add(1, Ordering::SeqCst);
            let live = Live(self.live.clone());
            let gate = self.gate.clone();
            Ok(stream::iter(evs)
                .then(move |e| {
                    let gate = gate.clone();
                    async move {
                        if let Some(g) = gate {
                            g.acquire().await.unwrap().forget();
                        }
                        e
                    }
                })
                .map(move |e| {
                    let _alive = &live;
                    e
                })
                .boxed())
        }
        fn metrics(&self) -> Vec<Metric> {
            vec![
                Metric { name: "ingot_steps_total", help: "Forward passes run.", kind: MetricKind::Counter, value: 12.0 },
                Metric { name: "ingot_requests_running", help: "Sequences running.", kind: MetricKind::Gauge, value: 3.0 },
            ]
        }
    }

    fn limits() -> Limits {
        Limits { body_bytes: 4096, body_timeout: Duration::from_secs(5), workers: 2, queue: 64 }
    }

    fn app(s: Script) -> (Router, Arc<Script>) {
        app_with(s, limits(), &Access::default())
    }

    fn app_with(s: Script, limits: Limits, access: &Access) -> (Router, Arc<Script>) {
        let s = Arc::new(s);
        let st = AppState::new(s.clone(), "smol".into(), 1, limits);
        (router(Arc::new(st), access), s)
    }

    async fn send(app: &Router, method: &str, uri: &str, body: impl Into<Body>) -> (StatusCode, String, Option<String>) {
        let req = Request::builder().method(method).uri(uri).header("content-type", "application/json").body(body.into()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let ct = resp.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap(), ct)
    }

    async fn post_json(app: &Router, uri: &str, body: Value) -> (StatusCode, Value) {
        let (s, b, _) = send(app, "POST", uri, body.to_string()).await;
        (s, serde_json::from_str(&b).unwrap_or_else(|e| panic!("{e}: {b}")))
    }

    /// The data of each SSE event, checking the framing: `data: …` lines, blank-line separated
    /// (keep-alive comments, `: …`, skipped: a slow test machine may see one).
    fn sse_data(body: &str) -> Vec<String> {
        assert!(body.ends_with("\n\n"), "{body:?}");
        body.trim_end_matches('\n')
            .split("\n\n")
            .filter(|ev| !ev.starts_with(':'))
            .map(|ev| ev.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data event: {ev:?}")).to_string())
            .collect()
    }

    #[tokio::test]
    async fn health_models_metrics() {
        let (app, _) = app(Script::new(&["a"]));
        let (s, b, _) = send(&app, "GET", "/health", Body::empty()).await;
        assert_eq!((s, serde_json::from_str::<Value>(&b).unwrap()), (StatusCode::OK, json!({"status": "ok"})));
        let (s, b, _) = send(&app, "GET", "/v1/models", Body::empty()).await;
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(s, StatusCode::OK);
        assert_eq!((&v["object"], &v["data"][0]["id"], &v["data"][0]["object"]), (&json!("list"), &json!("smol"), &json!("model")));
        let (s, b, ct) = send(&app, "GET", "/metrics", Body::empty()).await;
        assert_eq!(s, StatusCode::OK);
        assert!(ct.unwrap().starts_with("text/plain; version=0.0.4"));
        assert_eq!(
            b,
            "# HELP ingot_steps_total Forward passes run.\n# TYPE ingot_steps_total counter\ningot_steps_total 12\n\
             # HELP ingot_requests_running Sequences running.\n# TYPE ingot_requests_running gauge\ningot_requests_running 3\n"
        );
    }

    #[tokio::test]
    async fn completion_whole_reply() {
        let (app, s) = app(Script::new(&["Hello", ", ", "world", "!"]));
        let (st, v) = post_json(&app, "/v1/completions", json!({"prompt": "abc", "max_tokens": 3, "seed": 9})).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["model"], "smol");
        assert!(v["id"].as_str().unwrap().starts_with("cmpl-") && v["created"].as_u64().unwrap() > 1_600_000_000);
        assert_eq!(v["choices"][0]["text"], "Hello, world");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert_eq!(v["usage"]["completion_tokens"], 3);
        assert_eq!(v["usage"]["total_tokens"], 6);
        let (prompt, params) = s.submitted.lock().unwrap()[0].clone();
        assert_eq!(prompt, b"abc".iter().map(|&b| b as u32).collect::<Vec<_>>());
        assert_eq!((params.max_tokens, params.seed), (3, 9));
        // A stop string ends it with "stop" and is not in the text.
        let (_, v) = post_json(&app, "/v1/completions", json!({"prompt": "abc", "stop": "rl"})).await;
        assert_eq!((&v["choices"][0]["text"], &v["choices"][0]["finish_reason"]), (&json!("Hello, wo"), &json!("stop")));
        // Without max_tokens: OpenAI's 16, less where the context (64) has less room.
        let (_, v) = post_json(&app, "/v1/completions", json!({"prompt": "x".repeat(60)})).await;
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(s.submitted.lock().unwrap()[2].1.max_tokens, 4);
        assert_eq!(s.live.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn chat_stream_framing_and_usage() {
        let (app, s) = app(Script::new(&["Hi", " there", "", "."]));
        let req = json!({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], "stream": true,
                          "stream_options": {"include_usage": true}});
        let (st, body, ct) = send(&app, "POST", "/v1/chat/completions", req.to_string()).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(ct.as_deref(), Some("text/event-stream"));
        let data = sse_data(&body);
        assert_eq!(data.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
        let id = &chunks[0]["id"];
        assert!(id.as_str().unwrap().starts_with("chatcmpl-"));
        for c in &chunks {
            assert_eq!((&c["id"], &c["object"], &c["model"]), (id, &json!("chat.completion.chunk"), &json!("smol")));
        }
        assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        // No chunk for the empty text event.
        assert_eq!(chunks.len(), 1 + 3 + 1 + 1);
        let text: String = chunks[1..4].iter().map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap()).collect();
        assert_eq!(text, "Hi there.");
        assert!(chunks[..4].iter().all(|c| c["choices"][0]["finish_reason"].is_null() && c["usage"].is_null()));
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[5]["choices"], json!([]));
        let prompt_len = "<system>S<user>U".len();
        assert_eq!(chunks[5]["usage"]["prompt_tokens"], prompt_len);
        assert_eq!(chunks[5]["usage"]["completion_tokens"], 4);
        // The chat default max_tokens is the rest of the context.
        assert_eq!(s.submitted.lock().unwrap()[0].1.max_tokens, 64 - prompt_len);
        assert_eq!(s.live.load(Ordering::SeqCst), 0);
        // Without include_usage: no usage fields at all.
        let req = json!({"messages": [{"role": "user", "content": "U"}], "stream": true, "max_tokens": 1});
        let (_, body, _) = send(&app, "POST", "/v1/chat/completions", req.to_string()).await;
        let data = sse_data(&body);
        assert_eq!(data.len(), 4, "{data:?}");
        for d in &data[..3] {
            assert!(!serde_json::from_str::<Value>(d).unwrap().as_object().unwrap().contains_key("usage"));
        }
        assert_eq!(serde_json::from_str::<Value>(&data[2]).unwrap()["choices"][0]["finish_reason"], "length");
    }

    #[tokio::test]
    async fn logprobs_whole_and_streamed_agree() {
        let (app, s) = app(Script::new(&["Hi", " there", "", "."]));
        let chat = json!({"messages": [{"role": "user", "content": "U"}], "logprobs": true, "top_logprobs": 2});
        let (st, v) = post_json(&app, "/v1/chat/completions", chat.clone()).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let whole = v["choices"][0]["logprobs"]["content"].as_array().unwrap().clone();
        let tokens: Vec<&str> = whole.iter().map(|e| e["token"].as_str().unwrap()).collect();
        assert_eq!(tokens, ["Hi", " there", "", "."]);
        assert_eq!(whole[1]["logprob"], json!(-0.5));
        assert_eq!(whole[1]["bytes"], json!(b" there".to_vec()));
        assert_eq!(
            whole[1]["top_logprobs"],
            json!([{"token": " there", "logprob": -0.5, "bytes": b" there".to_vec()},
            {"token": " there1", "logprob": -1.5, "bytes": b" there1".to_vec()}])
        );
        assert_eq!(s.submitted.lock().unwrap()[0].1.logprobs, Some(2));
        // Streamed: the same entries, spread over the chunks of their text; the token with no
        // text gets a chunk of its own; the role and finish chunks have none.
        let mut req = chat.clone();
        req["stream"] = json!(true);
        let (_, body, _) = send(&app, "POST", "/v1/chat/completions", req.to_string()).await;
        let data = sse_data(&body);
        let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
        assert_eq!(chunks.len(), 1 + 4 + 1, "{data:?}");
        assert!(chunks[0]["choices"][0]["logprobs"].is_null() && chunks[5]["choices"][0]["logprobs"].is_null());
        let streamed: Vec<Value> =
            chunks[1..5].iter().flat_map(|c| c["choices"][0]["logprobs"]["content"].as_array().unwrap().clone()).collect();
        assert_eq!(streamed, whole);
        assert_eq!(chunks[3]["choices"][0]["delta"], json!({"content": ""}));

        // Completions: the legacy format, whole and streamed alike.
        let (_, v) = post_json(&app, "/v1/completions", json!({"prompt": "x", "logprobs": 1})).await;
        let lp = &v["choices"][0]["logprobs"];
        assert_eq!(lp["tokens"], json!(["Hi", " there", "", "."]));
        assert_eq!(lp["token_logprobs"], json!([-0.25, -0.5, -0.75, -1.0]));
        assert_eq!(lp["text_offset"], json!([0, 2, 8, 8]));
        assert_eq!(lp["top_logprobs"][0], json!({"Hi": -0.25}));
        let (_, body, _) = send(&app, "POST", "/v1/completions", json!({"prompt": "x", "logprobs": 1, "stream": true}).to_string()).await;
        let data = sse_data(&body);
        let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
        let field = |name: &str| -> Vec<Value> {
            chunks[..4].iter().flat_map(|c| c["choices"][0]["logprobs"][name].as_array().unwrap().clone()).collect()
        };
        for name in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
            assert_eq!(Value::Array(field(name)), lp[name], "{name}");
        }
        assert!(chunks[4]["choices"][0]["logprobs"].is_null());

        // Not asked: null, and requests that leave sampling out get the generator's defaults.
        let (_, v) = post_json(&app, "/v1/completions", json!({"prompt": "x"})).await;
        assert!(v["choices"][0]["logprobs"].is_null());
        let p = s.submitted.lock().unwrap().last().unwrap().1.clone();
        assert_eq!((p.temperature, p.top_k, p.logprobs), (0.7, 12, None));
        // Bad values: 400 before anything is queued.
        let n = s.submitted.lock().unwrap().len();
        for (path, body, param) in [
            ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "U"}], "top_logprobs": 3}), "top_logprobs"),
            (
                "/v1/chat/completions",
                json!({"messages": [{"role": "user", "content": "U"}], "logprobs": true, "top_logprobs": 99}),
                "top_logprobs",
            ),
            ("/v1/completions", json!({"prompt": "x", "logprobs": -2}), "logprobs"),
        ] {
            let (st, v) = post_json(&app, path, body).await;
            assert_eq!((st, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some(param)), "{v}");
        }
        assert_eq!(s.submitted.lock().unwrap().len(), n);
    }

    #[tokio::test]
    async fn completion_stream_has_no_role_chunk() {
        let (app, _) = app(Script::new(&["a", "b"]));
        let (_, body, _) = send(&app, "POST", "/v1/completions", json!({"prompt": "x", "stream": true}).to_string()).await;
        let data = sse_data(&body);
        let texts: Vec<Value> = data[..3].iter().map(|d| serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"].clone()).collect();
        assert_eq!(texts, [json!("a"), json!("b"), json!("")]);
        assert_eq!(data[3], "[DONE]");
    }

    #[tokio::test]
    async fn engine_failure_is_a_500_or_an_error_event() {
        let mut s = Script::new(&["a"]);
        s.fail_with = Some(GenEvent::Error("the engine was shut down".into()));
        let (app, _) = app(s);
        let (st, body, _) = send(&app, "GET", "/health", Body::empty()).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["message"], "the engine has stopped");
        let (st, v) = post_json(&app, "/v1/completions", json!({"prompt": "x"})).await;
        assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(v["error"]["type"], "server_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("shut down"));
        let (st, body, _) = send(&app, "POST", "/v1/completions", json!({"prompt": "x", "stream": true}).to_string()).await;
        assert_eq!(st, StatusCode::OK);
        let data = sse_data(&body);
        assert_eq!(data.len(), 3);
        let err: Value = serde_json::from_str(&data[1]).unwrap();
        assert!(err["error"]["message"].as_str().unwrap().contains("shut down"), "{err}");
        assert_eq!(data[2], "[DONE]");
        // Submit refusals: 400.
        let (st, v) = post_json(&app, "/v1/completions", json!({"prompt": "##"})).await;
        assert_eq!((st, v["error"]["message"].as_str().unwrap()), (StatusCode::BAD_REQUEST, "prompts starting with ## are refused"));
    }

    #[tokio::test]
    async fn bad_requests_get_openai_errors() {
        let (app, s) = app(Script::new(&["a"]));
        let chat = "/v1/chat/completions";
        let cases: Vec<(&str, &str, String, StatusCode, &str)> = vec![
            ("POST", "/v1/completions", "{\"prompt\": ".into(), StatusCode::BAD_REQUEST, "not valid JSON"),
            ("POST", chat, "[]".into(), StatusCode::BAD_REQUEST, "JSON object"),
            ("POST", "/v1/completions", json!({"prompt": "x", "max_tokens": "5"}).to_string(), StatusCode::BAD_REQUEST, "integer"),
            (
                "POST",
                chat,
                json!({"messages": [{"role": "user", "content": "x"}], "temperature": -0.5}).to_string(),
                StatusCode::BAD_REQUEST,
                "[0, inf]",
            ),
            ("POST", chat, json!({"messages": []}).to_string(), StatusCode::BAD_REQUEST, "empty"),
            (
                "POST",
                chat,
                json!({"messages": [{"role": "user", "content": "bad template"}]}).to_string(),
                StatusCode::BAD_REQUEST,
                "alternate",
            ),
            (
                "POST",
                "/v1/completions",
                json!({"prompt": "x".repeat(60), "max_tokens": 10}).to_string(),
                StatusCode::BAD_REQUEST,
                "context is 64 tokens per request, but 70",
            ),
            ("POST", "/v1/completions", json!({"prompt": "x", "n": 2}).to_string(), StatusCode::BAD_REQUEST, "n = 1"),
            ("POST", "/v1/completions", "x".repeat(5000), StatusCode::PAYLOAD_TOO_LARGE, "too large"),
            ("GET", "/v1/nope", String::new(), StatusCode::NOT_FOUND, "no such endpoint: GET /v1/nope"),
            ("GET", chat, String::new(), StatusCode::METHOD_NOT_ALLOWED, "GET is not allowed on /v1/chat/completions"),
            ("POST", "/health", String::new(), StatusCode::METHOD_NOT_ALLOWED, "POST is not allowed"),
        ];
        for (method, uri, body, status, want) in cases {
            let (st, b, ct) = send(&app, method, uri, body.clone()).await;
            assert_eq!(st, status, "{method} {uri} {body:.80}: {b}");
            assert_eq!(ct.as_deref(), Some("application/json"), "{method} {uri}");
            let v: Value = serde_json::from_str(&b).unwrap();
            let e = &v["error"];
            assert!(e["message"].as_str().unwrap().contains(want), "{method} {uri} {body:.80}: {b}");
            assert_eq!(e["type"], "invalid_request_error");
            assert!(e.as_object().unwrap().contains_key("param") && e.as_object().unwrap().contains_key("code"), "{b}");
        }
        assert!(s.submitted.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn dropping_a_stream_mid_way_cancels_its_request() {
        let mut s = Script::new(&["a", "b", "c", "d"]);
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        s.gate = Some(gate.clone());
        let (app, s) = app(s);
        let req = Request::builder()
            .method("POST")
            .uri("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Body::from(json!({"messages": [{"role": "user", "content": "x"}], "stream": true}).to_string()));
        let resp = app.clone().oneshot(req.unwrap()).await.unwrap();
        assert_eq!(s.live.load(Ordering::SeqCst), 1);
        let mut body = resp.into_body().into_data_stream();
        let first = body.next().await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&first).contains("\"role\":\"assistant\""));
        gate.add_permits(1);
        let second = body.next().await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&second).contains("\"content\":\"a\""));
        assert_eq!(s.live.load(Ordering::SeqCst), 1);
        drop(body);
        assert_eq!(s.live.load(Ordering::SeqCst), 0);
        // A whole-reply request whose handler future is dropped (the client went away) too.
        let req = Request::builder()
            .method("POST")
            .uri("/v1/completions")
            .header("content-type", "application/json")
            .body(Body::from(json!({"prompt": "x"}).to_string()));
        let fut = app.clone().oneshot(req.unwrap());
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(50), fut).await;
        assert!(timed_out.is_err(), "the gated request cannot finish");
        assert_eq!(s.live.load(Ordering::SeqCst), 0);
        assert_eq!(s.submitted.lock().unwrap().len(), 2);
    }

    /// A client that leaves while its request is still queued (no event yet) is noticed,
    /// through a real socket: the streaming request by its keep-alive writes, the whole-reply
    /// one by hyper reading the closed connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_leaving_a_queued_request_cancels_it() {
        use std::io::{Read, Write};
        let mut s = Script::new(&["a", "b"]);
        s.gate = Some(Arc::new(tokio::sync::Semaphore::new(0)));
        let (app, s) = app(s);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let wait_live = |want: usize| {
            let s = s.clone();
            async move {
                for _ in 0..100 {
                    if s.live.load(Ordering::SeqCst) == want {
                        return true;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                false
            }
        };
        for stream in [true, false] {
            // A blocking client (the server runs on the other worker thread).
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            let body = json!({"prompt": "x", "stream": stream}).to_string();
            let req = format!(
                "POST /v1/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            c.write_all(req.as_bytes()).unwrap();
            assert!(wait_live(1).await, "stream={stream}: the request was not submitted");
            if stream {
                // The response head and a keep-alive comment (an SSE comment line, in a
                // chunk of the chunked body) arrive before any token.
                let mut buf = vec![0u8; 4096];
                let mut got = String::new();
                let comment = |g: &str| g.split_once("\r\n\r\n").is_some_and(|(_, body)| body.contains("\n: \n\n"));
                for _ in 0..20 {
                    if comment(&got) {
                        break;
                    }
                    let n = c.read(&mut buf).unwrap();
                    assert!(n > 0, "connection closed early: {got:?}");
                    got.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
                assert!(comment(&got), "no keep-alive comment: {got:?}");
                assert!(got.starts_with("HTTP/1.1 200") && got.contains("text/event-stream"), "{got}");
            }
            drop(c);
            assert!(wait_live(0).await, "stream={stream}: the queued request outlived its client");
        }
        assert_eq!(s.submitted.lock().unwrap().len(), 2);
    }

    /// A request with any headers; the status, headers and body.
    async fn request(app: &Router, method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = app.clone().oneshot(req.body(Body::from(body.to_string())).unwrap()).await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn posts_must_be_sent_as_json() {
        let (app, s) = app(Script::new(&["a"]));
        let body = json!({"prompt": "x", "max_tokens": 1}).to_string();
        // What a web page can send without a CORS preflight, and no type at all: 415.
        for ct in [
            Some("text/plain"),
            Some("text/plain;charset=UTF-8"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/jsonp"),
            None,
        ] {
            let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
            for uri in ["/v1/completions", "/v1/chat/completions"] {
                let (st, _, b) = request(&app, "POST", uri, &headers, &body).await;
                assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?} {uri}: {b}");
                let v: Value = serde_json::from_str(&b).unwrap();
                assert!(v["error"]["message"].as_str().unwrap().contains("Content-Type: application/json"), "{b}");
            }
        }
        assert!(s.submitted.lock().unwrap().is_empty());
        for ct in ["application/json", "application/json; charset=utf-8", "Application/JSON"] {
            let (st, _, b) = request(&app, "POST", "/v1/completions", &[("content-type", ct)], &body).await;
            assert_eq!(st, StatusCode::OK, "{ct}: {b}");
        }
    }

    #[tokio::test]
    async fn an_api_key_is_required_except_for_health() {
        let access = Access::new(Some("s3cret".into()), vec![]).unwrap();
        let (app, s) = app_with(Script::new(&["a"]), limits(), &access);
        let json_ct = ("content-type", "application/json");
        let body = json!({"prompt": "x", "max_tokens": 1}).to_string();
        for auth in [None, Some("Bearer wrong"), Some("Bearer s3cret2"), Some("Basic s3cret"), Some("s3cret"), Some("Bearer ")] {
            let mut headers = vec![json_ct];
            headers.extend(auth.map(|a| ("authorization", a)));
            for (method, uri) in [("POST", "/v1/completions"), ("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/nope")] {
                let (st, h, b) = request(&app, method, uri, &headers, &body).await;
                assert_eq!(st, StatusCode::UNAUTHORIZED, "{auth:?} {uri}: {b}");
                assert_eq!(h.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
                let v: Value = serde_json::from_str(&b).unwrap();
                assert_eq!((&v["error"]["code"], &v["error"]["type"]), (&json!("invalid_api_key"), &json!("invalid_request_error")), "{b}");
            }
        }
        assert!(s.submitted.lock().unwrap().is_empty());
        let (st, _, _) = request(&app, "GET", "/health", &[], "").await;
        assert_eq!(st, StatusCode::OK);
        for auth in ["Bearer s3cret", "bearer  s3cret "] {
            let (st, _, b) = request(&app, "POST", "/v1/completions", &[json_ct, ("authorization", auth)], &body).await;
            assert_eq!(st, StatusCode::OK, "{auth}: {b}");
            let (st, _, _) = request(&app, "GET", "/v1/models", &[("authorization", auth)], "").await;
            assert_eq!(st, StatusCode::OK);
        }
        // Without a key, no header is needed.
        let (open, _) = super::tests::app(Script::new(&["a"]));
        assert_eq!(request(&open, "GET", "/v1/models", &[], "").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn cors_answers_only_the_listed_origins() {
        let preflight = |origin: &'static str| {
            vec![
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type,authorization"),
            ]
        };
        let acao = |h: &HeaderMap| h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).map(|v| v.to_str().unwrap().to_string());
        let chat = "/v1/chat/completions";
        let body = json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}).to_string();

        // No --cors-origin: no preflight answer, no CORS headers.
        let (app, _) = app(Script::new(&["a"]));
        let (st, h, _) = request(&app, "OPTIONS", chat, &preflight("http://localhost:3000"), "").await;
        assert_eq!((st, acao(&h)), (StatusCode::METHOD_NOT_ALLOWED, None));
        let (st, h, _) =
            request(&app, "POST", chat, &[("content-type", "application/json"), ("origin", "http://localhost:3000")], &body).await;
        assert_eq!((st, acao(&h)), (StatusCode::OK, None));

        // One allowed origin, with an API key.
        let access = Access::new(Some("k".into()), vec!["http://localhost:3000".into()]).unwrap();
        let (app, _) = app_with(Script::new(&["a"]), limits(), &access);
        let (st, h, _) = request(&app, "OPTIONS", chat, &preflight("http://localhost:3000"), "").await;
        assert_eq!((st, acao(&h).as_deref()), (StatusCode::OK, Some("http://localhost:3000")), "{h:?}");
        let methods = h.get(header::ACCESS_CONTROL_ALLOW_METHODS).unwrap().to_str().unwrap().to_string();
        let allowed = h.get(header::ACCESS_CONTROL_ALLOW_HEADERS).unwrap().to_str().unwrap().to_lowercase();
        assert!(methods.contains("POST") && allowed.contains("content-type") && allowed.contains("authorization"), "{h:?}");
        // Another origin: no Access-Control-Allow-Origin, so the browser refuses.
        for other in ["http://evil.example", "http://localhost:3001", "null"] {
            let (_, h, _) = request(&app, "OPTIONS", chat, &preflight(other), "").await;
            assert_eq!(acao(&h), None, "{other}");
        }
        // Actual requests: the header for the allowed origin only, on 401s too.
        let headers = [("content-type", "application/json"), ("authorization", "Bearer k"), ("origin", "http://localhost:3000")];
        let (st, h, _) = request(&app, "POST", chat, &headers, &body).await;
        assert_eq!((st, acao(&h).as_deref()), (StatusCode::OK, Some("http://localhost:3000")));
        let (st, h, _) = request(&app, "POST", chat, &headers[..1], &body).await;
        assert_eq!((st, acao(&h)), (StatusCode::UNAUTHORIZED, None));
        let (st, h, _) = request(&app, "POST", chat, &[headers[0], headers[2]], &body).await;
        assert_eq!((st, acao(&h).as_deref()), (StatusCode::UNAUTHORIZED, Some("http://localhost:3000")));
        let (st, h, _) = request(&app, "POST", chat, &[headers[0], headers[1], ("origin", "http://evil.example")], &body).await;
        assert_eq!((st, acao(&h)), (StatusCode::OK, None));

        // `*`: any origin.
        let (app_any, _) = app_with(Script::new(&["a"]), limits(), &Access::new(None, vec!["*".into()]).unwrap());
        let (st, h, _) = request(&app_any, "OPTIONS", chat, &preflight("http://anything.example"), "").await;
        assert_eq!((st, acao(&h).as_deref()), (StatusCode::OK, Some("*")));
    }

    #[test]
    fn access_flags_are_checked() {
        for o in ["*", "http://localhost:3000", "https://example.com", "http://[::1]:8080", "app://x"] {
            assert!(Access::new(None, vec![o.into()]).is_ok(), "{o}");
        }
        for o in ["", "localhost:3000", "http://", "http://example.com/", "http://example.com/path", "example.com", "http://a b", "://x"] {
            let e = Access::new(None, vec![o.into()]).unwrap_err();
            assert!(e.starts_with("--cors-origin") && e.contains("scheme://host[:port]"), "{o}: {e}");
        }
        assert_eq!(Access::new(Some(" ".into()), vec![]).unwrap_err(), "--api-key must not be empty");
    }

    #[tokio::test]
    async fn max_tokens_0_is_an_empty_reply_ending_with_length() {
        let (app, s) = app(Script::new(&["a", "b"]));
        let (st, v) = post_json(&app, "/v1/completions", json!({"prompt": "abc", "max_tokens": 0})).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!((&v["choices"][0]["text"], &v["choices"][0]["finish_reason"]), (&json!(""), &json!("length")));
        assert_eq!((&v["usage"]["prompt_tokens"], &v["usage"]["completion_tokens"]), (&json!(3), &json!(0)));
        // A prompt that fills the whole context (64) fits with nothing to generate.
        let (st, v) = post_json(&app, "/v1/completions", json!({"prompt": "x".repeat(64), "max_tokens": 0})).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let req = json!({"messages": [{"role": "user", "content": "U"}], "max_completion_tokens": 0, "stream": true,
                          "stream_options": {"include_usage": true}});
        let (st, body, _) = send(&app, "POST", "/v1/chat/completions", req.to_string()).await;
        assert_eq!(st, StatusCode::OK);
        let data = sse_data(&body);
        assert_eq!(data.len(), 4, "{data:?}");
        let chunks: Vec<Value> = data[..3].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
        assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!((&chunks[1]["choices"][0]["delta"], &chunks[1]["choices"][0]["finish_reason"]), (&json!({}), &json!("length")));
        assert_eq!(chunks[2]["usage"]["completion_tokens"], 0);
        assert_eq!(data[3], "[DONE]");
        // The engine never saw them; negative budgets are still refused.
        assert!(s.submitted.lock().unwrap().is_empty());
        let (st, v) = post_json(&app, "/v1/completions", json!({"prompt": "abc", "max_tokens": -1})).await;
        assert_eq!((st, &v["error"]["param"]), (StatusCode::BAD_REQUEST, &json!("max_tokens")));
    }

    #[tokio::test]
    async fn prompts_longer_than_the_context_can_hold_are_not_tokenized() {
        // The script's tokens are bytes: a 64-token context holds 64 bytes.
        let (app, s) = app(Script::new(&["a"]));
        let cases = [
            ("/v1/completions", json!({"prompt": "x".repeat(3000)}), "prompt"),
            ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "x".repeat(3000)}]}), "messages"),
        ];
        for (uri, body, param) in cases {
            let (st, v) = post_json(&app, uri, body).await;
            assert_eq!(
                (st, &v["error"]["param"], &v["error"]["code"]),
                (StatusCode::BAD_REQUEST, &json!(param), &json!("context_length_exceeded")),
                "{v}"
            );
            assert!(v["error"]["message"].as_str().unwrap().contains("the context is 64 tokens per request"), "{v}");
        }
        assert_eq!(s.encoded.load(Ordering::SeqCst), 0, "an oversized prompt was tokenized");
        assert!(s.submitted.lock().unwrap().is_empty());
    }

    /// Parsing and tokenizing run off the async threads: on a single-threaded runtime,
    /// `/health` answers while a request's tokenization is blocked. One worker and a queue
    /// of one: a third request is refused with a 503 at once.
    #[tokio::test]
    async fn parsing_runs_off_the_io_threads_with_a_bounded_queue() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut s = Script::new(&["a"]);
        s.encode_gate = Some(Mutex::new(rx));
        let s = Arc::new(s);
        let st = Arc::new(AppState::new(s.clone(), "smol".into(), 1, Limits { workers: 1, queue: 1, ..limits() }));
        let app = router(st.clone(), &Access::default());
        async fn wait_for(what: &str, ok: impl Fn() -> bool) {
            let t = std::time::Instant::now();
            while !ok() {
                assert!(t.elapsed() < Duration::from_secs(10), "waited 10 s for {what}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let body = json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}).to_string();
        let post = |body: String| {
            let app = app.clone();
            tokio::spawn(async move { send(&app, "POST", "/v1/chat/completions", body).await.0 })
        };
        let first = post(body.clone());
        wait_for("the first request to reach the tokenizer", || s.chat_calls.load(Ordering::SeqCst) == 1).await;
        let second = post(body.clone());
        wait_for("the second request to queue", || st.work.waiting.load(Ordering::SeqCst) == 1).await;
        let (status, b, _) = send(&app, "POST", "/v1/chat/completions", body.clone()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{b}");
        assert!(b.contains("busy"), "{b}");
        let t = std::time::Instant::now();
        let (status, _, _) = send(&app, "GET", "/health", Body::empty()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(t.elapsed() < Duration::from_secs(2), "/health waited for a blocked tokenization: {:?}", t.elapsed());
        tx.send(()).unwrap();
        tx.send(()).unwrap();
        assert_eq!(first.await.unwrap(), StatusCode::OK);
        assert_eq!(second.await.unwrap(), StatusCode::OK);
        assert_eq!(s.submitted.lock().unwrap().len(), 2);
        assert_eq!(st.work.waiting.load(Ordering::SeqCst), 0);
    }

    /// Serves the scripted app on a loopback port with `serve`.
    async fn serve_script(limits: Limits, conn: ConnLimits) -> std::net::SocketAddr {
        let (app, _) = app_with(Script::new(&["a"]), limits, &Access::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, app, conn, std::future::pending()));
        addr
    }

    /// Reads until the server closes the connection (or `limit` passes: a failure); what
    /// it sent and how long that took.
    fn read_until_closed(c: &mut std::net::TcpStream, limit: Duration) -> (String, Duration) {
        use std::io::Read;
        let t = std::time::Instant::now();
        c.set_read_timeout(Some(limit)).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("the connection was still open after {:?} ({e}); got {:?}", t.elapsed(), String::from_utf8_lossy(&got)),
            }
        }
        (String::from_utf8_lossy(&got).into_owned(), t.elapsed())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_sent_requests_are_dropped_or_answered_408() {
        use std::io::Write;
        let addr = serve_script(
            Limits { body_timeout: Duration::from_millis(300), ..limits() },
            ConnLimits { max_connections: 16, header_timeout: Duration::from_millis(300) },
        )
        .await;
        let result = tokio::task::spawn_blocking(move || {
            // Nothing sent, part of a request line, part of the headers: closed, no answer.
            for partial in ["", "POST /v1/compl", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-"] {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.write_all(partial.as_bytes()).unwrap();
                let (got, took) = read_until_closed(&mut c, Duration::from_secs(5));
                assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{partial:?}: {got:?}");
                assert!(took >= Duration::from_millis(250), "{partial:?}: closed too early ({took:?})");
            }
            // The headers and part of the body: 408, then closed.
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            let head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
            c.write_all(format!("{head}{{\"prompt\": ").as_bytes()).unwrap();
            let (got, took) = read_until_closed(&mut c, Duration::from_secs(5));
            assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
            assert!(got.contains("did not arrive within 0.3 s"), "{got:?}");
            assert!(took >= Duration::from_millis(250), "{took:?}");
            // Headers over 64 KiB: 431.
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            let _ = c.write_all(format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(70_000)).as_bytes());
            let (got, _) = read_until_closed(&mut c, Duration::from_secs(5));
            assert!(got.starts_with("HTTP/1.1 431"), "{got:?}");
            // A whole request on a fresh connection is still served.
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let (got, _) = read_until_closed(&mut c, Duration::from_secs(5));
            assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
        });
        result.await.unwrap();
    }

    /// Reads one reply head (through the blank line) and returns it lowercased.
    fn read_head(c: &mut std::net::TcpStream) -> String {
        use std::io::Read;
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            match c.read(&mut b) {
                Ok(1) => got.push(b[0]),
                other => panic!("no whole reply head ({other:?}): {:?}", String::from_utf8_lossy(&got)),
            }
        }
        String::from_utf8_lossy(&got).to_ascii_lowercase()
    }

    /// A reply given without reading the request body says `Connection: close` (a pooled
    /// connection would otherwise die under the client, or the body's rest be taken for the
    /// next request); a reply that read the body keeps the connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reply_that_left_the_body_unread_closes_the_connection() {
        use std::io::Write;
        let addr = serve_script(limits(), ConnLimits { max_connections: 16, header_timeout: Duration::from_secs(5) }).await;
        tokio::task::spawn_blocking(move || {
            for (head, status) in [
                ("POST /v2/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n", "404"),
                ("POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n", "405"),
                ("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n", "415"),
            ] {
                // The head alone: the server answers before the body comes.
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.write_all(head.as_bytes()).unwrap();
                let got = read_head(&mut c);
                assert!(got.starts_with(&format!("http/1.1 {status}")), "{head:?}: {got:?}");
                assert!(got.contains("connection: close"), "{head:?}: {got:?}");
            }
            // A request whose body was read, and one without a body: kept alive.
            let body = r#"{"prompt": "Hi", "max_tokens": 1}"#;
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            let req = format!(
                "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            c.write_all(req.as_bytes()).unwrap();
            let got = read_head(&mut c);
            assert!(got.starts_with("http/1.1 200") && !got.contains("connection: close"), "{got:?}");
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let got = read_head(&mut c);
            assert!(got.starts_with("http/1.1 404") && !got.contains("connection: close"), "{got:?}");
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_over_the_limit_wait_until_one_closes() {
        use std::io::Write;
        let addr = serve_script(limits(), ConnLimits { max_connections: 2, header_timeout: Duration::from_secs(30) }).await;
        let result = tokio::task::spawn_blocking(move || {
            let health =
                |c: &mut std::net::TcpStream| c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let idle: Vec<_> = (0..2).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
            // The kernel completes the handshake, but the server does not take the third
            // connection while two are open.
            let mut third = std::net::TcpStream::connect(addr).unwrap();
            health(&mut third);
            third.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            let mut buf = [0u8; 64];
            let r = std::io::Read::read(&mut third, &mut buf);
            assert!(r.is_err(), "the third connection was served while two were open: {r:?}");
            drop(idle);
            let (got, _) = read_until_closed(&mut third, Duration::from_secs(5));
            assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
        });
        result.await.unwrap();
    }
}
