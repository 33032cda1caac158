//! The CPU as a [`Device`]: tensors in host memory, ops run by the fast kernels (SIMD and
//! threads, [`crate::fast`], [`crate::paged`], [`crate::simd`]) where the op has one, and by
//! the reference kernels of this crate otherwise (`docs/op-support.md` says which). Weights
//! from a mapped file are borrowed in place ([`Device::upload_shared`]), never copied.
//!
//! Storage is either owned words (4-byte aligned, so f32/i32/u32 and 16-bit floats view
//! without copying) behind a lock, or a shared read-only byte range. Ops that update state
//! ([`Device::run_into`]: the KV pool's pages) write through the lock; ops that make new
//! tensors allocate them.

use ingot_core::{ensure, DType, Device, DeviceTensor, DeviceTensors, Error, HostBytes, Op, Result, Tensor};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A tensor in host memory, on the [`CpuDevice`].
#[derive(Clone)]
pub struct CpuTensor {
    dtype: DType,
    shape: Vec<usize>,
    storage: Arc<Storage>,
}

enum Storage {
    /// Owned little-endian bytes, kept in 4-byte words: the tensor's `len` bytes start at
    /// byte `start` (a multiple of 4). A guarded tensor ([`CpuTensor::guarded`]) has
    /// sentinel bytes everywhere else in `words`.
    Owned { words: RwLock<Vec<u32>>, start: usize, len: usize, guarded: bool },
    /// A read-only range of bytes someone else holds (a mapped GGUF file).
    Shared { bytes: Arc<dyn HostBytes>, range: Range<usize> },
}

/// The word buffers of dropped tensors, kept for [`CpuDevice::zeros`] to hand out again:
/// a forward pass makes and drops the same few hundred output tensors at every step, and
/// fresh allocations cost as much as the small ops themselves (malloc, and for buffers of
/// 128 KiB and more, such as a step's logits, an mmap with its page faults and zeroing).
/// Buffers are kept by length: at most [`RECYCLE_PER_LEN`] of each length, none above
/// [`RECYCLE_MAX_BYTES`], [`RECYCLE_TOTAL_BYTES`] in all.
struct Recycler {
    by_len: HashMap<usize, Vec<Vec<u32>>>,
    bytes: usize,
}

static RECYCLER: Mutex<Option<Recycler>> = Mutex::new(None);
const RECYCLE_PER_LEN: usize = 8;
const RECYCLE_MAX_BYTES: usize = 16 << 20;
const RECYCLE_TOTAL_BYTES: usize = 64 << 20;

/// A buffer of `words` zeroed words: a recycled one when there is one of that length.
fn zeroed_words(words: usize) -> Vec<u32> {
    let reused = RECYCLER.lock().ok().and_then(|mut r| {
        let r = r.as_mut()?;
        let v = r.by_len.get_mut(&words)?.pop()?;
        r.bytes -= words * 4;
        Some(v)
    });
    match reused {
        Some(mut v) => {
            v.fill(0);
            v
        }
        None => vec![0u32; words],
    }
}

/// Keeps `v` for [`zeroed_words`] when the limits allow; otherwise it is freed.
fn recycle(v: Vec<u32>) {
    let n = v.len();
    if n == 0 || n * 4 > RECYCLE_MAX_BYTES {
        return;
    }
    if let Ok(mut r) = RECYCLER.lock() {
        let r = r.get_or_insert_with(|| Recycler { by_len: HashMap::new(), bytes: 0 });
        let slot = r.by_len.entry(n).or_default();
        if slot.len() < RECYCLE_PER_LEN && r.bytes + n * 4 <= RECYCLE_TOTAL_BYTES {
            r.bytes += n * 4;
            slot.push(v);
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Storage::Owned { words, guarded: false, .. } = self {
            if let Ok(w) = words.get_mut() {
                recycle(std::mem::take(w));
            }
        }
    }
}

/// The byte around a guarded tensor (and in the padding of its last word).
pub const SENTINEL: u8 = 0xA5;

/// Sentinel bytes on each side of a guarded tensor of `len` bytes: its own size (a kernel
/// that writes one row or one tensor too many lands in it), at least 64 and at most 1 MiB.
fn guard_bytes(len: usize) -> usize {
    len.clamp(64, 1 << 20).next_multiple_of(4)
}

/// Read access to a tensor's bytes.
pub enum Bytes<'a> {
    Owned(RwLockReadGuard<'a, Vec<u32>>, Range<usize>),
    Shared(&'a [u8]),
}

impl std::ops::Deref for Bytes<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(g, r) => &bytemuck::cast_slice::<u32, u8>(g)[r.clone()],
            Bytes::Shared(b) => b,
        }
    }
}

