//! `rope`: rotary position embedding of q and k (FlashInfer semantics, Llama 3.1 scaling
//! when `rope_factor` > 1).
//!
//! Layout: q [T, num_heads, head_size], k [T, num_kv_heads, head_size], pos_ids [T] i32.
//! One thread per output element: element j < rotary_dim of a head belongs to pair i
//! (NeoX: (i, i + r/2); GPT-J: (2i, 2i + 1)) and is a·cos − b·sin or b·cos + a·sin of
//! that pair; elements from rotary_dim on are copied. The r/2 inverse frequencies depend
//! only on the parameters and are computed on the host in f64 (as `ingot_cpu::rope`),
//! then stored as f32. The angle pos·inv_freq is an f32 product (the protocol's tolerance
//! allows for that); it is reduced to [−π, π] with a two-constant Cody–Waite step before
//! the device's sin/cos, whose accuracy outside that range is not specified.
//!
//! `rope_freqs` is the same kernel on one tensor, with the inverse frequencies taken from
//! its `inv_freq` input (already f32 on the device) instead of computed from the params.

use crate::device::{cube_index, cube_sum, grid_1d, grid_cubes, input, linear_pos, with_float, Device, GpuTensor, GpuTensors, BLOCK};
use cubecl::prelude::*;
use ingot_core::{Result, RopeFreqsParams, RopeParams, RopeQkvParams};
use std::f64::consts::PI;

/// The r/2 inverse frequencies, with Llama 3.1 scaling when rope_factor > 1 (docs/ops.md).
fn inv_freqs(p: &RopeParams) -> Vec<f32> {
    let r = p.rotary_dim;
    (0..r / 2)
        .map(|i| {
            let f = p.rope_theta.powf(-((2 * i) as f64) / r as f64);
            if p.rope_factor <= 1.0 {
                return f as f32;
            }
            let l = p.original_max_position as f64;
            let (low_wl, high_wl) = (l / p.low_freq_factor, l / p.high_freq_factor);
            let wl = 2.0 * PI / f;
            let g = if wl < high_wl {
                f
            } else if wl > low_wl {
                f / p.rope_factor
            } else {
                let s = (l / wl - p.low_freq_factor) / (p.high_freq_factor - p.low_freq_factor);
                (1.0 - s) * f / p.rope_factor + s * f
            };
            g as f32
        })
        .collect()
}

#[cube(launch_unchecked)]
pub(crate) fn rope_kernel<F: Float>(
    x: &Array<F>,
    pos: &Array<i32>,
    inv_freq: &Array<f32>,
    out: &mut Array<F>,
    n: usize,
    heads: usize,
    d: usize,
    r: usize,
    #[comptime] interleave: bool,
) {
    let e = linear_pos();
    if e < n {
        let j = e % d;
        let row = e - j;
        if j >= r {
            out[e] = x[e];
        } else {
            let half = r / 2;
            // (ia, ib): the pair's elements; `first`: whether j is a (else b).
            let mut i = j / 2;
            let mut ia = row + j - j % 2;
            let mut ib = ia + 1;
            let mut first = j % 2 == 0;
            if !interleave {
                i = j % half;
                ia = row + i;
                ib = ia + half;
                first = j < half;
            }
            let token = e / (heads * d);
            let theta = f32::cast_from(pos[token]) * inv_freq[i];
            // θ − k·2π with 2π = C1 + C2, C1 = 6.28125 exact in 8 bits (k·C1 is exact).
            let k = (theta * 0.159_154_94).round();
            let red = (theta - k * 6.281_25) - k * 0.001_935_307_2;
            let c = red.cos();
            let s = red.sin();
            let a = f32::cast_from(x[ia]);
            let b = f32::cast_from(x[ib]);
            let mut y = b * c + a * s;
            if first {
                y = a * c - b * s;
            }
            out[e] = F::cast_from(y);
        }
    }
}

