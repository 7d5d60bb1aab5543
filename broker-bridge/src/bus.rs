//! The bus API, independent of the implementation behind it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::amqp::{AmqpBus, AmqpConfig};
use crate::error::{BusError, HandlerError};
use crate::in_process::{InProcessBus, InProcessConfig};
use crate::model::{AppCommand, Delivery, Envelope, NodeId, Target};
use crate::queues::QueueConsumer;
use crate::registry::Registry;

/// Handles application commands whose destination starts with the prefix it was registered under.
#[async_trait]
pub trait AppHandler: Send + Sync + 'static {
    /// Handles one command. An error is logged and counted; it never stops the workers.
    async fn handle(&self, cmd: AppCommand) -> Result<(), HandlerError>;

    /// Starts handling one command and returns what is left of it, for workers that overlap the
    /// commands of one session: the part that must happen in the session's order (queueing the
    /// command, say) runs before this returns, and the worker may start the session's next
    /// command while the returned [`Completion`] is still running. Its result is logged and
    /// counted like [`handle`](AppHandler::handle)'s.
    ///
    /// The in-process bus's workers call this; the AMQP consumers call `handle`, because they
    /// acknowledge a command only once it is handled. The default runs `handle` to the end, so a
    /// handler that does not override it keeps one command of a session at a time.
    async fn start(&self, cmd: AppCommand) -> Result<Completion, HandlerError> {
        self.handle(cmd).await?;
        Ok(Box::pin(std::future::ready(Ok(()))))
    }
}

/// The rest of a command started with [`AppHandler::start`].
pub type Completion = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'static>>;

/// Wraps an async closure as an [`AppHandler`].
///
/// ```
/// use broker_bridge::{handler_fn, AppCommand, HandlerError};
/// let handler = handler_fn(|cmd: AppCommand| async move {
///     if cmd.body.is_empty() {
///         return Err(HandlerError::Rejected("empty body".into()));
///     }
///     Ok(())
/// });
/// # drop(handler);
/// ```
pub fn handler_fn<F, Fut>(f: F) -> Arc<dyn AppHandler>
where
    F: Fn(AppCommand) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    Arc::new(FnHandler(f))
}

struct FnHandler<F>(F);

#[async_trait]
impl<F, Fut> AppHandler for FnHandler<F>
where
    F: Fn(AppCommand) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    async fn handle(&self, cmd: AppCommand) -> Result<(), HandlerError> {
        (self.0)(cmd).await
    }
}

/// Coarse health of the bus, for readiness probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Working normally.
    Up,
    /// Working, but something needs attention (e.g. a node inbox is full and publishers are waiting).
    Degraded(String),
    /// Not working.
    Down(String),
}

/// A snapshot of the bus counters (monotonic since the bus was created).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusMetrics {
    /// `publish` calls that resolved `Ok`.
    pub published: u64,
    /// Deliveries enqueued to node inboxes (one publish to two nodes counts two).
    pub delivered: u64,
    /// Deliveries lost because the target node detached, or was listed by the registry but is not
    /// attached to this bus.
    pub dropped: u64,
    /// Topic publishes that no node had bound (normal: nobody is listening).
    pub unrouted: u64,
    /// User publishes for a user without any session (normal: the producer persisted it anyway).
    pub no_session: u64,
    /// Commands accepted by `submit`.
    pub commands_submitted: u64,
    /// Commands refused by `submit` with [`BusError::NoRoute`].
    pub commands_unrouted: u64,
    /// Commands whose handler returned `Ok`.
    pub commands_handled: u64,
    /// Commands whose handler returned an error or panicked.
    pub commands_failed: u64,
    /// Commands whose handler panicked (included in `commands_failed`).
    pub commands_panicked: u64,
    /// Retries of commands whose handler failed with `Transient` (a dependency such as the
    /// database was unreachable; RabbitMQ only, in-process: always 0).
    pub commands_retried: u64,
    /// Messages sent to the broker for publishes and commands (RabbitMQ: publishes to one route
    /// that wait at the same moment share one message, so under load this grows far slower than
    /// `published + commands_submitted`; in-process: always 0).
    pub broker_messages: u64,
    /// Command shards this process consumes now (RabbitMQ: its share of the shards among the
    /// live command workers; 0 in a process without handlers, and in-process).
    pub work_shards_owned: u64,
    /// Times this process's set of command shards changed (a worker joined or left, or this
    /// process started); RabbitMQ only.
    pub work_rebalances: u64,
}

/// An implementation of the bus. Private so that implementations live in this crate.
/// What [`Bus::on_shards_gained`] runs: a future made anew for each gain.
pub type ShardsGained =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

