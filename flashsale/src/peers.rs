//! The inventory calls of the flash sale: one reservation per session item at creation, and
//! its release when the session is settled, once every admission's order has carved its units.

use mall_common::peer::{Peer, Unreachable};
use serde_json::{Value, json};
use uuid::Uuid;

/// Inventory's answer to a session item's reservation.
#[derive(Debug)]
pub enum Reserved {
    /// Held (newly, or by an earlier try with the same id).
    Held,
    /// Too little available stock.
    OutOfStock,
    /// Inventory has no stock record of the SKU.
    UnknownSku,
}

/// Reserves `quantity` of `sku` under `id` for `ttl_secs`.
pub async fn reserve(
    inventory: &Peer,
    id: Uuid,
    reference: &str,
    sku: i64,
    quantity: i64,
    ttl_secs: u64,
) -> Result<Reserved, Unreachable> {
    let req = json!({
        "reservation_id": id,
        "owner": "flashsale",
        "reference": reference,
        "items": [{ "sku_id": sku, "quantity": quantity }],
        "ttl_secs": ttl_secs,
    });
    let (status, body) = inventory.post("/internal/reservations", &req).await?;
    match (status, body["code"].as_str()) {
        (200 | 201, _) if body["status"] == "reserved" => Ok(Reserved::Held),
        (409, Some("out_of_stock")) => Ok(Reserved::OutOfStock),
        (422, Some("unknown_sku")) => Ok(Reserved::UnknownSku),
        _ => Err(Unreachable::unexpected("inventory", status, &body)),
    }
}

/// Releases the reservation `id` (what it still holds goes back to available stock). Done
/// when released now or before; an unknown id is done too (the reservation was never made).
pub async fn release(inventory: &Peer, id: Uuid) -> Result<(), Unreachable> {
    let (status, body): (u16, Value) = inventory
        .post(&format!("/internal/reservations/{id}/release"), &json!({}))
        .await?;
    match status {
        200 | 404 => Ok(()),
        _ => Err(Unreachable::unexpected("inventory", status, &body)),
    }
}

/// Units the orders have carved out of the reservation `id` so far, while it still holds
/// units; `None` when it no longer does (never made, or released by inventory's sweeper after
/// its time ran out): no order can carve from it any more, so there is nothing to wait for.
pub async fn carved(inventory: &Peer, id: Uuid) -> Result<Option<i64>, Unreachable> {
    let (status, body) = inventory.get(&format!("/internal/reservations/{id}")).await?;
    match (status, body["status"].as_str(), body["carved"].as_i64()) {
        (200, Some("reserved"), Some(carved)) => Ok(Some(carved)),
        (200, Some(_), Some(_)) | (404, _, _) => Ok(None),
        _ => Err(Unreachable::unexpected("inventory", status, &body)),
    }
}
