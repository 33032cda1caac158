//! Logit ops: `softmax` (with temperature), `softcap`, `temperature_scale`.
//!
//! Layout: logits [num_tokens, vocab_size], rows contiguous. `softmax` runs one cube of
//! `BLOCK` threads per row: a max pass and a sum pass reduced through shared memory (no
//! plane operations), then a write pass; probabilities are f32. The element-wise ops run
//! one thread per element. Math in f32, one rounding. Matches `ingot_cpu::sampling`:
//! −Inf logits get probability 0, a row of only −Inf (or with +Inf or NaN) gives NaN.

use crate::device::{
    cube_index, cube_max, cube_reduce_u32, cube_sum, cube_sum_p, grid_1d, grid_cubes, input, linear_pos, with_float, Device, GpuTensor,
    GpuTensors, U32Op, BLOCK,
};
use cubecl::prelude::*;
use ingot_core::{
    ensure, DType, ExtractKParams, LogitsParams, MinPParams, Result, SampleParams, SoftcapParams, SoftmaxParams, TemperatureParams,
    Tensors, TopKParams, TopPParams,
};

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

/// Element-wise logit map: `cap · tanh(x / cap)` with `softcap`, else `x / s`.
#[cube(launch_unchecked)]
fn logit_map_kernel<F: Float>(x: &Array<F>, out: &mut Array<F>, n: usize, s: f32, #[comptime] softcap: bool) {
    let i = linear_pos();
    if i < n {
        let y = f32::cast_from(x[i]) / s;
        if softcap {
            // tanh(y) rounds to ±1 in f32 beyond |y| = 9; the guard also maps ±Inf to ±cap.
            let sign = select(y > 0.0, 1.0f32, -1.0f32);
            let t = select(y.abs() > 9.0, sign, y.tanh());
            out[i] = F::cast_from(s * t);
        } else {
            out[i] = F::cast_from(y);
        }
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
    logit_map(d, "softcap", p.dtype, p.num_tokens, p.vocab_size, inputs, p.cap as f32, true)
}

/// `temperature_scale`: x / temperature.
pub fn temperature_scale<R: Runtime>(d: &Device<R>, p: &TemperatureParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    logit_map(d, "temperature_scale", p.dtype, p.num_tokens, p.vocab_size, inputs, p.temperature as f32, false)
}

#[allow(clippy::too_many_arguments)]
fn logit_map<R: Runtime>(
    d: &Device<R>,
    op: &'static str,
    dtype: DType,
    t: usize,
    v: usize,
    inputs: &GpuTensors,
    s: f32,
    softcap: bool,
) -> Result<GpuTensors> {
    let n = t * v;
    let x = input(op, inputs, "logits")?.handle.clone();
    let out = d.alloc(dtype, n);
    let (count, dim) = grid_1d(n);
    with_float!(dtype, F => {
        // SAFETY: logits hold n elements (checked against the op's specs), out was
        // allocated for n, and threads with an index >= n return at once.
        unsafe {
            logit_map_kernel::launch_unchecked::<F, R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(x, n),
                ArrayArg::from_raw_parts(out.clone(), n),
                n,
                s,
                softcap,
            )
        }
    });
    Ok(GpuTensors::from([("output".to_string(), GpuTensor::new(out, dtype, &[t, v]))]))
}

// ---------------------------------------------------------------------------------------
// Ranking ops: `argmax`, `topk_mask_logits`, `extract_k_values`, `top_p_mask`,
// `min_p_mask`, `sample_from_probs`.
//
// Logits are read as u32 words (two 16-bit elements per word for f16/bf16) and decoded
// to f32 bits with integer operations, so these kernels need no f16/bf16 arithmetic on
// the device (they run for bf16 where the device has none) and copy kept logits bit for
// bit. Every comparison of values goes through a *rank key*: a u32 that orders like the
// ranking rule of docs/ops.md (larger first, NaN above everything, −0 = +0), so
// NaN and ±Inf are decided by integer compares, never by float compares that fast-math
// compilers (Metal's default) may fold. Ties between equal keys go to the lower index.
//
// Selection (top-k, extract, top-p) runs one cube of `BLOCK` threads per row: a radix
// select over the keys, 8 bits a pass from the top, with a 256-bin histogram in shared
// memory (u32 atomics) and a suffix scan over the bins to find the bin holding the
// boundary; a pass ends the search early when the boundary bin is kept whole. Ties at
// the boundary key are then split by a second radix select over the indices. The
// per-row result, a threshold key T and an index bound J (keep iff key > T, or
// key = T and index < J), is applied by an element-wise kernel over output words, so
// 16-bit rows that share a word never race. Top-p weighs the histogram by probability
// mass in 2^-30 fixed point (u32 atomics: WGSL has no float atomics), rounded per
// element, so the bins add up exactly and the boundary search is consistent.
// ---------------------------------------------------------------------------------------

/// Rank key of +Inf, −Inf and NaN (see [`rank_key`]).
const KEY_POS_INF: u32 = 0xFF80_0000;
const KEY_NEG_INF: u32 = 0x007F_FFFF;
const KEY_NAN: u32 = 0xFFFF_FFFF;
/// The key of ±0, and the smallest key of a value ≥ 0.
const KEY_ZERO: u32 = 0x8000_0000;
/// Fixed-point scale of top-p's per-element probability mass (Σ ≈ 2^30 < u32::MAX).
const MASS_SCALE: f32 = 1_073_741_824.0;
/// Largest k that `extract_k_values` sorts in shared memory (2 × 2048 u32 = 16 KiB);
/// larger k sort in global memory, one launch per bitonic step.
const SORT_SMEM: usize = 2048;

