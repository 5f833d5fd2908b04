//! Forwarding one request: edge checks, header hygiene, the upstream call, and the answer.
//!
//! In order: header size limit (431), token and route access (401/403), rate limits (429), then
//! the upstream request with hop-by-hop headers removed, a client-sent identity header replaced
//! by the gateway's signed one, `x-forwarded-*` set, and the trace context of the request's
//! server span injected (W3C and B3). Bodies stream both ways. Every request ends with one access-log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use mall_common::error::ApiError;
use mall_common::identity;
use mall_common::telemetry::propagation;
use tower::BoxError;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::auth::{Verifier, now_secs};
use crate::rate_limit::{Client, RateLimiter};
use crate::routes::Route;
use crate::upstream::{BreakerOpen, EndpointError, NoHealthyInstance, Pool, UpstreamInstance, find_cause};

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
}

/// Headers that describe one connection, never forwarded (RFC 9110 7.6.1). Names, not
/// strings: a removal by string parses the name first, sixteen times per proxied request.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

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

/// Proxies `req` along `route` to `pool`.
pub async fn forward(
    proxy: Arc<Proxy>,
    pool: Pool,
    route: &'static Route,
    peer: SocketAddr,
    req: Request<Body>,
) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let request_id = request_id_of(&req).to_owned();
    // The server span's context, read once: injected upstream and named in the access log.
    let cx = tracing::Span::current().context();
    // Formatted once: the rate-limit key, `x-forwarded-for` and the access line all name it.
    let client = mall_common::text::ip(peer.ip());
    let result = forward_inner(&proxy, &pool, route, &client, req, &cx).await;
    let response = match result {
        Ok(res) => res,
        Err(e) => e.into_response(),
    };
    let upstream = response
        .extensions()
        .get::<UpstreamInstance>()
        .map(|u| u.0.clone());
    let line = AccessLine {
        method: &method,
        route: route.path,
        pool: pool.name().as_str(),
        upstream: upstream.as_deref().unwrap_or(""),
        request_id: &request_id,
        client: &client,
        started,
    };
    line.write(response.status(), &cx);
    response
}

/// Answers a request no route matched (`/internal/...` included): 404 `not_found`, with its
/// access line like every other request.
pub async fn unrouted(peer: SocketAddr, req: Request<Body>) -> Response {
    let started = Instant::now();
    let response = ApiError::not_found("no such route").into_response();
    let line = AccessLine {
        method: req.method(),
        route: mall_common::http::UNMATCHED,
        pool: "",
        upstream: "",
        request_id: request_id_of(&req),
        client: &mall_common::text::ip(peer.ip()),
        started,
    };
    line.write(response.status(), &tracing::Span::current().context());
    response
}

fn request_id_of<B>(req: &Request<B>) -> &str {
    req.headers()
        .get(mall_common::http::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// What one access line says about its request.
struct AccessLine<'a> {
    method: &'a http::Method,
    route: &'a str,
    pool: &'a str,
    upstream: &'a str,
    request_id: &'a str,
    client: &'a str,
    started: Instant,
}

impl AccessLine<'_> {
    fn write(&self, status: StatusCode, cx: &opentelemetry::Context) {
        // A root event: the line already names the request and trace ids, so it neither repeats
        // the span's fields nor becomes an event on the exported span (measured: formatting both
        // made this line a seventh of the gateway's CPU per request).
        // Text values as `&str`, not `%` Display: a Display field goes through the formatting
        // machinery in every layer that reads it.
        let trace_id = propagation::trace_id_of(cx);
        tracing::info!(
            target: "mall_gateway::access",
            parent: None,
            method = self.method.as_str(),
            route = self.route,
            pool = self.pool,
            status = status.as_u16(),
            upstream = self.upstream,
            latency_ms = self.started.elapsed().as_secs_f64() * 1e3,
            request_id = self.request_id,
            trace_id = trace_id.as_deref().unwrap_or(""),
            client = self.client,
            "access"
        );
    }
}

async fn forward_inner(
    proxy: &Proxy,
    pool: &Pool,
    route: &'static Route,
    client: &str,
    req: Request<Body>,
    cx: &opentelemetry::Context,
) -> Result<Response, ApiError> {
    if header_bytes(req.headers()) > proxy.max_header_bytes || req.headers().len() > 100 {
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

    let (mut parts, body) = req.into_parts();
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    // What a client sends as identity never reaches a service; only the gateway's signed copy.
    identity::strip(headers);
    if let Some(id) = &who {
        // `identify` refused tokens that do not fit the header, so this holds; should it not,
        // the request must not go on as anonymous.
        proxy
            .identity_key
            .assert_identity(headers, id, now_secs())
            .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()))?;
    }
    headers.remove(header::AUTHORIZATION);
    if let Some(host) = headers.remove(header::HOST) {
        headers.insert(X_FORWARDED_HOST, host);
    }
    // We are the edge: whatever x-forwarded-for a client sent is not evidence of anything.
    if let Ok(ip) = HeaderValue::from_str(client) {
        headers.insert(X_FORWARDED_FOR, ip);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));

    // One span per request, as Envoy does by default: the upstream continues the gateway's
    // server span directly. A client span per hop doubled the tracing work of every request
    // and told nothing the service's own server span does not (its start is the hop's end).
    propagation::inject_http_context(cx, &mut parts.headers);
    let upstream_req = Request::from_parts(parts, body);

    let mut res = pool
        .send(upstream_req)
        .await
        .map_err(|e| upstream_error(pool.name().as_str(), &e))?;
    strip_hop_by_hop(res.headers_mut());
    Ok(res.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

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
