//! Device plumbing shared by the op files: the client, which float types the device
//! can compute in, host ↔ device copies, and launch geometry.

use cubecl::ir::features::TypeUsage;
use cubecl::prelude::*;
use cubecl::server::Handle;
use ingot_core::{DType, Error, Result, Tensor};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Threads per cube for element-wise kernels and row reductions. 256 fits every
/// runtime's limits (wgpu guarantees 256 invocations per workgroup).
pub(crate) const BLOCK: u32 = 256;

/// Most cubes along one grid axis on wgpu (65535); larger grids use a second axis.
const MAX_CUBES_X: usize = 65535;

/// One device of runtime `R`: its client and what float types it computes in.
pub struct Device<R: Runtime> {
    pub(crate) client: ComputeClient<R>,
    f32_ok: bool,
    f16_ok: bool,
    bf16_ok: bool,
    plane_dim: Option<u32>,
    /// While `Some`, every buffer [`Device::alloc_bytes`] hands out lies between sentinel
    /// bytes, recorded here ([`Device::guarded`]).
    guard: Mutex<Option<Vec<Guarded>>>,
    /// While `Some`, kernels are being recorded ([`crate::Recorder`]): every buffer
    /// [`Device::alloc_bytes`] hands out is kept for the recording, and anything that
    /// cannot be recorded (a host copy, a read, a wait) is noted as the reason it fails.
    capture: Mutex<Option<CaptureLog>>,
}

/// What a recording in progress has allocated, and why it cannot be replayed (if so).
#[derive(Default)]
pub(crate) struct CaptureLog {
    pub(crate) buffers: Vec<Handle>,
    pub(crate) failed: Option<String>,
}

/// A buffer handed out between sentinel bytes: `whole` is the larger allocation, the
/// tensor's bytes are `start..start + len` of it.
pub(crate) struct Guarded {
    whole: Handle,
    start: usize,
    len: usize,
}

/// The byte around a guarded buffer (as the CPU device's sentinel).
pub const SENTINEL: u8 = 0xA5;

/// Sentinel bytes on each side of a guarded buffer of `len` bytes: its own size (a kernel
/// that writes one row or one tensor too many lands in it), at least 256 and at most
/// 1 MiB, a multiple of 256 (wgpu binds storage buffers at offsets aligned to 256 bytes).
fn guard_bytes(len: usize) -> usize {
    len.clamp(256, 1 << 20).next_multiple_of(256)
}

impl<R: Runtime> Device<R> {
    pub(crate) fn new(client: ComputeClient<R>) -> Self {
        // A type must be storable in a buffer and usable in arithmetic and conversions:
        // lavapipe lists no bf16, and a bf16 kernel there never writes its output.
        let f32_ok = full_use::<R, f32>(&client);
        let f16_ok = full_use::<R, half::f16>(&client);
        let bf16_ok = full_use::<R, half::bf16>(&client);
        // Plane (subgroup) kernels need the runtime's plane ops and one fixed plane width
        // (32 on NVIDIA); CPU adapters such as lavapipe report none and get the shared-memory
        // paths. INGOT_GPU_NO_PLANE=1 forces those paths on any device, to check them there.
        let props = client.properties();
        let hw = &props.hardware;
        let forced_off = std::env::var("INGOT_GPU_NO_PLANE").is_ok_and(|v| v == "1");
        let plane_dim = (!forced_off
            && props.features.plane.contains(cubecl::ir::features::Plane::Ops)
            && hw.plane_size_min == hw.plane_size_max
            && hw.plane_size_max.is_power_of_two()
            && (8..=BLOCK).contains(&hw.plane_size_max))
        .then_some(hw.plane_size_max);
        Device { client, f32_ok, f16_ok, bf16_ok, plane_dim, guard: Mutex::new(None), capture: Mutex::new(None) }
    }

    /// The plane (subgroup) width when kernels may use plane operations, `None` when they
    /// must take their shared-memory path. Kernels choose at launch from this, never from
    /// an assumed width.
    pub fn plane_dim(&self) -> Option<u32> {
        self.plane_dim
    }

    /// The largest buffer the device can hold and bind, in bytes (lavapipe: 128 MiB).
    pub fn max_buffer_bytes(&self) -> u64 {
        self.client.properties().memory.max_page_size
    }

