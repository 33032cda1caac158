//! The forward pass on a GPU backend: the same graph as the CPU path in `llm.rs`, run as
//! protocol ops on device-resident tensors (`GpuBackend::run_device`), with activations in
//! f32. Weights are uploaded once, in the file's formats (quantized blocks stay blocks; the
//! `quantized_matmul` kernels read them directly); norms, biases and RoPE frequencies as
//! f32. The K/V pages live on the device, one [num_pages, page_size, n_kv_head, head_dim]
//! f32 tensor per layer for K and for V. Only token ids, positions and page tables go up
//! per step, and only the requested logits come back.

use crate::config::{Arch, Config};
use crate::llm::{Logits, SeqChunk};
use crate::{Error, Result};
use ingot_core::{
    AppendKvParams, CastParams, DType, DecodeParams, EmbeddingParams, GatedParams, Op, PrefillParams, QuantizedMatmulParams, RmsNormParams,
    RowsParams,
};
use ingot_gpu::cubecl::Runtime;
use ingot_gpu::{model_ops, GpuBackend, GpuTensor, GpuTensors};
use std::any::Any;
use std::sync::Arc;

/// K/V pages on a device, as a [`crate::KvPool`] holds them for a GPU model.
pub(crate) trait DeviceKv: Send + Sync {
    /// Copies every layer's K and V of page `src` onto page `dst` (both inside the pool).
    fn copy_page(&mut self, src: u32, dst: u32) -> Result<()>;
    /// Grows the pool to `num_pages` pages, keeping the existing ones (new pages are zero).
    fn grow(&mut self, num_pages: usize) -> Result<()>;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A model's weights on one device and the forward pass over them.
pub(crate) trait GpuRun: Send + Sync {
    /// The backend's name (`gpu:cuda`, `gpu:wgpu`, ...).
    fn name(&self) -> &str;
    /// A zeroed pool of `num_pages` pages of `page_size` positions on the device.
    fn new_kv(&self, page_size: usize, num_pages: usize) -> Result<Box<dyn DeviceKv>>;
    /// One batched forward pass (the batch was validated by the caller: see `Model::plan`).
    fn forward(&self, kv: &mut dyn DeviceKv, seqs: &[SeqChunk], plan: &Plan, trace: Option<&mut Vec<Vec<f32>>>) -> Result<Vec<f32>>;
}

/// The rows of a validated batch: (sequence, position) of every row, in order.
pub(crate) struct Plan {
    pub rows: Vec<(usize, usize)>,
}

fn gpu_err(msg: impl Into<String>) -> Error {
    Error::Model { arch: "gpu".into(), msg: msg.into() }
}

/// A projection's weight on the device, in its stored format: [rows, cols], split by rows
/// into parts when the matrix is larger than the device's largest buffer (a 262k-token
/// vocabulary on lavapipe, whose buffers stop at 128 MiB).
struct DLinear {
    parts: Vec<GpuTensor>,
    rows: usize,
    cols: usize,
}

struct DLayer {
    attn_norm: GpuTensor,
    wq: DLinear,
    wk: DLinear,
    wv: DLinear,
    wo: DLinear,
    bq: Option<GpuTensor>,
    bk: Option<GpuTensor>,
    bv: Option<GpuTensor>,
    q_norm: Option<GpuTensor>,
    k_norm: Option<GpuTensor>,
    post_attn_norm: Option<GpuTensor>,
    ffn_norm: GpuTensor,
    gate: DLinear,
    up: DLinear,
    down: DLinear,
    post_ffn_norm: Option<GpuTensor>,
}

/// Host copies of one layer's weights, as `Model` holds them, for upload.
pub(crate) struct HostLayer<'a> {
    pub attn_norm: &'a [f32],
    pub wq: HostLinear<'a>,
    pub wk: HostLinear<'a>,
    pub wv: HostLinear<'a>,
    pub wo: HostLinear<'a>,
    pub bq: Option<&'a [f32]>,
    pub bk: Option<&'a [f32]>,
    pub bv: Option<&'a [f32]>,
    pub q_norm: Option<&'a [f32]>,
    pub k_norm: Option<&'a [f32]>,
    pub post_attn_norm: Option<&'a [f32]>,
    pub ffn_norm: &'a [f32],
    pub gate: HostLinear<'a>,
    pub up: HostLinear<'a>,
    pub down: HostLinear<'a>,
    pub post_ffn_norm: Option<&'a [f32]>,
}

