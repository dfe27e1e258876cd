//! Scenarios: what the simulated world does, as data.
//!
//! A scenario is a list of accounts, each with the credentials that identify
//! it and the behaviour the simulator shows it. It is written in TOML or JSON
//! (one schema, `deny_unknown_fields`, so a typo is an error rather than a
//! silently ignored line) or built in code with the builder methods on
//! [`Account`].
//!
//! ```toml
//! [[accounts]]
//! name = "alice"
//! key = "sk-alice"
//! quota = { requests = 3, window = "60s", style = "anthropic-unified" }
//!
//! [[accounts]]
//! name = "bob"
//! keys = ["sk-bob", "oauth-bob"]
//! status = 529
//! fail_first = 2
//! ```

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::SimError;

/// A credential an account is known by (an API key or a bearer token).
///
/// The simulator's credentials are fixtures, but they travel through the same
/// logs and error messages as real ones, so they are redacted the same way.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Credential(String);

impl Credential {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Credential(value.into())
    }

    /// The raw value; needed only to match an incoming request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential([redacted])")
    }
}

impl From<&str> for Credential {
    fn from(value: &str) -> Self {
        Credential::new(value)
    }
}

/// A duration written as `"60s"`, `"5m"`, `"5h"`, `"7d"`, `"1h30m"`, `"250ms"`
/// (or a plain integer meaning seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimDuration(pub Duration);

impl SimDuration {
    /// Parses `"60s"`, `"1h30m"`, `"250ms"`, `"7d"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty duration".into());
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!("bad duration {text:?}: expected a number"));
            }
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("bad duration {text:?}: number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let part = match unit {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n.saturating_mul(60)),
                "h" => Duration::from_secs(n.saturating_mul(3600)),
                "d" => Duration::from_secs(n.saturating_mul(86_400)),
                "" => {
                    return Err(format!(
                        "bad duration {text:?}: missing unit (ms, s, m, h, d)"
                    ));
                }
                other => return Err(format!("bad duration {text:?}: unknown unit {other:?}")),
            };
            total = total.saturating_add(part);
        }
        Ok(SimDuration(total))
    }
}

impl fmt::Display for SimDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl Serialize for SimDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SimDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(SimDuration(Duration::from_secs(n))),
            Raw::Text(t) => SimDuration::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// How an over-quota account answers: the provider whose headers and bodies
/// the 429 (and the usage headers on 200s) imitate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuotaStyle {
    /// Anthropic API key: `retry-after` and `anthropic-ratelimit-requests-*` (RFC 3339 resets).
    AnthropicApi,
    /// Claude subscription: `anthropic-ratelimit-unified-*` 5h/7d windows (epoch resets), on 200s too.
    AnthropicUnified,
    /// OpenAI API key: `x-ratelimit-*-requests` (Go durations) and `rate_limit_exceeded`.
    #[serde(rename = "openai")]
    OpenAi,
    /// ChatGPT/Codex: `x-codex-primary-*` usage headers on every response, `usage_limit_reached`.
    Codex,
    /// Google Code Assist (Gemini CLI logins): `RESOURCE_EXHAUSTED` with a
    /// `cloudcode-pa` `ErrorInfo` and `RetryInfo.retryDelay`.
    Google,
    /// The Gemini API (API keys): `RESOURCE_EXHAUSTED` with a free-tier
    /// `QuotaFailure` (per minute, or per day past an hour's window) and
    /// `RetryInfo.retryDelay` in whole seconds; the default on Gemini routes.
    GeminiApi,
    /// GitHub Copilot: only a human sentence ("... try again in 2 hours").
    Copilot,
}

/// A fixed request quota per window.
///
/// The window starts with the first admitted request and ends `window` later;
/// requests past `requests` in one window get a 429 whose reset hints name the
/// window's real end. Rejected requests do not use up quota.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Requests admitted per window (0: every request is rejected).
    pub requests: u64,
    /// Window length.
    pub window: SimDuration,
    /// Header/body style; when absent, follows the route (Anthropic API on
    /// `/messages`, the Gemini API on Gemini routes, OpenAI elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<QuotaStyle>,
}

impl Quota {
    /// `requests` per `window` in the given style.
    pub fn new(requests: u64, window: Duration, style: QuotaStyle) -> Self {
        Quota {
            requests,
            window: SimDuration(window),
            style: Some(style),
        }
    }
}

