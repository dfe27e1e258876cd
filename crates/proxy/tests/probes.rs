//! Connectivity probes never spend or judge an account (issue 11, item 3).
//!
//! Claude Code sends a credential-less `HEAD {base}` / `HEAD {base}/api/hello`
//! before its first request; uptime checkers send `HEAD` or a bare `GET` of the
//! base URL. Forwarded, such a probe went upstream with an account's key and
//! its answer was judged: a 401 marked an API-key account as needing a login,
//! a 429 cooled one, and every probe counted as traffic. These tests send
//! probes through the real proxy (sockets on 127.0.0.1) and check that
//! nothing about any account moved and nothing reached the upstream.

mod support;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use marathon_core::Secret;
use marathon_sim::{Account, Scenario};
use serde_json::Value;
use support::*;

/// Every probe form, as (method, path under the proxy).
const PROBES: &[(Method, &str)] = &[
    (Method::HEAD, "/"),
    (Method::HEAD, "/anthropic"),
    (Method::HEAD, "/anthropic/"),
    (Method::HEAD, "/anthropic/api/hello"),
    (Method::HEAD, "/anthropic/v1/messages"),
    (Method::GET, "/"),
    (Method::GET, "/anthropic"),
    (Method::GET, "/anthropic/api/hello"),
];

async fn probe(w: &World, method: &Method, path: &str) -> Resp {
    let req = Request::builder()
        .method(method.clone())
        .uri(format!("{}{path}", w.proxy.url()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(&w.client, req).await
}

/// The status page without what follows the clock (`now`, and a ready
/// pool's `soonest_ready`, which is `now`).
async fn accounts_state(w: &World) -> Value {
    let mut s = w.status().await;
    s.as_object_mut().unwrap().remove("now");
    for p in s["providers"].as_array_mut().unwrap() {
        p.as_object_mut().unwrap().remove("soonest_ready");
    }
    s
}

/// Guards the warm-up probe being forwarded with an account's key: the
/// account's counters, health and last use, the proxy's metrics and the
/// simulator's per-account request counts must all be exactly as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_leave_account_state_and_counters_unchanged() {
    let w = world(Scenario::new([
        Account::ok("alice", "sk-test-alice-0123456789"),
        Account::ok("bob", "sk-test-bob-9876543210"),
    ]))
    .await;
    // Real traffic first, so the counters being compared are not all zero.
    assert_eq!(w.call().await.status, 200);
    let (state, metrics, counts) = (accounts_state(&w).await, w.metrics().await, w.sim.counts());

    for (method, path) in PROBES {
        let r = probe(&w, method, path).await;
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        assert!(r.body.is_empty(), "{method} {path}: {}", r.text());
        assert_eq!(r.account(), None, "{method} {path} was given an account");
    }

    assert_eq!(accounts_state(&w).await, state, "account state moved");
    assert_eq!(w.metrics().await, metrics, "metrics moved");
    assert_eq!(w.sim.counts(), counts, "the simulator saw account traffic");
}

/// Guards a probe reaching the provider at all: an upstream that records every
/// request sees none, while a real request still goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_probe_reaches_the_upstream() {
    let echo = Echo::start().await;
    let store = std::sync::Arc::new(marathon_store::MemoryStore::new());
    marathon_store::Store::add(
        &*store,
        marathon_store::NewAccount::api_key(
            "anthropic",
            Some("alice".into()),
            Secret::new("sk-test-alice-0123456789"),
        ),
    )
    .unwrap();
    let proxy = marathon_proxy::start(
        test_settings(&echo.url()),
        marathon_proxy::StartOptions::new(store),
    )
    .await
    .unwrap();
    let client = http_client();
    for (method, path) in PROBES {
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", proxy.url()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(&client, req).await.status, 200, "{method} {path}");
    }
    assert!(
        echo.seen.lock().unwrap().is_empty(),
        "a probe went upstream"
    );

    // Not probes: a provider endpoint, and a GET that carries a body.
    let models = get(&client, &format!("{}/anthropic/v1/models", proxy.url())).await;
    assert_eq!(models.status, 200, "{}", models.text());
    let with_body = Request::get(format!("{}/anthropic", proxy.url()))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    send(&client, with_body).await;
    assert_eq!(echo.seen.lock().unwrap().len(), 2);
}

/// With access keys set, a credential-less probe is still answered (it holds
/// nothing and touches nothing), while everything else still needs the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_needs_no_access_key_but_traffic_still_does() {
    let w = world_with(
        Scenario::new([Account::ok("alice", "sk-test-alice-0123456789")]),
        Opts::new(Api::Anthropic).settings(|s| {
            s.access_keys = vec![marathon_proxy::AccessKey::new(
                "team",
                Secret::new("team-access-key-123456"),
            )]
        }),
    )
    .await;
    assert_eq!(probe(&w, &Method::HEAD, "/anthropic").await.status, 200);
    assert_eq!(probe(&w, &Method::GET, "/").await.status, 200);
    let models = get(&w.client, &w.url("/v1/models")).await;
    assert_eq!(models.status, 401, "{}", models.text());
    // An unknown route is no probe: it stays a 404 (behind the key).
    assert_ne!(probe(&w, &Method::HEAD, "/nope").await.status, 200);
    assert_eq!(w.sim.counts().values().sum::<u64>(), 0);
}
