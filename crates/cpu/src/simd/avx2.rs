//! AVX2 + FMA + F16C kernels (x86-64), the same arithmetic as [`super::portable`] with
//! the f32 products summed over eight lanes.
//!
//! The 8-bit products use `vpmaddubsw` (unsigned × signed bytes, pairs summed to i16),
//! so a kernel feeds it non-negative weight levels: unsigned formats directly; Q4_0 and
//! Q5_0 as `q + offset` with `−offset · d_w · s_x` added as a min term; Q3_K and Q6_K as
//! `q + offset` with `offset · x` subtracted in i16; Q8_0 as |w| against x with w's sign
//! (ggml's trick). No pair sum can saturate: the largest is 2·128·127 = 32512 (Q8_0 with
//! a −128 weight).
//!
//! A kernel call takes `C` weight rows × `R` activation rows (`C·R ≤ 8`) with one FMA
//! chain per pair: several rows share each decoded weight block (R > 1), or the chains
//! of several weight rows overlap (C > 1, for one activation row). The arithmetic of a
//! pair is the same whatever C and R are.
//!
//! Safety: every function here needs AVX2, FMA and F16C; callers check
//! [`super::Isa::available`] first. The kernels check their slice lengths
//! ([`check_q8`], [`check_f32`]) before reading through raw pointers.

// Index loops over the const-sized accumulator arrays are the clearest form here.
#![allow(clippy::needless_range_loop)]

use super::{block_scale, check_f32, check_q8, Q8Ref, QB};
use crate::quant::{k4_scale_min, q3k_scale};
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// The f16 at `p` (unaligned) as f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn f16_at(p: *const u8) -> f32 {
    let h = std::ptr::read_unaligned(p as *const u16);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
}

/// Eight f16 values `stride` bytes apart from `p`, as f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn f16x8(p: *const u8, stride: usize) -> __m256 {
    let h = |i: usize| i32::from(std::ptr::read_unaligned(p.add(i * stride) as *const u16));
    let v = _mm_cvtsi32_si128(h(0));
    let v = _mm_insert_epi16(v, h(1), 1);
    let v = _mm_insert_epi16(v, h(2), 2);
    let v = _mm_insert_epi16(v, h(3), 3);
    let v = _mm_insert_epi16(v, h(4), 4);
    let v = _mm_insert_epi16(v, h(5), 5);
    let v = _mm_insert_epi16(v, h(6), 6);
    let v = _mm_insert_epi16(v, h(7), 7);
    _mm256_cvtph_ps(v)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// The 32 nibbles of the 16 bytes at `p`: low nibbles in bytes 0..16, high in 16..32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F))
}

/// Byte `j` is 0xFF where bit `j` of the little-endian u32 at `p` is set, else 0.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn bits32(p: *const u8) -> __m256i {
    let v = _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32));
    // Byte j takes byte j / 8 of the u32, then all of its bits but bit j % 8 are set.
    let spread = _mm256_shuffle_epi8(v, _mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303));
    let probe = _mm256_or_si256(spread, _mm256_set1_epi64x(0x7FBF_DFEF_F7FB_FDFEu64 as i64));
    _mm256_cmpeq_epi8(probe, _mm256_set1_epi64x(-1))
}

/// Bits `n`.. of every byte of `v` moved to bit 0, `mask` applied (a mask below bit `8 - n`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn shr_bytes(v: __m256i, n: usize, mask: __m256i) -> __m256i {
    _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(n as i32)), mask)
}

/// Sum of the eight lanes, in a fixed order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// The 32 activation levels of block `b` of row `x`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn xload(x: &Q8Ref, b: usize) -> __m256i {
    load(x.qs.as_ptr().add(b * QB) as *const u8)
}

