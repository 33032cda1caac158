//! Paged KV-cache attention references: `batch_prefill_with_paged_kv_cache` and
//! `batch_decode_with_paged_kv_cache`, in FlashInfer's NHD page layout (which
//! `append_paged_kv_cache`, in [`crate::kv`], writes).
//!
//! A cache is [num_pages, page_size, num_kv_heads, head_size]. Sequence b owns the pages
//! kv_indices[kv_indptr[b] .. kv_indptr[b+1]] in order; its length is
//! (pages − 1)·page_size + kv_last_page_len[b], and its position j lives in page
//! kv_indices[kv_indptr[b] + j / page_size], slot j % page_size. The index tensors are
//! checked here (every value that is used), so no input makes these functions panic.
//!
//! Attention: query head h reads kv head h / (num_qo_heads / num_kv_heads). A query at
//! position pos sees key j iff (!causal || j <= pos) && (window_left < 0 || j >= pos −
//! window_left). Score s = sm_scale·(q·k), then cap·tanh(s / cap) when logits_soft_cap > 0.
//! Output = softmax-weighted sum of V over the visible keys; lse = ln Σ exp(s) (natural
//! log). A row that sees no key gets output 0 and lse −inf. Prefill and decode share
//! [`Attention::row`], the one routine that attends one query row.

use crate::device_ops::{input, outs, Alloc, Kernel, Tens};
use crate::paged::{self, PagedKv, QueryRow};
use crate::util::{f64_in, float_out, i32_in, outputs};
use ingot_core::{DType, DecodeParams, Error, Op, PrefillParams, Result, Tensors};

const PREFILL: &str = "batch_prefill_with_paged_kv_cache";
const DECODE: &str = "batch_decode_with_paged_kv_cache";

// ---------------------------------------------------------------- paged layout

/// One sequence of the batch: its physical pages in order and its length in positions.
pub(crate) struct Sequence {
    pages: Vec<usize>,
    pub(crate) kv_len: usize,
}

/// The checked page table of a batch.
pub(crate) struct PagedLayout {
    page_size: usize,
    pub(crate) seqs: Vec<Sequence>,
}

/// One sequence of a checked page table: its pages are `kv_indices[pages]`, in order.
pub(crate) struct SeqPages {
    pub pages: std::ops::Range<usize>,
    pub kv_len: usize,
}

/// Check the page table `kv_indptr` [batch + 1], `kv_indices`, `kv_last_page_len` [batch]
/// (their shapes already checked): every value that is used, so that no table can make a
/// kernel read out of bounds. The reference and the fast kernels share it.
pub(crate) fn page_table(
    op: &'static str,
    indptr: &[i32],
    indices: &[i32],
    last: &[i32],
    page_size: usize,
    num_pages: usize,
) -> Result<Vec<SeqPages>> {
    let num_page_ids = indices.len();
    let batch = last.len();
    if indptr.len() != batch + 1 {
        return Err(Error::invalid(op, format!("kv_indptr has {} entries for {batch} sequences", indptr.len())));
    }
    if indptr[0] != 0 {
        return Err(Error::invalid(op, format!("kv_indptr[0] = {} must be 0", indptr[0])));
    }
    let mut seqs = Vec::with_capacity(batch);
    for b in 0..batch {
        let (start, end) = (indptr[b], indptr[b + 1]);
        if end < start {
            return Err(Error::invalid(op, format!("kv_indptr decreases: kv_indptr[{}] = {end} < kv_indptr[{b}] = {start}", b + 1)));
        }
        if end == start {
            return Err(Error::invalid(op, format!("sequence {b} has no page (kv_indptr[{b}] = kv_indptr[{}] = {start})", b + 1)));
        }
        // start >= 0 here: indptr[0] == 0 and it increases from there.
        let (start, end) = (start as usize, end as usize);
        if end > num_page_ids {
            return Err(Error::invalid(op, format!("kv_indptr[{}] = {end} exceeds num_page_ids {num_page_ids}", b + 1)));
        }
        let last_len = last[b];
        if last_len < 1 || last_len as usize > page_size {
            return Err(Error::invalid(op, format!("kv_last_page_len[{b}] = {last_len} is outside 1..={page_size} (page_size)")));
        }
        for (i, &id) in indices.iter().enumerate().take(end).skip(start) {
            if id < 0 || id as usize >= num_pages {
                return Err(Error::invalid(op, format!("kv_indices[{i}] = {id} is outside 0..{num_pages} pages")));
            }
        }
        let kv_len = (end - start - 1)
            .checked_mul(page_size)
            .and_then(|n| n.checked_add(last_len as usize))
            .ok_or_else(|| Error::invalid(op, format!("sequence {b} is too long to index")))?;
        seqs.push(SeqPages { pages: start..end, kv_len });
    }
    Ok(seqs)
}

impl PagedLayout {
    /// Read and check `kv_indptr`, `kv_indices` and `kv_last_page_len` (shapes already checked).
    pub(crate) fn read(op: &'static str, inputs: &Tensors, batch: usize, page_size: usize, num_pages: usize) -> Result<Self> {
        let indptr = i32_in(op, inputs, "kv_indptr")?;
        let indices = i32_in(op, inputs, "kv_indices")?;
        let last = i32_in(op, inputs, "kv_last_page_len")?;
        debug_assert_eq!(last.len(), batch);
        let seqs = page_table(op, &indptr, &indices, &last, page_size, num_pages)?
            .into_iter()
            .map(|s| Sequence { pages: indices[s.pages].iter().map(|&id| id as usize).collect(), kv_len: s.kv_len })
            .collect();
        Ok(PagedLayout { page_size, seqs })
    }

    /// Physical (page, slot) of position `j` of sequence `b` (`j < kv_len`).
    pub(crate) fn locate(&self, b: usize, j: usize) -> (usize, usize) {
        (self.seqs[b].pages[j / self.page_size], j % self.page_size)
    }
}

// ---------------------------------------------------------------- attention

/// The caches (as f64) and the scoring and masking parameters: everything a query row needs.
struct Attention<'a> {
    layout: &'a PagedLayout,
    k: Vec<f64>,
    v: Vec<f64>,
    num_kv_heads: usize,
    head_size: usize,
    sm_scale: f64,
    window_left: i64,
    soft_cap: f64,
}

