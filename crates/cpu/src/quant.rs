//! Dequantization and quantization of one row of weights in the GGUF formats.
//!
//! The block layouts are exactly ggml's GGUF block formats (`block_q4_0`, ...,
//! `block_q6_K`): the same field order, sizes and bit packing, with f16 scales
//! stored little-endian. [`dequantize_row`] reproduces ggml's `dequantize_row_*`
//! bit for bit (same f16 decoding, same f32 operations in the same order).
//! [`quantize_row`] produces valid blocks: for Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 it
//! follows ggml's reference quantizers (`quantize_row_*_ref`, round to nearest);
//! for the K-quants it uses a simple min/max scheme, meant for test data, not
//! for producing model files of ggml's quality.

use crate::device_ops::{input, outs, Alloc, Kernel, Tens};
use crate::util::{get, outputs};
use half::{bf16, f16};
use ingot_core::Op;
use ingot_core::{DType, DequantizeParams, Error, Result, Tensor, Tensors};
use rayon::prelude::*;

/// Elements per block of the 32-element formats (Q4_0 ... Q8_0).
const QK: usize = 32;
/// Elements per super-block of the K-quants.
const QK_K: usize = 256;

/// Dequantize `dst.len()` elements stored as `dtype` in `src` (GGUF block layout,
/// exactly as ggml stores it; F32, F16 and BF16 are plain little-endian).
///
/// Errors if `dtype` is not one of [`DType::WEIGHTS`], if `dst.len()` is not a
/// multiple of the block size, or if `src.len()` is not `dtype.bytes_for(dst.len())`.
/// Any bytes are accepted: scales that decode to inf or NaN give inf or NaN outputs,
/// as in ggml.
pub fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    const OP: &str = "dequantize";
    if !DType::WEIGHTS.contains(&dtype) {
        return Err(Error::invalid(OP, format!("{dtype} is not a weight format")));
    }
    let bs = dtype.block_size();
    if dst.len() % bs != 0 {
        return Err(Error::invalid(OP, format!("{} elements is not a whole number of {dtype} blocks of {bs}", dst.len())));
    }
    let want =
        dtype.bytes_for(dst.len()).ok_or_else(|| Error::invalid(OP, format!("{} {dtype} elements overflow the byte count", dst.len())))?;
    if src.len() != want {
        return Err(Error::invalid(OP, format!("{} {dtype} elements need {want} bytes, got {}", dst.len(), src.len())));
    }
    let block = block_decoder(dtype).ok_or_else(|| Error::invalid(OP, format!("{dtype} is not a weight format")))?;
    for (b, y) in src.chunks_exact(dtype.type_size()).zip(dst.chunks_exact_mut(bs)) {
        block(b, y);
    }
    Ok(())
}

/// Quantize f32 values into `dtype` blocks (GGUF layout, see [`dequantize_row`]).
///
/// F32 is copied, F16 and BF16 round to nearest even (IEEE: a finite value beyond
/// the f16 range becomes infinite). Errors if `dtype` is not one of
/// [`DType::WEIGHTS`], if `src.len()` is not a multiple of the block size, if a
/// value is not finite (the message names its index), or if a block's scale does
/// not fit in f16 (values beyond roughly 65504 times the format's largest level).
pub fn quantize_row(dtype: DType, src: &[f32]) -> Result<Vec<u8>> {
    const OP: &str = "quantize";
    if !DType::WEIGHTS.contains(&dtype) {
        return Err(Error::invalid(OP, format!("{dtype} is not a weight format")));
    }
    let bs = dtype.block_size();
    if src.len() % bs != 0 {
        return Err(Error::invalid(OP, format!("{} elements is not a whole number of {dtype} blocks of {bs}", src.len())));
    }
    if let Some(i) = src.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(OP, format!("value at index {i} is not finite ({})", src[i])));
    }
    let nbytes =
        dtype.bytes_for(src.len()).ok_or_else(|| Error::invalid(OP, format!("{} {dtype} elements overflow the byte count", src.len())))?;
    let mut out = vec![0u8; nbytes];
    let block: fn(&[f32], &mut [u8]) -> Result<(), ScaleOverflow> = match dtype {
        DType::F32 => |x, b| {
            b.copy_from_slice(&x[0].to_le_bytes());
            Ok(())
        },
        DType::F16 => |x, b| {
            b.copy_from_slice(&f16::from_f32(x[0]).to_le_bytes());
            Ok(())
        },
        DType::BF16 => |x, b| {
            b.copy_from_slice(&bf16::from_f32(x[0]).to_le_bytes());
            Ok(())
        },
        DType::Q4_0 => quant_q4_0,
        DType::Q4_1 => quant_q4_1,
        DType::Q5_0 => quant_q5_0,
        DType::Q5_1 => quant_q5_1,
        DType::Q8_0 => quant_q8_0,
        DType::Q2_K => quant_q2_k,
        DType::Q3_K => quant_q3_k,
        DType::Q4_K => quant_q4_k,
        DType::Q5_K => quant_q5_k,
        DType::Q6_K => quant_q6_k,
        // Not reachable: checked against DType::WEIGHTS above.
        other => return Err(Error::invalid(OP, format!("{other} is not a weight format"))),
    };
    for (i, (x, b)) in src.chunks_exact(bs).zip(out.chunks_exact_mut(dtype.type_size())).enumerate() {
        block(x, b).map_err(|ScaleOverflow(s)| {
            Error::invalid(OP, format!("{dtype} block {i}: scale {s:e} does not fit in f16 (values too large for this format)"))
        })?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

/// An f16 field at byte offset `o` of a block.
#[inline]
fn f16_at(b: &[u8], o: usize) -> f32 {
    f16::from_le_bytes([b[o], b[o + 1]]).to_f32()
}

/// A scale (or min) that overflows f16 when stored.
struct ScaleOverflow(f32);

/// Round a scale to f16 and store it at byte offset `o`; returns the stored value as f32.
fn put_f16(b: &mut [u8], o: usize, v: f32) -> Result<f32, ScaleOverflow> {
    let h = f16::from_f32(v);
    if !h.is_finite() {
        return Err(ScaleOverflow(v));
    }
    b[o..o + 2].copy_from_slice(&h.to_le_bytes());
    Ok(h.to_f32())
}

/// Round to the nearest integer, halves away from zero (saturating; inputs are finite).
fn nearest(v: f32) -> i32 {
    v.round() as i32
}

/// The value of largest magnitude (the first one on ties), or 0 for an empty or all-zero slice.
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Minimum and maximum of a non-empty slice.
fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter().fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

// ---------------------------------------------------------------------------
// 32-element formats
// ---------------------------------------------------------------------------

/// Q4_0, 18 bytes per 32 elements: `d: f16` (0..2), `qs: [u8; 16]` (2..18).
/// Element `j < 16` is the low nibble of `qs[j]`, element `j + 16` its high nibble;
/// value = `(q - 8) * d`.
#[inline]
fn dequant_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..QK / 2 {
        y[j] = (i32::from(qs[j] & 0x0F) - 8) as f32 * d;
        y[j + QK / 2] = (i32::from(qs[j] >> 4) - 8) as f32 * d;
    }
}

