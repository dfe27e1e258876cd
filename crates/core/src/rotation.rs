//! One request's rotation across a provider's accounts, as a state machine
//! without I/O (in the manner of quinn-proto and rustls).
//!
//! A [`Rotation`] holds every rule of a request's life: which account to
//! use, what an attempt's outcome means ([`crate::decision::decide`]), the
//! retry budget, `max_attempts`, the deadline, `max_wait`, refreshing an
//! OAuth token after a 401 and marking an account needs-login when that does
//! not help, the failover events and the attempt trace. It reads no clock and
//! does no I/O: a **driver** (the proxy, or an in-process HTTP client) feeds
//! it events, each with the time it happened, and carries out the
//! [`Action`] it answers:
//!
//! | the machine says | the driver does, then reports |
//! |---|---|
//! | [`Action::Send`] | sends the request with [`Rotation::account`]'s credential; classifies the answer ([`crate::classify::classify`]) → [`Rotation::on_response`]; or, if it has no usable credential for it, → [`Rotation::on_unusable`] |
//! | [`Action::Refresh`] | refreshes that account's OAuth token → [`Rotation::on_refresh`] |
//! | [`Action::Wait`] | waits until the instant → [`Rotation::on_timer`] |
//! | [`Action::Respond`] | answers the client: the response just reported ([`Answer::PassThrough`]), or marathon's own ([`Refusal`], to render in the provider's error format) |
//! | [`Action::Done`] | nothing (the client went away) |
//!
//! ```text
//! let mut rotation = Rotation::new(shared, &config, RequestFacts { replayable, session, now });
//! let mut action = rotation.start();
//! loop {
//!     action = match action {
//!         Action::Send { .. } => match send(rotation.account()).await {
//!             Ok(response) => match rotation.on_response(classify(&response), now()) {
//!                 Action::Respond(Answer::PassThrough) => return response,
//!                 next => next,
//!             },
//!             Err(no_credential) => rotation.on_unusable(no_credential, now()),
//!         },
//!         Action::Refresh => rotation.on_refresh(refresh(rotation.account()).await, now()),
//!         Action::Wait { until } => { sleep_until(until).await; rotation.on_timer(now()) }
//!         Action::Respond(Answer::Refuse(refusal)) => return render(refusal, rotation.trace()),
//!         Action::Respond(Answer::PassThrough) | Action::Done => unreachable!(),
//!     }
//! }
//! ```
//!
//! The pool and the budget are shared by every request of a provider; the
//! machine reaches them through [`Shared`], one short synchronous call at a
//! time, so a driver keeps them behind a plain mutex and never holds it
//! across an `.await`.
//!
//! ## Exactly one record or release per pick
//!
//! Every account the machine picks takes a slot in the pool (an in-flight
//! count, or the probe of a recovering account), and exactly one
//! [`Pool::record`] or [`Pool::release`] must end it. The machine alone picks,
//! records and releases: a pick opens the slot, the account's final outcome
//! records it (same-account retries in between are not recorded: a 401 fixed
//! by a refresh must not bench the account), an account that could not be
//! used releases it, and so does dropping the machine (the client went away:
//! no penalty). `crates/core/tests/rotation_props.rs` checks it with many
//! requests interleaved on one pool: after every step, each account's
//! in-flight count equals the number of machines holding it.
//!
//! An account with a concurrency cap (`max_in_flight`) keeps its slot past
//! a passed-through answer's head, until the body ends: the answer is
//! recorded ([`Pool::record_late`]) and the slot handed to the driver as a
//! [`StreamSlot`], which it ends with one [`Pool::release`] (dropping the
//! machine ends a slot no driver took). An account at its cap is not picked;
//! when every usable account is at its cap the request waits for a slot
//! ([`SLOT_POLL`], within `max_wait`, or the deadline when that is off): a
//! full account is busy, not failing, and gets no cooldown and no event.
//! A driver sharing the cap with other instances reports an account whose
//! slots they hold with [`Rotation::on_busy`].
//!
//! ## Waiting for an account to recover (`max_wait`)
//!
//! When no account can take the request, a replayable request waits for the
//! first one to recover if the total of its waits stays within `max_wait`
//! (and the deadline); each wait counts as long as planned, or as long as it
//! really took if the timer was late. While an account's probe is in flight
//! (usable again as soon as it ends, at no known time) the request looks
//! again every [`PROBE_POLL`], and those waits count too.
//!
//! ## When the limits stop a request
//!
//! After an account-scoped failure, `max_attempts` or the deadline ends the
//! request with "all accounts unavailable" (429, `retry-after` the soonest
//! reset) only when that is true. If an account is still ready, the answer is
//! a 503 "gave up after N attempts" naming the attempts and the ready
//! accounts, without `retry-after`: sent again, the request goes to a ready
//! account at once (the failed ones are benched), and SDKs retry a 503.
//! After any other failure the limits pass the last upstream answer on.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::account::{AccountId, AccountKind};
use crate::budget::RetryBudget;
use crate::clock::UnixMillis;
use crate::decision::{AttemptContext, AttemptTrace, Decision, Limit, RetryPolicy, decide};
use crate::events::{Event, EventKind};
use crate::fmt::{ClockTime, HumanDuration};
use crate::outcome::{Class, Classification};
use crate::pool::{AccountStatus, Exhausted, Health, Pick, PickRequest, Pool, SessionKey};
use crate::reason::Reason;

