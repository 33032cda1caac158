//! KV-cache writes and KV quantization: `append_paged_kv_cache`, `quantize_kv`,
//! `dequantize_kv`, and the host-side checks of paged page tables shared with the
//! attention ops.
//!
//! Paged layout (FlashInfer's NHD, as `ingot_cpu::attention`): a cache is [num_pages,
//! page_size, num_kv_heads, head_size]; sequence b owns pages kv_indices[kv_indptr[b] ..
//! kv_indptr[b+1]] and has length (pages − 1)·page_size + kv_last_page_len[b].
//!
//! `append_paged_kv_cache` only moves bits: the caches are copied to the outputs as u32
//! words, then each appended row is copied word for word into its slot (a row of
//! num_kv_heads·head_size elements is contiguous both in `append_k` and in a slot). No
//! float arithmetic touches the values, so every float dtype runs on every device (lavapipe
//! has no bf16) and NaN payloads survive. A 16-bit row of odd length starts mid-word; those
//! rows go element by element through atomic and/or on the words, so two rows sharing a
//! word never lose each other's half. [`append_paged_kv_cache_in_place`] writes into
//! existing caches (what a decode loop wants); the op copies first because its outputs are
//! new tensors.
//!
//! `quantize_kv` runs one thread per (head, group): min and max in f32, scale and bias
//! rounded once to the dtype, codes round half to even (`round` is rint on CUDA and WGSL's
//! round), packed `32/bits` to a word; a group always fills whole words (checked by the
//! params), so no two threads share a word. `dequantize_kv` runs one thread per output
//! element: q·s + b with one fused multiply-add, rounded once to the dtype.

use crate::device::{grid_1d, input, linear_pos, with_float, Device, GpuTensor, GpuTensors};
use cubecl::prelude::*;
use ingot_core::{ensure, AppendKvParams, Error, KvDequantParams, KvQuantParams, Result, Tensors};
use std::collections::HashMap;

// ---------------------------------------------------------------- host checks

/// One sequence of a checked page table.
pub(crate) struct SeqPages {
    pub pages: Vec<usize>,
    pub kv_len: usize,
}

/// Read and check `kv_indptr`, `kv_indices` and `kv_last_page_len` on the host, with the
/// CPU reference's messages: kv_indptr[0] = 0, non-decreasing, within kv_indices, every
/// sequence owns a page, 1 <= kv_last_page_len <= page_size, page ids in 0..num_pages.
/// Also rejects a sequence longer than the kernels' 32-bit positions can index.
pub(crate) fn check_page_table(
    op: &'static str,
    inputs: &Tensors,
    batch: usize,
    page_size: usize,
    num_pages: usize,
) -> Result<Vec<SeqPages>> {
    let indptr = inputs["kv_indptr"].to_i32()?;
    let indices = inputs["kv_indices"].to_i32()?;
    let last = inputs["kv_last_page_len"].to_i32()?;
    let num_page_ids = indices.len();
    ensure!(indptr[0] == 0, op, "kv_indptr[0] = {} must be 0", indptr[0]);
    let mut seqs = Vec::with_capacity(batch);
    for b in 0..batch {
        let (start, end) = (indptr[b], indptr[b + 1]);
        ensure!(end >= start, op, "kv_indptr decreases: kv_indptr[{}] = {end} < kv_indptr[{b}] = {start}", b + 1);
        ensure!(end != start, op, "sequence {b} has no page (kv_indptr[{b}] = kv_indptr[{}] = {start})", b + 1);
        let (start, end) = (start as usize, end as usize);
        ensure!(end <= num_page_ids, op, "kv_indptr[{}] = {end} exceeds num_page_ids {num_page_ids}", b + 1);
        let last_len = last[b];
        ensure!(
            last_len >= 1 && last_len as usize <= page_size,
            op,
            "kv_last_page_len[{b}] = {last_len} is outside 1..={page_size} (page_size)"
        );
        let mut pages = Vec::with_capacity(end - start);
        for (i, &id) in indices.iter().enumerate().take(end).skip(start) {
            ensure!(id >= 0 && (id as usize) < num_pages, op, "kv_indices[{i}] = {id} is outside 0..{num_pages} pages");
            pages.push(id as usize);
        }
        let kv_len = (pages.len() - 1).checked_mul(page_size).and_then(|n| n.checked_add(last_len as usize));
        let kv_len = kv_len.ok_or_else(|| Error::invalid(op, format!("sequence {b} is too long to index")))?;
        ensure!(kv_len <= i32::MAX as usize, op, "sequence {b} has {kv_len} positions; the GPU kernels index at most 2^31 − 1");
        seqs.push(SeqPages { pages, kv_len });
    }
    Ok(seqs)
}

