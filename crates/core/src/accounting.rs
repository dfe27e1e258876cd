//! Token accounting: the tokens an answer used, read from its body as it
//! passes, and the totals per account and model.
//!
//! [`UsageScanner`] is fed a successful answer's bytes chunk by chunk,
//! split wherever the network split them, and never holds the body: it walks
//! the JSON structurally (depth, strings, keys of the first two levels) and
//! keeps only the few values it wants — the `usage` object and the `model`
//! string at the places each provider puts them — each capped
//! ([`MAX_USAGE_BYTES`], [`MAX_MODEL_BYTES`]). So its memory is a few KiB
//! whatever the body, and a content string that happens to say `"usage"` is
//! never mistaken for the answer's usage.
//!
//! Where the usage is:
//!
//! | answer | usage | model |
//! |---|---|---|
//! | Anthropic Messages JSON | `usage` | `model` |
//! | Anthropic stream | `message_start`'s `message.usage`, then `message_delta`'s `usage` | `message.model` |
//! | OpenAI Chat Completions JSON, stream (`stream_options.include_usage`) | `usage` (the last chunk's) | `model` |
//! | OpenAI Responses JSON | `usage` | `model` |
//! | OpenAI Responses stream | `response.completed`'s `response.usage` | `response.model` |
//! | Gemini JSON, `alt=sse` stream, JSON-array stream | `usageMetadata` (the last chunk's) | `modelVersion` |
//! | Gemini Code Assist | `response.usageMetadata` | `response.modelVersion` |
//!
//! Every usage object seen overrides the fields it has, so a stream's last
//! numbers win (they are cumulative in every format), and Anthropic's
//! `message_delta` (output only, in older API versions) keeps the input of
//! `message_start`.
//!
//! The fields mean different things per provider; [`TokenUsage`] is one
//! meaning: `input` excludes cache reads and writes. OpenAI's
//! `prompt_tokens`/`input_tokens` and Gemini's `promptTokenCount` include
//! the cached part, so it is subtracted; Anthropic's `input_tokens` does not.
//! Reasoning ("thinking") tokens are output: OpenAI counts them in
//! `completion_tokens`/`output_tokens` already, Gemini's
//! `thoughtsTokenCount` is added.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use memchr::{memchr2, memchr3};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::account::AccountId;
use crate::status::TokenTotals;

/// The most bytes of a `usage` object kept (real ones are under 600).
pub const MAX_USAGE_BYTES: usize = 4 * 1024;
/// The most bytes of a `model` string kept (quotes included).
pub const MAX_MODEL_BYTES: usize = 130;
/// The most models counted apart per account; the rest count as
/// [`OTHER_MODEL`], so an upstream inventing a model per answer cannot
/// grow the ledger without bound.
pub const MAX_MODELS_PER_ACCOUNT: usize = 32;
/// The model of answers that named none (and whose request named none).
pub const UNKNOWN_MODEL: &str = "unknown";
/// The model of answers past [`MAX_MODELS_PER_ACCOUNT`], or whose model name
/// is not a safe label.
pub const OTHER_MODEL: &str = "other";

/// The tokens one answer used, in one meaning for every provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Input (prompt) tokens, cache reads and writes excluded.
    pub input: u64,
    /// Output tokens, reasoning included.
    pub output: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read: u64,
    /// Input tokens written to the prompt cache.
    pub cache_write: u64,
}

impl TokenUsage {
    /// Whether every count is zero.
    pub fn is_zero(&self) -> bool {
        *self == TokenUsage::default()
    }
}

impl TokenTotals {
    /// Adds one answer's usage (saturating).
    pub fn add(&mut self, u: &TokenUsage) {
        self.input = self.input.saturating_add(u.input);
        self.output = self.output.saturating_add(u.output);
        self.cache_read = self.cache_read.saturating_add(u.cache_read);
        self.cache_write = self.cache_write.saturating_add(u.cache_write);
    }
}

/// How the body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// One JSON document (or a JSON array of them, or several in a row).
    Json,
    /// Server-sent events whose `data:` lines are JSON documents.
    EventStream,
}

/// An incremental scanner for the token usage and model of an answer.
///
/// Feed it every chunk of the body in order; then [`UsageScanner::usage`]
/// and [`UsageScanner::model`]. Any split of the same bytes gives the same
/// answer; no input makes it panic or hold more than a few KiB.
#[derive(Clone, Debug)]
pub struct UsageScanner {
    framing: Framing,
    sse: SseLines,
    walker: Walker,
    fields: UsageFields,
    /// The last `model` string, raw JSON with its quotes (no allocation);
    /// empty: none yet.
    model: [u8; MAX_MODEL_BYTES],
    model_len: usize,
}

