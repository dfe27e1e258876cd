//! Built-in providers: public facts about each provider's API (base URL and
//! how it takes a credential). `[providers.<name>]` overrides any of them.

use marathon_core::usage_api::UsageFormat;

use crate::model::{AuthStyle, HeaderRule, HeaderSource, ProviderKind};

/// The built-in provider names, each with its kind.
pub const BUILTIN: [(&str, ProviderKind); 5] = [
    ("anthropic", ProviderKind::Anthropic),
    ("openai", ProviderKind::Openai),
    ("codex", ProviderKind::Codex),
    ("google", ProviderKind::Google),
    ("copilot", ProviderKind::Copilot),
];

/// Other names the built-in providers are known by (the names other tools and
/// DESIGN §4 use), mapped to marathon's.
pub const ALIASES: [(&str, &str); 5] = [
    ("openai-chatgpt", "codex"),
    ("chatgpt", "codex"),
    ("gemini", "google"),
    ("google-gemini", "google"),
    ("github-copilot", "copilot"),
];

/// The marathon provider name for `name`: an alias resolves to its built-in
/// provider, anything else is returned unchanged.
pub fn canonical_name(name: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, canonical)| canonical)
}

/// The built-in OAuth presets a provider's `oauth.preset` may name (marathon-oauth
/// implements them).
pub const OAUTH_PRESETS: [&str; 4] = [
    "anthropic",
    "openai-chatgpt",
    "github-copilot",
    "google-gemini",
];

/// The OAuth preset a provider of this kind logs in with when its config names
/// none (`None`: API keys only, unless an `oauth` section describes a server).
pub fn default_oauth_preset(kind: ProviderKind) -> Option<&'static str> {
    match kind {
        ProviderKind::Anthropic => Some("anthropic"),
        ProviderKind::Codex => Some("openai-chatgpt"),
        ProviderKind::Copilot => Some("github-copilot"),
        ProviderKind::Google => Some("google-gemini"),
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => None,
    }
}

/// The upstream a provider of this kind uses when the config names none
/// (`None` for [`ProviderKind::OpenaiCompatible`], which must name one).
pub fn default_upstream(kind: ProviderKind) -> Option<&'static str> {
    match kind {
        ProviderKind::Anthropic => Some("https://api.anthropic.com"),
        ProviderKind::Openai => Some("https://api.openai.com"),
        ProviderKind::Codex => Some("https://chatgpt.com/backend-api/codex"),
        // Gemini CLI logins talk to Code Assist (`https://cloudcode-pa.googleapis.com`)
        // instead; such setups set `upstream` (see example.toml).
        ProviderKind::Google => Some("https://generativelanguage.googleapis.com"),
        ProviderKind::Copilot => Some("https://api.githubcopilot.com"),
        ProviderKind::OpenaiCompatible => None,
    }
}

/// A provider's subscription usage endpoint (DESIGN §10), polled with the
/// account's own OAuth credential headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageEndpoint {
    /// A reference resolved against the upstream base URL: `/path` on the
    /// upstream's origin, `../path` next to the base's last segment.
    pub path: &'static str,
    /// The answer's shape.
    pub format: UsageFormat,
}

impl UsageEndpoint {
    /// The absolute URL for an upstream base (no trailing slash).
    pub fn resolve(&self, upstream: &str) -> String {
        let upstream = upstream.trim_end_matches('/');
        let origin_end = upstream
            .find("://")
            .and_then(|i| upstream[i + 3..].find('/').map(|j| i + 3 + j))
            .unwrap_or(upstream.len());
        if let Some(rest) = self.path.strip_prefix("../") {
            let parent = match upstream[origin_end..].rfind('/') {
                Some(i) => &upstream[..origin_end + i],
                None => upstream,
            };
            format!("{parent}/{rest}")
        } else {
            format!("{}{}", &upstream[..origin_end], self.path)
        }
    }
}

