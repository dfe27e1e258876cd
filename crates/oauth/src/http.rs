//! The HTTP client OAuth code talks through, injected so every flow is tested
//! without a network (the oauth2-rs pattern), plus the real implementation on
//! hyper-util + rustls (ring).
//!
//! The client never follows redirects: an OAuth client must not, and tests
//! that drive an authorization server's pages follow them by hand.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

/// A boxed, sendable future (the trait must stay object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Largest response body read from an authorization server (bytes). Token
/// responses are a few kilobytes; anything bigger is refused, not buffered.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// An HTTP request. Its `Debug` never shows the body or credential headers:
/// bodies carry codes, verifiers and refresh tokens.
#[derive(Clone)]
pub struct HttpRequest {
    /// Method.
    pub method: http::Method,
    /// Absolute URL.
    pub url: String,
    /// Headers, in order (names lower-case).
    pub headers: Vec<(String, String)>,
    /// Body bytes (empty for GET).
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// A GET.
    pub fn get(url: impl Into<String>) -> Self {
        HttpRequest {
            method: http::Method::GET,
            url: url.into(),
            headers: vec![("accept".into(), "application/json".into())],
            body: Vec::new(),
        }
    }

    /// A POST with an `application/x-www-form-urlencoded` body.
    pub fn form<'a>(
        url: impl Into<String>,
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            ser.append_pair(k, v);
        }
        HttpRequest {
            method: http::Method::POST,
            url: url.into(),
            headers: vec![
                (
                    "content-type".into(),
                    "application/x-www-form-urlencoded".into(),
                ),
                ("accept".into(), "application/json".into()),
            ],
            body: ser.finish().into_bytes(),
        }
    }

    /// A POST with a JSON body.
    pub fn json(url: impl Into<String>, body: &serde_json::Value) -> Self {
        HttpRequest {
            method: http::Method::POST,
            url: url.into(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("accept".into(), "application/json".into()),
            ],
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }

    /// Adds (or replaces) a header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.into()));
        self
    }

    /// The value of a header, if set.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body decoded as form parameters (for tests and fakes).
    pub fn form_params(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    /// The body parsed as JSON (for tests and fakes).
    pub fn json_body(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

impl fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| {
                let shown = if is_sensitive_header(n) {
                    "[redacted]"
                } else {
                    v.as_str()
                };
                (n.as_str(), shown)
            })
            .collect();
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("url", &strip_query(&self.url))
            .field("headers", &headers)
            .field(
                "body",
                &format_args!("[{} bytes redacted]", self.body.len()),
            )
            .finish()
    }
}

fn is_sensitive_header(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "authorization" | "cookie" | "set-cookie" | "x-api-key" | "proxy-authorization"
    )
}

/// A URL without its query and fragment (which may hold codes or tokens), for
/// messages and logs.
pub(crate) fn strip_query(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    &url[..end]
}

/// An HTTP response, body fully read.
#[derive(Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, in order (names lower-case).
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with a JSON body (for fakes).
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        HttpResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(&body).unwrap_or_default(),
        }
    }

    /// The value of a header, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field(
                "body",
                &format_args!("[{} bytes redacted]", self.body.len()),
            )
            .finish()
    }
}

/// A request that got no HTTP response (connection, TLS, timeout, bad URL).
/// Always worth a retry later except [`HttpError::InvalidUrl`].
#[derive(thiserror::Error, Debug)]
pub enum HttpError {
    /// The URL could not be used.
    #[error("invalid URL {url}: {reason}")]
    InvalidUrl {
        /// The URL without its query.
        url: String,
        /// Why.
        reason: String,
    },
    /// Connecting, sending or reading failed.
    #[error("request to {url} failed: {reason}")]
    Network {
        /// The URL without its query.
        url: String,
        /// What went wrong (no request or response content).
        reason: String,
    },
    /// No response in time.
    #[error("request to {url} timed out after {}", marathon_core::fmt::HumanDuration(*timeout))]
    Timeout {
        /// The URL without its query.
        url: String,
        /// The limit.
        timeout: Duration,
    },
    /// The response body was larger than [`MAX_RESPONSE_BYTES`].
    #[error("response from {url} is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge {
        /// The URL without its query.
        url: String,
    },
}

/// Sends one HTTP request and reads the whole response. Redirects are not followed.
pub trait HttpClient: Send + Sync {
    /// Sends `req`.
    fn send(&self, req: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, HttpError>>;
}

type HyperInner = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<crate::egress::EgressConnector>,
    Full<Bytes>,
>;

/// The real client: hyper-util's pooled client over rustls (ring; the
/// bundled, OS and configured roots), HTTP/1.1, with a per-request timeout,
/// through the forward proxy its [`Egress`](crate::egress::Egress) names.
#[derive(Clone)]
pub struct HyperHttpClient {
    inner: HyperInner,
    timeout: Duration,
    user_agent: String,
}

impl fmt::Debug for HyperHttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HyperHttpClient")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for HyperHttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HyperHttpClient {
    /// A client with a 30 s timeout. Must be called inside a tokio runtime
    /// only when used; construction itself does no I/O.
    pub fn new() -> Self {
        Self::with_timeout(Duration::from_secs(30))
    }

