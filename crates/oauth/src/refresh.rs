//! Safe token refresh, modelled on codex's auth manager.
//!
//! Refresh tokens are single-use at most providers: presenting one twice
//! revokes the whole grant. So, per account:
//! - in-process single flight: one async mutex per account; whoever waited
//!   re-checks the cache first and reuses the winner's token;
//! - cross-process: the store's per-account lock (a file lock for
//!   [`marathon_store::FileStore`]), taken on a blocking thread;
//! - after taking the lock, re-read the stored credential and skip the
//!   network call if another process already refreshed;
//! - the rotated refresh token is written to the store (durably) before the
//!   new access token is handed out;
//! - a response without a refresh token keeps the old one (Google);
//! - permanent failures mark the account `needs_login`; transient ones are
//!   retried with backoff a bounded number of times.
//!
//! The hot path ([`Refresher::access_token`] with a fresh token) touches only
//! an in-memory cache: no file read per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marathon_core::{AccountId, Clock, Reason, Secret, UnixMillis};
use marathon_store::{AccountState, Credential, Store, StoredAccount};

use crate::http::HttpClient;
use crate::preset::{OAuthPreset, RefreshKind};
use crate::token::{ErrorClass, TokenError, copilot_exchange, refresh_request, send_token_request};

/// Tuning for [`Refresher`].
#[derive(Clone, Debug)]
pub struct RefresherConfig {
    /// Refresh when the access token expires within this long.
    pub refresh_lead: Duration,
    /// How long to wait for another process's refresh lock.
    pub lock_wait: Duration,
    /// Network attempts per refresh on transient errors (at least 1).
    pub max_attempts: u32,
    /// First backoff between attempts; doubles each time.
    pub backoff: Duration,
}

impl Default for RefresherConfig {
    fn default() -> Self {
        RefresherConfig {
            refresh_lead: marathon_core::defaults::REFRESH_LEAD,
            lock_wait: Duration::from_secs(30),
            max_attempts: 3,
            backoff: Duration::from_millis(250),
        }
    }
}

/// Why no usable access token could be produced. Never holds a secret.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RefreshError {
    /// No such account in the store.
    #[error("no account with id {0}")]
    UnknownAccount(AccountId),
    /// No preset registered for the account's provider.
    #[error(
        "no OAuth preset is configured for provider {provider}; cannot refresh account {account}"
    )]
    NoPreset {
        /// Account.
        account: AccountId,
        /// Provider.
        provider: String,
    },
    /// The login is dead (revoked, reused, expired refresh token); the account
    /// was marked `needs_login`. The caller emits the `needs_login` event.
    #[error("account {account} must log in again ({reason}); run `marathon auth login`")]
    Permanent {
        /// Account.
        account: AccountId,
        /// Why: an error code or status (`invalid_grant`, `http_401`), a
        /// safe word, never the token endpoint's free text.
        reason: Reason,
    },
    /// The refresh failed for now (5xx, network); try again later.
    #[error("refreshing account {account} failed for now ({reason})")]
    Transient {
        /// Account.
        account: AccountId,
        /// What went wrong: `http_503`, `network`, `timeout`, an error code.
        reason: Reason,
    },
    /// The token endpoint refused for a reason a retry will not fix, but that
    /// does not prove the login dead (e.g. 400 invalid_request, 403).
    #[error("the token endpoint refused to refresh account {account} ({reason})")]
    Rejected {
        /// Account.
        account: AccountId,
        /// What was refused: an error code or `http_<status>`.
        reason: Reason,
    },
    /// The store failed (lock timeout, I/O).
    #[error("credential store error for account {account}: {reason}")]
    Store {
        /// Account.
        account: AccountId,
        /// The store's message.
        reason: String,
    },
}

impl RefreshError {
    /// Whether the account needs a new login.
    pub fn is_permanent(&self) -> bool {
        matches!(self, RefreshError::Permanent { .. })
    }

