//! Token endpoint calls (code exchange, refresh, Copilot exchange), their
//! responses, and the classification of their errors.

use marathon_core::{Reason, Secret, UnixMillis};

use crate::http::{HttpClient, HttpError, HttpRequest, HttpResponse, strip_query};
use crate::preset::{OAuthPreset, TokenFormat};

/// A successful token response.
#[derive(Clone, Debug)]
pub struct TokenResponse {
    /// `access_token`.
    pub access: Secret,
    /// `refresh_token`, when issued.
    pub refresh: Option<Secret>,
    /// `expires_in`, seconds.
    pub expires_in: Option<u64>,
    /// `id_token`, when issued.
    pub id_token: Option<Secret>,
    /// `scope`, split on spaces.
    pub scopes: Vec<String>,
    /// The other fields of the response with the tokens removed (Anthropic
    /// puts the account here).
    pub other: serde_json::Value,
}

/// Whether a failed token request may succeed later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The grant is dead (revoked, reused, expired): a person must log in again.
    Permanent,
    /// Worth retrying later (5xx, 429, network).
    Transient,
    /// Refused for another reason (bad request, forbidden): retrying the same
    /// request will not help, but the login may still be fine.
    Rejected,
}

/// A token request that did not produce tokens. Never holds a token or the
/// raw response body, nor any text of the server's but a safe error code: a
/// token endpoint that echoes the refresh token it received (in `error`,
/// `error_description`, a message) cannot put it into a log line, an event or
/// an error printed by the CLI.
#[derive(thiserror::Error, Debug)]
pub enum TokenError {
    /// No HTTP response.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The server answered with an error. Its `error_description` is not
    /// kept: free text may quote what the request carried.
    #[error("{url} answered HTTP {status}{}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Server {
        /// Endpoint without query.
        url: String,
        /// HTTP status.
        status: u16,
        /// OAuth error code (`invalid_grant`, `refresh_token_reused`, ...),
        /// when the server sent one that is a safe word.
        code: Option<Reason>,
        /// Permanent, transient or rejected.
        class: ErrorClass,
    },
    /// A 2xx answer that is not a usable token response.
    #[error("{url} answered HTTP {status} without a usable token: {detail}")]
    Malformed {
        /// Endpoint without query.
        url: String,
        /// HTTP status.
        status: u16,
        /// What is missing.
        detail: String,
    },
}

impl TokenError {
    /// Permanent, transient or rejected.
    pub fn class(&self) -> ErrorClass {
        match self {
            TokenError::Http(HttpError::InvalidUrl { .. }) => ErrorClass::Rejected,
            TokenError::Http(_) => ErrorClass::Transient,
            TokenError::Server { class, .. } => *class,
            TokenError::Malformed { .. } => ErrorClass::Transient,
        }
    }