#[async_trait]
pub(crate) trait BusBackend: Send + Sync + fmt::Debug + 'static {
    async fn open_node(&self, node: NodeId) -> Result<NodeLink, BusError>;
    async fn publish(&self, target: Target, envelope: Envelope) -> Result<(), BusError>;
    async fn submit(&self, cmd: AppCommand) -> Result<(), BusError>;
    fn register_handler(&self, prefix: &str, handler: Arc<dyn AppHandler>);
    /// Sets what runs before this process starts consuming command shards it gained (default:
    /// nothing; the in-process bus has no shards to gain).
    fn on_shards_gained(&self, _hook: ShardsGained) {}
    fn health(&self) -> Health;
    fn metrics(&self) -> BusMetrics;
    /// Whether a command submitted now would be taken without waiting for the broker.
    fn accepts_commands_now(&self) -> bool {
        true
    }
    /// Detaches every node of this process and stops the bus (default: nothing to do).
    async fn shutdown(&self) {}
    /// Appends a message to a point-to-point queue.
    async fn enqueue(
        &self,
        queue: &str,
        envelope: Envelope,
        persistent: bool,
    ) -> Result<(), BusError>;
    /// Starts a consumer of a point-to-point queue.
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<QueueConsumer, BusError>;
}

/// A node's control channel to its implementation: topic interest and detaching.
///
/// Dropping it must detach the node (remove its bindings); `close` does the same and waits for it.
#[async_trait]
pub(crate) trait NodeControl: Send + Sync + fmt::Debug + 'static {
    async fn bind(&self, topic: &str) -> Result<(), BusError>;
    async fn unbind(&self, topic: &str) -> Result<(), BusError>;
    async fn close(&self) -> Result<(), BusError>;
}

/// The message bus. Cheap to clone; all clones share one bus.
#[derive(Clone)]
pub struct Bus {
    backend: Arc<dyn BusBackend>,
    registry: Registry,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("backend", &self.backend)
            .field("registry", &self.registry)
            .finish()
    }
}

impl Bus {
    /// The in-process bus, routing user deliveries through `registry`.
    ///
    /// Needs no runtime to be created; the command workers start on the Tokio runtime of the first
    /// [`Bus::submit`].
    pub fn in_process(registry: Registry, config: InProcessConfig) -> Bus {
        Bus {
            backend: Arc::new(InProcessBus::new(registry.clone(), config)),
            registry,
        }
    }

    /// The RabbitMQ bus (scale-out), routing user deliveries through `registry` (normally
    /// [`Registry::redis`]). Connects before returning (fails with [`BusError::Unavailable`] if the
    /// broker cannot be reached) and then stays connected in the background, reconnecting with
    /// backoff. Needs a Tokio runtime. See [`AmqpConfig`] and the crate docs for the topology and the
    /// guarantees.
    ///
    /// A process that only publishes and handles commands (the social service) never opens a node;
    /// [`Bus::register_handler`] makes it consume the command queues.
    pub async fn amqp(registry: Registry, config: AmqpConfig) -> Result<Bus, BusError> {
        Ok(Bus {
            backend: Arc::new(AmqpBus::connect(registry.clone(), config).await?),
            registry,
        })
    }

    /// A gateway node attaches. Its inbox receives topic deliveries for the topics it has bound and user
    /// deliveries for users with sessions registered (in [`Bus::registry`]) on this node.
    ///
    /// Fails with [`BusError::NodeInUse`] while another link with the same id is attached.
    pub async fn open_node(&self, node: NodeId) -> Result<NodeLink, BusError> {
        self.backend.open_node(node).await
    }

    /// Publishes a message; resolves once the bus has accepted it.
    ///
    /// In-process, "accepted" means enqueued in the inbox of every node the target routes to. If an
    /// inbox is full this **waits** for the node to make room (backpressure) rather than dropping.
    /// A topic nobody has bound, or a user without sessions, is not an error (see [`BusMetrics`]).
    pub async fn publish(&self, target: Target, envelope: Envelope) -> Result<(), BusError> {
        self.backend.publish(target, envelope).await
    }

    /// Puts an application command on the work queue; resolves once accepted (waits while the queue is
    /// full). In-process, fails with [`BusError::NoRoute`] if no handler prefix matches.
    pub async fn submit(&self, cmd: AppCommand) -> Result<(), BusError> {
        self.backend.submit(cmd).await
    }

    /// Registers `handler` for destinations starting with `prefix` (e.g. `"/app/"`); the longest
    /// matching prefix wins, and registering a prefix again replaces its handler. Several workers
    /// consume the queue concurrently ([`InProcessConfig::workers`]), so handlers must tolerate
    /// concurrent calls.
    pub fn register_handler(&self, prefix: &str, handler: Arc<dyn AppHandler>) {
        self.backend.register_handler(prefix, handler);
    }

