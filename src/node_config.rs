//! Settings of `instar gateway` (a scale-out gateway node): the sections it composes
//! (src/settings/sections.rs), merged as defaults < `--config` TOML < `INSTAR_*` variables < flags.
//! `instar gateway --help` lists them all. The edge settings are `instar serve`'s; the scale-out
//! ones are RabbitMQ, Redis, the name prefix and the lease TTL, and the database for chat rooms.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgMatches, Args, Command};
use serde::{Deserialize, Serialize};

use crate::settings::sections::{
    Bench, Bus, ConfigFile, Database, Http, Jwt, Ops, Redis, Replay, Stomp,
};
use crate::settings::{self, Loaded};

/// Flags of `instar gateway`.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub(crate) struct GatewayArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub file: ConfigFile,
    #[command(flatten)]
    #[serde(flatten)]
    pub bus: Bus,
    #[command(flatten)]
    #[serde(flatten)]
    pub redis: Redis,
    #[command(flatten)]
    #[serde(flatten)]
    pub http: Http,
    #[command(flatten)]
    #[serde(flatten)]
    pub stomp: Stomp,
    #[command(flatten)]
    #[serde(flatten)]
    pub jwt: Jwt,
    #[command(flatten)]
    #[serde(flatten)]
    pub ops: Ops,
    #[command(flatten)]
    #[serde(flatten)]
    pub bench: Bench,
    #[command(flatten)]
    #[serde(flatten)]
    pub database: Database,
    #[command(flatten)]
    #[serde(flatten)]
    pub replay: Replay,
}

/// Resolved settings of one gateway node.
#[derive(Debug, Clone)]
pub(crate) struct NodeSettings {
    pub amqp_url: String,
    pub redis_url: String,
    pub bus_prefix: String,
    pub lease_ttl: Duration,
    pub durable_node_queues: bool,
    pub listen: SocketAddr,
    /// The HTTP listener's timeouts and caps.
    pub http_limits: gateway::listen::HttpLimits,
    pub tcp_listen: Option<SocketAddr>,
    pub jwt_secret: String,
    pub node_id: String,
    pub stomp: Stomp,
    /// The destination rules, checked.
    pub destinations: gateway::rules::Destinations,
    pub metrics_token: Option<String>,
    pub drain_grace: Duration,
    pub allow_anonymous: bool,
    pub public_topics: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub bench_echo: bool,
    pub database_url: Option<String>,
    pub pool: migrations::PoolSettings,
    pub media_url: String,
}

impl GatewayArgs {
    /// Defaults, file, variables and flags merged.
    pub(crate) fn load(cmd: &Command, matches: &ArgMatches) -> anyhow::Result<Loaded<Self>> {
        settings::load(cmd, matches)
    }
}

impl Loaded<GatewayArgs> {
    /// The settings the node runs with.
    pub(crate) fn resolve(&self) -> anyhow::Result<NodeSettings> {
        let a = &self.value;
        let tcp_listen = settings::tcp_address(&a.stomp.tcp_listen)?;
        let jwt_secret = a
            .jwt
            .jwt_secret
            .clone()
            .filter(|s| !s.is_empty())
            .context("INSTAR_JWT_SECRET (or --jwt-secret) is required: every node must check the same tokens")?;
        let node_id = a
            .stomp
            .node_id
            .clone()
            .unwrap_or_else(|| format!("node-{}", gateway::random_id(6)));
        anyhow::ensure!(
            !node_id.is_empty()
                && node_id.len() <= 100
                && node_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "node id '{node_id}' must be 1-100 characters of [A-Za-z0-9_-]"
        );
        Ok(NodeSettings {
            amqp_url: a.bus.amqp_url.clone(),
            redis_url: a
                .redis
                .redis_url
                .clone()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| broker_bridge::RedisRegistryConfig::default().url),
            bus_prefix: a.bus.bus_prefix.clone(),
            lease_ttl: Duration::from_millis(a.bus.lease_ttl_ms.max(300)),
            durable_node_queues: a.bus.durable_node_queues,
            listen: a.http.listen,
            http_limits: a.http.limits()?,
            tcp_listen,
            jwt_secret,
            node_id,
            destinations: crate::settings::sections::DestinationRules::checked(
                a.stomp.destinations.as_ref(),
            )?,
            stomp: a.stomp.clone(),
            metrics_token: a.ops.metrics_token.clone().filter(|t| !t.is_empty()),
            drain_grace: Duration::from_secs(a.ops.drain_secs),
            allow_anonymous: a.stomp.allow_anonymous,
            public_topics: a.stomp.public_topics.clone(),
            allowed_origins: a.stomp.allowed_origins.clone().unwrap_or_default(),
            bench_echo: a.bench.bench_echo,
            database_url: a.database.database_url.clone().filter(|u| !u.is_empty()),
            pool: migrations::PoolSettings {
                max_connections: a.database.database_pool.max(1),
                ..migrations::PoolSettings::default()
            },
            media_url: Some(a.replay.media_url.clone())
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| social::media::DEFAULT_URL_PREFIX.to_owned()),
        })
    }
}

impl NodeSettings {
    pub(crate) fn gateway_config(&self) -> gateway::GatewayConfig {
        let mut g = crate::config::gateway_config(
            &self.stomp,
            &self.destinations,
            self.metrics_token.clone(),
            self.allowed_origins.clone(),
        );
        // SockJS sessions per client address, through the same proxies as the listener's cap.
        g.proxies = self.http_limits.cap_exempt.clone();
        // The raw STOMP/TCP listener takes the HTTP listener's connection caps.
        g.tcp_limits = self.http_limits.clone();
        g
    }

    pub(crate) fn registry_config(&self) -> broker_bridge::RedisRegistryConfig {
        broker_bridge::RedisRegistryConfig::new(&self.redis_url)
            .with_prefix(format!("{}:", self.bus_prefix))
            .with_lease_ttl(self.lease_ttl)
    }

    pub(crate) fn amqp_config(&self) -> broker_bridge::AmqpConfig {
        broker_bridge::AmqpConfig {
            durable_node_queues: self.durable_node_queues,
            // A dead node's queue (and its bindings, and what was routed to it since) goes about
            // when the registry sweeps its sessions: one lease TTL after its consumer vanished
            // (5 s at least, so a reconnect after a broker blip finds it). It was 60 s, which
            // kept a dead node's queue collecting persistent deliveries for a minute.
            node_queue_expires: self.lease_ttl.max(std::time::Duration::from_secs(5)),
            ..broker_bridge::AmqpConfig::new(&self.amqp_url).with_prefix(&self.bus_prefix)
        }
    }
}
