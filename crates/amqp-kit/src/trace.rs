//! W3C trace context in AMQP message headers, so a consumer's span continues
//! the trace of the request that published the message.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, ShortString},
};
use opentelemetry::propagation::{Extractor, Injector};
use tracing::Span;

struct HeadersInjector<'a>(&'a mut FieldTable);

impl Injector for HeadersInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(ShortString::from(key), AMQPValue::LongString(value.into()));
    }
}

struct HeadersExtractor<'a>(&'a BasicProperties);

impl Extractor for HeadersExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        crate::header_str(self.0, key)
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .headers()
            .as_ref()
            .map(|h| h.inner().keys().map(|k| k.as_str()).collect())
            .unwrap_or_default()
    }
}

/// `props` with `span`'s trace context added to its headers (replacing any
/// context it carried: a retried message continues from the attempt that
/// scheduled it).
pub fn with_context(props: BasicProperties, span: &Span) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    svc_kit::observe::inject(span, &mut HeadersInjector(&mut headers));
    props.with_headers(headers)
}

/// Makes `span` a child of the context a message carries, if any.
pub fn continue_from(span: &Span, props: &BasicProperties) {
    svc_kit::observe::continue_remote(span, &HeadersExtractor(props));
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::{
        propagation::TextMapPropagator,
        trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
    };
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    #[test]
    fn context_round_trips_through_message_headers() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc.clone());
        let mut headers = FieldTable::default();
        headers.insert("x-attempt".into(), AMQPValue::LongInt(2));
        TraceContextPropagator::new().inject_context(&cx, &mut HeadersInjector(&mut headers));
        let props = BasicProperties::default().with_headers(headers);

        assert_eq!(
            crate::header_u32(&props, "x-attempt"),
            Some(2),
            "other headers kept"
        );
        let back = TraceContextPropagator::new().extract(&HeadersExtractor(&props));
        let got = back.span().span_context().clone();
        assert_eq!(got.trace_id(), sc.trace_id());
        assert_eq!(got.span_id(), sc.span_id());
        assert!(got.is_sampled());

        let none =
            TraceContextPropagator::new().extract(&HeadersExtractor(&BasicProperties::default()));
        assert!(!none.span().span_context().is_valid());
    }
}