    /// The OAuth error code, if the server sent one (and it is a safe word).
    pub fn code(&self) -> Option<&str> {
        match self {
            TokenError::Server { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Why, in one word for events and the status view: the OAuth error
    /// code, else `http_<status>`, else what failed below HTTP.
    pub fn reason(&self) -> Reason {
        match self {
            TokenError::Server {
                code: Some(code), ..
            } => code.clone(),
            TokenError::Server { status, .. } => Reason::http(*status),
            TokenError::Malformed { .. } => Reason::fixed("malformed_token_response"),
            TokenError::Http(HttpError::InvalidUrl { .. }) => Reason::fixed("invalid_url"),
            TokenError::Http(HttpError::Network { .. }) => Reason::fixed("network"),
            TokenError::Http(HttpError::Timeout { .. }) => Reason::fixed("timeout"),
            TokenError::Http(HttpError::TooLarge { .. }) => Reason::fixed("response_too_large"),
        }
    }
}

/// Refresh-token errors that mean "log in again" (RFC 6749 §5.2 and OpenAI's
/// rotation codes).
pub const PERMANENT_CODES: &[&str] = &[
    "invalid_grant",
    "refresh_token_reused",
    "refresh_token_expired",
    "refresh_token_invalidated",
    "invalid_client",
    "unauthorized_client",
];

/// The OAuth error code in an error body: `{"error":"invalid_grant"}`,
/// OpenAI's `{"error":{"code":"refresh_token_reused",...}}`, or
/// `{"detail":{"code":...}}` — the first one present, kept only if it is a
/// safe word ([`Reason::untrusted`]).
pub(crate) fn error_code(body: &serde_json::Value) -> Option<Reason> {
    let e = body.get("error");
    if let Some(s) = e.and_then(|e| e.as_str()) {
        return Reason::untrusted(s);
    }
    for obj in [e, body.get("detail")].into_iter().flatten() {
        for key in ["code", "type"] {
            if let Some(s) = obj.get(key).and_then(|v| v.as_str())
                && !s.is_empty()
            {
                return Reason::untrusted(s);
            }
        }
    }
    None
}

/// Classifies an error answer from a token endpoint.
pub fn classify(status: u16, code: Option<&str>) -> ErrorClass {
    if let Some(c) = code
        && PERMANENT_CODES.contains(&c)
    {
        return ErrorClass::Permanent;
    }
    match status {
        401 => ErrorClass::Permanent,
        408 | 425 | 429 => ErrorClass::Transient,
        500..=599 => ErrorClass::Transient,
        _ => ErrorClass::Rejected,
    }
}

pub(crate) fn server_error(url: &str, resp: &HttpResponse) -> TokenError {
    let body: serde_json::Value =
        serde_json::from_slice(&resp.body).unwrap_or(serde_json::Value::Null);
    let code = error_code(&body);
    TokenError::Server {
        url: strip_query(url).to_string(),
        status: resp.status,
        class: classify(resp.status, code.as_deref()),
        code,
    }
}

/// Parses a token response. `Ok(None)` when the body is an OAuth error
/// object (GitHub answers device polls with HTTP 200 and `{"error":...}`).
pub(crate) fn parse_token_response(
    url: &str,
    resp: &HttpResponse,
) -> Result<TokenResponse, TokenError> {
    let malformed = |detail: &str| TokenError::Malformed {
        url: strip_query(url).to_string(),
        status: resp.status,
        detail: detail.to_string(),
    };
    if !(200..300).contains(&resp.status) {
        return Err(server_error(url, resp));
    }
    let mut body: serde_json::Value =
        serde_json::from_slice(&resp.body).map_err(|_| malformed("body is not JSON"))?;
    if body.get("access_token").is_none() && body.get("error").is_some() {
        return Err(server_error(url, resp));
    }
    let obj = body
        .as_object_mut()
        .ok_or_else(|| malformed("body is not a JSON object"))?;
    let take_secret =
        |obj: &mut serde_json::Map<String, serde_json::Value>, key: &str| match obj.remove(key) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(Secret::new(s)),
            _ => None,
        };
    let access = take_secret(obj, "access_token").ok_or_else(|| malformed("no access_token"))?;
    let refresh = take_secret(obj, "refresh_token");
    let id_token = take_secret(obj, "id_token");
    let expires_in = match obj.get("expires_in") {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
        }
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    let scopes = obj
        .get("scope")
        .and_then(|v| v.as_str())
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    Ok(TokenResponse {
        access,
        refresh,
        expires_in,
        id_token,
        scopes,
        other: body,
    })
}

/// Builds a token-endpoint request in the preset's format, adding the client
/// id (and the installed-app secret, if any).
pub(crate) fn token_request(preset: &OAuthPreset, params: &[(&str, &str)]) -> HttpRequest {
    let mut all: Vec<(&str, &str)> = params.to_vec();
    all.push(("client_id", &preset.client_id));
    if let Some(secret) = &preset.client_secret {
        all.push(("client_secret", secret));
    }
    match preset.token_format {
        TokenFormat::Form => HttpRequest::form(&preset.token_url, all),
        TokenFormat::Json => {
            let map: serde_json::Map<String, serde_json::Value> = all
                .into_iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
                .collect();
            HttpRequest::json(&preset.token_url, &serde_json::Value::Object(map))
        }
    }
}

/// The authorization-code exchange.
pub(crate) fn code_exchange_request(
    preset: &OAuthPreset,
    code: &str,
    verifier: &str,
    redirect_uri: &str,
    state: &str,
) -> HttpRequest {
    let mut params = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", verifier),
    ];
    if preset.state_in_token_request {
        params.push(("state", state));
    }
    token_request(preset, &params)
}

/// The refresh-token grant.
pub fn refresh_request(preset: &OAuthPreset, refresh: &Secret) -> HttpRequest {
    token_request(
        preset,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.expose()),
        ],
    )
}

/// Runs a token request and parses the answer.
pub(crate) async fn send_token_request(
    http: &dyn HttpClient,
    req: HttpRequest,
) -> Result<TokenResponse, TokenError> {
    let url = req.url.clone();
    let resp = http.send(req).await?;
    parse_token_response(&url, &resp)
}

/// A Copilot token and its expiry.
#[derive(Clone, Debug)]
pub struct CopilotToken {
    /// The short-lived API token.
    pub token: Secret,
    /// When it expires (`expires_at` is in seconds).
    pub expires_at: Option<UnixMillis>,
}

/// The Copilot exchange request (GitHub OAuth token → Copilot token).
pub fn copilot_request(url: &str, github_token: &Secret) -> HttpRequest {
    HttpRequest::get(url).header("authorization", format!("token {}", github_token.expose()))
}