/// Quantize `x` into 8-bit blocks; bit-identical to [`super::portable::quantize`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    let nb = x.len() / QB;
    assert!(x.len() == nb * QB && qs.len() == x.len() && d.len() == nb && s.len() == nb, "quantize: buffer sizes");
    let sign = _mm256_set1_ps(-0.0);
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in 0..nb {
        let p = x.as_ptr().add(b * QB);
        let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
        let a = _mm256_max_ps(
            _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
            _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
        );
        let unord = _mm256_or_ps(_mm256_cmp_ps(v[0], v[1], _CMP_UNORD_Q), _mm256_cmp_ps(v[2], v[3], _CMP_UNORD_Q));
        let m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let out = qs.as_mut_ptr().add(b * QB) as *mut __m256i;
        match block_scale(amax, _mm256_movemask_ps(unord) != 0) {
            None => {
                _mm256_storeu_si256(out, _mm256_setzero_si256());
                d[b] = f32::NAN;
                s[b] = f32::NAN;
            }
            Some((dd, id)) => {
                let idv = _mm256_set1_ps(id);
                let mut q = [_mm256_setzero_si256(); 4];
                for (q, v) in q.iter_mut().zip(v) {
                    *q = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v, idv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
                }
                let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
                let sum = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
                let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b01_00_11_10));
                let sum = _mm_cvtsi128_si32(_mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b10_11_00_01)));
                // packs interleave the 128-bit lanes; the permutation restores element order.
                let packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
                _mm256_storeu_si256(out, _mm256_permutevar8x32_epi32(packed, order));
                d[b] = dd;
                s[b] = dd * sum as f32;
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
/// are computed first (eight at a time), so the inner loop only loads them.
const CHUNK: usize = 32;

/// The levels of the 32-element block at `p`, non-negative but for Q8_0 (signed).
/// Q4_0 and Q5_0 keep their offset (8, 16): `d·(q − o) = d·q + (−o·d)`, and the
/// `−o·d` term goes with the min terms.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn levels32<const F: u8>(p: *const u8) -> __m256i {
    match F {
        Q4_0 => nibbles(p.add(2)),
        Q4_1 => nibbles(p.add(4)),
        Q5_0 => _mm256_or_si256(nibbles(p.add(6)), _mm256_and_si256(bits32(p.add(2)), _mm256_set1_epi8(0x10))),
        Q5_1 => _mm256_or_si256(nibbles(p.add(8)), _mm256_and_si256(bits32(p.add(4)), _mm256_set1_epi8(0x10))),
        _ => load(p.add(2)),
    }
}