    /// The CubeCL client, for callers that launch their own kernels.
    pub fn client(&self) -> &ComputeClient<R> {
        &self.client
    }

    /// Whether float kernels can run in `dtype` on this device.
    pub fn has_float(&self, dtype: DType) -> bool {
        match dtype {
            DType::F32 => self.f32_ok,
            DType::F16 => self.f16_ok,
            DType::BF16 => self.bf16_ok,
            _ => false,
        }
    }

    /// Starts a recording's log ([`Device::capture`]).
    pub(crate) fn start_capture_log(&self) {
        *self.capture.lock().unwrap_or_else(|e| e.into_inner()) = Some(CaptureLog::default());
    }

    /// Ends the recording's log and returns it (empty when none was started).
    pub(crate) fn take_capture_log(&self) -> CaptureLog {
        self.capture.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default()
    }

    /// Notes, while recording, that `what` happened and cannot be recorded; true if so.
    pub(crate) fn unrecordable(&self, what: &str) -> bool {
        let mut log = self.capture.lock().unwrap_or_else(|e| e.into_inner());
        match log.as_mut() {
            Some(l) => {
                l.failed.get_or_insert_with(|| format!("{what} cannot be recorded"));
                true
            }
            None => false,
        }
    }

    /// A new device buffer holding `bytes` (every host → device copy goes through here).
    pub(crate) fn host_copy(&self, bytes: &[u8]) -> Handle {
        self.unrecordable("a host-to-device copy");
        self.client.create_from_slice(bytes)
    }

    /// Copy a host tensor's bytes to a new device buffer (padded to whole u32 words,
    /// so kernels that read 16-bit data as words stay in bounds).
    pub(crate) fn upload(&self, t: &Tensor) -> Handle {
        if t.data.len() % 4 == 0 {
            self.host_copy(&t.data)
        } else {
            let mut v = t.data.clone();
            v.resize(t.data.len().next_multiple_of(4), 0);
            self.host_copy(&v)
        }
    }

    /// Copy raw bytes (a weight matrix as the file stores it, say) to a new device tensor of
    /// `dtype` and `shape`; the byte count must be the shape's.
    pub fn upload_raw(&self, dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<GpuTensor> {
        let numel: usize = shape.iter().product();
        let want =
            dtype.bytes_for(numel).ok_or_else(|| Error::invalid("upload", format!("{numel} elements are not whole blocks of {dtype}")))?;
        if bytes.len() != want {
            return Err(Error::invalid("upload", format!("{} bytes for {dtype} {shape:?}, which needs {want}", bytes.len())));
        }
        let h = if bytes.len() % 4 == 0 && !bytes.is_empty() {
            self.host_copy(bytes)
        } else {
            let mut v = bytes.to_vec();
            v.resize(bytes.len().next_multiple_of(4).max(4), 0);
            self.host_copy(&v)
        };
        Ok(GpuTensor::new(h, dtype, shape))
    }

    /// Upload f32 values as a device tensor of `shape`.
    pub fn upload_f32_tensor(&self, shape: &[usize], v: &[f32]) -> Result<GpuTensor> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.upload_raw(DType::F32, shape, &bytes)
    }

