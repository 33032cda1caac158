//! Dense f16/bf16 `gemm` through cuBLASLt on the CUDA runtime (cudarc, library loaded at
//! run time). CubeCL 0.10 emits no Hopper `wgmma` and its GEMMs measured about a third of
//! cuBLAS on an H200 (docs/gpu.md), so on CUDA the dense half-precision GEMM goes here;
//! f32 stays on the CubeCL kernel (cuBLASLt's f32 path in cudarc computes in TF32, which
//! the protocol's f32 tolerance does not allow).
//!
//! cuBLASLt runs on its own stream of the device's primary context, the context CubeCL
//! uses too: the CubeCL queue is synced before the call reads CubeCL buffers, and the
//! stream is synced before the output is handed back.

use crate::device::{input, GpuTensor, GpuTensors};
use cubecl::cuda::CudaRuntime;
use cubecl::prelude::*;
use cudarc::cublaslt::{CudaBlasLT, Matmul, MatmulConfig};
use cudarc::driver::{CudaContext, CudaStream, DevicePtr, DevicePtrMut, DeviceSlice, SyncOnDrop};
use ingot_core::{DType, Error, GemmParams, Result};
use std::sync::Arc;

/// cuBLASLt on one CUDA device.
pub(crate) struct CublasLt {
    stream: Arc<CudaStream>,
    blas: CudaBlasLT,
}

/// A CubeCL buffer seen by cudarc: a raw device pointer that cudarc neither owns nor
/// frees, with no event tracking (the caller syncs around the call).
struct Raw<T> {
    ptr: u64,
    len: usize,
    stream: Arc<CudaStream>,
    _t: std::marker::PhantomData<T>,
}

impl<T> DeviceSlice<T> for Raw<T> {
    fn len(&self) -> usize {
        self.len
    }
    fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

impl<T> DevicePtr<T> for Raw<T> {
    fn device_ptr<'a>(&'a self, _: &'a CudaStream) -> (u64, SyncOnDrop<'a>) {
        (self.ptr, SyncOnDrop::Sync(None))
    }
}

impl<T> DevicePtrMut<T> for Raw<T> {
    fn device_ptr_mut<'a>(&'a mut self, _: &'a CudaStream) -> (u64, SyncOnDrop<'a>) {
        (self.ptr, SyncOnDrop::Sync(None))
    }
}

impl CublasLt {
    /// cuBLASLt on device 0, or the reason it cannot be had (no library, no device).
    pub(crate) fn new() -> std::result::Result<CublasLt, String> {
        // cudarc panics when the shared library is missing; turn that into an error.
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = std::panic::catch_unwind(|| -> std::result::Result<CublasLt, String> {
            let ctx = CudaContext::new(0).map_err(|e| format!("CUDA context: {e:?}"))?;
            let stream = ctx.new_stream().map_err(|e| format!("CUDA stream: {e:?}"))?;
            let blas = CudaBlasLT::new(stream.clone()).map_err(|e| format!("cuBLASLt: {e:?}"))?;
            Ok(CublasLt { stream, blas })
        });
        std::panic::set_hook(prev);
        r.unwrap_or_else(|_| Err("cuBLASLt could not be loaded (libcublasLt not found)".to_string()))
    }

    /// `gemm` for f16/bf16: c = op(a)·op(b) (+ bias), f32 accumulation, one rounding.
    pub(crate) fn gemm(&self, client: &ComputeClient<CudaRuntime>, p: &GemmParams, inputs: &GpuTensors) -> Result<GpuTensors> {
        match p.dtype {
            DType::F16 => self.gemm_t::<half::f16>(client, p, inputs),
            DType::BF16 => self.gemm_t::<half::bf16>(client, p, inputs),
            d => Err(Error::Unsupported { op: "gemm", backend: "gpu:cuda (cuBLASLt)".into(), dtype: d }),
        }
    }

    fn gemm_t<T>(&self, client: &ComputeClient<CudaRuntime>, p: &GemmParams, inputs: &GpuTensors) -> Result<GpuTensors>
    where
        CudaBlasLT: Matmul<T>,
    {
        const OP: &str = "gemm";
        let (m, n, k) = (p.m, p.n, p.k);
        let out = client.empty((m * n * 2).next_multiple_of(4));
        let a = input(OP, inputs, "a")?;
        let b = input(OP, inputs, "b")?;
        let bias = if p.use_bias { Some(input(OP, inputs, "bias")?) } else { None };
        // The CubeCL queue may still be writing the inputs.
        cubecl::future::block_on(client.sync()).map_err(|e| Error::invalid(OP, format!("device sync failed: {e:?}")))?;
        let res = |t: &GpuTensor| {
            client.get_resource(t.handle.clone()).map_err(|e| Error::invalid(OP, format!("device buffer of '{OP}': {e:?}")))
        };
        let (ra, rb) = (res(a)?, res(b)?);
        let rbias = bias.map(res).transpose()?;
        let rc = client.get_resource(out.clone()).map_err(|e| Error::invalid(OP, format!("output buffer: {e:?}")))?;
        let raw = |ptr: u64, len: usize| Raw::<T> { ptr, len, stream: self.stream.clone(), _t: std::marker::PhantomData };
        // Row-major c[m,n] is column-major cᵀ[n,m] = op(b)ᵀ·op(a)ᵀ: cuBLAS's first operand
        // is our b, its second our a. Seen column-major, row-major b [k,n] is [n,k] with
        // ld n (no transpose) and b [n,k] (`transb`) is [k,n] with ld k (transposed);
        // likewise a [m,k] is [k,m] with ld k and a [k,m] (`transa`) is [m,k] with ld m.
        let cfg = MatmulConfig {
            transa: p.transb,
            transb: p.transa,
            transc: false,
            m: n as u64,
            n: m as u64,
            k: k as u64,
            alpha: 1.0,
            lda: if p.transb { k as i64 } else { n as i64 },
            ldb: if p.transa { m as i64 } else { k as i64 },
            beta: 0.0,
            ldc: n as i64,
            stride_a: None,
            stride_b: None,
            stride_c: None,
            stride_bias: None,
            batch_size: None,
        };
        let (ba, bb) = (raw(rb.resource().ptr, n * k), raw(ra.resource().ptr, m * k));
        let mut bc = raw(rc.resource().ptr, m * n);
        let bbias = rbias.as_ref().map(|r| raw(r.resource().ptr, n));
        // SAFETY: the pointers are live CubeCL allocations (the resources above keep them)
        // holding a [m,k]/[k,m], b [k,n]/[n,k], bias [n] and c [m,n] elements of T, checked
        // by `check_device_inputs` and allocated above; the layouts follow from the shapes.
        unsafe { self.blas.matmul(cfg, &ba, &bb, &mut bc, bbias.as_ref(), None) }
            .map_err(|e| Error::invalid(OP, format!("cuBLASLt matmul failed: {e:?}")))?;
        self.stream.synchronize().map_err(|e| Error::invalid(OP, format!("cuBLASLt stream sync failed: {e:?}")))?;
        drop((ra, rb, rbias, rc));
        Ok(GpuTensors::from([("c".to_string(), GpuTensor::new(out, p.dtype, &[m, n]))]))
    }
}