    /// Why, in one word for events and the status view (no account id:
    /// those name the account by its label).
    pub fn reason(&self) -> Reason {
        match self {
            RefreshError::UnknownAccount(_) => Reason::fixed("unknown_account"),
            RefreshError::NoPreset { .. } => Reason::fixed("no_oauth_preset"),
            RefreshError::Permanent { reason, .. }
            | RefreshError::Transient { reason, .. }
            | RefreshError::Rejected { reason, .. } => reason.clone(),
            RefreshError::Store { .. } => Reason::fixed("store_error"),
        }
    }
}

/// Counters since the refresher was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefreshStats {
    /// Successful network refreshes.
    pub refreshes: u64,
    /// Network refresh requests sent (including failed attempts).
    pub attempts: u64,
    /// Times the lock holder found the stored token already renewed by another process.
    pub adopted_from_store: u64,
    /// Refreshes that ended in a permanent failure.
    pub permanent_failures: u64,
    /// Refreshes that ended in a transient failure (after retries).
    pub transient_failures: u64,
}

#[derive(Default)]
struct Counters {
    refreshes: AtomicU64,
    attempts: AtomicU64,
    adopted: AtomicU64,
    permanent: AtomicU64,
    transient: AtomicU64,
}

#[derive(Clone)]
struct Cached {
    access: Secret,
    expires_at: Option<UnixMillis>,
}

/// A refresh that went through, for whoever counts them (the proxy's
/// `refreshed` event and `marathon_refreshes_total`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshNotice {
    /// The account.
    pub account: AccountId,
    /// Its provider.
    pub provider: String,
    /// Its label (what logs and events name it by).
    pub label: String,
    /// `true` for a refresh ahead of expiry; `false` when an upstream's 401
    /// forced it (the proxy announces those itself).
    pub routine: bool,
}

/// Called after every successful network refresh.
pub type RefreshListener = Arc<dyn Fn(&RefreshNotice) + Send + Sync>;

/// One account's refresh slot. The mutex is the single flight; it holds the
/// last attempt's error so tasks that queued behind a failing refresh share
/// that error instead of each hammering the token endpoint.
#[derive(Default)]
struct Flight {
    /// Completed refresh attempts (read before queueing, compared after).
    generation: AtomicU64,
    last_error: tokio::sync::Mutex<Option<RefreshError>>,
}

/// Hands out valid access tokens, refreshing them safely. One per process
/// (share it with `Arc`).
pub struct Refresher {
    store: Arc<dyn Store>,
    http: Arc<dyn HttpClient>,
    clock: Arc<dyn Clock>,
    config: RefresherConfig,
    presets: Mutex<HashMap<String, OAuthPreset>>,
    flights: Mutex<HashMap<AccountId, Arc<Flight>>>,
    cache: Mutex<HashMap<AccountId, Cached>>,
    counters: Counters,
    listener: Mutex<Option<RefreshListener>>,
    /// Accounts whose refreshes leave through a client of their own (their
    /// egress proxy), by provider and label.
    account_http: Mutex<HashMap<(String, String), Arc<dyn HttpClient>>>,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these short, non-awaiting critical sections
    // leaves the map consistent; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Refresher {
    /// A refresher over a store and an HTTP client. Register each provider's
    /// preset with [`Refresher::with_preset`] / [`Refresher::set_preset`].
    pub fn new(
        store: Arc<dyn Store>,
        http: Arc<dyn HttpClient>,
        clock: Arc<dyn Clock>,
        config: RefresherConfig,
    ) -> Self {
        Refresher {
            store,
            http,
            clock,
            config,
            presets: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            listener: Mutex::new(None),
            account_http: Mutex::new(HashMap::new()),
        }
    }

    /// Registers the preset used for accounts of `provider`.
    pub fn with_preset(self, provider: impl Into<String>, preset: OAuthPreset) -> Self {
        self.set_preset(provider, preset);
        self
    }

    /// Registers (or replaces) the preset used for accounts of `provider`.
    pub fn set_preset(&self, provider: impl Into<String>, preset: OAuthPreset) {
        lock(&self.presets).insert(provider.into(), preset);
    }

