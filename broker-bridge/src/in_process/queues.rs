//! The in-process queue engine: one ready list per queue plus, per consumer, its unacknowledged
//! messages. Everything happens under the queue's mutex (held for list operations only, never
//! across an `.await`); nothing is persisted, so the queues are lost with the process.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::lock;
use crate::error::BusError;
use crate::model::Envelope;
use crate::queues::{
    ConsumerControl, QueueConsumer, QueueDelivery, QueueLimits, Settle, validate_queue,
};

/// Every queue of one in-process bus.
#[derive(Debug, Default)]
pub(crate) struct QueueSet {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    limits: QueueLimits,
    next_consumer: AtomicU64,
}

#[derive(Debug)]
struct Queue {
    name: String,
    state: Mutex<QState>,
}

#[derive(Debug, Default)]
struct QState {
    ready: VecDeque<Ready>,
    consumers: Vec<Slot>,
    /// Where the round robin goes on.
    next: usize,
}

#[derive(Debug)]
struct Ready {
    envelope: Arc<Envelope>,
    redelivered: bool,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    tx: mpsc::Sender<QueueDelivery>,
    prefetch: usize,
    unacked: BTreeMap<u64, Arc<Envelope>>,
    last_tag: u64,
}

impl QueueSet {
    pub(crate) fn new(limits: QueueLimits) -> Self {
        Self {
            queues: Mutex::default(),
            limits,
            next_consumer: AtomicU64::new(1),
        }
    }

    /// The queue `name`, created on first use. Past `max_queues`, idle queues (empty, without
    /// consumers) are dropped first; if none is idle the call fails.
    fn queue(&self, name: &str) -> Result<Arc<Queue>, BusError> {
        validate_queue(name)?;
        let mut queues = lock(&self.queues);
        if let Some(q) = queues.get(name) {
            return Ok(Arc::clone(q));
        }
        if queues.len() >= self.limits.max_queues.max(1) {
            queues.retain(|_, q| {
                let st = lock(&q.state);
                !st.ready.is_empty() || !st.consumers.is_empty()
            });
            if queues.len() >= self.limits.max_queues.max(1) {
                return Err(BusError::Unavailable(format!(
                    "too many queues (at most {})",
                    self.limits.max_queues
                )));
            }
        }
        let q = Arc::new(Queue {
            name: name.to_owned(),
            state: Mutex::default(),
        });
        queues.insert(name.to_owned(), Arc::clone(&q));
        Ok(q)
    }

    pub(crate) fn enqueue(&self, name: &str, envelope: Envelope) -> Result<(), BusError> {
        let q = self.queue(name)?;
        let mut st = lock(&q.state);
        if st.ready.len() >= self.limits.max_depth {
            return Err(BusError::QueueFull(q.name.clone()));
        }
        st.ready.push_back(Ready {
            envelope: Arc::new(envelope),
            redelivered: false,
        });
        st.dispatch();
        Ok(())
    }

    pub(crate) fn consume(&self, name: &str, prefetch: u16) -> Result<QueueConsumer, BusError> {
        let q = self.queue(name)?;
        let prefetch = usize::from(prefetch.clamp(1, self.limits.max_prefetch.max(1)));
        let (tx, rx) = mpsc::channel(prefetch);
        let id = self.next_consumer.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = lock(&q.state);
            st.consumers.push(Slot {
                id,
                tx,
                prefetch,
                unacked: BTreeMap::new(),
                last_tag: 0,
            });
            st.dispatch();
        }
        Ok(QueueConsumer::new(rx, Arc::new(Consumer { queue: q, id })))
    }

    /// Ready messages in `name`.
    #[cfg(test)]
    pub(crate) fn depth(&self, name: &str) -> usize {
        lock(&self.queues)
            .get(name)
            .map_or(0, |q| lock(&q.state).ready.len())
    }
}

impl QState {
    /// Hands ready messages to consumers with room, round robin, until either runs out.
    fn dispatch(&mut self) {
        while !self.ready.is_empty() && !self.consumers.is_empty() {
            let n = self.consumers.len();
            let Some(idx) = (0..n)
                .map(|i| (self.next + i) % n)
                .find(|&i| self.consumers[i].unacked.len() < self.consumers[i].prefetch)
            else {
                return;
            };
            let Some(msg) = self.ready.pop_front() else {
                return;
            };
            let slot = &mut self.consumers[idx];
            let tag = slot.last_tag + 1;
            let delivery = QueueDelivery {
                tag,
                redelivered: msg.redelivered,
                envelope: Arc::clone(&msg.envelope),
            };
            // The channel holds `prefetch` and every message in it is unacknowledged, so it has
            // room; it fails only when the consumer is gone (its cancel is on the way).
            if slot.tx.try_send(delivery).is_err() {
                self.ready.push_front(msg);
                let gone = self.consumers.remove(idx);
                self.requeue(gone.unacked.into_values());
                continue;
            }
            slot.last_tag = tag;
            slot.unacked.insert(tag, msg.envelope);
            self.next = (idx + 1) % n;
        }
    }

