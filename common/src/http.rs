//! The standard server middleware stack and the extractors every handler uses.
//!
//! One stack for every service, so request ids, traces, error bodies, panics, timeouts and body
//! limits behave the same everywhere. See [`standard_stack`] for the order.

mod extract;
mod observe;
pub mod openapi;
mod request_id;
mod timed;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::response::IntoResponse;
use axum::{Extension, Router};
use http::{Request, StatusCode};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::ApiError;
use crate::identity::IdentityKey;
use crate::telemetry::propagation;

pub use extract::{Json, Path, Query};
pub use observe::{method_label, panic_response, status_label, with_json_error_body};
pub use request_id::MakeRequestUuid;
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
    /// The key handlers verify the gateway's signed identity with (a request extension).
    pub identity_key: IdentityKey,
}

/// Wraps `router` (including its JSON 404 fallback) in the standard stack, applied per route so
/// every layer knows the matched route. Outermost first (after the identity key, put in every
/// request's extensions for the identity extractor):
/// 1. request id: a caller's unusable `x-request-id` is dropped, a missing one made (UUID), and
///    it is echoed on the answer unless the answer names its own (tower-http);
/// 2. the `http.server` span continuing the caller's W3C/B3 context (tower-http's trace layer,
///    our span), entered on every poll;
/// 3. [`observe`]: JSON error bodies for bare errors, the one log line of a failure, the span's
///    status, per-route metrics; outside the next two, so it sees their answers;
/// 4. panic catching (500 `internal`, the panic's message logged as the cause, tower-http);
/// 5. the body limit, `MALL_BODY_LIMIT`: 413 at once for a `Content-Length` over it, and a
///    streamed body fails as it crosses it (axum's extractors answer 413) (tower-http);
/// 6. the request timeout, `MALL_REQUEST_TIMEOUT` (504 `timeout`, tower-http).
pub fn standard_stack(router: Router, settings: &StackSettings) -> Router {
    let observer = Arc::new(observe::Observer {
        service: settings.service,
        metrics: Timed::default(),
    });
    let service = settings.service;
    // One `layer` call: axum wraps every route in one more boxed `Route` per call, cloned on
    // every request.
    let stack = ServiceBuilder::new()
        .layer(Extension(settings.identity_key.clone()))
        .map_request(request_id::drop_unusable)
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(move |req: &Request<_>| server_span(service, req))
                .on_request(())
                .on_response(())
                .on_body_chunk(())
                .on_eos(())
                .on_failure(()),
        )
        .layer(observe::ObserveLayer(observer))
        .map_response(IntoResponse::into_response)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(RequestBodyLimitLayer::new(settings.body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            settings.request_timeout,
        ))
        // The stack's own limit is the one that counts; axum's 2 MB default would otherwise
        // disagree with MALL_BODY_LIMIT.
        .layer(DefaultBodyLimit::disable());
    router.fallback(not_found).layer(stack)
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

fn server_span<B>(service: &'static str, req: &Request<B>) -> Span {
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
    let parent =
        propagation::carries_http_context(req.headers()).then(|| propagation::extract_http(req.headers()));
    // A continued trace's id is known before the span opens: written with the other fields
    // rather than recorded afterwards, a second pass through every layer.
    let continued = parent.as_ref().and_then(propagation::trace_id_of);
    // An explicit root: the caller's context, if it sent a valid one, is the only parent a
    // server span has.
    let span = tracing::info_span!(
        parent: None,
        "http.server",
        otel.name = name.as_str(),
        otel.kind = "server",
        service = service,
        // `&str` values, not `%` Display: the OTel layer copies a string as it is, and runs a
        // Display value through the formatter.
        http.request.method = method,
        http.route = route,
        url.path = req.uri().path(),
        request_id = request_id,
        trace_id = continued.as_deref(),
    );
    if let Some(parent) = parent {
        let _ = span.set_parent(parent);
    }
    if continued.is_none()
        && let Some(trace_id) = propagation::trace_id_of(&span.context())
    {
        span.record("trace_id", trace_id.as_str());
    }
    span
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_logs::CapturedLogs;

    /// The log line of an event inside the server span of `req`.
    fn line_inside(req: Request<()>) -> String {
        let logs = CapturedLogs::start();
        let span = server_span("svc", &req);
        let _in = span.enter();
        tracing::warn!("inside");
        logs.text()
    }

    #[test]
    fn a_continued_trace_names_the_callers_trace_id_in_log_lines() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        for (name, value) in [
            ("traceparent", format!("00-{trace}-00f067aa0ba902b7-01")),
            ("b3", format!("{trace}-00f067aa0ba902b7-1")),
        ] {
            let req = Request::get("/x").header(name, value).body(()).unwrap();
            let line = line_inside(req);
            assert!(line.contains(&format!("trace_id=\"{trace}\"")), "{name}: {line}");
        }
        // Without the OpenTelemetry layer a new trace has no id: nothing is made up.
        let line = line_inside(Request::get("/x").body(()).unwrap());
        assert!(!line.contains("trace_id"), "{line}");
    }
}
