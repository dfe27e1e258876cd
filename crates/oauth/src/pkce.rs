//! PKCE (RFC 7636, S256 only), `state` values, and reading id-token claims.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

/// `n` random bytes, base64url without padding.
pub(crate) fn random_token(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // SystemRandom reads the OS CSPRNG; it fails only when the OS has none,
    // and then no login can be safe, so refusing loudly is right.
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the operating system's random number generator is unavailable");
    URL_SAFE_NO_PAD.encode(buf)
}

/// A PKCE code verifier. Single use: not `Clone`, consumed by the token request.
pub struct PkceVerifier(String);

impl PkceVerifier {
    /// A fresh verifier: 32 random bytes → 43 base64url characters (the
    /// RFC 7636 minimum length, the common choice).
    pub fn generate() -> Self {
        PkceVerifier(random_token(32))
    }

    /// A verifier handed to us by a server (Codex device flow returns one).
    pub fn from_server(value: String) -> Self {
        PkceVerifier(value)
    }

    /// The S256 challenge: base64url(sha256(verifier)).
    pub fn challenge(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes());
        URL_SAFE_NO_PAD.encode(digest.as_ref())
    }

    /// The verifier itself, for the token request only.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PkceVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PkceVerifier([redacted])")
    }
}

/// The claims of a JWT (an id token), decoded without verifying the
/// signature. That is allowed here because marathon only reads id tokens it
/// received directly from the token endpoint over TLS (OpenID Connect Core
/// §3.1.3.7), and it uses them for labels and dedupe, never for access
/// decisions.
pub fn jwt_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        serde_json::Value::Object(m) => Some(m),
        _ => None,
    }
}

/// Follows a path of object keys into a JSON value.
pub(crate) fn json_path<'a>(
    value: &'a serde_json::Value,
    path: &[String],
) -> Option<&'a serde_json::Value> {
    let mut cur = value;
    for key in path {
        cur = cur.as_object()?.get(key)?;
    }
    Some(cur)
}

/// A JSON value as a non-empty identity string (strings as they are, numbers printed).
pub(crate) fn json_string(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_challenge_matches_rfc7636_appendix_b() {
        let v = PkceVerifier::from_server("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into());
        assert_eq!(v.challenge(), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn verifiers_are_random_and_long_enough() {
        let a = PkceVerifier::generate();
        let b = PkceVerifier::generate();
        assert_eq!(a.secret().len(), 43);
        assert_ne!(a.secret(), b.secret());
        assert_eq!(format!("{a:?}"), "PkceVerifier([redacted])");
    }

    #[test]
    fn reads_claims_from_a_real_oidc_provider_id_token() {
        // Issued by tests/oidc/server.mjs (oidc-provider 9.13.3) for alice.
        let t = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImtleXN0b3JlLUNIQU5HRS1NRSJ9.eyJzdWIiOiJhbGljZSIsImVtYWlsIjoiYWxpY2VAZXhhbXBsZS5jb20iLCJlbWFpbF92ZXJpZmllZCI6dHJ1ZSwiYXVkIjoibWFyYXRob24iLCJleHAiOjE3OTU4NzQxMDYsImlhdCI6MTc5NTg3MDUwNiwiaXNzIjoiaHR0cDovLzEyNy4wLjAuMTo0MjQwNSJ9.sig";
        let c = jwt_claims(t).unwrap();
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["email"], "alice@example.com");
        assert!(jwt_claims("not-a-jwt").is_none());
        assert!(jwt_claims("a.!!!.c").is_none());
    }
}