/// f32 bits of an f16 given as the low 16 bits of `h` (exact; subnormals normalized).
#[cube]
fn f16_bits_to_f32(h: u32) -> u32 {
    let sign = (h & 0x8000u32) << 16;
    let e = (h >> 10) & 0x1Fu32;
    let m = h & 0x3FFu32;
    let mut out = sign | ((e + 112) << 23) | (m << 13);
    if e == 0x1Fu32 {
        out = sign | 0x7F80_0000u32 | (m << 13);
    }
    if e == 0 {
        out = sign;
        if m != 0 {
            // m · 2^-24 with m's top bit at position p: exponent p − 24.
            let p = 31 - m.leading_zeros();
            out = sign | ((p + 103) << 23) | ((m << (23 - p)) & 0x7F_FFFFu32);
        }
    }
    out
}

/// The 16 bits of element `i` of a buffer of 16-bit values read as u32 words.
#[cube]
fn half_at(x: &Array<u32>, i: usize) -> u32 {
    (x[i / 2] >> (u32::cast_from(i % 2) * 16)) & 0xFFFFu32
}

/// f32 bits of 16-bit value `h` (`bf`: bf16, else f16).
#[cube]
fn half_to_f32(h: u32, #[comptime] bf: bool) -> u32 {
    let mut out = h << 16;
    if !bf {
        out = f16_bits_to_f32(h);
    }
    out
}

/// f32 bits of element `i` of a float buffer read as u32 words (`half`: 16-bit elements,
/// `bf`: bf16 rather than f16).
#[cube]
fn elem_bits(x: &Array<u32>, i: usize, #[comptime] half: bool, #[comptime] bf: bool) -> u32 {
    if half {
        half_to_f32(half_at(x, i), bf)
    } else {
        x[i]
    }
}

/// The rank key of f32 bits `b`: u32 order is the ranking order. Non-negative values map
/// to `b | 2^31`, negative ones to `!b`, both zeros to 2^31, every NaN to `u32::MAX`.
#[cube]
fn rank_key(b: u32) -> u32 {
    let mag = b & 0x7FFF_FFFFu32;
    let mut k = select(b >= 0x8000_0000u32, b ^ 0xFFFF_FFFFu32, b | 0x8000_0000u32);
    k = select(mag == 0, KEY_ZERO, k);
    select(mag > 0x7F80_0000u32, KEY_NAN, k)
}

/// The f32 bits of a non-NaN rank key (the inverse of [`rank_key`]; zero comes back +0).
#[cube]
fn key_bits(k: u32) -> u32 {
    select(k >= KEY_ZERO, k & 0x7FFF_FFFFu32, k ^ 0xFFFF_FFFFu32)
}

/// Find, among per-bin totals (thread b holds bin b's total `c`), the bin where the total
/// counted from the top bin down first reaches `need`. Writes `state[0]` = the bin,
/// `state[1]` = the total of the bins above it, `state[2]` = its own total. `need` is
/// clamped to [1, all bins' total]; with an all-zero histogram bin 0 is reported.
#[cube]
fn select_bin(c: u32, need: u32, scan: &mut SharedMemory<u32>, state: &mut SharedMemory<u32>) {
    let b = UNIT_POS_X as usize;
    scan[b] = c;
    if b == 0 {
        state[0] = 0;
        state[1] = 0;
        state[2] = 0;
    }
    sync_cube();
    // Inclusive suffix sums: scan[b] = Σ over bins ≥ b.
    let mut off = 1usize;
    while off < BLOCK as usize {
        let mut s = scan[b];
        if b + off < BLOCK as usize {
            s += scan[b + off];
        }
        sync_cube();
        scan[b] = s;
        sync_cube();
        off *= 2;
    }
    let total = scan[0];
    let mut n = select(need > total, total, need);
    n = select(n == 0, 1u32, n);
    let incl = scan[b];
    if incl >= n && incl - c < n {
        state[0] = b as u32;
        state[1] = incl - c;
        state[2] = c;
    }
    sync_cube();
}

/// Radix select by count over one row: the `need`-th largest value, where a value is the
/// element's rank key (`by_index` false) or, among the elements whose key is `tkey`,
/// `v − 1 − index` (`by_index`: the lowest indices rank first). Passes take 8 bits from
/// bit `shift` + 7 down, and stop early once the bin holding the boundary is kept whole.
/// Results in `state`: [3] = the selected prefix (bits below the last pass's shift zero),
/// [4] = the bin's count, [5] = how many of the bin are kept (equal to [4] when whole).
#[cube]
#[allow(clippy::too_many_arguments)]
fn radix_select_count(
    x: &Array<u32>,
    base: usize,
    v: usize,
    need0: u32,
    start_shift: u32,
    tkey: u32,
    hist: &mut SharedMemory<Atomic<u32>>,
    scan: &mut SharedMemory<u32>,
    state: &mut SharedMemory<u32>,
    #[comptime] half: bool,
    #[comptime] bf: bool,
    #[comptime] by_index: bool,
) {
    let t = UNIT_POS_X as usize;
    let mut pref = 0u32;
    let mut mask = 0u32;
    let mut need = need0;
    let mut shift = start_shift;
    let mut done = false;
    while !done {
        hist[t].store(0u32);
        sync_cube();
        let mut j = t;
        while j < v {
            let key = rank_key(elem_bits(x, base + j, half, bf));
            let mut val = key;
            let mut take = true;
            if by_index {
                val = u32::cast_from(v - 1 - j);
                take = key == tkey;
            }
            if take && (val & mask) == pref {
                hist[((val >> shift) & 0xFFu32) as usize].fetch_add(1u32);
            }
            j += BLOCK as usize;
        }
        sync_cube();
        select_bin(hist[t].load(), need, scan, state);
        let bin = state[0];
        let cnt = state[2];
        need = select(need > state[1], need - state[1], 1u32);
        pref |= bin << shift;
        mask |= 0xFFu32 << shift;
        if cnt <= need || shift == 0 {
            done = true;
        } else {
            shift -= 8;
        }
        sync_cube();
        if t == 0 {
            state[3] = pref;
            state[4] = cnt;
            state[5] = select(need > cnt, cnt, need);
        }
        sync_cube();
    }
}

