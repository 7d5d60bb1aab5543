//! STOMP over WebSocket (`/stomp`) against a real gateway on loopback, with a raw client so every byte
//! on the wire is ours to choose: split and batched frames, bad tokens, forbidden destinations, limits,
//! heart-beats, receipts, slow consumers and shutdown.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{TestGateway, token};
use futures_util::{SinkExt, StreamExt};
use stomp::{Command, Frame, Item, StompCodec};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::codec::Decoder;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Client {
    ws: Ws,
    codec: StompCodec,
    buf: BytesMut,
    protocol: Option<String>,
}

impl Client {
    async fn open(gw: &TestGateway) -> Client {
        let mut req = format!("ws://{}/stomp", gw.http)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            "v10.stomp, v11.stomp, v12.stomp".parse().unwrap(),
        );
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("ws connects");
        let protocol = resp
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        Client {
            ws,
            codec: StompCodec::new(stomp::Limits::default()),
            buf: BytesMut::new(),
            protocol,
        }
    }

    async fn send(&mut self, raw: &str) {
        self.ws.send(Message::text(raw)).await.expect("send");
    }

    /// Next frame, skipping heart-beats; None when the socket closed.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(Item::Frame(f))) => return Some(f),
                Ok(Some(Item::HeartBeat)) => continue,
                Ok(None) => {}
                Err(e) => panic!("server sent a bad frame: {e}"),
            }
            let msg = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("no frame within 5 s");
            match msg {
                Some(Ok(Message::Text(t))) => self.buf.extend_from_slice(t.as_bytes()),
                Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    async fn expect(&mut self, cmd: Command) -> Frame {
        let f = self
            .frame()
            .await
            .unwrap_or_else(|| panic!("socket closed, expected {cmd:?}"));
        assert_eq!(f.command, cmd, "got {:?} {:?}", f.command, f.headers);
        f
    }

    async fn expect_closed(&mut self) {
        assert!(self.frame().await.is_none(), "socket should be closed");
    }

    async fn connect(gw: &TestGateway, user: &str) -> Client {
        let mut c = Client::open(gw).await;
        let t = token(user, 3600);
        c.send(&format!(
            "CONNECT\naccept-version:1.2,1.1,1.0\nAuthorization:Bearer {t}\nheart-beat:0,0\n\n\0"
        ))
        .await;
        c.expect(Command::Connected).await;
        c
    }
}

#[tokio::test]
async fn connected_carries_the_negotiated_session_headers() {
    let gw = TestGateway::start().await;
    let mut c = Client::open(&gw).await;
    assert_eq!(c.protocol.as_deref(), Some("v12.stomp"));
    let t = token("alice01", 3600);
    c.send(&format!("CONNECT\naccept-version:1.2,1.1,1.0\nAuthorization:Bearer {t}\nheart-beat:25000,25000\n\n\0")).await;
    let f = c.expect(Command::Connected).await;
    assert_eq!(f.get("version"), Some("1.2"));
    assert_eq!(f.get("user-name"), Some("alice01"));
    assert_eq!(f.get("heart-beat"), Some("10000,10000"));
    assert!(f.get("server").unwrap().starts_with("Instar/"));
    let session = f.get("session").unwrap();
    assert!(
        session.starts_with("test-node-") && session.len() > 20,
        "{session}"
    );
}

#[tokio::test]
async fn anonymous_sessions_are_refused() {
    // The original answered CONNECTED without a token (an anonymous session): refused here.
    let gw = TestGateway::start().await;
    let mut c = Client::open(&gw).await;
    c.send("CONNECT\naccept-version:1.2\n\n\0").await;
    let e = c.expect(Command::Error).await;
    assert!(
        e.get("message").unwrap().contains("no bearer token"),
        "{:?}",
        e.get("message")
    );
    c.expect_closed().await;
}

