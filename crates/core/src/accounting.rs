//! Token accounting: the tokens an answer used, read from its body as it
//! passes, and the totals per account and model.
//!
//! [`UsageScanner`] is fed a successful answer's bytes chunk by chunk,
//! split wherever the network split them, and never holds the body: one
//! structural pass reads the keys of the few objects that matter, skips
//! every other container, and parses the counts as their digits go by (see
//! `scan.rs`). Its state is a few hundred bytes whatever the body, and a
//! content string that happens to say `"usage"` is never mistaken for the
//! answer's usage.
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
//! Every usage object seen overrides the fields it has when it closes, so a
//! stream's last numbers win (they are cumulative in every format), a
//! usage cut off half-way counts nothing of itself, and Anthropic's
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::account::AccountId;
use crate::status::TokenTotals;

mod scan;

pub use scan::{MAX_MODEL_BYTES, UsageScanner, request_model};

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

/// The model a Gemini request path names: `.../models/<model>:<method>`.
pub fn path_model(path: &str) -> Option<&str> {
    // Segment by segment: cheaper on every request than a substring
    // search's setup.
    let mut segments = path.split('/');
    segments.find(|s| *s == "models")?;
    let rest = segments.next()?;
    let end = rest.find([':', '?']).unwrap_or(rest.len());
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
