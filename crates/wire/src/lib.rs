//! # marathon-wire: what both faces put on the wire
//!
//! What both of marathon's faces — the proxy and the in-process HTTP client
//! middleware — put on the wire, as data: how a provider's requests carry an
//! account's credential ([`CredentialStyle`], compiled from [`AuthStyle`]),
//! which client headers never go upstream, the trace headers, and
//! marathon's own answers in each provider's error format. Nothing here
//! knows hyper or reqwest; both speak the `http` crate's types.

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use marathon_core::decision::AttemptTrace;
use marathon_core::{AccountKind, ApiFlavor, HeaderLookup, Secret};
use serde_json::json;

mod refusal;
pub use refusal::{Audience, refusal_answer};

use marathon_config::{AuthStyle, HeaderRule, HeaderSource};

/// The headers a client credential travels in, in any style marathon
/// knows (its own access key, each provider's API keys and tokens,
/// Azure-style `api-key`, cookies). They never go upstream: the account's
/// credential always replaces them. The configured providers' auth styles
/// add theirs ([`ClientHeaders::new`]).
pub const CLIENT_CREDENTIAL_HEADERS: [HeaderName; 6] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    HeaderName::from_static("x-goog-api-key"),
    HeaderName::from_static("x-marathon-key"),
    header::COOKIE,
];

/// The client headers removed from every request, whatever its provider:
/// a base list plus every header any configured provider strips or carries
/// a credential in — a client talking to one provider may hold another
/// provider's key in that provider's header, and it must not travel either.
#[derive(Clone, Debug)]
pub struct ClientHeaders(Vec<HeaderName>);

impl ClientHeaders {
    /// `base`, then the names these providers' credential styles add that
    /// are neither in `base` nor in `skip` (headers the caller removes
    /// another way).
    pub fn new<'a>(
        base: &[HeaderName],
        skip: &[HeaderName],
        styles: impl IntoIterator<Item = &'a CredentialStyle>,
    ) -> Self {
        let mut names = base.to_vec();
        for style in styles {
            for n in style.client_credential_headers() {
                if !names.contains(n) && !skip.contains(n) {
                    names.push(n.clone());
                }
            }
        }
        ClientHeaders(names)
    }

    /// The names, base first.
    pub fn names(&self) -> &[HeaderName] {
        &self.0
    }

    /// Removes every one of them from `h`.
    pub fn remove_from(&self, h: &mut HeaderMap) {
        for n in &self.0 {
            h.remove(n);
        }
    }
}

/// Which account answered (`x-marathon-account`).
pub static ACCOUNT_HEADER: HeaderName = HeaderName::from_static("x-marathon-account");
/// The attempt trace (`x-marathon-attempts`).
pub static ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-marathon-attempts");
/// `false` when the request body could be sent only once.
pub static REPLAYABLE_HEADER: HeaderName = HeaderName::from_static("x-marathon-replayable");

/// How a provider's upstream requests carry an account's credential —
/// [`AuthStyle`], with header names and static values parsed once.
#[derive(Clone, Debug)]
pub struct CredentialStyle {
    strip: Vec<HeaderName>,
    api_key: Vec<Rule>,
    oauth: Vec<Rule>,
}

#[derive(Clone, Debug)]
struct Rule {
    name: HeaderName,
    value: Source,
    merge: bool,
}

#[derive(Clone, Debug)]
enum Source {
    Credential(String),
    Static(HeaderValue),
    Extra(String),
}

/// A header name or value in the auth style is not valid HTTP.
#[derive(Debug, thiserror::Error)]
#[error("invalid header {0:?} in the provider's auth settings")]
pub struct BadAuthStyle(String);

/// The stored credential cannot be a header value (control characters).
#[derive(Debug, thiserror::Error)]
#[error("the account's credential contains characters that cannot be sent in a header; re-add it")]
pub struct InvalidCredential;

/// An account's credential headers, ready to insert (values marked
/// sensitive). Built once per credential, not per request.
#[derive(Clone)]
pub struct RenderedCredential(Vec<(HeaderName, HeaderValue, bool)>);

impl std::fmt::Debug for RenderedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|(n, _, _)| n.as_str()).collect();
        f.debug_tuple("RenderedCredential").field(&names).finish()
    }
}

