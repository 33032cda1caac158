//! Memory for the weights a loader makes anew rather than reading in place: the stacked
//! Q/K/V and gate/up matrices (`net.rs`). They come from large anonymous mappings that ask
//! the kernel for transparent huge pages (Linux `MADV_HUGEPAGE`): a decode step streams
//! every weight once, and on 4 KiB pages the copies read about 10% slower than the same
//! bytes read in place from the mapped GGUF file (whose page cache the kernel may keep in
//! large folios), which undid what stacking saves. Elsewhere the advice is skipped.

use ingot_core::HostBytes;
use std::ops::Range;
use std::sync::Arc;

/// The size of one mapping (more when one piece needs it); untouched pages cost nothing.
const CHUNK: usize = 64 << 20;
/// A huge page on x86-64 and most aarch64 kernels: mappings are whole ones.
const HUGE: usize = 2 << 20;

/// One anonymous mapping. Pieces are written once, before they are handed out, and never
/// again.
struct Chunk {
    map: memmap2::MmapMut,
}

/// A written range of a [`Chunk`], read-only from then on.
struct Piece {
    chunk: Arc<Chunk>,
    range: Range<usize>,
    /// The start of the chunk's bytes, taken when the chunk was made.
    base: *const u8,
}

// SAFETY: a piece only reads its own range, which nothing writes after the piece exists;
// the chunk outlives it through the `Arc`.
unsafe impl Send for Piece {}
unsafe impl Sync for Piece {}

impl HostBytes for Piece {
    fn host_bytes(&self) -> &[u8] {
        let _ = &self.chunk;
        // SAFETY: `base..base + chunk len` is the chunk's mapping, alive while `self.chunk`
        // is; `range` lies inside it and was fully written before this piece was made.
        unsafe { std::slice::from_raw_parts(self.base.add(self.range.start), self.range.len()) }
    }
}

/// Hands out pieces of huge-page-backed memory, filled by copying.
#[derive(Default)]
pub(crate) struct Arena {
    /// The chunk being filled, its base pointer and how many bytes of it are used.
    current: Option<(Arc<Chunk>, *mut u8, usize)>,
}

impl Arena {
    /// A new read-only buffer holding `parts` one after another.
    pub(crate) fn concat(&mut self, parts: &[&[u8]]) -> std::io::Result<Arc<dyn HostBytes>> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let fits = matches!(&self.current, Some((c, _, used)) if used + total <= c.map.len());
        if !fits {
            let len = CHUNK.max(total.next_multiple_of(HUGE));
            let mut map = memmap2::MmapOptions::new().len(len).map_anon()?;
            #[cfg(target_os = "linux")]
            {
                // Advice only: without huge pages the bytes are the same.
                let _ = map.advise(memmap2::Advice::HugePage);
            }
            let base = map.as_mut_ptr();
            self.current = Some((Arc::new(Chunk { map }), base, 0));
        }
        let Some((chunk, base, used)) = self.current.as_mut() else { unreachable!("a chunk was just made") };
        let start = *used;
        let mut at = start;
        for p in parts {
            // SAFETY: `at..at + p.len()` lies inside the chunk (checked above) and past every
            // piece handed out so far, so nothing reads it while it is written.
            unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), base.add(at), p.len()) };
            at += p.len();
        }
        // Keep pieces 64-byte aligned, as an allocator would.
        *used = at.next_multiple_of(64).min(chunk.map.len());
        Ok(Arc::new(Piece { chunk: chunk.clone(), range: start..at, base: *base }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces hold exactly what was copied, in order, across chunk boundaries and for a
    /// piece larger than a chunk; earlier pieces are untouched by later copies.
    #[test]
    fn pieces_hold_their_bytes() {
        let mut a = Arena::default();
        let small: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let p1 = a.concat(&[&small, &small[..13]]).unwrap();
        let big = vec![0x5Au8; CHUNK + 5];
        let p2 = a.concat(&[&big]).unwrap();
        let p3 = a.concat(&[&small[3..], &[]]).unwrap();
        assert_eq!(p1.host_bytes().len(), 1013);
        assert_eq!(&p1.host_bytes()[..1000], &small[..]);
        assert_eq!(&p1.host_bytes()[1000..], &small[..13]);
        assert_eq!(p2.host_bytes().len(), CHUNK + 5);
        assert!(p2.host_bytes().iter().all(|&b| b == 0x5A));
        assert_eq!(p3.host_bytes(), &small[3..]);
        assert_eq!(p3.host_bytes().as_ptr() as usize % 64, 0);
    }
}
