//! `golden check`: run every artifact under a directory on a backend and compare.

use crate::artifact::{find_cases, load};
use crate::tolerance::{compare, Verdict};
use crate::Result;
use ingot_core::Backend;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Outcome of one case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// The backend does not implement the op for this dtype.
    Skip,
    /// The artifact could not be read, or the backend returned an error.
    Error,
}

/// One output's comparison.
#[derive(Clone, Debug, Serialize)]
pub struct OutputReport {
    pub name: String,
    pub metric: String,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// One case's report.
#[derive(Clone, Debug, Serialize)]
pub struct CaseReport {
    pub dir: PathBuf,
    pub case: String,
    pub op: String,
    pub dtype: String,
    pub status: Status,
    pub message: String,
    /// The backend's arithmetic path for the op ([`ingot_core::Precision::name`]), which
    /// picks the tolerance.
    pub path: String,
    pub outputs: Vec<OutputReport>,
}

/// Check one artifact directory on `backend`.
pub fn check_case(dir: &Path, backend: &dyn Backend) -> CaseReport {
    let mut r = CaseReport {
        dir: dir.to_path_buf(),
        case: String::new(),
        op: String::new(),
        dtype: String::new(),
        status: Status::Error,
        message: String::new(),
        path: String::new(),
        outputs: vec![],
    };
    let loaded = match load(dir) {
        Ok(l) => l,
        Err(e) => {
            r.message = e.to_string();
            return r;
        }
    };
    let op = &loaded.meta.op;
    r.case = loaded.meta.case.clone();
    r.op = op.name().to_string();
    r.dtype = op.dtype().name().to_string();
    if !backend.supports(op) {
        r.status = Status::Skip;
        r.message = format!("{} does not implement {} for {}", backend.name(), op.name(), op.dtype());
        return r;
    }
    let path = backend.precision(op);
    r.path = path.name().to_string();
    // Sentinels around every output and the inputs compared afterwards, where the backend
    // can: a kernel that writes outside its output fails the case.
    let got = match backend.run_guarded(op, &loaded.inputs) {
        Ok(g) => g,
        Err(e) => {
            r.message = e.to_string();
            if matches!(e, ingot_core::Error::OutOfBounds { .. }) {
                r.status = Status::Fail;
            }
            return r;
        }
    };
    let mut pass = true;
    for e in &loaded.meta.outputs {
        let Some(tol) = e.tolerance_for(path) else { continue };
        let metric =
            serde_json::to_value(tol).ok().and_then(|v| v.get("metric").and_then(|m| m.as_str().map(String::from))).unwrap_or_default();
        let verdict = match got.get(&e.name) {
            Some(t) => compare(tol, &loaded.outputs[&e.name], t),
            None => Verdict { pass: false, worst: f64::INFINITY, detail: format!("backend returned no '{}'", e.name) },
        };
        if !verdict.pass {
            pass = false;
            if r.message.is_empty() {
                r.message = format!("{}: {}", e.name, verdict.detail);
            }
        }
        r.outputs.push(OutputReport { name: e.name.clone(), metric, verdict });
    }
    r.status = if pass { Status::Pass } else { Status::Fail };
    r
}

/// Check every artifact under `root`. Errors only when `root` cannot be walked or
/// holds no artifact; per-case problems are in the reports.
pub fn check_dir(root: &Path, backend: &dyn Backend) -> Result<Vec<CaseReport>> {
    let dirs = find_cases(root)?;
    if dirs.is_empty() {
        return Err(crate::Error::Usage(format!("no meta.json found under {}", root.display())));
    }
    Ok(dirs.iter().map(|d| check_case(d, backend)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{generate, Flags};
    use ingot_core::{Error, Op, OpKind, Tensors};

    /// A backend whose kernel writes outside its output (as the guarded CPU device reports it).
    struct Overrun;

    impl Backend for Overrun {
        fn name(&self) -> String {
            "overrun".into()
        }
        fn supports(&self, _: &Op) -> bool {
            true
        }
        fn run(&self, op: &Op, inputs: &Tensors) -> ingot_core::Result<Tensors> {
            ingot_cpu::CpuBackend.run(op, inputs)
        }
        fn guards_outputs(&self) -> bool {
            true
        }
        fn run_guarded(&self, op: &Op, _: &Tensors) -> ingot_core::Result<Tensors> {
            Err(Error::OutOfBounds { op: op.name(), msg: "output 'output', 4 bytes after its end".into() })
        }
    }

    #[test]
    fn a_write_outside_the_output_fails_the_case() {
        let dir = std::env::temp_dir().join(format!("ingot-golden-overrun-{}", std::process::id()));
        let case = generate(OpKind::Relu, &Flags::new(vec![]).unwrap(), 1, "overrun").unwrap();
        let at = case.write(&dir).unwrap();
        let r = check_case(&at, &Overrun);
        let ok = check_case(&at, &ingot_cpu::CpuDevice);
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(r.status, Status::Fail, "{}", r.message);
        assert!(r.message.contains("4 bytes after its end"), "{}", r.message);
        assert_eq!(ok.status, Status::Pass, "{}", ok.message);
    }
}
