//! Orders: read, created from a flash-sale admission, cancelled, timed out, swept.

use chrono::{DateTime, Utc};
use mall_common::db::Db;
use mall_common::events::{
    FlashAdmitted, FlashRef, ORDER_CANCELLED, ORDER_EVENTS, OrderCancelled, OrderTimeout,
};
use mall_common::outbox::{Destination, enqueue};
use serde::Serialize;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::domain::OrderStatus;

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
