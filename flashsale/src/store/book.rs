//! The book of admissions, in Postgres: a purchase is answered 202 only once its admission and
//! the `flashsale.admitted` event handing it to order (an outbox row, relayed by
//! `mall_common::outbox::relay`) are committed together. Redis may lose its counters; the
//! book is what they are rebuilt from, and what settlement waits on.
//!
//! Every load of an item into Redis bumps the item's `redis_epoch`. The admission script
//! returns the epoch it ran against and [`record`] writes only under that epoch, holding the
//! item row `FOR SHARE`; a load takes the row for update, so it waits for admissions being
//! written and reads them, and any admission decided against the old state is refused (the
//! buyer retries against the new one). A rebuild therefore never misses a booked admission.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use mall_common::db::Db;
use mall_common::events::{FLASHSALE_ADMITTED, FLASHSALE_EVENTS, FlashAdmitted};
use sqlx::Row;
use uuid::Uuid;

/// One admission to book.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// The session.
    pub session_id: i64,
    /// The SKU.
    pub sku_id: i64,
    /// The order id the buyer is given.
    pub order_id: Uuid,
    /// The buyer.
    pub user_id: &'a str,
    /// The client's request id.
    pub request_id: &'a str,
    /// Units.
    pub quantity: i64,
    /// The flash price per unit.
    pub price_cents: i64,
    /// The session item's reservation the order carves its units from.
    pub reservation_id: Uuid,
    /// When admitted.
    pub admitted_at: DateTime<Utc>,
    /// The item's load the admission script ran against.
    pub epoch: i64,
}

/// What [`record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Booked now, with its event.
    New,
    /// Booked before (a repeat of the request).
    Already,
    /// Not booked: the item was reloaded since the script ran; the admission does not count.
    Stale,
}

/// Books an admission and its hand-off event in one statement (one commit).
pub async fn record(db: &Db, e: &Entry<'_>) -> Result<Recorded, sqlx::Error> {
    let event_id = Uuid::now_v7();
    let event = FlashAdmitted {
        event_id: e.order_id,
        order_id: e.order_id,
        session_id: e.session_id,
        sku_id: e.sku_id,
        user_id: e.user_id.to_owned(),
        quantity: e.quantity,
        price_cents: e.price_cents,
        reservation_id: e.reservation_id,
        admitted_ms: e.admitted_at.timestamp_millis(),
    };
    let payload = serde_json::to_value(&event).map_err(|err| sqlx::Error::Encode(Box::new(err)))?;
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "WITH item AS (
             SELECT session_id, sku_id FROM session_items
              WHERE session_id = $1 AND sku_id = $2 AND redis_epoch = $3 FOR SHARE),
         booked AS (
             INSERT INTO admissions (order_id, session_id, sku_id, user_id, request_id, quantity, admitted_at, event_id)
             SELECT $4, session_id, sku_id, $5, $6, $7, $8, $9 FROM item
             ON CONFLICT (order_id) DO NOTHING RETURNING event_id)
         INSERT INTO outbox (id, aggregate_id, exchange, routing_key, payload, headers)
         SELECT event_id, $10, $11, $12, $13, $14 FROM booked RETURNING id",
    )
    .bind(e.session_id)
    .bind(e.sku_id)
    .bind(e.epoch)
    .bind(e.order_id)
    .bind(e.user_id)
    .bind(e.request_id)
    .bind(e.quantity)
    .bind(e.admitted_at)
    .bind(event_id)
    .bind(e.order_id.to_string())
    .bind(FLASHSALE_EVENTS)
    .bind(FLASHSALE_ADMITTED)
    .bind(payload)
    .bind(mall_common::outbox::trace_headers())
    .fetch_optional(db.pool())
    .await?;
    if inserted.is_some() {
        return Ok(Recorded::New);
    }
    let already: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM admissions WHERE order_id = $1)")
        .bind(e.order_id)
        .fetch_one(db.pool())
        .await?;
    Ok(if already {
        Recorded::Already
    } else {
        Recorded::Stale
    })
}

