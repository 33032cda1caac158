//! `quantized_matmul`: y = x · dequant(W)ᵀ with W [n, k] in any weight format, kept in its
//! GGUF layout in device memory (never dequantized whole), x [m, k] f32/f16/bf16, y f32.
//!
//! Two paths, chosen at run time from the number of activation rows m:
//!
//! - **GEMV** (m ≤ [`GEMV_MAX_ROWS`], decode): a group of `group` threads per output column
//!   j (weight row j), `BLOCK / group` columns per cube. The group streams row j once, its
//!   threads taking units in turn, and multiplies each unit against all m rows of x (m is a
//!   compile-time constant, so the accumulators stay in registers; x is read as
//!   four-element vectors). Units are laid out so that consecutive threads read consecutive
//!   quants *and* consecutive activations: a quarter of a Q4_K/Q5_K 64-element chunk (8
//!   quant bytes: 8 + 8 values, the 16-byte super-block header one shared vector load), a
//!   16-byte vector of f32/f16/bf16 weights, or for the other block formats a part of 16
//!   values ([`crate::quant`], u32 word loads). (Strided activation reads made the K-quant
//!   GEMV bound by L1 wavefronts, not memory: 1.6–1.9× faster on an H100 this way. The same
//!   layout for Q8_0, four threads per block, measured slower than parts of 16.) The group's
//!   partial sums are reduced with `plane_sum` when the device has planes (the group is one
//!   plane, [`Device::plane_dim`]), else through shared memory; both paths exist, chosen at
//!   launch. Dequantized weights enter the products through one FMA each ([`fused_value`]).
//! - **GEMM** (larger m, prefill): cubes of 256 threads compute a [`TM`] × [`TN`] tile of y.
//!   For each slice of [`TK`] = 64 columns of k, the cube decodes the tile's 64 weight rows
//!   × 64 columns into shared memory once (one part, or 16 float weights, per thread,
//!   exactly as `dequantize`), and stages x beside it in two halves; each decoded weight is
//!   then used by all 64 x rows of the tile, each thread accumulating 4 × 4 outputs.
//!
//! Math in f32: products and sums in f32, y in f32. The kernels index with 32-bit integers:
//! weights, x and y must each fit in 4 GiB.

use crate::cast::f16_bits_to_f32;
use crate::device::{cube_index, grid_cubes, input, with_float, Device, GpuTensor, GpuTensors, BLOCK};
use crate::quant::{
    check_addressable, decode_part, has_offset, level_bits, level_offset, load_float, part_levels, run_a, run_b, Format, F16, F32, Q4_K,
    Q5_K,
};
use cubecl::prelude::*;
use ingot_core::{DType, Error, QuantizedMatmulParams, Result};

/// Most activation rows the GEMV path takes; more rows go through the tiled GEMM.
pub const GEMV_MAX_ROWS: usize = 8;

/// Rows of x (and y) per GEMM tile.
pub const TM: usize = 64;
/// Weight rows (columns of y) per GEMM tile.
pub const TN: usize = 64;
/// Columns of k per decoded weight tile: four parts of 16 per weight row (two 32-element
/// blocks, or a quarter of a K-quant super-block).
pub const TK: usize = 64;
/// Columns of k per staged x tile (half a weight tile: both tiles at full width would not fit
/// the 32 KiB of shared memory some devices have).
const XK: usize = TK / 2;
/// Row strides of the tiles in shared memory, one more than their width, so that threads
/// reading the same column of consecutive rows hit different banks.
const WPAD: usize = TK + 1;
const XPAD: usize = XK + 1;

/// Threads per output column on the shared-memory GEMV path.
const SMEM_GROUP: usize = 32;

