//! Settings for `instar gateway` (a scale-out gateway node): command-line flags, `INSTAR_*`
//! environment variables and an optional TOML file, in that order of precedence, over built-in
//! defaults. `instar gateway --help` lists them all. The gateway settings have the same names as
//! `instar serve`'s; the scale-out ones are the AMQP URL, the Redis URL, the name prefix and the
//! lease TTL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde::Deserialize;

/// Flags of `instar gateway`. Every flag also reads an `INSTAR_*` variable and a key of the same
/// name (with `_`) in the `--config` file.
#[derive(Debug, Args, Default)]
pub(crate) struct GatewayArgs {
    /// TOML file with any of the settings below (keys like `amqp_url`, `redis_url`, `listen`).
    #[arg(long, env = "INSTAR_CONFIG")]
    pub config: Option<PathBuf>,
    /// RabbitMQ (AMQP 0-9-1) URL. [default: amqp://guest:guest@127.0.0.1:5672/%2f]
    #[arg(long, env = "INSTAR_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// Redis URL of the session registry. [default: redis://127.0.0.1:6379]
    #[arg(long, env = "INSTAR_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of AMQP exchange/queue names and Redis keys; the same for every process of one
    /// deployment. [default: instar]
    #[arg(long, env = "INSTAR_BUS_PREFIX")]
    pub bus_prefix: Option<String>,
    /// Lease TTL of this node in the registry, in ms; its sessions are swept this long after it
    /// dies. [default: 10000]
    #[arg(long, env = "INSTAR_LEASE_TTL_MS")]
    pub lease_ttl_ms: Option<u64>,
    /// Keep node queues durable with persistent deliveries (survive a broker restart). [default: true]
    #[arg(long, env = "INSTAR_DURABLE_NODE_QUEUES", value_parser = clap::builder::BoolishValueParser::new())]
    pub durable_node_queues: Option<bool>,
    /// HTTP address for /ws (SockJS), /stomp (WebSocket), /health and /metrics. [default: 127.0.0.1:8080]
    #[arg(long, env = "INSTAR_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address of the raw STOMP-over-TCP listener; "off" disables it. [default: off]
    #[arg(long, env = "INSTAR_TCP_LISTEN")]
    pub tcp_listen: Option<String>,
    /// Secret for HS256/384/512 bearer tokens; the same on every node. [required]
    #[arg(long, env = "INSTAR_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// This node's id: unique among live nodes, used in session ids, queue names and the registry.
    /// [default: node-<random>]
    #[arg(long, env = "INSTAR_NODE_ID")]
    pub node_id: Option<String>,
    /// Heart-beat the server offers and requires at least, in ms, both ways (0 disables). [default: 10000]
    #[arg(long, env = "INSTAR_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u32>,
    /// Largest STOMP frame body accepted, in bytes. [default: 65536]
    #[arg(long, env = "INSTAR_MAX_BODY")]
    pub max_body: Option<usize>,
    /// Frames queued per session before it is closed as a slow consumer. [default: 1024]
    #[arg(long, env = "INSTAR_OUTBOUND_QUEUE")]
    pub outbound_queue: Option<usize>,
    /// SENDs per second one STOMP session may keep up (bursts of five seconds' worth); past it the session gets an ERROR and is closed; 0: unlimited. [default: 200]
    #[arg(long, env = "INSTAR_SEND_RATE")]
    pub send_rate: Option<u32>,
    /// STOMP sessions one user may hold on this node at once; one more gets an ERROR at CONNECT; 0: unlimited. [default: 32]
    #[arg(long, env = "INSTAR_MAX_SESSIONS_PER_USER")]
    pub max_sessions_per_user: Option<u32>,
    /// Bearer token that opens /metrics to other machines; without it only requests from this machine that did not pass a proxy may read it. [default: none]
    #[arg(long, env = "INSTAR_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Seconds sessions get to drain on SIGINT/SIGTERM. [default: 10]
    #[arg(long, env = "INSTAR_DRAIN_SECS")]
    pub drain_secs: Option<u64>,
    /// Accept CONNECT without a token (read-only sessions). [default: false]
    #[arg(long, env = "INSTAR_ALLOW_ANONYMOUS", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_anonymous: Option<bool>,
    /// Comma-separated topic prefixes any authenticated user may subscribe to. [default: public.]
    #[arg(long, env = "INSTAR_PUBLIC_TOPICS", value_delimiter = ',')]
    pub public_topics: Option<Vec<String>>,
    /// Destination rules opening /topic/** and /queue/** to clients' own pub/sub, as a JSON array of {"prefix","subscribe","send","wildcards"} (docs/gateway.md, "Destination rules"); in the file, [[destinations]] tables. [default: none]
    #[arg(long, env = "INSTAR_DESTINATIONS")]
    pub destinations: Option<String>,
    /// Comma-separated exact origins allowed for SockJS/CORS with credentials; empty echoes any. [default: empty]
    #[arg(long, env = "INSTAR_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Register the load-test handlers for /app/bench.* on the bus (never in production). [default: false]
    #[arg(long, env = "INSTAR_BENCH_ECHO", value_parser = clap::builder::BoolishValueParser::new())]
    pub bench_echo: Option<bool>,
    /// The social service's database (MariaDB/MySQL URL). When set, chat room topics are
    /// authorised by membership and SUBSCRIBEs may replay missed messages; when unset, only the
    /// public prefixes can be subscribed to.
    #[arg(long, env = "INSTAR_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Base URL of media objects as browsers load them, for the media URLs in replayed chat
    /// messages: the social processes' S3 or CDN base, or `{public_url}/media` for local media
    /// [default: /media]
    #[arg(long, env = "INSTAR_MEDIA_URL")]
    pub media_url: Option<String>,
}

