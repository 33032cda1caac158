//! Copies: `copy_pages` (whole pages of a paged cache onto other pages) and
//! `write_columns` (a [rows, w] block into columns offset..offset+w of a wider matrix).
//!
//! Both move bits, never values (as `ingot_cpu::copy`), so every dtype of
//! [`ingot_core::COPY_DTYPES`] runs on every device (lavapipe has no bf16 arithmetic) and
//! NaN payloads survive. Where every unit copied is whole u32 words (4-byte dtypes; 16-bit
//! pages of an even element count; 16-bit columns with even width, target width and
//! offset) one thread copies one word. Otherwise one thread copies one 16-bit element,
//! clearing and setting its half of the target word with atomic and/or, so two elements
//! sharing a word never lose each other's write.
//!
//! The ops' outputs are new tensors: the input is copied first, then updated in place by
//! [`copy_pages_in_place`] / [`write_columns_in_place`], which `Device::run_into` calls
//! directly on a KV pool's pages or a partly written matrix. The device path reads no
//! values back: a page copy with an id out of range is skipped (so no id makes a kernel
//! write out of bounds), and duplicate targets or a page both read and written leave
//! unspecified (in-bounds) contents; [`ingot_core::Backend::run`] rejects those on the host
//! first, with the reference's messages.

use crate::device::{grid_1d, input, linear_pos, Device, GpuTensor, GpuTensors};
use crate::kv::{check_indexable, copy_tensor};
use cubecl::prelude::*;
use ingot_core::{ensure, CopyPagesParams, Result, WriteColumnsParams};

/// Whether page ids `s` and `d` are both in 0..num_pages.
#[cube]
fn pages_ok(s: i32, d: i32, num_pages: usize) -> bool {
    s >= 0 && d >= 0 && usize::cast_from(s) < num_pages && usize::cast_from(d) < num_pages
}

/// Thread per (copy, word of a page).
#[cube(launch_unchecked)]
fn copy_pages_words_kernel(cache: &mut Array<u32>, src: &Array<i32>, dst: &Array<i32>, n: usize, page_words: usize, num_pages: usize) {
    let w = linear_pos();
    if w < n * page_words {
        let c = w / page_words;
        let j = w % page_words;
        let s = src[c];
        let d = dst[c];
        if pages_ok(s, d, num_pages) {
            cache[usize::cast_from(d) * page_words + j] = cache[usize::cast_from(s) * page_words + j];
        }
    }
}

/// Thread per (copy, 16-bit element of a page) for pages of an odd element count.
#[cube(launch_unchecked)]
fn copy_pages_halves_kernel(
    cache: &mut Array<Atomic<u32>>,
    src: &Array<i32>,
    dst: &Array<i32>,
    n: usize,
    page_elems: usize,
    num_pages: usize,
) {
    let e = linear_pos();
    if e < n * page_elems {
        let c = e / page_elems;
        let j = e % page_elems;
        let s = src[c];
        let d = dst[c];
        if pages_ok(s, d, num_pages) {
            let from = usize::cast_from(s) * page_elems + j;
            let to = usize::cast_from(d) * page_elems + j;
            let v = (cache[from / 2].load() >> (u32::cast_from(from % 2) * 16)) & 0xffff;
            let shift = u32::cast_from(to % 2) * 16;
            cache[to / 2].fetch_and(!(0xffffu32 << shift));
            cache[to / 2].fetch_or(v << shift);
        }
    }
}

/// Thread per source unit (a word): unit i of row i / w goes to column at + i mod w.
#[cube(launch_unchecked)]
fn columns_words_kernel(src: &Array<u32>, out: &mut Array<u32>, n: usize, w: usize, dst_w: usize, at: usize) {
    let i = linear_pos();
    if i < n {
        out[(i / w) * dst_w + at + i % w] = src[i];
    }
}

