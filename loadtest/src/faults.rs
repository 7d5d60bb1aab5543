//! Accounting of a run under faults (`loadtest faults`): what happened to every message a client
//! meant to send, what the database kept, what the receivers got, and how long the service took to
//! accept and deliver again after each injected fault.
//!
//! Every message has a stream (its room) and a sequence number in it. The sender records one
//! [`Fate`] per number; the database read at the end and the receivers give how many times each
//! number was stored and delivered. [`tally`] folds the three into the figures of the fault table:
//!
//! | figure | meaning |
//! |---|---|
//! | attempted | messages the schedule called for |
//! | written | SENDs written to a live connection (the rest fell while it was down: *not sent*) |
//! | accepted | SENDs answered by a RECEIPT (the service took responsibility) |
//! | refused | SENDs answered by an ERROR or an error receipt |
//! | unanswered | SENDs written whose connection died before any answer |
//! | stored | distinct messages in the database; *stored twice*: extra rows of one message |
//! | lost | accepted but not stored (the service broke its word) |
//! | delivered | distinct stored messages the room's receiver got; *duplicated*: extra copies |
//! | undelivered | stored but never delivered (even after reconnects and replays) |

use std::str::FromStr;

use serde::Serialize;

/// What became of one message the sender meant to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fate {
    /// Due while the sender was disconnected: never written.
    #[default]
    NotSent,
    /// Written; no answer arrived before its connection ended (or the run did).
    Unanswered,
    /// Answered by a RECEIPT.
    Accepted,
    /// Answered by an ERROR or an error receipt.
    Refused,
}

/// One stream's records: index = sequence number.
#[derive(Debug, Clone, Default)]
pub struct StreamRecord {
    /// One entry per attempted message.
    pub fates: Vec<Fate>,
    /// Rows in the database per sequence number (missing entries: 0).
    pub stored: Vec<u32>,
    /// Copies the receiver got per sequence number (missing entries: 0).
    pub delivered: Vec<u32>,
}

/// The figures of one run (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FaultTally {
    pub attempted: u64,
    pub written: u64,
    pub not_sent: u64,
    pub accepted: u64,
    pub refused: u64,
    pub unanswered: u64,
    /// Distinct messages stored.
    pub stored: u64,
    /// Extra rows of messages stored more than once.
    pub stored_twice: u64,
    /// Stored although their SEND got no RECEIPT (the answer was lost, not the message).
    pub stored_unconfirmed: u64,
    /// Stored although refused (should be 0).
    pub stored_refused: u64,
    /// Accepted and not stored.
    pub lost: u64,
    /// Distinct stored messages delivered.
    pub delivered: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Stored and never delivered.
    pub undelivered: u64,
    /// Delivered although never stored, or with a number never attempted (should be 0).
    pub phantom: u64,
}

fn at(v: &[u32], i: usize) -> u32 {
    v.get(i).copied().unwrap_or(0)
}

/// Folds the records of every stream into one tally.
pub fn tally(streams: &[StreamRecord]) -> FaultTally {
    let mut t = FaultTally::default();
    for s in streams {
        t.attempted += s.fates.len() as u64;
        for (i, fate) in s.fates.iter().enumerate() {
            let stored = at(&s.stored, i);
            let delivered = at(&s.delivered, i);
            match fate {
                Fate::NotSent => t.not_sent += 1,
                Fate::Unanswered => t.unanswered += 1,
                Fate::Accepted => t.accepted += 1,
                Fate::Refused => t.refused += 1,
            }
            if *fate != Fate::NotSent {
                t.written += 1;
            }
            if stored > 0 {
                t.stored += 1;
                t.stored_twice += u64::from(stored - 1);
                match fate {
                    Fate::Unanswered | Fate::NotSent => t.stored_unconfirmed += 1,
                    Fate::Refused => t.stored_refused += 1,
                    Fate::Accepted => {}
                }
                if delivered > 0 {
                    t.delivered += 1;
                    t.duplicated += u64::from(delivered - 1);
                } else {
                    t.undelivered += 1;
                }
            } else {
                if *fate == Fate::Accepted {
                    t.lost += 1;
                }
                if delivered > 0 {
                    t.phantom += 1;
                }
            }
        }
        let beyond = s.fates.len();
        for v in [&s.stored, &s.delivered] {
            t.phantom += v.iter().skip(beyond).filter(|n| **n > 0).count() as u64;
        }
    }
    t
}

