//! AVX-512 kernels (x86-64: AVX-512 F, BW, VL and VNNI), the same arithmetic as
//! [`super::portable`] with the 8-bit products summed by `vpdpbusd` and the f32 products
//! over sixteen lanes.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes and sums each four products into an i32
//! lane (no saturation), so a 512-bit register takes two activation blocks of 32 at once:
//! lanes 0..8 hold the sums of one block, lanes 8..16 those of the next. As in the AVX2
//! path the weight levels it gets are non-negative: unsigned formats directly; Q4_0 and
//! Q5_0 as `q + offset` with `−offset · d_w · s_x` added as a min term; Q6_K as `q + 32`
//! with `32 · d · sc · Σx` subtracted (from the 16-level sums of x); Q8_0 as |w| against x
//! with w's sign. Each i32 lane is then scaled by its own f32 factor (`d_w · d_x`, times
//! the sub-block scale for the K-quants), spread over the lanes by `vpermps`.
//!
//! Kernels here: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K (the formats of the
//! common model files). Q2_K, Q3_K, F32, F16 and BF16, the activation quantizer and
//! [`super::attend`] use the AVX2 kernels: every CPU with AVX-512 F also has AVX2, FMA and
//! F16C ([`super::Isa::available`] checks them too), and the quantizer stays bit-identical
//! to the portable one.
//!
//! A kernel call takes `C` weight rows × `R` activation rows (`C·R ≤ 8`), one accumulator
//! per pair; the arithmetic of a pair is the same whatever C and R are.
//!
//! Safety: every function here needs AVX-512 F, BW, VL and VNNI (and AVX2, FMA, F16C);
//! callers check [`super::Isa::available`] first. The kernels check their slice lengths
//! ([`check_q8`]) before reading through raw pointers.

// Index loops over the const-sized accumulator arrays are the clearest form here.
#![allow(clippy::needless_range_loop)]

use super::{check_q8, Q8Ref, QB};
use crate::quant::k4_scale_min;
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// The f16 at `p` (unaligned) as f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn f16_at(p: *const u8) -> f32 {
    let h = std::ptr::read_unaligned(p as *const u16);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn load256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn load512(p: *const u8) -> __m512i {
    _mm512_loadu_si512(p as *const _)
}

/// The 32 bytes at `p` in both halves of a register.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn twice256(p: *const u8) -> __m512i {
    _mm512_broadcast_i64x4(load256(p))
}

/// The two f32 at `p` (unaligned) spread to lanes 0..8 and 8..16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn spread2(p: *const f32) -> __m512 {
    let two = _mm_castsi128_ps(_mm_loadl_epi64(p as *const __m128i));
    _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), _mm512_castps128_ps512(two))
}

/// Sum of the eight lanes, in a fixed order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn hsum8(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Sum of the sixteen lanes, in a fixed order (not `_mm512_reduce_add_ps`, whose order
/// the compiler may choose per call site: results must not depend on the call's shape).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn hsum16(v: __m512) -> f32 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    hsum8(_mm256_add_ps(_mm512_castps512_ps256(v), hi))
}

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;

/// Blocks per chunk of [`blocks32`]: the weight scales and the scale products of a chunk
/// are computed first (sixteen at a time), so the inner loop only loads them. Even, so
/// that pairs of blocks never straddle two chunks.
const CHUNK: usize = 32;

