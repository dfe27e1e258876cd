//! `marathon status --watch`: the live terminal view. Per provider its
//! accounts, their state, countdowns, quota window bars (the forecast
//! marked), requests per minute, and the recent events; `q` quits.
//!
//! The data is the status report every other view reads: from the running
//! proxy (`/_marathon/status` and `/_marathon/events/recent`, polled each
//! second), else from the store. Colour follows NO_COLOR; narrow terminals
//! lose columns, not rows.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use marathon_core::fmt::HumanDuration;
use marathon_core::status::{AccountReport, AccountState, StatusReport, WindowReport};
use marathon_core::{Clock as _, SystemClock, UnixMillis};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use ratatui::{DefaultTerminal, Frame};

use super::Context;
use super::proxy_client::ProxyClient;
use super::status::{access_key, get_json, offline_report, proxy_addr};

/// How often the data is fetched again (the countdowns move with it).
const REFRESH: Duration = Duration::from_secs(1);
/// Below this width the view drops its less important columns.
const NARROW: u16 = 100;
/// Events kept for the bottom pane.
const EVENTS: usize = 50;

/// Where the view's data comes from (one value per run: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Source {
    Live {
        addr: std::net::SocketAddr,
        key: Option<String>,
        client: ProxyClient,
        runtime: tokio::runtime::Runtime,
    },
    Store,
}

/// What one frame shows.
struct View {
    report: Option<StatusReport>,
    /// Summaries of the recent events, newest first.
    events: Vec<String>,
    origin: String,
    color: bool,
}

pub(crate) fn run(ctx: &Context, offline: bool) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!("--watch needs a terminal; use `marathon status --json` in scripts");
    }
    let config = ctx.config().ok();
    let source = match proxy_addr(ctx, config.as_ref()).filter(|_| !offline) {
        Some((addr, _)) => Source::Live {
            addr,
            key: access_key(config.as_ref()).map(str::to_owned),
            client: ProxyClient::new(Duration::from_millis(700)),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        },
        None => Source::Store,
    };
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut terminal = ratatui::init();
    let result = watch_loop(ctx, &source, color, &mut terminal);
    ratatui::restore();
    result
}

fn watch_loop(
    ctx: &Context,
    source: &Source,
    color: bool,
    terminal: &mut DefaultTerminal,
) -> anyhow::Result<()> {
    let mut view = View {
        report: None,
        events: Vec::new(),
        origin: String::new(),
        color,
    };
    // Whatever the terminal showed before must not show through the first frame.
    terminal.clear()?;
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            fetch(ctx, source, &mut view);
            terminal.draw(|f| draw(f, &view))?;
            next = Instant::now() + REFRESH;
        }
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            match event::read()? {
                Event::Key(k) if k.kind != KeyEventKind::Release => {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        return Ok(());
                    }
                }
                Event::Resize(..) => {
                    terminal.draw(|f| draw(f, &view))?;
                }
                _ => {}
            }
        }
    }
}

fn fetch(ctx: &Context, source: &Source, view: &mut View) {
    match source {
        Source::Live {
            addr,
            key,
            client,
            runtime,
        } => {
            let key = key.as_deref();
            let (report, recent) = runtime.block_on(async {
                let report: Option<StatusReport> =
                    get_json(client, *addr, key, "status", &[]).await;
                let recent: Option<serde_json::Value> =
                    get_json(client, *addr, key, "events/recent", &[]).await;
                (report, recent)
            });
            if report.is_none() {
                // No proxy (yet, or any more): the stored accounts meanwhile.
                read_store(ctx, view);
                view.origin = format!("no proxy answers at http://{addr}; stored accounts");
                return;
            }
            view.origin = format!("live from http://{addr}");
            view.report = report;
            if let Some(recent) = recent {
                view.events = recent["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .rev()
                    .take(EVENTS)
                    .map(event_line)
                    .collect();
            }
        }
        Source::Store => {
            read_store(ctx, view);
            view.origin = "offline view: stored accounts".into();
        }
    }
}

fn read_store(ctx: &Context, view: &mut View) {
    let read = ctx.store().and_then(|s| Ok((s.list()?, s.load_hot()?)));
    match read {
        Ok((accounts, hot)) => {
            view.report = Some(offline_report(&accounts, &hot, SystemClock.now()));
        }
        Err(e) => view.origin = format!("cannot read the store: {e}"),
    }
}

/// `12:04:05 anthropic: failover personal → work (rate_limit_error)`.
fn event_line(ev: &serde_json::Value) -> String {
    let at = ev["at"].as_u64().map(clock_time).unwrap_or_default();
    let summary = ev["summary"]
        .as_str()
        .or(ev["type"].as_str())
        .unwrap_or("?");
    format!("{at} {summary}")
}

/// `HH:MM:SS` (UTC) of an instant.
fn clock_time(ms: u64) -> String {
    let s = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn draw(f: &mut Frame<'_>, view: &View) {
    let area = f.area();
    let narrow = area.width < NARROW;
    let providers: Vec<_> = view
        .report
        .iter()
        .flat_map(|r| r.providers.iter())
        .filter(|p| !p.accounts.is_empty())
        .collect();
    let now = view.report.as_ref().map_or(UnixMillis(0), |r| r.now);
    let mut constraints = vec![Constraint::Length(1)];
    for p in &providers {
        constraints.push(Constraint::Length(p.accounts.len() as u16 + 3));
    }
    constraints.push(Constraint::Min(3));
    let rows = Layout::vertical(constraints).split(area);
    let title = format!(
        "marathon · {} · {} UTC · q quits",
        view.origin,
        clock_time(now.0)
    );
    f.render_widget(
        Paragraph::new(Line::from(Span::styled(title, paint(view, bold())))),
        rows[0],
    );
    for (i, p) in providers.iter().enumerate() {
        let header = if narrow {
            vec!["account", "state", "retry", "windows"]
        } else {
            vec![
                "account",
                "state",
                "retry in",
                "req/min",
                "ok/failed",
                "windows",
            ]
        };
        let table_rows: Vec<Row<'_>> = p
            .accounts
            .iter()
            .map(|a| account_row(a, now, narrow, view))
            .collect();
        let widths: Vec<Constraint> = if narrow {
            vec![
                Constraint::Length(12),
                Constraint::Length(11),
                Constraint::Length(7),
                Constraint::Min(10),
            ]
        } else {
            vec![
                Constraint::Length(16),
                Constraint::Length(11),
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Min(20),
            ]
        };
        let strategy = p.strategy.as_deref().unwrap_or("");
        let table = Table::new(table_rows, widths)
            .header(Row::new(header).style(paint(view, bold())))
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(format!(" {} {strategy} ", p.name)),
            );
        f.render_widget(table, rows[i + 1]);
    }
    let events: Vec<Line<'_>> = if view.events.is_empty() {
        vec![Line::from("no events yet")]
    } else {
        view.events.iter().map(|e| Line::from(e.as_str())).collect()
    };
    f.render_widget(
        Paragraph::new(events).block(Block::default().borders(Borders::ALL).title(" events ")),
        rows[rows.len() - 1],
    );
}

