//! One provider's accounts: their health, and which one serves the next request.
//!
//! A [`Pool`] is plain data behind `&mut self`: the proxy holds it under a
//! short lock, calls [`Pool::pick`] before an attempt and [`Pool::record`]
//! (or [`Pool::release`]) after it. Time comes in as an argument.
//!
//! ## Health
//!
//! - **ready**: usable; ordered by the [`Strategy`].
//! - **cooling** until an instant: benched after an account-scoped failure.
//! - **probing**: the cooldown is over; exactly one request at a time may try
//!   the account (its pick says `probe: true`). Success makes it ready again
//!   (a `recovered` event); an account-scoped failure re-cools it with a longer
//!   backoff.
//! - **needs-login**: only [`Pool::mark_needs_login`] puts an account here
//!   (the proxy first tries a refresh), and only a login
//!   ([`Pool::mark_ready`], [`Pool::refreshed`]) takes it out.
//! - **disabled**: `enabled: false` in its [`AccountMeta`].
//!
//! ## Cost of a pick
//!
//! Selection is O(log n) in the number of accounts (O(1) for round-robin
//! and least-used) and never scans them all: usable accounts live in one
//! ordered set keyed by `(tier, strategy key)`, so the answer is its first
//! element not in the request's (small) exclude list. Round-robin keeps a
//! queue per tier instead, least-used a queue per tier and in-flight count
//! (the lowest non-empty one is found from a bitmap); a pick or a finished
//! request moves an account to the end of a queue.
//! Cooldowns live in a second ordered set of `(until, account)`, promoted
//! lazily at the start of each pick the way mini-redis expires keys; hot
//! accounts (see [`PoolConfig::proactive_threshold`]) carry a third set of
//! the instants their usage windows reset.
//!
//! ## Protocol with the proxy
//!
//! Every successful `pick` takes a slot (an in-flight count, or the probe)
//! that exactly one `record` or `release` ends. Outcomes of same-account
//! retries inside one request (a refresh-and-retry after a 401, the one
//! transport retry) need not be recorded separately: record the final outcome
//! on that account. A `record` that arrives for an account picked before its
//! cooldown began (parallel requests) still ends a slot; its failure counts
//! once within [`PoolConfig::dedupe_window`] and while the account is cooling.
//! The probe slot of a recovering account is free again when nothing is in
//! flight on it any more, so there is never more than one probe at a time.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;

// Seeded per process; several times faster than SipHash on short ids, and
// the ids are ours, not an attacker's.
use foldhash::fast::RandomState;
use std::time::Duration;

use crate::account::{AccountId, AccountKind, AccountMeta};
use crate::clock::UnixMillis;
use crate::cooldown::{self, cooldown_for};
use crate::events::{Event, EventKind};
use crate::forecast::{self, Tracker, WindowForecast};
use crate::outcome::{Class, Classification, UsageWindow};
use crate::reason::Reason;
use crate::strategy::Strategy;

/// How many session ids the affinity map remembers before evicting.
pub const SESSION_CAPACITY: usize = 10_000;

/// A pool's tuning. `Default` gives the documented defaults.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PoolConfig {
    /// How the next account is chosen among ready ones.
    pub strategy: Strategy,
    /// Backoff base when a 429 carries no reset hint
    /// ([`defaults::RATE_LIMIT_COOLDOWN`](crate::defaults::RATE_LIMIT_COOLDOWN), 60 s).
    pub rate_limit_cooldown: Duration,
    /// Backoff cap (default 1 h).
    pub max_cooldown: Duration,
    /// Rest after billing, `insufficient_quota`, 402 and the like (default 6 h).
    pub unusable_cooldown: Duration,
    /// Rest after a 403, or a 401 that was not fixed by a refresh
    /// ([`defaults::AUTH_FAILURE_COOLDOWN`](crate::defaults::AUTH_FAILURE_COOLDOWN), 5 min).
    pub auth_failure_cooldown: Duration,
    /// Short rest after repeated transport failures (default 2 s).
    pub transport_penalty: Duration,
    /// Failures of one account within this window after it was benched count
    /// once, so parallel requests do not double its backoff (default 2 s).
    pub dedupe_window: Duration,
    /// An account with a usage window at or above this utilisation is picked
    /// only when no other usable account exists (e.g. 0.95; default `None`,
    /// off, as in the config: moving early costs the provider's prompt cache,
    /// which is per account).
    pub proactive_threshold: Option<f64>,
    /// Jitter as a fraction of a computed backoff (default 0.1).
    pub jitter: f64,
    /// The most requests one account serves at once (`None`: no cap). An
    /// account at its cap is not picked until one of its slots ends; it is
    /// not a failure (no cooldown, no event).
    pub max_in_flight: Option<u32>,
    /// Caps of single accounts, by label, over `max_in_flight`.
    pub account_max_in_flight: std::collections::BTreeMap<String, u32>,
}

impl PoolConfig {
    /// The cap of the account labelled `label`, if it has one.
    pub fn cap_of(&self, label: &str) -> Option<u32> {
        self.account_max_in_flight
            .get(label)
            .copied()
            .or(self.max_in_flight)
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            strategy: crate::defaults::STRATEGY,
            rate_limit_cooldown: crate::defaults::RATE_LIMIT_COOLDOWN,
            max_cooldown: Duration::from_secs(3600),
            unusable_cooldown: Duration::from_secs(6 * 3600),
            auth_failure_cooldown: crate::defaults::AUTH_FAILURE_COOLDOWN,
            transport_penalty: Duration::from_secs(2),
            dedupe_window: Duration::from_secs(2),
            proactive_threshold: crate::defaults::PROACTIVE_THRESHOLD,
            jitter: 0.1,
            max_in_flight: None,
            account_max_in_flight: std::collections::BTreeMap::new(),
        }
    }
}

/// An account's health as shown to people and other processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    /// Usable.
    Ready,
    /// Benched until `until`.
    Cooling {
        /// When the account will be probed again.
        until: UnixMillis,
    },
    /// The cooldown is over; the next request probes it (one at a time).
    Probing,
    /// Needs a new login or key.
    NeedsLogin,
    /// Disabled by the user.
    Disabled,
}

impl Health {
    /// `ready`, `cooling`, `probing`, `needs_login`, `disabled`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Ready => "ready",
            Health::Cooling { .. } => "cooling",
            Health::Probing => "probing",
            Health::NeedsLogin => "needs_login",
            Health::Disabled => "disabled",
        }
    }
}

/// A client's session, as a fixed-size key for session affinity: the caller
/// hashes the session id it was sent (with a keyed hasher), so an id of any
/// length costs the pool eight bytes. Two ids with the same key share an
/// account, which is harmless.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey(pub u64);

/// What a request asks of [`Pool::pick`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PickRequest<'a> {
    /// The client's session (from a header), for session affinity.
    pub session: Option<SessionKey>,
    /// Accounts this request already tried; never picked again.
    pub exclude: &'a [AccountId],
}

