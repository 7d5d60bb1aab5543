//! `queue`: competing consumers. C consumers subscribe to one `/queue/...` destination with an
//! acknowledging mode (`client-individual` by default) and a prefetch; one producer SENDs to it at
//! a paced rate. Every message is meant for exactly one consumer, which ACKs it as soon as it has
//! read it: deliveries/s here are acknowledged messages per second.
//!
//! Against Instar the destination must be opened by a destination rule (`INSTAR_DESTINATIONS`,
//! docs/gateway.md); RabbitMQ Web-STOMP accepts `/queue/...` as is. Loss and duplicates are
//! counted over all consumers together; "reordered" compares arrivals across consumers and means
//! little here.

use std::time::Duration;

use clap::Args;

use super::{Common, MessageRun, SendPlan, SessionPlan};
use crate::pacing::Schedule;
use crate::report::Report;

/// Options of `loadtest queue`.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// Consumers of the queue.
    #[arg(long, short = 'n', default_value_t = 4)]
    pub consumers: usize,
    /// The queue.
    #[arg(long, default_value = "/queue/bench.q")]
    pub queue: String,
    /// Acknowledgement mode of the consumers: client-individual, client or auto.
    #[arg(long, default_value = "client-individual")]
    pub ack: String,
    /// Unacknowledged messages per consumer (`prefetch-count`).
    #[arg(long, default_value_t = 100)]
    pub prefetch: u16,
    /// Publish rate, messages per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Messages to publish at most.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_messages: u64,
    /// Message body size in bytes (the stamp is written at its start).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Seconds to wait for the last deliveries after publishing ends.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// `name:value` header put on the SUBSCRIBEs and SENDs; repeatable. RabbitMQ reads queue
    /// arguments from them (`x-expires:60000` lets a test queue disappear once unused).
    #[arg(long = "queue-header")]
    pub queue_headers: Vec<String>,
}

/// Runs the queue scenario.
pub async fn run(common: &Common, args: &QueueArgs) -> anyhow::Result<Report> {
    if !matches!(args.ack.as_str(), "client-individual" | "client" | "auto") {
        anyhow::bail!("--ack must be client-individual, client or auto");
    }
    if args.prefetch == 0 {
        anyhow::bail!("--prefetch must be at least 1");
    }
    let mut extra = Vec::new();
    for h in &args.queue_headers {
        let Some((k, v)) = h.split_once(':') else {
            anyhow::bail!("--queue-header '{h}': use name:value");
        };
        extra.push((k.to_owned(), v.to_owned()));
    }
    let mut common = common.clone();
    common.subscribe_headers = vec![
        ("ack".to_owned(), args.ack.clone()),
        ("prefetch-count".to_owned(), args.prefetch.to_string()),
    ];
    common.subscribe_headers.extend(extra.iter().cloned());
    let schedule = Schedule::from_rate(args.rate, 0);
    let count = schedule
        .count_within(Duration::from_secs_f64(args.duration))
        .min(args.max_messages);
    let n_targets = common.targets.len();
    let receivers = (0..args.consumers)
        .map(|i| {
            let user = format!("{}consumer-{i}", common.user_prefix);
            let plan = SessionPlan {
                target: i % n_targets,
                subscriptions: vec![args.queue.clone()],
                user,
            };
            (plan, 0)
        })
        .collect();
    let producer = SessionPlan {
        target: 0,
        user: format!("{}producer", common.user_prefix),
        subscriptions: Vec::new(),
    };
    let send = SendPlan {
        stream: 0,
        destination: args.queue.clone(),
        headers: extra,
        schedule,
        max_messages: count,
        payload: args.payload,
        body: super::BodyFormat::Plain,
    };
    let parameters = serde_json::json!({
        "consumers": args.consumers,
        "queue": args.queue,
        "ack": args.ack,
        "prefetch": args.prefetch,
        "rate": args.rate,
        "duration_s": args.duration,
        "max_messages": args.max_messages,
        "messages_planned": count,
        "payload_bytes": args.payload,
        "heartbeat_ms": common.heartbeat_ms,
    });
    super::run_messages(
        &common,
        MessageRun {
            scenario: "queue",
            parameters,
            receivers,
            senders: vec![(producer, send)],
            target_rate: args.rate,
            fan: 1,
            drain: Duration::from_secs_f64(args.drain),
            shared: true,
        },
    )
    .await
}
