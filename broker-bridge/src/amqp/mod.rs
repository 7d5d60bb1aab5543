//! The RabbitMQ bus (scale-out): AMQP 0-9-1 through lapin, publisher confirms everywhere.
//!
//! # Topology (names under [`AmqpConfig::prefix`], `instar` by default)
//!
//! | name | kind | what |
//! |---|---|---|
//! | `{p}.topic` | topic exchange, durable | topic messages, routing key = topic name |
//! | `{p}.node` | direct exchange, durable | user deliveries, routing key = node id |
//! | `{p}.work` | direct exchange, durable | application commands, routing key = shard number |
//! | `{p}.node.{node}` | queue, one per gateway node | bound to `{p}.node` with the node id, and to `{p}.topic` with every topic the node's sessions subscribe to (the hub counts references: bind on the first local subscriber, unbind after the last) |
//! | `{p}.work.{0..K}` | durable queues, single active consumer | the command shards |
//! | `{p}.q.{name}` | durable queue per client queue destination (`/queue/{name}`), `x-max-length` + `reject-publish` | point-to-point queues shared by every node (see `queues.rs`) |
//!
//! # Guarantees
//!
//! * `publish` and `submit` resolve `Ok` only after the broker **confirmed** the message (publisher
//!   confirms); a broker outage, a nack, or no confirm within [`AmqpConfig::confirm_timeout`] is
//!   [`BusError::Unavailable`]. While the connection is down or blocked (`connection.blocked`),
//!   they wait up to [`AmqpConfig::wait_for_connection`] before failing.
//! * Node queues are durable by default ([`AmqpConfig::durable_node_queues`]) and deliveries are
//!   persistent, so a confirmed delivery survives a broker restart; the queue expires
//!   ([`AmqpConfig::node_queue_expires`]) once its node is gone. Deliveries are acknowledged after
//!   they are in the node's inbox, so a delivery in flight when the connection drops comes again
//!   (at-least-once: a duplicate is possible around a reconnect, a loss is not).
//! * Commands are persistent in durable queues, and acknowledged after their handler finished.
//! * **Per-room and per-session order.** A command goes to shard `fnv1a(key) % K`, where the key
//!   is its [`AppCommand::order_key`]: the room for chat (the gateway stamps
//!   [`crate::ORDER_KEY_HEADER`]), else the session. Each shard queue has
//!   `x-single-active-consumer`, so one process at a time consumes it: a room's commands are all
//!   handled by one process, which keeps its broadcasts in message-id order (the chat service
//!   orders a room's writes and pushes inside a process). That process runs the commands of one
//!   session one after the other, in queue order (different sessions of the shard run
//!   concurrently, up to [`AmqpConfig::work_prefetch`]).
//! * **Shards spread over the workers.** A process with handlers keeps a lease among the command
//!   workers in the registry and consumes only its share of the shards ([`assign_shards`]:
//!   rendezvous hashing with bounded load over the live workers), handing a shard over by
//!   draining it and closing its channel ([`shard_consumer`]); see `balance_shards`.
//! * **Handler errors.** `Ok`: ack. `Rejected`/other errors/panics: logged, counted, ack (dropped).
//!   `Transient`: retried in place after a delay doubling from [`AmqpConfig::retry_delay`] (at
//!   most 5 s) for up to [`AmqpConfig::handler_retry_for`] (the session's later commands wait:
//!   order first; the command stays unacknowledged in its durable queue meanwhile), then
//!   logged, counted and dropped. If the process dies meanwhile, the broker hands the unacknowledged
//!   command to the next consumer.
//! * **Reconnect.** On connection loss the bus reconnects with exponential backoff
//!   ([`AmqpConfig::reconnect_min`] .. [`AmqpConfig::reconnect_max`]), declares the topology again,
//!   re-declares every attached node's queue and binds every topic its hub currently wants (and
//!   unbinds those it gave up during the outage), and restarts the consumers. `bind`/`unbind`
//!   called during an outage are recorded and applied on reconnect.

mod codec;
mod queues;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::future::{FutureExt, join_all};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Event, ExchangeKind};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::bus::{
    AppHandler, BusBackend, BusMetrics, Health, NodeControl, NodeLink, validate_topic,
};
use crate::error::{BusError, HandlerError};
use crate::model::{AppCommand, Delivery, Envelope, NodeId, Target};
use crate::registry::{NodeLease, Registry};

/// Settings of the RabbitMQ bus. `Default` suits a local broker; every field is public.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpConfig {
    /// AMQP URL, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f` (plain TCP; no TLS is compiled in).
    pub url: String,
    /// Prefix of every exchange and queue name. Default `instar`. One per deployment (and test).
    pub prefix: String,
    /// Unacknowledged deliveries per node-queue consumer. Default 1024.
    pub node_prefetch: u16,
    /// Unacknowledged commands per shard consumer (commands of different sessions handled at once).
    /// Default 64.
    pub work_prefetch: u16,
    /// Number of command shards (queues). All processes of a deployment must agree. Default 8.
    pub work_shards: u16,
    /// Lease of a command worker (a process with handlers) in the registry: the live workers
    /// share the shards out among themselves, and a worker that stops refreshing its lease (it
    /// died) loses its shards to the others this long after its last refresh. Refreshed every
    /// quarter of it. Default 3 s.
    pub worker_lease_ttl: Duration,
    /// Channels used for publishing (each route's lane uses one, chosen by its routing key).
    /// Default 4.
    pub publish_channels: usize,
    /// Capacity of each node's inbox, in deliveries. Default 4096.
    pub node_inbox_capacity: usize,
    /// Durable node queues with persistent deliveries (survive a broker restart). When false, node
    /// queues are exclusive and deliveries transient (faster; a broker restart loses the deliveries
    /// queued at that moment). Default true.
    pub durable_node_queues: bool,
    /// A durable node queue without consumer is deleted by the broker after this long. Default 60 s.
    pub node_queue_expires: Duration,
    /// How long a publish waits for its confirm. Default 10 s.
    pub confirm_timeout: Duration,
    /// How long `publish`/`submit`/`open_node` wait for a (re)connection or an unblock. Default 5 s.
    pub wait_for_connection: Duration,
    /// First reconnect delay; doubled after each failure up to `reconnect_max`. Default 100 ms.
    pub reconnect_min: Duration,
    /// Longest reconnect delay. Default 1 s: after a broker restart, the bus is back at most about
    /// a second after the broker is (it was 5 s, which added up to 3 s of outage after the broker
    /// came back), at the price of one connection attempt a second while it is down.
    pub reconnect_max: Duration,
    /// How long a command whose handler fails with `Transient` (its database unreachable, say) is
    /// retried before it is dropped with an error. Default 10 minutes: an accepted chat message
    /// waits out a database outage or restart instead of being lost (it was 5 retries, about a
    /// minute with the pool's 10 s acquire timeout).
    pub handler_retry_for: Duration,
    /// Delay before the first retry, doubled each time (at most 5 s). Default 100 ms.
    pub retry_delay: Duration,
    /// AMQP heart-beat in seconds (0: the broker's proposal). Default 10.
    pub heartbeat_secs: u16,
    /// Bounds of the point-to-point queues (`{p}.q.{name}`); every process of a deployment must
    /// use the same `max_depth`.
    pub queues: crate::QueueLimits,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            prefix: "instar".to_owned(),
            node_prefetch: 1024,
            work_prefetch: 64,
            work_shards: 8,
            worker_lease_ttl: Duration::from_secs(3),
            publish_channels: 4,
            node_inbox_capacity: 4096,
            durable_node_queues: true,
            node_queue_expires: Duration::from_secs(60),
            confirm_timeout: Duration::from_secs(10),
            wait_for_connection: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(1),
            handler_retry_for: Duration::from_secs(600),
            retry_delay: Duration::from_millis(100),
            heartbeat_secs: 10,
            queues: crate::QueueLimits::default(),
        }
    }
}

