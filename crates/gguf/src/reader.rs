//! Reading GGUF v2 and v3 files (little-endian), zero copy.
//!
//! The file is mapped (or given as a byte buffer) and parsed once: the header, the metadata
//! and the tensor infos are copied into owned values, the tensor data stays in the map and
//! is handed out as `&[u8]` slices of it. The input is never trusted: every count is checked
//! against the bytes that remain before anything is allocated for it, all offset and size
//! arithmetic is checked, and every tensor's data range is checked against the file size
//! when the file opens, so later accesses cannot go out of bounds; no two tensors' data
//! ranges may overlap.

use crate::value::{Array, Value, ValueType};
use crate::{Error, GgmlType, Result};
use ingot_core::DType;
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that sets the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// The deepest nesting of arrays of arrays the reader accepts (a plain array is depth 1).
pub const MAX_ARRAY_DEPTH: usize = 8;
/// The most dimensions a tensor may have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// The name used in errors for a file read from memory.
pub const MEMORY_NAME: &str = "<memory>";

/// The fewest bytes a metadata entry takes: key length, value type, a one-byte value.
const MIN_KV_SIZE: u64 = 8 + 4 + 1;
/// The fewest bytes a tensor info takes: name length, n_dims, one dim, type, offset.
const MIN_TENSOR_INFO_SIZE: u64 = 8 + 4 + 8 + 4 + 8;

/// One tensor's entry in the file's tensor info table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name, unique in the file.
    pub name: String,
    /// Its element type.
    pub ggml_type: GgmlType,
    /// Dimensions in ggml order, as stored: `dims[0]` is the contiguous (innermost) one.
    /// One to four of them, each at least 1.
    pub dims: Vec<u64>,
    /// Offset of the data from the start of the data section, as stored (a multiple of the alignment).
    pub offset: u64,
    /// Offset of the data from the start of the file.
    pub file_offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl TensorInfo {
    /// The number of elements (the product of the dimensions).
    pub fn numel(&self) -> u64 {
        // The reader checked that the product fits; saturate for hand-built infos.
        self.dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }

    /// The dimensions outermost first (row-major order, as a `Tensor` shape is written).
    pub fn shape_row_major(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }

    /// The Ingot dtype of the tensor, if Ingot has one for its ggml type.
    pub fn dtype(&self) -> Option<DType> {
        self.ggml_type.to_dtype()
    }
}

/// Where the bytes of a file live.
enum Storage {
    Mmap(Mmap),
    Bytes(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Bytes(b) => b,
        }
    }
}

