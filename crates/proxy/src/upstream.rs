//! The upstream HTTP client and target URLs.
//!
//! The client is hyper's HTTP/1.1 connection API with a small keep-alive pool
//! per [`Endpoint`], not hyper-util's general-purpose pooled client: that one
//! spawns a task per request to put the connection back once it turns idle,
//! clones the connector and the pool key per request, and looks the pool up
//! in a map. Here a response body hands its connection back when it reaches
//! its end ([`Reuse`]), and the endpoint is resolved once per provider.
//! Requests are sent in origin form (`/v1/messages`) with the `host` header
//! set by the caller. TLS is rustls with the `ring` provider, trusting the
//! Mozilla roots, the OS store and any extra CA (`egress`); new connections
//! set `TCP_NODELAY` and TCP keepalive. Each endpoint's route (direct, or
//! through a forward proxy) is decided once, when the endpoint is made.

use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::rt::TokioIo;
use tower_service::Service;

use crate::body::ProxyBody;
use crate::egress::{EgressSettings, ProxyRules, Route, Via};

/// How long an idle upstream connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint (more are closed when they turn idle).
const MAX_IDLE: usize = 256;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens upstream connections and sends requests over pooled ones.
#[derive(Clone)]
pub(crate) struct UpstreamClient {
    connector: HttpsConnector<HttpConnector>,
    /// TCP alone (under a CONNECT tunnel) and the TLS settings, for tunnels.
    tcp: HttpConnector,
    tls: Arc<rustls::ClientConfig>,
    /// The proxy-wide forward-proxy rules.
    rules: ProxyRules,
}

/// One upstream origin (scheme and authority) and its idle connections.
/// Clones share the pool.
#[derive(Clone)]
pub(crate) struct Endpoint(Arc<EndpointInner>);

struct EndpointInner {
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
    /// Direct or through a forward proxy.
    route: Route,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    tx: SendRequest<ProxyBody>,
    since: Instant,
}

/// The connection a response came on. [`Reuse::finish`] puts it back in the
/// pool once the response body has been read to its end; dropped instead (the
/// body was abandoned half-way), the connection closes.
pub(crate) struct Reuse {
    endpoint: Arc<EndpointInner>,
    tx: SendRequest<ProxyBody>,
}

impl Reuse {
    pub(crate) fn finish(self) {
        self.endpoint.put(self.tx);
    }
}

/// Why an upstream request got no response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No connection could be opened (refused, DNS, TLS, connect timeout).
    #[error("could not connect: {0}")]
    Connect(BoxError),
    /// The connection failed while the request was sent or the response head awaited.
    #[error("{0}")]
    Request(#[from] hyper::Error),
}

