//! `docs/ops.md`, generated: the page's opening (`ops_doc_head.md`), then each
//! [`DocSection`] with its ops' spec text from [`crate::for_each_op`], in registry order.
//! `ingot golden ops-doc > docs/ops.md` writes it; a CLI test keeps the file current.

use crate::OpKind;

/// A section of `docs/ops.md`: a heading, text before its ops and text after them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocSection {
    LinearAlgebra,
    Embedding,
    Norm,
    Activations,
    Sampling,
    Attention,
    Conversions,
}

impl DocSection {
    /// Every section, in page order.
    pub const ALL: &'static [DocSection] = &[
        DocSection::LinearAlgebra,
        DocSection::Embedding,
        DocSection::Norm,
        DocSection::Activations,
        DocSection::Sampling,
        DocSection::Attention,
        DocSection::Conversions,
    ];

    /// Heading, text before the ops (may be empty) and text after them (may be empty).
    fn text(self) -> (&'static str, &'static str, &'static str) {
        match self {
            DocSection::LinearAlgebra => ("Linear algebra", "", ""),
            DocSection::Embedding => ("Embedding", "", ""),
            DocSection::Norm => ("Normalization and residuals", "", ""),
            DocSection::Activations => (
                "Activations",
                "Element-wise, computed exactly and rounded once (a reference must keep relative accuracy
in the negative tails, e.g. gelu as 0.5·x·erfc(−x/√2) and gelu_tanh as x·σ(2u), not
1 + erf or 1 + tanh, which cancel). At ±Inf each function returns its limit; NaN stays
NaN. In the gated ops a limit of 0 times an infinite `up` is NaN.

| op | inputs → output | value | at +Inf / −Inf |
|---|---|---|---|",
                "Unary params: `num_elements, dtype`; gated params: `num_tokens, intermediate_size, dtype`.
**Argument order.** The seed calls `silu_and_mul(out, gate, up)` — gate first, then up —
and computes `silu(gate)·up`; the artifact stores `gate` and `up` as two tensors.
FlashInfer's single-input form `silu_and_mul(x)` with x = [gate | up] along the last
dimension is the same function.",
            ),
            DocSection::Sampling => {
                ("Logits and sampling", "All take `logits` [num_tokens, vocab_size] in `dtype` (one row per sequence).", "")
            }
            DocSection::Attention => ("Positions and attention", "", ""),
            DocSection::Conversions => ("Conversions", "", ""),
        }
    }
}

/// The text of `docs/ops.md`.
pub fn ops_doc() -> String {
    let mut s = String::from(include_str!("ops_doc_head.md"));
    for &section in DocSection::ALL {
        let (heading, intro, outro) = section.text();
        s.push_str(&format!("\n## {heading}\n"));
        let mut prev: &str = intro;
        if !intro.is_empty() {
            s.push_str(&format!("\n{intro}\n"));
        }
        for kind in OpKind::ALL.iter().filter(|k| k.spec().0 == section) {
            let spec = kind.spec().1.trim();
            // Rows of one table follow each other; everything else is a paragraph.
            let row = |t: &str| t.lines().last().is_some_and(|l| l.starts_with('|'));
            if !(row(prev) && spec.starts_with('|')) {
                s.push('\n');
            }
            s.push_str(spec);
            s.push('\n');
            prev = spec;
        }
        if !outro.is_empty() {
            s.push_str(&format!("\n{outro}\n"));
        }
    }
    s
}
