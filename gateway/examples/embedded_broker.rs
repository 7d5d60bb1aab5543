//! The gateway alone as an embedded STOMP broker (in-process bus, no social service), for load
//! tests of clients' own publish/subscribe (docs/benchmarks.md, "Clients' own topics and queues").
//! Not a deployment: `instar serve` is. Reads `INSTAR_JWT_SECRET`, `INSTAR_LISTEN` (default
//! 127.0.0.1:18090) and `INSTAR_DESTINATIONS` (JSON rules, docs/gateway.md); SEND rates and
//! sessions per user are unlimited, as the benchmark scripts set them for `instar serve`.

use std::sync::Arc;

use broker_bridge::{Bus, InProcessConfig, Registry};
use gateway::destination::PrefixPolicy;
use gateway::rules::Destinations;
use gateway::{Gateway, GatewayConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("INSTAR_JWT_SECRET")?;
    let listen = std::env::var("INSTAR_LISTEN").unwrap_or_else(|_| "127.0.0.1:18090".into());
    let rules = std::env::var("INSTAR_DESTINATIONS").unwrap_or_else(|_| "[]".into());
    let mut config = GatewayConfig {
        send_rate: 0,
        max_sessions_per_user: 0,
        outbound_queue: 4096,
        ..GatewayConfig::default()
    };
    config.session.destinations = Arc::new(Destinations::from_json(&rules)?);
    let bus = Bus::in_process(Registry::in_process(), InProcessConfig::default());
    let gw = Gateway::start(
        "bench".into(),
        config,
        secret.as_bytes(),
        bus,
        Arc::new(PrefixPolicy::new(["public."])),
    )
    .await?;
    let (addr, http) = gateway::server::serve_http(
        gw.routes(),
        listen.parse()?,
        gateway::listen::HttpLimits::default(),
        gw.http_stats.clone(),
        gw.shutdown.clone(),
    )
    .await?;
    eprintln!("listening on ws://{addr}/stomp");
    http.await;
    Ok(())
}