/// An open GGUF file: its metadata and tensor infos parsed, its tensor data mapped.
pub struct GgufFile {
    storage: Storage,
    name: String,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and memory-maps a GGUF file, and parses and checks its header.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let io = |error: std::io::Error| Error::Io { file: name.clone(), error };
        let file = File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
        }
        let storage = if meta.len() == 0 {
            // An empty mapping is an error on some systems; the parser reports the empty file.
            Storage::Bytes(Vec::new())
        } else {
            // SAFETY: the map is read-only and lives as long as `GgufFile`, which hands out
            // slices borrowed from it. As with every file mapping, another process truncating
            // or rewriting the file while it is mapped is outside what Rust can guard against;
            // model files are treated as immutable while open.
            Storage::Mmap(unsafe { Mmap::map(&file) }.map_err(io)?)
        };
        Self::parse(name, storage)
    }

    /// Parses a GGUF file held in memory; errors name it `<memory>`. Same parser as [`GgufFile::open`].
    /// The buffer is only byte-aligned, so tensor slices carry no alignment guarantee.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<GgufFile> {
        Self::parse(MEMORY_NAME.to_string(), Storage::Bytes(bytes.into()))
    }

    fn parse(name: String, storage: Storage) -> Result<GgufFile> {
        let header = parse_header(storage.bytes(), &name)?;
        let key_index = header.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let tensor_index = header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(GgufFile {
            storage,
            name,
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            metadata: header.metadata,
            key_index,
            tensors: header.tensors,
            tensor_index,
        })
    }

    /// The path the file was opened from, or `<memory>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The GGUF version: 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The tensor data alignment (`general.alignment`, 32 when absent).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Where the data section starts, from the start of the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The size of the file in bytes.
    pub fn file_size(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// Every metadata entry, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value of a metadata key, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The value of a metadata key, or [`Error::MissingKey`].
    pub fn value(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| Error::MissingKey { file: self.name.clone(), key: key.to_string() })
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &Value) -> Error {
        Error::WrongType { file: self.name.clone(), key: key.to_string(), expected, found: found.describe() }
    }

    fn get_int<T: TryFrom<i128>>(&self, key: &str, target: &'static str) -> Result<T> {
        let v = self.value(key)?;
        let n = v.as_integer().ok_or_else(|| self.wrong_type(key, "an integer", v))?;
        T::try_from(n).map_err(|_| Error::OutOfRange { file: self.name.clone(), key: key.to_string(), value: n.to_string(), target })
    }

    /// An integer value of any width that fits in a `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.get_int(key, "u32")
    }

    /// An integer value of any width that fits in a `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get_int(key, "u64")
    }

    /// An integer value of any width that fits in a `usize`.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        self.get_int(key, "usize")
    }

    /// An integer value of any width that fits in an `i32`.
    pub fn get_i32(&self, key: &str) -> Result<i32> {
        self.get_int(key, "i32")
    }

    /// An integer value of any width that fits in an `i64`.
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.get_int(key, "i64")
    }

    /// An f32 value, or an f64 one that is within f32 range (rounded to nearest).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match *self.value(key)? {
            Value::F32(x) => Ok(x),
            Value::F64(x) if !x.is_finite() || x.abs() <= f32::MAX as f64 => Ok(x as f32),
            Value::F64(x) => Err(Error::OutOfRange { file: self.name.clone(), key: key.to_string(), value: x.to_string(), target: "f32" }),
            ref v => Err(self.wrong_type(key, "a float", v)),
        }
    }

    /// An f32 or f64 value.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.value(key)?;
        v.as_float().ok_or_else(|| self.wrong_type(key, "a float", v))
    }

    /// A bool value.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match *self.value(key)? {
            Value::Bool(b) => Ok(b),
            ref v => Err(self.wrong_type(key, "a bool", v)),
        }
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.value(key)?;
        v.as_str().ok_or_else(|| self.wrong_type(key, "a string", v))
    }

    /// An array value of any element type.
    pub fn get_array(&self, key: &str) -> Result<&Array> {
        let v = self.value(key)?;
        v.as_array().ok_or_else(|| self.wrong_type(key, "an array", v))
    }

    /// An array of strings (`tokenizer.ggml.tokens`, `tokenizer.ggml.merges`).
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        match self.value(key)? {
            Value::Array(Array::String(v)) => Ok(v),
            v => Err(self.wrong_type(key, "an array of string", v)),
        }
    }

    /// An array of f32 (`tokenizer.ggml.scores`).
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32]> {
        match self.value(key)? {
            Value::Array(Array::F32(v)) => Ok(v),
            v => Err(self.wrong_type(key, "an array of f32", v)),
        }
    }

    /// An array of i32 (`tokenizer.ggml.token_type`).
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32]> {
        match self.value(key)? {
            Value::Array(Array::I32(v)) => Ok(v),
            v => Err(self.wrong_type(key, "an array of i32", v)),
        }
    }

    /// An array of integers of any width whose every element fits in a `u32`
    /// (per-layer values such as a head count that varies by layer).
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>> {
        let v = self.value(key)?;
        let a = match v {
            Value::Array(a) if a.element_type().is_integer() => a,
            _ => return Err(self.wrong_type(key, "an array of integers", v)),
        };
        a.iter()
            .map(|e| {
                let n = e.as_integer().unwrap_or(-1);
                u32::try_from(n).map_err(|_| Error::OutOfRange {
                    file: self.name.clone(),
                    key: key.to_string(),
                    value: n.to_string(),
                    target: "u32",
                })
            })
            .collect()
    }

    /// `general.architecture` (`llama`, `qwen2`, `gemma3`, …).
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// Every tensor info, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor info of this name, if present.
    pub fn find_tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor info of this name, or [`Error::MissingTensor`].
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.find_tensor(name).ok_or_else(|| Error::MissingTensor { file: self.name.clone(), name: name.to_string() })
    }

    /// The tensor's data, borrowed from the map.
    pub fn tensor_data(&self, name: &str) -> Result<&[u8]> {
        let t = self.tensor(name)?;
        self.data_of(t)
    }

    /// The data of a tensor info of this file, borrowed from the map. An info whose range
    /// lies outside the file (one not from this file) is an error.
    pub fn data_of(&self, t: &TensorInfo) -> Result<&[u8]> {
        let range = usize::try_from(t.file_offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(usize::try_from(t.size).ok()?)?))
            .and_then(|r| self.bytes().get(r));
        range.ok_or_else(|| Error::Format {
            file: self.name.clone(),
            offset: t.file_offset,
            reason: format!("tensor '{}' data ({} bytes) lies outside the file", t.name, t.size),
        })
    }

    /// Every tensor with its data, in file order.
    pub fn tensors_with_data(&self) -> impl Iterator<Item = (&TensorInfo, &[u8])> {
        // Ranges were checked when the file opened, so `data_of` cannot fail here.
        self.tensors.iter().filter_map(move |t| Some((t, self.data_of(t).ok()?)))
    }

    /// The tensor's Ingot dtype, or [`Error::UnsupportedType`] when its ggml type has none.
    pub fn tensor_dtype(&self, name: &str) -> Result<DType> {
        let t = self.tensor(name)?;
        t.dtype().ok_or_else(|| Error::UnsupportedType { file: self.name.clone(), name: t.name.clone(), ggml_type: t.ggml_type })
    }
}

