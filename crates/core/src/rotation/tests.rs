//! One test per rule the machine took over from the proxy (each names the
//! bug or rule it guards). The world is a pool, a budget and lists of what
//! was published and persisted; time is explicit.

use std::cell::RefCell;

use super::*;
use crate::account::AccountMeta;
use crate::outcome::{HintSource, ResetHint};
use crate::pool::PoolConfig;

const T0: UnixMillis = UnixMillis(1_764_330_000_000);

fn at_ms(ms: u64) -> UnixMillis {
    T0.plus(Duration::from_millis(ms))
}

fn id(s: &str) -> AccountId {
    AccountId(s.into())
}

struct World {
    pool: RefCell<Pool>,
    budget: RefCell<RetryBudget>,
    events: RefCell<Vec<Event>>,
    persisted: RefCell<Vec<AccountId>>,
    config: RotationConfig,
}

impl Shared for World {
    fn pool<R>(&self, f: impl FnOnce(&mut Pool) -> R) -> R {
        f(&mut self.pool.borrow_mut())
    }
    fn budget<R>(&self, f: impl FnOnce(&mut RetryBudget) -> R) -> R {
        f(&mut self.budget.borrow_mut())
    }
    fn publish(&self, events: Vec<Event>) {
        assert!(!events.is_empty(), "an empty publish");
        self.events.borrow_mut().extend(events);
    }
    fn persist_needs_login(&self, account: &AccountId) {
        self.persisted.borrow_mut().push(account.clone());
    }
}

impl World {
    /// Accounts in priority order; `oauth` marks OAuth ones.
    fn new(accounts: &[(&str, AccountKind)]) -> Self {
        let mut pool = Pool::new("anthropic", PoolConfig::default(), 7);
        for (i, (name, kind)) in accounts.iter().enumerate() {
            pool.upsert(AccountMeta {
                id: id(name),
                provider: "anthropic".into(),
                label: (*name).into(),
                kind: *kind,
                priority: i as i32,
                enabled: true,
            });
        }
        World {
            pool: RefCell::new(pool),
            budget: RefCell::new(RetryBudget::new(Duration::from_secs(10), 10, 0.2)),
            events: RefCell::new(Vec::new()),
            persisted: RefCell::new(Vec::new()),
            config: RotationConfig {
                provider: "anthropic".into(),
                ..RotationConfig::default()
            },
        }
    }

    fn keys(names: &[&'static str]) -> Self {
        let accounts: Vec<(&str, AccountKind)> =
            names.iter().map(|n| (*n, AccountKind::ApiKey)).collect();
        World::new(&accounts)
    }

    fn rotation(&self, now: UnixMillis) -> Rotation<'_, &World> {
        Rotation::new(
            self,
            &self.config,
            RequestFacts {
                replayable: true,
                session: None,
                now,
            },
        )
    }

    fn health(&self, name: &str, now: UnixMillis) -> Health {
        self.pool
            .borrow()
            .account_status(&id(name), now)
            .unwrap()
            .health
    }

    fn in_flight(&self) -> Vec<u32> {
        self.pool
            .borrow()
            .status(T0)
            .iter()
            .map(|a| a.in_flight)
            .collect()
    }

    fn kinds(&self) -> Vec<&'static str> {
        self.events
            .borrow()
            .iter()
            .map(|e| e.kind.as_str())
            .collect()
    }
}

fn cls(class: Class, status: Option<u16>, reason: &'static str) -> Classification {
    Classification {
        class,
        status,
        reason: reason.into(),
        reset: None,
        usage: vec![],
    }
}

fn ok() -> Classification {
    cls(Class::Success, Some(200), "ok")
}

fn limited_until(until: UnixMillis) -> Classification {
    Classification {
        reset: Some(ResetHint {
            at: until,
            source: HintSource::RetryAfterSeconds,
        }),
        ..cls(Class::RateLimited, Some(429), "rate_limit_error")
    }
}

fn unauthorized() -> Classification {
    cls(Class::Auth, Some(401), "authentication_error")
}

fn overloaded() -> Classification {
    cls(Class::Provider, Some(529), "overloaded_error")
}

fn on(r: &Rotation<'_, &World>) -> String {
    r.account().unwrap().label.to_string()
}

fn refusal(a: Action) -> Refusal {
    match a {
        Action::Respond(Answer::Refuse(r)) => *r,
        other => panic!("not a refusal: {other:?}"),
    }
}

const SEND1: Action = Action::Send {
    attempt: 1,
    picked: true,
};
fn send(attempt: u32, picked: bool) -> Action {
    Action::Send { attempt, picked }
}

