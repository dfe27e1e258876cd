//! Property tests of the rotation machine: several requests run interleaved
//! against one pool in a scripted world under virtual time (timers fire
//! exactly when asked; upstream answers, refresh results and missing
//! credentials come from the script; requests are dropped half-way as
//! clients go away). After every step and at the end the world checks what
//! the machine promises:
//!
//! - exactly one record or release per pick: each account's in-flight count
//!   equals the number of live requests holding it, at every step (a second
//!   record would steal another request's slot, a missing one would leave
//!   it taken), and is zero when every request is over;
//! - attempts (requests actually sent) ≤ the attempt limit;
//! - `max_wait` honoured exactly: the time a request spends waiting for
//!   recovery (measured by the world: waits it was told to do while holding
//!   no account) never exceeds `max_wait`, and "all accounts unavailable" is
//!   answered only when waiting for the soonest reset would exceed it;
//! - the budget: every retry that could amplify load withdraws exactly one
//!   retry from the budget, and nothing else withdraws;
//! - answers: a pass-through only as the direct answer to a response; an
//!   exhaustion answer never with a ready account nor "retry in 0 s".

use std::cell::{Cell, RefCell};
use std::time::Duration;

use marathon_core::budget::RetryBudget;
use marathon_core::decision::RetryPolicy;
use marathon_core::events::Event;
use marathon_core::pool::{Health, Pool, PoolConfig, SessionKey};
use marathon_core::rotation::{
    Action, Answer, PROBE_POLL, RefreshFailure, RefusalKind, RequestFacts, Rotation,
    RotationConfig, Shared, Unusable, stream_error,
};
use marathon_core::strategy::Strategy;
use marathon_core::{
    AccountId, AccountKind, AccountMeta, Class, Classification, HintSource, ResetHint, UnixMillis,
};
use proptest::prelude::*;
use proptest::strategy::Strategy as _;

const T0: UnixMillis = UnixMillis(1_764_330_000_000);

#[derive(Clone, Copy, Debug)]
enum Reply {
    Ok,
    RateLimited { hint_ms: Option<u64> },
    Unusable,
    Auth,
    Forbidden,
    Provider { retry_after_ms: Option<u64> },
    Transport,
    Request,
}

fn reply_s() -> impl proptest::strategy::Strategy<Value = Reply> {
    prop_oneof![
        5 => Just(Reply::Ok),
        4 => prop::option::of(0u64..3_000).prop_map(|hint_ms| Reply::RateLimited { hint_ms }),
        1 => Just(Reply::Unusable),
        2 => Just(Reply::Auth),
        1 => Just(Reply::Forbidden),
        3 => prop::option::of(0u64..8_000).prop_map(|retry_after_ms| Reply::Provider { retry_after_ms }),
        2 => Just(Reply::Transport),
        1 => Just(Reply::Request),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    /// A new request arrives (if fewer than three are live).
    Start {
        replayable: bool,
        session: Option<u8>,
    },
    /// The I/O a live request waits for completes (`choice` picks how).
    Io { which: usize, choice: u8 },
    /// Time passes, never beyond the next timer.
    Advance { ms: u64 },
    /// The earliest timer fires, exactly on time.
    FireTimer,
    /// A client goes away.
    Drop { which: usize },
    /// An error event arrives inside a stream already passed through.
    StreamError { acct: usize },
}

fn op_s() -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        3 => (prop_oneof![4 => Just(true), 1 => Just(false)], prop::option::of(0u8..2))
            .prop_map(|(replayable, session)| Op::Start { replayable, session }),
        8 => (0usize..3, any::<u8>()).prop_map(|(which, choice)| Op::Io { which, choice }),
        2 => prop_oneof![0u64..100, 0u64..5_000].prop_map(|ms| Op::Advance { ms }),
        3 => Just(Op::FireTimer),
        1 => (0usize..3).prop_map(|which| Op::Drop { which }),
        1 => (0usize..4).prop_map(|acct| Op::StreamError { acct }),
    ]
}

