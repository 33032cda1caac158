//! Tokenizers built from GGUF metadata, token for token the same as llama.cpp's
//! (`llama-vocab.cpp`: `llama_tokenize`, `llama_token_to_piece`, `llama_detokenize`).
//!
//! - `gpt2` vocabularies: byte-level BPE with the pre-tokenizer named by `tokenizer.ggml.pre`
//!   (the merge step is the Hugging Face `tokenizers` BPE model), see `bpe.rs`.
//! - `llama` vocabularies (SentencePiece, e.g. Gemma 3): llama.cpp's score-driven merging with
//!   byte fallback, see `spm.rs`.
//!
//! Before either runs, the text is cut at special tokens: user-defined tokens always, control
//! and unknown tokens only when `parse_special` is set, longest token text first (llama.cpp's
//! `tokenizer_st_partition`). Token attributes follow llama.cpp's load step, including its
//! by-text fixes (`<|im_end|>`, `<end_of_turn>`, ... are control and end generation).
//!
//! ```no_run
//! use ingot_model::tokenizer::{StreamDecoder, Tokenizer, Vocab};
//! let file = ingot_gguf::GgufFile::open("model.gguf")?;
//! let tok = Tokenizer::new(&Vocab::from_gguf(&file)?)?;
//! let ids = tok.encode("Hello world", true, false)?;
//! assert_eq!(tok.decode(&ids, true), "Hello world");
//! let mut stream = StreamDecoder::new(true);
//! for &id in &ids {
//!     print!("{}", stream.push(&tok, id)?);
//! }
//! # Ok::<(), ingot_model::Error>(())
//! ```

mod bpe;
mod spm;
mod vocab;

pub use vocab::{MetaValue, Vocab};

use crate::{Error, Result};
use aho_corasick::AhoCorasick;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Range;

// Token attributes (llama.h `llama_token_attr`): a token type from the file, plus flags
// that llama.cpp's load step adds.
const ATTR_UNKNOWN: u32 = 1 << 0;
const ATTR_UNUSED: u32 = 1 << 1;
const ATTR_NORMAL: u32 = 1 << 2;
const ATTR_CONTROL: u32 = 1 << 3;
const ATTR_USER_DEFINED: u32 = 1 << 4;
const ATTR_BYTE: u32 = 1 << 5;

/// Rendered only when special tokens are wanted.
const ATTR_SPECIAL: u32 = ATTR_UNKNOWN | ATTR_CONTROL;

/// The two tokenizer algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// `gpt2`: byte-level BPE with a regex pre-tokenizer.
    Bpe,
    /// `llama`: SentencePiece-style merging by score, with byte fallback.
    Spm,
}

enum Engine {
    Bpe(Box<bpe::Bpe>),
    Spm,
}

/// A text piece or a special token, the result of cutting the text at special tokens.
enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

/// Whether `start..end` overlaps one of `ranges` (sorted, not overlapping).
fn overlaps(ranges: &[Range<usize>], start: usize, end: usize) -> bool {
    let i = ranges.partition_point(|r| r.end <= start);
    ranges.get(i).is_some_and(|r| r.start < end)
}

