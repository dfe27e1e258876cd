//! The rotation loop: one client request → pick an account, send, classify,
//! decide (pass through, retry, rotate, answer "exhausted") — the phases of
//! pingora's `ProxyHttp`, in one place.
//!
//! A retry is only possible while the request body is replayable and no
//! response byte has gone to the client; both are tracked here.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use marathon_core::classify::classify;
use marathon_core::decision::{AttemptContext, AttemptTrace, Decision, decide};
use marathon_core::events::{Event, EventKind};
use marathon_core::outcome::Outcome;
use marathon_core::pool::{Exhausted, Health, Pick, PickRequest};
use marathon_core::sse::ErrorScanner;
use marathon_core::{
    AccountId, AccountKind, Class, Classification, Reason, Secret, TransportFailure, UnixMillis,
};

use crate::body::{ProxyBody, StreamWatch};
use crate::errors::{exhausted_response, proxy_error};
use crate::guard;
use crate::headers::{Lookup, prepare_request_headers, strip_hop_by_hop};
use crate::state::{AccountCred, AppState, ProviderRuntime, TokenError};
use crate::upstream::Reuse;

/// How much of an error body is read to classify it (the rest streams on).
const ERROR_BODY_PEEK: usize = 64 * 1024;
/// The least time between two `exhausted` events of one provider.
const EXHAUSTED_EVENT_EVERY: Duration = Duration::from_secs(10);
/// How long an account rests after a provider-side error inside its stream.
const MID_STREAM_BENCH: Duration = Duration::from_secs(5);
/// How long to wait for the first SSE event when peeking.
const PEEK_TIMEOUT: Duration = Duration::from_secs(30);

static ACCOUNT_HEADER: HeaderName = HeaderName::from_static("x-marathon-account");
static ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-marathon-attempts");
static REPLAYABLE_HEADER: HeaderName = HeaderName::from_static("x-marathon-replayable");

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
        None => contiguous(&chunks),
    }))
}

/// Frees the account's in-flight slot if the request ends before its outcome
/// is recorded — above all when the client goes away (no penalty).
struct Slot {
    rt: Arc<ProviderRuntime>,
    id: Option<AccountId>,
}

impl Slot {
    fn recorded(&mut self) {
        self.id = None;
    }

