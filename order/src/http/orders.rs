//! Checkout and the buyer's view of their orders.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode};
use mall_common::http::{Json, Path, Query};
use mall_common::identity::RequireUser;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::{self, CheckoutRequest, Item};
use crate::error::OrderError;
use crate::peers::Reserved;
use crate::state::AppState;
use crate::store::{self, Begin, Order};

fn summary(order: &Order) -> Value {
    json!({
        "order_id": order.order_id,
        "status": order.status,
        "total_cents": order.total_cents,
        "expires_at": order.expires_at,
    })
}

/// Place an order.
#[utoipa::path(post, path = "/api/orders", tag = "orders", security(("bearer" = [])), request_body = CheckoutRequest,
    params(("Idempotency-Key" = String, Header, description = "required; the same key and body return the same order")),
    responses((status = 201, description = "`{order_id, status, total_cents, expires_at}`"), (status = 200, description = "a repeat of the same key"),
              (status = 400, description = "missing_idempotency_key, malformed_json"), (status = 409, description = "out_of_stock, in_progress: out_of_stock with `skus`; in_progress (with `Retry-After`) while an earlier request with the key runs"),
              (status = 422, description = "validation_failed, unknown_sku, idempotency_key_reused, empty_cart")))]
/// `POST /api/orders` with `Idempotency-Key`: the same key and body return the same order,
/// never a second one; the same key with another body is 422.
pub(super) async fn checkout(
    State(state): State<AppState>,
    RequireUser(who): RequireUser,
    headers: HeaderMap,
    Json(req): Json<CheckoutRequest>,
) -> Result<Response, OrderError> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .ok_or(OrderError::MissingIdempotencyKey)?
        .to_owned();
    let user = who.user_id;
    let from_cart = req.from_cart;
    let items = match (req.items, req.from_cart) {
        (Some(items), false) => items,
        (None, true) => super::cart::items(&state, &user).await?,
        _ => {
            return Err(domain::ValidationError {
                field: "body",
                reason: "send either items or from_cart: true",
            }
            .into());
        }
    };
    let items = domain::normalize(items)?;
    let hash = domain::request_hash(&items);

    // A repeat while the first attempt runs is told so at once (409 in_progress, Retry-After),
    // rather than held until a gateway timeout answers for it.
    let order_id = match store::begin_checkout(&state.db, &user, &key, &hash).await? {
        Begin::Fresh(id) => id,
        Begin::Done(id) => return answer(&state, &user, id, StatusCode::OK).await,
        Begin::Failed(status, body) => {
            return Ok((
                StatusCode::from_u16(status).unwrap_or(StatusCode::CONFLICT),
                axum::Json(body),
            )
                .into_response());
        }
        Begin::Mismatch => return Err(OrderError::IdempotencyKeyReused),
        Begin::InProgress => return Err(OrderError::InProgress),
    };

    // Once stock may be reserved, the checkout runs to its end even if the client goes away:
    // a dropped request future would leave a reservation without an order (held until the
    // sweeper) and the key in progress. The client learns the outcome by repeating its key.
    let placed = {
        let (state, user, key, items) = (state.clone(), user.clone(), key.clone(), items.clone());
        tokio::spawn(async move { place(&state, &user, &key, order_id, &items).await }.in_current_span())
            .await
            .map_err(|e| OrderError::Internal(format!("checkout task: {e}")))?
    };
    match placed {
        Ok(()) => {
            metrics::counter!("orders_placed_total").increment(1);
            if from_cart {
                super::cart::clear(&state, &user).await;
            }
            answer(&state, &user, order_id, StatusCode::CREATED).await
        }
        Err(e @ (OrderError::OutOfStock(_) | OrderError::UnknownSkus(_))) => {
            // A definite answer: remember it for repeats of this key.
            store::fail_checkout(&state.db, &user, &key, e.status().as_u16(), &e.body()).await?;
            Err(e)
        }
        // Transient (a peer or the database): the key is freed at once and a repeat takes over
        // with the same order id (the reservation and the order are idempotent by it).
        Err(e) => {
            if let Err(release) = store::release_checkout(&state.db, &user, &key, order_id).await {
                tracing::warn!(error = %release, "could not free the idempotency key; its lease frees it");
            }
            Err(e)
        }
    }
}

