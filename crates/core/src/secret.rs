//! Secret values (API keys, access and refresh tokens).
//!
//! A [`Secret`] never prints its contents: `Debug` and `Display` both render
//! `Secret([redacted])`, so a secret that slips into a log line, an event, an
//! error message or a panic stays hidden. Reading the value takes an explicit
//! call to [`Secret::expose`], which is easy to grep for in review.
//!
//! There is deliberately no `PartialEq`: comparing secrets should be rare and
//! explicit ([`Secret::same_as`]), not something `==` does by accident.

use std::fmt;

/// A string that must never be shown: an API key, an access token, a refresh token.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The raw value. Call this only where the value leaves for its owner
    /// (an upstream request header, the store file, a token endpoint).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether two secrets hold the same value (e.g. "did another process
    /// already rotate this refresh token?"). Constant-time in the common length.
    pub fn same_as(&self, other: &Secret) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A URL as it may be shown (banner, status, error message): a user name or
/// password before the host (`https://user:pw@host`) and the query string
/// (`?key=...`) are replaced by `[redacted]`, the fragment is dropped.
/// Config refuses such URLs where it can; this keeps one that slipped
/// through (or a mistyped one quoted in an error) from printing a credential.
pub fn redact_url(url: &str) -> String {
    let url = url.split('#').next().unwrap_or_default();
    let (url, query) = match url.split_once('?') {
        Some((before, _)) => (before, "?[redacted]"),
        None => (url, ""),
    };
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("[redacted]@{host}"),
        None => authority.to_owned(),
    };
    let scheme = scheme.map(|s| format!("{s}://")).unwrap_or_default();
    format!("{scheme}{authority}{path}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("sk-ant-very-secret");
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some(Secret([redacted]))");
        assert_eq!(s.expose(), "sk-ant-very-secret");
    }

    #[test]
    fn same_as_compares_values() {
        assert!(Secret::new("a").same_as(&Secret::new("a")));
        assert!(!Secret::new("a").same_as(&Secret::new("b")));
        assert!(!Secret::new("a").same_as(&Secret::new("ab")));
    }

    #[test]
    fn serializes_transparently_for_the_store() {
        let s = Secret::new("tok");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"tok\"");
    }

    #[test]
    fn redact_url_hides_userinfo_and_query() {
        assert_eq!(
            redact_url("https://user:hunter2@api.example.com:8443/v1"),
            "https://[redacted]@api.example.com:8443/v1"
        );
        assert_eq!(
            redact_url("https://hooks.example.com/x?token=hunter2#frag"),
            "https://hooks.example.com/x?[redacted]"
        );
        // An '@' in the path is not userinfo; one in the authority is, even
        // without a scheme (a mistyped URL quoted in an error).
        assert_eq!(
            redact_url("https://example.com/users/@me"),
            "https://example.com/users/@me"
        );
        assert_eq!(redact_url("user:hunter2@host/x"), "[redacted]@host/x");
        assert_eq!(redact_url("http://127.0.0.1:9000"), "http://127.0.0.1:9000");
    }
}
