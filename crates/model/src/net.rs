//! The one model definition: llama, qwen2 and gemma3 as a sequence of protocol ops on any
//! [`Device`] (the CPU fast kernels or a GPU backend). The file says *which* ops run in
//! which order; the device decides *how*. Weights stay in the GGUF file's formats (the CPU
//! device reads them from the mmap in place, a GPU device holds one copy); norms, biases and
//! RoPE frequency tables are f32. Activations are f32. The K/V pages are a [`Pages`] pool on
//! the same device. Only token ids, positions and page tables go to the device per step,
//! and only the requested logits come back.
//!
//! The architectures differ in a few switches of [`Config`]: biases on Q/K/V (qwen2), Q/K
//! norms, post-attention and post-FFN norms, a scaled embedding, GELU instead of SiLU and
//! sliding-window layers with their own RoPE base (gemma3); LayerNorm with biases, learned
//! position embeddings instead of RoPE, a fused QKV projection (loaded as three row ranges
//! of one matrix) and an ungated GELU MLP with biases (gpt2).

use crate::batch::{Logits, Plan, SeqChunk};
use crate::config::{Arch, Config};
use crate::kv::{Pages, PoolPages};
use crate::profile;
use crate::{Error, Result};
use ingot_core::{
    AppendKvParams, Capture, CastParams, DType, DecodeParams, Device, DeviceTensor, DeviceTensors, EmbeddingParams, GatedParams, HostBytes,
    LayerNormParams, Op, PrefillParams, QuantizedMatmulParams, RmsNormParams, RopeFreqsParams, RopeQkvParams, RowsParams, ScaleParams,
    Tensor, UnaryParams, WriteColumnsParams,
};
use ingot_gguf::GgufFile;
use std::sync::Arc;

/// A projection's weight [rows, cols] on the device in its stored format, split by rows into
/// parts when it is larger than the device's largest tensor (a 262k-token vocabulary on
/// lavapipe, whose buffers stop at 128 MiB).
pub(crate) struct Weight<T> {
    parts: Vec<T>,
    rows: usize,
    cols: usize,
}

/// The Q, K, V projections of a block.
enum Qkv<T> {
    /// Q and K (and V, `with_v`) weights stacked by rows into one matrix, their biases into
    /// one vector: one matmul, then one `rope_qkv` splits and rotates (Q/K norms included).
    /// V has a matmul of its own when its format differs (Q4_K_M files keep some V in Q6_K).
    Packed { w: Weight<T>, b: Option<T>, with_v: bool, wv: Option<Weight<T>>, bv: Option<T> },
    /// Three matmuls (GPT-2's learned positions, or Q and K in different formats).
    Separate { wq: Weight<T>, wk: Weight<T>, wv: Weight<T>, bq: Option<T>, bk: Option<T>, bv: Option<T> },
}

/// The feed-forward up projections of a block.
enum Ffn<T> {
    /// Gate and up stacked by rows: one matmul, one packed gated activation.
    Packed(Weight<T>),
    /// Gate and up apart (different formats), or no gate (GPT-2's plain MLP).
    Separate { gate: Option<Weight<T>>, up: Weight<T>, up_b: Option<T> },
}

/// One transformer block's weights.
struct Layer<T> {
    attn_norm: T,
    attn_norm_b: Option<T>,
    qkv: Qkv<T>,
    wo: Weight<T>,
    bo: Option<T>,
    q_norm: Option<T>,
    k_norm: Option<T>,
    post_attn_norm: Option<T>,
    ffn_norm: T,
    ffn_norm_b: Option<T>,
    ffn: Ffn<T>,
    down: Weight<T>,
    down_b: Option<T>,
    post_ffn_norm: Option<T>,
}

/// A model's weights on device `D` and its forward pass.
pub(crate) struct Net<D: Device> {
    dev: Arc<D>,
    cfg: Config,
    embd: Weight<D::Tensor>,
    output: Weight<D::Tensor>,
    output_norm: D::Tensor,
    output_norm_b: Option<D::Tensor>,
    /// Learned position embeddings [context, n_embd] (gpt2).
    pos_embd: Option<Weight<D::Tensor>>,
    layers: Vec<Layer<D::Tensor>>,
    inv_freq: D::Tensor,
    inv_freq_swa: D::Tensor,
}

/// What a model needs of its device-specific half, whatever the device.
pub(crate) trait Runner: Send + Sync {
    /// The device's name (`cpu`, `gpu:cuda`, ...).
    fn name(&self) -> String;
    /// A zeroed pool of `num_pages` pages of `page_size` positions on the device.
    fn new_pages(&self, page_size: usize, num_pages: usize) -> Result<Box<dyn PoolPages>>;
    /// The largest single tensor the device holds, in bytes.
    fn max_tensor_bytes(&self) -> u64;
    /// One batched forward pass (the batch was validated by the caller: see `Model::plan`).
    fn forward(&self, pages: &mut dyn PoolPages, seqs: &[SeqChunk], plan: &Plan, trace: Option<&mut Vec<Vec<f32>>>) -> Result<Vec<f32>>;
}

/// The GGUF file's mapped bytes, lent to a device (the CPU device reads weights in place).
pub(crate) struct MappedFile(pub Arc<GgufFile>);

impl HostBytes for MappedFile {
    fn host_bytes(&self) -> &[u8] {
        self.0.bytes()
    }
}

fn model_err(arch: &str, msg: impl Into<String>) -> Error {
    Error::Model { arch: arch.to_string(), msg: msg.into() }
}

/// The tensors a layer reads, by GGUF name.
fn layer_names(il: usize, s: &str) -> String {
    format!("blk.{il}.{s}")
}