/// The answer of [`Pool::pick`].
#[derive(Clone, Debug, PartialEq)]
pub enum Pick {
    /// Use this account.
    Account {
        /// Its id (to look up credentials, and to `record`).
        id: AccountId,
        /// Its label (for logs, traces, events); shared, not copied.
        label: Arc<str>,
        /// OAuth or API key (an OAuth account's 401 is refreshed once).
        kind: AccountKind,
        /// Whether this request is the one probe of an account whose cooldown ended.
        probe: bool,
        /// The account's concurrency cap (`max_in_flight`), if it has one.
        cap: Option<u32>,
    },
    /// No account can take the request now.
    Exhausted(Exhausted),
}

/// Why nothing could be picked, and when to try again.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Exhausted {
    /// The earliest time any enabled account that does not need a login
    /// becomes usable; `None` when none will without someone acting.
    pub soonest: Option<UnixMillis>,
    /// Every account's status, for the error body.
    pub accounts: Vec<AccountStatus>,
}

impl Exhausted {
    /// The matching `exhausted` event.
    pub fn event(&self, at: UnixMillis, provider: impl Into<String>) -> Event {
        Event::new(
            at,
            provider,
            EventKind::Exhausted {
                soonest: self.soonest,
            },
        )
    }
}

/// One account's state, for `marathon status`, the status endpoint and
/// exhaustion bodies. Carries labels and counters, never credentials.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AccountStatus {
    /// Stable id.
    pub id: AccountId,
    /// Human name.
    pub label: String,
    /// OAuth or API key.
    pub kind: AccountKind,
    /// Lower is preferred.
    pub priority: i32,
    /// Whether the user enabled it.
    pub enabled: bool,
    /// Health at the time of the call.
    pub health: Health,
    /// Time left on the cooldown (serialized as whole milliseconds).
    #[serde(rename = "cooldown_remaining_ms", with = "opt_millis", default)]
    pub cooldown_remaining: Option<Duration>,
    /// Successful responses recorded.
    pub successes: u64,
    /// Failed outcomes recorded (any class but success, request and cancelled).
    pub failures: u64,
    /// Consecutive account-scoped failures; drives the backoff.
    #[serde(default)]
    pub failure_streak: u32,
    /// The class of the last recorded outcome.
    pub last_class: Option<crate::outcome::Class>,
    /// The reason of the last failure (cleared by a success).
    pub last_reason: Option<Reason>,
    /// Quota windows from the latest usage headers or usage poll.
    pub usage: Vec<UsageWindow>,
    /// Each window's burn-rate forecast ("runs out at" beside "resets at").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forecast: Vec<WindowForecast>,
    /// Requests on this account right now.
    pub in_flight: u32,
    /// Its concurrency cap (`max_in_flight`), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

impl AccountStatus {
    /// Usable, but every one of its slots is taken: it takes a request as
    /// soon as one ends.
    pub fn at_cap(&self) -> bool {
        matches!(self.health, Health::Ready | Health::Probing)
            && self.max_in_flight.is_some_and(|cap| self.in_flight >= cap)
    }
}

mod opt_millis {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(
        d: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let ms: Option<u64> = serde::Deserialize::deserialize(d)?;
        Ok(ms.map(Duration::from_millis))
    }
}

/// Ordering key of a usable account, packed into one `u128` so that the
/// ordered set compares keys in two instructions. From the top bit down:
/// the tier (1 = past the proactive threshold, so after every normal
/// account), the strategy's fields, and the slot index in the low 32 bits
/// (the final tie-breaker, and how a key names its slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key(u128);

impl Key {
    fn idx(self) -> usize {
        (self.0 & u128::from(u32::MAX)) as usize
    }

    fn hot(self) -> bool {
        self.0 >> 127 == 1
    }

    /// For a round-robin or least-used key: whether the account was never
    /// picked (its last pick, and so its in-flight count, is zero).
    fn never_picked(self) -> bool {
        (self.0 >> 64) & u128::from(u64::MAX >> 1) == 0
    }

    /// For a least-used key: the in-flight count, capped at [`MAX_BUCKET`].
    fn in_flight_bucket(self) -> usize {
        ((self.0 >> 115) as usize) & MAX_BUCKET as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Ready,
    Cooling { until: UnixMillis, class: Class },
    Probing { taken: bool },
    NeedsLogin,
}

#[derive(Debug)]
struct Slot {
    meta: AccountMeta,
    /// `meta.label`, shared with every pick.
    label: Arc<str>,
    /// Insertion order; the tie-breaker after priority.
    seq: u64,
    state: State,
    streak: u32,
    transport_streak: u32,
    successes: u64,
    failures: u64,
    last_class: Option<Class>,
    last_reason: Option<Reason>,
    usage: Vec<UsageWindow>,
    /// Burn rates of the usage windows.
    tracker: Tracker,
    /// Drain-soonest: picked at least once, so an account without usage
    /// data is no longer explored first.
    explored: bool,
    /// Headroom: rank of the headroom for the time left (0 = most).
    headroom_rank: u64,
    in_flight: u32,
    /// `max_in_flight` for this account, if it has one.
    cap: Option<u32>,
    /// Whether this slot counts in `Pool::at_cap`.
    cap_counted: bool,
    last_pick: u64,
    last_cooled: Option<UnixMillis>,
    hot: bool,
    hot_until: Option<UnixMillis>,
    /// Earliest future usage-window reset (ms), `u64::MAX` when unknown.
    drain_at: u64,
    /// Where this slot currently sits in the pool's sets, so updates can
    /// remove the old entry without searching.
    key: Option<Key>,
    cooling_entry: Option<UnixMillis>,
    hot_entry: Option<UnixMillis>,
    /// Whether this slot counts in `Pool::probes_in_flight`.
    probe_counted: bool,
}

/// One provider's accounts and their health. See the module docs.
#[derive(Debug)]
pub struct Pool {
    provider: String,
    config: PoolConfig,
    rng: u64,
    slots: Vec<Option<Slot>>,
    /// Bumped when a slot is freed, so stale session entries miss.
    generations: Vec<u32>,
    free: Vec<usize>,
    ids: IdIndex,
    usable: Order,
    cooling: BTreeSet<(UnixMillis, usize)>,
    hot: BTreeSet<(UnixMillis, usize)>,
    sticky: Option<usize>,
    sessions: Sessions,
    next_seq: u64,
    pick_seq: u64,
    /// Enabled accounts whose probe is out: usable again shortly.
    probes_in_flight: usize,
    /// Enabled, usable accounts at their concurrency cap: usable again as
    /// soon as one of their requests ends.
    at_cap: usize,
}

impl Pool {
    /// An empty pool for `provider`. `seed` feeds the jitter generator, so two
    /// pools built with the same seed and fed the same calls behave identically.
    pub fn new(provider: impl Into<String>, config: PoolConfig, seed: u64) -> Self {
        let strategy = config.strategy;
        Pool {
            provider: provider.into(),
            config,
            rng: seed,
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            ids: IdIndex::default(),
            usable: Order::new(strategy),
            cooling: BTreeSet::new(),
            hot: BTreeSet::new(),
            sticky: None,
            sessions: Sessions::new(SESSION_CAPACITY),
            next_seq: 0,
            pick_seq: 0,
            probes_in_flight: 0,
            at_cap: 0,
        }
    }

