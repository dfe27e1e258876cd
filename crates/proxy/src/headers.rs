//! Request and response header rewriting: hop-by-hop headers, the client's
//! credentials out, the chosen account's credentials in.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use marathon_core::{AccountKind, HeaderLookup, Secret};

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including any named by `Connection`.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none, or only `connection: keep-alive`: one pass of
    // cheap name comparisons (a standard name compares as an integer), then
    // removals of what is there only (a removal hashes the name).
    let present = presence(h, &HOP_BY_HOP);
    if present == 0 {
        return;
    }
    let mut listed: Vec<HeaderName> = Vec::new();
    for v in h.get_all(header::CONNECTION) {
        let v = v.to_str().unwrap_or_default();
        // The usual value names no header.
        if v.eq_ignore_ascii_case("keep-alive") || v.eq_ignore_ascii_case("close") {
            continue;
        }
        for token in v.split(',') {
            let token = token.trim();
            // Connection options, not header names.
            if token.is_empty()
                || token.eq_ignore_ascii_case("keep-alive")
                || token.eq_ignore_ascii_case("close")
            {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(token.as_bytes()) {
                listed.push(n);
            }
        }
    }
    remove_present(h, &HOP_BY_HOP, present);
    for n in &listed {
        h.remove(n);
    }
}

/// Which of `names` (at most 64) `h` has, as a bit set.
fn presence(h: &HeaderMap, names: &[HeaderName]) -> u64 {
    let mut bits = 0u64;
    for k in h.keys() {
        if let Some(i) = names.iter().position(|n| n == k) {
            bits |= 1 << i;
        }
    }
    bits
}

fn remove_present(h: &mut HeaderMap, names: &[HeaderName], bits: u64) {
    for (i, n) in names.iter().enumerate() {
        if bits & (1 << i) != 0 {
            h.remove(n);
        }
    }
}

/// What never goes upstream from a client's request besides hop-by-hop
/// headers: every header a client credential travels in, in any style
/// marathon knows (its own access key, each provider's API keys and tokens,
/// Azure-style `api-key`, cookies), its `host` (the proxy sets the
/// upstream's), and `accept-encoding`, so that error bodies arrive readable
/// for classification. The configured providers' auth styles add theirs
/// ([`ClientHeaders::new`]).
const NOT_FORWARDED: [HeaderName; 8] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    HeaderName::from_static("x-goog-api-key"),
    HeaderName::from_static("x-marathon-key"),
    header::COOKIE,
    header::HOST,
    header::ACCEPT_ENCODING,
];

/// The client headers removed from every request, whatever its route:
/// [`NOT_FORWARDED`] plus every header any configured provider strips or
/// carries a credential in — a client talking to one route may hold another
/// provider's key in that provider's header, and it must not travel either.
#[derive(Clone, Debug)]
pub(crate) struct ClientHeaders(Vec<HeaderName>);

impl ClientHeaders {
    /// The set for these providers' credential styles.
    pub(crate) fn new<'a>(styles: impl IntoIterator<Item = &'a CredentialStyle>) -> Self {
        let mut names = NOT_FORWARDED.to_vec();
        for style in styles {
            for n in style.client_credential_headers() {
                if !names.contains(n) && !HOP_BY_HOP.contains(n) {
                    names.push(n.clone());
                }
            }
        }
        ClientHeaders(names)
    }
}

/// Prepares a client's request headers for upstream, before the account's
/// credential is added: hop-by-hop headers and `remove`'s out. No allocation:
/// one pass of name comparisons per 64 names, then removals of what is there.
pub(crate) fn prepare_request_headers(h: &mut HeaderMap, remove: &ClientHeaders) {
    strip_hop_by_hop(h);
    for names in remove.0.chunks(64) {
        let present = presence(h, names);
        remove_present(h, names, present);
    }
}

/// How a provider's upstream requests carry an account's credential —
/// `marathon_config::AuthStyle`, with header names parsed once at start-up.
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

