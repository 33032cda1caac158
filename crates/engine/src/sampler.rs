//! Sampling: the logits of one position to the next token id.
//!
//! The chain, in order (llama.cpp's default order, the protocol's mask semantics of
//! docs/ops.md): logit bias; repetition penalty (llama.cpp: a seen token's positive logit is
//! divided by it, a negative one multiplied); frequency and presence penalties (OpenAI:
//! `l -= count·frequency + (count > 0)·presence`); then temperature 0 is greedy (the first
//! index of the largest logit), and otherwise top-k (`topk_mask_logits`: larger first, ties
//! by lower index), top-p (`top_p_mask`) and min-p (`min_p_mask`) on the penalized logits,
//! softmax(l / temperature) over what is left, and an inverse-CDF draw in index order
//! (`sample_from_probs`) from a ChaCha8 stream seeded by `seed`, so a seed fixes the output.

use crate::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Ordering;
use std::collections::HashMap;

/// How to pick tokens and when to stop. The defaults change nothing: greedy, every filter
/// and penalty off, no stop strings.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0: greedy; above 0: sample from softmax(logits / temperature).
    pub temperature: f32,
    /// Keep the k largest logits; 0 is off.
    pub top_k: usize,
    /// Keep the smallest rank-order prefix whose probability reaches top_p, in (0, 1]; 1 is off.
    pub top_p: f32,
    /// Keep tokens with p ≥ min_p · p_max, in [0, 1]; 0 is off.
    pub min_p: f32,
    /// Divides positive / multiplies negative logits of tokens already seen; 1 is off.
    pub repetition_penalty: f32,
    /// Subtracted once per occurrence of a token already seen; 0 is off.
    pub frequency_penalty: f32,
    /// Subtracted once from every token already seen; 0 is off.
    pub presence_penalty: f32,
    /// Added to the logit of a token id; −Inf bans the token.
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the sampler's random stream.
    pub seed: u64,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Generation stops when the text contains one of these (it is not returned).
    pub stop: Vec<String>,
    /// Report each generated token's log-probability and the `k` most likely tokens of its
    /// step ([`crate::TokenLogprob`]; at most [`MAX_TOP_LOGPROBS`]); `None` is off.
    pub logprobs: Option<usize>,
}

/// The most alternatives [`SamplingParams::logprobs`] asks for (OpenAI's bound).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One generated token's log-probability under the model and the most likely tokens of its
/// step: the log-softmax of the model's logits, before penalties, bias, temperature and
/// filters (what the model predicts, not what the sampler drew from).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// The `k` largest (id, log-probability) of the step, largest first (ties: lower id).
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprob {
    /// `id`'s entry for a step with `logits`, with the `k` most likely tokens. The
    /// normaliser is summed in f64.
    pub fn new(logits: &[f32], id: u32, k: usize) -> TokenLogprob {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f64 = logits.iter().map(|&x| f64::from(x - max).exp()).sum();
        let lse = f64::from(max) + z.ln();
        let lp = |i: usize| (f64::from(logits[i]) - lse) as f32;
        let mut order: Vec<usize> = (0..logits.len()).collect();
        let k = k.min(logits.len());
        if k > 0 {
            order.select_nth_unstable_by(k - 1, |&a, &b| rank(logits, a, b));
            order.truncate(k);
            order.sort_by(|&a, &b| rank(logits, a, b));
        } else {
            order.clear();
        }
        TokenLogprob { id, logprob: lp(id as usize), top: order.into_iter().map(|i| (i as u32, lp(i))).collect() }
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 0,
            max_tokens: 128,
            stop: Vec::new(),
            logprobs: None,
        }
    }
}

fn param_err(param: &'static str, msg: impl Into<String>) -> Error {
    Error::Param { param, msg: msg.into() }
}