impl AmqpConfig {
    /// The default settings with another URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Sets the name prefix.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Deletes this prefix's exchanges and command queues (with any commands still in them) from
    /// the broker: for tests and for decommissioning a deployment. Node queues are deleted by their
    /// nodes (or expire).
    pub async fn delete_topology(&self) -> Result<(), BusError> {
        let properties = ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio::current());
        let conn = Connection::connect(&self.url, properties)
            .await
            .map_err(|e| amqp_err(&e))?;
        let result = async {
            let channel = conn.create_channel().await?;
            for shard in 0..self.shards() {
                channel
                    .queue_delete(&self.work_queue(shard), QueueDeleteOptions::default())
                    .await?;
            }
            for exchange in [
                self.topic_exchange(),
                self.node_exchange(),
                self.work_exchange(),
            ] {
                channel
                    .exchange_delete(&exchange, ExchangeDeleteOptions::default())
                    .await?;
            }
            Ok::<_, lapin::Error>(())
        }
        .await;
        let _ = conn.close(200, "topology deleted").await;
        result.map_err(|e| amqp_err(&e))
    }

    /// Whether the broker has the queue of gateway node `node` (`{p}.node.{node}`): for tests and
    /// operators checking that a dead node's queue is gone.
    pub async fn node_queue_exists(&self, node: &str) -> Result<bool, BusError> {
        let properties = ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio::current());
        let conn = Connection::connect(&self.url, properties)
            .await
            .map_err(|e| amqp_err(&e))?;
        let result = async {
            let channel = conn.create_channel().await?;
            let declared = channel
                .queue_declare(
                    &self.node_queue(node),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            Ok::<_, lapin::Error>(declared.is_ok())
        }
        .await;
        let _ = conn.close(200, "queue looked up").await;
        result.map_err(|e| amqp_err(&e))
    }

    /// Deletes point-to-point queues (`/queue/<name>` destinations, `{p}.q.<name>`) with what they
    /// hold: for tests and for retiring a destination. Missing queues are not an error.
    pub async fn delete_queues(&self, names: &[&str]) -> Result<(), BusError> {
        let properties = ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio::current());
        let conn = Connection::connect(&self.url, properties)
            .await
            .map_err(|e| amqp_err(&e))?;
        let result = async {
            let channel = conn.create_channel().await?;
            for name in names {
                channel
                    .queue_delete(
                        &format!("{}.q.{name}", self.prefix),
                        QueueDeleteOptions::default(),
                    )
                    .await?;
            }
            Ok::<_, lapin::Error>(())
        }
        .await;
        let _ = conn.close(200, "queues deleted").await;
        result.map_err(|e| amqp_err(&e))
    }

    fn topic_exchange(&self) -> String {
        format!("{}.topic", self.prefix)
    }

    fn node_exchange(&self) -> String {
        format!("{}.node", self.prefix)
    }

    fn work_exchange(&self) -> String {
        format!("{}.work", self.prefix)
    }

    fn node_queue(&self, node: &str) -> String {
        format!("{}.node.{node}", self.prefix)
    }

    fn work_queue(&self, shard: u16) -> String {
        format!("{}.work.{shard}", self.prefix)
    }

    fn shards(&self) -> u16 {
        self.work_shards.max(1)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn amqp_err(e: &lapin::Error) -> BusError {
    BusError::Unavailable(format!("rabbitmq: {e}"))
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
    commands_retried: AtomicU64,
    broker_messages: AtomicU64,
    shards_owned: AtomicU64,
    rebalances: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

type Route = (Arc<str>, Arc<dyn AppHandler>);

/// One live connection and its channels.
struct Live {
    generation: u64,
    conn: Connection,
    publishers: Vec<Mutex<Channel>>,
    control: tokio::sync::Mutex<Channel>,
}

impl Live {
    fn connected(&self) -> bool {
        self.conn.status().connected()
    }

    /// Publishing channel `i` (modulo their number), replaced if the broker closed it.
    async fn publisher(&self, i: usize) -> Result<Channel, lapin::Error> {
        let i = i % self.publishers.len();
        let channel = lock(&self.publishers[i]).clone();
        if channel.status().connected() {
            return Ok(channel);
        }
        let fresh = self.conn.create_channel().await?;
        fresh
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *lock(&self.publishers[i]) = fresh.clone();
        Ok(fresh)
    }

    /// The channel for declarations and bindings, replaced if the broker closed it.
    async fn control(&self) -> Result<tokio::sync::MutexGuard<'_, Channel>, lapin::Error> {
        let mut guard = self.control.lock().await;
        if !guard.status().connected() {
            *guard = self.conn.create_channel().await?;
        }
        Ok(guard)
    }
}

/// Topic interest and consumer of one attached node.
struct NodeState {
    node: NodeId,
    link: u64,
    queue: String,
    tx: mpsc::Sender<Delivery>,
    setup: tokio::sync::Mutex<NodeSetup>,
    /// The node's registry lease, released on detach.
    lease: Mutex<Option<NodeLease>>,
}

#[derive(Default)]
struct NodeSetup {
    /// Generation of the connection the queue was last set up on (0: never).
    generation: u64,
    /// Topics the hub wants.
    desired: HashSet<String>,
    /// Topics bound on the broker (as far as we know).
    bound: HashSet<String>,
    consumer: Option<JoinHandle<()>>,
}

struct Shared {
    config: AmqpConfig,
    /// This process's name among the command workers (see [`balance_shards`]).
    worker_id: String,
    registry: Registry,
    live: watch::Sender<Option<Arc<Live>>>,
    blocked: watch::Sender<Option<String>>,
    last_error: Mutex<String>,
    nodes: Mutex<HashMap<NodeId, Arc<NodeState>>>,
    handlers: RwLock<Vec<Route>>,
    /// Run before consuming shards this process gained ([`Bus::on_shards_gained`](crate::Bus)).
    shards_gained: RwLock<Option<crate::bus::ShardsGained>>,
    /// Wakes the supervisor (handlers registered, bus closed).
    wake: Notify,
    closed: AtomicBool,
    /// Set by the supervisor once it has closed the connection for good.
    stopped: watch::Sender<bool>,
    next_link: AtomicU64,
    counters: Counters,
    /// Publishing lanes per route, by [`Lane`] kind (see [`Shared::publish_item`]).
    lanes: [Mutex<HashMap<String, mpsc::UnboundedSender<Pending>>>; 3],
    /// Point-to-point queues declared on the current connection.
    p2p: Mutex<queues::Declared>,
}

/// The three kinds of route a publish takes; each has its exchange, and its lanes by routing key.
#[derive(Debug, Clone, Copy)]
enum Lane {
    /// `{p}.topic`, routing key = topic name; not mandatory.
    Topic = 0,
    /// `{p}.node`, routing key = node id; mandatory.
    Node = 1,
    /// `{p}.work`, routing key = shard; mandatory, always persistent.
    Work = 2,
}

/// A lane with nothing to send for this long ends (a busy route keeps its lane).
const LANE_IDLE: Duration = Duration::from_secs(5);

/// A publish waiting in its lane, and where its outcome goes.
struct Pending {
    item: codec::BatchItem,
    done: oneshot::Sender<Result<bool, BusError>>,
}

/// The bus handle stored in [`crate::Bus`]; dropping the last one stops the bus.
pub(crate) struct AmqpBus {
    shared: Arc<Shared>,
}

impl fmt::Debug for AmqpBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpBus")
            .field("prefix", &self.shared.config.prefix)
            .field("connected", &self.shared.live.borrow().is_some())
            .field("nodes", &lock(&self.shared.nodes).len())
            .finish_non_exhaustive()
    }
}

