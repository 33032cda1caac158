//! End-to-end tests of `ingot golden`: the seed protocol's command lines run verbatim,
//! the same seed gives the same bytes, `check` catches a corrupted artifact, and bad
//! input gives an error message and a non-zero exit, never a panic.

use std::path::Path;
use std::process::{Command, Output};

fn ingot(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ingot")).args(args).current_dir(cwd).output().expect("run ingot")
}

fn ok(o: &Output) -> bool {
    o.status.success()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Every command line of seed 000 (`metal-protocol-tests`), with
/// `./build/metal_protocol_tests` replaced by `ingot golden gen`.
const SEED_000: &[&str] = &[
    "--op gemm --m 8 --n 16 --k 12 --transa false --transb true --use_bias false",
    "--op embedding_lookup --num_tokens 8 --hidden_size 128 --vocab_size 1000",
    "--op rms_norm --num_tokens 8 --hidden_size 128 --eps 1e-5",
    "--op silu_and_mul --num_tokens 8 --intermediate_size 256",
    "--op topk_mask_logits --num_tokens 4 --vocab_size 1000 --k 10",
    "--op extract_k_values --M 4 --N 1000 --k 10",
    "--op batch_prefill_attention --num_tokens 4 --num_query_heads 8 --num_kv_heads 8 --head_size 64 --kv_len 16",
    "--op rope --num_tokens 4 --num_heads 8 --head_size 64 --rope_theta 1e4 --rope_factor 1.0",
    "--op add_residual --num_tokens 8 --hidden_size 128",
    "--op cast_type --num_elements 1024 --input_dtype fp32 --output_dtype fp16",
    "--op gemm --m 8 --n 16 --k 12 --case metal_validation",
    "--op rms_norm --num_tokens 8 --hidden_size 128 --case metal_validation",
    "--op silu_and_mul --num_tokens 8 --intermediate_size 256 --case metal_validation",
    "--op embedding_lookup --num_tokens 8 --hidden_size 128 --vocab_size 1000 --case metal_validation",
    "--op topk_mask_logits --num_tokens 4 --vocab_size 1000 --k 10 --case metal_validation",
    "--op extract_k_values --M 4 --N 1000 --k 10 --case metal_validation",
];

#[test]
fn seed_000_command_lines_run_verbatim_and_check() {
    let dir = tempfile::tempdir().unwrap();
    for line in SEED_000 {
        let mut args = vec!["golden", "gen"];
        args.extend(line.split_whitespace());
        let o = ingot(&args, dir.path());
        assert!(ok(&o), "ingot golden gen {line}: {}", text(&o));
    }
    for p in
        ["artifacts/default/gemm/meta.json", "artifacts/default/cast/output.bin", "artifacts/metal_validation/extract_k_values/indices.bin"]
    {
        assert!(dir.path().join(p).is_file(), "{p} missing");
    }
    let o = ingot(&["golden", "check", "artifacts"], dir.path());
    assert!(ok(&o), "{}", text(&o));
    assert!(text(&o).contains("16 passed, 0 failed"), "{}", text(&o));
}

fn read_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(root).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let dir = tempfile::tempdir().unwrap();
    for (out, seed) in [("a", "7"), ("b", "7"), ("c", "8")] {
        let o = ingot(&["golden", "gen", "--suite", "quick", "--seed", seed, "--out", out], dir.path());
        assert!(ok(&o), "{}", text(&o));
    }
    let (a, b, c) = (read_tree(&dir.path().join("a")), read_tree(&dir.path().join("b")), read_tree(&dir.path().join("c")));
    assert!(a.len() > 31 * 3, "quick suite wrote {} files", a.len());
    assert_eq!(a, b, "same seed, different bytes");
    let differing = a.iter().zip(&c).filter(|(x, y)| x.1 != y.1).count();
    assert!(differing > a.len() / 2, "seed 8 changed only {differing} of {} files", a.len());
}

#[test]
fn check_fails_on_a_corrupted_output_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let o = ingot(
        &["golden", "gen", "--op", "rms_norm", "--num_tokens", "2", "--hidden_size", "33", "--dtype", "bf16", "--out", "g"],
        dir.path(),
    );
    assert!(ok(&o), "{}", text(&o));
    let out = dir.path().join("g/default/rms_norm/output.bin");
    let mut bytes = std::fs::read(&out).unwrap();
    bytes[10] ^= 0x40; // flip an exponent bit of one bf16 element
    std::fs::write(&out, &bytes).unwrap();
    let o = ingot(&["golden", "check", "g", "--json"], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["summary"]["fail"], 1);
    assert_eq!(j["cases"][0]["status"], "fail");
    // A truncated tensor file is an error naming the file, not a panic.
    std::fs::write(&out, &bytes[..5]).unwrap();
    let o = ingot(&["golden", "check", "g"], dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("output.bin") && text(&o).contains("holds 5 bytes"), "{}", text(&o));
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["golden", "gen", "--op", "nope"], "unknown op 'nope'"),
        (&["golden", "gen", "--op", "gemm", "--vocab_size", "3"], "does not use --vocab_size"),
        (&["golden", "gen", "--op", "gemm", "--m", "-1"], "--m '-1' is not a non-negative integer"),
        (&["golden", "gen", "--op", "gemm", "--dtype", "q4_0"], "[gemm] dtype must be f32, f16 or bf16"),
        (&["golden", "gen", "--op", "topk_mask_logits", "--vocab_size", "10", "--k", "11"], "k must be in 1..=10"),
        (&["golden", "gen", "--op", "dequantize", "--dtype", "q4_k", "--cols", "100"], "not a multiple of the q4_k block size 256"),
        (&["golden", "gen", "--op", "gemm", "--m", "100000", "--n", "100000"], "the generator makes at most"),
        (&["golden", "gen", "--op", "rope", "--head_size", "64", "--rotary_dim", "65"], "rotary_dim must be even"),
        (&["golden", "gen", "--op", "quantize_kv", "--bits", "3"], "bits must be 4 or 8"),
        (&["golden", "gen", "--op", "gemm", "--case", "../x"], "case name"),
        (&["golden", "gen", "--suite", "nope"], "unknown suite 'nope'"),
        (&["golden", "check", "missing-dir"], "is not a directory"),
        (&["golden", "check", ".", "--backend", "gpu:cuda"], "not built into this ingot"),
    ];
    for (args, want) in cases {
        let o = ingot(args, dir.path());
        assert!(!ok(&o), "{args:?} succeeded");
        let t = text(&o);
        assert!(t.contains(want), "{args:?}: expected '{want}' in: {t}");
        assert!(!t.contains("panicked"), "{args:?} panicked: {t}");
    }
}

#[test]
fn ops_doc_is_current() {
    let o = ingot(&["golden", "ops-doc"], Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(ok(&o));
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/ops.md");
    let have = std::fs::read_to_string(&doc).unwrap_or_default();
    assert_eq!(
        have,
        String::from_utf8_lossy(&o.stdout),
        "docs/ops.md is stale: regenerate with `cargo run -p ingot-cli -- golden ops-doc > docs/ops.md`"
    );
}

#[test]
fn support_doc_is_current() {
    let o = ingot(&["golden", "support"], Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(ok(&o));
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/op-support.md");
    let have = std::fs::read_to_string(&doc).unwrap_or_default();
    assert_eq!(
        have,
        String::from_utf8_lossy(&o.stdout),
        "docs/op-support.md is stale: regenerate with `cargo run -p ingot-cli -- golden support > docs/op-support.md`"
    );
}
