//! What the `hints`, `classify`, `sse` and `usage` fuzz targets check, over
//! any input.
//!
//! This file is compiled twice: by the fuzz crate (`fuzz/`, built only by
//! `scripts/fuzz`) and, through `#[path]`, by `crates/core/tests/fuzz_seeds.rs`,
//! which runs every checked-in seed through these same functions in the normal
//! test suite. So a change to the core API breaks `cargo test`, not only a fuzz
//! build nobody runs, and the seeds stay valid inputs.
//!
//! A check panics (which libFuzzer reports as a crash) when an invariant the
//! module documentation promises does not hold.

#![allow(unreachable_pub, dead_code)]

use std::time::Duration;

use marathon_core::accounting::{self, Framing, MAX_MODEL_BYTES, TokenUsage, UsageScanner};
use marathon_core::classify::classify;
use marathon_core::hints::{self, MAX_HINT_AHEAD};
use marathon_core::sse::{ErrorScanner, first_event_end};
use marathon_core::{
    ApiFlavor, Class, HeaderLookup, HintSource, Outcome, ResetHint, TransportFailure, UnixMillis,
};

/// 2025-11-28T12:00:00Z, the "now" of the provider fixtures.
pub const FIXTURE_NOW: UnixMillis = UnixMillis(1_764_331_200_000);

/// One response, read from the fixture format of `crates/core/tests/fixtures`.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status (0 when the first line names none).
    pub status: u16,
    /// Lower-cased names, values as written.
    pub headers: Vec<(String, String)>,
    /// The body, byte for byte.
    pub body: Vec<u8>,
    /// The instant the response is judged at: an `x-fuzz-now: <ms>` header,
    /// else [`FIXTURE_NOW`].
    pub now: UnixMillis,
}

/// `HTTP/1.1 <status>`, `name: value` lines, a blank line, the body verbatim.
/// Any bytes are accepted: what does not fit the format is dropped.
pub fn response(data: &[u8]) -> Response {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut now = FIXTURE_NOW;
    let mut headers = Vec::new();
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        let name = name.trim().to_ascii_lowercase();
        if name == "x-fuzz-now" {
            if let Ok(ms) = value.trim().parse() {
                now = UnixMillis(ms);
            }
            continue;
        }
        headers.push((name, value.trim().to_owned()));
    }
    Response {
        status,
        headers,
        body: body.to_vec(),
        now,
    }
}

/// Headers that also answer [`HeaderLookup::has_prefix`], as the proxy's
/// header map does. The plain `Vec` answers `None` there; both must give the
/// same results (the prefix test is an optimisation, never a change of answer).
struct Indexed<'a>(&'a [(String, String)]);

impl HeaderLookup for Indexed<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has_prefix(&self, prefix: &str) -> Option<bool> {
        Some(self.0.iter().any(|(k, _)| k.starts_with(prefix)))
    }
}

/// A hint is strictly after `now` and at most [`MAX_HINT_AHEAD`] later.
fn check_hint_window(hint: Option<ResetHint>, now: UnixMillis, what: &str) {
    if let Some(h) = hint {
        assert!(
            h.at > now && h.at <= now.plus(MAX_HINT_AHEAD),
            "{what}: hint {h:?} outside (now, now + MAX_HINT_AHEAD] for now = {now:?}"
        );
    }
}

/// `hints`: the precedence chains, the usage windows and each value parser.
pub fn hints(data: &[u8]) {
    let r = response(data);
    let plain = &r.headers;
    let indexed = Indexed(&r.headers);

    let reset = hints::reset_hint(plain, &r.body, r.now);
    assert_eq!(reset, hints::reset_hint(&indexed, &r.body, r.now));
    check_hint_window(reset, r.now, "reset_hint");

    let retry = hints::retry_hint(plain, &r.body, r.now);
    assert_eq!(retry, hints::retry_hint(&indexed, &r.body, r.now));
    check_hint_window(retry, r.now, "retry_hint");
    if let Some(h) = retry {
        // The narrower reading uses explicit retry instructions only.
        assert!(
            matches!(
                h.source,
                HintSource::GoogleRetryInfo
                    | HintSource::RetryAfterMs
                    | HintSource::RetryAfterSeconds
                    | HintSource::RetryAfterDate
                    | HintSource::Message
            ),
            "retry_hint from a quota source: {h:?}"
        );
    }

    let usage = hints::usage_windows(plain);
    assert_eq!(usage, hints::usage_windows(&indexed));
    for w in &usage {
        assert!(
            (0.0..=1.0).contains(&w.utilization),
            "utilization out of range: {w:?}"
        );
    }

    for (_, value) in &r.headers {
        value_parsers(value, r.now);
    }
    value_parsers(&String::from_utf8_lossy(&r.body), r.now);
}