impl<D: Device + 'static> Net<D> {
    /// Reads `file`'s weights onto `dev`, checking every shape against `cfg`.
    pub(crate) fn load(dev: D, file: &Arc<GgufFile>, cfg: &Config) -> Result<Self> {
        let dev = Arc::new(dev);
        let arch = cfg.arch.name();
        let bytes: Arc<dyn HostBytes> = Arc::new(MappedFile(file.clone()));
        let max = dev.max_tensor_bytes().min(usize::MAX as u64) as usize;
        // Where rows `first..first + take` of the matrix `name` [rows, cols] lie in the file
        // (gpt2's fused QKV is three row ranges of one matrix; a row range is a byte range),
        // with the matrix's format and the bytes of one row.
        let row_range = |name: &str, rows: usize, cols: usize, first: usize, take: usize| -> Result<(DType, usize, usize)> {
            let t = file.tensor(name)?;
            let dtype = file.tensor_dtype(name)?;
            let shape = t.shape_row_major();
            if shape != [rows as u64, cols as u64] {
                return Err(model_err(arch, format!("tensor '{name}' has shape {shape:?}, expected [{rows}, {cols}]")));
            }
            let row_bytes = dtype
                .bytes_for(cols)
                .ok_or_else(|| model_err(arch, format!("tensor '{name}': a row of {cols} is not a whole number of {dtype} blocks")))?;
            if Some(t.size as usize) != row_bytes.checked_mul(rows) {
                return Err(model_err(
                    arch,
                    format!("tensor '{name}' has {} bytes, {rows}x{cols} {dtype} needs {row_bytes}·{rows}", t.size),
                ));
            }
            if first + take > rows {
                return Err(model_err(arch, format!("tensor '{name}': rows {first}..{} of {rows}", first + take)));
            }
            Ok((dtype, t.file_offset as usize + first * row_bytes, row_bytes))
        };
        // `take` rows of `cols` at byte `start` of `src` onto the device, in parts of at most
        // the device's largest tensor.
        let upload_rows = |src: &Arc<dyn HostBytes>, dtype: DType, start: usize, row_bytes: usize, take: usize, cols: usize| {
            let per_part = (max / row_bytes.max(1)).max(1);
            let mut parts = Vec::new();
            for first in (0..take).step_by(per_part) {
                let n = per_part.min(take - first);
                let at = start + first * row_bytes;
                parts.push(dev.upload_shared(dtype, &[n, cols], src, at..at + n * row_bytes)?);
            }
            Ok::<_, Error>(Weight { parts, rows: take, cols })
        };
        let weight_rows = |name: &str, rows: usize, cols: usize, first: usize, take: usize| -> Result<Weight<D::Tensor>> {
            let (dtype, start, row_bytes) = row_range(name, rows, cols, first, take)?;
            upload_rows(&bytes, dtype, start, row_bytes, take, cols)
        };
        let weight = |name: &str, rows: usize, cols: usize| weight_rows(name, rows, cols, 0, rows);
        // The matrices `names` ([rows, cols] each) stacked by rows into one weight, or `None`
        // when their formats differ. The stacked bytes are a copy, in huge-page-backed memory
        // (`arena.rs`; the CPU device reads it in place as it reads the file).
        let arena = std::cell::RefCell::new(crate::arena::Arena::default());
        let stacked = |names: &[(&str, usize)], cols: usize| -> Result<Option<Weight<D::Tensor>>> {
            let mut ranges = Vec::with_capacity(names.len());
            for &(name, rows) in names {
                ranges.push((row_range(name, rows, cols, 0, rows)?, rows));
            }
            let dtype = ranges[0].0 .0;
            if ranges.iter().any(|((d, _, _), _)| *d != dtype) {
                return Ok(None);
            }
            let row_bytes = ranges[0].0 .2;
            let total: usize = ranges.iter().map(|(_, rows)| rows).sum();
            let parts: Vec<&[u8]> = ranges.iter().map(|((_, start, _), rows)| &file.bytes()[*start..*start + rows * row_bytes]).collect();
            let owned =
                arena.borrow_mut().concat(&parts).map_err(|e| model_err(arch, format!("cannot map memory for stacked weights: {e}")))?;
            upload_rows(&owned, dtype, 0, row_bytes, total, cols).map(Some)
        };
        let host_vector = |name: &str, len: usize| -> Result<Vec<f32>> {
            let t = file.tensor(name)?;
            let dtype = file.tensor_dtype(name)?;
            if t.numel() != len as u64 {
                return Err(model_err(arch, format!("tensor '{name}' has {} elements, expected {len}", t.numel())));
            }
            let mut out = vec![0f32; len];
            ingot_cpu::quant::dequantize_row(dtype, file.data_of(t)?, &mut out)?;
            Ok(out)
        };
        let up = |v: &[f32]| -> Result<D::Tensor> { Ok(dev.upload(&Tensor::from_f32(DType::F32, vec![v.len()], v))?) };
        let vector = |name: &str, len: usize| -> Result<D::Tensor> { up(&host_vector(name, len)?) };
        let opt_vector = |name: &str, len: usize| -> Result<Option<D::Tensor>> {
            if file.find_tensor(name).is_some() {
                vector(name, len).map(Some)
            } else {
                Ok(None)
            }
        };
        let c = cfg;
        let (qd, kvd) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
        let gemma = c.arch == Arch::Gemma3;
        let gpt2 = c.arch == Arch::Gpt2;
        // LayerNorm's bias, which the architectures with LayerNorm always have.
        let norm_bias = |name: &str, len: usize| if c.layer_norm { vector(name, len).map(Some) } else { Ok(None) };
        let mut layers = Vec::with_capacity(c.n_layer);
        for il in 0..c.n_layer {
            let n = |s: &str| layer_names(il, s);
            let only_gemma = |s: &str, len: usize| if gemma { vector(&n(s), len).map(Some) } else { Ok(None) };
            let (q_name, k_name, v_name) = (n("attn_q.weight"), n("attn_k.weight"), n("attn_v.weight"));
            // Q and K norms go into `rope_qkv` together or not at all.
            let qk_norms_paired =
                file.find_tensor(&n("attn_q_norm.weight")).is_some() == file.find_tensor(&n("attn_k_norm.weight")).is_some();
            let qk = if gpt2 || !c.rope || !qk_norms_paired {
                None
            } else if let Some(w) = stacked(&[(&q_name, qd), (&k_name, kvd), (&v_name, kvd)], c.n_embd)? {
                Some((w, true))
            } else {
                stacked(&[(&q_name, qd), (&k_name, kvd)], c.n_embd)?.map(|w| (w, false))
            };
            let qkv = if let Some((w, with_v)) = qk {
                // The biases stacked as the rows are (qwen2 has them on all three or none).
                let biases = [("attn_q.bias", qd), ("attn_k.bias", kvd), ("attn_v.bias", kvd)];
                let present = biases.iter().filter(|(b, _)| file.find_tensor(&n(b)).is_some()).count();
                let stacked_bias = |parts: &[(&str, usize)]| -> Result<Option<D::Tensor>> {
                    if present == 0 {
                        return Ok(None);
                    }
                    let mut v = Vec::new();
                    for &(b, len) in parts {
                        match file.find_tensor(&n(b)) {
                            Some(_) => v.extend(host_vector(&n(b), len)?),
                            None => v.extend(std::iter::repeat(0.0).take(len)),
                        }
                    }
                    up(&v).map(Some)
                };
                if with_v {
                    Qkv::Packed { w, b: stacked_bias(&biases)?, with_v, wv: None, bv: None }
                } else {
                    Qkv::Packed {
                        w,
                        b: stacked_bias(&biases[..2])?,
                        with_v,
                        wv: Some(weight(&v_name, kvd, c.n_embd)?),
                        bv: opt_vector(&n("attn_v.bias"), kvd)?,
                    }
                }
            } else if gpt2 {
                // One [q; k; v] matrix and bias.
                let (name, rows) = (n("attn_qkv.weight"), qd + 2 * kvd);
                let b = host_vector(&n("attn_qkv.bias"), rows)?;
                Qkv::Separate {
                    wq: weight_rows(&name, rows, c.n_embd, 0, qd)?,
                    wk: weight_rows(&name, rows, c.n_embd, qd, kvd)?,
                    wv: weight_rows(&name, rows, c.n_embd, qd + kvd, kvd)?,
                    bq: Some(up(&b[..qd])?),
                    bk: Some(up(&b[qd..qd + kvd])?),
                    bv: Some(up(&b[qd + kvd..])?),
                }
            } else {
                Qkv::Separate {
                    wq: weight(&q_name, qd, c.n_embd)?,
                    wk: weight(&k_name, kvd, c.n_embd)?,
                    wv: weight(&v_name, kvd, c.n_embd)?,
                    bq: opt_vector(&n("attn_q.bias"), qd)?,
                    bk: opt_vector(&n("attn_k.bias"), kvd)?,
                    bv: opt_vector(&n("attn_v.bias"), kvd)?,
                }
            };
            let (gate_name, up_name) = (n("ffn_gate.weight"), n("ffn_up.weight"));
            let packed_ffn = if c.gated_ffn && file.find_tensor(&n("ffn_up.bias")).is_none() {
                stacked(&[(&gate_name, c.n_ff), (&up_name, c.n_ff)], c.n_embd)?
            } else {
                None
            };
            let ffn = match packed_ffn {
                Some(w) => Ffn::Packed(w),
                None => Ffn::Separate {
                    gate: if c.gated_ffn { Some(weight(&gate_name, c.n_ff, c.n_embd)?) } else { None },
                    up: weight(&up_name, c.n_ff, c.n_embd)?,
                    up_b: opt_vector(&n("ffn_up.bias"), c.n_ff)?,
                },
            };
            layers.push(Layer {
                attn_norm: vector(&n("attn_norm.weight"), c.n_embd)?,
                attn_norm_b: norm_bias(&n("attn_norm.bias"), c.n_embd)?,
                qkv,
                wo: weight(&n("attn_output.weight"), c.n_embd, qd)?,
                bo: opt_vector(&n("attn_output.bias"), c.n_embd)?,
                q_norm: only_gemma("attn_q_norm.weight", c.head_dim)?,
                k_norm: only_gemma("attn_k_norm.weight", c.head_dim)?,
                post_attn_norm: only_gemma("post_attention_norm.weight", c.n_embd)?,
                ffn_norm: vector(&n("ffn_norm.weight"), c.n_embd)?,
                ffn_norm_b: norm_bias(&n("ffn_norm.bias"), c.n_embd)?,
                ffn,
                down: weight(&n("ffn_down.weight"), c.n_embd, c.n_ff)?,
                down_b: opt_vector(&n("ffn_down.bias"), c.n_embd)?,
                post_ffn_norm: only_gemma("post_ffw_norm.weight", c.n_embd)?,
            });
        }
        // Tied embeddings when the file has no separate output matrix.
        let output_name = if file.find_tensor("output.weight").is_some() { "output.weight" } else { "token_embd.weight" };
        let freqs = |base: f32| -> Result<D::Tensor> {
            let half = c.rope_dim / 2;
            let mut f: Vec<f32> = (0..half).map(|i| (base as f64).powf(-2.0 * i as f64 / c.rope_dim as f64) as f32).collect();
            // Llama 3 scaling is stored as per-frequency divisors.
            if file.find_tensor("rope_freqs.weight").is_some() {
                for (x, d) in f.iter_mut().zip(host_vector("rope_freqs.weight", half)?) {
                    *x /= d;
                }
            }
            up(&f)
        };
        Ok(Net {
            embd: weight("token_embd.weight", c.vocab, c.n_embd)?,
            output: weight(output_name, c.vocab, c.n_embd)?,
            output_norm: vector("output_norm.weight", c.n_embd)?,
            output_norm_b: norm_bias("output_norm.bias", c.n_embd)?,
            pos_embd: if c.pos_embd { Some(weight("position_embd.weight", c.context, c.n_embd)?) } else { None },
            layers,
            inv_freq: freqs(c.rope_base)?,
            inv_freq_swa: freqs(c.rope_base_swa)?,
            cfg: cfg.clone(),
            dev,
        })
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        model_err(&self.dev.name(), msg)
    }

    /// Runs `op` and returns its output `out`.
    fn one(&self, op: Op, inputs: &[(&str, &D::Tensor)], out: &str) -> Result<D::Tensor> {
        let name = op.name();
        let t0 = profile::start();
        let ins: DeviceTensors<D::Tensor> = inputs.iter().map(|(k, t)| (k.to_string(), (*t).clone())).collect();
        let y = self.dev.run(&op, &ins)?.remove(out).ok_or_else(|| self.err(format!("{name} returned no '{out}'")));
        self.timed(name, t0);
        y
    }

    /// Runs `op` and returns all its outputs.
    fn many(&self, op: Op, inputs: &[(&str, &D::Tensor)]) -> Result<DeviceTensors<D::Tensor>> {
        let t0 = profile::start();
        let ins: DeviceTensors<D::Tensor> = inputs.iter().map(|(k, t)| (k.to_string(), (*t).clone())).collect();
        let out = self.dev.run(&op, &ins)?;
        self.timed(op.name(), t0);
        Ok(out)
    }

    /// Records op `name` begun at `t0` in the op profile (waiting for it first when the
    /// profile asks).
    fn timed(&self, name: &'static str, t0: Option<std::time::Instant>) {
        if t0.is_some() && profile::synchronised() {
            self.dev.sync();
        }
        profile::record(name, t0);
    }

    /// Runs `op` writing its output `out` into `into` (in place).
    fn into(&self, op: Op, inputs: &[(&str, &D::Tensor)], out: &str, into: &D::Tensor) -> Result<()> {
        let t0 = profile::start();
        let ins: DeviceTensors<D::Tensor> = inputs.iter().map(|(k, t)| (k.to_string(), (*t).clone())).collect();
        let mut outs: DeviceTensors<D::Tensor> = [(out.to_string(), into.clone())].into();
        self.dev.run_into(&op, &ins, &mut outs)?;
        self.timed(op.name(), t0);
        Ok(())
    }

    fn upload_i32(&self, v: &[i32]) -> Result<D::Tensor> {
        let t0 = profile::start();
        let t = self.dev.upload(&Tensor::from_i32(vec![v.len()], v))?;
        self.timed("(upload)", t0);
        Ok(t)
    }

    /// Writes `src` [rows, w] into columns `at..at + w` of `dst` [rows, W], in place.
    fn write_columns(&self, src: &D::Tensor, dst: &D::Tensor, at: usize) -> Result<()> {
        let (rows, w, dw) = (src.shape()[0], src.shape()[1], dst.shape()[1]);
        let p = WriteColumnsParams { num_rows: rows, src_width: w, dst_width: dw, offset: at, dtype: DType::F32 };
        self.into(Op::WriteColumns(p), &[("src", src), ("dst", dst)], "output", dst)
    }

    /// y = x·Wᵀ, x [t, cols] f32 → [t, rows] f32.
    fn linear(&self, l: &Weight<D::Tensor>, x: &D::Tensor, t: usize) -> Result<D::Tensor> {
        let x = x.reshape(&[t, l.cols])?;
        let part = |w: &D::Tensor| {
            let p = QuantizedMatmulParams { m: t, n: w.shape()[0], k: l.cols, weight_dtype: w.dtype(), dtype: DType::F32 };
            self.one(Op::QuantizedMatmul(p), &[("x", &x), ("w", w)], "y")
        };
        if let [w] = l.parts.as_slice() {
            return part(w);
        }
        let y = self.dev.zeros(DType::F32, &[t, l.rows])?;
        let mut at = 0;
        for w in &l.parts {
            self.write_columns(&part(w)?, &y, at)?;
            at += w.shape()[0];
        }
        Ok(y)
    }

    /// Rows `ids` of `table` [vocab, width] (any weight format) as f32 [ids.len(), width].
    fn gather(&self, table: &D::Tensor, ids: &D::Tensor) -> Result<D::Tensor> {
        let (vocab, width) = (table.shape()[0], table.shape()[1]);
        let n = ids.numel();
        let p = EmbeddingParams { num_tokens: n, hidden_size: width, vocab_size: vocab, dtype: table.dtype() };
        let y = self.one(Op::EmbeddingLookup(p), &[("table", table), ("ids", ids)], "output")?;
        if y.dtype() == DType::F32 {
            return Ok(y);
        }
        let p = CastParams { num_elements: n * width, input_dtype: y.dtype(), output_dtype: DType::F32 };
        let flat = self.one(Op::Cast(p), &[("input", &y.reshape(&[n * width])?)], "output")?;
        Ok(flat.reshape(&[n, width])?)
    }

    /// Rows `ids` of a weight matrix (the token embeddings) as f32 [ids.len(), cols]. A
    /// matrix in parts is looked up part by part, each with the ids that fall in it; the
    /// rows are stacked part after part and put back in order by one more gather.
    /// `ids_dev`, when given, holds `ids` on the device already.
    fn lookup(&self, l: &Weight<D::Tensor>, ids: &[i32], ids_dev: Option<&D::Tensor>) -> Result<D::Tensor> {
        if let [w] = l.parts.as_slice() {
            return match ids_dev {
                Some(d) => self.gather(w, d),
                None => self.gather(w, &self.upload_i32(ids)?),
            };
        }
        let (n, e) = (ids.len(), l.cols);
        let stacked = self.dev.zeros(DType::F32, &[1, n * e])?;
        let mut order = vec![0i32; n];
        let (mut first, mut done) = (0i32, 0usize);
        for w in &l.parts {
            let rows = w.shape()[0] as i32;
            let mine: Vec<usize> = (0..n).filter(|&i| (first..first + rows).contains(&ids[i])).collect();
            if !mine.is_empty() {
                let local: Vec<i32> = mine.iter().map(|&i| ids[i] - first).collect();
                let got = self.gather(w, &self.upload_i32(&local)?)?;
                self.write_columns(&got.reshape(&[1, mine.len() * e])?, &stacked, done * e)?;
                for (k, &i) in mine.iter().enumerate() {
                    order[i] = (done + k) as i32;
                }
                done += mine.len();
            }
            first += rows;
        }
        if done != n {
            return Err(self.err(format!("{} of {n} token ids are outside the embedding table", n - done)));
        }
        self.gather(&stacked.reshape(&[n, e])?, &self.upload_i32(&order)?)
    }

    fn rms_norm(&self, x: &D::Tensor, w: &D::Tensor, rows: usize) -> Result<D::Tensor> {
        let h = w.numel();
        let p = RmsNormParams { num_tokens: rows, hidden_size: h, eps: self.cfg.eps as f64, gemma: false, dtype: DType::F32 };
        let y = self.one(Op::RmsNorm(p), &[("input", &x.reshape(&[rows, h])?), ("weight", w)], "output")?;
        Ok(y.reshape(x.shape())?)
    }

    /// The architecture's norm of the rows of `x`: RMSNorm, or LayerNorm with bias `b`.
    fn norm(&self, x: &D::Tensor, w: &D::Tensor, b: Option<&D::Tensor>, rows: usize) -> Result<D::Tensor> {
        let Some(b) = b else { return self.rms_norm(x, w, rows) };
        let h = w.numel();
        let p = LayerNormParams { num_tokens: rows, hidden_size: h, eps: self.cfg.eps as f64, dtype: DType::F32 };
        let y = self.one(Op::LayerNorm(p), &[("input", &x.reshape(&[rows, h])?), ("gamma", w), ("beta", b)], "output")?;
        Ok(y.reshape(x.shape())?)
    }

    fn add(&self, a: &D::Tensor, b: &D::Tensor, t: usize) -> Result<D::Tensor> {
        let e = a.numel() / t;
        let p = RowsParams { num_tokens: t, hidden_size: e, dtype: DType::F32 };
        self.one(Op::AddResidual(p), &[("input", &a.reshape(&[t, e])?), ("residual", &b.reshape(&[t, e])?)], "output")
    }

    /// `x + d` and the architecture's norm of it, (normed, sum): one `fused_add_rms_norm`
    /// where the norm is RMSNorm, else an add and a LayerNorm.
    fn add_norm(&self, x: &D::Tensor, d: &D::Tensor, w: &D::Tensor, b: Option<&D::Tensor>, t: usize) -> Result<(D::Tensor, D::Tensor)> {
        if b.is_some() {
            let sum = self.add(x, d, t)?;
            return Ok((self.norm(&sum, w, b, t)?, sum));
        }
        let h = w.numel();
        let p = RmsNormParams { num_tokens: t, hidden_size: h, eps: self.cfg.eps as f64, gemma: false, dtype: DType::F32 };
        let ins: [(&str, &D::Tensor); 3] = [("input", &x.reshape(&[t, h])?), ("residual", &d.reshape(&[t, h])?), ("weight", w)];
        let mut out = self.many(Op::FusedAddRmsNorm(p), &ins)?;
        let (Some(normed), Some(sum)) = (out.remove("output"), out.remove("residual_out")) else {
            return Err(self.err("fused_add_rms_norm returned too few outputs"));
        };
        Ok((normed, sum))
    }

    fn add_bias(&self, x: &D::Tensor, b: Option<&D::Tensor>, t: usize) -> Result<D::Tensor> {
        let Some(b) = b else { return Ok(x.clone()) };
        let h = b.numel();
        let p = RowsParams { num_tokens: t, hidden_size: h, dtype: DType::F32 };
        self.one(Op::AddBias(p), &[("input", &x.reshape(&[t, h])?), ("bias", b)], "output")
    }

    fn rope(&self, x: &D::Tensor, heads: usize, pos: &D::Tensor, freqs: &D::Tensor, t: usize) -> Result<D::Tensor> {
        let c = &self.cfg;
        let p = RopeFreqsParams {
            num_tokens: t,
            num_heads: heads,
            head_size: c.head_dim,
            rotary_dim: c.rope_dim,
            interleave: !c.rope_neox,
            dtype: DType::F32,
        };
        self.one(Op::RopeFreqs(p), &[("input", &x.reshape(&[t, heads, c.head_dim])?), ("pos_ids", pos), ("inv_freq", freqs)], "output")
    }

    /// The block's Q [t, hq, hd], K and V [t, hk, hd] from the normed input `h`: RoPE'd
    /// (with the Q/K norms first where the model has them).
    fn qkv(
        &self,
        lw: &Layer<D::Tensor>,
        h: &D::Tensor,
        pos: &D::Tensor,
        freqs: &D::Tensor,
        t: usize,
    ) -> Result<(D::Tensor, D::Tensor, D::Tensor)> {
        let c = &self.cfg;
        let (hd, hq, hk) = (c.head_dim, c.n_head, c.n_kv_head);
        match &lw.qkv {
            Qkv::Packed { w, b, with_v, wv, bv } => {
                let y = self.add_bias(&self.linear(w, h, t)?, b.as_ref(), t)?;
                let qk_norm = lw.q_norm.is_some();
                let p = RopeQkvParams {
                    num_tokens: t,
                    num_heads: hq,
                    num_kv_heads: hk,
                    with_v: *with_v,
                    head_size: hd,
                    rotary_dim: c.rope_dim,
                    interleave: !c.rope_neox,
                    qk_norm,
                    eps: c.eps as f64,
                    dtype: DType::F32,
                };
                let mut ins: Vec<(&str, &D::Tensor)> = vec![("qkv", &y), ("pos_ids", pos), ("inv_freq", freqs)];
                if let (Some(qn), Some(kn)) = (&lw.q_norm, &lw.k_norm) {
                    ins.extend([("q_norm", qn), ("k_norm", kn)]);
                }
                let mut out = self.many(Op::RopeQkv(p), &ins)?;
                let (Some(q), Some(k)) = (out.remove("q"), out.remove("k")) else {
                    return Err(self.err("rope_qkv returned too few outputs"));
                };
                let v = match (out.remove("v"), wv) {
                    (Some(v), _) => v,
                    (None, Some(wv)) => self.add_bias(&self.linear(wv, h, t)?, bv.as_ref(), t)?.reshape(&[t, hk, hd])?,
                    (None, None) => return Err(self.err("rope_qkv returned no 'v'")),
                };
                Ok((q, k, v))
            }
            Qkv::Separate { wq, wk, wv, bq, bk, bv } => {
                let mut q = self.add_bias(&self.linear(wq, h, t)?, bq.as_ref(), t)?;
                let mut k = self.add_bias(&self.linear(wk, h, t)?, bk.as_ref(), t)?;
                let v = self.add_bias(&self.linear(wv, h, t)?, bv.as_ref(), t)?;
                if let Some(w) = &lw.q_norm {
                    q = self.rms_norm(&q, w, t * hq)?;
                }
                if let Some(w) = &lw.k_norm {
                    k = self.rms_norm(&k, w, t * hk)?;
                }
                let (q, k) = if c.rope {
                    (self.rope(&q, hq, pos, freqs, t)?, self.rope(&k, hk, pos, freqs, t)?)
                } else {
                    (q.reshape(&[t, hq, hd])?, k.reshape(&[t, hk, hd])?)
                };
                Ok((q, k, v.reshape(&[t, hk, hd])?))
            }
        }
    }

    /// The feed-forward block's activations [t, n_ff] from the normed input `h`: the gated
    /// activation of gate and up, or GPT-2's GELU of up.
    fn ffn_up(&self, ffn: &Ffn<D::Tensor>, h: &D::Tensor, t: usize) -> Result<D::Tensor> {
        let c = &self.cfg;
        let gated = |packed: bool| {
            let gp = GatedParams { num_tokens: t, intermediate_size: c.n_ff, dtype: DType::F32, packed };
            if c.arch == Arch::Gemma3 {
                Op::GeluAndMul(gp)
            } else {
                Op::SiluAndMul(gp)
            }
        };
        match ffn {
            Ffn::Packed(w) => self.one(gated(true), &[("input", &self.linear(w, h, t)?)], "output"),
            Ffn::Separate { gate, up, up_b } => {
                let u = self.add_bias(&self.linear(up, h, t)?, up_b.as_ref(), t)?;
                match gate {
                    Some(gate) => self.one(gated(false), &[("gate", &self.linear(gate, h, t)?), ("up", &u)], "output"),
                    None => {
                        // GPT-2's GELU is the tanh approximation (ggml_gelu).
                        let p = UnaryParams { num_elements: t * c.n_ff, dtype: DType::F32 };
                        Ok(self.one(Op::GeluTanh(p), &[("input", &u.reshape(&[t * c.n_ff])?)], "output")?.reshape(&[t, c.n_ff])?)
                    }
                }
            }
        }
    }

    fn forward_pass(&self, kv: &mut Pages<D>, seqs: &[SeqChunk], plan: &Plan, trace: Option<&mut Vec<Vec<f32>>>) -> Result<Vec<f32>> {
        let t = plan.rows.len();
        let decode = seqs.iter().all(|s| s.tokens.len() == 1);
        // The rows whose logits are wanted, in order.
        let mut want: Vec<i32> = Vec::new();
        let mut at = 0usize;
        for s in seqs {
            let n = s.tokens.len();
            match s.logits {
                Logits::All | Logits::Hidden => want.extend((at..at + n).map(|r| r as i32)),
                Logits::Last => want.push((at + n - 1) as i32),
                Logits::None => {}
            }
            at += n;
        }
        // A decode step of a few sequences is recorded once per shape and replayed (CUDA
        // graphs): its ~300 kernels cost more to launch one by one than to run.
        let hidden = seqs.iter().any(|s| s.logits == Logits::Hidden);
        if hidden && seqs.iter().any(|s| matches!(s.logits, Logits::All | Logits::Last)) {
            return Err(self.err("a batch asks for hidden states or for logits, not both"));
        }
        let record = decode
            && !hidden
            && want.len() == t
            && trace.is_none()
            && seqs.len() <= MAX_RECORDED_BATCH
            && !profile::enabled()
            && self.dev.can_capture();
        let ix = StepIndex::new(seqs, plan, kv.page_size, record);
        if record {
            let key = (seqs.len(), ix.kv_indices.len(), std::thread::current().id());
            match kv.recorded.get(&key) {
                Some(Recorded::Ready { rec, logits }) => {
                    self.dev.replay(rec, &ix.bytes().iter().map(|v| v.as_slice()).collect::<Vec<_>>())?;
                    return self.fetch(logits);
                }
                Some(Recorded::Seen) => {
                    // Seen once (so every kernel is compiled and every buffer of the step
                    // has been on this thread's stream): record it now.
                    match self.record_step(kv, &ix, seqs.len(), t, &want) {
                        Ok((rec, logits)) => {
                            self.dev.replay(&rec, &ix.bytes().iter().map(|v| v.as_slice()).collect::<Vec<_>>())?;
                            let out = self.fetch(&logits);
                            kv.recorded.insert(key, Recorded::Ready { rec, logits });
                            return out;
                        }
                        Err(e) => {
                            record_failed(&self.dev.name(), &e);
                            kv.recorded.insert(key, Recorded::OpByOp);
                        }
                    }
                }
                Some(Recorded::OpByOp) => {}
                None if kv.recorded.len() < MAX_RECORDINGS => {
                    kv.recorded.insert(key, Recorded::Seen);
                }
                None => {}
            }
        }
        let st = self.upload_step(&ix)?;
        match self.step(kv, &ix, &st, seqs.len(), t, decode, &want, hidden, trace)? {
            Some(logits) => self.fetch(&logits),
            None => Ok(Vec::new()),
        }
    }

    /// Records the decode step of `ix` ([`Device::begin_capture`]): its kernels and the
    /// device logits tensor each replay writes.
    fn record_step(&self, kv: &mut Pages<D>, ix: &StepIndex, b: usize, t: usize, want: &[i32]) -> Result<(Capture, D::Tensor)> {
        let st = self.upload_step(ix)?;
        self.dev.begin_capture(&st.all())?;
        let logits = self.step(kv, ix, &st, b, t, true, want, false, None);
        let rec = self.dev.end_capture();
        let logits = logits?.ok_or_else(|| self.err("a recorded step returned no logits"))?;
        Ok((rec?, logits))
    }

    /// The step's index tensors on the device.
    fn upload_step(&self, ix: &StepIndex) -> Result<StepTensors<D::Tensor>> {
        Ok(StepTensors {
            ids: self.upload_i32(&ix.ids)?,
            pos: self.upload_i32(&ix.pos)?,
            seq: self.upload_i32(&ix.seq_of)?,
            qo: self.upload_i32(&ix.qo_indptr)?,
            kvp: self.upload_i32(&ix.kv_indptr)?,
            kvi: self.upload_i32(&ix.kv_indices)?,
            last: self.upload_i32(&ix.last_len)?,
        })
    }

    /// Copies logits back to the host.
    fn fetch(&self, logits: &D::Tensor) -> Result<Vec<f32>> {
        let t0 = profile::start();
        let host = self.dev.download(logits)?.to_f32()?;
        profile::record("(download: waits for the device)", t0);
        Ok(host)
    }

    /// The forward pass proper on the step's index tensors: every layer (K/V appended to
    /// the pool), then the logits of the rows in `want` on the device, or with `hidden`
    /// their final hidden states (`None` when no row is wanted).
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        kv: &mut Pages<D>,
        ix: &StepIndex,
        st: &StepTensors<D::Tensor>,
        b: usize,
        t: usize,
        decode: bool,
        want: &[i32],
        hidden: bool,
        mut trace: Option<&mut Vec<Vec<f32>>>,
    ) -> Result<Option<D::Tensor>> {
        let c = &self.cfg;
        let (e, hd, hq, hk) = (c.n_embd, c.head_dim, c.n_head, c.n_kv_head);
        let (ps, num_pages) = (kv.page_size, kv.num_pages);
        let n_ids = ix.kv_indices.len();
        let mut x = self.lookup(&self.embd, &ix.ids, Some(&st.ids))?;
        if c.embd_scale != 1.0 {
            let p = ScaleParams { num_elements: t * e, scale: c.embd_scale as f64, dtype: DType::F32 };
            x = self.one(Op::Scale(p), &[("input", &x.reshape(&[t * e])?)], "output")?.reshape(&[t, e])?;
        }
        if let Some(pe) = &self.pos_embd {
            x = self.add(&x, &self.lookup(pe, &ix.pos, Some(&st.pos))?, t)?;
        }
        // The last sub-block's output not yet added to `x`: added by the next norm, fused.
        let mut pending: Option<D::Tensor> = None;
        for (il, lw) in self.layers.iter().enumerate() {
            let h = match pending.take() {
                Some(d) => {
                    let (h, sum) = self.add_norm(&x, &d, &lw.attn_norm, lw.attn_norm_b.as_ref(), t)?;
                    x = sum;
                    h
                }
                None => self.norm(&x, &lw.attn_norm, lw.attn_norm_b.as_ref(), t)?,
            };
            let swa = c.is_swa(il);
            let freqs = if swa { &self.inv_freq_swa } else { &self.inv_freq };
            let (q, k, v) = self.qkv(lw, &h, &st.pos, freqs, t)?;

            let (kc, vc) = (&kv.k[il], &kv.v[il]);
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
            let tables: [(&str, &D::Tensor); 3] = [("kv_indices", &st.kvi), ("kv_indptr", &st.kvp), ("kv_last_page_len", &st.last)];
            // In place: the pool's tensors are the caches.
            let ins: DeviceTensors<D::Tensor> =
                [("append_k", &k), ("append_v", &v), ("batch_indices", &st.seq), ("positions", &st.pos), ("k_cache", kc), ("v_cache", vc)]
                    .into_iter()
                    .chain(tables)
                    .map(|(n, t)| (n.to_string(), t.clone()))
                    .collect();
            let mut outs: DeviceTensors<D::Tensor> =
                [("k_cache_out".to_string(), kc.clone()), ("v_cache_out".to_string(), vc.clone())].into();
            let t0 = profile::start();
            self.dev.run_into(&Op::AppendPagedKvCache(ap), &ins, &mut outs)?;
            self.timed("append_paged_kv_cache", t0);

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
                let mut ins = vec![("q", &q), ("k_cache", kc), ("v_cache", vc)];
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
                let mut ins = vec![("q", &q), ("qo_indptr", &st.qo), ("k_cache", kc), ("v_cache", vc)];
                ins.extend(tables);
                self.one(Op::BatchPrefillWithPagedKvCache(p), &ins, "output")?
            };
            let mut o = self.add_bias(&self.linear(&lw.wo, &att, t)?, lw.bo.as_ref(), t)?;
            if let Some(w) = &lw.post_attn_norm {
                o = self.rms_norm(&o, w, t)?;
            }
            let (h, sum) = self.add_norm(&x, &o, &lw.ffn_norm, lw.ffn_norm_b.as_ref(), t)?;
            x = sum;
            let a = self.ffn_up(&lw.ffn, &h, t)?;
            let mut dn = self.add_bias(&self.linear(&lw.down, &a, t)?, lw.down_b.as_ref(), t)?;
            if let Some(w) = &lw.post_ffn_norm {
                dn = self.rms_norm(&dn, w, t)?;
            }
            match trace.as_deref_mut() {
                Some(tr) => {
                    x = self.add(&x, &dn, t)?;
                    tr.push(self.dev.download(&x)?.to_f32()?);
                }
                None => pending = Some(dn),
            }
        }

        if want.is_empty() {
            return Ok(None);
        }
        let n = want.len();
        let (norm_w, norm_b) = (&self.output_norm, self.output_norm_b.as_ref());
        let h = match pending {
            Some(d) if n == t => self.add_norm(&x, &d, norm_w, norm_b, t)?.0,
            pending => {
                if let Some(d) = pending {
                    x = self.add(&x, &d, t)?;
                }
                let rows = if n == t { x } else { self.gather(&x.reshape(&[t, e])?, &self.upload_i32(&want)?)? };
                self.norm(&rows, norm_w, norm_b, n)?
            }
        };
        if hidden {
            return Ok(Some(h));
        }
        let logits = self.linear(&self.output, &h, n)?;
        Ok(Some(logits))
    }
}

