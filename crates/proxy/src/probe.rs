//! Connectivity probes: requests a client sends to learn whether its base URL
//! answers, not to reach the provider. marathon answers them itself — 200,
//! empty — before the access key is checked or an account is picked, so a
//! probe never spends an account's quota, never moves its health (a 401 or a
//! 429 to a credential-less `HEAD` once marked an account as needing a login
//! or cooled it) and never shows up in counters or metrics.
//!
//! What counts as a probe, on `/` or on a known provider's route `/<provider>`:
//! - `HEAD` to any path: no provider's API has a `HEAD` endpoint, and the
//!   answer carries no body to learn anything from (Claude Code's warm-up is
//!   `HEAD {base}` / `HEAD {base}/api/hello`; uptime checkers send `HEAD` to
//!   whatever URL they were given);
//! - `GET` to the base itself (`/`, `/<provider>`, `/<provider>/`) or to
//!   `…/api/hello`: paths that are no provider endpoint;
//! - and in both cases without a body (a request with one is a real call).
//!
//! Everything else — `GET …/v1/models`, every `POST` — is traffic.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::body::ProxyBody;

/// The warm-up path Claude Code sends under its base URL.
const HELLO: &str = "/api/hello";

/// Whether a request to `tail` (the path after `/<provider>`, or the whole
/// path for `/`) is a probe marathon answers itself.
pub(crate) fn is_probe(method: &Method, headers: &HeaderMap, tail: &str) -> bool {
    if has_body(headers) {
        return false;
    }
    if *method == Method::HEAD {
        return true;
    }
    *method == Method::GET && (tail.is_empty() || tail == "/" || tail.ends_with(HELLO))
}

/// A body is announced by a non-zero length or any transfer coding.
fn has_body(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
}

/// The answer: 200 with an empty body, not to be cached (the next probe
/// should reach marathon again to learn it is still up).
pub(crate) fn answer() -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(method: Method, tail: &str) -> bool {
        is_probe(&method, &HeaderMap::new(), tail)
    }

    #[test]
    fn warm_ups_are_probes() {
        assert!(probe(Method::HEAD, ""));
        assert!(probe(Method::HEAD, "/"));
        assert!(probe(Method::HEAD, "/api/hello"));
        assert!(probe(Method::HEAD, "/v1/messages"));
        assert!(probe(Method::GET, ""));
        assert!(probe(Method::GET, "/"));
        assert!(probe(Method::GET, "/api/hello"));
    }

    #[test]
    fn provider_endpoints_and_bodies_are_traffic() {
        assert!(!probe(Method::GET, "/v1/models"));
        assert!(!probe(Method::GET, "/v1beta/models/gemini-2.5-flash"));
        assert!(!probe(Method::POST, ""));
        assert!(!probe(Method::POST, "/api/hello"));
        assert!(!probe(Method::OPTIONS, "/"));
        let mut with_body = HeaderMap::new();
        with_body.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert!(!is_probe(&Method::GET, &with_body, "/"));
        let mut chunked = HeaderMap::new();
        chunked.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(!is_probe(&Method::HEAD, &chunked, "/"));
        let mut empty = HeaderMap::new();
        empty.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(is_probe(&Method::GET, &empty, "/"));
    }
}