impl UsageScanner {
    /// A scanner at the start of a body.
    pub fn new(framing: Framing) -> Self {
        UsageScanner {
            framing,
            sse: SseLines::default(),
            walker: Walker::default(),
            fields: UsageFields::default(),
            model: [0; MAX_MODEL_BYTES],
            model_len: 0,
        }
    }

    /// Scans the next chunk.
    pub fn feed(&mut self, chunk: &[u8]) {
        match self.framing {
            Framing::Json => self.walk(chunk),
            Framing::EventStream => {
                let mut sse = std::mem::take(&mut self.sse);
                sse.feed(chunk, |piece| match piece {
                    Piece::Data(bytes) => self.walk(bytes),
                    Piece::EventEnd => self.walker.reset(),
                });
                self.sse = sse;
            }
        }
    }

    fn walk(&mut self, bytes: &[u8]) {
        let (fields, model, model_len) = (&mut self.fields, &mut self.model, &mut self.model_len);
        self.walker.feed(bytes, &mut |target, raw| match target {
            Target::Usage => fields.merge(raw),
            // A string: `"…"` (a capture is at most MAX_MODEL_BYTES).
            Target::Model if raw.len() >= 2 && raw.len() <= model.len() && raw.ends_with(b"\"") => {
                model[..raw.len()].copy_from_slice(raw);
                *model_len = raw.len();
            }
            Target::Model => {}
        });
    }

    /// A message of a message-framed transport (a WebSocket) ended: the
    /// next bytes start a new JSON document, whatever this one left open.
    pub fn end_document(&mut self) {
        self.walker.reset();
    }

    /// Forgets the usage and model read so far: for a transport that
    /// carries many answers (a WebSocket), each counted on its own.
    pub fn clear_answer(&mut self) {
        self.fields = UsageFields::default();
        self.model_len = 0;
    }

    /// The usage read so far; `None` when the answer carried none.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.fields.normalize()
    }

    /// The answer's model as it named it (untrusted text: see
    /// [`model_label`] before showing it).
    /// Whether the answer has named its model yet (cheap; see
    /// [`UsageScanner::model`]).
    pub fn has_model(&self) -> bool {
        self.model_len > 0
    }

    /// Borrowed unless the name has escapes.
    pub fn model(&self) -> Option<Cow<'_, str>> {
        let raw = &self.model[..self.model_len];
        let inner = raw.get(1..raw.len().checked_sub(1)?)?;
        if inner.contains(&b'\\') {
            serde_json::from_slice::<String>(raw).ok().map(Cow::Owned)
        } else {
            std::str::from_utf8(inner).ok().map(Cow::Borrowed)
        }
    }
}

/// The `model` field of a request body (JSON), for answers that name none.
pub fn request_model(body: &[u8]) -> Option<String> {
    let mut walker = Walker {
        only_model: true,
        ..Walker::default()
    };
    let mut model = None;
    walker.feed(body, &mut |target, raw| {
        if target == Target::Model
            && model.is_none()
            && let Ok(m) = serde_json::from_slice::<String>(raw)
        {
            model = Some(m);
        }
    });
    model
}

/// The model a Gemini request path names: `.../models/<model>:<method>`.
pub fn path_model(path: &str) -> Option<&str> {
    let start = path.find("/models/")? + "/models/".len();
    let rest = &path[start..];
    let end = rest.find([':', '/', '?']).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|m| !m.is_empty())
}

/// `model` as a label for status and metrics, if it is a safe one: at most
/// 64 bytes of `[A-Za-z0-9._:/@+-]`, not shaped like a credential (a known
/// key prefix, or a long run mixing letters and digits) and holding no
/// secret this process knows. Model names are text an upstream sent.
pub fn model_label(model: &str) -> Option<&str> {
    let ok = !model.is_empty()
        && model.len() <= 64
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/@+-".contains(&b))
        // The credential prefixes reasons refuse, and any Slack token.
        && !crate::reason::CREDENTIAL_PREFIXES
            .iter()
            .chain(&["xox"])
            .any(|p| model.starts_with(p))
        && !model.split(['.', '_', ':', '/', '@', '+', '-']).any(|seg| {
            let digits = seg.bytes().filter(u8::is_ascii_digit).count();
            seg.len() > 24 || (seg.len() >= 10 && digits > 0 && digits < seg.len())
        })
        && !crate::secret::scrubber().mentions(model);
    ok.then_some(model)
}

