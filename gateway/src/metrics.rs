//! `GET /metrics`: the gateway's counters in the Prometheus text format (version 0.0.4).

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use crate::Gateway;

impl Gateway {
    /// Every counter and gauge of this node, in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let m = &self.metrics;
        let h = &self.hub.metrics;
        let b = self.bus.metrics();
        let sb = &self.send_buffer.stats;
        let r = &self.revocations;
        let rows: [(&str, &str, &str, u64); 30] = [
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
        let mut out = String::with_capacity(2048);
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP instar_{name} {help}\n# TYPE instar_{name} {kind}\ninstar_{name} {value}"
            );
        }
        let sockjs = self.sockjs_metrics.snapshot();
        let _ = writeln!(
            out,
            "# HELP instar_sockjs_sessions_open SockJS sessions open now.\n# TYPE instar_sockjs_sessions_open gauge\ninstar_sockjs_sessions_open {}",
            sockjs.sessions_open
        );
        let _ = writeln!(
            out,
            "# HELP instar_sockjs_sessions_refused_total New SockJS sessions refused (503), by the cap they met.\n# TYPE instar_sockjs_sessions_refused_total counter\ninstar_sockjs_sessions_refused_total{{cap=\"global\"}} {}\ninstar_sockjs_sessions_refused_total{{cap=\"address\"}} {}",
            sockjs.sessions_refused_total, sockjs.sessions_refused_address_total
        );
        self.http_stats.metrics_text(&mut out);
        self.tcp_stats.tcp_metrics_text(&mut out);
        out
    }
}
