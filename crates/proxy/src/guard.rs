//! What a client may ask of the proxy, checked before any work: the methods
//! an LLM API uses, paths that stay under the provider's upstream prefix,
//! no client credential in the query string, and session ids reduced to a
//! fixed-size key. Each check is a small function `forward` calls; none
//! allocates for an ordinary request.

use std::borrow::Cow;
use std::hash::BuildHasher;

use http::{Method, StatusCode};
use marathon_core::pool::SessionKey;

use crate::body::ProxyBody;
use crate::errors::proxy_error;

/// The most bytes of request head (request line and headers) a client may
/// send. SDKs send a few kilobytes; 64 KiB is twice what the providers' own
/// front ends take (Cloudflare refuses heads past 32 KiB). Past it hyper
/// answers 431 and closes, before any of it is kept.
pub(crate) const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// The methods provider APIs use: GET/POST everywhere, DELETE for files,
/// batches, models and stored responses, PATCH and PUT for the few update
/// calls (Gemini cached contents), HEAD for probes and OPTIONS for browser
/// preflights. TRACE (which echoes the request, credentials included),
/// CONNECT (a tunnel) and extension methods have no place in front of an API.
pub(crate) const ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Whether the proxy forwards `method`.
pub(crate) fn method_allowed(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::OPTIONS
    )
}

/// The answer to a request the proxy will not forward, if it is one: 405 for
/// a method it does not forward, 400 for a path that could leave the
/// provider's upstream prefix. `path` is the part after `/<provider>`.
pub(crate) fn refuse(
    flavor: marathon_core::ApiFlavor,
    method: &Method,
    path: &str,
) -> Option<http::Response<ProxyBody>> {
    if !method_allowed(method) {
        let mut r = proxy_error(
            flavor,
            StatusCode::METHOD_NOT_ALLOWED,
            "marathon does not forward this method",
        );
        r.headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static(ALLOW));
        return Some(r);
    }
    if !path_is_safe(path) {
        return Some(proxy_error(
            flavor,
            StatusCode::BAD_REQUEST,
            "the request path has a \".\" or \"..\" segment or an encoded slash or backslash; marathon does not forward it",
        ));
    }
    None
}

