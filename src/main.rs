//! `instar`: the composition root. The only place that wires concrete implementations together.
//!
//! `instar serve` runs the embedded default: one process, one port, the in-process bus and registry.

mod bench;
mod config;
mod node;
mod node_config;
mod policy;
mod probe;
mod rest_metrics;
mod settings;
mod social_cmd;
mod social_config;
mod static_files;
mod tags_cmd;
mod telemetry;

use std::sync::Arc;

use anyhow::Context as _;
use broker_bridge::{Bus, InProcessConfig, Registry};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use gateway::Gateway;
use gateway::destination::PrefixPolicy;
use warp::Filter as _;

#[derive(Debug, Parser)]
#[command(
    name = "instar",
    version,
    about = "Instar: Instagram-style social backend with real-time chat"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process on one port (embedded default: in-process bus and registry).
    Serve(config::ServeArgs),
    /// Run one scale-out gateway node: RabbitMQ bus, Redis session registry (N of them behind nginx).
    Gateway(node_config::GatewayArgs),
    /// Run the social REST service alone (scale-out: MariaDB, Redis, RabbitMQ, S3).
    Social(social_cmd::SocialCmdArgs),
    /// Automatic post tags: `instar tags backfill` labels the first image of existing posts.
    #[command(subcommand)]
    Tags(tags_cmd::TagsCmd),
    /// Print docs/configuration.md: every setting of every command, rendered from the code.
    #[command(hide = true)]
    ConfigReference,
    /// Exit 0 once GET URL answers 2xx (health checks of containers and systemd units; not a
    /// service, so it has no settings: docs/operations.md).
    #[command(hide = true)]
    Probe(probe::ProbeArgs),
}

/// The command line: the derived commands with each setting's variable and per-command defaults.
fn cli_command() -> clap::Command {
    settings::finish(Cli::command())
}

/// The TOML keys of a subcommand's settings, from its types (no variable or file read). A nested
/// command is named with a space (`tags backfill`).
fn setting_keys(name: &str) -> anyhow::Result<Vec<String>> {
    let argv: Vec<&str> = std::iter::once("instar").chain(name.split(' ')).collect();
    let matches = Cli::command().try_get_matches_from(argv)?;
    let mut sub = &matches;
    for part in name.split(' ') {
        sub = sub
            .subcommand_matches(part)
            .with_context(|| format!("no command {name}"))?;
    }
    match name {
        "tags backfill" => settings::keys(&tags_cmd::BackfillArgs::from_arg_matches(sub)?),
        "serve" => settings::keys(&config::ServeArgs::from_arg_matches(sub)?),
        "gateway" => settings::keys(&node_config::GatewayArgs::from_arg_matches(sub)?),
        "social" => settings::keys(&social_cmd::SocialCmdArgs::from_arg_matches(sub)?),
        _ => Ok(Vec::new()),
    }
}

/// The command, given a command line, with its settings merged (defaults, file, variables, flags).
enum Run {
    Serve(settings::Loaded<config::ServeArgs>),
    Gateway(settings::Loaded<node_config::GatewayArgs>),
    Social(settings::Loaded<social_cmd::SocialCmdArgs>),
    TagsBackfill(settings::Loaded<tags_cmd::BackfillArgs>),
    ConfigReference,
    Probe(probe::ProbeArgs),
}

impl Run {
    fn from_matches(cmd: &clap::Command, matches: &clap::ArgMatches) -> anyhow::Result<Self> {
        let Some((name, sub)) = matches.subcommand() else {
            anyhow::bail!("no command given (see --help)");
        };
        let sub_cmd = cmd
            .find_subcommand(name)
            .with_context(|| format!("unknown command {name}"))?;
        Ok(match name {
            "serve" => Run::Serve(config::ServeArgs::load(sub_cmd, sub)?),
            "gateway" => Run::Gateway(node_config::GatewayArgs::load(sub_cmd, sub)?),
            "social" => Run::Social(social_cmd::SocialCmdArgs::load(sub_cmd, sub)?),
            "tags" => match sub.subcommand() {
                Some(("backfill", m)) => {
                    let cmd = sub_cmd
                        .find_subcommand("backfill")
                        .context("unknown command tags backfill")?;
                    Run::TagsBackfill(settings::load(cmd, m)?)
                }
                _ => anyhow::bail!("instar tags: name a command (see --help)"),
            },
            "config-reference" => Run::ConfigReference,
            "probe" => Run::Probe(probe::ProbeArgs::from_arg_matches(sub)?),
            other => anyhow::bail!("unknown command {other}"),
        })
    }