/// `--fault AT_SECONDS:COMMAND`: run `COMMAND` through `sh -c` that many seconds after sending
/// starts.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    pub at_seconds: f64,
    pub command: String,
}

impl FromStr for FaultSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (at, command) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}`: expected AT_SECONDS:COMMAND"))?;
        let at_seconds: f64 = at
            .trim()
            .parse()
            .map_err(|_| format!("`{at}`: AT_SECONDS must be a number of seconds"))?;
        if !(at_seconds.is_finite() && at_seconds >= 0.0) {
            return Err(format!("`{at}`: AT_SECONDS must be 0 or more"));
        }
        let command = command.trim();
        if command.is_empty() {
            return Err(format!("`{s}`: the command is empty"));
        }
        Ok(FaultSpec {
            at_seconds,
            command: command.to_owned(),
        })
    }
}

/// One injected fault, as it ran, and what it did to the service.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultOutcome {
    pub command: String,
    /// Seconds after sending started when the command started and ended.
    pub started_s: f64,
    pub finished_s: f64,
    /// Exit status (None: killed by a signal or could not start).
    pub exit_code: Option<i32>,
    /// Seconds from the command's start until RECEIPTs flowed again (see [`recovery`]); `None`:
    /// never within the run.
    pub accepting_again_s: Option<f64>,
    /// The same for first-time deliveries.
    pub delivering_again_s: Option<f64>,
}

/// How long after `fault_ns` a flow of events (`times_ns`, sorted) was back: the end of the last
/// gap longer than `gap_ns` among the events from `fault_ns` on (the fault itself opens the first
/// gap), in seconds; 0 when there was no such gap (the flow never stopped). `None` when no event
/// came after the fault at all. Events up to `until_ns` only (the end of sending), so the drain at
/// the end of the run is not taken for an outage.
pub fn recovery(times_ns: &[u64], fault_ns: u64, until_ns: u64, gap_ns: u64) -> Option<f64> {
    let start = times_ns.partition_point(|t| *t < fault_ns);
    let after = &times_ns[start..];
    let first = *after.first()?;
    let mut resumed = None;
    let mut prev = fault_ns;
    for &t in after {
        if t > until_ns.max(first) {
            break;
        }
        if t - prev > gap_ns {
            resumed = Some(t);
        }
        prev = t;
    }
    Some(resumed.map_or(0.0, |t| (t - fault_ns) as f64 / 1e9))
}

/// Reconnect backoff: doubles from `min` to `max` after each failure, back to `min` after a
/// success, with up to 25 % jitter so that sessions cut together do not come back together.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: std::time::Duration,
    max: std::time::Duration,
    next: std::time::Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(min: std::time::Duration, max: std::time::Duration, seed: u64) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
            seed: seed | 1,
        }
    }

    /// The wait before the next attempt (and doubles the one after).
    pub fn failed(&mut self) -> std::time::Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // xorshift: cheap jitter, reproducible per session.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter = base.mul_f64((self.seed % 1000) as f64 / 4000.0);
        base + jitter
    }

    /// A connection succeeded.
    pub fn succeeded(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fates: &[Fate], stored: &[u32], delivered: &[u32]) -> StreamRecord {
        StreamRecord {
            fates: fates.to_vec(),
            stored: stored.to_vec(),
            delivered: delivered.to_vec(),
        }
    }

    #[test]
    fn a_clean_run_accounts_everything_once() {
        let s = record(&[Fate::Accepted; 4], &[1; 4], &[1; 4]);
        let t = tally(&[s.clone(), s]);
        assert_eq!(
            t,
            FaultTally {
                attempted: 8,
                written: 8,
                accepted: 8,
                stored: 8,
                delivered: 8,
                ..FaultTally::default()
            }
        );
    }

    #[test]
    fn every_kind_of_damage_is_told_apart() {
        use Fate::*;
        // 0: accepted, stored twice, delivered 3 times
        // 1: accepted, never stored (lost)
        // 2: unanswered but stored, not delivered
        // 3: refused, not stored
        // 4: not sent
        // 5: accepted, stored, delivered
        // plus a delivery of number 9, never attempted (phantom)
        let s = record(
            &[Accepted, Accepted, Unanswered, Refused, NotSent, Accepted],
            &[2, 0, 1, 0, 0, 1],
            &[3, 0, 0, 0, 0, 1, 0, 0, 0, 1],
        );
        let t = tally(&[s]);
        assert_eq!(t.attempted, 6);
        assert_eq!(t.written, 5);
        assert_eq!(t.not_sent, 1);
        assert_eq!((t.accepted, t.refused, t.unanswered), (3, 1, 1));
        assert_eq!((t.stored, t.stored_twice, t.stored_unconfirmed), (3, 1, 1));
        assert_eq!(t.stored_refused, 0);
        assert_eq!(t.lost, 1);
        assert_eq!((t.delivered, t.duplicated, t.undelivered), (2, 2, 1));
        assert_eq!(t.phantom, 1);
    }

    #[test]
    fn a_delivery_of_something_never_stored_is_a_phantom() {
        let t = tally(&[record(&[Fate::Refused], &[0], &[1])]);
        assert_eq!((t.phantom, t.delivered, t.lost), (1, 0, 0));
        let t = tally(&[record(&[Fate::Refused], &[1], &[1])]);
        assert_eq!(t.stored_refused, 1);
    }

    #[test]
    fn fault_specs() {
        let f: FaultSpec = "12.5: kill -9 $(cat gw.pid)".parse().unwrap();
        assert_eq!(f.at_seconds, 12.5);
        assert_eq!(f.command, "kill -9 $(cat gw.pid)");
        // Only the first colon splits: commands may hold colons.
        let f: FaultSpec = "3:redis-cli -u redis://127.0.0.1:6390 shutdown"
            .parse()
            .unwrap();
        assert_eq!(f.command, "redis-cli -u redis://127.0.0.1:6390 shutdown");
        assert!("kill".parse::<FaultSpec>().is_err());
        assert!("x:kill".parse::<FaultSpec>().is_err());
        assert!("-1:kill".parse::<FaultSpec>().is_err());
        assert!("5:  ".parse::<FaultSpec>().is_err());
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn recovery_is_the_end_of_the_outage() {
        // Every 10 ms, a hole from 1000 to 3500 ms, fault at 1000 ms.
        let times: Vec<u64> = (0..500u64)
            .map(|i| i * 10 * MS)
            .filter(|t| !(1000 * MS..3500 * MS).contains(t))
            .collect();
        let r = recovery(&times, 1000 * MS, 5000 * MS, 200 * MS).unwrap();
        assert!((r - 2.5).abs() < 1e-9, "{r}");
        // A flow that never stopped recovers in 0.
        let steady: Vec<u64> = (0..500u64).map(|i| i * 10 * MS).collect();
        assert_eq!(recovery(&steady, 1000 * MS, 5000 * MS, 200 * MS), Some(0.0));
        // Nothing after the fault: never.
        assert_eq!(recovery(&steady, 6000 * MS, 9000 * MS, 200 * MS), None);
        // Two holes: the flow is back after the second.
        let two: Vec<u64> = steady
            .iter()
            .copied()
            .filter(|t| !(1000 * MS..1500 * MS).contains(t) && !(2000 * MS..2600 * MS).contains(t))
            .collect();
        let r = recovery(&two, 1000 * MS, 5000 * MS, 200 * MS).unwrap();
        assert!((r - 1.6).abs() < 1e-9, "{r}");
        // The quiet drain after sending ended is no outage.
        let r = recovery(
            &[1100 * MS, 1110 * MS, 9000 * MS],
            1100 * MS,
            1200 * MS,
            200 * MS,
        );
        assert_eq!(r, Some(0.0));
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        use std::time::Duration;
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 7);
        let waits: Vec<Duration> = (0..6).map(|_| b.failed()).collect();
        for (w, base) in waits.iter().zip([100u64, 200, 400, 800, 1000, 1000]) {
            let base = Duration::from_millis(base);
            assert!(*w >= base && *w <= base.mul_f64(1.25), "{w:?} for {base:?}");
        }
        b.succeeded();
        assert!(b.failed() <= Duration::from_millis(125));
    }
}
