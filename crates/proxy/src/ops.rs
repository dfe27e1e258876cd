//! Operational endpoints under `/_marathon/`: health, status (JSON), events
//! (SSE), metrics (Prometheus text) and a small dashboard page.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use marathon_core::status::{
    AccountReport, ProviderReport, STATUS_SCHEMA, SessionAccount, SessionReport, Source,
    StatusReport,
};

use crate::body::ProxyBody;
use crate::state::AppState;

pub(crate) fn route(
    state: &Arc<AppState>,
    path: &str,
    headers: &http::HeaderMap,
) -> Response<ProxyBody> {
    match path {
        "events/recent" => json(StatusCode::OK, &recent_events(state)),
        "activity" => json(StatusCode::OK, &activity(state)),
        "session" => session(state, headers),
        p if p.starts_with("accounts/") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "account actions are POST requests"}),
        ),
        "health" => json(StatusCode::OK, &json!({"status": "ok"})),
        "status" => json(
            StatusCode::OK,
            &serde_json::to_value(status(state)).unwrap_or_default(),
        ),
        "metrics" => {
            let mut text = crate::metrics::render(
                state
                    .providers
                    .iter()
                    .map(|(n, p)| (n.as_str(), &p.metrics)),
            );
            state.access.render_metrics(&mut text);
            let report = status(state);
            let gauges: Vec<crate::metrics::AccountGauges> = report
                .providers
                .into_iter()
                .map(|p| crate::metrics::AccountGauges {
                    provider: p.name,
                    accounts: p.accounts,
                    capacity_until: p.capacity_until,
                })
                .collect();
            crate::metrics::render_accounts(&mut text, &gauges, report.now);
            crate::metrics::render_tokens(&mut text, &gauges);
            let mut r = Response::new(ProxyBody::full(text));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            add_common_headers(r.headers_mut());
            r
        }
        "events" => events(state),
        "" | "dashboard" => dashboard_file(DASHBOARD_HTML, "text/html; charset=utf-8"),
        "dashboard.js" => dashboard_file(DASHBOARD_JS, "text/javascript; charset=utf-8"),
        "dashboard.css" => dashboard_file(DASHBOARD_CSS, "text/css; charset=utf-8"),
        _ => json(
            StatusCode::NOT_FOUND,
            &json!({"error": "unknown endpoint; try /_marathon/status"}),
        ),
    }
}

pub(crate) fn json(status: StatusCode, v: &serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(html_safe_json(v)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    add_common_headers(r.headers_mut());
    r
}

/// The live view: every account's state, cooldown, counters, last error,
/// quota utilisation and resets, in the schema the offline view shares
/// ([`StatusReport`]). Labels only; never a credential.
pub(crate) fn status(state: &AppState) -> StatusReport {
    let now = state.now();
    let mut providers: Vec<_> = state.providers.iter().collect();
    providers.sort_by(|a, b| a.0.cmp(b.0));
    let providers = providers
        .into_iter()
        .map(|(name, rt)| {
            let pool = rt.pool.lock().unwrap_or_else(|e| e.into_inner());
            let tokens = rt.tokens.lock().unwrap_or_else(|e| e.into_inner());
            ProviderReport {
                name: name.clone(),
                upstream: Some(rt.settings.upstream.to_string()),
                strategy: Some(pool.config().strategy.to_string()),
                soonest_ready: pool.soonest_ready(now),
                capacity_until: pool.capacity_until(now),
                accounts: pool
                    .status(now)
                    .iter()
                    .map(|a| {
                        let mut r = AccountReport::live(a, now);
                        r.requests_per_minute = state.bus.activity.per_minute(name, &a.label, now);
                        if let Some(t) = tokens.account(&a.id) {
                            r.set_tokens(t);
                        }
                        r
                    })
                    .collect(),
            }
        })
        .collect();
    StatusReport {
        schema: STATUS_SCHEMA,
        source: Source::Live,
        now,
        version: env!("CARGO_PKG_VERSION").to_string(),
        providers,
        access_keys: state.access.status(),
    }
}

/// The last events (oldest first), so a view opened now shows what just happened.
fn recent_events(state: &AppState) -> serde_json::Value {
    let events: Vec<serde_json::Value> = state
        .bus
        .activity
        .recent()
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    json!({"events": events})
}

/// Requests and failovers per account and minute over the last hour.
fn activity(state: &AppState) -> serde_json::Value {
    let now = state.now();
    let mut providers: Vec<_> = state.providers.iter().collect();
    providers.sort_by(|a, b| a.0.cmp(b.0));
    let providers: Vec<serde_json::Value> = providers
        .into_iter()
        .map(|(name, rt)| {
            let labels: Vec<String> = {
                let pool = rt.pool.lock().unwrap_or_else(|e| e.into_inner());
                pool.status(now).into_iter().map(|a| a.label).collect()
            };
            let accounts: Vec<serde_json::Value> = labels
                .iter()
                .map(|label| {
                    let h = state.bus.activity.hour(name, label, now);
                    json!({"label": h.label, "requests": h.requests, "failovers": h.failovers})
                })
                .collect();
            json!({"name": name, "accounts": accounts})
        })
        .collect();
    json!({"now": now, "minutes": crate::activity::MINUTES, "providers": providers})
}

/// The header `marathon statusline` names a client session in.
pub(crate) const SESSION_HEADER: &str = "x-marathon-session";

/// Which account serves the session named in [`SESSION_HEADER`]: the id is
/// hashed with the proxy's key exactly as a request's session header is, and
/// looked up without touching the affinity map.
fn session(state: &AppState, headers: &http::HeaderMap) -> Response<ProxyBody> {
    let Some(id) = headers.get(SESSION_HEADER).filter(|v| !v.is_empty()) else {
        return json(
            StatusCode::BAD_REQUEST,
            &json!({"error": format!("name the session in the {SESSION_HEADER} header")}),
        );
    };
    let key = crate::guard::session_key(&state.session_keys, id.as_bytes());
    let now = state.now();
    let mut providers: Vec<_> = state.providers.iter().collect();
    providers.sort_by(|a, b| a.0.cmp(b.0));
    let accounts = providers
        .into_iter()
        .filter_map(|(name, rt)| {
            let pool = rt.pool.lock().unwrap_or_else(|e| e.into_inner());
            let id = pool.session_account(key)?.clone();
            let status = pool.account_status(&id, now)?;
            let mut account = AccountReport::live(&status, now);
            account.requests_per_minute = state.bus.activity.per_minute(name, &status.label, now);
            if let Some(t) = rt
                .tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .account(&id)
            {
                account.set_tokens(t);
            }
            Some(SessionAccount {
                provider: name.clone(),
                account,
            })
        })
        .collect();
    let report = SessionReport {
        schema: STATUS_SCHEMA,
        now,
        accounts,
    };
    json(
        StatusCode::OK,
        &serde_json::to_value(report).unwrap_or_default(),
    )
}

fn events(state: &Arc<AppState>) -> Response<ProxyBody> {
    let mut rx = state.bus.subscribe();
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(b": marathon events\n\n"))
            .await
            .is_err()
        {
            return;
        }
        let mut keepalive = tokio::time::interval(std::time::Duration::from_secs(15));
        keepalive.tick().await;
        loop {
            let chunk = tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(ev) => Bytes::from(format!("event: marathon\ndata: {}\n\n", ev.json)),
                    Err(RecvError::Lagged(n)) => Bytes::from(format!(": {n} events dropped (slow reader)\n\n")),
                    Err(RecvError::Closed) => return,
                },
                _ = keepalive.tick() => Bytes::from_static(b": keepalive\n\n"),
                () = tx.closed() => return,
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(ProxyBody::Channel(body_rx, None));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    add_common_headers(r.headers_mut());
    r
}

