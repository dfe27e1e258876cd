//! What several marathon instances sharing one store learn from each other
//! (issue 12): a team gateway on Redis, or two `serve` processes on one file
//! store.
//!
//! Two paths, one fast and one sure:
//! - **push** ([`Peers`]): every event this instance publishes is handed to
//!   the peers seam, which a shared backend fans out (Redis pub/sub); other
//!   instances feed what they receive into their pools through a
//!   [`PeerInbox`] before their next pick. Never on the request path: the
//!   seam only queues;
//! - **merge** ([`sync_hot`]): every [`HOT_SYNC_EVERY`] this instance folds
//!   its news (new cooldowns, counter increments) into the store's shared hot
//!   state ([`Store::merge_hot`]) and merges the result back into its pools.
//!   This is how file-store processes share, and how a Redis instance
//!   reconciles after missing pushes while Redis was down.
//!
//! Both merge with [`Pool::merge_cooldown`](marathon_core::pool::Pool::merge_cooldown):
//! a cooldown is never shortened by what another instance reports.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marathon_core::events::{Event, EventKind};
use marathon_core::pool::Health;
use marathon_core::{AccountId, Reason, UnixMillis};
use marathon_store::{HotAccount, HotState, Store};

use crate::state::AppState;

/// How often hot state is merged with the store: a cooldown one process
/// learns reaches another sharing its file store within twice this.
pub(crate) const HOT_SYNC_EVERY: Duration = Duration::from_millis(250);

/// A cooldown another instance learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCooldown {
    /// The provider (route name).
    pub provider: String,
    /// The account (ids are shared: the instances share the store).
    pub account: AccountId,
    /// Benched until.
    pub until: UnixMillis,
    /// Why.
    pub reason: Reason,
}

/// The other instances sharing this proxy's store. A shared backend
/// implements it (the binary adapts `marathon-redis`); the proxy only calls it.
pub trait Peers: Send + Sync {
    /// This instance published an event (`json`, as `/_marathon/events`
    /// carries it); `cooldown` is set when it benched an account. Must not
    /// block or wait on the network: it runs on the request path.
    fn announce(&self, json: &str, cooldown: Option<PeerCooldown>);
}

/// Feeds other instances' news into this proxy ([`crate::ProxyHandle::peer_inbox`]).
#[derive(Clone)]
pub struct PeerInbox(pub(crate) Arc<AppState>);

impl PeerInbox {
    /// Another instance benched an account: bench it here too, unless it
    /// already rests at least that long. No event: the other instance
    /// announced it, and its event arrives through [`PeerInbox::event`].
    pub fn cooldown(&self, c: &PeerCooldown) {
        if let Some(rt) = self.0.providers.get(&c.provider) {
            let now = self.0.now();
            let mut pool = rt.pool.lock().unwrap_or_else(|e| e.into_inner());
            let _ = pool.merge_cooldown(&c.account, c.until, c.reason.clone(), now);
        }
    }

    /// Another instance's event, shown on this instance's `/_marathon/events`.
    /// Anything but a JSON object is dropped (a shared store is trusted,
    /// but a stray publisher on its channel should not reach the page).
    pub fn event(&self, json: String) {
        if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&json).is_ok() {
            self.0.bus.relay(json);
        }
    }
}

/// Hands a just-published event to the peers, with the account id when it
/// is a cooldown (events name accounts by label).
pub(crate) fn announce(state: &AppState, peers: &dyn Peers, event: &Event, json: &str) {
    let cooldown = match &event.kind {
        EventKind::Cooldown {
            account,
            until,
            reason,
            ..
        } => state.providers.get(&event.provider).and_then(|rt| {
            let creds = rt.creds.read().unwrap_or_else(|e| e.into_inner());
            let id = creds.iter().find(|(_, c)| &c.label == account)?.0.clone();
            Some(PeerCooldown {
                provider: event.provider.clone(),
                account: id,
                until: *until,
                reason: reason.clone(),
            })
        }),
        _ => None,
    };
    peers.announce(json, cooldown);
}

/// What this instance has already folded into the store's hot state.
#[derive(Default)]
pub(crate) struct HotSync {
    /// Counters (successes, failures) as last reported.
    counted: Mutex<HashMap<AccountId, (u64, u64)>>,
    /// The cooldown end last reported per account.
    cooled: Mutex<HashMap<AccountId, UnixMillis>>,
    /// Whether the last store call failed (logged once, not per attempt).
    store_down: AtomicBool,
}

