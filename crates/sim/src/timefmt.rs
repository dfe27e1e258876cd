//! The time formats providers put in reset hints.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Whole epoch seconds, rounded up so a client never retries before the real reset.
pub(crate) fn epoch_secs_ceil(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Whole seconds in `d`, rounded up, at least 1 (a `retry-after: 0` invites a storm).
pub(crate) fn secs_ceil(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// RFC 3339 UTC with second precision, rounded up: `2026-11-28T12:00:17Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = epoch_secs_ceil(t) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Milliseconds rounded up.
fn millis_ceil(d: Duration) -> u128 {
    let ms = d.as_millis();
    if !d.as_nanos().is_multiple_of(1_000_000) {
        ms + 1
    } else {
        ms
    }
}

/// `3.5` from 3500 ms, `60` from 60000 ms.
fn decimal_secs(ms: u128) -> String {
    let (s, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        s.to_string()
    } else {
        let f = format!("{frac:03}");
        format!("{s}.{}", f.trim_end_matches('0'))
    }
}

/// A Go `time.Duration` string as OpenAI sends it: `6m0s`, `12ms`, `1h2m3.5s`.
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = millis_ceil(d);
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let h = ms / 3_600_000;
    let m = (ms / 60_000) % 60;
    let s = decimal_secs(ms % 60_000);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// A protobuf JSON duration as Google sends it: `34.07s`.
pub(crate) fn proto_duration(d: Duration) -> String {
    format!("{}s", decimal_secs(millis_ceil(d)))
}

/// "2 hours", "1 hour", "45 minutes", "30 seconds", rounded up.
pub(crate) fn human_duration(d: Duration) -> String {
    let s = secs_ceil(d);
    let (n, unit) = if s >= 3600 {
        (s.div_ceil(3600), "hour")
    } else if s >= 60 {
        (s.div_ceil(60), "minute")
    } else {
        (s, "second")
    };
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// A utilisation in 0..=1 as the unified headers print it: `1.0`, `0.42`.
pub(crate) fn ratio(x: f64) -> String {
    let r = (x.clamp(0.0, 1.0) * 100.0).round() / 100.0;
    format!("{r:?}")
}

/// A percentage as Codex prints it: `100.0`, `37.5`.
pub(crate) fn percent(x: f64) -> String {
    let r = (x.clamp(0.0, 1.0) * 1000.0).round() / 10.0;
    format!("{r:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_867_217); // 2026-11-28T12:00:17Z
        assert_eq!(rfc3339(t), "2026-11-28T12:00:17Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        // Rounded up: a reset half a second in means the next whole second.
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(500)),
            "1970-01-01T00:00:01Z"
        );
    }

    #[test]
    fn go_durations_look_like_openais() {
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_millis(12)), "12ms");
        assert_eq!(go_duration(Duration::from_millis(3_723_500)), "1h2m3.5s");
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn other_formats() {
        assert_eq!(proto_duration(Duration::from_millis(34_070)), "34.07s");
        assert_eq!(proto_duration(Duration::from_secs(5)), "5s");
        assert_eq!(human_duration(Duration::from_secs(7200)), "2 hours");
        assert_eq!(human_duration(Duration::from_secs(3600)), "1 hour");
        assert_eq!(human_duration(Duration::from_secs(59)), "59 seconds");
        assert_eq!(human_duration(Duration::from_secs(61)), "2 minutes");
        assert_eq!(ratio(1.0), "1.0");
        assert_eq!(ratio(0.42), "0.42");
        assert_eq!(percent(1.0), "100.0");
        assert_eq!(percent(0.375), "37.5");
        assert_eq!(secs_ceil(Duration::from_millis(1)), 1);
        assert_eq!(secs_ceil(Duration::from_millis(16_001)), 17);
    }
}