/// How long an account rests after a provider-side error inside its stream
/// (after the head was a success): the next request should start elsewhere.
pub const MID_STREAM_BENCH: Duration = Duration::from_secs(5);

/// How often a request waiting for recovery looks again while the only
/// account that could serve it is being probed by another request.
pub const PROBE_POLL: Duration = Duration::from_millis(50);

/// How often a request that found every account at its concurrency cap
/// (`max_in_flight`) looks for a free slot again.
pub const SLOT_POLL: Duration = Duration::from_millis(25);

/// The state every request of one provider shares: its pool of accounts, its
/// retry budget, and where events and needs-login states go. The machine
/// calls these synchronously, never across an `.await` of the driver.
pub trait Shared {
    /// Runs `f` on the provider's pool.
    fn pool<R>(&self, f: impl FnOnce(&mut Pool) -> R) -> R;
    /// Runs `f` on the provider's retry budget.
    fn budget<R>(&self, f: impl FnOnce(&mut RetryBudget) -> R) -> R;
    /// Announces events (never called with an empty list).
    fn publish(&self, events: Vec<Event>);
    /// The account just turned needs-login: store that, so that other
    /// processes and the next start know it.
    fn persist_needs_login(&self, account: &AccountId);
}

impl<T: Shared> Shared for &T {
    fn pool<R>(&self, f: impl FnOnce(&mut Pool) -> R) -> R {
        (**self).pool(f)
    }
    fn budget<R>(&self, f: impl FnOnce(&mut RetryBudget) -> R) -> R {
        (**self).budget(f)
    }
    fn publish(&self, events: Vec<Event>) {
        (**self).publish(events)
    }
    fn persist_needs_login(&self, account: &AccountId) {
        (**self).persist_needs_login(account)
    }
}

/// How one provider's requests rotate. Built once per provider.
#[derive(Clone, Debug)]
pub struct RotationConfig {
    /// The provider's name (events and answers name it).
    pub provider: String,
    /// Attempts, deadline, same-account and provider-error retries.
    pub retry: RetryPolicy,
    /// Wait up to this long in total for an account to recover instead of
    /// answering "all accounts unavailable" at once (`None`: never wait).
    pub max_wait: Option<Duration>,
    /// When every account rests, a wait up to this long is a
    /// [`RefusalKind::Exhausted`] answer (wait and retry), a longer one a
    /// [`RefusalKind::Spent`] answer (shown at once, not retried).
    pub short_wait: Duration,
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            provider: String::new(),
            retry: RetryPolicy::default(),
            max_wait: crate::defaults::MAX_WAIT,
            short_wait: crate::defaults::SHORT_WAIT,
        }
    }
}

/// What the machine needs to know of a request when it arrives.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts {
    /// Whether the request can be sent more than once (its body is in memory).
    pub replayable: bool,
    /// The client's session, for session affinity.
    pub session: Option<SessionKey>,
    /// When the request arrived.
    pub now: UnixMillis,
}

/// The account the machine picked for the current attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Picked {
    /// Its id (to find its credential).
    pub id: AccountId,
    /// Its label (for logs and the `x-marathon-account` header).
    pub label: Arc<str>,
    /// OAuth or API key.
    pub kind: AccountKind,
    /// Its concurrency cap (`max_in_flight`), if it has one: a driver
    /// sharing the cap with other instances takes a shared slot for it
    /// before sending ([`Rotation::on_busy`] when there is none).
    pub cap: Option<u32>,
}

