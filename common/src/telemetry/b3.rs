//! B3 propagation (Zipkin's headers), written here because the only published propagator lives
//! in the deprecated `opentelemetry-zipkin` crate. Injects both the single `b3` header and the
//! `x-b3-*` multi-header form; extracts either (single first, as the B3 spec recommends).

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator, text_map_propagator::FieldIter};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

use crate::identity::to_hex;

const B3_SINGLE: &str = "b3";
const B3_TRACE_ID: &str = "x-b3-traceid";
const B3_SPAN_ID: &str = "x-b3-spanid";
const B3_SAMPLED: &str = "x-b3-sampled";
const B3_FLAGS: &str = "x-b3-flags";

/// Reads and writes B3 trace headers.
#[derive(Debug)]
pub struct B3Propagator {
    fields: [String; 4],
}

impl Default for B3Propagator {
    fn default() -> Self {
        Self {
            fields: [B3_SINGLE, B3_TRACE_ID, B3_SPAN_ID, B3_SAMPLED].map(String::from),
        }
    }
}

impl B3Propagator {
    /// A propagator that injects both B3 forms.
    pub fn new() -> Self {
        Self::default()
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
    let parts: Vec<&str> = value.split('-').collect();
    if parts.len() < 2 {
        return None;
    }
    let flags = sampled(parts.get(2).copied())?;
    Some(SpanContext::new(
        trace_id(parts[0])?,
        span_id(parts[1])?,
        flags,
        true,
        TraceState::default(),
    ))
}

fn extract_multi(extractor: &dyn Extractor) -> Option<SpanContext> {
    let flags = if extractor.get(B3_FLAGS) == Some("1") {
        TraceFlags::SAMPLED
    } else {
        sampled(extractor.get(B3_SAMPLED))?
    };
    Some(SpanContext::new(
        trace_id(extractor.get(B3_TRACE_ID)?)?,
        span_id(extractor.get(B3_SPAN_ID)?)?,
        flags,
        true,
        TraceState::default(),
    ))
}

impl TextMapPropagator for B3Propagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        let flag = if sc.is_sampled() { "1" } else { "0" };
        // Hex by table, once per id: `Display` on the ids goes through the integer formatter.
        let trace = to_hex(&sc.trace_id().to_bytes());
        let span_hex = to_hex(&sc.span_id().to_bytes());
        injector.set(B3_SINGLE, [trace.as_str(), &span_hex, flag].join("-"));
        injector.set(B3_TRACE_ID, trace);
        injector.set(B3_SPAN_ID, span_hex);
        injector.set(B3_SAMPLED, flag.to_owned());
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let found = extractor
            .get(B3_SINGLE)
            .and_then(extract_single)
            .or_else(|| extract_multi(extractor));
        match found {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn single_and_multi_headers_round_trip() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(sc.clone());
        let mut carrier: HashMap<String, String> = HashMap::new();
        B3Propagator::new().inject_context(&cx, &mut carrier);
        assert_eq!(
            carrier["b3"],
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"
        );
        let back = B3Propagator::new().extract(&carrier);
        assert_eq!(back.span().span_context().trace_id(), sc.trace_id());

        carrier.remove("b3");
        let back = B3Propagator::new().extract(&carrier);
        assert_eq!(back.span().span_context().span_id(), sc.span_id());
    }

    #[test]
    fn short_trace_ids_are_padded_and_garbage_is_ignored() {
        let mut carrier: HashMap<String, String> = HashMap::new();
        carrier.insert("b3".into(), "a3ce929d0e0e4736-00f067aa0ba902b7-0".into());
        let cx = B3Propagator::new().extract(&carrier);
        let span = cx.span();
        let sc = span.span_context();
        assert_eq!(sc.trace_id().to_string(), "0000000000000000a3ce929d0e0e4736");
        assert!(!sc.is_sampled());

        carrier.insert("b3".into(), "zz-yy".into());
        let cx = B3Propagator::new().extract(&carrier);
        assert!(!cx.span().span_context().is_valid());
    }
}