/// The 32-element formats, `C` weight rows × `R` activation rows. Per pair one
/// accumulator gets `(d_w · d_x) · Σq·x_q` per block; the min terms `m_w · s_x` go
/// eight blocks at a time to a second (for Q4_0 and Q5_0, `d_w · s_x`, scaled by
/// −8 or −16 at the end).
#[target_feature(enable = "avx2,fma,f16c")]
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
    let nb = check_q8(w, bytes, QB, xs, out);
    assert!(out.len() == C * R);
    let xs: &[Q8Ref; R] = xs.try_into().unwrap();
    let row = |c: usize| w.as_ptr().add(c * nb * bytes);
    let mut acc = [[_mm256_setzero_ps(); R]; C];
    let mut macc = [[_mm256_setzero_ps(); R]; C];
    // Q4_0 and Q5_0 sum d_w · s_x and scale by −offset once at the end (a power of 2,
    // so the same value as summing the −offset · d_w · s_x terms).
    let fixed_min = F == Q4_0 || F == Q5_0;
    // Scratch, written before it is read (not zeroed: that cost as much as a small row).
    // A chunk's scales are padded with zeros to a multiple of 8.
    let mut dw = MaybeUninit::<[[f32; CHUNK]; C]>::uninit();
    let mut mw = MaybeUninit::<[[f32; CHUNK]; C]>::uninit();
    let mut prod = MaybeUninit::<[[[f32; CHUNK]; R]; C]>::uninit();
    // Q5_0 and Q5_1 with several activation rows (prefill): the chunk's weight levels are
    // decoded first, in a loop of their own, and the block loop loads them, so that the
    // decoding (nibbles and fifth bits) does not head each block's dependency chain
    // (64 × 2048 × 640: 8 to 9 % fewer cycles). Not for one row, where it cost up to 10 %,
    // nor for the nibble formats (Q4_1: no gain) and Q8_0, whose levels are a load.
    let hoist = (F == Q5_0 || F == Q5_1) && R > 1;
    // The decoded levels of a chunk (written before they are read).
    let mut lv = MaybeUninit::<[[__m256i; CHUNK]; C]>::uninit();
    let (dw, mw, prod) = (dw.as_mut_ptr() as *mut f32, mw.as_mut_ptr() as *mut f32, prod.as_mut_ptr() as *mut f32);
    let lv = lv.as_mut_ptr() as *mut __m256i;
    let mut b0 = 0;
    while b0 < nb {
        let cn = CHUNK.min(nb - b0);
        let (full, padded) = (cn / 8 * 8, cn.next_multiple_of(8));
        // Lanes of the last group of eight that hold blocks.
        let lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32((cn - (padded - 8)) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for c in 0..C {
            let wp = row(c).add(b0 * bytes);
            if hoist {
                for b in 0..cn {
                    lv.add(c * CHUNK + b).write(levels32::<F>(wp.add(b * bytes)));
                }
            }
            let (dc, mc) = (dw.add(c * CHUNK), mw.add(c * CHUNK));
            for b in (0..full).step_by(8) {
                let d8 = f16x8(wp.add(b * bytes), bytes);
                _mm256_storeu_ps(dc.add(b), d8);
                if !signed && !fixed_min {
                    _mm256_storeu_ps(mc.add(b), f16x8(wp.add(b * bytes + 2), bytes));
                }
            }
            for b in full..padded {
                let here = b < cn;
                *dc.add(b) = if here { f16_at(wp.add(b * bytes)) } else { 0.0 };
                if !signed && !fixed_min {
                    *mc.add(b) = if here { f16_at(wp.add(b * bytes + 2)) } else { 0.0 };
                }
            }
            let mc = if fixed_min { dc } else { mc };
            for r in 0..R {
                let (xd, xsum) = (xs[r].d.as_ptr().add(b0), xs[r].s.as_ptr().add(b0));
                let pr = prod.add((c * R + r) * CHUNK);
                for b in (0..padded).step_by(8) {
                    // The activation scales past the chunk's blocks read as zeros.
                    let (xdv, xsv) = if b < full {
                        (_mm256_loadu_ps(xd.add(b)), _mm256_loadu_ps(xsum.add(b)))
                    } else {
                        (_mm256_maskload_ps(xd.wrapping_add(b), lanes), _mm256_maskload_ps(xsum.wrapping_add(b), lanes))
                    };
                    _mm256_storeu_ps(pr.add(b), _mm256_mul_ps(_mm256_loadu_ps(dc.add(b)), xdv));
                    if !signed {
                        macc[c][r] = _mm256_fmadd_ps(_mm256_loadu_ps(mc.add(b)), xsv, macc[c][r]);
                    }
                }
            }
        }
        for b in 0..cn {
            for c in 0..C {
                let q = if hoist { lv.add(c * CHUNK + b).read() } else { levels32::<F>(row(c).add((b0 + b) * bytes)) };
                let u = if signed { _mm256_sign_epi8(q, q) } else { q };
                for r in 0..R {
                    let y = xload(&xs[r], b0 + b);
                    let y = if signed { _mm256_sign_epi8(y, q) } else { y };
                    let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), _mm256_set1_epi16(1));
                    let f = _mm256_broadcast_ss(&*prod.add((c * R + r) * CHUNK + b));
                    acc[c][r] = _mm256_fmadd_ps(f, _mm256_cvtepi32_ps(dot), acc[c][r]);
                }
            }
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
            out[c * R + r] = hsum(acc[c][r]) + offset * hsum(macc[c][r]);
        }
    }
}

/// `prod[r][i] = f · d_x[8 sb + i]` for the eight activation blocks of super-block `sb`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn scale8<const R: usize>(xs: &[Q8Ref; R], sb: usize, f: f32, prod: &mut [[f32; 8]; R]) {
    for r in 0..R {
        _mm256_storeu_ps(prod[r].as_mut_ptr(), _mm256_mul_ps(_mm256_set1_ps(f), _mm256_loadu_ps(xs[r].d.as_ptr().add(8 * sb))));
    }
}