impl CredentialStyle {
    /// Compiles a config auth style.
    pub fn from_config(style: &marathon_config::AuthStyle) -> Result<Self, BadAuthStyle> {
        let name =
            |n: &str| HeaderName::from_bytes(n.as_bytes()).map_err(|_| BadAuthStyle(n.to_string()));
        let rules = |rs: &[marathon_config::HeaderRule]| -> Result<Vec<Rule>, BadAuthStyle> {
            rs.iter()
                .map(|r| {
                    let value = match &r.value {
                        marathon_config::HeaderSource::Credential { prefix } => {
                            Source::Credential(prefix.clone())
                        }
                        marathon_config::HeaderSource::Static(v) => Source::Static(
                            HeaderValue::from_str(v).map_err(|_| BadAuthStyle(r.name.clone()))?,
                        ),
                        marathon_config::HeaderSource::Extra(k) => Source::Extra(k.clone()),
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
    fn client_credential_headers(&self) -> impl Iterator<Item = &HeaderName> {
        let carries_credential = |r: &&Rule| matches!(r.value, Source::Credential(_));
        self.strip.iter().chain(
            self.api_key
                .iter()
                .chain(&self.oauth)
                .filter(carries_credential)
                .map(|r| &r.name),
        )
    }

    /// Removes the client's credentials and sets the account's.
    #[cfg(test)]
    pub(crate) fn apply(
        &self,
        h: &mut HeaderMap,
        kind: AccountKind,
        secret: &Secret,
        extras: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), InvalidCredential> {
        let rendered = self.render(kind, secret, extras)?;
        prepare_request_headers(h, &ClientHeaders::new([self]));
        self.apply_rendered(h, &rendered);
        Ok(())
    }

    /// The headers that carry an account's credential, built once per
    /// credential (the proxy keeps them with the account).
    pub(crate) fn render(
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
    /// credentials [`prepare_request_headers`] removed.
    pub(crate) fn apply_rendered(&self, h: &mut HeaderMap, rendered: &RenderedCredential) {
        for (name, value, merge) in &rendered.0 {
            if *merge {
                merge_list(h, name, value.clone());
            } else {
                h.insert(name.clone(), value.clone());
            }
        }
    }
}

/// An account's credential headers, ready to insert (values marked sensitive).
pub(crate) struct RenderedCredential(Vec<(HeaderName, HeaderValue, bool)>);

/// The stored credential cannot be a header value (control characters).
#[derive(Debug, thiserror::Error)]
#[error("the account's credential contains characters that cannot be sent in a header; re-add it")]
pub(crate) struct InvalidCredential;

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

/// Every key the client presents (for the optional access-key check). All of
/// them, not the first found: SDKs configured with both an API key and an
/// auth token send `x-api-key` *and* `Authorization`, and either may be the
/// access key.
pub(crate) fn presented_keys(h: &HeaderMap) -> impl Iterator<Item = &str> {
    [
        "x-marathon-key",
        "x-api-key",
        "x-goog-api-key",
        "authorization",
    ]
    .into_iter()
    .flat_map(move |n| {
        h.get_all(n)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v))
    })
}

/// `HeaderLookup` over a hyper header map, for the classifier.
pub(crate) struct Lookup<'a>(pub &'a HeaderMap);

impl HeaderLookup for Lookup<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }

    fn has_prefix(&self, prefix: &str) -> Option<bool> {
        Some(self.0.keys().any(|k| k.as_str().starts_with(prefix)))
    }
}

/// Which account answered (`x-marathon-account`).
pub(crate) static ACCOUNT_HEADER: HeaderName = HeaderName::from_static("x-marathon-account");
/// The attempt trace (`x-marathon-attempts`).
pub(crate) static ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-marathon-attempts");
/// `false` when the request body was too large to be sent more than once.
pub(crate) static REPLAYABLE_HEADER: HeaderName = HeaderName::from_static("x-marathon-replayable");

/// Sets `x-marathon-account` (when an account answered) and
/// `x-marathon-attempts`.
pub(crate) fn add_trace_headers(
    h: &mut HeaderMap,
    account: Option<&str>,
    trace: &marathon_core::decision::AttemptTrace,
) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-foo"),
            ("keep-alive", "timeout=5"),
            ("x-foo", "1"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    fn style(kind: marathon_config::ProviderKind) -> CredentialStyle {
        CredentialStyle::from_config(&marathon_config::presets::default_auth(kind)).unwrap()
    }

    fn extras(pairs: &[(&str, &str)]) -> serde_json::Map<String, serde_json::Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect()
    }

