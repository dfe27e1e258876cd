//! Subscription usage (issue 13), end to end on real sockets with
//! marathon-sim as the provider: the poller fills the windows of accounts
//! that served no traffic, waits out a throttled usage endpoint, polls each
//! account once per interval across processes; the `headroom` strategy moves
//! sessions at most once per crossing; the forecast of a steady burn is
//! right to within 10 %.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marathon_core::strategy::Strategy;
use marathon_core::{ManualClock, UnixMillis};
use marathon_sim::{Account, QuotaStyle, Scenario};
use marathon_store::{Credential, FileStore, NewAccount, Store};
use serde_json::Value;
use support::*;

const FIVE_HOURS: Duration = Duration::from_secs(5 * 3600);

fn subscriptions(names: &[&'static str], quota: u64) -> Scenario {
    Scenario::new(names.iter().map(|n| {
        Account::ok(*n, format!("oauth-{n}-0123456789")).quota(
            quota,
            FIVE_HOURS,
            QuotaStyle::AnthropicUnified,
        )
    }))
}

fn polling(every: Duration) -> impl FnOnce(&mut marathon_proxy::ProxySettings) + Send + 'static {
    move |s| {
        let fresh = marathon_proxy::ProxySettings::from_config(&marathon_config::Config::default())
            .unwrap();
        let mut usage = fresh
            .providers
            .iter()
            .find(|p| p.name == "anthropic")
            .unwrap()
            .usage
            .clone();
        if let Some(u) = usage.as_mut() {
            u.interval = every;
        }
        s.provider_mut("anthropic").unwrap().usage = usage;
    }
}

fn window<'a>(account: &'a Value, name: &str) -> Option<&'a Value> {
    account["windows"]
        .as_array()?
        .iter()
        .find(|w| w["name"] == name)
}

/// Waits (up to 10 s) until `done` holds for the proxy's status.
async fn until_status(w: &World, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let s = w.status().await;
        if done(&s) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never: {what}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn accounts(status: &Value, provider: &str) -> Vec<Value> {
    status["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == provider)
        .unwrap()["accounts"]
        .as_array()
        .unwrap()
        .clone()
}

/// Guards the gap of issue 13: windows were learnt only from traffic, so an
/// idle account showed nothing. The poller reads them with each account's
/// own token, and a poll is not a generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_fills_the_windows_of_accounts_that_served_no_traffic() {
    let scenario = subscriptions(&["a", "b", "c"], 100);
    let w = world_with(
        scenario,
        Opts::new(Api::Anthropic)
            .oauth("a", "oauth-a-0123456789")
            .oauth("b", "oauth-b-0123456789")
            .oauth("c", "oauth-c-0123456789")
            .settings(polling(Duration::from_millis(200))),
    )
    .await;
    // b spent 20 of its 100 elsewhere (another machine, say).
    for _ in 0..20 {
        assert_eq!(w.direct("oauth-b-0123456789", false).await.status, 200);
    }
    let s = until_status(&w, "b's 5h window at 20 %", |s| {
        accounts(s, "anthropic")
            .iter()
            .all(|a| window(a, "5h").is_some())
            && accounts(s, "anthropic")
                .iter()
                .any(|a| a["label"] == "b" && window(a, "5h").unwrap()["utilization"] == 0.2)
    })
    .await;
    for a in accounts(&s, "anthropic") {
        let five = window(&a, "5h").unwrap();
        assert!(five["resets_at"].is_u64(), "{a}");
        assert!(window(&a, "7d").is_some(), "{a}");
    }
    // Through the proxy: nothing. Directly: b's 20.
    assert_eq!(w.sim.count("a") + w.sim.count("c"), 0);
    assert_eq!(w.sim.count("b"), 20);
    let calls = w.sim.usage_calls();
    assert!(
        ["a", "b", "c"].iter().all(|n| calls.by_account[*n] >= 1),
        "{calls:?}"
    );
    let metrics = w.metrics().await;
    assert!(metrics.contains("marathon_usage_polls_total{provider=\"anthropic\"}"));
    // Per-account gauges (issue 13): state, cooldown, window utilisation.
    for line in [
        "marathon_account_window_utilization{provider=\"anthropic\",account=\"b\",window=\"5h\"} 0.2",
        "marathon_account_state{provider=\"anthropic\",account=\"a\",state=\"ready\"} 1",
        "marathon_account_state{provider=\"anthropic\",account=\"a\",state=\"cooling\"} 0",
        "marathon_account_cooldown_seconds{provider=\"anthropic\",account=\"c\"} 0",
        "marathon_account_window_resets_in_seconds{provider=\"anthropic\",account=\"a\",window=\"7d\"}",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
}

/// Guards hammering a throttled endpoint: after a 429 with `retry-after:
/// 60`, no account is polled again for a minute although the interval is
/// 50 ms (counted by the simulator).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_usage_endpoint_is_backed_off() {
    let scenario = subscriptions(&["a", "b"], 100);
    let sim_throttled = |w: &World| w.sim.throttle_usage(Some(60));
    let w = world_with(
        scenario,
        Opts::new(Api::Anthropic)
            .oauth("a", "oauth-a-0123456789")
            .oauth("b", "oauth-b-0123456789")
            .settings(|s| {
                s.provider_mut("anthropic").unwrap().usage = None;
            }),
    )
    .await;
    sim_throttled(&w);
    // A second proxy on the same simulator, polling every 50 ms.
    let store = w.store.clone();
    let mut settings = test_settings(&w.sim.url());
    polling(Duration::from_millis(50))(&mut settings);
    let proxy = marathon_proxy::start(settings, marathon_proxy::StartOptions::new(store))
        .await
        .unwrap();
    let start = Instant::now();
    while w.sim.usage_calls().throttled < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "no polls");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Twenty intervals later: still one call per account.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let calls = w.sim.usage_calls();
    assert_eq!((calls.total, calls.throttled), (2, 2), "{calls:?}");
    assert_eq!((calls.by_account["a"], calls.by_account["b"]), (1, 1));
    let metrics = get(&w.client, &format!("{}/_marathon/metrics", proxy.url())).await;
    assert!(
        metrics
            .text()
            .contains("marathon_usage_polls_throttled_total{provider=\"anthropic\"} 2"),
        "{}",
        metrics.text()
    );
    proxy.shutdown(Duration::from_secs(1)).await;
}

