//! Reset hints and quota usage, read from response headers and error bodies.
//!
//! Providers say "come back later" in a dozen dialects; this module reads all
//! of them (see `samples.md` in the design notes for real values) and answers
//! one question: *when* may this account be used again, and how do we know
//! ([`ResetHint`])? It also reads the quota-window usage headers that ride on
//! every response, success included ([`usage_windows`]).
//!
//! # Precedence
//!
//! The design brief says "first found wins"; the order below is what makes that
//! rule give the right answer. Signals that describe *the exhausted limit itself*
//! come first, generic "retry after" headers next, per-limit reset headers after
//! those, and guesses last:
//!
//! 1. Anthropic unified windows whose status is `rejected` — the latest reset among
//!    the rejected windows (`5h`, `7d`, overall). On a subscription 429 this is the
//!    truth: the 5-hour window does not reopen because `retry-after` said 17 s.
//! 2. Body `error.resets_at` (Codex `usage_limit_reached`).
//! 3. Body `error.resets_in_seconds` (older Codex servers).
//! 4. `x-codex-{primary,secondary}-reset-at` of windows at >= 100 % (latest of them).
//! 5. Google error details: `RetryInfo.retryDelay`, stretched to a long window for
//!    daily quotas (see below).
//! 6. `retry-after-ms` (more precise than `retry-after`, same meaning).
//! 7. `retry-after` (seconds or HTTP-date).
//! 8. `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset`
//!    (RFC 3339): the latest among limits whose `-remaining` is 0, else the latest.
//! 9. `x-ratelimit-reset-{requests,tokens}` (Go durations), chosen the same way
//!    using `x-ratelimit-remaining-*`.
//! 10. A human sentence in the error message ("try again in 2 hours").
//! 11. `x-codex-*-reset-at` when no window is exhausted: the latest window.
//!
//! A candidate at or before `now` says nothing about when to come back and is
//! skipped (so a stale `retry-after` date lets the next source speak, and if none
//! does the caller's backoff applies). A candidate more than [`MAX_HINT_AHEAD`]
//! away is treated as garbage and skipped too.
//!
//! [`retry_hint`] is the narrower reading used for failures that are not about the
//! account's quota (overload, auth, request errors): only sources 5–7 and 10, so a
//! 503 carrying Codex usage headers does not turn into a week-long wait.
//!
//! # Google daily quotas
//!
//! A Google 429 whose `ErrorInfo.reason` is `QUOTA_EXHAUSTED`, or whose quota id
//! mentions `PerDay`, is a daily quota: its `retryDelay` (often tens of seconds)
//! would have us hammer an exhausted account all day. Gemini daily quotas reset at
//! midnight Pacific time, so unless the `retryDelay` itself is an hour or more we
//! return the next 08:00 UTC (midnight PST; during daylight saving time this is an
//! hour after the real reset, which errs on the safe side). Such hints carry
//! [`HintSource::GoogleRetryInfo`]: they come from the Google error details.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::clock::UnixMillis;
use crate::outcome::{HeaderLookup, HintSource, ResetHint, UsageWindow};
use crate::reason::Reason;

/// Hints further ahead than this are treated as garbage and ignored. Long enough
/// for monthly quotas (Copilot premium requests), short enough that a misread
/// millisecond timestamp cannot bench an account for centuries.
pub const MAX_HINT_AHEAD: Duration = Duration::from_secs(35 * 24 * 3600);

/// How much of an error message is searched for a human "try again in ..." sentence.
const MAX_MESSAGE: usize = 4096;

const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------

/// When the account may be used again, from every hint the response carries,
/// in the precedence order documented at the top of this module.
///
/// `body` may be empty, truncated or not JSON; this never panics.
pub fn reset_hint(headers: &dyn HeaderLookup, body: &[u8], now: UnixMillis) -> Option<ResetHint> {
    quota_hint(headers, &ErrorBody::parse(body), now)
}

/// The narrower reading for failures that are not about the account's quota
/// (provider overload, auth, request errors): only explicit "retry after"
/// instructions — Google `RetryInfo`, `retry-after-ms`, `retry-after`, and a
/// human sentence in the message. Quota-window headers are ignored.
pub fn retry_hint(headers: &dyn HeaderLookup, body: &[u8], now: UnixMillis) -> Option<ResetHint> {
    retry_only_hint(headers, &ErrorBody::parse(body), now)
}