/// What a [`Walker`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Usage,
    Model,
}

/// The keys that matter on the way to a usage object or a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Key {
    #[default]
    Other,
    Usage,
    Model,
    /// `message` (Anthropic `message_start`) or `response` (Responses
    /// events, Gemini Code Assist): the answer one level down.
    Wrapper,
}

impl Key {
    fn of(name: &[u8]) -> Key {
        match name {
            b"usage" | b"usageMetadata" => Key::Usage,
            b"model" | b"modelVersion" => Key::Model,
            b"message" | b"response" => Key::Wrapper,
            _ => Key::Other,
        }
    }
}

/// The longest key worth reading (`usageMetadata`).
const MAX_KEY: usize = 16;

/// The capture buffer's first size: real usage objects are under 600 bytes.
const CAPTURE_RESERVE: usize = 640;

/// JSON's punctuation: what ends a number or literal outside strings.
fn is_punctuation(b: u8) -> bool {
    matches!(b, b'"' | b'{' | b'}' | b'[' | b']' | b':' | b',')
}

/// Where the walker is inside a string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Lex {
    #[default]
    Structure,
    Str,
    StrEscape,
}

/// What a value starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// `{` or `[`.
    Container,
    /// `"`.
    Text,
    /// A number or literal.
    Bare,
}

/// A value being kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Capture {
    target: Target,
    /// The depth the value started at (before its own bracket).
    depth: u32,
    /// A scalar (string, number, literal) rather than an object or array.
    scalar: bool,
    /// A string: it ends at its closing quote.
    quoted: bool,
    /// It outgrew its cap: dropped at its end.
    overflow: bool,
}

/// A structural JSON walker: depth, strings and the keys of the first two
/// levels of each root object (a root array's elements are roots too), with
/// the values at the paths of [`Key::Usage`] and [`Key::Model`] kept.
/// Not a validator: it never fails, it only finds less in broken input.
#[derive(Clone, Debug, Default)]
struct Walker {
    lex: Lex,
    depth: u32,
    /// Bit `i`: the container at depth `i + 1` is an object.
    objects: u64,
    /// The outermost container is an array (a Gemini JSON-array stream).
    root_array: bool,
    /// The next string in this object is a key.
    expect_key: bool,
    /// The string being read is a key.
    in_key: bool,
    key: [u8; MAX_KEY],
    key_len: usize,
    key_overflow: bool,
    /// The last key read at levels 1 and 2 of the root object.
    keys: [Key; 2],
    /// The key just read, at level `key_level`, awaits its value.
    key_level: u32,
    /// A `:` has been seen after a key: the next value belongs to it.
    after_colon: bool,
    capture: Option<Capture>,
    /// Where in the current chunk the kept value's bytes not yet in `buf`
    /// start.
    from: usize,
    buf: Vec<u8>,
    /// Keep only the `model` at level 1 (a request body).
    only_model: bool,
}

impl Walker {
    /// Back to the start of a document, keeping the buffer's capacity.
    fn reset(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        *self = Walker {
            buf,
            only_model: self.only_model,
            ..Walker::default()
        };
    }

    fn feed(&mut self, bytes: &[u8], found: &mut dyn FnMut(Target, &[u8])) {
        // A value being kept is kept as slices of the chunk (from `from`),
        // not byte by byte.
        self.from = 0;
        let mut i = 0;
        while i < bytes.len() {
            match self.lex {
                Lex::Str => {
                    // Skip the string's plain bytes in one step.
                    let run = memchr2(b'"', b'\\', &bytes[i..]).unwrap_or(bytes.len() - i);
                    if self.in_key {
                        self.push_key(&bytes[i..i + run]);
                    }
                    i += run;
                    if i == bytes.len() {
                        break;
                    }
                    if bytes[i] == b'\\' {
                        self.lex = Lex::StrEscape;
                        // An escaped key is not one of ours.
                        self.key_overflow |= self.in_key;
                    } else {
                        self.lex = Lex::Structure;
                        self.string_end(bytes, i, found);
                    }
                    i += 1;
                }
                Lex::StrEscape => {
                    self.lex = Lex::Str;
                    i += 1;
                }
                Lex::Structure => {
                    let b = bytes[i];
                    if !self.after_colon && !self.capturing_scalar() && !is_punctuation(b) {
                        // A number, literal or whitespace nothing waits
                        // for: skipped to the next punctuation at once.
                        i += 1;
                        while i < bytes.len() && !is_punctuation(bytes[i]) {
                            i += 1;
                        }
                        continue;
                    }
                    self.structure(bytes, i, found);
                    i += 1;
                }
            }
        }
        // The chunk ends inside a kept value: keep what it had.
        if self.capture.is_some() {
            self.keep(&bytes[self.from..]);
        }
    }

