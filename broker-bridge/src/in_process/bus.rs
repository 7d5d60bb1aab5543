//! The in-process bus: bounded channels and hash maps.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use async_trait::async_trait;
use futures_util::future::join_all;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, error, warn};

use super::{InProcessConfig, lock, read, write};
use crate::bus::{
    AppHandler, BusBackend, BusMetrics, Health, NodeControl, NodeLink, is_pattern, topic_matches,
    validate_binding, validate_topic,
};
use crate::error::BusError;
use crate::model::{AppCommand, Delivery, Envelope, NodeId, Target};
use crate::registry::Registry;

/// The bus handle stored in [`crate::Bus`]. Node links hold only a weak reference to `shared`, so
/// dropping every `Bus` clone closes the node inboxes (their `recv` then yields `None`).
pub(crate) struct InProcessBus {
    shared: Arc<Shared>,
}

struct Shared {
    registry: Registry,
    inbox_capacity: usize,
    workers: usize,
    routes: RwLock<Routes>,
    /// Sorted by prefix length, longest first.
    handlers: RwLock<Vec<Route>>,
    /// One queue per worker. A command goes to the queue its session hashes to, so the commands of
    /// one session are handled one after the other, in the order they were submitted, while
    /// different sessions' commands run in parallel.
    work_tx: Vec<mpsc::Sender<Job>>,
    /// Taken by the first `submit`, which starts the workers.
    work_rx: Mutex<Option<Vec<mpsc::Receiver<Job>>>>,
    workers_started: AtomicBool,
    shard_hasher: std::hash::RandomState,
    next_link: AtomicU64,
    counters: Arc<Counters>,
    queues: super::queues::QueueSet,
}

#[derive(Default)]
struct Routes {
    /// topic -> inboxes of the nodes bound to it. Rebuilt on bind/unbind (rare), cloned by publish
    /// (one reference-count increment under a read lock).
    topics: HashMap<String, Arc<[Arc<Inbox>]>>,
    /// The keys of `topics` that are wildcard patterns, matched on every topic publish.
    patterns: HashSet<String>,
    nodes: HashMap<NodeId, NodeState>,
}

struct NodeState {
    inbox: Arc<Inbox>,
    topics: HashSet<String>,
}

struct Inbox {
    node: NodeId,
    /// Distinguishes successive links of the same node id.
    link: u64,
    tx: mpsc::Sender<Delivery>,
}

/// An application handler and the destination prefix it is registered under.
type Route = (Arc<str>, Arc<dyn AppHandler>);

struct Job {
    prefix: Arc<str>,
    handler: Arc<dyn AppHandler>,
    cmd: AppCommand,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    unrouted: AtomicU64,
    no_session: AtomicU64,
    commands_submitted: AtomicU64,
    commands_unrouted: AtomicU64,
    commands_handled: AtomicU64,
    commands_failed: AtomicU64,
    commands_panicked: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes = read(&self.shared.routes);
        f.debug_struct("InProcessBus")
            .field("nodes", &routes.nodes.len())
            .field("topics", &routes.topics.len())
            .field("handlers", &read(&self.shared.handlers).len())
            .field("inbox_capacity", &self.shared.inbox_capacity)
            .field("workers", &self.shared.workers)
            .finish()
    }
}

impl InProcessBus {
    pub(crate) fn new(registry: Registry, config: InProcessConfig) -> Self {
        let workers = config.workers.max(1);
        let per_worker = config.work_queue_capacity.max(1).div_ceil(workers);
        let (work_tx, work_rx): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::channel(per_worker)).unzip();
        Self {
            shared: Arc::new(Shared {
                registry,
                inbox_capacity: config.node_inbox_capacity.max(1),
                workers,
                routes: RwLock::new(Routes::default()),
                handlers: RwLock::new(Vec::new()),
                work_tx,
                work_rx: Mutex::new(Some(work_rx)),
                workers_started: AtomicBool::new(false),
                shard_hasher: std::hash::RandomState::new(),
                next_link: AtomicU64::new(1),
                counters: Arc::new(Counters::default()),
                queues: super::queues::QueueSet::new(config.queues.clone()),
            }),
        }
    }
}

