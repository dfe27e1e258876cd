//! Value parsers shared by the config file and `MARATHON_*` variables, so a
//! value means the same wherever it is written. Errors say what was expected;
//! none of these values is secret, so quoting the input is fine.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use marathon_core::Secret;
use marathon_core::strategy::Strategy;

use crate::model::ProviderKind;

/// `30s`, `5m`, `1h`, `1h 30m`, `250ms`.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?}: {e} (expected e.g. \"30s\", \"5m\", \"1h\")"))
}

/// A duration, or `off` for none (`0s` also means none: waiting zero is not waiting).
pub(crate) fn optional_duration(s: &str) -> Result<Option<Duration>, String> {
    if s.trim() == "off" {
        return Ok(None);
    }
    let d = duration(s).map_err(|e| format!("{e} or \"off\""))?;
    Ok((!d.is_zero()).then_some(d))
}

/// The usage poll interval: a duration of at least a minute (the usage
/// endpoints are throttled), or `"off"`.
pub(crate) fn usage_poll(s: &str) -> Result<Option<Duration>, String> {
    let d = optional_duration(s)?;
    if let Some(d) = d
        && d < Duration::from_secs(60)
    {
        return Err(format!(
            "usage_poll {s:?} is too often: the usage endpoints are throttled; \
             give at least \"1m\", or \"off\""
        ));
    }
    Ok(d)
}

/// A duration above zero (a timeout of zero would refuse everything).
pub(crate) fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "{s:?} is zero; give a duration above zero, e.g. \"10s\""
        ));
    }
    Ok(d)
}

/// `auto` (sized from the descriptor limit) or a number of connections, at least 1.
pub(crate) fn max_connections_str(s: &str) -> Result<Option<u32>, String> {
    let s = s.trim();
    if s == "auto" {
        return Ok(None);
    }
    let n: i64 = s.parse().map_err(|_| {
        format!("invalid max_connections {s:?} (expected a number of at least 1, or \"auto\")")
    })?;
    max_connections_int(n)
}

pub(crate) fn max_connections_int(n: i64) -> Result<Option<u32>, String> {
    match u32::try_from(n) {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(format!(
            "max_connections must be at least 1 (got {n}); \"auto\" sizes it from the descriptor limit"
        )),
    }
}

/// A host name a client may send in `Host` (`proxy.internal`), or an IP
/// address; lower-cased, without a port.
pub(crate) fn host_name(s: &str) -> Result<String, String> {
    let t = s.trim().to_ascii_lowercase();
    let bracketed = t.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
    let ok = match bracketed {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !t.is_empty()
                && t.len() <= 253
                && !t.starts_with(['.', '-'])
                && !t.ends_with('.')
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        }
    };
    if ok {
        Ok(t)
    } else {
        Err(format!(
            "invalid host name {s:?} (expected a name such as \"proxy.internal\", without scheme or port)"
        ))
    }
}

/// A web origin: `http://` or `https://`, a host, an optional port, no path;
/// lower-cased as browsers send it.
pub(crate) fn origin(s: &str) -> Result<String, String> {
    let t = s.trim().to_ascii_lowercase();
    let err = || {
        format!(
            "invalid origin {s:?} (expected scheme://host[:port] with no path, e.g. \"https://app.example\" or \"http://localhost:3000\")"
        )
    };
    let rest = t
        .strip_prefix("https://")
        .or_else(|| t.strip_prefix("http://"))
        .ok_or_else(err)?;
    let (host, port) = match rest.find(']') {
        Some(i) if rest.starts_with('[') => (&rest[..=i], rest[i + 1..].strip_prefix(':')),
        _ => match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    let trailing = rest.len() - host.len() - port.map_or(0, |p| p.len() + 1);
    if trailing != 0 {
        return Err(err());
    }
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(err());
    }
    host_name(host).map_err(|_| err())?;
    Ok(t)
}

/// A comma-separated list (for `MARATHON_*` variables); blanks are dropped.
pub(crate) fn list(s: &str) -> Vec<&str> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .collect()
}

pub(crate) fn strategy(s: &str) -> Result<Strategy, String> {
    Strategy::from_str(s.trim()).map_err(|_| {
        let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.as_str()).collect();
        format!(
            "unknown strategy {s:?} (expected one of {})",
            names.join(", ")
        )
    })
}

pub(crate) fn kind(s: &str) -> Result<ProviderKind, String> {
    ProviderKind::from_str(s.trim())
}

