//! A running `ingot serve` for the CLI tests (serve_cli.rs, serve_logprobs_cli.rs,
//! sampling_cli.rs include it with `#[path]`): started on 127.0.0.1 with port 0, its stderr
//! forwarded to the test's, killed when dropped.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `ingot serve`; killed when dropped.
pub struct Server {
    pub child: Child,
    /// `http://ADDR`.
    pub base: String,
    pub agent: ureq::Agent,
    /// The lines the server printed on stderr so far.
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ingot"))
            .args(["serve", "--model", model.to_str().unwrap(), "--host", "127.0.0.1", "--port", "0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ingot serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = lines.clone();
        // Forward the server's stderr to the test's (shown on failure) and find the address.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[serve] {line}");
                kept.lock().unwrap().push(line.clone());
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("ingot serve printed no 'listening on' line: {:?}", child.wait());
            }
        };
        let agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(300))).build().into();
        Server { child, base, agent, stderr: lines }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POST a body; the status and the body parsed as JSON.
    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let mut r = self.agent.post(self.url(path)).header("content-type", "application/json").send(body).expect("POST");
        let s = r.body_mut().read_to_string().unwrap();
        (r.status().as_u16(), serde_json::from_str(&s).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {s}")))
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let mut r = self.agent.get(self.url(path)).call().expect("GET");
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    /// `/metrics` as name -> value.
    pub fn metrics(&self) -> HashMap<String, f64> {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200);
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(' ').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect()
    }

    /// Polls `/metrics` until `ok` holds (at most `secs`); the last metrics.
    pub fn wait_metrics(&self, secs: u64, what: &str, ok: impl Fn(&HashMap<String, f64>) -> bool) -> HashMap<String, f64> {
        let t = Instant::now();
        loop {
            let m = self.metrics();
            if ok(&m) {
                return m;
            }
            assert!(t.elapsed() < Duration::from_secs(secs), "waited {secs}s for {what}: {m:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// POST a streaming request: every SSE data payload up to and including `[DONE]`
    /// (comment lines skipped, any other line that is not `data: …` fails the test).
    pub fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let r = self.agent.post(self.url(path)).header("content-type", "application/json").send(body.to_string()).expect("POST");
        assert_eq!(r.status().as_u16(), 200);
        let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
        assert_eq!(ct.as_deref(), Some("text/event-stream"));
        let mut data = Vec::new();
        for line in BufReader::new(r.into_body().into_reader()).lines() {
            let line = line.unwrap();
            // Blank lines end events; lines starting with ':' are SSE comments (the
            // server's keep-alives while a request waits), which clients ignore.
            if line.is_empty() || line.starts_with(':') {
                continue;
            }
            let d = line.strip_prefix("data: ").unwrap_or_else(|| panic!("not an SSE data line: {line:?}"));
            data.push(d.to_string());
            if d == "[DONE]" {
                break;
            }
        }
        data
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The chunks of a stream's data (as [`Server::stream`] gives it), which must end with `[DONE]`.
pub fn chunks(data: &[String]) -> Vec<Value> {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "the stream did not end with [DONE]: {data:?}");
    data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"))).collect()
}
