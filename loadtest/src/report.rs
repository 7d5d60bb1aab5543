//! Results: the JSON report, the SVG latency chart and the summary printed on stdout.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::accounting::Tally;
use crate::latency::LatencySummary;

/// Everything a run measured. Sections a scenario does not measure are `null` in JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `fanout`, `direct`, `chat` or `idle`.
    pub scenario: String,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
    /// Gateway URLs used.
    pub urls: Vec<String>,
    /// The scenario's parameters as given.
    pub parameters: serde_json::Value,
    /// Session set-up.
    pub setup: Setup,
    /// Delivery accounting (message scenarios).
    pub messages: Option<Tally>,
    /// Rates (message scenarios).
    pub throughput: Option<Throughput>,
    /// Latency from intended send time to receipt (message scenarios).
    pub latency: Option<LatencySummary>,
    /// How late the senders flushed each message after its intended send time (message
    /// scenarios): the harness's own share of `latency`, which should stay far below it.
    pub send_lag: Option<LatencySummary>,
    /// The latency curve: `[percentile, ms]` pairs (what the SVG draws).
    pub latency_curve: Vec<[f64; 2]>,
    /// The worst latency (ms) of each 100 ms of the sending, from its first message on: where
    /// in the run the slow deliveries were (one stall, a slow start, or spread out).
    pub worst_per_100ms: Vec<f64>,
    /// Server memory and CPU (idle; message scenarios with `--pid`).
    pub server: Option<ServerStats>,
    /// What went wrong with sessions while they were up.
    pub sessions: SessionHealth,
    /// The harness's own RSS at the end, KiB.
    pub loadtest_rss_kib: Option<u64>,
    /// What the server stored (chat: messages found in the rooms' history afterwards).
    pub persistence: Option<Persistence>,
    /// The fault-mode accounting (`faults`).
    pub faults: Option<FaultsReport>,
    /// Set when the run hit its hard timeout or could not complete.
    pub aborted: Option<String>,
}

/// What `loadtest faults` measured (see [`crate::faults`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultsReport {
    pub tally: crate::faults::FaultTally,
    /// Each injected fault and how long the service took to accept and deliver again.
    pub faults: Vec<crate::faults::FaultOutcome>,
    /// Where `stored` was counted: `database` or `rest` (the rooms' history).
    pub stored_from: String,
    /// Successful reconnects of senders and of receivers.
    pub sender_reconnects: u64,
    pub receiver_reconnects: u64,
    /// Receiver re-subscriptions that named their last message id.
    pub resubscribed_with_last_id: u64,
    /// First deliveries whose message id was below one the receiver had already got on the room
    /// (a room's messages published out of id order).
    pub out_of_order: u64,
}

/// Messages sent vs. found in the server's store after the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Persistence {
    /// Messages written by the senders.
    pub sent: u64,
    /// Distinct messages of this run found in the store.
    pub persisted: u64,
    /// Sent but not found.
    pub missing: u64,
    /// Found more than once.
    pub duplicated: u64,
    /// History requests made to count them.
    pub requests: u64,
}

/// Session set-up figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Setup {
    /// Sessions asked for.
    pub requested: u64,
    /// Sessions that reached CONNECTED and had their subscriptions confirmed.
    pub established: u64,
    /// Sessions that failed to set up.
    pub failed: u64,
    /// First set-up error seen.
    pub first_error: Option<String>,
    /// Wall time of the set-up phase.
    pub seconds: f64,
    /// `established / seconds`.
    pub per_second: f64,
    /// Source addresses the connections were spread over.
    pub source_addresses: Vec<String>,
}

/// Message rates.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Throughput {
    /// Target publish rate, messages/s (all senders together).
    pub target_publish_rate: f64,
    /// Publish rate achieved: messages sent / publishing time.
    pub publish_rate: f64,
    /// Seconds from the first intended send to the last send.
    pub publish_seconds: f64,
    /// What the target rate asks of the server: target rate × receivers per message.
    pub offered_deliveries_per_second: f64,
    /// Deliveries / (last delivery − first intended send).
    pub deliveries_per_second: f64,
    /// The window the delivery rate is computed over, seconds.
    pub delivery_seconds: f64,
    /// Whether every expected delivery arrived before the drain timeout.
    pub drained: bool,
}

/// Server process figures read from `/proc/<pid>`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerStats {
    pub pid: u32,
    /// RSS before any session connected, KiB.
    pub rss_before_kib: u64,
    /// RSS once every session was set up (and settled), KiB.
    pub rss_connected_kib: u64,
    /// RSS at the end of the hold / run, before sessions close, KiB.
    pub rss_end_kib: u64,
    /// Highest RSS sampled, KiB.
    pub rss_peak_kib: u64,
    /// `(rss_end − rss_before) / sessions`, KiB.
    pub kib_per_session: f64,
    /// Server CPU use while holding (idle) or during the run, percent of one core.
    pub cpu_percent: f64,
}