/// The concurrency slot of a capped account whose answer is being passed
/// through: it stays taken until the answer's body has ended (a stream may
/// run for minutes). The driver that takes it ([`Rotation::take_stream_slot`])
/// ends it with exactly one [`Pool::release`] when the body ends or is
/// dropped; if no driver takes it, dropping the machine ends it.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a stream slot must be ended with Pool::release"]
pub struct StreamSlot {
    /// The account whose slot it is.
    pub account: AccountId,
}

/// What the driver does next.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Send the request to [`Rotation::account`], then report the outcome with
    /// [`Rotation::on_response`] (or [`Rotation::on_unusable`] if the account
    /// cannot be used: no credential, no token).
    Send {
        /// This attempt's number, from 1 (above 1: a retry).
        attempt: u32,
        /// Whether the account was picked for this attempt (rather than
        /// tried again): its credential is to be looked up afresh.
        picked: bool,
    },
    /// Refresh [`Rotation::account`]'s OAuth token (the upstream refused it),
    /// then report with [`Rotation::on_refresh`]; on success the next
    /// [`Action::Send`] goes out with the new token.
    Refresh,
    /// Wait until `until`, then call [`Rotation::on_timer`].
    Wait {
        /// The instant to wake at.
        until: UnixMillis,
    },
    /// Answer the client; the machine is done.
    Respond(Answer),
    /// Nothing more to do (the client went away).
    Done,
}

/// The answer to give the client.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// The response just reported to [`Rotation::on_response`], as it came
    /// (only ever the direct answer to that call).
    PassThrough,
    /// An answer marathon writes itself.
    Refuse(Box<Refusal>),
}

/// Why marathon answers itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// No account can take the request, and the first is back within
    /// [`RotationConfig::short_wait`] (429 + `retry-after`: wait and retry).
    Exhausted,
    /// No account can take the request for longer than
    /// [`RotationConfig::short_wait`], or none will recover on its own: a
    /// spent quota, in the form the provider's clients stop on (429).
    Spent,
    /// A limit (`max_attempts`, the deadline) stopped the request while an
    /// account was ready (503).
    GaveUp,
    /// The upstream could not be reached (502).
    Unreachable,
}

/// The content of an answer marathon writes itself; the driver renders it
/// in the provider's error format.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// What kind of answer this is.
    pub kind: RefusalKind,
    /// The message for people (without a `marathon:` prefix).
    pub message: String,
    /// The `retry-after` header, in whole seconds.
    pub retry_after: Option<u64>,
    /// The account to name in `x-marathon-account`.
    pub account: Option<Arc<str>>,
    /// Every account's state, for an exhaustion answer's machine-readable part.
    pub accounts: Option<Exhausted>,
    /// When the first account is usable again (exhaustion answers; `None`:
    /// none recovers on its own).
    pub resets_at: Option<UnixMillis>,
}

/// Why a picked account could not be used before anything was sent.
#[derive(Clone, Copy, Debug)]
pub enum Unusable<'r> {
    /// It has no credential the driver can send (removed from the store a
    /// moment ago, or not a valid header value).
    NoCredential,
    /// Its OAuth access token could not be had.
    Token(RefreshFailure<'r>),
}

/// A failed OAuth refresh.
#[derive(Clone, Copy, Debug)]
pub struct RefreshFailure<'r> {
    /// The grant is gone (`invalid_grant`, a reused refresh token): only a
    /// new login helps. Otherwise it may work later (network, 5xx).
    pub permanent: bool,
    /// A short reason, never a token.
    pub reason: &'r Reason,
}

/// Where the machine is.
#[derive(Debug)]
enum Phase {
    /// Not started.
    New,
    /// An [`Action::Send`] is out.
    Sending,
    /// An [`Action::Refresh`] is out, after this 401.
    Refreshing(Box<Classification>),
    /// An [`Action::Wait`] is out.
    Waiting {
        then: AfterWait,
        since: UnixMillis,
        planned: Duration,
    },
    /// Answered, or the client went away.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterWait {
    /// A pause before sending to the current account (`picked`: just
    /// picked, see [`Action::Send`]).
    Send { picked: bool },
    /// A wait for an account to recover (counts toward `max_wait`).
    Recover,
}

