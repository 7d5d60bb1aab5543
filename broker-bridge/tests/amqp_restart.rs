//! The RabbitMQ bus survives a broker restart and honours `connection.blocked`. Runs against a
//! private RabbitMQ node (started by the test on free ports, data in a temporary directory), so the
//! shared broker other tests use is never disturbed; Redis is the shared one
//! (`INSTAR_TEST_REDIS_URL`).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_bridge::{
    AmqpConfig, AppCommand, Bus, BusError, Envelope, Health, NodeId, RedisRegistryConfig, Registry,
    SessionEntry, Target, handler_fn,
};
use common::{RabbitServer, clean_redis, eventually, service, unique};
use tokio::sync::{Mutex, mpsc};

async fn bus(amqp: &str, redis: &str, prefix: &str) -> Bus {
    let registry = Registry::redis(
        RedisRegistryConfig::new(redis)
            .with_prefix(format!("{prefix}:"))
            .with_lease_ttl(Duration::from_secs(3)),
    )
    .await
    .unwrap();
    let config = AmqpConfig {
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(500),
        wait_for_connection: Duration::from_secs(2),
        confirm_timeout: Duration::from_secs(3),
        work_shards: 2,
        ..AmqpConfig::new(amqp).with_prefix(prefix)
    };
    Bus::amqp(registry, config).await.unwrap()
}