impl UpstreamError {
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

impl UpstreamClient {
    pub(crate) fn new(egress: &EgressSettings) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(Duration::from_secs(10)));
        tcp.set_keepalive(Some(Duration::from_secs(60)));
        let roots = crate::egress::root_store(&egress.extra_roots);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"));
        let connector = https(tls.clone(), tcp.clone());
        UpstreamClient {
            connector,
            tcp,
            tls: Arc::new(tls),
            rules: crate::egress::ProxyRules::new(&egress.proxy),
        }
    }

    /// A new connection pool for `base`'s origin, routed by the proxy-wide
    /// rules, or through `own_proxy` (an account's egress proxy) when given.
    pub(crate) fn endpoint(&self, base: &UpstreamBase, own_proxy: Option<&ProxyRules>) -> Endpoint {
        let rules = own_proxy.unwrap_or(&self.rules);
        let route = rules.route(&base.scheme, &base.authority);
        tracing::debug!("upstream {base}: {route:?}");
        Endpoint::new(base.scheme.clone(), base.authority.clone(), route)
    }

    /// The endpoint of an absolute URL (a webhook), and the URL's origin-form path.
    pub(crate) fn endpoint_of_url(&self, uri: &Uri) -> Option<(Endpoint, Uri)> {
        let scheme = uri.scheme()?.clone();
        let authority = uri.authority()?.clone();
        let pq = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let route = self.rules.route(&scheme, &authority);
        Some((Endpoint::new(scheme, authority, route), Uri::from(pq)))
    }

    /// Sends `req` (origin-form URI, `host` set) to `endpoint` over an idle
    /// connection, or a new one. A request an idle connection refused before
    /// writing a byte of it (the upstream had just closed it) goes out again
    /// on the next connection, as hyper hands it back untouched.
    pub(crate) async fn send(
        &self,
        endpoint: &Endpoint,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Reuse), UpstreamError> {
        if let Route::Forward(via) = &endpoint.0.route {
            endpoint.0.to_absolute_form(&mut req, via);
        }
        loop {
            let (mut tx, reused) = match endpoint.0.take_idle() {
                Some(tx) => (tx, true),
                // Boxed: connecting is rare, and its future is large.
                None => (Box::pin(self.connect(&endpoint.0)).await?, false),
            };
            // A connection put back a moment ago may not have seen its
            // response's end yet; it is ready as soon as its task runs.
            if !tx.is_ready()
                && let Err(e) = tx.ready().await
            {
                if reused {
                    continue;
                }
                return Err(UpstreamError::Connect(e.into()));
            }
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    let reuse = Reuse {
                        endpoint: endpoint.0.clone(),
                        tx,
                    };
                    return Ok((resp, reuse));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(UpstreamError::Request(e.into_error())),
                },
            }
        }
    }

    /// Sends a WebSocket handshake (`Upgrade: websocket`) on a connection of
    /// its own: a connection that upgrades is never pooled, and hyper hands
    /// it over (`hyper::upgrade::on`) only when built `with_upgrades`.
    pub(crate) async fn upgrade(
        &self,
        endpoint: &Endpoint,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        if let Route::Forward(via) = &endpoint.0.route {
            endpoint.0.to_absolute_form(&mut req, via);
        }
        let io = Box::pin(self.connect_io(&endpoint.0)).await?;
        let (mut tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upstream WebSocket connection ended: {e}");
            }
        });
        tx.send_request(req).await.map_err(UpstreamError::Request)
    }

    async fn connect_io(&self, ep: &EndpointInner) -> Result<Stream, UpstreamError> {
        let uri = Uri::builder()
            .scheme(ep.scheme.clone())
            .authority(ep.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        let io = match &ep.route {
            Route::Direct => open(self.connector.clone(), uri).await?,
            // An http:// origin behind a proxy: the connection is to the proxy.
            Route::Forward(via) => open(self.connector.clone(), via.proxy.clone()).await?,
            Route::Tunnel(via) => {
                let mut tunnel = Tunnel::new(via.proxy.clone(), self.tcp.clone());
                if let Some(auth) = &via.auth {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                open(https((*self.tls).clone(), tunnel), uri).await?
            }
            Route::Unsupported(proxy) => {
                return Err(UpstreamError::Connect(
                    format!(
                        "the proxy {proxy} is not an http:// proxy (the only kind marathon speaks)"
                    )
                    .into(),
                ));
            }
        };
        Ok(io)
    }

    async fn connect(&self, ep: &EndpointInner) -> Result<SendRequest<ProxyBody>, UpstreamError> {
        let io = self.connect_io(ep).await?;
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            // As on the server side: a flat write buffer (see `server`).
            .writev(false)
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        Ok(tx)
    }
}

type Stream = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

/// rustls over `inner` (plain TCP, or a CONNECT tunnel), for `https://`
/// destinations; `http://` ones pass through.
fn https<C>(tls: rustls::ClientConfig, inner: C) -> HttpsConnector<C> {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(inner)
}

/// Opens one connection to `dst` through `connector`.
async fn open<C>(mut connector: C, dst: Uri) -> Result<Stream, UpstreamError>
where
    C: Service<Uri, Response = Stream, Error = BoxError>,
{
    poll_fn(|cx| connector.poll_ready(cx))
        .await
        .map_err(UpstreamError::Connect)?;
    connector.call(dst).await.map_err(UpstreamError::Connect)
}

impl Endpoint {
    pub(crate) fn new(scheme: Scheme, authority: Authority, route: Route) -> Self {
        let host = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Endpoint(Arc::new(EndpointInner {
            scheme,
            authority,
            host,
            route,
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// The `host` header value.
    pub(crate) fn host(&self) -> &HeaderValue {
        &self.0.host
    }

    /// Closes connections idle for too long or closed by the upstream.
    pub(crate) fn sweep(&self) {
        let stale: Vec<Idle> = {
            let mut idle = self.0.idle.lock().unwrap_or_else(|e| e.into_inner());
            let (keep, stale) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|i| i.usable());
            *idle = keep;
            stale
        };
        drop(stale);
    }

    /// Idle connections right now (for tests).
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.0.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.0.scheme, self.0.authority)?;
        match &self.0.route {
            Route::Direct => Ok(()),
            route => write!(f, " ({route:?})"),
        }
    }
}

impl Idle {
    fn usable(&self) -> bool {
        !self.tx.is_closed() && self.since.elapsed() < IDLE_TIMEOUT
    }
}

/// How often [`Endpoint::sweep`] should run: the longest a connection stays
/// idle is [`IDLE_TIMEOUT`] plus this.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(5);

impl EndpointInner {
    /// An `http://` origin behind a forward proxy: the proxy needs the whole
    /// URL (absolute form) and its own credentials.
    fn to_absolute_form(&self, req: &mut Request<ProxyBody>, via: &Via) {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        if let Ok(uri) = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
        {
            *req.uri_mut() = uri;
        }
        if let Some(auth) = &via.auth {
            req.headers_mut()
                .insert(http::header::PROXY_AUTHORIZATION, auth.clone());
        }
    }

    /// The most recently used idle connection that is still open.
    fn take_idle(&self) -> Option<SendRequest<ProxyBody>> {
        let mut stale = Vec::new();
        let found = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                // Only closed connections are skipped here (no clock read per
                // request); ones idle too long are closed by `sweep`.
                match idle.pop() {
                    None => break None,
                    Some(i) if !i.tx.is_closed() => break Some(i.tx),
                    Some(i) => stale.push(i),
                }
            }
        };
        // Closing happens outside the lock.
        drop(stale);
        found
    }

    fn put(&self, tx: SendRequest<ProxyBody>) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }
}