/// The levels of the 32-element block at `p` in bytes 0..32 and (`TWO`) those of the next
/// block, `bytes` further, in bytes 32..64 (else zeros); non-negative but for Q8_0
/// (signed). Q4_0 and Q5_0 keep their offset (8, 16), as in [`blocks32`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn levels2<const F: u8, const TWO: bool>(p: *const u8, bytes: usize) -> __m512i {
    if F == Q8_0 {
        let lo = _mm512_castsi256_si512(load256(p.add(2)));
        return if TWO { _mm512_inserti64x4::<1>(lo, load256(p.add(bytes + 2))) } else { _mm512_zextsi256_si512(load256(p.add(2))) };
    }
    let off = match F {
        Q4_0 => 2,
        Q4_1 => 4,
        Q5_0 => 6,
        _ => 8,
    };
    // Each block's 16 bytes in two 128-bit lanes; the second lane shifted by 4 gives the
    // high nibbles (elements 16..32).
    let lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(off) as *const __m128i));
    let v = if TWO {
        _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(lo),
            _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(bytes + off) as *const __m128i)),
        )
    } else {
        _mm512_zextsi256_si512(lo)
    };
    let nib = _mm512_and_si512(_mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4)), _mm512_set1_epi8(0x0F));
    if F == Q5_0 || F == Q5_1 {
        // Bit j of a block's u32 is the fifth bit of its element j.
        let hoff = if F == Q5_0 { 2 } else { 4 };
        let h0 = u64::from(std::ptr::read_unaligned(p.add(hoff) as *const u32));
        let h1 = if TWO { u64::from(std::ptr::read_unaligned(p.add(bytes + hoff) as *const u32)) } else { 0 };
        let k = _cvtu64_mask64(h0 | h1 << 32);
        _mm512_mask_blend_epi8(k, nib, _mm512_or_si512(nib, _mm512_set1_epi8(0x10)))
    } else {
        nib
    }
}

/// One step of [`blocks32`]: blocks `b` and (`TWO`) `b + 1` of every pair, `w[c]` at the
/// weight block `b` of row `c`, `x[r]` at the levels of activation block `b`, `prod` the
/// chunk's scale products at block `b` (`prod[(c·R + r)·CHUNK]` the first of pair (c, r);
/// with `TWO` false the next one is a padding zero).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn step32<const C: usize, const R: usize, const F: u8, const TWO: bool>(
    w: &[*const u8; C],
    bytes: usize,
    x: &[*const i8; R],
    prod: *const f32,
    acc: &mut [[__m512; R]; C],
) {
    let zero = _mm512_setzero_si512();
    for c in 0..C {
        let q = levels2::<F, TWO>(w[c], bytes);
        // Q8_0: |w| (−128 gives 128 as an unsigned byte) and the lanes where w < 0.
        let (u, neg) = if F == Q8_0 { (_mm512_abs_epi8(q), _mm512_movepi8_mask(q)) } else { (q, 0) };
        for r in 0..R {
            let y = if TWO { load512(x[r] as *const u8) } else { _mm512_zextsi256_si512(load256(x[r] as *const u8)) };
            let y = if F == Q8_0 { _mm512_mask_sub_epi8(y, neg, zero, y) } else { y };
            let dot = _mm512_dpbusd_epi32(zero, u, y);
            let f = spread2(prod.add((c * R + r) * CHUNK));
            acc[c][r] = _mm512_fmadd_ps(f, _mm512_cvtepi32_ps(dot), acc[c][r]);
        }
    }
}

