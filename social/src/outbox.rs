//! Every push made after a commit, in one place ([`Outbox`]).
//!
//! * **Transactional pushes** (chat): written with [`stage`] in the transaction of the change they
//!   announce, published after the commit ([`Outbox::deliver`], [`Outbox::publish_all`]) and deleted
//!   once the bus accepted them. Rows left behind (bus down, publish timed out, process died between
//!   commit and publish) are re-sent by the sweeper ([`Outbox::sweep`], run by [`crate::jobs`]).
//! * **Direct pushes** (alarms, whose stored row is the record): published once after the commit
//!   ([`Outbox::notify_user`], [`Outbox::to_topic`]); a refusal is logged and counted, not retried.
//!
//! Target encoding in `outbox.target`: `topic:{name}` or `user:{queue}:{user}` (queue names have
//! no `:`; user ids may), or the name of a kind whose pushes a feature rebuilds from its own rows
//! (a [`Rebuild`] registered with [`Outbox::register`]; chat's `messages` rows hold the ids of a
//! batch of `/app/send` messages).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use broker_bridge::{Bus, Envelope, Target};
use serde::Serialize;
use sqlx::AnyConnection;

use crate::store::chat::{NewOutbox, OutboxRow, outbox_insert};
use crate::store::{Store, StoreResult};
use crate::time::now_micros;

/// How long one publish may take before it counts as failed (the in-process bus waits while a
/// node's inbox is full; the row is then left to the sweeper).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Age before the sweeper considers a row abandoned by the request that wrote it.
pub const SWEEP_GRACE: Duration = Duration::from_secs(5);
/// How often the sweeper looks.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait between two attempts at one row.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Rows older than this are dropped (with an error in the log) instead of retried.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// Rows handled per sweep.
const SWEEP_BATCH: i64 = 100;

/// One push to make after the commit.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Where it goes.
    pub target: Target,
    /// What goes.
    pub envelope: Envelope,
}

impl Outgoing {
    /// `payload` as JSON to `/topic/{topic}`.
    pub fn topic<T: Serialize>(topic: &str, payload: &T) -> serde_json::Result<Outgoing> {
        Ok(Outgoing {
            target: Target::topic(topic),
            envelope: Envelope::new(format!("/topic/{topic}"), serde_json::to_vec(payload)?)
                .with_content_type("application/json"),
        })
    }

    /// `payload` as JSON to `/user/queue/{queue}` of `user`.
    pub fn user<T: Serialize>(
        user: &str,
        queue: &str,
        payload: &T,
    ) -> serde_json::Result<Outgoing> {
        Ok(Outgoing {
            target: Target::user(user, queue),
            envelope: Envelope::new(format!("/user/queue/{queue}"), serde_json::to_vec(payload)?)
                .with_content_type("application/json"),
        })
    }

    /// Adds an envelope header.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Outgoing {
        self.envelope = self.envelope.with_header(name, value);
        self
    }
}

/// Rebuilds the pushes of an outbox row of one kind from the feature's own rows (the row's body
/// names them), for the sweeper.
#[async_trait]
pub trait Rebuild: Send + Sync {
    /// The pushes of a row with `body`; `None` when the body is malformed (the row is dropped).
    async fn rebuild(&self, body: &[u8]) -> StoreResult<Option<Vec<Outgoing>>>;
}

/// Publishes pushes through the bus and keeps the outbox table (see the module docs).
#[derive(Clone)]
pub struct Outbox {
    store: Store,
    bus: Bus,
    failed: Arc<AtomicU64>,
    rebuilders: Arc<RwLock<HashMap<String, Arc<dyn Rebuild>>>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Pushes written to the outbox, to deliver after the commit.
#[derive(Debug, Default)]
#[must_use = "deliver staged pushes after the commit"]
pub struct Staged(Vec<(i64, Outgoing)>);

impl Staged {
    /// How many pushes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn encode_target(t: &Target) -> String {
    match t {
        Target::Topic(name) => format!("topic:{name}"),
        Target::User { user, queue } => format!("user:{queue}:{user}"),
    }
}

fn decode_target(s: &str) -> Option<Target> {
    if let Some(name) = s.strip_prefix("topic:") {
        return Some(Target::topic(name));
    }
    let (queue, user) = s.strip_prefix("user:")?.split_once(':')?;
    Some(Target::user(user, queue))
}

/// Writes `items` to the outbox in the caller's transaction.
pub async fn stage(conn: &mut AnyConnection, items: Vec<Outgoing>, at: i64) -> StoreResult<Staged> {
    let mut staged = Vec::with_capacity(items.len());
    for item in items {
        let target = encode_target(&item.target);
        let headers = if item.envelope.headers.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&item.envelope.headers).unwrap_or_default())
        };
        let id = outbox_insert(
            &mut *conn,
            &NewOutbox {
                target: &target,
                destination: &item.envelope.destination,
                content_type: item.envelope.content_type.as_deref(),
                headers: headers.as_deref(),
                body: &item.envelope.body,
            },
            at,
        )
        .await?;
        staged.push((id, item));
    }
    Ok(Staged(staged))
}