#[tokio::test]
async fn bad_and_expired_tokens_are_refused() {
    let gw = TestGateway::start().await;
    let expired = token("bob", -10);
    let forged = gateway::auth::Verifier::new(b"wrong".to_vec()).sign(
        gateway::auth::Algorithm::Hs256,
        "bob",
        None,
        common::now(),
        common::now() + 60,
    );
    for (header, want) in [
        (format!("Authorization:Bearer {expired}"), "expired"),
        (format!("Authorization:Bearer {forged}"), "signature"),
        ("Authorization:Bearer not.a.jwt".to_owned(), "well-formed"),
        ("Authorization:Basic abc".to_owned(), "Bearer"),
    ] {
        let mut c = Client::open(&gw).await;
        c.send(&format!("CONNECT\naccept-version:1.2\n{header}\n\n\0"))
            .await;
        let e = c.expect(Command::Error).await;
        assert!(
            e.get("message").unwrap().contains(want),
            "{header}: {:?}",
            e.get("message")
        );
        c.expect_closed().await;
    }
}

#[tokio::test]
async fn token_may_come_as_passcode() {
    let gw = TestGateway::start().await;
    let mut c = Client::open(&gw).await;
    let t = token("carol", 3600);
    c.send(&format!(
        "STOMP\naccept-version:1.1\nhost:/\nlogin:carol\npasscode:{t}\n\n\0"
    ))
    .await;
    let f = c.expect(Command::Connected).await;
    assert_eq!(f.get("version"), Some("1.1"));
    assert_eq!(f.get("user-name"), Some("carol"));
}

#[tokio::test]
async fn token_expiry_closes_a_live_session() {
    // The original checked the token once; a session outlived its token forever.
    let gw = TestGateway::start().await;
    let mut c = Client::open(&gw).await;
    let t = token("dave", 1);
    c.send(&format!(
        "CONNECT\naccept-version:1.2\nAuthorization:Bearer {t}\n\n\0"
    ))
    .await;
    c.expect(Command::Connected).await;
    let e = c.expect(Command::Error).await;
    assert_eq!(e.get("message"), Some("token has expired"));
    c.expect_closed().await;
}