/// The usage endpoint of a provider of this kind, if it has one.
pub fn usage_endpoint(kind: ProviderKind) -> Option<UsageEndpoint> {
    match kind {
        // https://api.anthropic.com/api/oauth/usage
        ProviderKind::Anthropic => Some(UsageEndpoint {
            path: "/api/oauth/usage",
            format: UsageFormat::AnthropicOauth,
        }),
        // https://chatgpt.com/backend-api/codex → .../backend-api/wham/usage
        ProviderKind::Codex => Some(UsageEndpoint {
            path: "../wham/usage",
            format: UsageFormat::ChatgptWham,
        }),
        _ => None,
    }
}

/// How a provider of this kind takes a credential.
pub fn default_auth(kind: ProviderKind) -> AuthStyle {
    let bearer = || vec![HeaderRule::credential("authorization", "Bearer ")];
    match kind {
        ProviderKind::Anthropic => AuthStyle {
            strip: strings(&["authorization", "x-api-key"]),
            api_key: vec![HeaderRule::credential("x-api-key", "")],
            // Claude subscription tokens are only accepted with this beta flag;
            // merged so the client's own betas (prompt caching, ...) survive.
            oauth: vec![
                HeaderRule::credential("authorization", "Bearer "),
                HeaderRule {
                    name: "anthropic-beta".to_owned(),
                    value: HeaderSource::Static("oauth-2025-04-20".to_owned()),
                    merge: true,
                },
            ],
        },
        ProviderKind::Codex => {
            // The ChatGPT backend wants the workspace the token belongs to; a
            // client's own header would name the wrong account after a switch.
            let rules = vec![
                HeaderRule::credential("authorization", "Bearer "),
                HeaderRule {
                    name: "chatgpt-account-id".to_owned(),
                    value: HeaderSource::Extra("chatgpt_account_id".to_owned()),
                    merge: false,
                },
            ];
            AuthStyle {
                strip: strings(&["authorization", "chatgpt-account-id"]),
                api_key: rules.clone(),
                oauth: rules,
            }
        }
        ProviderKind::Google => AuthStyle {
            strip: strings(&["authorization", "x-goog-api-key"]),
            api_key: vec![HeaderRule::credential("x-goog-api-key", "")],
            oauth: bearer(),
        },
        ProviderKind::Openai | ProviderKind::Copilot | ProviderKind::OpenaiCompatible => {
            AuthStyle {
                strip: strings(&["authorization"]),
                api_key: bearer(),
                oauth: bearer(),
            }
        }
    }
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_endpoints_resolve_against_the_upstream() {
        let anthropic = usage_endpoint(ProviderKind::Anthropic).unwrap();
        let codex = usage_endpoint(ProviderKind::Codex).unwrap();
        assert_eq!(
            anthropic.resolve("https://api.anthropic.com"),
            "https://api.anthropic.com/api/oauth/usage"
        );
        assert_eq!(
            codex.resolve("https://chatgpt.com/backend-api/codex"),
            "https://chatgpt.com/backend-api/wham/usage"
        );
        // The simulator under a route prefix, and with no path at all.
        assert_eq!(
            anthropic.resolve("http://127.0.0.1:9/anthropic/"),
            "http://127.0.0.1:9/api/oauth/usage"
        );
        assert_eq!(
            codex.resolve("http://127.0.0.1:9"),
            "http://127.0.0.1:9/wham/usage"
        );
        assert!(usage_endpoint(ProviderKind::Openai).is_none());
    }

    #[test]
    fn aliases_resolve_to_builtin_providers() {
        assert_eq!(canonical_name("gemini"), "google");
        assert_eq!(canonical_name("openai-chatgpt"), "codex");
        assert_eq!(canonical_name("github-copilot"), "copilot");
        assert_eq!(canonical_name("anthropic"), "anthropic");
        assert_eq!(canonical_name("my-llm"), "my-llm");
        for (_, target) in ALIASES {
            assert!(BUILTIN.iter().any(|(n, _)| *n == target), "{target}");
        }
    }
}
