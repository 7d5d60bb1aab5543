//! One STOMP 1.2 session over a WebSocket: connect, authenticate, subscribe, send, read.
//!
//! The server's bytes go through the `stomp` crate's [`StompCodec`]; WebSocket messages are only a
//! transport here, so a message holding several frames (or part of one) is handled like a TCP stream.
//!
//! [`Session::next_item`] is cancellation-safe: every byte read is kept in the session's buffer, so a
//! scenario can `select!` on it against timers and a stop signal.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use stomp::{Command, Frame, FrameError, Item, Limits, StompCodec, Version};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::codec::{Decoder, Encoder};

use crate::jwt;
use crate::target::Target;

/// How a session proves who it is.
#[derive(Clone)]
pub enum Credentials {
    /// `Authorization: Bearer <HS256 JWT>` signed with this secret, `sub` = the session's user (Instar).
    Bearer {
        /// The server's JWT secret.
        secret: Vec<u8>,
        /// Token lifetime.
        ttl_secs: u64,
    },
    /// `login`/`passcode` headers (RabbitMQ).
    Login { login: String, passcode: String },
    /// Nothing.
    Anonymous,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets and passcodes are never printed.
        match self {
            Credentials::Bearer { ttl_secs, .. } => {
                write!(f, "Bearer {{ ttl_secs: {ttl_secs}, .. }}")
            }
            Credentials::Login { login, .. } => write!(f, "Login {{ login: {login:?}, .. }}"),
            Credentials::Anonymous => f.write_str("Anonymous"),
        }
    }
}

impl Credentials {
    /// Adds the credential headers for `user` to a CONNECT frame.
    pub fn apply(&self, frame: Frame, user: &str) -> Frame {
        match self {
            Credentials::Bearer { secret, ttl_secs } => {
                let now = jwt::unix_now();
                let token = jwt::sign_hs256(secret, user, now, now + ttl_secs);
                frame.header("Authorization", format!("Bearer {token}"))
            }
            Credentials::Login { login, passcode } => {
                frame.header("login", login).header("passcode", passcode)
            }
            Credentials::Anonymous => frame,
        }
    }
}

/// Everything needed to open one session.
#[derive(Debug, Clone)]
pub struct ConnectSpec {
    pub target: Target,
    pub credentials: Arc<Credentials>,
    /// The CONNECT `host` header (RabbitMQ reads it as the virtual host).
    pub host_header: String,
    /// `heart-beat` offered in CONNECT: (can send every, want every), ms.
    pub heartbeat: (u32, u32),
    /// Local address to bind before connecting (spreads ports over several 127.0.0.x).
    pub source: Option<IpAddr>,
    /// Limit on TCP connect + WebSocket handshake + CONNECTED.
    pub timeout: Duration,
    /// tungstenite's per-connection read buffer (allocated up front).
    pub ws_read_buffer: usize,
}

/// Why a session could not be opened or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("TCP connect to {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("WebSocket handshake: {0}")]
    Handshake(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("server sent ERROR: {0}")]
    ServerError(String),
    #[error("malformed frame from server: {0}")]
    Frame(#[from] FrameError),
    #[error("connection closed by server")]
    Closed,
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
}

/// An open, authenticated STOMP session.
#[derive(Debug)]
pub struct Session {
    ws: WebSocketStream<TcpStream>,
    codec: StompCodec,
    /// Bytes received and not yet decoded.
    inbox: BytesMut,
    /// Scratch buffer for encoding.
    out: BytesMut,
    /// How often we must send something (None: never).
    pub send_every: Option<Duration>,
    /// How often the server promised to send something (None: never).
    pub server_every: Option<Duration>,
    next_receipt: u64,
}

fn millis(ms: u32) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
}

impl Session {
    /// TCP connect (from `spec.source` if set), WebSocket handshake offering `v12.stomp`, CONNECT as
    /// `user`, and wait for CONNECTED; all within `spec.timeout`.
    pub async fn connect(spec: &ConnectSpec, user: &str) -> Result<Session, SessionError> {
        match tokio::time::timeout(spec.timeout, Self::connect_inner(spec, user)).await {
            Ok(r) => r,
            Err(_) => Err(SessionError::Timeout(spec.timeout)),
        }
    }

    async fn connect_inner(spec: &ConnectSpec, user: &str) -> Result<Session, SessionError> {
        let addr = spec.target.addr;
        let tcp_err = |source| SessionError::Tcp { addr, source };
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(tcp_err)?;
        if let Some(ip) = spec.source {
            socket.bind(SocketAddr::new(ip, 0)).map_err(tcp_err)?;
        }
        let stream = socket.connect(addr).await.map_err(tcp_err)?;
        stream.set_nodelay(true).map_err(tcp_err)?;

        let mut request = spec.target.url.as_str().into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("v12.stomp"),
        );
        let config = WebSocketConfig::default()
            .read_buffer_size(spec.ws_read_buffer)
            .write_buffer_size(16 * 1024)
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;

