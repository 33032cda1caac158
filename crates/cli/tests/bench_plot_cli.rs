//! End-to-end tests of `ingot bench --plot FILE.svg` on the real SmolLM2 file (small runs:
//! -p 16 -n 4 -r 1): the SVG is well-formed XML, each test has a bar (a `<rect>` of positive
//! height) with its mean tokens/s, as the same run's JSON gives it, printed above it; with
//! `--vs-llama-cpp` (llama.cpp's side stubbed by a fake `python3` on PATH) the llama.cpp
//! bar and the ratio show too. Bad plot paths give a one-line error naming the path.

mod common;

use common::{ingot, smollm2, text};
use serde_json::Value as Json;
use std::path::Path;
use std::process::{Command, Output};

const SMALL: [&str; 8] = ["-p", "16", "-n", "4", "-r", "1", "--backend", "cpu"];

fn bench(model: &Path, extra: &[&str], path_env: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ingot"));
    cmd.arg("bench").arg("--model").arg(model).args(SMALL).args(extra);
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    cmd.output().expect("run ingot")
}

fn mean(v: &Json) -> f64 {
    let v: Vec<f64> = v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    v.iter().sum::<f64>() / v.len() as f64
}

struct Bar {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

struct Label {
    x: f64,
    y: f64,
    text: String,
}

fn num(n: &roxmltree::Node, attr: &str) -> f64 {
    n.attribute(attr).unwrap_or_else(|| panic!("<{}> without {attr}", n.tag_name().name())).parse().unwrap()
}

/// The SVG's `<rect>`s and `<text>`s (text trimmed), after checking it parses as XML.
fn parse(svg: &str) -> (Vec<Bar>, Vec<Label>) {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("the plot is not well-formed XML: {e}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let mut rects = Vec::new();
    let mut texts = Vec::new();
    for n in doc.descendants() {
        match n.tag_name().name() {
            "rect" => rects.push(Bar { x: num(&n, "x"), y: num(&n, "y"), w: num(&n, "width"), h: num(&n, "height") }),
            "text" => texts.push(Label { x: num(&n, "x"), y: num(&n, "y"), text: n.text().unwrap_or("").trim().to_string() }),
            _ => {}
        }
    }
    (rects, texts)
}

/// The bar whose printed value is `want` (two decimals): a label reading `want`, centred
/// over a rect of positive height whose top is just below it. Returns the rect's index.
fn bar_for(rects: &[Bar], texts: &[Label], want: f64, what: &str) -> usize {
    for t in texts {
        let Ok(v) = t.text.parse::<f64>() else { continue };
        if (v - want).abs() > 0.0051 {
            continue;
        }
        let hit = rects.iter().position(|r| r.h > 0.0 && r.x <= t.x && t.x <= r.x + r.w && t.y <= r.y && r.y - t.y < 60.0);
        if let Some(i) = hit {
            return i;
        }
    }
    let labels: Vec<&str> = texts.iter().map(|t| t.text.as_str()).collect();
    panic!("no bar labelled {want:.2} for {what}; texts: {labels:?}");
}

#[test]
fn bench_plot_shows_each_test_with_the_json_numbers() {
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("bench.svg");
    let o = bench(&model, &["--json", "--plot", plot.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", text(&o));
    let j: Json = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let (rects, texts) = parse(&std::fs::read_to_string(&plot).unwrap());
    let has = |s: &str| texts.iter().any(|t| t.text.contains(s));
    let file = model.file_name().unwrap().to_str().unwrap();
    let backend = j["backend"].as_str().unwrap();
    for s in [file, "tokens/s", &format!("ingot ({backend})"), &format!("backend {backend}")] {
        assert!(has(s), "{s:?} missing from the plot's text");
    }
    let rows = j["rows"].as_array().unwrap();
    let tests: Vec<&str> = rows.iter().map(|r| r["test"].as_str().unwrap()).collect();
    assert_eq!(tests, ["pp16", "tg4"]);
    let mut bars = Vec::new();
    for r in rows {
        let test = r["test"].as_str().unwrap();
        assert!(texts.iter().any(|t| t.text == test), "no caption {test}");
        bars.push(bar_for(&rects, &texts, mean(&r["ingot_tps"]), test));
    }
    bars.dedup();
    assert_eq!(bars.len(), rows.len(), "two tests share one bar");
    assert!(!has("llama.cpp"), "llama.cpp shown though it was not measured");
}

#[cfg(unix)]
#[test]
fn bench_plot_puts_llama_cpp_beside_ingot_with_the_ratio() {
    use std::os::unix::fs::PermissionsExt;
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    // llama.cpp's side: a fake python3 that prints fixed rates as the real script would.
    let stub = dir.path().join("python3");
    std::fs::write(&stub, "#!/bin/sh\necho '{\"pp_tps\": 201.5, \"tg_tps\": 48.25}'\n").unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path_env = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    let plot = dir.path().join("vs.svg");
    let o = bench(&model, &["--json", "--vs-llama-cpp", "--plot", plot.to_str().unwrap()], Some(&path_env));
    assert!(o.status.success(), "{}", text(&o));
    let j: Json = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let (rects, texts) = parse(&std::fs::read_to_string(&plot).unwrap());
    for r in j["rows"].as_array().unwrap() {
        let test = r["test"].as_str().unwrap();
        let (ingot, llama) = (mean(&r["ingot_tps"]), mean(&r["llama_cpp_tps"]));
        let a = bar_for(&rects, &texts, ingot, test);
        let b = bar_for(&rects, &texts, llama, &format!("{test} llama.cpp"));
        assert_ne!(a, b);
        // Side by side, at the same baseline, heights in proportion to the rates.
        let (ra, rb) = (&rects[a], &rects[b]);
        assert!(ra.x + ra.w <= rb.x, "{test}: ingot's bar is not left of llama.cpp's");
        assert!((ra.y + ra.h - rb.y - rb.h).abs() < 1.5, "{test}: bars on different baselines");
        let heights = ra.h / rb.h;
        assert!((heights / (ingot / llama) - 1.0).abs() < 0.05, "{test}: bar heights {heights} for a ratio {}", ingot / llama);
        // The caption gives the ratio: "<test>: ingot R× llama.cpp".
        let caption = texts.iter().find(|t| t.text.starts_with(&format!("{test}:"))).unwrap_or_else(|| panic!("no caption for {test}"));
        let shown: f64 = caption.text.split_whitespace().find_map(|w| w.strip_suffix('×')).and_then(|w| w.parse().ok()).unwrap();
        assert!((shown - ingot / llama).abs() < 0.0051, "{}: ratio {}", caption.text, ingot / llama);
        assert!(caption.text.contains("llama.cpp"), "{}", caption.text);
    }
}

#[test]
fn bench_plot_bad_paths_fail_with_the_path_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("x.svg");
    let as_dir = dir.path().to_path_buf();
    // The path is checked before the model is loaded: no model is needed for these.
    for p in [&missing, &as_dir] {
        let o = ingot(&["bench", "--model", "/nonexistent/model.gguf", "--plot", p.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(err.contains(p.to_str().unwrap()), "error does not name {}: {err}", p.display());
        assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!missing.exists());
}

#[test]
fn bench_plot_is_not_left_behind_when_the_bench_fails() {
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("bench.svg");
    // A prompt longer than the model's context fails after the plot file was created.
    let o = ingot(&["bench", "--model", model.to_str().unwrap(), "-p", "1000000", "-n", "0", "--plot", plot.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("context"), "{}", text(&o));
    assert!(!plot.exists(), "an empty plot file was left behind");
}
