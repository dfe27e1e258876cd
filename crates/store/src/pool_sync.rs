//! Keeping a provider's pool in line with the store, and its cooldowns
//! across restarts. Both of marathon's faces (the proxy and the client
//! middleware) run these, so an account added, edited, logged out or
//! logged in again by `marathon auth` reaches either the same way.

use std::collections::HashMap;

use marathon_core::pool::{Health, Pool};
use marathon_core::{AccountId, UnixMillis};

use crate::{AccountState, HotAccount, HotState, StoredAccount};

/// Brings `pool` in line with `accounts` (the provider's accounts in the
/// store): new accounts join, removed ones leave, edited ones (label,
/// priority, enabled, needs-login) update. Cheap enough to run every few
/// seconds.
pub fn sync_pool(pool: &mut Pool, accounts: &[&StoredAccount], now: UnixMillis) {
    let health: HashMap<AccountId, Health> = pool
        .status(now)
        .into_iter()
        .map(|s| (s.id, s.health))
        .collect();
    for id in health.keys() {
        if !accounts.iter().any(|a| &a.id == id) {
            pool.remove(id);
        }
    }
    for a in accounts {
        pool.upsert(a.meta());
        let in_pool = health.get(&a.id);
        match a.state {
            // Old news (or another process's news, already announced there): no event.
            AccountState::NeedsLogin if in_pool != Some(&Health::NeedsLogin) => {
                let _ = pool.mark_needs_login(&a.id, now, "stored state");
            }
            // Logged in again since: usable at once.
            AccountState::Active if in_pool == Some(&Health::NeedsLogin) => {
                let _ = pool.mark_ready(&a.id, now);
            }
            _ => {}
        }
    }
}

/// Adds `pool`'s cooldowns and counters to `hot`, to save.
pub fn save_hot(pool: &Pool, now: UnixMillis, hot: &mut HotState) {
    for a in pool.status(now) {
        let cooling_until = match a.health {
            Health::Cooling { until } => Some(until),
            _ => None,
        };
        hot.cooldowns.insert(
            a.id.clone(),
            HotAccount {
                cooling_until,
                reason: a.last_reason.clone(),
                successes: a.successes,
                failures: a.failures,
            },
        );
    }
}

/// Puts remembered cooldowns that have not ended back on `pool`'s accounts.
pub fn restore_hot(pool: &mut Pool, hot: &HotState, now: UnixMillis) {
    let ids: Vec<_> = pool.status(now).into_iter().map(|s| s.id).collect();
    for id in ids {
        if let Some(HotAccount {
            cooling_until: Some(until),
            reason,
            ..
        }) = hot.cooldowns.get(&id)
            && *until > now
        {
            let _ = pool.set_cooldown(
                &id,
                *until,
                reason.clone().unwrap_or("remembered cooldown".into()),
                now,
            );
        }
    }
}
