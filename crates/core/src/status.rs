//! The status report: one schema for every view of the accounts.
//!
//! `/_marathon/status` (the running proxy's pools), `marathon status --json`
//! without a proxy (the store and its saved hot state), `status --watch`, the
//! dashboard and `marathon statusline` all read and write [`StatusReport`],
//! so a script written against one works against the others: the same object
//! shape, the same field names, one state vocabulary ([`AccountState`]).
//! Fields a view cannot know are `null` (offline: the counters of a proxy
//! that is not running), never missing.
//!
//! Versioned by [`StatusReport::schema`]: adding an optional field keeps the
//! number; renaming, removing or changing the meaning of one bumps it.
//!
//! Labels only: nothing here can hold a credential, and the only text an
//! upstream sent is a [`Reason`].

use crate::account::{AccountId, AccountKind};
use crate::clock::UnixMillis;
use crate::outcome::{Class, UsageWindow};
use crate::pool::{AccountStatus, Health};
use crate::reason::Reason;

/// The schema number [`StatusReport::schema`] carries.
pub const STATUS_SCHEMA: u32 = 1;

/// Every provider and account, at one instant.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StatusReport {
    /// [`STATUS_SCHEMA`] of the writer.
    pub schema: u32,
    /// Where the report comes from.
    pub source: Source,
    /// The instant the report describes (ms since the epoch); countdowns are
    /// from here.
    pub now: UnixMillis,
    /// marathon's version.
    pub version: String,
    /// Providers by name. Live: every configured provider; offline: every
    /// provider with a stored account.
    pub providers: Vec<ProviderReport>,
    /// Requests and tokens per named access key (`server.access_keys`):
    /// live only; empty offline and when the proxy has no keys. Names only.
    #[serde(default)]
    pub access_keys: Vec<AccessKeyReport>,
}

/// What one access key's clients used since the proxy started.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessKeyReport {
    /// The key's name (never the key).
    pub name: String,
    /// Provider requests made with it.
    pub requests: u64,
    /// Input tokens its requests used (as counted by token accounting).
    pub input_tokens: u64,
    /// Output tokens its requests used.
    pub output_tokens: u64,
    /// Input tokens its requests read from the prompt cache.
    #[serde(default)]
    pub cache_read_tokens: u64,
    /// Input tokens its requests wrote to the prompt cache.
    #[serde(default)]
    pub cache_write_tokens: u64,
}

/// Where a [`StatusReport`] comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A running proxy's pools.
    Live,
    /// The store: accounts.json and the hot state saved by the last proxy.
    Store,
}

/// One provider.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProviderReport {
    /// The route name (`anthropic`, `openai`, ...).
    pub name: String,
    /// Upstream base URL (credentials never appear in it); `null` offline.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Selection strategy; `null` offline.
    #[serde(default)]
    pub strategy: Option<String>,
    /// When the first account can take a request (`now` if one can already);
    /// `null` when none will by itself (all need a login or are disabled).
    #[serde(default)]
    pub soonest_ready: Option<UnixMillis>,
    /// Forecast: until when the provider's accounts together last at the
    /// current burn rate; `null` when unknown.
    #[serde(default)]
    pub capacity_until: Option<UnixMillis>,
    /// Accounts in priority order.
    pub accounts: Vec<AccountReport>,
}

/// One account's state, in the one vocabulary every view uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    /// Takes requests.
    Ready,
    /// Benched until [`AccountReport::cooling_until`].
    Cooling,
    /// The cooldown is over; the next request tries it (one at a time).
    Probing,
    /// Needs a new login or key.
    NeedsLogin,
    /// Disabled by the user.
    Disabled,
}

