//! Sessions: created by an admin (their stock reserved at inventory first), browsed by
//! shoppers, and the purchase tokens of a running one.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use http::{HeaderValue, StatusCode, header};
use mall_common::http::{Json, Path};
use mall_common::identity::{RequireAdmin, RequireUser};
use serde_json::{Value, json};

use crate::domain::NewSession;
use crate::error::FlashError;
use crate::peers::{self, Reserved};
use crate::state::AppState;
use crate::store::admission::{self, ItemKeys};
use crate::store::book;
use crate::store::sessions::{self, Session};

/// Create a session: every item's quantity is reserved at inventory first, or nothing is.
#[utoipa::path(post, path = "/admin/flashsale/sessions", tag = "admin", request_body = NewSession,
    responses((status = 201, body = Session),
              (status = 409, description = "out_of_stock (with `skus`): inventory cannot hold the quantity; nothing is reserved"),
              (status = 422, description = "validation_failed, unknown_sku (with `skus`)"),
              (status = 503, description = "unavailable: inventory or Postgres is down; nothing is reserved")))]
pub(super) async fn create_session(
    State(state): State<Arc<AppState>>,
    RequireAdmin(who): RequireAdmin,
    Json(body): Json<NewSession>,
) -> Result<Response, FlashError> {
    let now = Utc::now();
    let new = body.validated(now).map_err(FlashError::InvalidSession)?;
    let session = sessions::begin(&state.db, &new, &who.user_id)
        .await
        .map_err(FlashError::unavailable)?;
    // The session's reservation must outlive every order carved from it.
    let ttl_secs = (session.ends_at - now).num_seconds().max(1) as u64
        + state.flash.settle_after.as_secs()
        + state.flash.key_tail.as_secs()
        + 3600;
    let (mut short, mut unknown, mut failure) = (Vec::new(), Vec::new(), None);
    for item in &session.items {
        let reference = format!("flashsale:{}:{}", session.session_id, item.sku_id);
        match peers::reserve(
            &state.inventory,
            item.reservation_id,
            &reference,
            item.sku_id,
            item.quantity,
            ttl_secs,
        )
        .await
        {
            Ok(Reserved::Held) => {}
            Ok(Reserved::OutOfStock) => short.push(item.sku_id),
            Ok(Reserved::UnknownSku) => unknown.push(item.sku_id),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if failure.is_some() || !short.is_empty() || !unknown.is_empty() {
        // All or nothing: give back whatever was reserved (an unknown id is fine to release).
        for item in &session.items {
            if let Err(e) = peers::release(&state.inventory, item.reservation_id).await {
                tracing::warn!(error = %e, "release after a failed creation did not go through; the job retries");
                return Err(FlashError::unavailable(e));
            }
        }
        let _ = sessions::finish_creating(&state.db, session.session_id, "failed").await;
        return Err(match failure {
            Some(e) => FlashError::unavailable(e),
            None if !unknown.is_empty() => FlashError::UnknownSku(unknown),
            None => FlashError::OutOfStock(short),
        });
    }
    sessions::finish_creating(&state.db, session.session_id, "active")
        .await
        .map_err(FlashError::unavailable)?;
    let session = sessions::session(&state.db, session.session_id)
        .await
        .map_err(FlashError::unavailable)?
        .ok_or_else(|| FlashError::Internal("session vanished".into()))?;
    metrics::counter!("flashsale_sessions_created_total").increment(1);
    Ok((StatusCode::CREATED, axum::Json(session)).into_response())
}

/// A session as recorded, with each item's live numbers from Redis (admin).
#[utoipa::path(get, path = "/admin/flashsale/sessions/{session_id}", tag = "admin",
    params(("session_id" = i64, Path, description = "session id")),
    responses((status = 200, description = "the session with `remaining`, `admitted` and `handed_off` per item"),
              (status = 404, description = "not_found")))]
pub(super) async fn show_session(
    State(state): State<Arc<AppState>>,
    RequireAdmin(_): RequireAdmin,
    Path(id): Path<i64>,
) -> Result<axum::Json<Value>, FlashError> {
    let session = sessions::session(&state.db, id)
        .await
        .map_err(FlashError::unavailable)?
        .ok_or(FlashError::NotFound("no such session"))?;
    let mut items = Vec::new();
    for item in &session.items {
        let keys = ItemKeys::new(&state.redis, id, item.sku_id);
        let left = admission::stock_left(&state.redis, std::slice::from_ref(&keys))
            .await
            .map_err(FlashError::unavailable)?;
        let counts = book::counts(&state.db, id, item.sku_id)
            .await
            .map_err(FlashError::unavailable)?;
        let mut v = serde_json::to_value(item).expect("json");
        v["remaining"] = json!(left.first().copied().flatten());
        v["admitted"] = json!(counts.booked);
        v["handed_off"] = json!(counts.handed);
        items.push(v);
    }
    let mut v = serde_json::to_value(&session).expect("json");
    v["items"] = Value::Array(items);
    Ok(axum::Json(v))
}

/// Current and upcoming sessions with remaining quantities, from memory (refreshed from Redis).
#[utoipa::path(get, path = "/api/flashsale/sessions", tag = "flashsale",
    responses((status = 200, description = "`{sessions: [{session_id, starts_at, ends_at, status, items: [{sku_id, price_cents, quantity, per_user_limit, remaining}]}]}`")))]
pub(super) async fn browse(State(state): State<Arc<AppState>>) -> Response {
    let body = state.on_sale.get().public.clone();
    let mut res = body.into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// The session of a purchase or token request, if it sells `sku` and runs at `now_ms`.
pub(super) fn running_item(session: Option<&Session>, sku: i64, now_ms: i64) -> Result<&Session, FlashError> {
    let s = session.ok_or(FlashError::NotFound("no such session"))?;
    if s.item(sku).is_none() {
        return Err(FlashError::NotFound("the session does not sell this SKU"));
    }
    if now_ms < s.starts_ms() {
        return Err(FlashError::NotStarted);
    }
    if now_ms >= s.ends_ms() {
        return Err(FlashError::Ended);
    }
    Ok(s)
}

/// A purchase token for the caller, only while the session runs.
#[utoipa::path(post, path = "/api/flashsale/sessions/{session_id}/items/{sku_id}/token", tag = "flashsale", security(("bearer" = [])),
    params(("session_id" = i64, Path, description = "session id"), ("sku_id" = i64, Path, description = "SKU id")),
    responses((status = 200, description = "`{token, expires_at}`"), (status = 401, description = "unauthorized"),
              (status = 404, description = "not_found"), (status = 409, description = "not_started, ended")))]
pub(super) async fn token(
    State(state): State<Arc<AppState>>,
    RequireUser(who): RequireUser,
    Path((session_id, sku_id)): Path<(i64, i64)>,
) -> Result<axum::Json<Value>, FlashError> {
    let now_ms = Utc::now().timestamp_millis();
    let snapshot = state.on_sale.get();
    let s = running_item(snapshot.session(session_id), sku_id, now_ms)?;
    let ttl_ms = state.flash.token_ttl.as_millis() as i64;
    let exp_ms = (now_ms + ttl_ms).min(s.ends_ms());
    let token = state.token_key.sign(&who.user_id, session_id, sku_id, exp_ms);
    let expires_at = chrono::DateTime::from_timestamp_millis(exp_ms).unwrap_or_default();
    Ok(axum::Json(json!({ "token": token, "expires_at": expires_at })))
}
