//! Local fan-out: from one bus delivery to every local subscriber.
//!
//! The bus hands a node one copy of each message, whatever the number of local subscribers (one
//! exclusive queue per node, never one per subscription). The hub then:
//!
//! 1. finds the local subscribers (topic -> subscribers; user -> queue -> subscribers);
//! 2. builds the MESSAGE body and shared headers once per STOMP version ([`stomp::MessageTemplate`]);
//! 3. splices each recipient's `subscription`, `message-id` and `ack` into one shared buffer and hands each
//!    session its slice, a cheap reference-counted [`Bytes`];
//! 4. never waits for a session: each has a bounded outbound queue, and a session whose queue is full is
//!    a slow consumer. It is closed (counted and logged), so one stuck client can neither stall the others
//!    nor make the node buffer without bound (the nats-server policy).
//!
//! The hub also keeps the node's topic interest: it binds a topic on the bus when its first local
//! subscriber arrives and unbinds it after the last one leaves. Binding is serialised by an async lock so
//! a bind and an unbind of the same topic can never be reordered.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use broker_bridge::{Delivery, Target};
use bytes::BytesMut;
use parking_lot::RwLock;
use stomp::{AckMode, MessageTemplate, Version};
use tokio_util::sync::CancellationToken;

use crate::destination::SubscribeTarget;
use crate::session::SubState;

/// How the hub tells the bus which topics this node wants.
#[async_trait]
pub trait Interest: Send + Sync + 'static {
    async fn bind(&self, topic: &str) -> Result<(), String>;
    async fn unbind(&self, topic: &str) -> Result<(), String>;
}

/// The hub's end of one session: its outbound queue and the switch that closes it.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// Server-unique session number.
    pub session: u64,
    pub version: Version,
    pub queue: Arc<crate::queue::Outbound>,
    /// Cancelled when the hub gives up on the session (slow consumer).
    pub kill: CancellationToken,
}

#[derive(Debug, Clone)]
struct Subscriber {
    handle: SessionHandle,
    sub: Arc<SubState>,
}

#[derive(Debug, Default)]
struct State {
    topics: HashMap<String, Vec<Subscriber>>,
    users: HashMap<String, HashMap<String, Vec<Subscriber>>>,
}

/// Counters, readable at any time.
#[derive(Debug, Default)]
pub struct HubMetrics {
    pub deliveries: AtomicU64,
    pub slow_consumers: AtomicU64,
    pub undeliverable: AtomicU64,
}

