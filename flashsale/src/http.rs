//! The routes of mall-flashsale; health, readiness, metrics, the JSON 404 fallback and the
//! middleware stack are added around them by `mall-common`.
//!
//! The purchase path: the in-process sold-out flag (answered before any HMAC, see `purchase`),
//! identity and token checks (HMAC), the in-flight limit, the Redis breaker, ONE script call,
//! and only for an admission one Postgres statement booking it (so at most one write per unit
//! sold; every other answer touches no database).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use http::{HeaderValue, StatusCode, header};
use mall_common::amqp::Amqp;
use mall_common::db::Db;
use mall_common::error::{ApiError, ValidationError};
use mall_common::http::{Json, Path};
use mall_common::identity::{RequireAdmin, RequireUser};
use mall_common::peer::Peer;
use mall_common::redis::Redis;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::config::FlashSettings;
use crate::domain::{self, NewSession, Purchase};
use crate::inventory::{self, Reserved};
use crate::live::{Breaker, Catalog, Check, Permit, SoldOut, Uncertain};
use crate::store::admission::{self, Admission, Admitted, Attempt, ItemKeys};
use crate::store::book::{self, Recorded};
use crate::store::replica::Replication;
use crate::store::sessions::{self, Session};

/// How long one admission may wait on Redis before the buyer is told to retry (with the same
/// request id, which then gets the first answer if the script did run).
const ADMIT_TIMEOUT: Duration = Duration::from_millis(800);
/// How long booking an admission in Postgres may take before the buyer is told to retry (the
/// retry repeats the request id, gets the same order and books it).
const BOOK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers and the background tasks share.
pub struct Shared {
    /// Sessions and the book of admissions.
    pub db: Db,
    /// Live counters, catalog.
    pub redis: Redis,
    /// The hand-off's broker.
    pub amqp: Amqp,
    /// Inventory instances.
    pub inventory: Peer,
    /// The sale's settings.
    pub flash: FlashSettings,
    /// What an admission waits for before its 202 (from `flash` and the Redis in use).
    pub replica_acks: crate::store::replica::ReplicaAcks,
    /// Verifies the gateway-asserted identity of purchases.
    pub identity: mall_common::identity::IdentityKey,
    /// Signs and verifies purchase tokens (`MALL_FLASHSALE_TOKEN_SECRET`, prepared once).
    pub token_key: domain::TokenKey,
    /// The in-memory catalog.
    pub catalog: Catalog,
    /// Sold-out flags.
    pub sold_out: SoldOut,
    /// Purchases whose retries must reach Redis even when sold out.
    pub uncertain: Uncertain,
    /// The Redis breaker of the purchase path.
    pub breaker: Breaker,
    /// Purchases in flight.
    pub permits: Semaphore,
    /// Stops background waits at shutdown.
    pub cancel: CancellationToken,
    /// `flashsale_sold_out_answers_total`.
    pub sold_out_answers: metrics::Counter,
    /// `flashsale_rejections_total{reason="sold_out"}`.
    pub sold_out_rejections: metrics::Counter,
}

/// The service's own routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/admin/flashsale/sessions", post(create_session))
        .route("/admin/flashsale/sessions/{session_id}", get(show_session))
        .route("/api/flashsale/sessions", get(browse))
        .route(
            "/api/flashsale/sessions/{session_id}/items/{sku_id}/token",
            post(token),
        )
        .route("/api/flashsale/purchase", post(purchase_route))
        .route("/openapi.json", get(openapi))
        .with_state(shared)
}

fn validation(e: ValidationError, status: StatusCode) -> ApiError {
    ApiError::new(status, "validation_failed", e.to_string())
}

fn conflict(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, code, message)
}

/// Create a session: every item's quantity is reserved at inventory first, or nothing is.
#[utoipa::path(post, path = "/admin/flashsale/sessions", tag = "admin", request_body = NewSession,
    responses((status = 201, body = Session),
              (status = 409, description = "out_of_stock (with `skus`): inventory cannot hold the quantity; nothing is reserved"),
              (status = 422, description = "validation_failed, unknown_sku (with `skus`)"),
              (status = 503, description = "unavailable: inventory or Postgres is down; nothing is reserved")))]