/// `rope` on q and k.
pub fn rope<R: Runtime>(d: &Device<R>, p: &RopeParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "rope";
    let pos_t = input(OP, inputs, "pos_ids")?;
    let (t, hd) = (p.num_tokens, p.head_size);
    let pos = pos_t.handle.clone();
    let freqs = inv_freqs(p);
    let inv = d.upload_f32(&freqs);
    let mut out = GpuTensors::new();
    for (name, out_name, heads) in [("q", "q_out", p.num_heads), ("k", "k_out", p.num_kv_heads)] {
        let n = t * heads * hd;
        let x = input(OP, inputs, name)?.handle.clone();
        let o = d.alloc(p.dtype, n);
        let (count, dim) = grid_1d(n);
        with_float!(p.dtype, F => {
            // SAFETY: x holds n = t·heads·head_size elements (`check_inputs`), pos holds t,
            // inv_freq holds rotary_dim/2 (indices i < rotary_dim/2), o was allocated for n;
            // pair indices stay inside the element's own head row; threads e >= n return.
            unsafe {
                rope_kernel::launch_unchecked::<F, R>(
                    &d.client,
                    count,
                    dim,
                    ArrayArg::from_raw_parts(x, n),
                    ArrayArg::from_raw_parts(pos.clone(), t),
                    ArrayArg::from_raw_parts(inv.clone(), freqs.len().max(1)),
                    ArrayArg::from_raw_parts(o.clone(), n),
                    n,
                    heads,
                    hd,
                    p.rotary_dim,
                    p.interleave,
                )
            }
        });
        out.insert(out_name.to_string(), GpuTensor::new(o, p.dtype, &[t, heads, hd]));
    }
    Ok(out)
}

/// `rope_freqs`: `input` rotated with the given inverse frequencies.
pub fn rope_freqs<R: Runtime>(d: &Device<R>, p: &RopeFreqsParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "rope_freqs";
    let (t, heads, hd, r) = (p.num_tokens, p.num_heads, p.head_size, p.rotary_dim);
    let n = t * heads * hd;
    let x = input(OP, inputs, "input")?.handle.clone();
    let pos = input(OP, inputs, "pos_ids")?.handle.clone();
    let inv = input(OP, inputs, "inv_freq")?.handle.clone();
    let o = d.alloc(p.dtype, n);
    let (count, dim) = grid_1d(n);
    with_float!(p.dtype, F => {
        // SAFETY: x holds n = t·heads·head_size elements, pos t and inv_freq r/2 (indices
        // i < r/2 only), as `check_inputs` checked; o was allocated for n; pair indices stay
        // inside the element's own head row; threads e >= n return.
        unsafe {
            rope_kernel::launch_unchecked::<F, R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(x, n),
                ArrayArg::from_raw_parts(pos, t),
                ArrayArg::from_raw_parts(inv, (r / 2).max(1)),
                ArrayArg::from_raw_parts(o.clone(), n),
                n,
                heads,
                hd,
                r,
                p.interleave,
            )
        }
    });
    Ok(GpuTensors::from([("output".to_string(), GpuTensor::new(o, p.dtype, &[t, heads, hd]))]))
}