    /// `--print-config`: the merged settings as JSON, secrets masked.
    fn printed_config(&self) -> anyhow::Result<Option<String>> {
        match self {
            Run::Serve(l) if l.print_config => l.to_json().map(Some),
            Run::Gateway(l) if l.print_config => l.to_json().map(Some),
            Run::Social(l) if l.print_config => l.to_json().map(Some),
            Run::TagsBackfill(l) if l.print_config => l.to_json().map(Some),
            _ => Ok(None),
        }
    }
}

impl Run {
    /// `log_format` of the command (`text` for the commands without settings).
    fn log_format(&self) -> &str {
        match self {
            Run::Serve(l) => &l.value.ops.log_format,
            Run::Gateway(l) => &l.value.ops.log_format,
            Run::Social(l) => &l.value.ops.log_format,
            Run::TagsBackfill(_) | Run::ConfigReference | Run::Probe(_) => "text",
        }
    }

    /// Span export, when `otlp_endpoint` is set: the process role and its node id. The node id
    /// of `serve` and `gateway` is settled here (a random one when unset), so the spans and the
    /// node name the same node.
    fn otlp(&mut self) -> Option<telemetry::Otlp> {
        let random_node = || format!("node-{}", gateway::random_id(6));
        let (endpoint, role, node) = match self {
            Run::Serve(l) => {
                let node = l
                    .value
                    .stomp
                    .node_id
                    .get_or_insert_with(random_node)
                    .clone();
                (l.value.ops.otlp_endpoint.clone(), "serve", node)
            }
            Run::Gateway(l) => {
                let node = l
                    .value
                    .stomp
                    .node_id
                    .get_or_insert_with(random_node)
                    .clone();
                (l.value.ops.otlp_endpoint.clone(), "gateway", node)
            }
            Run::Social(l) => (
                l.value.ops.otlp_endpoint.clone(),
                "social",
                format!("social-{}", gateway::random_id(6)),
            ),
            Run::TagsBackfill(_) | Run::ConfigReference | Run::Probe(_) => return None,
        };
        Some(telemetry::Otlp {
            endpoint: endpoint.filter(|e| !e.is_empty())?,
            role,
            node,
        })
    }
}

