//! # marathon-store: where accounts and their credentials live
//!
//! The engine ([`marathon_core`]) never sees a credential; this crate keeps them.
//! Its roles:
//! - the [`Store`] trait: list, add (with dedupe by provider identity), update
//!   (atomic read-modify-write of one account), remove, per-account
//!   cross-process locks (for OAuth refresh) and lazily persisted hot state;
//! - [`FileStore`], the default backend: one schema-versioned JSON file
//!   (`accounts.json`, mode 0600) written atomically under a lock file, so
//!   several processes can share it without losing an update, and a file it does
//!   not understand (corrupt, or written by a newer marathon) is refused and
//!   left byte-for-byte untouched;
//! - [`pool_sync`]: store → a provider's pool (accounts joining, leaving,
//!   needing login) and cooldowns saved and restored across restarts, for
//!   every face that rotates;
//! - [`MemoryStore`], the same semantics in memory, for tests and embedding;
//! - [`import`]: readers for other tools' credential files (opencode, Claude
//!   Code, Codex, Gemini) that produce [`NewAccount`]s;
//! - [`client_config`]: marathon's settings merged into other tools' config
//!   files (Codex, opencode, Gemini CLI) with a backup, and undone;
//! - [`serve_record`]: where a running `marathon serve` listens (`serve.json`).
//!
//! The API is synchronous on purpose: store calls are off the hot path (the
//! proxy keeps accounts in memory), and async callers use `spawn_blocking`.
//!
//! Secrets are [`Secret`]s: they are written to the store file and nowhere
//! else, and no [`StoreError`] message ever contains one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use marathon_core::{AccountId, AccountKind, Secret, UnixMillis};

pub mod backend;
pub mod client_config;
mod doc;
mod file;
pub mod import;
mod lock;
mod memory;
pub mod pool_sync;
pub mod serve_record;

pub use file::{FileStore, PermissionFix};
pub use memory::MemoryStore;

/// The parsers behind [`FileStore`], without a file: entry points for the fuzz
/// targets in `fuzz/` and for the tests that run their seeds. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    use crate::{HotState, StoreError};

    /// Reads `accounts.json` bytes as [`crate::FileStore`] does (migrating an
    /// older version). On success: the bytes it would write back, and the
    /// version the document was migrated from, if it was older.
    pub fn accounts_file(bytes: &[u8]) -> Result<(Vec<u8>, Option<u64>), StoreError> {
        let parsed = crate::doc::parse(bytes, Path::new("accounts.json"))?;
        Ok((parsed.doc.to_bytes(), parsed.migrated_from))
    }

    /// Reads `hot.json` bytes as [`crate::Store::load_hot`] does for a file
    /// store, and the bytes [`crate::Store::save_hot`] would write for the result.
    pub fn hot_file(bytes: &[u8]) -> (HotState, Vec<u8>) {
        let hot = crate::file::parse_hot(bytes);
        let out = crate::file::hot_bytes(&hot);
        (hot, out)
    }
}

/// A JSON object, used for provider extras and preserved unknown fields.
pub type Map = serde_json::Map<String, serde_json::Value>;

/// What an account authenticates with.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Credential {
    /// A static API key.
    ApiKey {
        /// The key.
        key: Secret,
    },
    /// An OAuth login.
    Oauth {
        /// The access token sent upstream.
        access: Secret,
        /// The refresh token; single-use at most providers, so a rotated one
        /// must be stored before it is used again.
        refresh: Option<Secret>,
        /// When `access` expires, if known.
        expires_at: Option<UnixMillis>,
        /// The OpenID id token, when the provider issues one (Codex).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id_token: Option<Secret>,
        /// Granted scopes, when known.
        #[serde(default)]
        scopes: Vec<String>,
    },
}

impl Credential {
    /// The kind of account this credential belongs to.
    pub fn kind(&self) -> AccountKind {
        match self {
            Credential::ApiKey { .. } => AccountKind::ApiKey,
            Credential::Oauth { .. } => AccountKind::Oauth,
        }
    }

    /// Whether two credentials are the same login: the same API key, or
    /// OAuth tokens sharing their refresh token (or, without one, their
    /// access token). Adding such a credential again updates the account
    /// that holds it: two accounts holding one single-use refresh token
    /// would race, and the loser's login would be lost.
    pub fn same_login(&self, other: &Credential) -> bool {
        match (self, other) {
            (Credential::ApiKey { key: a }, Credential::ApiKey { key: b }) => a.same_as(b),
            (
                Credential::Oauth {
                    access: a1,
                    refresh: r1,
                    ..
                },
                Credential::Oauth {
                    access: a2,
                    refresh: r2,
                    ..
                },
            ) => match (r1, r2) {
                (Some(r1), Some(r2)) if r1.same_as(r2) => true,
                _ => a1.same_as(a2),
            },
            _ => false,
        }
    }

