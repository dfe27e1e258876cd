//! Load through the proxy while half the accounts are rate-limited: nothing
//! fails, and the limited accounts are left alone once benched.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use marathon_sim::{Account, QuotaStyle, Scenario};
use support::*;

const REQUESTS: usize = 5_000;
const CONCURRENCY: usize = 64;

fn acct(name: &str) -> Account {
    Account::ok(name, format!("sk-test-{name}-0123456789abcdef"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_requests_at_64_while_half_the_accounts_are_limited() {
    // a1 and a2 are out of quota for the whole test (every request is a 429
    // whose reset is a minute away); a3 and a4 are healthy.
    let limited = |name| acct(name).quota(0, Duration::from_secs(60), QuotaStyle::AnthropicApi);
    let w = Arc::new(
        world(Scenario::new([limited("a1"), limited("a2"), acct("a3"), acct("a4")]).fast()).await,
    );

    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (w, next) = (w.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < REQUESTS {
                let r = w.call().await;
                if r.status != 200 {
                    failed.push(format!("{} [{}] {}", r.status, r.attempts(), r.text()));
                }
            }
            failed
        }));
    }
    let mut failed = Vec::new();
    for t in tasks {
        failed.extend(t.await.unwrap());
    }
    assert!(
        failed.is_empty(),
        "{} of {REQUESTS} failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );

    let counts = w.sim.counts();
    let count = |n: &str| counts.get(n).copied().unwrap_or(0) as usize;
    // Every request was served exactly once by a healthy account.
    assert_eq!(count("a3") + count("a4"), REQUESTS, "{counts:?}");
    // A request tries an account at most once, and a limited account is only
    // picked until its first 429 benches it (for a minute): so only requests
    // already in flight at that moment — at most CONCURRENCY — ever reached it.
    for label in ["a1", "a2"] {
        let n = count(label);
        assert!(
            (1..=CONCURRENCY).contains(&n),
            "{label} was asked {n} times: {counts:?}"
        );
        assert_eq!(w.health(label).await, "cooling");
    }
    for label in ["a3", "a4"] {
        assert_eq!(w.health(label).await, "ready");
    }
}

/// The same situation made deterministic: the limited accounts answer slowly,
/// so all 64 requests reach a1, then all 64 reach a2, before either is
/// benched — 128 rotations at once. Every request can still be served by a3
/// or a4, yet the retry budget (tower defaults: 10/s reserve + 20 % of
/// requests) refuses the rotations past ~113 and the sim's 429 is passed to
/// the client. `marathon_core::decision::decide` charges rotations away from a
/// benched account to the budget; they are bounded by the exclude list and
/// the bench itself, so they cannot storm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_onto_two_limited_accounts_still_fails_nothing() {
    let limited = |name| {
        acct(name)
            .quota(0, Duration::from_secs(60), QuotaStyle::AnthropicApi)
            .slow_ms(200)
    };
    let w = Arc::new(
        world(Scenario::new([limited("a1"), limited("a2"), acct("a3"), acct("a4")]).fast()).await,
    );
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let r = w.call().await;
            (r.status, r.attempts().to_owned())
        }));
    }
    let mut failed = Vec::new();
    for t in tasks {
        let (status, attempts) = t.await.unwrap();
        if status != 200 {
            failed.push(format!("{status} [{attempts}]"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}; counts {:?}",
        failed.len(),
        &failed[..failed.len().min(3)],
        w.sim.counts()
    );
}
