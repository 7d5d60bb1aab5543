//! HTTP transports: the session table, receiving requests (`xhr`,
//! `xhr_streaming`, `eventsource`), `xhr_send` and the per-session reaper.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::sync::{Notify, OwnedMutexGuard, mpsc};
use tokio::time::Instant;
use warp::Reply;
use warp::http::StatusCode;
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::reply::Response;

use super::Server;
use super::conn::{self, ConnShared, Outbound};
use super::frame::{self, DecodeError};
use super::metrics::SessionPermit;
use super::service::{self, CT_EVENT_STREAM, CT_JS, CT_TEXT, Cors};

/// Soft cap on one `a[...]` frame; more queued messages wait for the next.
pub(crate) const BATCH_BYTES: usize = 32 * 1024;

/// Which receiving transport a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Receiver {
    Polling,
    XhrStreaming,
    EventSource,
}

impl Receiver {
    fn name(self) -> &'static str {
        match self {
            Receiver::Polling => "xhr",
            Receiver::XhrStreaming => "xhr_streaming",
            Receiver::EventSource => "eventsource",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Receiver::EventSource => CT_EVENT_STREAM,
            _ => CT_JS,
        }
    }

    fn prelude(self) -> Bytes {
        match self {
            Receiver::Polling => Bytes::new(),
            Receiver::XhrStreaming => {
                let mut b = BytesMut::with_capacity(2049);
                b.put_bytes(b'h', 2048);
                b.put_u8(b'\n');
                b.freeze()
            }
            Receiver::EventSource => Bytes::from_static(b"\r\n"),
        }
    }

    fn wrap(self, frame: &str) -> Bytes {
        match self {
            Receiver::EventSource => Bytes::from(format!("data: {frame}\r\n\r\n")),
            _ => {
                let mut s = String::with_capacity(frame.len() + 1);
                s.push_str(frame);
                s.push('\n');
                Bytes::from(s)
            }
        }
    }
}

/// The parts of a session-URL request the HTTP transports need.
pub(crate) struct Req<'a> {
    pub(crate) session: &'a str,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) cors: Cors,
}

/// One HTTP-transport session in the table.
pub(crate) struct HttpSession {
    shared: Arc<ConnShared>,
    inbound: mpsc::Sender<String>,
    /// Held by the one active receiving request.
    recv: Arc<tokio::sync::Mutex<RecvState>>,
    activity: Mutex<Activity>,
    /// Wakes the reaper when a receiving request starts or ends.
    wake: Notify,
}

struct RecvState {
    outbound: mpsc::Receiver<Outbound>,
    opened: bool,
    /// A close marker was taken off the queue while batching; close next.
    pending_close: bool,
    /// Once closed, every receiving request gets this frame.
    close_frame: Option<String>,
}

struct Activity {
    receiving: bool,
    last_end: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The active receiving request's hold on a session. On drop it records the
/// end of the request for the reaper; a request dropped before it completed
/// (the client went away) closes the session.
struct ActiveReceive {
    session: Arc<HttpSession>,
    state: OwnedMutexGuard<RecvState>,
    completed: bool,
}

impl Drop for ActiveReceive {
    fn drop(&mut self) {
        if !self.completed && self.state.close_frame.is_none() {
            self.state.close_frame = Some(frame::close_frame(1002, "Connection interrupted"));
            self.session.shared.ended().cancel();
        }
        {
            let mut a = lock(&self.session.activity);
            a.receiving = false;
            a.last_end = Instant::now();
        }
        self.session.wake.notify_one();
    }
}

/// What a receiving request writes next.
enum Next {
    Frame(String),
    Heartbeat,
    /// A close frame; the session is now closed.
    Close(String),
}

impl ActiveReceive {
    /// Marks the session closed with the application's close reason.
    fn close(&mut self) -> String {
        let (code, reason) = self.session.shared.close_reason();
        let f = frame::close_frame(code, &reason);
        self.state.close_frame = Some(f.clone());
        self.session.shared.ended().cancel();
        f
    }