/// Q4_K (`Q5` false) and Q5_K, `C` weight rows × `R` activation rows: eight sub-blocks of
/// 32, each one activation block.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q45_k<const C: usize, const R: usize, const Q5: bool>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    let bytes = if Q5 { 176 } else { 144 };
    let nb = check_q8(w, bytes, 256, xs, out);
    assert!(out.len() == C * R);
    let xs: &[Q8Ref; R] = xs.try_into().unwrap();
    let row = |c: usize| w.as_ptr().add(c * nb * bytes);
    let (m4, one) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(1));
    let mut acc = [[_mm256_setzero_ps(); R]; C];
    let mut macc = [[_mm256_setzero_ps(); R]; C];
    let mut prod = [[[0f32; 8]; R]; C];
    let mut sc = [[0i16; 8]; C];
    let mut dm = [_mm256_setzero_ps(); C];
    for sb in 0..nb {
        for c in 0..C {
            let p = row(c).add(sb * bytes);
            let packed = std::slice::from_raw_parts(p.add(4), 12);
            let mut mn = [0u8; 8];
            for j in 0..8 {
                let (s, m) = k4_scale_min(packed, j);
                sc[c][j] = i16::from(s);
                mn[j] = m;
            }
            let mins = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(mn.as_ptr() as *const __m128i)));
            dm[c] = _mm256_mul_ps(_mm256_set1_ps(f16_at(p.add(2))), mins);
            scale8(xs, sb, f16_at(p), &mut prod[c]);
        }
        for j2 in 0..4 {
            for c in 0..C {
                let p = row(c).add(sb * bytes);
                let q = load(p.add(if Q5 { 48 } else { 16 } + 32 * j2));
                let mut lo = _mm256_and_si256(q, m4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                if Q5 {
                    let qh = load(p.add(16));
                    lo = _mm256_or_si256(lo, _mm256_slli_epi16(shr_bytes(qh, 2 * j2, one), 4));
                    hi = _mm256_or_si256(hi, _mm256_slli_epi16(shr_bytes(qh, 2 * j2 + 1, one), 4));
                }
                let (s0, s1) = (_mm256_set1_epi16(sc[c][2 * j2]), _mm256_set1_epi16(sc[c][2 * j2 + 1]));
                let xb = 8 * sb + 2 * j2;
                for r in 0..R {
                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xload(&xs[r], xb)), s0);
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xload(&xs[r], xb + 1)), s1);
                    acc[c][r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&prod[c][r][2 * j2]), _mm256_cvtepi32_ps(p0), acc[c][r]);
                    acc[c][r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&prod[c][r][2 * j2 + 1]), _mm256_cvtepi32_ps(p1), acc[c][r]);
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
            out[c * R + r] = hsum(acc[c][r]) - hsum(macc[c][r]);
        }
    }
}

const Q2_K: u8 = 0;
const Q3_K: u8 = 1;
const Q6_K: u8 = 2;

