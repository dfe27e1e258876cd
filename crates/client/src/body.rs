//! The body the program gets: what was read ahead (an error body, a
//! stream's first event), then the rest as it arrives, optionally watched
//! for an error event inside a stream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use marathon_core::sse::ErrorScanner;

/// Called once with the data of an error event seen inside a stream.
pub(crate) type OnStreamError = Box<dyn FnOnce(&[u8]) + Send + Sync>;

/// Watches a streamed answer for an error event while passing every chunk
/// through untouched.
pub(crate) struct StreamWatch {
    pub(crate) scanner: ErrorScanner,
    pub(crate) on_error: Option<OnStreamError>,
}

impl StreamWatch {
    fn observe(&mut self, chunk: &[u8]) {
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
            return Poll::Ready(None);
        };
        let polled = Pin::new(rest).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(w)) = (&polled, this.watch.as_mut())
            && let Some(data) = frame.data_ref()
        {
            w.observe(data);
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
