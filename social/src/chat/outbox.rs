//! The transactional outbox: pushes are written in the transaction of the change they announce,
//! published after the commit, and deleted once the bus accepted them. Rows left behind (bus down,
//! publish timed out, process died between commit and publish) are re-sent by a sweeper.
//!
//! Target encoding in `outbox.target`: `topic:{name}` or `user:{queue}:{user}` (queue names have
//! no `:`; user ids may), or `messages` for a batch of `/app/send` messages whose pushes the
//! sweeper rebuilds from the stored messages (body: their ids; see [`super::writer`]).

use std::time::Duration;

use broker_bridge::{Envelope, Target};
use serde::Serialize;
use sqlx::AnyConnection;

use super::writer::{self, MESSAGES_TARGET};
use crate::app::Ctx;
use crate::store::StoreResult;
use crate::store::chat::{NewOutbox, OutboxRow, outbox_insert};
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

/// Publishes one push, bounded by [`PUBLISH_TIMEOUT`]; false when the bus refused or timed out.
pub(crate) async fn publish(ctx: &Ctx, item: Outgoing) -> bool {
    let bus = ctx.notifier.bus();
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
pub(crate) async fn publish_all(ctx: &Ctx, pushes: Vec<Outgoing>) -> bool {
    let bus = ctx.notifier.bus();
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
pub async fn deliver(ctx: &Ctx, staged: Staged) {
    let mut done = Vec::with_capacity(staged.0.len());
    for (id, item) in staged.0 {
        if !publish(ctx, item).await {
            break;
        }
        done.push(id);
    }
    remove(ctx, &done).await;
}

async fn remove(ctx: &Ctx, ids: &[i64]) {
    if ids.is_empty() {
        return;
    }
    if let Err(e) = ctx.store.outbox_remove(ids).await {
        // The sweeper will publish these again; the gateway drops chat duplicates by
        // `x-instar-message-id`.
        tracing::warn!(error = %e, ?ids, "could not delete delivered outbox rows");
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

/// One sweep: publishes the rows older than `min_age` whose backoff has passed, oldest first, and
/// deletes the accepted ones. Each attempt is claimed in the database first, so several processes
/// may sweep one database. Stops at the first failure. Returns how many rows were delivered.
pub async fn sweep(ctx: &Ctx, min_age: Duration) -> StoreResult<usize> {
    let now = now_micros();
    let rows = ctx
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
        let items = if row.target == MESSAGES_TARGET {
            writer::rebuild(ctx, &row.body).await?
        } else {
            row_to_outgoing(&row).map(|item| vec![item])
        };
        let Some(items) = items else {
            tracing::error!(id = row.id, target = %row.target, "malformed outbox row; dropped");
            dropped.push(row.id);
            continue;
        };
        let next = now.saturating_add(micros(backoff(row.attempts)));
        if !ctx.store.outbox_claim(row.id, now, next).await? {
            continue;
        }
        let mut all = true;
        for item in items {
            if !publish(ctx, item).await {
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
    remove(ctx, &done).await;
    Ok(delivered)
}

/// Starts the background sweeper on the current Tokio runtime (none: logged, not started). It
/// stops when the store's pool is closed.
pub fn spawn_sweeper(ctx: &Ctx) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("no Tokio runtime: the chat outbox sweeper is not running");
        return;
    };
    let ctx = ctx.clone();
    rt.spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if ctx.store.pool().is_closed() {
                break;
            }
            if let Err(e) = sweep(&ctx, SWEEP_GRACE).await {
                tracing::warn!(error = %e, "chat outbox sweep failed");
            }
        }
    });
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
