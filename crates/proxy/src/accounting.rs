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

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Uri;
use marathon_core::AccountId;
use marathon_core::accounting::{
    Framing, TokenLedger, TokenUsage, UsageScanner, path_model, request_model,
};

use crate::access::ClientKey;

/// One answer's usage on its way through.
pub(crate) struct Tally {
    scanner: UsageScanner,
    /// `None` once counted.
    to: Option<Counted>,
}

/// Whom an answer's tokens count against, and where its model is when the
/// answer names none.
struct Counted {
    /// The provider's ledger.
    ledger: Arc<Mutex<TokenLedger>>,
    account: AccountId,
    key: Option<ClientKey>,
    /// The upstream URI (Gemini names the model in the path).
    uri: Uri,
    /// The request body, when it was buffered (its `model` field), kept
    /// only until the answer names its model — at its start in every
    /// provider's answers — so a big prompt is not held for a whole stream;
    /// never for a path that names the model (Gemini).
    request: Option<Bytes>,
}

impl Tally {
    pub(crate) fn new(
        ledger: Arc<Mutex<TokenLedger>>,
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
        let request = request.filter(|_| path_model(uri.path()).is_none());
        Tally {
            scanner: UsageScanner::new(framing),
            to: Some(Counted {
                ledger,
                account,
                key,
                uri,
                request,
            }),
        }
    }

    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        if let Some(to) = &mut self.to {
            self.scanner.feed(chunk);
            if to.request.is_some() && self.scanner.has_model() {
                to.request = None;
            }
        }
    }

    /// The body ended (or was dropped): counts what the answer reported,
    /// once.
    pub(crate) fn finish(&mut self) {
        if let Some(to) = self.to.take() {
            to.count(self.scanner.usage(), self.scanner.model().as_deref());
        }
    }

    /// A WebSocket message ended: counts what it reported (each
    /// `response.completed` is one answer of many on the socket).
    pub(crate) fn end_message(&mut self) {
        self.scanner.end_document();
        if let Some(to) = &self.to {
            to.count(self.scanner.usage(), self.scanner.model().as_deref());
        }
        self.scanner.clear_answer();
    }
}

impl Counted {
    fn count(&self, usage: Option<TokenUsage>, model: Option<&str>) {
        let Some(usage) = usage.filter(|u| !u.is_zero()) else {
            return;
        };
        let from_request;
        let model = match model {
            Some(m) => Some(m),
            None => match path_model(self.uri.path()) {
                Some(m) => Some(m),
                None => {
                    from_request = self.request.as_deref().and_then(request_model);
                    from_request.as_deref()
                }
            },
        };
        self.ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(&self.account, model, &usage);
        if let Some(key) = &self.key {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use marathon_core::status::TokenTotals;

    /// A tally on a ledger of its own for account `a1`, and a reader of
    /// that account's totals.
    pub(crate) fn tally() -> (Tally, impl Fn() -> TokenTotals) {
        let ledger = Arc::new(Mutex::new(TokenLedger::new()));
        let id = AccountId("a1".into());
        let t = Tally::new(
            ledger.clone(),
            id.clone(),
            None,
            false,
            Uri::from_static("/"),
            None,
        );
        let read = move || {
            let l = ledger.lock().unwrap();
            l.account(&id).map(|a| a.total.clone()).unwrap_or_default()
        };
        (t, read)
    }

    /// Guards counting twice or not at all: an answer is counted once,
    /// at its end or when dropped half-way, whichever comes first.
    #[test]
    fn counted_once_at_the_end_or_on_drop() {
        let body = br#"{"model":"m","usage":{"input_tokens":3,"output_tokens":4}}"#;
        let (mut t, read) = tally();
        t.feed(body);
        assert_eq!(read().input, 0, "not before the end");
        t.finish();
        t.finish();
        drop(t);
        assert_eq!((read().input, read().output), (3, 4));
        let (mut t, read) = tally();
        t.feed(b"event: message_start\n");
        drop(t);
        assert_eq!(
            read(),
            TokenTotals::default(),
            "nothing reported, nothing counted"
        );
    }

    /// Guards a big prompt held for a whole stream: the request body is let
    /// go as soon as the answer names its model, and never kept for a path
    /// that names it.
    #[test]
    fn the_request_body_is_let_go_once_the_answer_names_its_model() {
        let ledger = Arc::new(Mutex::new(TokenLedger::new()));
        let id = AccountId("a1".into());
        let request = Bytes::from(vec![b' '; 1 << 20]);
        let mut t = Tally::new(
            ledger.clone(),
            id.clone(),
            None,
            true,
            Uri::from_static("/v1/messages"),
            Some(request.clone()),
        );
        t.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",");
        assert!(t.to.as_ref().unwrap().request.is_none());
        let t = Tally::new(
            ledger,
            id,
            None,
            true,
            Uri::from_static("/v1beta/models/g:streamGenerateContent"),
            Some(request),
        );
        assert!(t.to.as_ref().unwrap().request.is_none());
    }

    /// The model comes from the request when the answer names none: the
    /// Gemini path first, then the request body's `model`.
    #[test]
    fn the_model_falls_back_to_the_request() {
        let ledger = Arc::new(Mutex::new(TokenLedger::new()));
        let id = AccountId("a1".into());
        let usage = br#"{"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":1}}"#;
        for (uri, request, want) in [
            (
                "/v1beta/models/gemini-2.5-pro:generateContent",
                None,
                "gemini-2.5-pro",
            ),
            (
                "/v1/messages",
                Some(Bytes::from_static(br#"{"model":"claude-x"}"#)),
                "claude-x",
            ),
            ("/v1/messages", None, "unknown"),
        ] {
            let mut t = Tally::new(
                ledger.clone(),
                id.clone(),
                None,
                false,
                Uri::from_static(uri),
                request,
            );
            t.feed(usage);
            t.finish();
            let l = ledger.lock().unwrap();
            assert!(
                l.account(&id)
                    .unwrap()
                    .models
                    .iter()
                    .any(|(m, _)| m == want),
                "{want}"
            );
        }
    }
}
