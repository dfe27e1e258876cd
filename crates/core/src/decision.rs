//! The retry decision, as a pure function (after tower's retry `Policy`).
//!
//! After each attempt the rotation machine ([`crate::rotation`]) asks
//! [`decide`] what to do next. The answer depends only on its arguments: the
//! policy, the per-request [`AttemptContext`], the [`Classification`], the
//! time, and the shared [`RetryBudget`]. Nothing here touches a pool: the
//! machine applies the outcome to the pool and, on [`Decision::Rotate`], picks
//! again with the tried accounts excluded.
//!
//! Rules, in order:
//! 1. success, request-scoped failures (400/404/413/422...) and cancels are
//!    passed through;
//! 2. a request that cannot be replayed (body past the buffer cap, or a byte
//!    already sent downstream) is never retried;
//! 3. 401 on an OAuth account not yet refreshed in this request → refresh and
//!    retry; other account-scoped failures (429, unusable, 401, 403) → rotate
//!    at once;
//! 4. transport failures → retry the same account `transport_retries_same`
//!    times, then rotate;
//! 5. provider failures (5xx, 529) → wait (the provider's `retry-after` if it
//!    is within `provider_backoff_max`, else exponential backoff with jitter)
//!    and retry, at most `provider_retries` times; when those are spent,
//!    move once to another account (a provider-scoped error is often not
//!    provider-wide: capacity differs by organisation, plan and region, and
//!    the client's own retry would land on the same account again, since
//!    provider errors bench nobody); then pass the answer through. A
//!    `retry-after` longer than `provider_backoff_max` is the provider naming
//!    its own time: that answer is passed through at once;
//! 6. every retry must fit the attempt limit and the deadline; retries that
//!    could amplify a provider-wide problem (provider and transport failures,
//!    and refreshes) withdraw from the budget. Rotating away from an account
//!    that is itself to blame does not: the pool bounds it (each account once
//!    per request, and the failure benches the account for everyone).
//!
//! When a limit stops the retries after an **account-scoped** failure the
//! answer is [`Decision::GiveUp`] (the machine then answers "all accounts
//! unavailable" if that is true, or "gave up after N attempts" if an account
//! is still ready); a one-account pool with nowhere to rotate is
//! [`Decision::Exhausted`]; after any other failure it is
//! [`Decision::PassThrough`]. An empty budget always passes through: it
//! exists to stop amplification, and the provider's own answer is the honest
//! one.

use std::fmt;
use std::time::Duration;

use crate::account::AccountKind;
use crate::budget::RetryBudget;
use crate::clock::UnixMillis;
use crate::cooldown::{splitmix64, unit_sample};
use crate::fmt::HumanDuration;
use crate::outcome::{Class, Classification};

/// Limits on retrying one request.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Most upstream attempts for one request. `None` (the default) lets the
    /// number of accounts bound it: every rotation must reach an account not
    /// yet tried (the proxy's exclude list), and same-account retries have
    /// their own small limits.
    pub max_attempts: Option<u32>,
    /// Overall time for one request, all attempts and waits included (default 10 min).
    pub deadline: Duration,
    /// Retries on the same account after a transport failure, before rotating (default 1).
    pub transport_retries_same: u32,
    /// Retries after provider-scoped failures (default 2).
    pub provider_retries: u32,
    /// Backoff base between provider retries (default 500 ms).
    pub provider_backoff: Duration,
    /// Longest wait before a provider retry; a `retry-after` beyond it is
    /// passed to the client instead of waited out (default 5 s).
    pub provider_backoff_max: Duration,
    /// Retry provider failures on another account rather than the same one
    /// (default false: a provider-wide failure is not fixed by rotating, and
    /// staying keeps prompt caches warm).
    pub provider_rotate: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: crate::defaults::MAX_ATTEMPTS,
            deadline: Duration::from_secs(600),
            transport_retries_same: crate::defaults::NETWORK_RETRY_ATTEMPTS,
            provider_retries: 2,
            provider_backoff: Duration::from_millis(500),
            provider_backoff_max: Duration::from_secs(5),
            provider_rotate: false,
        }
    }
}