/// Host checks of `append_paged_kv_cache`: the page table, every row's sequence and
/// position, and no two rows on one physical slot (messages as `ingot_cpu::attention`).
pub(crate) fn check_append(p: &AppendKvParams, inputs: &Tensors) -> Result<()> {
    const OP: &str = "append_paged_kv_cache";
    let seqs = check_page_table(OP, inputs, p.batch_size, p.page_size, p.num_pages)?;
    let batch_indices = inputs["batch_indices"].to_i32()?;
    let positions = inputs["positions"].to_i32()?;
    let mut written: HashMap<(usize, usize), usize> = HashMap::new();
    for (i, (&b, &pos)) in batch_indices.iter().zip(&positions).enumerate() {
        ensure!(b >= 0 && (b as usize) < p.batch_size, OP, "batch_indices[{i}] = {b} is outside 0..{} sequences", p.batch_size);
        let seq = &seqs[b as usize];
        ensure!(
            pos >= 0 && (pos as usize) < seq.kv_len,
            OP,
            "positions[{i}] = {pos} is outside 0..{} (the length of sequence {b})",
            seq.kv_len
        );
        let (page, slot) = (seq.pages[pos as usize / p.page_size], pos as usize % p.page_size);
        if let Some(prev) = written.insert((page, slot), i) {
            let (pb, ppos) = (batch_indices[prev], positions[prev]);
            let msg = if (pb, ppos) == (b, pos) {
                format!("rows {prev} and {i} both write sequence {b} position {pos}")
            } else {
                format!(
                    "rows {prev} and {i} both write page {page} slot {slot} \
                     (sequence {pb} position {ppos} and sequence {b} position {pos})"
                )
            };
            return Err(Error::invalid(OP, msg));
        }
    }
    Ok(())
}

/// Host check of `quantize_kv`: every source value finite (as the reference).
pub(crate) fn check_quantize(inputs: &Tensors) -> Result<()> {
    let src = &inputs["src"];
    let d = src.shape[1];
    let v = src.to_f32()?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::invalid("quantize_kv", format!("src[{}][{}] = {} is not finite", i / d, i % d, v[i])));
    }
    Ok(())
}

/// Fail unless `numel` elements can be indexed with the kernels' 32-bit indices.
pub(crate) fn check_indexable(op: &'static str, what: &str, numel: usize) -> Result<()> {
    ensure!(numel <= u32::MAX as usize, op, "{what} holds {numel} elements; the GPU kernels index at most 2^32 − 1");
    Ok(())
}

// ---------------------------------------------------------------- kernels

/// Copy `n` u32 words.
#[cube(launch_unchecked)]
fn copy_words_kernel(src: &Array<u32>, dst: &mut Array<u32>, n: usize) {
    let i = linear_pos();
    if i < n {
        dst[i] = src[i];
    }
}

/// The physical row (page·page_size + slot) that appended row `i` lands on, or `rows`
/// (one past the last cache row) when its sequence, position or page id is out of range:
/// the kernels then skip the row, so no value makes them write out of bounds.
#[cube]
fn target_row(
    batch_indices: &Array<i32>,
    positions: &Array<i32>,
    kv_indices: &Array<i32>,
    kv_indptr: &Array<i32>,
    kv_last: &Array<i32>,
    i: usize,
    batch: usize,
    ps: usize,
    num_pages: usize,
    num_page_ids: usize,
) -> usize {
    let rows = num_pages * ps;
    let mut row = rows;
    let b = batch_indices[i];
    let pos = positions[i];
    if b >= 0 && pos >= 0 && usize::cast_from(b) < batch {
        let b = usize::cast_from(b);
        let pos = usize::cast_from(pos);
        let start = clamp_index(kv_indptr[b], num_page_ids);
        let end = clamp_index(kv_indptr[b + 1], num_page_ids).max(start);
        let last = clamp_index(kv_last[b], ps).max(1);
        let pi = start + pos / ps;
        // Inside the sequence: a page before the last one, or the last page up to its length.
        let inside = pi + 1 < end || (pi + 1 == end && pos % ps < last);
        if inside {
            let page = kv_indices[pi];
            if page >= 0 && usize::cast_from(page) < num_pages {
                row = usize::cast_from(page) * ps + pos % ps;
            }
        }
    }
    row
}

