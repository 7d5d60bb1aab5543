//! The settings, declared once, one struct per section. Each field is at the same time a flag
//! (`--field-name`), an `INSTAR_FIELD_NAME` variable (named in [`super::finish`]) and a key of the
//! `--config` TOML file (`field_name`); its default is the clap default below, the one value the
//! code uses and `--help` shows. Fields without a default are `Option`s whose absence means what
//! their help says. The three commands compose the sections they use (`config.rs`,
//! `node_config.rs`, `social_cmd.rs`); the social service's sections sit under a `[social]` table
//! of the file (`SocialArgs`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::ArgAction;
use clap::Args;
use clap::builder::BoolishValueParser;
use serde::{Deserialize, Serialize};

/// `listen` of `instar serve` and `instar gateway`.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// `listen` of `instar social` (next to a gateway on the same machine).
pub(crate) const SOCIAL_LISTEN: &str = "127.0.0.1:8081";
/// `tcp_listen` of `instar serve`.
pub(crate) const DEFAULT_TCP_LISTEN: &str = "127.0.0.1:61613";
/// `tcp_listen` of `instar gateway` (nginx fronts HTTP only).
pub(crate) const GATEWAY_TCP_LISTEN: &str = "off";

/// The `--config` file itself (not a setting: it says where the other settings are).
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct ConfigFile {
    /// TOML file with any of the settings (the keys of docs/configuration.md; the social
    /// service's under a `[social]` table). Variables and flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the effective settings (defaults, file, variables and flags merged) as JSON, secrets
    /// masked, and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The HTTP listener.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "HTTP")]
pub(crate) struct Http {
    /// HTTP address: /api and /media (REST), /stomp (STOMP over WebSocket), /ws (SockJS),
    /// /health and /metrics, as far as the command serves them.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Seconds a client has to send a whole request head, counted from when the server starts
    /// waiting for it (a new connection, or the end of the previous response: also the
    /// keep-alive idle limit); then the connection is closed.
    #[arg(long, default_value_t = gateway::listen::HttpLimits::default().header_timeout.as_secs())]
    pub http_header_timeout_secs: u64,
    /// Seconds a request body may pause between two pieces; then the request fails and the
    /// connection is closed.
    #[arg(long, default_value_t = gateway::listen::HttpLimits::default().body_timeout.as_secs())]
    pub http_body_timeout_secs: u64,
    /// Seconds a connection with a request open may move no byte either way (a stalled upload, a
    /// client that stops reading) before it is closed; time a route spends on its answer does not
    /// count. WebSockets are exempt (heart-beats govern them).
    #[arg(long, default_value_t = gateway::listen::HttpLimits::default().idle_timeout.as_secs())]
    pub http_idle_timeout_secs: u64,
    /// HTTP connections open at once (WebSockets included); lowered to the open-file limit less
    /// an eighth (at least 128 kept for the database, Redis, logs and health checks). One more
    /// is answered 503 and closed. The raw STOMP/TCP listener of the same process counts against
    /// the same cap (one more gets an ERROR and is closed).
    #[arg(long, default_value_t = gateway::listen::HttpLimits::default().max_connections)]
    pub http_max_connections: usize,
    /// HTTP connections open at once from one client address (IPv6: one /64), except
    /// trusted_proxies; 0: unlimited. Connections to the raw STOMP/TCP listener of the same
    /// process count against the same cap.
    #[arg(long, default_value_t = gateway::listen::HttpLimits::default().max_connections_per_address)]
    pub http_max_connections_per_address: usize,
    /// The proxies in front (addresses or CIDRs, comma-separated; `none` for none): their
    /// X-Forwarded-For (read right to left through these hops), -Host and -Proto are believed,
    /// so the address they forward names the client (rate limits, SockJS sessions per address);
    /// their connections carry many clients, so the per-address connection caps do not apply to
    /// them. Deprecated aliases: INSTAR_HTTP_PROXIES, and the file keys `http_proxies` and
    /// `social.trusted_proxies` (each logs a warning).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.0/8,::1/128")]
    pub trusted_proxies: Vec<String>,
    /// Largest request head (request line and headers), in bytes (at least 8192); a larger one
    /// is refused with 431.
    #[arg(long, default_value_t = gateway::listen::HttpLimits::default().max_header_bytes)]
    pub http_max_header_bytes: usize,
}

impl Http {
    /// The trusted proxies, addresses checked (`none`: none).
    pub(crate) fn trusted_proxies(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        let mut nets = Vec::new();
        for p in &self.trusted_proxies {
            let p = p.trim();
            if p.eq_ignore_ascii_case("none") {
                nets.clear();
                break;
            }
            if p.is_empty() {
                continue;
            }
            let net = p
                .parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    anyhow::anyhow!("trusted_proxies: '{p}' is not an address or a CIDR")
                })?;
            nets.push(net);
        }
        Ok(nets)
    }

    /// The listener's limits, addresses checked.
    pub(crate) fn limits(&self) -> anyhow::Result<gateway::listen::HttpLimits> {
        let cap_exempt = self.trusted_proxies()?;
        anyhow::ensure!(
            self.http_header_timeout_secs > 0
                && self.http_body_timeout_secs > 0
                && self.http_idle_timeout_secs > 0,
            "http_header_timeout_secs, http_body_timeout_secs and http_idle_timeout_secs must be at least 1"
        );
        anyhow::ensure!(
            self.http_max_connections > 0,
            "http_max_connections must be at least 1"
        );
        Ok(gateway::listen::HttpLimits {
            header_timeout: std::time::Duration::from_secs(self.http_header_timeout_secs),
            body_timeout: std::time::Duration::from_secs(self.http_body_timeout_secs),
            idle_timeout: std::time::Duration::from_secs(self.http_idle_timeout_secs),
            max_connections: self.http_max_connections,
            max_connections_per_address: self.http_max_connections_per_address,
            cap_exempt,
            max_header_bytes: self.http_max_header_bytes.max(8192),
        })
    }
}

