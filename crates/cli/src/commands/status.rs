//! `marathon status`: every account and its state — live from the running
//! proxy (found through its record, on whatever port), else from the store.

use marathon_core::fmt::HumanDuration;
use marathon_core::status::{
    AccountReport, AccountState, ProviderReport, STATUS_SCHEMA, Source, StatusReport, WindowReport,
};
use marathon_core::{AccountId, AccountKind, Clock, SystemClock, UnixMillis};
use marathon_store::{HotState, StoredAccount};

use http_body_util::Full;
use marathon_config::Config;

use super::Context;
use super::auth::NO_ACCOUNTS;
use super::proxy_client::ProxyClient;
use crate::cli::StatusArgs;
use crate::output::{Style, Table, cell, errln, out, outln};

pub(crate) fn run(ctx: &Context, args: &StatusArgs) -> anyhow::Result<()> {
    if args.watch {
        return super::watch::run(ctx, args.offline);
    }
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
            Live::View(report) => return print_report(&report, args.json, None),
            Live::NotRunning => "no marathon proxy is running".to_owned(),
            Live::NoAnswer(whom) => format!("{whom} did not answer"),
        }
    };
    let store = ctx.store()?;
    let accounts = store.list()?;
    let hot = store.load_hot()?;
    let report = offline_report(&accounts, &hot, SystemClock.now());
    let offline = Offline {
        path: ctx.store_location(),
        why: why_offline,
        imported: accounts
            .iter()
            .filter_map(|a| {
                let source = a.source.as_deref()?.strip_prefix("import:")?;
                Some((a.id.clone(), source.to_string()))
            })
            .collect(),
    };
    print_report(&report, args.json, Some(&offline))
}

/// What the offline view says besides the report.
struct Offline {
    /// The accounts file.
    path: String,
    /// Why the live view was not shown.
    why: String,
    /// Accounts imported from another tool (sharing its refresh token), by id.
    imported: Vec<(AccountId, String)>,
}

/// The status report from the store alone: accounts.json, and the cooldowns
/// and counters the last proxy saved. Same schema as the live one; what only
/// a running proxy knows (in-flight requests, the last outcome's class) is null.
pub(crate) fn offline_report(
    accounts: &[StoredAccount],
    hot: &HotState,
    now: UnixMillis,
) -> StatusReport {
    let mut accounts: Vec<&StoredAccount> = accounts.iter().collect();
    accounts.sort_by(|a, b| {
        (a.provider.as_str(), a.priority, a.label.as_str()).cmp(&(
            b.provider.as_str(),
            b.priority,
            b.label.as_str(),
        ))
    });
    let mut providers: Vec<ProviderReport> = Vec::new();
    for a in accounts {
        let h = hot.cooldowns.get(&a.id);
        let cooling_until = h.and_then(|h| h.cooling_until).filter(|t| *t > now);
        let state = if !a.enabled {
            AccountState::Disabled
        } else if a.state == marathon_store::AccountState::NeedsLogin {
            AccountState::NeedsLogin
        } else if cooling_until.is_some() {
            AccountState::Cooling
        } else {
            AccountState::Ready
        };
        let cooling_until = cooling_until.filter(|_| state == AccountState::Cooling);
        let report = AccountReport {
            id: a.id.clone(),
            label: a.label.clone(),
            kind: a.kind,
            priority: a.priority,
            enabled: a.enabled,
            state,
            cooling_until,
            retry_in_ms: cooling_until.map(|t| now.until(t).as_millis() as u64),
            last_reason: h
                .and_then(|h| h.reason.clone())
                .filter(|_| cooling_until.is_some()),
            last_class: None,
            failure_streak: None,
            successes: h.map(|h| h.successes),
            failures: h.map(|h| h.failures),
            in_flight: None,
            requests_per_minute: None,
            windows: Vec::new(),
            tokens: None,
            tokens_by_model: Vec::new(),
        };
        match providers.last_mut() {
            Some(p) if p.name == a.provider => p.accounts.push(report),
            _ => providers.push(ProviderReport {
                name: a.provider.clone(),
                upstream: None,
                strategy: None,
                soonest_ready: None,
                capacity_until: None,
                accounts: vec![report],
            }),
        }
    }
    for p in &mut providers {
        p.soonest_ready = p
            .accounts
            .iter()
            .filter_map(|a| match a.state {
                AccountState::Ready | AccountState::Probing => Some(now),
                AccountState::Cooling => a.cooling_until,
                AccountState::NeedsLogin | AccountState::Disabled => None,
            })
            .min();
    }
    StatusReport {
        schema: STATUS_SCHEMA,
        source: Source::Store,
        now,
        version: env!("CARGO_PKG_VERSION").to_string(),
        providers,
        access_keys: Vec::new(),
    }
}