    /// Waits up to `idle` for the next frame. Cancel-safe: nothing is taken
    /// off the queue across an await point.
    async fn next(&mut self, idle: Duration) -> Next {
        if let Some(f) = &self.state.close_frame {
            return Next::Close(f.clone());
        }
        if self.state.pending_close || self.session.shared.ended().is_cancelled() {
            return Next::Close(self.close());
        }
        let token = self.session.shared.ended().clone();
        let first = tokio::select! {
            biased;
            item = self.state.outbound.recv() => item,
            () = token.cancelled() => return Next::Close(self.close()),
            () = tokio::time::sleep(idle) => return Next::Heartbeat,
        };
        match first {
            Some(Outbound::Message(m)) => {
                let mut f = frame::start_array(m.len());
                frame::push_array_item(&mut f, &m);
                while f.len() < BATCH_BYTES {
                    match self.state.outbound.try_recv() {
                        Ok(Outbound::Message(m)) => frame::push_array_item(&mut f, &m),
                        Ok(Outbound::Close) => {
                            self.state.pending_close = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                frame::finish_array(&mut f);
                Next::Frame(f)
            }
            Some(Outbound::Close) | None => Next::Close(self.close()),
        }
    }
}

/// `max_sessions` reached.
struct Refused;

/// How long a receiving request waits for the slot held by another one before it is refused with
/// 2010. A request whose client went away (an aborted poll) is dropped once the HTTP server sees
/// its connection close, which can be a moment after the client's next poll arrives (another
/// connection, another task): without this wait that poll was refused although the session was
/// free. A receiver that is really still open keeps the slot, and the newcomer gets 2010.
const TAKEOVER_WAIT: Duration = Duration::from_millis(250);

/// Finds or creates the session and takes the receiver slot (`None` when
/// another receiving request holds it and keeps it for [`TAKEOVER_WAIT`]).
async fn attach(
    server: &Arc<Server>,
    rq: &Req<'_>,
    kind: Receiver,
) -> Result<Option<ActiveReceive>, Refused> {
    let mut created = None;
    let (session, state) = {
        let mut table = lock(&server.sessions);
        let session = match table.get(rq.session) {
            Some(s) => s.clone(),
            None => {
                let Some(permit) = server.open_session(kind.name(), rq.peer, rq.headers) else {
                    return Err(Refused);
                };
                let (conn, side) = server.new_conn(kind.name(), rq.peer);
                let session = Arc::new(HttpSession {
                    shared: side.shared,
                    inbound: side.inbound,
                    recv: Arc::new(tokio::sync::Mutex::new(RecvState {
                        outbound: side.outbound,
                        opened: false,
                        pending_close: false,
                        close_frame: None,
                    })),
                    activity: Mutex::new(Activity {
                        receiving: false,
                        last_end: Instant::now(),
                    }),
                    wake: Notify::new(),
                });
                table.insert(rq.session.to_owned(), session.clone());
                created = Some((conn, permit));
                session
            }
        };
        let state = session.recv.clone().try_lock_owned().ok();
        if state.is_some() {
            lock(&session.activity).receiving = true;
        }
        (session, state)
    };
    if let Some((conn, permit)) = created {
        tokio::spawn(reaper(
            server.clone(),
            rq.session.to_owned(),
            session.clone(),
            permit,
        ));
        (server.on_session)(conn);
    }
    let state = match state {
        Some(state) => state,
        None => {
            let Ok(state) =
                tokio::time::timeout(TAKEOVER_WAIT, session.recv.clone().lock_owned()).await
            else {
                return Ok(None);
            };
            // The holder ended (an aborted one has closed the session, which this request now
            // reports). Marked receiving under the table lock, as the reaper checks it there.
            let _table = lock(&server.sessions);
            lock(&session.activity).receiving = true;
            state
        }
    };
    Ok(Some(ActiveReceive {
        session,
        state,
        completed: false,
    }))
}

/// A receiving request: `xhr`, `xhr_streaming` or `eventsource`.
pub(crate) async fn receive(server: Arc<Server>, rq: Req<'_>, kind: Receiver) -> Response {
    let Ok(active) = attach(&server, &rq, kind).await else {
        return service::fixed(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(CT_TEXT),
            "Too many sessions.\n",
        );
    };
    let mut res = match active {
        None => {
            let another = frame::close_frame(2010, "Another connection still open");
            let mut body = BytesMut::from(&kind.prelude()[..]);
            body.extend_from_slice(&kind.wrap(&another));
            service::fixed(StatusCode::OK, Some(kind.content_type()), body.freeze())
        }
        Some(mut active) => {
            if kind == Receiver::Polling {
                let body = poll_once(&mut active, server.config.heartbeat_interval).await;
                active.completed = true;
                drop(active);
                service::fixed(StatusCode::OK, Some(CT_JS), kind.wrap(&body))
            } else {
                let (tx, rx) = mpsc::channel(1);
                tokio::spawn(stream_out(
                    active,
                    tx,
                    kind,
                    server.config.heartbeat_interval,
                    server.config.max_streaming_bytes,
                    server.config.write_timeout,
                ));
                let mut res = warp::reply::stream(BodyStream(rx)).into_response();
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(kind.content_type()),
                );
                res
            }
        }
    };
    service::transport_headers(&server, &rq.cors, rq.headers, res.headers_mut());
    res
}

async fn poll_once(active: &mut ActiveReceive, idle: Duration) -> String {
    if !active.state.opened && active.state.close_frame.is_none() {
        active.state.opened = true;
        return frame::OPEN.to_owned();
    }
    match active.next(idle).await {
        Next::Frame(f) | Next::Close(f) => f,
        Next::Heartbeat => frame::HEARTBEAT.to_owned(),
    }
}

/// Writes a streaming response until it is full, the session closes, or
/// the client goes away.
async fn stream_out(
    mut active: ActiveReceive,
    tx: mpsc::Sender<Result<Bytes, std::convert::Infallible>>,
    kind: Receiver,
    idle: Duration,
    max_bytes: usize,
    write_timeout: Duration,
) {
    let put = |bytes: Bytes| {
        let tx = tx.clone();
        async move {
            matches!(
                tokio::time::timeout(write_timeout, tx.send(Ok(bytes))).await,
                Ok(Ok(()))
            )
        }
    };
    if !put(kind.prelude()).await {
        return;
    }
    if !active.state.opened && active.state.close_frame.is_none() {
        active.state.opened = true;
        if !put(kind.wrap(frame::OPEN)).await {
            return;
        }
    }
    let mut written = 0usize;
    loop {
        let next = tokio::select! {
            biased;
            () = tx.closed() => return,
            next = active.next(idle) => next,
        };
        let (text, last) = match next {
            Next::Frame(f) => (f, false),
            Next::Heartbeat => (frame::HEARTBEAT.to_owned(), false),
            Next::Close(f) => (f, true),
        };
        let bytes = kind.wrap(&text);
        written += bytes.len();
        if !put(bytes).await {
            return;
        }
        if last || written >= max_bytes {
            active.completed = true;
            return;
        }
    }
}

/// The body of a streaming response, fed by [`stream_out`].
struct BodyStream(mpsc::Receiver<Result<Bytes, std::convert::Infallible>>);

impl Stream for BodyStream {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// Removes the session `disconnect_delay` after its last receiving request
/// ended, then ends it and releases its slot.
async fn reaper(
    server: Arc<Server>,
    key: String,
    session: Arc<HttpSession>,
    permit: SessionPermit,
) {
    let delay = server.config.disconnect_delay;
    loop {
        let deadline = {
            let a = lock(&session.activity);
            (!a.receiving).then(|| a.last_end + delay)
        };
        match deadline {
            None => session.wake.notified().await,
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {
                        let mut table = lock(&server.sessions);
                        let a = lock(&session.activity);
                        if !a.receiving && a.last_end + delay <= Instant::now() {
                            if table.get(&key).is_some_and(|s| Arc::ptr_eq(s, &session)) {
                                table.remove(&key);
                            }
                            break;
                        }
                    }
                    () = session.wake.notified() => {}
                }
            }
        }
    }
    session.shared.ended().cancel();
    drop(permit);
    tracing::debug!(session = session.shared.id(), "sockjs session reaped");
}

/// `xhr_send`: delivers a JSON array of messages to the session.
pub(crate) async fn send<S, B>(server: Arc<Server>, rq: Req<'_>, body: S) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send,
{
    let limit = server.config.max_message_bytes;
    let declared = rq
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut res = if declared.is_some_and(|n| n > limit as u64) {
        too_large()
    } else {
        let session = lock(&server.sessions).get(rq.session).cloned();
        match session {
            Some(session) if !session.shared.ended().is_cancelled() => {
                match read_limited(body, limit).await {
                    Err(res) => res,
                    Ok(payload) => match frame::decode_messages(&payload) {
                        Err(DecodeError::Empty) => service::fixed(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            Some(CT_TEXT),
                            "Payload expected.",
                        ),
                        Err(DecodeError::Broken) => service::fixed(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            Some(CT_TEXT),
                            "Broken JSON encoding.",
                        ),
                        Ok(msgs) => {
                            for m in msgs {
                                if !conn::deliver(&session.inbound, session.shared.ended(), m).await
                                {
                                    break;
                                }
                            }
                            service::fixed(StatusCode::NO_CONTENT, Some(CT_TEXT), Bytes::new())
                        }
                    },
                }
            }
            _ => service::fixed(StatusCode::NOT_FOUND, Some(CT_TEXT), "Session not found.\n"),
        }
    };
    service::transport_headers(&server, &rq.cors, rq.headers, res.headers_mut());
    res
}

fn too_large() -> Response {
    service::fixed(
        StatusCode::PAYLOAD_TOO_LARGE,
        Some(CT_TEXT),
        "Payload too large.\n",
    )
}

/// Reads a request body, refusing it (413) as soon as it exceeds `limit`.
async fn read_limited<S, B>(body: S, limit: usize) -> Result<Bytes, Response>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|_| {
            service::fixed(
                StatusCode::BAD_REQUEST,
                Some(CT_TEXT),
                "Broken request body.\n",
            )
        })?;
        if buf.len() + chunk.remaining() > limit {
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            buf.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}
