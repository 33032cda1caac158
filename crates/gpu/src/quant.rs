//! GGUF block decoding on the device, shared by `dequantize`, `embedding_lookup` (block
//! tables) and `quantized_matmul`; the `dequantize` op itself.
//!
//! Weights stay in their GGUF layout in a buffer of u32 words (the layouts are those of
//! `ingot_cpu::quant`, ggml's). Every block size is even, so a block starts on a 2-byte
//! boundary; formats whose block size is a multiple of 4 (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K)
//! start on a word, the others (Q4_0, Q5_0, Q8_0, Q3_K, Q6_K) on every other block only,
//! and their multi-byte fields are read as two words joined with shifts.
//!
//! A block is decoded in *parts* of 16 values, one part per thread: two runs of 8
//! consecutive elements (run A and run B, see [`run_a`] / [`run_b`]) whose bits share
//! the same bytes, so a thread reads each word it needs once. 32-element formats have 2
//! parts per block, K-quants 16; the 4 parts `4c..4c+4` of a row (in row order of
//! blocks and parts) cover exactly the 64 elements `64c..64c+64`, which the tiled matmul
//! relies on. Each value is `mul · (q − c) − off` with the integer level `q`, the
//! format's offset `c`, and the run's `mul`/`off` decoded from the block's f16 scales,
//! evaluated in the same f32 operations and order as `ingot_cpu::quant` (a device that
//! fuses `mul·x − off` into one FMA differs by at most one rounding). Integer levels
//! become floats exactly by the bit trick `f32(2²³ | q) − 2²³` (full-rate ALU work rather
//! than int-to-float conversions). f16 scales decode with integer operations
//! ([`crate::cast::f16_bits_to_f32`]: exact, Inf and NaN included), so no kernel here
//! needs the device's f16 or bf16 support; f32/f16/bf16 weights decode element by element.

use crate::cast::f16_bits_to_f32;
use crate::device::{grid_1d, input, linear_pos, Device, GpuTensor, GpuTensors};
use cubecl::prelude::*;
use ingot_core::{DType, DequantizeParams, Error, Result};

pub(crate) const F32: u32 = 0;
pub(crate) const F16: u32 = 1;
pub(crate) const BF16: u32 = 2;
pub(crate) const Q4_0: u32 = 3;
pub(crate) const Q4_1: u32 = 4;
pub(crate) const Q5_0: u32 = 5;
pub(crate) const Q5_1: u32 = 6;
pub(crate) const Q8_0: u32 = 7;
pub(crate) const Q2_K: u32 = 8;
pub(crate) const Q3_K: u32 = 9;
pub(crate) const Q4_K: u32 = 10;
pub(crate) const Q5_K: u32 = 11;
pub(crate) const Q6_K: u32 = 12;

/// Values a thread decodes at once: two runs of 8.
pub(crate) const PART: usize = 16;

/// Bits of a block format's integer level (Q8_0's i8 is read as the biased u8).
pub(crate) const fn level_bits(fmt: u32) -> u32 {
    match fmt {
        Q4_0 | Q4_1 | Q4_K => 4,
        Q5_0 | Q5_1 | Q5_K => 5,
        Q8_0 => 8,
        Q2_K => 2,
        Q3_K => 3,
        _ => 6,
    }
}

/// The offset `c` subtracted from a block format's level: value = mul·(q − c) − off.
pub(crate) const fn level_offset(fmt: u32) -> u32 {
    match fmt {
        Q4_0 => 8,
        Q5_0 => 16,
        Q8_0 => 128,
        Q3_K => 4,
        Q6_K => 32,
        _ => 0,
    }
}

/// Whether a block format's values have a per-run offset `off` (q·d + m, or dl·q − ml).
pub(crate) const fn has_offset(fmt: u32) -> bool {
    matches!(fmt, Q4_1 | Q5_1 | Q2_K | Q4_K | Q5_K)
}