/// One request's rotation. See the module docs for the protocol.
pub struct Rotation<'a, S: Shared> {
    shared: S,
    config: &'a RotationConfig,
    session: Option<SessionKey>,
    ctx: AttemptContext,
    phase: Phase,
    /// The account of the current (or last) attempt.
    account: Option<Picked>,
    /// Whether `account`'s pick slot is open. Only a pick sets it; only
    /// [`Rotation::end_slot`] (one record or one release) clears it.
    holding: bool,
    /// Accounts this request has tried (or could not use).
    excluded: Vec<AccountId>,
    trace: AttemptTrace,
    /// The account and reason of a rotation whose failover event waits for
    /// the next pick.
    failover_from: Option<(Arc<str>, Reason)>,
    /// The reason of the last failure, for a 502 naming it.
    last_reason: Option<Reason>,
    /// Time spent waiting for accounts to recover.
    waited: Duration,
    /// Accounts whose cap other instances fill ([`Rotation::on_busy`]),
    /// until the next wait for a slot.
    busy: Vec<AccountId>,
    /// The slot handed to the answer's body, until the driver takes it.
    stream_slot: Option<AccountId>,
}

impl<'a, S: Shared> Rotation<'a, S> {
    /// A rotation for one request; nothing happens until [`Rotation::start`].
    pub fn new(shared: S, config: &'a RotationConfig, request: RequestFacts) -> Self {
        Rotation {
            shared,
            config,
            session: request.session,
            ctx: AttemptContext::new(request.now, request.replayable, 0, AccountKind::ApiKey),
            phase: Phase::New,
            account: None,
            holding: false,
            excluded: Vec::new(),
            trace: AttemptTrace::new(),
            failover_from: None,
            last_reason: None,
            waited: Duration::ZERO,
            busy: Vec::new(),
            stream_slot: None,
        }
    }

    /// The request started: counts it in the retry budget and picks the
    /// first account.
    pub fn start(&mut self) -> Action {
        if !matches!(self.phase, Phase::New) {
            return self.misuse("start");
        }
        let now = self.ctx.started;
        self.shared.budget(|b| b.deposit(now));
        self.pick(now, Duration::ZERO, false)
    }

    /// The account the current attempt goes to (after an [`Action::Send`] or
    /// [`Action::Refresh`]), or the one whose answer is passed through.
    pub fn account(&self) -> Option<&Picked> {
        self.account.as_ref()
    }

    /// The account whose pick slot this request holds, if any.
    pub fn holding(&self) -> Option<&AccountId> {
        self.account
            .as_ref()
            .filter(|_| self.holding)
            .map(|a| &a.id)
    }

    /// The attempts so far, for `x-marathon-attempts` and the access log.
    pub fn trace(&self) -> &AttemptTrace {
        &self.trace
    }

    /// Whether the request can still be sent again.
    pub fn replayable(&self) -> bool {
        self.ctx.replayable
    }

    /// Time spent so far waiting for accounts to recover.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Whether the machine has answered (or the client went away).
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// The current attempt's outcome, classified. Records it on the account
    /// unless the same account is tried again, and decides what follows.
    pub fn on_response(&mut self, c: Classification, now: UnixMillis) -> Action {
        if !matches!(self.phase, Phase::Sending) {
            return self.misuse("on_response");
        }
        let Some(account) = self.account.as_ref() else {
            return self.misuse("on_response without an account");
        };
        self.trace.record(account.label.clone(), &c, now);
        let decision = if matches!(c.class, Class::Success | Class::Request) {
            // Always passed through; no need to touch the shared budget.
            Decision::PassThrough
        } else {
            let (policy, ctx) = (&self.config.retry, &self.ctx);
            self.shared.budget(|b| decide(policy, ctx, &c, now, b))
        };
        self.ctx.advance(&decision, &c, self.ctx.kind);
        if decision == Decision::PassThrough && account.cap.is_some() && c.class != Class::Transport
        {
            // A capped account's slot lasts as long as the answer's body.
            self.hand_over(&c, now);
        } else if !matches!(
            decision,
            Decision::RetrySame { .. } | Decision::RefreshAndRetry
        ) {
            self.end_slot(Some(&c), now);
        }
        if decision != Decision::PassThrough {
            self.last_reason = Some(c.reason.clone());
        }
        match decision {
            Decision::PassThrough => self.pass_through(&c),
            Decision::RefreshAndRetry => {
                self.phase = Phase::Refreshing(Box::new(c));
                Action::Refresh
            }
            Decision::RetrySame { after } => self.send_after(now, after, false),
            Decision::Rotate { after } => self.rotate(&c, now, after),
            Decision::Exhausted => {
                // The only account failed: wait for it within `max_wait`, or
                // say when it will be back.
                self.exclude_current();
                self.pick(now, Duration::ZERO, false)
            }
            Decision::GiveUp(limit) => self.give_up(limit, now),
        }
    }