impl AccountState {
    /// `ready`, `cooling`, `probing`, `needs_login`, `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountState::Ready => "ready",
            AccountState::Cooling => "cooling",
            AccountState::Probing => "probing",
            AccountState::NeedsLogin => "needs_login",
            AccountState::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for AccountState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Health> for AccountState {
    fn from(h: Health) -> Self {
        match h {
            Health::Ready => AccountState::Ready,
            Health::Cooling { .. } => AccountState::Cooling,
            Health::Probing => AccountState::Probing,
            Health::NeedsLogin => AccountState::NeedsLogin,
            Health::Disabled => AccountState::Disabled,
        }
    }
}

/// One account.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AccountReport {
    /// Stable id.
    pub id: AccountId,
    /// Human name.
    pub label: String,
    /// `oauth` or `api_key`.
    pub kind: AccountKind,
    /// Lower is preferred.
    pub priority: i32,
    /// Whether the user enabled it.
    pub enabled: bool,
    /// The state.
    pub state: AccountState,
    /// End of the cooldown, while cooling.
    #[serde(default)]
    pub cooling_until: Option<UnixMillis>,
    /// Time left on the cooldown in ms (`cooling_until - now`), while cooling:
    /// the "retry in" column.
    #[serde(default)]
    pub retry_in_ms: Option<u64>,
    /// The reason of the last failure (cleared by a success).
    #[serde(default)]
    pub last_reason: Option<Reason>,
    /// The class of the last recorded outcome; `null` offline.
    #[serde(default)]
    pub last_class: Option<Class>,
    /// Consecutive account-scoped failures (drives the backoff); `null` offline.
    #[serde(default)]
    pub failure_streak: Option<u32>,
    /// Successful responses since the proxy started; `null` offline.
    #[serde(default)]
    pub successes: Option<u64>,
    /// Failed outcomes since the proxy started; `null` offline.
    #[serde(default)]
    pub failures: Option<u64>,
    /// Requests on the account right now; `null` offline.
    #[serde(default)]
    pub in_flight: Option<u32>,
    /// Requests answered in the last minute; `null` when not measured.
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// Quota windows (5h, 7d, primary, ...), as last learned.
    #[serde(default)]
    pub windows: Vec<WindowReport>,
    /// Tokens its answers reported since the proxy started (token
    /// accounting, [`crate::accounting`]); `null` offline and before the
    /// first answer that reported any.
    #[serde(default)]
    pub tokens: Option<TokenTotals>,
    /// The same per model the answers named (`unknown` when none did,
    /// `other` past 32 models or for a name that is not a safe label);
    /// empty when `tokens` is `null`.
    #[serde(default)]
    pub tokens_by_model: Vec<ModelTokens>,
}

/// One model's tokens on an account.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelTokens {
    /// The model, as the answers named it (a safe label).
    pub model: String,
    /// Its tokens.
    #[serde(flatten)]
    pub tokens: TokenTotals,
}

/// One quota window of an account.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowReport {
    /// `5h`, `7d`, `primary`, `secondary`, ...
    pub name: String,
    /// Share used, 0.0..=1.0.
    pub utilization: f64,
    /// When the window resets, if known.
    #[serde(default)]
    pub resets_at: Option<UnixMillis>,
    /// Forecast: when the window runs out at the current burn rate, if before
    /// it resets; `null` when it will not or nobody estimated it.
    #[serde(default)]
    pub runs_out_at: Option<UnixMillis>,
    /// Forecast: the burn rate, as a share of the window per hour, once
    /// measured (see [`crate::forecast`]); `null` before.
    #[serde(default)]
    pub burn_per_hour: Option<f64>,
    /// The window's length in minutes, when known.
    #[serde(default)]
    pub window_minutes: Option<u64>,
    /// The provider's word for the window (`allowed`, `allowed_warning`,
    /// `rejected`), if it sent one.
    #[serde(default)]
    pub status: Option<Reason>,
}

/// Tokens counted through marathon.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenTotals {
    /// Input (prompt) tokens, cache reads and writes excluded.
    pub input: u64,
    /// Output (completion) tokens.
    pub output: u64,
    /// Input tokens read from the prompt cache.
    #[serde(default)]
    pub cache_read: u64,
    /// Input tokens written to the prompt cache.
    #[serde(default)]
    pub cache_write: u64,
}

/// Which account serves a client's session (`/_marathon/session`, read by
/// `marathon statusline`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SessionReport {
    /// [`STATUS_SCHEMA`] of the writer.
    pub schema: u32,
    /// The instant the report describes.
    pub now: UnixMillis,
    /// Every provider whose session affinity holds the session, with the
    /// account it is pinned to; empty when none does (yet).
    pub accounts: Vec<SessionAccount>,
}

/// One provider's account for a session.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SessionAccount {
    /// The provider's name.
    pub provider: String,
    /// The account.
    pub account: AccountReport,
}

impl From<&UsageWindow> for WindowReport {
    fn from(w: &UsageWindow) -> Self {
        WindowReport {
            name: w.name.clone(),
            utilization: w.utilization,
            resets_at: w.resets_at,
            runs_out_at: None,
            burn_per_hour: None,
            window_minutes: w.window_minutes,
            status: w.status.clone(),
        }
    }
}