/// Whether `path` names something under the upstream prefix it is appended
/// to, however the upstream (or anything between) decodes it: no `.` or `..`
/// segment, literal or percent-encoded in any case (`%2e%2e`, `.%2E`), and no
/// encoded separator (`%2f`, `%5c`) or backslash that a decoding server
/// could turn into one.
pub(crate) fn path_is_safe(path: &str) -> bool {
    let b = path.as_bytes();
    // The usual path has neither, and then has no dot segment either.
    if !b.iter().any(|&c| c == b'.' || c == b'%' || c == b'\\') {
        return true;
    }
    if b.contains(&b'\\') {
        return false;
    }
    let encoded_separator = b.windows(3).any(|w| {
        w[0] == b'%'
            && ((w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'))
                || (w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c')))
    });
    !encoded_separator && !path.split('/').any(is_dot_segment)
}

/// `.` or `..`, each dot literal or `%2e`/`%2E`.
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        match rest {
            [b'.', tail @ ..] => rest = tail,
            [b'%', b'2', e, tail @ ..] if e.eq_ignore_ascii_case(&b'e') => rest = tail,
            _ => return false,
        }
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

/// Query parameters that carry a credential in some API: `key` (Google's API
/// key), `access_token` and `oauth_token` (OAuth bearer tokens, RFC 6750
/// §2.3 and Google's older name), `api_key`/`api-key` (other gateways).
/// Compared after percent-decoding the name, as the upstream would.
const CREDENTIAL_PARAMS: [&[u8]; 5] = [
    b"key",
    b"access_token",
    b"oauth_token",
    b"api_key",
    b"api-key",
];

/// The query without the client's credentials: `None` when nothing is left,
/// borrowed (no copy) when there was none to remove.
pub(crate) fn query_without_credentials(query: Option<&str>) -> Option<Cow<'_, str>> {
    let query = query?;
    if !query.split('&').any(is_credential_param) {
        return (!query.is_empty()).then_some(Cow::Borrowed(query));
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !is_credential_param(p))
        .collect();
    (!kept.is_empty()).then(|| Cow::Owned(kept.join("&")))
}

/// Whether `name=value` (or a bare `name`) has a credential's name.
fn is_credential_param(param: &str) -> bool {
    let name = param.split_once('=').map_or(param, |(n, _)| n).as_bytes();
    // The longest credential name, percent-encoded in full, is 3 × 12 bytes.
    if name.is_empty() || name.len() > 36 {
        return false;
    }
    let mut decoded = [0u8; 36];
    let mut len = 0;
    let mut i = 0;
    while i < name.len() {
        let byte = match name[i] {
            b'%' if i + 2 < name.len() => match (hex(name[i + 1]), hex(name[i + 2])) {
                (Some(h), Some(l)) => {
                    i += 2;
                    h << 4 | l
                }
                _ => b'%',
            },
            b'+' => b' ',
            c => c,
        };
        decoded[len] = byte.to_ascii_lowercase();
        len += 1;
        i += 1;
    }
    CREDENTIAL_PARAMS.contains(&&decoded[..len])
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A session id as a fixed-size affinity key, hashed with the proxy's
/// per-process random key: a client's id of any length costs the pool eight
/// bytes, and nobody outside can choose ids that share a key.
pub(crate) fn session_key(hasher: &foldhash::quality::RandomState, id: &[u8]) -> SessionKey {
    SessionKey(hasher.hash_one(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_and_encoded_separators_are_refused_in_every_spelling() {
        for path in [
            "/..",
            "/../v1/messages",
            "/v1/../../admin",
            "/v1/%2e%2e/x",
            "/v1/%2E%2e/x",
            "/v1/.%2e/x",
            "/v1/%2e./x",
            "/v1/./messages",
            "/v1/%2e/messages",
            "/v1/%2f../x",
            "/v1%2F..%2Fx",
            "/v1/%5c..%5cx",
            "/v1\\..\\x",
            "/v1/..",
        ] {
            assert!(!path_is_safe(path), "{path}");
        }
        for path in [
            "",
            "/",
            "/v1/messages",
            "/v1beta/models/gemini-2.5-pro:generateContent",
            "/v1/files/file-abc.jsonl",
            "/v1/...",
            "/v1/.well-known",
            "/v1/a..b",
            "/v1/%2e%2e%2e",
            "/v1/%41bc",
            "/v1//messages",
        ] {
            assert!(path_is_safe(path), "{path}");
        }
    }

    #[test]
    fn only_api_methods_are_forwarded() {
        for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            assert!(method_allowed(&m.parse().unwrap()), "{m}");
        }
        for m in ["TRACE", "CONNECT", "PROPFIND", "FOO"] {
            assert!(!method_allowed(&m.parse().unwrap()), "{m}");
        }
    }

    #[test]
    fn credential_query_parameters_are_removed_and_others_kept_as_they_are() {
        let q = |s: &'static str| query_without_credentials(Some(s)).map(|c| c.into_owned());
        assert_eq!(q("alt=sse"), Some("alt=sse".into()));
        assert!(matches!(
            query_without_credentials(Some("alt=sse&x=1")),
            Some(Cow::Borrowed(_))
        ));
        assert_eq!(q("key=AIza-client"), None);
        assert_eq!(q("alt=sse&key=AIza&x=1"), Some("alt=sse&x=1".into()));
        assert_eq!(q("KEY=a&%6Bey=b&k%65y=c&alt=sse"), Some("alt=sse".into()));
        assert_eq!(
            q("access_token=t&oauth_token=t&api_key=k&api-key=k&api%5Fkey=k"),
            None
        );
        assert_eq!(q("key"), None, "a bare name is removed too");
        assert_eq!(
            q("keys=1&monkey=2&key_id=3"),
            Some("keys=1&monkey=2&key_id=3".into())
        );
        assert_eq!(q("%=1&%4=2&key%"), Some("%=1&%4=2&key%".into()));
        assert_eq!(q(""), None);
        assert_eq!(query_without_credentials(None), None);
    }

    #[test]
    fn session_keys_are_fixed_size_and_keyed() {
        let a = foldhash::quality::RandomState::default();
        let b = foldhash::quality::RandomState::default();
        let long = vec![b'x'; 300 * 1024];
        assert_eq!(session_key(&a, &long), session_key(&a, &long));
        assert_ne!(session_key(&a, b"s1"), session_key(&a, b"s2"));
        assert_ne!(
            session_key(&a, b"s1"),
            session_key(&b, b"s1"),
            "another process keys differently"
        );
    }
}