    /// Whether this is an OAuth login with a refresh token: the kind of
    /// credential two holders cannot share (refresh tokens are single-use).
    pub fn is_single_use(&self) -> bool {
        matches!(
            self,
            Credential::Oauth {
                refresh: Some(_),
                ..
            }
        )
    }
}

/// The persisted state of an account. Cooldowns are hot state, not here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    /// Usable (subject to cooldowns kept elsewhere).
    Active,
    /// The credential was revoked or the refresh token is dead: a person must
    /// log in again (`marathon auth login`, or `auth add` for a key).
    NeedsLogin,
}

impl AccountState {
    /// The name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountState::Active => "active",
            AccountState::NeedsLogin => "needs_login",
        }
    }
}

impl fmt::Display for AccountState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_true() -> bool {
    true
}

fn default_state() -> AccountState {
    AccountState::Active
}

/// One stored account, credential included.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredAccount {
    /// Stable id, assigned by the store.
    pub id: AccountId,
    /// Provider name (`anthropic`, `openai`, ...).
    pub provider: String,
    /// Human name, unique per provider.
    pub label: String,
    /// OAuth or API key.
    pub kind: AccountKind,
    /// Lower is preferred.
    #[serde(default)]
    pub priority: i32,
    /// A disabled account is never picked.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Persisted state.
    #[serde(default = "default_state")]
    pub state: AccountState,
    /// The provider's identity for this account (email, subject, account id),
    /// used to recognise the same account when it is added again.
    #[serde(default)]
    pub identity: Option<String>,
    /// The credential.
    pub credential: Credential,
    /// Provider extras (e.g. `chatgpt_account_id`, a Google project id).
    #[serde(default)]
    pub extras: Map,
    /// Where the credential came from when another tool shares its
    /// refresh-token family (e.g. `import:codex`).
    #[serde(default)]
    pub source: Option<String>,
    /// When the account was added.
    #[serde(default)]
    pub created_at: UnixMillis,
    /// When the account was last changed.
    #[serde(default)]
    pub updated_at: UnixMillis,
    /// Fields this version does not know, kept as they were on rewrite.
    #[serde(flatten)]
    pub unknown: Map,
}

impl StoredAccount {
    /// What the engine needs to know about this account.
    pub fn meta(&self) -> marathon_core::AccountMeta {
        marathon_core::AccountMeta {
            id: self.id.clone(),
            provider: self.provider.clone(),
            label: self.label.clone(),
            kind: self.kind,
            priority: self.priority,
            enabled: self.enabled,
        }
    }
}

/// An account to add.
#[derive(Clone, Debug)]
pub struct NewAccount {
    /// Provider name.
    pub provider: String,
    /// Wanted label; `None` means "the identity, else `<provider>-N`".
    pub label: Option<String>,
    /// OAuth or API key (should match the credential).
    pub kind: AccountKind,
    /// Lower is preferred.
    pub priority: i32,
    /// The provider's identity for this account, for dedupe.
    pub identity: Option<String>,
    /// The credential.
    pub credential: Credential,
    /// Provider extras.
    pub extras: Map,
    /// Where it came from, when the refresh-token family is shared.
    pub source: Option<String>,
}

impl NewAccount {
    /// Whether `stored` is this account already: same provider, and the
    /// same identity or the same login ([`Credential::same_login`]).
    /// [`Store::add`] updates such an account instead of adding one.
    pub fn is_same_account(&self, stored: &StoredAccount) -> bool {
        stored.provider == self.provider
            && (self.same_identity(stored) || stored.credential.same_login(&self.credential))
    }

    pub(crate) fn same_identity(&self, stored: &StoredAccount) -> bool {
        stored.identity.is_some() && stored.identity == self.identity
    }

    /// An API-key account with defaults for everything else.
    pub fn api_key(provider: impl Into<String>, label: Option<String>, key: Secret) -> Self {
        NewAccount {
            provider: provider.into(),
            label,
            kind: AccountKind::ApiKey,
            priority: 0,
            identity: None,
            credential: Credential::ApiKey { key },
            extras: Map::new(),
            source: None,
        }
    }
}