impl SamplingParams {
    /// Checks every field that does not depend on the vocabulary.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(param_err("temperature", format!("must be a finite number >= 0, got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(param_err("top_p", format!("must be in (0, 1], got {}", self.top_p)));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return Err(param_err("min_p", format!("must be in [0, 1], got {}", self.min_p)));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(param_err(
                "repetition_penalty",
                format!("must be a finite number > 0 (1 is off), got {}", self.repetition_penalty),
            ));
        }
        if !self.frequency_penalty.is_finite() {
            return Err(param_err("frequency_penalty", format!("must be finite, got {}", self.frequency_penalty)));
        }
        if !self.presence_penalty.is_finite() {
            return Err(param_err("presence_penalty", format!("must be finite, got {}", self.presence_penalty)));
        }
        if let Some((id, b)) = self.logit_bias.iter().find(|(_, b)| b.is_nan() || *b == f32::INFINITY) {
            return Err(param_err("logit_bias", format!("of token {id} is {b}: it must be finite, or -inf to ban the token")));
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return Err(param_err("stop", "strings must not be empty"));
        }
        if let Some(k) = self.logprobs.filter(|&k| k > MAX_TOP_LOGPROBS) {
            return Err(param_err("top_logprobs", format!("must be at most {MAX_TOP_LOGPROBS}, got {k}")));
        }
        Ok(())
    }

    /// [`validate`](Self::validate), and every biased token id is below `vocab`.
    pub fn validate_for_vocab(&self, vocab: usize) -> Result<()> {
        self.validate()?;
        if let Some((id, _)) = self.logit_bias.iter().find(|(id, _)| *id as usize >= vocab) {
            return Err(param_err("logit_bias", format!("names token {id}, outside the vocabulary of {vocab}")));
        }
        Ok(())
    }
}

/// Picks tokens from logits by [`SamplingParams`]; holds the seeded random stream.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    vocab: usize,
    rng: ChaCha8Rng,
}

/// Ranking rule of the protocol (no NaN here): larger first, ties by lower index.
fn rank(l: &[f32], a: usize, b: usize) -> Ordering {
    l[b].partial_cmp(&l[a]).unwrap_or(Ordering::Equal).then(a.cmp(&b))
}

impl Sampler {
    /// A sampler for a vocabulary of `vocab` tokens; checks the parameters.
    pub fn new(params: SamplingParams, vocab: usize) -> Result<Sampler> {
        params.validate_for_vocab(vocab)?;
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Ok(Sampler { params, vocab, rng })
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token for `logits` ([vocab]), given the tokens seen so far (`history`, for
    /// the penalties).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        let l = self.adjust(logits, history)?;
        if self.params.temperature == 0.0 {
            return Ok(argmax(&l) as u32);
        }
        let kept = self.filter(&l);
        let m = kept.iter().map(|&i| l[i]).fold(f32::NEG_INFINITY, f32::max) as f64;
        let t = self.params.temperature as f64;
        let w: Vec<f64> = kept.iter().map(|&i| ((l[i] as f64 - m) / t).exp()).collect();
        let total: f64 = w.iter().sum();
        let threshold = self.rng.gen::<f64>() * total;
        let mut cum = 0.0;
        for (&i, &x) in kept.iter().zip(&w) {
            cum += x;
            if cum > threshold {
                return Ok(i as u32);
            }
        }
        // Rounding can leave the threshold at the very end: the last kept token with weight.
        let last = kept.iter().zip(&w).rev().find(|(_, &x)| x > 0.0).map(|(&i, _)| i);
        Ok(last.unwrap_or(kept[0]) as u32)
    }

    /// The logits after the bias and the penalties. Errors: the wrong length, NaN or +Inf
    /// logits, history ids outside the vocabulary, or every token at −Inf.
    pub fn adjust(&self, logits: &[f32], history: &[u32]) -> Result<Vec<f32>> {
        let p = &self.params;
        if logits.len() != self.vocab {
            return Err(Error::Logits(format!("got {} logits for a vocabulary of {}", logits.len(), self.vocab)));
        }
        if let Some(i) = logits.iter().position(|x| x.is_nan() || *x == f32::INFINITY) {
            return Err(Error::Logits(format!("logits[{i}] is {}", logits[i])));
        }
        let mut l = logits.to_vec();
        for &(id, b) in &p.logit_bias {
            l[id as usize] += b;
        }
        let penalize = p.repetition_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0;
        if penalize && !history.is_empty() {
            let mut counts: HashMap<u32, u32> = HashMap::new();
            for &id in history {
                if id as usize >= self.vocab {
                    return Err(Error::Logits(format!("history token {id} is outside the vocabulary of {}", self.vocab)));
                }
                *counts.entry(id).or_default() += 1;
            }
            for (&id, &n) in &counts {
                let x = &mut l[id as usize];
                if *x > 0.0 {
                    *x /= p.repetition_penalty;
                } else {
                    *x *= p.repetition_penalty;
                }
                *x -= n as f32 * p.frequency_penalty + p.presence_penalty;
            }
        }
        if l.iter().all(|x| *x == f32::NEG_INFINITY) {
            return Err(Error::Logits("every token has logit -inf (all banned): nothing to sample".into()));
        }
        Ok(l)
    }

    /// The token ids that top-k, top-p and min-p keep from (adjusted) `l`, in index order.
    /// Tokens at −Inf are never kept; at least one token always is.
    pub fn filter(&self, l: &[f32]) -> Vec<usize> {
        let p = &self.params;
        let mut cand: Vec<usize> = (0..l.len()).filter(|&i| l[i] > f32::NEG_INFINITY).collect();
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, |&a, &b| rank(l, a, b));
            cand.truncate(p.top_k);
            cand.sort_unstable();
        }
        let m = cand.iter().map(|&i| l[i]).fold(f32::NEG_INFINITY, f32::max) as f64;
        if p.top_p < 1.0 {
            // Softmax in f64, summed in index order, as the reference does.
            let total: f64 = cand.iter().map(|&i| (l[i] as f64 - m).exp()).sum();
            let top_p = p.top_p as f64;
            // Walk the rank order until the kept mass reaches top_p. The tokens within 20 of
            // the max are a prefix of that order and nearly always hold enough mass, so only
            // they are sorted; otherwise everything is.
            let walk = |order: &[usize]| -> Option<Vec<usize>> {
                let mut cum = 0.0;
                let mut kept = Vec::new();
                for &i in order {
                    if cum >= top_p {
                        return Some(kept);
                    }
                    kept.push(i);
                    cum += (l[i] as f64 - m).exp() / total;
                }
                (cum >= top_p).then_some(kept)
            };
            let mut head: Vec<usize> = cand.iter().copied().filter(|&i| l[i] as f64 >= m - 20.0).collect();
            head.sort_unstable_by(|&a, &b| rank(l, a, b));
            let mut kept = match walk(&head) {
                Some(k) => k,
                None => {
                    let mut all = cand.clone();
                    all.sort_unstable_by(|&a, &b| rank(l, a, b));
                    // The whole row always reaches the mass (up to rounding): keep it all then.
                    walk(&all).unwrap_or(all)
                }
            };
            kept.sort_unstable();
            cand = kept;
        }
        if p.min_p > 0.0 {
            let min_p = p.min_p as f64;
            cand.retain(|&i| (l[i] as f64 - m).exp() >= min_p);
        }
        cand
    }
}

