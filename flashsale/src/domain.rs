//! Sessions as an admin creates them, and the purchase tokens buyers get.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use mall_common::error::{ValidationError, invalid};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;

/// Most items one session may hold.
pub const MAX_ITEMS: usize = 50;
/// Longest session window.
pub const MAX_WINDOW_SECS: i64 = 7 * 24 * 3600;
/// Most units of one item (and most units one purchase may ask for).
pub const MAX_QUANTITY: i64 = 1_000_000;

/// `POST /admin/flashsale/sessions`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    /// When buying opens (RFC 3339).
    pub starts_at: DateTime<Utc>,
    /// When buying closes (RFC 3339).
    pub ends_at: DateTime<Utc>,
    /// What is on sale.
    pub items: Vec<NewItem>,
}

/// One item of a new session.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    /// The SKU (must have stock at inventory).
    pub sku_id: i64,
    /// The flash price per unit, in cents.
    pub price_cents: i64,
    /// Units for sale, reserved out of inventory at creation.
    pub quantity: i64,
    /// Most units one buyer may get.
    pub per_user_limit: i64,
}

impl NewSession {
    /// Checks the window and the items against `now`; sorts items by SKU.
    pub fn validated(mut self, now: DateTime<Utc>) -> Result<Self, ValidationError> {
        if self.ends_at <= self.starts_at {
            return Err(invalid("ends_at", "must be after starts_at"));
        }
        if self.ends_at <= now {
            return Err(invalid("ends_at", "must be in the future"));
        }
        if (self.ends_at - self.starts_at).num_seconds() > MAX_WINDOW_SECS {
            return Err(invalid("ends_at", "a session lasts at most 7 days"));
        }
        if self.items.is_empty() || self.items.len() > MAX_ITEMS {
            return Err(invalid("items", "between 1 and 50 items"));
        }
        for item in &self.items {
            if item.sku_id <= 0 {
                return Err(invalid("items[].sku_id", "must be a positive id"));
            }
            if item.price_cents <= 0 || item.price_cents > 1_000_000_000 {
                return Err(invalid("items[].price_cents", "between 1 and 1000000000"));
            }
            if item.quantity <= 0 || item.quantity > MAX_QUANTITY {
                return Err(invalid("items[].quantity", "between 1 and 1000000"));
            }
            if item.per_user_limit <= 0 || item.per_user_limit > item.quantity {
                return Err(invalid(
                    "items[].per_user_limit",
                    "between 1 and the item's quantity",
                ));
            }
        }
        self.items.sort_by_key(|i| i.sku_id);
        if self.items.windows(2).any(|w| w[0].sku_id == w[1].sku_id) {
            return Err(invalid("items[].sku_id", "each SKU at most once per session"));
        }
        Ok(self)
    }
}

type HmacSha256 = Hmac<Sha256>;

/// The purchase-token secret, ready to sign and verify: the HMAC with the key already absorbed,
/// so a token does not hash the key's two blocks again (one verification per purchase).
#[derive(Clone)]
pub struct TokenKey(HmacSha256);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// Prepares `secret` (`MALL_FLASHSALE_TOKEN_SECRET`).
    pub fn new(secret: &[u8]) -> Self {
        Self(HmacSha256::new_from_slice(secret).expect("HMAC takes any key length"))
    }

    fn mac(&self, user: &str, session: i64, sku: i64, exp_ms: i64) -> HmacSha256 {
        let mut mac = self.0.clone();
        // The user id is the only free-form field and is length-prefixed, so no two (user,
        // session, SKU, expiry) tuples sign the same message.
        mac.update(format!("v1|{}:{user}|{session}|{sku}|{exp_ms}", user.len()).as_bytes());
        mac
    }

    /// A purchase token: `<expiry unix ms>.<hex HMAC-SHA256 over user, session, SKU, expiry>`.
    pub fn sign(&self, user: &str, session: i64, sku: i64, exp_ms: i64) -> String {
        let tag = self.mac(user, session, sku, exp_ms).finalize().into_bytes();
        format!("{exp_ms}.{}", mall_common::identity::to_hex(&tag))
    }

    /// Whether `token` was signed by us for exactly this user, session and SKU, and has not
    /// expired at `now_ms`. The comparison is constant-time.
    pub fn verify(&self, token: &str, user: &str, session: i64, sku: i64, now_ms: i64) -> bool {
        let Some((exp, tag)) = token.split_once('.') else {
            return false;
        };
        let (Ok(exp_ms), Some(tag)) = (
            exp.parse::<i64>(),
            mall_common::identity::hex_array::<32>(tag.as_bytes()),
        ) else {
            return false;
        };
        if exp_ms < now_ms {
            return false;
        }
        self.mac(user, session, sku, exp_ms).verify_slice(&tag).is_ok()
    }
}