/// Session trouble during the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionHealth {
    /// ERROR frames received.
    pub error_frames: u64,
    /// Sessions whose connection ended before the harness closed it.
    pub dropped: u64,
    /// Bare EOLs received from the server: its heart-beats (RabbitMQ also ends every frame with one).
    pub server_heartbeats: u64,
    /// Sessions that heard at least one heart-beat or frame from the server during the hold (idle).
    pub sessions_heard_from: u64,
    /// First problem seen.
    pub first_problem: Option<String>,
}

/// The latency curve of `hist` (µs) as `[percentile, ms]`, from 0 to 99.999 %, evenly spaced on a
/// "nines" scale (x = log10(1 / (1 − q))).
pub fn latency_curve(hist: &Histogram<u64>) -> Vec<[f64; 2]> {
    if hist.is_empty() {
        return Vec::new();
    }
    (0..=100)
        .map(|i| {
            let nines = f64::from(i) * 0.05; // 0 … 5
            let q = 1.0 - 10f64.powf(-nines);
            [q * 100.0, hist.value_at_quantile(q) as f64 / 1_000.0]
        })
        .chain(std::iter::once([100.0, hist.max() as f64 / 1_000.0]))
        .collect()
}

/// Writes the report as pretty JSON.
pub fn write_json(report: &Report, path: &Path) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n")?;
    Ok(())
}