/// Q4_1, 20 bytes per 32 elements: `d: f16` (0..2), `m: f16` (2..4), `qs: [u8; 16]` (4..20),
/// nibbles as in Q4_0; value = `q * d + m`.
#[inline]
fn dequant_q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..QK / 2 {
        y[j] = f32::from(qs[j] & 0x0F) * d + m;
        y[j + QK / 2] = f32::from(qs[j] >> 4) * d + m;
    }
}

/// The 5-bit levels of a Q5_0/Q5_1 block: low nibbles as in Q4_0, the fifth bit of
/// element `j` is bit `j` of `qh` read as a little-endian u32.
#[inline]
pub(crate) fn q5_levels(qh: &[u8], qs: &[u8]) -> [u8; QK] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = [0u8; QK];
    for j in 0..QK / 2 {
        let hi0 = ((qh >> j) & 1) as u8;
        let hi1 = ((qh >> (j + QK / 2)) & 1) as u8;
        q[j] = (qs[j] & 0x0F) | (hi0 << 4);
        q[j + QK / 2] = (qs[j] >> 4) | (hi1 << 4);
    }
    q
}

/// Q5_0, 22 bytes per 32 elements: `d: f16` (0..2), `qh: [u8; 4]` (2..6), `qs: [u8; 16]` (6..22);
/// value = `(q - 16) * d`.
#[inline]
fn dequant_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let q = q5_levels(&b[2..6], &b[6..22]);
    for (y, &q) in y.iter_mut().zip(q.iter()) {
        *y = (i32::from(q) - 16) as f32 * d;
    }
}

/// Q5_1, 24 bytes per 32 elements: `d: f16` (0..2), `m: f16` (2..4), `qh: [u8; 4]` (4..8),
/// `qs: [u8; 16]` (8..24); value = `q * d + m`.
#[inline]
fn dequant_q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let q = q5_levels(&b[4..8], &b[8..24]);
    for (y, &q) in y.iter_mut().zip(q.iter()) {
        *y = f32::from(q) * d + m;
    }
}

/// Q8_0, 34 bytes per 32 elements: `d: f16` (0..2), `qs: [i8; 32]` (2..34); value = `q * d`.
#[inline]
fn dequant_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(b[2..34].iter()) {
        *y = f32::from(q as i8) * d;
    }
}

/// ggml's `quantize_row_q4_0_ref`: `d = max / -8` where `max` is the value of largest
/// magnitude, levels `min(15, trunc(x / d + 8.5))`.
fn quant_q4_0(x: &[f32], b: &mut [u8]) -> Result<(), ScaleOverflow> {
    let d = signed_absmax(x) / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d)?;
    let level = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
    for j in 0..QK / 2 {
        b[2 + j] = level(x[j]) | (level(x[j + QK / 2]) << 4);
    }
    Ok(())
}

/// ggml's `quantize_row_q4_1_ref`: `d = (max - min) / 15`, `m = min`, levels
/// `min(15, trunc((x - min) / d + 0.5))`.
fn quant_q4_1(x: &[f32], b: &mut [u8]) -> Result<(), ScaleOverflow> {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d)?;
    put_f16(b, 2, min)?;
    let level = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
    for j in 0..QK / 2 {
        b[4 + j] = level(x[j]) | (level(x[j + QK / 2]) << 4);
    }
    Ok(())
}

/// Store 32 five-bit levels as Q5_0/Q5_1 `qh` (4 bytes) and `qs` (16 bytes).
fn put_q5_levels(q: &[u8; QK], qh: &mut [u8], qs: &mut [u8]) {
    let mut h = 0u32;
    for (j, &l) in q.iter().enumerate() {
        h |= u32::from(l >> 4) << j;
    }
    qh.copy_from_slice(&h.to_le_bytes());
    for j in 0..QK / 2 {
        qs[j] = (q[j] & 0x0F) | ((q[j + QK / 2] & 0x0F) << 4);
    }
}

/// ggml's `quantize_row_q5_0_ref`: `d = max / -16`, levels `min(31, trunc(x / d + 16.5))`.
fn quant_q5_0(x: &[f32], b: &mut [u8]) -> Result<(), ScaleOverflow> {
    let d = signed_absmax(x) / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d)?;
    let mut q = [0u8; QK];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = ((v * id + 16.5) as i32).clamp(0, 31) as u8;
    }
    let (qh, qs) = b[2..22].split_at_mut(4);
    put_q5_levels(&q, qh, qs);
    Ok(())
}

/// ggml's `quantize_row_q5_1_ref`: `d = (max - min) / 31`, `m = min`, levels
/// `trunc((x - min) / d + 0.5)`.
fn quant_q5_1(x: &[f32], b: &mut [u8]) -> Result<(), ScaleOverflow> {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d)?;
    put_f16(b, 2, min)?;
    let mut q = [0u8; QK];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (((v - min) * id + 0.5) as i32).clamp(0, 31) as u8;
    }
    let (qh, qs) = b[4..24].split_at_mut(4);
    put_q5_levels(&q, qh, qs);
    Ok(())
}