/// Sum `v` over the `group` consecutive threads of its group; every thread of the group gets
/// the total. With `plane` the group is one plane (`group` = the plane width) and the sum is
/// a `plane_sum`; otherwise a shared-memory tree (every thread of the cube must call this).
#[allow(unused_assignments)]
#[cube]
fn group_sum(v: f32, #[comptime] group: usize, #[comptime] plane: bool) -> f32 {
    let mut out = v;
    if plane {
        out = plane_sum(v);
    } else {
        let mut smem = SharedMemory::<f32>::new(BLOCK as usize);
        let t = UNIT_POS_X as usize;
        let lane = t % group;
        smem[t] = v;
        sync_cube();
        // group is a power of two: log2(group) halving steps, unrolled.
        let levels = comptime!(group.trailing_zeros() as usize);
        #[unroll]
        for s in 0..levels {
            let stride = comptime!(group >> (s + 1));
            if lane < stride {
                smem[t] = smem[t] + smem[t + stride];
            }
            sync_cube();
        }
        out = smem[t - lane];
        sync_cube();
    }
    out
}

/// Reduce each row's partial sum over the group and store y[r, col] from the group's first
/// thread.
#[cube]
fn store_rows(
    acc: &Array<f32>,
    y: &mut Array<f32>,
    n: usize,
    col: usize,
    #[comptime] rows: usize,
    #[comptime] group: usize,
    #[comptime] plane: bool,
) {
    let lane = UNIT_POS_X as usize % group;
    #[unroll]
    for r in 0..rows {
        let total = group_sum(acc[r], group, plane);
        if lane == 0 && col < n {
            y[r * n + col] = total;
        }
    }
}

/// `mul·(q − c) − off` in one FMA, for the GEMV: `f` = 1 + q/2^nb is built exactly by
/// placing the nb-bit level `q` in the top mantissa bits of 1.0, and
/// `s·f − t` = mul·(q − c) − off for `s` = 2^nb·mul (exact) and `t` = (2^nb + c)·mul + off.
/// The product is exact inside the FMA, so the value is off only by the rounding of `t`
/// (half an ulp of the run's largest term, one f32 rounding, far below the protocol's
/// tolerance) and the FMA's own rounding; `dequantize` keeps the exact form.
#[cube]
fn fused_value(q: u32, s: f32, t: f32, #[comptime] nb: u32) -> f32 {
    fma(f32::reinterpret((q << comptime!(23 - nb)) | 0x3f80_0000), s, -t)
}

/// The GEMV run constants `(s, t)` of [`fused_value`] from a run's `mul` and `off`, into
/// `st[at]`, `st[at + 1]`.
#[cube]
fn fused_consts(mul: f32, off: f32, st: &mut Array<f32>, #[comptime] at: usize, #[comptime] fmt: u32) {
    let scale = f32::new(comptime!((1u32 << level_bits(fmt)) as f32));
    let shift = f32::new(comptime!(((1u32 << level_bits(fmt)) + level_offset(fmt)) as f32));
    st[at] = mul * scale;
    if comptime!(has_offset(fmt)) {
        st[at + 1] = mul * shift + off;
    } else {
        st[at + 1] = mul * shift;
    }
}

/// acc[r] += Σ x[r, e0 + i]·v[at + i] over i < 4·vecs, for each of the `rows` rows of x
/// (`k` elements each), x read as vectors of 4 from element `e0` (a multiple of 4).
#[cube]
fn dot_rows<F: Float>(
    x: &Array<Vector<F, Const<4>>>,
    e0: usize,
    k: usize,
    v: &Array<f32>,
    acc: &mut Array<f32>,
    #[comptime] at: usize,
    #[comptime] vecs: usize,
    #[comptime] rows: usize,
) {
    #[unroll]
    for r in 0..rows {
        let base = (r * k + e0) / 4;
        let mut s = 0.0f32;
        #[unroll]
        for j in 0..vecs {
            let xv = x[base + j];
            #[unroll]
            for i in 0..4usize {
                s += f32::cast_from(xv[i]) * v[at + 4 * j + i];
            }
        }
        acc[r] += s;
    }
}

