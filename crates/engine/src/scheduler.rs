//! Continuous batching: the requests waiting and running, which tokens of which sequences
//! go into the next forward pass, and what happens to its logits.
//!
//! Each step: (1) drop sequences whose request was cancelled or whose receiver is gone;
//! (2) schedule, under a budget of `max_batch_tokens` rows: first one token for every
//! running sequence that is decoding (oldest first; when no page is left for it, the
//! youngest running sequence is preempted: its pages are released and it goes back to the
//! front of the queue, to be recomputed from its prompt and generated tokens), then the
//! next prefill chunk of running sequences still prefilling, then new sequences from the
//! queue (first in, first out; each takes what the prefix cache already holds and a first
//! chunk); (3) one batched forward pass; (4) for every sequence whose last token was run,
//! sample, stream and check the stop conditions (end-of-generation token, stop string,
//! `max_tokens`).
//!
//! Preemption loses nothing: the sampler (and its random stream) stays with the sequence,
//! and the kernels compute each row on its own, so the recomputed K/V and the next logits
//! are bit-identical to what they would have been.

use crate::engine::{EngineConfig, Event, Metrics, Usage};
use crate::kv::{BlockManager, PageIdent};
use crate::{FinishReason, Sampler, SamplingParams, StopChecker};
use ingot_model::tokenizer::{StreamDecoder, Tokenizer};
use ingot_model::{KvPool, Logits, Model, SeqChunk};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// A checked request, as the engine thread receives it.
pub(crate) struct Request {
    pub id: u64,
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub events: UnboundedSender<Event>,
    pub cancel: Arc<AtomicBool>,
}

/// One request's sequence.
struct Seq {
    id: u64,
    /// Prompt, then the generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Leading tokens whose K/V the pages hold.
    computed: usize,
    /// Block table.
    pages: Vec<u32>,
    /// Prefix-cache identity of the contents of each leading full page (chains the next key).
    idents: Vec<PageIdent>,
    sampler: Sampler,
    max_tokens: usize,
    stop: StopChecker,
    dec: StreamDecoder,
    /// Generated tokens not yet sent with a Text event.
    unsent: Vec<u32>,
    /// Their log-probabilities, when the request asked for them.
    unsent_logprobs: Vec<crate::TokenLogprob>,
    /// Prompt tokens found in the prefix cache at the first admission.
    cached_prompt: Option<usize>,
    /// When the first admission's step began, and when the prefill first completed
    /// (the start of the generation).
    started: Option<Instant>,
    prefilled: Option<Instant>,
    events: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
}

impl Seq {
    fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }
}

/// The scheduler and everything the engine thread owns.
pub(crate) struct Scheduler {
    model: Arc<Model>,
    tok: Arc<Tokenizer>,
    cfg: EngineConfig,
    pool: KvPool,
    bm: BlockManager,
    waiting: VecDeque<Seq>,
    /// Sorted by id: oldest first.
    running: Vec<Seq>,
    metrics: Metrics,
    shared: Arc<Mutex<Metrics>>,
    /// Events of this step, sent after the metrics are published (so a client that sees
    /// Done also sees the freed pages).
    outbox: Vec<(UnboundedSender<Event>, Event)>,
    /// When the current step began (the start of the prompt time of sequences it admits).
    step_start: Instant,
}

impl Scheduler {
    pub fn new(model: Arc<Model>, tok: Arc<Tokenizer>, cfg: EngineConfig, pool: KvPool, shared: Arc<Mutex<Metrics>>) -> Scheduler {
        let bm = BlockManager::new(cfg.num_pages, cfg.page_size);
        let metrics = Metrics { free_pages: cfg.num_pages, total_pages: cfg.num_pages, ..Default::default() };
        let s = Scheduler {
            model,
            tok,
            cfg,
            pool,
            bm,
            waiting: VecDeque::new(),
            running: Vec::new(),
            metrics,
            shared,
            outbox: Vec::new(),
            step_start: Instant::now(),
        };
        s.publish();
        s
    }

