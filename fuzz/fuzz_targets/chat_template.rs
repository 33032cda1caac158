//! Feeds arbitrary conversations to the chat-template and tokenizer path that `ingot run
//! --chat`, `ingot chat` and `/v1/chat/completions` take: `ChatTemplate::render_marked`
//! then `Rendered::encode`, with the real SmolLM2 tokenizer and chat template (ChatML, whose
//! markup does not depend on the content). The input is split at NUL bytes into messages;
//! each message's first byte picks its role, the rest (UTF-8, lossily) is its content. The
//! first byte of the input sets `parse_special`. Never a panic, and:
//!
//! - the marked rendering's text is exactly the plain rendering's (content comes back
//!   whole, the placeholders never show);
//! - without `parse_special`, the control tokens of the encoding are exactly those of the
//!   same conversation with every content replaced by "x": message content never yields a
//!   control token, and the markup always does;
//! - with `parse_special`, the encoding is the plain rendering encoded with special tokens
//!   parsed (the behaviour before content was kept plain).
//!
//! The model comes from $INGOT_MODELS, else ~/.cache/ingot/models (scripts/fetch_models.sh).

#![no_main]

use ingot_gguf::GgufFile;
use ingot_model::chat::{ChatTemplate, Message};
use ingot_model::tokenizer::{Tokenizer, Vocab};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

struct Fixture {
    tok: Tokenizer,
    template: ChatTemplate,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::var_os("INGOT_MODELS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ingot/models"));
        let path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
        let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e} (run scripts/fetch_models.sh)"));
        let tok = Tokenizer::new(&Vocab::from_gguf(&file).unwrap()).unwrap();
        let template = ChatTemplate::new(file.get_str("tokenizer.chat_template").unwrap()).unwrap();
        Fixture { tok, template }
    })
}

const ROLES: [&str; 3] = ["system", "user", "assistant"];

fn controls(tok: &Tokenizer, ids: &[u32]) -> Vec<u32> {
    ids.iter().copied().filter(|&id| tok.is_control(id)).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let parse_special = flags & 1 == 1;
    let add_generation_prompt = flags & 2 == 2;
    let messages: Vec<Message> = rest
        .split(|&b| b == 0)
        .filter(|m| !m.is_empty())
        .take(16)
        .map(|m| Message::new(ROLES[m[0] as usize % 3], String::from_utf8_lossy(&m[1..]).into_owned()))
        .collect();
    let Fixture { tok, template } = fixture();
    let piece = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
    let (bos, eos) = (piece(tok.bos()), piece(tok.eos()));

    let plain = template.render(&messages, add_generation_prompt, &bos, &eos);
    let marked = template.render_marked(tok, &messages, add_generation_prompt, parse_special);
    let (plain, marked) = match (plain, marked) {
        (Ok(p), Ok(m)) => (p, m),
        (Err(_), Err(_)) => return,
        (p, m) => panic!("one rendering failed: {p:?} / {m:?}"),
    };
    assert_eq!(marked.text, plain, "the marked rendering differs");
    for w in marked.plain.windows(2) {
        assert!(w[0].end <= w[1].start, "plain ranges overlap or are out of order: {:?}", marked.plain);
    }
    assert!(marked.plain.iter().all(|r| r.end <= plain.len() && plain.is_char_boundary(r.start) && plain.is_char_boundary(r.end)));
    let ids = marked.encode(tok).unwrap();
    if parse_special {
        assert_eq!(ids, tok.encode(&plain, false, true).unwrap());
        return;
    }
    let blank: Vec<Message> = messages.iter().map(|m| Message::new(m.role.clone(), "x")).collect();
    let markup = template.encode(tok, &blank, add_generation_prompt, false).unwrap();
    assert_eq!(controls(tok, &ids), controls(tok, &markup), "message content yielded control tokens: {plain:?}");
});