impl Attention<'_> {
    /// Row [head_size] of kv head `kv_head` at position `j` of sequence `b`, in `cache`.
    fn kv_row<'c>(&self, cache: &'c [f64], b: usize, j: usize, kv_head: usize) -> &'c [f64] {
        let (page, slot) = self.layout.locate(b, j);
        let at = ((page * self.layout.page_size + slot) * self.num_kv_heads + kv_head) * self.head_size;
        &cache[at..at + self.head_size]
    }

    /// Attention of one query row `q` [head_size] of sequence `b` at position `pos`
    /// (negative when a non-causal prefill has more queries than keys) against kv head
    /// `kv_head`. Returns the output row [head_size] and the lse.
    fn row(&self, b: usize, q: &[f64], kv_head: usize, pos: i64, causal: bool) -> (Vec<f64>, f64) {
        let kv_len = self.layout.seqs[b].kv_len as i64;
        // Visible keys form the range lo..hi.
        let hi = if causal { pos.saturating_add(1).min(kv_len) } else { kv_len };
        let lo = if self.window_left >= 0 { pos.saturating_sub(self.window_left).max(0) } else { 0 };
        if lo >= hi {
            return (vec![0.0; self.head_size], f64::NEG_INFINITY);
        }
        let keys = lo as usize..hi as usize;

        let scores: Vec<f64> = keys
            .clone()
            .map(|j| {
                let k = self.kv_row(&self.k, b, j, kv_head);
                let s = self.sm_scale * q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>();
                if self.soft_cap > 0.0 {
                    self.soft_cap * (s / self.soft_cap).tanh()
                } else {
                    s
                }
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let denom: f64 = weights.iter().sum();

        let mut out = vec![0.0; self.head_size];
        for (j, w) in keys.zip(&weights) {
            let v = self.kv_row(&self.v, b, j, kv_head);
            for (o, x) in out.iter_mut().zip(v) {
                *o += w * x;
            }
        }
        for o in &mut out {
            *o /= denom;
        }
        (out, max + denom.ln())
    }

    /// Attend every query row: q is [rows, num_qo_heads, head_size] and row t belongs to
    /// sequence rows[t].0 at position rows[t].1. Returns output [rows, num_qo_heads,
    /// head_size] and lse [rows, num_qo_heads].
    fn attend(&self, q: &[f64], num_qo_heads: usize, rows: &[(usize, i64)], causal: bool) -> (Vec<f64>, Vec<f64>) {
        let group = num_qo_heads / self.num_kv_heads;
        let mut out = Vec::with_capacity(q.len());
        let mut lse = Vec::with_capacity(rows.len() * num_qo_heads);
        for (q_token, &(b, pos)) in q.chunks_exact(num_qo_heads * self.head_size).zip(rows) {
            for (h, q_row) in q_token.chunks_exact(self.head_size).enumerate() {
                let (o, l) = self.row(b, q_row, h / group, pos, causal);
                out.extend(o);
                lse.push(l);
            }
        }
        (out, lse)
    }
}

/// The (sequence, position) of every query token of a prefill, from `qo_indptr`.
fn prefill_rows(p: &PrefillParams, inputs: &Tensors, layout: &PagedLayout) -> Result<Vec<(usize, i64)>> {
    let qo_indptr = i32_in(PREFILL, inputs, "qo_indptr")?;
    let kv_lens: Vec<usize> = layout.seqs.iter().map(|s| s.kv_len).collect();
    query_rows(p, &qo_indptr, &kv_lens)
}

/// The (sequence, position) of every query token of a prefill from `qo_indptr` and the
/// sequences' lengths, checked (query i of a sequence with qo_len queries and kv_len keys
/// sits at kv_len − qo_len + i). The reference and the fast kernels share it.
pub(crate) fn query_rows(p: &PrefillParams, qo_indptr: &[i32], kv_lens: &[usize]) -> Result<Vec<(usize, i64)>> {
    if qo_indptr[0] != 0 {
        return Err(Error::invalid(PREFILL, format!("qo_indptr[0] = {} must be 0", qo_indptr[0])));
    }
    let mut rows = Vec::with_capacity(p.num_tokens);
    for (b, &kv_len) in kv_lens.iter().enumerate() {
        let (start, end) = (qo_indptr[b], qo_indptr[b + 1]);
        if end < start {
            return Err(Error::invalid(PREFILL, format!("qo_indptr decreases: qo_indptr[{}] = {end} < qo_indptr[{b}] = {start}", b + 1)));
        }
        if end as usize > p.num_tokens {
            return Err(Error::invalid(PREFILL, format!("qo_indptr[{}] = {end} exceeds num_tokens {}", b + 1, p.num_tokens)));
        }
        let qo_len = (end - start) as usize;
        if p.causal && qo_len > kv_len {
            return Err(Error::invalid(PREFILL, format!("causal sequence {b} has {qo_len} queries but only {kv_len} keys")));
        }
        let first = kv_len as i64 - qo_len as i64;
        rows.extend((0..qo_len as i64).map(|i| (b, first + i)));
    }
    let last = qo_indptr[p.batch_size];
    if last as usize != p.num_tokens {
        return Err(Error::invalid(PREFILL, format!("qo_indptr[{}] = {last} must equal num_tokens {}", p.batch_size, p.num_tokens)));
    }
    Ok(rows)
}

/// `batch_prefill_with_paged_kv_cache`: ragged queries (split by `qo_indptr`) over each
/// sequence's paged K/V. Query i of a sequence with qo_len queries sits at position
/// kv_len − qo_len + i.
pub fn batch_prefill(p: &PrefillParams, inputs: &Tensors) -> Result<Tensors> {
    Op::BatchPrefillWithPagedKvCache(p.clone()).check_inputs(inputs)?;
    let layout = PagedLayout::read(PREFILL, inputs, p.batch_size, p.page_size, p.num_pages)?;
    let rows = prefill_rows(p, inputs, &layout)?;
    let attn = Attention {
        layout: &layout,
        k: f64_in(PREFILL, inputs, "k_cache")?,
        v: f64_in(PREFILL, inputs, "v_cache")?,
        num_kv_heads: p.num_kv_heads,
        head_size: p.head_size,
        sm_scale: p.sm_scale,
        window_left: p.window_left,
        soft_cap: p.logits_soft_cap,
    };
    let q = f64_in(PREFILL, inputs, "q")?;
    let (out, lse) = attn.attend(&q, p.num_qo_heads, &rows, p.causal);
    let (n, hq, d) = (p.num_tokens, p.num_qo_heads, p.head_size);
    Ok(outputs([("output", float_out(p.dtype, &[n, hq, d], &out)), ("lse", float_out(DType::F32, &[n, hq], &lse))]))
}

/// `batch_decode_with_paged_kv_cache`: the query of sequence b sits at its last position
/// kv_len − 1 and sees every key (within the window).
pub fn batch_decode(p: &DecodeParams, inputs: &Tensors) -> Result<Tensors> {
    Op::BatchDecodeWithPagedKvCache(p.clone()).check_inputs(inputs)?;
    let layout = PagedLayout::read(DECODE, inputs, p.batch_size, p.page_size, p.num_pages)?;
    let rows: Vec<(usize, i64)> = layout.seqs.iter().enumerate().map(|(b, s)| (b, s.kv_len as i64 - 1)).collect();
    let attn = Attention {
        layout: &layout,
        k: f64_in(DECODE, inputs, "k_cache")?,
        v: f64_in(DECODE, inputs, "v_cache")?,
        num_kv_heads: p.num_kv_heads,
        head_size: p.head_size,
        sm_scale: p.sm_scale,
        window_left: p.window_left,
        soft_cap: p.logits_soft_cap,
    };
    let q = f64_in(DECODE, inputs, "q")?;
    let (out, lse) = attn.attend(&q, p.num_qo_heads, &rows, true);
    let (b, hq, d) = (p.batch_size, p.num_qo_heads, p.head_size);
    Ok(outputs([("output", float_out(p.dtype, &[b, hq, d], &out)), ("lse", float_out(DType::F32, &[b, hq], &lse))]))
}

// ---------------------------------------------------------------- fast kernels (`cpu`)

/// The fast kernels of this family's ops on the [`crate::CpuDevice`] ([`crate::device_ops`]):
/// f32, and causal prefill (the non-causal form runs on the reference).
pub(crate) fn fast(op: &Op) -> Option<Kernel<'_>> {
    use DType::F32;
    Some(match op {
        Op::BatchDecodeWithPagedKvCache(p) if p.dtype == F32 => Box::new(move |i, a| batch_decode_fast(p, i, a)),
        Op::BatchPrefillWithPagedKvCache(p) if p.dtype == F32 && p.causal => Box::new(move |i, a| batch_prefill_fast(p, i, a)),
        _ => return None,
    })
}

