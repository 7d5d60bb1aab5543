//! The WebSocket close handshake (RFC 6455 §5.5.1, §7.4) on every WebSocket endpoint of a real
//! gateway: `/stomp`, SockJS's raw `/ws/websocket` and the SockJS-framed
//! `/ws/<server>/<session>/websocket`.
//!
//! - A client's Close is answered with a Close echoing its code before the server closes TCP (a
//!   browser otherwise reports 1006, `wasClean=false`).
//! - A connection the server fails ends with a Close carrying the reason's status: 1009 for a
//!   message over the limit, 1007 for a text message that is not UTF-8, 1002 after a STOMP ERROR.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TestGateway, token};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, Utf8Bytes};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const STEP: Duration = Duration::from_secs(5);

/// The three WebSocket endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// `/stomp`: STOMP frames are the WebSocket messages.
    Stomp,
    /// `/ws/websocket`: SockJS's raw WebSocket, STOMP frames as text messages.
    Raw,
    /// `/ws/000/<session>/websocket`: SockJS frames (`o`, `a[...]`, `c[...]`) around STOMP.
    Framed,
}

const ALL: [Endpoint; 3] = [Endpoint::Stomp, Endpoint::Raw, Endpoint::Framed];

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Stomp => "/stomp",
            Endpoint::Raw => "/ws/websocket",
            Endpoint::Framed => "/ws/000/sessid/websocket",
        }
    }

    /// A STOMP frame as this endpoint carries it.
    fn wrap(self, stomp: &str) -> String {
        match self {
            Endpoint::Framed => serde_json::to_string(&[stomp]).unwrap(),
            _ => stomp.to_owned(),
        }
    }
}

async fn open(gw: &TestGateway, ep: Endpoint) -> Ws {
    let mut req = format!("ws://{}{}", gw.http, ep.path())
        .into_client_request()
        .unwrap();
    if ep == Endpoint::Stomp {
        req.headers_mut()
            .insert("sec-websocket-protocol", "v12.stomp".parse().unwrap());
    }
    let (mut ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(req))
        .await
        .expect("connects in time")
        .expect("ws connects");
    if ep == Endpoint::Framed {
        assert_eq!(text(&mut ws).await.as_deref(), Some("o"));
    }
    ws
}

/// Next text message (SockJS heart-beats skipped); `None` when a Close or the end came instead.
async fn text(ws: &mut Ws) -> Option<String> {
    loop {
        let msg = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("a message in time");
        match msg {
            Some(Ok(Message::Text(t))) if t.as_str() == "h" => {}
            Some(Ok(Message::Text(t))) => return Some(t.to_string()),
            Some(Ok(Message::Binary(b))) => return Some(String::from_utf8_lossy(&b).into_owned()),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
        }
    }
}

/// Reads until the server's Close frame and returns it; an error if the connection ends without
/// one, or if the server does not close the TCP connection after it.
async fn close_frame(ws: &mut Ws) -> Result<CloseFrame, String> {
    let frame = loop {
        let Ok(msg) = tokio::time::timeout(STEP, ws.next()).await else {
            return Err(format!("no Close within {STEP:?}"));
        };
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => break frame,
            Some(Ok(Message::Close(None))) => return Err("Close without a status code".into()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("connection ended without a Close frame: {e}")),
            None => return Err("connection ended without a Close frame".into()),
        }
    };
    // Nothing follows: the server closes the TCP connection.
    match tokio::time::timeout(STEP, ws.next()).await {
        Err(_) => Err("TCP not closed after the Close".into()),
        Ok(Some(Ok(m @ (Message::Text(_) | Message::Binary(_))))) => {
            Err(format!("data after the Close: {m:?}"))
        }
        Ok(_) => Ok(frame),
    }
}

/// Checks the Close that ends `ws` has `code`; returns what went wrong otherwise.
async fn expect_close(ws: &mut Ws, ep: Endpoint, code: CloseCode) -> Option<String> {
    match close_frame(ws).await {
        Ok(f) if f.code == code => None,
        Ok(f) => Some(format!("{ep:?}: Close {f:?}, expected {code:?}")),
        Err(e) => Some(format!("{ep:?}: {e}")),
    }
}