/// Guards two processes each polling every account: two proxies over one
/// file store poll each account once per interval between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_on_one_store_poll_each_account_once_per_interval() {
    let sim = marathon_sim::start(subscriptions(&["a", "b"], 100))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FileStore::open(dir.path()).unwrap();
        for n in ["a", "b"] {
            let mut acc = NewAccount::api_key(
                "anthropic",
                Some(n.into()),
                marathon_core::Secret::new(format!("oauth-{n}-0123456789")),
            );
            acc.kind = marathon_core::AccountKind::Oauth;
            acc.credential = Credential::Oauth {
                access: marathon_core::Secret::new(format!("oauth-{n}-0123456789")),
                refresh: Some(marathon_core::Secret::new(format!("rt-{n}"))),
                expires_at: None,
                id_token: None,
                scopes: Vec::new(),
            };
            store.add(acc).unwrap();
        }
    }
    let mut proxies = Vec::new();
    for _ in 0..2 {
        let store: Arc<dyn Store> = Arc::new(FileStore::open(dir.path()).unwrap());
        let mut settings = test_settings(&sim.url());
        polling(Duration::from_secs(60))(&mut settings);
        proxies.push(
            marathon_proxy::start(settings, marathon_proxy::StartOptions::new(store))
                .await
                .unwrap(),
        );
    }
    let start = Instant::now();
    while sim.usage_calls().total < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "no polls");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = sim.usage_calls();
    assert_eq!(calls.total, 2, "{calls:?}");
    for p in proxies {
        p.shutdown(Duration::from_secs(1)).await;
    }
}

/// The bar: 1,000 requests over 3 accounts from 7 sessions. Each
/// session stays on its account until that account's forecast crosses the
/// threshold, then moves once; it never returns to an account it left
/// (no ping-pong), and nobody runs into a wall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headroom_moves_each_session_at_most_once_per_crossing() {
    let w = world_with(
        subscriptions(&["a", "b", "c"], 400),
        Opts::new(Api::Anthropic).settings(|s| {
            s.provider_mut("anthropic").unwrap().pool.strategy = Strategy::Headroom;
        }),
    )
    .await;
    let mut home: HashMap<u32, String> = HashMap::new();
    let mut left: HashMap<u32, Vec<String>> = HashMap::new();
    for n in 0..1_000u32 {
        let session = n % 7;
        let mut req = w.request(false);
        req.headers_mut().insert(
            "x-claude-code-session-id",
            format!("conversation-{session}").parse().unwrap(),
        );
        let r = send(&w.client, req).await;
        assert_eq!(r.status, 200, "request {n}: {}", r.text());
        let account = r.account().unwrap().to_owned();
        if let Some(prev) = home.insert(session, account.clone())
            && prev != account
        {
            let gone = left.entry(session).or_default();
            assert!(
                !gone.contains(&account),
                "session {session} went back to {account}"
            );
            gone.push(prev);
        }
    }
    for (session, gone) in &left {
        assert!(
            gone.len() <= 2,
            "session {session} moved {} times",
            gone.len()
        );
    }
    assert!(!left.is_empty(), "sessions moved as accounts filled up");
    let counts = w.sim.counts();
    assert!(counts.values().all(|c| *c < 400), "{counts:?}");
    assert_eq!(counts.values().sum::<u64>(), 1_000);
}

