//! Order SQL. Every state change is a guarded update (`WHERE status = 'pending_payment'`), so
//! of a payment, a timeout and a buyer's cancel racing for one order exactly one wins; and
//! every change other services must learn of is written to the outbox in the same transaction.

use chrono::{DateTime, Utc};
use mall_common::db::Db;
use mall_common::events::{
    FlashAdmitted, FlashRef, ORDER_CANCELLED, ORDER_EVENTS, ORDER_PAID, OrderCancelled, OrderPaid,
    OrderTimeout,
};
use mall_common::outbox::{Destination, enqueue};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::domain::{Item, OrderStatus, PaymentCallback, PaymentStatus};

/// How long a checkout may hold its idempotency key before a repeat may take over.
const KEY_LEASE_SECS: f64 = 30.0;

/// An order as its owner sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Order {
    /// Id.
    pub order_id: Uuid,
    /// State.
    pub status: OrderStatus,
    /// Sum of the lines at the prices of checkout.
    pub total_cents: i64,
    /// End of the payment window.
    pub expires_at: DateTime<Utc>,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
    /// When it was paid.
    pub paid_at: Option<DateTime<Utc>>,
    /// When it was cancelled.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Why it was cancelled (`buyer`, `timeout`).
    pub cancel_reason: Option<String>,
    /// A payment arrived after cancellation and must be refunded.
    pub refund_required: bool,
    /// Lines.
    pub items: Vec<Line>,
}

/// One line of an order.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Line {
    /// SKU.
    pub sku_id: i64,
    /// Units.
    pub quantity: i64,
    /// Price per unit at checkout.
    pub unit_price_cents: i64,
}

fn status(s: &str) -> OrderStatus {
    match s {
        "paid" => OrderStatus::Paid,
        "cancelled" => OrderStatus::Cancelled,
        _ => OrderStatus::PendingPayment,
    }
}

/// What a checkout finds under its idempotency key.
#[derive(Debug)]
pub enum Begin {
    /// First (or taken-over) attempt: go ahead with this order id.
    Fresh(Uuid),
    /// Already done: answer with this order.
    Done(Uuid),
    /// Already failed: answer the same.
    Failed(u16, Value),
    /// Another attempt is running right now.
    InProgress,
    /// The key was used for a different request.
    Mismatch,
}

/// Claims the key for this request, or reports what an earlier request with it became.
pub async fn begin_checkout(db: &Db, user: &str, key: &str, hash: &str) -> Result<Begin, sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    let fresh_id = Uuid::now_v7();
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (user_id, key, request_hash, order_id, state, locked_until)
         VALUES ($1, $2, $3, $4, 'in_progress', now() + make_interval(secs => $5))
         ON CONFLICT DO NOTHING",
    )
    .bind(user)
    .bind(key)
    .bind(hash)
    .bind(fresh_id)
    .bind(KEY_LEASE_SECS)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        tx.commit().await?;
        return Ok(Begin::Fresh(fresh_id));
    }
    let row = sqlx::query(
        "SELECT request_hash, order_id, state, response_status, response_body, locked_until <= now() AS lapsed
           FROM idempotency_keys WHERE user_id = $1 AND key = $2 FOR UPDATE",
    )
    .bind(user)
    .bind(key)
    .fetch_one(&mut *tx)
    .await?;
    let begin = if row.get::<String, _>("request_hash") != hash {
        Begin::Mismatch
    } else {
        match row.get::<String, _>("state").as_str() {
            "done" => Begin::Done(row.get("order_id")),
            "failed" => Begin::Failed(
                row.get::<Option<i16>, _>("response_status").unwrap_or(500) as u16,
                row.get::<Option<Value>, _>("response_body")
                    .unwrap_or(Value::Null),
            ),
            _ if row.get::<bool, _>("lapsed") => {
                // The first attempt died mid-way: take over with the same order id (the
                // reservation and the order insert are idempotent by it).
                sqlx::query(
                    "UPDATE idempotency_keys SET locked_until = now() + make_interval(secs => $3)
                      WHERE user_id = $1 AND key = $2",
                )
                .bind(user)
                .bind(key)
                .bind(KEY_LEASE_SECS)
                .execute(&mut *tx)
                .await?;
                Begin::Fresh(row.get("order_id"))
            }
            _ => Begin::InProgress,
        }
    };
    tx.commit().await?;
    Ok(begin)
}

