//! WebSocket transports: SockJS-framed (`/<server>/<session>/websocket`)
//! and raw (`/websocket`).
//!
//! The upgrade is done here rather than with `warp::ws()` so that the
//! WebSocket codec's buffers can be sized: tungstenite allocates its read
//! buffer up front (128 KiB by default, which warp does not let one
//! change), and that dominates the memory of an idle connection.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, Stream, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::Server;
use super::conn::{self, ConnShared, Outbound, TransportSide};
use super::frame::{self, DecodeError};
use super::service::{self, CT_TEXT};
use super::xhr::BATCH_BYTES;

/// Which WebSocket endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    SockJs,
    Raw,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::SockJs => "websocket",
            Kind::Raw => "raw-websocket",
        }
    }
}

/// How long to wait for the peer while closing.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Close code of a message over the size limit (RFC 6455 §7.4.1).
pub(crate) const CLOSE_TOO_BIG: u16 = 1009;
/// Close code of data inconsistent with its message type, e.g. a text message that is not UTF-8.
pub(crate) const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code of a protocol violation.
pub(crate) const CLOSE_PROTOCOL_ERROR: u16 = 1002;

/// The Close a failed WebSocket read calls for (RFC 6455 §7.1.7, §7.4.1): 1009 for a message or
/// frame over the size limit, 1007 for a text message (or close reason) that is not UTF-8, 1002
/// for any other breach of the framing rules (unmasked or fragmented control frames, reserved bits,
/// bad opcodes, ...). `None` when the connection itself is gone and nothing can be sent.
pub(crate) fn failure_close(e: &WsError) -> Option<(u16, &'static str)> {
    match e {
        WsError::Capacity(_) => Some((CLOSE_TOO_BIG, "Message too big")),
        WsError::Utf8(_) => Some((CLOSE_INVALID_DATA, "Invalid UTF-8")),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) | WsError::AttackAttempt => {
            Some((CLOSE_PROTOCOL_ERROR, "Protocol error"))
        }
        _ => None,
    }
}

/// Reads what is left of a closing WebSocket until it ends, for at most [`CLOSE_GRACE`], and
/// drops it.
///
/// After the peer's Close, tungstenite has queued the answering Close (echoing the peer's code)
/// and writes it on the next poll of the stream; being the server, it then ends the stream, and
/// the caller closes TCP. After a Close of ours, this waits for the peer's answer, so that TCP is
/// closed once the handshake is complete (RFC 6455 §5.5.1, §7.1.1) rather than under a Close the
/// peer is still sending.
pub(crate) async fn drain_until_closed<S>(stream: &mut S)
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

fn bad_request(msg: &'static str) -> Response {
    service::fixed(StatusCode::BAD_REQUEST, Some(CT_TEXT), msg)
}

/// Whether a comma-separated header contains `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The first subprotocol the client offers that the server accepts.
fn pick_protocol(headers: &HeaderMap, accepted: &[String]) -> Option<HeaderValue> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| accepted.iter().any(|a| a == p))
        .and_then(|p| HeaderValue::from_str(p).ok())
}

/// tungstenite settings for a server socket: buffers of `buffer` bytes (tungstenite allocates its
/// read buffer up front, so this is most of an idle connection's memory) and messages and frames
/// limited to `max_message` bytes, refused before they are buffered whole.
pub(crate) fn socket_config(buffer: usize, max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(buffer)
        .write_buffer_size(buffer)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Validates a WebSocket upgrade request (RFC 6455 §4.2.1) and builds the `101` answer, choosing the
/// first offered subprotocol in `accepted`. Returns the upgrade handle to await, or the error answer.
#[allow(clippy::result_large_err)] // called once per upgrade; boxing buys nothing
pub(crate) fn handshake(
    method: &Method,
    headers: &HeaderMap,
    on_upgrade: Option<OnUpgrade>,
    accepted: &[String],
) -> Result<(OnUpgrade, Response), Response> {
    if method != Method::GET {
        let mut res = service::fixed(StatusCode::METHOD_NOT_ALLOWED, None, bytes::Bytes::new());
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return Err(res);
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(bad_request("Can \"Upgrade\" only to \"WebSocket\"."));
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(bad_request("\"Connection\" must be \"Upgrade\"."));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut res = bad_request("Unsupported WebSocket version.");
        res.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(res);
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(bad_request("Missing Sec-WebSocket-Key."));
    };
    let Some(on_upgrade) = on_upgrade else {
        return Err(bad_request("Connection cannot be upgraded."));
    };
    let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
        return Err(bad_request("Bad Sec-WebSocket-Key."));
    };
    let protocol = pick_protocol(headers, accepted);
    let mut res = service::fixed(StatusCode::SWITCHING_PROTOCOLS, None, bytes::Bytes::new());
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    Ok((on_upgrade, res))
}

