//! Device kernels a model's forward pass needs besides the protocol's ops: a bias added to
//! every row, a scale, RoPE with caller-given inverse frequencies (Llama 3's stored
//! `rope_freqs` divisors, Gemma 3's two bases), and word copies and fills for KV pages.
//! They work on f32 tensors (the model path's activation dtype) and on raw words, and
//! check shapes, never values.

use crate::device::{grid_1d, linear_pos, Device, GpuTensor};
use crate::rope::rope_kernel;
use cubecl::prelude::*;
use ingot_core::{ensure, DType, Result};

#[cube(launch_unchecked)]
fn bias_kernel(x: &Array<f32>, b: &Array<f32>, out: &mut Array<f32>, n: usize, width: usize) {
    let i = linear_pos();
    if i < n {
        out[i] = x[i] + b[i % width];
    }
}

#[cube(launch_unchecked)]
fn scale_kernel(x: &Array<f32>, out: &mut Array<f32>, n: usize, s: f32) {
    let i = linear_pos();
    if i < n {
        out[i] = x[i] * s;
    }
}

#[cube(launch_unchecked)]
fn copy_range_kernel(src: &Array<u32>, dst: &mut Array<u32>, src_at: usize, dst_at: usize, n: usize) {
    let i = linear_pos();
    if i < n {
        dst[dst_at + i] = src[src_at + i];
    }
}

#[cube(launch_unchecked)]
fn columns_kernel(src: &Array<f32>, dst: &mut Array<f32>, n: usize, w: usize, dst_w: usize, at: usize) {
    let i = linear_pos();
    if i < n {
        let r = i / w;
        dst[r * dst_w + at + i % w] = src[i];
    }
}

#[cube(launch_unchecked)]
fn fill_kernel(dst: &mut Array<u32>, n: usize, value: u32) {
    let i = linear_pos();
    if i < n {
        dst[i] = value;
    }
}

const OP: &str = "model";

fn f32_rows(what: &str, t: &GpuTensor) -> Result<(usize, usize)> {
    ensure!(t.dtype == DType::F32, OP, "{what} must be f32, got {}", t.dtype);
    ensure!(!t.shape.is_empty(), OP, "{what} has no shape");
    let width = *t.shape.last().unwrap_or(&1);
    ensure!(t.handle.size() as usize >= t.bytes(), OP, "{what} buffer is smaller than its shape {:?}", t.shape);
    Ok((t.numel() / width.max(1), width))
}

/// x + b for every row of x [.., width], b [width] (both f32); a new tensor.
pub fn add_bias<R: Runtime>(d: &Device<R>, x: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
    let (_, width) = f32_rows("x", x)?;
    f32_rows("bias", b)?;
    ensure!(b.numel() == width && width > 0, OP, "bias has {} values, rows have {width}", b.numel());
    let n = x.numel();
    let out = d.alloc(DType::F32, n);
    let (count, dim) = grid_1d(n);
    // SAFETY: x holds n f32 and b `width` (checked above), out was allocated for n; thread
    // i < n reads x[i] and b[i % width] and writes out[i].
    unsafe {
        bias_kernel::launch_unchecked::<R>(
            &d.client,
            count,
            dim,
            ArrayArg::from_raw_parts(x.handle.clone(), n),
            ArrayArg::from_raw_parts(b.handle.clone(), width),
            ArrayArg::from_raw_parts(out.clone(), n),
            n,
            width,
        )
    }
    Ok(GpuTensor::new(out, DType::F32, &x.shape))
}

/// x · s (f32); a new tensor.
pub fn scale<R: Runtime>(d: &Device<R>, x: &GpuTensor, s: f32) -> Result<GpuTensor> {
    f32_rows("x", x)?;
    let n = x.numel();
    let out = d.alloc(DType::F32, n);
    let (count, dim) = grid_1d(n);
    // SAFETY: x holds n f32 (checked above), out was allocated for n; thread i < n touches index i.
    unsafe {
        scale_kernel::launch_unchecked::<R>(
            &d.client,
            count,
            dim,
            ArrayArg::from_raw_parts(x.handle.clone(), n),
            ArrayArg::from_raw_parts(out.clone(), n),
            n,
            s,
        )
    }
    Ok(GpuTensor::new(out, DType::F32, &x.shape))
}

