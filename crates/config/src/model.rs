//! The configuration as the rest of marathon sees it: plain, validated values.
//! Everything here has already been checked; nothing needs re-parsing.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use marathon_core::decision::RetryPolicy;
use marathon_core::pool::PoolConfig;
use marathon_core::rotation::RotationConfig;
use marathon_core::strategy::Strategy;
use marathon_core::{AccountKind, ApiFlavor, Secret};

/// The whole configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The proxy server (`[server]`).
    pub server: ServerConfig,
    /// Providers by name: the built-in presets, overridden or extended by `[providers.<name>]`.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Event sinks (`[events]`).
    pub events: EventsConfig,
    /// Where accounts, hot state and locks live (`[store]`).
    pub store: StoreConfig,
}

/// `[store]`: where accounts, hot state and refresh locks live.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// `file` (the data directory) or `redis` (shared by several instances).
    pub backend: StoreBackend,
    /// `redis://host:port/db` or `rediss://` (TLS); no `user:password@`.
    pub url: Option<String>,
    /// The Redis user (ACL), if not `default`.
    pub username: Option<String>,
    /// The Redis password (`MARATHON_STORE_PASSWORD` keeps it out of the file).
    pub password: Option<Secret>,
    /// Prefix of every key, so several gateways can share one Redis.
    pub prefix: String,
    /// How long a concurrency slot taken in Redis (`max_in_flight`) lives
    /// without being renewed: the slots of an instance that died come back
    /// after this long. Renewed every third of it while held.
    pub slot_lease: std::time::Duration,
}

impl StoreConfig {
    /// The default key prefix.
    pub const DEFAULT_PREFIX: &'static str = "marathon";
    /// The default `slot_lease`.
    pub const DEFAULT_SLOT_LEASE: std::time::Duration = std::time::Duration::from_secs(30);
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::File,
            url: None,
            username: None,
            password: None,
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            slot_lease: Self::DEFAULT_SLOT_LEASE,
        }
    }
}

/// Which store backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoreBackend {
    /// Files in the data directory (one machine).
    #[default]
    File,
    /// Redis or Valkey (a team gateway: several instances act as one).
    Redis,
}

impl Config {
    /// The provider called `name`, accepting the preset aliases
    /// (`gemini` → `google`, `openai-chatgpt` → `codex`, ...), so a route
    /// `/gemini/...` reaches the `google` provider.
    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers
            .get(name)
            .or_else(|| self.providers.get(crate::presets::canonical_name(name)))
    }
}

/// `[server]`: how the proxy listens and what it accepts.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to bind; `127.0.0.1:8787` by default.
    pub listen: SocketAddr,
    /// Keys clients must present (as `Authorization: Bearer`, `x-api-key` or
    /// `x-marathon-key`) when non-empty, each with the name its requests are
    /// counted under. Required for a non-loopback bind.
    pub access_keys: Vec<AccessKey>,
    /// Request bodies up to this many bytes are buffered so they can be replayed
    /// on another account; larger ones stream through without retry. 32 MiB by default.
    pub max_body: u64,
    /// Hold a streamed response until its first event arrives, so a rate limit
    /// or overload reported inside a `200` stream can still rotate. On by default.
    pub peek_first_event: bool,
    /// Give up on an upstream that sends no response head for this long.
    /// Off by default: an LLM answer can take minutes, the client's own
    /// timeout cancels the attempt, and TCP keepalive catches dead peers.
    pub upstream_timeout: Option<std::time::Duration>,
    /// Host names (besides loopback names and IP addresses) that requests may
    /// carry in `Host`: the names clients reach the proxy by. Anything else is
    /// refused, which stops DNS-rebinding pages. Lower-case, without a port.
    pub allowed_hosts: Vec<String>,
    /// Web origins (`https://app.example`) whose pages may call the proxy
    /// from a browser (CORS). Empty by default: requests carrying another
    /// page's `Origin` are refused. Lower-case, without a trailing slash.
    pub allowed_origins: Vec<String>,
    /// A client must send a request's whole head within this long of starting it.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// Most client connections open at once; `None` = sized from the
    /// process's descriptor limit.
    pub max_connections: Option<u32>,
    /// How long the whole first part of an upstream error body may take to arrive.
    pub error_body_timeout: Duration,
    /// On SIGTERM or Ctrl-C, how long requests in flight may take to finish.
    pub shutdown_grace: Duration,
    /// The forward proxy upstream connections go through.
    pub upstream_proxy: UpstreamProxy,
    /// CA certificates trusted for upstream TLS besides the OS store and the
    /// bundled roots (a TLS-inspecting gateway's CA).
    pub extra_ca: Option<ExtraCa>,
}

