//! The GPU backend: CubeCL kernels for the protocol's ops, generic over `cubecl::Runtime`.
//!
//! One kernel source serves every runtime compiled in: wgpu (Vulkan, Metal, DX12, WebGPU;
//! Mesa's lavapipe in CI), wgpu with the MSL compiler (`metal`), and CUDA (`cuda`). The
//! backend takes host tensors, keeps them in device buffers while an op runs, and returns
//! host tensors, as [`ingot_core::Backend`] asks; the CPU reference is the oracle.
//!
//! What runs where is decided twice: [`implements`] says which op × dtype pairs have a
//! kernel (the same on every machine, what `docs/op-support.md` shows), and
//! [`GpuBackend::supports`] adds what the device can do (lavapipe has no bf16: a bf16
//! kernel there would never write its output, so those cases are reported unsupported).
//! No kernel uses plane (subgroup) operations yet: every reduction goes through shared
//! memory, the path that CPU adapters without plane features run.

pub mod activation;
pub mod cast;
mod device;
pub mod embedding;
pub mod norm;
pub mod rope;
pub mod sampling;

use cubecl::prelude::*;
use ingot_core::{ensure, Error, Op, Result, Tensors};

pub use device::{Device, GpuTensor, GpuTensors};

/// Whether a kernel exists for this op and its dtypes, independent of any device.
/// Float compute kernels exist for f32, f16 and bf16; bf16 and f16 still need the
/// device's support at run time ([`GpuBackend::supports`]). `cast` and float
/// `embedding_lookup` move raw bits and need no float type support.
pub fn implements(op: &Op) -> bool {
    match op {
        Op::AddResidual(_)
        | Op::RmsNorm(_)
        | Op::FusedAddRmsNorm(_)
        | Op::LayerNorm(_)
        | Op::Silu(_)
        | Op::Gelu(_)
        | Op::GeluTanh(_)
        | Op::Relu(_)
        | Op::Sigmoid(_)
        | Op::SiluAndMul(_)
        | Op::GeluAndMul(_)
        | Op::Softmax(_)
        | Op::Softcap(_)
        | Op::TemperatureScale(_)
        | Op::Rope(_) => op.dtype().is_float(),
        Op::Cast(_) => true,
        Op::EmbeddingLookup(p) => p.dtype.is_float(),
        _ => false,
    }
}

/// Whether `op` needs float arithmetic in its activation dtype on the device
/// (false for the ops that only move bits).
fn needs_float_type(op: &Op) -> bool {
    !matches!(op, Op::Cast(_) | Op::EmbeddingLookup(_))
}

/// The GPU backend on one device of runtime `R`.
pub struct GpuBackend<R: Runtime> {
    dev: Device<R>,
    name: String,
}

impl<R: Runtime> GpuBackend<R> {
    /// A backend on `device`, reported under `name` (`gpu:wgpu`, `gpu:cuda`, ...).
    pub fn new(device: &R::Device, name: impl Into<String>) -> Self {
        GpuBackend { dev: Device::new(R::client(device)), name: name.into() }
    }

    /// The device this backend runs on.
    pub fn device(&self) -> &Device<R> {
        &self.dev
    }

    fn unsupported(&self, op: &Op) -> Error {
        Error::Unsupported { op: op.name(), backend: self.name.clone(), dtype: op.dtype() }
    }
}

impl<R: Runtime> ingot_core::Backend for GpuBackend<R> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn supports(&self, op: &Op) -> bool {
        implements(op) && (!needs_float_type(op) || self.dev.has_float(op.dtype()))
    }

    fn run(&self, op: &Op, inputs: &Tensors) -> Result<Tensors> {
        op.check_inputs(inputs)?;
        if !self.supports(op) {
            return Err(self.unsupported(op));
        }
        check_host_values(op, inputs)?;
        let dev: GpuTensors = inputs.iter().map(|(k, t)| (k.clone(), self.dev.to_device(t))).collect();
        let out = self.run_device(op, &dev)?;
        out.iter().map(|(k, t)| Ok((k.clone(), self.dev.to_host(op.name(), t)?))).collect()
    }
}

