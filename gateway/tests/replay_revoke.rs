//! Missed-message replay on SUBSCRIBE and revoke controls, over STOMP/TCP against a real gateway
//! with the in-process bus. The policy here is a scripted message history; the chat service's own
//! (database-backed) one is tested end to end in the root crate.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use broker_bridge::{Bus, Envelope, Target};
use bytes::Bytes;
use common::{TestGateway, token};
use futures_util::{SinkExt, StreamExt};
use gateway::destination::TopicPolicy;
use gateway::hub::{CONTROL_HEADER, CONTROL_QUEUE, CONTROL_TOPIC_HEADER};
use gateway::replay::{ID_HEADER, LAST_ID_HEADER, REPLAYED_HEADER, ReplayError, Replayed};
use parking_lot::Mutex;
use stomp::{Command, Frame, Item, StompCodec};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// A room history: `chat.*` topics for everyone, replay from `messages`. On its first read it
/// publishes `live_during_read` (id, body) to the topic, as messages committed concurrently would be.
struct History {
    bus: Bus,
    messages: Mutex<Vec<(u64, String)>>,
    live_during_read: Mutex<Vec<(u64, String)>>,
    reads: Mutex<usize>,
}

fn chat_envelope(topic: &str, id: u64, body: &str) -> Envelope {
    Envelope {
        destination: format!("/topic/{topic}"),
        content_type: Some("application/json".into()),
        headers: vec![(ID_HEADER.into(), id.to_string())],
        body: Bytes::copy_from_slice(body.as_bytes()),
    }
}

#[async_trait]
impl TopicPolicy for History {
    async fn may_subscribe(&self, user: Option<&str>, topic: &str) -> bool {
        user.is_some() && topic.starts_with("chat.")
    }

    async fn replay(
        &self,
        _user: &str,
        topic: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Replayed>, ReplayError> {
        if topic == "chat.closed" {
            return Err(ReplayError::Forbidden);
        }
        *self.reads.lock() += 1;
        let page: Vec<Replayed> = self
            .messages
            .lock()
            .iter()
            .filter(|(id, _)| *id > after)
            .take(limit)
            .map(|(id, body)| Replayed {
                id: *id,
                content_type: Some("application/json".into()),
                body: Bytes::copy_from_slice(body.as_bytes()),
            })
            .collect();
        let live: Vec<_> = std::mem::take(&mut *self.live_during_read.lock());
        for (id, body) in live {
            self.bus
                .publish(Target::Topic(topic.into()), chat_envelope(topic, id, &body))
                .await
                .expect("publish");
        }
        // Let the live copies reach the hub while this read is still "in flight".
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(page)
    }
}

struct Peer {
    framed: Framed<TcpStream, StompCodec>,
}

impl Peer {
    async fn connect(gw: &TestGateway, user: &str) -> Peer {
        let stream = TcpStream::connect(gw.tcp).await.expect("tcp");
        let mut framed = Framed::new(stream, StompCodec::default());
        let f = Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("Authorization", format!("Bearer {}", token(user, 3600)));
        framed.send(f).await.expect("send");
        let mut p = Peer { framed };
        p.expect(Command::Connected).await;
        gw.wait_online(user).await;
        p
    }

    async fn next(&mut self, wait: Duration) -> Option<Frame> {
        loop {
            match tokio::time::timeout(wait, self.framed.next()).await {
                Ok(Some(Ok(Item::Frame(f)))) => return Some(f),
                Ok(Some(Ok(Item::HeartBeat))) => continue,
                _ => return None,
            }
        }
    }

    async fn expect(&mut self, cmd: Command) -> Frame {
        let f = self
            .next(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("no {cmd:?}"));
        assert_eq!(f.command, cmd, "{f:?}");
        f
    }

    async fn subscribe(&mut self, id: &str, dest: &str, last: Option<&str>) {
        let mut f = Frame::new(Command::Subscribe)
            .header("id", id)
            .header("destination", dest)
            .header("receipt", format!("r-{id}"));
        if let Some(last) = last {
            f = f.header(LAST_ID_HEADER, last);
        }
        self.framed.send(f).await.expect("send");
    }