/// A tokenizer: text to token ids and back. Cheap to share (`Send + Sync`).
pub struct Tokenizer {
    kind: TokenizerKind,
    engine: Engine,
    tokens: Vec<String>,
    scores: Vec<f32>,
    attrs: Vec<u32>,
    token_to_id: HashMap<String, u32>,
    /// Each token's bytes as `llama_token_to_piece(special = true)` gives them.
    pieces: Vec<Vec<u8>>,
    /// Control, user-defined and unknown tokens, longest text first.
    specials: Vec<u32>,
    /// Finds which special token texts occur in a text; `special_ids[pattern]` are the tokens.
    special_finder: Option<AhoCorasick>,
    special_ids: Vec<Vec<u32>>,
    /// The SPM token of each byte (`<0xXX>`, else the one-byte text, else unknown).
    byte_tokens: [Option<u32>; 256],
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    eog: BTreeSet<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("n_tokens", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

// Texts llama.cpp recognises (llama_vocab::impl::load); each list in priority order.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] =
    &["<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>", "<|prefix|>"];
const FIM_SUF_TEXTS: &[&str] =
    &["<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>"];
const FIM_MID_TEXTS: &[&str] =
    &["<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>", "<|middle|>"];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// gpt-oss tokens llama.cpp always renders.
const ALWAYS_RENDERED_TEXTS: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

impl Tokenizer {
    /// Builds a tokenizer; any inconsistency in `vocab` is an [`Error::Tokenizer`].
    pub fn new(vocab: &Vocab) -> Result<Tokenizer> {
        let n = vocab.tokens.len();
        if n == 0 {
            return Err(Error::Tokenizer("the vocabulary has no tokens".into()));
        }
        if u32::try_from(n).is_err() {
            return Err(Error::Tokenizer(format!("the vocabulary has {n} tokens, more than token ids can number")));
        }
        let kind = match vocab.model.as_str() {
            "gpt2" => TokenizerKind::Bpe,
            "llama" => TokenizerKind::Spm,
            other => {
                return Err(Error::Tokenizer(format!(
                    "unsupported tokenizer model '{other}' (tokenizer.ggml.model); supported: gpt2 (byte-level BPE), llama (SentencePiece)"
                )))
            }
        };
        // llama.cpp gives empty tokens a placeholder text so that they never match
        let tokens: Vec<String> =
            vocab.tokens.iter().enumerate().map(|(i, t)| if t.is_empty() { format!("[EMPTY_{i}]") } else { t.clone() }).collect();
        let scores = match &vocab.scores {
            Some(s) if s.len() < n => {
                return Err(Error::Tokenizer(format!("{} scores for {n} tokens (tokenizer.ggml.scores)", s.len())));
            }
            Some(s) => s[..n].to_vec(),
            None => vec![0.0; n],
        };
        let mut attrs = match &vocab.token_types {
            Some(t) if t.len() < n => {
                return Err(Error::Tokenizer(format!("{} token types for {n} tokens (tokenizer.ggml.token_type)", t.len())));
            }
            Some(t) => t[..n]
                .iter()
                .map(|&ty| match ty {
                    1 => ATTR_NORMAL,
                    2 => ATTR_UNKNOWN,
                    3 => ATTR_CONTROL,
                    4 => ATTR_USER_DEFINED,
                    5 => ATTR_UNUSED,
                    6 => ATTR_BYTE,
                    _ => 0, // undefined
                })
                .collect(),
            None => vec![ATTR_NORMAL; n],
        };
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            token_to_id.insert(t.clone(), i as u32); // a later duplicate wins, as in llama.cpp
        }

        // defaults of llama.cpp, dropped when out of range, then the file's ids
        let in_range = |id: u32| (id as usize) < n;
        let (mut bos, mut eos, mut unk) = match kind {
            TokenizerKind::Spm => (Some(1), Some(2), Some(0)),
            TokenizerKind::Bpe => (Some(11), Some(11), None),
        };
        bos = bos.filter(|&i| in_range(i));
        eos = eos.filter(|&i| in_range(i));
        unk = unk.filter(|&i| in_range(i));
        let check = |what: &str, id: Option<u32>| -> Result<Option<u32>> {
            match id {
                Some(i) if !in_range(i) => {
                    Err(Error::Tokenizer(format!("{what} token id {i} is out of range (the vocabulary has {n} tokens)")))
                }
                other => Ok(other),
            }
        };
        bos = check("BOS", vocab.bos)?.or(bos);
        eos = check("EOS", vocab.eos)?.or(eos);
        unk = check("unknown", vocab.unk)?.or(unk);
        let pad = check("padding", vocab.pad)?;
        let mut eot = check("EOT", vocab.eot)?;

        // by-text detection of special tokens, as llama.cpp's load step
        let find = |texts: &[&str]| texts.iter().find_map(|t| token_to_id.get(*t).copied());
        let mark_control = |id: u32, attrs: &mut [u32]| attrs[id as usize] |= ATTR_CONTROL;
        if eot.is_none() {
            eot = find(EOT_TEXTS);
            if let Some(id) = eot {
                mark_control(id, &mut attrs);
            }
        }
        let eom = find(EOM_TEXTS);
        let mut fim = [None; 3]; // pad, rep, sep: these end generation
        for (i, texts) in
            [FIM_PRE_TEXTS, FIM_SUF_TEXTS, FIM_MID_TEXTS, FIM_PAD_TEXTS, FIM_REP_TEXTS, FIM_SEP_TEXTS, EOM_TEXTS].iter().enumerate()
        {
            if let Some(id) = find(texts) {
                mark_control(id, &mut attrs);
                if (3..6).contains(&i) {
                    fim[i - 3] = Some(id);
                }
            }
        }
        for (i, a) in attrs.iter_mut().enumerate() {
            if *a & ATTR_CONTROL != 0 && tokens[i].contains("unused") {
                *a |= ATTR_UNUSED;
            }
        }
        let mut eog: BTreeSet<u32> = fim.iter().flatten().copied().collect();
        for t in EOG_TEXTS {
            if let Some(&id) = token_to_id.get(*t) {
                eog.insert(id);
                mark_control(id, &mut attrs);
            }
        }
        for t in ALWAYS_RENDERED_TEXTS {
            if let Some(&id) = token_to_id.get(*t) {
                attrs[id as usize] = ATTR_USER_DEFINED;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        let eog_text = |eog: &BTreeSet<u32>, t: &str| eog.iter().copied().find(|&id| tokens[id as usize] == t);
        // harmony / solar-open: "<|end|>" ends a message, not the generation
        if let Some(end) = eog_text(&eog, "<|end|>") {
            let has = |t: &str| eog_text(&eog, t).is_some();
            let call = has("<|call|>") || has("<|calls|>");
            if call && (has("<|return|>") || has("<|flush|>")) {
                eog.remove(&end);
                attrs[end as usize] = ATTR_USER_DEFINED;
            }
        }
        // gemma4 / plamo: "</s>" is a normal token there
        if let Some(s) = eog_text(&eog, "</s>") {
            if eog_text(&eog, "<|tool_response>").is_some() || eog_text(&eog, "<|plamo:eos|>").is_some() {
                eog.remove(&s);
                attrs[s as usize] = ATTR_NORMAL;
            }
        }

        let mut specials: Vec<u32> =
            (0..n as u32).filter(|&i| attrs[i as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0).collect();
        specials.sort_by(|&a, &b| tokens[b as usize].len().cmp(&tokens[a as usize].len()).then(a.cmp(&b)));
        let mut pattern_of: HashMap<&str, usize> = HashMap::new();
        let mut special_ids: Vec<Vec<u32>> = Vec::new();
        for &id in &specials {
            let text = tokens[id as usize].as_str();
            let p = *pattern_of.entry(text).or_insert_with(|| {
                special_ids.push(Vec::new());
                special_ids.len() - 1
            });
            special_ids[p].push(id);
        }
        let special_finder = if special_ids.is_empty() {
            None
        } else {
            let mut patterns = vec![""; special_ids.len()];
            for (text, &p) in &pattern_of {
                patterns[p] = text;
            }
            Some(AhoCorasick::new(&patterns).map_err(|e| Error::Tokenizer(format!("indexing the special tokens: {e}")))?)
        };

        let (engine, add_bos_default, add_space_prefix_default, clean_spaces) = match kind {
            TokenizerKind::Bpe => {
                let pre = bpe::pre_tokenizer(vocab.pre.as_deref())?;
                let merges = vocab
                    .merges
                    .as_ref()
                    .ok_or_else(|| Error::Tokenizer("a gpt2 (BPE) vocabulary needs merges (tokenizer.ggml.merges)".into()))?;
                (Engine::Bpe(Box::new(bpe::Bpe::new(&pre, &tokens, merges)?)), pre.add_bos, false, pre.clean_spaces)
            }
            TokenizerKind::Spm => (Engine::Spm, true, true, false),
        };

        let mut byte_tokens = [None; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            let single = if b < 0x80 { token_to_id.get(&char::from(b as u8).to_string()).copied() } else { None };
            *slot = token_to_id.get(&format!("<0x{b:02X}>")).copied().or(single).or(unk);
        }
        let char_byte = bpe::char_to_byte_table();
        let pieces = (0..n).map(|i| render_piece(kind, &tokens[i], attrs[i], &char_byte)).collect();

        Ok(Tokenizer {
            kind,
            engine,
            tokens,
            scores,
            attrs,
            token_to_id,
            pieces,
            specials,
            special_finder,
            special_ids,
            byte_tokens,
            bos,
            eos,
            eot,
            unk,
            pad,
            eog,
            add_bos: vocab.add_bos.unwrap_or(add_bos_default),
            add_eos: vocab.add_eos.unwrap_or(false),
            add_space_prefix: vocab.add_space_prefix.unwrap_or(add_space_prefix_default),
            clean_spaces,
        })
    }

    /// Token ids of `text`, as llama.cpp's `llama_tokenize(text, add_special, parse_special)`:
    /// `add_special` adds BOS / EOS where the vocabulary asks for them (`add_bos`, `add_eos`);
    /// `parse_special` makes the texts of control tokens (`<|im_start|>`, `<start_of_turn>`)
    /// their ids instead of text. User-defined tokens are always matched.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        self.encode_partitioned(text, add_special, parse_special, &[])
    }

    /// [`encode`](Self::encode) with `parse_special` set, except that no control or unknown
    /// token is matched where its text overlaps one of the byte ranges `plain` (sorted, not
    /// overlapping): there the text is encoded as text. A chat template's markup is parsed
    /// this way while message content stays plain (see `ChatTemplate::render_marked`).
    pub fn encode_with_plain_ranges(&self, text: &str, add_special: bool, plain: &[Range<usize>]) -> Result<Vec<u32>> {
        self.encode_partitioned(text, add_special, true, plain)
    }

    /// Where the texts of control and unknown tokens occur in `text` (the places
    /// `encode(.., parse_special = true)` could cut at), as sorted byte ranges, overlapping
    /// occurrences merged.
    pub fn control_text_ranges(&self, text: &str) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        let Some(finder) = &self.special_finder else { return out };
        for m in finder.find_overlapping_iter(text) {
            if !self.special_ids[m.pattern().as_usize()].iter().any(|&id| self.attrs[id as usize] & ATTR_SPECIAL != 0) {
                continue;
            }
            out.push(m.start()..m.end());
        }
        out.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(out.len());
        for r in out {
            match merged.last_mut() {
                Some(last) if r.start < last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        merged
    }

    fn encode_partitioned(&self, text: &str, add_special: bool, parse_special: bool, plain: &[Range<usize>]) -> Result<Vec<u32>> {
        let fragments = if text.is_empty() { Vec::new() } else { self.partition(text, parse_special, plain) };
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.push(self.bos.ok_or_else(|| Error::Tokenizer("the vocabulary adds BOS but has no BOS token".into()))?);
        }
        match &self.engine {
            Engine::Bpe(bpe) => {
                for f in fragments {
                    match f {
                        Fragment::Text(r) => bpe.encode(&text[r], &mut out)?,
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
            Engine::Spm => {
                let mut prev_special = true; // a space prefix goes at the start and after special tokens
                let mut buf = String::new();
                for f in fragments {
                    match f {
                        Fragment::Text(r) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('▁');
                            }
                            for c in text[r].chars() {
                                buf.push(if c == ' ' { '▁' } else { c });
                            }
                            spm::encode(&buf, &self.token_to_id, &self.scores, |b| self.byte_tokens[b as usize], &mut out)?;
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.push(self.eos.ok_or_else(|| Error::Tokenizer("the vocabulary adds EOS but has no EOS token".into()))?);
        }
        Ok(out)
    }

    /// Cuts `text` at special tokens: for each special token, longest first, every text
    /// fragment is split at each of its (non-overlapping, leftmost) occurrences; control
    /// and unknown tokens only where they overlap none of the `plain` ranges.
    fn partition(&self, text: &str, parse_special: bool, plain: &[Range<usize>]) -> Vec<Fragment> {
        let mut fragments = vec![Fragment::Text(0..text.len())];
        let Some(finder) = &self.special_finder else { return fragments };
        // only tokens that occur somewhere in the text can split a fragment
        let mut present: HashSet<u32> = HashSet::new();
        for m in finder.find_overlapping_iter(text) {
            present.extend(self.special_ids[m.pattern().as_usize()].iter().copied());
        }
        if present.is_empty() {
            return fragments;
        }
        for &id in &self.specials {
            if !present.contains(&id) || (!parse_special && self.attrs[id as usize] & ATTR_SPECIAL != 0) {
                continue;
            }
            let needle = self.tokens[id as usize].as_str();
            let control = self.attrs[id as usize] & ATTR_SPECIAL != 0;
            // Past a refused match the search goes on after its first character.
            let step = needle.chars().next().map_or(1, char::len_utf8);
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for f in fragments {
                let Fragment::Text(r) = f else {
                    next.push(f);
                    continue;
                };
                let (mut at, mut from) = (r.start, r.start);
                while let Some(p) = text[from..r.end].find(needle) {
                    let (start, end) = (from + p, from + p + needle.len());
                    if control && overlaps(plain, start, end) {
                        from = start + step;
                        continue;
                    }
                    if start > at {
                        next.push(Fragment::Text(at..start));
                    }
                    next.push(Fragment::Token(id));
                    at = end;
                    from = end;
                }
                if at < r.end {
                    next.push(Fragment::Text(at..r.end));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// The text of `ids`, as llama.cpp's `llama_detokenize(ids, remove_special = false,
    /// unparse_special = !skip_special)`: control and unknown tokens are left out when
    /// `skip_special`; bytes that are not UTF-8 become U+FFFD. Ids out of range are left out.
    ///
    /// One difference: where the vocabulary adds a SentencePiece space prefix, the space is
    /// removed from the first token that gives any text (llama.cpp removes it only from the
    /// first token, so a leading BOS keeps it); `decode(encode(t, true, false), true) == t`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, skip_special)).into_owned()
    }

    /// The bytes of `ids` (see [`Tokenizer::decode`]); a piece of a multi-byte character may
    /// end a token, so only whole sequences of ids decode to valid UTF-8.
    pub fn decode_bytes(&self, ids: &[u32], skip_special: bool) -> Vec<u8> {
        let mut out = Vec::new();
        // drop the space a SentencePiece prefix put before the first word
        let mut remove_space = self.add_space_prefix;
        for &id in ids {
            let Some(piece) = self.piece(id, skip_special) else { continue };
            if remove_space && !piece.is_empty() {
                out.extend_from_slice(piece.strip_prefix(b" ").unwrap_or(piece));
                remove_space = false;
            } else {
                out.extend_from_slice(piece);
            }
        }
        if self.clean_spaces {
            clean_spaces(&mut out);
        }
        out
    }

    fn piece(&self, id: u32, skip_special: bool) -> Option<&[u8]> {
        let piece = self.pieces.get(id as usize)?;
        if skip_special && self.attrs[id as usize] & ATTR_SPECIAL != 0 {
            return Some(&[]);
        }
        Some(piece)
    }

    /// The bytes of one token, as llama.cpp's `llama_token_to_piece(special = true)`:
    /// byte-level BPE pieces decoded to bytes, SentencePiece `▁` as a space, `<0xXX>` byte
    /// tokens as that byte, control and user-defined tokens as their text, unused as nothing.
    pub fn token_piece(&self, id: u32) -> Result<Vec<u8>> {
        self.pieces.get(id as usize).cloned().ok_or_else(|| self.out_of_range(id))
    }

    fn out_of_range(&self, id: u32) -> Error {
        Error::Tokenizer(format!("token id {id} is out of range (the vocabulary has {} tokens)", self.tokens.len()))
    }

    /// Whether `id` ends generation: EOS, EOT, and the control tokens llama.cpp treats so
    /// (`<|im_end|>`, `<end_of_turn>`, `<|endoftext|>`, FIM pad/repo/file-separator, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The tokens that end generation, in id order.
    pub fn eog_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.eog.iter().copied()
    }

    /// Whether `id` is a control or unknown token: text that `decode(.., skip_special = true)` leaves out.
    pub fn is_control(&self, id: u32) -> bool {
        self.attrs.get(id as usize).is_some_and(|a| a & ATTR_SPECIAL != 0)
    }

    /// The algorithm.
    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// The number of tokens.
    pub fn n_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// The stored text of a token (byte-level or `▁`-escaped, as in the file).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of a stored token text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// The beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The end-of-turn token (from the file, else found by its text).
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// The unknown token.
    pub fn unk(&self) -> Option<u32> {
        self.unk
    }

    /// The padding token.
    pub fn pad(&self) -> Option<u32> {
        self.pad
    }

    /// Whether `encode(.., add_special = true, ..)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., add_special = true, ..)` ends with EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }
}

/// One token's bytes with special tokens rendered (`token_to_piece(special = true)`).
fn render_piece(kind: TokenizerKind, text: &str, attr: u32, char_byte: &HashMap<char, u8>) -> Vec<u8> {
    if attr & (ATTR_SPECIAL | ATTR_USER_DEFINED) != 0 {
        return text.as_bytes().to_vec();
    }
    if attr & ATTR_NORMAL != 0 {
        return match kind {
            TokenizerKind::Spm => text.replace('▁', " ").into_bytes(),
            // a character outside the byte map (never in a well-formed vocabulary) stays as it is
            TokenizerKind::Bpe => {
                let mut out = Vec::with_capacity(text.len());
                for c in text.chars() {
                    match char_byte.get(&c) {
                        Some(&b) => out.push(b),
                        None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                out
            }
        };
    }
    if attr & ATTR_BYTE != 0 {
        let hex = text.strip_prefix("<0x").and_then(|t| t.strip_suffix('>'));
        return match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) => vec![b],
            None => text.as_bytes().to_vec(),
        };
    }
    Vec::new() // unused and undefined tokens
}

/// llama.cpp's `clean_up_tokenization_spaces` (three in-place passes over the bytes).
fn clean_spaces(text: &mut Vec<u8>) {
    // " ?", " !", " .", " ," lose the space
    let n = text.len();
    let mut total = usize::from(n > 0);
    for i in 1..n {
        let x = text[i];
        if text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        text[total] = x;
        total += 1;
    }
    text.truncate(total);
    // " ' " becomes "'"
    let n = text.len();
    let mut total = usize::from(n > 0);
    let mut i = 1;
    while i < n {
        let x = text[i];
        if x == b'\'' && i + 1 < n && text[i - 1] == b' ' && text[i + 1] == b' ' {
            total -= 1;
            i += 1;
            text[i] = 0;
        }
        text[total] = x;
        total += 1;
        i += 1;
    }
    text.truncate(total);
    // " 's", " 'm", " 're", " 've" lose the space
    let n = text.len();
    let mut total = usize::from(n > 0);
    for i in 1..n {
        let x = text[i];
        if text[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = text[i + 1];
            let x2 = text.get(i + 2).copied().filter(|_| i + 2 < n);
            if matches!(x1, b's' | b'm') || (matches!((x1, x2), (b'r', Some(b'e')) | (b'v', Some(b'e')))) {
                total -= 1;
            }
        }
        text[total] = x;
        total += 1;
    }
    text.truncate(total);
}

/// Turns token ids into text as they come, holding back the bytes of a character that a
/// later token completes: each [`push`](StreamDecoder::push) returns only whole UTF-8
/// characters, and never U+FFFD for a sequence that may still complete. The pieces are
/// those of [`Tokenizer::decode`] without its whole-text fix-ups (the SentencePiece leading
/// space, `clean_spaces`), which the three test models do not use.
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    skip_special: bool,
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder; `skip_special` leaves out control tokens, as in [`Tokenizer::decode`].
    pub fn new(skip_special: bool) -> StreamDecoder {
        StreamDecoder { skip_special, pending: Vec::new() }
    }

    /// Adds one token; returns the text it completes (often empty inside a character).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        let piece = tokenizer.piece(id, self.skip_special).ok_or_else(|| tokenizer.out_of_range(id))?;
        Ok(self.push_bytes(piece))
    }

    /// Adds raw bytes; returns the text they complete. Bytes that can never be UTF-8
    /// become U+FFFD at once; an incomplete character at the end waits for the next bytes.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: the held-back bytes, as U+FFFD when they never completed a character.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    /// Whether bytes of an incomplete character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_spaces_like_llama_cpp() {
        let mut t = b"a , b ! c ' d 's e 't f 're g 'll h ?".to_vec();
        clean_spaces(&mut t);
        assert_eq!(String::from_utf8(t).unwrap(), "a, b! c'd's e 't f're g 'll h?");
        for s in ["", " ", "'", " '", "x '"] {
            let mut t = s.as_bytes().to_vec();
            clean_spaces(&mut t);
            assert_eq!(t, s.as_bytes(), "{s:?}");
        }
    }

    #[test]
    fn byte_tables_are_inverse() {
        let to_char = bpe::byte_to_char_table();
        let to_byte = bpe::char_to_byte_table();
        assert_eq!(to_byte.len(), 256);
        for b in 0..=255u8 {
            assert_eq!(to_byte[&to_char[b as usize]], b);
        }
        assert_eq!((to_char[b' ' as usize], to_char[b'\n' as usize], to_char[b'A' as usize]), ('Ġ', 'Ċ', 'A'));
    }
}