/// Publishes `topic` message `i` until the broker confirms it; returns how many attempts failed.
async fn publish_until_confirmed(bus: &Bus, target: Target, i: usize) -> usize {
    let mut failures = 0;
    loop {
        let envelope = Envelope::new("/topic/chat.1", i.to_string());
        match bus.publish(target.clone(), envelope).await {
            Ok(()) => return failures,
            Err(BusError::Unavailable(_)) => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
        assert!(failures < 300, "publish never succeeded again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_restores_topology_and_loses_no_confirmed_message() {
    let Some(redis) = service("INSTAR_TEST_REDIS_URL") else {
        return;
    };
    let Some(mut rabbit) = RabbitServer::start() else {
        return;
    };
    let amqp = rabbit.url();
    let prefix = unique("restart");
    let gateway = bus(&amqp, &redis, &prefix).await;
    let social = bus(&amqp, &redis, &prefix).await;
    let mut node = gateway.open_node(NodeId::from("gw-1")).await.unwrap();
    node.bind("chat.1").await.unwrap();
    gateway
        .registry()
        .register(SessionEntry {
            session: "gw-1-s".into(),
            user: "alice".into(),
            node: NodeId::from("gw-1"),
            connected_at_ms: 1,
        })
        .await
        .unwrap();

    // Commands submitted while no handler exists anywhere wait in the durable work queues.
    for i in 0..10 {
        gateway
            .submit(AppCommand {
                destination: "/app/echo".into(),
                principal: "alice".into(),
                session: format!("gw-1-s{}", i % 3),
                node: NodeId::from("gw-1"),
                headers: Vec::new(),
                body: bytes::Bytes::from(format!("cmd-{i}")),
            })
            .await
            .unwrap();
    }

    // Receive everything in the background.
    let received = Arc::new(Mutex::new(Vec::<(Target, String)>::new()));
    let sink = Arc::clone(&received);
    let pump = tokio::spawn(async move {
        while let Some(d) = node.recv().await {
            let body = String::from_utf8(d.envelope.body.to_vec()).unwrap();
            sink.lock().await.push((d.target.clone(), body));
        }
    });

    // Publish topic and user messages, each until confirmed, while the broker restarts.
    let publisher = social.clone();
    let publishing = tokio::spawn(async move {
        let mut failures = 0;
        for i in 0..120 {
            failures += publish_until_confirmed(&publisher, Target::topic("chat.1"), i).await;
            failures +=
                publish_until_confirmed(&publisher, Target::user("alice", "notify"), i).await;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        failures
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let restarted = Instant::now();
    rabbit.restart();
    eprintln!("broker restarted in {:?}", restarted.elapsed());
    let failures = publishing.await.unwrap();
    eprintln!("publish attempts refused during the outage: {failures}");

    // Every confirmed message arrives (duplicates around the reconnect are allowed).
    let want: HashSet<String> = (0..120).map(|i| i.to_string()).collect();
    eventually(
        Duration::from_secs(20),
        "all confirmed messages",
        || async {
            let got = received.lock().await;
            let topic: HashSet<String> = got
                .iter()
                .filter(|(t, _)| matches!(t, Target::Topic(_)))
                .map(|(_, b)| b.clone())
                .collect();
            let user: HashSet<String> = got
                .iter()
                .filter(|(t, _)| matches!(t, Target::User { .. }))
                .map(|(_, b)| b.clone())
                .collect();
            want.is_subset(&topic) && want.is_subset(&user)
        },
    )
    .await;
    assert_eq!(gateway.health(), Health::Up);

    // The commands from before the restart survived; a handler registered now gets all of them,
    // and its publishes reach the node through the restored topology.
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let echo_bus = social.clone();
    social.register_handler(
        "/app/",
        handler_fn(move |cmd: AppCommand| {
            let (tx, bus) = (tx.clone(), echo_bus.clone());
            async move {
                let body = String::from_utf8(cmd.body.to_vec()).unwrap();
                bus.publish(
                    Target::user(cmd.principal, "echo"),
                    Envelope::new("/user/queue/echo", body.clone()),
                )
                .await
                .map_err(|e| broker_bridge::HandlerError::Transient(e.to_string()))?;
                let _ = tx.send(body);
                Ok(())
            }
        }),
    );
    let mut handled = HashSet::new();
    while handled.len() < 10 {
        let body = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("commands from before the restart are handled")
            .unwrap();
        handled.insert(body);
    }
    eventually(Duration::from_secs(10), "echoes delivered", || async {
        received
            .lock()
            .await
            .iter()
            .filter(|(t, _)| *t == Target::user("alice", "echo"))
            .count()
            >= 10
    })
    .await;

    // connection.blocked: a memory alarm blocks publishing; publish waits, then fails; health says
    // so; once the alarm clears, publishing works again.
    assert!(rabbit.ctl(&["set_vm_memory_high_watermark", "0.000001"]));
    let blocked = Instant::now();
    let mut saw_degraded = false;
    let mut refused = false;
    while blocked.elapsed() < Duration::from_secs(15) && !(saw_degraded && refused) {
        match social
            .publish(Target::topic("chat.1"), Envelope::new("/topic/chat.1", "b"))
            .await
        {
            Err(BusError::Unavailable(why)) => {
                refused = true;
                eprintln!("refused while blocked: {why}");
            }
            Err(e) => panic!("{e}"),
            Ok(()) => {}
        }
        saw_degraded |= matches!(social.health(), Health::Degraded(_));
    }
    assert!(saw_degraded, "health shows the block");
    assert!(refused, "publish fails while blocked");
    assert!(rabbit.ctl(&["set_vm_memory_high_watermark", "0.4"]));
    eventually(Duration::from_secs(10), "unblocked", || async {
        social.health() == Health::Up
    })
    .await;
    social
        .publish(
            Target::topic("chat.1"),
            Envelope::new("/topic/chat.1", "after"),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "delivery after unblock",
        || async { received.lock().await.iter().any(|(_, b)| b == "after") },
    )
    .await;
    pump.abort();
    clean_redis(&redis, &format!("{prefix}:")).await;
}

/// A client queue's persistent messages survive a broker restart (durable queue, delivery mode 2),
/// as with RabbitMQ's own STOMP plugin; transient ones do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_queue_messages_survive_a_broker_restart() {
    let Some(redis) = service("INSTAR_TEST_REDIS_URL") else {
        return;
    };
    let Some(mut rabbit) = RabbitServer::start() else {
        return;
    };
    let amqp = rabbit.url();
    let prefix = unique("p2p-restart");
    let producer = bus(&amqp, &redis, &prefix).await;
    producer
        .enqueue("jobs", Envelope::new("/queue/jobs", "kept"), true)
        .await
        .unwrap();
    producer
        .enqueue("jobs", Envelope::new("/queue/jobs", "lost"), false)
        .await
        .unwrap();
    rabbit.restart();
    // The bus reconnects by itself; consume once it is back.
    let mut consumer = None;
    for _ in 0..100 {
        match producer.consume("jobs", 10).await {
            Ok(c) => {
                consumer = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut consumer = consumer.expect("consumer after the restart");
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&d.envelope.body[..], b"kept");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), consumer.recv())
            .await
            .is_err(),
        "a transient message survived the restart"
    );
    producer.shutdown().await;
    clean_redis(&redis, &format!("{prefix}:")).await;
}
