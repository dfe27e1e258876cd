//! The usage scanner: one pass over an answer's bytes as they pass, reading
//! its token counts and model where each provider puts them, holding
//! nothing of the body.
//!
//! The walk is structural (strings, brackets, keys) but reads keys only in
//! the few objects that matter — the root object, the answer wrapped one
//! level down (`message`, `response`), the `usage` object and its
//! `*_tokens_details` — and skips every other container by counting its
//! brackets. The counts are parsed as their digits pass, so nothing is
//! captured and parsed again; only the model name (at most
//! [`MAX_MODEL_BYTES`]) is copied. Its state is a few hundred bytes on the
//! stack or in its owner, whatever the body; no heap.
//!
//! A usage object's counts take effect when it closes (`}`): a usage cut off
//! by a dropped connection or a broken event counts nothing of itself, and
//! each usage object seen overrides the counts it has (a stream's last
//! numbers win; they are cumulative in every format).

use std::borrow::Cow;

use memchr::{memchr2, memchr3};

use super::{Framing, TokenUsage};

/// The most bytes of a model name kept, as the answer wrote it (escapes
/// included); a longer one is not read. Real ones are under 64.
pub const MAX_MODEL_BYTES: usize = 128;

/// The longest key worth reading (`cache_creation_input_tokens`).
const MAX_KEY: usize = 32;

/// An incremental scanner for the token usage and model of an answer.
///
/// Feed it every chunk of the body in order; then [`UsageScanner::usage`]
/// and [`UsageScanner::model`]. Any split of the same bytes gives the same
/// answer; no input makes it panic or allocate.
#[derive(Clone, Debug)]
pub struct UsageScanner {
    framing: Framing,
    sse: SseLines,
    pub(super) walker: Walker,
}

impl UsageScanner {
    /// A scanner at the start of a body.
    pub fn new(framing: Framing) -> Self {
        UsageScanner {
            framing,
            sse: SseLines::default(),
            walker: Walker::new(false),
        }
    }

    /// Scans the next chunk.
    pub fn feed(&mut self, chunk: &[u8]) {
        match self.framing {
            Framing::Json => self.walker.feed(chunk),
            Framing::EventStream => {
                let UsageScanner { sse, walker, .. } = self;
                sse.feed(chunk, |piece| match piece {
                    Piece::Data(bytes) => walker.feed(bytes),
                    Piece::EventEnd => walker.reset(),
                });
            }
        }
    }

    /// A message of a message-framed transport (a WebSocket) ended: the
    /// next bytes start a new JSON document, whatever this one left open.
    pub fn end_document(&mut self) {
        self.walker.reset();
    }

    /// Forgets the usage and model read so far: for a transport that
    /// carries many answers (a WebSocket), each counted on its own.
    pub fn clear_answer(&mut self) {
        self.walker.counts = Counts::default();
        self.walker.model_len = 0;
    }

    /// The usage read so far; `None` when the answer carried none.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.walker.counts.normalize()
    }

    /// Whether the answer has named its model yet (cheap; see
    /// [`UsageScanner::model`]).
    pub fn has_model(&self) -> bool {
        self.walker.model_len > 0
    }

    /// The answer's model as it named it (untrusted text: see
    /// [`super::model_label`] before showing it). Borrowed unless the name
    /// has escapes.
    pub fn model(&self) -> Option<Cow<'_, str>> {
        self.walker.model()
    }
}

/// The `model` field of a request body (JSON), for answers that name none.
pub fn request_model(body: &[u8]) -> Option<String> {
    let mut walker = Walker::new(true);
    walker.feed(body);
    walker.model().map(Cow::into_owned)
}

/// The count fields of every provider's usage object. The meanings differ
/// per provider; [`Counts::normalize`] makes them one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Anthropic (excludes cache) and Responses (includes `Cached`).
    InputTokens,
    OutputTokens,
    /// Anthropic.
    CacheReadInputTokens,
    CacheCreationInputTokens,
    /// Chat Completions (includes `Cached`).
    PromptTokens,
    CompletionTokens,
    /// `input_tokens_details` / `prompt_tokens_details` `.cached_tokens`.
    Cached,
    /// Gemini (the prompt includes `CachedContentTokenCount`).
    PromptTokenCount,
    ToolUsePromptTokenCount,
    CandidatesTokenCount,
    ThoughtsTokenCount,
    CachedContentTokenCount,
}