impl HotSync {
    /// A store call failed: loud once, then quiet until it works again.
    pub(crate) fn store_failed(&self, what: &str, err: &dyn std::fmt::Display) {
        if !self.store_down.swap(true, Ordering::SeqCst) {
            tracing::error!(
                "the account store is unreachable ({what}: {err}); serving from the last known \
                 accounts and cooldowns, OAuth refreshes wait for it; will reconcile when it returns"
            );
        }
    }

    /// A store call worked: say so once after an outage.
    pub(crate) fn store_ok(&self) {
        if self.store_down.swap(false, Ordering::SeqCst) {
            tracing::warn!("the account store is reachable again; hot state reconciled");
        }
    }
}

/// What was reported for one account: its counters then, and the cooldown
/// end if one was reported; remembered once the merge lands.
type Reported = (AccountId, (u64, u64), Option<UnixMillis>);

/// This instance's news since the last merge: new or longer cooldowns, and
/// counter increments. Also the values to remember once the merge lands.
fn news(state: &AppState, now: UnixMillis) -> (HotState, Vec<Reported>) {
    let sync = &state.hot;
    let counted = sync.counted.lock().unwrap_or_else(|e| e.into_inner());
    let cooled = sync.cooled.lock().unwrap_or_else(|e| e.into_inner());
    let mut delta = HotState::default();
    let mut seen = Vec::new();
    for rt in state.providers.values() {
        let pool = rt.pool.lock().unwrap_or_else(|e| e.into_inner());
        for a in pool.status(now) {
            let (s0, f0) = counted.get(&a.id).copied().unwrap_or((0, 0));
            // Counters restart from zero when an account is re-added.
            let (ds, df) = if a.successes < s0 || a.failures < f0 {
                (a.successes, a.failures)
            } else {
                (a.successes - s0, a.failures - f0)
            };
            let until = match a.health {
                Health::Cooling { until } if cooled.get(&a.id) != Some(&until) => Some(until),
                _ => None,
            };
            if ds == 0 && df == 0 && until.is_none() {
                continue;
            }
            delta.cooldowns.insert(
                a.id.clone(),
                HotAccount {
                    cooling_until: until,
                    reason: until.and(a.last_reason.clone()),
                    successes: ds,
                    failures: df,
                },
            );
            seen.push((a.id, (a.successes, a.failures), until));
        }
    }
    (delta, seen)
}

/// Folds this instance's news into the store's hot state and merges what
/// the others learned into the pools. A failure keeps the news for the next
/// round (nothing is lost while the store is down).
pub(crate) async fn sync_hot(state: &Arc<AppState>) {
    let now = state.now();
    let (delta, seen) = news(state, now);
    let store: Arc<dyn Store> = state.store.clone();
    let merged = match tokio::task::spawn_blocking(move || store.merge_hot(&delta, now)).await {
        Ok(Ok(merged)) => merged,
        Ok(Err(e)) => return state.hot.store_failed("merging hot state", &e),
        Err(_) => return,
    };
    state.hot.store_ok();
    {
        let mut counted = state.hot.counted.lock().unwrap_or_else(|e| e.into_inner());
        let mut cooled = state.hot.cooled.lock().unwrap_or_else(|e| e.into_inner());
        for (id, counts, until) in seen {
            counted.insert(id.clone(), counts);
            if let Some(until) = until {
                cooled.insert(id, until);
            }
        }
    }
    apply(state, &merged);
}

/// Merges the shared hot state's cooldowns into the pools (never shortening
/// one). The events are dropped: the instance that learned a cooldown
/// announced it.
fn apply(state: &AppState, hot: &HotState) {
    let now = state.now();
    let mut cooled = state.hot.cooled.lock().unwrap_or_else(|e| e.into_inner());
    for rt in state.providers.values() {
        let mut pool = rt.pool.lock().unwrap_or_else(|e| e.into_inner());
        for (id, h) in &hot.cooldowns {
            if let Some(until) = h.cooling_until.filter(|u| *u > now) {
                let reason = h.reason.clone().unwrap_or(Reason::fixed("shared_cooldown"));
                if !pool.merge_cooldown(id, until, reason, now).is_empty() {
                    // Learned from the store: nothing to report back.
                    cooled.insert(id.clone(), until);
                }
            }
        }
    }
}
