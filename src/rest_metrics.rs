//! Metrics of the processes that run the social service (`instar serve`, `instar social`) that the
//! service does not count itself: REST responses by status class and their latency (a histogram,
//! so dashboards can show quantiles), and the readiness of each dependency as a gauge.
//!
//! Counted here, around `Ctx::routes()` (every `/api/**` request ends in a response there, and
//! `/media/**` with local storage), so the social crate stays free of process-level wiring.

use std::sync::Arc;
use std::time::Instant;

use broker_bridge::MetricsRegistry;
use warp::Filter as _;
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The latency histogram's name.
const RESPONSE_SECONDS: &str = "instar_http_response_seconds";

/// A registry for a process that serves REST: the latency histogram gets its [`BUCKETS`].
pub(crate) fn registry() -> MetricsRegistry {
    MetricsRegistry::with_buckets(&[(RESPONSE_SECONDS, &BUCKETS)])
}

/// REST response counters.
#[derive(Debug)]
pub(crate) struct RestStats {
    classes: [metrics::Counter; 5],
    seconds: metrics::Histogram,
}

impl RestStats {
    /// Registers the counters on `registry` (built by [`registry`], for the buckets).
    pub(crate) fn new(registry: &MetricsRegistry) -> Self {
        RestStats {
            classes: CLASSES.map(|class| {
                registry.counter_with(
                    "instar_http_responses_total",
                    &[("class", class)],
                    "REST responses (/api, local /media) by status class.",
                )
            }),
            seconds: registry.histogram(
                RESPONSE_SECONDS,
                "Time from a REST request's arrival to its response head.",
            ),
        }
    }

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
        self.classes[class].increment(1);
        self.seconds.record(seconds);
    }
}

/// `instar_ready{part=...}`: 1 while the dependency answers its readiness check, else 0 (checked
/// at scrape time).
pub(crate) async fn update_readiness(ctx: &social::Ctx, registry: &MetricsRegistry) {
    for check in ctx.readiness().await {
        registry
            .gauge_with(
                "instar_ready",
                &[("part", check.part)],
                "Whether each dependency answers its readiness check (1) or not (0).",
            )
            .set(if check.error.is_none() { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_classes_counted() {
        let registry = registry();
        let s = RestStats::new(&registry);
        s.record(200, 0.001);
        s.record(201, 0.07);
        s.record(404, 0.3);
        s.record(503, 60.0);
        let out = registry.render();
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
