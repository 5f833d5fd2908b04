//! `GET /openapi.json`.

use mall_common::http::Json;
use serde_json::Value;

use super::{reservations, stock};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "mall-inventory",
        description = "Stock, reservations and the stock ledger"
    ),
    paths(
        stock::public_stock,
        stock::admin_stock,
        stock::receive,
        reservations::reserve,
        reservations::show,
        reservations::confirm,
        reservations::release,
        reservations::carve
    )
)]
struct ApiDoc;

/// `GET /openapi.json`: generated from the handlers, completed with the answers every route
/// shares.
pub(super) async fn document() -> Json<Value> {
    Json(mall_common::http::openapi::complete(
        &<ApiDoc as utoipa::OpenApi>::openapi(),
    ))
}
