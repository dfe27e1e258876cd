//! marathon's own answers when it cannot serve a request ("all accounts
//! unavailable", "gave up after N attempts", "could not reach the
//! upstream"), shaped so that the client in front acts on them: it waits and
//! retries when the first account is back soon, and shows marathon's message
//! at once when the wait is long.
//!
//! Each client decides "retry" or "stop" by its own rules (read in their
//! public sources; the table is in the README, "When every account is
//! spent"):
//!
//! | client | stops on | waits out |
//! |---|---|---|
//! | Claude Code, Anthropic and OpenAI SDKs | `x-should-retry: false` | 429 + `retry-after` (≤ 60 s) |
//! | Codex | 429 `error.type = usage_limit_reached` (+ `resets_at`) | only `response.failed` with `rate_limit_exceeded` and "try again in Ns" (never a plain 429) |
//! | Gemini CLI | 429 `RetryInfo.retryDelay` > 300 s | 429 with a shorter `RetryInfo` |
//! | opencode 1.18 (`User-Agent: opencode/…`) | a 4xx other than 408/409/429 whose message and body name no retryable status or rate limit: marathon's `402` | 429, 5xx, and any answer mentioning `429`, `500`, `rate_limit`, `overloaded`, … (`retry-after-ms`) |

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::fmt::Write as _;
use std::time::Duration;

use marathon_core::ApiFlavor;
use marathon_core::clock::UnixMillis;
use marathon_core::decision::AttemptTrace;
use marathon_core::fmt::{ClockTime, HumanDuration};
use marathon_core::pool::Health;
use marathon_core::rotation::{Refusal, RefusalKind};
use serde_json::json;

use crate::{OwnAnswer, add_trace_headers, error_body, error_kind, json_answer};

/// What marathon can tell of the client from its request, to answer an
/// exhaustion in a form that client acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Audience {
    /// A streamed Responses API request (`POST …/responses` accepting
    /// `text/event-stream`, as Codex sends): Codex never retries a plain
    /// HTTP 429, but waits out a `response.failed` event that says
    /// `rate_limit_exceeded` and "try again in Ns".
    pub responses_stream: bool,
    /// opencode (`User-Agent: opencode/…`). It ignores `x-should-retry` and
    /// retries (silently, with no cap on the wait) every 429 and 5xx, and
    /// any answer whose message or body matches its retryable patterns: the
    /// numbers 429, 500, 502, 503, 504 or 524 anywhere, "rate limit" /
    /// `rate_limit`, "overloaded", "resource exhausted", "try again in", …
    /// (`packages/opencode/src/session/retry.ts`, `retryable`). Any other
    /// 4xx it shows at once and stops.
    pub opencode: bool,
}

impl Audience {
    /// The audience of a request, from its path and headers.
    pub fn of(path: &str, headers: &HeaderMap) -> Audience {
        let wants_events = headers
            .get_all(header::ACCEPT)
            .iter()
            .any(|v| v.as_bytes().windows(17).any(|w| w == b"text/event-stream"));
        let opencode = headers
            .get(header::USER_AGENT)
            .is_some_and(|v| v.as_bytes().starts_with(b"opencode/"));
        Audience {
            responses_stream: wants_events && path.trim_end_matches('/').ends_with("/responses"),
            opencode,
        }
    }
}

const SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");
const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");