/// Every public value parser on one string.
fn value_parsers(s: &str, now: UnixMillis) {
    if let Some(d) = hints::parse_go_duration(s) {
        // Whatever it read, the same span written in nanoseconds reads back equal.
        if let Ok(nanos) = u64::try_from(d.as_nanos()) {
            assert_eq!(
                hints::parse_go_duration(&format!("{nanos}ns")),
                Some(Duration::from_nanos(nanos)),
                "go duration {s:?} = {d:?} does not round-trip through nanoseconds"
            );
        }
    }
    if let Some(at) = hints::parse_retry_after(s, now) {
        // Seconds are added to now; a past date is clamped to now.
        assert!(at >= now, "retry-after {s:?} = {at:?} before now {now:?}");
    }
    let _ = hints::parse_rfc3339(s);
    let _ = hints::parse_epoch(s);
    let _ = hints::parse_human_delay(s);
}

/// `classify`: the response (as every flavor), the body as an in-stream error
/// event, and the outcomes without a response.
pub fn classify_all(data: &[u8]) {
    let r = response(data);
    let indexed = Indexed(&r.headers);
    for flavor in [
        ApiFlavor::Anthropic,
        ApiFlavor::Openai,
        ApiFlavor::Google,
        ApiFlavor::Copilot,
    ] {
        let outcome = Outcome::Response {
            status: r.status,
            headers: &r.headers,
            body: &r.body,
        };
        let c = classify(flavor, &outcome, r.now);
        let same = Outcome::Response {
            status: r.status,
            headers: &indexed,
            body: &r.body,
        };
        assert_eq!(
            c,
            classify(flavor, &same, r.now),
            "has_prefix changed the answer"
        );
        assert_eq!(c.status, Some(r.status));
        if c.class == Class::Success {
            assert!(
                (200..=299).contains(&r.status),
                "{c:?} for status {}",
                r.status
            );
        }
        check_classification(&c, r.now);

        let stream = classify(flavor, &Outcome::StreamError { data: &r.body }, r.now);
        assert_eq!(stream.status, None);
        assert_ne!(
            stream.class,
            Class::Success,
            "an error event is never a success"
        );
        check_classification(&stream, r.now);

        for failure in [
            TransportFailure::Connect,
            TransportFailure::ResetBeforeResponse,
            TransportFailure::Timeout,
        ] {
            let t = classify(flavor, &Outcome::Transport(failure), r.now);
            assert_eq!(t.class, Class::Transport);
            check_classification(&t, r.now);
        }
        let cancelled = classify(flavor, &Outcome::ClientCancelled, r.now);
        assert_eq!(cancelled.class, Class::Cancelled);
        check_classification(&cancelled, r.now);
    }
}

/// What every classification promises, whatever the input.
fn check_classification(c: &marathon_core::Classification, now: UnixMillis) {
    check_hint_window(c.reset, now, "classification");
    if matches!(
        c.class,
        Class::Success | Class::Transport | Class::Cancelled
    ) {
        assert_eq!(c.reset, None, "{c:?} carries a reset");
    }
    // The reason is an identifier, never message text (which may quote a key).
    let reason = c.reason.to_string();
    assert!(
        !reason.is_empty()
            && reason.len() <= 64
            && reason
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')),
        "reason is not an identifier: {reason:?}"
    );
    for w in &c.usage {
        assert!((0.0..=1.0).contains(&w.utilization), "{w:?}");
    }
}