/// Ends an attempt that failed for a passing reason: the key's lease lapses now, so a retry
/// takes over at once with the same order id.
pub async fn release_checkout(db: &Db, user: &str, key: &str, order_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET locked_until = now()
          WHERE user_id = $1 AND key = $2 AND order_id = $3 AND state = 'in_progress'",
    )
    .bind(user)
    .bind(key)
    .bind(order_id)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Records a failed checkout's answer under its key, so repeats get the same answer.
pub async fn fail_checkout(
    db: &Db,
    user: &str,
    key: &str,
    status: u16,
    body: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET state = 'failed', response_status = $3, response_body = $4
          WHERE user_id = $1 AND key = $2 AND state = 'in_progress'",
    )
    .bind(user)
    .bind(key)
    .bind(status as i16)
    .bind(body)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Writes the order, its lines, its timeout message (outbox) and marks the key done, in one
/// transaction. Idempotent by order id.
#[allow(clippy::too_many_arguments)]
pub async fn create_order(
    db: &Db,
    user: &str,
    key: &str,
    order_id: Uuid,
    lines: &[(Item, i64)],
    ttl_secs: u64,
    timeout_queue: &str,
) -> Result<(), sqlx::Error> {
    let total: i64 = lines.iter().map(|(i, p)| i.quantity * p).sum();
    let mut tx = db.pool().begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO orders (id, user_id, status, total_cents, reservation_id, expires_at)
         VALUES ($1, $2, 'pending_payment', $3, $1, now() + make_interval(secs => $4))
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(order_id)
    .bind(user)
    .bind(total)
    .bind(ttl_secs as f64)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        for (item, price) in lines {
            sqlx::query("INSERT INTO order_items (order_id, sku_id, quantity, unit_price_cents) VALUES ($1, $2, $3, $4)")
                .bind(order_id)
                .bind(item.sku_id)
                .bind(item.quantity)
                .bind(price)
                .execute(&mut *tx)
                .await?;
        }
        let timeout = OrderTimeout {
            event_id: Uuid::now_v7(),
            order_id,
        };
        enqueue(
            &mut tx,
            &order_id.to_string(),
            Destination::Queue(timeout_queue),
            &timeout,
        )
        .await?;
    }
    sqlx::query(
        "UPDATE idempotency_keys SET state = 'done', response_status = 201 WHERE user_id = $1 AND key = $2",
    )
    .bind(user)
    .bind(key)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Whether an order exists (any owner, any state).
pub async fn exists(db: &Db, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM orders WHERE id = $1)")
        .bind(id)
        .fetch_one(db.pool())
        .await
}

/// Writes the order of a flash-sale admission (flash price, one line), its timeout message
/// (outbox), in one transaction. Idempotent by order id: `false` if it already existed.
pub async fn create_flash_order(
    db: &Db,
    a: &FlashAdmitted,
    ttl_secs: u64,
    timeout_queue: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO orders (id, user_id, status, total_cents, reservation_id, expires_at, source, flash_session_id)
         VALUES ($1, $2, 'pending_payment', $3, $1, now() + make_interval(secs => $4), 'flashsale', $5)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(a.order_id)
    .bind(&a.user_id)
    .bind(a.price_cents * a.quantity)
    .bind(ttl_secs as f64)
    .bind(a.session_id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO order_items (order_id, sku_id, quantity, unit_price_cents) VALUES ($1, $2, $3, $4)",
    )
    .bind(a.order_id)
    .bind(a.sku_id)
    .bind(a.quantity)
    .bind(a.price_cents)
    .execute(&mut *tx)
    .await?;
    let timeout = OrderTimeout {
        event_id: Uuid::now_v7(),
        order_id: a.order_id,
    };
    enqueue(
        &mut tx,
        &a.order_id.to_string(),
        Destination::Queue(timeout_queue),
        &timeout,
    )
    .await?;
    tx.commit().await?;
    metrics::counter!("flash_orders_created_total").increment(1);
    Ok(true)
}