/// Thread per 16-bit source element, written into its half of the target word.
#[cube(launch_unchecked)]
fn columns_halves_kernel(src: &Array<u32>, out: &mut Array<Atomic<u32>>, n: usize, w: usize, dst_w: usize, at: usize) {
    let i = linear_pos();
    if i < n {
        let v = (src[i / 2] >> (u32::cast_from(i % 2) * 16)) & 0xffff;
        let to = (i / w) * dst_w + at + i % w;
        let shift = u32::cast_from(to % 2) * 16;
        out[to / 2].fetch_and(!(0xffffu32 << shift));
        out[to / 2].fetch_or(v << shift);
    }
}

/// Fail unless `t` is a `dtype` tensor of `shape` whose buffer holds it.
fn check_target(op: &'static str, name: &str, t: &GpuTensor, dtype: ingot_core::DType, shape: &[usize]) -> Result<()> {
    ensure!(t.dtype == dtype && t.shape == shape, op, "{name} is {} {:?}, expected {dtype} {shape:?}", t.dtype, t.shape);
    ensure!(t.handle.size() as usize >= t.bytes(), op, "{name} buffer is smaller than its shape");
    Ok(())
}

/// `copy_pages`: a copy of the cache with the pages copied.
pub fn copy_pages<R: Runtime>(d: &Device<R>, p: &CopyPagesParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    let out = copy_tensor(d, input("copy_pages", inputs, "cache")?);
    copy_pages_in_place(d, p, inputs, &out)?;
    Ok(GpuTensors::from([("cache_out".to_string(), out)]))
}

/// Copy page src_pages[i] onto page dst_pages[i] of `cache` (a tensor of the op's cache
/// shape and dtype), in place; the `cache` entry of `inputs` is not read.
pub fn copy_pages_in_place<R: Runtime>(d: &Device<R>, p: &CopyPagesParams, inputs: &GpuTensors, cache: &GpuTensor) -> Result<()> {
    const OP: &str = "copy_pages";
    let page_elems = p.page_size * p.num_kv_heads * p.head_size;
    check_target(OP, "cache_out", cache, p.dtype, &[p.num_pages, p.page_size, p.num_kv_heads, p.head_size])?;
    check_indexable(OP, "the cache", p.num_pages * page_elems)?;
    let n = p.num_copies;
    let src = input(OP, inputs, "src_pages")?.handle.clone();
    let dst = input(OP, inputs, "dst_pages")?.handle.clone();
    let words = cache.words();
    let page_bytes = p.dtype.bytes_for(page_elems).unwrap_or(0);
    if page_bytes.is_multiple_of(4) {
        let page_words = page_bytes / 4;
        let (count, dim) = grid_1d(n * page_words);
        // SAFETY: src_pages and dst_pages hold n ids (`check_inputs`), read at c < n; a copy
        // runs only when both ids are in 0..num_pages, so the words touched, page·page_words
        // + j with j < page_words, lie below num_pages·page_words = the cache's words.
        unsafe {
            copy_pages_words_kernel::launch_unchecked::<R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(cache.handle.clone(), words),
                ArrayArg::from_raw_parts(src, n),
                ArrayArg::from_raw_parts(dst, n),
                n,
                page_words,
                p.num_pages,
            )
        }
    } else {
        let (count, dim) = grid_1d(n * page_elems);
        // SAFETY: as above per 16-bit element: element page·page_elems + j < num_pages·
        // page_elems lies in word (that)/2 < the cache's words.
        unsafe {
            copy_pages_halves_kernel::launch_unchecked::<R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(cache.handle.clone(), words),
                ArrayArg::from_raw_parts(src, n),
                ArrayArg::from_raw_parts(dst, n),
                n,
                page_elems,
                p.num_pages,
            )
        }
    }
    Ok(())
}

/// `write_columns`: a copy of `dst` with `src` written into its columns.
pub fn write_columns<R: Runtime>(d: &Device<R>, p: &WriteColumnsParams, inputs: &GpuTensors) -> Result<GpuTensors> {
    let out = copy_tensor(d, input("write_columns", inputs, "dst")?);
    write_columns_in_place(d, p, inputs, &out)?;
    Ok(GpuTensors::from([("output".to_string(), out)]))
}

