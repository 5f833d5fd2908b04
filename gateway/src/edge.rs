//! The gateway's own HTTP/1.1 server: the data path of every proxied request.
//!
//! Everything a proxied request goes through is the same as before: the route table, the edge
//! checks and header hygiene (`proxy.rs`), the pool's resilience stack and balancer
//! (`upstream`), the access line, the metrics, the server span and the error contract. What is
//! different is what carries it: the request head is parsed with httparse straight off the
//! connection's buffer (`head.rs`), routed by the table without a router, traced with one
//! OpenTelemetry span (`span.rs`) and answered in one write (`respond.rs`), where hyper's
//! server, axum's router and the standard stack cost about twice what nginx spends proxying the
//! same request (README, "Benchmarks"). A request no route takes (an unknown path,
//! `/internal/...`) gets its 404 here, with its span, access line and metrics; the health routes
//! (`/healthz`, `/readyz`, `/metrics`) go to the gateway's axum router with its standard stack.
//!
//! Per connection: read a head; answer protocol errors with the JSON error contract (400
//! `bad_request`, 413, 414 `uri_too_long`, 431 `headers_too_large`) and close; otherwise build
//! the request (a body that came whole, or a small one read whole, rides along as bytes; a large
//! or chunked one streams from the connection, which then closes after the answer), serve it,
//! write the answer, and go on to the next head while the client keeps the connection. On
//! shutdown an idle connection closes at once and a busy one after its answer.

mod head;
mod respond;
mod span;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{Method, Request, StatusCode};
use http_body::{Frame, SizeHint};
use mall_common::error::{ApiError, ErrorCause};
use mall_common::http::{
    Timed, ensure_request_id, method_label, panic_response, status_label, with_json_error_body,
    with_request_id,
};
use mall_common::server::ServeConnection;
use mall_common::telemetry::propagation;
use metrics::SharedString;
use opentelemetry::global::BoxedTracer;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::proxy::{self, Proxy};
use crate::routes::{ROUTES, Route};
use crate::upstream::Pool;
use crate::wire::{self, Decoder};
use respond::Asked;
use span::ServerSpan;

/// A request body at most this large is read whole before the request is served (and keeps the
/// connection reusable); a larger one streams.
const READ_WHOLE: u64 = 64 * 1024;
/// The paths the gateway's axum router answers: its health routes.
const ROUTER_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];
/// The route label of requests no route takes (as axum's catch-all had it).
const UNMATCHED_ROUTE: &str = "/{*rest}";
/// The metrics key of those requests (no entry of the table).
const UNMATCHED_ENTRY: usize = usize::MAX;

/// Bytes of a head the parser waits for before a connection is refused (request line and
/// room for the proxy's own header check, `MALL_GW_MAX_HEADER_BYTES`, to answer first).
const HEAD_ROOM: usize = 8 * 1024;

/// The gateway's connection server (see the module docs).
pub struct Edge {
    proxy: Arc<Proxy>,
    table: Vec<Entry>,
    service: &'static str,
    body_limit: u64,
    max_head: usize,
    request_timeout: Duration,
    tracer: BoxedTracer,
    /// `http_server_requests_*` handles by (entry, below the prefix, method, status).
    metrics: Timed<(usize, bool, Method, StatusCode)>,
}

/// One route of the table with its pool and its labels, made once.
struct Entry {
    route: &'static Route,
    pool: Pool,
    /// `/a/{b}/c` as segments, for a pattern route.
    segments: Vec<&'static str>,
    /// What a path must start with to match the pattern (up to its first parameter), checked
    /// first so that other paths skip the segment walk.
    literal: &'static str,
    /// The route label of the path itself and of a path below it (axum's `/{*rest}`, as the
    /// metrics and span names had it before).
    labels: [&'static str; 2],
}

/// What `Edge::new` needs besides the proxy and pools.
pub struct EdgeSettings {
    /// The service name (span attribute, metric label).
    pub service: &'static str,
    /// `MALL_BODY_LIMIT`.
    pub body_limit: usize,
    /// `MALL_GW_MAX_HEADER_BYTES`.
    pub max_header_bytes: usize,
    /// `MALL_REQUEST_TIMEOUT`: bounds waiting for the rest of a head, and for a body read whole.
    pub request_timeout: Duration,
}

impl Edge {
    /// The edge over the route table, each route with its pool.
    pub fn new(proxy: Arc<Proxy>, pools: impl Fn(&Route) -> Pool, settings: EdgeSettings) -> Self {
        let table = ROUTES
            .iter()
            .map(|route| {
                let below: &'static str = Box::leak(format!("{}/{{*rest}}", route.path).into_boxed_str());
                Entry {
                    route,
                    pool: pools(route),
                    segments: if route.prefix {
                        Vec::new()
                    } else {
                        route.path.split('/').collect()
                    },
                    literal: route.path.split('{').next().unwrap_or(""),
                    labels: [route.path, below],
                }
            })
            .collect();
        Self {
            proxy,
            table,
            service: settings.service,
            body_limit: settings.body_limit as u64,
            max_head: settings.max_header_bytes + HEAD_ROOM,
            request_timeout: settings.request_timeout,
            tracer: opentelemetry::global::tracer("mall-gateway"),
            metrics: Timed::default(),
        }
    }

