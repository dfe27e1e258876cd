//! The driver of the rotation machine: one client request → the I/O that
//! [`marathon_core::rotation::Rotation`] asks for (send to an account,
//! refresh its token, wait), and the answer it settles on, streamed or
//! rendered in the provider's format. Every rotation rule (which account,
//! what an outcome means, retries, limits, waits, needs-login, the attempt
//! trace) lives in the machine; this file only carries the actions out.
//!
//! A retry is only possible while the request body is replayable and no
//! response byte has gone to the client: the body is buffered here, and the
//! machine never asks for another attempt after a pass-through.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use marathon_core::budget::RetryBudget;
use marathon_core::classify::classify;
use marathon_core::decision::AttemptTrace;
use marathon_core::events::{Event, EventKind};
use marathon_core::outcome::Outcome;
use marathon_core::pool::Pool;
use marathon_core::rotation::{
    self, Action, Answer, Picked, RefreshFailure, Refusal, RefusalKind, RequestFacts, Rotation,
    Shared, Unusable,
};
use marathon_core::sse::ErrorScanner;
use marathon_core::{
    AccountId, AccountKind, Class, Classification, Reason, Secret, TransportFailure, UnixMillis,
};

use crate::access::ClientKey;
use crate::accounting::Tally;
use crate::body::{ProxyBody, StreamWatch};
use crate::errors::{proxy_error, refusal_response};
use crate::guard;
use crate::headers::{
    ACCOUNT_HEADER, ATTEMPTS_HEADER, REPLAYABLE_HEADER, add_trace_headers, prepare_request_headers,
    strip_hop_by_hop,
};
use marathon_core::tokens::TokenError;

use crate::slots::{SharedSlot, SlotAnswer, SlotHold};
use crate::state::{AccountCred, AppState, ProviderRuntime};
use crate::upstream::{Endpoint, Reuse};
use marathon_wire::Audience;
use marathon_wire::is_event_stream as is_sse;

/// How much of an error body is read to classify it (the rest streams on).
const ERROR_BODY_PEEK: usize = 64 * 1024;
/// The least time between two `exhausted` events of one provider.
const EXHAUSTED_EVENT_EVERY: Duration = Duration::from_secs(10);
/// How long to wait for the first SSE event when peeking.
const PEEK_TIMEOUT: Duration = Duration::from_secs(30);

/// The client's request body: in memory (can be re-sent) or streaming (once).
enum ClientBody {
    Replayable(Bytes),
    Once(Option<ProxyBody>),
}

impl ClientBody {
    fn replayable(&self) -> bool {
        matches!(self, ClientBody::Replayable(_))
    }

    fn for_attempt(&mut self) -> ProxyBody {
        match self {
            ClientBody::Replayable(b) if b.is_empty() => ProxyBody::Empty,
            ClientBody::Replayable(b) => ProxyBody::full(b.clone()),
            ClientBody::Once(b) => b.take().unwrap_or(ProxyBody::Empty),
        }
    }
}

/// Reads the body into memory up to `cap`; past it, streams the rest.
async fn read_client_body(
    headers: &HeaderMap,
    mut body: Incoming,
    cap: usize,
) -> Result<ClientBody, hyper::Error> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap as u64) {
        return Ok(ClientBody::Once(Some(ProxyBody::stream(
            VecDeque::new(),
            body,
            None,
            None,
        ))));
    }
    // Most bodies arrive as one frame: keep it as it is (no copy, no queue);
    // join only when there are several.
    let mut first: Option<Bytes> = None;
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        total += data.len();
        match first.take() {
            None if chunks.is_empty() => first = Some(data),
            earlier => {
                chunks.extend(earlier);
                chunks.push_back(data);
            }
        }
        if total > cap {
            chunks.extend(first.take());
            return Ok(ClientBody::Once(Some(ProxyBody::stream(
                chunks, body, None, None,
            ))));
        }
    }
    Ok(ClientBody::Replayable(match first {
        Some(only) => only,
        None => marathon_wire::contiguous(&chunks),
    }))
}

/// What the rotation machine shares with every request of a provider: the
/// pool and budget behind their short std mutexes (each call takes and
/// drops the lock; none is held across an `.await`), the event bus, the
/// store.
#[derive(Clone, Copy)]
pub(crate) struct Env<'a> {
    pub(crate) state: &'a AppState,
    pub(crate) rt: &'a ProviderRuntime,
}