async fn lines(conn: &mut PgConnection, id: Uuid) -> Result<Vec<Line>, sqlx::Error> {
    sqlx::query_as::<_, Line>(
        "SELECT sku_id, quantity, unit_price_cents FROM order_items WHERE order_id = $1 ORDER BY sku_id",
    )
    .bind(id)
    .fetch_all(conn)
    .await
}

fn order_from(row: &sqlx::postgres::PgRow, items: Vec<Line>) -> Order {
    Order {
        order_id: row.get("id"),
        status: status(row.get::<&str, _>("status")),
        total_cents: row.get("total_cents"),
        expires_at: row.get("expires_at"),
        created_at: row.get("created_at"),
        paid_at: row.get("paid_at"),
        cancelled_at: row.get("cancelled_at"),
        cancel_reason: row.get("cancel_reason"),
        refund_required: row.get("refund_required"),
        items,
    }
}

const ORDER_COLUMNS: &str =
    "id, status, total_cents, expires_at, created_at, paid_at, cancelled_at, cancel_reason, refund_required";

/// An order of `user` (another user's order is `None`, like a missing one).
pub async fn order(db: &Db, user: &str, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    let mut conn = db.pool().acquire().await?;
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 AND user_id = $2"
    )))
    .bind(id)
    .bind(user)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let items = lines(&mut conn, id).await?;
    Ok(Some(order_from(&row, items)))
}

/// `user`'s orders, newest first, after the order `before` (keyset).
pub async fn orders(
    db: &Db,
    user: &str,
    limit: i64,
    before: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Vec<Order>, sqlx::Error> {
    let mut conn = db.pool().acquire().await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1
            AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
          ORDER BY created_at DESC, id DESC LIMIT $4"
    )))
    .bind(user)
    .bind(before.map(|b| b.0))
    .bind(before.map(|b| b.1))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let items = lines(&mut conn, row.get("id")).await?;
        out.push(order_from(row, items));
    }
    Ok(out)
}

/// Cancels a pending order (guarded) and announces it; `false` if it was not pending.
async fn cancel_in(
    conn: &mut PgConnection,
    id: Uuid,
    reason: &str,
    owner: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let cancelled = sqlx::query(
        "UPDATE orders SET status = 'cancelled', cancelled_at = now(), cancel_reason = $2
          WHERE id = $1 AND status = 'pending_payment' AND ($3::text IS NULL OR user_id = $3)
            AND ($2 <> 'timeout' OR expires_at <= now())
          RETURNING reservation_id, user_id, flash_session_id",
    )
    .bind(id)
    .bind(reason)
    .bind(owner)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = cancelled else {
        return Ok(false);
    };
    // A flash order's unit goes back to its session, so the event says which admission it was.
    let flash = match row.get::<Option<i64>, _>("flash_session_id") {
        Some(session_id) => {
            let line = lines(conn, id).await?.into_iter().next();
            line.map(|l| FlashRef {
                session_id,
                sku_id: l.sku_id,
                user_id: row.get("user_id"),
                quantity: l.quantity,
            })
        }
        None => None,
    };
    let event = OrderCancelled {
        event_id: Uuid::now_v7(),
        order_id: id,
        reservation_id: row.get("reservation_id"),
        flash,
    };
    enqueue(
        conn,
        &id.to_string(),
        Destination::Exchange(ORDER_EVENTS, ORDER_CANCELLED),
        &event,
    )
    .await?;
    metrics::counter!("orders_cancelled_total", "reason" => reason.to_owned()).increment(1);
    Ok(true)
}

/// The buyer cancels: `Ok(None)` if no such order of theirs, `Ok(Some(false))` if not pending.
pub async fn cancel_by_buyer(db: &Db, user: &str, id: Uuid) -> Result<Option<bool>, sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM orders WHERE id = $1 AND user_id = $2)")
            .bind(id)
            .bind(user)
            .fetch_one(&mut *tx)
            .await?;
    if !exists {
        return Ok(None);
    }
    let cancelled = cancel_in(&mut tx, id, "buyer", Some(user)).await?;
    tx.commit().await?;
    Ok(Some(cancelled))
}

