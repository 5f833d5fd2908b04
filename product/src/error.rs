//! The product service's errors and their wire form.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use mall_common::error::ApiError;

use crate::domain::product::QueryError;
use crate::domain::{CursorError, ValidationError};
use crate::store::WriteError;
use crate::store::cache::ReadError;

/// Everything a product request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ProductError {
    /// The SKU or SPU does not exist, or is delisted.
    #[error("no such product")]
    NotFound,
    /// The input broke a rule.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// A query parameter out of range.
    #[error("{0}")]
    InvalidQuery(ValidationError),
    /// A bad cursor.
    #[error(transparent)]
    Cursor(#[from] CursorError),
    /// The category is unknown or not a leaf.
    #[error("category {0} does not exist or is not a level-3 category")]
    UnknownCategory(i64),
    /// The brand is unknown.
    #[error("brand {0} does not exist")]
    UnknownBrand(i64),
    /// Redis is down and the database fallback is at its limit.
    #[error("the catalog is temporarily saturated")]
    Saturated,
    /// A dependency failed.
    #[error("{0}")]
    Internal(String),
    /// Postgres cannot be had right now (see `mall_common::db::is_unavailable`).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
}

impl ProductError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::InvalidQuery(_) | Self::Cursor(_) => StatusCode::BAD_REQUEST,
            Self::UnknownCategory(_) | Self::UnknownBrand(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Saturated => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Validation(_) => "validation_failed",
            Self::InvalidQuery(_) => "invalid_query",
            Self::Cursor(_) => "invalid_cursor",
            Self::UnknownCategory(_) => "unknown_category",
            Self::UnknownBrand(_) => "unknown_brand",
            Self::Saturated => "overloaded",
            Self::Internal(_) => "internal",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

impl From<QueryError> for ProductError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Invalid(v) => Self::InvalidQuery(v),
            QueryError::Cursor(c) => Self::Cursor(c),
        }
    }
}

impl From<ReadError> for ProductError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Saturated => Self::Saturated,
            ReadError::Db(e) => Self::Internal(e),
            ReadError::Unavailable(e) => Self::Unavailable(e),
        }
    }
}

impl From<WriteError> for ProductError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::UnknownCategory(id) => Self::UnknownCategory(id),
            WriteError::UnknownBrand(id) => Self::UnknownBrand(id),
            WriteError::NotFound => Self::NotFound,
            WriteError::Db(e) => e.into(),
        }
    }
}

impl From<sqlx::Error> for ProductError {
    fn from(e: sqlx::Error) -> Self {
        if mall_common::db::is_unavailable(&e) {
            Self::Unavailable(e.to_string())
        } else {
            Self::Internal(e.to_string())
        }
    }
}

impl IntoResponse for ProductError {
    fn into_response(self) -> Response {
        let err = match &self {
            Self::Internal(cause) => ApiError::internal(cause),
            Self::Unavailable(cause) => ApiError::unavailable(cause),
            Self::Saturated => {
                ApiError::new(self.status(), self.code(), self.to_string()).with_retry_after(1)
            }
            _ => ApiError::new(self.status(), self.code(), self.to_string()),
        };
        err.into_response()
    }
}
