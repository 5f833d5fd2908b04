//! Products as clients write and query them, validated before anything touches storage.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Cursor, CursorError};

pub use mall_common::error::ValidationError;
use mall_common::error::invalid;

/// Whether a SKU can be bought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkuStatus {
    /// Listed and for sale.
    OnSale,
    /// Taken off sale; answers 404.
    Delisted,
}

impl SkuStatus {
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnSale => "on_sale",
            Self::Delisted => "delisted",
        }
    }
}

/// One SKU of a new product.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSku {
    /// e.g. "Red, M".
    pub title: String,
    /// Sale attributes, e.g. `{"colour": "red", "size": "M"}`.
    #[serde(default)]
    pub sale_attributes: BTreeMap<String, String>,
    /// Price in integer minor units, > 0.
    pub price_cents: i64,
}

/// `POST /admin/products`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    /// The product title.
    pub title: String,
    /// Longer text, searchable.
    #[serde(default)]
    pub description: String,
    /// A level-3 category.
    pub category_id: i64,
    /// An existing brand.
    pub brand_id: i64,
    /// Attribute values, e.g. `{"material": "cotton"}`.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Image URLs.
    #[serde(default)]
    pub images: Vec<String>,
    /// At least one SKU.
    pub skus: Vec<NewSku>,
}

fn check_title(field: &'static str, title: &str) -> Result<(), ValidationError> {
    let len = title.trim().chars().count();
    if len == 0 {
        return Err(invalid(field, "must not be empty"));
    }
    if len > 200 {
        return Err(invalid(field, "must be at most 200 characters"));
    }
    Ok(())
}

fn check_price(field: &'static str, cents: i64) -> Result<(), ValidationError> {
    if cents <= 0 {
        return Err(invalid(field, "must be a positive number of cents"));
    }
    if cents > 10_000_000_000 {
        return Err(invalid(field, "is implausibly large"));
    }
    Ok(())
}

impl NewProduct {
    /// Checks every rule a new product must keep.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_title("title", &self.title)?;
        if self.description.chars().count() > 10_000 {
            return Err(invalid("description", "must be at most 10000 characters"));
        }
        if self.category_id <= 0 {
            return Err(invalid("category_id", "must be a positive id"));
        }
        if self.brand_id <= 0 {
            return Err(invalid("brand_id", "must be a positive id"));
        }
        if self.images.len() > 20 || self.images.iter().any(|i| i.is_empty() || i.len() > 2000) {
            return Err(invalid("images", "at most 20 non-empty URLs"));
        }
        if self.skus.is_empty() || self.skus.len() > 100 {
            return Err(invalid("skus", "between 1 and 100 SKUs"));
        }
        for sku in &self.skus {
            check_title("skus[].title", &sku.title)?;
            check_price("skus[].price_cents", sku.price_cents)?;
        }
        Ok(())
    }
}

/// `PATCH /admin/skus/{sku_id}`: every field optional, at least one present.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SkuPatch {
    /// New price in cents.
    pub price_cents: Option<i64>,
    /// New title.
    pub title: Option<String>,
    /// New status.
    pub status: Option<SkuStatus>,
}

impl SkuPatch {
    /// Checks the patch.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.price_cents.is_none() && self.title.is_none() && self.status.is_none() {
            return Err(invalid("body", "nothing to change"));
        }
        if let Some(p) = self.price_cents {
            check_price("price_cents", p)?;
        }
        if let Some(t) = &self.title {
            check_title("title", t)?;
        }
        Ok(())
    }
}

/// The order of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    /// Best text match first (needs `q`).
    Relevance,
    /// Cheapest first.
    PriceAsc,
    /// Dearest first.
    PriceDesc,
    /// Newest first (the default without `q`).
    #[default]
    Newest,
}

