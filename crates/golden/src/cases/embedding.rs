//! Golden cases of `embedding_lookup`: how inputs are drawn from the seed, and the standard suite's
//! entries.

use super::prelude::*;

/// `embedding_lookup`: parameters from the flags, inputs from the seed.
pub(crate) fn embedding_lookup(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let (op, inputs) = {
        let p = EmbeddingParams {
            num_tokens: f.usize(&["num_tokens"], 8)?,
            hidden_size: f.usize(&["hidden_size"], 128)?,
            vocab_size: f.usize(&["vocab_size"], 1000)?,
            dtype: dt(f, DType::F32)?,
        };
        let op = Op::EmbeddingLookup(p.clone());
        op.validate()?;
        limit(&op)?;
        let table = g.normals(p.vocab_size * p.hidden_size, 0.5);
        let mut ids: Vec<i32> = (0..p.num_tokens).map(|_| g.below(p.vocab_size) as i32).collect();
        // The first and last rows of the table are the easiest to get wrong.
        ids[0] = p.vocab_size as i32 - 1;
        if p.num_tokens > 1 {
            ids[p.num_tokens - 1] = 0;
        }
        let t = ins([
            ("table", weight_tensor(p.dtype, &[p.vocab_size, p.hidden_size], &table)?),
            ("ids", Tensor::from_i32(vec![p.num_tokens], &ids)),
        ]);
        (op, t)
    };
    Ok((op, inputs))
}

/// This family's entries of the standard suite.
pub(crate) fn standard(v: &mut Vec<Entry>) {
    use OpKind::*;
    for d in DType::FLOATS {
        let dt = || ("dtype", d.name().to_string());
        let n = d.name();
        e(v, format!("awk_{n}"), EmbeddingLookup, &[("num_tokens", "33"), ("hidden_size", "33"), ("vocab_size", "31")], &[dt()]);
        e(v, format!("llm_{n}"), EmbeddingLookup, &[("num_tokens", "7"), ("hidden_size", "576"), ("vocab_size", "4096")], &[dt()]);
    }

    for w in DType::WEIGHTS {
        let n = w.name();
        if w.is_quantized() {
            e(
                v,
                format!("std_{n}"),
                EmbeddingLookup,
                &[("num_tokens", "9"), ("hidden_size", "512"), ("vocab_size", "100")],
                &[("dtype", n.to_string())],
            );
        }
    }
}
