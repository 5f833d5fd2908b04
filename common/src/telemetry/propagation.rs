//! Moving trace context across process boundaries: HTTP headers and AMQP message headers.
//!
//! Every hop writes both W3C `traceparent` and B3, and reads either (W3C wins when both are
//! present), so a trace stays one trace whether the caller speaks Jaeger's or Zipkin's dialect.

use lapin::types::{AMQPValue, FieldTable, ShortString};
use std::sync::LazyLock;

use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::B3Propagator;
use crate::identity::to_hex;

/// The helpers below use this directly rather than the global propagator, so propagation never
/// silently turns into a no-op in a process that did not install telemetry (tools, tests).
static PROPAGATOR: LazyLock<TextMapCompositePropagator> = LazyLock::new(composite);

/// B3 then W3C: on extract the later propagator wins, so `traceparent` takes precedence.
pub fn composite() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![Box::new(B3Propagator::new()), Box::new(W3c::default())])
}

/// W3C trace context: the SDK's propagator, with `traceparent` written by table instead of
/// through the integer formatter (every hop of every request writes one).
#[derive(Debug, Default)]
struct W3c(TraceContextPropagator);

impl TextMapPropagator for W3c {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        // Version 00, as the SDK writes it; only the sampled flag is defined.
        let flags = if sc.is_sampled() { "01" } else { "00" };
        let trace = to_hex(&sc.trace_id().to_bytes());
        let span_hex = to_hex(&sc.span_id().to_bytes());
        injector.set("traceparent", ["00", &trace, &span_hex, flags].join("-"));
        injector.set("tracestate", sc.trace_state().header());
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        self.0.extract_with_context(cx, extractor)
    }

    fn fields(&self) -> FieldIter<'_> {
        self.0.fields()
    }
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
    // A request has a few fields: comparing each with the eight names is cheaper than hashing
    // the eight names to look them up.
    if headers.keys_len() < FIELDS.len() {
        headers.keys().any(|name| FIELDS.contains(name))
    } else {
        FIELDS.iter().any(|name| headers.contains_key(name))
    }
}

/// The context a caller sent in HTTP headers (empty if none).
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    PROPAGATOR.extract_with_context(&Context::new(), &HeaderExtractor(headers))
}

/// Writes the current span's context into outgoing HTTP headers.
pub fn inject_http(headers: &mut http::HeaderMap) {
    inject_http_context(&tracing::Span::current().context(), headers);
}

/// Writes `cx` into outgoing HTTP headers (for a caller that already holds the context): what
/// the composite propagator writes (W3C `traceparent` and `tracestate`, B3 single and multi),
/// but straight into the map. Through the propagators every hop of every request paid for six
/// `String`s, six header values and two dynamic calls, about 6,000 instructions (callgrind);
/// here the ids are written once into one buffer that every value shares.
pub fn inject_http_context(cx: &Context, headers: &mut http::HeaderMap) {
    use http::HeaderValue;
    let Some((buf, sampled, state)) = context_ids(cx) else {
        return;
    };
    let value = |range: std::ops::Range<usize>| {
        HeaderValue::from_maybe_shared(buf.slice(range))
            .expect("hex digits and dashes are a valid header value")
    };
    headers.insert(TRACEPARENT, value(0..TRACEPARENT_LEN));
    let state = if state.is_empty() {
        HeaderValue::from_static("")
    } else {
        HeaderValue::try_from(state).unwrap_or(HeaderValue::from_static(""))
    };
    headers.insert(TRACESTATE, state);
    headers.insert(B3, value(TRACEPARENT_LEN..TRACEPARENT_LEN + B3_LEN));
    headers.insert(B3_TRACE_ID, value(3..35));
    headers.insert(B3_SPAN_ID, value(36..52));
    headers.insert(
        B3_SAMPLED,
        HeaderValue::from_static(if sampled { "1" } else { "0" }),
    );
}

/// Appends the header lines [`inject_http_context`] would add for `cx` (`traceparent: ...\r\n`
/// and the rest) to `out`, for a caller that writes a request head itself: no header map, no
/// header values, no buffer of their own (the B3 values are copies of the `traceparent` digits
/// already written). Returns whether it wrote them: not without a valid context.
pub fn push_http_context_lines(cx: &Context, out: &mut Vec<u8>) -> bool {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return false;
    }
    let sampled = sc.is_sampled();
    out.reserve(320);
    out.extend_from_slice(b"traceparent: 00-");
    // Where the trace id's digits start; the span id's follow its 32 and a dash.
    let trace = out.len();
    push_hex(out, &sc.trace_id().to_bytes());
    out.push(b'-');
    push_hex(out, &sc.span_id().to_bytes());
    out.extend_from_slice(if sampled { b"-01\r\n" } else { b"-00\r\n" });
    let state = sc.trace_state().header();
    // A state that is not a valid header value is left empty, as `inject_http_context` does.
    let state_ok = state.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
    out.extend_from_slice(b"tracestate: ");
    if state_ok {
        out.extend_from_slice(state.as_bytes());
    }
    out.extend_from_slice(b"\r\nb3: ");
    // `<trace>-<span>` as in traceparent, then the sampled flag.
    out.extend_from_within(trace..trace + 49);
    out.extend_from_slice(if sampled { b"-1\r\n" } else { b"-0\r\n" });
    out.extend_from_slice(b"x-b3-traceid: ");
    out.extend_from_within(trace..trace + 32);
    out.extend_from_slice(b"\r\nx-b3-spanid: ");
    out.extend_from_within(trace + 33..trace + 49);
    out.extend_from_slice(if sampled {
        b"\r\nx-b3-sampled: 1\r\n"
    } else {
        b"\r\nx-b3-sampled: 0\r\n"
    });
    true
}

