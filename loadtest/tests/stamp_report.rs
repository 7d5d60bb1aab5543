//! The message stamp round trip, `/proc` parsing, and the SVG/summary rendering.

use bytes::Bytes;
use loadtest::latency::{LatencySummary, new_histogram};
use loadtest::report::{Report, latency_curve, render_svg, summary};
use loadtest::stamp::Stamp;
use stomp::{Command, Frame};

#[test]
fn stamp_survives_the_body_and_pads_to_the_payload() {
    let s = Stamp {
        stream: 7,
        seq: 123_456,
        sent_ns: 9_876_543_210,
    };
    let body = s.body(100);
    assert_eq!(body.len(), 100);
    assert_eq!(Stamp::from_body(&body), Some(s));
    // A payload shorter than the stamp is not truncated.
    let short = s.body(5);
    assert_eq!(Stamp::from_body(&short), Some(s));
}

#[test]
fn stamp_falls_back_to_headers() {
    let s = Stamp {
        stream: 1,
        seq: 2,
        sent_ns: 3,
    };
    let f = s
        .add_headers(Frame::new(Command::Message))
        .with_body(Bytes::from_static(b"not a stamp"));
    assert_eq!(Stamp::from_body(&f.body), None);
    assert_eq!(Stamp::from_frame(&f), Some(s));
    assert_eq!(Stamp::from_frame(&Frame::new(Command::Message)), None);
}

#[test]
fn stamp_rejects_garbage_bodies() {
    for body in [
        &b""[..],
        b"stream=x seq=1 sent_ns=2 ",
        b"seq=1 stream=0 sent_ns=2 ",
        b"\xff\xfe",
        b"stream=1 seq=2",
    ] {
        assert_eq!(Stamp::from_body(body), None, "{body:?}");
    }
}

#[test]
fn proc_status_and_stat_parsing() {
    let status = "Name:\tinstar\nVmPeak:\t  9000 kB\nVmRSS:\t   12040 kB\nThreads:\t3\n";
    assert_eq!(loadtest::procfs::parse_vm_rss(status), Some(12040));
    assert_eq!(loadtest::procfs::parse_vm_rss("Name: x\n"), None);
    let stat =
        "2960 (beam.smp x) S 1 2960 2960 0 -1 4194560 100 0 0 0 1500 250 0 0 20 0 30 0 100 0 0";
    assert_eq!(loadtest::procfs::parse_cpu_ticks(stat), Some(1750));
    assert!(loadtest::procfs::rss_kib(std::process::id()).expect("own RSS") > 0);
}

#[test]
fn svg_and_summary_render_a_latency_curve() {
    let mut h = new_histogram();
    for us in 1..=10_000u64 {
        h.record(us).expect("in range");
    }
    let report = Report {
        scenario: "fanout".into(),
        latency: Some(LatencySummary::of(&h)),
        latency_curve: latency_curve(&h),
        ..Report::default()
    };
    let l = report.latency.as_ref().expect("latency");
    assert!((l.p50_ms - 5.0).abs() < 0.01, "{l:?}");
    assert!((l.p99_ms - 9.9).abs() < 0.02, "{l:?}");
    assert!(
        report
            .latency_curve
            .windows(2)
            .all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1])
    );
    let svg = render_svg(&report);
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 1);
    assert!(svg.contains("99.9%"));
    assert!(summary(&report).contains("p99 9.9"));
}

#[test]
fn worst_latency_is_kept_per_100ms_of_intended_send_time() {
    use loadtest::latency::{Recorder, WINDOW_NS};
    let r = Recorder::new(4);
    // Window 3: two messages on different shards, the worse one 40 ms late.
    r.record(0, 3 * WINDOW_NS + 1_000_000, Some(3 * WINDOW_NS));
    r.record(
        1,
        3 * WINDOW_NS + 45_000_000,
        Some(3 * WINDOW_NS + 5_000_000),
    );
    // Window 5: 2 ms; a message without a stamp counts as delivered but has no latency.
    r.record(2, 5 * WINDOW_NS + 2_000_000, Some(5 * WINDOW_NS));
    r.record(3, 9 * WINDOW_NS, None);
    assert_eq!(r.worst_windows(), vec![0, 0, 0, 40_000, 0, 2_000]);
    assert_eq!(r.delivered(), 4);

    let report = Report {
        scenario: "chat".into(),
        worst_per_100ms: vec![1.5, 40.0, 2.0],
        ..Report::default()
    };
    let text = summary(&report);
    let line = text
        .lines()
        .find(|l| l.starts_with("worst 100ms"))
        .expect("a worst-window line");
    assert!(
        line.contains("40.00 at 0.1 s, 2.00 at 0.2 s, 1.50 at 0.0 s"),
        "{line}"
    );
}
