//! The cart: a Redis hash per user (`mall:order:cart:{user}`), read back with current prices and
//! availability.

use axum::extract::State;
use http::StatusCode;
use mall_common::http::{Json, Path};
use mall_common::identity::RequireUser;
use mall_common::redis::client;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::{self, Item};
use crate::error::OrderError;
use crate::state::AppState;

fn key(state: &AppState, user: &str) -> String {
    state.redis.key(&format!("order:cart:{{{user}}}"))
}

/// The cart's items (for checkout from the cart).
pub(super) async fn items(state: &AppState, user: &str) -> Result<Vec<Item>, OrderError> {
    let mut conn = state
        .redis
        .conn()
        .await
        .map_err(|e| OrderError::Internal(e.to_string()))?;
    let pairs: Vec<(i64, i64)> = client::cmd("HGETALL")
        .arg(key(state, user))
        .query_async(&mut *conn)
        .await
        .map_err(|e| OrderError::Internal(e.to_string()))?;
    if pairs.is_empty() {
        return Err(OrderError::EmptyCart);
    }
    Ok(pairs
        .into_iter()
        .map(|(sku_id, quantity)| Item { sku_id, quantity })
        .collect())
}

/// Empties the cart after it became an order (best effort: a leftover cart is harmless).
pub(super) async fn clear(state: &AppState, user: &str) {
    if let Ok(mut conn) = state.redis.conn().await {
        let _: Result<i64, _> = client::cmd("DEL")
            .arg(key(state, user))
            .query_async(&mut *conn)
            .await;
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Quantity {
    quantity: i64,
}

/// Set a cart line.
#[utoipa::path(put, path = "/api/cart/items/{sku_id}", tag = "cart", security(("bearer" = [])), request_body = Quantity,
    params(("sku_id" = i64, Path, description = "SKU id")),
    responses((status = 204), (status = 422, description = "validation_failed")))]
/// `PUT /api/cart/items/{sku_id}` `{quantity}`: sets the line (1 to 99 units).
pub(super) async fn put(
    State(state): State<AppState>,
    RequireUser(who): RequireUser,
    Path(sku_id): Path<i64>,
    Json(q): Json<Quantity>,
) -> Result<StatusCode, OrderError> {
    domain::normalize(vec![Item {
        sku_id,
        quantity: q.quantity,
    }])?;
    let mut conn = state
        .redis
        .conn()
        .await
        .map_err(|e| OrderError::Internal(e.to_string()))?;
    let _: () = client::pipe()
        .cmd("HSET")
        .arg(key(&state, &who.user_id))
        .arg(sku_id)
        .arg(q.quantity)
        .ignore()
        .cmd("EXPIRE")
        .arg(key(&state, &who.user_id))
        .arg(30 * 24 * 3600)
        .ignore()
        .query_async(&mut *conn)
        .await
        .map_err(|e| OrderError::Internal(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a cart line.
#[utoipa::path(delete, path = "/api/cart/items/{sku_id}", tag = "cart", security(("bearer" = [])),
    params(("sku_id" = i64, Path, description = "SKU id")), responses((status = 204)))]
/// `DELETE /api/cart/items/{sku_id}`.
pub(super) async fn remove(
    State(state): State<AppState>,
    RequireUser(who): RequireUser,
    Path(sku_id): Path<i64>,
) -> Result<StatusCode, OrderError> {
    let mut conn = state
        .redis
        .conn()
        .await
        .map_err(|e| OrderError::Internal(e.to_string()))?;
    let _: i64 = client::cmd("HDEL")
        .arg(key(&state, &who.user_id))
        .arg(sku_id)
        .query_async(&mut *conn)
        .await
        .map_err(|e| OrderError::Internal(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

/// My cart with current prices and availability.
#[utoipa::path(get, path = "/api/cart", tag = "cart", security(("bearer" = [])),
    responses((status = 200, description = "`{items: [{sku_id, quantity, price_cents, on_sale, available}], total_cents}`")))]
/// `GET /api/cart`: lines with current prices and availability.
pub(super) async fn show(
    State(state): State<AppState>,
    RequireUser(who): RequireUser,
) -> Result<Json<Value>, OrderError> {
    let lines = match items(&state, &who.user_id).await {
        Ok(lines) => lines,
        Err(OrderError::EmptyCart) => return Ok(Json(json!({ "items": [], "total_cents": 0 }))),
        Err(e) => return Err(e),
    };
    let skus: Vec<i64> = lines.iter().map(|l| l.sku_id).collect();
    let prices = state.peers.prices(&skus).await?;
    let mut out = Vec::with_capacity(lines.len());
    let mut total = 0;
    for line in lines {
        let price = prices.iter().find(|p| p.sku_id == line.sku_id);
        let on_sale = price.is_some_and(|p| p.status == "on_sale");
        let available = state.peers.available(line.sku_id).await?.unwrap_or(0);
        if let (Some(p), true) = (price, on_sale) {
            total += p.price_cents * line.quantity;
        }
        out.push(json!({
            "sku_id": line.sku_id,
            "quantity": line.quantity,
            "price_cents": price.map(|p| p.price_cents),
            "on_sale": on_sale,
            "available": available,
        }));
    }
    Ok(Json(json!({ "items": out, "total_cents": total })))
}
