//! Named access keys: each key authorises clients on its own, and what each
//! key used shows in status and metrics under its name, never the key.

mod support;

use marathon_core::Secret;
use marathon_proxy::AccessKey;
use marathon_sim::{Account, Scenario};
use support::*;

const ALICE: &str = "mk-alice-0d41c9e27b";
const CI: &str = "mk-ci-bot-93aa01f6c2";

async fn two_keys() -> World {
    world_with(
        Scenario::new([Account::ok("a1", "sk-test-a1-0123456789abcdef")]),
        Opts::new(Api::Anthropic).settings(|s| {
            s.access_keys = vec![
                AccessKey::new("alice", Secret::new(ALICE)),
                AccessKey::new("ci-bot", Secret::new(CI)),
            ]
        }),
    )
    .await
}

async fn call_with(w: &World, header: &str, value: &str) -> Resp {
    let mut req = w.request(false);
    req.headers_mut().insert(
        http::HeaderName::from_bytes(header.as_bytes()).unwrap(),
        value.parse().unwrap(),
    );
    send(&w.client, req).await
}

async fn with_key(w: &World, path: &str, key: &str) -> Resp {
    let req = http::Request::get(format!("{}{path}", w.proxy.url()))
        .header("x-marathon-key", key)
        .body(Default::default())
        .unwrap();
    send(&w.client, req).await
}

/// Guards: per-key accounting (who used what, requests and tokens) counting the wrong key, counting
/// refused requests, or showing the key itself where the name belongs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_named_key_is_let_in_and_counted_under_its_name() {
    let w = two_keys().await;
    for _ in 0..3 {
        let r = call_with(&w, "x-api-key", ALICE).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = call_with(&w, "authorization", &format!("Bearer {CI}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A wrong key is refused and counted nowhere.
    assert_eq!(
        call_with(&w, "x-marathon-key", "mk-wrong").await.status,
        401
    );
    assert_eq!(w.sim.count("a1"), 4);

    // Status (either key opens it) and metrics: names and counts.
    let status = with_key(&w, "/_marathon/status", CI).await;
    assert_eq!(status.status, 200);
    let keys = status.json()["access_keys"].clone();
    assert_eq!(keys[0]["name"], "alice");
    assert_eq!(keys[0]["requests"], 3);
    assert_eq!(keys[1]["name"], "ci-bot");
    assert_eq!(keys[1]["requests"], 1);
    // Token accounting: the same request three times is three times the
    // tokens of one, under the key that sent it.
    let tokens = |k: &serde_json::Value, kind: &str| k[kind].as_u64().unwrap();
    for kind in ["input_tokens", "output_tokens"] {
        assert!(tokens(&keys[1], kind) > 0, "{keys}");
        assert_eq!(tokens(&keys[0], kind), 3 * tokens(&keys[1], kind), "{keys}");
    }
    let metrics = with_key(&w, "/_marathon/metrics", ALICE).await.text();
    assert!(
        metrics.contains("marathon_access_key_requests_total{key=\"alice\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("marathon_access_key_requests_total{key=\"ci-bot\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("marathon_access_key_tokens_total{key=\"alice\",kind=\"output\"}"));
    // Reading status and metrics is not a provider request.
    let again = with_key(&w, "/_marathon/status", CI).await.json();
    assert_eq!(again["access_keys"][1]["requests"], 1);
    for text in [status.text(), metrics] {
        assert!(!text.contains(ALICE) && !text.contains(CI), "{text}");
    }
}
