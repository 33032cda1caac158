//! Normalization and residuals: `rms_norm` (with Gemma's 1 + w), `fused_add_rms_norm`,
//! `layer_norm`, `add_residual`, `add_bias` (a bias [hidden_size] added to every row).
//!
//! Layout: rows of `hidden_size` contiguous elements. The row ops run one cube of
//! `BLOCK` threads per row; each thread strides over the row, and the row statistics
//! are summed in f32 through shared memory (no plane operations, so CPU adapters run
//! the same path). Math in f32, one rounding to the dtype. Matches `ingot_cpu::norm`:
//! `fused_add_rms_norm` normalizes the *rounded* sum, the residual the next layer reads.

use crate::device::{cube_index, cube_sum, grid_1d, grid_cubes, input, linear_pos, with_float, Device, GpuTensor, GpuTensors, BLOCK};
use cubecl::prelude::*;
use ingot_core::{LayerNormParams, Result, RmsNormParams, RowsParams};

#[cube(launch_unchecked)]
fn add_kernel<F: Float>(a: &Array<F>, b: &Array<F>, out: &mut Array<F>, n: usize) {
    let i = linear_pos();
    if i < n {
        out[i] = F::cast_from(f32::cast_from(a[i]) + f32::cast_from(b[i]));
    }
}

#[cube(launch_unchecked)]
fn bias_kernel<F: Float>(x: &Array<F>, b: &Array<F>, out: &mut Array<F>, n: usize, h: usize) {
    let i = linear_pos();
    if i < n {
        out[i] = F::cast_from(f32::cast_from(x[i]) + f32::cast_from(b[i % h]));
    }
}

#[cube(launch_unchecked)]
fn rms_norm_kernel<F: Float>(x: &Array<F>, w: &Array<F>, out: &mut Array<F>, rows: usize, h: usize, eps: f32, #[comptime] gemma: bool) {
    let row = cube_index();
    if row < rows {
        let base = row * h;
        let mut acc = 0.0f32;
        let mut j = UNIT_POS_X as usize;
        while j < h {
            let v = f32::cast_from(x[base + j]);
            acc += v * v;
            j += BLOCK as usize;
        }
        let total = cube_sum(acc);
        let inv = 1.0 / (total / f32::cast_from(h) + eps).sqrt();
        let mut j = UNIT_POS_X as usize;
        while j < h {
            let mut wj = f32::cast_from(w[j]);
            if gemma {
                wj += 1.0;
            }
            out[base + j] = F::cast_from(f32::cast_from(x[base + j]) * inv * wj);
            j += BLOCK as usize;
        }
    }
}

#[cube(launch_unchecked)]
fn fused_add_rms_norm_kernel<F: Float>(
    x: &Array<F>,
    r: &Array<F>,
    w: &Array<F>,
    out: &mut Array<F>,
    res_out: &mut Array<F>,
    rows: usize,
    h: usize,
    eps: f32,
    #[comptime] gemma: bool,
) {
    let row = cube_index();
    if row < rows {
        let base = row * h;
        let mut acc = 0.0f32;
        let mut j = UNIT_POS_X as usize;
        while j < h {
            // The sum rounded to the dtype: the residual the next layer reads.
            let s = F::cast_from(f32::cast_from(x[base + j]) + f32::cast_from(r[base + j]));
            res_out[base + j] = s;
            let v = f32::cast_from(s);
            acc += v * v;
            j += BLOCK as usize;
        }
        let total = cube_sum(acc);
        let inv = 1.0 / (total / f32::cast_from(h) + eps).sqrt();
        let mut j = UNIT_POS_X as usize;
        while j < h {
            let s = F::cast_from(f32::cast_from(x[base + j]) + f32::cast_from(r[base + j]));
            let mut wj = f32::cast_from(w[j]);
            if gemma {
                wj += 1.0;
            }
            out[base + j] = F::cast_from(f32::cast_from(s) * inv * wj);
            j += BLOCK as usize;
        }
    }
}

