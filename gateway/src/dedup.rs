//! Duplicate delivery suppression by message id.
//!
//! The chat service publishes each stored message at least once: after its commit, and again by
//! its outbox sweeper when it could not tell that the first publish went through (a social process
//! that died between the two, a broker that restarted). Every such message carries its id in
//! [`crate::replay::ID_HEADER`] (room broadcasts and `CHAT` alarms alike), so each subscription
//! remembers the ids it delivered and drops one it has seen: exactly once for a live session.
//!
//! Memory is bounded per subscription: the newest [`SEEN_IDS`] ids it delivered (allocated as they
//! come, so a quiet subscription costs nothing). Ids mostly arrive in increasing order (a room's
//! messages are published in id order), so the common case is one comparison with the newest id;
//! only an id at or below it is looked up among the remembered ones. A re-publish older than the
//! last [`SEEN_IDS`] deliveries of that subscription is not recognised (the sweeper re-sends
//! seconds later, so a room would need thousands of messages in between).

use std::collections::VecDeque;

/// Ids one subscription remembers.
pub const SEEN_IDS: usize = 1024;

/// The message ids a subscription delivered lately.
#[derive(Debug, Default)]
pub struct SeenIds {
    /// Newest first is not needed: arrival order, oldest at the front.
    ids: VecDeque<u64>,
    /// The largest id remembered (0: none).
    newest: u64,
}

impl SeenIds {
    /// Records `id`; false when it was delivered already (a duplicate to drop).
    pub fn first_time(&mut self, id: u64) -> bool {
        if id <= self.newest && self.ids.contains(&id) {
            return false;
        }
        if self.ids.len() == SEEN_IDS {
            self.ids.pop_front();
        }
        self.ids.push_back(id);
        self.newest = self.newest.max(id);
        true
    }

    /// The largest id delivered (0: none).
    pub fn newest(&self) -> u64 {
        self.newest
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_repeated_id_is_refused_and_order_does_not_matter() {
        let mut seen = SeenIds::default();
        assert!(seen.first_time(10));
        assert!(seen.first_time(12));
        // A late publish of an older message is not a duplicate.
        assert!(seen.first_time(11));
        assert!(!seen.first_time(10));
        assert!(!seen.first_time(11));
        assert!(!seen.first_time(12));
        assert!(seen.first_time(13));
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn memory_is_bounded() {
        let mut seen = SeenIds::default();
        for id in 1..=(SEEN_IDS as u64 * 3) {
            assert!(seen.first_time(id));
        }
        assert_eq!(seen.len(), SEEN_IDS);
        // The newest ones are still recognised.
        assert!(!seen.first_time(SEEN_IDS as u64 * 3));
    }

    proptest! {
        /// Within the window, exactly the first occurrence of each id passes, whatever the order.
        #[test]
        fn first_occurrences_pass(ids in proptest::collection::vec(1u64..200, 0..600)) {
            let mut seen = SeenIds::default();
            let mut reference = std::collections::HashSet::new();
            for id in ids {
                prop_assert_eq!(seen.first_time(id), reference.insert(id));
            }
        }
    }
}
