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
use crate::introspect::{Introspector, Verdict};
use crate::scenario::{Account, DEFAULT_MODEL, DEFAULT_REPLY, Scenario, validate_account};
use crate::shapes::{self, Answer, Api, Canned, Flavour, Text};
use crate::world::{Counts, Outcome, World, decide};

/// Request bodies past this size are refused (the simulator is not a sink).
const MAX_BODY: usize = 64 << 20;

/// Precomputed answers for fast mode.
#[derive(Debug)]
struct Fast {
    json: [Bytes; 3],
    stream: [Arc<[Bytes]>; 3],
}

fn api_index(api: Api) -> usize {
    match api {
        Api::Messages => 0,
        Api::Chat => 1,
        Api::Responses => 2,
    }
}

/// The scenario in force with everything derived from it.
#[derive(Debug)]
pub(crate) struct Current {
    world: World,
    fast: Option<Fast>,
    introspector: Option<Arc<Introspector>>,
    model: String,
    reply: String,
}

/// State shared by all connections.
#[derive(Debug)]
pub(crate) struct Shared {
    current: RwLock<Arc<Current>>,
    pub(crate) counts: Counts,
    ids: AtomicU64,
    log: bool,
}

impl Shared {
    pub(crate) fn new(scenario: Scenario, log: bool) -> Result<Shared, SimError> {
        scenario.validate()?;
        let counts = Counts::default();
        let current = build_current(scenario, &counts, None, None)?;
        Ok(Shared {
            current: RwLock::new(Arc::new(current)),
            counts,
            ids: AtomicU64::new(1),
            log,
        })
    }

    fn current(&self) -> Arc<Current> {
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

    fn next_id(&self) -> u64 {
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
            created: shapes::now_epoch(),
        };
        let apis = [Api::Messages, Api::Chat, Api::Responses];
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
struct Kill {
    notify: Notify,
    fired: AtomicBool,
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
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        let kill = k.clone();
        async move { Ok::<_, Infallible>(handle(&shared, &kill, req).await) }
    });
    let conn = http1::Builder::new().serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        _ = conn => {}
        _ = kill.notify.notified() => {}
        _ = shutdown.changed() => {}
    }
}

enum Route {
    Api(Api),
    Models,
    Admin,
    Unknown,
}

/// Routes by suffix, so any prefix works: `/v1/messages`, `/anthropic/v1/messages`,
/// `/backend-api/codex/responses`.
fn route(method: &Method, path: &str) -> Route {
    if path.starts_with("/_sim/") {
        return Route::Admin;
    }
    let p = path.trim_end_matches('/');
    match *method {
        Method::POST if p.ends_with("/messages") => Route::Api(Api::Messages),
        Method::POST if p.ends_with("/chat/completions") => Route::Api(Api::Chat),
        Method::POST if p.ends_with("/responses") => Route::Api(Api::Responses),
        Method::GET if p.ends_with("/models") => Route::Models,
        _ => Route::Unknown,
    }
}

/// The credential a request presents: `x-api-key`, `x-goog-api-key`, or a bearer token.
fn credential(h: &HeaderMap) -> Option<&str> {
    for name in ["x-api-key", "x-goog-api-key"] {
        if let Some(v) = h.get(name).and_then(|v| v.to_str().ok()) {
            return Some(v.trim());
        }
    }
    let auth = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
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

fn request_id_header(flavour: Flavour) -> &'static str {
    match flavour {
        Flavour::Anthropic => "request-id",
        Flavour::OpenAi => "x-request-id",
    }
}

/// Who made a request.
enum Who<'a> {
    Listed(&'a crate::world::Live),
    /// Known only through introspection: behaves `ok`.
    Introspected(String),
}

impl Who<'_> {
    fn name(&self) -> &str {
        match self {
            Who::Listed(l) => &l.account.name,
            Who::Introspected(n) => n,
        }
    }
}

