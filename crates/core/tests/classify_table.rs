//! The classification table (DESIGN §2), one row per real provider sample.
//!
//! A row is (name, flavor, now, input) → (class, reason, reset instant + source,
//! usage windows). Adding a provider sample is one fixture file in
//! `tests/fixtures/` and one line here.

mod http_fixture;

use http_fixture::{HOUR, MIN, NOW, NOW26, SEC, at, fx, parse};
use marathon_core::classify::classify;
use marathon_core::{ApiFlavor, Class, Classification, HintSource, Outcome, TransportFailure};
use proptest::prelude::*;

use ApiFlavor::{Anthropic, Copilot, Google, Openai};
use Class::*;
use HintSource::*;
use Input::*;

enum Input {
    /// A raw HTTP response (fixture file or inline text).
    Http(&'static str),
    /// The data payload of an error event inside a 200 stream.
    Stream(&'static [u8]),
    Net(TransportFailure),
    Gone,
}

/// (name, utilization, resets_at ms, status, window minutes)
type U = (
    &'static str,
    f64,
    Option<u64>,
    Option<&'static str>,
    Option<u64>,
);

struct R(
    &'static str,
    ApiFlavor,
    u64,
    Input,
    Class,
    &'static str,
    Option<(u64, HintSource)>,
    &'static [U],
);

const SUB_REJECTED: &[U] = &[
    (
        "5h",
        1.0,
        Some(1_764_334_800_000),
        Some("rejected"),
        Some(300),
    ),
    (
        "7d",
        0.42,
        Some(1_764_770_400_000),
        Some("allowed"),
        Some(10_080),
    ),
];
const SUB_WARNING: &[U] = &[
    (
        "5h",
        0.91,
        Some(1_764_334_800_000),
        Some("allowed_warning"),
        Some(300),
    ),
    (
        "7d",
        0.42,
        Some(1_764_770_400_000),
        Some("allowed"),
        Some(10_080),
    ),
];
const CODEX: &[U] = &[
    ("primary", 1.0, Some(1_764_334_800_000), None, Some(300)),
    (
        "secondary",
        0.375,
        Some(1_764_770_400_000),
        None,
        Some(10_080),
    ),
];
/// Next 08:00 UTC (midnight Pacific standard time) after NOW: the Google daily reset.
const GOOGLE_DAY: u64 = NOW + 20 * HOUR;

#[rustfmt::skip]
fn rows() -> Vec<R> {
    vec![
        // --- Real samples (samples.md) ---
        R("anthropic 429 api key", Anthropic, NOW26, Http(fx!("anthropic_429_api_key.http")), RateLimited, "rate_limit_error", Some((NOW26 + 17 * SEC, RetryAfterSeconds)), &[]),
        R("anthropic 429 subscription, unified rejected", Anthropic, NOW, Http(fx!("anthropic_429_subscription.http")), RateLimited, "http_429", Some((1_764_334_800_000, AnthropicUnified)), SUB_REJECTED),
        R("anthropic 200 subscription, usage", Anthropic, NOW, Http(fx!("anthropic_200_subscription.http")), Success, "http_200", None, SUB_WARNING),
        R("anthropic 529 overloaded", Anthropic, NOW, Http(fx!("anthropic_529_overloaded.http")), Provider, "overloaded_error", None, &[]),
        R("anthropic 200 sse error event", Anthropic, NOW, Http(fx!("anthropic_200_sse_overloaded.http")), Provider, "overloaded_error", None, &[]),
        R("anthropic stream error payload", Anthropic, NOW, Stream(br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#), Provider, "overloaded_error", None, &[]),
        R("anthropic 400 credit balance", Anthropic, NOW, Http(fx!("anthropic_400_credit_balance.http")), Unusable, "credit_balance_too_low", None, &[]),
        R("openai 429 rate limit", Openai, NOW, Http(fx!("openai_429_rate_limit.http")), RateLimited, "rate_limit_exceeded", Some((NOW + 6 * MIN, OpenaiGoDuration)), &[]),
        R("openai 429 insufficient_quota", Openai, NOW, Http(fx!("openai_429_insufficient_quota.http")), Unusable, "insufficient_quota", None, &[]),
        R("openai 401 invalid_api_key", Openai, NOW, Http(fx!("openai_401_invalid_api_key.http")), Auth, "invalid_api_key", None, &[]),
        R("codex 200 usage headers", Openai, NOW, Http(fx!("codex_200_usage.http")), Success, "http_200", None, CODEX),
        R("codex 429 usage_limit_reached resets_at", Openai, NOW, Http(fx!("codex_429_usage_limit_resets_at.http")), RateLimited, "usage_limit_reached", Some((1_764_334_800_000, BodyResetsAt)), CODEX),
        R("codex 429 usage_limit_reached resets_in_seconds", Openai, NOW, Http(fx!("codex_429_usage_limit_resets_in.http")), RateLimited, "usage_limit_reached", Some((NOW + HOUR, BodyResetsInSeconds)), &[]),
        R("codex 403 usage_not_included", Openai, NOW, Http(fx!("codex_403_usage_not_included.http")), Unusable, "usage_not_included", None, &[]),
        R("codex 503 server_is_overloaded", Openai, NOW, Http(fx!("codex_503_server_is_overloaded.http")), Provider, "server_is_overloaded", None, &[]),
        R("codex 402 deactivated_workspace", Openai, NOW, Http(fx!("codex_402_deactivated_workspace.http")), Unusable, "deactivated_workspace", None, &[]),
        R("codex 401 refresh_token_reused", Openai, NOW, Http(fx!("codex_401_refresh_token_reused.http")), Auth, "refresh_token_reused", None, &[]),
        R("google 429 rate limit", Google, NOW, Http(fx!("google_429_rate_limit.http")), RateLimited, "RATE_LIMIT_EXCEEDED", Some((NOW + 34_070, GoogleRetryInfo)), &[]),
        R("google 429 QUOTA_EXHAUSTED", Google, NOW, Http(fx!("google_429_quota_exhausted.http")), RateLimited, "QUOTA_EXHAUSTED", Some((GOOGLE_DAY, GoogleRetryInfo)), &[]),
        R("google 429 PerDay quota", Google, NOW, Http(fx!("google_429_per_day.http")), RateLimited, "RATE_LIMIT_EXCEEDED", Some((GOOGLE_DAY, GoogleRetryInfo)), &[]),
        R("copilot 429 sentence only", Copilot, NOW, Http(fx!("copilot_429_message.http")), RateLimited, "http_429", Some((NOW + 2 * HOUR, Message)), &[]),
        R("oauth 400 invalid_grant", Openai, NOW, Http(fx!("oauth_400_invalid_grant.http")), Auth, "invalid_grant", None, &[]),

        // --- Remaining table rows (bare statuses and provider types) ---
        R("402 bare", Openai, NOW, Http("HTTP/1.1 402\n\n"), Unusable, "http_402", None, &[]),
        R("401 bare", Anthropic, NOW, Http("HTTP/1.1 401\n\n"), Auth, "http_401", None, &[]),
        R("anthropic 401 authentication_error", Anthropic, NOW, Http("HTTP/1.1 401\n\n{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\",\"message\":\"invalid x-api-key\"}}"), Auth, "authentication_error", None, &[]),
        R("403 other", Openai, NOW, Http("HTTP/1.1 403\n\n{\"error\":{\"message\":\"Country, region, or territory not supported\",\"type\":\"request_forbidden\",\"code\":\"unsupported_country_region_territory\"}}"), Forbidden, "unsupported_country_region_territory", None, &[]),
        R("anthropic 403 permission_error", Anthropic, NOW, Http("HTTP/1.1 403\n\n{\"type\":\"error\",\"error\":{\"type\":\"permission_error\",\"message\":\"no access\"}}"), Forbidden, "permission_error", None, &[]),
        R("500 anthropic api_error", Anthropic, NOW, Http("HTTP/1.1 500\n\n{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"Internal server error\"}}"), Provider, "api_error", None, &[]),
        R("502 html", Openai, NOW, Http("HTTP/1.1 502\ncontent-type: text/html\n\n<html><body>502 Bad Gateway</body></html>"), Provider, "http_502", None, &[]),
        R("503 retry-after date", Openai, NOW, Http("HTTP/1.1 503\nretry-after: Fri, 28 Nov 2025 12:00:30 GMT\n\n"), Provider, "http_503", Some((NOW + 30 * SEC, RetryAfterDate)), &[]),
        R("504 empty", Google, NOW, Http("HTTP/1.1 504\n\n"), Provider, "http_504", None, &[]),
        R("400 invalid_request_error", Anthropic, NOW, Http("HTTP/1.1 400\n\n{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"messages: field required\"}}"), Request, "invalid_request_error", None, &[]),
        R("404 not_found_error", Anthropic, NOW, Http("HTTP/1.1 404\n\n{\"type\":\"error\",\"error\":{\"type\":\"not_found_error\",\"message\":\"model: claude-x\"}}"), Request, "not_found_error", None, &[]),
        R("413 request_too_large", Anthropic, NOW, Http("HTTP/1.1 413\n\n{\"type\":\"error\",\"error\":{\"type\":\"request_too_large\",\"message\":\"Request exceeds the maximum allowed number of bytes.\"}}"), Request, "request_too_large", None, &[]),
        R("422 bare", Openai, NOW, Http("HTTP/1.1 422\n\n"), Request, "http_422", None, &[]),
        R("google 400 API_KEY_INVALID", Google, NOW, Http("HTTP/1.1 400\n\n{\"error\":{\"code\":400,\"message\":\"API key not valid. Please pass a valid API key.\",\"status\":\"INVALID_ARGUMENT\",\"details\":[{\"@type\":\"type.googleapis.com/google.rpc.ErrorInfo\",\"reason\":\"API_KEY_INVALID\",\"domain\":\"googleapis.com\"}]}}"), Auth, "API_KEY_INVALID", None, &[]),
        R("connect error", Openai, NOW, Net(TransportFailure::Connect), Transport, "connect", None, &[]),
        R("reset before response", Openai, NOW, Net(TransportFailure::ResetBeforeResponse), Transport, "reset", None, &[]),
        R("timeout", Openai, NOW, Net(TransportFailure::Timeout), Transport, "timeout", None, &[]),
        R("client cancelled", Anthropic, NOW, Gone, Cancelled, "cancelled", None, &[]),
        R("stream rate_limit_error", Anthropic, NOW, Stream(br#"{"type":"error","error":{"type":"rate_limit_error","message":"Rate limited"}}"#), RateLimited, "rate_limit_error", None, &[]),
        R("stream response.failed with sentence", Openai, NOW, Stream(br#"{"type":"response.failed","response":{"error":{"code":"rate_limit_exceeded","message":"Rate limit reached. Please try again in 11.054s."}}}"#), RateLimited, "rate_limit_exceeded", Some((NOW + 11_054, Message)), &[]),

        // --- Edge rows ---
        R("subscription 429 with a shorter retry-after", Anthropic, NOW, Http("HTTP/1.1 429\nretry-after: 17\nanthropic-ratelimit-unified-status: rejected\nanthropic-ratelimit-unified-reset: 1764334800\n\n"), RateLimited, "http_429", Some((1_764_334_800_000, AnthropicUnified)), &[]),
        R("malformed json", Anthropic, NOW, Http("HTTP/1.1 429\n\n{\"type\":\"error\",\"error\":{\"type\":\"rate_lim"), RateLimited, "http_429", None, &[]),
        R("truncated codex body", Openai, NOW, Http("HTTP/1.1 429\n\n{\"error\":{\"type\":\"usage_limit_reached\",\"message\":\"The usage limit has been reached\",\"resets_at\":1764334800,\"plan_t"), RateLimited, "usage_limit_reached", Some((1_764_334_800_000, BodyResetsAt)), &[]),
        R("empty 429", Openai, NOW, Http("HTTP/1.1 429\n\n"), RateLimited, "http_429", None, &[]),
        R("garbage header values", Anthropic, NOW, Http("HTTP/1.1 429\nretry-after: soon\nretry-after-ms: lots\nx-ratelimit-reset-requests: banana\nanthropic-ratelimit-unified-status: rejected\nanthropic-ratelimit-unified-reset: -5\nanthropic-ratelimit-unified-5h-utilization: NaN\nx-codex-primary-used-percent: inf\n\n"), RateLimited, "http_429", None, &[]),
        R("huge and negative numbers", Openai, NOW, Http("HTTP/1.1 429\nretry-after: 18446744073709551615\nretry-after-ms: 1e400\nx-codex-primary-used-percent: -3\nx-codex-primary-reset-at: 99999999999999999999999\n\n{\"error\":{\"type\":\"usage_limit_reached\",\"resets_at\":1e300,\"resets_in_seconds\":-1}}"), RateLimited, "usage_limit_reached", None, &[]),
        R("retry-after date in the past", Openai, NOW, Http("HTTP/1.1 429\nretry-after: Wed, 21 Oct 2015 07:28:00 GMT\n\n"), RateLimited, "http_429", None, &[]),
        R("200 json body mentioning error is success", Openai, NOW, Http("HTTP/1.1 200\n\n{\"error\":{\"code\":\"x\"}}"), Success, "http_200", None, &[]),
        R("empty stream payload", Anthropic, NOW, Stream(b""), Provider, "stream_error", None, &[]),
        R("binary stream payload", Anthropic, NOW, Stream(b"\xff\xfe\x00{"), Provider, "stream_error", None, &[]),
        R("reason never holds message text", Openai, NOW, Http("HTTP/1.1 401\n\n{\"error\":{\"code\":\"Incorrect API key provided: sk-live-abc\"}}"), Auth, "http_401", None, &[]),
    ]
}

fn run(flavor: ApiFlavor, now: u64, input: &Input) -> Classification {
    match input {
        Http(raw) => {
            let f = parse(raw);
            let outcome = Outcome::Response {
                status: f.status,
                headers: &f.headers,
                body: &f.body,
            };
            classify(flavor, &outcome, at(now))
        }
        Stream(data) => classify(flavor, &Outcome::StreamError { data }, at(now)),
        Net(failure) => classify(flavor, &Outcome::Transport(*failure), at(now)),
        Gone => classify(flavor, &Outcome::ClientCancelled, at(now)),
    }
}

#[test]
fn classification_table() {
    let mut failures = Vec::new();
    for R(name, flavor, now, input, class, reason, reset, usage) in rows() {
        let got = run(flavor, now, &input);
        let want_status = match &input {
            Http(raw) => Some(parse(raw).status),
            _ => None,
        };
        let got_usage: Vec<_> = got
            .usage
            .iter()
            .map(|w| {
                (
                    w.name.clone(),
                    w.utilization,
                    w.resets_at.map(|t| t.0),
                    w.status.as_ref().map(|s| s.to_string()),
                    w.window_minutes,
                )
            })
            .collect();
        let want_usage: Vec<_> = usage
            .iter()
            .map(|u| (u.0.to_owned(), u.1, u.2, u.3.map(str::to_owned), u.4))
            .collect();
        let ok = got.class == class
            && got.reason == reason
            && got.status == want_status
            && got.reset.map(|h| (h.at.0, h.source)) == reset
            && got_usage == want_usage;
        if !ok {
            failures.push(format!(
                "{name}: want {class:?} {reason:?} {reset:?} {usage:?}\n   got {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_class_has_a_row() {
    let rows = rows();
    for class in [
        Success,
        RateLimited,
        Unusable,
        Auth,
        Forbidden,
        Provider,
        Transport,
        Request,
        Cancelled,
    ] {
        assert!(rows.iter().any(|r| r.4 == class), "no row for {class:?}");
    }
}

#[test]
fn success_carries_no_reset_but_usage() {
    let f = parse(fx!("codex_200_usage.http"));
    let c = classify(
        Openai,
        &Outcome::Response {
            status: 200,
            headers: &f.headers,
            body: &f.body,
        },
        at(NOW),
    );
    assert_eq!(c.reset, None);
    assert_eq!(c.usage.len(), 2);
}

const HEADER_NAMES: &[&str] = &[
    "retry-after",
    "retry-after-ms",
    "anthropic-ratelimit-unified-status",
    "anthropic-ratelimit-unified-reset",
    "anthropic-ratelimit-unified-5h-status",
    "anthropic-ratelimit-unified-5h-utilization",
    "anthropic-ratelimit-unified-5h-reset",
    "anthropic-ratelimit-unified-7d-reset",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-requests-remaining",
    "x-ratelimit-reset-requests",
    "x-ratelimit-remaining-requests",
    "x-codex-primary-used-percent",
    "x-codex-primary-reset-at",
    "x-codex-primary-window-minutes",
];

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{0,25}",
        "-?[0-9]{1,20}(\\.[0-9]{0,12})?",
        "[0-9hmsuµ.]{0,12}",
        Just("rejected".to_owned()),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})",
        "(Mon|Fri), [0-9]{2} (Nov|Feb) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT",
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<Vec<u8>>(),
        any::<String>().prop_map(String::into_bytes),
        // JSON-ish bodies in the providers' shapes with arbitrary values.
        ("[a-z_A-Z]{0,20}", any::<i64>(), any::<f64>(), ".{0,40}").prop_map(|(t, n, f, m)| {
            format!(
                r#"{{"error":{{"type":"{t}","code":{n},"resets_at":{f},"resets_in_seconds":{n},"message":{m:?},"details":[{{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"{m}"}}]}}}}"#
            )
            .into_bytes()
        }),
        ("event: error\ndata: ", any::<String>()).prop_map(|(a, b)| format!("{a}{b}\n\n").into_bytes()),
    ]
}

proptest! {
    #[test]
    fn classify_never_panics(
        status in any::<u16>(),
        headers in prop::collection::vec((prop::sample::select(HEADER_NAMES), header_value()), 0..8),
        body in body(),
        now in any::<u64>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let headers: Vec<(String, String)> = headers.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let truncated = &body[..cut.index(body.len() + 1)];
        for flavor in [Anthropic, Openai, Google, Copilot] {
            let c = classify(flavor, &Outcome::Response { status, headers: &headers, body: truncated }, at(now));
            prop_assert!(c.reason.len() <= 64 && c.reason.bytes().all(|b| b.is_ascii_graphic()));
            if let Some(h) = c.reset {
                prop_assert!(h.at.0 > now);
            }
            let _ = classify(flavor, &Outcome::StreamError { data: truncated }, at(now));
        }
    }
}