impl CredentialStyle {
    /// Compiles a config auth style.
    pub fn from_config(style: &AuthStyle) -> Result<Self, BadAuthStyle> {
        let name =
            |n: &str| HeaderName::from_bytes(n.as_bytes()).map_err(|_| BadAuthStyle(n.to_string()));
        let rules = |rs: &[HeaderRule]| -> Result<Vec<Rule>, BadAuthStyle> {
            rs.iter()
                .map(|r| {
                    let value = match &r.value {
                        HeaderSource::Credential { prefix } => Source::Credential(prefix.clone()),
                        HeaderSource::Static(v) => Source::Static(
                            HeaderValue::from_str(v).map_err(|_| BadAuthStyle(r.name.clone()))?,
                        ),
                        HeaderSource::Extra(k) => Source::Extra(k.clone()),
                    };
                    Ok(Rule {
                        name: name(&r.name)?,
                        value,
                        merge: r.merge,
                    })
                })
                .collect()
        };
        let strip: Vec<HeaderName> = style
            .strip
            .iter()
            .map(|n| name(n))
            .collect::<Result<_, _>>()?;
        Ok(CredentialStyle {
            strip,
            api_key: rules(&style.api_key)?,
            oauth: rules(&style.oauth)?,
        })
    }

    /// The client headers this style removes or puts a credential in: its
    /// strip list and the names of its credential-carrying headers.
    pub fn client_credential_headers(&self) -> impl Iterator<Item = &HeaderName> {
        let carries_credential = |r: &&Rule| matches!(r.value, Source::Credential(_));
        self.strip.iter().chain(
            self.api_key
                .iter()
                .chain(&self.oauth)
                .filter(carries_credential)
                .map(|r| &r.name),
        )
    }

    /// Removes the client's credentials (those of [`CLIENT_CREDENTIAL_HEADERS`]
    /// and this style) and sets the account's. The faces remove them once
    /// per request with a [`ClientHeaders`] for every provider, then use
    /// [`CredentialStyle::apply_rendered`].
    pub fn apply(
        &self,
        h: &mut HeaderMap,
        kind: AccountKind,
        secret: &Secret,
        extras: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), InvalidCredential> {
        let rendered = self.render(kind, secret, extras)?;
        ClientHeaders::new(&CLIENT_CREDENTIAL_HEADERS, &[], [self]).remove_from(h);
        self.apply_rendered(h, &rendered);
        Ok(())
    }

    /// The headers that carry an account's credential.
    pub fn render(
        &self,
        kind: AccountKind,
        secret: &Secret,
        extras: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<RenderedCredential, InvalidCredential> {
        let rules = match kind {
            AccountKind::ApiKey => &self.api_key,
            AccountKind::Oauth => &self.oauth,
        };
        let mut headers = Vec::with_capacity(rules.len());
        for rule in rules {
            let value = match &rule.value {
                Source::Credential(prefix) => {
                    let secret = secret.expose().as_bytes();
                    let mut v = bytes::BytesMut::with_capacity(prefix.len() + secret.len());
                    v.extend_from_slice(prefix.as_bytes());
                    v.extend_from_slice(secret);
                    let mut v = HeaderValue::from_maybe_shared(v.freeze())
                        .map_err(|_| InvalidCredential)?;
                    v.set_sensitive(true);
                    v
                }
                Source::Static(v) => v.clone(),
                Source::Extra(key) => match extras
                    .get(key)
                    .and_then(|v| v.as_str())
                    .and_then(|v| HeaderValue::from_str(v).ok())
                {
                    Some(v) => v,
                    None => continue,
                },
            };
            headers.push((rule.name.clone(), value, rule.merge));
        }
        Ok(RenderedCredential(headers))
    }

    /// Sets the rendered credential headers, on headers whose client
    /// credentials a [`ClientHeaders`] removed.
    pub fn apply_rendered(&self, h: &mut HeaderMap, rendered: &RenderedCredential) {
        for (name, value, merge) in &rendered.0 {
            if *merge {
                merge_list(h, name, value.clone());
            } else {
                h.insert(name.clone(), value.clone());
            }
        }
    }
}

/// Adds `value` to a comma-separated header the client may have sent, once.
fn merge_list(h: &mut HeaderMap, name: &HeaderName, value: HeaderValue) {
    let Ok(flag) = value.to_str() else { return };
    let merged = match h.get(name).and_then(|v| v.to_str().ok()) {
        Some(existing) if existing.split(',').any(|f| f.trim() == flag) => return,
        Some(existing) if !existing.trim().is_empty() => format!("{existing},{flag}"),
        _ => flag.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&merged) {
        h.insert(name.clone(), v);
    }
}

/// [`HeaderLookup`] over an `http` header map, for the classifier.
pub struct Lookup<'a>(pub &'a HeaderMap);