impl Shared for Env<'_> {
    fn pool<R>(&self, f: impl FnOnce(&mut Pool) -> R) -> R {
        f(&mut self.rt.pool.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn budget<R>(&self, f: impl FnOnce(&mut RetryBudget) -> R) -> R {
        f(&mut self.rt.budget.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn publish(&self, events: Vec<Event>) {
        for e in &events {
            if matches!(e.kind, EventKind::Failover { .. }) {
                self.rt.metrics.failovers.fetch_add(1, Relaxed);
            }
        }
        self.state.publish(events);
    }

    fn persist_needs_login(&self, account: &AccountId) {
        let store = self.state.store.clone();
        let id = account.clone();
        // In the background, so other processes and the next start see it.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.update(&id, &mut |a| {
                a.state = marathon_store::AccountState::NeedsLogin
            }) {
                tracing::warn!("could not persist needs-login state: {e}");
            }
        });
    }
}

/// A response head that came back, with what was read of its body.
struct Upstream {
    head: http::response::Parts,
    prefix: VecDeque<Bytes>,
    /// The rest of the body (`None`: all of it is in `prefix`).
    rest: Option<Incoming>,
    /// The connection `rest` arrives on.
    reuse: Option<Reuse>,
    scanner: Option<ErrorScanner>,
}

/// One attempt's result: a response (with the in-stream error data if its
/// first event was an error), or how the transport failed.
type Attempted = Result<(Upstream, Option<Vec<u8>>), TransportFailure>;

/// The I/O half of one request: what goes upstream, with whose credential.
struct Exchange<'a> {
    state: &'a Arc<AppState>,
    rt: &'a Arc<ProviderRuntime>,
    parts: &'a http::request::Parts,
    uri: Uri,
    /// The client's headers, prepared; the base of every attempt's.
    base_headers: HeaderMap,
    body: ClientBody,
    /// The current account's credential.
    key: AttemptKey,
    /// The shared concurrency slot of the account picked (capped accounts
    /// on a shared store only).
    lease: Option<(AccountId, SharedSlot)>,
}

/// The credential the current attempt goes out with: the picked account's
/// stored one, or the refresher's access token when that is newer. Both
/// drivers (HTTP here, the WebSocket handshake) carry out the machine's
/// `Send` and `Refresh` with it.
#[derive(Default)]
pub(crate) struct AttemptKey {
    cred: Option<Arc<AccountCred>>,
    /// The refresher's access token, when it is not the stored one.
    token: Option<Secret>,
}

/// Serves one request for one provider.
pub(crate) async fn forward(
    state: Arc<AppState>,
    rt: Arc<ProviderRuntime>,
    req: Request<Incoming>,
    route_len: usize,
) -> Response<ProxyBody> {
    let settings = &rt.settings;
    // The path after `/<provider>`.
    let path = req.uri().path().get(route_len..).unwrap_or_default();
    if let Some(refused) = guard::refuse(settings.flavor, req.method(), path) {
        return refused;
    }
    rt.metrics.requests.fetch_add(1, Relaxed);
    let (mut parts, body) = req.into_parts();
    let body = match read_client_body(&parts.headers, body, state.settings.max_body).await {
        Ok(b) => b,
        // The client stopped sending: nobody upstream was involved.
        Err(_) => {
            return proxy_error(
                settings.flavor,
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            );
        }
    };
    if !body.replayable() {
        tracing::info!(
            provider = %settings.name,
            "request body larger than {} bytes: streaming it through once; it will not be retried on another account",
            state.settings.max_body
        );
    }
    let session = settings
        .session_headers
        .iter()
        .find_map(|h| parts.headers.get(h))
        .map(|v| guard::session_key(&state.session_keys, v.as_bytes()));
    // The client's headers are only needed as the base of every attempt's.
    let mut base_headers = std::mem::take(&mut parts.headers);
    prepare_request_headers(&mut base_headers, &state.client_headers);
    base_headers.insert(header::HOST, rt.endpoint.host().clone());
    let path = parts.uri.path().get(route_len..).unwrap_or_default();
    let query = guard::query_without_credentials(parts.uri.query());
    let Some(uri) = rt.paths.uri(&settings.upstream, path, query.as_deref()) else {
        return proxy_error(
            settings.flavor,
            StatusCode::BAD_REQUEST,
            "the request path is not valid",
        );
    };
    // One clock read serves the budget, the first pick and the log line's start.
    let started = state.now();
    let facts = RequestFacts {
        replayable: body.replayable(),
        session,
        now: started,
    };
    let mut rotation = Rotation::new(
        Env {
            state: &state,
            rt: &rt,
        },
        &rt.rotation,
        facts,
    );
    let mut exchange = Exchange {
        state: &state,
        rt: &rt,
        parts: &parts,
        uri,
        base_headers,
        body,
        key: AttemptKey::default(),
        lease: None,
    };
    let resp = drive(&mut rotation, &mut exchange).await;
    log_request(
        &settings.name,
        &parts,
        &resp,
        rotation.trace(),
        &state,
        started,
    );
    resp
}