    /// The route a path takes, and whether the path is below the route's prefix: a pattern
    /// route that matches it exactly, else the longest prefix it falls under (on whole
    /// segments), as axum would pick.
    fn route(&self, path: &str) -> Option<(usize, bool)> {
        let mut best: Option<(usize, bool)> = None;
        for (i, entry) in self.table.iter().enumerate() {
            if !entry.route.prefix {
                if path.starts_with(entry.literal) && pattern_matches(&entry.segments, path) {
                    return Some((i, false));
                }
                continue;
            }
            let prefix = entry.route.path;
            let Some(rest) = path.strip_prefix(prefix) else {
                continue;
            };
            let below = match rest.as_bytes().first() {
                None => false,
                Some(b'/') => true,
                Some(_) => continue,
            };
            if best.is_none_or(|(b, _)| self.table[b].route.path.len() < prefix.len()) {
                best = Some((i, below));
            }
        }
        best
    }
}

fn pattern_matches(segments: &[&str], path: &str) -> bool {
    let mut parts = path.split('/');
    for segment in segments {
        match parts.next() {
            Some(part) if segment.starts_with('{') => {
                if part.is_empty() {
                    return false;
                }
            }
            Some(part) if part == *segment => {}
            _ => return false,
        }
    }
    parts.next().is_none()
}

/// [`Edge`] as the server's connection handler.
pub struct EdgeServer(pub Arc<Edge>);

impl ServeConnection for EdgeServer {
    fn serve(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        router: Router,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(serve(self.0.clone(), stream, peer, router, stop))
    }
}

/// One connection, request after request.
async fn serve(
    edge: Arc<Edge>,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let stream = Arc::new(stream);
    // Formatted once per connection: the rate-limit key, `x-forwarded-for` and the access
    // line name it.
    let client = mall_common::text::ip(peer.ip());
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out = Vec::with_capacity(4 * 1024);
    loop {
        let head = match next_head(&stream, &mut buf, edge.max_head, edge.request_timeout, &stop).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(refused) => {
                let asked = Asked {
                    http11: true,
                    head_only: false,
                    keep_alive: false,
                };
                return refuse(&stream, &mut out, refused, asked).await;
            }
        };
        let mut asked = Asked {
            http11: head.version == http::Version::HTTP_11,
            head_only: head.method == Method::HEAD,
            keep_alive: head.keep_alive,
        };
        let (req, reusable) = match request(&edge, &stream, &mut buf, head).await {
            Ok(built) => built,
            Err(refused) => {
                // The body was not read: the connection cannot go on to another request.
                asked.keep_alive = false;
                return refuse(&stream, &mut out, refused, asked).await;
            }
        };
        asked.keep_alive &= reusable && !stop.is_cancelled();
        let path = req.uri().path();
        let res = match edge.route(path) {
            Some((entry, below)) => edge.proxied(entry, below, req, &client).await,
            None if ROUTER_PATHS.contains(&path) => {
                let mut req = req;
                req.extensions_mut().insert(ConnectInfo(peer));
                match router.clone().oneshot(req).await {
                    Ok(res) => res,
                    Err(never) => match never {},
                }
            }
            None => edge.unrouted(req, &client),
        };
        asked.keep_alive &= !stop.is_cancelled();
        match respond::write(&stream, &mut out, res, asked).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
    }
}