/// The value of element `j` of a head (at `src` in `x`) after its optional RMS scale `inv`
/// and weight (`q_norm` or `k_norm` by `is_q`) and the rotation at position `pos`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn rope_qkv_value<F: Float>(
    x: &Array<F>,
    inv_freq: &Array<f32>,
    qn: &Array<f32>,
    kn: &Array<f32>,
    src: usize,
    j: usize,
    pos: f32,
    inv: f32,
    is_q: bool,
    r: usize,
    #[comptime] interleave: bool,
    #[comptime] qk_norm: bool,
) -> f32 {
    let mut y = f32::cast_from(x[src + j]) * inv;
    if qk_norm {
        if is_q {
            y *= qn[j];
        } else {
            y *= kn[j];
        }
    }
    if j < r {
        let half = r / 2;
        let mut i = j / 2;
        let mut ja = j - j % 2;
        let mut jb = ja + 1;
        let mut first = j % 2 == 0;
        if !interleave {
            i = j % half;
            ja = i;
            jb = i + half;
            first = j < half;
        }
        let mut a = f32::cast_from(x[src + ja]) * inv;
        let mut b = f32::cast_from(x[src + jb]) * inv;
        if qk_norm {
            if is_q {
                a *= qn[ja];
                b *= qn[jb];
            } else {
                a *= kn[ja];
                b *= kn[jb];
            }
        }
        let theta = pos * inv_freq[i];
        // θ reduced as in `rope_kernel`.
        let k = (theta * 0.159_154_94).round();
        let red = (theta - k * 6.281_25) - k * 0.001_935_307_2;
        let c = red.cos();
        let s = red.sin();
        y = b * c + a * s;
        if first {
            y = a * c - b * s;
        }
    }
    y
}

/// One cube per (token, head) of the packed rows: the head's mean square through shared
/// memory when `qk_norm`, then each thread writes its elements of the Q, K or V head.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments, clippy::collapsible_else_if)]
fn rope_qkv_kernel<F: Float>(
    x: &Array<F>,
    pos: &Array<i32>,
    inv_freq: &Array<f32>,
    qn: &Array<f32>,
    kn: &Array<f32>,
    q: &mut Array<F>,
    k: &mut Array<F>,
    v: &mut Array<F>,
    heads: usize,
    t: usize,
    hq: usize,
    hk: usize,
    d: usize,
    r: usize,
    eps: f32,
    #[comptime] interleave: bool,
    #[comptime] qk_norm: bool,
    #[comptime] with_v: bool,
) {
    let cube = cube_index();
    if cube < t * heads {
        let token = cube / heads;
        let h = cube % heads;
        let src = cube * d;
        let mut inv = 1.0f32;
        if qk_norm {
            let mut acc = 0.0f32;
            let mut j = UNIT_POS_X as usize;
            while j < d {
                let a = f32::cast_from(x[src + j]);
                acc += a * a;
                j += BLOCK as usize;
            }
            inv = 1.0 / (cube_sum(acc) / f32::cast_from(d) + eps).sqrt();
        }
        let p = f32::cast_from(pos[token]);
        if h < hq {
            let dst = (token * hq + h) * d;
            let mut j = UNIT_POS_X as usize;
            while j < d {
                q[dst + j] = F::cast_from(rope_qkv_value::<F>(x, inv_freq, qn, kn, src, j, p, inv, true, r, interleave, qk_norm));
                j += BLOCK as usize;
            }
        } else if h < hq + hk {
            let dst = (token * hk + h - hq) * d;
            let mut j = UNIT_POS_X as usize;
            while j < d {
                k[dst + j] = F::cast_from(rope_qkv_value::<F>(x, inv_freq, qn, kn, src, j, p, inv, false, r, interleave, qk_norm));
                j += BLOCK as usize;
            }
        } else {
            if with_v {
                let dst = (token * hk + h - hq - hk) * d;
                let mut j = UNIT_POS_X as usize;
                while j < d {
                    v[dst + j] = x[src + j];
                    j += BLOCK as usize;
                }
            }
        }
    }
}

