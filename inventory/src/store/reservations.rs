//! Reservations: reserve, settle (confirm or release) once, carve, expire.

use chrono::{DateTime, Utc};
use mall_common::db::Db;
use serde::Serialize;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::StockError;
use super::stock::ledger;
use crate::domain::{Carve, Item, NewReservation, ReservationStatus};

/// A reservation as callers see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Reservation {
    /// Its id.
    pub reservation_id: Uuid,
    /// Its state.
    pub status: ReservationStatus,
    /// When the sweeper may release it.
    pub expires_at: DateTime<Utc>,
    /// What it holds.
    pub items: Vec<Item>,
    /// Units moved out of it into orders' reservations so far (`carve`, a flash-sale session
    /// item's); given by `GET /internal/reservations/{id}` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carved: Option<i64>,
}

async fn load(conn: &mut PgConnection, id: Uuid) -> Result<Option<Reservation>, sqlx::Error> {
    let Some(row) = sqlx::query("SELECT status, expires_at FROM reservations WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let items = sqlx::query(
        "SELECT sku_id, quantity FROM reservation_items WHERE reservation_id = $1 ORDER BY sku_id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| Item {
        sku_id: r.get("sku_id"),
        quantity: r.get("quantity"),
    })
    .collect();
    Ok(Some(Reservation {
        reservation_id: id,
        status: ReservationStatus::parse(row.get::<&str, _>("status")).unwrap_or(ReservationStatus::Released),
        expires_at: row.get("expires_at"),
        items,
        carved: None,
    }))
}

/// A reservation by id, with the units carved out of it.
pub async fn reservation(db: &Db, id: Uuid) -> Result<Option<Reservation>, sqlx::Error> {
    let mut conn = db.pool().acquire().await?;
    let Some(mut reservation) = load(&mut conn, id).await? else {
        return Ok(None);
    };
    // Every carve a child, released or not: a released child's units went back into the
    // parent, but its order was made.
    let carved: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(ci.quantity), 0)::int8 FROM reservations c
           JOIN reservation_items ci ON ci.reservation_id = c.id WHERE c.parent_id = $1",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    reservation.carved = Some(carved);
    Ok(Some(reservation))
}

/// Reserves every item or none. Idempotent by reservation id: a repeat returns the existing
/// reservation (whatever its state), and a different request under the same id is refused.
pub async fn reserve(db: &Db, req: &NewReservation) -> Result<(Reservation, bool), StockError> {
    let mut tx = db.pool().begin().await?;
    // Claim the id first: concurrent repeats of one request queue on this row, and the loser
    // sees the winner's committed reservation.
    let claimed = sqlx::query(
        "INSERT INTO reservations (id, owner, reference, status, expires_at)
         VALUES ($1, $2, $3, 'reserved', now() + make_interval(secs => $4))
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(req.reservation_id)
    .bind(req.owner.as_str())
    .bind(&req.reference)
    .bind(req.ttl_secs as f64)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !claimed {
        tx.rollback().await?;
        return repeat_of(db, req.reservation_id, &req.items).await;
    }

    let (mut short, mut unknown) = (Vec::new(), Vec::new());
    for item in &req.items {
        // The guard is the whole oversell protection: the row lock orders concurrent
        // reservations of one SKU, and a reservation that would go below zero changes nothing.
        let updated = sqlx::query(
            "UPDATE stock SET available = available - $2, reserved = reserved + $2, updated_at = now()
              WHERE sku_id = $1 AND available >= $2",
        )
        .bind(item.sku_id)
        .bind(item.quantity)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM stock WHERE sku_id = $1)")
                .bind(item.sku_id)
                .fetch_one(&mut *tx)
                .await?;
            if exists {
                short.push(item.sku_id)
            } else {
                unknown.push(item.sku_id)
            }
        }
    }
    if !unknown.is_empty() {
        tx.rollback().await?;
        return Err(StockError::UnknownSkus(unknown));
    }
    if !short.is_empty() {
        // All or nothing: the rollback returns what the other lines took.
        tx.rollback().await?;
        return Err(StockError::OutOfStock(short));
    }
    record_lines(tx, req.reservation_id, &req.items, "reserve", &req.reference).await
}

