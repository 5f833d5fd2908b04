//! Stock SQL. Every movement is one transaction that updates the counters with a conditional
//! statement (the row lock serialises concurrent movements of one SKU; the `WHERE available >=`
//! guard and the table's CHECKs make overselling impossible) and writes its ledger rows.

mod reservations;
mod stock;

use uuid::Uuid;

use crate::domain::ReservationStatus;

pub use reservations::*;
pub use stock::*;

/// Why a stock operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StockError {
    /// Some SKUs have too little available stock; nothing was reserved.
    #[error("out of stock: {0:?}")]
    OutOfStock(Vec<i64>),
    /// Some SKUs have no stock record at all.
    #[error("unknown SKUs: {0:?}")]
    UnknownSkus(Vec<i64>),
    /// No such reservation.
    #[error("no such reservation")]
    NotFound,
    /// The same id was used for a different request.
    #[error("reservation {0} exists with different items")]
    Mismatch(Uuid),
    /// The transition is not possible from the current state (e.g. release after confirm).
    #[error("reservation is {0:?}")]
    WrongState(ReservationStatus),
    /// A database failure.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}
