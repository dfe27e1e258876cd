//! What the views show of the recent past: the last events (so a page or a
//! terminal opened now shows what just happened) and, per account, requests
//! and failovers per minute over the last hour (the dashboard's chart, the
//! requests-per-minute column).
//!
//! Nothing here is on a request's path: requests are counted by sampling the
//! pools' counters every few seconds, failovers as their events are
//! published. Both are bounded: [`RECENT_EVENTS`] events, [`MINUTES`] buckets
//! per account, and accounts are the pools' own (by label).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marathon_core::UnixMillis;
use marathon_core::events::{Event, EventKind};

use crate::state::AppState;

/// How many events `/_marathon/events/recent` keeps.
pub(crate) const RECENT_EVENTS: usize = 200;
/// How many minutes of per-account history are kept.
pub(crate) const MINUTES: usize = 60;
/// How often the pools' counters are sampled.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(2);

const MINUTE_MS: u64 = 60_000;

/// One account's last hour, a bucket per minute.
#[derive(Clone, Debug, Default)]
struct Series {
    /// Per slot: (the minute it holds, requests, failovers away from it).
    slots: Vec<(u64, u32, u32)>,
    /// The account's request counter (successes + failures) at the last sample.
    last_total: Option<u64>,
}

impl Series {
    fn slot(&mut self, minute: u64) -> &mut (u64, u32, u32) {
        if self.slots.is_empty() {
            self.slots = vec![(u64::MAX, 0, 0); MINUTES];
        }
        let s = &mut self.slots[(minute % MINUTES as u64) as usize];
        if s.0 != minute {
            *s = (minute, 0, 0);
        }
        s
    }

    /// `(requests, failovers)` per minute, oldest first, ending at `minute`.
    fn hour(&self, minute: u64) -> (Vec<u32>, Vec<u32>) {
        let start = minute + 1 - MINUTES as u64;
        (start..=minute)
            .map(|m| {
                self.slots
                    .get((m % MINUTES as u64) as usize)
                    .filter(|s| s.0 == m)
                    .map_or((0, 0), |s| (s.1, s.2))
            })
            .unzip()
    }
}

/// The recent past of every account, and the last events.
#[derive(Default)]
pub(crate) struct Activity {
    /// By (provider, label).
    series: Mutex<HashMap<(String, String), Series>>,
    recent: Mutex<VecDeque<Arc<str>>>,
}

/// One account's hour, as `/_marathon/activity` serves it.
pub(crate) struct AccountHour {
    pub label: String,
    /// Requests answered per minute, oldest first; the last is the current minute.
    pub requests: Vec<u32>,
    /// Requests that moved away from this account, per minute.
    pub failovers: Vec<u32>,
}

impl Activity {
    /// An event as published (its JSON), for the recent list and the counts.
    pub(crate) fn record_event(&self, event: &Event, json: &str) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(Arc::from(json));
        }
        if let EventKind::Failover { from, .. } = &event.kind {
            let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
            let s = series
                .entry((event.provider.clone(), from.clone()))
                .or_default();
            s.slot(event.at.0 / MINUTE_MS).2 += 1;
        }
    }

    /// The last events, oldest first, as their JSON.
    pub(crate) fn recent(&self) -> Vec<Arc<str>> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().cloned().collect()
    }

    /// Counts the requests each account answered since the last sample.
    fn sample(&self, provider: &str, label: &str, total: u64, now: UnixMillis) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let s = series
            .entry((provider.to_owned(), label.to_owned()))
            .or_default();
        // The first sight is the baseline: counters restored from the hot
        // state are not this minute's requests.
        if let Some(last) = s.last_total.replace(total) {
            let new = u32::try_from(total.saturating_sub(last)).unwrap_or(u32::MAX);
            if new > 0 {
                let slot = s.slot(now.0 / MINUTE_MS);
                slot.1 = slot.1.saturating_add(new);
            }
        }
    }

    /// Requests of the last 60 seconds, estimated from the current minute and
    /// the part of the previous one that is still inside the window.
    pub(crate) fn per_minute(&self, provider: &str, label: &str, now: UnixMillis) -> Option<u64> {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let s = series.get(&(provider.to_owned(), label.to_owned()))?;
        s.last_total?;
        let minute = now.0 / MINUTE_MS;
        let (requests, _) = s.hour(minute);
        let current = u64::from(requests[MINUTES - 1]);
        let previous = u64::from(requests[MINUTES - 2]);
        let left = MINUTE_MS - now.0 % MINUTE_MS;
        Some(current + previous * left / MINUTE_MS)
    }

    /// One account's last hour.
    pub(crate) fn hour(&self, provider: &str, label: &str, now: UnixMillis) -> AccountHour {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let (requests, failovers) = series
            .get(&(provider.to_owned(), label.to_owned()))
            .map(|s| s.hour(now.0 / MINUTE_MS))
            .unwrap_or_else(|| (vec![0; MINUTES], vec![0; MINUTES]));
        AccountHour {
            label: label.to_owned(),
            requests,
            failovers,
        }
    }
}

