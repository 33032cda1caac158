//! The CPU fast path used by models: kernels over borrowed weights (for example a
//! GGUF mmap), threads through rayon. Weights stay in their stored format. For the GGUF
//! block formats [`matmul_xwt`] quantizes each activation row once to 8-bit blocks and
//! runs integer dot products (see [`crate::simd`]); F32/F16/BF16 weights keep f32
//! activations. The reference ops in this crate are the oracle these kernels are tested
//! against.

use crate::quant::block_decoder;
use crate::simd::{self, Isa, Q8Ref, Q8Rows, RowKernel, MAX_ROWS};
use ingot_core::{DType, Error, Result};
use rayon::prelude::*;
use std::cell::Cell;

/// A [rows, cols] weight matrix in any weight format, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct WeightView<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    row_bytes: usize,
}

impl<'a> WeightView<'a> {
    /// Check that `data` holds exactly `rows` rows of `cols` values of `dtype`.
    pub fn new(dtype: DType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self> {
        block_decoder(dtype).ok_or_else(|| Error::invalid("weights", format!("{dtype} is not a weight format")))?;
        let row_bytes = dtype
            .bytes_for(cols)
            .ok_or_else(|| Error::invalid("weights", format!("row of {cols} is not a whole number of {dtype} blocks")))?;
        let want = row_bytes.checked_mul(rows);
        if want != Some(data.len()) {
            return Err(Error::invalid("weights", format!("{rows}x{cols} {dtype} needs {want:?} bytes, got {}", data.len())));
        }
        Ok(WeightView { dtype, rows, cols, data, row_bytes })
    }

    /// Decode row `r` into `out` (`cols` values).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        // The dtype was checked to be a weight format in `new`.
        let known = crate::quant::decode_row_unchecked(self.dtype, self.row_data(r), &mut out[..self.cols]);
        debug_assert!(known);
    }

    /// The stored bytes of row `r`.
    pub fn row_data(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// The stored bytes of rows `r..r + c`.
    fn rows_data(&self, r: usize, c: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + c) * self.row_bytes]
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }
}

/// Dot product with eight independent f32 accumulators (vectorizes).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
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

/// Weight bytes per tile: a task runs all activation rows over one tile of weight rows
/// (kept in L1/L2) before the next.
const TILE_BYTES: usize = 32 * 1024;
/// Below this many multiply-adds a matmul stays on the calling thread; above it, each
/// rayon task gets at least this many (up to four tasks per thread).
const TASK_MACS: usize = 1 << 15;

thread_local! {
    /// Quantized activations, reused across calls (taken out while in use, so a
    /// nested call on the same thread, from rayon work stealing, gets its own).
    static Q8_SCRATCH: Cell<Q8Rows> = Cell::new(Q8Rows::default());
}

/// y[i, j] = Σ_l x[i, l]·W[j, l] for x [m, cols] and W [rows, cols]; y is [m, rows].
///
/// Block-format weights take 8-bit activations (ggml's scheme, see [`crate::simd`]), so
/// the result differs from exact math by the activation rounding (a relative error of
/// about 0.3% per dot product). Row `i` of y depends only on row `i` of x: the same
/// arithmetic runs whatever `m` is. Uses the fastest kernels this CPU has.
pub fn matmul_xwt(x: &[f32], m: usize, w: &WeightView, y: &mut [f32]) {
    matmul_xwt_with(Isa::best(), x, m, w, y)
}

/// [`matmul_xwt`] on a given instruction-set path (panics if this CPU lacks it).
pub fn matmul_xwt_with(isa: Isa, x: &[f32], m: usize, w: &WeightView, y: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert!(x.len() == m * k && y.len() == m * n, "matmul_xwt: shape mismatch");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y.fill(0.0);
        return;
    }
    let kernel = simd::kernels(isa, w.dtype).unwrap_or_else(|| panic!("matmul_xwt: no {isa:?} kernel for {} on this CPU", w.dtype));
    match kernel {
        RowKernel::Q8(dot) => {
            let mut q = Q8_SCRATCH.with(|c| c.take());
            q.quantize(isa, x, k);
            let rows: Vec<Q8Ref> = (0..m).map(|i| q.row(i)).collect();
            run_tiles(w, m, y, |j, c, i0, r, out| {
                // SAFETY: `kernels` returned this kernel for `isa`, so the CPU has it.
                unsafe { dot(w.rows_data(j, c), &rows[i0..i0 + r], out) }
            });
            drop(rows);
            Q8_SCRATCH.with(|c| c.set(q));
        }
        RowKernel::F32(dot) => {
            let rows: Vec<&[f32]> = x.chunks_exact(k).collect();
            run_tiles(w, m, y, |j, c, i0, r, out| {
                // SAFETY: as above.
                unsafe { dot(w.rows_data(j, c), &rows[i0..i0 + r], out) }
            })
        }
    }
}

