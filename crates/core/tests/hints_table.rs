//! Every reset-hint format and the precedence between them, with real values
//! from the provider samples; then the individual parsers and usage windows.

mod http_fixture;

use http_fixture::{HOUR, MIN, NOW, NOW26, SEC, at, fx, parse};
use marathon_core::HintSource::{self, *};
use marathon_core::hints::{
    parse_epoch, parse_go_duration, parse_human_delay, parse_retry_after, parse_rfc3339,
    reset_hint, retry_hint, usage_windows,
};
use proptest::prelude::*;
use std::time::Duration;

/// (name, now, raw HTTP response) → expected (instant ms, source).
struct H(&'static str, u64, &'static str, Option<(u64, HintSource)>);

const GOOGLE_DAY: u64 = NOW + 20 * HOUR;

#[rustfmt::skip]
fn rows() -> Vec<H> {
    vec![
        // --- One row per format, real values ---
        H("retry-after seconds", NOW26, fx!("anthropic_429_api_key.http"), Some((NOW26 + 17 * SEC, RetryAfterSeconds))),
        H("retry-after http-date", NOW, "HTTP/1.1 429\nretry-after: Fri, 28 Nov 2025 12:02:00 GMT\n\n", Some((NOW + 2 * MIN, RetryAfterDate))),
        H("retry-after-ms", NOW, "HTTP/1.1 429\nretry-after-ms: 1500\n\n", Some((NOW + 1_500, RetryAfterMs))),
        H("unified rejected (subscription sample)", NOW, fx!("anthropic_429_subscription.http"), Some((1_764_334_800_000, AnthropicUnified))),
        H("anthropic rfc3339, remaining 0 wins", NOW26, "HTTP/1.1 429\nanthropic-ratelimit-requests-remaining: 0\nanthropic-ratelimit-requests-reset: 2026-11-28T12:00:17Z\nanthropic-ratelimit-tokens-reset: 2026-11-28T12:00:05Z\n\n", Some((NOW26 + 17 * SEC, AnthropicRfc3339))),
        H("anthropic rfc3339, exhausted tokens only", NOW26, "HTTP/1.1 429\nanthropic-ratelimit-requests-remaining: 12\nanthropic-ratelimit-requests-reset: 2026-11-28T12:00:17Z\nanthropic-ratelimit-tokens-remaining: 0\nanthropic-ratelimit-tokens-reset: 2026-11-28T12:00:05Z\n\n", Some((NOW26 + 5 * SEC, AnthropicRfc3339))),
        H("anthropic rfc3339 output-tokens with offset", NOW26, "HTTP/1.1 429\nanthropic-ratelimit-output-tokens-reset: 2026-11-28T13:00:05.5+01:00\n\n", Some((NOW26 + 5_500, AnthropicRfc3339))),
        H("openai go durations (sample)", NOW, fx!("openai_429_rate_limit.http"), Some((NOW + 6 * MIN, OpenaiGoDuration))),
        H("openai go duration, tokens exhausted", NOW, "HTTP/1.1 429\nx-ratelimit-remaining-tokens: 0\nx-ratelimit-reset-tokens: 1h2m3.5s\nx-ratelimit-reset-requests: 1s\n\n", Some((NOW + HOUR + 2 * MIN + 3_500, OpenaiGoDuration))),
        H("codex headers, exhausted primary", NOW, fx!("codex_200_usage.http"), Some((1_764_334_800_000, CodexResetAt))),
        H("codex headers, none exhausted: latest", NOW, "HTTP/1.1 429\nx-codex-primary-used-percent: 80\nx-codex-primary-reset-at: 1764334800\nx-codex-secondary-used-percent: 37.5\nx-codex-secondary-reset-at: 1764770400\n\n", Some((1_764_770_400_000, CodexResetAt))),
        H("codex headers, secondary exhausted", NOW, "HTTP/1.1 429\nx-codex-primary-used-percent: 12\nx-codex-primary-reset-at: 1764334800\nx-codex-secondary-used-percent: 100.0\nx-codex-secondary-reset-at: 1764770400\n\n", Some((1_764_770_400_000, CodexResetAt))),
        H("body resets_at", NOW, fx!("codex_429_usage_limit_resets_at.http"), Some((1_764_334_800_000, BodyResetsAt))),
        H("body resets_in_seconds", NOW, fx!("codex_429_usage_limit_resets_in.http"), Some((NOW + HOUR, BodyResetsInSeconds))),
        H("google RetryInfo", NOW, fx!("google_429_rate_limit.http"), Some((NOW + 34_070, GoogleRetryInfo))),
        H("google QUOTA_EXHAUSTED: next 08:00 UTC", NOW, fx!("google_429_quota_exhausted.http"), Some((GOOGLE_DAY, GoogleRetryInfo))),
        H("google PerDay quota id: next 08:00 UTC", NOW, fx!("google_429_per_day.http"), Some((GOOGLE_DAY, GoogleRetryInfo))),
        H("google long window with a long retryDelay", NOW, "HTTP/1.1 429\n\n{\"error\":{\"status\":\"RESOURCE_EXHAUSTED\",\"details\":[{\"@type\":\"type.googleapis.com/google.rpc.ErrorInfo\",\"reason\":\"QUOTA_EXHAUSTED\"},{\"@type\":\"type.googleapis.com/google.rpc.RetryInfo\",\"retryDelay\":\"7200s\"}]}}", Some((NOW + 2 * HOUR, GoogleRetryInfo))),
        H("google long window without RetryInfo", NOW, "HTTP/1.1 429\n\n{\"error\":{\"status\":\"RESOURCE_EXHAUSTED\",\"details\":[{\"@type\":\"type.googleapis.com/google.rpc.ErrorInfo\",\"reason\":\"QUOTA_EXHAUSTED\"}]}}", Some((GOOGLE_DAY, GoogleRetryInfo))),
        H("message: copilot 'try again in 2 hours'", NOW, fx!("copilot_429_message.http"), Some((NOW + 2 * HOUR, Message))),
        H("message: google 'Please retry in 34.07s' without RetryInfo", NOW, "HTTP/1.1 429\n\n{\"error\":{\"code\":429,\"message\":\"Resource has been exhausted ... Please retry in 34.07s.\",\"status\":\"RESOURCE_EXHAUSTED\"}}", Some((NOW + 34_070, Message))),
        H("message: 'in 5 minutes'", NOW, "HTTP/1.1 429\n\n{\"error\":{\"message\":\"Too many requests, please try again in 5 minutes\"}}", Some((NOW + 5 * MIN, Message))),

        // --- Precedence ---
        H("unified beats a shorter retry-after", NOW, "HTTP/1.1 429\nretry-after: 17\nanthropic-ratelimit-unified-status: rejected\nanthropic-ratelimit-unified-reset: 1764334800\nanthropic-ratelimit-unified-5h-status: rejected\nanthropic-ratelimit-unified-5h-reset: 1764334800\n\n", Some((1_764_334_800_000, AnthropicUnified))),
        H("unified: latest rejected window (7d)", NOW, "HTTP/1.1 429\nanthropic-ratelimit-unified-status: rejected\nanthropic-ratelimit-unified-reset: 1764334800\nanthropic-ratelimit-unified-5h-status: rejected\nanthropic-ratelimit-unified-5h-reset: 1764334800\nanthropic-ratelimit-unified-7d-status: rejected\nanthropic-ratelimit-unified-7d-reset: 1764770400\n\n", Some((1_764_770_400_000, AnthropicUnified))),
        H("unified allowed: retry-after speaks", NOW, "HTTP/1.1 429\nretry-after: 17\nanthropic-ratelimit-unified-status: allowed\nanthropic-ratelimit-unified-reset: 1764334800\n\n", Some((NOW + 17 * SEC, RetryAfterSeconds))),
        H("retry-after-ms beats retry-after", NOW, "HTTP/1.1 429\nretry-after-ms: 1500\nretry-after: 2\n\n", Some((NOW + 1_500, RetryAfterMs))),
        H("retry-after beats rfc3339", NOW26, fx!("anthropic_429_api_key.http"), Some((NOW26 + 17 * SEC, RetryAfterSeconds))),
        H("body resets_at beats retry-after", NOW, "HTTP/1.1 429\nretry-after: 60\n\n{\"error\":{\"type\":\"usage_limit_reached\",\"resets_at\":1764334800}}", Some((1_764_334_800_000, BodyResetsAt))),
        H("exhausted codex window beats retry-after", NOW, "HTTP/1.1 429\nretry-after: 60\nx-codex-primary-used-percent: 100.0\nx-codex-primary-reset-at: 1764334800\n\n", Some((1_764_334_800_000, CodexResetAt))),
        H("retry-after beats unexhausted codex windows", NOW, "HTTP/1.1 429\nretry-after: 60\nx-codex-primary-used-percent: 50\nx-codex-primary-reset-at: 1764334800\n\n", Some((NOW + MIN, RetryAfterSeconds))),
        H("go duration beats message", NOW, "HTTP/1.1 429\nx-ratelimit-reset-requests: 20s\n\n{\"error\":{\"message\":\"Please try again in 2 hours\"}}", Some((NOW + 20 * SEC, OpenaiGoDuration))),

        // --- Edges ---
        H("no hints at all", NOW, fx!("anthropic_529_overloaded.http"), None),
        H("empty response", NOW, "HTTP/1.1 429\n\n", None),
        H("http-date in the past: no hint", NOW, "HTTP/1.1 429\nretry-after: Wed, 21 Oct 2015 07:28:00 GMT\n\n", None),
        H("stale date lets the next source speak", NOW, "HTTP/1.1 429\nretry-after: Wed, 21 Oct 2015 07:28:00 GMT\nx-ratelimit-reset-requests: 6m0s\n\n", Some((NOW + 6 * MIN, OpenaiGoDuration))),
        H("retry-after 0: no hint", NOW, "HTTP/1.1 429\nretry-after: 0\n\n", None),
        H("garbage values", NOW, "HTTP/1.1 429\nretry-after: soon\nretry-after-ms: -5\nx-ratelimit-reset-requests: banana\nanthropic-ratelimit-requests-reset: 2026-13-45T99:00:00Z\nx-codex-primary-used-percent: NaN\nx-codex-primary-reset-at: yesterday\nanthropic-ratelimit-unified-status: rejected\nanthropic-ratelimit-unified-reset: ∞\n\n{\"error\":{\"resets_at\":\"soon\",\"resets_in_seconds\":null,\"message\":\"try again in a while\"}}", None),
        H("huge numbers: beyond 35 days ignored", NOW, "HTTP/1.1 429\nretry-after: 18446744073709551615\nretry-after-ms: 99999999999999999999999999\nx-ratelimit-reset-requests: 2562047h\n\n{\"error\":{\"resets_at\":99999999999,\"resets_in_seconds\":1e308}}", None),
        H("negative numbers ignored", NOW, "HTTP/1.1 429\nretry-after: -17\nx-ratelimit-reset-requests: -6m0s\n\n{\"error\":{\"resets_at\":-1764334800,\"resets_in_seconds\":-3600}}", None),
        H("epoch in milliseconds understood", NOW, "HTTP/1.1 429\n\n{\"error\":{\"type\":\"usage_limit_reached\",\"resets_at\":1764334800000}}", Some((1_764_334_800_000, BodyResetsAt))),
        H("truncated body still read", NOW, "HTTP/1.1 429\n\n{\"error\":{\"type\":\"usage_limit_reached\",\"resets_in_seconds\":3600,\"message\":\"The usage lim", Some((NOW + HOUR, BodyResetsInSeconds))),
    ]
}

