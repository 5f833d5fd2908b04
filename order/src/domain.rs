//! Order rules: checkout requests, their fingerprint, order states, payment callbacks and their
//! signatures. No HTTP, SQL or AMQP here.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

pub use mall_common::error::ValidationError;
use mall_common::error::invalid;

/// One line of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// SKU.
    pub sku_id: i64,
    /// Units.
    pub quantity: i64,
}

/// `POST /api/orders`: explicit items, or the cart.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    /// The lines to buy.
    #[serde(default)]
    pub items: Option<Vec<Item>>,
    /// Buy what is in the cart instead.
    #[serde(default)]
    pub from_cart: bool,
}

/// The most units of one SKU in one order.
pub const MAX_UNITS: i64 = 99;

/// One line per SKU, sorted, each within 1..=99 units, 1..=50 lines.
pub fn normalize(mut items: Vec<Item>) -> Result<Vec<Item>, ValidationError> {
    if items.is_empty() || items.len() > 50 {
        return Err(invalid("items", "between 1 and 50 lines"));
    }
    for i in &items {
        if i.sku_id <= 0 {
            return Err(invalid("items[].sku_id", "must be a positive id"));
        }
        if i.quantity <= 0 || i.quantity > MAX_UNITS {
            return Err(invalid("items[].quantity", "between 1 and 99 units"));
        }
    }
    items.sort_by_key(|i| i.sku_id);
    let mut merged: Vec<Item> = Vec::with_capacity(items.len());
    for i in items {
        match merged.last_mut() {
            Some(last) if last.sku_id == i.sku_id => {
                last.quantity += i.quantity;
                if last.quantity > MAX_UNITS {
                    return Err(invalid("items[].quantity", "between 1 and 99 units"));
                }
            }
            _ => merged.push(i),
        }
    }
    Ok(merged)
}

/// The fingerprint of a checkout: the same key with another fingerprint is refused.
pub fn request_hash(items: &[Item]) -> String {
    let canonical = serde_json::to_vec(items).expect("items serialize");
    mall_common::identity::to_hex(&Sha256::digest(canonical))
}

/// An order's state. `PendingPayment` moves once: to `Paid` or to `Cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Waiting for payment until `expires_at`.
    PendingPayment,
    /// Paid; its stock is sold.
    Paid,
    /// Cancelled by the buyer or by timeout; its stock is released.
    Cancelled,
}

/// What the payment provider reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Money was taken.
    Succeeded,
    /// It was not.
    Failed,
}

/// `POST /api/payments/callback`, signed with `X-Signature: hex(HMAC-SHA256(secret, body))`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentCallback {
    /// The provider's id for this payment (a repeat is a no-op).
    pub payment_id: String,
    /// The order paid for.
    pub order_id: Uuid,
    /// Amount in cents.
    pub amount_cents: i64,
    /// Outcome.
    pub status: PaymentStatus,
}

type HmacSha256 = Hmac<Sha256>;

/// The signature of a callback body.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mall_common::identity::to_hex(&mac.finalize().into_bytes())
}

/// Whether `signature` (hex) signs `body`; compared in constant time.
pub fn verify(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(sig) = mall_common::identity::from_hex(signature.trim()) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_merged_and_bounded() {
        let items = normalize(vec![
            Item {
                sku_id: 5,
                quantity: 1,
            },
            Item {
                sku_id: 2,
                quantity: 2,
            },
            Item {
                sku_id: 5,
                quantity: 3,
            },
        ])
        .unwrap();
        assert_eq!(
            items,
            vec![
                Item {
                    sku_id: 2,
                    quantity: 2
                },
                Item {
                    sku_id: 5,
                    quantity: 4
                }
            ]
        );
        assert!(
            normalize(vec![Item {
                sku_id: 1,
                quantity: 0
            }])
            .is_err()
        );
        assert!(
            normalize(vec![Item {
                sku_id: 1,
                quantity: -1
            }])
            .is_err()
        );
        assert!(
            normalize(vec![
                Item {
                    sku_id: 1,
                    quantity: 60
                },
                Item {
                    sku_id: 1,
                    quantity: 60
                }
            ])
            .is_err()
        );
        assert!(normalize(vec![]).is_err());
        assert_eq!(request_hash(&items), request_hash(&items.clone()));
    }

    #[test]
    fn signatures_verify_only_with_the_secret_and_the_exact_body() {
        let sig = sign(b"s", b"{\"a\":1}");
        assert!(verify(b"s", b"{\"a\":1}", &sig));
        assert!(!verify(b"t", b"{\"a\":1}", &sig));
        assert!(!verify(b"s", b"{\"a\":2}", &sig));
        assert!(!verify(b"s", b"{\"a\":1}", "nothex"));
    }
}
