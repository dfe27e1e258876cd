//! How long an account rests after a failure: pure functions.
//!
//! When the provider says when the limit resets, that is the answer (plus a
//! little jitter so that several processes sharing the account do not all
//! probe it in the same millisecond). Otherwise the rest grows exponentially
//! with the account's failure streak, with jitter, up to a cap: the seed's
//! flat 30 s for a five-hour quota window burned requests all afternoon.
//!
//! Randomness is injected as a `sample` in `[0, 1)`, so every result here is
//! reproducible; the pool draws samples from a seeded generator.

use std::time::Duration;

use crate::clock::UnixMillis;
use crate::outcome::{Class, Classification, HintSource, ResetHint};
use crate::pool::PoolConfig;

/// Longest reset hint taken at face value. Weekly quota windows are real;
/// a hint beyond them is more likely a parsing accident than a promise, and
/// would bench an account indefinitely.
pub const MAX_HINT: Duration = Duration::from_secs(8 * 24 * 3600);

/// Most jitter added to a provider's reset time.
pub const MAX_HINT_JITTER: Duration = Duration::from_secs(1);

/// A decided rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cooldown {
    /// When the account may be probed again.
    pub until: UnixMillis,
    /// Where the reset time came from, when the provider said.
    pub hint: Option<HintSource>,
}

/// `base * 2^streak`, stretched by up to `jitter` (a fraction) using
/// `sample`, never more than `cap`.
pub fn backoff(base: Duration, streak: u32, cap: Duration, jitter: f64, sample: f64) -> Duration {
    let factor = 2f64.powi(streak.min(62) as i32);
    let stretched = base.as_secs_f64() * factor * (1.0 + unit(jitter) * unit(sample));
    if !stretched.is_finite() || stretched >= cap.as_secs_f64() {
        return cap;
    }
    // Below `cap` in f64 can still round past `Duration::MAX` when the cap is huge.
    Duration::try_from_secs_f64(stretched.max(0.0)).unwrap_or(cap)
}

/// The provider's reset time plus up to `min(1 s, 10 % of the wait)` of
/// jitter; a reset already in the past means "now" (plus jitter), and a reset
/// beyond [`MAX_HINT`] is clamped to it.
pub fn hint_until(hint: &ResetHint, now: UnixMillis, sample: f64) -> UnixMillis {
    let wait = now.until(hint.at).min(MAX_HINT);
    let spread = (wait / 10).min(MAX_HINT_JITTER);
    now.plus(wait).plus(spread.mul_f64(unit(sample)))
}

/// The rest for one classified failure, or `None` when the class does not
/// bench the account (success, provider, request, cancelled).
///
/// `streak` is the account's count of consecutive account-blaming failures
/// *before* this one, so the first 429 without a hint rests
/// `rate_limit_cooldown`, the second twice that, and so on. For
/// [`Class::Transport`] this returns the short `transport_penalty`; the pool
/// only asks after repeated transport failures.
pub fn cooldown_for(
    c: &Classification,
    streak: u32,
    cfg: &PoolConfig,
    now: UnixMillis,
    sample: f64,
) -> Option<Cooldown> {
    let from_hint = |fallback: Duration| match &c.reset {
        Some(h) => Cooldown {
            until: hint_until(h, now, sample),
            hint: Some(h.source),
        },
        None => Cooldown {
            until: now.plus(fallback),
            hint: None,
        },
    };
    let fixed = |d: Duration| stretch(d, 1.0 + unit(cfg.jitter) * unit(sample));
    match c.class {
        Class::RateLimited => Some(from_hint(backoff(
            cfg.rate_limit_cooldown,
            streak,
            cfg.max_cooldown,
            cfg.jitter,
            sample,
        ))),
        Class::Unusable => Some(from_hint(fixed(cfg.unusable_cooldown))),
        Class::Auth | Class::Forbidden => Some(from_hint(fixed(cfg.auth_failure_cooldown))),
        Class::Transport => Some(Cooldown {
            until: now.plus(cfg.transport_penalty),
            hint: None,
        }),
        Class::Success | Class::Provider | Class::Request | Class::Cancelled => None,
    }
}

