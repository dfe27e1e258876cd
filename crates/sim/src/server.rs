//! The HTTP side: a plain hyper HTTP/1 server (axum would hide the socket,
//! and a connection reset needs it), routing, the admin endpoints.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::SimError;
use crate::gemini;
use crate::introspect::{Introspector, Verdict};
use crate::scenario::{Account, DEFAULT_MODEL, DEFAULT_REPLY, Scenario, validate_account};
use crate::shapes::{self, Answer, Api, Canned, Flavour, Text};
use crate::world::{Counts, Outcome, World, decide};
use crate::ws;

/// Request bodies past this size are refused (the simulator is not a sink).
const MAX_BODY: usize = 64 << 20;

/// Precomputed answers for fast mode.
#[derive(Debug)]
struct Fast {
    json: [Bytes; 4],
    stream: [Arc<[Bytes]>; 4],
}

fn api_index(api: Api) -> usize {
    match api {
        Api::Messages => 0,
        Api::Chat => 1,
        Api::Responses => 2,
        Api::Gemini => 3,
    }
}

/// The scenario in force with everything derived from it.
#[derive(Debug)]
pub(crate) struct Current {
    pub(crate) world: World,
    fast: Option<Fast>,
    introspector: Option<Arc<Introspector>>,
    pub(crate) model: String,
    pub(crate) reply: String,
}

/// State shared by all connections.
#[derive(Debug)]
pub(crate) struct Shared {
    current: RwLock<Arc<Current>>,
    pub(crate) counts: Counts,
    /// Requests open per account, and the most at once.
    pub(crate) concurrency: crate::world::Concurrency,
    /// The usage endpoints' call counts and throttle.
    pub(crate) usage: crate::usage::UsageDesk,
    ids: AtomicU64,
    pub(crate) log: bool,
}

impl Shared {
    pub(crate) fn new(scenario: Scenario, log: bool) -> Result<Shared, SimError> {
        scenario.validate()?;
        let counts = Counts::default();
        let current = build_current(scenario, &counts, None, None)?;
        Ok(Shared {
            current: RwLock::new(Arc::new(current)),
            counts,
            concurrency: Default::default(),
            usage: Default::default(),
            ids: AtomicU64::new(1),
            log,
        })
    }

    pub(crate) fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the whole world; every account starts afresh (counts stay).
    pub(crate) fn set_scenario(&self, scenario: Scenario) -> Result<(), SimError> {
        scenario.validate()?;
        let next = build_current(scenario, &self.counts, None, None)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(())
    }

    /// Adds or replaces one account; the others keep their windows. When the
    /// new definition has no credentials, the old ones are kept.
    pub(crate) fn set_account(&self, mut account: Account) -> Result<(), SimError> {
        validate_account(&account)?;
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut scenario = guard.world.scenario.clone();
        match scenario
            .accounts
            .iter_mut()
            .find(|a| a.name == account.name)
        {
            Some(old) => {
                if account.keys.is_empty() {
                    account.keys = std::mem::take(&mut old.keys);
                }
                *old = account.clone();
            }
            None => scenario.accounts.push(account.clone()),
        }
        scenario.validate()?;
        let next = build_current(
            scenario,
            &self.counts,
            Some((&guard.world, &account.name)),
            guard.introspector.clone(),
        )?;
        *guard = Arc::new(next);
        Ok(())
    }

    /// Removes an account; whether it existed.
    pub(crate) fn remove_account(&self, name: &str) -> Result<bool, SimError> {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut scenario = guard.world.scenario.clone();
        let before = scenario.accounts.len();
        scenario.accounts.retain(|a| a.name != name);
        if scenario.accounts.len() == before {
            return Ok(false);
        }
        let next = build_current(
            scenario,
            &self.counts,
            Some((&guard.world, name)),
            guard.introspector.clone(),
        )?;
        *guard = Arc::new(next);
        Ok(true)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }
}

