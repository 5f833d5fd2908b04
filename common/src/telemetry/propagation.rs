//! Moving trace context across process boundaries: HTTP headers and AMQP message headers.
//!
//! Every hop reads W3C `traceparent` and B3 (the single `b3` header or the `x-b3-*` ones; W3C
//! wins when both are present), so a trace stays one trace whether the caller speaks Jaeger's
//! or Zipkin's dialect. What a hop writes is `OTEL_PROPAGATORS` ([`Formats`]): by default
//! `traceparent` (with `tracestate` when the span has a state) and B3's single header, as
//! OpenTelemetry's B3 propagator writes by default. Each header written is one the next
//! service parses, names and stores on every request (with hyper, about 900 instructions per
//! field, callgrind), so the `x-b3-*` headers are only written when asked for (`b3multi`).

use std::str::FromStr;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU8, Ordering};

use lapin::types::{AMQPValue, FieldTable, ShortString};
use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::b3;
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

/// Sets what [`inject_http`], [`inject_http_context`], [`inject_amqp`] and the global
/// propagator write from now on.
pub fn set_formats(formats: Formats) {
    FORMATS.store(formats.bits(), Ordering::Relaxed);
}

/// What this process writes.
pub fn formats() -> Formats {
    Formats::from_bits(FORMATS.load(Ordering::Relaxed))
}

/// The helpers below use this directly rather than the global propagator, so propagation never
/// silently turns into a no-op in a process that did not install telemetry (tools, tests).
static PROPAGATOR: LazyLock<Propagator> = LazyLock::new(Propagator::default);

/// mall's propagator, installed as the process's global one: writes the [`formats`] of the
/// moment, reads W3C and then B3.
#[derive(Debug)]
pub struct Propagator {
    fields: Vec<String>,
}

impl Default for Propagator {
    fn default() -> Self {
        Self {
            fields: FIELD_NAMES.iter().map(|&f| f.to_owned()).collect(),
        }
    }
}

impl TextMapPropagator for Propagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        inject_formats(cx, formats(), injector);
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let get = |name: &'static str| extractor.get(name);
        match extract(get("traceparent"), get("tracestate"), get) {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

/// Writes `cx` in `formats` through `injector`.
fn inject_formats(cx: &Context, formats: Formats, injector: &mut dyn Injector) {
    if let Some(ids) = Ids::of(cx) {
        ids.each_field(formats, |name, value| {
            injector.set(name.as_str(), String::from_utf8_lossy(value).into_owned());
        });
    }
}

/// The context in `traceparent` (and `tracestate`), else in B3, else none.
fn extract<'a>(
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
    get: impl Fn(&'static str) -> Option<&'a str>,
) -> Option<SpanContext> {
    traceparent
        .and_then(|value| parse_traceparent(value, tracestate))
        .or_else(|| b3::extract(get))
}

/// A W3C `traceparent` value, as the Trace Context spec defines it: `vv-<32>-<16>-ff` in
/// lowercase hex, version `ff` invalid, version `00` exactly that long, a later version
/// possibly longer (after a `-`), neither id all zeros; only the sampled flag is kept. Read
/// in place: the SDK's propagator splits it into a vector and parses each part as a string,
/// about 4,000 instructions for every request a service gets through the gateway.
fn parse_traceparent(value: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let v = value.trim().as_bytes();
    if v.len() < TRACEPARENT_LEN || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let [version] = hex_bytes::<1>(&v[0..2])?;
    let longer_ok = version != 0 && v.get(TRACEPARENT_LEN).is_none_or(|&b| b == b'-');
    if version == 0xff || (v.len() != TRACEPARENT_LEN && !longer_ok) {
        return None;
    }
    let trace = hex_bytes::<16>(&v[3..35])?;
    let span = hex_bytes::<8>(&v[36..52])?;
    let [flags] = hex_bytes::<1>(&v[53..55])?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    let state = tracestate
        .filter(|s| !s.is_empty())
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        TraceId::from_bytes(trace),
        SpanId::from_bytes(span),
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    ))
}