/// Carries out the machine's actions until it answers.
///
/// The send step is written out here rather than in a helper future: the
/// answer and the upstream response are large values, and each extra
/// `async fn` boundary would copy them once more on every request.
async fn drive(rotation: &mut Rotation<'_, Env<'_>>, x: &mut Exchange<'_>) -> Response<ProxyBody> {
    let mut action = rotation.start();
    loop {
        if x.lease.is_some() {
            x.drop_ended_lease(rotation);
        }
        action = match action {
            Action::Send { attempt, picked } => {
                if attempt > 1 {
                    x.rt.metrics.retries.fetch_add(1, Relaxed);
                }
                let Some(account) = rotation.account() else {
                    action = rotation.on_unusable(Unusable::NoCredential, x.state.now());
                    continue;
                };
                if picked && account.cap.is_some() && !x.take_shared_slot(account).await {
                    action = rotation.on_busy(x.state.now());
                    continue;
                }
                if picked && let Err(e) = x.key.take(x.state, x.rt, account).await {
                    let why = match &e {
                        Some(e) => Unusable::Token(refresh_failure(e)),
                        None => Unusable::NoCredential,
                    };
                    action = rotation.on_unusable(why, x.state.now());
                    continue;
                }
                let Some(request) = x.request(account) else {
                    action = rotation.on_unusable(Unusable::NoCredential, x.state.now());
                    continue;
                };
                let (state, rt) = (x.state, x.rt);
                // The account's own egress proxy, when it has one.
                let endpoint = x.key.endpoint(rt);
                let sent = Instant::now();
                let result = match state.settings.upstream_timeout {
                    Some(limit) => {
                        let send = state.client.send(endpoint, request);
                        Box::pin(tokio::time::timeout(limit, send)).await
                    }
                    // No timer on the hot path by default: registering one per
                    // request makes parked workers sleep on a kernel timer,
                    // which measurably costs CPU; dead peers are caught by TCP
                    // keepalive, and a client that gives up cancels the attempt.
                    None => Ok(state.client.send(endpoint, request).await),
                };
                let attempted = match result {
                    Err(_) => Err(TransportFailure::Timeout),
                    Ok(Err(e)) if e.is_connect() => Err(TransportFailure::Connect),
                    Ok(Err(_)) => Err(TransportFailure::ResetBeforeResponse),
                    Ok(Ok((resp, reuse))) => {
                        rt.metrics.observe_latency(sent.elapsed());
                        let peek = state.settings.peek_first_event;
                        let sse = is_sse(resp.headers());
                        if !resp.status().is_success() || (peek && sse) {
                            // Boxed: its timers would otherwise sit in every
                            // request's future.
                            let peek_error_for = state.settings.error_body_timeout;
                            Ok(Box::pin(read_head(resp, reuse, sse, peek, peek_error_for)).await)
                        } else {
                            Ok((plain_head(resp, reuse, sse), None))
                        }
                    }
                };
                let now = x.state.now();
                let c = classify_attempt(x.rt.settings.flavor, &attempted, now);
                match rotation.on_response(c, now) {
                    Action::Respond(Answer::PassThrough) => {
                        return x.pass_through(attempted, rotation);
                    }
                    next => next,
                }
            }
            Action::Refresh => x.key.refresh(x.state, x.rt, rotation).await,
            Action::Wait { until } => {
                let wait = x.state.now().until(until);
                // Boxed, like every timer here: off the hot path, out of its future.
                Box::pin(tokio::time::sleep(wait)).await;
                rotation.on_timer(x.state.now())
            }
            Action::Respond(Answer::Refuse(refusal)) => {
                return x.refuse(&refusal, rotation.trace());
            }
            // A pass-through only ever answers `on_response` (handled above),
            // and `Done` only `client_gone` (never called here).
            Action::Respond(Answer::PassThrough) | Action::Done => {
                return proxy_error(
                    x.rt.settings.flavor,
                    StatusCode::BAD_GATEWAY,
                    "internal error: the rotation ended without an answer",
                );
            }
        };
    }
}

