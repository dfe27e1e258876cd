//! Which store the commands use (`[store] backend`), and the glue between
//! `marathon-redis` and the proxy's `Peers` seam (the proxy does not know
//! Redis, as it does not know the OAuth crate).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use marathon_config::{Config, StoreBackend, StoreConfig};
use marathon_store::{FileStore, Store};

use crate::output::Style;

/// The open store, and the channel to the other instances when it is shared.
pub(crate) struct Opened {
    pub(crate) store: Arc<dyn Store>,
    #[cfg(feature = "redis")]
    pub(crate) cluster: Option<marathon_redis::Cluster>,
    /// Concurrency slots shared with the other instances.
    #[cfg(feature = "redis")]
    pub(crate) slots: Option<marathon_redis::Slots>,
}

/// Opens the configured store: the data directory's files, or Redis.
pub(crate) fn open(data_dir: &Path, config: &Config) -> anyhow::Result<Opened> {
    match config.store.backend {
        StoreBackend::File => Ok(Opened {
            store: Arc::new(open_files(data_dir)?),
            #[cfg(feature = "redis")]
            cluster: None,
            #[cfg(feature = "redis")]
            slots: None,
        }),
        // serve.json (where a running proxy listens) stays in the data
        // directory, which the record creates.
        StoreBackend::Redis => open_redis(&config.store),
    }
}

/// The file store in `dir` (created if missing). Files another user could
/// read are made private, with a warning.
pub(crate) fn open_files(dir: &Path) -> anyhow::Result<FileStore> {
    let store = FileStore::open(dir)
        .with_context(|| format!("cannot open the account store in {}", dir.display()))?;
    // `serve` logs the store's own warnings; other commands have no log.
    if !tracing::dispatcher::has_been_set() {
        let style = Style::for_stderr();
        for fix in store.permission_fixes() {
            eprintln!("{} {fix}", style.yellow("warning:"));
        }
    }
    Ok(store)
}

#[cfg(feature = "redis")]
fn open_redis(config: &StoreConfig) -> anyhow::Result<Opened> {
    let store = redis_store(config, config.url.as_deref().unwrap_or_default())?;
    let cluster = Some(store.cluster());
    let slots = Some(store.slots(config.slot_lease));
    Ok(Opened {
        store: Arc::new(store),
        cluster,
        slots,
    })
}

#[cfg(not(feature = "redis"))]
fn open_redis(_: &StoreConfig) -> anyhow::Result<Opened> {
    anyhow::bail!(
        "[store] backend = \"redis\", but this marathon was built without Redis support \
         (build it with the default features, or `--features redis`)"
    )
}

/// A Redis store at `url`, with the configured user and password.
#[cfg(feature = "redis")]
pub(crate) fn redis_store(
    config: &StoreConfig,
    url: &str,
) -> anyhow::Result<marathon_redis::RedisStore> {
    let options = marathon_redis::RedisOptions {
        url: with_credentials(url, config),
        prefix: config.prefix.clone(),
    };
    Ok(marathon_redis::RedisStore::open(&options)?)
}

/// `redis://host/..` with `user:password@` put in (percent-encoded). The
/// config never holds them in the URL, so the URL stays safe to show.
#[cfg(feature = "redis")]
fn with_credentials(url: &str, config: &StoreConfig) -> String {
    let Some(password) = &config.password else {
        return url.to_string();
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let user = config.username.as_deref().unwrap_or_default();
    format!(
        "{scheme}://{}:{}@{rest}",
        percent(user),
        percent(password.expose())
    )
}

#[cfg(feature = "redis")]
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The proxy's `Peers` seam on a Redis channel.
#[cfg(feature = "redis")]
pub(crate) struct RedisPeers(pub(crate) marathon_redis::Cluster);

#[cfg(feature = "redis")]
impl marathon_proxy::Peers for RedisPeers {
    fn announce(&self, json: &str, cooldown: Option<marathon_proxy::PeerCooldown>) {
        let wire = cooldown.map(|c| marathon_redis::WireCooldown {
            provider: c.provider,
            account: c.account,
            until: c.until,
            reason: c.reason,
        });
        self.0.announce(json, wire);
    }
}

/// The proxy's `SharedSlots` seam on Redis (`max_in_flight` across instances).
#[cfg(feature = "redis")]
pub(crate) struct RedisSlots(pub(crate) marathon_redis::Slots);

#[cfg(feature = "redis")]
impl marathon_proxy::SharedSlots for RedisSlots {
    fn acquire<'a>(
        &'a self,
        account: &'a marathon_core::AccountId,
        cap: u32,
    ) -> marathon_core::tokens::BoxFuture<'a, marathon_proxy::SlotAnswer> {
        Box::pin(async move {
            match self.0.acquire(account, cap).await {
                marathon_redis::Acquired::Held(lease) => {
                    marathon_proxy::SlotAnswer::Held(Box::new(lease))
                }
                marathon_redis::Acquired::Full => marathon_proxy::SlotAnswer::Full,
                marathon_redis::Acquired::Unavailable(why) => {
                    tracing::debug!("concurrency slot not checked in Redis: {why}");
                    marathon_proxy::SlotAnswer::Unavailable
                }
            }
        })
    }
}

/// Feeds the other instances' news into the proxy: cooldowns into its pools
/// (never shortening one), events into its `/_marathon/events`.
#[cfg(feature = "redis")]
pub(crate) async fn listen(cluster: marathon_redis::Cluster, inbox: marathon_proxy::PeerInbox) {
    let subscribed = tokio::task::spawn_blocking(move || {
        cluster.listen(move |m| {
            if let Some(c) = m.cooldown {
                inbox.cooldown(&marathon_proxy::PeerCooldown {
                    provider: c.provider,
                    account: c.account,
                    until: c.until,
                    reason: c.reason,
                });
            }
            inbox.event(m.event);
        })
    })
    .await;
    if let Ok(Err(e)) = subscribed {
        tracing::error!(
            "not receiving other instances' news yet ({e}); retrying in the background"
        );
    }
}
