//! Session counters and the session-limit permit.

use std::collections::HashMap;
use std::net::IpAddr;
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
    refused_address_total: AtomicU64,
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
    /// New sessions refused because their client address held `max_sessions_per_address`.
    pub sessions_refused_address_total: u64,
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
            sessions_refused_address_total: c.refused_address_total.load(Ordering::Relaxed),
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
            address: None,
        })
    }

    /// Counts a session refused for its client address.
    pub(crate) fn refused_for_address(&self) {
        self.inner
            .refused_address_total
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Open sessions per client address group ([`crate::listen::address_key`]).
pub(crate) type PerAddress = Arc<parking_lot::Mutex<HashMap<IpAddr, usize>>>;

/// One session counted against its client address; uncounted on drop.
#[derive(Debug)]
pub(crate) struct AddressSlot {
    pub(crate) map: PerAddress,
    pub(crate) key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.map.lock();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Holds one session slot; released on drop.
#[derive(Debug)]
pub(crate) struct SessionPermit {
    metrics: SockJsMetrics,
    slot: Option<usize>,
    /// The session's place under `max_sessions_per_address` (dropped with the permit).
    pub(crate) address: Option<AddressSlot>,
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