impl Drop for AmqpBus {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

impl AmqpBus {
    /// Connects (failing if the first connection attempt fails) and starts the supervisor.
    pub(crate) async fn connect(registry: Registry, config: AmqpConfig) -> Result<Self, BusError> {
        let (live, _) = watch::channel(None);
        let (blocked, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            config,
            worker_id: format!(
                "{}-{:016x}",
                std::process::id(),
                crate::redis_registry::random_u64()
            ),
            registry,
            live,
            blocked,
            last_error: Mutex::new(String::from("not connected yet")),
            nodes: Mutex::new(HashMap::new()),
            handlers: RwLock::new(Vec::new()),
            shards_gained: RwLock::new(None),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            stopped: watch::channel(false).0,
            next_link: AtomicU64::new(1),
            counters: Counters::default(),
            lanes: Default::default(),
            p2p: Mutex::default(),
        });
        let first = Shared::connect(&shared, 1).await?;
        tokio::spawn(supervise(Arc::clone(&shared), first));
        Ok(Self { shared })
    }
}

impl Shared {
    fn set_error(&self, message: String) {
        *lock(&self.last_error) = message;
    }

    /// Opens a connection and declares the shared topology.
    async fn connect(
        self: &Arc<Self>,
        generation: u64,
    ) -> Result<(Arc<Live>, ConnEvents), BusError> {
        let config = &self.config;
        let mut url = config.url.clone();
        if config.heartbeat_secs > 0 && !url.contains("heartbeat=") {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("heartbeat={}", config.heartbeat_secs));
        }
        let properties = ConnectionProperties::default()
            .with_connection_name(
                format!("instar {} pid {}", config.prefix, std::process::id()).into(),
            )
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio::current());
        let conn = tokio::time::timeout(
            config.wait_for_connection,
            Connection::connect(&url, properties),
        )
        .await
        .map_err(|_| BusError::Unavailable("rabbitmq: connect timed out".to_owned()))?
        .map_err(|e| amqp_err(&e))?;
        let events = conn.events_listener();
        let result = async {
            let control = conn.create_channel().await?;
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            control
                .exchange_declare(
                    &config.topic_exchange(),
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await?;
            control
                .exchange_declare(
                    &config.node_exchange(),
                    ExchangeKind::Direct,
                    durable,
                    FieldTable::default(),
                )
                .await?;
            control
                .exchange_declare(
                    &config.work_exchange(),
                    ExchangeKind::Direct,
                    durable,
                    FieldTable::default(),
                )
                .await?;
            for shard in 0..config.shards() {
                let queue = config.work_queue(shard);
                control
                    .queue_declare(
                        &queue,
                        QueueDeclareOptions {
                            durable: true,
                            ..QueueDeclareOptions::default()
                        },
                        work_queue_args(),
                    )
                    .await?;
                control
                    .queue_bind(
                        &queue,
                        &config.work_exchange(),
                        &shard.to_string(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
            let mut publishers = Vec::new();
            for _ in 0..config.publish_channels.max(1) {
                let channel = conn.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                publishers.push(Mutex::new(channel));
            }
            Ok::<_, lapin::Error>((control, publishers))
        }
        .await;
        let (control, publishers) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = conn.close(320, "topology declaration failed").await;
                return Err(amqp_err(&e));
            }
        };
        Ok((
            Arc::new(Live {
                generation,
                conn,
                publishers,
                control: tokio::sync::Mutex::new(control),
            }),
            ConnEvents(Box::pin(events)),
        ))
    }

    fn current(&self) -> Option<Arc<Live>> {
        self.live.borrow().clone().filter(|l| l.connected())
    }

    fn unavailable(&self) -> BusError {
        BusError::Unavailable(format!(
            "not connected to RabbitMQ ({})",
            lock(&self.last_error)
        ))
    }

    /// The live connection, waiting for a reconnect until `deadline`.
    async fn wait_live(&self, deadline: Instant) -> Result<Arc<Live>, BusError> {
        let mut rx = self.live.subscribe();
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(BusError::Closed);
            }
            if let Some(live) = rx.borrow_and_update().clone().filter(|l| l.connected()) {
                return Ok(live);
            }
            let wait = tokio::time::timeout_at(deadline, rx.changed()).await;
            match wait {
                Ok(Ok(())) => {}
                // A dead connection the supervisor has not noticed yet: poll.
                Ok(Err(_)) => return Err(BusError::Closed),
                Err(_) => return Err(self.unavailable()),
            }
            if Instant::now() >= deadline {
                return Err(self.unavailable());
            }
        }
    }

    /// Waits while the broker blocks publishing (`connection.blocked`), until `deadline`.
    async fn wait_unblocked(&self, deadline: Instant) -> Result<(), BusError> {
        let mut rx = self.blocked.subscribe();
        loop {
            let reason = rx.borrow_and_update().clone();
            let Some(reason) = reason else {
                return Ok(());
            };
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(BusError::Unavailable(format!(
                    "RabbitMQ blocks publishing: {reason}"
                )));
            }
        }
    }

    /// Publishes one message on publishing channel `channel` (an index, taken modulo the number
    /// of channels: messages sent one after the other on one channel reach their queue in that
    /// order) and returns its confirm, to be awaited with [`Shared::await_confirm`]. Waits for the
    /// connection and retries a message that could not be sent, up to
    /// [`AmqpConfig::wait_for_connection`].
    async fn send(
        &self,
        channel: usize,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<lapin::publisher_confirm::PublisherConfirm, BusError> {
        let deadline = Instant::now() + self.config.wait_for_connection;
        loop {
            let live = self.wait_live(deadline).await?;
            self.wait_unblocked(deadline).await?;
            let channel = match live.publisher(channel).await {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "no publishing channel; waiting for the connection");
                    self.retry_pause(deadline, &e).await?;
                    continue;
                }
            };
            let options = BasicPublishOptions {
                mandatory,
                ..BasicPublishOptions::default()
            };
            match channel
                .basic_publish(exchange, routing_key, options, payload, properties.clone())
                .await
            {
                Ok(confirm) => return Ok(confirm),
                Err(e) => {
                    // Not sent: safe to try again on a fresh channel or connection.
                    debug!(error = %e, "publish not sent; retrying");
                    self.retry_pause(deadline, &e).await?;
                }
            }
        }
    }

    /// Waits for a confirm. With `mandatory`, `Ok(false)` means the broker returned the message
    /// unroutable; otherwise `Ok(true)` whether routed or not.
    async fn await_confirm(
        &self,
        confirm: lapin::publisher_confirm::PublisherConfirm,
    ) -> Result<bool, BusError> {
        match tokio::time::timeout(self.config.confirm_timeout, confirm).await {
            Ok(Ok(Confirmation::Ack(returned))) => Ok(returned.is_none()),
            Ok(Ok(Confirmation::NotRequested)) => Ok(true),
            Ok(Ok(Confirmation::Nack(_))) => Err(BusError::Unavailable(
                "rabbitmq refused the message (nack)".to_owned(),
            )),
            Ok(Err(e)) => Err(amqp_err(&e)),
            Err(_) => Err(BusError::Unavailable(
                "rabbitmq: no publisher confirm in time".to_owned(),
            )),
        }
    }

    /// Publishes `item` on `lane` with routing key `key` and waits for the broker's confirm
    /// (`Ok(false)`: a mandatory message came back unroutable).
    ///
    /// Every route has one lane task, with at most [`LANE_IN_FLIGHT`] messages waiting for their
    /// confirms: what callers queue on the route while all of them wait goes next as **one** AMQP
    /// message (a batch, up to [`codec::MAX_BATCH_ITEMS`] items or about
    /// [`codec::MAX_BATCH_BYTES`]), confirmed once for all of them. An idle route costs one
    /// confirm round trip, as before; a busy one sends far fewer, larger messages, which is what
    /// the broker's per-message work (routing, persistence, confirms, acks) scales with. Items of
    /// one route leave in the order they were queued.
    async fn publish_item(
        self: &Arc<Self>,
        lane: Lane,
        key: &str,
        item: codec::BatchItem,
    ) -> Result<bool, BusError> {
        let (done, outcome) = oneshot::channel();
        let mut pending = Pending { item, done };
        loop {
            let sender = {
                let mut lanes = lock(&self.lanes[lane as usize]);
                match lanes.get(key) {
                    Some(s) if !s.is_closed() => s.clone(),
                    _ => {
                        let (tx, rx) = mpsc::unbounded_channel();
                        lanes.insert(key.to_owned(), tx.clone());
                        tokio::spawn(run_lane(Arc::downgrade(self), lane, key.to_owned(), rx));
                        tx
                    }
                }
            };
            match sender.send(pending) {
                Ok(()) => break,
                // The lane ended just now (idle): the next turn starts a new one.
                Err(mpsc::error::SendError(p)) => pending = p,
            }
        }
        outcome.await.unwrap_or(Err(BusError::Closed))
    }

    async fn retry_pause(&self, deadline: Instant, e: &lapin::Error) -> Result<(), BusError> {
        if Instant::now() + Duration::from_millis(20) >= deadline {
            return Err(amqp_err(e));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }

    fn delivery_mode(&self) -> u8 {
        if self.config.durable_node_queues {
            2
        } else {
            1
        }
    }

    /// Declares the node's queue on `live`, binds its route and wanted topics, starts its consumer.
    /// Called with the node's setup lock held.
    async fn setup_node(
        self: &Arc<Self>,
        live: &Arc<Live>,
        state: &Arc<NodeState>,
        setup: &mut NodeSetup,
        fresh: bool,
    ) -> Result<(), lapin::Error> {
        if setup.generation == live.generation {
            return Ok(());
        }
        if let Some(old) = setup.consumer.take() {
            old.abort();
        }
        let config = &self.config;
        let channel = live.conn.create_channel().await?;
        channel
            .basic_qos(config.node_prefetch, BasicQosOptions::default())
            .await?;
        if fresh {
            // A queue left by an earlier process with this node id holds stale bindings (and may
            // have been declared with the other durability).
            channel
                .queue_delete(&state.queue, QueueDeleteOptions::default())
                .await?;
        }
        let (options, args) = if config.durable_node_queues {
            let mut args = FieldTable::default();
            let expires = u32::try_from(config.node_queue_expires.as_millis())
                .unwrap_or(u32::MAX)
                .max(1000);
            args.insert(ShortString::from("x-expires"), AMQPValue::LongUInt(expires));
            (
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
        } else {
            (
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
        };
        channel.queue_declare(&state.queue, options, args).await?;
        channel
            .queue_bind(
                &state.queue,
                &config.node_exchange(),
                &state.node,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let topic_exchange = config.topic_exchange();
        let desired: Vec<String> = setup.desired.iter().cloned().collect();
        for topic in &desired {
            channel
                .queue_bind(
                    &state.queue,
                    &topic_exchange,
                    topic,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        let stale: Vec<String> = setup.bound.difference(&setup.desired).cloned().collect();
        for topic in &stale {
            channel
                .queue_unbind(&state.queue, &topic_exchange, topic, FieldTable::default())
                .await?;
        }
        setup.bound = setup.desired.clone();
        let consumer = channel
            .basic_consume(
                &state.queue,
                &format!("node-{}", state.node),
                BasicConsumeOptions {
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        setup.consumer = Some(tokio::spawn(node_consumer(
            Arc::downgrade(self),
            Arc::clone(state),
            channel,
            consumer,
        )));
        setup.generation = live.generation;
        debug!(node = %state.node, topics = desired.len(), generation = live.generation, "node queue set up");
        Ok(())
    }

    /// Re-attaches every node after a reconnect.
    async fn restore_nodes(self: &Arc<Self>, live: &Arc<Live>) -> Result<(), lapin::Error> {
        let nodes: Vec<Arc<NodeState>> = lock(&self.nodes).values().cloned().collect();
        for state in nodes {
            let mut setup = state.setup.lock().await;
            self.setup_node(live, &state, &mut setup, false).await?;
        }
        Ok(())
    }

    /// Starts the consumer of command shard `shard` on its own channel; it drains and closes the
    /// channel once `release` turns true (see [`shard_consumer`]).
    async fn start_shard(
        self: &Arc<Self>,
        live: &Arc<Live>,
        shard: u16,
        release: watch::Receiver<bool>,
    ) -> Result<JoinHandle<()>, lapin::Error> {
        let channel = live.conn.create_channel().await?;
        channel
            .basic_qos(self.config.work_prefetch.max(1), BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                &self.config.work_queue(shard),
                &format!("work-{shard}-{}", self.worker_id),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(tokio::spawn(shard_consumer(
            Arc::clone(self),
            shard,
            channel,
            consumer,
            release,
        )))
    }

    fn resolve(&self, destination: &str) -> Option<Route> {
        self.handlers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(prefix, _)| destination.starts_with(&**prefix))
            .map(|(p, h)| (Arc::clone(p), Arc::clone(h)))
    }

    /// A node (still attached) whose queue consumer on this connection ended: the broker closed
    /// its channel (queue deleted by hand, say). Reconnecting sets it up again.
    fn stopped_node_consumer(&self, generation: u64) -> Option<NodeId> {
        let nodes: Vec<Arc<NodeState>> = lock(&self.nodes).values().cloned().collect();
        nodes.into_iter().find_map(|state| {
            let setup = state.setup.try_lock().ok()?;
            let stopped = setup.generation == generation
                && !state.tx.is_closed()
                && setup.consumer.as_ref().is_some_and(JoinHandle::is_finished);
            stopped.then(|| state.node.clone())
        })
    }

    fn has_handlers(&self) -> bool {
        !self
            .handlers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Runs a command's handler, with the retry policy; never fails.
    async fn handle_command(&self, cmd: AppCommand, redelivered: bool) {
        let counters = &self.counters;
        let Some((prefix, handler)) = self.resolve(&cmd.destination) else {
            bump(&counters.commands_unrouted);
            warn!(destination = %cmd.destination, session = %cmd.session, "no handler for this command in this process; dropped");
            return;
        };
        if redelivered {
            debug!(destination = %cmd.destination, session = %cmd.session, "command redelivered (its first handling may have happened)");
        }
        let mut delay = self.config.retry_delay;
        let mut attempt = 0u32;
        let started = Instant::now();
        loop {
            attempt += 1;
            let (h, c) = (Arc::clone(&handler), cmd.clone());
            let outcome = tokio::spawn(async move { h.handle(c).await }).await;
            match outcome {
                Ok(Ok(())) => {
                    bump(&counters.commands_handled);
                    if attempt > 1 {
                        info!(%prefix, destination = %cmd.destination, session = %cmd.session, attempts = attempt,
                            waited_ms = started.elapsed().as_millis(), "command handled after transient failures");
                    }
                    return;
                }
                Ok(Err(HandlerError::Transient(msg)))
                    if started.elapsed() + delay <= self.config.handler_retry_for =>
                {
                    bump(&counters.commands_retried);
                    if attempt == 1 {
                        warn!(%prefix, destination = %cmd.destination, session = %cmd.session, error = %msg,
                            retry_for_s = self.config.handler_retry_for.as_secs(), "transient handler failure; retrying the command until it succeeds or the retry time is up");
                    } else {
                        debug!(%prefix, destination = %cmd.destination, session = %cmd.session, attempt, error = %msg, "transient handler failure; retrying");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Ok(Err(err)) => {
                    bump(&counters.commands_failed);
                    if matches!(err, HandlerError::Transient(_)) {
                        error!(%prefix, destination = %cmd.destination, session = %cmd.session, attempts = attempt,
                            waited_s = started.elapsed().as_secs(), error = %err, "command still failing after the retry time; dropped");
                    } else {
                        warn!(%prefix, destination = %cmd.destination, session = %cmd.session, attempts = attempt, error = %err, "application handler failed; command dropped");
                    }
                    return;
                }
                Err(join) if join.is_panic() => {
                    bump(&counters.commands_failed);
                    bump(&counters.commands_panicked);
                    error!(%prefix, destination = %cmd.destination, session = %cmd.session, "application handler panicked; command dropped");
                    return;
                }
                Err(_) => {
                    bump(&counters.commands_failed);
                    return;
                }
            }
        }
    }

    /// Detaches a node: forget it, stop its consumer, delete its queue, give up its lease.
    async fn detach(self: &Arc<Self>, node: &NodeId, link: u64) {
        let state = {
            let mut nodes = lock(&self.nodes);
            match nodes.get(node) {
                Some(s) if s.link == link => nodes.remove(node),
                _ => None,
            }
        };
        let Some(state) = state else {
            return;
        };
        let lease = lock(&state.lease).take();
        {
            let mut setup = state.setup.lock().await;
            if let Some(task) = setup.consumer.take() {
                task.abort();
            }
            setup.generation = 0;
            if let Some(live) = self.current()
                && let Ok(control) = live.control().await
                && let Err(e) = control
                    .queue_delete(&state.queue, QueueDeleteOptions::default())
                    .await
            {
                debug!(%node, error = %e, "could not delete the node queue (it expires by itself)");
            }
            debug!(%node, "node detached");
        }
        if let Some(lease) = lease
            && let Err(e) = lease.release().await
        {
            debug!(%node, error = %e, "could not release the node's lease (it expires by itself)");
        }
    }
}

fn work_queue_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-single-active-consumer"),
        AMQPValue::Boolean(true),
    );
    args
}

/// The connection's event stream (errors, blocked/unblocked).
struct ConnEvents(std::pin::Pin<Box<dyn futures_util::Stream<Item = Event> + Send>>);

/// Keeps the bus connected: watches the connection, reconnects with backoff, restores nodes and
/// consumers.
async fn supervise(shared: Arc<Shared>, first: (Arc<Live>, ConnEvents)) {
    let mut next = Some(first);
    let mut generation = 1u64;
    let mut backoff = shared.config.reconnect_min;
    loop {
        if shared.closed.load(Ordering::Acquire) {
            break;
        }
        let (live, mut events) = match next.take() {
            Some(v) => v,
            None => {
                generation += 1;
                match shared.connect(generation).await {
                    Ok(v) => v,
                    Err(e) => {
                        warn!(error = %e, retry_in_ms = backoff.as_millis(), "RabbitMQ connection failed");
                        shared.set_error(e.to_string());
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = shared.wake.notified() => {}
                        }
                        backoff = (backoff * 2).min(shared.config.reconnect_max);
                        continue;
                    }
                }
            }
        };
        shared.blocked.send_replace(None);
        let mut workers: Vec<JoinHandle<()>> = Vec::new();
        let ready = async {
            shared.restore_nodes(&live).await?;
            if shared.has_handlers() {
                workers.push(tokio::spawn(balance_shards(
                    Arc::clone(&shared),
                    Arc::clone(&live),
                )));
            }
            Ok::<_, lapin::Error>(())
        }
        .await;
        if let Err(e) = ready {
            warn!(error = %e, "restoring queues and consumers failed; reconnecting");
            shared.set_error(e.to_string());
            let _ = live.conn.close(320, "restore failed").await;
            for w in workers.drain(..) {
                w.abort();
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(shared.config.reconnect_max);
            continue;
        }
        backoff = shared.config.reconnect_min;
        shared.set_error(String::new());
        info!(generation = live.generation, "connected to RabbitMQ");
        shared.live.send_replace(Some(Arc::clone(&live)));

        let mut poll = tokio::time::interval(Duration::from_millis(250));
        let reason = loop {
            tokio::select! {
                event = events.0.next() => match event {
                    Some(Event::ConnectionBlocked(reason)) => {
                        warn!(%reason, "RabbitMQ blocked the connection; publishing waits");
                        shared.blocked.send_replace(Some(reason));
                    }
                    Some(Event::ConnectionUnblocked) => {
                        info!("RabbitMQ unblocked the connection");
                        shared.blocked.send_replace(None);
                    }
                    // Channel errors are reported here too; only a dead connection matters.
                    Some(Event::Error(e)) if !live.connected() => break e.to_string(),
                    Some(Event::Error(e)) => debug!(error = %e, "channel error"),
                    Some(_) => {}
                    None => break "connection events ended".to_owned(),
                },
                () = shared.wake.notified() => {
                    if shared.closed.load(Ordering::Acquire) {
                        break "bus closed".to_owned();
                    }
                    if workers.is_empty() && shared.has_handlers() {
                        workers.push(tokio::spawn(balance_shards(Arc::clone(&shared), Arc::clone(&live))));
                    }
                }
                _ = poll.tick() => {
                    if !live.connected() {
                        break format!("connection state {:?}", live.conn.status().state());
                    }
                    // The shard balancer ends when one of its consumers ended unasked (the broker
                    // closed its channel) or a consumer could not start: trouble.
                    if workers.iter().any(JoinHandle::is_finished) {
                        break "a command consumer stopped".to_owned();
                    }
                    if let Some(node) = shared.stopped_node_consumer(live.generation) {
                        break format!("the consumer of node {node} stopped");
                    }
                }
            }
        };
        shared.live.send_replace(None);
        shared.blocked.send_replace(None);
        for w in workers.drain(..) {
            w.abort();
        }
        if shared.closed.load(Ordering::Acquire) {
            let _ = live.conn.close(200, "bus closed").await;
            break;
        }
        warn!(%reason, "lost the RabbitMQ connection; reconnecting");
        shared.set_error(reason);
        if live.connected() {
            let _ = live.conn.close(320, "reconnecting").await;
        }
        tokio::time::sleep(backoff).await;
    }
    // Closed: stop node consumers so inboxes end.
    let nodes: Vec<Arc<NodeState>> = lock(&shared.nodes).drain().map(|(_, s)| s).collect();
    for state in nodes {
        if let Some(task) = state.setup.lock().await.consumer.take() {
            task.abort();
        }
    }
    shared.stopped.send_replace(true);
    debug!("AMQP bus stopped");
}

/// Messages of one lane waiting for their confirms at the same time.
const LANE_IN_FLIGHT: usize = 4;

/// One route's lane (see [`Shared::publish_item`]): takes what waits, sends it as one message on
/// the lane's channel, hands every waiter the outcome once confirmed, and ends once idle for
/// [`LANE_IDLE`]. Up to [`LANE_IN_FLIGHT`] messages wait for their confirms at once; while all
/// of them do, new publishes queue and leave together in the next message.
async fn run_lane(
    shared: Weak<Shared>,
    lane: Lane,
    key: String,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(LANE_IN_FLIGHT));
    // One channel per lane keeps the lane's messages in order; lanes spread over the channels.
    let channel = usize::try_from(codec::stable_hash(&key)).unwrap_or(0);
    let mut body: Vec<u8> = Vec::new();
    // The route's exchange and options, fixed for the lane's life.
    let Some((exchange, mandatory, mode)) = shared.upgrade().map(|shared| {
        let config = &shared.config;
        match lane {
            Lane::Topic => (config.topic_exchange(), false, shared.delivery_mode()),
            Lane::Node => (config.node_exchange(), true, shared.delivery_mode()),
            Lane::Work => (config.work_exchange(), true, 2),
        }
    }) else {
        return;
    };
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let first = match tokio::time::timeout(LANE_IDLE, rx.recv()).await {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(_) => {
                // Idle: leave the map, then send what raced in before the close (recv yields
                // it, then None).
                if let Some(shared) = shared.upgrade() {
                    lock(&shared.lanes[lane as usize]).remove(&key);
                }
                rx.close();
                continue;
            }
        };
        let mut size = first.item.encoded_len();
        let mut batch = vec![first];
        while batch.len() < codec::MAX_BATCH_ITEMS && size < codec::MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    size += p.item.encoded_len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let Some(shared) = shared.upgrade() else {
            for p in batch {
                let _ = p.done.send(Err(BusError::Closed));
            }
            return;
        };
        let sent = if let [one] = batch.as_slice() {
            let (headers, payload) = one.item.single();
            let properties = BasicProperties::default()
                .with_delivery_mode(mode)
                .with_headers(headers);
            shared
                .send(channel, &exchange, &key, payload, properties, mandatory)
                .await
        } else {
            body.clear();
            body.reserve(size);
            for p in &batch {
                codec::encode_item(&mut body, &p.item);
            }
            let properties = BasicProperties::default()
                .with_delivery_mode(mode)
                .with_headers(codec::batch_headers(batch.len()));
            shared
                .send(channel, &exchange, &key, &body, properties, mandatory)
                .await
        };
        bump(&shared.counters.broker_messages);
        match sent {
            Err(e) => {
                for p in batch {
                    let _ = p.done.send(Err(e.clone()));
                }
            }
            Ok(confirm) => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let result = shared.await_confirm(confirm).await;
                    for p in batch {
                        let _ = p.done.send(result.clone());
                    }
                    drop(slot);
                });
            }
        }
    }
}

/// Moves deliveries from a node queue into the node's inbox; acknowledges them in batches once
/// they are in the inbox.
async fn node_consumer(
    shared: Weak<Shared>,
    state: Arc<NodeState>,
    channel: Channel,
    mut consumer: lapin::Consumer,
) {
    let ack_multiple = BasicAckOptions { multiple: true };
    loop {
        let Some(first) = consumer.next().await else {
            break;
        };
        let mut next = Some(first);
        let mut last_tag = None;
        let mut batch = 0;
        while let Some(item) = next.take() {
            let delivery = match item {
                Ok(d) => d,
                Err(e) => {
                    debug!(node = %state.node, error = %e, "node consumer stopped");
                    return;
                }
            };
            last_tag = Some(delivery.delivery_tag);
            match codec::decode_deliveries(&delivery.properties, delivery.data) {
                Ok(deliveries) => {
                    for d in deliveries {
                        if state.tx.send(d).await.is_err() {
                            return; // node detached
                        }
                        if let Some(shared) = shared.upgrade() {
                            bump(&shared.counters.delivered);
                        }
                    }
                }
                Err(e) => {
                    warn!(node = %state.node, field = e.0, "undecodable delivery dropped");
                    if let Some(shared) = shared.upgrade() {
                        bump(&shared.counters.dropped);
                    }
                }
            }
            batch += 1;
            if batch < 256 {
                next = consumer.next().now_or_never().flatten();
            }
        }
        if let Some(tag) = last_tag
            && let Err(e) = channel.basic_ack(tag, ack_multiple).await
        {
            debug!(node = %state.node, error = %e, "ack failed; node consumer stops");
            return;
        }
    }
}

/// Consumes one command shard: commands of one session run one after the other, different
/// sessions concurrently (bounded by the prefetch). Finished commands are acknowledged in batches:
/// one `multiple` ack up to the highest delivery tag below which every command has finished.
///
/// **Hand-over.** When `release` turns true (the balancer gave the shard to another process), it
/// takes no further delivery, waits until every command it started has finished and been
/// acknowledged, then closes its channel: the broker puts the deliveries it had prefetched but not
/// started back at the head of the queue, in order, and only then (single active consumer) makes
/// the next consumer active. So a shard's commands never run in two processes at once, and
/// nothing is lost or reordered.
async fn shard_consumer(
    shared: Arc<Shared>,
    shard: u16,
    channel: Channel,
    mut consumer: lapin::Consumer,
    mut release: watch::Receiver<bool>,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, u64, u64)>();
    // session -> (sequence of its last command, completion of that command)
    let mut chains: HashMap<String, (u64, oneshot::Receiver<()>)> = HashMap::new();
    let mut acks = AckWindow::default();
    let mut seq = 0u64;
    let mut releasing = false;
    loop {
        if releasing && acks.open.is_empty() {
            let started = Instant::now();
            if let Err(e) = channel.close(200, "shard handed over").await {
                debug!(shard, error = %e, "closing a released shard's channel failed");
            }
            debug!(
                shard,
                close_ms = started.elapsed().as_millis(),
                "shard released"
            );
            return;
        }
        tokio::select! {
            changed = release.changed(), if !releasing => {
                // A dropped sender (the balancer ended) also releases.
                if changed.is_err() || *release.borrow() {
                    releasing = true;
                    debug!(shard, in_flight = acks.open.len(), "releasing the shard");
                }
            }
            Some(first) = done_rx.recv() => {
                let mut next = Some(first);
                while let Some((session, s, tag)) = next.take() {
                    if chains.get(&session).is_some_and(|(last, _)| *last == s) {
                        chains.remove(&session);
                    }
                    acks.finished(tag);
                    next = done_rx.try_recv().ok();
                }
                let mut result = Ok(());
                if let Some(upto) = acks.take_ackable() {
                    result = channel.basic_ack(upto, BasicAckOptions { multiple: true }).await;
                }
                // A slow command (retrying, say) must not hold the prefetch window hostage: past
                // half of it, finished commands behind it are acknowledged one by one.
                for tag in acks.take_finished_if_over(usize::from(shared.config.work_prefetch / 2)) {
                    if result.is_ok() {
                        result = channel.basic_ack(tag, BasicAckOptions::default()).await;
                    }
                }
                if let Err(e) = result {
                    debug!(shard, error = %e, "command ack failed; the broker will redeliver");
                    return;
                }
            }
            next = consumer.next(), if !releasing => {
                let delivery = match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => {
                        debug!(shard, error = %e, "command consumer stopped");
                        return;
                    }
                    None => return,
                };
                let tag = delivery.delivery_tag;
                let redelivered = delivery.redelivered;
                let cmds = match codec::decode_commands(&delivery.properties, delivery.data) {
                    Ok(cmds) => cmds,
                    Err(e) => {
                        warn!(shard, field = e.0, "undecodable command dropped");
                        bump(&shared.counters.commands_failed);
                        acks.delivered(tag, 1);
                        let _ = done_tx.send((String::new(), 0, tag));
                        continue;
                    }
                };
                // A batch is acknowledged once all of its commands have finished.
                acks.delivered(tag, cmds.len());
                for cmd in cmds {
                    seq += 1;
                    let (tx, rx) = oneshot::channel();
                    let session = cmd.session.clone();
                    let previous = chains.insert(session.clone(), (seq, rx)).map(|(_, rx)| rx);
                    let (shared, done, s) = (Arc::clone(&shared), done_tx.clone(), seq);
                    tokio::spawn(async move {
                        if let Some(previous) = previous {
                            let _ = previous.await;
                        }
                        shared.handle_command(cmd, redelivered).await;
                        let _ = tx.send(());
                        let _ = done.send((session, s, tag));
                    });
                }
            }
        }
    }
}

/// The shards `me` consumes when `workers` (sorted, `me` among them) are the live command
/// workers: rendezvous hashing with bounded load. Each shard ranks the workers by
/// `fnv1a("{worker}/{shard}")` and goes to the highest-ranked one that has fewer than
/// `ceil(shards / workers)` shards so far. Every worker computes the same partition from the same
/// list; a worker joining or leaving moves about its own share of shards, and the load is as even
/// as `shards` allows (plain rendezvous hashing left a worker with 0 of 8 shards now and then).
pub(crate) fn assign_shards(shards: u16, workers: &[String], me: &str) -> Vec<u16> {
    if workers.is_empty() {
        return (0..shards).collect();
    }
    let cap = usize::from(shards).div_ceil(workers.len());
    let mut load = vec![0usize; workers.len()];
    let mut mine = Vec::new();
    for shard in 0..shards {
        let mut ranked: Vec<(u64, usize)> = workers
            .iter()
            .enumerate()
            .map(|(i, w)| (codec::stable_hash(&format!("{w}/{shard}")), i))
            .collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(&(_, i)) = ranked.iter().find(|(_, i)| load[*i] < cap) {
            load[i] += 1;
            if workers[i] == me {
                mine.push(shard);
            }
        }
    }
    mine
}

/// A running shard consumer, and the switch that hands it over.
struct ShardRun {
    task: JoinHandle<()>,
    release: watch::Sender<bool>,
}

/// The shard consumers of one connection; dropping it (the connection was lost, the bus closed)
/// aborts them, and the broker requeues what they had not acknowledged.
#[derive(Default)]
struct ShardRuns(std::collections::BTreeMap<u16, ShardRun>);

impl Drop for ShardRuns {
    fn drop(&mut self) {
        for run in self.0.values() {
            run.task.abort();
        }
    }
}

/// Spreads the command shards over the live command workers (processes with handlers): keeps
/// this process's lease among the workers in the registry (refreshed every quarter of
/// [`AmqpConfig::worker_lease_ttl`]), computes its share with [`assign_shards`] from the live
/// list, starts consumers for shards it gained, and hands over those it lost (drained, see
/// [`shard_consumer`]). A shard that is being released is started again only after its old
/// consumer finished. The queues keep `x-single-active-consumer` as the safety net: when two
/// processes briefly both think they own a shard (their views of the list differ for one
/// refresh), the later one waits as the standby until the other lets go.
///
/// Without a registry answer the process keeps the shards it has (before its first answer it
/// takes all of them, as a lone worker would). Ends only when a consumer ended unasked or
/// could not start; the supervisor then reconnects.
async fn balance_shards(shared: Arc<Shared>, live: Arc<Live>) {
    let ttl = shared
        .config
        .worker_lease_ttl
        .max(Duration::from_millis(300));
    let every = ttl / 4;
    let me = shared.worker_id.clone();
    let shards = shared.config.shards();
    let mut runs = ShardRuns::default();
    // Shards released and still draining.
    let mut draining = ShardRuns::default();
    let mut owned: Option<Vec<u16>> = None;
    let mut registry_failed = false;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let wanted: Vec<u16> = match shared.registry.worker_heartbeat(&me, ttl).await {
            Ok(mut workers) => {
                if registry_failed {
                    info!(workers = workers.len(), "command workers known again");
                    registry_failed = false;
                }
                if !workers.contains(&me) {
                    workers.push(me.clone());
                    workers.sort();
                }
                assign_shards(shards, &workers, &me)
            }
            Err(e) => {
                if !registry_failed {
                    warn!(error = %e, "cannot refresh this command worker's lease; keeping the shards it has");
                    registry_failed = true;
                }
                owned.clone().unwrap_or_else(|| (0..shards).collect())
            }
        };
        draining.0.retain(|_, run| !run.task.is_finished());
        // A consumer that ended without being released: its channel was closed under it.
        if let Some(shard) = runs
            .0
            .iter()
            .find(|(_, r)| r.task.is_finished())
            .map(|(s, _)| *s)
        {
            warn!(shard, "a command shard consumer stopped");
            return;
        }
        let lost: Vec<u16> = runs
            .0
            .keys()
            .filter(|s| !wanted.contains(s))
            .copied()
            .collect();
        for shard in lost {
            if let Some(run) = runs.0.remove(&shard) {
                let _ = run.release.send(true);
                // Still aborted if the bus goes away while it drains.
                draining.0.insert(shard, run);
            }
        }
        let gained = wanted
            .iter()
            .any(|s| !runs.0.contains_key(s) && !draining.0.contains_key(s));
        let hook = shared
            .shards_gained
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if gained && let Some(hook) = hook {
            // Before the first delivery of a gained shard: what its dead owner left is dealt
            // with first (the chat service publishes its committed, unpublished batches).
            if tokio::time::timeout(Duration::from_secs(10), hook())
                .await
                .is_err()
            {
                warn!("the shard take-over hook did not finish in 10 s; consuming anyway");
            }
        }
        for &shard in &wanted {
            if runs.0.contains_key(&shard) || draining.0.contains_key(&shard) {
                continue;
            }
            let (release, rx) = watch::channel(false);
            match shared.start_shard(&live, shard, rx).await {
                Ok(task) => {
                    runs.0.insert(shard, ShardRun { task, release });
                }
                Err(e) => {
                    warn!(shard, error = %e, "starting a command shard consumer failed");
                    return;
                }
            }
        }
        let now: Vec<u16> = runs.0.keys().copied().collect();
        if owned.as_ref() != Some(&now) {
            info!(worker = %me, shards = ?now, draining = draining.0.len(), "command shards taken");
            bump(&shared.counters.rebalances);
            shared.counters.shards_owned.store(
                u64::try_from(now.len()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            owned = Some(now);
        }
    }
}

/// Delivery tags handed out and finished, for acknowledging in order with `multiple`. A
/// delivery (a batch) of N commands is finished once all N have finished.
#[derive(Default)]
struct AckWindow {
    /// Delivered and not acknowledged, in tag order, with the commands of each still running.
    open: std::collections::BTreeMap<u64, usize>,
}

impl AckWindow {
    fn delivered(&mut self, tag: u64, commands: usize) {
        self.open.insert(tag, commands.max(1));
    }

    fn finished(&mut self, tag: u64) {
        if let Some(left) = self.open.get_mut(&tag) {
            *left = left.saturating_sub(1);
        }
    }

    /// The highest tag such that it and every lower open tag are finished (then forgotten).
    fn take_ackable(&mut self) -> Option<u64> {
        let mut upto = None;
        while let Some(entry) = self.open.first_entry() {
            if *entry.get() > 0 {
                break;
            }
            upto = Some(*entry.key());
            entry.remove();
        }
        upto
    }

    /// If more than `limit` finished tags wait behind an unfinished one, removes and returns them.
    fn take_finished_if_over(&mut self, limit: usize) -> Vec<u64> {
        if self.open.values().filter(|left| **left == 0).count() <= limit {
            return Vec::new();
        }
        let finished: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, left)| **left == 0)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in &finished {
            self.open.remove(tag);
        }
        finished
    }
}

