//! Activations: `silu`, `gelu` (erf), `gelu_tanh`, `relu`, `sigmoid`, and the gated
//! `silu_and_mul` = silu(gate)·up and `gelu_and_mul` = gelu_tanh(gate)·up.
//!
//! Layout: flat arrays, one thread per element. Math in f32 whatever the storage type,
//! one rounding to the output dtype. Matches `ingot_cpu::activation`: the stable forms
//! (σ through e^−|x|, gelu through erfc, gelu_tanh as x·σ(2u)) keep relative accuracy in
//! the negative tails; ±Inf give the limits and NaN stays NaN.
//!
//! CubeCL has an `erf`, but its WGSL path is a polyfill of unstated accuracy, and
//! gelu needs erfc's relative accuracy for negative x. So `erfc` here is the Chebyshev
//! fit of Numerical Recipes (`erfcc`, fractional error below 1.2e-7 for every x),
//! evaluated in f32: checked by the golden suite against the f64 reference.
//!
//! `scale` is x · s in f32 with s the op's scale rounded to f32 (the reference's product
//! is exact in f64, so f32 outputs are bit-exact; f16/bf16 round twice, within tolerance).

use crate::device::{grid_1d, input, linear_pos, with_float, Device, GpuTensor, GpuTensors};
use cubecl::prelude::*;
use ingot_core::{GatedParams, Result, ScaleParams, UnaryParams};

/// The element-wise activation functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Silu,
    Gelu,
    GeluTanh,
    Relu,
    Sigmoid,
}

impl Act {
    /// The comptime code the kernels branch on.
    fn code(self) -> u32 {
        match self {
            Act::Silu => ACT_SILU,
            Act::Gelu => ACT_GELU,
            Act::GeluTanh => ACT_GELU_TANH,
            Act::Relu => ACT_RELU,
            Act::Sigmoid => ACT_SIGMOID,
        }
    }

    fn op_name(self, gated: bool) -> &'static str {
        match (self, gated) {
            (Act::Silu, true) => "silu_and_mul",
            (Act::GeluTanh, true) => "gelu_and_mul",
            (Act::Silu, false) => "silu",
            (Act::Gelu, _) => "gelu",
            (Act::GeluTanh, false) => "gelu_tanh",
            (Act::Relu, _) => "relu",
            (Act::Sigmoid, _) => "sigmoid",
        }
    }
}

const ACT_SILU: u32 = 0;
const ACT_GELU: u32 = 1;
const ACT_GELU_TANH: u32 = 2;
const ACT_RELU: u32 = 3;
const ACT_SIGMOID: u32 = 4;

/// σ(x) = 1/(1 + e^−x), through e^−|x| so neither tail overflows or cancels.
#[cube]
pub(crate) fn logistic(x: f32) -> f32 {
    let e = (-x.abs()).exp();
    let s = 1.0 / (1.0 + e);
    select(x >= 0.0, s, e * s)
}

/// erfc(x), Numerical Recipes' `erfcc` Chebyshev fit (fractional error < 1.2e-7).
#[cube]
pub(crate) fn erfc(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = 0.170_872_77;
    let p = -0.822_152_23 + t * p;
    let p = 1.488_515_87 + t * p;
    let p = -1.135_203_98 + t * p;
    let p = 0.278_868_07 + t * p;
    let p = -0.186_288_06 + t * p;
    let p = 0.096_784_18 + t * p;
    let p = 0.374_091_96 + t * p;
    let p = 1.000_023_68 + t * p;
    let p = -1.265_512_23 + t * p;
    let r = t * (p - z * z).exp();
    select(x >= 0.0, r, 2.0 - r)
}

