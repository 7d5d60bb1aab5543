//! The RabbitMQ bus with the Redis registry, against the shared servers (`INSTAR_TEST_AMQP_URL`,
//! `INSTAR_TEST_REDIS_URL`). Each test uses its own exchange/queue prefix and Redis key prefix.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use broker_bridge::{
    AmqpConfig, AppCommand, Bus, BusMetrics, Delivery, Envelope, HandlerError, Health, NodeId,
    NodeLink, RedisRegistryConfig, Registry, SessionEntry, Target, handler_fn,
};
use common::{clean_redis, eventually, service, unique};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

struct Env {
    amqp: String,
    redis: String,
    prefix: String,
}

impl Env {
    fn new(tag: &str) -> Option<Self> {
        let amqp = service("INSTAR_TEST_AMQP_URL")?;
        let redis = service("INSTAR_TEST_REDIS_URL")?;
        Some(Self {
            amqp,
            redis,
            prefix: unique(tag),
        })
    }

    fn amqp_config(&self) -> AmqpConfig {
        AmqpConfig {
            // Expire queues of crashed test runs quickly.
            node_queue_expires: Duration::from_secs(20),
            work_shards: 4,
            ..AmqpConfig::new(&self.amqp).with_prefix(&self.prefix)
        }
    }

    async fn registry(&self) -> Registry {
        Registry::redis(
            RedisRegistryConfig::new(&self.redis)
                .with_prefix(format!("{}:", self.prefix))
                .with_lease_ttl(Duration::from_secs(2)),
        )
        .await
        .unwrap()
    }

    /// One "process": its own registry client and bus connection.
    async fn bus(&self) -> Bus {
        Bus::amqp(self.registry().await, self.amqp_config())
            .await
            .unwrap()
    }

    /// Deletes this test's keys, queues and exchanges (node queues go with their nodes).
    async fn done(self) {
        clean_redis(&self.redis, &format!("{}:", self.prefix)).await;
        self.amqp_config().delete_topology().await.unwrap();
    }
}

fn entry(session: &str, user: &str, node: &str) -> SessionEntry {
    SessionEntry {
        session: session.to_owned(),
        user: user.to_owned(),
        node: NodeId::from(node),
        connected_at_ms: 1,
    }
}

async fn recv(link: &mut NodeLink) -> Delivery {
    timeout(WAIT, link.recv())
        .await
        .expect("a delivery within the deadline")
        .expect("bus alive")
}

async fn nothing(link: &mut NodeLink) {
    if let Ok(Some(d)) = timeout(Duration::from_millis(300), link.recv()).await {
        panic!("unexpected delivery {d:?}");
    }
}

fn body(d: &Delivery) -> &str {
    std::str::from_utf8(&d.envelope.body).unwrap()
}