#[async_trait]
impl BusBackend for AmqpBus {
    async fn open_node(&self, node: NodeId) -> Result<NodeLink, BusError> {
        let shared = &self.shared;
        if lock(&shared.nodes).contains_key(&node) {
            return Err(BusError::NodeInUse(node.to_string()));
        }
        let lease = shared.registry.hold_lease(&node).await?;
        let (tx, rx) = mpsc::channel(shared.config.node_inbox_capacity.max(1));
        let link = shared.next_link.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(NodeState {
            node: node.clone(),
            link,
            queue: shared.config.node_queue(&node),
            tx,
            setup: tokio::sync::Mutex::new(NodeSetup::default()),
            lease: Mutex::new(Some(lease)),
        });
        {
            let mut nodes = lock(&shared.nodes);
            if nodes.contains_key(&node) {
                return Err(BusError::NodeInUse(node.to_string()));
            }
            nodes.insert(node.clone(), Arc::clone(&state));
        }
        let deadline = Instant::now() + shared.config.wait_for_connection;
        let attached = async {
            let live = shared.wait_live(deadline).await?;
            let mut setup = state.setup.lock().await;
            shared
                .setup_node(&live, &state, &mut setup, true)
                .await
                .map_err(|e| amqp_err(&e))
        }
        .await;
        if let Err(e) = attached {
            shared.detach(&node, link).await;
            return Err(e);
        }
        info!(%node, queue = %state.queue, "node attached to RabbitMQ");
        let control = AmqpNode {
            shared: Arc::downgrade(shared),
            state: Arc::downgrade(&state),
            node: node.clone(),
            link,
        };
        Ok(NodeLink::new(node, rx, Box::new(control)))
    }

