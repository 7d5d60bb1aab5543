//! `direct`: P pairs of users; A_i sends to B_i only, at an aggregate paced rate.
//!
//! On Instar A_i SENDs to `/app/bench.direct` with header `to:B_i`; the server's bench echo handler
//! (`INSTAR_BENCH_ECHO=1`) delivers the body to user B_i's `/user/queue/bench`. Receivers and senders
//! can sit on different gateway nodes: receiver i uses `--url` number `i mod n`, sender i number
//! `(i + 1) mod n`, so with two or more URLs every message crosses nodes.
//!
//! Each pair is its own stream, so besides loss and order the accounting checks isolation: a message
//! reaching the wrong user counts as *misrouted*.

use std::time::Duration;

use clap::Args;

use super::{Common, MessageRun, SendPlan, SessionPlan};
use crate::pacing::Schedule;
use crate::report::Report;

/// Options of `loadtest direct`.
#[derive(Debug, Clone, Args)]
pub struct DirectArgs {
    /// Sender/receiver pairs.
    #[arg(long, short = 'p', default_value_t = 100)]
    pub pairs: usize,
    /// Aggregate send rate over all senders, messages per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Messages to send at most (all senders together).
    #[arg(long, default_value_t = 100_000)]
    pub max_messages: u64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Where senders SEND; `{user}` is the receiver's user name and `{i}` the pair number.
    #[arg(long, default_value = "/app/bench.direct")]
    pub send_destination: String,
    /// Header naming the receiving user on each SEND (empty: none).
    #[arg(long, default_value = "to")]
    pub to_header: String,
    /// What receivers SUBSCRIBE to; `{user}` and `{i}` as above. RabbitMQ: /queue/bench.{user}.
    #[arg(long, default_value = "/user/queue/bench")]
    pub receive_destination: String,
    /// Seconds to wait for the last deliveries after sending ends.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
}

/// Runs the direct scenario.
pub async fn run(common: &Common, args: &DirectArgs) -> anyhow::Result<Report> {
    let p = args.pairs.max(1);
    let n_targets = common.targets.len();
    let per_sender_rate = args.rate / p as f64;
    let stagger_ns = Schedule::from_rate(args.rate, 0).interval_ns;
    let duration = Duration::from_secs_f64(args.duration);
    let mut receivers = Vec::with_capacity(p);
    let mut senders = Vec::with_capacity(p);
    let mut planned = 0;
    for i in 0..p {
        let a = format!("{}a-{i}", common.user_prefix);
        let b = format!("{}b-{i}", common.user_prefix);
        receivers.push((
            SessionPlan {
                target: i % n_targets,
                subscriptions: vec![super::expand(&args.receive_destination, i, &b)],
                user: b.clone(),
            },
            i as u64,
        ));
        let schedule = Schedule::from_rate(per_sender_rate, i as u64 * stagger_ns);
        let share =
            args.max_messages / p as u64 + u64::from((i as u64) < args.max_messages % p as u64);
        let count = schedule.count_within(duration).min(share);
        planned += count;
        let headers = if args.to_header.is_empty() {
            Vec::new()
        } else {
            vec![(args.to_header.clone(), b.clone())]
        };
        senders.push((
            SessionPlan {
                target: (i + 1) % n_targets,
                user: a,
                subscriptions: Vec::new(),
            },
            SendPlan {
                stream: i as u64,
                destination: super::expand(&args.send_destination, i, &b),
                headers,
                schedule,
                max_messages: count,
                payload: args.payload,
                body: super::BodyFormat::Plain,
            },
        ));
    }
    let parameters = serde_json::json!({
        "pairs": p,
        "rate": args.rate,
        "duration_s": args.duration,
        "max_messages": args.max_messages,
        "messages_planned": planned,
        "payload_bytes": args.payload,
        "send_destination": args.send_destination,
        "receive_destination": args.receive_destination,
        "heartbeat_ms": common.heartbeat_ms,
    });
    super::run_messages(
        common,
        MessageRun {
            scenario: "direct",
            parameters,
            receivers,
            senders,
            target_rate: args.rate,
            fan: 1,
            drain: Duration::from_secs_f64(args.drain),
            shared: false,
        },
    )
    .await
}
