//! `marathon serve`: the rotating proxy, until SIGTERM or Ctrl-C.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context as _;
use marathon_config::Config;
use marathon_proxy::{ProxyHandle, ProxySettings, StartOptions};

use super::Context;
use crate::cli::{LogFormat, ServeArgs};
use crate::output::{Failure, errln};
use marathon_store::serve_record::Record;

pub(crate) fn run(ctx: &Context, args: &ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let mut config = ctx.config()?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Err(why) = config.server.check_exposure() {
        return Err(Failure::usage(why, "add an access key ([server] access_keys or MARATHON_ACCESS_KEY), or listen on 127.0.0.1").into());
    }
    let settings = ProxySettings::from_config(&config)
        .with_context(|| format!("in {}", ctx.paths.config_file.display()))?;
    let opened = ctx.open_store()?;
    let accounts = opened.store.list()?;
    // Before the first socket: the connection cap is sized from the limit.
    let nofile = marathon_proxy::raise_nofile_limit();
    let grace = config.server.shutdown_grace;

    // One event loop by default, like one nginx worker: measured here it
    // costs a quarter less CPU per request than tokio's work-stealing pool
    // (no cross-thread wake-ups) and still serves ~40k requests/s, far above
    // what coding tools send. `--workers N` adds event loops of the same kind
    // on threads of their own, each with its own listener (SO_REUSEPORT), so
    // a team gateway scales with cores without cross-thread wake-ups.
    // Blocking work (the store, refresh locks) runs on tokio's blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let workers = args.workers;
    runtime.block_on(async move {
        let handle = start_proxy(&config, settings.clone(), opened, workers).await?;
        // `status`, `connect` and `run` find the proxy through this record,
        // whatever port it got; it goes when serve ends cleanly.
        let record = Record::write(&ctx.paths.data_dir, handle.local_addr())?;
        let base = handle.url();
        errln!("marathon {} listening on {base}", env!("CARGO_PKG_VERSION"));
        for p in &settings.providers {
            let n = accounts.iter().filter(|a| a.provider == p.name).count();
            if n == 0 {
                continue;
            }
            errln!(
                "  {:<10} {n} account{}  {base}/{}  → {}  ({})",
                p.name,
                if n == 1 { " " } else { "s" },
                p.name,
                p.upstream,
                p.pool.strategy
            );
        }
        if accounts.is_empty() {
            errln!("  no accounts yet: add one with `marathon auth add <provider> --label <name>` (the proxy picks it up within seconds)");
        }
        errln!("  dashboard  {base}/_marathon/    status: marathon status");
        tracing::debug!("descriptor limit {nofile}");
        let mut signals = Signals::new()?;
        let first = signals.next().await;
        errln!(
            "{first}: stopping; letting requests in flight finish (up to {}), then saving state; send it again to exit at once",
            marathon_core::fmt::HumanDuration(grace)
        );
        tokio::select! {
            () = handle.shutdown(grace) => {}
            second = signals.next() => {
                errln!("{second} again: exiting without waiting for requests in flight");
                drop(record);
                std::process::exit(second.exit_code());
            }
        }
        drop(record);
        anyhow::Ok(())
    })
}

/// Starts the proxy for `config` on `settings.listen`, refreshing OAuth
/// tokens through the shared refresher (`serve`, and `run` when no proxy runs).
pub(crate) async fn start_proxy(
    config: &Config,
    settings: ProxySettings,
    opened: crate::backend::Opened,
    workers: usize,
) -> anyhow::Result<ProxyHandle> {
    let store = opened.store;
    let mut opts = StartOptions::new(store.clone());
    opts.workers = workers;
    let refresher = marathon_oauth::from_config::refresher(config, store).await?;
    opts.tokens = Some(refresher.clone());
    // A shared store: this instance's news goes to the others, theirs comes in.
    #[cfg(feature = "redis")]
    if let Some(cluster) = &opened.cluster {
        opts.peers = Some(Arc::new(crate::backend::RedisPeers(cluster.clone())));
    }
    #[cfg(feature = "redis")]
    if let Some(slots) = &opened.slots {
        opts.slots = Some(Arc::new(crate::backend::RedisSlots(slots.clone())));
    }
    let proxy = marathon_proxy::start(settings, opts).await?;
    #[cfg(feature = "redis")]
    if let Some(cluster) = opened.cluster {
        crate::backend::listen(cluster, proxy.peer_inbox()).await;
    }
    // Routine refreshes (ahead of expiry) are counted and announced too; a
    // forced one (after a 401) is announced by the request that forced it.
    let feed = proxy.refresh_feed();
    refresher.on_refresh(Arc::new(move |n: &marathon_oauth::RefreshNotice| {
        if n.routine {
            feed.refreshed(&n.account);
        }
    }));
    Ok(proxy)
}

/// SIGTERM (systemd, containers, `kill`) and SIGINT (Ctrl-C) alike.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[derive(Clone, Copy)]
enum Stop {
    Term,
    Int,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stop::Term => "SIGTERM",
            Stop::Int => "SIGINT",
        })
    }
}

impl Stop {
    /// 128 + the signal's number, as a shell reports a process it killed.
    fn exit_code(self) -> i32 {
        match self {
            Stop::Term => 143,
            Stop::Int => 130,
        }
    }
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }

    async fn next(&mut self) -> Stop {
        tokio::select! {
            _ = self.term.recv() => Stop::Term,
            _ = self.int.recv() => Stop::Int,
        }
    }
}

/// Log lines to stderr: `MARATHON_LOG` (or `RUST_LOG`) filters, default `info`.
pub(crate) fn init_logging(format: LogFormat) {
    let filter = std::env::var("MARATHON_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
