//! Event payloads shared between services (the contracts; DESIGN.md, "RabbitMQ topology").
//!
//! Every event carries its own `event_id` (consumers deduplicate on it) and is published to
//! `mall.<domain>.events` with the routing key `<entity>.<past tense>`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Exchange of order events.
pub const ORDER_EVENTS: &str = "mall.order.events";
/// Routing key of [`OrderPaid`].
pub const ORDER_PAID: &str = "order.paid";
/// Routing key of [`OrderCancelled`].
pub const ORDER_CANCELLED: &str = "order.cancelled";

/// An order was paid: its stock reservation becomes a sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPaid {
    /// Unique per event.
    pub event_id: Uuid,
    /// The order.
    pub order_id: Uuid,
    /// The inventory reservation holding the order's stock.
    pub reservation_id: Uuid,
}

/// An order was cancelled (by the buyer or by timeout): its reservation is released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// Unique per event.
    pub event_id: Uuid,
    /// The order.
    pub order_id: Uuid,
    /// The inventory reservation holding the order's stock.
    pub reservation_id: Uuid,
    /// Set when the order came from a flash sale: the flash-sale service gives the unit back to
    /// the session's stock and the buyer's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flash: Option<FlashRef>,
}

/// Which flash-sale admission an order came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlashRef {
    /// The session.
    pub session_id: i64,
    /// The SKU.
    pub sku_id: i64,
    /// The buyer.
    pub user_id: String,
    /// Units admitted.
    pub quantity: i64,
}

/// Exchange of flash-sale events.
pub const FLASHSALE_EVENTS: &str = "mall.flashsale.events";
/// Routing key of [`FlashAdmitted`].
pub const FLASHSALE_ADMITTED: &str = "flashsale.admitted";

/// A buyer was admitted by the flash-sale script: the order service creates the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlashAdmitted {
    /// Unique per event; the hand-off may publish one admission twice, with the same id.
    pub event_id: Uuid,
    /// The order to create (the buyer already has this id).
    pub order_id: Uuid,
    /// The session.
    pub session_id: i64,
    /// The SKU.
    pub sku_id: i64,
    /// The buyer.
    pub user_id: String,
    /// Units.
    pub quantity: i64,
    /// The flash price per unit.
    pub price_cents: i64,
    /// The session item's inventory reservation the units are carved from.
    pub reservation_id: Uuid,
    /// When the script admitted it, unix milliseconds.
    pub admitted_ms: i64,
}

/// Routing key of [`OrderTimeout`], after its delay.
pub const ORDER_TIMEOUT: &str = "order.timeout";

/// An order's payment window has passed: cancel it if it is still unpaid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderTimeout {
    /// Unique per event.
    pub event_id: Uuid,
    /// The order.
    pub order_id: Uuid,
}