fn report(failures: Vec<String>) {
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

async fn stomp_connect(gw: &TestGateway, ws: &mut Ws, ep: Endpoint) {
    let t = token("alice01", 3600);
    let connect =
        format!("CONNECT\naccept-version:1.2\nAuthorization:Bearer {t}\nheart-beat:0,0\n\n\0");
    ws.send(Message::text(ep.wrap(&connect))).await.unwrap();
    let connected = text(ws).await.expect("CONNECTED");
    assert!(connected.contains("CONNECTED"), "{ep:?}: {connected:?}");
    gw.wait_online("alice01").await;
}

#[tokio::test]
async fn a_clients_close_is_answered_with_its_code() {
    let gw = TestGateway::start().await;
    let mut failures = Vec::new();
    for ep in ALL {
        for (connected, code) in [
            (false, CloseCode::Normal),
            (true, CloseCode::Normal),
            (true, CloseCode::Away),
        ] {
            let mut ws = open(&gw, ep).await;
            if connected {
                stomp_connect(&gw, &mut ws, ep).await;
            }
            ws.send(Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static("bye"),
            })))
            .await
            .unwrap();
            failures.extend(expect_close(&mut ws, ep, code).await);
        }
    }
    report(failures);
}

#[tokio::test]
async fn a_message_over_the_limit_gets_1009() {
    let gw = TestGateway::start_with(|c| c.max_ws_message = 4096).await;
    let mut failures = Vec::new();
    for ep in ALL {
        let mut ws = open(&gw, ep).await;
        stomp_connect(&gw, &mut ws, ep).await;
        let big = format!("SEND\ndestination:/app/x\n\n{}\0", "x".repeat(6000));
        ws.send(Message::text(ep.wrap(&big))).await.unwrap();
        failures.extend(expect_close(&mut ws, ep, CloseCode::Size).await);
    }
    report(failures);
}

#[tokio::test]
async fn a_text_message_that_is_not_utf8_gets_1007() {
    let gw = TestGateway::start().await;
    let mut failures = Vec::new();
    for ep in ALL {
        let mut ws = open(&gw, ep).await;
        stomp_connect(&gw, &mut ws, ep).await;
        let bad = Frame::message(
            vec![b'[', b'"', 0xff, 0xfe, b'"', b']'],
            OpCode::Data(OpData::Text),
            true,
        );
        ws.send(Message::Frame(bad)).await.unwrap();
        failures.extend(expect_close(&mut ws, ep, CloseCode::Invalid).await);
    }
    // SockJS: broken JSON ends the session abruptly (no `c[...]` frame), with a Close 1007.
    let mut ws = open(&gw, Endpoint::Framed).await;
    ws.send(Message::text(r#"["CONNECT"#)).await.unwrap();
    failures.extend(expect_close(&mut ws, Endpoint::Framed, CloseCode::Invalid).await);
    // Raw: a binary message that is not UTF-8 cannot be a text message's STOMP frame.
    let mut ws = open(&gw, Endpoint::Raw).await;
    ws.send(Message::binary(vec![0xff, 0xfe])).await.unwrap();
    failures.extend(expect_close(&mut ws, Endpoint::Raw, CloseCode::Invalid).await);
    report(failures);
}

#[tokio::test]
async fn a_stomp_error_is_followed_by_1002() {
    let gw = TestGateway::start().await;
    let mut failures = Vec::new();
    for ep in ALL {
        let mut ws = open(&gw, ep).await;
        stomp_connect(&gw, &mut ws, ep).await;
        ws.send(Message::text(ep.wrap("BOGUS\n\n\0")))
            .await
            .unwrap();
        let error = text(&mut ws).await.expect("ERROR frame");
        assert!(error.contains("ERROR"), "{ep:?}: {error:?}");
        if ep == Endpoint::Framed {
            let c = text(&mut ws).await.expect("SockJS close frame");
            assert!(c.starts_with("c[1002,"), "{c:?}");
        }
        failures.extend(expect_close(&mut ws, ep, CloseCode::Protocol).await);
    }
    report(failures);
}

#[tokio::test]
async fn a_malformed_frame_gets_1002() {
    let gw = TestGateway::start().await;
    let mut failures = Vec::new();
    for ep in ALL {
        let mut ws = open(&gw, ep).await;
        stomp_connect(&gw, &mut ws, ep).await;
        // A reserved bit set without an extension that defines it (RFC 6455 §5.2).
        let mut bad = Frame::message(ep.wrap("\n"), OpCode::Data(OpData::Text), true);
        bad.header_mut().rsv1 = true;
        ws.send(Message::Frame(bad)).await.unwrap();
        failures.extend(expect_close(&mut ws, ep, CloseCode::Protocol).await);
    }
    report(failures);
}
