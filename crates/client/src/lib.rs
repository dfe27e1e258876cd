//! # marathon-client: account rotation inside a Rust program
//!
//! The same rotation as the marathon proxy, without a proxy: a
//! [`reqwest_middleware`] middleware that sends each request with one of a
//! provider's accounts and, when that account is rate-limited, out of
//! quota, logged out or failing, moves to the next one before the program
//! sees an answer. It drives the very engine the proxy drives
//! ([`marathon_core::rotation::Rotation`]) with the same configuration
//! (`marathon-config`: providers, strategies, `max_attempts`, `max_wait`…),
//! the same accounts and hot state (`marathon-store`, so `marathon auth`
//! manages them), the same OAuth refresher (`marathon-oauth`) and the same
//! credential headers per provider.
//!
//! ## Quick start
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use marathon_client::Marathon;
//!
//! // The config and accounts `marathon` itself uses (`marathon auth add ...`).
//! let paths = marathon_config::Paths::resolve(None);
//! let config = marathon_config::load(&paths)?;
//! let store = Arc::new(marathon_store::FileStore::open(&paths.data_dir)?);
//! let marathon = Marathon::from_config(&config, store).await?;
//!
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(marathon.middleware("anthropic")?)
//!     .build();
//! // No credentials: the middleware sets the chosen account's.
//! let answer = client
//!     .post("https://api.anthropic.com/v1/messages")
//!     .header("anthropic-version", "2023-06-01")
//!     .header("content-type", "application/json")
//!     .body(r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#)
//!     .send()
//!     .await?;
//! println!("{} from {:?}", answer.status(), answer.headers().get("x-marathon-account"));
//! # Ok(()) }
//! ```
//!
//! `cargo run -p marathon-client --example rotate` shows a failover against
//! the simulator, with two accounts of which one is rate-limited.
//!
//! ## What the middleware does with a request
//!
//! - A request to a URL under the provider's configured `upstream` (after
//!   [`MarathonMiddleware::rewrite_base`], if set) rotates. Any other
//!   request passes through untouched and **never** gets an account's
//!   credential, so one client can also talk to other hosts.
//! - The program's own `authorization`, `x-api-key`, `x-goog-api-key` and
//!   `x-marathon-key` headers are removed; the account's are set by the
//!   provider's auth style, exactly as the proxy sets them.
//! - Each answer is classified like the proxy's (status, headers, and the
//!   first 64 KiB of an error body, which is then handed on whole). A
//!   success passes through as it streams; an event stream is watched for
//!   an error event inside it, which benches the account for the next
//!   request (the stream itself reaches the program unchanged).
//! - When no account can take the request, the answer is marathon's own, in
//!   the provider's error format, with the same status, `retry-after` and
//!   message as the proxy's (e.g. 429 "all 2 anthropic accounts are
//!   unavailable (…)"); an unreachable upstream is a 502 answer, not an
//!   error. Answers carry `x-marathon-account` and `x-marathon-attempts`.
//! - A request whose body cannot be cloned (`reqwest::Request::try_clone`
//!   returns `None`: a streaming body) is sent once, to one account, with
//!   no rotation; its answer says `x-marathon-replayable: false`.
//!
//! Accounts are re-read from the store every two seconds and cooldowns are
//! saved to its hot state every five, in a background task that ends when
//! the last [`Marathon`] or middleware is dropped.

#![deny(missing_docs)]

mod body;
mod middleware;
mod provider;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use marathon_config::Config;
use marathon_core::events::Event;
use marathon_core::status::AccountReport;
use marathon_core::tokens::TokenSource;
use marathon_core::{Clock, SystemClock};
use marathon_store::{HotState, Store};
use tokio::sync::broadcast;

pub use marathon_wire::BadAuthStyle;
use marathon_wire::{CLIENT_CREDENTIAL_HEADERS, ClientHeaders};
pub use middleware::MarathonMiddleware;

use provider::Provider;

/// How often accounts are re-read from the store (as in the proxy).
const SYNC_EVERY: Duration = Duration::from_secs(2);
/// How often cooldowns are saved to the store's hot state (as in the proxy).
const SAVE_HOT_EVERY: Duration = Duration::from_secs(5);