/// `POST /api/flashsale/purchase`. The text fields borrow from the body where they can (a token
/// and a request id never need unescaping): a late buyer's request is parsed without allocating.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Purchase<'a> {
    /// The session.
    pub session_id: i64,
    /// The SKU.
    pub sku_id: i64,
    /// Units (1 up to the per-user limit).
    pub quantity: i64,
    /// From `POST /api/flashsale/sessions/{session_id}/items/{sku_id}/token`.
    #[serde(borrow)]
    #[schema(value_type = String)]
    pub token: Cow<'a, str>,
    /// Chosen by the client, 1 to 64 of `A-Z a-z 0-9 - _`; a retry with the same id gets the
    /// first answer.
    #[serde(borrow)]
    #[schema(value_type = String)]
    pub request_id: Cow<'a, str>,
}

impl<'a> Purchase<'a> {
    /// Reads a body.
    pub fn from_json(body: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }

    /// Checks the shape of the fields (the script checks the rest).
    pub fn validated(self) -> Result<Self, ValidationError> {
        if self.session_id <= 0 || self.sku_id <= 0 {
            return Err(invalid(
                "session_id",
                "session_id and sku_id must be positive ids",
            ));
        }
        if self.quantity <= 0 || self.quantity > MAX_QUANTITY {
            return Err(invalid("quantity", "must be a positive number of units"));
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if self.request_id.is_empty() || self.request_id.len() > 64 || !self.request_id.chars().all(ok) {
            return Err(invalid("request_id", "1 to 64 of A-Z a-z 0-9 - _"));
        }
        if self.token.is_empty() || self.token.len() > 200 {
            return Err(invalid("token", "missing or malformed"));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_only_for_its_user_session_sku_and_before_expiry() {
        let t = TokenKey::new(b"k").sign("42", 1, 7, 1_000);
        assert_eq!(
            t,
            TokenKey::new(b"k").sign("42", 1, 7, 1_000),
            "a prepared key signs alike"
        );
        let hex_tag = t.split_once('.').map(|(_, tag)| tag.len());
        assert_eq!(hex_tag, Some(64));
        assert!(TokenKey::new(b"k").verify(&t, "42", 1, 7, 999));
        assert!(TokenKey::new(b"k").verify(&t, "42", 1, 7, 1_000));
        assert!(!TokenKey::new(b"k").verify(&t, "42", 1, 7, 1_001), "expired");
        assert!(!TokenKey::new(b"k").verify(&t, "43", 1, 7, 0), "another user");
        assert!(!TokenKey::new(b"k").verify(&t, "42", 2, 7, 0), "another session");
        assert!(!TokenKey::new(b"k").verify(&t, "42", 1, 8, 0), "another SKU");
        assert!(!TokenKey::new(b"other").verify(&t, "42", 1, 7, 0), "another key");
        let later = t.replacen("1000.", "9000.", 1);
        assert!(
            !TokenKey::new(b"k").verify(&later, "42", 1, 7, 0),
            "an extended expiry"
        );
        assert!(!TokenKey::new(b"k").verify("garbage", "42", 1, 7, 0));
        assert!(!TokenKey::new(b"k").verify("1000.zz", "42", 1, 7, 0));
        let upper = t.to_uppercase();
        assert!(
            TokenKey::new(b"k").verify(&upper, "42", 1, 7, 0),
            "hex in either case"
        );
    }

    #[test]
    fn user_ids_cannot_be_shifted_into_other_fields() {
        // "4|2" as a user with session 1 must not equal user "4" with other fields.
        let a = TokenKey::new(b"k").sign("1|2", 3, 4, 5);
        assert!(!TokenKey::new(b"k").verify(&a, "1", 2, 3, 0));
    }

    fn session(items: Vec<NewItem>) -> NewSession {
        let now = Utc::now();
        NewSession {
            starts_at: now,
            ends_at: now + chrono::Duration::minutes(10),
            items,
        }
    }

    fn item(sku: i64, qty: i64, limit: i64) -> NewItem {
        NewItem {
            sku_id: sku,
            price_cents: 100,
            quantity: qty,
            per_user_limit: limit,
        }
    }

    #[test]
    fn sessions_are_validated() {
        let now = Utc::now();
        assert!(session(vec![item(2, 5, 1), item(1, 5, 5)]).validated(now).is_ok());
        assert!(session(vec![]).validated(now).is_err());
        assert!(
            session(vec![item(1, 5, 1), item(1, 5, 1)])
                .validated(now)
                .is_err()
        );
        assert!(
            session(vec![item(1, 5, 6)]).validated(now).is_err(),
            "limit above quantity"
        );
        assert!(session(vec![item(1, 0, 1)]).validated(now).is_err());
        assert!(session(vec![item(-1, 5, 1)]).validated(now).is_err());
        let mut s = session(vec![item(1, 5, 1)]);
        s.ends_at = s.starts_at;
        assert!(s.validated(now).is_err());
        let mut s = session(vec![item(1, 5, 1)]);
        s.ends_at = s.starts_at + chrono::Duration::days(8);
        assert!(s.validated(now).is_err());
    }
}