impl HeaderLookup for Lookup<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }

    fn has_prefix(&self, prefix: &str) -> Option<bool> {
        Some(self.0.keys().any(|k| k.as_str().starts_with(prefix)))
    }
}

/// Classifies an upstream answer from its status, headers and the first
/// body chunks read (an error body, or the first events of a stream): the
/// one way both faces turn an answer into a
/// [`Classification`](marathon_core::outcome::Classification).
pub fn classify_answer(
    flavor: marathon_core::ApiFlavor,
    status: http::StatusCode,
    headers: &HeaderMap,
    prefix: &std::collections::VecDeque<bytes::Bytes>,
    now: marathon_core::UnixMillis,
) -> marathon_core::outcome::Classification {
    let body = contiguous(prefix);
    marathon_core::classify::classify(
        flavor,
        &marathon_core::outcome::Outcome::Response {
            status: status.as_u16(),
            headers: &Lookup(headers),
            body: &body,
        },
        now,
    )
}

/// The chunks read so far as one buffer, for classifying an answer's head
/// and first bytes (one chunk, the usual case, is shared, not copied).
pub fn contiguous(chunks: &std::collections::VecDeque<bytes::Bytes>) -> bytes::Bytes {
    match chunks.len() {
        0 => bytes::Bytes::new(),
        1 => chunks[0].clone(),
        _ => {
            let mut b = bytes::BytesMut::new();
            for c in chunks {
                b.extend_from_slice(c);
            }
            b.freeze()
        }
    }
}

