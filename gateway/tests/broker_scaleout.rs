//! Queues in scale-out: two gateway nodes on RabbitMQ (`INSTAR_TEST_AMQP_URL`) and Redis
//! (`INSTAR_TEST_REDIS_URL`), each a `Gateway` with its own bus connection, as two `instar gateway`
//! processes would be. A `/queue/...` destination is one RabbitMQ queue shared by both: its
//! messages go round robin to consumers on either node, and what a consumer on one node leaves
//! unacknowledged is redelivered on the other.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use broker_bridge::{AmqpConfig, Bus, RedisRegistryConfig, Registry};
use common::{SECRET, token};
use futures_util::{SinkExt, StreamExt};
use gateway::destination::PrefixPolicy;
use gateway::rules::Destinations;
use gateway::{Gateway, GatewayConfig};
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

struct Node {
    gw: Arc<Gateway>,
    bus: Bus,
    tcp: SocketAddr,
}

async fn node(name: &str, amqp: &AmqpConfig, redis: &str, prefix: &str) -> Node {
    let registry = Registry::redis(
        RedisRegistryConfig::new(redis)
            .with_prefix(format!("{prefix}:"))
            .with_lease_ttl(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let bus = Bus::amqp(registry, amqp.clone()).await.unwrap();
    let mut config = GatewayConfig::default();
    config.session.destinations = Arc::new(
        Destinations::from_json(
            r#"[{"prefix": "/queue/", "subscribe": "signed-in", "send": "signed-in"}]"#,
        )
        .unwrap(),
    );
    let gw = Gateway::start(
        name.into(),
        config,
        SECRET,
        bus.clone(),
        Arc::new(PrefixPolicy::new(["public."])),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = listener.local_addr().unwrap();
    tokio::spawn(gateway::serve_tcp(gw.clone(), listener));
    Node { gw, bus, tcp }
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
    assert_eq!(next(&mut c).await.unwrap().command, Command::Connected);
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

async fn confirmed(c: &mut Conn, frame: Frame, id: &str) {
    c.send(frame.header("receipt", id)).await.unwrap();
    let f = next(c).await.unwrap();
    assert_eq!(
        (f.command, f.get("receipt-id")),
        (Command::Receipt, Some(id)),
        "{f:?}"
    );
}

fn body(f: &Frame) -> String {
    String::from_utf8(f.body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_is_shared_round_robin_across_two_gateways() {
    let (Some(amqp_url), Some(redis)) = (
        service("INSTAR_TEST_AMQP_URL"),
        service("INSTAR_TEST_REDIS_URL"),
    ) else {
        return;
    };
    let prefix = format!("t-gwq-{}-{}", std::process::id(), gateway::random_id(6));
    let amqp = AmqpConfig::new(&amqp_url).with_prefix(&prefix);
    let one = node("gw-one", &amqp, &redis, &prefix).await;
    let two = node("gw-two", &amqp, &redis, &prefix).await;

    let mut a = connect(one.tcp, "ann").await;
    let mut b = connect(two.tcp, "bob").await;
    let mut p = connect(one.tcp, "cid").await;
    for (c, id) in [(&mut a, "sa"), (&mut b, "sb")] {
        confirmed(
            c,
            Frame::new(Command::Subscribe)
                .header("id", id)
                .header("destination", "/queue/shared")
                .header("ack", "client-individual")
                .header("prefetch-count", "1"),
            &format!("{id}-ok"),
        )
        .await;
    }
    for i in 0..6 {
        confirmed(
            &mut p,
            Frame::new(Command::Send)
                .header("destination", "/queue/shared")
                .header("persistent", "true")
                .with_body(i.to_string()),
            &format!("s{i}"),
        )
        .await;
    }
    // Prefetch 1 on each node: the two consumers take turns, three each.
    let mut got = [Vec::new(), Vec::new()];
    for round in 0..3 {
        for (k, c) in [&mut a, &mut b].into_iter().enumerate() {
            let m = next(c)
                .await
                .unwrap_or_else(|| panic!("round {round}: no MESSAGE"));
            assert_eq!(m.command, Command::Message, "{m:?}");
            assert_eq!(m.get("destination"), Some("/queue/shared"));
            got[k].push(body(&m).parse::<u32>().unwrap());
            confirmed(
                c,
                Frame::new(Command::Ack).header("id", m.get("ack").unwrap()),
                &format!("ack-{k}-{round}"),
            )
            .await;
        }
    }
    let mut all: Vec<u32> = got.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, [0, 1, 2, 3, 4, 5], "{got:?}");
    assert_eq!((got[0].len(), got[1].len()), (3, 3), "{got:?}");

    // A consumer on node one leaves without acknowledging: node two's consumer gets it.
    confirmed(
        &mut p,
        Frame::new(Command::Send)
            .header("destination", "/queue/shared")
            .with_body("orphan"),
        "s-orphan",
    )
    .await;
    let (holder, other) = match next_within(&mut a, Duration::from_millis(1500)).await {
        Some(m) => {
            assert_eq!(body(&m), "orphan");
            (a, b)
        }
        None => {
            let m = next(&mut b).await.unwrap();
            assert_eq!(body(&m), "orphan");
            (b, a)
        }
    };
    drop(holder);
    let mut other = other;
    let m = next(&mut other)
        .await
        .expect("redelivered on the other node");
    assert_eq!(
        (body(&m).as_str(), m.get("redelivered")),
        ("orphan", Some("true"))
    );

    drop((other, p));
    for n in [&one, &two] {
        n.gw.drain(Duration::from_secs(2)).await;
        n.bus.shutdown().await;
    }
    amqp.delete_queues(&["shared"]).await.unwrap();
    amqp.delete_topology().await.unwrap();
    if let Ok(client) = redis::Client::open(redis.as_str())
        && let Ok(mut conn) = client.get_multiplexed_async_connection().await
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
        }
    }
}