    fn capturing_scalar(&self) -> bool {
        self.capture.is_some_and(|c| c.scalar)
    }

    /// Adds a piece of the value being kept, within its cap.
    fn keep(&mut self, piece: &[u8]) {
        if let Some(c) = &mut self.capture {
            let cap = match c.target {
                Target::Usage => MAX_USAGE_BYTES,
                Target::Model => MAX_MODEL_BYTES,
            };
            if self.buf.len() + piece.len() > cap {
                c.overflow = true;
            } else {
                self.buf.extend_from_slice(piece);
            }
        }
    }

    fn push_key(&mut self, bytes: &[u8]) {
        if self.key_len + bytes.len() > MAX_KEY {
            self.key_overflow = true;
        } else {
            self.key[self.key_len..self.key_len + bytes.len()].copy_from_slice(bytes);
            self.key_len += bytes.len();
        }
    }

    /// The level of the root object the walker is in (1: its own keys).
    fn level(&self) -> u32 {
        self.depth.saturating_sub(u32::from(self.root_array))
    }

    fn in_object(&self) -> bool {
        self.depth >= 1 && self.depth <= 64 && self.objects & (1 << (self.depth - 1)) != 0
    }

    /// The byte at `bytes[i]`, outside strings.
    fn structure(&mut self, bytes: &[u8], i: usize, found: &mut dyn FnMut(Target, &[u8])) {
        let b = bytes[i];
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => self.scalar_end(bytes, i, found),
            b':' => {
                self.scalar_end(bytes, i, found);
                self.after_colon = self.key_level > 0;
            }
            b',' => {
                self.scalar_end(bytes, i, found);
                self.after_colon = false;
                self.key_level = 0;
                self.expect_key = self.in_object();
            }
            b'{' | b'[' => {
                self.scalar_end(bytes, i, found);
                self.value_start(i, Shape::Container);
                if self.depth == 0 {
                    self.root_array = b == b'[';
                }
                self.depth = self.depth.saturating_add(1);
                if self.depth <= 64 {
                    let bit = 1u64 << (self.depth - 1);
                    if b == b'{' {
                        self.objects |= bit;
                    } else {
                        self.objects &= !bit;
                    }
                }
                self.expect_key = b == b'{';
            }
            b'}' | b']' => {
                self.scalar_end(bytes, i, found);
                if self.depth == 0 {
                    return;
                }
                self.depth -= 1;
                self.expect_key = false;
                self.after_colon = false;
                self.key_level = 0;
                if let Some(c) = self.capture
                    && !c.scalar
                    && self.depth == c.depth
                {
                    self.finish_capture(bytes, i + 1, found);
                }
            }
            b'"' => {
                self.scalar_end(bytes, i, found);
                if self.expect_key && self.in_object() {
                    self.expect_key = false;
                    self.in_key = true;
                    self.key_len = 0;
                    self.key_overflow = false;
                } else {
                    self.value_start(i, Shape::Text);
                }
                self.lex = Lex::Str;
            }
            _ => {
                // A number or literal: kept if it is a wanted value (then
                // dropped: usage and model are never scalars of this kind).
                if self.capture.is_none() {
                    self.value_start(i, Shape::Bare);
                }
            }
        }
    }

    /// A value of `shape` starts at `bytes[i]`: keep it if its path is
    /// wanted.
    fn value_start(&mut self, i: usize, shape: Shape) {
        if std::mem::take(&mut self.after_colon) {
            let target = self.target();
            self.key_level = 0;
            if let (Some(target), None) = (target, self.capture) {
                self.buf.clear();
                // One allocation for a usual usage object, not a doubling
                // per few bytes.
                self.buf.reserve(CAPTURE_RESERVE);
                self.from = i;
                self.capture = Some(Capture {
                    target,
                    depth: self.depth,
                    scalar: shape != Shape::Container,
                    quoted: shape == Shape::Text,
                    overflow: false,
                });
            }
        }
    }

    /// What the value of the key just read is, if it is wanted.
    fn target(&self) -> Option<Target> {
        let (first, second) = (self.keys[0], self.keys[1]);
        let key = match self.key_level {
            1 => first,
            2 if first == Key::Wrapper => second,
            _ => return None,
        };
        match key {
            Key::Model => Some(Target::Model),
            Key::Usage if !self.only_model => Some(Target::Usage),
            _ => None,
        }
    }

    /// A string's closing quote is at `bytes[i]`.
    fn string_end(&mut self, bytes: &[u8], i: usize, found: &mut dyn FnMut(Target, &[u8])) {
        if std::mem::take(&mut self.in_key) {
            let level = self.level();
            let key = if self.key_overflow {
                Key::Other
            } else {
                Key::of(&self.key[..self.key_len])
            };
            if (1..=2).contains(&level) {
                self.keys[level as usize - 1] = key;
                self.key_level = level;
            } else {
                self.key_level = 0;
            }
        } else if let Some(c) = self.capture
            && c.quoted
        {
            self.finish_capture(bytes, i + 1, found);
        }
    }

    /// A scalar (number, literal) ends before `bytes[i]` (whitespace or
    /// punctuation).
    fn scalar_end(&mut self, bytes: &[u8], i: usize, found: &mut dyn FnMut(Target, &[u8])) {
        if let Some(c) = self.capture
            && c.scalar
            && !c.quoted
        {
            self.finish_capture(bytes, i, found);
        }
    }

    /// The value being kept ends before `bytes[end]`.
    fn finish_capture(&mut self, bytes: &[u8], end: usize, found: &mut dyn FnMut(Target, &[u8])) {
        self.keep(&bytes[self.from..end]);
        if let Some(c) = self.capture.take()
            && !c.overflow
        {
            found(c.target, &self.buf);
        }
        self.buf.clear();
    }
}

