//! WebSocket pass-through with rotation at the handshake (issue 11, item 2).
//!
//! Codex's built-in OpenAI provider opens a WebSocket to `{base}/responses`
//! before anything else. An `Upgrade: websocket` request on a provider route
//! comes here instead of `forward`: the handshake goes upstream on a
//! connection of its own with the picked account's credential (the client's
//! is removed like on every route); a handshake the upstream refuses for the
//! account (429, 401, 403, …) is recorded against it and the next account is
//! tried, as for any request; with no account left the client gets
//! marathon's "all accounts unavailable" answer instead of `101`. Once both
//! sides have switched protocols, bytes pass both ways unchanged. The
//! upstream's frames are read on the way (never altered) for an error event
//! saying the account is spent — Codex's `{"type":"error","status":429,…}`,
//! or a `response.failed` with a quota code — which benches the account for
//! the next connection (the socket itself stays the client's: its
//! conversation lives on that account).
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
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use marathon_core::classify::classify;
use marathon_core::decision::AttemptTrace;
use marathon_core::outcome::Outcome;
use marathon_core::pool::{Exhausted, Pick, PickRequest};
use marathon_core::{AccountId, AccountKind, Class, Classification, Secret, UnixMillis};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::body::ProxyBody;
use crate::errors::{proxy_error, refusal_response};
use crate::guard;
use crate::headers::{Lookup, prepare_request_headers};
use crate::state::{AppState, ProviderRuntime};
use marathon_wire::add_trace_headers;

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

/// Serves one WebSocket handshake on a provider route.
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
    let mut trace = AttemptTrace::new();
    let mut excluded: Vec<AccountId> = Vec::new();
    loop {
        let now = state.now();
        let pick = rt.pool.lock().unwrap_or_else(|e| e.into_inner()).pick(
            now,
            &PickRequest {
                session,
                exclude: &excluded,
            },
        );
        let (id, label) = match pick {
            Pick::Account { id, label, .. } => (id, label),
            Pick::Exhausted(ex) => return exhausted(&rt, now, &ex, &trace),
        };
        let Some(headers) = account_headers(&state, &rt, &id, &base).await else {
            rt.pool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .release(&id);
            excluded.push(id);
            continue;
        };
        let mut up = Request::new(ProxyBody::Empty);
        *up.uri_mut() = uri.clone();
        *up.headers_mut() = headers;
        let (classification, handshake) = match state.client.upgrade(&rt.endpoint, up).await {
            Err(e) => {
                let t = if e.is_connect() {
                    marathon_core::TransportFailure::Connect
                } else {
                    marathon_core::TransportFailure::ResetBeforeResponse
                };
                let c = classify(settings.flavor, &Outcome::Transport(t), now);
                (c, Handshake::Failed)
            }
            Ok(resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                // A success; usage headers on the answer count like any other's.
                let c = classify(
                    settings.flavor,
                    &Outcome::Response {
                        status: 200,
                        headers: &Lookup(resp.headers()),
                        body: b"",
                    },
                    now,
                );
                (c, Handshake::Switched(resp))
            }
            Ok(resp) => refused_handshake(settings.flavor, resp, now).await,
        };
        let now = state.now();
        trace.record(label.clone(), &classification, now);
        let events =
            rt.pool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(&id, &classification, now);
        state.publish(events);
        match (classification.class, handshake) {
            (Class::Success, Handshake::Switched(resp)) => {
                return switch(&state, &rt, client_side, resp, id, &label, &trace);
            }
            // The client's own mistake (a bad path, a bad handshake): its answer.
            (Class::Success | Class::Request, Handshake::Answered(mut r)) => {
                add_trace_headers(r.headers_mut(), Some(&label), &trace);
                return r;
            }
            _ => {
                rt.metrics.failovers.fetch_add(1, Relaxed);
                excluded.push(id);
            }
        }
    }
}

/// What the upstream did with a handshake.
enum Handshake {
    /// `101`: both sides switch protocols.
    Switched(Response<Incoming>),
    /// Any other answer, its body read.
    Answered(Response<ProxyBody>),
    /// No answer (connect failure, reset).
    Failed,
}

