//! B3 (Zipkin's trace headers) as a `TextMapPropagator`: reads the single `b3` header, else the
//! `x-b3-*` headers, as the B3 spec recommends; writes either or both. Our own because the only
//! published B3 propagator lives in the deprecated `opentelemetry-zipkin` crate.

use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

use crate::identity::{push_hex, to_hex};

const B3_SINGLE: &str = "b3";
const B3_TRACE_ID: &str = "x-b3-traceid";
const B3_SPAN_ID: &str = "x-b3-spanid";
const B3_SAMPLED: &str = "x-b3-sampled";
const B3_FLAGS: &str = "x-b3-flags";

/// The headers B3 is read from.
pub(super) const FIELDS: [&str; 5] = [B3_SINGLE, B3_TRACE_ID, B3_SPAN_ID, B3_SAMPLED, B3_FLAGS];

/// B3: reads both forms; writes the single header, the multiple ones, or both.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct B3Propagator {
    pub(super) single: bool,
    pub(super) multi: bool,
}

impl TextMapPropagator for B3Propagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        let (trace, span) = (sc.trace_id().to_bytes(), sc.span_id().to_bytes());
        let sampled = if sc.is_sampled() { "1" } else { "0" };
        if self.single {
            // `<trace>-<span>-<sampled>` written in place, not through the formatter.
            let mut single = String::with_capacity(51);
            push_hex(&mut single, &trace);
            single.push('-');
            push_hex(&mut single, &span);
            single.push('-');
            single.push_str(sampled);
            injector.set(B3_SINGLE, single);
        }
        if self.multi {
            injector.set(B3_TRACE_ID, to_hex(&trace));
            injector.set(B3_SPAN_ID, to_hex(&span));
            injector.set(B3_SAMPLED, sampled.to_owned());
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match extract(|name| extractor.get(name)) {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        static NAMES: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| FIELDS.iter().map(|&f| f.to_owned()).collect());
        FieldIter::new(&NAMES)
    }
}

fn trace_id(hex: &str) -> Option<TraceId> {
    // 64-bit trace ids are left-padded to 128 bits, as Zipkin does.
    match hex.len() {
        32 => TraceId::from_hex(hex).ok(),
        16 => TraceId::from_hex(&format!("{hex:0>32}")).ok(),
        _ => None,
    }
    .filter(|id| *id != TraceId::INVALID)
}

fn span_id(hex: &str) -> Option<SpanId> {
    (hex.len() == 16)
        .then(|| SpanId::from_hex(hex).ok())
        .flatten()
        .filter(|id| *id != SpanId::INVALID)
}

fn sampled(flag: Option<&str>) -> Option<TraceFlags> {
    match flag {
        Some("1") | Some("d") | Some("true") => Some(TraceFlags::SAMPLED),
        Some("0") | Some("false") => Some(TraceFlags::default()),
        // Deferred: let the local sampler decide, as a sampled parent would.
        None => Some(TraceFlags::SAMPLED),
        Some(_) => None,
    }
}

fn extract_single(value: &str) -> Option<SpanContext> {
    let mut parts = value.split('-');
    let (trace, span) = (parts.next()?, parts.next()?);
    let flags = sampled(parts.next())?;
    Some(SpanContext::new(
        trace_id(trace)?,
        span_id(span)?,
        flags,
        true,
        TraceState::default(),
    ))
}

fn extract_multi<'a>(get: &impl Fn(&'static str) -> Option<&'a str>) -> Option<SpanContext> {
    let flags = if get(B3_FLAGS) == Some("1") {
        TraceFlags::SAMPLED
    } else {
        sampled(get(B3_SAMPLED))?
    };
    Some(SpanContext::new(
        trace_id(get(B3_TRACE_ID)?)?,
        span_id(get(B3_SPAN_ID)?)?,
        flags,
        true,
        TraceState::default(),
    ))
}

/// The B3 context `get` (a carrier's value by header name) holds, if any valid one.
fn extract<'a>(get: impl Fn(&'static str) -> Option<&'a str>) -> Option<SpanContext> {
    get(B3_SINGLE)
        .and_then(extract_single)
        .or_else(|| extract_multi(&get))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(carrier: &HashMap<&'static str, &'static str>) -> Option<SpanContext> {
        extract(|name| carrier.get(name).copied())
    }

    #[test]
    fn single_and_multi_headers_are_read() {
        let mut carrier = HashMap::from([
            ("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"),
            ("x-b3-traceid", "11111111111111111111111111111111"),
            ("x-b3-spanid", "2222222222222222"),
            ("x-b3-sampled", "0"),
        ]);
        let single = from(&carrier).unwrap();
        assert_eq!(single.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(single.span_id().to_string(), "00f067aa0ba902b7");
        assert!(single.is_sampled() && single.is_remote());

        carrier.remove("b3");
        let multi = from(&carrier).unwrap();
        assert_eq!(multi.trace_id().to_string(), "11111111111111111111111111111111");
        assert_eq!(multi.span_id().to_string(), "2222222222222222");
        assert!(!multi.is_sampled());
        carrier.insert("x-b3-flags", "1");
        assert!(from(&carrier).unwrap().is_sampled(), "debug implies sampled");
    }

    #[test]
    fn both_forms_are_written_as_the_spec_spells_them() {
        let sc = from(&HashMap::from([(
            "b3",
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        )]))
        .unwrap();
        let cx = Context::new().with_remote_span_context(sc);
        let mut headers = http::HeaderMap::new();
        crate::telemetry::propagation::inject_http_formats(
            &cx,
            crate::telemetry::propagation::Formats {
                tracecontext: false,
                b3: true,
                b3multi: true,
            },
            &mut headers,
        );
        assert_eq!(
            headers["b3"],
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"
        );
        assert_eq!(headers["x-b3-traceid"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(headers["x-b3-spanid"], "00f067aa0ba902b7");
        assert_eq!(headers["x-b3-sampled"], "1");
    }

    #[test]
    fn short_trace_ids_are_padded_and_garbage_is_ignored() {
        let mut carrier = HashMap::from([("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-0")]);
        let sc = from(&carrier).unwrap();
        assert_eq!(sc.trace_id().to_string(), "0000000000000000a3ce929d0e0e4736");
        assert!(!sc.is_sampled());
        // No flag: deferred, sampled as the local sampler would decide for a sampled parent.
        carrier.insert("b3", "a3ce929d0e0e4736-00f067aa0ba902b7");
        assert!(from(&carrier).unwrap().is_sampled());

        for garbage in [
            "zz-yy",
            "a3ce929d0e0e4736",
            "a3ce929d0e0e4736-00f067aa0ba902b7-x",
            "00000000000000000000000000000000-00f067aa0ba902b7-1",
            "a3ce929d0e0e4736-0000000000000000-1",
            "a3ce929d0e0e473-00f067aa0ba902b7-1",
        ] {
            carrier.insert("b3", garbage);
            assert!(from(&carrier).is_none(), "{garbage}");
        }
    }
}