/// A positive attempt count, or `accounts` for one attempt per account.
pub(crate) fn max_attempts_str(s: &str) -> Result<Option<u32>, String> {
    let s = s.trim();
    if s == "accounts" {
        return Ok(None);
    }
    let n: i64 = s.parse().map_err(|_| {
        format!("invalid max_attempts {s:?} (expected a number of at least 1, or \"accounts\")")
    })?;
    max_attempts_int(n)
}

/// `max_in_flight` as text: `off` (no cap) or a number of at least 1.
pub(crate) fn max_in_flight_str(s: &str) -> Result<Option<u32>, String> {
    let s = s.trim();
    if s == "off" {
        return Ok(None);
    }
    let n: i64 = s.parse().map_err(|_| {
        format!("invalid max_in_flight {s:?} (expected a number of at least 1, or \"off\")")
    })?;
    max_in_flight_int(n)
}

/// `max_in_flight` as a number: at least 1.
pub(crate) fn max_in_flight_int(n: i64) -> Result<Option<u32>, String> {
    match u32::try_from(n) {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(format!(
            "max_in_flight must be at least 1 (got {n}); \"off\" (or no key) means no cap"
        )),
    }
}

/// `store.slot_lease`: at least one second, so renewals (every third of it)
/// are not a busy loop.
pub(crate) fn slot_lease(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?} is under one second; give e.g. \"30s\""));
    }
    Ok(d)
}

pub(crate) fn max_attempts_int(n: i64) -> Result<Option<u32>, String> {
    match u32::try_from(n) {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(format!(
            "max_attempts must be at least 1 (got {n}); \"accounts\" means one per account"
        )),
    }
}

pub(crate) fn count(name: &str, s: &str) -> Result<u32, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("invalid {name} {s:?} (expected a whole number, 0 or more)"))
}

pub(crate) fn count_int(name: &str, n: i64) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| {
        format!(
            "{name} must be a whole number from 0 to {} (got {n})",
            u32::MAX
        )
    })
}

/// A fraction in (0, 1], or `off`.
pub(crate) fn threshold_str(s: &str) -> Result<Option<f64>, String> {
    let s = s.trim();
    if s == "off" {
        return Ok(None);
    }
    let t: f64 = s.parse().map_err(|_| {
        format!("invalid proactive_threshold {s:?} (expected a fraction like 0.95, or \"off\")")
    })?;
    threshold(t)
}

pub(crate) fn threshold(t: f64) -> Result<Option<f64>, String> {
    if t > 0.0 && t <= 1.0 {
        Ok(Some(t))
    } else {
        Err(format!(
            "proactive_threshold must be above 0 and at most 1 (got {t}); e.g. 0.95, or \"off\""
        ))
    }
}

pub(crate) fn listen(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("invalid listen address {s:?} (expected IP:port, e.g. \"127.0.0.1:8787\")")
    })
}

/// An `http://` or `https://` base URL; the trailing slash is dropped so
/// `upstream + path` joins cleanly. A user name or password in it
/// (`https://user:pw@host`) is refused: marathon shows URLs in its banner,
/// status and errors, and sends credentials only from the account store.
/// Errors quote the URL with any such credential and the query redacted.
pub(crate) fn url(what: &str, s: &str) -> Result<String, String> {
    let s = s.trim();
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    let shown = marathon_core::secret::redact_url(s);
    match rest {
        Some(rest) if authority(rest).contains('@') => Err(format!(
            "{what} {shown:?} holds a user name or password before the host; \
             remove the `user:password@` part (marathon would show it in its banner, \
             status and logs; credentials belong in the account store)"
        )),
        Some(rest)
            if !rest.is_empty()
                && !rest.starts_with('/')
                && !rest.contains(char::is_whitespace) =>
        {
            Ok(s.trim_end_matches('/').to_owned())
        }
        _ => Err(format!(
            "invalid {what} {shown:?} (expected an http:// or https:// URL)"
        )),
    }
}

/// A Redis URL: `redis://host[:port][/db]` or `rediss://` (TLS). A user
/// name or password in it is refused, like in every URL marathon shows: they
/// go in `[store] username` / `password` (or `MARATHON_STORE_PASSWORD`).
pub(crate) fn redis_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    let rest = s
        .strip_prefix("rediss://")
        .or_else(|| s.strip_prefix("redis://"));
    let shown = marathon_core::secret::redact_url(s);
    match rest {
        Some(rest) if authority(rest).contains('@') => Err(format!(
            "store URL {shown:?} holds a user name or password before the host; \
             remove the `user:password@` part and set [store] username and password \
             (or MARATHON_STORE_PASSWORD) instead: marathon shows this URL in its logs"
        )),
        Some(rest)
            if !rest.is_empty()
                && !rest.starts_with('/')
                && !rest.contains(char::is_whitespace) =>
        {
            Ok(s.to_owned())
        }
        _ => Err(format!(
            "invalid store URL {shown:?} (expected redis://host:port/db or rediss://...)"
        )),
    }
}