async fn create_session(
    State(shared): State<Arc<Shared>>,
    RequireAdmin(who): RequireAdmin,
    Json(body): Json<NewSession>,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let new = body
        .validated(now)
        .map_err(|e| validation(e, StatusCode::UNPROCESSABLE_ENTITY))?;
    let session = sessions::begin(&shared.db, &new, &who.user_id)
        .await
        .map_err(ApiError::unavailable)?;
    // The session's reservation must outlive every order carved from it.
    let ttl_secs = (session.ends_at - now).num_seconds().max(1) as u64
        + shared.flash.settle_after.as_secs()
        + shared.flash.key_tail.as_secs()
        + 3600;
    let (mut short, mut unknown, mut failure) = (Vec::new(), Vec::new(), None);
    for item in &session.items {
        let reference = format!("flashsale:{}:{}", session.session_id, item.sku_id);
        match inventory::reserve(
            &shared.inventory,
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
            if let Err(e) = inventory::release(&shared.inventory, item.reservation_id).await {
                tracing::warn!(error = %e, "release after a failed creation did not go through; the job retries");
                return Err(ApiError::unavailable(e));
            }
        }
        let _ = sessions::finish_creating(&shared.db, session.session_id, "failed").await;
        let (status, code, skus) = match failure {
            Some(e) => return Err(ApiError::unavailable(e)),
            None if !unknown.is_empty() => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_sku", unknown),
            None => (StatusCode::CONFLICT, "out_of_stock", short),
        };
        let body = json!({ "code": code, "message": format!("not enough stock for SKUs {skus:?}; nothing was reserved"), "skus": skus });
        return Ok((status, axum::Json(body)).into_response());
    }
    sessions::finish_creating(&shared.db, session.session_id, "active")
        .await
        .map_err(ApiError::unavailable)?;
    let session = sessions::session(&shared.db, session.session_id)
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::internal("session vanished"))?;
    metrics::counter!("flashsale_sessions_created_total").increment(1);
    Ok((StatusCode::CREATED, axum::Json(session)).into_response())
}

/// A session as recorded, with each item's live numbers from Redis (admin).
#[utoipa::path(get, path = "/admin/flashsale/sessions/{session_id}", tag = "admin",
    params(("session_id" = i64, Path, description = "session id")),
    responses((status = 200, description = "the session with `remaining`, `admitted` and `handed_off` per item"),
              (status = 404, description = "not_found")))]
async fn show_session(
    State(shared): State<Arc<Shared>>,
    RequireAdmin(_): RequireAdmin,
    Path(id): Path<i64>,
) -> Result<axum::Json<Value>, ApiError> {
    let session = sessions::session(&shared.db, id)
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::not_found("no such session"))?;
    let mut items = Vec::new();
    for item in &session.items {
        let keys = ItemKeys::new(&shared.redis, id, item.sku_id);
        let left = admission::stock_left(&shared.redis, std::slice::from_ref(&keys))
            .await
            .map_err(ApiError::unavailable)?;
        let (booked, handed) = book::counts(&shared.db, id, item.sku_id)
            .await
            .map_err(ApiError::unavailable)?;
        let mut v = serde_json::to_value(item).expect("json");
        v["remaining"] = json!(left.first().copied().flatten());
        v["admitted"] = json!(booked);
        v["handed_off"] = json!(handed);
        items.push(v);
    }
    let mut v = serde_json::to_value(&session).expect("json");
    v["items"] = Value::Array(items);
    Ok(axum::Json(v))
}

/// Current and upcoming sessions with remaining quantities, from memory (refreshed from Redis).
#[utoipa::path(get, path = "/api/flashsale/sessions", tag = "flashsale",
    responses((status = 200, description = "`{sessions: [{session_id, starts_at, ends_at, status, items: [{sku_id, price_cents, quantity, per_user_limit, remaining}]}]}`")))]