    async fn publish(&self, target: Target, envelope: Envelope) -> Result<(), BusError> {
        let shared = &self.shared;
        let counters = &shared.counters;
        let (lane, keys): (Lane, Vec<String>) = match &target {
            Target::Topic(topic) => {
                validate_topic(topic)?;
                (Lane::Topic, vec![topic.clone()])
            }
            Target::User { user, .. } => {
                let (nodes, lost) = shared.registry.nodes_for_delivery(user).await?;
                if nodes.is_empty() {
                    if lost {
                        warn!(%user, destination = %envelope.destination, "registry recovering from a loss of its data and the user's sessions are not back; delivery dropped");
                        bump(&counters.dropped);
                    } else {
                        bump(&counters.no_session);
                    }
                    bump(&counters.published);
                    return Ok(());
                }
                (Lane::Node, nodes.iter().map(|n| n.to_string()).collect())
            }
        };
        // Topic messages nobody listens to are normal: not mandatory (lapin would log each
        // returned message). User deliveries are: a node without a queue counts as dropped.
        let sends = keys.iter().map(|key| {
            let item = codec::BatchItem::Envelope(target.clone(), envelope.clone());
            shared.publish_item(lane, key, item)
        });
        let mut first_error = None;
        for (key, result) in keys.iter().zip(join_all(sends).await) {
            match result {
                Ok(true) => {}
                Ok(false) => match &target {
                    Target::Topic(_) => bump(&counters.unrouted),
                    Target::User { user, .. } => {
                        debug!(node = %key, %user, "registry names a node without a queue; delivery dropped");
                        bump(&counters.dropped);
                    }
                },
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        bump(&counters.published);
        Ok(())
    }

    async fn submit(&self, cmd: AppCommand) -> Result<(), BusError> {
        let shared = &self.shared;
        let shard = codec::stable_hash(cmd.order_key()) % u64::from(shared.config.shards());
        let routed = shared
            .publish_item(
                Lane::Work,
                &shard.to_string(),
                codec::BatchItem::Command(cmd),
            )
            .await?;
        if !routed {
            return Err(BusError::Unavailable(
                "rabbitmq: the command queue is missing".to_owned(),
            ));
        }
        bump(&shared.counters.commands_submitted);
        Ok(())
    }

    async fn shutdown(&self) {
        let shared = &self.shared;
        if shared.has_handlers()
            && let Err(e) = shared.registry.worker_leave(&shared.worker_id).await
        {
            debug!(error = %e, "could not leave the command workers (the lease expires by itself)");
        }
        let nodes: Vec<(NodeId, u64)> = lock(&shared.nodes)
            .values()
            .map(|s| (s.node.clone(), s.link))
            .collect();
        for (node, link) in nodes {
            shared.detach(&node, link).await;
        }
        let mut stopped = shared.stopped.subscribe();
        shared.closed.store(true, Ordering::Release);
        shared.wake.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(2), stopped.wait_for(|s| *s)).await;
    }

    async fn enqueue(
        &self,
        queue: &str,
        envelope: Envelope,
        persistent: bool,
    ) -> Result<(), BusError> {
        self.shared.enqueue(queue, envelope, persistent).await
    }

    async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<crate::queues::QueueConsumer, BusError> {
        self.shared.consume(queue, prefetch).await
    }

    fn on_shards_gained(&self, hook: crate::bus::ShardsGained) {
        *self
            .shared
            .shards_gained
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(hook);
    }

    fn register_handler(&self, prefix: &str, handler: Arc<dyn AppHandler>) {
        {
            let mut handlers = self
                .shared
                .handlers
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            match handlers.iter_mut().find(|(p, _)| &**p == prefix) {
                Some(slot) => slot.1 = handler,
                None => {
                    handlers.push((Arc::from(prefix), handler));
                    handlers.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
                }
            }
        }
        self.shared.wake.notify_one();
    }

    fn health(&self) -> Health {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Health::Down("the bus is closed".to_owned());
        }
        if shared.current().is_none() {
            return Health::Down(format!(
                "not connected to RabbitMQ: {}",
                lock(&shared.last_error)
            ));
        }
        if let Health::Down(why) = shared.registry.health() {
            return Health::Down(why);
        }
        if let Some(reason) = shared.blocked.borrow().clone() {
            return Health::Degraded(format!("RabbitMQ blocks publishing: {reason}"));
        }
        let full: Vec<String> = lock(&shared.nodes)
            .values()
            .filter(|s| s.tx.capacity() == 0)
            .map(|s| s.node.to_string())
            .collect();
        if !full.is_empty() {
            return Health::Degraded(format!("inbox full: {}", full.join(", ")));
        }
        Health::Up
    }

