//! `ingot`: the command-line front end.

mod golden_cmd;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Golden { cmd } => golden_cmd::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
