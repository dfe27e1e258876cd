//! # marathon-redis: several marathon instances on one Redis (or Valkey)
//!
//! A team gateway runs several `marathon serve` instances (behind a load
//! balancer, or one per developer) that must act as one. This crate gives
//! them:
//! - [`RedisStore`], the [`Store`] trait on Redis: the accounts document
//!   (the same JSON as `accounts.json`) under one key, changed only by
//!   compare-and-set, so no update is lost between instances; the shared hot
//!   state (cooldowns never shortened, counters added up); per-account
//!   refresh locks (`SET NX PX` with a random token, released by a Lua
//!   compare-and-delete, and *fencing*: a write to an account whose lock this
//!   process holds succeeds only while the lock is still its own);
//! - [`Cluster`], pub/sub between instances: events and cooldowns pushed to
//!   every other instance as they happen;
//! - [`Slots`], per-account concurrency slots (`max_in_flight`) held across
//!   every instance together, as leases that return when a holder dies.
//!
//! ## The bridge between the sync [`Store`] trait and async redis-rs
//! [`Store`] is synchronous on purpose (its callers are CLI commands and the
//! proxy's blocking pool). Each [`RedisStore`] owns a small tokio runtime on
//! a thread of its own, holding one [`ConnectionManager`] (multiplexed,
//! reconnects by itself). A trait call hands its future to that runtime and
//! waits on a channel for the answer: it works the same from a plain thread,
//! a blocking-pool thread or a CLI command without a runtime, and never
//! nests one runtime's `block_on` in another's. Pub/sub and the announce
//! queue run on that runtime too, so nothing here touches the caller's.
//!
//! Keys, under a prefix (`marathon` by default, `[store] prefix`):
//! `<p>:accounts` (the accounts document), `<p>:hot` (hot state JSON),
//! `<p>:lock:<id>` (refresh locks), `<p>:lease:<what>:<id>` (leases such as
//! the usage poll's), `<p>:slots:<id>` (concurrency slots, [`Slots`]), and
//! the channel `<p>:events`.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use marathon_core::{Clock, SystemClock, UnixMillis};
use marathon_store::backend::AccountsDoc;
use marathon_store::{
    AccountId, AccountLock, AddResult, HotState, NewAccount, Store, StoreError, StoredAccount,
};
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;

mod cluster;
mod durability;
mod slots;

pub use cluster::{Cluster, PeerMessage, WireCooldown};
pub use durability::Durability;
pub use slots::{Acquired, SlotLease, Slots};

/// How long a refresh lock lives if its holder dies without releasing it.
/// A refresh takes seconds; past this another instance may take over, and
/// fencing refuses the stale holder's write.
pub const LOCK_TTL: Duration = Duration::from_secs(60);

/// How long one Redis command may take before the call fails (Redis down
/// must not hang a CLI command or the proxy's background work).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Where to connect and under which key prefix.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port/db` or `rediss://` for TLS.
    pub url: String,
    /// Key prefix (several gateways can share one Redis).
    pub prefix: String,
}

/// Accounts, hot state and locks in Redis. Safe to share between threads,
/// processes and machines.
pub struct RedisStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) bridge: Bridge,
    pub(crate) conn: ConnectionManager,
    pub(crate) client: redis::Client,
    pub(crate) keys: Keys,
    /// The URL without its password, for messages.
    pub(crate) shown: String,
    clock: Arc<dyn Clock>,
    /// Locks this process holds: account → token (fencing).
    held: Mutex<HashMap<AccountId, String>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.shown)
            .finish_non_exhaustive()
    }
}

/// Key names.
pub(crate) struct Keys {
    pub(crate) accounts: String,
    pub(crate) hot: String,
    pub(crate) lock_prefix: String,
    pub(crate) lease_prefix: String,
    pub(crate) slots_prefix: String,
    pub(crate) events: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Keys {
            accounts: format!("{prefix}:accounts"),
            hot: format!("{prefix}:hot"),
            lock_prefix: format!("{prefix}:lock:"),
            lease_prefix: format!("{prefix}:lease:"),
            slots_prefix: format!("{prefix}:slots:"),
            events: format!("{prefix}:events"),
        }
    }

    fn lock(&self, id: &AccountId) -> String {
        format!("{}{}", self.lock_prefix, id.0)
    }
}

