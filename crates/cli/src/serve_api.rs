//! The OpenAI-compatible request and response shapes of `ingot serve`: request bodies read
//! field by field (so every wrong type or out-of-range value is a 400 that names the
//! field), the engine's [`SamplingParams`] built from them, and the JSON of responses,
//! stream chunks and errors.
//!
//! Unknown fields are ignored, as OpenAI clients send extras. Fields of OpenAI's API that
//! Ingot does not implement are type-checked and ignored when they ask for nothing
//! (`echo: false`, `n: 1`, `tools: []`) and refused with a 400 when they ask for something
//! (`echo: true`, `n: 2`, tools), never silently dropped.
//!
//! Sampling fields a request leaves out take the server's defaults (the model's
//! recommended settings, else llama.cpp's: sampling_defaults.rs), passed in as a
//! [`SamplingParams`]; the fields given have OpenAI's meaning.

use axum::http::StatusCode;
use ingot_engine::{FinishReason, SamplingParams, MAX_TOP_LOGPROBS};
use ingot_model::chat::Message;
use serde_json::{json, Map, Value};

/// An error response in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, or `server_error` for a 5xx.
    pub kind: &'static str,
    /// The request field at fault, as `messages[1].content`.
    pub param: Option<String>,
    /// OpenAI's machine-readable `code` where it has one (`context_length_exceeded`,
    /// `unsupported_parameter`), else none.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 `invalid_request_error` about `param` (none: the request as a whole).
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    /// A 400 for a field that asks for something Ingot does not implement.
    pub fn unsupported(param: &str, what: &str) -> ApiError {
        ApiError {
            code: Some("unsupported_parameter"),
            ..ApiError::invalid(Some(param), format!("{what} is not supported by this server"))
        }
    }

    /// Any other status with an `invalid_request_error` (404, 405, 413).
    pub fn status(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, ..ApiError::invalid(None, message) }
    }

    /// A 5xx `server_error`.
    pub fn server(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind: "server_error", param: None, code: None }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The body as a JSON object.
pub fn parse_body(bytes: &[u8]) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(other) => Err(ApiError::invalid(None, format!("the request body must be a JSON object, got {}", kind_of(&other)))),
        Err(e) => Err(ApiError::invalid(None, format!("the request body is not valid JSON: {e}"))),
    }
}

/// A JSON value's kind, with its article, for messages.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(param: &str, want: &str, got: &Value) -> ApiError {
    ApiError::invalid(Some(param), format!("'{param}' must be {want}, got {}", kind_of(got)))
}

/// A JSON number as an integer: integers, and floats with no fractional part (as OpenAI's
/// validation accepts `16.0`).
fn as_integer(v: &Value) -> Option<i128> {
    match v {
        Value::Number(n) => n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from)).or_else(|| {
            let f = n.as_f64()?;
            (f.fract() == 0.0 && f.abs() < 1e30).then_some(f as i128)
        }),
        _ => None,
    }
}

/// Typed access to the fields of a request object; `null` counts as absent, as in OpenAI's API.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn number(&self, name: &str) -> Result<Option<f64>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(v) => Err(wrong_type(name, "a number", v)),
        }
    }

    /// A number in `[lo, hi]` (`lo_open`: `(lo, hi]`).
    fn number_in(&self, name: &str, lo: f64, lo_open: bool, hi: f64) -> Result<Option<f64>> {
        let Some(x) = self.number(name)? else { return Ok(None) };
        let ok = x <= hi && if lo_open { x > lo } else { x >= lo };
        if !ok {
            let (open, hi) = (if lo_open { "(" } else { "[" }, if hi.is_finite() { hi.to_string() } else { "inf".into() });
            return Err(ApiError::invalid(Some(name), format!("'{name}' must be in {open}{lo}, {hi}], got {x}")));
        }
        Ok(Some(x))
    }

    fn integer(&self, name: &str) -> Result<Option<i128>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => as_integer(v).map(Some).ok_or_else(|| wrong_type(name, "an integer", v)),
        }
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(wrong_type(name, "a boolean", v)),
        }
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(wrong_type(name, "a string", v)),
        }
    }

    fn array(&self, name: &str) -> Result<Option<&'a Vec<Value>>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(wrong_type(name, "an array", v)),
        }
    }

    fn object(&self, name: &str) -> Result<Option<&'a Map<String, Value>>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(v) => Err(wrong_type(name, "an object", v)),
        }
    }
}

/// How many tokens to generate, as asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxTokens {
    /// `max_tokens` given: prompt + this must fit the context.
    Given(usize),
    /// Not given: this many, or fewer where the context has less room.
    UpTo(usize),
    /// Not given: as many as the context has room for.
    Rest,
}

/// What both endpoints take besides the prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct GenOptions {
    /// The engine's parameters; `max_tokens` is set by [`GenOptions::fit`] once the prompt's
    /// length is known.
    pub params: SamplingParams,
    pub max_tokens: MaxTokens,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
}

impl GenOptions {
    /// Sets `params.max_tokens` for a prompt of `prompt_len` tokens in a context of
    /// `context` tokens; a 400 when they do not fit. `max_tokens: 0` leaves it 0: the
    /// caller answers without generating.
    pub fn fit(&mut self, prompt_len: usize, context: usize) -> Result<()> {
        if prompt_len == 0 {
            return Err(ApiError::invalid(Some("prompt"), "the prompt encodes to no tokens"));
        }
        let too_long = |asked: usize, what: String| ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(
                Some(if prompt_len >= context { "prompt" } else { "max_tokens" }),
                format!("the context is {context} tokens per request, but {asked} were requested ({what})"),
            )
        };
        let room = context.saturating_sub(prompt_len);
        self.params.max_tokens = match self.max_tokens {
            MaxTokens::Given(m) if prompt_len.saturating_add(m) > context => {
                return Err(too_long(prompt_len.saturating_add(m), format!("{prompt_len} in the prompt + {m} max_tokens")))
            }
            MaxTokens::Given(m) => m,
            _ if room == 0 => return Err(too_long(prompt_len + 1, format!("{prompt_len} in the prompt + at least 1 to generate"))),
            MaxTokens::UpTo(m) => m.min(room),
            MaxTokens::Rest => room,
        };
        Ok(())
    }
}

/// Refuses, without tokenizing it, a prompt text of `bytes` bytes that cannot fit a context
/// of `context` tokens when one token stands for at most `max_token_bytes` bytes of text: it
/// encodes to at least `bytes / max_token_bytes` tokens. Tokenizing is the costly step (a
/// few MB of text take seconds), so a body of a few MB is refused in the time it takes to
/// parse it.
pub fn check_prompt_bytes(param: &str, bytes: usize, context: usize, max_token_bytes: usize) -> Result<()> {
    let most = context.saturating_mul(max_token_bytes.max(1));
    if bytes > most {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(
                Some(param),
                format!(
                    "the context is {context} tokens per request, but the prompt is {bytes} bytes of text, more than {context} \
                     tokens can hold ({most} bytes: no token is longer than {} bytes)",
                    max_token_bytes.max(1)
                ),
            )
        });
    }
    Ok(())
}