/// The selection rule of the k first-ranking entries of a row: (T, J), keep iff
/// key > T, or key = T and index < J. `idx_shift`: the first radix shift over indices.
#[cube]
#[allow(clippy::too_many_arguments)]
fn select_top_k(
    x: &Array<u32>,
    base: usize,
    v: usize,
    k: u32,
    idx_shift: u32,
    hist: &mut SharedMemory<Atomic<u32>>,
    scan: &mut SharedMemory<u32>,
    state: &mut SharedMemory<u32>,
    #[comptime] half: bool,
    #[comptime] bf: bool,
) -> (u32, u32) {
    radix_select_count(x, base, v, k, 24u32, 0u32, hist, scan, state, half, bf, false);
    split_ties(x, base, v, idx_shift, hist, scan, state, half, bf)
}

/// After a key selection left its result in `state` ([3] prefix, [4] bin count, [5] kept
/// of the bin): the rule (T, J), splitting the boundary key's ties by index when only
/// part of them are kept.
#[cube]
#[allow(clippy::too_many_arguments)]
fn split_ties(
    x: &Array<u32>,
    base: usize,
    v: usize,
    idx_shift: u32,
    hist: &mut SharedMemory<Atomic<u32>>,
    scan: &mut SharedMemory<u32>,
    state: &mut SharedMemory<u32>,
    #[comptime] half: bool,
    #[comptime] bf: bool,
) -> (u32, u32) {
    let tkey = state[3];
    let cnt = state[4];
    let keep = state[5];
    let mut bound = u32::cast_from(v);
    sync_cube();
    if keep < cnt {
        // Only a full-resolution pass leaves part of a bin: every element of the bin has
        // key T; keep the `keep` lowest indices among them.
        radix_select_count(x, base, v, keep, idx_shift, tkey, hist, scan, state, half, bf, true);
        bound = u32::cast_from(v) - state[3];
        sync_cube();
    }
    (tkey, bound)
}

#[cube(launch_unchecked)]
fn topk_select_kernel(
    x: &Array<u32>,
    rule: &mut Array<u32>,
    rows: usize,
    v: usize,
    k: u32,
    idx_shift: u32,
    #[comptime] half: bool,
    #[comptime] bf: bool,
) {
    let row = cube_index();
    if row < rows {
        let mut hist = SharedMemory::<Atomic<u32>>::new(BLOCK as usize);
        let mut scan = SharedMemory::<u32>::new(BLOCK as usize);
        let mut state = SharedMemory::<u32>::new(8usize);
        let (tk, bound) = select_top_k(x, row * v, v, k, idx_shift, &mut hist, &mut scan, &mut state, half, bf);
        if UNIT_POS_X == 0 {
            rule[2 * row] = tk;
            rule[2 * row + 1] = bound;
        }
    }
}

/// Probability mass of one element in 2^-30 units: round(exp(x − m) · scale), 0 for −Inf.
/// Rounded (not truncated) so the per-element errors average out over a vocabulary.
#[cube]
fn mass(bits: u32, key: u32, m: f32, scale: f32) -> u32 {
    let mut q = 0u32;
    if key > KEY_NEG_INF {
        q = u32::cast_from((f32::exp(f32::reinterpret(bits) - m) * scale).round());
    }
    q
}

#[cube(launch_unchecked)]
fn top_p_select_kernel(
    x: &Array<u32>,
    rule: &mut Array<u32>,
    rows: usize,
    v: usize,
    top_p: f32,
    keep_all: u32,
    idx_shift: u32,
    #[comptime] half: bool,
    #[comptime] bf: bool,
    #[comptime] plane: bool,
) {
    let row = cube_index();
    if row < rows {
        let mut hist = SharedMemory::<Atomic<u32>>::new(BLOCK as usize);
        let hist_mass = SharedMemory::<Atomic<u32>>::new(BLOCK as usize);
        let mut scan = SharedMemory::<u32>::new(BLOCK as usize);
        let mut state = SharedMemory::<u32>::new(8usize);
        let t = UNIT_POS_X as usize;
        let base = row * v;
        let mut kmax = 0u32;
        let mut j = t;
        while j < v {
            let key = rank_key(elem_bits(x, base + j, half, bf));
            kmax = select(key > kmax, key, kmax);
            j += BLOCK as usize;
        }
        let kmax = cube_reduce_u32(kmax, U32Op::Max, plane);
        // Keep the whole row when top_p ≥ 1, and where the reference's probabilities are
        // NaN: a NaN or +Inf logit, or a row of only −Inf (its softmax is 0/0).
        let mut tk = 0u32;
        let mut bound = u32::cast_from(v);
        if keep_all == 0 && kmax < KEY_POS_INF && kmax > KEY_NEG_INF {
            let m = f32::reinterpret(key_bits(kmax));
            let mut z = 0.0f32;
            let mut j = t;
            while j < v {
                let bits = elem_bits(x, base + j, half, bf);
                if rank_key(bits) > KEY_NEG_INF {
                    z += f32::exp(f32::reinterpret(bits) - m);
                }
                j += BLOCK as usize;
            }
            let scale = MASS_SCALE / cube_sum_p(z, plane);
            // Radix select over keys weighted by mass: the boundary is the element whose
            // mass brings the total ranked before it, plus its own, to top_p · Q.
            let mut pref = 0u32;
            let mut mask = 0u32;
            let mut need = 0u32;
            let mut shift = 24u32;
            let mut done = false;
            while !done {
                hist[t].store(0u32);
                hist_mass[t].store(0u32);
                sync_cube();
                let mut j = t;
                while j < v {
                    let bits = elem_bits(x, base + j, half, bf);
                    let key = rank_key(bits);
                    if (key & mask) == pref {
                        let bin = ((key >> shift) & 0xFFu32) as usize;
                        hist[bin].fetch_add(1u32);
                        hist_mass[bin].fetch_add(mass(bits, key, m, scale));
                    }
                    j += BLOCK as usize;
                }
                sync_cube();
                let c_mass = hist_mass[t].load();
                if shift == 24 {
                    // The first pass sees every element: Q, and the mass to reach,
                    // ceil(top_p · Q) (a token is kept while the mass before it < top_p).
                    let q = cube_reduce_u32(c_mass, U32Op::Sum, plane);
                    need = u32::cast_from(f32::ceil(top_p * f32::cast_from(q)));
                }
                select_bin(c_mass, need, &mut scan, &mut state);
                let bin = state[0];
                let bin_mass = state[2];
                need = select(need > state[1], need - state[1], 1u32);
                let cnt = hist[bin as usize].load();
                pref |= bin << shift;
                mask |= 0xFFu32 << shift;
                if cnt <= 1 || shift == 0 {
                    done = true;
                } else {
                    shift -= 8;
                }
                sync_cube();
                if t == 0 {
                    state[3] = pref;
                    state[4] = cnt;
                    // At full resolution every tied element has the same mass: keep the
                    // fewest (lowest indices) that reach the remaining need.
                    let mut keep = cnt;
                    if cnt > 1 && bin_mass > 0 {
                        let each = bin_mass / cnt;
                        keep = select(each > 0, (need + each - 1) / each, cnt);
                        keep = select(keep > cnt, cnt, keep);
                    }
                    state[5] = keep;
                }
                sync_cube();
            }
            let (a, b) = split_ties(x, base, v, idx_shift, &mut hist, &mut scan, &mut state, half, bf);
            tk = a;
            bound = b;
        }
        if t == 0 {
            rule[2 * row] = tk;
            rule[2 * row + 1] = bound;
        }
    }
}

