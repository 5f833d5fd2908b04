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
//! - [`startup`]: [`build`]ing the service (its migrations, topology, tasks).
//! - [`state`]: what the handlers share.
//! - [`error`]: [`error::InventoryError`], status and stable code.
//! - `http`: stock (public and admin), reservations (internal), `/openapi.json`.
//! - [`domain`]: quantities, reservation requests and states.
//! - [`store`]: the stock SQL (receive, ledger) and reservations (reserve, settle, carve,
//!   sweep, events with the inbox).
//! - [`mq`]: the order-event consumer.
//! - [`jobs`]: the sweeper of expired reservations.
//! - [`peers`]: asking the product service whether a SKU exists.

pub mod config;
pub mod domain;
pub mod error;
mod http;
pub mod jobs;
pub mod mq;
pub mod peers;
pub mod startup;
pub mod state;
pub mod store;

pub use config::Settings;
pub use mall_common::service::Application;
pub use startup::build;

mall_common::service!(Inventory, "mall-inventory");
