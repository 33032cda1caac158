//! The block manager: which KV pages are free, who holds each page (reference counts), and
//! the prefix cache that lets sequences share the full pages of a common token prefix.
//!
//! A page is in one of three states: held (reference count ≥ 1), cached (count 0 but
//! still listed in the prefix cache, so a later request with the same prefix can take it
//! back without recomputing it; evicted least recently released first when a fresh page
//! is needed) or free. Only full pages are ever listed in the prefix cache, and a full
//! page is never written again, so shared pages need no copy unless a sequence must
//! recompute the last position of a page it shares (see [`BlockManager::copy_on_write`]'s
//! use in the scheduler).
//!
//! A listed page is keyed by its page_size tokens and the identity of the page before it
//! in its sequence (`None` for the first page), so a key names the whole token prefix up to
//! the page's end exactly: a chain of keys is the per-page hash of the prefix, without the
//! chance of a collision. A page's identity is its id and a generation number that
//! changes whenever the page is handed out again, so a key can never point through a
//! page whose contents were replaced.

use std::collections::{BTreeSet, HashMap};

/// The identity of one listed page's contents: (page id, generation).
pub type PageIdent = (u32, u64);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PageKey {
    parent: Option<PageIdent>,
    tokens: Box<[u32]>,
}

/// A prefix-cache hit: the pages holding the first `pages.len()` full pages of a token
/// list, and the identity of each (for chaining the next page's key).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixMatch {
    pub pages: Vec<u32>,
    pub idents: Vec<PageIdent>,
}

/// Reference-counted pages, a free list and the prefix cache.
#[derive(Debug)]
pub struct BlockManager {
    page_size: usize,
    refs: Vec<u32>,
    generation: Vec<u64>,
    /// Pages with no holder and no cached contents.
    free: Vec<u32>,
    /// Pages with no holder whose contents are listed, by release time (oldest first).
    cached_lru: BTreeSet<(u64, u32)>,
    released_at: Vec<u64>,
    clock: u64,
    index: HashMap<PageKey, u32>,
    key_of: Vec<Option<PageKey>>,
}

impl BlockManager {
    /// `num_pages` free pages of `page_size` positions.
    pub fn new(num_pages: usize, page_size: usize) -> BlockManager {
        assert!(page_size > 0 && num_pages <= u32::MAX as usize, "block manager: bad sizes");
        BlockManager {
            page_size,
            refs: vec![0; num_pages],
            generation: vec![0; num_pages],
            // Popped from the end: page 0 is handed out first.
            free: (0..num_pages as u32).rev().collect(),
            cached_lru: BTreeSet::new(),
            released_at: vec![0; num_pages],
            clock: 0,
            index: HashMap::new(),
            key_of: vec![None; num_pages],
        }
    }

    /// Positions per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Pages in the pool.
    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Pages that can be handed out now: free ones and cached ones nobody holds.
    pub fn available(&self) -> usize {
        self.free.len() + self.cached_lru.len()
    }

    /// Holders of `page`.
    pub fn ref_count(&self, page: u32) -> u32 {
        self.refs[page as usize]
    }

    /// Pages listed in the prefix cache (held or not).
    pub fn cached_pages(&self) -> usize {
        self.index.len()
    }

    /// A page for one holder: a free one, else the least recently released cached one
    /// (whose listing is dropped). None when every page is held.
    pub fn allocate(&mut self) -> Option<u32> {
        let page = match self.free.pop() {
            Some(p) => p,
            None => {
                let (t, p) = self.cached_lru.pop_first()?;
                debug_assert_eq!(t, self.released_at[p as usize]);
                let key = self.key_of[p as usize].take().expect("a cached page is listed");
                self.index.remove(&key);
                p
            }
        };
        debug_assert_eq!(self.refs[page as usize], 0);
        self.refs[page as usize] = 1;
        self.generation[page as usize] += 1;
        Some(page)
    }

    /// One more holder of a held or cached page.
    pub fn retain(&mut self, page: u32) {
        let p = page as usize;
        if self.refs[p] == 0 {
            assert!(self.cached_lru.remove(&(self.released_at[p], page)), "retain of a free page {page}");
        }
        self.refs[p] += 1;
    }

