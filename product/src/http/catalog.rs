//! Public reads.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use mall_common::http::{Json, Path, Query};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::domain::{SearchQuery, Sort};
use crate::error::ProductError;
use crate::store::{CacheKey, Catalog, Page};

fn json_body(body: Bytes) -> Response {
    ([(http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn cached(catalog: &Catalog, key: CacheKey) -> Result<Response, ProductError> {
    catalog
        .get(key)
        .await?
        .map(json_body)
        .ok_or(ProductError::NotFound)
}

/// The category tree.
#[utoipa::path(get, path = "/api/categories", tag = "catalog",
    responses((status = 200, description = "Three levels of categories", body = [crate::store::CategoryNode])))]
pub(super) async fn categories(State(catalog): State<Catalog>) -> Result<Response, ProductError> {
    cached(&catalog, CacheKey::Categories).await
}

/// One SKU (the hottest read).
#[utoipa::path(get, path = "/api/skus/{sku_id}", tag = "catalog",
    params(("sku_id" = i64, Path, description = "SKU id")),
    responses((status = 200, body = crate::store::SkuView), (status = 404, description = "not_found: unknown or delisted")))]
pub(super) async fn sku(
    State(catalog): State<Catalog>,
    Path(sku_id): Path<i64>,
) -> Result<Response, ProductError> {
    cached(&catalog, CacheKey::Sku(sku_id)).await
}

/// One SPU with its on-sale SKUs.
#[utoipa::path(get, path = "/api/products/{spu_id}", tag = "catalog",
    params(("spu_id" = i64, Path, description = "SPU id")),
    responses((status = 200, body = crate::store::SpuView), (status = 404, description = "not_found")))]
pub(super) async fn spu(
    State(catalog): State<Catalog>,
    Path(spu_id): Path<i64>,
) -> Result<Response, ProductError> {
    cached(&catalog, CacheKey::Spu(spu_id)).await
}

/// Listing parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    /// Full-text search (English stemming).
    q: Option<String>,
    /// A category; its descendants are included.
    category_id: Option<i64>,
    /// A brand.
    brand_id: Option<i64>,
    /// Lowest price, inclusive.
    min_price_cents: Option<i64>,
    /// Highest price, inclusive.
    max_price_cents: Option<i64>,
    /// `relevance` (default with q), `price_asc`, `price_desc`, `newest` (default without q).
    sort: Option<Sort>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// 1..=100, default 20.
    limit: Option<i64>,
}

/// Search and list SPUs.
#[utoipa::path(get, path = "/api/products", tag = "catalog", params(ListParams),
    responses((status = 200, body = Page), (status = 400, description = "invalid_query, invalid_cursor")))]
pub(super) async fn list(
    State(catalog): State<Catalog>,
    Query(p): Query<ListParams>,
) -> Result<Json<Page>, ProductError> {
    let query = SearchQuery::parse(
        p.q,
        p.category_id,
        p.brand_id,
        p.min_price_cents,
        p.max_price_cents,
        p.sort,
        p.cursor.as_deref(),
        p.limit,
    )?;
    Ok(Json(catalog.search(&query).await?))
}
