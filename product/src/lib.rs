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
//! - [`store`]: catalog SQL, bloom filters, the layered cache (reads, rebuilds, changes and
//!   their invalidation), the demo-data generator.
//! - [`state`]: what the handlers share.
//! - [`jobs`]: the bloom filters kept in step, invalidations from other instances applied.
//! - [`error`]: [`error::ProductError`], status and stable code.
//! - `http`: routes (public reads, admin writes, internal prices, `/openapi.json`).
//! - [`startup`]: [`build`]ing the service.

pub mod config;
pub mod domain;
pub mod error;
mod http;
pub mod jobs;
pub mod startup;
pub mod state;
pub mod store;

pub use config::Settings;
pub use mall_common::service::Application;
pub use startup::build;

mall_common::service!(Product, "mall-product");