/// `v` clamped to 0..=hi (negative values become 0).
#[cube]
pub(crate) fn clamp_index(v: i32, hi: usize) -> usize {
    let mut r = 0usize;
    if v > 0 {
        r = usize::cast_from(v).min(hi);
    }
    r
}

/// Scatter whole-word rows: thread per (row, word of the row), K and V together.
#[cube(launch_unchecked)]
fn append_words_kernel(
    append_k: &Array<u32>,
    append_v: &Array<u32>,
    batch_indices: &Array<i32>,
    positions: &Array<i32>,
    kv_indices: &Array<i32>,
    kv_indptr: &Array<i32>,
    kv_last: &Array<i32>,
    k_cache: &mut Array<u32>,
    v_cache: &mut Array<u32>,
    n: usize,
    row_words: usize,
    batch: usize,
    ps: usize,
    num_pages: usize,
    num_page_ids: usize,
) {
    let w = linear_pos();
    if w < n * row_words {
        let i = w / row_words;
        let j = w % row_words;
        let row = target_row(batch_indices, positions, kv_indices, kv_indptr, kv_last, i, batch, ps, num_pages, num_page_ids);
        if row < num_pages * ps {
            k_cache[row * row_words + j] = append_k[w];
            v_cache[row * row_words + j] = append_v[w];
        }
    }
}

/// Scatter 16-bit rows of odd length: thread per element; the element's half of its word
/// is cleared and set with atomics, so a neighbouring row writing the other half is kept.
#[cube(launch_unchecked)]
fn append_halves_kernel(
    append_k: &Array<u32>,
    append_v: &Array<u32>,
    batch_indices: &Array<i32>,
    positions: &Array<i32>,
    kv_indices: &Array<i32>,
    kv_indptr: &Array<i32>,
    kv_last: &Array<i32>,
    k_cache: &mut Array<Atomic<u32>>,
    v_cache: &mut Array<Atomic<u32>>,
    n: usize,
    row_elems: usize,
    batch: usize,
    ps: usize,
    num_pages: usize,
    num_page_ids: usize,
) {
    let e = linear_pos();
    if e < n * row_elems {
        let i = e / row_elems;
        let j = e % row_elems;
        let row = target_row(batch_indices, positions, kv_indices, kv_indptr, kv_last, i, batch, ps, num_pages, num_page_ids);
        if row < num_pages * ps {
            let shift = u32::cast_from(e % 2) * 16;
            let kh = (append_k[e / 2] >> shift) & 0xffff;
            let vh = (append_v[e / 2] >> shift) & 0xffff;
            let at = row * row_elems + j;
            let dshift = u32::cast_from(at % 2) * 16;
            let keep = !(0xffffu32 << dshift);
            k_cache[at / 2].fetch_and(keep);
            k_cache[at / 2].fetch_or(kh << dshift);
            v_cache[at / 2].fetch_and(keep);
            v_cache[at / 2].fetch_or(vh << dshift);
        }
    }
}

#[cube(launch_unchecked)]
fn quantize_kernel<F: Float>(
    src: &Array<F>,
    w_out: &mut Array<u32>,
    s_out: &mut Array<F>,
    b_out: &mut Array<F>,
    hk: usize,
    max_seq: usize,
    position: usize,
    #[comptime] d: usize,
    #[comptime] g: usize,
    #[comptime] bits: usize,
) {
    let groups = comptime!(d / g);
    let per_word = comptime!(32 / bits);
    let words = comptime!(d / per_word);
    let levels = comptime!(((1u32 << bits) - 1) as f32);
    let i = linear_pos();
    if i < hk * groups {
        let h = i / groups;
        let gi = i % groups;
        let base = h * d + gi * g;
        let mut lo = f32::cast_from(src[base]);
        let mut hi = lo;
        for e in 1..g {
            let x = f32::cast_from(src[base + e]);
            lo = lo.min(x);
            hi = hi.max(x);
        }
        // Scale and bias as stored (rounded to the dtype), then used in f32.
        let s_t = F::cast_from((hi - lo) / levels);
        let b_t = F::cast_from(lo);
        let scale = f32::cast_from(s_t);
        let bias = f32::cast_from(b_t);
        let slot = h * max_seq + position;
        s_out[slot * groups + gi] = s_t;
        b_out[slot * groups + gi] = b_t;
        let first_word = slot * words + gi * comptime!(g / per_word);
        for wi in 0..comptime!(g / per_word) {
            let mut word = 0u32;
            #[unroll]
            for k in 0..per_word {
                let x = f32::cast_from(src[base + wi * per_word + k]);
                let q = ((x - bias) / scale).round().clamp(0.0, levels);
                let q = select(scale == 0.0, 0u32, u32::cast_from(q));
                word |= q << comptime!((k * bits) as u32);
            }
            w_out[first_word + wi] = word;
        }
    }
}

