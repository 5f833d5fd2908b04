//! The gateway's own answers: every refusal it writes itself, its status and stable code.
//! An upstream's answer passes through untouched; these are for what never reached one, or
//! what the pool could not get from one.

use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use mall_common::error::ApiError;
use tower::BoxError;

/// Everything the gateway refuses or fails with.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// More header bytes or fields than the gateway passes on.
    #[error("request headers exceed {max_bytes} bytes or {max_fields} fields")]
    HeadersTooLarge {
        /// `MALL_GW_MAX_HEADER_BYTES`.
        max_bytes: usize,
        /// The fields a client may send.
        max_fields: usize,
    },
    /// A request target over the limit.
    #[error("the request target is longer than {0} bytes")]
    UriTooLong(usize),
    /// A head whose framing or host is ambiguous.
    #[error("{0}")]
    BadRequest(&'static str),
    /// A path that could reach past its route.
    #[error("the path has a dot segment, an encoded slash or an empty segment")]
    InvalidPath,
    /// No route takes the path.
    #[error("no such route")]
    NoRoute,
    /// No token, or one that does not verify.
    #[error("{0}")]
    Unauthorized(String),
    /// An admin route without the admin role.
    #[error("this route needs the admin role")]
    Forbidden,
    /// Over a rate limit (`scope`: client, route or cluster).
    #[error("too many requests ({scope} limit)")]
    RateLimited {
        /// Which limit.
        scope: &'static str,
        /// When to come back.
        retry_after: Duration,
    },
    /// The client's body is over `MALL_BODY_LIMIT`.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The client's body is broken.
    #[error("{0}")]
    BrokenBody(String),
    /// The client's body trickled past `MALL_GW_BODY_TIMEOUT`.
    #[error("{0}")]
    RequestTimeout(String),
    /// The pool is at its concurrency limit.
    #[error("{pool} is saturated; retry shortly")]
    Overloaded {
        /// The pool's name.
        pool: &'static str,
    },
    /// The pool's circuit is open.
    #[error("{pool} is failing; the circuit is open")]
    CircuitOpen {
        /// The pool's name.
        pool: &'static str,
        /// Until the next probe.
        retry_after: Duration,
    },
    /// Every instance of the pool is ejected or down.
    #[error("no healthy {pool} instance")]
    NoHealthyInstance {
        /// The pool's name.
        pool: &'static str,
    },
    /// The upstream did not answer within the deadline.
    #[error("{pool} did not answer in time")]
    UpstreamTimeout {
        /// The pool's name.
        pool: &'static str,
    },
    /// The upstream could not be reached or broke off; `cause` is logged, never sent.
    #[error("{pool} could not be reached")]
    BadGateway {
        /// The pool's name.
        pool: &'static str,
        /// What went wrong.
        cause: String,
    },
    /// A service's document cannot be had for the merged `/openapi.json`.
    #[error("the {service} service's document cannot be had now; retry")]
    DocumentUnavailable {
        /// The service.
        service: &'static str,
        /// What went wrong (logged).
        cause: String,
    },
}

impl GatewayError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::BadRequest(_) | Self::InvalidPath | Self::BrokenBody(_) => StatusCode::BAD_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Overloaded { .. }
            | Self::CircuitOpen { .. }
            | Self::NoHealthyInstance { .. }
            | Self::DocumentUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::BadGateway { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::UriTooLong(_) => "uri_too_long",
            Self::BadRequest(_) | Self::BrokenBody(_) => "bad_request",
            Self::InvalidPath => "invalid_path",
            Self::NoRoute => "not_found",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RateLimited { .. } => "rate_limited",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::RequestTimeout(_) => "request_timeout",
            Self::Overloaded { .. } => "overloaded",
            Self::CircuitOpen { .. } | Self::NoHealthyInstance { .. } => "upstream_unavailable",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::BadGateway { .. } => "bad_gateway",
            Self::DocumentUnavailable { .. } => "unavailable",
        }
    }

    /// Seconds for `Retry-After`, for the refusals worth retrying soon.
    fn retry_after(&self) -> Option<u64> {
        let secs = |d: &Duration| d.as_secs_f64().ceil().max(1.0) as u64;
        match self {
            Self::RateLimited { retry_after, .. } | Self::CircuitOpen { retry_after, .. } => {
                Some(secs(retry_after))
            }
            Self::Overloaded { .. } | Self::NoHealthyInstance { .. } | Self::DocumentUnavailable { .. } => {
                Some(1)
            }
            _ => None,
        }
    }
}

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> Self {
        let mut err = ApiError::new(e.status(), e.code(), e.to_string());
        if let Some(secs) = e.retry_after() {
            err = err.with_retry_after(secs);
        }
        match e {
            GatewayError::BadGateway { cause, .. } | GatewayError::DocumentUnavailable { cause, .. } => {
                err.with_cause(cause)
            }
            _ => err,
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

/// A transport failure talking to one instance (refused, reset, closed early).
#[derive(Debug, thiserror::Error)]
#[error("upstream {instance}: {source}")]
pub struct EndpointError {
    /// `host:port` of the instance.
    pub instance: Arc<str>,
    /// Whether the connection could not be made, so nothing was sent.
    pub connect: bool,
    /// The client's error.
    #[source]
    pub source: BoxError,
}

impl EndpointError {
    /// Whether the connection could not be made, so nothing was sent.
    pub fn is_connect(&self) -> bool {
        self.connect
    }
}

/// The first error of type `T` in `error`'s source chain (tower layers wrap errors).
pub fn find_cause<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_refusals_say_when_and_the_rest_do_not() {
        let cases = [
            (GatewayError::Overloaded { pool: "order" }, Some("1")),
            (
                GatewayError::CircuitOpen {
                    pool: "order",
                    retry_after: Duration::from_millis(2_500),
                },
                Some("3"),
            ),
            (
                GatewayError::RateLimited {
                    scope: "client",
                    retry_after: Duration::from_millis(10),
                },
                Some("1"),
            ),
            (GatewayError::UpstreamTimeout { pool: "order" }, None),
            (GatewayError::InvalidPath, None),
        ];
        for (e, retry) in cases {
            let code = e.code();
            let res = e.into_response();
            let got = res
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().expect("ascii"));
            assert_eq!(got, retry, "{code}");
        }
    }
}