/// The STOMP edge: listeners, limits, heart-beats and who may subscribe to what.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "STOMP gateway")]
pub(crate) struct Stomp {
    /// Address of the raw STOMP-over-TCP listener; "off" disables it.
    #[arg(long, default_value = DEFAULT_TCP_LISTEN)]
    pub tcp_listen: String,
    /// This node's id: unique among live nodes, used in session ids, queue names and the
    /// registry (1-100 characters of [A-Za-z0-9_-]). Unset: node-<random>.
    #[arg(long)]
    pub node_id: Option<String>,
    /// Heart-beat the server offers and requires at least, in ms, both ways (0 disables).
    #[arg(long, default_value_t = 10_000)]
    pub heartbeat_ms: u32,
    /// Largest STOMP frame body accepted, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_body: usize,
    /// Largest WebSocket message or SockJS batch accepted, in bytes (at least max_body plus the
    /// largest frame head).
    #[arg(long, default_value_t = gateway::GatewayConfig::default().max_ws_message)]
    pub max_ws_message: usize,
    /// Frames queued per session before it is closed as a slow consumer.
    #[arg(long, default_value_t = 1024)]
    pub outbound_queue: usize,
    /// SENDs per second one STOMP session may keep up (bursts of five seconds' worth); past it
    /// the session gets an ERROR and is closed; 0: unlimited.
    #[arg(long, default_value_t = 200)]
    pub send_rate: u32,
    /// SENDs to /app/** a node holds while the message bus cannot take them (a RabbitMQ outage),
    /// flushed in order when it is back; their RECEIPTs follow the broker's confirm. Past it a SEND
    /// with a receipt gets a RECEIPT with x-instar-error, one without an ERROR. 0: no buffer.
    #[arg(long, default_value_t = gateway::sendbuf::SendBufferConfig::default().max_commands)]
    pub send_buffer_commands: usize,
    /// Top-level field of a JSON SEND body to /app/** that orders commands: the commands with one
    /// value (for chat, one room) are handled by one social process at a time, so a room's
    /// messages are broadcast in message-id order; commands without it are placed by session.
    /// Empty: by session only.
    #[arg(long, default_value = gateway::order::DEFAULT_FIELD)]
    pub command_order_field: String,
    /// Bytes (bodies and headers) of the SEND buffer at most.
    #[arg(long, default_value_t = gateway::sendbuf::SendBufferConfig::default().max_bytes)]
    pub send_buffer_bytes: usize,
    /// STOMP sessions one user may hold on this node at once; one more gets an ERROR at
    /// CONNECT; 0: unlimited.
    #[arg(long, default_value_t = 32)]
    pub max_sessions_per_user: u32,
    /// SockJS sessions open at once from one client address (IPv6: one /64; behind a proxy of
    /// trusted_proxies, the address it forwards); one more is answered 503; 0: unlimited.
    #[arg(long, default_value_t = gateway::sockjs::SockJsConfig::default().max_sessions_per_address)]
    pub sockjs_max_sessions_per_address: usize,
    /// Seconds a new connection has to send CONNECT.
    #[arg(long, default_value_t = gateway::GatewayConfig::default().connect_timeout.as_secs())]
    pub connect_timeout_secs: u64,
    /// Seconds after a session ends during which its user's next session resumes its chat rooms
    /// server-side: a room SUBSCRIBE without x-instar-last-message-id, sent soon after CONNECTED
    /// (chat_resume_after_connect_ms), first gets what the ended session missed (docs/chat.md,
    /// "Resume without the header"); 0 disables.
    #[arg(long, default_value_t = gateway::GatewayConfig::default().resume_window.as_secs())]
    pub chat_resume_window_secs: u64,
    /// How long after CONNECTED a room SUBSCRIBE counts as a client's automatic re-subscription
    /// (resumed server-side) rather than a user opening the room (which reloads its history, so
    /// a resume would show messages twice), in ms.
    #[arg(long, default_value_t = u64::try_from(gateway::GatewayConfig::default().resume_after_connect.as_millis()).unwrap_or(1000))]
    pub chat_resume_after_connect_ms: u64,
    /// Accept CONNECT without a token (read-only sessions).
    #[arg(long, default_value_t = false, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub allow_anonymous: bool,
    /// Comma-separated topic prefixes any authenticated user may subscribe to.
    #[arg(long, value_delimiter = ',', default_value = "public.")]
    pub public_topics: Vec<String>,
    /// Comma-separated exact origins allowed for SockJS/CORS with credentials; empty echoes any.
    /// Unset: `instar serve` allows its cors_origin, `instar gateway` echoes any.
    #[arg(long, value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Destination rules opening /topic/** and /queue/** to clients' own pub/sub
    /// (docs/gateway.md, "Destination rules"): a JSON array of {"prefix", "subscribe", "send",
    /// "wildcards"}; in the file, [[destinations]] tables. Unset: none (only the app's own
    /// destinations).
    #[arg(long, value_parser = parse_destinations)]
    pub destinations: Option<DestinationRules>,
}

