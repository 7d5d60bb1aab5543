//! A token bucket: the SEND rates of a session and of a user's sessions on a node.

use tokio::time::Instant;

/// Tokens refilled at a rate per second up to a burst of that many seconds' worth.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    /// A full bucket for `rate` per second and bursts of `burst_seconds`.
    #[must_use]
    pub fn full(rate: u32, burst_seconds: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(rate.saturating_mul(burst_seconds)),
            refilled: now,
        }
    }

    /// Refills for the time since the last call, then takes one token; false when none is left.
    /// A `rate` of 0 means unlimited.
    pub fn take(&mut self, rate: u32, burst_seconds: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let refill = now.duration_since(self.refilled).as_secs_f64() * f64::from(rate);
        self.refilled = now;
        let cap = f64::from(rate.saturating_mul(burst_seconds));
        self.tokens = (self.tokens + refill).min(cap);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(10, 5, t0);
        assert_eq!((0..60).filter(|_| b.take(10, 5, t0)).count(), 50);
        // Half a second later: five more.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..10).filter(|_| b.take(10, 5, t1)).count(), 5);
        // Never more than the burst, however long it rested.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| b.take(10, 5, t2)).count(), 50);
        assert!(Bucket::full(0, 5, t0).take(0, 5, t0));
    }
}