/// The output pointer shared by the tasks of [`run_tiles`], which write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements of a buffer that outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `i` is in bounds and no other task writes it.
    unsafe fn write(self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }
}

/// Compute y [m, n] with `dot(j, c, i0, r, out)`, which sets `out[cc · r + rr]` to
/// y[i0 + rr, j + cc] for `c` weight rows and `r` activation rows (1 × 8, 1 × 4, then
/// 1 × the rest; 4 × 1 and 2 × 1 when m = 1). The weight rows are split among rayon tasks; each task walks
/// its rows in tiles of about [`TILE_BYTES`], running every group of activation rows
/// over a tile before the next.
fn run_tiles(w: &WeightView, m: usize, y: &mut [f32], dot: impl Fn(usize, usize, usize, usize, &mut [f32]) + Sync) {
    let n = w.rows;
    let threads = rayon::current_num_threads();
    let tasks = (n * m * w.cols / TASK_MACS).clamp(1, 4 * threads).min(n.div_ceil(4));
    let per = n.div_ceil(tasks).next_multiple_of(4);
    let tile = (TILE_BYTES / w.row_bytes.max(1)).max(1);
    let out = OutPtr(y.as_mut_ptr());
    let body = |t: usize| {
        let (j0, j1) = ((t * per).min(n), ((t + 1) * per).min(n));
        let mut buf = [0f32; MAX_ROWS];
        for jt in (j0..j1).step_by(tile) {
            let jt1 = (jt + tile).min(j1);
            if m == 1 {
                // One activation row: four weight rows per call, their FMA chains overlapping.
                let mut j = jt;
                while j < jt1 {
                    let c = match jt1 - j {
                        1 => 1,
                        2 | 3 => 2,
                        _ => 4,
                    };
                    dot(j, c, 0, 1, &mut buf[..c]);
                    for (cc, v) in buf[..c].iter().enumerate() {
                        // SAFETY: j + cc < n; column j + cc belongs to this task only.
                        unsafe { out.write(j + cc, *v) };
                    }
                    j += c;
                }
                continue;
            }
            let mut i0 = 0;
            while i0 < m {
                // Groups of 8 activation rows, then 4, then what is left.
                let r = match m - i0 {
                    8.. => 8,
                    4..=7 => 4,
                    rest => rest,
                };
                for j in jt..jt1 {
                    dot(j, 1, i0, r, &mut buf[..r]);
                    for (rr, v) in buf[..r].iter().enumerate() {
                        // SAFETY: i0 + rr < m and j < n; column j belongs to this task only.
                        unsafe { out.write((i0 + rr) * n + j, *v) };
                    }
                }
                i0 += r;
            }
        }
    };
    if tasks == 1 {
        body(0);
    } else {
        (0..tasks).into_par_iter().for_each(body);
    }
}

/// Elements at or above which an element-wise or row kernel splits its work among threads.
const PAR_ELEMS: usize = 1 << 15;

/// In-place RMSNorm of each `w.len()`-long row: x / sqrt(mean(x²) + eps) · w.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(w.len()) {
        rms_norm_row(row, w, eps as f64, false);
    }
}

/// One row of [`rms_norm_into`], in place: mean(x²) accumulates in f64, the scale is
/// rounded to f32 once, then x·scale·w (or x·scale·(1 + w)) in f32.
#[inline]
pub(crate) fn rms_norm_row(row: &mut [f32], w: &[f32], eps: f64, gemma: bool) {
    let ms = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / row.len() as f64;
    let inv = (1.0 / (ms + eps).sqrt()) as f32;
    if gemma {
        for (v, wi) in row.iter_mut().zip(w) {
            *v = *v * inv * (1.0 + wi);
        }
    } else {
        for (v, wi) in row.iter_mut().zip(w) {
            *v = *v * inv * wi;
        }
    }
}

