//! Session affinity out of the box: the session headers Claude Code, Codex
//! and opencode send keep a conversation on one account while a spreading
//! strategy moves everything else around. Real sockets, marathon-sim upstream.

mod support;

use std::collections::BTreeSet;

use marathon_core::strategy::Strategy;
use marathon_sim::{Account, Scenario};
use support::*;

fn accounts() -> Scenario {
    Scenario::new(
        ["s1", "s2", "s3"].map(|n| Account::ok(n, format!("sk-test-{n}-0123456789abcdef"))),
    )
}

async fn round_robin(
    configure: impl FnOnce(&mut marathon_proxy::ProxySettings) + Send + 'static,
) -> World {
    world_with(
        accounts(),
        Opts::new(Api::Anthropic).settings(|s| {
            s.provider_mut("anthropic").unwrap().pool.strategy = Strategy::RoundRobin;
            configure(s);
        }),
    )
    .await
}

/// The accounts that served `n` requests carrying `header: value` (no header
/// when `header` is empty).
async fn served(w: &World, header: &str, value: &str, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let mut req = w.request(false);
        if !header.is_empty() {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(header.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let r = send(&w.client, req).await;
        assert_eq!(r.status, 200, "{}", r.text());
        seen.insert(r.account().unwrap().to_owned());
    }
    seen
}

/// Guards the default config losing a client's session header: without it,
/// round-robin moves a Claude Code / Codex / opencode conversation to another
/// account on every turn and its prompt cache goes cold each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_clients_session_header_keeps_its_conversation_on_one_account() {
    let w = round_robin(|_| {}).await;
    // The strategy spreads requests that name no session.
    assert_eq!(served(&w, "", "", 6).await.len(), 3);
    for (header, session) in [
        ("x-claude-code-session-id", "0f4c2b8e-claude"),
        ("session-id", "0199aa-codex"),
        ("x-session-id", "ses_opencode"),
    ] {
        let on = served(&w, header, session, 6).await;
        assert_eq!(on.len(), 1, "{header}: conversation spread over {on:?}");
    }
}

/// `session_headers = []` turns affinity off (the strategy alone decides).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_list_turns_affinity_off() {
    let w = round_robin(|s| s.provider_mut("anthropic").unwrap().session_headers.clear()).await;
    let on = served(&w, "x-claude-code-session-id", "one-conversation", 6).await;
    assert_eq!(on.len(), 3, "{on:?}");
}
