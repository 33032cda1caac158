//! Recording a sequence of kernels once and replaying it as a CUDA graph: a model's decode
//! step is ~300 small kernels whose launches, not their work, bound single-sequence decode;
//! one `cuGraphLaunch` replaces them.
//!
//! The kernels are launched through CubeCL as usual while CubeCL's stream is captured
//! (`cuStreamBeginCapture` in relaxed mode). CubeCL 0.10 keeps its streams private; the
//! vendored cubecl-cuda (`vendor/cubecl-cuda/INGOT-PATCH.md`) reports a buffer's stream in
//! `GpuResource::stream` and allocates synchronously while that stream is captured. Every
//! buffer allocated during the capture is kept by the recording (its kernels write them on
//! every replay), and so are the step's input buffers, which each replay overwrites before
//! launching the graph. The begin, end and replay calls run on CubeCL's device thread
//! (`ComputeClient::exclusive`), queued after the launches before them.

use crate::device::GpuTensor;
use cubecl::cuda::CudaRuntime;
use cubecl::prelude::*;
use cubecl::server::Handle;
use cudarc::driver::sys::{self, CUresult};
use ingot_core::{Capture, Error, Result};

const OP: &str = "capture";

/// A capture in progress: the stream being captured and the inputs' device addresses.
pub(crate) struct Started {
    stream: Stream,
    inputs: Vec<(u64, usize)>,
}

/// A CUDA stream handle that may cross to CubeCL's device thread.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stream(sys::CUstream);
// SAFETY: a CUstream is a driver handle usable from any thread of the process.
unsafe impl Send for Stream {}
unsafe impl Sync for Stream {}

impl Stream {
    /// The handle (a method, so closures capture the `Send` wrapper, not the pointer).
    fn raw(self) -> sys::CUstream {
        self.0
    }
}

/// An instantiated graph with every buffer its kernels touch that nothing else owns.
struct Graph {
    client: ComputeClient<CudaRuntime>,
    exec: sys::CUgraphExec,
    graph: sys::CUgraph,
    stream: Stream,
    /// Device address and bytes of each input the replay overwrites.
    inputs: Vec<(u64, usize)>,
    /// The inputs' and the recorded kernels' buffers, kept for the graph's lifetime.
    _buffers: Vec<Handle>,
}
// SAFETY: the graph handles are driver objects usable from any thread; they are only used
// on CubeCL's device thread (through `exclusive`), one call at a time.
unsafe impl Send for Graph {}
unsafe impl Sync for Graph {}

impl Drop for Graph {
    fn drop(&mut self) {
        let (exec, graph, stream) = (Raw(self.exec as usize), Raw(self.graph as usize), self.stream);
        // Wait for a replay in flight before freeing the graph and its buffers.
        let _ = self.client.exclusive(move || {
            // SAFETY: the handles were made by `end` and are destroyed once, here.
            unsafe {
                sys::cuStreamSynchronize(stream.raw());
                sys::cuGraphExecDestroy(exec.0 as sys::CUgraphExec);
                sys::cuGraphDestroy(graph.0 as sys::CUgraph);
            }
        });
    }
}

/// A driver handle carried as an address.
#[derive(Clone, Copy)]
struct Raw(usize);

fn check(what: &str, r: CUresult) -> Result<()> {
    if r == CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(Error::invalid(OP, format!("{what} failed: {r:?}")))
    }
}

/// Starts capturing the stream that `inputs` (made on this thread) live on.
pub(crate) fn begin(client: &ComputeClient<CudaRuntime>, inputs: &[&GpuTensor]) -> Result<Started> {
    let resource = |h: Handle| client.get_resource(h).map_err(|e| Error::invalid(OP, format!("device buffer: {e:?}")));
    // The stream this thread's launches go to: the one its new buffers come from.
    let probe = resource(client.empty(4))?;
    let stream = Stream(probe.resource().stream);
    if stream.0.is_null() {
        return Err(Error::invalid(OP, "the CUDA stream is unknown (cubecl-cuda without Ingot's patch)"));
    }
    let mut addrs = Vec::with_capacity(inputs.len());
    for t in inputs {
        let r = resource(t.handle.clone())?;
        if r.resource().stream != stream.0 {
            return Err(Error::invalid(OP, "an input lives on another thread's stream"));
        }
        addrs.push((r.resource().ptr, t.bytes()));
    }
    let r = client
        .exclusive(move || {
            // SAFETY: `stream` is CubeCL's live stream for this thread; relaxed mode lets the
            // device thread allocate (synchronously, see the patch) while it is captured.
            unsafe { sys::cuStreamBeginCapture_v2(stream.raw(), sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED) }
        })
        .map_err(|e| Error::invalid(OP, format!("device thread: {e:?}")))?;
    check("cuStreamBeginCapture", r)?;
    Ok(Started { stream, inputs: addrs })
}