const PASS: Action = Action::Respond(Answer::PassThrough);

#[test]
fn a_success_on_the_first_try_is_passed_through_and_ends_the_slot() {
    let w = World::keys(&["a", "b"]);
    let mut r = w.rotation(T0);
    assert_eq!(r.start(), SEND1);
    assert_eq!((on(&r), w.in_flight()), ("a".into(), vec![1, 0]));
    assert_eq!(r.on_response(ok(), at_ms(5)), PASS);
    assert_eq!(w.in_flight(), [0, 0]);
    assert_eq!(r.trace().to_string(), "a=200");
    assert!(w.events.borrow().is_empty());
}

/// Moved from the proxy: an OAuth 401 is refreshed once; when the refresh
/// fails for good the account needs login (announced and stored) and the
/// request moves on.
#[test]
fn a_refresh_that_fails_for_good_marks_needs_login_and_rotates() {
    let w = World::new(&[("a", AccountKind::Oauth), ("b", AccountKind::Oauth)]);
    let mut r = w.rotation(T0);
    assert_eq!(r.start(), SEND1);
    assert_eq!(r.on_response(unauthorized(), T0), Action::Refresh);
    assert_eq!(w.in_flight(), [1, 0], "the slot lasts across the refresh");
    let failure = RefreshFailure {
        permanent: true,
        reason: &Reason::fixed("invalid_grant"),
    };
    assert_eq!(r.on_refresh(Err(failure), T0), send(2, true));
    assert_eq!(on(&r), "b");
    assert_eq!(w.health("a", T0), Health::NeedsLogin);
    assert_eq!(*w.persisted.borrow(), [id("a")]);
    assert_eq!(
        w.kinds(),
        ["cooldown", "refresh_failed", "needs_login", "failover"]
    );
    assert_eq!(r.on_response(ok(), T0), PASS);
    assert_eq!(w.in_flight(), [0, 0]);
    assert_eq!(r.trace().to_string(), "a=401 b=200");
}

/// Moved from the proxy: still 401 after a successful refresh → needs login.
#[test]
fn a_401_that_a_refresh_did_not_fix_marks_needs_login() {
    let w = World::new(&[("a", AccountKind::Oauth), ("b", AccountKind::ApiKey)]);
    let mut r = w.rotation(T0);
    r.start();
    assert_eq!(r.on_response(unauthorized(), T0), Action::Refresh);
    assert_eq!(r.on_refresh(Ok(()), T0), send(2, false));
    assert_eq!(on(&r), "a", "the same account, with the new token");
    assert_eq!(r.on_response(unauthorized(), T0), send(3, true));
    assert_eq!(on(&r), "b");
    assert_eq!(w.health("a", T0), Health::NeedsLogin);
    assert_eq!(*w.persisted.borrow(), [id("a")]);
    assert_eq!(
        w.kinds(),
        ["refreshed", "cooldown", "needs_login", "failover"]
    );
    // An API key the provider refuses needs a new key: no refresh first.
    // Nothing recovers on its own: a spent answer, which clients show at once.
    let answer = refusal(r.on_response(unauthorized(), T0));
    assert_eq!((answer.status, answer.kind), (429, RefusalKind::Spent));
    assert_eq!(answer.resets_at, None);
    assert_eq!(w.health("b", T0), Health::NeedsLogin);
    assert!(
        answer.message.contains("a needs login, b needs login"),
        "{}",
        answer.message
    );
    assert_eq!(answer.retry_after, Some(60), "nothing recovers on its own");
}

/// Moved from the proxy (`Pool::refresh_failed` went unused): every request
/// queued behind one failed refresh gets the same error; the account turns
/// needs-login, is announced and stored once.
#[test]
fn refresh_failures_of_queued_requests_are_announced_once() {
    let w = World::new(&[("a", AccountKind::Oauth), ("b", AccountKind::Oauth)]);
    let mut first = w.rotation(T0);
    let mut second = w.rotation(T0);
    first.start();
    second.start();
    assert_eq!((on(&first), on(&second)), ("a".into(), "a".into()));
    let dead = RefreshFailure {
        permanent: true,
        reason: &Reason::fixed("invalid_grant"),
    };
    assert_eq!(first.on_response(unauthorized(), T0), Action::Refresh);
    assert_eq!(second.on_response(unauthorized(), T0), Action::Refresh);
    first.on_refresh(Err(dead), T0);
    second.on_refresh(Err(dead), T0);
    let count = |k: &str| w.kinds().iter().filter(|x| **x == k).count();
    assert_eq!((count("refresh_failed"), count("needs_login")), (1, 1));
    assert_eq!(*w.persisted.borrow(), [id("a")]);
    // A token that cannot be had for now is news every time, and changes nothing.
    let mut third = w.rotation(T0);
    third.start();
    assert_eq!(on(&third), "b");
    let later = RefreshFailure {
        permanent: false,
        reason: &Reason::fixed("timeout"),
    };
    let next = third.on_unusable(Unusable::Token(later), T0);
    assert_eq!(count("refresh_failed"), 2);
    assert_eq!(w.health("b", T0), Health::Ready);
    // Nothing was sent, so no attempt was spent, and the slot ended.
    assert!(
        matches!(next, Action::Respond(Answer::Refuse(_))),
        "{next:?}"
    );
    assert_eq!(w.in_flight(), [0, 2]);
    drop((first, second));
    assert_eq!(w.in_flight(), [0, 0]);
}

