//! The time origin, and latency histograms shared by thousands of receiver tasks.
//!
//! Receivers record into one of a few [`Shard`]s (picked by receiver index), each an HDR histogram
//! behind its own mutex, so two worker threads rarely meet on the same lock and no receiver carries a
//! histogram of its own (10,000 × ~100 KiB would dwarf the sessions being measured). The shards are
//! merged once at the end.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Monotonic time origin for a run; every timestamp in a run is nanoseconds since it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock whose zero is now.
    pub fn start() -> Self {
        Clock {
            origin: Instant::now(),
        }
    }

    /// Nanoseconds since the origin.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `ns` after the origin.
    pub fn instant_at(&self, ns: u64) -> Instant {
        self.origin + std::time::Duration::from_nanos(ns)
    }
}

/// Highest latency recorded exactly, in microseconds (1 hour); larger values are clamped.
const MAX_MICROS: u64 = 3_600_000_000;

/// A fresh histogram in microseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("constant histogram bounds are valid")
}

/// One lock's worth of recordings.
#[derive(Debug)]
pub struct Shard {
    /// Latency of each delivery, microseconds.
    pub hist: Histogram<u64>,
    /// Deliveries recorded (also those without a usable stamp).
    pub delivered: u64,
    /// Time of the first and last delivery (ns since the origin); `u64::MAX`/0 before any.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Worst latency (microseconds) of the messages intended to leave in each [`WINDOW_NS`] of
    /// the run, by window index since the clock's origin (0: none recorded there).
    pub worst: Vec<u32>,
}

/// Width of the windows [`Recorder::worst_windows`] reports on: 100 ms of intended send time.
pub const WINDOW_NS: u64 = 100_000_000;
/// Windows kept at most (a run of over a day keeps its first day's).
const MAX_WINDOWS: usize = 864_000;

/// Latency and delivery counts for a whole run.
#[derive(Debug)]
pub struct Recorder {
    shards: Vec<Mutex<Shard>>,
}

impl Recorder {
    /// A recorder with `shards` locks (at least 1).
    pub fn new(shards: usize) -> Self {
        Recorder {
            shards: (0..shards.max(1))
                .map(|_| {
                    Mutex::new(Shard {
                        hist: new_histogram(),
                        delivered: 0,
                        first_ns: u64::MAX,
                        last_ns: 0,
                        worst: Vec::new(),
                    })
                })
                .collect(),
        }
    }

    fn shard(&self, key: usize) -> MutexGuard<'_, Shard> {
        self.shards[key % self.shards.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one delivery at `now_ns` of a message intended to leave at `sent_ns` (None when the
    /// message had no stamp).
    pub fn record(&self, key: usize, now_ns: u64, sent_ns: Option<u64>) {
        let mut s = self.shard(key);
        s.delivered += 1;
        s.first_ns = s.first_ns.min(now_ns);
        s.last_ns = s.last_ns.max(now_ns);
        if let Some(sent) = sent_ns {
            let micros = (now_ns.saturating_sub(sent) / 1_000).clamp(1, MAX_MICROS);
            s.hist.saturating_record(micros);
            let w = usize::try_from(sent / WINDOW_NS).unwrap_or(usize::MAX);
            if w < MAX_WINDOWS {
                if s.worst.len() <= w {
                    s.worst.resize(w + 1, 0);
                }
                let m = u32::try_from(micros).unwrap_or(u32::MAX);
                s.worst[w] = s.worst[w].max(m);
            }
        }
    }

    /// The worst latency (microseconds) per [`WINDOW_NS`] of intended send time, by window index
    /// since the clock's origin; 0 where nothing was recorded.
    pub fn worst_windows(&self) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        for i in 0..self.shards.len() {
            let s = self.shard(i);
            if out.len() < s.worst.len() {
                out.resize(s.worst.len(), 0);
            }
            for (o, w) in out.iter_mut().zip(&s.worst) {
                *o = (*o).max(*w);
            }
        }
        out
    }

    /// Deliveries so far (for progress display).
    pub fn delivered(&self) -> u64 {
        (0..self.shards.len())
            .map(|i| self.shard(i).delivered)
            .sum()
    }

    /// Everything merged: (histogram, deliveries, first delivery ns, last delivery ns).
    pub fn merged(&self) -> (Histogram<u64>, u64, u64, u64) {
        let mut hist = new_histogram();
        let (mut delivered, mut first, mut last) = (0, u64::MAX, 0);
        for i in 0..self.shards.len() {
            let s = self.shard(i);
            // Same bounds on both sides: adding cannot fail.
            let _ = hist.add(&s.hist);
            delivered += s.delivered;
            first = first.min(s.first_ns);
            last = last.max(s.last_ns);
        }
        (hist, delivered, first, last)
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Recorded latencies.
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarises `hist` (microseconds).
    pub fn of(hist: &Histogram<u64>) -> Self {
        if hist.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1_000.0;
        LatencySummary {
            count: hist.len(),
            min_ms: ms(hist.min()),
            mean_ms: hist.mean() / 1_000.0,
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p90_ms: ms(hist.value_at_quantile(0.90)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            max_ms: ms(hist.max()),
        }
    }
}
