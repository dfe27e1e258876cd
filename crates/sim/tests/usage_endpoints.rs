//! The subscription usage endpoints (issue 13): the caller's windows as
//! Anthropic and ChatGPT report them, a throttle switch, and call counts.

use std::time::Duration;

use marathon_core::usage_api::UsageFormat;
use marathon_sim::{Account, QuotaStyle, Scenario};

mod support;
use support::curl;

const MESSAGE: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;

/// Guards the windows a poller reads: after 3 of 10 requests, 30 % used,
/// with the reset time the response headers give; and polls are no traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reports_the_callers_windows_without_spending_them() {
    let sim = marathon_sim::start(Scenario::new([Account::ok("a", "tok-a").quota(
        10,
        Duration::from_secs(5 * 3600),
        QuotaStyle::AnthropicUnified,
    )]))
    .await
    .unwrap();
    let msgs = format!("{}/v1/messages", sim.url());
    for _ in 0..3 {
        let r = curl(&["-H", "authorization: Bearer tok-a", "-d", MESSAGE, &msgs]).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let anthropic = format!("{}/api/oauth/usage", sim.url());
    let r = curl(&[
        "-H",
        "authorization: Bearer tok-a",
        "-H",
        "anthropic-beta: oauth-2025-04-20",
        &anthropic,
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let windows = UsageFormat::AnthropicOauth.parse(r.body.as_bytes());
    let five = windows.iter().find(|w| w.name == "5h").expect("5h window");
    assert!((five.utilization - 0.3).abs() < 1e-9, "{windows:?}");
    assert!(five.resets_at.is_some());
    // Codex's endpoint, same account.
    let r = curl(&[
        "-H",
        "authorization: Bearer tok-a",
        &format!("{}/backend-api/wham/usage", sim.url()),
    ])
    .await;
    let windows = UsageFormat::ChatgptWham.parse(r.body.as_bytes());
    assert_eq!(windows[0].name, "primary");
    assert!((windows[0].utilization - 0.3).abs() < 1e-9, "{windows:?}");
    // The real endpoint wants the OAuth beta flag; a stranger gets 401.
    let r = curl(&["-H", "authorization: Bearer tok-a", &anthropic]).await;
    assert_eq!(r.status, 400);
    let r = curl(&["-H", "authorization: Bearer nobody", &anthropic]).await;
    assert_eq!(r.status, 401);
    assert_eq!(sim.count("a"), 3, "polls are not generations");
    let calls = sim.usage_calls();
    assert_eq!((calls.total, calls.by_account["a"]), (4, 3));
}

/// Guards the throttle switch tests use: 429 with retry-after, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_usage_endpoint_answers_429_with_retry_after() {
    let sim = marathon_sim::start(Scenario::new([Account::ok("a", "tok-a")]))
        .await
        .unwrap();
    sim.throttle_usage(Some(90));
    let url = format!("{}/api/oauth/usage", sim.url());
    let r = curl(&["-H", "authorization: Bearer tok-a", &url]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), "90");
    sim.throttle_usage(None);
    let r = curl(&[
        "-H",
        "authorization: Bearer tok-a",
        "-H",
        "anthropic-beta: oauth-2025-04-20",
        &url,
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let calls = sim.usage_calls();
    assert_eq!((calls.total, calls.throttled), (2, 1));
}