/// What asking for the live view found.
enum Live {
    View(StatusReport),
    NotRunning,
    /// Which proxy was asked (and did not answer).
    NoAnswer(String),
}

/// Where to find the running proxy: the one `serve` recorded (and who it
/// is, for messages), else the configured address.
pub(crate) fn proxy_addr(
    ctx: &Context,
    config: Option<&Config>,
) -> Option<(std::net::SocketAddr, Option<String>)> {
    let recorded = marathon_store::serve_record::find(&ctx.paths.data_dir);
    match (&recorded, config) {
        (Some(r), _) => Some((
            r.addr,
            Some(format!("the proxy at {} (pid {})", r.url(), r.pid)),
        )),
        (None, Some(c)) => {
            let mut addr = c.server.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            Some((addr, None))
        }
        (None, None) => None,
    }
}

/// The running proxy's `/_marathon/status`: the proxy `serve` recorded, else
/// one at the configured address (started another way).
fn live_status(ctx: &Context, config: Option<&Config>) -> Live {
    let Some((addr, recorded)) = proxy_addr(ctx, config) else {
        return Live::NotRunning;
    };
    // `status` is a one-shot command: a runtime of its own for one request.
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Live::NotRunning;
    };
    let client = ProxyClient::new(std::time::Duration::from_millis(500));
    let key = access_key(config);
    match runtime.block_on(get_json(&client, addr, key, "status", &[])) {
        Some(v) => Live::View(v),
        // Nothing recorded and nothing at the configured address.
        None => match recorded {
            None => Live::NotRunning,
            Some(whom) => Live::NoAnswer(whom),
        },
    }
}

/// The access key to present, when the config sets one.
pub(crate) fn access_key(config: Option<&Config>) -> Option<&str> {
    config
        .and_then(|c| c.server.access_keys.first())
        .map(|k| k.key.expose())
}

/// `GET /_marathon/<path>` at `addr` as `T`, with the access key when one
/// is set; `None` for no answer, a refusal or another document.
pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
    client: &ProxyClient,
    addr: std::net::SocketAddr,
    key: Option<&str>,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<T> {
    let mut request = http::Request::get(format!("http://{addr}/_marathon/{path}"));
    if let Some(key) = key {
        request = request.header("x-marathon-key", key);
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Full::default()).ok()?;
    let reply = client.send(request).await.ok()?;
    if reply.status != http::StatusCode::OK {
        return None;
    }
    serde_json::from_slice(&reply.body).ok()
}

fn print_report(
    report: &StatusReport,
    json: bool,
    offline: Option<&Offline>,
) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    match offline {
        Some(o) => outln!("accounts in {} (offline view: {})", o.path, o.why),
        None => outln!("live view from the running proxy"),
    }
    if report.providers.iter().all(|p| p.accounts.is_empty()) {
        outln!("{NO_ACCOUNTS}");
        return Ok(());
    }
    let style = Style::stdout();
    let now = report.now;
    let mut table = Table::new(&[
        "PROVIDER", "LABEL", "KIND", "STATE", "RETRY IN", "OK", "FAILED", "TOKENS", "QUOTA", "NOTE",
    ]);
    for p in &report.providers {
        for a in &p.accounts {
            let state = a.state.as_str().replace('_', " ");
            let state_cell = match a.state {
                AccountState::Ready => (state.clone(), style.green(&state)),
                AccountState::Cooling | AccountState::Probing => {
                    (state.clone(), style.yellow(&state))
                }
                AccountState::NeedsLogin => (state.clone(), style.red(&state)),
                AccountState::Disabled => (state.clone(), style.dim(&state)),
            };
            let retry = a
                .retry_in_ms
                .map(|ms| short_duration(now, UnixMillis(now.0 + ms)))
                .unwrap_or_default();
            let count = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
            let quota: Vec<String> = a.windows.iter().map(|w| window_cell(w, now)).collect();
            table.row(vec![
                cell(&p.name),
                cell(&a.label),
                cell(kind_label(a.kind)),
                state_cell,
                cell(retry),
                cell(count(a.successes)),
                cell(count(a.failures)),
                cell(a.tokens.as_ref().map(tokens_cell).unwrap_or_default()),
                cell(quota.join(", ")),
                cell(notes(a, offline)),
            ]);
        }
    }
    out!("{}", table.render(style));
    print_access_keys(report, style)
}

