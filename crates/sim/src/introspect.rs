//! RFC 7662 token introspection: bearer tokens that no account lists are
//! checked against an authorization server, and the account is the token's
//! `sub` (or `username`).
//!
//! Only positive answers are cached, briefly, so a revoked token stops working
//! within the cache lifetime and an inactive one is re-checked every time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::SimError;
use crate::scenario::{Credential, Scenario};

/// How long a positive answer is trusted when the scenario says nothing.
const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// An introspection call that takes longer than this counts as unavailable.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Past this many cached tokens, expired entries are swept.
const SWEEP_AT: usize = 1024;

/// The authorization server's verdict on a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Active; the account name.
    Active(String),
    /// Inactive, unknown or without an identity.
    Inactive,
    /// The endpoint could not be asked (network, timeout, non-200).
    Unavailable,
}

pub(crate) struct Introspector {
    uri: http::Uri,
    client_id: Option<String>,
    client_secret: Option<Credential>,
    ttl: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
    cache: Mutex<HashMap<String, (Instant, String)>>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("uri", &self.uri)
            .field("client_id", &self.client_id)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Introspector {
    /// An introspector if the scenario configures one.
    pub(crate) fn from_scenario(s: &Scenario) -> Result<Option<Introspector>, SimError> {
        let Some(url) = &s.introspection_url else {
            return Ok(None);
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|_| SimError::Invalid(format!("introspection_url {url:?} is not a URL")))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Ok(Some(Introspector {
            uri,
            client_id: s.introspection_client_id.clone(),
            client_secret: s.introspection_client_secret.clone(),
            ttl: s.introspection_cache.map_or(DEFAULT_TTL, |d| d.0),
            client: Client::builder(TokioExecutor::new()).build(connector),
            cache: Mutex::new(HashMap::new()),
        }))
    }

    /// Asks (or remembers) whether `token` is active and whose it is.
    pub(crate) async fn check(&self, token: &str) -> Verdict {
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((until, name)) = cache.get(token)
                && now < *until
            {
                return Verdict::Active(name.clone());
            }
        }
        let (verdict, exp) = match tokio::time::timeout(TIMEOUT, self.ask(token)).await {
            Ok(Some(answer)) => answer,
            Ok(None) | Err(_) => return Verdict::Unavailable,
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match &verdict {
            Verdict::Active(name) => {
                let mut until = now + self.ttl;
                if let Some(left) = exp {
                    until = until.min(now + left);
                }
                if cache.len() >= SWEEP_AT {
                    cache.retain(|_, (u, _)| now < *u);
                }
                cache.insert(token.to_owned(), (until, name.clone()));
            }
            _ => {
                cache.remove(token);
            }
        }
        verdict
    }

    /// One call to the endpoint; `None` when it cannot answer. Also returns
    /// the time left before the token's `exp`, if given.
    async fn ask(&self, token: &str) -> Option<(Verdict, Option<Duration>)> {
        let mut form = format!("token={}&token_type_hint=access_token", form_encode(token));
        let mut req = http::Request::post(self.uri.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json");
        match (&self.client_id, &self.client_secret) {
            (Some(id), Some(secret)) => {
                // RFC 6749 §2.3.1: form-encode each part, then Basic.
                let pair = format!("{}:{}", form_encode(id), form_encode(secret.expose()));
                req = req.header(
                    http::header::AUTHORIZATION,
                    format!("Basic {}", base64(pair.as_bytes())),
                );
            }
            (Some(id), None) => {
                form.push_str("&client_id=");
                form.push_str(&form_encode(id));
            }
            _ => {}
        }
        let req = req.body(Full::new(Bytes::from(form))).ok()?;
        let resp = self.client.request(req).await.ok()?;
        if resp.status() != http::StatusCode::OK {
            return None;
        }
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(parse_answer(&body))
    }
}

/// Reads an introspection response; anything unexpected is "inactive".
fn parse_answer(body: &[u8]) -> (Verdict, Option<Duration>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (Verdict::Inactive, None);
    };
    if v.get("active").and_then(|a| a.as_bool()) != Some(true) {
        return (Verdict::Inactive, None);
    }
    let name = ["sub", "username"]
        .iter()
        .find_map(|k| v.get(*k).and_then(|s| s.as_str()).filter(|s| !s.is_empty()));
    let Some(name) = name else {
        return (Verdict::Inactive, None);
    };
    let exp = v.get("exp").and_then(|e| e.as_u64()).map(|exp| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Duration::from_secs(exp.saturating_sub(now))
    });
    if exp == Some(Duration::ZERO) {
        return (Verdict::Inactive, None);
    }
    (Verdict::Active(name.to_owned()), exp)
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Standard base64 with padding.
fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn encodings() {
        assert_eq!(base64(b"sim:s3cret"), "c2ltOnMzY3JldA==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(form_encode("a b+c/="), "a+b%2Bc%2F%3D");
    }

    #[test]
    fn answers() {
        assert_eq!(
            parse_answer(br#"{"active":true,"sub":"alice"}"#).0,
            Verdict::Active("alice".into())
        );
        assert_eq!(
            parse_answer(br#"{"active":true,"username":"bob"}"#).0,
            Verdict::Active("bob".into())
        );
        assert_eq!(
            parse_answer(br#"{"active":false,"sub":"x"}"#).0,
            Verdict::Inactive
        );
        assert_eq!(parse_answer(br#"{"active":true}"#).0, Verdict::Inactive);
        assert_eq!(
            parse_answer(br#"{"active":true,"sub":"x","exp":1}"#).0,
            Verdict::Inactive
        );
        assert_eq!(parse_answer(b"not json").0, Verdict::Inactive);
    }

    /// A tiny RFC 7662 endpoint: `tok-alice` is active for alice, all else inactive.
    async fn stub(calls: Arc<AtomicUsize>) -> std::net::SocketAddr {
        use axum::extract::State;
        use axum::http::HeaderMap;
        let app =
            axum::Router::new()
                .route(
                    "/introspect",
                    axum::routing::post(
                        |State(calls): State<Arc<AtomicUsize>>,
                         headers: HeaderMap,
                         body: String| async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            let auth = headers
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("");
                            if auth != format!("Basic {}", base64(b"sim:s3cret")) {
                                return (axum::http::StatusCode::UNAUTHORIZED, String::new());
                            }
                            let active = body.contains("token=tok-alice&");
                            let answer = if active {
                                r#"{"active":true,"sub":"alice","client_id":"cli"}"#
                            } else {
                                r#"{"active":false}"#
                            };
                            (axum::http::StatusCode::OK, answer.to_owned())
                        },
                    ),
                )
                .with_state(calls);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn introspector(addr: std::net::SocketAddr, secret: &str) -> Introspector {
        let s = Scenario {
            introspection_url: Some(format!("http://{addr}/introspect")),
            introspection_client_id: Some("sim".into()),
            introspection_client_secret: Some(Credential::new(secret)),
            ..Scenario::default()
        };
        Introspector::from_scenario(&s).unwrap().unwrap()
    }

    #[tokio::test]
    async fn active_tokens_name_the_account_and_are_cached() {
        let calls = Arc::new(AtomicUsize::new(0));
        let addr = stub(calls.clone()).await;
        let i = introspector(addr, "s3cret");
        assert_eq!(i.check("tok-alice").await, Verdict::Active("alice".into()));
        assert_eq!(i.check("tok-alice").await, Verdict::Active("alice".into()));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "second check came from the cache"
        );
        assert_eq!(i.check("tok-other").await, Verdict::Inactive);
        assert_eq!(i.check("tok-other").await, Verdict::Inactive);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "negative answers are not cached"
        );
    }

    #[tokio::test]
    async fn wrong_client_credentials_or_dead_endpoint_mean_unavailable() {
        let calls = Arc::new(AtomicUsize::new(0));
        let addr = stub(calls).await;
        assert_eq!(
            introspector(addr, "wrong").check("tok-alice").await,
            Verdict::Unavailable
        );
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        assert_eq!(
            introspector(dead_addr, "s3cret").check("tok-alice").await,
            Verdict::Unavailable
        );
    }
}
