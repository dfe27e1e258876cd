//! Concurrency slots (`max_in_flight`) shared by every instance on one
//! Redis: one sorted set per account, `<p>:slots:<account id>`, whose
//! members are the slots held (`<instance>:<n>`) scored by when their lease
//! ends (Redis's own clock, so instances' clocks do not matter).
//!
//! Taking a slot is one Lua script, atomic on the server: drop the expired
//! leases, count the rest, add ours only if below the cap. Giving it back is
//! a `ZREM`. A background task on the store's runtime renews this instance's
//! leases every third of the lease, so a slot held by a long stream stays
//! held, while the slots of an instance that died (SIGKILL, power loss)
//! return to the others once their lease ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use marathon_core::AccountId;

use crate::{Inner, describe, random_token};

/// How long taking a slot may take before the caller goes on with its local
/// cap alone: a request must not stall on a Redis that is down.
const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);

/// After Redis failed to answer, how long requests go on with their local
/// cap without asking it again (so an outage costs one timeout, not one per
/// request).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// KEYS[1] the account's set; ARGV[1] the cap, ARGV[2] the lease (ms),
/// ARGV[3] the member. 1: taken; 0: every slot is held.
const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return 1
"#;

/// KEYS[1] the account's set; ARGV[1] the lease (ms), ARGV[2..] members
/// still held: their leases move on (only those still there: a lease that
/// ended while Redis was away is not taken back).
const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until = now + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', until, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
return 1
"#;

/// The answer of [`Slots::acquire`].
#[derive(Debug)]
pub enum Acquired {
    /// A slot is ours until the [`SlotLease`] is dropped.
    Held(SlotLease),
    /// Every slot of the account is held.
    Full,
    /// Redis could not be asked (down, slow): the caller's local cap applies.
    Unavailable(String),
}

/// This instance's concurrency slots. Cheap to clone.
#[derive(Clone)]
pub struct Slots {
    shared: Arc<SlotsShared>,
}

struct SlotsShared {
    inner: Arc<Inner>,
    instance: String,
    lease: Duration,
    next: AtomicU64,
    /// Slots held now: member → the account's key.
    held: Mutex<HashMap<String, String>>,
    /// Until when Redis is not asked (after a failure).
    quiet_until: Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("instance", &self.shared.instance)
            .field("lease", &self.shared.lease)
            .finish_non_exhaustive()
    }
}

/// A slot held in Redis; dropping it gives the slot back (`ZREM`, sent in
/// the background).
pub struct SlotLease {
    shared: Arc<SlotsShared>,
    key: String,
    member: String,
}

impl std::fmt::Debug for SlotLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotLease")
            .field("key", &self.key)
            .field("member", &self.member)
            .finish()
    }
}

impl SlotLease {
    /// A lease that was never taken in Redis: nothing to give back.
    fn forget(mut self) {
        self.shared
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.member);
        self.member.clear();
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        if self.member.is_empty() {
            return;
        }
        self.shared
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.member);
        let mut conn = self.shared.inner.conn.clone();
        let (key, member) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.member),
        );
        self.shared.inner.bridge.spawn(async move {
            let gone: redis::RedisResult<i64> = redis::cmd("ZREM")
                .arg(&key)
                .arg(&member)
                .query_async(&mut conn)
                .await;
            if let Err(e) = gone {
                // The lease ends by itself; until then the slot stays taken.
                tracing::debug!(
                    "could not give a concurrency slot back ({}); it returns when its lease ends",
                    describe(&e)
                );
            }
        });
    }
}

impl Slots {
    pub(crate) fn new(inner: Arc<Inner>, lease: Duration) -> Slots {
        let lease = lease.max(Duration::from_secs(1));
        let shared = Arc::new(SlotsShared {
            inner,
            instance: random_token(),
            lease,
            next: AtomicU64::new(0),
            held: Mutex::new(HashMap::new()),
            quiet_until: Mutex::new(None),
        });
        shared
            .inner
            .bridge
            .spawn(renew_forever(Arc::downgrade(&shared), lease));
        Slots { shared }
    }

    /// How long a slot lives unless renewed.
    pub fn lease(&self) -> Duration {
        self.shared.lease
    }

    /// Takes one of `account`'s `cap` slots if one is free. Runs on the
    /// store's runtime (await it from any runtime); answers within half a
    /// second even when Redis is down.
    pub async fn acquire(&self, account: &AccountId, cap: u32) -> Acquired {
        let shared = &self.shared;
        let now = std::time::Instant::now();
        {
            let mut quiet = shared.quiet_until.lock().unwrap_or_else(|e| e.into_inner());
            match *quiet {
                Some(until) if now < until => {
                    return Acquired::Unavailable("unreachable a moment ago".into());
                }
                Some(_) => *quiet = None,
                None => {}
            }
        }
        let key = format!("{}{}", shared.inner.keys.slots_prefix, account.0);
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        let member = format!("{}:{n}", shared.instance);
        let mut conn = shared.inner.conn.clone();
        let lease_ms = u64::try_from(shared.lease.as_millis()).unwrap_or(u64::MAX);
        let (k, m) = (key.clone(), member.clone());
        // Held before the answer: the renewal must not miss a slot taken
        // just before its tick.
        shared
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(member.clone(), key.clone());
        let task = shared.inner.bridge.handle().spawn(async move {
            let script = redis::Script::new(ACQUIRE);
            let mut call = script.key(&k);
            call.arg(cap).arg(lease_ms).arg(&m);
            tokio::time::timeout(ACQUIRE_TIMEOUT, call.invoke_async::<i64>(&mut conn)).await
        });
        let lease = SlotLease {
            shared: shared.clone(),
            key,
            member,
        };
        let answer = match task.await {
            Ok(Ok(Ok(1))) => Acquired::Held(lease),
            Ok(Ok(Ok(_))) => {
                lease.forget();
                Acquired::Full
            }
            // Unknown whether it was taken: giving it back (the drop) is harmless.
            Ok(Ok(Err(e))) => Acquired::Unavailable(describe(&e)),
            Ok(Err(_)) => Acquired::Unavailable("timed out".into()),
            Err(_) => {
                lease.forget();
                Acquired::Unavailable("runtime stopped".into())
            }
        };
        if matches!(answer, Acquired::Unavailable(_)) {
            *shared.quiet_until.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(now + RETRY_AFTER_FAILURE);
        }
        answer
    }

    /// Slots this instance holds now (all accounts).
    pub fn held(&self) -> usize {
        self.shared
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// Renews this instance's leases every third of the lease, until the
/// [`Slots`] are gone.
async fn renew_forever(shared: Weak<SlotsShared>, lease: Duration) {
    let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::time::sleep(lease / 3).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
        for (member, key) in shared.held.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            by_key.entry(key.clone()).or_default().push(member.clone());
        }
        for (key, members) in by_key {
            let mut conn = shared.inner.conn.clone();
            let script = redis::Script::new(RENEW);
            let mut call = script.key(&key);
            call.arg(lease_ms);
            for m in &members {
                call.arg(m);
            }
            let renewed =
                tokio::time::timeout(ACQUIRE_TIMEOUT, call.invoke_async::<i64>(&mut conn)).await;
            if !matches!(renewed, Ok(Ok(_))) {
                tracing::debug!("could not renew {} concurrency slot(s)", members.len());
            }
        }
    }
}
