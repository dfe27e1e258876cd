//! The body the program gets: what was read ahead (an error body, a
//! stream's first event), then the rest as it arrives, optionally watched
//! for an error event inside a stream and counted (token accounting).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use marathon_core::accounting::Tally;
use marathon_core::sse::ErrorScanner;

/// Called once with the data of an error event seen inside a stream.
pub(crate) type OnStreamError = Box<dyn FnOnce(&[u8]) + Send + Sync>;

/// Watches an answer while passing every chunk through untouched: a stream
/// for an error event, a success for the tokens it reports.
pub(crate) struct StreamWatch {
    pub(crate) scanner: ErrorScanner,
    pub(crate) on_error: Option<OnStreamError>,
    pub(crate) tally: Option<Tally<RequestBody>>,
}

/// The request's body, kept by a tally for its `model` until the answer
/// names one.
pub(crate) struct RequestBody(pub(crate) reqwest::Body);

impl AsRef<[u8]> for RequestBody {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes().unwrap_or_default()
    }
}

impl StreamWatch {
    fn observe(&mut self, chunk: &[u8]) {
        if let Some(t) = &mut self.tally {
            t.feed(chunk);
        }
        if self.on_error.is_none() {
            return;
        }
        if let Some(data) = self.scanner.feed(chunk)
            && let Some(cb) = self.on_error.take()
        {
            cb(&data);
        }
    }
}

/// Read-ahead chunks, then the upstream body.
pub(crate) struct PassBody {
    pub(crate) prefix: VecDeque<Bytes>,
    /// `None`: the whole body is in `prefix`.
    pub(crate) rest: Option<reqwest::Body>,
    pub(crate) watch: Option<StreamWatch>,
}

impl PassBody {
    /// The body ended: its tokens are counted now, before the program sees
    /// the end (a dropped body counts at its drop).
    fn end(&mut self) {
        if let Some(t) = self.watch.as_mut().and_then(|w| w.tally.as_mut()) {
            t.finish();
        }
    }
}

impl Body for PassBody {
    type Data = Bytes;
    type Error = reqwest::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, reqwest::Error>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(rest) = this.rest.as_mut() else {
            this.end();
            return Poll::Ready(None);
        };
        let polled = Pin::new(rest).poll_frame(cx);
        match (&polled, this.watch.as_mut()) {
            (Poll::Ready(Some(Ok(frame))), Some(w)) => {
                if let Some(data) = frame.data_ref() {
                    w.observe(data);
                }
            }
            (Poll::Ready(None), _) => this.end(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let pre: u64 = self.prefix.iter().map(|b| b.len() as u64).sum();
        let Some(rest) = &self.rest else {
            return SizeHint::with_exact(pre);
        };
        let h = rest.size_hint();
        let mut out = SizeHint::new();
        out.set_lower(h.lower() + pre);
        if let Some(u) = h.upper() {
            out.set_upper(u + pre);
        }
        out
    }
}
