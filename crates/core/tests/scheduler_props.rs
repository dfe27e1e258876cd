//! Property tests for the scheduler's invariants and the retry decision.
//!
//! Random sequences of picks, outcomes, releases, logins, enable/disable and
//! clock moves are run against a pool; after every step the pool's answers are
//! checked against what its own status said just before. Time is explicit.

use std::collections::HashMap;
use std::time::Duration;

use marathon_core::budget::RetryBudget;
use marathon_core::decision::{AttemptContext, Decision, RetryPolicy, decide};
use marathon_core::pool::{Health, Pick, PickRequest, Pool, PoolConfig, SessionKey};
use marathon_core::strategy::Strategy;
use marathon_core::{
    AccountId, AccountKind, AccountMeta, Class, Classification, HintSource, ResetHint, UnixMillis,
    UsageWindow,
};
use proptest::prelude::*;
// The pool strategy enum shadows the trait name; bring the trait in for its methods.
use proptest::strategy::Strategy as _;

const T0: UnixMillis = UnixMillis(1_764_330_000_000);

#[derive(Clone, Debug)]
enum Outcome {
    Ok,
    RateLimited {
        hint_secs: Option<u64>,
    },
    Unusable,
    Auth,
    Forbidden,
    Provider,
    Transport,
    Request,
    Cancelled,
    Usage {
        utilization: f64,
        resets_in_secs: u64,
    },
}

#[derive(Clone, Debug)]
enum Op {
    Pick {
        session: Option<u8>,
        exclude_mask: u16,
    },
    Finish {
        which: usize,
        outcome: Outcome,
    },
    Release {
        which: usize,
    },
    Advance {
        ms: u64,
    },
    NeedsLogin {
        acct: usize,
    },
    MarkReady {
        acct: usize,
    },
    Toggle {
        acct: usize,
    },
    SetCooldown {
        acct: usize,
        secs: i64,
    },
}

fn strategy_s() -> impl proptest::strategy::Strategy<Value = Strategy> {
    prop::sample::select(Strategy::ALL.to_vec())
}

fn outcome_s() -> impl proptest::strategy::Strategy<Value = Outcome> {
    prop_oneof![
        6 => Just(Outcome::Ok),
        3 => prop::option::of(0u64..7200).prop_map(|hint_secs| Outcome::RateLimited { hint_secs }),
        1 => Just(Outcome::Unusable),
        1 => Just(Outcome::Auth),
        1 => Just(Outcome::Forbidden),
        1 => Just(Outcome::Provider),
        2 => Just(Outcome::Transport),
        1 => Just(Outcome::Request),
        1 => Just(Outcome::Cancelled),
        2 => (0.5f64..1.0, 1u64..20_000)
            .prop_map(|(utilization, resets_in_secs)| Outcome::Usage { utilization, resets_in_secs }),
    ]
}

fn op_s() -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        8 => (prop::option::of(0u8..4), prop_oneof![3 => Just(0u16), 1 => any::<u16>()])
            .prop_map(|(session, exclude_mask)| Op::Pick { session, exclude_mask }),
        6 => (any::<usize>(), outcome_s()).prop_map(|(which, outcome)| Op::Finish { which, outcome }),
        1 => any::<usize>().prop_map(|which| Op::Release { which }),
        3 => prop_oneof![0u64..3_000, 0u64..120_000, 0u64..25_000_000].prop_map(|ms| Op::Advance { ms }),
        1 => (0usize..16).prop_map(|acct| Op::NeedsLogin { acct }),
        1 => (0usize..16).prop_map(|acct| Op::MarkReady { acct }),
        1 => (0usize..16).prop_map(|acct| Op::Toggle { acct }),
        1 => (0usize..16, -60i64..7200).prop_map(|(acct, secs)| Op::SetCooldown { acct, secs }),
    ]
}

fn id(i: usize) -> AccountId {
    AccountId(format!("acct-{i}").into())
}

fn meta(i: usize, priority: i32, enabled: bool) -> AccountMeta {
    AccountMeta {
        id: id(i),
        provider: "anthropic".into(),
        label: format!("label-{i}"),
        kind: if i.is_multiple_of(2) {
            AccountKind::Oauth
        } else {
            AccountKind::ApiKey
        },
        priority,
        enabled,
    }
}

