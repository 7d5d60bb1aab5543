//! Two `instar gateway` nodes on the shared RabbitMQ and a private `redis-server` that is restarted
//! empty: the nodes write their live sessions back and user messages between them flow again.
#![allow(clippy::unwrap_used)]

mod scaleout_support;

use std::time::Duration;

use broker_bridge::NodeId;
use scaleout_support::{Client, Node, RedisServer, Services, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_written_back_after_a_redis_restart() {
    let Some(mut services) = Services::get("rds") else {
        return;
    };
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    services.redis = redis.url();
    // A long lease: nodes still notice the loss within a quarter of a second (refreshes run at
    // least every 250 ms), not after a quarter of the TTL (5 s).
    let a = Node::start(&services, &format!("{}a", services.prefix), 20_000).await;
    let b = Node::start(&services, &format!("{}b", services.prefix), 20_000).await;
    let mut alice = Client::connect(&format!("ws://{}/stomp", a.addr), "alice").await;
    let mut bob = Client::connect(&format!("ws://{}/stomp", b.addr), "bob").await;
    alice.subscribe("/user/queue/bench").await;
    bob.subscribe("/user/queue/bench").await;
    alice
        .send("/app/bench.direct", &[("to", "bob")], "one")
        .await;
    assert_eq!(bob.message().await.1, "one");

    redis.restart();
    let restarted = std::time::Instant::now();
    // Sent at once, before the nodes noticed: the push waits for bob's session to come back
    // instead of finding nobody online and being dropped.
    alice
        .send("/app/bench.direct", &[("to", "bob")], "during")
        .await;
    let registry = services.registry().await;
    eventually(Duration::from_secs(10), "sessions written back", || async {
        registry.nodes_of("alice").await.unwrap_or_default() == [NodeId::from(a.id.as_str())]
            && registry.nodes_of("bob").await.unwrap_or_default() == [NodeId::from(b.id.as_str())]
    })
    .await;
    let written_back = restarted.elapsed();
    eprintln!("sessions written back {written_back:?} after the restart");
    assert!(
        written_back < Duration::from_secs(2),
        "written back after {written_back:?}"
    );
    assert_eq!(bob.message().await.1, "during");
    eventually(Duration::from_secs(10), "both leases back", || async {
        registry.live_nodes().await.unwrap_or_default().len() == 2
    })
    .await;

    alice
        .send("/app/bench.direct", &[("to", "bob")], "two")
        .await;
    assert_eq!(bob.message().await.1, "two");
    bob.send("/app/bench.direct", &[("to", "alice")], "three")
        .await;
    assert_eq!(alice.message().await.1, "three");
    drop((a, b));
    services.clean().await;
}