/// Host-side facts about a weight format, passed to kernels as comptime values.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Format {
    /// Kernel code of the format (the constants above).
    pub code: u32,
    /// Elements per block (1 for f32/f16/bf16).
    pub block: usize,
    /// Bytes per block.
    pub bytes: usize,
    /// Parts of [`PART`] values per block (0 for f32/f16/bf16, decoded element-wise).
    pub parts: usize,
}

impl Format {
    /// The format of a weight dtype, `None` for dtypes that are not weight formats.
    pub fn of(d: DType) -> Option<Format> {
        let code = match d {
            DType::F32 => F32,
            DType::F16 => F16,
            DType::BF16 => BF16,
            DType::Q4_0 => Q4_0,
            DType::Q4_1 => Q4_1,
            DType::Q5_0 => Q5_0,
            DType::Q5_1 => Q5_1,
            DType::Q8_0 => Q8_0,
            DType::Q2_K => Q2_K,
            DType::Q3_K => Q3_K,
            DType::Q4_K => Q4_K,
            DType::Q5_K => Q5_K,
            DType::Q6_K => Q6_K,
            _ => return None,
        };
        let block = d.block_size();
        Some(Format { code, block, bytes: d.type_size(), parts: if block > 1 { block / PART } else { 0 } })
    }

    /// Whether this is f32, f16 or bf16 (element-wise decoding).
    pub fn is_float(&self) -> bool {
        self.code <= BF16
    }
}

