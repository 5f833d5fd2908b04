//! A SKU's counters and its ledger.

use chrono::{DateTime, Utc};
use mall_common::db::Db;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// A SKU's numbers.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, PartialEq, Eq, utoipa::ToSchema)]
pub struct Stock {
    /// SKU.
    pub sku_id: i64,
    /// Free to reserve.
    pub available: i64,
    /// Held by reservations.
    pub reserved: i64,
    /// Confirmed sales.
    pub sold: i64,
    /// Ever received.
    pub received: i64,
}

/// One ledger row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LedgerEntry {
    /// Row id (increasing).
    pub id: i64,
    /// `receive`, `reserve`, `confirm` or `release`.
    pub movement: String,
    /// Units moved.
    pub quantity: i64,
    /// The reservation, for all but `receive`.
    pub reservation_id: Option<Uuid>,
    /// Why.
    pub reason: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// Adds received units to a SKU's stock (creating its record).
pub async fn receive(db: &Db, sku_id: i64, quantity: i64, reason: &str) -> Result<Stock, sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    let stock = sqlx::query_as::<_, Stock>(
        "INSERT INTO stock (sku_id, available, received) VALUES ($1, $2, $2)
         ON CONFLICT (sku_id) DO UPDATE
            SET available = stock.available + $2, received = stock.received + $2, updated_at = now()
         RETURNING sku_id, available, reserved, sold, received",
    )
    .bind(sku_id)
    .bind(quantity)
    .fetch_one(&mut *tx)
    .await?;
    ledger(&mut tx, sku_id, "receive", quantity, None, reason).await?;
    tx.commit().await?;
    Ok(stock)
}

/// A SKU's numbers.
pub async fn stock(db: &Db, sku_id: i64) -> Result<Option<Stock>, sqlx::Error> {
    sqlx::query_as::<_, Stock>(
        "SELECT sku_id, available, reserved, sold, received FROM stock WHERE sku_id = $1",
    )
    .bind(sku_id)
    .fetch_optional(db.pool())
    .await
}

/// The latest ledger rows of a SKU.
pub async fn ledger_of(db: &Db, sku_id: i64, limit: i64) -> Result<Vec<LedgerEntry>, sqlx::Error> {
    sqlx::query_as::<_, LedgerEntry>(
        "SELECT id, movement, quantity, reservation_id, reason, created_at FROM ledger
          WHERE sku_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(sku_id)
    .bind(limit)
    .fetch_all(db.pool())
    .await
}

pub(super) async fn ledger(
    conn: &mut PgConnection,
    sku_id: i64,
    movement: &str,
    quantity: i64,
    reservation: Option<Uuid>,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ledger (sku_id, movement, quantity, reservation_id, reason) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(sku_id)
    .bind(movement)
    .bind(quantity)
    .bind(reservation)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}
