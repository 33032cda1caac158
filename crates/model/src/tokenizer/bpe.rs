//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`), as llama.cpp's `llm_tokenizer_bpe`:
//! the text is split by the pre-tokenizer's regexes (applied one after the other, each
//! splitting every piece further, unmatched spans kept as pieces), every piece is mapped
//! byte by byte to GPT-2's printable characters, and the Hugging Face `tokenizers` BPE model
//! merges each piece by rank.
//!
//! The regexes are llama.cpp's (`llama-vocab.cpp`, `llm_tokenizer_bpe`), with the same names
//! mapped to them (`llama_vocab::impl::load`). llama.cpp runs a few of them through
//! hand-written matchers (`unicode.cpp`) that implement the same regex; here every one runs
//! through `fancy-regex`, on each piece on its own so that look-aheads never see past it.

use crate::{Error, Result};
use fancy_regex::Regex;
use std::collections::HashMap;
use tokenizers::models::bpe::BPE;
use tokenizers::Model;

/// What a pre-tokenizer name selects.
pub(super) struct PreTokenizer {
    /// The canonical llama.cpp name of the family (`"qwen2"`, `"smollm"`, ...).
    pub family: &'static str,
    pub regexes: &'static [&'static str],
    /// A word that is a whole token is not merged (llama.cpp `ignore_merges`).
    pub ignore_merges: bool,
    /// Detokenizing removes spaces before punctuation (llama.cpp `clean_spaces`).
    pub clean_spaces: bool,
    /// BOS is added by default (when the file has no `add_bos_token`).
    pub add_bos: bool,
}

const GPT2: &[&str] = &["'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"];
const SMOLLM: &[&str] = &["\\p{N}", "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"];
const DEFAULT: &[&str] = &[
    "[\\p{P}\\$\\+<=>\\^~\\|]+",
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
    "\\p{N}+",
    "[0-9][0-9][0-9]",
];
const LLAMA3: &[&str] = &[
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
];
const QWEN2: &[&str] = &[
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
];
const QWEN35: &[&str] = &[
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
];
const FALCON: &[&str] =
    &["[\\p{P}\\$\\+<=>\\^~\\|`]+", "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)", "[0-9][0-9][0-9]"];
const GPT4O: &[&str] = &[
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
];
const TEKKEN: &[&str] = &[
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
];
const SEED_CODER: &[&str] = &[
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
];
const PORO: &[&str] = &[" ?[^(\\s|.,!?…。，、।۔،)]+"];
const VIKING: &[&str] = &[" ?[^(\\s|.,!?…。，、।۔،)]+", "\\p{N}"];

/// The pre-tokenizer llama.cpp selects for a `tokenizer.ggml.pre` name (`None`: the
/// default, as llama.cpp does with a warning). Unknown names are an error: guessing would
/// tokenize differently from the model's training.
pub(super) fn pre_tokenizer(name: Option<&str>) -> Result<PreTokenizer> {
    // (family, regexes, ignore_merges, clean_spaces, add_bos)
    let p = |family, regexes, ignore_merges, clean_spaces, add_bos| PreTokenizer { family, regexes, ignore_merges, clean_spaces, add_bos };
    let name = name.unwrap_or("default");
    Ok(match name {
        "" | "default" => p("default", DEFAULT, false, true, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" | "jina-v5-nano" => {
            p("llama3", LLAMA3, true, true, true)
        }
        "dbrx" | "smaug-bpe" => p("llama3", LLAMA3, false, true, false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "grok-2" => p("qwen2", QWEN2, false, false, false),
        "megrez" | "stablelm2" => p("qwen2", QWEN2, false, true, false),
        "qwen35" => p("qwen35", QWEN35, false, false, false),
        "smollm" | "command-r" => p("smollm", SMOLLM, false, false, false),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" => p("smollm", SMOLLM, false, true, false),
        "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum"
        | "modern-bert" | "mpt" | "olmo" | "jais" | "exaone4" => p("gpt2", GPT2, false, true, false),
        "trillion" | "granite-docling" => p("gpt2", GPT2, false, false, false),
        "falcon" => p("falcon", FALCON, false, true, false),
        "gpt-4o" | "llama4" | "kanana2" | "talkie" => p("gpt-4o", GPT4O, false, false, false),
        "tekken" => p("tekken", TEKKEN, true, false, true),
        "seed-coder" => p("seed-coder", SEED_CODER, false, false, false),
        "poro-chat" => p("poro", PORO, false, false, false),
        "bloom" | "gpt3-finnish" => p("poro", PORO, false, true, false),
        "viking" => p("viking", VIKING, false, false, false),
        other => {
            return Err(Error::Tokenizer(format!(
                "unsupported pre-tokenizer '{other}' (tokenizer.ggml.pre); supported: default, llama-bpe/llama3, qwen2, qwen35, \
                 smollm, starcoder, gpt-2, falcon, gpt-4o, tekken, and the other names llama.cpp maps to these families"
            )))
        }
    })
}

/// GPT-2's byte-to-character map: printable Latin-1 bytes stand for themselves, the other
/// 68 bytes for U+0100.. in byte order.
pub(super) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(cp).unwrap_or('\0');
    }
    table
}

