//! Forwarding one request: edge checks, header hygiene, the upstream call, and the answer.
//!
//! In order: header size limit (431), a path that could reach past its route (400), token and
//! route access (401/403), rate limits (429), then the upstream request: the client's fields
//! (its `Host` as it sent it) but its connection's own (hop-by-hop), its token, a client-sent
//! identity header, `x-forwarded-*` and its trace context, plus the gateway's signed identity,
//! the request id in force, `x-forwarded-for`, `x-forwarded-proto` and the trace context of the
//! request's server span (W3C and B3). Bodies stream both ways. Every request ends with one
//! access-log line.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, StatusCode, Version};
use mall_common::http::REQUEST_ID;
use mall_common::identity;
use mall_common::server::Peer;
use mall_common::telemetry::propagation;
use tower::BoxError;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::auth::now_secs;
use crate::client_body::{self, Replay};
use crate::error::GatewayError;
use crate::error::{EndpointError, find_cause};
use crate::layers::breaker::BreakerOpen;
use crate::rate_limit::Client;
use crate::routes::Route;
use crate::state::AppState;
use crate::upstream::{NoHealthyInstance, Pool, Upstream};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Maps a failure of the pool stack to the gateway's error contract.
pub fn upstream_error(pool: &'static str, error: &BoxError) -> GatewayError {
    let e: &(dyn std::error::Error + 'static) = error.as_ref();
    if find_cause::<tower::load_shed::error::Overloaded>(e).is_some() {
        metrics::counter!("gateway_shed_total", "pool" => pool).increment(1);
        return GatewayError::Overloaded { pool };
    }
    if let Some(open) = find_cause::<BreakerOpen>(e) {
        return GatewayError::CircuitOpen {
            pool,
            retry_after: open.retry_after,
        };
    }
    if find_cause::<NoHealthyInstance>(e).is_some() {
        return GatewayError::NoHealthyInstance { pool };
    }
    if find_cause::<tower::timeout::error::Elapsed>(e).is_some() {
        return GatewayError::UpstreamTimeout { pool };
    }
    let cause = match find_cause::<EndpointError>(e) {
        Some(ep) => ep.to_string(),
        None => error.to_string(),
    };
    GatewayError::BadGateway { pool, cause }
}

/// Proxies `req` along `route` to `pool` for the client at `peer`, inside the request's server
/// span (whose context goes upstream and into the access line).
///
/// What needs no waiting is done before the future is made, and the future holds the request
/// once: it is boxed for every request, and its size is memory touched (`docs/performance.md`).
pub fn forward(
    state: Arc<AppState>,
    pool: Pool,
    route: &'static Route,
    peer: Peer,
    req: Request<Body>,
) -> impl Future<Output = Response> + Send + 'static {
    let started = Instant::now();
    let method = req.method().clone();
    // Set by the standard stack: the caller's, when usable, else a new one.
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let span = tracing::Span::current();
    let cx = span.context();
    let pending = match prepare(&state, route, &peer, req, &cx) {
        Ok(prepared) => start(state, &pool, &peer, prepared),
        Err(refused) => Pending::Answered(refused.into_response()),
    };
    async move {
        let response = match pending {
            Pending::Sent(sending) => answer(&pool, sending.await, None),
            Pending::Exchange(exchange) => exchange.await,
            Pending::Answered(refused) => Ok(refused),
        }
        .unwrap_or_else(IntoResponse::into_response);
        let upstream = response.extensions().get::<Upstream>().map(|u| u.0.clone());
        let line = AccessLine {
            method: &method,
            route: route.path,
            pool: pool.name().as_str(),
            upstream: upstream.as_deref().unwrap_or(""),
            request_id: &request_id,
            client: peer.ip(),
            started,
        };
        line.write(response.status(), &span, &cx);
        response
    }
}