/// RoPE of x [tokens, heads, head_size] (f32) at positions `pos` [tokens] (i32, not
/// negative: the caller's to ensure), rotating the first `rotary_dim` elements of each head
/// with the given inverse frequencies [rotary_dim / 2] (f32), NeoX pairs (i, i + r/2) or
/// GPT-J pairs (2i, 2i + 1) when `interleave`. The same kernel and angle reduction as the
/// protocol's `rope`; a new tensor.
pub fn rope_with_freqs<R: Runtime>(
    d: &Device<R>,
    x: &GpuTensor,
    pos: &GpuTensor,
    inv_freq: &GpuTensor,
    rotary_dim: usize,
    interleave: bool,
) -> Result<GpuTensor> {
    f32_rows("x", x)?;
    ensure!(x.shape.len() == 3, OP, "rope input must be [tokens, heads, head_size], got {:?}", x.shape);
    let (t, heads, hd) = (x.shape[0], x.shape[1], x.shape[2]);
    ensure!(rotary_dim % 2 == 0 && rotary_dim <= hd && rotary_dim > 0, OP, "rotary_dim {rotary_dim} must be even, in 2..={hd}");
    ensure!(pos.dtype == DType::I32 && pos.numel() == t, OP, "positions must be {t} i32, got {} {:?}", pos.dtype, pos.shape);
    ensure!(
        inv_freq.dtype == DType::F32 && inv_freq.numel() == rotary_dim / 2,
        OP,
        "inverse frequencies must be {} f32, got {} {:?}",
        rotary_dim / 2,
        inv_freq.dtype,
        inv_freq.shape
    );
    let n = t * heads * hd;
    let out = d.alloc(DType::F32, n);
    let (count, dim) = grid_1d(n);
    // SAFETY: x holds n f32, pos t entries, inv_freq rotary_dim/2 (checked above); out was
    // allocated for n; pair indices stay inside the element's own head row.
    unsafe {
        rope_kernel::launch_unchecked::<f32, R>(
            &d.client,
            count,
            dim,
            ArrayArg::from_raw_parts(x.handle.clone(), n),
            ArrayArg::from_raw_parts(pos.handle.clone(), t),
            ArrayArg::from_raw_parts(inv_freq.handle.clone(), rotary_dim / 2),
            ArrayArg::from_raw_parts(out.clone(), n),
            n,
            heads,
            hd,
            rotary_dim,
            interleave,
        )
    }
    Ok(GpuTensor::new(out, DType::F32, &x.shape))
}

/// Copy `words` u32 words from `src` at word `src_at` to `dst` at word `dst_at`, in place.
/// The two ranges must not overlap when `src` and `dst` share a buffer.
pub fn copy_words<R: Runtime>(d: &Device<R>, src: &GpuTensor, src_at: usize, dst: &GpuTensor, dst_at: usize, words: usize) -> Result<()> {
    ensure!(src_at.checked_add(words).is_some_and(|e| e <= src.words()), OP, "copy source {src_at}+{words} words is outside its tensor");
    ensure!(dst_at.checked_add(words).is_some_and(|e| e <= dst.words()), OP, "copy target {dst_at}+{words} words is outside its tensor");
    if words == 0 {
        return Ok(());
    }
    let (count, dim) = grid_1d(words);
    // SAFETY: both ranges lie inside their tensors' whole words (checked above); thread
    // i < words reads src[src_at + i] and writes dst[dst_at + i].
    unsafe {
        copy_range_kernel::launch_unchecked::<R>(
            &d.client,
            count,
            dim,
            ArrayArg::from_raw_parts(src.handle.clone(), src.words()),
            ArrayArg::from_raw_parts(dst.handle.clone(), dst.words()),
            src_at,
            dst_at,
            words,
        )
    }
    Ok(())
}

/// Copy `src` [rows, w] (f32) into columns at..at + w of `dst` [rows, W] (f32), in place.
pub fn copy_columns<R: Runtime>(d: &Device<R>, src: &GpuTensor, dst: &GpuTensor, at: usize) -> Result<()> {
    let (rows, w) = f32_rows("src", src)?;
    let (drows, dst_w) = f32_rows("dst", dst)?;
    ensure!(rows == drows, OP, "copy_columns: {rows} source rows, {drows} target rows");
    ensure!(at.checked_add(w).is_some_and(|e| e <= dst_w), OP, "copy_columns: columns {at}+{w} exceed the target's {dst_w}");
    let n = rows * w;
    if n == 0 {
        return Ok(());
    }
    let (count, dim) = grid_1d(n);
    // SAFETY: src holds rows·w f32 and dst rows·dst_w (checked above); thread i < n writes
    // row i / w, column at + i % w < dst_w.
    unsafe {
        columns_kernel::launch_unchecked::<R>(
            &d.client,
            count,
            dim,
            ArrayArg::from_raw_parts(src.handle.clone(), n),
            ArrayArg::from_raw_parts(dst.handle.clone(), rows * dst_w),
            n,
            w,
            dst_w,
            at,
        )
    }
    Ok(())
}

/// A new tensor of `dtype` and `shape` with every bit zero.
pub fn zeros<R: Runtime>(d: &Device<R>, dtype: DType, shape: &[usize]) -> GpuTensor {
    let numel: usize = shape.iter().product();
    let h = d.alloc(dtype, numel);
    let t = GpuTensor::new(h, dtype, shape);
    let words = t.words().max(1);
    let (count, dim) = grid_1d(words);
    // SAFETY: the buffer was allocated for at least `words` whole words; thread i < words writes word i.
    unsafe { fill_kernel::launch_unchecked::<R>(&d.client, count, dim, ArrayArg::from_raw_parts(t.handle.clone(), words), words, 0u32) }
    t
}