/// A runtime on a thread of its own that runs this crate's futures.
pub(crate) struct Bridge {
    handle: tokio::runtime::Handle,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Bridge {
    fn start() -> std::io::Result<Bridge> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("marathon-redis".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                })
            })?;
        Ok(Bridge {
            handle,
            stop: Mutex::new(Some(stop)),
        })
    }

    /// Runs `fut` on the bridge's runtime and waits for its answer.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().ok()
    }

    /// The bridge's runtime.
    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Runs `fut` on the bridge's runtime without waiting.
    pub(crate) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(fut);
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = stop.send(());
        }
    }
}

/// A random token (lock values, instance ids): 16 bytes of the OS's randomness, hex.
pub(crate) fn random_token() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    // The OS's random source does not fail on Linux; a fixed fallback would
    // only make two holders' tokens equal, which the lock TTL still bounds.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sets `KEYS[1]` to `ARGV[2]` only if it still holds `ARGV[1]` (`""` for
/// absent) and, when `ARGV[3]` is not empty, the lock `KEYS[2]` still holds
/// that token. 1: written; 0: the value changed (retry); -1: the lock is
/// no longer ours (fenced).
const COMPARE_AND_SET: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == false then cur = '' end
if cur ~= ARGV[1] then return 0 end
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then return -1 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"#;

/// Deletes the lock only if it still holds our token.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

impl RedisStore {
    /// Connects (failing fast if Redis cannot be reached) and checks that
    /// the server persists writes, warning loudly when it does not: a
    /// rotated refresh token lives only in the store.
    pub fn open(options: &RedisOptions) -> Result<RedisStore, StoreError> {
        Self::open_with_clock(options, Arc::new(SystemClock))
    }

    /// [`RedisStore::open`] with the clock used for timestamps.
    pub fn open_with_clock(
        options: &RedisOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<RedisStore, StoreError> {
        let shown = format!(
            "redis at {}",
            marathon_core::secret::redact_url(&options.url)
        );
        let unavailable = |detail: String| StoreError::Unavailable {
            backend: shown.clone(),
            detail,
        };
        let client = redis::Client::open(options.url.as_str())
            .map_err(|e| unavailable(format!("bad url ({})", e.category())))?;
        let bridge = Bridge::start().map_err(|e| unavailable(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let c = client.clone();
        let conn = bridge
            .run(async move { c.get_connection_manager_with_config(config).await })
            .ok_or_else(|| unavailable("runtime stopped".into()))?
            .map_err(|e| unavailable(describe(&e)))?;
        let store = RedisStore {
            inner: Arc::new(Inner {
                bridge,
                conn,
                client,
                keys: Keys::new(&options.prefix),
                shown,
                clock,
                held: Mutex::new(HashMap::new()),
            }),
        };
        match store.durability() {
            Ok(d) if !d.is_durable() => tracing::error!("{}", d.warning(&store.inner.shown)),
            Ok(d) => tracing::debug!("{}: {d:?}", store.inner.shown),
            Err(e) => tracing::warn!("could not check whether Redis persists writes: {e}"),
        }
        Ok(store)
    }

    /// Whether (and how) the server persists writes.
    pub fn durability(&self) -> Result<Durability, StoreError> {
        let mut conn = self.inner.conn.clone();
        let info: String = self.call(async move {
            redis::cmd("INFO")
                .arg("persistence")
                .query_async(&mut conn)
                .await
        })?;
        Ok(Durability::from_info(&info))
    }

    /// Concurrency slots (`max_in_flight`) shared by the instances on this
    /// Redis, each living `lease` unless renewed.
    pub fn slots(&self, lease: Duration) -> Slots {
        Slots::new(self.inner.clone(), lease)
    }

    /// Pub/sub between the instances on this Redis.
    pub fn cluster(&self) -> Cluster {
        Cluster::new(self.inner.clone())
    }

    /// Runs one Redis future on the bridge, mapping its error.
    fn call<T: Send + 'static>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.inner.call(fut)
    }

    fn read_accounts(&self) -> Result<(Vec<u8>, AccountsDoc), StoreError> {
        let mut conn = self.inner.conn.clone();
        let key = self.inner.keys.accounts.clone();
        let bytes: Option<Vec<u8>> = self.call(async move { conn.get(key).await })?;
        let bytes = bytes.unwrap_or_default();
        let doc = if bytes.is_empty() {
            AccountsDoc::empty()
        } else {
            AccountsDoc::parse(&bytes, &PathBuf::from(&self.inner.keys.accounts))?
        };
        Ok((bytes, doc))
    }

    /// Compare-and-set of `key` from `old` to `new`, fenced by `token`.
    fn compare_and_set(
        &self,
        key: &str,
        old: Vec<u8>,
        new: Vec<u8>,
        fence: Option<(String, String)>,
    ) -> Result<i64, StoreError> {
        let mut conn = self.inner.conn.clone();
        let key = key.to_string();
        let (lock_key, token) = fence.unwrap_or_default();
        self.call(async move {
            redis::Script::new(COMPARE_AND_SET)
                .key(key)
                .key(lock_key)
                .arg(old)
                .arg(new)
                .arg(token)
                .invoke_async(&mut conn)
                .await
        })
    }

    /// One read-modify-write of the accounts document, retried while
    /// another instance changed it meanwhile. When this process holds the
    /// lock of `fenced`, the write happens only while the lock is still ours.
    fn modify<T>(
        &self,
        fenced: Option<&AccountId>,
        mut f: impl FnMut(&mut AccountsDoc) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let fence = fenced.and_then(|id| {
            let held = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
            held.get(id)
                .map(|token| (self.inner.keys.lock(id), token.clone()))
        });
        loop {
            let (old, mut doc) = self.read_accounts()?;
            let out = f(&mut doc)?;
            let key = self.inner.keys.accounts.clone();
            match self.compare_and_set(&key, old, doc.to_bytes(), fence.clone())? {
                1 => return Ok(out),
                0 => continue,
                _ => {
                    return Err(StoreError::Fenced(
                        fenced.cloned().unwrap_or_else(|| AccountId("".into())),
                    ));
                }
            }
        }
    }

    /// Writes every account as it is (ids kept): `marathon store copy`.
    pub fn put_all(&self, accounts: Vec<StoredAccount>) -> Result<(), StoreError> {
        self.modify(None, |doc| {
            for a in accounts.clone() {
                doc.put(a);
            }
            Ok(())
        })
    }
}

impl Inner {
    pub(crate) fn call<T: Send + 'static>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let unavailable = |detail: String| StoreError::Unavailable {
            backend: self.shown.clone(),
            detail,
        };
        self.bridge
            .run(async move {
                match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
                    Ok(r) => r.map_err(|e| describe(&e)),
                    Err(_) => Err("timed out".to_string()),
                }
            })
            .ok_or_else(|| unavailable("runtime stopped".into()))?
            .map_err(unavailable)
    }
}