/// The shared part of decode and prefill: the checked page table, the query rows it
/// yields, and [`paged::paged_attention_into`] writing `output` and `lse`.
struct Paged<'a> {
    op: &'static str,
    ins: &'a Tens,
    hq: usize,
    hk: usize,
    d: usize,
    page_size: usize,
    num_pages: usize,
    sm_scale: f64,
    window_left: i64,
    cap: f64,
}

impl Paged<'_> {
    /// Attends the query rows: `rows(seqs)` gives, from the checked sequences, each query
    /// row's (sequence, position) in the order of `q`.
    fn run(&self, alloc: Alloc, rows: impl FnOnce(&[SeqPages]) -> Result<Vec<(usize, usize)>>) -> Result<Tens> {
        let (indptr, indices, last) = (
            input(self.op, self.ins, "kv_indptr")?.view::<i32>()?,
            input(self.op, self.ins, "kv_indices")?.view::<i32>()?,
            input(self.op, self.ins, "kv_last_page_len")?.view::<i32>()?,
        );
        let seqs = page_table(self.op, &indptr, &indices, &last, self.page_size, self.num_pages)?;
        // Every page id was checked to lie in 0..num_pages: the same bits as u32.
        let pages: &[u32] = bytemuck::cast_slice(&indices);
        let rows: Vec<QueryRow> = rows(&seqs)?.into_iter().map(|(b, pos)| QueryRow { pages: &pages[seqs[b].pages.clone()], pos }).collect();
        let q = input(self.op, self.ins, "q")?.view::<f32>()?;
        let k = input(self.op, self.ins, "k_cache")?.view::<f32>()?;
        let v = input(self.op, self.ins, "v_cache")?.view::<f32>()?;
        let kv = PagedKv { k: &k, v: &v, page_size: self.page_size, n_kv: self.hk, head_dim: self.d };
        let out = alloc.zeros(DType::F32, &[rows.len(), self.hq, self.d])?;
        let lse = alloc.zeros(DType::F32, &[rows.len(), self.hq])?;
        // window_left = w: keys at positions ≥ pos − w, a window of w + 1 keys.
        let window = usize::try_from(self.window_left).ok().map(|w| w.saturating_add(1));
        paged::paged_attention_into(
            &q,
            &rows,
            &kv,
            self.hq,
            self.sm_scale as f32,
            window,
            self.cap as f32,
            out.write()?.f32(),
            Some(lse.write()?.f32()),
        );
        Ok(outs([("output", out), ("lse", lse)]))
    }
}

fn batch_decode_fast(p: &ingot_core::DecodeParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let a = Paged {
        op: "batch_decode_with_paged_kv_cache",
        ins,
        hq: p.num_qo_heads,
        hk: p.num_kv_heads,
        d: p.head_size,
        page_size: p.page_size,
        num_pages: p.num_pages,
        sm_scale: p.sm_scale,
        window_left: p.window_left,
        cap: p.logits_soft_cap,
    };
    // One query per sequence, at its last position (kv_len ≥ 1).
    a.run(alloc, |seqs| Ok(seqs.iter().enumerate().map(|(b, s)| (b, s.kv_len - 1)).collect()))
}