fn build_current(
    scenario: Scenario,
    counts: &Counts,
    previous: Option<(&World, &str)>,
    introspector: Option<Arc<Introspector>>,
) -> Result<Current, SimError> {
    let introspector = match introspector {
        Some(i) => Some(i),
        None => Introspector::from_scenario(&scenario)?.map(Arc::new),
    };
    let model = scenario
        .model
        .clone()
        .unwrap_or_else(|| DEFAULT_MODEL.to_owned());
    let reply = scenario
        .reply
        .clone()
        .unwrap_or_else(|| DEFAULT_REPLY.to_owned());
    let fast = scenario.fast.then(|| {
        let text = Text::new(&reply, None);
        let answer = Answer {
            id: "sim_fast_0000000000000001",
            model: &model,
            text: &text,
            input_tokens: 16,
            cached_tokens: 0,
            created: shapes::now_epoch(),
        };
        let apis = [Api::Messages, Api::Chat, Api::Responses, Api::Gemini];
        Fast {
            json: apis.map(|api| Bytes::from(shapes::json_body(api, &answer))),
            stream: apis.map(|api| shapes::sse_events(api, &answer, false, None).into()),
        }
    });
    let world = match previous {
        Some((w, changed)) => World::build(scenario, counts, Some(w), &|n| n != changed),
        None => World::build(scenario, counts, None, &|_| false),
    };
    Ok(Current {
        world,
        fast,
        introspector,
        model,
        reply,
    })
}

/// A response body: a whole buffer, or SSE events paced one by one.
#[derive(Debug)]
pub(crate) enum SimBody {
    Full(Option<Bytes>),
    Sse(Box<SseBody>),
}

#[derive(Debug)]
pub(crate) struct SseBody {
    events: Arc<[Bytes]>,
    next: usize,
    slow: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The account's open request, closed when the stream ends or is dropped.
    open: Option<crate::world::Open>,
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            SimBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            SimBody::Sse(s) => {
                if s.next >= s.events.len() {
                    s.open = None;
                    return Poll::Ready(None);
                }
                if s.next > 0 && !s.slow.is_zero() {
                    let slow = s.slow;
                    let sleep = s
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(slow)));
                    ready!(sleep.as_mut().poll(cx));
                    s.sleep = None;
                }
                let b = s.events[s.next].clone();
                s.next += 1;
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SimBody::Full(b) => b.is_none(),
            SimBody::Sse(s) => s.next >= s.events.len(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            SimBody::Full(None) => SizeHint::with_exact(0),
            SimBody::Sse(_) => SizeHint::default(),
        }
    }
}

/// Lets a handler drop its own connection with an RST.
#[derive(Debug, Default)]
pub(crate) struct Kill {
    notify: Notify,
    fired: AtomicBool,
}

impl Kill {
    /// Makes the connection end with a TCP RST (the socket is dropped with
    /// SO_LINGER 0 once its last user lets go of it).
    pub(crate) fn arm(&self) {
        self.fired.store(true, Ordering::Release);
    }
}

/// The connection's socket; on drop after a kill it is closed with SO_LINGER 0
/// so the client sees a reset rather than an orderly close.
struct ResetOnDrop {
    inner: TcpStream,
    kill: Arc<Kill>,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if self.kill.fired.load(Ordering::Acquire) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for ResetOnDrop {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResetOnDrop {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Accepts connections until `shutdown` flips.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of descriptors and the like: back off instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        tokio::spawn(serve_conn(stream, shared.clone(), shutdown.clone()));
    }
}

async fn serve_conn(stream: TcpStream, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let kill = Arc::new(Kill::default());
    let io = ResetOnDrop {
        inner: stream,
        kill: kill.clone(),
    };
    let k = kill.clone();
    let stop = shutdown.clone();
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        let kill = k.clone();
        let stop = stop.clone();
        async move { Ok::<_, Infallible>(handle(&shared, &kill, &stop, req).await) }
    });
    // With upgrades, the connection future ends once a WebSocket takes the
    // socket over; the socket's own task runs on.
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        _ = kill.notify.notified() => {}
        _ = shutdown.changed() => {}
    }
}

