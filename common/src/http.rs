//! The standard server middleware stack and the extractors every handler uses.
//!
//! One stack for every service, so request ids, traces, error bodies, panics, timeouts and body
//! limits behave the same everywhere. See [`standard_stack`] for the order.

mod extract;
mod observe;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::response::{IntoResponse, Response};
use http::{Request, StatusCode};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::ApiError;
use crate::telemetry::propagation;

pub use extract::{Json, Path, Query};
pub use observe::status_label;

/// The header carrying the request id, set at the edge and echoed in every response.
pub const REQUEST_ID: &str = "x-request-id";

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

/// Wraps `router` (including its JSON 404 fallback) in the standard stack.
///
/// Order, outermost first:
/// 1. request id: keep the caller's `x-request-id` or make a UUID;
/// 2. trace span `http.server`, continuing the caller's W3C/B3 context, ids recorded;
/// 3. request id copied onto the response;
/// 4. observe: metrics per route and status, JSON body for bare error responses, and the one
///    log line for a 5xx with its cause;
/// 5. panic catching (500 `internal`, cause logged by 4);
/// 6. timeout (504 `timeout`);
/// 7. body limit (413 `payload_too_large`).
pub fn standard_stack(router: Router, settings: &StackSettings) -> Router {
    let service = settings.service;
    router
        .fallback(not_found)
        // The tower-http limit below is the one that counts; axum's own 2 MB default would
        // otherwise disagree with MALL_BODY_LIMIT.
        .layer(DefaultBodyLimit::disable())
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(move |req: &Request<Body>| server_span(service, req))
                        .on_request(())
                        .on_response(record_response)
                        .on_eos(())
                        .on_failure(()),
                )
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(axum::middleware::from_fn_with_state(service, observe::observe))
                .layer(CatchPanicLayer::custom(panic_response))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::GATEWAY_TIMEOUT,
                    settings.request_timeout,
                ))
                .layer(RequestBodyLimitLayer::new(settings.body_limit)),
        )
}

/// The route template of a request (`/api/skus/{sku_id}`), or `unmatched`; never the raw path,
/// so labels and span names stay low-cardinality.
pub fn route_of<B>(req: &Request<B>) -> &str {
    req.extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched")
}

fn server_span(service: &'static str, req: &Request<Body>) -> Span {
    let route = route_of(req);
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format_args!("{} {}", req.method(), route),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        service = service,
        http.request.method = %req.method(),
        http.route = route,
        url.path = %req.uri().path(),
        http.response.status_code = tracing::field::Empty,
        request_id = request_id,
        trace_id = tracing::field::Empty,
    );
    // An invalid or absent caller context leaves the span as a new root.
    let _ = span.set_parent(propagation::extract_http(req.headers()));
    if let Some(trace_id) = propagation::trace_id_of(&span.context()) {
        span.record("trace_id", trace_id.as_str());
    }
    span
}

fn record_response(res: &Response, latency: Duration, span: &Span) {
    let status = res.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    tracing::debug!(
        status = status.as_u16(),
        latency_ms = latency.as_secs_f64() * 1e3,
        "response"
    );
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    ApiError::internal(format!("handler panicked: {msg}")).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}