#[cube(launch_unchecked)]
fn layer_norm_kernel<F: Float>(x: &Array<F>, gamma: &Array<F>, beta: &Array<F>, out: &mut Array<F>, rows: usize, h: usize, eps: f32) {
    let row = cube_index();
    if row < rows {
        let base = row * h;
        let hf = f32::cast_from(h);
        let mut acc = 0.0f32;
        let mut j = UNIT_POS_X as usize;
        while j < h {
            acc += f32::cast_from(x[base + j]);
            j += BLOCK as usize;
        }
        let mean = cube_sum(acc) / hf;
        // Second pass over (x - mean)²: no cancellation, as the f64 reference.
        let mut acc2 = 0.0f32;
        let mut j = UNIT_POS_X as usize;
        while j < h {
            let d = f32::cast_from(x[base + j]) - mean;
            acc2 += d * d;
            j += BLOCK as usize;
        }
        let inv = 1.0 / (cube_sum(acc2) / hf + eps).sqrt();
        let mut j = UNIT_POS_X as usize;
        while j < h {
            let v = (f32::cast_from(x[base + j]) - mean) * inv;
            out[base + j] = F::cast_from(v * f32::cast_from(gamma[j]) + f32::cast_from(beta[j]));
            j += BLOCK as usize;
        }
    }
}

/// `add_residual`: input + residual.
pub fn add_residual<R: Runtime>(d: &Device<R>, p: &RowsParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "add_residual";
    let n = p.num_tokens * p.hidden_size;
    let a = input(OP, inputs, "input")?.handle.clone();
    let b = input(OP, inputs, "residual")?.handle.clone();
    let out = d.alloc(p.dtype, n);
    let (count, dim) = grid_1d(n);
    with_float!(p.dtype, F => {
        // SAFETY: both inputs hold n elements (`check_inputs`), `out` was allocated for
        // n, and threads with an index >= n return at once.
        unsafe {
            add_kernel::launch_unchecked::<F, R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(a, n),
                ArrayArg::from_raw_parts(b, n),
                ArrayArg::from_raw_parts(out.clone(), n),
                n,
            )
        }
    });
    Ok(GpuTensors::from([("output".to_string(), GpuTensor::new(out, p.dtype, &[p.num_tokens, p.hidden_size]))]))
}

/// `add_bias`: input + bias, the bias added to every row.
pub fn add_bias<R: Runtime>(d: &Device<R>, p: &RowsParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "add_bias";
    let (t, h) = (p.num_tokens, p.hidden_size);
    let n = t * h;
    let x = input(OP, inputs, "input")?.handle.clone();
    let b = input(OP, inputs, "bias")?.handle.clone();
    let out = d.alloc(p.dtype, n);
    let (count, dim) = grid_1d(n);
    with_float!(p.dtype, F => {
        // SAFETY: x holds n = t·h elements and the bias h (`check_inputs`), `out` was
        // allocated for n; thread i < n reads x[i] and b[i mod h] and writes out[i].
        unsafe {
            bias_kernel::launch_unchecked::<F, R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(x, n),
                ArrayArg::from_raw_parts(b, h),
                ArrayArg::from_raw_parts(out.clone(), n),
                n,
                h,
            )
        }
    });
    Ok(GpuTensors::from([("output".to_string(), GpuTensor::new(out, p.dtype, &[t, h]))]))
}

