//! The CPU fast path used by models: f32 kernels over borrowed weights (for example a
//! GGUF mmap), threads through rayon. Weights stay in their stored format; each row is
//! decoded block by block next to the dot product. The reference ops in this crate are
//! the oracle these kernels are tested against.

use crate::quant::block_decoder;
use ingot_core::{DType, Error, Result};
use rayon::prelude::*;

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
        let src = &self.data[r * self.row_bytes..(r + 1) * self.row_bytes];
        // The dtype was checked to be a weight format in `new`.
        let known = crate::quant::decode_row_unchecked(self.dtype, src, &mut out[..self.cols]);
        debug_assert!(known);
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

/// y[i, j] = Σ_l x[i, l]·W[j, l] for x [m, cols] and W [rows, cols]; y is [m, rows].
pub fn matmul_xwt(x: &[f32], m: usize, w: &WeightView, y: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert!(x.len() == m * k && y.len() == m * n, "matmul_xwt: shape mismatch");
    // Each task decodes a run of weight rows once and uses them for all m inputs.
    let mut yt = vec![0f32; n * m];
    let rows_per_task = (n / (rayon::current_num_threads() * 8)).clamp(1, 256);
    yt.par_chunks_mut(rows_per_task * m).enumerate().for_each(|(c, out)| {
        let mut buf = vec![0f32; k];
        for (jj, o) in out.chunks_mut(m).enumerate() {
            w.row(c * rows_per_task + jj, &mut buf);
            for (i, oi) in o.iter_mut().enumerate() {
                *oi = dot(&x[i * k..(i + 1) * k], &buf);
            }
        }
    });
    for j in 0..n {
        for i in 0..m {
            y[i * n + j] = yt[j * m + i];
        }
    }
}

/// In-place RMSNorm of each `w.len()`-long row: x / sqrt(mean(x²) + eps) · w.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let h = w.len();
    for row in x.chunks_exact_mut(h) {
        let ms = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / h as f64;
        let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
        for (v, wi) in row.iter_mut().zip(w) {
            *v = *v * inv * wi;
        }
    }
}

/// Rotary embedding in place on `x` [n_heads, head_dim] at position `pos`.
/// `inv_freq` has rotary_dim/2 entries; `neox` pairs (i, i + r/2), else (2i, 2i+1).
pub fn rope(x: &mut [f32], head_dim: usize, pos: usize, inv_freq: &[f32], neox: bool) {
    let half = inv_freq.len();
    let cs: Vec<(f32, f32)> = inv_freq
        .iter()
        .map(|f| {
            let a = pos as f64 * *f as f64;
            (a.cos() as f32, a.sin() as f32)
        })
        .collect();
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &(c, s)) in cs.iter().enumerate() {
            let (ia, ib) = if neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
            let (a, b) = (head[ia], head[ib]);
            head[ia] = a * c - b * s;
            head[ib] = b * c + a * s;
        }
    }
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
    let group = n_heads / n_kv;
    let mut out = vec![0f32; t * n_heads * d];
    out.par_chunks_mut(d).enumerate().for_each(|(idx, o)| {
        let (ti, h) = (idx / n_heads, idx % n_heads);
        let p = start + ti;
        let kh = h / group;
        let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
        let qv = &q[idx * d..(idx + 1) * d];
        let mut s: Vec<f32> = (lo..=p)
            .map(|j| {
                let x = scale * dot(qv, &k[(j * n_kv + kh) * d..(j * n_kv + kh + 1) * d]);
                if softcap > 0.0 {
                    softcap * (x / softcap).tanh()
                } else {
                    x
                }
            })
            .collect();
        let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut z = 0f32;
        for x in s.iter_mut() {
            *x = (*x - m).exp();
            z += *x;
        }
        for (jj, w) in s.iter().enumerate() {
            let j = lo + jj;
            let vv = &v[(j * n_kv + kh) * d..(j * n_kv + kh + 1) * d];
            let w = w / z;
            for (oi, vi) in o.iter_mut().zip(vv) {
                *oi += w * vi;
            }
        }
    });
    out
}

/// gate ← silu(gate)·up.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// gate ← gelu_tanh(gate)·up, as x·σ(2u) (no cancellation for negative x).
pub fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) {
    const C: f32 = 0.797_884_6; // √(2/π)
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        let z = 2.0 * C * (x + 0.044715 * x * x * x);
        *g = x / (1.0 + (-z).exp()) * u;
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
            let mut y = vec![0f32; m * n];
            matmul_xwt(&xv, m, &w, &mut y);
            let mut t = Tensors::new();
            t.insert("x".into(), Tensor::from_f32(DType::F32, vec![m, k], &xv));
            t.insert("w".into(), Tensor::from_bytes(dt, vec![n, k], wq.clone()).unwrap());
            let p = QuantizedMatmulParams { m, n, k, weight_dtype: dt, dtype: DType::F32 };
            let want = CpuBackend.run(&Op::QuantizedMatmul(p), &t).unwrap()["y"].to_f32().unwrap();
            let num: f64 = y.iter().zip(&want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
            let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
            assert!(num / den < 1e-10, "{dt}: nmse {}", num / den);
        }
    }

    #[test]
    fn bad_weight_bytes_are_an_error() {
        assert!(WeightView::new(DType::Q4_0, 2, 32, &[0u8; 35]).is_err());
        assert!(WeightView::new(DType::Q4_0, 2, 33, &[0u8; 36]).is_err());
        assert!(WeightView::new(DType::I32, 1, 1, &[0u8; 4]).is_err());
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