/// What the header parse produces.
struct Header {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> Cursor<'a> {
    fn error(&self, offset: usize, reason: impl Into<String>) -> Error {
        Error::Format { file: self.file.to_string(), offset: offset as u64, reason: reason.into() }
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let left = self.remaining();
        if n > left {
            return Err(self.error(self.pos, format!("unexpected end of file reading {}: needs {n} bytes, {left} left", what())));
        }
        // n <= remaining, so it fits in usize and the slice is in bounds.
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let b = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let at = self.pos;
        let len = self.u64(&|| format!("the length of {}", what()))?;
        if len > self.remaining() {
            return Err(self.error(at, format!("{} has length {len}, but only {} bytes are left in the file", what(), self.remaining())));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.error(at + 8 + e.utf8_error().valid_up_to(), format!("{} is not valid UTF-8", what())))
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in what is left.
    fn check_count(&self, at: usize, count: u64, min_size: u64, what: &str) -> Result<()> {
        let left = self.remaining();
        if count > left / min_size {
            return Err(
                self.error(at, format!("{what} count {count} cannot fit: each takes at least {min_size} bytes and {left} are left"))
            );
        }
        Ok(())
    }

    fn value(&mut self, ty: ValueType, key: &str) -> Result<Value> {
        let what = || format!("the value of '{key}'");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(&what)?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(&what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(&what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            ValueType::Bool => {
                let at = self.pos;
                let b = self.array::<1>(&what)?[0];
                Value::Bool(self.bool_byte(at, b, key)?)
            }
            ValueType::String => Value::String(self.string(&what)?),
            ValueType::Array => Value::Array(self.array_value(key, 1)?),
        })
    }

    fn bool_byte(&self, at: usize, b: u8, key: &str) -> Result<bool> {
        match b {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.error(at, format!("bool in '{key}' has byte value {b}, expected 0 or 1"))),
        }
    }

