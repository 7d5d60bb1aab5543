//! WebSocket transports: SockJS-framed (`/<server>/<session>/websocket`)
//! and raw (`/websocket`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use warp::Reply;
use warp::http::{Method, StatusCode};
use warp::reply::Response;
use warp::ws::{Message, WebSocket, Ws};

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
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Answers a request on a WebSocket URL: the upgrade, or an error.
pub(crate) fn upgrade(
    server: Arc<Server>,
    ws: Option<Ws>,
    method: &Method,
    peer: Option<SocketAddr>,
    kind: Kind,
) -> Response {
    if method != Method::GET {
        let mut res = service::fixed(StatusCode::METHOD_NOT_ALLOWED, None, bytes::Bytes::new());
        res.headers_mut().insert(
            warp::http::header::ALLOW,
            warp::http::HeaderValue::from_static("GET"),
        );
        return res;
    }
    let Some(ws) = ws else {
        return service::fixed(
            StatusCode::BAD_REQUEST,
            Some(CT_TEXT),
            "Can \"Upgrade\" only to \"WebSocket\".",
        );
    };
    let Some(permit) = server
        .metrics
        .try_open(kind.name(), server.config.max_sessions)
    else {
        return service::fixed(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(CT_TEXT),
            "Too many sessions.\n",
        );
    };
    let limit = server.config.max_message_bytes;
    // Inbound messages and frames above the limit fail the read (and end the
    // session) before being buffered. warp does not expose tungstenite's
    // read/write buffer sizes; its `max_write_buffer_size` is a hard error
    // threshold, not an allocation size, so it is left at its default.
    let ws = ws.max_message_size(limit).max_frame_size(limit);
    ws.on_upgrade(move |socket| async move {
        let (conn, side) = server.new_conn(kind.name(), peer);
        (server.on_session)(conn);
        let TransportSide {
            shared,
            inbound,
            outbound,
        } = side;
        let (sink, stream) = socket.split();
        let cfg = &server.config;
        match kind {
            Kind::SockJs => {
                tokio::join!(
                    sockjs_writer(sink, outbound, &shared, cfg.heartbeat_interval, cfg.write_timeout),
                    sockjs_reader(stream, inbound, &shared),
                );
            }
            Kind::Raw => {
                tokio::join!(
                    raw_writer(sink, outbound, &shared, cfg.write_timeout),
                    raw_reader(stream, inbound, &shared),
                );
            }
        }
        drop(permit);
    })
    .into_response()
}

type Sink = SplitSink<WebSocket, Message>;

/// Sends one message (and flushes) within `timeout`.
async fn send(sink: &mut Sink, msg: Message, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, sink.send(msg)).await, Ok(Ok(())))
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
        let msg = Message::close_with(wire_close_code(code), wire_close_reason(&reason));
        let _ = send(&mut sink, msg, CLOSE_GRACE).await;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
}

async fn sockjs_writer(
    mut sink: Sink,
    mut outbound: mpsc::Receiver<Outbound>,
    shared: &ConnShared,
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
/// the session abruptly, as the protocol requires.
async fn sockjs_reader(
    mut stream: SplitStream<WebSocket>,
    inbound: mpsc::Sender<String>,
    shared: &ConnShared,
) {
    let ended = shared.ended();
    loop {
        let item = tokio::select! {
            biased;
            () = ended.cancelled() => return,
            item = stream.next() => item,
        };
        let Some(Ok(msg)) = item else { break };
        if msg.is_close() {
            break;
        }
        if !msg.is_text() && !msg.is_binary() {
            continue;
        }
        match frame::decode_messages(msg.as_bytes()) {
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
                break;
            }
        }
    }
    ended.cancel();
}

async fn raw_writer(
    mut sink: Sink,
    mut outbound: mpsc::Receiver<Outbound>,
    shared: &ConnShared,
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
        ok = ok && matches!(tokio::time::timeout(write_timeout, sink.flush()).await, Ok(Ok(())));
        if !ok {
            break None;
        }
        if closing {
            break Some(shared.close_reason());
        }
    };
    ended.cancel();
    finish(sink, close).await;
}

/// Raw WebSocket: each text message (or binary message that is valid
/// UTF-8) is one application message. Anything else ends the session.
async fn raw_reader(
    mut stream: SplitStream<WebSocket>,
    inbound: mpsc::Sender<String>,
    shared: &ConnShared,
) {
    let ended = shared.ended();
    loop {
        let item = tokio::select! {
            biased;
            () = ended.cancelled() => return,
            item = stream.next() => item,
        };
        let Some(Ok(msg)) = item else { break };
        if msg.is_close() {
            break;
        }
        if !msg.is_text() && !msg.is_binary() {
            continue;
        }
        let Ok(text) = String::from_utf8(msg.into_bytes().to_vec()) else {
            tracing::debug!(session = shared.id(), "sockjs raw websocket: binary message is not UTF-8");
            break;
        };
        if !conn::deliver(&inbound, ended, text).await {
            return;
        }
    }
    ended.cancel();
}