impl RetryPolicy {
    /// The attempt cap for a pool of `accounts_in_pool` accounts. With
    /// `max_attempts: None` it is a safety net above what the per-kind limits
    /// allow: each account once, its refresh retry and transport retries, plus
    /// the provider retries.
    pub fn attempt_limit(&self, accounts_in_pool: u32) -> u32 {
        self.max_attempts.unwrap_or_else(|| {
            accounts_in_pool
                .max(1)
                .saturating_mul(2u32.saturating_add(self.transport_retries_same))
                .saturating_add(self.provider_retries)
        })
    }
}

/// Per-request state: what has been tried so far. Separate from the shared
/// state (pool, budget), as in tower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptContext {
    /// Attempts made so far, including the one whose outcome is being decided (1-based).
    pub attempt: u32,
    /// When the request arrived.
    pub started: UnixMillis,
    /// Whether the request can be sent again (body buffered within the cap,
    /// nothing sent downstream yet).
    pub replayable: bool,
    /// Accounts in the provider's pool.
    pub accounts_in_pool: u32,
    /// Retries already made on the current account (0 on its first attempt).
    pub same_account_tries: u32,
    /// Whether the current account's token was already refreshed in this request.
    pub refreshed: bool,
    /// The current account's kind.
    pub kind: AccountKind,
    /// Provider-scoped failures earlier in this request (not counting the
    /// outcome being decided).
    pub provider_failures: u32,
    /// Whether a provider-scoped failure already moved this request to
    /// another account (it does so once).
    pub provider_rotated: bool,
}

impl AttemptContext {
    /// The context of a request's first attempt.
    pub fn new(
        started: UnixMillis,
        replayable: bool,
        accounts_in_pool: u32,
        kind: AccountKind,
    ) -> Self {
        AttemptContext {
            attempt: 1,
            started,
            replayable,
            accounts_in_pool,
            same_account_tries: 0,
            refreshed: false,
            kind,
            provider_failures: 0,
            provider_rotated: false,
        }
    }

    /// Moves to the next attempt after `decision` was taken on outcome `c`.
    /// `next_kind` is the kind of the account the next attempt uses (the
    /// same one unless rotating).
    pub fn advance(&mut self, decision: &Decision, c: &Classification, next_kind: AccountKind) {
        self.attempt = self.attempt.saturating_add(1);
        if c.class == Class::Provider {
            self.provider_failures = self.provider_failures.saturating_add(1);
        }
        match decision {
            Decision::RefreshAndRetry => {
                self.refreshed = true;
                self.same_account_tries = self.same_account_tries.saturating_add(1);
            }
            Decision::RetrySame { .. } => {
                self.same_account_tries = self.same_account_tries.saturating_add(1)
            }
            Decision::Rotate { .. } => {
                self.same_account_tries = 0;
                self.refreshed = false;
                self.kind = next_kind;
                if c.class == Class::Provider {
                    self.provider_rotated = true;
                }
            }
            Decision::PassThrough | Decision::Exhausted | Decision::GiveUp(_) => {}
        }
    }
}

/// What to do after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Give the client this response (or, for a transport failure, a 502).
    PassThrough,
    /// Refresh the OAuth token (single-flight) and retry the same account.
    RefreshAndRetry,
    /// Retry the same account after a pause.
    RetrySame {
        /// How long to wait first.
        after: Duration,
    },
    /// Pick another account (excluding those tried) after a pause.
    Rotate {
        /// How long to wait first.
        after: Duration,
    },
    /// The only account failed and there is nowhere to rotate: the pool
    /// decides the answer ("all accounts unavailable", or a wait for the
    /// account to recover within `max_wait`).
    Exhausted,
    /// A limit stopped the retries after an account-scoped failure.
    GiveUp(Limit),
}

/// Which limit of the [`RetryPolicy`] stopped a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// [`RetryPolicy::attempt_limit`] attempts were made.
    Attempts,
    /// Another attempt would end past [`RetryPolicy::deadline`].
    Deadline,
}