/// Quota windows' usage from the headers of any response (success included):
/// Anthropic unified `5h` / `7d` and Codex `primary` / `secondary`.
///
/// A window is reported when its utilisation is readable (or its status is
/// `rejected`, which means full). Utilisation is clamped to `0.0..=1.0`.
pub fn usage_windows(headers: &dyn HeaderLookup) -> Vec<UsageWindow> {
    // Static names: this runs on every response, so no name is built per call.
    const UNIFIED: [(&str, u64, [&str; 3]); 2] = [
        (
            "5h",
            300,
            [
                "anthropic-ratelimit-unified-5h-status",
                "anthropic-ratelimit-unified-5h-utilization",
                "anthropic-ratelimit-unified-5h-reset",
            ],
        ),
        (
            "7d",
            10_080,
            [
                "anthropic-ratelimit-unified-7d-status",
                "anthropic-ratelimit-unified-7d-utilization",
                "anthropic-ratelimit-unified-7d-reset",
            ],
        ),
    ];
    let mut out = Vec::new();
    let unified = headers.has_prefix("anthropic-ratelimit-unified-") != Some(false);
    for (name, minutes, [status_h, utilization_h, reset_h]) in
        UNIFIED.into_iter().filter(|_| unified)
    {
        let status = header_trim(headers, status_h)
            .filter(|s| !s.is_empty())
            .and_then(|s| Reason::untrusted(&s.to_ascii_lowercase()));
        let utilization = header_trim(headers, utilization_h)
            .and_then(parse_finite)
            .or_else(|| (status.as_deref() == Some("rejected")).then_some(1.0));
        let Some(utilization) = utilization else {
            continue;
        };
        out.push(UsageWindow {
            name: name.to_owned(),
            utilization: utilization.clamp(0.0, 1.0),
            resets_at: header_trim(headers, reset_h).and_then(parse_epoch),
            status,
            window_minutes: Some(minutes),
        });
    }
    for w in codex_windows(headers) {
        out.push(UsageWindow {
            name: w.name.to_owned(),
            utilization: (w.used_percent / 100.0).clamp(0.0, 1.0),
            resets_at: w.reset_at,
            status: None,
            window_minutes: w.window_minutes,
        });
    }
    out
}

// ---------------------------------------------------------------------------
// Individual parsers (public: other crates read the same formats)
// ---------------------------------------------------------------------------

/// Parses a Go `time.Duration` string as OpenAI sends in `x-ratelimit-reset-*`:
/// `1s`, `6m0s`, `12ms`, `1h2m3.5s`, `250us` / `250µs`, `.5s`, `0`.
///
/// Negative durations, unknown units, missing units and values beyond
/// `u64::MAX` seconds are `None`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let not_digit = |c: char| !c.is_ascii_digit();
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let int_end = rest.find(not_digit).unwrap_or(rest.len());
        let int_part = &rest[..int_end];
        rest = &rest[int_end..];
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let frac_end = r.find(not_digit).unwrap_or(r.len());
            frac_part = &r[..frac_end];
            rest = &r[frac_end..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_end = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit: u128 = match &rest[..unit_end] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_end..];
        let whole: u128 = if int_part.is_empty() {
            0
        } else if int_part.len() > 30 {
            return None;
        } else {
            int_part.parse().ok()?
        };
        let mut v = whole.checked_mul(unit)?;
        if !frac_part.is_empty() {
            // 18 digits are far below a nanosecond for every unit; the rest is noise.
            let digits = &frac_part[..frac_part.len().min(18)];
            let f: u128 = digits.parse().ok()?;
            let scale = 10u128.pow(u32::try_from(digits.len()).ok()?);
            v = v.checked_add(f * unit / scale)?;
        }
        nanos = nanos.checked_add(v)?;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    let sub = u32::try_from(nanos % 1_000_000_000).ok()?;
    Some(Duration::new(secs, sub))
}

/// Parses a `retry-after` value: delay-seconds (`17`; a fraction such as `1.5`
/// is tolerated) or an HTTP-date (`Wed, 21 Oct 2015 07:28:00 GMT`). Returns the
/// instant it names; a date in the past is clamped to `now`.
pub fn parse_retry_after(s: &str, now: UnixMillis) -> Option<UnixMillis> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_seconds(s).map(|d| now.plus(d));
    }
    let t = httpdate::parse_http_date(s).ok()?;
    let ms = system_time_millis(t)?;
    Some(ms.max(now))
}

/// Parses an RFC 3339 timestamp strictly: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`
/// (`t`/`z` accepted in lower case, as RFC 3339 allows). Fractions are kept to the
/// millisecond; a leap second `:60` is accepted. Instants before 1970 are `None`.
pub fn parse_rfc3339(s: &str) -> Option<UnixMillis> {
    let b = s.trim().as_bytes();
    if b.len() < 20 {
        return None;
    }
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis: u64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        for (k, d) in b[start..i].iter().take(3).enumerate() {
            millis += u64::from(d - b'0') * [100, 10, 1][k];
        }
    }
    let offset_secs: i64 = match b.get(i) {
        Some(b'Z' | b'z') if b.len() == i + 1 => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
            let oh = digits(b, i + 1, 2)?;
            let om = digits(b, i + 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh * 3600 + om * 60);
            if *sign == b'-' { -off } else { off }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    Some(UnixMillis(secs.checked_mul(1000)?.checked_add(millis)?))
}