/// Answers a request on a WebSocket URL: the upgrade, or an error.
pub(crate) fn upgrade(
    server: Arc<Server>,
    on_upgrade: Option<OnUpgrade>,
    method: &Method,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    kind: Kind,
) -> Response {
    let protocols = server.config.websocket_protocols.clone();
    let (on_upgrade, res) = match handshake(method, headers, on_upgrade, &protocols) {
        Ok(ok) => ok,
        Err(res) => return res,
    };
    let Some(permit) = server.open_session(kind.name(), peer, headers) else {
        return service::fixed(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(CT_TEXT),
            "Too many sessions.\n",
        );
    };
    let cfg = &server.config;
    let buffer = cfg.websocket_buffer_bytes.max(1024);
    // Inbound messages and frames above the limit fail the read (and end
    // the session) before being buffered whole.
    let ws_config = socket_config(buffer, cfg.max_message_bytes);
    let server2 = server.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "sockjs: websocket upgrade failed");
                return;
            }
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config))
                .await;
        run(server2, socket, peer, kind).await;
        drop(permit);
    });

    res
}

async fn run(server: Arc<Server>, socket: Socket, peer: Option<SocketAddr>, kind: Kind) {
    let (conn, side) = server.new_conn(kind.name(), peer);
    (server.on_session)(conn);
    let TransportSide {
        shared,
        inbound,
        outbound,
    } = side;
    let (sink, stream) = socket.split();
    let cfg = &server.config;
    // Set by the reader when it fails the connection: the Close code and reason the writer sends.
    let failure = OnceLock::new();
    match kind {
        Kind::SockJs => {
            tokio::join!(
                sockjs_writer(
                    sink,
                    outbound,
                    &shared,
                    &failure,
                    cfg.heartbeat_interval,
                    cfg.write_timeout
                ),
                sockjs_reader(stream, inbound, &shared, &failure),
            );
        }
        Kind::Raw => {
            tokio::join!(
                raw_writer(sink, outbound, &shared, &failure, cfg.write_timeout),
                raw_reader(stream, inbound, &shared, &failure),
            );
        }
    }
}

/// The reader's verdict on a failed connection.
type Failure = OnceLock<(u16, &'static str)>;

type Sink = SplitSink<Socket, Message>;

/// Sends one message (and flushes) within `timeout`.
async fn send(sink: &mut Sink, msg: Message, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, sink.send(msg)).await,
        Ok(Ok(()))
    )
}

/// A WebSocket close code that may be sent on the wire for `code`.
fn wire_close_code(code: u16) -> u16 {
    match code {
        1000..=1003 | 1007..=1011 | 3000..=4999 => code,
        _ => 1000,
    }
}