/// A self-contained SVG of the latency curve (percentile on a nines scale, latency in ms).
pub fn render_svg(report: &Report) -> String {
    const W: f64 = 720.0;
    const H: f64 = 420.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 40.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 50.0;
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let curve: Vec<[f64; 2]> = report
        .latency_curve
        .iter()
        .copied()
        .filter(|p| p[0] < 100.0)
        .collect();
    let max_ms = report
        .latency_curve
        .iter()
        .map(|p| p[1])
        .fold(0.0_f64, f64::max)
        .max(0.001);
    let y_top = nice_ceiling(max_ms);
    let x_of = |pct: f64| LEFT + pw * (nines(pct) / 5.0).clamp(0.0, 1.0);
    let y_of = |ms: f64| TOP + ph * (1.0 - (ms / y_top).clamp(0.0, 1.0));

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let title = format!(
        "{} latency by percentile ({} samples)",
        xml_escape(&report.scenario),
        report.latency.as_ref().map_or(0, |l| l.count)
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{title}</text>"#,
        W / 2.0
    );
    // Grid and labels: x at 0, 90, 99, 99.9, 99.99, 99.999 %.
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let x = LEFT + pw * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            TOP + ph
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            TOP + ph + 16.0
        );
    }
    for i in 0..=5 {
        let ms = y_top * f64::from(i) / 5.0;
        let y = y_of(ms);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            LEFT + pw
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            fmt_ms(ms)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + pw / 2.0,
        H - 10.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">latency (ms)</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
    );
    if !curve.is_empty() {
        let points: Vec<String> = curve
            .iter()
            .map(|p| format!("{:.1},{:.1}", x_of(p[0]), y_of(p[1])))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
            points.join(" ")
        );
    }
    if let Some(l) = &report.latency {
        let legend = format!(
            "p50 {} · p99 {} · p99.9 {} · max {} ms",
            fmt_ms(l.p50_ms),
            fmt_ms(l.p99_ms),
            fmt_ms(l.p999_ms),
            fmt_ms(l.max_ms)
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{legend}</text>"#,
            LEFT + 8.0,
            TOP + 16.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Position of a percentile on the nines axis: 0 → 0, 90 → 1, 99 → 2, …
fn nines(pct: f64) -> f64 {
    let rest = (1.0 - pct / 100.0).max(1e-9);
    -rest.log10()
}

/// The smallest of 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10^k at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * mag)
}

fn fmt_ms(ms: f64) -> String {
    if ms == 0.0 {
        "0".to_owned()
    } else if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.3}")
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The human summary printed on stdout.
pub fn summary(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "scenario     {}  ({})", r.scenario, r.urls.join(", "));
    let st = &r.setup;
    let _ = writeln!(
        s,
        "sessions     {}/{} set up in {:.1} s ({:.0}/s), {} failed",
        st.established, st.requested, st.seconds, st.per_second, st.failed
    );
    if let Some(e) = &st.first_error {
        let _ = writeln!(s, "             first set-up error: {e}");
    }
    if let Some(t) = &r.throughput {
        let _ = writeln!(
            s,
            "publish      {:.0} msg/s target, {:.0} msg/s achieved over {:.1} s",
            t.target_publish_rate, t.publish_rate, t.publish_seconds
        );
        let _ = writeln!(
            s,
            "deliveries   {:.0}/s measured over {:.1} s (offered {:.0}/s){}",
            t.deliveries_per_second,
            t.delivery_seconds,
            t.offered_deliveries_per_second,
            if t.drained {
                ""
            } else {
                ", NOT drained before the timeout"
            }
        );
    }
    if let Some(m) = &r.messages {
        let _ = writeln!(
            s,
            "messages     sent {} expected {} delivered {} lost {} duplicated {} reordered {} misrouted {}",
            m.sent, m.expected, m.delivered, m.lost, m.duplicated, m.reordered, m.misrouted
        );
    }
    if let Some(f) = &r.faults {
        let t = &f.tally;
        let _ = writeln!(
            s,
            "attempted    {} written {} (not sent {}) accepted {} refused {} unanswered {}",
            t.attempted, t.written, t.not_sent, t.accepted, t.refused, t.unanswered
        );
        let _ = writeln!(
            s,
            "stored       {} ({}) twice {} unconfirmed-but-stored {} refused-but-stored {} LOST {}",
            t.stored, f.stored_from, t.stored_twice, t.stored_unconfirmed, t.stored_refused, t.lost
        );
        let _ = writeln!(
            s,
            "delivered    {} duplicated {} undelivered {} phantom {} out of id order {}",
            t.delivered, t.duplicated, t.undelivered, t.phantom, f.out_of_order
        );
        let _ = writeln!(
            s,
            "reconnects   senders {} receivers {} (re-subscribed with the last id {})",
            f.sender_reconnects, f.receiver_reconnects, f.resubscribed_with_last_id
        );
        for o in &f.faults {
            let secs =
                |v: Option<f64>| v.map_or_else(|| "never".to_owned(), |v| format!("{v:.2} s"));
            let _ = writeln!(
                s,
                "fault        at {:.1} s (took {:.1} s, exit {}): `{}`: accepting again after {}, delivering again after {}",
                o.started_s,
                o.finished_s - o.started_s,
                o.exit_code
                    .map_or_else(|| "-".to_owned(), |c| c.to_string()),
                o.command,
                secs(o.accepting_again_s),
                secs(o.delivering_again_s)
            );
        }
    }
    if let Some(l) = &r.latency {
        let _ = writeln!(
            s,
            "latency ms   p50 {} p90 {} p99 {} p99.9 {} max {} (mean {}, n={})",
            fmt_ms(l.p50_ms),
            fmt_ms(l.p90_ms),
            fmt_ms(l.p99_ms),
            fmt_ms(l.p999_ms),
            fmt_ms(l.max_ms),
            fmt_ms(l.mean_ms),
            l.count
        );
    }
    if let Some(l) = &r.send_lag {
        let _ = writeln!(
            s,
            "send lag ms  p50 {} p99 {} max {} (the harness's own delay before each send)",
            fmt_ms(l.p50_ms),
            fmt_ms(l.p99_ms),
            fmt_ms(l.max_ms),
        );
    }
    if !r.worst_per_100ms.is_empty() {
        let mut slow: Vec<(usize, f64)> = r.worst_per_100ms.iter().copied().enumerate().collect();
        slow.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<String> = slow
            .iter()
            .take(5)
            .map(|(i, ms)| format!("{} at {:.1} s", fmt_ms(*ms), *i as f64 / 10.0))
            .collect();
        let _ = writeln!(s, "worst 100ms  {}", top.join(", "));
    }
    if let Some(m) = &r.server {
        let _ = writeln!(
            s,
            "server pid {} RSS KiB: before {} connected {} end {} peak {} => {:.2} KiB/session; CPU {:.1}% of a core",
            m.pid,
            m.rss_before_kib,
            m.rss_connected_kib,
            m.rss_end_kib,
            m.rss_peak_kib,
            m.kib_per_session,
            m.cpu_percent
        );
    }
    let h = &r.sessions;
    let _ = writeln!(
        s,
        "health       {} ERROR frames, {} sessions dropped, {} server EOLs (heart-beats), {} sessions heard from",
        h.error_frames, h.dropped, h.server_heartbeats, h.sessions_heard_from
    );
    if let Some(p) = &h.first_problem {
        let _ = writeln!(s, "             first problem: {p}");
    }
    if let Some(p) = &r.persistence {
        let _ = writeln!(
            s,
            "persisted    {} of {} sent ({} missing, {} duplicated; {} history requests)",
            p.persisted, p.sent, p.missing, p.duplicated, p.requests
        );
    }
    if let Some(k) = r.loadtest_rss_kib {
        let _ = writeln!(s, "loadtest     RSS {k} KiB");
    }
    if let Some(a) = &r.aborted {
        let _ = writeln!(s, "ABORTED      {a}");
    }
    s
}