/// `rope_qkv`: the packed rows split into heads, Q and K normalised (`qk_norm`) and rotated.
pub fn rope_qkv<R: Runtime>(d: &Device<R>, p: &RopeQkvParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "rope_qkv";
    let (t, hq, hk, hd, r) = (p.num_tokens, p.num_heads, p.num_kv_heads, p.head_size, p.rotary_dim);
    let heads = p.row_heads();
    let x = input(OP, inputs, "qkv")?.handle.clone();
    let pos = input(OP, inputs, "pos_ids")?.handle.clone();
    let inv = input(OP, inputs, "inv_freq")?.handle.clone();
    let (qn, kn, norm_len) = if p.qk_norm {
        (input(OP, inputs, "q_norm")?.handle.clone(), input(OP, inputs, "k_norm")?.handle.clone(), hd)
    } else {
        // Not read: the kernel's qk_norm branch is compiled out.
        (inv.clone(), inv.clone(), 1)
    };
    let (q, k) = (d.alloc(p.dtype, t * hq * hd), d.alloc(p.dtype, t * hk * hd));
    // Without V the kernel's V branch is compiled out; a buffer of its own (never written)
    // stands in, so that no buffer is bound twice for writing.
    let (v, v_len) = if p.with_v { (d.alloc(p.dtype, t * hk * hd), t * hk * hd) } else { (d.alloc_bytes(4), 1) };
    let (count, dim) = grid_cubes(t * heads, BLOCK);
    with_float!(p.dtype, F => {
        // SAFETY: x holds t·heads·head_size elements, pos t, inv_freq r/2 (read at i < r/2),
        // q_norm/k_norm head_size when qk_norm (read at j < head_size; else never read), as
        // `check_inputs` checked; q, k and v were allocated for their t·heads·head_size
        // (v only written when with_v). Cube c < t·heads reads row c of x and writes head
        // c's slot of one output; threads stride j < head_size.
        unsafe {
            rope_qkv_kernel::launch_unchecked::<F, R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(x, t * heads * hd),
                ArrayArg::from_raw_parts(pos, t),
                ArrayArg::from_raw_parts(inv, (r / 2).max(1)),
                ArrayArg::from_raw_parts(qn, norm_len),
                ArrayArg::from_raw_parts(kn, norm_len),
                ArrayArg::from_raw_parts(q.clone(), t * hq * hd),
                ArrayArg::from_raw_parts(k.clone(), t * hk * hd),
                ArrayArg::from_raw_parts(v.clone(), v_len),
                heads,
                t,
                hq,
                hk,
                hd,
                r,
                p.eps as f32,
                p.interleave,
                p.qk_norm,
                p.with_v,
            )
        }
    });
    let mut out = GpuTensors::from([
        ("q".to_string(), GpuTensor::new(q, p.dtype, &[t, hq, hd])),
        ("k".to_string(), GpuTensor::new(k, p.dtype, &[t, hk, hd])),
    ]);
    if p.with_v {
        out.insert("v".to_string(), GpuTensor::new(v, p.dtype, &[t, hk, hd]));
    }
    Ok(out)
}

// ---------------------------------------------------------------- registration

/// Which of this family's ops have a kernel here, for which dtypes ([`crate::Support`]).
pub(crate) fn support(op: &ingot_core::Op) -> crate::Support {
    use ingot_core::Op;
    match op {
        Op::Rope(_) | Op::RopeFreqs(_) | Op::RopeQkv(_) => crate::Support::float(op),
        _ => crate::Support::None,
    }
}

/// The checks of input values this family's kernels leave to the host ([`crate::GpuBackend`]'s `run`):
/// positions not negative, a finite frequency table.
pub(crate) fn check_host(op: &ingot_core::Op, inputs: &ingot_core::Tensors) -> Result<()> {
    use ingot_core::{ensure, Op};
    let name = op.name();
    if let Op::Rope(_) | Op::RopeFreqs(_) | Op::RopeQkv(_) = op {
        if let Some((t, id)) = inputs["pos_ids"].to_i32()?.iter().enumerate().find(|(_, &id)| id < 0) {
            ensure!(false, name, "pos_ids[{t}] = {id} is negative");
        }
        if let Some(f) = inputs.get("inv_freq") {
            if let Some((i, v)) = f.to_f32()?.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                ensure!(false, name, "inv_freq[{i}] = {v} is not finite");
            }
        }
    }
    Ok(())
}
