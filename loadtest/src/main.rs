//! `loadtest`: load scenarios for STOMP over WebSocket gateways on this machine (loopback only).
//!
//! ```text
//! loadtest fanout --url ws://127.0.0.1:18080/stomp --jwt-secret bench \
//!     --publish-destination /app/bench.fanout -n 10000 --rate 50 --duration 20 --json out.json --svg out.svg
//! loadtest idle --url ws://127.0.0.1:15674/ws --login guest --passcode guest \
//!     --subscribe /topic/idle.a --subscribe /topic/idle.b -n 500 --pid $(pgrep beam.smp)
//! ```
//!
//! Exit status: 0 when the run completed (read the report for loss), 1 on a usage or I/O error, 3 when
//! the run was aborted (sessions failed to set up, or the hard `--timeout` passed).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use loadtest::client::Credentials;
use loadtest::progress::Progress;
use loadtest::report::{self, Report};
use loadtest::scenario::{Common, chat, direct, fanout, faults, idle, queue};
use loadtest::target::check_loopback;

#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Load scenarios for STOMP 1.2 over WebSocket (Instar /stomp, RabbitMQ Web-STOMP); loopback targets only",
    after_help = "Instar: give --jwt-secret (tokens are signed here, sub = user). RabbitMQ Web-STOMP: give \
--login guest --passcode guest.\nFor thousands of sessions both this process and the server need a high \
`ulimit -n`; loadtest raises its own soft limit up to the hard limit.\nSee docs/loadtest.md."
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N subscribers of one topic and one publisher at a paced rate: deliveries/s, loss, latency.
    Fanout {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        args: fanout::FanoutArgs,
    },
    /// P sender→receiver user pairs at an aggregate paced rate, optionally across gateway nodes.
    Direct {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        args: direct::DirectArgs,
    },
    /// R chat rooms of M members through Instar's /app/send: persisted and delivered, latency.
    Chat {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        args: chat::ChatArgs,
    },
    /// Chat DMs under injected faults: reconnects, replay, SEND receipts; attempted / accepted /
    /// stored / lost / delivered / duplicated and seconds until accepting and delivering again.
    Faults {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        args: faults::FaultArgs,
    },
    /// C competing consumers of one queue (acknowledging) and one producer: acknowledged msg/s.
    Queue {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        args: queue::QueueArgs,
    },
    /// N sessions with 2 subscriptions each, heart-beats only: server RSS per idle session.
    Idle {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        args: idle::IdleArgs,
    },
}

/// Options shared by every scenario.
#[derive(Debug, Clone, Args)]
struct CommonArgs {
    /// Gateway WebSocket URL; repeat for several nodes. Only 127.0.0.0/8, ::1 and localhost.
    #[arg(long = "url", default_value = "ws://127.0.0.1:8080/stomp")]
    urls: Vec<String>,
    /// Sign HS256 bearer tokens with this secret (Instar's INSTAR_JWT_SECRET).
    #[arg(
        long,
        env = "INSTAR_JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "login"
    )]
    jwt_secret: Option<String>,
    /// STOMP login header instead of a token (RabbitMQ: guest).
    #[arg(long, requires = "passcode")]
    login: Option<String>,
    /// STOMP passcode header (RabbitMQ: guest).
    #[arg(long)]
    passcode: Option<String>,
    /// Send no credentials at all.
    #[arg(long, conflicts_with_all = ["jwt_secret", "login"])]
    anonymous: bool,
    /// CONNECT `host` header (RabbitMQ takes it as the virtual host).
    #[arg(long, default_value = "/")]
    host_header: String,
    /// Heart-beat offered both ways in ms (the server's minimum may raise it; 0 disables).
    #[arg(long, default_value_t = 10_000)]
    heartbeat_ms: u32,
    /// Sessions being set up concurrently.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Seconds allowed for one session's set-up (TCP, WebSocket, CONNECT, subscriptions).
    #[arg(long, default_value_t = 30.0)]
    connect_timeout: f64,
    /// Source addresses 127.0.0.1..k to spread connections over (0: one per 20,000 sessions).
    #[arg(long, default_value_t = 0)]
    source_ips: usize,
    /// WebSocket read buffer per client connection, bytes (tungstenite allocates it up front).
    #[arg(long, default_value_t = 4096)]
    ws_read_buffer: usize,
    /// Prefix of user names (subscribers are <prefix>sub-<i>, pairs <prefix>a-<i> → <prefix>b-<i>).
    #[arg(long, default_value = "bench-")]
    user_prefix: String,
    /// Server process id: report its RSS (VmRSS) and CPU before/after.
    #[arg(long)]
    pid: Option<u32>,
    /// Hard limit on the whole run, seconds; the run is aborted (exit 3) when it passes.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the latency-by-percentile chart as SVG to this file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// No progress display on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// Upper bounds on what one run may ask for.
const MAX_SESSIONS: usize = 300_000;
const MAX_SECONDS: f64 = 3_600.0;
const MAX_RATE: f64 = 10_000_000.0;

