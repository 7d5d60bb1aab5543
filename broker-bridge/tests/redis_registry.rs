//! The Redis registry against a real Redis (`INSTAR_TEST_REDIS_URL`), and against a private
//! `redis-server` for the restart test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use broker_bridge::{BusError, Health, NodeId, RedisRegistryConfig, Registry, SessionEntry};
use common::{clean_redis, eventually, service, unique};

fn entry(session: &str, user: &str, node: &str) -> SessionEntry {
    SessionEntry {
        session: session.to_owned(),
        user: user.to_owned(),
        node: NodeId::from(node),
        connected_at_ms: 1_700_000_000_123,
    }
}

fn config(url: &str, prefix: &str) -> RedisRegistryConfig {
    RedisRegistryConfig {
        lease_ttl: Duration::from_millis(900),
        ..RedisRegistryConfig::new(url).with_prefix(prefix)
    }
}

async fn registry(url: &str, prefix: &str) -> Registry {
    Registry::redis(config(url, prefix)).await.unwrap()
}

fn ids(entries: &[SessionEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.session.as_str()).collect()
}

#[tokio::test]
async fn register_lookup_unregister_and_remove_node() {
    let Some(url) = service("INSTAR_TEST_REDIS_URL") else {
        return;
    };
    let prefix = format!("{}:", unique("reg"));
    let reg = registry(&url, &prefix).await;
    reg.register(entry("s1", "alice", "gw-1")).await.unwrap();
    reg.register(entry("s2", "alice", "gw-2")).await.unwrap();
    reg.register(entry("s3", "alice", "gw-1")).await.unwrap();
    reg.register(entry("s4", "bob", "gw-2")).await.unwrap();

    let alice = reg.sessions_of("alice").await.unwrap();
    assert_eq!(ids(&alice), ["s1", "s2", "s3"], "registration order");
    assert_eq!(
        alice[0],
        entry("s1", "alice", "gw-1"),
        "entry survives as written"
    );
    assert_eq!(
        reg.nodes_of("alice").await.unwrap(),
        [NodeId::from("gw-1"), NodeId::from("gw-2")]
    );
    assert_eq!(
        reg.presence("alice").await.unwrap(),
        [(NodeId::from("gw-1"), 2), (NodeId::from("gw-2"), 1)]
    );
    assert!(reg.is_online("bob").await.unwrap());
    assert!(!reg.is_online("carol").await.unwrap());
    assert_eq!(
        reg.session("s4").await.unwrap(),
        Some(entry("s4", "bob", "gw-2"))
    );
    assert_eq!(reg.session("nope").await.unwrap(), None);

    // Re-registering a session id replaces its entry (and moves it to the end).
    reg.register(entry("s1", "alice", "gw-3")).await.unwrap();
    assert_eq!(
        ids(&reg.sessions_of("alice").await.unwrap()),
        ["s2", "s3", "s1"]
    );
    assert_eq!(
        reg.session("s1").await.unwrap().unwrap().node,
        NodeId::from("gw-3")
    );

    reg.unregister("s2").await.unwrap();
    reg.unregister("unknown").await.unwrap();
    assert_eq!(ids(&reg.sessions_of("alice").await.unwrap()), ["s3", "s1"]);

    // Sweep gw-1 explicitly: s3 goes, bob (gw-2) stays.
    assert_eq!(reg.remove_node(&NodeId::from("gw-1")).await.unwrap(), 1);
    assert_eq!(ids(&reg.sessions_of("alice").await.unwrap()), ["s1"]);
    assert!(reg.is_online("bob").await.unwrap());
    reg.unregister("s1").await.unwrap();
    assert!(!reg.is_online("alice").await.unwrap());
    assert_eq!(reg.presence("alice").await.unwrap(), []);
    assert_eq!(reg.health(), Health::Up);
    clean_redis(&url, &prefix).await;
}