enum Route {
    Api(Api),
    Gemini(gemini::Call),
    Models,
    /// `GET …/api/oauth/usage` or `GET …/wham/usage`.
    Usage(crate::usage::Endpoint),
    Admin,
    /// `HEAD /` or `HEAD …/api/hello`: a client's credential-less warm-up.
    Warmup,
    /// `GET …/responses` asking for `Upgrade: websocket` (Codex's transport).
    ResponsesSocket,
    Unknown,
}

/// Routes by suffix, so any prefix works: `/v1/messages`, `/anthropic/v1/messages`,
/// `/backend-api/codex/responses`, `/v1beta/models/gemini-2.5-pro:generateContent`.
fn route(method: &Method, uri: &http::Uri, headers: &HeaderMap) -> Route {
    let path = uri.path();
    if path.starts_with("/_sim/") {
        return Route::Admin;
    }
    let p = path.trim_end_matches('/');
    match *method {
        Method::POST if p.ends_with("/messages") => Route::Api(Api::Messages),
        Method::POST if p.ends_with("/chat/completions") => Route::Api(Api::Chat),
        Method::POST if p.ends_with("/responses") => Route::Api(Api::Responses),
        Method::POST => gemini::Call::parse(p, uri.query()).map_or(Route::Unknown, Route::Gemini),
        Method::GET if p.ends_with("/responses") && ws::wants_upgrade(headers) => {
            Route::ResponsesSocket
        }
        Method::GET if p.ends_with("/models") => Route::Models,
        Method::GET if crate::usage::Endpoint::from_path(p).is_some() => {
            crate::usage::Endpoint::from_path(p).map_or(Route::Unknown, Route::Usage)
        }
        Method::HEAD if p.is_empty() || p.ends_with("/api/hello") => Route::Warmup,
        _ => Route::Unknown,
    }
}

/// The credential a request presents: `x-api-key`, `x-goog-api-key`, a
/// bearer token, or (Gemini API style) a `key=` query parameter.
pub(crate) fn credential<'a>(h: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    for name in ["x-api-key", "x-goog-api-key"] {
        if let Some(v) = h.get(name).and_then(|v| v.to_str().ok()) {
            return Some(v.trim());
        }
    }
    let bearer = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|auth| auth.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty());
    bearer.or_else(|| {
        query?
            .split('&')
            .find_map(|kv| kv.strip_prefix("key="))
            .filter(|k| !k.is_empty())
    })
}

fn respond(status: u16, content_type: &'static str, body: SimBody) -> Response<SimBody> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_response(status: u16, body: String) -> Response<SimBody> {
    respond(
        status,
        "application/json",
        SimBody::Full(Some(Bytes::from(body))),
    )
}

fn add_headers(r: &mut Response<SimBody>, headers: &[(&'static str, String)]) {
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            r.headers_mut().append(*name, v);
        }
    }
}

fn canned(c: Canned) -> Response<SimBody> {
    let mut r = respond(
        c.status,
        c.content_type,
        SimBody::Full(Some(Bytes::from(c.body))),
    );
    add_headers(&mut r, &c.headers);
    r
}

/// The header a provider names its request id in (Google sends none).
fn request_id_header(flavour: Flavour) -> Option<&'static str> {
    match flavour {
        Flavour::Anthropic => Some("request-id"),
        Flavour::OpenAi => Some("x-request-id"),
        Flavour::Google => None,
    }
}

fn add_request_id(r: &mut Response<SimBody>, flavour: Flavour, rid: String) {
    if let Some(name) = request_id_header(flavour) {
        add_headers(r, &[(name, rid)]);
    }
}