/// Cancels an order whose payment window has passed, if still unpaid.
pub async fn time_out(db: &Db, id: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    let cancelled = cancel_in(&mut tx, id, "timeout", None).await?;
    tx.commit().await?;
    Ok(cancelled)
}

/// Cancels up to `batch` unpaid orders past their expiry (the backstop for a lost timeout
/// message). Instances sweep concurrently; `SKIP LOCKED` gives each order to one of them.
pub async fn sweep_expired(db: &Db, batch: i64) -> Result<u64, sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM orders WHERE status = 'pending_payment' AND expires_at <= now()
          ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let mut n = 0;
    for id in ids {
        if cancel_in(&mut tx, id, "timeout", None).await? {
            n += 1;
        }
    }
    tx.commit().await?;
    Ok(n)
}

/// What a payment callback did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentOutcome {
    /// The order became paid.
    Applied,
    /// The order was already cancelled: recorded, order flagged for refund, never revived.
    Late,
    /// A failed payment, or another payment for an already paid order: recorded only.
    Ignored,
    /// The amount does not match the order: recorded only.
    Mismatch,
    /// No such order: recorded only.
    UnknownOrder,
    /// This payment id was seen before: nothing changes.
    Duplicate,
}

impl PaymentOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Late => "late",
            Self::Ignored => "ignored",
            Self::Mismatch => "mismatch",
            Self::UnknownOrder => "unknown_order",
            Self::Duplicate => "duplicate",
        }
    }
}

/// Applies a verified payment callback.
pub async fn pay(db: &Db, cb: &PaymentCallback) -> Result<PaymentOutcome, sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    let first = sqlx::query(
        "INSERT INTO payments (payment_id, order_id, amount_cents, status, outcome)
         VALUES ($1, $2, $3, $4, 'ignored') ON CONFLICT (payment_id) DO NOTHING",
    )
    .bind(&cb.payment_id)
    .bind(cb.order_id)
    .bind(cb.amount_cents)
    .bind(match cb.status {
        PaymentStatus::Succeeded => "succeeded",
        PaymentStatus::Failed => "failed",
    })
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !first {
        return Ok(PaymentOutcome::Duplicate);
    }
    let order =
        sqlx::query("SELECT status, total_cents, reservation_id FROM orders WHERE id = $1 FOR UPDATE")
            .bind(cb.order_id)
            .fetch_optional(&mut *tx)
            .await?;
    let outcome = match (order, cb.status) {
        (None, _) => PaymentOutcome::UnknownOrder,
        (Some(_), PaymentStatus::Failed) => PaymentOutcome::Ignored,
        (Some(row), PaymentStatus::Succeeded) => {
            let total: i64 = row.get("total_cents");
            match row.get::<&str, _>("status") {
                _ if total != cb.amount_cents => PaymentOutcome::Mismatch,
                "pending_payment" => {
                    sqlx::query("UPDATE orders SET status = 'paid', paid_at = now() WHERE id = $1 AND status = 'pending_payment'")
                        .bind(cb.order_id)
                        .execute(&mut *tx)
                        .await?;
                    let event = OrderPaid {
                        event_id: Uuid::now_v7(),
                        order_id: cb.order_id,
                        reservation_id: row.get("reservation_id"),
                    };
                    enqueue(
                        &mut tx,
                        &cb.order_id.to_string(),
                        Destination::Exchange(ORDER_EVENTS, ORDER_PAID),
                        &event,
                    )
                    .await?;
                    PaymentOutcome::Applied
                }
                "cancelled" => {
                    sqlx::query("UPDATE orders SET refund_required = true WHERE id = $1")
                        .bind(cb.order_id)
                        .execute(&mut *tx)
                        .await?;
                    PaymentOutcome::Late
                }
                _ => PaymentOutcome::Ignored,
            }
        }
    };
    sqlx::query("UPDATE payments SET outcome = $2 WHERE payment_id = $1")
        .bind(&cb.payment_id)
        .bind(outcome.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    metrics::counter!("payments_total", "outcome" => outcome.as_str()).increment(1);
    Ok(outcome)
}
