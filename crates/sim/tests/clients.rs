//! What the real APIs do for the clients people use, so marathon can be
//! tested against it: Claude Code's warm-up `HEAD`, the Gemini API (Gemini
//! CLI) with Google's quota errors, and the Responses WebSocket (Codex).
//! Real clients on real sockets: curl for HTTP, tungstenite for the socket.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use marathon_core::{ApiFlavor, Class, HintSource, Outcome, UnixMillis};
use marathon_sim::{Account, QuotaStyle, Scenario, SimHandle, StreamErrorKind};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

mod support;
use support::{Curl, curl};

const GEMINI_BODY: &str = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn gemini(sim: &SimHandle, call: &str, key: &str) -> Curl {
    let url = format!("{}/v1beta/models/gemini-2.5-flash:{call}", sim.url());
    curl(&[
        "-N",
        "-H",
        &format!("x-goog-api-key: {key}"),
        "-H",
        "content-type: application/json",
        "-d",
        GEMINI_BODY,
        &url,
    ])
    .await
}

/// Guards the warm-up being answered 404/401 or counted as traffic: Claude
/// Code sends `HEAD {base}/api/hello` without credentials before its first
/// request (older builds: `HEAD` of the base URL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_heads_get_an_empty_200_without_credentials() {
    let sim = marathon_sim::start(Scenario::new([Account::ok("a", "sk-a")]))
        .await
        .unwrap();
    for path in ["/", "/api/hello", "/anthropic/api/hello"] {
        let r = curl(&["-I", &format!("{}{path}", sim.url())]).await;
        assert_eq!(r.status, 200, "HEAD {path}: {r:?}");
        assert_eq!(
            r.headers.get("content-length").map(String::as_str),
            Some("0")
        );
    }
    assert!(sim.counts().values().all(|n| *n == 0), "{:?}", sim.counts());
}

