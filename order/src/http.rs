//! The routes of mall-order; health, readiness, metrics and the middleware stack come from
//! `mall-common`.

mod cart;
mod openapi;
mod orders;
mod payments;

use axum::Router;
use axum::routing::{get, post, put};

use crate::state::AppState;

/// The service's own routes.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/orders", post(orders::checkout).get(orders::list))
        .route("/api/orders/{order_id}", get(orders::show))
        .route("/api/orders/{order_id}/cancel", post(orders::cancel))
        .route("/api/cart", get(cart::show))
        .route("/api/cart/items/{sku_id}", put(cart::put).delete(cart::remove))
        .route("/api/payments/callback", post(payments::callback))
        .route("/openapi.json", get(openapi::document))
        .with_state(state)
}
