//! mall-order: carts, checkout, the order lifecycle, payments and timeouts.
//!
//! Owns schema `orders`, carts `mall:order:cart:{user}`, the queues `order.*` and the exchange
//! `mall.order.events` (DESIGN.md, "Services, ports, owned state"). Prices come from the
//! product service and stock from inventory, never from the client; every state change other
//! services must learn of goes through the outbox in the same transaction.
//!
//! # Layout
//!
//! - [`config`]: [`Settings`] from `MALL_*` variables.
//! - [`domain`]: checkout requests, order states, payment callbacks and signatures.
//! - [`store`]: the order SQL (idempotency keys, orders, payments, timeouts).
//! - [`peers`]: calls to product and inventory.
//! - [`mq`]: the timeout consumer.
//! - [`error`]: [`error::OrderError`], status and stable code.
//! - `http`: checkout, orders, cart, payment callback.
//! - [`startup`]: building and running the [`Application`].

pub mod config;
pub mod domain;
pub mod error;
mod http;
pub mod mq;
pub mod peers;
pub mod startup;
pub mod store;

pub use config::Settings;
pub use startup::Application;
