//! Tokenizers on tiny hand-made vocabularies, with ids worked out by hand: byte-level BPE
//! (merge order, pre-tokenizers, special tokens), SentencePiece (score order, ties, stale
//! pairs, byte fallback), streaming decode of split characters, and bad vocabularies.

use ingot_model::tokenizer::{MetaValue, StreamDecoder, Tokenizer, TokenizerKind, Vocab};
use ingot_model::Error;

/// GPT-2's byte-to-character map (printable Latin-1 bytes stand for themselves).
fn byte_char(b: u8) -> char {
    let printable = |b: u32| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b as u32) {
        return char::from(b);
    }
    let n = (0..b as u32).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

const BPE_SPECIALS: [(&str, i32); 4] = [("<|endoftext|>", 3), ("<|im_start|>", 3), ("<|im_end|>", 3), ("<tool>", 4)];
const BPE_MERGES: [&str; 11] = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "1 2", "12 3"];

/// Ids 0..256 are the bytes (id = byte value), 256..260 the specials, then one token per merge:
/// 260 he, 261 ll, 262 hell, 263 hello, 264 Ġw, 265 or, 266 Ġwor, 267 ld, 268 Ġworld, 269 12, 270 123.
fn bpe_vocab(pre: &str) -> Vocab {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut types = vec![1; 256];
    for (t, ty) in BPE_SPECIALS {
        tokens.push(t.into());
        types.push(ty);
    }
    for m in BPE_MERGES {
        tokens.push(m.replace(' ', ""));
        types.push(1);
    }
    Vocab {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types: Some(types),
        merges: Some(BPE_MERGES.iter().map(|s| s.to_string()).collect()),
        bos: Some(256),
        eos: Some(256),
        ..Vocab::default()
    }
}

#[test]
fn bpe_merges_by_rank() {
    let tok = Tokenizer::new(&bpe_vocab("smollm")).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::Bpe);
    // "hello": h·e (rank 0), l·l (1), he·ll (2), hell·o (3); " world": Ġ·w, o·r, Ġw·or, l·d, Ġwor·ld
    assert_eq!(tok.encode("hello world!", true, false).unwrap(), [263, 268, b'!' as u32]);
    // one piece, merged at both places
    assert_eq!(tok.encode("hellohello", false, false).unwrap(), [263, 263]);
    // no merge joins across pre-tokenizer pieces: "hel", " lo"
    assert_eq!(tok.encode("hel lo", false, false).unwrap(), [260, b'l' as u32, 32, b'l' as u32, b'o' as u32]);
    assert_eq!(tok.encode("", true, true).unwrap(), Vec::<u32>::new());
    assert_eq!(tok.decode(&[263, 268, 33], true), "hello world!");
    // newline and a non-ASCII character are bytes through the byte map
    assert_eq!(tok.encode("\né", false, false).unwrap(), [10, 0xC3, 0xA9]);
    assert_eq!(tok.token_piece(10).unwrap(), b"\n");
    assert_eq!(tok.token_piece(268).unwrap(), b" world");
}

#[test]
fn bpe_pre_tokenizers_differ_on_digits() {
    // smollm and qwen2 split every digit; llama3 keeps up to three together
    for pre in ["smollm", "qwen2"] {
        let tok = Tokenizer::new(&bpe_vocab(pre)).unwrap();
        assert_eq!(tok.encode("123", false, false).unwrap(), [b'1' as u32, b'2' as u32, b'3' as u32], "{pre}");
    }
    let tok = Tokenizer::new(&bpe_vocab("llama-bpe")).unwrap();
    assert_eq!(tok.encode("123", false, false).unwrap(), [270]);
    // llama3 adds BOS by default
    assert_eq!(tok.encode("123", true, false).unwrap(), [256, 270]);
    // gpt2's " ?\p{N}+" keeps the digits together too
    let tok = Tokenizer::new(&bpe_vocab("gpt-2")).unwrap();
    assert_eq!(tok.encode("123", false, false).unwrap(), [270]);
}

