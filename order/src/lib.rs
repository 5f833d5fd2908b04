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
//! - [`store`]: the order SQL: checkout (idempotency keys), orders (timeouts, cancels), payments.
//! - [`peers`]: calls to product and inventory.
//! - [`mq`]: the timeout and flash-admission consumers.
//! - [`jobs`]: the sweeper of expired orders.
//! - [`state`]: what the handlers share.
//! - [`error`]: [`error::OrderError`], status and stable code.
//! - `http`: checkout, orders, cart, payment callback.
//! - [`startup`]: [`build`]ing the service.

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

mall_common::service!(Order, "mall-order");
