//! Accounts as the engine sees them: identity, label, kind, priority, whether
//! enabled. Credentials are not here: the engine never needs them, so they stay
//! in the store and the proxy.

use std::fmt;

/// A stable account id (assigned by the store, never shown as the account's
/// name: that is the label). Shared, not copied: the proxy clones ids on
/// every request.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct AccountId(pub std::sync::Arc<str>);

impl AccountId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How an account authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// An OAuth login (access token + refresh token).
    Oauth,
    /// A static API key.
    ApiKey,
}

impl AccountKind {
    /// The name used in config, the store and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Oauth => "oauth",
            AccountKind::ApiKey => "api_key",
        }
    }
}

/// What the engine knows about one account.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccountMeta {
    /// Stable id.
    pub id: AccountId,
    /// The provider this account belongs to (e.g. `anthropic`, `openai`).
    pub provider: String,
    /// Human name, unique per provider; used in logs, events, headers.
    pub label: String,
    /// OAuth or API key.
    pub kind: AccountKind,
    /// Lower numbers are preferred by the `priority` strategy and as the
    /// tie-breaker elsewhere.
    pub priority: i32,
    /// A disabled account is never picked.
    pub enabled: bool,
}