/// Read access to a tensor's elements as `T` (f32, i32, u32, u16, u8): borrowed where the
/// storage allows it (owned words; an aligned shared range), else a copy.
pub enum View<'a, T: bytemuck::Pod> {
    Owned(RwLockReadGuard<'a, Vec<u32>>, Range<usize>),
    Borrowed(&'a [T]),
    Copied(Vec<T>),
}

impl<T: bytemuck::Pod> std::ops::Deref for View<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            View::Owned(g, r) => &bytemuck::cast_slice::<u32, T>(g)[r.clone()],
            View::Borrowed(b) => b,
            View::Copied(v) => v,
        }
    }
}

/// Write access to an owned tensor's bytes.
pub struct WordsMut<'a>(RwLockWriteGuard<'a, Vec<u32>>, Range<usize>);

impl WordsMut<'_> {
    /// The bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<u32, u8>(&mut self.0)[self.1.clone()]
    }
    /// The elements of an f32 tensor.
    pub fn f32(&mut self) -> &mut [f32] {
        self.elems()
    }
    /// The elements as `T` (the tensor's bytes must be whole `T`s).
    pub fn elems<T: bytemuck::Pod>(&mut self) -> &mut [T] {
        let size = std::mem::size_of::<T>();
        let r = self.1.start / size..self.1.end / size;
        &mut bytemuck::cast_slice_mut::<u32, T>(&mut self.0)[r]
    }
}

fn lock_err(what: &str) -> Error {
    Error::invalid("cpu", format!("a {what} lock was poisoned by a panic in another thread"))
}

impl CpuTensor {
    /// A tensor that owns `words` (little-endian), of which `dtype.bytes_for(numel)` bytes count.
    fn owned(dtype: DType, shape: &[usize], words: Vec<u32>) -> Result<CpuTensor> {
        let len = bytes_for(dtype, shape)?;
        ensure!(words.len() * 4 >= len, "cpu", "{} words cannot hold {len} bytes", words.len());
        let storage = Storage::Owned { words: RwLock::new(words), start: 0, len, guarded: false };
        Ok(CpuTensor { dtype, shape: shape.to_vec(), storage: Arc::new(storage) })
    }

    /// A tensor of zeros inside a larger buffer whose other bytes are [`SENTINEL`]s (before
    /// the tensor, after it, and in the padding of its last word): [`CpuTensor::check_guard`]
    /// finds a write outside the tensor.
    pub fn guarded(dtype: DType, shape: &[usize]) -> Result<CpuTensor> {
        let len = bytes_for(dtype, shape)?;
        let g = guard_bytes(len);
        let total = g + len.next_multiple_of(4) + g;
        let mut words = vec![u32::from_ne_bytes([SENTINEL; 4]); total / 4];
        bytemuck::cast_slice_mut::<u32, u8>(&mut words)[g..g + len].fill(0);
        let storage = Storage::Owned { words: RwLock::new(words), start: g, len, guarded: true };
        Ok(CpuTensor { dtype, shape: shape.to_vec(), storage: Arc::new(storage) })
    }

    /// For a [`CpuTensor::guarded`] tensor, an error message when a byte outside the tensor
    /// is no longer [`SENTINEL`]: how many bytes changed before its start and after its end,
    /// and the nearest of each. `Ok` for every other tensor.
    pub fn check_guard(&self) -> Result<(), String> {
        let Storage::Owned { words, start, len, guarded: true } = &*self.storage else { return Ok(()) };
        let w = words.read().map_err(|_| "the tensor's lock was poisoned".to_string())?;
        let b = bytemuck::cast_slice::<u32, u8>(&w);
        let (before, after) = (&b[..*start], &b[start + len..]);
        let changed = |s: &[u8]| s.iter().filter(|&&x| x != SENTINEL).count();
        let (nb, na) = (changed(before), changed(after));
        if nb + na == 0 {
            return Ok(());
        }
        let mut parts = Vec::new();
        if let Some(i) = before.iter().rposition(|&x| x != SENTINEL) {
            parts.push(format!("{nb} bytes before its start (the nearest at -{})", start - i));
        }
        if let Some(i) = after.iter().position(|&x| x != SENTINEL) {
            parts.push(format!("{na} bytes after its end (the nearest at end+{i})"));
        }
        Err(format!("{} bytes {:?}: written outside it, {}", len, self.shape, parts.join(" and ")))
    }

    /// The whole buffer of an owned tensor, guard included, for tests that play a kernel
    /// writing out of bounds.
    #[cfg(test)]
    pub(crate) fn raw_words(&self) -> Option<(RwLockWriteGuard<'_, Vec<u32>>, Range<usize>)> {
        match &*self.storage {
            Storage::Owned { words, start, len, .. } => Some((words.write().ok()?, *start..start + len)),
            Storage::Shared { .. } => None,
        }
    }

