//! The subscription usage endpoints' answers, as usage windows.
//!
//! Two shapes (DESIGN §10), both zero-spend reads a poller makes with the
//! account's own token:
//! - Anthropic's OAuth usage (`GET /api/oauth/usage`): `five_hour`,
//!   `seven_day` and per-model weekly windows (`seven_day_opus`, ...), each
//!   `{ "utilization": <percent>, "resets_at": "<RFC 3339>" | null }`; newer
//!   answers may carry `limits[]` (`kind`, `percent`, `resets_at`) instead;
//! - ChatGPT's usage for Codex (`GET /backend-api/wham/usage`):
//!   `rate_limit.primary_window` / `secondary_window`, each
//!   `{ "used_percent", "limit_window_seconds", "reset_at": <unix seconds> }`.
//!
//! Windows get the names the response headers give them (`5h`, `7d`,
//! `primary`, `secondary`), so a poll and a response update the same window.

use serde_json::Value;

use crate::clock::UnixMillis;
use crate::hints::parse_rfc3339;
use crate::outcome::UsageWindow;

/// Which usage endpoint a provider has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UsageFormat {
    /// Anthropic's OAuth usage endpoint.
    AnthropicOauth,
    /// ChatGPT's `wham/usage` endpoint (Codex).
    ChatgptWham,
}

impl UsageFormat {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageFormat::AnthropicOauth => "anthropic-oauth",
            UsageFormat::ChatgptWham => "chatgpt-wham",
        }
    }

    /// The windows in a 200 answer; an answer of another shape gives none.
    pub fn parse(self, body: &[u8]) -> Vec<UsageWindow> {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return Vec::new();
        };
        match self {
            UsageFormat::AnthropicOauth => anthropic(&v),
            UsageFormat::ChatgptWham => chatgpt(&v),
        }
    }
}

/// At most this many windows are kept from one answer (a hostile or broken
/// endpoint cannot grow an account's status without bound).
const MAX_WINDOWS: usize = 8;

fn percent(v: &Value) -> Option<f64> {
    let p = v.as_f64()?;
    p.is_finite().then(|| (p / 100.0).clamp(0.0, 1.0))
}

/// `five_hour` → `5h`, `seven_day` → `7d`, `seven_day_opus` → `7d_opus`.
fn anthropic_name(key: &str) -> Option<String> {
    let (base, rest) = if let Some(rest) = key.strip_prefix("five_hour") {
        ("5h", rest)
    } else if let Some(rest) = key.strip_prefix("seven_day") {
        ("7d", rest)
    } else {
        return None;
    };
    let name = format!("{base}{rest}");
    let safe = name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    safe.then_some(name)
}

fn anthropic_window(name: String, percent_value: &Value, resets_at: &Value) -> UsageWindow {
    let minutes = if name.starts_with("5h") { 300 } else { 10_080 };
    UsageWindow {
        name,
        utilization: percent(percent_value).unwrap_or(0.0),
        resets_at: resets_at.as_str().and_then(parse_rfc3339),
        status: None,
        window_minutes: Some(minutes),
    }
}

fn anthropic(v: &Value) -> Vec<UsageWindow> {
    let mut out = Vec::new();
    if let Some(limits) = v.get("limits").and_then(Value::as_array) {
        for l in limits {
            let Some(name) = l
                .get("kind")
                .and_then(Value::as_str)
                .and_then(anthropic_name)
            else {
                continue;
            };
            if l.get("percent").and_then(percent).is_none() {
                continue;
            }
            out.push(anthropic_window(
                name,
                &l["percent"],
                l.get("resets_at").unwrap_or(&Value::Null),
            ));
        }
    } else if let Some(obj) = v.as_object() {
        for (key, w) in obj {
            let Some(name) = anthropic_name(key) else {
                continue;
            };
            let Some(u) = w.get("utilization").filter(|u| percent(u).is_some()) else {
                continue;
            };
            out.push(anthropic_window(
                name,
                u,
                w.get("resets_at").unwrap_or(&Value::Null),
            ));
        }
    }
    out.truncate(MAX_WINDOWS);
    out
}

fn chatgpt(v: &Value) -> Vec<UsageWindow> {
    let Some(limits) = v.get("rate_limit") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, name) in [
        ("primary_window", "primary"),
        ("secondary_window", "secondary"),
    ] {
        let Some(w) = limits.get(key).filter(|w| w.is_object()) else {
            continue;
        };
        let Some(utilization) = w.get("used_percent").and_then(percent) else {
            continue;
        };
        out.push(UsageWindow {
            name: name.to_owned(),
            utilization,
            resets_at: w
                .get("reset_at")
                .and_then(Value::as_u64)
                .and_then(|s| s.checked_mul(1000))
                .map(UnixMillis),
            status: None,
            window_minutes: w
                .get("limit_window_seconds")
                .and_then(Value::as_u64)
                .map(|s| s / 60),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_windows_with_per_model_weeks() {
        let body = br#"{
            "five_hour": {"utilization": 42.0, "resets_at": "2025-11-28T13:00:00Z"},
            "seven_day": {"utilization": 12, "resets_at": "2025-12-03T14:00:00+00:00"},
            "seven_day_opus": {"utilization": 3.5, "resets_at": null},
            "seven_day_oauth_apps": null,
            "extra_usage": {"is_enabled": false}
        }"#;
        let mut w = UsageFormat::AnthropicOauth.parse(body);
        w.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<&str> = w.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["5h", "7d", "7d_opus"]);
        assert!((w[0].utilization - 0.42).abs() < 1e-9);
        assert_eq!(w[0].resets_at, Some(UnixMillis::from_secs(1_764_334_800)));
        assert_eq!(w[0].window_minutes, Some(300));
        assert_eq!(w[2].resets_at, None);
        assert_eq!(w[2].window_minutes, Some(10_080));
    }

    #[test]
    fn anthropic_limits_array() {
        let body = br#"{"limits":[
            {"kind":"five_hour","percent":100,"resets_at":"2025-11-28T13:00:00Z"},
            {"kind":"something_else","percent":1},
            {"kind":"seven_day","percent":"x"}
        ]}"#;
        let w = UsageFormat::AnthropicOauth.parse(body);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].name, "5h");
        assert_eq!(w[0].utilization, 1.0);
    }

    #[test]
    fn chatgpt_primary_and_secondary() {
        let body = br#"{"plan_type":"pro","rate_limit":{
            "primary_window":{"used_percent":37.5,"limit_window_seconds":18000,"reset_at":1764334800},
            "secondary_window":{"used_percent":100.0,"limit_window_seconds":604800,"reset_at":1764770400}}}"#;
        let w = UsageFormat::ChatgptWham.parse(body);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].name, "primary");
        assert_eq!(w[0].utilization, 0.375);
        assert_eq!(w[0].window_minutes, Some(300));
        assert_eq!(w[1].resets_at, Some(UnixMillis::from_secs(1_764_770_400)));
        assert_eq!(w[1].utilization, 1.0);
    }

    /// Guards against an odd answer turning into a window (or a panic).
    #[test]
    fn other_shapes_give_no_windows() {
        for body in [
            &b"not json"[..],
            b"[]",
            b"{}",
            b"{\"rate_limit\":null}",
            b"{\"five_hour\":{\"utilization\":\"NaN\"}}",
            b"{\"five_hourAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\":{\"utilization\":1}}",
        ] {
            assert!(UsageFormat::AnthropicOauth.parse(body).is_empty(), "{body:?}");
            assert!(UsageFormat::ChatgptWham.parse(body).is_empty(), "{body:?}");
        }
    }
}