/// First index of the largest value (callers ensure there is no NaN).
fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingot_core::{Backend, DType, MinPParams, Op, Tensor, Tensors, TopKParams, TopPParams};
    use ingot_cpu::CpuBackend;
    use proptest::prelude::*;

    fn sampler(p: SamplingParams, vocab: usize) -> Sampler {
        Sampler::new(p, vocab).unwrap()
    }

    #[test]
    fn validation_names_the_parameter() {
        let bad = |f: fn(&mut SamplingParams), want: &str| {
            let mut p = SamplingParams::default();
            f(&mut p);
            let e = Sampler::new(p, 10).unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        };
        bad(|p| p.temperature = -0.5, "temperature must be a finite number >= 0");
        bad(|p| p.temperature = f32::NAN, "temperature");
        bad(|p| p.temperature = f32::INFINITY, "temperature");
        bad(|p| p.top_p = 0.0, "top_p must be in (0, 1]");
        bad(|p| p.top_p = 1.5, "top_p");
        bad(|p| p.top_p = f32::NAN, "top_p");
        bad(|p| p.min_p = -0.1, "min_p must be in [0, 1]");
        bad(|p| p.min_p = 1.1, "min_p");
        bad(|p| p.repetition_penalty = 0.0, "repetition_penalty");
        bad(|p| p.repetition_penalty = f32::INFINITY, "repetition_penalty");
        bad(|p| p.frequency_penalty = f32::NAN, "frequency_penalty must be finite");
        bad(|p| p.presence_penalty = f32::NEG_INFINITY, "presence_penalty must be finite");
        bad(|p| p.logit_bias = vec![(10, 1.0)], "outside the vocabulary of 10");
        bad(|p| p.logit_bias = vec![(1, f32::NAN)], "logit_bias of token 1");
        bad(|p| p.stop = vec![String::new()], "stop strings must not be empty");
        let ok = SamplingParams { top_k: 0, top_p: 1.0, min_p: 1.0, logit_bias: vec![(9, f32::NEG_INFINITY)], ..Default::default() };
        Sampler::new(ok, 10).unwrap();
    }

    #[test]
    fn bad_logits_are_errors() {
        let mut s = sampler(SamplingParams::default(), 3);
        assert!(s.sample(&[0.0, 1.0], &[]).unwrap_err().to_string().contains("got 2 logits"));
        assert!(s.sample(&[0.0, f32::NAN, 1.0], &[]).unwrap_err().to_string().contains("logits[1] is NaN"));
        assert!(s.sample(&[0.0, 1.0, 2.0], &[7]).is_ok(), "no penalty: history is not read");
        let mut s = sampler(SamplingParams { presence_penalty: 1.0, ..Default::default() }, 3);
        assert!(s.sample(&[0.0, 1.0, 2.0], &[7]).unwrap_err().to_string().contains("history token 7"));
        let ninf = f32::NEG_INFINITY;
        assert!(s.sample(&[ninf, ninf, ninf], &[]).unwrap_err().to_string().contains("nothing to sample"));
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = sampler(SamplingParams::default(), 5);
        assert_eq!(s.sample(&[1.0, 3.0, -2.0, 3.0, 0.0], &[]).unwrap(), 1);
        let ninf = f32::NEG_INFINITY;
        assert_eq!(s.sample(&[ninf, ninf, -5.0, ninf, ninf], &[]).unwrap(), 2);
    }

    #[test]
    fn penalties_by_hand() {
        // history: token 0 twice, tokens 1 and 3 once, token 2 never
        let p = SamplingParams { repetition_penalty: 2.0, frequency_penalty: 0.5, presence_penalty: 0.25, ..Default::default() };
        let s = sampler(p, 4);
        let l = s.adjust(&[2.0, -2.0, 1.0, 0.5], &[0, 1, 0, 3]).unwrap();
        // 0: 2/2 - (2·0.5 + 0.25); 1: -2·2 - (0.5 + 0.25); 2: unchanged; 3: 0.5/2 - 0.75
        assert_eq!(l, vec![-0.25, -4.75, 1.0, -0.5]);
        // Greedy now picks token 2, not token 0.
        let mut s = s;
        assert_eq!(s.sample(&[2.0, -2.0, 1.0, 0.5], &[0, 1, 0, 3]).unwrap(), 2);
        assert_eq!(s.sample(&[2.0, -2.0, 1.0, 0.5], &[]).unwrap(), 0);
    }

    #[test]
    fn logit_bias_adds_and_bans() {
        let p = SamplingParams { logit_bias: vec![(0, f32::NEG_INFINITY), (2, 1.5)], ..Default::default() };
        let mut s = sampler(p, 3);
        assert_eq!(s.adjust(&[5.0, 1.0, 0.0], &[]).unwrap(), vec![f32::NEG_INFINITY, 1.0, 1.5]);
        assert_eq!(s.sample(&[5.0, 1.0, 0.0], &[]).unwrap(), 2);
    }

    #[test]
    fn sampling_follows_the_softmax() {
        // probs 0.5, 0.3, 0.2 at temperature 1; temperature 0.5 squares and renormalizes them.
        let l = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        for (t, want) in [(1.0f32, [0.5, 0.3, 0.2]), (0.5, [0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38])] {
            let mut s = sampler(SamplingParams { temperature: t, seed: 7, ..Default::default() }, 3);
            let n = 20000;
            let mut c = [0usize; 3];
            for _ in 0..n {
                c[s.sample(&l, &[]).unwrap() as usize] += 1;
            }
            for i in 0..3 {
                let f = c[i] as f64 / n as f64;
                assert!((f - want[i]).abs() < 0.015, "t={t} token {i}: {f} vs {}", want[i]);
            }
        }
    }

    #[test]
    fn filters_by_hand() {
        let l = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln(), f32::NEG_INFINITY];
        let kept =
            |top_k, top_p, min_p| sampler(SamplingParams { temperature: 1.0, top_k, top_p, min_p, ..Default::default() }, 4).filter(&l);
        assert_eq!(kept(0, 1.0, 0.0), vec![0, 1, 2]);
        assert_eq!(kept(2, 1.0, 0.0), vec![0, 1]);
        assert_eq!(kept(0, 0.4, 0.0), vec![0]);
        assert_eq!(kept(0, 0.7, 0.0), vec![0, 1]);
        assert_eq!(kept(0, 1.0, 0.5), vec![0, 1]);
        // top-p renormalizes after top-k: of {0.5, 0.3}, 0.5/0.8 = 0.625 < 0.7.
        assert_eq!(kept(2, 0.7, 0.0), vec![0, 1]);
        assert_eq!(kept(2, 0.6, 0.0), vec![0]);
    }

    /// What the protocol's reference masks keep: topk → top_p → min_p on f32 logits.
    fn reference_kept(l: &[f32], top_k: usize, top_p: f32, min_p: f32) -> Vec<usize> {
        let v = l.len();
        let mut t = Tensor::from_f32(DType::F32, vec![1, v], l);
        let mut run = |op: Op| {
            let mut ins = Tensors::new();
            ins.insert("logits".into(), t.clone());
            t = CpuBackend.run(&op, &ins).unwrap().remove("masked").unwrap();
        };
        if top_k > 0 {
            run(Op::TopkMaskLogits(TopKParams { num_tokens: 1, vocab_size: v, k: top_k, dtype: DType::F32 }));
        }
        if top_p < 1.0 {
            run(Op::TopPMask(TopPParams { num_tokens: 1, vocab_size: v, top_p: top_p as f64, dtype: DType::F32 }));
        }
        if min_p > 0.0 {
            run(Op::MinPMask(MinPParams { num_tokens: 1, vocab_size: v, min_p: min_p as f64, dtype: DType::F32 }));
        }
        t.to_f32().unwrap().iter().enumerate().filter(|(_, x)| x.is_finite()).map(|(i, _)| i).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn filter_keeps_what_the_reference_masks_keep(
            l in prop::collection::vec(-8.0f32..8.0, 1..300),
            ties in any::<bool>(),
            kf in 0.0f64..1.0, top_p in 0.01f32..=1.0, min_p in 0.0f32..0.5,
        ) {
            // rounded logits make many ties
            let l: Vec<f32> = if ties { l.iter().map(|x| x.round()).collect() } else { l };
            let top_k = (l.len() as f64 * kf) as usize;
            let s = sampler(SamplingParams { temperature: 1.0, top_k, top_p, min_p, ..Default::default() }, l.len());
            prop_assert_eq!(s.filter(&l), reference_kept(&l, top_k, top_p, min_p));
        }

        #[test]
        fn same_seed_same_tokens(l in prop::collection::vec(-4.0f32..4.0, 2..100), seed in any::<u64>(), t in 0.1f32..2.0) {
            let p = SamplingParams { temperature: t, seed, top_p: 0.9, repetition_penalty: 1.1, ..Default::default() };
            let (mut a, mut b) = (sampler(p.clone(), l.len()), sampler(p, l.len()));
            let mut hist = Vec::new();
            for _ in 0..20 {
                let x = a.sample(&l, &hist).unwrap();
                prop_assert_eq!(x, b.sample(&l, &hist).unwrap());
                hist.push(x);
            }
        }

        #[test]
        fn greedy_and_top_k_1_are_argmax(l in prop::collection::vec(-100.0f32..100.0, 1..300), seed in any::<u64>(), t in 0.1f32..5.0) {
            let want = l.iter().enumerate().fold(0, |b, (i, x)| if *x > l[b] { i } else { b }) as u32;
            let mut g = sampler(SamplingParams::default(), l.len());
            prop_assert_eq!(g.sample(&l, &[]).unwrap(), want);
            let mut k1 = sampler(SamplingParams { temperature: t, top_k: 1, seed, ..Default::default() }, l.len());
            prop_assert_eq!(k1.sample(&l, &[]).unwrap(), want);
        }

        #[test]
        fn samples_are_kept_tokens(l in prop::collection::vec(-5.0f32..5.0, 1..200), seed in any::<u64>(), top_p in 0.05f32..=1.0, min_p in 0.0f32..0.9) {
            let mut s = sampler(SamplingParams { temperature: 1.0, top_k: 20, top_p, min_p, seed, ..Default::default() }, l.len());
            let kept = s.filter(&l);
            for _ in 0..10 {
                let x = s.sample(&l, &[]).unwrap() as usize;
                prop_assert!(kept.contains(&x));
            }
        }
    }
}