impl CommonArgs {
    fn resolve(&self) -> anyhow::Result<Common> {
        if self.urls.is_empty() {
            bail!("give at least one --url");
        }
        let targets = self
            .urls
            .iter()
            .map(|u| check_loopback(u))
            .collect::<Result<Vec<_>, _>>()?;
        let credentials = match (&self.jwt_secret, &self.login, self.anonymous) {
            (_, _, true) => Credentials::Anonymous,
            (Some(secret), None, false) => Credentials::Bearer {
                secret: secret.as_bytes().to_vec(),
                ttl_secs: 3600 + self.timeout as u64,
            },
            (None, Some(login), false) => Credentials::Login {
                login: login.clone(),
                passcode: self.passcode.clone().unwrap_or_default(),
            },
            (None, None, false) => {
                bail!("give --jwt-secret (Instar), --login/--passcode (RabbitMQ) or --anonymous")
            }
            (Some(_), Some(_), false) => bail!("--jwt-secret and --login exclude each other"),
        };
        if !(self.timeout > 0.0 && self.timeout <= MAX_SECONDS) {
            bail!("--timeout must be in (0, {MAX_SECONDS}] seconds");
        }
        if !(self.connect_timeout > 0.0 && self.connect_timeout <= MAX_SECONDS) {
            bail!("--connect-timeout must be in (0, {MAX_SECONDS}] seconds");
        }
        Ok(Common {
            targets,
            credentials: Arc::new(credentials),
            host_header: self.host_header.clone(),
            heartbeat_ms: self.heartbeat_ms,
            connect_concurrency: self.connect_concurrency.clamp(1, 10_000),
            connect_timeout: Duration::from_secs_f64(self.connect_timeout),
            source_ips: self.source_ips,
            ws_read_buffer: self.ws_read_buffer.clamp(256, 1 << 20),
            user_prefix: self.user_prefix.clone(),
            pid: self.pid,
            progress: Progress::new(self.quiet),
            subscribe_headers: Vec::new(),
        })
    }
}

fn check_range(name: &str, value: f64, max: f64) -> anyhow::Result<()> {
    if value.is_finite() && value > 0.0 && value <= max {
        Ok(())
    } else {
        bail!("{name} must be in (0, {max}]")
    }
}

fn check_sessions(n: usize) -> anyhow::Result<()> {
    if n == 0 || n > MAX_SESSIONS {
        bail!("session count must be in 1..={MAX_SESSIONS}");
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let (common_args, sessions) = match &cli.scenario {
        Scenario::Fanout { common, args } => {
            check_range("--rate", args.rate, MAX_RATE)?;
            check_range("--duration", args.duration, MAX_SECONDS)?;
            check_range("--drain", args.drain, MAX_SECONDS)?;
            check_sessions(args.subscribers)?;
            (common, args.subscribers + 1)
        }
        Scenario::Direct { common, args } => {
            check_range("--rate", args.rate, MAX_RATE)?;
            check_range("--duration", args.duration, MAX_SECONDS)?;
            check_range("--drain", args.drain, MAX_SECONDS)?;
            check_sessions(args.pairs.saturating_mul(2))?;
            (common, args.pairs * 2)
        }
        Scenario::Chat { common, args } => {
            check_range("--rate", args.rate, MAX_RATE)?;
            check_range("--duration", args.duration, MAX_SECONDS)?;
            check_range("--drain", args.drain, MAX_SECONDS)?;
            check_sessions(args.rooms.saturating_mul(args.room_size))?;
            (common, args.rooms * args.room_size)
        }
        Scenario::Faults { common, args } => {
            check_range("--rate", args.rate, MAX_RATE)?;
            check_range("--duration", args.duration, MAX_SECONDS)?;
            check_range("--drain", args.drain, MAX_SECONDS)?;
            check_sessions(args.rooms.saturating_mul(2))?;
            (common, args.rooms * 2)
        }
        Scenario::Queue { common, args } => {
            check_range("--rate", args.rate, MAX_RATE)?;
            check_range("--duration", args.duration, MAX_SECONDS)?;
            check_range("--drain", args.drain, MAX_SECONDS)?;
            check_sessions(args.consumers)?;
            (common, args.consumers + 1)
        }
        Scenario::Idle { common, args } => {
            check_range("--hold", args.hold, MAX_SECONDS)?;
            check_sessions(args.sessions)?;
            (common, args.sessions)
        }
    };
    let common = common_args.resolve()?;

    let (soft, hard) = loadtest::procfs::raise_nofile().context("raising RLIMIT_NOFILE")?;
    let needed = sessions as u64 + 64;
    if soft < needed {
        bail!(
            "{sessions} sessions need about {needed} open files but this process may have {soft} (hard limit {hard}); \
             raise it with `ulimit -n` first"
        );
    }
    if sessions > 900 && !common_args.quiet {
        eprintln!(
            "note: {sessions} sessions: the server needs `ulimit -n` above {needed} too \
             (RabbitMQ often runs with 1024)"
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let hard_timeout = Duration::from_secs_f64(common_args.timeout);
    let outcome = runtime.block_on(async {
        let scenario = async {
            match &cli.scenario {
                Scenario::Fanout { args, .. } => fanout::run(&common, args).await,
                Scenario::Direct { args, .. } => direct::run(&common, args).await,
                Scenario::Chat { args, .. } => chat::run(&common, args).await,
                Scenario::Faults { args, .. } => faults::run(&common, args).await,
                Scenario::Queue { args, .. } => queue::run(&common, args).await,
                Scenario::Idle { args, .. } => idle::run(&common, args).await,
            }
        };
        tokio::time::timeout(hard_timeout, scenario).await
    });
    // Sessions still open are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(2));
    let report: Report = match outcome {
        Ok(r) => r?,
        Err(_) => {
            eprintln!(
                "loadtest: aborted: the hard timeout of {:?} passed",
                hard_timeout
            );
            return Ok(3);
        }
    };
    print!("{}", report::summary(&report));
    if let Some(path) = &common_args.json {
        report::write_json(&report, path).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &common_args.svg {
        std::fs::write(path, report::render_svg(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.aborted.is_some() { 3 } else { 0 })
}
