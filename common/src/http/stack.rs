//! The standard server middleware as one tower layer.
//!
//! It does what six stacked layers (tower-http's request id, trace, propagate, catch-panic,
//! timeout and body limit, plus an axum `from_fn` for metrics) did, in one boxed future per
//! request instead of six nested futures, a cloned `Next` and a boxed body wrapper, with metric
//! handles looked up once per route and status instead of per request, and a timer that is only
//! armed when the handler does not answer on its first poll. Profiling the gateway showed those
//! layers costing as much CPU as proxying the request itself.
//!
//! Per request, in order:
//! 1. request id: keep the caller's `x-request-id` (visible ASCII, at most 128 bytes) or make a
//!    UUID; it is echoed on the response;
//! 2. the `http.server` span, continuing the caller's W3C/B3 context, entered on every poll;
//! 3. body limit: 413 at once when `Content-Length` is over it, else the body is wrapped so that
//!    a streamed body fails when it crosses it (axum's extractors answer 413);
//! 4. the handler, with panics caught (500 `internal`, cause logged) and the request timeout
//!    (504 `timeout`);
//! 5. a bare error response (from axum's own rejections) gets the JSON error body, a 5xx is
//!    logged once with its cause, the status goes on the span, and the request is counted and
//!    timed per route, method and status.

use std::any::Any;
use std::convert::Infallible;
use std::future::poll_fn;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::HttpBody as _;
use axum::body::{Body, to_bytes};
use axum::extract::MatchedPath;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use metrics::SharedString;
use tracing::{Instrument, Span};
use uuid::Uuid;

use super::{REQUEST_ID, StackSettings, Timed};
use crate::error::{ApiError, ErrorBody, ErrorCause, code_for_status};

/// Longest plain-text error body turned into a JSON message.
const MAX_TEXT_ERROR: usize = 4096;
/// Longest caller-sent request id kept; a longer one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// The layer; see the module docs. Applied with `Router::layer`, so it runs after routing and
/// knows the matched route.
#[derive(Clone)]
pub(super) struct StandardLayer {
    service: &'static str,
    timeout: Duration,
    body_limit: usize,
}

impl StandardLayer {
    pub(super) fn new(settings: &StackSettings) -> Self {
        Self {
            service: settings.service,
            timeout: settings.request_timeout,
            body_limit: settings.body_limit,
        }
    }
}

impl<S> tower::Layer<S> for StandardLayer {
    type Service = Standard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        // `Router::layer` calls this once per route, so each route gets its own small cache.
        Standard {
            inner,
            shared: Arc::new(Shared {
                service: self.service,
                timeout: self.timeout,
                body_limit: self.body_limit,
                metrics: Timed::default(),
            }),
        }
    }
}

/// The service the layer wraps a route in.
#[derive(Clone)]
pub(super) struct Standard<S> {
    inner: S,
    shared: Arc<Shared>,
}

struct Shared {
    service: &'static str,
    timeout: Duration,
    body_limit: usize,
    /// Metric handles by (route, method, status): a handful per route.
    metrics: Timed<(Box<str>, Method, StatusCode)>,
}

impl<S> tower::Service<Request<Body>> for Standard<S>
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let start = Instant::now();
        let shared = self.shared.clone();
        let request_id = ensure_request_id(req.headers_mut());
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = req.method().clone();
        let span = super::server_span(shared.service, &req);

        // Body limit: a declared length over it is refused before the handler runs; a body of
        // unknown length is counted as it streams.
        let hint = req.body().size_hint();
        let limit = shared.body_limit;
        let called = if hint.lower() > limit as u64 {
            Err(body_too_large(limit).into_response())
        } else {
            if hint.upper().is_none_or(|upper| upper > limit as u64) {
                req = req.map(|body| Body::new(http_body_util::Limited::new(body, limit)));
            }
            // Not inside the span: the inner service is a route, whose `call` only wraps the
            // request in a future (the handler, its extractors and any route layer run when it
            // is polled, which is inside). Entering and leaving the span costs every layer a
            // look at its filter, about 2,000 instructions (callgrind).
            catch_unwind(AssertUnwindSafe(|| self.inner.call(req))).map_err(panic_response)
        };

        let deadline = start + shared.timeout;
        let fut = async move {
            let res = match called {
                Err(res) => res,
                Ok(fut) => run(fut, deadline, shared.timeout).await,
            };
            let res = finish(&shared, res, route, &method, start).await;
            Ok(with_request_id(res, request_id))
        };
        Box::pin(fut.instrument(span))
    }
}