    /// A client with the given per-request timeout (connect + response),
    /// straight out (no forward proxy).
    pub fn with_timeout(timeout: Duration) -> Self {
        Self::with_egress(timeout, &crate::egress::Egress::direct())
    }

    /// A client whose connections leave as `egress` says: forward proxy
    /// (`CONNECT` tunnels) and trusted roots.
    pub fn with_egress(timeout: Duration, egress: &crate::egress::Egress) -> Self {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(egress.root_store())
                .with_no_client_auth()
        })
        .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(egress.connector());
        let inner =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(https);
        HyperHttpClient {
            inner,
            timeout,
            user_agent: concat!("marathon/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }

    async fn send_inner(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let shown = strip_query(&req.url).to_string();
        let uri: http::Uri =
            req.url
                .parse()
                .map_err(|e: http::uri::InvalidUri| HttpError::InvalidUrl {
                    url: shown.clone(),
                    reason: e.to_string(),
                })?;
        check_transport(&uri).map_err(|reason| HttpError::InvalidUrl {
            url: shown.clone(),
            reason: reason.into(),
        })?;
        let mut builder = http::Request::builder().method(req.method.clone()).uri(uri);
        let mut has_ua = false;
        for (name, value) in &req.headers {
            has_ua |= name.eq_ignore_ascii_case("user-agent");
            builder = builder.header(name.as_str(), value.as_str());
        }
        if !has_ua {
            builder = builder.header("user-agent", self.user_agent.as_str());
        }
        let request = builder
            .body(Full::new(Bytes::from(req.body)))
            .map_err(|e| HttpError::InvalidUrl {
                url: shown.clone(),
                reason: format!("bad request header: {e}"),
            })?;
        let network = |e: &dyn std::error::Error| HttpError::Network {
            url: shown.clone(),
            reason: error_chain(e),
        };
        let response = self.inner.request(request).await.map_err(|e| network(&e))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    HttpError::TooLarge { url: shown.clone() }
                } else {
                    HttpError::Network {
                        url: shown.clone(),
                        reason: e.to_string(),
                    }
                }
            })?
            .to_bytes()
            .to_vec();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// Codes, tokens and secrets travel in these requests: plain `http` only to
/// this machine (test servers, loopback callbacks), `https` everywhere else.
fn check_transport(uri: &http::Uri) -> Result<(), &'static str> {
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => match uri.host() {
            Some("127.0.0.1" | "localhost" | "[::1]" | "::1") => Ok(()),
            _ => Err("refusing to send credentials over plain http to a remote host; use https"),
        },
        _ => Err("only http(s) URLs are supported"),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

impl HttpClient for HyperHttpClient {
    fn send(&self, req: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, HttpError>> {
        Box::pin(async move {
            let url = strip_query(&req.url).to_string();
            match tokio::time::timeout(self.timeout, self.send_inner(req)).await {
                Ok(r) => r,
                Err(_) => Err(HttpError::Timeout {
                    url,
                    timeout: self.timeout,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_bodies_credentials_and_queries() {
        let req = HttpRequest::form(
            "https://auth.example/token?code=abc",
            [("refresh_token", "rt-secret-value")],
        )
        .header("Authorization", "Bearer at-secret-value");
        let shown = format!("{req:?}");
        assert!(!shown.contains("rt-secret-value"), "{shown}");
        assert!(!shown.contains("at-secret-value"), "{shown}");
        assert!(!shown.contains("code=abc"), "{shown}");
        assert!(shown.contains("https://auth.example/token"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let ok = |u: &str| check_transport(&u.parse().unwrap()).is_ok();
        assert!(ok("https://auth.openai.com/oauth/token"));
        assert!(ok("http://127.0.0.1:4444/token"));
        assert!(ok("http://localhost:1455/auth/callback"));
        assert!(ok("http://[::1]:8080/token"));
        assert!(!ok("http://auth.example.com/token"));
        assert!(!ok("http://127.0.0.1.evil.example/token"));
        assert!(!ok("ftp://x/y"));
    }

    #[tokio::test]
    async fn real_client_refuses_remote_plain_http_before_connecting() {
        let err = HyperHttpClient::new()
            .send(HttpRequest::form(
                "http://auth.example.com/token",
                [("refresh_token", "rt")],
            ))
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::InvalidUrl { .. }), "{err:?}");
        assert!(err.to_string().contains("plain http"), "{err}");
    }

    #[test]
    fn form_encodes_and_decodes() {
        let req = HttpRequest::form("http://x/t", [("scope", "openid email"), ("a", "b&c=d")]);
        assert_eq!(req.body, b"scope=openid+email&a=b%26c%3Dd");
        assert_eq!(
            req.form_params(),
            vec![
                ("scope".to_string(), "openid email".to_string()),
                ("a".to_string(), "b&c=d".to_string())
            ]
        );
        assert_eq!(
            req.header_value("Content-Type"),
            Some("application/x-www-form-urlencoded")
        );
    }
}
