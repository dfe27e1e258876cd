//! OAuth presets as data: the endpoints, client, scopes and quirks of each
//! provider marathon can log in to, plus generic providers from config
//! (issuer discovery or explicit endpoints).
//!
//! The built-in facts are the public ones each provider's own CLI uses
//! (DESIGN §4). marathon does not impersonate those CLIs beyond what the
//! protocol needs: the proxy forwards the client's own headers.

use serde::{Deserialize, Serialize};

use crate::http::{HttpClient, HttpError, HttpRequest, strip_query};

/// A way to log in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowKind {
    /// Authorization code + PKCE, the browser redirects to a loopback server.
    Loopback,
    /// Authorization code + PKCE, the user pastes the code (or the redirect URL).
    Paste,
    /// Device authorization grant.
    Device,
}

/// How the token endpoint wants its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TokenFormat {
    /// `application/x-www-form-urlencoded` (RFC 6749).
    #[default]
    Form,
    /// A JSON object (Anthropic).
    Json,
}

/// Which device-flow dialect the provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeviceVariant {
    /// RFC 8628: errors are 400s with `authorization_pending`, `slow_down`, `expired_token`.
    #[default]
    Rfc8628,
    /// GitHub: like RFC 8628, but pending/slow-down answers are HTTP 200 with an `error` field.
    GitHub,
    /// Codex (auth.openai.com): a user code API that, once approved, hands
    /// back an authorization code and PKCE verifier to exchange as usual.
    Codex,
}

/// Where the account's identity (for labels and dedupe) comes from; the first
/// source that yields a value wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum IdentitySource {
    /// A claim of the id token (a path of keys into its payload).
    IdToken {
        /// Key path, e.g. `["email"]`.
        path: Vec<String>,
    },
    /// A field of the token response itself (Anthropic's `account.email_address`).
    TokenResponse {
        /// Key path.
        path: Vec<String>,
    },
    /// A field of a userinfo-style endpoint called with the new token.
    Userinfo {
        /// The endpoint.
        url: String,
        /// Key path.
        path: Vec<String>,
    },
}

/// A provider extra to keep with the account (e.g. `chatgpt_account_id`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraSource {
    /// The key under which it is stored in the account's extras.
    pub key: String,
    /// Where it comes from (same shapes as identity).
    pub source: IdentitySource,
}

/// How an access token is renewed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RefreshKind {
    /// The `refresh_token` grant at the token endpoint.
    RefreshToken {
        /// Whether each refresh returns a new refresh token (single-use
        /// tokens). When a response has none, the old one is kept either way.
        rotates: bool,
    },
    /// GitHub Copilot: the stored "refresh" secret is the long-lived GitHub
    /// OAuth token, exchanged (GET) for a short-lived Copilot token.
    CopilotExchange {
        /// The exchange endpoint.
        url: String,
    },
}

/// Headers the proxy sets and drops on upstream requests for an account of
/// this preset (besides `authorization: Bearer <access>`, always set).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiHeaders {
    /// Headers to set (name, value).
    #[serde(default)]
    pub set: Vec<(String, String)>,
    /// Headers to remove (the client's own credentials).
    #[serde(default)]
    pub drop: Vec<String>,
    /// Headers whose value is an account extra (header name, extra key), e.g.
    /// (`chatgpt-account-id`, `chatgpt_account_id`).
    #[serde(default)]
    pub from_extras: Vec<(String, String)>,
}

/// The loopback redirect for [`FlowKind::Loopback`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loopback {
    /// Host written in the redirect URI (`127.0.0.1` or `localhost`); the
    /// server always binds 127.0.0.1.
    pub host: String,
    /// Fixed port (Codex's registered 1455), or `None` for any free port.
    pub port: Option<u16>,
    /// Callback path, e.g. `/callback`.
    pub path: String,
}

