//! Writing GGUF v3 (or v2) files: metadata of every type, tensors with their raw bytes,
//! data aligned to `general.alignment`. Tests build small synthetic models with it.

use crate::reader::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS};
use crate::value::{Array, Value};
use crate::{Error, GgmlType, Result};
use std::io::Write;
use std::path::Path;

struct PendingTensor {
    name: String,
    ggml_type: GgmlType,
    dims: Vec<u64>,
    data: Vec<u8>,
}

/// Builds a GGUF file in memory and writes it out.
///
/// ```
/// use ingot_gguf::{GgmlType, GgufFile, GgufWriter};
/// let mut w = GgufWriter::new();
/// w.set("general.architecture", "llama");
/// w.add_tensor("w", GgmlType::F32, &[2], vec![0u8; 8]).unwrap();
/// let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
/// assert_eq!(f.architecture().unwrap(), "llama");
/// ```
pub struct GgufWriter {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty v3 file with the default alignment (32).
    pub fn new() -> GgufWriter {
        GgufWriter { version: 3, metadata: Vec::new(), tensors: Vec::new() }
    }

    /// Writes this version (2 or 3; they share one layout for little-endian files).
    pub fn version(&mut self, version: u32) -> Result<&mut Self> {
        if !(2..=3).contains(&version) {
            return Err(Error::Writer(format!("cannot write GGUF version {version}; 2 and 3 are supported")));
        }
        self.version = version;
        Ok(self)
    }

    /// Aligns tensor data to `alignment` bytes: sets `general.alignment` (u32). Setting that key
    /// with [`GgufWriter::set`] does the same; its absence means 32.
    pub fn alignment(&mut self, alignment: u32) -> Result<&mut Self> {
        if !alignment.is_power_of_two() {
            return Err(Error::Writer(format!("alignment {alignment} is not a power of two")));
        }
        self.set(ALIGNMENT_KEY, alignment);
        Ok(self)
    }

    /// Sets a metadata key, replacing its value if it is already set (its place in the file stays).
    pub fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        let value = value.into();
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
        self
    }

    /// Adds a tensor: its ggml type, its dimensions in ggml order (`dims[0]` innermost) and
    /// exactly the bytes that type and shape take.
    pub fn add_tensor(&mut self, name: &str, ggml_type: GgmlType, dims: &[u64], data: impl Into<Vec<u8>>) -> Result<&mut Self> {
        let data = data.into();
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::Writer(format!("tensor '{name}' added twice")));
        }
        if dims.is_empty() || dims.len() > MAX_DIMS || dims.contains(&0) {
            return Err(Error::Writer(format!("tensor '{name}' has dims {dims:?}; 1 to {MAX_DIMS} dims, each at least 1")));
        }
        let numel = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        let bytes = numel.filter(|_| dims[0] % ggml_type.block_size() == 0).and_then(|n| ggml_type.bytes_for(n));
        if bytes != Some(data.len() as u64) {
            return Err(Error::Writer(format!(
                "tensor '{name}': {ggml_type} with dims {dims:?} takes {} bytes, {} given",
                bytes.map_or("an invalid number of".to_string(), |b| b.to_string()),
                data.len()
            )));
        }
        self.tensors.push(PendingTensor { name: name.to_string(), ggml_type, dims: dims.to_vec(), data });
        Ok(self)
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        for (key, value) in &self.metadata {
            if let Value::Array(a) = value {
                check_depth(key, a, 1)?;
            }
        }
        let alignment = match self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_integer() {
                Some(n) if n > 0 && n <= u32::MAX as i128 && (n as u64).is_power_of_two() => n as u64,
                _ => return Err(Error::Writer(format!("{ALIGNMENT_KEY} is {v} ({}), not a power of two", v.describe()))),
            },
        };
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        put_u32(&mut out, self.version);
        put_u64(&mut out, self.tensors.len() as u64);
        put_u64(&mut out, self.metadata.len() as u64);
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            put_u32(&mut out, value.value_type().id());
            put_value(&mut out, value);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            put_u32(&mut out, t.dims.len() as u32);
            for &d in &t.dims {
                put_u64(&mut out, d);
            }
            put_u32(&mut out, t.ggml_type.id());
            put_u64(&mut out, offset);
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).next_multiple_of(alignment);
        }
        // With no tensors there is no data section to align (and nothing to pad for).
        if !self.tensors.is_empty() {
            pad(&mut out, alignment);
        }
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            pad(&mut out, alignment);
        }
        Ok(out)
    }

    /// Writes the file to `w`.
    pub fn write_to(&self, mut w: impl Write) -> Result<()> {
        let bytes = self.to_bytes()?;
        w.write_all(&bytes).map_err(|error| Error::Io { file: "<writer>".to_string(), error })
    }

    /// Writes the file to `path`.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|error| Error::Io { file: path.display().to_string(), error })
    }
}

fn check_depth(key: &str, a: &Array, depth: usize) -> Result<()> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(Error::Writer(format!(
            "arrays in '{key}' are nested deeper than {MAX_ARRAY_DEPTH} levels; the reader would reject them"
        )));
    }
    if let Array::Array(inner) = a {
        for i in inner {
            check_depth(key, i, depth + 1)?;
        }
    }
    Ok(())
}

fn pad(out: &mut Vec<u8>, alignment: u64) {
    let len = (out.len() as u64).next_multiple_of(alignment) as usize;
    out.resize(len, 0);
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    put_u32(out, a.element_type().id());
    put_u64(out, a.len() as u64);
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => le!(v),
        Array::U16(v) => le!(v),
        Array::I16(v) => le!(v),
        Array::U32(v) => le!(v),
        Array::I32(v) => le!(v),
        Array::U64(v) => le!(v),
        Array::I64(v) => le!(v),
        Array::F32(v) => le!(v),
        Array::F64(v) => le!(v),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => v.iter().for_each(|s| put_str(out, s)),
        Array::Array(v) => v.iter().for_each(|inner| put_array(out, inner)),
    }
}
