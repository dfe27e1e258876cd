//! Accepting connections and routing requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use marathon_core::budget::RetryBudget;
use marathon_core::pool::Pool;
use marathon_core::rotation::RotationConfig;
use marathon_core::{Clock, SystemClock};
use marathon_store::{HotState, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::ProxyBody;
use crate::browser::Verdict;
use crate::connections::{Connections, Tracked};
use crate::errors::proxy_error;
use crate::events::EventBus;
use crate::headers::presented_keys;
use crate::metrics::ProviderMetrics;
use marathon_core::tokens::TokenSource;

use crate::state::{AppState, ProviderRuntime, ProxySettings};
use crate::upstream::Endpoint;
use crate::{ProxyError, ops};

/// How often the proxy re-reads accounts from the store (other processes,
/// `marathon auth` commands). Hot state is merged every
/// [`crate::shared::HOT_SYNC_EVERY`].
const SYNC_EVERY: Duration = Duration::from_secs(2);

/// A running proxy.
pub struct ProxyHandle {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    state: Arc<AppState>,
}

impl ProxyHandle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What reports refreshes made outside a request (see [`RefreshFeed`]).
    pub fn refresh_feed(&self) -> RefreshFeed {
        RefreshFeed(self.state.clone())
    }

    /// The live status view (as `/_marathon/status` serves it).
    pub fn status(&self) -> serde_json::Value {
        serde_json::to_value(ops::status(&self.state)).unwrap_or_default()
    }

    /// Every event from now on, as the JSON the SSE stream and webhooks carry
    /// (with a human `summary`).
    pub fn subscribe_events(&self) -> EventSubscription {
        EventSubscription(self.state.bus.subscribe())
    }

    /// Stops accepting, lets in-flight requests finish (up to `grace`), saves hot state.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(grace, self.task).await;
        crate::shared::sync_hot(&self.state).await;
    }

    /// Where other instances' news (pushed by a shared store) enters this proxy.
    pub fn peer_inbox(&self) -> crate::shared::PeerInbox {
        crate::shared::PeerInbox(self.state.clone())
    }

    /// Waits until the server stops (it stops only via [`ProxyHandle::shutdown`]).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }
}

/// Tells the proxy about a token refresh it did not ask for (a routine one
/// ahead of expiry, by the refresher): it counts in
/// `marathon_refreshes_total` and goes out as a `refreshed` event naming the
/// account's label. (A refresh after an upstream's 401 is announced by the
/// request that forced it.) Cheap to clone; call from any thread.
#[derive(Clone)]
pub struct RefreshFeed(Arc<AppState>);

impl RefreshFeed {
    /// The account `id` was refreshed.
    pub fn refreshed(&self, id: &marathon_core::AccountId) {
        let now = self.0.now();
        for rt in self.0.providers.values() {
            let events = {
                let mut pool = rt.pool.lock().unwrap_or_else(|e| e.into_inner());
                if pool.account_status(id, now).is_none() {
                    continue;
                }
                pool.refreshed(id, now)
            };
            rt.metrics
                .refreshes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.publish(events);
            return;
        }
    }
}

/// A live feed of the proxy's events.
pub struct EventSubscription(tokio::sync::broadcast::Receiver<Arc<crate::events::EventJson>>);

