//! A retry budget, after tower's `TpsBudget`.
//!
//! Max attempts alone do not stop a retry storm: when a provider degrades,
//! every request retries its full allowance at once and multiplies the load on
//! the thing that is already failing. A budget caps retries to a fraction of
//! recent traffic (`retry_ratio`), plus a floor (`min_per_sec`) so that a
//! quiet proxy can still retry. Each request deposits; each retry withdraws;
//! deposits expire after `ttl`.
//!
//! Time is injected (`now`), like everything in the engine. The budget is
//! shared by all requests of a pool, so the proxy keeps it behind a short lock.

use std::time::Duration;

use crate::clock::UnixMillis;

/// Number of time slots the ttl is divided into; deposits expire one slot at a time.
const SLOTS: usize = 10;
/// Fixed-point scale, so ratios like 0.2 withdraw whole numbers.
const SCALE: i64 = 1000;

/// A tower-style retry budget. See the module docs.
#[derive(Clone, Debug)]
pub struct RetryBudget {
    ttl: Duration,
    min_per_sec: u32,
    retry_ratio: f64,
    deposit_amount: i64,
    withdraw_amount: i64,
    reserve: i64,
    slots: [i64; SLOTS],
    /// Deposits and withdrawals of the current slot, not yet committed.
    writer: i64,
    index: usize,
    window_ms: u64,
    slot_started: Option<UnixMillis>,
}

