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
//!
//! Two more duties:
//! - **revoke controls**: a delivery to a user's [`CONTROL_QUEUE`] is never shown to clients; with
//!   `x-instar-control: revoke` and `x-instar-topic: T` it drops every local subscription of that user
//!   to topic `T` at once (a member who left a chat room stops receiving before any other message);
//! - **replay buffering**: while a subscription replays stored messages ([`crate::replay`]), its live
//!   deliveries are held instead of queued.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use broker_bridge::{Delivery, Target};
use bytes::BytesMut;
use parking_lot::RwLock;
use stomp::{AckMode, MessageTemplate, Version};
use tokio_util::sync::CancellationToken;

use crate::destination::SubscribeTarget;
use crate::replay::{ID_HEADER, parse_id};
use crate::session::SubState;

/// The user queue of control envelopes for the gateway itself (never delivered to clients; clients
/// cannot name it, `$` being outside the destination grammar).
pub const CONTROL_QUEUE: &str = "$control";
/// Header of a control envelope naming the control (`revoke`).
pub const CONTROL_HEADER: &str = "x-instar-control";
/// Header of a revoke control naming the topic (without `/topic/`).
pub const CONTROL_TOPIC_HEADER: &str = "x-instar-topic";

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
    /// The session's user (revoke controls name users).
    user: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct State {
    /// Topic (or topic pattern) -> its local subscribers.
    topics: HashMap<String, Vec<Subscriber>>,
    /// The keys of `topics` that are wildcard patterns, matched against every topic delivery.
    patterns: HashSet<String>,
    users: HashMap<String, HashMap<String, Vec<Subscriber>>>,
}

/// Says which topics belong to the application (never given to wildcard subscriptions).
pub type PrivateTopics = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Counters, readable at any time.
#[derive(Debug, Default)]
pub struct HubMetrics {
    pub deliveries: AtomicU64,
    pub slow_consumers: AtomicU64,
    pub undeliverable: AtomicU64,
    /// Subscriptions dropped by revoke controls.
    pub revoked: AtomicU64,
    /// Live deliveries held while their subscription replayed.
    pub held: AtomicU64,
    /// Deliveries dropped because their subscription had delivered that message id already.
    pub duplicates: AtomicU64,
}

