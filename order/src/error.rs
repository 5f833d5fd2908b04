//! The order service's errors and their wire form.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use mall_common::error::ApiError;
use serde_json::{Value, json};

use crate::domain::ValidationError;
use crate::peers::Unreachable;

/// Everything an order request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// No such order (or someone else's).
    #[error("no such order")]
    NotFound,
    /// The input broke a rule.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// A query parameter broke a rule (400, like every query-string error).
    #[error(transparent)]
    InvalidQuery(ValidationError),
    /// `Idempotency-Key` missing or malformed.
    #[error("send an Idempotency-Key header (1 to 200 characters) with every checkout")]
    MissingIdempotencyKey,
    /// The key was used before with another request body.
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    /// An earlier request with this key is still running; its answer comes to a retry.
    #[error("an earlier request with this Idempotency-Key is still being placed; retry in a second")]
    InProgress,
    /// Some SKUs are unknown or not on sale; nothing was reserved.
    #[error("unknown or unavailable SKUs: {0:?}")]
    UnknownSkus(Vec<i64>),
    /// Not enough stock; nothing was reserved.
    #[error("out of stock: SKUs {0:?}")]
    OutOfStock(Vec<i64>),
    /// The order is not pending any more.
    #[error("the order is not pending payment")]
    NotPending,
    /// The callback's signature is wrong.
    #[error("the callback signature does not match")]
    InvalidSignature,
    /// The cart is empty.
    #[error("the cart is empty")]
    EmptyCart,
    /// A peer service cannot be reached.
    #[error(transparent)]
    Unavailable(#[from] Unreachable),
    /// A dependency failed.
    #[error("{0}")]
    Internal(String),
}

impl OrderError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Validation(_) | Self::IdempotencyKeyReused | Self::UnknownSkus(_) | Self::EmptyCart => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::MissingIdempotencyKey | Self::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            Self::OutOfStock(_) | Self::NotPending | Self::InProgress => StatusCode::CONFLICT,
            Self::InvalidSignature => StatusCode::UNAUTHORIZED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Validation(_) => "validation_failed",
            Self::InvalidQuery(_) => "invalid_query",
            Self::MissingIdempotencyKey => "missing_idempotency_key",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::InProgress => "in_progress",
            Self::UnknownSkus(_) => "unknown_sku",
            Self::OutOfStock(_) => "out_of_stock",
            Self::NotPending => "not_pending",
            Self::InvalidSignature => "invalid_signature",
            Self::EmptyCart => "empty_cart",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// The JSON body (with the SKUs where they matter).
    pub fn body(&self) -> Value {
        let mut body = json!({ "code": self.code(), "message": self.to_string() });
        if let Self::OutOfStock(skus) | Self::UnknownSkus(skus) = self {
            body["skus"] = json!(skus);
        }
        body
    }
}

impl From<sqlx::Error> for OrderError {
    fn from(e: sqlx::Error) -> Self {
        if mall_common::db::is_unavailable(&e) {
            Self::Unavailable(Unreachable {
                service: "postgres",
                reason: e.to_string(),
            })
        } else {
            Self::Internal(e.to_string())
        }
    }
}

impl IntoResponse for OrderError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(cause) => ApiError::internal(cause).into_response(),
            Self::Unavailable(cause) => ApiError::unavailable(cause).into_response(),
            Self::InProgress => {
                let mut res = (self.status(), axum::Json(self.body())).into_response();
                res.headers_mut()
                    .insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
                res
            }
            _ => (self.status(), axum::Json(self.body())).into_response(),
        }
    }
}