#[cube(launch_unchecked)]
fn dequantize_kernel<F: Float>(
    w: &Array<u32>,
    s: &Array<F>,
    b: &Array<F>,
    out: &mut Array<F>,
    hk: usize,
    max_seq: usize,
    start: usize,
    n_pos: usize,
    #[comptime] d: usize,
    #[comptime] g: usize,
    #[comptime] bits: usize,
) {
    let groups = comptime!(d / g);
    let per_word = comptime!(32 / bits);
    let words = comptime!(d / per_word);
    let mask = comptime!((1u32 << bits) - 1);
    let i = linear_pos();
    if i < hk * n_pos * d {
        let dd = i % d;
        let row = i / d;
        let h = row / n_pos;
        let slot = h * max_seq + start + row % n_pos;
        let q = (w[slot * words + dd / per_word] >> (u32::cast_from(dd % per_word) * comptime!(bits as u32))) & mask;
        let gi = slot * groups + dd / g;
        out[i] = F::cast_from(fma(f32::cast_from(q), f32::cast_from(s[gi]), f32::cast_from(b[gi])));
    }
}

// ---------------------------------------------------------------- wrappers

/// Copy a device tensor into a new buffer of the same size.
pub(crate) fn copy_tensor<R: Runtime>(d: &Device<R>, t: &GpuTensor) -> GpuTensor {
    let words = t.words();
    let out = d.alloc_bytes(words * 4);
    let (count, dim) = grid_1d(words);
    // SAFETY: `t` holds `words` whole words (checked against its spec by the caller) and
    // `out` was allocated for as many; thread i < words copies word i.
    unsafe {
        copy_words_kernel::launch_unchecked::<R>(
            &d.client,
            count,
            dim,
            ArrayArg::from_raw_parts(t.handle.clone(), words),
            ArrayArg::from_raw_parts(out.clone(), words),
            words,
        )
    }
    GpuTensor::new(out, t.dtype, &t.shape)
}

/// `append_paged_kv_cache`: copies of the caches with the new rows written.
pub fn append_paged_kv_cache<R: Runtime>(d: &Device<R>, p: &AppendKvParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "append_paged_kv_cache";
    let k_out = copy_tensor(d, input(OP, inputs, "k_cache")?);
    let v_out = copy_tensor(d, input(OP, inputs, "v_cache")?);
    append_paged_kv_cache_in_place(d, p, inputs, &k_out, &v_out)?;
    Ok(GpuTensors::from([("k_cache_out".to_string(), k_out), ("v_cache_out".to_string(), v_out)]))
}