    /// Nothing waiting or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Queues a request (checked by `Engine::submit`).
    pub fn add(&mut self, r: Request) {
        let sampler = match Sampler::new(r.params.clone(), self.model.config.vocab) {
            Ok(s) => s,
            Err(e) => {
                let _ = r.events.send(Event::Error(e.to_string()));
                return;
            }
        };
        self.metrics.prompt_tokens += r.prompt.len() as u64;
        self.waiting.push_back(Seq {
            id: r.id,
            prompt_len: r.prompt.len(),
            tokens: r.prompt,
            computed: 0,
            pages: Vec::new(),
            idents: Vec::new(),
            sampler,
            max_tokens: r.params.max_tokens,
            stop: StopChecker::new(&r.params.stop),
            dec: StreamDecoder::new(true),
            unsent: Vec::new(),
            unsent_logprobs: Vec::new(),
            cached_prompt: None,
            started: None,
            prefilled: None,
            events: r.events,
            cancel: r.cancel,
        });
        self.publish();
    }

    /// Ends every request with `Event::Error(msg)` and frees their pages.
    pub fn fail_all(&mut self, msg: &str) {
        let seqs: Vec<Seq> = self.running.drain(..).chain(self.waiting.drain(..)).collect();
        for s in seqs {
            self.release_pages(&s.pages);
            self.outbox.push((s.events, Event::Error(msg.to_string())));
        }
        self.flush();
    }

    /// One scheduling step and forward pass (nothing when there is nothing to run).
    pub fn step(&mut self) {
        self.step_start = Instant::now();
        self.reap();
        let plan = self.schedule();
        if !plan.is_empty() {
            self.run(&plan);
        }
        self.flush();
    }

    /// Publishes the metrics, then sends this step's events.
    fn flush(&mut self) {
        self.publish();
        for (tx, ev) in self.outbox.drain(..) {
            // A receiver dropped meanwhile is noticed at the next step.
            let _ = tx.send(ev);
        }
    }

    fn publish(&self) {
        let mut m = self.metrics.clone();
        m.running = self.running.len();
        m.waiting = self.waiting.len();
        m.free_pages = self.bm.available();
        m.total_pages = self.bm.total();
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = m;
    }

    fn release_pages(&mut self, pages: &[u32]) {
        for &p in pages {
            self.bm.release(p);
        }
    }