/// RMSNorm of each `w.len()`-long row of `x` into `out`: x / sqrt(mean(x²) + eps) · w, or
/// · (1 + w) when `gemma` (Gemma's weights). Rows are split among threads when large.
pub fn rms_norm_into(x: &[f32], w: &[f32], eps: f64, gemma: bool, out: &mut [f32]) {
    assert!(x.len() == out.len() && !w.is_empty() && x.len() % w.len() == 0, "rms_norm_into: shape mismatch");
    out.copy_from_slice(x);
    let h = w.len();
    if out.len() >= PAR_ELEMS && out.len() > h {
        out.par_chunks_mut(h).for_each(|row| rms_norm_row(row, w, eps, gemma));
    } else {
        out.chunks_exact_mut(h).for_each(|row| rms_norm_row(row, w, eps, gemma));
    }
}

/// LayerNorm of each `g.len()`-long row of `x` into `out`: (x − mean) / sqrt(var + eps) · g
/// + b, biased variance. The row is computed in f64 and rounded once (a norm costs little
/// beside the matmuls, and f32 would lose `x − mean` when the mean is large against the
/// spread). Rows are split among threads when large.
pub fn layer_norm_into(x: &[f32], g: &[f32], b: &[f32], eps: f64, out: &mut [f32]) {
    assert!(x.len() == out.len() && !g.is_empty() && g.len() == b.len() && x.len() % g.len() == 0, "layer_norm_into: shape mismatch");
    let h = g.len();
    let row = |(o, x): (&mut [f32], &[f32])| {
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / h as f64;
        let var = x.iter().map(|&v| (f64::from(v) - mean) * (f64::from(v) - mean)).sum::<f64>() / h as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, &v), &g), &b) in o.iter_mut().zip(x).zip(g).zip(b) {
            *o = ((f64::from(v) - mean) * inv * f64::from(g) + f64::from(b)) as f32;
        }
    };
    if out.len() >= PAR_ELEMS && out.len() > h {
        out.par_chunks_mut(h).zip(x.par_chunks(h)).for_each(row);
    } else {
        out.chunks_exact_mut(h).zip(x.chunks_exact(h)).for_each(row);
    }
}

/// `out = f(a)` element-wise, split among threads when large.
pub fn map_into(a: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    assert!(a.len() == out.len(), "map_into: length mismatch");
    if out.len() >= PAR_ELEMS {
        const CHUNK: usize = 1 << 13;
        out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).for_each(|(o, a)| {
            for (o, a) in o.iter_mut().zip(a) {
                *o = f(*a);
            }
        });
    } else {
        for (o, a) in out.iter_mut().zip(a) {
            *o = f(*a);
        }
    }
}

/// `out = f(a, b)` element-wise, split among threads when large.
pub fn zip_into(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    assert!(a.len() == out.len() && b.len() == out.len(), "zip_into: length mismatch");
    if out.len() >= PAR_ELEMS {
        const CHUNK: usize = 1 << 13;
        out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK)).for_each(|((o, a), b)| {
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                *o = f(*a, *b);
            }
        });
    } else {
        for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
            *o = f(*a, *b);
        }
    }
}

/// The cos and sin of `pos · f` for each inverse frequency `f` (the angle in f64, then
/// rounded to f32), into `cs`.
pub fn rope_angles(pos: usize, inv_freq: impl Iterator<Item = f64>, cs: &mut Vec<(f32, f32)>) {
    cs.clear();
    cs.extend(inv_freq.map(|f| {
        let (s, c) = (pos as f64 * f).sin_cos();
        (c as f32, s as f32)
    }));
}

/// Rotate each `head_dim`-long head of `x` by the angles `cs` (from [`rope_angles`]);
/// `neox` pairs (i, i + cs.len()), else (2i, 2i+1). Dims from 2·cs.len() on are untouched.
pub fn rope_rotate(x: &mut [f32], head_dim: usize, cs: &[(f32, f32)], neox: bool) {
    let half = cs.len();
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &(c, s)) in cs.iter().enumerate() {
            let (ia, ib) = if neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
            let (a, b) = (head[ia], head[ib]);
            head[ia] = a * c - b * s;
            head[ib] = b * c + a * s;
        }
    }
}

