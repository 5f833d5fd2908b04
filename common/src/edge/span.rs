//! The edge's server span (the gateway's, the purchase route's), made with the OpenTelemetry API directly instead of through a
//! `tracing` span and the `tracing-opentelemetry` layer.
//!
//! Through `tracing` a span is created in the registry, offered to every layer with its filter,
//! copied attribute by attribute into an OpenTelemetry builder, entered and left on every poll
//! (each layer looking at its filter again, the OpenTelemetry layer reading the clock), and its
//! trace id recorded as one more field for the log lines: about 27,000 instructions per
//! proxied request in the gateway (callgrind), almost nginx's whole cost for the same request. Here it is one
//! builder, one context and one end. The span is the same one: `http.server` continuing the
//! caller's W3C/B3 context, its name `METHOD route`, kind server, the same attributes, its
//! context injected upstream, exported by the process's tracer provider (sampler and exporters
//! as configured). Log lines of the request name its request and trace ids themselves (the
//! gateway's access line, the failure line).

use std::borrow::Cow;

use crate::telemetry::propagation;
use http::{HeaderMap, StatusCode};
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};

/// One request's server span, ended by [`ServerSpan::end`] (or, unended, when dropped).
pub struct ServerSpan {
    cx: Context,
    /// The request carried a trace context of its own (now the span's parent).
    carried: bool,
}

/// What the span says about its request.
pub(super) struct Request<'a> {
    pub(super) service: &'static str,
    pub(super) name: Cow<'static, str>,
    pub(super) method: &'static str,
    pub(super) route: &'static str,
    pub(super) path: &'a str,
    pub(super) request_id: &'a str,
    pub(super) headers: &'a HeaderMap,
}

impl ServerSpan {
    pub(super) fn start(tracer: &BoxedTracer, req: Request<'_>) -> Self {
        // An explicit root unless the caller sent a context: most requests at the edge carry
        // none, and for them extraction (two propagators and an empty context) is pure cost.
        let carried = propagation::carries_http_context(req.headers);
        let parent = if carried {
            propagation::extract_http(req.headers)
        } else {
            Context::new()
        };
        // Room for the status set at the end: the span keeps this vector, and a sixth
        // attribute pushed onto five would reallocate and copy it on every request.
        let mut attributes = Vec::with_capacity(6);
        attributes.extend([
            KeyValue::new("service", req.service),
            KeyValue::new("http.request.method", req.method),
            KeyValue::new("http.route", req.route),
            KeyValue::new("url.path", req.path.to_owned()),
            KeyValue::new("request_id", req.request_id.to_owned()),
        ]);
        let span = tracer
            .span_builder(req.name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        Self {
            cx: parent.with_span(span),
            carried,
        }
    }

    /// The span's context: injected upstream, and the trace id of the request's log lines.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// Whether the request carried a trace context (whose headers must not go upstream beside
    /// the span's own).
    pub fn carried(&self) -> bool {
        self.carried
    }

    /// Records the status and ends the span.
    pub fn end(self, status: StatusCode) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if status.is_server_error() {
            span.set_status(Status::error(""));
        }
        span.end();
    }
}