impl Shared {
    /// Enqueues one delivery per inbox; waits (concurrently across nodes) for full inboxes.
    async fn deliver(&self, target: &Target, envelope: Arc<Envelope>, inboxes: &[Arc<Inbox>]) {
        let counters = &self.counters;
        let mut waiting = Vec::new();
        for inbox in inboxes {
            let delivery = Delivery {
                target: target.clone(),
                envelope: Arc::clone(&envelope),
            };
            match inbox.tx.try_send(delivery) {
                Ok(()) => bump(&counters.delivered, 1),
                Err(TrySendError::Full(delivery)) => waiting.push((inbox, delivery)),
                Err(TrySendError::Closed(_)) => {
                    debug!(node = %inbox.node, ?target, "node detached during publish; delivery dropped");
                    bump(&counters.dropped, 1);
                }
            }
        }
        if waiting.is_empty() {
            return;
        }
        let sends = waiting.into_iter().map(|(inbox, delivery)| async move {
            let sent = inbox.tx.send(delivery).await.is_ok();
            if !sent {
                debug!(node = %inbox.node, ?target, "node detached during publish; delivery dropped");
            }
            sent
        });
        for sent in join_all(sends).await {
            bump(
                if sent {
                    &counters.delivered
                } else {
                    &counters.dropped
                },
                1,
            );
        }
    }

    fn resolve(&self, destination: &str) -> Option<Route> {
        read(&self.handlers)
            .iter()
            .find(|(prefix, _)| destination.starts_with(&**prefix))
            .map(|(prefix, handler)| (Arc::clone(prefix), Arc::clone(handler)))
    }

    /// Starts the workers on the current Tokio runtime, once.
    fn ensure_workers(&self) -> Result<(), BusError> {
        if self.workers_started.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut slot = lock(&self.work_rx);
        if slot.is_none() {
            // Another caller started them meanwhile.
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            BusError::Unavailable("no Tokio runtime to run the command workers on".to_owned())
        })?;
        let Some(queues) = slot.take() else {
            return Ok(());
        };
        for (id, rx) in queues.into_iter().enumerate() {
            runtime.spawn(worker(id, rx, Arc::clone(&self.counters)));
        }
        self.workers_started.store(true, Ordering::Release);
        Ok(())
    }

    fn bind(&self, node: &NodeId, link: u64, topic: &str) -> Result<(), BusError> {
        validate_binding(topic)?;
        let mut routes = write(&self.routes);
        let state = match routes.nodes.get_mut(node) {
            Some(state) if state.inbox.link == link => state,
            _ => return Err(BusError::Closed),
        };
        if !state.topics.insert(topic.to_owned()) {
            return Ok(());
        }
        let inbox = Arc::clone(&state.inbox);
        let bound: Arc<[Arc<Inbox>]> = match routes.topics.get(topic) {
            Some(old) => old.iter().cloned().chain(Some(inbox)).collect(),
            None => Arc::from([inbox]),
        };
        routes.topics.insert(topic.to_owned(), bound);
        if is_pattern(topic) {
            routes.patterns.insert(topic.to_owned());
        }
        Ok(())
    }

    fn unbind(&self, node: &NodeId, link: u64, topic: &str) -> Result<(), BusError> {
        validate_binding(topic)?;
        let mut routes = write(&self.routes);
        match routes.nodes.get_mut(node) {
            Some(state) if state.inbox.link == link => {
                if !state.topics.remove(topic) {
                    return Ok(());
                }
            }
            _ => return Err(BusError::Closed),
        }
        routes.remove_binding(topic, link);
        Ok(())
    }

    fn detach(&self, node: &NodeId, link: u64) {
        let mut routes = write(&self.routes);
        match routes.nodes.get(node) {
            Some(state) if state.inbox.link == link => {}
            _ => return,
        }
        if let Some(state) = routes.nodes.remove(node) {
            for topic in &state.topics {
                routes.remove_binding(topic, link);
            }
            debug!(%node, topics = state.topics.len(), "node detached");
        }
    }
}

impl Routes {
    /// The inboxes bound to `topic` by name or by a matching pattern, each once.
    fn inboxes_for(&self, topic: &str) -> Option<Arc<[Arc<Inbox>]>> {
        let exact = self.topics.get(topic);
        if self.patterns.is_empty() {
            return exact.cloned();
        }
        let mut all: Vec<Arc<Inbox>> = exact.map(|e| e.to_vec()).unwrap_or_default();
        for pattern in &self.patterns {
            if topic_matches(pattern, topic)
                && let Some(bound) = self.topics.get(pattern)
            {
                for inbox in bound.iter() {
                    if !all.iter().any(|i| i.link == inbox.link) {
                        all.push(Arc::clone(inbox));
                    }
                }
            }
        }
        (!all.is_empty()).then(|| Arc::from(all))
    }

    fn remove_binding(&mut self, topic: &str, link: u64) {
        let Some(old) = self.topics.get(topic) else {
            return;
        };
        let rest: Arc<[Arc<Inbox>]> = old.iter().filter(|i| i.link != link).cloned().collect();
        if rest.is_empty() {
            self.topics.remove(topic);
            self.patterns.remove(topic);
        } else {
            self.topics.insert(topic.to_owned(), rest);
        }
    }
}

