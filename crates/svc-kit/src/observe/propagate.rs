//! W3C trace context (`traceparent`, `tracestate`) in and out of carriers:
//! HTTP headers and gRPC metadata here, AMQP headers in amqp-kit.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Writes `span`'s trace context (`traceparent`, `tracestate`) into a carrier.
pub fn inject(span: &Span, carrier: &mut dyn Injector) {
    TraceContextPropagator::new().inject_context(&span.context(), carrier);
}

/// Reads a remote trace context from a carrier; the empty context if none.
pub fn extract(carrier: &dyn Extractor) -> Context {
    TraceContextPropagator::new().extract(carrier)
}

/// Makes `span` a child of the remote context in `carrier`, if it has one.
/// Call it before anything is logged in `span`.
pub fn continue_remote(span: &Span, carrier: &dyn Extractor) {
    let cx = extract(carrier);
    if cx.span().span_context().is_valid() {
        // Fails only if the span has already started; it then stays a root.
        let _ = span.set_parent(cx);
    }
}

/// HTTP headers (and so gRPC metadata) as a propagation carrier.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_survives_a_round_trip_through_headers() {
        let mut headers = HeaderMap::new();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert("traceparent", HeaderValue::from_static(parent));
        let cx = extract(&HeaderExtractor(&headers));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );

        let mut out = HeaderMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut out));
        assert_eq!(out.get("traceparent").unwrap(), parent);

        let mut garbage = HeaderMap::new();
        garbage.insert("traceparent", HeaderValue::from_static("00-zz-yy-01"));
        assert!(
            !extract(&HeaderExtractor(&garbage))
                .span()
                .span_context()
                .is_valid()
        );
    }
}
