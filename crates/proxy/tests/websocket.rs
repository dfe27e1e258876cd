//! WebSocket pass-through with rotation at the handshake (issue 11, item 2):
//! Codex's Responses WebSocket through marathon to the simulator's, on
//! 127.0.0.1. Without it marathon dropped `Upgrade` and sent a plain GET, and
//! Codex reconnected five times before falling back to HTTPS.

mod support;

use futures_util::{SinkExt, StreamExt};
use marathon_sim::{Account, QuotaStyle, Scenario};
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
const REPLY: &str = "Hello from the marathon simulator.";

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens `ws://proxy/codex/responses` as Codex does, with its own (client-side) key.
async fn connect(w: &World) -> Result<(Socket, http::Response<Option<Vec<u8>>>), String> {
    let url = format!("{}/responses", w.url("").replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert("authorization", "Bearer codex-client-key".parse().unwrap());
    h.insert(
        "openai-beta",
        "responses_websockets=2026-02-06".parse().unwrap(),
    );
    let tcp = tokio::net::TcpStream::connect(w.proxy.local_addr())
        .await
        .unwrap();
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, resp)) => Ok((ws, resp.map(|_| None))),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(format!(
            "{} {}",
            resp.status(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Sends one `response.create` and reads the events up to the one that ends it.
async fn turn(ws: &mut Socket) -> Vec<Value> {
    let create = json!({"type": "response.create", "model": "gpt-5-codex", "input": "hi"});
    ws.send(Message::text(create.to_string())).await.unwrap();
    let mut events = Vec::new();
    while let Some(msg) = ws.next().await {
        let Message::Text(t) = msg.unwrap() else {
            continue;
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        let end = matches!(
            v["type"].as_str(),
            Some("response.completed" | "response.failed" | "error")
        );
        events.push(v);
        if end {
            break;
        }
    }
    events
}

fn text(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect()
}

async fn codex_world(alice: Account, bob: Account) -> World {
    world_with(Scenario::new([alice, bob]), Opts::new(Api::Codex)).await
}

/// Guards the upgrade being dropped: the socket opens through marathon with
/// the account's key (the simulator knows no other), and two turns on it
/// arrive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_passes_through_with_the_accounts_credential() {
    let w = codex_world(
        Account::ok("alice", "sk-test-alice-0123456789"),
        Account::ok("bob", "sk-test-bob-9876543210"),
    )
    .await;
    let (mut ws, resp) = connect(&w).await.expect("handshake through marathon");
    assert_eq!(resp.headers()["x-marathon-account"], "alice");
    for _ in 0..2 {
        let events = turn(&mut ws).await;
        assert_eq!(events.last().unwrap()["type"], "response.completed");
        assert_eq!(text(&events), REPLY);
    }
    ws.close(None).await.unwrap();
    assert_eq!(w.sim.count("alice"), 2);
    assert_eq!(w.sim.count("bob"), 0);
}

/// Guards a refused handshake reaching the client: alice's credential is
/// refused at the handshake (401), marathon moves the socket to bob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_the_upstream_refuses_rotates_to_the_next_account() {
    let w = codex_world(
        Account::ok("alice", "sk-test-alice-0123456789").expired(),
        Account::ok("bob", "sk-test-bob-9876543210"),
    )
    .await;
    let (mut ws, resp) = connect(&w).await.expect("handshake through marathon");
    assert_eq!(resp.headers()["x-marathon-account"], "bob");
    assert!(
        resp.headers()["x-marathon-attempts"]
            .to_str()
            .unwrap()
            .starts_with("alice=401"),
        "{:?}",
        resp.headers()
    );
    assert_eq!(text(&turn(&mut ws).await), REPLY);
    assert_ne!(w.health("alice").await, "ready");
}

/// Guards a spent account being used again and again: the upstream's
/// in-socket "usage limit reached" error reaches the client unchanged, and
/// the next connection goes to another account; with none left the
/// handshake is answered with marathon's exhaustion answer, not `101`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_error_event_in_the_frames_benches_the_account_for_the_next_connection() {
    let w = codex_world(
        Account::ok("alice", "sk-test-alice-0123456789").quota(0, HOUR, QuotaStyle::Codex),
        Account::ok("bob", "sk-test-bob-9876543210").quota(1, HOUR, QuotaStyle::Codex),
    )
    .await;
    let (mut ws, _) = connect(&w).await.expect("handshake through marathon");
    let events = turn(&mut ws).await;
    let last = events.last().unwrap();
    assert_eq!(last["type"], "error", "{last}");
    assert_eq!(last["status"], 429, "{last}");
    drop(ws);
    assert_eq!(w.health("alice").await, "cooling");

    let (mut ws, resp) = connect(&w).await.expect("the next connection");
    assert_eq!(resp.headers()["x-marathon-account"], "bob");
    assert_eq!(text(&turn(&mut ws).await), REPLY);
    // bob's one request spent, reported inside the socket: nobody is left.
    assert_eq!(turn(&mut ws).await.last().unwrap()["status"], 429);
    drop(ws);
    let refused = connect(&w).await.expect_err("no account left");
    assert!(refused.starts_with("429"), "{refused}");
    assert!(refused.contains("marathon"), "{refused}");
    assert_eq!(w.sim.count("alice"), 1, "{:?}", w.sim.counts());
}

/// Guards the handshake rotating outside the machine's rules: alice's
/// handshake is answered 429 (rate limited), the socket goes to bob, and
/// alice rests for the `retry-after` the upstream gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_answered_429_rotates_to_the_next_account() {
    let w = codex_world(
        Account::ok("alice", "sk-test-alice-0123456789")
            .status(429)
            .retry_after(600),
        Account::ok("bob", "sk-test-bob-9876543210"),
    )
    .await;
    let (mut ws, resp) = connect(&w).await.expect("handshake through marathon");
    assert_eq!(resp.headers()["x-marathon-account"], "bob");
    let attempts = resp.headers()["x-marathon-attempts"].to_str().unwrap();
    assert!(attempts.starts_with("alice=429"), "{attempts}");
    assert_eq!(text(&turn(&mut ws).await), REPLY);
    ws.close(None).await.unwrap();
    assert_eq!(w.health("alice").await, "cooling");
    // The next connection does not try alice again.
    let (_ws, resp) = connect(&w).await.expect("the next connection");
    assert_eq!(resp.headers()["x-marathon-attempts"], "bob=200");
    assert_eq!((w.sim.count("alice"), w.sim.count("bob")), (0, 1));
    // Counted like any request's rotation.
    let m = w.metrics().await;
    for line in [
        "marathon_requests_total{provider=\"codex\"} 2",
        "marathon_failovers_total{provider=\"codex\"} 1",
        "marathon_retries_total{provider=\"codex\"} 1",
    ] {
        assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
    }
}