/// GEMV over a block-format weight: group `UNIT_POS_X / group` of the cube handles weight
/// row `col`; its threads take the row's parts (16 values each) in turn.
#[cube(launch_unchecked)]
fn gemv_q_kernel<F: Float>(
    x: &Array<Vector<F, Const<4>>>,
    w: &Array<u32>,
    y: &mut Array<f32>,
    n: usize,
    k: usize,
    #[comptime] f: u32,
    #[comptime] block: usize,
    #[comptime] bytes: usize,
    #[comptime] parts: usize,
    #[comptime] rows: usize,
    #[comptime] group: usize,
    #[comptime] plane: bool,
) {
    let t = UNIT_POS_X as usize;
    let lane = t % group;
    let col = cube_index() * (BLOCK as usize / group) + t / group;
    let mut acc = Array::<f32>::new(rows);
    #[unroll]
    for r in 0..rows {
        acc[r] = 0.0;
    }
    if col < n {
        let nb = k / block;
        let total = nb * parts;
        let row0 = col * nb;
        let mut q = Array::<u32>::new(16usize);
        let mut cst = Array::<f32>::new(4usize);
        let mut st = Array::<f32>::new(4usize);
        let mut v = Array::<f32>::new(16usize);
        let mut u = lane;
        while u < total {
            let b = u / parts;
            let p = u % parts;
            part_levels(w, (row0 + b) * bytes, p, &mut q, &mut cst, f);
            fused_consts(cst[0], cst[1], &mut st, 0usize, f);
            fused_consts(cst[2], cst[3], &mut st, 2usize, f);
            #[unroll]
            for i in 0..8usize {
                v[i] = fused_value(q[i], st[0], st[1], comptime!(level_bits(f)));
                v[8 + i] = fused_value(q[8 + i], st[2], st[3], comptime!(level_bits(f)));
            }
            dot_rows(x, b * block + run_a(p, f), k, &v, &mut acc, 0usize, 2usize, rows);
            dot_rows(x, b * block + run_b(p, f), k, &v, &mut acc, 8usize, 2usize, rows);
            u += group;
        }
    }
    store_rows(&acc, y, n, col, rows, group, plane);
}

/// Byte `i` (0..4) of word `w`.
#[cube]
fn byte_of(w: u32, i: usize) -> u32 {
    (w >> (u32::cast_from(i) * 8)) & 0xff
}

/// Q4_K/Q5_K: the 6-bit scale and min of sub-block `j` (0..8) from the three words
/// `s0, s1, s2` holding the 12 packed scale bytes, into `out[0]` and `out[1]`: the
/// arithmetic of `quant::k4_scale_min`, on registers.
#[cube]
fn k4_scale_min_regs(s0: u32, s1: u32, s2: u32, j: usize, out: &mut Array<u32>) {
    let jj = j % 4;
    if j < 4 {
        out[0] = byte_of(s0, jj) & 63;
        out[1] = byte_of(s1, jj) & 63;
    } else {
        let hi = byte_of(s2, jj);
        out[0] = (hi & 0x0f) | ((byte_of(s0, jj) >> 6) << 4);
        out[1] = (hi >> 4) | ((byte_of(s1, jj) >> 6) << 4);
    }
}

