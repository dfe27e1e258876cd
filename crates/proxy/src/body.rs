//! The one body type the proxy sends both ways.
//!
//! An enum instead of a boxed trait object keeps the hot path free of an
//! allocation and a virtual call per frame. Every variant is `Unpin`, so no
//! pin projection (and no `unsafe`) is needed.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use marathon_core::sse::ErrorScanner;

use crate::upstream::Reuse;

/// Called once with the data of an error event seen inside a streamed response.
pub(crate) type OnStreamError = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Watches a streamed response for in-stream error events while passing every
/// chunk through untouched.
pub(crate) struct StreamWatch {
    scanner: ErrorScanner,
    on_error: Option<OnStreamError>,
}

impl StreamWatch {
    pub(crate) fn new(scanner: ErrorScanner, on_error: OnStreamError) -> Self {
        StreamWatch {
            scanner,
            on_error: Some(on_error),
        }
    }

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

/// A request or response body.
pub(crate) enum ProxyBody {
    /// No body.
    Empty,
    /// A body held in memory (a buffered, replayable request; an error answer).
    Full(Option<Bytes>),
    /// Chunks from a task of ours (the `/_marathon/events` SSE stream).
    Channel(tokio::sync::mpsc::Receiver<Bytes>),
    /// A body streamed from a peer, after the chunks already read from it.
    Stream {
        /// Chunks read ahead (e.g. while peeking the first SSE event), sent first.
        prefix: VecDeque<Bytes>,
        /// The rest, as it arrives.
        inner: Incoming,
        /// Optional in-stream error watcher.
        watch: Option<Box<StreamWatch>>,
        /// The upstream connection, back to its pool at the body's end.
        reuse: Option<Reuse>,
    },
}

impl ProxyBody {
    /// A full body.
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(b.into()))
    }

    /// `reuse`: the upstream connection `inner` arrives on, if it is one.
    pub(crate) fn stream(
        prefix: VecDeque<Bytes>,
        inner: Incoming,
        watch: Option<StreamWatch>,
        mut reuse: Option<Reuse>,
    ) -> Self {
        if inner.is_end_stream() {
            // Everything was read already: the connection is free now (hyper
            // may never poll a body that says it has ended).
            if let Some(r) = reuse.take() {
                r.finish();
            }
        }
        ProxyBody::Stream {
            prefix,
            inner,
            watch: watch.map(Box::new),
            reuse,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Channel(rx) => rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
            ProxyBody::Stream {
                prefix,
                inner,
                watch,
                reuse,
            } => {
                if let Some(chunk) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(w), Some(data)) = (watch.as_mut(), frame.data_ref()) {
                            w.observe(data);
                        }
                        if inner.is_end_stream()
                            && let Some(r) = reuse.take()
                        {
                            r.finish();
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(r) = reuse.take() {
                            r.finish();
                        }
                    }
                    // A broken body's connection is not reused.
                    Poll::Ready(Some(Err(_))) => drop(reuse.take()),
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Channel(_) => false,
            ProxyBody::Stream { prefix, inner, .. } => prefix.is_empty() && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Channel(_) => SizeHint::new(),
            ProxyBody::Stream { prefix, inner, .. } => {
                let pre: u64 = prefix.iter().map(|b| b.len() as u64).sum();
                let h = inner.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + pre);
                if let Some(u) = h.upper() {
                    out.set_upper(u + pre);
                }
                out
            }
        }
    }
}
