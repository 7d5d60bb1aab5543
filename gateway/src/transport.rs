//! The byte pipes a STOMP session runs over: WebSocket (`/stomp`, and SockJS's raw `/ws/websocket`),
//! SockJS sessions, and raw TCP.
//!
//! A transport is split into a [`Source`] (inbound byte chunks, in order, no framing assumed: a chunk may
//! hold several STOMP frames or part of one) and a [`Sink`] (outbound batches of complete frames). The
//! split lets the connection driver wait on the client and on its outbound queue at the same time.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::sockjs::ws;

/// A read that failed.
#[derive(Debug)]
pub struct ReadError {
    /// The WebSocket Close (code, reason) the failure calls for: 1009 for a message over the limit,
    /// 1007 for a text message that is not UTF-8, 1002 for a framing error. `None` when the
    /// connection is simply broken.
    pub close: Option<(u16, &'static str)>,
    /// What went wrong, for the log.
    pub detail: String,
}

/// Inbound half.
#[async_trait]
pub trait Source: Send {
    /// The next chunk; `None` when the peer has gone (after its WebSocket Close was answered).
    async fn recv(&mut self) -> Option<Result<Bytes, ReadError>>;

    /// Called once the server has closed the connection ([`Sink::close`]): waits (briefly) for the
    /// peer to answer, so that the WebSocket close handshake completes before TCP is closed.
    async fn drain(&mut self) {}
}

/// Outbound half.
#[async_trait]
pub trait Sink: Send {
    /// Writes complete frames (or heart-beat EOLs), in order.
    async fn send(&mut self, batch: &[Bytes]) -> Result<(), String>;
    /// Closes the connection; `protocol_error` after an ERROR frame (WebSocket close code 1002, SockJS
    /// `c[1002,...]`), else a normal close.
    async fn close(&mut self, protocol_error: bool);
    /// Fails the connection after a read error that calls for a WebSocket Close `code`
    /// ([`ReadError::close`]). Transports without such codes just close.
    async fn fail(&mut self, code: u16, reason: &'static str) {
        let _ = (code, reason);
        self.close(true).await;
    }
}

/// A server WebSocket after the upgrade (see [`crate::server`]).
pub type ServerSocket =
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// A WebSocket carrying STOMP directly (one or more frames per message, or a frame split over several).
pub fn websocket(ws: ServerSocket) -> (Box<dyn Source>, Box<dyn Sink>) {
    let (tx, rx) = ws.split();
    (Box::new(WsSource(rx)), Box::new(WsSink(tx)))
}

struct WsSource(SplitStream<ServerSocket>);
struct WsSink(SplitSink<ServerSocket, Message>);

#[async_trait]
impl Source for WsSource {
    async fn recv(&mut self) -> Option<Result<Bytes, ReadError>> {
        loop {
            match self.0.next().await? {
                Ok(Message::Text(t)) => return Some(Ok(Bytes::from(t))),
                Ok(Message::Binary(b)) => return Some(Ok(b)),
                Ok(Message::Close(_)) => {
                    // tungstenite has queued the answering Close (the client's code echoed); it goes
                    // out when the stream is polled again, which then ends. Returning right away
                    // dropped the socket unanswered: browsers saw 1006, `wasClean=false`.
                    ws::drain_until_closed(&mut self.0).await;
                    return None;
                }
                // Pings are answered by the WebSocket layer; pongs carry nothing for us.
                Ok(_) => continue,
                Err(e) => {
                    return Some(Err(ReadError {
                        close: ws::failure_close(&e),
                        detail: e.to_string(),
                    }));
                }
            }
        }
    }

    async fn drain(&mut self) {
        ws::drain_until_closed(&mut self.0).await;
    }
}

#[async_trait]
impl Sink for WsSink {
    async fn send(&mut self, batch: &[Bytes]) -> Result<(), String> {
        for frame in batch {
            // STOMP over WebSocket frames go as text when they are UTF-8 (what browsers expect), as
            // binary otherwise (a body with arbitrary bytes).
            let msg = match Utf8Bytes::try_from(frame.clone()) {
                Ok(text) => Message::Text(text),
                Err(_) => Message::Binary(frame.clone()),
            };
            self.0.feed(msg).await.map_err(|e| e.to_string())?;
        }
        self.0.flush().await.map_err(|e| e.to_string())
    }

