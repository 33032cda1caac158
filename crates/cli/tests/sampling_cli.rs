//! `ingot run`'s sampling flags: a seed fixes the output, --stop ends it before the stop
//! string, top-k 1 is greedy, and out-of-range values are clear errors before any load.

mod common;
use common::{ingot, smollm2, text};

fn json(args: &[&str]) -> serde_json::Value {
    let o = ingot(args);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).expect("stdout is one JSON object")
}

#[test]
fn seed_fixes_the_output_and_top_k_1_is_greedy() {
    let Some(model) = smollm2() else { return };
    let m = model.to_str().unwrap();
    let p = "Once upon a time";
    let sampled = |seed: &str| {
        json(&[
            "run",
            "--model",
            m,
            "-n",
            "12",
            "--temperature",
            "1.0",
            "--top-p",
            "0.95",
            "--repeat-penalty",
            "1.1",
            "--seed",
            seed,
            "--json",
            p,
        ])["generated_ids"]
            .clone()
    };
    let a = sampled("42");
    assert_eq!(a, sampled("42"), "same seed, different output");
    let others: Vec<_> = ["1", "2", "3"].iter().map(|s| sampled(s)).collect();
    assert!(others.iter().any(|o| *o != a), "three other seeds all gave the seed-42 output");
    let greedy = json(&["run", "--model", m, "-n", "12", "--json", p])["generated_ids"].clone();
    let k1 = json(&["run", "--model", m, "-n", "12", "--temperature", "1.5", "--top-k", "1", "--seed", "9", "--json", p])["generated_ids"]
        .clone();
    assert_eq!(greedy, k1);
}

#[test]
fn stop_string_ends_the_text_before_it() {
    let Some(model) = smollm2() else { return };
    let m = model.to_str().unwrap();
    let full = json(&["run", "--model", m, "-n", "24", "--json", "The capital of France is"]);
    let full_text = full["text"].as_str().unwrap();
    let cut = full_text.find(',').or_else(|| full_text.find('.')).expect("a comma or full stop in the greedy text");
    let stop = &full_text[cut..cut + 1];
    let j = json(&["run", "--model", m, "-n", "24", "--stop", stop, "--stop", "never-seen", "--json", "The capital of France is"]);
    assert_eq!(j["text"].as_str().unwrap(), &full_text[..cut]);
    let o = ingot(&["run", "--model", m, "-n", "24", "--stop", stop, "The capital of France is"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim_end(), full_text[..cut].trim_end());
}

#[test]
fn out_of_range_flags_are_clear_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["--top-p", "0"], "--top-p must be in (0, 1]"),
        (&["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (&["--min-p", "-0.1"], "--min-p must be in [0, 1]"),
        (&["--repeat-penalty", "0"], "--repeat-penalty must be"),
        (&["--frequency-penalty", "nan"], "--frequency-penalty must be finite"),
        (&["--presence-penalty", "inf"], "--presence-penalty must be finite"),
        (&["--temperature", "nan"], "--temperature must be"),
        (&["--stop", ""], "--stop strings must not be empty"),
        (&["--max-tokens", "-1"], "must be at least 0, got -1"),
    ];
    for (flags, want) in cases {
        let mut args = vec!["run", "--model", "/nonexistent/x.gguf"];
        args.extend_from_slice(flags);
        args.push("hi");
        let o = ingot(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(text(&o).contains(want), "{args:?}: expected '{want}' in {}", text(&o));
    }
}
