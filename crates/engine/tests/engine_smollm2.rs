//! The engine on the real SmolLM2 model: concurrent requests give exactly the tokens of
//! each request run alone without the engine, under page pressure too; prefix sharing;
//! cancellation frees the pages; bad requests are refused at submit; the one-sequence
//! engine of `ingot run` and `ingot chat`. Generations are short to keep CI fast.

mod common;

use common::{alone, drain, encode, greedy, smollm2};
use ingot_engine::{Engine, EngineConfig, Error, Event, FinishReason, GenRequest, SamplingParams};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "def fibonacci(n):",
    "List three colors:",
    "Water boils at",
    "The quick brown fox",
    "In 1969, astronauts",
    "A haiku about autumn leaves:\n",
];

/// Waits until the engine has neither running nor waiting requests.
fn wait_idle(e: &Engine) -> ingot_engine::Metrics {
    let t0 = Instant::now();
    loop {
        let m = e.metrics();
        if m.running == 0 && m.waiting == 0 {
            return m;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "engine did not go idle: {m:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn concurrent_requests_match_the_single_sequence_path() {
    let Some((model, tok)) = smollm2() else { return };
    // Greedy, sampled with a seed, penalties, a stop string: each must match its run alone.
    let params: Vec<SamplingParams> = (0..PROMPTS.len())
        .map(|i| match i {
            1 => SamplingParams { temperature: 0.8, top_p: 0.9, seed: 42, max_tokens: 16, ..Default::default() },
            2 => SamplingParams { repetition_penalty: 1.3, frequency_penalty: 0.5, max_tokens: 16, ..Default::default() },
            3 => SamplingParams { stop: vec!["\n".into()], max_tokens: 24, ..Default::default() },
            _ => greedy(12 + i),
        })
        .collect();
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| encode(&tok, p)).collect();
    let engine = Engine::start(model.clone(), tok.clone(), EngineConfig { num_pages: 256, ..Default::default() }).unwrap();
    let t0 = Instant::now();
    let mut handles: Vec<_> =
        prompts.iter().zip(&params).map(|(p, sp)| engine.submit(GenRequest { prompt: p.clone(), params: sp.clone() }).unwrap()).collect();
    let got: Vec<_> = handles.iter_mut().map(drain).collect();
    let batched = t0.elapsed();
    let t1 = Instant::now();
    let want: Vec<_> = prompts.iter().zip(&params).map(|(p, sp)| alone(&model, &tok, p, sp)).collect();
    let serial = t1.elapsed();
    for (i, ((g, usage), w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "prompt {i} {:?}", PROMPTS[i]);
        assert_eq!(usage.prompt_tokens, prompts[i].len());
        assert_eq!(usage.completion_tokens, w.tokens.len());
    }
    assert_eq!(want[3].finish, FinishReason::Stop, "the stop-string request should stop on its newline: {:?}", want[3].text);
    let m = wait_idle(&engine);
    let total: usize = want.iter().map(|w| w.tokens.len()).sum();
    eprintln!("8 requests, {total} tokens: engine {batched:.2?}, one after another {serial:.2?}; {m:?}");
    assert!(m.max_seqs_in_step > 1, "no step ran two sequences: {m:?}");
    assert_eq!(m.generated_tokens, total as u64);
    assert_eq!(m.finished, 8);
    assert_eq!(m.free_pages, m.total_pages);
}

#[test]
fn page_exhaustion_waits_or_preempts_and_loses_nothing() {
    let Some((model, tok)) = smollm2() else { return };
    // 16 pages of 4 positions; each request needs 5 to 9 pages, the six together ~40. A
    // budget of 8 rows a step cuts the prompts into chunks that share steps with decoders.
    let cfg = EngineConfig { page_size: 4, num_pages: 16, max_batch_tokens: 8, max_seqs: 8 };
    let engine = Engine::start(model.clone(), tok.clone(), cfg).unwrap();
    let prompts: Vec<Vec<u32>> = PROMPTS[..6].iter().map(|p| encode(&tok, p)).collect();
    let mut handles: Vec<_> =
        prompts.iter().map(|p| engine.submit(GenRequest { prompt: p.clone(), params: greedy(16) }).unwrap()).collect();
    // Watch the queue while the requests run (a request that waits does so for many steps).
    let done = AtomicBool::new(false);
    let (got, waited) = std::thread::scope(|sc| {
        let watcher = sc.spawn(|| {
            let mut waited = false;
            while !done.load(Ordering::Relaxed) {
                waited |= engine.metrics().waiting > 0;
                std::thread::sleep(Duration::from_millis(1));
            }
            waited
        });
        let got: Vec<_> = handles.iter_mut().map(drain).collect();
        done.store(true, Ordering::Relaxed);
        (got, watcher.join().unwrap())
    });
    for (i, (g, _)) in got.iter().enumerate() {
        assert_eq!(g, &alone(&model, &tok, &prompts[i], &greedy(16)), "prompt {i}");
    }
    let m = wait_idle(&engine);
    eprintln!("{m:?}");
    assert!(m.preemptions > 0 || waited, "16 pages for ~40 pages of demand, yet nobody waited: {m:?}");
    // Every prompt row ran at least once (more after a preemption), at most 8 rows a step.
    let prompt_rows: usize = prompts.iter().map(|p| p.len()).sum();
    assert!(m.prefill_tokens >= prompt_rows as u64 && m.steps * 8 >= m.prefill_tokens + m.generated_tokens - 6, "{m:?}");
    assert_eq!(m.free_pages, 16);
}

#[test]
fn a_shared_prefix_is_computed_once() {
    let Some((model, tok)) = smollm2() else { return };
    let system = "You are a helpful assistant who answers briefly and precisely. Always think about the question \
                  before answering, and never make up facts that you do not know.";
    let a = encode(&tok, &format!("{system}\nQuestion: What is the capital of Italy?\nAnswer:"));
    let b = encode(&tok, &format!("{system}\nQuestion: How many legs does a spider have?\nAnswer:"));
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    assert!(common >= 32, "the prompts share only {common} tokens");
    let engine = Engine::start(model.clone(), tok.clone(), EngineConfig { num_pages: 64, ..Default::default() }).unwrap();
    let ps = engine.config().page_size;
    let run = |p: &Vec<u32>| drain(&mut engine.submit(GenRequest { prompt: p.clone(), params: greedy(16) }).unwrap());
    let (ga, ua) = run(&a);
    assert_eq!(ua.cached_prompt_tokens, 0);
    let (gb, ub) = run(&b);
    assert_eq!(ub.cached_prompt_tokens, common / ps * ps, "b reuses a's full pages of the common prefix");
    // The same prompt again: every full page is cached; the last token runs again in a copy.
    let (ga2, ua2) = run(&a);
    assert!(ua2.cached_prompt_tokens >= a.len() / ps * ps - ps && ua2.cached_prompt_tokens < a.len(), "{ua2:?}");
    assert_eq!(ga, alone(&model, &tok, &a, &greedy(16)));
    assert_eq!(gb, alone(&model, &tok, &b, &greedy(16)));
    assert_eq!(ga2, ga);
    // A prompt that ends exactly on a page boundary, fully cached: the copy-on-write path.
    let exact = a[..a.len() / ps * ps].to_vec();
    let (g1, _) = run(&exact);
    let (g2, u2) = run(&exact);
    assert_eq!(u2.cached_prompt_tokens, exact.len() - 1);
    assert_eq!(g1, g2);
    assert_eq!(g1, alone(&model, &tok, &exact, &greedy(16)));
    let m = wait_idle(&engine);
    assert!(m.prefix_cached_tokens >= (ub.cached_prompt_tokens + ua2.cached_prompt_tokens + u2.cached_prompt_tokens) as u64);
    assert_eq!(m.free_pages, m.total_pages, "cached pages nobody holds count as free");
}

#[test]
fn cancel_and_drop_free_every_page() {
    let Some((model, tok)) = smollm2() else { return };
    let engine = Engine::start(model, tok.clone(), EngineConfig { num_pages: 64, ..Default::default() }).unwrap();
    let prompt = encode(&tok, PROMPTS[1]);
    // cancel() after the first text: Done(Cancelled) with what was generated so far.
    let mut h = engine.submit(GenRequest { prompt: prompt.clone(), params: greedy(500) }).unwrap();
    let mut n = 0;
    loop {
        match h.events.blocking_recv().expect("events") {
            Event::Text { token_ids, .. } => {
                n += token_ids.len();
                h.cancel();
            }
            Event::Done { finish, usage } => {
                assert_eq!(finish, FinishReason::Cancelled);
                assert!(usage.completion_tokens >= n && usage.completion_tokens < 500, "{usage:?}");
                break;
            }
            Event::Error(e) => panic!("{e}"),
        }
    }
    let m = engine.metrics();
    assert_eq!((m.running, m.free_pages), (0, m.total_pages), "{m:?}");
    // Dropping the handle cancels too, running or still waiting.
    let h1 = engine.submit(GenRequest { prompt: prompt.clone(), params: greedy(500) }).unwrap();
    let h2 = engine.submit(GenRequest { prompt, params: greedy(500) }).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(h1);
    drop(h2);
    let m = wait_idle(&engine);
    assert_eq!(m.free_pages, m.total_pages, "{m:?}");
    assert!(m.generated_tokens < 1000, "the dropped requests ran to the end: {m:?}");
}

#[test]
fn bad_requests_are_refused_at_submit() {
    let Some((model, tok)) = smollm2() else { return };
    let ctx = model.config.context;
    let vocab = model.config.vocab as u32;
    let engine = Engine::start(model, tok, EngineConfig { page_size: 16, num_pages: 8, ..Default::default() }).unwrap();
    let submit = |prompt: Vec<u32>, params: SamplingParams| engine.submit(GenRequest { prompt, params }).unwrap_err().to_string();
    let has = |e: String, want: &str| assert!(e.contains(want), "{e:?} lacks {want:?}");
    has(submit(vec![], greedy(4)), "the prompt is empty");
    has(submit(vec![1, vocab], greedy(4)), &format!("token id {vocab} is outside the vocabulary"));
    has(submit(vec![1; ctx], greedy(1)), "exceed the model's context");
    has(submit(vec![1; 10], greedy(ctx)), "exceed the model's context");
    has(submit(vec![1; 100], greedy(40)), "need 9 KV pages; the engine has 8");
    // max_tokens 0 is no error: the request ends at once with nothing generated.
    let (none, usage) = drain(&mut engine.submit(GenRequest { prompt: vec![1; 10], params: greedy(0) }).unwrap());
    assert!(none.tokens.is_empty() && none.text.is_empty());
    assert_eq!((none.finish, usage.prompt_tokens, usage.completion_tokens), (FinishReason::MaxTokens, 10, 0));
    has(submit(vec![1; 10], SamplingParams { temperature: -1.0, ..greedy(4) }), "temperature must be a finite number >= 0");
    has(submit(vec![1; 10], SamplingParams { top_p: 0.0, ..greedy(4) }), "top_p must be in (0, 1]");
    has(submit(vec![1; 10], SamplingParams { logit_bias: vec![(vocab, 1.0)], ..greedy(4) }), "outside the vocabulary");
    // The largest request that fits: 8 pages of 16 = 128 positions for 100 + 29 − 1.
    let (out, _) = drain(&mut engine.submit(GenRequest { prompt: vec![1; 100], params: greedy(29) }).unwrap());
    assert!(!out.tokens.is_empty());
    // After shutdown: outstanding requests get an error, new ones are refused.
    let mut h = engine.submit(GenRequest { prompt: vec![1; 10], params: greedy(100) }).unwrap();
    assert!(engine.is_running());
    engine.shutdown();
    assert!(!engine.is_running());
    let mut last = None;
    while let Some(ev) = h.events.blocking_recv() {
        last = Some(ev);
    }
    assert!(matches!(last, Some(Event::Error(ref e)) if e.contains("shut down")), "{last:?}");
    assert!(matches!(engine.submit(GenRequest { prompt: vec![1], params: greedy(1) }), Err(Error::Stopped)));
}

#[test]
fn bad_configs_are_refused() {
    let Some((model, tok)) = smollm2() else { return };
    let start = |cfg: EngineConfig| Engine::start(model.clone(), tok.clone(), cfg).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(start(EngineConfig { page_size: 0, ..Default::default() }).contains("page_size must be at least 1"));
    assert!(start(EngineConfig { max_seqs: 0, ..Default::default() }).contains("max_seqs must be at least 1"));
    assert!(start(EngineConfig { max_batch_tokens: 8, max_seqs: 16, ..Default::default() }).contains("at least max_seqs"));
    assert!(start(EngineConfig { num_pages: usize::MAX / 2, ..Default::default() }).contains("do not fit in memory"));
    let e = Engine::start(model.clone(), tok.clone(), EngineConfig::default()).unwrap();
    let c = e.config();
    assert!(c.num_pages * c.page_size >= model.config.context, "auto budget {c:?} holds a full context");
    assert_eq!(e.metrics().total_pages, c.num_pages);
    e.shutdown();
}

/// How `ingot run` and `ingot chat` use the engine: one sequence's pages
/// ([`EngineConfig::for_one_sequence`]), [`RequestHandle::wait`] streaming the text, a next
/// turn that extends the conversation finding its prefix in the cache, and an output error
/// that cancels the request.
#[test]
fn a_one_sequence_engine_streams_reuses_turns_and_cancels_on_output_errors() {
    let Some((model, tok)) = smollm2() else { return };
    let turn1 = encode(&tok, PROMPTS[1]);
    let params = SamplingParams { temperature: 0.7, seed: 7, repetition_penalty: 1.2, max_tokens: 12, ..Default::default() };
    let engine = Engine::start(model.clone(), tok.clone(), EngineConfig::for_one_sequence(turn1.len() + 64)).unwrap();
    let c = engine.config().clone();
    assert_eq!((c.max_seqs, c.num_pages * c.page_size >= turn1.len() + 64, c.max_batch_tokens), (1, true, turn1.len() + 64));
    assert!((c.num_pages - 1) * c.page_size < turn1.len() + 64, "more pages than one sequence needs: {c:?}");
    let mut streamed = String::new();
    let done = engine
        .submit(GenRequest { prompt: turn1.clone(), params: params.clone() })
        .unwrap()
        .wait(|t| {
            streamed.push_str(t);
            Ok(())
        })
        .unwrap();
    let want = alone(&model, &tok, &turn1, &params);
    assert_eq!((&done.tokens, &done.text, done.finish), (&want.tokens, &want.text, want.finish));
    assert_eq!(streamed, done.text);
    let u = done.usage;
    assert_eq!((u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens), (turn1.len(), want.tokens.len(), 0));
    assert!(u.prompt_time > Duration::ZERO && u.gen_time > Duration::ZERO, "{u:?}");
    // The next turn: the conversation so far plus more text; its full pages come from the cache.
    let mut turn2 = turn1.clone();
    turn2.extend_from_slice(&done.tokens);
    turn2.extend(tok.encode(" Then", false, false).unwrap());
    let done2 = engine.submit(GenRequest { prompt: turn2.clone(), params: greedy(8) }).unwrap().wait(|_| Ok(())).unwrap();
    // Every generated token but the last ran (the last one too after an end-of-generation token).
    let ran = turn1.len() + done.tokens.len() - usize::from(done.finish != FinishReason::Eog);
    assert_eq!(done2.usage.cached_prompt_tokens, ran / c.page_size * c.page_size, "{:?}", done2.usage);
    let want2 = alone(&model, &tok, &turn2, &greedy(8));
    assert_eq!((done2.tokens, done2.text, done2.finish), (want2.tokens, want2.text, want2.finish));
    // A failing writer cancels the request and frees its pages.
    let mut h = engine.submit(GenRequest { prompt: turn1, params: greedy(40) }).unwrap();
    match h.wait(|_| Err(std::io::ErrorKind::BrokenPipe.into())) {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe),
        other => panic!("{other:?}"),
    }
    let m = wait_idle(&engine);
    assert!(m.generated_tokens < (want.tokens.len() + 8 + 40) as u64, "the cancelled request ran to the end: {m:?}");
    assert_eq!(m.free_pages, m.total_pages, "{m:?}");
    // A request longer than the one sequence is refused at submit.
    let e = engine.submit(GenRequest { prompt: vec![1; c.num_pages * c.page_size], params: greedy(2) }).unwrap_err();
    assert!(e.to_string().contains("KV pages"), "{e}");
}

