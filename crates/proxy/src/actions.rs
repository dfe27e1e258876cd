//! The account actions of the dashboard: `POST /_marathon/accounts/<id>/disable`,
//! `.../enable` and `.../priority` (body `{"priority": <n>}`).
//!
//! They change the store (so the change outlives the proxy and other
//! processes see it) and then the pool at once (so the next request obeys
//! it). They are guarded like every `/_marathon/` endpoint (the access key
//! when one is set, the browser checks) and more: only the proxy's own page or
//! a client that is not a browser may call them — a page of a configured
//! `allowed_origins` may use the providers but not change accounts (the
//! server refuses that before routing) — and only with `content-type:
//! application/json`, which no cross-site form or "simple" request can send.

use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use marathon_core::AccountId;
use marathon_core::status::AccountReport;
use serde_json::json;

use crate::body::ProxyBody;
use crate::state::AppState;

/// The largest action body read (`{"priority": -2147483648}` is far smaller).
const MAX_BODY: usize = 1024;

/// What to change.
enum Action {
    Enable(bool),
    Priority,
}

pub(crate) async fn handle(
    state: Arc<AppState>,
    path: &str,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some((id, action)) = path
        .strip_prefix("accounts/")
        .and_then(|rest| rest.rsplit_once('/'))
    else {
        return answer(StatusCode::NOT_FOUND, json!({"error": "unknown action"}));
    };
    let action = match action {
        "disable" => Action::Enable(false),
        "enable" => Action::Enable(true),
        "priority" => Action::Priority,
        _ => return answer(StatusCode::NOT_FOUND, json!({"error": "unknown action"})),
    };
    let json_body = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return answer(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!({"error": "send account actions as content-type: application/json"}),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return answer(StatusCode::BAD_REQUEST, json!({"error": "body too large"})),
    };
    let priority = match action {
        Action::Priority => match serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["priority"].as_i64())
            .and_then(|p| i32::try_from(p).ok())
        {
            Some(p) => Some(p),
            None => {
                return answer(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "send {\"priority\": <integer>}"}),
                );
            }
        },
        Action::Enable(_) => None,
    };
    let id = AccountId(id.into());
    let Some(rt) = state
        .providers
        .values()
        .find(|rt| {
            let pool = rt.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.account_status(&id, state.now()).is_some()
        })
        .cloned()
    else {
        return answer(StatusCode::NOT_FOUND, json!({"error": "no such account"}));
    };
    let store = state.store.clone();
    let target = id.clone();
    let updated = tokio::task::spawn_blocking(move || {
        store.update(&target, &mut |a| match action {
            Action::Enable(on) => a.enabled = on,
            Action::Priority => a.priority = priority.unwrap_or(a.priority),
        })
    })
    .await;
    let stored = match updated {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            tracing::warn!("account action not saved: {e}");
            return answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "the account could not be saved; see the proxy's log"}),
            );
        }
        Err(_) => {
            return answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "failed"}),
            );
        }
    };
    let now = state.now();
    let status = {
        let mut pool = rt.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.upsert(stored.meta());
        pool.account_status(&id, now)
    };
    tracing::info!(
        provider = %stored.provider,
        "account {} changed through /_marathon: enabled={}, priority={}",
        stored.label,
        stored.enabled,
        stored.priority
    );
    match status {
        Some(s) => answer(
            StatusCode::OK,
            serde_json::to_value(AccountReport::live(&s, now)).unwrap_or_default(),
        ),
        None => answer(StatusCode::NOT_FOUND, json!({"error": "no such account"})),
    }
}

fn answer(status: StatusCode, v: serde_json::Value) -> Response<ProxyBody> {
    crate::ops::json(status, &v)
}
