//! The HTTP side of `ingot serve`: the axum router, its handlers, Server-Sent Events streams
//! and the Prometheus text of `/metrics`. A [`Generator`] stands between the router and the
//! engine; `ingot serve` gives it the real engine (serve_cmd.rs), the tests here a scripted one.
//!
//! A request's events arrive on an [`EventStream`] that owns the engine's request handle:
//! when a client disconnects, hyper drops the handler's future (non-streaming) or the
//! response body (streaming), the stream is dropped with it and the engine cancels the
//! sequence and frees its pages. hyper learns that a client left when a write fails, so
//! streams send an SSE comment each second while they have nothing else to say (a queued
//! request, a long prefill).

use crate::serve_api::{self, ApiError, Endpoint, GenOptions, ResponseMeta, Usage};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, BoxStream, StreamExt};
use ingot_engine::{FinishReason, SamplingParams};
use ingot_model::chat::Message;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

/// One event of a running request.
#[derive(Clone, Debug, PartialEq)]
pub enum GenEvent {
    /// Settled text (stop strings already removed).
    Text(String),
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
    /// A completion prompt as tokens (BOS as the model wants it, special tokens parsed).
    fn encode_text(&self, text: &str) -> Result<Vec<u32>, String>;
    /// Chat messages rendered with the model's chat template and the generation prompt, as tokens.
    fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>, String>;
    /// Queues a request.
    fn submit(&self, prompt: Vec<u32>, params: SamplingParams) -> Result<EventStream, SubmitError>;
    /// The engine's counters and gauges now.
    fn metrics(&self) -> Vec<Metric>;
    /// Whether the engine still serves requests (`/health` answers 503 once it stopped).
    fn healthy(&self) -> bool;
}

/// What the handlers share.
pub struct AppState {
    pub gen: Arc<dyn Generator>,
    /// The model's id in responses and `/v1/models`.
    pub model_id: String,
    /// When the model was loaded (Unix seconds).
    pub created: u64,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// The router: the OpenAI-compatible endpoints, `/health` and `/metrics`; JSON errors for
/// unknown routes (404), wrong methods (405) and bodies over `body_limit` bytes (413).
pub fn router(state: Arc<AppState>, body_limit: usize) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(|method: Method, uri: Uri| async move {
            ApiError::status(StatusCode::NOT_FOUND, format!("no such endpoint: {method} {}", uri.path()))
        })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            ApiError::status(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {}", uri.path()))
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
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

/// The body, or the JSON error for a body that could not be read (413 over the limit).
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::status(StatusCode::PAYLOAD_TOO_LARGE, "the request body is too large"),
        s => ApiError::status(s, format!("the request body could not be read: {}", r.body_text())),
    })
}

