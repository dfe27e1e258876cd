//! Burn-rate forecasts for quota windows: when a window runs out at the
//! current pace, beside when it resets.
//!
//! Every observation of a window (from response headers or the usage
//! poller) feeds a [`Burn`]: an exponentially weighted moving average of the
//! utilisation's rate of change, weighted by time (a half-life), so a burst
//! of samples seconds apart counts as much as one sample after the same
//! time. Utilisation comes quantised (whole percents from the usage
//! endpoints), so a rate is measured only over spans of at least
//! [`MIN_SPAN`]: between two samples a few seconds apart the step from 41 %
//! to 42 % would look like a stampede.
//!
//! Nothing here reads a clock: every function takes `now`.

use std::time::Duration;

use crate::clock::UnixMillis;
use crate::outcome::UsageWindow;

/// The half-life of the burn-rate average: a change of pace is half taken
/// in after this long.
pub const HALF_LIFE: Duration = Duration::from_secs(15 * 60);

/// The shortest span a rate is measured over (see the module docs).
pub const MIN_SPAN: Duration = Duration::from_secs(60);

/// A drop in utilisation larger than this (or a later reset time) means
/// the window was renewed; smaller drops are two sources rounding apart.
const RENEWAL_DROP: f64 = 0.02;

/// A reset time that moves later by more than this is a new window; less
/// is the provider's jitter.
const RENEWAL_SHIFT: Duration = Duration::from_secs(120);

/// One window's burn rate.
#[derive(Clone, Debug, PartialEq)]
pub struct Burn {
    /// The window's name (`5h`, `7d`, `primary`, ...).
    pub name: String,
    /// The sample the next rate is measured from.
    anchor_utilization: f64,
    anchor_at: UnixMillis,
    /// The latest sample.
    last_utilization: f64,
    last_at: UnixMillis,
    resets_at: Option<UnixMillis>,
    /// Utilisation per millisecond; `None` until one span was measured.
    rate: Option<f64>,
}

impl Burn {
    /// A window seen for the first time.
    pub fn new(w: &UsageWindow, now: UnixMillis) -> Self {
        Burn {
            name: w.name.clone(),
            anchor_utilization: w.utilization,
            anchor_at: now,
            last_utilization: w.utilization,
            last_at: now,
            resets_at: w.resets_at,
            rate: None,
        }
    }

    /// Takes in a fresh sample of the window. A renewed window (reset time
    /// later, or utilisation clearly lower) restarts the measurement but
    /// keeps the rate: the same people keep working at the same pace.
    pub fn observe(&mut self, w: &UsageWindow, now: UnixMillis) {
        if now < self.last_at {
            return;
        }
        let renewed = match (self.resets_at, w.resets_at) {
            (Some(old), Some(new)) => new > old.plus(RENEWAL_SHIFT),
            _ => false,
        } || w.utilization + RENEWAL_DROP < self.last_utilization;
        self.resets_at = w.resets_at.or(self.resets_at);
        if renewed {
            self.anchor_utilization = w.utilization;
            self.anchor_at = now;
        } else if w.utilization + RENEWAL_DROP < self.anchor_utilization {
            // Noise below the anchor: wait for a clearer sample.
        } else {
            let span = self.anchor_at.until(now);
            if span >= MIN_SPAN {
                let span_ms = span.as_millis() as f64;
                let sample = ((w.utilization - self.anchor_utilization) / span_ms).max(0.0);
                self.rate = Some(match self.rate {
                    None => sample,
                    Some(old) => {
                        let keep = 0.5f64.powf(span_ms / HALF_LIFE.as_millis() as f64);
                        old * keep + sample * (1.0 - keep)
                    }
                });
                self.anchor_utilization = w.utilization;
                self.anchor_at = now;
            }
        }
        self.last_utilization = w.utilization;
        self.last_at = now;
    }

    /// The pace, in utilisation (0..1) per hour; `None` before a first span.
    pub fn per_hour(&self) -> Option<f64> {
        self.rate.map(|r| r * 3_600_000.0)
    }

    /// When the window reaches 100 % at the current pace: `None` when it is
    /// not being used up (no pace yet, or zero).
    pub fn runs_out_at(&self) -> Option<UnixMillis> {
        let rate = self.rate.filter(|r| *r > 0.0)?;
        let left = (1.0 - self.last_utilization).max(0.0);
        let ms = (left / rate).min(u64::MAX as f64 / 2.0);
        Some(self.last_at.plus(Duration::from_millis(ms as u64)))
    }

    /// The utilisation expected at `at` (capped at the window's reset, after
    /// which the window starts again; not above 1).
    pub fn projected(&self, at: UnixMillis) -> f64 {
        let until = match self.resets_at {
            Some(r) if r < at => r,
            _ => at,
        };
        let ahead = if until > self.last_at {
            self.last_at.until(until).as_millis() as f64
        } else {
            0.0
        };
        (self.last_utilization + self.rate.unwrap_or(0.0) * ahead).min(1.0)
    }
}

