//! Property tests of concurrency caps (`max_in_flight`): up to six requests
//! run interleaved against one pool of capped (and uncapped) accounts under
//! virtual time. Answers passed through hold their account's slot until
//! their "stream" ends (a separate step, or the machine dropped without the
//! driver taking the slot); other instances sharing the cap may say an
//! account is full (`on_busy`). After every step the world checks:
//!
//! - no account ever has more requests in flight than its cap;
//! - every pick is ended exactly once: an account's in-flight count equals
//!   the live requests holding it plus the streams still holding it, and
//!   is zero when everything is over;
//! - being at the cap is not a failure: when every upstream answer is a
//!   success, no account is ever benched, no event is published and no
//!   request is refused (they wait for a slot instead).

use std::cell::{Cell, RefCell};
use std::time::Duration;

use marathon_core::budget::RetryBudget;
use marathon_core::events::Event;
use marathon_core::pool::{Health, Pool, PoolConfig};
use marathon_core::rotation::{Action, Answer, RequestFacts, Rotation, RotationConfig, Shared};
use marathon_core::strategy::Strategy;
use marathon_core::{AccountId, AccountKind, AccountMeta, Class, Classification, UnixMillis};
use proptest::prelude::*;
use proptest::strategy::Strategy as _;

const T0: UnixMillis = UnixMillis(1_764_330_000_000);
const LIVE: usize = 6;

#[derive(Clone, Debug)]
struct Setup {
    /// Each account's cap (`None`: uncapped).
    caps: Vec<Option<u32>>,
    strategy: Strategy,
    /// Only successes upstream (the "not a failure" checks apply).
    all_ok: bool,
}

fn setup_s() -> impl proptest::strategy::Strategy<Value = Setup> {
    (
        prop::collection::vec(
            prop_oneof![3 => (1u32..4).prop_map(Some), 1 => Just(None)],
            1..4,
        ),
        prop::sample::select(Strategy::ALL.to_vec()),
        any::<bool>(),
    )
        .prop_map(|(caps, strategy, all_ok)| Setup {
            caps,
            strategy,
            all_ok,
        })
}

#[derive(Clone, Debug)]
enum Op {
    /// A request arrives (if a place is free).
    Start { replayable: bool },
    /// The send a request waits for is answered (`choice` says how).
    Io { which: usize, choice: u8 },
    /// Another instance holds every slot of the account just picked.
    Busy { which: usize },
    /// A passed-through answer's body ends.
    EndStream { which: usize },
    /// Time passes, never beyond the next timer.
    Advance { ms: u64 },
    /// The earliest timer fires.
    FireTimer,
    /// A client goes away.
    Drop { which: usize },
}

fn op_s() -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(|replayable| Op::Start { replayable }),
        6 => (0..LIVE, any::<u8>()).prop_map(|(which, choice)| Op::Io { which, choice }),
        1 => (0..LIVE).prop_map(|which| Op::Busy { which }),
        3 => (0..LIVE * 2).prop_map(|which| Op::EndStream { which }),
        2 => (0u64..200).prop_map(|ms| Op::Advance { ms }),
        3 => Just(Op::FireTimer),
        1 => (0..LIVE).prop_map(|which| Op::Drop { which }),
    ]
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
        self.published.set(self.published.get() + events.len());
    }
    fn persist_needs_login(&self, _: &AccountId) {}
}

impl World {
    fn new(s: &Setup) -> World {
        let mut config = PoolConfig {
            strategy: s.strategy,
            rate_limit_cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(4),
            transport_penalty: Duration::from_millis(500),
            ..PoolConfig::default()
        };
        for (i, cap) in s.caps.iter().enumerate() {
            if let Some(cap) = cap {
                config.account_max_in_flight.insert(format!("a{i}"), *cap);
            }
        }
        let mut pool = Pool::new("anthropic", config, 7);
        for i in 0..s.caps.len() {
            pool.upsert(AccountMeta {
                id: id(i),
                provider: "anthropic".into(),
                label: format!("a{i}"),
                kind: AccountKind::ApiKey,
                priority: 0,
                enabled: true,
            });
        }
        World {
            pool: RefCell::new(pool),
            budget: RefCell::new(RetryBudget::new(Duration::from_secs(10), 1_000, 10.0)),
            // `max_wait` off: waiting for a slot is bounded by the deadline.
            config: RotationConfig {
                provider: "anthropic".into(),
                ..RotationConfig::default()
            },
            now: Cell::new(T0),
            published: Cell::new(0),
        }
    }
}

