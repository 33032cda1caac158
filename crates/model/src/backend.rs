//! Which backend runs a model: the CPU fast path, or a GPU through one of the runtimes
//! compiled in (cargo features `wgpu`, `cuda`, `metal` of this crate).

#[cfg(feature = "gpu")]
use crate::net::Net;
use crate::net::Runner;
use crate::{Config, Error, Result};
use ingot_gguf::GgufFile;
use std::sync::Arc;

/// Where a model's forward passes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// The CPU fast path.
    Cpu,
    /// The best device there is: CUDA, else a hardware GPU through wgpu, else the CPU.
    Auto,
    /// Any GPU runtime compiled in (CUDA first, then wgpu), CPU adapters included; an error
    /// when there is none.
    Gpu,
    /// wgpu: Vulkan (Mesa's lavapipe too), DX12, WebGPU.
    Wgpu,
    /// CUDA (NVRTC, libraries loaded at run time).
    Cuda,
    /// wgpu with the MSL compiler, on macOS.
    Metal,
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "cpu" => BackendKind::Cpu,
            "auto" => BackendKind::Auto,
            "gpu" => BackendKind::Gpu,
            "gpu:wgpu" => BackendKind::Wgpu,
            "gpu:cuda" => BackendKind::Cuda,
            "gpu:metal" => BackendKind::Metal,
            other => {
                return Err(backend_err(format!("unknown backend '{other}' (expected auto, cpu, gpu, gpu:cuda, gpu:wgpu or gpu:metal)")))
            }
        })
    }
}

fn backend_err(msg: String) -> Error {
    Error::Model { arch: "backend".into(), msg }
}

/// The GPU runtimes compiled into this build, by backend name.
pub fn compiled_gpu_backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "cuda") {
        v.push("gpu:cuda");
    }
    if cfg!(feature = "wgpu") {
        v.push("gpu:wgpu");
    }
    if cfg!(feature = "metal") {
        v.push("gpu:metal");
    }
    v
}

fn not_built(name: &str) -> Error {
    let have: Vec<&str> = ["cpu"].into_iter().chain(compiled_gpu_backends()).collect();
    backend_err(format!(
        "unsupported: backend '{name}' is not built into this ingot (available: {}; rebuild with --features {})",
        have.join(", "),
        &name[4..]
    ))
}

/// Whether this build can try `kind` at all (the runtime compiled in, Metal on macOS), so a
/// caller can refuse a flag before loading a model. Finding a device is [`Model::on_backend`]'s.
///
/// [`Model::on_backend`]: crate::Model::on_backend
pub fn check_built(kind: BackendKind) -> Result<()> {
    match kind {
        BackendKind::Cpu | BackendKind::Auto => Ok(()),
        BackendKind::Gpu if compiled_gpu_backends().is_empty() => {
            Err(backend_err("unsupported: backend 'gpu': this ingot was built without GPU backends (available: cpu)".into()))
        }
        BackendKind::Gpu => Ok(()),
        BackendKind::Wgpu if !cfg!(feature = "wgpu") => Err(not_built("gpu:wgpu")),
        BackendKind::Cuda if !cfg!(feature = "cuda") => Err(not_built("gpu:cuda")),
        BackendKind::Metal if !cfg!(target_os = "macos") => {
            Err(backend_err("unsupported: backend 'gpu:metal' runs on macOS only; use gpu:wgpu (Vulkan) here".into()))
        }
        BackendKind::Metal if !cfg!(feature = "metal") => Err(not_built("gpu:metal")),
        _ => Ok(()),
    }
}

/// The device half for `kind` (`None`: stay on the CPU the model was loaded on). Without
/// GPU runtimes compiled in, the CPU or an error naming what is missing.
#[cfg(not(feature = "gpu"))]
pub(crate) fn open(kind: BackendKind, _file: &Arc<GgufFile>, _config: &Config) -> Result<Option<Box<dyn Runner>>> {
    check_built(kind)?;
    Ok(None)
}

/// The device half for `kind`: the model's weights on that device and the one forward pass
/// over them (`None`: stay on the CPU the model was loaded on).
#[cfg(feature = "gpu")]
pub(crate) fn open(kind: BackendKind, file: &Arc<GgufFile>, config: &Config) -> Result<Option<Box<dyn Runner>>> {
    type Opened = Option<Box<dyn Runner>>;
    #[allow(unused_variables)]
    let build = |name: &str| -> Result<Opened> {
        #[cfg(feature = "cuda")]
        if name == "gpu:cuda" {
            return match ingot_gpu::CudaBackend::cuda(name) {
                Some(be) => Ok(Some(Box::new(Net::load(be, file, config)?))),
                None => Ok(None),
            };
        }
        #[cfg(feature = "wgpu")]
        if name == "gpu:wgpu" || name == "gpu:metal" {
            return match ingot_gpu::WgpuBackend::wgpu(name) {
                Some(be) => Ok(Some(Box::new(Net::load(be, file, config)?))),
                None => Ok(None),
            };
        }
        Err(not_built(name))
    };
    check_built(kind)?;
    let no_device = |name: &str| backend_err(format!("backend '{name}': no device found (is a Vulkan driver or CUDA installed?)"));
    match kind {
        BackendKind::Cpu => Ok(None),
        BackendKind::Cuda => build("gpu:cuda")?.map(Some).ok_or_else(|| no_device("gpu:cuda")),
        BackendKind::Wgpu => build("gpu:wgpu")?.map(Some).ok_or_else(|| no_device("gpu:wgpu")),
        BackendKind::Metal => build("gpu:metal")?.map(Some).ok_or_else(|| no_device("gpu:metal")),
        BackendKind::Gpu | BackendKind::Auto => {
            #[cfg(feature = "cuda")]
            if let Some(g) = build("gpu:cuda")? {
                return Ok(Some(g));
            }
            #[cfg(feature = "wgpu")]
            {
                // Auto takes a hardware GPU only: a CPU adapter (lavapipe) is slower than the CPU path.
                let usable = match ingot_gpu::WgpuBackend::wgpu_is_hardware() {
                    Some(hw) => hw || kind == BackendKind::Gpu,
                    None => false,
                };
                if usable {
                    if let Some(g) = build("gpu:wgpu")? {
                        return Ok(Some(g));
                    }
                }
            }
            if kind == BackendKind::Auto {
                Ok(None)
            } else {
                Err(backend_err(format!("backend 'gpu': no device found for {}", compiled_gpu_backends().join(", "))))
            }
        }
    }
}