#[test]
fn bpe_special_tokens() {
    let tok = Tokenizer::new(&bpe_vocab("qwen2")).unwrap();
    let text = "<|im_start|>hello<|im_end|>";
    assert_eq!(tok.encode(text, false, true).unwrap(), [257, 263, 258]);
    // as text, qwen2 pieces: "<|", "im", "_start", "|>", "hello", "<|", "im", "_end", "|>"
    let plain: Vec<u32> = "<|im_start|>".bytes().map(u32::from).chain([263]).chain("<|im_end|>".bytes().map(u32::from)).collect();
    assert_eq!(tok.encode(text, false, false).unwrap(), plain);
    // user-defined tokens are always split out
    assert_eq!(tok.encode("a<tool>b", false, false).unwrap(), [b'a' as u32, 259, b'b' as u32]);
    assert_eq!(tok.decode(&[257, 263, 258], true), "hello");
    assert_eq!(tok.decode(&[257, 263, 258], false), text);
    assert_eq!(tok.decode(&plain, true), text);
    assert!(tok.is_eog(256) && tok.is_eog(258) && !tok.is_eog(257) && !tok.is_eog(263));
    assert_eq!(tok.eot(), Some(258), "<|im_end|> is the end of turn");
    assert!(tok.is_control(257) && !tok.is_control(259));
    assert_eq!(tok.token_piece(257).unwrap(), b"<|im_start|>");
}

#[test]
fn bpe_longest_special_first() {
    let mut v = bpe_vocab("qwen2");
    v.tokens.push("<|im_start|>hello".into());
    v.token_types.as_mut().unwrap().push(3);
    let tok = Tokenizer::new(&v).unwrap();
    assert_eq!(tok.encode("<|im_start|>hello<|im_start|>", false, true).unwrap(), [271, 257]);
}

/// `<unk>`, `<s>`, `</s>`, 256 byte tokens (id 3 + byte), then pieces with scores:
/// 259 ▁, 260 h, 261 e, 262 l, 263 o, 264 w, 265 r, 266 d (all -10), 267 ll -1, 268 he -2,
/// 269 hell -1.5, 270 ▁hell -3, 271 or -2, 272 ▁w -2.5, 273 ▁wor -1, 274 ld -4,
/// 275 hello -0.5, 276 ▁hello -20.
fn spm_vocab() -> Vocab {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    let pieces: [(&str, f32); 18] = [
        ("▁", -10.0),
        ("h", -10.0),
        ("e", -10.0),
        ("l", -10.0),
        ("o", -10.0),
        ("w", -10.0),
        ("r", -10.0),
        ("d", -10.0),
        ("ll", -1.0),
        ("he", -2.0),
        ("hell", -1.5),
        ("▁hell", -3.0),
        ("or", -2.0),
        ("▁w", -2.5),
        ("▁wor", -1.0),
        ("ld", -4.0),
        ("hello", -0.5),
        ("▁hello", -20.0),
    ];
    for (p, s) in pieces {
        tokens.push(p.into());
        types.push(1);
        scores.push(s);
    }
    Vocab { model: "llama".into(), pre: Some("default".into()), tokens, scores: Some(scores), token_types: Some(types), ..Vocab::default() }
}

#[test]
fn spm_merges_by_score() {
    let tok = Tokenizer::new(&spm_vocab()).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::Spm);
    assert_eq!((tok.bos(), tok.eos(), tok.unk()), (Some(1), Some(2), Some(0)), "llama.cpp's SPM defaults");
    // "▁hello▁world": ll, he (ties with or: leftmost first), hell, hello, or, ▁w, ▁wor;
    // ▁hell is stale by then; ld, and last ▁hello
    assert_eq!(tok.encode("hello world", true, false).unwrap(), [1, 276, 273, 274]);
    assert_eq!(tok.encode("hello world", false, false).unwrap(), [276, 273, 274]);
    assert_eq!(tok.decode(&[1, 276, 273, 274], true), "hello world");
    assert_eq!(tok.decode(&[1, 276, 273, 274], false), "<s> hello world");
    // byte fallback: é is C3 A9
    assert_eq!(tok.encode("hé", false, false).unwrap(), [259, 260, 3 + 0xC3, 3 + 0xA9]);
    assert_eq!(tok.decode(&[259, 260, 3 + 0xC3, 3 + 0xA9], true), "hé");
    assert_eq!(tok.token_piece(3 + 0x41).unwrap(), b"A");
    assert_eq!(tok.token_piece(276).unwrap(), b" hello");
    // an empty text is just BOS
    assert_eq!(tok.encode("", true, false).unwrap(), [1]);
    assert!(tok.is_eog(2) && !tok.is_eog(1));
}

#[test]
fn spm_space_prefix_and_specials() {
    let mut v = spm_vocab();
    // after a special token the text gets the space prefix again
    let tok = Tokenizer::new(&v).unwrap();
    assert_eq!(tok.encode("hello</s>hello", false, true).unwrap(), [276, 2, 276]);
    assert_eq!(tok.encode("hello</s>hello", false, false).unwrap()[0], 276);
    v.add_space_prefix = Some(false);
    let tok = Tokenizer::new(&v).unwrap();
    // "hello world" without the prefix: hello, ▁wor, ld
    assert_eq!(tok.encode("hello world", false, false).unwrap(), [275, 273, 274]);
    assert_eq!(tok.decode(&[275, 273, 274], true), "hello world");
}

