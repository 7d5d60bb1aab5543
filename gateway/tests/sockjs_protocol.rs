//! SockJS protocol tests against `gateway::sockjs` with an echo application,
//! using a minimal raw HTTP/1.1 client (exact bytes, chunked streaming) and
//! tokio-tungstenite for WebSockets.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gateway::sockjs::{self, SockJsConfig, SockJsConn, SockJsMetrics};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use warp::Filter;

const ALLOWED: &str = "http://front.example";
const STEP: Duration = Duration::from_secs(10);
/// `Cache-Control` of every answer that must not be cached (SockJS 0.3.3 `verify_not_cached`).
const NOT_CACHED: &str = "no-store, no-cache, no-transform, must-revalidate, max-age=0";

/// What the echo application reports.
#[derive(Debug)]
enum Event {
    Opened { id: String, transport: &'static str },
    Got(String),
    Ended { id: String },
}

/// Echo application: every message is sent back; `close` closes with
/// 3000 "Go away!"; `burst:N` sends N messages `m0..m{N-1}`.
fn echo(conn: SockJsConn, events: mpsc::UnboundedSender<Event>) {
    let _ = events.send(Event::Opened {
        id: conn.id().to_owned(),
        transport: conn.transport(),
    });
    tokio::spawn(async move {
        let mut conn = conn;
        while let Some(msg) = conn.recv().await {
            let _ = events.send(Event::Got(msg.clone()));
            if msg == "close" {
                conn.close(3000, "Go away!").await;
                break;
            }
            if let Some(n) = msg.strip_prefix("burst:") {
                let n: usize = n.parse().unwrap_or(0);
                for i in 0..n {
                    if conn.send(format!("m{i}")).await.is_err() {
                        break;
                    }
                }
                continue;
            }
            if conn.send(msg).await.is_err() {
                break;
            }
        }
        let _ = events.send(Event::Ended {
            id: conn.id().to_owned(),
        });
    });
}

struct TestServer {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<Event>,
    metrics: SockJsMetrics,
}

impl TestServer {
    /// Next open/end event (received-message events are skipped).
    async fn next_event(&mut self) -> Event {
        loop {
            match self.next_any_event().await {
                Event::Got(_) => {}
                e => return e,
            }
        }
    }

    async fn next_any_event(&mut self) -> Event {
        tokio::time::timeout(STEP, self.events.recv())
            .await
            .expect("event in time")
            .expect("server alive")
    }
}

fn test_config() -> SockJsConfig {
    SockJsConfig {
        allowed_origins: vec![ALLOWED.to_owned()],
        heartbeat_interval: Duration::from_millis(400),
        disconnect_delay: Duration::from_millis(500),
        max_message_bytes: 8 * 1024,
        max_streaming_bytes: 4096,
        ..SockJsConfig::default()
    }
}

async fn start(config: SockJsConfig) -> TestServer {
    let (tx, events) = mpsc::unbounded_channel();
    let (routes, metrics) =
        sockjs::routes_with_metrics("ws", config, move |conn| echo(conn, tx.clone()));
    // Composes with other filters.
    let other = warp::path("other").map(|| "other");
    let filter = routes.or(other);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(warp::serve(filter).incoming(listener).run());
    TestServer {
        addr,
        events,
        metrics,
    }
}

// ---------------------------------------------------------------- raw HTTP

struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Resp {
    head: Head,
    body: String,
}

impl std::ops::Deref for Resp {
    type Target = Head;
    fn deref(&self) -> &Head {
        &self.head
    }
}

/// An HTTP response being read incrementally.
struct Streaming {
    head: Head,
    reader: BufReader<TcpStream>,
    chunked: bool,
    remaining_in_chunk: usize,
    done: bool,
    buf: Vec<u8>,
}

impl Streaming {
    /// Reads more decoded body bytes into `buf`; false at end of body.
    async fn fill(&mut self) -> bool {
        if self.done {
            return false;
        }
        if !self.chunked {
            let mut tmp = [0u8; 8192];
            let n = self.reader.read(&mut tmp).await.expect("read");
            if n == 0 {
                self.done = true;
                return false;
            }
            self.buf.extend_from_slice(&tmp[..n]);
            return true;
        }
        if self.remaining_in_chunk == 0 {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await.expect("chunk size") == 0 {
                self.done = true;
                return false;
            }
            let size = usize::from_str_radix(line.trim(), 16).expect("hex chunk size");
            if size == 0 {
                let mut crlf = String::new();
                let _ = self.reader.read_line(&mut crlf).await;
                self.done = true;
                return false;
            }
            self.remaining_in_chunk = size;
        }
        let mut tmp = vec![0u8; self.remaining_in_chunk.min(8192)];
        let n = self.reader.read(&mut tmp).await.expect("read chunk");
        assert!(n > 0, "connection closed inside a chunk");
        self.buf.extend_from_slice(&tmp[..n]);
        self.remaining_in_chunk -= n;
        if self.remaining_in_chunk == 0 {
            let mut crlf = [0u8; 2];
            self.reader.read_exact(&mut crlf).await.expect("chunk CRLF");
        }
        true
    }