#[tokio::test]
async fn user_queue_message_has_the_frontend_headers() {
    let gw = TestGateway::start().await;
    let mut c = Client::connect(&gw, "alice01").await;
    c.send("SUBSCRIBE\nid:sub-0\ndestination:/user/queue/notify\nreceipt:r1\n\n\0")
        .await;
    assert_eq!(
        c.expect(Command::Receipt).await.get("receipt-id"),
        Some("r1")
    );
    gw.to_user(
        "alice01",
        "notify",
        r#"{"alarmType":"FOLLOW","senderId":"bob"}"#,
    )
    .await;
    let m = c.expect(Command::Message).await;
    assert_eq!(m.get("subscription"), Some("sub-0"));
    assert_eq!(m.get("destination"), Some("/user/queue/notify"));
    assert_eq!(m.get("content-type"), Some("application/json"));
    assert_eq!(
        m.get("content-length"),
        Some(m.body.len().to_string().as_str())
    );
    assert!(m.get("message-id").is_some());
    assert_eq!(&m.body[..], br#"{"alarmType":"FOLLOW","senderId":"bob"}"#);
    // Nobody else's notifications arrive.
    gw.to_user("mallory", "notify", "{}").await;
    gw.to_user("alice01", "notify", r#"{"n":2}"#).await;
    assert_eq!(&c.expect(Command::Message).await.body[..], br#"{"n":2}"#);
}

#[tokio::test]
async fn split_and_batched_frames() {
    let gw = TestGateway::start().await;
    let mut c = Client::open(&gw).await;
    let t = token("erin", 3600);
    let connect = format!("CONNECT\naccept-version:1.2\nAuthorization:Bearer {t}\n\n\0");
    // One frame over many WebSocket messages.
    for chunk in connect.as_bytes().chunks(7) {
        c.send(std::str::from_utf8(chunk).unwrap()).await;
    }
    c.expect(Command::Connected).await;
    // Several frames (and heart-beat EOLs) in one message.
    c.send("\nSUBSCRIBE\nid:a\ndestination:/user/queue/notify\n\n\0\nSUBSCRIBE\nid:b\ndestination:/topic/public.news\nreceipt:both\n\n\0\n").await;
    assert_eq!(
        c.expect(Command::Receipt).await.get("receipt-id"),
        Some("both")
    );
    gw.to_topic("public.news", "hello").await;
    let m = c.expect(Command::Message).await;
    assert_eq!(m.get("subscription"), Some("b"));
    assert_eq!(m.get("destination"), Some("/topic/public.news"));
}

#[tokio::test]
async fn forbidden_destinations_are_refused() {
    // Each of these was accepted by the original (realtime.md §2.8, §7 items 2-5).
    let gw = TestGateway::start().await;
    for (frame, want) in [
        (
            "SUBSCRIBE\nid:x\ndestination:/topic/chat.*\n\n\0",
            "not authorised",
        ),
        (
            "SUBSCRIBE\nid:x\ndestination:/topic/#\n\n\0",
            "not authorised",
        ),
        (
            "SUBSCRIBE\nid:x\ndestination:/topic/chat.12\n\n\0",
            "not authorised",
        ),
        (
            "SUBSCRIBE\nid:x\ndestination:/queue/notify-userk3b0a1zq\n\n\0",
            "not authorised",
        ),
        (
            "SUBSCRIBE\nid:x\ndestination:/user/bob/queue/notify\n\n\0",
            "SUBSCRIBE only",
        ),
        (
            "SEND\ndestination:/topic/chat.12\n\n{\"senderId\":\"bob\"}\0",
            "not authorised to send",
        ),
        (
            "SEND\ndestination:/user/bob/queue/notify\n\n{}\0",
            "SEND only",
        ),
        (
            "SEND\ndestination:/queue/notify-userk3b0a1zq\n\n{}\0",
            "not authorised to send",
        ),
        (
            "SUBSCRIBE\nid:x\ndestination:/topic/chat*\n\n\0",
            "invalid destination",
        ),
    ] {
        let mut c = Client::connect(&gw, "mallory").await;
        c.send(frame).await;
        let e = c.expect(Command::Error).await;
        assert!(
            e.get("message").unwrap().contains(want),
            "{frame:?}: {:?}",
            e.get("message")
        );
        c.expect_closed().await;
    }
}

#[tokio::test]
async fn app_commands_carry_our_principal_not_the_clients() {
    let mut gw = TestGateway::start().await;
    let mut c = Client::connect(&gw, "alice01").await;
    c.send("SEND\ndestination:/app/send\nuser-name:bob\nContent-type:application/json\nreceipt:s1\n\n{\"chatRoomId\":12,\"message\":\"안녕\"}\0").await;
    assert_eq!(
        c.expect(Command::Receipt).await.get("receipt-id"),
        Some("s1")
    );
    let cmd = tokio::time::timeout(Duration::from_secs(5), gw.commands.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cmd.destination, "/app/send");
    assert_eq!(cmd.principal, "alice01");
    assert!(
        cmd.headers.iter().all(|(k, _)| k != "user-name"),
        "forged identity header dropped"
    );
    assert!(
        cmd.headers
            .iter()
            .any(|(k, v)| k == "Content-type" && v == "application/json")
    );
    assert_eq!(
        std::str::from_utf8(&cmd.body).unwrap(),
        "{\"chatRoomId\":12,\"message\":\"안녕\"}"
    );
}

#[tokio::test]
async fn transactions_hold_sends_until_commit() {
    let mut gw = TestGateway::start().await;
    let mut c = Client::connect(&gw, "alice01").await;
    c.send("BEGIN\ntransaction:t1\n\n\0SEND\ndestination:/app/a\ntransaction:t1\n\n1\0SEND\ndestination:/app/b\ntransaction:t1\n\n2\0").await;
    c.send("BEGIN\ntransaction:t2\n\n\0SEND\ndestination:/app/c\ntransaction:t2\n\n3\0ABORT\ntransaction:t2\n\n\0").await;
    c.send("SEND\ndestination:/app/marker\nreceipt:m\n\n\0")
        .await;
    c.expect(Command::Receipt).await;
    assert_eq!(gw.commands.recv().await.unwrap().destination, "/app/marker");
    c.send("COMMIT\ntransaction:t1\nreceipt:c1\n\n\0").await;
    assert_eq!(
        c.expect(Command::Receipt).await.get("receipt-id"),
        Some("c1")
    );
    assert_eq!(gw.commands.recv().await.unwrap().destination, "/app/a");
    assert_eq!(gw.commands.recv().await.unwrap().destination, "/app/b");
    c.send("COMMIT\ntransaction:t2\n\n\0").await;
    assert!(
        c.expect(Command::Error)
            .await
            .get("message")
            .unwrap()
            .contains("unknown transaction")
    );
}

#[tokio::test]
async fn client_ack_accepts_only_delivered_ids() {
    let gw = TestGateway::start().await;
    let mut c = Client::connect(&gw, "alice01").await;
    c.send("SUBSCRIBE\nid:s\ndestination:/topic/public.x\nack:client-individual\nreceipt:r\n\n\0")
        .await;
    c.expect(Command::Receipt).await;
    gw.to_topic("public.x", "one").await;
    let m = c.expect(Command::Message).await;
    let ack = m.get("ack").expect("ack header in client mode").to_owned();
    c.send(&format!("ACK\nid:{ack}\nreceipt:a1\n\n\0")).await;
    assert_eq!(
        c.expect(Command::Receipt).await.get("receipt-id"),
        Some("a1")
    );
    c.send("NACK\nid:0-99\nreceipt:a2\n\n\0").await;
    let e = c.expect(Command::Error).await;
    assert_eq!(e.get("receipt-id"), Some("a2"));
    assert!(e.get("message").unwrap().contains("awaits acknowledgement"));
}

#[tokio::test]
async fn oversized_frames_are_refused() {
    let gw = TestGateway::start_with(|c| c.limits.max_body_bytes = 1024).await;
    let mut c = Client::connect(&gw, "alice01").await;
    // A declared content-length over the limit fails before the body arrives.
    c.send("SEND\ndestination:/app/x\ncontent-length:999999\n\n")
        .await;
    let e = c.expect(Command::Error).await;
    assert!(
        e.get("message").unwrap().starts_with("malformed frame"),
        "{:?}",
        e.get("message")
    );
    c.expect_closed().await;
    // A NUL-terminated body that runs past the limit.
    let mut c = Client::connect(&gw, "alice01").await;
    c.send(&format!("SEND\ndestination:/app/x\n\n{}", "x".repeat(2000)))
        .await;
    c.expect(Command::Error).await;
    c.expect_closed().await;
}

#[tokio::test]
async fn malformed_frames_get_an_error() {
    let gw = TestGateway::start().await;
    for raw in ["BOGUS\n\n\0", "SEND\nno-colon-here\n\n\0"] {
        let mut c = Client::connect(&gw, "alice01").await;
        c.send(raw).await;
        let e = c.expect(Command::Error).await;
        assert!(
            e.get("message").unwrap().starts_with("malformed frame"),
            "{raw:?}"
        );
        c.expect_closed().await;
    }
    // A frame before CONNECT.
    let mut c = Client::open(&gw).await;
    c.send("SUBSCRIBE\nid:1\ndestination:/topic/public.a\nreceipt:z\n\n\0")
        .await;
    let e = c.expect(Command::Error).await;
    assert_eq!(e.get("message"), Some("not connected"));
    assert_eq!(e.get("receipt-id"), Some("z"));
}

#[tokio::test]
async fn disconnect_receipt_arrives_before_close() {
    let gw = TestGateway::start().await;
    let mut c = Client::connect(&gw, "alice01").await;
    gw.wait_online("alice01").await;
    c.send("DISCONNECT\nreceipt:close-1\n\n\0").await;
    assert_eq!(
        c.expect(Command::Receipt).await.get("receipt-id"),
        Some("close-1")
    );
    c.expect_closed().await;
    // The registry forgets the session.
    for _ in 0..100 {
        if !gw.bus.registry().is_online("alice01").await.unwrap() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("session still registered after DISCONNECT");
}

#[tokio::test]
async fn heartbeats_are_sent_and_silence_is_punished() {
    let gw = TestGateway::start_with(|c| c.session.heartbeat = (100, 100)).await;
    let mut c = Client::open(&gw).await;
    let t = token("alice01", 3600);
    // The client promises to beat every 100 ms and wants beats every 100 ms.
    c.send(&format!(
        "CONNECT\naccept-version:1.2\nAuthorization:Bearer {t}\nheart-beat:100,100\n\n\0"
    ))
    .await;
    c.expect(Command::Connected).await;
    // Server beats arrive as bare EOLs.
    let msg = tokio::time::timeout(Duration::from_secs(2), c.ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(msg.into_data().as_ref(), b"\n");
    // We stay silent: the server closes after 1.5 x 100 ms.
    let started = std::time::Instant::now();
    c.expect_closed().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        gw.gw
            .metrics
            .heartbeat_timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn connect_must_come_in_time() {
    let gw = TestGateway::start_with(|c| c.connect_timeout = Duration::from_millis(200)).await;
    let mut c = Client::open(&gw).await;
    let e = c.expect(Command::Error).await;
    assert_eq!(e.get("message"), Some("CONNECT not received in time"));
    c.expect_closed().await;
}

#[tokio::test]
async fn slow_consumer_is_closed_while_others_keep_receiving() {
    let gw = TestGateway::start_with(|c| c.outbound_queue = 8).await;
    let mut fast = Client::connect(&gw, "fast").await;
    fast.send("SUBSCRIBE\nid:f\ndestination:/topic/public.flood\nreceipt:r\n\n\0")
        .await;
    fast.expect(Command::Receipt).await;
    // The slow client subscribes and then never reads its socket.
    let mut slow = Client::connect(&gw, "slow").await;
    slow.send("SUBSCRIBE\nid:s\ndestination:/topic/public.flood\nreceipt:r\n\n\0")
        .await;
    slow.expect(Command::Receipt).await;
    let body = "x".repeat(16 * 1024);
    let mut received = 0;
    for _ in 0..400 {
        gw.to_topic("public.flood", &body).await;
        // The fast client keeps up.
        fast.expect(Command::Message).await;
        received += 1;
    }
    assert_eq!(received, 400);
    assert!(
        gw.gw
            .hub
            .metrics
            .slow_consumers
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // The slow session is closed and leaves the topic; the fast one stays.
    for _ in 0..500 {
        if gw.gw.hub.topic_subscribers("public.flood") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        gw.gw.hub.topic_subscribers("public.flood"),
        1,
        "slow session left the topic"
    );
    gw.to_topic("public.flood", "still here").await;
    assert_eq!(&fast.expect(Command::Message).await.body[..], b"still here");
    // The verdict is visible to operators.
    let metrics = http_get(gw.http, "/metrics").await;
    assert!(
        metrics.contains("instar_slow_consumers_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE instar_sessions_open gauge"));
    drop(slow);
}

#[tokio::test]
async fn shutdown_drains_queued_messages_then_closes() {
    let gw = TestGateway::start().await;
    let mut c = Client::connect(&gw, "alice01").await;
    c.send("SUBSCRIBE\nid:n\ndestination:/user/queue/notify\nreceipt:r\n\n\0")
        .await;
    c.expect(Command::Receipt).await;
    for i in 0..20 {
        gw.to_user("alice01", "notify", &format!("{{\"i\":{i}}}"))
            .await;
    }
    gw.gw.drain(Duration::from_secs(5)).await;
    for i in 0..20 {
        let m = c.expect(Command::Message).await;
        assert_eq!(
            std::str::from_utf8(&m.body).unwrap(),
            format!("{{\"i\":{i}}}")
        );
    }
    assert_eq!(
        c.expect(Command::Error).await.get("message"),
        Some("server shutting down")
    );
    c.expect_closed().await;
    assert_eq!(gw.gw.open_sessions(), 0);
}

#[tokio::test]
async fn session_ids_are_server_chosen_and_unique() {
    let gw = TestGateway::start().await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        let mut c = Client::open(&gw).await;
        let t = token("alice01", 3600);
        c.send(&format!(
            "CONNECT\naccept-version:1.2\nAuthorization:Bearer {t}\nsession:attacker-chosen\n\n\0"
        ))
        .await;
        let f = c.expect(Command::Connected).await;
        assert!(ids.insert(f.get("session").unwrap().to_owned()));
    }
    assert!(!ids.iter().any(|s| s.contains("attacker")));
}

/// A plain HTTP/1.1 GET; returns the whole response.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
