//! Order events: `order.paid` confirms the order's reservation (reserved -> sold),
//! `order.cancelled` releases it (reserved -> available). Each event is applied once: its id
//! goes into the inbox in the same transaction as the effect, and the delivery is acked only
//! after that commit.

use lapin::message::Delivery;
use mall_common::amqp::consumer::Outcome;
use mall_common::db::Db;
use mall_common::events::{ORDER_CANCELLED, ORDER_PAID, OrderCancelled, OrderPaid};

use crate::domain::ReservationStatus;
use crate::store::{self, StockError};

/// The queue of order events this service consumes.
pub const ORDER_EVENTS_QUEUE: &str = "inventory.order-events";
/// Its name in the inbox.
pub const CONSUMER: &str = "inventory.order-events";

/// Handles one delivery.
pub async fn handle(db: &Db, delivery: &Delivery) -> Outcome {
    let (event_id, reservation, to) = match delivery.routing_key.as_str() {
        ORDER_PAID => match serde_json::from_slice::<OrderPaid>(&delivery.data) {
            Ok(e) => (e.event_id, e.reservation_id, ReservationStatus::Confirmed),
            Err(e) => return Outcome::Poison(format!("bad order.paid payload: {e}")),
        },
        ORDER_CANCELLED => match serde_json::from_slice::<OrderCancelled>(&delivery.data) {
            Ok(e) => (e.event_id, e.reservation_id, ReservationStatus::Released),
            Err(e) => return Outcome::Poison(format!("bad order.cancelled payload: {e}")),
        },
        other => return Outcome::Poison(format!("unexpected routing key {other}")),
    };
    let reason = format!("{} event {event_id}", delivery.routing_key);
    match store::apply_event(db, CONSUMER, event_id, reservation, to, &reason).await {
        Ok(_) => Outcome::Done,
        // A reservation that does not exist, or is already in the other state, can never be
        // settled by retrying: dead-letter it for a human to look at.
        Err(e @ (StockError::NotFound | StockError::WrongState(_))) => Outcome::Poison(e.to_string()),
        Err(e) => Outcome::Retry(e.to_string()),
    }
}