/// Write the rows of `append_k`/`append_v` into `k_cache`/`v_cache` (tensors of the op's
/// cache shape and dtype) in place; the `k_cache`/`v_cache` entries of `inputs` are not read.
/// Values are not checked here ([`ingot_core::Backend::run`] checks them on the host): a row
/// whose sequence, position or page id is out of range is skipped, and two rows on one slot
/// leave one of them (which one is unspecified).
pub fn append_paged_kv_cache_in_place<R: Runtime>(
    d: &Device<R>,
    p: &AppendKvParams,
    inputs: &GpuTensors,
    k_cache: &GpuTensor,
    v_cache: &GpuTensor,
) -> Result<()> {
    const OP: &str = "append_paged_kv_cache";
    let cache_shape = [p.num_pages, p.page_size, p.num_kv_heads, p.head_size];
    for (name, t) in [("k_cache", k_cache), ("v_cache", v_cache)] {
        ensure!(
            t.dtype == p.dtype && t.shape == cache_shape,
            OP,
            "{name} is {} {:?}, expected {} {cache_shape:?}",
            t.dtype,
            t.shape,
            p.dtype
        );
        ensure!(t.handle.size() as usize >= t.bytes(), OP, "{name} buffer is smaller than its shape");
    }
    check_indexable(OP, "the cache", p.num_pages * p.page_size * p.num_kv_heads * p.head_size)?;
    let n = p.num_tokens;
    let row_elems = p.num_kv_heads * p.head_size;
    let ak = input(OP, inputs, "append_k")?;
    let av = input(OP, inputs, "append_v")?;
    let bi = input(OP, inputs, "batch_indices")?.handle.clone();
    let pos = input(OP, inputs, "positions")?.handle.clone();
    let idx = input(OP, inputs, "kv_indices")?.handle.clone();
    let ptr = input(OP, inputs, "kv_indptr")?.handle.clone();
    let last = input(OP, inputs, "kv_last_page_len")?.handle.clone();
    let (ak_words, cache_words) = (ak.words(), k_cache.words());
    let row_bytes = p.dtype.bytes_for(row_elems).unwrap_or(0);
    let ints = |h: cubecl::server::Handle, len: usize| unsafe { ArrayArg::from_raw_parts(h, len) };
    if row_bytes.is_multiple_of(4) {
        let row_words = row_bytes / 4;
        let (count, dim) = grid_1d(n * row_words);
        // SAFETY: append_k/v hold n rows of row_words words; thread w < n·row_words reads
        // word w. batch_indices/positions hold n entries, read at i < n; kv_indptr (batch+1)
        // and kv_last_page_len (batch) are read at b < batch only; kv_indices is read below
        // kv_indptr[b+1] clamped to num_page_ids. A target row is used only when its page id
        // is in 0..num_pages, so cache words row·row_words + j < num_pages·page_size·row_words.
        unsafe {
            append_words_kernel::launch_unchecked::<R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(ak.handle.clone(), ak_words),
                ArrayArg::from_raw_parts(av.handle.clone(), ak_words),
                ints(bi, n),
                ints(pos, n),
                ints(idx, p.num_page_ids),
                ints(ptr, p.batch_size + 1),
                ints(last, p.batch_size),
                ArrayArg::from_raw_parts(k_cache.handle.clone(), cache_words),
                ArrayArg::from_raw_parts(v_cache.handle.clone(), cache_words),
                n,
                row_words,
                p.batch_size,
                p.page_size,
                p.num_pages,
                p.num_page_ids,
            )
        }
    } else {
        let (count, dim) = grid_1d(n * row_elems);
        // SAFETY: as above, per element: thread e < n·row_elems reads the half of word e/2 of
        // append_k/v, and writes the half of cache word (row·row_elems + j)/2 with row in range.
        unsafe {
            append_halves_kernel::launch_unchecked::<R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(ak.handle.clone(), ak_words),
                ArrayArg::from_raw_parts(av.handle.clone(), ak_words),
                ints(bi, n),
                ints(pos, n),
                ints(idx, p.num_page_ids),
                ints(ptr, p.batch_size + 1),
                ints(last, p.batch_size),
                ArrayArg::from_raw_parts(k_cache.handle.clone(), cache_words),
                ArrayArg::from_raw_parts(v_cache.handle.clone(), cache_words),
                n,
                row_elems,
                p.batch_size,
                p.page_size,
                p.num_pages,
                p.num_page_ids,
            )
        }
    }
    Ok(())
}

/// `quantize_kv`: copies of the cache with slot `position` of every head rewritten.
pub fn quantize_kv<R: Runtime>(d: &Device<R>, p: &KvQuantParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "quantize_kv";
    let (hk, dim, g, bits) = (p.n_kv_heads, p.head_dim, p.group_size, p.bits);
    check_indexable(OP, "the cache", hk * p.max_seq * dim)?;
    let src = input(OP, inputs, "src")?.handle.clone();
    let w = copy_tensor(d, input(OP, inputs, "cache_w")?);
    let s = copy_tensor(d, input(OP, inputs, "cache_s")?);
    let b = copy_tensor(d, input(OP, inputs, "cache_b")?);
    let groups = dim / g;
    let (sn, wn) = (hk * p.max_seq * groups, hk * p.max_seq * dim * bits / 32);
    let (count, cdim) = grid_1d(hk * groups);
    with_float!(p.dtype, F => {
        // SAFETY: src holds hk·dim elements, read at h·dim + gi·g + e < hk·dim; the copies
        // hold the cache shapes (wn words, sn scales and biases); thread (h, gi) writes
        // slot h·max_seq + position < hk·max_seq (position < max_seq, checked by the
        // params): scale/bias index slot·groups + gi < sn and the g/(32/bits) words of its
        // group, below (slot + 1)·dim·bits/32 <= wn.
        unsafe {
            quantize_kernel::launch_unchecked::<F, R>(
                &d.client,
                count,
                cdim,
                ArrayArg::from_raw_parts(src, hk * dim),
                ArrayArg::from_raw_parts(w.handle.clone(), wn),
                ArrayArg::from_raw_parts(s.handle.clone(), sn),
                ArrayArg::from_raw_parts(b.handle.clone(), sn),
                hk,
                p.max_seq,
                p.position,
                dim,
                g,
                bits,
            )
        }
    });
    Ok(GpuTensors::from([("cache_w_out".to_string(), w), ("cache_s_out".to_string(), s), ("cache_b_out".to_string(), b)]))
}

