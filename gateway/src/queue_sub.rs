//! A session's subscription to a point-to-point queue (`/queue/<name>`): a bus consumer whose
//! deliveries a small task turns into MESSAGE frames on the session's outbound queue, and the
//! bookkeeping that turns the client's ACK/NACK into settlements.
//!
//! The consumer's prefetch bounds what is in flight. In `ack:auto` a message is acknowledged as
//! soon as it is queued for the client (lost if the connection dies before it is written, as with
//! RabbitMQ's auto mode); in the client modes it stays unacknowledged until the client settles it,
//! and goes back to the queue, marked `redelivered`, on NACK or when the session ends.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use broker_bridge::{BusError, QueueAcker, QueueConsumer, QueueDelivery, Settle};
use bytes::{Bytes, BytesMut};
use stomp::{AckMode, MessageTemplate};

use crate::hub::SessionHandle;
use crate::queue::PushError;
use crate::session::SubState;

/// How long the pump waits before retrying a push into a full outbound queue. Queue deliveries
/// are never a reason to close a session as a slow consumer: the prefetch already bounds them, so
/// a full outbound queue (topic traffic) only makes the pump wait.
const FULL_RETRY: Duration = Duration::from_millis(2);

/// One live queue subscription of a session.
#[derive(Debug)]
pub(crate) struct QueueSub {
    acker: QueueAcker,
    /// Delivery tags handed to the client and not settled yet (client modes).
    outstanding: Arc<parking_lot::Mutex<BTreeSet<u64>>>,
    cumulative: bool,
    pump: tokio::task::JoinHandle<()>,
}

impl QueueSub {
    /// Starts delivering `consumer`'s messages to the session as MESSAGE frames of `sub`.
    pub(crate) fn start(
        consumer: QueueConsumer,
        sub: Arc<SubState>,
        handle: SessionHandle,
        destination: String,
    ) -> Self {
        let outstanding = Arc::new(parking_lot::Mutex::new(BTreeSet::new()));
        let acker = consumer.acker();
        let cumulative = sub.ack == AckMode::Client;
        let pump = tokio::spawn(pump(
            consumer,
            acker.clone(),
            sub,
            handle,
            destination,
            outstanding.clone(),
        ));
        Self {
            acker,
            outstanding,
            cumulative,
            pump,
        }
    }

    /// Settles delivery `seq` as the client asked: in `ack:client` with every earlier unsettled
    /// one. Deliveries settled already are ignored.
    pub(crate) async fn settle(&self, seq: u64, how: Settle) -> Result<(), BusError> {
        let todo = {
            let mut out = self.outstanding.lock();
            if self.cumulative {
                let upto: Vec<u64> = out.range(..=seq).copied().collect();
                for t in &upto {
                    out.remove(t);
                }
                upto.last().map(|&last| (last, true))
            } else {
                out.remove(&seq).then_some((seq, false))
            }
        };
        match todo {
            Some((tag, multiple)) => self.acker.settle(tag, multiple, how).await,
            None => Ok(()),
        }
    }

    /// Ends the subscription: nothing more is delivered, and what the client did not acknowledge
    /// goes back to the queue for other consumers.
    pub(crate) async fn stop(self) {
        self.pump.abort();
        let _ = self.pump.await;
        self.acker.cancel().await;
    }
}

async fn pump(
    mut consumer: QueueConsumer,
    acker: QueueAcker,
    sub: Arc<SubState>,
    handle: SessionHandle,
    destination: String,
    outstanding: Arc<parking_lot::Mutex<BTreeSet<u64>>>,
) {
    let mut buf = BytesMut::new();
    while let Some(d) = consumer.recv().await {
        let Some(frame) = encode(&d, &sub, &handle, &destination, &mut buf) else {
            // A header this client's version cannot carry: drop the message rather than loop on it.
            let _ = acker.settle(d.tag, false, Settle::Discard).await;
            continue;
        };
        sub.delivered.fetch_max(d.tag, Ordering::AcqRel);
        if sub.ack != AckMode::Auto {
            outstanding.lock().insert(d.tag);
        }
        loop {
            match handle.queue.try_push(frame.clone()) {
                Ok(()) => break,
                Err(PushError::Full) if !handle.kill.is_cancelled() => {
                    tokio::time::sleep(FULL_RETRY).await;
                }
                Err(_) => return,
            }
        }
        if sub.ack == AckMode::Auto
            && let Err(e) = acker.settle(d.tag, false, Settle::Ack).await
        {
            tracing::warn!(error = %e, %destination, "queue acknowledgement failed");
        }
    }
    // The consumer ended without being stopped: the broker connection is gone. The client must
    // learn that its subscription is dead, so the session ends (it reconnects and subscribes again).
    tracing::warn!(%destination, session = handle.session, "queue consumer lost; closing the session");
    handle.kill.cancel();
}

/// The MESSAGE frame of one delivery; `None` when this version cannot carry one of its headers.
fn encode(
    d: &QueueDelivery,
    sub: &SubState,
    handle: &SessionHandle,
    destination: &str,
    buf: &mut BytesMut,
) -> Option<Bytes> {
    let env = &d.envelope;
    let mut extra = stomp::Headers::default();
    for (k, v) in &env.headers {
        extra.push(k, v);
    }
    extra.push("redelivered", if d.redelivered { "true" } else { "false" });
    let template = MessageTemplate::new(
        destination,
        env.content_type.as_deref(),
        &extra,
        env.body.clone(),
        handle.version,
    );
    let id = sub.message_id(d.tag);
    let ack = (sub.ack != AckMode::Auto).then_some(id.as_str());
    template.encode_to(&sub.id, &id, ack, buf).ok()?;
    Some(buf.split().freeze())
}
