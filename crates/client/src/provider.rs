//! One provider at run time: its pool, budget and credentials, and what the
//! rotation machine shares with every request of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

use http::{HeaderName, HeaderValue};
use marathon_config::ProviderConfig;
use marathon_core::accounting::TokenLedger;
use marathon_core::budget::RetryBudget;
use marathon_core::decision::{AttemptEntry, AttemptTrace};
use marathon_core::events::{Event, EventKind};
use marathon_core::pool::Pool;
use marathon_core::rotation::{RotationConfig, Shared};
use marathon_core::{AccountId, AccountKind, ApiFlavor, Class, Secret, UnixMillis};
use marathon_store::{Credential, StoredAccount};
use marathon_wire::{CredentialStyle, RenderedCredential};
use reqwest::Url;

use crate::{Error, Inner};

/// The least time between two `exhausted` events of one provider (as in the
/// proxy: a program hammering an exhausted pool must not flood the log).
const EXHAUSTED_EVENT_EVERY_MS: u64 = 10_000;

/// A stored credential, with its upstream headers built once.
pub(crate) struct Cred {
    pub(crate) kind: AccountKind,
    credential: Credential,
    pub(crate) extras: serde_json::Map<String, serde_json::Value>,
    /// `None`: the stored credential cannot be a header value.
    pub(crate) rendered: Option<RenderedCredential>,
    /// `x-marathon-account` and `x-marathon-attempts` of the common case, a
    /// 200 on the first try (`None`: the label cannot be a header value).
    pub(crate) first_try_ok: Option<(HeaderValue, HeaderValue)>,
}

impl Cred {
    fn from_stored(a: &StoredAccount, style: &CredentialStyle) -> Self {
        let mut cred = Cred {
            kind: a.kind,
            credential: a.credential.clone(),
            extras: a.extras.clone(),
            rendered: None,
            first_try_ok: None,
        };
        cred.rendered = style.render(a.kind, cred.stored_secret(), &a.extras).ok();
        let mut trace = AttemptTrace::new();
        trace.push(AttemptEntry {
            label: a.label.as_str().into(),
            status: Some(200),
            class: Class::Success,
            note: None,
        });
        cred.first_try_ok = HeaderValue::from_str(&a.label)
            .ok()
            .zip(HeaderValue::from_str(&trace.to_string()).ok());
        cred
    }

    pub(crate) fn stored_secret(&self) -> &Secret {
        match &self.credential {
            Credential::ApiKey { key } => key,
            Credential::Oauth { access, .. } => access,
        }
    }
}

/// One configured provider.
pub(crate) struct Provider {
    pub(crate) name: String,
    pub(crate) flavor: ApiFlavor,
    /// The upstream base, without a trailing slash.
    pub(crate) upstream: String,
    pub(crate) credentials: CredentialStyle,
    pub(crate) session_headers: Vec<HeaderName>,
    pub(crate) rotation: RotationConfig,
    pub(crate) pool: Mutex<Pool>,
    pub(crate) budget: Mutex<RetryBudget>,
    pub(crate) creds: RwLock<HashMap<AccountId, Arc<Cred>>>,
    /// Tokens per account and model since the [`crate::Marathon`] was made.
    pub(crate) tokens: Arc<Mutex<TokenLedger>>,
    last_exhausted_event: AtomicU64,
}

impl Provider {
    /// `index`: the provider's place in the config, which seeds its pool's
    /// random choices the same way the proxy does.
    pub(crate) fn from_config(p: &ProviderConfig, index: usize) -> Result<Self, Error> {
        let upstream = Url::parse(&p.upstream).map_err(|e| Error::Upstream {
            provider: p.name.clone(),
            message: e.to_string(),
        })?;
        let credentials = CredentialStyle::from_config(&p.auth).map_err(|source| Error::Auth {
            provider: p.name.clone(),
            source,
        })?;
        let session_headers = p
            .session_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| Error::SessionHeader(p.name.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Provider {
            name: p.name.clone(),
            flavor: p.kind.flavor(),
            upstream: upstream.as_str().trim_end_matches('/').to_string(),
            credentials,
            session_headers,
            rotation: p.rotation_config(),
            pool: Mutex::new(Pool::new(
                p.name.clone(),
                p.pool_config(),
                0x6d61_7261_7468_6f6e ^ index as u64,
            )),
            budget: Mutex::new(RetryBudget::default()),
            creds: RwLock::new(HashMap::new()),
            tokens: Arc::default(),
            last_exhausted_event: AtomicU64::new(0),
        })
    }

    /// Brings the pool and credentials in line with the store's accounts.
    pub(crate) fn sync(&self, accounts: &[StoredAccount], now: UnixMillis) {
        let mine: Vec<&StoredAccount> = accounts
            .iter()
            .filter(|a| a.provider == self.name)
            .collect();
        marathon_store::pool_sync::sync_pool(
            &mut self.pool.lock().unwrap_or_else(|e| e.into_inner()),
            &mine,
            now,
        );
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id| mine.iter().any(|a| &a.id == id));
        let mut creds = self.creds.write().unwrap_or_else(|e| e.into_inner());
        creds.clear();
        for a in mine {
            creds.insert(
                a.id.clone(),
                Arc::new(Cred::from_stored(a, &self.credentials)),
            );
        }
    }

    pub(crate) fn cred(&self, id: &AccountId) -> Option<Arc<Cred>> {
        self.creds
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Whether an `exhausted` event is due (at most one per ten seconds).
    pub(crate) fn exhausted_event_due(&self, now: UnixMillis) -> bool {
        let last = self.last_exhausted_event.load(Relaxed);
        now.0.saturating_sub(last) >= EXHAUSTED_EVENT_EVERY_MS
            && self
                .last_exhausted_event
                .compare_exchange(last, now.0, Relaxed, Relaxed)
                .is_ok()
    }
}

/// What the rotation machine shares with every request of a provider: the
/// pool and budget behind short std mutexes (each call takes and drops the
/// lock; none is held across an `.await`), the event channel, the store.
#[derive(Clone)]
pub(crate) struct Env {
    pub(crate) inner: Arc<Inner>,
    pub(crate) provider: Arc<Provider>,
}

impl Shared for Env {
    fn pool<R>(&self, f: impl FnOnce(&mut Pool) -> R) -> R {
        f(&mut self.provider.pool.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn budget<R>(&self, f: impl FnOnce(&mut RetryBudget) -> R) -> R {
        f(&mut self
            .provider
            .budget
            .lock()
            .unwrap_or_else(|e| e.into_inner()))
    }

    fn publish(&self, events: Vec<Event>) {
        self.inner.publish(events);
    }

    fn persist_needs_login(&self, account: &AccountId) {
        let store = self.inner.store.clone();
        let id = account.clone();
        // In the background, so other processes and the next start know it.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.update(&id, &mut |a| {
                a.state = marathon_store::AccountState::NeedsLogin
            }) {
                tracing::warn!("could not persist needs-login state: {e}");
            }
        });
    }
}

impl Env {
    /// Tells subscribers that no account could take a request (throttled).
    pub(crate) fn announce_exhausted(&self, now: UnixMillis, soonest: Option<UnixMillis>) {
        if self.provider.exhausted_event_due(now) {
            self.inner.publish(vec![Event {
                at: now,
                provider: self.provider.name.clone(),
                kind: EventKind::Exhausted { soonest },
            }]);
        }
    }
}
