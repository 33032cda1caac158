//! Paged key/value storage: for every layer, K and V as [num_pages, page_size, n_kv_head,
//! head_dim] f32 tensors (the NHD layout of docs/ops.md) on the model's device. A page holds
//! `page_size` consecutive positions of one sequence in every layer; which pages belong to
//! which sequence (the block tables), reference counts and sharing are the caller's business
//! (the engine's block manager, or [`KvCache`] for one sequence).
//!
//! One pool type for every device: [`Pages`] is generic over [`Device`], and [`KvPool`]
//! holds it behind a small object-safe trait so callers need not name the device.

use crate::net::Recorded;
use crate::{Config, Error, Result};
use ingot_core::{CopyPagesParams, DType, Device, DeviceTensor, DeviceTensors, Op, Tensor, WriteColumnsParams};
use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

/// The pages of one pool on device `D`.
pub(crate) struct Pages<D: Device> {
    pub(crate) dev: Arc<D>,
    pub(crate) page_size: usize,
    pub(crate) num_pages: usize,
    pub(crate) n_kv: usize,
    pub(crate) head_dim: usize,
    pub(crate) k: Vec<D::Tensor>,
    pub(crate) v: Vec<D::Tensor>,
    /// Decode steps recorded on this pool (their graphs read and write its pages), by
    /// (batch size, padded page-list length, thread).
    pub(crate) recorded: HashMap<(usize, usize, std::thread::ThreadId), Recorded<D::Tensor>>,
}

/// What [`KvPool`] needs of its pages, whatever the device.
pub(crate) trait PoolPages: Send + Sync {
    /// The device's name (`cpu`, `gpu:wgpu`, ...).
    fn device_name(&self) -> String;
    /// Copies every layer's K and V of page `src` onto page `dst` (both inside the pool).
    fn copy_page(&mut self, src: u32, dst: u32) -> Result<()>;
    /// Grows the pool to `num_pages` pages, keeping the existing ones (new pages are zero).
    fn grow(&mut self, num_pages: usize) -> Result<()>;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

fn one(dev_name: String, what: &str, t: Result<DeviceTensors<impl Clone>, ingot_core::Error>) -> Result<()> {
    t.map(|_| ()).map_err(|e| Error::Model { arch: dev_name, msg: format!("{what}: {e}") })
}

impl<D: Device + 'static> Pages<D> {
    /// A pool of `num_pages` zeroed pages for a model of `n_layer` layers.
    pub(crate) fn new(dev: Arc<D>, n_layer: usize, page_size: usize, num_pages: usize, n_kv: usize, head_dim: usize) -> Result<Self> {
        let shape = [num_pages, page_size, n_kv, head_dim];
        let layer = || dev.zeros(DType::F32, &shape);
        let k = (0..n_layer).map(|_| layer()).collect::<Result<Vec<_>, _>>()?;
        let v = (0..n_layer).map(|_| layer()).collect::<Result<Vec<_>, _>>()?;
        Ok(Pages { dev, page_size, num_pages, n_kv, head_dim, k, v, recorded: HashMap::new() })
    }

    fn cache_shape(&self) -> [usize; 4] {
        [self.num_pages, self.page_size, self.n_kv, self.head_dim]
    }
}

impl<D: Device + 'static> PoolPages for Pages<D> {
    fn device_name(&self) -> String {
        self.dev.name()
    }

    fn copy_page(&mut self, src: u32, dst: u32) -> Result<()> {
        if src == dst {
            return Ok(());
        }
        let d = &*self.dev;
        let p = CopyPagesParams {
            num_pages: self.num_pages,
            page_size: self.page_size,
            num_kv_heads: self.n_kv,
            head_size: self.head_dim,
            num_copies: 1,
            dtype: DType::F32,
        };
        let op = Op::CopyPages(p);
        let src_t = d.upload(&Tensor::from_i32(vec![1], &[src as i32]))?;
        let dst_t = d.upload(&Tensor::from_i32(vec![1], &[dst as i32]))?;
        for cache in self.k.iter().chain(&self.v) {
            let ins: DeviceTensors<D::Tensor> = [("cache", cache.clone()), ("src_pages", src_t.clone()), ("dst_pages", dst_t.clone())]
                .into_iter()
                .map(|(n, t)| (n.to_string(), t))
                .collect();
            let mut outs: DeviceTensors<D::Tensor> = [("cache_out".to_string(), cache.clone())].into();
            one(d.name(), "copy_page", d.run_into(&op, &ins, &mut outs))?;
        }
        Ok(())
    }

    fn grow(&mut self, num_pages: usize) -> Result<()> {
        if num_pages <= self.num_pages {
            return Ok(());
        }
        // Recorded steps hold the old pages.
        self.recorded.clear();
        let d = &*self.dev;
        let old_n: usize = self.cache_shape().iter().product();
        self.num_pages = num_pages;
        let shape = self.cache_shape();
        let new_n: usize = shape.iter().product();
        let p = WriteColumnsParams { num_rows: 1, src_width: old_n, dst_width: new_n, offset: 0, dtype: DType::F32 };
        let op = Op::WriteColumns(p);
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            let bigger = d.zeros(DType::F32, &shape)?;
            if old_n > 0 {
                let flat = bigger.reshape(&[1, new_n])?;
                let ins: DeviceTensors<D::Tensor> =
                    [("src".to_string(), t.reshape(&[1, old_n])?), ("dst".to_string(), flat.clone())].into();
                let mut outs: DeviceTensors<D::Tensor> = [("output".to_string(), flat)].into();
                one(d.name(), "grow", d.run_into(&op, &ins, &mut outs))?;
            }
            *t = bigger;
        }
        Ok(())
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The K/V pages of one model, on the model's device (made by `Model::new_pool`).
pub struct KvPool {
    page_size: usize,
    num_pages: usize,
    n_layer: usize,
    /// n_kv_head · head_dim: the floats of one position of one layer in K (and in V).
    kv_width: usize,
    pub(crate) pages: Box<dyn PoolPages>,
}

