//! WebSocket pass-through with rotation at the handshake (issue 11, item 2).
//!
//! Codex's built-in OpenAI provider opens a WebSocket to `{base}/responses`
//! before anything else. An `Upgrade: websocket` request on a provider route
//! comes here instead of `forward`. The handshake is a request the rotation
//! machine drives like any other (it has no body, so it can always be sent
//! again): each attempt goes upstream on a connection of its own with the
//! picked account's credential (the client's is removed like on every
//! route), and its answer is classified and reported to the machine, which
//! rotates on a 429/403, refreshes an OAuth token refused with a 401 and
//! tries it once more, waits within `max_wait`, or answers with marathon's
//! own "all accounts unavailable" form instead of `101`. The first `101` it
//! passes on joins the two sides: bytes pass both ways unchanged. The
//! upstream's frames are read on the way (never altered) for an error event
//! saying the account is spent — Codex's `{"type":"error","status":429,…}`,
//! or a `response.failed` with a quota code — to which the machine's rule
//! for an error after the head applies ([`rotation::stream_error`]): the
//! account is benched for the next connection (the socket itself stays the
//! client's: its conversation lives on that account).
//!
//! `permessage-deflate` is not offered upstream (the client's offer is
//! removed), so the frames can be read without inflating them.
//!
//! The upstream's bytes pass through `scrub`'s masker like every body: a
//! live secret is replaced by `*` of the same length, which keeps every
//! frame's length right (frames from the server are not XOR-masked, and
//! compression is off).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use marathon_core::classify::classify;
use marathon_core::decision::AttemptTrace;
use marathon_core::outcome::Outcome;
use marathon_core::rotation::{self, Action, Answer, Picked, RequestFacts, Rotation, Unusable};
use marathon_core::{AccountId, Class, Classification, TransportFailure, UnixMillis};
use marathon_wire::{Audience, add_trace_headers};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::access::ClientKey;
use crate::accounting::Tally;
use crate::body::ProxyBody;
use crate::errors::proxy_error;
use crate::forward::{AttemptKey, Env, own_answer};
use crate::guard;
use crate::headers::{Lookup, prepare_request_headers};
use crate::state::{AppState, ProviderRuntime};
use crate::upstream::Endpoint;

/// The most of a refused handshake's body read to classify it.
const MAX_REFUSAL_BODY: usize = 64 * 1024;
/// How long bytes held back by the masker (the possible start of a secret)
/// wait for the rest before they go out as they are.
const HOLD_AT_MOST: std::time::Duration = std::time::Duration::from_millis(20);
/// Text messages longer than this are not read for error events (an error
/// event is a few hundred bytes; answers can be long).
const MAX_SCANNED_MESSAGE: usize = 16 * 1024;