    /// Runs `hook` (awaited, up to 10 s) each time this process is about to start consuming
    /// command shards it did not have: another worker joined, left or died. The chat service
    /// publishes what a dead process committed and left unpublished here, so a room's earlier
    /// messages are broadcast before the first one its new owner writes. RabbitMQ only.
    pub fn on_shards_gained(&self, hook: ShardsGained) {
        self.backend.on_shards_gained(hook);
    }

    /// Appends a message to the point-to-point queue `queue` (created on first use; name 1-200
    /// bytes of `[A-Za-z0-9._-]`); resolves once the bus owns it. A queue holding its maximum of
    /// ready messages refuses with [`BusError::QueueFull`]. `persistent` asks for a message that
    /// survives a broker restart (RabbitMQ; the in-process bus keeps nothing across restarts).
    pub async fn enqueue(
        &self,
        queue: &str,
        envelope: Envelope,
        persistent: bool,
    ) -> Result<(), BusError> {
        self.backend.enqueue(queue, envelope, persistent).await
    }

    /// Starts a consumer of the point-to-point queue `queue`: the queue's messages are shared
    /// round robin among its consumers (across every node, on RabbitMQ), each holding at most
    /// `prefetch` unacknowledged. See [`crate::queues`].
    pub async fn consume(&self, queue: &str, prefetch: u16) -> Result<QueueConsumer, BusError> {
        self.backend.consume(queue, prefetch).await
    }

    /// Whether [`Bus::submit`] would be taken now rather than wait for the broker: false while
    /// the RabbitMQ connection is down or the broker blocks publishing (a submit would wait up to
    /// `AmqpConfig::wait_for_connection` and then fail). Always true in-process.
    pub fn accepts_commands_now(&self) -> bool {
        self.backend.accepts_commands_now()
    }

    /// Current health.
    pub fn health(&self) -> Health {
        self.backend.health()
    }

    /// The session registry this bus routes user deliveries with.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> BusMetrics {
        self.backend.metrics()
    }

    /// Graceful stop for a process that is about to exit: RabbitMQ bus: detaches every node this
    /// process attached (deletes its queue, releases its lease and removes its remaining sessions
    /// from the registry) and closes the connection; afterwards operations fail with
    /// [`BusError::Closed`]. In-process bus: does nothing (the process's memory goes with it).
    pub async fn shutdown(&self) {
        self.backend.shutdown().await;
    }
}

/// A gateway node's attachment to the bus: its inbox and its topic interest.
///
/// Dropping it detaches the node: its bindings are removed and deliveries to it stop. (Its sessions in
/// the registry are not touched; unregister them, or sweep with [`Registry::remove_node`].)
pub struct NodeLink {
    node: NodeId,
    inbox: mpsc::Receiver<Delivery>,
    control: Box<dyn NodeControl>,
}

impl fmt::Debug for NodeLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeLink")
            .field("node", &self.node)
            .field("queued", &self.inbox.len())
            .field("control", &self.control)
            .finish()
    }
}

impl NodeLink {
    pub(crate) fn new(
        node: NodeId,
        inbox: mpsc::Receiver<Delivery>,
        control: Box<dyn NodeControl>,
    ) -> Self {
        Self {
            node,
            inbox,
            control,
        }
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The next delivery; `None` once the bus is gone (all [`Bus`] clones dropped) and the inbox is
    /// drained.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.inbox.recv().await
    }

    /// The next delivery if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.inbox.try_recv().ok()
    }

    /// Waits for at least one delivery, then moves up to `limit` queued deliveries into `buffer`;
    /// returns how many were added (0 only when the bus is gone or `limit` is 0).
    pub async fn recv_many(&mut self, buffer: &mut Vec<Delivery>, limit: usize) -> usize {
        self.inbox.recv_many(buffer, limit).await
    }

    /// Starts receiving deliveries for `topic` (name without `"/topic/"`). Idempotent. Called by the
    /// gateway hub on the first local subscriber of the topic.
    pub async fn bind(&self, topic: &str) -> Result<(), BusError> {
        self.control.bind(topic).await
    }

    /// Stops receiving deliveries for `topic`. Idempotent. Called by the gateway hub after the last
    /// local subscriber of the topic leaves. Deliveries already in the inbox stay there.
    pub async fn unbind(&self, topic: &str) -> Result<(), BusError> {
        self.control.unbind(topic).await
    }

    /// Detaches the node, waiting until the implementation has done so (dropping the link detaches
    /// too, without waiting).
    pub async fn close(self) -> Result<(), BusError> {
        self.control.close().await
    }
}