#[cube(launch_unchecked)]
fn row_max_kernel(
    x: &Array<u32>,
    out: &mut Array<u32>,
    rows: usize,
    v: usize,
    #[comptime] half: bool,
    #[comptime] bf: bool,
    #[comptime] plane: bool,
) {
    let row = cube_index();
    if row < rows {
        let base = row * v;
        // The largest key that is not NaN (the reference's max ignores NaN); 0 if none.
        let mut kmax = 0u32;
        let mut j = UNIT_POS_X as usize;
        while j < v {
            let key = rank_key(elem_bits(x, base + j, half, bf));
            kmax = select(key > kmax && key != KEY_NAN, key, kmax);
            j += BLOCK as usize;
        }
        let kmax = cube_reduce_u32(kmax, U32Op::Max, plane);
        if UNIT_POS_X == 0 {
            out[row] = kmax;
        }
    }
}

/// Whether element `e` (f32 bits `bits`) of a row is kept. `min_p`: the min-p rule with
/// the row's largest non-NaN key in `rule[row]`; else the rank rule (T, J) in
/// `rule[2·row..]`.
#[cube]
fn kept(bits: u32, e: usize, v: usize, rule: &Array<u32>, min_p: f32, #[comptime] by_min_p: bool) -> bool {
    let row = e / v;
    let key = rank_key(bits);
    let mut keep = false;
    if by_min_p {
        let mk = rule[row];
        // p_i / p_max = exp(x_i − max) ≥ min_p, for a finite max; NaN and −Inf never.
        if mk > KEY_NEG_INF && mk < KEY_POS_INF && key > KEY_NEG_INF && key != KEY_NAN {
            let m = f32::reinterpret(key_bits(mk));
            keep = f32::exp(f32::reinterpret(bits) - m) >= min_p;
        }
    } else {
        let tk = rule[2 * row];
        let bound = rule[2 * row + 1];
        keep = key > tk || (key == tk && u32::cast_from(e % v) < bound);
    }
    keep
}

/// Write the masked logits: kept elements copied bit for bit, the others −Inf. One thread
/// per output word (`words` of them, `n` elements in all).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn mask_apply_kernel(
    x: &Array<u32>,
    rule: &Array<u32>,
    out: &mut Array<u32>,
    words: usize,
    n: usize,
    v: usize,
    min_p: f32,
    #[comptime] half: bool,
    #[comptime] bf: bool,
    #[comptime] by_min_p: bool,
) {
    let w = linear_pos();
    if w < words {
        let word = x[w];
        if half {
            let neg_inf = select(bf, 0xFF80u32, 0xFC00u32);
            let mut res = 0u32;
            #[unroll]
            for h in 0..2u32 {
                let e = 2 * w + h as usize;
                let bits16 = (word >> (h * 16)) & 0xFFFFu32;
                let mut o = bits16;
                if e < n && !kept(half_to_f32(bits16, bf), e, v, rule, min_p, by_min_p) {
                    o = neg_inf;
                }
                res |= o << (h * 16);
            }
            out[w] = res;
        } else {
            out[w] = select(kept(word, w, v, rule, min_p, by_min_p), word, 0xFF80_0000u32);
        }
    }
}

#[cube(launch_unchecked)]
fn argmax_kernel(
    x: &Array<u32>,
    out: &mut Array<i32>,
    rows: usize,
    v: usize,
    #[comptime] half: bool,
    #[comptime] bf: bool,
    #[comptime] plane: bool,
) {
    let row = cube_index();
    if row < rows {
        let base = row * v;
        let mut best = 0u32;
        let mut best_j = 0u32;
        let mut j = UNIT_POS_X as usize;
        // Every real key is > 0, so the first element always replaces the start; a thread
        // visits indices in increasing order, so `>` keeps the first of equal keys.
        while j < v {
            let key = rank_key(elem_bits(x, base + j, half, bf));
            if key > best {
                best = key;
                best_j = u32::cast_from(j);
            }
            j += BLOCK as usize;
        }
        let top = cube_reduce_u32(best, U32Op::Max, plane);
        let first = cube_reduce_u32(select(best == top, best_j, u32::MAX), U32Op::Min, plane);
        if UNIT_POS_X == 0 {
            out[row] = i32::cast_from(select(first < u32::cast_from(v), first, 0u32));
        }
    }
}

