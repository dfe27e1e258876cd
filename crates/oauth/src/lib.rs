//! # marathon-oauth: logins, presets and safe token refresh
//!
//! - [`preset`]: providers as data: the built-in [`OAuthPreset`]s
//!   (`anthropic`, `openai-chatgpt`, `github-copilot`, `google-gemini`) and
//!   [`GenericProvider`]s from config (issuer discovery or explicit endpoints).
//! - [`login`]: the flows, each in two steps so the CLI owns the terminal:
//!   [`OAuthClient::start_loopback`] → [`LoopbackLogin::wait`],
//!   [`OAuthClient::start_paste`] → [`PasteLogin::finish`],
//!   [`OAuthClient::start_device`] → [`DeviceLogin::wait`]; each gives a
//!   [`LoginResult`] that becomes a store `NewAccount`.
//! - [`refresh`]: [`Refresher`], which hands out valid access tokens and
//!   refreshes them single-flight in-process and under the store's
//!   per-account lock across processes.
//! - [`from_config`]: a provider's preset from `marathon-config`, the
//!   [`Refresher`] for a whole config, and the `Refresher` as the token
//!   source of both faces (`marathon_core::tokens::TokenSource`);
//! - [`http`]: the injected [`HttpClient`] (real one: [`HyperHttpClient`]);
//!   [`egress`]: the forward proxies and CAs it connects through, as the
//!   proxy's upstream traffic does (`HTTPS_PROXY`, `NO_PROXY`, per-account
//!   proxies, OS roots, `server.extra_ca_file`).
//!
//! No secret reaches a log line, an error or a `Debug` output: tokens are
//! [`Secret`]s, request bodies are redacted, and PKCE verifiers are not `Clone`.

pub mod egress;
pub mod from_config;
pub mod http;
pub mod login;
pub mod pkce;
pub mod preset;
pub mod refresh;
pub mod token;

pub use egress::Egress;
pub use http::{HttpClient, HttpError, HttpRequest, HttpResponse, HyperHttpClient};
pub use login::{
    DeviceLogin, LoginError, LoginResult, LoopbackLogin, OAuthClient, PasteLogin,
    build_authorize_url, open_browser,
};
pub use marathon_core::Secret;
pub use pkce::{PkceVerifier, jwt_claims};
pub use preset::{
    ApiHeaders, BUILTIN_PRESETS, DeviceVariant, DiscoveryDocument, DiscoveryError, FlowKind,
    GenericProvider, IdentitySource, Loopback, OAuthPreset, RefreshKind, TokenFormat, discover,
};
pub use refresh::{
    RefreshError, RefreshListener, RefreshNotice, RefreshStats, Refresher, RefresherConfig,
};
pub use token::{ErrorClass, TokenError, TokenResponse};