/// A request no route takes (`/internal/...` included: the services' internal endpoints are
/// never reachable from outside): 404 `not_found`, with its access line like any other.
pub fn unrouted(peer: Peer, req: &Request<Body>) -> Response {
    let started = Instant::now();
    let span = tracing::Span::current();
    let res = GatewayError::NoRoute.into_response();
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
        client: peer.ip(),
        started,
    }
    .write(res.status(), &span, &span.context());
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
    /// any other (a JSON object with `MALL_LOG_FORMAT=json`), naming the trace it belongs to;
    /// written from inside the request's `span` (entered), whose context is `cx`.
    pub(crate) fn write(&self, status: StatusCode, span: &tracing::Span, cx: &opentelemetry::Context) {
        let trace_id = propagation::trace_id_of(cx).unwrap_or_default();
        // No parent: the line names its request and trace itself, so it need not carry the
        // request's span, nor become an event on the exported span. The log layer would still
        // take the entered span as the line's context (tokio-rs/tracing#1650: a `span` object
        // parsed and written again in every JSON line, an `http.server:` prefix in compact), so
        // the line is written with the span left for the moment.
        let _left = LeftSpan::new(span);
        tracing::info!(
            target: "mall_gateway::access",
            parent: None,
            method = self.method.as_str(),
            route = self.route,
            pool = self.pool,
            status = status.as_u16(),
            upstream = self.upstream,
            // Whole microseconds: `3.397`, where `as_secs_f64() * 1e3` printed `3.3977069999999996`.
            latency_ms = self.started.elapsed().as_micros() as f64 / 1e3,
            request_id = self.request_id,
            trace_id = trace_id.as_str(),
            client = self.client,
            "access"
        );
    }
}

/// Leaves an entered span until dropped, then enters it again. The span must be the innermost
/// entered one (`Span::current`), so the thread's span stack is as it was afterwards.
struct LeftSpan(Option<(tracing::Dispatch, tracing::span::Id)>);

impl LeftSpan {
    fn new(span: &tracing::Span) -> Self {
        Self(span.id().map(|id| {
            let dispatch = tracing::dispatcher::get_default(tracing::Dispatch::clone);
            dispatch.exit(&id);
            (dispatch, id)
        }))
    }
}

impl Drop for LeftSpan {
    fn drop(&mut self) {
        if let Some((dispatch, id)) = &self.0 {
            dispatch.enter(id);
        }
    }
}

/// The fixed hop-by-hop fields (RFC 9110, section 7.6.1). Header-name arrays are `static`: a
/// `const` one is built and dropped at every use, once per header of every request.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// What a client may not assert upstream: its token (verified here, never passed on), an
/// identity (only the gateway's signed copy reaches a service), forwarding fields (we are the
/// edge: a client's x-forwarded-for is not evidence of anything), and `Expect` (hyper answered
/// it when the body was first read). Its trace context goes too: the span continues it, and
/// the span's own goes instead.
static CLIENT_ONLY: [HeaderName; 6] = [
    header::AUTHORIZATION,
    header::EXPECT,
    identity::HEADER,
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
];

/// Removes every field `drop` picks, and the fields `Connection` names. One pass over the
/// few fields present, where a `remove` per candidate name hashed each of them.
fn remove_fields(headers: &mut HeaderMap, drop: impl Fn(&HeaderName) -> bool) {
    let mut doomed: Vec<HeaderName> = headers.keys().filter(|name| drop(name)).cloned().collect();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        doomed.extend(
            value
                .split(',')
                .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok()),
        );
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// Removes what belongs to one connection: `Connection`, the fields it names, and the fixed
/// hop-by-hop ones.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_fields(headers, |name| HOP_BY_HOP.contains(name));
}

/// The fields that go upstream: the client's, less what belongs to its connection and what a
/// client may not assert, plus the gateway's signed identity, forwarding fields and the span's
/// trace context.
fn upstream_headers(
    state: &AppState,
    mut headers: HeaderMap,
    who: Option<&identity::Identity>,
    client: &Peer,
    cx: &opentelemetry::Context,
) -> Result<HeaderMap, GatewayError> {
    remove_fields(&mut headers, |name| {
        HOP_BY_HOP.contains(name) || CLIENT_ONLY.contains(name) || propagation::is_http_context(name)
    });
    if let Some(id) = who {
        // `identify` refused tokens that do not fit the header, so this holds; should it not,
        // the request must not go on as anonymous.
        let asserted = state
            .identity_key
            .header_value(id, now_secs())
            .map_err(|e| GatewayError::Unauthorized(e.to_string()))?;
        headers.insert(identity::HEADER, asserted);
    }
    headers.insert(X_FORWARDED_FOR, client.ip_header().clone());
    headers.insert(X_FORWARDED_PROTO, http::HeaderValue::from_static("http"));
    // One span per request, as Envoy does by default: the upstream continues the gateway's
    // server span directly.
    propagation::inject_http_formats(cx, state.propagation, &mut headers);
    Ok(headers)
}