    /// Puts messages back at the head of the queue, in their order, marked redelivered.
    fn requeue(&mut self, messages: impl DoubleEndedIterator<Item = Arc<Envelope>>) {
        for envelope in messages.rev() {
            self.ready.push_front(Ready {
                envelope,
                redelivered: true,
            });
        }
    }
}

/// One consumer's control: settles its messages; cancelled when dropped.
#[derive(Debug)]
struct Consumer {
    queue: Arc<Queue>,
    id: u64,
}

impl Consumer {
    fn cancel_now(&self) {
        let mut st = lock(&self.queue.state);
        if let Some(pos) = st.consumers.iter().position(|s| s.id == self.id) {
            let gone = st.consumers.remove(pos);
            if st.next > pos {
                st.next -= 1;
            }
            st.requeue(gone.unacked.into_values());
            st.dispatch();
        }
    }
}

#[async_trait]
impl ConsumerControl for Consumer {
    async fn settle(&self, tag: u64, multiple: bool, how: Settle) -> Result<(), BusError> {
        let mut st = lock(&self.queue.state);
        let Some(slot) = st.consumers.iter_mut().find(|s| s.id == self.id) else {
            return Err(BusError::Closed);
        };
        let settled: Vec<Arc<Envelope>> = if multiple {
            let rest = slot.unacked.split_off(&(tag + 1));
            std::mem::replace(&mut slot.unacked, rest)
                .into_values()
                .collect()
        } else {
            slot.unacked.remove(&tag).into_iter().collect()
        };
        if how == Settle::Requeue {
            st.requeue(settled.into_iter());
        }
        st.dispatch();
        Ok(())
    }

    async fn cancel(&self) {
        self.cancel_now();
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.cancel_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(body: &'static str) -> Envelope {
        Envelope::new("/queue/q", body)
    }

    #[tokio::test]
    async fn round_robin_prefetch_and_redelivery() {
        let set = QueueSet::new(QueueLimits {
            max_depth: 3,
            ..QueueLimits::default()
        });
        let mut a = set.consume("q", 1).unwrap();
        let mut b = set.consume("q", 1).unwrap();
        for m in ["1", "2", "3"] {
            set.enqueue("q", env(m)).unwrap();
        }
        let da = a.recv().await.unwrap();
        let db = b.recv().await.unwrap();
        assert_eq!(
            (&da.envelope.body[..], &db.envelope.body[..]),
            (&b"1"[..], &b"2"[..])
        );
        // Prefetch 1 each: "3" waits.
        assert_eq!(set.depth("q"), 1);
        // A NACK with requeue puts "1" back first, marked; "3" stays behind it.
        a.acker()
            .settle(da.tag, false, Settle::Requeue)
            .await
            .unwrap();
        let again = a.recv().await.unwrap();
        assert!(again.redelivered);
        assert_eq!(&again.envelope.body[..], b"1");
        // b leaves without acknowledging "2": it comes back, marked, to a once a has room.
        drop(b);
        a.acker()
            .settle(again.tag, false, Settle::Ack)
            .await
            .unwrap();
        let next = a.recv().await.unwrap();
        assert_eq!(
            (&next.envelope.body[..], next.redelivered),
            (&b"2"[..], true)
        );
        // Depth bound: ready messages only.
        for m in ["4", "5"] {
            set.enqueue("q", env(m)).unwrap();
        }
        assert_eq!(set.depth("q"), 3);
        assert_eq!(
            set.enqueue("q", env("6")),
            Err(BusError::QueueFull("q".into()))
        );
    }

    #[tokio::test]
    async fn cumulative_ack() {
        let set = QueueSet::new(QueueLimits::default());
        let mut c = set.consume("q", 10).unwrap();
        for m in ["1", "2", "3"] {
            set.enqueue("q", env(m)).unwrap();
        }
        let mut tags = Vec::new();
        for _ in 0..3 {
            tags.push(c.recv().await.unwrap().tag);
        }
        c.acker().settle(tags[1], true, Settle::Ack).await.unwrap();
        drop(c);
        // Only "3" was left unacknowledged.
        assert_eq!(set.depth("q"), 1);
    }
}