/// Causal prefill (the non-causal form runs on the reference).
fn batch_prefill_fast(p: &ingot_core::PrefillParams, ins: &Tens, alloc: Alloc) -> Result<Tens> {
    let a = Paged {
        op: "batch_prefill_with_paged_kv_cache",
        ins,
        hq: p.num_qo_heads,
        hk: p.num_kv_heads,
        d: p.head_size,
        page_size: p.page_size,
        num_pages: p.num_pages,
        sm_scale: p.sm_scale,
        window_left: p.window_left,
        cap: p.logits_soft_cap,
    };
    let qo_indptr = input(a.op, ins, "qo_indptr")?.view::<i32>()?;
    a.run(alloc, |seqs| {
        let kv_lens: Vec<usize> = seqs.iter().map(|s| s.kv_len).collect();
        // Causal: every query sits at a position ≥ 0 (the check refuses qo_len > kv_len).
        Ok(query_rows(p, &qo_indptr, &kv_lens)?.into_iter().map(|(b, pos)| (b, pos as usize)).collect())
    })
}

#[cfg(test)]
mod tests {
    use crate::kv::append_paged_kv_cache;
    use ingot_core::{AppendKvParams, Tensor};

    const APPEND: &str = "append_paged_kv_cache";
    use super::*;
    use ingot_core::round_to;
    use proptest::prelude::*;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A paged batch: page table and caches, built from sequence lengths.
    #[derive(Clone)]
    struct Batch {
        hk: usize,
        d: usize,
        page_size: usize,
        num_pages: usize,
        indptr: Vec<i32>,
        indices: Vec<i32>,
        last: Vec<i32>,
        k: Tensor,
        v: Tensor,
        dtype: DType,
    }

    /// Sequences of `kv_lens` on shuffled page ids, `spare` pages owned by nobody, two
    /// garbage entries after the used part of kv_indices. Unused slots hold NaN, so
    /// reading one shows in the output.
    fn make_batch(rng: &mut ChaCha8Rng, kv_lens: &[usize], hk: usize, d: usize, ps: usize, spare: usize, dtype: DType) -> Batch {
        let counts: Vec<usize> = kv_lens.iter().map(|l| l.div_ceil(ps)).collect();
        let num_pages = counts.iter().sum::<usize>() + spare;
        let mut ids: Vec<i32> = (0..num_pages as i32).collect();
        ids.shuffle(rng);
        let (mut indptr, mut indices, mut last) = (vec![0], vec![], vec![]);
        let row = hk * d;
        let mut k = vec![f32::NAN; num_pages * ps * row];
        let mut v = k.clone();
        for (&len, &n) in kv_lens.iter().zip(&counts) {
            let first = indices.len();
            indices.extend_from_slice(&ids[first..first + n]);
            indptr.push(indices.len() as i32);
            last.push((len - (n - 1) * ps) as i32);
            for (pi, &page) in indices[first..].iter().enumerate() {
                let used = if pi + 1 == n { len - (n - 1) * ps } else { ps };
                let base = page as usize * ps * row;
                for x in base..base + used * row {
                    k[x] = rng.gen_range(-1.0..1.0);
                    v[x] = rng.gen_range(-1.0..1.0);
                }
            }
        }
        indices.extend([-7, i32::MAX]);
        let shape = vec![num_pages, ps, hk, d];
        Batch {
            hk,
            d,
            page_size: ps,
            num_pages,
            indptr,
            indices,
            last,
            k: Tensor::from_f32(dtype, shape.clone(), &k),
            v: Tensor::from_f32(dtype, shape, &v),
            dtype,
        }
    }

    impl Batch {
        fn batch_size(&self) -> usize {
            self.last.len()
        }
        fn inputs(&self) -> Tensors {
            let mut t = Tensors::new();
            t.insert("k_cache".into(), self.k.clone());
            t.insert("v_cache".into(), self.v.clone());
            t.insert("kv_indices".into(), Tensor::from_i32(vec![self.indices.len()], &self.indices));
            t.insert("kv_indptr".into(), Tensor::from_i32(vec![self.indptr.len()], &self.indptr));
            t.insert("kv_last_page_len".into(), Tensor::from_i32(vec![self.last.len()], &self.last));
            t
        }
        fn prefill_params(&self, num_tokens: usize, hq: usize, causal: bool, window: i64, cap: f64) -> PrefillParams {
            PrefillParams {
                batch_size: self.batch_size(),
                num_tokens,
                num_qo_heads: hq,
                num_kv_heads: self.hk,
                head_size: self.d,
                page_size: self.page_size,
                num_pages: self.num_pages,
                num_page_ids: self.indices.len(),
                causal,
                sm_scale: 1.0 / (self.d as f64).sqrt(),
                window_left: window,
                logits_soft_cap: cap,
                dtype: self.dtype,
            }
        }
        fn decode_params(&self, hq: usize, window: i64, cap: f64) -> DecodeParams {
            let p = self.prefill_params(1, hq, true, window, cap);
            DecodeParams {
                batch_size: p.batch_size,
                num_qo_heads: hq,
                num_kv_heads: p.num_kv_heads,
                head_size: p.head_size,
                page_size: p.page_size,
                num_pages: p.num_pages,
                num_page_ids: p.num_page_ids,
                sm_scale: p.sm_scale,
                window_left: window,
                logits_soft_cap: cap,
                dtype: p.dtype,
            }
        }
        /// Prefill inputs with random queries, `qo_lens[b]` for sequence b.
        fn prefill_inputs(&self, rng: &mut ChaCha8Rng, qo_lens: &[usize], hq: usize) -> Tensors {
            let n: usize = qo_lens.iter().sum();
            let q: Vec<f32> = (0..n * hq * self.d).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut qo_indptr = vec![0i32];
            for l in qo_lens {
                qo_indptr.push(qo_indptr.last().unwrap() + *l as i32);
            }
            let mut t = self.inputs();
            t.insert("q".into(), Tensor::from_f32(self.dtype, vec![n, hq, self.d], &q));
            t.insert("qo_indptr".into(), Tensor::from_i32(vec![qo_indptr.len()], &qo_indptr));
            t
        }
    }

