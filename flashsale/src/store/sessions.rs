//! Session SQL: the record of what was put on sale and where it stands. Only the admin API and
//! the background job read it; the purchase path never does.

use chrono::{DateTime, Utc};
use mall_common::db::Db;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use crate::domain::NewSession;

/// A session as the job and the catalog see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Session {
    /// Id.
    pub session_id: i64,
    /// When buying opens.
    pub starts_at: DateTime<Utc>,
    /// When buying closes.
    pub ends_at: DateTime<Utc>,
    /// `creating`, `active`, `failed`, `settled`.
    pub status: String,
    /// Loaded into Redis.
    pub warmed: bool,
    /// Items by SKU.
    pub items: Vec<Item>,
}

/// One item of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Item {
    /// SKU.
    pub sku_id: i64,
    /// Flash price per unit.
    pub price_cents: i64,
    /// Units put on sale.
    pub quantity: i64,
    /// Most units per buyer.
    pub per_user_limit: i64,
    /// The inventory reservation holding the units.
    pub reservation_id: Uuid,
    /// Unsold units were given back to inventory.
    pub released: bool,
}

impl Session {
    /// Start as unix milliseconds.
    pub fn starts_ms(&self) -> i64 {
        self.starts_at.timestamp_millis()
    }

    /// End as unix milliseconds.
    pub fn ends_ms(&self) -> i64 {
        self.ends_at.timestamp_millis()
    }

    /// The item of `sku`.
    pub fn item(&self, sku: i64) -> Option<&Item> {
        self.items.iter().find(|i| i.sku_id == sku)
    }
}

/// Writes a new session as `creating`, with a fresh reservation id per item.
pub async fn begin(db: &Db, s: &NewSession, created_by: &str) -> Result<Session, sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO sessions (starts_at, ends_at, status, created_by) VALUES ($1, $2, 'creating', $3) RETURNING id",
    )
    .bind(s.starts_at)
    .bind(s.ends_at)
    .bind(created_by)
    .fetch_one(&mut *tx)
    .await?;
    for i in &s.items {
        sqlx::query(
            "INSERT INTO session_items (session_id, sku_id, price_cents, quantity, per_user_limit, reservation_id)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(i.sku_id)
        .bind(i.price_cents)
        .bind(i.quantity)
        .bind(i.per_user_limit)
        .bind(Uuid::new_v4())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(session(db, id).await?.expect("just written"))
}

/// Moves a session from `creating` to `to` (`active` or `failed`).
pub async fn finish_creating(db: &Db, id: i64, to: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sessions SET status = $2 WHERE id = $1 AND status = 'creating'")
        .bind(id)
        .bind(to)
        .execute(db.pool())
        .await?;
    Ok(())
}

const COLUMNS: &str = "s.id, s.starts_at, s.ends_at, s.status, s.warmed_at IS NOT NULL AS warmed,
    i.sku_id, i.price_cents, i.quantity, i.per_user_limit, i.reservation_id, i.released_at IS NOT NULL AS released";

fn group(rows: &[sqlx::postgres::PgRow]) -> Vec<Session> {
    let mut out: Vec<Session> = Vec::new();
    for r in rows {
        let id: i64 = r.get("id");
        if out.last().map(|s| s.session_id) != Some(id) {
            out.push(Session {
                session_id: id,
                starts_at: r.get("starts_at"),
                ends_at: r.get("ends_at"),
                status: r.get("status"),
                warmed: r.get("warmed"),
                items: Vec::new(),
            });
        }
        out.last_mut().expect("pushed").items.push(Item {
            sku_id: r.get("sku_id"),
            price_cents: r.get("price_cents"),
            quantity: r.get("quantity"),
            per_user_limit: r.get("per_user_limit"),
            reservation_id: r.get("reservation_id"),
            released: r.get("released"),
        });
    }
    out
}

/// One session.
pub async fn session(db: &Db, id: i64) -> Result<Option<Session>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sessions s JOIN session_items i ON i.session_id = s.id
          WHERE s.id = $1 ORDER BY i.sku_id"
    )))
    .bind(id)
    .fetch_all(db.pool())
    .await?;
    Ok(group(&rows).pop())
}

/// Sessions still to be sold, being sold, or waiting to be settled; and those stuck in
/// `creating` (a crash mid-creation), so the job can clean them up.
pub async fn open(db: &Db) -> Result<Vec<Session>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM sessions s JOIN session_items i ON i.session_id = s.id
          WHERE s.status IN ('creating', 'active') ORDER BY s.starts_at, s.id, i.sku_id"
    )))
    .fetch_all(db.pool())
    .await?;
    Ok(group(&rows))
}

/// Whether a `creating` session is older than `secs` (its creator died mid-way).
pub async fn creating_for_longer_than(db: &Db, id: i64, secs: f64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1 AND status = 'creating'
                          AND created_at < now() - make_interval(secs => $2))",
    )
    .bind(id)
    .bind(secs)
    .fetch_one(db.pool())
    .await
}

/// Records that a session's items are in Redis.
pub async fn mark_warmed(db: &Db, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sessions SET warmed_at = now() WHERE id = $1 AND warmed_at IS NULL")
        .bind(id)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Records that an item's unsold units are back in inventory.
pub async fn mark_released(db: &Db, id: i64, sku: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE session_items SET released_at = now() WHERE session_id = $1 AND sku_id = $2 AND released_at IS NULL",
    )
    .bind(id)
    .bind(sku)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Marks a session settled once every item is released.
pub async fn settle_if_released(db: &Db, id: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE sessions SET status = 'settled', settled_at = now()
          WHERE id = $1 AND status = 'active'
            AND NOT EXISTS (SELECT 1 FROM session_items WHERE session_id = $1 AND released_at IS NULL)",
    )
    .bind(id)
    .execute(db.pool())
    .await?
    .rows_affected()
        == 1;
    Ok(done)
}