    /// Upload i32 values as a device tensor of `shape`.
    pub fn upload_i32_tensor(&self, shape: &[usize], v: &[i32]) -> Result<GpuTensor> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.upload_raw(DType::I32, shape, &bytes)
    }

    /// Upload f32 values.
    pub(crate) fn upload_f32(&self, v: &[f32]) -> Handle {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.host_copy(&bytes)
    }

    /// A new uninitialized buffer for `numel` elements of `dtype` (rounded up to whole words).
    pub(crate) fn alloc(&self, dtype: DType, numel: usize) -> Handle {
        self.alloc_bytes(dtype.bytes_for(numel).unwrap_or(0))
    }

    /// A new uninitialized buffer of `bytes` (rounded up to whole words, at least one): every
    /// output and scratch buffer a kernel writes comes from here. Between
    /// [`Device::start_guard`] and [`Device::guarded`] it is a window into a larger buffer
    /// filled with [`SENTINEL`] bytes.
    pub(crate) fn alloc_bytes(&self, bytes: usize) -> Handle {
        let len = bytes.max(4).next_multiple_of(4);
        if let Some(log) = self.capture.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            let h = self.client.empty(len);
            log.buffers.push(h.clone());
            return h;
        }
        let mut guard = self.guard.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = guard.as_mut() else {
            return self.client.empty(len);
        };
        let mut pad = guard_bytes(len);
        let max = self.max_buffer_bytes() as usize;
        if len + 2 * pad > max {
            pad = 256;
        }
        if len + 2 * pad > max {
            return self.client.empty(len);
        }
        // The tail pad also covers the bytes up to the next multiple of 256.
        let tail = pad + (len.next_multiple_of(256) - len);
        let whole = self.host_copy(&vec![SENTINEL; pad + len + tail]);
        list.push(Guarded { whole: whole.clone(), start: pad, len });
        whole.offset_start(pad as u64).offset_end(tail as u64)
    }

    /// From now on, buffers from [`Device::alloc_bytes`] lie between sentinel bytes, until
    /// [`Device::guarded`]. Device-wide: meant for checking one op at a time (`ingot golden
    /// check`), not while a model runs on the device.
    pub(crate) fn start_guard(&self) {
        *self.guard.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    }

    /// Stops guarding and checks the sentinels of every buffer guarded since
    /// [`Device::start_guard`] (waiting for the kernels): [`Error::OutOfBounds`] naming the
    /// first byte written outside a buffer.
    pub(crate) fn guarded(&self, op: &'static str) -> Result<()> {
        let list = self.guard.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
        for (i, g) in list.into_iter().enumerate() {
            let bytes = self.client.read_one(g.whole).map_err(|e| Error::invalid(op, format!("device read failed: {e:?}")))?;
            let end = g.start + g.len;
            let before = bytes[..g.start].iter().rposition(|&b| b != SENTINEL);
            let after = bytes[end..].iter().position(|&b| b != SENTINEL);
            let n = bytes[..g.start].iter().chain(&bytes[end..]).filter(|&&b| b != SENTINEL).count();
            let at = match (before, after) {
                (Some(b), _) => format!("{} bytes before its start", g.start - b),
                (None, Some(a)) => format!("{} bytes after its end", a + 1),
                (None, None) => continue,
            };
            return Err(Error::OutOfBounds {
                op,
                msg: format!("device buffer {i} of the op ({} bytes): {n} sentinel bytes changed, the nearest {at}", g.len),
            });
        }
        Ok(())
    }

    /// Read a buffer back as a tensor of `dtype` and `shape`.
    pub(crate) fn download(&self, op: &'static str, h: Handle, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        let want = dtype.bytes_for(numel).unwrap_or(0);
        if self.unrecordable("a device-to-host read") {
            return Err(Error::invalid(op, "a device buffer cannot be read while kernels are being recorded"));
        }
        let bytes = self.client.read_one(h).map_err(|e| Error::invalid(op, format!("device read failed: {e:?}")))?;
        if bytes.len() < want {
            return Err(Error::invalid(op, format!("device returned {} bytes, expected {want}", bytes.len())));
        }
        Tensor::from_bytes(dtype, shape.to_vec(), bytes[..want].to_vec())
    }
}