/// Reads the generation fields both endpoints share. `max_names` are the names of the
/// token budget, first match wins (chat: `max_completion_tokens`, then `max_tokens`).
/// Temperature, top-k, top-p, min-p and the repetition penalty left out are `defaults`'.
fn gen_options(f: &Fields, max_names: &[&str], default_max: MaxTokens, vocab: usize, defaults: &SamplingParams) -> Result<GenOptions> {
    if let Some(n) = f.integer("n")? {
        if n != 1 {
            let msg = if n < 1 {
                format!("'n' must be at least 1, got {n}")
            } else {
                format!("'n' = {n}: only one choice per request (n = 1) is supported")
            };
            return Err(ApiError { code: (n > 1).then_some("unsupported_parameter"), ..ApiError::invalid(Some("n"), msg) });
        }
    }
    let mut max_tokens = default_max;
    for &name in max_names {
        if let Some(m) = f.integer(name)? {
            // 0 asks for nothing to be generated: an empty reply that ends with "length", as
            // OpenAI's API and llama-server answer it (and as `ingot run --max-tokens 0`).
            if m < 0 {
                return Err(ApiError::invalid(Some(name), format!("'{name}' must be at least 0, got {m}")));
            }
            max_tokens = MaxTokens::Given(usize::try_from(m).unwrap_or(usize::MAX));
            break;
        }
    }
    let mut p = SamplingParams {
        temperature: defaults.temperature,
        top_k: defaults.top_k,
        top_p: defaults.top_p,
        min_p: defaults.min_p,
        repetition_penalty: defaults.repetition_penalty,
        ..SamplingParams::default()
    };
    if let Some(t) = f.number_in("temperature", 0.0, false, f64::INFINITY)? {
        p.temperature = t as f32;
    }
    if let Some(x) = f.number_in("top_p", 0.0, true, 1.0)? {
        p.top_p = x as f32;
    }
    if let Some(x) = f.number_in("min_p", 0.0, false, 1.0)? {
        p.min_p = x as f32;
    }
    if let Some(k) = f.integer("top_k")? {
        // -1 (vLLM) and 0 (llama-server) both turn it off.
        if k < -1 {
            return Err(ApiError::invalid(Some("top_k"), format!("'top_k' must be -1 or 0 (off) or at least 1, got {k}")));
        }
        p.top_k = usize::try_from(k.max(0)).unwrap_or(usize::MAX);
    }
    if let Some(x) = f.number_in("presence_penalty", -2.0, false, 2.0)? {
        p.presence_penalty = x as f32;
    }
    if let Some(x) = f.number_in("frequency_penalty", -2.0, false, 2.0)? {
        p.frequency_penalty = x as f32;
    }
    let rep = f.number_in("repetition_penalty", 0.0, true, f64::INFINITY)?;
    let rep_llama = f.number_in("repeat_penalty", 0.0, true, f64::INFINITY)?;
    if let (Some(a), Some(b)) = (rep, rep_llama) {
        if a != b {
            return Err(ApiError::invalid(
                Some("repeat_penalty"),
                format!("'repetition_penalty' ({a}) and 'repeat_penalty' ({b}) are the same setting; give one"),
            ));
        }
    }
    if let Some(x) = rep.or(rep_llama) {
        p.repetition_penalty = x as f32;
    }
    // Without a seed every request draws a fresh one, as OpenAI's sampling is not reproducible
    // unless asked; negative seeds (int64) are taken modulo 2^64.
    p.seed = match f.integer("seed")? {
        Some(s) if s < i64::MIN as i128 || s > u64::MAX as i128 => {
            return Err(ApiError::invalid(Some("seed"), format!("'seed' must fit in 64 bits, got {s}")))
        }
        Some(s) => s as u64,
        None => rand::random(),
    };
    p.stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| v.as_str().map(str::to_string).ok_or_else(|| wrong_type(&format!("stop[{i}]"), "a string", v)))
            .collect::<Result<_>>()?,
        Some(v) => return Err(wrong_type("stop", "a string or an array of strings", v)),
    };
    if let Some(i) = p.stop.iter().position(String::is_empty) {
        return Err(ApiError::invalid(Some("stop"), format!("'stop[{i}]' is empty")));
    }
    if let Some(bias) = f.object("logit_bias")? {
        for (k, v) in bias {
            let param = format!("logit_bias.{k}");
            let id: u32 =
                k.parse().map_err(|_| ApiError::invalid(Some(&param), format!("'logit_bias' keys must be token ids, got {k:?}")))?;
            if id as usize >= vocab {
                return Err(ApiError::invalid(Some(&param), format!("token {id} is outside the vocabulary of {vocab}")));
            }
            let b = v.as_f64().ok_or_else(|| wrong_type(&param, "a number", v))?;
            if !(-100.0..=100.0).contains(&b) {
                return Err(ApiError::invalid(Some(&param), format!("'logit_bias' values must be in [-100, 100], got {b}")));
            }
            p.logit_bias.push((id, b as f32));
        }
    }
    let stream = f.boolean("stream")?.unwrap_or(false);
    let mut include_usage = false;
    if let Some(o) = f.object("stream_options")? {
        if !stream {
            return Err(ApiError::invalid(Some("stream_options"), "'stream_options' is only allowed when 'stream' is true"));
        }
        include_usage = Fields(o)
            .boolean("include_usage")
            .map_err(|e| ApiError { param: Some("stream_options.include_usage".into()), ..e })?
            .unwrap_or(false);
    }
    for name in ["model", "user", "service_tier"] {
        f.string(name)?;
    }
    f.object("metadata")?;
    f.boolean("store")?;
    // The remaining checks of the engine (none expected to fire after the ones above).
    if let Err(e) = p.validate_for_vocab(vocab) {
        let param = match &e {
            ingot_engine::Error::Param { param, .. } => Some(*param),
            _ => None,
        };
        return Err(ApiError::invalid(param, e.to_string()));
    }
    Ok(GenOptions { params: p, max_tokens, stream, include_usage })
}

/// The prompt of a completion request.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

/// A checked `POST /v1/completions` body.
#[derive(Clone, Debug, PartialEq)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub opts: GenOptions,
    /// `parse_special`: the texts of control tokens in the prompt are those tokens (default
    /// false: plain text).
    pub parse_special: bool,
}

/// Token ids from a JSON array of integers.
fn token_ids(a: &[Value], param: &str, vocab: usize) -> Result<Vec<u32>> {
    a.iter()
        .enumerate()
        .map(|(i, v)| match as_integer(v) {
            Some(id) if id >= 0 && (id as u128) < vocab as u128 => Ok(id as u32),
            Some(id) => Err(ApiError::invalid(Some(&format!("{param}[{i}]")), format!("token {id} is outside the vocabulary of {vocab}"))),
            None => Err(wrong_type(&format!("{param}[{i}]"), "a token id (integer)", v)),
        })
        .collect()
}

