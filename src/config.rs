//! Settings for `instar serve`: command-line flags, `INSTAR_*` environment variables and an optional
//! TOML file, in that order of precedence, over built-in defaults. `instar serve --help` lists them all.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde::Deserialize;

/// Flags of `instar serve`. Every flag also reads an `INSTAR_*` variable and a key of the same name
/// (with `_`) in the `--config` file.
#[derive(Debug, Args, Default)]
pub(crate) struct ServeArgs {
    /// TOML file with any of the settings below (keys like `listen`, `jwt_secret`, `heartbeat_ms`).
    #[arg(long, env = "INSTAR_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP address for REST, /ws (SockJS) and /stomp (WebSocket). [default: 127.0.0.1:8080]
    #[arg(long, env = "INSTAR_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address of the raw STOMP-over-TCP listener; "off" disables it. [default: 127.0.0.1:61613]
    #[arg(long, env = "INSTAR_TCP_LISTEN")]
    pub tcp_listen: Option<String>,
    /// Secret for HS256/384/512 bearer tokens. [default: a random secret per start, with a warning]
    #[arg(long, env = "INSTAR_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// This node's id, used in session ids and the session registry. [default: node-<random>]
    #[arg(long, env = "INSTAR_NODE_ID")]
    pub node_id: Option<String>,
    /// Heart-beat the server offers and requires at least, in ms, both ways (0 disables). [default: 10000]
    #[arg(long, env = "INSTAR_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u32>,
    /// Largest STOMP frame body accepted, in bytes. [default: 65536]
    #[arg(long, env = "INSTAR_MAX_BODY")]
    pub max_body: Option<usize>,
    /// Largest WebSocket message or SockJS batch accepted, in bytes. [default: 131072]
    #[arg(long, env = "INSTAR_MAX_WS_MESSAGE")]
    pub max_ws_message: Option<usize>,
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
    /// Seconds a new connection has to send CONNECT. [default: 10]
    #[arg(long, env = "INSTAR_CONNECT_TIMEOUT_SECS")]
    pub connect_timeout_secs: Option<u64>,
    /// Seconds sessions get to drain on SIGINT/SIGTERM. [default: 10]
    #[arg(long, env = "INSTAR_DRAIN_SECS")]
    pub drain_secs: Option<u64>,
    /// Concurrent workers running application commands (/app/send, ...); one session's commands
    /// always go to the same worker, in order. [default: 128]
    #[arg(long, env = "INSTAR_COMMAND_WORKERS")]
    pub command_workers: Option<usize>,
    /// Accept CONNECT without a token (read-only sessions). [default: false]
    #[arg(long, env = "INSTAR_ALLOW_ANONYMOUS", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_anonymous: Option<bool>,
    /// Comma-separated topic prefixes any authenticated user may subscribe to. [default: public.]
    #[arg(long, env = "INSTAR_PUBLIC_TOPICS", value_delimiter = ',')]
    pub public_topics: Option<Vec<String>>,
    /// Destination rules opening /topic/** and /queue/** to clients' own pub/sub, as a JSON array of {"prefix","subscribe","send","wildcards"} (docs/gateway.md, "Destination rules"); in the file, [[destinations]] tables. [default: none]
    #[arg(long, env = "INSTAR_DESTINATIONS")]
    pub destinations: Option<String>,
    /// Comma-separated exact origins allowed for SockJS/CORS with credentials; empty echoes any. [default: INSTAR_CORS_ORIGIN when set, else empty]
    #[arg(long, env = "INSTAR_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Register the load-test handlers for /app/bench.* (never in production). [default: false]
    #[arg(long, env = "INSTAR_BENCH_ECHO", value_parser = clap::builder::BoolishValueParser::new())]
    pub bench_echo: Option<bool>,
    /// Social service (REST) settings.
    #[command(flatten)]
    pub social: crate::social_config::SocialArgs,
}

/// The same settings, as read from the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<SocketAddr>,
    tcp_listen: Option<String>,
    jwt_secret: Option<String>,
    node_id: Option<String>,
    heartbeat_ms: Option<u32>,
    max_body: Option<usize>,
    max_ws_message: Option<usize>,
    outbound_queue: Option<usize>,
    send_rate: Option<u32>,
    max_sessions_per_user: Option<u32>,
    metrics_token: Option<String>,
    connect_timeout_secs: Option<u64>,
    drain_secs: Option<u64>,
    command_workers: Option<usize>,
    allow_anonymous: Option<bool>,
    public_topics: Option<Vec<String>>,
    destinations: Option<Vec<gateway::rules::Rule>>,
    allowed_origins: Option<Vec<String>>,
    bench_echo: Option<bool>,
    social: Option<crate::social_config::SocialFile>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub listen: SocketAddr,
    pub tcp_listen: Option<SocketAddr>,
    /// Whether the TCP address was given (flag, variable or file) rather than the default.
    pub tcp_listen_given: bool,
    pub jwt_secret: String,
    pub node_id: String,
    pub heartbeat_ms: u32,
    pub max_body: usize,
    pub max_ws_message: usize,
    pub outbound_queue: usize,
    pub send_rate: u32,
    pub max_sessions_per_user: u32,
    pub metrics_token: Option<String>,
    pub connect_timeout: Duration,
    pub drain_grace: Duration,
    pub command_workers: usize,
    pub allow_anonymous: bool,
    pub public_topics: Vec<String>,
    pub destinations: gateway::rules::Destinations,
    pub allowed_origins: Vec<String>,
    pub bench_echo: bool,
    pub social: social::SocialConfig,
    pub chat: social::chat::WriterOptions,
}

