//! The session registry API: which session of which user lives on which gateway node.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::bus::Health;
use crate::error::BusError;
use crate::in_process::InProcessRegistry;
use crate::model::{NodeId, SessionEntry};
use crate::redis_registry::{RedisRegistry, RedisRegistryConfig};

/// An implementation of the registry. Private so that implementations live in this crate.
#[async_trait]
pub(crate) trait RegistryBackend: Send + Sync + fmt::Debug + 'static {
    async fn register(&self, entry: SessionEntry) -> Result<(), BusError>;
    async fn unregister(&self, session: &str) -> Result<(), BusError>;
    async fn session(&self, session: &str) -> Result<Option<SessionEntry>, BusError>;
    async fn sessions_of(&self, user: &str) -> Result<Vec<SessionEntry>, BusError>;
    async fn nodes_of(&self, user: &str) -> Result<Vec<NodeId>, BusError>;
    async fn is_online(&self, user: &str) -> Result<bool, BusError>;
    /// [`RegistryBackend::nodes_of`] for a delivery; `true` with no node when the registry lost its
    /// data lately and the user's sessions did not come back in time (not merely offline).
    async fn nodes_for_delivery(&self, user: &str) -> Result<(Vec<NodeId>, bool), BusError> {
        Ok((self.nodes_of(user).await?, false))
    }
    async fn remove_node(&self, node: &NodeId) -> Result<usize, BusError>;
    async fn hold_lease(&self, node: &NodeId) -> Result<NodeLease, BusError>;
    async fn live_nodes(&self) -> Result<Vec<NodeId>, BusError>;
    async fn sweep(&self) -> Result<usize, BusError>;
    async fn worker_heartbeat(&self, worker: &str, ttl: Duration) -> Result<Vec<String>, BusError>;
    async fn worker_leave(&self, worker: &str) -> Result<(), BusError>;
    fn health(&self) -> Health;
    async fn save_resume(
        &self,
        user: &str,
        marks: &[(String, u64)],
        ttl: Duration,
    ) -> Result<(), BusError>;
    async fn take_resume(&self, user: &str, topic: &str) -> Result<Option<u64>, BusError>;
}

/// A node's lease in the registry: while it is held (and refreshed in the background by the Redis
/// registry), the node counts as alive and its sessions are kept. Dropping it stops the refresh and
/// deletes the lease (in the background); [`NodeLease::release`] does the same and waits, and also
/// removes the node's remaining sessions.
///
/// The in-process registry has no leases: its `NodeLease` does nothing.
pub struct NodeLease {
    node: NodeId,
    inner: Option<Box<dyn LeaseControl>>,
}

impl fmt::Debug for NodeLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeLease")
            .field("node", &self.node)
            .field("inner", &self.inner)
            .finish()
    }
}

/// The implementation side of a lease.
#[async_trait]
pub(crate) trait LeaseControl: Send + Sync + fmt::Debug + 'static {
    /// Stops refreshing, deletes the lease and removes the node's sessions.
    async fn release(&self) -> Result<(), BusError>;
}

impl NodeLease {
    pub(crate) fn new(node: NodeId, inner: Option<Box<dyn LeaseControl>>) -> Self {
        Self { node, inner }
    }

    /// The node this lease is for.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Gives the lease up now: stops the refresh, deletes the lease and removes the node's remaining
    /// sessions from the registry.
    pub async fn release(mut self) -> Result<(), BusError> {
        match self.inner.take() {
            Some(inner) => inner.release().await,
            None => Ok(()),
        }
    }
}

