//! The flash-sale service's errors and their wire form.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use mall_common::error::{ApiError, ValidationError};
use serde_json::json;

/// Everything a flash-sale request can fail with. A sold-out purchase is not here: it is the
/// sale's most common answer and is written from a ready body (`http::purchase::sold_out`).
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// A new session broke a rule (422).
    #[error(transparent)]
    InvalidSession(ValidationError),
    /// A purchase broke a rule (400, like its other body errors).
    #[error(transparent)]
    InvalidPurchase(ValidationError),
    /// The purchase body is not JSON.
    #[error("{0}")]
    MalformedJson(String),
    /// The purchase body is JSON of the wrong shape.
    #[error("{0}")]
    InvalidBody(String),
    /// The gateway-asserted identity is missing or forged (the identity check's answer).
    #[error(transparent)]
    Identity(ApiError),
    /// The token was not signed for this user, session and SKU, or ran out.
    #[error("no valid purchase token for this user, session and SKU")]
    InvalidToken,
    /// No such session, or it does not sell the SKU.
    #[error("{0}")]
    NotFound(&'static str),
    /// The session has not started.
    #[error("the session has not started")]
    NotStarted,
    /// The session has ended.
    #[error("the session has ended")]
    Ended,
    /// The purchase would pass the per-user limit.
    #[error("this would exceed the per-user limit")]
    LimitExceeded,
    /// Inventory cannot hold a session's quantities; nothing was reserved.
    #[error("not enough stock for SKUs {0:?}; nothing was reserved")]
    OutOfStock(Vec<i64>),
    /// A session names SKUs inventory does not know; nothing was reserved.
    #[error("unknown SKUs {0:?}; nothing was reserved")]
    UnknownSku(Vec<i64>),
    /// Too many purchases in flight on this instance.
    #[error("too many purchases in flight; retry")]
    Overloaded,
    /// The sale's Redis is failing (the breaker is open) or not yet safe on a replica.
    #[error("{0}")]
    RetrySoon(&'static str),
    /// An item is being (re)loaded into Redis: every instance would answer the same.
    #[error("{0}")]
    NotReady(&'static str),
    /// Redis, Postgres or inventory is down or did not answer in time.
    #[error("a dependency is unavailable: {0}")]
    Unavailable(String),
    /// A broken invariant.
    #[error("{0}")]
    Internal(String),
}

impl FlashError {
    /// A dependency's failure, as 503 `unavailable` with its cause logged.
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        Self::Unavailable(cause.to_string())
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidSession(_) | Self::UnknownSku(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::InvalidPurchase(_) | Self::MalformedJson(_) | Self::InvalidBody(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::Identity(e) => e.status(),
            Self::InvalidToken => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::NotStarted | Self::Ended | Self::LimitExceeded | Self::OutOfStock(_) => {
                StatusCode::CONFLICT
            }
            Self::Overloaded | Self::RetrySoon(_) | Self::NotReady(_) | Self::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidSession(_) | Self::InvalidPurchase(_) => "validation_failed",
            Self::MalformedJson(_) => "malformed_json",
            Self::InvalidBody(_) => "invalid_body",
            Self::Identity(e) => e.code(),
            Self::InvalidToken => "invalid_token",
            Self::NotFound(_) => "not_found",
            Self::NotStarted => "not_started",
            Self::Ended => "ended",
            Self::LimitExceeded => "limit_exceeded",
            Self::OutOfStock(_) => "out_of_stock",
            Self::UnknownSku(_) => "unknown_sku",
            Self::Overloaded => "overloaded",
            Self::RetrySoon(_) | Self::Unavailable(_) => "unavailable",
            Self::NotReady(_) => "not_ready",
            Self::Internal(_) => "internal",
        }
    }

    /// The `reason` label of `flashsale_rejections_total` when a purchase ends in this error;
    /// `None` for errors that are not the sale's verdict (identity, broken invariants).
    pub fn rejection(&self) -> Option<&'static str> {
        match self {
            Self::InvalidPurchase(_) | Self::MalformedJson(_) | Self::InvalidBody(_) => Some("bad_request"),
            Self::Identity(_) | Self::Internal(_) | Self::InvalidSession(_) => None,
            Self::OutOfStock(_) | Self::UnknownSku(_) | Self::NotFound(_) => None,
            other => Some(other.code()),
        }
    }
}

impl IntoResponse for FlashError {
    fn into_response(self) -> Response {
        let (status, code) = (self.status(), self.code());
        let err = match self {
            Self::Identity(e) => e,
            Self::Unavailable(cause) => ApiError::unavailable(cause),
            Self::Internal(cause) => ApiError::internal(cause),
            Self::OutOfStock(ref skus) | Self::UnknownSku(ref skus) => {
                let body = json!({ "code": code, "message": self.to_string(), "skus": skus });
                return (status, axum::Json(body)).into_response();
            }
            Self::Overloaded | Self::RetrySoon(_) => {
                ApiError::new(status, code, self.to_string()).with_retry_after(1)
            }
            Self::NotReady(_) => ApiError::new(status, code, self.to_string())
                .with_retry_after(1)
                .as_dependency_outage(),
            _ => ApiError::new(status, code, self.to_string()),
        };
        err.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_retryable_answer_says_when_and_only_shared_outages_are_marked() {
        let cases = [
            (FlashError::Overloaded, "overloaded", false),
            (
                FlashError::RetrySoon("the sale's store is failing; retry"),
                "unavailable",
                true,
            ),
            (
                FlashError::NotReady("the session is being loaded; retry"),
                "not_ready",
                true,
            ),
            (
                FlashError::unavailable("Redis did not answer in time"),
                "unavailable",
                true,
            ),
        ];
        for (e, code, outage) in cases {
            let res = e.into_response();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{code}");
            assert_eq!(res.headers()["retry-after"], "1", "{code}");
            assert_eq!(mall_common::error::is_dependency_outage(&res), outage, "{code}");
        }
    }
}