/// Q2_K, Q3_K and Q6_K, `C` weight rows × `R` activation rows: sixteen sub-blocks of 16,
/// runs of 32 (one activation block, two sub-blocks) built from 2-bit fields (plus the
/// high bit of Q3_K or the nibbles of Q6_K). Levels are non-negative: Q3_K's are `q + 4`,
/// Q6_K's `q + 32`. Per pair one accumulator gets `(d · d_x) · Σ sc·q·x_q` per run; a
/// second gets, per super-block and eight runs at once from the 16-level sums of x,
/// `(d · d_x) · Σ sc·Σx_q` (Q3_K, Q6_K: the offset's share, times 4 or 32 at the end) or
/// `(dmin · d_x) · Σ m·Σx_q` (Q2_K's mins).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn k16<const C: usize, const R: usize, const F: u8>(w: &[u8], xs: &[Q8Ref], out: &mut [f32]) {
    let bytes = match F {
        Q2_K => 84,
        Q3_K => 110,
        _ => 210,
    };
    let nb = check_q8(w, bytes, 256, xs, out);
    assert!(out.len() == C * R);
    let xs: &[Q8Ref; R] = xs.try_into().unwrap();
    let row = |c: usize| w.as_ptr().add(c * nb * bytes);
    let (m3, m4, one) = (_mm256_set1_epi8(3), _mm256_set1_epi8(0x0F), _mm256_set1_epi8(1));
    let mut acc = [[_mm256_setzero_ps(); R]; C];
    let mut macc = [[_mm256_setzero_ps(); R]; C];
    let mut prod = [[[0f32; 8]; R]; C];
    let mut mprod = [[[0f32; 8]; R]; C];
    // Sub-block scales, and what multiplies the 16-level sums of x (Q2_K's mins, else the scales), as i16.
    let mut sc = [[0i16; 16]; C];
    let mut mn = [[0i16; 16]; C];
    for sb in 0..nb {
        for c in 0..C {
            let p = row(c).add(sb * bytes);
            match F {
                Q2_K => {
                    for j in 0..16 {
                        sc[c][j] = i16::from(*p.add(j) & 15);
                        mn[c][j] = i16::from(*p.add(j) >> 4);
                    }
                    scale8(xs, sb, f16_at(p.add(80)), &mut prod[c]);
                    scale8(xs, sb, f16_at(p.add(82)), &mut mprod[c]);
                }
                Q3_K => {
                    let packed = std::slice::from_raw_parts(p.add(96), 12);
                    for j in 0..16 {
                        sc[c][j] = i16::from(q3k_scale(packed, j)) - 32;
                    }
                    mn[c] = sc[c];
                    scale8(xs, sb, f16_at(p.add(108)), &mut prod[c]);
                }
                _ => {
                    for j in 0..16 {
                        sc[c][j] = i16::from(*p.add(192 + j) as i8);
                    }
                    mn[c] = sc[c];
                    scale8(xs, sb, f16_at(p.add(208)), &mut prod[c]);
                }
            }
            let mv = _mm256_loadu_si256(mn[c].as_ptr() as *const __m256i);
            for r in 0..R {
                // Lane i: the two sub-blocks of run i, Σ m·Σx_q, exact in i32.
                let t = _mm256_madd_epi16(mv, _mm256_loadu_si256(xs[r].bs.as_ptr().add(16 * sb) as *const __m256i));
                let f = _mm256_loadu_ps(if F == Q2_K { mprod[c][r].as_ptr() } else { prod[c][r].as_ptr() });
                macc[c][r] = _mm256_fmadd_ps(f, _mm256_cvtepi32_ps(t), macc[c][r]);
            }
        }
        for h in 0..2 {
            for k in 0..4 {
                let run = 4 * h + k;
                let xb = 8 * sb + run;
                for c in 0..C {
                    let p = row(c).add(sb * bytes);
                    let q = match F {
                        Q2_K => shr_bytes(load(p.add(16 + 32 * h)), 2 * k, m3),
                        Q3_K => _mm256_or_si256(
                            shr_bytes(load(p.add(32 + 32 * h)), 2 * k, m3),
                            _mm256_slli_epi16(shr_bytes(load(p), run, one), 2),
                        ),
                        _ => {
                            let ql = load(p.add(64 * h + 32 * (k % 2)));
                            let nib = if k < 2 { _mm256_and_si256(ql, m4) } else { _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4) };
                            _mm256_or_si256(nib, _mm256_slli_epi16(shr_bytes(load(p.add(128 + 32 * h)), 2 * k, m3), 4))
                        }
                    };
                    let scv = _mm256_set_m128i(_mm_set1_epi16(sc[c][2 * run + 1]), _mm_set1_epi16(sc[c][2 * run]));
                    for r in 0..R {
                        let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(q, xload(&xs[r], xb)), scv);
                        acc[c][r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&prod[c][r][run]), _mm256_cvtepi32_ps(dot), acc[c][r]);
                    }
                }
            }
        }
    }
    let off = match F {
        Q2_K => 1.0,
        Q3_K => 4.0,
        _ => 32.0,
    };
    for c in 0..C {
        for r in 0..R {
            out[c * R + r] = hsum(acc[c][r]) - off * hsum(macc[c][r]);
        }
    }
}

const F32: u8 = 0;
const F16: u8 = 1;
const BF16: u8 = 2;

/// Eight weights from element `i` of a float row, as f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn wload<const F: u8>(w: *const u8, i: usize) -> __m256 {
    match F {
        F32 => _mm256_loadu_ps(w.add(4 * i) as *const f32),
        F16 => _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * i) as *const __m128i)),
        _ => _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(w.add(2 * i) as *const __m128i)), 16)),
    }
}

