//! What the standard stack does with every answer, as one `from_fn` middleware: the JSON error
//! body for a bare error (axum's rejections, the timeout's and body limit's answers, an
//! upstream's plain-text error), the one log line of a failure (inside the request's span, with
//! its cause), the span's status, and the per-route request metrics.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, to_bytes};
use axum::extract::{MatchedPath, Request};
use axum::response::{IntoResponse, Response};
use futures_util::TryFutureExt as _;
use futures_util::future::Either;
use http::header::CONTENT_TYPE;
use http::{Method, StatusCode};
use metrics::SharedString;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::Timed;
use crate::error::{ApiError, ErrorBody, ErrorCause, code_for_status};

/// Longest plain-text error body turned into a JSON message.
const MAX_TEXT_ERROR: usize = 4096;

/// One service's request metrics (handles by route, method and status).
pub(super) struct Observer {
    pub(super) service: &'static str,
    pub(super) metrics: Timed<(Box<str>, Method, StatusCode)>,
}

/// The middleware as a tower layer; see the module docs. A `Layer`, not axum's `from_fn`,
/// which clones the boxed inner route on every request.
#[derive(Clone)]
pub(super) struct ObserveLayer(pub(super) Arc<Observer>);

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            observer: self.0.clone(),
        }
    }
}

/// See [`ObserveLayer`].
#[derive(Clone)]
pub(super) struct Observe<S> {
    inner: S,
    observer: Arc<Observer>,
}

impl<S> tower::Service<Request> for Observe<S>
where
    S: tower::Service<Request, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let start = Instant::now();
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = req.method().clone();
        let observer = self.observer.clone();
        // Combinators, not an async block awaiting the inner future: that would hold it twice in
        // a box made for every request. Only a bare error body waits again, boxed.
        Box::pin(self.inner.call(req).and_then(move |res| {
            if needs_json_error_body(&res) {
                Either::Left(Box::pin(async move {
                    let res = to_json_error(res).await;
                    Ok(observer.answered(res, route, &method, start))
                }))
            } else {
                Either::Right(std::future::ready(Ok(
                    observer.answered(res, route, &method, start)
                )))
            }
        }))
    }
}

impl Observer {
    /// What happens to every answer, its error body already JSON: see the module docs.
    fn answered(
        &self,
        res: Response,
        route: Option<MatchedPath>,
        method: &Method,
        start: Instant,
    ) -> Response {
        let status = res.status();
        if status.is_server_error() {
            // The only place a failure is logged, inside the request span. A failure with a
            // cause is a fault of ours (ERROR), unless it is a 503: a dependency that cannot
            // be had now is a condition the service reports by design (WARN), as is a bare
            // 5xx (a timeout).
            match res.extensions().get::<ErrorCause>() {
                Some(cause) if status != StatusCode::SERVICE_UNAVAILABLE => {
                    tracing::error!(status = status.as_u16(), cause = %cause.0, "request failed")
                }
                Some(cause) => {
                    tracing::warn!(status = status.as_u16(), cause = %cause.0, "request failed")
                }
                None => tracing::warn!(status = status.as_u16(), "request failed"),
            }
        }
        // Straight to the span's OpenTelemetry side: a recorded field went through every layer,
        // and the log format leaves these to the trace anyway.
        let span = Span::current();
        span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
        if status.is_server_error() {
            span.set_status(opentelemetry::trace::Status::error(""));
        }
        let route = route.as_ref().map_or(super::UNMATCHED, MatchedPath::as_str);
        self.record(route, method, status, start.elapsed().as_secs_f64());
        res
    }
}

impl Observer {
    fn record(&self, route: &str, method: &Method, status: StatusCode, seconds: f64) {
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

/// The 500 `internal` answer of a handler that panicked (its message goes to the log as the
/// cause, never to the client): tower-http's catch-panic layer answers with it.
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
    if !needs_json_error_body(&res) {
        return res;
    }
    to_json_error(res).await
}

/// Whether `res` is an error whose body is not JSON yet.
fn needs_json_error_body(res: &Response) -> bool {
    let status = res.status();
    (status.is_client_error() || status.is_server_error()) && !is_json(res)
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
    fn status_labels_are_the_numbers() {
        assert_eq!(&*status_label(StatusCode::NOT_FOUND), "404");
        assert_eq!(&*status_label(StatusCode::IM_A_TEAPOT), "418");
    }

    /// The level of the failure line `answered` logs for `err`.
    fn failure_level(err: ApiError) -> String {
        let logs = crate::test_logs::CapturedLogs::start();
        let observer = Observer {
            service: "test",
            metrics: Timed::default(),
        };
        observer.answered(err.into_response(), None, &Method::GET, Instant::now());
        let line = logs.text();
        assert!(line.contains("request failed"), "{line}");
        line.split_whitespace().nth(1).unwrap_or_default().to_owned()
    }

    #[test]
    fn a_fault_is_an_error_and_an_unavailable_dependency_a_warning() {
        assert_eq!(failure_level(ApiError::internal("a bug")), "ERROR");
        assert_eq!(failure_level(ApiError::unavailable("pool timed out")), "WARN");
    }

    #[tokio::test]
    async fn a_bare_error_gets_the_json_body_keeping_its_fields() {
        let res = (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "7"), ("set-cookie", "a=1")],
            "slow down",
        )
            .into_response();
        let res = with_json_error_body(res).await;
        assert_eq!(res.headers()["retry-after"], "7");
        assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
        let body = to_bytes(res.into_body(), 1024).await.unwrap();
        let err: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (err["code"].as_str(), err["message"].as_str()),
            (Some("rate_limited"), Some("slow down"))
        );
    }

    /// Through the layer: a bare error gets the JSON body (the boxed branch), a JSON answer
    /// passes as it was (the ready one).
    #[tokio::test]
    async fn the_layer_gives_bare_errors_the_json_body_and_passes_json_answers() {
        use tower::{Layer as _, ServiceExt as _};
        let observer = Arc::new(Observer {
            service: "test",
            metrics: Timed::default(),
        });
        let inner = tower::service_fn(|req: Request| async move {
            Ok::<_, std::convert::Infallible>(if req.uri().path() == "/bare" {
                (StatusCode::SERVICE_UNAVAILABLE, "warming up").into_response()
            } else {
                (
                    StatusCode::NOT_FOUND,
                    [(CONTENT_TYPE, "application/json")],
                    r#"{"code":"not_found","message":"mine"}"#,
                )
                    .into_response()
            })
        });
        let service = ObserveLayer(observer).layer(inner);
        for (path, status, code, message) in [
            ("/bare", 503, "unavailable", "warming up"),
            ("/json", 404, "not_found", "mine"),
        ] {
            let req = Request::builder().uri(path).body(Body::empty()).unwrap();
            let res = service.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status().as_u16(), status, "{path}");
            assert_eq!(res.headers()[CONTENT_TYPE], "application/json", "{path}");
            let body = to_bytes(res.into_body(), 1024).await.unwrap();
            let err: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                (err["code"].as_str(), err["message"].as_str()),
                (Some(code), Some(message)),
                "{path}"
            );
        }
    }
}
