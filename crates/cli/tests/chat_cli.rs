//! `ingot chat` with piped stdin (one user turn per line): replies stream to stdout, the
//! second turn finds the first in the engine's prefix cache, /reset starts over, EOF and
//! /exit leave, Ctrl-C stops a reply.

mod common;
use common::{smollm2, text};

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn ingot(args: &[&str], stdin: &str) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ingot"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ingot");
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    c.wait_with_output().unwrap()
}

/// For every reply's `ingot: generated …` line, the prompt tokens it says came from the
/// cache (`; N of M prompt tokens from the cache`, only there when N > 0).
fn reused(o: &Output) -> Vec<usize> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| l.starts_with("ingot: generated "))
        .map(|l| match l.split_once("; ") {
            Some((_, c)) => c.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{l}")),
            None => 0,
        })
        .collect()
}

fn replies(o: &Output) -> usize {
    String::from_utf8_lossy(&o.stderr).lines().filter(|l| l.starts_with("ingot: generated ")).count()
}

#[test]
fn two_turns_reuse_the_cache_and_the_first_equals_run_chat() {
    let Some(model) = smollm2() else { return };
    let m = model.to_str().unwrap();
    let q1 = "What is the capital of France?";
    let o = ingot(&["chat", "--model", m, "--temperature", "0", "-n", "16"], &format!("{q1}\nAnd of Germany?\n"));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(replies(&o), 2, "{}", text(&o));
    let r = reused(&o);
    assert_eq!(r.len(), 2, "{}", text(&o));
    assert_eq!(r[0], 0);
    assert!(r[1] >= 16, "the second turn reused no cached page: {}", text(&o));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("reused"), "{}", text(&o));
    // The first turn is exactly `ingot run --chat` (same template, same greedy tokens).
    let run = Command::new(env!("CARGO_BIN_EXE_ingot"))
        .args(["run", "--model", m, "--chat", "--temperature", "0", "-n", "16", q1])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run));
    let first = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(!first.trim().is_empty());
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.starts_with(&first), "chat's first reply differs from run --chat:\n{out}\nvs\n{first}");
    assert!(out.len() > first.len() + 1, "no second reply: {out}");
}

#[test]
fn reset_gives_the_same_reply_from_the_cache_and_exit_leaves() {
    let Some(model) = smollm2() else { return };
    let m = model.to_str().unwrap();
    // After /reset the conversation renders as the first one did: all but its last token
    // come from the cache, and greedy decoding must give the same reply.
    let o = ingot(
        &["chat", "--model", m, "--temperature", "0", "-n", "12", "--system", "Be brief."],
        "Name a color.\n/reset\nName a color.\n/exit\nnever read\n",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(replies(&o), 2, "{}", text(&o));
    let r = reused(&o);
    assert_eq!(r.len(), 2);
    assert!(r[1] > 10, "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("history cleared"));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let half = out.len() / 2;
    assert_eq!(out[..half], out[half..], "the reply after /reset differs: {out}");
}

#[test]
fn bad_flags_are_clear_errors() {
    let o = ingot(&["chat", "--model", "/nonexistent/x.gguf"], "");
    assert!(!o.status.success() && text(&o).contains("no such model file"), "{}", text(&o));
    let o = ingot(&["chat", "--model", "/nonexistent/x.gguf", "--min-p", "2"], "");
    assert!(!o.status.success() && text(&o).contains("--min-p must be in [0, 1]"), "{}", text(&o));
}

/// Ctrl-C while a reply streams cancels its request: the reply stops early, chat says so
/// and goes on to the next line. (Sampled at a high temperature with a fixed seed, the
/// reply would run to its 400 tokens: no end-of-generation token comes that early.)
#[cfg(unix)]
#[test]
fn ctrl_c_stops_the_reply() {
    use std::io::Read;
    let Some(model) = smollm2() else { return };
    let args = ["chat", "--model", model.to_str().unwrap(), "--temperature", "1.5", "--seed", "1", "-n", "400"];
    let mut c = Command::new(env!("CARGO_BIN_EXE_ingot"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ingot");
    c.stdin.take().unwrap().write_all(b"Tell me a very long story.\n/exit\n").unwrap();
    // Wait for the reply to start streaming, then interrupt.
    let mut stdout = c.stdout.take().unwrap();
    let mut first = [0u8; 1];
    assert_eq!(stdout.read(&mut first).unwrap(), 1, "no reply");
    let kill = Command::new("kill").args(["-INT", &c.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let o = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("ingot: reply stopped"), "{err}");
    let n: usize = err
        .lines()
        .find_map(|l| l.strip_prefix("ingot: generated ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no generated line: {err}"));
    assert!(n < 400, "the reply ran to the end: {err}");
}
