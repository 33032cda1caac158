//! One forward pass for every supported architecture (llama, qwen2, gemma3), on the CPU
//! fast path. Weights stay in the GGUF file's formats and are read from the mmap; each
//! projection is a [`Linear`] whatever its format.

use crate::backend::BackendKind;
use crate::config::{Arch, Config};
use crate::kv::{KvCache, KvPool};
use crate::{Error, Result};
use ingot_core::DType;
use ingot_cpu::fast::{self, WeightView};
use ingot_cpu::paged::{paged_attention, PagedKv, QueryRow};
use ingot_gguf::GgufFile;
use std::collections::HashMap;
use std::path::Path;

/// A projection y = x·Wᵀ with W [out, in] stored in any weight format of the file.
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    offset: usize,
    size: usize,
}

/// Weights of one transformer block.
struct Layer {
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
    post_ffn_norm: Option<Vec<f32>>,
}

/// A loaded model: the open file, its config and where each weight lives.
pub struct Model {
    file: GgufFile,
    pub config: Config,
    embd: Linear,
    output: Linear,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    inv_freq: Vec<f32>,
    inv_freq_swa: Vec<f32>,
    /// The device model when forward passes run on a GPU backend (`None`: the CPU path).
    #[cfg(feature = "gpu")]
    gpu: Option<Box<dyn crate::gpu::GpuRun>>,
}

/// Which logits `forward` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's: [vocab].
    Last,
    /// Every position's: [tokens, vocab].
    All,
    /// None (a prefill chunk that is not the prompt's last).
    None,
}