    /// The provider name.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Changes the strategy (e.g. on configuration reload); re-indexes every account.
    pub fn set_strategy(&mut self, strategy: Strategy) {
        if self.config.strategy == strategy {
            return;
        }
        self.config.strategy = strategy;
        self.sticky = None;
        self.usable = Order::new(strategy);
        for s in self.slots.iter_mut().flatten() {
            s.key = None;
        }
        for i in 0..self.slots.len() {
            self.sync(i);
        }
    }

    /// Adds an account, or updates label, kind, priority and enabled of an
    /// existing id. Health and counters of an existing account are kept, so a
    /// store reload does not forget a cooldown.
    pub fn upsert(&mut self, meta: AccountMeta) {
        if let Some(i) = self.find(&meta.id) {
            if let Some(s) = self.slots[i].as_mut() {
                if s.meta.label != meta.label {
                    s.label = meta.label.as_str().into();
                    s.cap = self.config.cap_of(&meta.label);
                }
                s.meta = meta;
            }
            self.sync(i);
            return;
        }
        let slot = Slot {
            label: meta.label.as_str().into(),
            meta: meta.clone(),
            seq: self.next_seq,
            state: State::Ready,
            streak: 0,
            transport_streak: 0,
            successes: 0,
            failures: 0,
            last_class: None,
            last_reason: None,
            usage: Vec::new(),
            tracker: Tracker::default(),
            explored: false,
            headroom_rank: 0,
            in_flight: 0,
            cap: self.config.cap_of(&meta.label),
            cap_counted: false,
            last_pick: 0,
            last_cooled: None,
            hot: false,
            hot_until: None,
            drain_at: u64::MAX,
            key: None,
            cooling_entry: None,
            hot_entry: None,
            probe_counted: false,
        };
        self.next_seq += 1;
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.generations.push(0);
                self.slots.len() - 1
            }
        };
        self.ids.insert(meta.id, i);
        self.sync(i);
    }

    /// Forgets an account. Late `record`s for it are ignored.
    pub fn remove(&mut self, id: &AccountId) {
        let Some(i) = self.find(id) else { return };
        self.ids.remove(id, i);
        let Some(s) = self.slots[i].take() else {
            return;
        };
        self.usable.update(s.key, None);
        if let Some(t) = s.cooling_entry {
            self.cooling.remove(&(t, i));
        }
        if let Some(t) = s.hot_entry {
            self.hot.remove(&(t, i));
        }
        if s.probe_counted {
            self.probes_in_flight -= 1;
        }
        if s.cap_counted {
            self.at_cap -= 1;
        }
        if self.sticky == Some(i) {
            self.sticky = None;
        }
        self.generations[i] = self.generations[i].wrapping_add(1);
        self.free.push(i);
    }

    /// Number of accounts (any health).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the pool has no accounts.
    pub fn is_empty(&self) -> bool {
        self.ids.len() == 0
    }

    /// Chooses the account for the next attempt and takes a slot on it (ended
    /// by [`Pool::record`] or [`Pool::release`]).
    ///
    /// Order of preference: the session's account (if the request names a
    /// session and that account is usable), then for `sticky` the current
    /// account, then the strategy's first usable account. Accounts at or past
    /// the proactive threshold come only after every other usable account.
    /// Cooling, needs-login and disabled accounts are never picked.
    pub fn pick(&mut self, now: UnixMillis, req: &PickRequest<'_>) -> Pick {
        self.promote(now);
        let session_idx = req
            .session
            .and_then(|s| self.sessions.get(s, &self.generations));
        let Some((i, via_session)) = self.choose(req, session_idx) else {
            return Pick::Exhausted(Exhausted {
                soonest: self.soonest_ready(now),
                accounts: self.status(now),
            });
        };
        if !via_session && self.config.strategy == Strategy::Sticky {
            self.sticky = Some(i);
        }
        if let Some(session) = req.session
            && session_idx != Some(i)
        {
            self.sessions.insert(session, i, self.generations[i]);
        }
        self.pick_seq += 1;
        let pick_seq = self.pick_seq;
        let Some(s) = self.slots[i].as_mut() else {
            unreachable!("chosen slots are live")
        };
        s.in_flight = s.in_flight.saturating_add(1);
        s.last_pick = pick_seq;
        s.explored = true;
        let probe = s.state == State::Probing { taken: false };
        if probe {
            s.state = State::Probing { taken: true };
        }
        let pick = Pick::Account {
            id: s.meta.id.clone(),
            label: s.label.clone(),
            kind: s.meta.kind,
            probe,
            cap: s.cap,
        };
        self.sync(i);
        pick
    }

    /// Applies an attempt's outcome and ends the slot its pick took.
    ///
    /// Success clears the failure streak (and makes a probed account ready,
    /// with a `recovered` event); account-scoped classes bench the account
    /// ([`cooldown`]); provider, request and cancelled outcomes do not;
    /// transport failures bench it briefly only after two in a row. A 401
    /// benches the account but never marks it needs-login: that is the proxy's
    /// call after a refresh ([`Pool::mark_needs_login`]). Usage windows are
    /// updated from any response that carries them. Unknown ids are ignored.
    pub fn record(&mut self, id: &AccountId, c: &Classification, now: UnixMillis) -> Vec<Event> {
        self.apply(id, c, now, true)
    }

    /// Applies an outcome that arrives after the request's slot already
    /// ended: an error event in the middle of a stream whose head was
    /// recorded as a success. Same effects as [`Pool::record`] on health and
    /// counters, but no slot is ended (it would be another request's).
    pub fn record_late(
        &mut self,
        id: &AccountId,
        c: &Classification,
        now: UnixMillis,
    ) -> Vec<Event> {
        self.apply(id, c, now, false)
    }

    fn apply(
        &mut self,
        id: &AccountId,
        c: &Classification,
        now: UnixMillis,
        ends_slot: bool,
    ) -> Vec<Event> {
        let Some(i) = self.find(id) else {
            return Vec::new();
        };
        self.promote(now);
        let mut events = Vec::new();
        let rules = UsageRules::of(&self.config);
        let Some(s) = self.slots[i].as_mut() else {
            return events;
        };
        if ends_slot {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.end_probe_if_idle();
        }
        if !c.usage.is_empty() {
            s.merge_usage(&c.usage, now, rules);
        }
        if c.class != Class::Cancelled {
            s.last_class = Some(c.class);
            s.last_reason = (c.class != Class::Success).then(|| c.reason.clone());
        }
        let mut bench = false;
        match c.class {
            Class::Success => {
                s.successes += 1;
                s.transport_streak = 0;
                match s.state {
                    State::Ready => s.streak = 0,
                    State::Probing { .. } => {
                        s.state = State::Ready;
                        s.streak = 0;
                        events.push(Event::new(
                            now,
                            self.provider.clone(),
                            EventKind::Recovered {
                                account: s.meta.label.clone(),
                            },
                        ));
                    }
                    // A request that started before the cooldown: the
                    // failure that benched the account is the newer news.
                    State::Cooling { .. } | State::NeedsLogin => {}
                }
            }
            Class::Request => s.transport_streak = 0,
            Class::Cancelled => {}
            Class::Provider => {
                s.failures += 1;
                s.transport_streak = 0;
            }
            Class::Transport => {
                s.failures += 1;
                s.transport_streak += 1;
                bench = s.transport_streak >= 2;
            }
            Class::RateLimited | Class::Unusable | Class::Auth | Class::Forbidden => {
                s.failures += 1;
                s.transport_streak = 0;
                bench = true;
            }
        }
        if bench {
            self.bench(i, c, now, &mut events);
        }
        self.sync(i);
        events
    }

    /// Ends a slot without an outcome (the client went away, the proxy gave
    /// up before sending): no penalty, no counters.
    pub fn release(&mut self, id: &AccountId) {
        let Some(i) = self.find(id) else { return };
        let Some(s) = self.slots[i].as_mut() else {
            return;
        };
        s.in_flight = s.in_flight.saturating_sub(1);
        s.end_probe_if_idle();
        self.sync(i);
    }

    /// The account needs a new login (refresh failed permanently, or still 401
    /// after a refresh). It leaves rotation until [`Pool::mark_ready`] or
    /// [`Pool::refreshed`].
    pub fn mark_needs_login(
        &mut self,
        id: &AccountId,
        now: UnixMillis,
        reason: impl Into<Reason>,
    ) -> Vec<Event> {
        let reason = reason.into();
        let Some(i) = self.find(id) else {
            return Vec::new();
        };
        let Some(s) = self.slots[i].as_mut() else {
            return Vec::new();
        };
        if s.state == State::NeedsLogin {
            return Vec::new();
        }
        s.state = State::NeedsLogin;
        s.last_reason = Some(reason.clone());
        let event = Event::new(
            now,
            self.provider.clone(),
            EventKind::NeedsLogin {
                account: s.meta.label.clone(),
                reason,
            },
        );
        self.sync(i);
        vec![event]
    }

    /// Puts the account back in rotation (after a new login, or by hand):
    /// clears cooldown, needs-login and failure streaks. A `recovered` event
    /// when it was not already ready.
    pub fn mark_ready(&mut self, id: &AccountId, now: UnixMillis) -> Vec<Event> {
        let Some(i) = self.find(id) else {
            return Vec::new();
        };
        let Some(s) = self.slots[i].as_mut() else {
            return Vec::new();
        };
        let was = s.state;
        s.state = State::Ready;
        s.streak = 0;
        s.transport_streak = 0;
        let mut events = Vec::new();
        if was != State::Ready {
            s.last_reason = None;
            events.push(Event::new(
                now,
                self.provider.clone(),
                EventKind::Recovered {
                    account: s.meta.label.clone(),
                },
            ));
        }
        self.sync(i);
        events
    }

    /// The proxy refreshed the account's OAuth token: a `refreshed` event, and
    /// an account benched for auth (401/403) or needing login is ready again.
    pub fn refreshed(&mut self, id: &AccountId, now: UnixMillis) -> Vec<Event> {
        let Some(i) = self.find(id) else {
            return Vec::new();
        };
        let Some(s) = self.slots[i].as_mut() else {
            return Vec::new();
        };
        let events = vec![Event::new(
            now,
            self.provider.clone(),
            EventKind::Refreshed {
                account: s.meta.label.clone(),
            },
        )];
        if matches!(
            s.state,
            State::NeedsLogin
                | State::Cooling {
                    class: Class::Auth | Class::Forbidden,
                    ..
                }
        ) {
            s.state = State::Ready;
            s.last_reason = None;
        }
        self.sync(i);
        events
    }

    /// A token refresh failed: a `refresh_failed` event, and when `permanent`
    /// (`invalid_grant`, `refresh_token_reused`, ...) the account needs login.
    ///
    /// A permanent failure of an account that already needs login is old
    /// news and yields no event: every request that queued behind one failed
    /// refresh gets the same error, and a burst must not fire one webhook or
    /// command per request. Whether the account turned needs-login just now
    /// shows as a `needs_login` event in the answer.
    pub fn refresh_failed(
        &mut self,
        id: &AccountId,
        now: UnixMillis,
        permanent: bool,
        reason: impl Into<Reason>,
    ) -> Vec<Event> {
        let reason = reason.into();
        let Some(i) = self.find(id) else {
            return Vec::new();
        };
        let Some(s) = self.slots[i].as_ref() else {
            return Vec::new();
        };
        if permanent && s.state == State::NeedsLogin {
            return Vec::new();
        }
        let mut events = vec![Event::new(
            now,
            self.provider.clone(),
            EventKind::RefreshFailed {
                account: s.meta.label.clone(),
                permanent,
                reason: reason.clone(),
            },
        )];
        if permanent {
            events.extend(self.mark_needs_login(id, now, reason));
        }
        events
    }

    /// Benches the account until `until`, from shared or restored state (another
    /// proxy process saw the 429, or the store remembered it across a restart).
    /// The given instant replaces the current cooldown; an instant not after
    /// `now` ends a cooldown (the account is then probed). Needs-login wins
    /// over cooldowns and is left alone.
    pub fn set_cooldown(
        &mut self,
        id: &AccountId,
        until: UnixMillis,
        reason: impl Into<Reason>,
        now: UnixMillis,
    ) -> Vec<Event> {
        let reason = reason.into();
        let Some(i) = self.find(id) else {
            return Vec::new();
        };
        let Some(s) = self.slots[i].as_mut() else {
            return Vec::new();
        };
        let mut events = Vec::new();
        match s.state {
            State::NeedsLogin => {}
            State::Cooling { until: current, .. } if current == until => {}
            State::Cooling { .. } if until <= now => s.state = State::Probing { taken: false },
            _ if until <= now => {}
            state => {
                let class = match state {
                    State::Cooling { class, .. } => class,
                    _ => s
                        .last_class
                        .filter(|c| c.blames_account())
                        .unwrap_or(Class::RateLimited),
                };
                s.state = State::Cooling { until, class };
                s.last_reason = Some(reason.clone());
                events.push(Event::new(
                    now,
                    self.provider.clone(),
                    EventKind::Cooldown {
                        account: s.meta.label.clone(),
                        until,
                        class,
                        reason,
                        hint: None,
                    },
                ));
            }
        }
        self.sync(i);
        events
    }

    /// Benches the account until `until` unless it already rests at least that
    /// long: the merge of a cooldown another instance learned (pushed by a
    /// shared store, or read from a shared hot state). Unlike
    /// [`Pool::set_cooldown`] it never shortens or ends a cooldown, so a stale
    /// or repeated report cannot bring a rate-limited account back early.
    /// Returns the `cooldown` event when the account was benched (or benched
    /// longer); callers relaying another instance's news usually drop it, as
    /// that instance announced it already.
    pub fn merge_cooldown(
        &mut self,
        id: &AccountId,
        until: UnixMillis,
        reason: impl Into<Reason>,
        now: UnixMillis,
    ) -> Vec<Event> {
        if until <= now {
            return Vec::new();
        }
        let Some(s) = self.find(id).and_then(|i| self.slots[i].as_ref()) else {
            return Vec::new();
        };
        match s.state {
            State::Cooling { until: current, .. } if current >= until => Vec::new(),
            _ => self.set_cooldown(id, until, reason, now),
        }
    }

    /// Every account's status, in priority order.
    pub fn status(&self, now: UnixMillis) -> Vec<AccountStatus> {
        let mut live: Vec<&Slot> = self.slots.iter().flatten().collect();
        live.sort_by_key(|s| (s.meta.priority, s.seq));
        live.into_iter().map(|s| s.status(now)).collect()
    }

    /// The account session affinity holds for `session`, if any. A read for
    /// the views (`marathon statusline`): it does not count as a use of the
    /// session's entry.
    pub fn session_account(&self, session: SessionKey) -> Option<&AccountId> {
        let idx = self.sessions.peek(session, &self.generations)?;
        self.slots.get(idx)?.as_ref().map(|s| &s.meta.id)
    }

    /// One account's status.
    pub fn account_status(&self, id: &AccountId, now: UnixMillis) -> Option<AccountStatus> {
        let i = self.find(id)?;
        self.slots[i].as_ref().map(|s| s.status(now))
    }

    /// Usage windows learnt outside a request (the usage poller): merged
    /// like those of a response, without touching health or counters.
    pub fn observe_usage(&mut self, id: &AccountId, windows: &[UsageWindow], now: UnixMillis) {
        let Some(i) = self.find(id) else { return };
        self.promote(now);
        let rules = UsageRules::of(&self.config);
        if let Some(s) = self.slots[i].as_mut() {
            s.merge_usage(windows, now, rules);
        }
        self.sync(i);
    }

    /// Until when the provider's enabled accounts last at their combined
    /// pace (see [`forecast::capacity_until`]); `None` while nothing is
    /// being used up or no window is known.
    pub fn capacity_until(&self, now: UnixMillis) -> Option<UnixMillis> {
        let accounts: Vec<forecast::AccountCapacity> = self
            .slots
            .iter()
            .flatten()
            .filter(|s| s.meta.enabled && s.state != State::NeedsLogin)
            .filter_map(|s| forecast::AccountCapacity::of(&s.tracker, &s.usage))
            .collect();
        forecast::capacity_until(&accounts, now)
    }

    /// The earliest time any enabled account that does not need a login can
    /// take a request: `now` when one can already (including an account whose
    /// probe is in flight: it will be free shortly), else the end of the
    /// earliest cooldown, else `None`.
    pub fn soonest_ready(&self, now: UnixMillis) -> Option<UnixMillis> {
        if !self.usable.is_empty() || self.probes_in_flight > 0 || self.at_cap > 0 {
            return Some(now);
        }
        self.cooling.first().map(|&(t, _)| t.max(now))
    }

    /// The slot holding `id`.
    fn find(&self, id: &AccountId) -> Option<usize> {
        self.ids.find(id, &self.slots)
    }

    /// Ends cooldowns that are over (→ probing) and proactive demotions whose
    /// usage window has reset. Amortised O(log n) per expired entry.
    fn promote(&mut self, now: UnixMillis) {
        while let Some(&(t, i)) = self.cooling.first() {
            if t > now {
                break;
            }
            self.cooling.pop_first();
            if let Some(s) = self.slots[i].as_mut() {
                s.cooling_entry = None;
                if matches!(s.state, State::Cooling { .. }) {
                    s.state = State::Probing { taken: false };
                }
            }
            self.sync(i);
        }
        while let Some(&(t, i)) = self.hot.first() {
            if t > now {
                break;
            }
            self.hot.pop_first();
            let rules = UsageRules::of(&self.config);
            if let Some(s) = self.slots[i].as_mut() {
                s.hot_entry = None;
                s.refresh_usage(now, rules);
            }
            self.sync(i);
        }
    }

    /// The slot to use and whether session affinity chose it.
    fn choose(&self, req: &PickRequest<'_>, session_idx: Option<usize>) -> Option<(usize, bool)> {
        let excluded = |i: usize| {
            !req.exclude.is_empty()
                && self.slots[i]
                    .as_ref()
                    .is_some_and(|s| req.exclude.contains(&s.meta.id))
        };
        let usable_key = |i: usize| {
            self.slots[i]
                .as_ref()
                .and_then(|s| s.key)
                .filter(|_| !excluded(i))
        };
        // Fast path: a preferred account in the normal tier needs no search.
        let preferred = [
            session_idx.map(|i| (i, true)),
            self.sticky
                .filter(|_| self.config.strategy == Strategy::Sticky)
                .map(|i| (i, false)),
        ];
        for (i, via_session) in preferred.into_iter().flatten() {
            if usable_key(i).is_some_and(|k| !k.hot()) {
                return Some((i, via_session));
            }
        }
        let (first, first_hot) = self.usable.first(excluded)?;
        // Every normal-tier account is excluded or busy: a hot preferred
        // account is as good as any other hot one, and keeps its cache.
        if first_hot {
            for (i, via_session) in preferred.into_iter().flatten() {
                if usable_key(i).is_some() {
                    return Some((i, via_session));
                }
            }
        }
        Some((first, false))
    }

    /// Benches slot `i` for `c`, deduplicating parallel failures.
    fn bench(&mut self, i: usize, c: &Classification, now: UnixMillis, events: &mut Vec<Event>) {
        let sample = self.next_sample();
        let cfg = &self.config;
        let Some(s) = self.slots[i].as_mut() else {
            return;
        };
        let cooling_until = match s.state {
            State::Cooling { until, .. } if until > now => Some(until),
            State::NeedsLogin => return,
            _ => None,
        };
        let recent = s
            .last_cooled
            .is_some_and(|t| now < t.plus(cfg.dedupe_window));
        let transport = c.class == Class::Transport;
        let duplicate = cooling_until.is_some() || (recent && !transport);
        let decided = if duplicate {
            // Counted once: same streak as the failure that benched it, and no
            // jitter, so only a genuinely later reset (a longer hint, or a 402
            // after a 429) moves the cooldown.
            let Some(cd) = cooldown_for(c, s.streak.saturating_sub(1), cfg, now, 0.0) else {
                return;
            };
            if let Some(current) = cooling_until {
                // A backoff recomputed from a later `now` is always a little
                // later; that is not news. A provider's reset time or a worse
                // class (a 402 after a 429) is.
                let same_class =
                    matches!(s.state, State::Cooling { class, .. } if class == c.class);
                if cd.until <= current || (same_class && cd.hint.is_none()) {
                    return;
                }
            }
            cd
        } else {
            let Some(cd) = cooldown_for(c, s.streak, cfg, now, sample) else {
                return;
            };
            if !transport {
                s.streak = s.streak.saturating_add(1);
                s.last_cooled = Some(now);
            }
            cd
        };
        s.state = State::Cooling {
            until: decided.until,
            class: c.class,
        };
        events.push(Event::new(
            now,
            self.provider.clone(),
            EventKind::Cooldown {
                account: s.meta.label.clone(),
                until: decided.until,
                class: c.class,
                reason: c.reason.clone(),
                hint: decided.hint,
            },
        ));
    }

    fn next_sample(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(cooldown::GOLDEN_GAMMA);
        cooldown::unit_sample(cooldown::splitmix64(self.rng))
    }

    /// Brings slot `i`'s entries in the three ordered sets in line with its
    /// state. Every mutation ends here, so the sets cannot drift.
    fn sync(&mut self, i: usize) {
        let Some(s) = self.slots[i].as_mut() else {
            return;
        };
        let want = key_for(&self.config, s, i);
        if s.key != want {
            self.usable.update(s.key, want);
            s.key = want;
        }
        let want_cool = match s.state {
            State::Cooling { until, .. } if s.meta.enabled => Some(until),
            _ => None,
        };
        if s.cooling_entry != want_cool {
            if let Some(t) = s.cooling_entry {
                self.cooling.remove(&(t, i));
            }
            if let Some(t) = want_cool {
                self.cooling.insert((t, i));
            }
            s.cooling_entry = want_cool;
        }
        let want_hot = s.hot_until.filter(|_| s.hot);
        if s.hot_entry != want_hot {
            if let Some(t) = s.hot_entry {
                self.hot.remove(&(t, i));
            }
            if let Some(t) = want_hot {
                self.hot.insert((t, i));
            }
            s.hot_entry = want_hot;
        }
        let want_probe = s.meta.enabled && s.state == (State::Probing { taken: true });
        if s.probe_counted != want_probe {
            if want_probe {
                self.probes_in_flight += 1;
            } else {
                self.probes_in_flight -= 1;
            }
            s.probe_counted = want_probe;
        }
        let want_cap = s.meta.enabled && s.usable_state() && s.is_full();
        if s.cap_counted != want_cap {
            if want_cap {
                self.at_cap += 1;
            } else {
                self.at_cap -= 1;
            }
            s.cap_counted = want_cap;
        }
    }
}