/// Moved from the proxy (MID_STREAM_BENCH): a provider error inside a
/// stream benches the account briefly, so the next request starts
/// elsewhere; it ends no slot (the head was recorded already).
#[test]
fn an_error_inside_a_stream_benches_the_account_without_ending_a_slot() {
    let w = World::keys(&["a", "b"]);
    let mut streaming = w.rotation(T0);
    streaming.start();
    assert_eq!(streaming.on_response(ok(), T0), PASS);
    let mut other = w.rotation(T0);
    other.start();
    assert_eq!(on(&other), "a");
    stream_error(&&w, &id("a"), &overloaded(), at_ms(100));
    assert_eq!(w.in_flight(), [1, 0], "another request's slot survives");
    assert_eq!(
        w.health("a", at_ms(100)),
        Health::Cooling {
            until: at_ms(100).plus(MID_STREAM_BENCH)
        }
    );
    let mut next = w.rotation(at_ms(200));
    next.start();
    assert_eq!(on(&next), "b");
    // A longer bench (a rate limit named inside the stream) is kept.
    let long = limited_until(at_ms(60_000));
    stream_error(&&w, &id("b"), &long, at_ms(300));
    stream_error(&&w, &id("b"), &overloaded(), at_ms(400));
    assert!(
        matches!(w.health("b", at_ms(400)), Health::Cooling { until } if until >= at_ms(60_000))
    );
}

/// Bug guarded: when `max_attempts` stopped a request early, the answer said
/// "all 3 accounts are unavailable (… c ready); usable again in 0s".
#[test]
fn max_attempts_with_a_ready_account_left_gives_up_without_claiming_exhaustion() {
    let mut w = World::keys(&["a", "b", "c"]);
    w.config.retry.max_attempts = Some(2);
    let mut r = w.rotation(T0);
    r.start();
    let hour = at_ms(3_600_000);
    assert_eq!(r.on_response(limited_until(hour), T0), send(2, true));
    let answer = refusal(r.on_response(limited_until(hour), T0));
    assert_eq!((answer.status, answer.kind), (503, RefusalKind::GaveUp));
    assert_eq!(answer.retry_after, None);
    assert!(answer.accounts.is_none());
    assert!(
        answer.message.contains("gave up after 2 attempts")
            && answer.message.contains("a=429")
            && answer.message.contains("b=429")
            && answer.message.contains("c is ready"),
        "{}",
        answer.message
    );
    assert!(
        !answer.message.contains("unavailable"),
        "{}",
        answer.message
    );
    assert_eq!(w.in_flight(), [0, 0, 0]);
}

/// The same limit with no account ready is a true exhaustion: 429 with the
/// soonest reset, never "usable again in 0s".
#[test]
fn max_attempts_with_nothing_ready_is_all_accounts_unavailable() {
    let mut w = World::keys(&["a", "b"]);
    w.config.retry.max_attempts = Some(2);
    let mut r = w.rotation(T0);
    r.start();
    r.on_response(limited_until(at_ms(20_000)), T0);
    let answer = refusal(r.on_response(limited_until(at_ms(40_000)), T0));
    assert_eq!((answer.status, answer.kind), (429, RefusalKind::Exhausted));
    let retry_after = answer.retry_after.unwrap();
    assert!((20..=23).contains(&retry_after), "{retry_after}");
    assert!(
        answer.message.contains("a cooling for") && answer.message.contains("b cooling for"),
        "{}",
        answer.message
    );
}