/// The 32-element formats, `C` weight rows × `R` activation rows, two blocks per step.
/// Per pair one accumulator gets `(d_w · d_x) · Σq·x_q` per block; the min terms
/// `m_w · s_x` go sixteen blocks at a time to a second (for Q4_0 and Q5_0, `d_w · s_x`,
/// scaled by −8 or −16 at the end: a power of 2, so the same value as summing the
/// `−offset · d_w · s_x` terms).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn blocks32<const C: usize, const R: usize, const F: u8>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    let bytes = match F {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        _ => 34,
    };
    let signed = F == Q8_0;
    let fixed_min = F == Q4_0 || F == Q5_0;
    let nb = check_q8(w, bytes, QB, xs, out);
    assert!(out.len() == C * R);
    let xs: &[Q8Ref; R] = xs.try_into().unwrap();
    let row = |c: usize| w.as_ptr().add(c * nb * bytes);
    let mut acc = [[_mm512_setzero_ps(); R]; C];
    let mut macc = [[_mm512_setzero_ps(); R]; C];
    // Scratch, written before it is read (not zeroed: that cost as much as a small row).
    // A chunk's scales are padded with zeros to a multiple of 16.
    let mut dw = MaybeUninit::<[[f32; CHUNK]; C]>::uninit();
    let mut mw = MaybeUninit::<[[f32; CHUNK]; C]>::uninit();
    let mut prod = MaybeUninit::<[[[f32; CHUNK]; R]; C]>::uninit();
    let (dw, mw, prod) = (dw.as_mut_ptr() as *mut f32, mw.as_mut_ptr() as *mut f32, prod.as_mut_ptr() as *mut f32);
    // Byte offsets of sixteen blocks' first words (d, and the min m of Q4_1 and Q5_1).
    let offs = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(bytes as i32));
    let mut b0 = 0;
    while b0 < nb {
        let cn = CHUNK.min(nb - b0);
        for c in 0..C {
            let wp = row(c).add(b0 * bytes);
            let (dc, mc) = (dw.add(c * CHUNK), mw.add(c * CHUNK));
            for g in (0..cn).step_by(16) {
                // Lanes of blocks in the chunk; the others gather nothing and read as 0.
                let k: __mmask16 = if cn - g >= 16 { 0xFFFF } else { (1u16 << (cn - g)) - 1 };
                let raw = _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), k, offs, wp.add(g * bytes) as *const _);
                _mm512_storeu_ps(dc.add(g), _mm512_cvtph_ps(_mm512_cvtepi32_epi16(raw)));
                if !signed && !fixed_min {
                    _mm512_storeu_ps(mc.add(g), _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(raw))));
                }
            }
            let mc = if fixed_min { dc } else { mc };
            for r in 0..R {
                let (xd, xsum) = (xs[r].d.as_ptr().add(b0), xs[r].s.as_ptr().add(b0));
                let pr = prod.add((c * R + r) * CHUNK);
                for g in (0..cn).step_by(16) {
                    // The activation scales past the chunk's blocks read as zeros.
                    let k: __mmask16 = if cn - g >= 16 { 0xFFFF } else { (1u16 << (cn - g)) - 1 };
                    _mm512_storeu_ps(pr.add(g), _mm512_mul_ps(_mm512_loadu_ps(dc.add(g)), _mm512_maskz_loadu_ps(k, xd.add(g))));
                    if !signed {
                        macc[c][r] = _mm512_fmadd_ps(_mm512_loadu_ps(mc.add(g)), _mm512_maskz_loadu_ps(k, xsum.add(g)), macc[c][r]);
                    }
                }
            }
        }
        let mut b = 0;
        let ptrs = |b: usize| {
            let wp: [*const u8; C] = std::array::from_fn(|c| row(c).add((b0 + b) * bytes));
            let xp: [*const i8; R] = std::array::from_fn(|r| xs[r].qs.as_ptr().add((b0 + b) * QB));
            (wp, xp)
        };
        while b + 2 <= cn {
            let (wp, xp) = ptrs(b);
            step32::<C, R, F, true>(&wp, bytes, &xp, prod.add(b), &mut acc);
            b += 2;
        }
        if b < cn {
            // The last block of an odd count: prod[b + 1] is a padding zero.
            let (wp, xp) = ptrs(b);
            step32::<C, R, F, false>(&wp, bytes, &xp, prod.add(b), &mut acc);
        }
        b0 += cn;
    }
    let offset = match F {
        Q4_0 => -8.0,
        Q5_0 => -16.0,
        _ => 1.0,
    };
    for c in 0..C {
        for r in 0..R {
            out[c * R + r] = hsum16(acc[c][r]) + offset * hsum16(macc[c][r]);
        }
    }
}

