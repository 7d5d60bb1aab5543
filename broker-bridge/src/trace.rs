//! W3C trace context (`traceparent`) as it travels with a command over the bus: the sending
//! gateway puts one in the command's headers (or passes on the client's own), and the handling
//! process logs its trace id, so the lines one chat message leaves on every process share it.
//!
//! When spans are exported (OpenTelemetry, `INSTAR_OTLP_ENDPOINT`), [`set_parent`] makes the
//! handling span a child of the sender's and [`traceparent_of`] names a span for the next hop,
//! so the exported spans of one chat message form one trace. Without export both do nothing.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The header name.
pub const TRACEPARENT: &str = "traceparent";

/// A `traceparent` (version 00, sampled) for a trace and a parent span id; both must be non-zero.
pub fn traceparent(trace_id: u128, span_id: u64) -> String {
    format!("00-{trace_id:032x}-{span_id:016x}-01")
}

/// The trace id of a well-formed `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all
/// zero), else `None`.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    (parts.next().is_none()
        && hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && nonzero(trace)
        && hex(parent, 16)
        && nonzero(parent)
        && hex(flags, 2))
    .then_some(trace)
}

/// The trace id of the `traceparent` among `headers`, if one is there and well formed.
pub fn trace_id_in(headers: &[(String, String)]) -> Option<&str> {
    headers
        .iter()
        .find(|(k, _)| k == TRACEPARENT)
        .and_then(|(_, v)| trace_id(v))
}

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Spans are exported from now on (set once, by the binary, with the exporter installed): the
/// gateway's per-command and per-delivery spans exist only then, so without export the command
/// and delivery paths stay as cheap as a disabled debug line.
pub fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether spans are exported ([`set_exporting`]).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The span context a well-formed `traceparent` names (remote, with its sampled flag).
pub fn span_context(traceparent: &str) -> Option<SpanContext> {
    let trace = trace_id(traceparent)?;
    let mut parts = traceparent.split('-').skip(2);
    let span = u64::from_str_radix(parts.next()?, 16).ok()?;
    let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
    Some(SpanContext::new(
        TraceId::from(u128::from_str_radix(trace, 16).ok()?),
        SpanId::from(span),
        TraceFlags::new(flags & 1),
        true,
        TraceState::default(),
    ))
}

/// Makes `span` a child of the span `traceparent` names in the exported trace (so it takes its
/// trace id). Call before the span is first entered; without span export it does nothing.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if let Some(parent) = span_context(traceparent) {
        // Fails only when no OpenTelemetry layer is installed (no export) or the span is off.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
}

/// The `traceparent` naming `span` (its trace id and its own span id) when spans are exported,
/// else `None` (no OpenTelemetry layer, or the span is filtered out).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_makes_and_refuses_the_rest() {
        let tp = traceparent(0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331);
        assert_eq!(
            tp,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(trace_id(&tp), Some("0af7651916cd43dd8448eb211c80319c"));
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
        let headers = vec![
            ("x".to_owned(), "y".to_owned()),
            (TRACEPARENT.to_owned(), tp.clone()),
        ];
        assert_eq!(
            trace_id_in(&headers),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
    }

    #[test]
    fn span_context_of_a_traceparent() {
        let sc = span_context("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(
            format!("{:032x}", sc.trace_id()),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(format!("{:016x}", sc.span_id()), "b7ad6b7169203331");
        assert!(sc.is_sampled() && sc.is_remote() && sc.is_valid());
        let unsampled =
            span_context("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
        assert!(!unsampled.is_sampled());
        assert!(span_context("00-00000000000000000000000000000000-b7ad6b7169203331-01").is_none());
        // No OpenTelemetry layer: nothing to name.
        assert_eq!(traceparent_of(&tracing::info_span!("x")), None);
    }
}