/// A steady burn of 2 requests a (virtual) minute on a 100-request window,
/// observed for 20 minutes: the proxy's forecast says the window runs out
/// 30 minutes later, within 10 % of the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forecast_of_a_steady_burn_is_within_ten_percent() {
    let clock = Arc::new(ManualClock::new(UnixMillis(now_ms())));
    let t0 = UnixMillis(now_ms());
    let sim = marathon_sim::start(subscriptions(&["a"], 100))
        .await
        .unwrap();
    let store = Arc::new(marathon_store::MemoryStore::new());
    store
        .add(NewAccount::api_key(
            "anthropic",
            Some("a".into()),
            marathon_core::Secret::new("oauth-a-0123456789"),
        ))
        .unwrap();
    let mut opts = marathon_proxy::StartOptions::new(store);
    opts.clock = clock.clone();
    let proxy = marathon_proxy::start(test_settings(&sim.url()), opts)
        .await
        .unwrap();
    let client = http_client();
    let body = Api::Anthropic.body(false).to_string();
    for minute in 0..=20 {
        for _ in 0..2 {
            let mut req = http::Request::post(format!("{}/anthropic/v1/messages", proxy.url()))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
                .unwrap();
            req.headers_mut()
                .insert("anthropic-version", "2023-06-01".parse().unwrap());
            assert_eq!(send(&client, req).await.status, 200);
        }
        if minute < 20 {
            clock.advance(Duration::from_secs(60));
        }
    }
    // 42 of 100 used at t0+20 min at 2/min: the real wall is at t0+49 min.
    let actual = t0.plus(Duration::from_secs(49 * 60)).0 as f64;
    let status = serde_json::to_value(proxy.status()).unwrap();
    let a = &accounts(&status, "anthropic")[0];
    let f = window(a, "5h").unwrap_or_else(|| panic!("a 5h window: {a}"));
    let predicted = f["runs_out_at"].as_u64().unwrap_or_else(|| panic!("{f}")) as f64;
    let span = actual - t0.0 as f64;
    assert!(
        (predicted - actual).abs() <= 0.10 * span,
        "predicted {:.1} min, actual 49 min",
        (predicted - t0.0 as f64) / 60_000.0
    );
    assert!(f["burn_per_hour"].as_f64().unwrap() > 1.0, "{f}");
    let cap = status["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "anthropic")
        .unwrap()["capacity_until"]
        .as_u64()
        .expect("a provider capacity");
    assert!((cap as f64 - actual).abs() <= 0.10 * span, "capacity {cap}");
    let metrics = get(&client, &format!("{}/_marathon/metrics", proxy.url()))
        .await
        .text();
    for name in [
        "marathon_account_window_runs_out_in_seconds{provider=\"anthropic\",account=\"a\",window=\"5h\"}",
        "marathon_provider_capacity_seconds{provider=\"anthropic\"}",
    ] {
        assert!(metrics.contains(name), "{name} in:\n{metrics}");
    }
    proxy.shutdown(Duration::from_secs(1)).await;
}

/// Guards issue 13's invisible routine refreshes: a refresh reported through
/// the feed counts in `marathon_refreshes_total` and goes out as a
/// `refreshed` event naming the account's label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routine_refresh_is_counted_and_announced_by_label() {
    let w = world_with(
        subscriptions(&["work"], 100),
        Opts::new(Api::Anthropic).oauth("work", "oauth-work-0123456789"),
    )
    .await;
    let mut events = w.proxy.subscribe_events();
    let id = w.store.find("anthropic", "work").unwrap().unwrap().id;
    let feed = w.proxy.refresh_feed();
    for _ in 0..3 {
        feed.refreshed(&id);
    }
    let ev = next_event(&mut events, "refreshed").await;
    assert_eq!(ev["account"], "work", "{ev}");
    assert!(
        w.metrics()
            .await
            .contains("marathon_refreshes_total{provider=\"anthropic\"} 3")
    );
}
