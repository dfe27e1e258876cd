//! Operational endpoints under `/_marathon/`: health, status (JSON), events
//! (SSE), metrics (Prometheus text) and a small dashboard page.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use crate::body::ProxyBody;
use crate::state::AppState;

pub(crate) fn route(state: &Arc<AppState>, path: &str) -> Response<ProxyBody> {
    match path {
        "health" => json(StatusCode::OK, &json!({"status": "ok"})),
        "status" => json(StatusCode::OK, &status(state)),
        "metrics" => {
            let text = crate::metrics::render(
                state
                    .providers
                    .iter()
                    .map(|(n, p)| (n.as_str(), &p.metrics)),
            );
            let mut r = Response::new(ProxyBody::full(text));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "events" => events(state),
        "" | "dashboard" => {
            let mut r = Response::new(ProxyBody::full(DASHBOARD));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        _ => json(
            StatusCode::NOT_FOUND,
            &json!({"error": "unknown endpoint; try /_marathon/status"}),
        ),
    }
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The live view: every account's state, cooldown, counters, last error,
/// quota utilisation and resets. Labels only; never a credential.
pub(crate) fn status(state: &AppState) -> serde_json::Value {
    let now = state.now();
    let mut providers: Vec<_> = state.providers.iter().collect();
    providers.sort_by(|a, b| a.0.cmp(b.0));
    let providers: Vec<serde_json::Value> = providers
        .into_iter()
        .map(|(name, rt)| {
            let pool = rt.pool.lock().unwrap_or_else(|e| e.into_inner());
            json!({
                "name": name,
                "upstream": rt.settings.upstream.to_string(),
                "strategy": pool.config().strategy.to_string(),
                "soonest_ready": pool.soonest_ready(now),
                "accounts": pool.status(now),
            })
        })
        .collect();
    json!({"now": now, "version": env!("CARGO_PKG_VERSION"), "providers": providers})
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
    let mut r = Response::new(ProxyBody::Channel(body_rx));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

const DASHBOARD: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>marathon</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin-bottom:1.5rem}td,th{padding:.3rem .8rem;border-bottom:1px solid #ddd;text-align:left}
.ready{color:#080}.cooling{color:#b60}.needs_login,.disabled{color:#b00}.probing{color:#06b}
#log{font-family:monospace;white-space:pre-wrap;background:#f6f6f6;padding:.5rem;max-height:20rem;overflow:auto}
</style></head><body>
<h1>marathon</h1><div id="providers"></div><h2>Events</h2><div id="log"></div>
<script>
function bar(u){const p=Math.round(u*100);return `${p}%`}
async function refresh(){
  const s=await (await fetch('status')).json();
  document.getElementById('providers').innerHTML=s.providers.map(p=>`<h2>${p.name} <small>(${p.strategy}, ${p.upstream})</small></h2>
  <table><tr><th>account</th><th>state</th><th>retry in</th><th>ok</th><th>failed</th><th>last error</th><th>quota</th></tr>
  ${p.accounts.map(a=>`<tr><td>${a.label}</td><td class="${a.health.state||a.health}">${a.health.state||a.health}</td>
  <td>${a.cooldown_remaining?Math.ceil(a.cooldown_remaining.secs)+'s':''}</td><td>${a.successes}</td><td>${a.failures}</td>
  <td>${a.last_reason||''}</td><td>${(a.usage||[]).map(w=>w.name+' '+bar(w.utilization)).join(', ')}</td></tr>`).join('')}</table>`).join('');
}
refresh();setInterval(refresh,2000);
const es=new EventSource('events');
es.addEventListener('marathon',e=>{const d=JSON.parse(e.data);const l=document.getElementById('log');l.textContent=new Date().toLocaleTimeString()+' '+d.summary+'\n'+l.textContent;refresh()});
</script></body></html>
"#;
