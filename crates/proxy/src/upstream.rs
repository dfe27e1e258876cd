//! The upstream HTTP client and target URLs.
//!
//! hyper-util's pooled client is on the hot path on purpose: it keeps
//! connections alive, does not re-parse a URL string per request (we build the
//! `Uri` from parts parsed once at start-up), and sets `TCP_NODELAY`. TLS is
//! rustls with the `ring` provider and the Mozilla roots.

use std::time::Duration;

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::body::ProxyBody;

/// The pooled upstream client.
pub(crate) type UpstreamClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

pub(crate) fn client() -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https)
}

/// A provider's upstream base URL, parsed once.
#[derive(Clone, Debug)]
pub struct UpstreamBase {
    scheme: Scheme,
    authority: Authority,
    /// Path prefix without a trailing slash ("" or "/backend-api/codex").
    prefix: String,
}

/// Why an upstream URL was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid upstream URL {url:?}: {why}")]
pub struct BadUpstream {
    url: String,
    why: &'static str,
}

impl UpstreamBase {
    /// Parses `http(s)://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<Self, BadUpstream> {
        let bad = |why| BadUpstream {
            url: url.to_string(),
            why,
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| bad("missing http:// or https://"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(bad("scheme must be http or https"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| bad("missing host"))?;
        if uri.query().is_some() {
            return Err(bad("must not have a query string"));
        }
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(UpstreamBase {
            scheme,
            authority,
            prefix,
        })
    }

    /// The upstream URI for a client path (`/v1/messages`) and query.
    pub(crate) fn join(&self, path: &str, query: Option<&str>) -> Option<Uri> {
        let mut pq = String::with_capacity(
            self.prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&self.prefix);
        pq.push_str(path);
        if pq.is_empty() {
            pq.push('/');
        }
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let pq = PathAndQuery::from_maybe_shared(pq).ok()?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .ok()
    }

    /// The authority, for the `host` header.
    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }
}

impl std::fmt::Display for UpstreamBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_prefix_path_and_query() {
        let b = UpstreamBase::parse("https://chatgpt.com/backend-api/codex/").unwrap();
        assert_eq!(
            b.join("/responses", Some("a=1")).unwrap().to_string(),
            "https://chatgpt.com/backend-api/codex/responses?a=1"
        );
        let b = UpstreamBase::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            b.join("/v1/messages", None).unwrap().to_string(),
            "http://127.0.0.1:9000/v1/messages"
        );
        assert_eq!(
            b.join("", None).unwrap().to_string(),
            "http://127.0.0.1:9000/"
        );
    }

    #[test]
    fn refuses_bad_upstreams() {
        for url in ["ftp://x", "127.0.0.1:80", "http://x/?q=1", "not a url"] {
            assert!(UpstreamBase::parse(url).is_err(), "{url}");
        }
    }
}