#[derive(Clone, Debug)]
struct Setup {
    accounts: usize,
    oauth: u8,
    strategy: Strategy,
    max_attempts: Option<u32>,
    max_wait_ms: Option<u64>,
    deadline_ms: u64,
    provider_rotate: bool,
    transport_retries_same: u32,
    budget_empty: bool,
}

fn setup_s() -> impl proptest::strategy::Strategy<Value = Setup> {
    (
        1usize..5,
        any::<u8>(),
        prop::sample::select(Strategy::ALL.to_vec()),
        prop::option::of(1u32..7),
        prop::option::of(prop_oneof![0u64..300, 0u64..6_000]),
        prop_oneof![3 => Just(600_000u64), 1 => 1_000u64..20_000],
        any::<bool>(),
        0u32..3,
        any::<bool>(),
    )
        .prop_map(
            |(
                accounts,
                oauth,
                strategy,
                max_attempts,
                max_wait_ms,
                deadline_ms,
                provider_rotate,
                transport_retries_same,
                budget_empty,
            )| Setup {
                accounts,
                oauth,
                strategy,
                max_attempts,
                max_wait_ms,
                deadline_ms,
                provider_rotate,
                transport_retries_same,
                budget_empty,
            },
        )
}

fn id(i: usize) -> AccountId {
    AccountId(format!("acct-{i}").into())
}

struct World {
    pool: RefCell<Pool>,
    budget: RefCell<RetryBudget>,
    config: RotationConfig,
    now: Cell<UnixMillis>,
    published: Cell<usize>,
}

impl Shared for World {
    fn pool<R>(&self, f: impl FnOnce(&mut Pool) -> R) -> R {
        f(&mut self.pool.borrow_mut())
    }
    fn budget<R>(&self, f: impl FnOnce(&mut RetryBudget) -> R) -> R {
        f(&mut self.budget.borrow_mut())
    }
    fn publish(&self, events: Vec<Event>) {
        assert!(!events.is_empty());
        self.published.set(self.published.get() + events.len());
    }
    fn persist_needs_login(&self, _: &AccountId) {}
}

impl World {
    fn new(s: &Setup) -> Self {
        let pool_config = PoolConfig {
            strategy: s.strategy,
            rate_limit_cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(4),
            unusable_cooldown: Duration::from_secs(3),
            auth_failure_cooldown: Duration::from_secs(2),
            transport_penalty: Duration::from_millis(500),
            ..PoolConfig::default()
        };
        let mut pool = Pool::new("anthropic", pool_config, 11);
        for i in 0..s.accounts {
            pool.upsert(AccountMeta {
                id: id(i),
                provider: "anthropic".into(),
                label: format!("a{i}"),
                kind: if s.oauth & (1 << i) != 0 {
                    AccountKind::Oauth
                } else {
                    AccountKind::ApiKey
                },
                priority: 0,
                enabled: true,
            });
        }
        let budget = if s.budget_empty {
            RetryBudget::new(Duration::from_secs(10), 0, 0.0)
        } else {
            RetryBudget::new(Duration::from_secs(10), 1_000, 10.0)
        };
        World {
            pool: RefCell::new(pool),
            budget: RefCell::new(budget),
            config: RotationConfig {
                provider: "anthropic".into(),
                retry: RetryPolicy {
                    max_attempts: s.max_attempts,
                    deadline: Duration::from_millis(s.deadline_ms),
                    transport_retries_same: s.transport_retries_same,
                    provider_rotate: s.provider_rotate,
                    ..RetryPolicy::default()
                },
                max_wait: s.max_wait_ms.map(Duration::from_millis),
                ..RotationConfig::default()
            },
            now: Cell::new(T0),
            published: Cell::new(0),
        }
    }

    fn now(&self) -> UnixMillis {
        self.now.get()
    }

    fn available(&self) -> u64 {
        self.budget.borrow_mut().available(self.now())
    }
}