    /// The next `\n`-terminated line of the body (without the `\n`), or
    /// `None` at the end of the body.
    async fn line(&mut self) -> Option<String> {
        let fut = async {
            loop {
                if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                    let rest = self.buf.split_off(pos + 1);
                    let mut line = std::mem::replace(&mut self.buf, rest);
                    line.pop();
                    return Some(String::from_utf8(line).expect("utf-8 body"));
                }
                if !self.fill().await {
                    assert!(self.buf.is_empty(), "unterminated line at end of body");
                    return None;
                }
            }
        };
        tokio::time::timeout(STEP, fut).await.expect("line in time")
    }

    async fn rest(mut self) -> String {
        let fut = async { while self.fill().await {} };
        tokio::time::timeout(STEP, fut).await.expect("body in time");
        String::from_utf8(self.buf).expect("utf-8 body")
    }
}

async fn open(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Streaming {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let chunked_body = headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && *v == "chunked");
        match body {
            Some(b) if !chunked_body => req.push_str(&format!("Content-Length: {}\r\n", b.len())),
            None if method == "POST" => req.push_str("Content-Length: 0\r\n"),
            _ => {}
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.expect("write");
        if let Some(b) = body {
            if chunked_body {
                for part in b.chunks(1000) {
                    stream
                        .write_all(format!("{:x}\r\n", part.len()).as_bytes())
                        .await
                        .expect("write");
                    stream.write_all(part).await.expect("write");
                    stream.write_all(b"\r\n").await.expect("write");
                }
                // The server may answer (413) and close before the end.
                let _ = stream.write_all(b"0\r\n\r\n").await;
            } else {
                stream.write_all(b).await.expect("write");
            }
        }
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).await.expect("status");
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').expect("header colon");
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let head = Head { status, headers };
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        Streaming {
            head,
            reader,
            chunked,
            remaining_in_chunk: 0,
            done: false,
            buf: Vec::new(),
        }
    };
    tokio::time::timeout(STEP, fut)
        .await
        .expect("response head in time")
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let s = open(addr, method, path, headers, body).await;
    let head = Head {
        status: s.head.status,
        headers: s.head.headers.clone(),
    };
    let body = s.rest().await;
    Resp { head, body }
}

async fn post(addr: SocketAddr, path: &str, body: Option<&[u8]>) -> Resp {
    request(addr, "POST", path, &[], body).await
}

fn session_path() -> String {
    format!("/ws/000/{}", gateway_id())
}

fn gateway_id() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "s{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn greeting_and_unknown_paths() {
    let srv = start(test_config()).await;
    for path in ["/ws", "/ws/"] {
        let r = request(srv.addr, "GET", path, &[], None).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body, "Welcome to SockJS!\n");
        assert_eq!(r.header("content-type"), Some("text/plain;charset=UTF-8"));
    }
    for path in [
        "/ws/a",
        "/ws/a.html",
        "/ws/a/a",
        "/ws/a./a/xhr",
        "/ws/a/a./xhr",
        "/ws/./././xhr",
        "/ws//a/xhr",
        "/ws/a//xhr",
        "/ws/a/a/unknown",
        "/ws/iframe.html",
    ] {
        let r = request(srv.addr, "POST", path, &[], None).await;
        assert_eq!(r.status, 404, "{path}");
    }
    let long = "x".repeat(65);
    let r = post(srv.addr, &format!("/ws/000/{long}/xhr"), None).await;
    assert_eq!(r.status, 404);
    // Other filters still answer.
    let r = request(srv.addr, "GET", "/other", &[], None).await;
    assert_eq!((r.status, r.body.as_str()), (200, "other"));
}

