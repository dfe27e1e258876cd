//! Upstream outcome → [`Classification`]: who is to blame, why, and when the
//! account may be used again.
//!
//! The decision reads the body as well as the status, because status alone lies
//! in both directions: Anthropic reports an empty credit balance as a `400`, a
//! Codex plan without access is a `403` that no refresh will fix, and an
//! overload can arrive as an error event inside a `200` stream.
//!
//! # Rules, in order
//!
//! 1. No response: [`Outcome::Transport`] → [`Class::Transport`] (`connect`,
//!    `reset`, `timeout`); [`Outcome::ClientCancelled`] → [`Class::Cancelled`].
//! 2. `2xx`: [`Class::Success`], unless the peeked body holds an SSE error event,
//!    which is then classified like [`Outcome::StreamError`].
//! 3. The error body's message says the account cannot pay ("credit balance is too
//!    low", "organization has been disabled") → [`Class::Unusable`].
//! 4. The first error type/code with a decisive meaning, in any provider's shape
//!    (table in [`decisive_class`]): e.g. `insufficient_quota` → Unusable even on a
//!    429, `overloaded_error` → Provider whatever the status.
//! 5. The status: 401 Auth, 402 Unusable, 403 Forbidden, 429 RateLimited,
//!    5xx (incl. 529) Provider, other 4xx Request.
//!    For an in-stream error there is no status: request-shaped types
//!    (`invalid_request_error`, `context_length_exceeded`, ...) → Request, anything
//!    else → Provider (the stream broke on the provider's side).
//!
//! Every provider's body shape is recognised whatever the [`ApiFlavor`], because
//! gateways and OpenAI-compatible relays mix them; the flavor is accepted for
//! provider-specific rules and currently changes no decision.
//!
//! `reason` is the provider's error type/code, kept only as a safe
//! [`Reason`] word (never message text, never a key-shaped or known secret) — `credit_balance_too_low` / `organization_disabled` for
//! rule 3 — else `http_<status>`, `stream_error`, `connect`, `reset`, `timeout`
//! or `cancelled`.
//!
//! `reset` is read with the full hint chain ([`crate::hints::reset_hint`]) for the
//! quota classes (RateLimited, Unusable), with explicit retry instructions only
//! ([`crate::hints::retry_hint`]) for the other failures, and is `None` for
//! success, transport failures and cancellations. `usage` comes from the headers
//! of every response, success included.

use crate::clock::UnixMillis;
use crate::hints::{self, ErrorBody};
use crate::outcome::{ApiFlavor, Class, Classification, HeaderLookup, Outcome, TransportFailure};
use crate::reason::Reason;
use crate::sse::ErrorScanner;

/// Classifies one upstream outcome. Never panics, whatever the body holds.
pub fn classify(flavor: ApiFlavor, outcome: &Outcome<'_>, now: UnixMillis) -> Classification {
    let _ = flavor;
    match outcome {
        Outcome::Response {
            status,
            headers,
            body,
        } => classify_response(*status, *headers, body, now),
        Outcome::StreamError { data } => classify_error(None, NO_HEADERS, data, now),
        Outcome::Transport(failure) => Classification {
            class: Class::Transport,
            status: None,
            reason: Reason::fixed(transport_reason(*failure)),
            reset: None,
            usage: Vec::new(),
        },
        Outcome::ClientCancelled => Classification {
            class: Class::Cancelled,
            status: None,
            reason: Reason::fixed("cancelled"),
            reset: None,
            usage: Vec::new(),
        },
    }
}

/// The short reason for a transport failure.
pub fn transport_reason(failure: TransportFailure) -> &'static str {
    match failure {
        TransportFailure::Connect => "connect",
        TransportFailure::ResetBeforeResponse => "reset",
        TransportFailure::Timeout => "timeout",
    }
}

/// The class an HTTP status implies when the body says nothing decisive.
pub fn status_class(status: u16) -> Class {
    match status {
        200..=299 => Class::Success,
        401 => Class::Auth,
        402 => Class::Unusable,
        403 => Class::Forbidden,
        429 => Class::RateLimited,
        // Informational and redirects are passed through like request errors.
        100..=199 | 300..=499 => Class::Request,
        // 5xx (including Anthropic's 529) and nonsense statuses: the provider's side.
        _ => Class::Provider,
    }
}

const NO_HEADERS: &[(&str, &str); 0] = &[];