/// One thread's share of Q4_K/Q5_K super-block `b` of the weight row starting at block
/// `row0`: chunk `c`, quant bytes `8·quarter..+8` of it (see [`gemv_k4_kernel`]).
#[allow(clippy::too_many_arguments)]
#[cube]
fn k4_unit<F: Float>(
    x: &Array<Vector<F, Const<4>>>,
    w: &Array<u32>,
    w4: &Array<Vector<u32, Const<4>>>,
    row0: usize,
    b: usize,
    c: usize,
    quarter: usize,
    k: usize,
    acc: &mut Array<f32>,
    #[comptime] f: u32,
    #[comptime] rows: usize,
) {
    let bytes = comptime!(if f == Q5_K { 176usize } else { 144usize });
    let qs_at = comptime!(if f == Q5_K { 48usize } else { 16usize });
    let nbits = comptime!(level_bits(f));
    let hsh = u32::cast_from(2 * c);
    let mut sm = Array::<u32>::new(2usize);
    let mut st = Array::<f32>::new(4usize);
    let mut v = Array::<f32>::new(16usize);
    let blk = (row0 + b) * bytes;
    let head = w4[blk / 16];
    let d = f32::reinterpret(f16_bits_to_f32(head[0] & 0xffff));
    let dmin = f32::reinterpret(f16_bits_to_f32(head[0] >> 16));
    k4_scale_min_regs(head[1], head[2], head[3], 2 * c, &mut sm);
    fused_consts(d * f32::cast_from(sm[0]), dmin * f32::cast_from(sm[1]), &mut st, 0usize, f);
    k4_scale_min_regs(head[1], head[2], head[3], 2 * c + 1, &mut sm);
    fused_consts(d * f32::cast_from(sm[0]), dmin * f32::cast_from(sm[1]), &mut st, 2usize, f);
    let qw0 = (blk + qs_at) / 4 + 8 * c + 2 * quarter;
    let hw0 = (blk + 16) / 4 + 2 * quarter;
    #[unroll]
    for h in 0..2usize {
        let word = w[qw0 + h];
        let mut hword = word;
        if f == Q5_K {
            hword = w[hw0 + h] >> hsh;
        }
        #[unroll]
        for i in 0..4usize {
            // Quant byte 8·quarter + 4h + i of the chunk: its low nibble is element
            // 64c + 8·quarter + 4h + i (run A), its high nibble that + 32 (run B).
            let sh = comptime!(8 * i as u32);
            let mut lo = (word >> sh) & 0x0f;
            let mut hi = (word >> comptime!(sh + 4)) & 0x0f;
            if f == Q5_K {
                lo |= ((hword >> sh) & 1) << 4;
                hi |= ((hword >> comptime!(sh + 1)) & 1) << 4;
            }
            v[4 * h + i] = fused_value(lo, st[0], st[1], nbits);
            v[8 + 4 * h + i] = fused_value(hi, st[2], st[3], nbits);
        }
    }
    let e0 = b * 256 + 64 * c + 8 * quarter;
    dot_rows(x, e0, k, &v, acc, 0usize, 2usize, rows);
    dot_rows(x, e0 + 32, k, &v, acc, 8usize, 2usize, rows);
}

/// GEMV over a Q4_K or Q5_K weight (super-blocks of 144 or 176 bytes, 16-byte aligned).
/// Sixteen consecutive threads share a super-block, so that together they read its quants
/// and the matching activations as contiguous runs: thread `l` (of 16) takes chunk
/// `c = l / 4` (sub-blocks 2c and 2c + 1) and the 8 quant bytes `8(l % 4)..+8` of it, i.e.
/// elements `64c + 8(l % 4)..+8` (low nibbles) and the same + 32 (high nibbles). A group of
/// `group` threads covers `group / 16` super-blocks per step. The 16-byte header (f16 d and
/// dmin, 12 scale bytes) is one vector load that the 16 threads share.
#[cube(launch_unchecked)]
fn gemv_k4_kernel<F: Float>(
    x: &Array<Vector<F, Const<4>>>,
    w: &Array<u32>,
    w4: &Array<Vector<u32, Const<4>>>,
    y: &mut Array<f32>,
    n: usize,
    k: usize,
    #[comptime] f: u32,
    #[comptime] rows: usize,
    #[comptime] group: usize,
    #[comptime] plane: bool,
) {
    let t = UNIT_POS_X as usize;
    let lane = t % group;
    let col = cube_index() * (BLOCK as usize / group) + t / group;
    let per_step = comptime!(group / 16);
    let c = (lane % 16) / 4;
    let quarter = lane % 4;
    let mut acc = Array::<f32>::new(rows);
    #[unroll]
    for r in 0..rows {
        acc[r] = 0.0;
    }
    if col < n {
        let nb = k / 256;
        let row0 = col * nb;
        // Two super-blocks per thread per step (independent loads in flight together).
        let mut b = lane / 16;
        while b + per_step < nb {
            k4_unit(x, w, w4, row0, b, c, quarter, k, &mut acc, f, rows);
            k4_unit(x, w, w4, row0, b + per_step, c, quarter, k, &mut acc, f, rows);
            b += 2 * per_step;
        }
        if b < nb {
            k4_unit(x, w, w4, row0, b, c, quarter, k, &mut acc, f, rows);
        }
    }
    store_rows(&acc, y, n, col, rows, group, plane);
}

