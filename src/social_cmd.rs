//! `instar social`: the REST service alone, for scale-out. Several such processes run behind nginx
//! next to the `instar gateway` nodes; they share MariaDB, Redis (codes, limits, caches and the
//! session registry), RabbitMQ (alarms and chat broadcasts go out through it; chat commands come in
//! from its durable work queues) and S3.

use std::time::Duration;

use anyhow::Context as _;
use broker_bridge::{AmqpConfig, Bus, RedisRegistryConfig, Registry};
use clap::{ArgMatches, Args, Command};
use serde::{Deserialize, Serialize};
use warp::Filter as _;
use warp::Reply as _;

use crate::settings::sections::{Bus as BusSection, ConfigFile, Http, Jwt, Ops};
use crate::settings::{self, Loaded};
use crate::social_config::SocialArgs;

/// Flags of `instar social`: the listener, RabbitMQ, the token secret, and the social service
/// (`[social]`).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub(crate) struct SocialCmdArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub file: ConfigFile,
    #[command(flatten)]
    #[serde(flatten)]
    pub http: Http,
    #[command(flatten)]
    #[serde(flatten)]
    pub bus: BusSection,
    #[command(flatten)]
    #[serde(flatten)]
    pub jwt: Jwt,
    #[command(flatten)]
    #[serde(flatten)]
    pub ops: Ops,
    /// Social service settings (database, Redis, media, mail).
    #[command(flatten)]
    pub social: SocialArgs,
}

impl SocialCmdArgs {
    /// Defaults, file, variables and flags merged.
    pub(crate) fn load(cmd: &Command, matches: &ArgMatches) -> anyhow::Result<Loaded<Self>> {
        settings::load(cmd, matches)
    }
}

pub(crate) async fn run(args: SocialCmdArgs) -> anyhow::Result<()> {
    let jwt_secret = args
        .jwt
        .jwt_secret
        .clone()
        .filter(|s| !s.is_empty())
        .context("INSTAR_JWT_SECRET is required for `instar social` (the gateways verify the tokens it signs)")?;
    let mut cfg = args
        .social
        .resolve(&jwt_secret, args.http.trusted_proxies()?)?;
    let listen = args.http.listen;
    let http_limits = args.http.limits()?;
    let prefix = args.bus.bus_prefix.clone();
    let redis_url = match &cfg.kv {
        social::kv::KvConfig::Redis { url, .. } => url.clone(),
        social::kv::KvConfig::Memory => RedisRegistryConfig::default().url,
    };
    let registry = Registry::redis(
        RedisRegistryConfig::new(redis_url.clone())
            .with_prefix(format!("{prefix}:"))
            .with_lease_ttl(Duration::from_millis(args.bus.lease_ttl_ms.max(300))),
    )
    .await
    .with_context(|| format!("connecting to the session registry at {redis_url}"))?;
    let amqp = AmqpConfig {
        durable_node_queues: args.bus.durable_node_queues,
        worker_lease_ttl: Duration::from_millis(args.bus.worker_lease_ttl_ms.max(300)),
        handler_retry_for: Duration::from_secs(args.bus.command_retry_secs.max(1)),
        ..AmqpConfig::new(args.bus.amqp_url.clone()).with_prefix(&prefix)
    };
    let bus = Bus::amqp(registry, amqp)
        .await
        .context("connecting to RabbitMQ")?;
    // Bound before the service starts: an unconfigured public URL falls back to this address.
    let listener = gateway::server::bind_nodelay(listen)
        .with_context(|| format!("binding HTTP on {listen}"))?;
    let addr = listener.local_addr()?;
    cfg.public_url.fallback = Some(social::public_url::PublicUrl::origin_of_listen(addr));
    let registry = crate::rest_metrics::registry();
    let ctx = social::Ctx::start_with_metrics(&cfg, bus.clone(), registry.clone())
        .await
        .context("starting the social service")?;
    social::chat::register_with(&ctx, &bus, args.social.chat_writer_options());
    ctx.add_metrics(std::sync::Arc::new(ShardMetrics(bus.clone())));
    tracing::info!(
        database = %migrations::redact(&cfg.database_url),
        "social service ready"
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // REST responses and dependency readiness on /metrics too (src/rest_metrics.rs).
    let rest = std::sync::Arc::new(crate::rest_metrics::RestStats::new(&registry));
    let conns = std::sync::Arc::new(gateway::listen::ConnStats::default());
    let metrics = {
        let (ctx, conns) = (ctx.clone(), conns.clone());
        warp::path("metrics")
            .and(warp::path::end())
            .and(warp::get())
            .and(gateway::server::operator_only(
                args.ops.metrics_token.clone().filter(|t| !t.is_empty()),
            ))
            .then(move || {
                let (ctx, conns) = (ctx.clone(), conns.clone());
                async move {
                    ctx.update_metrics();
                    conns.update_metrics(&ctx.metrics);
                    crate::rest_metrics::update_readiness(&ctx, &ctx.metrics).await;
                    let text = ctx.metrics.render();
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
    let stop = tokio_util::sync::CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = rx.await;
            stop.cancel();
        });
    }
    let routes = routes.map(|r| Box::new(r) as Box<dyn warp::Reply>).boxed();
    let (_, server) = gateway::server::serve_http_on(routes, listener, http_limits, conns, stop)?;
    let server = tokio::spawn(server);
    tracing::info!(%addr, "HTTP listening: /api (REST), /health/live, /health/ready");
    crate::shutdown_signal().await;
    draining.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!("shutting down");
    let _ = tx.send(());
    let grace = Duration::from_secs(args.ops.drain_secs);
    let _ = tokio::time::timeout(grace, server).await;
    // Background tasks, the last started first, then the database they use.
    ctx.jobs.shutdown(grace).await;
    ctx.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// This process's share of the chat command shards, and what its handlers did, on `/metrics`.
#[derive(Debug)]
struct ShardMetrics(Bus);

impl social::ctx::MetricsSource for ShardMetrics {
    fn update_metrics(&self, registry: &broker_bridge::MetricsRegistry) {
        let m = self.0.metrics();
        registry.set_gauge(
            "instar_bus_work_shards_owned",
            "Command shards this process consumes now (its share among the live command workers).",
            m.work_shards_owned,
        );
        registry.set_counter(
            "instar_bus_work_rebalances_total",
            "Times this process's set of command shards changed (a worker joined or left).",
            m.work_rebalances,
        );
        registry.set_counter(
            "instar_bus_commands_handled_total",
            "Application commands handled.",
            m.commands_handled,
        );
        registry.set_counter(
            "instar_bus_commands_failed_total",
            "Application commands whose handler failed.",
            m.commands_failed,
        );
        registry.set_counter(
            "instar_bus_commands_retried_total",
            "Retries of application commands whose handler failed transiently (a dependency down).",
            m.commands_retried,
        );
    }
}
