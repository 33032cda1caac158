//! `ingot chat`: an interactive conversation in the model's chat template. Each turn the
//! whole conversation is rendered again and submitted to the engine (the one `serve`
//! runs, sized for one sequence of the model's context), whose prefix cache holds the
//! earlier turns: only the tokens after the longest cached run of full pages are computed.
//! Stdin may be a pipe: one user turn per line.

use crate::run_cmd::{flag_error, load, SamplingArgs};
use crate::sampling_defaults::SamplingDefaults;
use anyhow::Result;
use ingot_engine::{Engine, EngineConfig, FinishReason, GenRequest, SamplingParams};
use ingot_model::chat::Message;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Encode the texts of control tokens typed in a message (`<|im_start|>`) as those
    /// tokens; by default message content is plain text and only the template's markup
    /// gives control tokens.
    #[arg(long)]
    parse_special: bool,
}

/// What Ctrl-C does: cancel the request generating the reply, or (pressed twice at the
/// prompt) leave.
#[derive(Default)]
struct Interrupt {
    /// The cancel flag of the request generating now.
    generating: Mutex<Option<Arc<AtomicBool>>>,
    at_prompt: AtomicUsize,
}

impl Interrupt {
    fn on_ctrl_c(&self) {
        if let Some(cancel) = self.generating.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            cancel.store(true, Ordering::SeqCst);
        } else if self.at_prompt.fetch_add(1, Ordering::SeqCst) >= 1 {
            eprintln!();
            std::process::exit(130);
        } else {
            eprint!("\n(Ctrl-C again, /exit or Ctrl-D to leave)\n> ");
        }
    }
}

pub fn run(a: ChatArgs) -> Result<ExitCode> {
    // Flags checked before the model is loaded; the model's defaults fill the rest after.
    a.sampling.params(&SamplingDefaults::default())?;
    a.exec.apply()?;
    let m = load(a.model.as_deref(), &a.exec)?;
    let params = a.sampling.params_for(&m)?;
    let max_tokens = params.max_tokens;
    let template = m.chat_template()?;
    let context = m.model.config.context;
    let engine = Engine::start(m.model.clone(), m.tok.clone(), EngineConfig::for_one_sequence(context))?;

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
    let mut turn: u64 = 0;
    let stdout = std::io::stdout();
    let mut input = stdin.lock();
    let mut line_no: u64 = 0;
    let mut raw = Vec::new();
    loop {
        if interactive {
            print!("> ");
            std::io::stdout().flush()?;
        }
        raw.clear();
        if input.read_until(b'\n', &mut raw)? == 0 {
            break;
        }
        line_no += 1;
        intr.at_prompt.store(0, Ordering::SeqCst);
        // A line that is not UTF-8 is reported and skipped; the conversation goes on.
        let line = match std::str::from_utf8(&raw) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("ingot: input line {line_no} is not UTF-8 ({e}); skipped");
                continue;
            }
        };
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
        let ids = m.encode_chat(&template, &messages, a.parse_special)?;
        if ids.len() + max_tokens > context {
            eprintln!(
                "ingot: the conversation ({} tokens) + {max_tokens} new tokens exceed the model's context of {context}; /reset starts over",
                ids.len()
            );
            messages.pop();
            continue;
        }
        // Each reply samples with its own seed (the seed, plus the turn), so one seed fixes
        // the whole conversation without every reply drawing the same random numbers.
        let params = SamplingParams { seed: params.seed.wrapping_add(turn), ..params.clone() };
        turn += 1;
        let mut h = engine.submit(GenRequest { prompt: ids, params }).map_err(flag_error)?;
        *intr.generating.lock().unwrap_or_else(|e| e.into_inner()) = Some(h.cancel_flag());
        let g = h.wait(|piece| {
            let mut o = stdout.lock();
            o.write_all(piece.as_bytes())?;
            o.flush()
        });
        *intr.generating.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let g = g?;
        println!();
        if g.finish == FinishReason::Cancelled {
            eprintln!("ingot: reply stopped");
        }
        let t = g.usage.gen_time.as_secs_f64();
        let cached = match g.usage.cached_prompt_tokens {
            0 => String::new(),
            n => format!("; {n} of {} prompt tokens from the cache", g.usage.prompt_tokens),
        };
        eprintln!(
            "ingot: generated {} tokens in {t:.2}s ({:.1} tok/s){cached}",
            g.tokens.len(),
            if t > 0.0 { g.tokens.len() as f64 / t } else { 0.0 }
        );
        messages.push(Message::new("assistant", g.text));
    }
    engine.shutdown();
    Ok(ExitCode::SUCCESS)
}
