//! Point-to-point queues on RabbitMQ: one durable queue `{p}.q.{name}` per destination, shared by
//! every process of the deployment, so the consumers of all gateway nodes compete for its messages
//! (RabbitMQ hands them out round robin among consumers with room under their prefetch).
//!
//! * The queue is declared durable with `x-max-length` ([`QueueLimits::max_depth`]) and
//!   `x-overflow: reject-publish`: a publish to a full queue is nacked, reported as
//!   [`BusError::QueueFull`]. Every process must use the same limit (RabbitMQ refuses a
//!   redeclaration with other arguments).
//! * A publish goes to the default exchange with the queue's name as routing key, `mandatory`, and
//!   resolves on the publisher confirm. `persistent` makes the message persistent (delivery mode
//!   2): it survives a broker restart, as with RabbitMQ's own STOMP plugin.
//! * Each consumer has its own channel with `basic.qos(prefetch)`, so delivery tags count from 1
//!   per consumer. Settling is `basic.ack` / `basic.nack` (with `multiple` for cumulative
//!   acknowledgements). Cancelling closes the channel: RabbitMQ requeues what it had not
//!   acknowledged, marked redelivered. A consumer whose connection drops ends (its `recv` yields
//!   `None`); the broker requeues its messages.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use super::{Live, Shared, amqp_err, codec, lock};
use crate::error::BusError;
use crate::model::{Envelope, Target};
use crate::queues::{ConsumerControl, QueueConsumer, QueueDelivery, Settle, validate_queue};

/// Queues declared on the current connection.
#[derive(Debug, Default)]
pub(super) struct Declared {
    generation: u64,
    names: HashSet<String>,
}

impl Shared {
    fn queue_name(&self, queue: &str) -> String {
        format!("{}.q.{queue}", self.config.prefix)
    }

    fn queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-max-length"),
            AMQPValue::LongLongInt(i64::try_from(self.config.queues.max_depth).unwrap_or(i64::MAX)),
        );
        args.insert(
            ShortString::from("x-overflow"),
            AMQPValue::LongString(LongString::from("reject-publish")),
        );
        args
    }

    async fn declare_queue(
        &self,
        live: &Live,
        channel: &Channel,
        name: &str,
    ) -> Result<(), BusError> {
        {
            let declared = lock(&self.p2p);
            if declared.generation == live.generation && declared.names.contains(name) {
                return Ok(());
            }
        }
        channel
            .queue_declare(
                name,
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                self.queue_args(),
            )
            .await
            .map_err(|e| amqp_err(&e))?;
        let mut declared = lock(&self.p2p);
        if declared.generation != live.generation {
            declared.generation = live.generation;
            declared.names.clear();
        }
        if declared.names.len() < self.config.queues.max_queues.max(1) {
            declared.names.insert(name.to_owned());
        }
        Ok(())
    }

    pub(super) async fn enqueue(
        &self,
        queue: &str,
        envelope: Envelope,
        persistent: bool,
    ) -> Result<(), BusError> {
        validate_queue(queue)?;
        let name = self.queue_name(queue);
        let deadline = Instant::now() + self.config.wait_for_connection;
        let live = self.wait_live(deadline).await?;
        {
            let control = live.control().await.map_err(|e| amqp_err(&e))?;
            self.declare_queue(&live, &control, &name).await?;
        }
        let headers = codec::envelope_headers(&Target::Topic(queue.to_owned()), &envelope);
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_delivery_mode(if persistent { 2 } else { 1 });
        // One channel per queue name keeps one producer's messages in order.
        let channel = usize::try_from(codec::stable_hash(queue)).unwrap_or(0);
        let confirm = self
            .send(channel, "", &name, &envelope.body, properties, true)
            .await?;
        match tokio::time::timeout(self.config.confirm_timeout, confirm).await {
            Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => {
                super::bump(&self.counters.published);
                Ok(())
            }
            // Returned unroutable: the queue was deleted behind our back. Declare it again.
            Ok(Ok(Confirmation::Ack(Some(_)))) => {
                lock(&self.p2p).names.remove(&name);
                Err(BusError::Unavailable(format!(
                    "queue {queue} was missing; retry"
                )))
            }
            Ok(Ok(Confirmation::Nack(_))) => Err(BusError::QueueFull(queue.to_owned())),
            Ok(Err(e)) => Err(amqp_err(&e)),
            Err(_) => Err(BusError::Unavailable(
                "rabbitmq: no publisher confirm in time".to_owned(),
            )),
        }
    }

    pub(super) async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<QueueConsumer, BusError> {
        validate_queue(queue)?;
        let name = self.queue_name(queue);
        let prefetch = prefetch.clamp(1, self.config.queues.max_prefetch.max(1));
        let deadline = Instant::now() + self.config.wait_for_connection;
        let live = self.wait_live(deadline).await?;
        let channel = live.conn.create_channel().await.map_err(|e| amqp_err(&e))?;
        let setup = async {
            self.declare_queue(&live, &channel, &name).await?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| amqp_err(&e))?;
            channel
                .basic_consume(
                    &name,
                    "",
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| amqp_err(&e))
        };
        let consumer = match setup.await {
            Ok(c) => c,
            Err(e) => {
                let _ = channel.close(200, "consumer not started").await;
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel(usize::from(prefetch));
        let pump = tokio::spawn(pump(consumer, tx, queue.to_owned()));
        Ok(QueueConsumer::new(
            rx,
            Arc::new(AmqpConsumer {
                channel,
                pump: Mutex::new(Some(pump)),
            }),
        ))
    }
}