/// `2 * N` lowercase hex digits as `N` bytes; `None` for any other byte. A table and no branch
/// per digit: folding the digits into a `u128` one at a time cost about 700 instructions per
/// `traceparent`, read on every request a service gets through the gateway.
fn hex_bytes<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    /// Each byte's value as a lowercase hex digit, or 0xff.
    const DIGIT: [u8; 256] = {
        let mut table = [0xff; 256];
        let mut i = 0;
        while i < 10 {
            table[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            table[b'a' as usize + i] = 10 + i as u8;
            i += 1;
        }
        table
    };
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    let mut invalid = 0u8;
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (high, low) = (DIGIT[usize::from(pair[0])], DIGIT[usize::from(pair[1])]);
        invalid |= high | low;
        *byte = high << 4 | (low & 0xf);
    }
    (invalid & 0xf0 == 0).then_some(out)
}

/// The header names the propagator reads.
const FIELD_NAMES: [&str; 6] = [
    "traceparent",
    "tracestate",
    b3::B3_SINGLE,
    b3::B3_TRACE_ID,
    b3::B3_SPAN_ID,
    b3::B3_SAMPLED,
];

/// [`FIELD_NAMES`] parsed once.
static FIELDS: LazyLock<Vec<http::HeaderName>> = LazyLock::new(|| {
    FIELD_NAMES
        .iter()
        .map(|f| http::HeaderName::from_static(f))
        .collect()
});

/// Whether the headers carry any of the propagators' fields. Most requests at the edge carry
/// none, and for them extraction and setting an empty context as a parent are pure cost.
pub fn carries_http_context(headers: &http::HeaderMap) -> bool {
    // A request has a few fields: comparing each with the six names is cheaper than hashing
    // the six names to look them up.
    if headers.keys_len() < FIELDS.len() {
        headers.keys().any(|name| FIELDS.contains(name))
    } else {
        FIELDS.iter().any(|name| headers.contains_key(name))
    }
}

/// The context a caller sent in HTTP headers (empty if none).
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    fn text(value: Option<&http::HeaderValue>) -> Option<&str> {
        value.and_then(|v| v.to_str().ok())
    }
    let found = extract(
        text(headers.get(&TRACEPARENT)),
        text(headers.get(&TRACESTATE)),
        |name| text(headers.get(name)),
    );
    match found {
        Some(sc) => Context::new().with_remote_span_context(sc),
        None => Context::new(),
    }
}

/// Writes the current span's context into outgoing HTTP headers.
pub fn inject_http(headers: &mut http::HeaderMap) {
    inject_http_context(&tracing::Span::current().context(), headers);
}

/// Writes `cx` into outgoing HTTP headers (for a caller that already holds the context), in
/// the [`formats`] of the process, straight into the map: through a propagator every value is
/// a `String` of its own, passed through a dynamic call.
pub fn inject_http_context(cx: &Context, headers: &mut http::HeaderMap) {
    inject_http_formats(cx, formats(), headers);
}

/// Writes `cx` into outgoing HTTP headers in `formats`.
pub fn inject_http_formats(cx: &Context, formats: Formats, headers: &mut http::HeaderMap) {
    if let Some(ids) = Ids::of(cx) {
        ids.each_field(formats, |name, value| {
            let value = http::HeaderValue::from_bytes(value).expect("checked by `Ids::each_field`");
            headers.insert(name.clone(), value);
        });
    }
}

/// Appends the header lines [`inject_http_context`] would add for `cx` in `formats`
/// (`traceparent: ...\r\n` and the rest) to `out`, for a caller that writes a request head
/// itself: no header map, no header values. Returns whether it wrote any: not without a valid
/// context.
pub fn push_http_context_lines(cx: &Context, formats: Formats, out: &mut Vec<u8>) -> bool {
    let Some(ids) = Ids::of(cx) else {
        return false;
    };
    ids.each_field(formats, |name, value| {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    });
    true
}