        let mut session = Session {
            ws,
            codec: StompCodec::new(Limits {
                max_body_bytes: 1 << 20,
                ..Limits::default()
            }),
            inbox: BytesMut::with_capacity(1024),
            out: BytesMut::with_capacity(1024),
            send_every: None,
            server_every: None,
            next_receipt: 0,
        };
        let connect = Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("host", &spec.host_header)
            .header("heart-beat", stomp::heartbeat::format(spec.heartbeat));
        let connect = spec.credentials.apply(connect, user);
        session.send(&connect).await?;
        loop {
            match session.next_item().await? {
                None => return Err(SessionError::Closed),
                Some(Item::HeartBeat) => continue,
                Some(Item::Frame(f)) => match f.command {
                    Command::Connected => {
                        let server = f
                            .get("heart-beat")
                            .and_then(|h| stomp::heartbeat::parse(h).ok())
                            .unwrap_or((0, 0));
                        // negotiate() answers from the server's side: (server sends, client sends).
                        let (server_sends, client_sends) =
                            stomp::heartbeat::negotiate(spec.heartbeat, server);
                        session.send_every = millis(client_sends);
                        session.server_every = millis(server_sends);
                        session.codec.set_version(Version::V1_2);
                        return Ok(session);
                    }
                    Command::Error => return Err(error_of(&f)),
                    _ => return Err(SessionError::Unexpected(f.command.as_str())),
                },
            }
        }
    }

    /// Encodes `frame` into a WebSocket text message (binary if not UTF-8).
    fn message(&mut self, item: Item) -> Result<Message, SessionError> {
        self.out.clear();
        self.codec.encode(item, &mut self.out)?;
        let bytes: Bytes = self.out.split().freeze();
        Ok(match Utf8Bytes::try_from(bytes.clone()) {
            Ok(text) => Message::Text(text),
            Err(_) => Message::Binary(bytes),
        })
    }

    /// Sends one frame and flushes.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), SessionError> {
        let msg = self.message(Item::Frame(frame.clone()))?;
        self.ws.send(msg).await?;
        Ok(())
    }

    /// Queues one frame without flushing (pair with [`Session::flush`]).
    pub async fn feed(&mut self, frame: Frame) -> Result<(), SessionError> {
        let msg = self.message(Item::Frame(frame))?;
        self.ws.feed(msg).await?;
        Ok(())
    }

    /// Writes out everything queued.
    pub async fn flush(&mut self) -> Result<(), SessionError> {
        self.ws.flush().await?;
        Ok(())
    }

    /// Sends a heart-beat (a bare EOL).
    pub async fn heartbeat(&mut self) -> Result<(), SessionError> {
        let msg = self.message(Item::HeartBeat)?;
        self.ws.send(msg).await?;
        Ok(())
    }

    /// The next frame or heart-beat from the server; `None` once the connection has closed.
    pub async fn next_item(&mut self) -> Result<Option<Item>, SessionError> {
        loop {
            if let Some(item) = self.codec.decode(&mut self.inbox)? {
                return Ok(Some(item));
            }
            match self.ws.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Text(t))) => self.inbox.extend_from_slice(t.as_bytes()),
                Some(Ok(Message::Binary(b))) => self.inbox.extend_from_slice(&b),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Subscribes to each destination (ids `0, 1, …`), asking for a receipt on the last one and
    /// waiting for it, so the subscriptions are active on return. Frames other than the receipt are
    /// discarded meanwhile; an ERROR fails.
    pub async fn subscribe_all(
        &mut self,
        destinations: &[String],
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Result<(), SessionError> {
        let Some(last) = destinations.len().checked_sub(1) else {
            return Ok(());
        };
        let mut receipt = String::new();
        for (i, dest) in destinations.iter().enumerate() {
            let mut frame = Frame::new(Command::Subscribe)
                .header("id", i.to_string())
                .header("destination", dest);
            if !headers.iter().any(|(k, _)| k == "ack") {
                frame = frame.header("ack", "auto");
            }
            for (k, v) in headers {
                frame = frame.header(k, v);
            }
            if i == last {
                receipt = self.receipt_id();
                frame = frame.header("receipt", &receipt);
            }
            self.feed(frame).await?;
        }
        self.flush().await?;
        self.await_receipt(&receipt, timeout).await
    }

    fn receipt_id(&mut self) -> String {
        self.next_receipt += 1;
        format!("r{}", self.next_receipt)
    }

    async fn await_receipt(&mut self, id: &str, timeout: Duration) -> Result<(), SessionError> {
        let wait = async {
            loop {
                match self.next_item().await? {
                    None => return Err(SessionError::Closed),
                    Some(Item::Frame(f))
                        if f.command == Command::Receipt && f.get("receipt-id") == Some(id) =>
                    {
                        return Ok(());
                    }
                    Some(Item::Frame(f)) if f.command == Command::Error => {
                        return Err(error_of(&f));
                    }
                    Some(_) => {}
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(SessionError::Timeout(timeout)))
    }

    /// DISCONNECT with a receipt, wait briefly for it, then close the WebSocket. Best effort.
    pub async fn disconnect(mut self, timeout: Duration) {
        let id = self.receipt_id();
        let frame = Frame::new(Command::Disconnect).header("receipt", &id);
        if self.send(&frame).await.is_ok() {
            let _ = self.await_receipt(&id, timeout).await;
        }
        let _ = tokio::time::timeout(timeout, self.ws.close(None)).await;
    }
}

/// The ERROR frame's `message` header and body, as one line.
pub fn error_of(frame: &Frame) -> SessionError {
    let message = frame.get("message").unwrap_or("(no message)");
    let body = String::from_utf8_lossy(&frame.body);
    let body = body.trim();
    if body.is_empty() {
        SessionError::ServerError(message.to_owned())
    } else {
        SessionError::ServerError(format!("{message}: {}", body.replace('\n', " ")))
    }
}