async fn browse(State(shared): State<Arc<Shared>>) -> Response {
    let body = shared.catalog.get().public.clone();
    let mut res = body.into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn running_item(session: Option<&Session>, sku: i64, now_ms: i64) -> Result<&Session, ApiError> {
    let s = session.ok_or_else(|| ApiError::not_found("no such session"))?;
    if s.item(sku).is_none() {
        return Err(ApiError::not_found("the session does not sell this SKU"));
    }
    if now_ms < s.starts_ms() {
        return Err(conflict("not_started", "the session has not started"));
    }
    if now_ms >= s.ends_ms() {
        return Err(conflict("ended", "the session has ended"));
    }
    Ok(s)
}

/// A purchase token for the caller, only while the session runs.
#[utoipa::path(post, path = "/api/flashsale/sessions/{session_id}/items/{sku_id}/token", tag = "flashsale", security(("bearer" = [])),
    params(("session_id" = i64, Path, description = "session id"), ("sku_id" = i64, Path, description = "SKU id")),
    responses((status = 200, description = "`{token, expires_at}`"), (status = 401, description = "unauthorized"),
              (status = 404, description = "not_found"), (status = 409, description = "not_started, ended")))]
async fn token(
    State(shared): State<Arc<Shared>>,
    RequireUser(who): RequireUser,
    Path((session_id, sku_id)): Path<(i64, i64)>,
) -> Result<axum::Json<Value>, ApiError> {
    let now_ms = Utc::now().timestamp_millis();
    let snapshot = shared.catalog.get();
    let s = running_item(snapshot.session(session_id), sku_id, now_ms)?;
    let ttl_ms = shared.flash.token_ttl.as_millis() as i64;
    let exp_ms = (now_ms + ttl_ms).min(s.ends_ms());
    let token = shared.token_key.sign(&who.user_id, session_id, sku_id, exp_ms);
    let expires_at = chrono::DateTime::from_timestamp_millis(exp_ms).unwrap_or_default();
    Ok(axum::Json(json!({ "token": token, "expires_at": expires_at })))
}

/// The body of 409 `sold_out`, the same bytes `ApiError` writes for it, kept ready: late buyers
/// of a sold-out item are most of a flash sale's requests.
const SOLD_OUT_BODY: &str = r#"{"code":"sold_out","message":"sold out"}"#;

/// 409 `sold_out` (from the in-process flag or the script), counted with a handle looked up once.
fn sold_out(shared: &Shared) -> Response {
    shared.sold_out_rejections.increment(1);
    let mut res = Response::new(axum::body::Body::from(SOLD_OUT_BODY));
    *res.status_mut() = StatusCode::CONFLICT;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// 202: the order id the buyer polls.
#[derive(serde::Serialize)]
struct Accepted<'a> {
    order_id: &'a str,
}

fn accepted(order_id: &str) -> Response {
    (StatusCode::ACCEPTED, axum::Json(Accepted { order_id })).into_response()
}

fn reject(reason: &'static str, e: ApiError) -> ApiError {
    metrics::counter!("flashsale_rejections_total", "reason" => reason).increment(1);
    e
}

/// 503 `code` (also the rejection's reason), which the buyer retries in a second.
fn retry_soon(code: &'static str, message: &'static str) -> ApiError {
    reject(
        code,
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).with_retry_after(1),
    )
}

/// 503 `not_ready` while an item is (re)loaded into Redis: every instance would answer the
/// same, so it is marked a shared outage.
fn not_ready(message: &'static str) -> ApiError {
    retry_soon("not_ready", message).as_dependency_outage()
}

/// The request body in one piece, through axum's extractor (a body over the stack's limit is
/// its 413).
async fn whole_body(body: axum::body::Body) -> Result<Bytes, Response> {
    Bytes::from_request(axum::extract::Request::new(body), &())
        .await
        .map_err(IntoResponse::into_response)
}

/// `POST /api/flashsale/purchase`: the handler inside the request's server span.
async fn purchase_route(State(shared): State<Arc<Shared>>, req: axum::extract::Request) -> Response {
    let parent = tracing::Span::current().context();
    purchase(&shared, req, &parent)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Buy: one Lua script decides. 202 `{order_id}`; poll `GET /api/orders/{order_id}`.
#[utoipa::path(post, path = "/api/flashsale/purchase", tag = "flashsale", security(("bearer" = [])), request_body = Purchase,
    responses((status = 202, description = "`{order_id}`: admitted; the order is created asynchronously"),
              (status = 400, description = "malformed_json, invalid_body, validation_failed"),
              (status = 401, description = "unauthorized"), (status = 403, description = "invalid_token"),
              (status = 409, description = "sold_out, limit_exceeded, not_started, ended"),
              (status = 503, description = "overloaded, unavailable (with Retry-After)")))]