/// ggml's `quantize_row_q8_0_ref`: `d = max|x| / 127`, levels `round(x / d)`
/// (halves away from zero).
fn quant_q8_0(x: &[f32], b: &mut [u8]) -> Result<(), ScaleOverflow> {
    let amax = x.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d)?;
    for (o, &v) in b[2..34].iter_mut().zip(x) {
        *o = nearest(v * id).clamp(-127, 127) as i8 as u8;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// K-quants: bit positions shared by dequantization and quantization
// ---------------------------------------------------------------------------

/// Q2_K/Q3_K: the `qs` byte (within the 64-byte `qs` array) and bit shift of the
/// 2-bit field of element `e` of a super-block. Each half of 128 elements uses 32
/// bytes; its four runs of 32 elements use bit pairs 0-1, 2-3, 4-5, 6-7.
fn k2_pos(e: usize) -> (usize, u32) {
    ((e / 128) * 32 + e % 32, 2 * ((e / 32) % 4) as u32)
}

/// Q4_K/Q5_K: the `qs` byte (within the 128-byte array) and shift of the nibble of
/// element `e`. Each chunk of 64 elements uses 32 bytes: low nibbles first, then high.
fn k4_pos(e: usize) -> (usize, u32) {
    ((e / 64) * 32 + e % 32, 4 * ((e / 32) % 2) as u32)
}

/// Q6_K: `(ql byte, nibble shift, qh byte, 2-bit shift)` of element `e`. Each half of
/// 128 elements uses 64 `ql` bytes and 32 `qh` bytes; its four runs of 32 elements
/// take the low nibbles of `ql[0..32]`, of `ql[32..64]`, the high nibbles of
/// `ql[0..32]`, of `ql[32..64]`, and the bit pairs 0-1, 2-3, 4-5, 6-7 of `qh`.
fn q6k_pos(e: usize) -> (usize, u32, usize, u32) {
    let (h, k, l) = (e / 128, (e / 32) % 4, e % 32);
    (h * 64 + (k % 2) * 32 + l, 4 * (k / 2) as u32, h * 32 + l, 2 * k as u32)
}

/// Q4_K/Q5_K: the 6-bit scale and min of sub-block `j` (0..8) from the 12 packed
/// bytes `s`. Sub-blocks 0..4 use the low 6 bits of `s[j]` (scale) and `s[j + 4]`
/// (min); sub-blocks 4..8 take their low 4 bits from the nibbles of `s[j + 4]`
/// (scale low, min high) and their top 2 bits from bits 6-7 of `s[j - 4]` (scale)
/// and `s[j]` (min).
pub(crate) fn k4_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// Inverse of [`k4_scale_min`]: pack eight 6-bit scales and mins (`sc[..8]`, `m[..8]`) into 12 bytes.
fn k4_pack(sc: &[u8], m: &[u8], s: &mut [u8]) {
    for j in 0..4 {
        s[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4);
    }
}

/// Q3_K: the 6-bit scale of sub-block `j` (0..16, stored with a +32 offset) from the
/// 12 packed bytes `s`. Its low 4 bits are the low nibble of `s[j]` for `j < 8` and
/// the high nibble of `s[j - 8]` otherwise; its top 2 bits are bits `2*(j/4)..` of
/// `s[8 + j % 4]`.
pub(crate) fn q3k_scale(s: &[u8], j: usize) -> u8 {
    let low = if j < 8 { s[j] & 0x0F } else { s[j - 8] >> 4 };
    let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    low | (high << 4)
}

/// Inverse of [`q3k_scale`]: pack sixteen 6-bit values into 12 bytes.
fn q3k_pack(u: &[u8; 16], s: &mut [u8]) {
    s.fill(0);
    for (j, &v) in u.iter().enumerate() {
        if j < 8 {
            s[j] |= v & 0x0F;
        } else {
            s[j - 8] |= (v & 0x0F) << 4;
        }
        s[8 + j % 4] |= ((v >> 4) & 3) << (2 * (j / 4));
    }
}

// ---------------------------------------------------------------------------
// K-quant dequantization
// ---------------------------------------------------------------------------

/// Q2_K, 84 bytes per 256 elements: `scales: [u8; 16]` (0..16), `qs: [u8; 64]` (16..80),
/// `d: f16` (80..82), `dmin: f16` (82..84). Sixteen sub-blocks of 16; sub-block `j`
/// has scale `scales[j] & 15` and min `scales[j] >> 4`; 2-bit levels placed by
/// [`k2_pos`]; value = `(d * sc) * q - dmin * m`.
#[inline]
fn dequant_q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    for (e, y) in y.iter_mut().enumerate() {
        let sc = scales[e / 16];
        let dl = d * f32::from(sc & 0x0F);
        let ml = dmin * f32::from(sc >> 4);
        let (byte, shift) = k2_pos(e);
        let q = (qs[byte] >> shift) & 3;
        *y = dl * f32::from(q) - ml;
    }
}

/// Q3_K, 110 bytes per 256 elements: `hmask: [u8; 32]` (0..32), `qs: [u8; 64]` (32..96),
/// `scales: [u8; 12]` (96..108), `d: f16` (108..110). Sixteen sub-blocks of 16 with
/// 6-bit scales packed as in [`q3k_scale`] (value minus 32); the low 2 bits of a
/// level are placed by [`k2_pos`], its high bit is bit `e / 32` of `hmask[e % 32]`;
/// value = `(d * (sc - 32)) * (low - (high ? 0 : 4))`.
#[inline]
fn dequant_q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, scales) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    for (e, y) in y.iter_mut().enumerate() {
        let dl = d * (i32::from(q3k_scale(scales, e / 16)) - 32) as f32;
        let (byte, shift) = k2_pos(e);
        let low = i32::from((qs[byte] >> shift) & 3);
        let high = (hmask[e % 32] >> (e / 32)) & 1;
        let q = low - if high != 0 { 0 } else { 4 };
        *y = dl * q as f32;
    }
}

/// Q4_K, 144 bytes per 256 elements: `d: f16` (0..2), `dmin: f16` (2..4),
/// `scales: [u8; 12]` (4..16), `qs: [u8; 128]` (16..144). Eight sub-blocks of 32 with
/// 6-bit scales and mins packed as in [`k4_scale_min`]; nibbles placed by [`k4_pos`];
/// value = `(d * sc) * q - dmin * m`.
#[inline]
fn dequant_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for (j, y) in y.chunks_exact_mut(32).enumerate() {
        let (sc, m) = k4_scale_min(scales, j);
        let dl = d * f32::from(sc);
        let ml = dmin * f32::from(m);
        for (l, y) in y.iter_mut().enumerate() {
            let (byte, shift) = k4_pos(32 * j + l);
            *y = dl * f32::from((qs[byte] >> shift) & 0x0F) - ml;
        }
    }
}

