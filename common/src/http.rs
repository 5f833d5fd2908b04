//! The standard server middleware stack and the extractors every handler uses.
//!
//! One stack for every service, so request ids, traces, error bodies, panics, timeouts and body
//! limits behave the same everywhere. See [`standard_stack`] for the order.

mod extract;
mod stack;
mod timed;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use http::Request;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::ApiError;
use crate::telemetry::propagation;

pub use extract::{Json, Path, Query};
pub use stack::{
    answer_within, ensure_request_id, method_label, panic_response, request_id, status_label,
    with_json_error_body, with_request_id,
};
pub use timed::Timed;

/// The header carrying the request id, set at the edge and echoed in every response. A
/// `HeaderName`, not a string: every look-up by a string parses and hashes it first.
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Request header fields the gateway passes on (431 `headers_too_large` past it); services read
/// more ([`crate::server::MAX_HEADER_FIELDS`]), so the fields the gateway adds always fit.
pub const MAX_CLIENT_FIELDS: usize = 100;

/// Knobs of the standard stack.
#[derive(Debug, Clone)]
pub struct StackSettings {
    /// The service name used in spans and metric labels.
    pub service: &'static str,
    /// Longest a request may take inside this service (504 `timeout` after).
    pub request_timeout: Duration,
    /// Largest request body accepted (413 `payload_too_large` above).
    pub body_limit: usize,
}

/// Wraps `router` (including its JSON 404 fallback) in the standard stack: request id, the
/// `http.server` span continuing the caller's trace, body limit, panic catching, timeout, JSON
/// error bodies, the failure log line and per-route metrics, as one layer (see `stack.rs` for
/// the order and why it is one layer).
pub fn standard_stack(router: Router, settings: &StackSettings) -> Router {
    router
        .fallback(not_found)
        // The stack's own limit is the one that counts; axum's 2 MB default would otherwise
        // disagree with MALL_BODY_LIMIT.
        .layer(DefaultBodyLimit::disable())
        .layer(stack::StandardLayer::new(settings))
}

/// The route template of a request (`/api/skus/{sku_id}`), or `unmatched`; never the raw path,
/// so labels and span names stay low-cardinality.
pub fn route_of<B>(req: &Request<B>) -> &str {
    req.extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or(UNMATCHED)
}

/// The route label of a request no route matched (the JSON 404 fallback).
pub const UNMATCHED: &str = "unmatched";

fn server_span(service: &'static str, req: &Request<Body>) -> Span {
    let route = route_of(req);
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Joined by hand: a `%format_args!` name went through the formatter twice per request (the
    // OpenTelemetry layer formats it again with `{:?}`), a `&str` is copied as it is.
    let method = req.method().as_str();
    let mut name = String::with_capacity(method.len() + 1 + route.len());
    name.push_str(method);
    name.push(' ');
    name.push_str(route);
    // An explicit root: the caller's context, if it sent a valid one, is the only parent a
    // server span has.
    let span = tracing::info_span!(
        parent: None,
        "http.server",
        otel.name = name.as_str(),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        service = service,
        // `&str` values, not `%` Display: the OTel layer copies a string as it is, and runs a
        // Display value through the formatter.
        http.request.method = method,
        http.route = route,
        url.path = req.uri().path(),
        http.response.status_code = tracing::field::Empty,
        request_id = request_id,
        trace_id = tracing::field::Empty,
    );
    if propagation::carries_http_context(req.headers()) {
        let _ = span.set_parent(propagation::extract_http(req.headers()));
    }
    if let Some(trace_id) = propagation::trace_id_of(&span.context()) {
        span.record("trace_id", trace_id.as_str());
    }
    span
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}
