//! The gateway as a broker for clients' own publish/subscribe (docs/gateway.md, "Destination
//! rules", "Queues"): topics and queues opened by destination rules, wildcard subscriptions, and
//! queues with competing consumers, acknowledgements, redelivery, prefetch and transactions. Raw
//! STOMP 1.2 over TCP against the embedded (in-process) bus.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{TestGateway, token};
use futures_util::{SinkExt, StreamExt};
use gateway::destination::TopicPolicy;
use gateway::rules::Destinations;
use stomp::{Command, Frame, Item, StompCodec};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

type Conn = Framed<TcpStream, StompCodec>;

const RULES: &str = r#"[
  {"prefix": "/topic/", "subscribe": "signed-in", "send": "signed-in", "wildcards": true},
  {"prefix": "/topic/locked.", "subscribe": "nobody", "send": "signed-in"},
  {"prefix": "/queue/", "subscribe": "signed-in", "send": "signed-in"},
  {"prefix": "/queue/admin.", "subscribe": "role:ADMIN", "send": "role:ADMIN"}
]"#;

/// Stands in for the chat service's policy: `chat.*` topics belong to the application.
struct ChatOwned;

#[async_trait]
impl TopicPolicy for ChatOwned {
    async fn may_subscribe(&self, user: Option<&str>, topic: &str) -> bool {
        user == Some("member") && topic.starts_with("chat.")
    }
    fn owns(&self, topic: &str) -> bool {
        topic.starts_with("chat.")
    }
}

async fn broker() -> TestGateway {
    TestGateway::start_full(
        |c| c.session.destinations = Arc::new(Destinations::from_json(RULES).unwrap()),
        |_| Arc::new(ChatOwned),
    )
    .await
}

async fn connect(gw: &TestGateway, user: &str) -> Conn {
    let stream = TcpStream::connect(gw.tcp).await.unwrap();
    let mut c = Framed::new(stream, StompCodec::default());
    c.send(
        Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("Authorization", format!("Bearer {}", token(user, 3600))),
    )
    .await
    .unwrap();
    let f = next(&mut c).await.expect("CONNECTED");
    assert_eq!(f.command, Command::Connected, "{f:?}");
    c
}

async fn next_within(c: &mut Conn, wait: Duration) -> Option<Frame> {
    loop {
        match tokio::time::timeout(wait, c.next()).await {
            Ok(Some(Ok(Item::Frame(f)))) => return Some(f),
            Ok(Some(Ok(Item::HeartBeat))) => continue,
            _ => return None,
        }
    }
}

async fn next(c: &mut Conn) -> Option<Frame> {
    next_within(c, Duration::from_secs(5)).await
}

/// Sends `frame` with a receipt and waits for that RECEIPT (failing on anything else).
async fn confirmed(c: &mut Conn, frame: Frame) {
    let r = format!("r-{}", rand_id());
    c.send(frame.header("receipt", &r)).await.unwrap();
    let f = next(c).await.expect("an answer");
    assert_eq!(f.command, Command::Receipt, "{f:?}");
    assert_eq!(f.get("receipt-id"), Some(r.as_str()));
}

fn rand_id() -> String {
    gateway::random_id(8)
}

async fn subscribe(c: &mut Conn, id: &str, dest: &str, ack: &str, extra: &[(&str, &str)]) {
    let mut f = Frame::new(Command::Subscribe)
        .header("id", id)
        .header("destination", dest)
        .header("ack", ack);
    for (k, v) in extra {
        f = f.header(k, v);
    }
    confirmed(c, f).await;
}

fn send(dest: &str, body: &str) -> Frame {
    Frame::new(Command::Send)
        .header("destination", dest)
        .header("content-type", "text/plain")
        .with_body(body.to_owned())
}

fn body(f: &Frame) -> String {
    String::from_utf8(f.body.to_vec()).unwrap()
}

async fn message(c: &mut Conn) -> Frame {
    let f = next(c).await.expect("a MESSAGE");
    assert_eq!(f.command, Command::Message, "{f:?}");
    f
}

/// ACKs or NACKs a message (without a receipt: the queue may deliver the next message before the
/// RECEIPT would come; a refused ACK shows as an ERROR where the next frame is read).
async fn ack(c: &mut Conn, f: &Frame, command: Command) {
    let id = f.get("ack").expect("an ack header").to_owned();
    c.send(Frame::new(command).header("id", id)).await.unwrap();
}

