//! `embedding_lookup` for float tables: out[t] = table[ids[t]], copied bit for bit.
//!
//! Layout: table [vocab_size, hidden_size], ids [num_tokens] i32, out [num_tokens,
//! hidden_size]. Buffers are read and written as u32 words: f32 elements one per word,
//! f16/bf16 elements two per word (element 2w in the low half), so a row of odd length
//! may start mid-word. Each thread writes one output word. No float arithmetic touches
//! the values, so every float dtype runs on every device (lavapipe has no bf16) and NaN
//! payloads survive. Ids are checked on the host before the launch (an id outside
//! 0..vocab_size is an error, as in `ingot_cpu::embedding`); the kernel also writes 0
//! rather than read out of bounds if one slipped through.
//! GGUF block tables (Q4_0 ... Q6_K) are dequantized row by row as in `dequantize`
//! (output f32): [`crate::quant`]'s kernel, gathering rows through the ids.

use crate::device::{grid_1d, input, linear_pos, Device, GpuTensor, GpuTensors};
use crate::quant::{dequant_rows, Format};
use cubecl::prelude::*;
use ingot_core::{DType, EmbeddingParams, Error, Result};

/// The 32-bit or 16-bit pattern of output element `e`.
#[cube]
fn gather_elem(table: &Array<u32>, ids: &Array<i32>, e: usize, h: usize, vocab: usize, #[comptime] wide: bool) -> u32 {
    let t = e / h;
    let j = e % h;
    let id = ids[t];
    let mut v = 0u32;
    if id >= 0 && usize::cast_from(id) < vocab {
        let s = usize::cast_from(id) * h + j;
        if wide {
            v = table[s];
        } else {
            v = (table[s / 2] >> (u32::cast_from(s % 2) * 16)) & 0xffff;
        }
    }
    v
}

#[cube(launch_unchecked)]
fn embedding_kernel(table: &Array<u32>, ids: &Array<i32>, out: &mut Array<u32>, n: usize, h: usize, vocab: usize, #[comptime] wide: bool) {
    let w = linear_pos();
    if wide {
        if w < n {
            out[w] = gather_elem(table, ids, w, h, vocab, wide);
        }
    } else {
        let e = 2 * w;
        if e < n {
            let lo = gather_elem(table, ids, e, h, vocab, wide);
            let mut hi = 0u32;
            if e + 1 < n {
                hi = gather_elem(table, ids, e + 1, h, vocab, wide);
            }
            out[w] = lo | (hi << 16);
        }
    }
}

/// `embedding_lookup`: float tables copy bits, block tables dequantize to f32.
pub fn embedding_lookup<R: Runtime>(d: &Device<R>, p: &EmbeddingParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "embedding_lookup";
    let (t, h, vocab) = (p.num_tokens, p.hidden_size, p.vocab_size);
    let table = input(OP, inputs, "table")?;
    let ids_t = input(OP, inputs, "ids")?;
    if !p.dtype.is_float() {
        let f = Format::of(p.dtype).ok_or_else(|| Error::invalid(OP, format!("{} is not a weight format", p.dtype)))?;
        let out = dequant_rows(d, OP, table, f, Some(ids_t), t, h, vocab)?;
        return Ok(GpuTensors::from([("output".to_string(), GpuTensor::new(out, DType::F32, &[t, h]))]));
    }
    let wide = p.dtype.type_size() == 4;
    let n = t * h;
    let table_words = table.words();
    let tab = table.handle.clone();
    let ids = ids_t.handle.clone();
    let out = d.alloc(p.dtype, n);
    let out_words = p.dtype.bytes_for(n).unwrap_or(0).div_ceil(4);
    let (count, dim) = grid_1d(out_words);
    // SAFETY: the table buffer holds `table_words` words (vocab·h elements, padded to whole
    // words) and the kernel reads element id·h + j only for 0 <= id < vocab and j < h;
    // ids holds t entries, read at e / h < t; thread w writes output word w < out_words.
    unsafe {
        embedding_kernel::launch_unchecked::<R>(
            &d.client,
            count,
            dim,
            ArrayArg::from_raw_parts(tab, table_words),
            ArrayArg::from_raw_parts(ids, t),
            ArrayArg::from_raw_parts(out.clone(), out_words),
            n,
            h,
            vocab,
            wide,
        )
    };
    Ok(GpuTensors::from([("output".to_string(), GpuTensor::new(out, p.dtype, &[t, h]))]))
}

// ---------------------------------------------------------------- registration

/// Which of this family's ops have a kernel here, for which dtypes ([`crate::Support`]).
pub(crate) fn support(op: &ingot_core::Op) -> crate::Support {
    use ingot_core::Op;
    match op {
        // Every weight format: float tables copy bits, block tables dequantize.
        Op::EmbeddingLookup(_) => crate::Support::Bits,
        _ => crate::Support::None,
    }
}

/// The checks of input values this family's kernels leave to the host ([`crate::GpuBackend`]'s `run`):
/// ids inside the vocabulary.
pub(crate) fn check_host(op: &ingot_core::Op, inputs: &ingot_core::Tensors) -> Result<()> {
    if let ingot_core::Op::EmbeddingLookup(p) = op {
        for (i, &id) in inputs["ids"].to_i32()?.iter().enumerate() {
            ingot_core::ensure!(id >= 0 && (id as usize) < p.vocab_size, op.name(), "ids[{i}] = {id} is outside 0..{}", p.vocab_size);
        }
    }
    Ok(())
}