/// Whether (ka, ia) ranks before (kb, ib): larger key, then lower index.
#[cube]
fn before(ka: u32, ia: u32, kb: u32, ib: u32) -> bool {
    ka > kb || (ka == kb && ia < ib)
}

/// `extract_k_values`, per row: select the k first-ranking entries, gather their (key,
/// index) pairs, sort them into rank order, and write the indices. `small` (kp ≤
/// SORT_SMEM): a bitonic sort over kp (k rounded up to a power of two) slots in shared
/// memory. Otherwise the pairs go to `scratch` (kp slots per row, padding last) for
/// [`bitonic_step_kernel`] and [`extract_finish_kernel`].
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn extract_kernel(
    x: &Array<u32>,
    indices: &mut Array<i32>,
    scratch: &mut Array<u32>,
    rows: usize,
    v: usize,
    k: usize,
    kp: usize,
    idx_shift: u32,
    #[comptime] half: bool,
    #[comptime] bf: bool,
    #[comptime] small: bool,
) {
    let row = cube_index();
    if row < rows {
        let mut hist = SharedMemory::<Atomic<u32>>::new(BLOCK as usize);
        let mut scan = SharedMemory::<u32>::new(BLOCK as usize);
        let mut state = SharedMemory::<u32>::new(8usize);
        let count = SharedMemory::<Atomic<u32>>::new(1usize);
        let t = UNIT_POS_X as usize;
        let base = row * v;
        let (tk, bound) = select_top_k(x, base, v, u32::cast_from(k), idx_shift, &mut hist, &mut scan, &mut state, half, bf);
        if t == 0 {
            count[0].store(0u32);
        }
        sync_cube();
        if small {
            let mut skey = SharedMemory::<u32>::new(SORT_SMEM);
            let mut sidx = SharedMemory::<u32>::new(SORT_SMEM);
            // Padding ranks last: key 0 is below every real key.
            let mut i = t;
            while i < kp {
                skey[i] = 0u32;
                sidx[i] = u32::MAX;
                i += BLOCK as usize;
            }
            sync_cube();
            let mut j = t;
            while j < v {
                let key = rank_key(elem_bits(x, base + j, half, bf));
                if key > tk || (key == tk && u32::cast_from(j) < bound) {
                    let pos = count[0].fetch_add(1u32) as usize;
                    if pos < k {
                        skey[pos] = key;
                        sidx[pos] = u32::cast_from(j);
                    }
                }
                j += BLOCK as usize;
            }
            sync_cube();
            // Bitonic sort, rank order (each final run is ordered "before" first).
            let mut size = 2usize;
            while size <= kp {
                let mut stride = size / 2;
                while stride > 0 {
                    let mut i = t;
                    while i < kp {
                        let p = i ^ stride;
                        if p > i {
                            let first = before(skey[i], sidx[i], skey[p], sidx[p]);
                            if first != ((i & size) == 0) {
                                let (ka, ia) = (skey[i], sidx[i]);
                                skey[i] = skey[p];
                                sidx[i] = sidx[p];
                                skey[p] = ka;
                                sidx[p] = ia;
                            }
                        }
                        i += BLOCK as usize;
                    }
                    sync_cube();
                    stride /= 2;
                }
                size *= 2;
            }
            let mut r = t;
            while r < k {
                indices[row * k + r] = i32::cast_from(sidx[r]);
                r += BLOCK as usize;
            }
        } else {
            let sbase = row * kp;
            let mut i = k + t;
            while i < kp {
                scratch[2 * (sbase + i)] = 0u32;
                scratch[2 * (sbase + i) + 1] = u32::MAX;
                i += BLOCK as usize;
            }
            let mut j = t;
            while j < v {
                let key = rank_key(elem_bits(x, base + j, half, bf));
                if key > tk || (key == tk && u32::cast_from(j) < bound) {
                    let pos = count[0].fetch_add(1u32) as usize;
                    if pos < k {
                        scratch[2 * (sbase + pos)] = key;
                        scratch[2 * (sbase + pos) + 1] = u32::cast_from(j);
                    }
                }
                j += BLOCK as usize;
            }
        }
    }
}

/// One compare-exchange step (run size `size`, partner distance `stride`) of a bitonic
/// sort of every row's kp (key, index) pairs in `s`, into rank order.
#[cube(launch_unchecked)]
fn bitonic_step_kernel(s: &mut Array<u32>, total: usize, kp: usize, size: usize, stride: usize) {
    let g = linear_pos();
    if g < total {
        let i = g % kp;
        let p = i ^ stride;
        if p > i {
            let a = 2 * g;
            let b = 2 * (g - i + p);
            let first = before(s[a], s[a + 1], s[b], s[b + 1]);
            if first != ((i & size) == 0) {
                let (ka, ia) = (s[a], s[a + 1]);
                s[a] = s[b];
                s[a + 1] = s[b + 1];
                s[b] = ka;
                s[b + 1] = ia;
            }
        }
    }
}

/// The first k sorted indices of every row of `s` to `indices` [rows, k].
#[cube(launch_unchecked)]
fn extract_finish_kernel(s: &Array<u32>, indices: &mut Array<i32>, total: usize, k: usize, kp: usize) {
    let g = linear_pos();
    if g < total {
        let row = g / k;
        indices[g] = i32::cast_from(s[2 * (row * kp + g % k) + 1]);
    }
}