/// Paths cached per provider; past this, new paths are built every time.
const PATH_CACHE: usize = 32;

/// The upstream URIs of the paths clients send, built once: clients of an
/// LLM API use a handful of paths, and building a URI means an allocation
/// and a validating parse.
#[derive(Default)]
pub(crate) struct PathCache(std::sync::RwLock<Vec<CachedPath>>);

struct CachedPath {
    path: Box<str>,
    query: Option<Box<str>>,
    uri: Uri,
}

impl PathCache {
    /// `base.join(path, query)`, from the cache when it is there.
    pub(crate) fn uri(&self, base: &UpstreamBase, path: &str, query: Option<&str>) -> Option<Uri> {
        let hit = |c: &CachedPath| &*c.path == path && c.query.as_deref() == query;
        {
            let cached = self.0.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cached.iter().find(|c| hit(c)) {
                return Some(c.uri.clone());
            }
        }
        let uri = base.join(path, query)?;
        let mut cached = self.0.write().unwrap_or_else(|e| e.into_inner());
        if cached.len() < PATH_CACHE && !cached.iter().any(hit) {
            cached.push(CachedPath {
                path: path.into(),
                query: query.map(Into::into),
                uri: uri.clone(),
            });
        }
        Some(uri)
    }
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
        // The URL is quoted redacted: a mistyped one may still hold a password or key.
        let bad = |why| BadUpstream {
            url: marathon_core::secret::redact_url(url),
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
        // `user:password@` would be sent as part of the Host header and shown
        // wherever the upstream is (banner, status); credentials come from accounts.
        if authority.as_str().contains('@') {
            return Err(bad("must not hold a user name or password"));
        }
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(UpstreamBase {
            scheme,
            authority,
            prefix,
        })
    }