/// A named failure body. Each has a default status; `status` overrides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 500, Anthropic `api_error` / OpenAI `server_error`.
    ApiError,
    /// 502, a bad gateway from the provider's edge.
    BadGateway,
    /// 529, Anthropic `overloaded_error` (OpenAI routes: `server_is_overloaded`).
    Overloaded,
    /// 503, Codex/OpenAI `server_is_overloaded` (Anthropic routes: `overloaded_error`).
    ServerIsOverloaded,
    /// 429, OpenAI `insufficient_quota` (billing, not a rate limit).
    InsufficientQuota,
    /// 402, Codex `{"detail":{"code":"deactivated_workspace"}}`.
    DeactivatedWorkspace,
    /// 403, Codex `usage_not_included` (the plan lacks access).
    UsageNotIncluded,
    /// 403, Anthropic `permission_error` / OpenAI permission message.
    Permission,
    /// 400, Anthropic "Your credit balance is too low".
    Billing,
    /// 400, `invalid_request_error`.
    InvalidRequest,
    /// 404, `not_found_error` / `model_not_found`.
    NotFound,
}

impl ErrorKind {
    /// The status this failure has unless the account says otherwise.
    pub fn default_status(self) -> u16 {
        match self {
            ErrorKind::ApiError => 500,
            ErrorKind::BadGateway => 502,
            ErrorKind::Overloaded => 529,
            ErrorKind::ServerIsOverloaded => 503,
            ErrorKind::InsufficientQuota => 429,
            ErrorKind::DeactivatedWorkspace => 402,
            ErrorKind::UsageNotIncluded | ErrorKind::Permission => 403,
            ErrorKind::Billing | ErrorKind::InvalidRequest => 400,
            ErrorKind::NotFound => 404,
        }
    }
}

/// What a mid-stream `event: error` says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamErrorKind {
    /// `overloaded_error` / `server_is_overloaded`.
    #[default]
    Overloaded,
    /// `rate_limit_error` / `rate_limit_exceeded`.
    RateLimit,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Credential>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(Credential),
        Many(Vec<Credential>),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::One(c) => vec![c],
        Raw::Many(v) => v,
    })
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One simulated account: who it is, how it is recognised, what it does.
///
/// Order of effects for each request the account makes (1-based count `n`):
/// while `n <= fail_first` (or always, without `fail_first`) the failure mode
/// answers — `expired` (401), else `reset` (connection dropped), else
/// `status`/`error`; otherwise the quota decides between 429 and success.
/// Successful streams honour `stream_events`, `slow_ms` and `stream_error_after`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// Unique name; counts are reported under it.
    pub name: String,
    /// Credentials accepted as `x-api-key`, `x-goog-api-key` or `Authorization: Bearer`.
    /// In files, `key = "..."` or `keys = [...]`.
    #[serde(
        default,
        alias = "key",
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub keys: Vec<Credential>,
    /// A request quota per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    /// Fail with this status (body chosen by route and `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Fail with this named body (status defaults from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorKind>,
    /// `retry-after` seconds to send with a `status`/`error` failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Only the first N requests fail; later ones behave as `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_first: Option<u64>,
    /// The credential has expired: 401 with the provider's expiry message.
    #[serde(default, skip_serializing_if = "is_false")]
    pub expired: bool,
    /// Close the connection (TCP RST) before any response byte.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reset: bool,
    /// On streams: after N SSE events send an `event: error` and end the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_error_after: Option<u64>,
    /// What the mid-stream error says.
    #[serde(default)]
    pub stream_error: StreamErrorKind,
    /// Delay before each SSE event after the first (and before a JSON answer).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub slow_ms: u64,
    /// Number of text deltas in a stream (default: one per word of the reply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_events: Option<u64>,
}

impl Account {
    /// A healthy account known by one credential.
    pub fn ok(name: impl Into<String>, key: impl Into<String>) -> Self {
        Account {
            name: name.into(),
            keys: vec![Credential::new(key)],
            ..Account::default()
        }
    }