/// What [`Store::add`] did.
#[derive(Clone, Debug)]
pub enum AddResult {
    /// A new account was stored.
    Added(StoredAccount),
    /// The same account (same provider and identity, or the same API key or
    /// refresh token) was already stored: its credential was replaced, its
    /// label kept.
    Updated(StoredAccount),
}

impl AddResult {
    /// The stored account either way.
    pub fn account(&self) -> &StoredAccount {
        match self {
            AddResult::Added(a) | AddResult::Updated(a) => a,
        }
    }
}

/// Why a store operation failed. Messages name the file involved and say what
/// to do next; they never contain a secret.
#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    /// Reading or writing a file failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "write", "create directory", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The accounts file is not valid; it was left untouched.
    #[error(
        "{} is not a valid marathon accounts file ({detail}); it was left untouched. \
         Fix it by hand, or move it aside (mv {0} {0}.broken) and add your accounts again",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, without any value from the file.
        detail: String,
    },
    /// The accounts file was written by a newer marathon; it was left untouched.
    #[error(
        "{} was written by a newer marathon (schema version {found}; this build understands up to {supported}); \
         it was left untouched. Upgrade marathon to use it",
        path.display()
    )]
    NewerVersion {
        /// The file.
        path: PathBuf,
        /// The version found in the file.
        found: u64,
        /// The newest version this build understands.
        supported: u64,
    },
    /// Another account of the provider already has this label.
    #[error(
        "{provider} already has an account labelled {label:?}; choose another label, \
         or rename the existing one with `marathon auth rename {provider} {label} <new>`"
    )]
    LabelTaken {
        /// Provider.
        provider: String,
        /// The label.
        label: String,
    },
    /// No account has this id.
    #[error(
        "no account with id {0}; it may have been removed by another process (see `marathon auth list`)"
    )]
    NotFound(AccountId),
    /// The account data is not acceptable (empty label, bad provider name...).
    #[error("invalid account: {0}")]
    Invalid(String),
    /// A shared backend (Redis) could not be reached or refused a command.
    /// The message names the server without its password.
    #[error("the {backend} store is unavailable: {detail}")]
    Unavailable {
        /// Which backend, with its address (`redis at redis://host:6379/0`).
        backend: String,
        /// What failed, without any value stored there.
        detail: String,
    },
    /// This process's lock on the account expired and another process took
    /// it: the write was refused so it cannot overwrite a newer credential.
    #[error(
        "the lock on account {0} expired and another marathon holds it now; \
         the write was refused so it cannot overwrite a newer credential"
    )]
    Fenced(AccountId),
    /// A lock could not be taken in time.
    #[error(
        "timed out after {} waiting for the lock {}; another marathon process is holding it. \
         Retry, or stop the other process",
        marathon_core::fmt::HumanDuration(*waited), path.display()
    )]
    LockTimeout {
        /// The lock file (or a description of the in-memory lock).
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
}

/// A cross-process exclusive lock on one account, held until dropped.
pub struct AccountLock {
    _guard: Box<dyn std::any::Any + Send>,
}

impl AccountLock {
    fn new(guard: impl std::any::Any + Send) -> Self {
        AccountLock {
            _guard: Box::new(guard),
        }
    }

    /// A lock of another backend: `guard` releases it when dropped.
    pub fn from_guard(guard: impl std::any::Any + Send) -> Self {
        Self::new(guard)
    }
}

impl fmt::Debug for AccountLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountLock")
    }
}

/// Hot state: cooldowns and counters. Persisted lazily, may be lost on a
/// crash, never holds a secret.
#[derive(Default, Clone, Debug, Serialize, Deserialize)]
pub struct HotState {
    /// Per-account hot state.
    #[serde(default)]
    pub cooldowns: BTreeMap<AccountId, HotAccount>,
}

impl HotState {
    /// Folds `delta` (another process's or this one's news) into this state:
    /// a cooldown keeps the later end of the two (a shared cooldown is never
    /// shortened), and `delta`'s counters are increments that add up.
    /// Cooldowns over by `now` are dropped. Returns whether anything changed.
    pub fn merge(&mut self, delta: &HotState, now: UnixMillis) -> bool {
        let mut changed = false;
        for (id, news) in &delta.cooldowns {
            let entry = self.cooldowns.entry(id.clone()).or_default();
            if let Some(until) = news.cooling_until.filter(|u| *u > now)
                && entry.cooling_until.is_none_or(|cur| cur < until)
            {
                entry.cooling_until = Some(until);
                entry.reason = news.reason.clone();
                changed = true;
            }
            if news.successes > 0 || news.failures > 0 {
                entry.successes = entry.successes.saturating_add(news.successes);
                entry.failures = entry.failures.saturating_add(news.failures);
                changed = true;
            }
        }
        for h in self.cooldowns.values_mut() {
            if h.cooling_until.is_some_and(|u| u <= now) {
                h.cooling_until = None;
                h.reason = None;
                changed = true;
            }
        }
        changed
    }
}