/// A window's forecast, as the status view and metrics show it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowForecast {
    /// The window's name.
    pub name: String,
    /// Utilisation per hour at the current pace (0..1 scale), when measured.
    pub burn_per_hour: Option<f64>,
    /// When it reaches 100 % at that pace, if it is being used up.
    pub runs_out_at: Option<UnixMillis>,
    /// Whether that comes before the window resets (the wall is ahead).
    pub runs_out_before_reset: bool,
}

/// The burn rates of one account's windows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tracker {
    burns: Vec<Burn>,
}

impl Tracker {
    /// Takes in fresh samples.
    pub fn observe(&mut self, windows: &[UsageWindow], now: UnixMillis) {
        for w in windows {
            match self.burns.iter_mut().find(|b| b.name == w.name) {
                Some(b) => b.observe(w, now),
                None => self.burns.push(Burn::new(w, now)),
            }
        }
    }

    /// The burn of the window called `name`.
    pub fn burn(&self, name: &str) -> Option<&Burn> {
        self.burns.iter().find(|b| b.name == name)
    }

    /// The forecast of each window in `windows` (the live ones).
    pub fn forecast(&self, windows: &[UsageWindow]) -> Vec<WindowForecast> {
        windows
            .iter()
            .map(|w| {
                let burn = self.burn(&w.name);
                let runs_out_at = burn.and_then(Burn::runs_out_at);
                WindowForecast {
                    name: w.name.clone(),
                    burn_per_hour: burn.and_then(Burn::per_hour),
                    runs_out_at,
                    runs_out_before_reset: match (runs_out_at, w.resets_at) {
                        (Some(out), Some(reset)) => out < reset,
                        (Some(_), None) => true,
                        _ => false,
                    },
                }
            })
            .collect()
    }

    /// How much of the account is left for the time left: the smallest,
    /// over its windows, of the share expected still free when the window
    /// resets (negative when it is expected to run out first). An account
    /// with no windows known scores 1: worth exploring.
    pub fn headroom(&self, windows: &[UsageWindow], now: UnixMillis) -> f64 {
        windows
            .iter()
            .map(|w| {
                let at_reset = match (self.burn(&w.name), w.resets_at) {
                    (Some(b), Some(r)) => {
                        let ahead = now.until(r).as_millis() as f64;
                        w.utilization + b.rate.unwrap_or(0.0) * ahead
                    }
                    _ => w.utilization,
                };
                1.0 - at_reset
            })
            .fold(1.0, f64::min)
    }

    /// The highest utilisation any window is expected to reach `ahead` from
    /// now (before its reset): what "the forecast crosses the threshold"
    /// compares.
    pub fn projected_peak(&self, windows: &[UsageWindow], now: UnixMillis, ahead: Duration) -> f64 {
        let at = now.plus(ahead);
        windows
            .iter()
            .map(|w| match self.burn(&w.name) {
                Some(b) => b.projected(at).max(w.utilization),
                None => w.utilization,
            })
            .fold(0.0, f64::max)
    }
}

/// One account's contribution to its provider's capacity.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountCapacity {
    /// Share of the account's binding window still free (0..1).
    pub left: f64,
    /// Its pace, in utilisation per millisecond (0 when idle or unknown).
    pub rate: f64,
}

impl AccountCapacity {
    /// The binding window of an account: the one that runs out first at its
    /// pace (or, with no pace, the fullest).
    pub fn of(tracker: &Tracker, windows: &[UsageWindow]) -> Option<Self> {
        windows
            .iter()
            .map(|w| {
                let rate = tracker
                    .burn(&w.name)
                    .and_then(|b| b.rate)
                    .unwrap_or(0.0)
                    .max(0.0);
                let left = (1.0 - w.utilization).max(0.0);
                let lasts = if rate > 0.0 { left / rate } else { f64::MAX };
                (lasts, left, AccountCapacity { left, rate })
            })
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)))
            .map(|(_, _, c)| c)
    }
}