///
/// `parent` is the request's server span, the admission span's parent.
pub(crate) async fn purchase(
    shared: &Arc<Shared>,
    req: axum::extract::Request,
    parent: &opentelemetry::Context,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let body = match whole_body(body).await {
        Ok(body) => body,
        Err(rejection) => return Ok(rejection),
    };
    let parsed = Purchase::from_json(&body)
        .map_err(|e| {
            let code = if e.is_data() {
                "invalid_body"
            } else {
                "malformed_json"
            };
            reject("bad_request", ApiError::bad_request(code, e.to_string()))
        })
        .and_then(|p| {
            p.validated()
                .map_err(|e| reject("bad_request", validation(e, StatusCode::BAD_REQUEST)))
        });
    // Late buyers of a sold-out item are answered before the two HMAC checks: the answer is
    // public (browsing shows 0 left), changes nothing, and is what a verified buyer gets too.
    // The claimed user id is only used to let a retry of an uncertain purchase through to the
    // full path, which verifies it (the signature covers the user id, so the verified user is the
    // claimed one and the flag need not be checked again below).
    // When the flag has run out, this purchase starts the re-check of the stock and is answered
    // from memory like the others (see `SoldOut`).
    if let Ok(p) = &parsed {
        let check = shared.sold_out.check(p.session_id, p.sku_id);
        if check == Check::Recheck {
            tokio::spawn(recheck(shared.clone(), p.session_id, p.sku_id));
        }
        if check != Check::Open {
            let retry_of_uncertain = shared.uncertain.may_hold_any()
                && mall_common::identity::claimed_user(&parts.headers)
                    .is_some_and(|user| shared.uncertain.contains(user, &p.request_id));
            if !retry_of_uncertain {
                shared.sold_out_answers.increment(1);
                return Ok(sold_out(shared));
            }
        }
    }
    let who = mall_common::identity::require_user(&shared.identity, &parts.headers)?;
    let p = parsed?;
    let now_ms = Utc::now().timestamp_millis();
    if !shared
        .token_key
        .verify(&p.token, &who.user_id, p.session_id, p.sku_id, now_ms)
    {
        return Err(reject(
            "invalid_token",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "invalid_token",
                "no valid purchase token for this user, session and SKU",
            ),
        ));
    }
    // Boxed: the admission's future (the script call, its timeout) is most of this one's size,
    // which late buyers, who never get here, would carry too.
    Box::pin(admit(shared, &who.user_id, &p, now_ms, parent)).await
}