impl NodeLink {
    /// Splits the link into its topic-interest half (shareable: the hub binds and unbinds from many
    /// tasks) and its inbox (owned by the one task that pumps deliveries). The node stays attached until
    /// the interest half is dropped or closed.
    pub fn split(self) -> (NodeInterest, NodeInbox) {
        (
            NodeInterest {
                node: self.node.clone(),
                control: Arc::from(self.control),
            },
            NodeInbox {
                node: self.node,
                inbox: self.inbox,
            },
        )
    }
}

/// The topic-interest half of a [`NodeLink`].
#[derive(Debug, Clone)]
pub struct NodeInterest {
    node: NodeId,
    control: Arc<dyn NodeControl>,
}

impl NodeInterest {
    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// See [`NodeLink::bind`].
    pub async fn bind(&self, topic: &str) -> Result<(), BusError> {
        self.control.bind(topic).await
    }

    /// See [`NodeLink::unbind`].
    pub async fn unbind(&self, topic: &str) -> Result<(), BusError> {
        self.control.unbind(topic).await
    }

    /// See [`NodeLink::close`].
    pub async fn close(&self) -> Result<(), BusError> {
        self.control.close().await
    }
}

/// The inbox half of a [`NodeLink`].
#[derive(Debug)]
pub struct NodeInbox {
    node: NodeId,
    inbox: mpsc::Receiver<Delivery>,
}

impl NodeInbox {
    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// See [`NodeLink::recv`].
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.inbox.recv().await
    }

    /// See [`NodeLink::recv_many`].
    pub async fn recv_many(&mut self, buffer: &mut Vec<Delivery>, limit: usize) -> usize {
        self.inbox.recv_many(buffer, limit).await
    }
}

/// Checks a topic name: not empty, at most 255 bytes, not starting with `/` (pass `"chat.5"`, not
/// `"/topic/chat.5"`), and free of `*` and `#` (wildcards in the broker implementation). Publishes
/// name topics; bindings may also be patterns ([`validate_binding`]).
pub(crate) fn validate_topic(topic: &str) -> Result<(), BusError> {
    let ok = !topic.is_empty()
        && topic.len() <= 255
        && !topic.starts_with('/')
        && !topic.contains(['*', '#']);
    if ok {
        Ok(())
    } else {
        Err(BusError::InvalidTopic(topic.to_owned()))
    }
}

/// Checks what a node may bind: a topic name ([`validate_topic`]) or a pattern whose `.`-separated
/// words are each `*` (exactly one word), `#` (zero or more words) or free of both, as RabbitMQ's
/// topic exchange reads binding keys.
pub(crate) fn validate_binding(binding: &str) -> Result<(), BusError> {
    if !is_pattern(binding) {
        return validate_topic(binding);
    }
    let ok = binding.len() <= 255
        && !binding.starts_with('/')
        && binding
            .split('.')
            .all(|w| w == "*" || w == "#" || !w.contains(['*', '#']));
    if ok {
        Ok(())
    } else {
        Err(BusError::InvalidTopic(binding.to_owned()))
    }
}

/// Whether a binding is a wildcard pattern (contains `*` or `#`).
pub fn is_pattern(binding: &str) -> bool {
    binding.contains(['*', '#'])
}

/// Whether `topic` matches the binding `pattern` with RabbitMQ's topic-exchange rules: words are
/// separated by `.`, `*` matches exactly one word, `#` zero or more. A pattern without wildcards
/// matches only itself.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    fn go(p: &[&str], t: &[&str]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((&"#", rest)) => (0..=t.len()).any(|skip| go(rest, &t[skip..])),
            Some((&w, rest)) => match t.split_first() {
                Some((&tw, trest)) => (w == "*" || w == tw) && go(rest, trest),
                None => false,
            },
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let t: Vec<&str> = topic.split('.').collect();
    go(&p, &t)
}

#[cfg(test)]
mod pattern_tests {
    use super::*;

    #[test]
    fn topic_patterns_follow_the_topic_exchange() {
        assert!(topic_matches("a.*", "a.b"));
        assert!(!topic_matches("a.*", "a.b.c"));
        assert!(!topic_matches("a.*", "a"));
        assert!(topic_matches("a.#", "a"));
        assert!(topic_matches("a.#", "a.b.c"));
        assert!(topic_matches("#", "x.y"));
        assert!(topic_matches("*.b.#", "a.b"));
        assert!(!topic_matches("*.b.#", "a.c.b"));
        assert!(topic_matches("a.b", "a.b"));
        assert!(!topic_matches("a.b", "a.bc"));
        assert!(validate_binding("demo.*.x").is_ok());
        assert!(validate_binding("demo.#").is_ok());
        assert!(validate_binding("demo.a*").is_err());
        assert!(validate_binding("chat.5").is_ok());
    }
}