    /// One holder fewer; the last one leaves the page cached when it is listed, else free.
    pub fn release(&mut self, page: u32) {
        let p = page as usize;
        assert!(self.refs[p] > 0, "release of page {page} that nobody holds");
        self.refs[p] -= 1;
        if self.refs[p] == 0 {
            if self.key_of[p].is_some() {
                self.clock += 1;
                self.released_at[p] = self.clock;
                self.cached_lru.insert((self.clock, page));
            } else {
                self.free.push(page);
            }
        }
    }

    /// The longest run of full pages at the start of `tokens` that the prefix cache holds
    /// (pages are not retained: call [`retain`](Self::retain) on those used).
    pub fn lookup(&self, tokens: &[u32]) -> PrefixMatch {
        let mut m = PrefixMatch::default();
        for chunk in tokens.chunks_exact(self.page_size) {
            let key = PageKey { parent: m.idents.last().copied(), tokens: chunk.into() };
            match self.index.get(&key) {
                Some(&p) => {
                    m.pages.push(p);
                    m.idents.push((p, self.generation[p as usize]));
                }
                None => break,
            }
        }
        m
    }

    /// Lists held page `page`, now full with `tokens` (page_size of them) after the page
    /// identified by `parent`, in the prefix cache. Returns the identity under which these
    /// contents are listed: the page's own, or that of an equal page listed before (then
    /// `page` stays unlisted and is freed when released).
    pub fn register(&mut self, parent: Option<PageIdent>, tokens: &[u32], page: u32) -> PageIdent {
        assert_eq!(tokens.len(), self.page_size, "register: a page holds page_size tokens");
        let p = page as usize;
        assert!(self.refs[p] > 0, "register of page {page} that nobody holds");
        if let Some(parent) = parent {
            // A parent whose generation moved on was evicted: nothing can reach this key.
            debug_assert!(parent.1 <= self.generation[parent.0 as usize]);
        }
        let key = PageKey { parent, tokens: tokens.into() };
        if let Some(&other) = self.index.get(&key) {
            return (other, self.generation[other as usize]);
        }
        if self.key_of[p].is_some() {
            // Already listed under another key (a page is listed once).
            return (page, self.generation[p]);
        }
        self.index.insert(key.clone(), page);
        self.key_of[p] = Some(key);
        (page, self.generation[p])
    }