/// Moves one consumer's deliveries into its channel.
async fn pump(mut consumer: lapin::Consumer, tx: mpsc::Sender<QueueDelivery>, queue: String) {
    while let Some(item) = consumer.next().await {
        let delivery = match item {
            Ok(d) => d,
            Err(e) => {
                debug!(%queue, error = %e, "queue consumer stopped");
                return;
            }
        };
        let tag = delivery.delivery_tag;
        let redelivered = delivery.redelivered;
        let envelope = match codec::decode_delivery(&delivery.properties, delivery.data) {
            Ok(d) => d.envelope,
            Err(e) => {
                // Not ours (a message some other client put there): give it an empty envelope
                // rather than stall the queue on it.
                debug!(%queue, field = e.0, "foreign message in a queue");
                Arc::new(Envelope::new(format!("/queue/{queue}"), Vec::new()))
            }
        };
        if tx
            .send(QueueDelivery {
                tag,
                redelivered,
                envelope,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// One consumer's channel.
#[derive(Debug)]
struct AmqpConsumer {
    channel: Channel,
    pump: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[async_trait]
impl ConsumerControl for AmqpConsumer {
    async fn settle(&self, tag: u64, multiple: bool, how: Settle) -> Result<(), BusError> {
        let result = match how {
            Settle::Ack => {
                self.channel
                    .basic_ack(tag, BasicAckOptions { multiple })
                    .await
            }
            Settle::Requeue | Settle::Discard => {
                self.channel
                    .basic_nack(
                        tag,
                        BasicNackOptions {
                            multiple,
                            requeue: how == Settle::Requeue,
                        },
                    )
                    .await
            }
        };
        result.map_err(|e| amqp_err(&e))
    }

    async fn cancel(&self) {
        if let Some(pump) = lock(&self.pump).take() {
            pump.abort();
        }
        if self.channel.status().connected() {
            // Closing the channel requeues its unacknowledged messages, marked redelivered.
            let _ = self.channel.close(200, "subscription ended").await;
        }
    }
}

impl Drop for AmqpConsumer {
    fn drop(&mut self) {
        if let Some(pump) = lock(&self.pump).take() {
            pump.abort();
        }
        if self.channel.status().connected()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let channel = self.channel.clone();
            rt.spawn(async move {
                let _ = channel.close(200, "subscription ended").await;
            });
        }
    }
}
