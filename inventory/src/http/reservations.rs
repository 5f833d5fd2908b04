//! Reservations: the internal endpoints of the order and flash-sale services.

use axum::extract::State;
use http::StatusCode;
use mall_common::db::Db;
use mall_common::http::{Json, Path};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::domain::{Carve, NewReservation, ReservationStatus};
use crate::error::InventoryError;
use crate::store::{self, Reservation};

/// Reserve all items or none; idempotent by `reservation_id`.
#[utoipa::path(post, path = "/internal/reservations", tag = "internal", request_body = NewReservation,
    responses((status = 201, body = Reservation), (status = 200, body = Reservation, description = "a repeat"),
              (status = 409, description = "out_of_stock (with `skus`), conflict"), (status = 422, description = "validation_failed, unknown_sku")))]
pub(super) async fn reserve(
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
pub(super) async fn show(
    State(db): State<Db>,
    Path(id): Path<Uuid>,
) -> Result<Json<Reservation>, InventoryError> {
    Ok(Json(
        store::reservation(&db, id)
            .await?
            .ok_or(InventoryError::NotFound("no such reservation"))?,
    ))
}

pub(super) async fn settle(
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
pub(super) async fn confirm(
    State(db): State<Db>,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, InventoryError> {
    settle(&db, id, ReservationStatus::Confirmed, "confirmed by caller").await
}

/// Reserved -> available, once.
#[utoipa::path(post, path = "/internal/reservations/{id}/release", tag = "internal",
    params(("id" = Uuid, Path, description = "reservation id")),
    responses((status = 200, description = "`{reservation_id, status, changed}`"), (status = 404, description = "not_found"),
              (status = 409, description = "conflict: already sold")))]
pub(super) async fn release(
    State(db): State<Db>,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, InventoryError> {
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
pub(super) async fn carve(
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