/// The ERROR a frame gets, with its message.
async fn refused(c: &mut Conn, frame: Frame) -> String {
    c.send(frame).await.unwrap();
    let f = next(c).await.expect("an ERROR");
    assert_eq!(f.command, Command::Error, "{f:?}");
    f.get("message").unwrap_or("").to_owned()
}

#[tokio::test]
async fn clients_publish_and_subscribe_where_rules_allow() {
    let gw = broker().await;
    let mut exact = connect(&gw, "ann").await;
    let mut wild = connect(&gw, "bob").await;
    let mut publisher = connect(&gw, "cid").await;
    subscribe(&mut exact, "e", "/topic/demo.a", "auto", &[]).await;
    subscribe(&mut wild, "w", "/topic/#", "auto", &[]).await;
    // Headers travel (escaped ones too), and the client cannot forge identity headers.
    confirmed(
        &mut publisher,
        send("/topic/demo.a", "héllo 1")
            .header("x-trace", "a:b\\c\nd")
            .header("user-name", "forged"),
    )
    .await;
    for c in [&mut exact, &mut wild] {
        let m = message(c).await;
        assert_eq!(m.get("destination"), Some("/topic/demo.a"));
        assert_eq!(m.get("x-trace"), Some("a:b\\c\nd"));
        assert_eq!(m.get("user-name"), None);
        assert_eq!(m.get("content-type"), Some("text/plain"));
        assert_eq!(body(&m), "héllo 1");
    }
    // The application's topics are the application's: a wildcard never sees them, and clients
    // cannot publish to them, whatever the rules say.
    gw.to_topic("chat.5", "room message").await;
    confirmed(&mut publisher, send("/topic/demo.b.c", "2")).await;
    assert_eq!(body(&message(&mut wild).await), "2");
    assert!(
        refused(&mut publisher, send("/topic/chat.5", "forged"))
            .await
            .contains("not authorised to send")
    );
    // Ordered delivery from one publisher.
    let mut p2 = connect(&gw, "cid").await;
    for i in 0..50 {
        p2.send(send("/topic/demo.a", &i.to_string()))
            .await
            .unwrap();
    }
    for i in 0..50 {
        assert_eq!(body(&message(&mut exact).await), i.to_string());
    }
    // Counted on /metrics: 2 + 50 accepted client publishes so far.
    assert!(
        gw.gw
            .metrics_text()
            .contains("instar_client_published_total 52"),
        "{}",
        gw.gw.metrics_text()
    );
    // Unsubscribed: nothing more.
    confirmed(
        &mut exact,
        Frame::new(Command::Unsubscribe).header("id", "e"),
    )
    .await;
    confirmed(&mut p2, send("/topic/demo.a", "after")).await;
    assert!(
        next_within(&mut exact, Duration::from_millis(300))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn rules_refuse_what_they_do_not_open() {
    let gw = broker().await;
    let cases: Vec<(Frame, &str)> = vec![
        (
            Frame::new(Command::Subscribe)
                .header("id", "x")
                .header("destination", "/topic/locked.a"),
            "not authorised to subscribe",
        ),
        (
            Frame::new(Command::Subscribe)
                .header("id", "x")
                .header("destination", "/queue/admin.jobs"),
            "not authorised to subscribe",
        ),
        (send("/queue/admin.jobs", "x"), "not authorised to send"),
        (
            Frame::new(Command::Subscribe)
                .header("id", "x")
                .header("destination", "/queue/jobs")
                .header("prefetch-count", "0"),
            "prefetch-count",
        ),
        (send("/exchange/amq.topic/x", "x"), "clients may SEND only"),
    ];
    for (frame, why) in cases {
        let mut c = connect(&gw, "ann").await;
        let msg = refused(&mut c, frame).await;
        assert!(msg.contains(why), "{msg}");
    }
    // Without rules (the default) none of it exists.
    let plain = TestGateway::start().await;
    for frame in [
        send("/queue/jobs", "x"),
        send("/topic/public.x", "x"),
        Frame::new(Command::Subscribe)
            .header("id", "x")
            .header("destination", "/queue/jobs"),
        Frame::new(Command::Subscribe)
            .header("id", "x")
            .header("destination", "/topic/public.*"),
    ] {
        let mut c = connect(&plain, "ann").await;
        let msg = refused(&mut c, frame).await;
        assert!(msg.contains("not authorised"), "{msg}");
    }
}

#[tokio::test]
async fn a_queue_shares_its_messages_round_robin() {
    let gw = broker().await;
    let mut a = connect(&gw, "ann").await;
    let mut b = connect(&gw, "bob").await;
    let mut p = connect(&gw, "cid").await;
    subscribe(&mut a, "qa", "/queue/work", "client-individual", &[]).await;
    subscribe(&mut b, "qb", "/queue/work", "client-individual", &[]).await;
    for i in 0..10 {
        confirmed(&mut p, send("/queue/work", &i.to_string())).await;
    }
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    for _ in 0..5 {
        let m = message(&mut a).await;
        assert_eq!(m.get("redelivered"), Some("false"));
        assert_eq!(m.get("subscription"), Some("qa"));
        got_a.push(body(&m).parse::<u32>().unwrap());
        ack(&mut a, &m, Command::Ack).await;
        let m = message(&mut b).await;
        got_b.push(body(&m).parse::<u32>().unwrap());
        ack(&mut b, &m, Command::Ack).await;
    }
    assert_eq!(got_a, [0, 2, 4, 6, 8]);
    assert_eq!(got_b, [1, 3, 5, 7, 9]);
    assert!(
        next_within(&mut a, Duration::from_millis(200))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn nacked_and_abandoned_messages_are_redelivered() {
    let gw = broker().await;
    let mut a = connect(&gw, "ann").await;
    let mut p = connect(&gw, "cid").await;
    subscribe(&mut a, "qa", "/queue/redo", "client-individual", &[]).await;
    confirmed(&mut p, send("/queue/redo", "one")).await;
    let m = message(&mut a).await;
    assert_eq!(m.get("redelivered"), Some("false"));
    ack(&mut a, &m, Command::Nack).await;
    let again = message(&mut a).await;
    assert_eq!(
        (body(&again).as_str(), again.get("redelivered")),
        ("one", Some("true"))
    );
    // A second subscriber; the first leaves without acknowledging: the message goes to the other.
    let mut b = connect(&gw, "bob").await;
    subscribe(&mut b, "qb", "/queue/redo", "client", &[]).await;
    drop(a);
    let m = message(&mut b).await;
    assert_eq!(
        (body(&m).as_str(), m.get("redelivered")),
        ("one", Some("true"))
    );
    // NACK with requeue:false drops it.
    let id = m.get("ack").unwrap().to_owned();
    confirmed(
        &mut b,
        Frame::new(Command::Nack)
            .header("id", id)
            .header("requeue", "false"),
    )
    .await;
    assert!(
        next_within(&mut b, Duration::from_millis(300))
            .await
            .is_none()
    );
    // Acknowledging a message twice, or one never delivered, is an error.
    confirmed(&mut p, send("/queue/redo", "two")).await;
    let m = message(&mut b).await;
    ack(&mut b, &m, Command::Ack).await;
    let msg = refused(&mut b, Frame::new(Command::Ack).header("id", "0-99")).await;
    assert!(msg.contains("awaits acknowledgement"), "{msg}");
}

#[tokio::test]
async fn prefetch_bounds_unacknowledged_messages_and_client_ack_is_cumulative() {
    let gw = broker().await;
    let mut a = connect(&gw, "ann").await;
    let mut p = connect(&gw, "cid").await;
    subscribe(
        &mut a,
        "qa",
        "/queue/slow",
        "client",
        &[("prefetch-count", "2")],
    )
    .await;
    for i in 0..5 {
        confirmed(&mut p, send("/queue/slow", &i.to_string())).await;
    }
    let m0 = message(&mut a).await;
    let m1 = message(&mut a).await;
    assert_eq!((body(&m0), body(&m1)), ("0".into(), "1".into()));
    assert!(
        next_within(&mut a, Duration::from_millis(300))
            .await
            .is_none()
    );
    // One cumulative ACK of the second settles both: two more come.
    ack(&mut a, &m1, Command::Ack).await;
    let m2 = message(&mut a).await;
    let m3 = message(&mut a).await;
    assert_eq!((body(&m2), body(&m3)), ("2".into(), "3".into()));
    assert!(
        next_within(&mut a, Duration::from_millis(300))
            .await
            .is_none()
    );
    // Leaving now returns 2 and 3 (never acknowledged) before 4.
    drop(a);
    let mut b = connect(&gw, "bob").await;
    subscribe(&mut b, "qb", "/queue/slow", "auto", &[]).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let m = message(&mut b).await;
        assert_eq!(m.get("ack"), None, "ack:auto messages carry no ack header");
        seen.push((body(&m), m.get("redelivered").map(str::to_owned)));
    }
    assert_eq!(
        seen,
        [
            ("2".to_owned(), Some("true".to_owned())),
            ("3".to_owned(), Some("true".to_owned())),
            ("4".to_owned(), Some("false".to_owned()))
        ]
    );
}

#[tokio::test]
async fn transactions_hold_sends_and_acks_until_commit() {
    let gw = broker().await;
    let mut a = connect(&gw, "ann").await;
    let mut p = connect(&gw, "cid").await;
    subscribe(&mut a, "qa", "/queue/tx", "client-individual", &[]).await;
    subscribe(&mut a, "ta", "/topic/tx.news", "auto", &[]).await;
    // Aborted: nothing is delivered.
    confirmed(
        &mut p,
        Frame::new(Command::Begin).header("transaction", "t1"),
    )
    .await;
    for dest in ["/queue/tx", "/topic/tx.news"] {
        confirmed(&mut p, send(dest, "aborted").header("transaction", "t1")).await;
    }
    confirmed(
        &mut p,
        Frame::new(Command::Abort).header("transaction", "t1"),
    )
    .await;
    assert!(
        next_within(&mut a, Duration::from_millis(300))
            .await
            .is_none()
    );
    // Committed: delivered, in order.
    confirmed(
        &mut p,
        Frame::new(Command::Begin).header("transaction", "t2"),
    )
    .await;
    for (dest, b) in [
        ("/queue/tx", "q1"),
        ("/topic/tx.news", "t1"),
        ("/queue/tx", "q2"),
    ] {
        confirmed(&mut p, send(dest, b).header("transaction", "t2")).await;
    }
    assert!(
        next_within(&mut a, Duration::from_millis(200))
            .await
            .is_none()
    );
    confirmed(
        &mut p,
        Frame::new(Command::Commit).header("transaction", "t2"),
    )
    .await;
    let mut bodies = Vec::new();
    let mut acks = Vec::new();
    for _ in 0..3 {
        let m = message(&mut a).await;
        if let Some(id) = m.get("ack") {
            acks.push(id.to_owned());
        }
        bodies.push(body(&m));
    }
    // In order per destination (a queue and a topic are delivered by different paths).
    let queue: Vec<&str> = bodies
        .iter()
        .map(String::as_str)
        .filter(|b| b.starts_with('q'))
        .collect();
    assert_eq!(queue, ["q1", "q2"], "{bodies:?}");
    assert!(bodies.iter().any(|b| b == "t1"), "{bodies:?}");
    // An ACK in an aborted transaction settles nothing: the message comes back after a leave.
    confirmed(
        &mut a,
        Frame::new(Command::Begin).header("transaction", "t3"),
    )
    .await;
    for id in &acks {
        confirmed(
            &mut a,
            Frame::new(Command::Ack)
                .header("id", id)
                .header("transaction", "t3"),
        )
        .await;
    }
    confirmed(
        &mut a,
        Frame::new(Command::Abort).header("transaction", "t3"),
    )
    .await;
    // The first is acknowledged for real; the second stays unacknowledged.
    confirmed(&mut a, Frame::new(Command::Ack).header("id", &acks[0])).await;
    drop(a);
    let mut b = connect(&gw, "bob").await;
    subscribe(&mut b, "qb", "/queue/tx", "auto", &[]).await;
    let m = message(&mut b).await;
    assert_eq!(
        (body(&m).as_str(), m.get("redelivered")),
        ("q2", Some("true"))
    );
    assert!(
        next_within(&mut b, Duration::from_millis(300))
            .await
            .is_none()
    );
}
