//! The engine: a background thread that runs many requests at once through one model
//! (continuous batching over a paged KV cache with prefix sharing; see
//! [`crate::scheduler`]), and the handles that submit requests and receive their events.

use crate::scheduler::{Request, Scheduler};
use crate::{Error, Result, SamplingParams};
use ingot_model::tokenizer::Tokenizer;
use ingot_model::{KvPool, Model};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Sizes of the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Tokens per KV page.
    pub page_size: usize,
    /// KV pages in the pool; 0 picks the larger of 1 GiB of pages and one sequence of the
    /// model's full context ([`Engine::config`] reports the number chosen).
    pub num_pages: usize,
    /// Most tokens (rows) in one forward pass, prefill chunks included; at least `max_seqs`.
    pub max_batch_tokens: usize,
    /// Most sequences running at once.
    pub max_seqs: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { page_size: 16, num_pages: 0, max_batch_tokens: 512, max_seqs: 64 }
    }
}

/// KV memory of the automatic page budget.
const AUTO_KV_BYTES: usize = 1 << 30;

impl EngineConfig {
    /// An engine for one sequence of at most `tokens` positions (prompt and generated
    /// tokens), as `ingot run` and `ingot chat` use: pages for exactly that many, one
    /// sequence, and a prompt run in one forward pass however long it is.
    pub fn for_one_sequence(tokens: usize) -> EngineConfig {
        let tokens = tokens.max(1);
        let page_size = EngineConfig::default().page_size;
        EngineConfig { page_size, num_pages: tokens.div_ceil(page_size), max_batch_tokens: tokens, max_seqs: 1 }
    }

    /// Checks the sizes and replaces `num_pages` = 0 by the automatic budget for `model`.
    pub fn resolve(&self, model: &Model) -> Result<EngineConfig> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.page_size == 0 {
            return bad("page_size must be at least 1".into());
        }
        if self.max_seqs == 0 {
            return bad("max_seqs must be at least 1".into());
        }
        if self.max_batch_tokens < self.max_seqs {
            return bad(format!("max_batch_tokens ({}) must be at least max_seqs ({})", self.max_batch_tokens, self.max_seqs));
        }
        let mut c = self.clone();
        if c.num_pages == 0 {
            let page_bytes = KvPool::page_bytes(&model.config, c.page_size).max(1);
            c.num_pages = (AUTO_KV_BYTES / page_bytes).max(model.config.context.div_ceil(c.page_size)).max(1);
        }
        Ok(c)
    }
}

/// A generation request: prompt token ids and how to sample.
#[derive(Clone, Debug, PartialEq)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
}

/// Why a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-generation token (not part of the output).
    Eog,
    /// The text reached a stop string (not part of the text).
    Stop,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The request was cancelled (or its receiver dropped).
    Cancelled,
}

/// Token counts and times of a finished request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Tokens generated (an end-of-generation token is not counted).
    pub completion_tokens: usize,
    /// Prompt tokens whose K/V came from the prefix cache instead of being computed.
    pub cached_prompt_tokens: usize,
    /// From the step that started the prompt's prefill to the end of the forward pass
    /// that gave its first logits (prefill chunks shared with other sequences included;
    /// zero when the request ended first). Time spent queued is not counted.
    pub prompt_time: Duration,
    /// From the end of the prefill to the end of the request: sampling every token and
    /// the forward passes of all but the last.
    pub gen_time: Duration,
}

/// What a finished request produced, collected by [`RequestHandle::wait`].
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The generated tokens (the one that completed a stop string included; never an
    /// end-of-generation token).
    pub tokens: Vec<u32>,
    /// The text, without any stop string.
    pub text: String,
    pub finish: FinishReason,
    pub usage: Usage,
    /// One entry per generated token when [`crate::SamplingParams::logprobs`] asked for them.
    pub logprobs: Vec<crate::TokenLogprob>,
}

/// What a request's receiver gets, in order: Text events, then exactly one Done or Error.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Settled text of one or more new tokens: stop strings held back until settled and
    /// never included. `token_ids` are the tokens generated since the previous Text event:
    /// every generated token id is sent exactly once, in order. `text` is never empty,
    /// except in a last Text event (just before Done) that carries the ids of tokens whose
    /// text was held back and then dropped (a stop string) or is empty.
    /// With [`crate::SamplingParams::logprobs`], `logprobs` has one entry per id of
    /// `token_ids` (empty otherwise).
    Text { text: String, token_ids: Vec<u32>, logprobs: Vec<crate::TokenLogprob> },
    /// The request ended; the last event.
    Done { finish: FinishReason, usage: Usage },
    /// The request failed (or the engine shut down); the last event.
    Error(String),
}

