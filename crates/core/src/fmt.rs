//! How marathon writes a duration for people: one format everywhere (event
//! summaries, the attempt trace, "all accounts unavailable" messages, the
//! status table, the CLI), so one cooldown reads the same wherever it shows.

use std::fmt;
use std::time::Duration;

/// A duration for people: `250ms`, `45s`, `2m05s`, `1h02m`, `3d04h`.
///
/// At most two units, the smaller zero-padded so columns line up. Below a
/// second it is milliseconds, rounded up; above, the seconds are rounded up
/// and the units that do not fit are cut: a wait still running never reads
/// `0s` (0.4 s left is `400ms`, 1.2 s is `2s`), and a one-hour reset a second
/// of jitter away still reads `1h00m`. Zero is `0s`.
///
/// ```
/// use std::time::Duration;
/// use marathon_core::fmt::HumanDuration;
///
/// assert_eq!(HumanDuration(Duration::from_millis(250)).to_string(), "250ms");
/// assert_eq!(HumanDuration(Duration::from_secs(45)).to_string(), "45s");
/// assert_eq!(HumanDuration(Duration::from_secs(3720)).to_string(), "1h02m");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// A moment for people, in UTC: `14:05 UTC` when it is less than a day
/// after `now`, else `2026-12-01 14:05 UTC`. Said beside a duration ("usable
/// again in 1h00m (at 14:05 UTC)") so a user can plan without arithmetic.
///
/// ```
/// use marathon_core::clock::UnixMillis;
/// use marathon_core::fmt::ClockTime;
///
/// let now = UnixMillis(1_764_547_200_000); // 2025-12-01 00:00 UTC
/// let soon = ClockTime { at: UnixMillis(now.0 + 3_900_000), now };
/// assert_eq!(soon.to_string(), "01:05 UTC");
/// let later = ClockTime { at: UnixMillis(now.0 + 2 * 86_400_000), now };
/// assert_eq!(later.to_string(), "2025-12-03 00:00 UTC");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockTime {
    /// The moment.
    pub at: crate::clock::UnixMillis,
    /// Now, to decide whether the date is needed.
    pub now: crate::clock::UnixMillis,
}

impl fmt::Display for ClockTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.at.as_secs();
        let (days, rest) = (secs / 86_400, secs % 86_400);
        let (h, m) = (rest / 3600, rest % 3600 / 60);
        if self.at.0.saturating_sub(self.now.0) < 86_400_000 {
            return write!(f, "{h:02}:{m:02} UTC");
        }
        let (y, mo, d) = civil_from_days(days as i64);
        write!(f, "{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
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

const MINUTE: u128 = 60;
const HOUR: u128 = 60 * MINUTE;
const DAY: u128 = 24 * HOUR;

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        let ms = nanos.div_ceil(1_000_000);
        if ms < 1000 {
            return write!(f, "{ms}ms");
        }
        let secs = ms.div_ceil(1000);
        if secs < MINUTE {
            return write!(f, "{secs}s");
        }
        if secs < HOUR {
            return write!(f, "{}m{:02}s", secs / MINUTE, secs % MINUTE);
        }
        if secs < DAY {
            return write!(f, "{}h{:02}m", secs / HOUR, secs % HOUR / MINUTE);
        }
        write!(f, "{}d{:02}h", secs / DAY, secs % DAY / HOUR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_range_and_its_boundaries() {
        let cases = [
            (0, "0s"),
            (1, "1ms"),
            (500, "500ms"),
            (999, "999ms"),
            (1000, "1s"),
            // Rounded up: 1.5 s left is not "retry in 1s".
            (1_500, "2s"),
            (17_000, "17s"),
            (59_000, "59s"),
            (59_001, "1m00s"),
            (60_000, "1m00s"),
            (125_000, "2m05s"),
            (360_000, "6m00s"),
            (2_094_000, "34m54s"),
            (3_599_000, "59m59s"),
            (3_599_001, "1h00m"),
            (3_600_000, "1h00m"),
            (3_720_000, "1h02m"),
            // A one-hour reset plus a second of jitter.
            (3_601_000, "1h00m"),
            (3_723_500, "1h02m"),
            (86_340_000, "23h59m"),
            (86_399_999, "1d00h"),
            (86_399_000, "23h59m"),
            (86_400_000 * 7, "7d00h"),
            (86_400_000 + 3 * 3_600_000, "1d03h"),
        ];
        for (ms, want) in cases {
            assert_eq!(
                HumanDuration(Duration::from_millis(ms)).to_string(),
                want,
                "{ms}ms"
            );
        }
    }

    #[test]
    fn sub_millisecond_waits_are_not_shown_as_zero() {
        assert_eq!(HumanDuration(Duration::from_nanos(1)).to_string(), "1ms");
    }
}
