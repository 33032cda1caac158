//! NEON kernels (aarch64): the same integer block dots and f32 scale products as
//! [`super::portable`], the f32 products summed over four lanes.
//!
//! The 8-bit products use the dot-product extension's `sdot` (signed × signed bytes,
//! four products summed into each i32 lane), so the weight levels stay signed as the
//! formats define them: Q4_0, Q5_0, Q3_K and Q6_K centred (`q − 8`, `q − 16`, `q − 4`,
//! `q − 32`, no min term), Q8_0 as stored, the formats with a min (Q4_1, Q5_1, Q2_K,
//! Q4_K, Q5_K) with their non-negative levels (at most 31) and the min term apart. No
//! sum can overflow: a product is at most 128·127 in magnitude (activations lie in
//! −127..=127).
//!
//! CPUs without the extension (Armv8.0 cores: Cortex-A53/A72, …) run the same kernels
//! with `sdot` replaced by widening multiplies and pairwise adds (`smull`, `saddlp`,
//! `addp`) that sum the same four products into the same lane, so both give the same
//! bits; [`kernel`] picks one at run time. Rust 1.95 has no stable `vdotq_s32` (nor
//! the f16 vector type of `vcvt_f32_f16`): `sdot` and the f16 widening `fcvtl` are
//! inline assembly, in functions compiled with the features they need.
//!
//! A kernel call takes `C` weight rows × `R` activation rows (`C·R ≤ 8`) with one FMA
//! chain per pair (several rows share each decoded weight block, or the chains of
//! several weight rows overlap); the arithmetic of a pair is the same whatever C and R
//! are. AArch64 has 32 vector registers, so every format runs 4 × 1 directly.
//!
//! Safety: NEON is part of the aarch64 baseline; the `dotprod` kernels need the
//! extension, which [`kernel`] checks. The kernels check their slice lengths
//! ([`check_q8`], [`check_f32`]) before reading through raw pointers.

// Index loops over the const-sized accumulator arrays are the clearest form here.
#![allow(clippy::needless_range_loop)]

use super::{block_scale, check_f32, check_q8, Q8Ref, RowKernel, QB};
use crate::quant::{k4_scale_min, q3k_scale};
use std::arch::aarch64::*;
use std::arch::asm;

/// Four f16 values (their bits) widened to f32 (`fcvtl`, base AArch64 SIMD).
#[inline(always)]
unsafe fn f16x4(h: uint16x4_t) -> float32x4_t {
    let r: float32x4_t;
    asm!("fcvtl {0:v}.4s, {1:v}.4h", out(vreg) r, in(vreg) h, options(pure, nomem, nostack, preserves_flags));
    r
}

/// The f16 at `p` (unaligned) as f32.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    vgetq_lane_f32::<0>(f16x4(vdup_n_u16(std::ptr::read_unaligned(p as *const u16))))
}

/// Four f16 values (bits) from `h`, as f32.
#[inline(always)]
unsafe fn f16s(h: *const u16) -> float32x4_t {
    f16x4(vld1_u16(h))
}

/// `acc + Σ a·b`, lane `i` getting the four products of bytes `4i..4i+4` (`sdot`).
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    asm!("sdot {0:v}.4s, {1:v}.16b, {2:v}.16b", inout(vreg) acc, in(vreg) a, in(vreg) b, options(pure, nomem, nostack, preserves_flags));
    acc
}

/// [`sdot`] (`DP`) or the same lane sums without the extension: the sixteen products
/// widened to i16 (exact: at most 128·127), adjacent pairs summed to i32, then adjacent
/// pairs again, which puts bytes `4i..4i+4` in lane `i`.
#[inline(always)]
unsafe fn dot<const DP: bool>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    if DP {
        sdot(acc, a, b)
    } else {
        let lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
        let hi = vpaddlq_s16(vmull_high_s8(a, b));
        vaddq_s32(acc, vpaddq_s32(lo, hi))
    }
}

/// `Σ a·b` over 32 levels (`a` and `b` two halves of 16), in four i32 lanes.
#[inline(always)]
unsafe fn dot32<const DP: bool>(a: (int8x16_t, int8x16_t), b: (int8x16_t, int8x16_t)) -> int32x4_t {
    dot::<DP>(dot::<DP>(vdupq_n_s32(0), a.0, b.0), a.1, b.1)
}