/// Until when a provider's accounts last at their combined pace: everything
/// still free, spent at the sum of the paces, counting no renewal (so it is
/// a floor: windows that reset meanwhile only add). `None` while nothing is
/// being used up.
pub fn capacity_until(accounts: &[AccountCapacity], now: UnixMillis) -> Option<UnixMillis> {
    let rate: f64 = accounts.iter().map(|a| a.rate).sum();
    if rate <= 0.0 {
        return None;
    }
    let left: f64 = accounts.iter().map(|a| a.left).sum();
    let ms = (left / rate).min(u64::MAX as f64 / 2.0);
    Some(now.plus(Duration::from_millis(ms as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn window(name: &str, utilization: f64, resets_at: Option<u64>) -> UsageWindow {
        UsageWindow {
            name: name.into(),
            utilization,
            resets_at: resets_at.map(UnixMillis),
            status: None,
            window_minutes: None,
        }
    }

    /// The accuracy bar: a steady burn of 0.5 % a minute, sampled
    /// every 30 s in whole percents (as the usage endpoint reports it),
    /// predicts the exhaustion within 10 % of the real time once an hour
    /// of history is in. Guards against a rate taken from quantised steps
    /// seconds apart (which overshoots wildly) and against a lagging average.
    #[test]
    fn a_steady_burn_predicts_exhaustion_within_ten_percent() {
        let start = 1_700_000_000_000;
        let per_ms = 0.005 / MIN as f64;
        let actual_out = start + (1.0 / per_ms) as u64; // 200 minutes in
        let reset = start + 5 * 60 * MIN;
        let mut t = Tracker::default();
        let mut checked = 0;
        for step in 0..=300u64 {
            let now = start + step * 30_000;
            let exact = (now - start) as f64 * per_ms;
            let reported = (exact * 100.0).floor() / 100.0;
            t.observe(&[window("5h", reported, Some(reset))], UnixMillis(now));
            if now - start >= 60 * MIN && now < actual_out {
                let f = &t.forecast(&[window("5h", reported, Some(reset))])[0];
                let predicted = f.runs_out_at.expect("a pace is known").0;
                let remaining = (actual_out - now) as f64;
                let error = (predicted as f64 - actual_out as f64).abs();
                assert!(
                    error <= 0.10 * (actual_out - start) as f64,
                    "at +{} min predicted {} min off (remaining {} min)",
                    (now - start) / MIN,
                    error / MIN as f64,
                    remaining / MIN as f64
                );
                assert!(f.runs_out_before_reset);
                checked += 1;
            }
        }
        assert!(checked > 100);
    }

    /// Guards the quantisation trap: samples seconds apart measure nothing.
    #[test]
    fn no_rate_from_samples_closer_than_the_minimum_span() {
        let mut b = Burn::new(&window("5h", 0.41, None), UnixMillis(0));
        b.observe(&window("5h", 0.42, None), UnixMillis(1_000));
        assert_eq!(b.per_hour(), None);
        b.observe(&window("5h", 0.43, None), UnixMillis(MIN));
        let per_hour = b.per_hour().unwrap();
        assert!((per_hour - 0.02 * 60.0).abs() < 1e-9, "{per_hour}");
    }

    /// A renewed window starts measuring afresh and keeps the pace; the drop
    /// from 90 % to 5 % is not a negative burn.
    #[test]
    fn a_renewal_keeps_the_pace_and_restarts_the_measurement() {
        let mut b = Burn::new(&window("5h", 0.50, Some(100 * MIN)), UnixMillis(0));
        b.observe(&window("5h", 0.60, Some(100 * MIN)), UnixMillis(10 * MIN));
        let pace = b.per_hour().unwrap();
        b.observe(&window("5h", 0.05, Some(400 * MIN)), UnixMillis(101 * MIN));
        assert_eq!(b.per_hour(), Some(pace));
        assert_eq!(b.projected(UnixMillis(101 * MIN)), 0.05);
        let out = b.runs_out_at().unwrap();
        let expect = 101 * MIN + (0.95 / (pace / 60.0) * MIN as f64) as u64;
        assert!(out.0.abs_diff(expect) < MIN, "{out:?} vs {expect}");
    }

    #[test]
    fn headroom_prefers_the_account_that_leaves_more_free_at_reset() {
        let now = UnixMillis(0);
        let reset = Some(60 * MIN);
        let busy = {
            let mut t = Tracker::default();
            t.observe(&[window("5h", 0.2, reset)], UnixMillis(0));
            t.observe(&[window("5h", 0.3, reset)], UnixMillis(10 * MIN));
            t
        };
        let idle = {
            let mut t = Tracker::default();
            t.observe(&[window("5h", 0.5, reset)], UnixMillis(0));
            t.observe(&[window("5h", 0.5, reset)], UnixMillis(10 * MIN));
            t
        };
        let now10 = UnixMillis(10 * MIN);
        // Busy: 30 % + 1 %/min × 50 min = 80 % at reset → 0.2 left; idle 0.5.
        let h_busy = busy.headroom(&[window("5h", 0.3, reset)], now10);
        let h_idle = idle.headroom(&[window("5h", 0.5, reset)], now10);
        assert!((h_busy - 0.2).abs() < 1e-9, "{h_busy}");
        assert!(h_idle > h_busy);
        assert_eq!(Tracker::default().headroom(&[], now), 1.0);
    }

    #[test]
    fn capacity_until_spends_what_is_left_at_the_combined_pace() {
        let now = UnixMillis(0);
        let per_min = 0.01 / MIN as f64;
        let accounts = [
            AccountCapacity {
                left: 0.5,
                rate: per_min,
            },
            AccountCapacity {
                left: 1.0,
                rate: 0.0,
            },
        ];
        // 1.5 accounts' worth at 1 %/min: 150 minutes.
        assert_eq!(capacity_until(&accounts, now), Some(UnixMillis(150 * MIN)));
        assert_eq!(capacity_until(&accounts[1..], now), None);
    }
}