/// The destination rules as given (checked by [`DestinationRules::checked`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct DestinationRules(pub Vec<gateway::rules::Rule>);

impl DestinationRules {
    /// The rules, checked and ordered; every problem is reported at once.
    pub(crate) fn checked(
        rules: Option<&DestinationRules>,
    ) -> anyhow::Result<gateway::rules::Destinations> {
        let rules = rules.map(|r| r.0.clone()).unwrap_or_default();
        gateway::rules::Destinations::new(rules)
            .map_err(|e| anyhow::anyhow!("INSTAR_DESTINATIONS / destinations: {e}"))
    }
}

/// Reads `INSTAR_DESTINATIONS` / `--destinations` (JSON), checking the rules at once.
fn parse_destinations(text: &str) -> Result<DestinationRules, String> {
    let rules: Vec<gateway::rules::Rule> =
        serde_json::from_str(text).map_err(|e| format!("invalid destination rules: {e}"))?;
    gateway::rules::Destinations::new(rules.clone())?;
    Ok(DestinationRules(rules))
}

/// The token secret.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Tokens")]
pub(crate) struct Jwt {
    /// Secret of the HS256/384/512 bearer tokens, at least 32 bytes, the same on every process
    /// of a deployment. Required by `instar gateway` and `instar social`; unset, `instar serve`
    /// makes a random one per start (with a warning), so tokens do not survive a restart.
    #[arg(long, hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

/// What operators see and how the process stops.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Operations")]
pub(crate) struct Ops {
    /// Bearer token that opens /metrics to other machines. Unset: only requests from this
    /// machine that did not pass a proxy may read it.
    #[arg(long, hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Seconds sessions and in-flight requests get to finish on SIGINT/SIGTERM.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
    /// Log lines on stderr: `text` (for people) or `json` (one object a line, with the fields of
    /// the spans a line was logged in: request id, user, session, node, room). `INSTAR_LOG`
    /// chooses what is logged.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// OpenTelemetry span export: the OTLP/HTTP (protobuf) address of a collector, e.g.
    /// `http://127.0.0.1:4318` (spans go to `<url>/v1/traces`; a URL ending in `/v1/traces` is
    /// used as is). Spans are sent in batches from a thread of their own, never holding up a
    /// request, and flushed at shutdown; `service.name` is `instar-<command>`,
    /// `service.instance.id` the node id. `OTEL_*` variables tune the batches and the resource.
    /// Unset: no export.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
}

/// The load-test handlers.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Operations")]
pub(crate) struct Bench {
    /// Register the load-test handlers for /app/bench.* (never in production).
    #[arg(long, default_value_t = false, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub bench_echo: bool,
}

/// The in-process bus of `instar serve`.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Operations")]
pub(crate) struct InProcessBus {
    /// Concurrent workers running application commands (/app/send, ...); one session's commands
    /// always go to the same worker, in order (1-1024).
    #[arg(long, default_value_t = 128)]
    pub command_workers: usize,
}

/// RabbitMQ and the node lease of the scale-out commands.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "RabbitMQ")]
pub(crate) struct Bus {
    /// RabbitMQ (AMQP 0-9-1) URL.
    #[arg(long, hide_env_values = true, default_value_t = broker_bridge::AmqpConfig::default().url)]
    pub amqp_url: String,
    /// Prefix of AMQP exchange/queue names and Redis registry keys; the same for every process of
    /// one deployment.
    #[arg(long, default_value_t = broker_bridge::AmqpConfig::default().prefix)]
    pub bus_prefix: String,
    /// Keep node queues durable with persistent deliveries (survive a broker restart).
    #[arg(long, default_value_t = broker_bridge::AmqpConfig::default().durable_node_queues, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub durable_node_queues: bool,
    /// Lease TTL of this node in the registry, in ms (at least 300); its sessions are swept this
    /// long after it dies.
    #[arg(long, default_value_t = broker_bridge::RedisRegistryConfig::default().lease_ttl.as_millis() as u64)]
    pub lease_ttl_ms: u64,
    /// Lease TTL of an `instar social` process among the chat command workers, in ms (at least
    /// 300): the live workers share the command shards, and a dead worker's shards move to the
    /// others this long after it died.
    #[arg(long, default_value_t = broker_bridge::AmqpConfig::default().worker_lease_ttl.as_millis() as u64)]
    pub worker_lease_ttl_ms: u64,
    /// Seconds an `instar social` process keeps retrying a chat command whose handling failed
    /// transiently (the database unreachable or restarting) before it drops it with an error; the
    /// command waits unacknowledged in its RabbitMQ queue meanwhile, and the sender's later
    /// commands wait behind it (at least 1).
    #[arg(long, default_value_t = broker_bridge::AmqpConfig::default().handler_retry_for.as_secs())]
    pub command_retry_secs: u64,
}

/// Redis.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Redis")]
pub(crate) struct Redis {
    /// Redis URL: the session registry of the scale-out commands, and the social service's
    /// e-mail codes, rate limits and caches. Unset: the registry uses
    /// redis://127.0.0.1:6379 and the social service keeps those in-process.
    #[arg(long, hide_env_values = true)]
    pub redis_url: Option<String>,
}

/// The database.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Database")]
pub(crate) struct Database {
    /// Database URL: sqlite://PATH or mysql://USER:PASS@HOST:PORT/DB. Unset: `instar serve` and
    /// `instar social` use sqlite://<data_dir>/instar.db; `instar gateway` refuses chat room
    /// topics (with it, it authorises them by membership and replays missed messages).
    #[arg(long, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Largest number of pooled database connections (at least 1).
    #[arg(long, default_value_t = migrations::PoolSettings::default().max_connections)]
    pub database_pool: u32,
}

/// Media URLs of `instar gateway`'s replayed chat messages.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Database")]
pub(crate) struct Replay {
    /// Base URL of media objects as browsers load them, for the media URLs in replayed chat
    /// messages: the social processes' S3 or CDN base, or `{public_url}/media` for local media.
    #[arg(long, default_value = social::media::DEFAULT_URL_PREFIX)]
    pub media_url: String,
}

/// Local data.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Social service")]
pub(crate) struct Data {
    /// Directory for the embedded database and local media.
    #[arg(long, default_value = "instar-data")]
    pub data_dir: PathBuf,
    /// Prefix of every Redis key the social service writes.
    #[arg(long, default_value = "instar:")]
    pub redis_prefix: String,
}

/// Who the service answers and trusts on the web.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Social service")]
pub(crate) struct Web {
    /// The browser origin of the frontend allowed cross-origin with credentials (e.g.
    /// http://localhost:3000). Unset: none.
    #[arg(long)]
    pub cors_origin: Option<String>,
    /// Public URL browsers reach this service at (e.g. https://api.example.com): every media URL
    /// carries it. Unset: each REST response the name its request used, pushes the listen
    /// address.
    #[arg(long)]
    pub public_url: Option<String>,
}

/// Media storage: a local directory, or S3 once a bucket is set.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Media")]
pub(crate) struct Media {
    /// Local media directory (when no S3 bucket is set). Unset: <data_dir>/media.
    #[arg(long)]
    pub media_dir: Option<PathBuf>,
    /// URL prefix of local media.
    #[arg(long, default_value = social::media::DEFAULT_URL_PREFIX)]
    pub media_url_prefix: String,
    /// S3 bucket for media; setting it switches from the local directory to S3.
    #[arg(long)]
    pub s3_bucket: Option<String>,
    /// S3-compatible endpoint URL. Unset: AWS.
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long, default_value = "us-east-1")]
    pub s3_region: String,
    /// S3 access key id.
    #[arg(long, hide_env_values = true)]
    pub s3_access_key: Option<String>,
    /// S3 secret access key.
    #[arg(long, hide_env_values = true)]
    pub s3_secret_key: Option<String>,
    /// Path-style S3 addressing (most S3-compatible servers need it). Unset: on with an
    /// endpoint, off without.
    #[arg(long, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub s3_path_style: Option<bool>,
    /// Public base URL of media objects (e.g. a CDN). Unset: derived from endpoint and bucket.
    #[arg(long)]
    pub s3_public_url: Option<String>,
}

