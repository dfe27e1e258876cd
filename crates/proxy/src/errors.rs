//! Answers marathon writes itself, in the provider's own error format so
//! clients and SDKs show them properly.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use marathon_core::ApiFlavor;
use marathon_core::decision::AttemptTrace;
use marathon_core::rotation::Refusal;
use serde_json::json;

use crate::body::ProxyBody;
use crate::headers::add_trace_headers;

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

/// A marathon-side failure (bad path, unreadable body, ...).
pub(crate) fn proxy_error(
    flavor: ApiFlavor,
    status: StatusCode,
    message: &str,
) -> Response<ProxyBody> {
    json_response(
        status,
        &error_body(
            flavor,
            status,
            error_kind(flavor, status),
            &format!("marathon: {message}"),
        ),
    )
}

/// The provider's error type for a status marathon answers with.
fn error_kind(flavor: ApiFlavor, status: StatusCode) -> &'static str {
    match (flavor, status.as_u16()) {
        (ApiFlavor::Anthropic, 429) => "rate_limit_error",
        (ApiFlavor::Anthropic, 400..=499) => "invalid_request_error",
        (ApiFlavor::Anthropic, _) => "api_error",
        (ApiFlavor::Google, 429) => "RESOURCE_EXHAUSTED",
        (ApiFlavor::Google, 400..=499) => "INVALID_ARGUMENT",
        (ApiFlavor::Google, _) => "UNAVAILABLE",
        (_, 429) => "rate_limit_exceeded",
        (_, 400..=499) => "invalid_request_error",
        _ => "upstream_error",
    }
}

/// The rotation machine's own answer ("all accounts unavailable", "gave up
/// after N attempts", "could not reach the upstream") in the provider's
/// format, with `retry-after` and the attempt trace. An exhaustion answer
/// carries each account's state under `marathon` for programs.
pub(crate) fn refusal_response(
    flavor: ApiFlavor,
    provider: &str,
    refusal: &Refusal,
    trace: &AttemptTrace,
) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let message = format!("marathon: {}", refusal.message);
    let mut body = error_body(flavor, status, error_kind(flavor, status), &message);
    if let (Some(ex), Some(obj)) = (&refusal.accounts, body.as_object_mut()) {
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
    let mut r = json_response(status, &body);
    if let Some(seconds) = refusal.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    add_trace_headers(r.headers_mut(), refusal.account.as_deref(), trace);
    r
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