enum Pending {
    Send,
    Wait(UnixMillis),
}

struct Live<'w> {
    rotation: Rotation<'w, &'w World>,
    pending: Pending,
}

struct Run<'w> {
    world: &'w World,
    setup: Setup,
    live: Vec<Option<Live<'w>>>,
    /// Answers whose body still holds its account's slot.
    streams: Vec<AccountId>,
}

fn reply(choice: u8, all_ok: bool) -> Classification {
    let c = |class, status, reason: &'static str| Classification {
        class,
        status,
        reason: reason.into(),
        reset: None,
        usage: vec![],
    };
    match choice % 4 {
        _ if all_ok => c(Class::Success, Some(200), "ok"),
        0 => c(Class::RateLimited, Some(429), "rate_limit_error"),
        1 => c(Class::Transport, None, "connect"),
        _ => c(Class::Success, Some(200), "ok"),
    }
}

impl<'w> Run<'w> {
    fn follow(&mut self, slot: usize, action: Action, choice: u8) -> Result<(), TestCaseError> {
        let now = self.world.now.get();
        match action {
            Action::Send { .. } => {
                let live = self.live[slot].as_mut().unwrap();
                prop_assert!(live.rotation.holding().is_some(), "send without a slot");
                live.pending = Pending::Send;
            }
            Action::Wait { until } => {
                prop_assert!(until > now);
                self.live[slot].as_mut().unwrap().pending = Pending::Wait(until);
            }
            Action::Refresh => prop_assert!(false, "no OAuth account here"),
            Action::Respond(answer) => {
                let mut live = self.live[slot].take().unwrap();
                if self.setup.all_ok {
                    prop_assert!(
                        matches!(answer, Answer::PassThrough),
                        "refused with only successes upstream: {answer:?}"
                    );
                }
                if matches!(answer, Answer::PassThrough) {
                    let account = live.rotation.account().unwrap().id.clone();
                    let capped = live.rotation.account().unwrap().cap.is_some();
                    // Sometimes the driver takes the slot to the body, sometimes
                    // it is dropped with the machine.
                    if choice & 0x80 == 0 {
                        let held = live.rotation.take_stream_slot();
                        prop_assert_eq!(held.is_some(), capped);
                        if let Some(held) = held {
                            prop_assert_eq!(&held.account, &account);
                            self.streams.push(held.account);
                        }
                    }
                }
            }
            Action::Done => {
                self.live[slot] = None;
            }
        }
        Ok(())
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        let w = self.world;
        let now = w.now.get();
        match op {
            Op::Start { replayable } => {
                if let Some(slot) = self.live.iter().position(Option::is_none) {
                    let mut rotation = Rotation::new(
                        w,
                        &w.config,
                        RequestFacts {
                            replayable,
                            session: None,
                            now,
                        },
                    );
                    let action = rotation.start();
                    self.live[slot] = Some(Live {
                        rotation,
                        pending: Pending::Send,
                    });
                    self.follow(slot, action, 0)?;
                }
            }
            Op::Io { which, choice } => {
                if let Some(live) = self.live[which].as_mut()
                    && matches!(live.pending, Pending::Send)
                {
                    let action = live
                        .rotation
                        .on_response(reply(choice, self.setup.all_ok), now);
                    self.follow(which, action, choice)?;
                }
            }
            Op::Busy { which } => {
                if let Some(live) = self.live[which].as_mut()
                    && matches!(live.pending, Pending::Send)
                    && live.rotation.account().is_some_and(|a| a.cap.is_some())
                {
                    let action = live.rotation.on_busy(now);
                    self.follow(which, action, 0)?;
                }
            }
            Op::EndStream { which } => {
                if which < self.streams.len() {
                    let account = self.streams.swap_remove(which);
                    w.pool.borrow_mut().release(&account);
                }
            }
            Op::Advance { ms } => {
                let mut to = now.plus(Duration::from_millis(ms));
                if let Some(t) = self.earliest_timer() {
                    to = to.min(t.1);
                }
                w.now.set(to);
            }
            Op::FireTimer => self.fire()?,
            Op::Drop { which } => {
                self.live[which] = None;
            }
        }
        self.check()
    }

