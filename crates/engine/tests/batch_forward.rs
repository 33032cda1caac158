//! The model's batched paged forward pass on SmolLM2: a sequence's logits are bit-identical
//! whether it runs alone (through a private cache) or in a batch with others, whatever the
//! page size, the physical pages or how its prompt is cut into chunks.

mod common;

use common::{encode, smollm2};
use ingot_model::{Logits, Model, SeqChunk};

/// Logits of every position of `prompt` run alone in one go.
fn alone(model: &Model, prompt: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache().unwrap();
    model.forward(prompt, &mut cache, Logits::All, None).unwrap()
}

#[test]
fn batched_rows_equal_rows_run_alone() {
    let Some((model, tok)) = smollm2() else { return };
    let vocab = model.config.vocab;
    let a = encode(&tok, "The capital of France is Paris. The capital of Italy is");
    let b = encode(&tok, "def add(x, y):\n    return");
    let c = encode(&tok, "Three colors: red,");
    let (wa, wb, wc) = (alone(&model, &a), alone(&model, &b), alone(&model, &c));

    // Page size 3, pages handed out in a scrambled order; A and B are split into chunks
    // that run in different batches, C runs whole.
    let ps = 3;
    let mut pool = model.new_pool(ps, 40).unwrap();
    let pages_a: Vec<u32> = (0..a.len().div_ceil(ps) as u32).map(|i| 39 - 2 * i).collect();
    let pages_b: Vec<u32> = (0..b.len().div_ceil(ps) as u32).map(|i| 2 * i).collect();
    let pages_c: Vec<u32> = (0..c.len().div_ceil(ps) as u32).map(|i| 2 * i + 1).collect();
    assert!(pages_a.iter().all(|p| p % 2 == 1 && !pages_c.contains(p)), "A's pages overlap C's");
    let (a1, b1) = (5, 4);
    // Step 1: A's first chunk (no logits), B's first chunk (all logits).
    let l1 = model
        .forward_batch(
            &mut pool,
            &[
                SeqChunk { tokens: &a[..a1], start: 0, pages: &pages_a, logits: Logits::None },
                SeqChunk { tokens: &b[..b1], start: 0, pages: &pages_b, logits: Logits::All },
            ],
            None,
        )
        .unwrap();
    assert_eq!(l1, wb[..b1 * vocab]);
    // Step 2: C whole (last logits), the rest of A (all), one token of B (last).
    let l2 = model
        .forward_batch(
            &mut pool,
            &[
                SeqChunk { tokens: &c, start: 0, pages: &pages_c, logits: Logits::Last },
                SeqChunk { tokens: &a[a1..], start: a1, pages: &pages_a, logits: Logits::All },
                SeqChunk { tokens: &b[b1..b1 + 1], start: b1, pages: &pages_b, logits: Logits::Last },
            ],
            None,
        )
        .unwrap();
    let n_a = a.len() - a1;
    assert_eq!(l2.len(), (1 + n_a + 1) * vocab);
    assert_eq!(l2[..vocab], wc[(c.len() - 1) * vocab..]);
    assert_eq!(l2[vocab..(1 + n_a) * vocab], wa[a1 * vocab..]);
    assert_eq!(l2[(1 + n_a) * vocab..], wb[b1 * vocab..(b1 + 1) * vocab]);
}

#[test]
fn bad_batches_are_errors() {
    let Some((model, tok)) = smollm2() else { return };
    let a = encode(&tok, "Hello there");
    let mut pool = model.new_pool(4, 4).unwrap();
    let mut run = |seqs: &[SeqChunk]| model.forward_batch(&mut pool, seqs, None).unwrap_err().to_string();
    let chunk = |tokens, start, pages| SeqChunk { tokens, start, pages, logits: Logits::Last };
    assert!(run(&[]).contains("at least one sequence"));
    assert!(run(&[chunk(&[], 0, &[0])]).contains("no token to run"));
    assert!(run(&[chunk(&a, 3, &[0])]).contains("cannot hold"));
    assert!(run(&[chunk(&a, 0, &[9])]).contains("outside the pool"));
    assert!(run(&[chunk(&[u32::MAX], 0, &[0])]).contains("outside the vocabulary"));
    // Two sequences writing one page, or one reading a page the other writes.
    assert!(run(&[chunk(&a[..1], 0, &[0]), chunk(&a[..1], 1, &[0])]).contains("written by sequence 0 and 1"));
    assert!(run(&[chunk(&a[..1], 0, &[1]), chunk(&a[..1], 4, &[1, 2])]).contains("written by sequence 0 and read by sequence 1"));
    let c = model.config.context;
    assert!(run(&[chunk(&a[..1], c, &vec![0; c / 4 + 1])]).contains("exceed the context"));
}