/// Verification mails.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Mail")]
pub(crate) struct Smtp {
    /// SMTP host for verification mails. Unset: mails are logged, not sent.
    #[arg(long)]
    pub smtp_host: Option<String>,
    /// SMTP port.
    #[arg(long, default_value_t = 587)]
    pub smtp_port: u16,
    /// SMTP security: starttls, tls or none.
    #[arg(long, default_value = "starttls")]
    pub smtp_security: String,
    /// SMTP user name.
    #[arg(long)]
    pub smtp_username: Option<String>,
    /// SMTP password.
    #[arg(long, hide_env_values = true)]
    pub smtp_password: Option<String>,
    /// From address of verification mails.
    #[arg(long, default_value = "no-reply@localhost")]
    pub smtp_from: String,
}

/// The chat send writers.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Chat and caches")]
pub(crate) struct Chat {
    /// Chat send writers: tasks writing batches of /app/send messages, sends sharded by room
    /// (1-64). Unset: one.
    #[arg(long)]
    pub chat_writers: Option<usize>,
    /// Least time from the start of one chat send batch to the next while sends keep coming,
    /// microseconds (0: none; at most 100000). Unset: 0.
    #[arg(long)]
    pub chat_batch_linger_us: Option<u64>,
}

/// The read cache.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Chat and caches")]
pub(crate) struct Cache {
    /// Read cache of posts and images (entries each; authors and likes get a quarter); 0 turns
    /// it off.
    #[arg(long, default_value_t = social::cache::DEFAULT_ENTRIES)]
    pub read_cache_entries: usize,
    /// Lifetime of a read cache entry, seconds (at least 1; bounds staleness when an
    /// invalidation is lost).
    #[arg(long, default_value_t = social::cache::DEFAULT_TTL.as_secs())]
    pub read_cache_ttl_secs: u64,
    /// Rendered feed pages kept by the read cache (about 13 KB each, 64 KB at most); 0 keeps
    /// none.
    #[arg(long, default_value_t = social::cache::DEFAULT_FEED_PAGES)]
    pub feed_page_cache: usize,
}