const COUNTS: usize = Slot::CachedContentTokenCount as usize + 1;

/// The counts of usage objects, as last seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    /// Bit `c`: count `c` was seen.
    seen: u16,
    n: [u64; COUNTS],
}

impl Counts {
    fn get(&self, c: Slot) -> Option<u64> {
        (self.seen & 1 << c as u16 != 0).then(|| self.n[c as usize])
    }

    fn set(&mut self, c: Slot, n: u64) {
        self.seen |= 1 << c as u16;
        self.n[c as usize] = n;
    }

    /// Takes the counts `newer` has.
    fn merge(&mut self, newer: &Counts) {
        let mut seen = newer.seen;
        while seen != 0 {
            let c = seen.trailing_zeros() as usize;
            self.n[c] = newer.n[c];
            seen &= seen - 1;
        }
        self.seen |= newer.seen;
    }

    /// The counts in [`TokenUsage`]'s one meaning: `input` excludes cache
    /// reads and writes. OpenAI's `prompt_tokens`/`input_tokens` and
    /// Gemini's `promptTokenCount` include the cached part, so it is
    /// subtracted; Anthropic's `input_tokens` does not. Reasoning tokens are
    /// output: OpenAI counts them in its output already, Gemini's
    /// `thoughtsTokenCount` is added.
    fn normalize(&self) -> Option<TokenUsage> {
        use Slot::*;
        let has = |c| self.get(c).is_some();
        let v = |c| self.get(c).unwrap_or(0);
        if has(PromptTokenCount) || has(CandidatesTokenCount) {
            // Gemini.
            let cached = v(CachedContentTokenCount);
            let prompt = v(PromptTokenCount).saturating_add(v(ToolUsePromptTokenCount));
            return Some(TokenUsage {
                input: prompt.saturating_sub(cached),
                output: v(CandidatesTokenCount).saturating_add(v(ThoughtsTokenCount)),
                cache_read: cached,
                cache_write: 0,
            });
        }
        if has(PromptTokens) || has(CompletionTokens) {
            // Chat Completions.
            let cached = v(Cached);
            return Some(TokenUsage {
                input: v(PromptTokens).saturating_sub(cached),
                output: v(CompletionTokens),
                cache_read: cached,
                cache_write: 0,
            });
        }
        if has(InputTokens) || has(OutputTokens) {
            let anthropic = has(CacheReadInputTokens) || has(CacheCreationInputTokens);
            // Responses counts the cached part in `input_tokens`; Anthropic
            // reports it beside.
            let (input, cache_read) = if anthropic || !has(Cached) {
                (v(InputTokens), v(CacheReadInputTokens))
            } else {
                let cached = v(Cached);
                (v(InputTokens).saturating_sub(cached), cached)
            };
            return Some(TokenUsage {
                input,
                output: v(OutputTokens),
                cache_read,
                cache_write: v(CacheCreationInputTokens),
            });
        }
        None
    }
}

/// An object the walker reads the keys of (every other container is
/// skipped), or the root array of a Gemini JSON-array stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ctx {
    /// A document that is an array: its elements are roots.
    RootArray,
    /// The answer (a document, or a root array's element).
    Root,
    /// `message` (Anthropic `message_start`) or `response` (Responses
    /// events, Gemini Code Assist): the answer one level down.
    Wrapper,
    /// `usage` / `usageMetadata`.
    Usage,
    /// `input_tokens_details` / `prompt_tokens_details`.
    Details,
}

/// The deepest the read objects nest: root array, root, wrapper, usage,
/// details.
const MAX_CTX: usize = 5;

/// What the value of the key just read is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Other,
    Model,
    Usage,
    Wrapper,
    Details,
    Count(Slot),
}