/// A key prefix: letters, digits and `_ - . :`.
pub(crate) fn key_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "invalid key prefix {s:?} (1 to 64 letters, digits, '_', '-', '.' or ':')"
        ))
    }
}

/// `file` or `redis`.
pub(crate) fn store_backend(s: &str) -> Result<crate::model::StoreBackend, String> {
    match s.trim() {
        "file" => Ok(crate::model::StoreBackend::File),
        "redis" | "valkey" => Ok(crate::model::StoreBackend::Redis),
        other => Err(format!(
            "unknown store backend {other:?} (expected \"file\" or \"redis\")"
        )),
    }
}

/// A provider's upstream: a [`url`] without a query string or fragment (the
/// client's own query is appended to each request, and a query here is
/// where a key would hide).
pub(crate) fn upstream_url(s: &str) -> Result<String, String> {
    let u = url("upstream", s)?;
    if u.contains(['?', '#']) {
        return Err(format!(
            "upstream {:?} must not have a query string or fragment; \
             the base URL is scheme, host and path only",
            marathon_core::secret::redact_url(&u)
        ));
    }
    Ok(u)
}

/// The authority of a URL without its scheme: up to the path, query or fragment.
fn authority(rest: &str) -> &str {
    rest.split(['/', '?', '#']).next().unwrap_or_default()
}

/// A header name (RFC 9110 token), lower-cased.
pub(crate) fn header_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!("invalid header name {s:?}"))
    }
}

/// Bytes: a number, or a number with `B`, `KB`, `MB`, `GB` (powers of 1000)
/// or `KiB`, `MiB`, `GiB` (powers of 1024).
pub(crate) fn bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "invalid size {s:?} (expected e.g. \"32MiB\", \"500KB\" or a number of bytes)"
            ));
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| {
            format!("invalid size {s:?} (expected e.g. \"32MiB\", \"500KB\" or a number of bytes)")
        })
}

pub(crate) fn boolean(s: &str) -> Result<bool, String> {
    match s.trim() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("invalid boolean {s:?} (expected true or false)")),
    }
}

/// Provider names become routes and parts of variable names, so they are kept simple.
pub(crate) fn provider_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid provider name {s:?} (use lower-case letters, digits and '-')"
        ))
    }
}

/// An access key's name: shown in status and used as a metrics label, so
/// only `[A-Za-z0-9_.@-]`, 1 to 64 characters.
pub(crate) fn access_key_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "invalid access key name {:?}: use 1 to 64 letters, digits, `_`, `.`, `@` or `-`",
            s.chars().take(64).collect::<String>()
        ))
    }
}

/// `server.upstream_proxy`: "env", "off" or a proxy URL.
pub(crate) fn upstream_proxy(s: &str) -> Result<crate::UpstreamProxy, String> {
    match s.trim() {
        "env" => Ok(crate::UpstreamProxy::Env),
        "off" | "none" => Ok(crate::UpstreamProxy::Off),
        url => proxy_url(url).map(crate::UpstreamProxy::Url),
    }
}