/// The headroom strategy's threshold when `proactive_threshold` is off.
pub const HEADROOM_THRESHOLD: f64 = 0.9;
/// How far ahead the headroom strategy looks for a window's forecast to
/// cross its threshold.
pub const HEADROOM_LOOKAHEAD: Duration = Duration::from_secs(5 * 60);
/// How far below the threshold a demoted account's forecast must fall to be
/// preferred again before its window resets.
pub const HEADROOM_HYSTERESIS: f64 = 0.1;

/// What the usage windows are compared with.
#[derive(Clone, Copy, Debug)]
struct UsageRules {
    strategy: Strategy,
    threshold: Option<f64>,
}

impl UsageRules {
    fn of(cfg: &PoolConfig) -> Self {
        UsageRules {
            strategy: cfg.strategy,
            threshold: cfg.proactive_threshold,
        }
    }
}

/// The slot's place in the usable set, or `None` if it may not be picked.
fn key_for(cfg: &PoolConfig, s: &Slot, idx: usize) -> Option<Key> {
    if !s.meta.enabled || !s.usable_state() || s.is_full() {
        return None;
    }
    const M63: u64 = (1 << 63) - 1;
    // Order-preserving map of i32 onto u32.
    let prio = u128::from((s.meta.priority as u32) ^ 0x8000_0000);
    let seq = u128::from(s.seq & M63);
    let fields = match cfg.strategy {
        // prio:32 | seq:63
        Strategy::Sticky | Strategy::Priority => (prio << 95) | (seq << 32),
        // last_pick:63 | prio:32
        Strategy::RoundRobin => (u128::from(s.last_pick & M63) << 64) | (prio << 32),
        // in_flight:12 | last_pick:51. The queues only need the in-flight
        // count (which queue) and whether the key changed (a pick, a finished
        // request: move to the end); the last pick makes a picked account's
        // key change even at the in-flight cap, and tells a new account
        // (never picked: joins at the end) from a returning one.
        Strategy::LeastUsed => {
            let in_flight = u128::from(s.in_flight.min(MAX_BUCKET));
            let last = u128::from(s.last_pick.min((1 << 51) - 1));
            (in_flight << 115) | (last << 64)
        }
        // drain_at:63 | prio:32. An account nobody knows the windows of is
        // tried first, once: it may reset soonest of all.
        Strategy::DrainSoonest => {
            let drain_at = if s.usage.is_empty() && !s.explored {
                0
            } else {
                s.drain_at.min(M63)
            };
            (u128::from(drain_at) << 64) | (prio << 32)
        }
        // headroom_rank:63 | prio:32
        Strategy::Headroom => (u128::from(s.headroom_rank.min(M63)) << 64) | (prio << 32),
    };
    Some(Key((u128::from(s.hot) << 127) | fields | idx as u128))
}

