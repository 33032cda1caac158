//! `ingot perplexity`: how well a model predicts a text, computed as llama.cpp's
//! `llama-perplexity` does, so the two can be compared on the same file and settings.
//!
//! The whole text is tokenized once (with the BOS the model adds), then cut into
//! `--ctx`-token chunks (the tail that does not fill one is dropped). Each chunk runs
//! alone in a fresh cache, its first token replaced by BOS where the model adds one; the
//! logits of positions `ctx/2 .. ctx−2` are scored against the next token (the first
//! half only gives the scored tokens some context). Perplexity is `exp(mean NLL)` over
//! every scored token of every chunk; the ± is the standard error of that mean carried
//! through the exponential, as llama-perplexity prints it.

use crate::run_cmd::{load, non_negative, ExecArgs};
use anyhow::{bail, Context, Result};
use ingot_model::Logits;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct PerplexityArgs {
    /// GGUF model (a path, a known model's name or hf:OWNER/REPO/FILE.gguf); default: the default model.
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// The text to score: a UTF-8 plain-text file.
    #[arg(long, short = 'f')]
    file: PathBuf,
    /// Tokens per chunk (llama-perplexity's -c); the second half of each chunk is scored.
    #[arg(long, short = 'c', default_value_t = 512, allow_negative_numbers = true, value_parser = non_negative)]
    ctx: usize,
    /// Score only the first N chunks (default: every whole chunk of the text).
    #[arg(long, allow_negative_numbers = true, value_parser = non_negative)]
    chunks: Option<usize>,
    #[command(flatten)]
    exec: ExecArgs,
    /// Print one JSON object (with a `perplexity` field) instead of text.
    #[arg(long)]
    json: bool,
}

/// The running sums of the negative log-likelihood.
#[derive(Default)]
struct Nll {
    sum: f64,
    sum_sq: f64,
    count: usize,
}

impl Nll {
    /// Adds the token `target`'s log-probability under `logits` (one row), in f64.
    fn add(&mut self, logits: &[f32], target: usize) {
        let max = logits.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
        let lse = max + logits.iter().map(|&x| (f64::from(x) - max).exp()).sum::<f64>().ln();
        let lp = f64::from(logits[target]) - lse;
        self.sum -= lp;
        self.sum_sq += lp * lp;
        self.count += 1;
    }

    fn perplexity(&self) -> f64 {
        (self.sum / self.count as f64).exp()
    }

    /// The standard error of the perplexity (llama-perplexity's ±).
    fn uncertainty(&self) -> Option<f64> {
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum_sq / n - mean * mean;
        (var > 0.0 && self.count > 1).then(|| (var / (n - 1.0)).sqrt() * self.perplexity())
    }
}