/// One competing consumer of the work queue. Each command runs in its own task so that a panicking
/// handler is caught (as a `JoinError`) instead of killing the worker.
/// Completions ([`AppHandler::start`]) a worker keeps running before it takes its next job.
const WORKER_PENDING: usize = 256;

/// What a finished (or failed to start) command tells the worker.
struct Finished {
    prefix: Arc<str>,
    destination: String,
    session: String,
    outcome: Result<Result<(), crate::error::HandlerError>, tokio::task::JoinError>,
}

async fn worker(id: usize, mut rx: mpsc::Receiver<Job>, counters: Arc<Counters>) {
    // A shard's commands are started one after another, in order; what a handler leaves for
    // later runs here concurrently, at most WORKER_PENDING at a time.
    let mut pending: tokio::task::JoinSet<Finished> = tokio::task::JoinSet::new();
    loop {
        while pending.len() >= WORKER_PENDING {
            if let Some(done) = pending.join_next().await {
                account(id, &counters, done);
            }
        }
        let job = tokio::select! {
            biased;
            Some(done) = pending.join_next(), if !pending.is_empty() => {
                account(id, &counters, done);
                continue;
            }
            job = rx.recv() => job,
        };
        let Some(Job {
            prefix,
            handler,
            cmd,
        }) = job
        else {
            while let Some(done) = pending.join_next().await {
                account(id, &counters, done);
            }
            debug!(worker = id, "work queue closed; worker stops");
            return;
        };
        let destination = cmd.destination.clone();
        let session = cmd.session.clone();
        let started = tokio::spawn(async move { handler.start(cmd).await }).await;
        let outcome = match started {
            Ok(Ok(completion)) => {
                pending.spawn(async move {
                    let outcome = tokio::spawn(completion).await;
                    Finished {
                        prefix,
                        destination,
                        session,
                        outcome,
                    }
                });
                continue;
            }
            Ok(Err(err)) => Ok(Err(err)),
            Err(join) => Err(join),
        };
        // Refused at start, or `start` itself panicked or was cancelled.
        let cancelled = matches!(&outcome, Err(join) if !join.is_panic());
        account(
            id,
            &counters,
            Ok(Finished {
                prefix,
                destination,
                session,
                outcome,
            }),
        );
        if cancelled {
            return;
        }
    }
}

/// Counts and logs one command's outcome.
fn account(id: usize, counters: &Counters, done: Result<Finished, tokio::task::JoinError>) {
    let Ok(Finished {
        prefix,
        destination,
        session,
        outcome,
    }) = done
    else {
        // The completion's wrapper itself was cancelled: the runtime is shutting down.
        bump(&counters.commands_failed, 1);
        return;
    };
    match outcome {
        Ok(Ok(())) => bump(&counters.commands_handled, 1),
        Ok(Err(err)) => {
            bump(&counters.commands_failed, 1);
            warn!(worker = id, %prefix, %destination, %session, error = %err, "application handler failed");
        }
        Err(join) if join.is_panic() => {
            bump(&counters.commands_failed, 1);
            bump(&counters.commands_panicked, 1);
            error!(worker = id, %prefix, %destination, %session, "application handler panicked");
        }
        Err(_) => {
            // Cancelled: the runtime is shutting down.
            bump(&counters.commands_failed, 1);
            debug!(worker = id, %destination, "application handler cancelled");
        }
    }
}

#[async_trait]
impl BusBackend for InProcessBus {
    async fn open_node(&self, node: NodeId) -> Result<NodeLink, BusError> {
        let shared = &self.shared;
        let (tx, rx) = mpsc::channel(shared.inbox_capacity);
        let link = shared.next_link.fetch_add(1, Ordering::Relaxed);
        {
            let mut routes = write(&shared.routes);
            if routes.nodes.contains_key(&node) {
                return Err(BusError::NodeInUse(node.to_string()));
            }
            let inbox = Arc::new(Inbox {
                node: node.clone(),
                link,
                tx,
            });
            routes.nodes.insert(
                node.clone(),
                NodeState {
                    inbox,
                    topics: HashSet::new(),
                },
            );
        }
        debug!(%node, "node attached");
        let control = InProcessNode {
            shared: Arc::downgrade(shared),
            node: node.clone(),
            link,
        };
        Ok(NodeLink::new(node, rx, Box::new(control)))
    }

