//! The default backend: one JSON file, shared safely between processes.
//!
//! Layout of the data directory (0700):
//! - `accounts.json` (0600): `{"version":1,"accounts":[...]}`, plus any
//!   top-level fields a newer or older marathon added, kept as they were;
//! - `accounts.lock` (0600): held for every read-modify-write, so concurrent
//!   processes never lose an update. The file is re-read under the lock before
//!   each change: no change is ever made to a stale in-memory copy;
//! - `accounts.json.bak-v<N>`: the file as it was before a migration from
//!   version N;
//! - `locks/<id>.lock` (0600): per-account locks (OAuth refresh);
//! - `hot.json` (0600): cooldowns and counters, written lazily, no secrets;
//!   `hot.lock` (0600) held while a proxy merges its news into it, so
//!   several proxies on one store merge instead of overwriting each other.
//!
//! Reads do not take the lock: writes replace the file by rename, so a reader
//! always sees a whole file, old or new.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use marathon_core::{Clock, SystemClock, UnixMillis};

use crate::doc::{self, Document};
use crate::lock::{io_err, lock_exclusive, temp_prefix, write_atomic};
use crate::{
    AccountId, AccountLock, AddResult, HotState, NewAccount, Store, StoreError, StoredAccount,
};

const ACCOUNTS: &str = "accounts.json";

/// How long a writer waits for another process to finish its write. Writes
/// take milliseconds; this only trips if another process is stuck.
const WRITE_LOCK_WAIT: Duration = Duration::from_secs(30);

/// The file store. Cheap to keep open; holds no file handles between calls.
pub struct FileStore {
    dir: PathBuf,
    path: PathBuf,
    lock_path: PathBuf,
    hot_path: PathBuf,
    locks_dir: PathBuf,
    clock: Arc<dyn Clock>,
    tightened: Vec<PermissionFix>,
}

/// A store file or directory that other users could read or write, and was
/// made private when the store was opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermissionFix {
    /// The file or directory.
    pub path: PathBuf,
    /// Its mode before (permission bits only).
    pub was: u32,
    /// Its mode now (0600 for a file, 0700 for a directory).
    pub now: u32,
    /// Whether it holds credentials (the accounts file or a backup of it):
    /// anyone who could read it may have copied them.
    pub holds_secrets: bool,
}

