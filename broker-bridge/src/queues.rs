//! Point-to-point queues: each message goes to one of the queue's consumers (round robin among those
//! with room under their prefetch), stays unacknowledged until its consumer settles it, and comes back
//! (marked redelivered) when it is rejected with requeue or its consumer goes away.
//!
//! This module is the API the gateway sees ([`QueueConsumer`], [`QueueAcker`], [`QueueDelivery`],
//! [`QueueLimits`]); the in-process engine is in `in_process/queues.rs`, the RabbitMQ one (a durable
//! queue per destination, shared by every node) in `amqp/queues.rs`.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::error::BusError;
use crate::model::Envelope;

/// Bounds of the queues (both implementations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLimits {
    /// Ready messages one queue holds; a publish beyond it is refused with
    /// [`BusError::QueueFull`] (unacknowledged messages are not counted, as in RabbitMQ's
    /// `x-max-length`). Default 10,000.
    pub max_depth: usize,
    /// Queues that may exist at once in process (empty queues without consumers are dropped to
    /// make room). Default 1,000. RabbitMQ keeps its own limits.
    pub max_queues: usize,
    /// Largest prefetch a consumer may ask for. Default 1,000.
    pub max_prefetch: u16,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            max_depth: 10_000,
            max_queues: 1_000,
            max_prefetch: 1_000,
        }
    }
}

/// Checks a queue name: 1-200 bytes of `[A-Za-z0-9._-]`.
pub(crate) fn validate_queue(name: &str) -> Result<(), BusError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BusError::InvalidQueue(name.to_owned()))
    }
}

/// One message handed to a consumer.
#[derive(Debug, Clone)]
pub struct QueueDelivery {
    /// Increasing from 1 per consumer, in delivery order; names the message when it is settled.
    pub tag: u64,
    /// Whether the message was delivered before (rejected with requeue, or its consumer left
    /// without acknowledging it).
    pub redelivered: bool,
    /// The message.
    pub envelope: Arc<Envelope>,
}

/// How a consumer settles an unacknowledged message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Done with it: it leaves the queue.
    Ack,
    /// Rejected: back to the head of the queue, marked redelivered.
    Requeue,
    /// Rejected and dropped.
    Discard,
}

/// The control side of one consumer. Dropping it (and the [`QueueConsumer`]) cancels the consumer.
#[async_trait]
pub(crate) trait ConsumerControl: Send + Sync + fmt::Debug + 'static {
    /// Settles `tag` (and, with `multiple`, every earlier unsettled tag of this consumer).
    async fn settle(&self, tag: u64, multiple: bool, how: Settle) -> Result<(), BusError>;
    /// Stops the consumer; its unacknowledged messages are requeued, marked redelivered.
    async fn cancel(&self);
}

/// A consumer of one queue: at most `prefetch` messages are unacknowledged at a time.
pub struct QueueConsumer {
    rx: mpsc::Receiver<QueueDelivery>,
    control: Arc<dyn ConsumerControl>,
}

impl fmt::Debug for QueueConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueConsumer")
            .field("queued", &self.rx.len())
            .field("control", &self.control)
            .finish()
    }
}

impl QueueConsumer {
    pub(crate) fn new(
        rx: mpsc::Receiver<QueueDelivery>,
        control: Arc<dyn ConsumerControl>,
    ) -> Self {
        Self { rx, control }
    }

    /// The next message; `None` once the consumer was cancelled or lost (broker connection gone).
    pub async fn recv(&mut self) -> Option<QueueDelivery> {
        self.rx.recv().await
    }

    /// A handle that settles this consumer's messages (cheap to clone).
    pub fn acker(&self) -> QueueAcker {
        QueueAcker(Arc::clone(&self.control))
    }
}

/// Settles messages of one [`QueueConsumer`], and cancels it.
#[derive(Debug, Clone)]
pub struct QueueAcker(Arc<dyn ConsumerControl>);

impl QueueAcker {
    /// Settles `tag` (and with `multiple` every earlier unsettled one). Tags already settled are
    /// ignored.
    pub async fn settle(&self, tag: u64, multiple: bool, how: Settle) -> Result<(), BusError> {
        self.0.settle(tag, multiple, how).await
    }

    /// Stops the consumer: what it has not acknowledged goes back to the queue, marked
    /// redelivered, for the other consumers.
    pub async fn cancel(&self) {
        self.0.cancel().await;
    }
}
