//! More than one event loop: `serve --workers N`.
//!
//! Each worker is a single-threaded tokio runtime on its own OS thread with
//! its own listener on the same address (`SO_REUSEPORT`: the kernel spreads
//! new connections across the listeners), like nginx's worker processes.
//! They share everything else through one `AppState` (pools, credentials,
//! upstream connections, the connection cap): a connection is served from
//! start to end by the worker that accepted it, with no cross-thread
//! wake-ups on the hot path. The caller's runtime is worker 0.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};

use crate::ProxyError;
use crate::connections::Connections;
use crate::state::AppState;

/// Binds `addr`, sharing the port with the other workers' listeners when
/// `shared` (every listener of the group must set it, the first included).
pub(crate) fn bind(addr: SocketAddr, shared: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std's listener does: a restarted proxy can bind at once.
    socket.set_reuseaddr(true)?;
    if shared {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Starts `count` more workers, each accepting on its own listener bound to
/// `addr` (the port worker 0 got). Returns once every one is listening,
/// with their threads, which end after `shutdown` and the drain.
pub(crate) async fn spawn(
    count: usize,
    addr: SocketAddr,
    state: &Arc<AppState>,
    conns: &Arc<Connections>,
    shutdown: &watch::Receiver<bool>,
) -> Result<Vec<std::thread::JoinHandle<()>>, ProxyError> {
    let mut threads = Vec::with_capacity(count);
    for i in 1..=count {
        let (bound_tx, bound_rx) = oneshot::channel();
        let (state, conns, shutdown) = (state.clone(), conns.clone(), shutdown.clone());
        let thread = std::thread::Builder::new()
            .name(format!("marathon-worker-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match bind(addr, true) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = bound_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = bound_tx.send(Ok(()));
                    crate::server::accept_loop(listener, state, conns, shutdown).await;
                });
            })
            .map_err(|e| ProxyError::Bind(addr, e))?;
        match bound_rx.await {
            Ok(Ok(())) => threads.push(thread),
            Ok(Err(e)) => return Err(ProxyError::Bind(addr, e)),
            Err(_) => {
                return Err(ProxyError::Bind(
                    addr,
                    std::io::Error::other("a worker thread ended before listening"),
                ));
            }
        }
    }
    Ok(threads)
}

/// The number of workers `auto` means: one per core this process may use.
pub fn auto_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
