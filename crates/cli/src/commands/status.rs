//! `marathon status`: every account and its state — live from the running
//! proxy (found through its record, on whatever port), else from the store.

use marathon_core::fmt::HumanDuration;
use marathon_core::{Clock, SystemClock, UnixMillis};
use marathon_store::{HotAccount, Store};

use http_body_util::Full;
use marathon_config::Config;

use super::Context;
use super::auth::{NO_ACCOUNTS, account_json, kind_name, sort_accounts, state_cell};
use super::proxy_client::ProxyClient;
use crate::cli::StatusArgs;
use crate::output::{Style, Table, cell, errln, out, outln};

pub(crate) fn run(ctx: &Context, args: &StatusArgs) -> anyhow::Result<()> {
    // A broken config must not pass for "no proxy is running": say so, and
    // show what can be shown without it.
    let config = ctx.config();
    if let Err(e) = &config {
        let style = Style::for_stderr();
        errln!("{} the config is invalid: {e}", style.yellow("warning:"));
        errln!(
            "  `marathon serve` will not start until it is fixed; the accounts below do not depend on it"
        );
    }
    let why_offline = if args.offline {
        "as asked".to_owned()
    } else {
        match live_status(ctx, config.as_ref().ok()) {
            Live::View(v) => return print_live(&v, args.json),
            Live::NotRunning => "no marathon proxy is running".to_owned(),
            Live::NoAnswer(whom) => format!("{whom} did not answer"),
        }
    };
    let store = ctx.store()?;
    let mut accounts = store.list()?;
    sort_accounts(&mut accounts);
    let hot = store.load_hot()?;
    let now = SystemClock.now();
    if args.json {
        let rows: Vec<serde_json::Value> = accounts
            .iter()
            .map(|a| {
                let mut v = account_json(a);
                let h = hot.cooldowns.get(&a.id).filter(|h| is_cooling(h, now));
                v["cooling_until"] = serde_json::json!(h.and_then(|h| h.cooling_until));
                v["cooling_reason"] = serde_json::json!(h.and_then(|h| h.reason.clone()));
                v
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    outln!(
        "accounts in {} (offline view: {why_offline})",
        store.path().display()
    );
    if accounts.is_empty() {
        outln!("{NO_ACCOUNTS}");
        return Ok(());
    }
    let style = Style::stdout();
    let mut table = Table::new(&[
        "PROVIDER", "LABEL", "KIND", "STATE", "PRIORITY", "ENABLED", "NOTE",
    ]);
    for a in &accounts {
        let mut notes = Vec::new();
        if let Some(h) = hot.cooldowns.get(&a.id).filter(|h| is_cooling(h, now)) {
            let until = h.cooling_until.unwrap_or(now);
            let reason = h
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            notes.push(format!(
                "cooling for {}{reason}",
                short_duration(now, until)
            ));
        }
        if a.state == marathon_store::AccountState::NeedsLogin {
            notes.push("log in again".to_string());
        }
        if let Some(source) = a.source.as_deref().and_then(|s| s.strip_prefix("import:")) {
            notes.push(format!("shares its refresh token with {source}"));
        }
        let note = notes.join("; ");
        table.row(vec![
            cell(&a.provider),
            cell(&a.label),
            cell(kind_name(a)),
            state_cell(a, style),
            cell(a.priority.to_string()),
            if a.enabled {
                cell("yes")
            } else {
                (String::from("no"), style.dim("no"))
            },
            cell(note),
        ]);
    }
    out!("{}", table.render(style));
    Ok(())
}

/// What asking for the live view found.
enum Live {
    View(serde_json::Value),
    NotRunning,
    /// Which proxy was asked (and did not answer).
    NoAnswer(String),
}

/// The running proxy's `/_marathon/status`: the proxy `serve` recorded, else
/// one at the configured address (started another way).
fn live_status(ctx: &Context, config: Option<&Config>) -> Live {
    let recorded = marathon_store::serve_record::find(&ctx.paths.data_dir);
    let (addr, whom) = match (&recorded, config) {
        (Some(r), _) => (r.addr, format!("the proxy at {} (pid {})", r.url(), r.pid)),
        (None, Some(c)) => {
            let mut addr = c.server.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            (addr, String::new())
        }
        (None, None) => return Live::NotRunning,
    };
    match fetch_status(addr, config) {
        Some(v) => Live::View(v),
        // Nothing recorded and nothing at the configured address.
        None if recorded.is_none() => Live::NotRunning,
        None => Live::NoAnswer(whom),
    }
}

/// `GET /_marathon/status` at `addr`, with the access key when one is set.
fn fetch_status(addr: std::net::SocketAddr, config: Option<&Config>) -> Option<serde_json::Value> {
    let mut request = http::Request::get(format!("http://{addr}/_marathon/status"));
    if let Some(key) = config.and_then(|c| c.server.access_keys.first()) {
        request = request.header("x-marathon-key", key.expose());
    }
    let request = request.body(Full::default()).ok()?;
    // `status` is a one-shot command: a runtime of its own for one request.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let client = ProxyClient::new(std::time::Duration::from_millis(500));
    let reply = runtime.block_on(client.send(request)).ok()?;
    if reply.status != http::StatusCode::OK {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&reply.body).ok()?;
    v.get("providers").is_some().then_some(v)
}

fn print_live(live: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(live)?);
        return Ok(());
    }
    let style = Style::stdout();
    let now = UnixMillis(live["now"].as_u64().unwrap_or_default());
    outln!("live view from the running proxy");
    let mut table = Table::new(&[
        "PROVIDER",
        "LABEL",
        "KIND",
        "STATE",
        "RETRY IN",
        "OK",
        "FAILED",
        "LAST ERROR",
        "QUOTA",
    ]);
    let mut any = false;
    for p in live["providers"].as_array().into_iter().flatten() {
        for a in p["accounts"].as_array().into_iter().flatten() {
            any = true;
            let state = a["health"]["state"].as_str().unwrap_or("?");
            let state_cell = match state {
                "ready" => (state.to_string(), style.green(state)),
                "cooling" | "probing" => (state.to_string(), style.yellow(state)),
                _ => (state.to_string(), style.red(state)),
            };
            let retry = a["cooldown_remaining_ms"]
                .as_u64()
                .map(|ms| short_duration(now, UnixMillis(now.0 + ms)))
                .unwrap_or_default();
            let quota: Vec<String> = a["usage"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|w| {
                    let u = w["utilization"].as_f64().unwrap_or(0.0);
                    let resets = w["resets_at"]
                        .as_u64()
                        .filter(|t| *t > now.0)
                        .map(|t| format!(" resets in {}", short_duration(now, UnixMillis(t))))
                        .unwrap_or_default();
                    format!(
                        "{} {} {:>3.0}%{resets}",
                        w["name"].as_str().unwrap_or("?"),
                        bar(u),
                        u * 100.0
                    )
                })
                .collect();
            table.row(vec![
                cell(p["name"].as_str().unwrap_or("?")),
                cell(a["label"].as_str().unwrap_or("?")),
                cell(a["kind"].as_str().unwrap_or("?")),
                state_cell,
                cell(retry),
                cell(a["successes"].to_string()),
                cell(a["failures"].to_string()),
                cell(a["last_reason"].as_str().unwrap_or("")),
                cell(quota.join(", ")),
            ]);
        }
    }
    if !any {
        outln!("{NO_ACCOUNTS}");
        return Ok(());
    }
    out!("{}", table.render(style));
    Ok(())
}

/// `[#####.....]`: ten cells of utilisation.
fn bar(u: f64) -> String {
    let filled = (u.clamp(0.0, 1.0) * 10.0).round() as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(10 - filled))
}

fn is_cooling(h: &HotAccount, now: UnixMillis) -> bool {
    h.cooling_until.is_some_and(|t| t > now)
}

/// How long from `now` until `until`, as everywhere else in marathon.
fn short_duration(now: UnixMillis, until: UnixMillis) -> String {
    HumanDuration(now.until(until)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_durations() {
        let t = UnixMillis(1_000_000);
        assert_eq!(short_duration(t, UnixMillis(1_012_000)), "12s");
        assert_eq!(short_duration(t, UnixMillis(1_000_000 + 185_000)), "3m05s");
        assert_eq!(
            short_duration(t, UnixMillis(1_000_000 + 4 * 3_600_000 + 600_000)),
            "4h10m"
        );
        assert_eq!(
            short_duration(t, UnixMillis(1_000_000 + 2 * 86_400_000 + 3_600_000)),
            "2d01h"
        );
    }
}
