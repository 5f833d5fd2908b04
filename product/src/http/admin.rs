//! Catalog writes (admin only: the gateway-signed identity must carry the admin role).

use axum::extract::State;
use http::StatusCode;
use mall_common::http::{Json, Path};
use mall_common::identity::RequireAdmin;
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{NewProduct, SkuPatch, SkuStatus};
use crate::error::ProductError;
use crate::store::Catalog;

/// What a create returns.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Created {
    /// The new SPU.
    spu_id: i64,
    /// Its SKUs, in the order given.
    sku_ids: Vec<i64>,
}

/// Create an SPU with its SKUs.
#[utoipa::path(post, path = "/admin/products", tag = "admin", request_body = NewProduct,
    responses((status = 201, body = Created), (status = 422, description = "validation_failed, unknown_category, unknown_brand"),
              (status = 401, description = "unauthorized"), (status = 403, description = "forbidden")))]
pub(super) async fn create(
    State(catalog): State<Catalog>,
    _admin: RequireAdmin,
    Json(product): Json<NewProduct>,
) -> Result<(StatusCode, Json<Created>), ProductError> {
    product.validate()?;
    let (spu_id, sku_ids) = catalog.create(&product).await?;
    Ok((StatusCode::CREATED, Json(Created { spu_id, sku_ids })))
}

/// Change a SKU's price, title or status.
#[utoipa::path(patch, path = "/admin/skus/{sku_id}", tag = "admin", request_body = SkuPatch,
    params(("sku_id" = i64, Path, description = "SKU id")),
    responses((status = 204), (status = 404, description = "not_found"), (status = 422, description = "validation_failed")))]
pub(super) async fn patch(
    State(catalog): State<Catalog>,
    _admin: RequireAdmin,
    Path(sku_id): Path<i64>,
    Json(patch): Json<SkuPatch>,
) -> Result<StatusCode, ProductError> {
    patch.validate()?;
    catalog.patch(sku_id, &patch).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delist a SKU (it answers 404 from then on; history keeps it).
#[utoipa::path(delete, path = "/admin/skus/{sku_id}", tag = "admin",
    params(("sku_id" = i64, Path, description = "SKU id")),
    responses((status = 204), (status = 404, description = "not_found")))]
pub(super) async fn delist(
    State(catalog): State<Catalog>,
    _admin: RequireAdmin,
    Path(sku_id): Path<i64>,
) -> Result<StatusCode, ProductError> {
    let patch = SkuPatch {
        status: Some(SkuStatus::Delisted),
        ..SkuPatch::default()
    };
    catalog.patch(sku_id, &patch).await?;
    Ok(StatusCode::NO_CONTENT)
}
