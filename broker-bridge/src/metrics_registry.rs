//! [`MetricsRegistry`]: the metrics of one process (or one server of a test process), kept by
//! the `metrics` facade's handles and rendered as Prometheus text (version 0.0.4) by
//! `metrics-exporter-prometheus`.
//!
//! It lives here because this is the lowest crate that both the gateway and the social service
//! depend on: `instar serve` builds one registry and hands it to both, so its `/metrics` is one
//! text in which every family appears once. No global recorder is installed (tests run several
//! servers in one process, each with its own registry), and the exporter's own HTTP listener is
//! not used: the servers answer `/metrics` themselves with [`MetricsRegistry::render`].

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// What every registration names as its origin (the recorder ignores it).
static METADATA: Metadata<'static> = Metadata::new("instar", Level::INFO, Some(module_path!()));

/// One set of metric families, rendered together (see the module docs). Cloning shares it.
#[derive(Clone)]
pub struct MetricsRegistry {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsRegistry").finish_non_exhaustive()
    }
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        Self::with_buckets(&[])
    }
}

impl MetricsRegistry {
    /// An empty registry whose histograms are rendered as summaries (`quantile` lines, `_sum`
    /// and `_count`).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry in which the histograms named in `buckets` are rendered as Prometheus
    /// histograms with those upper bounds (cumulative `_bucket{le=...}` lines); the other
    /// histograms as summaries.
    #[must_use]
    pub fn with_buckets(buckets: &[(&str, &[f64])]) -> Self {
        let mut builder = PrometheusBuilder::new();
        for (name, bounds) in buckets.iter().filter(|(_, b)| !b.is_empty()) {
            builder =
                match builder.set_buckets_for_metric(Matcher::Full((*name).to_owned()), bounds) {
                    Ok(b) => b,
                    // Only an empty bucket list is refused, and those are filtered out above.
                    Err(e) => {
                        tracing::warn!(error = %e, "histogram buckets refused; summaries instead");
                        PrometheusBuilder::new()
                    }
                };
        }
        let recorder = Arc::new(builder.build_recorder());
        let handle = recorder.handle();
        spawn_upkeep(Arc::downgrade(&recorder), handle.clone());
        MetricsRegistry { recorder, handle }
    }

    fn key(name: &str, labels: &[(&str, &str)]) -> Key {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new((*k).to_owned(), (*v).to_owned()))
            .collect();
        Key::from_parts(name.to_owned(), labels)
    }

    /// The counter `name` (its `# HELP` line says `help`): registered on first use, the same
    /// handle after.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        self.counter_with(name, &[], help)
    }

    /// The counter `name` with `labels`.
    pub fn counter_with(&self, name: &str, labels: &[(&str, &str)], help: &str) -> Counter {
        self.recorder.describe_counter(
            KeyName::from(name.to_owned()),
            None,
            help.to_owned().into(),
        );
        self.recorder
            .register_counter(&Self::key(name, labels), &METADATA)
    }

    /// The gauge `name`.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.gauge_with(name, &[], help)
    }

    /// The gauge `name` with `labels`.
    pub fn gauge_with(&self, name: &str, labels: &[(&str, &str)], help: &str) -> Gauge {
        self.recorder
            .describe_gauge(KeyName::from(name.to_owned()), None, help.to_owned().into());
        self.recorder
            .register_gauge(&Self::key(name, labels), &METADATA)
    }

    /// The histogram `name` (a summary unless the registry was built with buckets for it).
    pub fn histogram(&self, name: &str, help: &str) -> Histogram {
        self.histogram_with(name, &[], help)
    }

    /// The histogram `name` with `labels`.
    pub fn histogram_with(&self, name: &str, labels: &[(&str, &str)], help: &str) -> Histogram {
        self.recorder.describe_histogram(
            KeyName::from(name.to_owned()),
            None,
            help.to_owned().into(),
        );
        self.recorder
            .register_histogram(&Self::key(name, labels), &METADATA)
    }

    /// Sets the counter `name` to `value` (a count kept elsewhere, copied at scrape time).
    pub fn set_counter(&self, name: &str, help: &str, value: u64) {
        self.counter(name, help).absolute(value);
    }

    /// Sets the gauge `name` to `value`.
    #[allow(clippy::cast_precision_loss)]
    pub fn set_gauge(&self, name: &str, help: &str, value: u64) {
        self.gauge(name, help).set(value as f64);
    }

    /// Every registered family in the Prometheus text format, each family once.
    #[must_use]
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// How often histogram samples are folded into their buckets or quantile sketch.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The exporter keeps each histogram sample (value and time) in a queue until a render or an
/// upkeep folds it in; `build_recorder()` starts no upkeep of its own (only `install()` does),
/// so with nobody scraping `/metrics` the queues grew without bound (about 1.4 MB/s at 57,000
/// REST requests a second). A thread per registry runs the upkeep every [`UPKEEP_EVERY`] and
/// ends within one period of the registry's last clone being dropped.
fn spawn_upkeep(recorder: std::sync::Weak<PrometheusRecorder>, handle: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                if recorder.strong_count() == 0 {
                    break;
                }
                handle.run_upkeep();
            }
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "no metrics upkeep thread: histogram samples fold in at scrapes only");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_once_with_help_labels_and_buckets() {
        let m = MetricsRegistry::with_buckets(&[("instar_t_seconds", &[0.1, 1.0])]);
        m.counter("instar_a_total", "A things.").increment(2);
        // A second registration is the same series.
        m.counter("instar_a_total", "A things.").increment(1);
        m.counter_with("instar_b_total", &[("reason", "x")], "B things.")
            .increment(1);
        m.counter_with("instar_b_total", &[("reason", "y")], "B things.")
            .absolute(7);
        m.set_gauge("instar_c", "C now.", 5);
        m.histogram("instar_t_seconds", "T.").record(0.5);
        m.histogram("instar_s_seconds", "S.").record(0.25);
        let text = m.render();
        for line in [
            "# HELP instar_a_total A things.",
            "# TYPE instar_a_total counter",
            "instar_a_total 3",
            "instar_b_total{reason=\"x\"} 1",
            "instar_b_total{reason=\"y\"} 7",
            "# TYPE instar_c gauge",
            "instar_c 5",
            "# TYPE instar_t_seconds histogram",
            "instar_t_seconds_bucket{le=\"0.1\"} 0",
            "instar_t_seconds_bucket{le=\"1\"} 1",
            "instar_t_seconds_bucket{le=\"+Inf\"} 1",
            "instar_t_seconds_sum 0.5",
            "instar_t_seconds_count 1",
            "# TYPE instar_s_seconds summary",
            "instar_s_seconds_sum 0.25",
            "instar_s_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(types, 5, "{text}");
    }
}
