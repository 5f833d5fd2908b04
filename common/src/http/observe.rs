//! The observing middleware: metrics, uniform JSON error bodies, and logging a failure once.

use std::time::Instant;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use metrics::SharedString;

use crate::error::{ErrorBody, ErrorCause, code_for_status};

/// Longest plain-text error body turned into a JSON message.
const MAX_TEXT_ERROR: usize = 4096;

pub(super) async fn observe(State(service): State<&'static str>, req: Request, next: Next) -> Response {
    let route = super::route_of(&req).to_owned();
    let method = req.method().clone();
    let start = Instant::now();

    let mut res = next.run(req).await;
    let status = res.status();
    if status.is_client_error() || status.is_server_error() {
        if !is_json(&res) {
            res = to_json_error(res).await;
        }
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

    let labels = [
        ("service", SharedString::const_str(service)),
        ("method", static_method(&method)),
        ("route", SharedString::from(route)),
        ("status", status_label(status)),
    ];
    metrics::counter!("http_server_requests_total", &labels).increment(1);
    metrics::histogram!("http_server_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    res
}

/// Metric labels without a per-request allocation for the common cases.
fn static_method(method: &http::Method) -> SharedString {
    SharedString::const_str(match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    })
}

/// The status code as a label; the codes mall answers with need no allocation.
pub fn status_label(status: http::StatusCode) -> SharedString {
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

/// Gives a bare error (from a tower layer or one of axum's rejections) the standard body.
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
    for (name, value) in parts.headers.iter() {
        if name != CONTENT_TYPE && name != http::header::CONTENT_LENGTH {
            new.headers_mut().insert(name.clone(), value.clone());
        }
    }
    let (mut new_parts, new_body) = new.into_parts();
    new_parts.extensions = parts.extensions;
    Response::from_parts(new_parts, Body::new(new_body))
}