/// `d * factor`, saturating at `Duration::MAX`: a configured rest may be
/// absurdly long ("18446744073709551615s" is a valid config value), and
/// `Duration::mul_f64` would panic past the maximum.
fn stretch(d: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// The splitmix64 increment.
pub(crate) const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output mix: a good 64-bit hash of a counter, enough for
/// jitter (this is not for anything secret).
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform sample in `[0, 1)` from 64 random bits.
pub(crate) fn unit_sample(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Clamps to `[0, 1]`, mapping NaN to 0, so odd configuration cannot make a
/// duration negative or infinite.
fn unit(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixMillis = UnixMillis(1_764_330_000_000);

    fn class(class: Class, reset: Option<ResetHint>) -> Classification {
        Classification {
            class,
            status: Some(429),
            reason: "rate_limit_error".into(),
            reset,
            usage: vec![],
        }
    }

    #[test]
    fn backoff_doubles_with_the_streak_and_caps() {
        let base = Duration::from_secs(30);
        let cap = Duration::from_secs(3600);
        assert_eq!(backoff(base, 0, cap, 0.1, 0.0), Duration::from_secs(30));
        assert_eq!(backoff(base, 1, cap, 0.1, 0.0), Duration::from_secs(60));
        assert_eq!(backoff(base, 3, cap, 0.1, 0.0), Duration::from_secs(240));
        assert_eq!(backoff(base, 3, cap, 0.1, 0.5), Duration::from_secs(252));
        assert_eq!(backoff(base, 7, cap, 0.1, 0.0), cap, "30s * 128 > 1h");
        assert_eq!(backoff(base, u32::MAX, cap, 0.1, 0.99), cap);
        assert_eq!(backoff(base, 0, cap, f64::NAN, f64::INFINITY), base);
    }

    /// Found with the `config` fuzz target's check that a loaded config's
    /// durations work in the engine (input: fuzz/seeds/config/
    /// regress_huge_cooldown.toml): `auth_failure_cooldown =
    /// "18446744073709551615s"` loads, and the first 401 or 403 then panicked
    /// here ("cannot convert float seconds to Duration") when the jitter
    /// stretched the rest past `Duration::MAX`, inside the pool's lock.
    #[test]
    fn absurd_configured_rests_saturate_instead_of_panicking() {
        let cfg = PoolConfig {
            auth_failure_cooldown: Duration::from_secs(u64::MAX),
            rate_limit_cooldown: Duration::MAX,
            max_cooldown: Duration::MAX,
            ..PoolConfig::default()
        };
        for c in [Class::Auth, Class::Forbidden, Class::RateLimited] {
            for sample in [0.0, 0.5, 0.999_999] {
                let cd = cooldown_for(&class(c, None), 3, &cfg, NOW, sample).unwrap();
                assert_eq!(
                    cd.until,
                    UnixMillis(u64::MAX),
                    "{c:?} rests until the end of time"
                );
            }
        }
        assert_eq!(
            stretch(Duration::from_secs(10), 1.5),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn unified_reset_hint_wins_over_backoff() {
        // anthropic-ratelimit-unified-reset: 1764334800 (samples.md).
        let hint = ResetHint {
            at: UnixMillis::from_secs(1_764_334_800),
            source: HintSource::AnthropicUnified,
        };
        let c = class(Class::RateLimited, Some(hint));
        let cd = cooldown_for(&c, 5, &PoolConfig::default(), NOW, 0.0).unwrap();
        assert_eq!(cd.until, hint.at, "no jitter with a zero sample");
        assert_eq!(cd.hint, Some(HintSource::AnthropicUnified));
        let cd = cooldown_for(&c, 0, &PoolConfig::default(), NOW, 0.999).unwrap();
        assert!(cd.until > hint.at && cd.until <= hint.at.plus(MAX_HINT_JITTER));
    }

    #[test]
    fn short_hint_gets_proportionally_small_jitter() {
        // retry-after: 17 → 10 % would be 1.7 s; the jitter is capped at 1 s.
        let hint = ResetHint {
            at: NOW.plus(Duration::from_secs(17)),
            source: HintSource::RetryAfterSeconds,
        };
        let until = hint_until(&hint, NOW, 0.999);
        assert!(until > hint.at);
        assert!(until <= hint.at.plus(Duration::from_secs(1)));
        // retry-after-ms: 200 → at most 20 ms of jitter.
        let hint = ResetHint {
            at: NOW.plus(Duration::from_millis(200)),
            source: HintSource::RetryAfterMs,
        };
        assert!(hint_until(&hint, NOW, 0.999) <= hint.at.plus(Duration::from_millis(20)));
    }

    #[test]
    fn stale_and_absurd_hints_are_bounded() {
        let past = ResetHint {
            at: UnixMillis(NOW.0 - 5_000),
            source: HintSource::CodexResetAt,
        };
        assert_eq!(hint_until(&past, NOW, 0.5), NOW);
        let far = ResetHint {
            at: UnixMillis::from_secs(4_000_000_000),
            source: HintSource::BodyResetsAt,
        };
        assert_eq!(hint_until(&far, NOW, 0.0), NOW.plus(MAX_HINT));
    }

    #[test]
    fn rate_limit_without_hint_backs_off_from_the_configured_base() {
        let cfg = PoolConfig {
            rate_limit_cooldown: Duration::from_secs(30),
            jitter: 0.0,
            ..PoolConfig::default()
        };
        let c = class(Class::RateLimited, None);
        assert_eq!(
            cooldown_for(&c, 0, &cfg, NOW, 0.7).unwrap().until,
            NOW.plus(Duration::from_secs(30))
        );
        assert_eq!(
            cooldown_for(&c, 2, &cfg, NOW, 0.7).unwrap().until,
            NOW.plus(Duration::from_secs(120))
        );
        assert_eq!(
            cooldown_for(&c, 40, &cfg, NOW, 0.7).unwrap().until,
            NOW.plus(Duration::from_secs(3600))
        );
        assert_eq!(cooldown_for(&c, 0, &cfg, NOW, 0.7).unwrap().hint, None);
    }

    #[test]
    fn unusable_and_auth_use_their_fixed_lengths() {
        let cfg = PoolConfig {
            jitter: 0.0,
            ..PoolConfig::default()
        };
        let mut c = class(Class::Unusable, None);
        c.reason = "insufficient_quota".into();
        assert_eq!(
            cooldown_for(&c, 9, &cfg, NOW, 0.3).unwrap().until,
            NOW.plus(Duration::from_secs(6 * 3600))
        );
        c.class = Class::Forbidden;
        assert_eq!(
            cooldown_for(&c, 0, &cfg, NOW, 0.3).unwrap().until,
            NOW.plus(Duration::from_secs(300))
        );
        c.class = Class::Auth;
        assert_eq!(
            cooldown_for(&c, 0, &cfg, NOW, 0.3).unwrap().until,
            NOW.plus(Duration::from_secs(300))
        );
        c.class = Class::Transport;
        assert_eq!(
            cooldown_for(&c, 0, &cfg, NOW, 0.3).unwrap().until,
            NOW.plus(Duration::from_secs(2))
        );
    }

    #[test]
    fn non_blaming_classes_do_not_cool() {
        for k in [
            Class::Success,
            Class::Provider,
            Class::Request,
            Class::Cancelled,
        ] {
            assert_eq!(
                cooldown_for(&class(k, None), 3, &PoolConfig::default(), NOW, 0.5),
                None,
                "{k:?}"
            );
        }
    }
}
