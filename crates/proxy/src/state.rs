//! Settings and the shared state every request reads: per-provider pools,
//! credentials, metrics, the event bus.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::HeaderValue;
use marathon_core::budget::RetryBudget;
use marathon_core::decision::{AttemptEntry, AttemptTrace, RetryPolicy};
use marathon_core::events::Event;
use marathon_core::pool::{Pool, PoolConfig};
use marathon_core::rotation::RotationConfig;
use marathon_core::tokens::TokenSource;
use marathon_core::{AccountId, AccountKind, ApiFlavor, Class, Clock, Secret, UnixMillis};
use marathon_store::{Credential, Store, StoredAccount};

use crate::events::{EventBus, EventSinks};
use crate::headers::ClientHeaders;
use crate::metrics::ProviderMetrics;
use crate::upstream::{Endpoint, PathCache, UpstreamBase, UpstreamClient};
use marathon_wire::{CredentialStyle, RenderedCredential};

/// A map read on every request: foldhash instead of SipHash (the keys are
/// provider names and account ids, not attacker-chosen).
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// How one provider is proxied.
#[derive(Clone, Debug)]
pub struct ProviderSettings {
    /// The route name: requests to `/<name>/...` go to this provider.
    pub name: String,
    /// API family (error formats, credential headers).
    pub flavor: ApiFlavor,
    /// Upstream base URL.
    pub upstream: UpstreamBase,
    /// Cooldowns and selection.
    pub pool: PoolConfig,
    /// Attempts, deadline, provider-error retries.
    pub retry: RetryPolicy,
    /// Wait up to this long for an account to recover instead of answering 429 at once.
    pub max_wait: Option<Duration>,
    /// Exhaustion: a wait up to this long is "retry soon", longer is "spent".
    pub short_wait: Duration,
    /// Headers whose value (the first present) pins a client session to one account.
    pub session_headers: Vec<http::HeaderName>,
    /// How upstream requests carry the account's credential.
    pub credentials: CredentialStyle,
    /// How OAuth accounts' subscription usage is polled (`None`: never).
    pub usage: Option<crate::usage::UsagePollSettings>,
    /// Accounts (by label) whose upstream traffic goes through a forward
    /// proxy of their own (`http://[user:password@]host:port`).
    pub account_proxies: Vec<(String, Secret)>,
}

/// The whole proxy's settings.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Keys clients must present (any of `x-marathon-key`, `x-api-key`,
    /// `authorization: Bearer`). Required for a non-loopback bind.
    pub access_keys: Vec<marathon_config::AccessKey>,
    /// Request bodies up to this size are buffered and can be replayed on
    /// another account; larger ones stream through once.
    pub max_body: usize,
    /// Peek the first SSE event of a 200 stream before committing to it.
    pub peek_first_event: bool,
    /// Give up on an upstream that sends no response head for this long
    /// (`None`: wait as long as the client does; LLM answers can take minutes).
    pub upstream_timeout: Option<Duration>,
    /// The providers.
    pub providers: Vec<ProviderSettings>,
    /// Event sinks besides the log and SSE.
    pub sinks: EventSinks,
    /// Names (besides `localhost` and IP addresses) requests may carry in
    /// `Host`; any other is refused (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Web origins whose pages may call the proxy (CORS); any other page's
    /// requests are refused.
    pub allowed_origins: Vec<String>,
    /// Client connection limits.
    pub limits: crate::ConnectionLimits,
    /// How long the first part of an upstream error body may take in total.
    pub error_body_timeout: Duration,
    /// Forward proxies and trusted CAs for upstream connections.
    pub egress: crate::EgressSettings,
}

/// The credential in memory, as last read from the store, with the headers
/// derived from it built once instead of per request.
pub(crate) struct AccountCred {
    pub label: String,
    pub kind: AccountKind,
    pub credential: Credential,
    pub extras: serde_json::Map<String, serde_json::Value>,
    /// The stored credential's upstream headers (`None`: it cannot be a
    /// header value; the request path reports that).
    pub rendered: Option<RenderedCredential>,
    /// `x-marathon-account` (`None`: the label cannot be a header value).
    pub label_header: Option<HeaderValue>,
    /// `x-marathon-attempts` of the common case: a 200 on the first try.
    pub first_try_ok: Option<HeaderValue>,
    /// The account's own connection pool when it has its own egress proxy
    /// (`providers.<name>.account_proxies`); else the provider's is used.
    pub endpoint: Option<Endpoint>,
}

impl AccountCred {
    fn from_stored(a: &StoredAccount, style: &CredentialStyle, endpoint: Option<Endpoint>) -> Self {
        let kind = a.kind;
        let secret = match &a.credential {
            Credential::ApiKey { key } => key,
            Credential::Oauth { access, .. } => access,
        };
        let mut trace = AttemptTrace::new();
        trace.push(AttemptEntry {
            label: a.label.as_str().into(),
            status: Some(200),
            class: Class::Success,
            note: None,
        });
        AccountCred {
            label: a.label.clone(),
            kind,
            credential: a.credential.clone(),
            extras: a.extras.clone(),
            rendered: style.render(kind, secret, &a.extras).ok(),
            label_header: HeaderValue::from_str(&a.label).ok(),
            first_try_ok: HeaderValue::from_str(&trace.to_string()).ok(),
            endpoint,
        }
    }