/// Who made a request.
pub(crate) enum Who<'a> {
    Listed(&'a crate::world::Live),
    /// Known only through introspection: behaves `ok`.
    Introspected(String),
}

impl Who<'_> {
    pub(crate) fn name(&self) -> &str {
        match self {
            Who::Listed(l) => &l.account.name,
            Who::Introspected(n) => n,
        }
    }

    /// The scenario's account, when listed.
    pub(crate) fn account(&self) -> Option<&Account> {
        match self {
            Who::Listed(l) => Some(&l.account),
            Who::Introspected(_) => None,
        }
    }

    /// Counts one generation request and decides its fate.
    pub(crate) fn decide(&self, shared: &Shared) -> Outcome {
        match self {
            Who::Listed(l) => {
                l.count.fetch_add(1, Ordering::Relaxed);
                let mut st = l.state.lock().unwrap_or_else(|p| p.into_inner());
                decide(&l.account, &mut st, Instant::now(), SystemTime::now())
            }
            Who::Introspected(name) => {
                shared.counts.counter(name).fetch_add(1, Ordering::Relaxed);
                Outcome::Ok(None)
            }
        }
    }
}

/// Why a request belongs to no account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stranger {
    /// No credential, or one nobody holds: 401 (Google: 400).
    Unknown,
    /// The introspection endpoint could not say: 503.
    Unverifiable,
}

impl Stranger {
    /// The answer, in the route's format.
    pub(crate) fn answer(self, flavour: Flavour, rid: &str) -> Canned {
        match self {
            Stranger::Unknown => shapes::unauthorized(flavour, false, rid),
            Stranger::Unverifiable => shapes::failure(flavour, 503, None, rid),
        }
    }
}

/// The account a credential belongs to.
pub(crate) async fn identify<'c>(
    cur: &'c Current,
    credential: Option<&str>,
) -> Result<Who<'c>, Stranger> {
    let c = credential.ok_or(Stranger::Unknown)?;
    if let Some(l) = cur.world.by_key(c) {
        return Ok(Who::Listed(l));
    }
    let Some(i) = &cur.introspector else {
        return Err(Stranger::Unknown);
    };
    match i.check(c).await {
        Verdict::Active(name) => Ok(match cur.world.by_name(&name) {
            Some(l) => Who::Listed(l),
            None => Who::Introspected(name),
        }),
        Verdict::Inactive => Err(Stranger::Unknown),
        Verdict::Unavailable => Err(Stranger::Unverifiable),
    }
}