/// A weight matrix as the file stores it: format, [rows, cols], bytes.
#[derive(Clone, Copy)]
pub(crate) struct HostLinear<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: &'a [u8],
}

/// Everything the device model is built from.
pub(crate) struct HostWeights<'a> {
    pub embd: HostLinear<'a>,
    pub output: HostLinear<'a>,
    pub output_norm: &'a [f32],
    pub layers: Vec<HostLayer<'a>>,
    pub inv_freq: &'a [f32],
    pub inv_freq_swa: &'a [f32],
}

pub(crate) struct GpuModel<R: Runtime> {
    be: Arc<GpuBackend<R>>,
    name: String,
    cfg: Config,
    embd: DLinear,
    output: DLinear,
    output_norm: GpuTensor,
    layers: Vec<DLayer>,
    inv_freq: GpuTensor,
    inv_freq_swa: GpuTensor,
}

struct Kv<R: Runtime> {
    be: Arc<GpuBackend<R>>,
    page_size: usize,
    num_pages: usize,
    n_kv: usize,
    head_dim: usize,
    k: Vec<GpuTensor>,
    v: Vec<GpuTensor>,
}

impl<R: Runtime> DeviceKv for Kv<R> {
    fn copy_page(&mut self, src: u32, dst: u32) -> Result<()> {
        let words = self.page_size * self.n_kv * self.head_dim;
        for t in self.k.iter().chain(&self.v) {
            model_ops::copy_words(self.be.device(), t, src as usize * words, t, dst as usize * words, words)?;
        }
        Ok(())
    }