/// The 32 bytes at `p` as two halves.
#[inline(always)]
unsafe fn load32(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    (vld1q_u8(p), vld1q_u8(p.add(16)))
}

/// The 32 activation levels of block `b` of row `x`.
#[inline(always)]
unsafe fn xload(x: &Q8Ref, b: usize) -> (int8x16_t, int8x16_t) {
    let p = x.qs.as_ptr().add(b * QB);
    (vld1q_s8(p), vld1q_s8(p.add(16)))
}

/// The 32 nibbles of the 16 bytes at `p`: the low nibbles (levels 0..16), the high ones (16..32).
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    let v = vld1q_u8(p);
    (vandq_u8(v, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(v))
}

/// Byte `j` of the 32 is 0x10 where bit `j` of the little-endian u32 at `p` is set, else 0
/// (the fifth bits of a Q5_0/Q5_1 block).
#[inline(always)]
unsafe fn fifth_bits(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    const BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let bit = vld1q_u8(BIT.as_ptr());
    let h = |i: usize| vdup_n_u8(*p.add(i));
    let set = |lo: usize| vandq_u8(vtstq_u8(vcombine_u8(h(lo), h(lo + 1)), bit), vdupq_n_u8(0x10));
    (set(0), set(2))
}

/// `a − o` per byte, as signed levels.
#[inline(always)]
unsafe fn centre(a: (uint8x16_t, uint8x16_t), o: u8) -> (int8x16_t, int8x16_t) {
    let o = vdupq_n_u8(o);
    (vreinterpretq_s8_u8(vsubq_u8(a.0, o)), vreinterpretq_s8_u8(vsubq_u8(a.1, o)))
}

#[inline(always)]
unsafe fn signed(a: (uint8x16_t, uint8x16_t)) -> (int8x16_t, int8x16_t) {
    (vreinterpretq_s8_u8(a.0), vreinterpretq_s8_u8(a.1))
}

#[inline(always)]
unsafe fn or2(a: (uint8x16_t, uint8x16_t), b: (uint8x16_t, uint8x16_t)) -> (uint8x16_t, uint8x16_t) {
    (vorrq_u8(a.0, b.0), vorrq_u8(a.1, b.1))
}

/// `(a >> n) & mask` per byte of both halves (`n` not a constant: a negative left shift).
#[inline(always)]
unsafe fn shr_mask(a: (uint8x16_t, uint8x16_t), n: usize, mask: u8) -> (uint8x16_t, uint8x16_t) {
    let (s, m) = (vdupq_n_s8(-(n as i8)), vdupq_n_u8(mask));
    (vandq_u8(vshlq_u8(a.0, s), m), vandq_u8(vshlq_u8(a.1, s), m))
}

/// `val` per byte where `a & bit` is non-zero, else 0.
#[inline(always)]
unsafe fn bit_to(a: (uint8x16_t, uint8x16_t), bit: u8, val: u8) -> (uint8x16_t, uint8x16_t) {
    let (b, v) = (vdupq_n_u8(bit), vdupq_n_u8(val));
    (vandq_u8(vtstq_u8(a.0, b), v), vandq_u8(vtstq_u8(a.1, b), v))
}

/// Sum of the four lanes (`faddp` twice: `(l0 + l1) + (l2 + l3)`).
#[inline(always)]
unsafe fn hsum(v: float32x4_t) -> f32 {
    vaddvq_f32(v)
}