/// mimalloc: many small, short-lived allocations per request (JSON, headers, frames) from
/// several threads; measured faster than the system allocator on the REST and STOMP paths.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cmd = cli_command();
    let matches = cmd.clone().get_matches();
    // The derived types check the command line once more (and exit on an error, with clap's text).
    if let Err(e) = Cli::from_arg_matches(&matches) {
        e.exit();
    }
    let mut run = Run::from_matches(&cmd, &matches)?;
    if let Some(json) = run.printed_config()? {
        println!("{json}");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Run::ConfigReference = run {
        print!("{}", settings::reference::render(&cmd, &setting_keys)?);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let otlp = run.otlp();
    let telemetry = telemetry::init(run.log_format(), otlp)?;
    for warning in settings::deprecations() {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let ok = |r: anyhow::Result<()>| r.map(|()| std::process::ExitCode::SUCCESS);
    let result = match run {
        Run::Serve(loaded) => ok(runtime.block_on(serve(loaded.resolve()?))),
        Run::Gateway(loaded) => ok(runtime.block_on(node::run(loaded.resolve()?))),
        Run::Social(loaded) => ok(runtime.block_on(social_cmd::run(loaded.value))),
        Run::TagsBackfill(loaded) => runtime.block_on(tags_cmd::backfill(loaded.value)),
        Run::ConfigReference => ok(Ok(())),
        Run::Probe(args) => ok(runtime.block_on(probe::run(args))),
    };
    drop(runtime);
    telemetry.shutdown();
    result
}

async fn serve(cfg: config::Settings) -> anyhow::Result<()> {
    // Checked before anything starts: a wrong directory is a configuration error.
    let frontend_files = match &cfg.static_dir {
        Some(dir) => {
            let files = static_files::StaticFiles::open(dir)?;
            tracing::info!(dir = %dir.display(), "serving the frontend from a directory");
            Some(files)
        }
        None => None,
    };
    let registry = Registry::in_process();
    let bus = Bus::in_process(
        registry,
        InProcessConfig {
            workers: cfg.command_workers,
            ..InProcessConfig::default()
        },
    );
    if cfg.bench_echo {
        tracing::warn!(
            "INSTAR_BENCH_ECHO is on: /app/bench.* republishes client messages (load tests only)"
        );
        bench::BenchEcho::register(&bus);
    }
    // Bound before the service starts: an unconfigured public URL falls back to this address.
    let listener = gateway::server::bind_nodelay(cfg.listen)
        .with_context(|| format!("binding HTTP on {}", cfg.listen))?;
    let mut social_cfg = cfg.social.clone();
    social_cfg.public_url.fallback = Some(social::public_url::PublicUrl::origin_of_listen(
        listener.local_addr()?,
    ));
    // One registry for the gateway, the social service and the REST counters: one `/metrics`
    // text, each family once.
    let registry = rest_metrics::registry();
    let social = social::Ctx::start_with_metrics(&social_cfg, bus.clone(), registry.clone())
        .await
        .context("starting the social service")?;
    social::chat::register_with(&social, &bus, cfg.chat);
    tracing::info!(
        database = %migrations::redact(&cfg.social.database_url),
        "social service ready"
    );
    let policy = Arc::new(policy::RoomPolicy::new(
        PrefixPolicy::new(cfg.public_topics.clone()).allow_anonymous(cfg.allow_anonymous),
        social.rooms(),
    ));
    let gw = Gateway::start_with_metrics(
        cfg.node_id.as_str().into(),
        cfg.gateway_config(),
        cfg.jwt_secret.as_bytes(),
        bus.clone(),
        policy,
        registry.clone(),
    )
    .await
    .context("attaching the gateway to the bus")?;

    // `/metrics`: the gateway's counters, the social service's, its REST responses and the
    // readiness of each dependency, all in the one registry.
    let rest = Arc::new(rest_metrics::RestStats::new(&registry));
    let metrics = {
        let (gw, social, registry) = (gw.clone(), social.clone(), registry.clone());
        warp::path("metrics")
            .and(warp::path::end())
            .and(warp::get())
            .and(gateway::server::operator_only(cfg.metrics_token.clone()))
            .then(move || {
                let (gw, social, registry) = (gw.clone(), social.clone(), registry.clone());
                async move {
                    gw.update_metrics();
                    social.update_metrics();
                    rest_metrics::update_readiness(&social, &registry).await;
                    let text = registry.render();
                    Box::new(warp::reply::with_header(
                        text,
                        "content-type",
                        "text/plain; version=0.0.4",
                    )) as Box<dyn warp::Reply>
                }
            })
    };
    // Liveness and readiness of everything this process runs (database, key-value store, media,
    // bus); 503 while it drains.
    let health = {
        let gw = gw.clone();
        social::health::routes(&social, move || gw.shutdown.is_cancelled())
            .map(|r| Box::new(r) as Box<dyn warp::Reply>)
    };
    // The built frontend (`--static`), after every other route.
    let frontend = match frontend_files {
        Some(files) => files.routes(),
        None => warp::any()
            .and_then(|| async { Err::<Box<dyn warp::Reply>, _>(warp::reject::not_found()) })
            .boxed(),
    };
    let routes = rest
        .wrap(social.routes())
        .map(|r| Box::new(r) as Box<dyn warp::Reply>)
        .or(metrics)
        .unify()
        .or(health)
        .unify()
        .or(gw.routes())
        .unify()
        .or(frontend)
        .unify()
        .boxed();
    // One connection budget for this port and the STOMP/TCP one (GatewayConfig::tcp_limits is
    // cfg.http_limits).
    let (addr, http) = gateway::server::serve_node_http(&gw, routes, listener)
        .with_context(|| format!("serving HTTP on {}", cfg.listen))?;
    tracing::info!(%addr, "HTTP listening: /api (REST), /media, /stomp (STOMP over WebSocket), /ws (SockJS)");
    let http = tokio::spawn(http);

    if let Some(tcp) = cfg.tcp_listen {
        match tokio::net::TcpListener::bind(tcp).await {
            Ok(listener) => {
                tracing::info!(addr = %listener.local_addr()?, "STOMP over TCP listening");
                tokio::spawn(gateway::serve_tcp(gw.clone(), listener));
            }
            // The default port is often taken by a local broker's STOMP plugin: the product
            // still runs (the frontend uses /ws and /stomp), and the log says how to choose.
            Err(e) if !cfg.tcp_listen_given && e.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::warn!(
                    addr = %tcp,
                    "STOMP over TCP not started: the default port is in use (set INSTAR_TCP_LISTEN to another address, or off)"
                );
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("binding STOMP/TCP on {tcp}")));
            }
        }
    }

    shutdown_signal().await;
    tracing::info!(
        sessions = gw.open_sessions(),
        "shutting down: draining sessions"
    );
    gw.drain(cfg.drain_grace).await;
    let _ = tokio::time::timeout(cfg.drain_grace, http).await;
    // Background tasks last, the last started first (chat writers before the sweeper).
    social.jobs.shutdown(cfg.drain_grace).await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_a_flag_with_its_own_variable() {
        let cli = cli_command();
        cli.clone().debug_assert();
        for sub in ["serve", "gateway", "social"] {
            let cmd = cli.find_subcommand(sub).expect("subcommand");
            let mut envs = Vec::new();
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" || id == "print_config" {
                    continue;
                }
                assert!(!arg.is_positional(), "`instar {sub}`: {id} is positional");
                let env = arg
                    .get_env()
                    .unwrap_or_else(|| panic!("`instar {sub}`: {id} has no variable"));
                let env = env.to_string_lossy().into_owned();
                assert!(env.starts_with("INSTAR_"), "{env}");
                assert!(!envs.contains(&env), "`instar {sub}`: {env} twice");
                envs.push(env);
            }
        }
    }

    fn run(args: &[&str]) -> anyhow::Result<Run> {
        let cmd = cli_command();
        let matches = cmd.clone().try_get_matches_from(args)?;
        Run::from_matches(&cmd, &matches)
    }

    #[test]
    fn serve_flags_land_in_their_fields() {
        assert!(
            cli_command()
                .try_get_matches_from(["instar", "serve", "5"])
                .is_err()
        );
        let Run::Serve(loaded) = run(&[
            "instar",
            "serve",
            "--drain-secs",
            "3",
            "--command-workers",
            "7",
            "--chat-writers",
            "2",
            "--chat-batch-linger-us",
            "250000",
        ])
        .unwrap() else {
            panic!("not serve");
        };
        let args = &loaded.value;
        assert_eq!(args.ops.drain_secs, 3);
        assert_eq!(args.bus.command_workers, 7);
        assert_eq!(args.social.chat.chat_writers, Some(2));
        assert_eq!(args.social.chat.chat_batch_linger_us, Some(250_000));
        // Over the limit: clamped to 100 ms.
        let chat = args.social.chat_writer_options();
        assert_eq!(chat.writers, Some(2));
        assert_eq!(chat.linger, Some(std::time::Duration::from_millis(100)));
    }

    #[test]
    fn config_reference_is_current() {
        let rendered = settings::reference::render(&cli_command(), &setting_keys).unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == rendered,
            "docs/configuration.md differs from the settings in the code: regenerate it with `{}`",
            settings::reference::REGENERATE
        );
    }
}
