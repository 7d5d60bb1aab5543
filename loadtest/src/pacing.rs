//! Open-loop pacing: message `i` of a stream is *intended* to leave at `offset + i × interval`.
//!
//! Latency is measured from that intended time, not from when the sender actually got round to
//! sending. If the system under test stalls the sender (a full socket, a slow server), the messages
//! that should have gone out meanwhile are sent late and their latency includes the stall. A
//! closed-loop sender would simply send fewer messages and report the stall once, which hides it
//! ("coordinated omission").

use std::time::Duration;

/// The intended send times of one stream, in nanoseconds since the run's time origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Intended time of message 0.
    pub offset_ns: u64,
    /// Gap between consecutive messages (at least 1 ns).
    pub interval_ns: u64,
}

impl Schedule {
    /// `rate` messages per second starting at `offset_ns`. Rates below 1e-9/s are clamped.
    pub fn from_rate(rate: f64, offset_ns: u64) -> Self {
        let interval = if rate.is_finite() && rate > 0.0 {
            (1e9 / rate).round()
        } else {
            1e18
        };
        Schedule {
            offset_ns,
            interval_ns: (interval as u64).max(1),
        }
    }

    /// Intended send time of message `i`.
    pub fn intended_ns(&self, i: u64) -> u64 {
        self.offset_ns
            .saturating_add(i.saturating_mul(self.interval_ns))
    }

    /// How many messages are due at `now_ns` (those with an intended time `<= now_ns`).
    pub fn due(&self, now_ns: u64) -> u64 {
        if now_ns < self.offset_ns {
            0
        } else {
            (now_ns - self.offset_ns) / self.interval_ns + 1
        }
    }

    /// How many messages fall inside `[offset, offset + duration)`.
    pub fn count_within(&self, duration: Duration) -> u64 {
        let d = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        if d == 0 {
            0
        } else {
            (d - 1) / self.interval_ns + 1
        }
    }
}