/// `answer`'s response, a panic's 500 `internal`, or 504 `timeout` once `timeout` has passed since
/// `started`, as the standard stack bounds a handler (the timer is only armed if `answer` does
/// not answer on its first poll): for routes served outside the stack, on the edge.
pub async fn answer_within(
    answer: impl Future<Output = Response>,
    started: Instant,
    timeout: Duration,
) -> Response {
    run(
        async { Ok::<_, Infallible>(answer.await) },
        started + timeout,
        timeout,
    )
    .await
}

/// Polls the handler, catching panics; the timer is only armed if it does not answer at once.
async fn run<F>(fut: F, deadline: Instant, timeout: Duration) -> Response
where
    F: Future<Output = Result<Response, Infallible>>,
{
    let mut fut = pin!(fut);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| {
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(Ok(res))) => return Poll::Ready(res),
            Ok(Poll::Ready(Err(never))) => match never {},
            Err(panic) => return Poll::Ready(panic_response(panic)),
            Ok(Poll::Pending) => {}
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    code_for_status(StatusCode::GATEWAY_TIMEOUT),
                    format!("the request took longer than {} ms", timeout.as_millis()),
                )
                .into_response(),
            ),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Error body, failure log line, span status and metrics.
async fn finish(
    shared: &Shared,
    mut res: Response,
    route: Option<MatchedPath>,
    method: &Method,
    start: Instant,
) -> Response {
    let status = res.status();
    if status.is_client_error() || status.is_server_error() {
        res = with_json_error_body(res).await;
        if status.is_server_error() {
            // The only place a failure is logged, inside the request span. A failure with a
            // cause is a fault of ours; a bare 5xx (timeout, an unready dependency) is a
            // condition the service reports by design.
            match res.extensions().get::<ErrorCause>() {
                Some(cause) => tracing::error!(status = status.as_u16(), cause = %cause.0, "request failed"),
                None => tracing::warn!(status = status.as_u16(), "request failed"),
            }
        }
    }
    let span = Span::current();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let route = route.as_ref().map_or(super::UNMATCHED, MatchedPath::as_str);
    let elapsed = start.elapsed().as_secs_f64();
    shared.observe(route, method, status, elapsed);
    res
}

impl Shared {
    fn observe(&self, route: &str, method: &Method, status: StatusCode, seconds: f64) {
        self.metrics.record(
            |(r, m, s)| *s == status && m == method && &**r == route,
            || {
                let labels = [
                    ("service", SharedString::const_str(self.service)),
                    ("method", static_method(method)),
                    ("route", SharedString::from(route.to_owned())),
                    ("status", status_label(status)),
                ];
                (
                    (route.into(), method.clone(), status),
                    metrics::counter!("http_server_requests_total", &labels),
                    metrics::histogram!("http_server_request_duration_seconds", &labels),
                )
            },
            seconds,
        );
    }
}

/// Keeps a usable caller-sent request id or sets a new UUID; returns the one in force.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    match callers_request_id(headers) {
        Some(id) => id,
        None => {
            let id = new_request_id();
            headers.insert(REQUEST_ID, id.clone());
            id
        }
    }
}

/// The request id in force, as [`ensure_request_id`] decides it, for a handler that passes it on
/// itself rather than through the request's headers (nothing is inserted).
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    callers_request_id(headers).unwrap_or_else(new_request_id)
}

fn callers_request_id(headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get(REQUEST_ID)
        .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.to_str().is_ok())
        .cloned()
}

fn new_request_id() -> HeaderValue {
    let mut buf = Uuid::encode_buffer();
    HeaderValue::from_str(Uuid::new_v4().hyphenated().encode_lower(&mut buf))
        .expect("a UUID is a valid header value")
}