/// Q4_K (`Q5` false) and Q5_K, `C` weight rows × `R` activation rows: eight sub-blocks of
/// 32, each one activation block, two per step (low and high nibbles of the same 32
/// bytes). Per pair one accumulator gets `(d · sc · d_x) · Σq·x_q` per sub-block, a
/// second `(dmin · m) · s_x`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn q45_k<const C: usize, const R: usize, const Q5: bool>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    let bytes = if Q5 { 176 } else { 144 };
    let nb = check_q8(w, bytes, 256, xs, out);
    assert!(out.len() == C * R);
    let xs: &[Q8Ref; R] = xs.try_into().unwrap();
    let row = |c: usize| w.as_ptr().add(c * nb * bytes);
    let (m4, one, zero) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(1), _mm512_setzero_si512());
    // The low half of a register keeps the low nibbles (and bit 2·j2 of qh), the high
    // half the high nibbles (bit 2·j2 + 1).
    let (nib_shift, bit_shift) = (_mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4), _mm512_setr_epi64(0, 0, 0, 0, 1, 1, 1, 1));
    let pair_idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let mut acc = [[_mm512_setzero_ps(); R]; C];
    let mut macc = [[_mm256_setzero_ps(); R]; C];
    for sb in 0..nb {
        // fac[c][r], lanes 0..8: d · sc_j · d_x of sub-block j.
        let mut fac = [[_mm512_setzero_ps(); R]; C];
        let mut dm = [_mm256_setzero_ps(); C];
        for c in 0..C {
            let p = row(c).add(sb * bytes);
            let packed = std::slice::from_raw_parts(p.add(4), 12);
            let (mut sc, mut mn) = ([0i32; 8], [0i32; 8]);
            for j in 0..8 {
                let (s, m) = k4_scale_min(packed, j);
                sc[j] = i32::from(s);
                mn[j] = i32::from(m);
            }
            let scf = _mm256_cvtepi32_ps(_mm256_loadu_si256(sc.as_ptr() as *const __m256i));
            let mins = _mm256_cvtepi32_ps(_mm256_loadu_si256(mn.as_ptr() as *const __m256i));
            let scd = _mm256_mul_ps(_mm256_set1_ps(f16_at(p)), scf);
            dm[c] = _mm256_mul_ps(_mm256_set1_ps(f16_at(p.add(2))), mins);
            for r in 0..R {
                fac[c][r] = _mm512_castps256_ps512(_mm256_mul_ps(scd, _mm256_loadu_ps(xs[r].d.as_ptr().add(8 * sb))));
            }
        }
        for j2 in 0..4 {
            let idx = _mm512_add_epi32(pair_idx, _mm512_set1_epi32(2 * j2 as i32));
            let xb = 8 * sb + 2 * j2;
            for c in 0..C {
                let p = row(c).add(sb * bytes);
                let q = twice256(p.add(if Q5 { 48 } else { 16 } + 32 * j2));
                let mut v = _mm512_and_si512(_mm512_srlv_epi64(q, nib_shift), m4);
                if Q5 {
                    let qh = _mm512_srl_epi64(twice256(p.add(16)), _mm_cvtsi32_si128(2 * j2 as i32));
                    v = _mm512_or_si512(v, _mm512_slli_epi64::<4>(_mm512_and_si512(_mm512_srlv_epi64(qh, bit_shift), one)));
                }
                for r in 0..R {
                    let dot = _mm512_dpbusd_epi32(zero, v, load512(xs[r].qs.as_ptr().add(xb * QB) as *const u8));
                    acc[c][r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx, fac[c][r]), _mm512_cvtepi32_ps(dot), acc[c][r]);
                }
            }
        }
        for c in 0..C {
            for r in 0..R {
                macc[c][r] = _mm256_fmadd_ps(dm[c], _mm256_loadu_ps(xs[r].s.as_ptr().add(8 * sb)), macc[c][r]);
            }
        }
    }
    for c in 0..C {
        for r in 0..R {
            out[c * R + r] = hsum16(acc[c][r]) - hsum8(macc[c][r]);
        }
    }
}

