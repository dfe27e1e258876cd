//! marathon-sim: a simulated LLM provider for marathon's tests, demo and benchmarks.
//!
//! The simulator speaks four APIs on any path prefix — Anthropic Messages
//! (`…/messages`), OpenAI Chat Completions (`…/chat/completions`), OpenAI
//! Responses (`…/responses`, also the Codex backend, over HTTP and as the
//! WebSocket Codex opens) and the Gemini API (`…/models/{model}:generateContent`,
//! `:streamGenerateContent`, `:countTokens`) — as JSON and as streams, plus
//! `GET …/models` and the credential-less warm-up `HEAD /` / `HEAD …/api/hello`
//! (200, empty). Requests are attributed to an account by the
//! credential they present (`x-api-key`, `x-goog-api-key`, `Authorization:
//! Bearer` or a `key=` query parameter), and each account behaves as its [`Scenario`]
//! says: healthy, over a quota window (429s with the headers and bodies of
//! Anthropic, OpenAI, Codex, Google or Copilot, and real reset times), expired,
//! failing with a fixed status, resetting connections, breaking streams
//! mid-way, or streaming slowly. A scenario is data, so a test states what
//! the world does in a few lines:
//!
//! ```no_run
//! # async fn demo() -> Result<(), marathon_sim::SimError> {
//! use std::time::Duration;
//! use marathon_sim::{Account, QuotaStyle, Scenario};
//!
//! let sim = marathon_sim::start(Scenario::new([
//!     Account::ok("alice", "sk-alice").quota(2, Duration::from_secs(60), QuotaStyle::AnthropicApi),
//!     Account::ok("bob", "sk-bob").status(529).fail_first(1),
//! ]))
//! .await?;
//! // point a client at sim.url(), then:
//! let counts = sim.counts();
//! # let _ = counts; Ok(()) }
//! ```
//!
//! The same world can be changed while the server runs, through
//! [`SimHandle::set_scenario`]/[`SimHandle::set_account`] or the admin
//! endpoints: `PUT /_sim/scenario` (JSON, or TOML with a `toml` content type),
//! `POST /_sim/accounts/<name>` (JSON account; credentials kept if omitted),
//! `DELETE /_sim/accounts/<name>`, `GET /_sim/counts`, `POST /_sim/reset-counts`,
//! `GET /_sim/health`.
//!
//! Counts are per account name: every request to a generation route that an
//! account made, whatever the answer (including 429s, failures and resets).
//!
//! Fast mode ([`Scenario::fast`]) answers healthy accounts from precomputed
//! bodies without parsing requests or logging, for benchmarks.

mod gemini;
mod introspect;
pub mod scenario;
mod server;
mod shapes;
mod timefmt;
mod usage;
mod world;
mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use scenario::{
    Account, Credential, ErrorKind, Quota, QuotaStyle, Scenario, SimDuration, StreamErrorKind,
};
pub use usage::UsageCalls;

/// What can go wrong setting up or changing the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario text is not valid TOML/JSON for the schema.
    #[error("cannot parse scenario: {0}")]
    Parse(String),
    /// The scenario parses but contradicts itself.
    #[error("invalid scenario: {0}")]
    Invalid(String),
    /// A scenario file could not be read or is invalid.
    #[error("scenario file {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen (default `127.0.0.1:0`, an ephemeral port).
    pub addr: SocketAddr,
    /// Log one line per request to stderr (never credentials; off in fast mode).
    pub log: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: false,
        }
    }
}

/// A running simulator. Dropping it stops the server.
#[derive(Debug)]
pub struct SimHandle {
    /// The bound address (with the real port).
    pub addr: SocketAddr,
    shared: Arc<server::Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`, the base URL for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests per account name so far.
    pub fn counts(&self) -> HashMap<String, u64> {
        self.shared.counts.snapshot()
    }

    /// Requests made by one account (0 if none or unknown).
    pub fn count(&self, name: &str) -> u64 {
        self.counts().get(name).copied().unwrap_or(0)
    }

    /// The most requests each account had open at once (a request is open
    /// from the moment its account is known until its answer's body ends).
    pub fn max_concurrency(&self) -> HashMap<String, u64> {
        self.shared.concurrency.max()
    }

    /// Requests each account has open right now.
    pub fn open_requests(&self) -> HashMap<String, u64> {
        self.shared.concurrency.open_now()
    }

    /// Calls to the usage endpoints so far.
    pub fn usage_calls(&self) -> UsageCalls {
        self.shared.usage.calls()
    }

    /// Throttles the usage endpoints (every call answered 429 with this
    /// `retry-after`, in seconds), or opens them again with `None`.
    pub fn throttle_usage(&self, retry_after: Option<u64>) {
        self.shared.usage.set_throttle(retry_after);
    }

    /// Sets every count to zero (and the concurrency high-water marks to
    /// what is open now).
    pub fn reset_counts(&self) {
        self.shared.concurrency.reset();
        self.shared.counts.reset();
    }

    /// Replaces the world; all accounts start afresh (quota windows,
    /// `fail_first` progress). Counts are kept.
    pub fn set_scenario(&self, scenario: Scenario) -> Result<(), SimError> {
        self.shared.set_scenario(scenario)
    }

    /// Adds or redefines one account; the others keep their state. An account
    /// given without credentials keeps the ones it had.
    pub fn set_account(&self, account: Account) -> Result<(), SimError> {
        self.shared.set_account(account)
    }

    /// Stops accepting and closes open connections.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Starts a simulator on `127.0.0.1:0`.
pub async fn start(scenario: Scenario) -> Result<SimHandle, SimError> {
    start_with(scenario, Options::default()).await
}

/// Starts a simulator with explicit options.
pub async fn start_with(scenario: Scenario, options: Options) -> Result<SimHandle, SimError> {
    let shared = Arc::new(server::Shared::new(scenario, options.log)?);
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|source| SimError::Bind {
            addr: options.addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SimError::Bind {
        addr: options.addr,
        source,
    })?;
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(server::serve(listener, shared.clone(), stopped));
    Ok(SimHandle {
        addr,
        shared,
        stop,
        task: Some(task),
    })
}