/// An index clamped into 0..v.
#[cube]
fn clamp_index(i: i32, v: usize) -> usize {
    let j = select(i < 0, 0usize, usize::cast_from(i));
    select(j < v, j, v - 1)
}

/// `values[r, i] = input[r, indices[r, i]]`, bit for bit; one thread per output word
/// (`words` of them, `n` = rows · k elements). Indices are clamped into the row.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn gather_kernel(
    x: &Array<u32>,
    indices: &Array<i32>,
    out: &mut Array<u32>,
    words: usize,
    n: usize,
    k: usize,
    v: usize,
    #[comptime] half: bool,
) {
    let w = linear_pos();
    if w < words {
        if half {
            let mut res = 0u32;
            #[unroll]
            for h in 0..2u32 {
                let e = 2 * w + h as usize;
                if e < n {
                    let j = clamp_index(indices[e], v);
                    res |= half_at(x, (e / k) * v + j) << (h * 16);
                }
            }
            out[w] = res;
        } else {
            let j = clamp_index(indices[w], v);
            out[w] = x[(w / k) * v + j];
        }
    }
}

/// `sample_from_probs`, one cube per row: thread t sums a contiguous segment of the row,
/// an exclusive scan over the segment sums gives each segment's starting mass, and each
/// thread finds the first index in its segment whose inclusive prefix exceeds u · S with
/// a non-zero weight; the lowest such index wins. If rounding leaves none, the last
/// non-zero weight is taken (as the reference); a row with none gives 0.
#[cube(launch_unchecked)]
fn sample_kernel(probs: &Array<f32>, uniform: &Array<f32>, out: &mut Array<i32>, rows: usize, v: usize, #[comptime] plane: bool) {
    let row = cube_index();
    if row < rows {
        let mut scan = SharedMemory::<f32>::new(BLOCK as usize);
        let t = UNIT_POS_X as usize;
        let base = row * v;
        let seg = v.div_ceil(BLOCK as usize);
        let lo = select(t * seg < v, t * seg, v);
        let hi = select(lo + seg < v, lo + seg, v);
        let mut s = 0.0f32;
        let mut last = 0u32;
        for j in lo..hi {
            let p = probs[base + j];
            s += p;
            if p > 0.0 {
                last = u32::cast_from(j) + 1;
            }
        }
        // Inclusive prefix sums of the segment sums (Hillis–Steele).
        scan[t] = s;
        sync_cube();
        let mut off = 1usize;
        while off < BLOCK as usize {
            let mut a = scan[t];
            if t >= off {
                a += scan[t - off];
            }
            sync_cube();
            scan[t] = a;
            sync_cube();
            off *= 2;
        }
        let total = scan[BLOCK as usize - 1];
        let mut cum = scan[t] - s;
        sync_cube();
        let threshold = uniform[row] * total;
        let mut found = 0xFFFF_FFFFu32;
        for j in lo..hi {
            let p = probs[base + j];
            cum += p;
            if found == 0xFFFF_FFFFu32 && cum > threshold && p > 0.0 {
                found = u32::cast_from(j);
            }
        }
        let first = cube_reduce_u32(found, U32Op::Min, plane);
        let last = cube_reduce_u32(last, U32Op::Max, plane);
        if t == 0 {
            let mut pick = first;
            if first == 0xFFFF_FFFFu32 {
                pick = select(last > 0, last - 1, 0u32);
            }
            out[row] = i32::cast_from(pick);
        }
    }
}

/// (16-bit elements, bf16) flags of a float dtype for the bit-level kernels.
fn bit_layout(dtype: DType) -> (bool, bool) {
    (dtype != DType::F32, dtype == DType::BF16)
}

/// The first radix shift over indices 0..v: the highest multiple of 8 below the bit
/// length of v − 1.
fn index_shift(v: usize) -> u32 {
    let bits = usize::BITS - (v.max(2) - 1).leading_zeros();
    8 * ((bits - 1) / 8)
}

/// A u32 scratch buffer of `n` words.
fn words_buf<R: Runtime>(d: &Device<R>, n: usize) -> cubecl::server::Handle {
    d.alloc_bytes(n.max(1) * 4)
}

/// Launch the element-wise mask writer for a [rows, v] logits tensor.
fn apply_mask<R: Runtime>(d: &Device<R>, x: &GpuTensor, rule: &cubecl::server::Handle, min_p: Option<f64>) -> GpuTensor {
    let (rows, v) = (x.shape[0], x.shape[1]);
    let (half, bf) = bit_layout(x.dtype);
    let words = x.words();
    let out = d.alloc(x.dtype, rows * v);
    let rule_len = if min_p.is_some() { rows } else { 2 * rows };
    let (count, dim) = grid_1d(words);
    // SAFETY: x and out hold `words` u32 words (out allocated for rows·v elements of the
    // dtype, rounded up to words); threads with w ≥ words return. `rule` holds rule_len
    // words and is read at row e / v < rows for e < n = rows·v (padding elements e ≥ n
    // are not looked up).
    unsafe {
        mask_apply_kernel::launch_unchecked::<R>(
            &d.client,
            count,
            dim,
            ArrayArg::from_raw_parts(x.handle.clone(), words),
            ArrayArg::from_raw_parts(rule.clone(), rule_len),
            ArrayArg::from_raw_parts(out.clone(), words),
            words,
            rows * v,
            v,
            min_p.unwrap_or(0.0) as f32,
            half,
            bf,
            min_p.is_some(),
        )
    };
    GpuTensor::new(out, x.dtype, &[rows, v])
}