/// Everything marathon needs to log in to and refresh one provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthPreset {
    /// Preset name (`anthropic`, `openai-chatgpt`, ...).
    pub name: String,
    /// Supported flows, preferred first.
    pub flows: Vec<FlowKind>,
    /// Authorization endpoint (code flows).
    pub authorize_url: Option<String>,
    /// Token endpoint.
    pub token_url: String,
    /// Device authorization endpoint (for Codex: the user-code API base).
    pub device_url: Option<String>,
    /// Where the user goes to enter a device code, when the device endpoint
    /// does not say (Codex).
    pub device_verification_url: Option<String>,
    /// Redirect URI the Codex device flow's code is exchanged with.
    pub device_redirect_uri: Option<String>,
    /// OAuth client id (public client).
    pub client_id: String,
    /// Client secret of an "installed app" client (Google's is public by
    /// design, RFC 8252 §8.5); `None` for true public clients.
    pub client_secret: Option<String>,
    /// Scopes requested.
    pub scopes: Vec<String>,
    /// Redirect URI for [`FlowKind::Paste`] (a provider page that shows the code).
    pub paste_redirect_uri: Option<String>,
    /// Loopback redirect for [`FlowKind::Loopback`].
    pub loopback: Option<Loopback>,
    /// Extra authorization parameters, in order.
    pub extra_authorize_params: Vec<(String, String)>,
    /// Extra authorization parameters for the paste flow only (Anthropic's `code=true`).
    pub paste_authorize_params: Vec<(String, String)>,
    /// Token endpoint body format.
    pub token_format: TokenFormat,
    /// Whether the code exchange repeats `state` in its body (Anthropic).
    pub state_in_token_request: bool,
    /// Device-flow dialect.
    pub device_variant: DeviceVariant,
    /// Identity sources, tried in order.
    pub identity: Vec<IdentitySource>,
    /// Provider extras to keep.
    pub extras: Vec<ExtraSource>,
    /// Refresh mechanism.
    pub refresh: RefreshKind,
    /// Upstream API headers.
    pub api_headers: ApiHeaders,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Names of the built-in presets.
pub const BUILTIN_PRESETS: &[&str] = &[
    "anthropic",
    "openai-chatgpt",
    "github-copilot",
    "google-gemini",
];

impl OAuthPreset {
    /// A built-in preset by name (see [`BUILTIN_PRESETS`]).
    pub fn builtin(name: &str) -> Option<OAuthPreset> {
        match name {
            "anthropic" => Some(Self::anthropic()),
            "openai-chatgpt" | "openai-codex" | "codex" => Some(Self::openai_chatgpt()),
            "github-copilot" | "copilot" => Some(Self::github_copilot()),
            "google-gemini" | "gemini" => Some(Self::google_gemini()),
            _ => None,
        }
    }

    /// Claude Pro/Max (Claude Code's public client).
    pub fn anthropic() -> OAuthPreset {
        OAuthPreset {
            name: "anthropic".into(),
            flows: vec![FlowKind::Paste, FlowKind::Loopback],
            authorize_url: Some("https://claude.ai/oauth/authorize".into()),
            token_url: "https://console.anthropic.com/v1/oauth/token".into(),
            device_url: None,
            device_verification_url: None,
            device_redirect_uri: None,
            client_id: "9d1c250a-e61b-44d9-88ed-5944d1962f5e".into(),
            client_secret: None,
            scopes: strings(&["org:create_api_key", "user:profile", "user:inference"]),
            paste_redirect_uri: Some("https://console.anthropic.com/oauth/code/callback".into()),
            loopback: Some(Loopback {
                host: "localhost".into(),
                port: None,
                path: "/callback".into(),
            }),
            extra_authorize_params: Vec::new(),
            paste_authorize_params: pairs(&[("code", "true")]),
            token_format: TokenFormat::Json,
            state_in_token_request: true,
            device_variant: DeviceVariant::Rfc8628,
            identity: vec![
                IdentitySource::TokenResponse {
                    path: strings(&["account", "email_address"]),
                },
                IdentitySource::TokenResponse {
                    path: strings(&["account", "uuid"]),
                },
            ],
            extras: vec![
                ExtraSource {
                    key: "account_uuid".into(),
                    source: IdentitySource::TokenResponse {
                        path: strings(&["account", "uuid"]),
                    },
                },
                ExtraSource {
                    key: "organization_uuid".into(),
                    source: IdentitySource::TokenResponse {
                        path: strings(&["organization", "uuid"]),
                    },
                },
            ],
            refresh: RefreshKind::RefreshToken { rotates: true },
            api_headers: ApiHeaders {
                set: pairs(&[("anthropic-beta", "oauth-2025-04-20")]),
                drop: strings(&["x-api-key"]),
                from_extras: Vec::new(),
            },
        }
    }