/// One sequence's share of a batched forward pass.
#[derive(Clone, Copy, Debug)]
pub struct SeqChunk<'a> {
    /// The sequence's next tokens (a prefill chunk, or one token when decoding); at least one.
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`: how many of the sequence's tokens the pages already hold.
    pub start: usize,
    /// The sequence's block table: page `pages[j / page_size]` holds position j. It must
    /// cover `start + tokens.len()` positions; the pages of the new positions are written,
    /// and must be this sequence's alone (no other sequence of the batch lists them).
    pub pages: &'a [u32],
    /// Which of this chunk's logits to return.
    pub logits: Logits,
}

fn model_err(arch: &str, msg: impl Into<String>) -> Error {
    Error::Model { arch: arch.to_string(), msg: msg.into() }
}

impl Model {
    /// Open a GGUF file and map its weights.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Model::from_file(GgufFile::open(path)?)
    }

    /// Build a model over an already open file.
    pub fn from_file(file: GgufFile) -> Result<Model> {
        let config = Config::from_gguf(&file)?;
        let arch = config.arch.name();
        let linear = |name: &str, rows: usize, cols: usize| -> Result<Linear> {
            let t = file.tensor(name)?;
            let dtype = file.tensor_dtype(name)?;
            let shape = t.shape_row_major();
            if shape != [rows as u64, cols as u64] {
                return Err(model_err(arch, format!("tensor '{name}' has shape {shape:?}, expected [{rows}, {cols}]")));
            }
            let lin = Linear { dtype, rows, cols, offset: t.file_offset as usize, size: t.size as usize };
            // Validates the byte count against the format once, at load.
            WeightView::new(dtype, rows, cols, file.data_of(t)?)?;
            Ok(lin)
        };
        let vector = |name: &str, len: usize| -> Result<Vec<f32>> {
            let t = file.tensor(name)?;
            let dtype = file.tensor_dtype(name)?;
            if t.numel() != len as u64 {
                return Err(model_err(arch, format!("tensor '{name}' has {} elements, expected {len}", t.numel())));
            }
            let mut out = vec![0f32; len];
            ingot_cpu::quant::dequantize_row(dtype, file.data_of(t)?, &mut out)?;
            Ok(out)
        };
        let opt_vector = |name: &str, len: usize| -> Result<Option<Vec<f32>>> {
            if file.find_tensor(name).is_some() {
                vector(name, len).map(Some)
            } else {
                Ok(None)
            }
        };
        let c = &config;
        let (qd, kvd) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
        let mut layers = Vec::with_capacity(c.n_layer);
        for il in 0..c.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}");
            let gemma = c.arch == Arch::Gemma3;
            layers.push(Layer {
                attn_norm: vector(&n("attn_norm.weight"), c.n_embd)?,
                wq: linear(&n("attn_q.weight"), qd, c.n_embd)?,
                wk: linear(&n("attn_k.weight"), kvd, c.n_embd)?,
                wv: linear(&n("attn_v.weight"), kvd, c.n_embd)?,
                wo: linear(&n("attn_output.weight"), c.n_embd, qd)?,
                bq: opt_vector(&n("attn_q.bias"), qd)?,
                bk: opt_vector(&n("attn_k.bias"), kvd)?,
                bv: opt_vector(&n("attn_v.bias"), kvd)?,
                q_norm: if gemma { Some(vector(&n("attn_q_norm.weight"), c.head_dim)?) } else { None },
                k_norm: if gemma { Some(vector(&n("attn_k_norm.weight"), c.head_dim)?) } else { None },
                post_attn_norm: if gemma { Some(vector(&n("post_attention_norm.weight"), c.n_embd)?) } else { None },
                ffn_norm: vector(&n("ffn_norm.weight"), c.n_embd)?,
                gate: linear(&n("ffn_gate.weight"), c.n_ff, c.n_embd)?,
                up: linear(&n("ffn_up.weight"), c.n_ff, c.n_embd)?,
                down: linear(&n("ffn_down.weight"), c.n_embd, c.n_ff)?,
                post_ffn_norm: if gemma { Some(vector(&n("post_ffw_norm.weight"), c.n_embd)?) } else { None },
            });
        }
        let embd = linear("token_embd.weight", c.vocab, c.n_embd)?;
        // Tied embeddings when the file has no separate output matrix.
        let output = if file.find_tensor("output.weight").is_some() { linear("output.weight", c.vocab, c.n_embd)? } else { embd };
        let output_norm = vector("output_norm.weight", c.n_embd)?;
        let freqs = |base: f32| -> Result<Vec<f32>> {
            let half = c.rope_dim / 2;
            let mut f: Vec<f32> = (0..half).map(|i| (base as f64).powf(-2.0 * i as f64 / c.rope_dim as f64) as f32).collect();
            // Llama 3 scaling is stored as per-frequency divisors.
            if let Some(div) = opt_vector("rope_freqs.weight", half)? {
                for (x, d) in f.iter_mut().zip(div) {
                    *x /= d;
                }
            }
            Ok(f)
        };
        let inv_freq = freqs(c.rope_base)?;
        let inv_freq_swa = freqs(c.rope_base_swa)?;
        Ok(Model {
            config,
            embd,
            output,
            output_norm,
            layers,
            inv_freq,
            inv_freq_swa,
            file,
            #[cfg(feature = "gpu")]
            gpu: None,
        })
    }

    /// Open a GGUF file and prepare it for `backend` (see [`Model::on_backend`]).
    pub fn load_on(path: impl AsRef<Path>, backend: BackendKind) -> Result<Model> {
        Model::load(path)?.on_backend(backend)
    }

    /// Moves the forward passes to `backend`: for a GPU, the weights are uploaded in their
    /// stored formats and the kernels are compiled and warmed up (a short prefill and a
    /// decode step) before this returns, so the first request pays no compile time.
    /// [`BackendKind::Auto`] takes the best device there is (CUDA, else a hardware GPU
    /// through wgpu) and stays on the CPU when there is none ([`Model::backend`] says
    /// which); a named GPU that cannot be opened is an error, never a silent fallback.
    pub fn on_backend(mut self, backend: BackendKind) -> Result<Model> {
        #[cfg(feature = "gpu")]
        {
            self.gpu = crate::backend::open(backend, &self)?;
            if self.gpu.is_some() {
                let mut cache = self.new_cache()?;
                let warm: Vec<u32> = vec![0; 9];
                self.forward(&warm, &mut cache, Logits::Last, None)?;
                self.forward(&[0], &mut cache, Logits::Last, None)?;
            }
        }
        #[cfg(not(feature = "gpu"))]
        crate::backend::open(backend)?;
        Ok(self)
    }

    /// Where the forward passes run: `cpu`, `gpu:cuda`, `gpu:wgpu` or `gpu:metal`.
    pub fn backend(&self) -> &str {
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            return g.name();
        }
        "cpu"
    }

    /// The weights and tables the device model is built from.
    #[cfg(feature = "gpu")]
    pub(crate) fn host_weights(&self) -> crate::gpu::HostWeights<'_> {
        use crate::gpu::{HostLayer, HostLinear};
        let lin =
            |l: &Linear| HostLinear { dtype: l.dtype, rows: l.rows, cols: l.cols, bytes: &self.file.bytes()[l.offset..l.offset + l.size] };
        crate::gpu::HostWeights {
            embd: lin(&self.embd),
            output: lin(&self.output),
            output_norm: &self.output_norm,
            inv_freq: &self.inv_freq,
            inv_freq_swa: &self.inv_freq_swa,
            layers: self
                .layers
                .iter()
                .map(|l| HostLayer {
                    attn_norm: &l.attn_norm,
                    wq: lin(&l.wq),
                    wk: lin(&l.wk),
                    wv: lin(&l.wv),
                    wo: lin(&l.wo),
                    bq: l.bq.as_deref(),
                    bk: l.bk.as_deref(),
                    bv: l.bv.as_deref(),
                    q_norm: l.q_norm.as_deref(),
                    k_norm: l.k_norm.as_deref(),
                    post_attn_norm: l.post_attn_norm.as_deref(),
                    ffn_norm: &l.ffn_norm,
                    gate: lin(&l.gate),
                    up: lin(&l.up),
                    down: lin(&l.down),
                    post_ffn_norm: l.post_ffn_norm.as_deref(),
                })
                .collect(),
        }
    }

    /// The open GGUF file (metadata for the tokenizer and chat template).
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    fn view(&self, l: &Linear) -> WeightView<'_> {
        let data = &self.file.bytes()[l.offset..l.offset + l.size];
        // Checked at load; the file cannot change under the mmap's borrow.
        WeightView::new(l.dtype, l.rows, l.cols, data).expect("weight checked at load")
    }

    fn linear(&self, l: &Linear, x: &[f32], t: usize) -> Vec<f32> {
        let mut y = vec![0f32; t * l.rows];
        fast::matmul_xwt(x, t, &self.view(l), &mut y);
        y
    }

    /// An empty cache for one sequence, on the model's backend.
    pub fn new_cache(&self) -> Result<KvCache> {
        let pool = self.new_pool(KvCache::PAGE_SIZE, 0)?;
        Ok(KvCache { pool, pages: Vec::new(), len: 0 })
    }

    /// A pool of `num_pages` K/V pages of `page_size` positions for batched forwards, on
    /// the model's backend (device memory for a GPU model).
    pub fn new_pool(&self, page_size: usize, num_pages: usize) -> Result<KvPool> {
        let host = KvPool::new(&self.config, page_size, if self.backend() == "cpu" { num_pages } else { 0 })?;
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            drop(host);
            return Ok(KvPool::with_device(&self.config, page_size, num_pages, g.new_kv(page_size, num_pages)?));
        }
        Ok(host)
    }

    /// Run `tokens` (the sequence's next tokens, after the `cache.len()` already cached)
    /// and return logits. With `trace`, the residual stream after every layer is
    /// appended to it ([layer][tokens × n_embd]) for divergence hunting. One sequence of
    /// [`forward_batch`](Self::forward_batch) over the cache's private pages.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits, trace: Option<&mut Vec<Vec<f32>>>) -> Result<Vec<f32>> {
        let c = &self.config;
        if !cache.pool.fits(c) {
            return Err(model_err(c.arch.name(), "this cache belongs to another model"));
        }
        let start = cache.len;
        // Checked here too so that an overlong input is refused before the pages grow.
        if start + tokens.len() > c.context {
            return Err(model_err(c.arch.name(), format!("{} tokens exceed the context of {}", start + tokens.len(), c.context)));
        }
        cache.reserve(start + tokens.len())?;
        let seq = SeqChunk { tokens, start, pages: &cache.pages, logits: which };
        let logits = self.forward_batch(&mut cache.pool, &[seq], trace)?;
        cache.len = start + tokens.len();
        Ok(logits)
    }

    /// One forward pass over several sequences at once: the rows of every chunk are
    /// concatenated for the matmuls, and each row attends over its own sequence's pages.
    /// The K/V of the new positions are written into `pool`. Returns the requested logits,
    /// sequence by sequence in order ([rows, vocab]). A row's logits are bit-identical
    /// whatever else is in the batch (every kernel computes each row on its own), and
    /// whatever the page size or chunking of its sequence. With `trace`, the residual
    /// stream of all rows after every layer is appended ([layer][rows × n_embd]).
    ///
    /// The pass runs on a worker of the CPU thread pool (`ingot_cpu::in_pool`), so each
    /// parallel op is handed out through the pool's queue rather than by waking threads
    /// from outside it once per op.
    ///
    /// On a GPU backend the same pass runs as device ops over the pool's device pages.
    pub fn forward_batch(&self, pool: &mut KvPool, seqs: &[SeqChunk], trace: Option<&mut Vec<Vec<f32>>>) -> Result<Vec<f32>> {
        let c = &self.config;
        let arch = c.arch.name();
        if !pool.fits(c) {
            return Err(model_err(arch, "this KV pool belongs to another model"));
        }
        if pool.on_device() != (self.backend() != "cpu") {
            let (p, m) = (if pool.on_device() { "a GPU device" } else { "host memory" }, self.backend());
            return Err(model_err(arch, format!("this KV pool is in {p} but the model runs on {m} (make pools with Model::new_pool)")));
        }
        let (rows, writes) = self.plan(pool, seqs)?;
        #[cfg(feature = "gpu")]
        if let (Some(g), Some(dev)) = (&self.gpu, pool.dev.as_deref_mut()) {
            return g.forward(dev, seqs, &crate::gpu::Plan { rows }, trace);
        }
        ingot_cpu::in_pool(|| self.forward_batch_cpu(pool, seqs, &rows, &writes, trace))
    }

    /// Checks a batch against the pool and the model, and lists its rows: (sequence,
    /// position) of each, and the pool slot (page · page_size + offset) each row writes.
    #[allow(clippy::type_complexity)]
    fn plan(&self, pool: &KvPool, seqs: &[SeqChunk]) -> Result<(Vec<(usize, usize)>, Vec<usize>)> {
        let c = &self.config;
        let arch = c.arch.name();
        if seqs.is_empty() {
            return Err(model_err(arch, "forward_batch needs at least one sequence"));
        }
        let ps = pool.page_size();
        // (sequence, position) of every row; the (page, slot) each row writes.
        let mut rows: Vec<(usize, usize)> = Vec::new();
        let mut writes: Vec<usize> = Vec::new();
        let mut writer: HashMap<u32, usize> = HashMap::new();
        for (b, s) in seqs.iter().enumerate() {
            let t = s.tokens.len();
            if t == 0 {
                return Err(model_err(arch, format!("sequence {b} of the batch has no token to run")));
            }
            let end = s.start + t;
            if end > c.context {
                return Err(model_err(arch, format!("{end} tokens exceed the context of {}", c.context)));
            }
            if s.pages.len().saturating_mul(ps) < end {
                return Err(model_err(arch, format!("sequence {b}: {} pages of {ps} cannot hold {end} positions", s.pages.len())));
            }
            if let Some(p) = s.pages.iter().find(|&&p| p as usize >= pool.num_pages()) {
                return Err(model_err(arch, format!("sequence {b}: page {p} is outside the pool of {}", pool.num_pages())));
            }
            if let Some(tok) = s.tokens.iter().find(|&&tok| tok as usize >= c.vocab) {
                return Err(model_err(arch, format!("token id {tok} is outside the vocabulary of {}", c.vocab)));
            }
            for pos in s.start..end {
                let page = s.pages[pos / ps];
                if *writer.entry(page).or_insert(b) != b {
                    return Err(model_err(arch, format!("page {page} is written by sequence {} and {b} of one batch", writer[&page])));
                }
                rows.push((b, pos));
                writes.push(page as usize * ps + pos % ps);
            }
        }
        // A page written by one sequence must not be read by another (a shared page is never written).
        for (b, s) in seqs.iter().enumerate() {
            if let Some(p) = s.pages.iter().find(|p| writer.get(p).is_some_and(|&w| w != b)) {
                return Err(model_err(arch, format!("page {p} is written by sequence {} and read by sequence {b}", writer[p])));
            }
        }
        Ok((rows, writes))
    }

    fn forward_batch_cpu(
        &self,
        pool: &mut KvPool,
        seqs: &[SeqChunk],
        rows: &[(usize, usize)],
        writes: &[usize],
        mut trace: Option<&mut Vec<Vec<f32>>>,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let ps = pool.page_size();
        let t = rows.len();
        let (e, hd) = (c.n_embd, c.head_dim);
        let kvw = c.n_kv_head * hd;
        let embd = self.view(&self.embd);
        let mut x = vec![0f32; t * e];
        for (i, &tok) in seqs.iter().flat_map(|s| s.tokens).enumerate() {
            embd.row(tok as usize, &mut x[i * e..(i + 1) * e]);
        }
        if c.embd_scale != 1.0 {
            x.iter_mut().for_each(|v| *v *= c.embd_scale);
        }
        for (il, lw) in self.layers.iter().enumerate() {
            let mut h = x.clone();
            fast::rms_norm(&mut h, &lw.attn_norm, c.eps);
            let mut q = self.linear(&lw.wq, &h, t);
            let mut k = self.linear(&lw.wk, &h, t);
            let mut v = self.linear(&lw.wv, &h, t);
            for (y, b) in [(&mut q, &lw.bq), (&mut k, &lw.bk), (&mut v, &lw.bv)] {
                if let Some(b) = b {
                    for row in y.chunks_exact_mut(b.len()) {
                        row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    }
                }
            }
            if let Some(w) = &lw.q_norm {
                fast::rms_norm(&mut q, w, c.eps);
            }
            if let Some(w) = &lw.k_norm {
                fast::rms_norm(&mut k, w, c.eps);
            }
            let swa = c.is_swa(il);
            let freqs = if swa { &self.inv_freq_swa } else { &self.inv_freq };
            for (i, &(_, pos)) in rows.iter().enumerate() {
                fast::rope(&mut q[i * c.n_head * hd..(i + 1) * c.n_head * hd], hd, pos, freqs, c.rope_neox);
                fast::rope(&mut k[i * kvw..(i + 1) * kvw], hd, pos, freqs, c.rope_neox);
            }
            let (kc, vc) = pool.layer_mut(il);
            for (i, &slot) in writes.iter().enumerate() {
                kc[slot * kvw..(slot + 1) * kvw].copy_from_slice(&k[i * kvw..(i + 1) * kvw]);
                vc[slot * kvw..(slot + 1) * kvw].copy_from_slice(&v[i * kvw..(i + 1) * kvw]);
            }
            let (kc, vc) = pool.layer(il);
            let kv = PagedKv { k: kc, v: vc, page_size: ps, n_kv: c.n_kv_head, head_dim: hd };
            let qrows: Vec<QueryRow> = rows.iter().map(|&(b, pos)| QueryRow { pages: seqs[b].pages, pos }).collect();
            let window = if swa { c.sliding_window } else { None };
            let att = paged_attention(&q, &qrows, &kv, c.n_head, c.attn_scale, window, 0.0);
            let mut o = self.linear(&lw.wo, &att, t);
            if let Some(w) = &lw.post_attn_norm {
                fast::rms_norm(&mut o, w, c.eps);
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

            let mut h = x.clone();
            fast::rms_norm(&mut h, &lw.ffn_norm, c.eps);
            let mut g = self.linear(&lw.gate, &h, t);
            let u = self.linear(&lw.up, &h, t);
            if c.arch == Arch::Gemma3 {
                fast::gelu_tanh_mul(&mut g, &u);
            } else {
                fast::silu_mul(&mut g, &u);
            }
            let mut d = self.linear(&lw.down, &g, t);
            if let Some(w) = &lw.post_ffn_norm {
                fast::rms_norm(&mut d, w, c.eps);
            }
            x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
            if let Some(tr) = trace.as_deref_mut() {
                tr.push(x.clone());
            }
        }
        // Gather the rows whose logits are wanted, in order.
        let mut out_rows = Vec::new();
        let mut at = 0;
        for s in seqs {
            let n = s.tokens.len();
            match s.logits {
                Logits::All => out_rows.extend_from_slice(&x[at * e..(at + n) * e]),
                Logits::Last => out_rows.extend_from_slice(&x[(at + n - 1) * e..(at + n) * e]),
                Logits::None => {}
            }
            at += n;
        }
        if out_rows.is_empty() {
            return Ok(Vec::new());
        }
        fast::rms_norm(&mut out_rows, &self.output_norm, c.eps);
        let n = out_rows.len() / e;
        Ok(self.linear(&self.output, &out_rows, n))
    }
}