    /// Ends cancelled requests and those whose receiver was dropped.
    fn reap(&mut self) {
        let gone = |s: &Seq| s.cancel.load(Ordering::Relaxed) || s.events.is_closed();
        let mut ended = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if gone(&self.running[i]) {
                ended.push(self.running.remove(i));
            } else {
                i += 1;
            }
        }
        let (gone_w, keep): (Vec<Seq>, Vec<Seq>) = self.waiting.drain(..).partition(gone);
        self.waiting = keep.into();
        ended.extend(gone_w);
        for s in ended {
            self.finish(s, FinishReason::Cancelled);
        }
    }

    fn running_index(&self, id: u64) -> usize {
        self.running.binary_search_by_key(&id, |s| s.id).expect("scheduled sequence is running")
    }

    /// Releases the pages of the youngest running sequence and puts it at the front of
    /// the queue; returns its id.
    fn preempt_youngest(&mut self) -> u64 {
        let mut s = self.running.pop().expect("preemption needs a running sequence");
        self.release_pages(&s.pages);
        s.pages.clear();
        s.idents.clear();
        s.computed = 0;
        self.metrics.preemptions += 1;
        let id = s.id;
        self.waiting.push_front(s);
        id
    }

    /// Allocates pages so that running sequence `i` covers `len` positions; false (with
    /// nothing allocated) when there are not enough.
    fn grow_to(&mut self, i: usize, len: usize) -> bool {
        let need = len.div_ceil(self.cfg.page_size).saturating_sub(self.running[i].pages.len());
        if need > self.bm.available() {
            return false;
        }
        for _ in 0..need {
            let p = self.bm.allocate().expect("counted as available");
            self.running[i].pages.push(p);
        }
        true
    }

    /// The next batch: (sequence id, tokens to run), decode tokens first.
    fn schedule(&mut self) -> Vec<(u64, usize)> {
        loop {
            let plan = self.schedule_once();
            // Running sequences that all wait for pages held by each other (prefills that
            // filled the pool): the youngest makes way. One sequence alone always fits.
            if !plan.is_empty() || self.running.is_empty() {
                return plan;
            }
            self.preempt_youngest();
        }
    }

    fn schedule_once(&mut self) -> Vec<(u64, usize)> {
        let ps = self.cfg.page_size;
        let mut budget = self.cfg.max_batch_tokens;
        let mut plan = Vec::new();
        let mut preempted = false;
        // 1. Decoding sequences: one token each, oldest first.
        let decoding: Vec<u64> = self.running.iter().filter(|s| s.tokens.len() - s.computed == 1).map(|s| s.id).collect();
        for id in decoding {
            if budget == 0 {
                break;
            }
            let Ok(mut i) = self.running.binary_search_by_key(&id, |s| s.id) else { continue };
            let len = self.running[i].computed + 1;
            let mut fits = true;
            while !self.grow_to(i, len) {
                preempted = true;
                if self.preempt_youngest() == id {
                    fits = false;
                    break;
                }
                i = self.running_index(id);
            }
            if fits {
                plan.push((id, 1));
                budget -= 1;
            }
        }
        // 2. Running sequences still prefilling: their next chunk, as pages allow.
        let prefilling: Vec<u64> = self.running.iter().filter(|s| s.tokens.len() - s.computed > 1).map(|s| s.id).collect();
        for id in prefilling {
            if budget == 0 {
                break;
            }
            let i = self.running_index(id);
            let s = &self.running[i];
            let room = (s.pages.len() + self.bm.available()) * ps - s.computed;
            let n = (s.tokens.len() - s.computed).min(budget).min(room);
            if n > 0 {
                let ok = self.grow_to(i, self.running[i].computed + n);
                debug_assert!(ok);
                plan.push((id, n));
                budget -= n;
            }
        }
        // 3. New sequences, first in first out, not in a step that had to preempt.
        while !preempted && budget > 0 && self.running.len() < self.cfg.max_seqs {
            let Some((id, n)) = self.admit(budget) else { break };
            plan.push((id, n));
            budget -= n;
        }
        plan
    }

    /// Starts the first queued sequence with what the prefix cache holds and a first chunk
    /// of at most `budget` tokens; None (leaving it queued) when the pages do not allow it now.
    fn admit(&mut self, budget: usize) -> Option<(u64, usize)> {
        let mut s = self.waiting.pop_front()?;
        let ps = self.cfg.page_size;
        let len = s.tokens.len();
        let hit = self.bm.lookup(&s.tokens);
        for &p in &hit.pages {
            self.bm.retain(p);
        }
        s.pages = hit.pages;
        s.idents = hit.idents;
        s.computed = s.pages.len() * ps;
        // Leave a page per running sequence for its next decode token.
        let reserve = self.running.len();
        if s.computed == len {
            // Every token is cached, but the last one must run again for its logits: it is
            // rewritten (with the same values) into a private copy of the last page.
            let last = s.pages.len() - 1;
            let copied = match (self.bm.available() > reserve).then(|| self.bm.allocate()).flatten() {
                // A failed copy (a device error) falls back to recomputing the page.
                Some(copy) => match self.pool.copy_page(s.pages[last], copy) {
                    Ok(()) => Some(copy),
                    Err(_) => {
                        self.bm.release(copy);
                        None
                    }
                },
                None => None,
            };
            if let Some(copy) = copied {
                self.bm.release(s.pages[last]);
                s.pages[last] = copy;
                s.idents.truncate(last);
                s.computed = len - 1;
            } else {
                // No page to spare for a copy: give the last page back and recompute it.
                let p = s.pages.pop().expect("a full hit has pages");
                self.bm.release(p);
                s.idents.pop();
                s.computed = s.pages.len() * ps;
            }
        }
        let spare = self.bm.available().saturating_sub(reserve);
        let room = (s.pages.len() + spare) * ps - s.computed;
        let n = (len - s.computed).min(budget).min(room);
        if n == 0 {
            self.release_pages(&s.pages);
            s.pages.clear();
            s.idents.clear();
            s.computed = 0;
            self.waiting.push_front(s);
            return None;
        }
        for _ in s.pages.len()..(s.computed + n).div_ceil(ps) {
            s.pages.push(self.bm.allocate().expect("counted as available"));
        }
        let cached = s.computed;
        self.metrics.prefix_cached_tokens += cached as u64;
        s.cached_prompt.get_or_insert(cached.min(s.prompt_len));
        s.started.get_or_insert(self.step_start);
        let id = s.id;
        let at = self.running.partition_point(|r| r.id < id);
        self.running.insert(at, s);
        Some((id, n))
    }

    /// Runs the batch, then samples for every sequence whose last token was run.
    fn run(&mut self, plan: &[(u64, usize)]) {
        let idx: Vec<usize> = plan.iter().map(|&(id, _)| self.running_index(id)).collect();
        let chunks: Vec<SeqChunk> = idx
            .iter()
            .zip(plan)
            .map(|(&i, &(_, n))| {
                let s = &self.running[i];
                let end = s.computed + n;
                SeqChunk {
                    tokens: &s.tokens[s.computed..end],
                    start: s.computed,
                    pages: &s.pages,
                    logits: if end == s.tokens.len() { Logits::Last } else { Logits::None },
                }
            })
            .collect();
        let result = self.model.forward_batch(&mut self.pool, &chunks, None);
        let forward_end = Instant::now();
        drop(chunks);
        self.metrics.steps += 1;
        self.metrics.max_seqs_in_step = self.metrics.max_seqs_in_step.max(plan.len());
        if plan.len() > 1 {
            self.metrics.batched_steps += 1;
        }
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                // Not expected (the inputs were checked); end the batch's requests, not the engine.
                let msg = format!("forward pass failed: {e}");
                let mut ids: Vec<u64> = plan.iter().map(|p| p.0).collect();
                ids.sort_unstable();
                for id in ids.into_iter().rev() {
                    let s = self.running.remove(self.running_index(id));
                    self.release_pages(&s.pages);
                    self.outbox.push((s.events, Event::Error(msg.clone())));
                }
                return;
            }
        };
        let vocab = self.model.config.vocab;
        let ps = self.cfg.page_size;
        let mut row = 0;
        let mut done: Vec<(u64, Result<FinishReason, String>)> = Vec::new();
        for (&i, &(id, n)) in idx.iter().zip(plan) {
            let s = &mut self.running[i];
            s.computed += n;
            if s.prompt_len > s.computed - n {
                // Prompt rows (a recomputation after preemption counts again).
                self.metrics.prefill_tokens += (s.prompt_len.min(s.computed) - (s.computed - n)) as u64;
            }
            // List the pages that just filled up.
            for p in s.idents.len()..s.computed / ps {
                let ident = self.bm.register(s.idents.last().copied(), &s.tokens[p * ps..(p + 1) * ps], s.pages[p]);
                s.idents.push(ident);
            }
            if s.computed == s.tokens.len() {
                s.prefilled.get_or_insert(forward_end);
                let l = &logits[row * vocab..(row + 1) * vocab];
                row += 1;
                let before = s.tokens.len();
                let r = advance(s, &self.tok, l, &mut self.outbox);
                self.metrics.generated_tokens += (s.tokens.len() - before) as u64;
                match r {
                    Ok(Some(f)) => done.push((id, Ok(f))),
                    Ok(None) => {}
                    Err(e) => done.push((id, Err(e))),
                }
            }
        }
        for (id, r) in done {
            let s = self.running.remove(self.running_index(id));
            match r {
                Ok(finish) => self.finish(s, finish),
                Err(msg) => {
                    self.release_pages(&s.pages);
                    self.outbox.push((s.events, Event::Error(msg)));
                }
            }
        }
    }

    /// Ends `s`: flushes held-back text (unless a stop string ended it) with the token ids
    /// not sent yet, sends Done and releases its pages.
    fn finish(&mut self, mut s: Seq, mut finish: FinishReason) {
        let mut rest = String::new();
        if finish != FinishReason::Stop {
            let mut out = s.stop.push(&s.dec.finish());
            if !out.stopped {
                let end = s.stop.finish();
                out.text.push_str(&end.text);
                out.stopped = end.stopped;
            }
            if out.stopped {
                finish = FinishReason::Stop;
            }
            rest = out.text;
        }
        if !rest.is_empty() || !s.unsent.is_empty() {
            // The last Text event carries every token id not sent yet, even with no text.
            let ids = std::mem::take(&mut s.unsent);
            let logprobs = std::mem::take(&mut s.unsent_logprobs);
            self.outbox.push((s.events.clone(), Event::Text { text: rest, token_ids: ids, logprobs }));
        }
        self.release_pages(&s.pages);
        let now = Instant::now();
        let usage = Usage {
            prompt_tokens: s.prompt_len,
            completion_tokens: s.generated().len(),
            cached_prompt_tokens: s.cached_prompt.unwrap_or(0),
            prompt_time: match (s.started, s.prefilled) {
                (Some(a), Some(b)) => b.saturating_duration_since(a),
                _ => Default::default(),
            },
            gen_time: s.prefilled.map(|b| now.saturating_duration_since(b)).unwrap_or_default(),
        };
        self.metrics.finished += 1;
        self.outbox.push((s.events, Event::Done { finish, usage }));
    }
}

