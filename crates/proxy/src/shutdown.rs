//! Graceful shutdown of client connections, at no cost per request.
//!
//! hyper-util's `GracefulShutdown` polls a notification future every time a
//! connection is polled (several times per request), which showed up in the
//! proxy's profile. Here a connection registers its task's waker once, and a
//! poll costs one atomic load: on shutdown the flag is set and every
//! registered task is woken, finishes its in-flight request and closes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;

/// Tracks the live connections and closes them on request.
#[derive(Default)]
pub(crate) struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    closing: AtomicBool,
    next_id: AtomicU64,
    /// Every live connection's task waker, by connection id.
    live: Mutex<HashMap<u64, Option<Waker>>>,
}

impl Shutdown {
    /// Wraps a connection so that [`Shutdown::close`] reaches it. The result
    /// must be spawned as a task of its own (its waker is taken once).
    pub(crate) fn watch<C: GracefulConnection>(&self, conn: C) -> Watched<C> {
        let id = self.inner.next_id.fetch_add(1, SeqCst);
        self.inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, None);
        Watched {
            conn: Box::pin(conn),
            id,
            inner: self.inner.clone(),
            registered: false,
            closing: false,
        }
    }

    /// Asks every connection to finish its in-flight request and close, and
    /// waits until all have.
    pub(crate) async fn close(&self) {
        self.inner.closing.store(true, SeqCst);
        let wakers: Vec<Waker> = self
            .inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flatten()
            .cloned()
            .collect();
        wakers.into_iter().for_each(Waker::wake);
        // Rare, and bounded by the caller's grace period: polling is enough.
        while !self
            .inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A connection that [`Shutdown::close`] can close.
pub(crate) struct Watched<C> {
    conn: Pin<Box<C>>,
    id: u64,
    inner: Arc<Inner>,
    registered: bool,
    closing: bool,
}

impl<C: GracefulConnection> Future for Watched<C> {
    type Output = Result<(), C::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if !this.registered {
            // Before reading the flag: a close that sets it afterwards finds
            // this waker.
            if let Some(slot) = this
                .inner
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&this.id)
            {
                *slot = Some(cx.waker().clone());
            }
            this.registered = true;
        }
        if !this.closing && this.inner.closing.load(SeqCst) {
            this.closing = true;
            this.conn.as_mut().graceful_shutdown();
        }
        this.conn.as_mut().poll(cx)
    }
}

impl<C> Drop for Watched<C> {
    fn drop(&mut self) {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}