/// Whether a response is a server-sent event stream.
pub fn is_event_stream(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Sets `x-marathon-account` (when an account answered) and
/// `x-marathon-attempts`.
pub fn add_trace_headers(h: &mut HeaderMap, account: Option<&str>, trace: &AttemptTrace) {
    if let Some(a) = account.and_then(|a| HeaderValue::from_str(a).ok()) {
        h.insert(ACCOUNT_HEADER.clone(), a);
    }
    // No upstream attempt (every account was already benched): no header,
    // rather than an empty one.
    // `from_maybe_shared` takes the formatted string's buffer without a copy.
    if let Some(v) = (!trace.is_empty())
        .then(|| HeaderValue::from_maybe_shared(bytes::Bytes::from(trace.to_string())).ok())
        .flatten()
    {
        h.insert(ATTEMPTS_HEADER.clone(), v);
    }
}

/// One of marathon's own answers: status, headers, JSON body.
#[derive(Debug)]
pub struct OwnAnswer {
    /// HTTP status.
    pub status: StatusCode,
    /// `content-type`, `retry-after`, trace headers.
    pub headers: HeaderMap,
    /// The JSON body, in the provider's error format.
    pub body: String,
}

/// An error body in the provider's format.
pub fn error_body(
    flavor: ApiFlavor,
    status: StatusCode,
    kind: &str,
    message: &str,
) -> serde_json::Value {
    match flavor {
        ApiFlavor::Anthropic => {
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        ApiFlavor::Google => {
            json!({"error": {"code": status.as_u16(), "message": message, "status": kind}})
        }
        ApiFlavor::Openai | ApiFlavor::Copilot => {
            json!({"error": {"message": message, "type": kind, "param": null, "code": kind}})
        }
    }
}

pub(crate) fn json_answer(status: StatusCode, body: &serde_json::Value) -> OwnAnswer {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    OwnAnswer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// A marathon-side failure (bad path, unreadable body, ...), `marathon: `
/// before the message.
pub fn own_error(flavor: ApiFlavor, status: StatusCode, message: &str) -> OwnAnswer {
    json_answer(
        status,
        &error_body(
            flavor,
            status,
            error_kind(flavor, status),
            &format!("marathon: {message}"),
        ),
    )
}

/// The provider's error type for a status marathon answers with.
pub(crate) fn error_kind(flavor: ApiFlavor, status: StatusCode) -> &'static str {
    match (flavor, status.as_u16()) {
        (ApiFlavor::Anthropic, 429) => "rate_limit_error",
        (ApiFlavor::Anthropic, 400..=499) => "invalid_request_error",
        (ApiFlavor::Anthropic, _) => "api_error",
        (ApiFlavor::Google, 429) => "RESOURCE_EXHAUSTED",
        (ApiFlavor::Google, 400..=499) => "INVALID_ARGUMENT",
        (ApiFlavor::Google, _) => "UNAVAILABLE",
        (_, 429) => "rate_limit_exceeded",
        (_, 400..=499) => "invalid_request_error",
        _ => "upstream_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use marathon_config::ProviderKind;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn style(kind: ProviderKind) -> CredentialStyle {
        CredentialStyle::from_config(&marathon_config::presets::default_auth(kind)).unwrap()
    }

    fn extras(pairs: &[(&str, &str)]) -> serde_json::Map<String, serde_json::Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect()
    }

    #[test]
    fn usage_windows_are_read_through_the_header_map_and_skipped_when_absent() {
        let h = map(&[
            ("anthropic-ratelimit-unified-5h-utilization", "0.42"),
            ("anthropic-ratelimit-unified-5h-reset", "1764334800"),
            ("x-codex-primary-used-percent", "37.5"),
        ]);
        assert_eq!(Lookup(&h).has_prefix("x-codex-"), Some(true));
        let w = marathon_core::hints::usage_windows(&Lookup(&h));
        let names: Vec<&str> = w.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["5h", "primary"]);
        assert!((w[0].utilization - 0.42).abs() < 1e-9);
        let plain = map(&[("content-type", "application/json")]);
        assert_eq!(Lookup(&plain).has_prefix("x-codex-"), Some(false));
        assert!(marathon_core::hints::usage_windows(&Lookup(&plain)).is_empty());
    }

    #[test]
    fn client_credentials_are_replaced_by_the_accounts() {
        let mut h = map(&[
            ("x-api-key", "client-key"),
            ("authorization", "Bearer client"),
            ("anthropic-version", "2023-06-01"),
        ]);
        let secret = Secret::new("sk-ant-account");
        style(ProviderKind::Anthropic)
            .apply(&mut h, AccountKind::ApiKey, &secret, &extras(&[]))
            .unwrap();
        assert_eq!(h.get("x-api-key").unwrap(), "sk-ant-account");
        assert!(h.get("authorization").is_none());
        assert_eq!(h.get("anthropic-version").unwrap(), "2023-06-01");
    }

    #[test]
    fn anthropic_oauth_uses_bearer_and_merges_the_oauth_beta() {
        let mut h = map(&[
            ("x-api-key", "client"),
            ("anthropic-beta", "prompt-caching-2024-07-31"),
        ]);
        let secret = Secret::new("sk-ant-oat01-x");
        let st = style(ProviderKind::Anthropic);
        st.apply(&mut h, AccountKind::Oauth, &secret, &extras(&[]))
            .unwrap();
        st.apply(&mut h, AccountKind::Oauth, &secret, &extras(&[]))
            .unwrap();
        assert_eq!(h.get("authorization").unwrap(), "Bearer sk-ant-oat01-x");
        assert!(h.get("x-api-key").is_none());
        assert_eq!(
            h.get("anthropic-beta").unwrap(),
            "prompt-caching-2024-07-31,oauth-2025-04-20"
        );
    }

    #[test]
    fn codex_sends_the_workspace_account_id_from_extras() {
        let mut h = map(&[("chatgpt-account-id", "client-chosen")]);
        let secret = Secret::new("eyJ...");
        style(ProviderKind::Codex)
            .apply(
                &mut h,
                AccountKind::Oauth,
                &secret,
                &extras(&[("chatgpt_account_id", "acc-123")]),
            )
            .unwrap();
        assert_eq!(h.get("authorization").unwrap(), "Bearer eyJ...");
        assert_eq!(h.get("chatgpt-account-id").unwrap(), "acc-123");
    }

    #[test]
    fn a_credential_with_a_newline_is_refused_without_echoing_it() {
        let mut h = HeaderMap::new();
        let secret = Secret::new("bad\nkey");
        let err = style(ProviderKind::Openai)
            .apply(&mut h, AccountKind::ApiKey, &secret, &extras(&[]))
            .unwrap_err();
        assert!(!err.to_string().contains("bad"));
    }

    #[test]
    fn error_bodies_follow_each_providers_format() {
        let a = error_body(
            ApiFlavor::Anthropic,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "m",
        );
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "rate_limit_error");
        let o = error_body(
            ApiFlavor::Openai,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "m",
        );
        assert_eq!(o["error"]["code"], "rate_limit_exceeded");
        let g = error_body(
            ApiFlavor::Google,
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "m",
        );
        assert_eq!(g["error"]["code"], 429);
    }
}