/// Bug guarded: a 529 went to the client after three tries on one account
/// while another account was ready.
#[test]
fn a_529_after_the_same_account_retries_moves_once_to_a_ready_account() {
    let w = World::keys(&["a", "b", "c"]);
    let mut r = w.rotation(T0);
    assert_eq!(r.start(), SEND1);
    let mut now = T0;
    for attempt in 2..=3 {
        let Action::Wait { until } = r.on_response(overloaded(), now) else {
            panic!("a backoff first")
        };
        now = until;
        assert_eq!(r.on_timer(now), send(attempt, false));
        assert_eq!(on(&r), "a");
    }
    assert_eq!(r.on_response(overloaded(), now), send(4, true));
    assert_eq!(on(&r), "b");
    assert_eq!(r.on_response(overloaded(), now), PASS, "b's 529, once");
    assert_eq!(on(&r), "b");
    assert_eq!(r.trace().to_string(), "a=529 a=529 a=529 b=529");
    assert_eq!(w.health("a", now), Health::Ready, "nobody benched");
    let failover = &w.events.borrow()[0];
    assert_eq!(
        failover.kind,
        EventKind::Failover {
            from: "a".into(),
            to: "b".into(),
            reason: "529 overloaded_error".into()
        }
    );
    assert_eq!(w.in_flight(), [0, 0, 0]);
}

#[test]
fn a_529_with_no_other_account_ready_is_passed_through() {
    let w = World::keys(&["a", "b"]);
    // a rests for a minute.
    let mut r = w.rotation(T0);
    r.start();
    r.on_response(limited_until(at_ms(60_000)), T0);
    r.on_response(ok(), T0);
    let mut r = w.rotation(T0);
    r.start();
    let mut now = T0;
    while let Action::Wait { until } = r.on_response(overloaded(), now) {
        now = until;
        r.on_timer(now);
    }
    assert_eq!(on(&r), "b", "the 529 in hand is b's");
    assert_eq!(r.trace().to_string(), "b=529 b=529 b=529");
    assert!(r.is_done());
    assert_eq!(w.in_flight(), [0, 0]);
}

/// `max_wait`: a one-account pool waits exactly until the account is back.
#[test]
fn max_wait_waits_for_the_only_account_and_counts_the_wait() {
    let mut w = World::keys(&["a"]);
    w.config.max_wait = Some(Duration::from_secs(5));
    let mut r = w.rotation(T0);
    r.start();
    let Action::Wait { until } = r.on_response(limited_until(at_ms(2_000)), T0) else {
        panic!("a wait")
    };
    assert!(until >= at_ms(2_000) && until <= at_ms(2_500), "{until:?}");
    assert_eq!(r.on_timer(until), send(2, true));
    assert_eq!(r.waited(), T0.until(until));
    assert_eq!(r.on_response(ok(), until), PASS);

    // A reset beyond what is left of `max_wait` is answered at once.
    let mut r = w.rotation(until);
    r.start();
    let far = until.plus(Duration::from_secs(6));
    let answer = refusal(r.on_response(limited_until(far), until));
    assert_eq!(answer.status, 429);
    assert_eq!(r.waited(), Duration::ZERO);
}

/// Bug guarded: while another request's probe was in flight the pool said
/// "usable now", the wait was zero and never counted, and a request polled
/// every 10 ms past `max_wait`. Now each poll counts, and the request ends
/// when `max_wait` is spent.
#[test]
fn a_probe_in_flight_is_polled_within_max_wait() {
    let mut w = World::keys(&["a"]);
    w.config.max_wait = Some(Duration::from_millis(200));
    let mut first = w.rotation(T0);
    first.start();
    let answer = refusal(first.on_response(limited_until(at_ms(1_000)), T0));
    assert_eq!(answer.status, 429, "a second is more than max_wait");
    // After the cooldown: `prober` takes the probe and holds it.
    let later = at_ms(5_000);
    let mut prober = w.rotation(later);
    assert_eq!(prober.start(), SEND1);
    let mut waiter = w.rotation(later);
    let mut now = later;
    let mut action = waiter.start();
    let mut polls = 0;
    while let Action::Wait { until } = action {
        assert_eq!(now.until(until), PROBE_POLL);
        polls += 1;
        now = until;
        action = waiter.on_timer(now);
    }
    assert_eq!(polls, 4, "200 ms in 50 ms polls");
    assert_eq!(waiter.waited(), Duration::from_millis(200));
    let answer = refusal(action);
    assert_eq!((answer.status, answer.retry_after), (429, Some(1)));
    assert!(
        answer.message.contains("being probed"),
        "{}",
        answer.message
    );
    // When the probe ends in time, the waiter gets the account.
    let mut waiter = w.rotation(now);
    let Action::Wait { until } = waiter.start() else {
        panic!("a poll")
    };
    assert_eq!(prober.on_response(ok(), now), PASS);
    assert_eq!(waiter.on_timer(until), send(1, true));
}

