//! `POST /api/flashsale/purchase`: the in-process sold-out flag (answered before any HMAC),
//! identity and token checks, the in-flight limit, the Redis breaker, ONE script call, and
//! only for an admission one Postgres statement booking it (so at most one write per unit
//! sold; every other answer touches no database).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, State};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use http::{HeaderValue, StatusCode, header};
use mall_common::redis::RedisError;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::domain::Purchase;
use crate::error::FlashError;
use crate::live::{Check, Permit, SoldOut};
use crate::state::AppState;
use crate::store::admission::{self, Admission, Admitted, Attempt, ItemKeys};
use crate::store::book::{self, Recorded};
use crate::store::replica::Replication;
use crate::store::sessions;

/// How long one admission may wait on Redis before the buyer is told to retry (with the same
/// request id, which then gets the first answer if the script did run).
const ADMIT_TIMEOUT: Duration = Duration::from_millis(800);
/// How long booking an admission in Postgres may take before the buyer is told to retry (the
/// retry repeats the request id, gets the same order and books it).
const BOOK_TIMEOUT: Duration = Duration::from_secs(2);

/// The body of 409 `sold_out`, the same bytes `ApiError` writes for it, kept ready: late buyers
/// of a sold-out item are most of a flash sale's requests.
const SOLD_OUT_BODY: &str = r#"{"code":"sold_out","message":"sold out"}"#;

/// 409 `sold_out` (from the in-process flag or the script), counted with a handle looked up once.
fn sold_out(state: &AppState) -> Response {
    state.sold_out_rejections.increment(1);
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

/// The request body in one piece, through axum's extractor (a body over the stack's limit is
/// its 413).
async fn whole_body(body: axum::body::Body) -> Result<Bytes, Response> {
    Bytes::from_request(axum::extract::Request::new(body), &())
        .await
        .map_err(IntoResponse::into_response)
}

/// `POST /api/flashsale/purchase`: the handler inside the request's server span; every error
/// that is the sale's verdict is counted in `flashsale_rejections_total`.
pub(super) async fn purchase_route(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
) -> Response {
    let parent = tracing::Span::current().context();
    purchase(&state, req, &parent).await.unwrap_or_else(|e| {
        if let Some(reason) = e.rejection() {
            metrics::counter!("flashsale_rejections_total", "reason" => reason).increment(1);
        }
        e.into_response()
    })
}

/// Buy: one Lua script decides. 202 `{order_id}`; poll `GET /api/orders/{order_id}`.
#[utoipa::path(post, path = "/api/flashsale/purchase", tag = "flashsale", security(("bearer" = [])), request_body = Purchase,
    responses((status = 202, description = "`{order_id}`: admitted; the order is created asynchronously"),
              (status = 400, description = "malformed_json, invalid_body, validation_failed"),
              (status = 401, description = "unauthorized"), (status = 403, description = "invalid_token"),
              (status = 409, description = "sold_out, limit_exceeded, not_started, ended"),
              (status = 503, description = "overloaded, unavailable, not_ready (with Retry-After)")))]
///
/// `parent` is the request's server span, the admission span's parent.
pub(super) async fn purchase(
    state: &Arc<AppState>,
    req: axum::extract::Request,
    parent: &opentelemetry::Context,
) -> Result<Response, FlashError> {
    let (parts, body) = req.into_parts();
    let body = match whole_body(body).await {
        Ok(body) => body,
        Err(rejection) => return Ok(rejection),
    };
    let parsed = Purchase::from_json(&body)
        .map_err(|e| {
            if e.is_data() {
                FlashError::InvalidBody(e.to_string())
            } else {
                FlashError::MalformedJson(e.to_string())
            }
        })
        .and_then(|p| p.validated().map_err(FlashError::InvalidPurchase));
    // Late buyers of a sold-out item are answered before the two HMAC checks: the answer is
    // public (browsing shows 0 left), changes nothing, and is what a verified buyer gets too.
    // The claimed user id only lets a retry of an uncertain purchase through to the full path,
    // which verifies it (the signature covers the user id). When the flag has run out, this
    // purchase starts the re-check of the stock and is answered from memory (see `SoldOut`).
    if let Ok(p) = &parsed {
        let check = state.sold_out.check(p.session_id, p.sku_id);
        if check == Check::Recheck {
            tokio::spawn(recheck(state.clone(), p.session_id, p.sku_id));
        }
        if check != Check::Open {
            let retry_of_uncertain = state.uncertain.may_hold_any()
                && mall_common::identity::claimed_user(&parts.headers)
                    .is_some_and(|user| state.uncertain.contains(user, &p.request_id));
            if !retry_of_uncertain {
                state.sold_out_answers.increment(1);
                return Ok(sold_out(state));
            }
        }
    }
    let who =
        mall_common::identity::require_user(&state.identity, &parts.headers).map_err(FlashError::Identity)?;
    let p = parsed?;
    let now_ms = Utc::now().timestamp_millis();
    if !state
        .token_key
        .verify(&p.token, &who.user_id, p.session_id, p.sku_id, now_ms)
    {
        return Err(FlashError::InvalidToken);
    }
    // Boxed: the admission's future (the script call, its timeout) is most of this one's size,
    // which late buyers, who never get here, would carry too.
    Box::pin(admit(state, &who.user_id, &p, now_ms, parent)).await
}