/// The rotation machine's own answer in the provider's format, with
/// `retry-after` and the attempt trace, in the form `audience` acts on (see
/// the module docs). An exhaustion answer carries each account's state
/// under `marathon` for programs.
pub fn refusal_answer(
    flavor: ApiFlavor,
    provider: &str,
    refusal: &Refusal,
    trace: &AttemptTrace,
    audience: Audience,
) -> OwnAnswer {
    let mut answer = match refusal.kind {
        RefusalKind::Exhausted if audience.responses_stream && flavor == ApiFlavor::Openai => {
            response_failed_event(refusal)
        }
        RefusalKind::Exhausted => short_wait(flavor, provider, refusal),
        RefusalKind::Spent if audience.opencode => spent_for_opencode(flavor, provider, refusal),
        RefusalKind::Spent => spent(flavor, provider, refusal),
        RefusalKind::GaveUp | RefusalKind::Unreachable => plain(flavor, refusal),
    };
    if let Some(seconds) = refusal.retry_after {
        answer
            .headers
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    add_trace_headers(&mut answer.headers, refusal.account.as_deref(), trace);
    answer
}

fn plain(flavor: ApiFlavor, refusal: &Refusal) -> OwnAnswer {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let message = format!("marathon: {}", refusal.message);
    json_answer(
        status,
        &error_body(flavor, status, error_kind(flavor, status), &message),
    )
}

/// Every account rests, the first is back soon: a rate limit the client
/// waits out. `retry-after-ms` too (the SDKs and opencode prefer it);
/// Gemini CLI reads `RetryInfo`; Codex's delay comes from the message text.
fn short_wait(flavor: ApiFlavor, provider: &str, refusal: &Refusal) -> OwnAnswer {
    let status = StatusCode::TOO_MANY_REQUESTS;
    let seconds = refusal.retry_after.unwrap_or(1);
    let message = match flavor {
        ApiFlavor::Openai | ApiFlavor::Copilot => format!(
            "marathon: {}. Please try again in {seconds}s.",
            refusal.message
        ),
        ApiFlavor::Google => format!("marathon: {}. Please retry in {seconds}s.", refusal.message),
        ApiFlavor::Anthropic => format!("marathon: {}", refusal.message),
    };
    let mut body = error_body(flavor, status, error_kind(flavor, status), &message);
    if flavor == ApiFlavor::Google {
        body["error"]["details"] = json!([retry_info(seconds)]);
    }
    add_accounts(&mut body, provider, refusal);
    let mut answer = json_answer(status, &body);
    answer
        .headers
        .insert(RETRY_AFTER_MS, HeaderValue::from(seconds * 1000));
    answer
}

/// Codex's short wait: a stream whose only event is `response.failed` with
/// `rate_limit_exceeded`; Codex sleeps the "try again in Ns" and retries.
fn response_failed_event(refusal: &Refusal) -> OwnAnswer {
    let seconds = refusal.retry_after.unwrap_or(1);
    let event = json!({
        "type": "response.failed",
        "response": {
            "id": "resp_marathon",
            "object": "response",
            "status": "failed",
            "error": {
                "code": "rate_limit_exceeded",
                "message": format!("marathon: {}. Please try again in {seconds}s.", refusal.message),
            },
        },
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    OwnAnswer {
        status: StatusCode::OK,
        headers,
        body: format!("event: response.failed\ndata: {event}\n\n"),
    }
}

/// Every account is spent for longer than `short_wait` (or will not recover
/// on its own): the provider's spent-quota form, which its clients show at
/// once instead of retrying.
fn spent(flavor: ApiFlavor, provider: &str, refusal: &Refusal) -> OwnAnswer {
    let status = StatusCode::TOO_MANY_REQUESTS;
    let message = format!("marathon: {}", refusal.message);
    let resets_at = refusal.resets_at.map(|t| t.as_secs());
    let mut body = match flavor {
        // Codex maps this type to "You've hit your usage limit. Try again at
        // <resets_at>." and stops; no `plan_type`, which adds upsell text.
        ApiFlavor::Openai | ApiFlavor::Copilot => json!({"error": {
            "message": message,
            "type": "usage_limit_reached",
            "code": "usage_limit_reached",
            "param": null,
            "resets_at": resets_at,
            "resets_in_seconds": refusal.retry_after,
        }}),
        // Gemini CLI: a RetryInfo above 300 s is terminal ("Access resets at
        // …"); the QuotaFailure says why without a daily quota id (that one
        // would hide the reset time).
        ApiFlavor::Google => {
            let mut body = error_body(flavor, status, "RESOURCE_EXHAUSTED", &message);
            let mut details = vec![json!({
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{
                    "subject": format!("marathon/{provider}"),
                    "description": message,
                }],
            })];
            if let Some(seconds) = refusal.retry_after {
                details.push(retry_info(seconds));
            }
            body["error"]["details"] = json!(details);
            body
        }
        ApiFlavor::Anthropic => error_body(flavor, status, "rate_limit_error", &message),
    };
    add_accounts(&mut body, provider, refusal);
    let mut answer = json_answer(status, &body);
    answer
        .headers
        .insert(SHOULD_RETRY, HeaderValue::from_static("false"));
    answer
}

/// opencode's spent quota: a 402 (Anthropic's `billing_error`), the one
/// form it shows at once. The message names each account's state and the
/// first reset but no upstream reason (`rate_limit_error` would make
/// opencode retry it), and the machine-readable part is left out for the
/// same reason.
fn spent_for_opencode(flavor: ApiFlavor, provider: &str, refusal: &Refusal) -> OwnAnswer {
    let status = StatusCode::PAYMENT_REQUIRED;
    let mut states = String::new();
    let accounts = refusal.accounts.as_ref().map_or(&[][..], |ex| &ex.accounts);
    for (i, a) in accounts.iter().enumerate() {
        if i > 0 {
            states.push_str(", ");
        }
        states.push_str(&a.label);
        match (a.health, a.cooldown_remaining) {
            (Health::Cooling { .. }, Some(d)) => {
                let _ = write!(states, " resting for {}", HumanDuration(d));
            }
            (Health::NeedsLogin, _) => states.push_str(" needs login"),
            (h, _) => {
                let _ = write!(states, " {}", h.as_str());
            }
        }
    }
    let next = match (refusal.resets_at, refusal.retry_after) {
        (Some(at), Some(seconds)) => format!(
            "; the first one is usable again in {} (at {})",
            HumanDuration(Duration::from_secs(seconds)),
            ClockTime {
                at,
                now: UnixMillis(at.0.saturating_sub(seconds * 1000)),
            }
        ),
        _ => "; none will recover on its own: run `marathon auth list`".to_owned(),
    };
    let message = format!(
        "marathon: all {} {provider} accounts are spent ({states}){next}",
        accounts.len()
    );
    let kind = match flavor {
        ApiFlavor::Anthropic => "billing_error",
        ApiFlavor::Google => "FAILED_PRECONDITION",
        ApiFlavor::Openai | ApiFlavor::Copilot => "insufficient_quota",
    };
    let mut answer = json_answer(status, &error_body(flavor, status, kind, &message));
    answer
        .headers
        .insert(SHOULD_RETRY, HeaderValue::from_static("false"));
    answer
}

fn retry_info(seconds: u64) -> serde_json::Value {
    json!({
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": format!("{seconds}s"),
    })
}

/// Each account's state under `marathon`, for programs.
fn add_accounts(body: &mut serde_json::Value, provider: &str, refusal: &Refusal) {
    let (Some(ex), Some(obj)) = (&refusal.accounts, body.as_object_mut()) else {
        return;
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use marathon_core::clock::UnixMillis;
    use marathon_core::pool::Exhausted;

    fn refusal(kind: RefusalKind, retry_after: u64) -> Refusal {
        Refusal {
            status: 429,
            kind,
            message: "all 2 anthropic accounts are unavailable (a1 cooling for 1h00m after rate_limit_error, a2 cooling for 1h00m after rate_limit_error); the first one is usable again in 1h00m (at 14:05 UTC)".into(),
            retry_after: Some(retry_after),
            account: None,
            accounts: Some(Exhausted {
                soonest: Some(UnixMillis(1_800_000_000_000)),
                accounts: Vec::new(),
            }),
            resets_at: Some(UnixMillis(1_800_000_000_000)),
        }
    }

    fn body(a: &OwnAnswer) -> serde_json::Value {
        serde_json::from_str(&a.body).expect("JSON body")
    }

    fn header<'a>(a: &'a OwnAnswer, name: &str) -> Option<&'a str> {
        a.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn answer(flavor: ApiFlavor, r: &Refusal, audience: Audience) -> OwnAnswer {
        refusal_answer(flavor, "p", r, &AttemptTrace::default(), audience)
    }

    /// Claude Code and the SDKs stop on `x-should-retry: false`; without it
    /// they retry a 429 for as long as the account is spent.
    #[test]
    fn a_long_wait_tells_anthropic_clients_not_to_retry() {
        let a = answer(
            ApiFlavor::Anthropic,
            &refusal(RefusalKind::Spent, 3600),
            Audience::default(),
        );
        assert_eq!(a.status, 429);
        assert_eq!(header(&a, "x-should-retry"), Some("false"));
        assert_eq!(header(&a, "retry-after"), Some("3600"));
        let b = body(&a);
        assert_eq!(b["error"]["type"], "rate_limit_error");
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .contains("at 14:05 UTC")
        );
    }

    /// A short wait is a plain rate limit: no `x-should-retry`, so clients
    /// wait the `retry-after` (and its milliseconds twin) and retry.
    #[test]
    fn a_short_wait_is_a_rate_limit_clients_wait_out() {
        let a = answer(
            ApiFlavor::Anthropic,
            &refusal(RefusalKind::Exhausted, 20),
            Audience::default(),
        );
        assert_eq!(a.status, 429);
        assert_eq!(header(&a, "x-should-retry"), None);
        assert_eq!(header(&a, "retry-after"), Some("20"));
        assert_eq!(header(&a, "retry-after-ms"), Some("20000"));
    }

    /// Codex stops on `usage_limit_reached` and prints `resets_at`; any other
    /// 429 body is "exceeded retry limit" with the message lost.
    #[test]
    fn a_long_wait_is_a_usage_limit_for_openai_clients() {
        let a = answer(
            ApiFlavor::Openai,
            &refusal(RefusalKind::Spent, 3600),
            Audience::default(),
        );
        assert_eq!(a.status, 429);
        assert_eq!(header(&a, "x-should-retry"), Some("false"));
        let b = body(&a);
        assert_eq!(b["error"]["type"], "usage_limit_reached");
        assert_eq!(b["error"]["resets_at"], 1_800_000_000);
        assert_eq!(b["error"]["resets_in_seconds"], 3600);
        assert!(b["error"].get("plan_type").is_none());
    }

    /// Codex never retries a plain HTTP 429; a `response.failed` event with
    /// `rate_limit_exceeded` and "try again in Ns" it waits out.
    #[test]
    fn a_short_wait_for_a_responses_stream_is_a_response_failed_event() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let audience = Audience::of("/openai/v1/responses", &h);
        assert!(audience.responses_stream);
        let a = answer(
            ApiFlavor::Openai,
            &refusal(RefusalKind::Exhausted, 12),
            audience,
        );
        assert_eq!(a.status, 200);
        assert_eq!(header(&a, "content-type"), Some("text/event-stream"));
        let data = a
            .body
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap();
        let event: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(event["type"], "response.failed");
        assert_eq!(event["response"]["error"]["code"], "rate_limit_exceeded");
        assert!(
            event["response"]["error"]["message"]
                .as_str()
                .unwrap()
                .ends_with("Please try again in 12s.")
        );
        // A chat completion through the same client is a plain 429.
        assert!(!Audience::of("/openai/v1/chat/completions", &h).responses_stream);
    }

    /// Gemini CLI: RetryInfo above 300 s is terminal; the details parse as
    /// google.rpc types.
    #[test]
    fn gemini_gets_retry_info_and_a_quota_failure() {
        let a = answer(
            ApiFlavor::Google,
            &refusal(RefusalKind::Spent, 3600),
            Audience::default(),
        );
        let b = body(&a);
        assert_eq!(b["error"]["status"], "RESOURCE_EXHAUSTED");
        let details = b["error"]["details"].as_array().unwrap();
        assert!(
            details
                .iter()
                .any(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
                    && d["retryDelay"] == "3600s")
        );
        assert!(details.iter().any(|d| d["@type"]
            == "type.googleapis.com/google.rpc.QuotaFailure"
            && !d["violations"][0].to_string().contains("PerDay")));
        let short = answer(
            ApiFlavor::Google,
            &refusal(RefusalKind::Exhausted, 20),
            Audience::default(),
        );
        assert_eq!(body(&short)["error"]["details"][0]["retryDelay"], "20s");
    }

    /// opencode's retryable patterns (1.18.33,
    /// `packages/opencode/src/session/retry.ts`): a match anywhere in the
    /// message or the body makes it retry instead of showing the answer.
    fn opencode_would_retry(text: &str) -> bool {
        let t = text.to_ascii_lowercase();
        ["429", "500", "502", "503", "504", "524"]
            .iter()
            .any(|n| t.contains(n))
            || [
                "rate limit",
                "rate-limit",
                "rate_limit",
                "too many requests",
                "overloaded",
                "server error",
                "server_error",
                "internal error",
                "resource exhausted",
                "resource_exhausted",
                "try again later",
                "try again in",
                "at capacity",
            ]
            .iter()
            .any(|p| t.contains(p))
    }

    fn cooling(label: &str, reason: &str) -> marathon_core::pool::AccountStatus {
        use marathon_core::{AccountId, AccountKind, Reason};
        marathon_core::pool::AccountStatus {
            id: AccountId(label.into()),
            label: label.into(),
            kind: AccountKind::ApiKey,
            priority: 0,
            enabled: true,
            health: Health::Cooling {
                until: UnixMillis(1_800_000_000_000),
            },
            cooldown_remaining: Some(Duration::from_secs(3600)),
            successes: 0,
            failures: 1,
            failure_streak: 1,
            last_class: None,
            last_reason: Reason::untrusted(reason),
            usage: vec![],
            forecast: vec![],
            in_flight: 0,
            max_in_flight: None,
        }
    }

    /// Guards opencode sitting silently in its retry loop for the whole
    /// cooldown: its spent answer is a 402 it does not retry, whose message
    /// and body avoid every pattern that would make it retry, and which
    /// still names the accounts and the first reset.
    #[test]
    fn opencode_gets_a_spent_answer_it_shows_at_once() {
        let mut r = refusal(RefusalKind::Spent, 3600);
        r.accounts = Some(Exhausted {
            soonest: r.resets_at,
            accounts: vec![
                cooling("a1", "rate_limit_error"),
                cooling("a2", "rate_limit_error"),
            ],
        });
        let opencode = Audience {
            opencode: true,
            ..Audience::default()
        };
        for flavor in [ApiFlavor::Anthropic, ApiFlavor::Openai, ApiFlavor::Google] {
            let a = answer(flavor, &r, opencode);
            assert_eq!(a.status, 402, "{flavor:?}");
            assert!(!opencode_would_retry(&a.body), "{flavor:?}: {}", a.body);
            let b = body(&a);
            let message = b["error"]["message"].as_str().unwrap();
            assert_eq!(
                message,
                "marathon: all 2 p accounts are spent (a1 resting for 1h00m, a2 resting for 1h00m); the first one is usable again in 1h00m (at 08:00 UTC)"
            );
        }
        assert_eq!(
            body(&answer(ApiFlavor::Anthropic, &r, opencode))["error"]["type"],
            "billing_error"
        );
        // Everyone else keeps the provider's own spent form.
        assert_eq!(
            answer(ApiFlavor::Anthropic, &r, Audience::default()).status,
            429
        );
        // A short wait stays a 429 opencode waits out.
        let short = answer(
            ApiFlavor::Anthropic,
            &refusal(RefusalKind::Exhausted, 20),
            opencode,
        );
        assert_eq!(short.status, 429);
    }

    #[test]
    fn opencode_is_known_by_its_user_agent() {
        let mut h = HeaderMap::new();
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_static("opencode/1.18.33 ai-sdk/anthropic/3.0.1"),
        );
        assert!(Audience::of("/v1/messages", &h).opencode);
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_static("claude-cli/2.1.332 (external, cli)"),
        );
        assert!(!Audience::of("/v1/messages", &h).opencode);
    }
}