    /// Sends the refreshes of `provider`'s account labelled `label` through
    /// `http` (e.g. a client on that account's own egress proxy).
    pub fn set_account_client(
        &self,
        provider: impl Into<String>,
        label: impl Into<String>,
        http: Arc<dyn HttpClient>,
    ) {
        lock(&self.account_http).insert((provider.into(), label.into()), http);
    }

    /// Calls `listener` after every successful network refresh, routine or
    /// forced (replacing an earlier listener).
    pub fn on_refresh(&self, listener: RefreshListener) {
        *lock(&self.listener) = Some(listener);
    }

    /// Counters.
    pub fn stats(&self) -> RefreshStats {
        let c = &self.counters;
        RefreshStats {
            refreshes: c.refreshes.load(Ordering::SeqCst),
            attempts: c.attempts.load(Ordering::SeqCst),
            adopted_from_store: c.adopted.load(Ordering::SeqCst),
            permanent_failures: c.permanent.load(Ordering::SeqCst),
            transient_failures: c.transient.load(Ordering::SeqCst),
        }
    }

    /// Forgets the cached token of an account (e.g. after `marathon auth login`
    /// replaced its credential); the next call reads the store.
    pub fn invalidate(&self, id: &AccountId) {
        lock(&self.cache).remove(id);
    }

    fn is_fresh(&self, expires_at: Option<UnixMillis>) -> bool {
        match expires_at {
            // Unknown expiry: use it until the upstream says 401 (force_refresh).
            None => true,
            Some(exp) => self.clock.now().plus(self.config.refresh_lead) < exp,
        }
    }

    /// The cached token if it has not expired yet (ignoring the refresh
    /// lead) and is not the one the upstream rejected.
    fn still_valid(&self, id: &AccountId, rejected: Option<&Secret>) -> Option<Secret> {
        let c = self.cached(id)?;
        let now = self.clock.now();
        let unexpired = c.expires_at.is_none_or(|exp| now < exp);
        let accepted = rejected.is_none_or(|r| !c.access.same_as(r));
        (unexpired && accepted).then_some(c.access)
    }

    fn cached(&self, id: &AccountId) -> Option<Cached> {
        lock(&self.cache).get(id).cloned()
    }

    /// A valid access token for the account, refreshing it first when it
    /// expires within the refresh lead. For an API-key account, the key.
    pub async fn access_token(&self, id: &AccountId) -> Result<Secret, RefreshError> {
        if let Some(c) = self.cached(id)
            && self.is_fresh(c.expires_at)
        {
            return Ok(c.access);
        }
        self.slow_path(id, None).await
    }

    /// The upstream rejected `rejected` (401): get a new token. Skips the
    /// network call when the stored token already differs from the rejected
    /// one (someone refreshed meanwhile).
    pub async fn force_refresh(
        &self,
        id: &AccountId,
        rejected: &Secret,
    ) -> Result<Secret, RefreshError> {
        if let Some(c) = self.cached(id)
            && !c.access.same_as(rejected)
            && self.is_fresh(c.expires_at)
        {
            return Ok(c.access);
        }
        self.slow_path(id, Some(rejected)).await
    }

    fn flight(&self, id: &AccountId) -> Arc<Flight> {
        lock(&self.flights).entry(id.clone()).or_default().clone()
    }

    async fn slow_path(
        &self,
        id: &AccountId,
        rejected: Option<&Secret>,
    ) -> Result<Secret, RefreshError> {
        let flight = self.flight(id);
        let seen = flight.generation.load(Ordering::SeqCst);
        let mut last_error = flight.last_error.lock().await;
        // Someone refreshed while we queued: reuse their token.
        if let Some(c) = self.cached(id) {
            let usable = match rejected {
                None => self.is_fresh(c.expires_at),
                Some(r) => !c.access.same_as(r) && self.is_fresh(c.expires_at),
            };
            if usable {
                return Ok(c.access);
            }
        }
        // Someone's refresh failed while we queued: share the failure.
        if flight.generation.load(Ordering::SeqCst) != seen
            && let Some(err) = last_error.as_ref()
        {
            return Err(err.clone());
        }
        let mut result = self.refresh_locked(id, rejected).await;
        // The store (its lock) is unreachable: a refresh without the lock
        // could spend a single-use refresh token another instance is
        // spending too, so none runs; the current token serves until it
        // really expires (the refresh lead is only a head start).
        if let Err(RefreshError::Store { reason, .. }) = &result
            && let Some(token) = self.still_valid(id, rejected)
        {
            tracing::warn!(account = %id, error = %reason, "cannot refresh without the store's lock; using the current access token until it expires");
            result = Ok(token);
        }
        *last_error = result.as_ref().err().cloned();
        flight.generation.fetch_add(1, Ordering::SeqCst);
        result
    }

