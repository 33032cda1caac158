//! Timing of single ops on device-resident tensors, for `ingot bench ops`.
//!
//! Inputs are uploaded once; the op is launched through [`GpuBackend::run_device`] a few
//! times to compile and warm up, then `iters` times back to back and the device is synced:
//! the time per launch includes the host's launch cost (as a model's decode loop pays it)
//! but no host ↔ device copies.

use crate::{GpuBackend, GpuTensors};
use cubecl::prelude::*;
use ingot_core::{Op, Result, Tensors};
use std::time::Instant;

/// What one timed op took.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Mean seconds per launch over the timed batch.
    pub mean_s: f64,
    /// Launches timed.
    pub iters: usize,
    /// Seconds of the first (compiling) launch, synced.
    pub first_s: f64,
}

/// A backend that can time ops on its device, whatever its runtime.
pub trait OpTimer {
    /// The backend's name (`gpu:cuda`, ...).
    fn name(&self) -> String;
    /// Whether the op has a kernel on this device.
    fn supports(&self, op: &Op) -> bool;
    /// Time `op` on `inputs` (host tensors, uploaded once).
    fn time(&self, op: &Op, inputs: &Tensors, iters: usize) -> Result<Timing>;
}

impl<R: Runtime> OpTimer for GpuBackend<R> {
    fn name(&self) -> String {
        ingot_core::Backend::name(self)
    }

    fn supports(&self, op: &Op) -> bool {
        ingot_core::Backend::supports(self, op)
    }

    fn time(&self, op: &Op, inputs: &Tensors, iters: usize) -> Result<Timing> {
        let d = self.device();
        let dev: GpuTensors = inputs.iter().map(|(k, t)| (k.clone(), d.to_device(t))).collect();
        d.sync();
        let t0 = Instant::now();
        drop(self.run_device(op, &dev)?);
        d.sync();
        let first_s = t0.elapsed().as_secs_f64();
        for _ in 0..3 {
            drop(self.run_device(op, &dev)?);
        }
        d.sync();
        let iters = iters.max(1);
        let t1 = Instant::now();
        for _ in 0..iters {
            drop(self.run_device(op, &dev)?);
        }
        d.sync();
        Ok(Timing { mean_s: t1.elapsed().as_secs_f64() / iters as f64, iters, first_s })
    }
}

/// The timer for a GPU backend name (`gpu`, `gpu:wgpu`, `gpu:cuda`, `gpu:metal`) when that
/// runtime is compiled in and a device opens; `None` otherwise.
pub fn timer(name: &str) -> Option<Box<dyn OpTimer>> {
    match name {
        #[cfg(feature = "cuda")]
        "gpu:cuda" => crate::CudaBackend::cuda(name).map(|b| Box::new(b) as Box<dyn OpTimer>),
        #[cfg(feature = "wgpu")]
        "gpu:wgpu" | "gpu:metal" => crate::WgpuBackend::wgpu(name).map(|b| Box::new(b) as Box<dyn OpTimer>),
        _ => None,
    }
}

/// Shape of a paged attention benchmark: `batch` sequences of `kv_len` keys each, on
/// pages of `page_size` in a shuffled pool; `qo_len` = 0 times decode (one query per
/// sequence), `qo_len` > 0 a prefill of each sequence's last `qo_len` tokens.
#[derive(Clone, Copy, Debug)]
pub struct PagedAttnShape {
    pub batch: usize,
    pub num_qo_heads: usize,
    pub num_kv_heads: usize,
    pub head_size: usize,
    pub page_size: usize,
    pub kv_len: usize,
    pub qo_len: usize,
    pub causal: bool,
    pub dtype: ingot_core::DType,
}

impl PagedAttnShape {
    /// Bytes the op must move at least once: the sequences' K and V, q, output and lse.
    pub fn bytes(&self) -> f64 {
        let rows = self.batch * self.qo_len.max(1) * self.num_qo_heads;
        let kv = 2 * self.batch * self.kv_len * self.num_kv_heads * self.head_size;
        (self.dtype.bytes_for(kv + 2 * rows * self.head_size).unwrap_or(0) + 4 * rows) as f64
    }
}