/// Parses epoch seconds (`1764334800`, `1764334800.5`). Values of 10^11 or more
/// are taken to be milliseconds: as seconds they would be after the year 5000,
/// and some servers do send milliseconds.
pub fn parse_epoch(s: &str) -> Option<UnixMillis> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let whole = s.split('.').next().unwrap_or("");
    if whole.len() >= 12 {
        // Milliseconds: drop any fraction.
        return whole.parse::<u64>().ok().map(UnixMillis);
    }
    parse_seconds(s).map(|d| UnixMillis(0).plus(d))
}

/// Finds a human "come back later" sentence and returns the delay it names:
/// "try again in 2 hours", "Please retry in 34.07s.", "in 5 minutes",
/// "try again in 1h2m", "after 30 seconds", "in an hour".
pub fn parse_human_delay(text: &str) -> Option<Duration> {
    let lower = text.to_lowercase();
    for kw in ["in ", "after "] {
        let mut from = 0;
        while let Some(pos) = lower[from..].find(kw) {
            let at = from + pos;
            from = at + kw.len();
            let boundary = lower[..at]
                .chars()
                .next_back()
                .is_none_or(|c| !c.is_alphanumeric());
            if !boundary {
                continue;
            }
            if let Some(d) = spoken_duration(lower[from..].trim_start()) {
                return Some(d);
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------
// The precedence chains
// ---------------------------------------------------------------------------

/// The full chain (see the module docs), over an already-parsed body.
pub(crate) fn quota_hint(
    headers: &dyn HeaderLookup,
    body: &ErrorBody,
    now: UnixMillis,
) -> Option<ResetHint> {
    let ok = |at: UnixMillis| at > now && at <= now.plus(MAX_HINT_AHEAD);
    let hint = |at: UnixMillis, source| ok(at).then_some(ResetHint { at, source });
    unified_rejected(headers)
        .and_then(|at| hint(at, HintSource::AnthropicUnified))
        .or_else(|| {
            body.resets_at
                .and_then(|at| hint(at, HintSource::BodyResetsAt))
        })
        .or_else(|| {
            body.resets_in
                .and_then(|d| hint(now.plus(d), HintSource::BodyResetsInSeconds))
        })
        .or_else(|| codex_reset(headers, true).and_then(|at| hint(at, HintSource::CodexResetAt)))
        .or_else(|| retry_only_hint(headers, body, now).filter(|h| h.source != HintSource::Message))
        .or_else(|| {
            latest_exhausted(
                headers,
                &["requests", "tokens", "input-tokens", "output-tokens"],
                |n| format!("anthropic-ratelimit-{n}-reset"),
                |n| format!("anthropic-ratelimit-{n}-remaining"),
                parse_rfc3339,
            )
            .and_then(|at| hint(at, HintSource::AnthropicRfc3339))
        })
        .or_else(|| {
            latest_exhausted(
                headers,
                &["requests", "tokens"],
                |n| format!("x-ratelimit-reset-{n}"),
                |n| format!("x-ratelimit-remaining-{n}"),
                |v| parse_go_duration(v).map(|d| now.plus(d)),
            )
            .and_then(|at| hint(at, HintSource::OpenaiGoDuration))
        })
        .or_else(|| message_hint(body, now))
        .or_else(|| codex_reset(headers, false).and_then(|at| hint(at, HintSource::CodexResetAt)))
}

/// Explicit retry instructions only (see [`retry_hint`]).
pub(crate) fn retry_only_hint(
    headers: &dyn HeaderLookup,
    body: &ErrorBody,
    now: UnixMillis,
) -> Option<ResetHint> {
    let ok = |at: UnixMillis| at > now && at <= now.plus(MAX_HINT_AHEAD);
    let hint = |at: UnixMillis, source| ok(at).then_some(ResetHint { at, source });
    google_hint(body, now)
        .and_then(|at| hint(at, HintSource::GoogleRetryInfo))
        .or_else(|| {
            header_trim(headers, "retry-after-ms")
                .and_then(parse_seconds_value)
                .and_then(|ms| {
                    hint(
                        now.plus(Duration::try_from_secs_f64(ms / 1000.0).ok()?),
                        HintSource::RetryAfterMs,
                    )
                })
        })
        .or_else(|| {
            let v = header_trim(headers, "retry-after")?;
            let source = if v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                HintSource::RetryAfterSeconds
            } else {
                HintSource::RetryAfterDate
            };
            hint(parse_retry_after(v, now)?, source)
        })
        .or_else(|| message_hint(body, now))
}

fn message_hint(body: &ErrorBody, now: UnixMillis) -> Option<ResetHint> {
    let d = parse_human_delay(body.message.as_deref()?)?;
    let at = now.plus(d);
    (at > now && at <= now.plus(MAX_HINT_AHEAD)).then_some(ResetHint {
        at,
        source: HintSource::Message,
    })
}

fn google_hint(body: &ErrorBody, now: UnixMillis) -> Option<UnixMillis> {
    if body.long_window {
        return match body.retry_delay {
            Some(d) if d >= HOUR => Some(now.plus(d)),
            Some(d) => Some(now.plus(d).max(next_pacific_midnight(now))),
            None => Some(next_pacific_midnight(now)),
        };
    }
    body.retry_delay.map(|d| now.plus(d))
}

/// The next 08:00 UTC strictly after `now` (midnight Pacific Standard Time).
fn next_pacific_midnight(now: UnixMillis) -> UnixMillis {
    const DAY: u64 = 86_400_000;
    const OFFSET: u64 = 8 * 3_600_000;
    let shifted = now.0.saturating_sub(OFFSET);
    let next = (shifted / DAY)
        .saturating_add(1)
        .saturating_mul(DAY)
        .saturating_add(OFFSET);
    UnixMillis(next.max(now.0.saturating_add(1)))
}

/// The latest reset among rejected unified windows, if any is rejected.
fn unified_rejected(headers: &dyn HeaderLookup) -> Option<UnixMillis> {
    let rejected =
        |name: &str| header_trim(headers, name).is_some_and(|v| v.eq_ignore_ascii_case("rejected"));
    let mut latest: Option<UnixMillis> = None;
    let mut any = false;
    for (status, reset) in [
        (
            "anthropic-ratelimit-unified-status",
            "anthropic-ratelimit-unified-reset",
        ),
        (
            "anthropic-ratelimit-unified-5h-status",
            "anthropic-ratelimit-unified-5h-reset",
        ),
        (
            "anthropic-ratelimit-unified-7d-status",
            "anthropic-ratelimit-unified-7d-reset",
        ),
    ] {
        if rejected(status) {
            any = true;
            if let Some(at) = header_trim(headers, reset).and_then(parse_epoch) {
                latest = latest.max(Some(at));
            }
        }
    }
    if any { latest } else { None }
}

/// Among `names`, the latest reset of limits whose remaining count is 0; when
/// none is known to be exhausted, the latest reset of all.
fn latest_exhausted(
    headers: &dyn HeaderLookup,
    names: &[&str],
    reset_name: impl Fn(&str) -> String,
    remaining_name: impl Fn(&str) -> String,
    parse: impl Fn(&str) -> Option<UnixMillis>,
) -> Option<UnixMillis> {
    let mut exhausted: Option<UnixMillis> = None;
    let mut all: Option<UnixMillis> = None;
    for n in names {
        let Some(at) = header_trim(headers, &reset_name(n)).and_then(&parse) else {
            continue;
        };
        all = all.max(Some(at));
        let remaining = header_trim(headers, &remaining_name(n)).and_then(parse_finite);
        if remaining.is_some_and(|r| r <= 0.0) {
            exhausted = exhausted.max(Some(at));
        }
    }
    exhausted.or(all)
}

struct CodexWindow {
    name: &'static str,
    used_percent: f64,
    reset_at: Option<UnixMillis>,
    window_minutes: Option<u64>,
}

fn codex_windows(headers: &dyn HeaderLookup) -> Vec<CodexWindow> {
    const WINDOWS: [(&str, [&str; 3]); 2] = [
        (
            "primary",
            [
                "x-codex-primary-used-percent",
                "x-codex-primary-reset-at",
                "x-codex-primary-window-minutes",
            ],
        ),
        (
            "secondary",
            [
                "x-codex-secondary-used-percent",
                "x-codex-secondary-reset-at",
                "x-codex-secondary-window-minutes",
            ],
        ),
    ];
    let mut out = Vec::new();
    if headers.has_prefix("x-codex-") == Some(false) {
        return out;
    }
    for (name, [used_h, reset_h, minutes_h]) in WINDOWS {
        let Some(used_percent) = header_trim(headers, used_h).and_then(parse_finite) else {
            continue;
        };
        out.push(CodexWindow {
            name,
            used_percent,
            reset_at: header_trim(headers, reset_h).and_then(parse_epoch),
            window_minutes: header_trim(headers, minutes_h).and_then(|v| v.parse::<u64>().ok()),
        });
    }
    out
}

/// The latest `reset-at` among exhausted Codex windows (`exhausted_only`), or
/// among all windows.
fn codex_reset(headers: &dyn HeaderLookup, exhausted_only: bool) -> Option<UnixMillis> {
    codex_windows(headers)
        .into_iter()
        .filter(|w| !exhausted_only || w.used_percent >= 100.0)
        .filter_map(|w| w.reset_at)
        .max()
}

// ---------------------------------------------------------------------------
// Error bodies
// ---------------------------------------------------------------------------

/// What an error body says, in every provider's dialect, read once and shared by
/// the classifier and the hint chain.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ErrorBody {
    /// Error types/codes, most specific first: `error.code`, Google
    /// `ErrorInfo.reason`, `error.type`, `error.status`, `detail.code`, a string
    /// `error`, top-level `code` / `type`. Safe [`Reason`] words only, so a
    /// message, or a code field that echoes a key, never becomes a reason.
    pub(crate) tokens: Vec<Reason>,
    /// The human message (capped), or the raw text of a non-JSON body.
    pub(crate) message: Option<String>,
    /// `error.resets_at`.
    pub(crate) resets_at: Option<UnixMillis>,
    /// `error.resets_in_seconds`.
    pub(crate) resets_in: Option<Duration>,
    /// Google `RetryInfo.retryDelay`.
    pub(crate) retry_delay: Option<Duration>,
    /// Google `QUOTA_EXHAUSTED` or a `PerDay` quota: a long (daily) window.
    pub(crate) long_window: bool,
}

impl ErrorBody {
    /// Reads a body that may be empty, truncated, JSON in any provider's shape,
    /// or plain text. Truncated JSON is read leniently, field by field.
    pub(crate) fn parse(body: &[u8]) -> ErrorBody {
        let trimmed = body.trim_ascii();
        if trimmed.is_empty() {
            return ErrorBody::default();
        }
        match serde_json::from_slice::<Value>(trimmed) {
            Ok(Value::Object(obj)) => Self::from_object(&obj),
            // Gemini's JSON-array streaming wraps errors as `[{"error": {...}}]`.
            Ok(Value::Array(items)) => match items.first() {
                Some(Value::Object(obj)) => Self::from_object(obj),
                _ => ErrorBody::default(),
            },
            Ok(Value::String(s)) => ErrorBody {
                message: Some(cap(&s)),
                ..ErrorBody::default()
            },
            Ok(_) => ErrorBody::default(),
            Err(_) => Self::lenient(&String::from_utf8_lossy(
                &trimmed[..trimmed.len().min(64 * 1024)],
            )),
        }
    }

    fn from_object(obj: &Map<String, Value>) -> ErrorBody {
        let mut eb = ErrorBody::default();
        match obj.get("error") {
            Some(Value::Object(e)) => eb.read_error_object(e),
            Some(Value::String(s)) => {
                eb.push_token(s);
                eb.set_message(obj.get("error_description"));
            }
            _ => {}
        }
        // OpenAI Responses streams: `{"type":"response.failed","response":{"error":{...}}}`.
        if let Some(Value::Object(e)) = obj.get("response").and_then(|r| r.get("error")) {
            eb.read_error_object(e);
        }
        match obj.get("detail") {
            Some(Value::Object(d)) => {
                eb.push_token_value(d.get("code"));
                eb.set_message(d.get("message"));
            }
            Some(v @ Value::String(_)) => eb.set_message(Some(v)),
            _ => {}
        }
        if !matches!(obj.get("error"), Some(Value::Object(_))) {
            // OpenAI Responses stream `{"type":"error","code":...,"message":...}`.
            eb.push_token_value(obj.get("code"));
            eb.push_token_value(obj.get("type"));
            eb.set_message(obj.get("message"));
            eb.read_resets(obj);
        }
        eb
    }

    fn read_error_object(&mut self, e: &Map<String, Value>) {
        self.push_token_value(e.get("code"));
        if let Some(Value::Array(details)) = e.get("details") {
            for d in details {
                self.read_google_detail(d);
            }
        }
        self.push_token_value(e.get("type"));
        self.push_token_value(e.get("status"));
        self.set_message(e.get("message"));
        self.read_resets(e);
    }

    fn read_resets(&mut self, e: &Map<String, Value>) {
        if self.resets_at.is_none() {
            self.resets_at = e
                .get("resets_at")
                .and_then(number_text)
                .as_deref()
                .and_then(parse_epoch);
        }
        if self.resets_in.is_none() {
            self.resets_in = e
                .get("resets_in_seconds")
                .and_then(number_text)
                .as_deref()
                .and_then(parse_seconds);
        }
    }

    fn read_google_detail(&mut self, d: &Value) {
        let kind = d.get("@type").and_then(Value::as_str).unwrap_or("");
        if kind.ends_with("google.rpc.ErrorInfo") {
            if let Some(reason) = d.get("reason").and_then(Value::as_str) {
                if reason == "QUOTA_EXHAUSTED" {
                    self.long_window = true;
                }
                self.push_token(reason);
            }
            if let Some(Value::Object(meta)) = d.get("metadata")
                && meta
                    .values()
                    .filter_map(Value::as_str)
                    .any(|v| v.contains("PerDay"))
            {
                self.long_window = true;
            }
        } else if kind.ends_with("google.rpc.RetryInfo") {
            self.retry_delay = match d.get("retryDelay") {
                Some(Value::String(s)) => parse_go_duration(s),
                // Proto-JSON object form `{"seconds": 34, "nanos": 70000000}`.
                Some(Value::Object(o)) => {
                    let secs = o
                        .get("seconds")
                        .and_then(number_text)
                        .and_then(|s| s.parse::<u64>().ok());
                    let nanos = o
                        .get("nanos")
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                        .min(999_999_999);
                    secs.map(|s| Duration::new(s, u32::try_from(nanos).unwrap_or(0)))
                }
                _ => None,
            };
        } else if kind.ends_with("google.rpc.QuotaFailure")
            && let Some(Value::Array(vs)) = d.get("violations")
            && vs.iter().any(|v| {
                ["quotaId", "quotaMetric"].iter().any(|k| {
                    v.get(*k)
                        .and_then(Value::as_str)
                        .is_some_and(|s| s.contains("PerDay"))
                })
            })
        {
            self.long_window = true;
        }
    }

    /// Field-by-field reading of a body that is not valid JSON (usually cut off
    /// by the proxy's peek limit), or plain text.
    fn lenient(text: &str) -> ErrorBody {
        let mut eb = ErrorBody::default();
        let looks_json = text.starts_with('{') || text.starts_with('[');
        if looks_json {
            // A value cut off by the truncation is not trusted as a type or a
            // number ("rate_lim", "17643"); a cut-off message is still worth reading.
            for key in ["code", "reason", "type", "status", "error"] {
                for (v, complete) in lenient_strings(text, key) {
                    if complete {
                        eb.push_token(v);
                    }
                }
            }
            eb.message = lenient_strings(text, "message").next().map(|(m, _)| cap(m));
            eb.resets_at = lenient_number(text, "resets_at").and_then(parse_epoch);
            eb.resets_in = lenient_number(text, "resets_in_seconds").and_then(parse_seconds);
            eb.retry_delay = lenient_strings(text, "retryDelay")
                .find(|(_, complete)| *complete)
                .and_then(|(v, _)| parse_go_duration(v));
            eb.long_window = text.contains("QUOTA_EXHAUSTED") || text.contains("PerDay");
        }
        if eb.message.is_none() {
            eb.message = Some(cap(text));
        }
        eb
    }

    fn push_token_value(&mut self, v: Option<&Value>) {
        if let Some(Value::String(s)) = v {
            self.push_token(s);
        }
    }

    fn push_token(&mut self, s: &str) {
        let s = s.trim();
        // `"type":"error"` is Anthropic's envelope, not an error type.
        if s == "error" || self.tokens.iter().any(|t| t == s) {
            return;
        }
        if let Some(token) = Reason::untrusted(s) {
            self.tokens.push(token);
        }
    }

    fn set_message(&mut self, v: Option<&Value>) {
        if self.message.is_none()
            && let Some(Value::String(s)) = v
        {
            self.message = Some(cap(s));
        }
    }
}

/// String values of `"key": "..."` anywhere in (possibly truncated) JSON text,
/// each with whether its closing quote was seen. An unterminated final value is
/// returned up to the end of the text.
fn lenient_strings<'t>(text: &'t str, key: &str) -> impl Iterator<Item = (&'t str, bool)> {
    let needle = format!("\"{key}\"");
    let mut from = 0;
    std::iter::from_fn(move || {
        while let Some(pos) = text.get(from..)?.find(&needle) {
            let after = from + pos + needle.len();
            from = after;
            let rest = text[after..].trim_start();
            let Some(rest) = rest.strip_prefix(':') else {
                continue;
            };
            let Some(rest) = rest.trim_start().strip_prefix('"') else {
                continue;
            };
            let mut end = None;
            let mut escaped = false;
            for (i, c) in rest.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            return Some(match end {
                Some(end) => (&rest[..end], true),
                None => (rest, false),
            });
        }
        None
    })
}

/// The numeric text of `"key": 123` (or `"key": "123"`) in possibly truncated
/// JSON; `None` when the number runs into the end of the text (it may be cut).
fn lenient_number<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    let needle = format!("\"{key}\"");
    let pos = text.find(&needle)?;
    let rest = text[pos + needle.len()..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    (end > 0).then(|| &rest[..end])
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

fn header_trim<'h>(headers: &'h dyn HeaderLookup, name: &str) -> Option<&'h str> {
    headers.header(name).map(str::trim)
}