    #[test]
    fn client_credentials_are_replaced_by_the_accounts() {
        let mut h = map(&[
            ("x-api-key", "client-key"),
            ("authorization", "Bearer client"),
            ("anthropic-version", "2023-06-01"),
        ]);
        let secret = Secret::new("sk-ant-account");
        style(marathon_config::ProviderKind::Anthropic)
            .apply(&mut h, AccountKind::ApiKey, &secret, &extras(&[]))
            .unwrap();
        assert_eq!(h.get("x-api-key").unwrap(), "sk-ant-account");
        assert!(h.get("authorization").is_none());
        assert_eq!(h.get("anthropic-version").unwrap(), "2023-06-01");
    }

    /// Guards against a client's credentials travelling upstream next to the
    /// account's: cookies, Azure-style `api-key`, another provider's key
    /// header, the proxy's access key, on every route.
    #[test]
    fn every_known_client_credential_header_is_removed_on_every_route() {
        use marathon_config::ProviderKind as K;
        let kinds = [K::Anthropic, K::Openai, K::Codex, K::Google, K::Copilot];
        let styles: Vec<CredentialStyle> = kinds.iter().map(|k| style(*k)).collect();
        let remove = ClientHeaders::new(&styles);
        let client = [
            ("authorization", "Bearer client"),
            ("x-api-key", "client"),
            ("api-key", "client"),
            ("x-goog-api-key", "client"),
            ("x-marathon-key", "access"),
            ("proxy-authorization", "Basic client"),
            ("cookie", "session=client"),
            ("chatgpt-account-id", "client-workspace"),
            ("host", "proxy"),
            ("accept-encoding", "br"),
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
        ];
        let mut h = map(&client);
        prepare_request_headers(&mut h, &remove);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["anthropic-version", "content-type"]);
        for (kind, st) in kinds.iter().zip(&styles) {
            let mut h = map(&client);
            prepare_request_headers(&mut h, &remove);
            st.apply(
                &mut h,
                AccountKind::ApiKey,
                &Secret::new("acct"),
                &extras(&[]),
            )
            .unwrap();
            for v in h.values() {
                let v = v.to_str().unwrap();
                assert!(
                    !v.contains("client") && !v.contains("access"),
                    "{kind:?}: {v}"
                );
            }
        }
    }

    /// A custom provider's strip list and credential header names apply to
    /// every route, not only its own.
    #[test]
    fn a_configured_providers_credential_headers_are_removed_everywhere() {
        let mut custom =
            marathon_config::presets::default_auth(marathon_config::ProviderKind::Openai);
        custom.strip.push("x-custom-session".into());
        custom.api_key = vec![marathon_config::HeaderRule {
            name: "x-custom-key".into(),
            value: marathon_config::HeaderSource::Credential {
                prefix: String::new(),
            },
            merge: false,
        }];
        let custom = CredentialStyle::from_config(&custom).unwrap();
        let anthropic = style(marathon_config::ProviderKind::Anthropic);
        let remove = ClientHeaders::new([&anthropic, &custom]);
        let mut h = map(&[
            ("x-custom-session", "s"),
            ("x-custom-key", "k"),
            ("anthropic-beta", "b"),
        ]);
        prepare_request_headers(&mut h, &remove);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            left,
            ["anthropic-beta"],
            "a merged, non-credential header stays"
        );
    }

    #[test]
    fn anthropic_oauth_uses_bearer_and_merges_the_oauth_beta() {
        let mut h = map(&[
            ("x-api-key", "client"),
            ("anthropic-beta", "prompt-caching-2024-07-31"),
        ]);
        let secret = Secret::new("sk-ant-oat01-x");
        let st = style(marathon_config::ProviderKind::Anthropic);
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
        style(marathon_config::ProviderKind::Codex)
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
        let err = style(marathon_config::ProviderKind::Openai)
            .apply(&mut h, AccountKind::ApiKey, &secret, &extras(&[]))
            .unwrap_err();
        assert!(!err.to_string().contains("bad"));
    }
}
