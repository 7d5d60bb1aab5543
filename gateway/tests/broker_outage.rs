//! A RabbitMQ outage seen from a STOMP client: a gateway node and a command worker on a **private**
//! RabbitMQ node (stopped and started again by the test; the shared broker is never touched) and
//! the shared Redis (`INSTAR_TEST_REDIS_URL`). SENDs during the outage wait in the node's buffer
//! (no 5 s wait, no ERROR, the session stays open), are handled once each, in order, after the
//! broker is back, and their RECEIPTs come only then; once the buffer is full a SEND with a receipt
//! is answered at once with a RECEIPT carrying `x-instar-error`.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../broker-bridge/tests/common/mod.rs"]
mod services;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_bridge::{
    AmqpConfig, AppCommand, Bus, COMMAND_KEY_HEADER, RedisRegistryConfig, Registry, handler_fn,
};
use common::{SECRET, token};
use futures_util::{SinkExt, StreamExt};
use gateway::destination::PrefixPolicy;
use gateway::sendbuf::{ERROR_HEADER, SendBufferConfig};
use gateway::{Gateway, GatewayConfig};
use stomp::{Command, Frame, Item, StompCodec};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

type Conn = Framed<TcpStream, StompCodec>;

const BUFFER: usize = 20;

async fn registry(redis: &str, prefix: &str) -> Registry {
    Registry::redis(
        RedisRegistryConfig::new(redis)
            .with_prefix(format!("{prefix}:"))
            .with_lease_ttl(Duration::from_secs(5)),
    )
    .await
    .unwrap()
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

fn send(n: &str, receipt: bool) -> Frame {
    let f = Frame::new(Command::Send)
        .header("destination", "/app/send")
        .header("content-type", "text/plain")
        .with_body(n.as_bytes().to_vec());
    if receipt {
        f.header("receipt", format!("r-{n}"))
    } else {
        f
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_wait_in_the_node_buffer_through_a_broker_outage() {
    let Some(redis) = services::service("INSTAR_TEST_REDIS_URL") else {
        return;
    };
    let Some(mut rabbit) = services::RabbitServer::start() else {
        return;
    };
    let prefix = services::unique("outage");
    let amqp = AmqpConfig {
        work_shards: 2,
        node_queue_expires: Duration::from_secs(30),
        ..AmqpConfig::new(rabbit.url()).with_prefix(&prefix)
    };

    // The command worker: records every command it handles (body, command key).
    let handled: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let worker = Bus::amqp(registry(&redis, &prefix).await, amqp.clone())
        .await
        .unwrap();
    {
        let handled = handled.clone();
        worker.register_handler(
            "/app/",
            handler_fn(move |cmd: AppCommand| {
                let handled = handled.clone();
                async move {
                    let key = cmd
                        .headers
                        .iter()
                        .find(|(k, _)| k == COMMAND_KEY_HEADER)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    let body = String::from_utf8(cmd.body.to_vec()).unwrap();
                    handled.lock().unwrap().push((body, key));
                    Ok(())
                }
            }),
        );
    }

    // The gateway node, with a small buffer.
    let bus = Bus::amqp(registry(&redis, &prefix).await, amqp.clone())
        .await
        .unwrap();
    let config = GatewayConfig {
        send_buffer: SendBufferConfig {
            max_commands: BUFFER,
            max_bytes: 1 << 20,
        },
        ..GatewayConfig::default()
    };
    let gw = Gateway::start(
        "gw-outage".into(),
        config,
        SECRET,
        bus.clone(),
        Arc::new(PrefixPolicy::new(["public."])),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gateway::serve_tcp(gw.clone(), listener));
    let mut c = Framed::new(
        TcpStream::connect(addr).await.unwrap(),
        StompCodec::default(),
    );
    c.send(
        Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("Authorization", format!("Bearer {}", token("alice", 3600))),
    )
    .await
    .unwrap();
    let connected = next_within(&mut c, Duration::from_secs(10)).await.unwrap();
    assert_eq!(connected.command, Command::Connected);

    // Before: a SEND is confirmed at once.
    c.send(send("before", true)).await.unwrap();
    let f = next_within(&mut c, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (f.command, f.get("receipt-id")),
        (Command::Receipt, Some("r-before"))
    );

    // The broker goes away.
    rabbit.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while bus.accepts_commands_now() {
        assert!(
            Instant::now() < deadline,
            "the bus did not notice the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SENDs fill the buffer without waiting: all written and nothing answered yet (no ERROR).
    let started = Instant::now();
    for i in 0..BUFFER {
        c.send(send(&format!("during-{i:02}"), true)).await.unwrap();
    }
    // One more: the buffer is full, so it is answered at once, and the session stays open.
    c.send(send("refused", true)).await.unwrap();
    let f = next_within(&mut c, Duration::from_secs(3)).await.unwrap();
    assert_eq!(
        (f.command, f.get("receipt-id")),
        (Command::Receipt, Some("r-refused")),
        "{f:?}"
    );
    assert!(
        f.get(ERROR_HEADER)
            .is_some_and(|e| e.contains("buffer is full")),
        "{f:?}"
    );
    let answered = started.elapsed();
    assert!(
        answered < Duration::from_secs(2),
        "a full buffer was answered after {answered:?}"
    );
    assert!(
        next_within(&mut c, Duration::from_millis(300))
            .await
            .is_none()
    );
    assert_eq!(
        gw.send_buffer
            .stats
            .held
            .load(std::sync::atomic::Ordering::Relaxed),
        BUFFER as u64
    );

    // The broker is back: the buffered SENDs are confirmed, in order.
    rabbit.restart();
    for i in 0..BUFFER {
        let f = next_within(&mut c, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("no receipt for during-{i:02}"));
        let want = format!("r-during-{i:02}");
        assert_eq!(
            (f.command, f.get("receipt-id")),
            (Command::Receipt, Some(want.as_str())),
            "{f:?}"
        );
        assert!(f.get(ERROR_HEADER).is_none(), "{f:?}");
    }
    c.send(send("after", true)).await.unwrap();
    let f = next_within(&mut c, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (f.command, f.get("receipt-id")),
        (Command::Receipt, Some("r-after"))
    );

    // Every accepted SEND handled exactly once, in order; the refused one never.
    let want: Vec<String> = std::iter::once("before".to_owned())
        .chain((0..BUFFER).map(|i| format!("during-{i:02}")))
        .chain(std::iter::once("after".to_owned()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = handled.lock().unwrap().clone();
        if got.len() >= want.len() {
            // A command redelivered around the restart shows up twice with the same key: the
            // handlers recognise it by that key. Distinct keys, in order:
            let mut keys = std::collections::HashSet::new();
            let firsts: Vec<String> = got
                .iter()
                .filter(|(_, k)| keys.insert(k.clone()))
                .map(|(b, _)| b.clone())
                .collect();
            if firsts.len() == want.len() {
                assert_eq!(firsts, want);
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not every SEND was handled: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = &gw.send_buffer.stats;
    assert_eq!(
        m.buffered.load(std::sync::atomic::Ordering::Relaxed),
        BUFFER as u64
    );
    assert_eq!(
        m.flushed.load(std::sync::atomic::Ordering::Relaxed),
        BUFFER as u64
    );
    assert_eq!(m.refused.load(std::sync::atomic::Ordering::Relaxed), 1);

    bus.shutdown().await;
    worker.shutdown().await;
    services::clean_redis(&redis, &format!("{prefix}:")).await;
}