/// A finite, non-negative float.
fn parse_finite(s: &str) -> Option<f64> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

/// A non-negative finite decimal number (for `retry-after-ms`).
fn parse_seconds_value(s: &str) -> Option<f64> {
    if !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    parse_finite(s)
}

/// Non-negative decimal seconds (`17`, `1.5`) as a duration; `None` on overflow.
fn parse_seconds(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    match s.split_once('.') {
        None => s.parse::<u64>().ok().map(Duration::from_secs),
        Some((whole, frac)) => {
            if frac.contains('.') || (whole.is_empty() && frac.is_empty()) {
                return None;
            }
            let secs = if whole.is_empty() {
                0
            } else {
                whole.parse::<u64>().ok()?
            };
            let digits = &frac[..frac.len().min(9)];
            let mut nanos: u32 = 0;
            for (i, d) in digits.bytes().enumerate() {
                nanos += u32::from(d - b'0') * 10u32.pow(8 - u32::try_from(i).ok()?);
            }
            Some(Duration::new(secs, nanos))
        }
    }
}

/// A JSON number (or numeric string) as text, for the seconds parsers.
fn number_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.trim().to_owned()),
        _ => None,
    }
}

fn system_time_millis(t: SystemTime) -> Option<UnixMillis> {
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(d.as_millis()).ok().map(UnixMillis)
}