async fn handle(
    shared: &Arc<Shared>,
    kill: &Arc<Kill>,
    shutdown: &watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Response<SimBody> {
    let (api, call) = match route(req.method(), req.uri(), req.headers()) {
        Route::Api(api) => (api, None),
        Route::Gemini(call) if call.method == gemini::Method::CountTokens => {
            return count_tokens(shared, req).await;
        }
        Route::Gemini(call) => (Api::Gemini, Some(call)),
        Route::ResponsesSocket => return ws::accept(shared, kill, shutdown, req).await,
        Route::Admin => {
            let (parts, body) = req.into_parts();
            return admin(shared, parts, body).await;
        }
        Route::Models => return models(shared, &req.into_parts().0).await,
        Route::Usage(endpoint) => return usage(shared, endpoint, &req.into_parts().0).await,
        // Nothing to check and nothing to count: any answer will do, and a
        // fast empty 200 is what a real edge sends.
        Route::Warmup => {
            let mut r = Response::new(SimBody::Full(None));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            return r;
        }
        Route::Unknown => {
            return json_response(
                404,
                r#"{"error":{"message":"Unknown route (marathon-sim serves /v1/messages, /v1/chat/completions, /v1/responses, /v1/models, /v1beta/models/{model}:generateContent)","type":"invalid_request_error","param":null,"code":"unknown_url"}}"#.into(),
            );
        }
    };
    let (parts, body) = req.into_parts();
    let flavour = api.flavour();
    let cur = shared.current();
    let fast = cur.fast.is_some();
    let id = shared.next_id();
    let rid = format!("req_sim_{id:016x}");
    let log = shared.log && !fast;
    let line = |account: &str, what: &dyn std::fmt::Display| {
        if log {
            eprintln!(
                "marathon-sim: {} {} account={account} -> {what}",
                parts.method,
                parts.uri.path()
            );
        }
    };

    let who = match identify(&cur, credential(&parts.headers, parts.uri.query())).await {
        Ok(who) => who,
        Err(stranger) => {
            let mut r = canned(stranger.answer(flavour, &rid));
            line("?", &r.status().as_u16());
            add_request_id(&mut r, flavour, rid);
            return r;
        }
    };
    let open = shared.concurrency.open(who.name());
    let outcome = who.decide(shared);

    // Read the request before answering even a failure, so the connection
    // stays reusable as it would with a real provider.
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return canned(shapes::bad_request(
                flavour,
                "request body too large or cut off",
                &rid,
            ));
        }
    };

    let account = who.account();
    let model = || match &call {
        Some(c) => c.model.clone(),
        None if fast => cur.model.clone(),
        None => request_model(&bytes).unwrap_or_else(|| cur.model.clone()),
    };
    let mut resp = match outcome {
        Outcome::Reset => {
            line(who.name(), &"reset");
            kill.arm();
            kill.notify.notify_one();
            // The connection task drops the socket (with an RST) on the notify.
            return std::future::pending().await;
        }
        Outcome::Expired => canned(shapes::unauthorized(flavour, true, &rid)),
        Outcome::Fail {
            status,
            kind,
            retry_after,
        } => {
            let mut c = shapes::failure(flavour, status, kind, &rid);
            if let Some(s) = retry_after {
                c.headers.push(("retry-after", s.to_string()));
            }
            canned(c)
        }
        Outcome::Limited(v) => canned(shapes::limited(
            shapes::style_for(&v, flavour),
            &v,
            &model(),
            &rid,
        )),
        Outcome::Ok(view) => {
            let mut r = match success(&cur, api, call.as_ref(), account, &bytes, id, &rid) {
                Ok(r) => r,
                Err(c) => canned(c),
            };
            if let Some(v) = view {
                add_headers(
                    &mut r,
                    &shapes::quota_headers(shapes::style_for(&v, flavour), &v),
                );
            }
            r
        }
    };
    add_request_id(&mut resp, flavour, rid);
    line(who.name(), &resp.status().as_u16());
    if let Some(a) = account
        && a.slow_ms > 0
        && matches!(resp.body(), SimBody::Full(_))
    {
        tokio::time::sleep(Duration::from_millis(a.slow_ms)).await;
    }
    if let SimBody::Sse(s) = resp.body_mut() {
        // A stream stays open until its last event.
        s.open = Some(open);
    }
    resp
}

/// A usage endpoint: the caller's windows, not counted as a generation nor
/// held to the quota; 429 while throttled (counted either way).
async fn usage(
    shared: &Shared,
    endpoint: crate::usage::Endpoint,
    parts: &http::request::Parts,
) -> Response<SimBody> {
    let cur = shared.current();
    let who = identify(&cur, credential(&parts.headers, parts.uri.query())).await;
    let name = who.as_ref().ok().map(|w| w.name().to_owned());
    if let Some(retry_after) = shared.usage.count(name.as_deref()) {
        let mut r = json_response(
            429,
            r#"{"error":{"type":"rate_limit_error","message":"Rate limited. Please try again later."}}"#
                .into(),
        );
        add_headers(&mut r, &[("retry-after", retry_after.to_string())]);
        return r;
    }
    let Ok(who) = who else {
        return json_response(
            401,
            r#"{"error":{"type":"authentication_error","message":"OAuth token is invalid or expired"}}"#
                .into(),
        );
    };
    if let Some(header) = crate::usage::missing_header(endpoint, &parts.headers) {
        return json_response(
            400,
            format!(
                r#"{{"error":{{"type":"invalid_request_error","message":"missing {header}"}}}}"#
            ),
        );
    }
    let view = match &who {
        Who::Listed(l) => crate::usage::view_of(l),
        Who::Introspected(_) => None,
    };
    json_response(200, crate::usage::body(endpoint, view.as_ref()))
}