/// The dashboard: a page, its script and its style, all static (the data
/// comes from `status` and `events`, fetched by the script with the access
/// key), so they are served without one.
const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

/// Only the proxy's own script and style, no inline script, no framing, no
/// form posts, no plugins: if data ever reached the page as markup, it could
/// still not run.
const DASHBOARD_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

/// Whether `path` (after `/_marathon/`) is served without the access key:
/// health, and the dashboard's static files, which hold no data.
pub(crate) fn is_public(path: &str) -> bool {
    matches!(
        path,
        "health" | "" | "dashboard" | "dashboard.js" | "dashboard.css"
    )
}

fn dashboard_file(body: &'static str, content_type: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DASHBOARD_CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    add_common_headers(h);
    r
}

/// On every `/_marathon/` answer: no MIME sniffing (JSON is never read as
/// HTML) and no referrer leaving the page.
fn add_common_headers(h: &mut http::HeaderMap) {
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// JSON with `<`, `>` and `&` as `\u` escapes, as Go's encoder does: the
/// same value, but no string in it can ever read as markup.
fn html_safe_json(v: &serde_json::Value) -> String {
    let text = v.to_string();
    if !text.contains(['<', '>', '&']) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_markup_characters_and_keeps_the_value() {
        let v = json!({"label": "<img src=x onerror=alert(1)> & co"});
        let text = html_safe_json(&v);
        assert!(!text.contains(['<', '>', '&']), "{text}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), v);
    }

    /// Guards against account data reaching the page as markup: the script
    /// builds every element and never assigns HTML.
    #[test]
    fn the_dashboard_never_parses_data_as_html() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "createContextualFragment",
            "DOMParser",
            "eval(",
            "new Function",
        ] {
            assert!(!DASHBOARD_JS.contains(sink), "dashboard.js uses {sink}");
            assert!(!DASHBOARD_HTML.contains(sink), "index.html uses {sink}");
        }
        // Only the served script runs (the CSP would block any other).
        assert_eq!(DASHBOARD_HTML.matches("<script").count(), 1);
        assert!(
            DASHBOARD_HTML.contains(r#"<script src="/_marathon/dashboard.js" defer></script>"#)
        );
        assert!(!DASHBOARD_HTML.contains("<style") && !DASHBOARD_HTML.contains("style="));
        let inline_handler = DASHBOARD_HTML.match_indices(" on").any(|(i, _)| {
            let rest = &DASHBOARD_HTML[i + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        });
        assert!(!inline_handler, "no inline event handlers");
        // The key goes in a header, never in a URL.
        assert!(DASHBOARD_JS.contains("'x-marathon-key'"));
        assert!(!DASHBOARD_JS.contains("?key") && !DASHBOARD_JS.contains("&key"));
    }
}