/// A request past the edge checks that need no waiting: its access is settled and its
/// upstream request made, with the client's body still unread and the rate limit to come.
struct Prepared {
    upstream: Request<Body>,
    /// Whom the rate limit counts: the user's id, or `None` for the client's IP.
    user: Option<String>,
}

impl Prepared {
    /// Whom the rate limit counts for this request from `client`.
    fn client_key<'a>(&'a self, client: &'a Peer) -> Client<'a> {
        self.user.as_deref().map_or(Client::Ip(client.ip()), Client::User)
    }
}

/// Authorizes `req` on `route` and makes its upstream request.
fn prepare(
    state: &AppState,
    route: &'static Route,
    client: &Peer,
    req: Request<Body>,
    cx: &opentelemetry::Context,
) -> Result<Prepared, GatewayError> {
    let who = state.verifier.authorize(route.access, req.headers())?;
    let (parts, body) = req.into_parts();
    let headers = upstream_headers(state, parts.headers, who.as_ref(), client, cx)?;
    let mut upstream = Request::new(body);
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = parts.uri;
    *upstream.version_mut() = Version::HTTP_11;
    *upstream.headers_mut() = headers;
    Ok(Prepared {
        upstream,
        user: who.map(|id| id.user_id),
    })
}

/// A request's way to its answer, decided before its future is made.
enum Pending {
    /// Sent to the pool at once (no body, local rate limits only): the future keeps a pointer.
    Sent(BoxFuture<'static, Result<Response<Body>, BoxError>>),
    /// Something to wait for first (a cluster rate limit, the client's body): boxed whole.
    Exchange(BoxFuture<'static, Result<Response, GatewayError>>),
    /// Refused before anything was sent.
    Answered(Response),
}

fn start(state: Arc<AppState>, pool: &Pool, client: &Peer, prepared: Prepared) -> Pending {
    let key = prepared.client_key(client);
    let path = prepared.upstream.uri().path();
    let bodiless = http_body::Body::is_end_stream(prepared.upstream.body());
    match bodiless.then(|| state.limiter.check_now(path, key)).flatten() {
        Some(Ok(())) => Pending::Sent(pool.send(prepared.upstream)),
        Some(Err(refused)) => Pending::Answered(refused.into_response()),
        None => Pending::Exchange(Box::pin(exchange(state, pool.clone(), client.clone(), prepared))),
    }
}

/// The rate limit, the client's body and the upstream call for a prepared request.
async fn exchange(
    state: Arc<AppState>,
    pool: Pool,
    client: Peer,
    mut prepared: Prepared,
) -> Result<Response, GatewayError> {
    let key = prepared.client_key(&client);
    state.limiter.check(prepared.upstream.uri().path(), key).await?;

    // Read before anything goes upstream when small: a broken, oversized or trickling body is
    // the client's 400, 413 or 408, and a whole one can be sent again.
    let upstream = &mut prepared.upstream;
    let mut progress = None;
    let body = std::mem::take(upstream.body_mut());
    if !http_body::Body::is_end_stream(&body) {
        match client_body::read(body, state.body_timeout).await {
            Ok(client_body::Read::Whole(bytes)) if bytes.is_empty() => {}
            Ok(client_body::Read::Whole(bytes)) => {
                *upstream.body_mut() = Body::from(bytes.clone());
                upstream.extensions_mut().insert(Replay(bytes));
            }
            Ok(client_body::Read::Streaming(body, watched)) => {
                *upstream.body_mut() = body;
                upstream.extensions_mut().insert(watched.clone());
                progress = Some(watched);
            }
            Err(fault) => return Err(fault.answer()),
        }
    }
    let sent = pool.send(std::mem::take(upstream)).await;
    answer(&pool, sent, progress.as_ref())
}

/// The pool's answer as the client gets it: hop-by-hop fields dropped, failures mapped (a body
/// the client broke off is its fault, not the pool's).
fn answer(
    pool: &Pool,
    sent: Result<Response<Body>, BoxError>,
    progress: Option<&client_body::BodyProgress>,
) -> Result<Response, GatewayError> {
    match sent {
        Ok(mut res) => {
            strip_hop_by_hop(res.headers_mut());
            Ok(res)
        }
        Err(e) => Err(match client_body::client_fault(&e, progress) {
            Some(fault) => fault.answer(),
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
}
