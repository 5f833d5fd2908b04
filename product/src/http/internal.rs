//! Reads for other services (never routed by the gateway).

use axum::extract::State;
use mall_common::http::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::ValidationError;
use crate::error::ProductError;
use crate::store::{Catalog, Price};

/// `POST /internal/prices`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PricesRequest {
    /// Up to 500 SKU ids.
    sku_ids: Vec<i64>,
}

/// The answer: one entry per known id (unknown ids are absent).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PricesResponse {
    /// Current prices and status, straight from Postgres.
    prices: Vec<Price>,
}

/// Current prices of SKUs, for checkout.
#[utoipa::path(post, path = "/internal/prices", tag = "internal", request_body = PricesRequest,
    responses((status = 200, body = PricesResponse), (status = 422, description = "validation_failed")))]
pub(super) async fn prices(
    State(catalog): State<Catalog>,
    Json(req): Json<PricesRequest>,
) -> Result<Json<PricesResponse>, ProductError> {
    if req.sku_ids.is_empty() || req.sku_ids.len() > 500 {
        return Err(ValidationError {
            field: "sku_ids",
            reason: "between 1 and 500 ids",
        }
        .into());
    }
    Ok(Json(PricesResponse {
        prices: catalog.prices(&req.sku_ids).await?,
    }))
}