/// The fields of every provider's usage object, as last seen.
#[derive(Clone, Debug, Default)]
struct UsageFields {
    /// Anthropic (excludes cache) and Responses (includes `cached`).
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    /// Anthropic.
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    /// Chat Completions (includes `cached`).
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    /// `input_tokens_details` / `prompt_tokens_details` `.cached_tokens`.
    cached: Option<u64>,
    /// Gemini (the prompt includes `cachedContentTokenCount`).
    prompt_token_count: Option<u64>,
    tool_use_prompt_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
    thoughts_token_count: Option<u64>,
    cached_content_token_count: Option<u64>,
}

impl UsageFields {
    /// Takes the fields a usage object (raw JSON) has. Parsed into a typed,
    /// lenient shape: no allocation, unknown fields skipped, a field that is
    /// not a count ignored on its own; anything else but an object ignored.
    fn merge(&mut self, raw: &[u8]) {
        // An object only (serde would read an array as the fields in order).
        if raw.first() != Some(&b'{') {
            return;
        }
        let Ok(u) = serde_json::from_slice::<RawUsage>(raw) else {
            return;
        };
        let set = |slot: &mut Option<u64>, v: Count| {
            if v.0.is_some() {
                *slot = v.0;
            }
        };
        set(&mut self.input_tokens, u.input_tokens);
        set(&mut self.output_tokens, u.output_tokens);
        set(&mut self.cache_read_input_tokens, u.cache_read_input_tokens);
        set(
            &mut self.cache_creation_input_tokens,
            u.cache_creation_input_tokens,
        );
        set(&mut self.prompt_tokens, u.prompt_tokens);
        set(&mut self.completion_tokens, u.completion_tokens);
        set(&mut self.cached, u.input_tokens_details);
        set(&mut self.cached, u.prompt_tokens_details);
        set(&mut self.prompt_token_count, u.prompt_token_count);
        set(
            &mut self.tool_use_prompt_token_count,
            u.tool_use_prompt_token_count,
        );
        set(&mut self.candidates_token_count, u.candidates_token_count);
        set(&mut self.thoughts_token_count, u.thoughts_token_count);
        set(
            &mut self.cached_content_token_count,
            u.cached_content_token_count,
        );
    }

    fn normalize(&self) -> Option<TokenUsage> {
        let v = |x: Option<u64>| x.unwrap_or(0);
        if self.prompt_token_count.is_some() || self.candidates_token_count.is_some() {
            // Gemini.
            let cached = v(self.cached_content_token_count);
            let prompt =
                v(self.prompt_token_count).saturating_add(v(self.tool_use_prompt_token_count));
            return Some(TokenUsage {
                input: prompt.saturating_sub(cached),
                output: v(self.candidates_token_count).saturating_add(v(self.thoughts_token_count)),
                cache_read: cached,
                cache_write: 0,
            });
        }
        if self.prompt_tokens.is_some() || self.completion_tokens.is_some() {
            // Chat Completions.
            let cached = v(self.cached);
            return Some(TokenUsage {
                input: v(self.prompt_tokens).saturating_sub(cached),
                output: v(self.completion_tokens),
                cache_read: cached,
                cache_write: 0,
            });
        }
        if self.input_tokens.is_some() || self.output_tokens.is_some() {
            let anthropic = self.cache_read_input_tokens.is_some()
                || self.cache_creation_input_tokens.is_some();
            // Responses counts the cached part in `input_tokens`; Anthropic
            // reports it beside.
            let (input, cache_read) = if anthropic || self.cached.is_none() {
                (v(self.input_tokens), v(self.cache_read_input_tokens))
            } else {
                let cached = v(self.cached);
                (v(self.input_tokens).saturating_sub(cached), cached)
            };
            return Some(TokenUsage {
                input,
                output: v(self.output_tokens),
                cache_read,
                cache_write: v(self.cache_creation_input_tokens),
            });
        }
        None
    }
}