/// `argmax`: per row, the first index of the maximum (NaN counts as the maximum).
pub fn argmax<R: Runtime>(d: &Device<R>, p: &LogitsParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "argmax";
    let (t, v) = (p.num_tokens, p.vocab_size);
    let x = input(OP, inputs, "logits")?;
    let (half, bf) = bit_layout(p.dtype);
    let out = d.alloc(DType::I32, t);
    let (count, dim) = grid_cubes(t, BLOCK);
    // SAFETY: logits hold t·v elements in x.words() words (`check_inputs`); cube `row`
    // reads row `row` only (element indices < t·v) and writes out[row], allocated for t.
    unsafe {
        argmax_kernel::launch_unchecked::<R>(
            &d.client,
            count,
            dim,
            ArrayArg::from_raw_parts(x.handle.clone(), x.words()),
            ArrayArg::from_raw_parts(out.clone(), t),
            t,
            v,
            half,
            bf,
            d.plane_dim().is_some(),
        )
    };
    Ok(GpuTensors::from([("indices".to_string(), GpuTensor::new(out, DType::I32, &[t]))]))
}

/// `topk_mask_logits`: keep exactly the k first-ranking logits of each row, −Inf elsewhere.
pub fn topk_mask_logits<R: Runtime>(d: &Device<R>, p: &TopKParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "topk_mask_logits";
    let (t, v) = (p.num_tokens, p.vocab_size);
    let x = input(OP, inputs, "logits")?;
    let (half, bf) = bit_layout(p.dtype);
    let rule = words_buf(d, 2 * t);
    let (count, dim) = grid_cubes(t, BLOCK);
    // SAFETY: logits hold t·v elements in x.words() words (`check_inputs`); cube `row`
    // reads row `row` only and writes rule[2·row..2·row+2] (2·t words allocated). The
    // histogram bins are 8-bit digits (< BLOCK), and every loop is bounded by v.
    unsafe {
        topk_select_kernel::launch_unchecked::<R>(
            &d.client,
            count,
            dim,
            ArrayArg::from_raw_parts(x.handle.clone(), x.words()),
            ArrayArg::from_raw_parts(rule.clone(), 2 * t),
            t,
            v,
            p.k as u32,
            index_shift(v),
            half,
            bf,
        )
    };
    Ok(GpuTensors::from([("masked".to_string(), apply_mask(d, x, &rule, None))]))
}

/// `top_p_mask`: keep each row's first-ranking logits while the probability before them is
/// below top_p (at least one), −Inf elsewhere.
pub fn top_p_mask<R: Runtime>(d: &Device<R>, p: &TopPParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "top_p_mask";
    let (t, v) = (p.num_tokens, p.vocab_size);
    let x = input(OP, inputs, "logits")?;
    let (half, bf) = bit_layout(p.dtype);
    let rule = words_buf(d, 2 * t);
    let (count, dim) = grid_cubes(t, BLOCK);
    // SAFETY: as `topk_mask_logits`; the mass histogram's per-bin sums stay below 2^32
    // (Σ mass ≈ 2^30 plus one rounding unit per element).
    unsafe {
        top_p_select_kernel::launch_unchecked::<R>(
            &d.client,
            count,
            dim,
            ArrayArg::from_raw_parts(x.handle.clone(), x.words()),
            ArrayArg::from_raw_parts(rule.clone(), 2 * t),
            t,
            v,
            p.top_p as f32,
            u32::from(p.top_p >= 1.0),
            index_shift(v),
            half,
            bf,
            d.plane_dim().is_some(),
        )
    };
    Ok(GpuTensors::from([("masked".to_string(), apply_mask(d, x, &rule, None))]))
}

/// `min_p_mask`: keep logits with exp(x − max) ≥ min_p, −Inf elsewhere.
pub fn min_p_mask<R: Runtime>(d: &Device<R>, p: &MinPParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "min_p_mask";
    let (t, v) = (p.num_tokens, p.vocab_size);
    let x = input(OP, inputs, "logits")?;
    let (half, bf) = bit_layout(p.dtype);
    let rule = words_buf(d, t);
    let (count, dim) = grid_cubes(t, BLOCK);
    // SAFETY: logits hold t·v elements in x.words() words (`check_inputs`); cube `row`
    // reads row `row` only and writes rule[row] (t words allocated).
    unsafe {
        row_max_kernel::launch_unchecked::<R>(
            &d.client,
            count,
            dim,
            ArrayArg::from_raw_parts(x.handle.clone(), x.words()),
            ArrayArg::from_raw_parts(rule.clone(), t),
            t,
            v,
            half,
            bf,
            d.plane_dim().is_some(),
        )
    };
    Ok(GpuTensors::from([("masked".to_string(), apply_mask(d, x, &rule, Some(p.min_p)))]))
}