/// The most inputs one `/v1/embeddings` request may hold (OpenAI's limit).
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

/// A checked `POST /v1/embeddings` body.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingRequest {
    /// The texts (or token ids) to embed, in order.
    pub inputs: Vec<Prompt>,
    /// `encoding_format: "base64"`: each vector as the base64 of its little-endian f32
    /// bytes, as OpenAI sends it; else an array of numbers.
    pub base64: bool,
}

/// Reads an embeddings request: `input` is a string, an array of strings, an array of token
/// ids or an array of such arrays (at most [`MAX_EMBEDDING_INPUTS`], none empty);
/// `encoding_format` `float` (the default) or `base64`. `dimensions` (shortened vectors)
/// is refused: the vectors have the model's width.
pub fn embedding_request(body: &Map<String, Value>, vocab: usize) -> Result<EmbeddingRequest> {
    let f = Fields(body);
    let empty = |param: &str| ApiError::invalid(Some(param), format!("'{param}' is empty: there is nothing to embed"));
    let inputs = match f.get("input") {
        None => return Err(ApiError::invalid(Some("input"), "'input' is required")),
        Some(Value::String(s)) => vec![Prompt::Text(s.clone())],
        Some(Value::Array(a)) => match a.first() {
            None => return Err(empty("input")),
            Some(Value::String(_)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(Prompt::Text(s.clone())),
                    v => Err(wrong_type(&format!("input[{i}]"), "a string (as input[0] is)", v)),
                })
                .collect::<Result<_>>()?,
            Some(Value::Array(_)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Array(ids) => Ok(Prompt::Tokens(token_ids(ids, &format!("input[{i}]"), vocab)?)),
                    v => Err(wrong_type(&format!("input[{i}]"), "an array of token ids (as input[0] is)", v)),
                })
                .collect::<Result<_>>()?,
            Some(_) => vec![Prompt::Tokens(token_ids(a, "input", vocab)?)],
        },
        Some(v) => return Err(wrong_type("input", "a string, an array of strings, or token ids", v)),
    };
    if inputs.len() > MAX_EMBEDDING_INPUTS {
        return Err(ApiError::invalid(
            Some("input"),
            format!("'input' holds {} inputs, more than the {MAX_EMBEDDING_INPUTS} one request may hold", inputs.len()),
        ));
    }
    for (i, p) in inputs.iter().enumerate() {
        let is_empty = match p {
            Prompt::Text(s) => s.is_empty(),
            Prompt::Tokens(t) => t.is_empty(),
        };
        if is_empty {
            return Err(empty(&format!("input[{i}]")));
        }
    }
    let base64 = match f.string("encoding_format")? {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                Some("encoding_format"),
                format!("'encoding_format' must be \"float\" or \"base64\", got {other:?}"),
            ))
        }
    };
    if f.get("dimensions").is_some() {
        return Err(ApiError::unsupported("dimensions", "'dimensions' (shortened embeddings)"));
    }
    Ok(EmbeddingRequest { inputs, base64 })
}

/// The body of an embeddings response: one `embedding` object per vector, in order, and
/// the usage (`prompt_tokens` = `total_tokens`: the tokens run through the model).
pub fn embedding_response(model: &str, vectors: &[Vec<f32>], base64: bool, tokens: usize) -> Value {
    use base64::Engine as _;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
}

/// `logprobs` of `/v1/completions` / `top_logprobs` of chat: how many alternatives, in
/// `[0, MAX_TOP_LOGPROBS]`.
fn top_count(f: &Fields, name: &str, note: &str) -> Result<Option<usize>> {
    match f.integer(name)? {
        None => Ok(None),
        Some(n) if (0..=MAX_TOP_LOGPROBS as i128).contains(&n) => Ok(Some(n as usize)),
        Some(n) => Err(ApiError::invalid(Some(name), format!("'{name}' must be in [0, {MAX_TOP_LOGPROBS}]{note}, got {n}"))),
    }
}

/// Reads a completion request: `prompt` is a string, an array of one string, an array of
/// token ids or an array of one such array. `defaults`: the sampling settings of fields
/// left out ([`gen_options`]).
pub fn completion_request(body: &Map<String, Value>, vocab: usize, defaults: &SamplingParams) -> Result<CompletionRequest> {
    let f = Fields(body);
    let one_prompt = |n: usize| ApiError::unsupported("prompt", &format!("an array of {n} prompts (one prompt per request)"));
    let prompt = match f.get("prompt") {
        None => return Err(ApiError::invalid(Some("prompt"), "'prompt' is required")),
        Some(Value::String(s)) => Prompt::Text(s.clone()),
        Some(Value::Array(a)) => match a.as_slice() {
            [] => return Err(ApiError::invalid(Some("prompt"), "'prompt' is empty")),
            [Value::String(s)] => Prompt::Text(s.clone()),
            [Value::Array(ids)] => Prompt::Tokens(token_ids(ids, "prompt[0]", vocab)?),
            [Value::String(_) | Value::Array(_), ..] => return Err(one_prompt(a.len())),
            ids => Prompt::Tokens(token_ids(ids, "prompt", vocab)?),
        },
        Some(v) => return Err(wrong_type("prompt", "a string, an array of one string or an array of token ids", v)),
    };
    match &prompt {
        Prompt::Text(s) if s.is_empty() => return Err(ApiError::invalid(Some("prompt"), "'prompt' is empty")),
        Prompt::Tokens(t) if t.is_empty() => return Err(ApiError::invalid(Some("prompt"), "'prompt' is empty")),
        _ => {}
    }
    if f.boolean("echo")? == Some(true) {
        return Err(ApiError::unsupported("echo", "'echo'"));
    }
    // The legacy `logprobs: N`: the chosen token's log-probability and the N most likely
    // (OpenAI takes at most 5; vLLM, and this server, at most 20).
    let logprobs = top_count(&f, "logprobs", " (OpenAI's limit is 5; this server takes up to 20, as vLLM)")?;
    if f.integer("best_of")?.is_some_and(|b| b != 1) {
        return Err(ApiError::unsupported("best_of", "'best_of' other than 1"));
    }
    if f.string("suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported("suffix", "'suffix'"));
    }
    // OpenAI's default for completions is 16 tokens.
    let mut opts = gen_options(&f, &["max_tokens"], MaxTokens::UpTo(16), vocab, defaults)?;
    opts.params.logprobs = logprobs;
    let parse_special = f.boolean("parse_special")?.unwrap_or(false);
    Ok(CompletionRequest { prompt, opts, parse_special })
}

/// A checked `POST /v1/chat/completions` body.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub opts: GenOptions,
    /// `parse_special`: the texts of control tokens in message content are those tokens
    /// (default false: content is plain text, only the template's markup is special).
    pub parse_special: bool,
}

