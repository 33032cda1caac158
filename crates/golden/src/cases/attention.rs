//! Golden cases of paged attention (prefill, decode) and the page tables of the paged ops: how inputs are drawn from the seed, and the standard suite's
//! entries.

use super::prelude::*;

/// Sequence lengths and page tables for the paged ops.
struct Pages {
    kv_lens: Vec<usize>,
    indptr: Vec<i32>,
    indices: Vec<i32>,
    last: Vec<i32>,
    num_pages: usize,
}

fn make_pages(g: &mut Gen, batch: usize, kv_len: usize, ps: usize) -> Result<Pages> {
    if kv_len == 0 {
        return Err(Error::Usage("--kv_len must be at least 1".into()));
    }
    if ps == 0 {
        return Err(Error::Usage("--page_size must be at least 1".into()));
    }
    let kv_lens: Vec<usize> =
        (0..batch).map(|b| if b == 0 { kv_len } else { (kv_len / 2).max(1) + g.below(kv_len - (kv_len / 2).max(1) + 1) }).collect();
    let counts: Vec<usize> = kv_lens.iter().map(|l| l.div_ceil(ps)).collect();
    let used: usize = counts.iter().sum();
    // Spare pages the sequences do not own: they must stay untouched.
    let num_pages = used + 3;
    if num_pages > i32::MAX as usize {
        return Err(Error::Usage(format!("{num_pages} pages do not fit i32 page ids")));
    }
    let mut perm: Vec<i32> = (0..num_pages as i32).collect();
    for i in (1..perm.len()).rev() {
        let j = g.below(i + 1);
        perm.swap(i, j);
    }
    let mut indptr = vec![0i32];
    for c in &counts {
        indptr.push(indptr.last().copied().unwrap_or(0) + *c as i32);
    }
    let last = kv_lens.iter().zip(&counts).map(|(l, c)| (l - (c - 1) * ps) as i32).collect();
    Ok(Pages { kv_lens, indptr, indices: perm[..used].to_vec(), last, num_pages })
}

pub(crate) fn paged(kind: OpKind, f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    let decode = kind == OpKind::BatchDecodeWithPagedKvCache;
    let append = kind == OpKind::AppendPagedKvCache;
    let batch = f.usize(
        &["batch_size"],
        if decode {
            4
        } else if append {
            2
        } else {
            1
        },
    )?;
    let hq = if append { 0 } else { f.usize(&["num_qo_heads", "num_query_heads", "num_heads"], 8)? };
    let hk = f.usize(&["num_kv_heads"], 8)?;
    let d = f.usize(&["head_size", "head_dim"], 64)?;
    let ps = f.usize(&["page_size"], 16)?;
    let kv_len = f.usize(&["kv_len"], 16)?;
    let per_seq = if decode { 1 } else { f.usize(&["num_tokens"], 4)? };
    let dtype = dt(f, DType::F32)?;
    if batch == 0 || batch > 4096 || kv_len > (1 << 24) {
        return Err(Error::Usage(format!("--batch_size must be in 1..=4096 and --kv_len at most 2^24 (got {batch}, {kv_len})")));
    }
    let pg = make_pages(g, batch, kv_len, ps)?;
    let ids = pg.indices.len();
    let cache_n = pg.num_pages.saturating_mul(ps).saturating_mul(hk).saturating_mul(d);
    if cache_n > MAX_ELEMENTS {
        return Err(Error::Usage(format!("the KV cache would hold {cache_n} elements; the generator makes at most {MAX_ELEMENTS}")));
    }
    let cache_shape = [pg.num_pages, ps, hk, d];
    let mut t = ins([
        ("k_cache", float(dtype, &cache_shape, &g.normals(cache_n, 1.0))),
        ("v_cache", float(dtype, &cache_shape, &g.normals(cache_n, 1.0))),
        ("kv_indices", Tensor::from_i32(vec![ids], &pg.indices)),
        ("kv_indptr", Tensor::from_i32(vec![batch + 1], &pg.indptr)),
        ("kv_last_page_len", Tensor::from_i32(vec![batch], &pg.last)),
    ]);
    let sm_default = 1.0 / (d.max(1) as f64).sqrt();
    let op = if append {
        let mut bi = Vec::new();
        let mut pos = Vec::new();
        for (b, &l) in pg.kv_lens.iter().enumerate() {
            let a = per_seq.min(l);
            for p in l - a..l {
                bi.push(b as i32);
                pos.push(p as i32);
            }
        }
        let n = bi.len();
        let p = AppendKvParams {
            batch_size: batch,
            num_tokens: n,
            num_kv_heads: hk,
            head_size: d,
            page_size: ps,
            num_pages: pg.num_pages,
            num_page_ids: ids,
            dtype,
        };
        let op = Op::AppendPagedKvCache(p);
        op.validate()?;
        limit(&op)?;
        t.insert("append_k".into(), float(dtype, &[n, hk, d], &g.normals(n * hk * d, 1.0)));
        t.insert("append_v".into(), float(dtype, &[n, hk, d], &g.normals(n * hk * d, 1.0)));
        t.insert("batch_indices".into(), Tensor::from_i32(vec![n], &bi));
        t.insert("positions".into(), Tensor::from_i32(vec![n], &pos));
        op
    } else if decode {
        let p = DecodeParams {
            batch_size: batch,
            num_qo_heads: hq,
            num_kv_heads: hk,
            head_size: d,
            page_size: ps,
            num_pages: pg.num_pages,
            num_page_ids: ids,
            sm_scale: f.f64(&["sm_scale"], sm_default)?,
            window_left: f.i64(&["window_left"], -1)?,
            logits_soft_cap: f.f64(&["logits_soft_cap"], 0.0)?,
            dtype,
        };
        let op = Op::BatchDecodeWithPagedKvCache(p);
        op.validate()?;
        limit(&op)?;
        t.insert("q".into(), float(dtype, &[batch, hq, d], &g.normals(batch * hq * d, 1.0)));
        op
    } else {
        let causal = f.bool(&["causal"], true)?;
        let mut qo_indptr = vec![0i32];
        for &l in &pg.kv_lens {
            let q = if causal { per_seq.min(l) } else { per_seq };
            qo_indptr.push(qo_indptr.last().copied().unwrap_or(0) + q as i32);
        }
        let n = *qo_indptr.last().unwrap_or(&0) as usize;
        let p = PrefillParams {
            batch_size: batch,
            num_tokens: n,
            num_qo_heads: hq,
            num_kv_heads: hk,
            head_size: d,
            page_size: ps,
            num_pages: pg.num_pages,
            num_page_ids: ids,
            causal,
            sm_scale: f.f64(&["sm_scale"], sm_default)?,
            window_left: f.i64(&["window_left"], -1)?,
            logits_soft_cap: f.f64(&["logits_soft_cap"], 0.0)?,
            dtype,
        };
        let op = Op::BatchPrefillWithPagedKvCache(p);
        op.validate()?;
        limit(&op)?;
        t.insert("q".into(), float(dtype, &[n, hq, d], &g.normals(n * hq * d, 1.0)));
        t.insert("qo_indptr".into(), Tensor::from_i32(vec![batch + 1], &qo_indptr));
        op
    };
    Ok((op, t))
}

