//! Attention over a paged K/V cache, the CPU fast path of the models' batched forward.
//!
//! The cache of one layer is FlashInfer's NHD layout (docs/ops.md, "Paged KV cache
//! layout"): [num_pages, page_size, n_kv, head_dim] f32; a sequence's position j lives in
//! page `pages[j / page_size]`, slot `j % page_size`. Each query row names its sequence's
//! page table and its position, and is attended on its own: the result of a row depends
//! only on its query and its sequence's keys and values, never on the other rows of the
//! batch, nor on the page size or which physical pages hold the keys (the keys are
//! visited in position order with the same arithmetic whatever the layout). That is what
//! makes the engine's batching invisible in the logits.

use rayon::prelude::*;

/// One layer's K and V pages, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct PagedKv<'a> {
    /// [num_pages, page_size, n_kv, head_dim]
    pub k: &'a [f32],
    /// [num_pages, page_size, n_kv, head_dim]
    pub v: &'a [f32],
    pub page_size: usize,
    pub n_kv: usize,
    pub head_dim: usize,
}

impl PagedKv<'_> {
    /// Start of the `head_dim` values of `kv_head` at position `j` of the sequence owning `pages`.
    #[inline]
    fn offset(&self, pages: &[u32], j: usize, kv_head: usize) -> usize {
        let page = pages[j / self.page_size] as usize;
        ((page * self.page_size + j % self.page_size) * self.n_kv + kv_head) * self.head_dim
    }
}

/// One query row: its sequence's page table and its position in that sequence.
#[derive(Clone, Copy, Debug)]
pub struct QueryRow<'a> {
    pub pages: &'a [u32],
    pub pos: usize,
}

/// Dot product with eight independent f32 accumulators (vectorizes); the same
/// summation order as the fast path's contiguous attention.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    for v in acc {
        s += v;
    }
    s
}

/// Causal attention of the query rows `q` [rows, n_heads, head_dim] over their sequences'
/// paged keys and values (GQA: query head h reads kv head h / (n_heads / n_kv)). The row at
/// position p sees key j iff j ≤ p and (no window or p − j < window); every key up to p
/// must already be written. Scores are scale·q·k, soft-capped as cap·tanh(s / cap) when
/// `softcap` > 0. Returns [rows, n_heads, head_dim].
///
/// Panics when the shapes disagree or a page table does not cover a row's position
/// (callers check their inputs; a bad table here is a bug, not user input).
pub fn paged_attention(
    q: &[f32],
    rows: &[QueryRow],
    kv: &PagedKv,
    n_heads: usize,
    scale: f32,
    window: Option<usize>,
    softcap: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; rows.len() * n_heads * kv.head_dim];
    paged_attention_into(q, rows, kv, n_heads, scale, window, softcap, &mut out, None);
    out
}