    /// An f32 tensor owning `values`.
    pub fn from_f32(shape: &[usize], values: Vec<f32>) -> Result<CpuTensor> {
        ensure!(values.len() == shape.iter().product::<usize>(), "cpu", "{} values for shape {shape:?}", values.len());
        // Same size and alignment: reuse the allocation.
        let words: Vec<u32> = bytemuck::allocation::cast_vec(values);
        CpuTensor::owned(DType::F32, shape, words)
    }

    /// An i32 tensor owning `values`.
    pub fn from_i32(shape: &[usize], values: Vec<i32>) -> Result<CpuTensor> {
        ensure!(values.len() == shape.iter().product::<usize>(), "cpu", "{} values for shape {shape:?}", values.len());
        CpuTensor::owned(DType::I32, shape, bytemuck::allocation::cast_vec(values))
    }

    /// Read access to the bytes.
    pub fn bytes(&self) -> Result<Bytes<'_>> {
        Ok(match &*self.storage {
            Storage::Owned { words, start, len, .. } => Bytes::Owned(words.read().map_err(|_| lock_err("tensor"))?, *start..start + len),
            Storage::Shared { bytes, range } => Bytes::Shared(&bytes.host_bytes()[range.clone()]),
        })
    }

    /// The elements as `T`, whose size must divide the tensor's bytes (f32 data as `f32`,
    /// 16-bit floats as `u16`, block data as `u8`); no copy where the storage allows it.
    pub fn view<T: bytemuck::Pod>(&self) -> Result<View<'_, T>> {
        let size = std::mem::size_of::<T>();
        ensure!(size <= 4, "cpu", "a view of {size}-byte elements");
        Ok(match &*self.storage {
            Storage::Owned { words, start, len, .. } => {
                ensure!(len % size == 0, "cpu", "{len} bytes are not whole {size}-byte elements");
                View::Owned(words.read().map_err(|_| lock_err("tensor"))?, start / size..(start + len) / size)
            }
            Storage::Shared { bytes, range } => {
                let b = &bytes.host_bytes()[range.clone()];
                ensure!(b.len() % size == 0, "cpu", "{} bytes are not whole {size}-byte elements", b.len());
                match bytemuck::try_cast_slice::<u8, T>(b) {
                    Ok(s) => View::Borrowed(s),
                    Err(_) => View::Copied(bytemuck::pod_collect_to_vec(b)),
                }
            }
        })
    }

    /// Write access; an error for a tensor over shared (read-only) bytes.
    pub fn write(&self) -> Result<WordsMut<'_>> {
        match &*self.storage {
            Storage::Owned { words, start, len, .. } => Ok(WordsMut(words.write().map_err(|_| lock_err("tensor"))?, *start..start + len)),
            Storage::Shared { .. } => Err(Error::invalid("cpu", "a tensor over a mapped file is read-only")),
        }
    }

    /// The elements of an f32 tensor, copied.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        ensure!(self.dtype == DType::F32, "cpu", "to_f32_vec on a {} tensor", self.dtype);
        Ok(self.view::<f32>()?.to_vec())
    }

    /// Runs `f` over the elements of an f32 tensor (no copy for owned storage).
    pub fn with_f32<T>(&self, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
        ensure!(self.dtype == DType::F32, "cpu", "an f32 tensor was expected, got {}", self.dtype);
        Ok(f(&self.view::<f32>()?))
    }

    /// Runs `f` over the elements of an i32 tensor (no copy for owned storage).
    pub fn with_i32<T>(&self, f: impl FnOnce(&[i32]) -> T) -> Result<T> {
        ensure!(self.dtype == DType::I32, "cpu", "an i32 tensor was expected, got {}", self.dtype);
        Ok(f(&self.view::<i32>()?))
    }

    /// Whether two tensors share storage.
    pub fn same_storage(&self, other: &CpuTensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// The host tensor (a copy).
    pub fn to_host(&self) -> Result<Tensor> {
        Tensor::from_bytes(self.dtype, self.shape.clone(), self.bytes()?.to_vec())
    }
}

fn bytes_for(dtype: DType, shape: &[usize]) -> Result<usize> {
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    numel
        .and_then(|n| dtype.bytes_for(n))
        .ok_or_else(|| Error::invalid("cpu", format!("shape {shape:?} is not a whole number of {dtype} blocks, or too large")))
}

impl DeviceTensor for CpuTensor {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn reshape(&self, shape: &[usize]) -> Result<Self> {
        ingot_core::check_reshape(&self.shape, shape)?;
        Ok(CpuTensor { dtype: self.dtype, shape: shape.to_vec(), storage: self.storage.clone() })
    }
}

