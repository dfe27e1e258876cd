//! The in-memory backend: the file store's semantics without files, for tests
//! and for programs that bring their own persistence.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use marathon_core::{Clock, SystemClock};

use crate::doc;
use crate::{
    AccountId, AccountLock, AddResult, HotState, NewAccount, Store, StoreError, StoredAccount,
};

/// Accounts in memory. Per-account locks exclude other threads of this process.
pub struct MemoryStore {
    accounts: Mutex<Vec<StoredAccount>>,
    hot: Mutex<HotState>,
    locks: Arc<(Mutex<HashSet<AccountId>>, Condvar)>,
    leases: Mutex<std::collections::HashMap<(AccountId, String), marathon_core::UnixMillis>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store using the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store using `clock` for `created_at`/`updated_at`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        MemoryStore {
            accounts: Mutex::new(Vec::new()),
            hot: Mutex::new(HotState::default()),
            locks: Arc::new((Mutex::new(HashSet::new()), Condvar::new())),
            leases: Mutex::default(),
            clock,
        }
    }

    fn accounts(&self) -> MutexGuard<'_, Vec<StoredAccount>> {
        // A panic in a caller's update closure poisons the mutex, but the data
        // is only replaced after validation, so it is still consistent.
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct MemoryLockGuard {
    locks: Arc<(Mutex<HashSet<AccountId>>, Condvar)>,
    id: AccountId,
}

impl Drop for MemoryLockGuard {
    fn drop(&mut self) {
        let (set, cv) = &*self.locks;
        set.lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        cv.notify_all();
    }
}

impl Store for MemoryStore {
    fn list(&self) -> Result<Vec<StoredAccount>, StoreError> {
        Ok(self.accounts().clone())
    }

    fn get(&self, id: &AccountId) -> Result<Option<StoredAccount>, StoreError> {
        Ok(self.accounts().iter().find(|a| &a.id == id).cloned())
    }

    fn find(&self, provider: &str, label: &str) -> Result<Option<StoredAccount>, StoreError> {
        Ok(self
            .accounts()
            .iter()
            .find(|a| a.provider == provider && a.label == label)
            .cloned())
    }

    fn add(&self, account: NewAccount) -> Result<AddResult, StoreError> {
        doc::add(&mut self.accounts(), account, self.clock.now())
    }

    fn update(
        &self,
        id: &AccountId,
        f: &mut dyn FnMut(&mut StoredAccount),
    ) -> Result<StoredAccount, StoreError> {
        doc::update(&mut self.accounts(), id, f, self.clock.now())
    }

    fn remove(&self, id: &AccountId) -> Result<(), StoreError> {
        doc::remove(&mut self.accounts(), id)
    }

    fn lock_account(&self, id: &AccountId, wait: Duration) -> Result<AccountLock, StoreError> {
        let (set, cv) = &*self.locks;
        let start = Instant::now();
        let mut held = set.lock().unwrap_or_else(|p| p.into_inner());
        while held.contains(id) {
            let waited = start.elapsed();
            if waited >= wait {
                return Err(StoreError::LockTimeout {
                    path: format!("memory:{id}").into(),
                    waited,
                });
            }
            held = cv
                .wait_timeout(held, wait - waited)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        held.insert(id.clone());
        Ok(AccountLock::new(MemoryLockGuard {
            locks: Arc::clone(&self.locks),
            id: id.clone(),
        }))
    }

    fn load_hot(&self) -> Result<HotState, StoreError> {
        Ok(self.hot.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn save_hot(&self, hot: &HotState) -> Result<(), StoreError> {
        *self.hot.lock().unwrap_or_else(|p| p.into_inner()) = hot.clone();
        Ok(())
    }

    fn try_lease(
        &self,
        id: &AccountId,
        what: &str,
        now: marathon_core::UnixMillis,
        until: marathon_core::UnixMillis,
    ) -> Result<bool, StoreError> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let held = leases.entry((id.clone(), what.to_owned())).or_default();
        if *held > now {
            return Ok(false);
        }
        *held = until;
        Ok(true)
    }

    fn set_lease(
        &self,
        id: &AccountId,
        what: &str,
        until: marathon_core::UnixMillis,
    ) -> Result<(), StoreError> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.insert((id.clone(), what.to_owned()), until);
        Ok(())
    }
}