/// The admission of a verified purchase: the in-flight limit, the breaker, then the script.
async fn admit(
    shared: &Arc<Shared>,
    user_id: &str,
    p: &Purchase<'_>,
    now_ms: i64,
    parent: &opentelemetry::Context,
) -> Result<Response, ApiError> {
    let Ok(_permit) = shared.permits.try_acquire() else {
        return Err(retry_soon("overloaded", "too many purchases in flight; retry"));
    };
    let permit = shared.breaker.permit();
    if permit == Permit::Open {
        return Err(retry_soon("unavailable", "the sale's store is failing; retry"));
    }

    let span = tracing::info_span!(
        "flashsale.admit",
        session_id = p.session_id,
        sku_id = p.sku_id,
        quantity = p.quantity,
        result = tracing::field::Empty,
        left = tracing::field::Empty,
    );
    let _ = span.set_parent(parent.clone());
    let order_id = Uuid::now_v7().to_string();
    let keys = shared
        .catalog
        .get()
        .item_keys(&shared.redis, p.session_id, p.sku_id);
    let attempt = Attempt {
        user_id,
        request_id: &p.request_id,
        quantity: p.quantity,
        now_ms,
        order_id: &order_id,
    };
    // The span is open from here until the answer and records the verdict; it is not entered
    // on every poll (nothing inside logs), which cost an enter and exit per poll in every layer.
    let outcome = tokio::time::timeout(
        ADMIT_TIMEOUT,
        admission::admit_with(&shared.redis, &keys, attempt, shared.replica_acks),
    )
    .await;
    let verdict = match outcome {
        Ok(Ok(v)) => {
            shared.breaker.record(permit, true);
            v
        }
        Ok(Err(e)) => {
            shared.breaker.record(permit, false);
            // The script may have run (an error after sending, or an answer this build does
            // not know): its retries must reach it, not the sold-out flag.
            if matches!(
                e,
                mall_common::redis::RedisError::Command(_) | mall_common::redis::RedisError::Reply(_)
            ) {
                shared.uncertain.add(user_id, &p.request_id);
            }
            span.record("result", "redis_error");
            return Err(reject("unavailable", ApiError::unavailable(e)));
        }
        Err(_) => {
            shared.breaker.record(permit, false);
            shared.uncertain.add(user_id, &p.request_id);
            span.record("result", "redis_timeout");
            return Err(reject(
                "unavailable",
                ApiError::unavailable("Redis did not answer in time"),
            ));
        }
    };
    let result = match &verdict {
        Admission::Admitted(_) => "admitted",
        Admission::Repeat(_) => "repeat",
        Admission::NotWarmed => "not_warmed",
        Admission::NotStarted => "not_started",
        Admission::Ended => "ended",
        Admission::SoldOut { .. } => "sold_out",
        Admission::LimitExceeded => "limit_exceeded",
        Admission::BadQuantity => "bad_quantity",
    };
    span.record("result", result);
    match verdict {
        Admission::Admitted(a) => {
            span.record("left", a.left);
            let answer = book_admission(shared, user_id, p, &a, &keys, &span).await;
            if answer.is_ok() {
                metrics::counter!("flashsale_admissions_total").increment(1);
            }
            shared.sold_out.learn(p.session_id, p.sku_id, a.left);
            answer
        }
        Admission::Repeat(a) if a.booked => Ok(accepted(&a.order_id)),
        Admission::Repeat(a) => book_admission(shared, user_id, p, &a, &keys, &span).await,
        Admission::SoldOut { left } => {
            shared.sold_out.learn(p.session_id, p.sku_id, left);
            shared.uncertain.resolve(user_id, &p.request_id);
            Ok(sold_out(shared))
        }
        Admission::LimitExceeded => Err(reject(
            "limit_exceeded",
            conflict("limit_exceeded", "this would exceed the per-user limit"),
        )),
        Admission::NotStarted => Err(reject(
            "not_started",
            conflict("not_started", "the session has not started"),
        )),
        Admission::Ended => Err(reject("ended", conflict("ended", "the session has ended"))),
        Admission::NotWarmed => Err(not_ready("the session is being loaded; retry")),
        Admission::BadQuantity => Err(reject(
            "bad_request",
            ApiError::bad_request(
                "validation_failed",
                "quantity: must be a positive number of units",
            ),
        )),
    }
}

/// Books what the script admitted (see [`book`]); 202 once it is committed. A repeat not yet
/// marked booked is booked again (a no-op if its first attempt got that far: that attempt may
/// have failed in between).
async fn book_admission(
    shared: &Shared,
    user_id: &str,
    p: &Purchase<'_>,
    a: &Admitted,
    keys: &Arc<ItemKeys>,
    span: &tracing::Span,
) -> Result<Response, ApiError> {
    match a.replication {
        Replication::Acked | Replication::NotAsked => {}
        Replication::NoReplica => metrics::counter!("flashsale_unreplicated_admissions_total").increment(1),
        Replication::Lagging => {
            // Not booked, so not promised: the retry with this request id reaches the script
            // again (its first answer) and waits for the replica once more.
            shared.uncertain.add(user_id, &p.request_id);
            span.record("result", "replica_lagging");
            return Err(retry_soon(
                "unavailable",
                "the purchase is not yet safe on a Redis replica; retry",
            ));
        }
    }
    let order_id = Uuid::parse_str(&a.order_id)
        .map_err(|_| ApiError::internal("the admission script returned a malformed order id"))?;
    let item = match shared
        .catalog
        .get()
        .session(p.session_id)
        .and_then(|s| s.item(p.sku_id))
    {
        Some(i) => (i.price_cents, i.reservation_id),
        // A session loaded since this instance's last refresh.
        None => {
            let s = sessions::session(&shared.db, p.session_id)
                .await
                .map_err(ApiError::unavailable)?
                .ok_or_else(|| ApiError::internal("an admitted session is not in the database"))?;
            let i = s
                .item(p.sku_id)
                .ok_or_else(|| ApiError::internal("an admitted item is not in the database"))?;
            (i.price_cents, i.reservation_id)
        }
    };
    let entry = book::Entry {
        session_id: p.session_id,
        sku_id: p.sku_id,
        order_id,
        user_id,
        request_id: &p.request_id,
        quantity: a.quantity,
        price_cents: item.0,
        reservation_id: item.1,
        admitted_at: Utc::now(),
        epoch: a.epoch,
    };
    // In the admission's span, so the event's trace context (taken from the current span)
    // continues the buyer's trace through the hand-off.
    let written = tokio::time::timeout(
        BOOK_TIMEOUT,
        book::record(&shared.db, &entry).instrument(span.clone()),
    )
    .await;
    match written {
        Ok(Ok(Recorded::New | Recorded::Already)) => {
            // Best effort and off the buyer's wait: unmarked, a repeat only books again (a no-op).
            let (redis, keys, a2) = (shared.redis.clone(), keys.clone(), a.clone());
            let (user, request) = (user_id.to_owned(), p.request_id.to_string());
            tokio::spawn(async move {
                if let Err(e) = admission::mark_booked(&redis, &keys, &user, &request, &a2).await {
                    tracing::debug!(error = %e, "could not mark the admission booked");
                }
            });
            Ok(accepted(&a.order_id))
        }
        Ok(Ok(Recorded::Stale)) => {
            span.record("result", "reloading");
            Err(not_ready("the session is being reloaded; retry"))
        }
        failed => {
            // Redis admitted it: a retry with the same request id must reach the script (and
            // get this order), not the sold-out flag.
            shared.uncertain.add(user_id, &p.request_id);
            span.record("result", "book_failed");
            let e = match failed {
                Ok(Err(e)) => ApiError::unavailable(e),
                _ => ApiError::unavailable("the database did not answer in time"),
            };
            Err(reject("unavailable", e))
        }
    }
}