/// Write `src` into columns offset..offset+src_width of `out` (a tensor of the op's output
/// shape and dtype), in place; the `dst` entry of `inputs` is not read, and `src` must not
/// share `out`'s buffer.
pub fn write_columns_in_place<R: Runtime>(d: &Device<R>, p: &WriteColumnsParams, inputs: &GpuTensors, out: &GpuTensor) -> Result<()> {
    const OP: &str = "write_columns";
    check_target(OP, "output", out, p.dtype, &[p.num_rows, p.dst_width])?;
    check_indexable(OP, "the output", p.num_rows * p.dst_width)?;
    let src = input(OP, inputs, "src")?;
    let (h, src_words, out_words) = (src.handle.clone(), src.words(), out.words());
    let (w, dw, at) = (p.src_width, p.dst_width, p.offset);
    // Elements per u32 word: 1 for 4-byte dtypes, 2 for 16-bit ones when everything is even.
    let per = 4 / p.dtype.type_size();
    if per == 1 || (w % 2 == 0 && dw % 2 == 0 && at % 2 == 0) {
        let (w, dw, at) = (w / per, dw / per, at / per);
        let n = p.num_rows * w;
        let (count, dim) = grid_1d(n);
        // SAFETY: src holds num_rows·w words (`check_inputs`), read at i < n; thread i writes
        // word (i / w)·dw + at + i mod w < num_rows·dw (at + w <= dw, checked by the params),
        // inside `out`'s words.
        unsafe {
            columns_words_kernel::launch_unchecked::<R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(h, src_words),
                ArrayArg::from_raw_parts(out.handle.clone(), out_words),
                n,
                w,
                dw,
                at,
            )
        }
    } else {
        let n = p.num_rows * w;
        let (count, dim) = grid_1d(n);
        // SAFETY: as above per 16-bit element: element i < n of src lies in word i/2 <
        // src_words, target element (i / w)·dw + at + i mod w < num_rows·dw in word (that)/2
        // < out_words.
        unsafe {
            columns_halves_kernel::launch_unchecked::<R>(
                &d.client,
                count,
                dim,
                ArrayArg::from_raw_parts(h, src_words),
                ArrayArg::from_raw_parts(out.handle.clone(), out_words),
                n,
                w,
                dw,
                at,
            )
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- registration

/// Which of this family's ops have a kernel here, for which dtypes ([`crate::Support`]).
pub(crate) fn support(op: &ingot_core::Op) -> crate::Support {
    use ingot_core::Op;
    match op {
        // Bit copies: every dtype the params accept.
        Op::CopyPages(_) | Op::WriteColumns(_) => crate::Support::Bits,
        _ => crate::Support::None,
    }
}

/// The checks of input values this family's kernels leave to the host ([`crate::GpuBackend`]'s `run`).
pub(crate) fn check_host(op: &ingot_core::Op, inputs: &ingot_core::Tensors) -> Result<()> {
    match op {
        ingot_core::Op::CopyPages(p) => p.check_pages(op.name(), &inputs["src_pages"].to_i32()?, &inputs["dst_pages"].to_i32()?),
        _ => Ok(()),
    }
}

/// The in-place forms of this family's ops (`Device::run_into`).
pub(crate) fn run_into<R: Runtime>(
    d: &Device<R>,
    op: &ingot_core::Op,
    inputs: &GpuTensors,
    outputs: &GpuTensors,
) -> Option<Result<GpuTensors>> {
    use ingot_core::Op;
    match op {
        // Page copies inside `cache_out` (the `cache` input is not read: pass the same
        // tensor). Ids are not read back: out-of-range copies are skipped.
        Op::CopyPages(p) if outputs.contains_key("cache_out") => {
            Some(copy_pages_in_place(d, p, inputs, &outputs["cache_out"]).map(|()| GpuTensors::new()))
        }
        // `src` into the columns of `output` (the `dst` input is not read).
        Op::WriteColumns(p) if outputs.contains_key("output") => {
            Some(write_columns_in_place(d, p, inputs, &outputs["output"]).map(|()| GpuTensors::new()))
        }
        _ => None,
    }
}
