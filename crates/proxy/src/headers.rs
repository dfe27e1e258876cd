//! Request and response header rewriting: hop-by-hop headers, the client's
//! credentials out, the chosen account's credentials in.

use http::header::{self, HeaderMap, HeaderName};
pub(crate) use marathon_wire::{
    ACCOUNT_HEADER, ATTEMPTS_HEADER, ClientHeaders, CredentialStyle, Lookup, REPLAYABLE_HEADER,
    add_trace_headers,
};

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
/// ([`client_headers`]). The credential headers are
/// `marathon_wire::CLIENT_CREDENTIAL_HEADERS` (a test checks).
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

/// The client headers the proxy removes from every request: [`NOT_FORWARDED`]
/// plus every header any configured provider strips or carries a credential
/// in (hop-by-hop ones are removed by [`strip_hop_by_hop`]).
pub(crate) fn client_headers<'a>(
    styles: impl IntoIterator<Item = &'a CredentialStyle>,
) -> ClientHeaders {
    ClientHeaders::new(&NOT_FORWARDED, &HOP_BY_HOP, styles)
}

/// Prepares a client's request headers for upstream, before the account's
/// credential is added: hop-by-hop headers and `remove`'s out. No allocation:
/// one pass of name comparisons per 64 names, then removals of what is there.
pub(crate) fn prepare_request_headers(h: &mut HeaderMap, remove: &ClientHeaders) {
    strip_hop_by_hop(h);
    for names in remove.names().chunks(64) {
        let present = presence(h, names);
        remove_present(h, names, present);
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use marathon_core::{AccountKind, Secret};

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
    fn every_known_client_credential_header_is_removed_on_every_route() {
        use marathon_config::ProviderKind as K;
        let kinds = [K::Anthropic, K::Openai, K::Codex, K::Google, K::Copilot];
        let styles: Vec<CredentialStyle> = kinds.iter().map(|k| style(*k)).collect();
        let remove = client_headers(&styles);
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
        let remove = client_headers([&anthropic, &custom]);
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
    fn the_credential_headers_are_the_shared_ones() {
        for h in &marathon_wire::CLIENT_CREDENTIAL_HEADERS {
            assert!(NOT_FORWARDED.contains(h), "{h}");
        }
    }
}
