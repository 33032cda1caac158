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
use std::ops::Range;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A tensor in host memory, on the [`CpuDevice`].
#[derive(Clone)]
pub struct CpuTensor {
    dtype: DType,
    shape: Vec<usize>,
    storage: Arc<Storage>,
}

enum Storage {
    /// Owned little-endian bytes, kept in 4-byte words; `len` bytes are the tensor's.
    Owned { words: RwLock<Vec<u32>>, len: usize },
    /// A read-only range of bytes someone else holds (a mapped GGUF file).
    Shared { bytes: Arc<dyn HostBytes>, range: Range<usize> },
}

/// Read access to a tensor's bytes.
pub enum Bytes<'a> {
    Owned(RwLockReadGuard<'a, Vec<u32>>, usize),
    Shared(&'a [u8]),
}

impl std::ops::Deref for Bytes<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(g, len) => &bytemuck::cast_slice::<u32, u8>(g)[..*len],
            Bytes::Shared(b) => b,
        }
    }
}

/// Write access to an owned tensor's words.
pub struct WordsMut<'a>(RwLockWriteGuard<'a, Vec<u32>>, usize);

impl WordsMut<'_> {
    /// The bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        let len = self.1;
        &mut bytemuck::cast_slice_mut::<u32, u8>(&mut self.0)[..len]
    }
    /// The elements of an f32 tensor.
    pub fn f32(&mut self) -> &mut [f32] {
        let n = self.1 / 4;
        &mut bytemuck::cast_slice_mut::<u32, f32>(&mut self.0)[..n]
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
        Ok(CpuTensor { dtype, shape: shape.to_vec(), storage: Arc::new(Storage::Owned { words: RwLock::new(words), len }) })
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
            Storage::Owned { words, len } => Bytes::Owned(words.read().map_err(|_| lock_err("tensor"))?, *len),
            Storage::Shared { bytes, range } => Bytes::Shared(&bytes.host_bytes()[range.clone()]),
        })
    }

    /// Write access; an error for a tensor over shared (read-only) bytes.
    pub fn write(&self) -> Result<WordsMut<'_>> {
        match &*self.storage {
            Storage::Owned { words, len } => Ok(WordsMut(words.write().map_err(|_| lock_err("tensor"))?, *len)),
            Storage::Shared { .. } => Err(Error::invalid("cpu", "a tensor over a mapped file is read-only")),
        }
    }

    /// The elements of an f32 tensor, copied.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        ensure!(self.dtype == DType::F32, "cpu", "to_f32_vec on a {} tensor", self.dtype);
        let b = self.bytes()?;
        Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// Runs `f` over the elements of an f32 tensor (no copy for owned storage).
    pub fn with_f32<T>(&self, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
        ensure!(self.dtype == DType::F32, "cpu", "an f32 tensor was expected, got {}", self.dtype);
        let n = self.numel();
        match &*self.storage {
            Storage::Owned { words, .. } => {
                let g = words.read().map_err(|_| lock_err("tensor"))?;
                Ok(f(&bytemuck::cast_slice::<u32, f32>(&g)[..n]))
            }
            Storage::Shared { .. } => Ok(f(&self.to_f32_vec()?)),
        }
    }

    /// Runs `f` over the elements of an i32 tensor (no copy for owned storage).
    pub fn with_i32<T>(&self, f: impl FnOnce(&[i32]) -> T) -> Result<T> {
        ensure!(self.dtype == DType::I32, "cpu", "an i32 tensor was expected, got {}", self.dtype);
        let n = self.numel();
        match &*self.storage {
            Storage::Owned { words, .. } => {
                let g = words.read().map_err(|_| lock_err("tensor"))?;
                Ok(f(&bytemuck::cast_slice::<u32, i32>(&g)[..n]))
            }
            Storage::Shared { .. } => {
                let b = self.bytes()?;
                let v: Vec<i32> = b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                Ok(f(&v))
            }
        }
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
        ensure!(
            shape.iter().product::<usize>() == self.numel(),
            "reshape",
            "shape {shape:?} has another element count than {:?}",
            self.shape
        );
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
        CpuTensor::owned(dtype, shape, vec![0u32; len.div_ceil(4)])
    }

    fn run(&self, op: &Op, inputs: &DeviceTensors<CpuTensor>) -> Result<DeviceTensors<CpuTensor>> {
        crate::device_ops::run(op, inputs)
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
}
