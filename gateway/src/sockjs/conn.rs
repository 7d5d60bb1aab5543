//! The application-facing session handle ([`SockJsConn`], [`SockJsSender`])
//! and the transport-facing side of the same channels.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The session is closed: the client went away, it timed out, or
/// [`SockJsConn::close`] was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("SockJS session closed")]
pub struct Closed;

/// An item on a session's outbound queue.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// One application message.
    Message(String),
    /// The application asked to close; the code and reason are in
    /// [`ConnShared::close_reason`]. Everything queued before it is sent
    /// first.
    Close,
}

/// Close used when the application drops its handle without closing.
pub(crate) const DROPPED_CLOSE: (u16, &str) = (1000, "Normal closure");

pub(crate) struct ConnShared {
    id: String,
    transport: &'static str,
    peer: Option<SocketAddr>,
    outbound: mpsc::Sender<Outbound>,
    /// Set by `close()`: no more sends, `recv()` returns `None`.
    closing: AtomicBool,
    close_reason: Mutex<Option<(u16, String)>>,
    /// Cancelled when the session has ended, whatever the cause.
    ended: CancellationToken,
    /// How long `close()` may wait for room on a full outbound queue before
    /// ending the session without a close frame.
    close_timeout: Duration,
}

impl ConnShared {
    /// The code and reason given to `close()`, if any.
    pub(crate) fn close_reason(&self) -> (u16, String) {
        let guard = self.close_reason.lock().unwrap_or_else(|e| e.into_inner());
        match &*guard {
            Some((code, reason)) => (*code, reason.clone()),
            None => (DROPPED_CLOSE.0, DROPPED_CLOSE.1.to_owned()),
        }
    }

    fn is_closed(&self) -> bool {
        self.closing.load(Ordering::Acquire) || self.ended.is_cancelled()
    }

    /// Cancelled when the session has ended.
    pub(crate) fn ended(&self) -> &CancellationToken {
        &self.ended
    }

    /// Whether the application called `close()`.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// The server-generated session id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

/// The transport's end of a session's channels.
pub(crate) struct TransportSide {
    pub(crate) shared: Arc<ConnShared>,
    pub(crate) inbound: mpsc::Sender<String>,
    pub(crate) outbound: mpsc::Receiver<Outbound>,
}

/// Hands one inbound message to the application, waiting for room in the
/// inbound queue. Returns `false` if the session ended or the application
/// dropped its handle.
pub(crate) async fn deliver(
    inbound: &mpsc::Sender<String>,
    ended: &CancellationToken,
    msg: String,
) -> bool {
    tokio::select! {
        biased;
        () = ended.cancelled() => false,
        res = inbound.send(msg) => res.is_ok(),
    }
}

/// Creates the two ends of a new session.
pub(crate) fn new_session(
    transport: &'static str,
    peer: Option<SocketAddr>,
    inbound_capacity: usize,
    outbound_capacity: usize,
    close_timeout: Duration,
) -> (SockJsConn, TransportSide) {
    let (in_tx, in_rx) = mpsc::channel(inbound_capacity.max(1));
    let (out_tx, out_rx) = mpsc::channel(outbound_capacity.max(1));
    let shared = Arc::new(ConnShared {
        id: new_id(),
        transport,
        peer,
        outbound: out_tx,
        closing: AtomicBool::new(false),
        close_reason: Mutex::new(None),
        ended: CancellationToken::new(),
        close_timeout,
    });
    let conn = SockJsConn {
        sender: SockJsSender {
            shared: shared.clone(),
        },
        inbound: in_rx,
    };
    let transport = TransportSide {
        shared,
        inbound: in_tx,
        outbound: out_rx,
    };
    (conn, transport)
}

/// A random, unguessable 128-bit id in hex. `rand`'s thread RNG is a CSPRNG.
pub(crate) fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let mut out = String::with_capacity(32);
    for b in bytes {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// One SockJS session, whatever the transport. Handed to the application
/// callback once per session.
pub struct SockJsConn {
    sender: SockJsSender,
    inbound: mpsc::Receiver<String>,
}

impl fmt::Debug for SockJsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SockJsConn")
            .field("id", &self.id())
            .field("transport", &self.transport())
            .field("peer", &self.peer())
            .finish_non_exhaustive()
    }
}