/// GEMV over an f32/f16/bf16 weight whose rows are whole 16-byte vectors (k·size a
/// multiple of 16): each step a thread loads one vector (4 f32 or 8 16-bit weights).
#[cube(launch_unchecked)]
fn gemv_vec_kernel<F: Float>(
    x: &Array<Vector<F, Const<4>>>,
    w: &Array<Vector<u32, Const<4>>>,
    y: &mut Array<f32>,
    n: usize,
    k: usize,
    #[comptime] f: u32,
    #[comptime] rows: usize,
    #[comptime] group: usize,
    #[comptime] plane: bool,
) {
    let t = UNIT_POS_X as usize;
    let lane = t % group;
    let col = cube_index() * (BLOCK as usize / group) + t / group;
    let per_vec = comptime!(if f == F32 { 4usize } else { 8usize });
    let mut acc = Array::<f32>::new(rows);
    #[unroll]
    for r in 0..rows {
        acc[r] = 0.0;
    }
    if col < n {
        let vecs = k / per_vec;
        let mut v = Array::<f32>::new(8usize);
        let mut u = lane;
        while u < vecs {
            let vec = w[col * vecs + u];
            #[unroll]
            for j in 0..4usize {
                if f == F32 {
                    v[j] = f32::reinterpret(vec[j]);
                } else if f == F16 {
                    v[2 * j] = f32::reinterpret(f16_bits_to_f32(vec[j] & 0xffffu32));
                    v[2 * j + 1] = f32::reinterpret(f16_bits_to_f32(vec[j] >> 16));
                } else {
                    v[2 * j] = f32::reinterpret(vec[j] << 16);
                    v[2 * j + 1] = f32::reinterpret(vec[j] & 0xffff_0000u32);
                }
            }
            dot_rows(x, u * per_vec, k, &v, &mut acc, 0usize, comptime!(per_vec / 4), rows);
            u += group;
        }
    }
    store_rows(&acc, y, n, col, rows, group, plane);
}

/// GEMV over an f32/f16/bf16 weight of any k, element by element (rows that do not start
/// on a 16-byte boundary).
#[cube(launch_unchecked)]
fn gemv_elem_kernel<F: Float>(
    x: &Array<F>,
    w: &Array<u32>,
    y: &mut Array<f32>,
    n: usize,
    k: usize,
    #[comptime] f: u32,
    #[comptime] rows: usize,
    #[comptime] group: usize,
    #[comptime] plane: bool,
) {
    let t = UNIT_POS_X as usize;
    let lane = t % group;
    let col = cube_index() * (BLOCK as usize / group) + t / group;
    let mut acc = Array::<f32>::new(rows);
    #[unroll]
    for r in 0..rows {
        acc[r] = 0.0;
    }
    if col < n {
        let mut e = lane;
        while e < k {
            let wv = load_float(w, col * k + e, f);
            #[unroll]
            for r in 0..rows {
                acc[r] += f32::cast_from(x[r * k + e]) * wv;
            }
            e += group;
        }
    }
    store_rows(&acc, y, n, col, rows, group, plane);
}