    /// The account just picked cannot be used; nothing was sent. Ends its
    /// slot without an outcome and picks another.
    pub fn on_unusable(&mut self, why: Unusable<'_>, now: UnixMillis) -> Action {
        if !matches!(self.phase, Phase::Sending) {
            return self.misuse("on_unusable");
        }
        self.end_slot(None, now);
        if let Unusable::Token(failure) = why {
            self.refresh_failed(failure, now);
        }
        self.exclude_current();
        self.pick(now, Duration::ZERO, false)
    }

    /// The account just picked has no free slot across the instances sharing
    /// its cap (another instance holds them all); nothing was sent. Ends its
    /// slot here without an outcome (it is not a failure: no cooldown, no
    /// event) and picks another account, or waits for a slot when none is
    /// free.
    pub fn on_busy(&mut self, now: UnixMillis) -> Action {
        if !matches!(self.phase, Phase::Sending) {
            return self.misuse("on_busy");
        }
        self.end_slot(None, now);
        if let Some(account) = self.account.as_ref() {
            self.busy.push(account.id.clone());
        }
        self.exclude_current();
        self.pick(now, Duration::ZERO, false)
    }

    /// After a pass-through of a capped account's answer: its slot, for the
    /// driver to end when the body ends (see [`StreamSlot`]).
    pub fn take_stream_slot(&mut self) -> Option<StreamSlot> {
        self.stream_slot
            .take()
            .map(|account| StreamSlot { account })
    }

    /// The result of an [`Action::Refresh`]: retry with the new token, or
    /// (the 401 stands) end the account's slot with it and rotate.
    pub fn on_refresh(
        &mut self,
        result: Result<(), RefreshFailure<'_>>,
        now: UnixMillis,
    ) -> Action {
        if !matches!(self.phase, Phase::Refreshing(_)) {
            return self.misuse("on_refresh");
        }
        let Phase::Refreshing(c) = std::mem::replace(&mut self.phase, Phase::Sending) else {
            unreachable!("checked above")
        };
        let Some(account) = self.account.as_ref() else {
            return self.misuse("on_refresh without an account");
        };
        match result {
            Ok(()) => {
                let events = self.shared.pool(|p| p.refreshed(&account.id, now));
                self.publish(events);
                Action::Send {
                    attempt: self.ctx.attempt,
                    picked: false,
                }
            }
            Err(failure) => {
                let label = account.label.clone();
                self.end_slot(Some(&c), now);
                self.refresh_failed(failure, now);
                self.failover_from = Some((label, c.reason));
                self.exclude_current();
                self.pick(now, Duration::ZERO, false)
            }
        }
    }

    /// The instant of the last [`Action::Wait`] has come.
    pub fn on_timer(&mut self, now: UnixMillis) -> Action {
        let Phase::Waiting {
            then,
            since,
            planned,
        } = self.phase
        else {
            return self.misuse("on_timer");
        };
        self.phase = Phase::Sending;
        match then {
            AfterWait::Send { picked } => Action::Send {
                attempt: self.ctx.attempt,
                picked,
            },
            AfterWait::Recover => {
                // Counted as planned even if the timer fired early, so every
                // wait brings `max_wait` closer; as long as it took if late.
                self.waited += planned.max(since.until(now));
                self.excluded.clear();
                self.busy.clear();
                self.pick(now, Duration::ZERO, false)
            }
        }
    }

    /// The client went away: the account's slot ends without an outcome (no
    /// penalty). Dropping the machine does the same.
    pub fn client_gone(&mut self) -> Action {
        if self.holding {
            self.end_slot(None, self.ctx.started);
        }
        self.phase = Phase::Done;
        Action::Done
    }

    /// Picks the next account; `pause` waits before sending to it. With
    /// `pass_on_empty`, finding none passes the answer just reported on.
    fn pick(&mut self, now: UnixMillis, pause: Duration, pass_on_empty: bool) -> Action {
        let request = PickRequest {
            session: self.session,
            exclude: &self.excluded,
        };
        let (pick, accounts) = self.shared.pool(|p| (p.pick(now, &request), p.len()));
        self.ctx.accounts_in_pool = u32::try_from(accounts).unwrap_or(u32::MAX);
        match pick {
            Pick::Account {
                id,
                label,
                kind,
                cap,
                ..
            } => {
                debug_assert!(!self.holding, "a pick while holding a slot");
                self.holding = true;
                self.ctx.kind = kind;
                self.ctx.same_account_tries = 0;
                self.ctx.refreshed = false;
                if let Some((from, reason)) = self.failover_from.take() {
                    self.publish(vec![Event::new(
                        now,
                        self.config.provider.clone(),
                        EventKind::Failover {
                            from: from.to_string(),
                            to: label.to_string(),
                            reason,
                        },
                    )]);
                }
                self.account = Some(Picked {
                    id,
                    label,
                    kind,
                    cap,
                });
                self.send_after(now, pause, true)
            }
            Pick::Exhausted(_) if pass_on_empty => self.respond(Answer::PassThrough),
            Pick::Exhausted(ex) => self.exhausted(ex, now),
        }
    }

