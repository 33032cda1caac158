//! Helpers shared by the CLI tests: run the built `ingot`, and find the default model
//! (skipping with a printed reason when it is absent, failing when INGOT_REQUIRE_MODELS=1).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Run `ingot ARGS` and capture its output.
pub fn ingot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ingot")).args(args).output().expect("run ingot")
}

/// stdout and stderr together, for assertion messages.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The cached SmolLM2 file, or None (with a SKIP line) when it is absent.
pub fn smollm2() -> Option<PathBuf> {
    let dir = std::env::var_os("INGOT_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ingot/models"));
    let p = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("INGOT_REQUIRE_MODELS").as_deref() == Ok("1") {
        panic!("{} missing and INGOT_REQUIRE_MODELS=1", p.display());
    }
    eprintln!("SKIP: {} not found (run scripts/fetch_models.sh); this test checks nothing", p.display());
    None
}