/// Rotary embedding in place on `x` [n_heads, head_dim] at position `pos`.
/// `inv_freq` has rotary_dim/2 entries; `neox` pairs (i, i + r/2), else (2i, 2i+1).
pub fn rope(x: &mut [f32], head_dim: usize, pos: usize, inv_freq: &[f32], neox: bool) {
    let mut cs = Vec::with_capacity(inv_freq.len());
    rope_angles(pos, inv_freq.iter().map(|&f| f as f64), &mut cs);
    rope_rotate(x, head_dim, &cs, neox);
}

/// Causal attention of `q` [t, n_heads, d] (queries at positions start..start+t) over
/// cached `k`, `v` [ctx, n_kv, d] holding positions 0..start+t. Key j is visible to the
/// query at position p iff j ≤ p and (no window or p − j < window). Scores are
/// scale·q·k, soft-capped when `softcap` > 0. Returns [t, n_heads, d].
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
    start: usize,
    n_heads: usize,
    n_kv: usize,
    d: usize,
    scale: f32,
    window: Option<usize>,
    softcap: f32,
) -> Vec<f32> {
    attention_with(Isa::best(), q, k, v, t, start, n_heads, n_kv, d, scale, window, softcap)
}

/// [`attention`] on a given instruction-set path (the portable one if this CPU lacks it).
/// Each query's output depends only on that query and the cache, not on `t`.
#[allow(clippy::too_many_arguments)]
pub fn attention_with(
    isa: Isa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
    start: usize,
    n_heads: usize,
    n_kv: usize,
    d: usize,
    scale: f32,
    window: Option<usize>,
    softcap: f32,
) -> Vec<f32> {
    let group = n_heads / n_kv;
    let mut out = vec![0f32; t * n_heads * d];
    out.par_chunks_mut(d).enumerate().for_each_init(Vec::new, |s, (idx, o)| {
        let (ti, h) = (idx / n_heads, idx % n_heads);
        let p = start + ti;
        let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
        let qv = &q[idx * d..(idx + 1) * d];
        simd::attend(isa, qv, k, v, n_kv * d, (h / group) * d, lo, p, scale, softcap, s, o);
    });
    out
}

/// silu(x) = x·σ(x) in f32, with its limit 0 at −∞ (x / (1 + e^−x) would give −∞/∞).
#[inline]
pub fn silu(x: f32) -> f32 {
    if x == f32::NEG_INFINITY {
        0.0
    } else {
        x / (1.0 + (-x).exp())
    }
}

/// gelu_tanh(x) in f32 as x·σ(2u), u = √(2/π)(x + 0.044715x³) (no cancellation for
/// negative x), with its limit 0 at −∞.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // √(2/π)
    if x == f32::NEG_INFINITY {
        return 0.0;
    }
    let z = 2.0 * C * (x + 0.044715 * x * x * x);
    x / (1.0 + (-z).exp())
}

/// gate ← silu(gate)·up.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// gate ← gelu_tanh(gate)·up.
pub fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = gelu_tanh(*g) * u;
    }
}

/// Row-wise softmax of `x / temperature` into `out` (rows of `cols`): the max subtracted,
/// exponentials in f32, their sum in f64. A row whose max is not finite (+∞, or every
/// value −∞) gives NaN where the reference does. Rows are split among threads when large.
pub fn softmax_rows(x: &[f32], cols: usize, temperature: f32, out: &mut [f32]) {
    assert!(x.len() == out.len() && cols > 0 && x.len() % cols == 0, "softmax_rows: shape mismatch");
    let row = |(xr, o): (&[f32], &mut [f32])| {
        let mut m = f32::NEG_INFINITY;
        for (o, &v) in o.iter_mut().zip(xr) {
            *o = v / temperature;
            m = m.max(*o);
        }
        let mut z = 0f64;
        for o in o.iter_mut() {
            *o = (*o - m).exp();
            z += *o as f64;
        }
        let inv = 1.0 / z;
        for o in o.iter_mut() {
            *o = (*o as f64 * inv) as f32;
        }
    };
    if x.len() >= PAR_ELEMS && x.len() > cols {
        x.par_chunks(cols).zip(out.par_chunks_mut(cols)).for_each(row);
    } else {
        x.chunks(cols).zip(out.chunks_mut(cols)).for_each(row);
    }
}

