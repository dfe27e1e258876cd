//! The Responses API over a WebSocket, Codex's default transport:
//! `GET …/responses` with `Upgrade: websocket`. The account is known from the
//! handshake's credential; each `response.create` text frame is one request
//! (counted, held to the quota) answered with the same event objects the SSE
//! stream carries, one per text frame, and the socket stays open for the
//! next. A spent quota or a failure arrives as Codex reads it:
//! `{"type":"error","status":429,"error":{…},"headers":{…}}` — `status` is
//! what makes Codex act on the frame at all.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::scenario::ErrorKind;
use crate::server::{Kill, Shared, SimBody, credential, identify};
use crate::shapes::{self, Answer, Api, Canned, Flavour, Text};
use crate::world::Outcome;

/// Whether a request asks to become a WebSocket.
pub(crate) fn wants_upgrade(h: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

fn plain(status: u16, body: Canned) -> Response<SimBody> {
    let mut r = Response::new(SimBody::Full(Some(body.body.into())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(body.content_type),
    );
    for (name, value) in &body.headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            r.headers_mut().insert(*name, v);
        }
    }
    r
}

/// Answers the handshake: `101` for a known, unexpired credential of an
/// account not failing every request (the socket is then served by a task
/// of its own), else the HTTP error a client sees before any frame.
pub(crate) async fn accept(
    shared: &Arc<Shared>,
    kill: &Arc<Kill>,
    shutdown: &watch::Receiver<bool>,
    mut req: Request<Incoming>,
) -> Response<SimBody> {
    let rid = format!("req_sim_{:016x}", shared.next_id());
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let Some(key) = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| version_ok)
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        let c = shapes::bad_request(Flavour::OpenAi, "not a WebSocket handshake", &rid);
        return plain(400, c);
    };
    let cur = shared.current();
    let presented = credential(req.headers(), req.uri().query()).map(str::to_owned);
    match identify(&cur, presented.as_deref()).await {
        Err(stranger) => {
            let c = stranger.answer(Flavour::OpenAi, &rid);
            return plain(c.status, c);
        }
        Ok(who) if who.account().is_some_and(|a| a.expired) => {
            return plain(401, shapes::unauthorized(Flavour::OpenAi, true, &rid));
        }
        // An account failing every request (a `status`/`error` without
        // `fail_first`) refuses the handshake the same way, as an upstream
        // refusing the account does before any frame.
        Ok(who) => {
            if let Some(a) = who.account().filter(|a| a.fail_first.is_none())
                && let Some(status) = a.status.or(a.error.map(ErrorKind::default_status))
            {
                let mut c = shapes::failure(Flavour::OpenAi, status, a.error, &rid);
                if let Some(s) = a.retry_after {
                    c.headers.push(("retry-after", s.to_string()));
                }
                return plain(c.status, c);
            }
        }
    }
    let Some(presented) = presented else {
        unreachable!("identify refuses a request without a credential")
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let (shared, kill, shutdown) = (shared.clone(), kill.clone(), shutdown.clone());
    tokio::spawn(async move {
        let Ok(io) = upgrade.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
        serve(&shared, &kill, ws, &presented, shutdown).await;
    });
    let mut r = Response::new(SimBody::Full(None));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Reads frames until the client closes, the simulator stops, or the
/// account's scenario drops the connection.
async fn serve(
    shared: &Shared,
    kill: &Kill,
    mut ws: Socket,
    credential: &str,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = shutdown.changed() => {
                let _ = ws.close(None).await;
                return;
            }
        };
        // Pings are answered and a close is acknowledged by the next read.
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                let c = shapes::bad_request(Flavour::OpenAi, "binary frames are not supported", "");
                if send(&mut ws, &error_frame(&c)).await.is_err() {
                    return;
                }
                continue;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return,
        };
        match answer(shared, &mut ws, credential, text.as_str()).await {
            Ok(Reply::Kept) => {}
            Ok(Reply::Reset) => {
                // Dropping the socket closes it with an RST.
                kill.arm();
                return;
            }
            Err(_) => return,
        }
    }
}

enum Reply {
    /// Answered; the socket stays open.
    Kept,
    /// The scenario resets the connection.
    Reset,
}

async fn send(ws: &mut Socket, frame: &Value) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    ws.send(Message::text(frame.to_string())).await
}

/// An HTTP error answer as the wrapped error frame Codex maps like an HTTP
/// status: `status`, the body's `error` object (or the whole body), headers.
fn error_frame(c: &Canned) -> Value {
    let body: Value = serde_json::from_str(&c.body).unwrap_or_else(|_| json!({"message": c.body}));
    let error = body.get("error").cloned().unwrap_or(body);
    let headers: serde_json::Map<String, Value> = c
        .headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({"type": "error", "status": c.status, "error": error, "headers": headers})
}

