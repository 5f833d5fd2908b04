//! Stock: the public read, the admin view and intake.

use axum::extract::State;
use mall_common::db::Db;
use mall_common::http::{Json, Path};
use mall_common::identity::RequireAdmin;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::{self};
use crate::error::InventoryError;
use crate::state::AppState;
use crate::store::{self, Stock};

/// A SKU's available units.
#[utoipa::path(get, path = "/api/stock/{sku_id}", tag = "stock",
    params(("sku_id" = i64, Path, description = "SKU id")),
    responses((status = 200, description = "`{sku_id, available}`"), (status = 404, description = "not_found")))]
pub(super) async fn public_stock(
    State(db): State<Db>,
    Path(sku_id): Path<i64>,
) -> Result<Json<Value>, InventoryError> {
    let s = store::stock(&db, sku_id)
        .await?
        .ok_or(InventoryError::NotFound("no stock record for this SKU"))?;
    Ok(Json(json!({ "sku_id": s.sku_id, "available": s.available })))
}

/// The full numbers and the latest 50 ledger rows (admin).
#[utoipa::path(get, path = "/admin/stock/{sku_id}", tag = "admin",
    params(("sku_id" = i64, Path, description = "SKU id")),
    responses((status = 200, description = "`{stock, ledger}`"), (status = 404, description = "not_found"), (status = 403, description = "forbidden")))]
pub(super) async fn admin_stock(
    State(db): State<Db>,
    _admin: RequireAdmin,
    Path(sku_id): Path<i64>,
) -> Result<Json<Value>, InventoryError> {
    let s = store::stock(&db, sku_id)
        .await?
        .ok_or(InventoryError::NotFound("no stock record for this SKU"))?;
    let ledger = store::ledger_of(&db, sku_id, 50).await?;
    Ok(Json(json!({ "stock": s, "ledger": ledger })))
}

/// `POST /admin/stock/{sku_id}/receive`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Receive {
    quantity: i64,
    #[serde(default)]
    reason: Option<String>,
}

/// Receive units into stock (admin).
#[utoipa::path(post, path = "/admin/stock/{sku_id}/receive", tag = "admin", request_body = Receive,
    params(("sku_id" = i64, Path, description = "SKU id")),
    responses((status = 200, body = Stock),
              (status = 404, description = "unknown_sku: the catalog has no such SKU; nothing is written"),
              (status = 503, description = "unavailable: the product service or Postgres cannot be asked now; nothing is written")))]
pub(super) async fn receive(
    State(state): State<AppState>,
    RequireAdmin(who): RequireAdmin,
    Path(sku_id): Path<i64>,
    Json(body): Json<Receive>,
) -> Result<Json<Stock>, InventoryError> {
    let quantity = domain::quantity("quantity", body.quantity)?;
    let db = &state.db;
    // A SKU with a stock row was asked about before; only a first delivery asks the catalog.
    let known = sku_id > 0
        && (store::stock(db, sku_id).await?.is_some()
            || state
                .product
                .knows(sku_id)
                .await
                .map_err(|e| InventoryError::Unavailable(e.to_string()))?);
    if !known {
        return Err(InventoryError::UnknownSku(sku_id));
    }
    let reason = body
        .reason
        .unwrap_or_else(|| format!("received by user {}", who.user_id));
    Ok(Json(store::receive(db, sku_id, quantity, &reason).await?))
}
