//! `marathon store copy`: every account and the hot state from the
//! configured store to another backend (files ⇄ Redis).

use std::path::Path;

use anyhow::Context as _;
use marathon_store::{HotState, Store, StoredAccount};

use super::Context;
use crate::output::outln;

pub(crate) fn copy(ctx: &Context, to: &str) -> anyhow::Result<()> {
    let config = ctx.config()?;
    let from = ctx.store()?;
    let accounts = from.list()?;
    let hot = from.load_hot()?;
    let n = accounts.len();
    let shown = if to.starts_with("redis://") || to.starts_with("rediss://") {
        copy_to_redis(&config, to, accounts, &hot)?
    } else {
        let dir = Path::new(to);
        let dest = crate::backend::open_files(dir)?;
        dest.put_all(accounts)
            .with_context(|| format!("writing the accounts to {}", dir.display()))?;
        merge_hot(&dest, &hot)?;
        dir.display().to_string()
    };
    outln!(
        "copied {n} account{} and the cooldowns to {shown}",
        if n == 1 { "" } else { "s" }
    );
    Ok(())
}

#[cfg(feature = "redis")]
fn copy_to_redis(
    config: &marathon_config::Config,
    url: &str,
    accounts: Vec<StoredAccount>,
    hot: &HotState,
) -> anyhow::Result<String> {
    // Checked like [store] url: no password in a URL marathon prints.
    let url = marathon_config::check_store_url(url).map_err(anyhow::Error::msg)?;
    let dest = crate::backend::redis_store(&config.store, &url)?;
    dest.put_all(accounts)?;
    merge_hot(&dest, hot)?;
    Ok(marathon_core::secret::redact_url(&url))
}

#[cfg(not(feature = "redis"))]
fn copy_to_redis(
    _: &marathon_config::Config,
    _: &str,
    _: Vec<StoredAccount>,
    _: &HotState,
) -> anyhow::Result<String> {
    anyhow::bail!("this marathon was built without Redis support (`--features redis`)")
}

fn merge_hot(dest: &dyn Store, hot: &HotState) -> anyhow::Result<()> {
    let now = marathon_core::Clock::now(&marathon_core::SystemClock);
    dest.merge_hot(hot, now)?;
    Ok(())
}
