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

/// Checks that `shape` keeps `from`'s element count (for [`DeviceTensor::reshape`]).
pub fn check_reshape(from: &[usize], shape: &[usize]) -> Result<()> {
    crate::ensure!(
        shape.iter().product::<usize>() == from.iter().product::<usize>(),
        "reshape",
        "shape {shape:?} has another element count than {from:?}"
    );
    Ok(())
}

/// Checks the tensors given to [`Device::run_into`]: each names an output of `op` and has
/// that output's dtype and shape.
pub fn check_into_outputs<T: DeviceTensor>(op: &Op, outputs: &DeviceTensors<T>) -> Result<()> {
    let specs = op.outputs();
    for (name, t) in outputs {
        let s = specs
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| crate::Error::invalid(op.name(), format!("run_into: the op has no output '{name}'")))?;
        crate::ensure!(
            t.dtype() == s.dtype && t.shape() == s.shape.as_slice(),
            op.name(),
            "run_into: output '{name}' is {} {:?}, the op writes {} {:?}",
            t.dtype(),
            t.shape(),
            s.dtype,
            s.shape
        );
    }
    Ok(())
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

    /// Runs `f`, a sequence of ops such as a whole forward pass, the way this device issues
    /// work best (the CPU device runs it on a worker of its thread pool, so each parallel
    /// op is handed out through the pool's queue); most devices just call `f`.
    fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R
    where
        Self: Sized,
    {
        f()
    }

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

    /// Whether this device can record a sequence of ops once and replay it
    /// ([`Device::begin_capture`]; CUDA graphs). Devices that cannot say false and the
    /// caller runs its ops one by one.
    fn can_capture(&self) -> bool {
        false
    }

    /// Starts recording: the ops run from now on (on this thread) are recorded, not run,
    /// until [`Device::end_capture`]. `inputs` are the tensors, made before the capture,
    /// that each replay overwrites in place ([`Device::replay`]). Everything the recorded
    /// ops allocate stays allocated for the recording's lifetime. An op that cannot be
    /// recorded (one that uploads host data, say) makes `end_capture` fail, nothing else.
    fn begin_capture(&self, inputs: &[&Self::Tensor]) -> Result<()> {
        let _ = inputs;
        Err(crate::Error::invalid("capture", format!("device {} cannot record ops", self.name())))
    }

    /// Ends the recording begun by [`Device::begin_capture`]. The recorded ops have not run:
    /// run them with [`Device::replay`].
    fn end_capture(&self) -> Result<Capture> {
        Err(crate::Error::invalid("capture", format!("device {} cannot record ops", self.name())))
    }

    /// Writes `data[i]` (at most that input's bytes) into input `i` of the recording, then
    /// runs the recorded ops once, queued after the work before it.
    fn replay(&self, recording: &Capture, data: &[&[u8]]) -> Result<()> {
        let _ = (recording, data);
        Err(crate::Error::invalid("capture", format!("device {} cannot record ops", self.name())))
    }
}

/// A recorded sequence of ops ([`Device::begin_capture`]), owned by its device's form of
/// it (a CUDA graph with the buffers it uses). Dropping it frees them.
pub struct Capture(pub Box<dyn std::any::Any + Send + Sync>);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, UnaryParams};
    use std::sync::Mutex;

    /// Host tensors behind a lock, as a device would hold them.
    #[derive(Clone)]
    struct Shared(Arc<Mutex<Tensor>>, Vec<usize>);

    impl DeviceTensor for Shared {
        fn dtype(&self) -> DType {
            self.0.lock().unwrap().dtype
        }
        fn shape(&self) -> &[usize] {
            &self.1
        }
        fn reshape(&self, shape: &[usize]) -> Result<Self> {
            Ok(Shared(self.0.clone(), shape.to_vec()))
        }
    }

    /// A device whose one kernel (relu as a copy) also scribbles on its input when told to.
    struct Scribbler(bool);

    impl Device for Scribbler {
        type Tensor = Shared;
        fn name(&self) -> String {
            "scribbler".into()
        }
        fn supports(&self, _: &Op) -> bool {
            true
        }
        fn upload(&self, t: &Tensor) -> Result<Shared> {
            Ok(Shared(Arc::new(Mutex::new(t.clone())), t.shape.clone()))
        }
        fn upload_shared(&self, _: DType, _: &[usize], _: &Arc<dyn HostBytes>, _: std::ops::Range<usize>) -> Result<Shared> {
            Err(Error::invalid("upload", "not here"))
        }
        fn download(&self, t: &Shared) -> Result<Tensor> {
            Ok(t.0.lock().unwrap().clone())
        }
        fn zeros(&self, dtype: DType, shape: &[usize]) -> Result<Shared> {
            let n = dtype.bytes_for(shape.iter().product()).unwrap_or(0);
            self.upload(&Tensor::from_bytes(dtype, shape.to_vec(), vec![0; n])?)
        }
        fn run(&self, _: &Op, inputs: &DeviceTensors<Shared>) -> Result<DeviceTensors<Shared>> {
            let x = inputs["input"].clone();
            let out = self.upload(&x.0.lock().unwrap())?;
            if self.0 {
                x.0.lock().unwrap().data[5] ^= 1;
            }
            Ok([("output".to_string(), out)].into())
        }
        fn run_into(&self, op: &Op, _: &DeviceTensors<Shared>, _: &mut DeviceTensors<Shared>) -> Result<DeviceTensors<Shared>> {
            Err(Error::invalid(op.name(), "no in-place form"))
        }
    }

    #[test]
    fn a_guarded_host_run_catches_a_write_into_an_input() {
        let op = Op::Relu(UnaryParams { num_elements: 4, dtype: DType::F32 });
        let inputs: Tensors = [("input".to_string(), Tensor::from_f32(DType::F32, vec![4], &[1.0, 2.0, 3.0, 4.0]))].into();
        assert_eq!(run_on_host_guarded(&Scribbler(false), &op, &inputs).unwrap()["output"], inputs["input"]);
        let e = run_on_host_guarded(&Scribbler(true), &op, &inputs).unwrap_err();
        assert!(matches!(e, Error::OutOfBounds { .. }), "{e}");
        assert_eq!(e.to_string(), "[relu] the op wrote into its input 'input': 1 bytes changed, the first at byte 5");
        // The unguarded form does not look.
        assert!(run_on_host(&Scribbler(true), &op, &inputs).is_ok());
    }
}
