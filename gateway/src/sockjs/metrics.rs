//! Session counters and the session-limit permit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Transports, in the order of [`MetricsSnapshot::open_by_transport`].
pub const TRANSPORTS: [&str; 5] = [
    "websocket",
    "xhr_streaming",
    "xhr",
    "eventsource",
    "raw-websocket",
];

#[derive(Debug, Default)]
struct Counters {
    open: AtomicUsize,
    open_by_transport: [AtomicUsize; 5],
    opened_total: AtomicU64,
    refused_total: AtomicU64,
}

/// Live counters of one SockJS endpoint. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SockJsMetrics {
    inner: Arc<Counters>,
}

/// A point-in-time copy of [`SockJsMetrics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Sessions open now, all transports.
    pub sessions_open: usize,
    /// Sessions open now per transport, `(name, count)` in [`TRANSPORTS`]
    /// order.
    pub open_by_transport: Vec<(&'static str, usize)>,
    /// Sessions opened since start.
    pub sessions_opened_total: u64,
    /// New sessions refused because `max_sessions` was reached.
    pub sessions_refused_total: u64,
}

impl SockJsMetrics {
    /// Reads the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let c = &self.inner;
        MetricsSnapshot {
            sessions_open: c.open.load(Ordering::Relaxed),
            open_by_transport: TRANSPORTS
                .iter()
                .zip(c.open_by_transport.iter())
                .map(|(name, n)| (*name, n.load(Ordering::Relaxed)))
                .collect(),
            sessions_opened_total: c.opened_total.load(Ordering::Relaxed),
            sessions_refused_total: c.refused_total.load(Ordering::Relaxed),
        }
    }

    /// Takes one session slot, or `None` (and counts a refusal) when `max`
    /// sessions are already open.
    pub(crate) fn try_open(&self, transport: &'static str, max: usize) -> Option<SessionPermit> {
        let c = &self.inner;
        let admitted = c
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            c.refused_total.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let slot = TRANSPORTS.iter().position(|t| *t == transport);
        if let Some(i) = slot {
            c.open_by_transport[i].fetch_add(1, Ordering::Relaxed);
        }
        c.opened_total.fetch_add(1, Ordering::Relaxed);
        Some(SessionPermit {
            metrics: self.clone(),
            slot,
        })
    }
}

/// Holds one session slot; released on drop.
#[derive(Debug)]
pub(crate) struct SessionPermit {
    metrics: SockJsMetrics,
    slot: Option<usize>,
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        let c = &self.metrics.inner;
        c.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(i) = self.slot {
            c.open_by_transport[i].fetch_sub(1, Ordering::Relaxed);
        }
    }
}