impl std::fmt::Display for PermissionFix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} was open to other users (mode {:04o}); it is now {:04o}",
            self.path.display(),
            self.was,
            self.now
        )?;
        if self.holds_secrets {
            f.write_str(
                ". It holds credentials: if another user could have read it, \
                 replace them (new API keys, log in again)",
            )?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FileStore {
    /// Whether `dir` holds an accounts file (without creating anything).
    pub fn exists(dir: &Path) -> bool {
        dir.join(ACCOUNTS).is_file()
    }

    /// Opens (creating if needed) the store in `dir`. Refuses a corrupt file or
    /// one from a newer marathon; migrates an older one after keeping a backup.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        Self::open_with_clock(dir, Arc::new(SystemClock))
    }

    /// [`FileStore::open`] with the clock used for `created_at`/`updated_at`.
    pub fn open_with_clock(dir: &Path, clock: Arc<dyn Clock>) -> Result<FileStore, StoreError> {
        create_private_dir(dir)?;
        let mut store = FileStore {
            dir: dir.to_path_buf(),
            path: dir.join(ACCOUNTS),
            lock_path: dir.join("accounts.lock"),
            hot_path: dir.join("hot.json"),
            locks_dir: dir.join("locks"),
            clock,
            tightened: Vec::new(),
        };
        store.tightened = store.make_private()?;
        for fix in &store.tightened {
            tracing::warn!(path = %fix.path.display(), "{fix}");
        }
        store.prepare()?;
        Ok(store)
    }

    /// Files and directories whose permissions [`FileStore::open`] tightened
    /// (each is also logged as a warning), for a front end to show.
    pub fn permission_fixes(&self) -> &[PermissionFix] {
        &self.tightened
    }

    /// Makes the data directory 0700 and its files 0600 where another user
    /// could read or write them (an older marathon, a copy with `cp`, a
    /// umask of 022 on a file made by hand). New files are created private;
    /// this repairs what is already there.
    fn make_private(&self) -> Result<Vec<PermissionFix>, StoreError> {
        let mut fixes = Vec::new();
        let mut check = |path: &Path, private: u32, holds_secrets: bool| {
            let meta = match std::fs::metadata(path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_err("inspect", path)(e)),
            };
            let was = meta.permissions().mode() & 0o7777;
            if was & 0o077 == 0 {
                return Ok(());
            }
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(private))
                .map_err(io_err("make private", path))?;
            fixes.push(PermissionFix {
                path: path.to_path_buf(),
                was,
                now: private,
                holds_secrets,
            });
            Ok(())
        };
        check(&self.dir, 0o700, false)?;
        check(&self.locks_dir, 0o700, false)?;
        check(&self.path, 0o600, true)?;
        check(&self.lock_path, 0o600, false)?;
        check(&self.hot_path, 0o600, false)?;
        let entries = std::fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))?;
        let backup_prefix = format!("{ACCOUNTS}.bak-");
        let mut backups: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&backup_prefix))
            .map(|e| e.path())
            .collect();
        backups.sort();
        for backup in backups {
            check(&backup, 0o600, true)?;
        }
        Ok(fixes)
    }

    /// The accounts file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Under the lock: removes temporary files left by a writer that died
    /// mid-write, checks the file is readable, migrates an old version.
    fn prepare(&self) -> Result<(), StoreError> {
        let _lock = lock_exclusive(&self.lock_path, WRITE_LOCK_WAIT)?;
        self.remove_stale_temps()?;
        let Some(bytes) = self.read_bytes()? else {
            return Ok(());
        };
        let parsed = doc::parse(&bytes, &self.path)?;
        if let Some(old) = parsed.migrated_from {
            let backup = self.free_backup_path(old);
            write_atomic(&backup, &bytes, true)?;
            write_atomic(&self.path, &parsed.doc.to_bytes(), true)?;
        }
        Ok(())
    }

    fn free_backup_path(&self, old: u64) -> PathBuf {
        let base = self.dir.join(format!("{ACCOUNTS}.bak-v{old}"));
        if !base.exists() {
            return base;
        }
        (2..)
            .map(|n| self.dir.join(format!("{ACCOUNTS}.bak-v{old}.{n}")))
            .find(|p| !p.exists())
            .unwrap_or(base)
    }

    fn remove_stale_temps(&self) -> Result<(), StoreError> {
        let accounts_prefix = temp_prefix(&self.path);
        let hot_prefix = temp_prefix(&self.hot_path);
        let entries = std::fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))?;
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            // Temporaries of the accounts file and its backups are only written
            // with the write lock held, which we hold: none belongs to a live
            // writer. Hot-state writes take no lock, so only old ones go.
            let stale =
                if name.starts_with(&accounts_prefix[..accounts_prefix.len() - ".tmp-".len()]) {
                    name.contains(".tmp-")
                } else if name.starts_with(&hot_prefix) {
                    entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > Duration::from_secs(60))
                } else {
                    false
                };
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    fn read_bytes(&self) -> Result<Option<Vec<u8>>, StoreError> {
        match std::fs::read(&self.path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &self.path)(e)),
        }
    }

    fn read_doc(&self) -> Result<Document, StoreError> {
        match self.read_bytes()? {
            Some(bytes) => Ok(doc::parse(&bytes, &self.path)?.doc),
            None => Ok(Document::empty()),
        }
    }

    /// One read-modify-write under the lock. The file is written only when `f`
    /// succeeds; a file that cannot be parsed is never written.
    fn modify<T>(
        &self,
        f: impl FnOnce(&mut Document) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _lock = lock_exclusive(&self.lock_path, WRITE_LOCK_WAIT)?;
        let mut doc = self.read_doc()?;
        let out = f(&mut doc)?;
        write_atomic(&self.path, &doc.to_bytes(), true)?;
        Ok(out)
    }

    /// Writes `accounts` as they are (ids and timestamps kept), replacing
    /// any with the same id: `marathon store copy` from another backend.
    pub fn put_all(&self, accounts: Vec<StoredAccount>) -> Result<(), StoreError> {
        self.modify(|d| {
            let mut doc = crate::backend::AccountsDoc::from_document(std::mem::take(d));
            for a in accounts {
                doc.put(a);
            }
            *d = doc.into_document();
            Ok(())
        })
    }

    fn account_lock_path(&self, id: &AccountId) -> Result<PathBuf, StoreError> {
        let safe = !id.0.is_empty()
            && id.0.len() <= 128
            && id
                .0
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !safe {
            return Err(StoreError::Invalid(format!(
                "account id {:?} cannot name a lock file (only letters, digits, '_' and '-')",
                id.0
            )));
        }
        Ok(self.locks_dir.join(format!("{}.lock", id.0)))
    }

    /// `locks/<id>.<what>.lease`: the lease's end, in ms since the epoch.
    fn lease_path(&self, id: &AccountId, what: &str) -> Result<PathBuf, StoreError> {
        let lock = self.account_lock_path(id)?;
        if what.is_empty() || !what.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            return Err(StoreError::Invalid(format!("lease name {what:?}")));
        }
        Ok(lock.with_extension(format!("{what}.lease")))
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create directory", dir))
}