/// One client frame: a `response.create` is a request; other client events
/// (`response.processed`, …) need no answer.
async fn answer(
    shared: &Shared,
    ws: &mut Socket,
    credential: &str,
    text: &str,
) -> Result<Reply, tokio_tungstenite::tungstenite::Error> {
    let id = shared.next_id();
    let rid = format!("req_sim_{id:016x}");
    let request: Value = match serde_json::from_str(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            let c = shapes::bad_request(Flavour::OpenAi, "a frame must be a JSON object", &rid);
            send(ws, &error_frame(&c)).await?;
            return Ok(Reply::Kept);
        }
    };
    if request.get("type").and_then(Value::as_str) != Some("response.create") {
        return Ok(Reply::Kept);
    }
    let cur = shared.current();
    let who = match identify(&cur, Some(credential)).await {
        Ok(who) => who,
        Err(stranger) => {
            send(ws, &error_frame(&stranger.answer(Flavour::OpenAi, &rid))).await?;
            return Ok(Reply::Kept);
        }
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(&cur.model)
        .to_owned();
    let account = who.account();
    let text = Text::new(&cur.reply, account.and_then(|a| a.stream_events));
    let answer_id = format!("resp_sim_{id:016x}");
    let answer = Answer {
        id: &answer_id,
        model: &model,
        text: &text,
        input_tokens: (text_len(&request) / 4).max(1),
        cached_tokens: 0,
        created: shapes::now_epoch(),
    };
    // `generate: false` only warms the connection up: no output, no quota.
    if request.get("generate") == Some(&Value::Bool(false)) {
        for event in events(&answer, None).into_iter().filter(|e| {
            matches!(
                e["type"].as_str(),
                Some("response.created" | "response.completed")
            )
        }) {
            send(ws, &event).await?;
        }
        return Ok(Reply::Kept);
    }
    let frames = match who.decide(shared) {
        Outcome::Reset => return Ok(Reply::Reset),
        Outcome::Expired => vec![error_frame(&shapes::unauthorized(
            Flavour::OpenAi,
            true,
            &rid,
        ))],
        Outcome::Fail {
            status,
            kind,
            retry_after,
        } => {
            let mut c = shapes::failure(Flavour::OpenAi, status, kind, &rid);
            if let Some(s) = retry_after {
                c.headers.push(("retry-after", s.to_string()));
            }
            vec![error_frame(&c)]
        }
        Outcome::Limited(v) => {
            let style = shapes::style_for(&v, Flavour::OpenAi);
            vec![error_frame(&shapes::limited(style, &v, &model, &rid))]
        }
        Outcome::Ok(_) => {
            let error = account.and_then(|a| a.stream_error_after.map(|n| (n, a.stream_error)));
            events(&answer, error)
        }
    };
    let slow = Duration::from_millis(account.map_or(0, |a| a.slow_ms));
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 && !slow.is_zero() {
            tokio::time::sleep(slow).await;
        }
        send(ws, frame).await?;
    }
    Ok(Reply::Kept)
}

/// The SSE stream's event objects (each SSE event's `data`).
fn events(answer: &Answer<'_>, error: Option<(u64, crate::StreamErrorKind)>) -> Vec<Value> {
    shapes::sse_events(Api::Responses, answer, false, error)
        .iter()
        .filter_map(|event| {
            let text = std::str::from_utf8(event).ok()?;
            let data = text.lines().find_map(|l| l.strip_prefix("data: "))?;
            serde_json::from_str(data).ok()
        })
        .collect()
}

/// A rough size of the request's input, for the usage numbers.
fn text_len(request: &Value) -> u64 {
    request
        .get("input")
        .map_or(0, |i| i.to_string().len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_error_becomes_the_wrapped_frame_codex_maps() {
        let c = Canned {
            status: 429,
            headers: vec![("x-codex-primary-used-percent", "100.0".into())],
            content_type: "application/json",
            body: r#"{"error":{"type":"usage_limit_reached","resets_at":1738888888}}"#.into(),
        };
        assert_eq!(
            error_frame(&c),
            json!({"type": "error", "status": 429,
                   "error": {"type": "usage_limit_reached", "resets_at": 1_738_888_888},
                   "headers": {"x-codex-primary-used-percent": "100.0"}})
        );
    }

    #[test]
    fn upgrade_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(!wants_upgrade(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(wants_upgrade(&h));
    }
}