/// The personalised feed's scheduled work.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Feed")]
pub(crate) struct Feed {
    /// Local time of day (HH:MM) of the interest recompute, run once per cluster under a lock in
    /// the key-value store; "off": only when an administrator triggers it.
    #[arg(long, default_value = "03:00")]
    pub feed_recompute_at: String,
    /// IANA time zone of feed_recompute_at (e.g. Asia/Seoul). Unset: this machine's zone.
    #[arg(long)]
    pub feed_time_zone: Option<String>,
    /// Run the interest recompute every this many seconds (slots aligned to the Unix epoch, so
    /// every process agrees on them) instead of daily at feed_recompute_at; for staging and
    /// tests (at least 1). Unset: daily.
    #[arg(long)]
    pub feed_recompute_every_secs: Option<u64>,
    /// Lifetime of the feed jobs' cluster lock without a renewal, milliseconds (renewed every
    /// third of it while a run goes on; a holder that died is taken over this long after its last
    /// renewal). At least 300.
    #[arg(long, default_value_t = 60_000)]
    pub feed_job_lock_ttl_ms: u64,
    /// Testing only: a pause before each user's list in the recompute's rebuild of every active
    /// user, milliseconds, so that a run lasts long enough to be interrupted. Keep 0.
    #[arg(long, default_value_t = 0)]
    pub feed_test_user_delay_ms: u64,
}