/// A snapshot of the engine's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Forward passes run.
    pub steps: u64,
    /// The most sequences that shared one forward pass.
    pub max_seqs_in_step: usize,
    /// Steps with two sequences or more.
    pub batched_steps: u64,
    /// Prompt tokens of the requests accepted.
    pub prompt_tokens: u64,
    /// Prompt rows run through the model (chunks of every prefill; a recomputation after
    /// preemption counts again; tokens from the prefix cache do not count).
    pub prefill_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Tokens whose K/V came from the prefix cache at admissions.
    pub prefix_cached_tokens: u64,
    /// Times a running sequence gave up its pages to make room.
    pub preemptions: u64,
    /// Requests ended with Done (any finish reason).
    pub finished: u64,
    pub running: usize,
    pub waiting: usize,
    /// Pages that can be handed out now (free, or cached and held by nobody).
    pub free_pages: usize,
    pub total_pages: usize,
}

enum Command {
    Submit(Request),
    /// A request was cancelled: look at the flags now.
    Wake,
    Shutdown,
}

struct Inner {
    model: Arc<Model>,
    cfg: EngineConfig,
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    metrics: Arc<Mutex<Metrics>>,
    next_id: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A handle to a running engine (cheap to clone; a background thread steps the scheduler).
/// The thread ends after [`Engine::shutdown`], or when every handle is dropped and every
/// request has ended.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// A submitted request: its events, and the means to cancel it. Dropping the handle (the
/// receiver) cancels the request too: the engine sees the closed channel at its next step
/// and frees the pages.
#[derive(Debug)]
pub struct RequestHandle {
    pub id: u64,
    pub events: UnboundedReceiver<Event>,
    cancel: Arc<AtomicBool>,
    wake: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Submit(_) => "Submit",
            Command::Wake => "Wake",
            Command::Shutdown => "Shutdown",
        })
    }
}

impl RequestHandle {
    /// Ends the request: it finishes with `FinishReason::Cancelled` (text already settled
    /// is still sent first) and its pages are freed.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        // The engine looks at the flag at its next step; an engine already gone has nothing to cancel.
        let _ = self.wake.send(Command::Wake);
    }

    /// A cancel flag for another thread: raising it is the same as [`cancel`](Self::cancel)
    /// (taking effect at the engine's next step).
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Blocks until the request ends, passing each piece of settled text to `on_text` as
    /// it arrives, and returns what it produced. An error from `on_text` cancels the
    /// request and is returned (`Error::Io`); an `Event::Error` is returned as
    /// `Error::Failed`, and events ending without Done as `Error::Stopped`. Not for use
    /// inside an async runtime (it blocks the thread).
    pub fn wait(&mut self, mut on_text: impl FnMut(&str) -> std::io::Result<()>) -> Result<Completion> {
        let mut tokens = Vec::new();
        let mut text = String::new();
        let mut logprobs = Vec::new();
        loop {
            match self.events.blocking_recv() {
                Some(Event::Text { text: t, token_ids, logprobs: lp }) => {
                    tokens.extend_from_slice(&token_ids);
                    logprobs.extend(lp);
                    if !t.is_empty() {
                        if let Err(e) = on_text(&t) {
                            self.cancel();
                            return Err(Error::Io(e));
                        }
                        text.push_str(&t);
                    }
                }
                Some(Event::Done { finish, usage }) => return Ok(Completion { tokens, text, finish, usage, logprobs }),
                Some(Event::Error(e)) => return Err(Error::Failed(e)),
                None => return Err(Error::Stopped),
            }
        }
    }
}