    fn accepts_commands_now(&self) -> bool {
        let shared = &self.shared;
        !shared.closed.load(Ordering::Acquire)
            && shared.current().is_some()
            && shared.blocked.borrow().is_none()
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
            commands_retried: get(&c.commands_retried),
            broker_messages: get(&c.broker_messages),
            work_shards_owned: get(&c.shards_owned),
            work_rebalances: get(&c.rebalances),
        }
    }
}

/// The control side of one node link.
struct AmqpNode {
    shared: Weak<Shared>,
    state: Weak<NodeState>,
    node: NodeId,
    link: u64,
}

impl fmt::Debug for AmqpNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpNode")
            .field("node", &self.node)
            .field("attached", &(self.state.strong_count() > 0))
            .finish()
    }
}

impl AmqpNode {
    fn parts(&self) -> Result<(Arc<Shared>, Arc<NodeState>), BusError> {
        match (self.shared.upgrade(), self.state.upgrade()) {
            (Some(shared), Some(state)) => Ok((shared, state)),
            _ => Err(BusError::Closed),
        }
    }

    async fn change(&self, topic: &str, bind: bool) -> Result<(), BusError> {
        crate::bus::validate_binding(topic)?;
        let (shared, state) = self.parts()?;
        let mut setup = state.setup.lock().await;
        let changed = if bind {
            setup.desired.insert(topic.to_owned())
        } else {
            setup.desired.remove(topic)
        };
        if !changed {
            return Ok(());
        }
        let Some(live) = shared
            .current()
            .filter(|l| l.generation == setup.generation)
        else {
            // Disconnected: applied when the node is set up again after the reconnect.
            return Ok(());
        };
        let exchange = shared.config.topic_exchange();
        let result = async {
            let control = live.control().await?;
            if bind {
                control
                    .queue_bind(
                        &state.queue,
                        &exchange,
                        topic,
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            } else {
                control
                    .queue_unbind(&state.queue, &exchange, topic, FieldTable::default())
                    .await
            }
        }
        .await;
        match result {
            Ok(()) => {
                if bind {
                    setup.bound.insert(topic.to_owned());
                } else {
                    setup.bound.remove(topic);
                }
                Ok(())
            }
            Err(_) if !live.connected() => Ok(()), // restored on reconnect
            Err(e) => {
                // Undo, so the hub's view and ours agree.
                if bind {
                    setup.desired.remove(topic);
                } else {
                    setup.desired.insert(topic.to_owned());
                }
                Err(amqp_err(&e))
            }
        }
    }
}

#[async_trait]
impl NodeControl for AmqpNode {
    async fn bind(&self, topic: &str) -> Result<(), BusError> {
        self.change(topic, true).await
    }