async fn place(
    state: &AppState,
    user: &str,
    key: &str,
    order_id: Uuid,
    items: &[Item],
) -> Result<(), OrderError> {
    let skus: Vec<i64> = items.iter().map(|i| i.sku_id).collect();
    let prices = state.peers.prices(&skus).await?;
    let mut lines = Vec::with_capacity(items.len());
    let mut unknown = Vec::new();
    for item in items {
        match prices
            .iter()
            .find(|p| p.sku_id == item.sku_id && p.status == "on_sale")
        {
            Some(p) => lines.push((*item, p.price_cents)),
            None => unknown.push(item.sku_id),
        }
    }
    if !unknown.is_empty() {
        return Err(OrderError::UnknownSkus(unknown));
    }
    // The reservation outlives the payment window, so the order's own timeout (or its payment)
    // always settles it first; the inventory sweeper only catches orders never written.
    let ttl = state.order_ttl_secs + state.reservation_grace_secs;
    match state
        .peers
        .reserve(order_id, &order_id.to_string(), items, ttl)
        .await?
    {
        Reserved::Held(status) if status == "reserved" || status == "confirmed" => {}
        Reserved::Held(other) => return Err(OrderError::Internal(format!("reservation is {other}"))),
        Reserved::OutOfStock(skus) => return Err(OrderError::OutOfStock(skus)),
        Reserved::UnknownSkus(skus) => return Err(OrderError::UnknownSkus(skus)),
    }
    store::create_order(
        &state.db,
        user,
        key,
        order_id,
        &lines,
        state.order_ttl_secs,
        &state.timeout_queue,
    )
    .await?;
    Ok(())
}

async fn answer(state: &AppState, user: &str, id: Uuid, status: StatusCode) -> Result<Response, OrderError> {
    let order = store::order(&state.db, user, id)
        .await?
        .ok_or(OrderError::NotFound)?;
    Ok((status, axum::Json(summary(&order))).into_response())
}

/// One of my orders.
#[utoipa::path(get, path = "/api/orders/{order_id}", tag = "orders", security(("bearer" = [])),
    params(("order_id" = Uuid, Path, description = "order id")),
    responses((status = 200, body = Order), (status = 404, description = "not_found (also another user's order)")))]
/// `GET /api/orders/{order_id}`: owner only (another user's order is 404).
pub(super) async fn show(
    State(state): State<AppState>,
    RequireUser(who): RequireUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, OrderError> {
    Ok(Json(
        store::order(&state.db, &who.user_id, id)
            .await?
            .ok_or(OrderError::NotFound)?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    limit: Option<i64>,
    cursor: Option<String>,
}

/// My orders, newest first.
#[utoipa::path(get, path = "/api/orders", tag = "orders", security(("bearer" = [])),
    params(("limit" = Option<i64>, Query, description = "1..=100"), ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, description = "`{items: [Order], next_cursor}`"),
              (status = 400, description = "invalid_query: `limit` outside 1..=100, or a `cursor` not from a previous page")))]
/// `GET /api/orders?limit=&cursor=`: newest first.
pub(super) async fn list(
    State(state): State<AppState>,
    RequireUser(who): RequireUser,
    Query(p): Query<ListParams>,
) -> Result<Response, OrderError> {
    let limit = p.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(OrderError::InvalidQuery(domain::ValidationError {
            field: "limit",
            reason: "between 1 and 100",
        }));
    }
    let before = match p.cursor {
        None => None,
        Some(c) => Some(
            decode_cursor(&c).ok_or(OrderError::InvalidQuery(domain::ValidationError {
                field: "cursor",
                reason: "not a valid cursor",
            }))?,
        ),
    };
    let orders = store::orders(&state.db, &who.user_id, limit + 1, before).await?;
    let more = orders.len() as i64 > limit;
    let page = &orders[..orders.len().min(limit as usize)];
    let next = more
        .then(|| page.last().map(|o| encode_cursor(o.created_at, o.order_id)))
        .flatten();
    Ok(axum::Json(json!({ "items": page, "next_cursor": next })).into_response())
}

fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    mall_common::identity::to_hex(format!("{}|{id}", at.timestamp_micros()).as_bytes())
}

fn decode_cursor(raw: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let text = String::from_utf8(mall_common::identity::from_hex(raw)?).ok()?;
    let (micros, id) = text.split_once('|')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id.parse().ok()?,
    ))
}

/// Cancel my pending order.
#[utoipa::path(post, path = "/api/orders/{order_id}/cancel", tag = "orders", security(("bearer" = [])),
    params(("order_id" = Uuid, Path, description = "order id")),
    responses((status = 200, body = Order), (status = 404, description = "not_found"), (status = 409, description = "not_pending")))]
/// `POST /api/orders/{order_id}/cancel`: only while pending.
pub(super) async fn cancel(
    State(state): State<AppState>,
    RequireUser(who): RequireUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, OrderError> {
    match store::cancel_by_buyer(&state.db, &who.user_id, id).await? {
        None => Err(OrderError::NotFound),
        Some(false) => Err(OrderError::NotPending),
        Some(true) => Ok(Json(
            store::order(&state.db, &who.user_id, id)
                .await?
                .ok_or(OrderError::NotFound)?,
        )),
    }
}
