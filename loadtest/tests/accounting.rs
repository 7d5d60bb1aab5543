//! Sequence accounting: gaps, duplicates and late arrivals become lost / duplicated / reordered.

use loadtest::accounting::{Arrival, SeqTracker, Tally};

fn feed(seqs: &[u64]) -> SeqTracker {
    let mut t = SeqTracker::new();
    for &s in seqs {
        t.observe(s);
    }
    t
}

#[test]
fn in_order_stream_has_nothing_to_report() {
    let t = feed(&[0, 1, 2, 3, 4]);
    assert_eq!(
        (t.unique(), t.duplicated(), t.reordered(), t.lost(5)),
        (5, 0, 0, 0)
    );
    assert_eq!(t.arrivals(), 5);
}

#[test]
fn a_gap_that_never_fills_is_lost() {
    let t = feed(&[0, 1, 3, 4]);
    assert_eq!(t.lost(5), 1);
    assert_eq!(t.reordered(), 0);
    assert_eq!(t.unique(), 4);
}

#[test]
fn messages_missing_at_the_end_are_lost() {
    let t = feed(&[0, 1, 2]);
    assert_eq!(t.lost(10), 7);
}

#[test]
fn a_late_arrival_is_reordered_not_lost() {
    let mut t = SeqTracker::new();
    assert_eq!(t.observe(0), Arrival::InOrder);
    assert_eq!(t.observe(2), Arrival::InOrder);
    assert_eq!(t.observe(1), Arrival::Reordered);
    assert_eq!(t.observe(3), Arrival::InOrder);
    assert_eq!((t.lost(4), t.reordered(), t.duplicated()), (0, 1, 0));
}

#[test]
fn a_repeat_is_a_duplicate_before_and_after_the_gap_closes() {
    let mut t = SeqTracker::new();
    t.observe(0);
    t.observe(2);
    assert_eq!(t.observe(2), Arrival::Duplicate, "seen beyond the gap");
    t.observe(1);
    assert_eq!(
        t.observe(0),
        Arrival::Duplicate,
        "below the contiguous prefix"
    );
    assert_eq!(t.observe(1), Arrival::Duplicate);
    assert_eq!(
        (t.unique(), t.duplicated(), t.reordered(), t.lost(3)),
        (3, 3, 1, 0)
    );
    assert_eq!(t.arrivals(), 6);
}

#[test]
fn a_stream_arriving_backwards_is_all_reordered_but_one() {
    let t = feed(&[4, 3, 2, 1, 0]);
    assert_eq!((t.unique(), t.reordered(), t.lost(5)), (5, 4, 0));
}

#[test]
fn numbers_beyond_what_was_sent_are_unexpected() {
    let t = feed(&[0, 1, 2, 7]);
    assert_eq!(t.unexpected(3), 1);
    assert_eq!(t.lost(3), 0);
    assert_eq!(t.unexpected(8), 0);
    assert_eq!(t.lost(8), 4);
}

#[test]
fn tally_sums_receivers_of_one_stream() {
    let sent = 5;
    let mut tally = Tally {
        sent,
        ..Tally::default()
    };
    tally.add_expected(&feed(&[0, 1, 2, 3, 4]), sent);
    tally.add_expected(&feed(&[0, 2, 1, 4]), sent); // 3 lost, 1 reordered
    tally.add_expected(&feed(&[0, 1, 1, 2, 3, 4]), sent); // one duplicate
    assert_eq!(tally.expected, 15);
    assert_eq!(tally.delivered, 15);
    assert_eq!(tally.unique, 14);
    assert_eq!(tally.lost, 1);
    assert_eq!(tally.duplicated, 1);
    assert_eq!(tally.reordered, 1);
    assert_eq!(tally.misrouted, 0);
}

#[test]
fn tally_counts_another_users_stream_as_misrouted() {
    let mut tally = Tally::default();
    tally.add_expected(&feed(&[0, 1]), 2);
    tally.add_unexpected(&feed(&[0, 1, 2]));
    assert_eq!((tally.delivered, tally.misrouted, tally.lost), (5, 3, 0));
}

#[test]
fn large_streams_with_a_few_holes() {
    let mut t = SeqTracker::new();
    for s in 0..100_000u64 {
        if s % 10_000 != 5 {
            t.observe(s);
        }
    }
    assert_eq!(t.lost(100_000), 10);
    assert_eq!(t.unique(), 99_990);
}
