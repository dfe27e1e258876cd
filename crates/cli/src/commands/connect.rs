//! `marathon connect <client>`: what to set so a client uses the proxy — the
//! running one (found through its record), else the configured address —
//! printed, or merged into the client's own files with `--write` (undone
//! with `--undo`).

use marathon_config::Config;

use super::Context;
use super::clients::{self, Client, Places, Setup, Target};
use crate::cli::ConnectArgs;
use crate::output::{Failure, errln, out};
use marathon_store::client_config::{self as edit, Applied, ClientConfigError, Undone};
use marathon_store::serve_record::{self as running, Running};

/// The proxy clients are pointed at: the running one, else the configured
/// address (where `marathon serve` will listen).
pub(crate) fn target(ctx: &Context, config: &Config) -> (Target, Option<Running>) {
    let running = running::find(&ctx.paths.data_dir);
    let url = match &running {
        Some(r) => r.url(),
        None => {
            let mut addr = config.server.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
    };
    let access_key = config.server.access_keys.first().map(|k| &k.key);
    let target = Target {
        url,
        key: access_key.map_or_else(|| "marathon".to_owned(), |k| k.expose().to_owned()),
        secret_key: access_key.is_some(),
    };
    (target, running)
}

/// Which providers have accounts (any enabled one), for choosing routes.
/// Reads the store only if it exists: `connect` creates nothing.
pub(crate) fn providers_with_accounts(ctx: &Context) -> Vec<String> {
    let shared = ctx
        .config()
        .is_ok_and(|c| c.store.backend == marathon_config::StoreBackend::Redis);
    if !shared && !marathon_store::FileStore::exists(&ctx.paths.data_dir) {
        return Vec::new();
    }
    let Ok(store) = ctx.store() else {
        return Vec::new();
    };
    let mut names: Vec<String> = store
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.enabled)
        .map(|a| a.provider)
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The client's setup for `target`.
pub(crate) fn client_setup(
    ctx: &Context,
    config: &Config,
    client: Client,
    provider: Option<&str>,
    target: &Target,
    places: &Places,
) -> anyhow::Result<Setup> {
    let with_accounts = providers_with_accounts(ctx);
    let has = |name: &str| with_accounts.iter().any(|n| n == name);
    clients::setup(client, target, config, provider, &has, places)
}

pub(crate) fn run(ctx: &Context, args: &ConnectArgs) -> anyhow::Result<()> {
    let config = ctx.config()?;
    let places = Places::from_env();
    let (target, running) = target(ctx, &config);
    let setup = client_setup(
        ctx,
        &config,
        args.client,
        args.provider.as_deref(),
        &target,
        &places,
    )?;
    if (args.write || args.undo) && setup.files.is_empty() {
        return Err(Failure::usage(
            format!("{} is set up through its environment only; there is no file to change", args.client.title()),
            format!(
                "put the lines `marathon connect {}` prints in your shell profile, or use `marathon run`",
                args.client.name()
            ),
        )
        .into());
    }
    if args.undo {
        for f in &setup.files {
            let shown = places.show(&f.path);
            match edit::undo(&f.path)? {
                Undone::Restored => errln!("restored {shown} as it was before marathon changed it"),
                Undone::Removed => errln!("removed {shown} (marathon had created it)"),
                Undone::NoBackup => errln!(
                    "nothing to undo in {shown} (no {})",
                    places.show(&edit::backup_path(&f.path))
                ),
            }
        }
        return Ok(());
    }
    note_target(&config, &target, running.as_ref());
    if args.write {
        for f in &setup.files {
            let shown = places.show(&f.path);
            let applied = match edit::apply(&f.path, f.format, &f.settings) {
                Ok(applied) => applied,
                Err(e @ ClientConfigError::Unreadable { .. }) => {
                    return Err(Failure::runtime(
                        e.to_string(),
                        "merge the settings `marathon connect` prints into it by hand",
                    )
                    .into());
                }
                Err(e) => return Err(e.into()),
            };
            match applied {
                Applied::Unchanged => errln!("{shown} already has these settings"),
                applied => errln!(
                    "{} {shown}; undo with `marathon connect {} --undo`",
                    if applied == Applied::Created {
                        "created"
                    } else {
                        "updated"
                    },
                    args.client.name()
                ),
            }
        }
        // What remains to set is the environment.
        out!("{}", clients::export_lines(&setup.env));
        return Ok(());
    }
    out!("{}", clients::render(args.client, &setup, &places));
    Ok(())
}

/// Says on stderr which proxy the settings are for.
fn note_target(config: &Config, target: &Target, running: Option<&Running>) {
    match running {
        Some(r) => {
            errln!(
                "# for the marathon proxy running at {} (pid {})",
                target.url,
                r.pid
            );
            let configured = config.server.listen;
            if r.addr.port() != configured.port() {
                errln!(
                    "# note: it listens on port {}, not the configured {}; these settings stop working when it restarts on another port",
                    r.addr.port(),
                    configured.port()
                );
            }
        }
        None => errln!(
            "# no marathon proxy is running; these settings use {}, where `marathon serve` will listen",
            target.url
        ),
    }
}