impl ServeArgs {
    /// Flags and environment over the file over the defaults.
    pub(crate) fn resolve(self) -> anyhow::Result<Settings> {
        let file: FileSettings = crate::config::read_file(self.config.as_deref())?;
        let given = self.tcp_listen.or(file.tcp_listen);
        let tcp_listen_given = given.is_some();
        let tcp = given.unwrap_or_else(|| "127.0.0.1:61613".to_owned());
        let tcp_listen = crate::config::tcp_address(&tcp)?;
        let jwt_secret = match self.jwt_secret.or(file.jwt_secret) {
            Some(s) if !s.is_empty() => s,
            _ => {
                tracing::warn!(
                    "no INSTAR_JWT_SECRET set: using a random secret, tokens will not survive a restart"
                );
                gateway::random_id(48)
            }
        };
        let social_file = file.social.clone().unwrap_or_default();
        let social = self.social.resolve(&social_file, &jwt_secret)?;
        let cors_origin = social.cors_origin.clone();
        Ok(Settings {
            chat: self.social.chat_writer_options(&social_file),
            social,
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            tcp_listen,
            tcp_listen_given,
            jwt_secret,
            node_id: self
                .node_id
                .or(file.node_id)
                .unwrap_or_else(|| format!("node-{}", gateway::random_id(6))),
            heartbeat_ms: self.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(10_000),
            max_body: self.max_body.or(file.max_body).unwrap_or(64 * 1024),
            max_ws_message: self
                .max_ws_message
                .or(file.max_ws_message)
                .unwrap_or(128 * 1024),
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
            connect_timeout: Duration::from_secs(
                self.connect_timeout_secs
                    .or(file.connect_timeout_secs)
                    .unwrap_or(10),
            ),
            drain_grace: Duration::from_secs(self.drain_secs.or(file.drain_secs).unwrap_or(10)),
            command_workers: self
                .command_workers
                .or(file.command_workers)
                .unwrap_or(128)
                .clamp(1, 1024),
            allow_anonymous: self
                .allow_anonymous
                .or(file.allow_anonymous)
                .unwrap_or(false),
            public_topics: self
                .public_topics
                .or(file.public_topics)
                .unwrap_or_else(|| vec!["public.".to_owned()]),
            destinations: crate::config::destinations(self.destinations, file.destinations)?,
            // SockJS follows the REST allow-list unless told otherwise: the one CORS origin.
            allowed_origins: self
                .allowed_origins
                .or(file.allowed_origins)
                .or_else(|| cors_origin.map(|o| vec![o]))
                .unwrap_or_default(),
            bench_echo: self.bench_echo.or(file.bench_echo).unwrap_or(false),
        })
    }
}

impl Settings {
    pub(crate) fn gateway_config(&self) -> gateway::GatewayConfig {
        let mut g = gateway::GatewayConfig::default();
        g.limits.max_body_bytes = self.max_body;
        g.max_ws_message = self
            .max_ws_message
            .max(self.max_body + g.limits.max_head_bytes);
        g.outbound_queue = self.outbound_queue;
        g.send_rate = self.send_rate;
        g.max_sessions_per_user = self.max_sessions_per_user;
        g.metrics_token = self.metrics_token.clone();
        g.connect_timeout = self.connect_timeout;
        g.session.heartbeat = (self.heartbeat_ms, self.heartbeat_ms);
        g.session.allow_anonymous = self.allow_anonymous;
        g.allowed_origins = self.allowed_origins.clone();
        g.session.destinations = std::sync::Arc::new(self.destinations.clone());
        g
    }
}

/// Reads a TOML settings file, or the defaults when no file is given.
pub(crate) fn read_file<T: serde::de::DeserializeOwned + Default>(
    path: Option<&std::path::Path>,
) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

/// A STOMP/TCP listen setting: `off` (or empty) for none, else an address.
pub(crate) fn tcp_address(value: &str) -> anyhow::Result<Option<std::net::SocketAddr>> {
    if value.eq_ignore_ascii_case("off") || value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .with_context(|| format!("invalid tcp_listen address '{value}'"))
}

/// The destination rules: `INSTAR_DESTINATIONS` (JSON) over the file's `[[destinations]]` tables.
pub(crate) fn destinations(
    json: Option<String>,
    file: Option<Vec<gateway::rules::Rule>>,
) -> anyhow::Result<gateway::rules::Destinations> {
    let rules = match json.filter(|j| !j.trim().is_empty()) {
        Some(json) => {
            return gateway::rules::Destinations::from_json(&json).map_err(anyhow::Error::msg);
        }
        None => file.unwrap_or_default(),
    };
    gateway::rules::Destinations::new(rules).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_rules_come_from_json_over_the_file() {
        let file: FileSettings = toml::from_str(
            r#"
            [[destinations]]
            prefix = "/queue/jobs."
            subscribe = "signed-in"
            send = "role:ROLE_WORKER"
            "#,
        )
        .unwrap();
        let from_file = destinations(None, file.destinations.clone()).unwrap();
        assert!(!from_file.is_empty());
        assert!(
            from_file
                .rule(gateway::rules::Kind::Queue, "jobs.a")
                .is_some()
        );
        let json = r#"[{"prefix":"/topic/demo.","subscribe":"signed-in"}]"#;
        let from_env = destinations(Some(json.into()), file.destinations).unwrap();
        assert!(
            from_env
                .rule(gateway::rules::Kind::Queue, "jobs.a")
                .is_none()
        );
        assert!(
            from_env
                .rule(gateway::rules::Kind::Topic, "demo.x")
                .is_some()
        );
        assert!(destinations(None, None).unwrap().is_empty());
        let bad = destinations(Some(r#"[{"prefix":"/app/x"}]"#.into()), None).unwrap_err();
        assert!(bad.to_string().contains("/app/x"), "{bad}");
    }
}
