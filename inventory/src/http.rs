//! The routes of mall-inventory: the public stock read, admin stock intake and view, and the
//! internal reservation endpoints for the order and flash-sale services (never routed by the
//! gateway). Health, readiness, metrics and the middleware stack come from `mall-common`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::routing::{get, post};
use http::StatusCode;
use mall_common::db::Db;
use mall_common::http::{Json, Path};
use mall_common::identity::RequireAdmin;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::domain::{self, Carve, NewReservation, ReservationStatus};
use crate::error::InventoryError;
use crate::store::{self, Reservation, Stock};

/// What the handlers share; most need only the database.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) db: Db,
    pub(crate) catalog: Arc<Catalog>,
}

impl FromRef<AppState> for Db {
    fn from_ref(state: &AppState) -> Db {
        state.db.clone()
    }
}

/// The service's own routes.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/stock/{sku_id}", get(public_stock))
        .route("/admin/stock/{sku_id}", get(admin_stock))
        .route("/admin/stock/{sku_id}/receive", post(receive))
        .route("/internal/reservations", post(reserve))
        .route("/internal/reservations/{id}", get(show))
        .route("/internal/reservations/{id}/confirm", post(confirm))
        .route("/internal/reservations/{id}/release", post(release))
        .route("/internal/reservations/{id}/carve", post(carve))
        .route("/openapi.json", get(openapi))
        .with_state(state)
}

/// A SKU's available units.
#[utoipa::path(get, path = "/api/stock/{sku_id}", tag = "stock",
    params(("sku_id" = i64, Path, description = "SKU id")),
    responses((status = 200, description = "`{sku_id, available}`"), (status = 404, description = "not_found")))]
async fn public_stock(State(db): State<Db>, Path(sku_id): Path<i64>) -> Result<Json<Value>, InventoryError> {
    let s = store::stock(&db, sku_id)
        .await?
        .ok_or(InventoryError::NotFound("no stock record for this SKU"))?;
    Ok(Json(json!({ "sku_id": s.sku_id, "available": s.available })))
}

/// The full numbers and the latest 50 ledger rows (admin).
#[utoipa::path(get, path = "/admin/stock/{sku_id}", tag = "admin",
    params(("sku_id" = i64, Path, description = "SKU id")),
    responses((status = 200, description = "`{stock, ledger}`"), (status = 404, description = "not_found"), (status = 403, description = "forbidden")))]
async fn admin_stock(
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
struct Receive {
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
async fn receive(
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
                .catalog
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

/// Reserve all items or none; idempotent by `reservation_id`.
#[utoipa::path(post, path = "/internal/reservations", tag = "internal", request_body = NewReservation,
    responses((status = 201, body = Reservation), (status = 200, body = Reservation, description = "a repeat"),
              (status = 409, description = "out_of_stock (with `skus`), conflict"), (status = 422, description = "validation_failed, unknown_sku")))]
async fn reserve(
    State(db): State<Db>,
    Json(req): Json<NewReservation>,
) -> Result<(StatusCode, Json<Reservation>), InventoryError> {
    let req = req.normalized()?;
    let (reservation, created) = store::reserve(&db, &req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    metrics::counter!("inventory_reservations_total", "outcome" => if created { "created" } else { "repeated" })
        .increment(1);
    Ok((status, Json(reservation)))
}

/// A reservation.
#[utoipa::path(get, path = "/internal/reservations/{id}", tag = "internal",
    params(("id" = Uuid, Path, description = "reservation id")),
    responses((status = 200, body = Reservation), (status = 404, description = "not_found")))]
async fn show(State(db): State<Db>, Path(id): Path<Uuid>) -> Result<Json<Reservation>, InventoryError> {
    Ok(Json(
        store::reservation(&db, id)
            .await?
            .ok_or(InventoryError::NotFound("no such reservation"))?,
    ))
}

async fn settle(
    db: &Db,
    id: Uuid,
    to: ReservationStatus,
    reason: &str,
) -> Result<Json<Value>, InventoryError> {
    let moved = store::settle_now(db, id, to, reason).await?;
    Ok(Json(
        json!({ "reservation_id": id, "status": to, "changed": moved }),
    ))
}

/// Reserved -> sold, once.
#[utoipa::path(post, path = "/internal/reservations/{id}/confirm", tag = "internal",
    params(("id" = Uuid, Path, description = "reservation id")),
    responses((status = 200, description = "`{reservation_id, status, changed}`"), (status = 404, description = "not_found"),
              (status = 409, description = "conflict: already released")))]
async fn confirm(State(db): State<Db>, Path(id): Path<Uuid>) -> Result<Json<Value>, InventoryError> {
    settle(&db, id, ReservationStatus::Confirmed, "confirmed by caller").await
}

/// Reserved -> available, once.
#[utoipa::path(post, path = "/internal/reservations/{id}/release", tag = "internal",
    params(("id" = Uuid, Path, description = "reservation id")),
    responses((status = 200, description = "`{reservation_id, status, changed}`"), (status = 404, description = "not_found"),
              (status = 409, description = "conflict: already sold")))]
async fn release(State(db): State<Db>, Path(id): Path<Uuid>) -> Result<Json<Value>, InventoryError> {
    settle(&db, id, ReservationStatus::Released, "released by caller").await
}

/// Moves units of a flash-sale session's reservation into a flash order's own reservation;
/// idempotent by the new reservation's id.
#[utoipa::path(post, path = "/internal/reservations/{id}/carve", tag = "internal", request_body = Carve,
    params(("id" = Uuid, Path, description = "the session item's (parent) reservation id")),
    responses((status = 201, body = Reservation), (status = 200, body = Reservation, description = "a repeat"),
              (status = 404, description = "not_found: no such parent"),
              (status = 409, description = "out_of_stock, conflict: the parent holds fewer units (out_of_stock), is settled, or the id was used for other units"),
              (status = 422, description = "validation_failed")))]
async fn carve(
    State(db): State<Db>,
    Path(parent): Path<Uuid>,
    Json(req): Json<Carve>,
) -> Result<(StatusCode, Json<Reservation>), InventoryError> {
    let req = req.validated()?;
    let (reservation, created) = store::carve(&db, parent, &req).await?;
    metrics::counter!("inventory_carves_total", "outcome" => if created { "created" } else { "repeated" })
        .increment(1);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(reservation)))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "mall-inventory",
        description = "Stock, reservations and the stock ledger"
    ),
    paths(public_stock, admin_stock, receive, reserve, show, confirm, release, carve)
)]
struct ApiDoc;

/// `GET /openapi.json`: generated from the handlers, completed with the answers every route
/// shares.
async fn openapi() -> Json<Value> {
    Json(mall_common::http::openapi::complete(
        &<ApiDoc as utoipa::OpenApi>::openapi(),
    ))
}
