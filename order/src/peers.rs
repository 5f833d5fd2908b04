//! Calls to the product and inventory services over HTTP (their `/internal/...` endpoints),
//! through [`mall_common::peer`] (trace context injected, fail-over across instances).

use std::time::Duration;

use mall_common::peer::{Peer, client};
use serde::Deserialize;
use serde_json::Value;
use url::Url;
use uuid::Uuid;

use crate::domain::Item;

pub use mall_common::peer::Unreachable;

/// The services the order service calls.
pub struct Peers {
    product: Peer,
    inventory: Peer,
}

/// A SKU's current price from the product service.
#[derive(Debug, Clone, Deserialize)]
pub struct Price {
    /// SKU.
    pub sku_id: i64,
    /// Cents.
    pub price_cents: i64,
    /// `on_sale` or `delisted`.
    pub status: String,
}

/// The inventory's answer to a reservation.
#[derive(Debug)]
pub enum Reserved {
    /// Held (newly or already): the reservation's status.
    Held(String),
    /// Not enough stock of these SKUs; nothing is held.
    OutOfStock(Vec<i64>),
    /// These SKUs have no stock record.
    UnknownSkus(Vec<i64>),
}

/// The inventory's answer to carving a flash order's units out of a session's reservation.
#[derive(Debug)]
pub enum Carved {
    /// Held under the order's own reservation (newly or already): its status.
    Held(String),
    /// The session's reservation cannot give these units (ended, or not enough left); the
    /// answer's code and message.
    Refused(String),
}

impl Peers {
    /// Clients for the given instances.
    pub fn new(product: Vec<Url>, inventory: Vec<Url>, timeout: Duration) -> Self {
        let http = client(timeout);
        Self {
            product: Peer::new("product", http.clone(), product),
            inventory: Peer::new("inventory", http, inventory),
        }
    }

    /// Current prices of `skus` (unknown ids are absent).
    pub async fn prices(&self, skus: &[i64]) -> Result<Vec<Price>, Unreachable> {
        #[derive(Deserialize)]
        struct Answer {
            prices: Vec<Price>,
        }
        let (status, body) = self
            .product
            .post("/internal/prices", &serde_json::json!({ "sku_ids": skus }))
            .await?;
        if status != 200 {
            return Err(Unreachable::unexpected("product", status, &body));
        }
        Ok(self.product.parse::<Answer>(status, body)?.prices)
    }

    /// Reserves `items` under `reservation_id` for `ttl_secs`.
    pub async fn reserve(
        &self,
        reservation_id: Uuid,
        reference: &str,
        items: &[Item],
        ttl_secs: u64,
    ) -> Result<Reserved, Unreachable> {
        let req = serde_json::json!({
            "reservation_id": reservation_id,
            "owner": "order",
            "reference": reference,
            "items": items,
            "ttl_secs": ttl_secs,
        });
        let (status, body) = self.inventory.post("/internal/reservations", &req).await?;
        let skus = |b: &Value| -> Vec<i64> {
            b["skus"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default()
        };
        match (status, body["code"].as_str()) {
            (200 | 201, _) => Ok(Reserved::Held(body["status"].as_str().unwrap_or("").to_owned())),
            (409, Some("out_of_stock")) => Ok(Reserved::OutOfStock(skus(&body))),
            (422, Some("unknown_sku")) => Ok(Reserved::UnknownSkus(skus(&body))),
            _ => Err(Unreachable::unexpected("inventory", status, &body)),
        }
    }

    /// Moves `quantity` units of `sku` from the flash-sale reservation `parent` into the order's
    /// own reservation `reservation_id` (idempotent by that id).
    pub async fn carve(
        &self,
        parent: Uuid,
        reservation_id: Uuid,
        reference: &str,
        sku: i64,
        quantity: i64,
        ttl_secs: u64,
    ) -> Result<Carved, Unreachable> {
        let req = serde_json::json!({
            "reservation_id": reservation_id,
            "reference": reference,
            "sku_id": sku,
            "quantity": quantity,
            "ttl_secs": ttl_secs,
        });
        let (status, body) = self
            .inventory
            .post(&format!("/internal/reservations/{parent}/carve"), &req)
            .await?;
        match status {
            200 | 201 => Ok(Carved::Held(body["status"].as_str().unwrap_or("").to_owned())),
            404 | 409 | 422 => Ok(Carved::Refused(format!(
                "{}: {}",
                body["code"].as_str().unwrap_or("?"),
                body["message"].as_str().unwrap_or("")
            ))),
            _ => Err(Unreachable::unexpected("inventory", status, &body)),
        }
    }

    /// Available units of a SKU (`None` if inventory has no record of it).
    pub async fn available(&self, sku: i64) -> Result<Option<i64>, Unreachable> {
        let (status, body) = self.inventory.get(&format!("/api/stock/{sku}")).await?;
        match status {
            404 => Ok(None),
            200 => Ok(body["available"].as_i64()),
            _ => Err(Unreachable::unexpected("inventory", status, &body)),
        }
    }
}
