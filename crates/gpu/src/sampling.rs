//! Logit ops: `softmax` (with temperature), `softcap`, `temperature_scale`.
//!
//! Layout: logits [num_tokens, vocab_size], rows contiguous. `softmax` runs one cube of
//! `BLOCK` threads per row: a max pass and a sum pass reduced through shared memory (no
//! plane operations), then a write pass; probabilities are f32. The element-wise ops run
//! one thread per element. Math in f32, one rounding. Matches `ingot_cpu::sampling`:
//! −Inf logits get probability 0, a row of only −Inf (or with +Inf or NaN) gives NaN.

use crate::device::{
    cube_index, cube_max, cube_sum, grid_1d, grid_cubes, input, linear_pos, with_float, Device, GpuTensor, GpuTensors, BLOCK,
};
use cubecl::prelude::*;
use ingot_core::{DType, Result, SoftcapParams, SoftmaxParams, TemperatureParams};

#[cube(launch_unchecked)]
fn softmax_kernel<F: Float>(x: &Array<F>, out: &mut Array<f32>, rows: usize, v: usize, inv_temp: f32) {
    let row = cube_index();
    if row < rows {
        let base = row * v;
        // The lowest finite f32 as the max identity: an infinite literal does not survive
        // CubeCL's WGSL output (`inf`), and a reinterpreted constant does not compile for
        // CUDA (NVRTC: "expression must be an lvalue"). A row of only −Inf still ends in
        // exp(−Inf)/0 = NaN, as the reference.
        let mut local_max = f32::new(-3.402_823_5e38);
        let mut j = UNIT_POS_X as usize;
        while j < v {
            let a = f32::cast_from(x[base + j]);
            local_max = select(a.is_nan() || a > local_max, a, local_max);
            j += BLOCK as usize;
        }
        // softmax(x / T) = exp((x − max) / T) / Σ, temperature > 0.
        let m = cube_max(local_max);
        let mut acc = 0.0f32;
        let mut j = UNIT_POS_X as usize;
        while j < v {
            acc += ((f32::cast_from(x[base + j]) - m) * inv_temp).exp();
            j += BLOCK as usize;
        }
        let inv_sum = 1.0 / cube_sum(acc);
        let mut j = UNIT_POS_X as usize;
        while j < v {
            out[base + j] = ((f32::cast_from(x[base + j]) - m) * inv_temp).exp() * inv_sum;
            j += BLOCK as usize;
        }
    }
}

#[cube(launch_unchecked)]
fn softcap_kernel<F: Float>(x: &Array<F>, out: &mut Array<F>, n: usize, cap: f32) {
    let i = linear_pos();
    if i < n {
        let y = f32::cast_from(x[i]) / cap;
        // tanh(y) rounds to ±1 in f32 beyond |y| = 9; the guard also maps ±Inf to ±cap.
        let sign = select(y > 0.0, 1.0f32, -1.0f32);
        let t = select(y.abs() > 9.0, sign, y.tanh());
        out[i] = F::cast_from(cap * t);
    }
}

#[cube(launch_unchecked)]
fn scale_kernel<F: Float>(x: &Array<F>, out: &mut Array<F>, n: usize, temp: f32) {
    let i = linear_pos();
    if i < n {
        out[i] = F::cast_from(f32::cast_from(x[i]) / temp);
    }
}

/// `softmax`: probs = softmax(logits / temperature) per row, f32.
pub fn softmax<R: Runtime>(d: &Device<R>, p: &SoftmaxParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "softmax";
    let (t, v) = (p.num_tokens, p.vocab_size);
    let x = input(OP, inputs, "logits")?.handle.clone();
    let out = d.alloc(DType::F32, t * v);
    let (count, dim) = grid_cubes(t, BLOCK);
    with_float!(p.dtype, F => {
        // SAFETY: logits hold t·v elements (`check_inputs`) and out was allocated for
        // t·v f32; cube `row` touches row `row` only and cubes past the last row return.
        unsafe {
            softmax_kernel::launch_unchecked::<F, R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(x, t * v),
                ArrayArg::from_raw_parts(out.clone(), t * v),
                t,
                v,
                (1.0 / p.temperature) as f32,
            )
        }
    });
    Ok(GpuTensors::from([("probs".to_string(), GpuTensor::new(out, DType::F32, &[t, v]))]))
}

/// `softcap`: cap · tanh(x / cap).
pub fn softcap<R: Runtime>(d: &Device<R>, p: &SoftcapParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "softcap";
    let n = p.num_tokens * p.vocab_size;
    let x = input(OP, inputs, "logits")?.handle.clone();
    let out = d.alloc(p.dtype, n);
    let (count, dim) = grid_1d(n);
    with_float!(p.dtype, F => {
        // SAFETY: logits hold n elements (`check_inputs`), out was allocated for n, and
        // threads with an index >= n return at once.
        unsafe {
            softcap_kernel::launch_unchecked::<F, R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(x, n),
                ArrayArg::from_raw_parts(out.clone(), n),
                n,
                p.cap as f32,
            )
        }
    });
    Ok(GpuTensors::from([("output".to_string(), GpuTensor::new(out, p.dtype, &[p.num_tokens, p.vocab_size]))]))
}

/// `temperature_scale`: x / temperature.
pub fn temperature_scale<R: Runtime>(d: &Device<R>, p: &TemperatureParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "temperature_scale";
    let n = p.num_tokens * p.vocab_size;
    let x = input(OP, inputs, "logits")?.handle.clone();
    let out = d.alloc(p.dtype, n);
    let (count, dim) = grid_1d(n);
    with_float!(p.dtype, F => {
        // SAFETY: logits hold n elements (`check_inputs`), out was allocated for n, and
        // threads with an index >= n return at once.
        unsafe {
            scale_kernel::launch_unchecked::<F, R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(x, n),
                ArrayArg::from_raw_parts(out.clone(), n),
                n,
                p.temperature as f32,
            )
        }
    });
    Ok(GpuTensors::from([("output".to_string(), GpuTensor::new(out, p.dtype, &[p.num_tokens, p.vocab_size]))]))
}