/// The inverse of [`byte_to_char_table`], indexed by code point (all of them are < 324).
pub(super) fn char_to_byte_table() -> HashMap<char, u8> {
    byte_to_char_table().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect()
}

/// A byte-level BPE tokenizer for raw text (special tokens are split out before).
pub(super) struct Bpe {
    regexes: Vec<Regex>,
    model: BPE,
    byte_char: [char; 256],
}

impl Bpe {
    /// Builds the merge table. `tokens` are all token texts (later duplicates win, as in
    /// llama.cpp's `token_to_id`); every merge must name two tokens whose concatenation is a token.
    pub fn new(pre: &PreTokenizer, tokens: &[String], merges: &[String]) -> Result<Bpe> {
        let regexes = pre
            .regexes
            .iter()
            .map(|r| Regex::new(r).map_err(|e| Error::Tokenizer(format!("pre-tokenizer {} regex {r:?}: {e}", pre.family))))
            .collect::<Result<Vec<_>>>()?;

        let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let mut pairs = Vec::with_capacity(merges.len());
        let mut seen = std::collections::HashSet::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte ("  " merges a space pair)
            let split = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1);
            let Some(pos) = split else {
                return Err(Error::Tokenizer(format!("merge {i} {m:?} is not two tokens separated by a space")));
            };
            let (a, b) = (&m[..pos], &m[pos + 1..]);
            for part in [a, b] {
                if !vocab.contains_key(part) {
                    return Err(Error::Tokenizer(format!("merge {i} {m:?} names {part:?}, which is not a token")));
                }
            }
            if !vocab.contains_key(&format!("{a}{b}")) {
                return Err(Error::Tokenizer(format!("merge {i} {m:?} makes {:?}, which is not a token", format!("{a}{b}"))));
            }
            // the first rank of a repeated pair counts (llama.cpp inserts with emplace)
            if seen.insert((a, b)) {
                pairs.push((a.to_string(), b.to_string()));
            }
        }
        let model = BPE::builder()
            .vocab_and_merges(vocab, pairs)
            .ignore_merges(pre.ignore_merges)
            .build()
            .map_err(|e| Error::Tokenizer(format!("building the BPE merge table: {e}")))?;
        Ok(Bpe { regexes, model, byte_char: byte_to_char_table() })
    }

    /// The pre-tokenizer pieces of `text`, as byte ranges.
    pub fn split(&self, text: &str) -> Result<Vec<std::ops::Range<usize>>> {
        let mut pieces: Vec<std::ops::Range<usize>> = std::iter::once(0..text.len()).collect();
        for re in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                let s = &text[piece.clone()];
                let mut at = 0;
                for m in re.find_iter(s) {
                    let m = m.map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex failed on {s:?}: {e}")))?;
                    if m.start() == m.end() {
                        continue;
                    }
                    if m.start() > at {
                        next.push(piece.start + at..piece.start + m.start());
                    }
                    next.push(piece.start + m.start()..piece.start + m.end());
                    at = m.end();
                }
                if at < s.len() {
                    next.push(piece.start + at..piece.end);
                }
            }
            pieces = next;
        }
        Ok(pieces)
    }

    /// Appends the ids of raw `text` to `out`.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let mut word = String::new();
        for piece in self.split(text)? {
            word.clear();
            word.extend(text[piece].bytes().map(|b| self.byte_char[b as usize]));
            let tokens = self.model.tokenize(&word).map_err(|e| Error::Tokenizer(format!("BPE on {word:?}: {e}")))?;
            out.extend(tokens.iter().map(|t| t.id));
        }
        Ok(())
    }
}