/// A usage object as any provider writes it (the fields of all of them).
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct RawUsage {
    input_tokens: Count,
    output_tokens: Count,
    cache_read_input_tokens: Count,
    cache_creation_input_tokens: Count,
    prompt_tokens: Count,
    completion_tokens: Count,
    /// `{"cached_tokens": n, ...}`, read as `n`.
    #[serde(deserialize_with = "cached_tokens")]
    input_tokens_details: Count,
    #[serde(deserialize_with = "cached_tokens")]
    prompt_tokens_details: Count,
    #[serde(rename = "promptTokenCount")]
    prompt_token_count: Count,
    #[serde(rename = "toolUsePromptTokenCount")]
    tool_use_prompt_token_count: Count,
    #[serde(rename = "candidatesTokenCount")]
    candidates_token_count: Count,
    #[serde(rename = "thoughtsTokenCount")]
    thoughts_token_count: Count,
    #[serde(rename = "cachedContentTokenCount")]
    cached_content_token_count: Count,
}

/// A token count, or nothing when the value is not one (any JSON value is
/// read, and skipped if it is not a non-negative integer).
#[derive(Clone, Copy, Default)]
struct Count(Option<u64>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CountVisitor { key: None })
    }
}

/// Reads a count; given a `key`, the count under that key of an object.
struct CountVisitor {
    key: Option<&'static str>,
}