    /// MESSAGE frames until the RECEIPT `r-{id}`.
    async fn until_receipt(&mut self, id: &str) -> Vec<Frame> {
        let mut out = Vec::new();
        loop {
            let f = self.expect_any().await;
            if f.command == Command::Receipt {
                assert_eq!(f.get("receipt-id"), Some(format!("r-{id}").as_str()));
                return out;
            }
            assert_eq!(f.command, Command::Message, "{f:?}");
            out.push(f);
        }
    }

    async fn expect_any(&mut self) -> Frame {
        self.next(Duration::from_secs(5)).await.expect("a frame")
    }
}

fn body(f: &Frame) -> String {
    String::from_utf8_lossy(&f.body).into_owned()
}

async fn history_gateway(
    messages: &[(u64, &str)],
    live: &[(u64, &str)],
) -> (TestGateway, Arc<History>) {
    let slot: Arc<Mutex<Option<Arc<History>>>> = Arc::default();
    let s2 = slot.clone();
    let messages: Vec<(u64, String)> = messages.iter().map(|(i, b)| (*i, b.to_string())).collect();
    let live: Vec<(u64, String)> = live.iter().map(|(i, b)| (*i, b.to_string())).collect();
    let gw = TestGateway::start_full(
        |_| {},
        move |bus| {
            let h = Arc::new(History {
                bus: bus.clone(),
                messages: Mutex::new(messages),
                live_during_read: Mutex::new(live),
                reads: Mutex::new(0),
            });
            *s2.lock() = Some(h.clone());
            h
        },
    )
    .await;
    let h = slot.lock().clone().expect("policy built");
    (gw, h)
}

#[tokio::test]
async fn replay_fills_the_gap_then_goes_live_without_duplicates() {
    // Stored: 1..=5. While the store is read, message 5 (already stored, its publish late) and 6
    // (committed after the read) are published live.
    let (gw, _h) = history_gateway(
        &[(1, "m1"), (2, "m2"), (3, "m3"), (4, "m4"), (5, "m5")],
        &[(5, "m5"), (6, "m6")],
    )
    .await;
    let mut c = Peer::connect(&gw, "alice").await;
    c.subscribe("s1", "/topic/chat.9", Some("2")).await;
    let replayed = c.until_receipt("s1").await;
    let bodies: Vec<String> = replayed.iter().map(body).collect();
    assert_eq!(bodies, ["m3", "m4", "m5"], "replayed before the receipt");
    for f in &replayed {
        assert_eq!(f.get(REPLAYED_HEADER), Some("true"));
        assert_eq!(f.get("destination"), Some("/topic/chat.9"));
        assert_eq!(f.get("subscription"), Some("s1"));
        assert!(f.get(ID_HEADER).is_some());
    }
    // Then the live one, once, unmarked; the late copy of 5 is dropped.
    let live = c.expect(Command::Message).await;
    assert_eq!(body(&live), "m6");
    assert_eq!(live.get(REPLAYED_HEADER), None);
    // A late publish of an already replayed id after the replay is dropped too; a new one passes.
    gw.bus
        .publish(
            Target::Topic("chat.9".into()),
            chat_envelope("chat.9", 4, "m4"),
        )
        .await
        .unwrap();
    gw.bus
        .publish(
            Target::Topic("chat.9".into()),
            chat_envelope("chat.9", 7, "m7"),
        )
        .await
        .unwrap();
    assert_eq!(body(&c.expect(Command::Message).await), "m7");
    assert!(c.next(Duration::from_millis(200)).await.is_none());
    // Message ids are unique within the subscription.
    let mut ids: Vec<String> = replayed
        .iter()
        .chain([&live])
        .map(|f| f.get("message-id").unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4);
}

#[tokio::test]
async fn replay_pages_through_long_gaps_and_caps_them() {
    let many: Vec<(u64, String)> = (1..=1_200).map(|i| (i, format!("m{i}"))).collect();
    let refs: Vec<(u64, &str)> = many.iter().map(|(i, b)| (*i, b.as_str())).collect();
    let (gw, h) = history_gateway(&refs, &[]).await;
    let mut c = Peer::connect(&gw, "bob").await;
    c.subscribe("s", "/topic/chat.1", Some("0")).await;
    let got = c.until_receipt("s").await;
    assert_eq!(got.len(), 1_200);
    assert!(
        got.windows(2)
            .all(|w| w[0].get(ID_HEADER).unwrap().parse::<u64>().unwrap()
                < w[1].get(ID_HEADER).unwrap().parse::<u64>().unwrap())
    );
    assert_eq!(*h.reads.lock(), 3, "pages of 500");

    // Past max_replay the SUBSCRIBE is refused with a clear error.
    let gw2 = TestGateway::start_full(
        |c| c.max_replay = 1_000,
        |bus| {
            Arc::new(History {
                bus: bus.clone(),
                messages: Mutex::new(many.clone()),
                live_during_read: Mutex::new(Vec::new()),
                reads: Mutex::new(0),
            })
        },
    )
    .await;
    let mut c = Peer::connect(&gw2, "bob").await;
    c.subscribe("s", "/topic/chat.1", Some("0")).await;
    let mut frames = 0;
    let e = loop {
        let f = c.expect_any().await;
        if f.command == Command::Error {
            break f;
        }
        frames += 1;
    };
    assert!(frames <= 1_000);
    assert!(
        e.get("message").unwrap().contains("more than 1000"),
        "{e:?}"
    );
    assert_eq!(e.get("receipt-id"), Some("r-s"));
}

#[tokio::test]
async fn replay_refusals_and_nothing_missed() {
    let (gw, _h) = history_gateway(&[(1, "m1")], &[]).await;
    // Nothing after the client's id: just the receipt, then live.
    let mut c = Peer::connect(&gw, "carol").await;
    c.subscribe("a", "/topic/chat.3", Some("1")).await;
    assert!(c.until_receipt("a").await.is_empty());
    gw.bus
        .publish(
            Target::Topic("chat.3".into()),
            chat_envelope("chat.3", 2, "m2"),
        )
        .await
        .unwrap();
    assert_eq!(body(&c.expect(Command::Message).await), "m2");
    // A history the policy refuses: ERROR naming the reason.
    let mut d = Peer::connect(&gw, "dave").await;
    d.subscribe("b", "/topic/chat.closed", Some("1")).await;
    let e = d.expect(Command::Error).await;
    assert!(
        e.get("message").unwrap().contains("not authorised"),
        "{e:?}"
    );
}

#[tokio::test]
async fn revoke_control_drops_only_that_users_subscriptions_and_is_never_delivered() {
    let (gw, _h) = history_gateway(&[], &[]).await;
    let mut leaver = Peer::connect(&gw, "leaver").await;
    let mut stayer = Peer::connect(&gw, "stayer").await;
    for p in [&mut leaver, &mut stayer] {
        p.subscribe("c", "/topic/chat.5", None).await;
        p.until_receipt("c").await;
        p.subscribe("o", "/topic/chat.6", None).await;
        p.until_receipt("o").await;
    }
    // The leaver's session subscribing to the control queue is refused by the grammar.
    let mut sneaky = Peer::connect(&gw, "leaver").await;
    sneaky
        .subscribe("x", &format!("/user/queue/{CONTROL_QUEUE}"), None)
        .await;
    let e = sneaky.expect(Command::Error).await;
    assert!(e.get("message").unwrap().contains("invalid destination"));

    let control = Envelope {
        destination: format!("/user/queue/{CONTROL_QUEUE}"),
        content_type: Some("application/json".into()),
        headers: vec![
            (CONTROL_HEADER.into(), "revoke".into()),
            (CONTROL_TOPIC_HEADER.into(), "chat.5".into()),
        ],
        body: Bytes::from_static(br#"{"control":"revoke","topic":"chat.5"}"#),
    };
    gw.bus
        .publish(Target::user("leaver", CONTROL_QUEUE), control)
        .await
        .unwrap();
    // Wait until the hub carried it out.
    for _ in 0..100 {
        if gw.gw.hub.topic_subscribers("chat.5") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gw.gw.hub.topic_subscribers("chat.5"), 1);
    gw.bus
        .publish(
            Target::Topic("chat.5".into()),
            chat_envelope("chat.5", 1, "after-leave"),
        )
        .await
        .unwrap();
    gw.bus
        .publish(
            Target::Topic("chat.6".into()),
            chat_envelope("chat.6", 1, "other-room"),
        )
        .await
        .unwrap();
    assert_eq!(body(&stayer.expect(Command::Message).await), "after-leave");
    assert_eq!(body(&stayer.expect(Command::Message).await), "other-room");
    // The leaver gets the other room only: not the control, not the left room.
    let f = leaver.expect(Command::Message).await;
    assert_eq!(body(&f), "other-room");
    assert!(leaver.next(Duration::from_millis(200)).await.is_none());
    // Unsubscribing the revoked subscription later is harmless.
    leaver
        .framed
        .send(
            Frame::new(Command::Unsubscribe)
                .header("id", "c")
                .header("receipt", "u"),
        )
        .await
        .unwrap();
    assert_eq!(
        leaver.expect(Command::Receipt).await.get("receipt-id"),
        Some("u")
    );
    assert_eq!(gw.gw.hub.topic_subscribers("chat.5"), 1);

    // When the last local subscriber is revoked, the topic is unbound (nothing is left to route).
    let control = Envelope {
        destination: format!("/user/queue/{CONTROL_QUEUE}"),
        content_type: None,
        headers: vec![
            (CONTROL_HEADER.into(), "revoke".into()),
            (CONTROL_TOPIC_HEADER.into(), "chat.5".into()),
        ],
        body: Bytes::new(),
    };
    gw.bus
        .publish(Target::user("stayer", CONTROL_QUEUE), control)
        .await
        .unwrap();
    for _ in 0..100 {
        if gw.gw.hub.topic_subscribers("chat.5") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gw.gw.hub.topic_subscribers("chat.5"), 0);
    assert_eq!(
        gw.gw
            .hub
            .metrics
            .revoked
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

/// A membership that ends while a SUBSCRIBE is being registered: the first check says yes, every
/// later one no (the member left and the revoke went by before the subscription existed).
struct EndsDuringSubscribe {
    checks: Mutex<usize>,
}

#[async_trait]
impl TopicPolicy for EndsDuringSubscribe {
    async fn may_subscribe(&self, user: Option<&str>, topic: &str) -> bool {
        let mut n = self.checks.lock();
        *n += 1;
        user.is_some() && topic.starts_with("chat.") && *n == 1
    }

    fn rechecks(&self, topic: &str) -> bool {
        topic.starts_with("chat.")
    }
}

#[tokio::test]
async fn a_membership_that_ends_during_subscribe_leaves_no_subscription() {
    let slot: Arc<Mutex<Option<Arc<EndsDuringSubscribe>>>> = Arc::default();
    let s2 = slot.clone();
    let gw = TestGateway::start_full(
        |_| {},
        move |_bus| {
            let p = Arc::new(EndsDuringSubscribe {
                checks: Mutex::new(0),
            });
            *s2.lock() = Some(p.clone());
            p
        },
    )
    .await;
    let mut peer = Peer::connect(&gw, "leaver").await;
    peer.subscribe("c", "/topic/chat.9", None).await;
    let e = peer.expect(Command::Error).await;
    assert!(e.get("message").unwrap().contains("/topic/chat.9"), "{e:?}");
    assert_eq!(gw.gw.hub.topic_subscribers("chat.9"), 0);
    let policy = slot.lock().clone().expect("policy built");
    assert_eq!(*policy.checks.lock(), 2);
}

/// The chat service may publish a stored message again (its outbox sweeper cannot tell that the
/// first publish went through); a live session gets it once, on room topics and user queues
/// alike, while a late message with a new id still passes.
#[tokio::test]
async fn a_republished_message_reaches_a_live_session_once() {
    let (gw, _h) = history_gateway(&[], &[]).await;
    let mut c = Peer::connect(&gw, "alice").await;
    c.subscribe("s1", "/topic/chat.3", None).await;
    assert!(c.until_receipt("s1").await.is_empty());
    c.subscribe("a", "/user/queue/alarm", None).await;
    assert!(c.until_receipt("a").await.is_empty());
    for (id, text) in [
        (10, "m10"),
        (12, "m12"),
        (10, "m10"),
        (11, "m11"),
        (12, "m12"),
    ] {
        gw.bus
            .publish(
                Target::Topic("chat.3".into()),
                chat_envelope("chat.3", id, text),
            )
            .await
            .unwrap();
        let mut alarm = chat_envelope("chat.3", id, &format!("alarm {text}"));
        alarm.destination = "/user/queue/alarm".into();
        gw.bus
            .publish(
                Target::User {
                    user: "alice".into(),
                    queue: "alarm".into(),
                },
                alarm,
            )
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while let Some(f) = c.next(Duration::from_millis(300)).await {
        got.push(body(&f));
    }
    assert_eq!(
        got,
        ["m10", "alarm m10", "m12", "alarm m12", "m11", "alarm m11"]
    );
    assert_eq!(
        gw.gw
            .hub
            .metrics
            .duplicates
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
}

/// The next application command the gateway submitted.
async fn next_command(gw: &mut TestGateway) -> broker_bridge::AppCommand {
    tokio::time::timeout(Duration::from_secs(5), gw.commands.recv())
        .await
        .expect("a command within 5 s")
        .expect("the gateway's command channel is open")
}

/// The values of `cmd`'s headers named `name`.
fn header_values<'a>(cmd: &'a broker_bridge::AppCommand, name: &str) -> Vec<&'a str> {
    cmd.headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Every application SEND leaves the gateway with a key of its own, unique across the deployment,
/// by which the chat service recognises a redelivered command; a client cannot set it.
#[tokio::test]
async fn every_command_gets_its_own_key_and_clients_cannot_set_it() {
    let (mut gw, _h) = history_gateway(&[], &[]).await;
    let mut keys = Vec::new();
    for user in ["alice", "bob"] {
        let mut c = Peer::connect(&gw, user).await;
        for i in 0..3 {
            let f = Frame::new(Command::Send)
                .header("destination", "/app/send")
                .header(broker_bridge::COMMAND_KEY_HEADER, "forged")
                .header("receipt", format!("r{i}"))
                .with_body(Bytes::from_static(b"{}"));
            c.framed.send(f).await.unwrap();
            c.expect(Command::Receipt).await;
        }
    }
    for _ in 0..6 {
        let cmd = next_command(&mut gw).await;
        let mine = header_values(&cmd, broker_bridge::COMMAND_KEY_HEADER);
        assert_eq!(mine.len(), 1, "{:?}", cmd.headers);
        assert!(mine[0] != "forged" && mine[0].len() <= 64, "{mine:?}");
        keys.push(mine[0].to_owned());
    }
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 6, "{keys:?}");
}

/// A SEND whose body names a room leaves the gateway keyed by that room
/// ([`broker_bridge::ORDER_KEY_HEADER`]), so the bus hands one room's commands to one process; a
/// body without one is placed by session (no key), and a client cannot set the key itself.
#[tokio::test]
async fn commands_are_keyed_by_room_and_clients_cannot_set_the_key() {
    let (mut gw, _h) = history_gateway(&[], &[]).await;
    let mut c = Peer::connect(&gw, "alice").await;
    let bodies: [&[u8]; 4] = [
        br#"{"chatRoomId":7,"message":"a"}"#,
        br#"{"message":"b","chatRoomId":"7"}"#,
        br#"{"chatRoomId":8,"messageId":3}"#,
        br#"{"message":"no room"}"#,
    ];
    for (i, body) in bodies.iter().enumerate() {
        let f = Frame::new(Command::Send)
            .header("destination", "/app/send")
            .header(broker_bridge::ORDER_KEY_HEADER, "forged")
            .header("receipt", format!("r{i}"))
            .with_body(Bytes::copy_from_slice(body));
        c.framed.send(f).await.unwrap();
        c.expect(Command::Receipt).await;
    }
    let mut keys = Vec::new();
    for _ in 0..bodies.len() {
        let cmd = next_command(&mut gw).await;
        let mine = header_values(&cmd, broker_bridge::ORDER_KEY_HEADER);
        assert!(mine.len() <= 1, "{:?}", cmd.headers);
        keys.push((
            mine.first().map(|k| (*k).to_owned()),
            cmd.order_key().to_owned(),
        ));
        if mine.is_empty() {
            assert_eq!(cmd.order_key(), cmd.session);
        }
    }
    let header: Vec<Option<&str>> = keys.iter().map(|(h, _)| h.as_deref()).collect();
    assert_eq!(
        header,
        [
            Some("chatRoomId:7"),
            Some("chatRoomId:7"),
            Some("chatRoomId:8"),
            None
        ]
    );
}