/// One activation in f32. Infinities are mapped to their limits first (the formulas
/// would give Inf·0 = NaN at −Inf).
// The comptime branches assign once each; the placeholder is never read.
#[allow(unused_assignments)]
#[cube]
pub(crate) fn act_f32(x: f32, #[comptime] act: u32) -> f32 {
    let mut y = 0.0f32;
    if act == ACT_SILU {
        y = x * logistic(x);
    } else if act == ACT_GELU {
        y = 0.5 * x * erfc(x * -0.707_106_78);
    } else if act == ACT_GELU_TANH {
        let u = 0.797_884_56 * (x + 0.044_715 * x * x * x);
        y = x * logistic(2.0 * u);
    } else if act == ACT_RELU {
        y = select(x > 0.0, x, 0.0);
    } else {
        y = logistic(x);
    }
    let mut pos_limit = x;
    if act == ACT_SIGMOID {
        pos_limit = 1.0;
    }
    let limit = select(x > 0.0, pos_limit, 0.0);
    // NaN in, NaN out (relu's select would turn it into 0).
    select(x.is_inf(), limit, select(x.is_nan(), x, y))
}

#[cube(launch_unchecked)]
fn unary_kernel<F: Float>(x: &Array<F>, out: &mut Array<F>, n: usize, #[comptime] act: u32) {
    let i = linear_pos();
    if i < n {
        out[i] = F::cast_from(act_f32(f32::cast_from(x[i]), act));
    }
}

#[cube(launch_unchecked)]
fn gated_kernel<F: Float>(gate: &Array<F>, up: &Array<F>, out: &mut Array<F>, n: usize, #[comptime] act: u32) {
    let i = linear_pos();
    if i < n {
        out[i] = F::cast_from(act_f32(f32::cast_from(gate[i]), act) * f32::cast_from(up[i]));
    }
}

/// `gated_kernel` on one packed input: row r of `x` is [gate | up], each `width` long.
#[cube(launch_unchecked)]
fn gated_packed_kernel<F: Float>(x: &Array<F>, out: &mut Array<F>, n: usize, width: usize, #[comptime] act: u32) {
    let i = linear_pos();
    if i < n {
        let j = i % width;
        let at = (i - j) * 2 + j;
        out[i] = F::cast_from(act_f32(f32::cast_from(x[at]), act) * f32::cast_from(x[at + width]));
    }
}

#[cube(launch_unchecked)]
fn scale_kernel<F: Float>(x: &Array<F>, out: &mut Array<F>, n: usize, s: f32) {
    let i = linear_pos();
    if i < n {
        out[i] = F::cast_from(f32::cast_from(x[i]) * s);
    }
}

/// `scale`: input · scale (the scale as an f32).
pub fn scale<R: Runtime>(d: &Device<R>, p: &ScaleParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    let n = p.num_elements;
    let x = input("scale", inputs, "input")?.handle.clone();
    let out = d.alloc(p.dtype, n);
    let (count, dim) = grid_1d(n);
    with_float!(p.dtype, F => {
        // SAFETY: `x` holds n elements (`check_inputs`), `out` was allocated for n; thread
        // i < n touches index i only.
        unsafe {
            scale_kernel::launch_unchecked::<F, R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(x, n),
                ArrayArg::from_raw_parts(out.clone(), n),
                n,
                p.scale as f32,
            )
        }
    });
    Ok(GpuTensors::from([("output".to_string(), GpuTensor::new(out, p.dtype, &[n]))]))
}

/// `silu_and_mul`: silu(gate) · up.
pub fn silu_and_mul<R: Runtime>(d: &Device<R>, p: &GatedParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    gated(d, Act::Silu, p, inputs)
}

/// `gelu_and_mul`: gelu_tanh(gate) · up.
pub fn gelu_and_mul<R: Runtime>(d: &Device<R>, p: &GatedParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    gated(d, Act::GeluTanh, p, inputs)
}

/// `gelu`: exact (erf) GELU.
pub fn gelu<R: Runtime>(d: &Device<R>, p: &UnaryParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    unary(d, Act::Gelu, p, inputs)
}

/// `gelu_tanh`: GELU, tanh approximation.
pub fn gelu_tanh<R: Runtime>(d: &Device<R>, p: &UnaryParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    unary(d, Act::GeluTanh, p, inputs)
}

