//! The inventory service's errors and their wire form.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use mall_common::error::{ApiError, ErrorBody};

use crate::domain::ValidationError;
use crate::store::StockError;

/// Everything an inventory request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// Unknown SKU or reservation.
    #[error("{0}")]
    NotFound(&'static str),
    /// The input broke a rule.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// Not enough stock; nothing was reserved.
    #[error("out of stock: SKUs {0:?}")]
    OutOfStock(Vec<i64>),
    /// SKUs without any stock record.
    #[error("unknown SKUs {0:?}")]
    UnknownSkus(Vec<i64>),
    /// Stock received for a SKU the catalog does not have.
    #[error("the catalog has no SKU {0}")]
    UnknownSku(i64),
    /// A reservation id reused for a different request, or a transition not allowed now.
    #[error("{0}")]
    Conflict(String),
    /// A dependency failed.
    #[error("{0}")]
    Internal(String),
    /// Postgres (see `mall_common::db::is_unavailable`) or the product service cannot be had
    /// right now.
    #[error("a dependency is unavailable: {0}")]
    Unavailable(String),
}

impl InventoryError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) | Self::UnknownSku(_) => StatusCode::NOT_FOUND,
            Self::Validation(_) | Self::UnknownSkus(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::OutOfStock(_) | Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Validation(_) => "validation_failed",
            Self::OutOfStock(_) => "out_of_stock",
            Self::UnknownSkus(_) | Self::UnknownSku(_) => "unknown_sku",
            Self::Conflict(_) => "conflict",
            Self::Internal(_) => "internal",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

impl From<StockError> for InventoryError {
    fn from(e: StockError) -> Self {
        match e {
            StockError::OutOfStock(skus) => Self::OutOfStock(skus),
            StockError::UnknownSkus(skus) => Self::UnknownSkus(skus),
            StockError::NotFound => Self::NotFound("no such reservation"),
            StockError::Mismatch(id) => {
                Self::Conflict(format!("reservation {id} exists with different items"))
            }
            StockError::WrongState(s) => {
                Self::Conflict(format!("the reservation is already {s:?}").to_lowercase())
            }
            StockError::Db(e) => e.into(),
        }
    }
}

impl From<sqlx::Error> for InventoryError {
    fn from(e: sqlx::Error) -> Self {
        if mall_common::db::is_unavailable(&e) {
            Self::Unavailable(e.to_string())
        } else {
            Self::Internal(e.to_string())
        }
    }
}

impl IntoResponse for InventoryError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(cause) => ApiError::internal(cause).into_response(),
            Self::Unavailable(cause) => ApiError::unavailable(cause).into_response(),
            // Clients need the SKUs that are short, not just the code.
            Self::OutOfStock(skus) | Self::UnknownSkus(skus) => {
                let body = serde_json::json!({
                    "code": self.code(),
                    "message": self.to_string(),
                    "skus": skus,
                });
                (self.status(), axum::Json(body)).into_response()
            }
            _ => {
                let body = ErrorBody {
                    code: self.code().to_owned(),
                    message: self.to_string(),
                };
                (self.status(), axum::Json(body)).into_response()
            }
        }
    }
}