/// Ends the capture; with `failed` (an op that cannot be recorded ran) the graph is
/// dropped and that is the error. `buffers` are kept for the graph's lifetime.
pub(crate) fn end(client: &ComputeClient<CudaRuntime>, s: Started, buffers: Vec<Handle>, failed: Option<String>) -> Result<Capture> {
    let stream = s.stream;
    let ended = client
        .exclusive(move || {
            let mut graph: sys::CUgraph = std::ptr::null_mut();
            // SAFETY: ends the capture `begin` started on this stream.
            let r = unsafe { sys::cuStreamEndCapture(stream.raw(), &mut graph) };
            (r, Raw(graph as usize))
        })
        .map_err(|e| Error::invalid(OP, format!("device thread: {e:?}")))?;
    let (r, graph) = (ended.0, ended.1 .0 as sys::CUgraph);
    let destroy = |g: sys::CUgraph| {
        if !g.is_null() {
            // SAFETY: `g` came from cuStreamEndCapture and is not used again.
            unsafe { sys::cuGraphDestroy(g) };
        }
    };
    if let Some(why) = failed {
        destroy(graph);
        return Err(Error::invalid(OP, why));
    }
    if let Err(e) = check("cuStreamEndCapture", r) {
        destroy(graph);
        return Err(e);
    }
    let mut exec: sys::CUgraphExec = std::ptr::null_mut();
    // SAFETY: `graph` is a valid captured graph; `exec` an out-pointer.
    if let Err(e) = check("cuGraphInstantiate", unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0) }) {
        destroy(graph);
        return Err(e);
    }
    Ok(Capture(Box::new(Graph { client: client.clone(), exec, graph, stream, inputs: s.inputs, _buffers: buffers })))
}

/// Overwrites the recording's inputs with `data` and launches the graph.
pub(crate) fn replay(client: &ComputeClient<CudaRuntime>, rec: &Capture, data: &[&[u8]]) -> Result<()> {
    let g = rec.0.downcast_ref::<Graph>().ok_or_else(|| Error::invalid(OP, "this recording belongs to another device"))?;
    if data.len() != g.inputs.len() {
        return Err(Error::invalid(OP, format!("{} inputs given, the recording has {}", data.len(), g.inputs.len())));
    }
    for (i, (bytes, (_, cap))) in data.iter().zip(&g.inputs).enumerate() {
        if bytes.len() > *cap {
            return Err(Error::invalid(OP, format!("input {i}: {} bytes for a buffer of {cap}", bytes.len())));
        }
    }
    let r = client
        .exclusive(|| {
            for (bytes, &(ptr, _)) in data.iter().zip(&g.inputs) {
                if bytes.is_empty() {
                    continue;
                }
                // SAFETY: `ptr` is a live buffer of the recording holding at least
                // `bytes.len()` bytes (checked above); the copy is queued on the stream
                // before the graph that reads it, after the replay before it.
                let r = unsafe { sys::cuMemcpyHtoDAsync_v2(ptr, bytes.as_ptr().cast(), bytes.len(), g.stream.0) };
                if r != CUresult::CUDA_SUCCESS {
                    return r;
                }
            }
            // SAFETY: `exec` is the instantiated graph, `stream` the stream it was captured on.
            unsafe { sys::cuGraphLaunch(g.exec, g.stream.0) }
        })
        .map_err(|e| Error::invalid(OP, format!("device thread: {e:?}")))?;
    check("cuGraphLaunch", r)
}

/// Whether CUDA device `ordinal` passes kernel arguments as grid constants in CubeCL 0.10
/// (compute capability 7.0 and later). Older devices get them through a host-to-device
/// copy per launch from a staging buffer that a graph would replay stale: no recording there.
pub(crate) fn can_record(ordinal: i32) -> bool {
    let mut dev: sys::CUdevice = 0;
    let mut major = 0i32;
    // SAFETY: out-pointers to locals; the driver is initialised (the client exists).
    unsafe {
        sys::cuDeviceGet(&mut dev, ordinal) == CUresult::CUDA_SUCCESS
            && sys::cuDeviceGetAttribute(&mut major, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
                == CUresult::CUDA_SUCCESS
    }
    .then_some(major >= 7)
    .unwrap_or(false)
}

/// [`crate::Recorder`] on CUDA.
pub(crate) struct CudaRecorder(pub(crate) ComputeClient<CudaRuntime>);

impl crate::Recorder for CudaRecorder {
    fn begin(&self, inputs: &[&GpuTensor]) -> Result<Box<dyn std::any::Any + Send>> {
        Ok(Box::new(begin(&self.0, inputs)?))
    }
    fn end(&self, started: Box<dyn std::any::Any + Send>, buffers: Vec<Handle>, failed: Option<String>) -> Result<Capture> {
        let s = started.downcast::<Started>().map_err(|_| Error::invalid(OP, "a capture begun elsewhere"))?;
        end(&self.0, *s, buffers, failed)
    }
    fn replay(&self, rec: &Capture, data: &[&[u8]]) -> Result<()> {
        replay(&self.0, rec, data)
    }
}