/// `batch_prefill`: parameters from the flags, inputs from the seed.
pub(crate) fn batch_prefill(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    paged(OpKind::BatchPrefillWithPagedKvCache, f, g)
}

/// `batch_decode`: parameters from the flags, inputs from the seed.
pub(crate) fn batch_decode(f: &Flags, g: &mut Gen) -> Result<(Op, Tensors)> {
    paged(OpKind::BatchDecodeWithPagedKvCache, f, g)
}

/// This family's entries of the standard suite.
pub(crate) fn standard(v: &mut Vec<Entry>) {
    use OpKind::*;
    for d in DType::FLOATS {
        let dt = || ("dtype", d.name().to_string());
        let n = d.name();
        e(
            v,
            format!("awk_gqa_{n}"),
            BatchPrefillWithPagedKvCache,
            &[
                ("batch_size", "3"),
                ("num_qo_heads", "6"),
                ("num_kv_heads", "2"),
                ("head_size", "64"),
                ("page_size", "16"),
                ("kv_len", "37"),
                ("num_tokens", "7"),
            ],
            &[dt()],
        );
        e(
            v,
            format!("noncausal_{n}"),
            BatchPrefillWithPagedKvCache,
            &[
                ("batch_size", "2"),
                ("num_qo_heads", "4"),
                ("num_kv_heads", "4"),
                ("head_size", "32"),
                ("page_size", "8"),
                ("kv_len", "20"),
                ("num_tokens", "5"),
                ("causal", "false"),
            ],
            &[dt()],
        );
        e(
            v,
            format!("window_cap_{n}"),
            BatchPrefillWithPagedKvCache,
            &[
                ("batch_size", "2"),
                ("num_qo_heads", "4"),
                ("num_kv_heads", "1"),
                ("head_size", "256"),
                ("page_size", "16"),
                ("kv_len", "40"),
                ("num_tokens", "12"),
                ("window_left", "8"),
                ("logits_soft_cap", "50"),
            ],
            &[dt()],
        );
        e(
            v,
            format!("llm_prompt_{n}"),
            BatchPrefillWithPagedKvCache,
            &[
                ("batch_size", "1"),
                ("num_qo_heads", "32"),
                ("num_kv_heads", "8"),
                ("head_size", "128"),
                ("page_size", "16"),
                ("kv_len", "128"),
                ("num_tokens", "128"),
            ],
            &[dt()],
        );
        e(
            v,
            format!("awk_{n}"),
            BatchDecodeWithPagedKvCache,
            &[
                ("batch_size", "3"),
                ("num_qo_heads", "7"),
                ("num_kv_heads", "7"),
                ("head_size", "64"),
                ("page_size", "16"),
                ("kv_len", "33"),
            ],
            &[dt()],
        );
        e(
            v,
            format!("llm_gqa_{n}"),
            BatchDecodeWithPagedKvCache,
            &[
                ("batch_size", "4"),
                ("num_qo_heads", "32"),
                ("num_kv_heads", "8"),
                ("head_size", "128"),
                ("page_size", "16"),
                ("kv_len", "300"),
            ],
            &[dt()],
        );
        e(
            v,
            format!("gemma_window_{n}"),
            BatchDecodeWithPagedKvCache,
            &[
                ("batch_size", "2"),
                ("num_qo_heads", "4"),
                ("num_kv_heads", "1"),
                ("head_size", "256"),
                ("page_size", "16"),
                ("kv_len", "50"),
                ("window_left", "16"),
                ("logits_soft_cap", "30"),
            ],
            &[dt()],
        );
    }
}