impl Decision {
    /// Whether another attempt follows.
    pub fn is_retry(&self) -> bool {
        matches!(
            self,
            Decision::RefreshAndRetry | Decision::RetrySame { .. } | Decision::Rotate { .. }
        )
    }
}

/// Decides what follows an attempt whose outcome was classified as `c`.
/// See the module docs for the rules. Withdraws from `budget` exactly when
/// the answer is a retry that could amplify load (not a rotation away from
/// an account-scoped failure).
pub fn decide(
    policy: &RetryPolicy,
    ctx: &AttemptContext,
    c: &Classification,
    now: UnixMillis,
    budget: &mut RetryBudget,
) -> Decision {
    if matches!(c.class, Class::Success | Class::Request | Class::Cancelled) || !ctx.replayable {
        return Decision::PassThrough;
    }
    // What a limit turns the answer into: an account's own failure is no
    // answer to give (the machine looks at the pool), any other is.
    let blames = c.class.blames_account();
    let stop = |limit: Option<Limit>| match (blames, limit) {
        (false, _) => Decision::PassThrough,
        (true, Some(limit)) => Decision::GiveUp(limit),
        (true, None) => Decision::Exhausted,
    };
    let wanted = match c.class {
        Class::Auth if ctx.kind == AccountKind::Oauth && !ctx.refreshed => {
            Decision::RefreshAndRetry
        }
        Class::RateLimited | Class::Unusable | Class::Auth | Class::Forbidden => Decision::Rotate {
            after: Duration::ZERO,
        },
        Class::Transport if ctx.same_account_tries < policy.transport_retries_same => {
            Decision::RetrySame {
                after: Duration::ZERO,
            }
        }
        Class::Transport => Decision::Rotate {
            after: Duration::ZERO,
        },
        Class::Provider => match provider_retry(policy, ctx, c, now) {
            Some(d) => d,
            None => return Decision::PassThrough,
        },
        Class::Success | Class::Request | Class::Cancelled => return Decision::PassThrough,
    };
    // The attempt limit first: no later answer (a wait for the only account
    // to recover, say) may lead to one more attempt than it allows.
    if ctx.attempt >= policy.attempt_limit(ctx.accounts_in_pool) {
        return stop(Some(Limit::Attempts));
    }
    if matches!(wanted, Decision::Rotate { .. }) && ctx.accounts_in_pool <= 1 {
        return stop(None);
    }
    let after = match wanted {
        Decision::RetrySame { after } | Decision::Rotate { after } => after,
        _ => Duration::ZERO,
    };
    if now.plus(after) >= ctx.started.plus(policy.deadline) {
        return stop(Some(Limit::Deadline));
    }
    // Rotating away from an account that is itself to blame (rate limit,
    // quota, auth) is bounded by the pool: each account is tried at most once
    // per request, and the failure benches it for everyone. Only retries that
    // could amplify a provider-wide problem (provider errors, transport
    // failures) spend the budget; otherwise a burst onto freshly limited
    // accounts would drain it and fail requests that a healthy account could
    // have served.
    let amplifies = !(blames && matches!(wanted, Decision::Rotate { .. }));
    if amplifies && !budget.try_withdraw(now) {
        return Decision::PassThrough;
    }
    wanted
}

/// The retry after a provider-scoped failure, if any (rule 5).
fn provider_retry(
    policy: &RetryPolicy,
    ctx: &AttemptContext,
    c: &Classification,
    now: UnixMillis,
) -> Option<Decision> {
    if ctx.provider_failures >= policy.provider_retries {
        // The backoff retries are spent: once, another account.
        return (!ctx.provider_rotated && ctx.accounts_in_pool > 1).then_some(Decision::Rotate {
            after: Duration::ZERO,
        });
    }
    let after = match &c.reset {
        Some(hint) => {
            let wait = now.until(hint.at);
            if wait > policy.provider_backoff_max {
                return None;
            }
            wait
        }
        None => provider_backoff(policy, ctx),
    };
    Some(if policy.provider_rotate && ctx.accounts_in_pool > 1 {
        Decision::Rotate { after }
    } else {
        Decision::RetrySame { after }
    })
}