    /// Reads `count` fixed-size elements in one bounds-checked slice.
    fn fixed<const N: usize, T>(&mut self, count: u64, key: &str, conv: fn([u8; N]) -> T) -> Result<Vec<T>> {
        let bytes = self.take(count * N as u64, &|| format!("the elements of array '{key}'"))?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                conv(a)
            })
            .collect())
    }

    fn array_value(&mut self, key: &str, depth: usize) -> Result<Array> {
        let at = self.pos;
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.error(at, format!("arrays in '{key}' are nested deeper than {MAX_ARRAY_DEPTH} levels")));
        }
        let id = self.u32(&|| format!("the element type of array '{key}'"))?;
        let ty = ValueType::from_id(id).ok_or_else(|| self.error(at, format!("array '{key}' has unknown element type id {id}")))?;
        let count_at = self.pos;
        let count = self.u64(&|| format!("the length of array '{key}'"))?;
        // Before anything is allocated: the elements must fit in the rest of the file.
        self.check_count(count_at, count, ty.min_encoded_size(), &format!("array '{key}' element"))?;
        Ok(match ty {
            ValueType::U8 => Array::U8(self.fixed::<1, _>(count, key, |a| a[0])?),
            ValueType::I8 => Array::I8(self.fixed(count, key, i8::from_le_bytes)?),
            ValueType::U16 => Array::U16(self.fixed(count, key, u16::from_le_bytes)?),
            ValueType::I16 => Array::I16(self.fixed(count, key, i16::from_le_bytes)?),
            ValueType::U32 => Array::U32(self.fixed(count, key, u32::from_le_bytes)?),
            ValueType::I32 => Array::I32(self.fixed(count, key, i32::from_le_bytes)?),
            ValueType::U64 => Array::U64(self.fixed(count, key, u64::from_le_bytes)?),
            ValueType::I64 => Array::I64(self.fixed(count, key, i64::from_le_bytes)?),
            ValueType::F32 => Array::F32(self.fixed(count, key, f32::from_le_bytes)?),
            ValueType::F64 => Array::F64(self.fixed(count, key, f64::from_le_bytes)?),
            ValueType::Bool => {
                let start = self.pos;
                let bytes = self.take(count, &|| format!("the elements of array '{key}'"))?;
                let mut v = Vec::with_capacity(bytes.len());
                for (i, &b) in bytes.iter().enumerate() {
                    v.push(self.bool_byte(start + i, b, key)?);
                }
                Array::Bool(v)
            }
            ValueType::String => {
                // count <= remaining / 8, so this capacity is bounded by the file size.
                let mut v = Vec::with_capacity(count as usize);
                for i in 0..count {
                    v.push(self.string(&|| format!("element {i} of array '{key}'"))?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    v.push(self.array_value(key, depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }
}

fn parse_header(buf: &[u8], file: &str) -> Result<Header> {
    let mut c = Cursor { buf, pos: 0, file };
    let magic: [u8; 4] = c.array(&|| "the GGUF magic".to_string())?;
    if magic != GGUF_MAGIC {
        return Err(c.error(0, format!("not a GGUF file: it starts with \"{}\", not \"GGUF\"", magic.escape_ascii())));
    }
    let version = c.u32(&|| "the GGUF version".to_string())?;
    match version {
        2 | 3 => {}
        v if (1..=3).contains(&v.swap_bytes()) => {
            return Err(c.error(4, format!("big-endian GGUF file (version {}); Ingot reads little-endian files only", v.swap_bytes())));
        }
        v => return Err(Error::UnsupportedVersion { file: file.to_string(), version: v }),
    }
    let tensor_count_at = c.pos;
    let tensor_count = c.u64(&|| "the tensor count".to_string())?;
    let kv_count_at = c.pos;
    let kv_count = c.u64(&|| "the metadata entry count".to_string())?;
    c.check_count(kv_count_at, kv_count, MIN_KV_SIZE, "metadata entry")?;
    c.check_count(tensor_count_at, tensor_count, MIN_TENSOR_INFO_SIZE, "tensor")?;
    // Both tables must fit together too (each check alone allows either to take all).
    let min_tables = kv_count * MIN_KV_SIZE + tensor_count * MIN_TENSOR_INFO_SIZE;
    if min_tables > c.remaining() {
        return Err(c.error(
            tensor_count_at,
            format!("{tensor_count} tensors and {kv_count} metadata entries cannot fit in the {} bytes left", c.remaining()),
        ));
    }

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(kv_count as usize);
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(kv_count as usize);
    let mut alignment = DEFAULT_ALIGNMENT;
    for i in 0..kv_count {
        let key_at = c.pos;
        let key = c.string(&|| format!("the key of metadata entry {i}"))?;
        if let Some(&prev) = seen.get(&key) {
            return Err(c.error(key_at, format!("metadata key '{key}' appears twice (entries {prev} and {i})")));
        }
        let type_at = c.pos;
        let id = c.u32(&|| format!("the value type of '{key}'"))?;
        let ty = ValueType::from_id(id).ok_or_else(|| c.error(type_at, format!("metadata '{key}' has unknown value type id {id}")))?;
        let value_at = c.pos;
        let value = c.value(ty, &key)?;
        if key == ALIGNMENT_KEY {
            alignment = match value.as_integer() {
                Some(n) if n > 0 && (n as u128).is_power_of_two() && n <= u32::MAX as i128 => n as u64,
                _ => {
                    return Err(c.error(value_at, format!("{ALIGNMENT_KEY} is {value} ({}); it must be a power of two", value.describe())));
                }
            };
        }
        seen.insert(key.clone(), i as usize);
        metadata.push((key, value));
    }

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(tensor_count as usize);
    let mut names: HashMap<String, usize> = HashMap::with_capacity(tensor_count as usize);
    let mut info_offsets = Vec::with_capacity(tensor_count as usize);
    for i in 0..tensor_count {
        let info_at = c.pos;
        let name = c.string(&|| format!("the name of tensor {i}"))?;
        if let Some(&prev) = names.get(&name) {
            return Err(c.error(info_at, format!("tensor name '{name}' appears twice (tensors {prev} and {i})")));
        }
        let n_dims_at = c.pos;
        let n_dims = c.u32(&|| format!("the number of dimensions of tensor '{name}'"))?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(c.error(n_dims_at, format!("tensor '{name}' has {n_dims} dimensions; 1 to {MAX_DIMS} are allowed")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        let mut numel: u64 = 1;
        for d in 0..n_dims {
            let dim_at = c.pos;
            let dim = c.u64(&|| format!("dimension {d} of tensor '{name}'"))?;
            if dim == 0 {
                return Err(c.error(dim_at, format!("tensor '{name}' has dimension {d} of size 0")));
            }
            numel = numel.checked_mul(dim).filter(|&n| n <= i64::MAX as u64).ok_or_else(|| {
                c.error(dim_at, format!("tensor '{name}' has too many elements: its dimensions overflow at dimension {d} ({dim})"))
            })?;
            dims.push(dim);
        }
        let type_at = c.pos;
        let type_id = c.u32(&|| format!("the type of tensor '{name}'"))?;
        let ggml_type = GgmlType::from_id(type_id)
            .ok_or_else(|| c.error(type_at, format!("tensor '{name}': {}", GgmlType::describe_unknown_id(type_id))))?;
        if dims[0] % ggml_type.block_size() != 0 {
            return Err(c.error(
                type_at,
                format!(
                    "tensor '{name}' has rows of {} elements, not a multiple of the {} block size {}",
                    dims[0],
                    ggml_type,
                    ggml_type.block_size()
                ),
            ));
        }
        let size = ggml_type
            .bytes_for(numel)
            .ok_or_else(|| c.error(type_at, format!("tensor '{name}': the size of {numel} {ggml_type} elements overflows")))?;
        let offset_at = c.pos;
        let offset = c.u64(&|| format!("the data offset of tensor '{name}'"))?;
        if offset % alignment != 0 {
            return Err(
                c.error(offset_at, format!("tensor '{name}' has data offset {offset}, not a multiple of the alignment {alignment}"))
            );
        }
        names.insert(name.clone(), i as usize);
        info_offsets.push(offset_at);
        tensors.push(TensorInfo { name, ggml_type, dims, offset, file_offset: 0, size });
    }

    let infos_end = c.pos as u64;
    let data_offset = infos_end
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| c.error(c.pos, format!("the data section offset overflows when aligned to {alignment}")))?;
    let file_size = buf.len() as u64;
    for (t, &at) in tensors.iter_mut().zip(&info_offsets) {
        let end = data_offset.checked_add(t.offset).and_then(|s| Some((s, s.checked_add(t.size)?)));
        match end {
            Some((start, end)) if end <= file_size => t.file_offset = start,
            _ => {
                return Err(c.error(
                    at,
                    format!(
                        "tensor '{}' data ({} bytes at data offset {} + {}) lies past the end of the file ({file_size} bytes)",
                        t.name, t.size, data_offset, t.offset
                    ),
                ))
            }
        }
    }
    // Each byte of tensor data belongs to one tensor: a type changed in a corrupted header
    // (Q4_1 to F32) makes a tensor's bytes run into the next one's, read as both.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| (tensors[i].offset, i));
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        let a_end = a.offset + a.size; // no overflow: checked against the file size above
        if a_end > b.offset {
            return Err(c.error(
                info_offsets[w[1]],
                format!(
                    "the data of tensors '{}' ({}, bytes {}..{} of the data section) and '{}' ({}, bytes {}..{}) overlap",
                    a.name,
                    a.ggml_type,
                    a.offset,
                    a_end,
                    b.name,
                    b.ggml_type,
                    b.offset,
                    b.offset + b.size
                ),
            ));
        }
    }
    Ok(Header { version, alignment, data_offset, metadata, tensors })
}
