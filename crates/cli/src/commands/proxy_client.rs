//! Talking to a marathon proxy on this machine (`status` asks a running one
//! for its live state, `demo` sends its requests through one): hyper's
//! client, plain HTTP/1.1, the same stack the proxy itself is built on.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use marathon_core::fmt::HumanDuration;

/// Largest answer read (the status document of a large pool is far smaller);
/// anything bigger is not a marathon proxy.
const MAX_REPLY_BYTES: usize = 16 << 20;

/// An answer, read whole.
pub(crate) struct Reply {
    pub(crate) status: http::StatusCode,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    /// A header's value, when present and text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A keep-alive client whose every request (connect, send, read) must end
/// within `timeout`.
pub(crate) struct ProxyClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl ProxyClient {
    pub(crate) fn new(timeout: Duration) -> Self {
        ProxyClient {
            inner: Client::builder(TokioExecutor::new()).build_http(),
            timeout,
        }
    }

    /// Sends `request` (its URI absolute: `http://127.0.0.1:8787/...`) and
    /// reads the whole answer.
    pub(crate) async fn send(&self, request: http::Request<Full<Bytes>>) -> anyhow::Result<Reply> {
        let exchange = async {
            let response = self.inner.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_REPLY_BYTES)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
                .to_bytes();
            anyhow::Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .ok()
            .with_context(|| format!("no answer within {}", HumanDuration(self.timeout)))?
    }
}