impl Field {
    /// What `key` names in an object of `ctx`.
    fn of(ctx: Ctx, key: &[u8], only_model: bool) -> Field {
        use Slot::*;
        match ctx {
            Ctx::Root | Ctx::Wrapper => match key {
                b"model" | b"modelVersion" => Field::Model,
                b"usage" | b"usageMetadata" if !only_model => Field::Usage,
                b"message" | b"response" if ctx == Ctx::Root => Field::Wrapper,
                _ => Field::Other,
            },
            Ctx::Usage => Field::Count(match key {
                b"input_tokens" => InputTokens,
                b"output_tokens" => OutputTokens,
                b"cache_read_input_tokens" => CacheReadInputTokens,
                b"cache_creation_input_tokens" => CacheCreationInputTokens,
                b"prompt_tokens" => PromptTokens,
                b"completion_tokens" => CompletionTokens,
                b"promptTokenCount" => PromptTokenCount,
                b"toolUsePromptTokenCount" => ToolUsePromptTokenCount,
                b"candidatesTokenCount" => CandidatesTokenCount,
                b"thoughtsTokenCount" => ThoughtsTokenCount,
                b"cachedContentTokenCount" => CachedContentTokenCount,
                b"input_tokens_details" | b"prompt_tokens_details" => return Field::Details,
                _ => return Field::Other,
            }),
            Ctx::Details if key == b"cached_tokens" => Field::Count(Cached),
            Ctx::Details | Ctx::RootArray => Field::Other,
        }
    }
}

/// What a string is to the walker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Text {
    /// A key of a read object: its bytes are kept to look it up.
    Key,
    /// The model: its bytes are kept.
    Model,
    /// Anything else: skipped.
    Other,
}

/// What the walker is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Between the tokens of the read objects.
    Structure,
    /// A string.
    Str(Text),
    /// A string, just after a backslash.
    Escape(Text),
    /// A count's digits.
    Digits,
    /// A number or literal nobody reads.
    Bare,
    /// A container nobody reads ([`Walker::skip`] deep).
    Skip,
}

/// Where the walker is between the tokens of the innermost read object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// A value may start (after `:`, in an array, between documents).
    Value,
    /// A key may start (after `{` or `,` in an object).
    Key,
    /// A key was read; its `:` is next.
    Colon,
    /// A value ended.
    After,
}

/// The single-pass walker. Not a validator: it never fails, it only finds
/// less in broken input.
#[derive(Clone, Debug)]
pub(super) struct Walker {
    mode: Mode,
    step: Step,
    /// The read objects the walker is in, outermost first (`depth` of them).
    ctx: [Ctx; MAX_CTX],
    depth: usize,
    /// `ctx[depth - 1]`, if any.
    top: Option<Ctx>,
    /// The key just read in the innermost object: what its value is.
    field: Field,
    /// How deep the walker is in the container it skips.
    skip: u32,
    key: [u8; MAX_KEY],
    /// Past [`MAX_KEY`]: too long or escaped, so not one of ours.
    key_len: usize,
    /// The count being read; `None` once it is not one (a sign, a
    /// fraction, an exponent, too big).
    number: Option<u64>,
    /// The counts of the usage object being read, taken when it closes.
    pending: Counts,
    /// The counts of the usage objects read.
    counts: Counts,
    /// A model string split between chunks, as read so far (raw, escapes
    /// included); one read whole from a chunk is not copied here.
    text: Vec<u8>,
    /// Past [`MAX_MODEL_BYTES`]: too long to keep.
    text_len: usize,
    /// The last model read, raw.
    model: [u8; MAX_MODEL_BYTES],
    model_len: usize,
    /// Read only the model (a request body).
    only_model: bool,
}

/// Ends a number or literal: JSON's punctuation and whitespace.
fn ends_scalar(b: u8) -> bool {
    matches!(
        b,
        b'"' | b'{' | b'}' | b'[' | b']' | b':' | b',' | b' ' | b'\t' | b'\n' | b'\r'
    )
}