/// Per row of `cols` values, the index of the largest (the first on ties; the first NaN,
/// which counts as largest, if any).
pub fn argmax_rows(x: &[f32], cols: usize, out: &mut [i32]) {
    assert!(cols > 0 && x.len() == out.len() * cols, "argmax_rows: shape mismatch");
    for (row, o) in x.chunks_exact(cols).zip(out) {
        let mut best = 0;
        for (i, &v) in row.iter().enumerate() {
            if v.is_nan() {
                best = i;
                break;
            }
            if v > row[best] {
                best = i;
            }
        }
        *o = best as i32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_row;
    use crate::CpuBackend;
    use ingot_core::{Backend, Op, QuantizedMatmulParams, Tensor, Tensors};

    #[test]
    fn matmul_matches_reference_for_every_weight_format() {
        let (m, n, k) = (3, 37, 512);
        let wv: Vec<f32> = (0..n * k).map(|i| (((i * 7919) % 1013) as f32 / 506.0) - 1.0).collect();
        let xv: Vec<f32> = (0..m * k).map(|i| (((i * 104729) % 97) as f32 / 48.0) - 1.0).collect();
        for dt in DType::WEIGHTS {
            let wq = quantize_row(dt, &wv).unwrap();
            let w = WeightView::new(dt, n, k, &wq).unwrap();
            let mut t = Tensors::new();
            t.insert("x".into(), Tensor::from_f32(DType::F32, vec![m, k], &xv));
            t.insert("w".into(), Tensor::from_bytes(dt, vec![n, k], wq.clone()).unwrap());
            let p = QuantizedMatmulParams { m, n, k, weight_dtype: dt, dtype: DType::F32 };
            let want = CpuBackend.run(&Op::QuantizedMatmul(p), &t).unwrap()["y"].to_f32().unwrap();
            let mut wd = vec![0f32; n * k];
            crate::quant::dequantize_row(dt, &wq, &mut wd).unwrap();
            for isa in Isa::ALL.iter().copied().filter(|i| i.available()) {
                let mut y = vec![0f32; m * n];
                matmul_xwt_with(isa, &xv, m, &w, &mut y);
                if !DType::QUANTIZED.contains(&dt) {
                    let num: f64 = y.iter().zip(&want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
                    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
                    assert!(num / den < 1e-10, "{dt} {isa:?}: nmse {}", num / den);
                    continue;
                }
                // 8-bit activations: x moves by at most half a step, max|x| / 254 per block of 32.
                for i in 0..m {
                    let x = &xv[i * k..(i + 1) * k];
                    for j in 0..n {
                        let wr = &wd[j * k..(j + 1) * k];
                        let bound: f64 = x
                            .chunks(32)
                            .zip(wr.chunks(32))
                            .map(|(xb, wb)| {
                                let step = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 127.0;
                                0.5 * step * wb.iter().map(|v| v.abs() as f64).sum::<f64>()
                            })
                            .sum();
                        let mag: f64 = x.iter().zip(wr).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                        let (got, exact) = (y[i * n + j] as f64, want[i * n + j] as f64);
                        assert!(
                            (got - exact).abs() <= 1.001 * bound + 1e-5 * mag,
                            "{dt} {isa:?} y[{i},{j}] = {got}, exact {exact}, bound {bound}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_rows_do_not_depend_on_the_batch() {
        // m = 15 runs threaded in groups of 8 + 4 + 3 rows, m = 1 alone on one thread and
        // four weight rows per kernel call: the same bits.
        let (m, n, k) = (15, 96, 512);
        let wv: Vec<f32> = (0..n * k).map(|i| (((i * 7919) % 1013) as f32 / 506.0) - 1.0).collect();
        let xv: Vec<f32> = (0..m * k).map(|i| (((i * 104729) % 97) as f32 / 48.0) - 1.0).collect();
        for dt in DType::WEIGHTS {
            let wq = quantize_row(dt, &wv).unwrap();
            let w = WeightView::new(dt, n, k, &wq).unwrap();
            for isa in Isa::ALL.iter().copied().filter(|i| i.available()) {
                let mut y = vec![0f32; m * n];
                matmul_xwt_with(isa, &xv, m, &w, &mut y);
                for i in 0..m {
                    let mut y1 = vec![0f32; n];
                    matmul_xwt_with(isa, &xv[i * k..(i + 1) * k], 1, &w, &mut y1);
                    let same = y1.iter().zip(&y[i * n..(i + 1) * n]).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{dt} {isa:?}: row {i} of a batch of {m} differs from the row alone");
                }
            }
        }
    }

    #[test]
    fn bad_weight_bytes_are_an_error() {
        assert!(WeightView::new(DType::Q4_0, 2, 32, &[0u8; 35]).is_err());
        assert!(WeightView::new(DType::Q4_0, 2, 33, &[0u8; 36]).is_err());
        assert!(WeightView::new(DType::I32, 1, 1, &[0u8; 4]).is_err());
    }

    /// Exact attention in f64 for one query (position p, head h).
    #[allow(clippy::too_many_arguments)]
    fn attention_f64(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        p: usize,
        h: usize,
        n_kv: usize,
        group: usize,
        d: usize,
        scale: f32,
        window: Option<usize>,
        cap: f32,
    ) -> Vec<f64> {
        let kh = h / group;
        let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
        let row = |c: &[f32], j: usize| c[(j * n_kv + kh) * d..(j * n_kv + kh + 1) * d].iter().map(|&x| x as f64).collect::<Vec<_>>();
        let s: Vec<f64> = (lo..=p)
            .map(|j| {
                let x = scale as f64 * row(k, j).iter().zip(q).map(|(a, b)| a * *b as f64).sum::<f64>();
                if cap > 0.0 {
                    cap as f64 * (x / cap as f64).tanh()
                } else {
                    x
                }
            })
            .collect();
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        let mut o = vec![0f64; d];
        for (jj, w) in e.iter().enumerate() {
            for (o, x) in o.iter_mut().zip(row(v, lo + jj)) {
                *o += w / z * x;
            }
        }
        o
    }

    #[test]
    fn attention_matches_f64_on_every_path_and_does_not_depend_on_the_batch() {
        let (t, start, n_heads, n_kv) = (6, 3, 4, 2);
        let mut seed = 1u64;
        let mut rnd = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        for d in [64, 72, 5, 256] {
            let q: Vec<f32> = (0..t * n_heads * d).map(|_| 3.0 * rnd()).collect();
            let k: Vec<f32> = (0..(start + t) * n_kv * d).map(|_| rnd()).collect();
            let v: Vec<f32> = (0..(start + t) * n_kv * d).map(|_| rnd()).collect();
            for (window, cap) in [(None, 0.0), (Some(4), 0.0), (None, 2.0)] {
                let scale = 1.0 / (d as f32).sqrt();
                for isa in Isa::ALL.iter().copied().filter(|i| i.available()) {
                    let o = attention_with(isa, &q, &k, &v, t, start, n_heads, n_kv, d, scale, window, cap);
                    for ti in 0..t {
                        // One query alone, its keys the same cache prefix: the same bits.
                        let qi = &q[ti * n_heads * d..(ti + 1) * n_heads * d];
                        let one = attention_with(isa, qi, &k, &v, 1, start + ti, n_heads, n_kv, d, scale, window, cap);
                        let rows = &o[ti * n_heads * d..(ti + 1) * n_heads * d];
                        assert!(one.iter().zip(rows).all(|(a, b)| a.to_bits() == b.to_bits()), "d={d} {isa:?}: query {ti} alone differs");
                        for h in 0..n_heads {
                            let want =
                                attention_f64(&qi[h * d..(h + 1) * d], &k, &v, start + ti, h, n_kv, n_heads / n_kv, d, scale, window, cap);
                            for (c, w) in want.iter().enumerate() {
                                let got = rows[h * d + c] as f64;
                                assert!(
                                    (got - w).abs() < 2e-6,
                                    "d={d} {isa:?} {window:?} cap {cap}: query {ti} head {h} [{c}] {got} vs {w}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn attention_single_key_returns_its_value_and_window_limits() {
        let (d, n_kv) = (4, 1);
        let k = vec![1.0f32; 3 * d];
        let v: Vec<f32> = (0..3 * d).map(|i| (i / d) as f32).collect();
        // position 0 sees only key 0
        let o = attention(&[1.0; 4], &k, &v, 1, 0, 1, n_kv, d, 0.5, None, 0.0);
        assert_eq!(o, vec![0.0; 4]);
        // position 2 with window 1 sees only key 2
        let o = attention(&[1.0; 4], &k, &v, 1, 2, 1, n_kv, d, 0.5, Some(1), 0.0);
        assert_eq!(o, vec![2.0; 4]);
        // equal scores: the mean of values 0, 1, 2
        let o = attention(&[1.0; 4], &k, &v, 1, 2, 1, n_kv, d, 0.5, None, 0.0);
        assert!(o.iter().all(|x| (x - 1.0).abs() < 1e-6));
    }
}