    /// No account can take the request now.
    fn exhausted(&mut self, ex: Exhausted, now: UnixMillis) -> Action {
        // Usable accounts remain, but this request tried them all and none
        // was at fault (unreachable, timing out): that is the upstream's
        // failure, not "all accounts unavailable", and waiting for a
        // recovery that is not coming would loop.
        let tried_usable = ex
            .accounts
            .iter()
            .any(|a| usable(a) && self.excluded.contains(&a.id) && !self.busy.contains(&a.id));
        if tried_usable {
            let message = format!(
                "could not reach the {} upstream with any account ({})",
                self.config.provider,
                self.last_reason
                    .as_ref()
                    .map_or("unreachable", Reason::as_str)
            );
            return self.refuse(502, RefusalKind::Unreachable, message, None);
        }
        // Accounts at their cap are busy, not unavailable: wait for a slot.
        let for_slot = !self.busy.is_empty()
            || ex
                .accounts
                .iter()
                .any(|a| a.at_cap() && !self.excluded.contains(&a.id));
        let wait = if for_slot {
            self.slot_wait(now)
        } else {
            self.recovery_wait(ex.soonest, now)
        };
        if let Some(wait) = wait {
            self.phase = Phase::Waiting {
                then: AfterWait::Recover,
                since: now,
                planned: wait,
            };
            return Action::Wait {
                until: now.plus(wait),
            };
        }
        let refusal = exhausted_refusal(self.config, ex, now);
        self.respond(Answer::Refuse(Box::new(refusal)))
    }

    /// How long to wait for `soonest` within `max_wait` and the deadline.
    fn recovery_wait(&self, soonest: Option<UnixMillis>, now: UnixMillis) -> Option<Duration> {
        let (max_wait, soonest) = (self.config.max_wait?, soonest?);
        if !self.ctx.replayable {
            return None;
        }
        // "Now" means a probe is in flight: free when it ends, at no known time.
        let wait = Some(now.until(soonest))
            .filter(|w| !w.is_zero())
            .unwrap_or(PROBE_POLL);
        let fits = self.waited + wait <= max_wait
            && now.plus(wait) < self.ctx.started.plus(self.config.retry.deadline);
        fits.then_some(wait)
    }

    /// How long to wait before looking for a free slot again: within
    /// `max_wait` (the deadline when it is off, as a slot is normally free
    /// within one request's time), and only while the request can still be
    /// sent (replayable, or nothing sent yet).
    fn slot_wait(&self, now: UnixMillis) -> Option<Duration> {
        if !self.ctx.replayable && !self.trace.is_empty() {
            return None;
        }
        let limit = self.config.max_wait.unwrap_or(self.config.retry.deadline);
        let fits = self.waited + SLOT_POLL <= limit
            && now.plus(SLOT_POLL) < self.ctx.started.plus(self.config.retry.deadline);
        fits.then_some(SLOT_POLL)
    }

    /// A limit stopped the request after an account-scoped failure.
    fn give_up(&mut self, limit: Limit, now: UnixMillis) -> Action {
        let (accounts, soonest) = self.shared.pool(|p| (p.status(now), p.soonest_ready(now)));
        let ready: Vec<&str> = accounts
            .iter()
            .filter(|a| usable(a))
            .map(|a| a.label.as_str())
            .collect();
        if ready.is_empty() {
            let refusal = exhausted_refusal(self.config, Exhausted { soonest, accounts }, now);
            return self.respond(Answer::Refuse(Box::new(refusal)));
        }
        let why = match limit {
            Limit::Attempts => format!(
                "the attempt limit is {}",
                self.config.retry.attempt_limit(self.ctx.accounts_in_pool)
            ),
            Limit::Deadline => format!(
                "the deadline of {} would pass",
                HumanDuration(self.config.retry.deadline)
            ),
        };
        let message = format!(
            "gave up after {} attempts ({}; {why}) while {} {} ready: send the request again",
            self.trace.len(),
            self.trace,
            ready.join(", "),
            if ready.len() == 1 { "is" } else { "are" },
        );
        self.refuse(503, RefusalKind::GaveUp, message, None)
    }

