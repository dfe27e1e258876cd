//! For other backends (such as `marathon-redis`): the accounts document the
//! file store keeps in `accounts.json`, with the rules every backend shares
//! (dedupe by identity or login, label defaults and uniqueness, validation).
//! A backend keeps the document's bytes wherever it likes and gets the same
//! semantics as [`crate::FileStore`] and [`crate::MemoryStore`].

use std::path::Path;

use crate::doc::{self, Document};
use crate::{AccountId, AddResult, NewAccount, StoreError, StoredAccount, UnixMillis};

/// The accounts document: `{"version":1,"accounts":[...]}` plus any
/// top-level fields another marathon added, kept as they were.
#[derive(Debug, Default)]
pub struct AccountsDoc(Document);

impl AccountsDoc {
    /// No accounts.
    pub fn empty() -> Self {
        AccountsDoc(Document::empty())
    }

    /// Parses the document's bytes (migrating an older version). `source`
    /// names where they came from in errors (a path, or a Redis key); no
    /// error quotes the bytes.
    pub fn parse(bytes: &[u8], source: &Path) -> Result<Self, StoreError> {
        Ok(AccountsDoc(doc::parse(bytes, source)?.doc))
    }

    /// The bytes to store.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }

    /// The accounts, in stored order.
    pub fn accounts(&self) -> &[StoredAccount] {
        &self.0.accounts
    }

    /// The accounts, taken out.
    pub fn into_accounts(self) -> Vec<StoredAccount> {
        self.0.accounts
    }

    /// [`crate::Store::add`]'s rules.
    pub fn add(&mut self, new: NewAccount, now: UnixMillis) -> Result<AddResult, StoreError> {
        doc::add(&mut self.0.accounts, new, now)
    }

    /// [`crate::Store::update`]'s rules.
    pub fn update(
        &mut self,
        id: &AccountId,
        f: &mut dyn FnMut(&mut StoredAccount),
        now: UnixMillis,
    ) -> Result<StoredAccount, StoreError> {
        doc::update(&mut self.0.accounts, id, f, now)
    }

    /// [`crate::Store::remove`]'s rules.
    pub fn remove(&mut self, id: &AccountId) -> Result<(), StoreError> {
        doc::remove(&mut self.0.accounts, id)
    }

    pub(crate) fn from_document(doc: Document) -> Self {
        AccountsDoc(doc)
    }

    pub(crate) fn into_document(self) -> Document {
        self.0
    }

    /// Puts `account` in as it is (id and timestamps kept), replacing the
    /// account with its id: `marathon store copy` moving accounts between
    /// backends.
    pub fn put(&mut self, account: StoredAccount) {
        match self.0.accounts.iter_mut().find(|a| a.id == account.id) {
            Some(slot) => *slot = account,
            None => self.0.accounts.push(account),
        }
    }
}
