//! `embedding_lookup` reference: out[i] = table[ids[i]]. Float tables are copied
//! exactly (out in the table dtype); GGUF block tables are dequantized row by row
//! (out in f32). An id outside 0..vocab_size is an error, never a read out of bounds.

use crate::device_ops::{input, outs, Alloc, Kernel, Tens};
use crate::quant::dequantize_row;
use crate::util::{get, i32_in, outputs};
use ingot_core::{ensure, DType, EmbeddingParams, Result, Tensor, Tensors};
use ingot_core::{Error, Op};
use rayon::prelude::*;

pub fn embedding_lookup(p: &EmbeddingParams, inputs: &Tensors) -> Result<Tensors> {
    const OP: &str = "embedding_lookup";
    let table = get(OP, inputs, "table")?;
    let ids = i32_in(OP, inputs, "ids")?;
    let h = p.hidden_size;
    let row_bytes = p.dtype.bytes_for(h).unwrap_or(0);
    for (i, &id) in ids.iter().enumerate() {
        ensure!(id >= 0 && (id as usize) < p.vocab_size, OP, "ids[{i}] = {id} is outside 0..{}", p.vocab_size);
    }
    let rows = ids.iter().map(|&id| &table.data[id as usize * row_bytes..(id as usize + 1) * row_bytes]);
    let out = if p.dtype.is_float() {
        let data: Vec<u8> = rows.flatten().copied().collect();
        Tensor::from_bytes(p.dtype, vec![p.num_tokens, h], data)?
    } else {
        let mut vals = vec![0f32; p.num_tokens * h];
        for (row, dst) in rows.zip(vals.chunks_exact_mut(h)) {
            dequantize_row(p.dtype, row, dst)?;
        }
        Tensor::from_f32(DType::F32, vec![p.num_tokens, h], &vals)
    };
    Ok(outputs([("output", out)]))
}

// ---------------------------------------------------------------- fast kernels (`cpu`)

/// The fast kernel of this family's ops on the [`crate::CpuDevice`] ([`crate::device_ops`]).
pub(crate) fn fast(op: &Op) -> Option<Kernel<'_>> {
    Some(match op {
        Op::EmbeddingLookup(p) => Box::new(move |i, a| embedding_lookup_fast(p, i, a)),
        _ => return None,
    })
}

/// Rows `ids` of the table: float rows copied bit for bit, block rows decoded to f32 by the
/// dequantizers the reference uses (bit-exact with ggml).
fn embedding_lookup_fast(p: &ingot_core::EmbeddingParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    const OP: &str = "embedding_lookup";
    let ids = input(OP, ins, "ids")?.view::<i32>()?;
    for (i, &id) in ids.iter().enumerate() {
        ingot_core::ensure!(id >= 0 && (id as usize) < p.vocab_size, OP, "ids[{i}] = {id} is outside 0..{}", p.vocab_size);
    }
    let table = input(OP, ins, "table")?.bytes()?;
    let h = p.hidden_size;
    let row_bytes = p.dtype.bytes_for(h).ok_or_else(|| Error::invalid(OP, "hidden_size is not whole blocks"))?;
    let row = |id: i32| &table[id as usize * row_bytes..(id as usize + 1) * row_bytes];
    if p.dtype.is_float() {
        let out = alloc.zeros(p.dtype, &[p.num_tokens, h])?;
        for (dst, &id) in out.write()?.bytes().chunks_exact_mut(row_bytes).zip(ids.iter()) {
            dst.copy_from_slice(row(id));
        }
        return Ok(outs([("output", out)]));
    }
    let out = alloc.zeros(DType::F32, &[p.num_tokens, h])?;
    out.write()?
        .f32()
        .par_chunks_mut(h)
        .zip(ids.par_iter())
        .try_for_each(|(dst, &id)| crate::quant::dequantize_row(p.dtype, row(id), dst))?;
    Ok(outs([("output", out)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use ingot_core::{Backend, Op};

    fn inputs(p: &EmbeddingParams, table: Tensor, ids: &[i32]) -> Tensors {
        let mut t = Tensors::new();
        t.insert("table".into(), table);
        t.insert("ids".into(), Tensor::from_i32(vec![p.num_tokens], ids));
        t
    }

    #[test]
    fn gathers_rows_and_rejects_bad_ids() {
        let p = EmbeddingParams { num_tokens: 3, hidden_size: 2, vocab_size: 3, dtype: DType::F16 };
        let table = Tensor::from_f32(DType::F16, vec![3, 2], &[0., 1., 10., 11., 20., 21.]);
        let op = Op::EmbeddingLookup(p.clone());
        let out = CpuBackend.run(&op, &inputs(&p, table.clone(), &[2, 0, 2])).unwrap();
        assert_eq!(out["output"].to_f32().unwrap(), vec![20., 21., 0., 1., 20., 21.]);
        for bad in [3, -1, i32::MAX] {
            let e = CpuBackend.run(&op, &inputs(&p, table.clone(), &[0, bad, 1])).unwrap_err().to_string();
            assert!(e.contains(&format!("ids[1] = {bad}")) && e.contains("0..3"), "{e}");
        }
    }
}