    /// Moves away from the current account after `c`.
    fn rotate(&mut self, c: &Classification, now: UnixMillis, after: Duration) -> Action {
        if let Some(account) = self.account.as_ref() {
            if c.class == Class::Auth {
                // Still 401 after a refresh (or an API key the provider refuses).
                let id = account.id.clone();
                let events = self
                    .shared
                    .pool(|p| p.mark_needs_login(&id, now, &c.reason));
                if !events.is_empty() {
                    self.shared.persist_needs_login(&id);
                    self.shared.publish(events);
                }
            }
            self.failover_from = Some((account.label.clone(), short_reason(c)));
        }
        self.exclude_current();
        // Picked now, sent after the pause: if there is no other account, a
        // provider's answer is still in hand to pass on.
        self.pick(now, after, c.class == Class::Provider)
    }

    /// The answer to a decision to stop after `c`.
    fn pass_through(&mut self, c: &Classification) -> Action {
        if c.class != Class::Transport {
            return self.respond(Answer::PassThrough);
        }
        let message = format!(
            "could not reach the {} upstream ({})",
            self.config.provider, c.reason
        );
        let account = self.account.as_ref().map(|a| a.label.clone());
        self.refuse(502, RefusalKind::Unreachable, message, account)
    }

    /// A token refresh failed: announce it (once per needs-login) and store
    /// a permanent failure.
    fn refresh_failed(&mut self, failure: RefreshFailure<'_>, now: UnixMillis) {
        let Some(id) = self.account.as_ref().map(|a| a.id.clone()) else {
            return;
        };
        let events = self
            .shared
            .pool(|p| p.refresh_failed(&id, now, failure.permanent, failure.reason.clone()));
        if events
            .iter()
            .any(|e| matches!(e.kind, EventKind::NeedsLogin { .. }))
        {
            self.shared.persist_needs_login(&id);
        }
        self.publish(events);
    }

    fn send_after(&mut self, now: UnixMillis, pause: Duration, picked: bool) -> Action {
        if pause.is_zero() {
            self.phase = Phase::Sending;
            return Action::Send {
                attempt: self.ctx.attempt,
                picked,
            };
        }
        self.phase = Phase::Waiting {
            then: AfterWait::Send { picked },
            since: now,
            planned: pause,
        };
        Action::Wait {
            until: now.plus(pause),
        }
    }

    /// Ends the current account's slot: records `outcome`, or releases it
    /// without one. The only place a slot ends.
    fn end_slot(&mut self, outcome: Option<&Classification>, now: UnixMillis) {
        let Some(account) = self.account.as_ref().filter(|_| self.holding) else {
            debug_assert!(false, "no slot to end");
            return;
        };
        self.holding = false;
        match outcome {
            Some(c) => {
                let events = self.shared.pool(|p| p.record(&account.id, c, now));
                self.publish(events);
            }
            None => self.shared.pool(|p| p.release(&account.id)),
        }
    }

    /// Records a capped account's passed-through answer and hands its slot
    /// to the answer's body.
    fn hand_over(&mut self, c: &Classification, now: UnixMillis) {
        let Some(account) = self.account.as_ref().filter(|_| self.holding) else {
            debug_assert!(false, "no slot to hand over");
            return;
        };
        self.holding = false;
        let id = account.id.clone();
        let events = self.shared.pool(|p| p.record_late(&id, c, now));
        self.stream_slot = Some(id);
        self.publish(events);
    }

    fn exclude_current(&mut self) {
        if let Some(account) = self.account.as_ref() {
            self.excluded.push(account.id.clone());
        }
    }

    fn publish(&self, events: Vec<Event>) {
        if !events.is_empty() {
            self.shared.publish(events);
        }
    }

    fn refuse(
        &mut self,
        status: u16,
        kind: RefusalKind,
        message: String,
        account: Option<Arc<str>>,
    ) -> Action {
        self.respond(Answer::Refuse(Box::new(Refusal {
            status,
            kind,
            message,
            retry_after: None,
            account,
            accounts: None,
            resets_at: None,
        })))
    }

    fn respond(&mut self, answer: Answer) -> Action {
        debug_assert!(!self.holding, "answered while holding a slot");
        self.phase = Phase::Done;
        Action::Respond(answer)
    }

    /// An event that does not fit the phase: a driver bug. Ends the slot and
    /// the request rather than corrupting the pool.
    fn misuse(&mut self, what: &str) -> Action {
        debug_assert!(false, "rotation: {what} in phase {:?}", self.phase);
        let message = format!("internal error: unexpected {what}");
        if self.holding {
            self.end_slot(None, self.ctx.started);
        }
        self.refuse(502, RefusalKind::Unreachable, message, None)
    }
}

