//! Moving trace context across process boundaries: HTTP headers and AMQP message headers.
//!
//! Every hop reads W3C `traceparent` (the SDK's `TraceContextPropagator`) and B3 (the single
//! `b3` header or the `x-b3-*` ones, [`super::b3`]); W3C wins when both are present, so a trace
//! stays one trace whether the caller speaks Jaeger's or Zipkin's dialect. What a hop writes is
//! `OTEL_PROPAGATORS` ([`Formats`]): by default `traceparent` (with `tracestate` when the span
//! has a state) and B3's single header, as OpenTelemetry's B3 propagator writes by default.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU8, Ordering};

use lapin::types::{AMQPValue, FieldTable, ShortString};
use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::b3::{B3Propagator, FIELDS as B3_FIELDS};
use crate::identity::to_hex;

/// The trace-context formats a process writes on outgoing requests and messages, from
/// `OTEL_PROPAGATORS` (a comma-separated list). Every format is read whatever is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Formats {
    /// `tracecontext`: W3C `traceparent`, and `tracestate` when the span has a state.
    pub tracecontext: bool,
    /// `b3`: B3's single header, `b3: <trace>-<span>-<sampled>`.
    pub b3: bool,
    /// `b3multi`: `x-b3-traceid`, `x-b3-spanid` and `x-b3-sampled`, for Zipkin-era services
    /// that read nothing else.
    pub b3multi: bool,
}

impl Formats {
    /// `tracecontext,b3`.
    pub const DEFAULT: Self = Self {
        tracecontext: true,
        b3: true,
        b3multi: false,
    };

    /// Reads an `OTEL_PROPAGATORS` value: `tracecontext`, `b3`, `b3multi`, `none`, and
    /// `baggage` (accepted, as it is in OpenTelemetry's default list, but mall propagates no
    /// baggage). Anything else is refused.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut formats = Self {
            tracecontext: false,
            b3: false,
            b3multi: false,
        };
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "tracecontext" => formats.tracecontext = true,
                "b3" => formats.b3 = true,
                "b3multi" => formats.b3multi = true,
                "baggage" | "none" => {}
                other => {
                    return Err(format!(
                        "unknown propagator {other:?}; expected tracecontext, b3, b3multi, baggage or none"
                    ));
                }
            }
        }
        Ok(formats)
    }

    fn bits(self) -> u8 {
        u8::from(self.tracecontext) | u8::from(self.b3) << 1 | u8::from(self.b3multi) << 2
    }

    fn from_bits(bits: u8) -> Self {
        Self {
            tracecontext: bits & 1 != 0,
            b3: bits & 2 != 0,
            b3multi: bits & 4 != 0,
        }
    }
}

/// What this process writes (set by `telemetry::init`; the default until then, so a process
/// that never installed telemetry, a tool or a test, still propagates).
static FORMATS: AtomicU8 = AtomicU8::new(0b011);

/// Sets what [`inject_http`], [`inject_amqp`] and the global propagator write from now on.
pub fn set_formats(formats: Formats) {
    FORMATS.store(formats.bits(), Ordering::Relaxed);
}

/// What this process writes.
pub fn formats() -> Formats {
    Formats::from_bits(FORMATS.load(Ordering::Relaxed))
}

static W3C: LazyLock<TraceContextPropagator> = LazyLock::new(TraceContextPropagator::new);

/// Every header name any format reads or writes (B3's parent and flags included), for a hop
/// that drops a caller's context and writes its own.
const CONTEXT_FIELDS: [&str; 8] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "x-b3-parentspanid",
    "x-b3-flags",
];

/// mall's propagator, installed as the process's global one: writes the [`formats`] of the
/// moment (or fixed ones, [`Propagator::writing`]), reads B3 and then W3C, so W3C wins.
#[derive(Debug, Default)]
pub struct Propagator {
    fixed: Option<Formats>,
}

impl Propagator {
    /// A propagator that writes `formats` whatever the process's setting.
    pub fn writing(formats: Formats) -> Self {
        Self { fixed: Some(formats) }
    }
}

impl TextMapPropagator for Propagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let f = self.fixed.unwrap_or_else(formats);
        if f.tracecontext {
            W3C.inject_context(cx, injector);
        }
        if f.b3 || f.b3multi {
            B3Propagator {
                single: f.b3,
                multi: f.b3multi,
            }
            .inject_context(cx, injector);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let from_b3 = B3Propagator::default().extract_with_context(cx, extractor);
        W3C.extract_with_context(&from_b3, extractor)
    }

    fn fields(&self) -> FieldIter<'_> {
        static ALL: LazyLock<Vec<String>> =
            LazyLock::new(|| CONTEXT_FIELDS.iter().map(|&f| f.to_owned()).collect());
        FieldIter::new(&ALL)
    }
}

