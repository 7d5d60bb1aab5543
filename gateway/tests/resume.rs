//! Server-side resume: a chat SUBSCRIBE without `x-instar-last-message-id`, sent right after
//! CONNECTED by a user whose previous session ended lately, first gets what that session missed.
//! Scale-out (two gateway nodes on RabbitMQ `INSTAR_TEST_AMQP_URL` and Redis
//! `INSTAR_TEST_REDIS_URL`, marks in the Redis registry) and embedded (in-process registry).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use broker_bridge::{AmqpConfig, Bus, Envelope, RedisRegistryConfig, Registry, Target};
use bytes::Bytes;
use common::{SECRET, TestGateway, token};
use futures_util::{SinkExt, StreamExt};
use gateway::destination::TopicPolicy;
use gateway::replay::{ID_HEADER, REPLAYED_HEADER, ReplayError, Replayed};
use gateway::{Gateway, GatewayConfig};
use parking_lot::Mutex;
use stomp::{Command, Frame, Item, StompCodec};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

type Conn = Framed<TcpStream, StompCodec>;

fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("CI").is_err(),
                "{var} is not set: run the tests through scripts/test"
            );
            eprintln!("note: {var} is not set; skipping (run through scripts/test)");
            None
        }
    }
}

/// The chat service's part: `chat.*` rooms owned by the application, a stored history shared by
/// every node (the database), messages published after being stored.
#[derive(Default)]
struct Rooms {
    history: Mutex<Vec<(u64, String)>>,
}

impl Rooms {
    /// Stores message `id` and publishes it on `bus`, as the chat service does after its commit.
    async fn post(&self, bus: &Bus, topic: &str, id: u64) {
        let body = format!("m{id}");
        self.history.lock().push((id, body.clone()));
        bus.publish(
            Target::Topic(topic.into()),
            Envelope {
                destination: format!("/topic/{topic}"),
                content_type: Some("application/json".into()),
                headers: vec![(ID_HEADER.into(), id.to_string())],
                body: Bytes::from(body),
            },
        )
        .await
        .unwrap();
    }
}

struct Policy(Arc<Rooms>);

#[async_trait]
impl TopicPolicy for Policy {
    async fn may_subscribe(&self, user: Option<&str>, topic: &str) -> bool {
        user.is_some() && topic.starts_with("chat.")
    }

    fn owns(&self, topic: &str) -> bool {
        topic.starts_with("chat.")
    }

