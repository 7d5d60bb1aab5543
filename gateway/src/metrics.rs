//! `GET /metrics`: the gateway's counters, kept in the node's [`MetricsRegistry`] and rendered
//! in the Prometheus text format (version 0.0.4).
//!
//! The counts the node's logic and tests read back stay in atomics (the `metrics` handles are
//! write-only) and are copied into the registry at scrape time ([`Gateway::update_metrics`]);
//! what nothing reads back (why sessions closed, why CONNECTs were refused) is counted straight
//! into labelled counters ([`Counted`]).

use std::sync::atomic::Ordering::Relaxed;

use broker_bridge::MetricsRegistry;
use metrics::Counter;

use crate::Gateway;
use crate::connection::CloseReason;

/// Sessions closed, by reason (`instar_sessions_closed_total{reason}`).
pub const SESSIONS_CLOSED: &str = "instar_sessions_closed_total";
/// CONNECTs refused, by reason (`instar_connects_refused_total{reason}`).
pub const CONNECTS_REFUSED: &str = "instar_connects_refused_total";

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The user held `max_sessions_per_user` sessions on this node.
    SessionsPerUser,
    /// The token was revoked.
    RevokedToken,
}

impl Refusal {
    const ALL: [Refusal; 2] = [Refusal::SessionsPerUser, Refusal::RevokedToken];

    /// The `reason` label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Refusal::SessionsPerUser => "sessions_per_user",
            Refusal::RevokedToken => "revoked_token",
        }
    }
}

/// The labelled counters a node counts into as things happen.
#[derive(Debug)]
pub struct Counted {
    closed: Vec<(&'static str, Counter)>,
    refused: Vec<(Refusal, Counter)>,
}

impl Counted {
    /// Registers every label value on `registry` (each shows 0 until it happens).
    #[must_use]
    pub fn register(registry: &MetricsRegistry) -> Self {
        let closed = CloseReason::LABELS
            .iter()
            .map(|&reason| {
                (
                    reason,
                    registry.counter_with(
                        SESSIONS_CLOSED,
                        &[("reason", reason)],
                        "STOMP sessions closed, by reason (client, disconnect, error, send_rate, refused, heartbeat, connect_timeout, token_expired, revoked, slow_consumer, shutdown, write_error, bad_input).",
                    ),
                )
            })
            .collect();
        let refused = Refusal::ALL
            .iter()
            .map(|&r| {
                (
                    r,
                    registry.counter_with(
                        CONNECTS_REFUSED,
                        &[("reason", r.label())],
                        "CONNECTs refused, by reason (sessions_per_user: the user's cap on this node; revoked_token).",
                    ),
                )
            })
            .collect();
        Counted { closed, refused }
    }

    /// Counts one session closed for `reason` (a [`CloseReason::label`]).
    pub fn closed(&self, reason: &str) {
        if let Some((_, c)) = self.closed.iter().find(|(r, _)| *r == reason) {
            c.increment(1);
        }
    }