impl std::fmt::Debug for KvPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvPool")
            .field("page_size", &self.page_size)
            .field("num_pages", &self.num_pages)
            .field("n_layer", &self.n_layer)
            .field("kv_width", &self.kv_width)
            .field("device", &self.pages.device_name())
            .finish()
    }
}

fn pool_err(config: &Config, msg: String) -> Error {
    Error::Model { arch: config.arch.name().to_string(), msg }
}

impl KvPool {
    /// Bytes of one page (K and V of every layer).
    pub fn page_bytes(config: &Config, page_size: usize) -> usize {
        page_size.saturating_mul(config.n_layer).saturating_mul(2 * config.n_kv_head * config.head_dim * 4)
    }

    /// Checks the sizes of a pool of `num_pages` pages of `page_size` positions for
    /// `config`'s model against `max_tensor_bytes` (one layer's K is one tensor).
    pub(crate) fn check_size(config: &Config, page_size: usize, num_pages: usize, max_tensor_bytes: u64) -> Result<()> {
        if page_size == 0 {
            return Err(pool_err(config, "KV page size must be at least 1".into()));
        }
        let kv_width = config.n_kv_head * config.head_dim;
        let bytes = page_size
            .checked_mul(num_pages)
            .and_then(|n| n.checked_mul(kv_width))
            .and_then(|n| n.checked_mul(4))
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(|| pool_err(config, format!("{num_pages} KV pages of {page_size} positions do not fit in memory")))?;
        if bytes as u64 > max_tensor_bytes {
            return Err(pool_err(
                config,
                format!(
                    "{num_pages} KV pages of {page_size} positions do not fit in memory: {bytes} bytes per layer for K, more than the device's largest buffer ({max_tensor_bytes} bytes); use fewer pages"
                ),
            ));
        }
        if num_pages > u32::MAX as usize {
            return Err(pool_err(config, format!("{num_pages} KV pages exceed the {} page ids", u32::MAX)));
        }
        Ok(())
    }

    pub(crate) fn from_pages(config: &Config, page_size: usize, num_pages: usize, pages: Box<dyn PoolPages>) -> KvPool {
        KvPool { page_size, num_pages, n_layer: config.n_layer, kv_width: config.n_kv_head * config.head_dim, pages }
    }

    /// The device the pages live on (`cpu`, `gpu:wgpu`, ...).
    pub fn device(&self) -> String {
        self.pages.device_name()
    }

    /// Whether the pages live on a GPU device rather than in host memory.
    pub fn on_device(&self) -> bool {
        self.device() != "cpu"
    }

    /// Positions per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Pages in the pool.
    pub fn num_pages(&self) -> usize {
        self.num_pages
    }

    /// Floats of one position of one layer in K (the same in V): n_kv_head · head_dim.
    pub fn kv_width(&self) -> usize {
        self.kv_width
    }

    /// Layers held.
    pub fn n_layer(&self) -> usize {
        self.n_layer
    }

    /// Copies every layer's K and V of page `src` onto page `dst` (copy-on-write of a shared
    /// page), through the protocol's `copy_pages` op.
    pub fn copy_page(&mut self, src: u32, dst: u32) -> Result<()> {
        if src as usize >= self.num_pages || dst as usize >= self.num_pages {
            return Err(Error::Model {
                arch: self.device(),
                msg: format!("copy_page: page {src} or {dst} is outside the pool of {}", self.num_pages),
            });
        }
        self.pages.copy_page(src, dst)
    }

    /// Adds zeroed pages at the end (ids num_pages..num_pages + extra).
    pub(crate) fn grow(&mut self, extra: usize) -> Result<()> {
        self.pages.grow(self.num_pages + extra)?;
        self.num_pages += extra;
        Ok(())
    }

    /// Whether this pool has the shape of `config`'s model.
    pub(crate) fn fits(&self, config: &Config) -> bool {
        self.n_layer == config.n_layer && self.kv_width == config.n_kv_head * config.head_dim
    }
}

/// The key/value cache of one sequence: a private [`KvPool`] that grows a page at a time,
/// whose pages 0, 1, 2, … hold positions in order. Runs through the same paged forward as
/// the engine's batches.
#[derive(Debug)]
pub struct KvCache {
    pub(crate) pool: KvPool,
    pub(crate) pages: Vec<u32>,
    pub(crate) len: usize,
}

impl KvCache {
    /// Positions per page of a private cache.
    pub(crate) const PAGE_SIZE: usize = 64;

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drop every position from `n` on (to rewind a sequence); the pages stay for reuse.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// Makes the pages cover `len` positions.
    pub(crate) fn reserve(&mut self, len: usize) -> crate::Result<()> {
        let need = len.div_ceil(self.pool.page_size);
        if need > self.pool.num_pages {
            // Grow geometrically so a long generation reallocates O(log n) times.
            let extra = (need - self.pool.num_pages).max(self.pool.num_pages);
            let first = self.pool.num_pages as u32;
            self.pool.grow(extra)?;
            self.pages.extend(first..first + extra as u32);
        }
        Ok(())
    }
}