/// Guards the Gemini routes missing or misshaped: Gemini CLI calls
/// `:streamGenerateContent?alt=sse` (CRLF-separated `data:` events, the last
/// with `finishReason`), `:generateContent` and `:countTokens`, with its key
/// in `x-goog-api-key` (the Google SDKs may use `?key=`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_generate_stream_and_count_tokens() {
    let sim = marathon_sim::start(Scenario::new([Account::ok("g", "AIza-sim-g")]))
        .await
        .unwrap();
    let r = gemini(&sim, "generateContent", "AIza-sim-g").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let candidate = &v["candidates"][0];
    assert_eq!(candidate["content"]["role"], "model");
    assert_eq!(candidate["finishReason"], "STOP");
    assert_eq!(
        candidate["content"]["parts"][0]["text"],
        "Hello from the marathon simulator."
    );
    assert_eq!(v["modelVersion"], "gemini-2.5-flash");
    assert!(v["usageMetadata"]["totalTokenCount"].as_u64().unwrap() > 0);

    let r = gemini(&sim, "streamGenerateContent?alt=sse", "AIza-sim-g").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").starts_with("text/event-stream"));
    let events: Vec<Value> = r
        .body
        .split("\r\n\r\n")
        .filter(|e| !e.is_empty())
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert_eq!(events.len(), 5, "{}", r.body);
    let text: String = events
        .iter()
        .map(|e| {
            e["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(text, "Hello from the marathon simulator.");
    assert_eq!(events[4]["candidates"][0]["finishReason"], "STOP");
    assert!(events[3]["candidates"][0].get("finishReason").is_none());

    // Without alt=sse: one JSON array of the same chunks.
    let r = gemini(&sim, "streamGenerateContent", "AIza-sim-g").await;
    let chunks: Vec<Value> = serde_json::from_str(&r.body).unwrap();
    assert_eq!(chunks.len(), 5);

    // The key as a query parameter; countTokens is no generation.
    let before = sim.count("g");
    let url = format!(
        "{}/v1beta/models/gemini-2.5-flash:countTokens?key=AIza-sim-g",
        sim.url()
    );
    let r = curl(&[
        "-H",
        "content-type: application/json",
        "-d",
        GEMINI_BODY,
        &url,
    ])
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["totalTokens"].as_u64().unwrap() > 0);
    assert_eq!(sim.count("g"), before);

    // Google answers an unknown key with 400 API_KEY_INVALID, never echoing it.
    let r = gemini(&sim, "generateContent", "AIza-nobody").await;
    assert_eq!(r.status, 400);
    let e = &r.json()["error"];
    assert_eq!(e["status"], "INVALID_ARGUMENT");
    assert_eq!(e["details"][0]["reason"], "API_KEY_INVALID");
    assert!(!r.body.contains("AIza-nobody"));
}

/// Guards the quota answer marathon (and Gemini CLI) read: 429
/// `RESOURCE_EXHAUSTED`, a `QuotaFailure` per minute (per day for a window
/// over an hour) and `RetryInfo.retryDelay` in whole seconds ending the
/// window; marathon's own classifier reads it as a rate limit resetting there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_quota_is_resource_exhausted_with_retry_info() {
    let sim = marathon_sim::start(Scenario::new([
        Account::ok("g", "AIza-sim-g").quota(1, Duration::from_secs(40), QuotaStyle::GeminiApi),
        // The Gemini route's own style when the scenario names none.
        Account {
            quota: Some(marathon_sim::Quota {
                requests: 0,
                window: marathon_sim::SimDuration(Duration::from_secs(86_400)),
                style: None,
            }),
            ..Account::ok("day", "AIza-sim-day")
        },
    ]))
    .await
    .unwrap();
    let t0 = now_ms();
    assert_eq!(
        gemini(&sim, "generateContent", "AIza-sim-g").await.status,
        200
    );
    let r = gemini(&sim, "streamGenerateContent?alt=sse", "AIza-sim-g").await;
    let t1 = now_ms();
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(!r.headers.contains_key("retry-after"), "Google sends none");
    let e = &r.json()["error"];
    assert_eq!(
        (e["code"].as_u64(), e["status"].as_str()),
        (Some(429), Some("RESOURCE_EXHAUSTED"))
    );
    let details = e["details"].as_array().unwrap();
    let of = |t: &str| {
        details
            .iter()
            .find(|d| d["@type"] == format!("type.googleapis.com/google.rpc.{t}"))
            .unwrap_or_else(|| panic!("no {t} in {details:?}"))
    };
    assert_eq!(
        of("QuotaFailure")["violations"][0]["quotaId"],
        "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    );
    let delay = of("RetryInfo")["retryDelay"].as_str().unwrap();
    let secs: u64 = delay
        .strip_suffix('s')
        .unwrap()
        .parse()
        .expect("whole seconds");
    assert!((39..=40).contains(&secs), "{delay}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("limit: 1, model: gemini-2.5-flash")
    );

    let c = marathon_core::classify::classify(
        ApiFlavor::Google,
        &Outcome::Response {
            status: 429,
            headers: &[("content-type", "application/json")],
            body: r.body.as_bytes(),
        },
        UnixMillis(t1),
    );
    assert_eq!(c.class, Class::RateLimited, "{c:?}");
    let reset = c.reset.expect("a reset hint");
    assert_eq!(reset.source, HintSource::GoogleRetryInfo);
    assert!(
        (t0 + 39_000..=t1 + 41_000).contains(&reset.at.0),
        "reset {} not at the window's end",
        reset.at.0
    );

    let r = gemini(&sim, "generateContent", "AIza-sim-day").await;
    assert_eq!(r.status, 429);
    let v = r.json();
    assert!(
        v["error"]["details"][0]["violations"][0]["quotaId"]
            .as_str()
            .unwrap()
            .contains("PerDay"),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit: 0,")
    );
}

/// A stream that breaks half-way ends with Google's error chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_stream_breaks_with_an_error_chunk() {
    let sim = marathon_sim::start(Scenario::new([
        Account::ok("g", "AIza-sim-g").stream_error_after(2, StreamErrorKind::Overloaded)
    ]))
    .await
    .unwrap();
    let r = gemini(&sim, "streamGenerateContent?alt=sse", "AIza-sim-g").await;
    let events: Vec<&str> = r.body.split("\r\n\r\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "{}", r.body);
    let last: Value = serde_json::from_str(events[2].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(last["error"]["status"], "UNAVAILABLE");
}

// ------------------------------------------------------------- WebSocket

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn socket(sim: &SimHandle, key: &str) -> Result<Ws, WsError> {
    let url = format!("ws://{}/v1/responses", sim.addr);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    req.headers_mut().insert(
        "openai-beta",
        "responses_websockets=2026-02-06".parse().unwrap(),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

async fn create(ws: &mut Ws, extra: Value) {
    let mut frame = json!({"type": "response.create", "model": "gpt-5-codex",
                           "input": [{"type": "message", "role": "user",
                                      "content": [{"type": "input_text", "text": "hi"}]}],
                           "stream": true, "store": false});
    frame
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

/// Frames until one that ends a request (`response.completed`, an error).
async fn until_done(ws: &mut Ws) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10s")
            .expect("the socket stays open")
            .unwrap();
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        let done = matches!(v["type"].as_str(), Some("response.completed" | "error"));
        frames.push(v);
        if done {
            return frames;
        }
    }
}

fn types(frames: &[Value]) -> Vec<&str> {
    frames.iter().map(|f| f["type"].as_str().unwrap()).collect()
}

/// Guards Codex's default transport missing from the simulator, or speaking
/// anything but the SSE stream's events: `response.create` frames on one
/// socket, answered event by event; a spent quota as the `status: 429`
/// error frame Codex maps (without `status` it would hang for 5 minutes);
/// the socket open for the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_websocket_speaks_the_sse_events_and_wraps_quota_errors() {
    let sim = marathon_sim::start(Scenario::new([Account::ok("cx", "codex-token-cx").quota(
        2,
        Duration::from_secs(600),
        QuotaStyle::Codex,
    )]))
    .await
    .unwrap();

    // The same events as the SSE stream, one per text frame.
    let sse = curl(&[
        "-N",
        "-H",
        "authorization: Bearer codex-token-cx",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"model":"gpt-5-codex","input":"hi","stream":true}"#,
        &format!("{}/v1/responses", sim.url()),
    ])
    .await;
    let sse_types: Vec<String> = sse.events().into_iter().map(|(name, _)| name).collect();
    let mut ws = socket(&sim, "codex-token-cx").await.unwrap();
    create(&mut ws, json!({})).await;
    let frames = until_done(&mut ws).await;
    assert_eq!(types(&frames), sse_types);
    assert_eq!(frames[0]["response"]["status"], "in_progress");
    let done = frames.last().unwrap();
    assert_eq!(
        done["response"]["output"][0]["content"][0]["text"],
        "Hello from the marathon simulator."
    );

    // A pre-warm (`generate: false`) is neither generated nor counted.
    create(&mut ws, json!({"generate": false})).await;
    let frames = until_done(&mut ws).await;
    assert_eq!(types(&frames), ["response.created", "response.completed"]);
    assert_eq!(sim.count("cx"), 2, "the SSE request and the first frame");

    // Over quota: the wrapped error frame, and the socket stays usable.
    create(&mut ws, json!({})).await;
    let frames = until_done(&mut ws).await;
    let e = &frames[0];
    assert_eq!(types(&frames), ["error"]);
    assert_eq!(e["status"], 429);
    assert_eq!(e["error"]["type"], "usage_limit_reached");
    let resets_at = e["error"]["resets_at"].as_u64().unwrap();
    assert!(resets_at > now_ms() / 1000 + 590, "{e}");
    assert_eq!(e["headers"]["x-codex-primary-used-percent"], "100.0");
    ws.send(Message::Ping(vec![7].into())).await.unwrap();
    let pong = ws.next().await.unwrap().unwrap();
    assert_eq!(pong, Message::Pong(vec![7].into()));
    create(&mut ws, json!({})).await;
    assert_eq!(until_done(&mut ws).await[0]["status"], 429);
    assert_eq!(sim.count("cx"), 4);
    ws.close(None).await.unwrap();
}

/// The handshake refuses an unknown credential with the HTTP 401 Codex
/// sees before any frame; a `reset` account's socket drops mid-request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_websocket_handshake_and_reset() {
    let sim = marathon_sim::start(Scenario::new([
        Account::ok("gone", "codex-token-gone").reset()
    ]))
    .await
    .unwrap();
    match socket(&sim, "codex-token-nobody").await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 401);
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
            assert!(!body.contains("codex-token-nobody"), "{body}");
        }
        other => panic!("expected a 401 handshake, got {:?}", other.map(|_| ())),
    }
    let mut ws = socket(&sim, "codex-token-gone").await.unwrap();
    create(&mut ws, json!({})).await;
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the socket ends");
    assert!(
        matches!(end, None | Some(Err(_))),
        "expected the connection to drop, got {end:?}"
    );
    assert_eq!(sim.count("gone"), 1);
}