/// Time `paged_attention` at `shape` with launch choices `tuning` (attention's defaults:
/// `AttnTuning::default()`): random inputs (uniform in [−1, 1), a shuffled page pool) are
/// built on the host and uploaded once, then the kernels are launched a few times to
/// compile and warm up and `iters` times back to back, with [`crate::Device::sync`] around
/// the timed batch.
pub fn time_paged_attention<R: Runtime>(
    b: &GpuBackend<R>,
    shape: &PagedAttnShape,
    tuning: crate::attention::AttnTuning,
    iters: usize,
) -> Result<Timing> {
    use ingot_core::{DecodeParams, PrefillParams, Tensor};
    let s = *shape;
    ingot_core::ensure!(s.batch > 0 && s.kv_len > 0 && s.page_size > 0, "paged_attention", "empty benchmark shape {s:?}");
    ingot_core::ensure!(!s.causal || s.qo_len <= s.kv_len, "paged_attention", "a causal prefill needs qo_len <= kv_len");
    // splitmix64: reproducible benchmark data, no dependency.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let pages_per_seq = s.kv_len.div_ceil(s.page_size);
    let num_pages = s.batch * pages_per_seq;
    let mut pool: Vec<i32> = (0..num_pages as i32).collect();
    for i in (1..pool.len()).rev() {
        pool.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    let indptr: Vec<i32> = (0..=s.batch).map(|b| (b * pages_per_seq) as i32).collect();
    let last = vec![(s.kv_len - (pages_per_seq - 1) * s.page_size) as i32; s.batch];
    let mut uniform = |n: usize| -> Vec<f32> { (0..n).map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect() };
    let cache = [num_pages, s.page_size, s.num_kv_heads, s.head_size];
    let cache_n: usize = cache.iter().product();
    let rows = s.batch * s.qo_len.max(1);
    let mut t = Tensors::new();
    t.insert("k_cache".into(), Tensor::from_f32(s.dtype, cache.to_vec(), &uniform(cache_n)));
    t.insert("v_cache".into(), Tensor::from_f32(s.dtype, cache.to_vec(), &uniform(cache_n)));
    t.insert("q".into(), Tensor::from_f32(s.dtype, vec![rows, s.num_qo_heads, s.head_size], &uniform(rows * s.num_qo_heads * s.head_size)));
    t.insert("kv_indices".into(), Tensor::from_i32(vec![num_pages], &pool));
    t.insert("kv_indptr".into(), Tensor::from_i32(vec![s.batch + 1], &indptr));
    t.insert("kv_last_page_len".into(), Tensor::from_i32(vec![s.batch], &last));
    let sm_scale = 1.0 / (s.head_size as f64).sqrt();
    let op = if s.qo_len == 0 {
        Op::BatchDecodeWithPagedKvCache(DecodeParams {
            batch_size: s.batch,
            num_qo_heads: s.num_qo_heads,
            num_kv_heads: s.num_kv_heads,
            head_size: s.head_size,
            page_size: s.page_size,
            num_pages,
            num_page_ids: num_pages,
            sm_scale,
            window_left: -1,
            logits_soft_cap: 0.0,
            dtype: s.dtype,
        })
    } else {
        let qo: Vec<i32> = (0..=s.batch).map(|b| (b * s.qo_len) as i32).collect();
        t.insert("qo_indptr".into(), Tensor::from_i32(vec![s.batch + 1], &qo));
        Op::BatchPrefillWithPagedKvCache(PrefillParams {
            batch_size: s.batch,
            num_tokens: rows,
            num_qo_heads: s.num_qo_heads,
            num_kv_heads: s.num_kv_heads,
            head_size: s.head_size,
            page_size: s.page_size,
            num_pages,
            num_page_ids: num_pages,
            causal: s.causal,
            sm_scale,
            window_left: -1,
            logits_soft_cap: 0.0,
            dtype: s.dtype,
        })
    };
    op.validate()?;
    op.check_inputs(&t)?;
    ingot_core::ensure!(
        ingot_core::Backend::supports(b, &op),
        op.name(),
        "not supported on {} in {}",
        ingot_core::Backend::name(b),
        s.dtype
    );
    let d = b.device();
    let dev: GpuTensors = t.iter().map(|(k, v)| (k.clone(), d.to_device(v))).collect();
    drop(t);
    let launch = || -> Result<GpuTensors> {
        match &op {
            Op::BatchDecodeWithPagedKvCache(p) => crate::attention::batch_decode_tuned(d, p, &dev, tuning),
            Op::BatchPrefillWithPagedKvCache(p) => crate::attention::batch_prefill_tuned(d, p, &dev, tuning),
            _ => unreachable!("built above"),
        }
    };
    d.sync();
    let t0 = Instant::now();
    drop(launch()?);
    d.sync();
    let first_s = t0.elapsed().as_secs_f64();
    for _ in 0..3 {
        drop(launch()?);
    }
    d.sync();
    let iters = iters.max(1);
    let t1 = Instant::now();
    for _ in 0..iters {
        drop(launch()?);
    }
    d.sync();
    Ok(Timing { mean_s: t1.elapsed().as_secs_f64() / iters as f64, iters, first_s })
}