/// `rms_norm`: x / sqrt(mean(x²) + eps) · w (w + 1 with `gemma`).
pub fn rms_norm<R: Runtime>(d: &Device<R>, p: &RmsNormParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "rms_norm";
    let (t, h) = (p.num_tokens, p.hidden_size);
    let x = input(OP, inputs, "input")?.handle.clone();
    let w = input(OP, inputs, "weight")?.handle.clone();
    let out = d.alloc(p.dtype, t * h);
    let (count, dim) = grid_cubes(t, BLOCK);
    with_float!(p.dtype, F => {
        // SAFETY: x holds t·h elements and w holds h (`check_inputs`); out was allocated
        // for t·h. Cube `row` touches row `row` only, and cubes past the last row return.
        unsafe {
            rms_norm_kernel::launch_unchecked::<F, R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(x, t * h),
                ArrayArg::from_raw_parts(w, h),
                ArrayArg::from_raw_parts(out.clone(), t * h),
                t,
                h,
                p.eps as f32,
                p.gemma,
            )
        }
    });
    Ok(GpuTensors::from([("output".to_string(), GpuTensor::new(out, p.dtype, &[t, h]))]))
}

/// `fused_add_rms_norm`: residual_out = round(input + residual), output = rms_norm(residual_out).
pub fn fused_add_rms_norm<R: Runtime>(d: &Device<R>, p: &RmsNormParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "fused_add_rms_norm";
    let (t, h) = (p.num_tokens, p.hidden_size);
    let x = input(OP, inputs, "input")?.handle.clone();
    let r = input(OP, inputs, "residual")?.handle.clone();
    let w = input(OP, inputs, "weight")?.handle.clone();
    let out = d.alloc(p.dtype, t * h);
    let res_out = d.alloc(p.dtype, t * h);
    let (count, dim) = grid_cubes(t, BLOCK);
    with_float!(p.dtype, F => {
        // SAFETY: x and r hold t·h elements, w holds h (`check_inputs`); both outputs were
        // allocated for t·h. Cube `row` touches row `row` only; extra cubes return.
        unsafe {
            fused_add_rms_norm_kernel::launch_unchecked::<F, R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(x, t * h),
                ArrayArg::from_raw_parts(r, t * h),
                ArrayArg::from_raw_parts(w, h),
                ArrayArg::from_raw_parts(out.clone(), t * h),
                ArrayArg::from_raw_parts(res_out.clone(), t * h),
                t,
                h,
                p.eps as f32,
                p.gemma,
            )
        }
    });
    Ok(GpuTensors::from([
        ("output".to_string(), GpuTensor::new(out, p.dtype, &[t, h])),
        ("residual_out".to_string(), GpuTensor::new(res_out, p.dtype, &[t, h])),
    ]))
}

/// `layer_norm`: (x − mean) / sqrt(var + eps) · gamma + beta, biased variance.
pub fn layer_norm<R: Runtime>(d: &Device<R>, p: &LayerNormParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "layer_norm";
    let (t, h) = (p.num_tokens, p.hidden_size);
    let x = input(OP, inputs, "input")?.handle.clone();
    let g = input(OP, inputs, "gamma")?.handle.clone();
    let b = input(OP, inputs, "beta")?.handle.clone();
    let out = d.alloc(p.dtype, t * h);
    let (count, dim) = grid_cubes(t, BLOCK);
    with_float!(p.dtype, F => {
        // SAFETY: x holds t·h elements, gamma and beta h (`check_inputs`); out was
        // allocated for t·h. Cube `row` touches row `row` only; extra cubes return.
        unsafe {
            layer_norm_kernel::launch_unchecked::<F, R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(x, t * h),
                ArrayArg::from_raw_parts(g, h),
                ArrayArg::from_raw_parts(b, h),
                ArrayArg::from_raw_parts(out.clone(), t * h),
                t,
                h,
                p.eps as f32,
            )
        }
    });
    Ok(GpuTensors::from([("output".to_string(), GpuTensor::new(out, p.dtype, &[t, h]))]))
}

// ---------------------------------------------------------------- registration

/// Which of this family's ops have a kernel here, for which dtypes ([`crate::Support`]).
pub(crate) fn support(op: &ingot_core::Op) -> crate::Support {
    use ingot_core::Op;
    match op {
        Op::AddResidual(_) | Op::AddBias(_) | Op::RmsNorm(_) | Op::FusedAddRmsNorm(_) | Op::LayerNorm(_) => crate::Support::float(op),
        _ => crate::Support::None,
    }
}