impl EventSubscription {
    /// The next event's JSON; `None` once the proxy is gone. Events missed by
    /// a slow reader are skipped.
    pub async fn recv(&mut self) -> Option<String> {
        loop {
            match self.0.recv().await {
                Ok(ev) => return Some(ev.json.clone()),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Options for [`start`] beyond the settings.
pub struct StartOptions {
    /// Accounts and hot state.
    pub store: Arc<dyn Store>,
    /// OAuth access tokens (refresh); `None` uses stored tokens as they are.
    pub tokens: Option<Arc<dyn TokenSource>>,
    /// The clock (tests inject one).
    pub clock: Arc<dyn Clock>,
    /// Event loops accepting connections (`serve --workers`): 1 serves on
    /// the caller's runtime; more add single-threaded runtimes on threads of
    /// their own, each with its own `SO_REUSEPORT` listener (see `workers`).
    pub workers: usize,
    /// Other instances sharing the store (a team gateway on Redis), if any.
    pub peers: Option<Arc<dyn crate::shared::Peers>>,
    /// Concurrency slots shared with other instances (the Redis store), so
    /// `max_in_flight` holds across all of them; `None`: per process.
    pub slots: Option<Arc<dyn crate::slots::SharedSlots>>,
}

impl StartOptions {
    /// The usual options: the real clock, no refresher.
    pub fn new(store: Arc<dyn Store>) -> Self {
        StartOptions {
            store,
            tokens: None,
            clock: Arc::new(SystemClock),
            workers: 1,
            peers: None,
            slots: None,
        }
    }
}

/// Binds and starts serving in the background.
pub async fn start(settings: ProxySettings, opts: StartOptions) -> Result<ProxyHandle, ProxyError> {
    if !settings.listen.ip().is_loopback() && settings.access_keys.is_empty() {
        return Err(ProxyError::OpenBind(settings.listen));
    }
    let client = crate::upstream::UpstreamClient::new(&settings.egress);
    let mut providers = crate::state::FastMap::default();
    for (i, p) in settings.providers.iter().enumerate() {
        let rt = ProviderRuntime {
            endpoint: client.endpoint(&p.upstream, None),
            account_endpoints: p
                .account_proxies
                .iter()
                .map(|(label, url)| {
                    let own = crate::egress::ProxyRules::only(url);
                    (label.clone(), client.endpoint(&p.upstream, Some(&own)))
                })
                .collect(),
            paths: Default::default(),
            pool: Mutex::new(Pool::new(
                p.name.clone(),
                p.pool.clone(),
                0x6d61_7261_7468_6f6e ^ i as u64,
            )),
            budget: Mutex::new(RetryBudget::default()),
            creds: RwLock::new(Default::default()),
            metrics: ProviderMetrics::default(),
            tokens: Default::default(),
            last_exhausted_event: Default::default(),
            rotation: RotationConfig {
                provider: p.name.clone(),
                retry: p.retry.clone(),
                max_wait: p.max_wait,
                short_wait: p.short_wait,
            },
            settings: p.clone(),
        };
        providers.insert(p.name.clone(), Arc::new(rt));
    }
    let listener = crate::workers::bind(settings.listen, opts.workers > 1)
        .map_err(|e| ProxyError::Bind(settings.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ProxyError::Bind(settings.listen, e))?;
    let bus = EventBus::new();
    bus.start_sinks(&settings.sinks, client.clone());
    let client_headers =
        crate::headers::client_headers(settings.providers.iter().map(|p| &p.credentials));
    let browser =
        crate::browser::Guard::new(addr, &settings.allowed_hosts, &settings.allowed_origins);
    let access = crate::access::AccessKeys::new(&settings.access_keys);
    let state = Arc::new(AppState {
        access,
        client_headers,
        session_keys: Default::default(),
        settings,
        providers,
        client,
        bus,
        clock: opts.clock,
        store: opts.store,
        tokens: opts.tokens,
        browser,
        peers: opts.peers,
        slots: opts.slots,
        slots_outage: Default::default(),
        hot: Default::default(),
    });

    // Accounts and remembered cooldowns before the first request.
    let store = state.store.clone();
    let (accounts, hot) = tokio::task::spawn_blocking(move || (store.list(), store.load_hot()))
        .await
        .map_err(|e| ProxyError::Store(e.to_string()))?;
    state.sync_accounts(&accounts.map_err(|e| ProxyError::Store(e.to_string()))?);
    match hot {
        Ok(hot) => restore_hot(&state, &hot),
        Err(e) => tracing::warn!("hot state not restored (cooldowns start fresh): {e}"),
    }

    let (shutdown, rx) = watch::channel(false);
    tokio::spawn(background(state.clone(), rx.clone()));
    tokio::spawn(crate::activity::sample_pools(state.clone(), rx.clone()));
    crate::usage::spawn(state.clone(), rx.clone());
    // One connection table (and cap) for every worker.
    let conns = Arc::new(Connections::new(state.settings.limits));
    tracing::debug!("serving at most {} client connections", conns.cap());
    let sweeper = tokio::spawn(conns.clone().sweep());
    let others =
        crate::workers::spawn(opts.workers.saturating_sub(1), addr, &state, &conns, &rx).await?;
    let main = accept_loop(listener, state.clone(), conns, rx);
    let task = tokio::spawn(async move {
        main.await;
        let _ = tokio::task::spawn_blocking(move || {
            for worker in others {
                let _ = worker.join();
            }
        })
        .await;
        sweeper.abort();
    });
    Ok(ProxyHandle {
        addr,
        shutdown,
        task,
        state,
    })
}

/// The first pause after the process runs out of descriptors (or buffers),
/// doubled on each failure up to [`ACCEPT_BACKOFF_MAX`]: retrying at once
/// would spin a core and starve the connections that are being served.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts and serves connections until `shutdown`, then lets the ones in
/// flight finish. One per worker (`workers`), all sharing `conns`.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    state: Arc<AppState>,
    conns: Arc<Connections>,
    mut shutdown: watch::Receiver<bool>,
) {
    // One flat write buffer instead of a queue of iovecs: LLM answers are
    // small or come in small chunks, and the queue's bookkeeping cost more
    // than the copy (measured). No hyper timer: the head and idle timeouts
    // are `connections`' (hyper's would arm a timer per request).
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_buf_size(crate::guard::MAX_REQUEST_HEAD)
        .writev(false)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    let Some(admitted) = conns.admit(&stream) else { continue };
                    let _ = stream.set_nodelay(true);
                    let (state, conn) = (state.clone(), admitted.conn().clone());
                    let svc = service_fn(move |req: Request<Incoming>| {
                        conn.request_started();
                        if crate::websocket::wants_upgrade(req.headers()) {
                            conn.allow_upgrade();
                        }
                        let (state, conn) = (state.clone(), conn.clone());
                        // Every answer, marathon's own too, leaves through
                        // the scrubber: no known secret reaches a client.
                        async move {
                            let answer = crate::scrub::response(handle(state, req).await);
                            Ok::<_, Infallible>(answer.map(|b| Tracked::new(b, conn)))
                        }
                    });
                    tokio::spawn(admitted.serve(stream, builder.clone(), svc));
                }
                Err(e) if out_of_resources(&e) => {
                    if backoff == ACCEPT_BACKOFF_MIN {
                        tracing::warn!("cannot accept connections: {e}; closing idle connections and retrying (raise the descriptor limit, ulimit -n, or lower server.max_connections)");
                    }
                    // Free descriptors for the connections still coming.
                    conns.evict(1);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => break,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
                // One connection's trouble (reset before it was accepted...).
                Err(_) => {}
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    conns.close().await;
}

/// Out of descriptors, socket buffers or memory: waiting helps, retrying at once does not.
fn out_of_resources(e: &std::io::Error) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const ENOBUFS: i32 = 105;
    const ENOMEM: i32 = 12;
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
}

async fn handle(state: Arc<AppState>, mut req: Request<Incoming>) -> Response<ProxyBody> {
    // Web pages first: before the body is read, the access key checked or an
    // account picked.
    let cors = match state.browser.check(req.method(), req.headers()) {
        Verdict::Allow => return route(state, req).await,
        Verdict::AllowOwnPage => None,
        Verdict::AllowCors(origin) => Some(origin),
        Verdict::Preflight(answer) => return answer,
        Verdict::Refuse(status, why) => return refused(&state, req.uri().path(), status, &why),
    };
    // Another site's page may use the providers (allowed_origins) but not
    // change marathon's accounts.
    if cors.is_some()
        && req.method() != http::Method::GET
        && req.uri().path().starts_with("/_marathon/")
    {
        let why = "only marathon's own page may change accounts";
        return refused(&state, req.uri().path(), StatusCode::FORBIDDEN, why);
    }
    // A page's request. Its Origin is between the browser and marathon: the
    // provider would take it for a browser calling it directly (and Anthropic
    // refuses those).
    req.headers_mut().remove(header::ORIGIN);
    let mut resp = route(state, req).await;
    match cors {
        Some(origin) => crate::browser::allow_cors(resp.headers_mut(), origin),
        None => crate::browser::strip_cors(resp.headers_mut()),
    }
    resp
}

/// A request the browser checks turned away, in the provider's error format when the
/// path names one.
fn refused(state: &AppState, path: &str, status: StatusCode, why: &str) -> Response<ProxyBody> {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let flavor = state
        .providers
        .get(first)
        .map_or(marathon_core::ApiFlavor::Openai, |p| p.settings.flavor);
    let mut r = proxy_error(flavor, status, why);
    // Whatever the client meant, this connection was for someone else.
    r.headers_mut()
        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    r
}

async fn route(state: Arc<AppState>, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix('/') else {
        return not_found();
    };
    let (first, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    // Health and the dashboard's static files hold no data: no key needed
    // (the dashboard's script asks for it and sends it with each fetch).
    if first == "_marathon" && ops::is_public(tail.trim_start_matches('/')) {
        return ops::route(&state, tail.trim_start_matches('/'), req.headers());
    }
    // A client's connectivity probe is answered here, before the access key
    // and before any account: it must not spend or judge one (probe.rs).
    let known_route = first.is_empty() || state.providers.contains_key(first);
    if known_route && crate::probe::is_probe(req.method(), req.headers(), tail) {
        return crate::probe::answer();
    }
    let mut client_key = None;
    if !state.access.is_empty() {
        let Some(key) = state.access.check(presented_keys(req.headers())) else {
            let flavor = state
                .providers
                .get(first)
                .map_or(marathon_core::ApiFlavor::Openai, |p| p.settings.flavor);
            return proxy_error(
                flavor,
                StatusCode::UNAUTHORIZED,
                "this proxy needs an access key: send it as the API key (x-api-key or Authorization: Bearer) or in x-marathon-key",
            );
        };
        client_key = Some(key.clone());
    }
    if first == "_marathon" {
        let tail = tail.trim_start_matches('/').to_string();
        if req.method() == http::Method::POST {
            return crate::actions::handle(state, &tail, req).await;
        }
        return ops::route(&state, &tail, req.headers());
    }
    let Some(rt) = state.providers.get(first).cloned() else {
        return not_found_provider(&state, first);
    };

    // `/` + the provider's name: forward reads the rest of the path itself.
    let route_len = 1 + first.len();
    // Who is asking, for the per-key counters (and token accounting later
    // in the request: `req.extensions().get::<ClientKey>()`).
    if let Some(key) = client_key {
        key.count_request();
        req.extensions_mut().insert(key);
    }
    if crate::websocket::wants_upgrade(req.headers()) {
        return crate::websocket::forward(state, rt, req, route_len).await;
    }
    crate::forward::forward(state, rt, req, route_len).await
}

fn not_found() -> Response<ProxyBody> {
    proxy_error(
        marathon_core::ApiFlavor::Openai,
        StatusCode::NOT_FOUND,
        "not found",
    )
}

fn not_found_provider(state: &AppState, name: &str) -> Response<ProxyBody> {
    let mut known: Vec<&str> = state.providers.keys().map(String::as_str).collect();
    known.sort_unstable();
    proxy_error(
        marathon_core::ApiFlavor::Openai,
        StatusCode::NOT_FOUND,
        &format!(
            "no provider named {name:?}; point your client at http://<proxy>/<provider> with one of: {}",
            known.join(", ")
        ),
    )
}

async fn background(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let mut sync = tokio::time::interval(SYNC_EVERY);
    let mut save = tokio::time::interval(crate::shared::HOT_SYNC_EVERY);
    save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(crate::upstream::SWEEP_EVERY);
    sync.tick().await;
    save.tick().await;
    sweep.tick().await;
    loop {
        tokio::select! {
            _ = sync.tick() => {
                let store = state.store.clone();
                match tokio::task::spawn_blocking(move || store.list()).await {
                    Ok(Ok(accounts)) => state.sync_accounts(&accounts),
                    Ok(Err(e)) => state.hot.store_failed("re-reading accounts", &e),
                    Err(_) => {}
                }
            }
            _ = save.tick() => crate::shared::sync_hot(&state).await,
            _ = sweep.tick() => {
                for rt in state.providers.values() {
                    rt.endpoint.sweep();
                    rt.account_endpoints.values().for_each(Endpoint::sweep);
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

fn restore_hot(state: &AppState, hot: &HotState) {
    let now = state.now();
    for rt in state.providers.values() {
        let mut pool = rt.pool.lock().unwrap_or_else(|e| e.into_inner());
        marathon_store::pool_sync::restore_hot(&mut pool, hot, now);
    }
}