    /// ChatGPT plans through Codex (Codex CLI's public client).
    pub fn openai_chatgpt() -> OAuthPreset {
        let account_claim = IdentitySource::IdToken {
            path: strings(&["https://api.openai.com/auth", "chatgpt_account_id"]),
        };
        OAuthPreset {
            name: "openai-chatgpt".into(),
            flows: vec![FlowKind::Loopback, FlowKind::Device],
            authorize_url: Some("https://auth.openai.com/oauth/authorize".into()),
            token_url: "https://auth.openai.com/oauth/token".into(),
            device_url: Some("https://auth.openai.com/api/accounts".into()),
            device_verification_url: Some("https://auth.openai.com/codex/device".into()),
            device_redirect_uri: Some("https://auth.openai.com/deviceauth/callback".into()),
            client_id: "app_EMoamEEZ73f0CkXaXp7hrann".into(),
            client_secret: None,
            scopes: strings(&["openid", "profile", "email", "offline_access"]),
            paste_redirect_uri: None,
            loopback: Some(Loopback {
                host: "localhost".into(),
                port: Some(1455),
                path: "/auth/callback".into(),
            }),
            extra_authorize_params: pairs(&[
                ("id_token_add_organizations", "true"),
                ("codex_cli_simplified_flow", "true"),
            ]),
            paste_authorize_params: Vec::new(),
            token_format: TokenFormat::Form,
            state_in_token_request: false,
            device_variant: DeviceVariant::Codex,
            identity: vec![
                IdentitySource::IdToken {
                    path: strings(&["email"]),
                },
                account_claim.clone(),
            ],
            extras: vec![ExtraSource {
                key: "chatgpt_account_id".into(),
                source: account_claim,
            }],
            refresh: RefreshKind::RefreshToken { rotates: true },
            api_headers: ApiHeaders {
                set: Vec::new(),
                drop: Vec::new(),
                from_extras: pairs(&[("chatgpt-account-id", "chatgpt_account_id")]),
            },
        }
    }

    /// GitHub Copilot: GitHub device flow, then the Copilot token exchange.
    pub fn github_copilot() -> OAuthPreset {
        OAuthPreset {
            name: "github-copilot".into(),
            flows: vec![FlowKind::Device],
            authorize_url: None,
            token_url: "https://github.com/login/oauth/access_token".into(),
            device_url: Some("https://github.com/login/device/code".into()),
            device_verification_url: None,
            device_redirect_uri: None,
            client_id: "Iv1.b507a08c87ecfe98".into(),
            client_secret: None,
            scopes: strings(&["read:user"]),
            paste_redirect_uri: None,
            loopback: None,
            extra_authorize_params: Vec::new(),
            paste_authorize_params: Vec::new(),
            token_format: TokenFormat::Form,
            state_in_token_request: false,
            device_variant: DeviceVariant::GitHub,
            identity: vec![IdentitySource::Userinfo {
                url: "https://api.github.com/user".into(),
                path: strings(&["login"]),
            }],
            extras: Vec::new(),
            refresh: RefreshKind::CopilotExchange {
                url: "https://api.github.com/copilot_internal/v2/token".into(),
            },
            api_headers: ApiHeaders::default(),
        }
    }

    /// Gemini through Google sign-in (Gemini CLI's public installed-app client).
    pub fn google_gemini() -> OAuthPreset {
        OAuthPreset {
            name: "google-gemini".into(),
            flows: vec![FlowKind::Loopback],
            authorize_url: Some("https://accounts.google.com/o/oauth2/v2/auth".into()),
            token_url: "https://oauth2.googleapis.com/token".into(),
            device_url: None,
            device_verification_url: None,
            device_redirect_uri: None,
            client_id: "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com"
                .into(),
            // Google issues installed apps a "secret" that is public by design
            // (RFC 8252 §8.5); Gemini CLI ships it in its source. Split so
            // secret scanners do not flag a non-secret.
            client_secret: Some(concat!("GOCSPX-", "4uHgMPm-1o7Sk-geV6Cu5clXFsxl").into()),
            scopes: strings(&[
                "https://www.googleapis.com/auth/cloud-platform",
                "https://www.googleapis.com/auth/userinfo.email",
                "https://www.googleapis.com/auth/userinfo.profile",
            ]),
            paste_redirect_uri: None,
            loopback: Some(Loopback {
                host: "localhost".into(),
                port: None,
                path: "/oauth2callback".into(),
            }),
            extra_authorize_params: pairs(&[("access_type", "offline"), ("prompt", "consent")]),
            paste_authorize_params: Vec::new(),
            token_format: TokenFormat::Form,
            state_in_token_request: false,
            device_variant: DeviceVariant::Rfc8628,
            identity: vec![IdentitySource::Userinfo {
                url: "https://www.googleapis.com/oauth2/v2/userinfo".into(),
                path: strings(&["email"]),
            }],
            extras: Vec::new(),
            refresh: RefreshKind::RefreshToken { rotates: false },
            api_headers: ApiHeaders {
                set: Vec::new(),
                drop: strings(&["x-goog-api-key"]),
                from_extras: Vec::new(),
            },
        }
    }