/// Why marathon could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration has no provider of that name.
    #[error("no provider named {0:?} in the configuration")]
    UnknownProvider(String),
    /// A provider's upstream is not a URL.
    #[error("providers.{provider}.upstream: {message}")]
    Upstream {
        /// The provider.
        provider: String,
        /// What is wrong.
        message: String,
    },
    /// A provider's auth headers are unusable.
    #[error("providers.{provider}.auth: {source}")]
    Auth {
        /// The provider.
        provider: String,
        /// What is wrong.
        source: BadAuthStyle,
    },
    /// The session header is not a valid header name.
    #[error("providers.{0}.session_headers: not a valid header name")]
    SessionHeader(String),
    /// A provider's OAuth server (or the CA file its client trusts) could
    /// not be set up.
    #[error(transparent)]
    OAuth(#[from] marathon_oauth::from_config::SetupError),
    /// The store could not be read.
    #[error("cannot read accounts: {0}")]
    Store(String),
    /// [`MarathonMiddleware::rewrite_base`] was given something that is not a URL.
    #[error("rewrite base {0:?} is not an absolute URL")]
    Base(String),
}

/// Everything [`Marathon::with_options`] can be given besides the config
/// and the store.
pub struct Options {
    /// OAuth access tokens; `None` sends stored tokens as they are (and a
    /// 401 cannot be fixed by a refresh). [`Marathon::from_config`] uses
    /// `marathon-oauth`'s refresher.
    pub tokens: Option<Arc<dyn TokenSource>>,
    /// The clock (tests inject one).
    pub clock: Arc<dyn Clock>,
    /// Re-read accounts and save hot state in a background task (needs a
    /// tokio runtime; on by default).
    pub background: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tokens: None,
            clock: Arc::new(SystemClock),
            background: true,
        }
    }
}

/// Rotation for every configured provider, in-process. Cheap to share:
/// each [`Marathon::middleware`] holds the same pools.
pub struct Marathon {
    inner: Arc<Inner>,
}

/// The state every middleware of one [`Marathon`] shares.
pub(crate) struct Inner {
    pub(crate) providers: HashMap<String, Arc<Provider>>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) tokens: Option<Arc<dyn TokenSource>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) peek_first_event: bool,
    /// How long the first part of an upstream error body may take in all.
    pub(crate) error_body_timeout: Duration,
    /// The program's headers no request forwards: every header a client
    /// credential travels in, for every configured provider.
    pub(crate) client_headers: ClientHeaders,
    /// The per-process key session ids are hashed with (as in the proxy: a
    /// session id of any length costs the pool eight bytes).
    pub(crate) session_keys: foldhash::quality::RandomState,
    events: broadcast::Sender<Event>,
}

impl Inner {
    pub(crate) fn publish(&self, events: Vec<Event>) {
        for e in events {
            tracing::info!(target: "marathon::event", provider = %e.provider, "{e}");
            // No subscriber is fine.
            let _ = self.events.send(e);
        }
    }

    async fn sync(&self) -> Result<(), Error> {
        let store = self.store.clone();
        let accounts = tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(|e| Error::Store(e.to_string()))?
            .map_err(|e| Error::Store(e.to_string()))?;
        let now = self.clock.now();
        for p in self.providers.values() {
            p.sync(&accounts, now);
        }
        Ok(())
    }

    async fn save_hot(&self) -> Result<(), Error> {
        let now = self.clock.now();
        let mut hot = HotState::default();
        for p in self.providers.values() {
            let pool = p.pool.lock().unwrap_or_else(|e| e.into_inner());
            marathon_store::pool_sync::save_hot(&pool, now, &mut hot);
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.save_hot(&hot))
            .await
            .map_err(|e| Error::Store(e.to_string()))?
            .map_err(|e| Error::Store(e.to_string()))
    }
}

impl Marathon {
    /// Every provider of `config`, with the accounts in `store` and OAuth
    /// refresh by `marathon-oauth` (a provider whose OAuth issuer must be
    /// discovered is looked up now).
    pub async fn from_config(config: &Config, store: Arc<dyn Store>) -> Result<Self, Error> {
        let refresher = marathon_oauth::from_config::refresher(config, store.clone()).await?;
        let options = Options {
            tokens: Some(refresher),
            ..Options::default()
        };
        Self::with_options(config, store, options).await
    }