    async fn unbind(&self, topic: &str) -> Result<(), BusError> {
        self.change(topic, false).await
    }

    async fn close(&self) -> Result<(), BusError> {
        if let Some(shared) = self.shared.upgrade() {
            shared.detach(&self.node, self.link).await;
        }
        Ok(())
    }
}

impl Drop for AmqpNode {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        if !lock(&shared.nodes).contains_key(&self.node) {
            return; // closed already
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (node, link) = (self.node.clone(), self.link);
            runtime.spawn(async move { shared.detach(&node, link).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AckWindow;

    #[test]
    fn ack_window_acknowledges_in_order_and_releases_stragglers() {
        let mut w = AckWindow::default();
        for tag in 1..=5 {
            w.delivered(tag, 1);
        }
        w.finished(2);
        assert_eq!(w.take_ackable(), None, "1 is still running");
        w.finished(1);
        w.finished(3);
        assert_eq!(w.take_ackable(), Some(3));
        w.finished(5);
        assert_eq!(w.take_ackable(), None);
        assert!(w.take_finished_if_over(1).is_empty());
        w.delivered(6, 1);
        w.finished(6);
        assert_eq!(w.take_finished_if_over(1), vec![5, 6]);
        w.finished(4);
        assert_eq!(w.take_ackable(), Some(4));
        assert_eq!(w.take_ackable(), None);
    }

    #[test]
    fn a_batch_is_acknowledged_after_its_last_command() {
        let mut w = AckWindow::default();
        w.delivered(1, 3);
        w.delivered(2, 1);
        w.finished(2);
        w.finished(1);
        w.finished(1);
        assert_eq!(w.take_ackable(), None, "one command of batch 1 still runs");
        w.finished(1);
        assert_eq!(w.take_ackable(), Some(2));
    }
}
