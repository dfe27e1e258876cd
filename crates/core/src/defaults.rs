//! The default of every per-provider setting, in one place.
//!
//! The engine's own defaults ([`crate::PoolConfig::default`],
//! [`crate::RetryPolicy::default`]), the config file's `[defaults]` and the
//! OAuth refresher all read these, so the value a user gets with no config
//! file, the value a test gets from `PoolConfig::default()` and the value
//! `example.toml` documents cannot drift apart (a test in `marathon-config`
//! checks the example against them).

use std::time::Duration;

use crate::strategy::Strategy;

/// How the next account is chosen: keep one until it fails (keeps the
/// provider's per-account prompt cache warm).
pub const STRATEGY: Strategy = Strategy::Sticky;

/// Attempts per request; `None` = one per account.
pub const MAX_ATTEMPTS: Option<u32> = None;

/// Rest after a rate limit whose response carried no reset time: the base of
/// the exponential backoff (60 s, 120 s, ... up to the cap).
pub const RATE_LIMIT_COOLDOWN: Duration = Duration::from_secs(60);

/// Rest after a 403, or a 401 that a token refresh did not fix.
pub const AUTH_FAILURE_COOLDOWN: Duration = Duration::from_secs(300);

/// Retries on the same account after a connection error, before rotating
/// ("retry the same account once, then rotate").
pub const NETWORK_RETRY_ATTEMPTS: u32 = 1;

/// Refresh an OAuth access token this long before it expires.
pub const REFRESH_LEAD: Duration = Duration::from_secs(300);

/// Move off an account before its limit once a usage window reaches this
/// fraction; `None`: only on a limit (moving early costs the prompt cache).
pub const PROACTIVE_THRESHOLD: Option<f64> = None;

/// How often the subscription usage of each OAuth account is read from the
/// provider's usage endpoint (both are throttled: at most about once a
/// minute); `None`: never.
pub const USAGE_POLL: Option<Duration> = Some(Duration::from_secs(120));

/// When every account is resting, wait up to this long for one instead of
/// answering 429 at once; `None`: answer at once.
pub const MAX_WAIT: Option<Duration> = None;

/// When every account is resting, a wait up to this long is answered as a
/// rate limit the client waits out (429 + `retry-after`); a longer one as a
/// spent quota, in the form each provider's own clients show at once and do
/// not retry. 60 s: Claude Code gives up on a longer `retry-after`, and the
/// OpenAI SDK on one above 120 s.
pub const SHORT_WAIT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PoolConfig, RetryPolicy};

    /// Guards against a second copy of a default creeping back into the
    /// engine's structs (the config once said 60 s where the engine said 30 s).
    #[test]
    fn the_engines_defaults_are_these() {
        let pool = PoolConfig::default();
        assert_eq!(pool.strategy, STRATEGY);
        assert_eq!(Strategy::default(), STRATEGY);
        assert_eq!(pool.rate_limit_cooldown, RATE_LIMIT_COOLDOWN);
        assert_eq!(pool.auth_failure_cooldown, AUTH_FAILURE_COOLDOWN);
        assert_eq!(pool.proactive_threshold, PROACTIVE_THRESHOLD);
        let retry = RetryPolicy::default();
        assert_eq!(retry.max_attempts, MAX_ATTEMPTS);
        assert_eq!(retry.transport_retries_same, NETWORK_RETRY_ATTEMPTS);
    }
}
