//! The subscription usage endpoints (DESIGN §10): Anthropic's
//! `GET /api/oauth/usage` and ChatGPT's `GET /backend-api/wham/usage`,
//! reporting the caller's quota windows without spending them.
//!
//! Both real endpoints are throttled, so the simulator has a throttle
//! switch (every call answered 429 with `retry-after`) and counts calls,
//! per account and in total: tests check a poller backs off.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use serde_json::json;

use crate::timefmt::{epoch_secs_ceil, rfc3339};
use crate::world::{QuotaView, peek};

/// Which usage endpoint was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `…/api/oauth/usage`.
    Anthropic,
    /// `…/wham/usage`.
    Chatgpt,
}

impl Endpoint {
    /// The endpoint a `GET` path names, if any.
    pub(crate) fn from_path(p: &str) -> Option<Self> {
        if p.ends_with("/api/oauth/usage") {
            Some(Endpoint::Anthropic)
        } else if p.ends_with("/wham/usage") {
            Some(Endpoint::Chatgpt)
        } else {
            None
        }
    }
}

/// Calls counted, and the throttle.
#[derive(Debug, Default)]
pub(crate) struct UsageDesk {
    /// `retry-after` seconds while throttled; 0 = open.
    throttle: AtomicU64,
    total: AtomicU64,
    throttled: AtomicU64,
    by_account: Mutex<HashMap<String, u64>>,
}

/// What the counters say.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UsageCalls {
    /// Every call to either endpoint.
    pub total: u64,
    /// Calls answered 429 by the throttle.
    pub throttled: u64,
    /// Calls per account name (known callers only).
    pub by_account: HashMap<String, u64>,
}

impl UsageDesk {
    /// Throttles every call (429 with this `retry-after`), or opens up.
    pub(crate) fn set_throttle(&self, retry_after: Option<u64>) {
        let seconds = match retry_after {
            Some(s) => s.max(1),
            None => 0,
        };
        self.throttle.store(seconds, Ordering::SeqCst);
    }

    pub(crate) fn calls(&self) -> UsageCalls {
        UsageCalls {
            total: self.total.load(Ordering::SeqCst),
            throttled: self.throttled.load(Ordering::SeqCst),
            by_account: self
                .by_account
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    pub(crate) fn reset(&self) {
        self.total.store(0, Ordering::SeqCst);
        self.throttled.store(0, Ordering::SeqCst);
        self.by_account
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Counts a call; `Some(retry_after)` when it is to be throttled.
    pub(crate) fn count(&self, account: Option<&str>) -> Option<u64> {
        self.total.fetch_add(1, Ordering::SeqCst);
        if let Some(name) = account {
            *self
                .by_account
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(name.to_owned())
                .or_default() += 1;
        }
        let t = self.throttle.load(Ordering::SeqCst);
        (t > 0).then(|| {
            self.throttled.fetch_add(1, Ordering::SeqCst);
            t
        })
    }
}

/// Whether the request carries what the real endpoint wants besides the
/// token: Anthropic's OAuth beta flag.
pub(crate) fn missing_header(endpoint: Endpoint, headers: &HeaderMap) -> Option<&'static str> {
    match endpoint {
        Endpoint::Anthropic => {
            let has_beta = headers
                .get_all("anthropic-beta")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.split(',').any(|b| b.trim() == "oauth-2025-04-20"));
            (!has_beta).then_some("anthropic-beta: oauth-2025-04-20")
        }
        Endpoint::Chatgpt => None,
    }
}

/// The answer's body for an account's quota state (`None`: no quota, all
/// windows empty).
pub(crate) fn body(endpoint: Endpoint, view: Option<&QuotaView>) -> String {
    let now = SystemTime::now();
    let (u5, reset5, window, u7, reset7) = match view {
        Some(v) => (
            v.utilization(),
            Some(v.reset_wall),
            v.window,
            v.week_utilization(),
            Some(v.week_reset_wall),
        ),
        None => (0.0, None, Duration::from_secs(5 * 3600), 0.0, None),
    };
    match endpoint {
        Endpoint::Anthropic => {
            let w = |u: f64, r: Option<SystemTime>| json!({ "utilization": (u * 1000.0).round() / 10.0, "resets_at": r.map(rfc3339) });
            json!({
                "five_hour": w(u5, reset5),
                "seven_day": w(u7, reset7),
                "seven_day_oauth_apps": null,
                "seven_day_opus": w(0.0, None),
            })
            .to_string()
        }
        Endpoint::Chatgpt => {
            let w = |u: f64, len: Duration, r: Option<SystemTime>| {
                let reset = r.unwrap_or(now + len);
                json!({
                    "used_percent": (u * 1000.0).round() / 10.0,
                    "limit_window_seconds": len.as_secs(),
                    "reset_after_seconds": reset.duration_since(now).unwrap_or_default().as_secs(),
                    "reset_at": epoch_secs_ceil(reset),
                })
            };
            json!({
                "plan_type": "pro",
                "rate_limit": {
                    "allowed": u5 < 1.0,
                    "limit_reached": u5 >= 1.0,
                    "primary_window": w(u5, window, reset5),
                    "secondary_window": w(u7, crate::world::WEEK, reset7),
                },
            })
            .to_string()
        }
    }
}

/// The quota state of an account now, without spending any of it.
pub(crate) fn view_of(live: &crate::world::Live) -> Option<QuotaView> {
    let q = live.account.quota.as_ref()?;
    let mut st = live.state.lock().unwrap_or_else(|p| p.into_inner());
    Some(peek(q, &mut st, Instant::now(), SystemTime::now()))
}