/// [`paged_attention`] into `out` [rows, n_heads, head_dim] (overwritten), and when `lse`
/// is given, the natural log of each softmax denominator into it [rows, n_heads]
/// (max score + ln Σ exp(score − max), the scores after scale and soft cap).
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_into(
    q: &[f32],
    rows: &[QueryRow],
    kv: &PagedKv,
    n_heads: usize,
    scale: f32,
    window: Option<usize>,
    softcap: f32,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) {
    let d = kv.head_dim;
    assert!(kv.n_kv > 0 && n_heads / kv.n_kv * kv.n_kv == n_heads, "paged_attention: {n_heads} heads over {} kv heads", kv.n_kv);
    assert_eq!(q.len(), rows.len() * n_heads * d, "paged_attention: q shape");
    assert_eq!(out.len(), q.len(), "paged_attention: output shape");
    assert_eq!(kv.k.len(), kv.v.len(), "paged_attention: k and v sizes differ");
    assert_eq!(kv.k.len() % (kv.page_size * kv.n_kv * d).max(1), 0, "paged_attention: cache is not whole pages");
    let num_pages = kv.k.len() / (kv.page_size * kv.n_kv * d).max(1);
    for r in rows {
        assert!(r.pos < r.pages.len() * kv.page_size, "paged_attention: position {} beyond the page table", r.pos);
        assert!(r.pages.iter().all(|&p| (p as usize) < num_pages), "paged_attention: page id beyond the cache");
    }
    let group = n_heads / kv.n_kv;
    // One (row, head) per task; `s` is the task's reused score buffer.
    let attend = |s: &mut Vec<f32>, idx: usize, o: &mut [f32]| -> f32 {
        let (row, h) = (&rows[idx / n_heads], idx % n_heads);
        let (p, kh) = (row.pos, h / group);
        let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
        let qv = &q[idx * d..(idx + 1) * d];
        s.clear();
        s.extend((lo..=p).map(|j| {
            let at = kv.offset(row.pages, j, kh);
            let x = scale * dot(qv, &kv.k[at..at + d]);
            if softcap > 0.0 {
                softcap * (x / softcap).tanh()
            } else {
                x
            }
        }));
        let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut z = 0f32;
        for x in s.iter_mut() {
            *x = (*x - m).exp();
            z += *x;
        }
        o.fill(0.0);
        for (jj, w) in s.iter().enumerate() {
            let at = kv.offset(row.pages, lo + jj, kh);
            let w = w / z;
            for (oi, vi) in o.iter_mut().zip(&kv.v[at..at + d]) {
                *oi += w * vi;
            }
        }
        m + z.ln()
    };
    // The `group` query heads that read kv head `kh` of row `ri`, together: each key and
    // value row is read once for all of them (a prefill row of a GQA model reads each far
    // fewer times). Each head's arithmetic is `attend`'s, in the same order: the results are
    // bit-identical. `o` is the group's [group, head_dim] output, `l` its [group] lse.
    let attend_group = |st: &mut (Vec<f32>, Vec<f32>, Vec<f32>), ri: usize, kh: usize, o: &mut [f32], l: Option<&mut [f32]>| {
        let (s, m, z) = st;
        let row = &rows[ri];
        let p = row.pos;
        let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
        let n = p + 1 - lo;
        let q0 = (ri * n_heads + kh * group) * d;
        s.clear();
        s.resize(group * n, 0.0);
        for jj in 0..n {
            let at = kv.offset(row.pages, lo + jj, kh);
            let kr = &kv.k[at..at + d];
            for g in 0..group {
                let x = scale * dot(&q[q0 + g * d..q0 + (g + 1) * d], kr);
                s[g * n + jj] = if softcap > 0.0 { softcap * (x / softcap).tanh() } else { x };
            }
        }
        m.clear();
        z.clear();
        for g in 0..group {
            let sg = &mut s[g * n..(g + 1) * n];
            let mg = sg.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut zg = 0f32;
            for x in sg.iter_mut() {
                *x = (*x - mg).exp();
                zg += *x;
            }
            m.push(mg);
            z.push(zg);
        }
        o.fill(0.0);
        for jj in 0..n {
            let at = kv.offset(row.pages, lo + jj, kh);
            let vr = &kv.v[at..at + d];
            for g in 0..group {
                let w = s[g * n + jj] / z[g];
                for (oi, vi) in o[g * d..(g + 1) * d].iter_mut().zip(vr) {
                    *oi += w * vi;
                }
            }
        }
        if let Some(l) = l {
            for g in 0..group {
                l[g] = m[g] + z[g].ln();
            }
        }
    };
    // Grouped where there are heads to group and enough (row, kv head) tasks to keep every
    // thread busy (a decode step of one sequence has few: there each head is its own task).
    let grouped = group > 1 && rows.len() * kv.n_kv >= 2 * rayon::current_num_threads();
    let st = || (Vec::new(), Vec::new(), Vec::new());
    match (lse, grouped) {
        (Some(lse), false) => {
            assert_eq!(lse.len(), rows.len() * n_heads, "paged_attention: lse shape");
            out.par_chunks_mut(d).zip(lse.par_iter_mut()).enumerate().for_each_init(Vec::new, |s, (idx, (o, l))| *l = attend(s, idx, o));
        }
        (None, false) => out.par_chunks_mut(d).enumerate().for_each_init(Vec::new, |s, (idx, o)| {
            attend(s, idx, o);
        }),
        (Some(lse), true) => {
            assert_eq!(lse.len(), rows.len() * n_heads, "paged_attention: lse shape");
            out.par_chunks_mut(group * d)
                .zip(lse.par_chunks_mut(group))
                .enumerate()
                .for_each_init(st, |s, (idx, (o, l))| attend_group(s, idx / kv.n_kv, idx % kv.n_kv, o, Some(l)));
        }
        (None, true) => out
            .par_chunks_mut(group * d)
            .enumerate()
            .for_each_init(st, |s, (idx, o)| attend_group(s, idx / kv.n_kv, idx % kv.n_kv, o, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::batch_prefill;
    use ingot_core::{DType, PrefillParams, Tensor, Tensors};
    use rand::{seq::SliceRandom, Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Sequences of the given lengths in a pool of `spare` extra pages, at shuffled physical
    /// pages; returns (k, v, page tables, num_pages).
    fn pool(
        rng: &mut ChaCha8Rng,
        lens: &[usize],
        ps: usize,
        hk: usize,
        d: usize,
        spare: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<Vec<u32>>, usize) {
        let need: Vec<usize> = lens.iter().map(|l| l.div_ceil(ps)).collect();
        let num_pages = need.iter().sum::<usize>() + spare;
        let mut ids: Vec<u32> = (0..num_pages as u32).collect();
        ids.shuffle(rng);
        let mut tables = Vec::new();
        let mut at = 0;
        for n in need {
            tables.push(ids[at..at + n].to_vec());
            at += n;
        }
        let k: Vec<f32> = (0..num_pages * ps * hk * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let v: Vec<f32> = (0..num_pages * ps * hk * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
        (k, v, tables, num_pages)
    }

    /// The protocol's f64 reference on the same pages, queries as the last `qo[b]` positions.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        tables: &[Vec<u32>],
        lens: &[usize],
        qo: &[usize],
        ps: usize,
        hq: usize,
        hk: usize,
        d: usize,
        num_pages: usize,
        window: Option<usize>,
        cap: f32,
    ) -> Vec<f32> {
        let n: usize = qo.iter().sum();
        let indices: Vec<i32> = tables.iter().flatten().map(|&p| p as i32).collect();
        let mut indptr = vec![0i32];
        let mut qo_indptr = vec![0i32];
        for (t, l) in tables.iter().zip(qo) {
            indptr.push(indptr.last().unwrap() + t.len() as i32);
            qo_indptr.push(qo_indptr.last().unwrap() + *l as i32);
        }
        let last: Vec<i32> = lens.iter().map(|l| ((l - 1) % ps + 1) as i32).collect();
        let mut t = Tensors::new();
        t.insert("q".into(), Tensor::from_f32(DType::F32, vec![n, hq, d], q));
        t.insert("k_cache".into(), Tensor::from_f32(DType::F32, vec![num_pages, ps, hk, d], k));
        t.insert("v_cache".into(), Tensor::from_f32(DType::F32, vec![num_pages, ps, hk, d], v));
        t.insert("kv_indices".into(), Tensor::from_i32(vec![indices.len()], &indices));
        t.insert("kv_indptr".into(), Tensor::from_i32(vec![indptr.len()], &indptr));
        t.insert("kv_last_page_len".into(), Tensor::from_i32(vec![last.len()], &last));
        t.insert("qo_indptr".into(), Tensor::from_i32(vec![qo_indptr.len()], &qo_indptr));
        let p = PrefillParams {
            batch_size: lens.len(),
            num_tokens: n,
            num_qo_heads: hq,
            num_kv_heads: hk,
            head_size: d,
            page_size: ps,
            num_pages,
            num_page_ids: indices.len(),
            causal: true,
            sm_scale: 1.0 / (d as f64).sqrt(),
            window_left: window.map_or(-1, |w| w as i64 - 1),
            logits_soft_cap: cap as f64,
            dtype: DType::F32,
        };
        batch_prefill(&p, &t).unwrap()["output"].to_f32().unwrap()
    }

    #[test]
    fn matches_the_reference_gqa_window_softcap_partial_pages() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (hq, hk, d) = (6, 2, 40);
        for (ps, window, cap) in [(4, None, 0.0), (1, Some(3), 0.0), (16, Some(5), 30.0), (3, None, 2.0)] {
            let lens = [9usize, 1, 17, 5];
            let qo = [3usize, 1, 17, 1];
            let (k, v, tables, num_pages) = pool(&mut rng, &lens, ps, hk, d, 2);
            let n: usize = qo.iter().sum();
            let q: Vec<f32> = (0..n * hq * d).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let mut rows = Vec::new();
            for b in 0..lens.len() {
                for i in 0..qo[b] {
                    rows.push(QueryRow { pages: &tables[b], pos: lens[b] - qo[b] + i });
                }
            }
            let kv = PagedKv { k: &k, v: &v, page_size: ps, n_kv: hk, head_dim: d };
            let got = paged_attention(&q, &rows, &kv, hq, 1.0 / (d as f32).sqrt(), window, cap);
            let want = reference(&q, &k, &v, &tables, &lens, &qo, ps, hq, hk, d, num_pages, window, cap);
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "page size {ps}, window {window:?}, cap {cap}: max |Δ| {worst}");
        }
    }

    /// A row's output is bit-identical whatever the page size, the physical pages and the
    /// other rows of the batch.
    #[test]
    fn rows_are_independent_of_layout_and_batch() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (hq, hk, d, len) = (4, 1, 64, 37);
        let keys: Vec<f32> = (0..len * hk * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let vals: Vec<f32> = (0..len * hk * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let q: Vec<f32> = (0..hq * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let w = hk * d;
        let mut outs = Vec::new();
        for (ps, others) in [(1usize, 0usize), (16, 3), (5, 1), (64, 2)] {
            // Scatter the sequence onto shuffled pages among junk pages.
            let (mut k, mut v, tables, _) = pool(&mut rng, &[len, 20, 3], ps, hk, d, 3);
            for j in 0..len {
                let at = (tables[0][j / ps] as usize * ps + j % ps) * w;
                k[at..at + w].copy_from_slice(&keys[j * w..(j + 1) * w]);
                v[at..at + w].copy_from_slice(&vals[j * w..(j + 1) * w]);
            }
            let mut rows = vec![QueryRow { pages: &tables[1], pos: 19 }; others];
            rows.insert(others / 2, QueryRow { pages: &tables[0], pos: len - 1 });
            let mut qs: Vec<f32> = (0..rows.len() * hq * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let at = others / 2 * hq * d;
            qs[at..at + hq * d].copy_from_slice(&q);
            let kv = PagedKv { k: &k, v: &v, page_size: ps, n_kv: hk, head_dim: d };
            let out = paged_attention(&qs, &rows, &kv, hq, 0.125, Some(30), 0.0);
            outs.push(out[at..at + hq * d].to_vec());
        }
        for o in &outs[1..] {
            assert_eq!(o, &outs[0]);
        }
    }

    /// Many rows (heads grouped by kv head, each key read once per group) give bit for bit
    /// what each row gives alone (one task per head), outputs and softmax denominators.
    #[test]
    fn grouped_heads_match_heads_one_by_one() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (hq, hk, d, ps) = (6, 1, 24, 3);
        for (window, cap) in [(None, 0.0), (Some(4), 0.0), (None, 5.0)] {
            let lens = [23usize];
            let (k, v, tables, _) = pool(&mut rng, &lens, ps, hk, d, 1);
            let n = 2 * rayon::current_num_threads() + 3;
            let rows: Vec<QueryRow> = (0..n).map(|i| QueryRow { pages: &tables[0], pos: 22 - i }).collect();
            let q: Vec<f32> = (0..n * hq * d).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let kv = PagedKv { k: &k, v: &v, page_size: ps, n_kv: hk, head_dim: d };
            let (mut out, mut lse) = (vec![0f32; n * hq * d], vec![0f32; n * hq]);
            paged_attention_into(&q, &rows, &kv, hq, 0.2, window, cap, &mut out, Some(&mut lse));
            for (i, r) in rows.iter().enumerate() {
                let (mut o1, mut l1) = (vec![0f32; hq * d], vec![0f32; hq]);
                paged_attention_into(&q[i * hq * d..(i + 1) * hq * d], &[*r], &kv, hq, 0.2, window, cap, &mut o1, Some(&mut l1));
                assert_eq!(&out[i * hq * d..(i + 1) * hq * d], &o1[..], "row {i}, window {window:?}, cap {cap}");
                assert_eq!(&lse[i * hq..(i + 1) * hq], &l1[..], "lse of row {i}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "beyond the page table")]
    fn short_page_table_panics() {
        let kv = PagedKv { k: &[0.0; 8], v: &[0.0; 8], page_size: 2, n_kv: 1, head_dim: 4 };
        paged_attention(&[0.0; 4], &[QueryRow { pages: &[0], pos: 2 }], &kv, 1, 1.0, None, 0.0);
    }
}