/// The handshake's headers for one account: its credential in the provider's
/// style (an OAuth account's current access token), `None` if it has none.
async fn account_headers(
    state: &AppState,
    rt: &ProviderRuntime,
    id: &AccountId,
    base: &HeaderMap,
) -> Option<HeaderMap> {
    let cred = rt
        .creds
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(id)
        .cloned()?;
    let token: Option<Secret> = match (cred.kind, &state.tokens) {
        (AccountKind::Oauth, Some(tokens)) => match tokens.access_token(id).await {
            Ok(s) if s.same_as(cred.stored_secret()) => None,
            Ok(s) => Some(s),
            Err(_) => return None,
        },
        _ => None,
    };
    let mut headers = base.clone();
    let settings = &rt.settings;
    match (&token, &cred.rendered) {
        (None, Some(r)) => settings.credentials.apply_rendered(&mut headers, r),
        (t, _) => {
            let secret = t.as_ref().unwrap_or_else(|| cred.stored_secret());
            let r = settings
                .credentials
                .render(cred.kind, secret, &cred.extras)
                .ok()?;
            settings.credentials.apply_rendered(&mut headers, &r);
        }
    }
    Some(headers)
}

/// A handshake answered with anything but `101`: its body read (bounded) and
/// classified like any answer, and kept for the client in case it is passed
/// through.
async fn refused_handshake(
    flavor: marathon_core::ApiFlavor,
    resp: Response<Incoming>,
    now: UnixMillis,
) -> (Classification, Handshake) {
    let (parts, body) = resp.into_parts();
    let body: Bytes = Limited::new(body, MAX_REFUSAL_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let c = classify(
        flavor,
        &Outcome::Response {
            status: parts.status.as_u16(),
            headers: &Lookup(&parts.headers),
            body: &body,
        },
        now,
    );
    let mut answer = Response::from_parts(parts, ProxyBody::full(body));
    crate::headers::strip_hop_by_hop(answer.headers_mut());
    (c, Handshake::Answered(answer))
}

/// No account left: marathon's own answer instead of `101`.
fn exhausted(
    rt: &ProviderRuntime,
    now: UnixMillis,
    ex: &Exhausted,
    trace: &AttemptTrace,
) -> Response<ProxyBody> {
    let settings = &rt.settings;
    tracing::info!(provider = %settings.name, "WebSocket handshake: every account is unavailable");
    // The same answer a plain request gets: a spent quota at the handshake
    // is final for Codex (`usage_limit_reached`), a short wait a 429.
    let refusal = marathon_core::rotation::exhausted_refusal(&rt.rotation, ex.clone(), now);
    refusal_response(
        settings.flavor,
        &settings.name,
        &refusal,
        trace,
        marathon_wire::Audience::default(),
    )
}

/// `101` to the client with the upstream's handshake headers, and a task that
/// joins the two upgraded connections.
fn switch(
    state: &Arc<AppState>,
    rt: &Arc<ProviderRuntime>,
    client_side: OnUpgrade,
    mut upstream: Response<Incoming>,
    id: AccountId,
    label: &str,
    trace: &AttemptTrace,
) -> Response<ProxyBody> {
    let upstream_side = hyper::upgrade::on(&mut upstream);
    let watch = SpentWatch {
        state: state.clone(),
        rt: rt.clone(),
        id,
    };
    tokio::spawn(async move {
        let (Ok(client), Ok(upstream)) = (client_side.await, upstream_side.await) else {
            return;
        };
        relay(client, upstream, watch).await;
    });
    let (parts, _) = upstream.into_parts();
    let mut r = Response::from_parts(parts, ProxyBody::Empty);
    add_trace_headers(r.headers_mut(), Some(label), trace);
    r
}

/// Bytes both ways, unchanged; the upstream's text messages read on the way.
async fn relay(client: Upgraded, upstream: Upgraded, watch: SpentWatch) {
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
            for message in frames.feed(&buf[..n]) {
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
        // The handshake's slot ended with its success: this is a late outcome.
        let events = self
            .rt
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record_late(&self.id, &c, now);
        self.state.publish(events);
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
}

impl FrameReader {
    fn feed(&mut self, mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            if self.remaining == 0 {
                // Gathering a header.
                self.head.push(bytes[0]);
                bytes = &bytes[1..];
                if header_len(&self.head) == Some(self.head.len()) {
                    self.start_frame(&mut out);
                }
                continue;
            }
            let take = usize::try_from(self.remaining)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
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
                self.end_frame(&mut out);
            }
        }
        out
    }

    /// A complete header is in `head`: start its frame.
    fn start_frame(&mut self, out: &mut Vec<Vec<u8>>) {
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
            }
            2 => {
                self.message = None;
                self.keep = false;
            }
            // A continuation belongs to the message in progress.
            0 => self.keep = self.message.is_some(),
            // Control frames sit between a message's fragments.
            _ => {
                self.keep = false;
                self.fin = false;
            }
        }
        if len == 0 {
            self.end_frame(out);
        }
    }

    fn end_frame(&mut self, out: &mut Vec<Vec<u8>>) {
        if self.keep
            && self.fin
            && let Some(m) = self.message.take()
        {
            out.push(m);
        }
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