#[tokio::test]
async fn a_held_lease_keeps_sessions_forever_and_excludes_a_second_holder() {
    let Some(url) = service("INSTAR_TEST_REDIS_URL") else {
        return;
    };
    let prefix = format!("{}:", unique("lease"));
    let reg = registry(&url, &prefix).await;
    let node = NodeId::from("gw-a");
    let lease = reg.hold_lease(&node).await.unwrap();
    reg.register(entry("s1", "alice", "gw-a")).await.unwrap();
    assert_eq!(reg.live_nodes().await.unwrap(), std::slice::from_ref(&node));

    // Several TTLs later the session is still there: leases are refreshed, entries never expire.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(reg.is_online("alice").await.unwrap());
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for key in [
        format!("{prefix}s:s1"),
        format!("{prefix}u:alice"),
        format!("{prefix}n:gw-a"),
    ] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(ttl, -1, "{key} must have no expiry");
    }

    // Another process cannot take the lease while it is refreshed.
    let other = registry(&url, &prefix).await;
    let started = std::time::Instant::now();
    let err = other.hold_lease(&node).await.unwrap_err();
    assert_eq!(err, BusError::NodeInUse("gw-a".into()));
    assert!(started.elapsed() >= Duration::from_millis(900));
    // The same process cannot hold it twice either.
    assert_eq!(
        reg.hold_lease(&node).await.unwrap_err(),
        BusError::NodeInUse("gw-a".into())
    );

    // Releasing deletes the lease and the node's sessions; then the other process may take it.
    lease.release().await.unwrap();
    assert!(!reg.is_online("alice").await.unwrap());
    assert!(reg.live_nodes().await.unwrap().is_empty());
    let lease = other.hold_lease(&node).await.unwrap();
    drop(lease);
    clean_redis(&url, &prefix).await;
}

/// A node "killed" without releasing its lease (its runtime is torn down, as a SIGKILL would) has
/// its sessions swept by a surviving node within about one lease TTL plus the sweep interval.
#[tokio::test]
async fn sessions_of_a_dead_node_are_swept_after_its_lease_expires() {
    let Some(url) = service("INSTAR_TEST_REDIS_URL") else {
        return;
    };
    let prefix = format!("{}:", unique("sweep"));
    let survivor = registry(&url, &prefix).await;
    let _survivor_lease = survivor.hold_lease(&NodeId::from("gw-live")).await.unwrap();
    survivor
        .register(entry("live-1", "bob", "gw-live"))
        .await
        .unwrap();

    // The doomed node runs on its own runtime, which is dropped without releasing the lease.
    let (url2, prefix2) = (url.clone(), prefix.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let reg = registry(&url2, &prefix2).await;
            let lease = reg.hold_lease(&NodeId::from("gw-dead")).await.unwrap();
            reg.register(entry("dead-1", "alice", "gw-dead"))
                .await
                .unwrap();
            reg.register(entry("dead-2", "bob", "gw-dead"))
                .await
                .unwrap();
            std::mem::forget(lease);
        });
        drop(rt);
    })
    .join()
    .unwrap();
    assert!(survivor.is_online("alice").await.unwrap());
    let killed = std::time::Instant::now();
    eventually(Duration::from_secs(5), "dead node swept", || async {
        !survivor.is_online("alice").await.unwrap()
    })
    .await;
    let took = killed.elapsed();
    // Within the lease TTL (900 ms), plus scheduling slack.
    assert!(took <= Duration::from_millis(1600), "swept after {took:?}");
    assert_eq!(ids(&survivor.sessions_of("bob").await.unwrap()), ["live-1"]);
    assert_eq!(
        survivor.live_nodes().await.unwrap(),
        [NodeId::from("gw-live")]
    );
    clean_redis(&url, &prefix).await;
}

/// Redis restarts empty: the node takes its lease again and writes its live sessions back; a
/// session that ended during the outage does not come back.
#[tokio::test]
async fn sessions_are_written_back_after_a_redis_restart() {
    let Some(mut server) = common::RedisServer::start() else {
        return;
    };
    let url = server.url();
    let reg = registry(&url, "instar:").await;
    let _lease = reg.hold_lease(&NodeId::from("gw-1")).await.unwrap();
    reg.register(entry("s1", "alice", "gw-1")).await.unwrap();
    reg.register(entry("s2", "alice", "gw-1")).await.unwrap();
    reg.register(entry("s3", "bob", "gw-1")).await.unwrap();

    server.stop();
    // During the outage: operations fail (and health says so); s3 ends.
    assert!(matches!(
        reg.sessions_of("alice").await,
        Err(BusError::Unavailable(_))
    ));
    assert!(matches!(reg.health(), Health::Down(_)));
    let _ = reg.unregister("s3").await;
    server.restart();

    eventually(Duration::from_secs(6), "sessions written back", || async {
        reg.sessions_of("alice").await.is_ok_and(|s| s.len() == 2)
    })
    .await;
    assert_eq!(ids(&reg.sessions_of("alice").await.unwrap()), ["s1", "s2"]);
    assert!(!reg.is_online("bob").await.unwrap());
    assert_eq!(reg.live_nodes().await.unwrap(), [NodeId::from("gw-1")]);
    eventually(Duration::from_secs(3), "health up", || async {
        reg.health() == Health::Up
    })
    .await;
}