    /// The origin-form upstream URI (`/prefix/v1/messages?q`) for a client
    /// path (`/v1/messages`) and query.
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
        PathAndQuery::from_maybe_shared(pq).ok().map(Uri::from)
    }
}

impl std::fmt::Display for UpstreamBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Host and port only: never userinfo, even if a caller slipped one past `parse`.
        write!(f, "{}://{}", self.scheme, self.authority.host())?;
        if let Some(port) = self.authority.port() {
            write!(f, ":{port}")?;
        }
        f.write_str(&self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A raw HTTP/1.1 upstream: answers every request with `answer`, and
    /// hangs up right after the first answer when `once`.
    async fn upstream(answer: &'static str, once: bool) -> (Endpoint, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if sock.write_all(answer.as_bytes()).await.is_err() || once {
                            return;
                        }
                    }
                });
            }
        });
        let authority: Authority = addr.to_string().parse().unwrap();
        (
            Endpoint::new(Scheme::HTTP, authority, Route::Direct),
            accepted,
        )
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    fn get(ep: &Endpoint) -> Request<ProxyBody> {
        Request::builder()
            .uri("/v1/models")
            .header(http::header::HOST, ep.host().clone())
            .body(ProxyBody::Empty)
            .unwrap()
    }

    /// Sends and reads the whole body through the proxy's body type.
    async fn fetch(client: &UpstreamClient, ep: &Endpoint) -> Result<String, UpstreamError> {
        let (resp, reuse) = client.send(ep, get(ep)).await?;
        let body = ProxyBody::stream(Default::default(), resp.into_body(), None, Some(reuse));
        let bytes = body.collect().await.unwrap().to_bytes();
        Ok(String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn sequential_requests_share_one_kept_alive_connection() {
        let (ep, accepted) = upstream(OK, false).await;
        let client = UpstreamClient::new(&EgressSettings::default());
        for _ in 0..5 {
            assert_eq!(fetch(&client, &ep).await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(ep.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        // One answer per connection, then the upstream hangs up (as an idle
        // timeout would), without saying `connection: close`.
        let (ep, accepted) = upstream(OK, true).await;
        let client = UpstreamClient::new(&EgressSettings::default());
        for _ in 0..3 {
            assert_eq!(fetch(&client, &ep).await.unwrap(), "ok");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        ep.sweep();
        assert_eq!(ep.idle_count(), 0, "closed connections are swept");
    }

    #[tokio::test]
    async fn a_body_dropped_half_way_closes_its_connection() {
        let (ep, accepted) = upstream(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
            false,
        )
        .await;
        let client = UpstreamClient::new(&EgressSettings::default());
        let (resp, reuse) = client.send(&ep, get(&ep)).await.unwrap();
        let mut body = ProxyBody::stream(Default::default(), resp.into_body(), None, Some(reuse));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"hello");
        drop(body);
        assert_eq!(ep.idle_count(), 0);
        // The next request needs (and gets) a new connection.
        let (_resp, _reuse) = client.send(&ep, get(&ep)).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        drop(listener);
        let ep = Endpoint::new(Scheme::HTTP, authority, Route::Direct);
        match UpstreamClient::new(&EgressSettings::default())
            .send(&ep, get(&ep))
            .await
        {
            Err(err) => assert!(err.is_connect(), "{err}"),
            Ok(_) => panic!("a closed port answered"),
        }
    }

    /// Guards: an `http://` origin behind HTTP_PROXY sent in origin form (a
    /// proxy cannot tell where it goes) or without the proxy's credentials.
    #[tokio::test]
    async fn an_http_origin_behind_a_proxy_gets_absolute_form_and_proxy_credentials() {
        let seen = Arc::new(Mutex::new(String::new()));
        // The "proxy": records the request head it receives, answers 200.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = listener.local_addr().unwrap();
        let record = seen.clone();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap();
            *record.lock().unwrap() = String::from_utf8_lossy(&buf[..n]).into_owned();
            sock.write_all(OK.as_bytes()).await.unwrap();
        });
        let rules = ProxyRules::only(&marathon_core::Secret::new(format!(
            "http://corp:pw-5e1b@{proxy_addr}"
        )));
        let client = UpstreamClient::new(&EgressSettings::default());
        let base = UpstreamBase::parse("http://llm.internal:8080/v1").unwrap();
        let ep = client.endpoint(&base, Some(&rules));
        assert_eq!(fetch(&client, &ep).await.unwrap(), "ok");
        let head = seen.lock().unwrap().clone();
        assert!(
            head.starts_with("GET http://llm.internal:8080/v1/models HTTP/1.1\r\n"),
            "{head}"
        );
        // Basic base64("corp:pw-5e1b").
        assert!(
            head.to_ascii_lowercase()
                .contains("proxy-authorization: basic y29ycdpwdy01ztfi"),
            "{head}"
        );
    }

    #[test]
    fn joins_prefix_path_and_query() {
        let b = UpstreamBase::parse("https://chatgpt.com/backend-api/codex/").unwrap();
        assert_eq!(
            b.join("/responses", Some("a=1")).unwrap().to_string(),
            "/backend-api/codex/responses?a=1"
        );
        let b = UpstreamBase::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            b.join("/v1/messages", None).unwrap().to_string(),
            "/v1/messages"
        );
        assert_eq!(b.join("", None).unwrap().to_string(), "/");
        let client = UpstreamClient::new(&EgressSettings::default());
        assert_eq!(
            format!("{:?}", client.endpoint(&b, Some(&ProxyRules::default()))),
            "http://127.0.0.1:9000"
        );
    }

    #[test]
    fn the_path_cache_answers_what_join_would() {
        let b = UpstreamBase::parse("https://chatgpt.com/backend-api/codex").unwrap();
        let cache = PathCache::default();
        for _ in 0..2 {
            for (path, query) in [
                ("/responses", None),
                ("/responses", Some("a=1")),
                ("", None),
            ] {
                assert_eq!(cache.uri(&b, path, query), b.join(path, query));
            }
        }
        assert_eq!(cache.0.read().unwrap().len(), 3);
        for i in 0..100 {
            let q = format!("n={i}");
            assert_eq!(cache.uri(&b, "/x", Some(&q)), b.join("/x", Some(&q)));
        }
        assert_eq!(cache.0.read().unwrap().len(), PATH_CACHE, "bounded");
        assert_eq!(cache.uri(&b, "/bad path", None), None);
    }

    #[test]
    fn refuses_bad_upstreams() {
        for url in ["ftp://x", "127.0.0.1:80", "http://x/?q=1", "not a url"] {
            assert!(UpstreamBase::parse(url).is_err(), "{url}");
        }
    }

    /// A password or key in an upstream URL never reaches an error message
    /// or the banner/status text (`Display`), and userinfo is refused: it
    /// would otherwise go out in the Host header.
    #[test]
    fn upstream_credentials_are_refused_and_never_shown() {
        for url in [
            "https://user:hunter2@api.example.com",
            "https://api.example.com/v1?key=hunter2",
        ] {
            let err = UpstreamBase::parse(url).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.contains("api.example.com"), "{err}");
        }
        let b = UpstreamBase::parse("http://[::1]:9000/v1/").unwrap();
        assert_eq!(b.to_string(), "http://[::1]:9000/v1");
        let b = UpstreamBase::parse("https://api.example.com").unwrap();
        assert_eq!(b.to_string(), "https://api.example.com");
    }
}