/// A key clients present, and the name its requests are counted under (in
/// status and metrics; the key itself is never shown).
#[derive(Clone, Debug)]
pub struct AccessKey {
    /// `[A-Za-z0-9_.@-]`, at most 64 characters: safe as a metrics label.
    pub name: String,
    /// The key.
    pub key: Secret,
}

impl AccessKey {
    /// A named key.
    pub fn new(name: impl Into<String>, key: Secret) -> Self {
        AccessKey {
            name: name.into(),
            key,
        }
    }

    /// A key given without a name (the list form, `MARATHON_ACCESS_KEYS`):
    /// named by its position, `key-1`, `key-2`, ...
    pub fn unnamed(index: usize, key: Secret) -> Self {
        AccessKey::new(format!("key-{}", index + 1), key)
    }
}

/// Where upstream connections go first (`server.upstream_proxy`).
#[derive(Clone, Debug, Default)]
pub enum UpstreamProxy {
    /// `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` and `NO_PROXY` (and their
    /// lower-case spellings), as curl reads them. The default.
    #[default]
    Env,
    /// Straight to the upstream, whatever the environment says.
    Off,
    /// Every upstream through this `http://[user:password@]host:port` proxy
    /// (`NO_PROXY` still applies). A secret: it may hold a password.
    Url(Secret),
}

/// `server.extra_ca_file`, read when the config loads.
#[derive(Clone, Debug)]
pub struct ExtraCa {
    /// Where it was read from (for messages).
    pub path: std::path::PathBuf,
    /// Its PEM text (one or more certificates).
    pub pem: Vec<u8>,
}

impl ServerConfig {
    /// The default listen address.
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:8787";
    /// The default replay buffer cap (32 MiB).
    pub const DEFAULT_MAX_BODY: u64 = 32 * 1024 * 1024;
    /// The default header read timeout.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default keep-alive idle timeout.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// The default error-body deadline.
    pub const DEFAULT_ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default shutdown grace period.
    pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

    /// Refuses a listen address reachable from other machines unless access
    /// keys are set: an open proxy would hand out the accounts' credentials.
    /// Called by [`crate::load`]; call it again after applying command-line flags.
    pub fn check_exposure(&self) -> Result<(), String> {
        if !self.listen.ip().is_loopback() && self.access_keys.is_empty() {
            return Err(format!(
                "listening on {} exposes your accounts to other machines; set server.access_keys \
                 (or MARATHON_ACCESS_KEYS), or listen on 127.0.0.1",
                self.listen
            ));
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            access_keys: Vec::new(),
            max_body: Self::DEFAULT_MAX_BODY,
            peek_first_event: true,
            upstream_timeout: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            max_connections: None,
            error_body_timeout: Self::DEFAULT_ERROR_BODY_TIMEOUT,
            shutdown_grace: Self::DEFAULT_SHUTDOWN_GRACE,
            upstream_proxy: UpstreamProxy::Env,
            extra_ca: None,
        }
    }
}

/// `[events]`: where events go besides the log and the proxy's SSE stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventsConfig {
    /// Each event is POSTed as JSON to this `http(s)://` URL.
    pub webhook: Option<String>,
    /// Each event is written as JSON to this shell command's stdin.
    pub command: Option<String>,
}

/// Which API a provider speaks, which decides its default upstream, how
/// credentials are carried, and how its responses are classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// Anthropic Messages API (API keys and Claude Pro/Max logins).
    Anthropic,
    /// OpenAI API.
    Openai,
    /// ChatGPT-backed Codex (`chatgpt.com/backend-api/codex`).
    Codex,
    /// Google Gemini (API keys, Gemini CLI / Code Assist logins).
    Google,
    /// GitHub Copilot.
    Copilot,
    /// Any server speaking the OpenAI API; needs an explicit `upstream`.
    OpenaiCompatible,
}

impl ProviderKind {
    /// Every kind, in the order error messages list them.
    pub const ALL: [ProviderKind; 6] = [
        ProviderKind::Anthropic,
        ProviderKind::Openai,
        ProviderKind::Codex,
        ProviderKind::Google,
        ProviderKind::Copilot,
        ProviderKind::OpenaiCompatible,
    ];

    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Openai => "openai",
            ProviderKind::Codex => "codex",
            ProviderKind::Google => "google",
            ProviderKind::Copilot => "copilot",
            ProviderKind::OpenaiCompatible => "openai-compatible",
        }
    }

    /// The API family the engine classifies responses by.
    pub fn flavor(self) -> ApiFlavor {
        match self {
            ProviderKind::Anthropic => ApiFlavor::Anthropic,
            ProviderKind::Openai | ProviderKind::Codex | ProviderKind::OpenaiCompatible => {
                ApiFlavor::Openai
            }
            ProviderKind::Google => ApiFlavor::Google,
            ProviderKind::Copilot => ApiFlavor::Copilot,
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let found = match s {
            "openai-chatgpt" | "chatgpt" => Some(ProviderKind::Codex),
            "gemini" => Some(ProviderKind::Google),
            "github-copilot" => Some(ProviderKind::Copilot),
            other => ProviderKind::ALL.into_iter().find(|k| k.as_str() == other),
        };
        found.ok_or_else(|| {
            let names: Vec<&str> = ProviderKind::ALL.iter().map(|k| k.as_str()).collect();
            format!(
                "unknown provider kind {s:?} (expected one of {})",
                names.join(", ")
            )
        })
    }
}