/// `sse`: the scanner gives the same answer however the bytes are split, and
/// agrees with [`first_event_end`] on where the first event ends.
///
/// `0xFF n b` in the input stands for the byte `b` repeated `n * 512` times, so
/// small inputs reach the line and event-data caps (64 KiB); the expanded
/// stream is cut at [`MAX_STREAM`] to keep each run fast.
pub fn sse(data: &[u8]) {
    let stream = expand(data);
    let whole = scan(&[&stream]);

    // Byte by byte is the harshest split; on long streams the short random
    // chunks below come close at a fraction of the cost.
    if stream.len() <= 4096 {
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(scan(&bytes), whole, "byte-by-byte split changed the answer");
    }

    let mut chunks = Vec::new();
    let mut rest = &stream[..];
    let mut rng = fnv1a(&stream);
    while !rest.is_empty() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Mostly short chunks (line endings and BOMs split across them),
        // sometimes long; a little longer on long streams, to stay fast.
        let short = if stream.len() <= 4096 { 9 } else { 64 };
        let len = if rng.is_multiple_of(8) {
            rng % 4096
        } else {
            rng % short
        } as usize;
        let (a, b) = rest.split_at(len.min(rest.len()));
        chunks.push(a);
        rest = b;
    }
    assert_eq!(
        scan(&chunks),
        whole,
        "split into {} chunks changed the answer",
        chunks.len()
    );

    // The proxy peeks until `first_event_end`; the scanner must count that
    // prefix as exactly one complete event, and no event before it.
    let mut s = ErrorScanner::new();
    match first_event_end(&stream) {
        Some(end) => {
            let _ = s.feed(&stream[..end]);
            assert_eq!(s.events_seen(), 1, "first_event_end = {end}");
        }
        None => {
            let _ = s.feed(&stream);
            assert_eq!(
                s.events_seen(),
                0,
                "scanner saw an event first_event_end did not"
            );
        }
    }
}

/// The first error payload (found while feeding, or at the end) and the events
/// seen, for `chunks` fed in order.
fn scan(chunks: &[&[u8]]) -> (Option<Vec<u8>>, u64, bool) {
    let mut s = ErrorScanner::new();
    let mut found_while_feeding = None;
    for c in chunks {
        if let Some(d) = s.feed(c) {
            assert!(s.found());
            found_while_feeding = Some(d);
            break;
        }
    }
    let events = s.events_seen();
    let at_end = s.finish();
    if found_while_feeding.is_some() {
        assert_eq!(at_end, None, "an error was returned twice");
    }
    let found = found_while_feeding.is_some();
    if let Some(d) = found_while_feeding.as_ref().or(at_end.as_ref()) {
        assert!(d.len() <= marathon_core::sse::MAX_EVENT_DATA);
    }
    (found_while_feeding.or(at_end), events, found)
}

/// The longest stream the `sse` check builds: past both 64 KiB caps.
pub const MAX_STREAM: usize = 80 * 1024;

fn expand(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() && out.len() < MAX_STREAM {
        if data[i] == 0xFF && i + 2 < data.len() {
            let n = (usize::from(data[i + 1]) * 512).min(MAX_STREAM - out.len());
            out.extend(std::iter::repeat_n(data[i + 2], n));
            i += 3;
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h | 1
}

/// The usage scanner (token accounting) over any answer, both framings:
/// the same usage and model however the bytes are split, a model within its
/// cap, and a model label (what reaches status and metrics) that is a safe
/// word. The first byte picks the framing; `0xFF n b` runs expand as for `sse`.
pub fn usage(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let framing = if first & 1 == 0 {
        Framing::Json
    } else {
        Framing::EventStream
    };
    let body = expand(rest);
    let whole = usage_scan(framing, &[&body]);
    if body.len() <= 4096 {
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(
            usage_scan(framing, &bytes),
            whole,
            "byte-by-byte split changed the usage"
        );
    }
    let mut chunks = Vec::new();
    let mut left = &body[..];
    let mut rng = fnv1a(&body);
    while !left.is_empty() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let len = if rng.is_multiple_of(8) {
            rng % 4096
        } else {
            rng % 9
        } as usize;
        let (a, b) = left.split_at(len.min(left.len()));
        chunks.push(a);
        left = b;
    }
    assert_eq!(
        usage_scan(framing, &chunks),
        whole,
        "a split changed the usage"
    );
    if let (_, Some(model)) = &whole {
        assert!(
            model.len() <= MAX_MODEL_BYTES,
            "model over its cap: {}",
            model.len()
        );
        if let Some(label) = accounting::model_label(model) {
            assert!(label.len() <= 64 && label.bytes().all(|b| b.is_ascii_graphic()));
        }
    }
    let _ = accounting::request_model(&body);
}

fn usage_scan(framing: Framing, chunks: &[&[u8]]) -> (Option<TokenUsage>, Option<String>) {
    let mut s = UsageScanner::new(framing);
    for c in chunks {
        s.feed(c);
    }
    (s.usage(), s.model().map(|m| m.into_owned()))
}