/// Hot state of one account.
#[derive(Default, Clone, Debug, Serialize, Deserialize)]
pub struct HotAccount {
    /// Resting until this instant, if cooling down.
    #[serde(default)]
    pub cooling_until: Option<UnixMillis>,
    /// Why it is cooling (a short word such as `rate_limit_error`). A
    /// [`marathon_core::Reason`]: an edited file cannot smuggle text in.
    #[serde(default)]
    pub reason: Option<marathon_core::Reason>,
    /// Successful requests counted.
    #[serde(default)]
    pub successes: u64,
    /// Failed requests counted.
    #[serde(default)]
    pub failures: u64,
}

/// A place accounts live. Implementations are safe to share between threads;
/// [`FileStore`] is also safe to share between processes.
pub trait Store: Send + Sync {
    /// Every account, in stored order.
    fn list(&self) -> Result<Vec<StoredAccount>, StoreError>;
    /// One account by id.
    fn get(&self, id: &AccountId) -> Result<Option<StoredAccount>, StoreError>;
    /// One account by provider and label.
    fn find(&self, provider: &str, label: &str) -> Result<Option<StoredAccount>, StoreError>;
    /// Adds an account, or updates the existing one with the same provider and
    /// identity (or the same API key or refresh token, see
    /// [`NewAccount::is_same_account`]): its credential is replaced and its label
    /// kept. The label defaults to the identity, else `<provider>-N`; an explicit
    /// label that is taken is an error, a defaulted one gets a `-2` suffix.
    /// Durable when it returns.
    fn add(&self, account: NewAccount) -> Result<AddResult, StoreError>;
    /// Atomic read-modify-write of one account; `updated_at` is set by the
    /// store and the id cannot change. Durable when it returns.
    fn update(
        &self,
        id: &AccountId,
        f: &mut dyn FnMut(&mut StoredAccount),
    ) -> Result<StoredAccount, StoreError>;
    /// Removes one account.
    fn remove(&self, id: &AccountId) -> Result<(), StoreError>;
    /// Cross-process exclusive lock for one account (OAuth refresh). Blocks up
    /// to `wait`; held until the guard drops.
    fn lock_account(&self, id: &AccountId, wait: Duration) -> Result<AccountLock, StoreError>;
    /// Hot state (cooldowns, counters): persisted lazily, may be lost on crash,
    /// never holds secrets.
    fn load_hot(&self) -> Result<HotState, StoreError>;
    /// Saves hot state, replacing what was saved.
    fn save_hot(&self, hot: &HotState) -> Result<(), StoreError>;
    /// Claims the lease `what` (e.g. `usage-poll`) on one account until
    /// `until`, unless another holder's lease runs past `now` or another
    /// process is claiming it this instant: whether the caller got it. Never
    /// blocks. Shared between processes by [`FileStore`], so one poll per
    /// account and interval happens across every proxy on the machine. The
    /// default, for stores shared with no one, always grants it.
    fn try_lease(
        &self,
        id: &AccountId,
        what: &str,
        now: UnixMillis,
        until: UnixMillis,
    ) -> Result<bool, StoreError> {
        let _ = (id, what, now, until);
        Ok(true)
    }
    /// Moves the lease `what` on one account to `until`, held or not (a
    /// throttled endpoint asked everyone to wait that long).
    fn set_lease(&self, id: &AccountId, what: &str, until: UnixMillis) -> Result<(), StoreError> {
        let _ = (id, what, until);
        Ok(())
    }
    /// Folds this process's news into the shared hot state and returns the
    /// merged whole ([`HotState::merge`]: cooldowns never shortened, the
    /// counters in `delta` are increments). Processes sharing a store call
    /// this instead of [`Store::save_hot`], so none overwrites what another
    /// learned. The default is a read-merge-write; a shared backend makes
    /// it atomic.
    fn merge_hot(&self, delta: &HotState, now: UnixMillis) -> Result<HotState, StoreError> {
        let mut hot = self.load_hot()?;
        if hot.merge(delta, now) {
            self.save_hot(&hot)?;
        }
        Ok(hot)
    }
}
