//! `ingot run`: generate text from a prompt, streaming it to stdout.

use crate::models;
use anyhow::{bail, Context, Result};
use ingot_model::chat::{default_template, ChatTemplate, Message};
use ingot_model::tokenizer::{StreamDecoder, Tokenizer, Vocab};
use ingot_model::{Logits, Model};
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The prompt (or give it with --prompt).
    #[arg(conflicts_with = "prompt_flag")]
    prompt: Option<String>,
    /// The prompt.
    #[arg(long = "prompt", value_name = "TEXT")]
    prompt_flag: Option<String>,
    /// A GGUF model file; default: SmolLM2-135M-Instruct Q4_1, fetched into the cache on first use.
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// Most tokens to generate.
    #[arg(long = "max-tokens", short = 'n', default_value_t = 128)]
    max_tokens: usize,
    /// 0: greedy; above 0: sample from softmax(logits / temperature).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Seed of the sampler (temperature > 0).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wrap the prompt in the model's chat template as one user message.
    #[arg(long)]
    chat: bool,
    /// Print one JSON object {prompt_ids, generated_ids, text} instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: RunArgs) -> Result<ExitCode> {
    let prompt = a.prompt.or(a.prompt_flag).context("no prompt: give it as an argument or with --prompt")?;
    if !(a.temperature >= 0.0 && a.temperature.is_finite()) {
        bail!("--temperature must be a finite number >= 0, got {}", a.temperature);
    }
    let path = models::resolve(a.model.as_deref())?;
    let t_load = Instant::now();
    let model = Model::load(&path).with_context(|| format!("loading {}", path.display()))?;
    let tok = Tokenizer::new(&Vocab::from_gguf(model.file())?)?;
    let text = if a.chat {
        let src = match model.file().get_str("tokenizer.chat_template") {
            Ok(s) => s.to_string(),
            Err(_) => default_template(model.config.arch.name())
                .with_context(|| format!("{} has no chat template and Ingot knows none for {}", path.display(), model.config.arch.name()))?
                .to_string(),
        };
        let piece = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
        ChatTemplate::new(&src)?.render(&[Message::new("user", prompt.clone())], true, &piece(tok.bos()), &piece(tok.eos()))?
    } else {
        prompt
    };
    // With a chat template the BOS (if any) is part of the rendered text.
    let prompt_ids = tok.encode(&text, !a.chat, a.chat)?;
    if prompt_ids.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    if prompt_ids.len() + a.max_tokens > model.config.context {
        bail!("{} prompt tokens + {} new tokens exceed the model's context of {}", prompt_ids.len(), a.max_tokens, model.config.context);
    }
    eprintln!(
        "ingot: {} ({}, {} layers) loaded in {:.2}s",
        path.display(),
        model.config.arch.name(),
        model.config.n_layer,
        t_load.elapsed().as_secs_f64()
    );

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let mut cache = model.new_cache();
    let t0 = Instant::now();
    let mut logits = model.forward(&prompt_ids, &mut cache, Logits::Last, None)?;
    let t_prompt = t0.elapsed();
    let mut generated = Vec::new();
    let mut out = String::new();
    let mut dec = StreamDecoder::new(true);
    let stdout = std::io::stdout();
    let t1 = Instant::now();
    while generated.len() < a.max_tokens {
        let next = if a.temperature == 0.0 { argmax(&logits) } else { sample(&logits, a.temperature, &mut rng) };
        if tok.is_eog(next) {
            break;
        }
        generated.push(next);
        let piece = dec.push(&tok, next)?;
        if !a.json && !piece.is_empty() {
            let mut o = stdout.lock();
            o.write_all(piece.as_bytes())?;
            o.flush()?;
        }
        out.push_str(&piece);
        if generated.len() == a.max_tokens {
            break;
        }
        logits = model.forward(&[next], &mut cache, Logits::Last, None)?;
    }
    let tail = dec.finish();
    out.push_str(&tail);
    let t_gen = t1.elapsed();
    if a.json {
        let j = serde_json::json!({"prompt_ids": prompt_ids, "generated_ids": generated, "text": out});
        println!("{j}");
    } else {
        print!("{tail}");
        println!();
    }
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    eprintln!(
        "ingot: prompt {} tokens in {:.2}s ({:.1} tok/s); generated {} tokens in {:.2}s ({:.1} tok/s)",
        prompt_ids.len(),
        t_prompt.as_secs_f64(),
        rate(prompt_ids.len(), t_prompt.as_secs_f64()),
        generated.len(),
        t_gen.as_secs_f64(),
        rate(generated.len(), t_gen.as_secs_f64())
    );
    Ok(ExitCode::SUCCESS)
}

/// First index of the largest logit.
fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Sample from softmax(logits / t).
fn sample(logits: &[f32], t: f32, rng: &mut impl Rng) -> u32 {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f64> = logits.iter().map(|&l| (((l - m) / t) as f64).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut u = rng.gen::<f64>() * total;
    for (i, x) in w.iter().enumerate() {
        u -= x;
        if u < 0.0 {
            return i as u32;
        }
    }
    argmax(logits)
}