/// `extract_k_values`: per row the k first-ranking values (bit for bit) and their indices,
/// in rank order.
pub fn extract_k_values<R: Runtime>(d: &Device<R>, p: &ExtractKParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "extract_k_values";
    let (m, n, k) = (p.m, p.n, p.k);
    let x = input(OP, inputs, "input")?;
    let (half, bf) = bit_layout(p.dtype);
    let kp = k.next_power_of_two();
    let small = kp <= SORT_SMEM;
    let indices = d.alloc(DType::I32, m * k);
    // The large-k path's (key, index) pairs: kp slots per row.
    let scratch_words = if small { 1 } else { 2 * m * kp };
    let scratch = words_buf(d, scratch_words);
    let (count, dim) = grid_cubes(m, BLOCK);
    // SAFETY: input holds m·n elements in x.words() words (`check_inputs`); cube `row`
    // reads row `row` only, writes indices[row·k .. row·k + k] (m·k allocated) and, on
    // the large path, scratch slots row·kp .. row·kp + kp (2·m·kp words allocated). A
    // gathered position is written only when < k, and the small path's shared arrays
    // hold SORT_SMEM ≥ kp slots.
    unsafe {
        extract_kernel::launch_unchecked::<R>(
            &d.client,
            count,
            dim,
            ArrayArg::from_raw_parts(x.handle.clone(), x.words()),
            ArrayArg::from_raw_parts(indices.clone(), m * k),
            ArrayArg::from_raw_parts(scratch.clone(), scratch_words),
            m,
            n,
            k,
            kp,
            index_shift(n),
            half,
            bf,
            small,
        )
    };
    if !small {
        let total = m * kp;
        let (count, dim) = grid_1d(total);
        let mut size = 2;
        while size <= kp {
            let mut stride = size / 2;
            while stride > 0 {
                // SAFETY: thread g < m·kp swaps pairs g and g − i + (i ^ stride), both in
                // its row's kp slots (i ^ stride < kp since kp is a power of two).
                unsafe {
                    bitonic_step_kernel::launch_unchecked::<R>(
                        &d.client,
                        count.clone(),
                        dim,
                        ArrayArg::from_raw_parts(scratch.clone(), scratch_words),
                        total,
                        kp,
                        size,
                        stride,
                    )
                };
                stride /= 2;
            }
            size *= 2;
        }
        let (count, dim) = grid_1d(m * k);
        // SAFETY: thread g < m·k reads slot (g / k)·kp + g % k < m·kp and writes indices[g].
        unsafe {
            extract_finish_kernel::launch_unchecked::<R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(scratch.clone(), scratch_words),
                ArrayArg::from_raw_parts(indices.clone(), m * k),
                m * k,
                k,
                kp,
            )
        };
    }
    let values = d.alloc(p.dtype, m * k);
    let vt = GpuTensor::new(values.clone(), p.dtype, &[m, k]);
    let words = vt.words();
    let (count, dim) = grid_1d(words);
    // SAFETY: thread w < words writes values word w (allocated for m·k elements); it reads
    // indices[e] for e < m·k and input element (e / k)·n + j with j clamped to 0..n.
    unsafe {
        gather_kernel::launch_unchecked::<R>(
            &d.client,
            count,
            dim,
            ArrayArg::from_raw_parts(x.handle.clone(), x.words()),
            ArrayArg::from_raw_parts(indices.clone(), m * k),
            ArrayArg::from_raw_parts(values, words),
            words,
            m * k,
            k,
            n,
            half,
        )
    };
    Ok(GpuTensors::from([("values".to_string(), vt), ("indices".to_string(), GpuTensor::new(indices, DType::I32, &[m, k]))]))
}

/// The host path's checks of `sample_from_probs` values, as the reference makes them and
/// in its order (row by row: u in [0, 1), finite non-negative weights, mass > 0 summed in
/// f64). The device path does not read values back; its kernel stays in bounds anyway.
pub(crate) fn check_sample(p: &SampleParams, inputs: &Tensors) -> Result<()> {
    const OP: &str = "sample_from_probs";
    let probs = inputs["probs"].to_f32()?;
    for (r, &u) in inputs["uniform"].to_f32()?.iter().enumerate() {
        ensure!((0.0..1.0).contains(&u), OP, "uniform[{r}] = {u} is outside [0, 1)");
        let row = &probs[r * p.vocab_size..(r + 1) * p.vocab_size];
        if let Some(i) = row.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
            ensure!(false, OP, "probs[{r}][{i}] = {} is not a finite non-negative weight", row[i]);
        }
        ensure!(row.iter().map(|&v| v as f64).sum::<f64>() > 0.0, OP, "row {r} has no probability mass (all zeros)");
    }
    Ok(())
}

/// `sample_from_probs`: per row the first index whose inclusive prefix sum of weights
/// exceeds u · Σ. Weights and u are not checked here (the host path checks them); any
/// values give an index inside the row.
pub fn sample_from_probs<R: Runtime>(d: &Device<R>, p: &SampleParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "sample_from_probs";
    let (t, v) = (p.num_tokens, p.vocab_size);
    let probs = input(OP, inputs, "probs")?.handle.clone();
    let u = input(OP, inputs, "uniform")?.handle.clone();
    let out = d.alloc(DType::I32, t);
    let (count, dim) = grid_cubes(t, BLOCK);
    // SAFETY: probs hold t·v f32 and uniform t (`check_inputs`); cube `row` reads row
    // `row` (segments clamped to 0..v) and uniform[row], and writes out[row] (t allocated).
    unsafe {
        sample_kernel::launch_unchecked::<R>(
            &d.client,
            count,
            dim,
            ArrayArg::from_raw_parts(probs, t * v),
            ArrayArg::from_raw_parts(u, t),
            ArrayArg::from_raw_parts(out.clone(), t),
            t,
            v,
            d.plane_dim().is_some(),
        )
    };
    Ok(GpuTensors::from([("samples".to_string(), GpuTensor::new(out, DType::I32, &[t]))]))
}

// ---------------------------------------------------------------- registration

/// Which of this family's ops have a kernel here, for which dtypes ([`crate::Support`]).
pub(crate) fn support(op: &ingot_core::Op) -> crate::Support {
    use ingot_core::Op;
    match op {
        Op::Softmax(_) | Op::Softcap(_) | Op::TemperatureScale(_) => crate::Support::float(op),
        // Ranking and sampling: logits decoded with integer operations (any device).
        Op::TopkMaskLogits(_) | Op::ExtractKValues(_) | Op::Argmax(_) | Op::TopPMask(_) | Op::MinPMask(_) => {
            crate::Support::bits_if_float(op)
        }
        Op::SampleFromProbs(_) => crate::Support::Bits,
        _ => crate::Support::None,
    }
}

/// The checks of input values this family's kernels leave to the host ([`crate::GpuBackend`]'s `run`).
pub(crate) fn check_host(op: &ingot_core::Op, inputs: &Tensors) -> Result<()> {
    match op {
        ingot_core::Op::SampleFromProbs(p) => check_sample(p, inputs),
        _ => Ok(()),
    }
}