    /// Whether this preset supports a flow.
    pub fn supports(&self, flow: FlowKind) -> bool {
        self.flows.contains(&flow)
    }
}

/// A provider described in config: an issuer to discover, or explicit endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericProvider {
    /// Preset name (usually the provider name).
    pub name: String,
    /// Issuer URL; its `/.well-known/openid-configuration` fills any endpoint not given.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Authorization endpoint.
    #[serde(default)]
    pub authorize_url: Option<String>,
    /// Token endpoint.
    #[serde(default)]
    pub token_url: Option<String>,
    /// Device authorization endpoint.
    #[serde(default)]
    pub device_url: Option<String>,
    /// Userinfo endpoint (identity fallback).
    #[serde(default)]
    pub userinfo_url: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client secret for installed-app clients (rare).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Scopes (default `openid email offline_access`).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Extra authorization parameters.
    #[serde(default)]
    pub extra_authorize_params: Vec<(String, String)>,
    /// Loopback redirect (default `http://127.0.0.1:<any>/callback`).
    #[serde(default)]
    pub loopback: Option<Loopback>,
    /// Paste-flow redirect URI, if the provider has a page showing the code.
    #[serde(default)]
    pub paste_redirect_uri: Option<String>,
    /// Token body format.
    #[serde(default)]
    pub token_format: TokenFormat,
}

/// Why a generic provider could not be turned into a preset.
#[derive(thiserror::Error, Debug)]
pub enum DiscoveryError {
    /// The discovery document could not be fetched.
    #[error("could not fetch the OpenID configuration of {issuer}: {source}")]
    Http {
        /// Issuer.
        issuer: String,
        /// Cause.
        #[source]
        source: HttpError,
    },
    /// The discovery document is not usable.
    #[error("the OpenID configuration at {url} is not usable: {detail}")]
    BadDocument {
        /// Document URL.
        url: String,
        /// What is wrong.
        detail: String,
    },
    /// Neither an issuer nor the needed endpoints were configured.
    #[error("OAuth provider {name}: {detail}")]
    Incomplete {
        /// Provider.
        name: String,
        /// What is missing and how to fix it.
        detail: String,
    },
}

impl GenericProvider {
    /// Builds the preset, fetching the issuer's discovery document when an
    /// issuer is configured. Explicit endpoints win over discovered ones.
    pub async fn resolve(&self, http: &dyn HttpClient) -> Result<OAuthPreset, DiscoveryError> {
        let mut authorize_url = self.authorize_url.clone();
        let mut token_url = self.token_url.clone();
        let mut device_url = self.device_url.clone();
        let mut userinfo_url = self.userinfo_url.clone();
        if let Some(issuer) = &self.issuer {
            let doc = discover(http, issuer).await?;
            authorize_url = authorize_url.or(doc.authorization_endpoint);
            token_url = token_url.or(doc.token_endpoint);
            device_url = device_url.or(doc.device_authorization_endpoint);
            userinfo_url = userinfo_url.or(doc.userinfo_endpoint);
        }
        let token_url = token_url.ok_or_else(|| DiscoveryError::Incomplete {
            name: self.name.clone(),
            detail: "no token endpoint: set `issuer` (for discovery) or `token_url`".into(),
        })?;
        let mut flows = Vec::new();
        if authorize_url.is_some() {
            flows.push(FlowKind::Loopback);
            flows.push(FlowKind::Paste);
        }
        if device_url.is_some() {
            flows.push(FlowKind::Device);
        }
        if flows.is_empty() {
            return Err(DiscoveryError::Incomplete {
                name: self.name.clone(),
                detail: "no authorization or device endpoint: set `issuer`, `authorize_url` or `device_url`".into(),
            });
        }
        let mut identity = vec![
            IdentitySource::IdToken {
                path: strings(&["email"]),
            },
            IdentitySource::IdToken {
                path: strings(&["sub"]),
            },
        ];
        if let Some(url) = userinfo_url {
            identity.push(IdentitySource::Userinfo {
                url: url.clone(),
                path: strings(&["email"]),
            });
            identity.push(IdentitySource::Userinfo {
                url,
                path: strings(&["sub"]),
            });
        }
        Ok(OAuthPreset {
            name: self.name.clone(),
            flows,
            authorize_url,
            token_url,
            device_url,
            device_verification_url: None,
            device_redirect_uri: None,
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            scopes: self
                .scopes
                .clone()
                .unwrap_or_else(|| strings(&["openid", "email", "offline_access"])),
            paste_redirect_uri: self.paste_redirect_uri.clone(),
            loopback: Some(self.loopback.clone().unwrap_or(Loopback {
                host: "127.0.0.1".into(),
                port: None,
                path: "/callback".into(),
            })),
            extra_authorize_params: self.extra_authorize_params.clone(),
            paste_authorize_params: Vec::new(),
            token_format: self.token_format,
            state_in_token_request: false,
            device_variant: DeviceVariant::Rfc8628,
            identity,
            extras: Vec::new(),
            refresh: RefreshKind::RefreshToken { rotates: true },
            api_headers: ApiHeaders::default(),
        })
    }
}