fn account_row<'a>(a: &'a AccountReport, now: UnixMillis, narrow: bool, view: &View) -> Row<'a> {
    let state_style = match a.state {
        AccountState::Ready => Style::new().fg(Color::Green),
        AccountState::Cooling | AccountState::Probing => Style::new().fg(Color::Yellow),
        AccountState::NeedsLogin => Style::new().fg(Color::Red),
        AccountState::Disabled => Style::new().add_modifier(Modifier::DIM),
    };
    let retry = a
        .retry_in_ms
        .map(|ms| HumanDuration(Duration::from_millis(ms)).to_string())
        .unwrap_or_default();
    let windows: Vec<String> = a
        .windows
        .iter()
        .take(if narrow { 1 } else { usize::MAX })
        .map(|w| window_text(w, now, narrow))
        .collect();
    let state = Span::styled(a.state.as_str().replace('_', " "), paint(view, state_style));
    let mut cells: Vec<ratatui::widgets::Cell<'a>> = vec![
        a.label.as_str().into(),
        Line::from(state).into(),
        retry.into(),
    ];
    if !narrow {
        let count = |n: Option<u64>| n.map_or("-".to_string(), |n| n.to_string());
        cells.push(count(a.requests_per_minute).into());
        cells.push(format!("{}/{}", count(a.successes), count(a.failures)).into());
    }
    cells.push(windows.join("  ").into());
    Row::new(cells)
}

/// `5h [####|.....] 42% ↻2h10m !1h05m`: the bar fills with the share used;
/// `|` marks, on the time left to the reset, where the forecast runs out.
fn window_text(w: &WindowReport, now: UnixMillis, narrow: bool) -> String {
    const CELLS: usize = 10;
    let used = w.utilization.clamp(0.0, 1.0);
    let filled = (used * CELLS as f64).round() as usize;
    let mut bar: Vec<char> = (0..CELLS)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    let forecast = match (w.runs_out_at, w.resets_at) {
        (Some(out), Some(reset)) if out > now && out < reset => {
            let share = (out.0 - now.0) as f64 / (reset.0 - now.0) as f64;
            let at = ((share * CELLS as f64) as usize).min(CELLS - 1);
            bar[at] = '|';
            Some(out)
        }
        _ => None,
    };
    let bar: String = bar.into_iter().collect();
    let mut text = format!("{} [{bar}] {:>3.0}%", w.name, used * 100.0);
    if narrow {
        return text;
    }
    if let Some(reset) = w.resets_at.filter(|t| *t > now) {
        text.push_str(&format!(" resets {}", HumanDuration(now.until(reset))));
    }
    if let Some(out) = forecast {
        text.push_str(&format!(" out in {}", HumanDuration(now.until(out))));
    }
    text
}

fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

/// `style` unless NO_COLOR asks for none.
fn paint(view: &View, style: Style) -> Style {
    if view.color { style } else { Style::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bars_mark_the_forecast() {
        let w = WindowReport {
            name: "5h".into(),
            utilization: 0.4,
            resets_at: Some(UnixMillis(10_000_000)),
            runs_out_at: Some(UnixMillis(5_000_000)),
            burn_per_hour: None,
            window_minutes: Some(300),
            status: None,
        };
        let text = window_text(&w, UnixMillis(0), false);
        assert_eq!(text, "5h [####.|....]  40% resets 2h46m out in 1h23m");
        assert_eq!(window_text(&w, UnixMillis(0), true), "5h [####.|....]  40%");
    }
}
