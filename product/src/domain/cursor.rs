//! Keyset-pagination cursors: opaque to clients, checked when they come back.
//!
//! A cursor names the sort it belongs to and the last row's sort key and id; the next page
//! starts strictly after that row. It is hex-encoded JSON, opaque by contract, not by secrecy:
//! a tampered or foreign cursor is rejected with 400 `invalid_cursor`, never trusted.

use mall_common::identity::{from_hex, to_hex};
use serde::{Deserialize, Serialize};

use super::Sort;

/// The sort key of the last row of a page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SortKey {
    /// A price in cents.
    Int(i64),
    /// A relevance rank.
    Float(f64),
    /// A creation time, microseconds since the epoch.
    Time(i64),
}

/// Where the next page starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The sort this cursor belongs to.
    pub sort: Sort,
    /// The last row's sort key.
    pub key: SortKey,
    /// The last row's SPU id (ties on the key are broken by id).
    pub id: i64,
}

/// The cursor could not be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CursorError {
    /// Not a cursor this service made.
    #[error("the cursor is not valid")]
    Malformed,
    /// A cursor of another sort order.
    #[error("the cursor belongs to another sort order")]
    WrongSort,
}

impl Cursor {
    /// The opaque form.
    pub fn encode(&self) -> String {
        to_hex(&serde_json::to_vec(self).expect("cursors serialize"))
    }

    /// Parses a cursor and checks it belongs to `sort`.
    pub fn decode(raw: &str, sort: Sort) -> Result<Self, CursorError> {
        let bytes = from_hex(raw).ok_or(CursorError::Malformed)?;
        let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| CursorError::Malformed)?;
        if cursor.sort != sort {
            return Err(CursorError::WrongSort);
        }
        let key_fits = matches!(
            (sort, &cursor.key),
            (Sort::PriceAsc | Sort::PriceDesc, SortKey::Int(_))
                | (Sort::Relevance, SortKey::Float(_) | SortKey::Int(_))
                | (Sort::Newest, SortKey::Time(_) | SortKey::Int(_))
        );
        if !key_fits {
            return Err(CursorError::Malformed);
        }
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_tampering() {
        let c = Cursor {
            sort: Sort::PriceAsc,
            key: SortKey::Int(1999),
            id: 42,
        };
        let raw = c.encode();
        assert_eq!(Cursor::decode(&raw, Sort::PriceAsc), Ok(c));
        assert_eq!(Cursor::decode(&raw, Sort::Newest), Err(CursorError::WrongSort));
        assert_eq!(Cursor::decode("zz", Sort::PriceAsc), Err(CursorError::Malformed));
        assert_eq!(
            Cursor::decode(&to_hex(b"{}"), Sort::PriceAsc),
            Err(CursorError::Malformed)
        );
    }
}
