//! mall-inventory: stock, reservations and the stock ledger.
//!
//! Owns schema `inventory`, the queue `inventory.order-events` (with its `.dlq`) and the
//! exchange `mall.inventory.events` (DESIGN.md, "Services, ports, owned state"). Stock can never
//! go negative and, per SKU, available + reserved + sold = received (database CHECKs). A
//! reservation holds all of an order's items or none, is idempotent by id, and is settled
//! exactly once: confirmed (sold) or released (available again).
//!
//! # Layout
//!
//! - [`config`]: [`Settings`] from `MALL_*` variables.
//! - [`domain`]: quantities, reservation requests and states.
//! - [`store`]: the stock SQL (receive, reserve, settle, sweep, events with the inbox).
//! - [`mq`]: the order-event consumer.
//! - [`catalog`]: asking the product service whether a SKU exists.
//! - [`error`]: [`error::InventoryError`], status and stable code.
//! - `http`: public, admin and internal routes.
//! - [`startup`]: building and running the [`Application`].

pub mod catalog;
pub mod config;
pub mod domain;
pub mod error;
mod http;
pub mod mq;
pub mod startup;
pub mod store;

pub use config::Settings;
pub use startup::Application;
