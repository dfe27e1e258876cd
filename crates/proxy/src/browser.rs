//! Who may talk to the proxy from a browser.
//!
//! The proxy holds every account's credentials and listens on loopback next
//! to a browser, so web pages are the threat:
//! - **DNS rebinding**: a page on `evil.example` re-points its own name at
//!   127.0.0.1 and then reads the proxy's answers as same-origin. The
//!   browser still sends `Host: evil.example`, so only the names the proxy
//!   is really reached by are accepted: `localhost`, any IP address (a
//!   rebinding page cannot make the browser send an address; it is always
//!   the attacker's name) and `server.allowed_hosts`. The port is not
//!   compared: a port-forward or a reverse proxy changes it, and a rebinding
//!   page uses our port anyway.
//! - **Cross-site requests**: any page can send a "simple" POST
//!   (`content-type: text/plain`) to `http://127.0.0.1:8787` without a CORS
//!   preflight; it cannot read the answer, but the request spends quota. A
//!   browser marks such requests with `Origin`, so a request carrying an
//!   `Origin` that is neither the proxy's own (the dashboard) nor in
//!   `server.allowed_origins` is refused. Requests without `Origin` that
//!   `Sec-Fetch-Site` marks as coming from another site (image, script or
//!   frame loads; not a navigation the user made) are refused too.
//!
//! Both checks run before anything else: before the body is read, before the
//! access key, before an account is picked. Clients that are not browsers
//! (SDKs, curl, coding tools) send no `Origin` and are not affected.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::body::ProxyBody;

/// The verdict on one request.
pub(crate) enum Verdict {
    /// Go on (no `Origin`: not a page's request, or one the user navigated to).
    Allow,
    /// Go on: the proxy's own page (the dashboard) asked.
    AllowOwnPage,
    /// Go on, and mark the answer readable by this configured origin (CORS).
    AllowCors(HeaderValue),
    /// Answer this CORS preflight for a configured origin and stop.
    Preflight(Response<ProxyBody>),
    /// Refuse with this status and message.
    Refuse(StatusCode, String),
}

static SEC_FETCH_SITE: http::HeaderName = http::HeaderName::from_static("sec-fetch-site");
static SEC_FETCH_MODE: http::HeaderName = http::HeaderName::from_static("sec-fetch-mode");

/// The allowed names and origins, prepared once.
pub(crate) struct Guard {
    /// `Host` values accepted by one comparison: the listen address as
    /// clients write it (`127.0.0.1:8787`, `localhost:8787`).
    exact: Vec<Vec<u8>>,
    /// `server.allowed_hosts`, lower-case.
    names: Vec<String>,
    /// `server.allowed_origins`, lower-case.
    origins: Vec<String>,
}

impl Guard {
    pub(crate) fn new(listen: SocketAddr, names: &[String], origins: &[String]) -> Self {
        let port = listen.port();
        let mut exact = vec![
            format!("127.0.0.1:{port}").into_bytes(),
            format!("localhost:{port}").into_bytes(),
        ];
        if !listen.ip().is_unspecified() {
            exact.push(listen.to_string().into_bytes());
        }
        Guard {
            exact,
            names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
            origins: origins.iter().map(|o| o.to_ascii_lowercase()).collect(),
        }
    }

    /// Checks a request's `Host`, `Origin` and `Sec-Fetch-Site`.
    pub(crate) fn check(&self, method: &Method, headers: &HeaderMap) -> Verdict {
        let host = headers.get(header::HOST);
        if let Some(h) = host
            && !self.host_allowed(h.as_bytes())
        {
            return Verdict::Refuse(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "requests for host {} are refused (DNS-rebinding protection); if clients reach marathon by this name, add it to server.allowed_hosts",
                    shown(h)
                ),
            );
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return self.check_fetch_site(headers);
        };
        if host.is_some_and(|h| same_origin(origin.as_bytes(), h.as_bytes())) {
            return Verdict::AllowOwnPage;
        }
        let configured = origin
            .to_str()
            .ok()
            .filter(|o| self.origins.iter().any(|a| a.eq_ignore_ascii_case(o)));
        match configured {
            Some(_) if method == Method::OPTIONS => Verdict::Preflight(preflight(origin, headers)),
            Some(_) => Verdict::AllowCors(origin.clone()),
            None => Verdict::Refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "requests from web pages at {} are refused (cross-site protection); to let that page use marathon, add it to server.allowed_origins",
                    shown(origin)
                ),
            ),
        }
    }

    /// A request without `Origin` that a browser made for another site's page
    /// (an image, a script, a frame's subresource): not a navigation by the user.
    fn check_fetch_site(&self, headers: &HeaderMap) -> Verdict {
        let Some(site) = headers.get(&SEC_FETCH_SITE) else {
            return Verdict::Allow;
        };
        let foreign = matches!(site.as_bytes(), b"cross-site" | b"same-site");
        let navigation = headers
            .get(&SEC_FETCH_MODE)
            .is_some_and(|m| m.as_bytes() == b"navigate");
        if foreign && !navigation {
            return Verdict::Refuse(
                StatusCode::FORBIDDEN,
                "requests made by another site's web page are refused (cross-site protection)"
                    .into(),
            );
        }
        Verdict::Allow
    }

    fn host_allowed(&self, value: &[u8]) -> bool {
        if self.exact.iter().any(|e| e == value) {
            return true;
        }
        let Ok(text) = std::str::from_utf8(value) else {
            return false;
        };
        let Some(name) = host_without_port(text) else {
            return false;
        };
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        let address = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
            Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
            None => name.parse::<Ipv4Addr>().is_ok(),
        };
        address || self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// `host` of `host[:port]`, `[v6]` of `[v6][:port]`; `None` if the port is not a number.
