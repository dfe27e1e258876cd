//! Shared harness for the proxy's end-to-end tests: a simulator with a
//! scenario, a memory store holding one API-key account per simulated
//! account, the proxy in front of it — all on 127.0.0.1 with real sockets —
//! and a small HTTP client.
//!
//! Each test binary uses a different subset of this module.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use marathon_core::{AccountKind, Secret};
use marathon_proxy::{
    EventSubscription, ProxyHandle, ProxySettings, StartOptions, TokenSource, UpstreamBase,
};
use marathon_sim::{Scenario, SimHandle};
use marathon_store::{Credential, MemoryStore, NewAccount, Store};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The client every test uses: plain HTTP/1.1 with keep-alive.
pub type Http = Client<HttpConnector, Full<Bytes>>;

pub fn http_client() -> Http {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http()
}

/// A whole answer, read to the end.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// The status line's reason text, when it is not the standard one.
    pub reason: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// `x-marathon-account`.
    pub fn account(&self) -> Option<&str> {
        self.header("x-marathon-account")
    }

    /// `x-marathon-attempts`.
    pub fn attempts(&self) -> &str {
        self.header("x-marathon-attempts").unwrap_or("")
    }

    /// Every header and the body as one string, for secret scans.
    pub fn dump(&self) -> String {
        let mut s = format!("{} {}\n", self.status, self.reason.as_deref().unwrap_or(""));
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        s.push_str(&self.text());
        s
    }
}

pub async fn send(client: &Http, req: Request<Full<Bytes>>) -> Resp {
    let resp = client
        .request(req)
        .await
        .expect("request reaches the server");
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .expect("body reads to the end")
        .to_bytes();
    Resp {
        status: parts.status.as_u16(),
        reason: parts
            .extensions
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned()),
        headers: parts.headers,
        body,
    }
}

pub async fn get(client: &Http, url: &str) -> Resp {
    send(
        client,
        Request::get(url).body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

/// Wall-clock now in Unix milliseconds (the proxy's clock is the system clock).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Which provider route the harness drives and what a typical request looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `/anthropic/v1/messages`
    Anthropic,
    /// `/openai/v1/chat/completions`
    Openai,
    /// `/codex/responses`
    Codex,
    /// `/google/v1/chat/completions` (the simulator has no Gemini route; the
    /// classifier reads every provider's shape whatever the route)
    Google,
}

impl Api {
    pub fn provider(self) -> &'static str {
        match self {
            Api::Anthropic => "anthropic",
            Api::Openai => "openai",
            Api::Codex => "codex",
            Api::Google => "google",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Api::Anthropic => "/v1/messages",
            Api::Openai | Api::Google => "/v1/chat/completions",
            Api::Codex => "/responses",
        }
    }

    pub fn body(self, stream: bool) -> Value {
        match self {
            Api::Anthropic => {
                json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
                                     "messages": [{"role": "user", "content": "hi"}]})
            }
            Api::Openai | Api::Google => json!({"model": "gpt-4.1", "stream": stream,
                                                "messages": [{"role": "user", "content": "hi"}]}),
            Api::Codex => json!({"model": "gpt-5-codex", "stream": stream, "input": "hi"}),
        }
    }

    /// Headers a real client of this API sends, with its own (client-side) key.
    pub fn client_headers(self) -> Vec<(&'static str, &'static str)> {
        let mut h = vec![("content-type", "application/json")];
        match self {
            Api::Anthropic => {
                h.push(("x-api-key", "client-own-key"));
                h.push(("anthropic-version", "2023-06-01"));
            }
            _ => h.push(("authorization", "Bearer client-own-key")),
        }
        h
    }
}

/// How to set a harness up.
pub struct Opts {
    pub api: Api,
    /// Response headers a relay between proxy and simulator removes (to make
    /// the proxy fall back to a later reset hint in the chain).
    pub strip_response_headers: Vec<&'static str>,
    /// Settings changes before start.
    pub settings: Box<dyn FnOnce(&mut ProxySettings) + Send>,
    /// Accounts stored as OAuth logins: (label, stored access token). The
    /// others are stored as API keys with their simulator key.
    pub oauth: Vec<(&'static str, &'static str)>,
    /// The proxy's token source.
    pub tokens: Option<Arc<dyn TokenSource>>,
}

