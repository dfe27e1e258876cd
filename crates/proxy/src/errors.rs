//! Answers marathon writes itself, in the provider's own error format so
//! clients and SDKs show them properly.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use marathon_core::decision::AttemptTrace;
use marathon_core::fmt::HumanDuration;
use marathon_core::pool::{AccountStatus, Exhausted, Health};
use marathon_core::{ApiFlavor, UnixMillis};
use serde_json::json;

use crate::body::ProxyBody;
use crate::forward::add_trace_headers;

/// An error body in the provider's format.
pub(crate) fn error_body(
    flavor: ApiFlavor,
    status: StatusCode,
    kind: &str,
    message: &str,
) -> serde_json::Value {
    match flavor {
        ApiFlavor::Anthropic => {
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        ApiFlavor::Google => {
            json!({"error": {"code": status.as_u16(), "message": message, "status": kind}})
        }
        ApiFlavor::Openai | ApiFlavor::Copilot => {
            json!({"error": {"message": message, "type": kind, "param": null, "code": kind}})
        }
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A marathon-side failure (bad path, unreadable body, unreachable upstream).
pub(crate) fn proxy_error(
    flavor: ApiFlavor,
    status: StatusCode,
    message: &str,
) -> Response<ProxyBody> {
    let kind = match (flavor, status.as_u16()) {
        (ApiFlavor::Anthropic, 400..=499) => "invalid_request_error",
        (ApiFlavor::Anthropic, _) => "api_error",
        (ApiFlavor::Google, 400..=499) => "INVALID_ARGUMENT",
        (ApiFlavor::Google, _) => "UNAVAILABLE",
        (_, 400..=499) => "invalid_request_error",
        _ => "upstream_error",
    };
    json_response(
        status,
        &error_body(flavor, status, kind, &format!("marathon: {message}")),
    )
}

/// "All accounts unavailable": 429 at once, `retry-after` = the soonest
/// reset, a body naming each account's state.
pub(crate) fn exhausted_response(
    flavor: ApiFlavor,
    provider: &str,
    now: UnixMillis,
    ex: &Exhausted,
    trace: &AttemptTrace,
) -> Response<ProxyBody> {
    let states: Vec<String> = ex.accounts.iter().map(|a| describe(a, now)).collect();
    let next = match ex.soonest {
        Some(t) => format!("; the first one is usable again in {}", HumanDuration(now.until(t))),
        None => "; none will recover on its own: run `marathon auth list` and log in again or add an account".into(),
    };
    let message = format!(
        "marathon: all {} {provider} accounts are unavailable ({}){next}",
        ex.accounts.len(),
        if states.is_empty() {
            "no accounts configured: add one with `marathon auth add`".to_string()
        } else {
            states.join(", ")
        },
    );
    let kind = match flavor {
        ApiFlavor::Anthropic => "rate_limit_error",
        ApiFlavor::Google => "RESOURCE_EXHAUSTED",
        _ => "rate_limit_exceeded",
    };
    let mut body = error_body(flavor, StatusCode::TOO_MANY_REQUESTS, kind, &message);
    if let Some(obj) = body.as_object_mut() {
        obj.insert(
            "marathon".into(),
            json!({
                "provider": provider,
                "soonest_reset": ex.soonest.map(|t| t.as_secs()),
                "accounts": ex.accounts.iter().map(|a| json!({
                    "label": a.label,
                    "state": a.health.as_str(),
                    // Rounded up like `retry-after`: 0.4 s left is not "retry in 0".
                    "retry_in_seconds": a.cooldown_remaining.map(|d| d.as_secs_f64().ceil() as u64),
                    "last_error": a.last_reason,
                })).collect::<Vec<_>>(),
            }),
        );
    }
    let mut r = json_response(StatusCode::TOO_MANY_REQUESTS, &body);
    let retry_after = ex
        .soonest
        .map_or(60, |t| now.until(t).as_secs_f64().ceil().max(1.0) as u64);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    add_trace_headers(r.headers_mut(), None, trace);
    r
}

fn describe(a: &AccountStatus, now: UnixMillis) -> String {
    let _ = now;
    match (&a.health, a.cooldown_remaining) {
        (Health::Cooling { .. }, Some(d)) => format!(
            "{} cooling for {}{}",
            a.label,
            HumanDuration(d),
            a.last_reason
                .as_deref()
                .map(|r| format!(" after {r}"))
                .unwrap_or_default()
        ),
        (Health::NeedsLogin, _) => format!("{} needs login", a.label),
        (Health::Disabled, _) => format!("{} disabled", a.label),
        (h, _) => format!("{} {}", a.label, h.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_follow_each_providers_format() {
        let a = error_body(
            ApiFlavor::Anthropic,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "m",
        );
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "rate_limit_error");
        let o = error_body(
            ApiFlavor::Openai,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "m",
        );
        assert_eq!(o["error"]["code"], "rate_limit_exceeded");
        let g = error_body(
            ApiFlavor::Google,
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "m",
        );
        assert_eq!(g["error"]["code"], 429);
    }
}
