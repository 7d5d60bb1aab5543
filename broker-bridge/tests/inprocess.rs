//! Behaviour of the in-process bus and registry.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use broker_bridge::{
    AppCommand, Bus, BusError, BusMetrics, Delivery, Envelope, HandlerError, Health,
    InProcessConfig, NodeId, NodeLink, Registry, SessionEntry, Target, handler_fn,
};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);
const SHORT: Duration = Duration::from_millis(100);

fn bus() -> Bus {
    bus_with(InProcessConfig::default())
}

fn bus_with(config: InProcessConfig) -> Bus {
    Bus::in_process(Registry::in_process(), config)
}

fn node(id: &str) -> NodeId {
    NodeId::from(id)
}

fn entry(session: &str, user: &str, node_id: &str) -> SessionEntry {
    SessionEntry {
        session: session.to_owned(),
        user: user.to_owned(),
        node: node(node_id),
        connected_at_ms: 1_700_000_000_000,
    }
}

fn command(destination: &str) -> AppCommand {
    AppCommand {
        destination: destination.to_owned(),
        principal: "alice".to_owned(),
        session: "s1".to_owned(),
        node: node("gw-1"),
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: bytes::Bytes::from_static(b"{}"),
    }
}

fn topic_msg(topic: &str, body: &str) -> Envelope {
    Envelope::new(format!("/topic/{topic}"), body.to_owned())
}

async fn recv(link: &mut NodeLink) -> Delivery {
    timeout(WAIT, link.recv())
        .await
        .expect("a delivery within the deadline")
        .expect("bus alive")
}

fn body(delivery: &Delivery) -> &str {
    std::str::from_utf8(&delivery.envelope.body).unwrap()
}

