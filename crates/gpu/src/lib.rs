//! The GPU backend: CubeCL kernels for the protocol's ops, generic over `cubecl::Runtime`.
//!
//! One kernel source serves every runtime compiled in: wgpu (Vulkan, Metal, DX12, WebGPU;
//! Mesa's lavapipe in CI), wgpu with the MSL compiler (`metal`), and CUDA (`cuda`).
//! [`GpuBackend::run_device`] runs an op on device-resident [`GpuTensor`]s and returns its
//! outputs on the device, so ops chain with no host round trip; [`ingot_core::Backend::run`]
//! wraps it for host tensors (upload, run, download), as the protocol checks use it. The
//! CPU reference is the oracle.
//!
//! What runs where is decided twice: [`implements`] says which op × dtype pairs have a
//! kernel (the same on every machine, what `docs/op-support.md` shows), and
//! [`GpuBackend::supports`] adds what the device can do (lavapipe has no bf16: a bf16
//! kernel there would never write its output, so those cases are reported unsupported).
//! Reductions that can use plane (subgroup) operations choose at launch from
//! [`Device::plane_dim`]: plane ops where the runtime has them with a fixed width (CUDA),
//! shared memory where it has none (CPU adapters such as lavapipe, which CI checks), and
//! `INGOT_GPU_NO_PLANE=1` forces the shared-memory paths anywhere. On CUDA, dense f16/bf16
//! `gemm` goes to cuBLASLt (`INGOT_NO_CUBLASLT=1` keeps the CubeCL kernel), and a
//! sequence of ops can be recorded once and replayed as a CUDA graph
//! ([`ingot_core::Device::begin_capture`]; opt-in with `INGOT_CUDA_GRAPHS=1` for now).

pub mod activation;
pub mod attention;
pub mod bench;
pub mod cast;
pub mod copy;
#[cfg(feature = "cuda")]
mod cublaslt;
#[cfg(feature = "cuda")]
mod cuda_graph;
mod device;
pub mod embedding;
pub mod gemm;
pub mod kv;
pub mod matmul;
pub mod norm;
pub mod quant;
pub mod rope;
pub mod sampling;

use cubecl::prelude::*;
use ingot_core::{ensure, Error, Op, Result, Tensors};

/// The CubeCL version the kernels are built with, for callers generic over its `Runtime`.
pub use cubecl;
pub use device::{Device, GpuTensor, GpuTensors};

/// Whether a kernel exists for an op with its dtypes, and what it needs of the device.
/// Each family file says it for its ops (its `support` function).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Support {
    /// No kernel for these dtypes or parameters.
    None,
    /// A kernel that moves bits or decodes with integer operations: any device runs it.
    Bits,
    /// A kernel with float arithmetic in the op's activation dtype ([`float_dtype`]), which
    /// the device must support.
    Float,
}

impl Support {
    /// [`Support::Float`] when the op's dtype is a float (f32, f16, bf16), else none.
    pub(crate) fn float(op: &Op) -> Support {
        if op.dtype().is_float() {
            Support::Float
        } else {
            Support::None
        }
    }

    /// [`Support::Bits`] when the op's dtype is a float, else none.
    pub(crate) fn bits_if_float(op: &Op) -> Support {
        if op.dtype().is_float() {
            Support::Bits
        } else {
            Support::None
        }
    }
}