async fn metrics_until(bus: &Bus, check: impl Fn(&BusMetrics) -> bool) -> BusMetrics {
    timeout(WAIT, async {
        loop {
            let m = bus.metrics();
            if check(&m) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("metrics condition not reached: {:?}", bus.metrics()))
}

#[tokio::test]
async fn topics_reach_each_bound_node_once_and_envelopes_survive_exactly() {
    let Some(env) = Env::new("amqp-topic") else {
        return;
    };
    let (bus1, bus2, social) = (env.bus().await, env.bus().await, env.bus().await);
    let mut n1 = bus1.open_node(NodeId::from("gw-1")).await.unwrap();
    let mut n2 = bus2.open_node(NodeId::from("gw-2")).await.unwrap();
    assert_eq!(bus1.health(), Health::Up);
    n1.bind("chat.5").await.unwrap();
    n1.bind("chat.5").await.unwrap(); // idempotent
    n2.bind("chat.5").await.unwrap();
    n2.bind("chat.6").await.unwrap();

    let envelope = Envelope {
        destination: "/topic/chat.5".into(),
        content_type: Some("application/json;charset=UTF-8".into()),
        headers: vec![
            ("x-a".into(), "1".into()),
            ("x-b".into(), "with: colon\nand newline".into()),
            ("x-a".into(), "dup".into()),
        ],
        body: bytes::Bytes::from_static(b"{\"m\":\"h\xc3\xa9\"}\0tail"),
    };
    social
        .publish(Target::topic("chat.5"), envelope.clone())
        .await
        .unwrap();
    for link in [&mut n1, &mut n2] {
        let d = recv(link).await;
        assert_eq!(d.target, Target::topic("chat.5"));
        assert_eq!(*d.envelope, envelope, "envelope unchanged by the AMQP hop");
        nothing(link).await; // once per node, not more
    }
    social
        .publish(
            Target::topic("chat.6"),
            Envelope::new("/topic/chat.6", "six"),
        )
        .await
        .unwrap();
    assert_eq!(body(&recv(&mut n2).await), "six");
    nothing(&mut n1).await;

    // Unbind stops delivery; a topic nobody bound is not an error.
    n2.unbind("chat.5").await.unwrap();
    n2.unbind("chat.5").await.unwrap();
    social
        .publish(Target::topic("chat.5"), Envelope::new("/topic/chat.5", "x"))
        .await
        .unwrap();
    assert_eq!(body(&recv(&mut n1).await), "x");
    nothing(&mut n2).await;
    social
        .publish(
            Target::topic("nobody.here"),
            Envelope::new("/topic/nobody.here", "x"),
        )
        .await
        .unwrap();
    assert_eq!(social.metrics().published, 4);
    assert!(n1.bind("bad.a*").await.is_err());
    drop((n1, n2));
    env.done().await;
}

#[tokio::test]
async fn user_messages_go_to_the_nodes_of_the_users_sessions() {
    let Some(env) = Env::new("amqp-user") else {
        return;
    };
    let (bus1, bus2, social) = (env.bus().await, env.bus().await, env.bus().await);
    let mut n1 = bus1.open_node(NodeId::from("gw-1")).await.unwrap();
    let mut n2 = bus2.open_node(NodeId::from("gw-2")).await.unwrap();
    bus1.registry()
        .register(entry("gw-1-a", "alice", "gw-1"))
        .await
        .unwrap();
    bus2.registry()
        .register(entry("gw-2-a", "alice", "gw-2"))
        .await
        .unwrap();
    bus2.registry()
        .register(entry("gw-2-b", "bob", "gw-2"))
        .await
        .unwrap();
    assert!(social.registry().is_online("alice").await.unwrap());

    let env_a = Envelope::new("/user/queue/notify", "for alice").with_content_type("text/plain");
    social
        .publish(Target::user("alice", "notify"), env_a.clone())
        .await
        .unwrap();
    for link in [&mut n1, &mut n2] {
        let d = recv(link).await;
        assert_eq!(d.target, Target::user("alice", "notify"));
        assert_eq!(*d.envelope, env_a);
        nothing(link).await;
    }
    social
        .publish(
            Target::user("bob", "notify"),
            Envelope::new("/user/queue/notify", "for bob"),
        )
        .await
        .unwrap();
    assert_eq!(body(&recv(&mut n2).await), "for bob");
    nothing(&mut n1).await;
    social
        .publish(
            Target::user("nobody", "notify"),
            Envelope::new("/user/queue/notify", "x"),
        )
        .await
        .unwrap();
    assert_eq!(social.metrics().no_session, 1);

    // A node that detached: its sessions stay listed until swept, deliveries to it are dropped.
    n1.close().await.unwrap();
    bus1.registry()
        .register(entry("gw-1-z", "zed", "gw-1"))
        .await
        .unwrap();
    social
        .publish(
            Target::user("zed", "notify"),
            Envelope::new("/user/queue/notify", "x"),
        )
        .await
        .unwrap();
    assert_eq!(social.metrics().dropped, 1);
    drop(n2);
    env.done().await;
}

fn command(session: &str, seq: usize) -> AppCommand {
    AppCommand {
        destination: "/app/send".into(),
        principal: "alice".into(),
        session: session.into(),
        node: NodeId::from("gw-1"),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("seq".into(), seq.to_string()),
        ],
        body: bytes::Bytes::from(format!("{{\"seq\":{seq}}}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_a_handler_in_another_process_in_per_session_order() {
    let Some(env) = Env::new("amqp-cmd") else {
        return;
    };
    let gateway = env.bus().await;
    let social = env.bus().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<AppCommand>();
    social.register_handler(
        "/app/",
        handler_fn(move |cmd: AppCommand| {
            let tx = tx.clone();
            async move {
                // Uneven handler times: a session's commands must still come out in order.
                let seq: u64 = cmd.headers[1].1.parse().unwrap();
                tokio::time::sleep(Duration::from_micros((seq * 7919) % 3000)).await;
                let _ = tx.send(cmd);
                Ok(())
            }
        }),
    );
    let first = command("gw-1-s0", 0);
    let sessions = 20;
    let per_session = 25;
    for i in 0..per_session {
        for s in 0..sessions {
            gateway
                .submit(command(&format!("gw-1-s{s}"), i))
                .await
                .unwrap();
        }
    }
    let mut next = vec![0usize; sessions];
    for _ in 0..sessions * per_session {
        let cmd = timeout(WAIT, rx.recv())
            .await
            .expect("command handled")
            .unwrap();
        if cmd.session == first.session && cmd.headers == first.headers {
            assert_eq!(cmd, first, "command unchanged by the AMQP hop");
        }
        let s: usize = cmd.session.trim_start_matches("gw-1-s").parse().unwrap();
        let seq: usize = cmd.headers[1].1.parse().unwrap();
        assert_eq!(seq, next[s], "session {s} out of order");
        next[s] += 1;
    }
    assert_eq!(gateway.metrics().commands_submitted, 500);
    metrics_until(&social, |m| m.commands_handled == 500).await;
    env.done().await;
}

#[tokio::test]
async fn transient_failures_are_retried_and_rejections_dropped() {
    let Some(env) = Env::new("amqp-retry") else {
        return;
    };
    let gateway = env.bus().await;
    let social = env.bus().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    social.register_handler(
        "/app/flaky",
        handler_fn(move |_cmd: AppCommand| {
            let c = Arc::clone(&c);
            async move {
                if c.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(HandlerError::Transient("database busy".into()))
                } else {
                    Ok(())
                }
            }
        }),
    );
    social.register_handler(
        "/app/bad",
        handler_fn(|_cmd: AppCommand| async { Err(HandlerError::Rejected("not a member".into())) }),
    );
    social.register_handler(
        "/app/panic",
        handler_fn(|_cmd: AppCommand| async { panic!("handler bug") }),
    );
    let mut cmd = command("gw-1-x", 0);
    cmd.destination = "/app/flaky".into();
    gateway.submit(cmd.clone()).await.unwrap();
    cmd.destination = "/app/bad".into();
    gateway.submit(cmd.clone()).await.unwrap();
    cmd.destination = "/app/panic".into();
    gateway.submit(cmd.clone()).await.unwrap();
    cmd.destination = "/app/unknown".into();
    gateway.submit(cmd).await.unwrap();
    let m = metrics_until(&social, |m| {
        m.commands_handled == 1 && m.commands_failed == 2 && m.commands_unrouted == 1
    })
    .await;
    assert_eq!(m.commands_panicked, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "two retries, then success");
    env.done().await;
}

/// A dependency that stays down longer than a few retries (a database restarting): the command
/// is retried, 5 s apart at most, for the whole retry time, and handled once the dependency is
/// back; the session's next command waits behind it. One still failing when the retry time is
/// up is dropped and counted as failed. (With the old five retries, about 3 s at these delays,
/// the first command was dropped.)
#[tokio::test]
async fn a_command_is_retried_for_the_retry_time_then_dropped() {
    let Some(env) = Env::new("amqp-retry-time") else {
        return;
    };
    let gateway = env.bus().await;
    let config = AmqpConfig {
        handler_retry_for: Duration::from_secs(7),
        ..env.amqp_config()
    };
    let social = Bus::amqp(env.registry().await, config).await.unwrap();
    let down_until = std::time::Instant::now() + Duration::from_millis(4500);
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, std::time::Instant)>();
    social.register_handler(
        "/app/",
        handler_fn(move |cmd: AppCommand| {
            let tx = tx.clone();
            async move {
                if cmd.destination == "/app/down" {
                    return Err(HandlerError::Transient("database unreachable".into()));
                }
                if std::time::Instant::now() < down_until {
                    return Err(HandlerError::Transient("database restarting".into()));
                }
                let _ = tx.send((cmd.headers[1].1.clone(), std::time::Instant::now()));
                Ok(())
            }
        }),
    );
    let started = std::time::Instant::now();
    gateway.submit(command("gw-1-a", 0)).await.unwrap();
    gateway.submit(command("gw-1-a", 1)).await.unwrap();
    let mut down = command("gw-1-b", 0);
    down.destination = "/app/down".into();
    gateway.submit(down).await.unwrap();
    let first = timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("handled once the database is back")
        .unwrap();
    let second = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!((first.0.as_str(), second.0.as_str()), ("0", "1"));
    assert!(first.1 >= down_until, "handled while down");
    assert!(
        first.1.duration_since(down_until) < Duration::from_secs(6),
        "retried at most about 5 s apart"
    );
    let m = metrics_until(&social, |m| m.commands_failed == 1).await;
    assert_eq!(m.commands_handled, 2);
    assert!(m.commands_retried >= 5, "{m:?}");
    let dropped_after = started.elapsed();
    assert!(
        dropped_after >= Duration::from_secs(6),
        "the failing command was dropped after {dropped_after:?}, before its retry time"
    );
    social.shutdown().await;
    env.done().await;
}

#[tokio::test]
async fn a_node_id_is_exclusive_and_dropping_the_link_frees_it() {
    let Some(env) = Env::new("amqp-excl") else {
        return;
    };
    let (bus1, bus2) = (env.bus().await, env.bus().await);
    let link = bus1.open_node(NodeId::from("gw-1")).await.unwrap();
    assert!(bus1.open_node(NodeId::from("gw-1")).await.is_err());
    let reg = bus1.registry().clone();
    assert_eq!(reg.live_nodes().await.unwrap(), [NodeId::from("gw-1")]);
    drop(link);
    eventually(WAIT, "lease released", || async {
        reg.live_nodes().await.unwrap().is_empty()
    })
    .await;
    let _again = bus2.open_node(NodeId::from("gw-1")).await.unwrap();
    bus2.registry()
        .register(entry("gw-1-s", "alice", "gw-1"))
        .await
        .unwrap();

    // A graceful shutdown detaches the node: lease and sessions gone, the bus refuses work.
    bus2.shutdown().await;
    assert!(reg.live_nodes().await.unwrap().is_empty());
    assert!(!reg.is_online("alice").await.unwrap());
    assert_eq!(
        bus2.publish(Target::topic("t"), Envelope::new("/topic/t", "x"))
            .await,
        Err(broker_bridge::BusError::Closed)
    );
    env.done().await;
}

/// Someone deletes a node's queue behind the bus's back: the consumer is cancelled, the bus notices,
/// reconnects, declares the queue again and restores its bindings.
#[tokio::test]
async fn a_deleted_node_queue_is_declared_and_bound_again() {
    let Some(env) = Env::new("amqp-del") else {
        return;
    };
    let (gateway, social) = (env.bus().await, env.bus().await);
    let mut node = gateway.open_node(NodeId::from("gw-1")).await.unwrap();
    node.bind("room.1").await.unwrap();
    let properties = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current());
    let conn = lapin::Connection::connect(&env.amqp, properties)
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_delete(
            &format!("{}.node.gw-1", env.prefix),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "done").await;
    let mut got = false;
    for i in 0..100 {
        social
            .publish(
                Target::topic("room.1"),
                Envelope::new("/topic/room.1", i.to_string()),
            )
            .await
            .unwrap();
        if let Ok(Some(_)) = timeout(Duration::from_millis(100), node.recv()).await {
            got = true;
            break;
        }
    }
    assert!(got, "deliveries resumed after the queue was re-declared");
    eventually(WAIT, "health up", || async {
        gateway.health() == Health::Up
    })
    .await;
    env.done().await;
}

/// Publishes and commands issued at the same moment to one route share AMQP messages (batches):
/// every one still arrives exactly once, topic messages in the order they were issued, commands of
/// a session in order, and the broker sees far fewer messages than there were publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_to_one_route_travel_in_batches_in_order() {
    let Some(env) = Env::new("amqp-batch") else {
        return;
    };
    let (bus1, bus2, social) = (env.bus().await, env.bus().await, env.bus().await);
    let mut n1 = bus1.open_node(NodeId::from("gw-1")).await.unwrap();
    let mut n2 = bus2.open_node(NodeId::from("gw-2")).await.unwrap();
    n1.bind("room.1").await.unwrap();
    n2.bind("room.1").await.unwrap();
    bus1.registry()
        .register(entry("gw-1-a", "alice", "gw-1"))
        .await
        .unwrap();
    bus2.registry()
        .register(entry("gw-2-a", "alice", "gw-2"))
        .await
        .unwrap();

    // 400 topic messages and 400 user messages, all in flight at once.
    let n = 400;
    let topic = (0..n).map(|i| {
        let e = Envelope::new("/topic/room.1", format!("t{i}")).with_header("x-i", i.to_string());
        social.publish(Target::topic("room.1"), e)
    });
    for r in futures_util::future::join_all(topic).await {
        r.unwrap();
    }
    let user = (0..n).map(|i| {
        social.publish(
            Target::user("alice", "notify"),
            Envelope::new("/user/queue/notify", format!("u{i}")),
        )
    });
    for r in futures_util::future::join_all(user).await {
        r.unwrap();
    }
    for link in [&mut n1, &mut n2] {
        for i in 0..n {
            let d = recv(link).await;
            assert_eq!(d.target, Target::topic("room.1"));
            assert_eq!(body(&d), format!("t{i}"), "topic order");
            assert_eq!(d.envelope.headers, vec![("x-i".into(), i.to_string())]);
        }
        // User publishes look the user's nodes up first, so they reach their routes in the order
        // the lookups finish: each arrives once, in no promised order.
        let mut seen: Vec<String> = Vec::new();
        for _ in 0..n {
            let d = recv(link).await;
            assert_eq!(d.target, Target::user("alice", "notify"));
            seen.push(body(&d).to_owned());
        }
        seen.sort();
        let mut expect: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
        expect.sort();
        assert_eq!(seen, expect);
        nothing(link).await;
    }
    let m = social.metrics();
    assert_eq!(m.published, 2 * n as u64);
    // 400 topic publishes on one route, and 400 user publishes on each of two node routes.
    assert!(
        m.broker_messages < (3 * n / 4) as u64,
        "publishes were not batched: {m:?}"
    );

    // Commands: 20 sessions submitting 25 each concurrently (each session in order).
    let (tx, mut rx) = mpsc::unbounded_channel::<AppCommand>();
    social.register_handler(
        "/app/",
        handler_fn(move |cmd: AppCommand| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(cmd);
                Ok(())
            }
        }),
    );
    let (sessions, per_session) = (20, 25);
    let gateway = env.bus().await;
    let submitters = (0..sessions).map(|s| {
        let gateway = gateway.clone();
        async move {
            for i in 0..per_session {
                gateway
                    .submit(command(&format!("gw-1-s{s}"), i))
                    .await
                    .unwrap();
            }
        }
    });
    futures_util::future::join_all(submitters).await;
    let mut next = vec![0usize; sessions];
    for _ in 0..sessions * per_session {
        let cmd = timeout(WAIT, rx.recv()).await.expect("handled").unwrap();
        let s: usize = cmd.session.trim_start_matches("gw-1-s").parse().unwrap();
        let seq: usize = cmd.headers[1].1.parse().unwrap();
        assert_eq!(seq, next[s], "session {s} out of order");
        next[s] += 1;
    }
    let g = gateway.metrics();
    assert_eq!(g.commands_submitted, (sessions * per_session) as u64);
    assert!(
        g.broker_messages < (sessions * per_session / 2) as u64,
        "commands were not batched: {g:?}"
    );
    metrics_until(&social, |m| {
        m.commands_handled == (sessions * per_session) as u64
    })
    .await;
    drop((n1, n2));
    env.done().await;
}

