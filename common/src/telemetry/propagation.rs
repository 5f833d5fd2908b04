//! Moving trace context across process boundaries: HTTP headers and AMQP message headers.
//!
//! Every hop writes both W3C `traceparent` and B3, and reads either (W3C wins when both are
//! present), so a trace stays one trace whether the caller speaks Jaeger's or Zipkin's dialect.

use lapin::types::{AMQPValue, FieldTable, ShortString};
use std::sync::LazyLock;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::B3Propagator;

/// The helpers below use this directly rather than the global propagator, so propagation never
/// silently turns into a no-op in a process that did not install telemetry (tools, tests).
static PROPAGATOR: LazyLock<TextMapCompositePropagator> = LazyLock::new(composite);

/// B3 then W3C: on extract the later propagator wins, so `traceparent` takes precedence.
pub fn composite() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(B3Propagator::new()),
        Box::new(TraceContextPropagator::new()),
    ])
}

/// The header names the propagators read, parsed once.
static FIELDS: LazyLock<Vec<http::HeaderName>> = LazyLock::new(|| {
    PROPAGATOR
        .fields()
        .filter_map(|f| http::HeaderName::from_bytes(f.as_bytes()).ok())
        .collect()
});

/// Whether the headers carry any of the propagators' fields. Most requests at the edge carry
/// none, and for them extraction (two propagators, their lookups and an empty context) and
/// setting that context as a parent are pure cost.
pub fn carries_http_context(headers: &http::HeaderMap) -> bool {
    FIELDS.iter().any(|name| headers.contains_key(name))
}

/// The context a caller sent in HTTP headers (empty if none).
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    PROPAGATOR.extract_with_context(&Context::new(), &HeaderExtractor(headers))
}

/// Writes the current span's context into outgoing HTTP headers.
pub fn inject_http(headers: &mut http::HeaderMap) {
    inject_http_context(&tracing::Span::current().context(), headers);
}

/// Writes `cx` into outgoing HTTP headers (for a caller that already holds the context).
pub fn inject_http_context(cx: &Context, headers: &mut http::HeaderMap) {
    PROPAGATOR.inject_context(cx, &mut HeaderInjector(headers));
}

struct AmqpInjector<'a>(&'a mut FieldTable);

impl Injector for AmqpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(ShortString::from(key), AMQPValue::LongString(value.into()));
    }
}

struct AmqpExtractor<'a>(&'a FieldTable);

impl Extractor for AmqpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.inner().iter().find_map(|(k, v)| {
            if !k.as_str().eq_ignore_ascii_case(key) {
                return None;
            }
            match v {
                AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
                AMQPValue::ShortString(s) => Some(s.as_str()),
                _ => None,
            }
        })
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(ShortString::as_str).collect()
    }
}

/// Writes the current span's context into AMQP message headers.
pub fn inject_amqp(headers: &mut FieldTable) {
    let cx = tracing::Span::current().context();
    PROPAGATOR.inject_context(&cx, &mut AmqpInjector(headers));
}

/// The context a publisher sent in AMQP message headers (empty if none).
pub fn extract_amqp(headers: &FieldTable) -> Context {
    PROPAGATOR.extract_with_context(&Context::new(), &AmqpExtractor(headers))
}

/// The trace id of a context as 32 hex digits, if it carries a valid one.
pub fn trace_id_of(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// A carrier of one W3C `traceparent` value (a Redis stream entry's field, say).
struct Traceparent(Option<String>);

impl Injector for Traceparent {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

impl Extractor for Traceparent {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0.as_deref()).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// A context as a W3C `traceparent` value, if it carries a valid span (for carriers that are
/// not headers, such as a Redis stream entry; [`extract_traceparent`] reads it back).
pub fn traceparent_of(cx: &Context) -> Option<String> {
    let mut carrier = Traceparent(None);
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.0
}

/// The context of a W3C `traceparent` value (empty if it is not one).
pub fn extract_traceparent(value: &str) -> Context {
    TraceContextPropagator::new().extract_with_context(&Context::new(), &Traceparent(Some(value.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    fn remote(trace: &str) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex(trace).unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }

    #[test]
    fn amqp_headers_carry_w3c_and_b3() {
        let cx = remote("4bf92f3577b34da6a3ce929d0e0e4736");
        let mut table = FieldTable::default();
        composite().inject_context(&cx, &mut AmqpInjector(&mut table));
        assert!(table.contains_key("traceparent"));
        assert!(table.contains_key("b3"));
        let back = composite().extract(&AmqpExtractor(&table));
        assert_eq!(trace_id_of(&back).unwrap(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn traceparent_values_round_trip() {
        let cx = remote("4bf92f3577b34da6a3ce929d0e0e4736");
        let value = traceparent_of(&cx).unwrap();
        assert_eq!(value, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let back = extract_traceparent(&value);
        assert_eq!(trace_id_of(&back).unwrap(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(traceparent_of(&Context::new()).is_none());
        assert!(trace_id_of(&extract_traceparent("garbage")).is_none());
    }

    #[test]
    fn w3c_wins_over_b3_when_both_are_sent() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-11111111111111111111111111111111-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        headers.insert(
            "b3",
            "22222222222222222222222222222222-00f067aa0ba902b7-1"
                .parse()
                .unwrap(),
        );
        let cx = composite().extract(&HeaderExtractor(&headers));
        assert_eq!(trace_id_of(&cx).unwrap(), "11111111111111111111111111111111");
        headers.remove("traceparent");
        let cx = composite().extract(&HeaderExtractor(&headers));
        assert_eq!(trace_id_of(&cx).unwrap(), "22222222222222222222222222222222");
    }
}