pub fn run(a: PerplexityArgs) -> Result<ExitCode> {
    if a.ctx < 8 {
        bail!("--ctx must be at least 8, got {}", a.ctx);
    }
    if a.chunks == Some(0) {
        bail!("--chunks must be at least 1");
    }
    let bytes = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{} is not UTF-8 text (invalid byte at offset {})", a.file.display(), e.utf8_error().valid_up_to()))?;
    a.exec.apply()?;
    let m = load(a.model.as_deref(), &a.exec)?;
    let cfg = &m.model.config;
    if a.ctx > cfg.context {
        bail!("--ctx {} is more than the model's context of {} tokens", a.ctx, cfg.context);
    }
    let tokens = m.tok.encode(&text, true, false)?;
    if tokens.len() < 2 * a.ctx {
        bail!(
            "{} has {} tokens; a perplexity with --ctx {} needs at least {} (two chunks), as llama-perplexity does",
            a.file.display(),
            tokens.len(),
            a.ctx,
            2 * a.ctx
        );
    }
    let whole = tokens.len() / a.ctx;
    let n_chunk = a.chunks.map_or(whole, |c| c.min(whole));
    let bos = if m.tok.add_bos() { m.tok.bos() } else { None };
    let first = a.ctx / 2;
    let vocab = cfg.vocab;

    let bar = if std::io::stderr().is_terminal() && !a.json {
        indicatif::ProgressBar::new(n_chunk as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} chunk {pos}/{len}, {msg} [{elapsed} / about {eta} left]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let t0 = Instant::now();
    let mut nll = Nll::default();
    for i in 0..n_chunk {
        let chunk = &tokens[i * a.ctx..(i + 1) * a.ctx];
        let mut input = chunk.to_vec();
        if let Some(b) = bos {
            input[0] = b;
        }
        let mut cache = m.model.new_cache()?;
        let logits = m.model.forward(&input, &mut cache, Logits::All, None)?;
        anyhow::ensure!(logits.len() == a.ctx * vocab, "the model returned {} logits for {} positions", logits.len(), a.ctx);
        for j in first..a.ctx - 1 {
            let row = &logits[j * vocab..(j + 1) * vocab];
            let target = chunk[j + 1] as usize;
            anyhow::ensure!(target < vocab, "token {target} is outside the model's vocabulary of {vocab}");
            anyhow::ensure!(row.iter().all(|x| x.is_finite()), "chunk {}: non-finite logits at position {j}", i + 1);
            nll.add(row, target);
        }
        bar.set_message(format!("perplexity so far {:.4}", nll.perplexity()));
        bar.inc(1);
        if bar.is_hidden() && !a.json {
            // No terminal: llama-perplexity's running estimates instead of a bar.
            eprint!("[{}]{:.4},", i + 1, nll.perplexity());
        }
    }
    bar.finish_and_clear();
    if !a.json {
        eprintln!();
    }
    let secs = t0.elapsed().as_secs_f64();
    let ppl = nll.perplexity();
    let pm = nll.uncertainty();
    if a.json {
        let out = serde_json::json!({
            "model": m.path.display().to_string(),
            "file": a.file.display().to_string(),
            "backend": m.model.backend(),
            "ctx": a.ctx,
            "chunks": n_chunk,
            "tokens": tokens.len(),
            "scored_tokens": nll.count,
            "mean_nll": nll.sum / nll.count as f64,
            "perplexity": ppl,
            "perplexity_stderr": pm,
            "seconds": secs,
        });
        println!("{out}");
    } else {
        let pm = pm.map(|u| format!(" ± {u:.5}")).unwrap_or_default();
        println!(
            "perplexity: {ppl:.4}{pm} ({n_chunk} chunks of {} tokens, {} tokens scored; {:.1} s, {:.0} tokens/s)",
            a.ctx,
            nll.count,
            secs,
            (n_chunk * a.ctx) as f64 / secs
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::Nll;

    #[test]
    fn nll_of_uniform_logits_is_log_vocab() {
        let mut n = Nll::default();
        n.add(&[0.5; 8], 3);
        n.add(&[-2.0; 8], 0);
        assert!((n.perplexity() - 8.0).abs() < 1e-12, "{}", n.perplexity());
        // Every token equally likely: no spread, so no standard error.
        assert_eq!(n.uncertainty(), None);
    }

    #[test]
    fn nll_matches_a_hand_computed_softmax() {
        // logits [0, ln 3]: p = [1/4, 3/4].
        let mut n = Nll::default();
        n.add(&[0.0, 3f32.ln()], 1);
        n.add(&[0.0, 3f32.ln()], 0);
        let want = ((-(0.75f64).ln() - (0.25f64).ln()) / 2.0).exp();
        assert!((n.perplexity() - want).abs() < 1e-6, "{} vs {want}", n.perplexity());
        // Two values -ln(3/4), -ln(1/4): sample standard deviation over sqrt(n)... times ppl.
        let (a, b) = ((0.75f64).ln(), (0.25f64).ln());
        let mean = -(a + b) / 2.0;
        let var = (a * a + b * b) / 2.0 - mean * mean;
        let want_u = (var / 1.0).sqrt() * want;
        assert!((n.uncertainty().unwrap() - want_u).abs() < 1e-6);
    }
}