    async fn replay(
        &self,
        _user: &str,
        _topic: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Replayed>, ReplayError> {
        Ok(self
            .0
            .history
            .lock()
            .iter()
            .filter(|(id, _)| *id > after)
            .take(limit)
            .map(|(id, body)| Replayed {
                id: *id,
                content_type: Some("application/json".into()),
                body: Bytes::copy_from_slice(body.as_bytes()),
            })
            .collect())
    }
}

async fn connect(addr: SocketAddr, user: &str) -> Conn {
    let mut c = Framed::new(
        TcpStream::connect(addr).await.unwrap(),
        StompCodec::default(),
    );
    c.send(
        Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("Authorization", format!("Bearer {}", token(user, 3600))),
    )
    .await
    .unwrap();
    let f = next(&mut c).await.unwrap();
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
    next_within(c, Duration::from_secs(10)).await
}

/// SUBSCRIBE (no last id) with a receipt; returns the MESSAGE bodies written before the RECEIPT,
/// each with whether it was marked replayed.
async fn subscribe(c: &mut Conn, topic: &str) -> Vec<(String, bool)> {
    c.send(
        Frame::new(Command::Subscribe)
            .header("id", "sub-1")
            .header("destination", format!("/topic/{topic}"))
            .header("receipt", "subscribed"),
    )
    .await
    .unwrap();
    let mut before = Vec::new();
    loop {
        let f = next(c).await.expect("RECEIPT of the SUBSCRIBE");
        match f.command {
            Command::Receipt => return before,
            Command::Message => before.push((
                String::from_utf8(f.body.to_vec()).unwrap(),
                f.get(REPLAYED_HEADER) == Some("true"),
            )),
            _ => panic!("unexpected {f:?}"),
        }
    }
}

/// The bodies of the MESSAGE frames that arrive within `wait`.
async fn drain(c: &mut Conn, wait: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(f) = next_within(c, wait).await {
        assert_eq!(f.command, Command::Message, "{f:?}");
        out.push(String::from_utf8(f.body.to_vec()).unwrap());
    }
    out
}

async fn disconnect(mut c: Conn) {
    c.send(Frame::new(Command::Disconnect).header("receipt", "bye"))
        .await
        .unwrap();
    let f = next(&mut c).await.unwrap();
    assert_eq!(f.command, Command::Receipt, "{f:?}");
}

/// Waits until `user` has no session left in `registry` (the ended session's cleanup, which
/// writes its resume marks first, is over).
async fn wait_offline(registry: &Registry, user: &str) {
    for _ in 0..500 {
        if !registry.is_online(user).await.unwrap_or(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{user} never went offline");
}

async fn wait_online(registry: &Registry, user: &str) {
    for _ in 0..500 {
        if registry.is_online(user).await.unwrap_or(false) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{user} never came online");
}

struct Node {
    _gw: Arc<Gateway>,
    bus: Bus,
    tcp: SocketAddr,
}

async fn node(
    name: &str,
    amqp: &AmqpConfig,
    redis: &str,
    prefix: &str,
    rooms: &Arc<Rooms>,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> Node {
    let registry = Registry::redis(
        RedisRegistryConfig::new(redis)
            .with_prefix(format!("{prefix}:"))
            .with_lease_ttl(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let bus = Bus::amqp(registry, amqp.clone()).await.unwrap();
    let mut config = GatewayConfig::default();
    tweak(&mut config);
    let gw = Gateway::start(
        name.into(),
        config,
        SECRET,
        bus.clone(),
        Arc::new(Policy(rooms.clone())),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = listener.local_addr().unwrap();
    tokio::spawn(gateway::serve_tcp(gw.clone(), listener));
    Node { _gw: gw, bus, tcp }
}

fn bodies(ids: &[u64]) -> Vec<String> {
    ids.iter().map(|id| format!("m{id}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubscribe_on_another_or_the_same_gateway_gets_what_was_missed_once() {
    let (Some(amqp_url), Some(redis)) = (
        service("INSTAR_TEST_AMQP_URL"),
        service("INSTAR_TEST_REDIS_URL"),
    ) else {
        return;
    };
    let prefix = format!("t-resume-{}-{}", std::process::id(), gateway::random_id(6));
    let amqp = AmqpConfig::new(&amqp_url).with_prefix(&prefix);
    let rooms = Arc::new(Rooms::default());
    let one = node("gw-one", &amqp, &redis, &prefix, &rooms, |_| {}).await;
    let two = node("gw-two", &amqp, &redis, &prefix, &rooms, |_| {}).await;
    let registry = one.bus.registry().clone();
    let topic = "chat.7";

    // A session on node one sees message 1 live, then goes away.
    let mut a = connect(one.tcp, "ann").await;
    assert!(subscribe(&mut a, topic).await.is_empty());
    rooms.post(&one.bus, topic, 1).await;
    assert_eq!(
        drain(&mut a, Duration::from_millis(700)).await,
        bodies(&[1])
    );
    disconnect(a).await;
    wait_offline(&registry, "ann").await;

    // Sent meanwhile.
    rooms.post(&one.bus, topic, 2).await;
    rooms.post(&two.bus, topic, 3).await;

    // Reconnected to node two, the room re-subscribed at once without the header: 2 and 3,
    // replayed, before the receipt; then live traffic, once.
    let mut b = connect(two.tcp, "ann").await;
    let got = subscribe(&mut b, topic).await;
    assert_eq!(
        got,
        vec![("m2".to_owned(), true), ("m3".to_owned(), true)],
        "what the first session missed, once"
    );
    rooms.post(&one.bus, topic, 4).await;
    assert_eq!(
        drain(&mut b, Duration::from_millis(700)).await,
        bodies(&[4])
    );

    // Dropped without DISCONNECT (a network failure) and back on the same node.
    drop(b);
    wait_offline(&registry, "ann").await;
    rooms.post(&two.bus, topic, 5).await;
    let mut c = connect(two.tcp, "ann").await;
    wait_online(&registry, "ann").await;
    assert_eq!(
        subscribe(&mut c, topic).await,
        vec![("m5".to_owned(), true)]
    );
    // The mark was taken: a second SUBSCRIBE (another tab, say) replays nothing.
    let mut d = connect(one.tcp, "ann").await;
    assert!(subscribe(&mut d, topic).await.is_empty());
    rooms.post(&one.bus, topic, 6).await;
    assert_eq!(
        drain(&mut c, Duration::from_millis(700)).await,
        bodies(&[6])
    );
    assert_eq!(
        drain(&mut d, Duration::from_millis(300)).await,
        bodies(&[6])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_resumed_after_the_window_for_another_user_or_for_a_room_opened_later() {
    let rooms = Arc::new(Rooms::default());
    let policy_rooms = rooms.clone();
    let gw = TestGateway::start_full(
        |c| {
            c.resume_window = Duration::from_millis(1500);
            c.resume_after_connect = Duration::from_millis(400);
        },
        move |_| Arc::new(Policy(policy_rooms)),
    )
    .await;
    let registry = gw.bus.registry().clone();
    let topic = "chat.9";

    // Embedded (in-process registry), within the window: resumed.
    let mut a = connect(gw.tcp, "ann").await;
    assert!(subscribe(&mut a, topic).await.is_empty());
    rooms.post(&gw.bus, topic, 1).await;
    assert_eq!(
        drain(&mut a, Duration::from_millis(500)).await,
        bodies(&[1])
    );
    disconnect(a).await;
    wait_offline(&registry, "ann").await;
    rooms.post(&gw.bus, topic, 2).await;
    let mut a = connect(gw.tcp, "ann").await;
    assert_eq!(
        subscribe(&mut a, topic).await,
        vec![("m2".to_owned(), true)]
    );

    // Another user (never subscribed) gets no replay of ann's room.
    let mut b = connect(gw.tcp, "bob").await;
    assert!(subscribe(&mut b, topic).await.is_empty());
    disconnect(b).await;

    // A SUBSCRIBE long after CONNECTED is a user opening the room (which reloads its history):
    // no resume, and the mark stays for an automatic re-subscribe.
    disconnect(a).await;
    wait_offline(&registry, "ann").await;
    rooms.post(&gw.bus, topic, 3).await;
    let mut late = connect(gw.tcp, "ann").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(subscribe(&mut late, topic).await.is_empty());
    drop(late);
    wait_offline(&registry, "ann").await;

    // Past the window: nothing is resumed.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    rooms.post(&gw.bus, topic, 4).await;
    let mut c = connect(gw.tcp, "ann").await;
    assert!(subscribe(&mut c, topic).await.is_empty());
    rooms.post(&gw.bus, topic, 5).await;
    assert_eq!(
        drain(&mut c, Duration::from_millis(500)).await,
        bodies(&[5])
    );
}
