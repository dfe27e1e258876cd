//! `marathon statusline`: one line for Claude Code's `statusLine` command —
//! the account the running proxy serves this session from, and its windows.
//!
//! Claude Code runs the command often (after each message) and waits for it,
//! so it is quick and never hangs: stdin is read with a deadline, every
//! request to the proxy has a short timeout, and whatever goes wrong, a line
//! is printed and the exit code is 0.

use std::io::{IsTerminal as _, Read as _};
use std::time::Duration;

use marathon_core::UnixMillis;
use marathon_core::fmt::HumanDuration;
use marathon_core::status::{AccountReport, AccountState, SessionReport, StatusReport};

use super::Context;
use super::proxy_client::ProxyClient;
use super::status::{access_key, get_json, proxy_addr};
use crate::cli::StatuslineArgs;
use crate::output::outln;

/// The most of stdin read (Claude Code's session JSON is a few KiB).
const MAX_INPUT: u64 = 256 * 1024;
/// How long stdin may take to arrive and close.
const INPUT_DEADLINE: Duration = Duration::from_millis(500);
/// How long each request to the proxy may take.
const PROXY_TIMEOUT: Duration = Duration::from_millis(300);

pub(crate) fn run(ctx: &Context, args: &StatuslineArgs) -> anyhow::Result<()> {
    let session = read_session_id();
    outln!("{}", line(ctx, args, session.as_deref()));
    Ok(())
}

/// `session_id` from the JSON on stdin, if it comes in time.
fn read_session_id() -> Option<String> {
    if std::io::stdin().is_terminal() {
        return None;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    // A thread of its own: a reader that never closes stdin must not hold
    // the status line up (the thread dies with the process).
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::stdin().take(MAX_INPUT).read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let text = rx.recv_timeout(INPUT_DEADLINE).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["session_id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn line(ctx: &Context, args: &StatuslineArgs, session: Option<&str>) -> String {
    let config = ctx.config().ok();
    let Some((addr, _)) = proxy_addr(ctx, config.as_ref()) else {
        return "marathon: not running".into();
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return "marathon: ?".into();
    };
    let key = access_key(config.as_ref());
    let client = ProxyClient::new(PROXY_TIMEOUT);
    runtime.block_on(async {
        if let Some(id) = session {
            let found: Option<SessionReport> =
                get_json(&client, addr, key, "session", &[("x-marathon-session", id)]).await;
            let Some(found) = found else {
                return "marathon: not running".to_owned();
            };
            let serving = found
                .accounts
                .iter()
                .find(|a| a.provider == args.provider)
                .or(found.accounts.first());
            if let Some(a) = serving {
                return describe(&a.account, found.now);
            }
        }
        let status: Option<StatusReport> = get_json(&client, addr, key, "status", &[]).await;
        match status {
            Some(s) => overview(&s, &args.provider),
            None => "marathon: not running".to_owned(),
        }
    })
}

/// `work 5h 42% · 7d 12%`, `work cooling 3m05s`.
pub(crate) fn describe(a: &AccountReport, now: UnixMillis) -> String {
    let mut parts = vec![a.label.clone()];
    match a.state {
        AccountState::Ready | AccountState::Probing => {}
        AccountState::Cooling => parts.push(match a.retry_in_ms {
            Some(ms) => format!("cooling {}", HumanDuration(Duration::from_millis(ms))),
            None => "cooling".into(),
        }),
        other => parts.push(other.as_str().replace('_', " ")),
    }
    let windows: Vec<String> = a
        .windows
        .iter()
        .map(|w| {
            let mut s = format!("{} {:.0}%", w.name, w.utilization * 100.0);
            if let Some(out) = w.runs_out_at.filter(|t| *t > now) {
                s.push_str(&format!(
                    " (out in {})",
                    HumanDuration(Duration::from_millis(out.0 - now.0))
                ));
            }
            s
        })
        .collect();
    if windows.is_empty() {
        parts.join(" ")
    } else {
        format!("{} {}", parts.join(" "), windows.join(" · "))
    }
}

/// Before the session's first request: the provider's accounts at a glance.
fn overview(s: &StatusReport, provider: &str) -> String {
    let Some(p) = s.providers.iter().find(|p| p.name == provider) else {
        return format!("marathon: no provider {provider}");
    };
    let ready = p
        .accounts
        .iter()
        .filter(|a| matches!(a.state, AccountState::Ready | AccountState::Probing))
        .count();
    match p.accounts.iter().find(|a| a.state == AccountState::Ready) {
        Some(next) => format!(
            "marathon {ready}/{} ready · next {}",
            p.accounts.len(),
            describe(next, s.now)
        ),
        None => format!("marathon {ready}/{} ready", p.accounts.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use marathon_core::status::WindowReport;

    fn account(state: AccountState, windows: &[(&str, f64)]) -> AccountReport {
        AccountReport {
            id: marathon_core::AccountId("a".into()),
            label: "work".into(),
            kind: marathon_core::AccountKind::Oauth,
            priority: 0,
            enabled: true,
            state,
            cooling_until: None,
            retry_in_ms: Some(185_000),
            last_reason: None,
            last_class: None,
            failure_streak: None,
            successes: None,
            failures: None,
            in_flight: None,
            requests_per_minute: None,
            windows: windows
                .iter()
                .map(|(n, u)| WindowReport {
                    name: (*n).into(),
                    utilization: *u,
                    resets_at: None,
                    runs_out_at: None,
                    burn_per_hour: None,
                    window_minutes: None,
                    status: None,
                })
                .collect(),
            tokens: None,
            tokens_by_model: Vec::new(),
        }
    }

    #[test]
    fn one_line_with_the_windows() {
        let a = account(AccountState::Ready, &[("5h", 0.42), ("7d", 0.12)]);
        assert_eq!(describe(&a, UnixMillis(0)), "work 5h 42% · 7d 12%");
        let a = account(AccountState::Cooling, &[]);
        assert_eq!(describe(&a, UnixMillis(0)), "work cooling 3m05s");
        let a = account(AccountState::NeedsLogin, &[]);
        assert_eq!(describe(&a, UnixMillis(0)), "work needs login");
    }
}