impl Exchange<'_> {
    /// Takes a capped account's slot in the store shared with other
    /// instances; `false` when they hold every slot. Without a shared store,
    /// or while it cannot be reached, the pool's local cap is the cap.
    async fn take_shared_slot(&mut self, account: &Picked) -> bool {
        self.lease = None;
        let (Some(slots), Some(cap)) = (&self.state.slots, account.cap) else {
            return true;
        };
        let answer = slots.acquire(&account.id, cap).await;
        self.state.slots_outage.note(&answer);
        match answer {
            SlotAnswer::Held(slot) => {
                self.lease = Some((account.id.clone(), slot));
                true
            }
            SlotAnswer::Full => false,
            SlotAnswer::Unavailable => true,
        }
    }

    /// Gives the shared slot back once the machine has ended the account's.
    fn drop_ended_lease(&mut self, rotation: &Rotation<'_, Env<'_>>) {
        if let Some((id, _)) = &self.lease
            && rotation.holding() != Some(id)
        {
            self.lease = None;
        }
    }
}

impl AttemptKey {
    /// Takes a newly picked account's credential (and, for OAuth, a current
    /// access token). `Err(None)`: it has none (removed from the store a
    /// moment ago); `Err(Some(_))`: no token could be had.
    pub(crate) async fn take(
        &mut self,
        state: &AppState,
        rt: &ProviderRuntime,
        account: &Picked,
    ) -> Result<(), Option<TokenError>> {
        self.token = None;
        self.cred = rt
            .creds
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&account.id)
            .cloned();
        let cred = self.cred.as_ref().ok_or(None)?;
        if let (AccountKind::Oauth, Some(tokens)) = (cred.kind, &state.tokens) {
            let token = tokens.access_token(&account.id).await.map_err(Some)?;
            // The stored token (the usual case) has its headers built already.
            if !token.same_as(cred.stored_secret()) {
                self.token = Some(token);
            }
        }
        Ok(())
    }

    /// Puts the credential into `headers`; `false` if it cannot be a header
    /// value (the account is skipped).
    pub(crate) fn apply(
        &self,
        rt: &ProviderRuntime,
        account: &Picked,
        headers: &mut HeaderMap,
    ) -> bool {
        let Some(cred) = self.cred.as_ref() else {
            return false;
        };
        let settings = &rt.settings;
        let fresh;
        let rendered = match (&self.token, &cred.rendered) {
            (None, Some(r)) => Some(r),
            (token, _) => {
                let secret = token.as_ref().unwrap_or_else(|| cred.stored_secret());
                fresh = settings
                    .credentials
                    .render(cred.kind, secret, &cred.extras)
                    .ok();
                fresh.as_ref()
            }
        };
        let Some(rendered) = rendered else {
            tracing::error!(provider = %settings.name, account = %account.label, "stored credential is not a valid header value; skipping the account");
            return false;
        };
        settings.credentials.apply_rendered(headers, rendered);
        true
    }

    /// Where the attempt goes: the account's own egress proxy, when it has one.
    pub(crate) fn endpoint<'r>(&'r self, rt: &'r ProviderRuntime) -> &'r Endpoint {
        self.cred.as_ref().map_or(&rt.endpoint, |c| c.endpoint(rt))
    }

    /// Refreshes the current account's token after a 401 and tells the machine.
    pub(crate) async fn refresh(
        &mut self,
        state: &AppState,
        rt: &ProviderRuntime,
        rotation: &mut Rotation<'_, Env<'_>>,
    ) -> Action {
        let (Some(account), Some(cred)) = (rotation.account(), self.cred.as_ref()) else {
            let failure = RefreshFailure {
                permanent: false,
                reason: &Reason::fixed("no account"),
            };
            return rotation.on_refresh(Err(failure), state.now());
        };
        let rejected = self.token.as_ref().unwrap_or_else(|| cred.stored_secret());
        let refreshed = match &state.tokens {
            Some(tokens) => tokens.force_refresh(&account.id, rejected).await,
            None => Err(TokenError::Permanent(
                "no OAuth refresher is configured".into(),
            )),
        };
        let now = state.now();
        match refreshed {
            Ok(token) => {
                rt.metrics.refreshes.fetch_add(1, Relaxed);
                self.token = Some(token);
                rotation.on_refresh(Ok(()), now)
            }
            Err(e) => rotation.on_refresh(Err(refresh_failure(&e)), now),
        }
    }
}