/// Truncates a close reason to the 123 bytes a close frame allows.
fn wire_close_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// Ends the socket: a close frame with `close` if given, then a short wait
/// for the close handshake to flush.
async fn finish(mut sink: Sink, close: Option<(u16, String)>) {
    if let Some((code, reason)) = close {
        let msg = Message::Close(Some(CloseFrame {
            code: wire_close_code(code).into(),
            reason: Utf8Bytes::from(wire_close_reason(&reason)),
        }));
        let _ = send(&mut sink, msg, CLOSE_GRACE).await;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
}

async fn sockjs_writer(
    mut sink: Sink,
    mut outbound: mpsc::Receiver<Outbound>,
    shared: &ConnShared,
    failure: &Failure,
    heartbeat: Duration,
    write_timeout: Duration,
) {
    let ended = shared.ended();
    if !send(&mut sink, Message::text(frame::OPEN), write_timeout).await {
        ended.cancel();
        return;
    }
    let close = loop {
        let first = tokio::select! {
            biased;
            () = ended.cancelled() => {
                break shared.is_closing().then(|| shared.close_reason());
            }
            item = outbound.recv() => item,
            () = tokio::time::sleep(heartbeat) => {
                if send(&mut sink, Message::text(frame::HEARTBEAT), write_timeout).await {
                    continue;
                }
                break None;
            }
        };
        let Some(Outbound::Message(m)) = first else {
            break Some(shared.close_reason());
        };
        let mut f = frame::start_array(m.len());
        frame::push_array_item(&mut f, &m);
        let mut closing = false;
        while f.len() < BATCH_BYTES {
            match outbound.try_recv() {
                Ok(Outbound::Message(m)) => frame::push_array_item(&mut f, &m),
                Ok(Outbound::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        frame::finish_array(&mut f);
        if !send(&mut sink, Message::text(f), write_timeout).await {
            break None;
        }
        if closing {
            break Some(shared.close_reason());
        }
    };
    ended.cancel();
    if let Some(&(code, reason)) = failure.get() {
        // The WebSocket itself failed: its Close says why. No SockJS `c[...]` frame, as the
        // protocol ends a session with broken input abruptly.
        finish(sink, Some((code, reason.to_owned()))).await;
        return;
    }
    let close = match close {
        Some((code, reason)) => {
            let f = frame::close_frame(code, &reason);
            if send(&mut sink, Message::text(f), write_timeout).await {
                Some((code, reason))
            } else {
                None
            }
        }
        None => None,
    };
    finish(sink, close).await;
}

/// Decodes inbound SockJS payloads into the inbound queue. Broken JSON ends
/// the session abruptly, as the protocol requires (with a WebSocket Close
/// 1007); a WebSocket-level failure ends it with the Close its cause calls
/// for; the client's Close is answered (echoing its code) before the socket
/// is dropped.
async fn sockjs_reader(
    mut stream: SplitStream<Socket>,
    inbound: mpsc::Sender<String>,
    shared: &ConnShared,
    failure: &Failure,
) {
    let ended = shared.ended();
    loop {
        let item = tokio::select! {
            biased;
            () = ended.cancelled() => {
                // The writer is closing: take the client's answering Close.
                drain_until_closed(&mut stream).await;
                return;
            }
            item = stream.next() => item,
        };
        let payload = match item {
            Some(Ok(Message::Text(t))) => t.into(),
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_))) => {
                drain_until_closed(&mut stream).await;
                break;
            }
            Some(Err(e)) => {
                fail(shared, failure, &e);
                break;
            }
            None => break,
        };
        match frame::decode_messages(&payload) {
            Ok(msgs) => {
                for m in msgs {
                    if !conn::deliver(&inbound, ended, m).await {
                        return;
                    }
                }
            }
            Err(DecodeError::Empty) => {}
            Err(DecodeError::Broken) => {
                tracing::debug!(session = shared.id(), "sockjs: broken JSON, closing");
                let _ = failure.set((CLOSE_INVALID_DATA, "Broken JSON encoding"));
                break;
            }
        }
    }
    ended.cancel();
}

/// Records the Close that a read error calls for, if the connection can still take one.
fn fail(shared: &ConnShared, failure: &Failure, e: &WsError) {
    tracing::debug!(session = shared.id(), error = %e, "sockjs: websocket read failed");
    if let Some(close) = failure_close(e) {
        let _ = failure.set(close);
    }
}

async fn raw_writer(
    mut sink: Sink,
    mut outbound: mpsc::Receiver<Outbound>,
    shared: &ConnShared,
    failure: &Failure,
    write_timeout: Duration,
) {
    let ended = shared.ended();
    let close = loop {
        let first = tokio::select! {
            biased;
            () = ended.cancelled() => {
                break shared.is_closing().then(|| shared.close_reason());
            }
            item = outbound.recv() => item,
        };
        let Some(Outbound::Message(m)) = first else {
            break Some(shared.close_reason());
        };
        // Queue everything already waiting, then flush once.
        let mut closing = false;
        let mut ok = matches!(
            tokio::time::timeout(write_timeout, sink.feed(Message::text(m))).await,
            Ok(Ok(()))
        );
        while ok {
            match outbound.try_recv() {
                Ok(Outbound::Message(m)) => {
                    ok = matches!(
                        tokio::time::timeout(write_timeout, sink.feed(Message::text(m))).await,
                        Ok(Ok(()))
                    );
                }
                Ok(Outbound::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        ok = ok
            && matches!(
                tokio::time::timeout(write_timeout, sink.flush()).await,
                Ok(Ok(()))
            );
        if !ok {
            break None;
        }
        if closing {
            break Some(shared.close_reason());
        }
    };
    ended.cancel();
    let close = match failure.get() {
        Some(&(code, reason)) => Some((code, reason.to_owned())),
        None => close,
    };
    finish(sink, close).await;
}

/// Raw WebSocket: each text message (or binary message that is valid
/// UTF-8) is one application message. Anything else ends the session (a
/// binary message that is not UTF-8 with a Close 1007, a WebSocket-level
/// failure with the Close its cause calls for); the client's Close is
/// answered (echoing its code) before the socket is dropped.
async fn raw_reader(
    mut stream: SplitStream<Socket>,
    inbound: mpsc::Sender<String>,
    shared: &ConnShared,
    failure: &Failure,
) {
    let ended = shared.ended();
    loop {
        let item = tokio::select! {
            biased;
            () = ended.cancelled() => {
                drain_until_closed(&mut stream).await;
                return;
            }
            item = stream.next() => item,
        };
        let text = match item {
            Some(Ok(Message::Text(t))) => Ok(t.as_str().to_owned()),
            Some(Ok(Message::Binary(b))) => String::from_utf8(b.to_vec()),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_))) => {
                drain_until_closed(&mut stream).await;
                break;
            }
            Some(Err(e)) => {
                fail(shared, failure, &e);
                break;
            }
            None => break,
        };
        let Ok(text) = text else {
            tracing::debug!(
                session = shared.id(),
                "sockjs raw websocket: binary message is not UTF-8"
            );
            let _ = failure.set((CLOSE_INVALID_DATA, "Invalid UTF-8"));
            break;
        };
        if !conn::deliver(&inbound, ended, text).await {
            return;
        }
    }
    ended.cancel();
}