fn classify(o: &Outcome, now: UnixMillis) -> Classification {
    let c = |class, status: Option<u16>, reason: &'static str| Classification {
        class,
        status,
        reason: reason.into(),
        reset: None,
        usage: vec![],
    };
    match o {
        Outcome::Ok => c(Class::Success, Some(200), "ok"),
        Outcome::RateLimited { hint_secs } => Classification {
            reset: hint_secs.map(|s| ResetHint {
                at: now.plus(Duration::from_secs(s)),
                source: HintSource::RetryAfterSeconds,
            }),
            ..c(Class::RateLimited, Some(429), "rate_limit_error")
        },
        Outcome::Unusable => c(Class::Unusable, Some(429), "insufficient_quota"),
        Outcome::Auth => c(Class::Auth, Some(401), "authentication_error"),
        Outcome::Forbidden => c(Class::Forbidden, Some(403), "permission_error"),
        Outcome::Provider => c(Class::Provider, Some(529), "overloaded_error"),
        Outcome::Transport => c(Class::Transport, None, "connect"),
        Outcome::Request => c(Class::Request, Some(400), "invalid_request_error"),
        Outcome::Cancelled => c(Class::Cancelled, None, "client_cancelled"),
        Outcome::Usage {
            utilization,
            resets_in_secs,
        } => Classification {
            usage: vec![UsageWindow {
                name: "5h".into(),
                utilization: *utilization,
                resets_at: Some(now.plus(Duration::from_secs(*resets_in_secs))),
                status: Some("allowed".into()),
                window_minutes: Some(300),
            }],
            ..c(Class::Success, Some(200), "ok")
        },
    }
}

/// A request the model believes is in flight.
struct Outstanding {
    acct: usize,
}

fn health_by_id(p: &Pool, now: UnixMillis) -> HashMap<AccountId, Health> {
    p.status(now)
        .into_iter()
        .map(|s| (s.id, s.health))
        .collect()
}

