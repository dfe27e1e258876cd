//! Client connections: how many, how long they may idle or dawdle over a
//! request head, what an idle one keeps in memory, and graceful shutdown —
//! all without a timer or a lock per request.
//!
//! Each connection has a small shared record ([`Conn`]) saying what it is
//! doing (reading a request head, serving a request, idle) since which tick
//! of a coarse clock. One sweeper task per server advances the clock (a few
//! times per timeout, at most once a second) and, for each connection that
//! is not serving a request, closes it when its head or idle time has run
//! out, or asks it to *park*. A request in flight is never timed out: an LLM
//! stream may run for an hour. The per-request cost is a few relaxed atomic
//! stores.
//!
//! Parking: an idle connection gives its hyper state back (the 8 KiB read
//! buffer, the write buffer, the dispatcher) and keeps only the socket,
//! waiting for it to become readable; hyper is set up again when the next
//! request arrives. 10,000 idle keep-alive connections then cost about what
//! their sockets cost, not 14 KiB each.
//!
//! The cap: past `max_connections`, the oldest connections with nothing in
//! flight are closed to make room (as nginx reuses keep-alive connections),
//! so a new client — a health check — is always served; only when every
//! connection is busy is a newcomer turned away with a 503.
//!
//! Shutdown: the flag is set and every connection woken; each finishes its
//! request in flight (hyper's graceful shutdown) and closes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::ProxyBody;
use crate::state::FastMap;

/// Limits on client connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request head must arrive within this long of its first byte (or of
    /// the connection being opened).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// Most client connections at once; `None`: from the descriptor limit.
    pub max_connections: Option<usize>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
        }
    }
}

/// The connection cap `max_connections = "auto"` means for a descriptor
/// limit: each client connection may need an upstream one, and the process
/// needs a few more (listener, store, log, the event loop).
pub fn auto_max_connections(nofile: u64) -> usize {
    let n = usize::try_from(nofile).unwrap_or(usize::MAX);
    (n.saturating_sub(64) / 2).max(16)
}

/// The process's soft descriptor limit, raised to the hard limit first. A
/// long-running proxy should not stop accepting at a distribution's default
/// of 1,024 when the system allows more. Returns the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if limit.maximum != limit.current {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum.unwrap_or(u64::MAX);
        }
    }
    current
}

/// The soft descriptor limit as it is.
pub(crate) fn nofile_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

// A connection's phase, in the low bits of its state word; the tick it
// started is in the rest. A word is never 0 (ticks start at 1), so 0 can
// mean "no verdict".
const HEAD: u64 = 0;
const ACTIVE: u64 = 1;
const IDLE: u64 = 2;
const PHASE_BITS: u64 = 2;
const PHASE_MASK: u64 = (1 << PHASE_BITS) - 1;

/// Past this many open connections, a connection parks as soon as its
/// response is out instead of after a sweep: with thousands of keep-alive
/// clients memory matters more than the few hundred nanoseconds hyper's
/// set-up costs per request. Below it (a busy proxy with few clients) hyper's
/// state stays for the next request.
const PARK_AT_ONCE_ABOVE: usize = 256;

/// Oldest idle connections closed at once when the cap is reached, so a
/// burst of new connections does not scan the table once each.
const EVICT_BATCH: usize = 32;

/// The answer to a connection that arrives while every slot is busy.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 117\r\n\r\n{\"error\":{\"message\":\"marathon: too many connections are busy; try again shortly\",\"type\":\"overloaded\",\"code\":\"busy\"}}\n";

/// Every live connection of one server.
pub(crate) struct Connections {
    inner: Arc<Inner>,
}

struct Inner {
    closing: AtomicBool,
    next_id: AtomicU64,
    /// The coarse clock: sweeper ticks since start (from 1).
    tick: AtomicU64,
    period: Duration,
    header_ticks: u64,
    idle_ticks: u64,
    cap: usize,
    live: Mutex<FastMap<u64, Arc<Conn>>>,
    /// `live.len()`, readable without the lock.
    open: AtomicUsize,
}

