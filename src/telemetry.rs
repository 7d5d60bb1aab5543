//! Logs on stderr and, optionally, span export over OTLP.
//!
//! `INSTAR_LOG` (default `info`) filters both; `log_format` (`text` or `json`) shapes the lines.
//! With `otlp_endpoint` set, every span that passes the filter (REST requests, STOMP sessions,
//! chat commands on the gateway and the social process, deliveries) also goes to an
//! OpenTelemetry collector over OTLP/HTTP (protobuf). Spans are queued and sent in batches by the
//! SDK's own thread, so a slow or absent collector never holds up a request (a full queue drops
//! spans); what is queued is sent at shutdown ([`Telemetry::shutdown`]).

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Where spans go and who sends them.
#[derive(Debug, Clone)]
pub(crate) struct Otlp {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is added) or its full traces URL.
    pub endpoint: String,
    /// `serve`, `gateway` or `social`: the resource's `service.name` is `instar-<role>`.
    pub role: &'static str,
    /// The node id (`service.instance.id`).
    pub node: String,
}

/// The traces URL of an OTLP/HTTP endpoint setting: a base URL gets `/v1/traces`, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` does; a URL already ending in `/v1/traces` is kept.
pub(crate) fn traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    if trimmed.ends_with("/v1/traces") {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

/// What must be flushed before the process exits.
#[derive(Debug, Default)]
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still queued (waits for the collector, up to the export timeout).
    pub(crate) fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "spans not all exported at shutdown");
        }
    }
}

/// Installs the log subscriber (and the span exporter with `otlp`). warp's per-request lines
/// (`warp::filters::trace`, two a request) stay off unless `INSTAR_LOG` names them: the request
/// span's fields are on every line logged in it.
pub(crate) fn init(format: &str, otlp: Option<Otlp>) -> anyhow::Result<Telemetry> {
    let spec = std::env::var("INSTAR_LOG").unwrap_or_else(|_| "info".to_owned());
    let spec = if spec.contains("warp::filters::trace") {
        spec
    } else {
        format!("{spec},warp::filters::trace=off")
    };
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        "text" => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        "json" => fmt
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
        other => anyhow::bail!("log_format must be text or json, not {other:?}"),
    };
    let (provider, otel) = match otlp {
        Some(o) => {
            let url = traces_url(&o.endpoint);
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(&url)
                .build()
                .with_context(|| format!("INSTAR_OTLP_ENDPOINT / otlp_endpoint {url:?}"))?;
            let resource = Resource::builder()
                .with_service_name(format!("instar-{}", o.role))
                .with_attributes([
                    KeyValue::new("service.instance.id", o.node.clone()),
                    KeyValue::new("instar.role", o.role),
                ])
                .build();
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build();
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("instar"));
            (Some((provider, url, o)), Some(layer))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .context("installing the log subscriber")?;
    let provider = provider.map(|(provider, url, o)| {
        broker_bridge::trace::set_exporting();
        tracing::info!(endpoint = %url, role = o.role, node = %o.node, "exporting spans over OTLP");
        provider
    });
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn traces_url_adds_the_signal_path_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