fn usable(h: Health) -> bool {
    matches!(h, Health::Ready | Health::Probing)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Never a cooling, disabled or needs-login account; never an excluded
    /// one; a probe only of a probing account and one at a time; exhaustion
    /// only when nothing usable is left, with the soonest reset; in-flight
    /// counts match the requests out.
    #[test]
    fn picks_respect_health_and_exhaustion_reports_the_soonest_reset(
        strategy in strategy_s(),
        n in 1usize..8,
        priorities in prop::collection::vec(-3i32..3, 8),
        seed in any::<u64>(),
        ops in prop::collection::vec(op_s(), 1..150),
    ) {
        let mut p = Pool::new("anthropic", PoolConfig { strategy, ..PoolConfig::default() }, seed);
        let mut enabled = vec![true; n];
        for (i, &priority) in priorities.iter().enumerate().take(n) {
            p.upsert(meta(i, priority, true));
        }
        let mut now = T0;
        let mut out: Vec<Outstanding> = Vec::new();
        let sessions = [SessionKey(0xa), SessionKey(0xb), SessionKey(0xc), SessionKey(0xd)];
        // Accounts whose probe is out: until the account leaves the probing
        // state or everything on it has finished, no second probe.
        let mut probing: Vec<usize> = Vec::new();
        for op in ops {
            match op {
                Op::Pick { session, exclude_mask } => {
                    let exclude: Vec<AccountId> = (0..n).filter(|i| exclude_mask & (1 << i) != 0).map(id).collect();
                    let before = health_by_id(&p, now);
                    let req = PickRequest { session: session.map(|s| sessions[s as usize]), exclude: &exclude };
                    match p.pick(now, &req) {
                        Pick::Account { id: got, label, probe, .. } => {
                            let acct: usize = got.0.trim_start_matches("acct-").parse().unwrap();
                            prop_assert_eq!(label.to_string(), format!("label-{acct}"));
                            let h = before[&got];
                            prop_assert!(usable(h), "picked {} in state {:?}", got, h);
                            prop_assert!(!exclude.contains(&got), "picked excluded {}", got);
                            prop_assert_eq!(probe, h == Health::Probing, "probe flag vs {:?}", h);
                            if probe {
                                prop_assert!(!probing.contains(&acct), "second probe of {}", got);
                                probing.push(acct);
                            }
                            out.push(Outstanding { acct });
                        }
                        Pick::Exhausted(e) => {
                            for (aid, h) in &before {
                                let acct: usize = aid.0.trim_start_matches("acct-").parse().unwrap();
                                let busy = out.iter().any(|o| o.acct == acct);
                                let pickable = match h {
                                    Health::Ready => true,
                                    // Its probe may be out only while something is in flight on it.
                                    Health::Probing => !busy,
                                    _ => false,
                                };
                                prop_assert!(!pickable || exclude.contains(aid), "exhausted while {} is {:?}", aid, h);
                            }
                            let expected = if before.values().any(|h| usable(*h)) {
                                Some(now)
                            } else {
                                before.values().filter_map(|h| match h {
                                    Health::Cooling { until } => Some(*until),
                                    _ => None,
                                }).min()
                            };
                            prop_assert_eq!(e.soonest, expected);
                            prop_assert_eq!(e.accounts.len(), n);
                        }
                    }
                }
                Op::Finish { which, outcome } => {
                    if !out.is_empty() {
                        let o = out.swap_remove(which % out.len());
                        p.record(&id(o.acct), &classify(&outcome, now), now);
                    }
                }
                Op::Release { which } => {
                    if !out.is_empty() {
                        let o = out.swap_remove(which % out.len());
                        p.release(&id(o.acct));
                    }
                }
                Op::Advance { ms } => now = now.plus(Duration::from_millis(ms)),
                Op::NeedsLogin { acct } => {
                    p.mark_needs_login(&id(acct % n), now, "invalid_grant");
                }
                Op::MarkReady { acct } => {
                    p.mark_ready(&id(acct % n), now);
                }
                Op::Toggle { acct } => {
                    let a = acct % n;
                    enabled[a] = !enabled[a];
                    p.upsert(meta(a, priorities[a], enabled[a]));
                }
                Op::SetCooldown { acct, secs } => {
                    let until = UnixMillis(now.0.saturating_add_signed(secs * 1000));
                    p.set_cooldown(&id(acct % n), until, "shared", now);
                }
            }
            // Bookkeeping stays exact whatever happened.
            let status = p.status(now);
            for s in &status {
                let acct: usize = s.id.0.trim_start_matches("acct-").parse().unwrap();
                let expected = out.iter().filter(|o| o.acct == acct).count() as u32;
                prop_assert_eq!(s.in_flight, expected, "in-flight of {}", s.id);
                prop_assert_eq!(s.enabled, enabled[acct]);
                if !enabled[acct] {
                    prop_assert_eq!(s.health, Health::Disabled);
                }
            }
            probing.retain(|&a| {
                status.iter().any(|s| s.id == id(a) && s.health == Health::Probing && s.in_flight > 0)
            });
            let soonest = p.soonest_ready(now);
            prop_assert!(soonest.is_none_or(|t| t >= now));
        }
    }

    /// Sticky stays on one account until that account fails (is benched);
    /// request- and provider-scoped failures and successes never move it.
    #[test]
    fn sticky_never_switches_without_a_failure(
        n in 2usize..10,
        seed in any::<u64>(),
        steps in prop::collection::vec((outcome_s(), prop_oneof![Just(0u64), 0u64..5_000, 0u64..4_000_000]), 1..200),
    ) {
        let cfg = PoolConfig { strategy: Strategy::Sticky, proactive_threshold: None, ..PoolConfig::default() };
        let mut p = Pool::new("anthropic", cfg, seed);
        for i in 0..n {
            p.upsert(meta(i, i as i32, true));
        }
        let mut now = T0;
        let mut current: Option<AccountId> = None;
        for (outcome, advance) in steps {
            now = now.plus(Duration::from_millis(advance));
            let before = health_by_id(&p, now);
            let Pick::Account { id: got, .. } = p.pick(now, &PickRequest::default()) else {
                // Everything benched: allowed, and then there is no current account to keep.
                prop_assert!(before.values().all(|h| !usable(*h)));
                continue;
            };
            if let Some(cur) = &current
                && cur != &got
            {
                prop_assert!(
                    before[cur] != Health::Ready,
                    "switched {} -> {} while {} was ready", cur, got, cur
                );
            }
            current = Some(got.clone());
            p.record(&got, &classify(&outcome, now), now);
        }
    }

    /// Over k rounds of n picks every account is picked exactly k times,
    /// whether requests finish at once or stay in flight.
    #[test]
    fn round_robin_is_fair(
        n in 1usize..40,
        k in 1usize..12,
        finish_now in prop::collection::vec(any::<bool>(), 1..64),
        seed in any::<u64>(),
    ) {
        let mut p = Pool::new("openai", PoolConfig { strategy: Strategy::RoundRobin, ..PoolConfig::default() }, seed);
        for i in 0..n {
            p.upsert(meta(i, (i % 3) as i32, true));
        }
        let mut counts = vec![0usize; n];
        let mut pending = Vec::new();
        for j in 0..n * k {
            let now = T0.plus(Duration::from_millis(j as u64));
            let Pick::Account { id: got, .. } = p.pick(now, &PickRequest::default()) else {
                prop_assert!(false, "round-robin pool of ready accounts exhausted");
                unreachable!()
            };
            let acct: usize = got.0.trim_start_matches("acct-").parse().unwrap();
            counts[acct] += 1;
            if finish_now[j % finish_now.len()] {
                p.record(&got, &classify(&Outcome::Ok, now), now);
            } else {
                pending.push(got);
            }
        }
        prop_assert!(counts.iter().all(|&c| c == k), "counts {:?}", counts);
    }

    /// Least-used against a model of its documented order: normal tier
    /// before accounts past the proactive threshold, then fewest requests in
    /// flight, then the account that has had its count the longest (since it
    /// was added, picked, or a request on it ended); an account that changes
    /// tier goes first in its new one. Excluded accounts are skipped, never
    /// reordered.
    #[test]
    fn least_used_follows_its_documented_order(
        n in 1usize..12,
        ops in prop::collection::vec(
            (0u8..3, any::<usize>(), prop_oneof![2 => Just(0u16), 1 => any::<u16>()], prop::option::of(any::<bool>())),
            1..300,
        ),
    ) {
        let mut p = Pool::new("anthropic", PoolConfig { strategy: Strategy::LeastUsed, proactive_threshold: Some(0.95), ..PoolConfig::default() }, 3);
        for i in 0..n {
            p.upsert(meta(i, (i % 3) as i32, true));
        }
        let now = T0;
        // Per account: hot, in flight, and when it took its place (smaller first).
        let mut hot = vec![false; n];
        let mut in_flight = vec![0u32; n];
        let mut since: Vec<i64> = (0..n as i64).collect();
        let (mut back, mut front) = (n as i64, -1i64);
        let mut out: Vec<usize> = Vec::new();
        for (kind, which, exclude_mask, usage) in ops {
            if kind == 0 || out.is_empty() {
                let exclude: Vec<AccountId> = (0..n).filter(|i| exclude_mask & (1 << i) != 0).map(id).collect();
                let expected = (0..n)
                    .filter(|&i| exclude_mask & (1 << i) == 0)
                    .min_by_key(|&i| (hot[i], in_flight[i], since[i]));
                match (p.pick(now, &PickRequest { session: None, exclude: &exclude }), expected) {
                    (Pick::Account { id: got, probe, .. }, Some(want)) => {
                        prop_assert_eq!(got, id(want));
                        prop_assert!(!probe);
                        in_flight[want] += 1;
                        since[want] = back;
                        back += 1;
                        out.push(want);
                    }
                    (Pick::Exhausted(_), None) => {}
                    (got, want) => prop_assert!(false, "picked {:?}, expected {:?}", got, want),
                }
            } else {
                let a = out.swap_remove(which % out.len());
                in_flight[a] -= 1;
                let was_hot = hot[a];
                if kind == 1 {
                    let mut c = classify(&Outcome::Ok, now);
                    if let Some(high) = usage {
                        let utilization = if high { 0.99 } else { 0.5 };
                        c = classify(&Outcome::Usage { utilization, resets_in_secs: 3600 }, now);
                        hot[a] = high;
                    }
                    p.record(&id(a), &c, now);
                } else {
                    p.release(&id(a));
                }
                if hot[a] == was_hot {
                    since[a] = back;
                    back += 1;
                } else {
                    since[a] = front;
                    front -= 1;
                }
            }
        }
        for s in p.status(now) {
            let a: usize = s.id.0.trim_start_matches("acct-").parse().unwrap();
            prop_assert_eq!(s.in_flight, in_flight[a]);
        }
    }

    /// A request that cannot be replayed is never retried, whatever happened.
    #[test]
    fn decide_never_retries_a_non_replayable_request(
        class in prop::sample::select(vec![
            Class::Success, Class::RateLimited, Class::Unusable, Class::Auth, Class::Forbidden,
            Class::Provider, Class::Transport, Class::Request, Class::Cancelled,
        ]),
        attempt in 1u32..20,
        accounts in 0u32..20,
        same in 0u32..4,
        refreshed in any::<bool>(),
        oauth in any::<bool>(),
        provider_failures in 0u32..4,
        elapsed_ms in 0u64..1_000_000,
        hint_ms in prop::option::of(0u64..100_000),
    ) {
        let ctx = AttemptContext {
            attempt,
            started: T0,
            replayable: false,
            accounts_in_pool: accounts,
            same_account_tries: same,
            refreshed,
            kind: if oauth { AccountKind::Oauth } else { AccountKind::ApiKey },
            provider_failures,
            provider_rotated: false,
        };
        let now = T0.plus(Duration::from_millis(elapsed_ms));
        let c = Classification {
            class,
            status: Some(429),
            reason: "x".into(),
            reset: hint_ms.map(|ms| ResetHint { at: now.plus(Duration::from_millis(ms)), source: HintSource::RetryAfterMs }),
            usage: vec![],
        };
        let mut budget = RetryBudget::default();
        let before = budget.available(now);
        prop_assert_eq!(decide(&RetryPolicy::default(), &ctx, &c, now, &mut budget), Decision::PassThrough);
        prop_assert_eq!(budget.available(now), before, "no budget spent on a pass-through");
    }

    /// Retries stay within the deadline and the attempt limit, each one that
    /// could amplify load is paid for from the budget, and only failures are
    /// retried.
    #[test]
    fn decide_respects_limits_and_budget(
        class in prop::sample::select(vec![
            Class::Success, Class::RateLimited, Class::Unusable, Class::Auth, Class::Forbidden,
            Class::Provider, Class::Transport, Class::Request, Class::Cancelled,
        ]),
        attempt in 1u32..30,
        accounts in 0u32..6,
        same in 0u32..4,
        refreshed in any::<bool>(),
        oauth in any::<bool>(),
        provider_failures in 0u32..4,
        elapsed_ms in 0u64..700_000,
        hint_ms in prop::option::of(0u64..10_000),
        max_attempts in prop::option::of(1u32..10),
        provider_rotated in any::<bool>(),
    ) {
        let policy = RetryPolicy { max_attempts, ..RetryPolicy::default() };
        let ctx = AttemptContext {
            attempt,
            started: T0,
            replayable: true,
            accounts_in_pool: accounts,
            same_account_tries: same,
            refreshed,
            kind: if oauth { AccountKind::Oauth } else { AccountKind::ApiKey },
            provider_failures,
            provider_rotated,
        };
        let now = T0.plus(Duration::from_millis(elapsed_ms));
        let c = Classification {
            class,
            status: None,
            reason: "x".into(),
            reset: hint_ms.map(|ms| ResetHint { at: now.plus(Duration::from_millis(ms)), source: HintSource::RetryAfterSeconds }),
            usage: vec![],
        };
        let mut budget = RetryBudget::new(Duration::from_secs(10), 1, 0.0);
        let before = budget.available(now);
        let d = decide(&policy, &ctx, &c, now, &mut budget);
        if d.is_retry() {
            prop_assert!(!matches!(class, Class::Success | Class::Request | Class::Cancelled));
            prop_assert!(attempt < policy.attempt_limit(accounts));
            let after = match d { Decision::RetrySame { after } | Decision::Rotate { after } => after, _ => Duration::ZERO };
            prop_assert!(now.plus(after) < T0.plus(policy.deadline));
            // Rotating away from an account at fault is bounded by the pool,
            // not the budget; every other retry is paid for.
            let paid = !(class.blames_account() && matches!(d, Decision::Rotate { .. }));
            prop_assert_eq!(budget.available(now), before - u64::from(paid));
            if matches!(d, Decision::Rotate { .. }) {
                prop_assert!(accounts > 1, "rotating with nowhere to go");
                if class == Class::Provider && provider_failures >= policy.provider_retries {
                    prop_assert!(!provider_rotated, "a provider failure moves a request once");
                }
            }
            if d == Decision::RefreshAndRetry {
                prop_assert!(oauth && !refreshed && class == Class::Auth);
            }
        } else {
            prop_assert_eq!(budget.available(now), before);
            if matches!(d, Decision::Exhausted | Decision::GiveUp(_)) {
                prop_assert!(class.blames_account());
            }
        }
    }
}