/// The endpoints of an OpenID Provider's discovery document that marathon uses.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct DiscoveryDocument {
    /// `issuer`.
    pub issuer: Option<String>,
    /// `authorization_endpoint`.
    pub authorization_endpoint: Option<String>,
    /// `token_endpoint`.
    pub token_endpoint: Option<String>,
    /// `device_authorization_endpoint`.
    pub device_authorization_endpoint: Option<String>,
    /// `userinfo_endpoint`.
    pub userinfo_endpoint: Option<String>,
    /// `revocation_endpoint`.
    pub revocation_endpoint: Option<String>,
    /// `introspection_endpoint`.
    pub introspection_endpoint: Option<String>,
}

/// Fetches and checks `<issuer>/.well-known/openid-configuration`.
pub async fn discover(
    http: &dyn HttpClient,
    issuer: &str,
) -> Result<DiscoveryDocument, DiscoveryError> {
    let base = issuer.trim_end_matches('/');
    let url = format!("{base}/.well-known/openid-configuration");
    let resp = http
        .send(HttpRequest::get(&url))
        .await
        .map_err(|source| DiscoveryError::Http {
            issuer: issuer.to_string(),
            source,
        })?;
    let bad = |detail: String| DiscoveryError::BadDocument {
        url: strip_query(&url).to_string(),
        detail,
    };
    if resp.status != 200 {
        return Err(bad(format!("HTTP {}", resp.status)));
    }
    let doc: DiscoveryDocument = serde_json::from_slice(&resp.body)
        .map_err(|e| bad(format!("not a JSON discovery document ({e})")))?;
    // OpenID Connect Discovery §4.3: the document's issuer must be the one asked for.
    match doc.issuer.as_deref() {
        Some(found) if found.trim_end_matches('/') == base => Ok(doc),
        Some(found) => Err(bad(format!("it names issuer {found}, expected {issuer}"))),
        None => Err(bad("it has no issuer".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_resolve_by_name_and_alias() {
        for name in BUILTIN_PRESETS {
            assert_eq!(OAuthPreset::builtin(name).unwrap().name, *name);
        }
        assert_eq!(
            OAuthPreset::builtin("codex").unwrap().name,
            "openai-chatgpt"
        );
        assert!(OAuthPreset::builtin("nope").is_none());
    }

    #[test]
    fn presets_round_trip_through_json() {
        let p = OAuthPreset::openai_chatgpt();
        let back: OAuthPreset = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn generic_provider_parses_from_toml_like_config() {
        let g: GenericProvider = serde_json::from_value(serde_json::json!({
            "name": "corp", "issuer": "https://id.corp.example", "client_id": "marathon",
            "extra_authorize_params": [["prompt", "consent"]]
        }))
        .unwrap();
        assert_eq!(
            g.extra_authorize_params,
            vec![("prompt".into(), "consent".into())]
        );
        let bad = serde_json::from_value::<GenericProvider>(
            serde_json::json!({"name": "x", "client_id": "c", "tokn_url": "u"}),
        );
        assert!(bad.is_err());
    }
}
