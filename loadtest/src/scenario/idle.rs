//! `idle`: N sessions that connect, subscribe twice and then only exchange heart-beats; the server's
//! RSS before and after gives its memory per idle session.
//!
//! KiB per session = (RSS at the end of the hold − RSS before the first connection) / sessions. The
//! figure includes everything the server keeps per connection in user space (socket buffers inside
//! the process, WebSocket and STOMP state, subscriptions, registry entries) but not kernel socket
//! memory, which is not part of RSS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{Common, ReceiveContext, SessionPlan};
use crate::latency::{Clock, Recorder};
use crate::procfs;
use crate::report::{Report, ServerStats, SessionHealth};

/// Options of `loadtest idle`.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Sessions to open.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub sessions: usize,
    /// Destinations each session subscribes to (repeat the flag; `{i}` is the session number and
    /// `{user}` its user). RabbitMQ has no /user/queue: give two topics there.
    #[arg(long = "subscribe", default_values_t = ["/user/queue/notify".to_owned(), "/topic/public.idle".to_owned()])]
    pub subscriptions: Vec<String>,
    /// Seconds to hold the sessions once all are up.
    #[arg(long, default_value_t = 30.0)]
    pub hold: f64,
    /// Seconds to wait after set-up before the "connected" RSS sample.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
}

/// Runs the idle scenario.
pub async fn run(common: &Common, args: &IdleArgs) -> anyhow::Result<Report> {
    let pid = common.pid;
    if pid.is_none() {
        common.progress.note(
            &indicatif::ProgressBar::hidden(),
            "no --pid given: server RSS will not be measured",
        );
    }
    let rss_before = pid.map(procfs::rss_kib).transpose()?;
    let n_targets = common.targets.len();
    let plans: Vec<SessionPlan> = (0..args.sessions)
        .map(|i| {
            let user = format!("{}idle-{i}", common.user_prefix);
            SessionPlan {
                target: i % n_targets,
                subscriptions: args
                    .subscriptions
                    .iter()
                    .map(|d| super::expand(d, i, &user))
                    .collect(),
                user,
            }
        })
        .collect();
    let ctx = Arc::new(ReceiveContext {
        clock: Clock::start(),
        recorder: Recorder::new(1),
        stop: CancellationToken::new(),

        ack: false,
        shared: None,
    });
    let mut report = Report {
        scenario: "idle".to_owned(),
        started_unix: crate::jwt::unix_now(),
        urls: common.targets.iter().map(|t| t.url.clone()).collect(),
        parameters: serde_json::json!({
            "sessions": args.sessions,
            "subscriptions": args.subscriptions,
            "hold_s": args.hold,
            "settle_s": args.settle,
            "heartbeat_ms": common.heartbeat_ms,
            "ws_read_buffer": common.ws_read_buffer,
        }),
        ..Report::default()
    };
    let rctx = ctx.clone();
    let (handles, setup) = super::establish(common, plans, "connecting", move |i, s| {
        super::receive(i, s, rctx.clone())
    })
    .await;
    report.setup = setup;

    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_connected = pid.map(procfs::rss_kib).transpose()?;
    let cpu_start = pid.map(procfs::cpu_ticks).transpose()?;
    let hold_started = Instant::now();
    let hold = Duration::from_secs_f64(args.hold);
    let spinner = common.progress.spinner("holding");
    let mut peak = rss_connected.unwrap_or(0);
    while hold_started.elapsed() < hold {
        let left = hold.saturating_sub(hold_started.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        if let Some(p) = pid
            && let Ok(r) = procfs::rss_kib(p)
        {
            peak = peak.max(r);
            spinner.set_message(format!(
                "holding {} sessions, server RSS {} KiB, {:.0}s left",
                report.setup.established,
                r,
                hold.saturating_sub(hold_started.elapsed()).as_secs_f64()
            ));
        }
    }
    let held = hold_started.elapsed().as_secs_f64();
    let rss_end = pid.map(procfs::rss_kib).transpose()?;
    let cpu_end = pid.map(procfs::cpu_ticks).transpose()?;
    spinner.finish_and_clear();
    ctx.stop.cancel();

    let mut health = SessionHealth::default();
    for h in handles.into_iter().flatten() {
        if let Ok(o) = h.await {
            health.error_frames += o.error_frames;
            health.dropped += u64::from(o.dropped);
            health.server_heartbeats += o.heartbeats;
            health.sessions_heard_from += u64::from(o.heard);
            if health.first_problem.is_none() {
                health.first_problem = o.problem;
            }
        }
    }
    report.sessions = health;
    if let (Some(pid), Some(before), Some(end)) = (pid, rss_before, rss_end) {
        let cpu = match (cpu_start, cpu_end) {
            (Some(a), Some(b)) if held > 0.0 => {
                100.0 * (b.saturating_sub(a) as f64 / procfs::TICKS_PER_SEC) / held
            }
            _ => 0.0,
        };
        report.server = Some(ServerStats {
            pid,
            rss_before_kib: before,
            rss_connected_kib: rss_connected.unwrap_or(0),
            rss_end_kib: end,
            rss_peak_kib: peak.max(end),
            kib_per_session: end.saturating_sub(before) as f64
                / report.setup.established.max(1) as f64,
            cpu_percent: cpu,
        });
    }
    if report.setup.failed > 0 {
        report.aborted = Some(format!(
            "{} of {} sessions failed to set up; first: {}",
            report.setup.failed,
            report.setup.requested,
            report.setup.first_error.clone().unwrap_or_default()
        ));
    }
    report.loadtest_rss_kib = procfs::rss_kib(std::process::id()).ok();
    Ok(report)
}
