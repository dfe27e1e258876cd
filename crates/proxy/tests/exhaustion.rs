//! Issue 11: when every account is spent, marathon's answer is one the
//! client in front acts on. A short wait is a rate limit the client waits
//! out; a long one is the provider's spent-quota form, which its own clients
//! show at once instead of retrying (the table is in `marathon-wire`'s
//! `refusal` module and the README). Real sockets, marathon-sim upstream.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use marathon_sim::{Account, QuotaStyle, Scenario};
use support::*;

const HOUR: Duration = Duration::from_secs(3600);

fn spent(name: &str, window: Duration, style: QuotaStyle) -> Account {
    Account::ok(name, format!("sk-test-{name}-0123456789abcdef")).quota(0, window, style)
}

/// The world's request with extra headers (a client's user agent, accept).
fn request_with(w: &World, stream: bool, extra: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = w.request(stream);
    for (k, v) in extra {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    req
}

/// Spends every account of a world (one call each), then asks once more.
async fn spend_all_then_call(w: &World, stream: bool, extra: &[(&str, &str)]) -> Resp {
    let first = w.call().await;
    assert_eq!(first.status, 429, "{}", first.text());
    send(&w.client, request_with(w, stream, extra)).await
}

/// Guards: every account spent for an hour was answered like a blip
/// (429 + retry-after and nothing else), which Claude Code and the SDKs
/// retry for as long as the account is spent. Now `x-should-retry: false`
/// stops them at once, and the message says when the first is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_spent_tells_anthropic_clients_to_stop_with_the_reset_time() {
    let w = world(Scenario::new([
        spent("a1", HOUR, QuotaStyle::AnthropicApi),
        spent("a2", 2 * HOUR, QuotaStyle::AnthropicApi),
    ]))
    .await;
    let r = spend_all_then_call(&w, false, &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("x-should-retry"), Some("false"));
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((3590..=3700).contains(&retry_after), "{retry_after}");
    let body = r.json();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("a1 cooling for") && message.contains("usable again in 1h0"),
        "{message}"
    );
    assert!(message.contains(" UTC)"), "the reset as a time: {message}");
    // The accounts were asked once each, on the first request only.
    assert_eq!((w.sim.count("a1"), w.sim.count("a2")), (1, 1));
}

/// Guards: Codex showed "exceeded retry limit, last status: 429" (or kept
/// reconnecting) instead of the usage limit. `usage_limit_reached` with
/// `resets_at` is what Codex prints as "You've hit your usage limit. Try
/// again at …" and stops on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_spent_is_a_usage_limit_for_codex() {
    let w = world_with(
        Scenario::new([spent("a1", HOUR, QuotaStyle::Codex)]),
        Opts::new(Api::Codex),
    )
    .await;
    let r = spend_all_then_call(&w, true, &[("accept", "text/event-stream")]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"]["type"], "usage_limit_reached", "{body}");
    let resets_at = body["error"]["resets_at"].as_u64().unwrap();
    let in_an_hour = now_ms() / 1000 + 3600;
    assert!(
        resets_at.abs_diff(in_an_hour) < 120,
        "{resets_at} vs {in_an_hour}"
    );
    assert!(body["error"].get("plan_type").is_none());
}

/// Guards: Codex never retries a plain HTTP 429, so a 20 s wait ended its
/// turn. A `response.failed` event with `rate_limit_exceeded` and "try again
/// in Ns" it sleeps out and retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_wait_is_a_response_failed_event_codex_waits_out() {
    let w = world_with(
        Scenario::new([spent("a1", Duration::from_secs(20), QuotaStyle::Codex)]),
        Opts::new(Api::Codex),
    )
    .await;
    let r = spend_all_then_call(&w, true, &[("accept", "text/event-stream")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let text = r.text();
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("one event");
    let event: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(event["type"], "response.failed");
    assert_eq!(event["response"]["error"]["code"], "rate_limit_exceeded");
    let message = event["response"]["error"]["message"].as_str().unwrap();
    let seconds: u64 = message
        .rsplit("try again in ")
        .next()
        .and_then(|s| s.strip_suffix("s."))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no delay in {message}"));
    assert!((15..=22).contains(&seconds), "{message}");
    // Without an event-stream accept (a program), the same wait is a 429.
    let plain = w.call().await;
    assert_eq!(plain.status, 429);
    assert_eq!(plain.header("x-should-retry"), None);
}

/// Guards: Gemini CLI retried marathon's 429 with backoff for over a
/// minute: it reads google.rpc details, and a RetryInfo above 300 s is
/// what it treats as a spent quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_spent_carries_retry_info_for_gemini() {
    let w = world_with(
        Scenario::new([spent("a1", HOUR, QuotaStyle::GeminiApi)]),
        Opts::new(Api::Google),
    )
    .await;
    let r = spend_all_then_call(&w, false, &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED", "{body}");
    let details = body["error"]["details"].as_array().unwrap();
    let delay = details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
        .and_then(|d| d["retryDelay"].as_str())
        .and_then(|s| s.strip_suffix('s'))
        .and_then(|s| s.parse::<u64>().ok())
        .expect("RetryInfo");
    assert!(delay > 300, "{delay}");
}
