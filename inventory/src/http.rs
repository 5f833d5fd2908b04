//! The routes of mall-inventory: the public stock read, admin stock intake and view, and the
//! internal reservation endpoints for the order and flash-sale services (never routed by the
//! gateway). Health, readiness, metrics and the middleware stack come from `mall-common`.

mod openapi;
mod reservations;
mod stock;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

/// The service's own routes.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/stock/{sku_id}", get(stock::public_stock))
        .route("/admin/stock/{sku_id}", get(stock::admin_stock))
        .route("/admin/stock/{sku_id}/receive", post(stock::receive))
        .route("/internal/reservations", post(reservations::reserve))
        .route("/internal/reservations/{id}", get(reservations::show))
        .route("/internal/reservations/{id}/confirm", post(reservations::confirm))
        .route("/internal/reservations/{id}/release", post(reservations::release))
        .route("/internal/reservations/{id}/carve", post(reservations::carve))
        .route("/openapi.json", get(openapi::document))
        .with_state(state)
}