impl<'de> Visitor<'de> for CountVisitor {
    type Value = Count;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a token count")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
        Ok(Count(self.key.is_none().then_some(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
        Ok(Count(u64::try_from(v).ok().filter(|_| self.key.is_none())))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Count, E> {
        Ok(Count(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Count, E> {
        Ok(Count(None))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Count, E> {
        Ok(Count(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Count, E> {
        Ok(Count(None))
    }

    fn visit_none<E: de::Error>(self) -> Result<Count, E> {
        Ok(Count(None))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Count, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Count, A::Error> {
        while a.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Count(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Count, A::Error> {
        let mut found = Count(None);
        while let Some(k) = a.next_key::<KeyName<'de>>()? {
            if self.key.is_some_and(|want| k.0 == want) {
                found = a.next_value::<Count>()?;
            } else {
                a.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// An object key, borrowed when it has no escapes (else not one of ours).
struct KeyName<'a>(&'a str);

impl<'de> Deserialize<'de> for KeyName<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyName<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<KeyName<'de>, E> {
                Ok(KeyName(v))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<KeyName<'de>, E> {
                Ok(KeyName(""))
            }
        }
        d.deserialize_str(V)
    }
}

/// `{"cached_tokens": n, ...}` → `n`; anything else → nothing.
fn cached_tokens<'de, D: Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
    d.deserialize_any(CountVisitor {
        key: Some("cached_tokens"),
    })
}

/// One piece of an event stream for the usage scanner.
enum Piece<'a> {
    /// Bytes of a `data:` field's value (a line may come in several pieces).
    Data(&'a [u8]),
    /// A blank line: the event is complete.
    EventEnd,
}

/// Where [`SseLines`] is in a line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum LineState {
    /// Reading the field name (up to its colon).
    #[default]
    Name,
    /// In a `data:` value; `bool`: its one optional leading space is still
    /// to be dropped.
    Data(bool),
    /// In a line that does not matter (another field, a comment).
    Skip,
}

/// Splits an event stream into `data:` values and event ends, holding no
/// line: data bytes are handed on as they come (WHATWG rules: `\n`, `\r\n`
/// or `\r` end a line, one space after the colon is dropped, a leading BOM
/// is ignored).
#[derive(Clone, Debug, Default)]
struct SseLines {
    state: LineState,
    /// The field name so far (only `data` matters: 5 bytes are enough).
    name: [u8; 5],
    name_len: usize,
    /// Bytes of the line so far (for the blank-line check).
    line_bytes: bool,
    /// The last byte was `\r`: a `\n` next is the same line end.
    after_cr: bool,
    /// Bytes of the stream so far, up to 3 (for the BOM).
    seen: u8,
    /// This event has had a field.
    has_field: bool,
}

impl SseLines {
    fn feed(&mut self, mut chunk: &[u8], mut out: impl FnMut(Piece<'_>)) {
        while self.seen < 3 && !chunk.is_empty() {
            if chunk[0] == b"\xEF\xBB\xBF"[self.seen as usize] {
                self.seen += 1;
                chunk = &chunk[1..];
            } else {
                self.seen = 3;
            }
        }
        let mut i = 0;
        while i < chunk.len() {
            if self.after_cr {
                self.after_cr = false;
                if chunk[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            let rest = &chunk[i..];
            match self.state {
                LineState::Data(_) | LineState::Skip => {
                    let end = memchr2(b'\n', b'\r', rest).unwrap_or(rest.len());
                    if let LineState::Data(strip) = self.state {
                        let mut data = &rest[..end];
                        if strip && !data.is_empty() {
                            data = data.strip_prefix(b" ").unwrap_or(data);
                            self.state = LineState::Data(false);
                        }
                        if !data.is_empty() {
                            out(Piece::Data(data));
                        }
                    }
                    i += end;
                    if end < rest.len() {
                        self.line_end(rest[end], &mut out);
                        i += 1;
                    }
                }
                LineState::Name => {
                    let end = memchr3(b'\n', b'\r', b':', rest).unwrap_or(rest.len());
                    for &b in &rest[..end] {
                        if self.name_len < self.name.len() {
                            self.name[self.name_len] = b;
                        }
                        self.name_len = self.name_len.saturating_add(1);
                    }
                    self.line_bytes |= end > 0;
                    i += end;
                    if end == rest.len() {
                        break;
                    }
                    match rest[end] {
                        b':' => {
                            self.line_bytes = true;
                            let is_data =
                                &self.name[..self.name_len.min(5)] == b"data" && self.name_len == 4;
                            // A comment (nothing before the colon) is no field.
                            self.has_field |= self.name_len > 0;
                            self.state = if is_data {
                                LineState::Data(true)
                            } else {
                                LineState::Skip
                            };
                        }
                        b => {
                            self.has_field |= self.line_bytes;
                            self.line_end(b, &mut out);
                        }
                    }
                    i += 1;
                }
            }
        }
    }

    fn line_end(&mut self, b: u8, out: &mut impl FnMut(Piece<'_>)) {
        if b == b'\r' {
            self.after_cr = true;
        }
        if !self.line_bytes && self.state == LineState::Name {
            if std::mem::take(&mut self.has_field) {
                out(Piece::EventEnd);
            }
        } else if matches!(self.state, LineState::Data(_)) {
            // Data lines of one event join with a newline: JSON whitespace.
            out(Piece::Data(b"\n"));
        }
        self.state = LineState::Name;
        self.name_len = 0;
        self.line_bytes = false;
    }
}

/// Whatever else an answer's usage counts against besides its account (the
/// proxy's access keys), called once per counted answer.
pub type AlsoCount = Box<dyn Fn(&TokenUsage) + Send + Sync>;

/// One successful answer's token accounting on its way through, for either
/// face: fed every chunk of the body as it passes (a few KiB held, never the
/// body), it counts what the answer reported into the provider's ledger
/// once, at the body's end or when it is dropped half-way (the client left,
/// having used what was reported so far).
///
/// The model is the answer's own; else the one a Gemini path names; else the
/// request body's `model`. The request body (`R`: any shared bytes) is kept
/// only until the answer names its model — at its start in every provider's
/// answers — so a big prompt is not held for a whole stream, and never when
/// the path names the model.
pub struct Tally<R: AsRef<[u8]> = Vec<u8>> {
    scanner: UsageScanner,
    /// `None` once counted.
    to: Option<Counted<R>>,
}

/// Whom an answer's tokens count against, and where its model is when the
/// answer names none.
struct Counted<R> {
    ledger: Arc<Mutex<TokenLedger>>,
    account: AccountId,
    also: Option<AlsoCount>,
    /// The model the request path names (Gemini).
    path_model: Option<Box<str>>,
    request: Option<R>,
}

impl<R: AsRef<[u8]>> Tally<R> {
    /// A tally for an answer of `account` to a request for `path` (its
    /// body: `request`, when it was buffered).
    pub fn new(
        ledger: Arc<Mutex<TokenLedger>>,
        account: AccountId,
        framing: Framing,
        path: &str,
        request: Option<R>,
    ) -> Self {
        let path_model = path_model(path).map(Box::from);
        let request = request.filter(|_| path_model.is_none());
        Tally {
            scanner: UsageScanner::new(framing),
            to: Some(Counted {
                ledger,
                account,
                also: None,
                path_model,
                request,
            }),
        }
    }

    /// Counts each answer against `also` too.
    pub fn also(mut self, also: AlsoCount) -> Self {
        if let Some(to) = &mut self.to {
            to.also = Some(also);
        }
        self
    }

    /// The next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        if let Some(to) = &mut self.to {
            self.scanner.feed(chunk);
            if to.request.is_some() && self.scanner.has_model() {
                to.request = None;
            }
        }
    }

    /// The body ended (or was dropped): counts what the answer reported,
    /// once.
    pub fn finish(&mut self) {
        if let Some(to) = self.to.take() {
            to.count(self.scanner.usage(), self.scanner.model().as_deref());
        }
    }

    /// One message of many ended (a WebSocket carries many answers): counts
    /// what it reported, and goes on counting the next.
    pub fn end_message(&mut self) {
        self.scanner.end_document();
        if let Some(to) = &self.to {
            to.count(self.scanner.usage(), self.scanner.model().as_deref());
        }
        self.scanner.clear_answer();
    }

    /// Whether the request body is still held (tests of its early release).
    #[doc(hidden)]
    pub fn holds_request(&self) -> bool {
        self.to.as_ref().is_some_and(|t| t.request.is_some())
    }
}

impl<R: AsRef<[u8]>> Counted<R> {
    fn count(&self, usage: Option<TokenUsage>, model: Option<&str>) {
        let Some(usage) = usage.filter(|u| !u.is_zero()) else {
            return;
        };
        let from_request;
        let model = match (model, &self.path_model) {
            (Some(m), _) => Some(m),
            (None, Some(m)) => Some(&**m),
            (None, None) => {
                from_request = self
                    .request
                    .as_ref()
                    .and_then(|r| request_model(r.as_ref()));
                from_request.as_deref()
            }
        };
        self.ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(&self.account, model, &usage);
        if let Some(also) = &self.also {
            also(&usage);
        }
    }
}

impl<R: AsRef<[u8]>> Drop for Tally<R> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One account's tokens: in all and per model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountTokens {
    /// All answers.
    pub total: TokenTotals,
    /// Per model label ([`model_label`], [`UNKNOWN_MODEL`], [`OTHER_MODEL`]),
    /// in the order first seen; at most [`MAX_MODELS_PER_ACCOUNT`] + 1.
    pub models: Vec<(String, TokenTotals)>,
}

/// Tokens per account and model since it was made. Bounded: the accounts
/// are the pools' own, and each holds at most
/// [`MAX_MODELS_PER_ACCOUNT`] + 1 models.
#[derive(Clone, Debug, Default)]
pub struct TokenLedger {
    accounts: HashMap<AccountId, AccountTokens, foldhash::fast::RandomState>,
}

impl TokenLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one answer's usage against `account` and `model` (as the
    /// answer or request named it; made a safe label here).
    pub fn add(&mut self, account: &AccountId, model: Option<&str>, usage: &TokenUsage) {
        let entry = match self.accounts.get_mut(account) {
            Some(e) => e,
            None => self.accounts.entry(account.clone()).or_default(),
        };
        entry.total.add(usage);
        let label = match model {
            None => UNKNOWN_MODEL,
            Some(m) => match entry.models.iter().position(|(l, _)| l == m) {
                // Already vetted when it was first added.
                Some(i) => {
                    entry.models[i].1.add(usage);
                    return;
                }
                None if entry.models.len() >= MAX_MODELS_PER_ACCOUNT => OTHER_MODEL,
                None => model_label(m).unwrap_or(OTHER_MODEL),
            },
        };
        match entry.models.iter_mut().find(|(l, _)| l == label) {
            Some((_, t)) => t.add(usage),
            None => {
                let mut t = TokenTotals::default();
                t.add(usage);
                entry.models.push((label.to_owned(), t));
            }
        }
    }

    /// `account`'s tokens, if it used any.
    pub fn account(&self, account: &AccountId) -> Option<&AccountTokens> {
        self.accounts.get(account)
    }

    /// Forgets accounts `keep` says no to (accounts removed from the pool).
    pub fn retain(&mut self, mut keep: impl FnMut(&AccountId) -> bool) {
        self.accounts.retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests;
