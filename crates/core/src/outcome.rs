//! The vocabulary between the proxy and the engine: what came back from
//! upstream ([`Outcome`]), and what the classifier made of it
//! ([`Classification`]).
//!
//! The engine knows no HTTP library: headers are read through the tiny
//! [`HeaderLookup`] trait, which the proxy implements over its own header map.

use crate::clock::UnixMillis;
use crate::reason::Reason;

/// Read-only access to response headers by lower-case name.
pub trait HeaderLookup {
    /// The first value of the header `name` (lower-case), if present and valid UTF-8.
    fn header(&self, name: &str) -> Option<&str>;

    /// Whether any header name starts with `prefix` (lower-case), if the
    /// implementation can tell cheaply; `None` otherwise. Lets the parsers
    /// skip a family of lookups (usage windows) on the many responses that
    /// carry none of them.
    fn has_prefix(&self, prefix: &str) -> Option<bool> {
        let _ = prefix;
        None
    }
}

impl HeaderLookup for [(&str, &str)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

impl<const N: usize> HeaderLookup for [(&str, &str); N] {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

impl HeaderLookup for Vec<(String, String)> {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Which API family answered; decides how error bodies and in-stream events
/// are read, and what an "exhausted" answer looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiFlavor {
    /// Anthropic Messages API (and Claude subscriptions).
    Anthropic,
    /// OpenAI Chat Completions / Responses, ChatGPT-Codex, OpenAI-compatible.
    Openai,
    /// Google Gemini / Code Assist.
    Google,
    /// GitHub Copilot.
    Copilot,
}

/// How the attempt failed below HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportFailure {
    /// Could not connect (refused, DNS, TLS handshake).
    Connect,
    /// The connection was reset or closed before a response head arrived.
    ResetBeforeResponse,
    /// No response head within the upstream timeout.
    Timeout,
}

/// One upstream attempt's result, as the proxy saw it.
pub enum Outcome<'a> {
    /// A response head (and, if the proxy peeked, the first bytes of the body).
    Response {
        /// HTTP status code.
        status: u16,
        /// Response headers.
        headers: &'a dyn HeaderLookup,
        /// The first bytes of the body, possibly empty. For an SSE 200 this may
        /// be the first event.
        body: &'a [u8],
    },
    /// An `event: error` (or equivalent) inside a 200 stream; `data` is the
    /// event's JSON payload.
    StreamError {
        /// The error event's data payload.
        data: &'a [u8],
    },
    /// No response: the transport failed.
    Transport(TransportFailure),
    /// The client went away; nobody's fault.
    ClientCancelled,
}

/// What kind of failure (or success) an outcome is. Decides who is to blame:
/// the account, the provider, the request, or nobody.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// 2xx.
    Success,
    /// Account-scoped: a rate limit or quota window (429). Cool down until the
    /// reset hint; rotate.
    RateLimited,
    /// Account-scoped: the account cannot be used (billing, `insufficient_quota`,
    /// 402, deactivated workspace, plan lacks access). Long cooldown; rotate.
    Unusable,
    /// Account-scoped: 401. Refresh once and retry the same account, then
    /// `needs-login` and rotate.
    Auth,
    /// Account-scoped: 403. Like `Auth` but no refresh loop for API keys.
    Forbidden,
    /// Provider-scoped: 529, 5xx, overloaded. Do not cool the account.
    Provider,
    /// Transport failure before a response. Retry once, then rotate.
    Transport,
    /// Request-scoped: 400/404/413/422/other 4xx. Pass through untouched.
    Request,
    /// The client went away. Stop; no penalty.
    Cancelled,
}

impl Class {
    /// Whether the account itself is to blame (and should be cooled / rotated away from).
    pub fn blames_account(self) -> bool {
        matches!(
            self,
            Class::RateLimited | Class::Unusable | Class::Auth | Class::Forbidden
        )
    }

    /// Short name for logs, traces and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Success => "success",
            Class::RateLimited => "rate_limited",
            Class::Unusable => "unusable",
            Class::Auth => "auth",
            Class::Forbidden => "forbidden",
            Class::Provider => "provider",
            Class::Transport => "transport",
            Class::Request => "request",
            Class::Cancelled => "cancelled",
        }
    }
}

/// Where a reset hint was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HintSource {
    /// `retry-after: <seconds>`.
    RetryAfterSeconds,
    /// `retry-after: <HTTP-date>`.
    RetryAfterDate,
    /// `retry-after-ms`.
    RetryAfterMs,
    /// `anthropic-ratelimit-unified-*-reset` (epoch seconds).
    AnthropicUnified,
    /// `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset` (RFC 3339).
    AnthropicRfc3339,
    /// `x-ratelimit-reset-{requests,tokens}` (Go durations).
    OpenaiGoDuration,
    /// `x-codex-{primary,secondary}-reset-at` (epoch seconds).
    CodexResetAt,
    /// Body `error.resets_at` (epoch seconds).
    BodyResetsAt,
    /// Body `error.resets_in_seconds`.
    BodyResetsInSeconds,
    /// Google `RetryInfo.retryDelay`.
    GoogleRetryInfo,
    /// A human sentence such as "try again in 2 hours" or "Please retry in 34.07s".
    Message,
}

impl HintSource {
    /// Short name for traces ("unified", "retry-after", ...).
    pub fn as_str(self) -> &'static str {
        match self {
            HintSource::RetryAfterSeconds | HintSource::RetryAfterDate => "retry-after",
            HintSource::RetryAfterMs => "retry-after-ms",
            HintSource::AnthropicUnified => "unified",
            HintSource::AnthropicRfc3339 => "ratelimit-reset",
            HintSource::OpenaiGoDuration => "x-ratelimit-reset",
            HintSource::CodexResetAt => "codex-reset-at",
            HintSource::BodyResetsAt => "resets_at",
            HintSource::BodyResetsInSeconds => "resets_in_seconds",
            HintSource::GoogleRetryInfo => "retry-info",
            HintSource::Message => "message",
        }
    }
}

/// When the account may be used again, and how we know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResetHint {
    /// The instant the limit resets (before jitter).
    pub at: UnixMillis,
    /// Where it came from.
    pub source: HintSource,
}

/// One quota window's usage, from usage headers on any response.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UsageWindow {
    /// Window name: `5h`, `7d`, `primary`, `secondary`, ...
    pub name: String,
    /// Utilisation, 0.0..=1.0 (Codex percentages are divided by 100).
    pub utilization: f64,
    /// When this window resets, if known.
    pub resets_at: Option<UnixMillis>,
    /// Provider status for the window, if given (`allowed`, `allowed_warning`,
    /// `rejected`); a header value, so kept only if it is a safe word.
    pub status: Option<Reason>,
    /// The window's length in minutes, when known (Codex sends it; Anthropic's
    /// `5h` / `7d` windows are fixed at 300 / 10080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_minutes: Option<u64>,
}

/// What the classifier concluded about one outcome.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Classification {
    /// The class, which decides the action.
    pub class: Class,
    /// HTTP status, if there was a response.
    pub status: Option<u16>,
    /// A short machine reason: the provider's error type/code when there is
    /// one (`rate_limit_error`, `insufficient_quota`, `usage_limit_reached`,
    /// `overloaded_error`, `invalid_api_key`, ...), else a generic one
    /// (`http_503`, `connect`, ...). A [`Reason`], so never a message, a key
    /// or a token the upstream echoed.
    pub reason: Reason,
    /// When the account may be used again, if the response said.
    pub reset: Option<ResetHint>,
    /// Quota windows' usage, when the response carried usage headers.
    pub usage: Vec<UsageWindow>,
}
