//! `serve --workers N`: N event loops, each with its own SO_REUSEPORT
//! listener on the one address, sharing pools and credentials.

mod support;

use std::sync::Arc;

use http_body_util::Full;
use marathon_core::Secret;
use marathon_proxy::StartOptions;
use marathon_sim::{Account, Scenario};
use marathon_store::{MemoryStore, NewAccount, Store};
use support::*;

/// Listening sockets on `port` (this network namespace's /proc/net/tcp).
fn listeners_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols[1].ends_with(&local) && cols[3] == "0A"
        })
        .count()
}

fn worker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|name| name.starts_with("marathon-worke"))
        .count()
}

/// Guards: extra workers that do not listen (no scaling), that listen on a
/// port of their own, that keep their own pool (an account's counters and
/// cooldowns would split per worker), or that outlive shutdown.
#[tokio::test(flavor = "current_thread")]
async fn workers_listen_on_one_port_and_share_one_pool() {
    let sim = marathon_sim::start(Scenario::new([Account::ok(
        "a1",
        "sk-test-a1-0123456789abcdef",
    )]))
    .await
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    store
        .add(NewAccount::api_key(
            "anthropic",
            Some("a1".into()),
            Secret::new("sk-test-a1-0123456789abcdef"),
        ))
        .unwrap();
    let mut opts = StartOptions::new(store);
    opts.workers = 3;
    let proxy = marathon_proxy::start(test_settings(&sim.url()), opts)
        .await
        .unwrap();
    assert_eq!(listeners_on(proxy.local_addr().port()), 3);
    assert_eq!(worker_threads(), 2, "the caller's runtime is worker 0");

    // A new connection per request: the kernel spreads them over the three
    // listeners, and only a worker accepts on its own listener, so 60
    // successes mean every worker served (a silent one would leave its
    // share unanswered).
    let url = format!("{}/anthropic{}", proxy.url(), Api::Anthropic.path());
    let body = Api::Anthropic.body(false).to_string();
    let mut tasks = Vec::new();
    for _ in 0..60 {
        let req = http::Request::post(&url)
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .header("connection", "close")
            .body(Full::new(bytes::Bytes::from(body.clone())))
            .unwrap();
        tasks.push(tokio::spawn(async move {
            send(&http_client(), req).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(sim.count("a1"), 60);
    let status = proxy.status();
    let a1 = &status["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "anthropic")
        .unwrap()["accounts"][0];
    assert_eq!(a1["successes"], 60, "one pool for every worker: {a1}");

    proxy.shutdown(std::time::Duration::from_secs(5)).await;
    assert_eq!(worker_threads(), 0, "workers stop with the proxy");
}