/// Moved from the proxy's `Slot`: a request dropped while it holds an
/// account (the client went away) ends the slot without a penalty.
#[test]
fn a_dropped_rotation_releases_its_slot_without_penalty() {
    let w = World::keys(&["a"]);
    let mut r = w.rotation(T0);
    r.start();
    assert_eq!(w.in_flight(), [1]);
    drop(r);
    assert_eq!(w.in_flight(), [0]);
    let status = w.pool.borrow().account_status(&id("a"), T0).unwrap();
    assert_eq!((status.failures, status.health), (0, Health::Ready));
    let mut r = w.rotation(T0);
    r.start();
    assert_eq!(r.client_gone(), Action::Done);
    assert_eq!(w.in_flight(), [0]);
}

#[test]
fn transport_failures_retry_once_then_rotate_then_answer_502() {
    let w = World::keys(&["a", "b"]);
    let reset = || cls(Class::Transport, None, "reset");
    let mut r = w.rotation(T0);
    r.start();
    assert_eq!(r.on_response(reset(), T0), send(2, false));
    assert_eq!(on(&r), "a");
    assert_eq!(r.on_response(reset(), T0), send(3, true));
    assert_eq!(on(&r), "b");
    assert_eq!(r.on_response(reset(), T0), send(4, false));
    let answer = refusal(r.on_response(reset(), T0));
    assert_eq!(
        (answer.status, answer.kind),
        (502, RefusalKind::Unreachable)
    );
    assert!(answer.message.contains("(reset)"), "{}", answer.message);
    assert_eq!(w.in_flight(), [0, 0]);
}

#[test]
fn an_account_without_a_credential_is_skipped_and_its_slot_released() {
    let w = World::keys(&["a", "b"]);
    let mut r = w.rotation(T0);
    r.start();
    assert_eq!(r.on_unusable(Unusable::NoCredential, T0), SEND1);
    assert_eq!((on(&r), w.in_flight()), ("b".into(), vec![0, 1]));
    assert_eq!(r.on_response(ok(), T0), PASS);
    assert_eq!(r.trace().to_string(), "b=200");
}

/// Bug guarded: after a failed refresh the request moved on still marked
/// "refreshed", so the next OAuth account's 401 was never refreshed.
#[test]
fn the_next_oauth_account_gets_its_own_refresh() {
    let w = World::new(&[("a", AccountKind::Oauth), ("b", AccountKind::Oauth)]);
    let mut r = w.rotation(T0);
    r.start();
    assert_eq!(r.on_response(unauthorized(), T0), Action::Refresh);
    let later = RefreshFailure {
        permanent: false,
        reason: &Reason::fixed("timeout"),
    };
    assert_eq!(r.on_refresh(Err(later), T0), send(2, true));
    assert_eq!(on(&r), "b");
    assert_eq!(r.on_response(unauthorized(), T0), Action::Refresh);
}

/// Issue 11: every account spent for an hour is not "retry soon". The
/// answer is `Spent` (clients show it at once) and says when the first is
/// back, as a duration and a UTC time; a reset within `short_wait` stays a
/// rate limit clients wait out.
#[test]
fn a_long_wait_is_spent_and_a_short_one_is_a_rate_limit() {
    let hour = 3_600_000;
    let mut w = World::keys(&["a", "b"]);
    let mut r = w.rotation(T0);
    r.start();
    r.on_response(limited_until(at_ms(hour)), T0);
    let answer = refusal(r.on_response(limited_until(at_ms(2 * hour)), T0));
    assert_eq!((answer.status, answer.kind), (429, RefusalKind::Spent));
    // The hint plus the pool's small jitter.
    let resets_at = answer.resets_at.expect("a reset time");
    assert!(
        (at_ms(hour)..=at_ms(hour + 60_000)).contains(&resets_at),
        "{resets_at:?}"
    );
    assert_eq!(
        answer.retry_after,
        Some(T0.until(resets_at).as_secs_f64().ceil() as u64)
    );
    let at = crate::fmt::ClockTime {
        at: resets_at,
        now: T0,
    }
    .to_string();
    assert!(
        answer
            .message
            .contains(&format!("usable again in 1h00m (at {at})")),
        "{}",
        answer.message
    );
    // The same hour under a longer short_wait is a plain rate limit.
    drop(r);
    w.config.short_wait = Duration::from_secs(2 * 3600);
    let mut r = w.rotation(T0);
    let answer = refusal(r.start());
    assert_eq!(answer.kind, RefusalKind::Exhausted);
}