/// What one connection is doing, shared by its task, its I/O, its response
/// bodies and the sweeper.
pub(crate) struct Conn {
    inner: Arc<Inner>,
    /// `tick << PHASE_BITS | phase`.
    state: AtomicU64,
    /// Close when `state` still equals this word (0: no verdict). Judged on a
    /// snapshot, so a connection that got a request meanwhile survives.
    close_at: AtomicU64,
    /// The sweeper asks an idle connection to give back its buffers.
    park: AtomicBool,
    /// Bytes were written and not yet flushed.
    dirty: AtomicBool,
    /// A request on it asked to switch protocols (WebSocket): hyper must
    /// hand the socket over, and the connection is never parked again.
    upgrade: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Conn {
    fn set(&self, phase: u64) {
        let word = self.inner.tick.load(Relaxed) << PHASE_BITS | phase;
        self.state.store(word, Relaxed);
    }

    fn phase(&self) -> u64 {
        self.state.load(Relaxed) & PHASE_MASK
    }

    /// A request head has been read; no timeout applies until its response ends.
    pub(crate) fn request_started(&self) {
        self.set(ACTIVE);
    }

    /// The request being served may switch protocols (`Upgrade`): called by
    /// the service before it answers, so the connection's task lets hyper
    /// hand the socket over (a `101` on a connection without it fails).
    pub(crate) fn allow_upgrade(&self) {
        self.upgrade.store(true, Relaxed);
    }

    fn wake(&self) {
        if let Some(w) = self
            .waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            w.wake_by_ref();
        }
    }
}

