//! Activation references: `silu`, `gelu` (erf), `gelu_tanh`, `relu`, `sigmoid`, and the
//! gated forms `silu_and_mul` = silu(gate)·up and `gelu_and_mul` = gelu_tanh(gate)·up.
//! f64 math, one rounding. At ±Inf each function returns its limit (silu(−Inf) = 0,
//! gelu(+Inf) = +Inf, sigmoid(−Inf) = 0, ...); NaN stays NaN. Also `scale`: x · s with s
//! rounded to f32 first (as kernels hold it), the product exact in f64, rounded once.

use crate::device_ops::{input, outs, Alloc, Kernel, Tens};
use crate::fast;
use crate::util::{f64_in, float_out, outputs};
use ingot_core::{DType, Op};
use ingot_core::{GatedParams, Result, ScaleParams, Tensors, UnaryParams};

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
    /// Apply in f64.
    pub fn apply(self, x: f64) -> f64 {
        if x.is_nan() {
            return x;
        }
        if x.is_infinite() {
            return match (self, x > 0.0) {
                (Act::Sigmoid, true) => 1.0,
                (_, true) => f64::INFINITY,
                (_, false) => 0.0,
            };
        }
        match self {
            Act::Sigmoid => logistic(x),
            Act::Silu => x * logistic(x),
            Act::Relu => {
                if x > 0.0 {
                    x
                } else {
                    0.0
                }
            }
            // 1 + erf(x/√2) = erfc(−x/√2): no cancellation for negative x.
            Act::Gelu => 0.5 * x * libm::erfc(-x / std::f64::consts::SQRT_2),
            // 0.5·(1 + tanh(u)) = σ(2u): no cancellation for negative x.
            Act::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                x * logistic(2.0 * c * (x + 0.044715 * x * x * x))
            }
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

fn logistic(x: f64) -> f64 {
    // Stable in both tails.
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `act(input)` element-wise.
pub fn unary(act: Act, p: &UnaryParams, inputs: &Tensors) -> Result<Tensors> {
    let x = f64_in(act.op_name(false), inputs, "input")?;
    let y: Vec<f64> = x.iter().map(|&v| act.apply(v)).collect();
    Ok(outputs([("output", float_out(p.dtype, &[p.num_elements], &y))]))
}

/// `act(gate) · up` element-wise (the order of the seed's `silu_and_mul(out, gate, up)`).
pub fn gated(act: Act, p: &GatedParams, inputs: &Tensors) -> Result<Tensors> {
    let op = act.op_name(true);
    let (g, u) = if p.packed {
        // Each row is [gate | up].
        let x = f64_in(op, inputs, "input")?;
        let i = p.intermediate_size;
        let (mut g, mut u) = (Vec::with_capacity(x.len() / 2), Vec::with_capacity(x.len() / 2));
        for row in x.chunks_exact(2 * i) {
            g.extend_from_slice(&row[..i]);
            u.extend_from_slice(&row[i..]);
        }
        (g, u)
    } else {
        (f64_in(op, inputs, "gate")?, f64_in(op, inputs, "up")?)
    };
    let y: Vec<f64> = g.iter().zip(&u).map(|(&g, &u)| act.apply(g) * u).collect();
    Ok(outputs([("output", float_out(p.dtype, &[p.num_tokens, p.intermediate_size], &y))]))
}

/// `silu_and_mul`: silu(gate) · up.
pub fn silu_and_mul(p: &GatedParams, inputs: &Tensors) -> Result<Tensors> {
    gated(Act::Silu, p, inputs)
}

/// `gelu_and_mul`: gelu_tanh(gate) · up.
pub fn gelu_and_mul(p: &GatedParams, inputs: &Tensors) -> Result<Tensors> {
    gated(Act::GeluTanh, p, inputs)
}

/// `gelu`: exact (erf) GELU.
pub fn gelu(p: &UnaryParams, inputs: &Tensors) -> Result<Tensors> {
    unary(Act::Gelu, p, inputs)
}

/// `gelu_tanh`: GELU, tanh approximation.
pub fn gelu_tanh(p: &UnaryParams, inputs: &Tensors) -> Result<Tensors> {
    unary(Act::GeluTanh, p, inputs)
}

/// `silu`: x · σ(x).
pub fn silu(p: &UnaryParams, inputs: &Tensors) -> Result<Tensors> {
    unary(Act::Silu, p, inputs)
}

/// `relu`: max(x, 0).
pub fn relu(p: &UnaryParams, inputs: &Tensors) -> Result<Tensors> {
    unary(Act::Relu, p, inputs)
}

/// `sigmoid`: 1 / (1 + e^−x).
pub fn sigmoid(p: &UnaryParams, inputs: &Tensors) -> Result<Tensors> {
    unary(Act::Sigmoid, p, inputs)
}

/// `scale`: input · scale, the scale rounded to f32 first. A float input (at most 24
/// significant bits) times an f32 has at most 48, so the f64 product is exact and the
/// output is the product rounded once.
pub fn scale(p: &ScaleParams, inputs: &Tensors) -> Result<Tensors> {
    let x = f64_in("scale", inputs, "input")?;
    let s = f64::from(p.scale as f32);
    let y: Vec<f64> = x.iter().map(|&v| v * s).collect();
    Ok(outputs([("output", float_out(p.dtype, &[p.num_elements], &y))]))
}

// ---------------------------------------------------------------- fast kernels (`cpu`)

/// The fast kernels of this family's ops on the [`crate::CpuDevice`] ([`crate::device_ops`]): f32 only.
pub(crate) fn fast(op: &Op) -> Option<Kernel<'_>> {
    use DType::F32;
    Some(match op {
        Op::SiluAndMul(p) if p.dtype == F32 => Box::new(move |i, a| gated_fast("silu_and_mul", p, fast::silu, i, a)),
        Op::GeluAndMul(p) if p.dtype == F32 => Box::new(move |i, a| gated_fast("gelu_and_mul", p, fast::gelu_tanh, i, a)),
        Op::Scale(p) if p.dtype == F32 => Box::new(move |i, a| scale_fast(p, i, a)),
        Op::GeluTanh(p) if p.dtype == F32 => Box::new(move |i, a| unary_fast("gelu_tanh", p, fast::gelu_tanh, i, a)),
        _ => return None,
    })
}

/// input · scale, the scale rounded to f32 first (one f32 product: the reference's f64
/// product of two f32 values rounded once is the same number).
fn scale_fast(p: &ingot_core::ScaleParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let x = input("scale", ins, "input")?.view::<f32>()?;
    let s = p.scale as f32;
    let out = alloc.zeros(DType::F32, &[p.num_elements])?;
    out.write()?.f32().iter_mut().zip(x.iter()).for_each(|(o, &x)| *o = x * s);
    Ok(outs([("output", out)]))
}

/// act(input) in f32 ([`fast::gelu_tanh`]).
fn unary_fast(op: &'static str, p: &ingot_core::UnaryParams, act: impl Fn(f32) -> f32 + Sync, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let x = input(op, ins, "input")?.view::<f32>()?;
    let out = alloc.zeros(DType::F32, &[p.num_elements])?;
    fast::map_into(&x, out.write()?.f32(), act);
    Ok(outs([("output", out)]))
}

/// act(gate)·up in f32 ([`fast::silu`], [`fast::gelu_tanh`]); generic over the activation
/// so that it is inlined into the loop (through a function pointer it cost a call per element).
fn gated_fast(op: &'static str, p: &ingot_core::GatedParams, act: impl Fn(f32) -> f32 + Sync, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let out = alloc.zeros(DType::F32, &[p.num_tokens, p.intermediate_size])?;
    let f = move |g: f32, u: f32| act(g) * u;
    if p.packed {
        // Each input row is [gate | up]; row by row (a decode step has one or a few).
        let x = input(op, ins, "input")?.view::<f32>()?;
        let i = p.intermediate_size;
        let mut w = out.write()?;
        for (o, row) in w.f32().chunks_exact_mut(i).zip(x.chunks_exact(2 * i)) {
            fast::zip_into(&row[..i], &row[i..], o, &f);
        }
    } else {
        let g = input(op, ins, "gate")?.view::<f32>()?;
        let u = input(op, ins, "up")?.view::<f32>()?;
        fast::zip_into(&g, &u, out.write()?.f32(), f);
    }
    Ok(outs([("output", out)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingot_core::{DType, Tensor};

    #[test]
    fn scale_uses_the_f32_scale_and_rounds_once() {
        // 0.1 as an f32 is 0.100000001490116..., so 3 · s differs from 3 · 0.1 in f32.
        let x = [3.0f32, -0.0, f32::INFINITY, f32::NAN, 1e30];
        let p = ScaleParams { num_elements: 5, scale: 0.1, dtype: DType::F32 };
        let mut i = Tensors::new();
        i.insert("input".into(), Tensor::from_f32(DType::F32, vec![5], &x));
        let y = scale(&p, &i).unwrap()["output"].to_f32().unwrap();
        assert_eq!(y[0], 3.0f32 * 0.1f32);
        assert_eq!((y[1], y[2]), (0.0, f32::INFINITY));
        assert!(y[1].is_sign_negative() && y[3].is_nan());
        assert_eq!(y[4], 1e30f32 * 0.1f32);
        // 1e30 · 1e10 overflows f32: +Inf, as an f32 kernel gives.
        let p = ScaleParams { scale: 1e10, ..p };
        assert_eq!(scale(&p, &i).unwrap()["output"].to_f32().unwrap()[4], f32::INFINITY);
    }

    /// The packed form reads gate and up from the halves of each row.
    #[test]
    fn packed_gated_reads_the_row_halves() {
        let (gate, up) = ([1.0f32, -2.0, 0.5, 3.0, -0.25, 4.0], [2.0f32, 0.5, -1.0, 1.5, 8.0, -3.0]);
        let mut apart = Tensors::new();
        apart.insert("gate".into(), Tensor::from_f32(DType::F32, vec![2, 3], &gate));
        apart.insert("up".into(), Tensor::from_f32(DType::F32, vec![2, 3], &up));
        let rows: Vec<f32> = gate.chunks(3).zip(up.chunks(3)).flat_map(|(g, u)| g.iter().chain(u).copied()).collect();
        let mut packed = Tensors::new();
        packed.insert("input".into(), Tensor::from_f32(DType::F32, vec![2, 6], &rows));
        let p = GatedParams { num_tokens: 2, intermediate_size: 3, dtype: DType::F32, packed: false };
        let pp = GatedParams { packed: true, ..p.clone() };
        for (a, b) in [(silu_and_mul(&p, &apart), silu_and_mul(&pp, &packed)), (gelu_and_mul(&p, &apart), gelu_and_mul(&pp, &packed))] {
            assert_eq!(a.unwrap()["output"], b.unwrap()["output"]);
        }
        // silu(1)·2 by hand.
        let y = silu_and_mul(&pp, &packed).unwrap()["output"].to_f32().unwrap();
        assert_eq!(y[0], (2.0 / (1.0 + (-1.0f64).exp())) as f32);
    }

    #[test]
    fn known_values() {
        // silu(1) = 1/(1+e^-1) = 0.7310585786
        assert!((Act::Silu.apply(1.0) - 0.731_058_578_6).abs() < 1e-9);
        // gelu(1) = 0.5(1+erf(1/sqrt2)) = 0.8413447461
        assert!((Act::Gelu.apply(1.0) - 0.841_344_746_1).abs() < 1e-9);
        // gelu_tanh(1) = 0.5(1+tanh(0.7978845608*1.044715)) = 0.8411919906
        assert!((Act::GeluTanh.apply(1.0) - 0.841_191_990_6).abs() < 1e-9);
        assert_eq!(Act::Relu.apply(-2.0), 0.0);
        assert_eq!(Act::Sigmoid.apply(0.0), 0.5);
        assert!((Act::Sigmoid.apply(-800.0)).abs() < 1e-300);
    }

    #[test]
    fn limits_and_nan() {
        for a in [Act::Silu, Act::Gelu, Act::GeluTanh, Act::Relu, Act::Sigmoid] {
            assert!(a.apply(f64::NAN).is_nan());
            assert_eq!(a.apply(f64::NEG_INFINITY), 0.0);
            assert!(a.apply(f64::INFINITY) >= 1.0);
            assert!(!a.apply(-1e300).is_nan() && !a.apply(1e300).is_nan());
        }
    }

    #[test]
    fn negative_tails_keep_relative_accuracy() {
        // gelu(-10) = -10·Φ(-10) = -10 · 7.619853024160527e-24
        let g = Act::Gelu.apply(-10.0);
        assert!((g / -7.619_853_024_160_527e-23 - 1.0).abs() < 1e-12, "{g}");
        // gelu_tanh(-10) = -10·σ(2u), u = √(2/π)(−10 − 44.715)
        let u = (2.0 / std::f64::consts::PI).sqrt() * (-10.0 - 44.715);
        let want = -10.0 / (1.0 + (-2.0 * u).exp());
        let got = Act::GeluTanh.apply(-10.0);
        assert!(got < 0.0 && (got / want - 1.0).abs() < 1e-12, "{got} vs {want}");
    }
}
