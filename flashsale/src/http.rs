//! The routes of mall-flashsale; health, readiness, metrics, the JSON 404 fallback and the
//! middleware stack are added around them by `mall-common`.

mod purchase;
mod sessions;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

/// The service's own routes.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/admin/flashsale/sessions", post(sessions::create_session))
        .route(
            "/admin/flashsale/sessions/{session_id}",
            get(sessions::show_session),
        )
        .route("/api/flashsale/sessions", get(sessions::browse))
        .route(
            "/api/flashsale/sessions/{session_id}/items/{sku_id}/token",
            post(sessions::token),
        )
        .route("/api/flashsale/purchase", post(purchase::purchase_route))
        .route("/openapi.json", get(openapi))
        .with_state(state)
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "mall-flashsale",
        description = "Flash-sale sessions, purchase tokens and admission"
    ),
    paths(
        sessions::create_session,
        sessions::show_session,
        sessions::browse,
        sessions::token,
        purchase::purchase
    )
)]
struct ApiDoc;

/// `GET /openapi.json`: generated from the handlers, completed with the answers every route
/// shares.
async fn openapi() -> axum::Json<serde_json::Value> {
    use utoipa::OpenApi;
    axum::Json(mall_common::http::openapi::complete(&ApiDoc::openapi()))
}