/// A tensor in device memory: a buffer of whole u32 words (16-bit and block data padded at
/// the end) with the dtype and shape of the elements it holds. Cloning shares the buffer.
#[derive(Clone, Debug)]
pub struct GpuTensor {
    pub handle: Handle,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// Named device tensors, as [`ingot_core::Tensors`] names host ones.
pub type GpuTensors = BTreeMap<String, GpuTensor>;

impl GpuTensor {
    /// A device tensor over `handle`, which must hold at least `dtype.bytes_for(numel)` bytes.
    pub fn new(handle: Handle, dtype: DType, shape: &[usize]) -> GpuTensor {
        GpuTensor { handle, dtype, shape: shape.to_vec() }
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Bytes of the elements (not counting the padding to whole words).
    pub fn bytes(&self) -> usize {
        self.dtype.bytes_for(self.numel()).unwrap_or(0)
    }
    /// Whole u32 words of the buffer that hold the elements (what a kernel over `Array<u32>`
    /// may read).
    pub fn words(&self) -> usize {
        self.bytes().div_ceil(4)
    }
}

impl<R: Runtime> Device<R> {
    /// Copy a host tensor to the device.
    pub fn to_device(&self, t: &Tensor) -> GpuTensor {
        GpuTensor { handle: self.upload(t), dtype: t.dtype, shape: t.shape.clone() }
    }
    /// Copy a device tensor back to the host (waits for the kernels writing it).
    pub fn to_host(&self, op: &'static str, t: &GpuTensor) -> Result<Tensor> {
        self.download(op, t.handle.clone(), t.dtype, &t.shape)
    }
    /// Wait until every kernel queued on this device has finished.
    pub fn sync(&self) {
        if self.unrecordable("waiting for the device") {
            return;
        }
        cubecl::future::block_on(self.client.sync()).ok();
    }
}

/// Whether `P` can be stored in buffers, computed with and converted on this device.
fn full_use<R: Runtime, P: CubePrimitive>(client: &ComputeClient<R>) -> bool {
    let u = P::supported_uses(client);
    u.contains(TypeUsage::Buffer) && u.contains(TypeUsage::Arithmetic) && u.contains(TypeUsage::Conversion)
}

/// An input tensor by name (present: the inputs were checked first).
pub(crate) fn input<'a>(op: &'static str, inputs: &'a GpuTensors, name: &str) -> Result<&'a GpuTensor> {
    inputs.get(name).ok_or_else(|| Error::invalid(op, format!("missing input '{name}'")))
}

/// Grid for `n` independent work items of `BLOCK` threads each cube: (count, dim).
/// The kernel recovers the item index with [`crate::device::linear_pos`].
pub(crate) fn grid_1d(n: usize) -> (CubeCount, CubeDim) {
    let cubes = n.div_ceil(BLOCK as usize).max(1);
    grid_cubes(cubes, BLOCK)
}

/// Grid of `cubes` cubes of `threads` threads, folded onto two axes when needed.
pub(crate) fn grid_cubes(cubes: usize, threads: u32) -> (CubeCount, CubeDim) {
    let x = cubes.min(MAX_CUBES_X);
    let y = cubes.div_ceil(x);
    (CubeCount::Static(x as u32, y as u32, 1), CubeDim::new_1d(threads))
}

/// The linear index of this cube in a grid made by [`grid_cubes`].
#[cube]
pub(crate) fn cube_index() -> usize {
    CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize
}

/// The linear index of this thread in a grid made by [`grid_1d`].
#[cube]
pub(crate) fn linear_pos() -> usize {
    cube_index() * CUBE_DIM_X as usize + UNIT_POS_X as usize
}

/// Run `$body` with `$F` bound to the Rust float type of `$dt` (f32, f16 or bf16).
macro_rules! with_float {
    ($dt:expr, $F:ident => $body:expr) => {
        match $dt {
            ingot_core::DType::F16 => {
                type $F = half::f16;
                $body
            }
            ingot_core::DType::BF16 => {
                type $F = half::bf16;
                $body
            }
            _ => {
                type $F = f32;
                $body
            }
        }
    };
}
pub(crate) use with_float;

/// Sum `value` over the cube's threads through shared memory (no plane operations);
/// every thread gets the total. `BLOCK` threads, a power of two.
#[cube]
pub(crate) fn cube_sum(value: f32) -> f32 {
    let mut smem = SharedMemory::<f32>::new(BLOCK as usize);
    let t = UNIT_POS_X as usize;
    smem[t] = value;
    sync_cube();
    let mut stride: usize = 128;
    while stride > 0 {
        if t < stride {
            smem[t] = smem[t] + smem[t + stride];
        }
        sync_cube();
        stride /= 2;
    }
    let total = smem[0];
    sync_cube();
    total
}

/// The maximum of `value` over the cube's threads through shared memory; every thread
/// gets it. NaN propagates (a NaN anywhere gives NaN).
#[cube]
pub(crate) fn cube_max(value: f32) -> f32 {
    let mut smem = SharedMemory::<f32>::new(BLOCK as usize);
    let t = UNIT_POS_X as usize;
    smem[t] = value;
    sync_cube();
    let mut stride: usize = 128;
    while stride > 0 {
        if t < stride {
            let a = smem[t];
            let b = smem[t + stride];
            smem[t] = select(a.is_nan() || a > b, a, b);
        }
        sync_cube();
        stride /= 2;
    }
    let total = smem[0];
    sync_cube();
    total
}

/// [`cube_sum`] with plane operations when `plane` (the device has them, see
/// [`Device::plane_dim`]): a plane sum, one partial per plane through shared memory, and
/// every thread adds the partials. The plane width is read at run time (`PLANE_DIM`).
#[cube]
pub(crate) fn cube_sum_p(value: f32, #[comptime] plane: bool) -> f32 {
    let mut total = 0.0f32;
    if plane {
        let mut smem = SharedMemory::<f32>::new(BLOCK as usize);
        let s = plane_sum(value);
        if UNIT_POS_PLANE == 0 {
            smem[(UNIT_POS_X / PLANE_DIM) as usize] = s;
        }
        sync_cube();
        for i in 0..CUBE_DIM_X / PLANE_DIM {
            total += smem[i as usize];
        }
        sync_cube();
    } else {
        total = cube_sum(value);
    }
    total
}

/// Which combination a u32 cube reduction applies.
#[derive(CubeType, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum U32Op {
    Sum,
    Max,
    Min,
}

#[cube]
fn combine_u32(a: u32, b: u32, #[comptime] op: U32Op) -> u32 {
    match op {
        U32Op::Sum => a + b,
        U32Op::Max => select(a > b, a, b),
        U32Op::Min => select(a < b, a, b),
    }
}

/// Reduce a u32 over the cube's threads (sum, max or min; every thread gets the result),
/// through plane operations when `plane`, else through shared memory. `BLOCK` threads.
/// A sum must not exceed `u32::MAX`.
#[cube]
pub(crate) fn cube_reduce_u32(value: u32, #[comptime] op: U32Op, #[comptime] plane: bool) -> u32 {
    let mut smem = SharedMemory::<u32>::new(BLOCK as usize);
    let t = UNIT_POS_X as usize;
    let total = if plane {
        let s = match op {
            U32Op::Sum => plane_sum(value),
            U32Op::Max => plane_max(value),
            U32Op::Min => plane_min(value),
        };
        if UNIT_POS_PLANE == 0 {
            smem[(UNIT_POS_X / PLANE_DIM) as usize] = s;
        }
        sync_cube();
        let mut acc = smem[0];
        for i in 1..CUBE_DIM_X / PLANE_DIM {
            acc = combine_u32(acc, smem[i as usize], op);
        }
        acc
    } else {
        smem[t] = value;
        sync_cube();
        let mut stride: usize = 128;
        while stride > 0 {
            if t < stride {
                smem[t] = combine_u32(smem[t], smem[t + stride], op);
            }
            sync_cube();
            stride /= 2;
        }
        smem[0]
    };
    sync_cube();
    total
}

/// Whether wgpu finds an adapter of the backend CubeCL will use (Metal on macOS, Vulkan
/// elsewhere): `Some(true)` for a hardware GPU, `Some(false)` for a CPU adapter (lavapipe),
/// `None` for none. CubeCL panics, in its server thread, when there is none; ask first.
#[cfg(feature = "wgpu")]
pub(crate) fn wgpu_adapter_kind() -> Option<bool> {
    let backend = if cfg!(target_os = "macos") { wgpu::Backends::METAL } else { wgpu::Backends::VULKAN };
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor { backends: backend, ..wgpu::InstanceDescriptor::new_without_display_handle() });
    let options = wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
    };
    let adapter = without_wayland_noise(|| cubecl::future::block_on(instance.request_adapter(&options)).ok())?;
    Some(adapter.get_info().device_type != wgpu::DeviceType::Cpu)
}