fn classify(r: Reply, now: UnixMillis) -> Classification {
    let c = |class, status: Option<u16>, reason: &'static str| Classification {
        class,
        status,
        reason: reason.into(),
        reset: None,
        usage: vec![],
    };
    let hint = |ms: Option<u64>| {
        ms.map(|ms| ResetHint {
            at: now.plus(Duration::from_millis(ms)),
            source: HintSource::RetryAfterMs,
        })
    };
    match r {
        Reply::Ok => c(Class::Success, Some(200), "ok"),
        Reply::RateLimited { hint_ms } => Classification {
            reset: hint(hint_ms),
            ..c(Class::RateLimited, Some(429), "rate_limit_error")
        },
        Reply::Unusable => c(Class::Unusable, Some(429), "insufficient_quota"),
        Reply::Auth => c(Class::Auth, Some(401), "authentication_error"),
        Reply::Forbidden => c(Class::Forbidden, Some(403), "permission_error"),
        Reply::Provider { retry_after_ms } => Classification {
            reset: hint(retry_after_ms),
            ..c(Class::Provider, Some(529), "overloaded_error")
        },
        Reply::Transport => c(Class::Transport, None, "connect"),
        Reply::Request => c(Class::Request, Some(400), "invalid_request_error"),
    }
}

/// What a live request waits for.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pending {
    Send,
    Refresh,
    /// A timer; `recovery` when the request held no account as it began.
    Wait {
        until: UnixMillis,
        since: UnixMillis,
        recovery: bool,
    },
}

/// A request in flight, with what the world measured of it.
struct Live<'w> {
    rotation: Rotation<'w, &'w World>,
    pending: Pending,
    replayable: bool,
    started: UnixMillis,
    sends: u32,
    /// The account of the last send.
    last_sent: Option<AccountId>,
    recovery_waited: Duration,
}

/// The world's record of everything that went wrong.
type Check = Result<(), TestCaseError>;

struct Run<'w> {
    world: &'w World,
    live: Vec<Option<Live<'w>>>,
    replies: std::vec::IntoIter<Reply>,
}

impl<'w> Run<'w> {
    fn start(&mut self, replayable: bool, session: Option<u8>) -> Check {
        let Some(slot) = self.live.iter().position(Option::is_none) else {
            return Ok(());
        };
        let w = self.world;
        let mut rotation = Rotation::new(
            w,
            &w.config,
            RequestFacts {
                replayable,
                session: session.map(|s| SessionKey(u64::from(s))),
                now: w.now(),
            },
        );
        let action = rotation.start();
        self.live[slot] = Some(Live {
            rotation,
            pending: Pending::Send,
            replayable,
            started: w.now(),
            sends: 0,
            last_sent: None,
            recovery_waited: Duration::ZERO,
        });
        self.follow(slot, action, false)
    }

    /// Applies `action` to request `slot`; `after_response`: it answers a
    /// response just reported.
    fn follow(&mut self, slot: usize, action: Action, after_response: bool) -> Check {
        let w = self.world;
        let live = self.live[slot].as_mut().unwrap();
        match action {
            Action::Send { attempt, picked } => {
                prop_assert!(attempt >= 1);
                live.pending = Pending::Send;
                let holding = live.rotation.holding().cloned();
                prop_assert!(holding.is_some(), "send without a slot");
                if !picked {
                    prop_assert_eq!(&holding, &live.last_sent, "a retry on another account");
                }
                live.last_sent = holding;
            }
            Action::Refresh => live.pending = Pending::Refresh,
            Action::Wait { until } => {
                prop_assert!(until > w.now(), "a wait of nothing");
                live.pending = Pending::Wait {
                    until,
                    since: w.now(),
                    recovery: live.rotation.holding().is_none(),
                };
            }
            Action::Respond(answer) => {
                let live = self.live[slot].take().unwrap();
                return self.answered(live, answer, after_response);
            }
            Action::Done => {
                self.live[slot] = None;
            }
        }
        Ok(())
    }

