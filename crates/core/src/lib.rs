//! # marathon-core: the rotation engine
//!
//! marathon keeps LLM tools running across several accounts per provider. This
//! crate is the part that decides; it does no I/O and reads no clock of its own,
//! so every rule is a pure, deterministic function that tests can drive with a
//! [`clock::ManualClock`].
//!
//! Its roles:
//! - [`outcome`]: the vocabulary — what came back from upstream, what class it is;
//! - [`classify`]: upstream outcome → [`outcome::Classification`] (every row of the
//!   classification table), using [`hints`] for reset times and usage windows;
//! - [`sse`]: finding an error event inside a `200` event stream, chunk by chunk;
//! - [`pool`]: one provider's accounts, their health (ready, cooling, probing,
//!   needs-login, disabled) and selection by [`strategy`];
//! - [`cooldown`]: how long an account rests (hint-driven, else backoff with jitter);
//! - [`decision`]: the retry decision as a pure function, bounded by [`budget`];
//! - [`rotation`]: one request's whole rotation as a state machine without
//!   I/O (pick, send, classify, decide, record, wait, refresh, answer), which
//!   the proxy drives;
//! - [`events`]: what happened, for logs, SSE, webhooks — labels, never secrets;
//! - [`forecast`]: burn rates of usage windows, "runs out at" and a
//!   provider's "capacity until" (EWMA over time, `now` passed in);
//! - [`fmt`]: the one way a duration is written for people;
//! - [`reason`]: the short words shown for why something happened, safe by
//!   construction (untrusted text is sanitized, known secrets refused);
//! - [`secret`]: the redacting newtype for keys and tokens, and the matcher
//!   over the ones this process holds;
//! - [`usage_api`]: the subscription usage endpoints' answers as usage windows;
//! - [`defaults`]: the default of every per-provider setting, read by the
//!   engine, the config and the OAuth refresher alike;
//! - [`tokens`]: the seam drivers get OAuth access tokens through.

pub mod account;
pub mod accounting;
pub mod budget;
pub mod classify;
pub mod clock;
pub mod cooldown;
pub mod decision;
pub mod defaults;
pub mod events;
pub mod fmt;
pub mod forecast;
pub mod hints;
pub mod outcome;
pub mod pool;
pub mod reason;
pub mod rotation;
pub mod secret;
pub mod sse;
pub mod status;
pub mod strategy;
pub mod tokens;
pub mod usage_api;

pub use account::{AccountId, AccountKind, AccountMeta};
pub use clock::{Clock, ManualClock, SystemClock, UnixMillis};
pub use outcome::{
    ApiFlavor, Class, Classification, HeaderLookup, HintSource, Outcome, ResetHint,
    TransportFailure, UsageWindow,
};
pub use reason::Reason;
pub use secret::Secret;

pub use budget::RetryBudget;
pub use decision::{AttemptContext, AttemptTrace, Decision, Limit, RetryPolicy, decide};
pub use events::{Event, EventKind};
pub use pool::{AccountStatus, Exhausted, Health, Pick, PickRequest, Pool, PoolConfig, SessionKey};
pub use rotation::{Action, Answer, Refusal, RefusalKind, Rotation, RotationConfig, Shared};
pub use strategy::Strategy;