    /// Ends the slot without an outcome (no penalty, no counters).
    fn release(&mut self) {
        if let Some(id) = self.id.take() {
            self.rt
                .pool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .release(&id);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
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

/// The current account of a request.
struct Current {
    id: AccountId,
    label: Arc<str>,
    kind: AccountKind,
    cred: Arc<AccountCred>,
    /// The refresher's access token, when it is not the stored one.
    token: Option<Secret>,
}

impl Current {
    fn secret(&self) -> &Secret {
        self.token
            .as_ref()
            .unwrap_or_else(|| self.cred.stored_secret())
    }
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
    let mut client_body =
        match read_client_body(&parts.headers, body, state.settings.max_body).await {
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
    // One clock read serves the budget, the first pick and the log line's start.
    let started = state.now();
    let now = started;
    rt.budget
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .deposit(now);
    if !client_body.replayable() {
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

    let mut trace = AttemptTrace::new();
    let mut excluded: Vec<AccountId> = Vec::new();
    let mut ctx = AttemptContext::new(now, client_body.replayable(), 0, AccountKind::ApiKey);
    let mut current: Option<Current> = None;
    let mut rotated_from: Option<(String, Reason)> = None;
    let mut waited = Duration::ZERO;
    let mut last_reason: Option<Reason> = None;
    // The slot a pick takes lasts across same-account retries (a refresh, the
    // transport retry, provider retries): the pool wants exactly one `record`
    // or `release` per pick, with the final outcome on that account.
    let mut slot = Slot {
        rt: rt.clone(),
        id: None,
    };

    let mut first_pick = Some(now);
    loop {
        // 1. Select an account (unless the last decision was "same account again").
        if current.is_none() {
            let now = first_pick.take().unwrap_or_else(|| state.now());
            let pick = {
                let mut pool = rt.pool.lock().unwrap_or_else(|e| e.into_inner());
                ctx.accounts_in_pool = u32::try_from(pool.len()).unwrap_or(u32::MAX);
                pool.pick(
                    now,
                    &PickRequest {
                        session,
                        exclude: &excluded,
                    },
                )
            };
            match pick {
                Pick::Account { id, label, .. } => {
                    slot.id = Some(id.clone());
                    if let Some((from, reason)) = rotated_from.take() {
                        rt.metrics.failovers.fetch_add(1, Relaxed);
                        state.publish(vec![Event {
                            at: now,
                            provider: settings.name.clone(),
                            kind: EventKind::Failover {
                                from,
                                to: label.to_string(),
                                reason,
                            },
                        }]);
                    }
                    let cred = rt
                        .creds
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&id)
                        .cloned();
                    let Some(cred) = cred else {
                        // Removed from the store a moment ago.
                        slot.release();
                        excluded.push(id);
                        continue;
                    };
                    let token = match cred.kind {
                        AccountKind::ApiKey => None,
                        AccountKind::Oauth => match &state.tokens {
                            None => None,
                            Some(tokens) => match tokens.access_token(&id).await {
                                // The stored token (the usual case) has its
                                // headers built already.
                                Ok(s) if s.same_as(cred.stored_secret()) => None,
                                Ok(s) => Some(s),
                                Err(e) => {
                                    account_unusable(&state, &rt, &id, &cred.label, &e);
                                    // Nothing was sent: end the slot, or an
                                    // account picked as a probe stays "probe
                                    // in flight" for ever.
                                    slot.release();
                                    excluded.push(id);
                                    continue;
                                }
                            },
                        },
                    };
                    ctx.kind = cred.kind;
                    current = Some(Current {
                        id,
                        label,
                        kind: cred.kind,
                        cred,
                        token,
                    });
                }
                Pick::Exhausted(ex) => {
                    let now = state.now();
                    // Usable accounts remain, but this request tried them all
                    // and none was at fault (unreachable, timing out): that is
                    // the upstream's failure, not "all accounts unavailable" —
                    // and waiting for a recovery that is not coming would loop.
                    let tried_usable = ex.accounts.iter().any(|a| {
                        matches!(a.health, Health::Ready | Health::Probing)
                            && excluded.contains(&a.id)
                    });
                    if tried_usable {
                        let mut r = proxy_error(
                            settings.flavor,
                            StatusCode::BAD_GATEWAY,
                            &format!(
                                "marathon could not reach the {} upstream with any account ({})",
                                settings.name,
                                last_reason.as_ref().map_or("unreachable", Reason::as_str)
                            ),
                        );
                        add_trace_headers(r.headers_mut(), None, &trace);
                        log_request(
                            &settings.name,
                            &parts,
                            r.status(),
                            None,
                            &trace,
                            &state,
                            started,
                        );
                        return r;
                    }
                    if let (Some(max_wait), Some(soonest)) = (settings.max_wait, ex.soonest) {
                        let wait = now.until(soonest);
                        if waited + wait <= max_wait && ctx.replayable {
                            waited += wait;
                            excluded.clear();
                            Box::pin(tokio::time::sleep(wait.max(Duration::from_millis(10)))).await;
                            continue;
                        }
                    }
                    return answer_exhausted(&state, &rt, &parts, now, &ex, &trace, started);
                }
            }
        }
        let Some(cur) = current.as_ref() else {
            continue;
        };
        if ctx.attempt > 1 {
            rt.metrics.retries.fetch_add(1, Relaxed);
        }

        // 2. Send.
        let mut headers = base_headers.clone();
        let fresh;
        let rendered = match (&cur.token, &cur.cred.rendered) {
            (None, Some(r)) => Some(r),
            _ => {
                fresh = settings
                    .credentials
                    .render(cur.kind, cur.secret(), &cur.cred.extras)
                    .ok();
                fresh.as_ref()
            }
        };
        if let Some(r) = rendered {
            settings.credentials.apply_rendered(&mut headers, r);
        } else {
            tracing::error!(provider = %settings.name, account = %cur.label, "stored credential is not a valid header value; skipping the account");
            slot.release();
            excluded.push(cur.id.clone());
            current = None;
            continue;
        }
        let mut up_req = Request::new(client_body.for_attempt());
        *up_req.method_mut() = parts.method.clone();
        *up_req.uri_mut() = uri.clone();
        *up_req.headers_mut() = headers;

        let sent = Instant::now();
        let result = match state.settings.upstream_timeout {
            Some(limit) => {
                Box::pin(tokio::time::timeout(
                    limit,
                    state.client.send(cur.cred.endpoint(&rt), up_req),
                ))
                .await
            }
            // No timer on the hot path by default: registering one per request
            // makes parked workers sleep on a kernel timer, which measurably
            // costs CPU; dead peers are caught by TCP keepalive, and a client
            // that gives up cancels the attempt.
            None => Ok(state.client.send(cur.cred.endpoint(&rt), up_req).await),
        };
        let upstream = match result {
            Err(_) => Err(TransportFailure::Timeout),
            Ok(Err(e)) if e.is_connect() => Err(TransportFailure::Connect),
            Ok(Err(_)) => Err(TransportFailure::ResetBeforeResponse),
            Ok(Ok((resp, reuse))) => {
                rt.metrics.observe_latency(sent.elapsed());
                let peek = state.settings.peek_first_event;
                let sse = is_sse(resp.headers());
                if !resp.status().is_success() || (peek && sse) {
                    // Boxed: its timers would otherwise sit in every request's
                    // future, which is moved around by value.
                    let peek_error_for = state.settings.error_body_timeout;
                    Ok(Box::pin(read_head(resp, reuse, sse, peek, peek_error_for)).await)
                } else {
                    Ok((plain_head(resp, reuse, sse), None))
                }
            }
        };

        // 3. Classify.
        let now = state.now();
        let classification = match &upstream {
            Err(t) => classify(settings.flavor, &Outcome::Transport(*t), now),
            Ok((_, Some(error_data))) => classify(
                settings.flavor,
                &Outcome::StreamError { data: error_data },
                now,
            ),
            Ok((up, None)) => {
                let body = contiguous(&up.prefix);
                classify(
                    settings.flavor,
                    &Outcome::Response {
                        status: up.head.status.as_u16(),
                        headers: &Lookup(&up.head.headers),
                        body: &body,
                    },
                    now,
                )
            }
        };
        trace.record(cur.label.clone(), &classification, now);

        // 4. Decide, and record the outcome unless the same account is tried
        // again (then its final outcome is recorded): a 401 fixed by a refresh
        // must not bench the account, and the slot must end exactly once.
        let decision = if matches!(classification.class, Class::Success | Class::Request) {
            // Always passed through; no need to take the budget's lock.
            Decision::PassThrough
        } else {
            let mut budget = rt.budget.lock().unwrap_or_else(|e| e.into_inner());
            decide(&settings.retry, &ctx, &classification, now, &mut budget)
        };
        ctx.advance(&decision, &classification, ctx.kind);
        let record = |slot: &mut Slot| {
            let events = rt.pool.lock().unwrap_or_else(|e| e.into_inner()).record(
                &cur.id,
                &classification,
                now,
            );
            slot.recorded();
            state.publish(events);
        };
        if !matches!(
            decision,
            Decision::RetrySame { .. } | Decision::RefreshAndRetry
        ) {
            record(&mut slot);
        }
        if !matches!(decision, Decision::PassThrough) {
            last_reason = Some(classification.reason.clone());
        }
        match decision {
            Decision::PassThrough => {
                let resp = match upstream {
                    Ok((up, _)) => respond(&state, &rt, up, cur, &trace, client_body.replayable()),
                    Err(_) => {
                        let mut r = proxy_error(
                            settings.flavor,
                            StatusCode::BAD_GATEWAY,
                            &format!(
                                "marathon could not reach the {} upstream ({})",
                                settings.name, classification.reason
                            ),
                        );
                        add_trace_headers(r.headers_mut(), Some(&cur.label), &trace);
                        r
                    }
                };
                log_request(
                    &settings.name,
                    &parts,
                    resp.status(),
                    Some(&cur.label),
                    &trace,
                    &state,
                    started,
                );
                return resp;
            }
            Decision::RefreshAndRetry => {
                let refreshed = match &state.tokens {
                    Some(tokens) => tokens.force_refresh(&cur.id, cur.secret()).await,
                    None => Err(TokenError::Permanent(
                        "no OAuth refresher is configured".into(),
                    )),
                };
                match refreshed {
                    Ok(secret) => {
                        rt.metrics.refreshes.fetch_add(1, Relaxed);
                        let events = rt
                            .pool
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .refreshed(&cur.id, state.now());
                        state.publish(events);
                        if let Some(c) = current.as_mut() {
                            c.token = Some(secret);
                        }
                    }
                    Err(e) => {
                        record(&mut slot);
                        let (id, label) = (cur.id.clone(), cur.label.clone());
                        account_unusable(&state, &rt, &id, &label, &e);
                        rotated_from = Some((label.to_string(), classification.reason.clone()));
                        excluded.push(id);
                        current = None;
                    }
                }
            }
            Decision::RetrySame { after } => {
                pause(after).await;
            }
            Decision::Rotate { after } => {
                if matches!(classification.class, Class::Auth) {
                    // Still 401 after a refresh (or an API key the provider refuses).
                    let events = rt
                        .pool
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .mark_needs_login(&cur.id, now, &classification.reason);
                    state.publish(events);
                    persist_needs_login(&state, &cur.id);
                }
                rotated_from = Some((cur.label.to_string(), short_reason(&classification)));
                excluded.push(cur.id.clone());
                current = None;
                pause(after).await;
            }
            Decision::Exhausted | Decision::GiveUp(_) => {
                let now = state.now();
                let ex = {
                    let pool = rt.pool.lock().unwrap_or_else(|e| e.into_inner());
                    Exhausted {
                        soonest: pool.soonest_ready(now),
                        accounts: pool.status(now),
                    }
                };
                // As for an exhausted pick: with `max_wait`, wait for the first
                // account to recover (a one-account pool ends up here, not
                // there). Only for a real wait: an account usable now means a
                // limit stopped us, and waiting 0 would loop.
                if let (Some(max_wait), Some(soonest)) = (settings.max_wait, ex.soonest) {
                    let wait = now.until(soonest);
                    if !wait.is_zero() && waited + wait <= max_wait && ctx.replayable {
                        waited += wait;
                        excluded.clear();
                        current = None;
                        ctx.same_account_tries = 0;
                        ctx.refreshed = false;
                        Box::pin(tokio::time::sleep(wait)).await;
                        continue;
                    }
                }
                return answer_exhausted(&state, &rt, &parts, now, &ex, &trace, started);
            }
        }
    }
}

/// Waits before a retry. A zero wait does not touch the timer: tokio rounds
/// every sleep up to the next millisecond tick, which a failover must not pay.
async fn pause(after: Duration) {
    if !after.is_zero() {
        // Boxed, like every timer here: off the hot path, out of its future.
        Box::pin(tokio::time::sleep(after)).await;
    }
}

/// The "all accounts unavailable" answer (429 in the provider's format),
/// announced and logged.
fn answer_exhausted(
    state: &AppState,
    rt: &ProviderRuntime,
    parts: &http::request::Parts,
    now: UnixMillis,
    ex: &Exhausted,
    trace: &AttemptTrace,
    started: UnixMillis,
) -> Response<ProxyBody> {
    let settings = &rt.settings;
    announce_exhausted(state, rt, now, ex.soonest);
    let resp = exhausted_response(settings.flavor, &settings.name, now, ex, trace);
    log_request(
        &settings.name,
        parts,
        resp.status(),
        None,
        trace,
        state,
        started,
    );
    resp
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

/// "429 rate_limit_error" style reason for failover events.
fn short_reason(c: &Classification) -> Reason {
    match c.status {
        Some(s) => Reason::with_status(s, &c.reason),
        None => c.reason.clone(),
    }
}

/// Refresh failed: permanently → needs-login (event, persisted); for now →
/// skip the account for this request.
fn account_unusable(
    state: &AppState,
    rt: &ProviderRuntime,
    id: &AccountId,
    label: &str,
    e: &TokenError,
) {
    let now = state.now();
    match e {
        TokenError::Permanent(reason) => {
            let events = rt
                .pool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .mark_needs_login(id, now, reason);
            // Every request that queued behind the one failed refresh gets
            // its error; announce it once, when the account turns needs-login
            // (else a burst fires one webhook/command per request).
            if events.is_empty() {
                return;
            }
            state.publish(vec![Event {
                at: now,
                provider: rt.settings.name.clone(),
                kind: EventKind::RefreshFailed {
                    account: label.to_string(),
                    permanent: true,
                    reason: reason.clone(),
                },
            }]);
            state.publish(events);
            persist_needs_login(state, id);
        }
        TokenError::Transient(reason) => {
            state.publish(vec![Event {
                at: now,
                provider: rt.settings.name.clone(),
                kind: EventKind::RefreshFailed {
                    account: label.to_string(),
                    permanent: false,
                    reason: reason.clone(),
                },
            }]);
        }
    }
}

/// Writes the needs-login state to the store in the background, so other
/// processes and the next start see it.
fn persist_needs_login(state: &AppState, id: &AccountId) {
    let store = state.store.clone();
    let id = id.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = store.update(&id, &mut |a| {
            a.state = marathon_store::AccountState::NeedsLogin
        }) {
            tracing::warn!("could not persist needs-login state: {e}");
        }
    });
}

fn is_sse(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
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

fn contiguous(chunks: &VecDeque<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks[0].clone(),
        _ => {
            let mut b = BytesMut::new();
            for c in chunks {
                b.extend_from_slice(c);
            }
            b.freeze()
        }
    }
}

/// Builds the client's response from the upstream's, streaming the body on.
fn respond(
    state: &Arc<AppState>,
    rt: &Arc<ProviderRuntime>,
    mut up: Upstream,
    cur: &Current,
    trace: &AttemptTrace,
    replayable: bool,
) -> Response<ProxyBody> {
    let mut head = up.head;
    strip_hop_by_hop(&mut head.headers);
    match (&cur.cred.label_header, &cur.cred.first_try_ok) {
        // The common case, with the header values built when the account loaded.
        (Some(label), Some(ok))
            if trace.entries.len() == 1
                && trace.entries[0].status == Some(200)
                && trace.entries[0].class == Class::Success
                && trace.entries[0].note.is_none()
                && *trace.entries[0].label == *cur.cred.label =>
        {
            head.headers.insert(ACCOUNT_HEADER.clone(), label.clone());
            head.headers.insert(ATTEMPTS_HEADER.clone(), ok.clone());
        }
        _ => add_trace_headers(&mut head.headers, Some(&cur.label), trace),
    }
    if !replayable {
        head.headers
            .insert(REPLAYABLE_HEADER.clone(), HeaderValue::from_static("false"));
    }
    rt.metrics.count_status(head.status.as_u16());
    let watch = up.scanner.take().map(|scanner| {
        let (state, rt, id, label) = (state.clone(), rt.clone(), cur.id.clone(), cur.label.clone());
        StreamWatch::new(
            scanner,
            Arc::new(move |data: &[u8]| {
                let now = state.now();
                let c = classify(rt.settings.flavor, &Outcome::StreamError { data }, now);
                rt.metrics.stream_errors.fetch_add(1, Relaxed);
                tracing::warn!(provider = %rt.settings.name, account = %label, reason = %c.reason, "error event inside the stream; passed to the client, account benched for the next request");
                let events = {
                    let mut pool = rt.pool.lock().unwrap_or_else(|e| e.into_inner());
                    // The head was recorded as a success when it arrived, which
                    // ended this request's slot: record late, never end another's.
                    let mut events = pool.record_late(&id, &c, now);
                    let until = now.plus(MID_STREAM_BENCH);
                    let benched_longer = matches!(
                        pool.account_status(&id, now).map(|s| s.health),
                        Some(Health::Cooling { until: u }) if u >= until
                    );
                    if !c.class.blames_account() && !benched_longer {
                        // An overload inside a stream is the provider's, but the
                        // next request should still start elsewhere (DESIGN §2).
                        events.extend(pool.set_cooldown(&id, until, &c.reason, now));
                    }
                    events
                };
                state.publish(events);
            }),
        )
    });
    let body = match up.rest.take() {
        Some(rest) => ProxyBody::stream(up.prefix, rest, watch, up.reuse.take()),
        None => ProxyBody::full(contiguous(&up.prefix)),
    };
    Response::from_parts(head, body)
}

pub(crate) fn add_trace_headers(h: &mut HeaderMap, account: Option<&str>, trace: &AttemptTrace) {
    if let Some(a) = account.and_then(|a| HeaderValue::from_str(a).ok()) {
        h.insert(ACCOUNT_HEADER.clone(), a);
    }
    // No upstream attempt (every account was already benched): no header,
    // rather than an empty one.
    // `from_maybe_shared` takes the formatted string's buffer without a copy.
    if let Some(v) = (!trace.is_empty())
        .then(|| HeaderValue::from_maybe_shared(Bytes::from(trace.to_string())).ok())
        .flatten()
    {
        h.insert(ATTEMPTS_HEADER.clone(), v);
    }
}

fn log_request(
    provider: &str,
    parts: &http::request::Parts,
    status: StatusCode,
    account: Option<&str>,
    trace: &AttemptTrace,
    state: &AppState,
    started: UnixMillis,
) {
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
                account = account.unwrap_or("-"),
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
