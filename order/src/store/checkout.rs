//! Checkout: the idempotency key a checkout holds, and the order it writes.

use mall_common::db::Db;
use mall_common::events::OrderTimeout;
use mall_common::outbox::{Destination, enqueue};
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

use crate::domain::Item;

/// How long a checkout may hold its idempotency key before a repeat may take over.
const KEY_LEASE_SECS: f64 = 30.0;

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