impl<S: Shared> Drop for Rotation<'_, S> {
    /// The client went away (the driver's future was dropped): the slot ends
    /// without an outcome.
    fn drop(&mut self) {
        if self.holding {
            self.end_slot(None, self.ctx.started);
        }
        if let Some(id) = self.stream_slot.take() {
            self.shared.pool(|p| p.release(&id));
        }
    }
}

impl<S: Shared> std::fmt::Debug for Rotation<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotation")
            .field("phase", &self.phase)
            .field("account", &self.account)
            .field("holding", &self.holding)
            .field("trace", &self.trace.to_string())
            .field("waited", &self.waited)
            .finish_non_exhaustive()
    }
}

/// An error event arrived inside a stream whose head was passed through (and
/// recorded as a success, which ended the request's slot). Applies it to the
/// account without ending any slot, and benches the account for
/// [`MID_STREAM_BENCH`] even for a provider-side error, so that the next
/// request starts elsewhere.
pub fn stream_error<S: Shared>(
    shared: &S,
    account: &AccountId,
    c: &Classification,
    now: UnixMillis,
) {
    let events = shared.pool(|pool| {
        let mut events = pool.record_late(account, c, now);
        let until = now.plus(MID_STREAM_BENCH);
        let benched_longer = matches!(
            pool.account_status(account, now).map(|s| s.health),
            Some(Health::Cooling { until: u }) if u >= until
        );
        if !c.class.blames_account() && !benched_longer {
            events.extend(pool.set_cooldown(account, until, &c.reason, now));
        }
        events
    });
    if !events.is_empty() {
        shared.publish(events);
    }
}

/// Whether an account could take a request now (or when its probe ends).
fn usable(a: &AccountStatus) -> bool {
    matches!(a.health, Health::Ready | Health::Probing)
}

/// "All accounts unavailable": 429, `retry-after` the soonest reset, a
/// message naming each account's state and when the first is back. A wait
/// longer than `short_wait` (or no recovery at all) is [`RefusalKind::Spent`].
pub fn exhausted_refusal(config: &RotationConfig, ex: Exhausted, now: UnixMillis) -> Refusal {
    let provider = &config.provider;
    let mut states = String::new();
    for (i, a) in ex.accounts.iter().enumerate() {
        if i > 0 {
            states.push_str(", ");
        }
        describe(&mut states, a);
    }
    if states.is_empty() {
        states.push_str("no accounts configured: add one with `marathon auth add`");
    }
    let next = match ex.soonest {
        Some(t) if t > now => format!(
            "; the first one is usable again in {} (at {})",
            HumanDuration(now.until(t)),
            ClockTime { at: t, now }
        ),
        Some(_) => "; one is being probed and may be usable again in a moment".into(),
        None => "; none will recover on its own: run `marathon auth list` and log in again or add an account".into(),
    };
    let retry_after = ex
        .soonest
        .map_or(60, |t| now.until(t).as_secs_f64().ceil().max(1.0) as u64);
    let kind = match ex.soonest {
        Some(t) if now.until(t) <= config.short_wait => RefusalKind::Exhausted,
        _ => RefusalKind::Spent,
    };
    let resets_at = ex.soonest.map(|t| t.max(now));
    Refusal {
        status: 429,
        kind,
        message: format!(
            "all {} {provider} accounts are unavailable ({states}){next}",
            ex.accounts.len()
        ),
        retry_after: Some(retry_after),
        account: None,
        accounts: Some(ex),
        resets_at,
    }
}

/// `a1 cooling for 20s after rate_limit_error`, `a2 needs login`, ...
fn describe(out: &mut String, a: &AccountStatus) {
    let _ = match (&a.health, a.cooldown_remaining) {
        (Health::Cooling { .. }, Some(d)) => {
            let _ = write!(out, "{} cooling for {}", a.label, HumanDuration(d));
            match &a.last_reason {
                Some(r) => write!(out, " after {r}"),
                None => Ok(()),
            }
        }
        (Health::NeedsLogin, _) => write!(out, "{} needs login", a.label),
        (Health::Disabled, _) => write!(out, "{} disabled", a.label),
        (h, _) => write!(out, "{} {}", a.label, h.as_str()),
    };
}

/// "429 rate_limit_error" style reason for failover events.
fn short_reason(c: &Classification) -> Reason {
    match c.status {
        Some(s) => Reason::with_status(s, &c.reason),
        None => c.reason.clone(),
    }
}

#[cfg(test)]
mod tests;