    /// Adds another credential.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(Credential::new(key));
        self
    }

    /// Sets a quota.
    pub fn quota(mut self, requests: u64, window: Duration, style: QuotaStyle) -> Self {
        self.quota = Some(Quota::new(requests, window, style));
        self
    }

    /// Fails with `status`.
    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Fails with a named body.
    pub fn error(mut self, kind: ErrorKind) -> Self {
        self.error = Some(kind);
        self
    }

    /// Sends `retry-after: secs` with the failure.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Only the first `n` requests fail.
    pub fn fail_first(mut self, n: u64) -> Self {
        self.fail_first = Some(n);
        self
    }

    /// The credential is expired (401).
    pub fn expired(mut self) -> Self {
        self.expired = true;
        self
    }

    /// Connections are reset before the response.
    pub fn reset(mut self) -> Self {
        self.reset = true;
        self
    }

    /// Streams break with an error event after `n` events.
    pub fn stream_error_after(mut self, n: u64, kind: StreamErrorKind) -> Self {
        self.stream_error_after = Some(n);
        self.stream_error = kind;
        self
    }

    /// Delay per SSE event.
    pub fn slow_ms(mut self, ms: u64) -> Self {
        self.slow_ms = ms;
        self
    }

    /// Number of text deltas per stream.
    pub fn stream_events(mut self, n: u64) -> Self {
        self.stream_events = Some(n);
        self
    }

    /// Whether any failure mode is configured.
    fn has_failure_mode(&self) -> bool {
        self.expired || self.reset || self.status.is_some() || self.error.is_some()
    }

    /// Whether successful streams need per-request generation (not the fast path).
    pub(crate) fn customises_streams(&self) -> bool {
        self.stream_error_after.is_some() || self.slow_ms > 0 || self.stream_events.is_some()
    }
}

/// The whole simulated world.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Benchmark mode: precomputed bodies, no request parsing, no logging.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fast: bool,
    /// Model name used when a request names none (and always in fast mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The assistant's answer; streams send it word by word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// RFC 7662 endpoint that validates bearer tokens no account lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection_url: Option<String>,
    /// Client id for the introspection call (HTTP Basic with the secret, or a form field alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection_client_id: Option<String>,
    /// Client secret for the introspection call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection_client_secret: Option<Credential>,
    /// How long an active token is trusted without asking again (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection_cache: Option<SimDuration>,
    /// The accounts.
    #[serde(default)]
    pub accounts: Vec<Account>,
}

/// The reply used when a scenario sets none.
pub(crate) const DEFAULT_REPLY: &str = "Hello from the marathon simulator.";
/// The model used when neither request nor scenario names one.
pub(crate) const DEFAULT_MODEL: &str = "sim-model-1";

impl Scenario {
    /// A scenario with these accounts.
    pub fn new(accounts: impl IntoIterator<Item = Account>) -> Self {
        Scenario {
            accounts: accounts.into_iter().collect(),
            ..Scenario::default()
        }
    }

    /// Adds an account.
    pub fn account(mut self, account: Account) -> Self {
        self.accounts.push(account);
        self
    }

