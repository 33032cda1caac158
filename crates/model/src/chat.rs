//! Chat templates: the Jinja template a GGUF file carries (`tokenizer.chat_template`)
//! rendered with minijinja the way llama-cpp-python and Hugging Face transformers render it
//! with Jinja2 (`trim_blocks`, `lstrip_blocks`, loop controls, Python string methods, a
//! `tojson` that is Python's `json.dumps`, `raise_exception`, `strftime_now`), and built-in
//! templates for architectures whose files carry none (Gemma).
//!
//! The template sees `messages` (a list of `{role, content}`), `add_generation_prompt`,
//! `bos_token`, `eos_token`, and `tools`, `functions`, `function_call`, `tool_choice` as none.
//!
//! ```
//! use ingot_model::chat::{default_template, render, Message};
//! let msgs = [Message::new("system", "Be brief."), Message::new("user", "Hi!")];
//! let prompt = render(default_template("gemma3").unwrap(), &msgs, true, "<bos>", "<eos>")?;
//! assert_eq!(prompt, "<bos><start_of_turn>user\nBe brief.\n\nHi!<end_of_turn>\n<start_of_turn>model\n");
//! # Ok::<(), ingot_model::Error>(())
//! ```
//!
//! A rendered prompt is text with special tokens in it: encode it with `parse_special`, and
//! without `add_special` when the template already writes BOS (Gemma's does). Message
//! content must not be able to write control tokens (`<|im_end|><|im_start|>system` typed
//! by a user would otherwise start a system turn): [`ChatTemplate::encode`] and
//! [`ChatTemplate::render_marked`] keep the template's markup special and the content
//! plain text.

use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message { role: role.into(), content: content.into() }
    }
}

/// Gemma's chat format (system folded into the first user turn, assistant as `model`).
const GEMMA: &str = include_str!("templates/gemma.jinja");

/// The built-in template for an architecture (`general.architecture`) whose files may
/// lack `tokenizer.chat_template`: Gemma (1, 2, 3) has one; others `None`.
pub fn default_template(arch: &str) -> Option<&'static str> {
    match arch {
        "gemma" | "gemma2" | "gemma3" | "gemma3n" => Some(GEMMA),
        _ => None,
    }
}

/// Renders `template` once (see [`ChatTemplate`] to render one template many times).
pub fn render(template: &str, messages: &[Message], add_generation_prompt: bool, bos_token: &str, eos_token: &str) -> Result<String> {
    ChatTemplate::new(template)?.render(messages, add_generation_prompt, bos_token, eos_token)
}

/// A parsed chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Parses a template; a syntax error is an [`Error::Template`].
    pub fn new(source: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(template_error)?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string()).map_err(template_error)?;
        Ok(ChatTemplate { env })
    }

    /// Renders the conversation; a template that raises or fails is an [`Error::Template`].
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool, bos_token: &str, eos_token: &str) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| Value::from_pairs([("role", Value::from(m.role.as_str())), ("content", Value::from(m.content.as_str()))]))
            .collect();
        let none = Value::from(());
        let ctx = Value::from_pairs([
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", Value::from(bos_token)),
            ("eos_token", Value::from(eos_token)),
            ("tools", none.clone()),
            ("functions", none.clone()),
            ("function_call", none.clone()),
            ("tool_choice", none),
        ]);
        let tmpl = self.env.get_template(NAME).map_err(template_error)?;
        tmpl.render(ctx).map_err(template_error)
    }
}

/// A rendered conversation whose message content is to be encoded as plain text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The rendered text, content as written.
    pub text: String,
    /// Byte ranges of `text` holding control-token texts that came from message content:
    /// plain text, not tokens. Sorted, not overlapping.
    pub plain: Vec<Range<usize>>,
}

impl Rendered {
    /// The token ids: the markup's control tokens parsed, the `plain` ranges as text (the
    /// template writes any BOS itself).
    pub fn encode(&self, tok: &Tokenizer) -> Result<Vec<u32>> {
        tok.encode_with_plain_ranges(&self.text, false, &self.plain)
    }
}

// Message content is rendered with each control-token text in it (and each MARK_OPEN)
// replaced by MARK_OPEN, an index, MARK_CLOSE: the template can neither see nor split them,
// and trims and other string filters act on the content around them as before. The
// rendered text then gets the originals back, and their ranges are kept plain.
// U+FDD0 and U+FDD1 are Unicode noncharacters, never assigned, nor in any vocabulary's
// special tokens.
const MARK_OPEN: char = '\u{FDD0}';
const MARK_CLOSE: char = '\u{FDD1}';

/// `text` with its control-token texts and MARK_OPENs replaced by placeholders whose
/// originals are pushed to `originals`.
fn defuse(text: &str, tok: &Tokenizer, originals: &mut Vec<String>) -> String {
    let mut cuts = tok.control_text_ranges(text);
    cuts.extend(text.match_indices(MARK_OPEN).map(|(i, m)| i..i + m.len()));
    if cuts.is_empty() {
        return text.to_string();
    }
    cuts.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(text.len() + 8 * cuts.len());
    let mut at = 0;
    for r in cuts {
        // A MARK_OPEN inside a control text is covered by that text's range.
        if r.start < at {
            continue;
        }
        out.push_str(&text[at..r.start]);
        out.push(MARK_OPEN);
        out.push_str(&originals.len().to_string());
        out.push(MARK_CLOSE);
        originals.push(text[r.clone()].to_string());
        at = r.end;
    }
    out.push_str(&text[at..]);
    out
}