    async fn blocking<T: Send + 'static>(
        &self,
        id: &AccountId,
        f: impl FnOnce(&dyn Store) -> Result<T, marathon_store::StoreError> + Send + 'static,
    ) -> Result<T, RefreshError> {
        let store = self.store.clone();
        let store_err = |reason: String| RefreshError::Store {
            account: id.clone(),
            reason,
        };
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| store_err(format!("store task failed: {e}")))?
            .map_err(|e| store_err(e.to_string()))
    }

    async fn refresh_locked(
        &self,
        id: &AccountId,
        rejected: Option<&Secret>,
    ) -> Result<Secret, RefreshError> {
        let wait = self.config.lock_wait;
        let lock_id = id.clone();
        let _guard = self
            .blocking(id, move |s| s.lock_account(&lock_id, wait))
            .await?;
        let get_id = id.clone();
        let account = self
            .blocking(id, move |s| s.get(&get_id))
            .await?
            .ok_or_else(|| RefreshError::UnknownAccount(id.clone()))?;
        let (access, refresh, expires_at) = match &account.credential {
            Credential::ApiKey { key } => return Ok(key.clone()),
            Credential::Oauth {
                access,
                refresh,
                expires_at,
                ..
            } => (access.clone(), refresh.clone(), *expires_at),
        };
        if account.state == AccountState::NeedsLogin {
            return Err(RefreshError::Permanent {
                account: id.clone(),
                reason: Reason::fixed("marked needs_login"),
            });
        }
        let previously_cached = self.cached(id);
        let stored_is_new = match rejected {
            Some(r) => !access.same_as(r),
            None => previously_cached
                .as_ref()
                .is_none_or(|c| !c.access.same_as(&access)),
        };
        if self.is_fresh(expires_at) && (rejected.is_none() || stored_is_new) {
            if previously_cached.is_some() && stored_is_new {
                self.counters.adopted.fetch_add(1, Ordering::SeqCst);
            }
            self.remember(id, &access, expires_at);
            return Ok(access);
        }
        let Some(refresh) = refresh else {
            return Err(self
                .mark_needs_login(id, Reason::fixed("no refresh token stored"))
                .await);
        };
        let preset = lock(&self.presets).get(&account.provider).cloned();
        let Some(preset) = preset else {
            return Err(RefreshError::NoPreset {
                account: id.clone(),
                provider: account.provider.clone(),
            });
        };
        let http = lock(&self.account_http)
            .get(&(account.provider.clone(), account.label.clone()))
            .cloned()
            .unwrap_or_else(|| self.http.clone());
        match self.refresh_network(http.as_ref(), &preset, &refresh).await {
            Ok(renewed) => {
                self.store_renewed(id, &account, renewed, rejected.is_none())
                    .await
            }
            Err(err) => {
                let reason = err.reason();
                if err.class() != ErrorClass::Permanent {
                    // The details (the URL, the network error) for the log;
                    // the reason alone goes on.
                    tracing::warn!(account = %id, error = %err, "token refresh failed");
                }
                match err.class() {
                    ErrorClass::Permanent => Err(self.mark_needs_login(id, reason).await),
                    ErrorClass::Transient => {
                        self.counters.transient.fetch_add(1, Ordering::SeqCst);
                        Err(RefreshError::Transient {
                            account: id.clone(),
                            reason,
                        })
                    }
                    ErrorClass::Rejected => Err(RefreshError::Rejected {
                        account: id.clone(),
                        reason,
                    }),
                }
            }
        }
    }

    async fn refresh_network(
        &self,
        http: &dyn HttpClient,
        preset: &OAuthPreset,
        refresh: &Secret,
    ) -> Result<Renewed, TokenError> {
        let attempts = self.config.max_attempts.max(1);
        let mut backoff = self.config.backoff;
        let mut attempt = 1;
        loop {
            self.counters.attempts.fetch_add(1, Ordering::SeqCst);
            let result = match &preset.refresh {
                RefreshKind::RefreshToken { .. } => {
                    send_token_request(http, refresh_request(preset, refresh))
                        .await
                        .map(|t| Renewed {
                            access: t.access,
                            refresh: t.refresh,
                            expires_at: t
                                .expires_in
                                .map(|s| self.clock.now().plus(Duration::from_secs(s))),
                            id_token: t.id_token,
                            scopes: t.scopes,
                        })
                }
                RefreshKind::CopilotExchange { url } => {
                    copilot_exchange(http, url, refresh).await.map(|c| Renewed {
                        access: c.token,
                        refresh: None,
                        expires_at: c.expires_at,
                        id_token: None,
                        scopes: Vec::new(),
                    })
                }
            };
            match result {
                Err(e) if e.class() == ErrorClass::Transient && attempt < attempts => {
                    tracing::warn!(preset = %preset.name, attempt, error = %e, "token refresh failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn store_renewed(
        &self,
        id: &AccountId,
        before: &StoredAccount,
        renewed: Renewed,
        routine: bool,
    ) -> Result<Secret, RefreshError> {
        let Credential::Oauth {
            refresh: old_refresh,
            id_token: old_id_token,
            scopes: old_scopes,
            ..
        } = &before.credential
        else {
            return Err(RefreshError::UnknownAccount(id.clone()));
        };
        let credential = Credential::Oauth {
            access: renewed.access.clone(),
            // No new refresh token (Google, Copilot): the old one stays valid.
            refresh: renewed.refresh.or_else(|| old_refresh.clone()),
            expires_at: renewed.expires_at,
            id_token: renewed.id_token.or_else(|| old_id_token.clone()),
            scopes: if renewed.scopes.is_empty() {
                old_scopes.clone()
            } else {
                renewed.scopes
            },
        };
        let expires_at = renewed.expires_at;
        let update_id = id.clone();
        // Durable before the new access token is used: losing a rotated
        // refresh token loses the login.
        self.blocking(id, move |s| {
            s.update(&update_id, &mut |a| {
                a.credential = credential.clone();
                a.state = AccountState::Active;
            })
        })
        .await?;
        self.counters.refreshes.fetch_add(1, Ordering::SeqCst);
        self.remember(id, &renewed.access, expires_at);
        tracing::info!(
            account = %before.label,
            provider = %before.provider,
            routine,
            "access token refreshed"
        );
        let listener = lock(&self.listener).clone();
        if let Some(listener) = listener {
            listener(&RefreshNotice {
                account: id.clone(),
                provider: before.provider.clone(),
                label: before.label.clone(),
                routine,
            });
        }
        Ok(renewed.access)
    }

    async fn mark_needs_login(&self, id: &AccountId, reason: Reason) -> RefreshError {
        self.counters.permanent.fetch_add(1, Ordering::SeqCst);
        lock(&self.cache).remove(id);
        let update_id = id.clone();
        if let Err(e) = self
            .blocking(id, move |s| {
                s.update(&update_id, &mut |a| a.state = AccountState::NeedsLogin)
            })
            .await
        {
            tracing::error!(account = %id, error = %e, "could not mark the account needs_login");
        }
        tracing::warn!(account = %id, reason = %reason, "refresh failed permanently; account needs login");
        RefreshError::Permanent {
            account: id.clone(),
            reason,
        }
    }

    fn remember(&self, id: &AccountId, access: &Secret, expires_at: Option<UnixMillis>) {
        lock(&self.cache).insert(
            id.clone(),
            Cached {
                access: access.clone(),
                expires_at,
            },
        );
    }
}

struct Renewed {
    access: Secret,
    refresh: Option<Secret>,
    expires_at: Option<UnixMillis>,
    id_token: Option<Secret>,
    scopes: Vec<String>,
}
