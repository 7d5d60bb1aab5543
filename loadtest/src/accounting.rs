//! Per-stream delivery accounting: what arrived, what was lost, duplicated or reordered.
//!
//! Every sender numbers its messages `0, 1, 2, …` within its *stream*. A receiver keeps one
//! [`SeqTracker`] per stream it hears, fed with each arriving sequence number:
//!
//! - **unique**: distinct sequence numbers seen;
//! - **duplicated**: arrivals of a number already seen;
//! - **reordered**: arrivals of a new number lower than the highest seen so far (it overtook nobody,
//!   something overtook it);
//! - **lost**: at the end, `sent − unique` for the streams the receiver was meant to get
//!   ([`SeqTracker::lost`]).
//!
//! The tracker costs a counter while messages arrive in order; only numbers seen beyond a gap are
//! remembered individually, until the gap fills.

use std::collections::BTreeSet;

use serde::Serialize;

/// The arrivals of one stream at one receiver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqTracker {
    /// Every number below this has been seen.
    contiguous: u64,
    /// Numbers above `contiguous` that have been seen (non-empty only while there is a gap).
    ahead: BTreeSet<u64>,
    /// Highest number seen, plus one (0 before the first arrival).
    high_water: u64,
    arrivals: u64,
    duplicated: u64,
    reordered: u64,
}

/// What [`SeqTracker::observe`] concluded about one arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next number after the highest seen, or a jump forward over a gap.
    InOrder,
    /// A new number below the highest seen.
    Reordered,
    /// A number seen before.
    Duplicate,
}

impl SeqTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the arrival of `seq`.
    pub fn observe(&mut self, seq: u64) -> Arrival {
        self.arrivals += 1;
        if seq < self.contiguous || self.ahead.contains(&seq) {
            self.duplicated += 1;
            return Arrival::Duplicate;
        }
        let late = seq < self.high_water;
        if late {
            self.reordered += 1;
        }
        self.high_water = self.high_water.max(seq + 1);
        if seq == self.contiguous {
            self.contiguous += 1;
            while self.ahead.remove(&self.contiguous) {
                self.contiguous += 1;
            }
        } else {
            self.ahead.insert(seq);
        }
        if late {
            Arrival::Reordered
        } else {
            Arrival::InOrder
        }
    }

    /// Distinct numbers seen.
    pub fn unique(&self) -> u64 {
        self.contiguous + self.ahead.len() as u64
    }

    /// All arrivals, duplicates included.
    pub fn arrivals(&self) -> u64 {
        self.arrivals
    }

    /// Arrivals of numbers already seen.
    pub fn duplicated(&self) -> u64 {
        self.duplicated
    }

    /// Arrivals of new numbers below the highest seen.
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// Numbers in `0..sent` never seen.
    pub fn lost(&self, sent: u64) -> u64 {
        let seen_below = self.contiguous.min(sent) + self.ahead.range(..sent).count() as u64;
        sent.saturating_sub(seen_below.min(sent))
    }

    /// Seen numbers that the sender never reported sending (`>= sent`): a bookkeeping bug or a
    /// foreign sender on the destination.
    pub fn unexpected(&self, sent: u64) -> u64 {
        self.contiguous.saturating_sub(sent) + self.ahead.range(sent..).count() as u64
    }
}

/// Totals over receivers and streams.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Messages the senders sent (each counted once).
    pub sent: u64,
    /// Deliveries that should happen: for each receiver, the messages of the streams it expects.
    pub expected: u64,
    /// Deliveries that happened, duplicates included.
    pub delivered: u64,
    /// Distinct deliveries of expected messages.
    pub unique: u64,
    /// `expected − unique`.
    pub lost: u64,
    /// Deliveries of a message the receiver already had.
    pub duplicated: u64,
    /// Deliveries that arrived after a later message of the same stream.
    pub reordered: u64,
    /// Deliveries from streams the receiver should not hear at all (e.g. another user's messages).
    pub misrouted: u64,
}

impl Tally {
    /// Adds one receiver's tracker for a stream it expects, of which `sent` messages were sent.
    pub fn add_expected(&mut self, tracker: &SeqTracker, sent: u64) {
        self.expected += sent;
        self.delivered += tracker.arrivals();
        let lost = tracker.lost(sent);
        self.unique += sent - lost;
        self.lost += lost;
        self.duplicated += tracker.duplicated();
        self.reordered += tracker.reordered();
        self.misrouted += tracker.unexpected(sent);
    }

    /// Adds one receiver's tracker for a stream it should never have heard.
    pub fn add_unexpected(&mut self, tracker: &SeqTracker) {
        self.delivered += tracker.arrivals();
        self.misrouted += tracker.arrivals();
    }

    /// Adds another tally (receivers on other nodes, say).
    pub fn merge(&mut self, other: &Tally) {
        self.sent += other.sent;
        self.expected += other.expected;
        self.delivered += other.delivered;
        self.unique += other.unique;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.misrouted += other.misrouted;
    }
}