/// The most sequences in a decode step that is recorded and replayed.
const MAX_RECORDED_BATCH: usize = 16;
/// The most step shapes recorded per pool.
const MAX_RECORDINGS: usize = 48;

/// A decode step shape's recording state in a pool ([`Pages::recorded`]).
pub(crate) enum Recorded<T> {
    /// Run once op by op; recorded the next time.
    Seen,
    /// Recorded: replayed with each step's index tensors.
    Ready { rec: Capture, logits: T },
    /// Could not be recorded: op by op.
    OpByOp,
}

/// Says once per process why a step could not be recorded (it then runs op by op).
fn record_failed(dev: &str, e: &Error) {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| eprintln!("note: {dev}: a decode step could not be recorded as a graph ({e}); it runs kernel by kernel"));
}

/// A step's index data on the host: token ids, positions, the sequence of each row, and
/// the page tables in FlashInfer's CSR form (each sequence lists the pages up to its last
/// position).
struct StepIndex {
    ids: Vec<i32>,
    pos: Vec<i32>,
    seq_of: Vec<i32>,
    qo_indptr: Vec<i32>,
    kv_indptr: Vec<i32>,
    kv_indices: Vec<i32>,
    last_len: Vec<i32>,
}

impl StepIndex {
    /// With `pad`, the page list is padded (with page 0, never read: `kv_indptr` bounds
    /// each sequence) to a bucket of at most ~12% more, so that a recorded step serves
    /// the next steps of the same batch until its pages outgrow the bucket.
    fn new(seqs: &[SeqChunk], plan: &Plan, ps: usize, pad: bool) -> Self {
        let ids: Vec<i32> = seqs.iter().flat_map(|s| s.tokens.iter().map(|&x| x as i32)).collect();
        let pos: Vec<i32> = plan.rows.iter().map(|&(_, p)| p as i32).collect();
        let seq_of: Vec<i32> = plan.rows.iter().map(|&(s, _)| s as i32).collect();
        let (mut qo_indptr, mut kv_indptr, mut kv_indices, mut last_len) = (vec![0i32], vec![0i32], Vec::new(), Vec::new());
        for s in seqs {
            let end = s.start + s.tokens.len();
            kv_indices.extend(s.pages[..end.div_ceil(ps)].iter().map(|&p| p as i32));
            kv_indptr.push(kv_indices.len() as i32);
            qo_indptr.push(qo_indptr.last().copied().unwrap_or(0) + s.tokens.len() as i32);
            last_len.push(((end - 1) % ps + 1) as i32);
        }
        if pad {
            let n = kv_indices.len();
            kv_indices.resize(n.next_multiple_of((n.next_power_of_two() / 8).max(8)), 0);
        }
        StepIndex { ids, pos, seq_of, qo_indptr, kv_indptr, kv_indices, last_len }
    }