/// The local fan-out hub of one gateway node.
pub struct Hub {
    state: RwLock<State>,
    interest: Arc<dyn Interest>,
    bind_lock: tokio::sync::Mutex<()>,
    pub metrics: HubMetrics,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl Hub {
    pub fn new(interest: Arc<dyn Interest>) -> Self {
        Self {
            state: RwLock::new(State::default()),
            interest,
            bind_lock: tokio::sync::Mutex::new(()),
            metrics: HubMetrics::default(),
        }
    }

    /// Adds a subscription. For a topic, binds it on the bus when it is the first local subscriber.
    pub async fn subscribe(
        &self,
        handle: SessionHandle,
        sub: Arc<SubState>,
        target: &SubscribeTarget,
        user: Option<&str>,
    ) -> Result<(), String> {
        let entry = Subscriber { handle, sub };
        match target {
            SubscribeTarget::Topic(topic) => {
                let _guard = self.bind_lock.lock().await;
                let first = {
                    let mut st = self.state.write();
                    let list = st.topics.entry(topic.clone()).or_default();
                    list.push(entry.clone());
                    list.len() == 1
                };
                if first && let Err(e) = self.interest.bind(topic).await {
                    self.remove_topic_entry(topic, entry.handle.session, entry.sub.index);
                    return Err(e);
                }
                Ok(())
            }
            SubscribeTarget::UserQueue(queue) => {
                let user = user.ok_or("anonymous sessions have no user queue")?;
                self.state
                    .write()
                    .users
                    .entry(user.to_owned())
                    .or_default()
                    .entry(queue.clone())
                    .or_default()
                    .push(entry);
                Ok(())
            }
        }
    }

    fn remove_topic_entry(&self, topic: &str, session: u64, index: u32) -> bool {
        let mut st = self.state.write();
        let Some(list) = st.topics.get_mut(topic) else {
            return false;
        };
        list.retain(|s| !(s.handle.session == session && s.sub.index == index));
        if list.is_empty() {
            st.topics.remove(topic);
            true
        } else {
            false
        }
    }

    /// Removes a subscription; unbinds the topic after its last local subscriber.
    pub async fn unsubscribe(
        &self,
        session: u64,
        sub: &SubState,
        target: &SubscribeTarget,
        user: Option<&str>,
    ) {
        match target {
            SubscribeTarget::Topic(topic) => {
                let _guard = self.bind_lock.lock().await;
                if self.remove_topic_entry(topic, session, sub.index)
                    && let Err(e) = self.interest.unbind(topic).await
                {
                    tracing::warn!(topic, error = %e, "unbind failed");
                }
            }
            SubscribeTarget::UserQueue(queue) => {
                let Some(user) = user else { return };
                let mut st = self.state.write();
                if let Some(queues) = st.users.get_mut(user) {
                    if let Some(list) = queues.get_mut(queue) {
                        list.retain(|s| !(s.handle.session == session && s.sub.index == sub.index));
                        if list.is_empty() {
                            queues.remove(queue);
                        }
                    }
                    if queues.is_empty() {
                        st.users.remove(user);
                    }
                }
            }
        }
    }

    /// Number of local subscribers of a topic.
    pub fn topic_subscribers(&self, topic: &str) -> usize {
        self.state.read().topics.get(topic).map_or(0, Vec::len)
    }

    /// Delivers one bus message to its local subscribers. Never waits.
    pub fn dispatch(&self, delivery: &Delivery) {
        let st = self.state.read();
        let (subs, destination): (&[Subscriber], std::borrow::Cow<'_, str>) = match &delivery.target
        {
            Target::Topic(topic) => match st.topics.get(topic) {
                Some(list) => (list, delivery.envelope.destination.as_str().into()),
                None => return,
            },
            Target::User { user, queue } => match st.users.get(user).and_then(|q| q.get(queue)) {
                Some(list) => (list, format!("/user/queue/{queue}").into()),
                None => {
                    self.metrics.undeliverable.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        };
        let env = &delivery.envelope;
        let mut extra = stomp::Headers::default();
        for (k, v) in &env.headers {
            extra.push(k, v);
        }
        // One template per STOMP version present among the recipients (header escaping differs).
        let mut templates: [Option<MessageTemplate>; 3] = [None, None, None];
        let mut buf = BytesMut::with_capacity(subs.len().min(1024) * (env.body.len() + 160));
        for s in subs {
            let slot = match s.handle.version {
                Version::V1_0 => 0,
                Version::V1_1 => 1,
                Version::V1_2 => 2,
            };
            let template = templates[slot].get_or_insert_with(|| {
                MessageTemplate::new(
                    &destination,
                    env.content_type.as_deref(),
                    &extra,
                    env.body.clone(),
                    s.handle.version,
                )
            });
            let seq = s.sub.delivered.fetch_add(1, Ordering::Relaxed) + 1;
            let id = s.sub.message_id(seq);
            let ack = (s.sub.ack != AckMode::Auto).then_some(id.as_str());
            if template.encode_to(&s.sub.id, &id, ack, &mut buf).is_err() {
                // A header this version cannot carry (a line feed in a 1.0 value): skip the recipient.
                self.metrics.undeliverable.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let frame = buf.split().freeze();
            match s.handle.queue.try_push(frame) {
                Ok(()) => {
                    self.metrics.deliveries.fetch_add(1, Ordering::Relaxed);
                }
                Err(crate::queue::PushError::Full) => {
                    if !s.handle.kill.is_cancelled() {
                        self.metrics.slow_consumers.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            session = s.handle.session,
                            "slow consumer: outbound queue full, closing"
                        );
                        s.handle.kill.cancel();
                    }
                }
                Err(crate::queue::PushError::Closed) => {}
            }
        }
    }
}