/// Quantize `x` into 8-bit blocks; bit-identical to [`super::portable::quantize`]:
/// the same scale from [`block_scale`], `fcvtns` rounds half to even as
/// `round_ties_even` does, and the level sum is exact in i32 whatever its order.
#[target_feature(enable = "neon")]
pub(super) unsafe fn quantize(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    let nb = x.len() / QB;
    assert!(x.len() == nb * QB && qs.len() == x.len() && d.len() == nb && s.len() == nb, "quantize: buffer sizes");
    for b in 0..nb {
        let p = x.as_ptr().add(b * QB);
        let mut v = [vdupq_n_f32(0.0); 8];
        for (i, v) in v.iter_mut().enumerate() {
            *v = vld1q_f32(p.add(4 * i));
        }
        // max|x| (a NaN lane makes it NaN, which the NaN test below reports anyway).
        let mut a = vabsq_f32(v[0]);
        // Lanes that are not equal to themselves: NaNs.
        let mut ord = vceqq_f32(v[0], v[0]);
        for v in &v[1..] {
            a = vmaxq_f32(a, vabsq_f32(*v));
            ord = vandq_u32(ord, vceqq_f32(*v, *v));
        }
        let out = qs.as_mut_ptr().add(b * QB);
        match block_scale(vmaxvq_f32(a), vminvq_u32(ord) == 0) {
            None => {
                vst1q_s8(out, vdupq_n_s8(0));
                vst1q_s8(out.add(16), vdupq_n_s8(0));
                d[b] = f32::NAN;
                s[b] = f32::NAN;
            }
            Some((dd, id)) => {
                let (lim, idv) = (vdupq_n_s32(127), vdupq_n_f32(id));
                let mut q = [vdupq_n_s32(0); 8];
                let mut sum = vdupq_n_s32(0);
                for (q, v) in q.iter_mut().zip(v) {
                    *q = vmaxq_s32(vminq_s32(vcvtnq_s32_f32(vmulq_f32(v, idv)), lim), vnegq_s32(lim));
                    sum = vaddq_s32(sum, *q);
                }
                for h in 0..2 {
                    let w = |i: usize| vcombine_s16(vmovn_s32(q[4 * h + i]), vmovn_s32(q[4 * h + i + 1]));
                    vst1q_s8(out.add(16 * h), vcombine_s8(vmovn_s16(w(0)), vmovn_s16(w(2))));
                }
                d[b] = dd;
                s[b] = dd * vaddvq_s32(sum) as f32;
            }
        }
    }
}

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;

/// Blocks per chunk of [`blocks32`]: the weight scales and the scale products of a chunk
/// are computed first (four at a time), so the inner loop only loads them.
const CHUNK: usize = 32;

/// The signed levels of the 32-element block at `p`: Q4_0 and Q5_0 centred, Q4_1 and
/// Q5_1 as stored (their min is a separate term), Q8_0 as stored.
#[inline(always)]
unsafe fn levels32<const F: u8>(p: *const u8) -> (int8x16_t, int8x16_t) {
    match F {
        Q4_0 => centre(nibbles(p.add(2)), 8),
        Q4_1 => signed(nibbles(p.add(4))),
        Q5_0 => centre(or2(nibbles(p.add(6)), fifth_bits(p.add(2))), 16),
        Q5_1 => signed(or2(nibbles(p.add(8)), fifth_bits(p.add(4)))),
        _ => signed(load32(p.add(2))),
    }
}

/// The 32-element formats, `C` weight rows × `R` activation rows. Per pair one
/// accumulator gets `(d_w · d_x) · Σq·x_q` per block; Q4_1 and Q5_1 add `m_w · s_x`
/// to a second, four blocks at a time (a chunk's last one to three blocks in a scalar).
#[inline(always)]
unsafe fn blocks32<const C: usize, const R: usize, const F: u8, const DP: bool>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    let bytes = match F {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        _ => 34,
    };
    let affine = F == Q4_1 || F == Q5_1;
    let nb = check_q8(w, bytes, QB, xs, out);
    assert!(out.len() == C * R);
    let xs: &[Q8Ref; R] = xs.try_into().unwrap();
    let row = |c: usize| w.as_ptr().add(c * nb * bytes);
    let mut acc = [[vdupq_n_f32(0.0); R]; C];
    let mut macc = [[vdupq_n_f32(0.0); R]; C];
    let mut mtail = [[0f32; R]; C];
    let mut prod = [[[0f32; CHUNK]; R]; C];
    let mut b0 = 0;
    while b0 < nb {
        let cn = CHUNK.min(nb - b0);
        let full = cn / 4 * 4;
        for c in 0..C {
            let wp = row(c).add(b0 * bytes);
            // The chunk's f16 scales and mins, zero-padded to a multiple of four, as f32.
            let (mut dh, mut mh) = ([0u16; CHUNK], [0u16; CHUNK]);
            for b in 0..cn {
                dh[b] = std::ptr::read_unaligned(wp.add(b * bytes) as *const u16);
                if affine {
                    mh[b] = std::ptr::read_unaligned(wp.add(b * bytes + 2) as *const u16);
                }
            }
            let (mut dw, mut mw) = ([0f32; CHUNK], [0f32; CHUNK]);
            for b in (0..cn).step_by(4) {
                vst1q_f32(dw.as_mut_ptr().add(b), f16s(dh.as_ptr().add(b)));
                if affine {
                    vst1q_f32(mw.as_mut_ptr().add(b), f16s(mh.as_ptr().add(b)));
                }
            }
            for r in 0..R {
                let (xd, xsum) = (xs[r].d.as_ptr().add(b0), xs[r].s.as_ptr().add(b0));
                let pr = prod[c][r].as_mut_ptr();
                for b in (0..full).step_by(4) {
                    vst1q_f32(pr.add(b), vmulq_f32(vld1q_f32(dw.as_ptr().add(b)), vld1q_f32(xd.add(b))));
                    if affine {
                        macc[c][r] = vfmaq_f32(macc[c][r], vld1q_f32(mw.as_ptr().add(b)), vld1q_f32(xsum.add(b)));
                    }
                }
                for b in full..cn {
                    *pr.add(b) = dw[b] * *xd.add(b);
                    if affine {
                        mtail[c][r] += mw[b] * *xsum.add(b);
                    }
                }
            }
        }
        for b in 0..cn {
            for c in 0..C {
                let q = levels32::<F>(row(c).add((b0 + b) * bytes));
                for r in 0..R {
                    let dot = dot32::<DP>(q, xload(&xs[r], b0 + b));
                    acc[c][r] = vfmaq_n_f32(acc[c][r], vcvtq_f32_s32(dot), prod[c][r][b]);
                }
            }
        }
        b0 += cn;
    }
    for c in 0..C {
        for r in 0..R {
            out[c * R + r] = hsum(acc[c][r]) + (hsum(macc[c][r]) + mtail[c][r]);
        }
    }
}