/// `base * 2^failures` capped, with "equal jitter" (half fixed, half random)
/// so that requests that failed together do not retry together. The random
/// half is derived from the request's start time and attempt number, which
/// keeps [`decide`] pure.
fn provider_backoff(policy: &RetryPolicy, ctx: &AttemptContext) -> Duration {
    let exp = policy
        .provider_backoff
        .saturating_mul(1u32 << ctx.provider_failures.min(20))
        .min(policy.provider_backoff_max);
    let sample = unit_sample(splitmix64(ctx.started.0 ^ (u64::from(ctx.attempt) << 48)));
    exp / 2 + (exp / 2).mul_f64(sample)
}

/// One attempt in the `x-marathon-attempts` trace.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttemptEntry {
    /// The account's label.
    pub label: std::sync::Arc<str>,
    /// HTTP status, if a response came back.
    pub status: Option<u16>,
    /// The outcome's class.
    pub class: Class,
    /// A short note: the reset hint and wait (`unified, 1h00m`), or the transport failure.
    pub note: Option<String>,
}

/// The attempts of one request, for the `x-marathon-attempts` response
/// header and the access log: `personal=429(unified, 1h00m) work=200`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttemptTrace {
    /// The attempts, in order.
    pub entries: Vec<AttemptEntry>,
}

impl AttemptTrace {
    /// An empty trace.
    pub fn new() -> Self {
        AttemptTrace::default()
    }

    /// Adds an entry as is.
    pub fn push(&mut self, entry: AttemptEntry) {
        self.entries.push(entry);
    }

    /// Adds an attempt on `label` with outcome `c`; the note is derived from
    /// it (reset hint source and wait from `now`, or the transport reason).
    pub fn record(
        &mut self,
        label: impl Into<std::sync::Arc<str>>,
        c: &Classification,
        now: UnixMillis,
    ) {
        let note = match (&c.reset, c.class) {
            (Some(h), _) => Some(format!(
                "{}, {}",
                h.source.as_str(),
                HumanDuration(now.until(h.at))
            )),
            (None, Class::Transport) => Some(c.reason.to_string()),
            (None, _) => None,
        };
        self.push(AttemptEntry {
            label: label.into(),
            status: c.status,
            class: c.class,
            note,
        });
    }

