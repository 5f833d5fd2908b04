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
    ),
    components(schemas(crate::domain::Sort))
)]
struct ApiDoc;

/// `GET /openapi.json`, completed with the answers every route shares.
pub(super) async fn document() -> Json<serde_json::Value> {
    Json(mall_common::http::openapi::complete(&ApiDoc::openapi()))
}
