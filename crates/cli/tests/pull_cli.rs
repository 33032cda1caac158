//! `ingot pull`: lists the known models and what is cached; unknown names are clear
//! errors; a cached model is verified by sha256 without downloading anything.

use std::path::PathBuf;
use std::process::{Command, Output};

fn ingot(args: &[&str], models: Option<&std::path::Path>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ingot"));
    c.args(args);
    if let Some(m) = models {
        c.env("INGOT_MODELS", m);
    }
    c.output().expect("run ingot")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn lists_known_models_and_what_is_cached() {
    let empty = tempfile::tempdir().unwrap();
    let o = ingot(&["pull"], Some(empty.path()));
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    for name in ["smollm2", "gemma3", "qwen2.5-coder", "SmolLM2-135M-Instruct.Q4_1.gguf"] {
        assert!(t.contains(name), "{name} missing from: {t}");
    }
    assert_eq!(t.matches("not cached").count(), 3, "{t}");
    // A cached file is listed with its path and size.
    std::fs::write(empty.path().join("gemma-3-270m-q4_k_m.gguf"), vec![0u8; 1 << 20]).unwrap();
    let t = text(&ingot(&["pull"], Some(empty.path())));
    assert_eq!(t.matches("not cached").count(), 2, "{t}");
    assert!(t.contains("1.0 MiB") && t.contains("gemma-3-270m-q4_k_m.gguf"), "{t}");
}

#[test]
fn unknown_name_is_a_clear_error() {
    let o = ingot(&["pull", "nope"], None);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("unknown model 'nope'") && t.contains("smollm2, gemma3, qwen2.5-coder"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn cached_model_is_reported_verified() {
    let dir = std::env::var_os("INGOT_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ingot/models"));
    if !dir.join("SmolLM2-135M-Instruct.Q4_1.gguf").is_file() {
        eprintln!("SKIP: SmolLM2 is not cached; this test would download it");
        return;
    }
    let t0 = std::time::Instant::now();
    let o = ingot(&["pull", "smollm2"], Some(&dir));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("cached and verified (sha256)"), "{}", text(&o));
    assert!(t0.elapsed().as_secs() < 30, "verifying took {:?}", t0.elapsed());
}

#[test]
fn hf_forms_are_checked_and_cached_hf_files_listed() {
    let dir = tempfile::tempdir().unwrap();
    // A bad form is refused before anything is fetched.
    let o = ingot(&["pull", "hf:owner/repo"], Some(dir.path()));
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("bad model 'hf:owner/repo'") && t.contains("hf:OWNER/REPO/FILE.gguf"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    // With the Hub off, a file not in the cache is a clear error (and no network is used).
    let o = Command::new(env!("CARGO_BIN_EXE_ingot"))
        .args(["pull", "hf:owner/repo/x.gguf"])
        .env("INGOT_MODELS", dir.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("not in the cache") && t.contains("HF_HUB_OFFLINE=1"), "{t}");
    // A cached hf: file is listed under its spec, and `pull` of it reports its sha256.
    let f = dir.path().join("hf/owner/repo/main/x.gguf");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(&f, b"abc").unwrap();
    let t = text(&ingot(&["pull"], Some(dir.path())));
    assert!(t.contains("hf:owner/repo/x.gguf@main") && t.contains(&f.display().to_string()), "{t}");
    let o = ingot(&["pull", "hf:owner/repo/x.gguf"], Some(dir.path()));
    assert!(o.status.success(), "{}", text(&o));
    // sha256("abc"), from FIPS 180-2's example.
    let t = text(&o);
    assert!(t.contains("unverified") && t.contains("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"), "{t}");
}

/// Serves `n` requests on a local port, each answered 404, and returns the port and what was
/// asked: (request line, authorization header) per request.
fn recording_404_server(n: usize) -> (u16, std::thread::JoinHandle<Vec<(String, String)>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for stream in listener.incoming().take(n) {
            let mut stream = stream.unwrap();
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            r.read_line(&mut first).unwrap();
            let mut auth = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.strip_prefix("authorization:").or_else(|| line.strip_prefix("Authorization:")) {
                    auth = v.trim().to_string();
                }
            }
            stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
            seen.push((first.trim().to_string(), auth));
        }
        seen
    });
    (port, h)
}

#[test]
fn hub_environment_is_read() {
    if ["ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"].iter().any(|v| std::env::var_os(v).is_some()) {
        eprintln!("SKIP: a proxy is set in the environment, and hf-hub's ureq would send the local server's requests through it");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hf_home = tempfile::tempdir().unwrap();
    std::fs::write(hf_home.path().join("token"), "from-file\n").unwrap();
    for (token_env, want) in [(Some("from-env"), "Bearer from-env"), (None, "Bearer from-file")] {
        let (port, server) = recording_404_server(1);
        let mut c = Command::new(env!("CARGO_BIN_EXE_ingot"));
        c.args(["pull", "hf:owner/repo/x.gguf@v2"])
            .env("INGOT_MODELS", dir.path())
            .env("HF_ENDPOINT", format!("http://127.0.0.1:{port}/"))
            .env("HF_HOME", hf_home.path())
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_TOKEN");
        if let Some(t) = token_env {
            c.env("HF_TOKEN", t);
        }
        let o = c.output().unwrap();
        assert!(!o.status.success());
        let t = text(&o);
        assert!(t.contains("status code 404") && t.contains(&format!("http://127.0.0.1:{port}/owner/repo/resolve/v2/x.gguf")), "{t}");
        let seen = server.join().unwrap();
        assert_eq!(seen, vec![("GET /owner/repo/resolve/v2/x.gguf HTTP/1.1".to_string(), want.to_string())]);
        assert!(!dir.path().join("hf").exists(), "a failed download left files");
    }
}