/// Whether `name` is one of the trace-context headers [`inject_http_context`] writes, for a
/// caller that copies a request's headers and writes its own context in place of the caller's.
pub fn is_http_context(name: &http::HeaderName) -> bool {
    [TRACEPARENT, TRACESTATE, B3, B3_TRACE_ID, B3_SPAN_ID, B3_SAMPLED].contains(name)
}

/// `00-<trace>-<span>-0x<trace>-<span>-x` (traceparent, then the B3 single value; the B3 multi
/// values are slices of it), whether sampled, and the trace state, when `cx` has a valid span.
fn context_ids(cx: &Context) -> Option<(bytes::Bytes, bool, String)> {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return None;
    }
    let sampled = sc.is_sampled();
    let mut buf = Vec::with_capacity(TRACEPARENT_LEN + B3_LEN);
    buf.extend_from_slice(b"00-");
    push_hex(&mut buf, &sc.trace_id().to_bytes());
    buf.push(b'-');
    push_hex(&mut buf, &sc.span_id().to_bytes());
    buf.extend_from_slice(if sampled { b"-01" } else { b"-00" });
    buf.extend_from_within(3..TRACEPARENT_LEN - 2);
    buf.push(if sampled { b'1' } else { b'0' });
    Some((bytes::Bytes::from(buf), sampled, sc.trace_state().header()))
}

const TRACEPARENT_LEN: usize = 55;
const B3_LEN: usize = 51;
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");
const B3: http::HeaderName = http::HeaderName::from_static("b3");
const B3_TRACE_ID: http::HeaderName = http::HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: http::HeaderName = http::HeaderName::from_static("x-b3-spanid");
const B3_SAMPLED: http::HeaderName = http::HeaderName::from_static("x-b3-sampled");

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
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
    sc.is_valid().then(|| to_hex(&sc.trace_id().to_bytes()))
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
    W3c::default().inject_context(cx, &mut carrier);
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
    fn the_traceparent_written_here_is_the_sdks() {
        use std::collections::HashMap;
        for flags in [TraceFlags::SAMPLED, TraceFlags::default()] {
            let state = TraceState::from_key_value([("vendor", "x")]).unwrap();
            for ts in [TraceState::default(), state] {
                let cx = Context::new().with_remote_span_context(SpanContext::new(
                    TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
                    SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                    flags,
                    true,
                    ts,
                ));
                let (mut ours, mut sdk) = (HashMap::new(), HashMap::new());
                W3c::default().inject_context(&cx, &mut ours);
                TraceContextPropagator::new().inject_context(&cx, &mut sdk);
                assert_eq!(ours, sdk);
                // The HTTP headers are written directly: exactly what the composite propagator
                // (B3 single and multi, W3C) writes.
                let mut headers = http::HeaderMap::new();
                inject_http_context(&cx, &mut headers);
                let written: HashMap<String, String> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
                    .collect();
                let mut composite_wrote = HashMap::new();
                composite().inject_context(&cx, &mut composite_wrote);
                assert_eq!(written, composite_wrote);
                // And as header lines, the same pairs in the same order.
                let mut lines = b"GET / HTTP/1.1\r\n".to_vec();
                assert!(push_http_context_lines(&cx, &mut lines));
                let lines: Vec<(String, String)> = std::str::from_utf8(&lines)
                    .unwrap()
                    .strip_prefix("GET / HTTP/1.1\r\n")
                    .unwrap()
                    .split_terminator("\r\n")
                    .map(|l| {
                        let (k, v) = l.split_once(": ").unwrap();
                        (k.to_owned(), v.to_owned())
                    })
                    .collect();
                let in_map: Vec<(String, String)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
                    .collect();
                assert_eq!(lines, in_map);
                assert!(headers.keys().all(is_http_context));
                assert_eq!(headers["traceparent"], sdk["traceparent"].as_str());
            }
        }
        let cx = remote("4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            trace_id_of(&cx).unwrap(),
            cx.span().span_context().trace_id().to_string()
        );
        let mut none = HashMap::new();
        W3c::default().inject_context(&Context::new(), &mut none);
        assert!(none.is_empty(), "no context, no header");
        let mut headers = http::HeaderMap::new();
        inject_http_context(&Context::new(), &mut headers);
        assert!(headers.is_empty(), "no context, no header");
        let mut untouched = b"kept".to_vec();
        assert!(!push_http_context_lines(&Context::new(), &mut untouched));
        assert_eq!(untouched, b"kept");
        assert!(!is_http_context(&http::header::AUTHORIZATION));
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
