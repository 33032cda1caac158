//! What one batched forward pass is asked to do: each sequence's new tokens, where they
//! sit, its block table and which logits it wants.

/// Which logits `forward` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's: [vocab].
    Last,
    /// Every position's: [tokens, vocab].
    All,
    /// None (a prefill chunk that is not the prompt's last).
    None,
    /// Instead of logits, every position's final hidden state (after the output norm, the
    /// vector the output matrix would multiply): [tokens, n_embd]. For embeddings; a batch
    /// asks for hidden states or for logits, not both.
    Hidden,
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

/// The rows of a validated batch: (sequence, position) of every row, in order.
pub(crate) struct Plan {
    pub rows: Vec<(usize, usize)>,
}
