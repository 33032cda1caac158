//! Paged key/value storage: for every layer, K and V as [num_pages, page_size, n_kv_head,
//! head_dim] f32 (the NHD layout of docs/ops.md). A page holds `page_size` consecutive
//! positions of one sequence in every layer; which pages belong to which sequence (the
//! block tables), reference counts and sharing are the caller's business (the engine's
//! block manager, or [`KvCache`] for one sequence).

use crate::{Config, Error, Result};

/// The K/V pages of one model, in host memory for the CPU path or on the device for a
/// model on a GPU backend (made by `Model::new_pool`, which picks the right one).
pub struct KvPool {
    page_size: usize,
    num_pages: usize,
    n_layer: usize,
    /// n_kv_head · head_dim: the floats of one position of one layer in K (and in V).
    kv_width: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// The pages on a device (then `k` and `v` are empty).
    #[cfg(feature = "gpu")]
    pub(crate) dev: Option<Box<dyn crate::gpu::DeviceKv>>,
}

impl std::fmt::Debug for KvPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvPool")
            .field("page_size", &self.page_size)
            .field("num_pages", &self.num_pages)
            .field("n_layer", &self.n_layer)
            .field("kv_width", &self.kv_width)
            .field("on_device", &self.on_device())
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

    /// A pool of `num_pages` zeroed pages of `page_size` positions for `config`'s model. The
    /// memory is requested zeroed, so the OS commits it only as pages are first written.
    pub fn new(config: &Config, page_size: usize, num_pages: usize) -> Result<KvPool> {
        if page_size == 0 {
            return Err(pool_err(config, "KV page size must be at least 1".into()));
        }
        let kv_width = config.n_kv_head * config.head_dim;
        let per_layer = page_size
            .checked_mul(num_pages)
            .and_then(|n| n.checked_mul(kv_width))
            .filter(|n| n.checked_mul(4).is_some_and(|b| b <= isize::MAX as usize))
            .ok_or_else(|| pool_err(config, format!("{num_pages} KV pages of {page_size} positions do not fit in memory")))?;
        if num_pages > u32::MAX as usize {
            return Err(pool_err(config, format!("{num_pages} KV pages exceed the {} page ids", u32::MAX)));
        }
        let layer = || vec![0f32; per_layer];
        Ok(KvPool {
            page_size,
            num_pages,
            n_layer: config.n_layer,
            kv_width,
            k: (0..config.n_layer).map(|_| layer()).collect(),
            v: (0..config.n_layer).map(|_| layer()).collect(),
            #[cfg(feature = "gpu")]
            dev: None,
        })
    }

    /// A pool whose pages live on a device (`dev`, already holding `num_pages` pages).
    #[cfg(feature = "gpu")]
    pub(crate) fn with_device(config: &Config, page_size: usize, num_pages: usize, dev: Box<dyn crate::gpu::DeviceKv>) -> KvPool {
        KvPool {
            page_size,
            num_pages,
            n_layer: config.n_layer,
            kv_width: config.n_kv_head * config.head_dim,
            k: Vec::new(),
            v: Vec::new(),
            dev: Some(dev),
        }
    }

    /// Whether the pages live on a GPU device rather than in host memory.
    pub fn on_device(&self) -> bool {
        #[cfg(feature = "gpu")]
        return self.dev.is_some();
        #[cfg(not(feature = "gpu"))]
        false
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
    /// page). Panics on a page id outside the pool.
    pub fn copy_page(&mut self, src: u32, dst: u32) {
        assert!((src as usize) < self.num_pages && (dst as usize) < self.num_pages, "copy_page: page id outside the pool");
        #[cfg(feature = "gpu")]
        if let Some(dev) = &mut self.dev {
            if src != dst {
                // The ids were checked above, and copies inside the pool cannot fail otherwise.
                dev.copy_page(src, dst).expect("device page copy inside the pool");
            }
            return;
        }
        let n = self.page_size * self.kv_width;
        let (s, d) = (src as usize * n, dst as usize * n);
        if s != d {
            for l in self.k.iter_mut().chain(self.v.iter_mut()) {
                l.copy_within(s..s + n, d);
            }
        }
    }

    /// Adds zeroed pages at the end (ids num_pages..num_pages + extra).
    pub(crate) fn grow(&mut self, extra: usize) -> crate::Result<()> {
        #[cfg(feature = "gpu")]
        if let Some(dev) = &mut self.dev {
            dev.grow(self.num_pages + extra)?;
            self.num_pages += extra;
            return Ok(());
        }
        self.num_pages += extra;
        let len = self.num_pages * self.page_size * self.kv_width;
        for l in self.k.iter_mut().chain(self.v.iter_mut()) {
            l.resize(len, 0.0);
        }
        Ok(())
    }

    /// Layer `il`'s K and V pages.
    pub(crate) fn layer(&self, il: usize) -> (&[f32], &[f32]) {
        (&self.k[il], &self.v[il])
    }

    /// Layer `il`'s K and V pages, writable.
    pub(crate) fn layer_mut(&mut self, il: usize) -> (&mut [f32], &mut [f32]) {
        (&mut self.k[il], &mut self.v[il])
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
