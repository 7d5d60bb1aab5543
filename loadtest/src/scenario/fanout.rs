//! `fanout`: N subscribers of one topic, one publisher at a paced rate.
//!
//! On RabbitMQ the publisher SENDs straight to the topic. On Instar clients may SEND only to `/app/**`,
//! so the publisher SENDs to `/app/bench.fanout` and the server's bench echo handler (enabled with
//! `INSTAR_BENCH_ECHO=1`) republishes the body to topic `public.bench`.

use std::time::Duration;

use clap::Args;

use super::{Common, MessageRun, SendPlan, SessionPlan};
use crate::pacing::Schedule;
use crate::report::Report;

/// Options of `loadtest fanout`.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Subscribers of the topic.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub subscribers: usize,
    /// Destination the subscribers SUBSCRIBE to.
    #[arg(long, default_value = "/topic/public.bench")]
    pub topic: String,
    /// Destination the publisher SENDs to [default: the topic]. Instar: /app/bench.fanout.
    #[arg(long)]
    pub publish_destination: Option<String>,
    /// Publish rate, messages per second (deliveries/s = rate × subscribers).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Messages to publish at most.
    #[arg(long, default_value_t = 100_000)]
    pub max_messages: u64,
    /// Message body size in bytes (the stamp is written at its start).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Seconds to wait for the last deliveries after publishing ends.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
}

/// Runs the fanout scenario.
pub async fn run(common: &Common, args: &FanoutArgs) -> anyhow::Result<Report> {
    let publish_to = args
        .publish_destination
        .clone()
        .unwrap_or_else(|| args.topic.clone());
    let schedule = Schedule::from_rate(args.rate, 0);
    let count = schedule
        .count_within(Duration::from_secs_f64(args.duration))
        .min(args.max_messages);
    let n_targets = common.targets.len();
    let receivers = (0..args.subscribers)
        .map(|i| {
            let user = format!("{}sub-{i}", common.user_prefix);
            let plan = SessionPlan {
                target: i % n_targets,
                subscriptions: vec![super::expand(&args.topic, i, &user)],
                user,
            };
            (plan, 0)
        })
        .collect();
    let publisher = SessionPlan {
        target: 0,
        user: format!("{}pub", common.user_prefix),
        subscriptions: Vec::new(),
    };
    let send = SendPlan {
        stream: 0,
        destination: publish_to.clone(),
        headers: Vec::new(),
        schedule,
        max_messages: count,
        payload: args.payload,
        body: super::BodyFormat::Plain,
    };
    let parameters = serde_json::json!({
        "subscribers": args.subscribers,
        "topic": args.topic,
        "publish_destination": publish_to,
        "rate": args.rate,
        "duration_s": args.duration,
        "max_messages": args.max_messages,
        "messages_planned": count,
        "payload_bytes": args.payload,
        "heartbeat_ms": common.heartbeat_ms,
    });
    super::run_messages(
        common,
        MessageRun {
            scenario: "fanout",
            parameters,
            receivers,
            senders: vec![(publisher, send)],
            target_rate: args.rate,
            fan: args.subscribers as u64,
            drain: Duration::from_secs_f64(args.drain),
            shared: false,
        },
    )
    .await
}