/// Q6_K, `C` weight rows × `R` activation rows: sixteen sub-blocks of 16, runs of 32 (one
/// activation block, two sub-blocks) from the nibbles and 2-bit fields, two runs per step;
/// levels are `q + 32`. Per pair one accumulator gets `(d · sc · d_x) · Σq·x_q` per
/// sub-block (lanes of four products each, so a step's sixteen lanes span four
/// sub-blocks), a second `(d · sc · d_x) · Σx_q` per sub-block (the offset's share,
/// times 32 at the end).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn q6_k<const C: usize, const R: usize>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    let bytes = 210;
    let nb = check_q8(w, bytes, 256, xs, out);
    assert!(out.len() == C * R);
    let xs: &[Q8Ref; R] = xs.try_into().unwrap();
    let row = |c: usize| w.as_ptr().add(c * nb * bytes);
    let (m3, m4, zero) = (_mm512_set1_epi8(3), _mm512_set1_epi8(0x0F), _mm512_setzero_si512());
    // Sub-block j of a super-block lies in activation block j / 2.
    let run_idx = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    let quad_idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let mut acc = [[_mm512_setzero_ps(); R]; C];
    let mut macc = [[_mm512_setzero_ps(); R]; C];
    for sb in 0..nb {
        // fac[c][r], lane j: d · sc_j · d_x of sub-block j.
        let mut fac = [[_mm512_setzero_ps(); R]; C];
        for c in 0..C {
            let p = row(c).add(sb * bytes);
            let scf = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(192) as *const __m128i)));
            let scd = _mm512_mul_ps(_mm512_set1_ps(f16_at(p.add(208))), scf);
            for r in 0..R {
                let dx = _mm512_permutexvar_ps(run_idx, _mm512_castps256_ps512(_mm256_loadu_ps(xs[r].d.as_ptr().add(8 * sb))));
                fac[c][r] = _mm512_mul_ps(scd, dx);
                let bs = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm256_loadu_si256(xs[r].bs.as_ptr().add(16 * sb) as *const __m256i)));
                macc[c][r] = _mm512_fmadd_ps(fac[c][r], bs, macc[c][r]);
            }
        }
        for h in 0..2 {
            for kk in 0..2 {
                // Runs a and a + 1 (sub-blocks 2a..2a + 4): the low nibbles of the 64 bytes
                // at 64·h for kk = 0, the high ones for kk = 1; bits 4·kk and 4·kk + 2 of qh.
                let a = 4 * h + 2 * kk;
                let idx = _mm512_add_epi32(quad_idx, _mm512_set1_epi32(2 * a as i32));
                let hshift = _mm512_add_epi64(_mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2), _mm512_set1_epi64(4 * kk as i64));
                for c in 0..C {
                    let p = row(c).add(sb * bytes);
                    let ql = load512(p.add(64 * h));
                    let nib = if kk == 0 { _mm512_and_si512(ql, m4) } else { _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4) };
                    let hi = _mm512_and_si512(_mm512_srlv_epi64(twice256(p.add(128 + 32 * h)), hshift), m3);
                    let q = _mm512_or_si512(nib, _mm512_slli_epi16::<4>(hi));
                    for r in 0..R {
                        let dot = _mm512_dpbusd_epi32(zero, q, load512(xs[r].qs.as_ptr().add((8 * sb + a) * QB) as *const u8));
                        acc[c][r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx, fac[c][r]), _mm512_cvtepi32_ps(dot), acc[c][r]);
                    }
                }
            }
        }
    }
    for c in 0..C {
        for r in 0..R {
            out[c * R + r] = hsum16(acc[c][r]) - 32.0 * hsum16(macc[c][r]);
        }
    }
}

/// Dispatch on the shape of the call (`C` weight rows × `R` activation rows, `C` =
/// `out.len() / xs.len()`) to a kernel monomorphized for it: 1 × 1..=4, 1 × 8, 2 × 1
/// and 4 × 1.
macro_rules! by_shape {
    ($name:ident => $kern:ident $(, $g:expr)?) => {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        unsafe fn $name(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
            match (out.len() / xs.len().max(1), xs.len()) {
                (1, 1) => $kern::<1, 1 $(, $g)?>(w, xs, out),
                (1, 2) => $kern::<1, 2 $(, $g)?>(w, xs, out),
                (1, 3) => $kern::<1, 3 $(, $g)?>(w, xs, out),
                (1, 4) => $kern::<1, 4 $(, $g)?>(w, xs, out),
                (1, 8) => $kern::<1, 8 $(, $g)?>(w, xs, out),
                (2, 1) => $kern::<2, 1 $(, $g)?>(w, xs, out),
                (4, 1) => $kern::<4, 1 $(, $g)?>(w, xs, out),
                (c, r) => panic!("row kernel: no {c} x {r} shape"),
            }
        }
    };
}

by_shape!(q4_0_rows => blocks32, Q4_0);
by_shape!(q4_1_rows => blocks32, Q4_1);
by_shape!(q5_0_rows => blocks32, Q5_0);
by_shape!(q5_1_rows => blocks32, Q5_1);
by_shape!(q8_0_rows => blocks32, Q8_0);
by_shape!(q4_k_rows => q45_k, false);
by_shape!(q5_k_rows => q45_k, true);
by_shape!(q6_k_rows => q6_k);

// The AVX-512 row kernel of a weight format: the AVX2 one for the formats without an
// AVX-512 kernel (see the module doc).
super::kernel_table!(rows; Q4_0 q4_0_rows, Q4_1 q4_1_rows, Q5_0 q5_0_rows, Q5_1 q5_1_rows, Q8_0 q8_0_rows,
    Q4_K q4_k_rows, Q5_K q5_k_rows, Q6_K q6_k_rows; else super::avx2::kernel);