/// Reads until a whole head is in `buf`; `None` when the client closed (or, while idle, the
/// server is stopping).
/// A head that started arriving must be whole within `timeout` (408 `request_timeout`): a
/// client trickling one in byte by byte does not hold its connection for ever.
async fn next_head(
    stream: &TcpStream,
    buf: &mut BytesMut,
    max_head: usize,
    timeout: Duration,
    stop: &CancellationToken,
) -> Result<Option<head::Head>, ApiError> {
    let mut deadline = None;
    loop {
        if !buf.is_empty()
            && let Some(head) = head::parse(buf, max_head)?
        {
            return Ok(Some(head));
        }
        let read = if buf.is_empty() {
            tokio::select! {
                read = wire::read(stream, buf) => read,
                () = stop.cancelled() => return Ok(None),
            }
        } else {
            // Rare: the head came in more than one read. Only then is a timer armed.
            let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeout);
            match tokio::time::timeout_at(deadline, wire::read(stream, buf)).await {
                Ok(read) => read,
                Err(_) => return Err(timed_out("head")),
            }
        };
        match read {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// The request of `head`, and whether the connection stays usable after it (its body was read
/// to the end before the request is served).
async fn request(
    edge: &Edge,
    stream: &Arc<TcpStream>,
    buf: &mut BytesMut,
    head: head::Head,
) -> Result<(Request<Body>, bool), ApiError> {
    let mut reusable = true;
    let body = match head.body {
        Decoder::Length(0) => Body::empty(),
        Decoder::Length(n) if n > edge.body_limit => return Err(too_large(edge.body_limit)),
        Decoder::Length(n) if n <= READ_WHOLE => {
            if (buf.len() as u64) < n {
                if head.expects_continue {
                    respond::continue_100(stream).await.map_err(read_failed)?;
                }
                tokio::time::timeout(edge.request_timeout, read_at_least(stream, buf, n as usize))
                    .await
                    .map_err(|_| timed_out("body"))?
                    .map_err(read_failed)?;
            }
            Body::from(buf.split_to(n as usize).freeze())
        }
        decoder => {
            if head.expects_continue {
                respond::continue_100(stream).await.map_err(read_failed)?;
            }
            // Whatever follows the body in the buffer would be the next request; the body
            // takes the buffer, so the connection closes after this answer.
            reusable = false;
            Body::new(ClientBody {
                stream: stream.clone(),
                buf: std::mem::take(buf),
                decoder,
                limit: edge.body_limit,
                seen: 0,
                ended: false,
            })
        }
    };
    let mut req = Request::new(body);
    *req.method_mut() = head.method;
    *req.uri_mut() = head.uri;
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers;
    Ok((req, reusable))
}

async fn read_at_least(stream: &TcpStream, buf: &mut BytesMut, n: usize) -> std::io::Result<()> {
    buf.reserve(n.saturating_sub(buf.len()));
    while buf.len() < n {
        if wire::read(stream, buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

fn read_failed(e: std::io::Error) -> ApiError {
    ApiError::bad_request("bad_request", format!("the request body could not be read: {e}"))
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is larger than {limit} bytes"),
    )
}

/// Answers a request the edge cannot take (with a request id of its own, as every answer
/// has one); the connection then closes.
async fn refuse(stream: &TcpStream, out: &mut Vec<u8>, refused: ApiError, asked: Asked) {
    let res = with_request_id(
        refused.into_response(),
        ensure_request_id(&mut http::HeaderMap::new()),
    );
    let _ = respond::write(stream, out, res, asked).await;
}

fn timed_out(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!("the request {what} did not arrive in time"),
    )
}

impl Edge {
    /// A routed request: span, the proxy, error body, failure log line, metrics.
    async fn proxied(&self, entry_at: usize, below: bool, mut req: Request<Body>, client: &str) -> Response {
        let started = Instant::now();
        let entry = &self.table[entry_at];
        let request_id = ensure_request_id(req.headers_mut());
        let route = entry.labels[usize::from(below)];
        let method = req.method().clone();
        let span = self.span(&req, route, &request_id);
        if span.carried() {
            // The caller's context is the span's parent now; upstream gets the span's own.
            propagation::strip_http_context(req.headers_mut());
        }
        let forwarded = proxy::forward(&self.proxy, &entry.pool, entry.route, client, req, span.context());
        let res = match AssertUnwindSafe(forwarded).catch_unwind().await {
            Ok(res) => res,
            Err(panic) => panic_response(panic),
        };
        let res = with_json_error_body(res).await;
        self.finish(res, span, (entry_at, below, method), route, request_id, started)
    }

    /// A request no route takes (`/internal/...` included: the services' internal endpoints are
    /// never reachable from outside): 404 `not_found`, with its span, access line and metrics
    /// like any other.
    fn unrouted(&self, mut req: Request<Body>, client: &str) -> Response {
        let started = Instant::now();
        let request_id = ensure_request_id(req.headers_mut());
        let span = self.span(&req, UNMATCHED_ROUTE, &request_id);
        let res = ApiError::not_found("no such route").into_response();
        proxy::AccessLine {
            method: req.method(),
            route: mall_common::http::UNMATCHED,
            pool: "",
            upstream: "",
            request_id: request_id.to_str().unwrap_or(""),
            client,
            started,
        }
        .write(res.status(), span.context());
        let key = (UNMATCHED_ENTRY, false, req.method().clone());
        self.finish(res, span, key, UNMATCHED_ROUTE, request_id, started)
    }

    fn span(&self, req: &Request<Body>, route: &'static str, request_id: &http::HeaderValue) -> ServerSpan {
        ServerSpan::start(
            &self.tracer,
            span::Request {
                service: self.service,
                name: span_name(req.method(), route),
                method: method_label(req.method()),
                route,
                path: req.uri().path(),
                request_id: request_id.to_str().unwrap_or(""),
                headers: req.headers(),
            },
        )
    }

    /// The failure log line, the span's end, the metrics and the request id of an answer.
    fn finish(
        &self,
        res: Response,
        span: ServerSpan,
        (entry_at, below, method): (usize, bool, Method),
        route: &'static str,
        request_id: http::HeaderValue,
        started: Instant,
    ) -> Response {
        let status = res.status();
        if status.is_server_error() {
            let trace_id = propagation::trace_id_of(span.context());
            let (request_id, trace_id) = (
                request_id.to_str().unwrap_or(""),
                trace_id.as_deref().unwrap_or(""),
            );
            match res.extensions().get::<ErrorCause>() {
                Some(cause) => {
                    tracing::error!(status = status.as_u16(), cause = %cause.0, request_id, trace_id, "request failed");
                }
                None => tracing::warn!(status = status.as_u16(), request_id, trace_id, "request failed"),
            }
        }
        span.end(status);
        self.metrics.record(
            |(e, b, m, s)| *s == status && *e == entry_at && *b == below && *m == method,
            || {
                let labels = [
                    ("service", SharedString::const_str(self.service)),
                    ("method", SharedString::const_str(method_label(&method))),
                    ("route", SharedString::const_str(route)),
                    ("status", status_label(status)),
                ];
                (
                    (entry_at, below, method.clone(), status),
                    metrics::counter!("http_server_requests_total", &labels),
                    metrics::histogram!("http_server_request_duration_seconds", &labels),
                )
            },
            started.elapsed().as_secs_f64(),
        );
        with_request_id(res, request_id)
    }
}

/// `METHOD route`: static for the usual methods (made once per route), joined otherwise.
fn span_name(method: &Method, route: &'static str) -> Cow<'static, str> {
    use std::collections::HashMap;
    use std::sync::{LazyLock, RwLock};
    static NAMES: LazyLock<RwLock<HashMap<(&'static str, &'static str), &'static str>>> =
        LazyLock::new(RwLock::default);
    let method_str = method_label(method);
    if method_str == "other" {
        return Cow::Owned(format!("{method} {route}"));
    }
    if let Some(name) = NAMES
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(method_str, route))
    {
        return Cow::Borrowed(name);
    }
    // Bounded: the route labels times seven methods.
    let name: &'static str = Box::leak(format!("{method_str} {route}").into_boxed_str());
    NAMES
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert((method_str, route), name);
    Cow::Borrowed(name)
}

/// A request body streamed from the client connection as the upstream client takes it; over
/// `MALL_BODY_LIMIT` it fails (the client gets 413).
struct ClientBody {
    stream: Arc<TcpStream>,
    buf: BytesMut,
    decoder: Decoder,
    limit: u64,
    seen: u64,
    ended: bool,
}

/// A streamed request body could not be read: the client's framing was broken, or its
/// connection failed (the client gets 400).
#[derive(Debug, thiserror::Error)]
#[error("the request body could not be read: {0}")]
pub struct RequestBodyError(#[source] wire::BodyError);

/// A streamed request body crossed the body limit.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than {0} bytes")]
pub struct BodyTooLarge(pub u64);

impl HttpBody for ClientBody {
    type Data = Bytes;
    // Boxed, so that the proxy finds `BodyTooLarge` in the upstream error's source chain.
    type Error = tower::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        match wire::poll_body(&this.stream, cx, &mut this.buf, &mut this.decoder) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.ended = true;
                Poll::Ready(Some(Err(Box::new(RequestBodyError(e)))))
            }
            Poll::Ready(Some(Ok(data))) => {
                this.seen += data.len() as u64;
                if this.seen > this.limit {
                    this.ended = true;
                    return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_routes_match_whole_segments() {
        let segments: Vec<&str> = "/api/flashsale/sessions/{session_id}/items/{sku_id}/token"
            .split('/')
            .collect();
        assert!(pattern_matches(
            &segments,
            "/api/flashsale/sessions/7/items/42/token"
        ));
        assert!(!pattern_matches(
            &segments,
            "/api/flashsale/sessions/7/items/42/token/x"
        ));
        assert!(!pattern_matches(
            &segments,
            "/api/flashsale/sessions//items/42/token"
        ));
        assert!(!pattern_matches(&segments, "/api/flashsale/sessions/7/items/42"));
    }
}