/// Whether `name` is a trace-context header (any this process reads or writes, and B3's
/// `x-b3-parentspanid` and `x-b3-flags`), for a caller that copies a request's headers and
/// writes its own context in place of the caller's.
pub fn is_http_context(name: &http::HeaderName) -> bool {
    [
        TRACEPARENT,
        TRACESTATE,
        B3,
        B3_TRACE_ID,
        B3_SPAN_ID,
        B3_SAMPLED,
        B3_PARENT_SPAN_ID,
        B3_FLAGS,
    ]
    .contains(name)
}

/// A valid span context's ids, written once: `00-<trace>-<span>-0x` (a `traceparent`) then
/// `<trace>-<span>-x` (a B3 single value); every other value is a slice of these.
struct Ids {
    buf: [u8; TRACEPARENT_LEN + B3_LEN],
    sampled: bool,
    state: String,
}

impl Ids {
    fn of(cx: &Context) -> Option<Self> {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return None;
        }
        let sampled = sc.is_sampled();
        let mut buf = [0u8; TRACEPARENT_LEN + B3_LEN];
        buf[..3].copy_from_slice(b"00-");
        write_hex(&mut buf[3..35], &sc.trace_id().to_bytes());
        buf[35] = b'-';
        write_hex(&mut buf[36..52], &sc.span_id().to_bytes());
        buf[52..55].copy_from_slice(if sampled { b"-01" } else { b"-00" });
        buf.copy_within(3..53, TRACEPARENT_LEN);
        buf[TRACEPARENT_LEN + B3_LEN - 1] = if sampled { b'1' } else { b'0' };
        Some(Self {
            buf,
            sampled,
            state: sc.trace_state().header(),
        })
    }

    /// The `traceparent` value.
    fn traceparent(&self) -> &[u8] {
        &self.buf[..TRACEPARENT_LEN]
    }

    /// Calls `field` with each field `formats` writes, name and value, in the order written:
    /// the one place that says which headers each format is. An empty trace state is not
    /// written, nor one that would not make a valid header value. (A callback, not an
    /// iterator: the gateway writes these on every request, and an array of the six candidates
    /// to filter cost it about 180 instructions more.)
    fn each_field(&self, formats: Formats, mut field: impl FnMut(&http::HeaderName, &[u8])) {
        if formats.tracecontext {
            field(&TRACEPARENT, self.traceparent());
            if !self.state.is_empty() && http::HeaderValue::from_str(&self.state).is_ok() {
                field(&TRACESTATE, self.state.as_bytes());
            }
        }
        if formats.b3 {
            field(&B3, &self.buf[TRACEPARENT_LEN..]);
        }
        if formats.b3multi {
            field(&B3_TRACE_ID, &self.buf[3..35]);
            field(&B3_SPAN_ID, &self.buf[36..52]);
            field(&B3_SAMPLED, if self.sampled { b"1" } else { b"0" });
        }
    }
}

const TRACEPARENT_LEN: usize = 55;
const B3_LEN: usize = 51;
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");
const B3: http::HeaderName = http::HeaderName::from_static(b3::B3_SINGLE);
const B3_TRACE_ID: http::HeaderName = http::HeaderName::from_static(b3::B3_TRACE_ID);
const B3_SPAN_ID: http::HeaderName = http::HeaderName::from_static(b3::B3_SPAN_ID);
const B3_SAMPLED: http::HeaderName = http::HeaderName::from_static(b3::B3_SAMPLED);
const B3_PARENT_SPAN_ID: http::HeaderName = http::HeaderName::from_static("x-b3-parentspanid");
const B3_FLAGS: http::HeaderName = http::HeaderName::from_static(b3::B3_FLAGS);

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
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

/// A context as a W3C `traceparent` value, if it carries a valid span (for carriers that are
/// not headers, such as a Redis stream entry; [`extract_traceparent`] reads it back).
pub fn traceparent_of(cx: &Context) -> Option<String> {
    let ids = Ids::of(cx)?;
    Some(String::from_utf8_lossy(ids.traceparent()).into_owned())
}