/// Reads the stock of an item whose sold-out flag ran out, and renews the flag (none left),
/// drops it (units came back, or the item is no longer loaded, which the script answers for),
/// or, when Redis does not answer in time, keeps the last answer for another ttl. No purchase
/// waits for it.
async fn recheck(shared: Arc<Shared>, session: i64, sku: i64) {
    // A flag being re-checked answers every purchase until the re-check ends, so one that ends
    // without an answer (a panic, its runtime stopping) renews it on the way out rather than
    // leaving it re-checking for ever.
    struct Unanswered<'a>(Option<&'a SoldOut>, i64, i64);
    impl Drop for Unanswered<'_> {
        fn drop(&mut self) {
            if let Some(flags) = self.0 {
                flags.renew(self.1, self.2);
            }
        }
    }
    let mut unanswered = Unanswered(Some(&shared.sold_out), session, sku);
    let keys = shared.catalog.get().item_keys(&shared.redis, session, sku);
    let read = tokio::time::timeout(
        ADMIT_TIMEOUT,
        admission::stock_left(&shared.redis, std::slice::from_ref(&*keys)),
    )
    .await;
    unanswered.0 = None;
    match read {
        Ok(Ok(left)) => match left.first().copied().flatten() {
            Some(left) => shared.sold_out.learn(session, sku, left),
            None => shared.sold_out.clear(session, sku),
        },
        Ok(Err(e)) => {
            tracing::warn!(session, sku, error = %e, "sold-out re-check failed; the flag stands");
            shared.sold_out.renew(session, sku);
        }
        Err(_) => {
            tracing::warn!(session, sku, "sold-out re-check timed out; the flag stands");
            shared.sold_out.renew(session, sku);
        }
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "mall-flashsale",
        description = "Flash-sale sessions, purchase tokens and admission"
    ),
    paths(create_session, show_session, browse, token, purchase)
)]
struct ApiDoc;

/// `GET /openapi.json`: generated from the handlers, completed with the answers every route
/// shares.
async fn openapi() -> axum::Json<serde_json::Value> {
    use utoipa::OpenApi;
    axum::Json(mall_common::http::openapi::complete(&ApiDoc::openapi()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_sold_out_body_is_what_api_error_writes() {
        let written: mall_common::error::ErrorBody = serde_json::from_str(SOLD_OUT_BODY).expect("json");
        let made = serde_json::to_value(mall_common::error::ErrorBody {
            code: "sold_out".into(),
            message: "sold out".into(),
        })
        .expect("json");
        assert_eq!(serde_json::to_value(written).expect("json"), made);
        assert_eq!(serde_json::to_string(&made).expect("json"), SOLD_OUT_BODY);
    }
}