/// One message's text: a string, or the text parts of an array joined with newlines (as vLLM
/// joins them).
fn message_content(v: Option<&Value>, param: &str, role: &str) -> Result<String> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) if role == "assistant" => Ok(String::new()),
        None | Some(Value::Null) => Err(ApiError::invalid(Some(param), format!("'{param}' is required"))),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let pp = format!("{param}[{j}]");
                let Value::Object(o) = part else { return Err(wrong_type(&pp, "an object", part)) };
                let pf = Fields(o);
                match pf.string("type").map_err(|e| ApiError { param: Some(format!("{pp}.type")), ..e })? {
                    Some("text") => match pf.string("text").map_err(|e| ApiError { param: Some(format!("{pp}.text")), ..e })? {
                        Some(t) => texts.push(t),
                        None => return Err(ApiError::invalid(Some(&format!("{pp}.text")), format!("'{pp}.text' is required"))),
                    },
                    Some(other) => {
                        return Err(ApiError::unsupported(&format!("{pp}.type"), &format!("content of type {other:?} (only text)")))
                    }
                    None => return Err(ApiError::invalid(Some(&format!("{pp}.type")), format!("'{pp}.type' is required"))),
                }
            }
            Ok(texts.join("\n"))
        }
        Some(v) => Err(wrong_type(param, "a string or an array of content parts", v)),
    }
}

/// Reads a chat request: `messages` of roles system (or developer), user and assistant.
/// `defaults`: the sampling settings of fields left out ([`gen_options`]).
pub fn chat_request(body: &Map<String, Value>, vocab: usize, defaults: &SamplingParams) -> Result<ChatRequest> {
    let f = Fields(body);
    let Some(list) = f.array("messages")? else { return Err(ApiError::invalid(Some("messages"), "'messages' is required")) };
    if list.is_empty() {
        return Err(ApiError::invalid(Some("messages"), "'messages' is empty"));
    }
    let mut messages = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Value::Object(o) = m else { return Err(wrong_type(&param, "an object", m)) };
        let mf = Fields(o);
        let role = match mf.string("role").map_err(|e| ApiError { param: Some(format!("{param}.role")), ..e })? {
            Some(r @ ("system" | "user" | "assistant")) => r,
            // OpenAI's newer name for system.
            Some("developer") => "system",
            Some(r @ ("tool" | "function")) => return Err(ApiError::unsupported(&format!("{param}.role"), &format!("the role {r:?}"))),
            Some(r) => {
                return Err(ApiError::invalid(
                    Some(&format!("{param}.role")),
                    format!("'{param}.role' must be system, developer, user or assistant, got {r:?}"),
                ))
            }
            None => return Err(ApiError::invalid(Some(&format!("{param}.role")), format!("'{param}.role' is required"))),
        };
        if mf.array("tool_calls").map_err(|e| ApiError { param: Some(format!("{param}.tool_calls")), ..e })?.is_some_and(|t| !t.is_empty())
        {
            return Err(ApiError::unsupported(&format!("{param}.tool_calls"), "tool calls"));
        }
        mf.string("name").map_err(|e| ApiError { param: Some(format!("{param}.name")), ..e })?;
        let content = message_content(mf.get("content"), &format!("{param}.content"), role)?;
        messages.push(Message::new(role, content));
    }
    // `logprobs: true`: each token's log-probability; `top_logprobs: N` (only with it, as
    // OpenAI's API checks) adds the N most likely tokens of each step.
    let logprobs = f.boolean("logprobs")?.unwrap_or(false);
    let top = top_count(&f, "top_logprobs", "")?;
    if top.is_some() && !logprobs {
        return Err(ApiError::invalid(Some("top_logprobs"), "'top_logprobs' requires 'logprobs' to be true"));
    }
    for name in ["tools", "functions"] {
        if f.array(name)?.is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::unsupported(name, &format!("'{name}'")));
        }
    }
    f.boolean("parallel_tool_calls")?;
    match f.get("tool_choice") {
        None | Some(Value::String(_)) | Some(Value::Object(_)) => {}
        Some(v) => return Err(wrong_type("tool_choice", "a string or an object", v)),
    }
    if let Some(rf) = f.object("response_format")? {
        match Fields(rf).string("type").map_err(|e| ApiError { param: Some("response_format.type".into()), ..e })? {
            None | Some("text") => {}
            Some(t) => return Err(ApiError::unsupported("response_format", &format!("response_format {t:?} (only \"text\")"))),
        }
    }
    // Like vLLM, without a limit the reply may use the rest of the context.
    let mut opts = gen_options(&f, &["max_completion_tokens", "max_tokens"], MaxTokens::Rest, vocab, defaults)?;
    opts.params.logprobs = logprobs.then(|| top.unwrap_or(0));
    let parse_special = f.boolean("parse_special")?.unwrap_or(false);
    Ok(ChatRequest { messages, opts, parse_special })
}

/// OpenAI's `finish_reason`: `stop` for an end-of-generation token or a stop string,
/// `length` for the token budget; a cancelled request has none (it reports an error).
pub fn finish_reason(f: FinishReason) -> Option<&'static str> {
    match f {
        FinishReason::Eog | FinishReason::Stop => Some("stop"),
        FinishReason::MaxTokens => Some("length"),
        FinishReason::Cancelled => None,
    }
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from KV pages shared with earlier requests.
    pub cached_tokens: usize,
}

impl Usage {
    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

/// One generated token's log-probability, for a response: the token's bytes, and the most
/// likely tokens of its step as (bytes, log-probability), largest first (the engine's
/// [`ingot_engine::TokenLogprob`] with ids turned into bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<(Vec<u8>, f32)>,
}

