//! What reads return, serialized once and cached as JSON bytes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /api/skus/{sku_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct SkuView {
    /// SKU id.
    pub sku_id: i64,
    /// Its SPU.
    pub spu_id: i64,
    /// SKU title, e.g. "Red, M".
    pub title: String,
    /// The SPU's title.
    pub spu_title: String,
    /// Sale attributes.
    #[schema(value_type = Object)]
    pub sale_attributes: serde_json::Value,
    /// Price in cents.
    pub price_cents: i64,
    /// Always `on_sale` here (delisted SKUs are 404).
    pub status: String,
    /// Category.
    pub category_id: i64,
    /// Brand.
    pub brand_id: i64,
    /// First image, if any.
    pub image: Option<String>,
}

/// One on-sale SKU inside an SPU.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct SkuSummary {
    /// SKU id.
    pub sku_id: i64,
    /// SKU title.
    pub title: String,
    /// Sale attributes.
    #[schema(value_type = Object)]
    pub sale_attributes: serde_json::Value,
    /// Price in cents.
    pub price_cents: i64,
}

/// `GET /api/products/{spu_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SpuView {
    /// SPU id.
    pub spu_id: i64,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Category.
    pub category_id: i64,
    /// Brand id.
    pub brand_id: i64,
    /// Brand name.
    pub brand_name: String,
    /// Attribute values.
    #[schema(value_type = Object)]
    pub attributes: serde_json::Value,
    /// Image URLs.
    pub images: Vec<String>,
    /// Lowest on-sale price.
    pub price_cents: i64,
    /// On-sale SKUs.
    pub skus: Vec<SkuSummary>,
}

/// A node of `GET /api/categories`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CategoryNode {
    /// Category id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// 1, 2 or 3.
    pub level: i16,
    /// Sub-categories.
    #[schema(no_recursion)]
    pub children: Vec<CategoryNode>,
}

/// One SPU in a listing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListItem {
    /// SPU id.
    pub spu_id: i64,
    /// Title.
    pub title: String,
    /// Category.
    pub category_id: i64,
    /// Brand.
    pub brand_id: i64,
    /// Lowest on-sale price.
    pub price_cents: i64,
    /// First image, if any.
    pub image: Option<String>,
}

/// A page of `GET /api/products`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page {
    /// The SPUs.
    pub items: Vec<ListItem>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}