impl Opts {
    pub fn new(api: Api) -> Self {
        Opts {
            api,
            strip_response_headers: Vec::new(),
            settings: Box::new(|_| {}),
            oauth: Vec::new(),
            tokens: None,
        }
    }

    pub fn oauth(mut self, label: &'static str, stored_access: &'static str) -> Self {
        self.oauth.push((label, stored_access));
        self
    }

    pub fn tokens(mut self, tokens: Arc<dyn TokenSource>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    pub fn strip(mut self, headers: &[&'static str]) -> Self {
        self.strip_response_headers.extend_from_slice(headers);
        self
    }

    pub fn settings(mut self, f: impl FnOnce(&mut ProxySettings) + Send + 'static) -> Self {
        self.settings = Box::new(f);
        self
    }
}

/// Settings for tests: every provider pointed at `upstream`, an ephemeral
/// port, short provider backoffs (the tests count attempts, not wait).
pub fn test_settings(upstream: &str) -> ProxySettings {
    let mut s = ProxySettings::from_config(&marathon_config::Config::default())
        .expect("default config is servable");
    s.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let names: Vec<String> = s.providers.iter().map(|p| p.name.clone()).collect();
    for name in names {
        let p = s.provider_mut(&name).unwrap();
        p.upstream = UpstreamBase::parse(upstream).unwrap();
        p.retry.provider_backoff = Duration::from_millis(10);
        p.retry.provider_backoff_max = Duration::from_secs(5);
        // Tests that poll usage turn it on with a short interval.
        p.usage = None;
    }
    s
}

/// A simulator, a store and a proxy.
pub struct World {
    pub sim: SimHandle,
    pub proxy: ProxyHandle,
    pub store: Arc<MemoryStore>,
    pub client: Http,
    pub api: Api,
    /// (label, key) of every account, in store order.
    pub accounts: Vec<(String, String)>,
    pub relay: Option<Relay>,
}

pub async fn world(scenario: Scenario) -> World {
    world_with(scenario, Opts::new(Api::Anthropic)).await
}

pub async fn world_with(scenario: Scenario, opts: Opts) -> World {
    let accounts: Vec<(String, String)> = scenario
        .accounts
        .iter()
        .map(|a| {
            (
                a.name.clone(),
                a.keys
                    .first()
                    .expect("an account with a key")
                    .expose()
                    .to_owned(),
            )
        })
        .collect();
    let sim = marathon_sim::start(scenario)
        .await
        .expect("simulator starts");
    let relay = if opts.strip_response_headers.is_empty() {
        None
    } else {
        Some(Relay::start(&sim.url(), opts.strip_response_headers.clone()).await)
    };
    let upstream = relay.as_ref().map_or_else(|| sim.url(), Relay::url);
    let store = Arc::new(MemoryStore::new());
    for (label, key) in &accounts {
        let mut account = NewAccount::api_key(
            opts.api.provider(),
            Some(label.clone()),
            Secret::new(key.clone()),
        );
        if let Some((_, access)) = opts.oauth.iter().find(|(l, _)| l == label) {
            account.kind = AccountKind::Oauth;
            account.credential = Credential::Oauth {
                access: Secret::new(*access),
                refresh: Some(Secret::new(format!("rt-{label}-stored"))),
                expires_at: None,
                id_token: None,
                scopes: Vec::new(),
            };
        }
        store.add(account).expect("account stored");
    }
    let mut settings = test_settings(&upstream);
    (opts.settings)(&mut settings);
    let mut start = StartOptions::new(store.clone());
    start.tokens = opts.tokens;
    let proxy = marathon_proxy::start(settings, start)
        .await
        .expect("proxy starts");
    World {
        sim,
        proxy,
        store,
        client: http_client(),
        api: opts.api,
        accounts,
        relay,
    }
}

impl World {
    /// `http://proxy/<provider><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}{}", self.proxy.url(), self.api.provider(), path)
    }

    pub fn request(&self, stream: bool) -> Request<Full<Bytes>> {
        self.request_body(Bytes::from(self.api.body(stream).to_string()))
    }

    pub fn request_body(&self, body: Bytes) -> Request<Full<Bytes>> {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(self.url(self.api.path()));
        for (k, v) in self.api.client_headers() {
            b = b.header(k, v);
        }
        b.body(Full::new(body)).unwrap()
    }

    /// One typical request through the proxy, read to the end.
    pub async fn call(&self) -> Resp {
        send(&self.client, self.request(false)).await
    }

    /// One streaming request through the proxy, read to the end.
    pub async fn call_stream(&self) -> Resp {
        send(&self.client, self.request(true)).await
    }

    /// The same request straight to the simulator with `key`.
    pub async fn direct(&self, key: &str, stream: bool) -> Resp {
        let mut b = Request::builder().method(Method::POST).uri(format!(
            "{}{}",
            self.sim.url(),
            self.api.path()
        ));
        for (k, v) in self.api.client_headers() {
            if k == "x-api-key" || k == "authorization" {
                continue;
            }
            b = b.header(k, v);
        }
        b = match self.api {
            Api::Anthropic => b.header("x-api-key", key),
            _ => b.header("authorization", format!("Bearer {key}")),
        };
        send(
            &self.client,
            b.body(Full::new(Bytes::from(self.api.body(stream).to_string())))
                .unwrap(),
        )
        .await
    }

    pub fn key(&self, label: &str) -> &str {
        &self
            .accounts
            .iter()
            .find(|(l, _)| l == label)
            .expect("known label")
            .1
    }

    /// `/_marathon/status`, over HTTP.
    pub async fn status(&self) -> Value {
        let r = get(
            &self.client,
            &format!("{}/_marathon/status", self.proxy.url()),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// One account's entry in `/_marathon/status`, plus the status's `now`.
    pub async fn account(&self, label: &str) -> (Value, u64) {
        let s = self.status().await;
        let now = s["now"].as_u64().expect("status has now");
        let provider = s["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == self.api.provider())
            .expect("provider in status")
            .clone();
        let acc = provider["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["label"] == label)
            .unwrap_or_else(|| panic!("{label} in status: {provider}"))
            .clone();
        (acc, now)
    }

    /// The account's health state (`ready`, `cooling`, ...).
    pub async fn health(&self, label: &str) -> String {
        self.account(label).await.0["state"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn metrics(&self) -> String {
        get(
            &self.client,
            &format!("{}/_marathon/metrics", self.proxy.url()),
        )
        .await
        .text()
    }
}

/// Waits for the next event of `kind` (`failover`, `cooldown`, ...).
pub async fn next_event(sub: &mut EventSubscription, kind: &str) -> Value {
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let ev = sub.recv().await.expect("proxy still running");
            let v: Value = serde_json::from_str(&ev).expect("event JSON");
            if v["type"] == kind {
                return v;
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {kind} event within 5 s"))
}

/// Every event that arrives within `quiet` of the previous one.
pub async fn drain_events(sub: &mut EventSubscription, quiet: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(quiet, sub.recv()).await {
        out.push(ev);
    }
    out
}

/// A pass-through relay between the proxy and the simulator that removes some
/// response headers.
pub struct Relay {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: &str, strip: Vec<&'static str>) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = target.to_owned();
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build_http();
        let strip: Arc<Vec<HeaderName>> =
            Arc::new(strip.iter().map(|h| HeaderName::from_static(h)).collect());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (client, target, strip) = (client.clone(), target.clone(), strip.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (client, target, strip) =
                            (client.clone(), target.clone(), strip.clone());
                        async move {
                            let (mut parts, body) = req.into_parts();
                            let pq = parts
                                .uri
                                .path_and_query()
                                .map_or("/", |p| p.as_str())
                                .to_owned();
                            parts.uri = format!("{target}{pq}").parse().unwrap();
                            parts.headers.remove(http::header::HOST);
                            let resp = client.request(Request::from_parts(parts, body)).await;
                            match resp {
                                Ok(mut r) => {
                                    for h in strip.iter() {
                                        r.headers_mut().remove(h);
                                    }
                                    Ok::<_, Infallible>(r.map(http_body_util::Either::Left))
                                }
                                Err(_) => Ok(Response::builder()
                                    .status(502)
                                    .body(http_body_util::Either::Right(Full::new(
                                        Bytes::from_static(b"relay"),
                                    )))
                                    .unwrap()),
                            }
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Relay { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upstream that answers 200 `{"ok":true}` and remembers every request's headers.
pub struct Echo {
    addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    pub async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let mut seen = req.headers().clone();
                            // The request target, for tests that check paths and queries.
                            seen.insert(
                                "x-echo-uri",
                                HeaderValue::from_str(&req.uri().to_string()).unwrap(),
                            );
                            log.lock().unwrap().push(seen);
                            let _ = req.into_body().collect().await;
                            let mut r =
                                Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
                            r.headers_mut().insert(
                                "content-type",
                                HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Echo { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Splits an SSE body into its events (blank-line separated), normalising
/// line endings.
pub fn sse_events(body: &str) -> Vec<String> {
    body.replace("\r\n", "\n")
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Replaces the simulator's per-request ids (`msg_sim_<16 hex>`, ...) and
/// `created` timestamps so two answers to the same request compare equal.
pub fn normalise_ids(body: &str) -> String {
    let mut out = body.to_owned();
    for prefix in ["msg_sim_", "resp_sim_", "chatcmpl-sim", "req_sim_"] {
        let mut from = 0;
        while let Some(i) = out[from..].find(prefix) {
            let start = from + i + prefix.len();
            let end = (start + 16).min(out.len());
            out.replace_range(start..end, "################");
            from = end;
        }
    }
    out
}

// ---------------------------------------------------------------- OAuth (token source)

/// A token source: hands out `current`, and on a forced refresh answers as
/// `refresh` says.
pub struct FakeTokens {
    pub current: std::sync::Mutex<String>,
    pub refresh: Result<&'static str, marathon_proxy::TokenError>,
    pub fail_next_access: std::sync::atomic::AtomicBool,
    pub refreshes: std::sync::atomic::AtomicU32,
}

impl FakeTokens {
    pub fn new(stored: &str, refresh: Result<&'static str, marathon_proxy::TokenError>) -> Self {
        FakeTokens {
            current: std::sync::Mutex::new(stored.to_owned()),
            refresh,
            fail_next_access: Default::default(),
            refreshes: Default::default(),
        }
    }
}

impl marathon_proxy::TokenSource for FakeTokens {
    fn access_token<'a>(
        &'a self,
        _account: &'a marathon_core::AccountId,
    ) -> marathon_proxy::BoxFuture<'a, Result<marathon_core::Secret, marathon_proxy::TokenError>>
    {
        Box::pin(async move {
            if self
                .fail_next_access
                .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                return Err(marathon_proxy::TokenError::Transient(
                    "token endpoint unreachable".into(),
                ));
            }
            Ok(marathon_core::Secret::new(
                self.current.lock().unwrap().clone(),
            ))
        })
    }

    fn force_refresh<'a>(
        &'a self,
        _account: &'a marathon_core::AccountId,
        _rejected: &'a marathon_core::Secret,
    ) -> marathon_proxy::BoxFuture<'a, Result<marathon_core::Secret, marathon_proxy::TokenError>>
    {
        Box::pin(async move {
            self.refreshes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match &self.refresh {
                Ok(fresh) => {
                    *self.current.lock().unwrap() = (*fresh).to_owned();
                    Ok(marathon_core::Secret::new(*fresh))
                }
                Err(marathon_proxy::TokenError::Permanent(r)) => {
                    Err(marathon_proxy::TokenError::Permanent(r.clone()))
                }
                Err(marathon_proxy::TokenError::Transient(r)) => {
                    Err(marathon_proxy::TokenError::Transient(r.clone()))
                }
            }
        })
    }
}