impl Connections {
    pub(crate) fn new(limits: ConnectionLimits) -> Self {
        let shortest = limits.header_read_timeout.min(limits.idle_timeout);
        // A few ticks per timeout, so one fires within a quarter of its length.
        let period = (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let ticks = |d: Duration| (d.as_nanos().div_ceil(period.as_nanos()) as u64).max(1);
        let cap = limits
            .max_connections
            .unwrap_or_else(|| auto_max_connections(nofile_limit()));
        Connections {
            inner: Arc::new(Inner {
                closing: AtomicBool::new(false),
                next_id: AtomicU64::new(0),
                tick: AtomicU64::new(1),
                period,
                header_ticks: ticks(limits.header_read_timeout),
                idle_ticks: ticks(limits.idle_timeout),
                cap: cap.max(1),
                live: Mutex::new(FastMap::default()),
                open: AtomicUsize::new(0),
            }),
        }
    }

    /// The cap in force.
    pub(crate) fn cap(&self) -> usize {
        self.inner.cap
    }

    /// Takes a new connection: registers it (making room past the cap) and
    /// returns its record, or answers 503 and drops it when every connection
    /// is busy.
    pub(crate) fn admit(&self, stream: &TcpStream) -> Option<Admitted> {
        let inner = &self.inner;
        let conn = Arc::new(Conn {
            inner: inner.clone(),
            state: AtomicU64::new(inner.tick.load(Relaxed) << PHASE_BITS | HEAD),
            close_at: AtomicU64::new(0),
            park: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            upgrade: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        let id = inner.next_id.fetch_add(1, Relaxed);
        let count = inner.live.lock().unwrap_or_else(|e| e.into_inner()).len() + 1;
        let over = count.saturating_sub(inner.cap);
        if over > 0 && self.evict(over) < over {
            // Best effort: the socket is new, its buffer empty.
            let _ = stream.try_write(BUSY);
            return None;
        }
        {
            let mut live = inner.live.lock().unwrap_or_else(|e| e.into_inner());
            live.insert(id, conn.clone());
            inner.open.store(live.len(), Relaxed);
        }
        Some(conn.with_id(id))
    }

    /// Closes the oldest connections with nothing in flight until `want`
    /// will be gone (counting ones already told to close); returns how many
    /// will be.
    pub(crate) fn evict(&self, want: usize) -> usize {
        let mut woken = Vec::new();
        let mut gone = 0;
        {
            let live = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
            let mut idle: Vec<(u64, &Arc<Conn>)> = Vec::new();
            for c in live.values() {
                let word = c.state.load(Relaxed);
                if word & PHASE_MASK == ACTIVE {
                    continue;
                }
                if c.close_at.load(Relaxed) == word {
                    gone += 1;
                } else {
                    idle.push((word >> PHASE_BITS, c));
                }
            }
            if gone < want {
                let n = (want - gone).max(EVICT_BATCH).min(idle.len());
                if n < idle.len() {
                    idle.select_nth_unstable_by_key(n, |(since, _)| *since);
                }
                for (_, c) in &idle[..n] {
                    c.close_at.store(c.state.load(Relaxed), Relaxed);
                    woken.push(Arc::clone(c));
                }
                gone += n;
            }
        }
        if !woken.is_empty() {
            tracing::debug!(
                "connection limit ({}) reached: closing the {} oldest idle connections",
                self.inner.cap,
                woken.len()
            );
        }
        woken.iter().for_each(|c| c.wake());
        gone
    }

    /// Advances the coarse clock and enforces the timeouts, until the server stops.
    pub(crate) async fn sweep(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.inner.period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        while !self.inner.closing.load(SeqCst) {
            every.tick().await;
            self.sweep_once();
        }
    }

    fn sweep_once(&self) {
        let inner = &self.inner;
        let now = inner.tick.fetch_add(1, Relaxed) + 1;
        let mut woken = Vec::new();
        {
            let live = inner.live.lock().unwrap_or_else(|e| e.into_inner());
            for c in live.values() {
                let word = c.state.load(Relaxed);
                let age = now.saturating_sub(word >> PHASE_BITS);
                let expired = match word & PHASE_MASK {
                    HEAD => age >= inner.header_ticks,
                    IDLE => age >= inner.idle_ticks,
                    _ => false,
                };
                if expired && c.close_at.load(Relaxed) != word {
                    c.close_at.store(word, Relaxed);
                    woken.push(Arc::clone(c));
                } else if word & PHASE_MASK == IDLE && age >= 1 && !c.park.swap(true, Relaxed) {
                    woken.push(Arc::clone(c));
                }
            }
        }
        woken.iter().for_each(|c| c.wake());
    }

    /// Asks every connection to finish its request in flight and close, and
    /// waits until all have.
    pub(crate) async fn close(&self) {
        self.inner.closing.store(true, SeqCst);
        let conns: Vec<Arc<Conn>> = self
            .inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        conns.iter().for_each(|c| c.wake());
        drop(conns);
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

/// A registered connection and its id in the table.
pub(crate) struct Admitted {
    conn: Arc<Conn>,
    id: u64,
}

impl Conn {
    fn with_id(self: Arc<Self>, id: u64) -> Admitted {
        Admitted { conn: self, id }
    }
}

impl Admitted {
    /// The shared record, for the connection's service.
    pub(crate) fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    /// The connection's task: serves `stream` with `service` until it closes.
    pub(crate) fn serve<S>(
        self,
        stream: TcpStream,
        builder: Arc<http1::Builder>,
        service: S,
    ) -> Driver<S>
    where
        S: HttpService<Incoming, ResBody = Tracked> + Unpin,
    {
        Driver {
            conn: self.conn,
            id: self.id,
            builder,
            // No hyper state until the client sends something: a connection
            // opened ahead of need (browsers pre-connect) costs only its socket.
            stage: Stage::Parked(stream, service),
            registered: false,
            graceful: false,
        }
    }
}

enum Stage<S: HttpService<Incoming>> {
    /// hyper serving the connection. Boxed, so a parked connection's task is small.
    Serving(Box<http1::Connection<ConnIo, S>>),
    /// hyper serving a connection that may switch protocols; never parked.
    Upgradable(Box<http1::UpgradeableConnection<ConnIo, S>>),
    /// No request in flight and no buffers: waiting for the socket to be readable.
    Parked(TcpStream, S),
    /// Between two stages (never seen by a poll).
    Moving,
}

/// One connection's task.
pub(crate) struct Driver<S: HttpService<Incoming>> {
    conn: Arc<Conn>,
    id: u64,
    builder: Arc<http1::Builder>,
    stage: Stage<S>,
    registered: bool,
    graceful: bool,
}

impl<S> Driver<S>
where
    S: HttpService<Incoming, ResBody = Tracked> + Unpin,
{
    /// Hands the socket to hyper: request bytes are there (or `rewind` holds them).
    fn start_hyper(&mut self, stream: TcpStream, service: S, rewind: Option<Bytes>) {
        self.conn.park.store(false, Relaxed);
        // From idle, the head timeout starts now; a new connection's started
        // when it was accepted.
        if self.conn.phase() == IDLE {
            self.conn.set(HEAD);
        }
        let io = ConnIo {
            io: TokioIo::new(stream),
            conn: self.conn.clone(),
            rewind,
        };
        self.stage = Stage::Serving(Box::new(self.builder.serve_connection(io, service)));
    }

    /// Gives hyper's state back if the connection is idle with everything
    /// written; `false` if it is not (it is then left as it was).
    fn try_park(&mut self) -> bool {
        let conn = &self.conn;
        if conn.phase() != IDLE || conn.dirty.load(Relaxed) {
            return false;
        }
        let Stage::Serving(hyper) = std::mem::replace(&mut self.stage, Stage::Moving) else {
            unreachable!("parking only from Serving")
        };
        let parts = hyper.into_parts();
        let stream = parts.io.io.into_inner();
        if parts.read_buf.is_empty() {
            self.stage = Stage::Parked(stream, parts.service);
        } else {
            // A pipelined request already read: serve it at once.
            self.start_hyper(stream, parts.service, Some(parts.read_buf));
        }
        true
    }
}

impl<S> Future for Driver<S>
where
    S: HttpService<Incoming, ResBody = Tracked> + Unpin,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if !this.registered {
            // Before reading the flags: a close or verdict set afterwards finds this waker.
            *this.conn.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            this.registered = true;
        }
        loop {
            if !this.graceful && this.conn.inner.closing.load(SeqCst) {
                this.graceful = true;
                match &mut this.stage {
                    Stage::Serving(hyper) => Pin::new(&mut **hyper).graceful_shutdown(),
                    Stage::Upgradable(hyper) => Pin::new(&mut **hyper).graceful_shutdown(),
                    _ => return Poll::Ready(()),
                }
            }
            let verdict = this.conn.close_at.load(Relaxed);
            if verdict != 0 && verdict == this.conn.state.load(Relaxed) {
                // Timed out or evicted with nothing in flight: just close.
                return Poll::Ready(());
            }
            if matches!(this.stage, Stage::Serving(_)) && this.conn.upgrade.load(Relaxed) {
                let Stage::Serving(hyper) = std::mem::replace(&mut this.stage, Stage::Moving)
                else {
                    unreachable!("matched Serving above")
                };
                this.stage = Stage::Upgradable(Box::new(hyper.with_upgrades()));
            }
            match &mut this.stage {
                Stage::Upgradable(hyper) => {
                    return Pin::new(&mut **hyper).poll(cx).map(|_| ());
                }
                Stage::Serving(hyper) => match Pin::new(&mut **hyper).poll(cx) {
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => {
                        let wanted = this.conn.park.load(Relaxed)
                            || this.conn.inner.open.load(Relaxed) > PARK_AT_ONCE_ABOVE;
                        if this.graceful || !wanted || !this.try_park() {
                            return Poll::Pending;
                        }
                    }
                },
                Stage::Parked(stream, _) => match stream.poll_read_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Ready(Ok(())) => {
                        let Stage::Parked(stream, service) =
                            std::mem::replace(&mut this.stage, Stage::Moving)
                        else {
                            unreachable!("matched Parked above")
                        };
                        this.start_hyper(stream, service, None);
                    }
                },
                Stage::Moving => return Poll::Ready(()),
            }
        }
    }
}

impl<S: HttpService<Incoming>> Drop for Driver<S> {
    fn drop(&mut self) {
        let inner = &self.conn.inner;
        let mut live = inner.live.lock().unwrap_or_else(|e| e.into_inner());
        live.remove(&self.id);
        inner.open.store(live.len(), Relaxed);
    }
}

/// The socket as hyper sees it, telling the connection's record when request
/// bytes arrive and when everything written has been flushed.
pub(crate) struct ConnIo {
    io: TokioIo<TcpStream>,
    conn: Arc<Conn>,
    /// Bytes hyper had read ahead before the connection parked, read first.
    rewind: Option<Bytes>,
}

impl Read for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(mut pre) = self.rewind.take() {
            let n = pre.len().min(buf.remaining());
            buf.put_slice(&pre.split_to(n));
            if !pre.is_empty() {
                self.rewind = Some(pre);
            }
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        // Ready means bytes (or the end): the head timeout starts with the
        // next request's first byte, not when the last response ended.
        if polled.is_ready() && self.conn.phase() == IDLE {
            self.conn.set(HEAD);
        }
        polled
    }
}

impl Write for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.conn.dirty.store(true, Relaxed);
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = polled {
            self.conn.dirty.store(false, Relaxed);
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A response body that marks its connection idle when hyper is done with it
/// (sent to the end, or dropped when the client went away).
pub(crate) struct Tracked {
    body: ProxyBody,
    conn: Arc<Conn>,
}

impl Tracked {
    pub(crate) fn new(body: ProxyBody, conn: Arc<Conn>) -> Self {
        Tracked { body, conn }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.conn.set(IDLE);
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = <ProxyBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
