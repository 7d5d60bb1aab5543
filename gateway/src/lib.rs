//! The real-time edge of Instar: STOMP 1.0–1.2 over WebSocket (`/stomp`), SockJS (`/ws`) and raw TCP.
//!
//! Layout:
//! - [`auth`]: bearer tokens (HMAC JWT) checked on CONNECT;
//! - [`destination`]: the closed destination grammar and the topic authorisation policy;
//! - [`rules`]: the destination rules opening `/topic/**` and `/queue/**` to clients' own pub/sub;
//! - [`session`]: the per-connection STOMP state machine, without sockets;
//! - [`connection`]: the task that runs a session over a transport (timers, queues, bus calls);
//! - [`hub`]: local fan-out from the bus to sessions, slow-consumer policy, topic interest, revoke controls;
//! - [`replay`]: missed-message recovery on SUBSCRIBE;
//! - [`transport`]: WebSocket and TCP byte pipes; [`sockjs`]: the SockJS server;
//! - [`server`]: the HTTP routes, the TCP listener and graceful shutdown;
//! - [`listen`]: the HTTP accept loop of every command (timeouts, connection caps).
//!
//! The gateway depends on the bus only through `broker-bridge`'s API, so the same code runs embedded
//! (in-process bus) and scaled out (RabbitMQ + Redis).

pub mod auth;
pub mod bucket;
pub mod connection;
pub mod dedup;
pub mod destination;
pub mod hub;
pub mod listen;
pub mod metrics;
pub mod order;
pub mod queue;
mod queue_sub;
pub mod replay;
pub mod revocation;
pub mod rules;
pub mod sendbuf;
pub mod server;
pub mod session;
pub mod sockjs;
pub mod transport;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use broker_bridge::{Bus, NodeId, Registry};
use rand::Rng;
use tokio_util::sync::CancellationToken;

pub use server::{GatewayConfig, serve_tcp};

/// A random identifier from `[a-z0-9]`, unguessable (used for session ids, never client-chosen).
pub fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// Gateway-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub sessions_open: AtomicU64,
    pub sessions_total: AtomicU64,
    pub frames_in: AtomicU64,
    pub commands: AtomicU64,
    pub errors_sent: AtomicU64,
    pub heartbeat_timeouts: AtomicU64,
    /// Stored messages written by replays on SUBSCRIBE.
    pub replayed: AtomicU64,
    /// Topic SUBSCRIBEs resumed from the user's previous session (no last id given).
    pub resumed: AtomicU64,
    /// Sessions closed for sending faster than `send_rate`.
    pub send_rate_closes: AtomicU64,
    /// CONNECTs refused because the user held `max_sessions_per_user` sessions on this node.
    pub sessions_refused: AtomicU64,
    /// Client SENDs to topics and queues accepted by the bus.
    pub published: AtomicU64,
}

/// Everything a connection needs, shared by all connections of one node.
pub struct Gateway {
    pub node: NodeId,
    pub config: GatewayConfig,
    pub session_config: Arc<session::SessionConfig>,
    pub verifier: Arc<auth::Verifier>,
    pub bus: Bus,
    pub registry: Registry,
    pub hub: Arc<hub::Hub>,
    pub policy: Arc<dyn destination::TopicPolicy>,
    pub metrics: Metrics,
    /// Where `/metrics` is rendered from (shared with the social service in `instar serve`).
    pub metrics_registry: broker_bridge::MetricsRegistry,
    /// Session closes and CONNECT refusals by reason, counted as they happen.
    pub counted: metrics::Counted,
    /// `/app/**` commands waiting for the bus during a broker outage.
    pub send_buffer: Arc<sendbuf::SendBuffer>,
    /// The counters of the HTTP listener serving [`Gateway::routes`] ([`listen::serve`]).
    pub http_stats: Arc<listen::ConnStats>,
    /// The counters of the raw STOMP/TCP listener ([`serve_tcp`]).
    pub tcp_stats: Arc<listen::ConnStats>,
    /// The node's connection budget ([`GatewayConfig::tcp_limits`]), counted in `http_stats`:
    /// the HTTP listener takes its places from it ([`server::serve_node_http`]) and the raw
    /// STOMP/TCP listener from a share of it counted in `tcp_stats`.
    pub conn_caps: listen::Caps,
    /// The counters of the SockJS endpoint of [`Gateway::routes`].
    pub sockjs_metrics: sockjs::SockJsMetrics,
    /// Cancelled to drain and close every session.
    pub shutdown: CancellationToken,
    /// Per user with sessions on this node: their count (for `max_sessions_per_user`) and the
    /// SEND bucket they share.
    pub user_sessions: parking_lot::Mutex<std::collections::HashMap<String, UserSessions>>,
    /// Signed-in sessions by user and the token revocations heard on the bus.
    pub revocations: Arc<revocation::Revocations>,
}

/// What a node keeps per user while the user has sessions on it.
#[derive(Debug, Clone, Copy)]
pub struct UserSessions {
    /// Open sessions.
    pub count: u32,
    /// SENDs the user's sessions may still make (refilled at twice `send_rate`).
    sends: bucket::Bucket,
}

impl Gateway {
    /// Counts one more session of `user`; false (nothing counted) when the user already holds
    /// `max_sessions_per_user` on this node.
    pub fn admit_session(&self, user: &str) -> bool {
        let max = self.config.max_sessions_per_user;
        let mut map = self.user_sessions.lock();
        let rate = self.user_send_rate();
        let entry = map.entry(user.to_owned()).or_insert(UserSessions {
            count: 0,
            sends: bucket::Bucket::full(
                rate,
                server::SEND_BURST_SECONDS,
                tokio::time::Instant::now(),
            ),
        });
        if max > 0 && entry.count >= max {
            if entry.count == 0 {
                map.remove(user);
            }
            return false;
        }
        entry.count += 1;
        true
    }

    /// SENDs per second all sessions of one user on this node may keep up together: twice a
    /// session's `send_rate` (0: unlimited).
    fn user_send_rate(&self) -> u32 {
        self.config.send_rate.saturating_mul(2)
    }

    /// Takes one SEND from `user`'s shared bucket; false when it is empty (or the user has no
    /// counted session here, which cannot send).
    pub fn take_user_send(&self, user: &str) -> bool {
        let rate = self.user_send_rate();
        if rate == 0 {
            return true;
        }
        let now = tokio::time::Instant::now();
        let mut map = self.user_sessions.lock();
        map.get_mut(user)
            .is_some_and(|e| e.sends.take(rate, server::SEND_BURST_SECONDS, now))
    }

    /// Forgets one session of `user` counted by [`Gateway::admit_session`].
    pub fn release_session(&self, user: &str) {
        let mut map = self.user_sessions.lock();
        if let Some(entry) = map.get_mut(user) {
            entry.count = entry.count.saturating_sub(1);
            if entry.count == 0 {
                map.remove(user);
            }
        }
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("node", &self.node)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Sessions currently open.
    pub fn open_sessions(&self) -> u64 {
        self.metrics
            .sessions_open
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Begins a graceful shutdown and waits (up to `grace`) for sessions to drain.
    pub async fn drain(&self, grace: Duration) {
        self.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        while self.open_sessions() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
