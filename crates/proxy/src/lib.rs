//! # marathon-proxy: the rotating reverse proxy
//!
//! Any client points its base URL at `http://127.0.0.1:<port>/<provider>`;
//! marathon forwards each request to that provider's upstream with the chosen
//! account's credentials and, when the account is rate-limited, expired or
//! unusable, tries the next one — before the client sees a byte.
//!
//! Roles:
//! - [`server`]: accepting connections, routing, access keys, background sync;
//! - `browser`: the Host and Origin checks that keep web pages out;
//! - `connections`: connection cap, head and idle timeouts, parking idle
//!   connections without their buffers, graceful shutdown;
//! - `websocket`: `Upgrade: websocket` requests: the machine drives the handshake like a
//!   request, then bytes pass both ways (spent-account error events read);
//! - `forward`: the per-request rotation loop (pick → send → classify → decide);
//! - `body`: the one body type both ways, streaming chunk by chunk;
//! - `headers`: hop-by-hop stripping and credential replacement (no client
//!   credential header of any configured provider travels);
//! - `guard`: what a client may ask: methods, paths under the upstream
//!   prefix, credential query parameters, session ids as fixed-size keys;
//! - `upstream`: the pooled hyper-util client (kept off reqwest on purpose: the
//!   hot path must not re-parse URLs per request);
//! - `usage`: the usage poller (subscription windows of OAuth accounts,
//!   off the hot path, one poll per account and interval across processes);
//! - `ops`: `/_marathon/{health,status,events,metrics}` and the dashboard;
//! - `probe`: connectivity probes (`HEAD`, `GET` of the base URL) answered
//!   without touching an account;
//! - `events`: the event bus and its sinks (log, SSE, webhook, command hook);
//! - `shared`: what instances sharing a store learn from each other (hot
//!   state merged through the store, news pushed by [`Peers`]);
//! - `errors`: answers in each provider's own error format;
//! - `scrub`: the last line before a client: known secrets masked in every
//!   answer (an upstream may echo the key it received).
//!
//! Only this crate knows hyper; the decisions are `marathon-core`'s.

mod access;
mod accounting;
mod actions;
mod activity;
mod body;
mod browser;
mod connections;
mod egress;
mod errors;
mod events;
mod forward;
mod guard;
mod headers;
mod metrics;
mod ops;
mod probe;
mod scrub;
pub mod server;
mod settings;
mod shared;
mod slots;
mod state;
mod upstream;
mod usage;
mod websocket;
mod workers;

pub use access::ClientKey;
pub use connections::{ConnectionLimits, auto_max_connections, raise_nofile_limit};
pub use egress::{BadEgress, EgressSettings};
pub use events::EventSinks;
pub use marathon_config::AccessKey;
pub use marathon_core::tokens::{BoxFuture, TokenError, TokenSource};
pub use marathon_wire::{BadAuthStyle, CredentialStyle};
pub use server::{EventSubscription, ProxyHandle, RefreshFeed, StartOptions, start};
pub use settings::SettingsError;
pub use shared::{PeerCooldown, PeerInbox, Peers};
pub use slots::{SharedSlot, SharedSlots, SlotAnswer};
pub use state::{ProviderSettings, ProxySettings};
pub use upstream::{BadUpstream, UpstreamBase};
pub use usage::UsagePollSettings;
pub use workers::auto_workers;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Refused: a non-loopback address without an access key would expose every account.
    #[error(
        "refusing to listen on {0} without an access key: anyone who can reach it could use your accounts. \
         Set [server] access_keys in the config (or MARATHON_ACCESS_KEY), or listen on 127.0.0.1"
    )]
    OpenBind(std::net::SocketAddr),
    /// The address is taken or not ours.
    #[error(
        "cannot listen on {0}: {1} (is another marathon running? pick another port with --listen)"
    )]
    Bind(std::net::SocketAddr, std::io::Error),
    /// The store could not be read.
    #[error("cannot read accounts: {0}")]
    Store(String),
}