impl Slot {
    fn merge_usage(&mut self, fresh: &[UsageWindow], now: UnixMillis, rules: UsageRules) {
        for w in fresh {
            match self.usage.iter_mut().find(|old| old.name == w.name) {
                Some(old) => *old = w.clone(),
                None => self.usage.push(w.clone()),
            }
        }
        self.tracker.observe(fresh, now);
        self.refresh_usage(now, rules);
    }

    /// Drops windows that have reset and recomputes the drain key and the
    /// proactive demotion from what is left.
    fn refresh_usage(&mut self, now: UnixMillis, rules: UsageRules) {
        if rules.strategy == Strategy::Headroom {
            return self.refresh_headroom(now, rules);
        }
        let threshold = rules.threshold;
        // A window whose reset has passed says nothing about now.
        self.usage.retain(|w| w.resets_at.is_none_or(|r| r > now));
        self.drain_at = self
            .usage
            .iter()
            .filter_map(|w| w.resets_at)
            .map(|t| t.0)
            .min()
            .unwrap_or(u64::MAX);
        let hot: Vec<&UsageWindow> = match threshold {
            Some(th) => self.usage.iter().filter(|w| w.utilization >= th).collect(),
            None => Vec::new(),
        };
        self.hot = !hot.is_empty();
        // Hot until the last hot window resets; a hot window without a reset
        // time keeps the account demoted until fresh usage says otherwise.
        self.hot_until = if hot.iter().all(|w| w.resets_at.is_some()) {
            hot.iter().filter_map(|w| w.resets_at).max()
        } else {
            None
        };
    }