/// Generates the dispatch from the op list ([`ingot_core::for_each_op`]): `family::function`
/// of each op is its kernel here, `family::support` says for which dtypes it exists.
macro_rules! dispatch {
    ($( $(#[doc = $doc:literal])* $variant:ident $name:literal ($params:ty) $family:ident :: $func:ident in $section:ident $spec:literal; )*) => {
        /// What the kernel of `op` supports, from its family.
        fn support(op: &Op) -> Support {
            match op {
                $( Op::$variant(_) => $family::support(op), )*
            }
        }

        /// Runs the kernel of `op` (checked by the caller).
        fn launch<R: Runtime>(d: &Device<R>, op: &Op, inputs: &GpuTensors) -> Result<GpuTensors> {
            match op {
                $( Op::$variant(p) => $family::$func(d, p, inputs), )*
            }
        }
    };
}
ingot_core::for_each_op!(dispatch);

/// The checks of input values that the device path leaves to its caller (ids inside the
/// vocabulary, positions not negative, page tables, ...), one function per family that
/// has them (`check_host` in the family file). Run on the host before uploading.
const HOST_CHECKS: &[fn(&Op, &Tensors) -> Result<()>] =
    &[embedding::check_host, rope::check_host, copy::check_host, kv::check_host, attention::check_host, sampling::check_host];

/// Whether a kernel exists for this op and its dtypes, independent of any device.
/// Float compute kernels exist for f32, f16 and bf16; bf16 and f16 still need the
/// device's support at run time ([`GpuBackend::supports`]). `cast` and float
/// `embedding_lookup` move raw bits and need no float type support.
pub fn implements(op: &Op) -> bool {
    support(op) != Support::None
}

/// Whether `op` needs float arithmetic in its activation dtype on the device
/// (false for the ops that only move bits).
fn needs_float_type(op: &Op) -> bool {
    support(op) == Support::Float
}

/// The activation dtype a float kernel computes from: `x`'s for `quantized_matmul` (whose
/// `dtype()` names the weight format, decoded with integer operations on any device),
/// the op's dtype otherwise.
fn float_dtype(op: &Op) -> ingot_core::DType {
    match op {
        Op::QuantizedMatmul(p) => p.dtype,
        _ => op.dtype(),
    }
}

/// Records kernels and replays them ([`ingot_core::Device::begin_capture`]): CUDA graphs.
pub(crate) trait Recorder: Send + Sync {
    /// Starts recording the stream that `inputs` live on.
    fn begin(&self, inputs: &[&GpuTensor]) -> Result<Box<dyn std::any::Any + Send>>;
    /// Ends it, keeping `buffers`; `failed` says why it cannot be replayed.
    fn end(
        &self,
        started: Box<dyn std::any::Any + Send>,
        buffers: Vec<cubecl::server::Handle>,
        failed: Option<String>,
    ) -> Result<ingot_core::Capture>;
    /// Writes the inputs and replays.
    fn replay(&self, rec: &ingot_core::Capture, data: &[&[u8]]) -> Result<()>;
}

/// The GPU backend on one device of runtime `R`.
pub struct GpuBackend<R: Runtime> {
    dev: Device<R>,
    name: String,
    /// A vendor library serving dense f16/bf16 `gemm` (cuBLASLt on CUDA), when loaded.
    dense_gemm: Option<DenseGemm>,
    /// Which implementation serves dense f16/bf16 `gemm`, and why (for reports).
    gemm_path: String,
    /// Kernel recording, where the runtime has it (CUDA graphs).
    recorder: Option<Box<dyn Recorder>>,
    /// The recording in progress.
    started: std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

type DenseGemm = Box<dyn Fn(&ingot_core::GemmParams, &GpuTensors) -> Result<GpuTensors> + Send + Sync>;

impl<R: Runtime> GpuBackend<R> {
    /// A backend on `device`, reported under `name` (`gpu:wgpu`, `gpu:cuda`, ...).
    pub fn new(device: &R::Device, name: impl Into<String>) -> Self {
        GpuBackend {
            dev: Device::new(R::client(device)),
            name: name.into(),
            dense_gemm: None,
            gemm_path: "CubeCL kernel".into(),
            recorder: None,
            started: std::sync::Mutex::new(None),
        }
    }

    /// Which implementation serves dense f16/bf16 `gemm` on this backend.
    pub fn gemm_path(&self) -> &str {
        &self.gemm_path
    }

    /// The device this backend runs on.
    pub fn device(&self) -> &Device<R> {
        &self.dev
    }

    fn unsupported(&self, op: &Op) -> Error {
        Error::Unsupported { op: op.name(), backend: self.name.clone(), dtype: float_dtype(op) }
    }
}

impl<R: Runtime> ingot_core::Backend for GpuBackend<R> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn supports(&self, op: &Op) -> bool {
        implements(op) && (!needs_float_type(op) || self.dev.has_float(float_dtype(op)))
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

    fn guards_outputs(&self) -> bool {
        true
    }

    /// Every buffer the op's kernels write (outputs and scratch) lies between sentinel
    /// bytes, and the inputs are read back and compared afterwards. cuBLASLt's output (dense
    /// f16/bf16 `gemm` on CUDA) is allocated by its wrapper and not guarded.
    fn run_guarded(&self, op: &Op, inputs: &Tensors) -> Result<Tensors> {
        op.check_inputs(inputs)?;
        if !ingot_core::Backend::supports(self, op) {
            return Err(self.unsupported(op));
        }
        check_host_values(op, inputs)?;
        ingot_core::run_on_host_guarded(self, op, inputs)
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
        if let (Op::Gemm(p), Some(g)) = (op, &self.dense_gemm) {
            if matches!(p.dtype, ingot_core::DType::F16 | ingot_core::DType::BF16) {
                // cuBLASLt runs on its own stream, waiting for the device first.
                self.dev.unrecordable("cuBLASLt");
                return g(p, inputs);
            }
        }
        launch(&self.dev, op, inputs)
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

/// Checks of input values that the device path leaves to its caller ([`HOST_CHECKS`]).
fn check_host_values(op: &Op, inputs: &Tensors) -> Result<()> {
    HOST_CHECKS.iter().try_for_each(|check| check(op, inputs))
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
            super::device::wgpu_adapter_kind()?;
            // Creating the client enumerates the adapters again: quietly too.
            Some(super::device::without_wayland_noise(|| GpuBackend::new(&WgpuDevice::default(), name)))
        }

        /// Whether the default wgpu adapter is a hardware GPU (not a CPU adapter such as
        /// lavapipe); `None` when there is no adapter.
        pub fn wgpu_is_hardware() -> Option<bool> {
            super::device::wgpu_adapter_kind()
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
            let mut b = b?;
            // cuBLASLt for dense f16/bf16 GEMM; INGOT_NO_CUBLASLT=1 keeps the CubeCL kernel
            // (to check and time it).
            if std::env::var("INGOT_NO_CUBLASLT").is_ok_and(|v| v == "1") {
                b.gemm_path = "CubeCL kernel (INGOT_NO_CUBLASLT=1)".into();
            } else {
                match super::cublaslt::CublasLt::new() {
                    Ok(lt) => {
                        let client = b.dev.client.clone();
                        b.dense_gemm = Some(Box::new(move |p, inputs| lt.gemm(&client, p, inputs)));
                        b.gemm_path = "cuBLASLt".into();
                    }
                    Err(why) => b.gemm_path = format!("CubeCL kernel ({why})"),
                }
            }
            // CUDA graphs for recorded op sequences (compute capability 7.0 and later), opt-in
            // with INGOT_CUDA_GRAPHS=1 until the replay has been checked on a GPU (see
            // docs/gpu.md); otherwise every kernel is launched one by one.
            if std::env::var("INGOT_CUDA_GRAPHS").is_ok_and(|v| v == "1") && super::cuda_graph::can_record(0) {
                b.recorder = Some(Box::new(super::cuda_graph::CudaRecorder(b.dev.client.clone())));
            }
            Some(b)
        }
    }
}
#[cfg(feature = "cuda")]
pub use cuda_backend::CudaBackend;

impl ingot_core::DeviceTensor for GpuTensor {
    fn dtype(&self) -> ingot_core::DType {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn reshape(&self, shape: &[usize]) -> Result<Self> {
        ingot_core::check_reshape(&self.shape, shape)?;
        Ok(GpuTensor { handle: self.handle.clone(), dtype: self.dtype, shape: shape.to_vec() })
    }
}

/// The GPU backend as a device: tensors in device memory, every op a CubeCL kernel (or
/// cuBLASLt for dense f16/bf16 `gemm` on CUDA), see [`GpuBackend::run_device`].
impl<R: Runtime> ingot_core::Device for GpuBackend<R> {
    type Tensor = GpuTensor;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn supports(&self, op: &Op) -> bool {
        ingot_core::Backend::supports(self, op)
    }

    fn max_tensor_bytes(&self) -> u64 {
        self.dev.max_buffer_bytes()
    }

    fn upload(&self, t: &ingot_core::Tensor) -> Result<GpuTensor> {
        self.dev.upload_raw(t.dtype, &t.shape, &t.data)
    }

    fn upload_shared(
        &self,
        dtype: ingot_core::DType,
        shape: &[usize],
        bytes: &std::sync::Arc<dyn ingot_core::HostBytes>,
        range: std::ops::Range<usize>,
    ) -> Result<GpuTensor> {
        let all = bytes.host_bytes();
        ensure!(range.end <= all.len() && range.start <= range.end, "upload", "range {range:?} is outside {} bytes", all.len());
        self.dev.upload_raw(dtype, shape, &all[range])
    }

    fn download(&self, t: &GpuTensor) -> Result<ingot_core::Tensor> {
        self.dev.to_host("download", t)
    }

    fn zeros(&self, dtype: ingot_core::DType, shape: &[usize]) -> Result<GpuTensor> {
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let bytes = numel
            .and_then(|n| dtype.bytes_for(n))
            .ok_or_else(|| Error::invalid("zeros", format!("shape {shape:?} is not a whole number of {dtype} blocks, or too large")))?;
        ensure!(
            bytes as u64 <= self.dev.max_buffer_bytes(),
            "zeros",
            "{bytes} bytes for {dtype} {shape:?} exceed the device's largest buffer ({} bytes)",
            self.dev.max_buffer_bytes()
        );
        // Uploaded rather than filled by a kernel: allocation happens at load, not per step.
        let h = self.dev.host_copy(&vec![0u8; bytes.next_multiple_of(4).max(4)]);
        Ok(GpuTensor::new(h, dtype, shape))
    }

    fn run(&self, op: &Op, inputs: &GpuTensors) -> Result<GpuTensors> {
        self.run_device(op, inputs)
    }

    fn guards_outputs(&self) -> bool {
        true
    }

    fn run_guarded(&self, op: &Op, inputs: &GpuTensors) -> Result<GpuTensors> {
        self.dev.start_guard();
        let out = self.run_device(op, inputs);
        let checked = self.dev.guarded(op.name());
        let out = out?;
        checked?;
        Ok(out)
    }

    fn run_into(&self, op: &Op, inputs: &GpuTensors, outputs: &mut GpuTensors) -> Result<GpuTensors> {
        op.validate()?;
        if !ingot_core::Backend::supports(self, op) {
            return Err(self.unsupported(op));
        }
        check_device_inputs(op, inputs)?;
        ingot_core::check_into_outputs(op, outputs)?;
        for (name, t) in outputs.iter() {
            ensure!(
                t.handle.size() as usize >= t.bytes(),
                op.name(),
                "run_into: output '{name}' buffer is smaller than its shape {:?}",
                t.shape
            );
        }
        // The in-place forms, one function per family that has them.
        if let Some(done) = kv::run_into(&self.dev, op, inputs, outputs) {
            return done;
        }
        if let Some(done) = copy::run_into(&self.dev, op, inputs, outputs) {
            return done;
        }
        Err(Error::invalid(op.name(), "run_into: this op has no in-place form on the GPU backend"))
    }

    fn sync(&self) {
        self.dev.sync();
    }

    fn can_capture(&self) -> bool {
        self.recorder.is_some()
    }

    fn begin_capture(&self, inputs: &[&GpuTensor]) -> Result<()> {
        let r = self.recorder.as_ref().ok_or_else(|| Error::invalid("capture", format!("{} cannot record kernels", self.name)))?;
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        ensure!(started.is_none(), "capture", "a recording is already in progress on {}", self.name);
        *started = Some(r.begin(inputs)?);
        self.dev.start_capture_log();
        Ok(())
    }

    fn end_capture(&self) -> Result<ingot_core::Capture> {
        let r = self.recorder.as_ref().ok_or_else(|| Error::invalid("capture", format!("{} cannot record kernels", self.name)))?;
        let started = self.started.lock().unwrap_or_else(|e| e.into_inner()).take();
        let started = started.ok_or_else(|| Error::invalid("capture", "no recording is in progress"))?;
        let log = self.dev.take_capture_log();
        r.end(started, log.buffers, log.failed)
    }

    fn replay(&self, rec: &ingot_core::Capture, data: &[&[u8]]) -> Result<()> {
        let r = self.recorder.as_ref().ok_or_else(|| Error::invalid("capture", format!("{} cannot record kernels", self.name)))?;
        r.replay(rec, data)
    }
}