/// Requests and tokens per named access key (names only; never a key).
fn print_access_keys(report: &StatusReport, style: Style) -> anyhow::Result<()> {
    if report.access_keys.is_empty() {
        return Ok(());
    }
    let mut table = Table::new(&[
        "ACCESS KEY",
        "REQUESTS",
        "INPUT TOKENS",
        "OUTPUT TOKENS",
        "CACHE READ",
        "CACHE WRITE",
    ]);
    for k in &report.access_keys {
        table.row(vec![
            cell(&k.name),
            cell(k.requests.to_string()),
            cell(k.input_tokens.to_string()),
            cell(k.output_tokens.to_string()),
            cell(k.cache_read_tokens.to_string()),
            cell(k.cache_write_tokens.to_string()),
        ]);
    }
    outln!();
    out!("{}", table.render(style));
    Ok(())
}

/// The TOKENS column: what the answers reported since the proxy started,
/// `12.3k in 4.1k out` and the cache reads and writes when there were any.
fn tokens_cell(t: &marathon_core::status::TokenTotals) -> String {
    let mut s = format!("{} in {} out", short_count(t.input), short_count(t.output));
    if t.cache_read > 0 {
        s.push_str(&format!(" {} cached", short_count(t.cache_read)));
    }
    if t.cache_write > 0 {
        s.push_str(&format!(" {} cache write", short_count(t.cache_write)));
    }
    s
}

/// `950`, `12.3k`, `4.1M`, `2.0G`.
fn short_count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

/// The NOTE column: the last error, what to do, where the credential came from.
fn notes(a: &AccountReport, offline: Option<&Offline>) -> String {
    let mut notes = Vec::new();
    if let Some(r) = &a.last_reason {
        notes.push(format!("({r})"));
    }
    if a.state == AccountState::NeedsLogin {
        notes.push("log in again".to_string());
    }
    if let Some((_, source)) = offline.and_then(|o| o.imported.iter().find(|(id, _)| id == &a.id)) {
        notes.push(format!("shares its refresh token with {source}"));
    }
    notes.join("; ")
}

/// `5h [####......]  42% resets in 2h10m`.
fn window_cell(w: &WindowReport, now: UnixMillis) -> String {
    let resets = w
        .resets_at
        .filter(|t| *t > now)
        .map(|t| format!(" resets in {}", short_duration(now, t)))
        .unwrap_or_default();
    format!(
        "{} {} {:>3.0}%{resets}",
        w.name,
        bar(w.utilization),
        w.utilization * 100.0
    )
}

pub(crate) fn kind_label(kind: AccountKind) -> &'static str {
    match kind {
        AccountKind::Oauth => "oauth",
        AccountKind::ApiKey => "api key",
    }
}

/// `[#####.....]`: ten cells of utilisation.
fn bar(u: f64) -> String {
    let filled = (u.clamp(0.0, 1.0) * 10.0).round() as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(10 - filled))
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

    #[test]
    fn token_cells() {
        use marathon_core::status::TokenTotals;
        let t = TokenTotals {
            input: 950,
            output: 12_345,
            cache_read: 0,
            cache_write: 0,
        };
        assert_eq!(tokens_cell(&t), "950 in 12.3k out");
        let t = TokenTotals {
            input: 4_100_000,
            output: 2,
            cache_read: 2_000_000_000,
            cache_write: 1_000,
        };
        assert_eq!(
            tokens_cell(&t),
            "4.1M in 2 out 2.0G cached 1.0k cache write"
        );
    }
}