/// `prod[r][i] = f · d_x[8 sb + i]` for the eight activation blocks of super-block `sb`.
#[inline(always)]
unsafe fn scale8<const R: usize>(xs: &[Q8Ref; R], sb: usize, f: f32, prod: &mut [[f32; 8]; R]) {
    for r in 0..R {
        let xd = xs[r].d.as_ptr().add(8 * sb);
        vst1q_f32(prod[r].as_mut_ptr(), vmulq_n_f32(vld1q_f32(xd), f));
        vst1q_f32(prod[r].as_mut_ptr().add(4), vmulq_n_f32(vld1q_f32(xd.add(4)), f));
    }
}

/// Q4_K (`Q5` false) and Q5_K, `C` weight rows × `R` activation rows: eight sub-blocks of
/// 32, each one activation block, levels `0..=15` (`0..=31`). Per pair one accumulator
/// gets `(d · d_x) · sc·Σq·x_q` per sub-block, a second `(dmin · m) · s_x`, eight
/// sub-blocks at a time.
#[inline(always)]
unsafe fn q45_k<const C: usize, const R: usize, const Q5: bool, const DP: bool>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    let bytes = if Q5 { 176 } else { 144 };
    let nb = check_q8(w, bytes, 256, xs, out);
    assert!(out.len() == C * R);
    let xs: &[Q8Ref; R] = xs.try_into().unwrap();
    let row = |c: usize| w.as_ptr().add(c * nb * bytes);
    let mut acc = [[vdupq_n_f32(0.0); R]; C];
    let mut macc = [[vdupq_n_f32(0.0); R]; C];
    let mut prod = [[[0f32; 8]; R]; C];
    let mut sc = [[0i32; 8]; C];
    for sb in 0..nb {
        for c in 0..C {
            let p = row(c).add(sb * bytes);
            let packed = std::slice::from_raw_parts(p.add(4), 12);
            let mut mn = [0f32; 8];
            for j in 0..8 {
                let (s, m) = k4_scale_min(packed, j);
                sc[c][j] = i32::from(s);
                mn[j] = f32::from(m);
            }
            let dmin = f16_at(p.add(2));
            let dm = [vmulq_n_f32(vld1q_f32(mn.as_ptr()), dmin), vmulq_n_f32(vld1q_f32(mn.as_ptr().add(4)), dmin)];
            scale8(xs, sb, f16_at(p), &mut prod[c]);
            for r in 0..R {
                let xsum = xs[r].s.as_ptr().add(8 * sb);
                macc[c][r] = vfmaq_f32(macc[c][r], dm[0], vld1q_f32(xsum));
                macc[c][r] = vfmaq_f32(macc[c][r], dm[1], vld1q_f32(xsum.add(4)));
            }
        }
        for j2 in 0..4 {
            for c in 0..C {
                let p = row(c).add(sb * bytes);
                let q = load32(p.add(if Q5 { 48 } else { 16 } + 32 * j2));
                let (mut lo, mut hi) =
                    ((vandq_u8(q.0, vdupq_n_u8(0x0F)), vandq_u8(q.1, vdupq_n_u8(0x0F))), (vshrq_n_u8::<4>(q.0), vshrq_n_u8::<4>(q.1)));
                if Q5 {
                    let qh = load32(p.add(16));
                    lo = or2(lo, bit_to(qh, 1 << (2 * j2), 0x10));
                    hi = or2(hi, bit_to(qh, 1 << (2 * j2 + 1), 0x10));
                }
                let (lo, hi) = (signed(lo), signed(hi));
                let xb = 8 * sb + 2 * j2;
                for r in 0..R {
                    let p0 = vmulq_n_s32(dot32::<DP>(lo, xload(&xs[r], xb)), sc[c][2 * j2]);
                    let p1 = vmulq_n_s32(dot32::<DP>(hi, xload(&xs[r], xb + 1)), sc[c][2 * j2 + 1]);
                    acc[c][r] = vfmaq_n_f32(acc[c][r], vcvtq_f32_s32(p0), prod[c][r][2 * j2]);
                    acc[c][r] = vfmaq_n_f32(acc[c][r], vcvtq_f32_s32(p1), prod[c][r][2 * j2 + 1]);
                }
            }
        }
    }
    for c in 0..C {
        for r in 0..R {
            out[c * R + r] = hsum(acc[c][r]) - hsum(macc[c][r]);
        }
    }
}