    /// The headroom strategy's view of the windows: the rank that orders
    /// accounts (most headroom for the time left first) and the demotion
    /// that moves sessions. An account is demoted when the forecast of one
    /// of its windows crosses the threshold within [`HEADROOM_LOOKAHEAD`],
    /// and stays demoted until that window resets (or, for a window with no
    /// reset time, until its forecast falls [`HEADROOM_HYSTERESIS`] below
    /// the threshold): a session moves once per crossing, never back and
    /// forth as the burn rate cools after it left.
    fn refresh_headroom(&mut self, now: UnixMillis, rules: UsageRules) {
        self.usage.retain(|w| w.resets_at.is_none_or(|r| r > now));
        self.drain_at = u64::MAX;
        let headroom = self.tracker.headroom(&self.usage, now).clamp(-1.0, 1.0);
        self.headroom_rank = ((1.0 - headroom) * 1e9) as u64;
        if self.hot && self.hot_until.is_some_and(|t| t > now) {
            return;
        }
        let threshold = rules.threshold.unwrap_or(HEADROOM_THRESHOLD);
        let was_hot = self.hot;
        let mut crossed = Vec::new();
        for w in &self.usage {
            let peak =
                self.tracker
                    .projected_peak(std::slice::from_ref(w), now, HEADROOM_LOOKAHEAD);
            let floor = if was_hot {
                threshold - HEADROOM_HYSTERESIS
            } else {
                threshold
            };
            if peak >= floor {
                crossed.push(w.resets_at);
            }
        }
        self.hot = !crossed.is_empty();
        self.hot_until = if crossed.iter().all(Option::is_some) {
            crossed.into_iter().flatten().max()
        } else {
            None
        };
    }

