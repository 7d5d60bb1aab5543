//! `instar gateway`: one scale-out gateway node. Same edge as `instar serve` (`/stomp`, `/ws`,
//! optional TCP), but the bus is RabbitMQ and the session registry Redis, so N such processes behind
//! nginx (see `deploy/` and `docs/scaleout.md`) serve one deployment. Application commands go to the
//! durable work queues for the social workers; this process handles none, except the load-test
//! handlers when `INSTAR_BENCH_ECHO=1`. Given the database (`INSTAR_DATABASE_URL`), it authorises
//! chat room topics by membership and replays missed messages, reading the store directly.

use std::sync::Arc;

use anyhow::Context as _;
use broker_bridge::{Bus, Registry};
use gateway::Gateway;
use gateway::destination::PrefixPolicy;

use crate::node_config::NodeSettings;

pub(crate) async fn run(cfg: NodeSettings) -> anyhow::Result<()> {
    let registry = Registry::redis(cfg.registry_config())
        .await
        .with_context(|| format!("connecting to the session registry at {}", cfg.redis_url))?;
    let bus = Bus::amqp(registry, cfg.amqp_config())
        .await
        .context("connecting to RabbitMQ")?;
    if cfg.bench_echo {
        tracing::warn!(
            "INSTAR_BENCH_ECHO is on: /app/bench.* republishes client messages (load tests only)"
        );
        crate::bench::BenchEcho::register(&bus);
    }
    let public = PrefixPolicy::new(cfg.public_topics.clone()).allow_anonymous(cfg.allow_anonymous);
    let rooms = match &cfg.database_url {
        Some(url) => Some(
            social::chat::Rooms::open(
                url,
                &cfg.pool,
                social::media::Links::new(None, &cfg.media_url),
            )
            .await
            .with_context(|| format!("opening the database at {}", migrations::redact(url)))?,
        ),
        None => {
            tracing::warn!(
                "no INSTAR_DATABASE_URL: chat room topics cannot be authorised and are refused"
            );
            None
        }
    };
    let policy: Arc<dyn gateway::destination::TopicPolicy> = match &rooms {
        Some(rooms) => Arc::new(crate::policy::RoomPolicy::new(public, rooms.clone())),
        None => Arc::new(public),
    };
    let node = cfg.node_id.clone();
    let gw = Gateway::start(
        node.as_str().into(),
        cfg.gateway_config(),
        cfg.jwt_secret.as_bytes(),
        bus.clone(),
        policy,
    )
    .await
    .context("attaching the gateway node to the bus")?;

    // One connection budget for this port and the STOMP/TCP one (GatewayConfig::tcp_limits is
    // cfg.http_limits).
    let listener = gateway::server::bind_nodelay(cfg.listen)
        .with_context(|| format!("binding HTTP on {}", cfg.listen))?;
    let (addr, http) = gateway::server::serve_node_http(&gw, gw.routes(), listener)
        .with_context(|| format!("binding HTTP on {}", cfg.listen))?;
    tracing::info!(%addr, node = %node, "HTTP listening: /stomp (STOMP over WebSocket), /ws (SockJS), /health");
    let http = tokio::spawn(http);

    if let Some(tcp) = cfg.tcp_listen {
        let listener = tokio::net::TcpListener::bind(tcp)
            .await
            .with_context(|| format!("binding STOMP/TCP on {tcp}"))?;
        tracing::info!(addr = %listener.local_addr()?, "STOMP over TCP listening");
        tokio::spawn(gateway::serve_tcp(gw.clone(), listener));
    }

    crate::shutdown_signal().await;
    tracing::info!(
        sessions = gw.open_sessions(),
        "shutting down: draining sessions"
    );
    gw.drain(cfg.drain_grace).await;
    let _ = tokio::time::timeout(cfg.drain_grace, http).await;
    // Sessions unregistered themselves while draining; detaching deletes the node queue, releases
    // the lease and removes any session entry left (a registry outage): nothing waits for expiry.
    bus.shutdown().await;
    if let Some(rooms) = rooms {
        rooms.close().await;
    }
    tracing::info!("stopped");
    Ok(())
}
