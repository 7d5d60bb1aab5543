//! Two `instar gateway` processes behind nginx (configured from `deploy/nginx/`), on the shared
//! RabbitMQ and Redis: users on different nodes exchange user-destination and topic messages,
//! SockJS HTTP transports stay on their node, and a node killed with SIGKILL has its sessions swept
//! within its lease TTL while its clients reconnect to the survivor.
#![allow(clippy::unwrap_used)]

mod scaleout_support;

use std::time::{Duration, Instant};

use scaleout_support::{Client, Nginx, Node, Services, eventually, header, http, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_two_nodes_behind_nginx_exchange_user_and_topic_messages() {
    let Some(services) = Services::get("ngx") else {
        return;
    };
    let a = Node::start(&services, &format!("{}a", services.prefix), 10_000).await;
    let b = Node::start(&services, &format!("{}b", services.prefix), 10_000).await;
    let nginx = Nginx::start(&services, &[&a, &b]).await;
    let url = nginx.stomp_url();

    let mut alice = Client::connect_on(&url, "alice", &a.id).await;
    let mut bob = Client::connect_on(&url, "bob", &b.id).await;
    for c in [&mut alice, &mut bob] {
        c.subscribe("/user/queue/bench").await;
        c.subscribe("/topic/public.bench").await;
    }
    let registry = services.registry().await;
    assert_eq!(
        registry.nodes_of("alice").await.unwrap(),
        [broker_bridge::NodeId::from(a.id.as_str())]
    );
    assert_eq!(
        registry.nodes_of("bob").await.unwrap(),
        [broker_bridge::NodeId::from(b.id.as_str())]
    );

    // User destinations, both ways across nodes (SEND -> work queue -> handler -> bob's node).
    alice
        .send("/app/bench.direct", &[("to", "bob")], "hi bob")
        .await;
    assert_eq!(
        bob.message().await,
        ("/user/queue/bench".to_owned(), "hi bob".to_owned())
    );
    bob.send("/app/bench.direct", &[("to", "alice")], "hi alice")
        .await;
    assert_eq!(
        alice.message().await,
        ("/user/queue/bench".to_owned(), "hi alice".to_owned())
    );

    // A topic reaches subscribers on both nodes, once each.
    alice.send("/app/bench.fanout", &[], "to all").await;
    for c in [&mut alice, &mut bob] {
        assert_eq!(
            c.message().await,
            ("/topic/public.bench".to_owned(), "to all".to_owned())
        );
        assert!(c.try_frame(Duration::from_millis(300)).await.is_none());
    }

    // Ordering across nodes for one sender.
    for i in 0..50 {
        alice
            .send("/app/bench.direct", &[("to", "bob")], &i.to_string())
            .await;
    }
    for i in 0..50 {
        assert_eq!(bob.message().await.1, i.to_string());
    }

    // /health through nginx.
    let (status, body) = http(nginx.port, "GET", "/health", "").await;
    assert_eq!((status, body.as_str()), (200, "up"));
    drop((a, b, nginx));
    services.clean().await;
}

/// SockJS HTTP transports are several requests per session: nginx must send them all to the node
/// holding the session (hash on the session id), otherwise `xhr_send` would get 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockjs_http_sessions_stick_to_their_node() {
    let Some(services) = Services::get("sjs") else {
        return;
    };
    let a = Node::start(&services, &format!("{}a", services.prefix), 10_000).await;
    let b = Node::start(&services, &format!("{}b", services.prefix), 10_000).await;
    let nginx = Nginx::start(&services, &[&a, &b]).await;
    let mut seen_a = false;
    let mut seen_b = false;
    for n in 0..40 {
        let sid = format!("s{n}x{}", services.prefix);
        let base = format!("/ws/{:03}/{sid}", n % 1000);
        let (status, body) = http(nginx.port, "POST", &format!("{base}/xhr"), "").await;
        assert_eq!((status, body.as_str()), (200, "o\n"), "open {sid}");
        let connect = format!(
            "CONNECT\naccept-version:1.2\nheart-beat:0,0\nAuthorization:Bearer {}\n\n\0",
            token("carol")
        );
        let payload = serde_json::to_string(&[connect]).unwrap();
        let (status, _) = http(nginx.port, "POST", &format!("{base}/xhr_send"), &payload).await;
        assert_eq!(status, 204, "xhr_send of {sid} reached its node");
        let (status, body) = http(nginx.port, "POST", &format!("{base}/xhr"), "").await;
        assert_eq!(status, 200);
        let frames: Vec<String> =
            serde_json::from_str(body.trim().trim_start_matches('a')).unwrap();
        let connected = &frames[0];
        assert!(connected.starts_with("CONNECTED\n"), "{connected}");
        let session = header(connected, "session").unwrap();
        seen_a |= session.starts_with(&format!("{}-", a.id));
        seen_b |= session.starts_with(&format!("{}-", b.id));
        if seen_a && seen_b && n >= 5 {
            break;
        }
    }
    assert!(seen_a && seen_b, "sessions were spread over both nodes");
    drop((a, b, nginx));
    services.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_swept_within_its_lease_and_clients_move_to_the_survivor() {
    let Some(services) = Services::get("kill") else {
        return;
    };
    let ttl_ms = 2000;
    let mut a = Node::start(&services, &format!("{}a", services.prefix), ttl_ms).await;
    let b = Node::start(&services, &format!("{}b", services.prefix), ttl_ms).await;
    let nginx = Nginx::start(&services, &[&a, &b]).await;
    let url = nginx.stomp_url();
    let mut alice = Client::connect_on(&url, "alice", &a.id).await;
    let mut bob = Client::connect_on(&url, "bob", &b.id).await;
    alice.subscribe("/user/queue/bench").await;
    bob.subscribe("/user/queue/bench").await;
    alice
        .send("/app/bench.direct", &[("to", "bob")], "before")
        .await;
    assert_eq!(bob.message().await.1, "before");

    let registry = services.registry().await;
    assert_eq!(
        registry.nodes_of("alice").await.unwrap(),
        [broker_bridge::NodeId::from(a.id.as_str())]
    );
    a.kill().await;
    let killed = Instant::now();
    assert!(alice.closed_within(Duration::from_secs(5)).await);

    // The survivor sweeps the dead node's sessions within the lease TTL (+ scheduling slack).
    eventually(Duration::from_secs(10), "alice swept", || async {
        !registry.is_online("alice").await.unwrap_or(true)
    })
    .await;
    let swept_after = killed.elapsed();
    eprintln!("swept {swept_after:?} after SIGKILL (lease TTL {ttl_ms} ms)");
    assert!(
        swept_after <= Duration::from_millis(ttl_ms + 1000),
        "swept after {swept_after:?}"
    );
    assert_eq!(
        registry.live_nodes().await.unwrap(),
        [broker_bridge::NodeId::from(b.id.as_str())]
    );
    // Its queue (and its bindings) goes too: the node queues expire one lease TTL (at least 5 s)
    // after their consumer went away (it was 60 s). Looked at once, after that time and some
    // slack (a lookup is a passive declaration, which may count as using the queue).
    let amqp = broker_bridge::AmqpConfig::new(&services.amqp).with_prefix(&services.prefix);
    assert!(amqp.node_queue_exists(&b.id).await.unwrap());
    tokio::time::sleep_until((killed + Duration::from_secs(5 + 4)).into()).await;
    assert!(
        !amqp.node_queue_exists(&a.id).await.unwrap(),
        "the dead node's queue is still there {:?} after SIGKILL",
        killed.elapsed()
    );
    assert!(amqp.node_queue_exists(&b.id).await.unwrap());

    // alice reconnects through nginx (the dead node is skipped) and lands on the survivor.
    let mut alice = Client::connect(&url, "alice").await;
    assert!(alice.on(&b.id), "reconnected to {}", alice.session);
    alice.subscribe("/user/queue/bench").await;
    alice
        .send("/app/bench.direct", &[("to", "bob")], "after")
        .await;
    // The work queue is at-least-once: when the killed node had handled "before" but not yet
    // acknowledged it, RabbitMQ hands the command to the survivor, which delivers it again.
    let mut next = bob.message().await.1;
    if next == "before" {
        next = bob.message().await.1;
    }
    assert_eq!(next, "after");
    bob.send("/app/bench.direct", &[("to", "alice")], "welcome back")
        .await;
    assert_eq!(alice.message().await.1, "welcome back");
    drop((a, b, nginx));
    services.clean().await;
}

#[test]
fn gateway_help_lists_the_scale_out_settings_and_a_secret_is_required() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_instar"))
        .args(["gateway", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "INSTAR_AMQP_URL",
        "INSTAR_REDIS_URL",
        "INSTAR_NODE_ID",
        "INSTAR_LISTEN",
        "INSTAR_BUS_PREFIX",
        "INSTAR_LEASE_TTL_MS",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_instar"))
        .arg("gateway")
        .env_remove("INSTAR_JWT_SECRET")
        .env_remove("INSTAR_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("INSTAR_JWT_SECRET"));
}