/// The same settings, as read from the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    amqp_url: Option<String>,
    redis_url: Option<String>,
    bus_prefix: Option<String>,
    lease_ttl_ms: Option<u64>,
    durable_node_queues: Option<bool>,
    listen: Option<SocketAddr>,
    tcp_listen: Option<String>,
    jwt_secret: Option<String>,
    node_id: Option<String>,
    heartbeat_ms: Option<u32>,
    max_body: Option<usize>,
    outbound_queue: Option<usize>,
    send_rate: Option<u32>,
    max_sessions_per_user: Option<u32>,
    metrics_token: Option<String>,
    drain_secs: Option<u64>,
    allow_anonymous: Option<bool>,
    public_topics: Option<Vec<String>>,
    destinations: Option<Vec<gateway::rules::Rule>>,
    allowed_origins: Option<Vec<String>>,
    bench_echo: Option<bool>,
    database_url: Option<String>,
    media_url: Option<String>,
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
    pub tcp_listen: Option<SocketAddr>,
    pub jwt_secret: String,
    pub node_id: String,
    pub heartbeat_ms: u32,
    pub max_body: usize,
    pub outbound_queue: usize,
    pub send_rate: u32,
    pub max_sessions_per_user: u32,
    pub metrics_token: Option<String>,
    pub drain_grace: Duration,
    pub allow_anonymous: bool,
    pub public_topics: Vec<String>,
    pub destinations: gateway::rules::Destinations,
    pub allowed_origins: Vec<String>,
    pub bench_echo: bool,
    pub database_url: Option<String>,
    pub media_url: String,
}

impl GatewayArgs {
    /// Flags and environment over the file over the defaults.
    pub(crate) fn resolve(self) -> anyhow::Result<NodeSettings> {
        let file: FileSettings = crate::config::read_file(self.config.as_deref())?;
        let tcp = self
            .tcp_listen
            .or(file.tcp_listen)
            .unwrap_or_else(|| "off".to_owned());
        let tcp_listen = crate::config::tcp_address(&tcp)?;
        let jwt_secret = self
            .jwt_secret
            .or(file.jwt_secret)
            .filter(|s| !s.is_empty())
            .context("INSTAR_JWT_SECRET (or --jwt-secret) is required: every node must check the same tokens")?;
        let node_id = self
            .node_id
            .or(file.node_id)
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
            amqp_url: self
                .amqp_url
                .or(file.amqp_url)
                .unwrap_or_else(|| broker_bridge::AmqpConfig::default().url),
            redis_url: self
                .redis_url
                .or(file.redis_url)
                .unwrap_or_else(|| broker_bridge::RedisRegistryConfig::default().url),
            bus_prefix: self
                .bus_prefix
                .or(file.bus_prefix)
                .unwrap_or_else(|| "instar".to_owned()),
            lease_ttl: Duration::from_millis(
                self.lease_ttl_ms
                    .or(file.lease_ttl_ms)
                    .unwrap_or(10_000)
                    .max(300),
            ),
            durable_node_queues: self
                .durable_node_queues
                .or(file.durable_node_queues)
                .unwrap_or(true),
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            tcp_listen,
            jwt_secret,
            node_id,
            heartbeat_ms: self.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(10_000),
            max_body: self.max_body.or(file.max_body).unwrap_or(64 * 1024),
            send_rate: self.send_rate.or(file.send_rate).unwrap_or(200),
            max_sessions_per_user: self
                .max_sessions_per_user
                .or(file.max_sessions_per_user)
                .unwrap_or(32),
            metrics_token: self
                .metrics_token
                .clone()
                .or(file.metrics_token.clone())
                .filter(|t| !t.is_empty()),
            outbound_queue: self
                .outbound_queue
                .or(file.outbound_queue)
                .unwrap_or(1024)
                .max(1),
            drain_grace: Duration::from_secs(self.drain_secs.or(file.drain_secs).unwrap_or(10)),
            allow_anonymous: self
                .allow_anonymous
                .or(file.allow_anonymous)
                .unwrap_or(false),
            public_topics: self
                .public_topics
                .or(file.public_topics)
                .unwrap_or_else(|| vec!["public.".to_owned()]),
            destinations: crate::config::destinations(self.destinations, file.destinations)?,
            allowed_origins: self
                .allowed_origins
                .or(file.allowed_origins)
                .unwrap_or_default(),
            bench_echo: self.bench_echo.or(file.bench_echo).unwrap_or(false),
            database_url: self
                .database_url
                .or(file.database_url)
                .filter(|u| !u.is_empty()),
            media_url: self
                .media_url
                .or(file.media_url)
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "/media".to_owned()),
        })
    }
}

impl NodeSettings {
    pub(crate) fn gateway_config(&self) -> gateway::GatewayConfig {
        let mut g = gateway::GatewayConfig::default();
        g.limits.max_body_bytes = self.max_body;
        g.max_ws_message = g
            .max_ws_message
            .max(self.max_body + g.limits.max_head_bytes);
        g.outbound_queue = self.outbound_queue;
        g.send_rate = self.send_rate;
        g.max_sessions_per_user = self.max_sessions_per_user;
        g.metrics_token = self.metrics_token.clone();
        g.session.heartbeat = (self.heartbeat_ms, self.heartbeat_ms);
        g.session.allow_anonymous = self.allow_anonymous;
        g.allowed_origins = self.allowed_origins.clone();
        g.session.destinations = std::sync::Arc::new(self.destinations.clone());
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
            ..broker_bridge::AmqpConfig::new(&self.amqp_url).with_prefix(&self.bus_prefix)
        }
    }
}