/// `silu`: x · σ(x).
pub fn silu<R: Runtime>(d: &Device<R>, p: &UnaryParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    unary(d, Act::Silu, p, inputs)
}

/// `relu`: max(x, 0).
pub fn relu<R: Runtime>(d: &Device<R>, p: &UnaryParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    unary(d, Act::Relu, p, inputs)
}

/// `sigmoid`: 1 / (1 + e^−x).
pub fn sigmoid<R: Runtime>(d: &Device<R>, p: &UnaryParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    unary(d, Act::Sigmoid, p, inputs)
}

/// `act(input)` element-wise.
pub fn unary<R: Runtime>(d: &Device<R>, act: Act, p: &UnaryParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    let op = act.op_name(false);
    let n = p.num_elements;
    let x = input(op, inputs, "input")?.handle.clone();
    let out = d.alloc(p.dtype, n);
    let (count, dim) = grid_1d(n);
    with_float!(p.dtype, F => {
        // SAFETY: `x` holds n elements (checked by `check_inputs`), `out` was allocated
        // for n, and every thread with an index >= n returns before touching memory.
        unsafe {
            unary_kernel::launch_unchecked::<F, R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(x, n),
                ArrayArg::from_raw_parts(out.clone(), n),
                n,
                act.code(),
            )
        }
    });
    Ok(GpuTensors::from([("output".to_string(), GpuTensor::new(out, p.dtype, &[n]))]))
}

/// `act(gate) · up` element-wise.
pub fn gated<R: Runtime>(d: &Device<R>, act: Act, p: &GatedParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    let op = act.op_name(true);
    let n = p.num_tokens * p.intermediate_size;
    let out = d.alloc(p.dtype, n);
    let (count, dim) = grid_1d(n);
    if p.packed {
        let x = input(op, inputs, "input")?.handle.clone();
        with_float!(p.dtype, F => {
            // SAFETY: x holds 2n elements (num_tokens rows of 2·intermediate_size, checked by
            // `check_inputs`), `out` was allocated for n; thread i < n reads elements
            // (i − j)·2 + j and that + width of its own row (j = i mod width < width).
            unsafe {
                gated_packed_kernel::launch_unchecked::<F, R>(
                    &d.client,
                    count,
                    dim,
                    ArrayArg::from_raw_parts(x, 2 * n),
                    ArrayArg::from_raw_parts(out.clone(), n),
                    n,
                    p.intermediate_size,
                    act.code(),
                )
            }
        });
        let t = GpuTensor::new(out, p.dtype, &[p.num_tokens, p.intermediate_size]);
        return Ok(GpuTensors::from([("output".to_string(), t)]));
    }
    let gate = input(op, inputs, "gate")?.handle.clone();
    let up = input(op, inputs, "up")?.handle.clone();
    with_float!(p.dtype, F => {
        // SAFETY: gate and up hold n elements (checked by `check_inputs`), `out` was
        // allocated for n, and threads with an index >= n return at once.
        unsafe {
            gated_kernel::launch_unchecked::<F, R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(gate, n),
                ArrayArg::from_raw_parts(up, n),
                ArrayArg::from_raw_parts(out.clone(), n),
                n,
                act.code(),
            )
        }
    });
    let t = GpuTensor::new(out, p.dtype, &[p.num_tokens, p.intermediate_size]);
    Ok(GpuTensors::from([("output".to_string(), t)]))
}

// ---------------------------------------------------------------- registration

/// Which of this family's ops have a kernel here, for which dtypes ([`crate::Support`]).
pub(crate) fn support(op: &ingot_core::Op) -> crate::Support {
    use ingot_core::Op;
    match op {
        Op::Scale(_)
        | Op::Silu(_)
        | Op::Gelu(_)
        | Op::GeluTanh(_)
        | Op::Relu(_)
        | Op::Sigmoid(_)
        | Op::SiluAndMul(_)
        | Op::GeluAndMul(_) => crate::Support::float(op),
        _ => crate::Support::None,
    }
}