#[test]
fn spm_unknown_byte_uses_unk() {
    let mut v = spm_vocab();
    // drop the byte tokens: a character no token covers becomes <unk> per byte
    let keep: Vec<usize> = (0..v.tokens.len()).filter(|&i| !(3..259).contains(&i)).collect();
    v.tokens = keep.iter().map(|&i| v.tokens[i].clone()).collect();
    v.scores = Some(keep.iter().map(|&i| v.scores.as_ref().unwrap()[i]).collect());
    v.token_types = Some(keep.iter().map(|&i| v.token_types.as_ref().unwrap()[i]).collect());
    let tok = Tokenizer::new(&v).unwrap();
    assert_eq!(tok.encode("é", false, false).unwrap(), [3, 0, 0]); // ▁, <unk>, <unk>
    assert_eq!(tok.decode(&[3, 0, 0], true), "");
    assert_eq!(tok.decode(&[3, 0, 0], false), "<unk><unk>");
}

#[test]
fn stream_decoder_holds_split_characters() {
    let tok = Tokenizer::new(&bpe_vocab("qwen2")).unwrap();
    let ids = tok.encode("a🦀b", false, false).unwrap();
    assert_eq!(ids, [b'a' as u32, 0xF0, 0x9F, 0xA6, 0x80, b'b' as u32]);
    let mut stream = StreamDecoder::new(true);
    let outs: Vec<String> = ids.iter().map(|&id| stream.push(&tok, id).unwrap()).collect();
    assert_eq!(outs, ["a", "", "", "", "🦀", "b"]);
    assert!(!stream.has_pending());
    assert_eq!(stream.finish(), "");
    // bytes that can never start a character are replaced at once; a dangling start at the end
    let mut stream = StreamDecoder::new(true);
    assert_eq!(stream.push(&tok, 0xFF).unwrap(), "\u{FFFD}");
    assert_eq!(stream.push(&tok, 0xF0).unwrap(), "");
    assert_eq!(stream.push(&tok, b'x' as u32).unwrap(), "\u{FFFD}x");
    assert_eq!(stream.push(&tok, 0xE2).unwrap(), "");
    assert!(stream.has_pending());
    assert_eq!(stream.finish(), "\u{FFFD}");
    // specials: skipped or rendered
    let mut stream = StreamDecoder::new(false);
    assert_eq!(stream.push(&tok, 257).unwrap(), "<|im_start|>");
    let mut stream = StreamDecoder::new(true);
    assert_eq!(stream.push(&tok, 257).unwrap(), "");
    assert!(stream.push(&tok, 100_000).is_err());
}

#[test]
fn stream_equals_decode() {
    let tok = Tokenizer::new(&bpe_vocab("qwen2")).unwrap();
    let text = "héllo wörld 🦀🇩🇪 ok";
    let ids = tok.encode(text, false, false).unwrap();
    let mut stream = StreamDecoder::new(true);
    let mut streamed: String = ids.iter().map(|&id| stream.push(&tok, id).unwrap()).collect();
    streamed.push_str(&stream.finish());
    assert_eq!(streamed, text);
    assert_eq!(tok.decode(&ids, true), text);
}

fn err(v: &Vocab) -> String {
    match Tokenizer::new(v) {
        Err(Error::Tokenizer(msg)) => msg,
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(_) => panic!("accepted a bad vocabulary"),
    }
}

#[test]
fn bad_vocabularies_are_errors() {
    let mut v = bpe_vocab("qwen2");
    v.model = "bert".into();
    assert!(err(&v).contains("unsupported tokenizer model 'bert'"), "{}", err(&v));

    let mut v = bpe_vocab("qwen2");
    v.pre = Some("no-such-pre".into());
    assert!(err(&v).contains("unsupported pre-tokenizer 'no-such-pre'"));

    let mut v = bpe_vocab("qwen2");
    v.bos = Some(100_000);
    assert!(err(&v).contains("BOS token id 100000 is out of range"), "{}", err(&v));

    let mut v = bpe_vocab("qwen2");
    v.eot = Some(271);
    assert!(err(&v).contains("out of range"));

    let mut v = bpe_vocab("qwen2");
    v.merges.as_mut().unwrap().push("hello zzz".into());
    assert!(err(&v).contains("\"zzz\", which is not a token"), "{}", err(&v));

    let mut v = bpe_vocab("qwen2");
    v.merges.as_mut().unwrap().push("he o".into());
    assert!(err(&v).contains("makes \"heo\""), "{}", err(&v));

    let mut v = bpe_vocab("qwen2");
    v.merges.as_mut().unwrap().push("hello".into());
    assert!(err(&v).contains("not two tokens"), "{}", err(&v));

    let mut v = bpe_vocab("qwen2");
    v.merges = None;
    assert!(err(&v).contains("needs merges"));

    let mut v = spm_vocab();
    v.scores.as_mut().unwrap().pop();
    assert!(err(&v).contains("scores for"));

    let mut v = spm_vocab();
    v.token_types = Some(vec![1; 3]);
    assert!(err(&v).contains("token types for"));

    let v = Vocab { model: "llama".into(), ..Vocab::default() };
    assert!(err(&v).contains("no tokens"));

    // add_bos without a BOS token fails to encode with add_special, not to build
    let mut v = bpe_vocab("qwen2");
    v.tokens.truncate(11);
    v.token_types.as_mut().unwrap().truncate(11);
    v.merges = Some(vec![]);
    v.bos = None;
    v.eos = None;
    v.add_bos = Some(true);
    let tok = Tokenizer::new(&v).unwrap();
    assert!(tok.encode("a", true, false).is_err());
    assert!(tok.encode("\x01", false, false).is_ok());
}