const Q2_K: u8 = 0;
const Q3_K: u8 = 1;
const Q6_K: u8 = 2;

/// Q2_K, Q3_K and Q6_K, `C` weight rows × `R` activation rows: sixteen sub-blocks of 16,
/// runs of 32 (one activation block, two sub-blocks) built from 2-bit fields (plus the
/// high bit of Q3_K or the nibbles of Q6_K). Q3_K's and Q6_K's levels are centred; Q2_K's
/// are `0..=3` with a min per sub-block. Per pair one accumulator gets
/// `(d · d_x) · (sc₀·Σq·x_q + sc₁·Σq·x_q)` per run; for Q2_K a second gets
/// `(dmin · d_x) · (m₀·Σx_q + m₁·Σx_q)` from the 16-level sums of x, eight runs at once.
#[inline(always)]
unsafe fn k16<const C: usize, const R: usize, const F: u8, const DP: bool>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    let bytes = match F {
        Q2_K => 84,
        Q3_K => 110,
        _ => 210,
    };
    let nb = check_q8(w, bytes, 256, xs, out);
    assert!(out.len() == C * R);
    let xs: &[Q8Ref; R] = xs.try_into().unwrap();
    let row = |c: usize| w.as_ptr().add(c * nb * bytes);
    let mut acc = [[vdupq_n_f32(0.0); R]; C];
    let mut macc = [[vdupq_n_f32(0.0); R]; C];
    let mut prod = [[[0f32; 8]; R]; C];
    let mut mprod = [[0f32; 8]; R];
    let mut sc = [[0i32; 16]; C];
    for sb in 0..nb {
        for c in 0..C {
            let p = row(c).add(sb * bytes);
            match F {
                Q2_K => {
                    let mut mn = [0i16; 16];
                    for j in 0..16 {
                        sc[c][j] = i32::from(*p.add(j) & 15);
                        mn[j] = i16::from(*p.add(j) >> 4);
                    }
                    scale8(xs, sb, f16_at(p.add(80)), &mut prod[c]);
                    scale8(xs, sb, f16_at(p.add(82)), &mut mprod);
                    let m =
                        [vld1_s16(mn.as_ptr()), vld1_s16(mn.as_ptr().add(4)), vld1_s16(mn.as_ptr().add(8)), vld1_s16(mn.as_ptr().add(12))];
                    for r in 0..R {
                        // Lane i: run i's Σ m·Σx_q over its two sub-blocks, exact in i32.
                        let bs = xs[r].bs.as_ptr().add(16 * sb);
                        let t = |h: usize| {
                            let a = vmull_s16(m[2 * h], vld1_s16(bs.add(8 * h)));
                            let b = vmull_s16(m[2 * h + 1], vld1_s16(bs.add(8 * h + 4)));
                            vcvtq_f32_s32(vpaddq_s32(a, b))
                        };
                        macc[c][r] = vfmaq_f32(macc[c][r], vld1q_f32(mprod[r].as_ptr()), t(0));
                        macc[c][r] = vfmaq_f32(macc[c][r], vld1q_f32(mprod[r].as_ptr().add(4)), t(1));
                    }
                }
                Q3_K => {
                    let packed = std::slice::from_raw_parts(p.add(96), 12);
                    for j in 0..16 {
                        sc[c][j] = i32::from(q3k_scale(packed, j)) - 32;
                    }
                    scale8(xs, sb, f16_at(p.add(108)), &mut prod[c]);
                }
                _ => {
                    for j in 0..16 {
                        sc[c][j] = i32::from(*p.add(192 + j) as i8);
                    }
                    scale8(xs, sb, f16_at(p.add(208)), &mut prod[c]);
                }
            }
        }
        for h in 0..2 {
            for k in 0..4 {
                let run = 4 * h + k;
                let xb = 8 * sb + run;
                for c in 0..C {
                    let p = row(c).add(sb * bytes);
                    let q = match F {
                        Q2_K => signed(shr_mask(load32(p.add(16 + 32 * h)), 2 * k, 3)),
                        Q3_K => centre(or2(shr_mask(load32(p.add(32 + 32 * h)), 2 * k, 3), bit_to(load32(p), 1 << run, 4)), 4),
                        _ => {
                            let ql = load32(p.add(64 * h + 32 * (k % 2)));
                            let nib = shr_mask(ql, 4 * (k / 2), 0x0F);
                            let hi = shr_mask(load32(p.add(128 + 32 * h)), 2 * k, 3);
                            let hi = (vshlq_n_u8::<4>(hi.0), vshlq_n_u8::<4>(hi.1));
                            centre(or2(nib, hi), 32)
                        }
                    };
                    let (s0, s1) = (sc[c][2 * run], sc[c][2 * run + 1]);
                    for r in 0..R {
                        let (y0, y1) = xload(&xs[r], xb);
                        let zero = vdupq_n_s32(0);
                        let t = vmlaq_n_s32(vmulq_n_s32(dot::<DP>(zero, q.0, y0), s0), dot::<DP>(zero, q.1, y1), s1);
                        acc[c][r] = vfmaq_n_f32(acc[c][r], vcvtq_f32_s32(t), prod[c][r][run]);
                    }
                }
            }
        }
    }
    for c in 0..C {
        for r in 0..R {
            out[c * R + r] = hsum(acc[c][r]) - hsum(macc[c][r]);
        }
    }
}

