//! An HTTP/1.1 server for a service's hottest routes, in place of hyper's server and axum's
//! router for them: the gateway's whole data path, and the flash sale's purchase route.
//!
//! The request head is parsed with httparse straight off the connection's buffer (`head.rs`),
//! traced with one OpenTelemetry span (`span.rs`) and answered in one write (`respond.rs`),
//! where hyper's server, axum's router and the standard stack cost about twice what nginx
//! spends on the same request (README, "Benchmarks"). What a request goes through is the same
//! as on the standard stack: a request id, an `http.server` span continuing the caller's
//! context, the body limit, the JSON error contract, the failure log line and the per-route
//! metrics. The service's [`Routes`] take the requests they serve here and give the rest back
//! for the service's axum router (health routes, admin routes, its JSON 404), which runs with
//! the standard stack as before.
//!
//! Per connection: read a head; answer protocol errors with the JSON error contract (400
//! `bad_request`, 413, 414 `uri_too_long`, 431 `headers_too_large`, 408 `request_timeout`) and
//! close; otherwise build the request (a body that came whole, or a small one read whole, rides
//! along as bytes; a large or chunked one streams from the connection, which then closes after
//! the answer), serve it, write the answer, and go on to the next head while the client keeps
//! the connection. On shutdown an idle connection closes at once and a busy one after its
//! answer.

mod head;
mod respond;
mod span;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body::{Frame, SizeHint};
use metrics::SharedString;
use opentelemetry::global::BoxedTracer;
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tower::ServiceExt as _;

use crate::error::{ApiError, ErrorCause};
use crate::http::{Timed, body_too_large, ensure_request_id, method_label, status_label, with_request_id};
use crate::server::ServeConnection;
use crate::telemetry::propagation;
use crate::wire::{self, Decoder};
use respond::Asked;
pub use span::ServerSpan;

/// A request body at most this large is read whole before the request is served (and keeps the
/// connection reusable); a larger one streams.
const READ_WHOLE: u64 = 64 * 1024;
/// Bytes of a head the parser waits for beyond the header limit before a connection is refused
/// (the request line, and room for a service's own header check to answer first).
const HEAD_ROOM: usize = 8 * 1024;

/// The requests a service serves on the edge; the rest go to its router.
pub trait Routes: Send + Sync + 'static {
    /// Serves `req` here (the future answers it), or gives it back for the router.
    // The request moves either way; boxing it back would cost every router-bound request an
    // allocation.
    #[allow(clippy::result_large_err)]
    fn serve<'a>(
        &'a self,
        req: Request<Body>,
        conn: &'a Conn,
    ) -> Result<impl Future<Output = Response> + Send + 'a, Request<Body>>;
}

/// The client connection a request came on.
pub struct Conn {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Its IP as text, formatted once per connection (rate-limit keys, `x-forwarded-for`, the
    /// access line).
    pub client: String,
}

/// What the connection loop needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `MALL_BODY_LIMIT`: a larger body is refused (413) or, streaming, fails.
    pub body_limit: usize,
    /// Most bytes of request fields the service accepts (431 above).
    pub max_header_bytes: usize,
    /// `MALL_REQUEST_TIMEOUT`: bounds waiting for the rest of a head, and for a body read whole.
    pub request_timeout: Duration,
    /// `MALL_IDLE_TIMEOUT`: a connection with no request for this long is closed.
    pub idle_timeout: Duration,
}

/// [`Routes`] as the server's connection handler.
pub struct Edge<R> {
    routes: Arc<R>,
    limits: Limits,
}

impl<R: Routes> Edge<R> {
    /// Serves connections with `routes` first.
    pub fn new(routes: Arc<R>, settings: Settings) -> Self {
        Self {
            routes,
            limits: Limits {
                body: settings.body_limit as u64,
                head: settings.max_header_bytes + HEAD_ROOM,
                timeout: settings.request_timeout,
                idle: settings.idle_timeout,
            },
        }
    }
}

impl<R: Routes> ServeConnection for Edge<R> {
    fn serve(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        router: Router,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(serve(
            self.routes.clone(),
            self.limits,
            stream,
            peer,
            router,
            stop,
        ))
    }
}