    /// Checks every invariant; panics with a message on the first broken one. `holders` is
    /// every page id held by every holder (so each page appears ref-count times).
    pub fn check(&self, holders: &[u32]) {
        let mut counts = vec![0u32; self.total()];
        for &p in holders {
            counts[p as usize] += 1;
        }
        assert_eq!(counts, self.refs, "reference counts differ from the holders");
        let mut seen = vec![0u8; self.total()];
        for &p in &self.free {
            seen[p as usize] += 1;
            assert_eq!(self.refs[p as usize], 0, "free page {p} is held");
            assert!(self.key_of[p as usize].is_none(), "free page {p} is listed");
        }
        for &(t, p) in &self.cached_lru {
            seen[p as usize] += 1;
            assert_eq!(self.refs[p as usize], 0, "cached page {p} is held");
            assert_eq!(self.released_at[p as usize], t);
            assert!(self.key_of[p as usize].is_some(), "cached page {p} is not listed");
        }
        for (p, &r) in self.refs.iter().enumerate() {
            let want = u8::from(r == 0);
            assert_eq!(seen[p], want, "page {p} (held by {r}) is on the free/cached lists {} times", seen[p]);
        }
        assert_eq!(self.index.len(), self.key_of.iter().filter(|k| k.is_some()).count(), "index and listings differ");
        for (k, &p) in &self.index {
            assert_eq!(self.key_of[p as usize].as_ref(), Some(k), "index entry of page {p} is stale");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn allocate_release_and_exhaustion() {
        let mut bm = BlockManager::new(3, 4);
        let a: Vec<u32> = (0..3).map(|_| bm.allocate().unwrap()).collect();
        assert_eq!(a, vec![0, 1, 2]);
        assert_eq!(bm.allocate(), None);
        assert_eq!(bm.available(), 0);
        bm.release(1);
        assert_eq!(bm.available(), 1);
        assert_eq!(bm.allocate(), Some(1));
        for p in a {
            bm.release(p);
        }
        assert_eq!(bm.available(), 3);
        bm.check(&[]);
    }

    #[test]
    fn shared_prefix_pages_and_eviction() {
        let mut bm = BlockManager::new(4, 2);
        let toks = [1, 2, 3, 4, 5];
        // Sequence A computes two full pages and a partial one.
        let a: Vec<u32> = (0..3).map(|_| bm.allocate().unwrap()).collect();
        let i0 = bm.register(None, &toks[0..2], a[0]);
        let i1 = bm.register(Some(i0), &toks[2..4], a[1]);
        assert_eq!(bm.cached_pages(), 2);
        // B with the same first four tokens finds both pages; C that differs in page 2 finds one.
        let m = bm.lookup(&[1, 2, 3, 4, 9]);
        assert_eq!(m.pages, vec![a[0], a[1]]);
        assert_eq!(m.idents, vec![i0, i1]);
        assert_eq!(bm.lookup(&[1, 2, 3, 9]).pages, vec![a[0]]);
        assert_eq!(bm.lookup(&[2, 1, 3, 4]).pages, Vec::<u32>::new());
        // The same tokens after another first page are another prefix.
        let other = bm.allocate().unwrap();
        let io = bm.register(None, &[7, 7], other);
        assert_eq!(bm.register(Some(io), &[3, 4], other), (other, io.1), "a page is listed once");
        assert_eq!(bm.lookup(&[7, 7, 3, 4]).pages, vec![other]);
        bm.release(other);
        for &p in &m.pages {
            bm.retain(p);
        }
        assert_eq!(bm.ref_count(a[0]), 2);
        // A finishes: its listed pages stay cached (held by B), its partial page is freed.
        for &p in &a {
            bm.release(p);
        }
        assert_eq!(bm.available(), 2, "the partial page and `other` (cached)");
        bm.check(&m.pages);
        // B finishes: everything is available, the listed pages still findable.
        for &p in &m.pages {
            bm.release(p);
        }
        assert_eq!(bm.available(), 4);
        assert_eq!(bm.lookup(&toks).pages.len(), 2);
        // Allocating everything evicts the cached pages, oldest release first.
        let all: Vec<u32> = (0..4).map(|_| bm.allocate().unwrap()).collect();
        assert_eq!(all.len(), 4);
        assert_eq!(bm.cached_pages(), 0);
        assert!(bm.lookup(&toks).pages.is_empty());
        bm.check(&all);
        // A duplicate registration returns the listed page's identity.
        let j0 = bm.register(None, &[5, 5], all[0]);
        assert_eq!(bm.register(None, &[5, 5], all[1]), j0);
        for p in all {
            bm.release(p);
        }
        assert_eq!(bm.available(), 4);
        bm.check(&[]);
    }

    #[test]
    fn an_evicted_parent_breaks_the_chain() {
        let mut bm = BlockManager::new(2, 1);
        let a = bm.allocate().unwrap();
        let b = bm.allocate().unwrap();
        let ia = bm.register(None, &[1], a);
        bm.register(Some(ia), &[2], b);
        bm.release(b);
        bm.release(a);
        // a was released last, b first: b is evicted first, then a is reused for other tokens.
        let x = bm.allocate().unwrap();
        assert_eq!(x, b);
        assert_eq!(bm.lookup(&[1, 2]).pages, vec![a]);
        let y = bm.allocate().unwrap();
        assert_eq!(y, a);
        bm.register(None, &[1], y);
        // Same tokens, same page id, new generation: [1, 2]'s second page is not found.
        assert_eq!(bm.lookup(&[1, 2]).pages, vec![y]);
        bm.check(&[x, y]);
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Start a sequence with these tokens (shares the cached prefix, allocates the rest).
        Start(Vec<u32>),
        /// Grow sequence i by tokens (allocating pages, listing pages that fill).
        Grow(usize, Vec<u32>),
        /// End sequence i (release every page).
        End(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        // A two-letter alphabet makes shared prefixes common.
        let toks = prop::collection::vec(0u32..2, 1..12);
        prop_oneof![toks.clone().prop_map(Op::Start), (0usize..8, toks).prop_map(|(i, t)| Op::Grow(i, t)), (0usize..8).prop_map(Op::End),]
    }

    struct Seq {
        tokens: Vec<u32>,
        pages: Vec<u32>,
        idents: Vec<PageIdent>,
    }

    impl Seq {
        /// Allocates pages for every token; lists full pages. False when pages ran out (the
        /// tokens that did not fit are dropped).
        fn grow(&mut self, bm: &mut BlockManager, more: &[u32]) -> bool {
            let ps = bm.page_size();
            for &t in more {
                if self.tokens.len() == self.pages.len() * ps {
                    match bm.allocate() {
                        Some(p) => self.pages.push(p),
                        None => return false,
                    }
                }
                self.tokens.push(t);
                let full = self.tokens.len() / ps;
                if full > self.idents.len() {
                    let i = full - 1;
                    let id = bm.register(self.idents.last().copied(), &self.tokens[i * ps..full * ps], self.pages[i]);
                    self.idents.push(id);
                }
            }
            true
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random starts, growth and ends: reference counts always equal the holders,
        /// a shared page always holds the tokens the sharer expects, and when every sequence
        /// has ended every page is available again.
        #[test]
        fn random_alloc_share_free_keeps_the_books(ops in prop::collection::vec(op(), 1..60), ps in 1usize..4, n in 2usize..12) {
            let mut bm = BlockManager::new(n, ps);
            // The tokens each page holds, as written by whoever allocated it.
            let mut contents: HashMap<u32, Vec<u32>> = HashMap::new();
            let mut seqs: Vec<Seq> = Vec::new();
            for op in ops {
                match op {
                    Op::Start(tokens) => {
                        let m = bm.lookup(&tokens);
                        for (i, &p) in m.pages.iter().enumerate() {
                            prop_assert_eq!(&contents[&p], &tokens[i * ps..(i + 1) * ps].to_vec(), "shared page {} holds other tokens", p);
                            bm.retain(p);
                        }
                        let shared = m.pages.len() * ps;
                        let mut s = Seq { tokens: tokens[..shared].to_vec(), pages: m.pages, idents: m.idents };
                        let ok = s.grow(&mut bm, &tokens[shared..]);
                        for (i, &p) in s.pages.iter().enumerate().skip(shared / ps) {
                            let end = ((i + 1) * ps).min(s.tokens.len());
                            contents.insert(p, s.tokens[i * ps..end].to_vec());
                        }
                        if ok { seqs.push(s) } else { for p in s.pages { bm.release(p) } }
                    }
                    Op::Grow(i, more) if i < seqs.len() => {
                        let s = &mut seqs[i];
                        let first = s.tokens.len() / ps;
                        let ok = s.grow(&mut bm, &more);
                        for (j, &p) in s.pages.iter().enumerate().skip(first) {
                            let end = ((j + 1) * ps).min(s.tokens.len());
                            contents.insert(p, s.tokens[j * ps..end].to_vec());
                        }
                        if !ok {
                            // Out of pages: the sequence ends (its listed pages stay cached).
                            for p in seqs.remove(i).pages { bm.release(p) }
                        }
                    }
                    Op::End(i) if i < seqs.len() => {
                        for p in seqs.remove(i).pages { bm.release(p) }
                    }
                    _ => {}
                }
                let held: Vec<u32> = seqs.iter().flat_map(|s| s.pages.iter().copied()).collect();
                bm.check(&held);
                prop_assert_eq!(bm.available() + held.iter().collect::<std::collections::HashSet<_>>().len(), n);
                // Every sequence's pages still hold its tokens.
                for s in &seqs {
                    for (j, &p) in s.pages.iter().enumerate() {
                        let end = ((j + 1) * ps).min(s.tokens.len());
                        prop_assert_eq!(&contents[&p][..end - j * ps], &s.tokens[j * ps..end]);
                    }
                }
            }
            for s in seqs.drain(..) {
                for p in s.pages { bm.release(p) }
            }
            bm.check(&[]);
            prop_assert_eq!(bm.available(), n);
        }
    }
}
