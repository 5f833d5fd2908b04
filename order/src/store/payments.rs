//! Payments: a verified callback applied once.

use mall_common::db::Db;
use mall_common::events::{ORDER_EVENTS, ORDER_PAID, OrderPaid};
use mall_common::outbox::{Destination, enqueue};
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use crate::domain::{PaymentCallback, PaymentStatus};

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