/// A Redis error, without anything a server could echo: its kind and code.
pub(crate) fn describe(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connection_refusal() || e.is_connection_dropped() || e.is_io_error() {
        "cannot connect".into()
    } else {
        match e.code() {
            Some(code) => format!("{} ({code})", e.category()),
            None => e.category().to_string(),
        }
    }
}

/// The lock guard: releases by compare-and-delete when dropped.
struct RedisLockGuard {
    inner: Arc<Inner>,
    id: AccountId,
    token: String,
}

impl Drop for RedisLockGuard {
    fn drop(&mut self) {
        self.inner
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        let mut conn = self.inner.conn.clone();
        let key = self.inner.keys.lock(&self.id);
        let token = std::mem::take(&mut self.token);
        // Not waited for: a drop must not block. Until it lands the lock
        // looks held; waiters poll, and its TTL bounds the worst case.
        self.inner.bridge.spawn(async move {
            let released: redis::RedisResult<i64> = redis::Script::new(RELEASE)
                .key(key)
                .arg(token)
                .invoke_async(&mut conn)
                .await;
            if let Err(e) = released {
                tracing::warn!(
                    "could not release a refresh lock (it expires by itself): {}",
                    describe(&e)
                );
            }
        });
    }
}

impl Store for RedisStore {
    fn list(&self) -> Result<Vec<StoredAccount>, StoreError> {
        Ok(self.read_accounts()?.1.into_accounts())
    }

    fn get(&self, id: &AccountId) -> Result<Option<StoredAccount>, StoreError> {
        Ok(self.list()?.into_iter().find(|a| &a.id == id))
    }

    fn find(&self, provider: &str, label: &str) -> Result<Option<StoredAccount>, StoreError> {
        Ok(self
            .list()?
            .into_iter()
            .find(|a| a.provider == provider && a.label == label))
    }

    fn add(&self, account: NewAccount) -> Result<AddResult, StoreError> {
        let now = self.inner.clock.now();
        self.modify(None, |doc| doc.add(account.clone(), now))
    }