/// Q5_K, 176 bytes per 256 elements: `d: f16` (0..2), `dmin: f16` (2..4),
/// `scales: [u8; 12]` (4..16), `qh: [u8; 32]` (16..48), `qs: [u8; 128]` (48..176).
/// As Q4_K, with the fifth bit of element `e` in bit `e / 32` of `qh[e % 32]`.
#[inline]
fn dequant_q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (j, y) in y.chunks_exact_mut(32).enumerate() {
        let (sc, m) = k4_scale_min(scales, j);
        let dl = d * f32::from(sc);
        let ml = dmin * f32::from(m);
        for (l, y) in y.iter_mut().enumerate() {
            let (byte, shift) = k4_pos(32 * j + l);
            let q = ((qs[byte] >> shift) & 0x0F) | (((qh[l] >> j) & 1) << 4);
            *y = dl * f32::from(q) - ml;
        }
    }
}

/// Q6_K, 210 bytes per 256 elements: `ql: [u8; 128]` (0..128), `qh: [u8; 64]` (128..192),
/// `scales: [i8; 16]` (192..208), `d: f16` (208..210). Sixteen sub-blocks of 16 with
/// signed 8-bit scales; 6-bit levels placed by [`q6k_pos`];
/// value = `(d * sc) * (q - 32)`.
#[inline]
fn dequant_q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (e, y) in y.iter_mut().enumerate() {
        let (lb, ls, hb, hs) = q6k_pos(e);
        let q = ((ql[lb] >> ls) & 0x0F) | (((qh[hb] >> hs) & 3) << 4);
        let sc = f32::from(scales[e / 16] as i8);
        *y = d * sc * (i32::from(q) - 32) as f32;
    }
}

// ---------------------------------------------------------------------------
// K-quant quantization (a simple scheme, for test data)
// ---------------------------------------------------------------------------

/// Result of [`affine_k`]: per-sub-block integer scales and mins, and per-element levels.
struct AffineK {
    ls: [u8; 16],
    lm: [u8; 16],
    q: [u8; QK_K],
}

/// Affine K-quant scheme (Q2_K, Q4_K, Q5_K), values `x ≈ (d * ls) * q - dmin * lm`:
///
/// 1. each sub-block of `sub` elements gets the min/max fit `s = (hi - lo) / qmax`,
///    `m = -lo`, with `lo = min(min(x), 0)` since the stored min is subtracted;
/// 2. `d = max(s) / smax` and `dmin = max(m) / smax` are rounded to f16 and stored
///    at byte offsets `d_at` and `d_at + 2`, then `ls = round(s / d)`, `lm = round(m / dmin)`
///    (clamped to `0..=smax`);
/// 3. each value is quantized against the *decoded* scale and min of its sub-block:
///    `q = round((x + dmin * lm) / (d * ls))` clamped to `0..=qmax`,
///
/// so the error of a value stays within about one step of its sub-block.
fn affine_k(x: &[f32], sub: usize, qmax: u8, smax: u8, b: &mut [u8], d_at: usize) -> Result<AffineK, ScaleOverflow> {
    let nsub = QK_K / sub;
    let mut s = [0.0f32; 16];
    let mut m = [0.0f32; 16];
    for (j, xs) in x.chunks_exact(sub).enumerate() {
        let (lo, hi) = min_max(xs);
        let lo = lo.min(0.0);
        s[j] = (hi - lo) / f32::from(qmax);
        m[j] = -lo;
    }
    let max_s = s.iter().fold(0.0f32, |a, &v| a.max(v));
    let max_m = m.iter().fold(0.0f32, |a, &v| a.max(v));
    let d = put_f16(b, d_at, if max_s > 0.0 { max_s / f32::from(smax) } else { 0.0 })?;
    let dmin = put_f16(b, d_at + 2, if max_m > 0.0 { max_m / f32::from(smax) } else { 0.0 })?;
    let mut out = AffineK { ls: [0; 16], lm: [0; 16], q: [0; QK_K] };
    let smax = i32::from(smax);
    for j in 0..nsub {
        out.ls[j] = if d > 0.0 { nearest(s[j] / d).clamp(0, smax) as u8 } else { 0 };
        out.lm[j] = if dmin > 0.0 { nearest(m[j] / dmin).clamp(0, smax) as u8 } else { 0 };
    }
    for (e, &v) in x.iter().enumerate() {
        let j = e / sub;
        let dl = d * f32::from(out.ls[j]);
        let ml = dmin * f32::from(out.lm[j]);
        out.q[e] = if dl > 0.0 { nearest((v + ml) / dl).clamp(0, i32::from(qmax)) as u8 } else { 0 };
    }
    Ok(out)
}

/// Result of [`symmetric_k`]: per-sub-block signed integer scales and signed levels.
struct SymmetricK {
    sc: [i32; 16],
    q: [i32; QK_K],
}

/// Symmetric K-quant scheme (Q3_K, Q6_K) over sixteen sub-blocks of 16, values
/// `x ≈ (d * sc) * q` with `q` in `-qneg..qneg` and `sc` in `-sneg..sneg`:
///
/// 1. each sub-block gets `s = v / -qneg`, `v` its value of largest magnitude (so `v`
///    maps to level `-qneg`, which uses the whole signed range);
/// 2. `d = t / -sneg`, `t` the `s` of largest magnitude, rounded to f16 and stored at
///    byte offset `d_at`, then `sc = round(s / d)` clamped to `-sneg..sneg`;
/// 3. `q = round(x / (d * sc))` clamped to `-qneg..qneg`, against the decoded scale.
fn symmetric_k(x: &[f32], qneg: i32, sneg: i32, b: &mut [u8], d_at: usize) -> Result<SymmetricK, ScaleOverflow> {
    let mut s = [0.0f32; 16];
    for (j, xs) in x.chunks_exact(16).enumerate() {
        s[j] = signed_absmax(xs) / -(qneg as f32);
    }
    let t = signed_absmax(&s);
    let d = put_f16(b, d_at, if t != 0.0 { t / -(sneg as f32) } else { 0.0 })?;
    let mut out = SymmetricK { sc: [0; 16], q: [0; QK_K] };
    for (sc, &s) in out.sc.iter_mut().zip(s.iter()) {
        *sc = if d != 0.0 { nearest(s / d).clamp(-sneg, sneg - 1) } else { 0 };
    }
    for (e, &v) in x.iter().enumerate() {
        let dl = d * out.sc[e / 16] as f32;
        out.q[e] = if dl != 0.0 { nearest(v / dl).clamp(-qneg, qneg - 1) } else { 0 };
    }
    Ok(out)
}