async fn handle(shared: &Shared, kill: &Kill, req: Request<Incoming>) -> Response<SimBody> {
    let (parts, body) = req.into_parts();
    let api = match route(&parts.method, parts.uri.path()) {
        Route::Api(api) => api,
        Route::Admin => return admin(shared, parts, body).await,
        Route::Models => return models(shared, &parts).await,
        Route::Unknown => {
            return json_response(
                404,
                r#"{"error":{"message":"Unknown route (marathon-sim serves /v1/messages, /v1/chat/completions, /v1/responses, /v1/models)","type":"invalid_request_error","param":null,"code":"unknown_url"}}"#.into(),
            );
        }
    };
    let flavour = api.flavour();
    let cur = shared.current();
    let fast = cur.fast.is_some();
    let id = shared.next_id();
    let rid = format!("req_sim_{id:016x}");
    let log = shared.log && !fast;

    let who = match credential(&parts.headers) {
        None => None,
        Some(c) => match cur.world.by_key(c) {
            Some(l) => Some(Who::Listed(l)),
            None => match &cur.introspector {
                None => None,
                Some(i) => match i.check(c).await {
                    Verdict::Active(name) => Some(match cur.world.by_name(&name) {
                        Some(l) => Who::Listed(l),
                        None => Who::Introspected(name),
                    }),
                    Verdict::Inactive => None,
                    Verdict::Unavailable => {
                        let mut c = shapes::failure(flavour, 503, None, &rid);
                        c.headers.push((request_id_header(flavour), rid.clone()));
                        return canned(c);
                    }
                },
            },
        },
    };
    let Some(who) = who else {
        if log {
            eprintln!(
                "marathon-sim: {} {} account=? -> 401",
                parts.method,
                parts.uri.path()
            );
        }
        let mut r = canned(shapes::unauthorized(flavour, false, &rid));
        add_headers(&mut r, &[(request_id_header(flavour), rid)]);
        return r;
    };

    let outcome = match &who {
        Who::Listed(l) => {
            l.count.fetch_add(1, Ordering::Relaxed);
            let mut st = l.state.lock().unwrap_or_else(|p| p.into_inner());
            decide(&l.account, &mut st, Instant::now(), SystemTime::now())
        }
        Who::Introspected(name) => {
            shared.counts.counter(name).fetch_add(1, Ordering::Relaxed);
            Outcome::Ok(None)
        }
    };

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

    let account = match &who {
        Who::Listed(l) => Some(&l.account),
        Who::Introspected(_) => None,
    };
    let mut resp = match outcome {
        Outcome::Reset => {
            if log {
                eprintln!(
                    "marathon-sim: {} {} account={} -> reset",
                    parts.method,
                    parts.uri.path(),
                    who.name()
                );
            }
            kill.fired.store(true, Ordering::Release);
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
        Outcome::Limited(v) => {
            let model = if fast {
                cur.model.clone()
            } else {
                request_model(&bytes).unwrap_or_else(|| cur.model.clone())
            };
            canned(shapes::limited(
                shapes::style_for(&v, flavour),
                &v,
                &model,
                &rid,
            ))
        }
        Outcome::Ok(view) => {
            let mut r = match success(&cur, api, account, &bytes, id, &rid) {
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
    add_headers(&mut resp, &[(request_id_header(flavour), rid)]);
    if log {
        eprintln!(
            "marathon-sim: {} {} account={} -> {}",
            parts.method,
            parts.uri.path(),
            who.name(),
            resp.status().as_u16()
        );
    }
    if let Some(a) = account
        && a.slow_ms > 0
        && matches!(resp.body(), SimBody::Full(_))
    {
        tokio::time::sleep(Duration::from_millis(a.slow_ms)).await;
    }
    resp
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
    account: Option<&Account>,
    body: &[u8],
    id: u64,
    rid: &str,
) -> Result<Response<SimBody>, Canned> {
    let plain = account.is_none_or(|a| !a.customises_streams());
    if let Some(fast) = &cur.fast
        && plain
    {
        let stream = contains(body, b"\"stream\":true") || contains(body, b"\"stream\": true");
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
    let model = v
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or(&cur.model);
    let stream = v.get("stream").and_then(|s| s.as_bool()) == Some(true);
    let include_usage = v
        .pointer("/stream_options/include_usage")
        .and_then(|s| s.as_bool())
        == Some(true);
    let text = Text::new(&cur.reply, account.and_then(|a| a.stream_events));
    let prefix = match api {
        Api::Messages => "msg_sim_",
        Api::Chat => "chatcmpl-sim",
        Api::Responses => "resp_sim_",
    };
    let answer_id = format!("{prefix}{id:016x}");
    let answer = Answer {
        id: &answer_id,
        model,
        text: &text,
        input_tokens: (body.len() as u64 / 4).max(1),
        created: shapes::now_epoch(),
    };
    if stream {
        let error = account.and_then(|a| a.stream_error_after.map(|n| (n, a.stream_error)));
        let events = shapes::sse_events(api, &answer, include_usage, error);
        let slow = Duration::from_millis(account.map_or(0, |a| a.slow_ms));
        Ok(sse_response(events.into(), slow))
    } else {
        Ok(json_response(200, shapes::json_body(api, &answer)))
    }
}

async fn models(shared: &Shared, parts: &http::request::Parts) -> Response<SimBody> {
    let flavour = if parts.headers.contains_key("anthropic-version") {
        Flavour::Anthropic
    } else {
        Flavour::OpenAi
    };
    let cur = shared.current();
    let known = match credential(&parts.headers) {
        None => false,
        Some(c) => match cur.world.by_key(c) {
            Some(l) => !l.account.expired,
            None => match &cur.introspector {
                Some(i) => matches!(i.check(c).await, Verdict::Active(_)),
                None => false,
            },
        },
    };
    if !known {
        return canned(shapes::unauthorized(flavour, false, "req_sim_models"));
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
        (&Method::POST, "/_sim/reset-counts") => {
            shared.counts.reset();
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

    #[test]
    fn routes_by_suffix_under_any_prefix() {
        assert!(matches!(
            route(&Method::POST, "/v1/messages"),
            Route::Api(Api::Messages)
        ));
        assert!(matches!(
            route(&Method::POST, "/anthropic/v1/messages"),
            Route::Api(Api::Messages)
        ));
        assert!(matches!(
            route(&Method::POST, "/v1/chat/completions"),
            Route::Api(Api::Chat)
        ));
        assert!(matches!(
            route(&Method::POST, "/backend-api/codex/responses"),
            Route::Api(Api::Responses)
        ));
        assert!(matches!(route(&Method::GET, "/v1/models"), Route::Models));
        assert!(matches!(
            route(&Method::GET, "/v1/messages"),
            Route::Unknown
        ));
        assert!(matches!(route(&Method::GET, "/_sim/counts"), Route::Admin));
    }

    #[test]
    fn credentials_from_each_header() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer tok-1"));
        assert_eq!(credential(&h), Some("tok-1"));
        h.insert("x-api-key", HeaderValue::from_static("sk-2"));
        assert_eq!(credential(&h), Some("sk-2"));
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(credential(&h), None);
    }
}
