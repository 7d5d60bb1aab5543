//! The bus and the session registry: how a message gets from any process to the right gateway node(s).
//!
//! # Roles
//!
//! * [`Bus`] carries three kinds of traffic:
//!   - **topic messages** ([`Target::Topic`]): delivered once to every gateway node that has bound the
//!     topic with [`NodeLink::bind`] — once per *node*, never once per subscriber; the node's hub fans the
//!     shared [`Envelope`] out to its local sessions;
//!   - **user messages** ([`Target::User`]): the bus asks the [`Registry`] which nodes hold sessions of that
//!     user and delivers one copy to each such node's inbox;
//!   - **application commands** ([`AppCommand`], a client `SEND` to `/app/**`): put on a work queue with
//!     [`Bus::submit`] and consumed by competing workers that dispatch to the [`AppHandler`] registered for
//!     the longest matching destination prefix ([`Bus::register_handler`]).
//! * [`Registry`] records which session of which user lives on which gateway node.
//! * [`NodeLink`] is a gateway node's attachment to the bus: its inbox of [`Delivery`]s and its topic
//!   interest (`bind` / `unbind`; the gateway's hub does the reference counting over its subscriptions).
//!
//! Every operation that could cross a network is `async` and returns `Result<_, BusError>`, whatever the
//! implementation, so callers are written once for both.
//!
//! # Implementations
//!
//! ## In-process (embedded default): [`Bus::in_process`], [`Registry::in_process`]
//!
//! Everything lives in this process's memory. Node inboxes are bounded channels
//! ([`InProcessConfig::node_inbox_capacity`]); topic routing is a hash-map lookup from topic name to the
//! inboxes of the nodes bound to it; the work queue is a bounded channel
//! ([`InProcessConfig::work_queue_capacity`]) drained by [`InProcessConfig::workers`] worker tasks
//! (started on the first [`Bus::submit`], on the caller's Tokio runtime). Each command runs in its own task,
//! so a handler that returns an error or panics is logged and counted ([`BusMetrics`]) and the worker goes
//! on with the next command. A worker calls [`AppHandler::start`]: it starts its commands one after
//! another, in order, and lets what a handler leaves for later (the returned [`Completion`]) run
//! alongside, at most 256 per worker; handlers that keep the default `start` are handled one at a
//! time per worker as before.
//!
//! Guarantees:
//!
//! * **Acceptance.** [`Bus::publish`] resolves `Ok` once the message has been enqueued in the inbox of
//!   every node it routes to; [`Bus::submit`] resolves `Ok` once the command is in the work queue.
//! * **Backpressure, not loss.** When a node's inbox is full, `publish` *waits* for space; it never drops
//!   a message to a live node. A node that stops reading therefore stalls its publishers; wrap the call
//!   in [`tokio::time::timeout`] if you need a bound. `submit` likewise waits while the work queue is
//!   full. The only deliveries counted as `dropped` are those addressed to a node that detached (or was
//!   never attached to this bus) before the message could be enqueued.
//! * **At-most-once.** Nothing is persisted: messages in inboxes and commands in the work queue are lost
//!   if the process dies. Producers that must not lose data persist first (e.g. the chat message row) and
//!   publish after commit, as the architecture requires.
//! * **Ordering.** For one publisher and one target, messages arrive at each node in the order the
//!   publisher's `publish` calls completed (each call is awaited before the next starts). Nothing is
//!   promised across publishers or across targets.
//! * **Cancellation.** Dropping a `publish` future before it resolves may leave the message delivered to
//!   some of its nodes and not others.
//! * **User routing snapshot.** A user delivery goes to the nodes the registry lists at the moment of the
//!   publish; a session registered a moment later does not receive it.
//!
//! ## RabbitMQ + Redis (scale-out): [`Bus::amqp`], [`Registry::redis`]
//!
//! ```no_run
//! use broker_bridge::{AmqpConfig, Bus, NodeId, RedisRegistryConfig, Registry};
//! # async fn f() -> Result<(), broker_bridge::BusError> {
//! let registry = Registry::redis(RedisRegistryConfig::new("redis://127.0.0.1:6379")).await?;
//! let bus = Bus::amqp(registry, AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")).await?;
//! // a gateway node: takes the node's lease and declares its queue
//! let node = bus.open_node(NodeId::from("gw-1")).await?;
//! // a social worker opens no node; registering a handler makes it consume the command shards
//! # Ok(()) }
//! ```
//!
//! The vocabulary of that implementation stays inside this crate:
//!
//! * one queue per gateway node (durable with `x-expires` by default, or exclusive), consumed with a
//!   bounded prefetch; `bind`/`unbind` become `queue.bind`/`queue.unbind` of that queue to a topic
//!   exchange with the topic name as routing key (topic names may not contain the AMQP wildcards `*`
//!   and `#`, and the in-process bus rejects them too so both behave alike);
//! * user deliveries are routed through a direct exchange to each node queue the Redis registry lists;
//! * application commands go to K durable work queues (shard = FNV-1a of the command's order key:
//!   its room when the gateway stamped one, else its session), each with a single active consumer,
//!   so one room's commands are handled by one process at a time and one session's in order; transient handler failures are retried in place with a growing delay;
//! * `publish`/`submit` resolve on the broker's publisher confirm, so "accepted" means "the broker owns
//!   it"; a broker outage or `connection.blocked` surfaces as [`BusError::Unavailable`] (after a
//!   bounded wait) instead of a silent drop; the connection is re-established with backoff and the
//!   topology, node queues, bindings and consumers are restored;
//! * the Redis registry keeps session → node and user → sessions entries, plus a lease per node
//!   refreshed by the node; a dead node's entries are swept by the surviving nodes within the lease
//!   TTL ([`Registry::sweep`], [`Registry::remove_node`]). Entries never expire while their session is
//!   alive, and a node writes its sessions back if Redis lost them.
//!
//! Differences from the in-process bus: `submit` cannot know whether any process has a handler for
//! the destination (no [`BusError::NoRoute`]; a consumer without a matching handler drops the command
//! and counts it as `commands_unrouted`); topic publishes are not mandatory, so `unrouted` stays 0;
//! delivery is at-least-once around reconnects instead of at-most-once. See the `amqp` module docs (source) and `docs/scaleout.md` for the details.
//!
//! # Example
//!
//! ```
//! use broker_bridge::{Bus, Envelope, InProcessConfig, NodeId, Registry, Target};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), broker_bridge::BusError> {
//! let bus = Bus::in_process(Registry::in_process(), InProcessConfig::default());
//! let mut node = bus.open_node(NodeId::from("gw-1")).await?;
//! node.bind("chat.5").await?;
//! bus.publish(Target::topic("chat.5"), Envelope::new("/topic/chat.5", "hello")).await?;
//! let delivery = node.recv().await.expect("bus is alive");
//! assert_eq!(delivery.envelope.destination, "/topic/chat.5");
//! # Ok(())
//! # }
//! ```

mod amqp;
mod bus;
mod error;
mod in_process;
mod metrics_registry;
mod model;
pub mod queues;
mod redis_registry;
mod registry;
pub mod trace;

pub use amqp::AmqpConfig;
pub use async_trait::async_trait;
pub use bus::{
    AppHandler, Bus, BusMetrics, Completion, Health, NodeInbox, NodeInterest, NodeLink,
    ShardsGained, handler_fn,
};
pub use bus::{is_pattern, topic_matches};
pub use error::{BusError, HandlerError};
pub use in_process::InProcessConfig;
pub use metrics_registry::MetricsRegistry;
pub use model::{
    AppCommand, COMMAND_KEY_HEADER, Delivery, Envelope, NodeId, ORDER_KEY_HEADER, SessionEntry,
    Target,
};
pub use queues::{QueueAcker, QueueConsumer, QueueDelivery, QueueLimits, Settle};
pub use redis_registry::RedisRegistryConfig;
pub use registry::{NodeLease, Registry};