    fn update(
        &self,
        id: &AccountId,
        f: &mut dyn FnMut(&mut StoredAccount),
    ) -> Result<StoredAccount, StoreError> {
        let now = self.inner.clock.now();
        self.modify(Some(id), |doc| doc.update(id, f, now))
    }

    fn remove(&self, id: &AccountId) -> Result<(), StoreError> {
        self.modify(None, |doc| doc.remove(id))
    }

    fn lock_account(&self, id: &AccountId, wait: Duration) -> Result<AccountLock, StoreError> {
        let key = self.inner.keys.lock(id);
        let token = random_token();
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(5);
        // Redis unreachable counts as "not yet": a refresh waits for the
        // lock (up to `wait`) rather than running without it.
        let mut unreachable = None;
        loop {
            let mut conn = self.inner.conn.clone();
            let (k, t) = (key.clone(), token.clone());
            let taken: Result<Option<String>, StoreError> = self.call(async move {
                redis::cmd("SET")
                    .arg(k)
                    .arg(t)
                    .arg("NX")
                    .arg("PX")
                    .arg(LOCK_TTL.as_millis() as u64)
                    .query_async(&mut conn)
                    .await
            });
            let taken = match taken {
                Ok(taken) => taken,
                Err(e) => {
                    unreachable = Some(e);
                    None
                }
            };
            if taken.is_some() {
                self.inner
                    .held
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.clone(), token.clone());
                return Ok(AccountLock::from_guard(RedisLockGuard {
                    inner: self.inner.clone(),
                    id: id.clone(),
                    token,
                }));
            }
            if Instant::now() >= deadline {
                if let Some(e) = unreachable {
                    return Err(e);
                }
                return Err(StoreError::LockTimeout {
                    path: PathBuf::from(key),
                    waited: wait,
                });
            }
            std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// `SET <p>:lease:<what>:<id> NX PXAT until`: one holder across every
    /// instance until the lease runs out (Redis expires it).
    fn try_lease(
        &self,
        id: &AccountId,
        what: &str,
        _now: UnixMillis,
        until: UnixMillis,
    ) -> Result<bool, StoreError> {
        let mut conn = self.inner.conn.clone();
        let key = format!("{}{what}:{}", self.inner.keys.lease_prefix, id.0);
        let taken: Option<String> = self.call(async move {
            redis::cmd("SET")
                .arg(key)
                .arg(1)
                .arg("NX")
                .arg("PXAT")
                .arg(until.0)
                .query_async(&mut conn)
                .await
        })?;
        Ok(taken.is_some())
    }

    fn set_lease(&self, id: &AccountId, what: &str, until: UnixMillis) -> Result<(), StoreError> {
        let mut conn = self.inner.conn.clone();
        let key = format!("{}{what}:{}", self.inner.keys.lease_prefix, id.0);
        self.call(async move {
            redis::cmd("SET")
                .arg(key)
                .arg(1)
                .arg("PXAT")
                .arg(until.0)
                .query_async::<()>(&mut conn)
                .await
        })
    }

    fn load_hot(&self) -> Result<HotState, StoreError> {
        Ok(self.read_hot()?.1)
    }

    fn save_hot(&self, hot: &HotState) -> Result<(), StoreError> {
        let mut conn = self.inner.conn.clone();
        let key = self.inner.keys.hot.clone();
        let bytes = serde_json::to_vec(hot).unwrap_or_default();
        self.call(async move { conn.set::<_, _, ()>(key, bytes).await })
    }

    /// Compare-and-set on `<p>:hot`, retried on a concurrent change: no
    /// instance's cooldown or count is lost, none is shortened.
    fn merge_hot(&self, delta: &HotState, now: UnixMillis) -> Result<HotState, StoreError> {
        loop {
            let (old, mut hot) = self.read_hot()?;
            if !hot.merge(delta, now) {
                return Ok(hot);
            }
            let new = serde_json::to_vec(&hot).unwrap_or_default();
            if self.compare_and_set(&self.inner.keys.hot, old, new, None)? == 1 {
                return Ok(hot);
            }
        }
    }
}

impl RedisStore {
    fn read_hot(&self) -> Result<(Vec<u8>, HotState), StoreError> {
        let mut conn = self.inner.conn.clone();
        let key = self.inner.keys.hot.clone();
        let bytes: Option<Vec<u8>> = self.call(async move { conn.get(key).await })?;
        let bytes = bytes.unwrap_or_default();
        // Hot state may be lost by design: unreadable is empty.
        let hot = serde_json::from_slice(&bytes).unwrap_or_default();
        Ok((bytes, hot))
    }
}
