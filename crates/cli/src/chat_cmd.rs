//! `ingot chat`: an interactive conversation in the model's chat template. Each turn the
//! whole conversation is rendered again and only the tokens after the longest prefix the
//! KV cache already holds are run. Stdin may be a pipe: one user turn per line.

use crate::run_cmd::{load, SamplingArgs};
use anyhow::Result;
use ingot_engine::{generate, FinishReason, Sampler};
use ingot_model::chat::Message;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct ChatArgs {
    /// A GGUF model file, a known model's name (smollm2, gemma3, qwen2.5-coder) or a file on the
    /// Hugging Face Hub (hf:OWNER/REPO/FILE.gguf[@REVISION]); default: SmolLM2-135M-Instruct
    /// Q4_1. Models not in the cache are fetched on first use.
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// A system message at the start of the conversation.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    exec: crate::run_cmd::ExecArgs,
}

/// What Ctrl-C does: stop the reply being generated, or (pressed twice at the prompt) leave.
#[derive(Default)]
struct Interrupt {
    generating: AtomicBool,
    cancel: AtomicBool,
    at_prompt: AtomicUsize,
}

impl Interrupt {
    fn on_ctrl_c(&self) {
        if self.generating.load(Ordering::SeqCst) {
            self.cancel.store(true, Ordering::SeqCst);
        } else if self.at_prompt.fetch_add(1, Ordering::SeqCst) >= 1 {
            eprintln!();
            std::process::exit(130);
        } else {
            eprint!("\n(Ctrl-C again, /exit or Ctrl-D to leave)\n> ");
        }
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

pub fn run(a: ChatArgs) -> Result<ExitCode> {
    let params = a.sampling.params()?;
    let max_tokens = params.max_tokens;
    a.exec.apply()?;
    let m = load(a.model.as_deref(), &a.exec)?;
    let template = m.chat_template()?;
    let c = &m.model.config;
    let context = c.context;
    let mut sampler = Sampler::new(params, c.vocab)?;

    let intr = Arc::new(Interrupt::default());
    let handler = intr.clone();
    if let Err(e) = ctrlc::set_handler(move || handler.on_ctrl_c()) {
        eprintln!("ingot: Ctrl-C cannot stop a reply here ({e})");
    }
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    if interactive {
        eprintln!("ingot: chatting with {}. /reset clears the history; /exit or Ctrl-D leaves; Ctrl-C stops a reply.", m.path.display());
    }
    let base: Vec<Message> = a.system.iter().map(|s| Message::new("system", s.clone())).collect();
    let mut messages = base.clone();
    let mut cache = m.model.new_cache()?;
    // The tokens the cache holds, in order.
    let mut cached: Vec<u32> = Vec::new();
    let stdout = std::io::stdout();
    let mut input = stdin.lock();
    loop {
        if interactive {
            print!("> ");
            std::io::stdout().flush()?;
        }
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            break;
        }
        intr.at_prompt.store(0, Ordering::SeqCst);
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = base.clone();
                eprintln!("ingot: history cleared");
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", line));
        let ids = m.encode_chat(&template, &messages)?;
        if ids.len() + max_tokens > context {
            eprintln!(
                "ingot: the conversation ({} tokens) + {max_tokens} new tokens exceed the model's context of {context}; /reset starts over",
                ids.len()
            );
            messages.pop();
            continue;
        }
        // Keep the cached prefix this rendering shares; run at least one token.
        let reuse = common_prefix(&cached, &ids).min(ids.len() - 1);
        cache.truncate(reuse);
        cached.truncate(reuse);
        eprintln!("ingot: reused {reuse} cached tokens");

        intr.cancel.store(false, Ordering::SeqCst);
        intr.generating.store(true, Ordering::SeqCst);
        let g = generate(&m.model, &m.tok, &mut cache, &ids[reuse..], &mut sampler, Some(&intr.cancel), |piece| {
            let mut o = stdout.lock();
            o.write_all(piece.as_bytes())?;
            o.flush()
        });
        intr.generating.store(false, Ordering::SeqCst);
        let g = g?;
        println!();
        cached = ids;
        cached.extend_from_slice(&g.tokens[..g.cached_tokens]);
        debug_assert_eq!(cached.len(), cache.len());
        if g.finish == FinishReason::Cancelled {
            eprintln!("ingot: reply stopped");
        }
        let t = g.gen_time.as_secs_f64();
        eprintln!(
            "ingot: generated {} tokens in {t:.2}s ({:.1} tok/s)",
            g.tokens.len(),
            if t > 0.0 { g.tokens.len() as f64 / t } else { 0.0 }
        );
        messages.push(Message::new("assistant", g.text));
    }
    Ok(ExitCode::SUCCESS)
}