    /// The connection pool this account's requests go out on.
    pub(crate) fn endpoint<'a>(&'a self, provider: &'a ProviderRuntime) -> &'a Endpoint {
        self.endpoint.as_ref().unwrap_or(&provider.endpoint)
    }

    pub(crate) fn stored_secret(&self) -> &Secret {
        match &self.credential {
            Credential::ApiKey { key } => key,
            Credential::Oauth { access, .. } => access,
        }
    }
}

/// One provider at run time.
pub(crate) struct ProviderRuntime {
    pub settings: ProviderSettings,
    /// The rotation machine's view of `settings` (name, retry policy, max_wait).
    pub rotation: RotationConfig,
    /// The upstream's connection pool.
    pub endpoint: Endpoint,
    /// Pools of the accounts (by label) with an egress proxy of their own.
    pub account_endpoints: FastMap<String, Endpoint>,
    /// Upstream URIs of the paths clients use.
    pub paths: PathCache,
    /// A std mutex on purpose: it is held only for a pick or a record (no
    /// `.await` inside), which is shorter than a tokio mutex's bookkeeping.
    pub pool: Mutex<Pool>,
    pub budget: Mutex<RetryBudget>,
    /// `Arc` so a pick clones a pointer, not the credential.
    pub creds: RwLock<FastMap<AccountId, Arc<AccountCred>>>,
    pub metrics: ProviderMetrics,
    /// Tokens per account and model (token accounting), written once at
    /// each answer's end.
    pub tokens: Arc<Mutex<marathon_core::accounting::TokenLedger>>,
    /// When the last `exhausted` event went out (ms since the epoch).
    pub last_exhausted_event: std::sync::atomic::AtomicU64,
}

/// Everything a request needs.
pub(crate) struct AppState {
    pub settings: ProxySettings,
    pub providers: FastMap<String, Arc<ProviderRuntime>>,
    pub client: UpstreamClient,
    pub bus: EventBus,
    pub clock: Arc<dyn Clock>,
    pub store: Arc<dyn Store>,
    pub tokens: Option<Arc<dyn TokenSource>>,
    /// The client headers no request forwards (every provider's credential headers).
    pub client_headers: ClientHeaders,
    /// The per-process key session ids are hashed with.
    pub session_keys: foldhash::quality::RandomState,
    /// Host and Origin checks (web pages).
    pub browser: crate::browser::Guard,
    /// The access keys and each one's counters.
    pub access: crate::access::AccessKeys,
    /// Other instances sharing the store (a team gateway), if any.
    pub peers: Option<Arc<dyn crate::shared::Peers>>,
    /// Concurrency slots shared with other instances (`max_in_flight`), if any.
    pub slots: Option<Arc<dyn crate::slots::SharedSlots>>,
    /// Whether the shared slots could be reached, to say a change once.
    pub slots_outage: crate::slots::Outage,
    /// What this instance has folded into the store's shared hot state.
    pub hot: crate::shared::HotSync,
}

impl AppState {
    pub(crate) fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    pub(crate) fn publish(&self, events: Vec<Event>) {
        for e in &events {
            if let Some(p) = self.providers.get(&e.provider)
                && matches!(e.kind, marathon_core::events::EventKind::Cooldown { .. })
            {
                p.metrics
                    .cooldowns
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let json = self.bus.publish(e);
            if let Some(peers) = &self.peers {
                crate::shared::announce(self, peers.as_ref(), e, &json.json);
            }
        }
    }

    /// Brings pools and credentials in line with the store: new accounts
    /// join, removed ones leave, edited ones (label, priority, enabled,
    /// credential, needs-login) update. Cheap enough to run every few seconds.
    pub(crate) fn sync_accounts(&self, accounts: &[StoredAccount]) {
        let now = self.now();
        for (name, rt) in &self.providers {
            let mine: Vec<&StoredAccount> =
                accounts.iter().filter(|a| &a.provider == name).collect();
            marathon_store::pool_sync::sync_pool(
                &mut rt.pool.lock().unwrap_or_else(|e| e.into_inner()),
                &mine,
                now,
            );
            let mut creds = rt.creds.write().unwrap_or_else(|e| e.into_inner());
            creds.clear();
            rt.tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|id| mine.iter().any(|a| &a.id == id));
            for a in mine {
                creds.insert(
                    a.id.clone(),
                    Arc::new(AccountCred::from_stored(
                        a,
                        &rt.settings.credentials,
                        rt.account_endpoints.get(&a.label).cloned(),
                    )),
                );
            }
        }
    }
}
