//! Forwarding one request: edge checks, header hygiene, the upstream call, and the answer.
//!
//! In order: header size limit (431), token and route access (401/403), rate limits (429), then
//! the upstream request's head, written out once (`OutboundHead`): the client's fields (its
//! `Host` as it sent it) but its token, a client-sent identity header, `x-forwarded-*` and
//! `x-request-id` (hop-by-hop ones were already left out by the edge's parser), then the
//! gateway's signed identity, the request id in force, `x-forwarded-for`, `x-forwarded-proto`
//! and the trace context of the request's server span (W3C and B3). The pool's layers and a
//! retry carry those bytes, not a header map. Bodies stream both ways. Every request ends with
//! one access-log line.

use std::time::Instant;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, StatusCode};
use mall_common::error::ApiError;
use mall_common::http::REQUEST_ID;
use mall_common::identity;
use mall_common::telemetry::access::{self, Field};
use mall_common::telemetry::propagation;
use opentelemetry::trace::TraceContextExt as _;
use tower::BoxError;

use http_body_util::LengthLimitError;
use mall_common::edge::RequestBodyError;

use crate::auth::{Verifier, now_secs};
use crate::rate_limit::{Client, RateLimiter};
use crate::routes::Route;
use crate::upstream::{
    Answer, BreakerOpen, EndpointError, NoHealthyInstance, OutboundHead, Pool, find_cause,
};

/// What every proxied request needs.
pub struct Proxy {
    /// Token verification.
    pub verifier: Verifier,
    /// Rate limits.
    pub limiter: RateLimiter,
    /// Signs the identity header (`MALL_INTERNAL_SECRET`).
    pub identity_key: identity::IdentityKey,
    /// `MALL_GW_MAX_HEADER_BYTES`.
    pub max_header_bytes: usize,
    /// The trace-context formats written upstream (`OTEL_PROPAGATORS`).
    pub propagation: propagation::Formats,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

fn header_bytes(headers: &HeaderMap) -> usize {
    headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum()
}

/// Maps a failure of the pool stack to the gateway's error contract.
pub fn upstream_error(pool: &str, error: &BoxError) -> ApiError {
    let e: &(dyn std::error::Error + 'static) = error.as_ref();
    if find_cause::<tower::load_shed::error::Overloaded>(e).is_some() {
        metrics::counter!("gateway_shed_total", "pool" => pool.to_owned()).increment(1);
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!("{pool} is saturated; retry shortly"),
        )
        .with_retry_after(1);
    }
    if let Some(open) = find_cause::<BreakerOpen>(e) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
            format!("{pool} is failing; the circuit is open"),
        )
        .with_retry_after(open.retry_after.as_secs().max(1));
    }
    if find_cause::<LengthLimitError>(e).is_some() {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than the gateway accepts (MALL_BODY_LIMIT)",
        );
    }
    if let Some(unreadable) = find_cause::<RequestBodyError>(e) {
        return ApiError::bad_request("bad_request", unreadable.to_string());
    }
    if find_cause::<NoHealthyInstance>(e).is_some() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
            format!("no healthy {pool} instance"),
        )
        .with_retry_after(1);
    }
    if find_cause::<tower::timeout::error::Elapsed>(e).is_some() {
        return ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!("{pool} did not answer in time"),
        );
    }
    let cause = match find_cause::<EndpointError>(e) {
        Some(ep) => ep.to_string(),
        None => error.to_string(),
    };
    // The cause is logged with the request, never sent to the client.
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "bad_gateway",
        format!("{pool} could not be reached"),
    )
    .with_cause(cause)
}

/// Proxies `req` along `route` to `pool`; `client` is the client's address as text,
/// `request_id` the id in force (the client's, if usable, else a new one; written upstream in
/// place of whatever the client sent), `cx` the request's server span (injected upstream, named
/// in the access line), `carried` whether that span continues a context the client sent (whose
/// headers are then not passed on), `started` when the request began (the access line's
/// latency).
#[allow(clippy::too_many_arguments)] // one request's facts, each from a different place
pub async fn forward(
    proxy: &Proxy,
    pool: &Pool,
    route: &'static Route,
    client: &str,
    request_id: &str,
    req: Request<Body>,
    cx: &opentelemetry::Context,
    carried: bool,
    started: Instant,
) -> Response {
    let method = req.method().clone();
    let (response, upstream) =
        match forward_inner(proxy, pool, route, client, request_id, req, cx, carried).await {
            Ok(Answer { response, instance }) => (response, Some(instance)),
            Err(e) => (e.into_response(), None),
        };
    let line = AccessLine {
        method: &method,
        route: route.path,
        pool: pool.name().as_str(),
        upstream: upstream.as_deref().unwrap_or(""),
        request_id,
        client,
        started,
    };
    line.write(response.status(), cx);
    response
}

/// What one access line says about its request.
pub(crate) struct AccessLine<'a> {
    pub(crate) method: &'a http::Method,
    pub(crate) route: &'a str,
    pub(crate) pool: &'a str,
    pub(crate) upstream: &'a str,
    pub(crate) request_id: &'a str,
    pub(crate) client: &'a str,
    pub(crate) started: Instant,
}