impl std::fmt::Debug for CpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuTensor({} {:?})", self.dtype, self.shape)
    }
}

/// The CPU fast kernels as a device (`--backend cpu`).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuDevice;

impl Device for CpuDevice {
    type Tensor = CpuTensor;

    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn supports(&self, _op: &Op) -> bool {
        true
    }

    fn upload(&self, t: &Tensor) -> Result<CpuTensor> {
        let len = bytes_for(t.dtype, &t.shape)?;
        ensure!(t.data.len() == len, "upload", "{} tensor of shape {:?} needs {len} bytes, got {}", t.dtype, t.shape, t.data.len());
        let mut words = vec![0u32; len.div_ceil(4)];
        bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..len].copy_from_slice(&t.data);
        CpuTensor::owned(t.dtype, &t.shape, words)
    }

    fn upload_shared(&self, dtype: DType, shape: &[usize], bytes: &Arc<dyn HostBytes>, range: Range<usize>) -> Result<CpuTensor> {
        let len = bytes_for(dtype, shape)?;
        ensure!(range.len() == len, "upload", "{dtype} tensor of shape {shape:?} needs {len} bytes, the range has {}", range.len());
        ensure!(range.end <= bytes.host_bytes().len(), "upload", "range {range:?} is outside {} bytes", bytes.host_bytes().len());
        Ok(CpuTensor { dtype, shape: shape.to_vec(), storage: Arc::new(Storage::Shared { bytes: bytes.clone(), range }) })
    }

    fn download(&self, t: &CpuTensor) -> Result<Tensor> {
        t.to_host()
    }

    fn zeros(&self, dtype: DType, shape: &[usize]) -> Result<CpuTensor> {
        let len = bytes_for(dtype, shape)?;
        CpuTensor::owned(dtype, shape, zeroed_words(len.div_ceil(4)))
    }

    fn run(&self, op: &Op, inputs: &DeviceTensors<CpuTensor>) -> Result<DeviceTensors<CpuTensor>> {
        crate::device_ops::run(op, inputs)
    }

    fn guards_outputs(&self) -> bool {
        true
    }

    fn run_guarded(&self, op: &Op, inputs: &DeviceTensors<CpuTensor>) -> Result<DeviceTensors<CpuTensor>> {
        crate::device_ops::run_guarded(op, inputs)
    }

    fn run_into(
        &self,
        op: &Op,
        inputs: &DeviceTensors<CpuTensor>,
        outputs: &mut DeviceTensors<CpuTensor>,
    ) -> Result<DeviceTensors<CpuTensor>> {
        crate::device_ops::run_into(op, inputs, outputs)
    }

    fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        crate::in_pool(f)
    }
}

impl ingot_core::Backend for CpuDevice {
    fn name(&self) -> String {
        Device::name(self)
    }
    fn supports(&self, op: &Op) -> bool {
        Device::supports(self, op)
    }
    fn run(&self, op: &Op, inputs: &ingot_core::Tensors) -> Result<ingot_core::Tensors> {
        ingot_core::run_on_host(self, op, inputs)
    }
    fn precision(&self, op: &Op) -> ingot_core::Precision {
        crate::device_ops::precision(op)
    }
    fn guards_outputs(&self) -> bool {
        true
    }
    fn run_guarded(&self, op: &Op, inputs: &ingot_core::Tensors) -> Result<ingot_core::Tensors> {
        ingot_core::run_on_host_guarded(self, op, inputs)
    }
}

#[cfg(test)]
mod recycle_tests {
    use super::*;
    use crate::CpuDevice;

    /// A dropped tensor's buffer comes back from `zeros` (same length), zeroed again; one of
    /// another length is not handed out.
    #[test]
    fn recycled_buffers_come_back_zeroed() {
        // A length no other test uses, so the pool's slot is this test's alone.
        let shape = [3, 1237];
        let t = CpuDevice.zeros(DType::F32, &shape).unwrap();
        let ptr = {
            let mut w = t.write().unwrap();
            w.f32().fill(7.5);
            w.f32().as_ptr() as usize
        };
        drop(t);
        let again = CpuDevice.zeros(DType::F32, &shape).unwrap();
        let v = again.view::<f32>().unwrap();
        assert_eq!(v.as_ptr() as usize, ptr, "the dropped buffer was not reused");
        assert!(v.iter().all(|&x| x == 0.0), "a recycled buffer must be zeroed");
        drop(v);
        let other = CpuDevice.zeros(DType::F32, &[1237]).unwrap();
        assert_eq!(other.view::<f32>().unwrap().len(), 1237);
    }
}