/// The session registry. Cheap to clone; all clones share one registry.
#[derive(Clone)]
pub struct Registry {
    backend: Arc<dyn RegistryBackend>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Registry {
    /// The in-process registry (a table in this process's memory).
    pub fn in_process() -> Registry {
        Registry {
            backend: Arc::new(InProcessRegistry::default()),
        }
    }

    /// The Redis registry (scale-out): connects to Redis and checks it answers.
    ///
    /// See [`RedisRegistryConfig`] for the keys it uses, and the crate documentation for the lease and
    /// sweeping rules.
    pub async fn redis(config: RedisRegistryConfig) -> Result<Registry, BusError> {
        Ok(Registry {
            backend: Arc::new(RedisRegistry::connect(config).await?),
        })
    }

    /// Records a session (on CONNECT). Registering an existing session id replaces its entry.
    pub async fn register(&self, entry: SessionEntry) -> Result<(), BusError> {
        self.backend.register(entry).await
    }

    /// Forgets a session (on disconnect). Unknown ids are ignored.
    pub async fn unregister(&self, session: &str) -> Result<(), BusError> {
        self.backend.unregister(session).await
    }

    /// The entry of one session, if registered.
    pub async fn session(&self, session: &str) -> Result<Option<SessionEntry>, BusError> {
        self.backend.session(session).await
    }

    /// All sessions of `user`, in registration order.
    pub async fn sessions_of(&self, user: &str) -> Result<Vec<SessionEntry>, BusError> {
        self.backend.sessions_of(user).await
    }

    /// The distinct nodes holding sessions of `user`, in order of their first session.
    pub async fn nodes_of(&self, user: &str) -> Result<Vec<NodeId>, BusError> {
        self.backend.nodes_of(user).await
    }

    /// The nodes to deliver a push for `user` to: [`Registry::nodes_of`], except that right after
    /// the registry lost its data (Redis restarted empty), finding nobody is retried until the
    /// gateways have written their sessions back (at most 1.5 s after the loss). The flag is true
    /// when nobody was found and the reason may be the loss rather than the user being offline.
    pub async fn nodes_for_delivery(&self, user: &str) -> Result<(Vec<NodeId>, bool), BusError> {
        self.backend.nodes_for_delivery(user).await
    }

    /// Whether `user` has at least one session.
    pub async fn is_online(&self, user: &str) -> Result<bool, BusError> {
        self.backend.is_online(user).await
    }

    /// Sweep: removes every session on `node` (the node went away); returns how many were removed.
    pub async fn remove_node(&self, node: &NodeId) -> Result<usize, BusError> {
        self.backend.remove_node(node).await
    }

    /// Takes the lease of `node` and keeps it alive in the background until the returned
    /// [`NodeLease`] is dropped or released. Sessions registered (through this `Registry`) on a node
    /// whose lease this process holds are written again if the registry lost them (a Redis restart,
    /// or a lease that expired while the node was cut off and was swept by another node).
    ///
    /// Redis: fails with [`BusError::NodeInUse`] if another process holds the lease and it does not
    /// expire within one lease TTL. In-process: always succeeds and does nothing.
    pub async fn hold_lease(&self, node: &NodeId) -> Result<NodeLease, BusError> {
        self.backend.hold_lease(node).await
    }

    /// Nodes with a live lease (Redis), or with at least one session (in-process), sorted.
    pub async fn live_nodes(&self) -> Result<Vec<NodeId>, BusError> {
        self.backend.live_nodes().await
    }

    /// Removes the sessions of every node whose lease has expired; returns how many sessions were
    /// removed. Processes holding a lease run this periodically by themselves
    /// (`RedisRegistryConfig::sweep_every`). In-process: does nothing.
    pub async fn sweep(&self) -> Result<usize, BusError> {
        self.backend.sweep().await
    }

    /// Command workers (processes consuming the bus's command shards): marks `worker` alive for
    /// `ttl` and returns every worker alive now, sorted (including `worker`). Workers call it every
    /// quarter of `ttl`; one that stops calling drops out of the list once its `ttl` has passed.
    /// Redis: one script on the sorted set `{prefix}workers` (score = expiry in the server's
    /// clock, so the processes' clocks do not matter). In-process: a table in this process.
    pub async fn worker_heartbeat(
        &self,
        worker: &str,
        ttl: Duration,
    ) -> Result<Vec<String>, BusError> {
        self.backend.worker_heartbeat(worker, ttl).await
    }

    /// Removes `worker` from the live workers at once (a process that stops cleanly), so the
    /// others take over its shards without waiting out its TTL.
    pub async fn worker_leave(&self, worker: &str) -> Result<(), BusError> {
        self.backend.worker_leave(worker).await
    }

    /// Presence: where `user` is online, as `(node, sessions on that node)` pairs in order of the
    /// user's first session on each node; empty when the user is offline.
    pub async fn presence(&self, user: &str) -> Result<Vec<(NodeId, usize)>, BusError> {
        let mut out: Vec<(NodeId, usize)> = Vec::new();
        for entry in self.backend.sessions_of(user).await? {
            match out.iter_mut().find(|(node, _)| *node == entry.node) {
                Some((_, count)) => *count += 1,
                None => out.push((entry.node, 1)),
            }
        }
        Ok(out)
    }

    /// Health of the registry (Redis reachable, leases refreshed).
    pub fn health(&self) -> Health {
        self.backend.health()
    }

    /// Resume marks: records, for each `(topic, id)`, that `user`'s session that just ended had
    /// been delivered the messages of `topic` up to message id `id`. A mark lives `ttl` (the resume
    /// window); a newer mark for the same user and topic replaces it only with a larger id (of two
    /// sessions of one user, the one that saw more wins, so a resume never repeats what one of them
    /// showed). Redis: one key per mark, `{p}r:{user}:{topic}`, expiring with `ttl`, so marks of a
    /// user are found from any gateway. In-process: a bounded table.
    pub async fn save_resume(
        &self,
        user: &str,
        marks: &[(String, u64)],
        ttl: Duration,
    ) -> Result<(), BusError> {
        if marks.is_empty() || ttl.is_zero() {
            return Ok(());
        }
        self.backend.save_resume(user, marks, ttl).await
    }

    /// Takes (reads and deletes) `user`'s unexpired resume mark for `topic`, if any: the id of the
    /// last message the user's previous session was delivered on it.
    pub async fn take_resume(&self, user: &str, topic: &str) -> Result<Option<u64>, BusError> {
        self.backend.take_resume(user, topic).await
    }
}