/// One provider: where it lives, how its accounts rotate, how the credential
/// is carried.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// The provider's name: the proxy route `/<name>/...` and the accounts' `provider`.
    pub name: String,
    /// The API it speaks.
    pub kind: ProviderKind,
    /// Base URL requests are forwarded to (no trailing slash).
    pub upstream: String,
    /// How the next account is chosen.
    pub strategy: Strategy,
    /// Attempts per request; `None` = one per account.
    pub max_attempts: Option<u32>,
    /// Cooldown after a rate limit that came without a reset hint.
    pub rate_limit_cooldown: Duration,
    /// Cooldown after a 401/403 that a refresh did not fix.
    pub auth_failure_cooldown: Duration,
    /// Retries on the same account after a connect error or reset, before rotating.
    pub network_retry_attempts: u32,
    /// When every account is cooling, wait up to this long for one to recover
    /// instead of answering 429 at once; `None` = answer at once.
    pub max_wait: Option<Duration>,
    /// When every account is resting, a wait up to this long is answered as a
    /// rate limit (429 + `retry-after`: clients wait and retry); a longer one
    /// as a spent quota in the form the provider's clients stop on at once.
    pub short_wait: Duration,
    /// Refresh an OAuth access token this long before it expires.
    pub refresh_lead: Duration,
    /// Move off an account before it hits its limit, once a usage window's
    /// utilisation reaches this fraction (0 < t ≤ 1); `None` = only on a limit.
    pub proactive_threshold: Option<f64>,
    /// Requests carrying the same value in one of these headers (the first
    /// present, in this order) stay on one account. Lower-case; empty means
    /// no session affinity. By default the session headers of Claude Code,
    /// Codex and opencode ([`ProviderConfig::DEFAULT_SESSION_HEADERS`]).
    pub session_headers: Vec<String>,
    /// How often each OAuth account's subscription usage is polled; `None`
    /// = never. Only providers with a usage endpoint poll (see
    /// [`ProviderConfig::usage_endpoint`]).
    pub usage_poll: Option<Duration>,
    /// The usage endpoint's URL, when set (`usage_url`); otherwise the
    /// preset's, relative to `upstream`.
    pub usage_url: Option<String>,
    /// How the upstream request carries the account's credential.
    pub auth: AuthStyle,
    /// `[providers.<name>.oauth]`: how accounts of this provider log in and
    /// refresh, when the section is written. See [`ProviderConfig::oauth_preset`].
    pub oauth: Option<OAuthConfig>,
    /// Accounts (by label) whose upstream traffic leaves through their own
    /// forward proxy (`http://[user:password@]host:port`), e.g. one egress IP
    /// per account. Secrets: the URLs may hold passwords.
    pub account_proxies: BTreeMap<String, Secret>,
    /// The most requests one account of this provider serves at once
    /// (`max_in_flight`; `None`: no cap). A request holds its slot until its
    /// answer's body has ended. With the Redis store the cap holds across
    /// every instance together; with the file store, per process.
    pub max_in_flight: Option<u32>,
    /// Per-account caps by label (`account_max_in_flight`), over
    /// `max_in_flight`.
    pub account_max_in_flight: BTreeMap<String, u32>,
}