    /// [`Marathon::from_config`] with another token source, clock, or no
    /// background task.
    pub async fn with_options(
        config: &Config,
        store: Arc<dyn Store>,
        options: Options,
    ) -> Result<Self, Error> {
        let mut providers = HashMap::new();
        for (i, p) in config.providers.values().enumerate() {
            providers.insert(p.name.clone(), Arc::new(Provider::from_config(p, i)?));
        }
        let client_headers = ClientHeaders::new(
            &CLIENT_CREDENTIAL_HEADERS,
            &[],
            providers.values().map(|p| &p.credentials),
        );
        let inner = Arc::new(Inner {
            providers,
            error_body_timeout: config.server.error_body_timeout,
            client_headers,
            session_keys: Default::default(),
            store,
            tokens: options.tokens,
            clock: options.clock,
            peek_first_event: config.server.peek_first_event,
            events: broadcast::channel(256).0,
        });
        inner.sync().await?;
        let hot_store = inner.store.clone();
        match tokio::task::spawn_blocking(move || hot_store.load_hot()).await {
            Ok(Ok(hot)) => {
                let now = inner.clock.now();
                for p in inner.providers.values() {
                    let mut pool = p.pool.lock().unwrap_or_else(|e| e.into_inner());
                    marathon_store::pool_sync::restore_hot(&mut pool, &hot, now);
                }
            }
            Ok(Err(e)) => tracing::warn!("hot state not restored (cooldowns start fresh): {e}"),
            Err(_) => {}
        }
        if options.background {
            tokio::spawn(background(Arc::downgrade(&inner)));
        }
        Ok(Marathon { inner })
    }

    /// The middleware for one provider, to add to a
    /// [`reqwest_middleware::ClientBuilder`].
    pub fn middleware(&self, provider: &str) -> Result<MarathonMiddleware, Error> {
        let p = self
            .inner
            .providers
            .get(provider)
            .ok_or_else(|| Error::UnknownProvider(provider.to_string()))?;
        Ok(MarathonMiddleware::for_provider(
            self.inner.clone(),
            p.clone(),
        ))
    }

    /// Re-reads the accounts now (the background task does every two seconds).
    pub async fn sync(&self) -> Result<(), Error> {
        self.inner.sync().await
    }

    /// Saves cooldowns and counters to the store's hot state now.
    pub async fn save_hot(&self) -> Result<(), Error> {
        self.inner.save_hot().await
    }

    /// Every event from now on (failovers, cooldowns, needs-login,
    /// exhaustion): labels, never secrets. Also logged with `tracing` under
    /// the `marathon::event` target.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Each account's state in one provider's pool, in the schema of the
    /// proxy's `/_marathon/status` ([`AccountReport`]), with the tokens its
    /// answers reported through this [`Marathon`] (per model too).
    pub fn accounts(&self, provider: &str) -> Option<Vec<AccountReport>> {
        let p = self.inner.providers.get(provider)?;
        let now = self.inner.clock.now();
        let statuses = p.pool.lock().unwrap_or_else(|e| e.into_inner()).status(now);
        let tokens = p.tokens.lock().unwrap_or_else(|e| e.into_inner());
        Some(
            statuses
                .iter()
                .map(|s| {
                    let mut report = AccountReport::live(s, now);
                    if let Some(t) = tokens.account(&s.id) {
                        report.set_tokens(t);
                    }
                    report
                })
                .collect(),
        )
    }
}

/// Re-reads accounts and saves hot state until the last user is gone.
async fn background(inner: Weak<Inner>) {
    let mut sync = tokio::time::interval(SYNC_EVERY);
    let mut save = tokio::time::interval(SAVE_HOT_EVERY);
    sync.tick().await;
    save.tick().await;
    loop {
        let saving = tokio::select! {
            _ = sync.tick() => false,
            _ = save.tick() => true,
        };
        let Some(inner) = inner.upgrade() else { return };
        let done = if saving {
            inner.save_hot().await
        } else {
            inner.sync().await
        };
        if let Err(e) = done {
            tracing::warn!("marathon background task: {e}");
        }
    }
}
