//! Live pushes to users and topics through the bus, always after the database commit.
//!
//! Alarms are stored first (and listed by `GET /api/alarm/getList` whatever happens here); a push
//! that the bus refuses is logged and counted, not retried, because the stored alarm is the record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use broker_bridge::{Bus, Envelope, Target};
use serde::Serialize;

/// Publishes JSON payloads to user queues and topics.
#[derive(Debug, Clone)]
pub struct Notifier {
    bus: Bus,
    failed: Arc<AtomicU64>,
}

impl Notifier {
    /// A notifier on `bus`.
    pub fn new(bus: Bus) -> Self {
        Self {
            bus,
            failed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Pushes `payload` to every live session of `user` subscribed to `/user/queue/notify`.
    pub async fn notify_user<T: Serialize>(&self, user: &str, payload: &T) {
        self.to_user(user, "notify", payload).await;
    }

    /// Pushes `payload` to `/user/queue/{queue}` of `user`.
    pub async fn to_user<T: Serialize>(&self, user: &str, queue: &str, payload: &T) {
        let Some(env) = envelope(&format!("/user/queue/{queue}"), payload) else {
            return;
        };
        if let Err(e) = self.bus.publish(Target::user(user, queue), env).await {
            self.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%user, %queue, error = %e, "push to user failed");
        }
    }

    /// Publishes `payload` to `/topic/{topic}`.
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

    /// Pushes the bus refused since start.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
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