/// Writes a new reservation's lines and their ledger rows, then commits.
async fn record_lines(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    items: &[Item],
    movement: &str,
    reference: &str,
) -> Result<(Reservation, bool), StockError> {
    for item in items {
        sqlx::query("INSERT INTO reservation_items (reservation_id, sku_id, quantity) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(item.sku_id)
            .bind(item.quantity)
            .execute(&mut *tx)
            .await?;
        ledger(&mut tx, item.sku_id, movement, item.quantity, Some(id), reference).await?;
    }
    let created = load(&mut tx, id).await?.ok_or(StockError::NotFound)?;
    tx.commit().await?;
    Ok((created, true))
}

/// The reservation already under `id`, when a request with that id comes again: the same
/// items are a repeat (answered with what exists), other items a misuse of the id.
async fn repeat_of(db: &Db, id: Uuid, items: &[Item]) -> Result<(Reservation, bool), StockError> {
    let existing = reservation(db, id).await?.ok_or(StockError::NotFound)?;
    if existing.items != items {
        return Err(StockError::Mismatch(id));
    }
    Ok((existing, false))
}

/// Why a guarded transition moved nothing: no such reservation, the same transition made
/// before (`false`), or the other one ([`StockError::WrongState`]).
async fn unmoved(conn: &mut PgConnection, id: Uuid, to: ReservationStatus) -> Result<bool, StockError> {
    let current: Option<String> = sqlx::query_scalar("SELECT status FROM reservations WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    match current.as_deref().and_then(ReservationStatus::parse) {
        None => Err(StockError::NotFound),
        Some(s) if s == to => Ok(false),
        Some(s) => Err(StockError::WrongState(s)),
    }
}

/// Puts `qty` units of `sku` back into the reservation `parent` (a session's).
async fn return_to(conn: &mut PgConnection, parent: Uuid, sku: i64, qty: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE reservation_items SET quantity = quantity + $3
          WHERE reservation_id = $1 AND sku_id = $2",
    )
    .bind(parent)
    .bind(sku)
    .bind(qty)
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves a reservation out of `reserved` exactly once: to `confirmed` (reserved -> sold) or
/// `released` (reserved -> available). Repeating the same transition is a no-op that returns
/// `false`; the other transition after one happened is [`StockError::WrongState`].
pub async fn settle(
    conn: &mut PgConnection,
    id: Uuid,
    to: ReservationStatus,
    reason: &str,
) -> Result<bool, StockError> {
    let (status, movement, counters) = match to {
        ReservationStatus::Confirmed => (
            "confirmed",
            "confirm",
            "reserved = reserved - $2, sold = sold + $2",
        ),
        ReservationStatus::Released => (
            "released",
            "release",
            "reserved = reserved - $2, available = available + $2",
        ),
        ReservationStatus::Reserved => return Err(StockError::WrongState(ReservationStatus::Reserved)),
    };
    // The guarded transition is the idempotency: only one statement ever sees 'reserved'.
    let moved = sqlx::query(
        "UPDATE reservations SET status = $2, updated_at = now() WHERE id = $1 AND status = 'reserved'",
    )
    .bind(id)
    .bind(status)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if !moved {
        return unmoved(conn, id, to).await;
    }
    // A flash order's reservation released while its session's reservation still holds goes
    // back into the session (the unit is for sale there again), not to available stock.
    let parent: Option<Uuid> = if to == ReservationStatus::Released {
        sqlx::query_scalar(
            "SELECT p.id FROM reservations c JOIN reservations p ON p.id = c.parent_id
              WHERE c.id = $1 AND p.status = 'reserved' FOR UPDATE OF p",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    } else {
        None
    };
    let items = sqlx::query(
        "SELECT sku_id, quantity FROM reservation_items
          WHERE reservation_id = $1 AND quantity > 0 ORDER BY sku_id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    if let Some(parent) = parent {
        for row in items {
            let (sku, qty): (i64, i64) = (row.get("sku_id"), row.get("quantity"));
            return_to(conn, parent, sku, qty).await?;
            ledger(conn, sku, "return", qty, Some(id), reason).await?;
        }
        return Ok(true);
    }
    for row in items {
        let (sku, qty): (i64, i64) = (row.get("sku_id"), row.get("quantity"));
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE stock SET {counters}, updated_at = now() WHERE sku_id = $1"
        )))
        .bind(sku)
        .bind(qty)
        .execute(&mut *conn)
        .await?;
        ledger(conn, sku, movement, qty, Some(id), reason).await?;
    }
    Ok(true)
}

