//! The simulator answers a real `curl` for every API shape and scenario kind.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use marathon_sim::{Account, ErrorKind, QuotaStyle, Scenario, SimHandle, StreamErrorKind};
use serde_json::Value;

mod support;
use support::{Curl, curl};

const ANTHROPIC_BODY: &str =
    r#"{"model":"claude-sim","max_tokens":32,"messages":[{"role":"user","content":"hi"}]}"#;
const CHAT_BODY: &str = r#"{"model":"gpt-sim","messages":[{"role":"user","content":"hi"}]}"#;
const RESPONSES_BODY: &str = r#"{"model":"gpt-sim","input":"hi"}"#;

async fn post(sim: &SimHandle, path: &str, key: &str, body: &str) -> Curl {
    let url = format!("{}{path}", sim.url());
    let auth = if path.ends_with("/messages") {
        format!("x-api-key: {key}")
    } else {
        format!("Authorization: Bearer {key}")
    };
    curl(&[
        "-N",
        "-H",
        &auth,
        "-H",
        "content-type: application/json",
        "-d",
        body,
        &url,
    ])
    .await
}

fn stream(body: &str) -> String {
    body.replacen('{', r#"{"stream":true,"#, 1)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `2026-11-28T12:00:17Z` to epoch seconds.
fn parse_rfc3339(s: &str) -> u64 {
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    assert_eq!(&s[19..], "Z", "{s}");
    (days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19)) as u64
}

/// Whether `reset` is the end of a window of `window_secs` that opened between
/// `before` and `after` (reset times are rounded up to whole seconds).
fn at_window_end(reset: u64, before: u64, after: u64, window_secs: u64) -> bool {
    reset >= before + window_secs && reset <= after + window_secs + 1 && reset > now_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_api_shape_answers_json_and_streams() {
    let sim = marathon_sim::start(Scenario::new([Account::ok("a", "sk-a")]))
        .await
        .unwrap();

    let r = post(&sim, "/v1/messages", "sk-a", ANTHROPIC_BODY).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-sim");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(
        v["content"][0]["text"],
        "Hello from the marathon simulator."
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["output_tokens"], 5);
    assert!(r.header("request-id").starts_with("req_sim_"));

    let r = post(&sim, "/v1/messages", "sk-a", &stream(ANTHROPIC_BODY)).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").starts_with("text/event-stream"));
    let ev = r.events();
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let text: String = ev
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["delta"]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, "Hello from the marathon simulator.");
    let start: Value = serde_json::from_str(&ev[0].1).unwrap();
    assert_eq!(start["message"]["model"], "claude-sim");

    let r = post(&sim, "/v1/chat/completions", "sk-a", CHAT_BODY).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-sim");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from the marathon simulator."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert!(r.header("x-request-id").starts_with("req_sim_"));

    let r = post(&sim, "/v1/chat/completions", "sk-a", &stream(CHAT_BODY)).await;
    assert_eq!(r.status, 200);
    let ev = r.events();
    assert!(
        ev.iter().all(|(n, _)| n.is_empty()),
        "chat chunks are bare data lines"
    );
    assert_eq!(ev.last().unwrap().1, "[DONE]");
    let first: Value = serde_json::from_str(&ev[0].1).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let finish: Value = serde_json::from_str(&ev[ev.len() - 2].1).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");

    let r = post(&sim, "/v1/responses", "sk-a", RESPONSES_BODY).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "Hello from the marathon simulator."
    );

    let r = post(&sim, "/v1/responses", "sk-a", &stream(RESPONSES_BODY)).await;
    let ev = r.events();
    assert_eq!(ev[0].0, "response.created");
    assert_eq!(ev.last().unwrap().0, "response.completed");
    assert_eq!(
        ev.iter()
            .filter(|(n, _)| n == "response.output_text.delta")
            .count(),
        5
    );
    let done: Value = serde_json::from_str(&ev.last().unwrap().1).unwrap();
    assert_eq!(done["response"]["status"], "completed");

    // Any prefix routes by suffix (a proxy's /anthropic/..., Codex's backend path).
    let r = post(&sim, "/anthropic/v1/messages", "sk-a", ANTHROPIC_BODY).await;
    assert_eq!(r.status, 200);
    let r = post(&sim, "/backend-api/codex/responses", "sk-a", RESPONSES_BODY).await;
    assert_eq!(r.status, 200);

    let models = curl(&["-H", "x-api-key: sk-a", &format!("{}/v1/models", sim.url())]).await;
    assert_eq!(models.status, 200);
    assert_eq!(models.json()["data"][0]["id"], "sim-model-1");

    assert_eq!(sim.count("a"), 8, "models requests are not counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_api_quota_429_has_rfc3339_resets_at_window_end() {
    let sim = marathon_sim::start(Scenario::new([Account::ok("a", "sk-a").quota(
        2,
        Duration::from_secs(60),
        QuotaStyle::AnthropicApi,
    )]))
    .await
    .unwrap();
    let before = now_secs();
    let ok = post(&sim, "/v1/messages", "sk-a", ANTHROPIC_BODY).await;
    let after = now_secs();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("anthropic-ratelimit-requests-limit"), "2");
    assert_eq!(ok.header("anthropic-ratelimit-requests-remaining"), "1");
    assert_eq!(
        post(&sim, "/v1/messages", "sk-a", ANTHROPIC_BODY)
            .await
            .status,
        200
    );

    let r = post(&sim, "/v1/messages", "sk-a", ANTHROPIC_BODY).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("anthropic-ratelimit-requests-remaining"), "0");
    let reset = parse_rfc3339(r.header("anthropic-ratelimit-requests-reset"));
    assert!(
        at_window_end(reset, before, after, 60),
        "reset {reset}, now {}",
        now_secs()
    );
    assert_eq!(
        r.header("anthropic-ratelimit-tokens-reset"),
        r.header("anthropic-ratelimit-requests-reset")
    );
    let retry: u64 = r.header("retry-after").parse().unwrap();
    assert!((55..=61).contains(&retry), "retry-after {retry}");
    let v = r.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(v["request_id"].as_str().unwrap().starts_with("req_sim_"));
    assert_eq!(sim.count("a"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_unified_quota_reports_utilisation_on_200s_and_rejects_with_epoch_resets() {
    let sim = marathon_sim::start(Scenario::new([Account::ok("a", "sk-a").quota(
        5,
        Duration::from_secs(5 * 3600),
        QuotaStyle::AnthropicUnified,
    )]))
    .await
    .unwrap();
    let before = now_secs();
    let first = post(&sim, "/v1/messages", "sk-a", ANTHROPIC_BODY).await;
    let after = now_secs();
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("anthropic-ratelimit-unified-status"),
        "allowed"
    );
    assert_eq!(
        first.header("anthropic-ratelimit-unified-5h-utilization"),
        "0.2"
    );
    assert_eq!(
        first.header("anthropic-ratelimit-unified-7d-status"),
        "allowed"
    );
    for _ in 0..3 {
        post(&sim, "/v1/messages", "sk-a", ANTHROPIC_BODY).await;
    }
    // The fifth request fills the window: allowed, with a warning.
    let fifth = post(&sim, "/v1/messages", "sk-a", ANTHROPIC_BODY).await;
    assert_eq!(fifth.status, 200);
    assert_eq!(
        fifth.header("anthropic-ratelimit-unified-status"),
        "allowed_warning"
    );
    assert_eq!(
        fifth.header("anthropic-ratelimit-unified-5h-utilization"),
        "1.0"
    );

    let r = post(&sim, "/v1/messages", "sk-a", ANTHROPIC_BODY).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("anthropic-ratelimit-unified-status"), "rejected");
    assert_eq!(
        r.header("anthropic-ratelimit-unified-5h-status"),
        "rejected"
    );
    assert_eq!(
        r.header("anthropic-ratelimit-unified-representative-claim"),
        "five_hour"
    );
    assert_eq!(
        r.header("anthropic-ratelimit-unified-fallback-percentage"),
        "0.5"
    );
    let reset: u64 = r
        .header("anthropic-ratelimit-unified-reset")
        .parse()
        .unwrap();
    assert!(at_window_end(reset, before, after, 5 * 3600), "{reset}");
    assert_eq!(
        r.header("anthropic-ratelimit-unified-5h-reset"),
        r.header("anthropic-ratelimit-unified-reset")
    );
    let reset_7d: u64 = r
        .header("anthropic-ratelimit-unified-7d-reset")
        .parse()
        .unwrap();
    assert!(
        at_window_end(reset_7d, before, after, 7 * 86_400),
        "{reset_7d}"
    );
    assert_eq!(
        r.header("anthropic-ratelimit-unified-7d-utilization"),
        "0.1"
    );
    let retry: u64 = r.header("retry-after").parse().unwrap();
    assert!(retry > 5 * 3600 - 10 && retry <= 5 * 3600, "{retry}");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_quota_429_has_go_duration_resets_and_rate_limit_exceeded() {
    let sim = marathon_sim::start(Scenario::new([Account::ok("a", "sk-a").quota(
        1,
        Duration::from_secs(360),
        QuotaStyle::OpenAi,
    )]))
    .await
    .unwrap();
    let ok = post(&sim, "/v1/chat/completions", "sk-a", CHAT_BODY).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-ratelimit-limit-requests"), "1");
    assert_eq!(ok.header("x-ratelimit-remaining-requests"), "0");
    let r = post(&sim, "/v1/chat/completions", "sk-a", CHAT_BODY).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-ratelimit-remaining-requests"), "0");
    // Six minutes less the few milliseconds since the first request: 5m59.9xs.
    let reset = r.header("x-ratelimit-reset-requests");
    assert!(reset.starts_with("5m59") || reset == "6m0s", "{reset}");
    let v = r.json();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["type"], "requests");
    assert!(v["error"]["param"].is_null());
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Rate limit reached for gpt-sim"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_quota_sends_usage_headers_always_and_usage_limit_reached() {
    let sim = marathon_sim::start(Scenario::new([Account::ok("a", "tok-a").quota(
        2,
        Duration::from_secs(300 * 60),
        QuotaStyle::Codex,
    )]))
    .await
    .unwrap();
    let before = now_secs();
    let ok = post(
        &sim,
        "/backend-api/codex/responses",
        "tok-a",
        RESPONSES_BODY,
    )
    .await;
    let after = now_secs();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-codex-primary-used-percent"), "50.0");
    assert_eq!(ok.header("x-codex-primary-window-minutes"), "300");
    assert_eq!(ok.header("x-codex-secondary-window-minutes"), "10080");
    post(
        &sim,
        "/backend-api/codex/responses",
        "tok-a",
        RESPONSES_BODY,
    )
    .await;
    let r = post(
        &sim,
        "/backend-api/codex/responses",
        "tok-a",
        RESPONSES_BODY,
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-codex-primary-used-percent"), "100.0");
    let reset_at: u64 = r.header("x-codex-primary-reset-at").parse().unwrap();
    assert!(at_window_end(reset_at, before, after, 300 * 60));
    let secondary: u64 = r.header("x-codex-secondary-reset-at").parse().unwrap();
    assert!(at_window_end(secondary, before, after, 7 * 86_400));
    let v = r.json();
    assert_eq!(v["error"]["type"], "usage_limit_reached");
    assert_eq!(v["error"]["plan_type"], "plus");
    assert_eq!(v["error"]["resets_at"].as_u64(), Some(reset_at));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_and_copilot_quota_styles() {
    let sim = marathon_sim::start(Scenario::new([
        Account::ok("g", "g-key").quota(0, Duration::from_secs(60), QuotaStyle::Google),
        Account::ok("c", "c-key").quota(0, Duration::from_secs(2 * 3600), QuotaStyle::Copilot),
    ]))
    .await
    .unwrap();
    let r = post(&sim, "/v1/chat/completions", "g-key", CHAT_BODY).await;
    assert_eq!(r.status, 429);
    let v = r.json();
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(v["error"]["code"], 429);
    let details = v["error"]["details"].as_array().unwrap();
    assert_eq!(details[0]["reason"], "RATE_LIMIT_EXCEEDED");
    let retry = details[1]["retryDelay"].as_str().unwrap();
    assert_eq!(
        details[1]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    let secs: f64 = retry.trim_end_matches('s').parse().unwrap();
    assert!(secs > 55.0 && secs <= 60.0, "{retry}");
    assert_eq!(
        details[2]["violations"][0]["quotaId"],
        "GenerateRequestsPerMinutePerProjectPerUser"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with(&format!("Please retry in {retry}."))
    );

    let r = post(&sim, "/v1/chat/completions", "c-key", CHAT_BODY).await;
    assert_eq!(r.status, 429);
    assert!(r.header("content-type").starts_with("text/plain"));
    assert!(r.body.contains("try again in 2 hours"), "{}", r.body);
    assert!(
        !r.headers.contains_key("retry-after"),
        "Copilot sends only a sentence"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_expired_credentials_get_401_without_echo() {
    let sim = marathon_sim::start(Scenario::new([Account::ok("old", "sk-old").expired()]))
        .await
        .unwrap();
    let r = post(&sim, "/v1/messages", "sk-ant-nobody-knows", ANTHROPIC_BODY).await;
    assert_eq!(r.status, 401);
    let v = r.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert!(!r.body.contains("nobody-knows"));

    let r = post(&sim, "/v1/chat/completions", "sk-nobody-knows", CHAT_BODY).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    assert!(!r.body.contains("nobody-knows"));

    let r = curl(&[
        "-d",
        CHAT_BODY,
        &format!("{}/v1/chat/completions", sim.url()),
    ])
    .await;
    assert_eq!(r.status, 401, "no credential at all");

    let r = post(&sim, "/v1/messages", "sk-old", ANTHROPIC_BODY).await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    let r = post(&sim, "/v1/responses", "sk-old", RESPONSES_BODY).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "token_expired");
    assert!(!r.body.contains("sk-old"));
    assert_eq!(sim.count("old"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_failures_have_provider_bodies() {
    let sim = marathon_sim::start(Scenario::new([
        Account::ok("over", "k529").status(529),
        Account::ok("busy", "k503").status(503).retry_after(7),
        Account::ok("broken", "k500").status(500),
        Account::ok("gw", "k502").status(502),
        Account::ok("gone", "k402").status(402),
        Account::ok("plan", "k403").status(403),
        Account::ok("broke", "k429").error(ErrorKind::InsufficientQuota),
        Account::ok("credit", "kbill").error(ErrorKind::Billing),
        Account::ok("flaky", "kflaky").status(529).fail_first(2),
    ]))
    .await
    .unwrap();

    let r = post(&sim, "/v1/messages", "k529", ANTHROPIC_BODY).await;
    assert_eq!(r.status, 529);
    assert_eq!(
        r.json()["error"],
        serde_json::json!({"type": "overloaded_error", "message": "Overloaded"})
    );

    let r = post(&sim, "/v1/responses", "k503", RESPONSES_BODY).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "server_is_overloaded");
    assert_eq!(r.header("retry-after"), "7");

    let r = post(&sim, "/v1/messages", "k500", ANTHROPIC_BODY).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["type"], "api_error");
    let r = post(&sim, "/v1/chat/completions", "k500", CHAT_BODY).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["type"], "server_error");

    let r = post(&sim, "/v1/chat/completions", "k502", CHAT_BODY).await;
    assert_eq!(r.status, 502);

    let r = post(&sim, "/v1/responses", "k402", RESPONSES_BODY).await;
    assert_eq!(r.status, 402);
    assert_eq!(r.body, r#"{"detail":{"code":"deactivated_workspace"}}"#);

    let r = post(&sim, "/v1/responses", "k403", RESPONSES_BODY).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["type"], "usage_not_included");
    let r = post(&sim, "/v1/messages", "k403", ANTHROPIC_BODY).await;
    assert_eq!(r.json()["error"]["type"], "permission_error");

    let r = post(&sim, "/v1/chat/completions", "k429", CHAT_BODY).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "insufficient_quota");
    assert_eq!(r.json()["error"]["type"], "insufficient_quota");

    let r = post(&sim, "/v1/messages", "kbill", ANTHROPIC_BODY).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("credit balance is too low")
    );

    for expected in [529, 529, 200, 200] {
        let r = post(&sim, "/v1/messages", "kflaky", ANTHROPIC_BODY).await;
        assert_eq!(r.status, expected);
    }
    assert_eq!(sim.count("flaky"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_accounts_drop_the_connection_before_the_response_head() {
    let sim = marathon_sim::start(Scenario::new([
        Account::ok("rst", "k-rst").reset(),
        Account::ok("once", "k-once").reset().fail_first(1),
    ]))
    .await
    .unwrap();
    for (path, body) in [
        ("/v1/messages", ANTHROPIC_BODY),
        ("/v1/chat/completions", CHAT_BODY),
    ] {
        let r = post(&sim, path, "k-rst", body).await;
        assert!(r.code == 52 || r.code == 56, "curl exit {} ({r:?})", r.code);
        assert_eq!(r.status, 0, "no response head");
    }
    let r = post(&sim, "/v1/messages", "k-once", ANTHROPIC_BODY).await;
    assert!(r.code == 52 || r.code == 56, "{r:?}");
    let r = post(&sim, "/v1/messages", "k-once", ANTHROPIC_BODY).await;
    assert_eq!(r.status, 200);
    assert_eq!(sim.count("rst"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_stream_error_events() {
    let sim = marathon_sim::start(Scenario::new([
        Account::ok("a", "k-a").stream_error_after(4, StreamErrorKind::Overloaded),
        Account::ok("o", "k-o").stream_error_after(3, StreamErrorKind::RateLimit),
    ]))
    .await
    .unwrap();
    let r = post(&sim, "/v1/messages", "k-a", &stream(ANTHROPIC_BODY)).await;
    assert_eq!(r.status, 200, "the error comes inside a 200 stream");
    let ev = r.events();
    assert_eq!(ev.len(), 5);
    assert_eq!(ev[3].0, "content_block_delta");
    assert_eq!(ev[4].0, "error");
    assert_eq!(
        ev[4].1,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
    );
    // Non-streamed requests are unaffected.
    assert_eq!(
        post(&sim, "/v1/messages", "k-a", ANTHROPIC_BODY)
            .await
            .status,
        200
    );

    let r = post(&sim, "/v1/responses", "k-o", &stream(RESPONSES_BODY)).await;
    let ev = r.events();
    assert_eq!(ev.len(), 4);
    assert_eq!(ev[3].0, "error");
    let v: Value = serde_json::from_str(&ev[3].1).unwrap();
    assert_eq!(v["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_and_slow_streams() {
    let sim = marathon_sim::start(Scenario::new([
        Account::ok("long", "k-long").stream_events(10_000),
        Account::ok("slow", "k-slow").slow_ms(40),
    ]))
    .await
    .unwrap();
    let r = post(&sim, "/v1/chat/completions", "k-long", &stream(CHAT_BODY)).await;
    let ev = r.events();
    let deltas = ev
        .iter()
        .filter(|(_, d)| d.contains(r#""delta":{"content""#))
        .count();
    assert_eq!(deltas, 10_000);
    assert_eq!(ev.last().unwrap().1, "[DONE]");

    let t = std::time::Instant::now();
    let r = post(&sim, "/v1/messages", "k-slow", &stream(ANTHROPIC_BODY)).await;
    assert_eq!(r.events().len(), 11);
    // Ten paced gaps of 40 ms each; only a lower bound, so a busy machine cannot flake it.
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_count_and_change_the_world() {
    let sim = marathon_sim::start(Scenario::new([
        Account::ok("a", "k-a"),
        Account::ok("b", "k-b"),
    ]))
    .await
    .unwrap();
    post(&sim, "/v1/messages", "k-a", ANTHROPIC_BODY).await;
    post(&sim, "/v1/messages", "k-a", ANTHROPIC_BODY).await;
    post(&sim, "/v1/chat/completions", "k-b", CHAT_BODY).await;
    let counts = curl(&[&format!("{}/_sim/counts", sim.url())]).await;
    assert_eq!(counts.status, 200);
    assert_eq!(counts.json(), serde_json::json!({"a": 2, "b": 1}));

    let r = curl(&["-X", "POST", &format!("{}/_sim/reset-counts", sim.url())]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        curl(&[&format!("{}/_sim/counts", sim.url())]).await.json(),
        serde_json::json!({"a": 0, "b": 0})
    );

    // Switch b to 529 keeping its key; add c.
    let r = curl(&[
        "-d",
        r#"{"status":529}"#,
        &format!("{}/_sim/accounts/b", sim.url()),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        post(&sim, "/v1/messages", "k-b", ANTHROPIC_BODY)
            .await
            .status,
        529
    );
    let r = curl(&[
        "-d",
        r#"{"key":"k-c"}"#,
        &format!("{}/_sim/accounts/c", sim.url()),
    ])
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        post(&sim, "/v1/messages", "k-c", ANTHROPIC_BODY)
            .await
            .status,
        200
    );
    let r = curl(&[
        "-d",
        r#"{"stauts":529}"#,
        &format!("{}/_sim/accounts/c", sim.url()),
    ])
    .await;
    assert_eq!(r.status, 400, "typos are refused");
    assert!(r.body.contains("stauts"));

    // Replace the world with TOML.
    let toml = "[[accounts]]\nname = \"z\"\nkey = \"k-z\"\nstatus = 503\n";
    let r = curl(&[
        "-X",
        "PUT",
        "-H",
        "content-type: application/toml",
        "--data-binary",
        toml,
        &format!("{}/_sim/scenario", sim.url()),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        post(&sim, "/v1/messages", "k-a", ANTHROPIC_BODY)
            .await
            .status,
        401
    );
    assert_eq!(
        post(&sim, "/v1/messages", "k-z", ANTHROPIC_BODY)
            .await
            .status,
        503
    );
    let r = curl(&[
        "-X",
        "PUT",
        "-d",
        r#"{"accounts":[{"name":"y","key":"k-y","quota":{"requests":1,"window":"1m","style":"openai"}}]}"#,
        &format!("{}/_sim/scenario", sim.url()),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        post(&sim, "/v1/chat/completions", "k-y", CHAT_BODY)
            .await
            .status,
        200
    );
    assert_eq!(
        post(&sim, "/v1/chat/completions", "k-y", CHAT_BODY)
            .await
            .status,
        429
    );
    assert_eq!(sim.count("y"), 2);
    assert_eq!(sim.count("z"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_mode_serves_precomputed_bodies() {
    let sim = marathon_sim::start(Scenario::new([Account::ok("a", "k-a")]).fast())
        .await
        .unwrap();
    let r1 = post(&sim, "/v1/chat/completions", "k-a", CHAT_BODY).await;
    let r2 = post(&sim, "/v1/chat/completions", "k-a", CHAT_BODY).await;
    assert_eq!(r1.status, 200);
    assert_eq!(r1.body, r2.body, "precomputed");
    assert_eq!(
        r1.json()["choices"][0]["message"]["content"],
        "Hello from the marathon simulator."
    );
    let r = post(&sim, "/v1/messages", "k-a", &stream(ANTHROPIC_BODY)).await;
    assert_eq!(r.events().last().unwrap().0, "message_stop");
    assert_eq!(
        post(&sim, "/v1/messages", "nope", ANTHROPIC_BODY)
            .await
            .status,
        401
    );
    assert_eq!(sim.count("a"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_scenario_runs() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/demo.toml");
    let scenario = Scenario::from_file(&path).unwrap();
    assert_eq!(scenario.accounts.len(), 3);
    let sim = marathon_sim::start(scenario).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            post(&sim, "/v1/messages", "sk-sim-small", ANTHROPIC_BODY)
                .await
                .status,
            200
        );
    }
    assert_eq!(
        post(&sim, "/v1/messages", "sk-sim-small", ANTHROPIC_BODY)
            .await
            .status,
        429
    );
    assert_eq!(
        post(&sim, "/v1/messages", "sk-sim-steady", ANTHROPIC_BODY)
            .await
            .status,
        200
    );
    assert_eq!(
        post(&sim, "/v1/messages", "sk-sim-spare", ANTHROPIC_BODY)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspected_bearer_tokens_are_attributed_by_sub() {
    use axum::routing::post as axum_post;
    // A tiny RFC 7662 endpoint: one active token for "carol".
    let app = axum::Router::new().route(
        "/introspect",
        axum_post(|body: String| async move {
            if body.starts_with("token=opaque-carol&") {
                r#"{"active":true,"sub":"carol"}"#
            } else {
                r#"{"active":false}"#
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let scenario = Scenario {
        introspection_url: Some(format!("http://{idp}/introspect")),
        introspection_client_id: Some("sim".into()),
        ..Scenario::new([Account::ok("dave", "k-dave")])
    };
    let sim = marathon_sim::start(scenario).await.unwrap();
    let r = post(&sim, "/v1/chat/completions", "opaque-carol", CHAT_BODY).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = post(&sim, "/v1/chat/completions", "opaque-mallory", CHAT_BODY).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    assert_eq!(sim.count("carol"), 1);
    // A scenario account named like the token's subject lends it its behaviour.
    sim.set_account(Account {
        name: "carol".into(),
        status: Some(529),
        ..Account::default()
    })
    .unwrap();
    let r = post(&sim, "/v1/messages", "opaque-carol", ANTHROPIC_BODY).await;
    assert_eq!(r.status, 529);
    assert_eq!(sim.count("carol"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_requests_never_overrun_a_quota() {
    let sim = marathon_sim::start(Scenario::new([Account::ok("a", "k-a").quota(
        5,
        Duration::from_secs(60),
        QuotaStyle::OpenAi,
    )]))
    .await
    .unwrap();
    let runs: Vec<_> = (0..20)
        .map(|_| {
            let url = sim.url();
            tokio::spawn(async move {
                curl(&[
                    "-H",
                    "Authorization: Bearer k-a",
                    "-d",
                    CHAT_BODY,
                    &format!("{url}/v1/chat/completions"),
                ])
                .await
                .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for r in runs {
        statuses.push(r.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 5);
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 15);
    assert_eq!(sim.count("a"), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_listening() {
    let sim = marathon_sim::start(Scenario::new([Account::ok("a", "k-a")]))
        .await
        .unwrap();
    let url = sim.url();
    assert_eq!(curl(&[&format!("{url}/_sim/health")]).await.status, 200);
    sim.shutdown().await;
    let r = curl(&[&format!("{url}/_sim/health")]).await;
    assert_eq!(r.code, 7, "connection refused after shutdown: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_its_url_and_serves_the_demo() {
    use tokio::io::AsyncBufReadExt;
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/demo.toml");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_marathon-sim"))
        .args(["--port", "0", "--quiet", "--scenario"])
        .arg(&demo)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    let r = curl(&[
        "-H",
        "x-api-key: sk-sim-steady",
        "-d",
        ANTHROPIC_BODY,
        &format!("{url}/v1/messages"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        curl(&[&format!("{url}/_sim/counts")]).await.json()["steady"],
        1
    );
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_rejects_a_bad_scenario_naming_file_and_key() {
    let dir = std::env::temp_dir().join(format!("marathon-sim-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[[accounts]]\nname = \"a\"\nstatuss = 500\n").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_marathon-sim"))
        .args(["--port", "0", "--scenario"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("line 3") && err.contains("statuss"),
        "{err}"
    );
    assert!(!err.contains("backtrace"), "{err}");
}