fn cap(s: &str) -> String {
    let mut end = s.len().min(MAX_MESSAGE);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let slice = b.get(at..at + n)?;
    slice.iter().try_fold(0u32, |acc, d| {
        d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
    })
}

fn is_leap(y: u32) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// "2 hours", "34.07s", "1h2m", "an hour", "1 hour and 30 minutes" at the start of `s`.
fn spoken_duration(s: &str) -> Option<Duration> {
    // Compact Go-style token first: "34.07s.", "6m0s", "1h2m3.5s", "250ms".
    let token_end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == 'µ' || c == 'μ'))
        .unwrap_or(s.len());
    let token = s[..token_end].trim_end_matches('.');
    if let Some(d) = parse_go_duration(token) {
        return Some(d);
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    loop {
        let (amount, after) = spoken_amount(rest)?;
        let after = after.trim_start();
        let unit_end = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let secs_per = match &after[..unit_end] {
            "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 0.001,
            "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            _ if parts > 0 => break,
            _ => return None,
        };
        total = total.checked_add(Duration::try_from_secs_f64(amount * secs_per).ok()?)?;
        parts += 1;
        rest = after[unit_end..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
        rest = rest.strip_prefix("and ").unwrap_or(rest);
        if spoken_amount(rest).is_none() {
            break;
        }
    }
    (parts > 0).then_some(total)
}

/// A leading number ("2", "34.07") or "a"/"an", and the rest of the text.
fn spoken_amount(s: &str) -> Option<(f64, &str)> {
    for word in ["an ", "a "] {
        if let Some(rest) = s.strip_prefix(word) {
            return Some((1.0, rest));
        }
    }
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let num = s[..end].trim_end_matches('.');
    if num.is_empty() || num.len() > 15 {
        return None;
    }
    let v = num
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)?;
    Some((v, &s[num.len()..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixMillis = UnixMillis(1_764_331_200_000);

    #[test]
    fn go_durations() {
        let ms = |s| parse_go_duration(s).map(|d| d.as_micros());
        assert_eq!(ms("1s"), Some(1_000_000));
        assert_eq!(ms("6m0s"), Some(360_000_000));
        assert_eq!(ms("12ms"), Some(12_000));
        assert_eq!(ms("1h2m3.5s"), Some(3_723_500_000));
        assert_eq!(ms("250us"), Some(250));
        assert_eq!(ms("250µs"), Some(250));
        assert_eq!(ms("250μs"), Some(250));
        assert_eq!(ms(".5s"), Some(500_000));
        assert_eq!(ms("0"), Some(0));
        assert_eq!(ms("+2s"), Some(2_000_000));
        for bad in [
            "",
            "-1s",
            "5",
            "1x",
            "s",
            ".s",
            "1.2.3s",
            "9999999999999999999999999999999h",
            "1s2",
        ] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rfc3339() {
        assert_eq!(
            parse_rfc3339("2026-11-28T12:00:17Z"),
            Some(UnixMillis(1_795_867_217_000))
        );
        assert_eq!(parse_rfc3339("2025-11-28T12:00:00Z"), Some(NOW));
        assert_eq!(
            parse_rfc3339("2025-11-28T13:00:00.250+01:00"),
            Some(UnixMillis(NOW.0 + 250))
        );
        assert_eq!(
            parse_rfc3339("2025-11-28t07:00:00.1234567-05:00"),
            Some(UnixMillis(NOW.0 + 123))
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z"),
            Some(UnixMillis::from_secs(1_709_164_800))
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(UnixMillis(0)));
        for bad in [
            "2023-02-29T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-11-28 12:00:00Z",
            "2025-11-28T24:00:00Z",
            "2025-11-28T12:00:00",
            "2025-11-28T12:00:00.Z",
            "2025-11-28T12:00:00+0100",
            "2025-11-28T12:00:00+01:00x",
            "1970-01-01T00:00:00+01:00",
            "２０２５-11-28T12:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(
            parse_retry_after("17", NOW),
            Some(UnixMillis(NOW.0 + 17_000))
        );
        assert_eq!(
            parse_retry_after(" 1.5 ", NOW),
            Some(UnixMillis(NOW.0 + 1_500))
        );
        assert_eq!(
            parse_retry_after("Fri, 28 Nov 2025 12:30:00 GMT", NOW),
            Some(UnixMillis(NOW.0 + 1_800_000))
        );
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW),
            Some(NOW)
        );
        assert_eq!(parse_retry_after("-5", NOW), None);
        assert_eq!(parse_retry_after("soon", NOW), None);
        assert_eq!(parse_retry_after("99999999999999999999999", NOW), None);
        assert_eq!(
            parse_retry_after("18446744073709551615", NOW),
            Some(UnixMillis(u64::MAX))
        );
    }

    #[test]
    fn epochs() {
        assert_eq!(
            parse_epoch("1764334800"),
            Some(UnixMillis(1_764_334_800_000))
        );
        assert_eq!(
            parse_epoch("1764334800.5"),
            Some(UnixMillis(1_764_334_800_500))
        );
        assert_eq!(
            parse_epoch("1764334800000"),
            Some(UnixMillis(1_764_334_800_000))
        );
        assert_eq!(parse_epoch("-1"), None);
        assert_eq!(parse_epoch("1e9"), None);
    }

    #[test]
    fn human_sentences() {
        let secs = |s| parse_human_delay(s).map(|d| d.as_millis());
        assert_eq!(secs("... try again in 2 hours"), Some(7_200_000));
        assert_eq!(secs("Please retry in 34.07s."), Some(34_070));
        assert_eq!(secs("Your limit resets in 5 minutes"), Some(300_000));
        assert_eq!(
            secs("Please try again in 1m30s. Visit https://x"),
            Some(90_000)
        );
        assert_eq!(secs("try again in an hour"), Some(3_600_000));
        assert_eq!(secs("try again in 1 hour and 30 minutes"), Some(5_400_000));
        assert_eq!(secs("retry after 30 seconds"), Some(30_000));
        assert_eq!(
            secs("Number of request tokens has exceeded your per-minute rate limit"),
            None
        );
        assert_eq!(secs("Rate limit reached in 2024"), None);
        assert_eq!(secs("stored within 5 minutes"), None);
    }

    #[test]
    fn pacific_midnight() {
        // 2025-11-28T12:00Z → 2025-11-29T08:00Z.
        assert_eq!(
            next_pacific_midnight(NOW),
            UnixMillis(NOW.0 + 20 * 3_600_000)
        );
        let at_eight = UnixMillis(NOW.0 - 4 * 3_600_000);
        assert_eq!(
            next_pacific_midnight(at_eight),
            UnixMillis(at_eight.0 + 86_400_000)
        );
    }

    #[test]
    fn lenient_truncated_body() {
        let eb = ErrorBody::parse(br#"{"error":{"type":"usage_limit_reached","message":"The usage limit has been reached","resets_at":1764334800,"plan_type":"pl"#);
        assert_eq!(eb.tokens, ["usage_limit_reached"]);
        assert_eq!(eb.resets_at, Some(UnixMillis(1_764_334_800_000)));
        assert_eq!(
            eb.message.as_deref(),
            Some("The usage limit has been reached")
        );
    }

    #[test]
    fn cut_off_values_not_trusted() {
        let eb = ErrorBody::parse(br#"{"error":{"type":"usage_limit_rea"#);
        assert!(eb.tokens.is_empty());
        let eb =
            ErrorBody::parse(br#"{"error":{"type":"usage_limit_reached","resets_in_seconds":36"#);
        assert_eq!(eb.tokens, ["usage_limit_reached"]);
        assert_eq!(eb.resets_in, None);
    }

    #[test]
    fn tokens_never_hold_prose() {
        let eb = ErrorBody::parse(br#"{"error":{"code":"Incorrect API key provided: sk-abc","type":"invalid_request_error"}}"#);
        assert_eq!(eb.tokens, ["invalid_request_error"]);
    }
}
