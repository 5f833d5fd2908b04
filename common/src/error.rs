//! The error body every mall service answers with: `{"code": "...", "message": "..."}`.
//!
//! Clients and tests match on `code`, never on `message`. A 5xx never carries internals in its
//! body: the cause travels to the logging middleware as a response extension
//! ([`ErrorCause`]) and is logged once, inside the request's span.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

/// The wire format of every error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `out_of_stock`.
    pub code: String,
    /// Human-readable explanation; may change between versions.
    pub message: String,
}

/// A rule some input broke; services answer it as 422 `validation_failed` (or 400 for query
/// strings) naming the field. Domain code returns it without knowing about HTTP.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: &'static str,
}

/// Shorthand for a [`ValidationError`].
pub fn invalid(field: &'static str, reason: &'static str) -> ValidationError {
    ValidationError { field, reason }
}

/// Set on every 503 `unavailable`: a dependency the instance shares with its peers (Postgres,
/// Redis, RabbitMQ, another service) failed, not the instance. The gateway neither ejects the
/// instance nor counts the answer against its pool's breaker for it (another instance would
/// answer the same), and passes the 503 with its `Retry-After` on at once.
pub const DEPENDENCY_UNAVAILABLE: http::HeaderName =
    http::HeaderName::from_static("x-mall-dependency-unavailable");

/// Whether an upstream answer says a shared dependency failed (see [`DEPENDENCY_UNAVAILABLE`]).
pub fn is_dependency_outage<B>(res: &http::Response<B>) -> bool {
    res.status() == StatusCode::SERVICE_UNAVAILABLE && res.headers().contains_key(DEPENDENCY_UNAVAILABLE)
}

/// The cause of a server error, kept out of the body and logged by middleware.
#[derive(Debug, Clone)]
pub struct ErrorCause(pub String);

/// An HTTP error with a status, a stable code and a client-safe message.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    cause: Option<String>,
    retry_after_secs: Option<u64>,
    /// Marked [`DEPENDENCY_UNAVAILABLE`] (always for 503 `unavailable`).
    dependency_outage: bool,
}

impl ApiError {
    /// An error with an explicit status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            cause: None,
            retry_after_secs: None,
            dependency_outage: status == StatusCode::SERVICE_UNAVAILABLE && code == "unavailable",
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500 `internal`: the body says only that something failed; `cause` is logged.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log for this request id",
        )
        .with_cause(cause)
    }

    /// 503 `unavailable` for a dependency that is down; `cause` is logged.
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "a dependency is unavailable; retry later",
        )
        .with_cause(cause)
        .with_retry_after(1)
    }

    /// Attaches the cause to be logged (never sent to the client).
    pub fn with_cause(mut self, cause: impl std::fmt::Display) -> Self {
        self.cause = Some(cause.to_string());
        self
    }

    /// Marks the answer as a shared dependency's outage ([`DEPENDENCY_UNAVAILABLE`]) for a 503
    /// whose code is not `unavailable` (e.g. a flash-sale item being reloaded into Redis).
    pub fn as_dependency_outage(mut self) -> Self {
        self.dependency_outage = true;
        self
    }

    /// Adds `Retry-After: secs`.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.dependency_outage {
            response
                .headers_mut()
                .insert(DEPENDENCY_UNAVAILABLE, HeaderValue::from_static("1"));
        }
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(ErrorCause(cause));
        }
        response
    }
}

/// The code used for an error response that carried none (a bare status from a layer or from
/// axum's own rejections), so every error body has a stable code.
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        409 => "conflict",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "unprocessable_entity",
        429 => "rate_limited",
        431 => "headers_too_large",
        502 => "bad_gateway",
        503 => "unavailable",
        504 => "timeout",
        s if s >= 500 => "internal",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dependency_outage_is_marked_as_one() {
        let marked = |e: ApiError| is_dependency_outage(&e.into_response());
        assert!(marked(ApiError::unavailable("redis: connection refused")));
        assert!(marked(
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "reloading").as_dependency_outage()
        ));
        assert!(!marked(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many in flight"
        )));
        assert!(!marked(ApiError::internal("a bug")));
    }
}