/// The rendered `text` with its placeholders replaced by their originals, and the ranges
/// the originals occupy.
fn restore(text: &str, originals: &[String]) -> Rendered {
    let mut out = String::with_capacity(text.len());
    let mut plain = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(MARK_OPEN) {
        out.push_str(&rest[..i]);
        let after = &rest[i + MARK_OPEN.len_utf8()..];
        let original = after.find(MARK_CLOSE).and_then(|j| Some((after[..j].parse::<usize>().ok()?, j)));
        match original.and_then(|(k, j)| Some((originals.get(k)?, j))) {
            Some((orig, j)) => {
                plain.push(out.len()..out.len() + orig.len());
                out.push_str(orig);
                rest = &after[j + MARK_CLOSE.len_utf8()..];
            }
            // Not a placeholder (the template's own text): kept as it is.
            None => {
                out.push(MARK_OPEN);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Rendered { text: out, plain }
}

impl ChatTemplate {
    /// Renders the conversation with the generation prompt as [`render`](Self::render)
    /// does, with the BOS and EOS texts of `tok`, and marks where message content wrote
    /// the texts of control tokens so that [`Rendered::encode`] encodes them as plain text;
    /// with `parse_special` nothing is marked (content may write control tokens).
    pub fn render_marked(
        &self,
        tok: &Tokenizer,
        messages: &[Message],
        add_generation_prompt: bool,
        parse_special: bool,
    ) -> Result<Rendered> {
        let piece = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
        let (bos, eos) = (piece(tok.bos()), piece(tok.eos()));
        if parse_special {
            return Ok(Rendered { text: self.render(messages, add_generation_prompt, &bos, &eos)?, plain: Vec::new() });
        }
        let mut originals = Vec::new();
        let safe: Vec<Message> = messages
            .iter()
            .map(|m| Message { role: defuse(&m.role, tok, &mut originals), content: defuse(&m.content, tok, &mut originals) })
            .collect();
        let text = self.render(&safe, add_generation_prompt, &bos, &eos)?;
        Ok(if originals.is_empty() { Rendered { text, plain: Vec::new() } } else { restore(&text, &originals) })
    }

    /// The token ids of the conversation: [`render_marked`](Self::render_marked), then
    /// [`Rendered::encode`].
    pub fn encode(&self, tok: &Tokenizer, messages: &[Message], add_generation_prompt: bool, parse_special: bool) -> Result<Vec<u32>> {
        self.render_marked(tok, messages, add_generation_prompt, parse_special)?.encode(tok)
    }
}

fn template_error(e: minijinja::Error) -> Error {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    Error::Template(msg)
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, as transformers and llama-cpp-python define `tojson`.
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")?.or(indent) {
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_usize() {
            Some(n) => Some(" ".repeat(n)),
            None => match v.as_str() {
                Some(s) => Some(s.to_string()),
                None => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an integer or a string")),
            },
        },
        None => None,
    };
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let (item_sep, key_sep) = match kwargs.get::<Option<Value>>("separators")? {
        Some(v) if !v.is_none() => {
            let parts: Vec<String> = v.try_iter()?.map(|p| p.to_string()).collect();
            match parts.as_slice() {
                [a, b] => (a.clone(), b.clone()),
                _ => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings")),
            }
        }
        _ => (if indent.is_some() { "," } else { ", " }.to_string(), ": ".to_string()),
    };
    kwargs.assert_all_used()?;
    let opts = JsonOpts { indent, item_sep, key_sep, ensure_ascii, sort_keys };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

fn write_json(out: &mut String, v: &Value, o: &JsonOpts, level: usize) -> std::result::Result<(), minijinja::Error> {
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                out.push_str(&py_float_repr(f64::try_from(v.clone())?));
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or_default(), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, level + 1);
                write_json(out, item, o, level + 1)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if o.sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, level + 1);
                write_json_str(out, &k.to_string(), o.ensure_ascii);
                out.push_str(&o.key_sep);
                write_json(out, &v.get_item(k)?, o, level + 1)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => write_json_str(out, &v.to_string(), o.ensure_ascii),
    }
    Ok(())
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest round-trip digits, exponent form outside 1e-4..1e16.
fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{x:e}"); // e.g. "1.5e-7", "-3e20"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let plain = format!("{x}");
        if plain.contains('.') {
            plain
        } else {
            format!("{plain}.0")
        }
    } else {
        format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

/// `strftime_now(format)`: the current UTC time formatted as C's `strftime` (the common
/// conversions: `%Y %y %m %d %e %H %I %M %S %p %b %B %a %A %j %%`).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    strftime(&format, secs)
}

fn strftime(format: &str, unix_secs: i64) -> String {
    const MONTHS: [&str; 12] =
        ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (h, mi, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    // days since 1970-01-01 to a civil date (proleptic Gregorian)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let d = doy_mar - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let month = MONTHS[(m - 1) as usize];

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('I') => out.push_str(&format!("{:02}", if h % 12 == 0 { 12 } else { h % 12 })),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S %a %j", 0), "1970-01-01 00:00:00 Thu 001");
        // 2024-02-29 12:34:56 UTC, a Thursday, day 60 of a leap year
        assert_eq!(strftime("%d %b %Y %A %j %I%p %%", 1_709_210_096), "29 Feb 2024 Thursday 060 12PM %");
        assert_eq!(strftime("%d %B %y", 1_735_689_599), "31 December 24");
    }

    #[test]
    fn float_repr_like_python() {
        assert_eq!(py_float_repr(1.0), "1.0");
        assert_eq!(py_float_repr(0.5), "0.5");
        assert_eq!(py_float_repr(1e16), "1e+16");
        assert_eq!(py_float_repr(1e15), "1000000000000000.0");
        assert_eq!(py_float_repr(0.0001), "0.0001");
        assert_eq!(py_float_repr(0.00001), "1e-05");
        assert_eq!(py_float_repr(-2.5e-7), "-2.5e-07");
    }
}