/// Element `i` of a float row, as f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn wone<const F: u8>(w: *const u8, i: usize) -> f32 {
    match F {
        F32 => std::ptr::read_unaligned(w.add(4 * i) as *const f32),
        F16 => f16_at(w.add(2 * i)),
        _ => f32::from_bits(u32::from(std::ptr::read_unaligned(w.add(2 * i) as *const u16)) << 16),
    }
}

/// F32, F16, BF16 weights against f32 activations, `C` weight rows × `R` activation
/// rows, two eight-lane accumulators per pair.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn floats<const C: usize, const R: usize, const F: u8>(w: &[u8], xs: &[&[f32]], out: &mut [f32]) {
    let bytes = if F == F32 { 4 } else { 2 };
    let k = check_f32(w, bytes, xs, out);
    assert!(out.len() == C * R);
    let xs: &[&[f32]; R] = xs.try_into().unwrap();
    let row = |c: usize| w.as_ptr().add(c * k * bytes);
    let mut acc = [[[_mm256_setzero_ps(); 2]; R]; C];
    let mut i = 0;
    while i + 16 <= k {
        for c in 0..C {
            let (w0, w1) = (wload::<F>(row(c), i), wload::<F>(row(c), i + 8));
            for r in 0..R {
                let x = xs[r].as_ptr().add(i);
                acc[c][r][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), acc[c][r][0]);
                acc[c][r][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.add(8)), acc[c][r][1]);
            }
        }
        i += 16;
    }
    if i + 8 <= k {
        for c in 0..C {
            let w0 = wload::<F>(row(c), i);
            for r in 0..R {
                acc[c][r][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xs[r].as_ptr().add(i)), acc[c][r][0]);
            }
        }
        i += 8;
    }
    for c in 0..C {
        for r in 0..R {
            let mut t = 0f32;
            for (j, &x) in xs[r].iter().enumerate().skip(i) {
                t += wone::<F>(row(c), j) * x;
            }
            out[c * R + r] = hsum(_mm256_add_ps(acc[c][r][0], acc[c][r][1])) + t;
        }
    }
}

/// Dispatch on the shape of the call (`C` weight rows × `R` activation rows, `C` =
/// `out.len() / xs.len()`) to a kernel monomorphized for it: 1 × 1..=4, 1 × 8, 2 × 1
/// and 4 × 1.
macro_rules! by_shape {
    // Kernels whose registers do not hold four weight rows' decoding: 4 × 1 runs as two
    // 2 × 1 (the same arithmetic per pair).
    ($name:ident => $kern:ident, $g:expr; $x:ty; two_by_two) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(w: &[u8], xs: &[$x], out: &mut [f32]) {
            match (out.len() / xs.len().max(1), xs.len()) {
                (1, 1) => $kern::<1, 1, $g>(w, xs, out),
                (1, 2) => $kern::<1, 2, $g>(w, xs, out),
                (1, 3) => $kern::<1, 3, $g>(w, xs, out),
                (1, 4) => $kern::<1, 4, $g>(w, xs, out),
                (1, 8) => $kern::<1, 8, $g>(w, xs, out),
                (2, 1) => $kern::<2, 1, $g>(w, xs, out),
                (4, 1) => {
                    let (lo, hi) = out.split_at_mut(2);
                    $kern::<2, 1, $g>(&w[..w.len() / 2], xs, lo);
                    $kern::<2, 1, $g>(&w[w.len() / 2..], xs, hi);
                }
                (c, r) => panic!("row kernel: no {c} x {r} shape"),
            }
        }
    };
    ($name:ident => $kern:ident, $g:expr; $x:ty) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(w: &[u8], xs: &[$x], out: &mut [f32]) {
            match (out.len() / xs.len().max(1), xs.len()) {
                (1, 1) => $kern::<1, 1, $g>(w, xs, out),
                (1, 2) => $kern::<1, 2, $g>(w, xs, out),
                (1, 3) => $kern::<1, 3, $g>(w, xs, out),
                (1, 4) => $kern::<1, 4, $g>(w, xs, out),
                (1, 8) => $kern::<1, 8, $g>(w, xs, out),
                (2, 1) => $kern::<2, 1, $g>(w, xs, out),
                (4, 1) => $kern::<4, 1, $g>(w, xs, out),
                (c, r) => panic!("row kernel: no {c} x {r} shape"),
            }
        }
    };
}

