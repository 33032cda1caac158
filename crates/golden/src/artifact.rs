//! The artifact format (docs/protocol.md): `DIR/CASE/OP/meta.json` plus one raw
//! little-endian file per tensor. Writing is deterministic: the same case gives the
//! same bytes.

use crate::tolerance::Tolerance;
use crate::{Error, Result};
use ingot_core::{DType, Op, Tensor, Tensors};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Name of the format, first key of every `meta.json`.
pub const FORMAT: &str = "ingot-golden";
/// Version of the format this code writes and reads.
pub const VERSION: u32 = 2;
/// Older versions this code still reads (version 1 lacks `path_tolerances`).
pub const READS: &[u32] = &[1, 2];

/// One tensor entry of `meta.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorEntry {
    pub name: String,
    pub file: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: usize,
    /// Outputs only: how a backend's result is compared with this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<Tolerance>,
    /// Outputs only: the tolerance for a backend that computes the op on another
    /// arithmetic path, by the path's name ([`ingot_core::Precision::name`]); it replaces
    /// `tolerance` there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub path_tolerances: BTreeMap<String, Tolerance>,
}

/// The whole `meta.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub format: String,
    pub version: u32,
    pub case: String,
    #[serde(flatten)]
    pub op: Op,
    pub seed: u64,
    /// The generator flags as given (strings), for the record.
    pub flags: BTreeMap<String, String>,
    pub inputs: Vec<TensorEntry>,
    pub outputs: Vec<TensorEntry>,
}

/// A generated case in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    pub name: String,
    pub seed: u64,
    pub op: Op,
    pub flags: BTreeMap<String, String>,
    pub inputs: Tensors,
    pub outputs: Tensors,
    pub tolerances: BTreeMap<String, Tolerance>,
    /// Per output, the tolerances of other arithmetic paths (see [`TensorEntry::path_tolerances`]).
    pub path_tolerances: BTreeMap<String, BTreeMap<String, Tolerance>>,
}

impl TensorEntry {
    /// How a backend on arithmetic path `path` is compared: that path's own tolerance if
    /// the entry has one, else `tolerance`.
    pub fn tolerance_for(&self, path: ingot_core::Precision) -> Option<&Tolerance> {
        self.path_tolerances.get(path.name()).or(self.tolerance.as_ref())
    }
}

impl Case {
    /// How output `name` of a backend on arithmetic path `path` is compared (see
    /// [`TensorEntry::tolerance_for`]).
    pub fn tolerance_for(&self, name: &str, path: ingot_core::Precision) -> Option<&Tolerance> {
        self.path_tolerances.get(name).and_then(|m| m.get(path.name())).or(self.tolerances.get(name))
    }
}

fn entry(name: &str, t: &Tensor, tol: Option<Tolerance>, path_tolerances: BTreeMap<String, Tolerance>) -> TensorEntry {
    TensorEntry {
        name: name.to_string(),
        file: format!("{name}.bin"),
        dtype: t.dtype,
        shape: t.shape.clone(),
        bytes: t.data.len(),
        tolerance: tol,
        path_tolerances,
    }
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io { path: path.to_path_buf(), source: e }
}

/// Check that a case name is one path component of safe characters.
pub fn check_case_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!("case name '{name}' must be 1-128 characters of letters, digits, '_', '-', '.'")))
    }
}

impl Case {
    /// The artifact directory of this case under `root`: `root/CASE/OP`.
    pub fn dir(&self, root: &Path) -> PathBuf {
        root.join(&self.name).join(self.op.name())
    }

    /// The `meta.json` of this case.
    pub fn meta(&self) -> Meta {
        let ins = self.op.inputs();
        let outs = self.op.outputs();
        Meta {
            format: FORMAT.to_string(),
            version: VERSION,
            case: self.name.clone(),
            op: self.op.clone(),
            seed: self.seed,
            flags: self.flags.clone(),
            inputs: ins.iter().map(|s| entry(s.name, &self.inputs[s.name], None, BTreeMap::new())).collect(),
            outputs: outs
                .iter()
                .map(|s| {
                    let paths = self.path_tolerances.get(s.name).cloned().unwrap_or_default();
                    entry(s.name, &self.outputs[s.name], self.tolerances.get(s.name).cloned(), paths)
                })
                .collect(),
        }
    }