/// Tiled GEMM: cube (CUBE_POS_X, CUBE_POS_Y) computes y[m0..m0 + TM, n0..n0 + TN]. For each
/// TK slice of k, thread t decodes part (or 16 floats) t % 4 of weight row t / 4 of the tile
/// into shared memory; then, for each half of the slice, the cube stages TM × XK values of x
/// (8 per thread) and thread t accumulates rows ty + 16r × columns tx + 16c (r, c < 4) of the
/// tile (tx = t % 16, ty = t / 16): 16 products per 8 shared-memory reads.
// `parts > 0` is decided at compile time: float formats (0 parts) never divide by it.
#[allow(clippy::manual_checked_ops)]
#[cube(launch_unchecked)]
fn gemm_kernel<F: Float>(
    x: &Array<F>,
    w: &Array<u32>,
    y: &mut Array<f32>,
    m: usize,
    n: usize,
    k: usize,
    #[comptime] f: u32,
    #[comptime] block: usize,
    #[comptime] bytes: usize,
    #[comptime] parts: usize,
) {
    let t = UNIT_POS_X as usize;
    let n0 = CUBE_POS_X as usize * TN;
    let m0 = CUBE_POS_Y as usize * TM;
    let mut xs = SharedMemory::<f32>::new(TM * XPAD);
    let mut ws = SharedMemory::<f32>::new(TN * WPAD);
    let tx = t % 16;
    let ty = t / 16;
    let mut acc = Array::<f32>::new(16usize);
    #[unroll]
    for i in 0..16usize {
        acc[i] = 0.0;
    }
    // This thread's slot in the weight tile.
    let wn = t / 4;
    let q = t % 4;
    let col = n0 + wn;
    let nb = k / block;
    let mut v = Array::<f32>::new(16usize);
    let mut a = Array::<f32>::new(4usize);
    let mut k0 = 0usize;
    while k0 < k {
        // Weight tile: TN × TK decoded values, zeros past n or k.
        if parts > 0 {
            let u = (k0 / TK) * 4 + q;
            let b = u / parts;
            let p = u % parts;
            if col < n && b < nb {
                decode_part(w, (col * nb + b) * bytes, p, &mut v, f);
            } else {
                #[unroll]
                for i in 0..16usize {
                    v[i] = 0.0;
                }
            }
            let oa = wn * WPAD + b * block + run_a(p, f) - k0;
            let ob = wn * WPAD + b * block + run_b(p, f) - k0;
            #[unroll]
            for i in 0..8usize {
                ws[oa + i] = v[i];
                ws[ob + i] = v[8 + i];
            }
        } else {
            #[unroll]
            for i in 0..16usize {
                let kc = k0 + 16 * q + i;
                let mut val = 0.0f32;
                if col < n && kc < k {
                    val = load_float(w, col * k + kc, f);
                }
                ws[wn * WPAD + 16 * q + i] = val;
            }
        }
        #[unroll]
        for h in 0..2usize {
            // x tile: TM × XK values from column k0 + h·XK, 8 per thread, zeros past m or k.
            #[unroll]
            for i in 0..8usize {
                let idx = t + BLOCK as usize * i;
                let mm = idx / XK;
                let kk = idx % XK;
                let row = m0 + mm;
                let kc = k0 + h * XK + kk;
                let mut val = 0.0f32;
                if row < m && kc < k {
                    val = f32::cast_from(x[row * k + kc]);
                }
                xs[mm * XPAD + kk] = val;
            }
            sync_cube();
            for kk in 0..XK {
                #[unroll]
                for r in 0..4usize {
                    a[r] = xs[(ty + 16 * r) * XPAD + kk];
                }
                #[unroll]
                for c in 0..4usize {
                    let bv = ws[(tx + 16 * c) * WPAD + h * XK + kk];
                    #[unroll]
                    for r in 0..4usize {
                        acc[4 * r + c] += a[r] * bv;
                    }
                }
            }
            sync_cube();
        }
        k0 += TK;
    }
    #[unroll]
    for r in 0..4usize {
        let row = m0 + ty + 16 * r;
        #[unroll]
        for c in 0..4usize {
            let cc = n0 + tx + 16 * c;
            if row < m && cc < n {
                y[row * n + cc] = acc[4 * r + c];
            }
        }
    }
}

