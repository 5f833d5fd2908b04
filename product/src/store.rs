//! Storage: catalog SQL, the bloom filter of existing ids, and the layered cache in front of
//! them. Handlers see only [`Catalog`] (reads through the cache, writes that invalidate it).

pub mod bloom;
pub mod cache;
mod catalog;
pub mod seed;
mod views;

pub use bloom::{Bloom, BloomKind};
pub use cache::{CacheKey, CacheSettings, Catalog};
pub use catalog::{Price, WriteError};
pub use views::{CategoryNode, ListItem, Page, SkuSummary, SkuView, SpuView};