    async fn close(&mut self, protocol_error: bool) {
        let frame = CloseFrame {
            code: if protocol_error {
                CloseCode::Protocol
            } else {
                CloseCode::Normal
            },
            reason: Utf8Bytes::from_static(if protocol_error { "STOMP error" } else { "" }),
        };
        let _ = self.0.send(Message::Close(Some(frame))).await;
        let _ = self.0.close().await;
    }

    async fn fail(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from_static(reason),
        };
        // No waiting for the client's answer: after a framing error nothing more it sends can be
        // read (RFC 6455 §7.1.7), so the connection is dropped once the Close is written.
        let _ = self.0.send(Message::Close(Some(frame))).await;
    }
}

/// Raw STOMP over TCP.
pub fn tcp(stream: tokio::net::TcpStream, read_chunk: usize) -> (Box<dyn Source>, Box<dyn Sink>) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    (
        Box::new(TcpSource {
            r,
            chunk: read_chunk.max(256),
        }),
        Box::new(TcpSink(w)),
    )
}

struct TcpSource {
    r: OwnedReadHalf,
    chunk: usize,
}
struct TcpSink(OwnedWriteHalf);

#[async_trait]
impl Source for TcpSource {
    async fn recv(&mut self) -> Option<Result<Bytes, ReadError>> {
        let mut buf = bytes::BytesMut::with_capacity(self.chunk);
        match self.r.read_buf(&mut buf).await {
            Ok(0) => None,
            Ok(_) => Some(Ok(buf.freeze())),
            Err(e) => Some(Err(ReadError {
                close: None,
                detail: e.to_string(),
            })),
        }
    }
}

#[async_trait]
impl Sink for TcpSink {
    async fn send(&mut self, batch: &[Bytes]) -> Result<(), String> {
        for frame in batch {
            self.0.write_all(frame).await.map_err(|e| e.to_string())?;
        }
        self.0.flush().await.map_err(|e| e.to_string())
    }

    async fn close(&mut self, _protocol_error: bool) {
        let _ = self.0.shutdown().await;
    }
}

/// A SockJS session (any SockJS transport). SockJS carries text only: frames are sent as UTF-8 strings,
/// several queued frames batched into one `a[...]` by the SockJS layer.
pub fn sockjs(conn: crate::sockjs::SockJsConn) -> (Box<dyn Source>, Box<dyn Sink>) {
    let sender = conn.sender();
    (Box::new(SockJsSource(conn)), Box::new(SockJsSink(sender)))
}

struct SockJsSource(crate::sockjs::SockJsConn);
struct SockJsSink(crate::sockjs::SockJsSender);

#[async_trait]
impl Source for SockJsSource {
    async fn recv(&mut self) -> Option<Result<Bytes, ReadError>> {
        // The SockJS layer answers the WebSocket close handshake and fails broken connections
        // itself (`sockjs::ws`); here a session just ends.
        self.0.recv().await.map(|s| Ok(Bytes::from(s)))
    }
}

#[async_trait]
impl Sink for SockJsSink {
    async fn send(&mut self, batch: &[Bytes]) -> Result<(), String> {
        for frame in batch {
            // A body that is not UTF-8 cannot travel in a SockJS string; replace what cannot be shown.
            let text = String::from_utf8_lossy(frame).into_owned();
            self.0
                .send(text)
                .await
                .map_err(|_| "sockjs session closed".to_owned())?;
        }
        Ok(())
    }

    async fn close(&mut self, protocol_error: bool) {
        if protocol_error {
            self.0.close(1002, "STOMP protocol error").await;
        } else {
            self.0.close(3000, "Go away!").await;
        }
    }
}