    /// The vectors as bytes, in [`StepTensors::all`]'s order.
    fn bytes(&self) -> [Vec<u8>; 7] {
        let b = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        [b(&self.ids), b(&self.pos), b(&self.seq_of), b(&self.qo_indptr), b(&self.kv_indptr), b(&self.kv_indices), b(&self.last_len)]
    }
}

/// [`StepIndex`] on the device.
struct StepTensors<T> {
    ids: T,
    pos: T,
    seq: T,
    qo: T,
    kvp: T,
    kvi: T,
    last: T,
}

impl<T> StepTensors<T> {
    fn all(&self) -> [&T; 7] {
        [&self.ids, &self.pos, &self.seq, &self.qo, &self.kvp, &self.kvi, &self.last]
    }
}

impl<D: Device + 'static> Runner for Net<D> {
    fn name(&self) -> String {
        self.dev.name()
    }

    fn new_pages(&self, page_size: usize, num_pages: usize) -> Result<Box<dyn PoolPages>> {
        let c = &self.cfg;
        Ok(Box::new(Pages::new(self.dev.clone(), c.n_layer, page_size, num_pages, c.n_kv_head, c.head_dim)?))
    }

    fn max_tensor_bytes(&self) -> u64 {
        self.dev.max_tensor_bytes()
    }

    fn forward(&self, pages: &mut dyn PoolPages, seqs: &[SeqChunk], plan: &Plan, trace: Option<&mut Vec<Vec<f32>>>) -> Result<Vec<f32>> {
        let name = self.dev.name();
        let kv = pages
            .as_any_mut()
            .downcast_mut::<Pages<D>>()
            .ok_or_else(|| self.err(format!("this KV pool belongs to another device than {name}")))?;
        let t0 = profile::start();
        let r = self.dev.scope(|| self.forward_pass(kv, seqs, plan, trace));
        profile::record_pass(t0);
        r
    }
}