/// An OAuth login of the Codex provider whose stored access token the
/// simulator no longer accepts; it knows `oauth-fresh-alice`.
async fn oauth_codex_world(tokens: std::sync::Arc<FakeTokens>) -> World {
    world_with(
        Scenario::new([
            Account::ok("alice", "oauth-fresh-alice"),
            Account::ok("bob", "sk-test-bob-9876543210"),
        ]),
        Opts::new(Api::Codex)
            .oauth("alice", "oauth-stale-alice")
            .tokens(tokens),
    )
    .await
}

/// Guards a 401 at the handshake benching an OAuth account whose token only
/// needed a refresh: the token is refreshed once and the handshake sent
/// again to the same account, which keeps the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_at_the_handshake_is_refreshed_and_retried_once() {
    let tokens = std::sync::Arc::new(FakeTokens::new(
        "oauth-stale-alice",
        Ok("oauth-fresh-alice"),
    ));
    let w = oauth_codex_world(tokens.clone()).await;
    let (mut ws, resp) = connect(&w).await.expect("handshake through marathon");
    assert_eq!(resp.headers()["x-marathon-account"], "alice");
    let attempts = resp.headers()["x-marathon-attempts"].to_str().unwrap();
    assert!(
        attempts.starts_with("alice=401") && attempts.contains("alice=200"),
        "{attempts}"
    );
    assert_eq!(
        tokens.refreshes.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(text(&turn(&mut ws).await), REPLY);
    ws.close(None).await.unwrap();
    assert_eq!(w.health("alice").await, "ready");
    assert_eq!((w.sim.count("alice"), w.sim.count("bob")), (1, 0));
}