    fn grow(&mut self, num_pages: usize) -> Result<()> {
        if num_pages <= self.num_pages {
            return Ok(());
        }
        check_kv_size(&self.be, num_pages, self.page_size, self.n_kv, self.head_dim)?;
        let d = self.be.device();
        let old_words = self.num_pages * self.page_size * self.n_kv * self.head_dim;
        let shape = [num_pages, self.page_size, self.n_kv, self.head_dim];
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            let bigger = model_ops::zeros(d, DType::F32, &shape);
            model_ops::copy_words(d, t, 0, &bigger, 0, old_words)?;
            *t = bigger;
        }
        self.num_pages = num_pages;
        Ok(())
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Refuses a per-layer K (or V) tensor of `pages` pages larger than the device's largest buffer.
fn check_kv_size<R: Runtime>(be: &GpuBackend<R>, pages: usize, page_size: usize, n_kv: usize, head_dim: usize) -> Result<()> {
    let bytes = [pages, page_size, n_kv, head_dim, 4].iter().try_fold(1usize, |a, &b| a.checked_mul(b));
    let max = be.device().max_buffer_bytes();
    match bytes {
        Some(b) if b as u64 <= max => Ok(()),
        _ => Err(gpu_err(format!(
            "{pages} KV pages of {page_size} positions do not fit in memory: {} bytes per layer for K, more than the device's largest buffer ({max} bytes); use fewer pages",
            bytes.map_or("too many".to_string(), |b| b.to_string())
        ))),
    }
}

fn reshape(t: &GpuTensor, shape: &[usize]) -> GpuTensor {
    debug_assert_eq!(t.numel(), shape.iter().product::<usize>());
    GpuTensor { handle: t.handle.clone(), dtype: t.dtype, shape: shape.to_vec() }
}

impl<R: Runtime> GpuModel<R> {
    /// Uploads the weights to `be`'s device.
    pub(crate) fn new(be: GpuBackend<R>, name: &str, cfg: &Config, w: &HostWeights) -> Result<Self> {
        let d = be.device();
        let vec = |v: &[f32]| d.upload_f32_tensor(&[v.len()], v).map_err(Error::from);
        let opt = |v: Option<&[f32]>| v.map(vec).transpose();
        let max = d.max_buffer_bytes().min(usize::MAX as u64) as usize;
        let lin = |l: &HostLinear| -> Result<DLinear> {
            let row_bytes = l.bytes.len() / l.rows.max(1);
            let per_part = (max / row_bytes.max(1)).max(1);
            let mut parts = Vec::new();
            for first in (0..l.rows).step_by(per_part) {
                let n = per_part.min(l.rows - first);
                parts.push(d.upload_raw(l.dtype, &[n, l.cols], &l.bytes[first * row_bytes..(first + n) * row_bytes])?);
            }
            Ok(DLinear { parts, rows: l.rows, cols: l.cols })
        };
        let mut layers = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            layers.push(DLayer {
                attn_norm: vec(l.attn_norm)?,
                wq: lin(&l.wq)?,
                wk: lin(&l.wk)?,
                wv: lin(&l.wv)?,
                wo: lin(&l.wo)?,
                bq: opt(l.bq)?,
                bk: opt(l.bk)?,
                bv: opt(l.bv)?,
                q_norm: opt(l.q_norm)?,
                k_norm: opt(l.k_norm)?,
                post_attn_norm: opt(l.post_attn_norm)?,
                ffn_norm: vec(l.ffn_norm)?,
                gate: lin(&l.gate)?,
                up: lin(&l.up)?,
                down: lin(&l.down)?,
                post_ffn_norm: opt(l.post_ffn_norm)?,
            });
        }
        Ok(GpuModel {
            embd: lin(&w.embd)?,
            output: lin(&w.output)?,
            output_norm: vec(w.output_norm)?,
            layers,
            inv_freq: vec(w.inv_freq)?,
            inv_freq_swa: vec(w.inv_freq_swa)?,
            cfg: cfg.clone(),
            name: name.to_string(),
            be: Arc::new(be),
        })
    }

    fn run(&self, op: Op, inputs: &[(&str, &GpuTensor)]) -> Result<GpuTensors> {
        let ins: GpuTensors = inputs.iter().map(|(k, t)| (k.to_string(), (*t).clone())).collect();
        Ok(self.be.run_device(&op, &ins)?)
    }

    fn one(&self, op: Op, inputs: &[(&str, &GpuTensor)], out: &str) -> Result<GpuTensor> {
        let name = op.name();
        self.run(op, inputs)?.remove(out).ok_or_else(|| gpu_err(format!("{name} returned no '{out}'")))
    }

    /// y = x·Wᵀ, x [t, cols] f32 → [t, rows] f32.
    fn linear(&self, l: &DLinear, x: &GpuTensor, t: usize) -> Result<GpuTensor> {
        let x = reshape(x, &[t, l.cols]);
        let part = |w: &GpuTensor| {
            let p = QuantizedMatmulParams { m: t, n: w.shape[0], k: l.cols, weight_dtype: w.dtype, dtype: DType::F32 };
            self.one(Op::QuantizedMatmul(p), &[("x", &x), ("w", w)], "y")
        };
        if let [w] = l.parts.as_slice() {
            return part(w);
        }
        let d = self.be.device();
        let y = model_ops::zeros(d, DType::F32, &[t, l.rows]);
        let mut at = 0;
        for w in &l.parts {
            model_ops::copy_columns(d, &part(w)?, &y, at)?;
            at += w.shape[0];
        }
        Ok(y)
    }