impl Exchange<'_> {
    /// The upstream request with the account's credential; `None` if the
    /// credential cannot be a header value.
    fn request(&mut self, account: &Picked) -> Option<Request<ProxyBody>> {
        let mut headers = self.base_headers.clone();
        if !self.key.apply(self.rt, account, &mut headers) {
            return None;
        }
        let mut request = Request::new(self.body.for_attempt());
        *request.method_mut() = self.parts.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = headers;
        Some(request)
    }

    /// The client gets the upstream's answer.
    fn pass_through(
        &mut self,
        attempted: Attempted,
        rotation: &mut Rotation<'_, Env<'_>>,
    ) -> Response<ProxyBody> {
        // A capped account's slot stays taken until the answer's body ends.
        let hold = rotation.take_stream_slot().map(|slot| {
            let shared = self.lease.take().map(|(_, s)| s);
            SlotHold::new(self.rt.clone(), slot, shared)
        });
        // The machine passes on only responses, of accounts it picked.
        let internal = || {
            proxy_error(
                self.rt.settings.flavor,
                StatusCode::BAD_GATEWAY,
                "internal error: no response to pass on",
            )
        };
        let Ok((up, _)) = attempted else {
            return internal();
        };
        let (Some(account), Some(cred)) = (rotation.account(), self.key.cred.as_ref()) else {
            return internal();
        };
        let (trace, replayable) = (rotation.trace(), rotation.replayable());
        let resp = respond(self, up, account, cred, trace, replayable);
        match hold {
            Some(hold) => resp.map(|body| body.holding(hold)),
            None => resp,
        }
    }

    /// Token accounting for a successful answer of `account`.
    fn tally(&self, account: &Picked, event_stream: bool) -> Tally {
        let request = match &self.body {
            ClientBody::Replayable(b) if !b.is_empty() => Some(b.clone()),
            _ => None,
        };
        crate::accounting::tally(
            self.rt.tokens.clone(),
            account.id.clone(),
            self.parts.extensions.get::<ClientKey>().cloned(),
            event_stream,
            &self.uri,
            request,
        )
    }

    /// marathon's own answer, in the provider's format.
    fn refuse(&self, refusal: &Refusal, trace: &AttemptTrace) -> Response<ProxyBody> {
        // Read only here, off the path of every answered request.
        let audience = Audience::of(self.parts.uri.path(), &self.base_headers);
        own_answer(self.state, self.rt, refusal, trace, audience)
    }
}

/// marathon's own answer (the machine's [`Refusal`]) for `audience`, in the
/// provider's format; an exhaustion answer is counted and announced.
pub(crate) fn own_answer(
    state: &AppState,
    rt: &ProviderRuntime,
    refusal: &Refusal,
    trace: &AttemptTrace,
    audience: Audience,
) -> Response<ProxyBody> {
    let settings = &rt.settings;
    if matches!(refusal.kind, RefusalKind::Exhausted | RefusalKind::Spent) {
        let soonest = refusal.accounts.as_ref().and_then(|ex| ex.soonest);
        announce_exhausted(state, rt, state.now(), soonest);
    }
    refusal_response(settings.flavor, &settings.name, refusal, trace, audience)
}

fn refresh_failure(e: &TokenError) -> RefreshFailure<'_> {
    e.as_failure()
}

