//! Settings of `instar serve`: the sections it composes (src/settings/sections.rs), merged as
//! defaults < `--config` TOML < `INSTAR_*` variables < flags. `instar serve --help` lists them all
//! with their defaults; docs/configuration.md is the same list.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgMatches, Args, Command};
use serde::{Deserialize, Serialize};

use crate::settings::sections::{Bench, ConfigFile, Http, InProcessBus, Jwt, Ops, Stomp};
use crate::settings::{self, Loaded};
use crate::social_config::SocialArgs;

/// Flags of `instar serve`: the edge, the in-process bus, and the social service (`[social]`).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub file: ConfigFile,
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
    pub bus: InProcessBus,
    #[command(flatten)]
    #[serde(flatten)]
    pub bench: Bench,
    /// Social service (REST) settings.
    #[command(flatten)]
    pub social: SocialArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub frontend: Frontend,
}

/// The built frontend `instar serve` answers on its own origin (docs/operations.md, "One command,
/// one origin").
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Frontend")]
pub(crate) struct Frontend {
    /// Directory of a built frontend (with its index.html) served on the same origin: SPA
    /// fallback, precompressed .br/.gz copies, caching headers. Unset: no frontend.
    #[arg(long = "static")]
    pub static_dir: Option<std::path::PathBuf>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub listen: SocketAddr,
    /// The HTTP listener's timeouts and caps.
    pub http_limits: gateway::listen::HttpLimits,
    pub tcp_listen: Option<SocketAddr>,
    /// Whether the TCP address was given (flag, variable or file) rather than the default.
    pub tcp_listen_given: bool,
    pub jwt_secret: String,
    pub node_id: String,
    pub stomp: Stomp,
    /// The destination rules, checked.
    pub destinations: gateway::rules::Destinations,
    pub metrics_token: Option<String>,
    pub drain_grace: Duration,
    pub command_workers: usize,
    pub allow_anonymous: bool,
    pub public_topics: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub bench_echo: bool,
    pub social: social::SocialConfig,
    pub chat: social::chat::WriterOptions,
    /// The built frontend's directory (`--static`).
    pub static_dir: Option<std::path::PathBuf>,
}

impl ServeArgs {
    /// Defaults, file, variables and flags merged.
    pub(crate) fn load(cmd: &Command, matches: &ArgMatches) -> anyhow::Result<Loaded<Self>> {
        settings::load(cmd, matches)
    }
}

impl Loaded<ServeArgs> {
    /// The settings the process runs with.
    pub(crate) fn resolve(&self) -> anyhow::Result<Settings> {
        let a = &self.value;
        let tcp_listen = settings::tcp_address(&a.stomp.tcp_listen)?;
        let jwt_secret = match &a.jwt.jwt_secret {
            Some(s) if !s.is_empty() => s.clone(),
            _ => {
                tracing::warn!(
                    "no INSTAR_JWT_SECRET set: using a random secret, tokens will not survive a restart"
                );
                gateway::random_id(48)
            }
        };
        let social = a.social.resolve(&jwt_secret, a.http.trusted_proxies()?)?;
        // SockJS follows the REST allow-list unless told otherwise: the one CORS origin.
        let allowed_origins = a
            .stomp
            .allowed_origins
            .clone()
            .or_else(|| social.cors_origin.clone().map(|o| vec![o]))
            .unwrap_or_default();
        Ok(Settings {
            chat: a.social.chat_writer_options(),
            social,
            listen: a.http.listen,
            http_limits: a.http.limits()?,
            tcp_listen,
            tcp_listen_given: self.given("tcp_listen"),
            jwt_secret,
            node_id: a
                .stomp
                .node_id
                .clone()
                .unwrap_or_else(|| format!("node-{}", gateway::random_id(6))),
            destinations: crate::settings::sections::DestinationRules::checked(
                a.stomp.destinations.as_ref(),
            )?,
            stomp: a.stomp.clone(),
            metrics_token: a.ops.metrics_token.clone().filter(|t| !t.is_empty()),
            drain_grace: Duration::from_secs(a.ops.drain_secs),
            command_workers: a.bus.command_workers.clamp(1, 1024),
            allow_anonymous: a.stomp.allow_anonymous,
            public_topics: a.stomp.public_topics.clone(),
            allowed_origins,
            bench_echo: a.bench.bench_echo,
            static_dir: a.frontend.static_dir.clone(),
        })
    }
}

impl Settings {
    pub(crate) fn gateway_config(&self) -> gateway::GatewayConfig {
        let mut g = gateway_config(
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
}

/// The gateway's configuration from the STOMP section, for `serve` and `gateway` alike.
pub(crate) fn gateway_config(
    stomp: &Stomp,
    destinations: &gateway::rules::Destinations,
    metrics_token: Option<String>,
    allowed_origins: Vec<String>,
) -> gateway::GatewayConfig {
    let mut g = gateway::GatewayConfig::default();
    g.limits.max_body_bytes = stomp.max_body;
    g.max_ws_message = stomp
        .max_ws_message
        .max(stomp.max_body + g.limits.max_head_bytes);
    g.outbound_queue = stomp.outbound_queue.max(1);
    g.send_rate = stomp.send_rate;
    g.send_buffer = gateway::sendbuf::SendBufferConfig {
        max_commands: stomp.send_buffer_commands,
        max_bytes: stomp.send_buffer_bytes,
    };
    g.command_order_field = stomp.command_order_field.trim().to_owned();
    g.max_sessions_per_user = stomp.max_sessions_per_user;
    g.sockjs_sessions_per_address = stomp.sockjs_max_sessions_per_address;
    g.metrics_token = metrics_token;
    g.connect_timeout = Duration::from_secs(stomp.connect_timeout_secs);
    g.resume_window = Duration::from_secs(stomp.chat_resume_window_secs);
    g.resume_after_connect = Duration::from_millis(stomp.chat_resume_after_connect_ms);
    g.session.heartbeat = (stomp.heartbeat_ms, stomp.heartbeat_ms);
    g.session.allow_anonymous = stomp.allow_anonymous;
    g.session.destinations = std::sync::Arc::new(destinations.clone());
    g.allowed_origins = allowed_origins;
    g
}