impl Feed {
    /// The recompute's schedule (`None`: off).
    pub(crate) fn schedule(&self) -> anyhow::Result<Option<social::jobs::Schedule>> {
        if let Some(secs) = self.feed_recompute_every_secs {
            anyhow::ensure!(secs >= 1, "INSTAR_FEED_RECOMPUTE_EVERY_SECS: at least 1");
            return Ok(Some(social::jobs::Schedule::Every(
                std::time::Duration::from_secs(secs),
            )));
        }
        if self.feed_recompute_at.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let schedule = match &self.feed_time_zone {
            Some(tz) => social::jobs::Schedule::daily(&self.feed_recompute_at, tz),
            None => social::jobs::Schedule::daily_here(&self.feed_recompute_at),
        };
        schedule
            .map(Some)
            .map_err(|e| anyhow::anyhow!("INSTAR_FEED_RECOMPUTE_AT / INSTAR_FEED_TIME_ZONE: {e}"))
    }

    /// How the feed's cluster jobs run.
    pub(crate) fn job_settings(&self) -> anyhow::Result<social::feed::jobs::FeedJobSettings> {
        let lock_ttl = std::time::Duration::from_millis(self.feed_job_lock_ttl_ms);
        anyhow::ensure!(
            lock_ttl >= social::feed::jobs::MIN_LOCK_TTL,
            "INSTAR_FEED_JOB_LOCK_TTL_MS: at least {}",
            social::feed::jobs::MIN_LOCK_TTL.as_millis()
        );
        if self.feed_test_user_delay_ms > 0 {
            tracing::warn!(
                ms = self.feed_test_user_delay_ms,
                "INSTAR_FEED_TEST_USER_DELAY_MS is set: the feed recompute pauses before every user (testing only)"
            );
        }
        Ok(social::feed::jobs::FeedJobSettings {
            lock_ttl,
            user_delay: std::time::Duration::from_millis(self.feed_test_user_delay_ms),
        })
    }
}