/// A booked admission, as a load puts it back into Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booked {
    /// The order id.
    pub order_id: String,
    /// The buyer.
    pub user_id: String,
    /// The client's request id.
    pub request_id: String,
    /// Units.
    pub quantity: i64,
    /// The order was cancelled and its units given back.
    pub returned: bool,
}

/// The start of a load: its epoch and what the book holds.
#[derive(Debug, Clone)]
pub struct Books {
    /// The new epoch (every admission recorded from now on carries it).
    pub epoch: i64,
    /// Every booked admission of the item.
    pub booked: Vec<Booked>,
}

impl Books {
    /// Units still held by admissions (not given back).
    pub fn held(&self) -> i64 {
        self.booked
            .iter()
            .filter(|b| !b.returned)
            .map(|b| b.quantity)
            .sum()
    }
}

/// Opens a new load of an item: bumps its epoch past `seen` (what Redis showed, if anything)
/// and reads the book, after every admission being recorded under the old epoch committed.
pub async fn begin_load(db: &Db, session: i64, sku: i64, seen: Option<i64>) -> Result<Books, sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    let epoch: i64 = sqlx::query_scalar(
        "UPDATE session_items SET redis_epoch = greatest(redis_epoch, $3) + 1
          WHERE session_id = $1 AND sku_id = $2 RETURNING redis_epoch",
    )
    .bind(session)
    .bind(sku)
    .bind(seen.unwrap_or(0))
    .fetch_one(&mut *tx)
    .await?;
    let booked = sqlx::query(
        "SELECT order_id::text AS order_id, user_id, request_id, quantity, returned_at IS NOT NULL AS returned
           FROM admissions WHERE session_id = $1 AND sku_id = $2 ORDER BY admitted_at, order_id",
    )
    .bind(session)
    .bind(sku)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| Booked {
        order_id: r.get("order_id"),
        user_id: r.get("user_id"),
        request_id: r.get("request_id"),
        quantity: r.get("quantity"),
        returned: r.get("returned"),
    })
    .collect();
    tx.commit().await?;
    Ok(Books { epoch, booked })
}

/// The current epoch of every item of `sessions`, by `(session, sku)`.
pub async fn epochs(db: &Db, sessions: &[i64]) -> Result<HashMap<(i64, i64), i64>, sqlx::Error> {
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT session_id, sku_id, redis_epoch FROM session_items WHERE session_id = ANY($1)",
    )
    .bind(sessions)
    .fetch_all(db.pool())
    .await?;
    Ok(rows.into_iter().map(|(s, k, e)| ((s, k), e)).collect())
}

/// An item's admissions, as the book has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Counts {
    /// Admissions booked.
    pub booked: i64,
    /// Of them, handed to order (confirmed by the broker).
    pub handed: i64,
    /// Units booked, every admission's (returned ones too: each made its order).
    pub units: i64,
}

/// An item's [`Counts`].
pub async fn counts(db: &Db, session: i64, sku: i64) -> Result<Counts, sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) AS booked, count(o.sent_at) AS handed,
                coalesce(sum(a.quantity), 0)::int8 AS units
           FROM admissions a JOIN outbox o ON o.id = a.event_id
          WHERE a.session_id = $1 AND a.sku_id = $2",
    )
    .bind(session)
    .bind(sku)
    .fetch_one(db.pool())
    .await
}

/// Admissions booked but not yet handed to order (confirmed by the broker), over every item,
/// and the age in seconds of the oldest.
pub async fn backlog(db: &Db) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(o.created_at))::float8, 0)
           FROM admissions a JOIN outbox o ON o.id = a.event_id WHERE o.sent_at IS NULL",
    )
    .fetch_one(db.pool())
    .await
}

/// Records that a cancelled order's units went back on sale; `false` if recorded before or
/// the order is not a booked admission.
pub async fn mark_returned(db: &Db, order_id: Uuid) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("UPDATE admissions SET returned_at = now() WHERE order_id = $1 AND returned_at IS NULL")
            .bind(order_id)
            .execute(db.pool())
            .await?
            .rows_affected()
            == 1,
    )
}