impl AccountReport {
    /// The live view of an account from its pool status at `now`.
    pub fn live(s: &AccountStatus, now: UnixMillis) -> Self {
        let cooling_until = match s.health {
            Health::Cooling { until } => Some(until),
            _ => None,
        };
        AccountReport {
            id: s.id.clone(),
            label: s.label.clone(),
            kind: s.kind,
            priority: s.priority,
            enabled: s.enabled,
            state: s.health.into(),
            cooling_until,
            retry_in_ms: cooling_until.map(|t| millis(now.until(t))),
            last_reason: s.last_reason.clone(),
            last_class: s.last_class,
            failure_streak: Some(s.failure_streak),
            successes: Some(s.successes),
            failures: Some(s.failures),
            in_flight: Some(s.in_flight),
            requests_per_minute: None,
            windows: s
                .usage
                .iter()
                .map(|w| {
                    let mut report = WindowReport::from(w);
                    if let Some(f) = s.forecast.iter().find(|f| f.name == w.name) {
                        report.burn_per_hour = f.burn_per_hour;
                        report.runs_out_at = f.runs_out_at.filter(|_| f.runs_out_before_reset);
                    }
                    report
                })
                .collect(),
            tokens: None,
            tokens_by_model: Vec::new(),
        }
    }

    /// Fills in the account's tokens from token accounting.
    pub fn set_tokens(&mut self, t: &crate::accounting::AccountTokens) {
        self.tokens = Some(t.total.clone());
        self.tokens_by_model = t
            .models
            .iter()
            .map(|(model, tokens)| ModelTokens {
                model: model.clone(),
                tokens: tokens.clone(),
            })
            .collect();
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl StatusReport {
    /// The account `id`, with its provider's name.
    pub fn account(&self, id: &AccountId) -> Option<(&ProviderReport, &AccountReport)> {
        self.providers
            .iter()
            .find_map(|p| p.accounts.iter().find(|a| &a.id == id).map(|a| (p, a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards the "retry in" column: a cooling account says how long is left,
    /// under the name the views read.
    #[test]
    fn a_cooling_account_has_a_retry_in_and_the_shared_state_word() {
        let now = UnixMillis(1_000_000);
        let status = AccountStatus {
            id: AccountId("a1".into()),
            label: "work".into(),
            kind: AccountKind::Oauth,
            priority: 0,
            enabled: true,
            health: Health::Cooling {
                until: UnixMillis(1_045_000),
            },
            cooldown_remaining: None,
            successes: 3,
            failures: 1,
            failure_streak: 1,
            last_class: None,
            last_reason: None,
            usage: vec![],
            forecast: vec![],
            in_flight: 0,
            max_in_flight: None,
        };
        let v = serde_json::to_value(AccountReport::live(&status, now)).unwrap();
        assert_eq!(v["state"], "cooling");
        assert_eq!(v["retry_in_ms"], 45_000);
        assert_eq!(v["cooling_until"], 1_045_000);
        // Unknown fields are present as null, so jq filters see one shape.
        assert!(v.as_object().unwrap().contains_key("tokens"));
        assert_eq!(v["tokens_by_model"], serde_json::json!([]));
    }

    /// The token fields' names are the schema: per account and per model,
    /// flat, and a report written before they existed still reads.
    #[test]
    fn tokens_per_account_and_model_in_the_schema() {
        use crate::accounting::{TokenLedger, TokenUsage};
        let mut ledger = TokenLedger::new();
        let id = AccountId("a1".into());
        let u = TokenUsage {
            input: 10,
            output: 3,
            cache_read: 100,
            cache_write: 7,
        };
        ledger.add(&id, Some("claude-sonnet-4-5"), &u);
        ledger.add(&id, None, &u);
        let mut report = AccountReport::live(&status_of(&id), UnixMillis(0));
        report.set_tokens(ledger.account(&id).unwrap());
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(
            v["tokens"],
            serde_json::json!({"input": 20, "output": 6, "cache_read": 200, "cache_write": 14})
        );
        assert_eq!(
            v["tokens_by_model"][0],
            serde_json::json!({"model": "claude-sonnet-4-5", "input": 10, "output": 3, "cache_read": 100, "cache_write": 7})
        );
        assert_eq!(v["tokens_by_model"][1]["model"], "unknown");
        let back: AccountReport = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back, report);
        let mut old = v;
        old.as_object_mut().unwrap().remove("tokens_by_model");
        let old: AccountReport = serde_json::from_value(old).unwrap();
        assert!(old.tokens_by_model.is_empty());
    }

    fn status_of(id: &AccountId) -> AccountStatus {
        AccountStatus {
            id: id.clone(),
            label: "work".into(),
            kind: AccountKind::ApiKey,
            priority: 0,
            enabled: true,
            health: Health::Ready,
            cooldown_remaining: None,
            successes: 0,
            failures: 0,
            failure_streak: 0,
            last_class: None,
            last_reason: None,
            usage: vec![],
            forecast: vec![],
            in_flight: 0,
            max_in_flight: None,
        }
    }

    #[test]
    fn the_state_words_are_the_serialized_names() {
        for s in [
            AccountState::Ready,
            AccountState::Cooling,
            AccountState::Probing,
            AccountState::NeedsLogin,
            AccountState::Disabled,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