/// Point-to-point queues are one RabbitMQ queue shared by every process: consumers on two buses
/// share its messages round robin, a rejected message comes back marked redelivered, a cancelled
/// consumer's unacknowledged ones go to the other, and a full queue refuses.
#[tokio::test]
async fn queues_are_shared_by_consumers_on_every_process() {
    let Some(env) = Env::new("p2p") else { return };
    let config = AmqpConfig {
        queues: broker_bridge::QueueLimits {
            max_depth: 20,
            ..broker_bridge::QueueLimits::default()
        },
        ..env.amqp_config()
    };
    let one = Bus::amqp(env.registry().await, config.clone())
        .await
        .unwrap();
    let two = Bus::amqp(env.registry().await, config.clone())
        .await
        .unwrap();
    let mut a = one.consume("jobs", 1).await.unwrap();
    let mut b = two.consume("jobs", 1).await.unwrap();
    for i in 0..4 {
        one.enqueue(
            "jobs",
            Envelope::new("/queue/jobs", format!("{i}")),
            i % 2 == 0,
        )
        .await
        .unwrap();
    }
    let text =
        |d: &broker_bridge::QueueDelivery| String::from_utf8(d.envelope.body.to_vec()).unwrap();
    let da = timeout(WAIT, a.recv()).await.unwrap().unwrap();
    let db = timeout(WAIT, b.recv()).await.unwrap().unwrap();
    let mut first = [text(&da), text(&db)];
    first.sort();
    assert_eq!(first, ["0", "1"]);
    assert_eq!(da.envelope.destination, "/queue/jobs");
    // Prefetch 1: nothing more until acknowledged.
    assert!(timeout(Duration::from_millis(300), a.recv()).await.is_err());
    // A NACK with requeue: back, marked redelivered.
    a.acker()
        .settle(da.tag, false, broker_bridge::Settle::Requeue)
        .await
        .unwrap();
    let again = timeout(WAIT, a.recv()).await.unwrap().unwrap();
    assert!(again.redelivered);
    assert_eq!(text(&again), text(&da));
    // b leaves without acknowledging: its message goes to a, marked.
    b.acker().cancel().await;
    drop(b);
    a.acker()
        .settle(again.tag, false, broker_bridge::Settle::Ack)
        .await
        .unwrap();
    let moved = timeout(WAIT, a.recv()).await.unwrap().unwrap();
    assert!(moved.redelivered, "{}", text(&moved));
    assert_eq!(text(&moved), text(&db));
    a.acker().cancel().await;
    drop(a);
    // Depth: 3 ready again (one of the four was acknowledged), 17 more fit, the 21st is refused.
    for i in 0..17 {
        two.enqueue("jobs", Envelope::new("/queue/jobs", format!("f{i}")), false)
            .await
            .unwrap();
    }
    assert_eq!(
        two.enqueue("jobs", Envelope::new("/queue/jobs", "over"), false)
            .await,
        Err(broker_bridge::BusError::QueueFull("jobs".into()))
    );
    one.shutdown().await;
    two.shutdown().await;
    config.delete_queues(&["jobs"]).await.unwrap();
    env.done().await;
}