/// `:countTokens`: needs a known credential; not a generation, so neither
/// counted nor held to the quota.
async fn count_tokens(shared: &Shared, req: Request<Incoming>) -> Response<SimBody> {
    let (parts, body) = req.into_parts();
    let cur = shared.current();
    let rid = format!("req_sim_{:016x}", shared.next_id());
    if let Err(stranger) = identify(&cur, credential(&parts.headers, parts.uri.query())).await {
        return canned(stranger.answer(Flavour::Google, &rid));
    }
    let Ok(bytes) = Limited::new(body, MAX_BODY).collect().await else {
        return canned(shapes::bad_request(
            Flavour::Google,
            "request body too large or cut off",
            &rid,
        ));
    };
    let tokens = (bytes.to_bytes().len() as u64 / 4).max(1);
    json_response(200, gemini::count_tokens(tokens))
}

fn request_model(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("model")?.as_str().map(str::to_owned)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn sse_response(events: Arc<[Bytes]>, slow: Duration) -> Response<SimBody> {
    let mut r = respond(
        200,
        "text/event-stream; charset=utf-8",
        SimBody::Sse(Box::new(SseBody {
            events,
            next: 0,
            slow,
            sleep: None,
            open: None,
        })),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// A successful answer (JSON or SSE).
fn success(
    cur: &Current,
    api: Api,
    call: Option<&gemini::Call>,
    account: Option<&Account>,
    body: &[u8],
    id: u64,
    rid: &str,
) -> Result<Response<SimBody>, Canned> {
    let plain = account.is_none_or(|a| !a.customises_streams());
    // A Gemini call says in its path whether it streams; the others in the body.
    let gemini_method = call.map(|c| c.method);
    if let Some(fast) = &cur.fast
        && plain
        && gemini_method != Some(gemini::Method::StreamArray)
    {
        let stream = match gemini_method {
            Some(m) => m == gemini::Method::StreamSse,
            None => contains(body, b"\"stream\":true") || contains(body, b"\"stream\": true"),
        };
        let i = api_index(api);
        return Ok(if stream {
            sse_response(fast.stream[i].clone(), Duration::ZERO)
        } else {
            respond(
                200,
                "application/json",
                SimBody::Full(Some(fast.json[i].clone())),
            )
        });
    }
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| shapes::bad_request(api.flavour(), &format!("invalid JSON body: {e}"), rid))?;
    if !v.is_object() {
        return Err(shapes::bad_request(
            api.flavour(),
            "the body must be a JSON object",
            rid,
        ));
    }
    let model = match call {
        Some(c) => &c.model,
        None => v
            .get("model")
            .and_then(|m| m.as_str())
            .unwrap_or(&cur.model),
    };
    let stream = match gemini_method {
        Some(m) => m != gemini::Method::Generate,
        None => v.get("stream").and_then(|s| s.as_bool()) == Some(true),
    };
    let include_usage = v
        .pointer("/stream_options/include_usage")
        .and_then(|s| s.as_bool())
        == Some(true);
    let text = Text::new(&cur.reply, account.and_then(|a| a.stream_events));
    let prefix = match api {
        Api::Messages => "msg_sim_",
        Api::Chat => "chatcmpl-sim",
        Api::Responses => "resp_sim_",
        Api::Gemini => "sim",
    };
    let answer_id = format!("{prefix}{id:016x}");
    let answer = Answer {
        id: &answer_id,
        model,
        text: &text,
        input_tokens: (body.len() as u64 / 4).max(1),
        cached_tokens: shapes::cached_tokens(body, (body.len() as u64 / 4).max(1)),
        created: shapes::now_epoch(),
    };
    if stream {
        let error = account.and_then(|a| a.stream_error_after.map(|n| (n, a.stream_error)));
        let slow = Duration::from_millis(account.map_or(0, |a| a.slow_ms));
        if gemini_method == Some(gemini::Method::StreamArray) {
            let pieces = gemini::stream(&answer, false, error);
            let mut r = sse_response(pieces.into(), slow);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=UTF-8"),
            );
            return Ok(r);
        }
        let events = shapes::sse_events(api, &answer, include_usage, error);
        Ok(sse_response(events.into(), slow))
    } else {
        Ok(json_response(200, shapes::json_body(api, &answer)))
    }
}

async fn models(shared: &Shared, parts: &http::request::Parts) -> Response<SimBody> {
    let google = parts.headers.contains_key("x-goog-api-key")
        || parts
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("key=")));
    let flavour = if parts.headers.contains_key("anthropic-version") {
        Flavour::Anthropic
    } else if google {
        Flavour::Google
    } else {
        Flavour::OpenAi
    };
    let cur = shared.current();
    let known = match identify(&cur, credential(&parts.headers, parts.uri.query())).await {
        Ok(who) => who.account().is_none_or(|a| !a.expired),
        Err(_) => false,
    };
    if !known {
        return canned(shapes::unauthorized(flavour, false, "req_sim_models"));
    }
    if flavour == Flavour::Google {
        return json_response(200, gemini::models(&cur.model));
    }
    json_response(200, shapes::models(&cur.model))
}

