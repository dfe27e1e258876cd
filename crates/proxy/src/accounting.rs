//! Token accounting on the proxy's side: core's [`Tally`] rides along a
//! successful answer's body (or a WebSocket's messages), feeds every chunk
//! to its usage scanner (a few KiB, never the body), and at the body's end
//! adds what the answer reported to the provider's ledger (per account and
//! model) and to the request's access key.
//!
//! Per request this costs one scan of the bytes passing anyway and, at the
//! end, one short lock of the provider's ledger; nothing is copied or held
//! back. Counts are since the process started (not persisted): processes
//! sharing a store each count their own answers.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Uri;
use marathon_core::AccountId;
use marathon_core::accounting::{Framing, TokenLedger};

use crate::access::ClientKey;

/// One answer's tally; the request body (the model's fallback) is shared
/// bytes.
pub(crate) type Tally = marathon_core::accounting::Tally<Bytes>;

/// The tally of an answer of `account` to a request for `uri` (its body:
/// `request`, when buffered), counted against the access key `key` too.
pub(crate) fn tally(
    ledger: Arc<Mutex<TokenLedger>>,
    account: AccountId,
    key: Option<ClientKey>,
    event_stream: bool,
    uri: &Uri,
    request: Option<Bytes>,
) -> Tally {
    let framing = if event_stream {
        Framing::EventStream
    } else {
        Framing::Json
    };
    let t = Tally::new(ledger, account, framing, uri.path(), request);
    match key {
        Some(key) => t.also(Box::new(move |usage| key.add_usage(usage))),
        None => t,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use marathon_core::status::TokenTotals;

    /// A tally on a ledger of its own for account `a1`, and a reader of
    /// that account's totals.
    pub(crate) fn tally() -> (Tally, impl Fn() -> TokenTotals) {
        let ledger = Arc::new(Mutex::new(TokenLedger::new()));
        let id = AccountId("a1".into());
        let t = super::tally(
            ledger.clone(),
            id.clone(),
            None,
            false,
            &Uri::from_static("/"),
            None,
        );
        let read = move || {
            let l = ledger.lock().unwrap();
            l.account(&id).map(|a| a.total.clone()).unwrap_or_default()
        };
        (t, read)
    }
}