    /// Turns on fast mode.
    pub fn fast(mut self) -> Self {
        self.fast = true;
        self
    }

    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Self, SimError> {
        let s: Scenario = toml::from_str(text).map_err(|e| SimError::Parse(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Parses JSON.
    pub fn from_json(text: &str) -> Result<Self, SimError> {
        let s: Scenario = serde_json::from_str(text).map_err(|e| SimError::Parse(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Reads a file: JSON if it ends in `.json`, TOML otherwise.
    pub fn from_file(path: &std::path::Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path).map_err(|e| SimError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            Scenario::from_json(&text)
        } else {
            Scenario::from_toml(&text)
        };
        parsed.map_err(|e| match e {
            SimError::Parse(m) | SimError::Invalid(m) => SimError::Read {
                path: path.display().to_string(),
                message: m,
            },
            other => other,
        })
    }

    /// Checks what serde cannot: unique names and credentials, sensible statuses.
    pub fn validate(&self) -> Result<(), SimError> {
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        for a in &self.accounts {
            validate_account(a)?;
            if !names.insert(a.name.as_str()) {
                return Err(SimError::Invalid(format!(
                    "account {:?} is defined twice",
                    a.name
                )));
            }
            for k in &a.keys {
                if !keys.insert(k.expose()) {
                    // Name the account, never the credential.
                    return Err(SimError::Invalid(format!(
                        "account {:?} reuses a credential of another account",
                        a.name
                    )));
                }
            }
        }
        if let Some(url) = &self.introspection_url {
            let uri: http::Uri = url.parse().map_err(|_| {
                SimError::Invalid(format!("introspection_url {url:?} is not a URL"))
            })?;
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(SimError::Invalid(format!(
                    "introspection_url {url:?} must be an http:// URL (the simulator speaks no TLS)"
                )));
            }
        }
        Ok(())
    }
}

pub(crate) fn validate_account(a: &Account) -> Result<(), SimError> {
    let bad = |m: String| Err(SimError::Invalid(format!("account {:?}: {m}", a.name)));
    if a.name.is_empty() || a.name.contains('/') {
        return bad("name must be non-empty and contain no '/'".into());
    }
    if a.keys.iter().any(|k| k.expose().is_empty()) {
        return bad("empty credential".into());
    }
    if let Some(s) = a.status
        && !(400..=599).contains(&s)
    {
        return bad(format!("status {s} is not an error status (400..=599)"));
    }
    if a.fail_first.is_some() && !a.has_failure_mode() {
        return bad("fail_first needs a failure: status, error, expired or reset".into());
    }
    if let Some(q) = &a.quota
        && q.window.0.is_zero()
    {
        return bad("quota window must be longer than zero".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_config_files() {
        let p = |t: &str| SimDuration::parse(t).map(|d| d.0);
        assert_eq!(p("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(p("5h"), Ok(Duration::from_secs(5 * 3600)));
        assert_eq!(p("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(p("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(p("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(p("60").is_err());
        assert!(p("s").is_err());
        assert!(p("5w").is_err());
        assert!(p("").is_err());
    }

    #[test]
    fn toml_scenario_reads_in_a_few_lines() {
        let s = Scenario::from_toml(
            r#"
            [[accounts]]
            name = "alice"
            key = "sk-alice"
            quota = { requests = 3, window = "60s", style = "anthropic-unified" }

            [[accounts]]
            name = "bob"
            keys = ["sk-bob", "oauth-bob"]
            status = 529
            fail_first = 2
            "#,
        )
        .unwrap();
        assert_eq!(s.accounts.len(), 2);
        assert_eq!(
            s.accounts[0].quota,
            Some(Quota::new(
                3,
                Duration::from_secs(60),
                QuotaStyle::AnthropicUnified
            ))
        );
        assert_eq!(s.accounts[1].keys.len(), 2);
        assert_eq!(s.accounts[1].status, Some(529));
        assert_eq!(s.accounts[1].fail_first, Some(2));
    }

    #[test]
    fn json_and_code_agree() {
        let code = Scenario::new([
            Account::ok("a", "k1").quota(2, Duration::from_secs(60), QuotaStyle::OpenAi),
            Account::ok("b", "k2").error(ErrorKind::InsufficientQuota),
        ]);
        let json = serde_json::to_string(&code).unwrap();
        assert_eq!(Scenario::from_json(&json).unwrap(), code);
        let parsed = Scenario::from_json(
            r#"{"accounts":[{"name":"a","key":"k1","quota":{"requests":2,"window":"60s","style":"openai"}},
                            {"name":"b","keys":["k2"],"error":"insufficient_quota"}]}"#,
        )
        .unwrap();
        assert_eq!(parsed, code);
    }

    #[test]
    fn typos_and_contradictions_are_errors() {
        let e = Scenario::from_toml("[[accounts]]\nname = \"a\"\nstatuss = 500\n").unwrap_err();
        assert!(e.to_string().contains("statuss"), "{e}");
        let e = Scenario::from_toml("[[accounts]]\nname=\"a\"\nfail_first=2\n").unwrap_err();
        assert!(e.to_string().contains("fail_first needs"), "{e}");
        let e = Scenario::from_toml("[[accounts]]\nname=\"a\"\nstatus=200\n").unwrap_err();
        assert!(e.to_string().contains("status 200"), "{e}");
        let e = Scenario::from_toml(
            "[[accounts]]\nname=\"a\"\nkey=\"sk-same\"\n[[accounts]]\nname=\"b\"\nkey=\"sk-same\"\n",
        )
        .unwrap_err();
        assert!(!e.to_string().contains("sk-same"), "credential leaked: {e}");
        let e = Scenario::from_toml("introspection_url = \"https://x\"\n").unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
    }

    #[test]
    fn credentials_are_redacted_in_debug() {
        let a = Account::ok("alice", "sk-top-secret");
        assert!(!format!("{a:?}").contains("sk-top-secret"));
    }
}
