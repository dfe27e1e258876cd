//! No secret leaves the proxy except upstream, in the account's own request:
//! every log line (tracing at TRACE, captured), every event, the status,
//! metrics, events and dashboard endpoints and every response header and
//! body are searched for every account key and the access key.
//!
//! Its own test binary, because it installs the process-wide tracing
//! subscriber.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
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

/// The process-wide TRACE log, captured (installed once per process: under
/// `cargo test` both tests share it).
fn capture_logs() -> Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .init();
        logs
    })
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_events_endpoints_or_responses() {
    let logs = capture_logs();

    let w = world_with(
        Scenario::new([
            acct("a1").quota(0, Duration::from_secs(30), QuotaStyle::AnthropicUnified),
            acct("a2").expired(),
            acct("a3").status(529).fail_first(1),
            acct("a4"),
        ]),
        Opts::new(Api::Anthropic).settings(|s| {
            s.access_keys = vec![marathon_proxy::AccessKey::new("test", Secret::new(ACCESS))]
        }),
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
    for path in [
        "status",
        "metrics",
        "health",
        "dashboard",
        "unknown",
        "events/recent",
        "activity",
        "session",
    ] {
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
    settings.access_keys = vec![marathon_proxy::AccessKey::new("test", Secret::new(ACCESS))];
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

// Guards: an upstream that echoes the key it received (and every other
// secret it was told, as a gateway that saw them all could) in its status
// line, headers (`x-error`, reset and usage headers, one named after the
// key), JSON error fields, and stream error events — here with the first
// event not peeked, so even a first-event error streams through to the
// client and is classified on the way. On main the echoed key became the
// reason of cooldowns, failovers and needs-login (events, log lines, the
// status view, the exhausted answer), and every passed-through answer
// carried it to the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_echoing_keys_gets_them_nowhere() {
    use marathon_core::Strategy;
    use marathon_store::{MemoryStore, NewAccount, Store};
    use marathon_testkit::echo::{EchoingUpstream, ID_HEADER, SCRIPT_HEADER};

    let logs = capture_logs();
    // `words` fits the reason vocabulary: only the known-secrets check stops it.
    let keys = [
        ("e1", "sk-ant-api03-SECRET-echo-e1-Zq81xYw"),
        ("e2", "plain-words-SECRET-account-two"),
        ("e3", "sk-ant-api03-SECRET-echo-e3-Mm02kLp"),
        ("e4", "sk-ant-api03-SECRET-echo-e4-Qt55rWz"),
    ];
    let mut secrets: Vec<String> = keys.iter().map(|(_, k)| k.to_string()).collect();
    secrets.push(ACCESS.to_owned());
    let upstream = EchoingUpstream::start(secrets.clone()).await;
    let store = Arc::new(MemoryStore::new());
    for (i, (label, key)) in keys.iter().enumerate() {
        let mut a = NewAccount::api_key("anthropic", Some(label.to_string()), Secret::new(*key));
        a.priority = i as i32;
        store.add(a).unwrap();
    }
    let mut settings = test_settings(&upstream.url());
    settings.access_keys = vec![marathon_proxy::AccessKey::new("test", Secret::new(ACCESS))];
    settings.peek_first_event = false;
    settings.provider_mut("anthropic").unwrap().pool.strategy = Strategy::Priority;
    let proxy = marathon_proxy::start(settings, marathon_proxy::StartOptions::new(store))
        .await
        .unwrap();
    let mut events = proxy.subscribe_events();
    let client = http_client();
    let mut seen = String::new();
    let mut statuses = Vec::new();
    for (i, script) in [
        "ok",
        "400",
        "sse-first",
        "sse-mid",
        "503,ok",
        "401,ok",
        "429",
    ]
    .into_iter()
    .enumerate()
    {
        let req = http::Request::post(format!("{}/anthropic/v1/messages", proxy.url()))
            .header("x-marathon-key", ACCESS)
            .header("content-type", "application/json")
            .header(SCRIPT_HEADER, script)
            .header(ID_HEADER, format!("p{i}"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"model":"m","max_tokens":5,"messages":[]}"#,
            )))
            .unwrap();
        let r = send(&client, req).await;
        statuses.push((script, r.status));
        seen.push_str(&r.dump());
    }
    // Two streams benched e1 and e2, a 401 sent e3 to log in again, and
    // the last 429 found every account out: marathon's own answer.
    assert_eq!(statuses.last().unwrap().1, 429, "{statuses:?}\n{seen}");
    assert!(seen.contains("accounts are unavailable"), "{seen}");
    let modes: Vec<String> = upstream.served().into_iter().map(|(m, _)| m).collect();
    for mode in ["ok", "400", "sse-first", "sse-mid", "503", "401", "429"] {
        assert!(
            modes.iter().any(|m| m == mode),
            "no {mode} served: {modes:?}"
        );
    }
    for path in ["status", "metrics", "events/recent", "activity"] {
        let req = http::Request::get(format!("{}/_marathon/{path}", proxy.url()))
            .header("x-marathon-key", ACCESS)
            .body(Default::default())
            .unwrap();
        seen.push_str(&send(&client, req).await.dump());
    }
    seen.push_str(&proxy.status().to_string());
    let evs = drain_events(&mut events, Duration::from_millis(300))
        .await
        .join("\n");
    for kind in ["cooldown", "needs_login", "failover", "exhausted"] {
        assert!(
            evs.contains(&format!("\"type\":\"{kind}\"")),
            "no {kind} in {evs}"
        );
    }
    seen.push_str(&evs);
    seen.push_str(&String::from_utf8_lossy(&logs.0.lock().unwrap()));

    let folded = seen.to_ascii_lowercase();
    for secret in &secrets {
        let tail = &secret[secret.len() - 12..];
        let at = folded
            .find(&secret.to_ascii_lowercase())
            .or_else(|| seen.find(tail));
        if let Some(at) = at {
            let from = seen.floor_char_boundary(at.saturating_sub(400));
            panic!("secret {tail:?} leaked ({statuses:?}):\n{}", &seen[from..]);
        }
    }
}
