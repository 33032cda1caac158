//! A loaded model: the open GGUF file, its config, and the device-specific half that holds
//! the weights and runs the forward pass ([`crate::net`], the one model definition, generic
//! over the device). This file checks batches against the pool and the model before anything
//! runs on a device.

use crate::backend::BackendKind;
use crate::batch::Plan;
pub use crate::batch::{Logits, SeqChunk};
use crate::config::{Config, Pooling};
use crate::kv::{KvCache, KvPool};
use crate::net::{Net, Runner};
use crate::{Error, Result};
use ingot_gguf::GgufFile;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The most tokens one forward pass of [`Model::embed`] runs (texts are grouped up to it).
pub const EMBED_BATCH_TOKENS: usize = 4096;

/// A loaded model: the open file, its config and its weights on a device.
pub struct Model {
    file: Arc<GgufFile>,
    pub config: Config,
    run: Box<dyn Runner>,
}

fn model_err(arch: &str, msg: impl Into<String>) -> Error {
    Error::Model { arch: arch.to_string(), msg: msg.into() }
}

impl Model {
    /// Open a GGUF file and map its weights.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Model::from_file(GgufFile::open(path)?)
    }

    /// Build a model over an already open file, on the CPU (see [`Model::on_backend`]).
    pub fn from_file(file: GgufFile) -> Result<Model> {
        let config = Config::from_gguf(&file)?;
        let file = Arc::new(file);
        let run: Box<dyn Runner> = Box::new(Net::load(ingot_cpu::CpuDevice, &file, &config)?);
        Ok(Model { file, config, run })
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
        if let Some(run) = crate::backend::open(backend, &self.file, &self.config)? {
            self.run = run;
            let mut cache = self.new_cache()?;
            let warm: Vec<u32> = vec![0; 9];
            self.forward(&warm, &mut cache, Logits::Last, None)?;
            self.forward(&[0], &mut cache, Logits::Last, None)?;
        }
        Ok(self)
    }

    /// Where the forward passes run: `cpu`, `gpu:cuda`, `gpu:wgpu` or `gpu:metal`.
    pub fn backend(&self) -> String {
        self.run.name()
    }

    /// The open GGUF file (metadata for the tokenizer and chat template).
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// An empty cache for one sequence, on the model's backend.
    pub fn new_cache(&self) -> Result<KvCache> {
        let pool = self.new_pool(KvCache::PAGE_SIZE, 0)?;
        Ok(KvCache { pool, pages: Vec::new(), len: 0 })
    }

    /// A pool of `num_pages` K/V pages of `page_size` positions for batched forwards, on
    /// the model's backend (device memory for a GPU model).
    pub fn new_pool(&self, page_size: usize, num_pages: usize) -> Result<KvPool> {
        KvPool::check_size(&self.config, page_size, num_pages, self.run.max_tensor_bytes())?;
        let pages = self.run.new_pages(page_size, num_pages)?;
        Ok(KvPool::from_pages(&self.config, page_size, num_pages, pages))
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
        let (have, want) = (pool.device(), self.backend());
        if have != want {
            let at = |d: &str| if d == "cpu" { "in host memory (cpu)".to_string() } else { format!("on a GPU device ({d})") };
            return Err(model_err(
                arch,
                format!("this KV pool is {} but the model runs on {want} (make pools with Model::new_pool)", at(&have)),
            ));
        }
        let rows = self.plan(pool, seqs)?;
        self.run.forward(pool.pages.as_mut(), seqs, &Plan { rows }, trace)
    }

    /// Embeddings of `texts` (token ids each, at least one, at most the context): the final
    /// hidden states (after the output norm) of each text's positions pooled by `pooling`,
    /// scaled to unit length (as llama.cpp and OpenAI's embeddings are). Texts run together in
    /// forward passes of at most [`EMBED_BATCH_TOKENS`] tokens (a longer text alone), each
    /// over its own fresh pages; a text's embedding does not depend on what it is batched with.
    pub fn embed(&self, texts: &[&[u32]], pooling: Pooling) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let arch = c.arch.name();
        for (i, t) in texts.iter().enumerate() {
            if t.is_empty() {
                return Err(model_err(arch, format!("text {i} has no tokens to embed")));
            }
            if t.len() > c.context {
                return Err(model_err(arch, format!("text {i} has {} tokens, more than the context of {}", t.len(), c.context)));
            }
        }
        const PAGE: usize = 16;
        let mut out = Vec::with_capacity(texts.len());
        let mut first = 0;
        while first < texts.len() {
            // The next texts that fit the token budget together (at least one).
            let mut end = first + 1;
            let mut tokens = texts[first].len();
            while end < texts.len() && tokens + texts[end].len() <= EMBED_BATCH_TOKENS {
                tokens += texts[end].len();
                end += 1;
            }
            let group = &texts[first..end];
            let pages_of = |t: &[u32]| t.len().div_ceil(PAGE);
            let mut pool = self.new_pool(PAGE, group.iter().map(|t| pages_of(t)).sum())?;
            let mut tables = Vec::with_capacity(group.len());
            let mut next = 0u32;
            for t in group {
                let n = pages_of(t) as u32;
                tables.push((next..next + n).collect::<Vec<u32>>());
                next += n;
            }
            let seqs: Vec<SeqChunk> =
                group.iter().zip(&tables).map(|(t, p)| SeqChunk { tokens: t, start: 0, pages: p, logits: Logits::Hidden }).collect();
            let hidden = self.forward_batch(&mut pool, &seqs, None)?;
            let e = c.n_embd;
            let mut at = 0;
            for t in group {
                let rows = &hidden[at * e..(at + t.len()) * e];
                at += t.len();
                let mut v: Vec<f64> = match pooling {
                    Pooling::Cls => rows[..e].iter().map(|&x| x as f64).collect(),
                    Pooling::Last => rows[rows.len() - e..].iter().map(|&x| x as f64).collect(),
                    Pooling::Mean => {
                        let mut s = vec![0f64; e];
                        for row in rows.chunks_exact(e) {
                            for (a, &x) in s.iter_mut().zip(row) {
                                *a += x as f64;
                            }
                        }
                        s.iter().map(|a| a / t.len() as f64).collect()
                    }
                };
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                out.push(v.into_iter().map(|x| x as f32).collect());
            }
            first = end;
        }
        Ok(out)
    }

    /// Checks a batch against the pool and the model, and lists its rows: (sequence,
    /// position) of each.
    fn plan(&self, pool: &KvPool, seqs: &[SeqChunk]) -> Result<Vec<(usize, usize)>> {
        let c = &self.config;
        let arch = c.arch.name();
        if seqs.is_empty() {
            return Err(model_err(arch, "forward_batch needs at least one sequence"));
        }
        let ps = pool.page_size();
        // (sequence, position) of every row; the (page, slot) each row writes.
        let mut rows: Vec<(usize, usize)> = Vec::new();
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
            }
        }
        // A page written by one sequence must not be read by another (a shared page is never written).
        for (b, s) in seqs.iter().enumerate() {
            if let Some(p) = s.pages.iter().find(|p| writer.get(p).is_some_and(|&w| w != b)) {
                return Err(model_err(arch, format!("page {p} is written by sequence {} and read by sequence {b}", writer[p])));
            }
        }
        Ok(rows)
    }
}