    fn answered(&self, live: Live<'w>, answer: Answer, after_response: bool) -> Check {
        let w = self.world;
        prop_assert!(live.rotation.holding().is_none(), "answered holding a slot");
        prop_assert!(live.rotation.is_done());
        match answer {
            Answer::PassThrough => {
                prop_assert!(after_response, "a pass-through of no response");
            }
            Answer::Refuse(r) => {
                if r.kind == RefusalKind::Exhausted {
                    let ex = r.accounts.as_ref().unwrap();
                    prop_assert_eq!(r.status, 429);
                    prop_assert!(r.retry_after.unwrap() >= 1);
                    prop_assert!(
                        !ex.accounts.iter().any(|a| a.health == Health::Ready),
                        "exhausted with a ready account: {}",
                        r.message
                    );
                    // It would have waited, had the soonest reset fit (and
                    // an attempt been left to make after it).
                    let limit = w.config.retry.attempt_limit(w.pool.borrow().len() as u32);
                    if let (Some(max_wait), Some(soonest), true, true) = (
                        w.config.max_wait,
                        ex.soonest,
                        live.replayable,
                        live.sends < limit,
                    ) {
                        let need = Some(w.now().until(soonest))
                            .filter(|d| !d.is_zero())
                            .unwrap_or(PROBE_POLL);
                        let deadline_ok =
                            w.now().plus(need) < live.started.plus(w.config.retry.deadline);
                        prop_assert!(
                            live.recovery_waited + need > max_wait || !deadline_ok,
                            "answered exhausted though {need:?} more fit max_wait {max_wait:?} (waited {:?})",
                            live.recovery_waited
                        );
                    }
                }
                if r.kind == RefusalKind::GaveUp {
                    prop_assert_eq!(r.status, 503);
                    prop_assert!(r.retry_after.is_none());
                }
            }
        }
        Ok(())
    }

    fn io(&mut self, slot: usize, choice: u8) -> Check {
        let w = self.world;
        let Some(live) = self.live[slot].as_mut() else {
            return Ok(());
        };
        let now = w.now();
        let (action, after_response) = match live.pending {
            Pending::Wait { .. } => return Ok(()),
            Pending::Refresh => {
                let result = match choice % 4 {
                    0 => Err(RefreshFailure {
                        permanent: true,
                        reason: &marathon_core::Reason::fixed("invalid_grant"),
                    }),
                    1 => Err(RefreshFailure {
                        permanent: false,
                        reason: &marathon_core::Reason::fixed("timeout"),
                    }),
                    _ => Ok(()),
                };
                (live.rotation.on_refresh(result, now), false)
            }
            Pending::Send if choice.is_multiple_of(16) => (
                live.rotation.on_unusable(Unusable::NoCredential, now),
                false,
            ),
            Pending::Send if choice % 16 == 1 => {
                let failure = RefreshFailure {
                    permanent: choice & 0x20 != 0,
                    reason: &marathon_core::Reason::fixed("invalid_grant"),
                };
                (
                    live.rotation.on_unusable(Unusable::Token(failure), now),
                    false,
                )
            }
            Pending::Send => {
                let reply = self.replies.next().unwrap_or(Reply::Ok);
                let c = classify(reply, now);
                let class = c.class;
                let before = live.rotation.holding().cloned();
                live.sends += 1;
                let limit = w.config.retry.attempt_limit(w.pool.borrow().len() as u32);
                prop_assert!(live.sends <= limit, "{} sends, limit {limit}", live.sends);
                let budget_before = w.available();
                let action = live.rotation.on_response(c, now);
                let budget_after = w.available();
                let paid = match &action {
                    Action::Refresh => true,
                    Action::Send { .. } | Action::Wait { .. } => {
                        match live.rotation.holding() {
                            // Same account again, or another one away from a
                            // failure that was not the account's.
                            Some(next) => Some(next) == before.as_ref() || !class.blames_account(),
                            // A wait for recovery: the only account failed.
                            None => false,
                        }
                    }
                    _ => false,
                };
                // A retry that could amplify load is paid for; a rotation
                // that then found no account may have paid too.
                let withdrawn = budget_before - budget_after;
                prop_assert!(
                    withdrawn <= 1 && (!paid || withdrawn == 1),
                    "{withdrawn} withdrawn after {class:?} → {action:?}"
                );
                (action, true)
            }
        };
        self.follow(slot, action, after_response)
    }

