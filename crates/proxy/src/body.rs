//! The one body type the proxy sends both ways.
//!
//! An enum instead of a boxed trait object keeps the hot path free of an
//! allocation and a virtual call per frame. Every variant is `Unpin`, so no
//! pin projection (and no `unsafe`) is needed.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use marathon_core::secret::Scrubber;
use marathon_core::sse::ErrorScanner;

use crate::accounting::Tally;
use crate::scrub::{Masker, mask_bytes};
use crate::upstream::Reuse;

/// Called once with the data of an error event seen inside a streamed response.
pub(crate) type OnStreamError = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Watches a response passing through, every chunk untouched: a stream
/// for in-stream error events, a success for the tokens it reports.
pub(crate) struct StreamWatch {
    scanner: ErrorScanner,
    on_error: Option<OnStreamError>,
    tally: Option<Tally>,
}

impl StreamWatch {
    /// `errors`: an SSE answer's error scanner and what to do on an error
    /// event; `tally`: a success's token accounting.
    pub(crate) fn new(errors: Option<(ErrorScanner, OnStreamError)>, tally: Option<Tally>) -> Self {
        let (scanner, on_error) = match errors {
            Some((s, cb)) => (s, Some(cb)),
            None => (ErrorScanner::new(), None),
        };
        StreamWatch {
            scanner,
            on_error,
            tally,
        }
    }

    pub(crate) fn observe(&mut self, chunk: &[u8]) {
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

    /// The body has ended: the tokens are counted now, before its last
    /// bytes reach the client.
    pub(crate) fn end(&mut self) {
        if let Some(t) = &mut self.tally {
            t.finish();
        }
    }
}

/// A request or response body.
pub(crate) enum ProxyBody {
    /// No body.
    Empty,
    /// A body held in memory (a buffered, replayable request; an error answer).
    Full(Option<Bytes>),
    /// Chunks from a task of ours (the `/_marathon/events` SSE stream), each
    /// a whole event; masked when a scrubber is set.
    Channel(tokio::sync::mpsc::Receiver<Bytes>, Option<Arc<Scrubber>>),
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
        /// Masks known secrets, for a body going to a client.
        mask: Option<Masker>,
        /// A capped account's concurrency slot, ended when the body is dropped.
        hold: Option<Box<crate::slots::SlotHold>>,
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
        mut watch: Option<StreamWatch>,
        mut reuse: Option<Reuse>,
    ) -> Self {
        if inner.is_end_stream() {
            // Everything was read already: the connection is free now (hyper
            // may never poll a body that says it has ended).
            if let Some(r) = reuse.take() {
                r.finish();
            }
            if let Some(w) = &mut watch {
                w.end();
            }
        }
        ProxyBody::Stream {
            prefix,
            inner,
            watch: watch.map(Box::new),
            reuse,
            mask: None,
            hold: None,
        }
    }

    /// A streamed body that holds a capped account's slot until it is
    /// dropped; other bodies end the slot at once (they are in memory).
    pub(crate) fn holding(mut self, slot: crate::slots::SlotHold) -> Self {
        if let ProxyBody::Stream { hold, .. } = &mut self {
            *hold = Some(Box::new(slot));
        }
        self
    }

    /// This body with every known secret masked ([`crate::scrub`]), for a
    /// client.
    pub(crate) fn masked(self, secrets: Arc<Scrubber>) -> Self {
        match self {
            ProxyBody::Empty => ProxyBody::Empty,
            ProxyBody::Full(b) => ProxyBody::Full(b.map(|b| mask_bytes(b, &secrets))),
            ProxyBody::Channel(rx, _) => ProxyBody::Channel(rx, Some(secrets)),
            ProxyBody::Stream {
                prefix,
                inner,
                watch,
                reuse,
                mask: _,
                hold,
            } => ProxyBody::Stream {
                prefix,
                inner,
                watch,
                reuse,
                mask: Some(Masker::new(secrets)),
                hold,
            },
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
            ProxyBody::Channel(rx, secrets) => rx.poll_recv(cx).map(|c| {
                c.map(|b| match secrets {
                    Some(s) => Ok(Frame::data(mask_bytes(b, s))),
                    None => Ok(Frame::data(b)),
                })
            }),
            ProxyBody::Stream {
                prefix,
                inner,
                watch,
                reuse,
                mask: Some(mask),
                ..
            } => loop {
                // Everything goes through the masker; it may hold bytes back
                // (then read on) and has its own end to flush.
                if let Some(chunk) = prefix.pop_front() {
                    let last = prefix.is_empty() && inner.is_end_stream();
                    if let Some(out) = mask.frame(Frame::data(chunk), last) {
                        return Poll::Ready(Some(Ok(out)));
                    }
                    continue;
                }
                if inner.is_end_stream() {
                    return Poll::Ready(mask.finish().map(Ok));
                }
                match ready!(poll_peer(inner, watch, reuse, cx)) {
                    Some(Ok(frame)) => {
                        if let Some(out) = mask.frame(frame, inner.is_end_stream()) {
                            return Poll::Ready(Some(Ok(out)));
                        }
                    }
                    Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                    None => return Poll::Ready(mask.finish().map(Ok)),
                }
            },
            ProxyBody::Stream {
                prefix,
                inner,
                watch,
                reuse,
                mask: None,
                ..
            } => {
                if let Some(chunk) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                poll_peer(inner, watch, reuse, cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Channel(..) => false,
            ProxyBody::Stream {
                prefix,
                inner,
                mask,
                ..
            } => {
                prefix.is_empty()
                    && inner.is_end_stream()
                    && mask.as_ref().is_none_or(Masker::is_drained)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Channel(..) => SizeHint::new(),
            ProxyBody::Stream {
                prefix,
                inner,
                mask,
                ..
            } => {
                // Masking keeps lengths; held-back bytes are still to come.
                let held = mask.as_ref().map_or(0, |m| m.held() as u64);
                let pre: u64 = prefix.iter().map(|b| b.len() as u64).sum::<u64>() + held;
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

/// Polls the peer's body: watches its data for in-stream errors and hands its
/// connection back at the end.
fn poll_peer(
    inner: &mut Incoming,
    watch: &mut Option<Box<StreamWatch>>,
    reuse: &mut Option<Reuse>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
    let polled = Pin::new(&mut *inner).poll_frame(cx);
    match &polled {
        Poll::Ready(Some(Ok(frame))) => {
            if let (Some(w), Some(data)) = (watch.as_mut(), frame.data_ref()) {
                w.observe(data);
            }
            if inner.is_end_stream() {
                if let Some(r) = reuse.take() {
                    r.finish();
                }
                if let Some(w) = watch.as_mut() {
                    w.end();
                }
            }
        }
        Poll::Ready(None) => {
            if let Some(r) = reuse.take() {
                r.finish();
            }
            if let Some(w) = watch.as_mut() {
                w.end();
            }
        }
        // A broken body's connection is not reused (its tokens so far are
        // counted when the watch is dropped).
        Poll::Ready(Some(Err(_))) => drop(reuse.take()),
        Poll::Pending => {}
    }
    polled
}