    async fn publish(&self, target: Target, envelope: Envelope) -> Result<(), BusError> {
        let shared = &self.shared;
        let counters = &shared.counters;
        let envelope = Arc::new(envelope);
        match &target {
            Target::Topic(topic) => {
                validate_topic(topic)?;
                let bound = read(&shared.routes).inboxes_for(topic);
                match bound {
                    Some(inboxes) => shared.deliver(&target, envelope, &inboxes).await,
                    None => bump(&counters.unrouted, 1),
                }
            }
            Target::User { user, .. } => {
                let nodes = shared.registry.nodes_of(user).await?;
                if nodes.is_empty() {
                    bump(&counters.no_session, 1);
                } else {
                    let inboxes: Vec<Arc<Inbox>> = {
                        let routes = read(&shared.routes);
                        nodes
                            .iter()
                            .filter_map(|node| {
                                let inbox = routes.nodes.get(node).map(|s| Arc::clone(&s.inbox));
                                if inbox.is_none() {
                                    debug!(%node, %user, "registry names a node not attached to this bus; delivery dropped");
                                    bump(&counters.dropped, 1);
                                }
                                inbox
                            })
                            .collect()
                    };
                    shared.deliver(&target, envelope, &inboxes).await;
                }
            }
        }
        bump(&counters.published, 1);
        Ok(())
    }

    async fn submit(&self, cmd: AppCommand) -> Result<(), BusError> {
        let shared = &self.shared;
        let Some((prefix, handler)) = shared.resolve(&cmd.destination) else {
            bump(&shared.counters.commands_unrouted, 1);
            return Err(BusError::NoRoute(cmd.destination));
        };
        shared.ensure_workers()?;
        let shard = {
            use std::hash::BuildHasher;
            (shared.shard_hasher.hash_one(&cmd.session) as usize) % shared.work_tx.len()
        };
        shared.work_tx[shard]
            .send(Job {
                prefix,
                handler,
                cmd,
            })
            .await
            .map_err(|_| BusError::Closed)?;
        bump(&shared.counters.commands_submitted, 1);
        Ok(())
    }

    async fn enqueue(
        &self,
        queue: &str,
        envelope: Envelope,
        _persistent: bool,
    ) -> Result<(), BusError> {
        self.shared.queues.enqueue(queue, envelope)?;
        bump(&self.shared.counters.published, 1);
        Ok(())
    }

    async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<crate::queues::QueueConsumer, BusError> {
        self.shared.queues.consume(queue, prefetch)
    }

    fn register_handler(&self, prefix: &str, handler: Arc<dyn AppHandler>) {
        let mut handlers = write(&self.shared.handlers);
        match handlers.iter_mut().find(|(p, _)| &**p == prefix) {
            Some(slot) => slot.1 = handler,
            None => {
                handlers.push((Arc::from(prefix), handler));
                handlers.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
            }
        }
    }

    fn health(&self) -> Health {
        let shared = &self.shared;
        if shared.work_tx.iter().any(mpsc::Sender::is_closed) {
            return Health::Down("application command workers stopped".to_owned());
        }
        let full: Vec<String> = read(&shared.routes)
            .nodes
            .values()
            .filter(|state| state.inbox.tx.capacity() == 0)
            .map(|state| state.inbox.node.to_string())
            .collect();
        if !full.is_empty() {
            return Health::Degraded(format!(
                "inbox full, publishers waiting: {}",
                full.join(", ")
            ));
        }
        if shared.work_tx.iter().any(|tx| tx.capacity() == 0) {
            return Health::Degraded("application command queue full".to_owned());
        }
        Health::Up
    }

    fn metrics(&self) -> BusMetrics {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        BusMetrics {
            published: get(&c.published),
            delivered: get(&c.delivered),
            dropped: get(&c.dropped),
            unrouted: get(&c.unrouted),
            no_session: get(&c.no_session),
            commands_submitted: get(&c.commands_submitted),
            commands_unrouted: get(&c.commands_unrouted),
            commands_handled: get(&c.commands_handled),
            commands_failed: get(&c.commands_failed),
            commands_panicked: get(&c.commands_panicked),
            commands_retried: 0,
            broker_messages: 0,
            work_shards_owned: 0,
            work_rebalances: 0,
        }
    }
}

/// The control side of one node link.
struct InProcessNode {
    shared: Weak<Shared>,
    node: NodeId,
    link: u64,
}

impl fmt::Debug for InProcessNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessNode")
            .field("node", &self.node)
            .field("attached", &(self.shared.strong_count() > 0))
            .finish()
    }
}

impl InProcessNode {
    fn shared(&self) -> Result<Arc<Shared>, BusError> {
        self.shared.upgrade().ok_or(BusError::Closed)
    }
}

#[async_trait]
impl NodeControl for InProcessNode {
    async fn bind(&self, topic: &str) -> Result<(), BusError> {
        self.shared()?.bind(&self.node, self.link, topic)
    }

    async fn unbind(&self, topic: &str) -> Result<(), BusError> {
        self.shared()?.unbind(&self.node, self.link, topic)
    }

    async fn close(&self) -> Result<(), BusError> {
        if let Some(shared) = self.shared.upgrade() {
            shared.detach(&self.node, self.link);
        }
        Ok(())
    }
}

impl Drop for InProcessNode {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.detach(&self.node, self.link);
        }
    }
}