/// Q2_K: [`affine_k`] with sixteen sub-blocks of 16, 2-bit levels and 4-bit scales/mins.
fn quant_q2_k(x: &[f32], b: &mut [u8]) -> Result<(), ScaleOverflow> {
    let a = affine_k(x, 16, 3, 15, b, 80)?;
    for (j, o) in b[..16].iter_mut().enumerate() {
        *o = a.ls[j] | (a.lm[j] << 4);
    }
    for (e, &q) in a.q.iter().enumerate() {
        let (byte, shift) = k2_pos(e);
        b[16 + byte] |= q << shift;
    }
    Ok(())
}

/// Q3_K: [`symmetric_k`] with 3-bit levels (-4..4) and 6-bit scales (-32..32).
fn quant_q3_k(x: &[f32], b: &mut [u8]) -> Result<(), ScaleOverflow> {
    let s = symmetric_k(x, 4, 32, b, 108)?;
    let mut u = [0u8; 16];
    for (u, &sc) in u.iter_mut().zip(s.sc.iter()) {
        *u = (sc + 32) as u8;
    }
    q3k_pack(&u, &mut b[96..108]);
    for (e, &q) in s.q.iter().enumerate() {
        let l = (q + 4) as u8; // 0..8: low 2 bits in qs, bit 2 in hmask
        let (byte, shift) = k2_pos(e);
        b[32 + byte] |= (l & 3) << shift;
        b[e % 32] |= (l >> 2) << (e / 32);
    }
    Ok(())
}

/// Q4_K: [`affine_k`] with eight sub-blocks of 32, 4-bit levels and 6-bit scales/mins.
fn quant_q4_k(x: &[f32], b: &mut [u8]) -> Result<(), ScaleOverflow> {
    let a = affine_k(x, 32, 15, 63, b, 0)?;
    k4_pack(&a.ls[..8], &a.lm[..8], &mut b[4..16]);
    for (e, &q) in a.q.iter().enumerate() {
        let (byte, shift) = k4_pos(e);
        b[16 + byte] |= q << shift;
    }
    Ok(())
}

/// Q5_K: [`affine_k`] with eight sub-blocks of 32, 5-bit levels and 6-bit scales/mins.
fn quant_q5_k(x: &[f32], b: &mut [u8]) -> Result<(), ScaleOverflow> {
    let a = affine_k(x, 32, 31, 63, b, 0)?;
    k4_pack(&a.ls[..8], &a.lm[..8], &mut b[4..16]);
    for (e, &q) in a.q.iter().enumerate() {
        let (byte, shift) = k4_pos(e);
        b[48 + byte] |= (q & 0x0F) << shift;
        b[16 + e % 32] |= (q >> 4) << (e / 32);
    }
    Ok(())
}

/// Q6_K: [`symmetric_k`] with 6-bit levels (-32..32) and 8-bit scales (-128..128).
fn quant_q6_k(x: &[f32], b: &mut [u8]) -> Result<(), ScaleOverflow> {
    let s = symmetric_k(x, 32, 128, b, 208)?;
    for (j, &sc) in s.sc.iter().enumerate() {
        b[192 + j] = sc as i8 as u8;
    }
    for (e, &q) in s.q.iter().enumerate() {
        let l = (q + 32) as u8; // 0..64: low nibble in ql, top 2 bits in qh
        let (lb, ls, hb, hs) = q6k_pos(e);
        b[lb] |= (l & 0x0F) << ls;
        b[128 + hb] |= (l >> 4) << hs;
    }
    Ok(())
}

// ---------------------------------------------------------------- the `dequantize` op

/// Dequantize a [rows, cols] weight tensor to f32 values, row by row.
pub fn dequantize_matrix(t: &Tensor, rows: usize, cols: usize) -> Result<Vec<f32>> {
    let row_bytes = t.dtype.bytes_for(cols).unwrap_or(0);
    let mut out = vec![0f32; rows * cols];
    for (src, dst) in t.data.chunks_exact(row_bytes.max(1)).zip(out.chunks_exact_mut(cols)) {
        dequantize_row(t.dtype, src, dst)?;
    }
    Ok(out)
}

/// `dequantize`: the rows expanded to f32, exactly as ggml does.
pub fn dequantize(p: &DequantizeParams, inputs: &Tensors) -> Result<Tensors> {
    let t = get("dequantize", inputs, "input")?;
    let v = dequantize_matrix(t, p.rows, p.cols)?;
    Ok(outputs([("output", Tensor::from_f32(DType::F32, vec![p.rows, p.cols], &v))]))
}

// ---------------------------------------------------------------- fast kernels (`cpu`)

/// The fast kernel of this family's ops on the [`crate::CpuDevice`] ([`crate::device_ops`]).
pub(crate) fn fast(op: &Op) -> Option<Kernel<'_>> {
    Some(match op {
        Op::Dequantize(p) => Box::new(move |i, a| dequantize_fast(p, i, a)),
        _ => return None,
    })
}