fn classify_response(
    status: u16,
    headers: &dyn HeaderLookup,
    body: &[u8],
    now: UnixMillis,
) -> Classification {
    let usage = hints::usage_windows(headers);
    if (200..=299).contains(&status) {
        let mut scanner = ErrorScanner::new();
        if let Some(data) = scanner.feed(body).or_else(|| scanner.finish()) {
            let mut c = classify_error(None, headers, &data, now);
            c.status = Some(status);
            c.usage = usage;
            return c;
        }
        return Classification {
            class: Class::Success,
            status: Some(status),
            reason: Reason::http(status),
            reset: None,
            usage,
        };
    }
    let mut c = classify_error(Some(status), headers, body, now);
    c.usage = usage;
    c
}

/// Classifies an error body; `status` is `None` for an in-stream error.
fn classify_error(
    status: Option<u16>,
    headers: &dyn HeaderLookup,
    body: &[u8],
    now: UnixMillis,
) -> Classification {
    let eb = ErrorBody::parse(body);
    let special = eb.message.as_deref().and_then(unusable_message);
    let class = if special.is_some() {
        Class::Unusable
    } else if let Some(class) = eb.tokens.iter().find_map(|t| decisive_class(t.as_str())) {
        class
    } else if let Some(status) = status {
        status_class(status)
    } else if eb.tokens.iter().any(|t| is_request_token(t.as_str())) {
        Class::Request
    } else {
        Class::Provider
    };
    let reason = special
        .map(Reason::fixed)
        .or_else(|| eb.tokens.first().cloned())
        .unwrap_or_else(|| match status {
            Some(s) => Reason::http(s),
            None => Reason::fixed("stream_error"),
        });
    let reset = match class {
        Class::RateLimited | Class::Unusable => hints::quota_hint(headers, &eb, now),
        Class::Success | Class::Cancelled | Class::Transport => None,
        Class::Auth | Class::Forbidden | Class::Provider | Class::Request => {
            hints::retry_only_hint(headers, &eb, now)
        }
    };
    Classification {
        class,
        status,
        reason,
        reset,
        usage: Vec::new(),
    }
}

/// Messages that mean "this account cannot pay / is switched off", whatever the
/// status and type say (Anthropic reports both as a 400 `invalid_request_error`).
fn unusable_message(message: &str) -> Option<&'static str> {
    let m = message.to_ascii_lowercase();
    if m.contains("credit balance is too low") {
        Some("credit_balance_too_low")
    } else if m.contains("organization has been disabled") {
        Some("organization_disabled")
    } else {
        None
    }
}

/// The class an error type/code decides on its own, across providers. Types that
/// merely echo the status (`invalid_request_error`, `api_error`) are not here:
/// the status decides for them.
pub fn decisive_class(token: &str) -> Option<Class> {
    Some(match token {
        // Billing, plan and account state: no cooldown short of a human fixes these.
        "insufficient_quota"
        | "billing_hard_limit_reached"
        | "billing_not_active"
        | "account_deactivated"
        | "deactivated_workspace"
        | "usage_not_included"
        | "access_terminated"
        | "BILLING_DISABLED" => Class::Unusable,
        // Rate and quota windows.
        "rate_limit_error"
        | "rate_limit_exceeded"
        | "usage_limit_reached"
        | "RESOURCE_EXHAUSTED"
        | "RATE_LIMIT_EXCEEDED"
        | "QUOTA_EXHAUSTED" => Class::RateLimited,
        // The provider is struggling; not the account's fault.
        "overloaded_error" | "server_is_overloaded" | "UNAVAILABLE" => Class::Provider,
        // Credentials.
        "authentication_error"
        | "invalid_api_key"
        | "UNAUTHENTICATED"
        | "API_KEY_INVALID"
        | "token_expired"
        | "refresh_token_reused"
        | "refresh_token_expired"
        | "refresh_token_invalidated"
        | "invalid_grant" => Class::Auth,
        "permission_error" | "PERMISSION_DENIED" => Class::Forbidden,
        _ => return None,
    })
}