    /// Write `meta.json` and the tensor files under `root/CASE/OP`; returns that directory.
    pub fn write(&self, root: &Path) -> Result<PathBuf> {
        check_case_name(&self.name)?;
        let dir = self.dir(root);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let meta = self.meta();
        let mut json = serde_json::to_string_pretty(&meta).map_err(|e| Error::Usage(e.to_string()))?;
        json.push('\n');
        let mp = dir.join("meta.json");
        std::fs::write(&mp, json).map_err(|e| io_err(&mp, e))?;
        for (e, t) in meta.inputs.iter().map(|e| (e, &self.inputs[&e.name])).chain(meta.outputs.iter().map(|e| (e, &self.outputs[&e.name])))
        {
            let p = dir.join(&e.file);
            std::fs::write(&p, &t.data).map_err(|err| io_err(&p, err))?;
        }
        Ok(dir)
    }
}

/// A case read back from disk.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub dir: PathBuf,
    pub meta: Meta,
    pub inputs: Tensors,
    pub outputs: Tensors,
}

fn load_tensor(dir: &Path, e: &TensorEntry) -> Result<Tensor> {
    if e.file.contains('/') || e.file.contains('\\') || e.file.starts_with('.') {
        return Err(Error::Artifact {
            path: dir.join("meta.json"),
            msg: format!("tensor file name '{}' must be a plain file name", e.file),
        });
    }
    let p = dir.join(&e.file);
    let data = std::fs::read(&p).map_err(|err| io_err(&p, err))?;
    if data.len() != e.bytes {
        return Err(Error::Artifact { path: p, msg: format!("holds {} bytes, meta.json says {}", data.len(), e.bytes) });
    }
    Tensor::from_bytes(e.dtype, e.shape.clone(), data).map_err(|err| Error::Artifact { path: p, msg: err.to_string() })
}

/// Read `dir/meta.json` and its tensors, checking the format, version, and that the
/// tensors are exactly the op's inputs and outputs.
pub fn load(dir: &Path) -> Result<Loaded> {
    let mp = dir.join("meta.json");
    let text = std::fs::read_to_string(&mp).map_err(|e| io_err(&mp, e))?;
    let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Artifact { path: mp.clone(), msg: e.to_string() })?;
    let format = raw.get("format").and_then(|v| v.as_str()).unwrap_or("");
    let version = raw.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    if format != FORMAT || !READS.iter().any(|&v| v as u64 == version) {
        return Err(Error::Artifact {
            path: mp,
            msg: format!("format '{format}' version {version}; this ingot reads '{FORMAT}' versions {READS:?}"),
        });
    }
    let meta: Meta = serde_json::from_value(raw).map_err(|e| Error::Artifact { path: mp.clone(), msg: e.to_string() })?;
    meta.op.validate().map_err(|e| Error::Artifact { path: mp.clone(), msg: e.to_string() })?;
    let check = |entries: &[TensorEntry], specs: Vec<ingot_core::TensorSpec>, what: &str| -> Result<Tensors> {
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let want: Vec<&str> = specs.iter().map(|s| s.name).collect();
        if names != want {
            return Err(Error::Artifact { path: mp.clone(), msg: format!("{what} are {names:?}, op {} has {want:?}", meta.op.name()) });
        }
        let mut out = Tensors::new();
        for (e, s) in entries.iter().zip(&specs) {
            let t = load_tensor(dir, e)?;
            ingot_core::check_tensor(meta.op.name(), s, &t).map_err(|err| Error::Artifact { path: mp.clone(), msg: err.to_string() })?;
            out.insert(e.name.clone(), t);
        }
        Ok(out)
    };
    let inputs = check(&meta.inputs, meta.op.inputs(), "inputs")?;
    let outputs = check(&meta.outputs, meta.op.outputs(), "outputs")?;
    if let Some(e) = meta.outputs.iter().find(|e| e.tolerance.is_none()) {
        return Err(Error::Artifact { path: mp, msg: format!("output '{}' has no tolerance", e.name) });
    }
    for e in &meta.outputs {
        if let Some(p) = e.path_tolerances.keys().find(|p| !ingot_core::Precision::ALL.iter().any(|k| k.name() == p.as_str())) {
            return Err(Error::Artifact {
                path: mp,
                msg: format!("output '{}': unknown arithmetic path '{p}' in path_tolerances", e.name),
            });
        }
    }
    Ok(Loaded { dir: dir.to_path_buf(), meta, inputs, outputs })
}

/// Every directory under `root` (itself included) that holds a `meta.json`, sorted.
pub fn find_cases(root: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| io_err(&d, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| io_err(&d, e))?;
            let ft = ent.file_type().map_err(|e| io_err(&ent.path(), e))?;
            if ft.is_dir() {
                stack.push(ent.path());
            } else if ent.file_name() == "meta.json" {
                found.push(d.clone());
            }
        }
    }
    found.sort();
    Ok(found)
}