/// The context of a W3C `traceparent` value (empty if it is not one).
pub fn extract_traceparent(value: &str) -> Context {
    match parse_traceparent(value, None) {
        Some(sc) => Context::new().with_remote_span_context(sc),
        None => Context::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
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
        inject_formats(&remote(), Formats::DEFAULT, &mut AmqpInjector(&mut table));
        assert!(table.contains_key("traceparent"));
        assert!(table.contains_key("b3"));
        assert!(!table.contains_key("tracestate"), "no state, no tracestate");
        assert!(!table.contains_key("x-b3-traceid"), "multi only when asked for");
        let back = Propagator::default().extract(&AmqpExtractor(&table));
        assert_eq!(trace_id_of(&back).unwrap(), TRACE);
    }

    #[test]
    fn traceparent_values_round_trip() {
        let value = traceparent_of(&remote()).unwrap();
        assert_eq!(value, format!("00-{TRACE}-{SPAN}-01"));
        let back = extract_traceparent(&value);
        assert_eq!(trace_id_of(&back).unwrap(), TRACE);
        assert!(traceparent_of(&Context::new()).is_none());
        assert!(trace_id_of(&extract_traceparent("garbage")).is_none());
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
        assert_eq!(
            Formats::from_bits(FORMATS.load(Ordering::Relaxed)),
            Formats::DEFAULT
        );
    }

    /// What each way of writing puts out, as (name, value) pairs in order.
    fn written(cx: &Context, f: Formats) -> [Vec<(String, String)>; 3] {
        let mut carrier = HashMap::new();
        inject_formats(cx, f, &mut carrier);
        let mut map = http::HeaderMap::new();
        inject_http_formats(cx, f, &mut map);
        let mut lines = b"GET / HTTP/1.1\r\n".to_vec();
        assert!(push_http_context_lines(cx, f, &mut lines));
        let lines = std::str::from_utf8(&lines)
            .unwrap()
            .strip_prefix("GET / HTTP/1.1\r\n")
            .unwrap()
            .split_terminator("\r\n")
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect();
        let map = map
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        let mut carrier: Vec<(String, String)> = carrier.into_iter().collect();
        carrier.sort();
        [carrier, map, lines]
    }

    #[test]
    fn every_way_of_writing_writes_the_same_and_w3c_as_the_sdk_does() {
        let vendor = TraceState::from_key_value([("vendor", "x")]).unwrap();
        for flags in [TraceFlags::SAMPLED, TraceFlags::default()] {
            for state in [TraceState::default(), vendor.clone()] {
                let cx = context(flags, state.clone());
                let mut sdk = HashMap::new();
                TraceContextPropagator::new().inject_context(&cx, &mut sdk);
                let bit = if flags.is_sampled() { "1" } else { "0" };
                for list in ["tracecontext,b3", "tracecontext,b3,b3multi", "b3multi", "none"] {
                    let f = formats(list);
                    let [mut carrier, map, lines] = written(&cx, f);
                    assert_eq!(map, lines, "{list}: the header lines are the map's, in order");
                    let mut sorted = map.clone();
                    sorted.sort();
                    carrier.sort();
                    assert_eq!(carrier, sorted, "{list}: the propagator writes the same");
                    let get = |name: &str| map.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
                    if f.tracecontext {
                        assert_eq!(get("traceparent"), Some(sdk["traceparent"].as_str()), "{list}");
                        let sdk_state = sdk["tracestate"].as_str();
                        assert_eq!(get("tracestate"), (!sdk_state.is_empty()).then_some(sdk_state));
                    } else {
                        assert_eq!(get("traceparent"), None);
                        assert_eq!(get("tracestate"), None);
                    }
                    let single = format!("{TRACE}-{SPAN}-{bit}");
                    assert_eq!(get("b3"), f.b3.then_some(single.as_str()), "{list}");
                    assert_eq!(get("x-b3-traceid"), f.b3multi.then_some(TRACE), "{list}");
                    assert_eq!(get("x-b3-spanid"), f.b3multi.then_some(SPAN), "{list}");
                    assert_eq!(get("x-b3-sampled"), f.b3multi.then_some(bit), "{list}");
                    for (name, _) in &map {
                        assert!(is_http_context(
                            &http::HeaderName::from_bytes(name.as_bytes()).unwrap()
                        ));
                    }
                    // And what was written reads back as the same context.
                    if f.tracecontext || f.b3 || f.b3multi {
                        let mut headers = http::HeaderMap::new();
                        inject_http_formats(&cx, f, &mut headers);
                        let back = extract_http(&headers);
                        let back = back.span();
                        let back = back.span_context();
                        assert_eq!(back.trace_id().to_string(), TRACE);
                        assert_eq!(back.span_id().to_string(), SPAN);
                        assert_eq!(back.is_sampled(), flags.is_sampled());
                    }
                }
            }
        }
        let mut headers = http::HeaderMap::new();
        inject_http_formats(&Context::new(), Formats::DEFAULT, &mut headers);
        assert!(headers.is_empty(), "no context, no header");
        let mut untouched = b"kept".to_vec();
        assert!(!push_http_context_lines(
            &Context::new(),
            Formats::DEFAULT,
            &mut untouched
        ));
        assert_eq!(untouched, b"kept");
        assert!(!is_http_context(&http::header::AUTHORIZATION));
        assert!(is_http_context(&http::HeaderName::from_static("x-b3-flags")));
        assert_eq!(
            trace_id_of(&remote()).unwrap(),
            remote().span().span_context().trace_id().to_string()
        );
    }

    #[test]
    fn traceparent_is_read_as_the_sdk_reads_it_and_stricter_where_the_spec_is() {
        let sdk = |value: &str, state: Option<&str>| {
            let mut carrier = HashMap::from([("traceparent".to_owned(), value.to_owned())]);
            if let Some(state) = state {
                carrier.insert("tracestate".to_owned(), state.to_owned());
            }
            let cx = TraceContextPropagator::new().extract(&carrier);
            let span = cx.span();
            let sc = span.span_context().clone();
            sc.is_valid().then_some(sc)
        };
        let state = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
        for value in [
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-09 ",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-02",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-the-future-holds",
            "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            for st in [None, Some(state), Some("")] {
                let ours = parse_traceparent(value, st).unwrap_or_else(|| panic!("{value}"));
                assert_eq!(Some(ours), sdk(value, st), "{value} {st:?}");
            }
        }
        for invalid in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-B7AD6B7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0A",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c8031+c-b7ad6b7169203331-01",
            "0g-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            // Two bytes that are no digit where two digits belong (the length still fits).
            "00-0af7651916cd43dd8448eb211c8031\u{e9}-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333:-01",
        ] {
            assert_eq!(parse_traceparent(invalid, None), None, "{invalid:?}");
        }
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
        assert_eq!(
            trace_id_of(&extract_http(&headers)).unwrap(),
            "11111111111111111111111111111111"
        );
        // An invalid traceparent is no context: B3's is read.
        headers.insert("traceparent", "00-garbage".parse().unwrap());
        assert_eq!(
            trace_id_of(&extract_http(&headers)).unwrap(),
            "22222222222222222222222222222222"
        );
        headers.remove("traceparent");
        assert_eq!(
            trace_id_of(&extract_http(&headers)).unwrap(),
            "22222222222222222222222222222222"
        );
        headers.remove("b3");
        headers.insert(
            "x-b3-traceid",
            "33333333333333333333333333333333".parse().unwrap(),
        );
        headers.insert("x-b3-spanid", "00f067aa0ba902b7".parse().unwrap());
        assert!(carries_http_context(&headers));
        assert_eq!(
            trace_id_of(&extract_http(&headers)).unwrap(),
            "33333333333333333333333333333333"
        );
        assert!(!carries_http_context(&http::HeaderMap::new()));
        assert!(trace_id_of(&extract_http(&http::HeaderMap::new())).is_none());
    }
}