static PROPAGATOR: Propagator = Propagator { fixed: None };

/// Whether the headers carry any of the propagators' fields. Most requests at the edge carry
/// none, and for them extraction and setting an empty context as a parent are pure cost.
pub fn carries_http_context(headers: &http::HeaderMap) -> bool {
    // Names made once: a look-up by `&str` parses and validates the name on every call.
    static NAMES: LazyLock<Vec<http::HeaderName>> = LazyLock::new(|| {
        std::iter::once("traceparent")
            .chain(B3_FIELDS)
            .map(http::HeaderName::from_static)
            .collect()
    });
    NAMES.iter().any(|name| headers.contains_key(name))
}

/// The context a caller sent in HTTP headers (empty if none).
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    PROPAGATOR.extract(&HeaderExtractor(headers))
}

/// Writes the current span's context into outgoing HTTP headers.
pub fn inject_http(headers: &mut http::HeaderMap) {
    inject_http_context(&tracing::Span::current().context(), headers);
}

/// Writes `cx` into outgoing HTTP headers, in the [`formats`] of the process.
pub fn inject_http_context(cx: &Context, headers: &mut http::HeaderMap) {
    PROPAGATOR.inject_context(cx, &mut FieldInjector(headers));
}

/// Writes `cx` into outgoing HTTP headers in `formats`.
pub fn inject_http_formats(cx: &Context, formats: Formats, headers: &mut http::HeaderMap) {
    Propagator::writing(formats).inject_context(cx, &mut FieldInjector(headers));
}

/// opentelemetry-http's `HeaderInjector` without its per-field costs on every outgoing request:
/// the propagators' own field names are not parsed again, and the formatted value is kept.
struct FieldInjector<'a>(&'a mut http::HeaderMap);

impl Injector for FieldInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let name = match CONTEXT_NAMES.iter().find(|n| n.as_str() == key) {
            Some(name) => name.clone(),
            None => match http::HeaderName::from_bytes(key.as_bytes()) {
                Ok(name) => name,
                Err(_) => return,
            },
        };
        if let Ok(value) = http::HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// [`CONTEXT_FIELDS`] as header names. A `static`: a `const` array is built and dropped again
/// at every use, here once per header of every request.
static CONTEXT_NAMES: [http::HeaderName; 8] = [
    http::HeaderName::from_static(CONTEXT_FIELDS[0]),
    http::HeaderName::from_static(CONTEXT_FIELDS[1]),
    http::HeaderName::from_static(CONTEXT_FIELDS[2]),
    http::HeaderName::from_static(CONTEXT_FIELDS[3]),
    http::HeaderName::from_static(CONTEXT_FIELDS[4]),
    http::HeaderName::from_static(CONTEXT_FIELDS[5]),
    http::HeaderName::from_static(CONTEXT_FIELDS[6]),
    http::HeaderName::from_static(CONTEXT_FIELDS[7]),
];

/// Whether `name` is a trace-context header (any this process reads or writes, and B3's
/// `x-b3-parentspanid` and `x-b3-flags`), for a caller that copies a request's headers and
/// writes its own context in place of the caller's.
pub fn is_http_context(name: &http::HeaderName) -> bool {
    CONTEXT_NAMES.contains(name)
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
    PROPAGATOR.extract(&AmqpExtractor(headers))
}