/// The rows decoded to f32, as the fast `embedding_lookup` decodes them.
fn dequantize_fast(p: &ingot_core::DequantizeParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let op = "dequantize";
    let src = input(op, ins, "input")?.bytes()?;
    let row_bytes = p.dtype.bytes_for(p.cols).ok_or_else(|| Error::invalid("dequantize", "cols is not whole blocks"))?;
    let out = alloc.zeros(DType::F32, &[p.rows, p.cols])?;
    out.write()?
        .f32()
        .par_chunks_mut(p.cols)
        .zip(src.par_chunks(row_bytes))
        .try_for_each(|(dst, row)| crate::quant::dequantize_row(p.dtype, row, dst))?;
    Ok(outs([("output", out)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// N(0, 1) samples (Box-Muller over a seeded ChaCha8 stream).
    fn gaussian(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]
                let u2: f64 = rng.gen::<f64>();
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
            })
            .collect()
    }

    fn round_trip(dtype: DType, x: &[f32]) -> Vec<f32> {
        let b = quantize_row(dtype, x).unwrap();
        assert_eq!(Some(b.len()), dtype.bytes_for(x.len()), "{dtype}");
        let mut y = vec![f32::NAN; x.len()];
        dequantize_row(dtype, &b, &mut y).unwrap();
        y
    }

    fn rel_rms(x: &[f32], y: &[f32]) -> f64 {
        let err: f64 = x.iter().zip(y).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum();
        let sig: f64 = x.iter().map(|&a| f64::from(a).powi(2)).sum();
        (err / sig).sqrt()
    }

    fn dequant(dtype: DType, b: &[u8], n: usize) -> Vec<f32> {
        let mut y = vec![f32::NAN; n];
        dequantize_row(dtype, b, &mut y).unwrap();
        y
    }

    /// (format, bound on the relative RMS error over N(0,1) data, number of levels).
    const FORMATS: [(DType, f64, f64); 13] = [
        (DType::F32, 0.0, f64::INFINITY),
        (DType::F16, 1e-3, f64::INFINITY),
        (DType::BF16, 1e-2, f64::INFINITY),
        (DType::Q4_0, 0.1, 16.0),
        (DType::Q4_1, 0.1, 16.0),
        (DType::Q5_0, 0.05, 32.0),
        (DType::Q5_1, 0.05, 32.0),
        (DType::Q8_0, 0.01, 256.0),
        (DType::Q2_K, 0.4, 4.0),
        (DType::Q3_K, 0.2, 8.0),
        (DType::Q4_K, 0.1, 16.0),
        (DType::Q5_K, 0.05, 32.0),
        (DType::Q6_K, 0.03, 64.0),
    ];

    #[test]
    fn round_trip_error_bounds() {
        const N: usize = 16 * QK_K; // 16 super-blocks, 128 blocks of 32
        for (i, &(dtype, bound, levels)) in FORMATS.iter().enumerate() {
            // Row: N(0,1) blocks, then a zero super-block, then one with an outlier.
            let mut x = gaussian(N, 1000 + i as u64);
            x.extend_from_slice(&[0.0; QK_K]);
            let mut outlier = gaussian(QK_K, 2000 + i as u64);
            let (at, big) = (77, -40.0f32);
            outlier[at] = big;
            x.extend_from_slice(&outlier);
            let y = round_trip(dtype, &x);

            let err = rel_rms(&x[..N], &y[..N]);
            eprintln!("{dtype}: relative RMS error {err:.5} (bound {bound})");
            assert!(err <= bound, "{dtype}: relative RMS error {err} > {bound}");
            if dtype == DType::F32 {
                assert_eq!(x, y);
            }

            let zeros = &y[N..N + QK_K];
            assert!(zeros.iter().all(|&v| v == 0.0), "{dtype}: zeros do not round trip: {zeros:?}");

            let yo = &y[N + QK_K..];
            assert!(yo.iter().all(|v| v.is_finite()), "{dtype}: non-finite output");
            let e_big = (yo[at] - big).abs();
            assert!(e_big <= 0.01 * big.abs(), "{dtype}: outlier {big} came back as {}", yo[at]);
            let max_err = outlier.iter().zip(yo).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            let allowed = 1.5 * f64::from(big.abs()) / levels;
            assert!(f64::from(max_err) <= allowed.max(1e-2), "{dtype}: max error {max_err} near the outlier");
        }
    }

    #[test]
    fn quantize_is_deterministic_and_stable() {
        // Quantizing twice gives the same bytes; quantizing dequantized values again
        // moves them little (they already lie close to the format's grid).
        for &(dtype, _, _) in &FORMATS {
            let x = gaussian(2 * QK_K, 7);
            assert_eq!(quantize_row(dtype, &x).unwrap(), quantize_row(dtype, &x).unwrap());
            let y = round_trip(dtype, &x);
            let z = round_trip(dtype, &y);
            let err = rel_rms(&y, &z);
            assert!(err < 0.02, "{dtype}: second round trip moved values by {err}");
        }
    }

    #[test]
    fn q8_0_exact_on_its_grid() {
        // Multiples of 1/4 with max |x| = 127/4: d = 0.25 exactly, every value is a level.
        let mut x: Vec<f32> = (0..31).map(|i| (i as f32 - 16.0) * 0.25).collect();
        x.push(31.75);
        let b = quantize_row(DType::Q8_0, &x).unwrap();
        assert_eq!(b[..2], [0x00, 0x34]);
        assert_eq!(round_trip(DType::Q8_0, &x), x);
    }

    #[test]
    fn hand_built_q4_0() {
        // d = 0.5 (f16 0x3800), qs[j] = j | (15 - j) << 4.
        let mut b = vec![0x00, 0x38];
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = dequant(DType::Q4_0, &b, 32);
        // Elements 0..16: (j - 8) * 0.5; elements 16..32: ((15 - j) - 8) * 0.5.
        let want = [
            -4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, //
            3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0, -2.5, -3.0, -3.5, -4.0,
        ];
        assert_eq!(y, want);
    }

    #[test]
    fn hand_built_q8_0() {
        // d = 0.25 (f16 0x3400); signed bytes.
        let mut b = vec![0x00, 0x34, 0x00, 0x01, 0x02, 0x03, 0x7F, 0x80, 0xFF, 0xFE];
        b.extend([0x10u8; 24]);
        let y = dequant(DType::Q8_0, &b, 32);
        let mut want = vec![0.0, 0.25, 0.5, 0.75, 31.75, -32.0, -0.25, -0.5];
        want.extend([4.0; 24]);
        assert_eq!(y, want);
    }

    #[test]
    fn hand_built_q5_0() {
        // d = 1.0 (0x3C00); qh = 0x8000_0001: elements 0 and 31 have the fifth bit.
        let mut b = vec![0x00, 0x3C, 0x01, 0x00, 0x00, 0x80];
        let mut qs = [0u8; 16];
        qs[0] = 0xF3; // element 0: 3 | 16 -> 3; element 16: 15 -> -1
        qs[15] = 0x50; // element 15: 0 -> -16; element 31: 5 | 16 -> 5
        b.extend(qs);
        let y = dequant(DType::Q5_0, &b, 32);
        let mut want = [-16.0f32; 32];
        want[0] = 3.0;
        want[16] = -1.0;
        want[31] = 5.0;
        assert_eq!(y, want);
    }

    #[test]
    fn hand_built_q4_k() {
        // d = 1.0 (0x3C00), dmin = 0.5 (0x3800).
        // Sub-block scales 1, 2, 3, 4, 17, 33, 63, 0 and mins 0, 1, 2, 3, 20, 40, 5, 63, packed:
        //   bytes 0..4:  sc[j] | (sc[j+4] >> 4) << 6 = 1|64, 2|128, 3|192, 4
        //   bytes 4..8:  m[j] | (m[j+4] >> 4) << 6   = 0|64, 1|128, 2, 3|192
        //   bytes 8..12: (sc[j+4] & 15) | (m[j+4] & 15) << 4 = 0x41, 0x81, 0x5F, 0xF0
        let sc = [1.0f32, 2.0, 3.0, 4.0, 17.0, 33.0, 63.0, 0.0];
        let m = [0.0f32, 1.0, 2.0, 3.0, 20.0, 40.0, 5.0, 63.0];
        let mut b = vec![0x00, 0x3C, 0x00, 0x38];
        b.extend([0x41, 0x82, 0xC3, 0x04, 0x40, 0x81, 0x02, 0xC3, 0x41, 0x81, 0x5F, 0xF0]);
        // qs: 4 chunks of 32 bytes; byte l of chunk c holds element 64c + l (low nibble,
        // value l % 16) and element 64c + 32 + l (high nibble, value 15 - l % 16).
        for _c in 0..4 {
            b.extend((0..32u8).map(|l| (l % 16) | ((15 - l % 16) << 4)));
        }
        let y = dequant(DType::Q4_K, &b, 256);
        for (e, &v) in y.iter().enumerate() {
            let (j, l) = (e / 32, (e % 32) as f32 % 16.0);
            let q = if j % 2 == 0 { l } else { 15.0 - l };
            assert_eq!(v, sc[j] * q - 0.5 * m[j], "element {e}");
        }
        // A few worked out in full.
        assert_eq!(y[1], 1.0); // 1*1 - 0
        assert_eq!(y[32], 29.5); // 2*15 - 0.5*1
        assert_eq!(y[67], 8.0); // 3*3 - 0.5*2
        assert_eq!(y[160], 475.0); // 33*15 - 0.5*40
        assert_eq!(y[193], 60.5); // 63*1 - 0.5*5
        assert_eq!(y[255], -31.5); // 0*0 - 0.5*63
    }

    #[test]
    fn hand_built_q6_k() {
        // d = 0.5 (0x3800); 6-bit level L(e) = e % 64, value = 0.5 * sc[e / 16] * (L - 32).
        let sc: [i8; 16] = [1, -1, 2, 3, -4, 10, 127, -128, 5, 6, 7, 8, -9, -10, 11, 0];
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for e in 0..256 {
            let level = (e % 64) as u8;
            // Half h = e / 128, run k = (e / 32) % 4, position l = e % 32: low nibble in
            // ql[64h + 32(k % 2) + l] (bits 4(k / 2)..), top 2 bits in qh[32h + l] (bits 2k..).
            let (h, k, l) = (e / 128, (e / 32) % 4, e % 32);
            ql[64 * h + 32 * (k % 2) + l] |= (level & 15) << (4 * (k / 2));
            qh[32 * h + l] |= (level >> 4) << (2 * k);
        }
        let mut b = ql.to_vec();
        b.extend(qh);
        b.extend(sc.iter().map(|&s| s as u8));
        b.extend([0x00, 0x38]);
        let y = dequant(DType::Q6_K, &b, 256);
        for (e, &v) in y.iter().enumerate() {
            let want = 0.5 * f32::from(sc[e / 16]) * ((e % 64) as f32 - 32.0);
            assert_eq!(v, want, "element {e}");
        }
        assert_eq!(y[0], -16.0); // 0.5 * 1 * (0 - 32)
        assert_eq!(y[33], 1.0); // 0.5 * 2 * (33 - 32)
        assert_eq!(y[100], 254.0); // 0.5 * 127 * (36 - 32)
        assert_eq!(y[127], -1984.0); // 0.5 * -128 * (63 - 32)
        assert_eq!(y[255], 0.0); // scale 0
    }

    #[test]
    fn hand_built_q3_k() {
        // d = 1.0. Sub-block 6-bit scales u = 33, 34, 31, 0, 63, 32 x 10, 1 (value u - 32).
        // Low nibbles: bytes 0..8 hold u[j] & 15 | (u[j + 8] & 15) << 4 = 1, 2, 15, 0, 15, 0, 0, 1 << 4.
        // Top 2 bits: byte 8 + j % 4, bits 2 * (j / 4):
        //   byte 8: u0=2, u4=3, u8=2, u12=2 -> 2 | 3<<2 | 2<<4 | 2<<6 = 0xAE
        //   byte 9: all 2 -> 0xAA; byte 10: u2=1, rest 2 -> 0xA9; byte 11: u3=0, u15=0 -> 0x28
        let scale = |j: usize| -> f32 { [1.0, 2.0, -1.0, -32.0, 31.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -31.0][j] };
        // hmask: bytes 0..16 all ones (high bit set: no -4), bytes 16..32 zero (-4).
        let mut b = vec![0xFFu8; 16];
        b.extend([0u8; 16]);
        // qs: every byte 0b11_10_01_00, so the 2-bit level of element e is (e / 32) % 4.
        b.extend([0xE4u8; 64]);
        b.extend([0x01, 0x02, 0x0F, 0x00, 0x0F, 0x00, 0x00, 0x10, 0xAE, 0xAA, 0xA9, 0x28]);
        b.extend([0x00, 0x3C]);
        let y = dequant(DType::Q3_K, &b, 256);
        for (e, &v) in y.iter().enumerate() {
            let q = ((e / 32) % 4) as f32 - if e % 32 < 16 { 0.0 } else { 4.0 };
            assert_eq!(v, scale(e / 16) * q, "element {e}");
        }
        assert_eq!(y[16], -8.0); // scale 2, level 0 - 4
        assert_eq!(y[48], 96.0); // scale -32, level 1 - 4
        assert_eq!(y[64], 62.0); // scale 31, level 2
        assert_eq!(y[255], 31.0); // scale -31, level 3 - 4
    }

    #[test]
    fn hand_built_q2_k() {
        // scales[j] = j | (15 - j) << 4: scale j, min 15 - j; qs all 0b11_10_01_00 so the
        // level of element e is (e / 32) % 4; d = 1.0 (0x3C00), dmin = 0.5 (0x3800).
        let mut b: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        b.extend([0xE4u8; 64]);
        b.extend([0x00, 0x3C, 0x00, 0x38]);
        let y = dequant(DType::Q2_K, &b, 256);
        for (e, &v) in y.iter().enumerate() {
            let j = (e / 16) as f32;
            assert_eq!(v, j * ((e / 32) % 4) as f32 - 0.5 * (15.0 - j), "element {e}");
        }
        assert_eq!(y[0], -7.5);
        assert_eq!(y[40], -4.5); // 2*1 - 6.5
        assert_eq!(y[100], 13.5); // 6*3 - 4.5
        assert_eq!(y[255], 45.0); // 15*3 - 0
    }

    #[test]
    fn floats_round_to_nearest_even() {
        let x = [1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11), -2.5];
        assert_eq!(quantize_row(DType::F16, &x).unwrap(), [0x00, 0x3C, 0x02, 0x3C, 0x00, 0xC1]);
        let x = [1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8)];
        assert_eq!(quantize_row(DType::BF16, &x).unwrap(), [0x80, 0x3F, 0x82, 0x3F]);
        assert_eq!(dequant(DType::BF16, &[0x82, 0x3F], 1), [1.0 + 2f32.powi(-6)]);
        assert_eq!(dequant(DType::F16, &[0x00, 0xC1], 1), [-2.5]);
    }

    fn is_invalid(r: Result<impl std::fmt::Debug>, op: &str) -> String {
        match r {
            Err(e @ Error::Invalid { .. }) => {
                let msg = e.to_string();
                assert!(msg.starts_with(&format!("[{op}]")), "{msg}");
                msg
            }
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[test]
    fn errors() {
        let mut y = vec![0.0f32; 256];
        // wrong source length
        is_invalid(dequantize_row(DType::Q4_0, &[0; 17], &mut y[..32]), "dequantize");
        is_invalid(dequantize_row(DType::Q4_0, &[0; 19], &mut y[..32]), "dequantize");
        is_invalid(dequantize_row(DType::Q6_K, &[0; 209], &mut y), "dequantize");
        is_invalid(dequantize_row(DType::F16, &[0; 3], &mut y[..1]), "dequantize");
        // length not a multiple of the block size
        is_invalid(dequantize_row(DType::Q4_0, &[0; 18], &mut y[..31]), "dequantize");
        is_invalid(dequantize_row(DType::Q4_K, &[0; 144], &mut y[..255]), "dequantize");
        is_invalid(quantize_row(DType::Q8_0, &[0.0; 33]), "quantize");
        is_invalid(quantize_row(DType::Q2_K, &[0.0; 128]), "quantize");
        // not a weight format
        for dtype in [DType::I32, DType::U32, DType::U8] {
            is_invalid(dequantize_row(dtype, &[0; 4], &mut y[..1]), "dequantize");
            is_invalid(quantize_row(dtype, &[0.0]), "quantize");
        }
        // non-finite input names the index
        let mut x = vec![0.5f32; 256];
        x[5] = f32::NAN;
        for &(dtype, _, _) in &FORMATS {
            let msg = is_invalid(quantize_row(dtype, &x), "quantize");
            assert!(msg.contains("index 5"), "{msg}");
        }
        x[5] = 0.0;
        x[200] = f32::NEG_INFINITY;
        assert!(is_invalid(quantize_row(DType::Q4_K, &x), "quantize").contains("index 200"));
        // a scale beyond f16
        for dtype in DType::QUANTIZED {
            let msg = is_invalid(quantize_row(dtype, &[1e12; 256]), "quantize");
            assert!(msg.contains("f16"), "{msg}");
        }
        // empty rows are fine
        assert!(dequantize_row(DType::Q4_0, &[], &mut []).is_ok());
        assert_eq!(quantize_row(DType::Q4_K, &[]).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn any_bytes_dequantize_without_panic() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for dtype in DType::WEIGHTS {
            let n = 2 * QK_K;
            let b: Vec<u8> = (0..dtype.bytes_for(n).unwrap()).map(|_| rng.gen()).collect();
            let mut y = vec![0.0f32; n];
            dequantize_row(dtype, &b, &mut y).unwrap();
        }
    }
}

/// The block decoder of a weight format: decodes one block (`dtype.type_size()` bytes)
/// into `dtype.block_size()` f32 values, exactly as [`dequantize_row`]. For hot loops
/// that have checked lengths once; `None` for a dtype that is not a weight format.
pub fn block_decoder(dtype: DType) -> Option<fn(&[u8], &mut [f32])> {
    Some(match dtype {
        DType::F32 => |b, y| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        DType::F16 => |b, y| y[0] = f16::from_le_bytes([b[0], b[1]]).to_f32(),
        DType::BF16 => |b, y| y[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
        DType::Q4_0 => dequant_q4_0,
        DType::Q4_1 => dequant_q4_1,
        DType::Q5_0 => dequant_q5_0,
        DType::Q5_1 => dequant_q5_1,
        DType::Q8_0 => dequant_q8_0,
        DType::Q2_K => dequant_q2_k,
        DType::Q3_K => dequant_q3_k,
        DType::Q4_K => dequant_q4_k,
        DType::Q5_K => dequant_q5_k,
        DType::Q6_K => dequant_q6_k,
        _ => return None,
    })
}

#[inline(always)]
fn decode_blocks<F: Fn(&[u8], &mut [f32])>(f: F, dtype: DType, src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(dtype.type_size()).zip(dst.chunks_exact_mut(dtype.block_size())) {
        f(b, y);
    }
}

/// [`dequantize_row`] without the checks, each format's decoder inlined into its own
/// loop: for hot paths whose lengths were checked once (`src` holds exactly the blocks
/// of `dst`). Returns false for a dtype that is not a weight format.
pub fn decode_row_unchecked(dtype: DType, src: &[u8], dst: &mut [f32]) -> bool {
    match dtype {
        DType::F32 => {
            for (b, y) in src.chunks_exact(4).zip(dst.iter_mut()) {
                *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DType::F16 => {
            for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
                *y = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
                *y = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
        }
        DType::Q4_0 => decode_blocks(dequant_q4_0, dtype, src, dst),
        DType::Q4_1 => decode_blocks(dequant_q4_1, dtype, src, dst),
        DType::Q5_0 => decode_blocks(dequant_q5_0, dtype, src, dst),
        DType::Q5_1 => decode_blocks(dequant_q5_1, dtype, src, dst),
        DType::Q8_0 => decode_blocks(dequant_q8_0, dtype, src, dst),
        DType::Q2_K => decode_blocks(dequant_q2_k, dtype, src, dst),
        DType::Q3_K => decode_blocks(dequant_q3_k, dtype, src, dst),
        DType::Q4_K => decode_blocks(dequant_q4_k, dtype, src, dst),
        DType::Q5_K => decode_blocks(dequant_q5_k, dtype, src, dst),
        DType::Q6_K => decode_blocks(dequant_q6_k, dtype, src, dst),
        _ => return false,
    }
    true
}