/// How many bytes of `s` are plain string bytes (before a `"` or `\`).
#[inline(always)]
fn string_run(s: &[u8]) -> usize {
    // Keys and most values end within a few words: a word at a time
    // (SWAR) beats memchr's setup there; long text goes to memchr.
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const SHORT: usize = 32;
    let words = s.len().min(SHORT) & !7;
    let mut j = 0;
    while j < words {
        let w = u64::from_le_bytes(s[j..j + 8].try_into().expect("8 bytes"));
        let (q, b) = (w ^ (LO * u64::from(b'"')), w ^ (LO * u64::from(b'\\')));
        // The lowest set bit marks the first byte equal to either: a
        // borrow only ever marks bytes above a real match.
        let hit = (q.wrapping_sub(LO) & !q | b.wrapping_sub(LO) & !b) & HI;
        if hit != 0 {
            return j + (hit.trailing_zeros() / 8) as usize;
        }
        j += 8;
    }
    if j == SHORT {
        return j + memchr2(b'"', b'\\', &s[j..]).unwrap_or(s.len() - j);
    }
    j + s[j..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\')
        .unwrap_or(s.len() - j)
}

/// Where a string whose bytes start at `bytes[i]` closes: the index of its
/// closing quote, or, when the chunk ends first, the mode it leaves the
/// walker in (in the string, or just after a backslash).
#[inline(always)]
fn string_close(bytes: &[u8], mut i: usize, text: Text) -> Result<usize, Mode> {
    loop {
        let j = i + string_run(&bytes[i..]);
        if j == bytes.len() {
            return Err(Mode::Str(text));
        }
        if bytes[j] == b'"' {
            return Ok(j);
        }
        if j + 1 == bytes.len() {
            return Err(Mode::Escape(text));
        }
        i = j + 2;
    }
}

/// Where the number or literal at `bytes[i..]` ends, if it does in this
/// chunk.
#[inline(always)]
fn scalar_end(bytes: &[u8], i: usize) -> Option<usize> {
    bytes[i..]
        .iter()
        .position(|&b| ends_scalar(b))
        .map(|j| i + j)
}

impl Walker {
    fn new(only_model: bool) -> Self {
        Walker {
            mode: Mode::Structure,
            step: Step::Value,
            ctx: [Ctx::Root; MAX_CTX],
            depth: 0,
            top: None,
            field: Field::Other,
            skip: 0,
            key: [0; MAX_KEY],
            key_len: 0,
            number: None,
            pending: Counts::default(),
            counts: Counts::default(),
            text: Vec::new(),
            text_len: 0,
            model: [0; MAX_MODEL_BYTES],
            model_len: 0,
            only_model,
        }
    }

    /// Back to the start of a document, keeping what was read.
    fn reset(&mut self) {
        self.mode = Mode::Structure;
        self.step = Step::Value;
        self.depth = 0;
        self.top = None;
        self.field = Field::Other;
        self.skip = 0;
    }

    fn model(&self) -> Option<Cow<'_, str>> {
        let raw = &self.model[..self.model_len];
        if raw.is_empty() {
            None
        } else if raw.contains(&b'\\') {
            let mut quoted = Vec::with_capacity(raw.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(raw);
            quoted.push(b'"');
            serde_json::from_slice::<String>(&quoted)
                .ok()
                .map(Cow::Owned)
        } else {
            std::str::from_utf8(raw).ok().map(Cow::Borrowed)
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        // Each mode runs its own loop over as many bytes as it lasts.
        let mut i = 0;
        while i < bytes.len() {
            i = match self.mode {
                Mode::Structure => self.structure(bytes, i),
                Mode::Str(text) => self.string(bytes, i, text),
                Mode::Escape(text) => {
                    if text == Text::Model {
                        self.keep_text(&bytes[i..=i]);
                    }
                    self.mode = Mode::Str(text);
                    i + 1
                }
                Mode::Digits => self.digits(bytes, i),
                Mode::Bare => self.bare(bytes, i),
                Mode::Skip => self.skip(bytes, i),
            };
        }
    }

    fn top(&self) -> Option<Ctx> {
        self.top
    }

    /// The read object a `{` or `[` opens, if it is one.
    fn child(&self, open: u8) -> Option<Ctx> {
        match (self.top(), open) {
            // Between documents anything may come first.
            (None, b'{') => Some(Ctx::Root),
            (None, b'[') => Some(Ctx::RootArray),
            (Some(_), _) if self.step != Step::Value => None,
            (Some(Ctx::RootArray), b'{') => Some(Ctx::Root),
            (Some(_), b'{') => match self.field {
                Field::Usage => Some(Ctx::Usage),
                Field::Wrapper => Some(Ctx::Wrapper),
                Field::Details => Some(Ctx::Details),
                _ => None,
            },
            _ => None,
        }
    }

    fn structure(&mut self, bytes: &[u8], mut i: usize) -> usize {
        while i < bytes.len() {
            let b = bytes[i];
            i += 1;
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b'"' => {
                    // Whole within the chunk (nearly always): read in
                    // place. Else the string's bytes are kept as they come.
                    let text = match self.step {
                        Step::Key => Text::Key,
                        Step::Value if self.field == Field::Model => Text::Model,
                        _ => Text::Other,
                    };
                    if text != Text::Other {
                        let j = i + string_run(&bytes[i..]);
                        if j < bytes.len() && bytes[j] == b'"' {
                            self.plain_string_end(text, &bytes[i..j]);
                            i = j + 1;
                            // A key's colon nearly always follows at once.
                            if text == Text::Key && bytes.get(i) == Some(&b':') {
                                self.step = Step::Value;
                                i += 1;
                            }
                            continue;
                        }
                        self.key_len = 0;
                        self.text_len = 0;
                        self.mode = Mode::Str(text);
                        return i;
                    }
                    match string_close(bytes, i, Text::Other) {
                        Ok(j) => {
                            self.step = Step::After;
                            i = j + 1;
                        }
                        Err(mode) => {
                            self.mode = mode;
                            return bytes.len();
                        }
                    }
                }
                b':' => {
                    if self.step == Step::Colon {
                        self.step = Step::Value;
                    }
                }
                b',' => {
                    self.step = match self.top() {
                        Some(Ctx::RootArray) | None => Step::Value,
                        Some(_) => Step::Key,
                    };
                    self.field = Field::Other;
                }
                b'{' | b'[' => match self.child(b) {
                    Some(ctx) if self.depth < MAX_CTX => {
                        if ctx == Ctx::Usage {
                            self.pending.seen = 0;
                        }
                        self.ctx[self.depth] = ctx;
                        self.depth += 1;
                        self.top = Some(ctx);
                        self.step = if b == b'{' { Step::Key } else { Step::Value };
                        self.field = Field::Other;
                    }
                    _ => {
                        self.skip = 1;
                        self.mode = Mode::Skip;
                        return i;
                    }
                },
                b'}' | b']' => {
                    if let Some(ctx) = self.top() {
                        self.depth -= 1;
                        self.top = self.depth.checked_sub(1).map(|d| self.ctx[d]);
                        if ctx == Ctx::Usage {
                            self.counts.merge(&self.pending);
                        }
                        self.step = if self.depth == 0 {
                            Step::Value
                        } else {
                            Step::After
                        };
                    }
                    self.field = Field::Other;
                }
                b'0'..=b'9'
                    if self.step == Step::Value && matches!(self.field, Field::Count(_)) =>
                {
                    self.number = Some(u64::from(b - b'0'));
                    self.mode = Mode::Digits;
                    return i;
                }
                _ => match scalar_end(bytes, i) {
                    Some(j) => {
                        self.step = Step::After;
                        i = j;
                    }
                    None => {
                        self.mode = Mode::Bare;
                        return bytes.len();
                    }
                },
            }
        }
        i
    }

    /// A key or model string read whole from the chunk (no escapes).
    fn plain_string_end(&mut self, text: Text, raw: &[u8]) {
        if text == Text::Key {
            self.field = match self.top() {
                Some(ctx) if raw.len() <= MAX_KEY => Field::of(ctx, raw, self.only_model),
                _ => Field::Other,
            };
            self.step = Step::Colon;
        } else {
            if (1..=MAX_MODEL_BYTES).contains(&raw.len()) {
                self.model[..raw.len()].copy_from_slice(raw);
                self.model_len = raw.len();
            }
            self.step = Step::After;
        }
    }

    /// In a string: up to its end, keeping the bytes of a key or model.
    fn string(&mut self, bytes: &[u8], i: usize, text: Text) -> usize {
        let run = string_run(&bytes[i..]);
        let end = i + run;
        match text {
            Text::Key => self.keep_key(&bytes[i..end]),
            Text::Model => self.keep_text(&bytes[i..end]),
            Text::Other => {}
        }
        if end == bytes.len() {
            return end;
        }
        if bytes[end] == b'\\' {
            match text {
                // An escaped key is not one of ours.
                Text::Key => self.key_len = MAX_KEY + 1,
                Text::Model => self.keep_text(b"\\"),
                Text::Other => {}
            }
            self.mode = Mode::Escape(text);
        } else {
            self.string_end(text);
        }
        end + 1
    }

    fn keep_key(&mut self, piece: &[u8]) {
        let len = self.key_len + piece.len();
        if len <= MAX_KEY {
            self.key[self.key_len..len].copy_from_slice(piece);
            self.key_len = len;
        } else {
            self.key_len = MAX_KEY + 1;
        }
    }

    fn keep_text(&mut self, piece: &[u8]) {
        let len = self.text_len + piece.len();
        if len <= MAX_MODEL_BYTES {
            self.text.truncate(self.text_len);
            self.text.extend_from_slice(piece);
            self.text_len = len;
        } else {
            self.text_len = MAX_MODEL_BYTES + 1;
        }
    }

    /// A string's closing quote was read.
    fn string_end(&mut self, text: Text) {
        if self.skip > 0 {
            self.mode = Mode::Skip;
            return;
        }
        self.mode = Mode::Structure;
        match text {
            Text::Key if self.key_len <= MAX_KEY => {
                let key = self.key;
                self.plain_string_end(text, &key[..self.key_len]);
            }
            Text::Model if self.text_len <= MAX_MODEL_BYTES => {
                let model = std::mem::take(&mut self.text);
                self.plain_string_end(text, &model[..self.text_len]);
                self.text = model;
            }
            // Too long, or escaped: not one of ours.
            Text::Key => {
                self.field = Field::Other;
                self.step = Step::Colon;
            }
            Text::Model | Text::Other => self.step = Step::After,
        }
    }

    /// In a count: its digits, up to the punctuation or space that ends it.
    fn digits(&mut self, bytes: &[u8], mut i: usize) -> usize {
        let mut n = self.number;
        while i < bytes.len() {
            let b = bytes[i];
            if b.is_ascii_digit() {
                n = n.and_then(|n| n.checked_mul(10)?.checked_add(u64::from(b - b'0')));
            } else if ends_scalar(b) {
                if let (Some(n), Field::Count(c)) = (n, self.field) {
                    self.pending.set(c, n);
                }
                self.mode = Mode::Structure;
                self.step = Step::After;
                return i;
            } else {
                n = None;
            }
            i += 1;
        }
        self.number = n;
        i
    }

    /// In a number or literal nobody reads: up to its end.
    fn bare(&mut self, bytes: &[u8], i: usize) -> usize {
        match bytes[i..].iter().position(|&b| ends_scalar(b)) {
            Some(j) => {
                self.mode = Mode::Structure;
                self.step = Step::After;
                i + j
            }
            None => bytes.len(),
        }
    }

    /// In a container nobody reads: its strings and brackets, to its end.
    fn skip(&mut self, bytes: &[u8], mut i: usize) -> usize {
        let mut depth = self.skip;
        while i < bytes.len() {
            let b = bytes[i];
            i += 1;
            match b {
                b'"' => match string_close(bytes, i, Text::Other) {
                    Ok(j) => i = j + 1,
                    Err(mode) => {
                        self.skip = depth;
                        self.mode = mode;
                        return bytes.len();
                    }
                },
                b'{' | b'[' => depth = depth.saturating_add(1),
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        self.skip = 0;
                        self.mode = Mode::Structure;
                        self.step = Step::After;
                        return i;
                    }
                }
                _ => {}
            }
        }
        self.skip = depth;
        i
    }
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
