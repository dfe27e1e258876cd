//! The `headroom` strategy and drain-soonest's exploration, driven in
//! virtual time (issue 13).

use std::collections::HashMap;
use std::time::Duration;

use marathon_core::pool::{Pick, PickRequest, Pool, PoolConfig, SessionKey};
use marathon_core::strategy::Strategy;
use marathon_core::{
    AccountId, AccountKind, AccountMeta, Class, Classification, UnixMillis, UsageWindow,
};

const T0: UnixMillis = UnixMillis(1_764_330_000_000);

fn at(secs: u64) -> UnixMillis {
    T0.plus(Duration::from_secs(secs))
}

fn id(s: &str) -> AccountId {
    AccountId(s.into())
}

fn pool(strategy: Strategy, names: &[&str]) -> Pool {
    let mut p = Pool::new(
        "anthropic",
        PoolConfig {
            strategy,
            ..PoolConfig::default()
        },
        7,
    );
    for (i, n) in names.iter().enumerate() {
        p.upsert(AccountMeta {
            id: id(n),
            provider: "anthropic".into(),
            label: (*n).to_owned(),
            kind: AccountKind::Oauth,
            priority: i as i32,
            enabled: true,
        });
    }
    p
}

fn window(name: &str, utilization: f64, resets_at: UnixMillis) -> UsageWindow {
    UsageWindow {
        name: name.into(),
        utilization,
        resets_at: Some(resets_at),
        status: None,
        window_minutes: None,
    }
}

fn ok_with(usage: Vec<UsageWindow>) -> Classification {
    Classification {
        class: Class::Success,
        status: Some(200),
        reason: "ok".into(),
        reset: None,
        usage,
    }
}

fn pick(p: &mut Pool, now: UnixMillis, session: Option<u64>) -> String {
    match p.pick(
        now,
        &PickRequest {
            session: session.map(SessionKey),
            exclude: &[],
        },
    ) {
        Pick::Account { label, .. } => label.to_string(),
        Pick::Exhausted(e) => panic!("unexpected exhaustion: {e:?}"),
    }
}

/// The bug of issue 13: with one account's (weekly) window known and the
/// others unknown, drain-soonest sat on the known one forever. Now an
/// account without usage data is tried first, once; what it reports then
/// decides.
#[test]
fn drain_soonest_explores_accounts_it_knows_nothing_about() {
    let mut p = pool(Strategy::DrainSoonest, &["weekly", "quiet", "soon"]);
    let week = at(5 * 86_400);
    p.observe_usage(&id("weekly"), &[window("7d", 0.4, week)], at(0));
    // Unknown accounts first, in priority order, one request each.
    let first = pick(&mut p, at(1), None);
    assert_eq!(first, "quiet");
    p.record(&id("quiet"), &ok_with(vec![]), at(1));
    let second = pick(&mut p, at(2), None);
    assert_eq!(second, "soon");
    p.record(
        &id("soon"),
        &ok_with(vec![window("5h", 0.3, at(3_600))]),
        at(2),
    );
    // Now known: `soon` resets in an hour, `weekly` in five days, and
    // `quiet` reported nothing (explored: last).
    for s in 3..10 {
        assert_eq!(pick(&mut p, at(s), None), "soon");
        p.record(&id("soon"), &ok_with(vec![]), at(s));
    }
}

/// New sessions go where the most is left for the time left.
#[test]
fn headroom_places_new_sessions_on_the_account_with_most_left() {
    let mut p = pool(Strategy::Headroom, &["a", "b", "c"]);
    let reset = at(5 * 3_600);
    p.observe_usage(&id("a"), &[window("5h", 0.7, reset)], at(0));
    p.observe_usage(&id("b"), &[window("5h", 0.2, reset)], at(0));
    p.observe_usage(&id("c"), &[window("5h", 0.5, reset)], at(0));
    assert_eq!(pick(&mut p, at(1), Some(1)), "b");
    // Session 1 stays on b even once c has more left.
    p.observe_usage(&id("b"), &[window("5h", 0.6, reset)], at(2));
    p.record(&id("b"), &ok_with(vec![]), at(2));
    assert_eq!(pick(&mut p, at(3), Some(1)), "b");
    p.record(&id("b"), &ok_with(vec![]), at(3));
    assert_eq!(pick(&mut p, at(4), Some(2)), "c");
}