    /// Sequence b's K and V, contiguous [kv_len, hk, d], walking its pages in order.
    fn gather(inputs: &Tensors, k_name: &str, v_name: &str, ps: usize, hk: usize, d: usize, b: usize) -> (Vec<f64>, Vec<f64>) {
        let kc = inputs[k_name].to_f64().unwrap();
        let vc = inputs[v_name].to_f64().unwrap();
        let indptr = inputs["kv_indptr"].to_i32().unwrap();
        let indices = inputs["kv_indices"].to_i32().unwrap();
        let last = inputs["kv_last_page_len"].to_i32().unwrap();
        let pages = &indices[indptr[b] as usize..indptr[b + 1] as usize];
        let (mut k, mut v) = (vec![], vec![]);
        for (pi, &page) in pages.iter().enumerate() {
            let used = if pi + 1 == pages.len() { last[b] as usize } else { ps };
            let page_len = ps * hk * d;
            let base = page as usize * page_len;
            k.extend_from_slice(&kc[base..base + used * hk * d]);
            v.extend_from_slice(&vc[base..base + used * hk * d]);
        }
        (k, v)
    }

    /// Dense prefill: per sequence and head, the full masked score matrix, then a
    /// softmax through exp(s − lse) with lse = ln Σ exp(s) summed directly.
    fn dense_prefill(p: &PrefillParams, inputs: &Tensors) -> (Vec<f64>, Vec<f64>) {
        let q = inputs["q"].to_f64().unwrap();
        let qo_indptr = inputs["qo_indptr"].to_i32().unwrap();
        let (hq, hk, d) = (p.num_qo_heads, p.num_kv_heads, p.head_size);
        let mut out = vec![f64::NAN; p.num_tokens * hq * d];
        let mut lse = vec![f64::NAN; p.num_tokens * hq];
        for b in 0..p.batch_size {
            let (keys, vals) = gather(inputs, "k_cache", "v_cache", p.page_size, hk, d, b);
            let kv_len = keys.len() / (hk * d);
            let (t0, qo_len) = (qo_indptr[b] as usize, (qo_indptr[b + 1] - qo_indptr[b]) as usize);
            let per_kv = hq / hk;
            for g in 0..hk {
                for h in g * per_kv..(g + 1) * per_kv {
                    let mut s = vec![vec![f64::NEG_INFINITY; kv_len]; qo_len];
                    for (i, srow) in s.iter_mut().enumerate() {
                        for (j, sij) in srow.iter_mut().enumerate() {
                            let causal_ok = !p.causal || j + qo_len <= i + kv_len;
                            let window_ok = p.window_left < 0 || j as i64 + p.window_left + qo_len as i64 >= i as i64 + kv_len as i64;
                            if causal_ok && window_ok {
                                let qv = &q[((t0 + i) * hq + h) * d..][..d];
                                let kv = &keys[(j * hk + g) * d..][..d];
                                let mut x = 0.0;
                                for e in 0..d {
                                    x += qv[e] * kv[e];
                                }
                                x *= p.sm_scale;
                                if p.logits_soft_cap > 0.0 {
                                    x = p.logits_soft_cap * (x / p.logits_soft_cap).tanh();
                                }
                                *sij = x;
                            }
                        }
                    }
                    for (i, srow) in s.iter().enumerate() {
                        let sum: f64 = srow.iter().map(|x| x.exp()).sum();
                        let l = sum.ln();
                        let t = t0 + i;
                        lse[t * hq + h] = l;
                        for e in 0..d {
                            out[(t * hq + h) * d + e] =
                                if sum == 0.0 { 0.0 } else { (0..kv_len).map(|j| (srow[j] - l).exp() * vals[(j * hk + g) * d + e]).sum() };
                        }
                    }
                }
            }
        }
        (out, lse)
    }

    /// Tolerance for comparing two roundings to `dtype` of nearly equal f64 values.
    fn tol(dtype: DType) -> f64 {
        match dtype {
            DType::F16 => 1e-3,
            DType::BF16 => 8e-3,
            _ => 1e-6,
        }
    }