/// The local fan-out hub of one gateway node.
pub struct Hub {
    state: Arc<RwLock<State>>,
    interest: Arc<dyn Interest>,
    /// The topics bound on the bus; its lock serialises binds and unbinds.
    bound: Arc<tokio::sync::Mutex<HashSet<String>>>,
    private: Option<PrivateTopics>,
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
            state: Arc::new(RwLock::new(State::default())),
            interest,
            bound: Arc::new(tokio::sync::Mutex::new(HashSet::new())),
            private: None,
            metrics: HubMetrics::default(),
        }
    }

    /// Keeps the topics `private` says belong to the application away from wildcard
    /// subscriptions (a pattern such as `#` must not tap chat rooms).
    #[must_use]
    pub fn with_private_topics(mut self, private: PrivateTopics) -> Self {
        self.private = Some(private);
        self
    }

    /// Adds a subscription. For a topic, binds it on the bus when it is the first local subscriber.
    pub async fn subscribe(
        &self,
        handle: SessionHandle,
        sub: Arc<SubState>,
        target: &SubscribeTarget,
        user: Option<&str>,
    ) -> Result<(), String> {
        let entry = Subscriber {
            handle,
            sub,
            user: user.map(Arc::from),
        };
        match target {
            SubscribeTarget::Topic(topic) | SubscribeTarget::Pattern(topic) => {
                let mut bound = self.bound.lock().await;
                {
                    let mut st = self.state.write();
                    st.topics
                        .entry(topic.clone())
                        .or_default()
                        .push(entry.clone());
                    if matches!(target, SubscribeTarget::Pattern(_)) {
                        st.patterns.insert(topic.clone());
                    }
                }
                if !bound.contains(topic) {
                    if let Err(e) = self.interest.bind(topic).await {
                        remove_topic_entry(
                            &self.state,
                            topic,
                            entry.handle.session,
                            entry.sub.index,
                        );
                        return Err(e);
                    }
                    bound.insert(topic.clone());
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
            SubscribeTarget::Queue(_) => Err("queues are not fanned out by the hub".to_owned()),
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
            SubscribeTarget::Topic(topic) | SubscribeTarget::Pattern(topic) => {
                let mut bound = self.bound.lock().await;
                remove_topic_entry(&self.state, topic, session, sub.index);
                release(&self.state, &*self.interest, &mut bound, topic).await;
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
            SubscribeTarget::Queue(_) => {}
        }
    }

    /// Carries out a control envelope sent to `user`'s [`CONTROL_QUEUE`].
    fn control(&self, user: &str, env: &broker_bridge::Envelope) {
        let header = |name: &str| {
            env.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let (Some("revoke"), Some(topic)) = (header(CONTROL_HEADER), header(CONTROL_TOPIC_HEADER))
        else {
            tracing::warn!(
                user,
                control = header(CONTROL_HEADER).unwrap_or("-"),
                "unknown control envelope ignored"
            );
            return;
        };
        let (revoked, emptied) = {
            let mut st = self.state.write();
            let Some(list) = st.topics.get_mut(topic) else {
                return;
            };
            let before = list.len();
            list.retain(|s| s.user.as_deref() != Some(user));
            let revoked = before - list.len();
            let emptied = list.is_empty();
            if emptied {
                st.topics.remove(topic);
                st.patterns.remove(topic);
            }
            (revoked, emptied)
        };
        if revoked > 0 {
            self.metrics
                .revoked
                .fetch_add(revoked as u64, Ordering::Relaxed);
            tracing::debug!(user, topic, revoked, "subscriptions revoked");
        }
        if emptied {
            // Unbinding waits on the bus: do it off the delivery path, under the bind lock.
            let (state, interest, bound) = (
                self.state.clone(),
                self.interest.clone(),
                self.bound.clone(),
            );
            let topic = topic.to_owned();
            tokio::spawn(async move {
                let mut bound = bound.lock().await;
                release(&state, &*interest, &mut bound, &topic).await;
            });
        }
    }

    /// Number of local subscribers of a topic.
    pub fn topic_subscribers(&self, topic: &str) -> usize {
        self.state.read().topics.get(topic).map_or(0, Vec::len)
    }

    /// Delivers one bus message to its local subscribers. Never waits.
    pub fn dispatch(&self, delivery: &Delivery) {
        if let Target::User { user, queue } = &delivery.target
            && queue == CONTROL_QUEUE
        {
            self.control(user, &delivery.envelope);
            return;
        }
        let st = self.state.read();
        let (subs, destination): (
            std::borrow::Cow<'_, [Subscriber]>,
            std::borrow::Cow<'_, str>,
        ) = match &delivery.target {
            Target::Topic(topic) => match self.topic_subscribers_of(&st, topic) {
                Some(list) => (list, delivery.envelope.destination.as_str().into()),
                None => return,
            },
            Target::User { user, queue } => match st.users.get(user).and_then(|q| q.get(queue)) {
                Some(list) => (
                    list.as_slice().into(),
                    format!("/user/queue/{queue}").into(),
                ),
                None => {
                    self.metrics.undeliverable.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        };
        let env = &delivery.envelope;
        let mut extra = stomp::Headers::default();
        let mut message_id = None;
        // A traced message (a chat message's broadcast or alarm) is logged (debug) with its trace
        // id and, when spans are exported, delivered in a span that is a child of the sender's.
        let span = env
            .headers
            .iter()
            .find(|(k, _)| k == broker_bridge::trace::TRACEPARENT)
            .and_then(|(_, v)| {
                let trace_id = broker_bridge::trace::trace_id(v).unwrap_or("-");
                tracing::debug!(trace_id, %destination, recipients = subs.len(), "delivering");
                broker_bridge::trace::exporting().then(|| {
                    let span = tracing::info_span!(
                        parent: None,
                        "deliver",
                        %destination,
                        recipients = subs.len(),
                        trace_id,
                    );
                    broker_bridge::trace::set_parent(&span, v);
                    span
                })
            });
        let _entered = span.as_ref().map(tracing::Span::enter);
        for (k, v) in &env.headers {
            if k == broker_bridge::trace::TRACEPARENT {
                // The trace context stays between processes (not passed on to clients).
                continue;
            }
            extra.push(k, v);
            if k == ID_HEADER {
                message_id = parse_id(v);
            }
        }
        // One template per STOMP version present among the recipients (header escaping differs).
        let mut templates: [Option<MessageTemplate>; 3] = [None, None, None];
        let mut buf = BytesMut::with_capacity(subs.len().min(1024) * (env.body.len() + 160));
        for s in subs.iter() {
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
            if let Some(mid) = message_id
                && mid <= s.sub.floor.load(Ordering::Acquire)
            {
                // Replayed already (a late publish of a message the store had).
                continue;
            }
            if let Some(mid) = message_id
                && !s.sub.seen.lock().first_time(mid)
            {
                // Delivered already (the chat service published it again).
                self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let seq = s.sub.delivered.fetch_add(1, Ordering::Relaxed) + 1;
            let id = s.sub.message_id(seq);
            let ack = (s.sub.ack != AckMode::Auto).then_some(id.as_str());
            if template.encode_to(&s.sub.id, &id, ack, &mut buf).is_err() {
                // A header this version cannot carry (a line feed in a 1.0 value): skip the recipient.
                self.metrics.undeliverable.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let frame = buf.split().freeze();
            if s.sub.replaying.load(Ordering::Acquire) {
                let mut held = s.sub.held.lock();
                if let Some(held) = held.as_mut() {
                    if held.hold(message_id, frame) {
                        self.metrics.held.fetch_add(1, Ordering::Relaxed);
                    } else if !s.handle.kill.is_cancelled() {
                        self.metrics.slow_consumers.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            session = s.handle.session,
                            "slow consumer: too many live messages during a replay, closing"
                        );
                        s.handle.kill.cancel();
                    }
                    continue;
                }
            }
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

/// Removes one subscriber of a topic (or pattern).
fn remove_topic_entry(state: &RwLock<State>, topic: &str, session: u64, index: u32) {
    let mut st = state.write();
    let Some(list) = st.topics.get_mut(topic) else {
        return;
    };
    list.retain(|s| !(s.handle.session == session && s.sub.index == index));
    if list.is_empty() {
        st.topics.remove(topic);
        st.patterns.remove(topic);
    }
}

impl Hub {
    /// The subscribers of `topic`: by name, plus those of matching patterns unless the topic is the
    /// application's. Borrowed when no pattern is subscribed (the common case).
    fn topic_subscribers_of<'a>(
        &self,
        st: &'a State,
        topic: &str,
    ) -> Option<std::borrow::Cow<'a, [Subscriber]>> {
        let exact = st.topics.get(topic);
        if st.patterns.is_empty() || self.private.as_ref().is_some_and(|p| p(topic)) {
            return exact.map(|l| l.as_slice().into());
        }
        let mut all: Vec<Subscriber> = exact.cloned().unwrap_or_default();
        for pattern in &st.patterns {
            if broker_bridge::topic_matches(pattern, topic)
                && let Some(list) = st.topics.get(pattern)
            {
                all.extend(list.iter().cloned());
            }
        }
        (!all.is_empty()).then(|| all.into())
    }
}

/// Unbinds `topic` if it is bound and has no local subscriber left. Called with the bind lock held.
async fn release(
    state: &RwLock<State>,
    interest: &dyn Interest,
    bound: &mut HashSet<String>,
    topic: &str,
) {
    if state.read().topics.contains_key(topic) || !bound.remove(topic) {
        return;
    }
    if let Err(e) = interest.unbind(topic).await {
        tracing::warn!(topic, error = %e, "unbind failed");
    }
}

/// Hands `sub` the live deliveries held during its replay (those not already replayed, see
/// [`crate::replay::ReplayBuffer::finish`]) and makes it live again, atomically with respect to
/// [`Hub::dispatch`]. Returns `false` if the session must be closed as a slow consumer.
pub fn finish_replay(
    sub: &SubState,
    queue: &crate::queue::Outbound,
    newest_replayed: Option<u64>,
) -> bool {
    let mut held = sub.held.lock();
    let buffer = held.take();
    if let Some(newest) = newest_replayed {
        sub.floor.store(newest, Ordering::Release);
    }
    let mut ok = true;
    if let Some(buffer) = buffer {
        ok = !buffer.overflowed();
        for frame in buffer.finish(newest_replayed) {
            if ok && queue.try_push(frame).is_err() {
                ok = false;
            }
        }
    }
    sub.replaying.store(false, Ordering::Release);
    ok
}
