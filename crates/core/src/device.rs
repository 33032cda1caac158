//! The device-resident op API: tensors that live on one device (host memory for the CPU
//! fast kernels, GPU memory for the CubeCL backends), and protocol ops run on them with no
//! host round trip between ops. A model's forward pass is written once against
//! [`Device`]; each backend implements it (`ingot_cpu::CpuDevice`, `ingot_gpu::GpuBackend`).
//!
//! The host [`crate::Backend::run`] that the golden protocol drives is a thin wrapper over
//! it: [`run_on_host`] uploads the inputs, runs the op and downloads the outputs. In the
//! spirit of candle's `BackendDevice`/`BackendStorage` and MLX's `eval_cpu`/`eval_gpu`.

use crate::{DType, Op, Result, Tensor, Tensors};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Bytes kept in host memory that a device may borrow without copying (a GGUF file's
/// mmap): the CPU device reads weights in place, a GPU device uploads them once.
pub trait HostBytes: Send + Sync {
    /// The bytes.
    fn host_bytes(&self) -> &[u8];
}

impl HostBytes for Vec<u8> {
    fn host_bytes(&self) -> &[u8] {
        self
    }
}

/// A tensor resident on a device: a handle to its storage, its dtype and logical shape.
/// Cloning is cheap and shares the storage.
pub trait DeviceTensor: Clone + Send + Sync {
    /// Element type (a float, an integer or a GGUF block format).
    fn dtype(&self) -> DType;
    /// Logical shape (for block formats the last dimension counts values, not blocks).
    fn shape(&self) -> &[usize];
    /// The same storage under another shape with the same number of elements.
    fn reshape(&self, shape: &[usize]) -> Result<Self>;
    /// Number of logical elements.
    fn numel(&self) -> usize {
        self.shape().iter().product()
    }
}

/// Named device tensors: the inputs or outputs of one op, as [`Tensors`] names host ones.
pub type DeviceTensors<T> = BTreeMap<String, T>;

/// A device that runs protocol ops on tensors it holds.
pub trait Device: Send + Sync {
    /// The device's tensor.
    type Tensor: DeviceTensor;

    /// Short name, as given to `--backend` (`cpu`, `gpu:wgpu`, `gpu:cuda`, ...).
    fn name(&self) -> String;

    /// Whether this device runs `op` (its dtypes included). [`Device::run`] returns
    /// [`crate::Error::Unsupported`] exactly when this is false.
    fn supports(&self, op: &Op) -> bool;

    /// The largest single tensor, in bytes, the device can hold (a model splits larger
    /// weight matrices by rows).
    fn max_tensor_bytes(&self) -> u64 {
        u64::MAX
    }

    /// Copies a host tensor onto the device.
    fn upload(&self, t: &Tensor) -> Result<Self::Tensor>;

    /// A tensor over `range` of `bytes` (weights in a mapped file): the CPU device borrows
    /// the bytes where they are; a GPU device copies them once.
    fn upload_shared(
        &self,
        dtype: DType,
        shape: &[usize],
        bytes: &Arc<dyn HostBytes>,
        range: std::ops::Range<usize>,
    ) -> Result<Self::Tensor>;

    /// Copies a device tensor back to the host (waiting for the work that writes it).
    fn download(&self, t: &Self::Tensor) -> Result<Tensor>;

    /// A new tensor of zeros.
    fn zeros(&self, dtype: DType, shape: &[usize]) -> Result<Self::Tensor>;

    /// Runs `op` on `inputs` (named as [`Op::inputs`]) and returns every tensor of
    /// [`Op::outputs`] as new device tensors.
    fn run(&self, op: &Op, inputs: &DeviceTensors<Self::Tensor>) -> Result<DeviceTensors<Self::Tensor>>;

    /// Runs `op` writing the outputs named in `outputs` into the given tensors instead of
    /// new ones (a KV pool's pages, for one). An output of the op may also be one of its
    /// inputs under the same storage (`append_paged_kv_cache` updating `k_cache` in place).
    /// Outputs the op has but `outputs` does not name are returned as new tensors.
    fn run_into(
        &self,
        op: &Op,
        inputs: &DeviceTensors<Self::Tensor>,
        outputs: &mut DeviceTensors<Self::Tensor>,
    ) -> Result<DeviceTensors<Self::Tensor>>;

    /// Waits for every queued op (a no-op where ops run synchronously).
    fn sync(&self) {}

    /// Whether [`Device::run_guarded`] places outputs between sentinel bytes.
    fn guards_outputs(&self) -> bool {
        false
    }

    /// [`Device::run`] with every output the device allocates for the op placed inside a
    /// larger buffer whose bytes before and after the tensor hold a sentinel pattern,
    /// checked when the op is done: [`crate::Error::OutOfBounds`] when the op wrote into
    /// them (ggml's `test-backend-ops` does the same). For checking kernels, not for
    /// models: each output costs a larger allocation and a scan. Devices that cannot
    /// guard ([`Device::guards_outputs`] is false) just run.
    fn run_guarded(&self, op: &Op, inputs: &DeviceTensors<Self::Tensor>) -> Result<DeviceTensors<Self::Tensor>> {
        self.run(op, inputs)
    }
}

/// The host form of an op call on `dev`: upload every input, run, download every output.
/// Backends implement [`crate::Backend::run`] with it.
pub fn run_on_host<D: Device + ?Sized>(dev: &D, op: &Op, inputs: &Tensors) -> Result<Tensors> {
    let on_dev: DeviceTensors<D::Tensor> = inputs.iter().map(|(k, t)| Ok((k.clone(), dev.upload(t)?))).collect::<Result<_>>()?;
    let out = dev.run(op, &on_dev)?;
    out.iter().map(|(k, t)| Ok((k.clone(), dev.download(t)?))).collect()
}

/// [`run_on_host`] through [`Device::run_guarded`], and the inputs downloaded again after
/// the op: [`crate::Error::OutOfBounds`] when the op wrote outside its outputs (into the
/// sentinels around them, or into an input). Backends implement
/// [`crate::Backend::run_guarded`] with it.
pub fn run_on_host_guarded<D: Device + ?Sized>(dev: &D, op: &Op, inputs: &Tensors) -> Result<Tensors> {
    let on_dev: DeviceTensors<D::Tensor> = inputs.iter().map(|(k, t)| Ok((k.clone(), dev.upload(t)?))).collect::<Result<_>>()?;
    let out = dev.run_guarded(op, &on_dev)?;
    let out: Tensors = out.iter().map(|(k, t)| Ok((k.clone(), dev.download(t)?))).collect::<Result<_>>()?;
    for (name, t) in &on_dev {
        let after = dev.download(t)?;
        if let Some(at) = after.data.iter().zip(&inputs[name].data).position(|(a, b)| a != b) {
            let n = after.data.iter().zip(&inputs[name].data).filter(|(a, b)| a != b).count();
            return Err(crate::Error::OutOfBounds {
                op: op.name(),
                msg: format!("the op wrote into its input '{name}': {n} bytes changed, the first at byte {at}"),
            });
        }
    }
    Ok(out)
}