impl SockJsConn {
    /// `"websocket"`, `"xhr_streaming"`, `"xhr"`, `"eventsource"` or
    /// `"raw-websocket"`.
    pub fn transport(&self) -> &'static str {
        self.sender.transport()
    }

    /// The TCP peer address (the proxy's, behind a reverse proxy).
    pub fn peer(&self) -> Option<SocketAddr> {
        self.sender.peer()
    }

    /// A server-generated random id (32 hex digits); never the session id
    /// the client chose in the URL.
    pub fn id(&self) -> &str {
        self.sender.id()
    }

    /// Next message from the client (each string of an inbound JSON array,
    /// in order). `None` when the session is closed (client went away, timed
    /// out, or `close()` called). Messages that arrived before the client
    /// went away are still returned first; after `close()` nothing is.
    pub async fn recv(&mut self) -> Option<String> {
        let shared = &self.sender.shared;
        if shared.is_closing() {
            return None;
        }
        tokio::select! {
            biased;
            msg = self.inbound.recv() => {
                if shared.is_closing() { None } else { msg }
            }
            () = shared.ended.cancelled() => None,
        }
    }

    /// Queues a message for the client (framed as `a["..."]`; several queued
    /// messages may be batched into one array). Waits while the outbound
    /// queue is full. `Err` if the session is closed.
    pub async fn send(&self, msg: String) -> Result<(), Closed> {
        self.sender.send(msg).await
    }

    /// Closes with `c[code,"reason"]` (sent after everything already
    /// queued), then ends the session.
    pub async fn close(&self, code: u16, reason: &str) {
        self.sender.close(code, reason).await;
    }

    /// Whether the session is closed or closing.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Resolves when the session has ended.
    pub async fn closed(&self) {
        self.sender.closed().await;
    }

    /// A cloneable handle for sending from other tasks.
    pub fn sender(&self) -> SockJsSender {
        self.sender.clone()
    }
}

/// A cloneable sending handle to a session (see [`SockJsConn::sender`]).
#[derive(Clone)]
pub struct SockJsSender {
    shared: Arc<ConnShared>,
}

impl fmt::Debug for SockJsSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SockJsSender")
            .field("id", &self.id())
            .field("transport", &self.transport())
            .finish_non_exhaustive()
    }
}

impl SockJsSender {
    /// See [`SockJsConn::transport`].
    pub fn transport(&self) -> &'static str {
        self.shared.transport
    }

    /// See [`SockJsConn::peer`].
    pub fn peer(&self) -> Option<SocketAddr> {
        self.shared.peer
    }

    /// See [`SockJsConn::id`].
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// See [`SockJsConn::send`].
    pub async fn send(&self, msg: String) -> Result<(), Closed> {
        let shared = &self.shared;
        if shared.is_closed() {
            return Err(Closed);
        }
        tokio::select! {
            biased;
            () = shared.ended.cancelled() => Err(Closed),
            res = shared.outbound.send(Outbound::Message(msg)) => res.map_err(|_| Closed),
        }
    }

    /// See [`SockJsConn::close`]. Idempotent. If the outbound queue stays
    /// full for the close timeout, the session ends without a close frame.
    pub async fn close(&self, code: u16, reason: &str) {
        let shared = &self.shared;
        if shared.closing.swap(true, Ordering::AcqRel) || shared.ended.is_cancelled() {
            return;
        }
        {
            let mut guard = shared
                .close_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *guard = Some((code, reason.to_owned()));
        }
        let queued = tokio::select! {
            biased;
            () = shared.ended.cancelled() => true,
            res = tokio::time::timeout(shared.close_timeout, shared.outbound.send(Outbound::Close)) => {
                matches!(res, Ok(Ok(())))
            }
        };
        if !queued {
            shared.ended.cancel();
        }
    }

    /// See [`SockJsConn::is_closed`].
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// See [`SockJsConn::closed`].
    pub async fn closed(&self) {
        self.shared.ended.cancelled().await;
    }
}