    fn earliest_timer(&self) -> Option<(usize, UnixMillis)> {
        self.live
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match l.as_ref()?.pending {
                Pending::Wait(until) => Some((i, until)),
                Pending::Send => None,
            })
            .min_by_key(|&(_, t)| t)
    }

    fn fire(&mut self) -> Result<(), TestCaseError> {
        let Some((slot, until)) = self.earliest_timer() else {
            return Ok(());
        };
        self.world.now.set(until);
        let action = self.live[slot].as_mut().unwrap().rotation.on_timer(until);
        self.follow(slot, action, 0)
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let w = self.world;
        let pool = w.pool.borrow();
        for status in pool.status(w.now.get()) {
            let i: usize = status.label[1..].parse().unwrap();
            let holders = self
                .live
                .iter()
                .flatten()
                .filter(|l| l.rotation.holding() == Some(&status.id))
                .count()
                + self.streams.iter().filter(|a| **a == status.id).count();
            prop_assert_eq!(
                status.in_flight as usize,
                holders,
                "slots of {}",
                status.label
            );
            prop_assert_eq!(status.max_in_flight, self.setup.caps[i]);
            if let Some(cap) = self.setup.caps[i] {
                prop_assert!(
                    status.in_flight <= cap,
                    "{} in flight on {} (cap {cap})",
                    status.in_flight,
                    status.label
                );
            }
            if self.setup.all_ok {
                prop_assert!(
                    !matches!(status.health, Health::Cooling { .. }),
                    "{} benched",
                    status.label
                );
            }
        }
        if self.setup.all_ok {
            prop_assert_eq!(w.published.get(), 0, "events published");
        }
        Ok(())
    }

    /// Ends every stream, then lets every request finish (successes, each
    /// stream ended at once).
    fn finish(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..100_000 {
            if let Some(account) = self.streams.pop() {
                self.world.pool.borrow_mut().release(&account);
            } else if let Some(slot) = self
                .live
                .iter()
                .position(|l| matches!(l, Some(l) if matches!(l.pending, Pending::Send)))
            {
                let now = self.world.now.get();
                let ok = reply(2, true);
                let action = self.live[slot]
                    .as_mut()
                    .unwrap()
                    .rotation
                    .on_response(ok, now);
                self.follow(slot, action, 0)?;
            } else if self.earliest_timer().is_some() {
                self.fire()?;
            } else {
                break;
            }
            self.check()?;
        }
        prop_assert!(self.live.iter().all(Option::is_none), "requests left over");
        for status in self.world.pool.borrow().status(self.world.now.get()) {
            prop_assert_eq!(status.in_flight, 0, "{} left in flight", status.label);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn caps_hold_and_every_slot_ends_once(
        setup in setup_s(),
        ops in prop::collection::vec(op_s(), 1..150),
    ) {
        let world = World::new(&setup);
        let mut run = Run {
            world: &world,
            setup,
            live: (0..LIVE).map(|_| None).collect(),
            streams: Vec::new(),
        };
        for op in ops {
            run.step(op)?;
        }
        run.finish()?;
    }
}

/// The simplest case, spelled out: one account capped at 2, three requests.
/// The third waits for a slot (no refusal, no event), and gets it when one
/// of the first two answers' streams ends.
#[test]
fn a_request_over_the_cap_waits_for_a_slot() {
    let setup = Setup {
        caps: vec![Some(2)],
        strategy: Strategy::Sticky,
        all_ok: true,
    };
    let w = World::new(&setup);
    let now = T0;
    let facts = RequestFacts {
        replayable: true,
        session: None,
        now,
    };
    let ok = reply(2, true);
    let mut first = Rotation::new(&w, &w.config, facts);
    let mut second = Rotation::new(&w, &w.config, facts);
    let mut third = Rotation::new(&w, &w.config, facts);
    assert!(matches!(first.start(), Action::Send { .. }));
    assert!(matches!(second.start(), Action::Send { .. }));
    let Action::Wait { until } = third.start() else {
        panic!("the third request should wait for a slot");
    };
    assert_eq!(until, now.plus(marathon_core::rotation::SLOT_POLL));
    // The first answer streams: its slot is still taken.
    assert_eq!(
        first.on_response(ok.clone(), now),
        Action::Respond(Answer::PassThrough)
    );
    let stream = first.take_stream_slot().expect("a capped account's slot");
    assert!(matches!(third.on_timer(until), Action::Wait { .. }));
    // The stream ends: the third request gets its slot.
    w.pool.borrow_mut().release(&stream.account);
    let later = until.plus(marathon_core::rotation::SLOT_POLL);
    assert!(matches!(third.on_timer(later), Action::Send { .. }));
    assert_eq!(w.published.get(), 0);
    let status = &w.pool.borrow().status(later)[0];
    assert_eq!((status.in_flight, status.health), (2, Health::Ready));
}