/// Types that blame the request, used when there is no status (in-stream errors).
fn is_request_token(token: &str) -> bool {
    matches!(
        token,
        "invalid_request_error"
            | "not_found_error"
            | "request_too_large"
            | "context_length_exceeded"
            | "invalid_prompt"
            | "INVALID_ARGUMENT"
            | "NOT_FOUND"
            | "FAILED_PRECONDITION"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::HintSource;

    const NOW: UnixMillis = UnixMillis(1_764_331_200_000);

    fn response(status: u16, body: &str) -> Classification {
        let headers = &[];
        classify(
            ApiFlavor::Anthropic,
            &Outcome::Response {
                status,
                headers,
                body: body.as_bytes(),
            },
            NOW,
        )
    }

    #[test]
    fn status_fallbacks() {
        for (status, class) in [
            (200, Class::Success),
            (401, Class::Auth),
            (402, Class::Unusable),
            (403, Class::Forbidden),
            (429, Class::RateLimited),
            (529, Class::Provider),
            (500, Class::Provider),
            (502, Class::Provider),
            (503, Class::Provider),
            (504, Class::Provider),
            (400, Class::Request),
            (404, Class::Request),
            (413, Class::Request),
            (422, Class::Request),
            (418, Class::Request),
            (304, Class::Request),
            (0, Class::Provider),
            (999, Class::Provider),
        ] {
            let c = response(status, "");
            assert_eq!(c.class, class, "{status}");
            assert_eq!(c.reason, format!("http_{status}"));
        }
    }

    #[test]
    fn body_beats_status() {
        let c = response(
            429,
            r#"{"error":{"type":"insufficient_quota","code":"insufficient_quota"}}"#,
        );
        assert_eq!(
            (c.class, c.reason.as_str()),
            (Class::Unusable, "insufficient_quota")
        );
        let c = response(
            400,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(c.class, Class::Provider);
    }

    #[test]
    fn stream_errors_without_known_type() {
        let c = classify(
            ApiFlavor::Openai,
            &Outcome::StreamError {
                data: b"{\"type\":\"error\"}",
            },
            NOW,
        );
        assert_eq!(
            (c.class, c.reason.as_str(), c.status),
            (Class::Provider, "stream_error", None)
        );
        let c = classify(
            ApiFlavor::Openai,
            &Outcome::StreamError {
                data: br#"{"type":"error","code":"context_length_exceeded","message":"too long"}"#,
            },
            NOW,
        );
        assert_eq!(
            (c.class, c.reason.as_str()),
            (Class::Request, "context_length_exceeded")
        );
    }

    // Guards: an upstream that echoes the key it received in every field of
    // its error body (type, code, status, message), in a stream error event
    // and in a usage status header; on main the echoed key became the reason
    // (events, status, the exhausted answer) and the window status.
    #[test]
    fn echoed_credentials_never_become_reasons() {
        let key = "sk-ant-api03-echoed-Zq81xYw0";
        // A secret of plain words, which only the known-secrets check stops.
        let held = crate::Secret::new("plain-words-account-credential");
        let word = held.expose();
        for echo in [key, word] {
            let body = format!(
                r#"{{"type":"error","error":{{"type":"{echo}","code":"{echo}","status":"{echo}","message":"bad key {echo}"}}}}"#
            );
            let c = response(401, &body);
            assert_eq!((c.class, c.reason.as_str()), (Class::Auth, "http_401"));
            let body = format!(r#"{{"error":{{"type":"{echo}","code":"rate_limit_error"}}}}"#);
            assert_eq!(response(429, &body).reason, "rate_limit_error");
            let data = format!(r#"{{"type":"error","code":"{echo}","message":"{echo}"}}"#);
            let c = classify(
                ApiFlavor::Openai,
                &Outcome::StreamError {
                    data: data.as_bytes(),
                },
                NOW,
            );
            assert_eq!(c.reason, "stream_error");
            let headers = &[
                ("anthropic-ratelimit-unified-5h-status", echo),
                ("anthropic-ratelimit-unified-5h-utilization", "0.5"),
            ];
            let c = classify(
                ApiFlavor::Anthropic,
                &Outcome::Response {
                    status: 200,
                    headers,
                    body: b"",
                },
                NOW,
            );
            assert_eq!(c.usage.len(), 1);
            assert_eq!(c.usage[0].status, None);
        }
    }

    #[test]
    fn provider_error_ignores_quota_headers() {
        let headers = &[
            ("x-codex-primary-used-percent", "37.5"),
            ("x-codex-primary-reset-at", "1764770400"),
            ("retry-after", "5"),
        ];
        let c = classify(
            ApiFlavor::Openai,
            &Outcome::Response {
                status: 503,
                headers,
                body: br#"{"error":{"code":"server_is_overloaded"}}"#,
            },
            NOW,
        );
        assert_eq!(c.class, Class::Provider);
        let reset = c.reset.unwrap();
        assert_eq!(
            (reset.at, reset.source),
            (UnixMillis(NOW.0 + 5_000), HintSource::RetryAfterSeconds)
        );
    }
}