/// One purchase on its way through the admission: who, what, and the span recording it.
struct Buying<'a> {
    state: &'a AppState,
    user_id: &'a str,
    p: &'a Purchase<'a>,
    keys: Arc<ItemKeys>,
    span: tracing::Span,
}

/// The admission of a verified purchase: the in-flight limit, the breaker, then the script.
async fn admit(
    state: &Arc<AppState>,
    user_id: &str,
    p: &Purchase<'_>,
    now_ms: i64,
    parent: &opentelemetry::Context,
) -> Result<Response, FlashError> {
    let Ok(_permit) = state.permits.try_acquire() else {
        return Err(FlashError::Overloaded);
    };
    let permit = state.breaker.permit();
    if permit == Permit::Open {
        return Err(FlashError::RetrySoon("the sale's store is failing; retry"));
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
    let keys = state
        .on_sale
        .get()
        .item_keys(&state.redis, p.session_id, p.sku_id);
    let buying = Buying {
        state,
        user_id,
        p,
        keys,
        span,
    };
    let verdict = buying.run_script(permit, now_ms).await?;
    buying.answer(verdict).await
}

impl Buying<'_> {
    /// The script's verdict; a failed or late call feeds the breaker and marks the purchase
    /// uncertain when the script may have run.
    async fn run_script(&self, permit: Permit, now_ms: i64) -> Result<Admission, FlashError> {
        let (state, p) = (self.state, self.p);
        let order_id = Uuid::now_v7().to_string();
        let attempt = Attempt {
            user_id: self.user_id,
            request_id: &p.request_id,
            quantity: p.quantity,
            now_ms,
            order_id: &order_id,
        };
        // The span is open until the answer and records the verdict; it is not entered on
        // every poll (nothing inside logs).
        let call = admission::admit_with(&state.redis, &self.keys, attempt, state.replica_acks);
        let outcome = tokio::time::timeout(ADMIT_TIMEOUT, call).await;
        state.breaker.record(permit, matches!(outcome, Ok(Ok(_))));
        match outcome {
            Ok(Ok(verdict)) => Ok(verdict),
            Ok(Err(e)) => {
                // The script may have run (an error after sending, or an answer this build does
                // not know): its retries must reach it, not the sold-out flag.
                if matches!(e, RedisError::Command(_) | RedisError::Reply(_)) {
                    state.uncertain.add(self.user_id, &p.request_id);
                }
                self.span.record("result", "redis_error");
                Err(FlashError::unavailable(e))
            }
            Err(_) => {
                state.uncertain.add(self.user_id, &p.request_id);
                self.span.record("result", "redis_timeout");
                Err(FlashError::unavailable("Redis did not answer in time"))
            }
        }
    }

    /// The buyer's answer to the script's verdict: an admission is booked before its 202.
    async fn answer(&self, verdict: Admission) -> Result<Response, FlashError> {
        let (state, p) = (self.state, self.p);
        self.span.record("result", verdict.name());
        match verdict {
            Admission::Admitted(a) => {
                self.span.record("left", a.left);
                let answer = self.book(&a).await;
                if answer.is_ok() {
                    metrics::counter!("flashsale_admissions_total").increment(1);
                }
                state.sold_out.learn(p.session_id, p.sku_id, a.left);
                answer
            }
            Admission::Repeat(a) if a.booked => Ok(accepted(&a.order_id)),
            Admission::Repeat(a) => self.book(&a).await,
            Admission::SoldOut { left } => {
                state.sold_out.learn(p.session_id, p.sku_id, left);
                state.uncertain.resolve(self.user_id, &p.request_id);
                Ok(sold_out(state))
            }
            Admission::LimitExceeded => Err(FlashError::LimitExceeded),
            Admission::NotStarted => Err(FlashError::NotStarted),
            Admission::Ended => Err(FlashError::Ended),
            Admission::NotWarmed => Err(FlashError::NotReady("the session is being loaded; retry")),
            Admission::BadQuantity => Err(FlashError::InvalidPurchase(mall_common::error::invalid(
                "quantity",
                "must be a positive number of units",
            ))),
        }
    }

    /// Books what the script admitted (see [`book`]); 202 once it is committed. A repeat not
    /// yet marked booked is booked again (a no-op if its first attempt got that far: that
    /// attempt may have failed in between).
    async fn book(&self, a: &Admitted) -> Result<Response, FlashError> {
        let (state, p, span) = (self.state, self.p, &self.span);
        match a.replication {
            Replication::Acked | Replication::NotAsked => {}
            Replication::NoReplica => {
                metrics::counter!("flashsale_unreplicated_admissions_total").increment(1)
            }
            Replication::Lagging => {
                // Not booked, so not promised: the retry with this request id reaches the
                // script again (its first answer) and waits for the replica once more.
                state.uncertain.add(self.user_id, &p.request_id);
                span.record("result", "replica_lagging");
                return Err(FlashError::RetrySoon(
                    "the purchase is not yet safe on a Redis replica; retry",
                ));
            }
        }
        let order_id = Uuid::parse_str(&a.order_id)
            .map_err(|_| FlashError::Internal("the admission script returned a malformed order id".into()))?;
        let (price_cents, reservation_id) = self.item().await?;
        let entry = book::Entry {
            session_id: p.session_id,
            sku_id: p.sku_id,
            order_id,
            user_id: self.user_id,
            request_id: &p.request_id,
            quantity: a.quantity,
            price_cents,
            reservation_id,
            admitted_at: Utc::now(),
            epoch: a.epoch,
        };
        // In the admission's span, so the event's trace context (taken from the current span)
        // continues the buyer's trace through the hand-off.
        let record = book::record(&state.db, &entry).instrument(span.clone());
        match tokio::time::timeout(BOOK_TIMEOUT, record).await {
            Ok(Ok(Recorded::New | Recorded::Already)) => {
                self.mark_booked(a);
                Ok(accepted(&a.order_id))
            }
            Ok(Ok(Recorded::Stale)) => {
                span.record("result", "reloading");
                Err(FlashError::NotReady("the session is being reloaded; retry"))
            }
            failed => {
                // Redis admitted it: a retry with the same request id must reach the script
                // (and get this order), not the sold-out flag.
                state.uncertain.add(self.user_id, &p.request_id);
                span.record("result", "book_failed");
                Err(match failed {
                    Ok(Err(e)) => FlashError::unavailable(e),
                    _ => FlashError::unavailable("the database did not answer in time"),
                })
            }
        }
    }

    /// The admitted item's price and the session's reservation, from memory or, for a
    /// session loaded since this instance's last refresh, from Postgres.
    async fn item(&self) -> Result<(i64, Uuid), FlashError> {
        let (state, p) = (self.state, self.p);
        if let Some(i) = state
            .on_sale
            .get()
            .session(p.session_id)
            .and_then(|s| s.item(p.sku_id))
        {
            return Ok((i.price_cents, i.reservation_id));
        }
        let s = sessions::session(&state.db, p.session_id)
            .await
            .map_err(FlashError::unavailable)?
            .ok_or_else(|| FlashError::Internal("an admitted session is not in the database".into()))?;
        let i = s
            .item(p.sku_id)
            .ok_or_else(|| FlashError::Internal("an admitted item is not in the database".into()))?;
        Ok((i.price_cents, i.reservation_id))
    }

    /// Marks the admission booked in Redis, best effort and off the buyer's wait: unmarked, a
    /// repeat only books again (a no-op).
    fn mark_booked(&self, a: &Admitted) {
        let (redis, keys, a) = (self.state.redis.clone(), self.keys.clone(), a.clone());
        let (user, request) = (self.user_id.to_owned(), self.p.request_id.to_string());
        tokio::spawn(async move {
            if let Err(e) = admission::mark_booked(&redis, &keys, &user, &request, &a).await {
                tracing::debug!(error = %e, "could not mark the admission booked");
            }
        });
    }
}

/// Reads the stock of an item whose sold-out flag ran out, and renews the flag (none left),
/// drops it (units came back, or the item is no longer loaded, which the script answers for),
/// or, when Redis does not answer in time, keeps the last answer for another ttl. No purchase
/// waits for it.
async fn recheck(state: Arc<AppState>, session: i64, sku: i64) {
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
    let mut unanswered = Unanswered(Some(&state.sold_out), session, sku);
    let keys = state.on_sale.get().item_keys(&state.redis, session, sku);
    let read = tokio::time::timeout(
        ADMIT_TIMEOUT,
        admission::stock_left(&state.redis, std::slice::from_ref(&*keys)),
    )
    .await;
    unanswered.0 = None;
    match read {
        Ok(Ok(left)) => match left.first().copied().flatten() {
            Some(left) => state.sold_out.learn(session, sku, left),
            None => state.sold_out.clear(session, sku),
        },
        Ok(Err(e)) => {
            tracing::warn!(session, sku, error = %e, "sold-out re-check failed; the flag stands");
            state.sold_out.renew(session, sku);
        }
        Err(_) => {
            tracing::warn!(session, sku, "sold-out re-check timed out; the flag stands");
            state.sold_out.renew(session, sku);
        }
    }
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