    /// The probe slot is free again once nothing is in flight on the account.
    /// `record` cannot tell the probe's outcome from that of a request picked
    /// before the cooldown, but no request is picked while the probe is out,
    /// so "in flight drops to zero" is exactly "the probe and every older
    /// request have finished": never two probes at once. The outcomes
    /// themselves still count as they come: any success makes the account
    /// ready, any account-scoped failure re-cools it.
    fn usable_state(&self) -> bool {
        matches!(self.state, State::Ready | State::Probing { taken: false })
    }

    /// Every slot of its concurrency cap is taken.
    fn is_full(&self) -> bool {
        self.cap.is_some_and(|cap| self.in_flight >= cap)
    }

    fn end_probe_if_idle(&mut self) {
        if self.state == (State::Probing { taken: true }) && self.in_flight == 0 {
            self.state = State::Probing { taken: false };
        }
    }

    fn health(&self, now: UnixMillis) -> Health {
        if !self.meta.enabled {
            return Health::Disabled;
        }
        match self.state {
            State::Ready => Health::Ready,
            State::Cooling { until, .. } if until > now => Health::Cooling { until },
            State::Cooling { .. } | State::Probing { .. } => Health::Probing,
            State::NeedsLogin => Health::NeedsLogin,
        }
    }

    fn status(&self, now: UnixMillis) -> AccountStatus {
        let health = self.health(now);
        AccountStatus {
            id: self.meta.id.clone(),
            label: self.meta.label.clone(),
            kind: self.meta.kind,
            priority: self.meta.priority,
            enabled: self.meta.enabled,
            health,
            cooldown_remaining: match self.state {
                State::Cooling { until, .. } if until > now => Some(now.until(until)),
                _ => None,
            },
            successes: self.successes,
            failures: self.failures,
            failure_streak: self.streak,
            last_class: self.last_class,
            last_reason: self.last_reason.clone(),
            usage: self.usage.clone(),
            forecast: self.tracker.forecast(&self.usage),
            in_flight: self.in_flight,
            max_in_flight: self.cap,
        }
    }
}

/// The usable accounts in strategy order.
#[derive(Debug)]
enum Order {
    /// Ordered by key: sticky, priority, drain-soonest. O(log n).
    Tree(BTreeSet<Key>),
    /// Round-robin and least-used: intrusive queues, O(1) per update.
    /// Round-robin keeps one queue per tier: its order is "least recently
    /// picked", and a pick always moves an account to the very end, where a
    /// tree paid O(log n) twice per pick. Least-used (`by_in_flight`) keeps
    /// one queue per tier and in-flight count; an account whose count changes
    /// joins the end of its new queue, so the first account of the lowest
    /// non-empty queue has the fewest requests in flight and, among those,
    /// has had that count the longest.
    Queues { q: Queues, by_in_flight: bool },
}

impl Order {
    fn new(strategy: Strategy) -> Self {
        match strategy {
            Strategy::RoundRobin => Order::Queues {
                q: Queues::new(),
                by_in_flight: false,
            },
            Strategy::LeastUsed => Order::Queues {
                q: Queues::new(),
                by_in_flight: true,
            },
            Strategy::Sticky | Strategy::Priority | Strategy::DrainSoonest | Strategy::Headroom => {
                Order::Tree(BTreeSet::new())
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Order::Tree(t) => t.is_empty(),
            Order::Queues { q, .. } => q.len == 0,
        }
    }

    /// Moves a slot from its old key (if usable) to its new one (if usable).
    fn update(&mut self, old: Option<Key>, new: Option<Key>) {
        match self {
            Order::Tree(t) => {
                if let Some(k) = old {
                    t.remove(&k);
                }
                if let Some(k) = new {
                    t.insert(k);
                }
            }
            Order::Queues { q, by_in_flight } => {
                let at = |k: Key| Place {
                    idx: k.idx(),
                    tier: usize::from(k.hot()),
                    bucket: if *by_in_flight {
                        k.in_flight_bucket()
                    } else {
                        0
                    },
                };
                match (old, new) {
                    (None, None) => {}
                    (Some(o), None) => q.unlink(at(o)),
                    // A new account joins at the end, in insertion order; one
                    // back in rotation (recovered, re-enabled) has waited
                    // longest, so it goes first.
                    (None, Some(n)) if n.never_picked() => q.push_back(at(n)),
                    (None, Some(n)) => q.push_front(at(n)),
                    (Some(o), Some(n)) if o == n => {}
                    (Some(o), Some(n)) if o.hot() != n.hot() => {
                        q.unlink(at(o));
                        q.push_front(at(n));
                    }
                    // Same tier, new key: it was just picked or finished a
                    // request (or was re-prioritised).
                    (Some(o), Some(n)) => {
                        q.unlink(at(o));
                        q.push_back(at(n));
                    }
                }
            }
        }
    }

    /// The first usable slot not excluded, and whether it is in the hot tier.
    fn first(&self, excluded: impl Fn(usize) -> bool) -> Option<(usize, bool)> {
        match self {
            Order::Tree(t) => t
                .iter()
                .find(|k| !excluded(k.idx()))
                .map(|k| (k.idx(), k.hot())),
            Order::Queues { q, .. } => q.first(excluded),
        }
    }
}

const NIL: u32 = u32::MAX;

/// In-flight counts at or above this share the last least-used queue: the
/// order among accounts that busy no longer matters, and the queue heads
/// stay small (64 words of occupancy bits per tier at most).
const MAX_BUCKET: u32 = (1 << 12) - 1;

/// Where a slot sits in [`Queues`].
#[derive(Clone, Copy)]
struct Place {
    idx: usize,
    tier: usize,
    bucket: usize,
}

/// Doubly linked lists threaded through slot indices: per tier (0 normal,
/// 1 hot), one list per bucket. A slot is in at most one list.
#[derive(Debug)]
struct Queues {
    next: Vec<u32>,
    prev: Vec<u32>,
    tiers: [Buckets; 2],
    len: usize,
}

/// One tier's lists.
#[derive(Debug, Default)]
struct Buckets {
    head: Vec<u32>,
    tail: Vec<u32>,
    /// Bit `b` is set while list `b` is non-empty, so the lowest non-empty
    /// list is a `trailing_zeros` away however the counts are spread.
    occupied: Vec<u64>,
}

impl Buckets {
    fn ensure(&mut self, b: usize) {
        if self.head.len() <= b {
            self.head.resize(b + 1, NIL);
            self.tail.resize(b + 1, NIL);
            self.occupied.resize(b / 64 + 1, 0);
        }
    }
}

impl Queues {
    fn new() -> Self {
        Queues {
            next: Vec::new(),
            prev: Vec::new(),
            tiers: [Buckets::default(), Buckets::default()],
            len: 0,
        }
    }

    fn ensure(&mut self, p: Place) {
        if self.next.len() <= p.idx {
            self.next.resize(p.idx + 1, NIL);
            self.prev.resize(p.idx + 1, NIL);
        }
        self.tiers[p.tier].ensure(p.bucket);
    }