/// A token's bytes as the `token` string of a response (bytes that are not UTF-8 become
/// U+FFFD; `bytes` has them exactly).
fn token_str(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Chat's `logprobs`: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token",
/// "logprob", "bytes"}, ...]}, ...]}`.
fn chat_logprobs(entries: &[TokenLogprobs]) -> Value {
    let content: Vec<Value> = entries
        .iter()
        .map(|e| {
            let top: Vec<Value> = e.top.iter().map(|(b, lp)| json!({"token": token_str(b), "logprob": lp, "bytes": b})).collect();
            json!({"token": token_str(&e.bytes), "logprob": e.logprob, "bytes": e.bytes, "top_logprobs": top})
        })
        .collect();
    json!({"content": content})
}

/// The legacy `logprobs` of `/v1/completions`: `tokens`, `token_logprobs`, `top_logprobs`
/// (per token an object token → log-probability of the most likely tokens, and the chosen
/// one where it is not among them, as OpenAI's) and `text_offset` (where each token starts
/// in the completion's text, in characters, as vLLM counts them). `offset` is the text's
/// length in characters before these tokens; it is advanced past them.
fn completion_logprobs(entries: &[TokenLogprobs], offset: &mut usize) -> Value {
    let (mut tokens, mut lps, mut tops, mut offsets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for e in entries {
        let token = token_str(&e.bytes);
        let mut top = Map::new();
        for (b, lp) in &e.top {
            top.entry(token_str(b)).or_insert(json!(lp));
        }
        top.entry(token.clone()).or_insert(json!(e.logprob));
        offsets.push(*offset);
        // Characters start at every byte that is not a UTF-8 continuation byte.
        *offset += e.bytes.iter().filter(|&&b| b & 0xC0 != 0x80).count();
        tokens.push(token);
        lps.push(e.logprob);
        tops.push(Value::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

/// Which endpoint a response belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// What every response and chunk of one request carries.
#[derive(Clone, Debug)]
pub struct ResponseMeta {
    pub endpoint: Endpoint,
    /// `cmpl-…` or `chatcmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
}

impl ResponseMeta {
    /// A fresh id and the current time.
    pub fn new(endpoint: Endpoint, model: &str) -> ResponseMeta {
        let prefix = match endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::Chat => "chatcmpl",
        };
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        ResponseMeta {
            endpoint,
            id: format!("{prefix}-{:016x}{:08x}", rand::random::<u64>(), rand::random::<u32>()),
            created,
            model: model.to_string(),
        }
    }

    fn head(&self, object: &str, choices: Value) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), self.id.clone().into());
        m.insert("object".into(), object.into());
        m.insert("created".into(), self.created.into());
        m.insert("model".into(), self.model.clone().into());
        m.insert("choices".into(), choices);
        m
    }

    /// A choice's `logprobs` for `entries`, in the endpoint's format (`null` for `None`: the
    /// request did not ask). `offset`: see [`completion_logprobs`].
    pub fn logprobs(&self, entries: Option<&[TokenLogprobs]>, offset: &mut usize) -> Value {
        match (entries, self.endpoint) {
            (None, _) => Value::Null,
            (Some(e), Endpoint::Chat) => chat_logprobs(e),
            (Some(e), Endpoint::Completions) => completion_logprobs(e, offset),
        }
    }

    /// The whole response of a non-streamed request; `logprobs` as [`ResponseMeta::logprobs`] gives it.
    pub fn response(&self, text: &str, finish: &str, usage: &Usage, logprobs: Value) -> Value {
        let (object, choice) = match self.endpoint {
            Endpoint::Completions => ("text_completion", json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish})),
            Endpoint::Chat => (
                "chat.completion",
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs, "finish_reason": finish}),
            ),
        };
        let mut m = self.head(object, json!([choice]));
        m.insert("usage".into(), usage.json());
        Value::Object(m)
    }

    fn chunk_object(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Completions => "text_completion",
            Endpoint::Chat => "chat.completion.chunk",
        }
    }

    /// A stream chunk: text (chat: `role` marks the first chunk), or the end (`finish`);
    /// `logprobs` those of the chunk's tokens ([`ResponseMeta::logprobs`]), or null. With
    /// `include_usage` every chunk carries `"usage": null`, as OpenAI's do.
    pub fn chunk(&self, text: &str, first: bool, finish: Option<&str>, include_usage: bool, logprobs: Value) -> Value {
        let choice = match self.endpoint {
            Endpoint::Completions => json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}),
            Endpoint::Chat => {
                let delta = match (first, finish) {
                    (true, _) => json!({"role": "assistant", "content": text}),
                    (false, Some(_)) if text.is_empty() => json!({}),
                    _ => json!({"content": text}),
                };
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
        };
        let mut m = self.head(self.chunk_object(), json!([choice]));
        if include_usage {
            m.insert("usage".into(), Value::Null);
        }
        Value::Object(m)
    }

    /// The last chunk of a stream with `include_usage`: no choices, the usage.
    pub fn usage_chunk(&self, usage: &Usage) -> Value {
        let mut m = self.head(self.chunk_object(), json!([]));
        m.insert("usage".into(), usage.json());
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOCAB: usize = 1000;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(o) => o,
            _ => panic!("not an object"),
        }
    }

    /// The server's defaults in these tests: greedy (what a request gets for fields it
    /// leaves out is checked in `omitted_fields_take_the_server_defaults`).
    fn greedy() -> SamplingParams {
        SamplingParams::default()
    }

    fn completion(v: Value) -> Result<CompletionRequest> {
        completion_request(&body(v), VOCAB, &greedy())
    }

    fn chat(v: Value) -> Result<ChatRequest> {
        chat_request(&body(v), VOCAB, &greedy())
    }

    #[test]
    fn malformed_and_non_object_bodies_are_400() {
        for (b, want) in [(&b"{\"prompt\": "[..], "not valid JSON"), (b"", "not valid JSON"), (b"[1, 2]", "JSON object, got an array")] {
            let e = parse_body(b).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(want), "{}", e.message);
        }
        assert!(parse_body(b"{\"a\": 1}").is_ok());
    }

    #[test]
    fn completion_fields_map_to_sampling_params() {
        let r = completion(json!({
            "prompt": "Hi", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
            "stop": ["\n", "END"], "seed": 42, "presence_penalty": 0.5, "frequency_penalty": -0.5,
            "repeat_penalty": 1.1, "logit_bias": {"5": -100, "7": 2.5}, "stream": true,
            "stream_options": {"include_usage": true}, "n": 1, "echo": false, "user": "x", "some_extra": [1, {"b": 2}]
        }))
        .unwrap();
        assert_eq!(r.prompt, Prompt::Text("Hi".into()));
        let p = &r.opts.params;
        assert_eq!((p.temperature, p.top_p, p.top_k, p.min_p), (0.5, 0.9, 40, 0.05));
        assert_eq!((p.presence_penalty, p.frequency_penalty, p.repetition_penalty, p.seed), (0.5, -0.5, 1.1, 42));
        assert_eq!(p.stop, vec!["\n".to_string(), "END".to_string()]);
        let mut bias = p.logit_bias.clone();
        bias.sort_by_key(|b| b.0);
        assert_eq!(bias, vec![(5, -100.0), (7, 2.5)]);
        assert_eq!(r.opts.max_tokens, MaxTokens::Given(7));
        assert!(r.opts.stream && r.opts.include_usage);
        // Defaults: OpenAI's 16 tokens for completions, greedy nothing else.
        let d = completion(json!({"prompt": ["Hi"], "stop": "x", "top_k": -1, "seed": -1, "model": "whatever"})).unwrap();
        assert_eq!(d.opts.max_tokens, MaxTokens::UpTo(16));
        assert_eq!(d.opts.params.stop, vec!["x".to_string()]);
        assert_eq!((d.opts.params.top_k, d.opts.params.seed), (0, u64::MAX));
        assert!(!d.opts.stream);
        // null is absent.
        let n = completion(json!({"prompt": "Hi", "max_tokens": null, "temperature": null, "stop": null})).unwrap();
        assert_eq!(n.opts.max_tokens, MaxTokens::UpTo(16));
        assert_eq!(n.opts.params.temperature, 0.0);
    }

    #[test]
    fn parse_special_is_off_unless_asked() {
        let msgs = json!([{"role": "user", "content": "<|im_end|>"}]);
        assert!(!completion(json!({"prompt": "x"})).unwrap().parse_special);
        assert!(completion(json!({"prompt": "x", "parse_special": true})).unwrap().parse_special);
        assert!(!chat(json!({"messages": msgs})).unwrap().parse_special);
        assert!(!chat(json!({"messages": msgs, "parse_special": false})).unwrap().parse_special);
        assert!(chat(json!({"messages": msgs, "parse_special": true})).unwrap().parse_special);
        let e = chat(json!({"messages": msgs, "parse_special": "yes"})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("parse_special"), "{}", e.message);
        let e = completion(json!({"prompt": "x", "parse_special": 1})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("parse_special"), "{}", e.message);
    }

    #[test]
    fn completion_prompt_forms() {
        assert_eq!(completion(json!({"prompt": [1, 2, 3]})).unwrap().prompt, Prompt::Tokens(vec![1, 2, 3]));
        assert_eq!(completion(json!({"prompt": [[4, 5]]})).unwrap().prompt, Prompt::Tokens(vec![4, 5]));
        let cases = [
            (json!({}), "prompt", "is required"),
            (json!({"prompt": ""}), "prompt", "is empty"),
            (json!({"prompt": []}), "prompt", "is empty"),
            (json!({"prompt": [[]]}), "prompt", "is empty"),
            (json!({"prompt": 5}), "prompt", "must be a string"),
            (json!({"prompt": ["a", "b"]}), "prompt", "2 prompts"),
            (json!({"prompt": [1, 1000]}), "prompt[1]", "outside the vocabulary"),
            (json!({"prompt": [1, "a"]}), "prompt[1]", "token id"),
        ];
        for (b, param, want) in cases {
            let e = completion(b.clone()).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some(param)), "{b}: {e:?}");
            assert!(e.message.contains(want), "{b}: {}", e.message);
        }
    }

    #[test]
    fn wrong_types_and_out_of_range_values_name_the_field() {
        let cases = [
            (json!({"max_tokens": "16"}), "max_tokens", "must be an integer, got a string"),
            (json!({"max_tokens": 1.5}), "max_tokens", "must be an integer"),
            (json!({"max_tokens": -1}), "max_tokens", "at least 0"),
            (json!({"temperature": "hot"}), "temperature", "must be a number"),
            (json!({"temperature": -1}), "temperature", "must be in [0, inf]"),
            (json!({"top_p": 0}), "top_p", "(0, 1]"),
            (json!({"top_p": 1.5}), "top_p", "(0, 1]"),
            (json!({"min_p": 2}), "min_p", "[0, 1]"),
            (json!({"top_k": -2}), "top_k", "at least 1"),
            (json!({"top_k": 2.5}), "top_k", "integer"),
            (json!({"presence_penalty": 3}), "presence_penalty", "[-2, 2]"),
            (json!({"frequency_penalty": -2.5}), "frequency_penalty", "[-2, 2]"),
            (json!({"repetition_penalty": 0}), "repetition_penalty", "(0, inf]"),
            (json!({"repeat_penalty": 1.1, "repetition_penalty": 1.2}), "repeat_penalty", "give one"),
            (json!({"seed": "1"}), "seed", "integer"),
            (json!({"stop": 3}), "stop", "string or an array"),
            (json!({"stop": ["a", 3]}), "stop[1]", "string"),
            (json!({"stop": ["a", ""]}), "stop", "empty"),
            (json!({"logit_bias": {"abc": 1}}), "logit_bias.abc", "token ids"),
            (json!({"logit_bias": {"5000": 1}}), "logit_bias.5000", "outside the vocabulary"),
            (json!({"logit_bias": {"5": 101}}), "logit_bias.5", "[-100, 100]"),
            (json!({"logit_bias": {"5": "x"}}), "logit_bias.5", "a number"),
            (json!({"logit_bias": [1]}), "logit_bias", "an object"),
            (json!({"stream": "yes"}), "stream", "a boolean"),
            (json!({"stream_options": {"include_usage": true}}), "stream_options", "only allowed when 'stream' is true"),
            (json!({"stream": true, "stream_options": {"include_usage": 1}}), "stream_options.include_usage", "a boolean"),
            (json!({"n": 2}), "n", "only one choice"),
            (json!({"n": 0}), "n", "at least 1"),
            (json!({"model": 5}), "model", "a string"),
            (json!({"user": []}), "user", "a string"),
            (json!({"echo": true}), "echo", "not supported"),
            (json!({"echo": "no"}), "echo", "a boolean"),
            (json!({"logprobs": -1}), "logprobs", "must be in [0, 20] (OpenAI's limit is 5; this server takes up to 20, as vLLM), got -1"),
            (json!({"logprobs": 21}), "logprobs", "must be in [0, 20]"),
            (json!({"logprobs": 1e20}), "logprobs", "must be in [0, 20]"),
            (json!({"logprobs": 2.5}), "logprobs", "must be an integer, got a number"),
            (json!({"logprobs": true}), "logprobs", "must be an integer, got a boolean"),
            (json!({"logprobs": "5"}), "logprobs", "must be an integer, got a string"),
            (json!({"best_of": 3}), "best_of", "not supported"),
            (json!({"suffix": "x"}), "suffix", "not supported"),
        ];
        for (extra, param, want) in cases {
            let mut b = body(extra.clone());
            b.insert("prompt".into(), "Hi".into());
            let e = completion_request(&b, VOCAB, &greedy()).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some(param)), "{extra}: {e:?}");
            assert!(e.message.contains(want), "{extra}: {}", e.message);
            assert_eq!(e.body()["error"]["type"], "invalid_request_error");
        }
    }

    #[test]
    fn chat_messages_and_content_parts() {
        let r = chat(json!({
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "me"},
                {"role": "assistant", "content": null},
                {"role": "user", "content": "c"}
            ],
            "max_completion_tokens": 5, "max_tokens": 9, "tools": [], "tool_choice": "none", "response_format": {"type": "text"}
        }))
        .unwrap();
        let want =
            [Message::new("system", "Be brief."), Message::new("user", "a\nb"), Message::new("assistant", ""), Message::new("user", "c")];
        assert_eq!(r.messages, want);
        assert_eq!(r.opts.max_tokens, MaxTokens::Given(5));
        assert_eq!(chat(json!({"messages": [{"role": "user", "content": "x"}]})).unwrap().opts.max_tokens, MaxTokens::Rest);
        let cases = [
            (json!({}), "messages", "is required"),
            (json!({"messages": []}), "messages", "is empty"),
            (json!({"messages": "hi"}), "messages", "an array"),
            (json!({"messages": ["hi"]}), "messages[0]", "an object"),
            (json!({"messages": [{"content": "x"}]}), "messages[0].role", "is required"),
            (json!({"messages": [{"role": "wizard", "content": "x"}]}), "messages[0].role", "must be system"),
            (json!({"messages": [{"role": "tool", "content": "x"}]}), "messages[0].role", "not supported"),
            (json!({"messages": [{"role": "user"}]}), "messages[0].content", "is required"),
            (json!({"messages": [{"role": "user", "content": 5}]}), "messages[0].content", "a string or an array"),
            (json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}), "messages[0].content[0].type", "not supported"),
            (json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}), "messages[0].content[0].text", "is required"),
            (json!({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}), "messages[0].content[0].text", "a string"),
            (json!({"messages": [{"role": "assistant", "content": "", "tool_calls": [{}]}]}), "messages[0].tool_calls", "not supported"),
            (json!({"messages": [{"role": "user", "content": "x"}], "n": 3}), "n", "only one choice"),
            (json!({"messages": [{"role": "user", "content": "x"}], "logprobs": 1}), "logprobs", "must be a boolean"),
            (json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}), "top_logprobs", "requires 'logprobs' to be true"),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "logprobs": false, "top_logprobs": 0}),
                "top_logprobs",
                "requires 'logprobs' to be true",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21}),
                "top_logprobs",
                "'top_logprobs' must be in [0, 20], got 21",
            ),
            (json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": -3}), "top_logprobs", "got -3"),
            (json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 0.5}), "top_logprobs", "integer"),
            (json!({"messages": [{"role": "user", "content": "x"}], "tools": [{}]}), "tools", "not supported"),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}),
                "response_format",
                "not supported",
            ),
            (json!({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -1}), "max_completion_tokens", "at least 0"),
            (json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": 1}), "tool_choice", "a string or an object"),
        ];
        for (b, param, want) in cases {
            let e = chat(b.clone()).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some(param)), "{b}: {e:?}");
            assert!(e.message.contains(want), "{b}: {}", e.message);
        }
    }

    #[test]
    fn fit_checks_the_context_and_names_both_numbers() {
        let mut o = completion(json!({"prompt": "x", "max_tokens": 30})).unwrap().opts;
        o.fit(70, 100).unwrap();
        assert_eq!(o.params.max_tokens, 30);
        let e = o.fit(71, 100).unwrap_err();
        assert_eq!((e.status, e.code, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some("context_length_exceeded"), Some("max_tokens")));
        assert!(e.message.contains("context is 100 tokens per request") && e.message.contains("101 were requested"), "{}", e.message);
        assert!(e.message.contains("71 in the prompt + 30 max_tokens"), "{}", e.message);
        let mut huge = completion(json!({"prompt": "x", "max_tokens": u64::MAX})).unwrap().opts;
        let e = huge.fit(5, 100).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        // Defaults shrink to the room left; none left is an error.
        let mut d = completion(json!({"prompt": "x"})).unwrap().opts;
        d.fit(90, 100).unwrap();
        assert_eq!(d.params.max_tokens, 10);
        let e = d.fit(100, 100).unwrap_err();
        assert!(e.message.contains("100 in the prompt") && e.param.as_deref() == Some("prompt"), "{e:?}");
        assert!(d.fit(0, 100).unwrap_err().message.contains("no tokens"));
        let mut c = chat(json!({"messages": [{"role": "user", "content": "x"}]})).unwrap().opts;
        c.fit(40, 100).unwrap();
        assert_eq!(c.params.max_tokens, 60);
        // max_tokens 0: nothing to generate, so a prompt that fills the context fits.
        for name in ["max_tokens", "max_completion_tokens"] {
            let mut z = chat(json!({"messages": [{"role": "user", "content": "x"}], name: 0})).unwrap().opts;
            assert_eq!(z.max_tokens, MaxTokens::Given(0));
            z.fit(100, 100).unwrap();
            assert_eq!(z.params.max_tokens, 0);
            assert_eq!(z.fit(101, 100).unwrap_err().code, Some("context_length_exceeded"));
        }
    }

    #[test]
    fn prompt_text_over_the_byte_bound_is_refused_untokenized() {
        // 100 tokens of at most 4 bytes: 400 bytes fit, 401 cannot.
        check_prompt_bytes("prompt", 400, 100, 4).unwrap();
        let e = check_prompt_bytes("messages", 401, 100, 4).unwrap_err();
        assert_eq!((e.status, e.param.as_deref(), e.code), (StatusCode::BAD_REQUEST, Some("messages"), Some("context_length_exceeded")));
        assert!(e.message.contains("the context is 100 tokens per request") && e.message.contains("401 bytes"), "{}", e.message);
        // No overflow at the extremes; a bound of 0 bytes per token counts as 1.
        check_prompt_bytes("prompt", usize::MAX, usize::MAX, usize::MAX).unwrap();
        assert!(check_prompt_bytes("prompt", 2, 1, 0).is_err());
    }

    #[test]
    fn response_and_chunk_shapes() {
        let m = ResponseMeta::new(Endpoint::Chat, "smol");
        assert!(m.id.starts_with("chatcmpl-"));
        let u = Usage { prompt_tokens: 5, completion_tokens: 3, cached_tokens: 2 };
        let r = m.response("hi", "stop", &u, Value::Null);
        assert_eq!(r["object"], "chat.completion");
        assert_eq!(r["model"], "smol");
        assert_eq!(r["choices"][0]["message"], json!({"role": "assistant", "content": "hi"}));
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            r["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "prompt_tokens_details": {"cached_tokens": 2}})
        );
        let first = m.chunk("", true, None, true, Value::Null);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!(first["usage"], Value::Null);
        assert!(first.as_object().unwrap().contains_key("usage"));
        assert_eq!(m.chunk("a", false, None, false, Value::Null)["choices"][0]["delta"], json!({"content": "a"}));
        let end = m.chunk("", false, Some("length"), false, Value::Null);
        assert_eq!((&end["choices"][0]["delta"], &end["choices"][0]["finish_reason"]), (&json!({}), &json!("length")));
        assert!(!end.as_object().unwrap().contains_key("usage"));
        assert_eq!(m.usage_chunk(&u)["choices"], json!([]));
        let c = ResponseMeta::new(Endpoint::Completions, "smol");
        assert!(c.id.starts_with("cmpl-"));
        assert_eq!(c.response("x", "length", &u, Value::Null)["choices"][0]["text"], "x");
        assert_eq!(c.chunk("y", true, None, false, Value::Null)["object"], "text_completion");
        assert_eq!(c.chunk("y", true, None, false, Value::Null)["choices"][0]["text"], "y");
        assert_eq!(c.chunk("y", true, None, false, Value::Null)["choices"][0]["logprobs"], Value::Null);
        assert_eq!(finish_reason(FinishReason::Eog), Some("stop"));
        assert_eq!(finish_reason(FinishReason::Stop), Some("stop"));
        assert_eq!(finish_reason(FinishReason::MaxTokens), Some("length"));
        assert_eq!(finish_reason(FinishReason::Cancelled), None);
    }
    #[test]
    fn omitted_fields_take_the_server_defaults() {
        let d = SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, repetition_penalty: 1.1, ..Default::default() };
        let msgs = json!([{"role": "user", "content": "x"}]);
        for r in [
            completion_request(&body(json!({"prompt": "x"})), VOCAB, &d).unwrap().opts,
            chat_request(&body(json!({"messages": msgs, "temperature": null})), VOCAB, &d).unwrap().opts,
        ] {
            let p = &r.params;
            assert_eq!((p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty), (0.8, 40, 0.95, 0.05, 1.1));
            assert_eq!((p.presence_penalty, p.frequency_penalty, p.logprobs), (0.0, 0.0, None));
        }
        // Each field given has OpenAI's meaning and replaces only its default.
        let r = chat_request(&body(json!({"messages": msgs, "temperature": 0, "top_p": 1})), VOCAB, &d).unwrap().opts;
        let p = &r.params;
        assert_eq!((p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty), (0.0, 40, 1.0, 0.05, 1.1));
        let r = completion_request(&body(json!({"prompt": "x", "top_k": 0, "min_p": 0, "repeat_penalty": 1})), VOCAB, &d).unwrap().opts;
        assert_eq!((r.params.temperature, r.params.top_k, r.params.min_p, r.params.repetition_penalty), (0.8, 0, 0.0, 1.0));
        // The rest of the defaults' fields are not the request's.
        let odd = SamplingParams { max_tokens: 3, stop: vec!["z".into()], logprobs: Some(4), seed: 5, ..d.clone() };
        let r = completion_request(&body(json!({"prompt": "x"})), VOCAB, &odd).unwrap().opts;
        assert_eq!((r.params.stop.len(), r.params.logprobs, r.max_tokens), (0, None, MaxTokens::UpTo(16)));
    }

    #[test]
    fn logprobs_fields_set_the_engine_count() {
        let msgs = json!([{"role": "user", "content": "x"}]);
        let lp = |v: Value| chat(v).unwrap().opts.params.logprobs;
        assert_eq!(lp(json!({"messages": msgs})), None);
        assert_eq!(lp(json!({"messages": msgs, "logprobs": false})), None);
        assert_eq!(lp(json!({"messages": msgs, "logprobs": null, "top_logprobs": null})), None);
        assert_eq!(lp(json!({"messages": msgs, "logprobs": true})), Some(0));
        assert_eq!(lp(json!({"messages": msgs, "logprobs": true, "top_logprobs": 0})), Some(0));
        assert_eq!(lp(json!({"messages": msgs, "logprobs": true, "top_logprobs": 20})), Some(20));
        assert_eq!(lp(json!({"messages": msgs, "logprobs": true, "top_logprobs": 3.0})), Some(3));
        let lp = |v: Value| completion(v).unwrap().opts.params.logprobs;
        assert_eq!(lp(json!({"prompt": "x"})), None);
        assert_eq!(lp(json!({"prompt": "x", "logprobs": null})), None);
        assert_eq!(lp(json!({"prompt": "x", "logprobs": 0})), Some(0));
        assert_eq!(lp(json!({"prompt": "x", "logprobs": 5})), Some(5));
        assert_eq!(lp(json!({"prompt": "x", "logprobs": 20})), Some(20));
        // top_logprobs is not a field of /v1/completions: ignored as any unknown field.
        assert_eq!(lp(json!({"prompt": "x", "top_logprobs": 50})), None);
        // echo stays refused, with or without logprobs.
        let e = completion(json!({"prompt": "x", "logprobs": 2, "echo": true})).unwrap_err();
        assert_eq!((e.param.as_deref(), e.code), (Some("echo"), Some("unsupported_parameter")));
    }

    #[test]
    fn logprobs_shapes() {
        let e = |s: &str, lp: f32, top: &[(&str, f32)]| TokenLogprobs {
            bytes: s.as_bytes().to_vec(),
            logprob: lp,
            top: top.iter().map(|(t, l)| (t.as_bytes().to_vec(), *l)).collect(),
        };
        // "é" in two tokens of one byte each (not UTF-8 alone), then " b".
        let entries = vec![
            e("a", -0.5, &[("a", -0.5), ("c", -1.5)]),
            TokenLogprobs { bytes: vec![0xC3], logprob: -0.25, top: vec![(vec![0xC3], -0.25), (b"x".to_vec(), -2.0)] },
            TokenLogprobs { bytes: vec![0xA9], logprob: -3.0, top: vec![(b"y".to_vec(), -1.0), (b"z".to_vec(), -2.0)] },
            e(" b", -0.125, &[(" b", -0.125), ("c", -4.0)]),
        ];
        let chat = ResponseMeta::new(Endpoint::Chat, "m");
        let v = chat.logprobs(Some(&entries), &mut 0);
        let content = v["content"].as_array().unwrap();
        assert_eq!(content.len(), 4);
        assert_eq!(
            content[0],
            json!({"token": "a", "logprob": -0.5, "bytes": [97],
            "top_logprobs": [{"token": "a", "logprob": -0.5, "bytes": [97]}, {"token": "c", "logprob": -1.5, "bytes": [99]}]})
        );
        assert_eq!((&content[1]["token"], &content[1]["bytes"]), (&json!("\u{FFFD}"), &json!([0xC3])));
        assert_eq!(chat.logprobs(None, &mut 0), Value::Null);
        assert_eq!(chat.logprobs(Some(&[]), &mut 0), json!({"content": []}));
        let r = chat.response("aé b", "stop", &Usage::default(), v.clone());
        assert_eq!(r["choices"][0]["logprobs"], v);
        assert_eq!(chat.chunk("a", false, None, false, v.clone())["choices"][0]["logprobs"], v);

        let comp = ResponseMeta::new(Endpoint::Completions, "m");
        let mut offset = 10;
        let v = comp.logprobs(Some(&entries), &mut offset);
        assert_eq!(v["tokens"], json!(["a", "\u{FFFD}", "\u{FFFD}", " b"]));
        assert_eq!(v["token_logprobs"], json!([-0.5, -0.25, -3.0, -0.125]));
        // Offsets in characters: "é" is one character over two tokens.
        assert_eq!(v["text_offset"], json!([10, 11, 12, 12]));
        assert_eq!(offset, 14);
        assert_eq!(v["top_logprobs"][0], json!({"a": -0.5, "c": -1.5}));
        // The chosen token is added where it is not among the most likely (N + 1 entries).
        assert_eq!(v["top_logprobs"][2], json!({"y": -1.0, "z": -2.0, "\u{FFFD}": -3.0}));
        assert_eq!(comp.response("x", "length", &Usage::default(), v.clone())["choices"][0]["logprobs"], v);
    }
}