/// Guards a refresh loop: a token still refused after its one refresh
/// marks the account needs-login and the socket goes to the next account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_still_refused_after_its_refresh_needs_login_and_rotates() {
    let tokens = std::sync::Arc::new(FakeTokens::new(
        "oauth-stale-alice",
        Ok("oauth-also-rejected"),
    ));
    let w = oauth_codex_world(tokens.clone()).await;
    let (mut ws, resp) = connect(&w).await.expect("handshake through marathon");
    assert_eq!(resp.headers()["x-marathon-account"], "bob");
    let attempts = resp.headers()["x-marathon-attempts"].to_str().unwrap();
    assert!(attempts.starts_with("alice=401"), "{attempts}");
    assert_eq!(
        tokens.refreshes.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(text(&turn(&mut ws).await), REPLY);
    assert_eq!(w.health("alice").await, "needs_login");
}

/// Guards a spent pool answering `101` or a bare error: every account
/// refuses the handshake for an hour, and the client gets marathon's
/// spent-quota answer (Codex's `usage_limit_reached`, not retried) naming
/// the accounts and when the first is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_account_refusing_the_handshake_gets_the_exhaustion_answer() {
    let w = codex_world(
        Account::ok("alice", "sk-test-alice-0123456789")
            .status(429)
            .retry_after(3600),
        Account::ok("bob", "sk-test-bob-9876543210")
            .status(429)
            .retry_after(3600),
    )
    .await;
    let refused = connect(&w).await.expect_err("no account left");
    assert!(refused.starts_with("429"), "{refused}");
    for part in [
        "usage_limit_reached",
        "marathon",
        "alice cooling",
        "bob cooling",
        "usable again in",
    ] {
        assert!(refused.contains(part), "{part:?} missing in {refused}");
    }
    assert_eq!((w.sim.count("alice"), w.sim.count("bob")), (0, 0));
}

/// Guards token accounting on the Responses WebSocket: every turn on one
/// socket is an answer of its own (`response.completed`), each counted
/// against the account that opened the socket — not only the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_turn_on_a_socket_is_counted() {
    let w = codex_world(
        Account::ok("alice", "sk-test-alice-0123456789"),
        Account::ok("bob", "sk-test-bob-9876543210"),
    )
    .await;
    let (mut ws, _) = connect(&w).await.expect("handshake through marathon");
    let (mut input, mut output) = (0, 0);
    for _ in 0..3 {
        let events = turn(&mut ws).await;
        let usage = &events.last().unwrap()["response"]["usage"];
        let cached = usage["input_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0);
        input += usage["input_tokens"].as_u64().unwrap() - cached;
        output += usage["output_tokens"].as_u64().unwrap();
    }
    assert!(input > 0 && output > 0);
    let status = w.proxy.status();
    let alice = status["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "codex")
        .unwrap()["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["label"] == "alice")
        .unwrap()
        .clone();
    assert_eq!(
        alice["tokens"],
        json!({"input": input, "output": output, "cache_read": 0, "cache_write": 0}),
        "{alice}"
    );
    assert_eq!(alice["tokens_by_model"][0]["model"], "gpt-5-codex");
    ws.close(None).await.unwrap();
}
