//! mall-flashsale: flash-sale sessions, warm-up, admission and the asynchronous order hand-off.
//!
//! Owns schema `flashsale`, Redis keys `mall:fs:*`, the queue `flashsale.order-events` and the
//! exchange `mall.flashsale.events` (DESIGN.md, "Services, ports, owned state").
//!
//! # Layout
//!
//! - [`config`]: [`Settings`] from `MALL_*` variables.
//! - [`domain`]: new sessions, purchases and their validation; purchase tokens.
//! - [`store`]: sessions SQL; the Redis scripts (admit, warm, restock) and the admission stream.
//! - [`live`]: the in-memory catalog, sold-out flags and the Redis breaker of the hot path.
//! - [`jobs`]: catalog refresh, the warm-up/settle job and the hand-off to RabbitMQ.
//! - [`mq`]: cancelled flash orders give their units back.
//! - [`inventory`]: the session reservations at inventory.
//! - `http`: admin sessions, browsing, tokens, purchase.
//! - [`startup`]: [`Application`]: build (bind, pools, migrations, topology, tasks) and run.

pub mod config;
pub mod domain;
mod http;
pub mod inventory;
pub mod jobs;
pub mod live;
pub mod mq;
pub mod startup;
pub mod store;

pub use config::Settings;
pub use http::Shared;
pub use startup::Application;
