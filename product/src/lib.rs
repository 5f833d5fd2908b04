//! mall-product: the catalog, and a cache that keeps the database calm under any read pattern.
//!
//! Owns schema `product`, Redis keys `mall:product:*` (L2 entries, rebuild locks, the bloom
//! filters of SKU and SPU ids, the invalidation channel) and the exchange
//! `mall.product.events` (DESIGN.md, "Services, ports, owned state").
//!
//! # Layout
//!
//! - [`config`]: [`Settings`] from `MALL_*` variables.
//! - [`domain`]: products, patches, queries, cursors, and their rules.
//! - [`store`]: catalog SQL, bloom filters, the layered cache, the demo-data generator.
//! - [`error`]: [`error::ProductError`], status and stable code.
//! - `http`: routes (public reads, admin writes, internal prices, `/openapi.json`).
//! - [`startup`]: building and running the [`Application`].

pub mod config;
pub mod domain;
pub mod error;
mod http;
pub mod startup;
pub mod store;

pub use config::Settings;
pub use startup::Application;