impl Store for FileStore {
    fn list(&self) -> Result<Vec<StoredAccount>, StoreError> {
        Ok(self.read_doc()?.accounts)
    }

    fn get(&self, id: &AccountId) -> Result<Option<StoredAccount>, StoreError> {
        Ok(self.read_doc()?.accounts.into_iter().find(|a| &a.id == id))
    }

    fn find(&self, provider: &str, label: &str) -> Result<Option<StoredAccount>, StoreError> {
        Ok(self
            .read_doc()?
            .accounts
            .into_iter()
            .find(|a| a.provider == provider && a.label == label))
    }

    fn add(&self, account: NewAccount) -> Result<AddResult, StoreError> {
        let now = self.clock.now();
        self.modify(|d| doc::add(&mut d.accounts, account, now))
    }

    fn update(
        &self,
        id: &AccountId,
        f: &mut dyn FnMut(&mut StoredAccount),
    ) -> Result<StoredAccount, StoreError> {
        let now = self.clock.now();
        self.modify(|d| doc::update(&mut d.accounts, id, f, now))
    }

    fn remove(&self, id: &AccountId) -> Result<(), StoreError> {
        self.modify(|d| doc::remove(&mut d.accounts, id))
    }

    fn lock_account(&self, id: &AccountId, wait: Duration) -> Result<AccountLock, StoreError> {
        let path = self.account_lock_path(id)?;
        create_private_dir(&self.locks_dir)?;
        Ok(AccountLock::new(lock_exclusive(&path, wait)?))
    }

    fn try_lease(
        &self,
        id: &AccountId,
        what: &str,
        now: UnixMillis,
        until: UnixMillis,
    ) -> Result<bool, StoreError> {
        let path = self.lease_path(id, what)?;
        create_private_dir(&self.locks_dir)?;
        crate::lock::try_lease(&path, now, until, false)
    }

    fn set_lease(&self, id: &AccountId, what: &str, until: UnixMillis) -> Result<(), StoreError> {
        let path = self.lease_path(id, what)?;
        create_private_dir(&self.locks_dir)?;
        crate::lock::try_lease(&path, UnixMillis(0), until, true).map(|_| ())
    }

    fn load_hot(&self) -> Result<HotState, StoreError> {
        match std::fs::read(&self.hot_path) {
            // Hot state may be lost by design; an unreadable file (a crash
            // mid-write without fsync) starts over rather than blocking startup.
            Ok(bytes) => Ok(parse_hot(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HotState::default()),
            Err(e) => Err(io_err("read", &self.hot_path)(e)),
        }
    }

    fn save_hot(&self, hot: &HotState) -> Result<(), StoreError> {
        write_atomic(&self.hot_path, &hot_bytes(hot), false)
    }

    /// Under `hot.lock`, so two proxies on one store merge instead of one
    /// overwriting what the other learned (issue 12). Writes only when the
    /// merge changed something: a proxy with no news only reads.
    fn merge_hot(&self, delta: &HotState, now: UnixMillis) -> Result<HotState, StoreError> {
        let _lock = lock_exclusive(&self.dir.join("hot.lock"), WRITE_LOCK_WAIT)?;
        let mut hot = self.load_hot()?;
        if hot.merge(delta, now) {
            self.save_hot(&hot)?;
        }
        Ok(hot)
    }
}

/// `hot.json` bytes → hot state. Hot state may be lost by design, so a file
/// that does not parse is an empty state, not an error.
pub(crate) fn parse_hot(bytes: &[u8]) -> HotState {
    serde_json::from_slice(bytes).unwrap_or_default()
}

/// Hot state → `hot.json` bytes.
pub(crate) fn hot_bytes(hot: &HotState) -> Vec<u8> {
    // Serializing plain data (strings, numbers, maps) cannot fail.
    serde_json::to_vec(hot).unwrap_or_default()
}