/// `dequantize_kv`: positions start..start+n_positions of every head, as `dtype`.
pub fn dequantize_kv<R: Runtime>(d: &Device<R>, p: &KvDequantParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    const OP: &str = "dequantize_kv";
    let (hk, dim, g, bits) = (p.n_kv_heads, p.head_dim, p.group_size, p.bits);
    check_indexable(OP, "the cache", hk * p.max_seq * dim)?;
    let w = input(OP, inputs, "cache_w")?.handle.clone();
    let s = input(OP, inputs, "cache_s")?.handle.clone();
    let b = input(OP, inputs, "cache_b")?.handle.clone();
    let (sn, wn) = (hk * p.max_seq * (dim / g), hk * p.max_seq * dim * bits / 32);
    let n = hk * p.n_positions * dim;
    let out = d.alloc(p.dtype, n);
    let (count, cdim) = grid_1d(n);
    with_float!(p.dtype, F => {
        // SAFETY: the cache inputs hold wn words and sn scales/biases (`check_inputs`);
        // thread i < n reads slot h·max_seq + start + (row mod n_positions) < hk·max_seq
        // (start + n_positions <= max_seq, checked by the params) and writes out[i], which
        // was allocated for n elements.
        unsafe {
            dequantize_kernel::launch_unchecked::<F, R>(
                &d.client,
                count,
                cdim,
                ArrayArg::from_raw_parts(w, wn),
                ArrayArg::from_raw_parts(s, sn),
                ArrayArg::from_raw_parts(b, sn),
                ArrayArg::from_raw_parts(out.clone(), n),
                hk,
                p.max_seq,
                p.start,
                p.n_positions,
                dim,
                g,
                bits,
            )
        }
    });
    Ok(GpuTensors::from([("output".to_string(), GpuTensor::new(out, p.dtype, &[hk, p.n_positions, dim]))]))
}

// ---------------------------------------------------------------- registration

/// Which of this family's ops have a kernel here, for which dtypes ([`crate::Support`]).
pub(crate) fn support(op: &ingot_core::Op) -> crate::Support {
    use ingot_core::Op;
    match op {
        // Append only moves bits.
        Op::AppendPagedKvCache(_) => crate::Support::bits_if_float(op),
        Op::QuantizeKv(_) | Op::DequantizeKv(_) => crate::Support::float(op),
        _ => crate::Support::None,
    }
}

/// The checks of input values this family's kernels leave to the host ([`crate::GpuBackend`]'s `run`):
/// page tables, appended rows' targets and finite sources, as the CPU reference.
pub(crate) fn check_host(op: &ingot_core::Op, inputs: &Tensors) -> Result<()> {
    match op {
        ingot_core::Op::AppendPagedKvCache(p) => check_append(p, inputs),
        ingot_core::Op::QuantizeKv(_) => check_quantize(inputs),
        _ => Ok(()),
    }
}

/// The in-place form of `append_paged_kv_cache` (`Device::run_into`).
pub(crate) fn run_into<R: Runtime>(
    d: &Device<R>,
    op: &ingot_core::Op,
    inputs: &GpuTensors,
    outputs: &GpuTensors,
) -> Option<Result<GpuTensors>> {
    match op {
        ingot_core::Op::AppendPagedKvCache(p) if outputs.contains_key("k_cache_out") && outputs.contains_key("v_cache_out") => {
            Some(append_paged_kv_cache_in_place(d, p, inputs, &outputs["k_cache_out"], &outputs["v_cache_out"]).map(|()| GpuTensors::new()))
        }
        _ => None,
    }
}
