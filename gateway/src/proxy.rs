//! Forwarding one request: edge checks, header hygiene, the upstream call, and the answer.
//!
//! In order: header size limit (431), a path that could reach past its route (400), token and
//! route access (401/403), rate limits (429), then the upstream request: the client's fields
//! (its `Host` as it sent it) but its connection's own (hop-by-hop), its token, a client-sent
//! identity header, `x-forwarded-*` and its trace context, plus the gateway's signed identity,
//! the request id in force, `x-forwarded-for`, `x-forwarded-proto` and the trace context of the
//! request's server span (W3C and B3). Bodies stream both ways. Every request ends with one
//! access-log line.

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, StatusCode, Version};
use mall_common::error::ApiError;
use mall_common::http::{MAX_CLIENT_FIELDS, REQUEST_ID};
use mall_common::identity;
use mall_common::telemetry::propagation;
use tower::BoxError;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::auth::{Verifier, now_secs};
use crate::client_body::{self, ClientFault, Replay};
use crate::layers::breaker::BreakerOpen;
use crate::rate_limit::{Client, RateLimiter};
use crate::routes::Route;
use crate::upstream::{EndpointError, NoHealthyInstance, Pool, Upstream, find_cause};

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
    /// `MALL_GW_BODY_TIMEOUT`.
    pub body_timeout: std::time::Duration,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
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

/// The client's fault, answered as such: 413, 400 or 408, never counted against the pool.
fn client_error(fault: &ClientFault) -> ApiError {
    match fault {
        ClientFault::TooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            fault.to_string(),
        ),
        ClientFault::Broken(_) => ApiError::bad_request("bad_request", fault.to_string()),
        ClientFault::Trickled => {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", fault.to_string())
        }
    }
}

/// Proxies `req` along `route` to `pool` for the client at `peer`, inside the request's server
/// span (whose context goes upstream and into the access line).
pub async fn forward(
    proxy: &Proxy,
    pool: &Pool,
    route: &'static Route,
    peer: SocketAddr,
    req: Request<Body>,
) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    // Set by the standard stack: the caller's, when usable, else a new one.
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let client = peer.ip().to_string();
    let cx = tracing::Span::current().context();
    let response = match forward_inner(proxy, pool, route, &client, req, &cx).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    let upstream = response.extensions().get::<Upstream>().map(|u| u.0.clone());
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

/// A request no route takes (`/internal/...` included: the services' internal endpoints are
/// never reachable from outside): 404 `not_found`, with its access line like any other.
pub fn unrouted(peer: SocketAddr, req: &Request<Body>) -> Response {
    let started = Instant::now();
    let res = ApiError::not_found("no such route").into_response();
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    AccessLine {
        method: req.method(),
        route: mall_common::http::UNMATCHED,
        pool: "",
        upstream: "",
        request_id,
        client: &peer.ip().to_string(),
        started,
    }
    .write(res.status(), &tracing::Span::current().context());
    res
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
    /// One event per request, target `mall_gateway::access`, formatted by the log layer like
    /// any other (a JSON object with `MALL_LOG_FORMAT=json`), naming the trace it belongs to.
    pub(crate) fn write(&self, status: StatusCode, cx: &opentelemetry::Context) {
        let trace_id = propagation::trace_id_of(cx).unwrap_or_default();
        // No parent: the line names its request and trace itself, so it need not carry the
        // request's span, nor become an event on the exported span.
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
            trace_id = trace_id.as_str(),
            client = self.client,
            "access"
        );
    }
}

/// The longest request target the gateway takes (414 `uri_too_long` past it).
const MAX_TARGET: usize = 8 * 1024;

/// What every request must pass before it is routed, answered with a closed connection when it
/// does not (the rest of what the client sent cannot be trusted to frame the next request):
/// 400 for a head that is ambiguous or reaches past its route (both `Content-Length` and
/// `Transfer-Encoding`; HTTP/1.1 without exactly one `Host`; an absolute-form target naming
/// another host than `Host`; a dot segment or encoded slash), 414 for a target over 8 KiB,
/// 431 for more fields or bytes than the gateway passes on. hyper refused what it could not
/// parse before this.
/// Returns the refusal, if any.
pub fn edge_checks(req: &Request<Body>, max_header_bytes: usize) -> Option<Response> {
    check_head(req, max_header_bytes).err().map(|e| {
        let mut res = e.into_response();
        res.headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        res
    })
}

fn check_head(req: &Request<Body>, max_header_bytes: usize) -> Result<(), ApiError> {
    let headers = req.headers();
    // The standard stack has set `x-request-id` by now: one field more than the client sent.
    if header_bytes(headers) > max_header_bytes || headers.len() > MAX_CLIENT_FIELDS + 1 {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("request headers exceed {max_header_bytes} bytes or {MAX_CLIENT_FIELDS} fields"),
        ));
    }
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_TARGET {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is longer than {MAX_TARGET} bytes"),
        ));
    }
    if headers.contains_key(header::CONTENT_LENGTH) && headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(ApiError::bad_request(
            "bad_request",
            "a request may not carry both Content-Length and Transfer-Encoding",
        ));
    }
    if req.version() < Version::HTTP_2 {
        let hosts = headers.get_all(header::HOST).iter().count();
        if hosts > 1 || (hosts == 0 && req.version() == Version::HTTP_11) {
            return Err(ApiError::bad_request(
                "bad_request",
                "an HTTP/1.1 request needs exactly one Host field",
            ));
        }
        if let Some(authority) = req.uri().authority() {
            let host = headers.get(header::HOST).map(http::HeaderValue::as_bytes);
            if host.is_some_and(|host| !host.eq_ignore_ascii_case(authority.as_str().as_bytes())) {
                return Err(ApiError::bad_request(
                    "bad_request",
                    "the request target names another host than the Host field",
                ));
            }
        }
    }
    if !path_is_plain(req.uri().path()) {
        return Err(ApiError::bad_request(
            "invalid_path",
            "the path has a dot segment, an encoded slash or an empty segment",
        ));
    }
    Ok(())
}