const F32: u8 = 0;
const F16: u8 = 1;
const BF16: u8 = 2;

/// Four weights from element `i` of a float row (unaligned bytes), as f32.
#[inline(always)]
unsafe fn wload<const F: u8>(w: *const u8, i: usize) -> float32x4_t {
    match F {
        F32 => vreinterpretq_f32_u8(vld1q_u8(w.add(4 * i))),
        F16 => f16x4(vreinterpret_u16_u8(vld1_u8(w.add(2 * i)))),
        _ => vreinterpretq_f32_u32(vshll_n_u16::<16>(vreinterpret_u16_u8(vld1_u8(w.add(2 * i))))),
    }
}

/// Element `i` of a float row, as f32.
#[inline(always)]
unsafe fn wone<const F: u8>(w: *const u8, i: usize) -> f32 {
    match F {
        F32 => f32::from_bits(std::ptr::read_unaligned(w.add(4 * i) as *const u32)),
        F16 => f16_at(w.add(2 * i)),
        _ => f32::from_bits(u32::from(std::ptr::read_unaligned(w.add(2 * i) as *const u16)) << 16),
    }
}

/// F32, F16, BF16 weights against f32 activations, `C` weight rows × `R` activation
/// rows, four four-lane accumulators per pair (sixteen values a step), then four values
/// at a time into the first, then a scalar tail.
#[inline(always)]
unsafe fn floats<const C: usize, const R: usize, const F: u8>(w: &[u8], xs: &[&[f32]], out: &mut [f32]) {
    let bytes = if F == F32 { 4 } else { 2 };
    let k = check_f32(w, bytes, xs, out);
    assert!(out.len() == C * R);
    let xs: &[&[f32]; R] = xs.try_into().unwrap();
    let row = |c: usize| w.as_ptr().add(c * k * bytes);
    let mut acc = [[[vdupq_n_f32(0.0); 4]; R]; C];
    let mut i = 0;
    while i + 16 <= k {
        for c in 0..C {
            let wv = [wload::<F>(row(c), i), wload::<F>(row(c), i + 4), wload::<F>(row(c), i + 8), wload::<F>(row(c), i + 12)];
            for r in 0..R {
                let x = xs[r].as_ptr().add(i);
                for u in 0..4 {
                    acc[c][r][u] = vfmaq_f32(acc[c][r][u], wv[u], vld1q_f32(x.add(4 * u)));
                }
            }
        }
        i += 16;
    }
    while i + 4 <= k {
        for c in 0..C {
            let w0 = wload::<F>(row(c), i);
            for r in 0..R {
                acc[c][r][0] = vfmaq_f32(acc[c][r][0], w0, vld1q_f32(xs[r].as_ptr().add(i)));
            }
        }
        i += 4;
    }
    for c in 0..C {
        for r in 0..R {
            let mut t = 0f32;
            for (j, &x) in xs[r].iter().enumerate().skip(i) {
                t += wone::<F>(row(c), j) * x;
            }
            let a = &acc[c][r];
            out[c * R + r] = hsum(vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3]))) + t;
        }
    }
}