impl RetryBudget {
    /// A budget that keeps deposits for `ttl` (clamped to 1..=60 s), always
    /// allows `min_per_sec` retries per second, and beyond that allows
    /// `retry_ratio` retries per request (0.2 = one retry per five requests;
    /// clamped to 0..=1000).
    pub fn new(ttl: Duration, min_per_sec: u32, retry_ratio: f64) -> Self {
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let ratio = if retry_ratio.is_finite() {
            retry_ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        let (deposit_amount, withdraw_amount) = if ratio == 0.0 {
            // Deposits earn nothing; retries draw on the reserve alone.
            (0, 1)
        } else {
            // Truncation is fine: the ratio is a tuning knob, not an exact rate.
            (SCALE, ((SCALE as f64) / ratio).max(1.0) as i64)
        };
        let reserve = i64::from(min_per_sec)
            .saturating_mul(ttl.as_secs() as i64)
            .saturating_mul(withdraw_amount);
        RetryBudget {
            ttl,
            min_per_sec,
            retry_ratio: ratio,
            deposit_amount,
            withdraw_amount,
            reserve,
            slots: [0; SLOTS],
            writer: 0,
            index: 0,
            window_ms: (ttl.as_millis() as u64 / SLOTS as u64).max(1),
            slot_started: None,
        }
    }

    /// How long deposits count.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Retries per second allowed regardless of traffic.
    pub fn min_per_sec(&self) -> u32 {
        self.min_per_sec
    }

    /// Retries allowed per deposited request.
    pub fn retry_ratio(&self) -> f64 {
        self.retry_ratio
    }

    /// Records one request (call once per incoming request, not per attempt).
    pub fn deposit(&mut self, now: UnixMillis) {
        self.expire(now);
        self.writer = self.writer.saturating_add(self.deposit_amount);
    }

    /// Takes one retry from the budget; `false` means "do not retry".
    pub fn try_withdraw(&mut self, now: UnixMillis) -> bool {
        self.expire(now);
        if self.balance() >= self.withdraw_amount {
            self.writer -= self.withdraw_amount;
            true
        } else {
            false
        }
    }

    /// Roughly how many retries the budget would allow right now.
    pub fn available(&mut self, now: UnixMillis) -> u64 {
        self.expire(now);
        u64::try_from(self.balance() / self.withdraw_amount).unwrap_or(0)
    }

    fn balance(&self) -> i64 {
        let committed: i64 = self.slots.iter().sum();
        committed
            .saturating_add(self.writer)
            .saturating_add(self.reserve)
    }

    fn expire(&mut self, now: UnixMillis) {
        let Some(started) = self.slot_started else {
            self.slot_started = Some(now);
            return;
        };
        // A wall clock that steps backwards just keeps the current slot.
        let elapsed = now.0.saturating_sub(started.0);
        if elapsed < self.window_ms {
            return;
        }
        self.slots[self.index] = std::mem::take(&mut self.writer);
        let mut idx = (self.index + 1) % SLOTS;
        // Clear every slot that aged out entirely; at most a full lap.
        let mut remaining = elapsed;
        let mut cleared = 0;
        while remaining > self.window_ms && cleared < SLOTS {
            self.slots[idx] = 0;
            remaining -= self.window_ms;
            idx = (idx + 1) % SLOTS;
            cleared += 1;
        }
        self.index = idx;
        self.slot_started = Some(now);
    }
}

impl Default for RetryBudget {
    /// tower's defaults: 10 s ttl, 10 retries per second, 20 % of requests.
    fn default() -> Self {
        RetryBudget::new(Duration::from_secs(10), 10, 0.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> UnixMillis {
        UnixMillis(1_764_330_000_000 + ms)
    }

    fn drain(b: &mut RetryBudget, now: UnixMillis) -> u32 {
        let mut n = 0;
        while b.try_withdraw(now) {
            n += 1;
            assert!(n < 100_000, "budget never ran out");
        }
        n
    }

    #[test]
    fn reserve_allows_min_per_sec_times_ttl() {
        let mut b = RetryBudget::new(Duration::from_secs(10), 1, 0.0);
        assert_eq!(drain(&mut b, t(0)), 10);
        assert!(!b.try_withdraw(t(0)));
    }

    #[test]
    fn deposits_buy_retries_at_the_ratio() {
        // No reserve: only deposits count. 0.2 = one retry per five requests.
        let mut b = RetryBudget::new(Duration::from_secs(10), 0, 0.2);
        assert!(!b.try_withdraw(t(0)));
        for _ in 0..10 {
            b.deposit(t(0));
        }
        assert_eq!(drain(&mut b, t(0)), 2);
        for _ in 0..4 {
            b.deposit(t(1));
        }
        assert!(
            !b.try_withdraw(t(1)),
            "four requests are not enough for another retry"
        );
        b.deposit(t(1));
        assert!(b.try_withdraw(t(1)));
    }

    #[test]
    fn deposits_expire_after_ttl() {
        let mut b = RetryBudget::new(Duration::from_secs(10), 0, 1.0);
        for _ in 0..5 {
            b.deposit(t(0));
        }
        assert_eq!(b.available(t(5_000)), 5);
        assert_eq!(
            b.available(t(11_000)),
            0,
            "deposits older than the ttl are gone"
        );
        // A long idle gap clears everything, not just one slot.
        b.deposit(t(20_000));
        assert_eq!(b.available(t(20_000)), 1);
        assert_eq!(b.available(t(3_600_000)), 0);
    }

    #[test]
    fn degraded_provider_cannot_retry_every_request() {
        // 100 requests/s for 10 s, each wanting to retry: the default budget
        // allows about 20 % of them plus the 10/s reserve, not 100 %.
        let mut b = RetryBudget::default();
        let mut retried = 0;
        for i in 0..1000u64 {
            let now = t(i * 10);
            b.deposit(now);
            if b.try_withdraw(now) {
                retried += 1;
            }
        }
        assert!(retried < 1000 * 35 / 100, "retried {retried} of 1000");
        assert!(retried >= 200, "retried only {retried} of 1000");
    }

    #[test]
    fn clock_stepping_back_does_not_panic_or_refill() {
        let mut b = RetryBudget::new(Duration::from_secs(10), 0, 1.0);
        b.deposit(t(10_000));
        assert!(b.try_withdraw(t(5_000)));
        assert!(!b.try_withdraw(t(5_000)));
    }
}