fn host_without_port(value: &str) -> Option<&str> {
    let (host, port) = if value.starts_with('[') {
        let end = value.find(']')?;
        let rest = &value[end + 1..];
        (
            &value[..=end],
            rest.strip_prefix(':').or(rest.is_empty().then_some("")),
        )
    } else {
        match value.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (value, Some("")),
        }
    };
    let port = port?;
    (port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) && !host.is_empty())
        .then_some(host)
}

/// Whether `origin` is `http://<host>`: the page is the proxy's own (the dashboard).
fn same_origin(origin: &[u8], host: &[u8]) -> bool {
    origin
        .strip_prefix(b"http://")
        .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
}

/// A header value for an error message: quoted, cut short.
fn shown(v: &HeaderValue) -> String {
    let text = String::from_utf8_lossy(v.as_bytes());
    let cut: String = text.chars().take(80).collect();
    format!("{cut:?}")
}

/// The answer to a CORS preflight from a configured origin: whatever method
/// and headers it asks for (the origin is trusted; the access key still applies).
fn preflight(origin: &HeaderValue, headers: &HeaderMap) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::Empty);
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("GET, POST")),
    );
    if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    r
}

/// Marks an answer readable by a configured origin, replacing any CORS
/// headers the upstream sent (the proxy decides who may read, not the provider).
pub(crate) fn allow_cors(headers: &mut HeaderMap, origin: HeaderValue) {
    strip_cors(headers);
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("*"),
    );
}

/// Removes an upstream's CORS headers: no page may read an answer unless
/// `server.allowed_origins` says so.
pub(crate) fn strip_cors(headers: &mut HeaderMap) {
    for name in [
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        header::ACCESS_CONTROL_ALLOW_METHODS,
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        header::ACCESS_CONTROL_MAX_AGE,
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(
            "127.0.0.1:8787".parse().unwrap(),
            &["proxy.internal".into()],
            &["http://localhost:3000".into()],
        )
    }

    fn verdict(pairs: &[(&str, &str)]) -> Result<(), StatusCode> {
        verdict_for(&Method::POST, pairs)
    }

    fn verdict_for(method: &Method, pairs: &[(&str, &str)]) -> Result<(), StatusCode> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        match guard().check(method, &h) {
            Verdict::Allow
            | Verdict::AllowOwnPage
            | Verdict::AllowCors(_)
            | Verdict::Preflight(_) => Ok(()),
            Verdict::Refuse(s, _) => Err(s),
        }
    }

    #[test]
    fn loopback_names_addresses_and_configured_names_pass() {
        for host in [
            "127.0.0.1:8787",
            "localhost:8787",
            "LOCALHOST",
            "localhost:9",
            "[::1]:8787",
            "[::1]",
            "192.168.1.20:8787",
            "proxy.internal",
            "Proxy.Internal:443",
        ] {
            assert_eq!(verdict(&[("host", host)]), Ok(()), "{host}");
        }
        assert_eq!(verdict(&[]), Ok(()), "no Host: not a browser");
    }

    #[test]
    fn other_names_are_refused_like_a_rebinding_page() {
        for host in [
            "evil.example",
            "evil.example:8787",
            "127.0.0.1.nip.io:8787",
            "localhost.evil.example",
            "localhost.",
            "2130706433",
            "::1",
            "[::1]x",
            "localhost:http",
            "",
        ] {
            assert_eq!(
                verdict(&[("host", host)]),
                Err(StatusCode::MISDIRECTED_REQUEST),
                "{host}"
            );
        }
    }

    #[test]
    fn origins_other_than_our_own_and_configured_ones_are_refused() {
        let host = ("host", "127.0.0.1:8787");
        assert_eq!(
            verdict(&[host, ("origin", "http://127.0.0.1:8787")]),
            Ok(())
        );
        assert_eq!(
            verdict(&[
                ("host", "localhost:8787"),
                ("origin", "http://localhost:8787")
            ]),
            Ok(())
        );
        assert_eq!(
            verdict(&[host, ("origin", "http://localhost:3000")]),
            Ok(())
        );
        for origin in [
            "https://evil.example",
            "null",
            "http://127.0.0.1:8788",
            "https://127.0.0.1:8787",
            "http://localhost:8787",
        ] {
            assert_eq!(
                verdict(&[host, ("origin", origin)]),
                Err(StatusCode::FORBIDDEN),
                "{origin}"
            );
        }
        assert_eq!(
            verdict_for(
                &Method::OPTIONS,
                &[host, ("origin", "https://evil.example")]
            ),
            Err(StatusCode::FORBIDDEN)
        );
    }

    #[test]
    fn another_sites_subresource_loads_are_refused_but_navigations_pass() {
        let host = ("host", "127.0.0.1:8787");
        assert_eq!(
            verdict(&[
                host,
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "no-cors")
            ]),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            verdict(&[
                host,
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "navigate")
            ]),
            Ok(())
        );
        assert_eq!(verdict(&[host, ("sec-fetch-site", "same-origin")]), Ok(()));
        assert_eq!(verdict(&[host, ("sec-fetch-site", "none")]), Ok(()));
    }
}