/// Waits until `check` holds for the metrics (handlers run on worker tasks).
async fn metrics_until(bus: &Bus, check: impl Fn(&BusMetrics) -> bool) -> BusMetrics {
    timeout(WAIT, async {
        loop {
            let metrics = bus.metrics();
            if check(&metrics) {
                return metrics;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("metrics condition not reached: {:?}", bus.metrics()))
}

#[tokio::test]
async fn topic_delivered_once_per_bound_node_and_not_to_unbound_nodes() {
    let bus = bus();
    let mut a = bus.open_node(node("a")).await.unwrap();
    let mut b = bus.open_node(node("b")).await.unwrap();
    let mut c = bus.open_node(node("c")).await.unwrap();
    a.bind("chat.5").await.unwrap();
    a.bind("chat.5").await.unwrap(); // idempotent: still one binding
    b.bind("chat.5").await.unwrap();
    c.bind("chat.6").await.unwrap();

    let envelope = topic_msg("chat.5", "hi")
        .with_content_type("application/json")
        .with_header("x-room", "5");
    bus.publish(Target::topic("chat.5"), envelope.clone())
        .await
        .unwrap();

    let got_a = recv(&mut a).await;
    let got_b = recv(&mut b).await;
    assert_eq!(got_a.target, Target::Topic("chat.5".to_owned()));
    assert_eq!(*got_a.envelope, envelope);
    assert_eq!(*got_b.envelope, envelope);
    assert!(
        Arc::ptr_eq(&got_a.envelope, &got_b.envelope),
        "one shared envelope for all nodes"
    );
    assert!(a.try_recv().is_none(), "exactly once per node");
    assert!(b.try_recv().is_none());
    assert!(c.try_recv().is_none(), "not bound to chat.5");

    let m = bus.metrics();
    assert_eq!((m.published, m.delivered, m.dropped), (1, 2, 0));

    bus.publish(
        Target::topic("nobody.listens"),
        topic_msg("nobody.listens", "x"),
    )
    .await
    .unwrap();
    assert_eq!(bus.metrics().unrouted, 1);
    assert!(a.try_recv().is_none() && b.try_recv().is_none() && c.try_recv().is_none());
}

#[tokio::test]
async fn unbind_stops_delivery() {
    let bus = bus();
    let mut a = bus.open_node(node("a")).await.unwrap();
    let mut b = bus.open_node(node("b")).await.unwrap();
    a.bind("chat.1").await.unwrap();
    b.bind("chat.1").await.unwrap();
    a.bind("chat.2").await.unwrap();

    bus.publish(Target::topic("chat.1"), topic_msg("chat.1", "one"))
        .await
        .unwrap();
    a.unbind("chat.1").await.unwrap();
    a.unbind("chat.1").await.unwrap(); // idempotent
    bus.publish(Target::topic("chat.1"), topic_msg("chat.1", "two"))
        .await
        .unwrap();
    bus.publish(Target::topic("chat.2"), topic_msg("chat.2", "three"))
        .await
        .unwrap();

    assert_eq!(body(&recv(&mut a).await), "one");
    assert_eq!(
        body(&recv(&mut a).await),
        "three",
        "chat.2 still bound, chat.1 no more"
    );
    assert!(a.try_recv().is_none());
    assert_eq!(body(&recv(&mut b).await), "one");
    assert_eq!(body(&recv(&mut b).await), "two");
    assert!(b.try_recv().is_none());
}

#[tokio::test]
async fn user_delivery_reaches_exactly_the_nodes_with_the_users_sessions() {
    let bus = bus();
    let registry = bus.registry().clone();
    let mut a = bus.open_node(node("a")).await.unwrap();
    let mut b = bus.open_node(node("b")).await.unwrap();
    let mut c = bus.open_node(node("c")).await.unwrap();
    // alice: two sessions on a, one on b; bob: one on c.
    registry.register(entry("s1", "alice", "a")).await.unwrap();
    registry.register(entry("s2", "alice", "a")).await.unwrap();
    registry.register(entry("s3", "alice", "b")).await.unwrap();
    registry.register(entry("s4", "bob", "c")).await.unwrap();

    let envelope = Envelope::new("/user/queue/notify", "ping");
    bus.publish(Target::user("alice", "notify"), envelope.clone())
        .await
        .unwrap();

    for link in [&mut a, &mut b] {
        let got = recv(link).await;
        assert_eq!(got.target, Target::user("alice", "notify"));
        assert_eq!(got.envelope.destination, "/user/queue/notify");
        assert_eq!(*got.envelope, envelope);
        assert!(
            link.try_recv().is_none(),
            "one copy per node, not per session"
        );
    }
    assert!(c.try_recv().is_none(), "bob's node gets nothing");
    let m = bus.metrics();
    assert_eq!((m.published, m.delivered, m.no_session), (1, 2, 0));

    // A user without sessions: accepted, counted, delivered nowhere.
    bus.publish(Target::user("carol", "notify"), envelope)
        .await
        .unwrap();
    assert_eq!(bus.metrics().no_session, 1);
    assert_eq!(bus.metrics().delivered, 2);
    assert!(a.try_recv().is_none() && b.try_recv().is_none() && c.try_recv().is_none());
}

#[tokio::test]
async fn registry_register_unregister_and_remove_node() {
    let registry = Registry::in_process();
    registry.register(entry("s1", "alice", "a")).await.unwrap();
    registry.register(entry("s2", "alice", "a")).await.unwrap();
    registry.register(entry("s3", "alice", "b")).await.unwrap();
    registry.register(entry("s4", "bob", "a")).await.unwrap();

    let ids = |v: Vec<SessionEntry>| v.into_iter().map(|e| e.session).collect::<Vec<_>>();
    assert_eq!(
        ids(registry.sessions_of("alice").await.unwrap()),
        ["s1", "s2", "s3"]
    );
    assert_eq!(
        registry.nodes_of("alice").await.unwrap(),
        [node("a"), node("b")]
    );
    assert_eq!(
        registry.session("s3").await.unwrap(),
        Some(entry("s3", "alice", "b"))
    );
    assert!(registry.is_online("alice").await.unwrap());
    assert!(!registry.is_online("carol").await.unwrap());

    registry.unregister("s3").await.unwrap();
    registry.unregister("s3").await.unwrap(); // unknown now: ignored
    assert_eq!(registry.nodes_of("alice").await.unwrap(), [node("a")]);
    assert_eq!(registry.session("s3").await.unwrap(), None);

    // Re-registering a session id moves it.
    registry.register(entry("s2", "alice", "c")).await.unwrap();
    assert_eq!(
        registry.nodes_of("alice").await.unwrap(),
        [node("a"), node("c")]
    );

    assert_eq!(registry.remove_node(&node("a")).await.unwrap(), 2); // s1 and s4
    assert_eq!(registry.remove_node(&node("a")).await.unwrap(), 0);
    assert!(!registry.is_online("bob").await.unwrap());
    assert_eq!(ids(registry.sessions_of("alice").await.unwrap()), ["s2"]);
    assert_eq!(registry.nodes_of("alice").await.unwrap(), [node("c")]);

    registry.unregister("s2").await.unwrap();
    assert!(!registry.is_online("alice").await.unwrap());
    assert!(registry.nodes_of("alice").await.unwrap().is_empty());
}

#[tokio::test]
async fn user_delivery_follows_unregister_and_remove_node() {
    let bus = bus();
    let registry = bus.registry();
    let mut a = bus.open_node(node("a")).await.unwrap();
    let mut b = bus.open_node(node("b")).await.unwrap();
    registry.register(entry("s1", "alice", "a")).await.unwrap();
    registry.register(entry("s2", "alice", "b")).await.unwrap();

    registry.unregister("s2").await.unwrap();
    bus.publish(
        Target::user("alice", "notify"),
        Envelope::new("/user/queue/notify", "1"),
    )
    .await
    .unwrap();
    assert_eq!(body(&recv(&mut a).await), "1");
    assert!(b.try_recv().is_none(), "session on b was unregistered");

    assert_eq!(registry.remove_node(&node("a")).await.unwrap(), 1);
    bus.publish(
        Target::user("alice", "notify"),
        Envelope::new("/user/queue/notify", "2"),
    )
    .await
    .unwrap();
    assert!(a.try_recv().is_none());
    assert_eq!(bus.metrics().no_session, 1);
}

#[tokio::test]
async fn registered_node_that_is_not_attached_counts_as_dropped() {
    let bus = bus();
    let mut a = bus.open_node(node("a")).await.unwrap();
    bus.registry()
        .register(entry("s1", "alice", "a"))
        .await
        .unwrap();
    bus.registry()
        .register(entry("s2", "alice", "ghost"))
        .await
        .unwrap();
    bus.publish(
        Target::user("alice", "notify"),
        Envelope::new("/user/queue/notify", "x"),
    )
    .await
    .unwrap();
    assert_eq!(body(&recv(&mut a).await), "x");
    let m = bus.metrics();
    assert_eq!((m.delivered, m.dropped), (1, 1));
}

#[tokio::test]
async fn submit_dispatches_by_longest_prefix() {
    let bus = bus();
    let (tx, mut rx) = mpsc::unbounded_channel::<(&'static str, String)>();
    for (prefix, name) in [
        ("/app/", "app"),
        ("/app/chat/", "chat"),
        ("/app/chat/admin/", "admin"),
    ] {
        let tx = tx.clone();
        bus.register_handler(
            prefix,
            handler_fn(move |cmd: AppCommand| {
                let tx = tx.clone();
                async move {
                    tx.send((name, cmd.destination)).unwrap();
                    Ok(())
                }
            }),
        );
    }

    for destination in [
        "/app/chat/send",
        "/app/update/read",
        "/app/chat/admin/kick",
        "/app/",
    ] {
        bus.submit(command(destination)).await.unwrap();
        let (handler, seen) = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        let expected = match destination {
            "/app/chat/send" => "chat",
            "/app/chat/admin/kick" => "admin",
            _ => "app",
        };
        assert_eq!((handler, seen.as_str()), (expected, destination));
    }
    let m = metrics_until(&bus, |m| m.commands_handled == 4).await;
    assert_eq!((m.commands_submitted, m.commands_failed), (4, 0));
}

#[tokio::test]
async fn submit_passes_the_command_through_unchanged() {
    let bus = bus();
    let (tx, mut rx) = mpsc::unbounded_channel();
    bus.register_handler(
        "/app/",
        handler_fn(move |cmd: AppCommand| {
            let tx = tx.clone();
            async move {
                tx.send(cmd).unwrap();
                Ok(())
            }
        }),
    );
    bus.submit(command("/app/send")).await.unwrap();
    assert_eq!(
        timeout(WAIT, rx.recv()).await.unwrap().unwrap(),
        command("/app/send")
    );
}

#[tokio::test]
async fn submit_without_matching_handler_is_no_route() {
    let bus = bus();
    assert_eq!(
        bus.submit(command("/app/send")).await,
        Err(BusError::NoRoute("/app/send".to_owned()))
    );
    bus.register_handler("/app/chat/", handler_fn(|_| async { Ok(()) }));
    assert_eq!(
        bus.submit(command("/app/update/read")).await,
        Err(BusError::NoRoute("/app/update/read".to_owned()))
    );
    assert_eq!(
        bus.submit(command("/topic/chat.1")).await,
        Err(BusError::NoRoute("/topic/chat.1".to_owned()))
    );
    let m = bus.metrics();
    assert_eq!((m.commands_unrouted, m.commands_submitted), (3, 0));
}

#[tokio::test]
async fn failing_handler_is_counted_and_panicking_handler_does_not_stop_the_worker() {
    // A single worker: if a panic killed it, nothing after the panic would be handled.
    let bus = bus_with(InProcessConfig {
        workers: 1,
        ..InProcessConfig::default()
    });
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&handled);
    bus.register_handler(
        "/app/",
        handler_fn(move |cmd: AppCommand| {
            let counter = Arc::clone(&counter);
            async move {
                match cmd.destination.as_str() {
                    "/app/fail" => Err(HandlerError::Rejected("not a member".to_owned())),
                    "/app/panic" => panic!("handler bug"),
                    _ => {
                        counter.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                }
            }
        }),
    );

    bus.submit(command("/app/fail")).await.unwrap();
    let m = metrics_until(&bus, |m| m.commands_failed == 1).await;
    assert_eq!((m.commands_handled, m.commands_panicked), (0, 0));

    bus.submit(command("/app/panic")).await.unwrap();
    bus.submit(command("/app/ok")).await.unwrap();
    bus.submit(command("/app/panic")).await.unwrap();
    bus.submit(command("/app/ok")).await.unwrap();
    let m = metrics_until(&bus, |m| m.commands_handled == 2).await;
    assert_eq!(handled.load(Ordering::SeqCst), 2);
    assert_eq!((m.commands_failed, m.commands_panicked), (3, 2));
    assert_eq!(m.commands_submitted, 5);
    assert_eq!(bus.health(), Health::Up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_workers_process_commands_concurrently() {
    const WORKERS: usize = 4;
    let bus = bus_with(InProcessConfig {
        workers: WORKERS,
        ..InProcessConfig::default()
    });
    // Commands of different sessions run in parallel, up to one per worker.
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    {
        let (running, peak) = (running.clone(), peak.clone());
        bus.register_handler(
            "/app/",
            handler_fn(move |_| {
                let (running, peak) = (running.clone(), peak.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        );
    }
    const COMMANDS: usize = 64;
    for i in 0..COMMANDS {
        let mut cmd = command("/app/send");
        cmd.session = format!("s{i}");
        bus.submit(cmd).await.unwrap();
    }
    let m = metrics_until(&bus, |m| m.commands_handled == COMMANDS as u64).await;
    assert_eq!(m.commands_failed, 0);
    assert_eq!(
        peak.load(Ordering::SeqCst),
        WORKERS,
        "at most `workers` at once, and all of them"
    );
}

#[tokio::test]
async fn one_sessions_commands_are_handled_in_order() {
    let bus = bus_with(InProcessConfig {
        workers: 4,
        ..InProcessConfig::default()
    });
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let seen = seen.clone();
        bus.register_handler(
            "/app/",
            handler_fn(move |cmd: AppCommand| {
                let seen = seen.clone();
                async move {
                    let n: usize = std::str::from_utf8(&cmd.body).unwrap().parse().unwrap();
                    // Later commands finish faster: only serial handling keeps the order.
                    tokio::time::sleep(Duration::from_micros(((200 - n) * 20) as u64)).await;
                    seen.lock().unwrap().push(n);
                    Ok(())
                }
            }),
        );
    }
    for n in 0..200usize {
        let mut cmd = command("/app/send");
        cmd.body = bytes::Bytes::from(n.to_string());
        bus.submit(cmd).await.unwrap();
    }
    metrics_until(&bus, |m| m.commands_handled == 200).await;
    assert_eq!(*seen.lock().unwrap(), (0..200).collect::<Vec<_>>());
}

/// What [`TwoPhase`] saw.
#[derive(Default)]
struct TwoPhaseState {
    started: std::sync::Mutex<Vec<usize>>,
    running: AtomicUsize,
    peak: AtomicUsize,
}

/// A handler overriding `start`: the in-process workers start a session's commands in order but
/// run their completions side by side, and count every outcome, panics included.
struct TwoPhase(Arc<TwoPhaseState>);

#[broker_bridge::async_trait]
impl broker_bridge::AppHandler for TwoPhase {
    async fn handle(&self, _cmd: AppCommand) -> Result<(), HandlerError> {
        Err(HandlerError::Rejected(
            "the in-process workers call start".to_owned(),
        ))
    }

    async fn start(&self, cmd: AppCommand) -> Result<broker_bridge::Completion, HandlerError> {
        let n: usize = std::str::from_utf8(&cmd.body).unwrap().parse().unwrap();
        if n % 50 == 7 {
            return Err(HandlerError::Rejected("refused at start".to_owned()));
        }
        let state = Arc::clone(&self.0);
        state.started.lock().unwrap().push(n);
        let now = state.running.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak.fetch_max(now, Ordering::SeqCst);
        Ok(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            state.running.fetch_sub(1, Ordering::SeqCst);
            match n % 50 {
                13 => Err(HandlerError::Rejected("refused later".to_owned())),
                21 => panic!("completion bug"),
                _ => Ok(()),
            }
        }))
    }
}

#[tokio::test]
async fn two_phase_handlers_overlap_one_sessions_completions_in_start_order() {
    let bus = bus_with(InProcessConfig {
        workers: 1,
        ..InProcessConfig::default()
    });
    let state = Arc::new(TwoPhaseState::default());
    bus.register_handler("/app/", Arc::new(TwoPhase(Arc::clone(&state))));
    const N: usize = 600;
    for n in 0..N {
        let mut cmd = command("/app/send");
        cmd.body = bytes::Bytes::from(n.to_string());
        bus.submit(cmd).await.unwrap();
    }
    let m = metrics_until(&bus, |m| m.commands_handled + m.commands_failed == N as u64).await;
    // 12 refused at start, 12 refused later, 12 panicked; none lost, the worker still alive.
    assert_eq!(m.commands_failed, 36);
    assert_eq!(m.commands_panicked, 12);
    assert_eq!(m.commands_handled, N as u64 - 36);
    let want: Vec<usize> = (0..N).filter(|n| n % 50 != 7).collect();
    assert_eq!(
        *state.started.lock().unwrap(),
        want,
        "started in submit order"
    );
    // One worker and one session, yet completions overlapped, never more than the bound.
    let peak = state.peak.load(Ordering::SeqCst);
    assert!(peak > 1 && peak <= 256, "peak {peak}");
}

#[tokio::test]
async fn full_inbox_makes_publish_wait_not_drop() {
    let bus = bus_with(InProcessConfig {
        node_inbox_capacity: 2,
        ..InProcessConfig::default()
    });
    let mut a = bus.open_node(node("a")).await.unwrap();
    a.bind("t").await.unwrap();
    for i in 0..2 {
        timeout(
            SHORT,
            bus.publish(Target::topic("t"), topic_msg("t", &i.to_string())),
        )
        .await
        .expect("room in the inbox: no waiting")
        .unwrap();
    }
    assert!(matches!(bus.health(), Health::Degraded(reason) if reason.contains('a')));

    let publisher = bus.clone();
    let mut third = tokio::spawn(async move {
        publisher
            .publish(Target::topic("t"), topic_msg("t", "2"))
            .await
    });
    assert!(
        timeout(SHORT, &mut third).await.is_err(),
        "publish must wait while the inbox is full"
    );
    assert_eq!(bus.metrics().published, 2);

    assert_eq!(body(&recv(&mut a).await), "0"); // make room
    timeout(WAIT, &mut third)
        .await
        .expect("publish resumes once there is room")
        .unwrap()
        .unwrap();
    assert_eq!(body(&recv(&mut a).await), "1");
    assert_eq!(body(&recv(&mut a).await), "2");
    let m = bus.metrics();
    assert_eq!((m.published, m.delivered, m.dropped), (3, 3, 0));
    assert_eq!(bus.health(), Health::Up);
}

#[tokio::test]
async fn a_full_inbox_does_not_hold_back_other_nodes() {
    let bus = bus_with(InProcessConfig {
        node_inbox_capacity: 1,
        ..InProcessConfig::default()
    });
    let mut slow = bus.open_node(node("slow")).await.unwrap();
    let mut fast = bus.open_node(node("fast")).await.unwrap();
    slow.bind("t").await.unwrap();
    fast.bind("t").await.unwrap();
    bus.publish(Target::topic("t"), topic_msg("t", "0"))
        .await
        .unwrap();
    assert_eq!(body(&recv(&mut fast).await), "0");

    let publisher = bus.clone();
    let mut second = tokio::spawn(async move {
        publisher
            .publish(Target::topic("t"), topic_msg("t", "1"))
            .await
    });
    // The fast node gets its copy although the slow one is still full.
    assert_eq!(body(&recv(&mut fast).await), "1");
    assert!(timeout(SHORT, &mut second).await.is_err());
    assert_eq!(body(&recv(&mut slow).await), "0");
    timeout(WAIT, &mut second).await.unwrap().unwrap().unwrap();
    assert_eq!(body(&recv(&mut slow).await), "1");
}

#[tokio::test]
async fn dropping_the_node_link_detaches_the_node() {
    let bus = bus();
    let a = bus.open_node(node("a")).await.unwrap();
    assert_eq!(a.node(), &node("a"));
    a.bind("chat.1").await.unwrap();
    assert_eq!(
        bus.open_node(node("a")).await.unwrap_err(),
        BusError::NodeInUse("a".to_owned())
    );

    drop(a);
    bus.publish(Target::topic("chat.1"), topic_msg("chat.1", "x"))
        .await
        .unwrap();
    let m = bus.metrics();
    assert_eq!((m.delivered, m.dropped, m.unrouted), (0, 0, 1));

    // The id is free again, and the new link starts without the old bindings.
    let mut again = bus.open_node(node("a")).await.unwrap();
    bus.publish(Target::topic("chat.1"), topic_msg("chat.1", "y"))
        .await
        .unwrap();
    assert!(again.try_recv().is_none());
    again.bind("chat.1").await.unwrap();
    bus.publish(Target::topic("chat.1"), topic_msg("chat.1", "z"))
        .await
        .unwrap();
    assert_eq!(body(&recv(&mut again).await), "z");

    again.close().await.unwrap();
    bus.publish(Target::topic("chat.1"), topic_msg("chat.1", "w"))
        .await
        .unwrap();
    assert_eq!(bus.metrics().unrouted, 3);
}

#[tokio::test]
async fn recv_ends_when_the_bus_is_gone() {
    let bus = bus();
    let mut a = bus.open_node(node("a")).await.unwrap();
    a.bind("t").await.unwrap();
    bus.publish(Target::topic("t"), topic_msg("t", "last"))
        .await
        .unwrap();
    drop(bus);
    assert_eq!(
        body(&recv(&mut a).await),
        "last",
        "queued deliveries survive"
    );
    assert!(timeout(WAIT, a.recv()).await.unwrap().is_none());
    assert_eq!(a.bind("u").await, Err(BusError::Closed));
}

#[tokio::test]
async fn ordering_is_preserved_for_one_publisher() {
    const N: usize = 2_000;
    let bus = bus_with(InProcessConfig {
        node_inbox_capacity: 8, // small, so publishers keep hitting backpressure
        ..InProcessConfig::default()
    });
    let mut a = bus.open_node(node("a")).await.unwrap();
    a.bind("t").await.unwrap();
    bus.registry()
        .register(entry("s1", "alice", "a"))
        .await
        .unwrap();

    // Two concurrent publishers, one per target; each must be seen in its own order.
    let topic_pub = bus.clone();
    let topic_task = tokio::spawn(async move {
        for i in 0..N {
            topic_pub
                .publish(Target::topic("t"), topic_msg("t", &i.to_string()))
                .await
                .unwrap();
        }
    });
    let user_pub = bus.clone();
    let user_task = tokio::spawn(async move {
        for i in 0..N {
            user_pub
                .publish(
                    Target::user("alice", "notify"),
                    Envelope::new("/user/queue/notify", i.to_string()),
                )
                .await
                .unwrap();
        }
    });

    let (mut next_topic, mut next_user) = (0usize, 0usize);
    while next_topic + next_user < 2 * N {
        let delivery = recv(&mut a).await;
        let seq: usize = body(&delivery).parse().unwrap();
        match delivery.target {
            Target::Topic(_) => {
                assert_eq!(seq, next_topic, "topic messages out of order");
                next_topic += 1;
            }
            Target::User { .. } => {
                assert_eq!(seq, next_user, "user messages out of order");
                next_user += 1;
            }
        }
    }
    topic_task.await.unwrap();
    user_task.await.unwrap();
    assert!(a.try_recv().is_none());
    assert_eq!(bus.metrics().delivered, 2 * N as u64);
}

#[tokio::test]
async fn invalid_topic_names_are_rejected() {
    let bus = bus();
    let a = bus.open_node(node("a")).await.unwrap();
    for bad in ["", "/topic/chat.5", "chat.a*", "chat.#x", &"x".repeat(256)] {
        assert_eq!(
            a.bind(bad).await,
            Err(BusError::InvalidTopic(bad.to_owned()))
        );
        assert_eq!(
            bus.publish(Target::topic(bad), topic_msg("x", "x")).await,
            Err(BusError::InvalidTopic(bad.to_owned()))
        );
    }
    // Patterns may be bound, never published to.
    for pattern in ["chat.*", "chat.#"] {
        assert_eq!(
            bus.publish(Target::topic(pattern), topic_msg("x", "x"))
                .await,
            Err(BusError::InvalidTopic(pattern.to_owned()))
        );
    }
    assert_eq!(bus.metrics().published, 0);
}

#[tokio::test]
async fn pattern_bindings_receive_matching_topics_once_per_node() {
    let bus = bus();
    let mut a = bus.open_node(node("a")).await.unwrap();
    a.bind("demo.*").await.unwrap();
    a.bind("demo.#").await.unwrap();
    a.bind("demo.x").await.unwrap();
    for t in ["demo.x", "demo.y.z", "other.x"] {
        bus.publish(Target::topic(t), topic_msg(t, t))
            .await
            .unwrap();
    }
    // demo.x matches all three bindings but arrives once; demo.y.z only `demo.#`.
    assert_eq!(body(&recv(&mut a).await), "demo.x");
    assert_eq!(body(&recv(&mut a).await), "demo.y.z");
    assert!(a.try_recv().is_none());
    a.unbind("demo.#").await.unwrap();
    bus.publish(Target::topic("demo.y.z"), topic_msg("demo.y.z", "late"))
        .await
        .unwrap();
    assert!(a.try_recv().is_none());
}

#[tokio::test]
async fn zero_sizes_in_config_are_clamped() {
    let bus = bus_with(InProcessConfig {
        node_inbox_capacity: 0,
        work_queue_capacity: 0,
        workers: 0,
        ..InProcessConfig::default()
    });
    let mut a = bus.open_node(node("a")).await.unwrap();
    a.bind("t").await.unwrap();
    bus.publish(Target::topic("t"), topic_msg("t", "x"))
        .await
        .unwrap();
    assert_eq!(body(&recv(&mut a).await), "x");
    bus.register_handler("/app/", handler_fn(|_| async { Ok(()) }));
    bus.submit(command("/app/x")).await.unwrap();
    metrics_until(&bus, |m| m.commands_handled == 1).await;
}
