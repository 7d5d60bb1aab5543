//! Metrics of the processes that run the social service (`instar serve`, `instar social`) that the
//! service does not count itself: REST responses by status class and their latency (a histogram,
//! so dashboards can show quantiles), and the readiness of each dependency as a gauge.
//!
//! Counted here, around `Ctx::routes()` (every `/api/**` request ends in a response there, and
//! `/media/**` with local storage), so the social crate stays free of process-level wiring.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use warp::Filter as _;
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// REST response counters.
#[derive(Debug, Default)]
pub(crate) struct RestStats {
    classes: [AtomicU64; 5],
    /// Responses at or below each bound (not cumulative; summed when written).
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl RestStats {
    /// `routes`, counting every response they give.
    pub(crate) fn wrap(
        self: &Arc<Self>,
        routes: BoxedFilter<(Response,)>,
    ) -> BoxedFilter<(Response,)> {
        let stats = Arc::clone(self);
        warp::any()
            .map(Instant::now)
            .and(routes)
            .map(move |started: Instant, res: Response| {
                stats.record(res.status().as_u16(), started.elapsed().as_secs_f64());
                res
            })
            .boxed()
    }

    fn record(&self, status: u16, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        // Microseconds: a u64 holds half a million years of summed latency.
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters in the Prometheus text format.
    pub(crate) fn metrics_text(&self, out: &mut String) {
        out.push_str(
            "# HELP instar_http_responses_total REST responses (/api, local /media) by status class.\n\
             # TYPE instar_http_responses_total counter\n",
        );
        for (class, n) in CLASSES.iter().zip(&self.classes) {
            let _ = writeln!(
                out,
                "instar_http_responses_total{{class=\"{class}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP instar_http_response_seconds Time from a REST request's arrival to its response head.\n\
             # TYPE instar_http_response_seconds histogram\n",
        );
        let count = self.count.load(Ordering::Relaxed);
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "instar_http_response_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "instar_http_response_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             instar_http_response_seconds_sum {}\n\
             instar_http_response_seconds_count {count}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
    }
}

/// `instar_ready{part=...}`: 1 while the dependency answers its readiness check, else 0.
pub(crate) async fn readiness_text(ctx: &social::Ctx, out: &mut String) {
    out.push_str(
        "# HELP instar_ready Whether each dependency answers its readiness check (1) or not (0).\n\
         # TYPE instar_ready gauge\n",
    );
    for check in ctx.readiness().await {
        let _ = writeln!(
            out,
            "instar_ready{{part=\"{}\"}} {}",
            check.part,
            u8::from(check.error.is_none())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_classes_counted() {
        let s = RestStats::default();
        s.record(200, 0.001);
        s.record(201, 0.07);
        s.record(404, 0.3);
        s.record(503, 60.0);
        let mut out = String::new();
        s.metrics_text(&mut out);
        for line in [
            "instar_http_responses_total{class=\"2xx\"} 2",
            "instar_http_responses_total{class=\"4xx\"} 1",
            "instar_http_responses_total{class=\"5xx\"} 1",
            "instar_http_response_seconds_bucket{le=\"0.005\"} 1",
            "instar_http_response_seconds_bucket{le=\"0.1\"} 2",
            "instar_http_response_seconds_bucket{le=\"0.5\"} 3",
            "instar_http_response_seconds_bucket{le=\"10\"} 3",
            "instar_http_response_seconds_bucket{le=\"+Inf\"} 4",
            "instar_http_response_seconds_count 4",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing:\n{out}");
        }
        let sum: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("instar_http_response_seconds_sum "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 60.371).abs() < 1e-3, "{sum}");
    }
}