/// A validated listing query.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    /// Full-text query.
    pub q: Option<String>,
    /// Category, including its descendants.
    pub category_id: Option<i64>,
    /// Brand.
    pub brand_id: Option<i64>,
    /// Lowest price, inclusive.
    pub min_price_cents: Option<i64>,
    /// Highest price, inclusive.
    pub max_price_cents: Option<i64>,
    /// Order.
    pub sort: Sort,
    /// Where to start.
    pub after: Option<Cursor>,
    /// Page size, 1..=100.
    pub limit: i64,
}

/// Why a query was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QueryError {
    /// A filter is out of range.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The cursor is unusable.
    #[error(transparent)]
    Cursor(#[from] CursorError),
}

impl SearchQuery {
    /// Validates raw query parameters.
    #[allow(clippy::too_many_arguments)]
    pub fn parse(
        q: Option<String>,
        category_id: Option<i64>,
        brand_id: Option<i64>,
        min_price_cents: Option<i64>,
        max_price_cents: Option<i64>,
        sort: Option<Sort>,
        cursor: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Self, QueryError> {
        let q = q.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        if q.as_ref().is_some_and(|s| s.chars().count() > 200) {
            return Err(invalid("q", "must be at most 200 characters").into());
        }
        let sort = sort.unwrap_or(if q.is_some() {
            Sort::Relevance
        } else {
            Sort::Newest
        });
        if sort == Sort::Relevance && q.is_none() {
            return Err(invalid("sort", "relevance needs a search text q").into());
        }
        for (field, v) in [("category_id", category_id), ("brand_id", brand_id)] {
            if v.is_some_and(|v| v <= 0) {
                return Err(invalid(field, "must be a positive id").into());
            }
        }
        for (field, v) in [
            ("min_price_cents", min_price_cents),
            ("max_price_cents", max_price_cents),
        ] {
            if v.is_some_and(|v| v < 0) {
                return Err(invalid(field, "must not be negative").into());
            }
        }
        if let (Some(lo), Some(hi)) = (min_price_cents, max_price_cents)
            && lo > hi
        {
            return Err(invalid("min_price_cents", "must not exceed max_price_cents").into());
        }
        let limit = limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(invalid("limit", "must be between 1 and 100").into());
        }
        let after = cursor.map(|c| Cursor::decode(c, sort)).transpose()?;
        Ok(Self {
            q,
            category_id,
            brand_id,
            min_price_cents,
            max_price_cents,
            sort,
            after,
            limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product() -> NewProduct {
        NewProduct {
            title: "Tee".into(),
            description: String::new(),
            category_id: 3,
            brand_id: 1,
            attributes: BTreeMap::new(),
            images: vec![],
            skus: vec![NewSku {
                title: "S".into(),
                sale_attributes: BTreeMap::new(),
                price_cents: 1999,
            }],
        }
    }

    #[test]
    fn products_need_a_title_skus_and_positive_prices() {
        assert!(product().validate().is_ok());
        let mut p = product();
        p.title = "  ".into();
        assert_eq!(p.validate().unwrap_err().field, "title");
        let mut p = product();
        p.skus[0].price_cents = 0;
        assert_eq!(p.validate().unwrap_err().field, "skus[].price_cents");
        let mut p = product();
        p.skus.clear();
        assert_eq!(p.validate().unwrap_err().field, "skus");
    }

    #[test]
    fn queries_reject_bad_filters() {
        let parse = |min, max, limit, sort, q: Option<&str>| {
            SearchQuery::parse(q.map(String::from), None, None, min, max, sort, None, limit)
        };
        assert!(parse(Some(1), Some(2), Some(10), None, None).is_ok());
        assert!(parse(Some(3), Some(2), None, None, None).is_err());
        assert!(parse(Some(-1), None, None, None, None).is_err());
        assert!(parse(None, None, Some(0), None, None).is_err());
        assert!(parse(None, None, Some(101), None, None).is_err());
        assert!(parse(None, None, None, Some(Sort::Relevance), None).is_err());
        assert_eq!(
            parse(None, None, None, None, Some("shoe")).unwrap().sort,
            Sort::Relevance
        );
    }
}