fn admin_error(status: u16, message: &str) -> Response<SimBody> {
    json_response(status, serde_json::json!({ "error": message }).to_string())
}

async fn admin(shared: &Shared, parts: http::request::Parts, body: Incoming) -> Response<SimBody> {
    let path = parts.uri.path().trim_end_matches('/');
    let read = |body: Incoming| async move {
        Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|_| admin_error(400, "request body too large or cut off"))
    };
    let ok = || json_response(200, r#"{"ok":true}"#.into());
    match (&parts.method, path) {
        (&Method::GET, "/_sim/health") => ok(),
        (&Method::GET, "/_sim/counts") => json_response(
            200,
            serde_json::to_string(&shared.counts.snapshot()).unwrap_or_else(|_| "{}".into()),
        ),
        (&Method::GET, "/_sim/concurrency") => json_response(
            200,
            serde_json::json!({
                "max": shared.concurrency.max(),
                "open": shared.concurrency.open_now(),
            })
            .to_string(),
        ),
        (&Method::POST, "/_sim/reset-counts") => {
            shared.concurrency.reset();
            shared.counts.reset();
            shared.usage.reset();
            ok()
        }
        (&Method::GET, "/_sim/usage-calls") => json_response(
            200,
            serde_json::to_string(&shared.usage.calls()).unwrap_or_else(|_| "{}".into()),
        ),
        // {"retry_after": 30} throttles the usage endpoints; {"retry_after": null} opens them.
        (&Method::PUT, "/_sim/usage-throttle") => {
            let bytes = match read(body).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            shared
                .usage
                .set_throttle(v.get("retry_after").and_then(serde_json::Value::as_u64));
            ok()
        }
        (&Method::PUT, "/_sim/scenario") => {
            let bytes = match read(body).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let Ok(text) = std::str::from_utf8(&bytes) else {
                return admin_error(400, "scenario is not UTF-8");
            };
            let is_toml = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("toml"));
            let parsed = if is_toml {
                Scenario::from_toml(text)
            } else {
                Scenario::from_json(text)
            };
            match parsed.and_then(|s| shared.set_scenario(s)) {
                Ok(()) => ok(),
                Err(e) => admin_error(400, &e.to_string()),
            }
        }
        (method, p) if p.starts_with("/_sim/accounts/") => {
            let name = &p["/_sim/accounts/".len()..];
            if name.is_empty() || name.contains('/') {
                return admin_error(404, "no such admin route");
            }
            match *method {
                Method::POST | Method::PUT => {
                    let bytes = match read(body).await {
                        Ok(b) => b,
                        Err(r) => return r,
                    };
                    let mut v: serde_json::Value = if bytes.iter().all(u8::is_ascii_whitespace) {
                        serde_json::json!({})
                    } else {
                        match serde_json::from_slice(&bytes) {
                            Ok(v) => v,
                            Err(e) => return admin_error(400, &format!("invalid JSON: {e}")),
                        }
                    };
                    let Some(obj) = v.as_object_mut() else {
                        return admin_error(400, "the account must be a JSON object");
                    };
                    match obj.get("name").and_then(|n| n.as_str()) {
                        Some(n) if n != name => {
                            return admin_error(400, "the body's name differs from the path's");
                        }
                        _ => {
                            obj.insert("name".into(), name.into());
                        }
                    }
                    let account: Account = match serde_json::from_value(v) {
                        Ok(a) => a,
                        Err(e) => return admin_error(400, &format!("invalid account: {e}")),
                    };
                    match shared.set_account(account) {
                        Ok(()) => ok(),
                        Err(e) => admin_error(400, &e.to_string()),
                    }
                }
                Method::DELETE => match shared.remove_account(name) {
                    Ok(true) => ok(),
                    Ok(false) => admin_error(404, "no such account"),
                    Err(e) => admin_error(400, &e.to_string()),
                },
                _ => admin_error(405, "use POST, PUT or DELETE"),
            }
        }
        _ => admin_error(404, "no such admin route"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(method: Method, uri: &str) -> Route {
        route(&method, &uri.parse().unwrap(), &HeaderMap::new())
    }

    #[test]
    fn routes_by_suffix_under_any_prefix() {
        assert!(matches!(
            r(Method::POST, "/v1/messages"),
            Route::Api(Api::Messages)
        ));
        assert!(matches!(
            r(Method::POST, "/anthropic/v1/messages"),
            Route::Api(Api::Messages)
        ));
        assert!(matches!(
            r(Method::POST, "/v1/chat/completions"),
            Route::Api(Api::Chat)
        ));
        assert!(matches!(
            r(Method::POST, "/backend-api/codex/responses"),
            Route::Api(Api::Responses)
        ));
        assert!(matches!(r(Method::GET, "/v1/models"), Route::Models));
        assert!(matches!(r(Method::GET, "/v1/messages"), Route::Unknown));
        assert!(matches!(r(Method::GET, "/_sim/counts"), Route::Admin));
        assert!(matches!(
            r(
                Method::POST,
                "/google/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
            ),
            Route::Gemini(gemini::Call {
                method: gemini::Method::StreamSse,
                ..
            })
        ));
        assert!(matches!(r(Method::HEAD, "/"), Route::Warmup));
        assert!(matches!(
            r(Method::HEAD, "/anthropic/api/hello"),
            Route::Warmup
        ));
        assert!(matches!(r(Method::HEAD, "/v1/messages"), Route::Unknown));
        // A plain GET of /responses is not a socket.
        assert!(matches!(r(Method::GET, "/v1/responses"), Route::Unknown));
        let mut h = HeaderMap::new();
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        assert!(matches!(
            route(&Method::GET, &"/v1/responses".parse().unwrap(), &h),
            Route::ResponsesSocket
        ));
    }

    #[test]
    fn credentials_from_each_header() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer tok-1"));
        assert_eq!(credential(&h, Some("key=k")), Some("tok-1"));
        h.insert("x-api-key", HeaderValue::from_static("sk-2"));
        assert_eq!(credential(&h, None), Some("sk-2"));
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(credential(&h, None), None);
        assert_eq!(credential(&h, Some("alt=sse&key=AIza-3")), Some("AIza-3"));
    }
}
