//! The OpenAPI document, generated from the handlers' annotations.

use mall_common::http::Json;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mall-product",
        description = "Catalog: categories, SPUs, SKUs, search"
    ),
    paths(
        super::catalog::categories,
        super::catalog::list,
        super::catalog::spu,
        super::catalog::sku,
        super::admin::create,
        super::admin::patch,
        super::admin::delist,
        super::internal::prices,
    )
)]
struct ApiDoc;

/// `GET /openapi.json`.
pub(super) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
