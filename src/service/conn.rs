//! What one client of the control socket or the metrics port may hold.
//!
//! Both listeners run on the service thread's single-threaded runtime, far
//! from the real-time thread, but a careless or hostile client could still
//! starve them (idle connections held forever, a header trickled one byte a
//! minute, megabytes of header) and make the daemon unsteerable. So every
//! connection is bounded in count, in time and in bytes, and a client that
//! leaves early only ends its own connection: the daemon ignores SIGPIPE
//! (see `main`), so a write to a departed peer is an error on that
//! connection, never a signal to the process.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

/// The bounds (documented in `docs/deploy.md`, "Client limits").
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// Connections open at once per listener. One more closes the oldest
    /// idle connection, or itself if all are busy (the kernel's backlog
    /// never fills with waiting clients).
    pub max_connections: usize,
    /// A request's header must arrive completely within this time after
    /// the connection opens or after the previous response (keep-alive).
    pub header_timeout: Duration,
    /// A connection is closed this long after it was accepted, whatever it
    /// is doing (a slow body, a reader that does not read).
    pub max_lifetime: Duration,
    /// Bytes of request header hyper buffers before it answers 431.
    pub max_header_bytes: usize,
}

impl ClientLimits {
    pub const DEFAULT: ClientLimits = ClientLimits {
        max_connections: 128,
        header_timeout: Duration::from_secs(2),
        max_lifetime: Duration::from_secs(10),
        max_header_bytes: 16 * 1024,
    };
}

/// The daemon's responses (both listeners answer complete, small bodies).
pub type Resp = Response<Full<Bytes>>;
/// One request handler, shared by every connection of a listener.
pub type Handler =
    Arc<dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Resp> + Send>> + Send + Sync>;

/// A listener the accept loop can take connections from.
pub trait Accept {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        tokio::net::TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

/// One open connection, as the accept loop sees it.
struct Slot {
    id: u64,
    /// A request is being handled (set by the service, cleared when its
    /// response is ready).
    busy: Arc<AtomicBool>,
    /// Dropping it closes the connection.
    _close: oneshot::Sender<()>,
}

/// Accept connections until the task is aborted, each within `limits`.
///
/// At the connection limit, a new client is not turned away while an old
/// one sits idle: the oldest connection with no request in progress is
/// closed to make room, so hundreds of idle or half-open connections
/// cannot lock an operator out. Only when every slot is busy is the new
/// connection closed at once.
pub async fn serve<L: Accept>(
    listener: L,
    what: &'static str,
    limits: ClientLimits,
    handler: Handler,
) {
    let mut open: VecDeque<Slot> = VecDeque::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u64>();
    let mut next_id: u64 = 0;
    let (mut evicted, mut refused): (u64, u64) = (0, 0);
    loop {
        let io = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("{what} accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while let Ok(id) = done_rx.try_recv() {
            open.retain(|s| s.id != id);
        }
        if open.len() >= limits.max_connections {
            match open.iter().position(|s| !s.busy.load(Ordering::Acquire)) {
                Some(k) => {
                    open.remove(k);
                    evicted += 1;
                    if evicted.is_power_of_two() {
                        tracing::warn!(
                            "{what}: {} connections open (the limit); closed {evicted} idle one(s) so far to admit new clients",
                            limits.max_connections
                        );
                    }
                }
                None => {
                    refused += 1;
                    if refused.is_power_of_two() {
                        tracing::warn!(
                            "{what}: {} connections busy (the limit); closed {refused} new one(s) so far at once",
                            limits.max_connections
                        );
                    }
                    drop(io);
                    continue;
                }
            }
        }
        let id = next_id;
        next_id += 1;
        let busy = Arc::new(AtomicBool::new(false));
        let (close_tx, close_rx) = oneshot::channel::<()>();
        open.push_back(Slot {
            id,
            busy: busy.clone(),
            _close: close_tx,
        });
        let handler = handler.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let h = handler.clone();
                let busy = busy.clone();
                async move {
                    busy.store(true, Ordering::Release);
                    let resp = h(req).await;
                    busy.store(false, Ordering::Release);
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192))
                .serve_connection(TokioIo::new(io), svc);
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!("{what} connection: {e}");
                    }
                }
                _ = tokio::time::sleep(limits.max_lifetime) => {
                    tracing::debug!("{what} connection: closed at its time limit");
                }
                _ = close_rx => {
                    tracing::debug!("{what} connection: closed to admit a new client");
                }
            }
            let _ = done.send(id);
        });
    }
}
