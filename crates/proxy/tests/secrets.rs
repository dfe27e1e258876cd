//! No secret leaves the proxy except upstream, in the account's own request:
//! every log line (tracing at TRACE, captured), every event, the status,
//! metrics, events and dashboard endpoints and every response header and
//! body are searched for every account key and the access key.
//!
//! Its own test binary, because it installs the process-wide tracing
//! subscriber.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use marathon_core::Secret;
use marathon_sim::{Account, QuotaStyle, Scenario, StreamErrorKind};
use support::*;

const ACCESS: &str = "mk-access-SECRET-5d1e8b7c";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn acct(name: &str) -> Account {
    Account::ok(name, format!("sk-ant-api03-SECRET-{name}-Zq81xYw"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_events_endpoints_or_responses() {
    let logs = Captured::default();
    let sink = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .init();

    let w = world_with(
        Scenario::new([
            acct("a1").quota(0, Duration::from_secs(30), QuotaStyle::AnthropicUnified),
            acct("a2").expired(),
            acct("a3").status(529).fail_first(1),
            acct("a4"),
        ]),
        Opts::new(Api::Anthropic).settings(|s| s.access_keys = vec![Secret::new(ACCESS)]),
    )
    .await;
    let mut secrets: Vec<String> = w.accounts.iter().map(|(_, k)| k.clone()).collect();
    secrets.push(ACCESS.to_owned());
    let mut seen = String::new();

    let mut events = w.proxy.subscribe_events();
    let keyed = |mut req: http::Request<_>| {
        req.headers_mut()
            .insert("x-marathon-key", ACCESS.parse().unwrap());
        req
    };

    // The events SSE stream, read in the background for the whole test.
    let sse_req = keyed(
        http::Request::get(format!("{}/_marathon/events", w.proxy.url()))
            .body(Default::default())
            .unwrap(),
    );
    let sse = w.client.request(sse_req).await.unwrap();
    let sse_text = Arc::new(Mutex::new(String::new()));
    let sse_task = {
        let text = sse_text.clone();
        let mut body = sse.into_body();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(d) = frame.into_data() {
                    text.lock().unwrap().push_str(&String::from_utf8_lossy(&d));
                }
            }
        })
    };

    // 429 → 401 (needs login) → 529 retried on a3 → 200.
    let r = send(&w.client, keyed(w.request(false))).await;
    assert_eq!((r.status, r.account()), (200, Some("a3")), "{}", r.dump());
    seen.push_str(&r.dump());
    // A stream, then a stream broken by a mid-stream rate limit.
    let r = send(&w.client, keyed(w.request(true))).await;
    assert_eq!(r.status, 200);
    seen.push_str(&r.dump());
    w.sim
        .set_account(acct("a3").stream_error_after(3, StreamErrorKind::RateLimit))
        .unwrap();
    let r = send(&w.client, keyed(w.request(true))).await;
    assert!(r.text().contains("event: error"));
    seen.push_str(&r.dump());
    // Connection resets on the last usable account: transport failures, then
    // a 502 (the upstream's fault, not "all accounts unavailable").
    w.sim.set_account(acct("a4").reset()).unwrap();
    let r = send(&w.client, keyed(w.request(false))).await;
    assert_eq!(r.status, 502, "{}", r.dump());
    seen.push_str(&r.dump());
    // Two transport failures in a row benched a4 briefly: now every account
    // is unavailable, and the answer is the exhausted 429.
    let r = send(&w.client, keyed(w.request(false))).await;
    assert_eq!(r.status, 429, "{}", r.dump());
    seen.push_str(&r.dump());
    // Refused without the access key; unknown provider; request error passed through.
    let r = w.call().await;
    assert_eq!(r.status, 401);
    seen.push_str(&r.dump());
    let bad = keyed(
        http::Request::post(format!("{}/nope/v1/messages", w.proxy.url()))
            .body(Default::default())
            .unwrap(),
    );
    seen.push_str(&send(&w.client, bad).await.dump());
    for path in ["status", "metrics", "health", "dashboard", "unknown"] {
        let req = keyed(
            http::Request::get(format!("{}/_marathon/{path}", w.proxy.url()))
                .body(Default::default())
                .unwrap(),
        );
        let r = send(&w.client, req).await;
        seen.push_str(&r.dump());
    }
    seen.push_str(&w.proxy.status().to_string());

    let evs = drain_events(&mut events, Duration::from_millis(300)).await;
    let evs = evs.join("\n");
    for kind in ["failover", "cooldown", "needs_login", "exhausted"] {
        assert!(
            evs.contains(&format!("\"type\":\"{kind}\"")),
            "no {kind} event in {evs}"
        );
    }
    seen.push_str(&evs);
    sse_task.abort();
    let sse_text = sse_text.lock().unwrap().clone();
    assert!(sse_text.contains("\"type\":\"failover\""), "{sse_text}");
    seen.push_str(&sse_text);

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    // The capture works: request lines and events with labels are there.
    assert!(
        logs.contains("marathon::request") && logs.contains("a1") && logs.contains("needs"),
        "{logs}"
    );
    seen.push_str(&logs);
    let mut settings = test_settings("http://127.0.0.1:9");
    settings.access_keys = vec![Secret::new(ACCESS)];
    seen.push_str(&format!("{settings:?}"));

    for secret in &secrets {
        // Also a distinctive part, in case something truncates or re-encodes.
        let tail = &secret[secret.len() - 12..];
        assert!(
            !seen.contains(secret.as_str()) && !seen.contains(tail),
            "secret {tail:?} leaked:\n{seen}"
        );
    }
}