/// The shapes of a call (`C` weight rows × `R` activation rows, `C` = `out.len() /
/// xs.len()`): 1 × 1..=4, 1 × 8, 2 × 1 and 4 × 1, each a monomorphized kernel.
macro_rules! shapes {
    ($kern:ident::<$($g:tt),*>($w:ident, $xs:ident, $out:ident)) => {
        match ($out.len() / $xs.len().max(1), $xs.len()) {
            (1, 1) => $kern::<1, 1, $($g),*>($w, $xs, $out),
            (1, 2) => $kern::<1, 2, $($g),*>($w, $xs, $out),
            (1, 3) => $kern::<1, 3, $($g),*>($w, $xs, $out),
            (1, 4) => $kern::<1, 4, $($g),*>($w, $xs, $out),
            (1, 8) => $kern::<1, 8, $($g),*>($w, $xs, $out),
            (2, 1) => $kern::<2, 1, $($g),*>($w, $xs, $out),
            (4, 1) => $kern::<4, 1, $($g),*>($w, $xs, $out),
            (c, r) => panic!("row kernel: no {c} x {r} shape"),
        }
    };
}

/// A quantized format's two row kernels: with `sdot` (`$dp`) and without (`$base`).
macro_rules! q8_rows {
    ($dp:ident, $base:ident => $kern:ident, $g:tt) => {
        #[target_feature(enable = "neon,dotprod")]
        unsafe fn $dp(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
            shapes!($kern::<$g, true>(w, xs, out))
        }
        #[target_feature(enable = "neon")]
        unsafe fn $base(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
            shapes!($kern::<$g, false>(w, xs, out))
        }
    };
}

macro_rules! f32_rows {
    ($name:ident, $g:tt) => {
        #[target_feature(enable = "neon")]
        unsafe fn $name(w: &[u8], xs: &[&[f32]], out: &mut [f32]) {
            shapes!(floats::<$g>(w, xs, out))
        }
    };
}

q8_rows!(q4_0_dp, q4_0_base => blocks32, Q4_0);
q8_rows!(q4_1_dp, q4_1_base => blocks32, Q4_1);
q8_rows!(q5_0_dp, q5_0_base => blocks32, Q5_0);
q8_rows!(q5_1_dp, q5_1_base => blocks32, Q5_1);
q8_rows!(q8_0_dp, q8_0_base => blocks32, Q8_0);
q8_rows!(q2_k_dp, q2_k_base => k16, Q2_K);
q8_rows!(q3_k_dp, q3_k_base => k16, Q3_K);
q8_rows!(q4_k_dp, q4_k_base => q45_k, false);
q8_rows!(q5_k_dp, q5_k_base => q45_k, true);
q8_rows!(q6_k_dp, q6_k_base => k16, Q6_K);
f32_rows!(f32_rows, F32);
f32_rows!(f16_rows, F16);
f32_rows!(bf16_rows, BF16);

/// The `sdot` kernel where the CPU has the dot-product extension, else the plain-NEON one
/// (the same bits): the NEON row kernel of a quantized weight format.
fn pick_dp(with: super::QDot, without: super::QDot) -> RowKernel {
    RowKernel::Q8(if std::arch::is_aarch64_feature_detected!("dotprod") { with } else { without })
}