/// Runs `f` (a Vulkan adapter enumeration) so that it prints nothing on a machine without a
/// desktop session. Mesa's device-select layer, an implicit Vulkan layer, calls
/// `wl_display_connect` while devices are enumerated, and libwayland prints "error:
/// XDG_RUNTIME_DIR is invalid or not set in the environment." (twice: once per
/// `vkEnumeratePhysicalDevices` call) when that variable is unset or not an absolute path.
/// For `f`, it is set to a fresh empty private directory, where no compositor listens, so
/// the connection fails quietly; then it is removed again. Set and valid, it is left alone.
#[cfg(all(feature = "wgpu", target_os = "linux"))]
pub(crate) fn without_wayland_noise<R>(f: impl FnOnce() -> R) -> R {
    const VAR: &str = "XDG_RUNTIME_DIR";
    if std::env::var_os(VAR).is_some_and(|d| std::path::Path::new(&d).is_absolute()) {
        return f();
    }
    let old = std::env::var_os(VAR);
    let dir = std::env::temp_dir().join(format!("ingot-vulkan-probe-{}", std::process::id()));
    let made = {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&dir).is_ok()
    };
    if !made || !dir.is_absolute() {
        return f();
    }
    // The environment is read by C code here (the Vulkan loader, libwayland) on this thread;
    // the process's other threads at this point (idle CPU workers) do not read it.
    std::env::set_var(VAR, &dir);
    let r = f();
    match old {
        Some(v) => std::env::set_var(VAR, v),
        None => std::env::remove_var(VAR),
    }
    let _ = std::fs::remove_dir(&dir);
    r
}