/// Samples every pool's counters every [`SAMPLE_EVERY`] until shutdown.
pub(crate) async fn sample_pools(
    state: Arc<AppState>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => sample_once(&state),
            _ = shutdown.changed() => return,
        }
    }
}

pub(crate) fn sample_once(state: &AppState) {
    let now = state.now();
    for (name, rt) in &state.providers {
        let accounts = {
            let pool = rt.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.status(now)
        };
        for a in accounts {
            state
                .bus
                .activity
                .sample(name, &a.label, a.successes + a.failures, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failover(at: u64, from: &str) -> Event {
        Event {
            at: UnixMillis(at),
            provider: "anthropic".into(),
            kind: EventKind::Failover {
                from: from.into(),
                to: "other".into(),
                reason: marathon_core::Reason::fixed("rate_limit_error"),
            },
        }
    }

    #[test]
    fn requests_and_failovers_land_in_their_minute_and_age_out() {
        let a = Activity::default();
        let t0 = 1_000 * MINUTE_MS;
        a.sample("anthropic", "work", 10, UnixMillis(t0)); // baseline, not counted
        a.sample("anthropic", "work", 13, UnixMillis(t0 + 1_000));
        a.sample("anthropic", "work", 20, UnixMillis(t0 + MINUTE_MS));
        a.record_event(&failover(t0 + MINUTE_MS + 5, "work"), "{}");
        let h = a.hour("anthropic", "work", UnixMillis(t0 + MINUTE_MS));
        assert_eq!(h.requests[MINUTES - 2..], [3, 7]);
        assert_eq!(h.failovers[MINUTES - 2..], [0, 1]);
        assert_eq!(h.requests.iter().sum::<u32>(), 10);
        // An hour later the buckets are someone else's minutes.
        let later = a.hour("anthropic", "work", UnixMillis(t0 + 61 * MINUTE_MS));
        assert_eq!(later.requests.iter().sum::<u32>(), 0);
        // Half-way through the next minute: all of it, half of the one before.
        assert_eq!(
            a.per_minute("anthropic", "work", UnixMillis(t0 + 2 * MINUTE_MS + 30_000)),
            Some(3)
        );
    }

    #[test]
    fn the_recent_list_is_bounded_and_keeps_the_newest() {
        let a = Activity::default();
        for i in 0..RECENT_EVENTS + 5 {
            a.record_event(&failover(i as u64, "x"), &format!("{i}"));
        }
        let recent = a.recent();
        assert_eq!(recent.len(), RECENT_EVENTS);
        assert_eq!(&*recent[0], "5");
        assert_eq!(
            &*recent[RECENT_EVENTS - 1],
            format!("{}", RECENT_EVENTS + 4)
        );
    }
}