/// Automatic post tags (docs/tagging.md).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Tags")]
pub(crate) struct Tags {
    /// Folder of the compiled Korean dictionary mecab-ko-dic (sys.dic, matrix.bin, char.bin,
    /// unk.dic, dicrc; e.g. the mecab_ko_dic/dictionary folder of PyPI's python-mecab-ko-dic):
    /// hashtags are stored as their last noun (서울여행 → 여행). Unset: <data_dir>/mecab-ko-dic
    /// when it exists, else that package in the Python venv of VIRTUAL_ENV or ./.venv,
    /// else hashtags are stored as written.
    #[arg(long)]
    pub tags_dictionary: Option<std::path::PathBuf>,
    /// Image labels: a Google Cloud Vision API key; setting it (or the credentials file) turns
    /// labelling of each post's first image on. Unset: no AI tags.
    #[arg(long, hide_env_values = true)]
    pub tags_vision_api_key: Option<String>,
    /// Image labels: a Google service-account JSON key file, exchanged for OAuth2 access tokens
    /// (used instead of the API key).
    #[arg(long)]
    pub tags_vision_credentials: Option<std::path::PathBuf>,
    /// Image labels: the Vision images:annotate URL.
    #[arg(long, default_value = social::tagging::labels::VISION_ENDPOINT)]
    pub tags_vision_endpoint: String,
    /// Image labels: bound on each Vision call, seconds (1-120).
    #[arg(long, default_value_t = 10)]
    pub tags_vision_timeout_secs: u64,
}

impl Tags {
    /// The Vision client's settings (`None`: labelling off).
    pub(crate) fn vision(&self) -> anyhow::Result<Option<social::tagging::labels::VisionConfig>> {
        use social::tagging::labels::{Credentials, ServiceAccount, VisionConfig};
        let credentials = match (&self.tags_vision_credentials, &self.tags_vision_api_key) {
            (Some(path), _) => {
                let json = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("INSTAR_TAGS_VISION_CREDENTIALS {}: {e}", path.display())
                })?;
                Credentials::ServiceAccount(ServiceAccount::from_json(&json).map_err(|e| {
                    anyhow::anyhow!("INSTAR_TAGS_VISION_CREDENTIALS {}: {e}", path.display())
                })?)
            }
            (None, Some(key)) if !key.is_empty() => Credentials::ApiKey(key.clone()),
            _ => return Ok(None),
        };
        let mut cfg = VisionConfig::new(credentials);
        cfg.endpoint.clone_from(&self.tags_vision_endpoint);
        cfg.timeout = std::time::Duration::from_secs(self.tags_vision_timeout_secs.clamp(1, 120));
        Ok(Some(cfg))
    }
}