async fn completions(State(st): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let run = async {
        let obj = serve_api::parse_body(&body_bytes(body)?)?;
        let req = serve_api::completion_request(&obj, st.gen.vocab())?;
        let prompt = match req.prompt {
            serve_api::Prompt::Text(t) => st.gen.encode_text(&t).map_err(|e| ApiError::invalid(Some("prompt"), e))?,
            serve_api::Prompt::Tokens(t) => t,
        };
        generate(&st, Endpoint::Completions, prompt, req.opts).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(State(st): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let run = async {
        let obj = serve_api::parse_body(&body_bytes(body)?)?;
        let req = serve_api::chat_request(&obj, st.gen.vocab())?;
        let prompt = st.gen.encode_chat(&req.messages).map_err(|e| ApiError::invalid(Some("messages"), e))?;
        generate(&st, Endpoint::Chat, prompt, req.opts).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// Checks the budget, queues the request and answers it whole or as a stream.
async fn generate(st: &AppState, endpoint: Endpoint, prompt: Vec<u32>, mut opts: GenOptions) -> Result<Response, ApiError> {
    opts.fit(prompt.len(), st.gen.context())?;
    let events = st.gen.submit(prompt, opts.params.clone()).map_err(|e| match e {
        SubmitError::Invalid(m) => ApiError::invalid(None, m),
        SubmitError::Unavailable(m) => ApiError::server(StatusCode::SERVICE_UNAVAILABLE, m),
    })?;
    let meta = ResponseMeta::new(endpoint, &st.model_id);
    if opts.stream {
        // Comment lines while nothing else is sent (a request still queued, a long prefill):
        // writing to a closed connection is how hyper learns that the client left, so a
        // client that leaves before its first token is noticed within about two intervals.
        let keep_alive = KeepAlive::new().interval(SSE_KEEP_ALIVE).text("");
        return Ok(Sse::new(sse_stream(events, meta, opts.include_usage)).keep_alive(keep_alive).into_response());
    }
    let (text, finish, usage) = collect(events).await?;
    Ok(Json(meta.response(&text, finish, &usage)).into_response())
}

fn engine_error(msg: &str) -> ApiError {
    ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, format!("generation failed: {msg}"))
}

/// How long an SSE stream stays silent before a keep-alive comment is sent.
const SSE_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);

const ENDED_EARLY: &str = "the engine stopped before the request finished";

/// Waits for a whole reply.
async fn collect(mut events: EventStream) -> Result<(String, &'static str, Usage), ApiError> {
    let mut text = String::new();
    while let Some(ev) = events.next().await {
        match ev {
            GenEvent::Text(t) => text.push_str(&t),
            GenEvent::Done { finish, usage } => {
                let finish = serve_api::finish_reason(finish).ok_or_else(|| engine_error("the request was cancelled"))?;
                return Ok((text, finish, usage));
            }
            GenEvent::Error(e) => return Err(engine_error(&e)),
        }
    }
    Err(engine_error(ENDED_EARLY))
}

/// The SSE events of a streamed reply: (chat) a first chunk with the role, a chunk per text
/// event, a last chunk with the finish reason, (include_usage) a chunk with the usage, and
/// `[DONE]`. A failure mid-stream sends `{"error": …}` and `[DONE]`.
fn sse_stream(
    events: EventStream,
    meta: ResponseMeta,
    include_usage: bool,
) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> {
    struct St {
        events: EventStream,
        meta: ResponseMeta,
        include_usage: bool,
        /// Data lines ready to send.
        out: VecDeque<String>,
        ended: bool,
    }
    let mut out = VecDeque::new();
    if meta.endpoint == Endpoint::Chat {
        out.push_back(meta.chunk("", true, None, include_usage).to_string());
    }
    let st = St { events, meta, include_usage, out, ended: false };
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
                Some(GenEvent::Text(t)) if t.is_empty() => {}
                Some(GenEvent::Text(t)) => st.out.push_back(st.meta.chunk(&t, false, None, st.include_usage).to_string()),
                Some(GenEvent::Done { finish, usage }) => {
                    st.ended = true;
                    match serve_api::finish_reason(finish) {
                        Some(f) => {
                            st.out.push_back(st.meta.chunk("", false, Some(f), st.include_usage).to_string());
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
    }

    struct Live(Arc<AtomicUsize>);
    impl Drop for Live {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Script {
        fn new(reply: &[&'static str]) -> Script {
            Script { reply: reply.to_vec(), live: Arc::default(), gate: None, submitted: Mutex::default(), fail_with: None }
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
        fn encode_text(&self, text: &str) -> Result<Vec<u32>, String> {
            Ok(text.bytes().map(u32::from).collect())
        }
        fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>, String> {
            if messages.iter().any(|m| m.content == "bad template") {
                return Err("the template raised: roles must alternate".into());
            }
            let s: String = messages.iter().map(|m| format!("<{}>{}", m.role, m.content)).collect();
            self.encode_text(&s)
        }
        fn submit(&self, prompt: Vec<u32>, params: SamplingParams) -> Result<EventStream, SubmitError> {
            if prompt.starts_with(b"##".map(u32::from).as_slice()) {
                return Err(SubmitError::Invalid("prompts starting with ## are refused".into()));
            }
            self.submitted.lock().unwrap().push((prompt.clone(), params.clone()));
            let mut evs = Vec::new();
            let mut finish = FinishReason::Eog;
            for (i, w) in self.reply.iter().enumerate() {
                if i == params.max_tokens {
                    finish = FinishReason::MaxTokens;
                    break;
                }
                if let Some(s) = params.stop.iter().find(|s| w.contains(s.as_str())) {
                    evs.push(GenEvent::Text(w[..w.find(s.as_str()).unwrap()].to_string()));
                    finish = FinishReason::Stop;
                    break;
                }
                evs.push(GenEvent::Text(w.to_string()));
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

    fn app(s: Script) -> (Router, Arc<Script>) {
        let s = Arc::new(s);
        let st = AppState { gen: s.clone(), model_id: "smol".into(), created: 1 };
        (router(Arc::new(st), 4096), s)
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
        let req = Request::builder().method("POST").uri("/v1/completions").body(Body::from(json!({"prompt": "x"}).to_string()));
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
}