    fn assert_close(what: &str, got: &Tensor, want: &[f64], eps: f64) {
        let got = got.to_f64().unwrap();
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let ok = if w.is_infinite() { g == w } else { (g - w).abs() <= eps * w.abs().max(1.0) };
            assert!(ok, "{what}[{i}]: got {g}, want {w}");
        }
    }

    /// One prefill configuration, checked against the dense reference.
    struct Config {
        seed: u64,
        kv_lens: &'static [usize],
        qo_lens: &'static [usize],
        hq: usize,
        hk: usize,
        d: usize,
        page_size: usize,
        causal: bool,
        window: i64,
        cap: f64,
        dtype: DType,
    }

    const BASE: Config = Config {
        seed: 0,
        kv_lens: &[7, 12, 1],
        qo_lens: &[3, 12, 1],
        hq: 6,
        hk: 2,
        d: 16,
        page_size: 4,
        causal: true,
        window: -1,
        cap: 0.0,
        dtype: DType::F32,
    };

    impl Config {
        fn check(&self) {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
            let batch = make_batch(&mut rng, self.kv_lens, self.hk, self.d, self.page_size, 3, self.dtype);
            let inputs = batch.prefill_inputs(&mut rng, self.qo_lens, self.hq);
            let n = self.qo_lens.iter().sum();
            let p = batch.prefill_params(n, self.hq, self.causal, self.window, self.cap);
            let got = batch_prefill(&p, &inputs).unwrap();
            let (out, lse) = dense_prefill(&p, &inputs);
            let out: Vec<f64> = out.iter().map(|&x| round_to(self.dtype, x)).collect();
            let lse: Vec<f64> = lse.iter().map(|&x| round_to(DType::F32, x)).collect();
            let seed = self.seed;
            assert_close(&format!("seed {seed} output"), &got["output"], &out, tol(self.dtype));
            assert_close(&format!("seed {seed} lse"), &got["lse"], &lse, tol(DType::F32));
        }
    }

    #[test]
    fn prefill_matches_dense_gqa_causal_partial_last_page() {
        Config { seed: 1, ..BASE }.check();
    }

    #[test]
    fn prefill_matches_dense_page_size_1_with_empty_query_sequence() {
        let (kv_lens, qo_lens) = (&[5, 9, 3][..], &[0, 4, 3][..]);
        Config { seed: 2, kv_lens, qo_lens, hq: 8, d: 8, page_size: 1, ..BASE }.check();
    }

    #[test]
    fn prefill_matches_dense_page_size_16_non_causal_window() {
        let (kv_lens, qo_lens) = (&[20, 33, 16][..], &[5, 0, 16][..]);
        Config { seed: 3, kv_lens, qo_lens, hq: 4, d: 8, page_size: 16, causal: false, window: 6, ..BASE }.check();
    }

    #[test]
    fn prefill_matches_dense_causal_window_soft_cap() {
        let (kv_lens, qo_lens) = (&[11, 6][..], &[11, 2][..]);
        Config { seed: 4, kv_lens, qo_lens, hq: 4, hk: 4, d: 8, page_size: 3, window: 3, cap: 0.5, ..BASE }.check();
        let qo_lens = &[4, 6][..];
        Config { seed: 5, kv_lens, qo_lens, d: 8, window: 0, cap: 2.0, ..BASE }.check();
    }

    #[test]
    fn prefill_matches_dense_non_causal_more_queries_than_keys() {
        let (kv_lens, qo_lens) = (&[3, 5][..], &[5, 2][..]);
        let c = Config { kv_lens, qo_lens, hq: 2, hk: 1, d: 4, page_size: 2, causal: false, ..BASE };
        Config { seed: 6, window: 1, ..c }.check();
        Config { seed: 7, window: -1, ..c }.check();
    }

    #[test]
    fn prefill_matches_dense_half_types() {
        let (kv_lens, qo_lens) = (&[9, 4][..], &[3, 4][..]);
        Config { seed: 8, kv_lens, qo_lens, d: 8, dtype: DType::F16, ..BASE }.check();
        Config { seed: 9, kv_lens, qo_lens, hq: 8, d: 8, window: 5, cap: 1.0, dtype: DType::BF16, ..BASE }.check();
    }

    /// Decode over the same batch as a prefill with one query per sequence (which sits
    /// at the last position): bit-identical, and both match the dense reference.
    #[test]
    fn decode_equals_prefill_with_one_query_at_the_end() {
        for (seed, window, cap) in [(10u64, -1i64, 0.0), (11, 2, 0.0), (12, 0, 1.5), (13, 5, 3.0)] {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let kv_lens = [9, 1, 16, 5];
            let batch = make_batch(&mut rng, &kv_lens, 2, 8, 4, 2, DType::F32);
            let inputs = batch.prefill_inputs(&mut rng, &[1; 4], 6);
            let pp = batch.prefill_params(4, 6, true, window, cap);
            let pre = batch_prefill(&pp, &inputs).unwrap();
            let mut dec_inputs = inputs.clone();
            dec_inputs.remove("qo_indptr");
            let dec = batch_decode(&batch.decode_params(6, window, cap), &dec_inputs).unwrap();
            assert_eq!(dec["output"], pre["output"], "seed {seed}");
            assert_eq!(dec["lse"], pre["lse"], "seed {seed}");
            let (out, lse) = dense_prefill(&pp, &inputs);
            assert_close("decode output", &dec["output"], &out, tol(DType::F32));
            assert_close("decode lse", &dec["lse"], &lse, tol(DType::F32));
        }
    }

    /// Moving physical pages around (and remapping kv_indices) changes nothing.
    #[test]
    fn permuting_physical_pages_leaves_outputs_unchanged() {
        let mut rng = ChaCha8Rng::seed_from_u64(20);
        let batch = make_batch(&mut rng, &[10, 3, 7], 2, 4, 3, 4, DType::F32);
        let inputs = batch.prefill_inputs(&mut rng, &[4, 3, 2], 4);
        let p = batch.prefill_params(9, 4, true, 4, 0.0);
        let before = batch_prefill(&p, &inputs).unwrap();

        let mut perm: Vec<usize> = (0..batch.num_pages).collect();
        perm.shuffle(&mut rng);
        let page_bytes = batch.k.data.len() / batch.num_pages;
        let mut moved = batch.clone();
        for (from, &to) in perm.iter().enumerate() {
            let (src, dst) = (from * page_bytes..(from + 1) * page_bytes, to * page_bytes);
            moved.k.data[dst..dst + page_bytes].copy_from_slice(&batch.k.data[src.clone()]);
            moved.v.data[dst..dst + page_bytes].copy_from_slice(&batch.v.data[src]);
        }
        let used = *batch.indptr.last().unwrap() as usize;
        for id in &mut moved.indices[..used] {
            *id = perm[*id as usize] as i32;
        }
        assert_ne!(moved.indices, batch.indices);
        let mut moved_inputs = moved.inputs();
        moved_inputs.insert("q".into(), inputs["q"].clone());
        moved_inputs.insert("qo_indptr".into(), inputs["qo_indptr"].clone());
        assert_eq!(batch_prefill(&p, &moved_inputs).unwrap(), before);

        let mut dec = moved_inputs.clone();
        dec.remove("qo_indptr");
        dec.insert("q".into(), Tensor::from_f32(DType::F32, vec![3, 4, 4], &[0.25; 48]));
        let mut orig = inputs.clone();
        orig.remove("qo_indptr");
        orig.insert("q".into(), dec["q"].clone());
        let dp = batch.decode_params(4, -1, 0.0);
        assert_eq!(batch_decode(&dp, &dec).unwrap(), batch_decode(&dp, &orig).unwrap());
    }

    /// The routine for one row, called for a position that sees no key (not reachable
    /// through the ops with valid inputs): output 0, lse −inf.
    #[test]
    fn row_without_visible_key_is_zero_with_lse_minus_inf() {
        let mut rng = ChaCha8Rng::seed_from_u64(30);
        let batch = make_batch(&mut rng, &[4], 1, 2, 2, 0, DType::F32);
        let inputs = batch.inputs();
        let layout = PagedLayout::read(PREFILL, &inputs, 1, 2, batch.num_pages).unwrap();
        let attn = Attention {
            layout: &layout,
            k: batch.k.to_f64().unwrap(),
            v: batch.v.to_f64().unwrap(),
            num_kv_heads: 1,
            head_size: 2,
            sm_scale: 1.0,
            window_left: 1,
            soft_cap: 0.0,
        };
        assert_eq!(attn.row(0, &[1.0, 1.0], 0, -1, true), (vec![0.0, 0.0], f64::NEG_INFINITY));
        assert_eq!(attn.row(0, &[1.0, 1.0], 0, 9, false), (vec![0.0, 0.0], f64::NEG_INFINITY));
        let (out, lse) = attn.row(0, &[1.0, 1.0], 0, 0, true);
        assert!(lse.is_finite() && out.iter().all(|x| x.is_finite()));
    }

    fn append_params(batch: &Batch, num_tokens: usize) -> AppendKvParams {
        AppendKvParams {
            batch_size: batch.batch_size(),
            num_tokens,
            num_kv_heads: batch.hk,
            head_size: batch.d,
            page_size: batch.page_size,
            num_pages: batch.num_pages,
            num_page_ids: batch.indices.len(),
            dtype: batch.dtype,
        }
    }

    fn append_inputs(batch: &Batch, rows: &[(i32, i32)], k_rows: &[f32], v_rows: &[f32]) -> Tensors {
        let n = rows.len();
        let mut t = batch.inputs();
        let shape = vec![n, batch.hk, batch.d];
        t.insert("append_k".into(), Tensor::from_f32(batch.dtype, shape.clone(), k_rows));
        t.insert("append_v".into(), Tensor::from_f32(batch.dtype, shape, v_rows));
        let b: Vec<i32> = rows.iter().map(|r| r.0).collect();
        let pos: Vec<i32> = rows.iter().map(|r| r.1).collect();
        t.insert("batch_indices".into(), Tensor::from_i32(vec![n], &b));
        t.insert("positions".into(), Tensor::from_i32(vec![n], &pos));
        t
    }

    #[test]
    fn append_then_read_back() {
        for dtype in [DType::F32, DType::BF16] {
            let mut rng = ChaCha8Rng::seed_from_u64(40);
            let (hk, d, ps) = (2, 4, 4);
            let batch = make_batch(&mut rng, &[6, 9, 1], hk, d, ps, 2, dtype);
            let rows = [(1, 8), (0, 5), (2, 0), (1, 0), (0, 4), (1, 4)];
            let n = rows.len();
            let k_rows: Vec<f32> = (0..n * hk * d).map(|i| 100.0 + i as f32).collect();
            let v_rows: Vec<f32> = (0..n * hk * d).map(|i| -100.0 - i as f32).collect();
            let inputs = append_inputs(&batch, &rows, &k_rows, &v_rows);
            let got = append_paged_kv_cache(&append_params(&batch, n), &inputs).unwrap();

            let mut after = inputs.clone();
            after.insert("k_cache".into(), got["k_cache_out"].clone());
            after.insert("v_cache".into(), got["v_cache_out"].clone());
            for b in 0..3 {
                let (k0, v0) = gather(&inputs, "k_cache", "v_cache", ps, hk, d, b);
                let (k1, v1) = gather(&after, "k_cache", "v_cache", ps, hk, d, b);
                for pos in 0..k0.len() / (hk * d) {
                    let at = pos * hk * d..(pos + 1) * hk * d;
                    match rows.iter().position(|&r| r == (b as i32, pos as i32)) {
                        Some(i) => {
                            let want =
                                |x: &[f32]| x[i * hk * d..(i + 1) * hk * d].iter().map(|&y| round_to(dtype, y as f64)).collect::<Vec<_>>();
                            assert_eq!(k1[at.clone()], want(&k_rows)[..], "k of sequence {b} position {pos}");
                            assert_eq!(v1[at], want(&v_rows)[..], "v of sequence {b} position {pos}");
                        }
                        None => {
                            assert_eq!(k1[at.clone()], k0[at.clone()], "k of sequence {b} position {pos} changed");
                            assert_eq!(v1[at.clone()], v0[at], "v of sequence {b} position {pos} changed");
                        }
                    }
                }
            }
            // Pages owned by nobody and unused slots (NaN) are untouched, bit for bit.
            let changed = |a: &Tensor, b: &Tensor| {
                let e = a.data.len() / a.numel();
                a.data.chunks(e).zip(b.data.chunks(e)).filter(|(x, y)| x != y).count()
            };
            // (The appended values, ±100 and up, differ from every old value in [-1, 1).)
            assert_eq!(changed(&got["k_cache_out"], &batch.k), n * hk * d);
            assert_eq!(changed(&got["v_cache_out"], &batch.v), n * hk * d);
        }
    }

    fn err_of(r: Result<Tensors>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    fn expect_err(r: Result<Tensors>, op: &str, parts: &[&str]) {
        let e = err_of(r);
        assert!(e.starts_with(&format!("[{op}] ")), "{e}");
        for part in parts {
            assert!(e.contains(part), "{e:?} should contain {part:?}");
        }
    }

    /// Run prefill, decode and append on a batch whose page table was edited by `edit`;
    /// each must fail with a message containing `parts`.
    fn expect_table_error(edit: impl Fn(&mut Batch), parts: &[&str]) {
        let mut rng = ChaCha8Rng::seed_from_u64(50);
        let mut batch = make_batch(&mut rng, &[5, 8], 2, 4, 4, 16 - 4, DType::F32);
        let pre_inputs = batch.prefill_inputs(&mut rng, &[1, 1], 2);
        edit(&mut batch);
        let mut inputs = batch.inputs();
        inputs.insert("q".into(), pre_inputs["q"].clone());
        inputs.insert("qo_indptr".into(), pre_inputs["qo_indptr"].clone());
        let p = batch.prefill_params(2, 2, true, -1, 0.0);
        expect_err(batch_prefill(&p, &inputs), PREFILL, parts);
        inputs.remove("qo_indptr");
        expect_err(batch_decode(&batch.decode_params(2, -1, 0.0), &inputs), DECODE, parts);
        let a = append_inputs(&batch, &[(0, 0)], &[0.0; 8], &[0.0; 8]);
        expect_err(append_paged_kv_cache(&append_params(&batch, 1), &a), APPEND, parts);
    }

    #[test]
    fn bad_page_tables_are_errors() {
        expect_table_error(|b| b.indptr[0] = 1, &["kv_indptr[0] = 1 must be 0"]);
        expect_table_error(|b| b.indptr = vec![0, 3, 2], &["kv_indptr[2] = 2 < kv_indptr[1] = 3"]);
        expect_table_error(|b| b.indptr = vec![0, 0, 2], &["sequence 0 has no page"]);
        expect_table_error(|b| b.indptr[2] = 7, &["kv_indptr[2] = 7 exceeds num_page_ids 6"]);
        expect_table_error(|b| b.indices[2] = 16, &["kv_indices[2] = 16 is outside 0..16 pages"]);
        expect_table_error(|b| b.indices[0] = -1, &["kv_indices[0] = -1 is outside 0..16 pages"]);
        expect_table_error(|b| b.last[1] = 0, &["kv_last_page_len[1] = 0 is outside 1..=4"]);
        expect_table_error(|b| b.last[0] = 5, &["kv_last_page_len[0] = 5 is outside 1..=4"]);
    }

    #[test]
    fn bad_appends_are_errors() {
        let mut rng = ChaCha8Rng::seed_from_u64(60);
        // Sequence lengths 5 and 8 on pages of 4.
        let batch = make_batch(&mut rng, &[5, 8], 1, 2, 4, 0, DType::F32);
        let run = |rows: &[(i32, i32)]| {
            let n = rows.len();
            let x = vec![1.0; n * 2];
            append_paged_kv_cache(&append_params(&batch, n), &append_inputs(&batch, rows, &x, &x))
        };
        assert!(run(&[(0, 4), (1, 7)]).is_ok());
        expect_err(run(&[(0, 0), (1, 8)]), APPEND, &["positions[1] = 8 is outside 0..8", "sequence 1"]);
        expect_err(run(&[(0, 5)]), APPEND, &["positions[0] = 5 is outside 0..5"]);
        expect_err(run(&[(0, -1)]), APPEND, &["positions[0] = -1"]);
        expect_err(run(&[(2, 0)]), APPEND, &["batch_indices[0] = 2 is outside 0..2 sequences"]);
        expect_err(run(&[(-1, 0)]), APPEND, &["batch_indices[0] = -1"]);
        expect_err(run(&[(1, 3), (0, 1), (1, 3)]), APPEND, &["rows 0 and 2 both write sequence 1 position 3"]);

        // Two sequences sharing a physical page: a shared slot written twice is an error.
        let mut shared = batch.clone();
        let second = shared.indptr[1] as usize;
        shared.indices[second] = shared.indices[0];
        let x = vec![1.0; 4];
        let r = append_paged_kv_cache(&append_params(&shared, 2), &append_inputs(&shared, &[(0, 2), (1, 2)], &x, &x));
        let page = shared.indices[0];
        expect_err(r, APPEND, &[&format!("rows 0 and 1 both write page {page} slot 2"), "sequence 0 position 2"]);
        let r = append_paged_kv_cache(&append_params(&shared, 2), &append_inputs(&shared, &[(0, 2), (1, 3)], &x, &x));
        assert!(r.is_ok());
    }

    #[test]
    fn bad_qo_indptr_and_causal_overflow_are_errors() {
        let mut rng = ChaCha8Rng::seed_from_u64(70);
        let batch = make_batch(&mut rng, &[3, 6], 1, 2, 2, 0, DType::F32);
        let run = |qo_indptr: &[i32], num_tokens: usize, causal: bool| {
            let mut t = batch.prefill_inputs(&mut ChaCha8Rng::seed_from_u64(0), &[num_tokens, 0], 1);
            t.insert("qo_indptr".into(), Tensor::from_i32(vec![3], qo_indptr));
            batch_prefill(&batch.prefill_params(num_tokens, 1, causal, -1, 0.0), &t)
        };
        assert!(run(&[0, 3, 4], 4, true).is_ok());
        expect_err(run(&[0, 4, 4], 4, true), PREFILL, &["causal sequence 0 has 4 queries but only 3 keys"]);
        assert!(run(&[0, 4, 4], 4, false).is_ok());
        expect_err(run(&[1, 3, 4], 4, true), PREFILL, &["qo_indptr[0] = 1 must be 0"]);
        expect_err(run(&[0, 3, 2], 4, true), PREFILL, &["qo_indptr[2] = 2 < qo_indptr[1] = 3"]);
        expect_err(run(&[0, 3, 3], 4, true), PREFILL, &["qo_indptr[2] = 3 must equal num_tokens 4"]);
        expect_err(run(&[0, 5, 5], 4, false), PREFILL, &["qo_indptr[1] = 5 exceeds num_tokens 4"]);
    }

    #[test]
    fn wrong_shapes_are_errors_not_panics() {
        let mut rng = ChaCha8Rng::seed_from_u64(80);
        let batch = make_batch(&mut rng, &[3, 6], 1, 2, 2, 0, DType::F32);
        let mut t = batch.prefill_inputs(&mut rng, &[2, 2], 1);
        let p = batch.prefill_params(4, 1, true, -1, 0.0);
        assert!(batch_prefill(&p, &t).is_ok());
        t.insert("kv_indptr".into(), Tensor::from_i32(vec![2], &[0, 2]));
        expect_err(batch_prefill(&p, &t), PREFILL, &["kv_indptr"]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Arbitrary index tensors never make an op panic.
        #[test]
        fn arbitrary_indices_never_panic(
            indptr in proptest::collection::vec(-2i32..8, 3),
            indices in proptest::collection::vec(-2i32..6, 6),
            last in proptest::collection::vec(-1i32..5, 2),
            qo_indptr in proptest::collection::vec(-1i32..5, 3),
            rows in proptest::collection::vec((-1i32..3, -1i32..12), 3),
            causal in any::<bool>(),
            window in -1i64..3,
        ) {
            let mut rng = ChaCha8Rng::seed_from_u64(90);
            let mut batch = make_batch(&mut rng, &[3, 6], 1, 2, 3, 0, DType::F32);
            let q = batch.prefill_inputs(&mut rng, &[2, 2], 2)["q"].clone();
            batch.indptr = indptr;
            batch.indices = indices;
            batch.last = last;
            let mut t = batch.inputs();
            t.insert("q".into(), q);
            t.insert("qo_indptr".into(), Tensor::from_i32(vec![3], &qo_indptr));
            let _ = batch_prefill(&batch.prefill_params(4, 2, causal, window, 0.0), &t);
            t.remove("qo_indptr");
            let q = Tensor::from_f32(DType::F32, vec![2, 2, 2], &[0.5; 8]);
            t.insert("q".into(), q);
            let _ = batch_decode(&batch.decode_params(2, window, 0.0), &t);
            let x = vec![1.0; 6];
            let _ = append_paged_kv_cache(&append_params(&batch, 3), &append_inputs(&batch, &rows, &x, &x));
        }
    }
}