/// Whether a path stays below the route it matched: no `.` or `..` segment (plain or
/// percent-encoded), no encoded slash or backslash, no empty segment inside it. Services route
/// the raw path, but whatever sits between them and the gateway may normalise it toward
/// `/internal/...`.
fn path_is_plain(path: &str) -> bool {
    // Most paths hold none of the bytes that could hide a step out of the route.
    if !path.bytes().any(|b| matches!(b, b'%' | b'.' | b'\\')) && !path.contains("//") {
        return true;
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains('\\') {
        return false;
    }
    let segments: Vec<&str> = lower.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    segments.iter().enumerate().all(|(i, segment)| {
        let decoded = segment.replace("%2e", ".");
        decoded != "." && decoded != ".." && (i == last || !segment.is_empty())
    })
}

/// Removes what belongs to one connection (RFC 9110, section 7.6.1): `Connection` and the fields
/// it names, and the fixed hop-by-hop ones.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
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
    for name in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
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
    let who = proxy.verifier.authorize(route.access, req.headers())?;
    let client_key = match &who {
        Some(id) => Client::User(&id.user_id),
        None => Client::Ip(client),
    };
    proxy.limiter.check(req.uri().path(), client_key).await?;

    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    // Left out: the token (verified here, never passed on); what a client sends as identity
    // (only the gateway's signed copy reaches a service); what it sends as forwarding (we are
    // the edge: a client's x-forwarded-for is not evidence of anything); its trace context (the
    // span continues it, and the span's own goes instead).
    // `Expect` too: hyper answered it when the body was first read.
    for name in [
        header::AUTHORIZATION,
        header::EXPECT,
        identity::HEADER,
        X_FORWARDED_FOR,
        X_FORWARDED_HOST,
        X_FORWARDED_PROTO,
    ] {
        headers.remove(name);
    }
    let carried: Vec<HeaderName> = headers
        .keys()
        .filter(|name| propagation::is_http_context(name))
        .cloned()
        .collect();
    for name in carried {
        headers.remove(name);
    }
    if let Some(id) = &who {
        // `identify` refused tokens that do not fit the header, so this holds; should it not,
        // the request must not go on as anonymous.
        let asserted = proxy
            .identity_key
            .header_value(id, now_secs())
            .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()))?;
        headers.insert(identity::HEADER, asserted);
    }
    let forwarded_for = http::HeaderValue::from_str(client).expect("an IP address is a header value");
    headers.insert(X_FORWARDED_FOR, forwarded_for);
    headers.insert(X_FORWARDED_PROTO, http::HeaderValue::from_static("http"));
    // One span per request, as Envoy does by default: the upstream continues the gateway's
    // server span directly.
    propagation::inject_http_formats(cx, proxy.propagation, &mut headers);

    // Read before anything goes upstream when small: a broken, oversized or trickling body is
    // the client's 400, 413 or 408, and a whole one can be sent again.
    let (body, progress, replay) = match client_body::read(body, proxy.body_timeout).await {
        Ok(client_body::Read::Whole(bytes)) if bytes.is_empty() => (Body::empty(), None, None),
        Ok(client_body::Read::Whole(bytes)) => (Body::from(bytes.clone()), None, Some(Replay(bytes))),
        Ok(client_body::Read::Streaming(body, progress)) => (body, Some(progress), None),
        Err(fault) => return Err(client_error(&fault)),
    };
    let mut upstream = Request::new(body);
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = parts.uri;
    *upstream.version_mut() = Version::HTTP_11;
    *upstream.headers_mut() = headers;
    if let Some(progress) = &progress {
        upstream.extensions_mut().insert(progress.clone());
    }
    if let Some(replay) = replay {
        upstream.extensions_mut().insert(replay);
    }

    match pool.send(upstream).await {
        Ok(mut res) => {
            strip_hop_by_hop(res.headers_mut());
            Ok(res)
        }
        Err(e) => Err(match client_body::client_fault(&e, progress.as_ref()) {
            Some(fault) => client_error(&fault),
            None => upstream_error(pool.name().as_str(), &e),
        }),
    }
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

    #[test]
    fn paths_that_reach_past_their_route_are_not_plain() {
        for plain in [
            "/api/products",
            "/api/products/7",
            "/api/products/",
            "/api/p.x/..y",
        ] {
            assert!(path_is_plain(plain), "{plain}");
        }
        for reaching in [
            "/api/products/../internal/x",
            "/api/products/%2e%2e/internal",
            "/api/products/%2E%2e/internal",
            "/api/products/.%2E/internal",
            "/api/products/..%2finternal",
            "/api/products/..%2Finternal",
            "/api/products//internal",
            "/api/products/./x",
            "/api/products/..\\internal",
        ] {
            assert!(!path_is_plain(reaching), "{reaching}");
        }
    }
}