/// Echoes the request id on a response that does not name one.
pub fn with_request_id(mut res: Response, id: HeaderValue) -> Response {
    if !res.headers().contains_key(REQUEST_ID) {
        res.headers_mut().insert(REQUEST_ID, id);
    }
    res
}

/// 413 `payload_too_large` for a body over `limit` bytes.
fn body_too_large(limit: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        code_for_status(StatusCode::PAYLOAD_TOO_LARGE),
        format!("the request body is larger than {limit} bytes"),
    )
}

/// The 500 `internal` answer of a handler that panicked (its message goes to the log as the
/// cause, never to the client).
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    ApiError::internal(format!("handler panicked: {msg}")).into_response()
}

/// Metric labels without a per-request allocation for the common cases.
fn static_method(method: &Method) -> SharedString {
    SharedString::const_str(method_label(method))
}

/// The method as a metric label or span attribute: the usual methods by name, any other as
/// `other` (a label set per invented method would be unbounded).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The status code as a label; the codes mall answers with need no allocation.
pub fn status_label(status: StatusCode) -> SharedString {
    const CODES: [(u16, &str); 20] = [
        (200, "200"),
        (201, "201"),
        (202, "202"),
        (204, "204"),
        (301, "301"),
        (302, "302"),
        (304, "304"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (409, "409"),
        (413, "413"),
        (422, "422"),
        (429, "429"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    match CODES.iter().find(|(c, _)| *c == status.as_u16()) {
        Some((_, s)) => SharedString::const_str(s),
        None => SharedString::from(status.as_u16().to_string()),
    }
}

fn is_json(res: &Response) -> bool {
    res.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"))
}

/// Gives an error response that is not JSON (one of axum's rejections, a 405, an upstream's
/// plain-text error) the standard body; any other response is returned as it is.
pub async fn with_json_error_body(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&res) {
        return res;
    }
    // Boxed: rare, and its collecting future would otherwise make every caller's future larger.
    Box::pin(to_json_error(res)).await
}

async fn to_json_error(res: Response) -> Response {
    let (parts, body) = res.into_parts();
    let text = to_bytes(body, MAX_TEXT_ERROR)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| parts.status.canonical_reason().unwrap_or("error").to_owned());
    let body = ErrorBody {
        code: code_for_status(parts.status).to_owned(),
        message: text,
    };
    let mut new = (parts.status, axum::Json(body)).into_response();
    // Keep headers such as Retry-After and Allow, and extensions such as the error cause.
    // Appended, not inserted: a repeated field (Set-Cookie) keeps every value, and the new
    // answer has none of them but its type.
    for (name, value) in parts.headers.iter() {
        if name != CONTENT_TYPE && name != http::header::CONTENT_LENGTH {
            new.headers_mut().append(name.clone(), value.clone());
        }
    }
    let (mut new_parts, new_body) = new.into_parts();
    new_parts.extensions = parts.extensions;
    Response::from_parts(new_parts, Body::new(new_body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_usable() {
        let mut req = Request::builder()
            .header(REQUEST_ID, "abc-123")
            .body(Body::empty())
            .unwrap();
        assert_eq!(ensure_request_id(req.headers_mut()), "abc-123");

        let long = "x".repeat(MAX_REQUEST_ID + 1);
        let mut req = Request::builder()
            .header(REQUEST_ID, long.as_str())
            .body(Body::empty())
            .unwrap();
        let made = ensure_request_id(req.headers_mut());
        assert!(Uuid::parse_str(made.to_str().unwrap()).is_ok());
        assert_eq!(req.headers()[REQUEST_ID], made);

        let mut req = Request::new(Body::empty());
        let made = ensure_request_id(req.headers_mut());
        assert!(Uuid::parse_str(made.to_str().unwrap()).is_ok());
    }

    #[test]
    fn status_labels_are_the_numbers() {
        assert_eq!(&*status_label(StatusCode::NOT_FOUND), "404");
        assert_eq!(&*status_label(StatusCode::IM_A_TEAPOT), "418");
    }
}