    /// Counts one CONNECT refused for `refusal`.
    pub fn refused(&self, refusal: Refusal) {
        if let Some((_, c)) = self.refused.iter().find(|(r, _)| *r == refusal) {
            c.increment(1);
        }
    }
}

impl Gateway {
    /// Copies this node's counts into its registry (what [`Gateway::metrics_text`] renders).
    pub fn update_metrics(&self) {
        let m = &self.metrics;
        let h = &self.hub.metrics;
        let b = self.bus.metrics();
        let sb = &self.send_buffer.stats;
        let r = &self.revocations;
        let reg = &self.metrics_registry;
        let rows: [(&str, &str, &str, u64); 31] = [
            (
                "sessions_open",
                "gauge",
                "STOMP sessions open now.",
                m.sessions_open.load(Relaxed),
            ),
            (
                "sessions_total",
                "counter",
                "STOMP sessions opened since start.",
                m.sessions_total.load(Relaxed),
            ),
            (
                "frames_in_total",
                "counter",
                "Client frames handled.",
                m.frames_in.load(Relaxed),
            ),
            (
                "commands_total",
                "counter",
                "Application commands accepted by the bus.",
                m.commands.load(Relaxed),
            ),
            (
                "errors_sent_total",
                "counter",
                "ERROR frames sent (each closes its session).",
                m.errors_sent.load(Relaxed),
            ),
            (
                "heartbeat_timeouts_total",
                "counter",
                "Sessions closed for missing heart-beats.",
                m.heartbeat_timeouts.load(Relaxed),
            ),
            (
                "sessions_refused_total",
                "counter",
                "CONNECTs refused because the user held its maximum of sessions on this node.",
                m.sessions_refused.load(Relaxed),
            ),
            (
                "send_rate_closes_total",
                "counter",
                "Sessions closed for sending faster than their send rate.",
                m.send_rate_closes.load(Relaxed),
            ),
            (
                "client_published_total",
                "counter",
                "Client SENDs to topics and queues (destination rules) accepted by the bus.",
                m.published.load(Relaxed),
            ),
            (
                "replayed_total",
                "counter",
                "Stored messages replayed to SUBSCRIBEs naming a last message id.",
                m.replayed.load(Relaxed),
            ),
            (
                "resumed_subscriptions_total",
                "counter",
                "Topic SUBSCRIBEs without a last message id resumed server-side from the user's previous session.",
                m.resumed.load(Relaxed),
            ),
            (
                "revoked_subscriptions_total",
                "counter",
                "Subscriptions dropped by revoke controls (a member left a room).",
                h.revoked.load(Relaxed),
            ),
            (
                "revoked_token_sessions_closed_total",
                "counter",
                "Live sessions closed because their token was revoked (password change, sign-out-everywhere).",
                r.sessions_closed.load(Relaxed),
            ),
            (
                "revoked_token_connects_refused_total",
                "counter",
                "CONNECTs refused because their token was revoked.",
                r.connects_refused.load(Relaxed),
            ),
            (
                "held_during_replay_total",
                "counter",
                "Live deliveries held while their subscription replayed.",
                h.held.load(Relaxed),
            ),
            (
                "duplicates_dropped_total",
                "counter",
                "Deliveries dropped because the subscription had delivered that message id already.",
                h.duplicates.load(Relaxed),
            ),
            (
                "deliveries_total",
                "counter",
                "MESSAGE frames queued to local sessions.",
                h.deliveries.load(Relaxed),
            ),
            (
                "slow_consumers_total",
                "counter",
                "Sessions closed because their outbound queue was full.",
                h.slow_consumers.load(Relaxed),
            ),
            (
                "undeliverable_total",
                "counter",
                "Bus deliveries with no local subscriber.",
                h.undeliverable.load(Relaxed),
            ),
            (
                "bus_published_total",
                "counter",
                "Bus publishes accepted.",
                b.published,
            ),
            (
                "bus_dropped_total",
                "counter",
                "Bus deliveries lost to detached nodes.",
                b.dropped,
            ),
            (
                "bus_commands_handled_total",
                "counter",
                "Application commands handled.",
                b.commands_handled,
            ),
            (
                "bus_commands_failed_total",
                "counter",
                "Application commands whose handler failed.",
                b.commands_failed,
            ),
            (
                "bus_commands_retried_total",
                "counter",
                "Retries of application commands whose handler failed transiently (a dependency down).",
                b.commands_retried,
            ),
            (
                "send_buffer_held",
                "gauge",
                "SENDs to /app/** waiting in this node's buffer for the bus (broker outage).",
                sb.held.load(Relaxed),
            ),
            (
                "send_buffer_buffered_total",
                "counter",
                "SENDs to /app/** taken into the node's buffer because the bus could not take them.",
                sb.buffered.load(Relaxed),
            ),
            (
                "send_buffer_flushed_total",
                "counter",
                "Buffered SENDs the broker confirmed after the outage.",
                sb.flushed.load(Relaxed),
            ),
            (
                "send_buffer_refused_total",
                "counter",
                "SENDs refused because the node's buffer was full (error RECEIPT, or ERROR without receipt).",
                sb.refused.load(Relaxed),
            ),
            (
                "bus_work_shards_owned",
                "gauge",
                "Command shards this process consumes now (RabbitMQ: its share among the live command workers).",
                b.work_shards_owned,
            ),
            (
                "bus_work_rebalances_total",
                "counter",
                "Times this process's set of command shards changed (a worker joined or left).",
                b.work_rebalances,
            ),
            (
                "bus_broker_messages_total",
                "counter",
                "Messages sent to the broker for publishes and commands (concurrent ones to one route share a message).",
                b.broker_messages,
            ),
        ];
        for (name, kind, help, value) in rows {
            let name = format!("instar_{name}");
            if kind == "gauge" {
                reg.set_gauge(&name, help, value);
            } else {
                reg.set_counter(&name, help, value);
            }
        }
        let sockjs = self.sockjs_metrics.snapshot();
        reg.set_gauge(
            "instar_sockjs_sessions_open",
            "SockJS sessions open now.",
            sockjs.sessions_open as u64,
        );
        let refused_help = "New SockJS sessions refused (503), by the cap they met.";
        for (cap, n) in [
            ("global", sockjs.sessions_refused_total),
            ("address", sockjs.sessions_refused_address_total),
        ] {
            reg.counter_with(
                "instar_sockjs_sessions_refused_total",
                &[("cap", cap)],
                refused_help,
            )
            .absolute(n);
        }
        self.http_stats.update_metrics(reg);
        self.tcp_stats.update_tcp_metrics(reg);
    }

    /// Every counter and gauge of this node's registry, in the Prometheus text format (with the
    /// social service's too when `instar serve` shares one registry between them).
    pub fn metrics_text(&self) -> String {
        self.update_metrics();
        self.metrics_registry.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_close_reason_has_a_registered_label() {
        let registry = MetricsRegistry::new();
        let counted = Counted::register(&registry);
        for reason in [
            CloseReason::ClientGone,
            CloseReason::Disconnect,
            CloseReason::ProtocolError,
            CloseReason::HeartBeatTimeout,
            CloseReason::ConnectTimeout,
            CloseReason::TokenExpired,
            CloseReason::TokenRevoked,
            CloseReason::SlowConsumer,
            CloseReason::Shutdown,
            CloseReason::WriteError,
            CloseReason::BadInput,
        ] {
            assert!(CloseReason::LABELS.contains(&reason.label()), "{reason:?}");
        }
        counted.closed(CloseReason::HeartBeatTimeout.label());
        counted.closed("send_rate");
        counted.refused(Refusal::RevokedToken);
        let text = registry.render();
        for line in [
            "instar_sessions_closed_total{reason=\"heartbeat\"} 1",
            "instar_sessions_closed_total{reason=\"send_rate\"} 1",
            "instar_sessions_closed_total{reason=\"client\"} 0",
            "instar_connects_refused_total{reason=\"revoked_token\"} 1",
            "instar_connects_refused_total{reason=\"sessions_per_user\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