#[cfg(all(feature = "wgpu", not(target_os = "linux")))]
pub(crate) fn without_wayland_noise<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(all(test, feature = "wgpu"))]
mod guard_tests {
    use super::*;
    use crate::WgpuBackend;

    /// Writes 7 into the first `n` words.
    #[cube(launch_unchecked)]
    fn fill_words(dst: &mut Array<u32>, n: usize) {
        let i = linear_pos();
        if i < n {
            dst[i] = 7u32;
        }
    }

    fn fill<R: Runtime>(d: &Device<R>, h: &Handle, words: usize) {
        let (count, dim) = grid_1d(words);
        // SAFETY: the buffer behind `h` holds at least `words` words (the callers' buffers
        // are 40 bytes or larger); thread i < words writes word i.
        unsafe { fill_words::launch_unchecked::<R>(&d.client, count, dim, ArrayArg::from_raw_parts(h.clone(), words), words) }
    }

    fn backend() -> Option<WgpuBackend> {
        let b = WgpuBackend::wgpu("gpu:wgpu");
        if b.is_none() {
            let required = std::env::var("INGOT_REQUIRE_GPU").is_ok_and(|v| v == "1");
            assert!(!required, "INGOT_REQUIRE_GPU=1 but no wgpu adapter was found (install mesa-vulkan-drivers for lavapipe)");
            eprintln!("skipped: no wgpu adapter (install mesa-vulkan-drivers for lavapipe, or set INGOT_REQUIRE_GPU=1 to fail)");
        }
        b
    }

    #[test]
    fn guarded_buffers_catch_writes_outside_them() {
        let Some(b) = backend() else { return };
        let d = b.device();

        // A kernel that writes exactly its buffer: clean, and the data reads back through
        // the window.
        d.start_guard();
        let h = d.alloc_bytes(40);
        fill(d, &h, 10);
        d.guarded("fill").expect("a write inside the buffer is clean");
        let t = d.download("fill", h, DType::U32, &[10]).unwrap();
        assert_eq!(t.data, [7u8, 0, 0, 0].repeat(10));

        // The same kernel handed the larger buffer (as a kernel with a wrong base offset
        // would write): the bytes before the window change, and the check names them.
        d.start_guard();
        let _h = d.alloc_bytes(40);
        let whole = d.guard.lock().unwrap().as_ref().unwrap()[0].whole.clone();
        fill(d, &whole, 10);
        let e = d.guarded("fill").unwrap_err();
        assert!(matches!(e, Error::OutOfBounds { .. }), "{e}");
        assert!(e.to_string().contains("40 sentinel bytes changed"), "{e}");

        // Past the end: the window's last word and one more.
        d.start_guard();
        let _h = d.alloc_bytes(40);
        let g = d.guard.lock().unwrap().as_ref().unwrap()[0].whole.clone();
        let past = g.offset_start(256);
        fill(d, &past, 11);
        let e = d.guarded("fill").unwrap_err();
        assert!(e.to_string().contains("4 sentinel bytes changed, the nearest 1 bytes after its end"), "{e}");

        // Guarding is off again: a plain buffer of the size asked for.
        assert!(d.guard.lock().unwrap().is_none());
        let h = d.alloc_bytes(40);
        assert!(h.size_in_used() == 40 && h.size() < 256, "{h:?}");
    }
}