impl Outbox {
    /// An outbox over `store`, publishing on `bus`.
    #[must_use]
    pub fn new(store: Store, bus: Bus) -> Self {
        Self {
            store,
            bus,
            failed: Arc::new(AtomicU64::new(0)),
            rebuilders: Arc::default(),
        }
    }

    /// The same outbox publishing on another bus.
    #[must_use]
    pub fn with_bus(&self, bus: Bus) -> Self {
        Self {
            bus,
            ..self.clone()
        }
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Makes the sweeper rebuild rows whose target is `kind` with `rebuild`.
    pub fn register(&self, kind: &str, rebuild: Arc<dyn Rebuild>) {
        self.rebuilders
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(kind.to_owned(), rebuild);
    }

    fn rebuilder(&self, kind: &str) -> Option<Arc<dyn Rebuild>> {
        self.rebuilders
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(kind)
            .cloned()
    }

    /// Pushes `payload` to every live session of `user` subscribed to `/user/queue/notify`
    /// (a direct push: not retried).
    pub async fn notify_user<T: Serialize>(&self, user: &str, payload: &T) {
        self.to_user(user, "notify", payload).await;
    }

    /// Pushes `payload` to `/user/queue/{queue}` of `user` (a direct push: not retried).
    pub async fn to_user<T: Serialize>(&self, user: &str, queue: &str, payload: &T) {
        let Some(env) = envelope(&format!("/user/queue/{queue}"), payload) else {
            return;
        };
        if let Err(e) = self.bus.publish(Target::user(user, queue), env).await {
            self.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%user, %queue, error = %e, "push to user failed");
        }
    }