/// Exchanges a GitHub OAuth token for a Copilot token.
pub async fn copilot_exchange(
    http: &dyn HttpClient,
    url: &str,
    github_token: &Secret,
) -> Result<CopilotToken, TokenError> {
    let resp = http.send(copilot_request(url, github_token)).await?;
    if !(200..300).contains(&resp.status) {
        return Err(server_error(url, &resp));
    }
    let malformed = |detail: &str| TokenError::Malformed {
        url: strip_query(url).to_string(),
        status: resp.status,
        detail: detail.to_string(),
    };
    let body: serde_json::Value =
        serde_json::from_slice(&resp.body).map_err(|_| malformed("body is not JSON"))?;
    let token = body
        .get("token")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| malformed("no token"))?;
    let expires_at = body
        .get("expires_at")
        .and_then(|v| v.as_u64())
        .map(UnixMillis::from_secs);
    Ok(CopilotToken {
        token: Secret::new(token),
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn classifies_real_refresh_failures() {
        // oidc-provider, reused or revoked refresh token (samples.md).
        let e = parse_token_response(
            "http://127.0.0.1:1/token",
            &resp(
                400,
                r#"{"error":"invalid_grant","error_description":"grant request is invalid"}"#,
            ),
        )
        .unwrap_err();
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert_eq!(e.code(), Some("invalid_grant"));
        // OpenAI's refresh-token reuse (samples.md).
        let e = parse_token_response(
            "https://auth.openai.com/oauth/token",
            &resp(
                401,
                r#"{"error":{"message":"Your refresh token has already been used to generate a new access token. Please try signing in again.","type":"invalid_request_error","param":null,"code":"refresh_token_reused"}}"#,
            ),
        )
        .unwrap_err();
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert_eq!(e.code(), Some("refresh_token_reused"));
        for code in ["refresh_token_expired", "refresh_token_invalidated"] {
            assert_eq!(classify(400, Some(code)), ErrorClass::Permanent);
        }
        assert_eq!(
            classify(503, Some("server_is_overloaded")),
            ErrorClass::Transient
        );
        assert_eq!(classify(502, None), ErrorClass::Transient);
        assert_eq!(classify(429, None), ErrorClass::Transient);
        assert_eq!(classify(400, Some("invalid_request")), ErrorClass::Rejected);
        assert_eq!(classify(401, None), ErrorClass::Permanent);
    }

    #[test]
    fn errors_never_show_tokens() {
        let e = parse_token_response(
            "https://t.example/token?x=1",
            &resp(
                400,
                r#"{"error":"invalid_grant","refresh_token":"rt-leak"}"#,
            ),
        )
        .unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("rt-leak"));
        assert!(!shown.contains("x=1"));
        assert!(shown.contains("invalid_grant"));
    }

    // Guards: a token endpoint that echoes the refresh token it received
    // (and the access token) in `error`, `error_description`, `error.code`,
    // `error.message` or `detail.code`. On main the echo became the error
    // code and the description, which the refresher logged, put in events
    // and handed to the CLI to print.
    #[test]
    fn echoed_tokens_never_reach_the_error() {
        // Word-shaped, so only the known-secrets check stops it.
        let refresh = Secret::new("plain-words-refresh-credential");
        let rt = refresh.expose();
        let access = "sk-ant-oat01-echoed-access-9Zk";
        let cases = [
            (
                400,
                serde_json::json!({"error": rt, "error_description": format!("bad {rt} / {access}")}),
                ErrorClass::Rejected,
            ),
            (
                401,
                serde_json::json!({"error": {"code": access, "type": rt, "message": rt}}),
                ErrorClass::Permanent,
            ),
            (
                200,
                serde_json::json!({"error": access}),
                ErrorClass::Rejected,
            ),
            (
                503,
                serde_json::json!({"detail": {"code": rt}}),
                ErrorClass::Transient,
            ),
        ];
        for (status, body, class) in cases {
            let e =
                parse_token_response("https://t.example/token", &HttpResponse::json(status, body))
                    .unwrap_err();
            let shown = format!("{e} {e:?} {}", e.reason());
            assert!(!shown.contains(rt) && !shown.contains(access), "{shown}");
            assert_eq!((e.code(), e.class()), (None, class), "{shown}");
            assert_eq!(e.reason(), format!("http_{status}"));
        }
        // A real code survives next to an echoed description.
        let e = parse_token_response(
            "u",
            &resp(
                400,
                &format!(r#"{{"error":"invalid_grant","error_description":"{rt}"}}"#),
            ),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "u answered HTTP 400 (invalid_grant)");
    }

    #[test]
    fn parses_token_responses() {
        let t = parse_token_response(
            "u",
            &resp(
                200,
                r#"{"access_token":"at","refresh_token":"rt","expires_in":"3599","scope":"openid email","token_type":"Bearer","account":{"email_address":"a@b.c"}}"#,
            ),
        )
        .unwrap();
        assert_eq!(t.access.expose(), "at");
        assert_eq!(t.refresh.unwrap().expose(), "rt");
        assert_eq!(t.expires_in, Some(3599));
        assert_eq!(t.scopes, vec!["openid", "email"]);
        assert_eq!(t.other["account"]["email_address"], "a@b.c");
        assert!(t.other.get("access_token").is_none());
        // GitHub: HTTP 200 with an error object.
        let e = parse_token_response("u", &resp(200, r#"{"error":"authorization_pending"}"#))
            .unwrap_err();
        assert_eq!(e.code(), Some("authorization_pending"));
        assert!(matches!(
            parse_token_response("u", &resp(200, "<html>")),
            Err(TokenError::Malformed { .. })
        ));
        assert!(matches!(
            parse_token_response("u", &resp(200, "{}")),
            Err(TokenError::Malformed { .. })
        ));
    }
}