#[test]
fn bad_ids_are_errors_or_skipped() {
    let tok = Tokenizer::new(&bpe_vocab("qwen2")).unwrap();
    assert!(tok.token_piece(271).is_err());
    assert_eq!(tok.decode(&[263, 9999, 268], true), "hello world");
    assert!(!tok.is_eog(u32::MAX));
    assert!(!tok.is_control(u32::MAX));
    assert_eq!(tok.token_text(u32::MAX), None);
}

#[test]
fn vocab_from_metadata() {
    let tokens = vec!["a".to_string(), "b".to_string(), "a b".to_string()];
    let merges = vec!["a b".to_string()];
    let get = |key: &str| {
        Some(match key {
            "tokenizer.ggml.model" => MetaValue::Str("gpt2"),
            "tokenizer.ggml.pre" => MetaValue::Str("qwen2"),
            "tokenizer.ggml.tokens" => MetaValue::StrArray(&tokens),
            "tokenizer.ggml.merges" => MetaValue::StrArray(&merges),
            "tokenizer.ggml.bos_token_id" => MetaValue::Int(1),
            "tokenizer.ggml.add_bos_token" => MetaValue::Bool(true),
            "tokenizer.chat_template" => MetaValue::Str("{{ bos_token }}"),
            _ => return None,
        })
    };
    let v = Vocab::from_metadata(get).unwrap();
    assert_eq!((v.model.as_str(), v.pre.as_deref(), v.tokens.len()), ("gpt2", Some("qwen2"), 3));
    assert_eq!((v.bos, v.eos, v.add_bos, v.chat_template.as_deref()), (Some(1), None, Some(true), Some("{{ bos_token }}")));

    let toks = vec!["x".to_string()];
    let bad = |key: &str, value| with_key(&toks, key, value);
    let e = bad("tokenizer.ggml.bos_token_id", MetaValue::Str("1")).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.bos_token_id should be an integer, it is a string"), "{e}");
    let e = bad("tokenizer.ggml.eos_token_id", MetaValue::Int(-1)).unwrap_err().to_string();
    assert!(e.contains("is not a token id"), "{e}");
    let e = bad("tokenizer.ggml.scores", MetaValue::StrArray(&[])).unwrap_err().to_string();
    assert!(e.contains("should be an array of f32"), "{e}");
    assert!(bad("tokenizer.ggml.scores", MetaValue::I32Array(&[3])).unwrap().scores == Some(vec![3.0]));
    let e = Vocab::from_metadata(|_| None).unwrap_err().to_string();
    assert!(e.contains("lacks tokenizer.ggml.model"), "{e}");
}

/// A minimal `llama` vocabulary's metadata plus one more key.
fn with_key<'a>(toks: &'a [String], key: &str, value: MetaValue<'a>) -> ingot_model::Result<Vocab> {
    Vocab::from_metadata(|k| match k {
        "tokenizer.ggml.model" => Some(MetaValue::Str("llama")),
        "tokenizer.ggml.tokens" => Some(MetaValue::StrArray(toks)),
        k if k == key => Some(value),
        _ => None,
    })
}

#[test]
fn shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<StreamDecoder>();
    // a vocabulary without a pre-tokenizer name gets llama.cpp's default
    let tok = Tokenizer::new(&Vocab { pre: None, ..bpe_vocab("qwen2") }).unwrap();
    let ids = std::thread::scope(|s| s.spawn(|| tok.encode("hello world", false, false).unwrap()).join().unwrap());
    assert_eq!(ids, [263, 268]);
}