impl Engine {
    /// Starts the engine thread for `model`, with a KV pool of `cfg`'s size.
    pub fn start(model: Arc<Model>, tokenizer: Arc<Tokenizer>, cfg: EngineConfig) -> Result<Engine> {
        let cfg = cfg.resolve(&model)?;
        let pool = model.new_pool(cfg.page_size, cfg.num_pages)?;
        let metrics = Arc::new(Mutex::new(Metrics::default()));
        let sched = Scheduler::new(model.clone(), tokenizer, cfg.clone(), pool, metrics.clone());
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new().name("ingot-engine".into()).spawn(move || engine_loop(sched, rx)).map_err(Error::Io)?;
        Ok(Engine {
            inner: Arc::new(Inner {
                model,
                cfg,
                commands: Mutex::new(Some(tx)),
                metrics,
                next_id: AtomicU64::new(1),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Checks a request and queues it. Errors at once (`Error::Request`, or `Error::Param`
    /// naming the sampling parameter) when the prompt is empty or holds an id outside the
    /// vocabulary, when prompt + max_tokens exceed the model's context or could never fit
    /// the page budget, or when a sampling parameter is out of range; `Error::Stopped` after
    /// shutdown. `max_tokens` 0 ends at once (no text, [`FinishReason::MaxTokens`]).
    pub fn submit(&self, req: GenRequest) -> Result<RequestHandle> {
        let c = &self.inner.model.config;
        let n = req.prompt.len();
        if n == 0 {
            return Err(Error::Request("the prompt is empty".into()));
        }
        if let Some(id) = req.prompt.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(Error::Request(format!("prompt token id {id} is outside the vocabulary of {}", c.vocab)));
        }
        req.params.validate_for_vocab(c.vocab)?;
        let max = req.params.max_tokens;
        if n.saturating_add(max) > c.context {
            return Err(Error::Request(format!("{n} prompt tokens + {max} new tokens exceed the model's context of {}", c.context)));
        }
        // The last generated token is never run, so its K/V needs no page.
        let pages = (n + max - 1).div_ceil(self.inner.cfg.page_size);
        if pages > self.inner.cfg.num_pages {
            return Err(Error::Request(format!(
                "{n} prompt tokens + {max} new tokens need {pages} KV pages; the engine has {}",
                self.inner.cfg.num_pages
            )));
        }
        let guard = self.inner.commands.lock().unwrap_or_else(|e| e.into_inner());
        let tx = guard.as_ref().ok_or(Error::Stopped)?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (etx, erx) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        if max == 0 {
            // Nothing to generate: the request ends at once, its prompt checked but not run
            // (as OpenAI's API and llama-server answer max_tokens 0).
            let usage = Usage { prompt_tokens: n, ..Usage::default() };
            let _ = etx.send(Event::Done { finish: FinishReason::MaxTokens, usage });
            return Ok(RequestHandle { id, events: erx, cancel, wake: tx.clone() });
        }
        let req = Request { id, prompt: req.prompt, params: req.params, events: etx, cancel: cancel.clone() };
        tx.send(Command::Submit(req)).map_err(|_| Error::Stopped)?;
        Ok(RequestHandle { id, events: erx, cancel, wake: tx.clone() })
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> Metrics {
        self.inner.metrics.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The configuration in force (`num_pages` resolved).
    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    /// The model the engine runs.
    pub fn model(&self) -> &Arc<Model> {
        &self.inner.model
    }

    /// Whether the engine thread still takes requests: false after [`shutdown`](Self::shutdown)
    /// and after an internal error stopped it.
    pub fn is_running(&self) -> bool {
        let open = self.inner.commands.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        let thread = self.inner.thread.lock().unwrap_or_else(|e| e.into_inner());
        open && thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the thread: outstanding requests get `Event::Error`, later submits
    /// `Error::Stopped`. Returns when the thread has ended (at once when called again).
    pub fn shutdown(&self) {
        if let Some(tx) = self.inner.commands.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(Command::Shutdown);
        }
        let thread = self.inner.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// The engine thread: take commands, step while there is work, sleep when there is none.
fn engine_loop(mut sched: Scheduler, rx: mpsc::Receiver<Command>) {
    let mut open = true;
    loop {
        let mut shutdown = false;
        if sched.is_idle() {
            if !open {
                return;
            }
            match rx.recv() {
                Ok(cmd) => shutdown |= apply(&mut sched, cmd),
                Err(_) => return,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => shutdown |= apply(&mut sched, cmd),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if shutdown {
            sched.fail_all("the engine was shut down");
            return;
        }
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sched.step())) {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            let msg = format!("internal engine error, the engine stopped: {what}");
            // The scheduler's books may be broken: end every request, then the thread.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sched.fail_all(&msg)));
            return;
        }
    }
}

/// Applies one command; true for shutdown.
fn apply(sched: &mut Scheduler, cmd: Command) -> bool {
    match cmd {
        Command::Submit(r) => sched.add(r),
        Command::Wake => {}
        Command::Shutdown => return true,
    }
    false
}