    /// Publishes `payload` to `/topic/{topic}` (a direct push: not retried); false when the bus
    /// refused it.
    pub async fn to_topic<T: Serialize>(&self, topic: &str, payload: &T) -> bool {
        let Some(env) = envelope(&format!("/topic/{topic}"), payload) else {
            return false;
        };
        match self.bus.publish(Target::topic(topic), env).await {
            Ok(()) => true,
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%topic, error = %e, "publish to topic failed");
                false
            }
        }
    }

    /// Direct pushes the bus refused since start.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Publishes one push, bounded by [`PUBLISH_TIMEOUT`]; false when the bus refused or timed out.
    pub async fn publish(&self, item: Outgoing) -> bool {
        let bus = &self.bus;
        match tokio::time::timeout(
            PUBLISH_TIMEOUT,
            bus.publish(item.target.clone(), item.envelope),
        )
        .await
        {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(target = ?item.target, error = %e, "chat push refused by the bus; left in the outbox");
                false
            }
            Err(_) => {
                tracing::warn!(target = ?item.target, "chat push timed out; left in the outbox");
                false
            }
        }
    }

    /// Publishes `pushes` keeping the order of those with the same destination (a topic, or a
    /// user's queues): one chain per destination, the chains concurrently, so a batch over many rooms
    /// costs about one confirmation round trip per push of its busiest destination, not per push.
    /// True when the bus accepted every push within [`PUBLISH_TIMEOUT`] (one deadline for the whole
    /// batch rather than a timer per push: a batch is kept in, or left to, the outbox as a whole).
    pub async fn publish_all(&self, pushes: Vec<Outgoing>) -> bool {
        let bus = &self.bus;
        let mut chains: Vec<(String, Vec<Outgoing>)> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for push in pushes {
            let key = match &push.target {
                Target::Topic(name) => format!("topic {name}"),
                Target::User { user, .. } => format!("user {user}"),
            };
            let i = match index.get(&key) {
                Some(&i) => i,
                None => {
                    chains.push((key.clone(), Vec::new()));
                    index.insert(key, chains.len() - 1);
                    chains.len() - 1
                }
            };
            chains[i].1.push(push);
        }
        let runs = chains.into_iter().map(|(key, chain)| async move {
            for push in chain {
                if let Err(e) = bus.publish(push.target, push.envelope).await {
                    tracing::warn!(destination = %key, error = %e, "chat push refused by the bus; left in the outbox");
                    return false;
                }
            }
            true
        });
        match tokio::time::timeout(PUBLISH_TIMEOUT, futures_util::future::join_all(runs)).await {
            Ok(done) => done.into_iter().all(|ok| ok),
            Err(_) => {
                tracing::warn!("chat pushes timed out; left in the outbox");
                false
            }
        }
    }

    /// Publishes staged pushes in order (after the commit) and deletes the accepted ones from the
    /// outbox. Stops at the first failure: the rest stay for the sweeper, which keeps their order.
    pub async fn deliver(&self, staged: Staged) {
        let mut done = Vec::with_capacity(staged.0.len());
        for (id, item) in staged.0 {
            if !self.publish(item).await {
                break;
            }
            done.push(id);
        }
        self.remove(&done).await;
    }

    async fn remove(&self, ids: &[i64]) {
        if ids.is_empty() {
            return;
        }
        if let Err(e) = self.store.outbox_remove(ids).await {
            // The sweeper will publish these again; the gateway drops chat duplicates by
            // `x-instar-message-id`.
            tracing::warn!(error = %e, ?ids, "could not delete delivered outbox rows");
        }
    }

    /// One sweep: publishes the rows older than `min_age` whose backoff has passed, oldest first, and
    /// deletes the accepted ones. Each attempt is claimed in the database first, so several processes
    /// may sweep one database. Stops at the first failure. Returns how many rows were delivered.
    pub async fn sweep(&self, min_age: Duration) -> StoreResult<usize> {
        let now = now_micros();
        let rows = self
            .store
            .outbox_due(now.saturating_sub(micros(min_age)), now, SWEEP_BATCH)
            .await?;
        let mut done = Vec::new();
        let mut dropped = Vec::new();
        for row in rows {
            if row.create_at < now.saturating_sub(micros(MAX_AGE)) {
                tracing::error!(id = row.id, target = %row.target, destination = %row.destination,
                    attempts = row.attempts, "chat push undeliverable for too long; dropped from the outbox");
                dropped.push(row.id);
                continue;
            }
            let items = match self.rebuilder(&row.target) {
                Some(kind) => kind.rebuild(&row.body).await?,
                None => row_to_outgoing(&row).map(|item| vec![item]),
            };
            let Some(items) = items else {
                tracing::error!(id = row.id, target = %row.target, "malformed outbox row; dropped");
                dropped.push(row.id);
                continue;
            };
            let next = now.saturating_add(micros(backoff(row.attempts)));
            if !self.store.outbox_claim(row.id, now, next).await? {
                continue;
            }
            let mut all = true;
            for item in items {
                if !self.publish(item).await {
                    all = false;
                    break;
                }
            }
            if !all {
                break;
            }
            tracing::info!(
                id = row.id,
                attempts = row.attempts + 1,
                "chat push re-sent from the outbox"
            );
            done.push(row.id);
        }
        let delivered = done.len();
        done.extend(dropped);
        self.remove(&done).await;
        Ok(delivered)
    }
}

fn envelope<T: Serialize>(destination: &str, payload: &T) -> Option<Envelope> {
    match serde_json::to_vec(payload) {
        Ok(body) => Some(Envelope::new(destination, body).with_content_type("application/json")),
        Err(e) => {
            tracing::error!(error = %e, %destination, "serialising a push");
            None
        }
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Backoff before the attempt after `attempts` failed ones: 1 s, 2 s, 4 s, … up to
/// [`MAX_BACKOFF`].
fn backoff(attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 16)).unwrap_or(16);
    Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
}

fn row_to_outgoing(row: &OutboxRow) -> Option<Outgoing> {
    let target = decode_target(&row.target)?;
    let mut envelope = Envelope::new(row.destination.clone(), row.body.clone());
    envelope.content_type = row.content_type.clone();
    if let Some(h) = row.headers.as_deref() {
        envelope.headers = serde_json::from_str::<Vec<(String, String)>>(h).ok()?;
    }
    Some(Outgoing { target, envelope })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_round_trip() {
        for t in [
            Target::topic("chat.5"),
            Target::user("alice01", "notify"),
            Target::user("we:ird", "$control"),
        ] {
            assert_eq!(decode_target(&encode_target(&t)), Some(t));
        }
        assert_eq!(decode_target("nonsense"), None);
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