    /// Rows `ids` of a weight matrix (the token embeddings) as f32 [ids.len(), cols]. A
    /// matrix in parts is looked up part by part, with the ids of other parts sent out of
    /// range (the kernel writes zero rows for those), and the parts' rows summed.
    fn lookup(&self, l: &DLinear, ids: &[i32]) -> Result<GpuTensor> {
        let d = self.be.device();
        let up = |v: &[i32]| d.upload_i32_tensor(&[v.len()], v).map_err(Error::from);
        if let [w] = l.parts.as_slice() {
            return self.gather(w, &up(ids)?);
        }
        let mut sum: Option<GpuTensor> = None;
        let mut first = 0i32;
        for w in &l.parts {
            let n = w.shape[0] as i32;
            let local: Vec<i32> = ids.iter().map(|&id| if (first..first + n).contains(&id) { id - first } else { n }).collect();
            let rows = self.gather(w, &up(&local)?)?;
            sum = Some(match sum {
                None => rows,
                Some(acc) => self.add(&acc, &rows, ids.len())?,
            });
            first += n;
        }
        sum.ok_or_else(|| gpu_err("an empty weight matrix"))
    }

    fn rms_norm(&self, x: &GpuTensor, w: &GpuTensor, rows: usize) -> Result<GpuTensor> {
        let h = w.numel();
        let p = RmsNormParams { num_tokens: rows, hidden_size: h, eps: self.cfg.eps as f64, gemma: false, dtype: DType::F32 };
        let y = self.one(Op::RmsNorm(p), &[("input", &reshape(x, &[rows, h])), ("weight", w)], "output")?;
        Ok(reshape(&y, &x.shape))
    }

    fn add(&self, a: &GpuTensor, b: &GpuTensor, t: usize) -> Result<GpuTensor> {
        let e = a.numel() / t;
        let p = RowsParams { num_tokens: t, hidden_size: e, dtype: DType::F32 };
        self.one(Op::AddResidual(p), &[("input", a), ("residual", b)], "output")
    }

    /// Rows `ids` of `table` [vocab, width] (any weight format) as f32 [ids.len(), width].
    fn gather(&self, table: &GpuTensor, ids: &GpuTensor) -> Result<GpuTensor> {
        let (vocab, width) = (table.shape[0], table.shape[1]);
        let n = ids.numel();
        let p = EmbeddingParams { num_tokens: n, hidden_size: width, vocab_size: vocab, dtype: table.dtype };
        let y = self.one(Op::EmbeddingLookup(p), &[("table", table), ("ids", ids)], "output")?;
        if y.dtype == DType::F32 {
            return Ok(y);
        }
        let p = CastParams { num_elements: n * width, input_dtype: y.dtype, output_dtype: DType::F32 };
        let flat = self.one(Op::Cast(p), &[("input", &reshape(&y, &[n * width]))], "output")?;
        Ok(reshape(&flat, &[n, width]))
    }
}

impl<R: Runtime> GpuRun for GpuModel<R> {
    fn name(&self) -> &str {
        &self.name
    }

    fn new_kv(&self, page_size: usize, num_pages: usize) -> Result<Box<dyn DeviceKv>> {
        let c = &self.cfg;
        check_kv_size(&self.be, num_pages, page_size, c.n_kv_head, c.head_dim)?;
        let shape = [num_pages, page_size, c.n_kv_head, c.head_dim];
        let d = self.be.device();
        let layer = || model_ops::zeros(d, DType::F32, &shape);
        Ok(Box::new(Kv {
            be: self.be.clone(),
            page_size,
            num_pages,
            n_kv: c.n_kv_head,
            head_dim: c.head_dim,
            k: (0..c.n_layer).map(|_| layer()).collect(),
            v: (0..c.n_layer).map(|_| layer()).collect(),
        }))
    }

