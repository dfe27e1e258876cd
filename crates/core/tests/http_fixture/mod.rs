//! Reads the raw-HTTP fixtures in `tests/fixtures/` (see its README).

#![allow(dead_code, unreachable_pub)] // Each test binary uses part of this module.

use marathon_core::UnixMillis;

/// 2025-11-28T12:00:00Z: the "now" that the epoch values in the samples assume.
pub const NOW: u64 = 1_764_331_200_000;
/// 2026-11-28T12:00:00Z: the "now" of the Anthropic API-key sample's RFC 3339 resets.
pub const NOW26: u64 = 1_795_867_200_000;
pub const SEC: u64 = 1_000;
pub const MIN: u64 = 60 * SEC;
pub const HOUR: u64 = 60 * MIN;

pub fn at(ms: u64) -> UnixMillis {
    UnixMillis(ms)
}

/// A fixture file's text, by name.
macro_rules! fx {
    ($file:literal) => {
        include_str!(concat!("fixtures/", $file))
    };
}
pub(crate) use fx;

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// `HTTP/1.1 <status>`, `name: value` lines, a blank line, the body verbatim.
pub fn parse(raw: &str) -> Fixture {
    let (head, body) = raw
        .split_once("\n\n")
        .unwrap_or((raw.trim_end_matches('\n'), ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("fixture status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Fixture {
        status,
        headers,
        body: body.as_bytes().to_vec(),
    }
}
