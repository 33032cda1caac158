//! Metal Shading Language for every kernel of the crate, emitted on Linux (no Mac here).
//!
//! CubeCL 0.10 cannot define a kernel without a device: the `#[cube(launch)]` kernel
//! struct holds a `ComputeClient` and its `define()` reads the client's device properties.
//! But the wgpu server picks its compiler from the backend named in its `WgpuSetup`, not
//! from the adapter: a setup on the local Vulkan adapter (lavapipe) labelled
//! `Backend::Metal` compiles every launched kernel with CubeCL's MSL compiler
//! (`cubecl/wgpu-msl`). On Linux wgpu cannot take MSL, so the server then hands the source
//! to its WGSL path, logs it (`log` trace, "compiling WGSL module `name`"), and the module
//! fails to build, which only puts the stream in error: nothing runs and nothing is read.
//!
//! The test runs every case of the standard suite (every op × dtype the backend
//! implements, on the shapes and flags the protocol checks) through `run_device` on such a
//! device, captures the MSL from the log, and checks that each op emitted at least one
//! kernel and that each source looks like a Metal compute kernel. The kernels are defined
//! with lavapipe's properties: no planes (so the plane-free paths), no bf16 (bf16-only
//! variants are not emitted), no cmma. Whether Apple's compiler accepts the source is not
//! checked (no Metal toolchain here).
#![cfg(feature = "metal")]

use cubecl::wgpu::{init_device, RuntimeOptions, WgpuSetup};
use ingot_core::Backend;
use ingot_golden::{generate_inputs, suite, Flags};
use ingot_gpu::{GpuTensors, WgpuBackend};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// (entry point, source) of every module the server tried to build.
static SOURCES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target().starts_with("cubecl_wgpu")
    }
    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let msg = r.args().to_string();
        // "[cubecl-wgpu] compiling WGSL module `NAME`\nSOURCE"
        if let Some(rest) = msg.strip_prefix("[cubecl-wgpu] compiling WGSL module `") {
            if let Some((name, source)) = rest.split_once("`\n") {
                SOURCES.lock().unwrap().push((name.to_string(), source.to_string()));
            }
        }
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

/// A CubeCL wgpu device on the local Vulkan adapter whose server compiles to MSL.
fn msl_device() -> Option<cubecl::wgpu::WgpuDevice> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let options = wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
    };
    let adapter = cubecl::future::block_on(instance.request_adapter(&options)).ok()?;
    let (device, queue) = cubecl::future::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("msl probe"),
        required_features: adapter.features().difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .ok()?;
    let setup = WgpuSetup { instance, adapter, device, queue, backend: wgpu::Backend::Metal };
    Some(init_device(setup, RuntimeOptions::default()))
}

/// Problems with one MSL source, if any.
fn msl_problems(name: &str, src: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for must in ["#include <metal_stdlib>", "using namespace metal;", "[[kernel]]", &format!("void {name}(")] {
        if !src.contains(must) {
            bad.push(format!("no `{must}`"));
        }
    }
    for wgsl in ["@compute", "@workgroup_size", "fn main", "var<storage"] {
        if src.contains(wgsl) {
            bad.push(format!("WGSL text `{wgsl}`"));
        }
    }
    let (open, close) = (src.matches('{').count(), src.matches('}').count());
    if open != close {
        bad.push(format!("{open} '{{' but {close} '}}'"));
    }
    bad
}

#[test]
fn every_kernel_emits_msl() {
    log::set_logger(&CAPTURE).expect("no other logger in this test binary");
    log::set_max_level(log::LevelFilter::Trace);
    let Some(device) = msl_device() else {
        let required = std::env::var("INGOT_REQUIRE_GPU").is_ok_and(|v| v == "1");
        assert!(!required, "INGOT_REQUIRE_GPU=1 but no Vulkan adapter was found (install mesa-vulkan-drivers for lavapipe)");
        eprintln!("skipped: no Vulkan adapter to define kernels on (CubeCL 0.10 needs a device to define a kernel)");
        return;
    };
    let b = WgpuBackend::new(&device, "gpu:msl-probe");

    let mut per_op: BTreeMap<&str, usize> = BTreeMap::new();
    let mut skipped: BTreeSet<String> = BTreeSet::new();
    for e in suite::standard() {
        let flags = Flags::new(e.flags.clone()).unwrap();
        let (op, inputs) = generate_inputs(e.op, &flags, 1, "msl").unwrap();
        if !b.supports(&op) {
            skipped.insert(format!("{} {}", op.name(), op.dtype()));
            continue;
        }
        let before = SOURCES.lock().unwrap().len();
        let dev: GpuTensors = inputs.iter().map(|(k, t)| (k.clone(), b.device().to_device(t))).collect();
        if let Err(err) = b.run_device(&op, &dev) {
            panic!("{} {} ({}): run_device failed: {err}", op.name(), op.dtype(), e.name);
        }
        // Every launch failed at module creation (MSL is no WGSL); anything else, such as
        // the MSL compiler rejecting an instruction, is a finding.
        if let Err(err) = cubecl::future::block_on(b.device().client().sync()) {
            let text = format!("{err:?}");
            assert!(text.contains("WGSL compilation failed"), "{} {} ({}): {text}", op.name(), op.dtype(), e.name);
        }
        let emitted = SOURCES.lock().unwrap().len() - before;
        *per_op.entry(op.name()).or_default() += emitted;
    }

    let sources = SOURCES.lock().unwrap();
    let unique: BTreeMap<&str, BTreeSet<&str>> = sources.iter().fold(BTreeMap::new(), |mut m, (n, s)| {
        m.entry(n.as_str()).or_default().insert(s.as_str());
        m
    });
    let mut problems = Vec::new();
    for (name, variants) in &unique {
        for src in variants {
            for p in msl_problems(name, src) {
                problems.push(format!("{name}: {p}"));
            }
        }
    }
    let silent: Vec<&&str> = per_op.iter().filter(|(_, &n)| n == 0).map(|(op, _)| op).collect();
    eprintln!(
        "MSL: {} kernels ({} variants) from {} ops; not run on this device: {skipped:?}",
        unique.len(),
        unique.values().map(|v| v.len()).sum::<usize>(),
        per_op.len()
    );
    assert!(!per_op.is_empty(), "no op ran");
    assert!(silent.is_empty(), "ops that emitted no MSL kernel: {silent:?}");
    assert!(problems.is_empty(), "sources that do not look like MSL:\n{}", problems.join("\n"));
}