#[tokio::test]
async fn info_and_cors() {
    let srv = start(test_config()).await;
    let r = request(
        srv.addr,
        "GET",
        "/ws/info?t=1",
        &[("Origin", ALLOWED)],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/json;charset=UTF-8")
    );
    assert_eq!(r.header("cache-control"), Some(NOT_CACHED));
    assert_eq!(r.header("access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("set-cookie"), None);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v["websocket"], true);
    assert_eq!(v["cookie_needed"], false);
    assert_eq!(v["origins"], serde_json::json!(["*:*"]));
    let e1 = v["entropy"].as_u64().expect("entropy");
    assert!(e1 <= u64::from(u32::MAX));
    let r2 = request(srv.addr, "GET", "/ws/info", &[], None).await;
    let v2: serde_json::Value = serde_json::from_str(&r2.body).expect("json");
    assert_ne!(v2["entropy"], v["entropy"]);
    assert_eq!(
        r2.header("access-control-allow-origin"),
        None,
        "no Origin, no CORS"
    );

    let r = request(
        srv.addr,
        "OPTIONS",
        "/ws/info",
        &[
            ("Origin", ALLOWED),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "a, b, c"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.body, "");
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("OPTIONS, GET")
    );
    assert_eq!(r.header("access-control-max-age"), Some("31536000"));
    assert_eq!(r.header("access-control-allow-headers"), Some("a, b, c"));
    assert_eq!(r.header("access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));

    for (method, path) in [
        ("GET", "/ws/info"),
        ("OPTIONS", "/ws/info"),
        ("POST", "/ws/000/abc/xhr"),
        ("POST", "/ws/000/abc/xhr_streaming"),
        ("OPTIONS", "/ws/000/abc/xhr_send"),
    ] {
        let r = request(
            srv.addr,
            method,
            path,
            &[("Origin", "http://evil.example")],
            None,
        )
        .await;
        assert_eq!(r.status, 403, "{method} {path}");
        assert_eq!(r.header("access-control-allow-origin"), None);
    }
    for path in [
        "/ws/000/abc/xhr",
        "/ws/000/abc/xhr_send",
        "/ws/000/abc/xhr_streaming",
    ] {
        let r = request(srv.addr, "OPTIONS", path, &[("Origin", ALLOWED)], None).await;
        assert_eq!(r.status, 204, "{path}");
        assert_eq!(
            r.header("access-control-allow-methods"),
            Some("OPTIONS, POST")
        );
        assert_eq!(r.header("access-control-allow-origin"), Some(ALLOWED));
    }

    // Empty allow-list: any origin is echoed (development).
    let dev = start(SockJsConfig::default()).await;
    let r = request(
        dev.addr,
        "GET",
        "/ws/info",
        &[("Origin", "http://localhost:3000")],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("ws connect");
    ws
}

/// Next text message; `None` when the socket closes.
async fn ws_next(ws: &mut Ws) -> Option<String> {
    loop {
        let msg = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("ws message in time");
        match msg {
            Some(Ok(WsMessage::Text(t))) => return Some(t.to_string()),
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

async fn ws_send(ws: &mut Ws, text: &str) {
    ws.send(WsMessage::text(text)).await.expect("ws send");
}

fn array(frame: &str) -> Vec<String> {
    let body = frame
        .strip_prefix('a')
        .unwrap_or_else(|| panic!("not an a-frame: {frame:?}"));
    serde_json::from_str(body).expect("a-frame JSON")
}

#[tokio::test]
async fn websocket_open_echo_batch_heartbeat_close() {
    let mut srv = start(test_config()).await;
    let mut ws = ws_connect(srv.addr, "/ws/123/abcdefgh/websocket").await;
    assert_eq!(ws_next(&mut ws).await.as_deref(), Some("o"));
    let Event::Opened { id, transport } = srv.next_event().await else {
        panic!("expected open");
    };
    assert_eq!(transport, "websocket");
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(id, "abcdefgh");

    // Array of strings and a bare string are both accepted; empty is ignored.
    ws_send(&mut ws, "").await;
    ws_send(&mut ws, r#"["a","b"]"#).await;
    ws_send(&mut ws, r#""c""#).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(array(&ws_next(&mut ws).await.expect("frame")));
    }
    assert_eq!(got, ["a", "b", "c"]);

    // Queued messages are batched into arrays.
    ws_send(&mut ws, r#"["burst:200"]"#).await;
    let mut got = Vec::new();
    let mut frames = 0;
    while got.len() < 200 {
        let f = ws_next(&mut ws).await.expect("frame");
        if f == "h" {
            continue;
        }
        got.extend(array(&f));
        frames += 1;
    }
    let expected: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    assert_eq!(got, expected);
    assert!(
        frames < 200,
        "no batching: {frames} frames for 200 messages"
    );

    // Heart-beat when idle.
    let t = std::time::Instant::now();
    assert_eq!(ws_next(&mut ws).await.as_deref(), Some("h"));
    assert!(t.elapsed() >= Duration::from_millis(300));

    // Application close.
    ws_send(&mut ws, r#"["close"]"#).await;
    assert_eq!(
        ws_next(&mut ws).await.as_deref(),
        Some(r#"c[3000,"Go away!"]"#)
    );
    assert_eq!(ws_next(&mut ws).await, None);
    assert!(matches!(srv.next_event().await, Event::Ended { .. }));
}

#[tokio::test]
async fn websocket_broken_json_and_oversize_close_session() {
    let mut srv = start(test_config()).await;
    let mut ws = ws_connect(srv.addr, "/ws/000/broken/websocket").await;
    assert_eq!(ws_next(&mut ws).await.as_deref(), Some("o"));
    let _ = srv.next_event().await;
    ws_send(&mut ws, r#"["a"#).await;
    assert_eq!(ws_next(&mut ws).await, None);
    assert!(matches!(srv.next_event().await, Event::Ended { .. }));

    let mut ws = ws_connect(srv.addr, "/ws/000/big/websocket").await;
    assert_eq!(ws_next(&mut ws).await.as_deref(), Some("o"));
    let _ = srv.next_event().await;
    let big = format!(r#"["{}"]"#, "x".repeat(9 * 1024));
    let _ = ws.send(WsMessage::text(big)).await;
    assert_eq!(ws_next(&mut ws).await, None);
    assert!(matches!(srv.next_event().await, Event::Ended { .. }));

    // Same session id may be reused by another socket (WebSocket sessions
    // are not in the table).
    let mut a = ws_connect(srv.addr, "/ws/000/same/websocket").await;
    let mut b = ws_connect(srv.addr, "/ws/000/same/websocket").await;
    assert_eq!(ws_next(&mut a).await.as_deref(), Some("o"));
    assert_eq!(ws_next(&mut b).await.as_deref(), Some("o"));
    ws_send(&mut a, r#"["1"]"#).await;
    ws_send(&mut b, r#"["2"]"#).await;
    assert_eq!(ws_next(&mut a).await.as_deref(), Some(r#"a["1"]"#));
    assert_eq!(ws_next(&mut b).await.as_deref(), Some(r#"a["2"]"#));

    // Messages sent just before the client goes away still reach recv().
    let mut c = ws_connect(srv.addr, "/ws/000/last/websocket").await;
    assert_eq!(ws_next(&mut c).await.as_deref(), Some("o"));
    while !matches!(srv.next_any_event().await, Event::Opened { .. }) {}
    ws_send(&mut c, r#"["bye"]"#).await;
    c.close(None).await.expect("close");
    drop(c);
    loop {
        match srv.next_any_event().await {
            Event::Got(m) if m == "bye" => break,
            Event::Ended { .. } => panic!("ended before the last message was received"),
            _ => {}
        }
    }

    // Non-upgrade requests on a WebSocket URL.
    let r = request(srv.addr, "GET", "/ws/000/x/websocket", &[], None).await;
    assert_eq!(r.status, 400);
    let r = request(srv.addr, "POST", "/ws/000/x/websocket", &[], None).await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn websocket_origin_and_subprotocol() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let config = SockJsConfig {
        websocket_protocols: vec!["v12.stomp".to_owned(), "v11.stomp".to_owned()],
        ..test_config()
    };
    let srv = start(config).await;
    for (origin, ok) in [("http://evil.example", false), (ALLOWED, true)] {
        let mut req = format!("ws://{}/ws/000/o/websocket", srv.addr)
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("Origin", origin.parse().expect("header"));
        let res = tokio_tungstenite::connect_async(req).await;
        assert_eq!(res.is_ok(), ok, "{origin}");
    }
    let mut req = format!("ws://{}/ws/websocket", srv.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v10.stomp, v11.stomp, v12.stomp".parse().expect("header"),
    );
    let (_ws, res) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    assert_eq!(
        res.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("v11.stomp")
    );
}

#[tokio::test]
async fn websocket_unicode_escaping() {
    let srv = start(test_config()).await;
    let mut ws = ws_connect(srv.addr, "/ws/000/uni/websocket").await;
    assert_eq!(ws_next(&mut ws).await.as_deref(), Some("o"));
    let text = "안녕하세요 \u{2028}\u{2029}\u{200c}\u{206f}\u{fff0}\u{ffff} \"q\" \\ \n\t\u{1} 😀";
    let payload = serde_json::to_string(&[text]).expect("json");
    ws_send(&mut ws, &payload).await;
    let frame = ws_next(&mut ws).await.expect("frame");
    assert_eq!(
        frame,
        r#"a["안녕하세요 \u2028\u2029\u200c\u206f\ufff0\uffff \"q\" \\ \n\t\u0001 😀"]"#
    );
    assert_eq!(array(&frame), [text]);
    drop(srv);
}

#[tokio::test]
async fn raw_websocket_echo() {
    let mut srv = start(test_config()).await;
    let mut ws = ws_connect(srv.addr, "/ws/websocket").await;
    let Event::Opened { transport, .. } = srv.next_event().await else {
        panic!("expected open");
    };
    assert_eq!(transport, "raw-websocket");
    ws_send(&mut ws, "Hello world!\u{ffff} 안녕").await;
    assert_eq!(
        ws_next(&mut ws).await.as_deref(),
        Some("Hello world!\u{ffff} 안녕")
    );
    ws.send(WsMessage::binary("바이너리".as_bytes().to_vec()))
        .await
        .expect("send");
    assert_eq!(ws_next(&mut ws).await.as_deref(), Some("바이너리"));
    ws_send(&mut ws, "close").await;
    assert_eq!(ws_next(&mut ws).await, None);
    assert!(matches!(srv.next_event().await, Event::Ended { .. }));

    let mut ws = ws_connect(srv.addr, "/ws/websocket").await;
    let _ = srv.next_event().await;
    ws.send(WsMessage::binary(vec![0xff, 0xfe]))
        .await
        .expect("send");
    assert_eq!(ws_next(&mut ws).await, None);
}

#[tokio::test]
async fn xhr_streaming_prelude_frames_and_limit() {
    let mut srv = start(test_config()).await;
    let base = session_path();
    let mut s = open(
        srv.addr,
        "POST",
        &format!("{base}/xhr_streaming"),
        &[("Origin", ALLOWED)],
        None,
    )
    .await;
    assert_eq!(s.head.status, 200);
    assert_eq!(
        s.head.header("content-type"),
        Some("application/javascript;charset=UTF-8")
    );
    assert_eq!(s.head.header("access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(s.head.header("cache-control"), Some(NOT_CACHED));
    assert_eq!(s.line().await.expect("prelude"), "h".repeat(2048));
    assert_eq!(s.line().await.as_deref(), Some("o"));
    let Event::Opened { id, transport } = srv.next_event().await else {
        panic!("expected open");
    };
    assert_eq!(transport, "xhr_streaming");
    assert!(!base.ends_with(&id));

    let r = post(srv.addr, &format!("{base}/xhr_send"), Some(br#"["x"]"#)).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.body, "");
    assert_eq!(s.line().await.as_deref(), Some(r#"a["x"]"#));

    // Idle: heart-beat line.
    assert_eq!(s.line().await.as_deref(), Some("h"));

    // The response ends once max_streaming_bytes (4096) of frames went out.
    let msg = "x".repeat(128);
    let mut lines = 0;
    let ended = loop {
        let body = format!(r#"["{msg}"]"#);
        let r = post(srv.addr, &format!("{base}/xhr_send"), Some(body.as_bytes())).await;
        assert_eq!(r.status, 204);
        let line = loop {
            match s.line().await {
                Some(l) if l == "h" => continue,
                other => break other,
            }
        };
        let Some(line) = line else { break false };
        assert_eq!(line, format!(r#"a["{msg}"]"#));
        lines += 1;
        if lines == 31 {
            break s.line().await.is_none();
        }
    };
    assert!(ended, "response must end after ~4 KiB");
    assert_eq!(lines, 31);

    // The client reopens the stream for the same session: no new `o`.
    let r = post(srv.addr, &format!("{base}/xhr_send"), Some(br#"["again"]"#)).await;
    assert_eq!(r.status, 204);
    let mut s = open(
        srv.addr,
        "POST",
        &format!("{base}/xhr_streaming"),
        &[],
        None,
    )
    .await;
    assert_eq!(s.line().await.expect("prelude").len(), 2048);
    assert_eq!(s.line().await.as_deref(), Some(r#"a["again"]"#));

    // A second concurrent receiver is refused.
    let second = request(
        srv.addr,
        "POST",
        &format!("{base}/xhr_streaming"),
        &[],
        None,
    )
    .await;
    assert_eq!(
        second.body,
        format!(
            "{}\nc[2010,\"Another connection still open\"]\n",
            "h".repeat(2048)
        )
    );
    let second = post(srv.addr, &format!("{base}/xhr"), None).await;
    assert_eq!(second.body, "c[2010,\"Another connection still open\"]\n");

    // Close from the application ends the stream with the close frame (after heart-beats sent
    // meanwhile: each refusal above waited a moment for the slot).
    let r = post(srv.addr, &format!("{base}/xhr_send"), Some(br#"["close"]"#)).await;
    assert_eq!(r.status, 204);
    let mut line = s.line().await;
    while line.as_deref() == Some("h") {
        line = s.line().await;
    }
    assert_eq!(line.as_deref(), Some(r#"c[3000,"Go away!"]"#));
    assert_eq!(s.line().await, None);
    assert!(matches!(srv.next_event().await, Event::Ended { .. }));
    // Later receivers get the same close frame until the session is reaped.
    let mut s = open(
        srv.addr,
        "POST",
        &format!("{base}/xhr_streaming"),
        &[],
        None,
    )
    .await;
    assert_eq!(s.line().await.expect("prelude").len(), 2048);
    assert_eq!(s.line().await.as_deref(), Some(r#"c[3000,"Go away!"]"#));
    assert_eq!(s.line().await, None);
}

#[tokio::test]
async fn eventsource_transport() {
    let srv = start(test_config()).await;
    let base = session_path();
    let mut s = open(srv.addr, "GET", &format!("{base}/eventsource"), &[], None).await;
    assert_eq!(s.head.status, 200);
    assert_eq!(s.head.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.head.header("cache-control"), Some(NOT_CACHED));
    assert_eq!(s.head.header("expires"), None);
    assert_eq!(s.line().await.as_deref(), Some("\r"));
    assert_eq!(s.line().await.as_deref(), Some("data: o\r"));
    assert_eq!(s.line().await.as_deref(), Some("\r"));
    let r = post(srv.addr, &format!("{base}/xhr_send"), Some(br#"["x"]"#)).await;
    assert_eq!(r.status, 204);
    assert_eq!(s.line().await.as_deref(), Some("data: a[\"x\"]\r"));
}

#[tokio::test]
async fn xhr_polling() {
    let mut srv = start(test_config()).await;
    let base = session_path();
    let r = request(
        srv.addr,
        "POST",
        &format!("{base}/xhr"),
        &[("Origin", ALLOWED)],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "o\n");
    assert_eq!(
        r.header("content-type"),
        Some("application/javascript;charset=UTF-8")
    );
    assert_eq!(r.header("access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("cache-control"), Some(NOT_CACHED));
    let Event::Opened { transport, .. } = srv.next_event().await else {
        panic!("expected open");
    };
    assert_eq!(transport, "xhr");

    // The server id is ignored: the session is keyed by the session id.
    let other_server = base.replace("/000/", "/999/");
    let r = post(
        srv.addr,
        &format!("{other_server}/xhr_send"),
        Some(br#"["a"]"#),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("content-type"), Some("text/plain;charset=UTF-8"));
    let r = post(srv.addr, &format!("{base}/xhr"), None).await;
    assert_eq!(r.body, "a[\"a\"]\n");

    // Several queued messages come back in one frame.
    for m in ["1", "2", "3"] {
        let body = format!(r#"["{m}"]"#);
        let r = post(srv.addr, &format!("{base}/xhr_send"), Some(body.as_bytes())).await;
        assert_eq!(r.status, 204);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = post(srv.addr, &format!("{base}/xhr"), None).await;
    assert_eq!(r.body, "a[\"1\",\"2\",\"3\"]\n");

    // Nothing to send: the poll waits ~heartbeat_interval, then `h`.
    let t = std::time::Instant::now();
    let r = post(srv.addr, &format!("{base}/xhr"), None).await;
    assert_eq!(r.body, "h\n");
    assert!(t.elapsed() >= Duration::from_millis(300));

    // A waiting poll is woken by data.
    let poll = tokio::spawn({
        let addr = srv.addr;
        let path = format!("{base}/xhr");
        async move { post(addr, &path, None).await.body }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Meanwhile a second receiver is refused.
    let r = post(srv.addr, &format!("{base}/xhr"), None).await;
    assert_eq!(r.body, "c[2010,\"Another connection still open\"]\n");
    let r = post(srv.addr, &format!("{base}/xhr_send"), Some(br#"["woke"]"#)).await;
    assert_eq!(r.status, 204);
    assert_eq!(poll.await.expect("poll"), "a[\"woke\"]\n");

    // Close: the close frame is served to every later poll.
    let r = post(srv.addr, &format!("{base}/xhr_send"), Some(br#"["close"]"#)).await;
    assert_eq!(r.status, 204);
    for _ in 0..2 {
        let r = post(srv.addr, &format!("{base}/xhr"), None).await;
        assert_eq!(r.body, "c[3000,\"Go away!\"]\n");
    }
    assert!(matches!(srv.next_event().await, Event::Ended { .. }));
}

#[tokio::test]
async fn xhr_send_status_codes() {
    let srv = start(test_config()).await;
    let base = session_path();
    let r = post(srv.addr, &format!("{base}/xhr_send"), Some(br#"["x"]"#)).await;
    assert_eq!(r.status, 404, "unknown session");
    let r = post(srv.addr, &format!("{base}/xhr"), None).await;
    assert_eq!(r.body, "o\n");

    let r = post(srv.addr, &format!("{base}/xhr_send"), None).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.body, "Payload expected.");
    let r = post(srv.addr, &format!("{base}/xhr_send"), Some(br#"["x"#)).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.body, "Broken JSON encoding.");
    let r = post(srv.addr, &format!("{base}/xhr_send"), Some(b"[1,2]")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.body, "Broken JSON encoding.");

    // Over max_message_bytes (8 KiB): refused from Content-Length...
    let big = format!(r#"["{}"]"#, "x".repeat(9 * 1024));
    let r = post(srv.addr, &format!("{base}/xhr_send"), Some(big.as_bytes())).await;
    assert_eq!(r.status, 413);
    // ...and while reading a chunked body (Node's http client sends those).
    let r = request(
        srv.addr,
        "POST",
        &format!("{base}/xhr_send"),
        &[("Transfer-Encoding", "chunked")],
        Some(big.as_bytes()),
    )
    .await;
    assert_eq!(r.status, 413);
    // A chunked body under the limit is fine.
    let ok = format!(r#"["{}"]"#, "y".repeat(4000));
    let r = request(
        srv.addr,
        "POST",
        &format!("{base}/xhr_send"),
        &[
            ("Transfer-Encoding", "chunked"),
            ("Content-Type", "text/plain"),
        ],
        Some(ok.as_bytes()),
    )
    .await;
    assert_eq!(r.status, 204);
    let r = post(srv.addr, &format!("{base}/xhr"), None).await;
    assert_eq!(r.body, format!("{ok}\n").replacen('[', "a[", 1));
}

#[tokio::test]
async fn session_reaped_after_disconnect_delay() {
    let mut srv = start(test_config()).await;
    let base = session_path();
    let r = post(srv.addr, &format!("{base}/xhr"), None).await;
    assert_eq!(r.body, "o\n");
    let Event::Opened { id, .. } = srv.next_event().await else {
        panic!("expected open");
    };
    assert_eq!(srv.metrics.snapshot().sessions_open, 1);
    // No receiving request for > disconnect_delay (500 ms): the session
    // ends (the application's recv() returns None) and is forgotten.
    let Event::Ended { id: ended } = srv.next_event().await else {
        panic!("expected end");
    };
    assert_eq!(ended, id);
    let r = post(srv.addr, &format!("{base}/xhr_send"), Some(br#"["x"]"#)).await;
    assert_eq!(r.status, 404);
    assert_eq!(srv.metrics.snapshot().sessions_open, 0);
    // The same URL now opens a new session.
    let r = post(srv.addr, &format!("{base}/xhr"), None).await;
    assert_eq!(r.body, "o\n");

    // Polling regularly keeps a session alive past disconnect_delay.
    let base = session_path();
    let r = post(srv.addr, &format!("{base}/xhr"), None).await;
    assert_eq!(r.body, "o\n");
    for _ in 0..3 {
        let r = post(srv.addr, &format!("{base}/xhr"), None).await;
        assert_eq!(r.body, "h\n");
    }
    let r = post(srv.addr, &format!("{base}/xhr_send"), Some(br#"["alive"]"#)).await;
    assert_eq!(r.status, 204);
}

#[tokio::test]
async fn session_limit_cookie_and_metrics() {
    let config = SockJsConfig {
        max_sessions: 1,
        cookie_needed: true,
        ..test_config()
    };
    let srv = start(config).await;
    let r = request(srv.addr, "GET", "/ws/info", &[], None).await;
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v["cookie_needed"], true);
    assert_eq!(r.header("set-cookie"), None);

    let base = session_path();
    let r = post(srv.addr, &format!("{base}/xhr"), None).await;
    assert_eq!(r.body, "o\n");
    assert_eq!(r.header("set-cookie"), Some("JSESSIONID=dummy;path=/"));
    let r = request(
        srv.addr,
        "POST",
        &format!("{base}/xhr_send"),
        &[("Cookie", "a=b; JSESSIONID=abc123")],
        Some(br#"["x"]"#),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("set-cookie"), Some("JSESSIONID=abc123;path=/"));

    let r = post(srv.addr, &format!("{}/xhr", session_path()), None).await;
    assert_eq!(r.status, 503);
    let url = format!("ws://{}/ws/000/x/websocket", srv.addr);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());

    let snap = srv.metrics.snapshot();
    assert_eq!(snap.sessions_open, 1);
    assert_eq!(snap.sessions_refused_total, 2);
    assert!(snap.open_by_transport.contains(&("xhr", 1)));
}

/// One client address holds at most `max_sessions_per_address` sessions (every transport);
/// behind a listed proxy the address is the last `X-Forwarded-For` value, so clients behind one
/// proxy do not share a cap; a place comes back when its session ends.
#[tokio::test]
async fn sessions_per_address_are_capped_and_counted() {
    let config = SockJsConfig {
        max_sessions_per_address: 2,
        ..test_config()
    };
    let srv = start(config).await;
    for _ in 0..2 {
        let r = post(srv.addr, &format!("{}/xhr", session_path()), None).await;
        assert_eq!(r.body, "o\n");
    }
    let r = post(srv.addr, &format!("{}/xhr", session_path()), None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "Too many sessions.\n");
    let url = format!("ws://{}/ws/000/x/websocket", srv.addr);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    // Not a listed proxy: its X-Forwarded-For changes nothing.
    let spoofed = [("X-Forwarded-For", "203.0.113.9")];
    let r = request(
        srv.addr,
        "POST",
        &format!("{}/xhr", session_path()),
        &spoofed,
        None,
    )
    .await;
    assert_eq!(r.status, 503);
    let snap = srv.metrics.snapshot();
    assert_eq!(snap.sessions_open, 2);
    assert_eq!(snap.sessions_refused_address_total, 3);
    assert_eq!(snap.sessions_refused_total, 0);
    // The sessions end (no receiving request for `disconnect_delay`): the places come back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = post(srv.addr, &format!("{}/xhr", session_path()), None).await;
    assert_eq!(r.body, "o\n");

    // Behind a listed proxy each forwarded client has its own cap.
    let config = SockJsConfig {
        max_sessions_per_address: 1,
        proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..test_config()
    };
    let srv = start(config).await;
    let from = |ip: &'static str| [("X-Forwarded-For", ip)];
    let xhr = || format!("{}/xhr", session_path());
    let r = request(srv.addr, "POST", &xhr(), &from("203.0.113.1"), None).await;
    assert_eq!(r.body, "o\n");
    let r = request(
        srv.addr,
        "POST",
        &xhr(),
        &from("198.51.100.7, 203.0.113.1"),
        None,
    )
    .await;
    assert_eq!(r.status, 503, "the last value is the client");
    let r = request(srv.addr, "POST", &xhr(), &from("203.0.113.2"), None).await;
    assert_eq!(r.body, "o\n");
    assert_eq!(srv.metrics.snapshot().sessions_refused_address_total, 1);
}

/// `GET /ws//` and the other paths SockJS 0.3.3's `test_notFound` lists are 404s, not the
/// greeting.
#[tokio::test]
async fn double_slashes_are_not_found() {
    let srv = start(test_config()).await;
    for path in [
        "/ws//",
        "/ws///",
        "/ws/a",
        "/ws/a/",
        "/ws/a.html",
        "/ws/a/a",
        "/ws/a/a/",
    ] {
        let r = request(srv.addr, "GET", path, &[], None).await;
        assert_eq!(r.status, 404, "GET {path}");
    }
    for path in ["/ws//xhr", "/ws///xhr", "/ws/a./a/xhr", "/ws/./././xhr"] {
        assert_eq!(post(srv.addr, path, None).await.status, 404, "POST {path}");
    }
}

/// Answers with session data are never cached nor transformed by proxies; CORS preflights are
/// cacheable for a year, with an `Expires` date to say so to HTTP/1.0 caches.
#[tokio::test]
async fn cache_headers_and_preflights() {
    let srv = start(test_config()).await;
    let base = session_path();
    let poll = post(srv.addr, &format!("{base}/xhr"), None).await;
    assert_eq!(poll.body, "o\n");
    let send = post(srv.addr, &format!("{base}/xhr_send"), Some(br#"["x"]"#)).await;
    assert_eq!(send.status, 204);
    let info = request(srv.addr, "GET", "/ws/info", &[], None).await;
    let streaming = open(
        srv.addr,
        "POST",
        &format!("{}/xhr_streaming", session_path()),
        &[],
        None,
    )
    .await;
    let events = open(
        srv.addr,
        "GET",
        &format!("{}/eventsource", session_path()),
        &[],
        None,
    )
    .await;
    for (what, head) in [
        ("info", &info.head),
        ("xhr", &poll.head),
        ("xhr_send", &send.head),
        ("xhr_streaming", &streaming.head),
        ("eventsource", &events.head),
    ] {
        assert_eq!(head.header("cache-control"), Some(NOT_CACHED), "{what}");
        assert_eq!(head.header("expires"), None, "{what}");
        assert_eq!(head.header("last-modified"), None, "{what}");
    }
    assert_eq!(
        events.head.header("content-type"),
        Some("text/event-stream")
    );

    // "null" (a page on file://) is echoed only where every origin is allowed.
    let any_origin = start(SockJsConfig::default()).await;
    for (path, methods) in [
        ("/ws/info", "OPTIONS, GET"),
        (&*format!("{base}/xhr"), "OPTIONS, POST"),
        (&*format!("{base}/xhr_send"), "OPTIONS, POST"),
        (&*format!("{base}/xhr_streaming"), "OPTIONS, POST"),
    ] {
        for origin in [ALLOWED, "null"] {
            let addr = if origin == "null" {
                any_origin.addr
            } else {
                srv.addr
            };
            let r = request(
                addr,
                "OPTIONS",
                path,
                &[
                    ("Origin", origin),
                    ("Access-Control-Request-Method", "POST"),
                ],
                None,
            )
            .await;
            assert_eq!(r.status, 204, "{path}");
            assert_eq!(r.body, "");
            assert_eq!(r.header("access-control-allow-methods"), Some(methods));
            assert_eq!(r.header("access-control-allow-origin"), Some(origin));
            assert_eq!(
                r.header("cache-control"),
                Some("public, max-age=31536000"),
                "{path}"
            );
            let max_age: u64 = r
                .header("access-control-max-age")
                .and_then(|v| v.parse().ok())
                .expect("Access-Control-Max-Age");
            assert!(max_age > 1_000_000, "{path}: {max_age}");
            let expires = r
                .header("expires")
                .unwrap_or_else(|| panic!("{path}: no Expires"));
            let expires = httpdate::parse_http_date(expires).expect("Expires is an HTTP-date");
            let ahead = expires
                .duration_since(std::time::SystemTime::now())
                .expect("Expires in the future");
            assert!(
                ahead > Duration::from_secs(364 * 86_400),
                "{path}: Expires only {ahead:?} ahead"
            );
        }
    }
}

/// A poll whose client went away (its HTTP connection closed) no longer holds the session: the
/// next poll takes over at once and learns that the session was interrupted, instead of being
/// refused with 2010 while the server has not yet noticed. A live concurrent poll still gets 2010.
#[tokio::test]
async fn aborted_poll_is_taken_over() {
    let srv = start(test_config()).await;
    for round in 0..10 {
        let base = session_path();
        let r = post(srv.addr, &format!("{base}/xhr"), None).await;
        assert_eq!(r.body, "o\n");
        // A poll that waits for data, written by hand so that it can be aborted.
        let mut pending = TcpStream::connect(srv.addr).await.expect("connect");
        let req = format!(
            "POST {base}/xhr HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
            srv.addr
        );
        pending.write_all(req.as_bytes()).await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        // While it is alive, another poll is refused.
        let r = post(srv.addr, &format!("{base}/xhr"), None).await;
        assert_eq!(
            r.body, "c[2010,\"Another connection still open\"]\n",
            "round {round}"
        );
        // The client aborts it and polls again right away: the new request is on its way (all
        // but its last byte sent) when the old connection closes.
        let mut next = TcpStream::connect(srv.addr).await.expect("connect");
        let req = format!(
            "POST {base}/xhr HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\r",
            srv.addr
        );
        next.write_all(req.as_bytes()).await.expect("write");
        drop(pending);
        next.write_all(b"\n").await.expect("write");
        let mut answer = String::new();
        tokio::time::timeout(STEP, next.read_to_string(&mut answer))
            .await
            .expect("answer in time")
            .expect("read");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert_eq!(
            body, "c[1002,\"Connection interrupted\"]\n",
            "round {round}: the aborted poll still held the session"
        );
    }
}