    fn earliest_timer(&self) -> Option<(usize, UnixMillis)> {
        self.live
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match l.as_ref()?.pending {
                Pending::Wait { until, .. } => Some((i, until)),
                _ => None,
            })
            .min_by_key(|&(_, until)| until)
    }

    fn advance(&mut self, ms: u64) {
        let w = self.world;
        let mut to = w.now().plus(Duration::from_millis(ms));
        if let Some((_, until)) = self.earliest_timer() {
            to = to.min(until);
        }
        w.now.set(to);
    }

    fn fire(&mut self) -> Check {
        let w = self.world;
        let Some((slot, until)) = self.earliest_timer() else {
            return Ok(());
        };
        w.now.set(until);
        let live = self.live[slot].as_mut().unwrap();
        let Pending::Wait {
            since, recovery, ..
        } = live.pending
        else {
            unreachable!()
        };
        if recovery {
            live.recovery_waited += since.until(until);
            if let Some(max_wait) = w.config.max_wait {
                prop_assert!(
                    live.recovery_waited <= max_wait,
                    "waited {:?} for recovery, max_wait {max_wait:?}",
                    live.recovery_waited
                );
            } else {
                prop_assert!(false, "a recovery wait without max_wait");
            }
        }
        let action = live.rotation.on_timer(until);
        self.follow(slot, action, false)
    }

    /// Exactly one record or release per pick: every account's in-flight
    /// count is the number of live requests holding it.
    fn check_slots(&self) -> Check {
        let w = self.world;
        let pool = w.pool.borrow();
        for status in pool.status(w.now()) {
            let holders = self
                .live
                .iter()
                .flatten()
                .filter(|l| l.rotation.holding() == Some(&status.id))
                .count();
            prop_assert_eq!(
                status.in_flight as usize,
                holders,
                "{} in flight on {}",
                status.in_flight,
                status.label
            );
        }
        Ok(())
    }

    fn step(&mut self, op: Op) -> Check {
        match op {
            Op::Start {
                replayable,
                session,
            } => self.start(replayable, session)?,
            Op::Io { which, choice } => self.io(which, choice)?,
            Op::Advance { ms } => self.advance(ms),
            Op::FireTimer => self.fire()?,
            Op::Drop { which } => {
                if let Some(mut live) = self.live[which].take()
                    && which % 2 == 0
                {
                    prop_assert_eq!(live.rotation.client_gone(), Action::Done);
                }
            }
            Op::StreamError { acct } => {
                if acct < self.world.pool.borrow().len() {
                    let c = classify(
                        Reply::Provider {
                            retry_after_ms: None,
                        },
                        self.world.now(),
                    );
                    stream_error(&self.world, &id(acct), &c, self.world.now());
                }
            }
        }
        self.check_slots()
    }

    /// Lets every live request finish: upstreams answer 200, refreshes
    /// work, timers fire in order.
    fn finish(&mut self) -> Check {
        for _ in 0..10_000 {
            let io = |l: &Option<Live<'_>>| matches!(l, Some(l) if matches!(l.pending, Pending::Send | Pending::Refresh));
            if let Some(slot) = self.live.iter().position(io) {
                self.replies = Vec::new().into_iter();
                self.io(slot, 2)?;
            } else if self.earliest_timer().is_some() {
                self.fire()?;
            } else {
                break;
            }
            self.check_slots()?;
        }
        prop_assert!(self.live.iter().all(Option::is_none), "requests left over");
        for status in self.world.pool.borrow().status(self.world.now()) {
            prop_assert_eq!(status.in_flight, 0, "{} left in flight", status.label);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_machine_keeps_its_promises(
        setup in setup_s(),
        replies in prop::collection::vec(reply_s(), 0..120),
        ops in prop::collection::vec(op_s(), 1..120),
    ) {
        let world = World::new(&setup);
        let mut run = Run {
            world: &world,
            live: vec![None, None, None],
            replies: replies.into_iter(),
        };
        for op in ops {
            run.step(op)?;
        }
        run.finish()?;
    }
}
