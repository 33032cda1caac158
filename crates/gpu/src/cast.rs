//! `cast` between f32, f16 and bf16, in integer arithmetic on the bit patterns.
//!
//! Layout: the input and output buffers are read and written as u32 words; 16-bit
//! values sit two to a word, element 2w in the low half of word w. Each thread writes
//! one output word. Every value goes through its f32 bit pattern (exact for f16 and
//! bf16), then rounds to nearest even with integer operations, so the result is
//! bit-exact on every device whatever its float conversions do, needs no f16/bf16
//! support (lavapipe has no bf16), and matches `ingot_cpu::cast`: NaN stays NaN, ±Inf
//! stays ±Inf, overflow gives ±Inf, subnormals round correctly, ties go to even.

use crate::device::{grid_1d, input, linear_pos, Device, GpuTensor, GpuTensors};
use cubecl::prelude::*;
use ingot_core::{CastParams, DType, Result};

const K_F32: u32 = 0;
const K_F16: u32 = 1;
const K_BF16: u32 = 2;

fn kind(d: DType) -> u32 {
    match d {
        DType::F16 => K_F16,
        DType::BF16 => K_BF16,
        _ => K_F32,
    }
}

/// f16 bits (low 16 bits of `h`) to f32 bits, exactly.
#[cube]
pub(crate) fn f16_bits_to_f32(h: u32) -> u32 {
    let sign = (h & 0x8000) << 16;
    let exp = (h >> 10) & 0x1f;
    let man = h & 0x3ff;
    let mut out = sign | ((exp + 112) << 23) | (man << 13);
    if exp == 0x1f {
        out = sign | 0x7f80_0000 | (man << 13);
    } else if exp == 0 {
        // Zero or subnormal: man · 2^−24 is exact (and normal) in f32.
        let v = f32::cast_from(man) * 5.960_464_5e-8;
        out = sign | u32::reinterpret(v);
    }
    out
}

/// f32 bits to f16 bits, round to nearest even.
#[cube]
pub(crate) fn f32_bits_to_f16(x: u32) -> u32 {
    let sign = (x >> 16) & 0x8000;
    let exp = (x >> 23) & 0xff;
    let man = x & 0x7f_ffff;
    let mut out = sign;
    if exp == 0xff {
        // Inf, or NaN kept quiet.
        out = sign | 0x7c00 | select(man != 0, 0x200u32, 0u32);
    } else if exp >= 143 {
        out = sign | 0x7c00;
    } else if exp >= 113 {
        // Normal f16: exponent exp − 112 in 1..=30; a carry may round up to Inf.
        let hm = man >> 13;
        let rem = man & 0x1fff;
        let mut o = sign | ((exp - 112) << 10) | hm;
        if rem > 0x1000 || (rem == 0x1000 && (hm & 1) == 1) {
            o += 1;
        }
        out = o;
    } else if exp >= 102 {
        // Subnormal f16 (or the smallest normal after rounding): units of 2^−24.
        let m = man | 0x80_0000;
        let shift = 126 - exp;
        let hm = m >> shift;
        let half = 1u32 << (shift - 1);
        let rem = m & ((1u32 << shift) - 1);
        let mut o = hm;
        if rem > half || (rem == half && (hm & 1) == 1) {
            o += 1;
        }
        out = sign | o;
    }
    out
}

/// f32 bits to bf16 bits, round to nearest even (NaN kept quiet).
#[cube]
pub(crate) fn f32_bits_to_bf16(x: u32) -> u32 {
    let mut out = (x >> 16) | 0x40;
    if (x & 0x7fff_ffff) <= 0x7f80_0000 {
        out = (x + 0x7fff + ((x >> 16) & 1)) >> 16;
    }
    out
}

/// Element `e` of a buffer of `from` values, as f32 bits.
// The comptime branches assign once each; the placeholder is never read.
#[allow(unused_assignments)]
#[cube]
fn load_bits(input: &Array<u32>, e: usize, #[comptime] from: u32) -> u32 {
    let mut out = 0u32;
    if from == K_F32 {
        out = input[e];
    } else {
        let h = (input[e / 2] >> (u32::cast_from(e % 2) * 16)) & 0xffff;
        if from == K_F16 {
            out = f16_bits_to_f32(h);
        } else {
            out = h << 16;
        }
    }
    out
}

/// f32 bits to the 16-bit pattern of `to`.
// The comptime branches assign once each; the placeholder is never read.
#[allow(unused_assignments)]
#[cube]
fn to_16(x: u32, #[comptime] to: u32) -> u32 {
    let mut out = 0u32;
    if to == K_F16 {
        out = f32_bits_to_f16(x);
    } else {
        out = f32_bits_to_bf16(x);
    }
    out
}

#[cube(launch_unchecked)]
fn cast_kernel(input: &Array<u32>, out: &mut Array<u32>, n: usize, #[comptime] from: u32, #[comptime] to: u32) {
    let w = linear_pos();
    if to == K_F32 {
        if w < n {
            out[w] = load_bits(input, w, from);
        }
    } else {
        let e = 2 * w;
        if e < n {
            let lo = to_16(load_bits(input, e, from), to);
            let mut hi = 0u32;
            if e + 1 < n {
                hi = to_16(load_bits(input, e + 1, from), to);
            }
            out[w] = lo | (hi << 16);
        }
    }
}

/// `cast`: round each value to `output_dtype` (nearest even).
pub fn cast<R: Runtime>(d: &Device<R>, p: &CastParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "cast";
    let n = p.num_elements;
    let x = input(OP, inputs, "input")?;
    let in_words = x.words();
    let xh = x.handle.clone();
    let out = d.alloc(p.output_dtype, n);
    let out_words = p.output_dtype.bytes_for(n).unwrap_or(0).div_ceil(4);
    let (count, dim) = grid_1d(out_words);
    // SAFETY: the input buffer holds `in_words` words (upload pads to whole words) and the
    // kernel reads word e (f32) or e/2 (16-bit) for e < n only; the output buffer holds
    // `out_words` words and thread w writes word w < out_words only.
    unsafe {
        cast_kernel::launch_unchecked::<R>(
            &d.client,
            count,
            dim,
            ArrayArg::from_raw_parts(xh, in_words),
            ArrayArg::from_raw_parts(out.clone(), out_words),
            n,
            kind(p.input_dtype),
            kind(p.output_dtype),
        )
    };
    Ok(GpuTensors::from([("output".to_string(), GpuTensor::new(out, p.output_dtype, &[n]))]))
}

// ---------------------------------------------------------------- registration

/// Which of this family's ops have a kernel here, for which dtypes ([`crate::Support`]).
pub(crate) fn support(op: &ingot_core::Op) -> crate::Support {
    use ingot_core::Op;
    match op {
        Op::Cast(_) => crate::Support::Bits,
        _ => crate::Support::None,
    }
}