/// Classifies one attempt's result at `now`.
fn classify_attempt(
    flavor: marathon_core::ApiFlavor,
    attempted: &Attempted,
    now: UnixMillis,
) -> Classification {
    match attempted {
        Err(t) => classify(flavor, &Outcome::Transport(*t), now),
        Ok((_, Some(error_data))) => {
            classify(flavor, &Outcome::StreamError { data: error_data }, now)
        }
        Ok((up, None)) => marathon_wire::classify_answer(
            flavor,
            up.head.status,
            &up.head.headers,
            &up.prefix,
            now,
        ),
    }
}

/// Counts an "all accounts unavailable" answer, and tells the event sinks —
/// at most once per [`EXHAUSTED_EVENT_EVERY`] per provider, so a client
/// hammering an exhausted pool does not flood logs, webhooks and toasts.
fn announce_exhausted(
    state: &AppState,
    rt: &ProviderRuntime,
    now: UnixMillis,
    soonest: Option<UnixMillis>,
) {
    rt.metrics.exhausted.fetch_add(1, Relaxed);
    let last = rt.last_exhausted_event.load(Relaxed);
    let due = now.0.saturating_sub(last) >= EXHAUSTED_EVENT_EVERY.as_millis() as u64;
    if due
        && rt
            .last_exhausted_event
            .compare_exchange(last, now.0, Relaxed, Relaxed)
            .is_ok()
    {
        state.publish(vec![Event {
            at: now,
            provider: rt.settings.name.clone(),
            kind: EventKind::Exhausted { soonest },
        }]);
    }
}

/// The unread rest of a body and the connection it arrives on. A body read to
/// its end (`ended`, or so its framing says) frees its connection now, even if
/// the answer is then thrown away for a retry.
fn unread_rest(body: Incoming, reuse: Reuse, ended: bool) -> (Option<Incoming>, Option<Reuse>) {
    if ended || body.is_end_stream() {
        reuse.finish();
        (None, None)
    } else {
        (Some(body), Some(reuse))
    }
}

/// A response whose body classification does not need: a success that is
/// not a stream to peek into.
fn plain_head(resp: Response<Incoming>, reuse: Reuse, sse: bool) -> Upstream {
    let (head, body) = resp.into_parts();
    let scanner = sse.then(ErrorScanner::new);
    let (rest, reuse) = unread_rest(body, reuse, false);
    Upstream {
        head,
        prefix: VecDeque::new(),
        rest,
        reuse,
        scanner,
    }
}

/// Reads what classification needs of a response: an error body's first
/// bytes, or a 200 stream's first event. Returns the in-stream error data if
/// the first event is an error.
///
/// An error body gets `error_body_timeout` in all, not per chunk: an
/// upstream that drips a byte every few seconds would otherwise hold the
/// request for ever. Past the deadline the answer goes on with what arrived
/// and the rest is dropped (closing that upstream connection).
async fn read_head(
    resp: Response<Incoming>,
    reuse: Reuse,
    sse: bool,
    peek_sse: bool,
    error_body_timeout: Duration,
) -> (Upstream, Option<Vec<u8>>) {
    let (mut head, mut body) = resp.into_parts();
    let mut prefix = VecDeque::new();
    let mut scanner = sse.then(ErrorScanner::new);
    let mut error_data = None;
    let mut ended = false;
    let mut abandoned = false;
    if !head.status.is_success() {
        let mut read = 0;
        let deadline = tokio::time::Instant::now() + error_body_timeout;
        while read < ERROR_BODY_PEEK && !body.is_end_stream() {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        read += data.len();
                        prefix.push_back(data);
                    }
                }
                Ok(None) => {
                    ended = true;
                    break;
                }
                Err(_) => {
                    tracing::warn!(
                        status = head.status.as_u16(),
                        "the upstream's error body did not arrive within {error_body_timeout:?}; going on with the {read} bytes that did"
                    );
                    abandoned = true;
                    break;
                }
                Ok(Some(Err(_))) => break,
            }
        }
    } else if let (true, Some(sc)) = (peek_sse, scanner.as_mut()) {
        let mut seen = 0usize;
        let deadline = tokio::time::Instant::now() + PEEK_TIMEOUT;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if let Some(err) = sc.feed(&data) {
                error_data = Some(err);
            }
            seen += data.len();
            prefix.push_back(data);
            if error_data.is_some() || sc.events_seen() >= 1 || seen > ERROR_BODY_PEEK {
                break;
            }
        }
    }
    let (rest, reuse) = if abandoned {
        // The client gets what arrived; its length is no longer the upstream's.
        head.headers.remove(header::CONTENT_LENGTH);
        (None, None)
    } else {
        unread_rest(body, reuse, ended)
    };
    (
        Upstream {
            head,
            prefix,
            rest,
            reuse,
            scanner,
        },
        error_data,
    )
}

