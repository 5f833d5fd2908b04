//! Stock rules: quantities, reservation requests and states. No HTTP, SQL or AMQP here.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use mall_common::error::ValidationError;
use mall_common::error::invalid;

/// The most units one movement may carry (guards against typos like 10000000000).
pub const MAX_QUANTITY: i64 = 1_000_000_000;

/// Checks a quantity: a positive whole number of units.
pub fn quantity(field: &'static str, q: i64) -> Result<i64, ValidationError> {
    if q <= 0 {
        return Err(invalid(field, "must be a positive number of units"));
    }
    if q > MAX_QUANTITY {
        return Err(invalid(field, "is implausibly large"));
    }
    Ok(q)
}

/// Who holds a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    /// An order.
    Order,
    /// A flash-sale session item.
    Flashsale,
}

impl Owner {
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Flashsale => "flashsale",
        }
    }
}

/// A reservation's state. `Reserved` moves once, to `Confirmed` (sold) or `Released`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    /// Holding stock.
    Reserved,
    /// Sold.
    Confirmed,
    /// Returned to available stock.
    Released,
}

impl ReservationStatus {
    /// Parses the database spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reserved" => Some(Self::Reserved),
            "confirmed" => Some(Self::Confirmed),
            "released" => Some(Self::Released),
            _ => None,
        }
    }
}

/// One line of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// SKU.
    pub sku_id: i64,
    /// Units.
    pub quantity: i64,
}

/// `POST /internal/reservations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReservation {
    /// Chosen by the caller: the same id twice reserves once.
    pub reservation_id: Uuid,
    /// Who holds it.
    pub owner: Owner,
    /// The caller's reference (an order id, a session item).
    pub reference: String,
    /// What to hold, all or nothing.
    pub items: Vec<Item>,
    /// How long it holds before the sweeper may release it.
    pub ttl_secs: u64,
}

/// `POST /internal/reservations/{parent}/carve`: a flash order's units out of its session's
/// reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Carve {
    /// The new (child) reservation's id, chosen by the caller: the same id twice carves once.
    pub reservation_id: Uuid,
    /// The caller's reference (the order).
    pub reference: String,
    /// The SKU.
    pub sku_id: i64,
    /// Units.
    pub quantity: i64,
    /// How long the child holds before the sweeper may release it (back into the parent).
    pub ttl_secs: u64,
}

impl Carve {
    /// Validates.
    pub fn validated(self) -> Result<Self, ValidationError> {
        if self.reference.trim().is_empty() || self.reference.len() > 200 {
            return Err(invalid("reference", "between 1 and 200 characters"));
        }
        if self.ttl_secs == 0 || self.ttl_secs > 30 * 24 * 3600 {
            return Err(invalid("ttl_secs", "between 1 second and 30 days"));
        }
        if self.sku_id <= 0 {
            return Err(invalid("sku_id", "must be a positive id"));
        }
        quantity("quantity", self.quantity)?;
        Ok(self)
    }
}

impl NewReservation {
    /// Validates and normalises: one line per SKU (quantities summed), sorted by SKU id, so
    /// concurrent reservations lock rows in the same order and cannot deadlock.
    pub fn normalized(mut self) -> Result<Self, ValidationError> {
        if self.items.is_empty() || self.items.len() > 100 {
            return Err(invalid("items", "between 1 and 100 lines"));
        }
        if self.reference.trim().is_empty() || self.reference.len() > 200 {
            return Err(invalid("reference", "between 1 and 200 characters"));
        }
        if self.ttl_secs == 0 || self.ttl_secs > 30 * 24 * 3600 {
            return Err(invalid("ttl_secs", "between 1 second and 30 days"));
        }
        for item in &self.items {
            if item.sku_id <= 0 {
                return Err(invalid("items[].sku_id", "must be a positive id"));
            }
            quantity("items[].quantity", item.quantity)?;
        }
        self.items.sort_by_key(|i| i.sku_id);
        let mut merged: Vec<Item> = Vec::with_capacity(self.items.len());
        for item in self.items {
            match merged.last_mut() {
                Some(last) if last.sku_id == item.sku_id => {
                    last.quantity = quantity("items[].quantity", last.quantity + item.quantity)?;
                }
                _ => merged.push(item),
            }
        }
        self.items = merged;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(items: Vec<Item>) -> NewReservation {
        NewReservation {
            reservation_id: Uuid::nil(),
            owner: Owner::Order,
            reference: "o-1".into(),
            items,
            ttl_secs: 60,
        }
    }

    #[test]
    fn lines_are_merged_sorted_and_checked() {
        let r = req(vec![
            Item {
                sku_id: 9,
                quantity: 1,
            },
            Item {
                sku_id: 2,
                quantity: 1,
            },
            Item {
                sku_id: 9,
                quantity: 2,
            },
        ])
        .normalized()
        .unwrap();
        assert_eq!(
            r.items,
            vec![
                Item {
                    sku_id: 2,
                    quantity: 1
                },
                Item {
                    sku_id: 9,
                    quantity: 3
                }
            ]
        );
        assert!(
            req(vec![Item {
                sku_id: 1,
                quantity: 0
            }])
            .normalized()
            .is_err()
        );
        assert!(
            req(vec![Item {
                sku_id: 1,
                quantity: -3
            }])
            .normalized()
            .is_err()
        );
        assert!(
            req(vec![Item {
                sku_id: 0,
                quantity: 1
            }])
            .normalized()
            .is_err()
        );
        assert!(req(vec![]).normalized().is_err());
    }
}