#[test]
fn reset_hint_table() {
    let mut failures = Vec::new();
    for H(name, now, raw, want) in rows() {
        let f = parse(raw);
        let got = reset_hint(&f.headers, &f.body, at(now)).map(|h| (h.at.0, h.source));
        if got != want {
            failures.push(format!("{name}: want {want:?}, got {got:?}"));
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
fn every_source_has_a_row() {
    let rows = rows();
    for source in [
        RetryAfterSeconds,
        RetryAfterDate,
        RetryAfterMs,
        AnthropicUnified,
        AnthropicRfc3339,
        OpenaiGoDuration,
        CodexResetAt,
        BodyResetsAt,
        BodyResetsInSeconds,
        GoogleRetryInfo,
        Message,
    ] {
        assert!(
            rows.iter().any(|r| r.3.is_some_and(|(_, s)| s == source)),
            "{source:?}"
        );
    }
}

#[test]
fn retry_hint_ignores_quota_windows() {
    // A provider error on an account whose Codex window is exhausted: the window
    // is not the outage's end.
    let f = parse(fx!("codex_200_usage.http"));
    assert_eq!(
        reset_hint(&f.headers, b"", at(NOW)).map(|h| h.source),
        Some(CodexResetAt)
    );
    assert_eq!(retry_hint(&f.headers, b"", at(NOW)), None);
    let f = parse(fx!("anthropic_429_subscription.http"));
    let h = retry_hint(&f.headers, b"", at(NOW)).unwrap();
    assert_eq!((h.at, h.source), (at(NOW + 2094 * SEC), RetryAfterSeconds));
    let f = parse(fx!("google_429_rate_limit.http"));
    let h = retry_hint(&f.headers, &f.body, at(NOW)).unwrap();
    assert_eq!((h.at, h.source), (at(NOW + 34_070), GoogleRetryInfo));
}

#[test]
fn usage_windows_from_samples() {
    let f = parse(fx!("anthropic_429_subscription.http"));
    let w = usage_windows(&f.headers);
    assert_eq!(w.len(), 2);
    assert_eq!(
        (
            w[0].name.as_str(),
            w[0].utilization,
            w[0].resets_at,
            w[0].status.as_deref(),
            w[0].window_minutes
        ),
        (
            "5h",
            1.0,
            Some(at(1_764_334_800_000)),
            Some("rejected"),
            Some(300)
        )
    );
    assert_eq!(
        (
            w[1].name.as_str(),
            w[1].utilization,
            w[1].resets_at,
            w[1].status.as_deref(),
            w[1].window_minutes
        ),
        (
            "7d",
            0.42,
            Some(at(1_764_770_400_000)),
            Some("allowed"),
            Some(10_080)
        )
    );

    let f = parse(fx!("codex_200_usage.http"));
    let w = usage_windows(&f.headers);
    assert_eq!(
        w.iter()
            .map(|w| (
                w.name.as_str(),
                w.utilization,
                w.resets_at,
                w.status.as_deref(),
                w.window_minutes
            ))
            .collect::<Vec<_>>(),
        [
            ("primary", 1.0, Some(at(1_764_334_800_000)), None, Some(300)),
            (
                "secondary",
                0.375,
                Some(at(1_764_770_400_000)),
                None,
                Some(10_080)
            ),
        ]
    );

    // No usage headers, or unreadable ones: no windows.
    assert!(usage_windows(&parse(fx!("openai_429_rate_limit.http")).headers).is_empty());
    let junk = [
        ("anthropic-ratelimit-unified-5h-utilization", "high"),
        ("x-codex-primary-used-percent", "NaN"),
        ("x-codex-secondary-used-percent", "-1"),
    ];
    assert!(usage_windows(&junk).is_empty());
    // Over-full is clamped; a rejected window without utilisation is full.
    let over = [
        ("x-codex-primary-used-percent", "112.5"),
        ("anthropic-ratelimit-unified-7d-status", "rejected"),
    ];
    let w = usage_windows(&over);
    assert_eq!(
        w.iter()
            .map(|w| (w.name.as_str(), w.utilization))
            .collect::<Vec<_>>(),
        [("7d", 1.0), ("primary", 1.0)]
    );
}

#[test]
fn parser_tables() {
    for (s, want) in [
        ("1s", Some(1_000)),
        ("6m0s", Some(360_000)),
        ("12ms", Some(12)),
        ("1h2m3.5s", Some(3_723_500)),
        ("34.07s", Some(34_070)),
        ("0", Some(0)),
        ("2562047h", Some(9_223_369_200_000)),
        ("1d", None),
        ("", None),
        ("ms", None),
    ] {
        assert_eq!(parse_go_duration(s).map(|d| d.as_millis()), want, "{s:?}");
    }
    assert_eq!(parse_go_duration("250us"), Some(Duration::from_micros(250)));
    assert_eq!(parse_go_duration("250µs"), Some(Duration::from_micros(250)));

    assert_eq!(
        parse_rfc3339("2026-11-28T12:00:17Z"),
        Some(at(NOW26 + 17 * SEC))
    );
    assert_eq!(
        parse_rfc3339("2026-11-28T12:00:05Z"),
        Some(at(NOW26 + 5 * SEC))
    );
    assert_eq!(
        parse_rfc3339("2026-11-28T04:00:05.123456-08:00"),
        Some(at(NOW26 + 5_123))
    );
    assert_eq!(parse_rfc3339("Fri, 28 Nov 2025 12:00:00 GMT"), None);

    assert_eq!(parse_retry_after("17", at(NOW)), Some(at(NOW + 17 * SEC)));
    assert_eq!(
        parse_retry_after("2094", at(NOW)),
        Some(at(NOW + 2094 * SEC))
    );
    assert_eq!(
        parse_retry_after("Fri, 28 Nov 2025 12:02:00 GMT", at(NOW)),
        Some(at(NOW + 2 * MIN))
    );
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", at(NOW)),
        Some(at(NOW))
    );
    assert_eq!(parse_retry_after("2026-11-28T12:00:17Z", at(NOW)), None);

    assert_eq!(parse_epoch("1764334800"), Some(at(1_764_334_800_000)));
    assert_eq!(
        parse_human_delay("... try again in 2 hours").map(|d| d.as_secs()),
        Some(7200)
    );
}

proptest! {
    #[test]
    fn parsers_never_panic(s in any::<String>(), now in any::<u64>()) {
        let _ = parse_go_duration(&s);
        let _ = parse_retry_after(&s, at(now));
        let _ = parse_rfc3339(&s);
        let _ = parse_epoch(&s);
        let _ = parse_human_delay(&s);
    }

    #[test]
    fn go_durations_roundtrip(h in 0u64..10_000, m in 0u64..60, s in 0u64..60, ms in 0u64..1000) {
        let text = format!("{h}h{m}m{s}.{ms:03}s");
        let want = Duration::from_millis(((h * 60 + m) * 60 + s) * 1000 + ms);
        prop_assert_eq!(parse_go_duration(&text), Some(want));
    }

    #[test]
    fn rfc3339_roundtrips_through_httpdate(secs in 0u64..253_402_300_799) {
        // httpdate does its own calendar arithmetic: the same instant written both
        // ways must parse to the same millisecond.
        let t = std::time::UNIX_EPOCH + Duration::from_secs(secs);
        let http = httpdate::fmt_http_date(t);
        prop_assert_eq!(parse_retry_after(&http, at(0)), Some(at(secs * 1000)));
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (y, mo, d) = civil_from_days(days as i64);
        let text = format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60);
        prop_assert_eq!(parse_rfc3339(&text), Some(at(secs * 1000)));
    }

    #[test]
    fn hints_never_panic_and_stay_in_range(
        values in prop::collection::vec(any::<String>(), 12),
        body in any::<Vec<u8>>(),
        now in any::<u64>(),
    ) {
        let names = [
            "retry-after", "retry-after-ms", "anthropic-ratelimit-unified-status",
            "anthropic-ratelimit-unified-reset", "anthropic-ratelimit-unified-7d-status",
            "anthropic-ratelimit-unified-7d-reset", "anthropic-ratelimit-tokens-reset",
            "x-ratelimit-reset-tokens", "x-ratelimit-remaining-tokens",
            "x-codex-secondary-used-percent", "x-codex-secondary-reset-at",
            "anthropic-ratelimit-unified-5h-utilization",
        ];
        let headers: Vec<(String, String)> =
            names.iter().zip(values).map(|(k, v)| ((*k).to_owned(), v)).collect();
        if let Some(h) = reset_hint(&headers, &body, at(now)) {
            prop_assert!(h.at.0 > now);
        }
        let _ = retry_hint(&headers, &body, at(now));
        for w in usage_windows(&headers) {
            prop_assert!((0.0..=1.0).contains(&w.utilization));
        }
    }
}

/// Inverse of days-since-epoch (Howard Hinnant), independent of the code under test.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}