    fn forward(&self, kv: &mut dyn DeviceKv, seqs: &[SeqChunk], plan: &Plan, mut trace: Option<&mut Vec<Vec<f32>>>) -> Result<Vec<f32>> {
        let kv = kv.as_any_mut().downcast_mut::<Kv<R>>().ok_or_else(|| gpu_err("this KV pool belongs to another device"))?;
        let c = &self.cfg;
        let d = self.be.device();
        let (e, hd, hq, hk) = (c.n_embd, c.head_dim, c.n_head, c.n_kv_head);
        let (ps, num_pages) = (kv.page_size, kv.num_pages);
        let t = plan.rows.len();
        let b = seqs.len();

        // Per-step index tensors: token ids, positions, sequence of each row, and the page
        // tables in FlashInfer's CSR form (each sequence lists the pages up to its last position).
        let ids: Vec<i32> = seqs.iter().flat_map(|s| s.tokens.iter().map(|&x| x as i32)).collect();
        let pos: Vec<i32> = plan.rows.iter().map(|&(_, p)| p as i32).collect();
        let seq_of: Vec<i32> = plan.rows.iter().map(|&(s, _)| s as i32).collect();
        let (mut qo_indptr, mut kv_indptr, mut kv_indices, mut last_len) = (vec![0i32], vec![0i32], Vec::new(), Vec::new());
        for s in seqs {
            let end = s.start + s.tokens.len();
            let pages = end.div_ceil(ps);
            kv_indices.extend(s.pages[..pages].iter().map(|&p| p as i32));
            kv_indptr.push(kv_indices.len() as i32);
            qo_indptr.push(qo_indptr.last().unwrap_or(&0) + s.tokens.len() as i32);
            last_len.push(((end - 1) % ps + 1) as i32);
        }
        let up = |v: &[i32]| d.upload_i32_tensor(&[v.len()], v).map_err(Error::from);
        let (pos_d, seq_d) = (up(&pos)?, up(&seq_of)?);
        let (qo_d, kvp_d, kvi_d, last_d) = (up(&qo_indptr)?, up(&kv_indptr)?, up(&kv_indices)?, up(&last_len)?);
        let n_ids = kv_indices.len();
        let decode = seqs.iter().all(|s| s.tokens.len() == 1);

        let mut x = self.lookup(&self.embd, &ids)?;
        if c.embd_scale != 1.0 {
            x = model_ops::scale(d, &x, c.embd_scale)?;
        }
        for (il, lw) in self.layers.iter().enumerate() {
            let h = self.rms_norm(&x, &lw.attn_norm, t)?;
            let mut q = self.linear(&lw.wq, &h, t)?;
            let mut k = self.linear(&lw.wk, &h, t)?;
            let mut v = self.linear(&lw.wv, &h, t)?;
            if let Some(bias) = &lw.bq {
                q = model_ops::add_bias(d, &q, bias)?;
            }
            if let Some(bias) = &lw.bk {
                k = model_ops::add_bias(d, &k, bias)?;
            }
            if let Some(bias) = &lw.bv {
                v = model_ops::add_bias(d, &v, bias)?;
            }
            if let Some(w) = &lw.q_norm {
                q = self.rms_norm(&q, w, t * hq)?;
            }
            if let Some(w) = &lw.k_norm {
                k = self.rms_norm(&k, w, t * hk)?;
            }
            let swa = c.is_swa(il);
            let freqs = if swa { &self.inv_freq_swa } else { &self.inv_freq };
            let q = model_ops::rope_with_freqs(d, &reshape(&q, &[t, hq, hd]), &pos_d, freqs, c.rope_dim, !c.rope_neox)?;
            let k = model_ops::rope_with_freqs(d, &reshape(&k, &[t, hk, hd]), &pos_d, freqs, c.rope_dim, !c.rope_neox)?;
            let v = reshape(&v, &[t, hk, hd]);

            let cache_shape = [num_pages, ps, hk, hd];
            let (kc, vc) = (reshape(&kv.k[il], &cache_shape), reshape(&kv.v[il], &cache_shape));
            let ap = AppendKvParams {
                batch_size: b,
                num_tokens: t,
                num_kv_heads: hk,
                head_size: hd,
                page_size: ps,
                num_pages,
                num_page_ids: n_ids,
                dtype: DType::F32,
            };
            let tables: [(&str, &GpuTensor); 3] = [("kv_indices", &kvi_d), ("kv_indptr", &kvp_d), ("kv_last_page_len", &last_d)];
            // In place: the pool's tensors are the caches (the op's copying form would copy every page).
            let ins: GpuTensors = [("append_k", &k), ("append_v", &v), ("batch_indices", &seq_d), ("positions", &pos_d)]
                .into_iter()
                .chain(tables)
                .map(|(n, t)| (n.to_string(), t.clone()))
                .collect();
            ingot_gpu::kv::append_paged_kv_cache_in_place(d, &ap, &ins, &kc, &vc)?;

            let window_left = match (swa, c.sliding_window) {
                (true, Some(w)) => w as i64 - 1,
                _ => -1,
            };
            let att = if decode {
                let p = DecodeParams {
                    batch_size: b,
                    num_qo_heads: hq,
                    num_kv_heads: hk,
                    head_size: hd,
                    page_size: ps,
                    num_pages,
                    num_page_ids: n_ids,
                    sm_scale: c.attn_scale as f64,
                    window_left,
                    logits_soft_cap: 0.0,
                    dtype: DType::F32,
                };
                let mut ins = vec![("q", &q), ("k_cache", &kc), ("v_cache", &vc)];
                ins.extend(tables);
                self.one(Op::BatchDecodeWithPagedKvCache(p), &ins, "output")?
            } else {
                let p = PrefillParams {
                    batch_size: b,
                    num_tokens: t,
                    num_qo_heads: hq,
                    num_kv_heads: hk,
                    head_size: hd,
                    page_size: ps,
                    num_pages,
                    num_page_ids: n_ids,
                    causal: true,
                    sm_scale: c.attn_scale as f64,
                    window_left,
                    logits_soft_cap: 0.0,
                    dtype: DType::F32,
                };
                let mut ins = vec![("q", &q), ("qo_indptr", &qo_d), ("k_cache", &kc), ("v_cache", &vc)];
                ins.extend(tables);
                self.one(Op::BatchPrefillWithPagedKvCache(p), &ins, "output")?
            };
            let mut o = self.linear(&lw.wo, &att, t)?;
            if let Some(w) = &lw.post_attn_norm {
                o = self.rms_norm(&o, w, t)?;
            }
            x = self.add(&x, &o, t)?;

            let h = self.rms_norm(&x, &lw.ffn_norm, t)?;
            let g = self.linear(&lw.gate, &h, t)?;
            let u = self.linear(&lw.up, &h, t)?;
            let gp = GatedParams { num_tokens: t, intermediate_size: c.n_ff, dtype: DType::F32 };
            let gated = if c.arch == Arch::Gemma3 { Op::GeluAndMul(gp) } else { Op::SiluAndMul(gp) };
            let a = self.one(gated, &[("gate", &g), ("up", &u)], "output")?;
            let mut dn = self.linear(&lw.down, &a, t)?;
            if let Some(w) = &lw.post_ffn_norm {
                dn = self.rms_norm(&dn, w, t)?;
            }
            x = self.add(&x, &dn, t)?;
            if let Some(tr) = trace.as_deref_mut() {
                tr.push(d.to_host("trace", &x)?.to_f32()?);
            }
        }

        // The rows whose logits are wanted, in order.
        let mut want: Vec<i32> = Vec::new();
        let mut at = 0usize;
        for s in seqs {
            let n = s.tokens.len();
            match s.logits {
                Logits::All => want.extend((at..at + n).map(|r| r as i32)),
                Logits::Last => want.push((at + n - 1) as i32),
                Logits::None => {}
            }
            at += n;
        }
        if want.is_empty() {
            return Ok(Vec::new());
        }
        let n = want.len();
        let rows = if n == t { x } else { self.gather(&reshape(&x, &[t, e]), &up(&want)?)? };
        let h = self.rms_norm(&rows, &self.output_norm, n)?;
        let logits = self.linear(&self.output, &h, n)?;
        Ok(d.to_host("logits", &logits)?.to_f32()?)
    }
}