/// A scripted day: 3 accounts with a 400-request 5-hour window, 1,000
/// requests from 7 sessions, one request every 2 virtual seconds. Each
/// session moves only off an account whose forecast crossed the threshold,
/// at most once per crossing, and never back to an account it left while
/// that window lasts (no ping-pong).
#[test]
fn headroom_moves_each_session_at_most_once_per_crossing() {
    let mut p = pool(Strategy::Headroom, &["a", "b", "c"]);
    let limit = 400.0;
    let reset = at(5 * 3_600);
    let mut used: HashMap<String, f64> = HashMap::new();
    let mut home: HashMap<u64, String> = HashMap::new();
    let mut left: HashMap<u64, Vec<String>> = HashMap::new();
    let mut moves: HashMap<u64, u32> = HashMap::new();
    for n in 0..1_000u64 {
        let now = at(n * 2);
        let session = n % 7;
        let account = pick(&mut p, now, Some(session));
        if let Some(prev) = home.get(&session)
            && *prev != account
        {
            assert!(
                !left[&session].contains(&account),
                "session {session} went back to {account} at request {n}"
            );
            let util = used[prev] / limit;
            assert!(
                util >= 0.5,
                "session {session} left {prev} at {util:.2}, far from its wall"
            );
            left.get_mut(&session).unwrap().push(prev.clone());
            *moves.entry(session).or_default() += 1;
        }
        left.entry(session).or_default();
        home.insert(session, account.clone());
        let u = used.entry(account.clone()).or_default();
        *u += 1.0;
        let w = window("5h", (*u / limit).min(1.0), reset);
        p.record(&id(&account), &ok_with(vec![w]), now);
    }
    // Two crossings can move a session at most twice; the busiest account
    // never ran into its wall.
    assert!(moves.values().all(|m| *m <= 2), "{moves:?}");
    assert!(moves.values().sum::<u32>() >= 1, "someone moved: {moves:?}");
    assert!(used.values().all(|u| *u < limit), "{used:?}");
}

/// Once demoted, an account stays demoted until its window resets, even as
/// its burn rate cools after the sessions left: no flip-flop. After the
/// reset it is preferred again for new sessions.
#[test]
fn a_demoted_account_stays_demoted_until_its_window_resets() {
    let mut p = pool(Strategy::Headroom, &["a", "b"]);
    let reset = at(2 * 3_600);
    p.observe_usage(&id("b"), &[window("5h", 0.3, at(5 * 3_600))], at(0));
    p.observe_usage(&id("a"), &[window("5h", 0.0, reset)], at(0));
    // a burns 1 % a minute, then crosses 0.9 (0.85 + 5 min × 1 %).
    for m in 1..=85u64 {
        p.observe_usage(
            &id("a"),
            &[window("5h", m as f64 / 100.0, reset)],
            at(m * 60),
        );
    }
    // a is demoted (its forecast crosses); everything goes to b.
    assert_eq!(pick(&mut p, at(85 * 60), Some(9)), "b");
    p.record(&id("b"), &ok_with(vec![]), at(85 * 60));
    // Its pace drops to nothing for 10 minutes: still demoted.
    for m in 86..=95u64 {
        p.observe_usage(&id("a"), &[window("5h", 0.85, reset)], at(m * 60));
        assert_eq!(pick(&mut p, at(m * 60), None), "b");
        p.record(&id("b"), &ok_with(vec![]), at(m * 60));
    }
    // Past a's reset, polled idle for an hour: its remembered pace cools
    // and it is preferred again for new requests.
    for m in 0..=12u64 {
        let t = at(7_201 + m * 300);
        p.observe_usage(&id("a"), &[window("5h", 0.0, at(6 * 3_600))], t);
    }
    let after = at(7_201 + 12 * 300);
    assert_eq!(pick(&mut p, after, None), "a");
    p.record(&id("a"), &ok_with(vec![]), after);
    // The session that moved stays put.
    assert_eq!(pick(&mut p, after, Some(9)), "b");
}

/// The status view carries each window's forecast; the pool, its capacity.
#[test]
fn status_shows_runs_out_at_and_the_pool_its_capacity() {
    let mut p = pool(Strategy::Headroom, &["a"]);
    let reset = at(5 * 3_600);
    for m in 0..=30u64 {
        p.observe_usage(
            &id("a"),
            &[window("5h", m as f64 / 100.0, reset)],
            at(m * 60),
        );
    }
    let st = p.account_status(&id("a"), at(30 * 60)).unwrap();
    let f = &st.forecast[0];
    let out = f.runs_out_at.expect("burning");
    // 70 % left at 1 %/min: 100 minutes from the start.
    assert!(out.0.abs_diff(at(100 * 60).0) < 120_000, "{out:?}");
    assert!(f.runs_out_before_reset);
    let cap = p.capacity_until(at(30 * 60)).unwrap();
    assert!(cap.0.abs_diff(at(100 * 60).0) < 120_000, "{cap:?}");
    let json = serde_json::to_value(&st).unwrap();
    assert!(json["forecast"][0]["runs_out_at"].is_u64(), "{json}");
}