#[derive(Clone, Copy)]
struct Limits {
    body: u64,
    head: usize,
    timeout: Duration,
    idle: Duration,
}

/// One connection, request after request.
async fn serve<R: Routes>(
    routes: Arc<R>,
    limits: Limits,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let stream = Arc::new(stream);
    let conn = Conn {
        peer,
        client: crate::text::ip(peer.ip()),
    };
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out = Vec::with_capacity(4 * 1024);
    let mut idle = Idle::new(limits.idle);
    // Waited on between requests, made once: a new one per request registered with the token
    // and left it again, a lock each way.
    let mut stopped = std::pin::pin!(stop.cancelled());
    loop {
        let head = match next_head(&stream, &mut buf, limits, stopped.as_mut(), &mut idle).await {
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
        idle.busy();
        let (req, reusable) = match request(limits, &stream, &mut buf, head).await {
            Ok(built) => built,
            Err(refused) => {
                // The body was not read: the connection cannot go on to another request.
                asked.keep_alive = false;
                return refuse(&stream, &mut out, refused, asked).await;
            }
        };
        asked.keep_alive &= reusable;
        let res = match routes.serve(req, &conn) {
            Ok(answer) => answer.await,
            Err(mut req) => {
                req.extensions_mut().insert(ConnectInfo(peer));
                match router.clone().oneshot(req).await {
                    Ok(res) => res,
                    Err(never) => match never {},
                }
            }
        };
        asked.keep_alive &= !stop.is_cancelled();
        match respond::write(&stream, &mut out, res, asked).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
    }
}

/// When an idle connection closes: one timer per connection, armed once and moved on only when
/// it fires early (a request came meanwhile), so that a request costs a clock read, not a timer
/// set and cancelled.
struct Idle {
    timer: Pin<Box<tokio::time::Sleep>>,
    last_busy: tokio::time::Instant,
    limit: Duration,
}

impl Idle {
    fn new(limit: Duration) -> Self {
        Self {
            timer: Box::pin(tokio::time::sleep(limit)),
            last_busy: tokio::time::Instant::now(),
            limit,
        }
    }

    /// A request came in.
    fn busy(&mut self) {
        self.last_busy = tokio::time::Instant::now();
    }

    /// Resolves once the connection has been idle for the limit.
    async fn expired(&mut self) {
        loop {
            self.timer.as_mut().await;
            let due = self.last_busy + self.limit;
            if tokio::time::Instant::now() >= due {
                return;
            }
            self.timer.as_mut().reset(due);
        }
    }
}

/// Reads until a whole head is in `buf`; `None` when the client closed (or, while idle, the
/// server is stopping or the connection has been idle for `MALL_IDLE_TIMEOUT`).
/// A head that started arriving must be whole within the request timeout (408
/// `request_timeout`): a client trickling one in byte by byte does not hold its connection for
/// ever.
async fn next_head(
    stream: &TcpStream,
    buf: &mut BytesMut,
    limits: Limits,
    mut stopped: Pin<&mut WaitForCancellationFuture<'_>>,
    idle: &mut Idle,
) -> Result<Option<head::Head>, ApiError> {
    let mut deadline = None;
    loop {
        if !buf.is_empty()
            && let Some(head) = head::parse(buf, limits.head)?
        {
            return Ok(Some(head));
        }
        let read = if buf.is_empty() {
            tokio::select! {
                biased;
                read = wire::read(stream, buf) => read,
                () = stopped.as_mut() => return Ok(None),
                () = idle.expired() => return Ok(None),
            }
        } else {
            // Rare: the head came in more than one read. Only then is a timer armed.
            let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + limits.timeout);
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
    limits: Limits,
    stream: &Arc<TcpStream>,
    buf: &mut BytesMut,
    head: head::Head,
) -> Result<(Request<Body>, bool), ApiError> {
    let mut reusable = true;
    let body = match head.body {
        Decoder::Length(0) => Body::empty(),
        Decoder::Length(n) if n > limits.body => return Err(body_too_large(limits.body)),
        Decoder::Length(n) if n <= READ_WHOLE => {
            if (buf.len() as u64) < n {
                if head.expects_continue {
                    respond::continue_100(stream).await.map_err(read_failed)?;
                }
                tokio::time::timeout(limits.timeout, read_at_least(stream, buf, n as usize))
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
            let body = ClientBody {
                stream: stream.clone(),
                buf: std::mem::take(buf),
                decoder,
                ended: false,
            };
            // http-body-util's limit, whose error axum's extractors answer with 413 (the
            // standard stack sees the bound in the size hint and adds no second one).
            Body::new(http_body_util::Limited::new(body, limits.body as usize))
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

/// A route served on the edge, as its metrics and span know it.
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel {
    /// Tells the route's metric handles apart (any number the service keeps distinct).
    pub key: usize,
    /// The route template (`/api/flashsale/purchase`, `/api/orders/{*rest}`).
    pub label: &'static str,
}

/// What every answer of an edge route goes through, as on the standard stack: the server span,
/// the failure log line, the span's end, the metrics and the request id.
pub struct Observer {
    service: &'static str,
    tracer: BoxedTracer,
    /// `http_server_requests_*` handles by (route key, method, status).
    metrics: Timed<(usize, Method, StatusCode)>,
}

impl Observer {
    /// The observer of `service`'s edge routes.
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            tracer: opentelemetry::global::tracer(service),
            metrics: Timed::default(),
        }
    }

    /// Starts the request's `http.server` span (continuing the caller's context, if it sent one).
    pub fn span<B>(&self, req: &Request<B>, route: RouteLabel, request_id: &HeaderValue) -> ServerSpan {
        ServerSpan::start(
            &self.tracer,
            span::Request {
                service: self.service,
                name: span_name(req.method(), route.label),
                method: method_label(req.method()),
                route: route.label,
                path: req.uri().path(),
                request_id: request_id.to_str().unwrap_or(""),
                headers: req.headers(),
            },
        )
    }

    /// The failure log line, the span's end, the metrics and the request id of an answer.
    pub fn finish(
        &self,
        res: Response,
        span: ServerSpan,
        route: RouteLabel,
        method: &Method,
        request_id: HeaderValue,
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
            |(k, m, s)| *s == status && *k == route.key && m == method,
            || {
                let labels = [
                    ("service", SharedString::const_str(self.service)),
                    ("method", SharedString::const_str(method_label(method))),
                    ("route", SharedString::const_str(route.label)),
                    ("status", status_label(status)),
                ];
                (
                    (route.key, method.clone(), status),
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
    use std::sync::RwLock;
    // A list, not a hash map: a handful of routes per service, and hashing the key with the
    // standard library's SipHash cost more than the scan.
    static NAMES: RwLock<Vec<(&'static str, &'static str, &'static str)>> = RwLock::new(Vec::new());
    let method_str = method_label(method);
    if method_str == "other" {
        return Cow::Owned(format!("{method} {route}"));
    }
    let find = |names: &[(&'static str, &'static str, &'static str)]| {
        names
            .iter()
            .find(|(m, r, _)| *m == method_str && *r == route)
            .map(|(_, _, name)| *name)
    };
    if let Some(name) = find(&NAMES.read().unwrap_or_else(|e| e.into_inner())) {
        return Cow::Borrowed(name);
    }
    let mut names = NAMES.write().unwrap_or_else(|e| e.into_inner());
    if let Some(name) = find(&names) {
        return Cow::Borrowed(name);
    }
    // Bounded: the route labels times seven methods.
    let name: &'static str = Box::leak(format!("{method_str} {route}").into_boxed_str());
    names.push((method_str, route, name));
    Cow::Borrowed(name)
}

/// A request body streamed from the client connection as the service takes it.
struct ClientBody {
    stream: Arc<TcpStream>,
    buf: BytesMut,
    decoder: Decoder,
    ended: bool,
}

/// A streamed request body could not be read: the client's framing was broken, or its
/// connection failed (the client gets 400).
#[derive(Debug, thiserror::Error)]
#[error("the request body could not be read: {0}")]
pub struct RequestBodyError(#[source] wire::BodyError);

impl HttpBody for ClientBody {
    type Data = Bytes;
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
            Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
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