/// A forward proxy: `http://[user:password@]host:port`. Held as a secret
/// (the password), and quoted only redacted.
pub(crate) fn proxy_url(s: &str) -> Result<Secret, String> {
    let s = s.trim();
    let shown = marathon_core::secret::redact_url(s);
    let Some(rest) = s.strip_prefix("http://") else {
        return Err(format!(
            "invalid proxy URL {shown:?}: expected http://host:port (with user:password@ \
             when the proxy asks for credentials); https:// and socks proxies are not supported"
        ));
    };
    let authority = authority(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path = &rest[authority.len()..];
    if host.is_empty() || host.contains(char::is_whitespace) || !matches!(path, "" | "/") {
        return Err(format!(
            "invalid proxy URL {shown:?}: expected http://host:port, without a path"
        ));
    }
    Ok(Secret::new(s.trim_end_matches('/')))
}

/// `server.extra_ca_file`, relative to the config file's directory: read
/// now, so a missing or wrong file is an error at load, naming the key.
pub(crate) fn extra_ca(dir: &std::path::Path, p: &str) -> Result<crate::ExtraCa, String> {
    let path = dir.join(p.trim());
    let pem = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(crate::ExtraCa { path, pem })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(
            duration("5 minutes later")
                .unwrap_err()
                .contains("\"5 minutes later\"")
        );
        assert!(duration("30").is_err(), "a unit is required");
        assert_eq!(optional_duration("off").unwrap(), None);
        assert_eq!(optional_duration("0s").unwrap(), None);
        assert_eq!(
            optional_duration("2m").unwrap(),
            Some(Duration::from_secs(120))
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes("32MiB").unwrap(), 32 << 20);
        assert_eq!(bytes("500KB").unwrap(), 500_000);
        assert_eq!(bytes("1 GiB").unwrap(), 1 << 30);
        assert_eq!(bytes("1024").unwrap(), 1024);
        assert!(bytes("32 megs").is_err());
        assert!(bytes("MiB").is_err());
        assert!(bytes("99999999999999999999GiB").is_err());
    }

    #[test]
    fn urls_and_names() {
        assert_eq!(
            url("upstream", "http://127.0.0.1:9000/").unwrap(),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            url("upstream", "https://chatgpt.com/backend-api/codex").unwrap(),
            "https://chatgpt.com/backend-api/codex"
        );
        assert!(url("upstream", "api.openai.com").is_err());
        assert!(url("upstream", "ftp://x").is_err());
        assert!(url("upstream", "https://").is_err());
        // Userinfo is refused, and never quoted back.
        let err = url("upstream", "https://bob:hunter2@api.example.com/v1").unwrap_err();
        assert!(err.contains("user name or password"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(url("webhook URL", "http://token@hooks.example.com").is_err());
        let err = url("upstream", "htps://bob:hunter2@x").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        // An '@' in the path is not a credential.
        assert!(url("webhook URL", "https://example.com/u/@me").is_ok());
        assert!(upstream_url("https://api.example.com/v1?key=hunter2").is_err());
        assert!(
            !upstream_url("https://api.example.com/v1?key=hunter2")
                .unwrap_err()
                .contains("hunter2")
        );
        assert!(upstream_url("https://api.example.com/v1").is_ok());
        assert_eq!(header_name("X-Session-Id").unwrap(), "x-session-id");
        assert!(header_name("bad header").is_err());
        assert!(provider_name("my-llm2").is_ok());
        assert!(provider_name("My_LLM").is_err());
        assert!(provider_name("").is_err());
    }

    #[test]
    fn hosts_and_origins() {
        assert_eq!(host_name("Proxy.Internal").unwrap(), "proxy.internal");
        assert_eq!(host_name("[::1]").unwrap(), "[::1]");
        assert!(host_name("proxy.internal:8787").is_err(), "no port");
        assert!(host_name("http://proxy").is_err());
        assert!(host_name("").is_err());
        assert_eq!(
            origin("HTTPS://App.Example").unwrap(),
            "https://app.example"
        );
        assert_eq!(
            origin("http://localhost:3000").unwrap(),
            "http://localhost:3000"
        );
        assert_eq!(origin("http://[::1]:3000").unwrap(), "http://[::1]:3000");
        assert!(origin("https://app.example/").is_err(), "no path");
        assert!(origin("app.example").is_err(), "a scheme");
        assert!(origin("null").is_err());
        assert!(origin("http://x:port").is_err());
        assert_eq!(max_connections_str("auto").unwrap(), None);
        assert_eq!(max_connections_str("500").unwrap(), Some(500));
        assert!(max_connections_str("0").is_err());
        assert!(positive_duration("0s").is_err());
        assert_eq!(list(" a, ,b "), ["a", "b"]);
    }

    #[test]
    fn counts_and_thresholds() {
        assert_eq!(max_attempts_str("3").unwrap(), Some(3));
        assert_eq!(max_attempts_str("accounts").unwrap(), None);
        assert!(max_attempts_str("0").is_err());
        assert!(max_attempts_int(-1).is_err());
        assert_eq!(threshold_str("0.9").unwrap(), Some(0.9));
        assert_eq!(threshold_str("off").unwrap(), None);
        assert!(threshold(1.5).is_err());
        assert!(threshold(0.0).is_err());
        assert_eq!(count("network_retry_attempts", "2").unwrap(), 2);
        assert!(count("network_retry_attempts", "-1").is_err());
        assert!(boolean("maybe").is_err());
    }
}