/// `logprobs`: one entry per generated token, the model's log-softmax before the sampler's
/// penalties and temperature: each step's logits recomputed here through the model (a fresh
/// cache, prompt + the tokens so far) give the same numbers in f64.
#[test]
fn logprobs_are_the_models_log_softmax() {
    let Some((model, tok)) = smollm2() else { return };
    let prompt = encode(&tok, PROMPTS[4]);
    // Sampled, with a penalty: logprobs still describe the model's distribution.
    let params =
        SamplingParams { temperature: 0.9, seed: 3, repetition_penalty: 1.3, max_tokens: 6, logprobs: Some(5), ..Default::default() };
    let engine = Engine::start(model.clone(), tok.clone(), EngineConfig::for_one_sequence(prompt.len() + 8)).unwrap();
    let done = engine.submit(GenRequest { prompt: prompt.clone(), params }).unwrap().wait(|_| Ok(())).unwrap();
    engine.shutdown();
    assert_eq!(done.logprobs.len(), done.tokens.len());
    let mut seq = prompt.clone();
    for (step, (lp, &id)) in done.logprobs.iter().zip(&done.tokens).enumerate() {
        assert_eq!(lp.id, id);
        let mut cache = model.new_cache().unwrap();
        let logits = model.forward(&seq, &mut cache, ingot_model::Logits::Last, None).unwrap();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max + logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        let want = |i: u32| logits[i as usize] as f64 - lse;
        assert!((lp.logprob as f64 - want(id)).abs() < 1e-4, "step {step}: {} vs {}", lp.logprob, want(id));
        assert_eq!(lp.top.len(), 5);
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        for (j, &(tid, tlp)) in lp.top.iter().enumerate() {
            // The rank is checked where the recomputed logits leave no near-tie.
            let gap = |a: u32, b: u32| (logits[a as usize] - logits[b as usize]).abs() > 1e-3;
            if (j == 0 || gap(order[j - 1], order[j])) && gap(order[j], order[j + 1]) {
                assert_eq!(tid, order[j], "step {step}: rank {j}");
            }
            assert!((tlp as f64 - want(tid)).abs() < 1e-4);
        }
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1), "step {step}: not largest first");
        seq.push(id);
    }
    // Off by default; more than 20 is refused at submit.
    let engine = Engine::start(model.clone(), tok.clone(), EngineConfig::for_one_sequence(prompt.len() + 8)).unwrap();
    let plain = engine.submit(GenRequest { prompt: prompt.clone(), params: greedy(2) }).unwrap().wait(|_| Ok(())).unwrap();
    assert!(plain.logprobs.is_empty());
    let bad = SamplingParams { logprobs: Some(21), ..greedy(2) };
    let e = engine.submit(GenRequest { prompt, params: bad }).err().expect("refused");
    assert!(e.to_string().contains("must be at most 20, got 21"), "{e}");
    engine.shutdown();
}
