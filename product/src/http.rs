//! The routes of mall-product; health, readiness, metrics, the JSON 404 fallback and the
//! middleware stack are added around them by `mall-common`.

mod admin;
mod catalog;
mod internal;
mod openapi;

use axum::Router;
use axum::routing::{get, patch, post};

use crate::state::AppState;

/// The service's own routes.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/categories", get(catalog::categories))
        .route("/api/products", get(catalog::list))
        .route("/api/products/{spu_id}", get(catalog::spu))
        .route("/api/skus/{sku_id}", get(catalog::sku))
        .route("/admin/products", post(admin::create))
        .route("/admin/skus/{sku_id}", patch(admin::patch).delete(admin::delist))
        .route("/internal/prices", post(internal::prices))
        .route("/openapi.json", get(openapi::document))
        .with_state(state)
}