/// Builds the client's response from the upstream's, streaming the body on
/// (watched for in-stream errors and, on a success, the tokens it reports).
fn respond(
    x: &Exchange<'_>,
    mut up: Upstream,
    account: &Picked,
    cred: &AccountCred,
    trace: &AttemptTrace,
    replayable: bool,
) -> Response<ProxyBody> {
    let mut head = up.head;
    strip_hop_by_hop(&mut head.headers);
    match (&cred.label_header, &cred.first_try_ok) {
        // The common case, with the header values built when the account loaded.
        (Some(label), Some(ok))
            if trace.entries.len() == 1
                && trace.entries[0].status == Some(200)
                && trace.entries[0].class == Class::Success
                && trace.entries[0].note.is_none()
                && *trace.entries[0].label == *cred.label =>
        {
            head.headers.insert(ACCOUNT_HEADER.clone(), label.clone());
            head.headers.insert(ATTEMPTS_HEADER.clone(), ok.clone());
        }
        _ => add_trace_headers(&mut head.headers, Some(&account.label), trace),
    }
    if !replayable {
        head.headers
            .insert(REPLAYABLE_HEADER.clone(), HeaderValue::from_static("false"));
    }
    x.rt.metrics.count_status(head.status.as_u16());
    let mut tally = head
        .status
        .is_success()
        .then(|| x.tally(account, up.scanner.is_some()));
    if let Some(t) = &mut tally {
        // What was read ahead (a stream's first event) is the answer's too.
        for chunk in &up.prefix {
            t.feed(chunk);
        }
    }
    let errors = up
        .scanner
        .take()
        .map(|scanner| (scanner, on_stream_error(x.state, x.rt, account)));
    let mut watch = (errors.is_some() || tally.is_some()).then(|| StreamWatch::new(errors, tally));
    let body = match up.rest.take() {
        Some(rest) => ProxyBody::stream(up.prefix, rest, watch, up.reuse.take()),
        None => {
            if let Some(w) = &mut watch {
                w.end();
            }
            ProxyBody::full(marathon_wire::contiguous(&up.prefix))
        }
    };
    Response::from_parts(head, body)
}

/// What to do on an error event in a passed-through stream: the machine's
/// rule for it ([`rotation::stream_error`]) benches the account.
fn on_stream_error(
    state: &Arc<AppState>,
    rt: &Arc<ProviderRuntime>,
    account: &Picked,
) -> crate::body::OnStreamError {
    let (state, rt, id, label) = (
        state.clone(),
        rt.clone(),
        account.id.clone(),
        account.label.clone(),
    );
    Arc::new(move |data: &[u8]| {
        let now = state.now();
        let c = classify(rt.settings.flavor, &Outcome::StreamError { data }, now);
        rt.metrics.stream_errors.fetch_add(1, Relaxed);
        tracing::warn!(provider = %rt.settings.name, account = %label, reason = %c.reason, "error event inside the stream; passed to the client, account benched for the next request");
        let env = Env {
            state: &state,
            rt: &rt,
        };
        rotation::stream_error(&env, &id, &c, now);
    })
}

fn log_request(
    provider: &str,
    parts: &http::request::Parts,
    resp: &Response<ProxyBody>,
    trace: &AttemptTrace,
    state: &AppState,
    started: UnixMillis,
) {
    let status = resp.status();
    // A plain success on the first try is the common case and news to nobody:
    // it logs at debug (an access log: MARATHON_LOG=marathon::request=debug),
    // so the default log costs nothing per request. Anything that retried,
    // rotated or failed logs at info with its whole trace.
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                target: "marathon::request",
                provider,
                method = %parts.method,
                path = parts.uri.path(),
                status = status.as_u16(),
                // The account the answer names, if any.
                account = resp
                    .headers()
                    .get(&ACCOUNT_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-"),
                attempts = %trace,
                ms = state.now().0.saturating_sub(started.0),
            )
        };
    }
    if status.is_success() && trace.len() <= 1 {
        line!(debug);
    } else {
        line!(info);
    }
}