impl<R: Runtime> GpuBackend<R> {
    /// Run `op` on tensors already on the device and return its outputs on the device, so
    /// ops chain with no host round trip. Shapes and dtypes are checked against the op's
    /// specs; values are not read back (an out-of-range id or position is the caller's to
    /// avoid: the kernels stay in bounds and write zeros for out-of-range ids, and
    /// [`ingot_core::Backend::run`] checks such values on the host first).
    pub fn run_device(&self, op: &Op, inputs: &GpuTensors) -> Result<GpuTensors> {
        op.validate()?;
        if !ingot_core::Backend::supports(self, op) {
            return Err(self.unsupported(op));
        }
        check_device_inputs(op, inputs)?;
        let d = &self.dev;
        use activation::Act;
        match op {
            Op::AddResidual(p) => norm::add_residual(d, p, inputs),
            Op::RmsNorm(p) => norm::rms_norm(d, p, inputs),
            Op::FusedAddRmsNorm(p) => norm::fused_add_rms_norm(d, p, inputs),
            Op::LayerNorm(p) => norm::layer_norm(d, p, inputs),
            Op::Silu(p) => activation::unary(d, Act::Silu, p, inputs),
            Op::Gelu(p) => activation::unary(d, Act::Gelu, p, inputs),
            Op::GeluTanh(p) => activation::unary(d, Act::GeluTanh, p, inputs),
            Op::Relu(p) => activation::unary(d, Act::Relu, p, inputs),
            Op::Sigmoid(p) => activation::unary(d, Act::Sigmoid, p, inputs),
            Op::SiluAndMul(p) => activation::gated(d, Act::Silu, p, inputs),
            Op::GeluAndMul(p) => activation::gated(d, Act::GeluTanh, p, inputs),
            Op::Softmax(p) => sampling::softmax(d, p, inputs),
            Op::Softcap(p) => sampling::softcap(d, p, inputs),
            Op::TemperatureScale(p) => sampling::temperature_scale(d, p, inputs),
            Op::Rope(p) => rope::rope(d, p, inputs),
            Op::Cast(p) => cast::cast(d, p, inputs),
            Op::EmbeddingLookup(p) => embedding::embedding_lookup(d, p, inputs),
            _ => Err(self.unsupported(op)),
        }
    }
}

/// Check that `inputs` holds exactly the op's inputs with the specified dtypes and shapes,
/// and buffers large enough for them.
fn check_device_inputs(op: &Op, inputs: &GpuTensors) -> Result<()> {
    let name = op.name();
    let specs = op.inputs();
    for s in &specs {
        let t = inputs.get(s.name).ok_or_else(|| Error::invalid(name, format!("missing input '{}'", s.name)))?;
        ensure!(t.dtype == s.dtype, name, "'{}' has dtype {}, expected {}", s.name, t.dtype, s.dtype);
        ensure!(t.shape == s.shape, name, "'{}' has shape {:?}, expected {:?}", s.name, t.shape, s.shape);
        let have = t.handle.size() as usize;
        ensure!(have >= t.bytes(), name, "'{}' buffer holds {have} bytes, the tensor needs {}", s.name, t.bytes());
    }
    if let Some(extra) = inputs.keys().find(|k| !specs.iter().any(|s| s.name == k.as_str())) {
        let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
        return Err(Error::invalid(name, format!("unexpected input '{extra}' (inputs are {names:?})")));
    }
    Ok(())
}

/// Checks of input values that the device path leaves to its caller: ids inside the
/// vocabulary, positions not negative. Run on the host before uploading.
fn check_host_values(op: &Op, inputs: &Tensors) -> Result<()> {
    let name = op.name();
    match op {
        Op::EmbeddingLookup(p) => {
            for (i, &id) in inputs["ids"].to_i32()?.iter().enumerate() {
                ensure!(id >= 0 && (id as usize) < p.vocab_size, name, "ids[{i}] = {id} is outside 0..{}", p.vocab_size);
            }
        }
        Op::Rope(_) => {
            if let Some((t, id)) = inputs["pos_ids"].to_i32()?.iter().enumerate().find(|(_, &id)| id < 0) {
                ensure!(false, name, "pos_ids[{t}] = {id} is negative");
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(feature = "wgpu")]
mod wgpu_backend {
    use super::GpuBackend;
    use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

    /// The wgpu runtime (Vulkan, Metal, DX12, WebGPU; lavapipe in CI); with the `metal`
    /// feature, wgpu compiles kernels to MSL on Apple devices.
    pub type WgpuBackend = GpuBackend<WgpuRuntime>;

    impl GpuBackend<WgpuRuntime> {
        /// The default wgpu adapter, or `None` when there is none (checked without panicking).
        pub fn wgpu(name: &str) -> Option<Self> {
            if !super::device::wgpu_adapter_present() {
                return None;
            }
            Some(GpuBackend::new(&WgpuDevice::default(), name))
        }
    }
}
#[cfg(feature = "wgpu")]
pub use wgpu_backend::WgpuBackend;

#[cfg(feature = "cuda")]
mod cuda_backend {
    use super::GpuBackend;
    use cubecl::cuda::{CudaDevice, CudaRuntime};

    /// The CUDA runtime (NVRTC, CUDA libraries loaded at run time).
    pub type CudaBackend = GpuBackend<CudaRuntime>;

    impl GpuBackend<CudaRuntime> {
        /// CUDA device 0, or `None` when no CUDA driver or device can be opened.
        pub fn cuda(name: &str) -> Option<Self> {
            // The CUDA runtime panics when the driver is missing; turn that into None.
            let prev = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let b = std::panic::catch_unwind(|| GpuBackend::new(&CudaDevice::new(0), name.to_string())).ok();
            std::panic::set_hook(prev);
            b
        }
    }
}
#[cfg(feature = "cuda")]
pub use cuda_backend::CudaBackend;
