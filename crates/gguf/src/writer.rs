//! Writing GGUF v3 (or v2) files: metadata of every type, tensors with their raw bytes,
//! data aligned to `general.alignment`. Tests build small synthetic models with it.
//!
//! Two ways to give the tensor data: [`GgufWriter::add_tensor`] holds each tensor's bytes in
//! memory until the whole file is written; [`GgufWriter::declare_tensor`] records only the
//! name, type and dims, and [`GgufWriter::stream_to`] then writes the header (every tensor
//! info and offset) at once and returns a [`GgufStream`] that takes the bytes of each
//! declared tensor in file order, so that memory stays bounded by what the caller holds.

use crate::reader::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS};
use crate::value::{Array, Value};
use crate::{Error, GgmlType, Result};
use std::io::Write;
use std::path::Path;

struct PendingTensor {
    name: String,
    ggml_type: GgmlType,
    dims: Vec<u64>,
    /// The bytes this type and shape take.
    nbytes: u64,
    /// `None` for a tensor declared without data (its bytes come through a [`GgufStream`]).
    data: Option<Vec<u8>>,
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
        let nbytes = self.check_tensor(name, ggml_type, dims)?;
        if nbytes != data.len() as u64 {
            return Err(Error::Writer(format!(
                "tensor '{name}': {ggml_type} with dims {dims:?} takes {nbytes} bytes, {} given",
                data.len()
            )));
        }
        self.tensors.push(PendingTensor { name: name.to_string(), ggml_type, dims: dims.to_vec(), nbytes, data: Some(data) });
        Ok(self)
    }

    /// Declares a tensor whose bytes are given later, through the [`GgufStream`] of
    /// [`GgufWriter::stream_to`] (the header holds its info and offset before any data is
    /// written). [`GgufWriter::to_bytes`] refuses a writer with declared tensors.
    pub fn declare_tensor(&mut self, name: &str, ggml_type: GgmlType, dims: &[u64]) -> Result<&mut Self> {
        let nbytes = self.check_tensor(name, ggml_type, dims)?;
        self.tensors.push(PendingTensor { name: name.to_string(), ggml_type, dims: dims.to_vec(), nbytes, data: None });
        Ok(self)
    }

    /// Checks a new tensor's name and dims; returns the bytes it takes.
    fn check_tensor(&self, name: &str, ggml_type: GgmlType, dims: &[u64]) -> Result<u64> {
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::Writer(format!("tensor '{name}' added twice")));
        }
        if dims.is_empty() || dims.len() > MAX_DIMS || dims.contains(&0) {
            return Err(Error::Writer(format!("tensor '{name}' has dims {dims:?}; 1 to {MAX_DIMS} dims, each at least 1")));
        }
        let numel = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        numel.filter(|_| dims[0] % ggml_type.block_size() == 0).and_then(|n| ggml_type.bytes_for(n)).ok_or_else(|| {
            Error::Writer(format!(
                "tensor '{name}': {ggml_type} with dims {dims:?} takes an invalid number of bytes (rows must be whole blocks of {})",
                ggml_type.block_size()
            ))
        })
    }

    /// The data alignment: `general.alignment` if set, else 32.
    fn data_alignment(&self) -> Result<u64> {
        match self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, v)) => match v.as_integer() {
                Some(n) if n > 0 && n <= u32::MAX as i128 && (n as u64).is_power_of_two() => Ok(n as u64),
                _ => Err(Error::Writer(format!("{ALIGNMENT_KEY} is {v} ({}), not a power of two", v.describe()))),
            },
        }
    }

    /// Everything before the tensor data: magic, counts, metadata, tensor infos with their
    /// offsets, and the padding to the first tensor; and the alignment.
    fn header(&self) -> Result<(Vec<u8>, u64)> {
        for (key, value) in &self.metadata {
            if let Value::Array(a) = value {
                check_depth(key, a, 1)?;
            }
        }
        let alignment = self.data_alignment()?;
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
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            put_u32(&mut out, t.dims.len() as u32);
            for &d in &t.dims {
                put_u64(&mut out, d);
            }
            put_u32(&mut out, t.ggml_type.id());
            put_u64(&mut out, offset);
            offset = offset
                .checked_add(t.nbytes)
                .map(|o| o.next_multiple_of(alignment))
                .ok_or_else(|| Error::Writer("tensor data exceeds 2^64 bytes".to_string()))?;
        }
        // With no tensors there is no data section to align (and nothing to pad for).
        if !self.tensors.is_empty() {
            pad(&mut out, alignment);
        }
        Ok((out, alignment))
    }

    /// The bytes of the whole data section after the header (the tensors' total, padded).
    pub fn data_size(&self) -> Result<u64> {
        let alignment = self.data_alignment()?;
        Ok(self.tensors.iter().map(|t| t.nbytes.next_multiple_of(alignment)).sum())
    }

    /// Writes the header (metadata, every tensor info and offset) to `w` and returns the
    /// stream that takes the declared tensors' bytes, in the order they were added. Tensors
    /// added with their data are written as the stream reaches them.
    pub fn stream_to<W: Write>(self, w: W) -> Result<GgufStream<W>> {
        self.stream_named(w, "<writer>".to_string())
    }

    /// [`GgufWriter::stream_to`] a new file at `path` (created or truncated), buffered.
    pub fn stream_file(self, path: impl AsRef<Path>) -> Result<GgufStream<std::io::BufWriter<std::fs::File>>> {
        let path = path.as_ref();
        let file = std::fs::File::create(path).map_err(|error| Error::Io { file: path.display().to_string(), error })?;
        self.stream_named(std::io::BufWriter::with_capacity(1 << 20, file), path.display().to_string())
    }

    fn stream_named<W: Write>(self, mut w: W, file: String) -> Result<GgufStream<W>> {
        let (header, alignment) = self.header()?;
        w.write_all(&header).map_err(|error| Error::Io { file: file.clone(), error })?;
        let tensors = self.tensors.into_iter().map(|t| (t.name, t.nbytes, t.data)).collect();
        let mut s = GgufStream { w, file, tensors, alignment, next: 0, filled: 0, written: header.len() as u64 };
        s.write_inline()?;
        Ok(s)
    }

    /// The whole file. Every tensor must have its data ([`GgufWriter::add_tensor`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        if let Some(t) = self.tensors.iter().find(|t| t.data.is_none()) {
            return Err(Error::Writer(format!("tensor '{}' was declared without data; write the file with stream_to", t.name)));
        }
        let (mut out, alignment) = self.header()?;
        for t in &self.tensors {
            out.extend_from_slice(t.data.as_deref().unwrap_or_default());
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

/// The data section of a GGUF file being written: takes the bytes of each declared tensor in
/// file order (in one piece or several), pads each to the alignment, and refuses more or fewer
/// bytes than a tensor takes. Made by [`GgufWriter::stream_to`]; [`GgufStream::finish`] checks
/// that every tensor got its bytes.
pub struct GgufStream<W: Write> {
    w: W,
    file: String,
    /// Name, byte count and inline data (tensors added with [`GgufWriter::add_tensor`]).
    tensors: Vec<(String, u64, Option<Vec<u8>>)>,
    alignment: u64,
    /// The tensor whose bytes come next.
    next: usize,
    /// Bytes of that tensor written so far.
    filled: u64,
    /// Bytes of the file written so far.
    written: u64,
}

impl<W: Write> GgufStream<W> {
    /// The name and byte count of the tensor whose bytes come next; `None` when all are written.
    pub fn next_tensor(&self) -> Option<(&str, u64)> {
        self.tensors.get(self.next).map(|(n, b, _)| (n.as_str(), *b))
    }

    /// Bytes of the file written so far (header included).
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Tensors completely written so far.
    pub fn tensors_done(&self) -> usize {
        self.next
    }

    /// Writes `bytes` of the current tensor (any part of it; the next call continues it). A
    /// tensor that gets its last byte is padded and the stream moves on to the next one.
    pub fn write_data(&mut self, bytes: &[u8]) -> Result<()> {
        let Some((name, nbytes, _)) = self.tensors.get(self.next) else {
            return Err(Error::Writer(format!("{} more bytes given after the last tensor", bytes.len())));
        };
        let nbytes = *nbytes;
        let left = nbytes - self.filled;
        if bytes.len() as u64 > left {
            return Err(Error::Writer(format!(
                "tensor '{name}' takes {nbytes} bytes; {} written and {} more given",
                self.filled,
                bytes.len()
            )));
        }
        self.put(bytes)?;
        self.filled += bytes.len() as u64;
        if self.filled == nbytes {
            self.end_tensor()?;
            self.write_inline()?;
        }
        Ok(())
    }

    /// Writes the whole of tensor `name`, which must be the next one, with exactly its bytes.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        match self.tensors.get(self.next) {
            None => return Err(Error::Writer(format!("tensor '{name}' given after the last tensor"))),
            Some((next, nbytes, _)) => {
                if next != name {
                    return Err(Error::Writer(format!("tensor '{name}' given where '{next}' comes next")));
                }
                if self.filled != 0 || bytes.len() as u64 != *nbytes {
                    return Err(Error::Writer(format!(
                        "tensor '{name}' takes {nbytes} bytes, {} given ({} written before)",
                        bytes.len(),
                        self.filled
                    )));
                }
            }
        }
        self.write_data(bytes)
    }

    /// Checks that every tensor got all its bytes, flushes, and returns the writer.
    pub fn finish(mut self) -> Result<W> {
        if let Some((name, nbytes, _)) = self.tensors.get(self.next) {
            return Err(Error::Writer(format!(
                "tensor '{name}' got {} of its {nbytes} bytes ({} of {} tensors complete)",
                self.filled,
                self.next,
                self.tensors.len()
            )));
        }
        let file = self.file.clone();
        self.w.flush().map_err(|error| Error::Io { file, error })?;
        Ok(self.w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.w.write_all(bytes).map_err(|error| Error::Io { file: self.file.clone(), error })?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Pads the finished tensor to the alignment and moves to the next.
    fn end_tensor(&mut self) -> Result<()> {
        let padding = self.written.next_multiple_of(self.alignment) - self.written;
        self.put(&vec![0u8; padding as usize])?;
        self.next += 1;
        self.filled = 0;
        Ok(())
    }

    /// Writes the tensors added with their data that come next.
    fn write_inline(&mut self) -> Result<()> {
        while let Some(data) = self.tensors.get_mut(self.next).and_then(|t| t.2.take()) {
            self.put(&data)?;
            self.end_tensor()?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgufFile;

    fn writer(declare: bool) -> GgufWriter {
        let mut w = GgufWriter::new();
        w.set("general.architecture", "llama").alignment(64).unwrap();
        w.add_tensor("a", GgmlType::F32, &[3], vec![1u8; 12]).unwrap();
        if declare {
            w.declare_tensor("b", GgmlType::Q8_0, &[64, 2]).unwrap();
        } else {
            w.add_tensor("b", GgmlType::Q8_0, &[64, 2], (0..136).map(|i| i as u8).collect::<Vec<u8>>()).unwrap();
        }
        w.add_tensor("c", GgmlType::F16, &[5], vec![7u8; 10]).unwrap();
        w.declare_tensor("d", GgmlType::F32, &[2]).unwrap();
        w
    }

    #[test]
    fn stream_gives_the_same_bytes_as_the_in_memory_writer() {
        let mut whole = writer(false);
        // `d` is declared in both: give the in-memory writer its data by re-adding the list.
        whole.tensors.pop();
        whole.add_tensor("d", GgmlType::F32, &[2], vec![9u8; 8]).unwrap();
        let expected = whole.to_bytes().unwrap();

        let w = writer(true);
        assert!(w.to_bytes().unwrap_err().to_string().contains("declared without data"));
        assert_eq!(w.data_size().unwrap(), 64 + 192 + 64 + 64);
        let mut s = w.stream_to(Vec::new()).unwrap();
        assert_eq!(s.next_tensor(), Some(("b", 136)));
        let b: Vec<u8> = (0..136).map(|i| i as u8).collect();
        s.write_data(&b[..100]).unwrap();
        assert_eq!(s.tensors_done(), 1);
        s.write_data(&b[100..]).unwrap();
        // `c` had its data: written as the stream passed it.
        assert_eq!(s.next_tensor(), Some(("d", 8)));
        assert!(s.write_tensor("c", &[0; 8]).unwrap_err().to_string().contains("'d' comes next"));
        assert!(s.write_data(&[9u8; 9]).unwrap_err().to_string().contains("takes 8 bytes"));
        s.write_tensor("d", &[9u8; 8]).unwrap();
        assert_eq!(s.bytes_written(), expected.len() as u64);
        let out = s.finish().unwrap();
        assert_eq!(out, expected);
        let f = GgufFile::from_bytes(out).unwrap();
        assert_eq!(f.tensor_data("b").unwrap(), &b[..]);
        assert_eq!(f.tensor_data("d").unwrap(), &[9u8; 8]);
    }

    #[test]
    fn stream_refuses_a_missing_tensor_and_extra_bytes() {
        let mut s = writer(true).stream_to(Vec::new()).unwrap();
        s.write_data(&[0u8; 136]).unwrap();
        let e = s.finish().unwrap_err().to_string();
        assert!(e.contains("tensor 'd' got 0 of its 8 bytes (3 of 4 tensors complete)"), "{e}");

        let mut s = writer(true).stream_to(Vec::new()).unwrap();
        s.write_data(&[0u8; 136]).unwrap();
        s.write_data(&[0u8; 8]).unwrap();
        assert_eq!(s.next_tensor(), None);
        assert!(s.write_data(&[0u8; 1]).unwrap_err().to_string().contains("after the last tensor"));
        s.finish().unwrap();
    }
}