impl ProviderConfig {
    /// The headers clients send a session id in: Claude Code
    /// (`x-claude-code-session-id`), Codex (`session-id`), opencode (`x-session-id`).
    pub const DEFAULT_SESSION_HEADERS: [&'static str; 3] =
        ["x-claude-code-session-id", "session-id", "x-session-id"];

    /// The built-in OAuth preset this provider's logins start from: the
    /// section's `preset`, else the one its kind implies (`anthropic`,
    /// `openai-chatgpt`, `github-copilot`, `google-gemini`), else none (a
    /// generic provider described entirely by its `oauth` section, or no
    /// OAuth at all).
    pub fn oauth_preset(&self) -> Option<&str> {
        self.oauth
            .as_ref()
            .and_then(|o| o.preset.as_deref())
            .or_else(|| crate::presets::default_oauth_preset(self.kind))
    }

    /// Where and in which shape this provider reports an OAuth account's
    /// subscription usage: `usage_url`, else the preset's endpoint for its
    /// kind resolved against `upstream`; `None` when it has none.
    pub fn usage_endpoint(&self) -> Option<(String, marathon_core::usage_api::UsageFormat)> {
        let preset = crate::presets::usage_endpoint(self.kind)?;
        let url = match &self.usage_url {
            Some(u) => u.clone(),
            None => preset.resolve(&self.upstream),
        };
        Some((url, preset.format))
    }

    /// Whether accounts of this provider can log in with OAuth.
    pub fn has_oauth(&self) -> bool {
        self.oauth.is_some() || self.oauth_preset().is_some()
    }

    /// How this provider's pool rests and picks accounts.
    pub fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            strategy: self.strategy,
            rate_limit_cooldown: self.rate_limit_cooldown,
            auth_failure_cooldown: self.auth_failure_cooldown,
            proactive_threshold: self.proactive_threshold,
            max_in_flight: self.max_in_flight,
            account_max_in_flight: self.account_max_in_flight.clone(),
            ..PoolConfig::default()
        }
    }

    /// How often and how long this provider's requests retry.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            transport_retries_same: self.network_retry_attempts,
            ..RetryPolicy::default()
        }
    }

    /// The rotation machine's settings for this provider: the one source
    /// both faces (proxy, client middleware) build theirs from.
    pub fn rotation_config(&self) -> RotationConfig {
        RotationConfig {
            provider: self.name.clone(),
            retry: self.retry_policy(),
            max_wait: self.max_wait,
            short_wait: self.short_wait,
        }
    }
}

/// `[providers.<name>.oauth]`: an OAuth login for a provider, as a built-in
/// preset with overrides or as a generic OpenID/OAuth server. Checked when
/// loaded: without a preset it has a `client_id` and enough endpoints
/// (`issuer`, or `token_url` plus `authorize_url` or `device_url`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OAuthConfig {
    /// Built-in preset to start from (one of [`crate::presets::OAUTH_PRESETS`]).
    pub preset: Option<String>,
    /// Issuer whose `/.well-known/openid-configuration` supplies the endpoints
    /// not written here.
    pub issuer: Option<String>,
    /// Authorization endpoint (code + PKCE flows).
    pub authorize_url: Option<String>,
    /// Token endpoint.
    pub token_url: Option<String>,
    /// Device authorization endpoint (RFC 8628).
    pub device_url: Option<String>,
    /// Userinfo endpoint, for the account's identity when the id token has none.
    pub userinfo_url: Option<String>,
    /// OAuth client id (a public client: marathon keeps no client secret).
    pub client_id: Option<String>,
    /// Scopes requested.
    pub scopes: Option<Vec<String>>,
    /// Extra authorization-request parameters (e.g. `prompt = "consent"`),
    /// in key order.
    pub extra_authorize_params: Vec<(String, String)>,
    /// Fixed port for the loopback redirect (when the client registered one);
    /// otherwise any free port.
    pub redirect_port: Option<u16>,
}

/// How an upstream request carries an account's credential: which of the
/// client's headers to drop, and which to set for each kind of account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthStyle {
    /// Lower-case header names removed from the client's request first (its own
    /// credentials, which must never reach upstream next to the account's).
    pub strip: Vec<String>,
    /// Headers set for an API-key account.
    pub api_key: Vec<HeaderRule>,
    /// Headers set for an OAuth account.
    pub oauth: Vec<HeaderRule>,
}

impl AuthStyle {
    /// The headers to set for an account of this kind.
    pub fn rules(&self, kind: AccountKind) -> &[HeaderRule] {
        match kind {
            AccountKind::ApiKey => &self.api_key,
            AccountKind::Oauth => &self.oauth,
        }
    }
}

/// One header set on the upstream request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderRule {
    /// Lower-case header name.
    pub name: String,
    /// Where its value comes from.
    pub value: HeaderSource,
    /// Append to a comma-separated value the client already sent (e.g.
    /// `anthropic-beta`, where the client's own betas must survive) instead of
    /// replacing it.
    pub merge: bool,
}

/// Where a header's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderSource {
    /// The account's key or access token, after `prefix` (e.g. `"Bearer "`).
    Credential {
        /// Text before the credential.
        prefix: String,
    },
    /// A fixed value.
    Static(String),
    /// The account's provider extra with this key (e.g. `chatgpt_account_id`);
    /// the header is left out when the account has none.
    Extra(String),
}

impl HeaderRule {
    pub(crate) fn credential(name: &str, prefix: &str) -> Self {
        HeaderRule {
            name: name.to_owned(),
            value: HeaderSource::Credential {
                prefix: prefix.to_owned(),
            },
            merge: false,
        }
    }
}
