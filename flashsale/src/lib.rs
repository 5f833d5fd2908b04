//! mall-flashsale: flash-sale sessions, warm-up, admission and the asynchronous order hand-off.
//!
//! Owns schema `flashsale`, Redis keys `mall:fs:*`, the queue `flashsale.order-events` and the
//! exchange `mall.flashsale.events` (DESIGN.md, "Services, ports, owned state").
//!
//! # Layout
//!
//! - [`config`]: [`Settings`] from `MALL_*` variables.
//! - [`startup`]: building and running the service.
//! - [`state`]: [`AppState`], what the handlers, the consumer and the jobs share.
//! - [`error`]: [`error::FlashError`], status and stable code.
//! - `http`: admin sessions, browsing and tokens (`http/sessions.rs`), purchase
//!   (`http/purchase.rs`).
//! - [`domain`]: new sessions, purchases and their validation; purchase tokens.
//! - [`store`]: sessions SQL, the Redis scripts (load, admit, restock), the book of admissions,
//!   the replica wait.
//! - [`live`]: in memory for the hot path: the sessions on sale, sold-out flags, uncertain
//!   purchases, the Redis breaker.
//! - [`jobs`]: the refresh of the sessions on sale, the load/settle job (one leader).
//! - [`mq`]: cancelled flash orders give their units back.
//! - [`peers`]: the session reservations at inventory.

pub mod config;
pub mod domain;
pub mod error;
mod http;
pub mod jobs;
pub mod live;
pub mod mq;
pub mod peers;
pub mod startup;
pub mod state;
pub mod store;

pub use config::Settings;
pub use mall_common::service::Application;
pub use startup::build;

mall_common::service!(Flashsale, "mall-flashsale");
pub use state::AppState;