/// Whether a request asks to become a WebSocket (`Upgrade: websocket` and
/// `Connection: upgrade`).
pub(crate) fn wants_upgrade(h: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

/// Serves one WebSocket handshake on a provider route: the rotation machine
/// drives it like any request (the handshake has no body, so it is always
/// replayable), and the first `101` it passes on joins the two sides.
pub(crate) async fn forward(
    state: Arc<AppState>,
    rt: Arc<ProviderRuntime>,
    mut req: Request<Incoming>,
    route_len: usize,
) -> Response<ProxyBody> {
    let settings = &rt.settings;
    let path = req.uri().path().get(route_len..).unwrap_or_default();
    if let Some(refused) = guard::refuse(settings.flavor, req.method(), path) {
        return refused;
    }
    let path = path.to_owned();
    rt.metrics.requests.fetch_add(1, Relaxed);
    let client_side = hyper::upgrade::on(&mut req);
    let (mut parts, _) = req.into_parts();
    let session = settings
        .session_headers
        .iter()
        .find_map(|h| parts.headers.get(h))
        .map(|v| guard::session_key(&state.session_keys, v.as_bytes()));
    let mut base = std::mem::take(&mut parts.headers);
    prepare_request_headers(&mut base, &state.client_headers);
    base.insert(header::HOST, rt.endpoint.host().clone());
    base.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    base.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // Uncompressed frames, so the error events can be read.
    base.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    let query = guard::query_without_credentials(parts.uri.query());
    let Some(uri) = rt.paths.uri(&settings.upstream, &path, query.as_deref()) else {
        return proxy_error(
            settings.flavor,
            StatusCode::BAD_REQUEST,
            "the request path is not valid",
        );
    };
    let facts = RequestFacts {
        replayable: true,
        session,
        now: state.now(),
    };
    let env = Env {
        state: &state,
        rt: &rt,
    };
    let mut rotation = Rotation::new(env, &rt.rotation, facts);
    let handshake = Handshake { uri, base };
    let answer = handshake.drive(&state, &rt, &mut rotation).await;
    match answer {
        Answered::Switched(resp) => {
            // A capped account's slot is held for the whole session.
            let hold = rotation
                .take_stream_slot()
                .map(|slot| crate::slots::SlotHold::new(rt.clone(), slot, None));
            let (Some(account), trace) = (rotation.account(), rotation.trace()) else {
                return internal(&rt);
            };
            // Answers on the socket count against the account and the
            // access key that opened it.
            let key = parts.extensions.get::<ClientKey>().cloned();
            let tally = crate::accounting::tally(
                rt.tokens.clone(),
                account.id.clone(),
                key,
                false,
                &handshake.uri,
                None,
            );
            let session = Session { hold, tally };
            switch(&state, &rt, client_side, resp, account, trace, session)
        }
        Answered::Other(r) => r,
    }
}

/// The handshake every attempt sends, with the attempt's credential added.
struct Handshake {
    uri: Uri,
    /// The client's headers, prepared (its credentials removed).
    base: HeaderMap,
}

/// What the client gets.
enum Answered {
    /// The upstream's `101`: both sides switch protocols.
    Switched(Response<Incoming>),
    /// Anything else: the upstream's refusal passed on, or marathon's own.
    Other(Response<ProxyBody>),
}

/// One attempt's result, before the machine has judged it.
enum Attempt {
    Switched(Response<Incoming>),
    /// Any other answer, its body read (bounded).
    Refused(http::response::Parts, Bytes),
    Failed(TransportFailure),
}

impl Handshake {
    /// Carries out the machine's actions until it answers. Every rule
    /// (which account, rotate, refresh, wait, give up) is the machine's.
    async fn drive(
        &self,
        state: &AppState,
        rt: &ProviderRuntime,
        rotation: &mut Rotation<'_, Env<'_>>,
    ) -> Answered {
        let mut key = AttemptKey::default();
        let mut action = rotation.start();
        loop {
            action = match action {
                Action::Send { attempt, picked } => {
                    if attempt > 1 {
                        rt.metrics.retries.fetch_add(1, Relaxed);
                    }
                    let Some(account) = rotation.account() else {
                        action = rotation.on_unusable(Unusable::NoCredential, state.now());
                        continue;
                    };
                    if picked && let Err(e) = key.take(state, rt, account).await {
                        let why = match &e {
                            Some(e) => Unusable::Token(e.as_failure()),
                            None => Unusable::NoCredential,
                        };
                        action = rotation.on_unusable(why, state.now());
                        continue;
                    }
                    let mut headers = self.base.clone();
                    if !key.apply(rt, account, &mut headers) {
                        action = rotation.on_unusable(Unusable::NoCredential, state.now());
                        continue;
                    }
                    let attempt = self.send(state, key.endpoint(rt), headers).await;
                    let now = state.now();
                    let c = classify_attempt(rt.settings.flavor, &attempt, now);
                    match rotation.on_response(c, now) {
                        Action::Respond(Answer::PassThrough) => {
                            return pass_through(rt, attempt, rotation);
                        }
                        next => next,
                    }
                }
                Action::Refresh => key.refresh(state, rt, rotation).await,
                Action::Wait { until } => {
                    tokio::time::sleep(state.now().until(until)).await;
                    rotation.on_timer(state.now())
                }
                Action::Respond(Answer::Refuse(refusal)) => {
                    tracing::info!(provider = %rt.settings.name, "WebSocket handshake answered by marathon: {}", refusal.message);
                    // A spent quota at the handshake is final for Codex
                    // (`usage_limit_reached`), a short wait a 429.
                    let r = own_answer(state, rt, &refusal, rotation.trace(), Audience::default());
                    return Answered::Other(r);
                }
                Action::Respond(Answer::PassThrough) | Action::Done => {
                    return Answered::Other(internal(rt));
                }
            };
        }
    }

    /// Sends the handshake upstream on a connection of its own.
    async fn send(&self, state: &AppState, endpoint: &Endpoint, headers: HeaderMap) -> Attempt {
        let mut up = Request::new(ProxyBody::Empty);
        *up.uri_mut() = self.uri.clone();
        *up.headers_mut() = headers;
        let sent = state.client.upgrade(endpoint, up);
        let result = match state.settings.upstream_timeout {
            Some(limit) => match tokio::time::timeout(limit, sent).await {
                Ok(r) => r,
                Err(_) => return Attempt::Failed(TransportFailure::Timeout),
            },
            None => sent.await,
        };
        match result {
            Err(e) if e.is_connect() => Attempt::Failed(TransportFailure::Connect),
            Err(_) => Attempt::Failed(TransportFailure::ResetBeforeResponse),
            Ok(resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => Attempt::Switched(resp),
            Ok(resp) => {
                let (head, body) = resp.into_parts();
                let body = Limited::new(body, MAX_REFUSAL_BODY)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                Attempt::Refused(head, body)
            }
        }
    }
}

/// Classifies one handshake attempt: a `101` is a success (usage headers on
/// it count like any answer's), a refusal is classified like any answer.
fn classify_attempt(
    flavor: marathon_core::ApiFlavor,
    attempt: &Attempt,
    now: UnixMillis,
) -> Classification {
    let (status, headers, body): (u16, &HeaderMap, &[u8]) = match attempt {
        Attempt::Failed(t) => return classify(flavor, &Outcome::Transport(*t), now),
        Attempt::Switched(resp) => (200, resp.headers(), b""),
        Attempt::Refused(head, body) => (head.status.as_u16(), &head.headers, body),
    };
    classify(
        flavor,
        &Outcome::Response {
            status,
            headers: &Lookup(headers),
            body,
        },
        now,
    )
}

/// The machine passes an answer on: the `101`, or the upstream's refusal
/// (the client's own mistake: a bad path, a bad handshake).
fn pass_through(
    rt: &ProviderRuntime,
    attempt: Attempt,
    rotation: &Rotation<'_, Env<'_>>,
) -> Answered {
    match attempt {
        Attempt::Switched(resp) => Answered::Switched(resp),
        Attempt::Refused(head, body) => {
            let mut r = Response::from_parts(head, ProxyBody::full(body));
            crate::headers::strip_hop_by_hop(r.headers_mut());
            let label = rotation.account().map(|a| &*a.label);
            add_trace_headers(r.headers_mut(), label, rotation.trace());
            Answered::Other(r)
        }
        // The machine answers a transport failure itself.
        Attempt::Failed(_) => Answered::Other(internal(rt)),
    }
}

fn internal(rt: &ProviderRuntime) -> Response<ProxyBody> {
    proxy_error(
        rt.settings.flavor,
        StatusCode::BAD_GATEWAY,
        "internal error: the rotation ended without an answer",
    )
}

/// What a WebSocket session keeps for its whole life.
struct Session {
    /// A capped account's slot, released when the session ends.
    hold: Option<crate::slots::SlotHold>,
    /// Counts the tokens of every answer on the socket (each
    /// `response.completed` message).
    tally: Tally,
}

/// `101` to the client with the upstream's handshake headers, and a task that
/// joins the two upgraded connections.
fn switch(
    state: &Arc<AppState>,
    rt: &Arc<ProviderRuntime>,
    client_side: OnUpgrade,
    mut upstream: Response<Incoming>,
    account: &Picked,
    trace: &AttemptTrace,
    session: Session,
) -> Response<ProxyBody> {
    let upstream_side = hyper::upgrade::on(&mut upstream);
    let watch = SpentWatch {
        state: state.clone(),
        rt: rt.clone(),
        id: account.id.clone(),
    };
    tokio::spawn(async move {
        // The slot is released when the session ends.
        let Session { hold: _hold, tally } = session;
        let (Ok(client), Ok(upstream)) = (client_side.await, upstream_side.await) else {
            return;
        };
        relay(client, upstream, watch, tally).await;
    });
    let (parts, _) = upstream.into_parts();
    let mut r = Response::from_parts(parts, ProxyBody::Empty);
    add_trace_headers(r.headers_mut(), Some(&account.label), trace);
    r
}

/// Bytes both ways, unchanged; the upstream's text messages read on the way.
async fn relay(client: Upgraded, upstream: Upgraded, watch: SpentWatch, mut tally: Tally) {
    let (mut client_rd, mut client_wr) = tokio::io::split(TokioIo::new(client));
    let (mut up_rd, mut up_wr) = tokio::io::split(TokioIo::new(upstream));
    let to_upstream = async {
        let _ = tokio::io::copy(&mut client_rd, &mut up_wr).await;
        let _ = up_wr.shutdown().await;
    };
    let to_client = async {
        let mut frames = FrameReader::default();
        // Same-length masking keeps every frame's length right: an upstream
        // echoing a key inside a frame cannot hand it to the client.
        let mut masker = crate::scrub::Masker::new(marathon_core::secret::scrubber());
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let read = if masker.held() == 0 {
                up_rd.read(&mut buf).await
            } else {
                // Bytes held back as the possible start of a secret: the rest
                // comes with the next read, or they go out as they are.
                match tokio::time::timeout(HOLD_AT_MOST, up_rd.read(&mut buf)).await {
                    Ok(read) => read,
                    Err(_) => {
                        if let Some(held) = masker.finish().and_then(|f| f.into_data().ok())
                            && client_wr.write_all(&held).await.is_err()
                        {
                            break;
                        }
                        continue;
                    }
                }
            };
            let n = match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Read before passing on: once the client has seen a spent
            // event, the account is already benched for its next connection.
            for message in frames.feed_counting(&buf[..n], Some(&mut tally)) {
                watch.check(&message);
            }
            let chunk = http_body::Frame::data(Bytes::copy_from_slice(&buf[..n]));
            if let Some(out) = masker.frame(chunk, false).and_then(|f| f.into_data().ok())
                && client_wr.write_all(&out).await.is_err()
            {
                break;
            }
        }
        if let Some(held) = masker.finish().and_then(|f| f.into_data().ok()) {
            let _ = client_wr.write_all(&held).await;
        }
        let _ = client_wr.shutdown().await;
    };
    tokio::join!(to_upstream, to_client);
}

/// Benches the socket's account when the upstream says, inside the frames,
/// that it is spent.
struct SpentWatch {
    state: Arc<AppState>,
    rt: Arc<ProviderRuntime>,
    id: AccountId,
}

impl SpentWatch {
    fn check(&self, message: &[u8]) {
        let Some((status, body, headers)) = spent_event(message) else {
            return;
        };
        let now = self.state.now();
        let c = classify(
            self.rt.settings.flavor,
            &Outcome::Response {
                status,
                headers: &Lookup(&headers),
                body: &body,
            },
            now,
        );
        if matches!(c.class, Class::Success | Class::Request) {
            return;
        }
        self.rt.metrics.stream_errors.fetch_add(1, Relaxed);
        // The handshake's slot ended with its success: the machine's rule
        // for an error after the head applies.
        let env = Env {
            state: &self.state,
            rt: &self.rt,
        };
        rotation::stream_error(&env, &self.id, &c, now);
    }
}

/// An error event that may say the account is spent, as the HTTP answer it
/// stands for: (status, body, headers). Codex's wrapped error
/// `{"type":"error","status":429,"error":{…},"headers":{…}}`, or a
/// `response.failed` whose error code is a quota's.
fn spent_event(message: &[u8]) -> Option<(u16, Vec<u8>, HeaderMap)> {
    // Cheap test first: most messages are deltas.
    if !contains(message, b"\"error\"") {
        return None;
    }
    let v: Value = serde_json::from_slice(message).ok()?;
    match v.get("type")?.as_str()? {
        "error" => {
            let status = u16::try_from(v.get("status")?.as_u64()?).ok()?;
            let body = serde_json::to_vec(&serde_json::json!({"error": v.get("error")?})).ok()?;
            let mut headers = HeaderMap::new();
            if let Some(Value::Object(h)) = v.get("headers") {
                for (k, val) in h {
                    let text = match val {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    if let (Ok(k), Ok(val)) = (
                        header::HeaderName::from_bytes(k.as_bytes()),
                        HeaderValue::from_str(&text),
                    ) {
                        headers.insert(k, val);
                    }
                }
            }
            Some((status, body, headers))
        }
        "response.failed" => {
            let error = v.get("response")?.get("error")?;
            let code = error.get("code")?.as_str()?;
            let status = match code {
                "insufficient_quota" | "usage_limit_reached" | "rate_limit_exceeded" => 429,
                _ => return None,
            };
            let body = serde_json::to_vec(&serde_json::json!({"error": {
                "type": code, "code": code, "message": error.get("message"),
            }}))
            .ok()?;
            Some((status, body, HeaderMap::new()))
        }
        _ => None,
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Reads WebSocket frames from a byte stream split anywhere, and hands back
/// each complete text message up to [`MAX_SCANNED_MESSAGE`] bytes (longer
/// ones are skipped, control frames ignored). It only reads: the bytes it is
/// given go to the client as they are.
#[derive(Default)]
struct FrameReader {
    /// Bytes of a frame header not complete yet.
    head: Vec<u8>,
    /// Payload bytes still to come for the current frame.
    remaining: u64,
    /// The current frame's masking key, and the payload offset (client
    /// frames are masked; the server's are not, but be lenient).
    mask: Option<([u8; 4], usize)>,
    /// Whether the current frame's payload belongs to the message being kept.
    keep: bool,
    /// Whether the current frame ends its message.
    fin: bool,
    /// The text message being gathered, `None` when it is not kept (binary,
    /// too long, or no message started).
    message: Option<Vec<u8>>,
    /// A text message is in progress (kept or not: the token tally reads
    /// every text payload as it passes, whatever its length).
    in_text: bool,
    /// The current frame's payload is part of that text message.
    text: bool,
}

impl FrameReader {
    #[cfg(test)]
    fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.feed_counting(bytes, None)
    }

    /// [`FrameReader::feed`], handing every text payload byte to `tally` as
    /// it passes and telling it where each text message ends.
    fn feed_counting(&mut self, mut bytes: &[u8], mut tally: Option<&mut Tally>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            if self.remaining == 0 {
                // Gathering a header.
                self.head.push(bytes[0]);
                bytes = &bytes[1..];
                if header_len(&self.head) == Some(self.head.len()) {
                    self.start_frame(&mut out, tally.as_deref_mut());
                }
                continue;
            }
            let take = usize::try_from(self.remaining)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            // Server frames are not masked; a masked one is not read.
            if self.text
                && self.mask.is_none()
                && let Some(t) = tally.as_deref_mut()
            {
                t.feed(&bytes[..take]);
            }
            if self.keep
                && let Some(m) = self.message.as_mut()
            {
                let start = m.len();
                m.extend_from_slice(&bytes[..take]);
                if let Some((key, offset)) = self.mask.as_mut() {
                    for (i, b) in m[start..].iter_mut().enumerate() {
                        *b ^= key[(*offset + i) % 4];
                    }
                    *offset += take;
                }
                if m.len() > MAX_SCANNED_MESSAGE {
                    self.message = None;
                }
            }
            bytes = &bytes[take..];
            self.remaining -= take as u64;
            if self.remaining == 0 {
                self.end_frame(&mut out, tally.as_deref_mut());
            }
        }
        out
    }

    /// A complete header is in `head`: start its frame.
    fn start_frame(&mut self, out: &mut Vec<Vec<u8>>, tally: Option<&mut Tally>) {
        let h = std::mem::take(&mut self.head);
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let (len, at) = match h[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => (
                u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                10,
            ),
            n => (u64::from(n), 2),
        };
        self.mask = masked.then(|| ([h[at], h[at + 1], h[at + 2], h[at + 3]], 0));
        self.remaining = len;
        self.fin = fin;
        match opcode {
            // Text starts a message; binary starts one not kept.
            1 => {
                self.message = Some(Vec::new());
                self.keep = true;
                (self.in_text, self.text) = (true, true);
            }
            2 => {
                self.message = None;
                self.keep = false;
                (self.in_text, self.text) = (false, false);
            }
            // A continuation belongs to the message in progress.
            0 => {
                self.keep = self.message.is_some();
                self.text = self.in_text;
            }
            // Control frames sit between a message's fragments.
            _ => {
                self.keep = false;
                self.fin = false;
                self.text = false;
            }
        }
        if len == 0 {
            self.end_frame(out, tally);
        }
    }

    fn end_frame(&mut self, out: &mut Vec<Vec<u8>>, tally: Option<&mut Tally>) {
        if self.keep
            && self.fin
            && let Some(m) = self.message.take()
        {
            out.push(m);
        }
        if self.text && self.fin {
            self.in_text = false;
            if let Some(t) = tally {
                t.end_message();
            }
        }
        self.text = false;
        self.keep = false;
    }
}

/// The length of a frame header whose first bytes are `h`, once known.
fn header_len(h: &[u8]) -> Option<usize> {
    if h.len() < 2 {
        return None;
    }
    let masked = if h[1] & 0x80 != 0 { 4 } else { 0 };
    Some(
        match h[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        } + masked,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n < 65536 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    /// Guards an error event being missed because TCP split its frame: the
    /// same messages come out however the bytes are cut.
    #[test]
    fn messages_come_out_whole_however_the_stream_is_split() {
        let long = "x".repeat(300);
        let mut stream = frame(1, true, br#"{"type":"response.created"}"#);
        stream.extend(frame(9, true, b"ping"));
        stream.extend(frame(1, false, b"{\"type\":"));
        stream.extend(frame(10, true, b""));
        stream.extend(frame(0, true, br#""error","status":429}"#));
        stream.extend(frame(2, true, b"\x00\x01"));
        stream.extend(frame(1, true, long.as_bytes()));
        let want: Vec<Vec<u8>> = vec![
            br#"{"type":"response.created"}"#.to_vec(),
            br#"{"type":"error","status":429}"#.to_vec(),
            long.clone().into_bytes(),
        ];
        for cut in 1..stream.len() {
            let mut r = FrameReader::default();
            let mut got = r.feed(&stream[..cut]);
            got.extend(r.feed(&stream[cut..]));
            assert_eq!(got, want, "cut at {cut}");
        }
        let mut r = FrameReader::default();
        let got: Vec<Vec<u8>> = stream.iter().flat_map(|b| r.feed(&[*b])).collect();
        assert_eq!(got, want);
    }

    /// Guards the token tally missing an answer because TCP split its frame
    /// or the message was too long to keep: every text payload reaches it,
    /// each message ends once, however the bytes are cut.
    #[test]
    fn the_tally_reads_every_text_message_however_split() {
        let completed = |n: u64| {
            format!(
                r#"{{"type":"response.completed","response":{{"model":"m","usage":{{"input_tokens":{n},"output_tokens":1}},"pad":"{}"}}}}"#,
                "x".repeat(MAX_SCANNED_MESSAGE)
            )
        };
        let (one, two) = (completed(3), completed(5));
        let mut stream = frame(1, false, &one.as_bytes()[..40]);
        stream.extend(frame(9, true, b"ping"));
        stream.extend(frame(0, true, &one.as_bytes()[40..]));
        stream.extend(frame(2, true, br#"{"usage":{"input_tokens":100}}"#));
        stream.extend(frame(1, true, two.as_bytes()));
        for cut in [1, 2, 30, 45, 50, stream.len() / 2, stream.len() - 1] {
            let (mut tally, ledger) = crate::accounting::tests::tally();
            let mut r = FrameReader::default();
            r.feed_counting(&stream[..cut], Some(&mut tally));
            r.feed_counting(&stream[cut..], Some(&mut tally));
            drop(tally);
            let t = ledger();
            assert_eq!((t.input, t.output), (8, 2), "cut at {cut}");
        }
    }

    #[test]
    fn a_message_too_long_to_be_an_error_event_is_skipped() {
        let mut r = FrameReader::default();
        let big = vec![b'a'; MAX_SCANNED_MESSAGE + 1];
        let mut stream = frame(1, true, &big);
        stream.extend(frame(1, true, b"after"));
        assert_eq!(r.feed(&stream), vec![b"after".to_vec()]);
    }

    #[test]
    fn codex_spent_events_read_as_their_http_answer() {
        let wrapped = br#"{"type":"error","status":429,"error":{"type":"usage_limit_reached","resets_at":1900000000},"headers":{"x-codex-primary-used-percent":"100.0"}}"#;
        let (status, body, headers) = spent_event(wrapped).unwrap();
        assert_eq!(status, 429);
        assert!(
            String::from_utf8(body)
                .unwrap()
                .contains("usage_limit_reached")
        );
        assert_eq!(headers["x-codex-primary-used-percent"], "100.0");
        let failed = br#"{"type":"response.failed","response":{"error":{"code":"insufficient_quota","message":"m"}}}"#;
        assert_eq!(spent_event(failed).unwrap().0, 429);
        assert!(spent_event(br#"{"type":"response.output_text.delta","delta":"error"}"#).is_none());
        assert!(
            spent_event(
                br#"{"type":"response.failed","response":{"error":{"code":"invalid_prompt"}}}"#
            )
            .is_none()
        );
    }
}
