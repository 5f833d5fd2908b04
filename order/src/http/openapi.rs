//! The OpenAPI document, generated from the handlers' annotations.

use mall_common::http::Json;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "mall-order", description = "Carts, checkout, orders, payments"),
    paths(
        super::orders::checkout,
        super::orders::list,
        super::orders::show,
        super::orders::cancel,
        super::cart::show,
        super::cart::put,
        super::cart::remove,
        super::payments::callback,
    )
)]
struct ApiDoc;

/// `GET /openapi.json`, completed with the answers every route shares.
pub(super) async fn document() -> Json<serde_json::Value> {
    Json(mall_common::http::openapi::complete(&ApiDoc::openapi()))
}