/// Moves `req.quantity` units of `req.sku_id` out of the reservation `parent` (a flash-sale
/// session item's) into a new reservation of an order, `req.reservation_id`. Idempotent by that
/// id: a repeat returns the existing child. The stock counters do not move (the units stay
/// reserved); the child is confirmed or released later like any order's reservation.
pub async fn carve(db: &Db, parent: Uuid, req: &Carve) -> Result<(Reservation, bool), StockError> {
    let mut tx = db.pool().begin().await?;
    // The parent's row lock orders concurrent carves of one session item.
    let parent_status: Option<String> =
        sqlx::query_scalar("SELECT status FROM reservations WHERE id = $1 FOR UPDATE")
            .bind(parent)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(parent_status) = parent_status else {
        return Err(StockError::NotFound);
    };
    let claimed = sqlx::query(
        "INSERT INTO reservations (id, owner, reference, status, expires_at, parent_id)
         VALUES ($1, 'order', $2, 'reserved', now() + make_interval(secs => $3), $4)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(req.reservation_id)
    .bind(&req.reference)
    .bind(req.ttl_secs as f64)
    .bind(parent)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    let want = vec![Item {
        sku_id: req.sku_id,
        quantity: req.quantity,
    }];
    if !claimed {
        tx.rollback().await?;
        return repeat_of(db, req.reservation_id, &want).await;
    }
    match ReservationStatus::parse(&parent_status) {
        Some(ReservationStatus::Reserved) => {}
        other => {
            tx.rollback().await?;
            return Err(StockError::WrongState(
                other.unwrap_or(ReservationStatus::Released),
            ));
        }
    }
    let taken = sqlx::query(
        "UPDATE reservation_items SET quantity = quantity - $3
          WHERE reservation_id = $1 AND sku_id = $2 AND quantity >= $3",
    )
    .bind(parent)
    .bind(req.sku_id)
    .bind(req.quantity)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if taken == 0 {
        tx.rollback().await?;
        // Redis admitted a buyer the session holds no unit for: the last guard held, but
        // someone was told 202 in vain.
        metrics::counter!("inventory_oversell_refused_total").increment(1);
        return Err(StockError::OutOfStock(vec![req.sku_id]));
    }
    record_lines(tx, req.reservation_id, &want, "carve", &req.reference).await
}

/// [`settle`] in a transaction of its own.
pub async fn settle_now(db: &Db, id: Uuid, to: ReservationStatus, reason: &str) -> Result<bool, StockError> {
    let mut tx = db.pool().begin().await?;
    let moved = settle(&mut tx, id, to, reason).await?;
    tx.commit().await?;
    Ok(moved)
}

/// Applies an event's effect and records its id in the inbox in one transaction; a repeated
/// event id changes nothing. Returns whether the effect was applied now.
pub async fn apply_event(
    db: &Db,
    consumer: &str,
    event_id: Uuid,
    reservation: Uuid,
    to: ReservationStatus,
    reason: &str,
) -> Result<bool, StockError> {
    let mut tx = db.pool().begin().await?;
    let fresh = sqlx::query("INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(consumer)
        .bind(event_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if !fresh {
        tx.rollback().await?;
        return Ok(false);
    }
    let moved = settle(&mut tx, reservation, to, reason).await?;
    tx.commit().await?;
    Ok(moved)
}

/// Releases up to `batch` reservations past their expiry that are still holding stock.
/// Several instances may sweep at once: `SKIP LOCKED` gives each row to one of them.
pub async fn sweep_expired(db: &Db, batch: i64) -> Result<u64, StockError> {
    let mut released = 0;
    let mut tx = db.pool().begin().await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM reservations WHERE status = 'reserved' AND expires_at < now()
          ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    for id in ids {
        if settle(&mut tx, id, ReservationStatus::Released, "expired").await? {
            released += 1;
        }
    }
    tx.commit().await?;
    Ok(released)
}
