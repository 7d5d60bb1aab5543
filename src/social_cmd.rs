//! `instar social`: the REST service alone, for scale-out. Several such processes run behind nginx
//! next to the `instar gateway` nodes; they share MariaDB, Redis (codes, limits, caches and the
//! session registry), RabbitMQ (alarms and chat broadcasts go out through it; chat commands come in
//! from its durable work queues) and S3.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use broker_bridge::{AmqpConfig, Bus, RedisRegistryConfig, Registry};
use clap::Args;
use serde::Deserialize;
use warp::Filter as _;
use warp::Reply as _;

use crate::social_config::{SocialArgs, SocialFile};

/// Flags of `instar social`.
#[derive(Debug, Args, Default)]
pub(crate) struct SocialCmdArgs {
    /// TOML file: `listen`, `amqp_url`, `bus_prefix`, `jwt_secret`, and a `[social]` table.
    #[arg(long, env = "INSTAR_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP address for /api (and /media with local storage). [default: 127.0.0.1:8081]
    #[arg(long, env = "INSTAR_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// RabbitMQ URL. [default: amqp://guest:guest@127.0.0.1:5672/%2f]
    #[arg(long, env = "INSTAR_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// Prefix of the exchanges, queues and registry keys shared with the gateway nodes. [default: instar]
    #[arg(long, env = "INSTAR_BUS_PREFIX")]
    pub bus_prefix: Option<String>,
    /// Secret the tokens are signed with (the gateway nodes must use the same). Required.
    #[arg(long, env = "INSTAR_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Seconds in-flight requests get to finish on SIGINT/SIGTERM. [default: 10]
    #[arg(long, env = "INSTAR_DRAIN_SECS")]
    pub drain_secs: Option<u64>,
    /// Bearer token that opens /metrics to other machines; without it only requests from this machine that did not pass a proxy may read it. [default: none]
    #[arg(long, env = "INSTAR_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Social service settings (database, Redis, media, mail).
    #[command(flatten)]
    pub social: SocialArgs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<SocketAddr>,
    amqp_url: Option<String>,
    bus_prefix: Option<String>,
    jwt_secret: Option<String>,
    drain_secs: Option<u64>,
    metrics_token: Option<String>,
    social: Option<SocialFile>,
}

pub(crate) async fn run(args: SocialCmdArgs) -> anyhow::Result<()> {
    let file: FileSettings = crate::config::read_file(args.config.as_deref())?;
    let jwt_secret = args
        .jwt_secret
        .clone()
        .or(file.jwt_secret.clone())
        .filter(|s| !s.is_empty())
        .context("INSTAR_JWT_SECRET is required for `instar social` (the gateways verify the tokens it signs)")?;
    let social_file = file.social.clone().unwrap_or_default();
    let mut cfg = args.social.resolve(&social_file, &jwt_secret)?;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8081)));
    let prefix = args
        .bus_prefix
        .clone()
        .or(file.bus_prefix.clone())
        .unwrap_or_else(|| "instar".to_owned());
    let amqp_url = args
        .amqp_url
        .clone()
        .or(file.amqp_url.clone())
        .unwrap_or_else(|| AmqpConfig::default().url);
    let redis_url = match &cfg.kv {
        social::kv::KvConfig::Redis { url, .. } => url.clone(),
        social::kv::KvConfig::Memory => RedisRegistryConfig::default().url,
    };
    let registry = Registry::redis(
        RedisRegistryConfig::new(redis_url.clone()).with_prefix(format!("{prefix}:")),
    )
    .await
    .with_context(|| format!("connecting to the session registry at {redis_url}"))?;
    let mut amqp = AmqpConfig::new(amqp_url);
    amqp.prefix = prefix;
    let bus = Bus::amqp(registry, amqp)
        .await
        .context("connecting to RabbitMQ")?;
    // Bound before the service starts: an unconfigured public URL falls back to this address.
    let listener = gateway::server::bind_nodelay(listen)
        .with_context(|| format!("binding HTTP on {listen}"))?;
    let addr = listener.local_addr()?;
    cfg.public_url.fallback = Some(social::public_url::PublicUrl::origin_of_listen(addr));
    let ctx = social::Ctx::start(&cfg, bus.clone())
        .await
        .context("starting the social service")?;
    social::chat::register_with(&ctx, &bus, args.social.chat_writer_options(&social_file));
    tracing::info!(
        database = %migrations::redact(&cfg.database_url),
        "social service ready"
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // REST responses and dependency readiness on /metrics too (src/rest_metrics.rs).
    let rest = std::sync::Arc::new(crate::rest_metrics::RestStats::default());
    let metrics = {
        let (ctx, rest) = (ctx.clone(), rest.clone());
        warp::path("metrics")
            .and(warp::path::end())
            .and(warp::get())
            .and(gateway::server::operator_only(
                args.metrics_token.clone().or(file.metrics_token.clone()),
            ))
            .then(move || {
                let (ctx, rest) = (ctx.clone(), rest.clone());
                async move {
                    let mut text = ctx.metrics_text();
                    rest.metrics_text(&mut text);
                    crate::rest_metrics::readiness_text(&ctx, &mut text).await;
                    warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4")
                        .into_response()
                }
            })
    };
    // Liveness, and readiness of the database, key-value store, media and bus (503 once draining).
    let draining = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health = {
        let draining = draining.clone();
        social::health::routes(&ctx, move || {
            draining.load(std::sync::atomic::Ordering::Relaxed)
        })
    };
    let routes = rest
        .wrap(ctx.routes())
        .or(metrics)
        .unify()
        .or(health)
        .unify()
        .with(warp::trace::request());
    let server = tokio::spawn(
        warp::serve(routes)
            .incoming(listener)
            .graceful(async move {
                let _ = rx.await;
            })
            .run(),
    );
    tracing::info!(%addr, "HTTP listening: /api (REST), /health/live, /health/ready");
    crate::shutdown_signal().await;
    draining.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!("shutting down");
    let _ = tx.send(());
    let grace = Duration::from_secs(args.drain_secs.or(file.drain_secs).unwrap_or(10));
    let _ = tokio::time::timeout(grace, server).await;
    // Background tasks, the last started first, then the database they use.
    ctx.jobs.shutdown(grace).await;
    ctx.store.close().await;
    tracing::info!("stopped");
    Ok(())
}