impl AccessLine<'_> {
    pub(crate) fn write(&self, status: StatusCode, cx: &opentelemetry::Context) {
        // A line of its own, not an event of the span: it names the request and trace ids
        // itself, so it neither repeats the span's fields nor becomes an event on the exported
        // span (measured: formatting both made this line a seventh of the gateway's CPU).
        // Written directly rather than as a tracing event (the same line; `access::write`),
        // when `MALL_LOG` lets this target's INFO lines through.
        if !tracing::enabled!(target: "mall_gateway::access", tracing::Level::INFO) {
            return;
        }
        let span = cx.span();
        let sc = span.span_context();
        let trace_id = sc.trace_id().to_bytes();
        let trace_id = if sc.is_valid() { &trace_id[..] } else { &[] };
        access::write(
            "mall_gateway::access",
            &[
                // Tokens, templates and addresses: nothing to escape. The request id is the
                // client's text.
                Field::Plain("method", self.method.as_str()),
                Field::Plain("route", self.route),
                Field::Plain("pool", self.pool),
                Field::U64("status", u64::from(status.as_u16())),
                Field::Plain("upstream", self.upstream),
                Field::F64("latency_ms", self.started.elapsed().as_secs_f64() * 1e3),
                Field::Str("request_id", self.request_id),
                Field::Hex("trace_id", trace_id),
                Field::Plain("client", self.client),
            ],
        );
    }
}

#[allow(clippy::too_many_arguments)] // as `forward`
async fn forward_inner(
    proxy: &Proxy,
    pool: &Pool,
    route: &'static Route,
    client: &str,
    request_id: &str,
    req: Request<Body>,
    cx: &opentelemetry::Context,
    carried: bool,
) -> Result<Answer, ApiError> {
    let header_len = header_bytes(req.headers());
    if header_len > proxy.max_header_bytes || req.headers().len() > 100 {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "request headers exceed {} bytes or 100 fields",
                proxy.max_header_bytes
            ),
        ));
    }
    let who = proxy.verifier.authorize(route.access, req.headers())?;
    let client_key = match &who {
        Some(id) => Client::User(&id.user_id),
        None => Client::Ip(client),
    };
    proxy.limiter.check(req.uri().path(), client_key).await?;

    // The upstream request's head is written here, once (`OutboundHead`). Hop-by-hop headers
    // never got this far: the edge's parser (`edge/head.rs`) and the upstream client's
    // (`upstream/client.rs`) leave out each connection's own as they read a head.
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut head = OutboundHead::new(&parts.method, path, header_len);
    for (name, value) in &parts.headers {
        if *name == header::HOST {
            // Passed on as the client sent it, as nginx's `proxy_set_header Host $host` and
            // Envoy's default do: the service sees the name it was asked by. (It was the
            // instance's `host:port` plus an `x-forwarded-host`: one field more for every
            // service to parse, for the same fact.)
            head.host(value.as_bytes());
            continue;
        }
        // Left out: the token (verified here, never passed on); what a client sends as identity
        // (only the gateway's signed copy reaches a service); what it sends as forwarding
        // (we are the edge: a client's x-forwarded-for is not evidence of anything); its
        // request id (the one in force goes instead: the same one when it was usable); and its
        // trace context when the request's span continues it (the span's own goes instead).
        let dropped = *name == header::AUTHORIZATION
            || *name == identity::HEADER
            || *name == REQUEST_ID
            || *name == X_FORWARDED_FOR
            || *name == X_FORWARDED_HOST
            || *name == X_FORWARDED_PROTO
            || (carried && propagation::is_http_context(name));
        if !dropped {
            head.header(name, value.as_bytes());
        }
    }
    if let Some(id) = &who {
        // `identify` refused tokens that do not fit the header, so this holds; should it not,
        // the request must not go on as anonymous.
        let asserted = proxy
            .identity_key
            .header_value(id, now_secs())
            .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()))?;
        head.header(&identity::HEADER, asserted.as_bytes());
    }
    head.header(&REQUEST_ID, request_id.as_bytes());
    head.header(&X_FORWARDED_FOR, client.as_bytes());
    head.header(&X_FORWARDED_PROTO, b"http");
    // One span per request, as Envoy does by default: the upstream continues the gateway's
    // server span directly. A client span per hop doubled the tracing work of every request
    // and told nothing the service's own server span does not (its start is the hop's end).
    propagation::push_http_context_lines(cx, proxy.propagation, head.lines());

    pool.send(head.with_body(body))
        .await
        .map_err(|e| upstream_error(pool.name().as_str(), &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_failures_map_to_the_error_contract() {
        let shed: BoxError = Box::new(tower::load_shed::error::Overloaded::new());
        assert_eq!(upstream_error("p", &shed).code(), "overloaded");
        let late: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(upstream_error("p", &late).code(), "upstream_timeout");
        let none: BoxError = Box::new(NoHealthyInstance);
        assert_eq!(upstream_error("p", &none).code(), "upstream_unavailable");
        let other: BoxError = "connection reset".into();
        assert_eq!(upstream_error("p", &other).code(), "bad_gateway");
    }
}