/// The trace id of a context as 32 hex digits, if it carries a valid one.
pub fn trace_id_of(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| to_hex(&sc.trace_id().to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use std::collections::HashMap;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn context(flags: TraceFlags, state: TraceState) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex(TRACE).unwrap(),
            SpanId::from_hex(SPAN).unwrap(),
            flags,
            true,
            state,
        ))
    }

    fn remote() -> Context {
        context(TraceFlags::SAMPLED, TraceState::default())
    }

    fn formats(list: &str) -> Formats {
        Formats::parse(list).unwrap()
    }

    #[test]
    fn amqp_headers_carry_w3c_and_b3_by_default() {
        let mut table = FieldTable::default();
        Propagator::writing(Formats::DEFAULT).inject_context(&remote(), &mut AmqpInjector(&mut table));
        assert!(table.contains_key("traceparent"));
        assert!(table.contains_key("b3"));
        assert!(!table.contains_key("x-b3-traceid"), "multi only when asked for");
        let back = Propagator::default().extract(&AmqpExtractor(&table));
        assert_eq!(trace_id_of(&back).unwrap(), TRACE);
    }

    #[test]
    fn formats_come_from_otel_propagators() {
        assert_eq!(formats("tracecontext,b3"), Formats::DEFAULT);
        let multi = formats(" tracecontext , b3multi,baggage ");
        assert!(multi.tracecontext && multi.b3multi && !multi.b3);
        for nothing in ["none", "", "baggage"] {
            let f = formats(nothing);
            assert!(!f.tracecontext && !f.b3 && !f.b3multi, "{nothing:?}");
        }
        let err = Formats::parse("tracecontext,jaeger").unwrap_err();
        assert!(err.contains("jaeger"), "{err}");
        for f in [Formats::DEFAULT, multi, formats("b3,b3multi"), formats("none")] {
            assert_eq!(Formats::from_bits(f.bits()), f);
        }
    }

    #[test]
    fn each_format_writes_its_headers_and_what_is_written_reads_back() {
        let vendor = TraceState::from_key_value([("vendor", "x")]).unwrap();
        for flags in [TraceFlags::SAMPLED, TraceFlags::default()] {
            for state in [TraceState::default(), vendor.clone()] {
                let cx = context(flags, state.clone());
                let bit = if flags.is_sampled() { "1" } else { "0" };
                for list in [
                    "tracecontext,b3",
                    "tracecontext,b3,b3multi",
                    "b3multi",
                    "b3",
                    "none",
                ] {
                    let f = formats(list);
                    let mut headers = http::HeaderMap::new();
                    inject_http_formats(&cx, f, &mut headers);
                    let get = |name: &str| headers.get(name).map(|v| v.to_str().unwrap());
                    let traceparent = format!("00-{TRACE}-{SPAN}-0{bit}");
                    assert_eq!(
                        get("traceparent"),
                        f.tracecontext.then_some(traceparent.as_str()),
                        "{list}"
                    );
                    let single = format!("{TRACE}-{SPAN}-{bit}");
                    assert_eq!(get("b3"), f.b3.then_some(single.as_str()), "{list}");
                    assert_eq!(get("x-b3-traceid"), f.b3multi.then_some(TRACE), "{list}");
                    assert_eq!(get("x-b3-spanid"), f.b3multi.then_some(SPAN), "{list}");
                    assert_eq!(get("x-b3-sampled"), f.b3multi.then_some(bit), "{list}");
                    for name in headers.keys() {
                        assert!(is_http_context(name), "{name}");
                    }
                    if f.tracecontext || f.b3 || f.b3multi {
                        let back = extract_http(&headers);
                        let back = back.span();
                        let back = back.span_context();
                        assert_eq!(back.trace_id().to_string(), TRACE, "{list}");
                        assert_eq!(back.span_id().to_string(), SPAN, "{list}");
                        assert_eq!(back.is_sampled(), flags.is_sampled(), "{list}");
                        assert!(carries_http_context(&headers));
                    }
                }
            }
        }
        let mut headers = http::HeaderMap::new();
        inject_http_formats(&Context::new(), Formats::DEFAULT, &mut headers);
        assert!(headers.is_empty(), "no context, no header");
        assert!(!carries_http_context(&headers));
        assert!(!is_http_context(&http::header::AUTHORIZATION));
        assert!(is_http_context(&http::HeaderName::from_static("x-b3-flags")));
    }

    #[test]
    fn w3c_wins_over_b3_when_both_are_sent() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", format!("00-{TRACE}-{SPAN}-01").parse().unwrap());
        headers.insert(
            "b3",
            "11111111111111111111111111111111-2222222222222222-1"
                .parse()
                .unwrap(),
        );
        assert_eq!(trace_id_of(&extract_http(&headers)).unwrap(), TRACE);
        headers.insert("traceparent", "garbage".parse().unwrap());
        assert_eq!(
            trace_id_of(&extract_http(&headers)).unwrap(),
            "11111111111111111111111111111111",
            "an invalid traceparent leaves B3's context"
        );
        let carrier: HashMap<String, String> = HashMap::new();
        assert!(trace_id_of(&PROPAGATOR.extract(&carrier)).is_none());
    }
}