    fn push_front(&mut self, p: Place) {
        self.ensure(p);
        let i = p.idx as u32;
        let t = &mut self.tiers[p.tier];
        let b = p.bucket;
        self.prev[p.idx] = NIL;
        self.next[p.idx] = t.head[b];
        match t.head[b] {
            NIL => t.tail[b] = i,
            h => self.prev[h as usize] = i,
        }
        t.head[b] = i;
        t.occupied[b / 64] |= 1 << (b % 64);
        self.len += 1;
    }

    fn push_back(&mut self, p: Place) {
        self.ensure(p);
        let i = p.idx as u32;
        let t = &mut self.tiers[p.tier];
        let b = p.bucket;
        self.next[p.idx] = NIL;
        self.prev[p.idx] = t.tail[b];
        match t.tail[b] {
            NIL => t.head[b] = i,
            tl => self.next[tl as usize] = i,
        }
        t.tail[b] = i;
        t.occupied[b / 64] |= 1 << (b % 64);
        self.len += 1;
    }

    fn unlink(&mut self, p: Place) {
        let t = &mut self.tiers[p.tier];
        let b = p.bucket;
        let (prev, next) = (self.prev[p.idx], self.next[p.idx]);
        match prev {
            NIL => t.head[b] = next,
            prev => self.next[prev as usize] = next,
        }
        match next {
            NIL => t.tail[b] = prev,
            next => self.prev[next as usize] = prev,
        }
        if t.head[b] == NIL {
            t.occupied[b / 64] &= !(1 << (b % 64));
        }
        self.prev[p.idx] = NIL;
        self.next[p.idx] = NIL;
        self.len -= 1;
    }

    /// Normal tier before hot, lower buckets first, each list from its head.
    /// Only excluded slots are walked past, so the cost is bounded by the
    /// request's exclude list (plus one word per 64 buckets).
    fn first(&self, excluded: impl Fn(usize) -> bool) -> Option<(usize, bool)> {
        for (tier, t) in self.tiers.iter().enumerate() {
            for (w, &word) in t.occupied.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let b = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let mut i = t.head[b];
                    while i != NIL {
                        if !excluded(i as usize) {
                            return Some((i as usize, tier == 1));
                        }
                        i = self.next[i as usize];
                    }
                }
            }
        }
        None
    }
}

/// Account id → slot. Keyed by a 64-bit hash of the id and confirmed
/// against the slot's own copy of the id, so that a `record` right after its
/// `pick` reads id bytes that are already in cache rather than a second copy
/// (with 10,000 accounts that cold read was a third of a pick's cost). Hash
/// collisions, which practically never happen, go to an ordinary map.
#[derive(Debug, Default)]
struct IdIndex {
    hasher: RandomState,
    by_hash: HashMap<u64, usize, BuildHasherDefault<PrehashedHasher>>,
    collided: HashMap<AccountId, usize>,
}

impl IdIndex {
    fn hash(&self, id: &AccountId) -> u64 {
        self.hasher.hash_one(id.as_str())
    }

    fn find(&self, id: &AccountId, slots: &[Option<Slot>]) -> Option<usize> {
        if let Some(&i) = self.by_hash.get(&self.hash(id))
            && slots[i].as_ref().is_some_and(|s| s.meta.id == *id)
        {
            return Some(i);
        }
        self.collided.get(id).copied()
    }

    fn insert(&mut self, id: AccountId, i: usize) {
        let h = self.hash(&id);
        match self.by_hash.entry(h) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(i);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collided.insert(id, i);
            }
        }
    }

    fn remove(&mut self, id: &AccountId, i: usize) {
        let h = self.hash(id);
        if self.by_hash.get(&h) == Some(&i) {
            self.by_hash.remove(&h);
            // Promote a colliding id with the same hash, if any.
            let moved = self.collided.keys().find(|k| self.hash(k) == h).cloned();
            if let Some(k) = moved
                && let Some(j) = self.collided.remove(&k)
            {
                self.by_hash.insert(h, j);
            }
        } else {
            self.collided.remove(id);
        }
    }

    fn len(&self) -> usize {
        self.by_hash.len() + self.collided.len()
    }
}

/// A hasher for keys that already are hashes.
#[derive(Default)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Session key → account, bounded, with CLOCK (second-chance) eviction: each
/// hit sets a reference bit; eviction skips and clears referenced entries, so
/// active sessions survive and the cost per insert is amortised O(1). Keys
/// are fixed-size hashes, so the map's memory is bounded by its capacity
/// alone, whatever the clients send.
#[derive(Debug)]
struct Sessions {
    cap: usize,
    map: HashMap<SessionKey, SessionEntry, foldhash::fast::FixedState>,
    ring: VecDeque<SessionKey>,
}

#[derive(Debug)]
struct SessionEntry {
    idx: usize,
    generation: u32,
    referenced: bool,
}

impl Sessions {
    fn new(cap: usize) -> Self {
        Sessions {
            cap: cap.max(1),
            map: HashMap::default(),
            ring: VecDeque::new(),
        }
    }

    fn peek(&self, session: SessionKey, generations: &[u32]) -> Option<usize> {
        let e = self.map.get(&session)?;
        (generations.get(e.idx) == Some(&e.generation)).then_some(e.idx)
    }

    fn get(&mut self, session: SessionKey, generations: &[u32]) -> Option<usize> {
        let e = self.map.get_mut(&session)?;
        if generations.get(e.idx) != Some(&e.generation) {
            return None;
        }
        e.referenced = true;
        Some(e.idx)
    }

    fn insert(&mut self, session: SessionKey, idx: usize, generation: u32) {
        if let Some(e) = self.map.get_mut(&session) {
            *e = SessionEntry {
                idx,
                generation,
                referenced: true,
            };
            return;
        }
        while self.map.len() >= self.cap {
            let Some(old) = self.ring.pop_front() else {
                break;
            };
            match self.map.get_mut(&old) {
                Some(e) if e.referenced => {
                    e.referenced = false;
                    self.ring.push_back(old);
                }
                _ => {
                    self.map.remove(&old);
                }
            }
        }
        self.ring.push_back(session);
        self.map.insert(
            session,
            SessionEntry {
                idx,
                generation,
                referenced: false,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_map_is_bounded_and_keeps_referenced_entries() {
        let gens = vec![0u32; 4];
        let mut s = Sessions::new(3);
        s.insert(SessionKey(10), 0, 0);
        s.insert(SessionKey(11), 1, 0);
        s.insert(SessionKey(12), 2, 0);
        assert_eq!(s.get(SessionKey(10), &gens), Some(0));
        s.insert(SessionKey(13), 3, 0);
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.get(SessionKey(10), &gens),
            Some(0),
            "referenced entry survived"
        );
        assert_eq!(
            s.get(SessionKey(11), &gens),
            None,
            "unreferenced oldest entry evicted"
        );
        for i in 0..100 {
            s.insert(SessionKey(100 + i), 1, 0);
        }
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn session_entry_for_a_reused_slot_misses() {
        let mut s = Sessions::new(10);
        s.insert(SessionKey(10), 0, 0);
        assert_eq!(s.get(SessionKey(10), &[1]), None);
    }
}