/// Google sign-in (OpenID Connect).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Google sign-in")]
pub(crate) struct Google {
    /// Google sign-in: the OAuth client id; setting it turns Google sign-in on (then the secret
    /// and redirect URI are required). Unset: off.
    #[arg(long)]
    pub google_client_id: Option<String>,
    /// Google sign-in: the OAuth client secret.
    #[arg(long, hide_env_values = true)]
    pub google_client_secret: Option<String>,
    /// Google sign-in: this API's callback as registered at Google, ending in /callback (e.g.
    /// https://api.example.com/api/auth/google/callback).
    #[arg(long)]
    pub google_redirect_uri: Option<String>,
    /// Google sign-in: the frontend page the browser returns to. Unset:
    /// <cors_origin>/oauth/google.
    #[arg(long)]
    pub google_frontend_url: Option<String>,
    /// Google sign-in: the OpenID issuer; endpoints are discovered from it (another OpenID
    /// provider, tests).
    #[arg(long, default_value = social::accounts::google::GOOGLE_ISSUER)]
    pub google_issuer: String,
    /// Google sign-in: authorization endpoint. Unset: discovered.
    #[arg(long)]
    pub google_authorization_endpoint: Option<String>,
    /// Google sign-in: token endpoint. Unset: discovered.
    #[arg(long)]
    pub google_token_endpoint: Option<String>,
    /// Google sign-in: JWKS URI. Unset: discovered.
    #[arg(long)]
    pub google_jwks_uri: Option<String>,
    /// Google sign-in: userinfo endpoint. Unset: discovered.
    #[arg(long)]
    pub google_userinfo_endpoint: Option<String>,
    /// Google sign-in: lifetime of a pending sign-up (a new Google account choosing its id),
    /// seconds (60-86400).
    #[arg(long, default_value_t = social::accounts::google::GoogleConfig::new(String::new(), String::new(), String::new()).pending_ttl.as_secs())]
    pub google_pending_ttl_secs: u64,
}

#[cfg(test)]
mod feed_tests {
    use super::Feed;

    fn feed(at: &str, tz: Option<&str>) -> Feed {
        Feed {
            feed_recompute_at: at.to_owned(),
            feed_time_zone: tz.map(str::to_owned),
            feed_recompute_every_secs: None,
            feed_job_lock_ttl_ms: 60_000,
            feed_test_user_delay_ms: 0,
        }
    }

    #[test]
    fn the_recompute_schedule_is_parsed_or_refused_in_words() {
        assert!(feed("off", None).schedule().unwrap().is_none());
        assert!(feed("03:00", None).schedule().unwrap().is_some());
        assert!(
            feed("04:30", Some("Asia/Seoul"))
                .schedule()
                .unwrap()
                .is_some()
        );
        let bad = feed("25:00", None).schedule().unwrap_err().to_string();
        assert!(bad.contains("INSTAR_FEED_RECOMPUTE_AT"), "{bad}");
        let bad = feed("03:00", Some("Mars/Olympus"))
            .schedule()
            .unwrap_err()
            .to_string();
        assert!(bad.contains("Mars/Olympus"), "{bad}");
    }

    #[test]
    fn a_periodic_recompute_and_the_lock_lifetime_are_checked() {
        let mut f = feed("03:00", None);
        f.feed_recompute_every_secs = Some(5);
        assert_eq!(
            f.schedule().unwrap(),
            Some(social::jobs::Schedule::Every(
                std::time::Duration::from_secs(5)
            ))
        );
        f.feed_recompute_every_secs = Some(0);
        assert!(f.schedule().is_err());
        assert_eq!(
            f.job_settings().unwrap().lock_ttl,
            std::time::Duration::from_secs(60)
        );
        f.feed_job_lock_ttl_ms = 10;
        let bad = f.job_settings().unwrap_err().to_string();
        assert!(bad.contains("INSTAR_FEED_JOB_LOCK_TTL_MS"), "{bad}");
    }
}