/// Samples the next token of `s` from `logits` and streams its text; Some(reason) when
/// the sequence ends (the caller calls [`Scheduler::finish`]), Err on a sampling failure.
fn advance(
    s: &mut Seq,
    tok: &Tokenizer,
    logits: &[f32],
    outbox: &mut Vec<(UnboundedSender<Event>, Event)>,
) -> Result<Option<FinishReason>, String> {
    let next = s.sampler.sample(logits, &s.tokens[s.prompt_len..]).map_err(|e| e.to_string())?;
    if tok.is_eog(next) {
        return Ok(Some(FinishReason::Eog));
    }
    if let Some(k) = s.sampler.params().logprobs {
        s.unsent_logprobs.push(crate::TokenLogprob::new(logits, next, k));
    }
    s.tokens.push(next);
    s.unsent.push(next);
    let piece = s.dec.push(tok, next).map_err(|e| e.to_string())?;
    let out = s.stop.push(&piece);
    if !out.text.is_empty() {
        let logprobs = std::mem::take(&mut s.unsent_logprobs);
        outbox.push((s.events.clone(), Event::Text { text: out.text, token_ids: std::mem::take(&mut s.unsent), logprobs }));
    }
    if out.stopped {
        return Ok(Some(FinishReason::Stop));
    }
    if s.generated().len() >= s.max_tokens {
        return Ok(Some(FinishReason::MaxTokens));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sampler;
    use ingot_model::tokenizer::Vocab;
    use std::path::PathBuf;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    fn smollm2() -> Option<(Arc<Model>, Arc<Tokenizer>)> {
        let dir = std::env::var_os("INGOT_MODELS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ingot/models"));
        let p = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
        if !p.is_file() {
            if std::env::var("INGOT_REQUIRE_MODELS").as_deref() == Ok("1") {
                panic!("{} is missing and INGOT_REQUIRE_MODELS=1", p.display());
            }
            eprintln!("SKIP: {} not found (run scripts/fetch_models.sh); this test checks nothing", p.display());
            return None;
        }
        let model = Model::load(&p).unwrap();
        let tok = Tokenizer::new(&Vocab::from_gguf(model.file()).unwrap()).unwrap();
        Some((Arc::new(model), Arc::new(tok)))
    }

    fn request(id: u64, prompt: Vec<u32>, max_tokens: usize) -> (Request, UnboundedReceiver<Event>) {
        let (tx, rx) = unbounded_channel();
        let params = SamplingParams { max_tokens, ..Default::default() };
        (Request { id, prompt, params, events: tx, cancel: Arc::new(AtomicBool::new(false)) }, rx)
    }

    fn tokens_of(rx: &mut UnboundedReceiver<Event>) -> (Vec<u32>, FinishReason) {
        let mut toks = Vec::new();
        loop {
            match rx.try_recv().expect("an event") {
                Event::Text { token_ids, .. } => toks.extend(token_ids),
                Event::Done { finish, .. } => return (toks, finish),
                Event::Error(e) => panic!("{e}"),
            }
        }
    }

    /// Greedy tokens of `prompt` without the scheduler: one sequence over pages 0, 1, 2, …
    /// of its own pool, the whole prompt in one pass, then a token a pass.
    fn reference(model: &Model, tok: &Tokenizer, prompt: &[u32], max_tokens: usize) -> (Vec<u32>, FinishReason) {
        let mut sampler = Sampler::new(SamplingParams { max_tokens, ..Default::default() }, model.config.vocab).unwrap();
        let ps = 16;
        let mut pool = model.new_pool(ps, (prompt.len() + max_tokens).div_ceil(ps)).unwrap();
        let pages: Vec<u32> = (0..pool.num_pages() as u32).collect();
        let (mut input, mut start, mut out) = (prompt.to_vec(), 0, Vec::new());
        loop {
            let chunk = SeqChunk { tokens: &input, start, pages: &pages, logits: Logits::Last };
            let logits = model.forward_batch(&mut pool, &[chunk], None).unwrap();
            start += input.len();
            let next = sampler.sample(&logits, &out).unwrap();
            if tok.is_eog(next) {
                return (out, FinishReason::Eog);
            }
            out.push(next);
            if out.len() >= max_tokens {
                return (out, FinishReason::MaxTokens);
            }
            input = vec![next];
        }
    }

    /// A finished request's tokens, finish reason and usage.
    fn outcome(rx: &mut UnboundedReceiver<Event>) -> (Vec<u32>, FinishReason, Usage) {
        let mut toks = Vec::new();
        loop {
            match rx.try_recv().expect("an event") {
                Event::Text { token_ids, .. } => toks.extend(token_ids),
                Event::Done { finish, usage } => return (toks, finish, usage),
                Event::Error(e) => panic!("{e}"),
            }
        }
    }

    fn run_to_idle(s: &mut Scheduler) {
        for _ in 0..100 {
            if s.is_idle() {
                return;
            }
            s.step();
            s.bm.check(&s.running.iter().flat_map(|q| q.pages.iter().copied()).collect::<Vec<_>>());
        }
        panic!("no progress");
    }

    /// A prompt whose every page is cached needs its last token run again. With a page to
    /// spare, the last page is copied (copy-on-write) and one token runs; without one, the
    /// last page is given back and recomputed. Both give the tokens of the single path.
    #[test]
    fn fully_cached_prompt_copies_or_recomputes_its_last_page() {
        let Some((model, tok)) = smollm2() else { return };
        let cfg = EngineConfig { page_size: 4, num_pages: 8, max_batch_tokens: 64, max_seqs: 4 };
        let pool = model.new_pool(cfg.page_size, cfg.num_pages).unwrap();
        let mut s = Scheduler::new(model.clone(), tok.clone(), cfg, pool, Arc::new(Mutex::new(Metrics::default())));
        let p: Vec<u32> = tok.encode("The capital of France is Paris, and the capital of Spain is", true, false).unwrap()[..8].to_vec();
        let q: Vec<u32> = tok
            .encode(
                "Water boils at one hundred degrees Celsius at sea level, and it freezes at zero degrees; both points move with pressure.",
                true,
                false,
            )
            .unwrap()[..20]
            .to_vec();
        assert_ne!(p[..4], q[..4]);
        let (want, want_finish) = reference(&model, &tok, &p, 2);
        // P alone: its two full pages end up cached.
        let (r, mut rx) = request(1, p.clone(), 2);
        s.add(r);
        run_to_idle(&mut s);
        let (t, f, u) = outcome(&mut rx);
        assert_eq!((t, f, u.cached_prompt_tokens), (want.clone(), want_finish, 0));
        // Q takes 5 of the 6 free pages; P finds its 2 pages cached, and the one page left
        // is Q's reserve: no copy, P's last page is recomputed (4 cached tokens, not 7).
        let (rq, mut rxq) = request(2, q.clone(), 4);
        let (rp, mut rx) = request(3, p.clone(), 2);
        s.add(rq);
        s.add(rp);
        run_to_idle(&mut s);
        let (t, f, u) = outcome(&mut rx);
        assert_eq!((t, f, u.cached_prompt_tokens), (want.clone(), want_finish, 4));
        let (t, f, _) = outcome(&mut rxq);
        assert_eq!((t, f), reference(&model, &tok, &q, 4));
        // P alone again, pages to spare: its last page is copied and one token runs.
        let (rp, mut rx) = request(4, p.clone(), 2);
        s.add(rp);
        run_to_idle(&mut s);
        let (t, f, u) = outcome(&mut rx);
        assert_eq!((t, f, u.cached_prompt_tokens), (want, want_finish, 7));
        assert_eq!(s.bm.available(), 8);
    }

    /// Two sequences that each fit the pool alone but not together, stepped by hand: the
    /// younger is preempted (deterministically), recomputed later, and both produce the
    /// tokens of the single-sequence path; every page is free at the end.
    #[test]
    fn preemption_recomputes_and_changes_nothing() {
        let Some((model, tok)) = smollm2() else { return };
        let cfg = EngineConfig { page_size: 4, num_pages: 12, max_batch_tokens: 64, max_seqs: 4 };
        let pool = model.new_pool(cfg.page_size, cfg.num_pages).unwrap();
        let shared = Arc::new(Mutex::new(Metrics::default()));
        let mut s = Scheduler::new(model.clone(), tok.clone(), cfg, pool, shared.clone());
        let text = "Once upon a time, in a small village by the sea, there lived an old fisherman who";
        let a: Vec<u32> = tok.encode(text, true, false).unwrap()[..18].to_vec();
        let b: Vec<u32> = tok.encode("The history of the printing press begins in China, where", true, false).unwrap();
        let (ra, mut rxa) = request(1, a.clone(), 24);
        let (rb, mut rxb) = request(2, b.clone(), 24);
        s.add(ra);
        s.add(rb);
        let mut steps = 0;
        while !s.is_idle() {
            s.step();
            steps += 1;
            assert!(steps < 200, "no progress");
            s.bm.check(&s.running.iter().flat_map(|q| q.pages.iter().copied()).collect::<Vec<_>>());
        }
        let m = shared.lock().unwrap().clone();
        assert!(m.preemptions > 0, "{m:?}");
        assert_eq!(m.free_pages, 12);
        for (p, rx) in [(&a, &mut rxa), (&b, &mut rxb)] {
            assert_eq!(tokens_of(rx), reference(&model, &tok, p, 24));
        }
    }
}