/// Fail unless a buffer of `bytes` bytes can be addressed by byte with the kernels' 32-bit
/// indices (weights up to 4 GiB).
pub(crate) fn check_addressable(op: &'static str, what: &str, bytes: usize) -> Result<()> {
    if bytes > u32::MAX as usize {
        return Err(Error::invalid(op, format!("{what} of {bytes} bytes exceeds the 4 GiB the GPU kernels address")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Loads from a buffer of u32 words, by byte address
// ---------------------------------------------------------------------------

/// The byte at byte address `a`.
#[cube]
fn ld_u8(w: &Array<u32>, a: usize) -> u32 {
    (w[a / 4] >> (u32::cast_from(a % 4) * 8)) & 0xff
}

/// The little-endian u16 at even byte address `a` (never crosses a word).
#[cube]
fn ld_u16(w: &Array<u32>, a: usize) -> u32 {
    (w[a / 4] >> (u32::cast_from(a % 4) * 8)) & 0xffff
}

/// The f16 at even byte address `a`, as f32.
#[cube]
fn f16_at(w: &Array<u32>, a: usize) -> f32 {
    f32::reinterpret(f16_bits_to_f32(ld_u16(w, a)))
}

/// The f16 pair in the word at 4-aligned byte address `a`: `(low half, high half)` as f32,
/// returned in `out[0]`, `out[1]`.
#[cube]
pub(crate) fn f16_pair(w: &Array<u32>, a: usize, out: &mut Array<f32>) {
    let v = w[a / 4];
    out[0] = f32::reinterpret(f16_bits_to_f32(v & 0xffff));
    out[1] = f32::reinterpret(f16_bits_to_f32(v >> 16));
}

/// `n` little-endian words starting at byte address `a` into `out[at..at + n]`. `a` is
/// 4-aligned when `aligned` (one load per word), else 2-aligned (a word that starts mid-word
/// joins the halves of two loads; the load past the last word happens only then, and the
/// bytes `a..a + 4n` lie in the buffer, so it stays in bounds).
// The first test is decided at compile time, the second at run time.
#[allow(clippy::if_same_then_else, clippy::manual_is_multiple_of)]
#[cube]
fn ld_words(w: &Array<u32>, a: usize, out: &mut Array<u32>, #[comptime] at: usize, #[comptime] n: usize, #[comptime] aligned: bool) {
    let i0 = a / 4;
    if aligned {
        #[unroll]
        for i in 0..n {
            out[at + i] = w[i0 + i];
        }
    } else if a % 4 == 0 {
        #[unroll]
        for i in 0..n {
            out[at + i] = w[i0 + i];
        }
    } else {
        let mut prev = w[i0];
        #[unroll]
        for i in 0..n {
            let next = w[i0 + i + 1];
            out[at + i] = (prev >> 16) | (next << 16);
            prev = next;
        }
    }
}

/// The integer level `q` (< 2²³) minus `bias_plus` − 2²³, exactly: `f32(2²³ | q)` is
/// 2²³ + q, and subtracting 2²³ + c (exact in f32 for small c) gives q − c.
#[cube]
fn level(q: u32, bias_plus: f32) -> f32 {
    f32::reinterpret(q | 0x4b00_0000) - bias_plus
}

/// Element `i` (0..8) of a run from two words `qw[at]`, `qw[at + 1]`: its byte is byte
/// `i % 4` of word `i / 4`, shifted right by the run's `shift`, masked to `mask`.
#[cube]
fn byte_bits(qw: &Array<u32>, #[comptime] at: usize, #[comptime] i: usize, shift: u32, #[comptime] mask: u32) -> u32 {
    (qw[at + i / 4] >> (shift + comptime!((i % 4) as u32 * 8))) & mask
}

/// The element offset in its block of the first value of run A of part `p`.
#[allow(unused_assignments)]
#[cube]
pub(crate) fn run_a(p: usize, #[comptime] fmt: u32) -> usize {
    let mut a = 0usize;
    if fmt == Q8_0 {
        a = 16 * p;
    } else if fmt >= Q2_K {
        a = 64 * (p / 4) + 8 * (p % 4);
    } else {
        a = 8 * p;
    }
    a
}

/// The element offset in its block of the first value of run B of part `p`.
#[allow(unused_assignments)]
#[cube]
pub(crate) fn run_b(p: usize, #[comptime] fmt: u32) -> usize {
    let mut b = 0usize;
    if fmt == Q8_0 {
        b = 16 * p + 8;
    } else if fmt >= Q2_K {
        b = 64 * (p / 4) + 8 * (p % 4) + 32;
    } else {
        b = 8 * p + 16;
    }
    b
}

/// Q4_K/Q5_K: the 6-bit scale and min of sub-block `j` (0..8) from the 12 packed bytes at
/// byte address `s`, into `out[0]` (scale) and `out[1]` (min), as `k4_scale_min` in
/// `ingot_cpu::quant`.
#[cube]
pub(crate) fn k4_scale_min(w: &Array<u32>, s: usize, j: usize, out: &mut Array<u32>) {
    if j < 4 {
        out[0] = ld_u8(w, s + j) & 63;
        out[1] = ld_u8(w, s + j + 4) & 63;
    } else {
        let hi = ld_u8(w, s + j + 4);
        out[0] = (hi & 0x0f) | ((ld_u8(w, s + j - 4) >> 6) << 4);
        out[1] = (hi >> 4) | ((ld_u8(w, s + j) >> 6) << 4);
    }
}

/// Q3_K: the 6-bit scale (stored with +32) of sub-block `j` (0..16) from the 12 packed
/// bytes at byte address `s`, as `q3k_scale` in `ingot_cpu::quant`.
#[cube]
fn q3k_scale(w: &Array<u32>, s: usize, j: usize) -> u32 {
    let low = (ld_u8(w, s + j % 8) >> (u32::cast_from(j / 8) * 4)) & 0x0f;
    let high = (ld_u8(w, s + 8 + j % 4) >> (u32::cast_from(j / 4) * 2)) & 3;
    low | (high << 4)
}

/// The integer levels of part `p` of the block at byte address `blk` into `q[0..16]` (run A
/// in `q[0..8]`, run B in `q[8..16]`, each below 2^[`level_bits`]) and the runs' constants
/// into `cst` = `[mul_a, off_a, mul_b, off_b]`: value = mul·(q − [`level_offset`]) − off
/// (off is 0 for the formats without [`has_offset`]). `fmt` is a block format.
#[allow(unused_assignments)]
#[cube]
pub(crate) fn part_levels(w: &Array<u32>, blk: usize, p: usize, q: &mut Array<u32>, cst: &mut Array<f32>, #[comptime] fmt: u32) {
    let mut mul_a = 0.0f32;
    let mut mul_b = 0.0f32;
    let mut off_a = 0.0f32;
    let mut off_b = 0.0f32;
    let mut words = Array::<u32>::new(6usize);
    let mut pair = Array::<f32>::new(2usize);
    let mut sm = Array::<u32>::new(2usize);
    if fmt == Q4_0 || fmt == Q5_0 {
        // d, [qh u32 for Q5_0], qs[16]: run A the low nibbles of bytes 8p..8p+8, run B
        // their high nibbles; Q5_0's fifth bit of element e is bit e of qh.
        let d = f16_at(w, blk);
        let mut qs_at = blk + 2;
        let mut qh = 0u32;
        if fmt == Q5_0 {
            ld_words(w, blk + 2, &mut words, 2usize, 1usize, false);
            qh = words[2];
            qs_at = blk + 6;
        }
        ld_words(w, qs_at + 8 * p, &mut words, 0usize, 2usize, false);
        let ha = qh >> u32::cast_from(8 * p);
        let hb = qh >> u32::cast_from(8 * p + 16);
        #[unroll]
        for i in 0..8usize {
            let mut lo = byte_bits(&words, 0usize, i, 0u32, 0x0fu32);
            let mut hi = byte_bits(&words, 0usize, i, 4u32, 0x0fu32);
            if fmt == Q5_0 {
                lo |= ((ha >> comptime!(i as u32)) & 1) << 4;
                hi |= ((hb >> comptime!(i as u32)) & 1) << 4;
            }
            q[i] = lo;
            q[8 + i] = hi;
        }
        mul_a = d;
        mul_b = d;
    } else if fmt == Q4_1 || fmt == Q5_1 {
        // d, m, [qh u32 for Q5_1], qs[16], word-aligned; value q·d + m.
        f16_pair(w, blk, &mut pair);
        let mut qs_at = blk + 4;
        let mut qh = 0u32;
        if fmt == Q5_1 {
            qh = w[blk / 4 + 1];
            qs_at = blk + 8;
        }
        ld_words(w, qs_at + 8 * p, &mut words, 0usize, 2usize, true);
        let ha = qh >> u32::cast_from(8 * p);
        let hb = qh >> u32::cast_from(8 * p + 16);
        #[unroll]
        for i in 0..8usize {
            let mut lo = byte_bits(&words, 0usize, i, 0u32, 0x0fu32);
            let mut hi = byte_bits(&words, 0usize, i, 4u32, 0x0fu32);
            if fmt == Q5_1 {
                lo |= ((ha >> comptime!(i as u32)) & 1) << 4;
                hi |= ((hb >> comptime!(i as u32)) & 1) << 4;
            }
            q[i] = lo;
            q[8 + i] = hi;
        }
        mul_a = pair[0];
        mul_b = pair[0];
        off_a = -pair[1];
        off_b = -pair[1];
    } else if fmt == Q8_0 {
        // d, qs[32] (i8): part p is bytes 16p..16p+16; an i8 level b is (b ^ 0x80) − 128.
        let d = f16_at(w, blk);
        ld_words(w, blk + 2 + 16 * p, &mut words, 0usize, 4usize, false);
        #[unroll]
        for i in 0..16usize {
            q[i] = ((words[i / 4] >> comptime!((i % 4) as u32 * 8)) & 0xff) ^ 0x80;
        }
        mul_a = d;
        mul_b = d;
    } else if fmt == Q2_K || fmt == Q3_K {
        // Part p: 64-element chunk c = p / 4 (half h = c / 2, bit pairs 2k for k = 2(c % 2)
        // and k + 1), bytes l0..l0 + 8 of the half's 32 qs bytes.
        let c = p / 4;
        let l0 = 8 * (p % 4);
        let h = c / 2;
        let sh = u32::cast_from(c % 2) * 4;
        let ja = 4 * c + l0 / 16;
        let jb = ja + 2;
        if fmt == Q2_K {
            // scales[16], qs[64], d, dmin; word-aligned.
            ld_words(w, blk + 16 + 32 * h + l0, &mut words, 0usize, 2usize, true);
            f16_pair(w, blk + 80, &mut pair);
            #[unroll]
            for i in 0..8usize {
                q[i] = byte_bits(&words, 0usize, i, sh, 3u32);
                q[8 + i] = byte_bits(&words, 0usize, i, sh + 2, 3u32);
            }
            let sa = ld_u8(w, blk + ja);
            let sb = ld_u8(w, blk + jb);
            mul_a = pair[0] * f32::cast_from(sa & 0x0f);
            mul_b = pair[0] * f32::cast_from(sb & 0x0f);
            off_a = pair[1] * f32::cast_from(sa >> 4);
            off_b = pair[1] * f32::cast_from(sb >> 4);
        } else {
            // hmask[32], qs[64], scales[12], d; 2-aligned. The high bit of element e is
            // bit e / 32 (2c for run A, 2c + 1 for run B) of hmask[e % 32]; level
            // low + 4·high, minus c = 4.
            ld_words(w, blk + 32 + 32 * h + l0, &mut words, 0usize, 2usize, false);
            ld_words(w, blk + l0, &mut words, 2usize, 2usize, false);
            let hsh = u32::cast_from(2 * c);
            #[unroll]
            for i in 0..8usize {
                q[i] = byte_bits(&words, 0usize, i, sh, 3u32) | (byte_bits(&words, 2usize, i, hsh, 1u32) << 2);
                q[8 + i] = byte_bits(&words, 0usize, i, sh + 2, 3u32) | (byte_bits(&words, 2usize, i, hsh + 1, 1u32) << 2);
            }
            let d = f16_at(w, blk + 108);
            mul_a = d * (f32::cast_from(q3k_scale(w, blk + 96, ja)) - 32.0);
            mul_b = d * (f32::cast_from(q3k_scale(w, blk + 96, jb)) - 32.0);
        }
    } else if fmt == Q4_K || fmt == Q5_K {
        // d, dmin, scales[12], [qh[32] for Q5_K], qs[128]; word-aligned. Part p: chunk
        // c = p / 4, bytes l0..l0 + 8 of its 32: run A the low nibbles (sub-block 2c), run B
        // the high ones (2c + 1); Q5_K's fifth bit of element e is bit e / 32 of qh[e % 32].
        let c = p / 4;
        let l0 = 8 * (p % 4);
        f16_pair(w, blk, &mut pair);
        let mut qs_at = blk + 16;
        if fmt == Q5_K {
            qs_at = blk + 48;
            ld_words(w, blk + 16 + l0, &mut words, 2usize, 2usize, true);
        }
        ld_words(w, qs_at + 32 * c + l0, &mut words, 0usize, 2usize, true);
        let hsh = u32::cast_from(2 * c);
        #[unroll]
        for i in 0..8usize {
            let mut lo = byte_bits(&words, 0usize, i, 0u32, 0x0fu32);
            let mut hi = byte_bits(&words, 0usize, i, 4u32, 0x0fu32);
            if fmt == Q5_K {
                lo |= byte_bits(&words, 2usize, i, hsh, 1u32) << 4;
                hi |= byte_bits(&words, 2usize, i, hsh + 1, 1u32) << 4;
            }
            q[i] = lo;
            q[8 + i] = hi;
        }
        k4_scale_min(w, blk + 4, 2 * c, &mut sm);
        mul_a = pair[0] * f32::cast_from(sm[0]);
        off_a = pair[1] * f32::cast_from(sm[1]);
        k4_scale_min(w, blk + 4, 2 * c + 1, &mut sm);
        mul_b = pair[0] * f32::cast_from(sm[0]);
        off_b = pair[1] * f32::cast_from(sm[1]);
    } else if fmt == Q6_K {
        // ql[128], qh[64], scales[16] (i8), d; 2-aligned. Part p: chunk c = p / 4 (half
        // h = c / 2, runs k = 2j and 2j + 1 of the half, j = c % 2), bytes l0..l0 + 8:
        // low nibbles from ql[64h + l] (run A) and ql[64h + 32 + l] (run B), shifted 4j;
        // top 2 bits from qh[32h + l], shifted 2k.
        let c = p / 4;
        let l0 = 8 * (p % 4);
        let h = c / 2;
        let j = c % 2;
        ld_words(w, blk + 64 * h + l0, &mut words, 0usize, 2usize, false);
        ld_words(w, blk + 64 * h + 32 + l0, &mut words, 2usize, 2usize, false);
        ld_words(w, blk + 128 + 32 * h + l0, &mut words, 4usize, 2usize, false);
        let sh = u32::cast_from(j) * 4;
        #[unroll]
        for i in 0..8usize {
            q[i] = byte_bits(&words, 0usize, i, sh, 0x0fu32) | (byte_bits(&words, 4usize, i, sh, 3u32) << 4);
            q[8 + i] = byte_bits(&words, 2usize, i, sh, 0x0fu32) | (byte_bits(&words, 4usize, i, sh + 2, 3u32) << 4);
        }
        let d = f16_at(w, blk + 208);
        let ja = 8 * h + 4 * j + l0 / 16;
        let sa = ld_u8(w, blk + 192 + ja);
        let sb = ld_u8(w, blk + 194 + ja);
        mul_a = d * (f32::cast_from(sa ^ 0x80) - 128.0);
        mul_b = d * (f32::cast_from(sb ^ 0x80) - 128.0);
    }
    cst[0] = mul_a;
    cst[1] = off_a;
    cst[2] = mul_b;
    cst[3] = off_b;
}

/// Decode part `p` of the block at byte address `blk` into `v[0..16]`: run A into `v[0..8]`,
/// run B into `v[8..16]`, exactly as `ingot_cpu::quant` (`fmt` is a block format).
#[cube]
pub(crate) fn decode_part(w: &Array<u32>, blk: usize, p: usize, v: &mut Array<f32>, #[comptime] fmt: u32) {
    let mut q = Array::<u32>::new(16usize);
    let mut cst = Array::<f32>::new(4usize);
    part_levels(w, blk, p, &mut q, &mut cst, fmt);
    // 2²³ + c.
    let bias = f32::new(comptime!((8388608 + level_offset(fmt)) as f32));
    #[unroll]
    for i in 0..8usize {
        if comptime!(has_offset(fmt)) {
            v[i] = cst[0] * level(q[i], bias) - cst[1];
            v[8 + i] = cst[2] * level(q[8 + i], bias) - cst[3];
        } else {
            v[i] = cst[0] * level(q[i], bias);
            v[8 + i] = cst[2] * level(q[8 + i], bias);
        }
    }
}

/// Element `e` of an f32, f16 or bf16 weight buffer, as f32 (bit-exact).
#[allow(unused_assignments)]
#[cube]
pub(crate) fn load_float(w: &Array<u32>, e: usize, #[comptime] fmt: u32) -> f32 {
    let mut out = 0.0f32;
    if fmt == F32 {
        out = f32::reinterpret(w[e]);
    } else {
        let h = (w[e / 2] >> (u32::cast_from(e % 2) * 16)) & 0xffff;
        if fmt == F16 {
            out = f32::reinterpret(f16_bits_to_f32(h));
        } else {
            out = f32::reinterpret(h << 16);
        }
    }
    out
}

/// Rows of f32 values from a weight buffer: output row `r` is source row `ids[r]` when
/// `gather` (an id outside `0..vocab` gives a row of zeros, never a read out of bounds)
/// and row `r` otherwise. Block formats: one thread per part; floats: one per element.
#[cube(launch_unchecked)]
pub(crate) fn dequant_rows_kernel(
    w: &Array<u32>,
    ids: &Array<i32>,
    out: &mut Array<f32>,
    rows: usize,
    cols: usize,
    vocab: usize,
    #[comptime] f: u32,
    #[comptime] block: usize,
    #[comptime] bytes: usize,
    #[comptime] parts: usize,
    #[comptime] gather: bool,
) {
    let t = linear_pos();
    let per_row = comptime!(if parts > 0 { parts } else { 1 });
    let units = if parts > 0 { (cols / block) * per_row } else { cols };
    if t < rows * units {
        let r = t / units;
        let u = t % units;
        let mut src = r;
        let mut ok = true;
        if gather {
            let id = ids[r];
            ok = id >= 0 && usize::cast_from(id) < vocab;
            src = select(ok, usize::cast_from(id), 0usize);
        }
        if parts > 0 {
            let b = u / per_row;
            let p = u % per_row;
            let mut v = Array::<f32>::new(16usize);
            if ok {
                decode_part(w, (src * (cols / block) + b) * bytes, p, &mut v, f);
            } else {
                #[unroll]
                for i in 0..16usize {
                    v[i] = 0.0;
                }
            }
            let ea = r * cols + b * block + run_a(p, f);
            let eb = r * cols + b * block + run_b(p, f);
            #[unroll]
            for i in 0..8usize {
                out[ea + i] = v[i];
                out[eb + i] = v[8 + i];
            }
        } else {
            let mut val = 0.0f32;
            if ok {
                val = load_float(w, src * cols + u, f);
            }
            out[t] = val;
        }
    }
}

/// Launch [`dequant_rows_kernel`]: `rows` rows of `cols` f32 values from `w` (a weight
/// tensor of the format `f`, `src_rows` rows of `cols`), gathered through `ids` when given.
/// Returns the output buffer.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dequant_rows<R: Runtime>(
    d: &Device<R>,
    op: &'static str,
    w: &GpuTensor,
    f: Format,
    ids: Option<&GpuTensor>,
    rows: usize,
    cols: usize,
    src_rows: usize,
) -> Result<cubecl::server::Handle> {
    check_addressable(op, "the weight tensor", w.bytes())?;
    check_addressable(op, "the output", rows * cols * 4)?;
    let out = d.alloc(DType::F32, rows * cols);
    let units = if f.parts > 0 { cols / f.block * f.parts } else { cols };
    let (count, dim) = grid_1d(rows * units);
    // Without `ids` the kernel never reads its ids argument (`gather` is false at compile
    // time); the weight buffer stands in for it.
    let (ids_h, ids_len) = match ids {
        Some(t) => (t.handle.clone(), rows),
        None => (w.handle.clone(), 1),
    };
    // SAFETY: `w` holds `w.words()` words: `src_rows` rows of `cols` elements in format `f`
    // (checked against the op's specs). Thread t < rows·units decodes unit t % units of
    // source row ids[r] (only when 0 <= id < vocab = src_rows) or r < rows <= src_rows,
    // whose bytes lie inside that row: `decode_part` reads the words holding bytes of its
    // block only (`ld_words` loads the word after the last only when a field starts
    // mid-word, and then the field's bytes reach into it). It writes elements of output
    // row r < rows only, inside the rows·cols the output holds. ids holds `rows` i32.
    unsafe {
        dequant_rows_kernel::launch_unchecked::<R>(
            &d.client,
            count,
            dim,
            ArrayArg::from_raw_parts(w.handle.clone(), w.words()),
            ArrayArg::from_raw_parts(ids_h, ids_len),
            ArrayArg::from_raw_parts(out.clone(), rows * cols),
            rows,
            cols,
            src_rows,
            f.code,
            f.block,
            f.bytes,
            f.parts,
            ids.is_some(),
        )
    };
    Ok(out)
}

/// `dequantize`: a [rows, cols] weight tensor to f32, block by block.
pub fn dequantize<R: Runtime>(d: &Device<R>, p: &DequantizeParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "dequantize";
    let f = Format::of(p.dtype).ok_or_else(|| Error::invalid(OP, format!("{} is not a weight format", p.dtype)))?;
    let w = input(OP, inputs, "input")?;
    let out = dequant_rows(d, OP, w, f, None, p.rows, p.cols, p.rows)?;
    Ok(GpuTensors::from([("output".to_string(), GpuTensor::new(out, DType::F32, &[p.rows, p.cols]))]))
}

// ---------------------------------------------------------------- registration

/// Which of this family's ops have a kernel here, for which dtypes ([`crate::Support`]).
pub(crate) fn support(op: &ingot_core::Op) -> crate::Support {
    use ingot_core::Op;
    match op {
        // Every weight format.
        Op::Dequantize(_) => crate::Support::Bits,
        _ => crate::Support::None,
    }
}