super::kernel_table!(pick pick_dp; Q4_0 q4_0_dp q4_0_base, Q4_1 q4_1_dp q4_1_base, Q5_0 q5_0_dp q5_0_base,
    Q5_1 q5_1_dp q5_1_base, Q8_0 q8_0_dp q8_0_base, Q2_K q2_k_dp q2_k_base, Q3_K q3_k_dp q3_k_base,
    Q4_K q4_k_dp q4_k_base, Q5_K q5_k_dp q5_k_base, Q6_K q6_k_dp q6_k_base);

/// `e^x` per lane (Cephes' `expf`, as the AVX2 path: a degree-6 polynomial after
/// reduction by ln 2, relative error about 1e-7); lanes below −88.38 give 0 or the
/// smallest normals.
#[inline(always)]
unsafe fn exp4(x: float32x4_t) -> float32x4_t {
    let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-88.376_26)), vdupq_n_f32(88.376_26));
    let n = vrndmq_f32(vfmaq_f32(vdupq_n_f32(0.5), x, vdupq_n_f32(std::f32::consts::LOG2_E)));
    let r = vfmsq_f32(x, n, vdupq_n_f32(0.693_359_4));
    let r = vfmsq_f32(r, n, vdupq_n_f32(-2.121_944_4e-4));
    let mut y = vdupq_n_f32(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.500_000_01] {
        y = vfmaq_f32(vdupq_n_f32(c), y, r);
    }
    let y = vaddq_f32(vfmaq_f32(r, y, vmulq_f32(r, r)), vdupq_n_f32(1.0));
    let pow2n = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
    vmulq_f32(y, vreinterpretq_f32_s32(pow2n))
}

/// `s ← exp(s − max s)` in place (four at a time, the last group padded and dropped);
/// returns the sum.
#[inline(always)]
unsafe fn softmax4(s: &mut [f32]) -> f32 {
    let n = s.len();
    let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mv = vdupq_n_f32(m);
    let mut z = vdupq_n_f32(0.0);
    let mut j = 0;
    while j + 4 <= n {
        let e = exp4(vsubq_f32(vld1q_f32(s.as_ptr().add(j)), mv));
        vst1q_f32(s.as_mut_ptr().add(j), e);
        z = vaddq_f32(z, e);
        j += 4;
    }
    if j < n {
        let mut t = [m; 4];
        t[..n - j].copy_from_slice(&s[j..]);
        vst1q_f32(t.as_mut_ptr(), exp4(vsubq_f32(vld1q_f32(t.as_ptr()), mv)));
        // The padding lanes (each exp(0) = 1) are zeroed before they reach the sum.
        t[n - j..].fill(0.0);
        s[j..].copy_from_slice(&t[..n - j]);
        z = vaddq_f32(z, vld1q_f32(t.as_ptr()));
    }
    hsum(z)
}

/// The NEON vector operations of [`super::attend_with`]: four lanes, fused multiply-adds,
/// key lanes summed pairwise (`faddp` twice) and [`softmax4`].
pub(super) struct Lanes4;

impl super::Lanes for Lanes4 {
    type V = float32x4_t;
    const W: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> float32x4_t {
        vdupq_n_f32(0.0)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> float32x4_t {
        vld1q_f32(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: float32x4_t) {
        vst1q_f32(p, v)
    }
    #[inline(always)]
    unsafe fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        vfmaq_f32(a, b, c)
    }
    #[inline(always)]
    unsafe fn fma_n(a: float32x4_t, b: float32x4_t, e: f32) -> float32x4_t {
        vfmaq_n_f32(a, b, e)
    }
    #[inline(always)]
    unsafe fn mul_n(a: float32x4_t, e: f32) -> float32x4_t {
        vmulq_n_f32(a, e)
    }
    #[inline(always)]
    unsafe fn sum4(a: [float32x4_t; 4]) -> [f32; 4] {
        let mut t = [0f32; 4];
        vst1q_f32(t.as_mut_ptr(), vpaddq_f32(vpaddq_f32(a[0], a[1]), vpaddq_f32(a[2], a[3])));
        t
    }
    #[inline(always)]
    unsafe fn softmax(s: &mut [f32]) -> f32 {
        softmax4(s)
    }
}

super::attend_entry!(Lanes4, "neon");