    /// Number of attempts.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no attempt was made.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Renders a header-safe value: labels and notes keep visible ASCII only,
/// with the trace's own separators replaced.
impl fmt::Display for AttemptTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn safe(f: &mut fmt::Formatter<'_>, s: &str, allow_space: bool) -> fmt::Result {
            for ch in s.chars() {
                let ok = ch.is_ascii_graphic() && !matches!(ch, '=' | '(' | ')')
                    || (allow_space && ch == ' ');
                if ok {
                    write!(f, "{ch}")?;
                } else {
                    f.write_str("_")?;
                }
            }
            Ok(())
        }
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            safe(f, &e.label, false)?;
            f.write_str("=")?;
            match e.status {
                Some(s) => write!(f, "{s}")?,
                None => f.write_str(e.class.as_str())?,
            }
            if let Some(n) = &e.note {
                f.write_str("(")?;
                safe(f, n, true)?;
                f.write_str(")")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{HintSource, ResetHint};

    const NOW: UnixMillis = UnixMillis(1_764_330_000_000);

    fn cls(class: Class, status: Option<u16>, reason: &'static str) -> Classification {
        Classification {
            class,
            status,
            reason: reason.into(),
            reset: None,
            usage: vec![],
        }
    }

    fn ctx(kind: AccountKind) -> AttemptContext {
        AttemptContext::new(NOW, true, 3, kind)
    }

    fn budget() -> RetryBudget {
        RetryBudget::new(Duration::from_secs(10), 100, 0.2)
    }

    fn d(c: &Classification, ctx: &AttemptContext) -> Decision {
        decide(&RetryPolicy::default(), ctx, c, NOW, &mut budget())
    }

    #[test]
    fn success_request_and_cancel_pass_through() {
        let c = ctx(AccountKind::ApiKey);
        assert_eq!(
            d(&cls(Class::Success, Some(200), "ok"), &c),
            Decision::PassThrough
        );
        assert_eq!(
            d(&cls(Class::Request, Some(400), "invalid_request_error"), &c),
            Decision::PassThrough
        );
        assert_eq!(
            d(&cls(Class::Request, Some(413), "request_too_large"), &c),
            Decision::PassThrough
        );
        assert_eq!(
            d(&cls(Class::Cancelled, None, "client_cancelled"), &c),
            Decision::PassThrough
        );
    }

    #[test]
    fn account_scoped_failures_rotate_at_once() {
        let c = ctx(AccountKind::ApiKey);
        for (class, status, reason) in [
            (Class::RateLimited, 429, "rate_limit_error"),
            (Class::Unusable, 429, "insufficient_quota"),
            (Class::Unusable, 402, "payment_required"),
            (Class::Forbidden, 403, "usage_not_included"),
            (Class::Auth, 401, "invalid_api_key"),
        ] {
            assert_eq!(
                d(&cls(class, Some(status), reason), &c),
                Decision::Rotate {
                    after: Duration::ZERO
                },
                "{reason}"
            );
        }
    }

    #[test]
    fn oauth_401_refreshes_once_then_rotates() {
        let c401 = cls(Class::Auth, Some(401), "authentication_error");
        let mut c = ctx(AccountKind::Oauth);
        let first = d(&c401, &c);
        assert_eq!(first, Decision::RefreshAndRetry);
        c.advance(&first, &c401, AccountKind::Oauth);
        assert!(c.refreshed);
        assert_eq!(
            d(&c401, &c),
            Decision::Rotate {
                after: Duration::ZERO
            }
        );
        // 403 on OAuth rotates without a refresh loop too.
        assert_eq!(
            d(
                &cls(Class::Forbidden, Some(403), "permission_error"),
                &ctx(AccountKind::Oauth)
            ),
            Decision::Rotate {
                after: Duration::ZERO
            }
        );
    }

    #[test]
    fn transport_retries_same_once_then_rotates() {
        let t = cls(Class::Transport, None, "connect");
        let mut c = ctx(AccountKind::ApiKey);
        let first = d(&t, &c);
        assert_eq!(
            first,
            Decision::RetrySame {
                after: Duration::ZERO
            }
        );
        c.advance(&first, &t, AccountKind::ApiKey);
        let second = d(&t, &c);
        assert_eq!(
            second,
            Decision::Rotate {
                after: Duration::ZERO
            }
        );
        c.advance(&second, &t, AccountKind::Oauth);
        assert_eq!((c.same_account_tries, c.kind), (0, AccountKind::Oauth));
    }

    #[test]
    fn provider_failures_back_off_then_pass_through() {
        let c529 = cls(Class::Provider, Some(529), "overloaded_error");
        let mut c = ctx(AccountKind::ApiKey);
        let first = d(&c529, &c);
        let Decision::RetrySame { after } = first else {
            panic!("{first:?}")
        };
        assert!(
            after >= Duration::from_millis(250) && after <= Duration::from_millis(500),
            "{after:?}"
        );
        c.advance(&first, &c529, AccountKind::ApiKey);
        let second = d(&c529, &c);
        let Decision::RetrySame { after } = second else {
            panic!("{second:?}")
        };
        assert!(
            after >= Duration::from_millis(500) && after <= Duration::from_millis(1000),
            "{after:?}"
        );
        c.advance(&second, &c529, AccountKind::ApiKey);
        // Bug guarded: the 529 went to the client after three tries on one
        // account while another account was ready.
        let third = d(&c529, &c);
        assert_eq!(
            third,
            Decision::Rotate {
                after: Duration::ZERO
            },
            "two provider retries, then once another account"
        );
        c.advance(&third, &c529, AccountKind::ApiKey);
        assert!(c.provider_rotated);
        assert_eq!(
            d(&c529, &c),
            Decision::PassThrough,
            "then the provider's answer"
        );
        // A one-account pool passes the answer on after the retries.
        let mut single = AttemptContext::new(NOW, true, 1, AccountKind::ApiKey);
        single.provider_failures = 2;
        assert_eq!(d(&c529, &single), Decision::PassThrough);
    }

    #[test]
    fn provider_retry_after_is_honoured_within_bounds() {
        let mut c503 = cls(Class::Provider, Some(503), "server_is_overloaded");
        c503.reset = Some(ResetHint {
            at: NOW.plus(Duration::from_secs(2)),
            source: HintSource::RetryAfterSeconds,
        });
        assert_eq!(
            d(&c503, &ctx(AccountKind::ApiKey)),
            Decision::RetrySame {
                after: Duration::from_secs(2)
            }
        );
        c503.reset = Some(ResetHint {
            at: NOW.plus(Duration::from_secs(17)),
            source: HintSource::RetryAfterSeconds,
        });
        assert_eq!(
            d(&c503, &ctx(AccountKind::ApiKey)),
            Decision::PassThrough,
            "17 s is longer than we hold a client"
        );
        let rotate = RetryPolicy {
            provider_rotate: true,
            ..RetryPolicy::default()
        };
        c503.reset = None;
        assert!(matches!(
            decide(
                &rotate,
                &ctx(AccountKind::ApiKey),
                &c503,
                NOW,
                &mut budget()
            ),
            Decision::Rotate { .. }
        ));
    }

    #[test]
    fn non_replayable_requests_are_never_retried() {
        let mut c = ctx(AccountKind::Oauth);
        c.replayable = false;
        for class in [
            Class::RateLimited,
            Class::Auth,
            Class::Transport,
            Class::Provider,
            Class::Unusable,
        ] {
            assert_eq!(
                d(&cls(class, Some(429), "x"), &c),
                Decision::PassThrough,
                "{class:?}"
            );
        }
    }

    #[test]
    fn limits_stop_with_give_up_after_account_failures() {
        let c429 = cls(Class::RateLimited, Some(429), "rate_limit_error");
        let policy = RetryPolicy {
            max_attempts: Some(2),
            ..RetryPolicy::default()
        };
        let mut c = ctx(AccountKind::ApiKey);
        assert!(decide(&policy, &c, &c429, NOW, &mut budget()).is_retry());
        c.attempt = 2;
        assert_eq!(
            decide(&policy, &c, &c429, NOW, &mut budget()),
            Decision::GiveUp(Limit::Attempts)
        );
        let t = cls(Class::Transport, None, "reset");
        assert_eq!(
            decide(&policy, &c, &t, NOW, &mut budget()),
            Decision::PassThrough
        );
        // A single account has nowhere to rotate to.
        let mut single = AttemptContext::new(NOW, true, 1, AccountKind::ApiKey);
        assert_eq!(d(&c429, &single), Decision::Exhausted);
        // ... but its attempt limit still comes first: a wait for it to
        // recover must not lead to one attempt more than allowed.
        single.attempt = 2;
        assert_eq!(
            decide(&policy, &single, &c429, NOW, &mut budget()),
            Decision::GiveUp(Limit::Attempts)
        );
    }

    #[test]
    fn deadline_stops_retries() {
        let c429 = cls(Class::RateLimited, Some(429), "rate_limit_error");
        let c = ctx(AccountKind::ApiKey);
        let late = NOW.plus(Duration::from_secs(600));
        assert_eq!(
            decide(&RetryPolicy::default(), &c, &c429, late, &mut budget()),
            Decision::GiveUp(Limit::Deadline)
        );
        // A provider backoff that would end past the deadline is not started.
        let mut c503 = cls(Class::Provider, Some(503), "http_503");
        c503.reset = Some(ResetHint {
            at: NOW.plus(Duration::from_secs(599)),
            source: HintSource::RetryAfterSeconds,
        });
        let policy = RetryPolicy {
            provider_backoff_max: Duration::from_secs(3600),
            ..RetryPolicy::default()
        };
        let almost = NOW.plus(Duration::from_secs(598));
        assert_eq!(
            decide(&policy, &c, &c503, almost, &mut budget()),
            Decision::RetrySame {
                after: Duration::from_secs(1)
            }
        );
        let policy = RetryPolicy {
            deadline: Duration::from_secs(599),
            ..policy
        };
        assert_eq!(
            decide(&policy, &c, &c503, almost, &mut budget()),
            Decision::PassThrough
        );
    }

    #[test]
    fn empty_budget_passes_through() {
        let c503 = cls(Class::Provider, Some(503), "server_is_overloaded");
        let mut empty = RetryBudget::new(Duration::from_secs(10), 0, 0.2);
        assert_eq!(
            decide(
                &RetryPolicy::default(),
                &ctx(AccountKind::ApiKey),
                &c503,
                NOW,
                &mut empty
            ),
            Decision::PassThrough
        );
        let mut one = RetryBudget::new(Duration::from_secs(1), 1, 0.0);
        let policy = RetryPolicy::default();
        assert!(decide(&policy, &ctx(AccountKind::ApiKey), &c503, NOW, &mut one).is_retry());
        assert_eq!(
            decide(&policy, &ctx(AccountKind::ApiKey), &c503, NOW, &mut one),
            Decision::PassThrough
        );
    }

    /// Regression: a burst onto freshly rate-limited accounts drained the
    /// budget with rotations and failed requests a healthy account could serve.
    #[test]
    fn rotating_away_from_a_rate_limited_account_spends_no_budget() {
        let c429 = cls(Class::RateLimited, Some(429), "rate_limit_error");
        let mut empty = RetryBudget::new(Duration::from_secs(10), 0, 0.0);
        assert_eq!(
            decide(
                &RetryPolicy::default(),
                &ctx(AccountKind::ApiKey),
                &c429,
                NOW,
                &mut empty
            ),
            Decision::Rotate {
                after: Duration::ZERO
            }
        );
    }

    #[test]
    fn pass_through_does_not_spend_budget() {
        let mut b = RetryBudget::new(Duration::from_secs(1), 1, 0.0);
        let ok = cls(Class::Success, Some(200), "ok");
        for _ in 0..5 {
            decide(
                &RetryPolicy::default(),
                &ctx(AccountKind::ApiKey),
                &ok,
                NOW,
                &mut b,
            );
        }
        assert_eq!(b.available(NOW), 1);
    }

    #[test]
    fn default_attempt_limit_scales_with_accounts() {
        let p = RetryPolicy::default();
        assert_eq!(p.attempt_limit(3), 3 * 3 + 2);
        assert_eq!(p.attempt_limit(0), 3 + 2);
        assert_eq!(
            RetryPolicy {
                max_attempts: Some(4),
                ..p
            }
            .attempt_limit(100),
            4
        );
    }

    #[test]
    fn trace_renders_header_value() {
        let mut trace = AttemptTrace::new();
        let mut c429 = cls(Class::RateLimited, Some(429), "rate_limit_error");
        // anthropic-ratelimit-unified-reset: 1764334800, an hour and 20 minutes out.
        c429.reset = Some(ResetHint {
            at: UnixMillis::from_secs(1_764_333_600),
            source: HintSource::AnthropicUnified,
        });
        trace.record("personal", &c429, NOW);
        trace.record("work", &cls(Class::Success, Some(200), "ok"), NOW);
        assert_eq!(trace.to_string(), "personal=429(unified, 1h00m) work=200");
        trace.record("team (eu)", &cls(Class::Transport, None, "connect"), NOW);
        assert_eq!(
            trace.to_string(),
            "personal=429(unified, 1h00m) work=200 team__eu_=transport(connect)"
        );
        assert_eq!(trace.len(), 3);
    }
}