/// Whether an f32/f16/bf16 weight of `k` columns can be read as 16-byte vectors (each row a
/// whole number of them).
fn vector_rows(dtype: DType, k: usize) -> bool {
    (k * dtype.type_size()).is_multiple_of(16)
}

/// `quantized_matmul`: GEMV for up to [`GEMV_MAX_ROWS`] rows of x, the tiled GEMM beyond.
pub fn quantized_matmul<R: Runtime>(d: &Device<R>, p: &QuantizedMatmulParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "quantized_matmul";
    let (m, n, k) = (p.m, p.n, p.k);
    let f = Format::of(p.weight_dtype).ok_or_else(|| Error::invalid(OP, format!("{} is not a weight format", p.weight_dtype)))?;
    let x = input(OP, inputs, "x")?;
    let w = input(OP, inputs, "w")?;
    check_addressable(OP, "the weight tensor", w.bytes())?;
    check_addressable(OP, "x", m * k * 4)?;
    check_addressable(OP, "y", m * n * 4)?;
    let y = d.alloc(DType::F32, m * n);
    let (xh, wh, yh) = (x.handle.clone(), w.handle.clone(), y.clone());
    if m <= GEMV_MAX_ROWS {
        let (group, plane) = match d.plane_dim() {
            // The K-quant kernel spreads a super-block over 16 threads of one group.
            Some(pd) if pd >= 16 || !(f.code == Q4_K || f.code == Q5_K) => (pd as usize, true),
            _ => (SMEM_GROUP, false),
        };
        let (count, dim) = grid_cubes(n.div_ceil(BLOCK as usize / group), BLOCK);
        with_float!(p.dtype, F => {
            if f.code == Q4_K || f.code == Q5_K {
                // SAFETY: x holds m·k elements (k a multiple of 256, so m·k / 4 whole
                // vectors), y m·n, w n rows of k / 256 super-blocks of 144 or 176 bytes
                // (`check_inputs`), whole 16-byte vectors. Group col < n reads the
                // super-blocks b < k / 256 of weight row col only: the header vector blk / 16,
                // quant words (blk + 16 or 48) / 4 + 8c + 2q + h and qh words (blk + 16) / 4 +
                // 2q + h (c, q < 4, h < 2: inside the block); x vectors (r·k + e) / 4 for
                // r < m, e < k; its first thread writes y[r·n + col]. Groups with col >= n
                // only join the reduction. Groups are 16 threads or more (a multiple of 16).
                unsafe {
                    gemv_k4_kernel::launch_unchecked::<F, R>(
                        &d.client,
                        count,
                        dim,
                        ArrayArg::from_raw_parts(xh, m * k / 4),
                        ArrayArg::from_raw_parts(wh.clone(), w.words()),
                        ArrayArg::from_raw_parts(wh, w.bytes() / 16),
                        ArrayArg::from_raw_parts(yh, m * n),
                        n,
                        k,
                        f.code,
                        m,
                        group,
                        plane,
                    )
                }
            } else if !f.is_float() {
                // SAFETY: x holds m·k elements (k a multiple of 32: m·k / 4 whole vectors),
                // y m·n, w n rows of k / block blocks (`check_inputs`). Group `col` < n reads
                // the blocks of weight row col only (`part_levels` stays inside its block,
                // see `quant::dequant_rows`) and x vectors (r·k + e) / 4 for r < m, e < k;
                // its first thread writes y[r·n + col]. Groups with col >= n only join the
                // reduction.
                unsafe {
                    gemv_q_kernel::launch_unchecked::<F, R>(
                        &d.client,
                        count,
                        dim,
                        ArrayArg::from_raw_parts(xh, m * k / 4),
                        ArrayArg::from_raw_parts(wh, w.words()),
                        ArrayArg::from_raw_parts(yh, m * n),
                        n,
                        k,
                        f.code,
                        f.block,
                        f.bytes,
                        f.parts,
                        m,
                        group,
                        plane,
                    )
                }
            } else if vector_rows(p.weight_dtype, k) {
                // SAFETY: as above; each weight row is k·size / 16 whole vectors (so k is a
                // multiple of 4 and x m·k / 4 vectors), and group col < n reads vectors
                // col·vecs .. (col + 1)·vecs of the n·vecs the buffer holds.
                unsafe {
                    gemv_vec_kernel::launch_unchecked::<F, R>(
                        &d.client,
                        count,
                        dim,
                        ArrayArg::from_raw_parts(xh, m * k / 4),
                        ArrayArg::from_raw_parts(wh, w.bytes() / 16),
                        ArrayArg::from_raw_parts(yh, m * n),
                        n,
                        k,
                        f.code,
                        m,
                        group,
                        plane,
                    )
                }
            } else {
                // SAFETY: as above; element col·k + e < n·k of the weight (its word
                // (col·k + e) / 2 for 16-bit weights, inside the padded buffer).
                unsafe {
                    gemv_elem_kernel::launch_unchecked::<F, R>(
                        &d.client,
                        count,
                        dim,
                        ArrayArg::from_raw_parts(xh, m * k),
                        ArrayArg::from_raw_parts(wh, w.words()),
                        ArrayArg::from_raw_parts(yh, m * n),
                        n,
                        k,
                        f.code,
                        m,
                        group,
                        plane,
                    )
                }
            }
        });
    } else {
        let count = CubeCount::Static(n.div_ceil(TN) as u32, m.div_ceil(TM) as u32, 1);
        if n.div_ceil(TN) > 65535 || m.div_ceil(TM) > 65535 {
            return Err(Error::invalid(OP, format!("m = {m}, n = {n}: more GEMM tiles than one grid holds (65535 per axis)")));
        }
        with_float!(p.dtype, F => {
            // SAFETY: x holds m·k elements, y m·n, w n rows of k / block blocks
            // (`check_inputs`). Each cube reads x rows < m and columns < k only, decodes
            // blocks b < k / block of weight rows col < n only (or floats col·k + kc with
            // kc < k), and writes y[row·n + c] for row < m, c < n. Shared tiles are indexed
            // below TM·XPAD and TN·WPAD: run offsets of a part lie inside its TK slice.
            unsafe {
                gemm_kernel::launch_unchecked::<F, R>(
                    &d.client,
                    count,
                    CubeDim::new_1d(BLOCK),
                    ArrayArg::from_raw_parts(xh, m * k),
                    ArrayArg::from_raw_parts(wh, w.words()),
                    ArrayArg::from_raw_parts(yh, m * n),
                    m,
                    n,
                    k,
                    f.code,
                    f.block,
                    f.bytes,
                    f.parts,
                )
            }
        });
    }
    Ok(GpuTensors::from([("y".to_string(), GpuTensor::new(y, DType::F32, &[m, n]))]))
}

// ---------------------------------------------------------------- registration

/// Which of this family's ops have a kernel here, for which dtypes ([`crate::Support`]).
pub(crate) fn support(op: &ingot_core::Op) -> crate::Support {
    use ingot_core::Op;
    match op {
        // Any weight format (decoded with integer operations); x, the activations, in a float dtype.
        Op::QuantizedMatmul(p) if p.dtype.is_float() => crate::Support::Float,
        _ => crate::Support::None,
    }
}