by_shape!(q4_0_rows => blocks32, Q4_0; Q8Ref);
by_shape!(q4_1_rows => blocks32, Q4_1; Q8Ref);
by_shape!(q5_0_rows => blocks32, Q5_0; Q8Ref);
by_shape!(q5_1_rows => blocks32, Q5_1; Q8Ref);
by_shape!(q8_0_rows => blocks32, Q8_0; Q8Ref);
by_shape!(q2_k_rows => k16, Q2_K; Q8Ref; two_by_two);
by_shape!(q3_k_rows => k16, Q3_K; Q8Ref; two_by_two);
by_shape!(q4_k_rows => q45_k, false; Q8Ref);
by_shape!(q5_k_rows => q45_k, true; Q8Ref);
by_shape!(q6_k_rows => k16, Q6_K; Q8Ref; two_by_two);
by_shape!(f32_rows => floats, F32; &[f32]);
by_shape!(f16_rows => floats, F16; &[f32]);
by_shape!(bf16_rows => floats, BF16; &[f32]);

// The AVX2 row kernel of a weight format.
super::kernel_table!(rows);

/// Lane `i` of the result: the sum of the eight lanes of `a[i]`, as
/// `((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))` whatever the other three hold.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn sum4(a: [__m256; 4]) -> __m128 {
    let h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1))
}

/// `e^x` per lane (Cephes' `expf`: a degree-6 polynomial after reduction by ln 2,
/// relative error about 1e-7); lanes below −88.38 give 0 or the smallest normals.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn exp8(x: __m256) -> __m256 {
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.376_26)), _mm256_set1_ps(88.376_26));
    let n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), _mm256_set1_ps(0.5)));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.500_000_01] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    let y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
    let pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n))
}

/// `s ← exp(s − max s)` in place (eight at a time, the last group masked); returns the sum.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn softmax8(s: &mut [f32]) -> f32 {
    let n = s.len();
    let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mv = _mm256_set1_ps(m);
    let mut z = _mm256_setzero_ps();
    let mut j = 0;
    while j + 8 <= n {
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s.as_ptr().add(j)), mv));
        _mm256_storeu_ps(s.as_mut_ptr().add(j), e);
        z = _mm256_add_ps(z, e);
        j += 8;
    }
    if j < n {
        let mut t = [m; 8];
        t[..n - j].copy_from_slice(&s[j..]);
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(t.as_ptr()), mv));
        let keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((n - j) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        let e = _mm256_and_ps(e, _mm256_castsi256_ps(keep));
        _mm256_storeu_ps(t.as_mut_ptr(), e);
        s[j..].copy_from_slice(&t[..n - j]);
        z = _mm256_add_ps(z, e);
    }
    hsum(z)
}

/// The AVX2 vector operations of [`super::attend_with`]: eight lanes, fused multiply-adds,
/// [`sum4`]'s reduction and [`softmax8`].
pub(super) struct Lanes8;

impl super::Lanes for Lanes8 {
    type V = __m256;
    const W: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(b, c, a)
    }
    #[inline(always)]
    unsafe fn fma_n(a: __m256, b: __m256, e: f32) -> __m256 {
        _mm256_fmadd_ps(_mm256_set1_ps(e), b, a)
    }
    #[inline(always)]
    unsafe fn mul_n(a: __m256, e: f32) -> __m256 {
        _mm256_mul_ps(a, _mm256_set1_ps(e))
    }
    #[inline(always)]
    unsafe fn sum4(a: [__m256; 4]) -> [f32; 4] {
        let mut t = [0f32; 4];
        _mm_storeu_ps(t.as_mut_ptr(), sum4(a));
        t
    }
    #[inline(always)]
    unsafe fn softmax(s: &mut [f32]) -> f32 {
        softmax8(s)
    }
}

super::attend_entry!(Lanes8, "avx2,fma,f16c");
