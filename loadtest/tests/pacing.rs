//! Open-loop schedules: intended send times, how many are due, how many fit in a duration.

use std::time::Duration;

use loadtest::pacing::Schedule;

#[test]
fn intended_times_are_evenly_spaced_from_the_offset() {
    let s = Schedule::from_rate(1000.0, 5_000);
    assert_eq!(s.interval_ns, 1_000_000);
    assert_eq!(s.intended_ns(0), 5_000);
    assert_eq!(s.intended_ns(3), 3_005_000);
}

#[test]
fn nothing_is_due_before_the_offset_and_one_is_due_at_it() {
    let s = Schedule::from_rate(1000.0, 1_000_000);
    assert_eq!(s.due(0), 0);
    assert_eq!(s.due(999_999), 0);
    assert_eq!(s.due(1_000_000), 1);
    assert_eq!(s.due(1_999_999), 1);
    assert_eq!(s.due(2_000_000), 2);
}

#[test]
fn a_late_sender_finds_every_missed_message_due_at_once() {
    // Stalled for 50 ms at 1000/s: 50 more messages are due, each keeping its own intended time.
    let s = Schedule::from_rate(1000.0, 0);
    assert_eq!(s.due(50_000_000) - s.due(0), 50);
    assert!((0..51).all(|i| s.intended_ns(i) <= 50_000_000));
}

#[test]
fn due_is_consistent_with_intended_times() {
    let s = Schedule::from_rate(333.0, 123);
    for i in 0..1000 {
        let t = s.intended_ns(i);
        assert_eq!(s.due(t), i + 1, "message {i} is due at its own time");
        assert_eq!(s.due(t - 1), i, "and not a nanosecond before");
    }
}

#[test]
fn count_within_a_duration() {
    let s = Schedule::from_rate(100.0, 0);
    assert_eq!(s.count_within(Duration::from_secs(1)), 100);
    assert_eq!(s.count_within(Duration::from_millis(1005)), 101);
    assert_eq!(s.count_within(Duration::ZERO), 0);
    assert_eq!(
        Schedule::from_rate(0.5, 0).count_within(Duration::from_secs(10)),
        5
    );
}

#[test]
fn degenerate_rates_do_not_divide_by_zero() {
    assert!(Schedule::from_rate(0.0, 0).interval_ns > 1_000_000_000_000);
    assert!(Schedule::from_rate(f64::NAN, 0).interval_ns > 1_000_000_000_000);
    assert_eq!(Schedule::from_rate(1e12, 0).interval_ns, 1);
}
