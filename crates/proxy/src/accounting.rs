//! Token accounting on the proxy's side: a [`Tally`] rides along a
//! successful answer's body, feeds every chunk to core's
//! [`UsageScanner`] (which holds a few KiB, never the body), and at the
//! body's end adds what the answer reported to the provider's ledger (per
//! account and model) and to the request's access key.
//!
//! Per request this costs one scan of the bytes passing anyway and, at the
//! end, one short lock of the provider's ledger; nothing is copied or held
//! back. Counts are since the process started (not persisted): processes
//! sharing a store each count their own answers.

use std::sync::Arc;

use bytes::Bytes;
use http::Uri;
use marathon_core::AccountId;
use marathon_core::accounting::{Framing, UsageScanner, path_model, request_model};

use crate::access::ClientKey;
use crate::state::ProviderRuntime;

/// One answer's usage on its way through.
pub(crate) struct Tally {
    scanner: UsageScanner,
    /// `None` once counted.
    to: Option<Counted>,
}

/// Whom an answer's tokens count against, and where its model is when the
/// answer names none.
struct Counted {
    rt: Arc<ProviderRuntime>,
    account: AccountId,
    key: Option<ClientKey>,
    /// The upstream URI (Gemini names the model in the path).
    uri: Uri,
    /// The request body, when it was buffered (its `model` field).
    request: Option<Bytes>,
}

impl Tally {
    pub(crate) fn new(
        rt: Arc<ProviderRuntime>,
        account: AccountId,
        key: Option<ClientKey>,
        event_stream: bool,
        uri: Uri,
        request: Option<Bytes>,
    ) -> Self {
        let framing = if event_stream {
            Framing::EventStream
        } else {
            Framing::Json
        };
        Tally {
            scanner: UsageScanner::new(framing),
            to: Some(Counted {
                rt,
                account,
                key,
                uri,
                request,
            }),
        }
    }

    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        if self.to.is_some() {
            self.scanner.feed(chunk);
        }
    }

    /// The body ended (or was dropped): counts what the answer reported,
    /// once.
    pub(crate) fn finish(&mut self) {
        let Some(to) = self.to.take() else {
            return;
        };
        let Some(usage) = self.scanner.usage().filter(|u| !u.is_zero()) else {
            return;
        };
        let from_request;
        let model = match self.scanner.model() {
            Some(m) => Some(m),
            None => match path_model(to.uri.path()) {
                Some(m) => Some(m),
                None => {
                    from_request = to.request.as_deref().and_then(request_model);
                    from_request.as_deref()
                }
            },
        };
        to.rt
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(&to.account, model, &usage);
        if let Some(key) = &to.key {
            key.add_usage(&usage);
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        // A body dropped half-way (the client left) still used what it
        // reported so far.
        self.finish();
    }
}
